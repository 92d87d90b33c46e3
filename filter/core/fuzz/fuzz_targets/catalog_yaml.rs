//! Catalog registrations: the bytes are the YAML (or base64) in `content`, read by both
//! decoders and the YAML reader, alone and through the register route.

#![no_main]

use libfuzzer_sys::fuzz_target;
use playbook_guard_core::catalog_yaml::registered_paths;
use playbook_guard_core::Verdict;
use playbook_guard_core_fuzz::{real_token, run};

fuzz_target!(|data: &[u8]| {
    let content = String::from_utf8_lossy(data);
    // One path, or two that differ: never the same one twice, never none.
    if let Ok(paths) = registered_paths(&content) {
        assert!(matches!(paths.as_slice(), [_] | [_, _]), "{paths:?}");
        assert!(paths.len() == 1 || paths.first() != paths.get(1), "{paths:?}");
    }
    let body = serde_json::json!({ "content": content }).to_string();
    let headers = vec![("authorization".to_owned(), format!("Bearer {}", real_token()))];
    // The real session is admin: a registration is allowed or refused for what it says (400),
    // never for who sent it, whatever the YAML (every playbook included).
    if let Verdict::Deny(denial) = run("POST", "/api/catalog/register", &headers, body.as_bytes()) {
        assert_eq!(denial.status, 400, "{content:?}");
    }
});

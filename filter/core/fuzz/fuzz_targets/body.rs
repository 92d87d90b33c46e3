//! Request bodies on body-sourced routes: the JSON pointer, GraphQL and catalog YAML readers.

#![no_main]

use libfuzzer_sys::fuzz_target;
use playbook_guard_core::Verdict;
use playbook_guard_core_fuzz::{real_token, run};

fuzz_target!(|body: &[u8]| {
    let headers = vec![("authorization".to_owned(), format!("Bearer {}", real_token()))];
    for path in ["/api/json", "/graphql", "/api/catalog/register"] {
        // The real session may act on anything (admin), so a body is allowed or refused for
        // what it says, never for who sent it.
        if let Verdict::Deny(denial) = run("POST", path, &headers, body) {
            assert!(matches!(denial.status, 400 | 413 | 415), "{path}: {} for a body", denial.status);
        }
    }
});

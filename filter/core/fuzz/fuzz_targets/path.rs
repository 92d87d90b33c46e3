//! The request-path normaliser and the playbook-path parser: whatever they accept has no `..` or
//! `.` segment and no empty one (so no spelling of a path escapes a glob), and a playbook path is
//! its own normal form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use playbook_guard_core::path::{normalize_request_path, PlaybookPath};

fuzz_target!(|raw: &str| {
    if let Ok(path) = normalize_request_path(raw) {
        assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
        assert!(!path.contains("//"), "{raw:?} -> {path:?}");
        assert!(path.split('/').all(|s| s != ".." && s != "."), "{raw:?} -> {path:?}");
        // Decoding is done once, as Envoy and Starlette do (after the query is split off); so only
        // a path with no `%`, `?` or `#` left after decoding is sure to be its own normal form.
        if !path.contains(['%', '?', '#']) {
            assert_eq!(normalize_request_path(&path).as_deref(), Ok(path.as_str()), "{raw:?} is not idempotent");
        }
    }
    if let Ok(playbook) = PlaybookPath::parse(raw) {
        let p = playbook.as_str();
        assert!(!p.starts_with('/') && !p.is_empty(), "{raw:?} -> {p:?}");
        assert!(p.split('/').all(|s| !s.is_empty() && s != ".." && s != "."), "{raw:?} -> {p:?}");
        assert_eq!(PlaybookPath::parse(p).map(|q| q.as_str().to_owned()).as_deref(), Ok(p), "{raw:?}");
    }
});

//! The filter configuration's bytes, as Envoy hands them to `on_http_filter_config_new`: any
//! bytes compile or are refused with a message, never a panic, and a configuration that compiles
//! compiles the same way twice (its policy version and how it holds a body's head).

#![no_main]

use libfuzzer_sys::fuzz_target;
use playbook_guard_native::convert::compile;

/// Every secret a configuration may name, of a length the filter accepts.
fn env(_: &str) -> Option<String> {
    Some("a-fuzzing-secret-of-at-least-32-bytes!".to_owned())
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(first) = compile(bytes, &env) else { return };
    let second = compile(bytes, &env).unwrap_or_else(|e| panic!("compiled once, refused the second time: {e}"));
    assert_eq!(first.policy_version(), second.policy_version());
    assert_eq!(first.policy_version_hash(), second.policy_version_hash());
    assert_eq!(first.hold_headers_for_body(), second.hold_headers_for_body());
});

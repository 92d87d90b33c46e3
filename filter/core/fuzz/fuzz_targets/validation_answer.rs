//! The validation service's answer: whatever it says, a session it calls valid never outlives
//! its own `expires_at`, and nothing panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use playbook_guard_core_fuzz::{guard, NOW};

fuzz_target!(|body: &[u8]| {
    for status in [Some(200), Some(422), None] {
        if let Ok(answer) = guard().read_answer(status, body, NOW * 1000) {
            let entry = answer.entry;
            assert_eq!(status, Some(200), "only a 2xx answer is an answer");
            assert_eq!(entry.fetched_at_ms, NOW * 1000);
            if entry.valid {
                assert!(entry.expires_at.is_none_or(|at| at > NOW), "valid past its expiry: {entry:?}");
            }
        }
    }
});

//! Session tokens, from each source: the JWS parser, the opaque shape, the cookie and scheme
//! readers.

#![no_main]

use libfuzzer_sys::fuzz_target;
use playbook_guard_core::jwt::token_kind;
use playbook_guard_core_fuzz::{check, run};

fuzz_target!(|token: &str| {
    let _ = token_kind(token);
    for (name, value) in [
        ("authorization", format!("Bearer {token}")),
        ("authorization", token.to_owned()),
        ("x-session-token", token.to_owned()),
        ("cookie", format!("session_token={token}")),
    ] {
        let headers = vec![(name.to_owned(), value)];
        check(token, &run("GET", "/api/me", &headers, b""));
    }
});

//! Whole requests through the guard: method, path, where the token is, the token, headers, body.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use playbook_guard_core_fuzz::{check, real_token, run};

#[derive(Debug, Arbitrary)]
struct Request<'a> {
    method: u8,
    path: &'a str,
    source: u8,
    /// Whether the token is the real one with an edit (else taken as it is).
    edit_real: bool,
    token: &'a str,
    extra: Vec<(&'a str, &'a str)>,
    body: &'a [u8],
}

fuzz_target!(|r: Request<'_>| {
    let method = ["GET", "POST", "OPTIONS", "PUT", "get", ""][usize::from(r.method) % 6];
    let token = if r.edit_real {
        // Splice the fuzzer's text into the real token, so mutations start from a valid one.
        let real = real_token();
        let at = r.token.len() % (real.len() + 1);
        format!("{}{}{}", real.get(..at).unwrap_or(real), r.token, real.get(at..).unwrap_or(""))
    } else {
        r.token.to_owned()
    };
    let mut headers: Vec<(String, String)> = match r.source % 3 {
        0 => vec![("authorization".into(), format!("Bearer {token}"))],
        1 => vec![("x-session-token".into(), token.clone())],
        _ => vec![("cookie".into(), format!("a=b; session_token={token}"))],
    };
    headers.extend(r.extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let verdict = run(method, r.path, &headers, r.body);
    let extra_tokens = r.extra.iter().any(|(k, _)| {
        ["authorization", "x-session-token", "cookie"].iter().any(|t| k.eq_ignore_ascii_case(t))
    });
    if !extra_tokens {
        check(&token, &verdict);
    }
});

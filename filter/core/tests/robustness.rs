//! Randomised inputs against the public pipeline: nothing panics (a panic kills the worker's
//! VM), and a token that is not byte-for-byte the signed one is never let through.
//!
//! `make test` runs a few thousand cases; `make fuzz` runs many more
//! (`PLAYBOOK_GUARD_FUZZ_ITERS`). The generator is a seeded xorshift, so a failure names the
//! seed that reproduces it (`PLAYBOOK_GUARD_FUZZ_SEED`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
// The test, not the core, reads its iteration count and seed from the environment.
#![allow(clippy::disallowed_methods)]

use playbook_guard_core::graphql::playbook_arguments;
use playbook_guard_core::lookup::LookupFailure;
use playbook_guard_core::testing::{self, config, guard_from, NOW};
use playbook_guard_core::timestamp::parse_timestamp;
use playbook_guard_core::{Guard, RequestHead, SessionEntry, SessionStep, Step, Verdict};
use serde_json::json;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// `text` with a few random edits: replace, insert, delete, duplicate a slice.
    fn mutate(&mut self, text: &str) -> String {
        const NASTY: &[&str] =
            &["%2e", "..", "/", "//", "%", "\\", "\u{0}", "é", "\"", "{", "}", "$", "*", ".", "=", " "];
        let mut chars: Vec<char> = text.chars().collect();
        for _ in 0..=self.below(3) {
            let at = self.below(chars.len() + 1);
            match self.below(4) {
                0 if at < chars.len() => chars[at] = char::from(b' ' + self.below(95) as u8),
                1 => chars.splice(at..at, self.pick(NASTY).chars()).for_each(drop),
                2 if at < chars.len() => {
                    chars.remove(at);
                }
                _ => {
                    let end = (at + self.below(8)).min(chars.len());
                    let copy: Vec<char> = chars[at..end].to_vec();
                    chars.splice(at..at, copy).for_each(drop);
                }
            }
        }
        chars.into_iter().collect()
    }
}

fn iterations() -> usize {
    std::env::var("PLAYBOOK_GUARD_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
}

fn seed() -> u64 {
    std::env::var("PLAYBOOK_GUARD_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x9e37_79b9_7f4a_7c15)
}

fn guard(validation: bool) -> Guard {
    let mut routes = testing::routes();
    routes.as_array_mut().unwrap().push(json!({"match": {"glob": "/api/playbooks/**/run"},
                                              "authorize": {"permission": "execute", "playbook": {"path_capture": true}}}));
    let mut cfg = config(json!({"routes": routes}));
    if validation {
        cfg["validation"] = json!({"cluster": "noetl"});
    }
    guard_from(&cfg)
}

fn token(roles: &[&str]) -> String {
    token_for("1", roles)
}

fn token_for(sub: &str, roles: &[&str]) -> String {
    testing::token_with(roles, NOW, json!({"sub": sub, "sid": format!("s{sub}")}))
}

/// Runs one request to its verdict (answering a session step with a valid admin entry).
fn run(g: &Guard, method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Verdict {
    let mut step = g.on_request_headers(&RequestHead { method, path, headers }, NOW);
    loop {
        step = match step {
            Step::Verdict(v) => return v,
            Step::ReadBody(p) => g.on_request_body(p, body),
            Step::AwaitKeys => panic!("no remote keys are configured here"),
            // No resolver is configured here; a host that got this anyway answers it so.
            Step::Resolve { key, pending } => g.on_lookup(pending, &key, Err(LookupFailure::NotFound)),
            Step::Session(p) => {
                let entry = SessionEntry {
                    valid: true,
                    user_id: None,
                    email: None,
                    display_name: None,
                    roles: vec!["admin".into()],
                    expires_at: None,
                    fetched_at_ms: NOW * 1000,
                };
                match g.on_session(p, Some(&entry), NOW * 1000) {
                    SessionStep::Hit(step) => step,
                    SessionStep::Miss(p) => g.on_answer(p, &entry),
                }
            }
        }
    }
}

#[test]
fn mutated_requests_never_panic_and_mutated_tokens_never_pass() {
    let mut rng = Rng(seed());
    let guards = [guard(false), guard(true)];
    let valid = token(&["admin"]);
    // A second, equally valid token: carried beside the first, the request has two readings.
    let other = token_for("2", &["admin"]);
    let paths = ["/api/catalog/data/x", "/api/run/playbook", "/graphql", "/api/me", "/api/playbooks/data/x/run", "/"];
    let bodies = [
        json!({"path": "data/x"}).to_string(),
        json!({"query": "mutation($n: String!) { executePlaybook(name: $n) { id } }", "variables": {"n": "data/x"}})
            .to_string(),
        String::new(),
    ];
    let mut passed_with_valid_token = 0;
    for i in 0..iterations() {
        let g = &guards[i % 2];
        let base_path = rng_pick(&mut rng, &paths);
        let path = if rng.below(2) == 0 { rng.mutate(base_path) } else { base_path.to_owned() };
        let mutated_token = rng.below(3) != 0;
        let tok = if mutated_token { rng.mutate(&valid) } else { valid.clone() };
        let method = *rng.pick(&["GET", "POST", "OPTIONS", "get", ""]);
        let base_body = rng.pick(&bodies).clone();
        let body = rng.mutate(&base_body);
        let header = match rng.below(3) {
            0 => ("authorization".to_owned(), format!("Bearer {tok}")),
            1 => ("x-session-token".to_owned(), tok.clone()),
            _ => ("cookie".to_owned(), format!("a=b; session_token={tok}")),
        };
        let mut headers = vec![header];
        let second = rng.below(4) == 0;
        if second {
            headers.push(match rng.below(4) {
                0 => ("authorization".to_owned(), format!("Bearer {other}")),
                1 => ("x-session-token".to_owned(), other.clone()),
                2 => ("cookie".to_owned(), format!("session_token={other}")),
                _ => ("Authorization".to_owned(), format!("bearer {other}")),
            });
        }
        let verdict = run(g, method, &path, &headers, body.as_bytes());
        let with_identity = matches!(&verdict, Verdict::Allow { headers, .. } if !headers.is_empty());
        if tok == valid && !second && with_identity {
            passed_with_valid_token += 1;
        }
        // Two tokens are two readings: never decided on either. A mutation may leave the first
        // source with no token at all (empty, or cut off by a `;` in a cookie); then the second
        // is the only reading, which is what the first source alone answering `missing_token`
        // shows.
        if second && with_identity {
            let first_alone = run(g, method, &path, &headers[..1], body.as_bytes());
            let no_token = matches!(&first_alone, Verdict::Deny(d) if d.body.contains("\"missing_token\""));
            assert!(
                no_token,
                "seed {:#x} case {i}: two tokens reached the upstream with an identity: {headers:?}",
                seed()
            );
        }
        // Spaces and tabs around a header value are not part of it (RFC 9110 section 5.5).
        if mutated_token && !second && tok.trim_matches([' ', '\t']) != valid {
            let protected = !path.starts_with("/api/auth/") && method != "OPTIONS";
            if let (true, Verdict::Allow { headers: upstream, .. }) = (protected, &verdict) {
                assert!(
                    upstream.is_empty(),
                    "seed {:#x} case {i}: a mutated token reached the upstream with an identity: {tok:?} {path:?}",
                    seed()
                );
            }
        }
    }
    // The oracle is not vacuous: the signed token does get through.
    assert!(passed_with_valid_token > iterations() / 20, "{passed_with_valid_token} of {}", iterations());
}

fn rng_pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len())]
}

#[test]
fn parsers_take_any_text() {
    let mut rng = Rng(seed() ^ 0xabcdef);
    let seeds = ["2026-01-15 10:00:00.123456+05:30", "mutation { a: executePlaybook(name: \"x\") { id } }"];
    for _ in 0..iterations() {
        let base = rng_pick(&mut rng, &seeds);
        let text = rng.mutate(base);
        let _ = parse_timestamp(&text);
        let _ = playbook_arguments(&json!({"query": text, "variables": {"n": "x"}}), "executePlaybook", "name");
        let _ = Guard::from_json(text.as_bytes(), &|_| None);
    }
}

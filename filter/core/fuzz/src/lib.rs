//! What the fuzz targets share: a guard configured as the shipped filter is (HS256 provider,
//! a validation service, opaque sessions, body- and path-sourced routes, the default policy),
//! a token it accepts, and a driver that runs a request to its verdict with a validation
//! service that vouches for that one session only.
//!
//! The oracle every target applies: nothing panics, and no request reaches the upstream with an
//! identity unless it carried the one real session token (the spaces and tabs HTTP strips
//! around a header value aside).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::OnceLock;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use playbook_guard_core::lookup::LookupFailure;
use playbook_guard_core::{Guard, RequestHead, SessionEntry, SessionStep, Step, Verdict};
use serde_json::json;

/// The time every target decides at.
pub const NOW: u64 = 1_800_000_000;
const SECRET: &str = "a-fuzzing-secret-of-at-least-32-bytes!";

/// The guard under test.
pub fn guard() -> &'static Guard {
    static GUARD: OnceLock<Guard> = OnceLock::new();
    GUARD.get_or_init(|| {
        // One route of each kind, so every reader is reached.
        let routes = json!([
            {"match": {"prefix": "/api/auth/"}, "public": true},
            {"match": {"methods": ["POST"], "path": "/graphql"},
             "authorize": {"permission": "execute", "playbook": {"graphql_variable": "name"}}},
            {"match": {"methods": ["POST"], "path": "/api/json"},
             "authorize": {"permission": "execute", "playbook": {"json_pointer": "/path"}}},
            {"match": {"prefix": "/api/prefix/"},
             "authorize": {"permission": "view", "playbook": {"path_after_prefix": true}}},
            {"match": {"glob": "/api/playbooks/**/run"},
             "authorize": {"permission": "execute", "playbook": {"path_capture": true}}},
            {"match": {"methods": ["POST"], "path": "/api/header"},
             "authorize": {"permission": "execute", "playbook": {"header": "x-playbook"}}},
            {"match": {"path": "/api/me"}, "authenticate": true},
            {"match": {"methods": ["POST"], "path": "/api/catalog/register"},
             "authorize": {"permission": "modify", "playbook": {"catalog_yaml": {"pointer": "/content"}}}}
        ]);
        let cfg = json!({
            "providers": [{"name": "noetl", "issuer": "https://noetl.local", "audiences": ["noetl-gateway"],
                           "algorithms": ["HS256"], "secret_env": "S", "roles_claim": "roles"}],
            "validation": {"cluster": "noetl"},
            "opaque_tokens": true,
            "routes": routes,
            "policy": {"roles": {"admin": {"allow": [{"permissions": ["*"], "playbooks": ["**"]}]}}},
        });
        let env = |name: &str| (name == "S").then(|| SECRET.to_owned());
        Guard::from_json(cfg.to_string().as_bytes(), &env).unwrap()
    })
}

/// The one session token the validation service vouches for (a JWT the guard verifies).
pub fn real_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let claims = json!({"iss": "https://noetl.local", "aud": "noetl-gateway", "sub": "1", "sid": "s",
                            "exp": NOW + 600, "roles": ["admin"]});
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    })
}

/// Runs a request to its verdict; the validation service answers valid (admin) for the real
/// token and invalid for any other.
pub fn run(method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Verdict {
    let g = guard();
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
                    valid: p.token() == real_token(),
                    user_id: Some("1".into()),
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

/// The oracle: a request whose token is not the real one never goes upstream with an identity.
pub fn check(token: &str, verdict: &Verdict) {
    if let Verdict::Allow { headers, .. } = verdict {
        assert!(
            headers.is_empty() || token.trim_matches([' ', '\t']) == real_token(),
            "a token that is not the real session reached the upstream with an identity: {token:?}"
        );
    }
}

//! The one set of test fixtures: a secret, an issuer and audience, token minting, a base
//! configuration and the NoETL routes, for the core's tests and (through the `testing` feature,
//! which only dev-dependencies enable) the CLI's and the harness's. The filter never ships it.
//!
//! Tests that need something else (another secret, a provider of their own) still start from
//! these names, so that a failure reads the same in every crate.

// Fixtures fail loudly: in a test, a panic is the failure report, and bad fixture data is a bug
// in the test, never request data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::{Guard, RequestHead, Step, Verdict};

/// The clock of the tests that do not run one of their own (2027-01-15).
pub const NOW: u64 = 1_800_000_000;
/// The HS256 secret every test signs with: longer than the 32 bytes the filter requires.
pub const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
/// The environment variable the test provider reads [`SECRET`] from, as the shipped Envoy
/// configurations and the CLI name it.
pub const SECRET_ENV: &str = "PLAYBOOK_GUARD_HS256_SECRET";
/// The test provider's issuer (NoETL's own, as in the shipped configurations).
pub const ISSUER: &str = "https://noetl.local";
/// The audience the test provider requires and [`token`] carries.
pub const AUDIENCE: &str = "noetl-gateway";
/// The claim the test provider reads roles from, namespaced as OIDC issuers write it.
pub const ROLES_CLAIM: &str = "https://noetl.io/roles";
/// The NoETL route profile the tests decide against, as JSON (`routes` of a configuration).
pub const ROUTES_JSON: &str = include_str!("../testdata/routes.json");
/// The shipped default policy, as YAML.
pub const POLICY_YAML: &str = include_str!("../../../policies/noetl-default.yaml");
/// The shipped Envoy filter configuration (envoy/filter-config.yaml), as YAML.
pub const FILTER_CONFIG_YAML: &str = include_str!("../../../envoy/filter-config.yaml");

/// The VM environment of a test: [`SECRET`] under [`SECRET_ENV`], nothing else.
pub fn env(name: &str) -> Option<String> {
    (name == SECRET_ENV).then(|| SECRET.to_owned())
}

/// The NoETL routes ([`ROUTES_JSON`]).
pub fn routes() -> Value {
    serde_json::from_str(ROUTES_JSON).unwrap()
}

/// The default policy ([`POLICY_YAML`]) as JSON, as a configuration carries it.
pub fn policy() -> Value {
    serde_yaml_ng::from_str(POLICY_YAML).unwrap()
}

/// The test provider: HS256 with [`SECRET`] from [`SECRET_ENV`], [`ISSUER`], [`AUDIENCE`],
/// roles from [`ROLES_CLAIM`].
pub fn provider() -> Value {
    json!({"name": "noetl", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["HS256"],
           "secret_env": SECRET_ENV, "roles_claim": ROLES_CLAIM})
}

/// The base configuration (the test provider, the NoETL routes, the default policy) with each
/// top-level field of `patch` replacing the base's.
pub fn config(patch: Value) -> Value {
    let mut cfg = json!({"providers": [provider()], "routes": routes(), "policy": policy()});
    merge(&mut cfg, patch);
    cfg
}

/// A guard compiled from `cfg` with the test environment ([`env`]).
pub fn guard_from(cfg: &Value) -> Guard {
    Guard::from_json(cfg.to_string().as_bytes(), &env).unwrap_or_else(|e| panic!("{e}"))
}

/// A guard for [`config`]`(patch)`.
pub fn guard_with(patch: Value) -> Guard {
    guard_from(&config(patch))
}

/// A guard for the base configuration.
pub fn guard() -> Guard {
    guard_with(json!({}))
}

/// The claims of user 42 (session `s-42`, Ada) with `roles`, issued for [`ISSUER`] and
/// [`AUDIENCE`], valid for five minutes from `now`.
pub fn claims(roles: &[&str], now: u64) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "42", "sid": "s-42", "email": "ada@example.com",
           "name": "Ada", "exp": now + 300, ROLES_CLAIM: roles})
}

/// An HS256 token signed with [`SECRET`] carrying `claims` as they are.
pub fn sign(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A token for [`claims`]`(roles, now)`.
pub fn token(roles: &[&str], now: u64) -> String {
    token_with(roles, now, json!({}))
}

/// As [`token`], with each claim of `patch` replacing (or adding to) the base claims.
pub fn token_with(roles: &[&str], now: u64, patch: Value) -> String {
    let mut c = claims(roles, now);
    merge(&mut c, patch);
    sign(&c)
}

/// The headers of a request presenting `token` as `Authorization: Bearer`.
pub fn bearer(token: &str) -> Vec<(String, String)> {
    vec![("authorization".into(), format!("Bearer {token}"))]
}

/// The verdict of a step that must be one.
pub fn decided(step: Step) -> Verdict {
    match step {
        Step::Verdict(v) => v,
        other => panic!("not decided: {other:?}"),
    }
}

/// The verdict for `method path` at [`NOW`] (the body is sent only if the head asks for it);
/// a step for a session, keys or a lookup is a failure.
pub fn send(g: &Guard, method: &str, path: &str, headers: &[(String, String)], body: &str) -> Verdict {
    match g.on_request_headers(&RequestHead { method, path, headers }, NOW) {
        Step::Verdict(v) => v,
        Step::ReadBody(p) => decided(g.on_request_body(p, body.as_bytes())),
        other => panic!("{method} {path}: {other:?}"),
    }
}

/// (status, reason) of a verdict: 200 and "" when allowed.
pub fn answer(v: &Verdict) -> (u32, String) {
    match v {
        Verdict::Allow { .. } => (200, String::new()),
        Verdict::Deny(d) => {
            let body: Value = serde_json::from_str(&d.body).unwrap();
            (d.status, body["reason"].as_str().unwrap_or_default().to_owned())
        }
    }
}

/// `base` with each top-level field of `patch` replacing its own.
fn merge(base: &mut Value, patch: Value) {
    let (Some(base), Value::Object(patch)) = (base.as_object_mut(), patch) else {
        panic!("a patch is a JSON object over an object");
    };
    base.extend(patch);
}

//! Helpers shared by the tests that drive the real filter.

#![allow(dead_code)]
// Test helpers outside #[test] functions: failing loudly is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use playbook_guard_test_harness::{playbook_guard_filter, Filter, Host, HostOptions, Vm};
use serde_json::{json, Value};

/// A 32-byte HS256 secret (the filter refuses shorter ones).
pub const SECRET: &str = "0123456789abcdef0123456789abcdef";
pub const SECRET_ENV: &str = "PLAYBOOK_GUARD_HS256_SECRET";

/// The real filter, compiled once per test binary (built first if missing).
pub fn filter() -> Filter {
    playbook_guard_filter().unwrap_or_else(|e| panic!("{e}"))
}

/// A host whose environment carries the HS256 secret, as Envoy's `vm_config` would, with
/// `allow_on_headers_stop_iteration` as every shipped Envoy configuration sets it (the filter
/// holds a body-sourced request's head by default).
pub fn host() -> Host {
    Host::with_options(&filter(), HostOptions::default().env(SECRET_ENV, SECRET).allow_on_headers_stop_iteration(true))
}

/// As [`host`], but an Envoy without `allow_on_headers_stop_iteration` (hand-written, or what an
/// Istio WasmPlugin gives).
pub fn host_without_stop_iteration() -> Host {
    Host::with_options(&filter(), HostOptions::default().env(SECRET_ENV, SECRET))
}

/// The default NoETL policy as JSON.
pub fn policy() -> Value {
    let path = playbook_guard_test_harness::workspace::workspace_root().join("policies").join("noetl-default.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

/// A plugin configuration like the core's tests use, with `patch` merged over the top level.
pub fn config(patch: Value) -> Vec<u8> {
    let mut cfg = json!({
        "providers": [{"name": "noetl", "issuer": "https://noetl.local", "audiences": ["noetl-gateway"],
                       "algorithms": ["HS256"], "secret_env": SECRET_ENV, "roles_claim": "https://noetl.io/roles"}],
        "routes": serde_json::from_str::<Value>(include_str!("../../../filter/core/testdata/routes.json")).unwrap(),
        "policy": policy()
    });
    for (k, v) in patch.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    cfg.to_string().into_bytes()
}

/// A configured worker on `host`.
pub fn vm(host: &Host) -> Vm {
    host.configured_vm(&config(json!({}))).unwrap_or_else(|e| panic!("{e}"))
}

/// An HS256 session token for user 42 with `roles`, valid for five minutes of `host`'s clock.
pub fn token(host: &Host, roles: &[&str]) -> String {
    token_with(host, roles, json!({}))
}

/// As [`token`], with claims patched.
pub fn token_with(host: &Host, roles: &[&str], patch: Value) -> String {
    let now = host.clock().now_secs();
    let mut claims = json!({"iss": "https://noetl.local", "aud": "noetl-gateway", "sub": "42", "sid": "s-42",
                            "email": "ada@example.com", "name": "Ada", "exp": now + 300,
                            "https://noetl.io/roles": roles});
    for (k, v) in patch.as_object().unwrap() {
        claims[k] = v.clone();
    }
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

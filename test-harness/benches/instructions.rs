//! Wasm instructions (wasmtime fuel) the filter spends per request, by path.
//!
//! Fuel counts instructions executed, so these figures do not move with machine load; compare
//! them across commits. Run with `make bench` (or `cargo bench -p playbook-guard-test-harness`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use playbook_guard_core::testing::{self, ROLES_CLAIM, SECRET, SECRET_ENV};
use playbook_guard_test_harness::workspace::workspace_root;
use playbook_guard_test_harness::{playbook_guard_filter, Host, HostOptions, HttpCallResponse, Request, Vm};
use serde_json::json;

const SAMPLES: usize = 201;

fn config(validation: bool) -> Vec<u8> {
    let root = workspace_root();
    let pem = std::fs::read_to_string(root.join("filter/core/testdata/rsa.pem")).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        Algorithm::RS256,
    )
    .unwrap();
    jwk.common.key_id = Some("k".into());
    let mut cfg = json!({
        "providers": [
            testing::provider(),
            {"name": "oidc", "issuer": "https://oidc.local/", "algorithms": ["RS256"], "jwks": {"keys": [jwk]},
             "roles_claim": ROLES_CLAIM}
        ],
        "routes": [
            {"match": {"prefix": "/api/auth/"}, "public": true},
            {"match": {"prefix": "/api/catalog/"},
             "authorize": {"permission": "view", "playbook": {"path_after_prefix": true}}}
        ],
        "policy": testing::policy(),
    });
    if validation {
        cfg["validation"] = json!({"cluster": "noetl"});
    }
    cfg.to_string().into_bytes()
}

fn token(host: &Host, alg: Algorithm) -> String {
    let now = host.clock().now_secs();
    let mut claims = testing::claims(&["analyst"], now);
    claims["sid"] = json!("bench");
    claims["exp"] = json!(now + 86_400);
    if alg == Algorithm::HS256 {
        return testing::sign(&claims);
    }
    claims["iss"] = json!("https://oidc.local/");
    let pem = std::fs::read_to_string(workspace_root().join("filter/core/testdata/rsa.pem")).unwrap();
    let mut header = Header::new(alg);
    header.kid = Some("k".to_owned());
    encode(&header, &claims, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap()
}

fn median(vm: &mut Vm, request: &Request) -> u64 {
    let mut fuel: Vec<u64> = (0..SAMPLES).map(|_| vm.fuel_used(|vm| vm.send_request(request)).unwrap().1).collect();
    fuel.sort_unstable();
    fuel[SAMPLES / 2]
}

fn main() {
    let filter = playbook_guard_filter().unwrap();
    let host = Host::with_options(&filter, HostOptions::default().env(SECRET_ENV, SECRET));
    let mut plain = host.configured_vm(&config(false)).unwrap();
    let hs = token(&host, Algorithm::HS256);
    let rs = token(&host, Algorithm::RS256);

    let validating_host = Host::with_options(&filter, HostOptions::default().env(SECRET_ENV, SECRET));
    let mut cached = validating_host.configured_vm(&config(true)).unwrap();
    let hs_cached = token(&validating_host, Algorithm::HS256);
    let first = cached.send_request(&Request::get("/api/catalog/data/x").bearer(&hs_cached)).unwrap();
    let call = cached.http_calls().pop().expect("the first request asks the service");
    cached
        .respond_http_call(
            call.token,
            HttpCallResponse::json(
                200,
                &json!({"status": "ok", "valid": true, "user": {"user_id": 42, "roles": ["analyst"]}}),
            ),
        )
        .unwrap();
    assert_eq!(cached.outcome(first.context_id).unwrap().status(), Some(200));

    let rows = [
        ("public route", median(&mut plain, &Request::get("/api/auth/login"))),
        ("401, no token", median(&mut plain, &Request::get("/api/catalog/data/x"))),
        ("allow, HS256 JWT roles", median(&mut plain, &Request::get("/api/catalog/data/x").bearer(&hs))),
        ("403, HS256 JWT roles", median(&mut plain, &Request::get("/api/catalog/system/x").bearer(&hs))),
        ("allow, RS256 JWT roles", median(&mut plain, &Request::get("/api/catalog/data/x").bearer(&rs))),
        (
            "allow, HS256 + session cache hit",
            median(&mut cached, &Request::get("/api/catalog/data/x").bearer(&hs_cached)),
        ),
    ];
    println!("wasm instructions per request (median of {SAMPLES}, wasmtime fuel):");
    for (what, fuel) in rows {
        println!("  {what:<34} {fuel:>12}");
    }
}

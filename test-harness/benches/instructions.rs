//! Wasm instructions (wasmtime fuel) the filter spends per request, by path; then the
//! session-cache-hit request callback by callback, beside the Wasm floor (`bench/floor`: reads one
//! header, sets one) driven through the same callbacks, with the ratio guard / floor per phase.
//!
//! Fuel counts instructions executed, so these figures do not move with machine load; compare
//! them across commits. The host answers `proxy_get_log_level` with info, Envoy's default: at
//! debug the filter writes each decision's detail to the log, which is work Envoy's default
//! level never asks for. Run with `make bench` (or `cargo bench -p playbook-guard-test-harness`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use playbook_guard_core::testing::{self, ROLES_CLAIM, SECRET, SECRET_ENV};
use playbook_guard_test_harness::workspace::workspace_root;
use playbook_guard_test_harness::{
    floor_filter, playbook_guard_filter, ExportFuel, HarnessError, Host, HostOptions, HttpCallResponse, LogLevel,
    Request, Vm,
};
use serde_json::json;
use std::collections::BTreeMap;

const SAMPLES: usize = 201;

/// The host as Envoy runs by default: info is the level it reports.
fn options() -> HostOptions {
    HostOptions::default().env(SECRET_ENV, SECRET).log_level(LogLevel::Info)
}

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

/// The callbacks of one request in the order Envoy makes them (a `direct_response` answer:
/// response headers, then its body); any other export a filter was called on is listed after.
const PHASES: [&str; 7] = [
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_done",
    "proxy_on_log",
    "proxy_on_delete",
];

/// One whole request as Envoy runs it, from the context's creation to its deletion, answered
/// 200 by the route; the fuel of each callback.
fn whole_request(vm: &mut Vm, request: &Request) -> BTreeMap<String, ExportFuel> {
    let (status, phases) = vm
        .fuel_by_export_used(|vm| {
            let exchange = vm.send_request(request)?;
            let id = exchange.context_id;
            vm.on_response_headers(id, &[(":status", "200"), ("content-length", "3")], false)?;
            vm.on_response_body(id, b"ok\n", true)?;
            vm.finish(id)?;
            Ok::<_, HarnessError>(exchange.outcome.status())
        })
        .unwrap();
    assert_eq!(status, Some(200), "the measured request is allowed");
    phases
}

/// The median fuel of each phase, and of the whole request, over `SAMPLES` requests.
fn median_phases(vm: &mut Vm, request: &Request) -> (BTreeMap<String, u64>, u64) {
    let samples: Vec<BTreeMap<String, ExportFuel>> = (0..SAMPLES).map(|_| whole_request(vm, request)).collect();
    let med = |mut values: Vec<u64>| {
        values.sort_unstable();
        values[SAMPLES / 2]
    };
    let names: std::collections::BTreeSet<&String> = samples.iter().flat_map(BTreeMap::keys).collect();
    let phases = names
        .into_iter()
        .map(|name| (name.clone(), med(samples.iter().map(|s| s.get(name).map_or(0, |p| p.fuel)).collect())))
        .collect();
    let total = med(samples.iter().map(|s| s.values().map(|p| p.fuel).sum()).collect());
    (phases, total)
}

fn print_phases(guard: &(BTreeMap<String, u64>, u64), floor: &(BTreeMap<String, u64>, u64)) {
    let mut names: Vec<&str> = PHASES.to_vec();
    for name in guard.0.keys().chain(floor.0.keys()) {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    let ratio = |g: u64, f: u64| if f == 0 { "-".to_owned() } else { format!("{:.2}", g as f64 / f as f64) };
    println!("\nwasm instructions per callback, HS256 + session cache hit, whole request (median of {SAMPLES}):");
    println!("  {:<28} {:>14} {:>10} {:>12}", "phase (export)", "playbook-guard", "floor", "guard/floor");
    for name in names {
        let (g, f) = (guard.0.get(name).copied(), floor.0.get(name).copied());
        if g.is_none() && f.is_none() {
            continue;
        }
        let (g, f) = (g.unwrap_or(0), f.unwrap_or(0));
        println!("  {name:<28} {g:>14} {f:>10} {:>12}", ratio(g, f));
    }
    println!("  {:<28} {:>14} {:>10} {:>12}", "total", guard.1, floor.1, ratio(guard.1, floor.1));
}

fn main() {
    let filter = playbook_guard_filter().unwrap();
    let host = Host::with_options(&filter, options());
    let mut plain = host.configured_vm(&config(false)).unwrap();
    let hs = token(&host, Algorithm::HS256);
    let rs = token(&host, Algorithm::RS256);

    let validating_host = Host::with_options(&filter, options());
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

    let hit = Request::get("/api/catalog/data/x").bearer(&hs_cached);
    let guard = median_phases(&mut cached, &hit);
    let floor_host = Host::with_options(&floor_filter().unwrap(), options());
    let mut floor = floor_host.configured_vm(b"").unwrap();
    let floor = median_phases(&mut floor, &hit);
    print_phases(&guard, &floor);
}

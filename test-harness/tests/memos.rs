//! The per-worker memos of the cache-hit path never outlive what they depend on: the token's
//! `exp`, the session entry's version in shared data, a logout, the policy and the
//! configuration. Each test first makes the memo answer, then changes what it depends on.

// Test helpers outside #[test] functions: failing loudly is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{config, host, token_with};
use playbook_guard_core::testing::policy;
use playbook_guard_test_harness::{Host, HttpCallResponse, Request, RequestOutcome, Vm};
use serde_json::{json, Value};

/// The fixture configuration with a validation service, and a logout route first.
fn with_validation(patch: Value) -> Vec<u8> {
    let mut routes = playbook_guard_core::testing::routes();
    routes
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"match": {"methods": ["POST"], "path": "/api/auth/logout"}, "logout": true}));
    let mut all = json!({"validation": {"cluster": "noetl"}, "routes": routes,
                         "session": {"ttl_secs": 300, "max_entries": 16}});
    for (k, v) in patch.as_object().into_iter().flatten() {
        all[k] = v.clone();
    }
    config(all)
}

fn answer(roles: &[&str]) -> HttpCallResponse {
    HttpCallResponse::json(200, &json!({"valid": true, "user": {"user_id": 7, "roles": roles}}))
}

fn catalog(token: &str, playbook: &str) -> Request {
    Request::get(&format!("/api/catalog/{playbook}")).bearer(token)
}

fn status(vm: &mut Vm, request: &Request) -> Option<u32> {
    vm.send_request(request).unwrap().outcome.status()
}

/// Sends `request`, which must miss, and answers its callout with `roles`.
fn prime(vm: &mut Vm, request: &Request, roles: &[&str]) -> Option<u32> {
    let exchange = vm.send_request(request).unwrap();
    assert_eq!(exchange.outcome, RequestOutcome::Paused, "a miss pauses the request");
    let call = vm.http_calls().pop().expect("one callout");
    vm.respond_http_call(call.token, answer(roles)).unwrap();
    vm.outcome(exchange.context_id).unwrap().status()
}

/// A token for session `sid`, valid `secs` more on `host`'s clock.
fn token(host: &Host, sid: &str, secs: u64) -> String {
    token_with(host, &[], json!({"sid": sid, "exp": host.clock().now_secs() + secs}))
}

/// A worker on `host` with the validation service, and a token for session `s-1` that the
/// service has answered for as an analyst's.
fn analyst_session(host: &Host) -> (Vm, String) {
    let mut vm = host.configured_vm(&with_validation(json!({}))).unwrap();
    let t = token(host, "s-1", 3600);
    assert_eq!(prime(&mut vm, &catalog(&t, "data/x"), &["analyst"]), Some(200));
    (vm, t)
}

#[test]
fn a_remembered_token_is_refused_once_it_expires() {
    let host = host();
    let mut vm = host.configured_vm(&with_validation(json!({"clock_skew_secs": 0}))).unwrap();
    let t = token(&host, "s-1", 60);
    assert_eq!(prime(&mut vm, &catalog(&t, "data/x"), &["analyst"]), Some(200));
    assert_eq!(status(&mut vm, &catalog(&t, "data/x")), Some(200), "a hit, from the memos");
    host.clock().advance(Duration::from_secs(59));
    assert_eq!(status(&mut vm, &catalog(&t, "data/x")), Some(200));
    host.clock().advance(Duration::from_secs(1));
    assert_eq!(status(&mut vm, &catalog(&t, "data/x")), Some(401), "exp passed: the session entry is still fresh");
    assert!(vm.http_calls().is_empty());
}

#[test]
fn a_session_entry_another_worker_rewrote_is_read_again() {
    // Worker 0 remembers the session as an analyst's; the same session, answered as an admin's
    // on another host, is then written into this host's shared data (as another worker's
    // answer would be) while worker 0's entry is still fresh.
    let host = host();
    let (mut vm, t) = analyst_session(&host);
    assert_eq!(status(&mut vm, &catalog(&t, "system/x")), Some(403), "analyst: memoized");

    let elsewhere = common::host();
    let mut other = elsewhere.configured_vm(&with_validation(json!({}))).unwrap();
    let t2 = token(&elsewhere, "s-1", 3600);
    assert_eq!(prime(&mut other, &catalog(&t2, "system/x"), &["admin"]), Some(200));
    // Its bucket, and the eviction-ring slot that names it; then the bucket's stamp, which
    // every writer writes after the bucket.
    let mut rewritten = Vec::new();
    for key in elsewhere.shared_data_keys() {
        let (value, _) = elsewhere.shared_data(&key).unwrap();
        if String::from_utf8_lossy(&value).contains("s-1") {
            host.set_shared_data(&key, &value).unwrap();
            rewritten.push(key);
        }
    }
    assert_eq!(rewritten.len(), 2, "{rewritten:?}");
    assert_eq!(status(&mut vm, &catalog(&t, "system/x")), Some(403), "a bucket written but not stamped is not read");
    let stamps: Vec<String> =
        rewritten.iter().map(|k| format!("{k}/stamp")).filter(|k| elsewhere.shared_data(k).is_some()).collect();
    assert_eq!(stamps.len(), 1, "the bucket's: {stamps:?}");
    host.set_shared_data(&stamps[0], b"").unwrap();
    assert_eq!(status(&mut vm, &catalog(&t, "system/x")), Some(200), "the new entry (admin) decides");
    assert!(vm.http_calls().is_empty(), "and it was fresh: no callout");
}

#[test]
fn a_logout_on_another_worker_ends_the_remembered_session() {
    let host = host();
    let config = with_validation(json!({}));
    let (mut a, mut b) = (host.configured_vm(&config).unwrap(), host.configured_vm(&config).unwrap());
    let t = token(&host, "s-1", 3600);
    assert_eq!(prime(&mut a, &catalog(&t, "data/x"), &["analyst"]), Some(200));
    assert_eq!(status(&mut a, &catalog(&t, "data/x")), Some(200), "a hit, from the memos");
    assert_eq!(status(&mut b, &catalog(&t, "data/x")), Some(200), "worker 1 hits the shared cache");
    let logout = b.send_request(&Request::post("/api/auth/logout", "").bearer(&t)).unwrap();
    assert_eq!(logout.outcome.status(), Some(200));
    b.on_response_headers(logout.context_id, &[(":status", "200")], true).unwrap();
    let again = a.send_request(&catalog(&t, "data/x")).unwrap();
    assert_eq!(again.outcome, RequestOutcome::Paused, "worker 0 asks again: its memo does not answer");
    assert_eq!(a.http_calls().len(), 1);
}

#[test]
fn a_new_policy_version_decides_afresh() {
    let host = host();
    let (mut vm, t) = analyst_session(&host);
    assert_eq!(status(&mut vm, &catalog(&t, "data/x")), Some(200), "decided, and remembered");
    let mut stricter = policy();
    stricter["version"] = json!("stricter");
    stricter["deny"] = json!([{"permissions": ["*"], "playbooks": ["data/**"]}]);
    assert!(vm.configure(&with_validation(json!({"policy": stricter}))).unwrap());
    assert_eq!(status(&mut vm, &catalog(&t, "data/x")), Some(403), "the new policy's answer");
    assert!(vm.configure(&with_validation(json!({}))).unwrap());
    assert_eq!(status(&mut vm, &catalog(&t, "data/x")), Some(200), "and back");
}

#[test]
fn a_new_configuration_starts_the_memos_afresh() {
    let host = host();
    let (mut vm, t) = analyst_session(&host);
    assert_eq!(status(&mut vm, &catalog(&t, "data/x")), Some(200), "remembered");
    // Another secret: the remembered token no longer verifies.
    let other_secret = json!({"providers": [{"name": "noetl", "issuer": playbook_guard_core::testing::ISSUER,
        "audiences": [playbook_guard_core::testing::AUDIENCE], "algorithms": ["HS256"],
        "secret_env": "OTHER_SECRET"}]});
    let host2 = Host::with_options(
        &common::filter(),
        playbook_guard_test_harness::HostOptions::default()
            .env(common::SECRET_ENV, common::SECRET)
            .env("OTHER_SECRET", "another-hs256-secret-of-at-least-32-bytes"),
    );
    let mut vm2 = host2.configured_vm(&with_validation(json!({}))).unwrap();
    let t2 = token(&host2, "s-1", 3600);
    assert_eq!(prime(&mut vm2, &catalog(&t2, "data/x"), &["analyst"]), Some(200));
    assert!(vm2.configure(&with_validation(other_secret)).unwrap());
    assert_eq!(status(&mut vm2, &catalog(&t2, "data/x")), Some(401), "verified again under the new keys");
    // Another session table size: the session is read from the new table (no entry: asked).
    assert!(vm.configure(&with_validation(json!({"session": {"ttl_secs": 300, "max_entries": 64}}))).unwrap());
    let asked = vm.send_request(&catalog(&t, "data/x")).unwrap();
    assert_eq!(asked.outcome, RequestOutcome::Paused, "a new table: the remembered entry does not answer");
}

#[test]
fn a_remembered_allow_answers_only_the_same_request() {
    let host = host();
    let mut vm = host.configured_vm(&with_validation(json!({}))).unwrap();
    let t = token(&host, "s-1", 3600);
    let first = catalog(&t, "data/x").header("x-request-id", "r-1");
    assert_eq!(prime(&mut vm, &first, &["analyst"]), Some(200));
    let (decided, full) = vm.fuel_used(|vm| vm.send_request(&first)).unwrap();
    assert_eq!(decided.outcome.status(), Some(200));
    // The same request under another request id: answered from the memo, at a fraction of a
    // decision's instructions.
    let again = catalog(&t, "data/x").header("x-request-id", "r-2");
    let (remembered, hit) = vm.fuel_used(|vm| vm.send_request(&again)).unwrap();
    assert_eq!(remembered.outcome.status(), Some(200));
    assert!(hit * 2 < full, "remembered: {hit} instructions, decided: {full}");
    // A second, different token beside it is two readings: refused, never the remembered allow.
    let other = token(&host, "s-2", 3600);
    let two = catalog(&t, "data/x").header("x-request-id", "r-3").header("cookie", &format!("session_token={other}"));
    assert_eq!(status(&mut vm, &two), Some(400));
    // Another playbook under the same token is decided afresh.
    assert_eq!(status(&mut vm, &catalog(&t, "system/x").header("x-request-id", "r-4")), Some(403));
    assert!(vm.http_calls().is_empty());
}

#[test]
fn a_request_that_carries_identity_headers_is_never_answered_from_memory() {
    let host = host();
    let (mut vm, t) = analyst_session(&host);
    // A name of the identity family the filter never sets itself: only its removal takes it out.
    let spoofed = catalog(&t, "data/x").header("x-noetl-user-is-admin", "true");
    let plain = catalog(&t, "data/x");
    for (n, request) in [&spoofed, &spoofed, &plain, &plain, &spoofed].into_iter().enumerate() {
        let exchange = vm.send_request(request).unwrap();
        let headers = exchange.outcome.forwarded_headers().unwrap_or_else(|| panic!("request {n} not forwarded"));
        assert_eq!(headers.get("x-noetl-user-is-admin"), None, "request {n}");
        assert_eq!(headers.get_all("x-noetl-user-roles"), vec!["analyst"], "request {n}");
    }
}

#[test]
fn a_stats_window_counts_remembered_allows_when_it_ends_and_loses_none() {
    let host = host();
    let mut vm = host.configured_vm(&with_validation(json!({"stats_window_ms": 1000}))).unwrap();
    let t = token(&host, "s-1", 3600);
    let counts = || ["allowed", "cache_hits", "tokens_jwt"].map(|s| host.metric(&format!("playbook_guard.{s}")));
    assert_eq!(prime(&mut vm, &catalog(&t, "data/x"), &["analyst"]), Some(200));
    assert_eq!(status(&mut vm, &catalog(&t, "data/x")), Some(200), "decided, and remembered");
    let decided = counts();
    assert_eq!(decided[0], Some(2), "decided allows are counted as they are answered");
    assert_eq!(status(&mut vm, &catalog(&t, "data/x")), Some(200), "remembered: opens the window");
    let opened = counts();
    assert_eq!(opened[0], Some(3), "the first in a window is counted at once");
    for _ in 0..4 {
        assert_eq!(status(&mut vm, &catalog(&t, "data/x")), Some(200));
    }
    assert_eq!(counts(), opened, "the rest wait for the window's end");
    assert_eq!(vm.tick_period(), Some(Duration::from_millis(1000)), "and the filter asks for a tick then");
    host.clock().advance(Duration::from_millis(1000));
    assert_eq!(vm.run_due_ticks().unwrap(), 1);
    let closed = counts();
    assert_eq!(closed[0], Some(7), "every allow counted");
    for (before, after) in opened.iter().zip(&closed).skip(1) {
        assert_eq!(after.unwrap() - before.unwrap(), 4, "and each of its stats: {closed:?}");
    }
    assert_eq!(vm.tick_period(), None, "nothing waits: no more ticks");
    // Counts still waiting when a new configuration comes are counted then, not dropped.
    assert_eq!(status(&mut vm, &catalog(&t, "data/x")), Some(200), "opens a window");
    assert_eq!(status(&mut vm, &catalog(&t, "data/x")), Some(200), "waits");
    assert!(vm.configure(&with_validation(json!({"stats_window_ms": 1000}))).unwrap());
    assert_eq!(counts()[0], Some(9));
    assert!(!vm.configure(&with_validation(json!({"stats_window_ms": 60_001}))).unwrap(), "over a minute: refused");
    // And so are those waiting when Envoy is done with the root context.
    for _ in 0..3 {
        assert_eq!(status(&mut vm, &catalog(&t, "data/x")), Some(200));
    }
    assert_eq!(counts()[0], Some(11), "decided (a new configuration remembers nothing), the window's first; one waits");
    assert!(vm.root_done().unwrap());
    assert_eq!(counts()[0], Some(12));
}

//! The session cache and the validation callout (SPEC section 4), driven through the real
//! filter with a virtual clock and several workers sharing one store.

// Test helpers outside #[test] functions: failing loudly is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{config, filter, token_with, SECRET, SECRET_ENV};
use playbook_guard_core::testing::policy;
use playbook_guard_test_harness::{Host, HostOptions, HttpCallResponse, Request, RequestOutcome, Vm};
use serde_json::{json, Value};

const TTL: u64 = 300;

fn host_with(options: HostOptions) -> Host {
    Host::with_options(&filter(), options.env(SECRET_ENV, SECRET))
}

fn host() -> Host {
    host_with(HostOptions::default())
}

/// The common configuration with a validation service (and `patch` over the top level).
fn vconfig(validation: Value, patch: Value) -> Vec<u8> {
    let mut all = json!({
        "validation": validation,
        "session": {"ttl_secs": TTL, "negative_ttl_secs": 30, "max_entries": 100},
        "routes": [
            {"match": {"methods": ["POST"], "path": "/api/auth/logout"}, "logout": true},
            {"match": {"prefix": "/api/auth/"}, "public": true},
            {"match": {"methods": ["POST"], "path": "/api/run/playbook"},
             "authorize": {"permission": "execute", "playbook": {"json_pointer": "/path"}}},
            {"match": {"prefix": "/api/catalog/"},
             "authorize": {"permission": "view", "playbook": {"path_after_prefix": true}}},
            {"match": {"path": "/api/me"}, "authenticate": true}
        ],
        "policy": policy(),
    });
    for (k, v) in patch.as_object().into_iter().flatten() {
        all[k] = v.clone();
    }
    // The providers and the rest come from the common configuration.
    let mut base: Value = serde_json::from_slice(&config(json!({}))).unwrap();
    for (k, v) in all.as_object().unwrap() {
        base[k] = v.clone();
    }
    base.to_string().into_bytes()
}

fn default_config() -> Vec<u8> {
    vconfig(json!({"cluster": "noetl"}), json!({}))
}

/// A token for session `sid` that outlives every clock jump in these tests. Its roles claim
/// says admin: the validation service's roles must win.
fn token(host: &Host, sid: &str) -> String {
    let far = host.clock().now_secs() + 365 * 86_400;
    token_with(host, &["admin"], json!({"sid": sid, "exp": far}))
}

fn answer(roles: &[&str]) -> HttpCallResponse {
    HttpCallResponse::json(
        200,
        &json!({"status": "ok", "valid": true,
                "user": {"user_id": 7, "email": "grace@example.com", "display_name": "Grace", "roles": roles},
                "expires_at": null, "error": null}),
    )
}

fn catalog(token: &str, playbook: &str) -> Request {
    Request::get(&format!("/api/catalog/{playbook}")).bearer(token)
}

fn calls(vms: &[&Vm]) -> usize {
    vms.iter().map(|vm| vm.http_calls().len()).sum()
}

/// Sends a request that must miss, answers its callout with `response`, returns the context.
fn prime(vm: &mut Vm, request: &Request, response: HttpCallResponse) -> RequestOutcome {
    let exchange = vm.send_request(request).unwrap();
    assert_eq!(exchange.outcome, RequestOutcome::Paused, "a miss pauses the request");
    let call = vm.http_calls().pop().expect("one callout");
    vm.respond_http_call(call.token, response).unwrap();
    vm.outcome(exchange.context_id).unwrap()
}

fn status(outcome: &RequestOutcome) -> Option<u32> {
    outcome.status()
}

#[test]
fn a_thousand_requests_on_a_fresh_session_make_one_callout() {
    let host = host();
    let mut vm = host.configured_vm(&default_config()).unwrap();
    let t = token(&host, "s-1");

    let exchange = vm.send_request(&catalog(&t, "data/x")).unwrap();
    assert_eq!(exchange.outcome, RequestOutcome::Paused);
    let call = vm.http_calls().pop().unwrap();
    assert_eq!(call.upstream, "noetl");
    assert_eq!(call.headers.get(":path").as_deref(), Some("/api/auth/session/validate"));
    assert_eq!(call.headers.get(":method").as_deref(), Some("POST"));
    assert_eq!(call.body_json().unwrap(), json!({"session_token": t, "credential": "pg_auth"}));
    assert_eq!(call.timeout, Duration::from_millis(2000));
    vm.respond_http_call(call.token, answer(&["analyst"])).unwrap();
    let outcome = vm.outcome(exchange.context_id).unwrap();
    let headers = outcome.forwarded_headers().expect("resumed and forwarded");
    assert_eq!(headers.get("x-noetl-user-id").as_deref(), Some("7"), "the service's user");
    assert_eq!(headers.get("x-noetl-user-roles").as_deref(), Some("analyst"), "the service's roles, not the token's");

    let mut fuel = Vec::new();
    for i in 0..999 {
        let playbook = if i % 2 == 0 { "data/x" } else { "system/x" };
        let (exchange, used) = vm.fuel_used(|vm| vm.send_request(&catalog(&t, playbook))).unwrap();
        let want = if i % 2 == 0 { 200 } else { 403 };
        assert_eq!(status(&exchange.outcome), Some(want));
        fuel.push(used);
    }
    assert!(vm.http_calls().is_empty());
    assert_eq!(host.metric("playbook_guard.callouts"), Some(1));
    assert_eq!(host.metric("playbook_guard.cache_hits"), Some(999));
    assert_eq!(host.metric("playbook_guard.cache_misses"), Some(1));
    fuel.sort_unstable();
    println!("instructions per cache-hit request (median of 999, wasm fuel): {}", fuel[fuel.len() / 2]);
}

#[test]
fn expiry_after_the_ttl_makes_exactly_one_more_callout() {
    let host = host();
    let mut vm = host.configured_vm(&default_config()).unwrap();
    let t = token(&host, "s-1");
    assert_eq!(status(&prime(&mut vm, &catalog(&t, "data/x"), answer(&["analyst"]))), Some(200));

    host.clock().advance(Duration::from_secs(TTL - 1));
    assert_eq!(status(&vm.send_request(&catalog(&t, "data/x")).unwrap().outcome), Some(200));
    assert!(vm.http_calls().is_empty(), "still fresh");

    host.clock().advance(Duration::from_secs(1));
    let waiting: Vec<u32> =
        (0..10).map(|_| vm.send_request(&catalog(&t, "data/x")).unwrap()).map(|e| e.context_id).collect();
    assert_eq!(vm.http_calls().len(), 1, "ten requests at expiry, one callout");
    let call = vm.http_calls().pop().unwrap();
    vm.respond_http_call(call.token, answer(&["viewer"])).unwrap();
    for ctx in waiting {
        // viewer may view data/x: every waiter resumed with the new answer.
        assert_eq!(status(&vm.outcome(ctx).unwrap()), Some(200), "context {ctx}");
    }
    assert_eq!(host.metric("playbook_guard.callouts"), Some(2));
    assert_eq!(host.metric("playbook_guard.coalesced_waits"), Some(9));
}

#[test]
fn fifty_requests_across_four_workers_at_expiry_make_one_callout() {
    let host = host();
    let mut vms = host.workers(4, &default_config()).unwrap();
    let t = token(&host, "s-1");
    assert_eq!(status(&prime(&mut vms[0], &catalog(&t, "data/x"), answer(&["analyst"]))), Some(200));
    host.clock().advance(Duration::from_secs(TTL));

    let mut sent = Vec::new();
    for i in 0..50 {
        let w = i % 4;
        sent.push((w, vms[w].send_request(&catalog(&t, "data/x")).unwrap().context_id));
    }
    assert_eq!(calls(&vms.iter().collect::<Vec<_>>()), 1, "fifty requests on four workers, one callout");
    let owner = vms.iter().position(|vm| !vm.http_calls().is_empty()).unwrap();
    let call = vms[owner].http_calls().pop().unwrap();
    vms[owner].respond_http_call(call.token, answer(&["analyst"])).unwrap();
    // The other workers see the answer on their next tick.
    host.clock().advance(Duration::from_millis(25));
    for vm in vms.iter_mut() {
        vm.run_due_ticks().unwrap();
    }
    for (w, ctx) in sent {
        assert_eq!(status(&vms[w].outcome(ctx).unwrap()), Some(200), "worker {w} context {ctx}");
    }
    assert_eq!(host.metric("playbook_guard.callouts"), Some(2));
    assert!(vms.iter().all(|vm| vm.tick_period().is_none()), "ticking stops when nobody waits");
}

#[test]
fn an_owner_that_vanishes_is_taken_over_at_the_next_tick() {
    let host = host();
    let mut vms = host.workers(2, &default_config()).unwrap();
    let t = token(&host, "s-1");
    let owner = vms[0].send_request(&catalog(&t, "data/x")).unwrap();
    let waiter = vms[1].send_request(&catalog(&t, "data/x")).unwrap();
    assert_eq!(calls(&[&vms[0], &vms[1]]), 1);
    vms[0].finish(owner.context_id).unwrap(); // the client went away; its callout answer is lost

    host.clock().advance(Duration::from_millis(25));
    vms[1].run_due_ticks().unwrap();
    let call = vms[1].http_calls().pop().expect("the waiter asked itself");
    vms[1].respond_http_call(call.token, answer(&["analyst"])).unwrap();
    assert_eq!(status(&vms[1].outcome(waiter.context_id).unwrap()), Some(200));
}

/// Everything a worker of another host leaves in shared data once its callout for `sid` has
/// been answered with `roles`: the session, its eviction slot, and the stripe with the claim gone.
fn answered_elsewhere(sid: &str, roles: &[&str]) -> Vec<(String, Vec<u8>)> {
    let other = host();
    let mut vm = other.configured_vm(&default_config()).unwrap();
    assert_eq!(status(&prime(&mut vm, &catalog(&token(&other, sid), "data/x"), answer(roles))), Some(200));
    other.shared_data_keys().into_iter().filter_map(|k| other.shared_data(&k).map(|(v, _)| (k, v))).collect()
}

#[test]
fn an_answer_stored_between_a_miss_and_the_claim_is_used_not_fetched_again() {
    let written = answered_elsewhere("s-1", &["analyst"]);
    let host = host();
    let mut vm = host.configured_vm(&default_config()).unwrap();
    // This worker reads the cache (a miss); before its claim lands, another worker stores the
    // answer and lets go of its own claim. Real threads meet this now and then under load.
    host.interleave_before_write("pg1/f/", written).unwrap();
    let exchange = vm.send_request(&catalog(&token(&host, "s-1"), "data/x")).unwrap();
    let headers = exchange.outcome.forwarded_headers().expect("decided at once, from the stored answer");
    assert_eq!(headers.get("x-noetl-user-roles").as_deref(), Some("analyst"));
    assert!(vm.http_calls().is_empty(), "the answer is not fetched a second time");
    assert_eq!(host.metric("playbook_guard.callouts"), Some(0));
    assert_eq!(host.metric("playbook_guard.coalesced_waits"), Some(0), "nothing waited for another request");

    // The claim it took to find that out is gone: the next miss on this session may ask.
    host.clock().advance(Duration::from_secs(TTL));
    let again = vm.send_request(&catalog(&token(&host, "s-1"), "data/x")).unwrap();
    assert_eq!(again.outcome, RequestOutcome::Paused);
    assert_eq!(vm.http_calls().len(), 1);
}

#[test]
fn a_claim_that_meets_contention_waits_a_tick_and_its_answer_is_kept() {
    let host = host();
    let mut vm = host.configured_vm(&default_config()).unwrap();
    // Other workers rewrite every in-flight stripe before each of this worker's next writes to
    // one, more times than it retries a compare-and-swap.
    let stripes: Vec<(String, Vec<u8>)> = host
        .shared_data_keys()
        .into_iter()
        .filter(|k| k.starts_with("pg1/f/"))
        .map(|k| (k.clone(), host.shared_data(&k).unwrap().0))
        .collect();
    for _ in 0..20 {
        host.interleave_before_write("pg1/f/", stripes.clone()).unwrap();
    }
    let t = token(&host, "s-1");
    let first = vm.send_request(&catalog(&t, "data/x")).unwrap();
    assert_eq!(first.outcome, RequestOutcome::Paused);
    assert!(vm.http_calls().is_empty(), "no callout without a claim");

    // The contention is over by the next tick: the claim lands, one callout, and its answer is
    // kept (an owner without a mark could not have kept it).
    host.clock().advance(Duration::from_millis(25));
    vm.run_due_ticks().unwrap();
    let call = vm.http_calls().pop().expect("the waiter claims and asks");
    vm.respond_http_call(call.token, answer(&["analyst"])).unwrap();
    assert_eq!(status(&vm.outcome(first.context_id).unwrap()), Some(200));
    let second = vm.send_request(&catalog(&t, "data/x")).unwrap();
    assert_eq!(status(&second.outcome), Some(200));
    assert_eq!(host.metric("playbook_guard.callouts"), Some(1), "the answer was kept");
}

#[test]
fn configuring_a_worker_creates_the_stripes_and_keeps_claims_in_flight() {
    let host = host();
    let mut first = host.configured_vm(&default_config()).unwrap();
    let stripes = host.shared_data_keys().iter().filter(|k| k.starts_with("pg1/f/")).count();
    assert_eq!(stripes, 64, "every in-flight stripe exists before the first request");
    let t = token(&host, "s-1");
    let owner = first.send_request(&catalog(&t, "data/x")).unwrap();

    // A worker that starts late, and a configuration update on the owner's worker, must not
    // wipe the claim the owner holds.
    let mut late = host.configured_vm(&default_config()).unwrap();
    assert!(first.configure(&default_config()).unwrap());
    let waiter = late.send_request(&catalog(&t, "data/x")).unwrap();
    assert_eq!(waiter.outcome, RequestOutcome::Paused);
    assert!(late.http_calls().is_empty(), "the late worker waits for the owner's callout");

    let call = first.http_calls().pop().unwrap();
    first.respond_http_call(call.token, answer(&["analyst"])).unwrap();
    assert_eq!(status(&first.outcome(owner.context_id).unwrap()), Some(200));
    host.clock().advance(Duration::from_millis(25));
    late.run_due_ticks().unwrap();
    assert_eq!(status(&late.outcome(waiter.context_id).unwrap()), Some(200));
    assert_eq!(host.metric("playbook_guard.callouts"), Some(1));
}

/// Every way a callout can fail.
fn failures() -> Vec<(&'static str, Option<HttpCallResponse>)> {
    vec![
        ("timeout or reset", None),
        ("HTTP 500", Some(HttpCallResponse::json(500, &json!({"status": "error", "error": "boom"})))),
        ("HTTP 404", Some(HttpCallResponse::new(404, "not found"))),
        ("not JSON", Some(HttpCallResponse::new(200, "<html>"))),
        ("status error", Some(HttpCallResponse::json(200, &json!({"status": "error", "valid": false, "error": "db"})))),
        ("no valid field", Some(HttpCallResponse::json(200, &json!({"status": "ok"})))),
    ]
}

fn fail(vm: &mut Vm, request: &Request, failure: Option<HttpCallResponse>) -> RequestOutcome {
    let exchange = vm.send_request(request).unwrap();
    let call = vm.http_calls().pop().expect("a callout");
    match failure {
        None => vm.fail_http_call(call.token).unwrap(),
        Some(response) => vm.respond_http_call(call.token, response).unwrap(),
    }
    vm.outcome(exchange.context_id).unwrap()
}

#[test]
fn a_waiter_whose_owner_hangs_takes_over_when_the_claim_lapses() {
    let host = host();
    let mut vms = host.workers(2, &default_config()).unwrap();
    let t = token(&host, "s-1");
    let _owner = vms[0].send_request(&catalog(&t, "data/x")).unwrap(); // its callout never answers
    let waiter = vms[1].send_request(&catalog(&t, "data/x")).unwrap();
    host.clock().advance(Duration::from_millis(2000));
    vms[1].run_due_ticks().unwrap();
    assert!(vms[1].http_calls().is_empty(), "the claim still stands");
    host.clock().advance(Duration::from_millis(1000 + 20));
    vms[1].run_due_ticks().unwrap();
    let call = vms[1].http_calls().pop().expect("the waiter asked itself once the claim lapsed");
    vms[1].respond_http_call(call.token, answer(&["analyst"])).unwrap();
    assert_eq!(status(&vms[1].outcome(waiter.context_id).unwrap()), Some(200));
}

#[test]
fn failures_deny_with_503_by_default() {
    for (what, failure) in failures() {
        let host = host();
        let mut vm = host.configured_vm(&default_config()).unwrap();
        let outcome = fail(&mut vm, &catalog(&token(&host, "s-1"), "data/x"), failure);
        let response = outcome.local_response().unwrap_or_else(|| panic!("{what}: {outcome:?}"));
        assert_eq!(response.status, 503, "{what}");
        assert_eq!(response.header("retry-after").as_deref(), Some("1"), "{what}");
        assert_eq!(host.metric("playbook_guard.callout_failures"), Some(1), "{what}");
    }
}

#[test]
fn failures_serve_the_stale_entry_within_its_grace() {
    let cfg = vconfig(json!({"cluster": "noetl", "failure_mode": "serve_stale", "stale_grace_secs": 60}), json!({}));
    for (what, failure) in failures() {
        let host = host();
        let mut vm = host.configured_vm(&cfg).unwrap();
        let t = token(&host, "s-1");
        assert_eq!(status(&prime(&mut vm, &catalog(&t, "data/x"), answer(&["analyst"]))), Some(200));
        host.clock().advance(Duration::from_secs(TTL + 30));
        let outcome = fail(&mut vm, &catalog(&t, "data/x"), failure);
        assert_eq!(status(&outcome), Some(200), "{what}: stale served");
        assert_eq!(host.metric("playbook_guard.stale_served"), Some(1), "{what}");
        // Right after a failure, requests follow the failure mode without asking again.
        assert_eq!(status(&vm.send_request(&catalog(&t, "data/x")).unwrap().outcome), Some(200));
        assert!(vm.http_calls().is_empty(), "{what}: no callout storm during an outage");
        // Past the grace, the stale entry no longer serves.
        host.clock().advance(Duration::from_secs(31));
        let outcome = fail(&mut vm, &catalog(&t, "data/x"), Some(HttpCallResponse::new(502, "")));
        assert_eq!(status(&outcome), Some(503), "{what}: past the grace");
    }
}

#[test]
fn invalid_sessions_are_401_and_cached_for_the_negative_ttl() {
    let host = host();
    let mut vm = host.configured_vm(&default_config()).unwrap();
    let t = token(&host, "s-gone");
    let invalid = HttpCallResponse::json(200, &json!({"status": "ok", "valid": false, "user": null, "error": null}));
    let outcome = prime(&mut vm, &catalog(&t, "data/x"), invalid);
    let response = outcome.local_response().unwrap();
    assert_eq!(response.status, 401);
    assert_eq!(response.body_json().unwrap()["reason"], "invalid_session");
    host.clock().advance(Duration::from_secs(29));
    assert_eq!(status(&vm.send_request(&catalog(&t, "data/x")).unwrap().outcome), Some(401));
    assert!(vm.http_calls().is_empty(), "remembered");
    host.clock().advance(Duration::from_secs(1));
    assert_eq!(vm.send_request(&catalog(&t, "data/x")).unwrap().outcome, RequestOutcome::Paused);
    assert_eq!(vm.http_calls().len(), 1, "asked again after the negative TTL");
}

#[test]
fn bad_tokens_never_cause_a_callout() {
    let host = host();
    let mut vm = host.configured_vm(&default_config()).unwrap();
    let expired = token_with(&host, &[], json!({"exp": host.clock().now_secs() - 3600}));
    let forged = format!("{}x", token(&host, "s-1"));
    let foreign = token_with(&host, &[], json!({"iss": "https://elsewhere"}));
    for t in [expired, forged, foreign] {
        assert_eq!(status(&vm.send_request(&catalog(&t, "data/x")).unwrap().outcome), Some(401));
    }
    assert!(vm.http_calls().is_empty());
    assert_eq!(host.metric("playbook_guard.callouts"), Some(0));
}

#[test]
fn the_cache_is_bounded_and_the_oldest_goes_first() {
    let host = host();
    let cfg = vconfig(json!({"cluster": "noetl"}), json!({"session": {"max_entries": 3}}));
    let mut vm = host.configured_vm(&cfg).unwrap();
    for sid in ["s-1", "s-2", "s-3", "s-4"] {
        assert_eq!(status(&prime(&mut vm, &catalog(&token(&host, sid), "data/x"), answer(&["analyst"]))), Some(200));
    }
    assert_eq!(host.metric("playbook_guard.sessions_evicted"), Some(1));
    assert_eq!(status(&vm.send_request(&catalog(&token(&host, "s-4"), "data/x")).unwrap().outcome), Some(200));
    assert_eq!(status(&vm.send_request(&catalog(&token(&host, "s-2"), "data/x")).unwrap().outcome), Some(200));
    assert!(vm.http_calls().is_empty(), "s-2 and s-4 are cached");
    assert_eq!(vm.send_request(&catalog(&token(&host, "s-1"), "data/x")).unwrap().outcome, RequestOutcome::Paused);
    assert_eq!(vm.http_calls().len(), 1, "s-1, the oldest, was evicted");
    assert_eq!(sessions_stored(&host), 3);
}

#[test]
fn logout_evicts_the_session_on_every_worker() {
    let host = host();
    let mut vms = host.workers(2, &default_config()).unwrap();
    let t = token(&host, "s-1");
    assert_eq!(status(&prime(&mut vms[0], &catalog(&t, "data/x"), answer(&["analyst"]))), Some(200));
    assert_eq!(status(&vms[1].send_request(&catalog(&t, "data/x")).unwrap().outcome), Some(200));
    assert!(vms[1].http_calls().is_empty(), "the other worker shares the entry");

    let logout = vms[1].send_request(&Request::post("/api/auth/logout", "").bearer(&t)).unwrap();
    assert_eq!(status(&logout.outcome), Some(200));
    vms[1].on_response_headers(logout.context_id, &[(":status", "200")], true).unwrap();
    assert_eq!(host.metric("playbook_guard.logouts"), Some(1));

    assert_eq!(vms[0].send_request(&catalog(&t, "data/x")).unwrap().outcome, RequestOutcome::Paused);
    assert_eq!(vms[0].http_calls().len(), 1, "after logout the session is asked about again");
}

#[test]
fn a_logout_during_a_callout_is_not_undone_by_its_answer() {
    let host = host();
    let mut vms = host.workers(2, &default_config()).unwrap();
    let t = token(&host, "s-1");
    assert_eq!(status(&prime(&mut vms[0], &catalog(&t, "data/x"), answer(&["analyst"]))), Some(200));

    // The logout passes the cache just before the entry goes stale...
    host.clock().advance(Duration::from_secs(TTL - 1));
    let logout = vms[1].send_request(&Request::post("/api/auth/logout", "").bearer(&t)).unwrap();
    assert_eq!(status(&logout.outcome), Some(200));
    // ...and while the upstream logs the session out, a request finds the entry stale and asks
    // the service, which still calls the session valid.
    host.clock().advance(Duration::from_secs(1));
    let asking = vms[0].send_request(&catalog(&t, "data/x")).unwrap();
    let call = vms[0].http_calls().pop().expect("a callout");
    vms[1].on_response_headers(logout.context_id, &[(":status", "200")], true).unwrap();
    vms[0].respond_http_call(call.token, answer(&["analyst"])).unwrap();
    assert_eq!(status(&vms[0].outcome(asking.context_id).unwrap()), Some(200), "it asked before the logout");

    // That answer predates the logout: it is not cached, and the next request asks again.
    assert_eq!(vms[1].send_request(&catalog(&t, "data/x")).unwrap().outcome, RequestOutcome::Paused);
    assert_eq!(vms[1].http_calls().len(), 1);
}

#[test]
fn an_unknown_cluster_fails_at_once_with_a_clear_log_line() {
    let host = host_with(HostOptions::default().clusters(&["somewhere-else"]));
    let mut vm = host.configured_vm(&default_config()).unwrap();
    let outcome = vm.send_request(&catalog(&token(&host, "s-1"), "data/x")).unwrap().outcome;
    assert_eq!(status(&outcome), Some(503));
    assert!(vm.logs().iter().any(|l| l.message.contains("\"noetl\"")), "{:?}", vm.logs());
}

#[test]
fn opaque_tokens_are_vouched_for_by_the_service() {
    let host = host();
    let cfg = vconfig(json!({"cluster": "noetl"}), json!({"opaque_tokens": true}));
    let mut vm = host.configured_vm(&cfg).unwrap();
    // NoETL's sessions are `md5(random()::text || clock_timestamp()::text)`: 32 lowercase hex.
    let session = "0cc175b9c0f1b6a831c399e269772661";
    let request = Request::get("/api/catalog/data/x").header("x-session-token", session);
    let exchange = vm.send_request(&request).unwrap();
    let call = vm.http_calls().pop().unwrap();
    assert_eq!(call.body_json().unwrap()["session_token"], session);
    vm.respond_http_call(call.token, answer(&["analyst"])).unwrap();
    let outcome = vm.outcome(exchange.context_id).unwrap();
    assert_eq!(outcome.forwarded_headers().unwrap().get("x-noetl-user-id").as_deref(), Some("7"));
}

#[test]
fn a_body_route_waits_for_the_session_then_reads_the_body() {
    for hold in [false, true] {
        let host = host_with(HostOptions::default().allow_on_headers_stop_iteration(hold));
        let cfg = vconfig(json!({"cluster": "noetl"}), json!({"hold_headers_for_body": hold}));
        let mut vm = host.configured_vm(&cfg).unwrap();
        let t = token(&host, "s-1");
        for (playbook, want) in [("data/x", 200), ("system/x", 403)] {
            let body = json!({"path": playbook}).to_string();
            let exchange = vm.send_request(&Request::post("/api/run/playbook", body.clone()).bearer(&t)).unwrap();
            if let Some(call) = vm.http_calls().pop() {
                vm.respond_http_call(call.token, answer(&["analyst"])).unwrap();
            }
            let outcome = vm.outcome(exchange.context_id).unwrap();
            assert_eq!(status(&outcome), Some(want), "hold {hold}, {playbook}: {outcome:?}");
            if let RequestOutcome::Forwarded { body: sent, .. } = &outcome {
                assert_eq!(sent, body.as_bytes(), "the body goes upstream intact");
            }
        }
    }
}

/// NoETL's answer for an unknown, expired or inactive session.
fn unknown_session() -> HttpCallResponse {
    HttpCallResponse::json(
        200,
        &json!({"status": "ok", "valid": false, "user": null, "expires_at": null, "error": null}),
    )
}

/// A made-up opaque session token: 32 lowercase hex digits, as NoETL's look.
fn junk(n: usize) -> Request {
    Request::get("/api/catalog/data/x").header("x-session-token", &format!("{n:032x}"))
}

/// How many sessions the shared cache holds: the records in its buckets (`pg2/s/<n>`, each a
/// JSON array of records).
fn sessions_stored(host: &Host) -> usize {
    let buckets = host
        .shared_data_keys()
        .into_iter()
        .filter(|k| k.strip_prefix("pg2/s/").is_some_and(|n| n.parse::<u64>().is_ok()));
    buckets
        .filter_map(|k| host.shared_data(&k))
        .map(|(value, _)| serde_json::from_slice::<Vec<serde_json::Value>>(&value).map_or(0, |rows| rows.len()))
        .sum()
}

#[test]
fn no_number_of_unknown_tokens_evicts_a_valid_session() {
    let host = host();
    let cfg = vconfig(
        json!({"cluster": "noetl", "max_cold_callouts_per_sec": 10_000}),
        json!({"opaque_tokens": true, "session": {"ttl_secs": TTL, "max_entries": 50, "max_negative_entries": 20}}),
    );
    let mut vms = host.workers(2, &cfg).unwrap();
    let (t1, t2) = (token(&host, "s-1"), token(&host, "s-2"));
    assert_eq!(status(&prime(&mut vms[0], &catalog(&t1, "data/x"), answer(&["analyst"]))), Some(200));
    assert_eq!(status(&prime(&mut vms[1], &catalog(&t2, "data/x"), answer(&["analyst"]))), Some(200));

    // Session s-2 is revoked: its entry moves to the invalid ring.
    host.clock().advance(Duration::from_secs(TTL));
    assert_eq!(status(&prime(&mut vms[1], &catalog(&t2, "data/x"), unknown_session())), Some(401));
    assert_eq!(status(&prime(&mut vms[0], &catalog(&t1, "data/x"), answer(&["analyst"]))), Some(200));

    for n in 0..60 {
        let outcome = prime(&mut vms[n % 2], &junk(n), unknown_session());
        assert_eq!(status(&outcome), Some(401), "junk token {n}");
    }
    let exchange = vms[1].send_request(&catalog(&t1, "data/x")).unwrap();
    assert_eq!(status(&exchange.outcome), Some(200), "the valid session is still cached");
    assert!(vms.iter().all(|vm| vm.http_calls().is_empty()), "no callout for it");
    // s-2's answer was one of the 61 invalid ones, the 20 newest of which are kept.
    assert_eq!(host.metric("playbook_guard.invalid_sessions_evicted"), Some(41));
    assert_eq!(host.metric("playbook_guard.sessions_evicted"), Some(0));
    assert_eq!(sessions_stored(&host), 1 + 20, "each ring keeps to its bound");

    // A session that moves to the invalid ring leaves its valid slot behind; when valid
    // sessions come round to that slot, it must not evict the invalid entry.
    let t3 = token(&host, "s-3");
    assert_eq!(status(&prime(&mut vms[0], &catalog(&t3, "data/x"), answer(&["analyst"]))), Some(200));
    host.clock().advance(Duration::from_secs(TTL));
    assert_eq!(status(&prime(&mut vms[0], &catalog(&t3, "data/x"), unknown_session())), Some(401));
    for n in 4..54 {
        let t = token(&host, &format!("s-{n}"));
        assert_eq!(status(&prime(&mut vms[n % 2], &catalog(&t, "data/x"), answer(&["analyst"]))), Some(200));
    }
    assert_eq!(host.metric("playbook_guard.sessions_evicted"), Some(1), "s-1, the oldest valid session");
    assert_eq!(status(&vms[1].send_request(&catalog(&t3, "data/x")).unwrap().outcome), Some(401));
    assert!(vms.iter().all(|vm| vm.http_calls().is_empty()), "s-3's invalid entry is still cached");
    assert_eq!(sessions_stored(&host), 50 + 20);
}

#[test]
fn callouts_for_never_seen_sessions_are_limited_per_worker() {
    let host = host();
    let cfg = vconfig(json!({"cluster": "noetl", "max_cold_callouts_per_sec": 5}), json!({"opaque_tokens": true}));
    let mut vms = host.workers(2, &cfg).unwrap();
    let mut paused = Vec::new();
    let mut limited = 0;
    for n in 0..8 {
        let exchange = vms[0].send_request(&junk(n)).unwrap();
        match exchange.outcome.local_response() {
            None => paused.push(exchange.context_id),
            Some(response) => {
                assert_eq!(response.status, 503);
                assert_eq!(response.header("retry-after").as_deref(), Some("1"));
                assert_eq!(response.body_json().unwrap()["reason"], "too_many_new_sessions");
                limited += 1;
            }
        }
    }
    assert_eq!((paused.len(), limited), (5, 3), "a burst of the rate, then 503");
    assert_eq!(vms[0].http_calls().len(), 5);
    assert_eq!(host.metric("playbook_guard.cold_callouts_limited"), Some(3));
    // The limit is per worker.
    for n in 100..105 {
        assert_eq!(vms[1].send_request(&junk(n)).unwrap().outcome, RequestOutcome::Paused, "worker 1, token {n}");
    }
    assert_eq!(status(&vms[1].send_request(&junk(105)).unwrap().outcome), Some(503));
    // The allowance comes back at the rate: one every 200 ms.
    host.clock().advance(Duration::from_millis(199));
    assert_eq!(status(&vms[0].send_request(&junk(8)).unwrap().outcome), Some(503));
    host.clock().advance(Duration::from_millis(1));
    assert_eq!(vms[0].send_request(&junk(9)).unwrap().outcome, RequestOutcome::Paused);
    assert_eq!(status(&vms[0].send_request(&junk(10)).unwrap().outcome), Some(503));

    // Sessions the cache has seen are not limited: answer worker 0's callouts (three valid,
    // three invalid), spend its allowance on new tokens, and let the entries go stale.
    for (i, call) in vms[0].http_calls().into_iter().enumerate() {
        let response = if i < 3 { answer(&["analyst"]) } else { unknown_session() };
        vms[0].respond_http_call(call.token, response).unwrap();
    }
    host.clock().advance(Duration::from_secs(TTL));
    for n in 200..205 {
        assert_eq!(vms[0].send_request(&junk(n)).unwrap().outcome, RequestOutcome::Paused);
    }
    assert_eq!(status(&vms[0].send_request(&junk(205)).unwrap().outcome), Some(503), "allowance spent");
    let before = vms[0].http_calls().len();
    for n in [0, 1, 2, 3, 4, 9] {
        assert_eq!(vms[0].send_request(&junk(n)).unwrap().outcome, RequestOutcome::Paused, "seen token {n}");
    }
    assert_eq!(vms[0].http_calls().len(), before + 6, "stale and negative entries are refreshed regardless");
    assert_eq!(host.metric("playbook_guard.cold_callouts_limited"), Some(7));
}

#[test]
fn answers_are_read_strictly_and_invalid_ones_cached_for_the_negative_ttl() {
    let host = host();
    let mut vm = host.configured_vm(&default_config()).unwrap();
    let now = host.clock().now_secs();
    let user = json!({"user_id": 7, "roles": ["analyst"]});
    // Valid, but expired an hour ago: invalid, and remembered as such.
    let expired = json!({"status": "ok", "valid": true, "user": user, "expires_at": now - 3600, "error": null});
    // Invalid, with an expiry long past: remembered for the negative TTL all the same.
    let gone =
        json!({"status": "ok", "valid": false, "user": null, "expires_at": "2020-01-01 00:00:00+00", "error": null});
    for (sid, body) in [("s-expired", expired), ("s-gone", gone)] {
        let t = token(&host, sid);
        let outcome = prime(&mut vm, &catalog(&t, "data/x"), HttpCallResponse::json(200, &body));
        assert_eq!(outcome.local_response().unwrap().body_json().unwrap()["reason"], "invalid_session", "{sid}");
        for _ in 0..5 {
            assert_eq!(status(&vm.send_request(&catalog(&t, "data/x")).unwrap().outcome), Some(401), "{sid}");
        }
        assert!(vm.http_calls().is_empty(), "{sid}: cached, not asked again");
    }
    assert_eq!(host.metric("playbook_guard.callouts"), Some(2));

    // An expiry that is not a timestamp is a malformed answer: the failure mode, never "no
    // expiry". So is NoETL's 422 for a request it cannot read.
    for (sid, response) in [
        ("s-float", HttpCallResponse::json(200, &json!({"valid": true, "user": user, "expires_at": 1_600_000_000.5}))),
        ("s-negative", HttpCallResponse::json(200, &json!({"valid": true, "user": user, "expires_at": -5}))),
        ("s-object", HttpCallResponse::json(200, &json!({"valid": true, "user": user, "expires_at": {}}))),
        ("s-422", HttpCallResponse::json(422, &json!({"detail": [{"loc": ["body"], "msg": "field required"}]}))),
    ] {
        let outcome = prime(&mut vm, &catalog(&token(&host, sid), "data/x"), response);
        assert_eq!(status(&outcome), Some(503), "{sid}");
    }
    assert_eq!(host.metric("playbook_guard.callout_failures"), Some(4));
}

#[test]
fn dropped_roles_are_counted_and_never_reach_the_upstream() {
    let host = host();
    let mut vm = host.configured_vm(&default_config()).unwrap();
    let t = token(&host, "s-1");
    let outcome = prime(&mut vm, &catalog(&t, "data/x"), answer(&["viewer,admin", "analyst", "", "a b"]));
    let headers = outcome.forwarded_headers().unwrap();
    assert_eq!(headers.get("x-noetl-user-roles").as_deref(), Some("analyst"));
    assert_eq!(host.metric("playbook_guard.roles_dropped"), Some(3));
    assert_eq!(status(&vm.send_request(&catalog(&t, "system/x")).unwrap().outcome), Some(403));
}

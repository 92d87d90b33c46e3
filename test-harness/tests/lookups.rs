//! The `resolver`: ids looked up through NoETL, driven through the real filter with a virtual
//! clock and several workers sharing one store, as the session tests are.

// Test helpers outside #[test] functions: failing loudly is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{config, host, token_with};
use playbook_guard_test_harness::{Host, HttpCallResponse, Request, Vm};
use serde_json::json;

/// No validation service (roles from the token), and a resolver on cluster `noetl`.
fn resolving() -> Vec<u8> {
    config(json!({
        "resolver": {"cluster": "noetl", "ttl_secs": 600},
        "routes": [
            {"match": {"methods": ["POST"], "path": "/api/execute"},
             "authorize": {"permission": "execute", "playbook": {"json_fields": [
                {"pointer": "/catalog_id", "lookup": "catalog_id", "present": "truthy"}, {"pointer": "/path"}]}}},
            {"match": {"methods": ["GET"], "glob": "/api/executions/*"},
             "authorize": {"permission": "view", "playbook": {"path_capture": true, "lookup": "execution_id"}}}
        ]
    }))
}

fn execute(host: &Host, catalog_id: u64) -> Request {
    Request::post("/api/execute", json!({"catalog_id": catalog_id}).to_string())
        .header("content-type", "application/json")
        .bearer(&token_with(host, &["analyst"], json!({"exp": host.clock().now_secs() + 86_400})))
}

fn entry(path: &str) -> HttpCallResponse {
    HttpCallResponse::json(200, &json!({"catalog_id": "7", "path": path, "version": 1}))
}

fn calls(vms: &[Vm]) -> usize {
    vms.iter().map(|vm| vm.http_calls().len()).sum()
}

/// Answers the one lookup in flight with `response`, then lets every worker tick.
fn answer(host: &Host, vms: &mut [Vm], response: HttpCallResponse) {
    let owner = vms.iter().position(|vm| !vm.http_calls().is_empty()).expect("a lookup in flight");
    let call = vms[owner].http_calls().pop().unwrap();
    vms[owner].respond_http_call(call.token, response).unwrap();
    host.clock().advance(Duration::from_millis(25));
    for vm in vms.iter_mut() {
        vm.run_due_ticks().unwrap();
    }
}

#[test]
fn forty_requests_on_four_workers_make_one_lookup_then_the_cache_answers() {
    let host = host();
    let mut vms = host.workers(4, &resolving()).unwrap();
    let mut sent = Vec::new();
    for i in 0..40 {
        let w = i % 4;
        sent.push((w, vms[w].send_request(&execute(&host, 7)).unwrap().context_id));
    }
    assert_eq!(calls(&vms), 1, "forty requests on four workers, one lookup");
    let call = vms.iter().find_map(|vm| vm.http_calls().pop()).unwrap();
    assert_eq!(call.upstream, "noetl");
    assert_eq!(call.headers.get(":method").as_deref(), Some("POST"));
    assert_eq!(call.headers.get(":path").as_deref(), Some("/api/catalog/resource"));
    assert_eq!(call.body_json().unwrap(), json!({"catalog_id": "7"}));

    answer(&host, &mut vms, entry("data/load"));
    for (w, ctx) in sent {
        assert_eq!(vms[w].outcome(ctx).unwrap().status(), Some(200), "worker {w} context {ctx}");
    }
    assert!(vms.iter().all(|vm| vm.tick_period().is_none()), "ticking stops when nobody waits");

    // Any worker, later: the shared cache answers, until the ttl.
    for vm in vms.iter_mut() {
        assert_eq!(vm.send_request(&execute(&host, 7)).unwrap().outcome.status(), Some(200));
    }
    assert_eq!(calls(&vms), 0);
    assert_eq!(host.metric("playbook_guard.lookups"), Some(1));
    assert_eq!(host.metric("playbook_guard.lookup_hits"), Some(4));
    host.clock().advance(Duration::from_secs(600));
    vms[2].send_request(&execute(&host, 7)).unwrap();
    assert_eq!(calls(&vms), 1, "past the ttl, one more lookup");
}

#[test]
fn the_entry_an_id_names_decides() {
    let host = host();
    let mut vms = host.workers(1, &resolving()).unwrap();
    let ctx = vms[0].send_request(&execute(&host, 7)).unwrap().context_id;
    answer(&host, &mut vms, entry("system/reset"));
    let outcome = vms[0].outcome(ctx).unwrap();
    assert_eq!(outcome.status(), Some(403));
    assert!(outcome.local_response().unwrap().body_text().contains("system/reset"));

    // An execution id in the URL: NoETL's run detail answers with the run's playbook.
    let run = Request::get("/api/executions/42").bearer(&token_with(&host, &["analyst"], json!({})));
    let ctx = vms[0].send_request(&run).unwrap().context_id;
    let call = vms[0].http_calls().pop().unwrap();
    assert_eq!(call.headers.get(":method").as_deref(), Some("GET"));
    assert_eq!(call.headers.get(":path").as_deref(), Some("/api/executions/42"));
    vms[0]
        .respond_http_call(call.token, HttpCallResponse::json(200, &json!({"execution_id": "42", "path": "data/x"})))
        .unwrap();
    assert_eq!(vms[0].outcome(ctx).unwrap().status(), Some(200));
}

#[test]
fn an_owner_that_vanishes_is_taken_over_at_the_next_tick() {
    let host = host();
    let mut vms = host.workers(2, &resolving()).unwrap();
    let owner = vms[0].send_request(&execute(&host, 7)).unwrap();
    let waiter = vms[1].send_request(&execute(&host, 7)).unwrap();
    assert_eq!(calls(&vms), 1);
    vms[0].finish(owner.context_id).unwrap(); // the client went away; the lookup's answer is lost

    host.clock().advance(Duration::from_millis(25));
    vms[1].run_due_ticks().unwrap();
    let call = vms[1].http_calls().pop().expect("the waiter asked itself");
    vms[1].respond_http_call(call.token, entry("data/load")).unwrap();
    assert_eq!(vms[1].outcome(waiter.context_id).unwrap().status(), Some(200));
}

#[test]
fn a_failed_lookup_denies_everyone_waiting_and_an_unknown_id_is_not_kept() {
    let host = host();
    let mut vms = host.workers(2, &resolving()).unwrap();
    let first = vms[0].send_request(&execute(&host, 7)).unwrap().context_id;
    let second = vms[1].send_request(&execute(&host, 7)).unwrap().context_id;
    answer(&host, &mut vms, HttpCallResponse::json(500, &json!({"detail": "database is down"})));
    for (w, ctx) in [(0, first), (1, second)] {
        let outcome = vms[w].outcome(ctx).unwrap();
        assert_eq!(outcome.status(), Some(503), "worker {w}");
        assert!(outcome.local_response().unwrap().body_text().contains("lookup_unavailable"));
    }
    // For a moment after a failure, the id is not asked again.
    assert_eq!(vms[0].send_request(&execute(&host, 7)).unwrap().outcome.status(), Some(503));
    assert_eq!(calls(&vms), 0);

    host.clock().advance(Duration::from_secs(2));
    let ctx = vms[0].send_request(&execute(&host, 8)).unwrap().context_id;
    answer(&host, &mut vms, HttpCallResponse::json(404, &json!({"detail": "Catalog entry not found"})));
    let outcome = vms[0].outcome(ctx).unwrap();
    assert_eq!(outcome.status(), Some(403));
    assert!(outcome.local_response().unwrap().body_text().contains("unresolved_target"));
    vms[1].send_request(&execute(&host, 8)).unwrap();
    assert_eq!(calls(&vms), 1, "an unknown id may be created later: asked again");
}

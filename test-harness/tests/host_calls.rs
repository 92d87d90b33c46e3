//! The harness's own tests: each host call behaves as Envoy documents, checked with a tiny
//! filter written in WAT (`tests/test_filter.wat`).

// Test helpers outside #[test] functions: failing loudly is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::OnceLock;
use std::time::Duration;

use playbook_guard_test_harness::{
    Action, Filter, HarnessError, Host, HostOptions, HttpCallResponse, LogLevel, Request, RequestOutcome,
};

fn filter() -> Filter {
    static FILTER: OnceLock<Filter> = OnceLock::new();
    FILTER
        .get_or_init(|| {
            let wasm = wat::parse_file(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/test_filter.wat")).unwrap();
            Filter::from_bytes(&wasm).unwrap()
        })
        .clone()
}

fn logged(vm: &playbook_guard_test_harness::Vm, text: &str) -> bool {
    vm.logs().iter().any(|l| l.message == text)
}

#[test]
fn configuration_arrives_through_the_plugin_configuration_buffer() {
    let host = Host::new(&filter());
    let vm = host.configured_vm(br#"{"a":1}"#).unwrap();
    assert!(logged(&vm, r#"{"a":1}"#), "{:?}", vm.logs());
    let err = host.configured_vm(b"no thanks").unwrap_err();
    assert!(matches!(err, HarnessError::ConfigurationRejected { .. }), "{err}");
}

#[test]
fn header_maps_properties_metrics_and_shared_data() {
    let host = Host::new(&filter());
    let mut vm = host.configured_vm(b"{}").unwrap();
    let exchange = vm
        .send_request(
            &Request::get("/")
                .header("x-in", "hello")
                .header("x-replace", "old")
                .header("x-replace", "older")
                .header("x-remove", "gone"),
        )
        .unwrap();
    let headers = exchange.outcome.forwarded_headers().unwrap();
    assert_eq!(headers.get("x-echo").as_deref(), Some("hello"));
    assert_eq!(headers.get_all("x-replace"), vec!["new"]);
    assert_eq!(headers.get("x-remove"), None);
    assert!(logged(&vm, "property not found"));
    assert!(logged(&vm, "cas mismatch"));
    assert_eq!(host.metric("wat.requests"), Some(1));
    let (value, cas) = host.shared_data("key").unwrap();
    assert_eq!(value, b"v1");
    assert_ne!(cas, 0);
    // A second worker bumps the same stat.
    let mut other = host.configured_vm(b"{}").unwrap();
    other.send_request(&Request::get("/")).unwrap();
    assert_eq!(host.metric("wat.requests"), Some(2));
}

#[test]
fn a_local_response_ends_the_stream() {
    let host = Host::new(&filter());
    let mut vm = host.configured_vm(b"{}").unwrap();
    let exchange = vm.send_request(&Request::post("/", "abc").chunked(1)).unwrap();
    let response = exchange.outcome.local_response().unwrap();
    assert_eq!(response.status, 403);
    assert_eq!(response.body_text(), "denied");
    assert_eq!(response.header("x-why").as_deref(), Some("test"));
    assert_eq!(response.grpc_status, -1);
    // Only the first chunk reached the filter: Envoy stops after a local reply.
    assert_eq!(vm.stream(exchange.context_id).unwrap().buffered_request_body(), b"a");
}

#[test]
fn an_http_call_pauses_until_the_test_answers() {
    let host = Host::new(&filter());
    let mut vm = host.configured_vm(b"{}").unwrap();
    let exchange = vm.send_request(&Request::get("/").trailer("x-t", "1")).unwrap();
    assert_eq!(exchange.outcome, RequestOutcome::Paused);
    let calls = vm.http_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.upstream, "cluster");
    assert_eq!(call.headers.get(":path").as_deref(), Some("/v"));
    assert_eq!(call.body, b"{}");
    assert_eq!(call.timeout, Duration::from_millis(500));
    assert_eq!(call.context_id, exchange.context_id);

    vm.respond_http_call(call.token, HttpCallResponse::new(200, "answer")).unwrap();
    assert!(logged(&vm, "answer"));
    assert!(vm.outcome(exchange.context_id).unwrap().forwarded_headers().is_some());
    assert!(vm.http_calls().is_empty());
    assert!(matches!(
        vm.respond_http_call(call.token, HttpCallResponse::new(200, "")),
        Err(HarnessError::UnknownHttpCall(_))
    ));

    // A timeout: the callback runs with nothing, and the filter still resumes.
    let exchange = vm.send_request(&Request::get("/").trailer("x-t", "1")).unwrap();
    let token = vm.http_calls()[0].token;
    vm.fail_http_call(token).unwrap();
    assert!(vm.outcome(exchange.context_id).unwrap().forwarded_headers().is_some());
}

#[test]
fn an_unknown_cluster_is_bad_argument() {
    let host = Host::with_options(&filter(), HostOptions::default().clusters(&["other"]));
    let mut vm = host.configured_vm(b"{}").unwrap();
    vm.send_request(&Request::get("/").trailer("x-t", "1")).unwrap();
    assert!(logged(&vm, "bad argument"));
    assert!(vm.http_calls().is_empty());
}

#[test]
fn ticks_fire_on_the_virtual_clock_and_queues_wake_their_owner() {
    let host = Host::new(&filter());
    let mut first = host.configured_vm(b"{}").unwrap();
    assert_eq!(first.tick_period(), Some(Duration::from_secs(1)));
    assert_eq!(first.run_due_ticks().unwrap(), 0);
    host.clock().advance(Duration::from_millis(2500));
    assert_eq!(first.run_due_ticks().unwrap(), 2);
    assert_eq!(host.deliver_queue_ready(std::slice::from_mut(&mut first)).unwrap(), 2);
    assert_eq!(first.logs().iter().filter(|l| l.message == "tick").count(), 2);

    // A second worker registering the same queue name takes it over (as in Envoy), so the first
    // worker's tick wakes the second.
    let second = host.configured_vm(b"{}").unwrap();
    first.tick().unwrap();
    let mut workers = [first, second];
    assert_eq!(host.deliver_queue_ready(&mut workers).unwrap(), 1);
    assert!(logged(&workers[1], "tick"));
}

#[test]
fn a_trap_reports_the_message_and_the_last_logs() {
    let host = Host::new(&filter());
    let mut vm = host.configured_vm(b"{}").unwrap();
    let exchange = vm.send_request(&Request::get("/")).unwrap();
    let err = vm.on_response_headers(exchange.context_id, &[(":status", "200")], true).unwrap_err();
    let trap = err.trap().unwrap();
    assert_eq!(trap.call, "proxy_on_response_headers");
    assert!(trap.message.contains("unreachable"), "{}", trap.message);
    assert_eq!(trap.last_logs.last().unwrap().level, LogLevel::Critical);
    assert!(err.to_string().contains("about to trap"), "{err}");
    // The VM is dead, as in Envoy.
    assert!(vm.has_failed());
    assert!(matches!(vm.send_request(&Request::get("/")), Err(HarnessError::VmFailed(_))));
}

#[test]
fn proc_exit_is_a_trap_with_the_code() {
    let host = Host::new(&filter());
    let mut vm = host.configured_vm(b"{}").unwrap();
    let id = vm.send_request(&Request::get("/")).unwrap().context_id;
    vm.on_response_body(id, b"x", true).unwrap_err();
    let err = vm.on_response_body(id, b"x", true).unwrap_err();
    assert!(matches!(err, HarnessError::VmFailed(_)));
    let mut vm = host.configured_vm(b"{}").unwrap();
    let id = vm.send_request(&Request::get("/")).unwrap().context_id;
    let err = vm.on_response_body(id, b"x", true).unwrap_err();
    assert_eq!(err.trap().unwrap().exit_code, Some(3));
}

#[test]
fn time_and_environment_come_from_the_host() {
    let host = Host::with_options(&filter(), HostOptions::default().env("SECRET", "abc"));
    host.clock().set_unix_secs(1_800_000_000);
    let mut vm = host.configured_vm(b"{}").unwrap();
    let id = vm.send_request(&Request::get("/")).unwrap().context_id;
    vm.finish(id).unwrap();
    assert_eq!(host.metric("wat.now_secs"), Some(1_800_000_000));
    assert!(logged(&vm, "SECRET=abc"), "{:?}", vm.logs());
    assert!(vm.stream(id).is_none());
}

#[test]
fn fuel_counts_instructions_per_call() {
    let host = Host::new(&filter());
    let mut vm = host.configured_vm(b"{}").unwrap();
    let (exchange, fuel) = vm.fuel_used(|vm| vm.send_request(&Request::get("/"))).unwrap();
    assert!(exchange.outcome.forwarded_headers().is_some());
    assert!(fuel > 10 && fuel < 10_000, "fuel {fuel}");
    assert!(vm.fuel_consumed() >= fuel);
    let id = vm.create_http_context().unwrap();
    assert_eq!(vm.on_request_headers(id, &[(":path", "/")], true).unwrap(), Action::Continue);
    assert!(vm.last_call_fuel() > 0);
}

#[test]
fn a_fuel_budget_stops_a_runaway_filter() {
    let host = Host::with_options(&filter(), HostOptions { fuel_per_call: 5, ..HostOptions::default() });
    let err = host.configured_vm(b"{}").unwrap_err();
    assert!(err.trap().unwrap().message.contains("fuel"), "{err}");
}

#[test]
fn a_module_without_the_abi_export_is_refused() {
    let wasm = wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap();
    let err = Filter::from_bytes(&wasm).unwrap_err();
    assert!(matches!(err, HarnessError::Abi(_)), "{err}");
}

//! The Wasm floor (`bench/floor`) that `make bench` measures playbook-guard against: it does what
//! the bench says it does, and the harness splits its cost by callback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use playbook_guard_test_harness::{floor_filter, Host, Request};

#[test]
fn the_floor_reads_authorization_and_sets_one_header() {
    let host = Host::new(&floor_filter().unwrap());
    let mut vm = host.configured_vm(b"").unwrap();
    let exchange = vm.send_request(&Request::get("/anything").bearer("t")).unwrap();
    let headers = exchange.outcome.forwarded_headers().expect("a request with a token goes on");
    assert_eq!(headers.get("x-floor").as_deref(), Some("1"));
    assert_eq!(headers.get("authorization").as_deref(), Some("Bearer t"), "the token is left as it came");
    assert_eq!(headers.len(), Request::get("/").headers.len() + 2, "one header added, nothing else: {headers:?}");
}

#[test]
fn the_floor_refuses_a_request_without_authorization() {
    // So the Envoy bench can tell the floor is in the chain: without it, this would be a 200.
    let host = Host::new(&floor_filter().unwrap());
    let mut vm = host.configured_vm(b"").unwrap();
    let exchange = vm.send_request(&Request::get("/anything")).unwrap();
    assert_eq!(exchange.outcome.status(), Some(401));
}

#[test]
fn fuel_by_export_splits_a_request_callback_by_callback() {
    let host = Host::new(&floor_filter().unwrap());
    let mut vm = host.configured_vm(b"").unwrap();
    let request = Request::get("/anything").bearer("t");
    let (((), phases), total) = vm
        .fuel_used(|vm| {
            vm.fuel_by_export_used(|vm| {
                let exchange = vm.send_request(&request)?;
                vm.on_response_headers(exchange.context_id, &[(":status", "200")], true)?;
                vm.finish(exchange.context_id)
            })
        })
        .unwrap();
    let names: Vec<&str> = phases.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "proxy_on_context_create",
            "proxy_on_delete",
            "proxy_on_done",
            "proxy_on_log",
            "proxy_on_request_headers",
            "proxy_on_response_headers"
        ],
        "the exports one request calls, and only those (not the VM's start or configuration)"
    );
    assert!(phases.values().all(|p| p.calls == 1 && p.fuel > 0), "{phases:?}");
    assert_eq!(phases.values().map(|p| p.fuel).sum::<u64>(), total, "the split adds up to the whole");
    vm.send_request(&request).unwrap();
    let since_start = &vm.fuel_by_export()["proxy_on_request_headers"];
    assert_eq!(since_start.calls, 2, "the running record counts every call");
}

//! Helpers shared by the tests that drive the real filter.

#![allow(dead_code)]
// Test helpers outside #[test] functions: failing loudly is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use playbook_guard_core::testing;
use playbook_guard_test_harness::{playbook_guard_filter, Filter, Host, HostOptions, Vm};
use serde_json::{json, Value};

pub use playbook_guard_core::testing::{SECRET, SECRET_ENV};

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

/// The core's fixture configuration ([`testing::config`]), as the bytes Envoy hands the filter.
pub fn config(patch: Value) -> Vec<u8> {
    testing::config(patch).to_string().into_bytes()
}

/// A configured worker on `host`.
pub fn vm(host: &Host) -> Vm {
    host.configured_vm(&config(json!({}))).unwrap_or_else(|e| panic!("{e}"))
}

/// The fixture token for user 42 with `roles`, valid for five minutes of `host`'s clock.
pub fn token(host: &Host, roles: &[&str]) -> String {
    token_with(host, roles, json!({}))
}

/// As [`token`], with claims patched.
pub fn token_with(host: &Host, roles: &[&str], patch: Value) -> String {
    testing::token_with(roles, host.clock().now_secs(), patch)
}

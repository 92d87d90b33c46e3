//! A proxy-wasm host on wasmtime for testing playbook-guard (or any proxy-wasm 0.2.1 filter).
//!
//! It drives a compiled filter through the ABI the way Envoy does: `_initialize`, the root
//! context, `proxy_on_vm_start`, `proxy_on_configure`, then HTTP contexts with request and
//! response callbacks, honouring `Pause`, `proxy_continue_stream` and local responses. Time is
//! a [`VirtualClock`], callouts wait until the test answers them, ticks and queue notifications
//! fire when the test says, and every call's cost is counted in wasm fuel.
//!
//! ```no_run
//! use playbook_guard_test_harness::{Filter, Host, HostOptions, Request};
//!
//! # fn main() -> Result<(), playbook_guard_test_harness::HarnessError> {
//! let filter = Filter::from_file("target/wasm32-wasip1/release/playbook_guard.wasm")?;
//! let host = Host::with_options(&filter, HostOptions::default().env("SECRET", "..."));
//! let mut vm = host.configured_vm(br#"{"routes": []}"#)?;
//! let exchange = vm.send_request(&Request::get("/api/catalog/data/x"))?;
//! assert_eq!(exchange.outcome.status(), Some(401));
//! # Ok(())
//! # }
//! ```
//!
//! Modules: [`abi`] (the ABI's numbers and map format), [`filter`] (compiling), [`host`]
//! (process-wide state, starting VMs), [`vm`] (one worker), [`stream`] (one request),
//! [`http_call`] (callouts), [`clock`], and the private host-call implementations.

#![deny(missing_docs)]

pub mod abi;
pub mod clock;
pub mod error;
pub mod filter;
pub mod host;
pub mod http_call;
pub mod logs;
pub mod stream;
pub mod validation_service;
pub mod vm;
pub mod workspace;

mod hostcalls;
mod memory;
mod metrics;
mod shared;
mod wasi;

pub use abi::{Action, LogLevel};
pub use clock::VirtualClock;
pub use error::{FilterTrap, HarnessError};
pub use filter::Filter;
pub use host::{Host, HostOptions};
pub use http_call::{HttpCall, HttpCallResponse};
pub use logs::LogLine;
pub use stream::{HeaderMap, HttpStream, LocalResponse, RequestOutcome};
pub use vm::{Exchange, ExportFuel, Request, Vm};
pub use wasi::ProcExit;
pub use workspace::{floor_filter, floor_wasm, playbook_guard_filter, playbook_guard_wasm};

//! playbook-guard: an Envoy proxy-wasm filter that verifies session JWTs and decides, from a
//! policy, whether the user may run the NoETL playbook a request names.
//!
//! The decisions live in [`playbook_guard_core`] (re-exported as [`core`]), which cannot reach
//! proxy-wasm; [`host`] is the thin layer that reads headers and bodies, asks the core, and
//! answers or resumes the request.

#![deny(missing_docs)]

pub use playbook_guard_core as core;

pub mod host;
pub mod metrics;
mod raw_headers;
mod store;

// The SDK's entry point (`_initialize`); the macro cannot carry a doc comment.
#[cfg(target_arch = "wasm32")]
#[allow(missing_docs)]
mod entry {
    use crate::host;

    proxy_wasm::main! {{
        // `set_log_level` also installs the SDK's panic hook, which logs the panic through the host
        // at critical level before the VM aborts, so a bug leaves a trace in Envoy's log.
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
        proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(host::GuardRoot::default())
        });
    }}
}

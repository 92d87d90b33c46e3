//! playbook-guard as an Envoy dynamic module: the same decisions as the Wasm filter (they live
//! in [`playbook_guard_core`], re-exported as [`core`]), loaded into Envoy as native code.
//!
//! [`hooks`] are the functions Envoy calls, each behind a panic boundary; [`host`] is the thin
//! layer that reads headers and bodies, asks the core, and answers or resumes the stream, as
//! the Wasm build's `host` does; [`convert`] turns what Envoy hands over into Rust values, with
//! no host call (the fuzz targets drive it); [`store`] is the process-wide shared data. The
//! module is tied to the Envoy version its ABI bindings ([`abi`]) were written for.

#![deny(missing_docs)]

pub use playbook_guard_core as core;

pub mod abi;
pub mod convert;
mod envoy;
pub mod floor;
pub mod hooks;
pub mod host;
mod logger;
mod metrics;
pub mod store;
mod ticker;

#[cfg(test)]
mod tests;

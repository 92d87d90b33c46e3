//! The host-free core of playbook-guard: it decides, the proxy-wasm layer does the I/O.
//!
//! Plain data in (request head, body, `now`), plain data out ([`Verdict`]). See [`Guard`] for
//! the call order. This crate cannot reach proxy-wasm, the clock or the environment, so every
//! decision is testable natively and compiled to wasm alike.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod catalog_yaml;
pub mod config;
pub mod error;
pub mod forward;
pub mod graphql;
pub mod guard;
pub mod header_map;
pub mod json;
pub mod jwt;
pub mod like;
pub mod lookup;
pub mod memo;
pub mod opaque;
pub mod path;
pub mod policy;
pub mod protocol;
pub mod routes;
pub mod session;
pub mod shared;
pub mod target;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod timestamp;
pub mod token;
pub mod validation;
pub mod verdict;

pub use config::PluginConfig;
pub use error::ConfigError;
pub use guard::{Guard, Identity, Pending, RequestHead, SessionStep, Step};
pub use policy::{Decision, Policy, PolicyDocument};
pub use session::SessionEntry;
pub use validation::CalloutFailure;
pub use verdict::{Denial, DenialKind, Verdict};

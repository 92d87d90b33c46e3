//! The dynamic-module floor: the least a native Envoy HTTP filter can do per request, the
//! counterpart of the Wasm floor (`bench/floor`). It reads `authorization` and sets
//! `x-floor: 1` on the request, so `make bench` can set playbook-guard's native build against
//! what any dynamic module pays (the hook calls, a stream object, two header callbacks).
//!
//! It is not a separate module: built with the `floor` feature, [`crate::hooks`] drive these
//! types instead of [`crate::host`]'s, so the floor goes through the very exports, bindings and
//! panic boundary the product does, and every hook but the request headers' lets the stream go
//! on. That build is for the bench only (the Makefile puts it in a directory of its own, so it
//! never takes the product's place).
//!
//! A request without `authorization` gets a 401, so the bench can tell the floor is really in
//! the filter chain (a module that failed to load would let it through).

use std::sync::Arc;

use crate::abi::{self, ConfigEnvoyPtr, FilterEnvoyPtr};
use crate::core::protocol::Flow;
use crate::envoy;

/// The floor's configuration: none (whatever Envoy hands over is ignored).
#[derive(Debug)]
pub struct Config;

impl Config {
    /// Always taken: the floor reads no configuration.
    pub fn new(_envoy_config: ConfigEnvoyPtr, _json: &[u8]) -> Result<Config, String> {
        Ok(Config)
    }
}

/// One stream of the floor.
#[derive(Debug)]
pub struct Filter {
    envoy: FilterEnvoyPtr,
}

impl Filter {
    /// A stream of `envoy`; never refused.
    pub fn new(_config: &Arc<Config>, envoy: FilterEnvoyPtr) -> Option<Filter> {
        Some(Filter { envoy })
    }

    /// Reads one header, sets one; 401 without `authorization`.
    pub fn on_request_headers(&self, _end_of_stream: bool) -> Flow {
        if envoy::header(self.envoy, abi::REQUEST_HEADER, "authorization").is_none() {
            envoy::send_response(self.envoy, 401, &[], b"");
            return Flow::Pause;
        }
        envoy::set_request_header(self.envoy, "x-floor", Some("1"));
        Flow::Continue
    }

    /// The body passes.
    pub fn on_request_body(&self, _end_of_stream: bool, _received: bool) -> Flow {
        Flow::Continue
    }

    /// Nothing to do.
    pub fn on_response_headers(&self) {}

    /// The floor sends no callouts.
    pub fn on_callout_done(&self, _callout_id: u64, _status: Option<u32>, _body: &[u8]) {}

    /// The floor posts nothing.
    pub fn on_scheduled(&self, _event: u64) {}
}

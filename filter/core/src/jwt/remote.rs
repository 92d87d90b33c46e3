//! Remote JWK Sets: which to fetch when, and what was fetched.

use std::collections::HashMap;

use serde_json::Value;

use super::keys::{compile_jwks, Key};
use super::Verifier;
use crate::error::ConfigError;

/// Where a provider's remote JWK Set comes from, as an HTTP request through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// The provider's index in `providers`.
    pub provider: usize,
    /// The Envoy cluster.
    pub cluster: String,
    /// The `:authority` (the URI's host).
    pub authority: String,
    /// The `:path` (the URI's path and query).
    pub path: String,
    /// How long a fetched set is trusted.
    pub cache_secs: u64,
    /// The fetch timeout.
    pub timeout_ms: u64,
}

/// The least time between two fetches of one JWK Set, however many unknown `kid`s arrive: a
/// flood of forged tokens must not become a flood of fetches.
pub const JWKS_REFETCH_SECS: u64 = 10;

/// One worker's remote JWK Sets: what was fetched, when, which sets are wanted, and which
/// fetches are on their way.
#[derive(Debug, Default)]
pub struct RemoteKeys {
    pub(super) sets: HashMap<usize, (Vec<Key>, u64)>,
    attempted: HashMap<usize, u64>,
    wanted: Vec<usize>,
    /// Provider -> when to stop waiting for the answer to its fetch (the fetch's timeout, plus
    /// a second: a host that loses the answer must not keep requests waiting for it).
    in_flight: HashMap<usize, u64>,
}

impl RemoteKeys {
    /// The sets to fetch now: never fetched, expired, or wanted for an unknown `kid`; each at
    /// most once per [`JWKS_REFETCH_SECS`]. Marks them attempted.
    pub fn due(&mut self, verifier: &Verifier, now: u64) -> Vec<RemoteJwks> {
        let wanted = std::mem::take(&mut self.wanted);
        let mut due = Vec::new();
        for source in verifier.remote_sources() {
            let stale =
                self.sets.get(&source.provider).is_none_or(|(_, at)| now >= at.saturating_add(source.cache_secs));
            let recently =
                self.attempted.get(&source.provider).is_some_and(|at| now < at.saturating_add(JWKS_REFETCH_SECS));
            if (stale || wanted.contains(&source.provider)) && !recently {
                self.attempted.insert(source.provider, now);
                let answer_by = now.saturating_add(source.timeout_ms.div_ceil(1000)).saturating_add(1);
                self.in_flight.insert(source.provider, answer_by);
                due.push(source.clone());
            }
        }
        due
    }

    /// Marks `provider`'s set as wanted (a token's issuer has no set yet, or the token's `kid`
    /// is not in it). Returns whether a request needing it should wait: a fetch is on its way,
    /// or may start now. A fetch within the last [`JWKS_REFETCH_SECS`] that did not bring the
    /// key means no: the token is answered at once.
    pub(super) fn want(&mut self, provider: usize, now: u64) -> bool {
        if !self.wanted.contains(&provider) {
            self.wanted.push(provider);
        }
        let on_its_way = self.in_flight.get(&provider).is_some_and(|until| now < *until);
        let recently = self.attempted.get(&provider).is_some_and(|at| now < at.saturating_add(JWKS_REFETCH_SECS));
        on_its_way || !recently
    }

    /// Whether any fetch is on its way (its answer not yet loaded or failed) at `now`. Only
    /// the tests ask: the host learns a fetch's end from its answer.
    #[cfg(test)]
    pub(crate) fn fetching(&self, now: u64) -> bool {
        self.in_flight.values().any(|until| now < *until)
    }

    /// The fetch for `provider` ended without a usable set (not sent, timed out, reset,
    /// non-2xx, refused): requests waiting for it are answered with the keys there are.
    pub fn failed(&mut self, provider: usize) {
        self.in_flight.remove(&provider);
    }

    /// Stores a fetched JWK Set (the body of a 2xx answer) for `provider`; an unusable one is an
    /// error and the keys fetched before stay in use. Either way the fetch has ended.
    pub fn load(&mut self, provider: usize, body: &[u8], now: u64) -> Result<usize, ConfigError> {
        self.failed(provider);
        let json: Value = serde_json::from_slice(body).map_err(|e| ConfigError::new("", format!("not JSON: {e}")))?;
        let keys = compile_jwks(&json)?;
        let count = keys.len();
        self.sets.insert(provider, (keys, now));
        self.wanted.retain(|p| *p != provider);
        Ok(count)
    }
}

impl Verifier {
    /// The remote JWK Sets this configuration fetches.
    pub fn remote_sources(&self) -> impl Iterator<Item = &RemoteJwks> {
        self.providers.iter().filter_map(|p| p.remote.as_ref())
    }
}

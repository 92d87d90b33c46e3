//! The filter's stats, as Envoy shows them: `wasmcustom.playbook_guard.<name>` at `/stats`
//! and `/stats/prometheus`.

use crate::core::jwt::TokenTally;
use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Metric ids of one VM (`None` where the host refused to define one: a stat must never fail
/// a request).
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Requests let through (including audit-mode ones that would have been denied).
    pub allowed: Option<u32>,
    /// 403s.
    pub denied: Option<u32>,
    /// 401s.
    pub unauthenticated: Option<u32>,
    /// 400s.
    pub bad_request: Option<u32>,
    /// 413s.
    pub payload_too_large: Option<u32>,
    /// 503s: validation unavailable.
    pub unavailable: Option<u32>,
    /// Audit mode: requests that enforce mode would have refused.
    pub audit_would_deny: Option<u32>,
    /// A fresh cache entry answered.
    pub cache_hits: Option<u32>,
    /// The entry was missing or stale.
    pub cache_misses: Option<u32>,
    /// Validation callouts sent (or attempted).
    pub callouts: Option<u32>,
    /// Callouts that failed (not sent, timeout, reset, non-2xx, malformed, `status: error`).
    pub callout_failures: Option<u32>,
    /// Requests answered from a stale entry under `serve_stale`.
    pub stale_served: Option<u32>,
    /// Requests that waited for a callout another request owned.
    pub coalesced_waits: Option<u32>,
    /// Sessions evicted to keep the cache within `max_entries`.
    pub sessions_evicted: Option<u32>,
    /// Sessions evicted by a logout route.
    pub logouts: Option<u32>,
    /// Remote JWK Sets fetched and loaded.
    pub jwks_fetch_success: Option<u32>,
    /// Remote JWK Set fetches that failed (not sent, timeout, reset, non-2xx, unusable set).
    pub jwks_fetch_failed: Option<u32>,
    /// Requests that waited for a remote JWK Set fetch.
    pub jwks_waits: Option<u32>,
    /// Requests whose token was a JWT (verified locally).
    pub tokens_jwt: Option<u32>,
    /// Requests whose token was an opaque session token of the configured shape.
    pub tokens_opaque: Option<u32>,
    /// Requests whose token was neither: 401 `malformed`, no callout.
    pub tokens_unrecognised: Option<u32>,
    /// Role names dropped (not strings, empty, with `,`, whitespace or control characters, or
    /// over 128 bytes), from validation answers and from verified tokens' roles claims.
    pub roles_dropped: Option<u32>,
    /// Requests refused because the worker's limit on callouts about never-seen sessions was
    /// spent.
    pub cold_callouts_limited: Option<u32>,
    /// Invalid-session answers evicted to keep within `session.max_negative_entries`.
    pub invalid_sessions_evicted: Option<u32>,
    /// The active policy's version as a number (`playbook-guard check` prints it).
    pub policy_version_hash: Option<u32>,
    /// Lookups sent (`resolver`: a `catalog_id` or `execution_id` to a playbook).
    pub lookups: Option<u32>,
    /// Ids answered from the shared lookup cache.
    pub lookup_hits: Option<u32>,
    /// Requests that waited for a lookup another request owned.
    pub lookup_waits: Option<u32>,
    /// Lookups that failed (not sent, timeout, non-2xx other than 404, unreadable answer).
    pub lookup_failures: Option<u32>,
    /// Requests refused because the worker's `max_lookups_per_sec` was spent.
    pub lookups_limited: Option<u32>,
    /// Lookup answers evicted to keep within `resolver.max_entries`.
    pub lookups_evicted: Option<u32>,
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    match hostcalls::define_metric(kind, &format!("playbook_guard.{name}")) {
        Ok(id) => Some(id),
        Err(status) => {
            warn!("cannot define metric {name}: {status:?}");
            None
        }
    }
}

impl Metrics {
    /// Defines every counter in this VM.
    pub fn define() -> Self {
        let counter = |name: &str| define(MetricType::Counter, name);
        Metrics {
            allowed: counter("allowed"),
            denied: counter("denied"),
            unauthenticated: counter("unauthenticated"),
            bad_request: counter("bad_request"),
            payload_too_large: counter("payload_too_large"),
            unavailable: counter("unavailable"),
            audit_would_deny: counter("audit_would_deny"),
            cache_hits: counter("cache_hits"),
            cache_misses: counter("cache_misses"),
            callouts: counter("callouts"),
            callout_failures: counter("callout_failures"),
            stale_served: counter("stale_served"),
            coalesced_waits: counter("coalesced_waits"),
            sessions_evicted: counter("sessions_evicted"),
            logouts: counter("logouts"),
            jwks_fetch_success: counter("jwks_fetch_success"),
            jwks_fetch_failed: counter("jwks_fetch_failed"),
            jwks_waits: counter("jwks_waits"),
            tokens_jwt: counter("tokens_jwt"),
            tokens_opaque: counter("tokens_opaque"),
            tokens_unrecognised: counter("tokens_unrecognised"),
            roles_dropped: counter("roles_dropped"),
            cold_callouts_limited: counter("cold_callouts_limited"),
            invalid_sessions_evicted: counter("invalid_sessions_evicted"),
            policy_version_hash: define(MetricType::Gauge, "policy_version_hash"),
            lookups: counter("lookups"),
            lookup_hits: counter("lookup_hits"),
            lookup_waits: counter("lookup_waits"),
            lookup_failures: counter("lookup_failures"),
            lookups_limited: counter("lookups_limited"),
            lookups_evicted: counter("lookups_evicted"),
        }
    }

    /// Adds one to a counter.
    pub fn bump(id: Option<u32>) {
        Metrics::add(id, 1);
    }

    /// Adds `n` to a counter (no host call for 0).
    pub fn add(id: Option<u32>, n: u64) {
        if let (Some(id), 1..) = (id, n) {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Adds the token kinds the core counted since the last call.
    pub fn count_tokens(&self, tally: TokenTally) {
        Metrics::add(self.tokens_jwt, u64::from(tally.jwt));
        Metrics::add(self.tokens_opaque, u64::from(tally.opaque));
        Metrics::add(self.tokens_unrecognised, u64::from(tally.unrecognised));
    }

    /// Publishes the active policy version: the gauge `policy_version_hash` (one gauge
    /// whatever the number of updates; see [`crate::core::Policy::version_hash`]). The version
    /// string itself is in the log line of each accepted configuration and in Envoy's ECDS
    /// `version_info`.
    pub fn set_policy_version(&self, hash: u64) {
        if let Some(id) = self.policy_version_hash {
            let _ = hostcalls::record_metric(id, hash);
        }
    }
}

//! The filter's counters: what the protocol counts, by the names Envoy shows
//! (`wasmcustom.playbook_guard.<name>`).

use crate::verdict::DenialKind;

macro_rules! stats {
    ($($variant:ident => $name:literal: $doc:literal,)*) => {
        /// A counter.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Stat {
            $(#[doc = $doc] $variant,)*
        }

        impl Stat {
            /// Every counter, in order.
            pub const ALL: &'static [Stat] = &[$(Stat::$variant,)*];

            /// Its place in [`Stat::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }

            /// Its name under `playbook_guard.`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Stat::$variant => $name,)*
                }
            }
        }
    };
}

stats! {
    Allowed => "allowed": "Requests let through.",
    Denied => "denied": "Requests refused with 403.",
    Unauthenticated => "unauthenticated": "Requests refused with 401.",
    BadRequest => "bad_request": "Requests refused with 400.",
    PayloadTooLarge => "payload_too_large": "Requests refused with 413.",
    Unavailable => "unavailable": "Requests refused with 503.",
    AuditWouldDeny => "audit_would_deny": "Requests an audit-mode route let through but would deny.",
    CacheHits => "cache_hits": "Sessions answered from the cache.",
    CacheMisses => "cache_misses": "Sessions missing or stale in the cache.",
    Callouts => "callouts": "Session callouts sent.",
    CalloutFailures => "callout_failures": "Session callouts that gave no usable answer.",
    StaleServed => "stale_served": "Stale sessions served under serve_stale.",
    CoalescedWaits => "coalesced_waits": "Requests that waited for another request's callout.",
    SessionsEvicted => "sessions_evicted": "Valid sessions evicted past max_entries.",
    InvalidSessionsEvicted => "invalid_sessions_evicted": "Invalid-session answers evicted past max_negative_entries.",
    Logouts => "logouts": "Sessions evicted by a logout.",
    JwksFetchSuccess => "jwks_fetch_success": "JWK Set fetches that loaded keys.",
    JwksFetchFailed => "jwks_fetch_failed": "JWK Set fetches that failed.",
    JwksWaits => "jwks_waits": "Requests that waited for a JWK Set fetch.",
    DiscoveryFetchSuccess => "discovery_fetch_success": "Discovery documents that named a JWK Set to fetch.",
    DiscoveryFetchFailed => "discovery_fetch_failed": "Discovery document fetches that gave no usable answer.",
    DiscoveryFetchRefused => "discovery_fetch_refused": "Discovery documents refused (issuer mismatch, bad jwks_uri, not strict JSON).",
    TokensJwt => "tokens_jwt": "Compact JWS tokens seen.",
    TokensOpaque => "tokens_opaque": "Opaque tokens seen.",
    TokensUnrecognised => "tokens_unrecognised": "Tokens of neither shape.",
    RolesDropped => "roles_dropped": "Role names dropped from tokens and answers.",
    ColdCalloutsLimited => "cold_callouts_limited": "New-session callouts refused by the per-worker limit.",
    Lookups => "lookups": "Lookups sent.",
    LookupHits => "lookup_hits": "Ids answered from the lookup cache.",
    LookupWaits => "lookup_waits": "Requests that waited for another request's lookup.",
    LookupFailures => "lookup_failures": "Lookups that gave no usable answer.",
    LookupsLimited => "lookups_limited": "Lookups refused by the per-worker limit.",
    LookupsEvicted => "lookups_evicted": "Lookup answers evicted past resolver.max_entries.",
}

impl Stat {
    /// The counter of a denial.
    pub fn of_denial(kind: DenialKind) -> Self {
        match kind {
            DenialKind::Unauthenticated => Stat::Unauthenticated,
            DenialKind::Forbidden => Stat::Denied,
            DenialKind::BadRequest => Stat::BadRequest,
            DenialKind::PayloadTooLarge => Stat::PayloadTooLarge,
            DenialKind::Unavailable => Stat::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn every_stat_is_in_its_place_with_a_distinct_name() {
        for (i, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(stat.index(), i);
        }
        let mut names: Vec<&str> = Stat::ALL.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Stat::ALL.len());
    }
}

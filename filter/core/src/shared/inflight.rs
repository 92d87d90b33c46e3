//! In-flight marks: "a worker is asking about this session (or id) until T", so that all
//! workers together send one callout per session.
//!
//! Shared data has no atomic create-if-absent, so the marks live in a fixed set of stripes,
//! created once ([`prepare`]) and then only changed by compare-and-swap; each mark carries its
//! own deadline, so a worker that died while asking blocks nobody for longer than that.

use serde::{Deserialize, Serialize};

use super::{fnv1a, update, SharedStore, Unwritten};

/// How many in-flight stripes there are. More stripes, less compare-and-swap contention.
pub const STRIPES: u64 = 64;

/// The stripe holding `key`'s in-flight mark.
pub fn stripe_of(key: &str) -> u64 {
    fnv1a(key) % STRIPES
}

fn stripe_key(key: &str) -> String {
    format!("pg1/f/{}", stripe_of(key))
}

/// A session's state in its stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mark {
    /// A worker is asking the service, until this deadline (milliseconds since the epoch).
    Fetching {
        /// When the fetch is given up on.
        until_ms: u64,
    },
    /// The last callout failed; until this moment, requests follow the failure mode rather
    /// than ask again (so an outage is not met with one callout per request).
    Failed {
        /// When a new callout may be tried.
        until_ms: u64,
    },
}

impl Mark {
    fn until_ms(self) -> u64 {
        match self {
            Mark::Fetching { until_ms } | Mark::Failed { until_ms } => until_ms,
        }
    }
}

/// What trying to claim a session's callout found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Claim {
    /// This worker may send the callout.
    Claimed,
    /// Another worker is fetching; wait for its answer until `until_ms`.
    Busy {
        /// The other fetch's deadline.
        until_ms: u64,
    },
    /// A callout just failed; follow the failure mode.
    RecentlyFailed,
}

/// The marks of one stripe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stripe(Vec<(String, Mark)>);

impl Stripe {
    /// Reads a stripe; an unreadable one is empty (its marks will simply be retaken).
    pub fn decode(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The live mark of `key` at `now_ms`.
    pub fn mark(&self, key: &str, now_ms: u64) -> Option<Mark> {
        self.0.iter().find(|(k, m)| k == key && m.until_ms() > now_ms).map(|(_, m)| *m)
    }

    /// Claims `key`'s callout until `until_ms` if no live mark stands in the way. Expired marks
    /// are dropped on the way, so a stripe never grows past the sessions in flight.
    pub fn claim(&mut self, key: &str, now_ms: u64, until_ms: u64) -> Claim {
        self.0.retain(|(_, m)| m.until_ms() > now_ms);
        match self.mark(key, now_ms) {
            Some(Mark::Fetching { until_ms }) => Claim::Busy { until_ms },
            Some(Mark::Failed { .. }) => Claim::RecentlyFailed,
            None => {
                self.0.push((key.to_owned(), Mark::Fetching { until_ms }));
                Claim::Claimed
            }
        }
    }

    /// Ends `key`'s fetch: removes the mark, or leaves a failure mark until `failed_until_ms`.
    pub fn finish(&mut self, key: &str, now_ms: u64, failed_until_ms: Option<u64>) {
        self.0.retain(|(k, m)| k != key && m.until_ms() > now_ms);
        if let Some(until_ms) = failed_until_ms {
            self.0.push((key.to_owned(), Mark::Failed { until_ms }));
        }
    }
}

/// Creates the stripes that are missing. Compare-and-swap guards only keys that exist: two
/// workers creating one stripe at once could both claim the same session. Envoy configures a
/// plugin on the main thread before any worker serves a request, so creating them there leaves
/// no such moment; stripes that exist are left alone (they may hold claims in flight).
pub fn prepare<S: SharedStore + ?Sized>(store: &mut S) {
    for n in 0..STRIPES {
        let key = format!("pg1/f/{n}");
        if store.get(&key).1.is_none() {
            let _ = store.set(&key, Some(&Stripe::default().encode()), None);
        }
    }
}

/// Claims `key`'s callout until `until_ms`.
pub fn claim<S: SharedStore + ?Sized>(store: &mut S, key: &str, now_ms: u64, until_ms: u64) -> Claim {
    match change(store, key, |s| s.claim(key, now_ms, until_ms)) {
        Ok(claim) => claim,
        // Without its mark, the owner's answer could not be told from one a logout overtook,
        // so it would not be kept: wait and claim again instead.
        Err(Unwritten::Contended) => Claim::Busy { until_ms: now_ms },
        // A store that takes no writes keeps nothing anyway: behaving as the owner keeps
        // requests moving, at the cost of a callout per request.
        Err(Unwritten::Refused) => Claim::Claimed,
    }
}

/// Ends `key`'s callout; on failure, leaves a mark until `failed_until_ms`.
pub fn finish<S: SharedStore + ?Sized>(store: &mut S, key: &str, now_ms: u64, failed_until_ms: Option<u64>) {
    let _ = change(store, key, |s| s.finish(key, now_ms, failed_until_ms));
}

/// The live mark of `key`.
pub fn mark<S: SharedStore + ?Sized>(store: &S, key: &str, now_ms: u64) -> Option<Mark> {
    let value = store.get(&stripe_key(key)).0;
    value.as_deref().map(Stripe::decode).and_then(|s| s.mark(key, now_ms))
}

fn change<S: SharedStore + ?Sized, T>(
    store: &mut S,
    key: &str,
    mut f: impl FnMut(&mut Stripe) -> T,
) -> Result<T, Unwritten> {
    update(store, &stripe_key(key), |value| {
        let mut stripe = value.map(Stripe::decode).unwrap_or_default();
        let out = f(&mut stripe);
        (Some(stripe.encode()), out)
    })
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::shared::MemoryStore;

    #[test]
    fn one_claim_per_session_until_finished_or_expired() {
        let mut s = Stripe::default();
        assert_eq!(s.claim("a", 0, 2000), Claim::Claimed);
        assert_eq!(s.claim("a", 10, 2010), Claim::Busy { until_ms: 2000 });
        assert_eq!(s.claim("b", 10, 2010), Claim::Claimed, "other sessions are independent");
        let s2 = Stripe::decode(&s.encode());
        assert_eq!(s2, s);
        // The claimer died: after the deadline the next worker takes over.
        assert_eq!(s.claim("a", 2000, 4000), Claim::Claimed);
        s.finish("a", 2100, None);
        assert_eq!(s.mark("a", 2100), None);
        assert_eq!(s.claim("a", 2100, 4100), Claim::Claimed);
        s.finish("a", 2200, Some(3200));
        assert_eq!(s.claim("a", 2300, 4300), Claim::RecentlyFailed);
        assert_eq!(s.claim("a", 3200, 5200), Claim::Claimed, "the failure mark expires");
        s.finish("b", 99_999, None);
        assert!(s.0.is_empty(), "finishing drops expired marks too: {s:?}");
    }

    #[test]
    fn stripes_and_slots_are_stable_and_bounded() {
        // FNV-1a, so every worker and every build puts a session in the same stripe.
        assert_eq!(stripe_of("noetl/s-1"), fnv1a("noetl/s-1") % 64);
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325, "FNV-1a's offset basis");
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a 64 of \"a\"");
        let used: std::collections::HashSet<u64> = (0..1000).map(|i| stripe_of(&format!("k{i}"))).collect();
        assert!(used.len() > STRIPES as usize / 2 && used.iter().all(|s| *s < STRIPES), "keys spread over the stripes");
    }

    #[test]
    fn claims_through_the_store_and_contention_is_busy_not_claimed() {
        let mut store = MemoryStore::default();
        prepare(&mut store);
        assert_eq!(store.keys(), STRIPES as usize);
        assert_eq!(claim(&mut store, "s", 0, 100), Claim::Claimed);
        assert_eq!(mark(&store, "s", 50), Some(Mark::Fetching { until_ms: 100 }));
        assert_eq!(claim(&mut store, "s", 50, 150), Claim::Busy { until_ms: 100 });
        finish(&mut store, "s", 60, Some(1060));
        assert_eq!(claim(&mut store, "s", 70, 170), Claim::RecentlyFailed);
        store.refuse_writes(true);
        assert_eq!(claim(&mut store, "t", 70, 170), Claim::Claimed, "a store that keeps nothing");
    }
}

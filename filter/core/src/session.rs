//! The session cache: what an entry holds, when it is fresh, and the records in Envoy's shared
//! data that let all workers share entries and keep to one callout per session.
//!
//! Shared data is a key-value store with compare-and-swap but no expiry and no atomic
//! create-if-absent. So the in-flight marks ("worker X is asking about session S until T")
//! live in a fixed set of stripes that always exist once written, and every change to a stripe
//! is a compare-and-swap; the marks carry their own deadline, so a worker that died while
//! fetching blocks nobody for longer than the callout timeout.

use serde::{Deserialize, Serialize};

/// How long answers stay fresh, and how many are kept: `session` with
/// `validation.stale_grace_secs`, compiled (see [`crate::validation::Validator::cache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// How long a valid answer is fresh.
    pub ttl_secs: u64,
    /// How long an invalid answer is remembered.
    pub negative_ttl_secs: u64,
    /// How long past its freshness a valid entry may serve under `serve_stale`.
    pub stale_grace_secs: u64,
    /// Bound on cached valid sessions.
    pub max_entries: u64,
    /// Bound on cached invalid-session answers (a space of their own).
    pub max_negative_entries: u64,
}

/// What the validation service said about a session, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    /// Whether the session is active.
    pub valid: bool,
    /// The user's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The user's email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The user's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The user's roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// When the session itself expires (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// When the answer was fetched (seconds since the epoch).
    pub fetched_at: u64,
}

impl SessionEntry {
    /// The first second at which the entry is no longer fresh. A valid session: `ttl_secs` after
    /// it was fetched, and never past its own `expires_at`. An invalid one: `negative_ttl_secs`
    /// after, whatever `expires_at` says (a session that expired long ago is invalid all the
    /// more, and capping it there would make every request for it ask again).
    pub fn fresh_until(&self, v: &CacheSettings) -> u64 {
        if !self.valid {
            return self.fetched_at.saturating_add(v.negative_ttl_secs);
        }
        self.fetched_at.saturating_add(v.ttl_secs).min(self.expires_at.unwrap_or(u64::MAX))
    }

    /// Whether the entry may answer at `now` without a callout.
    pub fn is_fresh(&self, v: &CacheSettings, now: u64) -> bool {
        now < self.fresh_until(v)
    }

    /// Whether, under `serve_stale`, this stale entry may still answer at `now`: a valid
    /// session, at most `stale_grace_secs` past freshness, and never past `expires_at`.
    pub fn may_serve_stale(&self, v: &CacheSettings, now: u64) -> bool {
        let until = self
            .fetched_at
            .saturating_add(v.ttl_secs)
            .saturating_add(v.stale_grace_secs)
            .min(self.expires_at.unwrap_or(u64::MAX));
        self.valid && now < until
    }
}

/// An entry as stored in shared data, with the eviction slot it occupies in its ring
/// ([`Ring::of`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The entry.
    #[serde(rename = "e")]
    pub entry: SessionEntry,
    /// Its slot in its eviction ring (see [`slot_for`]).
    #[serde(rename = "s")]
    pub slot: u64,
}

impl SessionRecord {
    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a stored record; anything unreadable is no record (and will be refetched).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The eviction ring: the `n`-th session ever stored in a ring takes slot `n % max_entries`,
/// evicting whichever session held it. So at most `max_entries` sessions are cached, and the
/// oldest stored goes first.
pub fn slot_for(counter: u64, max_entries: u64) -> u64 {
    counter % max_entries.max(1)
}

/// Which eviction ring an entry lives in. Valid sessions and invalid-session answers each have
/// their own, with their own bound: a flood of unknown tokens (each answered `valid: false`)
/// evicts only other such answers, never a session someone is using.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// Valid sessions, at most `session.max_entries`.
    Valid,
    /// Invalid-session answers, at most `session.max_negative_entries`.
    Invalid,
}

impl Ring {
    /// The ring `entry` belongs in.
    pub fn of(entry: &SessionEntry) -> Self {
        if entry.valid {
            Ring::Valid
        } else {
            Ring::Invalid
        }
    }

    /// The ring's bound.
    pub fn capacity(self, v: &CacheSettings) -> u64 {
        match self {
            Ring::Valid => v.max_entries,
            Ring::Invalid => v.max_negative_entries,
        }
    }
}

/// How many in-flight stripes there are. More stripes, less compare-and-swap contention.
pub const STRIPES: u32 = 64;

/// The stripe holding a session's in-flight mark (FNV-1a: stable across workers and builds).
pub fn stripe_of(session_key: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in session_key.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % STRIPES
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_json, SessionConfig, ValidationConfig};
    use crate::validation::Validator;

    /// The settings a `session` block compiles to, with `stale_grace_secs: 60`.
    fn validator(session: &str) -> CacheSettings {
        let cfg: ValidationConfig =
            parse_json(br#"{"cluster": "noetl", "failure_mode": "serve_stale", "stale_grace_secs": 60}"#).unwrap();
        let session: SessionConfig = parse_json(session.as_bytes()).unwrap();
        Validator::compile(&cfg, &session).unwrap().cache
    }

    fn entry(valid: bool, fetched_at: u64, expires_at: Option<u64>) -> SessionEntry {
        SessionEntry {
            valid,
            user_id: Some("42".into()),
            email: None,
            display_name: None,
            roles: vec!["analyst".into()],
            expires_at,
            fetched_at,
        }
    }

    #[test]
    fn freshness_follows_ttl_negative_ttl_and_expiry() {
        let v = validator(r#"{"ttl_secs": 300, "negative_ttl_secs": 30}"#);
        let e = entry(true, 1000, None);
        assert!(e.is_fresh(&v, 1000) && e.is_fresh(&v, 1299));
        assert!(!e.is_fresh(&v, 1300));
        let e = entry(false, 1000, None);
        assert!(e.is_fresh(&v, 1029) && !e.is_fresh(&v, 1030));
        let e = entry(true, 1000, Some(1100));
        assert!(e.is_fresh(&v, 1099) && !e.is_fresh(&v, 1100), "the session's own expiry bounds it");
    }

    #[test]
    fn invalid_answers_are_fresh_for_the_negative_ttl_whatever_their_expiry() {
        let v = validator(r#"{"ttl_secs": 300, "negative_ttl_secs": 30}"#);
        for expires_at in [None, Some(0), Some(999), Some(1000), Some(1010), Some(5000)] {
            let e = entry(false, 1000, expires_at);
            assert_eq!(e.fresh_until(&v), 1030, "expires_at {expires_at:?}");
            assert!(e.is_fresh(&v, 1000) && e.is_fresh(&v, 1029) && !e.is_fresh(&v, 1030), "{expires_at:?}");
        }
    }

    #[test]
    fn each_ring_has_its_own_bound() {
        let v = validator(r#"{"max_entries": 50, "max_negative_entries": 7}"#);
        assert_eq!(Ring::of(&entry(true, 0, None)), Ring::Valid);
        assert_eq!(Ring::of(&entry(false, 0, None)), Ring::Invalid);
        assert_eq!((Ring::Valid.capacity(&v), Ring::Invalid.capacity(&v)), (50, 7));
    }

    #[test]
    fn stale_serving_has_a_grace_and_respects_expiry() {
        let v = validator(r#"{"ttl_secs": 300}"#);
        let e = entry(true, 1000, None);
        assert!(e.may_serve_stale(&v, 1359) && !e.may_serve_stale(&v, 1360));
        assert!(!entry(false, 1000, None).may_serve_stale(&v, 1001), "an invalid session never serves");
        assert!(!entry(true, 1000, Some(1310)).may_serve_stale(&v, 1310));
    }

    #[test]
    fn records_round_trip_and_garbage_is_no_record() {
        let r = SessionRecord { entry: entry(true, 5, Some(9)), slot: 3 };
        assert_eq!(SessionRecord::decode(&r.encode()), Some(r));
        assert_eq!(SessionRecord::decode(b"garbage"), None);
        assert_eq!(Stripe::decode(b"garbage"), Stripe::default());
    }

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
        assert_eq!(stripe_of("noetl/s-1"), 29);
        assert!((0..1000).map(|i| stripe_of(&format!("k{i}"))).all(|s| s < STRIPES));
        let used: std::collections::HashSet<u32> = (0..1000).map(|i| stripe_of(&format!("k{i}"))).collect();
        assert!(used.len() > STRIPES as usize / 2, "keys spread over the stripes");
        assert_eq!(slot_for(7, 5), 2);
        assert_eq!(slot_for(7, 0), 0);
    }
}

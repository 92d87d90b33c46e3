//! The session cache: what an entry holds, when it is fresh, and the eviction ring it lives in
//! (kept in shared data by [`crate::shared::table`]).

use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::memo::Memo;
use crate::shared::table::{self, Put, Table};
use crate::shared::{SharedStore, Unwritten};

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
    /// Bound on each worker's [`SessionMemo`].
    pub memo_entries: u64,
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
    /// When the answer was fetched (milliseconds since the epoch).
    pub fetched_at_ms: u64,
}

impl SessionEntry {
    /// The first millisecond at which the entry is no longer fresh. A valid session:
    /// `ttl_secs` after it was fetched, and never past its own `expires_at`. An invalid one:
    /// `negative_ttl_secs` after, whatever `expires_at` says (a session that expired long ago
    /// is invalid all the more, and capping it there would make every request for it ask again).
    pub fn fresh_until_ms(&self, v: &CacheSettings) -> u64 {
        if !self.valid {
            return self.fetched_at_ms.saturating_add(v.negative_ttl_secs.saturating_mul(1000));
        }
        self.fetched_at_ms.saturating_add(v.ttl_secs.saturating_mul(1000)).min(self.expires_at_ms())
    }

    /// Whether the entry may answer at `now_ms` without a callout.
    pub fn is_fresh(&self, v: &CacheSettings, now_ms: u64) -> bool {
        now_ms < self.fresh_until_ms(v)
    }

    /// Whether, under `serve_stale`, this stale entry may still answer at `now_ms`: a valid
    /// session, at most `stale_grace_secs` past freshness, and never past `expires_at`.
    pub fn may_serve_stale(&self, v: &CacheSettings, now_ms: u64) -> bool {
        let grace = v.ttl_secs.saturating_add(v.stale_grace_secs).saturating_mul(1000);
        self.valid && now_ms < self.fetched_at_ms.saturating_add(grace).min(self.expires_at_ms())
    }

    fn expires_at_ms(&self) -> u64 {
        self.expires_at.map_or(u64::MAX, |at| at.saturating_mul(1000))
    }
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

/// What the shared cache holds for a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Record {
    /// An answer.
    #[serde(rename = "e")]
    Entry(SessionEntry),
    /// Logged out at this millisecond: read as no entry, and kept in place of any answer to a
    /// callout asked before then (that answer predates the logout).
    #[serde(rename = "l")]
    LoggedOut(u64),
}

impl Record {
    fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Anything unreadable is no record (and is fetched again).
    fn decode(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// Session entries one worker decoded, by session key, with the compare-and-swap token of the
/// bucket they were read at (see [`SessionCache::get_memoized`]). Bounded by
/// `session.memo_entries`; one belongs to one configuration (a new one may bucket keys
/// differently).
#[derive(Debug, Default)]
pub struct SessionMemo(Memo<Rc<str>, Memoized>);

impl SessionMemo {
    /// A memo of at most `capacity` sessions (0: none).
    pub fn new(capacity: usize) -> Self {
        SessionMemo(Memo::new(capacity))
    }

    /// The stamp of the bucket session `key` was last read from and the stamp's token then, if
    /// known: the entry read then holds while the stamp's token is unchanged.
    pub fn version(&self, key: &str) -> Option<(String, u32)> {
        self.0.get(key).and_then(|m| Some((m.stamp.clone(), m.cas?)))
    }

    /// How many sessions are remembered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One session as a worker last read it.
#[derive(Debug)]
struct Memoized {
    /// Its bucket's stamp's shared-data key (worked out once; see [`crate::shared::table`]).
    stamp: String,
    /// The stamp's compare-and-swap token, read before the bucket (`None`: no stamp yet,
    /// nothing to trust).
    cas: Option<u32>,
    /// The entry read then (`None`: none, or logged out).
    entry: Option<Rc<SessionEntry>>,
}

/// What storing an answer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Stored, evicting this session (and the ring it was in) to make room.
    Stored(Option<(String, Ring)>),
    /// Not stored: the session was logged out after the callout was asked.
    LoggedOut,
}

/// The session cache in shared data: one table for every worker, with a ring per [`Ring`].
#[derive(Debug, Clone, Copy)]
pub struct SessionCache {
    table: Table,
    valid: table::Ring,
    invalid: table::Ring,
}

impl SessionCache {
    /// The cache `settings` describe.
    pub fn new(settings: &CacheSettings) -> Self {
        let ring = |ring: Ring, id, prefix| table::Ring { id, prefix, capacity: ring.capacity(settings) };
        let (valid, invalid) = (ring(Ring::Valid, 0, "pg1/slot"), ring(Ring::Invalid, 1, "pg1/nslot"));
        SessionCache { table: Table::new("pg2/s", valid.capacity.saturating_add(invalid.capacity)), valid, invalid }
    }

    /// Creates what must exist before any worker writes (see [`Table::prepare`]).
    pub fn prepare<S: SharedStore + ?Sized>(&self, store: &mut S) {
        self.table.prepare(store, &[self.valid, self.invalid]);
    }

    /// The cached entry of session `key`.
    pub fn get<S: SharedStore + ?Sized>(&self, store: &S, key: &str) -> Option<SessionEntry> {
        Self::entry(self.table.get(store, key))
    }

    fn entry(stored: Option<table::Stored>) -> Option<SessionEntry> {
        match Record::decode(&stored?.value)? {
            Record::Entry(entry) => Some(entry),
            Record::LoggedOut(_) => None,
        }
    }

    /// [`SessionCache::get`], read and decoded again only if the session's bucket changed since
    /// `memo` last read it. Every write to the bucket is followed by one to its stamp, whose
    /// compare-and-swap token then changes (the host counts writes for all keys together), so
    /// an unchanged token means unchanged bytes. The stamp is still read each time, so another
    /// worker's answer or logout is seen at once.
    pub fn get_memoized<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        key: &str,
        memo: &mut SessionMemo,
    ) -> Option<Rc<SessionEntry>> {
        let known = memo.0.get(key);
        let stamp = known.map_or_else(|| self.table.stamp(key), |m| m.stamp.clone());
        let (_, cas) = store.get(&stamp);
        if let Some(m) = known.filter(|m| m.cas.is_some() && m.cas == cas) {
            return m.entry.clone();
        }
        let (bytes, bucket_cas) = store.get(&self.table.bucket(key));
        let entry = Self::entry(Table::find(bytes.as_deref(), bucket_cas, key)).map(Rc::new);
        memo.0.insert(key.into(), Memoized { stamp, cas, entry: entry.clone() });
        entry
    }

    /// Stores the answer to a callout asked at `asked_at_ms`, unless the session was logged out
    /// since.
    pub fn put<S: SharedStore + ?Sized>(
        &self,
        store: &mut S,
        key: &str,
        entry: &SessionEntry,
        asked_at_ms: u64,
        now_ms: u64,
    ) -> Result<Stored, Unwritten> {
        let ring = Ring::of(entry);
        let table_ring = if ring == Ring::Valid { self.valid } else { self.invalid };
        let logged_out_since = |r: &str| matches!(Record::decode(r), Some(Record::LoggedOut(at)) if at >= asked_at_ms);
        let record = Record::Entry(entry.clone()).encode();
        Ok(match self.table.put(store, key, &record, table_ring, &logged_out_since, now_ms)? {
            Put::Stored { evicted } => Stored::Stored(evicted.map(|k| (k, ring))),
            Put::Kept => Stored::LoggedOut,
        })
    }

    /// Logs session `key` out at `now_ms`, for every worker, for `hold_ms` at least: longer
    /// than any callout asked before it can take to answer.
    pub fn log_out<S: SharedStore + ?Sized>(
        &self,
        store: &mut S,
        key: &str,
        now_ms: u64,
        hold_ms: u64,
    ) -> Result<(), Unwritten> {
        // Pinned, not in a ring: no number of other answers may evict it while it matters.
        self.table.pin(store, key, &Record::LoggedOut(now_ms).encode(), now_ms.saturating_add(hold_ms), now_ms)
    }

    /// How many sessions are cached, for the simulation's bound on memory.
    pub fn count(&self, store: &crate::shared::MemoryStore) -> usize {
        self.table.count(store)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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

    fn entry(valid: bool, fetched_at_ms: u64, expires_at: Option<u64>) -> SessionEntry {
        SessionEntry {
            valid,
            user_id: Some("42".into()),
            email: None,
            display_name: None,
            roles: vec!["analyst".into()],
            expires_at,
            fetched_at_ms,
        }
    }

    /// Seconds as milliseconds, for readability.
    fn ms(secs: u64) -> u64 {
        secs * 1000
    }

    #[test]
    fn freshness_follows_ttl_negative_ttl_and_expiry_to_the_millisecond() {
        let v = validator(r#"{"ttl_secs": 300, "negative_ttl_secs": 30}"#);
        let e = entry(true, ms(1000) + 250, None);
        assert!(e.is_fresh(&v, ms(1000)) && e.is_fresh(&v, ms(1300) + 249));
        assert!(!e.is_fresh(&v, ms(1300) + 250));
        let e = entry(false, ms(1000), None);
        assert!(e.is_fresh(&v, ms(1030) - 1) && !e.is_fresh(&v, ms(1030)));
        let e = entry(true, ms(1000), Some(1100));
        assert!(e.is_fresh(&v, ms(1100) - 1) && !e.is_fresh(&v, ms(1100)), "the session's own expiry bounds it");
    }

    #[test]
    fn invalid_answers_are_fresh_for_the_negative_ttl_whatever_their_expiry() {
        let v = validator(r#"{"ttl_secs": 300, "negative_ttl_secs": 30}"#);
        for expires_at in [None, Some(0), Some(999), Some(1000), Some(1010), Some(5000)] {
            let e = entry(false, ms(1000), expires_at);
            assert_eq!(e.fresh_until_ms(&v), ms(1030), "expires_at {expires_at:?}");
            assert!(e.is_fresh(&v, ms(1000)) && e.is_fresh(&v, ms(1030) - 1) && !e.is_fresh(&v, ms(1030)));
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
    fn the_memo_answers_while_the_bucket_is_unchanged_and_sees_every_write_to_it() {
        use crate::shared::MemoryStore;
        let v = validator(r#"{"max_entries": 4, "max_negative_entries": 4}"#);
        let (cache, mut store, mut memo) = (SessionCache::new(&v), MemoryStore::default(), SessionMemo::new(8));
        cache.prepare(&mut store);
        assert_eq!(cache.get_memoized(&store, "p/s1", &mut memo), None);
        let first = entry(true, ms(1000), None);
        cache.put(&mut store, "p/s1", &first, ms(1000), ms(1000)).unwrap();
        let read = cache.get_memoized(&store, "p/s1", &mut memo).unwrap();
        assert_eq!(*read, first, "the write is seen: its bucket changed");
        let again = cache.get_memoized(&store, "p/s1", &mut memo).unwrap();
        assert!(Rc::ptr_eq(&read, &again), "unchanged bucket: the decoded entry is reused");
        // A newer answer, stored by another worker.
        let second = SessionEntry { roles: vec!["admin".into()], ..entry(true, ms(1005), None) };
        cache.put(&mut store, "p/s1", &second, ms(1005), ms(1005)).unwrap();
        assert_eq!(cache.get_memoized(&store, "p/s1", &mut memo).as_deref(), Some(&second));
        // A logout, by another worker.
        cache.log_out(&mut store, "p/s1", ms(1006), 1000).unwrap();
        assert_eq!(cache.get_memoized(&store, "p/s1", &mut memo), None);
        // A write for another key (in the same bucket or not) changes nothing for this one.
        cache.put(&mut store, "p/s2", &first, ms(1007), ms(1007)).unwrap();
        let s2 = cache.get_memoized(&store, "p/s2", &mut memo);
        assert_eq!((cache.get_memoized(&store, "p/s1", &mut memo), s2.as_deref()), (None, Some(&first)));
        // Bounded.
        for n in 0..20 {
            let _ = cache.get_memoized(&store, &format!("p/x{n}"), &mut memo);
        }
        assert_eq!(memo.len(), 8);
        let mut off = SessionMemo::new(0);
        assert_eq!(cache.get_memoized(&store, "p/s2", &mut off).as_deref(), Some(&first));
        assert!(off.is_empty());
    }

    #[test]
    fn stale_serving_has_a_grace_and_respects_expiry() {
        let v = validator(r#"{"ttl_secs": 300}"#);
        let e = entry(true, ms(1000), None);
        assert!(e.may_serve_stale(&v, ms(1360) - 1) && !e.may_serve_stale(&v, ms(1360)));
        assert!(!entry(false, ms(1000), None).may_serve_stale(&v, ms(1001)), "an invalid session never serves");
        assert!(!entry(true, ms(1000), Some(1310)).may_serve_stale(&v, ms(1310)));
    }
}

//! The hit memo: a request this worker allowed from its caches alone (its token remembered, its
//! session fresh in the cache, no body, lookup or key fetch needed), remembered by everything
//! the guard can read of it, so that the same request again is allowed with the same identity
//! headers without reading it again. It is the cache-hit path's last step: a client that sends
//! the same request with the same token pays a hash of the request instead of a decision.
//!
//! A remembered allow answers only while what it rests on holds:
//! - the request: the method, the `:path` and every header, byte for byte and in order, except
//!   the per-request ids and trace context of [`PER_REQUEST`] when the configuration names
//!   none of them (Envoy gives each request its own `x-request-id`);
//! - the token: until its `exp` (plus the clock skew);
//! - the session: while the entry is fresh, and only while its bucket in shared data is the
//!   version it was read at (another worker's answer or a logout changes it), read again on
//!   every hit;
//! - the configuration and its policy: a new one starts an empty memo.

use std::hash::{Hash, Hasher};

use rustc_hash::FxHasher;

use crate::guard::RequestHead;
use crate::memo::Memo;
use crate::shared::SharedStore;

use super::Stat;

/// Headers that carry a per-request id or trace context: never part of what a remembered allow
/// is keyed by, unless the configuration names them anywhere (then the guard may read them).
pub const PER_REQUEST: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "x-cloud-trace-context",
    "x-amzn-trace-id",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "x-envoy-attempt-count",
    "x-envoy-expected-rq-timeout-ms",
];

/// Requests whose method, path and headers come to more bytes than this are not remembered: the
/// memo's memory stays bounded by `hit_cache_size` times this.
pub const MAX_KEY_BYTES: usize = 8192;

/// The memo of one worker, for one configuration.
#[derive(Debug, Default)]
pub(super) struct HitMemo {
    hits: Memo<u64, Hit>,
    /// The names of [`PER_REQUEST`] this configuration never mentions.
    ignored: Vec<&'static str>,
    /// Bit `n` is set when some ignored name is `n` bytes long, and bit `b` of the other when
    /// one starts with byte `b`: most headers are told apart by those two alone.
    ignored_lengths: u64,
    ignored_firsts: u128,
}

/// A remembered allow.
#[derive(Debug)]
struct Hit {
    method: Box<str>,
    path: Box<str>,
    headers: Box<[(Box<str>, Box<str>)]>,
    /// The session's bucket and the version it was read at.
    session: Option<(String, u32)>,
    /// The first millisecond it no longer answers (the token's expiry, the entry's freshness).
    until_ms: u64,
    /// The identity headers the allow set.
    set: Vec<(String, String)>,
    /// The stats the request counted besides `allowed`.
    counts: Vec<Stat>,
}

/// A remembered allow that answers: the identity headers to set, and the stats to count
/// besides `allowed`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Remembered<'m> {
    pub(super) set: &'m [(String, String)],
    pub(super) counts: &'m [Stat],
}

/// What the worker gathers while it decides a request it may remember.
#[derive(Debug)]
pub(super) struct Recording {
    pub(super) hash: u64,
    /// Nothing to remember: the request took a path the memo does not cover.
    pub(super) spoiled: bool,
    pub(super) session: Option<(String, u32)>,
    pub(super) until_ms: u64,
    pub(super) counts: Vec<Stat>,
    /// The identity headers of the allow, once decided.
    pub(super) allowed: Option<Vec<(String, String)>>,
}

impl HitMemo {
    /// A memo of at most `capacity` requests, for a configuration that mentions `mentioned`
    /// header names (any string of the configuration may be one).
    pub(super) fn new(capacity: usize, mentioned: &dyn Fn(&str) -> bool) -> Self {
        let ignored: Vec<&'static str> = PER_REQUEST.iter().copied().filter(|name| !mentioned(name)).collect();
        let ignored_lengths = ignored.iter().fold(0, |mask, name| mask | 1_u64.checked_shl(len_u32(name)).unwrap_or(0));
        let ignored_firsts = ignored.iter().fold(0, |mask, name| mask | first_bit(name));
        HitMemo { hits: Memo::new(capacity), ignored, ignored_lengths, ignored_firsts }
    }

    /// Exact names: Envoy hands header names over lowercased, and a name spelled otherwise is
    /// only kept in the key (never wrongly left out).
    fn is_ignored(&self, name: &str) -> bool {
        let length_matches = 1_u64.checked_shl(len_u32(name)).is_some_and(|bit| self.ignored_lengths & bit != 0);
        length_matches && self.ignored_firsts & first_bit(name) != 0 && self.ignored.contains(&name)
    }

    fn kept<'h>(&'h self, head: &'h RequestHead<'_>) -> impl Iterator<Item = &'h (String, String)> + 'h {
        head.headers.iter().filter(|(n, _)| !self.is_ignored(n))
    }

    /// The key of `head`, if it may be remembered at all.
    pub(super) fn hash(&self, head: &RequestHead<'_>, end_of_stream: bool) -> Option<u64> {
        if self.hits.capacity() == 0 || !end_of_stream {
            return None;
        }
        let mut size = head.method.len() + head.path.len();
        // Only picks the slot: a hit compares the whole request, so a collision (even one a
        // client contrives) costs a decision, never a wrong answer.
        let mut h = FxHasher::default();
        (head.method, head.path).hash(&mut h);
        for (name, value) in self.kept(head) {
            size += name.len() + value.len();
            (name, value).hash(&mut h);
        }
        (size <= MAX_KEY_BYTES).then(|| h.finish())
    }

    /// The identity headers and stats of the remembered allow of `head`, if it still answers.
    pub(super) fn answer<S: SharedStore + ?Sized>(
        &self,
        hash: u64,
        head: &RequestHead<'_>,
        store: &S,
        now_ms: u64,
    ) -> Option<Remembered<'_>> {
        let hit = self.hits.get(&hash)?;
        if now_ms >= hit.until_ms || *hit.method != *head.method || *hit.path != *head.path {
            return None;
        }
        let mut kept = self.kept(head);
        for (name, value) in hit.headers.iter() {
            let (n, v) = kept.next()?;
            if **name != **n || **value != **v {
                return None;
            }
        }
        if kept.next().is_some() {
            return None;
        }
        if let Some((bucket, cas)) = &hit.session {
            if store.get(bucket).1 != Some(*cas) {
                return None;
            }
        }
        Some(Remembered { set: &hit.set, counts: &hit.counts })
    }

    /// Remembers the allow `recording` gathered for `head`.
    pub(super) fn remember(&mut self, head: &RequestHead<'_>, recording: Recording) {
        let Recording { hash, spoiled: false, session, until_ms, counts, allowed: Some(set) } = recording else {
            return;
        };
        let headers = self.kept(head).map(|(n, v)| (n.as_str().into(), v.as_str().into())).collect();
        let hit = Hit { method: head.method.into(), path: head.path.into(), headers, session, until_ms, set, counts };
        self.hits.insert(hash, hit);
    }

    /// Forgets the remembered allow of `hash` (it no longer answers).
    pub(super) fn forget(&mut self, hash: u64) {
        self.hits.remove(&hash);
    }

    /// How many requests are remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.hits.len()
    }
}

/// The bit of `name`'s first byte (none for an empty name or a byte past ASCII).
fn first_bit(name: &str) -> u128 {
    name.as_bytes().first().and_then(|&b| 1_u128.checked_shl(u32::from(b))).unwrap_or(0)
}

fn len_u32(name: &str) -> u32 {
    u32::try_from(name.len()).unwrap_or(u32::MAX)
}

impl Recording {
    pub(super) fn new(hash: u64) -> Self {
        Recording { hash, spoiled: false, session: None, until_ms: u64::MAX, counts: Vec::new(), allowed: None }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::shared::MemoryStore;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    fn remembered(memo: &mut HitMemo, head: &RequestHead<'_>, session: Option<(String, u32)>, until_ms: u64) -> u64 {
        let hash = memo.hash(head, true).unwrap();
        let mut rec = Recording::new(hash);
        (rec.session, rec.until_ms, rec.allowed) = (session, until_ms, Some(headers(&[("x-user", "7")])));
        rec.counts.push(Stat::CacheHits);
        memo.remember(head, rec);
        hash
    }

    #[test]
    fn only_the_same_request_is_answered_per_request_ids_aside() {
        let mut memo = HitMemo::new(8, &|_| false);
        let sent = headers(&[("authorization", "Bearer a"), ("x-request-id", "1"), ("cookie", "c=1")]);
        let head = RequestHead { method: "GET", path: "/api/me", headers: &sent };
        remembered(&mut memo, &head, None, 1000);
        let store = MemoryStore::default();
        let ask = |memo: &HitMemo, method: &str, path: &str, pairs: &[(&str, &str)]| {
            let h = headers(pairs);
            let head = RequestHead { method, path, headers: &h };
            memo.hash(&head, true).and_then(|hash| memo.answer(hash, &head, &store, 10)).is_some()
        };
        let same = [("authorization", "Bearer a"), ("x-request-id", "2"), ("cookie", "c=1")];
        assert!(ask(&memo, "GET", "/api/me", &same), "another request id is the same request");
        assert!(!ask(&memo, "POST", "/api/me", &same));
        assert!(!ask(&memo, "GET", "/api/me/", &same));
        for other in [
            &[("authorization", "Bearer b"), ("x-request-id", "2"), ("cookie", "c=1")][..],
            &[("authorization", "Bearer a"), ("x-request-id", "2")],
            &[("authorization", "Bearer a"), ("x-request-id", "2"), ("cookie", "c=1"), ("cookie", "t=2")],
            &[("cookie", "c=1"), ("x-request-id", "2"), ("authorization", "Bearer a")],
            &[("authorization", "Bearer a"), ("x-request-id", "2"), ("cookie", "c=1"), ("x-session-token", "z")],
        ] {
            assert!(!ask(&memo, "GET", "/api/me", other), "{other:?}");
        }
        // A configuration that names x-request-id (it may read it) keys by it too.
        let mut strict = HitMemo::new(8, &|name| name == "x-request-id");
        remembered(&mut strict, &head, None, 1000);
        assert!(!ask(&strict, "GET", "/api/me", &same));
        let first = [("authorization", "Bearer a"), ("x-request-id", "1"), ("cookie", "c=1")];
        assert!(ask(&strict, "GET", "/api/me", &first));
    }

    #[test]
    fn every_per_request_name_is_ignored_and_nothing_else() {
        let memo = HitMemo::new(8, &|_| false);
        for name in PER_REQUEST {
            assert!(memo.is_ignored(name), "{name}");
        }
        for name in ["x-request-ids", "x-request-iD", "authorization", "cookie", ":path", "b", "b4", "", "\u{e9}"] {
            assert!(!memo.is_ignored(name), "{name}");
        }
    }

    #[test]
    fn an_allow_answers_until_its_time_and_while_its_session_bucket_is_unchanged() {
        let mut memo = HitMemo::new(8, &|_| false);
        let mut store = MemoryStore::default();
        store.set("b/1", Some(b"[]"), None).unwrap();
        let cas = store.get("b/1").1.unwrap();
        let sent = headers(&[("authorization", "Bearer a")]);
        let head = RequestHead { method: "GET", path: "/x", headers: &sent };
        let hash = remembered(&mut memo, &head, Some(("b/1".into(), cas)), 1000);
        let answer = memo.answer(hash, &head, &store, 999).unwrap();
        assert_eq!(answer, Remembered { set: &headers(&[("x-user", "7")]), counts: &[Stat::CacheHits] });
        assert!(memo.answer(hash, &head, &store, 1000).is_none(), "its time is up");
        store.set("b/1", Some(b"[]"), None).unwrap();
        assert!(
            memo.answer(hash, &head, &store, 10).is_none(),
            "the bucket was written: the same bytes, another version"
        );
    }

    #[test]
    fn what_cannot_be_remembered_is_not() {
        let mut memo = HitMemo::new(8, &|_| false);
        let sent = headers(&[("authorization", "Bearer a")]);
        let head = RequestHead { method: "GET", path: "/x", headers: &sent };
        assert_eq!(memo.hash(&head, false), None, "a body may follow");
        let big = headers(&[("cookie", &"c".repeat(MAX_KEY_BYTES))]);
        assert_eq!(memo.hash(&RequestHead { method: "GET", path: "/x", headers: &big }, true), None);
        assert_eq!(HitMemo::new(0, &|_| false).hash(&head, true), None, "disabled");
        let hash = memo.hash(&head, true).unwrap();
        // An allow on a path the memo does not cover, and a request not allowed.
        let mut spoiled = Recording::new(hash);
        (spoiled.spoiled, spoiled.allowed) = (true, Some(Vec::new()));
        memo.remember(&head, spoiled);
        memo.remember(&head, Recording::new(hash));
        assert_eq!(memo.len(), 0);
    }
}

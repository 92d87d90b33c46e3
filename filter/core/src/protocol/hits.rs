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
//! - the session: while the entry is fresh, and only while its bucket's stamp in shared data
//!   is the version it was read at (another worker's answer or a logout changes it), read
//!   again on every hit (an empty value: the host copies nothing into the VM);
//! - the configuration and its policy: a new one starts an empty memo.

use std::hash::BuildHasherDefault;
use std::rc::Rc;

use rustc_hash::FxHasher;

use crate::header_map::{HeaderMap, Run};
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

/// Requests whose headers (pseudo-headers included) come to more bytes than this are not
/// remembered: the memo's memory stays bounded by `hit_cache_size` times this.
pub const MAX_KEY_BYTES: usize = 8192;

/// What a remembered allow grants again: the identity headers to set, and the stats to count
/// besides `allowed`.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    /// The identity headers the allow set.
    pub headers: Vec<(String, String)>,
    /// The stats the request counted besides `allowed`.
    pub counts: Vec<Stat>,
}

/// The memo of one worker, for one configuration.
#[derive(Debug)]
pub(super) struct HitMemo {
    /// Keyed by [`HitKey::hash`], a hash already: hashing it again with the standard keyed
    /// hash would cost a hit more than the rest of its lookup.
    hits: Memo<u64, Hit, BuildHasherDefault<FxHasher>>,
    /// The names of [`PER_REQUEST`] this configuration never mentions.
    ignored: Vec<&'static str>,
    /// Bit `n` is set when some ignored name is `n` bytes long, and entry `b` of the other when
    /// one starts with byte `b`: most headers are told apart by those two alone.
    ignored_lengths: u64,
    ignored_firsts: [bool; 256],
}

impl Default for HitMemo {
    fn default() -> Self {
        HitMemo::new(0, &|_| true)
    }
}

/// A remembered allow.
#[derive(Debug)]
struct Hit {
    /// The request's pairs but the ignored ones, as [`encode`] writes them.
    request: Box<[u8]>,
    /// The stamp of the session's bucket and the version it was read at.
    session: Option<(String, u32)>,
    /// The first millisecond it no longer answers (the token's expiry, the entry's freshness).
    until_ms: u64,
    grant: Rc<Grant>,
}

/// Requests whose kept pairs fall in more runs than this (more than seven stretches of
/// per-request headers between them) are not remembered.
const MAX_RUNS: usize = 8;

/// A request the memo may remember: its kept pairs, as runs of the header map the host handed
/// over, and their hash.
#[derive(Debug, Clone, Copy)]
pub struct HitKey<'a> {
    runs: [Run<'a>; MAX_RUNS],
    count: usize,
    hash: u64,
}

impl<'a> HitKey<'a> {
    fn runs(&self) -> &[Run<'a>] {
        self.runs.get(..self.count).unwrap_or_default()
    }
}

/// What the worker gathers while it decides a request it may remember.
#[derive(Debug)]
pub(super) struct Recording {
    /// Nothing to remember: the request took a path the memo does not cover.
    pub(super) spoiled: bool,
    pub(super) session: Option<(String, u32)>,
    pub(super) until_ms: u64,
    pub(super) counts: Vec<Stat>,
    /// The identity headers of the allow, once decided.
    pub(super) allowed: Option<Vec<(String, String)>>,
}

impl HitMemo {
    /// A memo of at most `capacity` requests, for a configuration that may read any header
    /// `read` says yes to (it names it, or removes it as an identity header).
    pub(super) fn new(capacity: usize, read: &dyn Fn(&str) -> bool) -> Self {
        let ignored: Vec<&'static str> = PER_REQUEST.iter().copied().filter(|name| !read(name)).collect();
        let ignored_lengths =
            ignored.iter().fold(0, |mask, name| mask | 1_u64.checked_shl(len_u32(name.as_bytes())).unwrap_or(0));
        let mut ignored_firsts = [false; 256];
        for first in ignored.iter().filter_map(|name| name.bytes().next()) {
            if let Some(slot) = ignored_firsts.get_mut(usize::from(first)) {
                *slot = true;
            }
        }
        HitMemo { hits: Memo::new(capacity), ignored, ignored_lengths, ignored_firsts }
    }

    /// Exact names: Envoy hands header names over lowercased, and a name spelled otherwise is
    /// only kept in the key (never wrongly left out).
    fn is_ignored(&self, name: &[u8]) -> bool {
        let length_matches = 1_u64.checked_shl(len_u32(name)).is_some_and(|bit| self.ignored_lengths & bit != 0);
        let first_matches = name.first().and_then(|&b| self.ignored_firsts.get(usize::from(b))) == Some(&true);
        length_matches && first_matches && self.ignored.iter().any(|i| i.as_bytes() == name)
    }

    /// The key of a request with no body whose headers are `map`, if it may be remembered.
    pub(super) fn key<'a>(&self, map: &HeaderMap<'a>) -> Option<HitKey<'a>> {
        if self.hits.capacity() == 0 {
            return None;
        }
        let mut key = HitKey { runs: [Run::default(); MAX_RUNS], count: 0, hash: 0 };
        let mut size = 0;
        for run in map.runs(|name| !self.is_ignored(name)) {
            *key.runs.get_mut(key.count)? = run;
            key.count += 1;
            size += run.data.len();
        }
        key.hash = slot_hash(key.runs());
        (size <= MAX_KEY_BYTES).then_some(key)
    }

    /// The grant of the remembered allow of `key`, if it still answers. One that no longer does
    /// is forgotten: the request is about to be decided again.
    pub(super) fn answer<S: SharedStore + ?Sized>(
        &mut self,
        key: &HitKey<'_>,
        store: &S,
        now_ms: u64,
    ) -> Option<Rc<Grant>> {
        let hit = self.hits.get(&key.hash)?;
        let answers = now_ms < hit.until_ms
            && same_request(&hit.request, key.runs())
            && hit.session.as_ref().is_none_or(|(stamp, cas)| store.get(stamp).1 == Some(*cas));
        if answers {
            Some(Rc::clone(&hit.grant))
        } else {
            self.hits.remove(&key.hash);
            None
        }
    }

    /// Remembers the allow `recording` gathered for the request of `key`.
    pub(super) fn remember(&mut self, key: &HitKey<'_>, recording: Recording) {
        let Recording { spoiled: false, session, until_ms, counts, allowed: Some(headers) } = recording else {
            return;
        };
        let request = encode(key.runs());
        let grant = Rc::new(Grant { headers, counts });
        self.hits.insert(key.hash, Hit { request, session, until_ms, grant });
    }

    /// How many requests are remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.hits.len()
    }
}

/// Whether `runs` are the request [`encode`] wrote as `stored`.
fn same_request(stored: &[u8], runs: &[Run<'_>]) -> bool {
    let Some((table_len, stored)) = stored.split_first_chunk::<4>() else { return false };
    let Some((mut table, mut data)) = stored.split_at_checked(u32::from_le_bytes(*table_len) as usize) else {
        return false;
    };
    let next = |stored: &mut &[u8], part: &[u8]| match stored.split_at_checked(part.len()) {
        Some((bytes, rest)) if same_bytes(bytes, part) => {
            *stored = rest;
            true
        }
        _ => false,
    };
    runs.iter().all(|run| next(&mut table, run.table) && next(&mut data, run.data))
        && table.is_empty()
        && data.is_empty()
}

/// The runs' tables end to end, then their data, behind the tables' length (`u32`, little
/// endian): the kept pairs, each told from the next by the lengths.
fn encode(runs: &[Run<'_>]) -> Box<[u8]> {
    let table: usize = runs.iter().map(|r| r.table.len()).sum();
    let mut out = u32::try_from(table).unwrap_or(u32::MAX).to_le_bytes().to_vec();
    for run in runs {
        out.extend_from_slice(run.table);
    }
    for run in runs {
        out.extend_from_slice(run.data);
    }
    out.into_boxed_slice()
}

/// Byte equality 32 bytes at a time: the `memcmp` a wasm build links (wasi-libc's) goes a byte
/// at a time, and a hit compares every byte of the request.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a, mut b) = (a, b);
    while let (Some((x, a_rest)), Some((y, b_rest))) = (a.split_first_chunk::<32>(), b.split_first_chunk::<32>()) {
        let (x, y) = (words(x), words(y));
        if (x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) != 0 {
            return false;
        }
        (a, b) = (a_rest, b_rest);
    }
    while let (Some((x, a_rest)), Some((y, b_rest))) = (a.split_first_chunk::<8>(), b.split_first_chunk::<8>()) {
        if x != y {
            return false;
        }
        (a, b) = (a_rest, b_rest);
    }
    a == b
}

/// The four words of 32 bytes (in the machine's order: only compared or mixed, never read as
/// numbers).
fn words(bytes: &[u8; 32]) -> [u64; 4] {
    let mut out = [0; 4];
    for (word, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *word = chunk.first_chunk::<8>().map_or(0, |c| u64::from_ne_bytes(*c));
    }
    out
}

/// An odd multiplier with its bits spread (2^64 over the golden ratio): a multiply by it is a
/// bijection of the lane, so two inputs that differ in one word never meet in that lane.
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

/// The hash a request's key is looked up by. It only picks the slot: a hit compares the whole
/// request ([`same_request`]), so a collision, even one a client contrives, costs a decision,
/// never a wrong answer, and the hash need not resist anyone. It takes the bytes eight at a
/// time into four lanes, one multiply per word, with a 64-bit multiply, which wasm has. The
/// maintained hashers fit this job worse on wasm32: they keep to 32-bit multiplies there or mix
/// more per word. For the harness's remembered request, the whole of its request-headers
/// callback costs 5,122 wasm instructions with rustc-hash's `FxHasher` over these bytes, 4,757
/// with xxhash-rust's xxh64, and 4,222 with this (the comparison at 32 bytes a time included).
fn slot_hash(runs: &[Run<'_>]) -> u64 {
    let mut lanes = [0, SPREAD, SPREAD.rotate_left(21), SPREAD.rotate_left(42)];
    for part in runs.iter().flat_map(|run| [run.table, run.data]) {
        // The length first, so that the boundaries between parts count.
        lanes[0] = (lanes[0] ^ part.len() as u64).wrapping_mul(SPREAD);
        let mut bytes = part;
        while let Some((chunk, rest)) = bytes.split_first_chunk::<32>() {
            absorb(&mut lanes, chunk);
            bytes = rest;
        }
        let mut tail = [0; 32];
        if let Some(head) = tail.get_mut(..bytes.len()) {
            head.copy_from_slice(bytes);
        }
        absorb(&mut lanes, &tail);
    }
    // Fold the lanes, then carry the high bits down: a multiply only carries bits up.
    let h = lanes[0] ^ lanes[1].rotate_left(16) ^ lanes[2].rotate_left(32) ^ lanes[3].rotate_left(48);
    let h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

fn absorb(lanes: &mut [u64; 4], chunk: &[u8; 32]) {
    for (lane, word) in lanes.iter_mut().zip(words(chunk)) {
        *lane = (*lane ^ word).wrapping_mul(SPREAD);
    }
}

fn len_u32(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).unwrap_or(u32::MAX)
}

impl Default for Recording {
    fn default() -> Self {
        Recording { spoiled: false, session: None, until_ms: u64::MAX, counts: Vec::new(), allowed: None }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::header_map::serialize;
    use crate::shared::MemoryStore;

    fn grant() -> Grant {
        Grant { headers: vec![("x-user".into(), "7".into())], counts: vec![Stat::CacheHits] }
    }

    /// Remembers an allow of the request serialized as `bytes`.
    fn remember(memo: &mut HitMemo, bytes: &[u8], session: Option<(String, u32)>, until_ms: u64) {
        let map = HeaderMap::parse(bytes).unwrap();
        let key = memo.key(&map).unwrap();
        let Grant { headers, counts } = grant();
        let rec = Recording { session, until_ms, counts, allowed: Some(headers), ..Recording::default() };
        memo.remember(&key, rec);
    }

    /// Whether the memo answers the request serialized as `bytes` at `now_ms`.
    fn answers(memo: &mut HitMemo, bytes: &[u8], store: &MemoryStore, now_ms: u64) -> bool {
        let map = HeaderMap::parse(bytes).unwrap();
        let Some(key) = memo.key(&map) else { return false };
        let grant = memo.answer(&key, store, now_ms);
        grant.is_some_and(|g| *g == self::grant())
    }

    const SENT: &[(&str, &str)] = &[
        (":method", "GET"),
        (":path", "/api/me"),
        ("authorization", "Bearer a"),
        ("x-request-id", "1"),
        ("cookie", "c=1"),
    ];

    #[test]
    fn only_the_same_request_is_answered_per_request_ids_aside() {
        let (mut memo, store) = (HitMemo::new(8, &|_| false), MemoryStore::default());
        remember(&mut memo, &serialize(SENT), None, 1000);
        let with = |at: usize, pair: (&str, &str)| {
            let mut pairs = SENT.to_vec();
            pairs[at] = pair;
            serialize(&pairs)
        };
        assert!(answers(&mut memo, &with(3, ("x-request-id", "2")), &store, 10), "another request id");
        let mut others = vec![
            with(0, (":method", "POST")),
            with(1, (":path", "/api/me/")),
            with(2, ("authorization", "Bearer b")),
            with(4, ("cookie", "c=2")),
            with(4, ("cookie2", "c=1")),
            serialize(&SENT[..4]),
            serialize(&[SENT, &[("cookie", "t=2")]].concat()),
            serialize(&[SENT, &[("x-session-token", "z")]].concat()),
            serialize(&[SENT[2], SENT[0], SENT[1], SENT[3], SENT[4]]),
        ];
        // A value moved across the name/value line, and a name that only a length tells apart.
        others.push(with(4, ("cookiec", "=1")));
        others.push(with(4, ("cookie\0c", "=1")));
        for other in &others {
            assert!(!answers(&mut memo, other, &store, 10), "{:?}", HeaderMap::parse(other).unwrap());
            // A request that does not answer forgets what was remembered under its hash only.
            remember(&mut memo, &serialize(SENT), None, 1000);
        }
        // A configuration that reads x-request-id keys by it too.
        let mut strict = HitMemo::new(8, &|name| name == "x-request-id");
        remember(&mut strict, &serialize(SENT), None, 1000);
        assert!(!answers(&mut strict, &with(3, ("x-request-id", "2")), &store, 10));
        remember(&mut strict, &serialize(SENT), None, 1000);
        assert!(answers(&mut strict, &serialize(SENT), &store, 10));
    }

    #[test]
    fn every_per_request_name_is_ignored_and_nothing_else() {
        let memo = HitMemo::new(8, &|_| false);
        for name in PER_REQUEST {
            assert!(memo.is_ignored(name.as_bytes()), "{name}");
        }
        for name in ["x-request-ids", "x-request-iD", "authorization", "cookie", ":path", "b", "b4", "", "\u{e9}"] {
            assert!(!memo.is_ignored(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn an_allow_answers_until_its_time_and_while_its_session_stamp_is_unchanged() {
        let (mut memo, mut store) = (HitMemo::new(8, &|_| false), MemoryStore::default());
        store.set("b/1", None, None).unwrap();
        let cas = store.get("b/1").1.unwrap();
        let bytes = serialize(SENT);
        remember(&mut memo, &bytes, Some(("b/1".into(), cas)), 1000);
        assert!(answers(&mut memo, &bytes, &store, 999));
        assert!(!answers(&mut memo, &bytes, &store, 1000), "its time is up");
        assert_eq!(memo.len(), 0, "and it is forgotten");
        remember(&mut memo, &bytes, Some(("b/1".into(), cas)), 1000);
        store.set("b/1", None, None).unwrap();
        assert!(!answers(&mut memo, &bytes, &store, 10), "the stamp was written: the same bytes, another version");
    }

    #[test]
    fn what_cannot_be_remembered_is_not() {
        let mut memo = HitMemo::new(8, &|_| false);
        let big = serialize(&[("cookie", "c".repeat(MAX_KEY_BYTES))]);
        assert!(memo.key(&HeaderMap::parse(&big).unwrap()).is_none());
        // Kept pairs in more runs than MAX_RUNS: each split from the next by a request id.
        let split: Vec<(String, &str)> =
            (0..=MAX_RUNS).flat_map(|n| [(format!("h{n}"), "v"), ("x-request-id".into(), "1")]).collect();
        assert!(memo.key(&HeaderMap::parse(&serialize(&split)).unwrap()).is_none());
        assert!(memo.key(&HeaderMap::parse(&serialize(&split[..2 * MAX_RUNS])).unwrap()).is_some());
        let bytes = serialize(SENT);
        let map = HeaderMap::parse(&bytes).unwrap();
        assert!(HitMemo::new(0, &|_| false).key(&map).is_none(), "disabled");
        let key = memo.key(&map).unwrap();
        // An allow on a path the memo does not cover, and a request not allowed.
        memo.remember(&key, Recording { spoiled: true, allowed: Some(Vec::new()), ..Recording::default() });
        memo.remember(&key, Recording::default());
        assert_eq!(memo.len(), 0);
    }

    #[test]
    fn any_one_byte_changed_changes_the_slot_hash() {
        let table: Vec<u8> = (0..24).collect();
        let data: Vec<u8> = (100..180).collect();
        let hash = |table: &[u8], data: &[u8]| slot_hash(&[Run { table, data }]);
        let original = hash(&table, &data);
        for at in 0..data.len() {
            let mut other = data.clone();
            other[at] ^= 0x80;
            assert_ne!(hash(&table, &other), original, "data byte {at}");
        }
        for at in 0..table.len() {
            let mut other = table.clone();
            other[at] ^= 1;
            assert_ne!(hash(&other, &data), original, "table byte {at}");
        }
        assert_ne!(hash(&table, &data[..79]), original, "a byte fewer");
        assert_ne!(hash(&[table.as_slice(), &data[..1]].concat(), &data[1..]), original, "a byte moved across");
        assert_ne!(hash(&[], &[]), hash(&[], &[0]), "a zero byte counts");
    }

    #[test]
    fn bytes_compare_equal_only_when_equal() {
        let text: Vec<u8> = (0..80).collect();
        for len in 0..text.len() {
            assert!(same_bytes(&text[..len], &text[..len]));
            for at in 0..len {
                let mut other = text[..len].to_vec();
                other[at] ^= 1;
                assert!(!same_bytes(&text[..len], &other), "{len} bytes, differing at {at}");
            }
            assert!(!same_bytes(&text[..len], &text[..len + 1]));
        }
    }
}

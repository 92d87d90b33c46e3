//! Records kept in shared data under a set of keys the configuration bounds, with eviction
//! rings that make the oldest record go first.
//!
//! A record for `key` lives in bucket `<table>/<fnv1a(key) % buckets>`, beside the few others
//! that hash there; the buckets are created once ([`Table::prepare`]) and after that only
//! changed by compare-and-swap. Each record also takes the next slot of its ring
//! (`<ring>/<n>` names the key that holds slot `n`, `<ring>/head` counts the records ever
//! stored): taking a slot evicts whichever record held it. So a table holds at most its rings'
//! capacity of records, and never more keys than buckets and slots, however many distinct
//! sessions or ids pass through it.
//!
//! Each bucket has a stamp, `<bucket>/stamp`: an empty value written after every change to the
//! bucket, so that its compare-and-swap token changes whenever the bucket has. A worker that
//! remembers what it read checks the stamp instead of reading the bucket again: the host
//! copies a value into the VM through an allocation, a round trip into the VM that costs more
//! than the whole check, and an empty value needs none. The stamp is read before the bucket
//! and written after it, so a stamp unchanged since a read means no write has completed since.

use serde::{Deserialize, Serialize};

use super::{fnv1a, update, update_or_force, SharedStore, Unwritten};

/// Records per bucket when the cache is full: a read decodes the bucket, so few; a bucket is a
/// key the host keeps, so not one per record.
const RECORDS_PER_BUCKET: u64 = 4;

/// A table of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    prefix: &'static str,
    buckets: u64,
}

/// An eviction ring: `capacity` slots, taken in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ring {
    /// Which ring a record belongs to, as stored in it.
    pub id: u8,
    /// Where its slots and counter live.
    pub prefix: &'static str,
    /// How many records it holds.
    pub capacity: u64,
}

/// A record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Row {
    #[serde(rename = "k")]
    key: String,
    #[serde(rename = "r")]
    ring: u8,
    #[serde(rename = "s")]
    slot: u64,
    /// The record, in its own encoding: a read decodes only the record it looks for.
    #[serde(rename = "v")]
    value: String,
    /// A pinned record ([`Table::pin`]) holds until then, outside any ring.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    until_ms: Option<u64>,
}

impl Row {
    fn expired(&self, now_ms: u64) -> bool {
        self.until_ms.is_some_and(|until| until <= now_ms)
    }
}

/// What [`Table::put`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// Stored, evicting the record of this key (if any) to make room.
    Stored {
        /// The key evicted.
        evicted: Option<String>,
    },
    /// Not stored: the record there is to be kept.
    Kept,
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The record.
    pub value: String,
    /// The ring it is in.
    pub ring: u8,
    /// The bucket's compare-and-swap token when it was read: the record has not changed while
    /// the bucket's token has not.
    pub cas: Option<u32>,
}

fn decode(bytes: Option<&[u8]>) -> Vec<Row> {
    // An unreadable bucket reads as empty: its records are refetched, and the next write
    // replaces it.
    bytes.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default()
}

fn encode(rows: &[Row]) -> Vec<u8> {
    serde_json::to_vec(rows).unwrap_or_default()
}

impl Table {
    /// A table under `prefix` for rings of `capacity` records in all.
    pub fn new(prefix: &'static str, capacity: u64) -> Self {
        Table { prefix, buckets: capacity.div_ceil(RECORDS_PER_BUCKET).max(1) }
    }

    /// The shared-data key of the bucket `key`'s record lives in.
    pub fn bucket(&self, key: &str) -> String {
        format!("{}/{}", self.prefix, fnv1a(key) % self.buckets)
    }

    /// The shared-data key of the stamp of the bucket `key`'s record lives in.
    pub fn stamp(&self, key: &str) -> String {
        stamp_of(&self.bucket(key))
    }

    /// Creates the buckets and ring counters that are missing, once per size: shared data has
    /// no create-if-absent, so two workers creating one bucket at once could each drop the
    /// record the other wrote. Envoy configures a plugin on its main thread before any worker
    /// runs it, which is where this must first run. Keys that exist are left alone.
    pub fn prepare<S: SharedStore + ?Sized>(&self, store: &mut S, rings: &[Ring]) {
        let ready = format!("{}/ready", self.prefix);
        let size = self.buckets.to_string();
        if store.get(&ready).0.as_deref() == Some(size.as_bytes()) {
            return;
        }
        let buckets = (0..self.buckets).map(|n| (format!("{}/{n}", self.prefix), b"[]".as_slice()));
        let heads = rings.iter().map(|r| (format!("{}/head", r.prefix), b"0".as_slice()));
        for (key, empty) in buckets.chain(heads) {
            if store.get(&key).1.is_none() {
                let _ = store.set(&key, Some(empty), None);
            }
        }
        let _ = store.set(&ready, Some(size.as_bytes()), None);
    }

    /// The record of `key`.
    pub fn get<S: SharedStore + ?Sized>(&self, store: &S, key: &str) -> Option<Stored> {
        let (value, cas) = store.get(&self.bucket(key));
        Self::find(value.as_deref(), cas, key)
    }

    /// The record of `key` in a bucket read as `bytes` at `cas` (see [`Table::bucket`]).
    pub fn find(bytes: Option<&[u8]>, cas: Option<u32>, key: &str) -> Option<Stored> {
        let row = decode(bytes).into_iter().find(|r| r.key == key)?;
        Some(Stored { value: row.value, ring: row.ring, cas })
    }

    /// Stores `value` as `key`'s record in `ring`: in place if it is there already, else in
    /// the ring's next slot, evicting the record that held it. A record for which `keep` holds
    /// is left as it is (checked in the same compare-and-swap as the write).
    pub fn put<S: SharedStore + ?Sized>(
        &self,
        store: &mut S,
        key: &str,
        value: &str,
        ring: Ring,
        keep: &dyn Fn(&str) -> bool,
        now_ms: u64,
    ) -> Result<Put, Unwritten> {
        let bucket = self.bucket(key);
        let in_place = write_bucket(store, &bucket, false, |bytes| {
            let mut rows = decode(bytes);
            rows.retain(|r| !r.expired(now_ms));
            match rows.iter_mut().find(|r| r.key == key) {
                Some(row) if keep(&row.value) => (None, Some(Put::Kept)),
                Some(row) if row.ring == ring.id => {
                    value.clone_into(&mut row.value);
                    (Some(encode(&rows)), Some(Put::Stored { evicted: None }))
                }
                _ => (None, None),
            }
        })?;
        if let Some(done) = in_place {
            return Ok(done);
        }
        let slot = next_slot(store, ring)?;
        let kept = write_bucket(store, &bucket, false, |bytes| {
            let mut rows = decode(bytes);
            rows.retain(|r| !r.expired(now_ms));
            if rows.iter().any(|r| r.key == key && keep(&r.value)) {
                return (None, true);
            }
            rows.retain(|r| r.key != key);
            rows.push(Row { key: key.to_owned(), ring: ring.id, slot, value: value.to_owned(), until_ms: None });
            (Some(encode(&rows)), false)
        })?;
        if kept {
            return Ok(Put::Kept);
        }
        // The slot is written only once the record is in its bucket, and by compare-and-swap,
        // so whoever takes the slot next reads exactly this key as the one to evict.
        let slot_key = format!("{}/{slot}", ring.prefix);
        let victim = update(store, &slot_key, |bytes| {
            (Some(key.as_bytes().to_vec()), bytes.and_then(|b| String::from_utf8(b.to_vec()).ok()))
        });
        let victim = match victim {
            Ok(victim) => victim,
            Err(e) => {
                // Nobody would ever evict a record whose slot does not name it: take it back.
                let _ = self.remove_if(store, key, |r| r.slot == slot && r.ring == ring.id);
                return Err(e);
            }
        };
        match victim {
            Some(victim) if victim != key => {
                // Only if it still holds this slot: it may have been stored again since, in
                // another slot or ring, and the slot it left still names it.
                let evicted = self.remove_if(store, &victim, |r| r.slot == slot && r.ring == ring.id)?;
                Ok(Put::Stored { evicted: evicted.then_some(victim) })
            }
            _ => Ok(Put::Stored { evicted: None }),
        }
    }

    /// Pins `value` as `key`'s record until `until_ms`, outside any ring (no record is evicted
    /// for it, and it is dropped by the first write to its bucket after that), overwriting what
    /// the bucket holds for `key` even under contention ([`update_or_force`]): for a record that
    /// must land and must stay its while (a logout), whatever else comes and goes.
    pub fn pin<S: SharedStore + ?Sized>(
        &self,
        store: &mut S,
        key: &str,
        value: &str,
        until_ms: u64,
        now_ms: u64,
    ) -> Result<(), Unwritten> {
        write_bucket(store, &self.bucket(key), true, |bytes| {
            let mut rows = decode(bytes);
            rows.retain(|r| r.key != key && !r.expired(now_ms));
            let row = Row {
                key: key.to_owned(),
                ring: u8::MAX,
                slot: u64::MAX,
                value: value.to_owned(),
                until_ms: Some(until_ms),
            };
            rows.push(row);
            (Some(encode(&rows)), ())
        })
    }

    /// Forgets `key`'s record; whether there was one.
    pub fn remove<S: SharedStore + ?Sized>(&self, store: &mut S, key: &str) -> Result<bool, Unwritten> {
        self.remove_if(store, key, |_| true)
    }

    fn remove_if<S: SharedStore + ?Sized>(
        &self,
        store: &mut S,
        key: &str,
        which: impl Fn(&Row) -> bool,
    ) -> Result<bool, Unwritten> {
        write_bucket(store, &self.bucket(key), false, |bytes| {
            let mut rows = decode(bytes);
            let before = rows.len();
            rows.retain(|r| !(r.key == key && which(r)));
            if rows.len() == before {
                (None, false)
            } else {
                (Some(encode(&rows)), true)
            }
        })
    }

    /// How many records the buckets hold, for the simulation's bound on memory.
    pub fn count(&self, store: &super::MemoryStore) -> usize {
        let prefix = format!("{}/", self.prefix);
        store
            .scan(&prefix)
            .filter(|(k, _)| !k.ends_with("/ready") && !k.ends_with("/stamp"))
            .map(|(_, v)| decode(Some(v)).len())
            .sum()
    }
}

fn stamp_of(bucket: &str) -> String {
    format!("{bucket}/stamp")
}

/// Applies `change` to `bucket` ([`update`], or [`update_or_force`] with `force`), then
/// stamps the bucket if it was written.
fn write_bucket<S: SharedStore + ?Sized, T>(
    store: &mut S,
    bucket: &str,
    force: bool,
    mut change: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Result<T, Unwritten> {
    // The last call of `change` is the one whose write landed (or that wrote nothing).
    let mut wrote = false;
    let mut tracked = |bytes: Option<&[u8]>| {
        let (write, out) = change(bytes);
        wrote = write.is_some();
        (write, out)
    };
    let out = if force { update_or_force(store, bucket, &mut tracked)? } else { update(store, bucket, &mut tracked)? };
    if wrote {
        // A bucket changed but not stamped would let every worker go on trusting what it read.
        store.set(&stamp_of(bucket), None, None).map_err(|_| Unwritten::Refused)?;
    }
    Ok(out)
}

/// Takes the next slot of `ring`.
fn next_slot<S: SharedStore + ?Sized>(store: &mut S, ring: Ring) -> Result<u64, Unwritten> {
    let n = update(store, &format!("{}/head", ring.prefix), |bytes| {
        let n = bytes.and_then(|b| std::str::from_utf8(b).ok()).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        (Some((n + 1).to_string().into_bytes()), n)
    })?;
    Ok(n % ring.capacity.max(1))
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::shared::MemoryStore;

    const RING: Ring = Ring { id: 0, prefix: "t/slot", capacity: 3 };
    const OTHER: Ring = Ring { id: 1, prefix: "t/nslot", capacity: 2 };

    fn table(store: &mut MemoryStore) -> Table {
        let t = Table::new("t/r", RING.capacity + OTHER.capacity);
        t.prepare(store, &[RING, OTHER]);
        t
    }

    fn never(_: &str) -> bool {
        false
    }

    fn stored(evicted: Option<&str>) -> Put {
        Put::Stored { evicted: evicted.map(str::to_owned) }
    }

    fn value(store: &MemoryStore, t: &Table, key: &str) -> Option<u32> {
        t.get(store, key).map(|s| s.value.parse().unwrap())
    }

    #[test]
    fn the_oldest_record_goes_first_and_an_update_keeps_its_slot() {
        let mut store = MemoryStore::default();
        let t = table(&mut store);
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(t.put(&mut store, key, &i.to_string(), RING, &never, 0), Ok(stored(None)));
        }
        assert_eq!(t.put(&mut store, "a", "10", RING, &never, 0), Ok(stored(None)), "in place");
        assert_eq!(t.put(&mut store, "d", "3", RING, &never, 0), Ok(stored(Some("a"))), "a was stored first");
        assert_eq!((value(&store, &t, "a"), value(&store, &t, "b"), value(&store, &t, "d")), (None, Some(1), Some(3)));
        assert_eq!(t.count(&store), 3);
    }

    #[test]
    fn rings_are_bounded_apart_and_a_record_moves_between_them() {
        let mut store = MemoryStore::default();
        let t = table(&mut store);
        t.put(&mut store, "a", "1", RING, &never, 0).unwrap();
        t.put(&mut store, "b", "2", RING, &never, 0).unwrap();
        for i in 0..5u32 {
            t.put(&mut store, &format!("n{i}"), &i.to_string(), OTHER, &never, 0).unwrap();
        }
        assert_eq!(value(&store, &t, "a"), Some(1), "the other ring never evicts this one");
        assert_eq!(t.count(&store), 4);
        // "a" moves to the other ring; the slot it left still names it, but takes nothing when
        // reused.
        t.put(&mut store, "a", "7", OTHER, &never, 0).unwrap();
        let a = t.get(&store, "a").unwrap();
        assert_eq!((a.value.as_str(), a.ring), ("7", OTHER.id));
        t.put(&mut store, "c", "3", RING, &never, 0).unwrap();
        assert_eq!(t.put(&mut store, "d", "4", RING, &never, 0), Ok(stored(None)), "slot 0 named a, which moved");
        assert_eq!(value(&store, &t, "a"), Some(7));
    }

    #[test]
    fn keys_stay_bounded_however_many_records_pass_through() {
        let mut store = MemoryStore::default();
        let t = table(&mut store);
        let keys = store.keys();
        for i in 0..1000u32 {
            t.put(
                &mut store,
                &format!("session-{i}"),
                &i.to_string(),
                if i % 3 == 0 { OTHER } else { RING },
                &never,
                0,
            )
            .unwrap();
            if i % 7 == 0 {
                t.remove(&mut store, &format!("session-{}", i / 2)).unwrap();
            }
        }
        let (slots, stamps) = (RING.capacity + OTHER.capacity, t.buckets);
        assert!(store.keys() <= keys + (slots + stamps) as usize, "{} keys", store.keys());
        assert!(t.count(&store) <= 5);
    }

    #[test]
    fn prepare_runs_once_per_size_and_leaves_records_alone() {
        let mut store = MemoryStore::default();
        let t = table(&mut store);
        t.put(&mut store, "a", "1", RING, &never, 0).unwrap();
        t.prepare(&mut store, &[RING, OTHER]);
        assert_eq!(value(&store, &t, "a"), Some(1));
        let bigger = Table::new("t/r", 100);
        bigger.prepare(&mut store, &[RING, OTHER]);
        let unstamped = store.scan("t/r/").filter(|(k, _)| !k.ends_with("/stamp"));
        assert_eq!(unstamped.count(), 25 + 1, "25 buckets and the ready mark");
    }

    #[test]
    fn every_change_to_a_bucket_changes_its_stamp_and_nothing_else_does() {
        let mut store = MemoryStore::default();
        let t = table(&mut store);
        let stamp = |store: &MemoryStore| store.get(&t.stamp("a"));
        assert_eq!(stamp(&store), (None, None), "no stamp before the first write");
        let mut last = None;
        let mut changed = |store: &MemoryStore| {
            let (value, cas) = stamp(store);
            assert_eq!(value, None, "a stamp is empty: reading it copies nothing");
            let changed = cas.is_some() && cas != last;
            last = cas;
            changed
        };
        t.put(&mut store, "a", "1", RING, &never, 0).unwrap();
        assert!(changed(&store), "stored");
        t.put(&mut store, "a", "2", RING, &never, 0).unwrap();
        assert!(changed(&store), "stored in place");
        assert_eq!(t.put(&mut store, "a", "3", RING, &|_| true, 0), Ok(Put::Kept));
        assert!(!changed(&store), "kept: the bucket is as it was");
        t.pin(&mut store, "a", "4", 10, 0).unwrap();
        assert!(changed(&store), "pinned");
        assert_eq!(t.remove(&mut store, "b"), Ok(false));
        assert!(!changed(&store), "nothing to remove");
        assert_eq!(t.remove(&mut store, "a"), Ok(true));
        assert!(changed(&store), "removed");
        // A record evicted from this bucket by a put into another.
        t.put(&mut store, "a", "5", RING, &never, 0).unwrap();
        changed(&store);
        let others = (0..).map(|n| format!("k{n}")).filter(|k| t.bucket(k) != t.bucket("a"));
        for key in others.take(RING.capacity as usize) {
            t.put(&mut store, &key, "6", RING, &never, 0).unwrap();
        }
        assert_eq!(t.get(&store, "a"), None, "evicted");
        assert!(changed(&store), "evicted");
    }

    #[test]
    fn a_record_to_keep_is_kept_in_either_ring() {
        let mut store = MemoryStore::default();
        let t = table(&mut store);
        t.put(&mut store, "a", "1", OTHER, &never, 0).unwrap();
        assert_eq!(t.put(&mut store, "a", "2", RING, &|v| v == "1", 0), Ok(Put::Kept));
        assert_eq!(t.put(&mut store, "a", "2", OTHER, &|v| v == "1", 0), Ok(Put::Kept));
        assert_eq!(value(&store, &t, "a"), Some(1));
        assert_eq!(t.put(&mut store, "a", "2", RING, &|v| v == "5", 0), Ok(stored(None)));
        assert_eq!(value(&store, &t, "a"), Some(2));
    }

    #[test]
    fn a_pinned_record_outlives_any_eviction_and_goes_after_its_time() {
        let mut store = MemoryStore::default();
        let t = table(&mut store);
        t.pin(&mut store, "p", "9", 1000, 0).unwrap();
        for i in 0..20u32 {
            t.put(&mut store, &format!("k{i}"), &i.to_string(), RING, &never, 10).unwrap();
        }
        assert_eq!(value(&store, &t, "p"), Some(9), "no ring evicts it");
        assert_eq!(t.put(&mut store, "p", "1", RING, &|v| v == "9", 999), Ok(Put::Kept));
        // After its time, the next write to its bucket drops it.
        assert!(matches!(t.put(&mut store, "p", "1", RING, &|v| v == "9", 1000), Ok(Put::Stored { .. })));
        assert_eq!(value(&store, &t, "p"), Some(1));
    }

    #[test]
    fn an_unreadable_bucket_is_empty_and_is_replaced() {
        let mut store = MemoryStore::default();
        let t = table(&mut store);
        let bucket = t.bucket("a");
        store.set(&bucket, Some(b"not json"), None).unwrap();
        assert_eq!(value(&store, &t, "a"), None);
        t.put(&mut store, "a", "1", RING, &never, 0).unwrap();
        assert_eq!(value(&store, &t, "a"), Some(1));
    }
}

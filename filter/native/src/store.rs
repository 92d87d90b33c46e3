//! The process-wide store every worker thread shares: the native build's Envoy shared data.
//!
//! One module instance serves every worker, so the store is a plain map behind locks. It is
//! sharded (the same FNV-1a hash the core uses for its buckets picks the shard) so that workers
//! touching different keys never wait on each other, and it keeps Envoy's shared-data semantics
//! exactly, as the core's [`SharedStore`] documents them and its `MemoryStore` models them: one
//! compare-and-swap token counter for the whole store, a new token on every write, the token
//! ignored for a key that does not exist yet (and when it is 0), an emptied key kept with its
//! token rather than removed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::core::shared::{fnv1a, SetError, SharedStore};

/// One shard: key -> (value, compare-and-swap token).
type Shard = HashMap<String, (Vec<u8>, u32)>;

/// How many shards: a power of two well above the worker count of any one Envoy.
const SHARDS: usize = 64;

/// The store (see the module's documentation).
#[derive(Debug)]
pub struct ShardedStore {
    shards: Vec<Mutex<Shard>>,
    last_cas: AtomicU32,
}

impl Default for ShardedStore {
    fn default() -> Self {
        ShardedStore { shards: (0..SHARDS).map(|_| Mutex::default()).collect(), last_cas: AtomicU32::new(0) }
    }
}

impl ShardedStore {
    /// The shard of `key`, locked. A lock a panicking thread left poisoned is taken over: the
    /// map is never left half-written (each write is one `insert`).
    fn shard(&self, key: &str) -> Option<MutexGuard<'_, Shard>> {
        let index = usize::try_from(fnv1a(key) % SHARDS as u64).ok()?;
        let shard = self.shards.get(index)?;
        Some(shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// A new token, never 0 (0 means "no check" to the host).
    fn next_cas(&self) -> u32 {
        loop {
            let cas = self.last_cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if cas != 0 {
                return cas;
            }
        }
    }

    /// The value of `key` and its token (see [`SharedStore::get`]).
    pub fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let Some(shard) = self.shard(key) else { return (None, None) };
        match shard.get(key) {
            Some((value, cas)) => ((!value.is_empty()).then(|| value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    /// Writes `key` if its token is still `cas` (see [`SharedStore::set`]): the check and the
    /// write happen under the shard's lock, so of two workers that read the same token only
    /// one writes.
    pub fn set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), SetError> {
        let mut shard = self.shard(key).ok_or(SetError::Refused)?;
        if let (Some(cas), Some((_, current))) = (cas, shard.get(key)) {
            if cas != 0 && cas != *current {
                return Err(SetError::CasMismatch);
            }
        }
        let token = self.next_cas();
        shard.insert(key.to_owned(), (value.unwrap_or_default().to_vec(), token));
        Ok(())
    }
}

/// The store as the core's [`SharedStore`], for one event.
#[derive(Debug, Clone, Copy)]
pub struct StoreHandle<'a>(pub &'a ShardedStore);

impl SharedStore for StoreHandle<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.0.get(key)
    }

    fn set(&mut self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), SetError> {
        self.0.set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::shared::{update, MemoryStore};

    #[test]
    fn an_emptied_key_stays_with_its_token() {
        let s = ShardedStore::default();
        s.set("k", Some(b"a"), None).unwrap();
        s.set("k", None, None).unwrap();
        let (value, cas) = s.get("k");
        assert_eq!(value, None);
        assert!(cas.is_some(), "the key is still there, with a token");
    }

    #[test]
    fn the_same_writes_give_the_same_answers_as_the_model_of_envoys_shared_data() {
        // Every outcome (value, missing, empty, mismatch) of a fixed script, against MemoryStore.
        let (sharded, mut model) = (ShardedStore::default(), MemoryStore::default());
        let mut tokens: Vec<(Option<u32>, Option<u32>)> = vec![(None, None)];
        let mut mismatches = 0;
        for step in 0u32..400 {
            let key = format!("k{}", step % 7);
            let value = (step % 5 != 0).then(|| step.to_le_bytes().to_vec());
            let pick = tokens.get(usize::try_from(step).unwrap_or(0) * 31 % tokens.len()).copied().unwrap_or_default();
            let (cas_s, cas_m) = if step % 3 == 0 { (None, None) } else { pick };
            let got = (sharded.set(&key, value.as_deref(), cas_s), model.set(&key, value.as_deref(), cas_m));
            assert_eq!(got.0, got.1, "step {step}");
            mismatches += usize::from(got.0 == Err(SetError::CasMismatch));
            let (read_s, read_m) = (sharded.get(&key), model.get(&key));
            assert_eq!(read_s.0, read_m.0, "step {step}");
            assert_eq!(read_s.1.is_some(), read_m.1.is_some(), "step {step}");
            assert_eq!(read_s.1, read_m.1, "the same tokens, from one counter for the whole store");
            tokens.push((read_s.1, read_m.1));
        }
        assert!(mismatches > 10, "the script tries stale tokens ({mismatches} refused)");
    }

    #[test]
    fn concurrent_read_modify_writes_lose_no_increment() {
        let store = Arc::new(ShardedStore::default());
        // As the core prepares every key it updates (`prepare`): a write to a key that does not
        // exist yet ignores its token, in Envoy's shared data and here, so two first writers
        // would both win.
        store.set("counter", Some(b"0"), None).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let mut done = 0;
                    while done < 500 {
                        let wrote = update(&mut StoreHandle(&store), "counter", |v| {
                            let n = v.and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok()).unwrap_or(0);
                            (Some((n + 1).to_string().into_bytes()), ())
                        });
                        if wrote.is_ok() {
                            done += 1;
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.get("counter").0.as_deref(), Some(&b"4000"[..]));
    }
}

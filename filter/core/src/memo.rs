//! A worker's bounded memo: what it worked out once and may answer again without the work, as
//! long as what the answer depends on has not changed (each user says what that is, and keys
//! or checks it).

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

/// At most `capacity` entries (0: none are kept); when full, the oldest inserted goes first.
/// Every value it holds was inserted by its user: it never answers a key it was not given.
///
/// Keys are hashed with `S`: the standard library's keyed hash unless the keys are already
/// hashes of their own.
#[derive(Debug, Clone)]
pub struct Memo<K, V, S = RandomState> {
    map: HashMap<K, V, S>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K, V, S: Default> Default for Memo<K, V, S> {
    fn default() -> Self {
        Memo { map: HashMap::default(), order: VecDeque::new(), capacity: 0 }
    }
}

impl<K: Eq + Hash + Clone, V, S: BuildHasher + Default> Memo<K, V, S> {
    /// A memo of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Memo { map: HashMap::default(), order: VecDeque::new(), capacity }
    }

    /// The value remembered for `key`.
    pub fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.map.get(key)
    }

    /// Remembers `value` for `key`, in place of any value it had (which keeps its age).
    pub fn insert(&mut self, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        if let Some(slot) = self.map.get_mut(&key) {
            *slot = value;
            return;
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.map.remove(&oldest);
                }
                None => break,
            }
        }
        self.order.push_back(key.clone());
        self.map.insert(key, value);
    }

    /// Forgets `key`.
    pub fn remove<Q: Eq + Hash + ?Sized>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
    {
        if self.map.remove(key).is_some() {
            self.order.retain(|k| k.borrow() != key);
        }
    }

    /// How many entries are remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn bounded_oldest_first_and_a_replaced_value_keeps_its_age() {
        let mut m: Memo<String, u32> = Memo::new(2);
        m.insert("a".into(), 1);
        m.insert("b".into(), 2);
        m.insert("a".into(), 3);
        assert_eq!((m.get("a"), m.len()), (Some(&3), 2));
        m.insert("c".into(), 4);
        assert_eq!((m.get("a"), m.get("b"), m.get("c")), (None, Some(&2), Some(&4)), "a was the oldest");
        m.remove("b");
        m.insert("d".into(), 5);
        assert_eq!((m.get("c"), m.get("d"), m.len()), (Some(&4), Some(&5), 2));
        let mut off: Memo<String, u32> = Memo::new(0);
        off.insert("a".into(), 1);
        assert!(off.is_empty());
    }
}

//! Shared data in memory, exactly as Envoy keeps it: for tests, the simulation and the CLI.

use std::collections::BTreeMap;

use super::{SetError, SharedStore};

/// An in-memory [`SharedStore`] with Envoy's semantics: one token counter for the whole store,
/// a new token on every write, the token ignored when the key is missing, and an emptied key
/// kept (with its token) rather than removed.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    map: BTreeMap<String, (Vec<u8>, u32)>,
    last_cas: u32,
    refuse_writes: bool,
}

impl MemoryStore {
    /// How many keys the store holds, emptied ones included (what the host's memory grows with).
    pub fn keys(&self) -> usize {
        self.map.len()
    }

    /// The bytes of every key and value held.
    pub fn bytes(&self) -> usize {
        self.map.iter().map(|(k, (v, _))| k.len() + v.len()).sum()
    }

    /// Every key that starts with `prefix`, with its value.
    pub fn scan<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.map
            .range(prefix.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| (k.as_str(), v.as_slice()))
    }

    /// Makes every later write fail with [`SetError::Refused`] (a host that takes none).
    pub fn refuse_writes(&mut self, refuse: bool) {
        self.refuse_writes = refuse;
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.map.get(key) {
            Some((value, cas)) => ((!value.is_empty()).then(|| value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&mut self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), SetError> {
        if self.refuse_writes {
            return Err(SetError::Refused);
        }
        if let (Some(cas), Some((_, current))) = (cas, self.map.get(key)) {
            if cas != 0 && cas != *current {
                return Err(SetError::CasMismatch);
            }
        }
        self.last_cas = self.last_cas.wrapping_add(1).max(1);
        self.map.insert(key.to_owned(), (value.unwrap_or_default().to_vec(), self.last_cas));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn a_stale_token_fails_and_a_missing_key_ignores_it() {
        let mut s = MemoryStore::default();
        assert_eq!(s.get("k"), (None, None));
        s.set("k", Some(b"a"), Some(12345)).unwrap();
        let (value, cas) = s.get("k");
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        s.set("k", Some(b"b"), cas).unwrap();
        assert_eq!(s.set("k", Some(b"c"), cas), Err(SetError::CasMismatch));
        assert_eq!(s.get("k").0.as_deref(), Some(&b"b"[..]));
        s.set("k", Some(b"d"), None).unwrap();
        assert_eq!(s.get("k").0.as_deref(), Some(&b"d"[..]));
    }

    #[test]
    fn an_emptied_key_stays_as_envoy_keeps_it() {
        let mut s = MemoryStore::default();
        s.set("k", Some(b"a"), None).unwrap();
        s.set("k", None, None).unwrap();
        let (value, cas) = s.get("k");
        assert_eq!(value, None);
        assert!(cas.is_some(), "the key is still there, with a token");
        assert_eq!(s.keys(), 1);
        s.refuse_writes(true);
        assert_eq!(s.set("j", Some(b"x"), None), Err(SetError::Refused));
    }
}

//! The store every worker of a VM sees: Envoy's shared data, behind [`SharedStore`], and what
//! the filter keeps in it.
//!
//! Shared data is a map of byte strings with a compare-and-swap token per key, and nothing
//! more: no expiry, no atomic create-if-absent, and no removal (Envoy keeps a key whose value
//! was "removed", empty, for the life of the process). So everything the filter stores lives
//! under a set of keys fixed by the configuration ([`table`], [`inflight`]), never one key per
//! session: a host that has seen a million sessions holds no more keys than one that has seen a
//! hundred.

pub mod inflight;
pub mod memory;
pub mod table;

pub use memory::MemoryStore;

/// Why a write was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// The key was written since the read whose token was given.
    CasMismatch,
    /// The host refused the write.
    Refused,
}

/// Shared data as proxy-wasm offers it.
///
/// - [`SharedStore::get`] returns the value (`None` for a missing or empty one) and the key's
///   compare-and-swap token (`None` for a missing key).
/// - [`SharedStore::set`] with a token fails with [`SetError::CasMismatch`] if the key was
///   written since; the token is ignored for a key that does not exist yet, and `None` writes
///   unconditionally. A `None` value empties the key; it does not remove it.
pub trait SharedStore {
    /// The value of `key` and its token.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `key`, if its token is still `cas`.
    fn set(&mut self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), SetError>;
}

/// How often a compare-and-swap is retried before giving up: contention is between a handful
/// of workers touching one key, so a few rounds suffice but for a pathological schedule.
pub const CAS_ROUNDS: usize = 16;

/// Why a read-modify-write was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwritten {
    /// Other workers wrote the key between each read and write, [`CAS_ROUNDS`] times.
    Contended,
    /// The host refused the write.
    Refused,
}

/// Applies `change` to the value of `key` with compare-and-swap, retrying on contention.
/// `change` returns what to write (`None`: nothing, the value is fine as it is) and a result.
pub fn update<S: SharedStore + ?Sized, T>(
    store: &mut S,
    key: &str,
    mut change: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Result<T, Unwritten> {
    let mut out = None;
    update_dyn(store, key, &mut |value| {
        let (write, result) = change(value);
        out = Some(result);
        write
    })?;
    out.ok_or(Unwritten::Contended)
}

/// What [`update_dyn`] writes for a value read (`None`: nothing).
type Change<'a> = dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + 'a;

/// The loop of [`update`], compiled once rather than once per caller: the filter is kept small.
fn update_dyn<S: SharedStore + ?Sized>(store: &mut S, key: &str, change: &mut Change<'_>) -> Result<(), Unwritten> {
    for _ in 0..CAS_ROUNDS {
        let (value, cas) = store.get(key);
        let Some(write) = change(value.as_deref()) else { return Ok(()) };
        match store.set(key, Some(&write), cas) {
            Ok(()) => return Ok(()),
            Err(SetError::CasMismatch) => continue,
            Err(SetError::Refused) => return Err(Unwritten::Refused),
        }
    }
    Err(Unwritten::Contended)
}

/// [`update`], and if the key stays contended, one read-modify-write without compare-and-swap:
/// for a write that must land (a logout), at the cost of whatever another worker wrote to the
/// key in between (records the cache loses are fetched again).
pub fn update_or_force<S: SharedStore + ?Sized, T>(
    store: &mut S,
    key: &str,
    mut change: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Result<T, Unwritten> {
    match update(store, key, &mut change) {
        Err(Unwritten::Contended) => {
            let (value, _) = store.get(key);
            let (write, out) = change(value.as_deref());
            match write.map(|w| store.set(key, Some(&w), None)) {
                Some(Err(_)) => Err(Unwritten::Refused),
                _ => Ok(out),
            }
        }
        done => done,
    }
}

/// FNV-1a: the same bucket or stripe for a key in every worker and every build.
pub fn fnv1a(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

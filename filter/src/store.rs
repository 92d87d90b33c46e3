//! The session cache in Envoy's shared data: one store for all workers of a VM id.
//!
//! Keys: `pg1/s/<session key>` (a [`SessionRecord`]), `pg1/f/<stripe>` (in-flight marks), and
//! for each eviction ring ([`Ring`]: valid sessions, invalid-session answers) `<ring>/<n>`
//! (which session holds slot n) and `<ring>/head` (how many sessions were ever stored in it),
//! the rings being `pg1/slot` and `pg1/nslot`. Shared data has no expiry, so every write that
//! adds a session to a ring also evicts the one that held its slot: the store never holds more
//! than `max_entries` valid sessions and `max_negative_entries` invalid ones.
//!
//! Looked-up ids live beside them: `pg1/l/<kind>/<id>` (a [`LookupRecord`]) in the ring
//! `pg1/lslot` of `resolver.max_entries`, and their in-flight marks in the same stripes, under
//! [`lookup_claim_key`] (a name no session key has).

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use crate::core::lookup::{LookupKey, LookupRecord, Resolver};
use crate::core::path::PlaybookPath;
use crate::core::session::{slot_for, stripe_of, Claim, Mark, Ring, SessionRecord, Stripe, STRIPES};
use crate::core::validation::Validator;
use crate::core::SessionEntry;

/// How often a compare-and-swap is retried before giving up (contention is between a handful
/// of workers touching one stripe, so a few rounds always suffice in practice).
const CAS_ROUNDS: usize = 16;

fn session_key(key: &str) -> String {
    format!("pg1/s/{key}")
}

fn get(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

/// The cached record of a session.
pub fn session(key: &str) -> Option<SessionRecord> {
    get(&session_key(key)).0.as_deref().and_then(SessionRecord::decode)
}

/// Where a ring's slots and counter live.
fn ring_prefix(ring: Ring) -> &'static str {
    match ring {
        Ring::Valid => "pg1/slot",
        Ring::Invalid => "pg1/nslot",
    }
}

/// Stores a fresh answer, taking an eviction slot in its ring if the session is not there yet
/// (new, or moving between valid and invalid). Returns the session evicted to make room, and
/// the ring it was evicted from.
pub fn put_session(key: &str, entry: SessionEntry, v: &Validator) -> Option<(String, Ring)> {
    let skey = session_key(key);
    let ring = Ring::of(&entry);
    if let Some(existing) = session(key).filter(|r| Ring::of(&r.entry) == ring) {
        let record = SessionRecord { entry, slot: existing.slot };
        let _ = hostcalls::set_shared_data(&skey, Some(&record.encode()), None);
        return None;
    }
    let prefix = ring_prefix(ring);
    let slot = slot_for(next_counter(&format!("{prefix}/head")), ring.capacity(&v.cache));
    let slot_key = format!("{prefix}/{slot}");
    let mut evicted = None;
    if let Some(victim) = get(&slot_key).0.and_then(|v| String::from_utf8(v).ok()) {
        // Only evict the victim if it still holds this slot of this ring (it may have been
        // evicted and stored again since, into another slot, or moved to the other ring; the
        // slot it left there still names it).
        if victim != key && session(&victim).is_some_and(|r| r.slot == slot && Ring::of(&r.entry) == ring) {
            remove_session(&victim);
            evicted = Some((victim, ring));
        }
    }
    let _ = hostcalls::set_shared_data(&slot_key, Some(key.as_bytes()), None);
    let record = SessionRecord { entry, slot };
    let _ = hostcalls::set_shared_data(&skey, Some(&record.encode()), None);
    evicted
}

/// The in-flight mark's key of a lookup: session keys start with a provider name or
/// `opaque`, never with a space.
pub fn lookup_claim_key(key: &LookupKey) -> String {
    format!(" lookup/{}", key.cache_key())
}

fn lookup_key(key: &LookupKey) -> String {
    format!("pg1/l/{}", key.cache_key())
}

const LOOKUP_RING: &str = "pg1/lslot";

/// The stored answer of a lookup.
pub fn lookup(key: &LookupKey) -> Option<LookupRecord> {
    get(&lookup_key(key)).0.as_deref().and_then(LookupRecord::decode)
}

/// Stores a lookup's answer in the next slot of the lookup ring, evicting the answer that held
/// it (returned) if it still does.
pub fn put_lookup(key: &LookupKey, path: &PlaybookPath, now_ms: u64, r: &Resolver) -> Option<String> {
    let slot = slot_for(next_counter(&format!("{LOOKUP_RING}/head")), r.max_entries());
    let slot_key = format!("{LOOKUP_RING}/{slot}");
    let own = lookup_key(key);
    let mut evicted = None;
    if let Some(victim) = get(&slot_key).0.and_then(|v| String::from_utf8(v).ok()) {
        let holds = |v: &str| get(v).0.as_deref().and_then(LookupRecord::decode).is_some_and(|rec| rec.slot == slot);
        if victim != own && holds(&victim) {
            let _ = hostcalls::set_shared_data(&victim, None, None);
            evicted = Some(victim);
        }
    }
    let _ = hostcalls::set_shared_data(&slot_key, Some(own.as_bytes()), None);
    let record = LookupRecord { path: path.as_str().to_owned(), fetched_at_ms: now_ms, slot };
    let _ = hostcalls::set_shared_data(&own, Some(&record.encode()), None);
    evicted
}

/// Forgets a session (logout, eviction).
pub fn remove_session(key: &str) {
    let _ = hostcalls::set_shared_data(&session_key(key), None, None);
}

/// Creates the in-flight stripes and the eviction counter where they are missing.
///
/// Compare-and-swap guards only keys that exist: a write to a missing key succeeds whatever
/// its cas, so two workers creating one stripe at once could both claim the same session.
/// Envoy configures a plugin on the main thread (its configuration canary) before any worker
/// serves a request, so creating every key here leaves no such moment. Keys that exist are
/// left alone: a late worker, or a configuration update, must not wipe claims in flight.
pub fn prepare() {
    let stripes = (0..STRIPES).map(|n| (format!("pg1/f/{n}"), Stripe::default().encode()));
    let heads = [ring_prefix(Ring::Valid), ring_prefix(Ring::Invalid), LOOKUP_RING]
        .map(|prefix| (format!("{prefix}/head"), b"0".to_vec()));
    for (key, empty) in stripes.chain(heads) {
        if get(&key).0.is_none() {
            let _ = hostcalls::set_shared_data(&key, Some(&empty), None);
        }
    }
}

/// Takes the next number of a ring's counter at `key`.
fn next_counter(key: &str) -> u64 {
    for _ in 0..CAS_ROUNDS {
        let (value, cas) = get(key);
        let n = value.and_then(|v| String::from_utf8(v).ok()).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        match hostcalls::set_shared_data(key, Some((n + 1).to_string().as_bytes()), cas) {
            Ok(()) => return n,
            Err(Status::CasMismatch) => continue,
            Err(_) => break,
        }
    }
    warn!("session cache: eviction counter contended; reusing slot 0");
    0
}

/// Why a stripe was not changed.
enum Unwritten {
    /// Other workers changed it between each read and write, `CAS_ROUNDS` times.
    Contended,
    /// The host refused the write.
    Refused,
}

/// Applies `change` to `key`'s stripe with compare-and-swap, returning what it returned.
fn with_stripe<T>(key: &str, mut change: impl FnMut(&mut Stripe) -> T) -> Result<T, Unwritten> {
    let stripe_key = format!("pg1/f/{}", stripe_of(key));
    for _ in 0..CAS_ROUNDS {
        let (value, cas) = get(&stripe_key);
        let mut stripe = value.as_deref().map(Stripe::decode).unwrap_or_default();
        let out = change(&mut stripe);
        // A stripe seen absent (only if shared data was cleared behind the filter's back, see
        // `prepare`) has no cas to compare; the write then creates it.
        match hostcalls::set_shared_data(&stripe_key, Some(&stripe.encode()), cas) {
            Ok(()) => return Ok(out),
            Err(Status::CasMismatch) => continue,
            Err(_) => return Err(Unwritten::Refused),
        }
    }
    warn!("session cache: in-flight stripe for {key} stayed contended");
    Err(Unwritten::Contended)
}

/// Claims the callout for `key` until `until_ms`.
pub fn claim(key: &str, now_ms: u64, until_ms: u64) -> Claim {
    match with_stripe(key, |s| s.claim(key, now_ms, until_ms)) {
        Ok(claim) => claim,
        // Without its mark, the owner's answer could not be told from one a logout overtook,
        // so it would not be kept: wait for the next tick and claim again instead.
        Err(Unwritten::Contended) => Claim::Busy { until_ms: now_ms },
        // A store that takes no writes keeps nothing anyway: behaving as the owner keeps
        // requests moving, at the cost of a callout per request.
        Err(Unwritten::Refused) => Claim::Claimed,
    }
}

/// Ends `key`'s callout; on failure, leaves a mark until `failed_until_ms`.
pub fn finish(key: &str, now_ms: u64, failed_until_ms: Option<u64>) {
    let _ = with_stripe(key, |s| s.finish(key, now_ms, failed_until_ms));
}

/// The live in-flight mark of `key`.
pub fn mark(key: &str, now_ms: u64) -> Option<Mark> {
    let (value, _) = get(&format!("pg1/f/{}", stripe_of(key)));
    value.as_deref().map(Stripe::decode).and_then(|s| s.mark(key, now_ms))
}

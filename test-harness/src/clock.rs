//! The virtual clock: the only time the filter sees, moved by the test.
//!
//! `proxy_get_current_time_nanoseconds` and WASI `clock_time_get` both read it, so a test controls
//! token expiry and cache freshness exactly, and a run never depends on the machine's clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2026-01-15T09:00:00Z: a fixed, documented starting point for every harness.
pub const DEFAULT_START_SECS: u64 = 1_768_467_600;

/// A clock shared by all VMs of one [`Host`](crate::Host); cheap to clone (all clones tick together).
#[derive(Debug, Clone)]
pub struct VirtualClock {
    nanos: Arc<AtomicU64>,
}

impl Default for VirtualClock {
    fn default() -> Self {
        Self::at_unix_secs(DEFAULT_START_SECS)
    }
}

impl VirtualClock {
    /// A clock reading `secs` seconds after the Unix epoch.
    #[must_use]
    pub fn at_unix_secs(secs: u64) -> Self {
        VirtualClock { nanos: Arc::new(AtomicU64::new(secs.saturating_mul(1_000_000_000))) }
    }

    /// Nanoseconds since the Unix epoch.
    #[must_use]
    pub fn now_nanos(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }

    /// Whole seconds since the Unix epoch (what JWT `exp`/`nbf` compare against).
    #[must_use]
    pub fn now_secs(&self) -> u64 {
        self.now_nanos() / 1_000_000_000
    }

    /// The current virtual time as a `SystemTime`.
    #[must_use]
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.now_nanos())
    }

    /// Moves the clock to `secs` seconds after the Unix epoch (backwards too, for skew tests).
    pub fn set_unix_secs(&self, secs: u64) {
        self.nanos.store(secs.saturating_mul(1_000_000_000), Ordering::SeqCst);
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // fetch_update never fails when the closure always returns Some.
        let _ = self.nanos.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| Some(n.saturating_add(by)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_time() {
        let a = VirtualClock::at_unix_secs(100);
        let b = a.clone();
        a.advance(Duration::from_millis(1500));
        assert_eq!(b.now_nanos(), 101_500_000_000);
        assert_eq!(b.now_secs(), 101);
        b.set_unix_secs(7);
        assert_eq!(a.now(), UNIX_EPOCH + Duration::from_secs(7));
    }
}

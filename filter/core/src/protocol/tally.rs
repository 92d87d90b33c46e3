//! The stats of remembered allows, counted a window at a time when the host asks for it.
//!
//! On a proxy-wasm host each counter increment is a host call, about a thousand instructions of
//! Envoy and V8 before it adds anything; a remembered allow counts three stats (`allowed` and the
//! grant's, such as `cache_hits` and `tokens_jwt`), a third of what it costs above the Wasm floor.
//! With a window ([`Worker::count_in_windows`](super::Worker::count_in_windows)), the first
//! remembered allow counts its stats at once and opens the window; the ones after it within the
//! window are added up here and counted by the tick that closes it, one increment per stat. A
//! client that sends one request at a time sees each one counted when it is answered; under load,
//! a count reaches the stats at most a window (plus the host's timer delay) after its request.

use super::hits::Grant;
use super::Stat;

/// The remembered allows counted at the end of their window.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// 0: every allow is counted at once.
    window_ms: u64,
    /// The end of the window the latest counted-at-once allow opened.
    until_ms: u64,
    /// Per [`Stat::index`]; empty until something waits.
    pending: Vec<u64>,
}

impl Tally {
    pub(super) fn new(window_ms: u64) -> Self {
        Tally { window_ms, ..Tally::default() }
    }

    pub(super) fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Whether the host counts the allow of `grant` at `now_ms` now; if not, it waits here.
    pub(super) fn admit(&mut self, now_ms: u64, grant: &Grant) -> bool {
        if self.window_ms == 0 || now_ms >= self.until_ms {
            self.until_ms = now_ms.saturating_add(self.window_ms);
            return true;
        }
        if self.pending.is_empty() {
            self.pending = vec![0; Stat::ALL.len()];
        }
        for stat in grant.stats() {
            if let Some(n) = self.pending.get_mut(stat.index()) {
                *n = n.saturating_add(1);
            }
        }
        false
    }

    /// When the waiting counts are due, if any wait.
    pub(super) fn due_ms(&self) -> Option<u64> {
        (!self.pending.is_empty()).then_some(self.until_ms)
    }

    /// The waiting counts, each stat once; nothing waits afterwards.
    pub(super) fn take(&mut self) -> impl Iterator<Item = (Stat, u64)> {
        let pending = std::mem::take(&mut self.pending);
        Stat::ALL.iter().zip(pending).filter(|&(_, n)| n > 0).map(|(&stat, n)| (stat, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant { headers: Vec::new(), counts: vec![Stat::CacheHits, Stat::TokensJwt] }
    }

    #[test]
    fn without_a_window_every_allow_is_counted_at_once() {
        let mut tally = Tally::default();
        assert!((0..3).all(|_| tally.admit(1_000, &grant())));
        assert_eq!(tally.due_ms(), None);
    }

    #[test]
    fn allows_within_a_window_wait_for_its_end_and_count_once_per_stat() {
        let mut tally = Tally::new(2);
        assert!(tally.admit(1_000, &grant()), "the first opens the window, counted at once");
        assert!(!tally.admit(1_000, &grant()));
        assert!(!tally.admit(1_001, &grant()));
        assert_eq!(tally.due_ms(), Some(1_002));
        let counted: Vec<_> = tally.take().collect();
        assert_eq!(counted, [(Stat::Allowed, 2), (Stat::CacheHits, 2), (Stat::TokensJwt, 2)]);
        assert_eq!(tally.due_ms(), None, "nothing waits once taken");
        assert!(tally.admit(1_002, &grant()), "the window has ended: a new one opens");
    }
}

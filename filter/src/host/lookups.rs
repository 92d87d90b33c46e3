//! Looking up the ids requests name (`catalog_id`, `execution_id`) through the `resolver`:
//! one lookup per id across workers, as for sessions (the same in-flight stripes), and the
//! answers kept in shared data for every worker.

use std::time::Duration;

use log::{debug, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType};

use super::{not_sent, response_status, Driver, State, CLAIM_GRACE_MS, FAILURE_BACKOFF_MS};
use crate::core::lookup::{LookupFailure, LookupKey};
use crate::core::path::PlaybookPath;
use crate::core::session::{Claim, Mark};
use crate::core::Pending;
use crate::metrics::Metrics;
use crate::store;

/// A lookup this worker sent.
#[derive(Debug)]
pub(super) struct LookupCallout {
    key: LookupKey,
    owner: u32,
}

impl LookupCallout {
    /// Whether request `ctx` sent it.
    pub(super) fn owned_by(&self, ctx: u32) -> bool {
        self.owner == ctx
    }

    /// The in-flight mark it holds.
    pub(super) fn claim_key(&self) -> String {
        store::lookup_claim_key(&self.key)
    }
}

type Answer<'a> = Result<&'a PlaybookPath, &'a LookupFailure>;

impl Driver<'_> {
    /// Goes on with `key`'s cached answer, or claims its lookup, or waits for whoever holds it.
    pub(super) fn resolve(&self, ctx: u32, key: LookupKey, pending: Pending, now_ms: u64) -> Action {
        if let Some(path) = self.cached(&key, now_ms) {
            Metrics::bump(self.metrics.lookup_hits);
            return self.advance(ctx, self.guard.on_lookup(pending, &key, Ok(path)), now_ms);
        }
        let timeout_ms = self.guard.resolver().map_or(0, |r| r.timeout_ms());
        let until_ms = now_ms + timeout_ms + CLAIM_GRACE_MS;
        let claim_key = store::lookup_claim_key(&key);
        let local = self.worker.with(|w| w.lookups.values().any(|c| c.key == key)).unwrap_or(false);
        let claim = if local { Claim::Busy { until_ms } } else { store::claim(&claim_key, now_ms, until_ms) };
        match claim {
            Claim::Claimed => {
                // As for sessions: the last owner may have stored its answer and let go between
                // the read that missed and this claim.
                if let Some(path) = self.cached(&key, now_ms) {
                    store::finish(&claim_key, now_ms, None);
                    return self.advance(ctx, self.guard.on_lookup(pending, &key, Ok(path)), now_ms);
                }
                self.send_lookup(ctx, key, pending, now_ms)
            }
            Claim::Busy { .. } => {
                Metrics::bump(self.metrics.lookup_waits);
                self.worker.with(|worker| {
                    if let Some(r) = worker.requests.get_mut(&ctx) {
                        r.state = State::Resolving { key, pending };
                    }
                    worker.lookup_waiting.entry(key).or_default().push(ctx);
                });
                self.retick();
                Action::Pause
            }
            Claim::RecentlyFailed => {
                let failure = LookupFailure::Unavailable("a lookup of this id failed a moment ago".into());
                self.advance(ctx, self.guard.on_lookup(pending, &key, Err(failure)), now_ms)
            }
        }
    }

    fn cached(&self, key: &LookupKey, now_ms: u64) -> Option<PlaybookPath> {
        let resolver = self.guard.resolver()?;
        store::lookup(key).and_then(|record| record.fresh_path(resolver, now_ms))
    }

    fn send_lookup(&self, ctx: u32, key: LookupKey, pending: Pending, now_ms: u64) -> Action {
        let allowed =
            self.worker.with(|w| w.lookup_allowance.as_mut().is_none_or(|b| b.try_take(now_ms))) != Some(false);
        let Some(req) = self.guard.lookup(&key).filter(|_| allowed) else {
            // Let the claim go: another request for this id may find an allowance.
            store::finish(&store::lookup_claim_key(&key), now_ms, None);
            Metrics::bump(self.metrics.lookups_limited);
            return self.advance(ctx, self.guard.on_lookup(pending, &key, Err(LookupFailure::Limited)), now_ms);
        };
        Metrics::bump(self.metrics.lookups);
        let headers: Vec<(&str, &str)> = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let body = (!req.body.is_empty()).then_some(req.body.as_slice());
        let timeout = Duration::from_millis(req.timeout_ms);
        match hostcalls::dispatch_http_call(&req.cluster, headers, body, Vec::new(), timeout) {
            Ok(token) => {
                self.worker.with(|worker| {
                    worker.lookups.insert(token, LookupCallout { key, owner: ctx });
                    if let Some(r) = worker.requests.get_mut(&ctx) {
                        r.state = State::Resolving { key, pending };
                    }
                });
                Action::Pause
            }
            Err(status) => {
                let failure = LookupFailure::Unavailable(not_sent(status, &req.cluster));
                self.lookup_failed(&key, &failure, now_ms);
                let action = self.advance(ctx, self.guard.on_lookup(pending, &key, Err(failure.clone())), now_ms);
                self.wake_lookup(&key, Err(&failure), now_ms);
                action
            }
        }
    }

    fn lookup_failed(&self, key: &LookupKey, failure: &LookupFailure, now_ms: u64) {
        Metrics::bump(self.metrics.lookup_failures);
        warn!("{key}: lookup failed: {failure}");
        store::finish(&store::lookup_claim_key(key), now_ms, Some(now_ms + FAILURE_BACKOFF_MS));
    }

    /// Reads a lookup's answer, keeps it for every worker, and resumes the requests of this
    /// worker that wait for it.
    pub(super) fn on_lookup_response(&self, callout: LookupCallout, num_headers: usize, body_size: usize, now_ms: u64) {
        let status = response_status(num_headers);
        let body =
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
        let key = callout.key;
        let answer = self.guard.read_lookup(&key, status, &body);
        match (&answer, self.guard.resolver()) {
            (Ok(path), Some(resolver)) => {
                if let Some(evicted) = store::put_lookup(&key, path, now_ms, resolver) {
                    Metrics::bump(self.metrics.lookups_evicted);
                    debug!("{evicted} evicted to make room");
                }
                store::finish(&callout.claim_key(), now_ms, None);
            }
            // An answer, not a failure: nothing to back off from. Not kept, since the id may
            // yet be created; `max_lookups_per_sec` bounds how often unknown ids are asked.
            (Err(LookupFailure::NotFound), _) => store::finish(&callout.claim_key(), now_ms, None),
            (Err(failure), _) => self.lookup_failed(&key, failure, now_ms),
            (Ok(_), None) => {}
        }
        self.resume_lookup(callout.owner, &key, answer.as_ref(), now_ms);
        self.wake_lookup(&key, answer.as_ref(), now_ms);
    }

    /// Resumes every request of this worker waiting for `key`.
    fn wake_lookup(&self, key: &LookupKey, answer: Answer<'_>, now_ms: u64) {
        let waiters = self.worker.with(|w| w.lookup_waiting.remove(key)).flatten().unwrap_or_default();
        for ctx in waiters {
            self.resume_lookup(ctx, key, answer, now_ms);
        }
    }

    fn resume_lookup(&self, ctx: u32, key: &LookupKey, answer: Answer<'_>, now_ms: u64) {
        self.carry_on(
            ctx,
            |state| state.take_lookup_wait(key),
            |pending| {
                let answer = answer.cloned().map_err(LookupFailure::clone);
                self.advance(ctx, self.guard.on_lookup(pending, key, answer), now_ms)
            },
        );
    }

    /// Looks for answers to lookups other workers own, and takes over from owners that did not
    /// answer in time.
    pub(super) fn tick_lookups(&self, now_ms: u64) {
        let keys: Vec<LookupKey> = self.worker.with(|w| w.lookup_waiting.keys().copied().collect()).unwrap_or_default();
        for key in keys {
            if let Some(path) = self.cached(&key, now_ms) {
                self.wake_lookup(&key, Ok(&path), now_ms);
                continue;
            }
            match store::mark(&store::lookup_claim_key(&key), now_ms) {
                Some(Mark::Fetching { .. }) => {}
                Some(Mark::Failed { .. }) => {
                    let failure = LookupFailure::Unavailable("the lookup failed on another worker".into());
                    self.wake_lookup(&key, Err(&failure), now_ms);
                }
                // The owner let go without an answer to keep (NoETL has no such id, or it died):
                // one waiter asks again.
                None => {
                    let next = self
                        .worker
                        .with(|worker| {
                            let waiters = worker.lookup_waiting.entry(key).or_default();
                            let ctx = (!waiters.is_empty()).then(|| waiters.remove(0));
                            if waiters.is_empty() {
                                worker.lookup_waiting.remove(&key);
                            }
                            ctx
                        })
                        .flatten();
                    if let Some(ctx) = next {
                        self.carry_on(
                            ctx,
                            |state| state.take_lookup_wait(&key),
                            |pending| self.resolve(ctx, key, pending, now_ms),
                        );
                    }
                }
            }
        }
    }
}

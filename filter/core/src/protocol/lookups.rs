//! Lookups of the ids requests name (`catalog_id`, `execution_id`) through the `resolver`: one
//! lookup per id across workers, as for sessions (the same in-flight stripes), and the answers
//! kept in shared data for every worker.

use log::{debug, warn};

use super::{Call, Ctx, RequestId, Stat, Wait, Worker, CLAIM_GRACE_MS, FAILURE_BACKOFF_MS};
use crate::guard::Pending;
use crate::lookup::{LookupFailure, LookupKey};
use crate::path::PlaybookPath;
use crate::shared::inflight::{self, Claim, Mark};
use crate::shared::SharedStore;

/// What a lookup came back with.
type Outcome<'a> = Result<&'a PlaybookPath, &'a LookupFailure>;

/// The in-flight mark's key of a lookup: session keys start with a provider name or `opaque`,
/// never with a space.
pub(super) fn claim_key(key: &LookupKey) -> String {
    format!(" lookup/{}", key.cache_key())
}

impl Worker {
    /// Goes on with `key`'s cached answer, or claims its lookup, or waits for whoever holds it.
    pub(super) fn resolve<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        req: RequestId,
        key: LookupKey,
        pending: Pending,
    ) {
        if let Some(path) = cached(ctx, &key) {
            self.count(Stat::LookupHits, 1);
            let step = ctx.guard.on_lookup(pending, &key, Ok(path));
            return self.advance(ctx, req, step);
        }
        let timeout_ms = ctx.guard.resolver().map_or(0, |r| r.timeout_ms());
        let until_ms = ctx.now_ms + timeout_ms + CLAIM_GRACE_MS;
        let claim = claim_key(&key);
        let local = self.calls.values().any(|c| matches!(c, Call::Lookup { key: k, .. } if *k == key));
        let outcome =
            if local { Claim::Busy { until_ms } } else { inflight::claim(ctx.store, &claim, ctx.now_ms, until_ms) };
        match outcome {
            Claim::Claimed => {
                // As for sessions: the last owner may have stored its answer and let go between
                // the read that missed and this claim.
                if let Some(path) = cached(ctx, &key) {
                    inflight::finish(ctx.store, &claim, ctx.now_ms, None);
                    let step = ctx.guard.on_lookup(pending, &key, Ok(path));
                    return self.advance(ctx, req, step);
                }
                self.send_lookup(ctx, req, key, pending);
            }
            Claim::Busy { .. } => {
                self.count(Stat::LookupWaits, 1);
                self.set_wait(req, Wait::Lookup { key, pending });
                self.lookup_waiting.entry(key).or_default().push(req);
            }
            Claim::RecentlyFailed => {
                let failure = LookupFailure::Unavailable("a lookup of this id failed a moment ago".into());
                let step = ctx.guard.on_lookup(pending, &key, Err(failure));
                self.advance(ctx, req, step);
            }
        }
    }

    fn send_lookup<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        req: RequestId,
        key: LookupKey,
        pending: Pending,
    ) {
        let allowed = self.lookup_allowance.as_mut().is_none_or(|b| b.try_take(ctx.now_ms));
        let Some(request) = ctx.guard.lookup(&key).filter(|_| allowed) else {
            // Let the claim go: another request for this id may find an allowance.
            inflight::finish(ctx.store, &claim_key(&key), ctx.now_ms, None);
            self.count(Stat::LookupsLimited, 1);
            let step = ctx.guard.on_lookup(pending, &key, Err(LookupFailure::Limited));
            return self.advance(ctx, req, step);
        };
        self.count(Stat::Lookups, 1);
        self.set_wait(req, Wait::Lookup { key, pending });
        self.call(Call::Lookup { key, owner: req }, Some(req), request);
    }

    pub(super) fn lookup_not_sent<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        key: LookupKey,
        owner: RequestId,
        why: String,
    ) {
        let failure = LookupFailure::Unavailable(why);
        self.lookup_failed(ctx, &key, &failure);
        self.resume_lookup(ctx, owner, &key, Err(&failure));
        self.wake_lookup(ctx, &key, Err(&failure));
    }

    fn lookup_failed<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        key: &LookupKey,
        failure: &LookupFailure,
    ) {
        self.count(Stat::LookupFailures, 1);
        warn!("{key}: lookup failed: {failure}");
        inflight::finish(ctx.store, &claim_key(key), ctx.now_ms, Some(ctx.now_ms + FAILURE_BACKOFF_MS));
    }

    /// Reads a lookup's answer, keeps it for every worker, and resumes the requests of this
    /// worker that wait for it.
    pub(super) fn lookup_answer<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        key: LookupKey,
        owner: RequestId,
        status: Option<u32>,
        body: &[u8],
    ) {
        let answer = ctx.guard.read_lookup(&key, status, body);
        match (&answer, ctx.lookups()) {
            (Ok(path), Some((_, cache))) => {
                if let Ok(Some(evicted)) = cache.put(ctx.store, &key, path, ctx.now_ms) {
                    self.count(Stat::LookupsEvicted, 1);
                    debug!("{evicted} evicted to make room");
                }
                inflight::finish(ctx.store, &claim_key(&key), ctx.now_ms, None);
            }
            // An answer, not a failure: nothing to back off from. Not kept, since the id may
            // yet be created; `max_lookups_per_sec` bounds how often unknown ids are asked.
            (Err(LookupFailure::NotFound), _) => inflight::finish(ctx.store, &claim_key(&key), ctx.now_ms, None),
            (Err(failure), _) => self.lookup_failed(ctx, &key, failure),
            (Ok(_), None) => {}
        }
        self.resume_lookup(ctx, owner, &key, answer.as_ref());
        self.wake_lookup(ctx, &key, answer.as_ref());
    }

    /// Resumes every request of this worker waiting for `key`.
    fn wake_lookup<S: SharedStore + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>, key: &LookupKey, outcome: Outcome<'_>) {
        for req in self.lookup_waiting.remove(key).unwrap_or_default() {
            self.resume_lookup(ctx, req, key, outcome);
        }
    }

    fn resume_lookup<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        req: RequestId,
        key: &LookupKey,
        outcome: Outcome<'_>,
    ) {
        let Some(pending) = self.requests.get_mut(&req).and_then(|r| r.wait.take_lookup(key)) else { return };
        let step = ctx.guard.on_lookup(pending, key, outcome.cloned().map_err(LookupFailure::clone));
        self.advance(ctx, req, step);
    }

    /// Looks for answers to lookups other workers own, and takes over from owners that did not
    /// answer in time.
    pub(super) fn tick_lookups<S: SharedStore + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>) {
        let keys: Vec<LookupKey> = self.lookup_waiting.keys().copied().collect();
        for key in keys {
            if let Some(path) = cached(ctx, &key) {
                self.wake_lookup(ctx, &key, Ok(&path));
                continue;
            }
            match inflight::mark(&*ctx.store, &claim_key(&key), ctx.now_ms) {
                Some(Mark::Fetching { .. }) => {}
                Some(Mark::Failed { .. }) => {
                    let failure = LookupFailure::Unavailable("the lookup failed on another worker".into());
                    self.wake_lookup(ctx, &key, Err(&failure));
                }
                // The owner let go without an answer to keep (NoETL has no such id, or it died):
                // one waiter asks again.
                None => {
                    let waiters = self.lookup_waiting.entry(key).or_default();
                    let next = (!waiters.is_empty()).then(|| waiters.remove(0));
                    if waiters.is_empty() {
                        self.lookup_waiting.remove(&key);
                    }
                    let pending =
                        next.and_then(|req| Some((req, self.requests.get_mut(&req)?.wait.take_lookup(&key)?)));
                    if let Some((req, pending)) = pending {
                        self.resolve(ctx, req, key, pending);
                    }
                }
            }
        }
    }
}

fn cached<S: SharedStore + ?Sized>(ctx: &Ctx<'_, S>, key: &LookupKey) -> Option<PlaybookPath> {
    let (resolver, cache) = ctx.lookups()?;
    cache.get(&*ctx.store, resolver, key, ctx.now_ms)
}

//! Sessions: the cache first, then one callout per session across workers; every request that
//! needs the same session waits for that one answer.

use log::{debug, warn};

use super::{short, Call, Ctx, RequestId, Stat, Wait, Worker, CLAIM_GRACE_MS, FAILURE_BACKOFF_MS};
use crate::guard::{Pending, SessionStep};
use crate::session::{Ring, SessionEntry, Stored};
use crate::shared::inflight::{self, Claim, Mark};
use crate::shared::SharedStore;
use crate::validation::CalloutFailure;

/// What a callout came back with.
type Outcome<'a> = Result<&'a SessionEntry, &'a CalloutFailure>;

impl Worker {
    /// Goes on from the session's cache entry, or refreshes it.
    pub(super) fn session<S: SharedStore + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>, req: RequestId, pending: Pending) {
        let memo = &mut self.session_memo;
        let key = pending.session_key().to_owned();
        let cached = ctx.sessions().and_then(|(_, cache)| cache.get_memoized(&*ctx.store, &key, memo));
        match ctx.guard.on_session(pending, cached.as_deref(), ctx.now_ms) {
            SessionStep::Hit(step) => {
                // A remembered allow rests on this entry: while it is fresh, and while its
                // bucket's stamp is the version read now.
                if let Some((_, rec)) = &mut self.recording {
                    let version = self.session_memo.version(&key);
                    let fresh_until =
                        ctx.sessions().zip(cached.as_deref()).map(|((v, _), e)| e.fresh_until_ms(&v.cache));
                    match (version, fresh_until) {
                        (Some(version), Some(until)) => {
                            rec.session = Some(version);
                            rec.until_ms = rec.until_ms.min(until);
                        }
                        _ => rec.spoiled = true,
                    }
                }
                self.count(Stat::CacheHits, 1);
                self.advance(ctx, req, step);
            }
            SessionStep::Miss(pending) => {
                self.spoil_recording();
                self.count(Stat::CacheMisses, 1);
                self.refresh(ctx, req, pending, cached.as_deref().cloned());
            }
        }
    }

    /// One callout per session: claim it, or wait for whoever holds it.
    fn refresh<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        req: RequestId,
        pending: Pending,
        stale: Option<SessionEntry>,
    ) {
        let Some((v, cache)) = ctx.sessions() else {
            return self.failed(ctx, req, pending, stale.as_ref());
        };
        let key = pending.session_key().to_owned();
        let until_ms = ctx.now_ms + v.timeout_ms() + CLAIM_GRACE_MS;
        let local = self.calls.values().any(|c| matches!(c, Call::Session { key: k, .. } if *k == key));
        let claim =
            if local { Claim::Busy { until_ms } } else { inflight::claim(ctx.store, &key, ctx.now_ms, until_ms) };
        match claim {
            Claim::Claimed => {
                // Between the cache read that missed and this claim, the last owner may have
                // stored its answer and let go: read again rather than fetch it twice. (Owners
                // store before they let go, so a claim that lands after that sees the answer.)
                let cached = cache.get(&*ctx.store, &key);
                match ctx.guard.on_session(pending, cached.as_ref(), ctx.now_ms) {
                    SessionStep::Hit(step) => {
                        inflight::finish(ctx.store, &key, ctx.now_ms, None);
                        self.advance(ctx, req, step);
                    }
                    SessionStep::Miss(pending) => self.dispatch(ctx, req, pending, cached.or(stale), until_ms),
                }
            }
            Claim::Busy { .. } => {
                self.count(Stat::CoalescedWaits, 1);
                self.set_wait(req, Wait::Session { pending, own: false });
                self.waiting.entry(key).or_default().push(req);
            }
            Claim::RecentlyFailed => self.failed(ctx, req, pending, stale.as_ref()),
        }
    }

    fn dispatch<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        req: RequestId,
        pending: Pending,
        stale: Option<SessionEntry>,
        claim_until_ms: u64,
    ) {
        let key = pending.session_key().to_owned();
        let Some(request) = ctx.guard.callout(&pending) else {
            inflight::finish(ctx.store, &key, ctx.now_ms, None);
            return self.failed(ctx, req, pending, stale.as_ref());
        };
        // A session the cache has never seen (no entry, not even a stale or negative one) is
        // what a flood of made-up tokens looks like: such callouts are limited per worker.
        let cold_allowed = stale.is_some() || self.cold_callouts.as_mut().is_none_or(|b| b.try_take(ctx.now_ms));
        if !cold_allowed {
            // Let the claim go: another request for this session may find an allowance.
            inflight::finish(ctx.store, &key, ctx.now_ms, None);
            self.count(Stat::ColdCalloutsLimited, 1);
            debug!("session {}: new-session callout limit reached; 503", short(&key));
            let step = ctx.guard.on_cold_callout_limited(pending);
            return self.advance(ctx, req, step);
        }
        self.count(Stat::Callouts, 1);
        self.set_wait(req, Wait::Session { pending, own: true });
        let call = Call::Session { key, owner: req, asked_at_ms: ctx.now_ms, claim_until_ms };
        self.call(call, Some(req), request);
    }

    pub(super) fn session_not_sent<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        key: &str,
        owner: RequestId,
        why: String,
    ) {
        let failure = CalloutFailure::NotSent(why);
        self.callout_failed(ctx, key, &failure);
        self.resume(ctx, owner, key, Err(&failure));
        self.wake(ctx, key, Err(&failure));
    }

    fn callout_failed<S: SharedStore + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>, key: &str, failure: &CalloutFailure) {
        self.count(Stat::CalloutFailures, 1);
        warn!("session {}: {failure}", short(key));
        inflight::finish(ctx.store, key, ctx.now_ms, Some(ctx.now_ms + FAILURE_BACKOFF_MS));
    }

    /// The failure mode for one request.
    fn failed<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        req: RequestId,
        pending: Pending,
        stale: Option<&SessionEntry>,
    ) {
        let (step, served_stale) = ctx.guard.on_callout_failure(pending, stale, ctx.now_ms);
        if served_stale {
            self.count(Stat::StaleServed, 1);
        }
        self.advance(ctx, req, step);
    }

    /// Reads a callout's answer, keeps it for every worker, and resumes the requests of this
    /// worker that wait for it.
    pub(super) fn session_answer<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        call: (&str, RequestId, u64, u64),
        status: Option<u32>,
        body: &[u8],
    ) {
        let (key, owner, asked_at_ms, claim_until_ms) = call;
        let answer = ctx.guard.read_answer(status, body, ctx.now_ms).map(|answer| {
            self.count(Stat::RolesDropped, u64::from(answer.roles_dropped));
            if answer.roles_dropped > 0 {
                warn!("session {}: {} role names dropped from the answer", short(key), answer.roles_dropped);
            }
            answer.entry
        });
        let mut overtaken = false;
        match (&answer, ctx.sessions()) {
            (Ok(entry), Some((_, cache))) => {
                match cache.put(ctx.store, key, entry, asked_at_ms, ctx.now_ms) {
                    Ok(Stored::Stored(Some((evicted, Ring::Valid)))) => {
                        self.count(Stat::SessionsEvicted, 1);
                        debug!("session {} evicted to make room", short(&evicted));
                    }
                    Ok(Stored::Stored(Some((_, Ring::Invalid)))) => self.count(Stat::InvalidSessionsEvicted, 1),
                    Ok(Stored::LoggedOut) => {
                        debug!("session {}: logged out while the callout ran; not cached", short(key));
                        overtaken = true;
                    }
                    Ok(Stored::Stored(None)) | Err(_) => {}
                }
                // Let go of the claim, if it is still this callout's: past its deadline another
                // worker may have taken it over, and that claim is not this one's to end.
                if inflight::mark(&*ctx.store, key, ctx.now_ms) == Some(Mark::Fetching { until_ms: claim_until_ms }) {
                    inflight::finish(ctx.store, key, ctx.now_ms, None);
                }
            }
            (Err(failure), _) => self.callout_failed(ctx, key, failure),
            // Without a validation service no answer reads (see `Guard::read_answer`).
            (Ok(_), None) => {}
        }
        // The owner asked before the logout: the answer is its own. Requests that joined the
        // wait may have come after the logout, so they ask again.
        self.resume(ctx, owner, key, answer.as_ref());
        if overtaken {
            self.retry_waiters(ctx, key);
        } else {
            self.wake(ctx, key, answer.as_ref());
        }
    }

    /// Resumes every request of this worker waiting for `key` with a callout's outcome.
    fn wake<S: SharedStore + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>, key: &str, outcome: Outcome<'_>) {
        for req in self.waiting.remove(key).unwrap_or_default() {
            self.resume(ctx, req, key, outcome);
        }
    }

    /// Starts the requests of this worker waiting for `key` over from the cache.
    fn retry_waiters<S: SharedStore + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>, key: &str) {
        for req in self.waiting.remove(key).unwrap_or_default() {
            let pending = self.requests.get_mut(&req).and_then(|r| r.wait.take_session(Some(false)));
            if let Some(pending) = pending {
                self.session(ctx, req, pending);
            }
        }
    }

    /// Resumes one request waiting for `key` with a callout's outcome.
    fn resume<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        req: RequestId,
        key: &str,
        outcome: Outcome<'_>,
    ) {
        let Some(pending) = self.requests.get_mut(&req).and_then(|r| r.wait.take_session(None)) else { return };
        match outcome {
            Ok(entry) => {
                let step = ctx.guard.on_answer(pending, entry);
                self.advance(ctx, req, step);
            }
            Err(_) => {
                let stale = ctx.sessions().and_then(|(_, cache)| cache.get(&*ctx.store, key));
                self.failed(ctx, req, pending, stale.as_ref());
            }
        }
    }

    /// Looks for answers to callouts owned by other workers, and takes over from owners that
    /// did not answer in time.
    pub(super) fn tick_sessions<S: SharedStore + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>) {
        let keys: Vec<String> = self.waiting.keys().cloned().collect();
        for key in keys {
            let cached = ctx
                .sessions()
                .and_then(|(v, cache)| cache.get(&*ctx.store, &key).filter(|e| e.is_fresh(&v.cache, ctx.now_ms)));
            if let Some(entry) = cached {
                self.wake(ctx, &key, Ok(&entry));
                continue;
            }
            match inflight::mark(&*ctx.store, &key, ctx.now_ms) {
                Some(Mark::Fetching { .. }) => {}
                Some(Mark::Failed { .. }) => self.wake(ctx, &key, Err(&CalloutFailure::NoResponse)),
                // The owner's claim lapsed without an answer: one waiter asks again.
                None => self.take_over(ctx, &key),
            }
        }
    }

    fn take_over<S: SharedStore + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>, key: &str) {
        let next = self.waiting.get_mut(key).and_then(|w| (!w.is_empty()).then(|| w.remove(0)));
        if self.waiting.get(key).is_some_and(Vec::is_empty) {
            self.waiting.remove(key);
        }
        let Some(req) = next else { return };
        let Some(pending) = self.requests.get_mut(&req).and_then(|r| r.wait.take_session(Some(false))) else { return };
        let stale = ctx.sessions().and_then(|(_, cache)| cache.get(&*ctx.store, key));
        self.refresh(ctx, req, pending, stale);
    }
}

//! The proxy-wasm glue: I/O only. Every decision is the core's.
//!
//! A request that waits (for its body, a session callout, a lookup or a JWK Set fetch) keeps its state
//! in the worker's [`Worker`] table rather than in its own context object, because it may be
//! resumed from another context: the request that owns a callout resumes every request on this
//! worker waiting for the same session, and the root context resumes requests waiting for a
//! callout owned by another worker (at its tick) and for the JWK Sets it fetches. Every action on a request first makes it the effective
//! context, so it does not matter whose callback is running.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, Status};

use crate::core::jwt::VerifierState;
use crate::core::lookup::{LookupKey, Resolver};
use crate::core::session::{Claim, Mark, Ring};
use crate::core::validation::{TokenBucket, Validator};
use crate::core::{
    CalloutFailure, Denial, DenialKind, Guard, Pending, RequestHead, SessionEntry, SessionStep, Step, Verdict,
};
use crate::metrics::Metrics;
use crate::store;

mod lookups;
use lookups::LookupCallout;

/// Past the callout timeout, how long a claim stands before another worker may take over
/// (an owner that died must not hold the session forever).
const CLAIM_GRACE_MS: u64 = 1000;
/// After a failed callout, how long requests for that session follow the failure mode before
/// one of them asks again: an outage is not met with one callout per request.
const FAILURE_BACKOFF_MS: u64 = 1000;
/// How often a worker looks for answers to callouts owned by other workers.
const TICK: Duration = Duration::from_millis(20);
/// How often a worker checks whether a remote JWK Set is due (expired, or wanted for a new
/// `kid`) when nothing else makes it tick.
const JWKS_TICK: Duration = Duration::from_secs(1);
/// The root context sends JWK Set fetches from its tick (so their answers come back to it);
/// a request waiting for one makes that tick come at once.
const FETCH_NOW: Duration = Duration::from_millis(1);
/// Past the longest JWK Set fetch timeout, how long a request waits for the fetch's answer
/// before it is decided with the keys there are.
const KEYS_GRACE_MS: u64 = 2000;

fn now_ms() -> u64 {
    let now = hostcalls::get_current_time().unwrap_or(UNIX_EPOCH);
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Where a paused request stands.
#[derive(Debug, Default)]
enum State {
    /// Nothing pending (decided, or not yet started).
    #[default]
    Open,
    /// Waiting for another request's callout for the same session.
    Waiting { pending: Pending },
    /// Waiting for its own callout.
    Calling { pending: Pending },
    /// Waiting for its body.
    Body(Pending),
    /// Waiting for a JWK Set fetch, to decide its head again; until `until_ms` at most.
    Keys { until_ms: u64 },
    /// Waiting for the lookup of `key` (its own, or another request's).
    Resolving { key: LookupKey, pending: Pending },
}

impl State {
    /// The pending decision of a request waiting for another request's session callout (or,
    /// with `own`, for its own), leaving it `Open`; any other state is left as it is.
    fn take_session_wait(&mut self, own: bool) -> Option<Pending> {
        match std::mem::take(self) {
            State::Waiting { pending } => Some(pending),
            State::Calling { pending } if own => Some(pending),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The pending decision of a request waiting for the lookup of `key`, leaving it `Open`;
    /// any other state is left as it is.
    fn take_lookup_wait(&mut self, key: &LookupKey) -> Option<Pending> {
        match std::mem::take(self) {
            State::Resolving { key: k, pending } if k == *key => Some(pending),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The pending decision of a request waiting for something with a body limit.
    fn pending(&self) -> Option<&Pending> {
        match self {
            State::Body(p) | State::Waiting { pending: p } | State::Calling { pending: p } => Some(p),
            State::Resolving { pending, .. } => Some(pending),
            State::Open | State::Keys { .. } => None,
        }
    }

    /// Whether the request waited for a JWK Set fetch, leaving it `Open`; any other state is
    /// left as it is.
    fn take_keys_wait(&mut self) -> Option<()> {
        matches!(self, State::Keys { .. }).then(|| *self = State::Open)
    }
}

/// One request of this worker.
#[derive(Debug, Default)]
struct Request {
    state: State,
    /// The whole body arrived (its size) while the request waited for something else.
    body_done: Option<usize>,
    /// The head already went upstream (body-sourced route without `hold_headers_for_body`).
    headers_forwarded: bool,
    /// A logout route: the session to evict once the upstream answers 2xx.
    logout: Option<String>,
}

/// A callout this worker sent.
#[derive(Debug)]
struct Callout {
    session: String,
    owner: u32,
    /// The deadline of the claim it was sent under: the claim is still this callout's while
    /// the session's mark says so.
    claim_until_ms: u64,
}

/// Per-worker state, shared by the root context and every request context of the worker.
#[derive(Debug, Default)]
pub struct Worker {
    requests: HashMap<u32, Request>,
    /// Session key -> requests waiting for a callout owned by someone else.
    waiting: HashMap<String, Vec<u32>>,
    /// Callout token -> what it is for.
    callouts: HashMap<u32, Callout>,
    /// JWKS fetch token -> the provider it is for.
    jwks_fetches: HashMap<u32, usize>,
    /// Requests waiting for a JWK Set fetch.
    awaiting_keys: Vec<u32>,
    /// The tick period asked of the host.
    tick: Duration,
    /// Tokens this worker verified and the remote JWK Sets it fetched (current configuration).
    keys: VerifierState,
    /// This worker's allowance of callouts about sessions the cache has never seen (current
    /// configuration; `None` without a validation service).
    cold_callouts: Option<TokenBucket>,
    /// Looked-up id -> requests waiting for a lookup owned by someone else.
    lookup_waiting: HashMap<LookupKey, Vec<u32>>,
    /// Lookup callout token -> what it is for.
    lookups: HashMap<u32, LookupCallout>,
    /// This worker's lookup allowance (current configuration; `None` without a resolver).
    lookup_allowance: Option<TokenBucket>,
}

impl Worker {
    /// Ticks fast while requests wait for another worker's callout or for a JWK Set fetch
    /// (whose deadlines the tick checks), slowly while remote JWK Sets need refreshing, not at
    /// all otherwise.
    fn retick(&mut self, remote_jwks: bool) {
        let want = if !self.waiting.is_empty() || !self.lookup_waiting.is_empty() || !self.awaiting_keys.is_empty() {
            TICK
        } else if remote_jwks {
            JWKS_TICK
        } else {
            Duration::ZERO
        };
        self.set_tick(want);
    }

    fn set_tick(&mut self, period: Duration) {
        if period != self.tick {
            self.tick = period;
            let _ = hostcalls::set_tick_period(period);
        }
    }
}

/// A worker's [`Worker`], shared by its root context and every request context, and reached
/// only through [`WorkerCell::with`] (clippy refuses `RefCell::borrow` and `borrow_mut` here).
///
/// A host call made while it is in use may come back into the filter at once (a local reply
/// runs the response callbacks before it returns). Such an inner call finds it busy and does
/// without it, as each caller says, rather than panicking: a panic kills the VM for every later
/// request on that worker.
#[derive(Debug, Default)]
pub struct WorkerCell(RefCell<Worker>);

impl WorkerCell {
    /// Runs `f` on the worker's state; `None` (logged) if an outer call is using it.
    fn with<T>(&self, f: impl FnOnce(&mut Worker) -> T) -> Option<T> {
        match self.0.try_borrow_mut() {
            Ok(mut worker) => Some(f(&mut worker)),
            Err(_) => {
                error!("the worker's state is in use by an outer call; this call goes on without it");
                None
            }
        }
    }
}

/// The root context: compiles the configuration and hands each request what it needs.
#[derive(Default)]
pub struct GuardRoot {
    guard: Option<Rc<Guard>>,
    metrics: Metrics,
    worker: Rc<WorkerCell>,
}

impl Context for GuardRoot {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if let Some(guard) = &self.guard {
            Driver { guard, metrics: &self.metrics, worker: &self.worker }.on_callout_response(
                token_id,
                num_headers,
                body_size,
            );
        }
    }
}

impl RootContext for GuardRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // Follow the host's log level, so a debug line per request costs nothing unless the
        // operator asked for debug logs (`--component-log-level wasm:debug`).
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        self.metrics = Metrics::define();
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let env = |name: &str| std::env::var(name).ok();
        match Guard::from_json(&config, &env) {
            Ok(guard) => {
                info!(
                    "configured; policy version {:?} (policy_version_hash {})",
                    guard.policy_version(),
                    guard.policy_version_hash()
                );
                if !guard.hold_headers_for_body() {
                    // An explicit opt-in that lets the upstream see requests later denied: say
                    // so each time such a configuration is taken.
                    warn!("{}", crate::core::config::EARLY_HEAD_WARNING);
                }
                self.metrics.set_policy_version(guard.policy_version_hash());
                // Keys may have changed: tokens verified under the old configuration are not. The
                // fetches sent under it are forgotten too: their answers are matched to a provider
                // by its index, which may now be another provider's.
                self.worker.with(|w| {
                    w.keys = guard.verifier_state();
                    w.jwks_fetches.clear();
                    w.cold_callouts = guard.validator().map(Validator::cold_callouts);
                    w.lookup_allowance = guard.resolver().map(Resolver::allowance);
                });
                if guard.validator().is_some() || guard.resolver().is_some() {
                    store::prepare();
                }
                let guard = Rc::new(guard);
                self.guard = Some(Rc::clone(&guard));
                // Fetch remote JWK Sets now, from the root, so their answers come back here.
                let driver = Driver { guard: &guard, metrics: &self.metrics, worker: &self.worker };
                driver.fetch_jwks(now_ms());
                driver.retick();
                true
            }
            Err(err) => {
                // Returning false makes Envoy refuse this configuration (and keep the last good
                // one on an update), so the error must say what to fix.
                error!("configuration rejected: {err}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        match &self.guard {
            Some(guard) => Driver { guard, metrics: &self.metrics, worker: &self.worker }.on_tick(),
            None => {
                let _ = hostcalls::set_tick_period(Duration::ZERO);
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(GuardHttp {
            id: context_id,
            guard: self.guard.clone(),
            metrics: self.metrics.clone(),
            worker: Rc::clone(&self.worker),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Carries out the core's steps for requests of one worker.
struct Driver<'a> {
    guard: &'a Guard,
    metrics: &'a Metrics,
    worker: &'a WorkerCell,
}

impl Driver<'_> {
    fn with_request<T>(&self, ctx: u32, f: impl FnOnce(&mut Request) -> T) -> Option<T> {
        self.worker.with(|w| w.requests.get_mut(&ctx).map(f)).flatten()
    }

    fn set_state(&self, ctx: u32, state: State) {
        self.with_request(ctx, |r| r.state = state);
    }

    fn take_state(&self, ctx: u32) -> State {
        self.with_request(ctx, |r| std::mem::take(&mut r.state)).unwrap_or_default()
    }

    /// Carries out `step` for request `ctx` (the effective context). `Continue` means the
    /// request may go on: from its own callback, return it; otherwise resume the request.
    fn advance(&self, ctx: u32, step: Step, now_ms: u64) -> Action {
        match step {
            Step::Verdict(verdict) => self.apply(ctx, verdict),
            Step::Session(pending) => self.session(ctx, pending, now_ms),
            Step::AwaitKeys => self.await_keys(ctx, now_ms),
            Step::Resolve { key, pending } => self.resolve(ctx, key, pending, now_ms),
            Step::ReadBody(pending) => {
                let body_done = self.with_request(ctx, |r| r.body_done).flatten();
                if let Some(size) = body_done {
                    let body = if size == 0 {
                        None
                    } else {
                        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size).ok().flatten()
                    };
                    let step = self.guard.on_request_body(pending, body.as_deref().unwrap_or_default());
                    return self.advance(ctx, step, now_ms);
                }
                if self.guard.hold_headers_for_body() {
                    // Envoy keeps this Pause a StopIteration only with the plugin's
                    // `allow_on_headers_stop_iteration`; then the body callbacks still come.
                    self.set_state(ctx, State::Body(pending));
                    return Action::Pause;
                }
                // Without that knob a paused head never sees its body: send the head (with the
                // verified identity) now and hold only the body until the decision.
                for (name, value) in &pending.upstream_headers {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
                }
                self.with_request(ctx, |r| {
                    r.headers_forwarded = true;
                    r.state = State::Body(pending);
                });
                Action::Continue
            }
        }
    }

    /// Decides request `ctx` (the effective context) from its head, as far as the head goes.
    fn decide_head(&self, ctx: u32, now_ms: u64) -> Action {
        let mut headers: Vec<(String, String)> = hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        // Identity headers are ours alone: whatever a client sent in that family goes first, on
        // every route, before anything reads the request.
        let spoofed: Vec<String> = self
            .guard
            .identity_headers_to_remove(headers.iter().map(|(n, _)| n.as_str()))
            .into_iter()
            .map(str::to_owned)
            .collect();
        for name in &spoofed {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
        }
        headers.retain(|(name, _)| !spoofed.contains(name));
        let pseudo = |name: &str| headers.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str());
        let head = RequestHead { method: pseudo(":method"), path: pseudo(":path"), headers: &headers };
        let decide = |keys: &mut VerifierState| {
            let step = self.guard.on_request_headers_cached(&head, now_ms / 1000, keys);
            (step, keys.tokens.take(), keys.verified.take_roles_dropped())
        };
        // Busy state (see `WorkerCell`): decide without this worker's caches.
        let (step, tokens, roles_dropped) = match self.worker.with(|w| decide(&mut w.keys)) {
            Some(decided) => decided,
            None => decide(&mut self.guard.verifier_state()),
        };
        self.metrics.count_tokens(tokens);
        Metrics::add(self.metrics.roles_dropped, roles_dropped);
        self.advance(ctx, step, now_ms)
    }

    /// Parks a request until a JWK Set fetch ends; the root context sends the fetch at its
    /// next tick, which this makes come at once.
    fn await_keys(&self, ctx: u32, now_ms: u64) -> Action {
        let timeout_ms = self.guard.verifier().remote_sources().map(|s| s.timeout_ms).max().unwrap_or(0);
        self.worker.with(|worker| {
            if let Some(r) = worker.requests.get_mut(&ctx) {
                r.state = State::Keys { until_ms: now_ms + timeout_ms + KEYS_GRACE_MS };
            }
            worker.awaiting_keys.push(ctx);
            worker.set_tick(FETCH_NOW);
        });
        Metrics::bump(self.metrics.jwks_waits);
        Action::Pause
    }

    /// Decides again the heads of the requests waiting for JWK Sets: all of them once a fetch
    /// has ended (`all`), else those that waited past their deadline.
    fn recheck_keys(&self, all: bool, now_ms: u64) {
        let due: Vec<u32> = self
            .worker
            .with(|worker| {
                let waiting = std::mem::take(&mut worker.awaiting_keys);
                let requests = &worker.requests;
                let (due, still) = waiting.into_iter().partition(|ctx| {
                    all || requests
                        .get(ctx)
                        .is_none_or(|r| matches!(r.state, State::Keys { until_ms } if until_ms <= now_ms))
                });
                worker.awaiting_keys = still;
                due
            })
            .unwrap_or_default();
        for ctx in due {
            self.carry_on(ctx, State::take_keys_wait, |()| self.decide_head(ctx, now_ms));
        }
    }

    /// Carries request `ctx` on from another context's callback: takes what it waits with if
    /// `wanted` finds it waiting so (a request in another state is left as it was), makes it
    /// the effective context, runs `step`, and resumes the request if `step` lets it go on. A
    /// request whose client went away is forgotten.
    fn carry_on<T>(&self, ctx: u32, wanted: impl FnOnce(&mut State) -> Option<T>, step: impl FnOnce(T) -> Action) {
        let Some(taken) = self.with_request(ctx, |r| wanted(&mut r.state)).flatten() else { return };
        if hostcalls::set_effective_context(ctx).is_err() {
            // The client went away while waiting.
            self.worker.with(|w| w.requests.remove(&ctx));
            return;
        }
        if step(taken) == Action::Continue {
            let _ = hostcalls::resume_http_request();
        }
    }

    /// Answers locally or lets the request go on with its identity headers.
    fn apply(&self, ctx: u32, verdict: Verdict) -> Action {
        self.set_state(ctx, State::Open);
        match verdict {
            Verdict::Allow { headers, detail, audited, logout } => {
                let forwarded = self.with_request(ctx, |r| {
                    r.logout = logout;
                    r.headers_forwarded
                });
                if forwarded != Some(true) {
                    for (name, value) in &headers {
                        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
                    }
                }
                Metrics::bump(self.metrics.allowed);
                if audited.is_some() {
                    Metrics::bump(self.metrics.audit_would_deny);
                    info!("{detail}");
                } else {
                    debug!("allow: {detail}");
                }
                Action::Continue
            }
            Verdict::Deny(denial) => {
                deny(self.metrics, &denial);
                Action::Pause
            }
        }
    }

    fn session(&self, ctx: u32, pending: Pending, now_ms: u64) -> Action {
        let key = pending.session_key().to_owned();
        let record = store::session(&key);
        match self.guard.on_session(pending, record.as_ref().map(|r| &r.entry), now_ms / 1000) {
            SessionStep::Hit(step) => {
                Metrics::bump(self.metrics.cache_hits);
                self.advance(ctx, step, now_ms)
            }
            SessionStep::Miss(pending) => {
                Metrics::bump(self.metrics.cache_misses);
                self.refresh(ctx, pending, record.map(|r| r.entry), now_ms)
            }
        }
    }

    /// One callout per session: claim it, or wait for whoever holds it.
    fn refresh(&self, ctx: u32, pending: Pending, stale: Option<SessionEntry>, now_ms: u64) -> Action {
        let key = pending.session_key().to_owned();
        let timeout_ms = self.guard.validator().map_or(0, |v| v.timeout_ms());
        let until_ms = now_ms + timeout_ms + CLAIM_GRACE_MS;
        let local = self.worker.with(|w| w.callouts.values().any(|c| c.session == key)).unwrap_or(false);
        let claim = if local { Claim::Busy { until_ms } } else { store::claim(&key, now_ms, until_ms) };
        match claim {
            Claim::Claimed => {
                // Between the cache read that missed and this claim, the last owner may have
                // stored its answer and let go: read again rather than fetch it twice. (Owners
                // store before they let go, so a claim that lands after that sees the answer.)
                let record = store::session(&key);
                match self.guard.on_session(pending, record.as_ref().map(|r| &r.entry), now_ms / 1000) {
                    // Nothing waited: the answer was there once the claim landed.
                    SessionStep::Hit(step) => {
                        store::finish(&key, now_ms, None);
                        self.advance(ctx, step, now_ms)
                    }
                    SessionStep::Miss(pending) => {
                        self.dispatch(ctx, pending, record.map(|r| r.entry).or(stale), until_ms, now_ms)
                    }
                }
            }
            Claim::Busy { .. } => {
                Metrics::bump(self.metrics.coalesced_waits);
                self.worker.with(|worker| {
                    if let Some(r) = worker.requests.get_mut(&ctx) {
                        r.state = State::Waiting { pending };
                    }
                    worker.waiting.entry(key).or_default().push(ctx);
                });
                self.retick();
                Action::Pause
            }
            Claim::RecentlyFailed => self.failed(ctx, pending, stale.as_ref(), now_ms),
        }
    }

    fn dispatch(
        &self,
        ctx: u32,
        pending: Pending,
        stale: Option<SessionEntry>,
        claim_until_ms: u64,
        now_ms: u64,
    ) -> Action {
        let key = pending.session_key().to_owned();
        let Some(req) = self.guard.callout(&pending) else {
            return self.failed(ctx, pending, stale.as_ref(), now_ms);
        };
        // A session the cache has never seen (no entry, not even a stale or negative one) is
        // what a flood of made-up tokens looks like: such callouts are limited per worker.
        let cold_allowed = stale.is_some()
            || self.worker.with(|w| w.cold_callouts.as_mut().is_none_or(|b| b.try_take(now_ms))) != Some(false);
        if !cold_allowed {
            // Let the claim go: another request for this session may find an allowance.
            store::finish(&key, now_ms, None);
            Metrics::bump(self.metrics.cold_callouts_limited);
            debug!("session {}: new-session callout limit reached; 503", short(&key));
            let step = self.guard.on_cold_callout_limited(pending);
            return self.advance(ctx, step, now_ms);
        }
        Metrics::bump(self.metrics.callouts);
        let headers: Vec<(&str, &str)> = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let sent = hostcalls::dispatch_http_call(
            &req.cluster,
            headers,
            Some(&req.body),
            Vec::new(),
            Duration::from_millis(req.timeout_ms),
        );
        match sent {
            Ok(token) => {
                self.worker.with(|worker| {
                    worker.callouts.insert(token, Callout { session: key, owner: ctx, claim_until_ms });
                    if let Some(r) = worker.requests.get_mut(&ctx) {
                        r.state = State::Calling { pending };
                    }
                });
                Action::Pause
            }
            Err(status) => {
                let failure = CalloutFailure::NotSent(not_sent(status, &req.cluster));
                self.callout_failed(&key, &failure, now_ms);
                let action = self.failed(ctx, pending, stale.as_ref(), now_ms);
                self.wake(&key, Err(&failure), now_ms);
                action
            }
        }
    }

    fn callout_failed(&self, key: &str, failure: &CalloutFailure, now_ms: u64) {
        Metrics::bump(self.metrics.callout_failures);
        warn!("session {}: {failure}", short(key));
        store::finish(key, now_ms, Some(now_ms + FAILURE_BACKOFF_MS));
    }

    /// The failure mode for one request.
    fn failed(&self, ctx: u32, pending: Pending, stale: Option<&SessionEntry>, now_ms: u64) -> Action {
        let (step, served_stale) = self.guard.on_callout_failure(pending, stale, now_ms / 1000);
        if served_stale {
            Metrics::bump(self.metrics.stale_served);
        }
        self.advance(ctx, step, now_ms)
    }

    fn on_callout_response(&self, token: u32, num_headers: usize, body_size: usize) {
        let now_ms = now_ms();
        let jwks = self.worker.with(|w| w.jwks_fetches.remove(&token)).flatten();
        if let Some(provider) = jwks {
            return self.on_jwks_response(provider, num_headers, body_size);
        }
        let lookup = self.worker.with(|w| w.lookups.remove(&token)).flatten();
        if let Some(lookup) = lookup {
            return self.on_lookup_response(lookup, num_headers, body_size, now_ms);
        }
        let Some(callout) = self.worker.with(|w| w.callouts.remove(&token)).flatten() else {
            return;
        };
        let status = response_status(num_headers);
        let body =
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
        let key = callout.session;
        let answer = self.guard.read_answer(status, &body, now_ms / 1000).map(|answer| {
            Metrics::add(self.metrics.roles_dropped, u64::from(answer.roles_dropped));
            if answer.roles_dropped > 0 {
                warn!("session {}: {} role names dropped from the answer", short(&key), answer.roles_dropped);
            }
            answer.entry
        });
        match (&answer, self.guard.validator()) {
            (Ok(entry), Some(v)) => {
                match store::put_session(&key, entry.clone(), v) {
                    Some((evicted, Ring::Valid)) => {
                        Metrics::bump(self.metrics.sessions_evicted);
                        debug!("session {} evicted to make room", short(&evicted));
                    }
                    Some((_, Ring::Invalid)) => Metrics::bump(self.metrics.invalid_sessions_evicted),
                    None => {}
                }
                // A logout while this callout was in flight took its claim away: the answer
                // predates the logout and must not outlive it in the cache. (Checked after the
                // store, so a logout between the two is caught too.)
                if store::mark(&key, now_ms) == Some(Mark::Fetching { until_ms: callout.claim_until_ms }) {
                    store::finish(&key, now_ms, None);
                } else {
                    store::remove_session(&key);
                    debug!("session {}: its claim was taken (logout) while the callout ran; not cached", short(&key));
                }
            }
            (Err(failure), _) => self.callout_failed(&key, failure, now_ms),
            // Without a validation service no answer reads (see `Guard::read_answer`).
            (Ok(_), None) => {}
        }
        self.resume(callout.owner, answer.as_ref(), now_ms);
        self.wake(&key, answer.as_ref(), now_ms);
    }

    /// Resumes every request of this worker waiting for `key`.
    fn wake(&self, key: &str, answer: Result<&SessionEntry, &CalloutFailure>, now_ms: u64) {
        let waiters = self.worker.with(|w| w.waiting.remove(key)).flatten().unwrap_or_default();
        for ctx in waiters {
            self.resume(ctx, answer, now_ms);
        }
    }

    /// Resumes one request (waiting or calling) with a callout's outcome.
    fn resume(&self, ctx: u32, answer: Result<&SessionEntry, &CalloutFailure>, now_ms: u64) {
        self.carry_on(
            ctx,
            |state| state.take_session_wait(true),
            |pending| match answer {
                Ok(entry) => {
                    let step = self.guard.on_answer(pending, entry);
                    self.advance(ctx, step, now_ms)
                }
                Err(_) => {
                    let stale = store::session(pending.session_key()).map(|r| r.entry);
                    self.failed(ctx, pending, stale.as_ref(), now_ms)
                }
            },
        );
    }

    /// Looks for answers to callouts owned by other workers, and takes over from owners that
    /// did not answer in time.
    fn on_tick(&self) {
        let now_ms = now_ms();
        self.fetch_jwks(now_ms);
        self.recheck_keys(false, now_ms);
        self.tick_lookups(now_ms);
        let keys: Vec<String> = self.worker.with(|w| w.waiting.keys().cloned().collect()).unwrap_or_default();
        for key in keys {
            let record = store::session(&key);
            let fresh = match (&record, self.guard.validator()) {
                (Some(r), Some(v)) => r.entry.is_fresh(&v.cache, now_ms / 1000),
                _ => false,
            };
            if let (true, Some(record)) = (fresh, &record) {
                self.wake(&key, Ok(&record.entry), now_ms);
                continue;
            }
            match store::mark(&key, now_ms) {
                Some(Mark::Fetching { .. }) => {}
                Some(Mark::Failed { .. }) => {
                    let failure = CalloutFailure::NoResponse;
                    self.wake(&key, Err(&failure), now_ms);
                }
                // The owner's claim lapsed without an answer: one waiter asks again.
                None => self.take_over(&key, now_ms),
            }
        }
        self.retick();
    }

    fn retick(&self) {
        let remote = self.guard.verifier().remote_sources().next().is_some();
        self.worker.with(|w| w.retick(remote));
    }

    /// Sends the JWK Set fetches that are due. Called from the root context only, so the
    /// answers come back to the root, which outlives any request.
    fn fetch_jwks(&self, now_ms: u64) {
        let due = self.worker.with(|w| w.keys.remote.due(self.guard.verifier(), now_ms / 1000)).unwrap_or_default();
        for source in due {
            let headers = vec![
                (":method", "GET"),
                (":path", source.path.as_str()),
                (":authority", source.authority.as_str()),
                ("accept", "application/json"),
            ];
            let timeout = Duration::from_millis(source.timeout_ms);
            match hostcalls::dispatch_http_call(&source.cluster, headers, None, Vec::new(), timeout) {
                Ok(token) => {
                    self.worker.with(|w| w.jwks_fetches.insert(token, source.provider));
                }
                Err(status) => {
                    warn!(
                        "remote JWKS for providers[{}] could not be fetched ({status:?}): is there an Envoy cluster named {:?}?",
                        source.provider, source.cluster
                    );
                    Metrics::bump(self.metrics.jwks_fetch_failed);
                    self.worker.with(|w| w.keys.remote.failed(source.provider));
                    self.recheck_keys(true, now_ms);
                }
            }
        }
    }

    fn on_jwks_response(&self, provider: usize, num_headers: usize, body_size: usize) {
        let now_ms = now_ms();
        let status = response_status(num_headers);
        let body =
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
        if status.is_some_and(|s| (200..300).contains(&s)) {
            let loaded = self.worker.with(|w| w.keys.remote.load(provider, &body, now_ms / 1000));
            match loaded {
                // Busy state (see `WorkerCell`): the next fetch brings the keys.
                None => {}
                Some(Ok(count)) => {
                    Metrics::bump(self.metrics.jwks_fetch_success);
                    info!("remote JWKS for providers[{provider}]: {count} keys");
                }
                Some(Err(e)) => {
                    Metrics::bump(self.metrics.jwks_fetch_failed);
                    warn!("remote JWKS for providers[{provider}] refused: {e}; keeping the keys it had");
                }
            }
        } else {
            Metrics::bump(self.metrics.jwks_fetch_failed);
            warn!(
                "remote JWKS for providers[{provider}]: no usable answer (status {status:?}); keeping the keys it had"
            );
            self.worker.with(|w| w.keys.remote.failed(provider));
        }
        self.recheck_keys(true, now_ms);
        self.retick();
    }

    fn take_over(&self, key: &str, now_ms: u64) {
        let next = self
            .worker
            .with(|worker| {
                let waiters = worker.waiting.get_mut(key);
                let ctx = waiters.and_then(|w| if w.is_empty() { None } else { Some(w.remove(0)) });
                if worker.waiting.get(key).is_some_and(Vec::is_empty) {
                    worker.waiting.remove(key);
                }
                ctx
            })
            .flatten();
        let Some(ctx) = next else { return };
        self.carry_on(
            ctx,
            |state| state.take_session_wait(false),
            |pending| {
                let stale = store::session(key).map(|r| r.entry);
                self.refresh(ctx, pending, stale, now_ms)
            },
        );
    }
}

/// Why a callout was not sent, for the log: most often a cluster missing from Envoy's.
fn not_sent(status: Status, cluster: &str) -> String {
    format!("{status:?} from the host: is there an Envoy cluster named {cluster:?}?")
}

/// The `:status` of a callout's answer; `None` when the host gives no headers (timeout, reset).
fn response_status(num_headers: usize) -> Option<u32> {
    if num_headers == 0 {
        return None;
    }
    hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten().and_then(|s| s.parse().ok())
}

fn deny(metrics: &Metrics, denial: &Denial) {
    let counter = match denial.kind {
        DenialKind::Unauthenticated => metrics.unauthenticated,
        DenialKind::Forbidden => metrics.denied,
        DenialKind::BadRequest => metrics.bad_request,
        DenialKind::PayloadTooLarge => metrics.payload_too_large,
        DenialKind::Unavailable => metrics.unavailable,
    };
    Metrics::bump(counter);
    info!("deny {}: {}", denial.status, denial.detail);
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    headers.extend(denial.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let _ = hostcalls::send_http_response(denial.status, headers, Some(denial.body.as_bytes()));
}

/// A session key shortened for logs (it may hold a session id worth keeping out of them).
fn short(key: &str) -> String {
    let digest = crate::core::jwt::token_digest(key);
    format!("#{}", digest.get(..12).unwrap_or_default())
}

/// One request.
struct GuardHttp {
    id: u32,
    /// `None` only if a request arrives before a configuration was accepted: fail closed.
    guard: Option<Rc<Guard>>,
    metrics: Metrics,
    worker: Rc<WorkerCell>,
}

impl GuardHttp {
    fn driver<'a>(&'a self, guard: &'a Guard) -> Driver<'a> {
        Driver { guard, metrics: &self.metrics, worker: &self.worker }
    }

    fn now_ms(&self) -> u64 {
        self.get_current_time().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    /// The body is complete (`size` bytes): decide it if the request was waiting for it.
    fn body_complete(&mut self, guard: &Guard, size: usize) -> Action {
        let driver = self.driver(guard);
        match driver.take_state(self.id) {
            State::Body(pending) => {
                let body = if size == 0 { None } else { self.get_http_request_body(0, size) };
                let step = guard.on_request_body(pending, body.as_deref().unwrap_or_default());
                driver.advance(self.id, step, self.now_ms())
            }
            state @ (State::Waiting { .. } | State::Calling { .. } | State::Keys { .. } | State::Resolving { .. }) => {
                // Still waiting for the session, the keys or a lookup: keep the body for the
                // decision (a lookup's request has read it already, or never needs it).
                driver.with_request(self.id, |r| {
                    r.body_done = Some(size);
                    r.state = state;
                });
                Action::Pause
            }
            State::Open => Action::Continue,
        }
    }
}

impl Context for GuardHttp {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if let Some(guard) = self.guard.clone() {
            self.driver(&guard).on_callout_response(token_id, num_headers, body_size);
        }
    }
}

impl HttpContext for GuardHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(guard) = self.guard.clone() else {
            error!("request before any accepted configuration; refusing it");
            self.send_http_response(
                503,
                vec![("content-type", "application/json")],
                Some(br#"{"error":"unavailable"}"#),
            );
            return Action::Pause;
        };
        let request = Request { body_done: end_of_stream.then_some(0), ..Request::default() };
        self.worker.with(|w| w.requests.insert(self.id, request));
        self.driver(&guard).decide_head(self.id, self.now_ms())
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(guard) = self.guard.clone() else { return Action::Continue };
        let limit = self
            .worker
            .with(|worker| match worker.requests.get(&self.id).map(|r| &r.state) {
                // The route's limit is applied once the head is decided.
                Some(State::Keys { .. }) => Some(u64::MAX),
                Some(state) => state.pending().map(|p| p.max_body_bytes),
                None => None,
            })
            .flatten();
        let Some(limit) = limit else { return Action::Continue };
        if body_size as u64 > limit {
            let driver = self.driver(&guard);
            let pending = match driver.take_state(self.id) {
                State::Body(p) | State::Waiting { pending: p } | State::Calling { pending: p } => p,
                State::Resolving { pending, .. } => pending,
                State::Open | State::Keys { .. } => return Action::Continue,
            };
            let id = self.id;
            self.worker.with(|worker| {
                worker.waiting.values_mut().for_each(|w| w.retain(|c| *c != id));
                worker.lookup_waiting.values_mut().for_each(|w| w.retain(|c| *c != id));
            });
            return driver.apply(self.id, guard.body_too_large(&pending));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.body_complete(&guard, body_size)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the body: a request with trailers never sees end_of_stream on its body.
        let Some(guard) = self.guard.clone() else { return Action::Continue };
        let size = self.get_http_request_body(0, usize::MAX).map_or(0, |b| b.len());
        self.body_complete(&guard, size)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let logout = self.worker.with(|w| w.requests.get_mut(&self.id).and_then(|r| r.logout.take())).flatten();
        if let Some(key) = logout {
            let ok = self
                .get_http_response_header(":status")
                .and_then(|s| s.parse::<u32>().ok())
                .is_some_and(|s| (200..300).contains(&s));
            if ok {
                store::remove_session(&key);
                // A callout for this session in flight now answered for it as it was before the
                // logout: take its claim, so that answer is not stored.
                store::finish(&key, self.now_ms(), None);
                Metrics::bump(self.metrics.logouts);
                info!("logout: session {} evicted", short(&key));
            }
        }
        Action::Continue
    }
}

impl Drop for GuardHttp {
    fn drop(&mut self) {
        // A request that ends (or whose client goes away) while waiting must leave no trace:
        // nothing may later try to resume it.
        let id = self.id;
        let orphaned = self.worker.with(|worker| {
            worker.requests.remove(&id);
            for waiters in worker.waiting.values_mut() {
                waiters.retain(|c| *c != id);
            }
            worker.waiting.retain(|_, w| !w.is_empty());
            for waiters in worker.lookup_waiting.values_mut() {
                waiters.retain(|c| *c != id);
            }
            worker.lookup_waiting.retain(|_, w| !w.is_empty());
            worker.awaiting_keys.retain(|c| *c != id);
            let mut orphaned: Vec<String> =
                worker.callouts.values().filter(|c| c.owner == id).map(|c| c.session.clone()).collect();
            worker.callouts.retain(|_, c| c.owner != id);
            orphaned.extend(worker.lookups.values().filter(|c| c.owned_by(id)).map(LookupCallout::claim_key));
            worker.lookups.retain(|_, c| !c.owned_by(id));
            orphaned
        });
        // The host will not deliver the answer to a context that is gone: give the claim up at
        // once, so the next tick of a worker with waiters asks again from its root context,
        // rather than every waiter sitting out the claim's full deadline.
        let now_ms = now_ms();
        for claim in orphaned.unwrap_or_default() {
            store::finish(&claim, now_ms, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_comes_back_in_finds_the_worker_busy_instead_of_panicking() {
        let cell = WorkerCell::default();
        let inner = cell.with(|outer| {
            outer.awaiting_keys.push(7);
            cell.with(|w| w.awaiting_keys.push(8))
        });
        assert_eq!(inner, Some(None), "the inner call did without");
        assert_eq!(cell.with(|w| w.awaiting_keys.clone()), Some(vec![7]));
    }
}

//! What one worker does between a request and its answer, as a state machine without I/O.
//!
//! A request may wait: for its body, for its session's callout (its own, or another request's
//! on this or another worker), for the lookup of an id it names, or for a JWK Set fetch. The
//! [`Worker`] keeps every such wait, and all workers of a VM coordinate through shared data,
//! reached only through a [`SharedStore`].
//!
//! The host feeds it events, each with the time in milliseconds since the epoch:
//! a request's head ([`Worker::recall`] first when it has no body, then [`Worker::head`]
//! unless that answered it), body ([`Worker::body_data`], [`Worker::body`]),
//! response ([`Worker::response`]) and end ([`Worker::dropped`]); a callout's answer
//! ([`Worker::answer`]); a tick ([`Worker::tick`]); a new configuration
//! ([`Worker::configure`]). It then carries out every [`Action`] that [`Worker::poll_action`]
//! returns (some of which it reports back: [`Worker::sent`], [`Worker::not_sent`],
//! [`Worker::body`]), and calls [`Worker::tick`] no later than [`Worker::poll_timeout`].
//!
//! Events in a request's own callback go between [`Worker::begin`] and [`Worker::end`]: the
//! request the callback is for is let go by the callback's return value ([`Flow`]), every other
//! one by [`Action::Resume`].

mod head;
pub(crate) mod hits;
mod keys;
mod lookups;
mod sessions;
mod stat;
mod tally;

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::rc::Rc;

use log::{debug, info};

use crate::guard::{Guard, Pending, RequestHead, Step};
use crate::header_map::HeaderMap;
use crate::jwt::VerifierState;
use crate::lookup::{LookupCache, LookupKey, Resolver};
use crate::session::{SessionCache, SessionMemo};
use crate::shared::{inflight, SharedStore};
use crate::validation::{CalloutRequest, TokenBucket, Validator};
use crate::verdict::Verdict;
pub use head::Head;
pub use hits::{Grant, HitKey};
use hits::{HitMemo, Recording};
use tally::Tally;

pub use stat::Stat;

/// The host's id of a request (its context id).
pub type RequestId = u32;

/// The host's token for a callout it sent.
pub type CallToken = u32;

/// A callout the worker asked for, until the host says it was sent ([`Worker::sent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(u64);

/// Past the callout timeout, how long a claim stands before another worker may take over
/// (an owner that died must not hold the session forever).
pub const CLAIM_GRACE_MS: u64 = 1000;
/// After a failed callout, how long requests for that session (or id) follow the failure mode
/// before one of them asks again: an outage is not met with one callout per request.
pub const FAILURE_BACKOFF_MS: u64 = 1000;
/// How often a worker looks for answers to callouts owned by other workers.
pub const TICK_MS: u64 = 20;
/// How often a worker checks whether a remote JWK Set is due (expired, or wanted for a new
/// `kid`) when nothing else makes it tick.
pub const JWKS_TICK_MS: u64 = 1000;
/// JWK Set fetches are sent from a tick (so their answers come back to the root context, which
/// outlives any request); a request waiting for one makes that tick come at once.
pub const FETCH_NOW_MS: u64 = 1;
/// Past the longest JWK Set fetch timeout, how long a request waits for the fetch's answer
/// before it is decided with the keys there are.
pub const KEYS_GRACE_MS: u64 = 2000;

/// What the host must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Send `request` from request `from`'s context (`None`: the root context's), then report
    /// [`Worker::sent`] or [`Worker::not_sent`].
    Send {
        /// Which call it is.
        call: CallId,
        /// The context that receives the answer.
        from: Option<RequestId>,
        /// The callout.
        request: CalloutRequest,
    },
    /// Read request `req`'s body (`size` bytes) and give it to [`Worker::body`].
    ReadBody {
        /// The request.
        req: RequestId,
        /// Its whole size.
        size: usize,
    },
    /// Decide request `req`'s head again: read its headers and call [`Worker::head`].
    Redecide {
        /// The request.
        req: RequestId,
    },
    /// Set these headers on request `req`: its head goes upstream now, its body waits.
    ForwardHead {
        /// The request.
        req: RequestId,
        /// The verified identity's headers.
        headers: Vec<(String, String)>,
    },
    /// Request `req` is decided: an allow sets these headers (none if its head went upstream
    /// already), a denial is answered locally.
    Decide {
        /// The request.
        req: RequestId,
        /// The verdict.
        verdict: Verdict,
    },
    /// Let request `req` go on (it was paused outside its own callback).
    Resume {
        /// The request.
        req: RequestId,
    },
    /// Add `n` to a stat.
    Count(Stat, u64),
}

impl Action {
    /// The request the host must act on to carry it out, if any.
    pub fn request(&self) -> Option<RequestId> {
        match self {
            Action::Send { from, .. } => *from,
            Action::ReadBody { req, .. }
            | Action::Redecide { req }
            | Action::ForwardHead { req, .. }
            | Action::Decide { req, .. }
            | Action::Resume { req } => Some(*req),
            Action::Count(..) => None,
        }
    }
}

/// What a request's callback returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Let the request go on.
    Continue,
    /// Hold it (it waits, or was answered locally).
    Pause,
}

/// A request's callback that the host is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Callback {
    req: RequestId,
    flow: Flow,
}

/// Where a paused request stands.
#[derive(Debug, Default)]
enum Wait {
    /// Nothing pending (decided, or not yet started).
    #[default]
    Open,
    /// Waiting for its body.
    Body(Pending),
    /// Waiting for a session callout: its own (`own`), or another request's.
    Session { pending: Pending, own: bool },
    /// Waiting for a JWK Set fetch, to decide its head again; until `until_ms` at most.
    Keys { until_ms: u64 },
    /// Waiting for the lookup of `key` (its own, or another request's).
    Lookup { key: LookupKey, pending: Pending },
}

impl Wait {
    /// The pending decision of a request waiting for a session callout (`Some(true)`: only
    /// its own; `Some(false)`: only another's), leaving it `Open`; any other wait is left as
    /// it is.
    fn take_session(&mut self, own: Option<bool>) -> Option<Pending> {
        match std::mem::take(self) {
            Wait::Session { pending, own: o } if own.is_none_or(|own| own == o) => Some(pending),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The pending decision of a request waiting for the lookup of `key`, leaving it `Open`.
    fn take_lookup(&mut self, key: &LookupKey) -> Option<Pending> {
        match std::mem::take(self) {
            Wait::Lookup { key: k, pending } if k == *key => Some(pending),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The pending decision, whatever it waits for, leaving it `Open`.
    fn take_pending(&mut self) -> Option<Pending> {
        match std::mem::take(self) {
            Wait::Body(pending) | Wait::Session { pending, .. } | Wait::Lookup { pending, .. } => Some(pending),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// One request of this worker.
#[derive(Debug, Default)]
struct Request {
    wait: Wait,
    /// The whole body arrived (its size) while the request waited for something else.
    body_done: Option<usize>,
    /// The head already went upstream (body-sourced route without `hold_headers_for_body`).
    headers_forwarded: bool,
    /// A logout route: the session to evict once the upstream answers 2xx.
    logout: Option<String>,
}

/// A callout of this worker.
#[derive(Debug, Clone)]
enum Call {
    /// About session `key`, for request `owner`, asked at `asked_at_ms` under a claim until
    /// `claim_until_ms`: the claim is still this callout's while the session's mark says so.
    Session { key: String, owner: RequestId, asked_at_ms: u64, claim_until_ms: u64 },
    /// The lookup of `key`, for request `owner`.
    Lookup { key: LookupKey, owner: RequestId },
    /// The JWK Set of `providers[provider]`.
    Keys { provider: usize },
    /// The discovery document of `providers[provider]`.
    Discovery { provider: usize },
}

/// What [`Worker::recall`] answers.
#[derive(Debug)]
// Here and in `Body`, the key is a few hundred bytes of borrowed runs, moved once from `recall`
// to `head`: boxing it would allocate on every request the memo does not answer.
#[allow(clippy::large_enum_variant)]
pub enum Recall<'a> {
    /// The request is allowed as it was before: what to set and count. The host counts
    /// `allowed` and the grant's stats only with `count_now`; otherwise the worker counts them
    /// later (see [`Worker::count_in_windows`]).
    Allow {
        /// The identity headers to set and the stats the allow counts.
        grant: Rc<Grant>,
        /// Whether the host counts them now.
        count_now: bool,
    },
    /// It must be decided: [`Worker::head`] with this key in [`Body::Absent`].
    Decide(Option<HitKey<'a>>),
}

/// Whether a request's body follows its head, for [`Worker::head`].
#[derive(Debug, Clone, Copy)]
#[allow(clippy::large_enum_variant)]
pub enum Body<'a> {
    /// A body (or trailers) follows.
    Follows,
    /// The head is the whole request; the key [`Worker::recall`] gave, if it may be remembered.
    Absent(Option<HitKey<'a>>),
}

/// A map that iterates in the same order in every run (SipHash with fixed keys), so a simulated
/// schedule replays exactly from its seed. Its keys are request ids, callout tokens and session
/// keys of verified tokens: nothing an unauthenticated client chooses.
type Map<K, V> = HashMap<K, V, BuildHasherDefault<DefaultHasher>>;

/// One worker's side of the protocol: its requests, its callouts, and what it asks of the host.
///
/// # Example
///
/// A request without a token, decided in its own callback:
///
/// ```
/// use playbook_guard_core::protocol::{Action, Body, Flow, Worker};
/// use playbook_guard_core::shared::MemoryStore;
/// use playbook_guard_core::{Guard, RequestHead, Verdict};
///
/// let config = br#"{
///   "providers": [{"name": "noetl", "issuer": "https://noetl.local", "algorithms": ["HS256"],
///                  "secret_env": "SECRET", "roles_claim": "roles"}],
///   "routes": [{"match": {"glob": "/api/**"}, "authenticate": true}],
///   "policy": {"version": "1", "roles": {}}
/// }"#;
/// let secret = |_: &str| Some("a secret of at least thirty-two bytes!".to_owned());
/// let guard = Guard::from_json(config, &secret).unwrap();
/// let (mut worker, mut store, now_ms) = (Worker::default(), MemoryStore::default(), 1_800_000_000_000);
/// worker.configure(&guard, &mut store, now_ms);
///
/// let outer = worker.begin(7);
/// let head = RequestHead { method: "GET", path: "/api/me", headers: &[] };
/// worker.head(&guard, &mut store, now_ms, 7, &head, Body::Absent(None));
/// let actions: Vec<Action> = std::iter::from_fn(|| worker.poll_action()).collect();
/// assert!(actions.iter().any(|a| matches!(a, Action::Decide { req: 7, verdict: Verdict::Deny(d) } if d.status == 401)));
/// assert_eq!(worker.end(outer), Flow::Pause, "answered locally, not let go");
/// ```
#[derive(Debug, Default)]
pub struct Worker {
    requests: Map<RequestId, Request>,
    /// Session key -> requests waiting for a callout owned by another request.
    waiting: Map<String, Vec<RequestId>>,
    /// Looked-up id -> requests waiting for a lookup owned by another request.
    lookup_waiting: Map<LookupKey, Vec<RequestId>>,
    /// Requests waiting for a JWK Set fetch.
    awaiting_keys: Vec<RequestId>,
    /// A request waits for keys no fetch has been sent for yet: tick at once.
    fetch_now: bool,
    calls: Map<CallId, Call>,
    tokens: Map<CallToken, CallId>,
    next_call: u64,
    /// Tokens this worker verified and the remote JWK Sets it fetched (current configuration).
    keys: VerifierState,
    /// Session entries this worker decoded (current configuration).
    session_memo: SessionMemo,
    /// Requests this worker allowed from its caches alone (current configuration).
    hits: HitMemo,
    /// The stats of remembered allows that wait for their window's end.
    tally: Tally,
    /// What the request being decided in [`Worker::head`] may be remembered by.
    recording: Option<(RequestId, Recording)>,
    /// This worker's allowance of callouts about sessions the cache has never seen (current
    /// configuration; `None` without a validation service).
    cold_callouts: Option<TokenBucket>,
    /// This worker's lookup allowance (current configuration; `None` without a resolver).
    lookup_allowance: Option<TokenBucket>,
    /// Whether the configuration has remote JWK Sets to keep fresh.
    remote_jwks: bool,
    actions: VecDeque<Action>,
    /// The request whose callback is running.
    current: Option<Callback>,
    last_tick_ms: u64,
}

/// What an event handler needs besides the worker: the configuration, the store and the time.
struct Ctx<'a, S: SharedStore + ?Sized> {
    guard: &'a Guard,
    store: &'a mut S,
    now_ms: u64,
}

impl<S: SharedStore + ?Sized> Ctx<'_, S> {
    fn sessions(&self) -> Option<(&Validator, SessionCache)> {
        self.guard.validator().map(|v| (v, SessionCache::new(&v.cache)))
    }

    fn lookups(&self) -> Option<(&Resolver, LookupCache)> {
        self.guard.resolver().map(|r| (r, LookupCache::new(r)))
    }
}

impl Worker {
    /// Takes a new configuration: tokens verified and JWK Sets fetched under the old one are
    /// forgotten (keys may have changed), and so are the fetches still in flight (their answers
    /// are matched to a provider by its index, which may now be another provider's). Creates
    /// what the shared cache needs, and asks for the remote JWK Sets.
    pub fn configure<S: SharedStore + ?Sized>(&mut self, guard: &Guard, store: &mut S, now_ms: u64) {
        self.count_tally();
        self.keys = guard.verifier_state();
        self.calls.retain(|_, c| !matches!(c, Call::Keys { .. } | Call::Discovery { .. }));
        self.tokens.retain(|_, id| self.calls.contains_key(id));
        self.cold_callouts = guard.validator().map(Validator::cold_callouts);
        self.lookup_allowance = guard.resolver().map(Resolver::allowance);
        self.remote_jwks = guard.verifier().remote_sources().next().is_some();
        if guard.validator().is_some() || guard.resolver().is_some() {
            inflight::prepare(store);
        }
        self.session_memo = SessionMemo::default();
        self.hits = HitMemo::new(guard.hit_cache_size(), &|name| {
            guard.mentions(name) || !guard.identity_headers_to_remove([name]).is_empty()
        });
        if let Some(v) = guard.validator() {
            SessionCache::new(&v.cache).prepare(store);
            self.session_memo = SessionMemo::new(usize::try_from(v.cache.memo_entries).unwrap_or(usize::MAX));
        }
        if let Some(r) = guard.resolver() {
            LookupCache::new(r).prepare(store);
        }
        self.fetch_jwks(guard, now_ms);
    }

    /// The next thing for the host to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the host should call [`Worker::tick`] next (milliseconds since the epoch); `None`
    /// when nothing waits.
    pub fn poll_timeout(&self) -> Option<u64> {
        let waits = self.waits_period_ms().map(|p| self.last_tick_ms.saturating_add(p));
        match (waits, self.tally.due_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Counts the stats of remembered allows a window of `window_ms` at a time (0, the
    /// default: each when it is answered), for a host where every increment is costly (the
    /// Wasm host, with the configuration's `stats_window_ms`): see [`Recall::Allow`] and the
    /// `tally` module. The host must then keep ticking at [`Worker::tick_period_ms`], which
    /// asks for a tick at each window's end.
    pub fn count_in_windows(&mut self, window_ms: u64) {
        self.count_tally();
        self.tally = Tally::new(window_ms);
    }

    /// The tick period the worker needs now: fast while requests wait for another worker's
    /// callout or for a JWK Set fetch (whose deadlines the tick checks), slow while remote JWK
    /// Sets need refreshing, a counting window while remembered allows wait to be counted, none
    /// otherwise.
    pub fn tick_period_ms(&self) -> Option<u64> {
        let window = self.tally.due_ms().map(|_| self.tally.window_ms());
        match (self.waits_period_ms(), window) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn waits_period_ms(&self) -> Option<u64> {
        if self.fetch_now {
            Some(FETCH_NOW_MS)
        } else if !self.waiting.is_empty() || !self.lookup_waiting.is_empty() || !self.awaiting_keys.is_empty() {
            Some(TICK_MS)
        } else if self.remote_jwks {
            Some(JWKS_TICK_MS)
        } else {
            None
        }
    }

    /// Request `req`'s callback begins: until [`Worker::end`], letting it go is its return
    /// value, not an [`Action::Resume`]. Returns the callback it runs within, if the host runs
    /// one callback inside another (for [`Worker::end`] to restore).
    pub fn begin(&mut self, req: RequestId) -> Option<Callback> {
        self.current.replace(Callback { req, flow: Flow::Pause })
    }

    /// The callback that [`Worker::begin`] began ends (once every action is carried out):
    /// what it returns. `outer` is what [`Worker::begin`] returned.
    pub fn end(&mut self, outer: Option<Callback>) -> Flow {
        std::mem::replace(&mut self.current, outer).map_or(Flow::Pause, |c| c.flow)
    }

    /// A request with no body whose headers the host handed over as `map` (nothing removed
    /// yet), answered from memory if this worker allowed the very same request from its caches
    /// and what that rested on still holds (see [`hits`]). A remembered allow is the host's
    /// to carry out: set the grant's identity headers, count `allowed` and the grant's stats,
    /// let the request go. The worker keeps nothing of such a request; it needs no other event.
    pub fn recall<'a, S: SharedStore + ?Sized>(
        &mut self,
        store: &S,
        now_ms: u64,
        map: &'a HeaderMap<'a>,
    ) -> Recall<'a> {
        let Some(key) = self.hits.key(map) else { return Recall::Decide(None) };
        match self.hits.answer(&key, store, now_ms) {
            Some(grant) => Recall::Allow { count_now: self.tally.admit(now_ms, &grant), grant },
            None => Recall::Decide(Some(key)),
        }
    }

    /// Request `req`'s head, its identity headers removed; with [`Body::Absent`], the key
    /// [`Worker::recall`] gave, if the request may be remembered (none if the host removed
    /// identity headers from it).
    pub fn head<S: SharedStore + ?Sized>(
        &mut self,
        guard: &Guard,
        store: &mut S,
        now_ms: u64,
        req: RequestId,
        head: &RequestHead<'_>,
        body: Body<'_>,
    ) {
        let (end_of_stream, key) = match body {
            Body::Follows => (false, None),
            Body::Absent(key) => (true, key),
        };
        self.requests
            .entry(req)
            .or_insert_with(|| Request { body_done: end_of_stream.then_some(0), ..Request::default() });
        self.recording = key.map(|_| (req, Recording::default()));
        let step = guard.on_request_headers_cached(head, now_ms / 1000, &mut self.keys);
        let tally = self.keys.tokens.take();
        self.count(Stat::TokensJwt, u64::from(tally.jwt));
        self.count(Stat::TokensOpaque, u64::from(tally.opaque));
        self.count(Stat::TokensUnrecognised, u64::from(tally.unrecognised));
        if let (Some((_, rec)), Some(until)) = (&mut self.recording, self.keys.verified.take_answered_until()) {
            rec.until_ms = rec.until_ms.min(until.saturating_mul(1000));
        }
        let dropped = self.keys.verified.take_roles_dropped();
        if dropped > 0 {
            // Counted once, when the token is verified: a remembered allow must not count it again.
            self.spoil_recording();
        }
        self.count(Stat::RolesDropped, dropped);
        self.advance(&mut Ctx { guard, store, now_ms }, req, step);
        if let (Some((_, recording)), Some(key)) = (self.recording.take(), key) {
            self.hits.remember(&key, recording);
        }
    }

    /// The request being decided takes a path the hit memo does not cover.
    fn spoil_recording(&mut self) {
        if let Some((_, rec)) = &mut self.recording {
            rec.spoiled = true;
        }
    }

    /// `size` bytes of request `req`'s body have arrived (all of it with `end_of_stream`).
    /// Returns whether the host should hold them ([`Flow::Pause`]): a request decided, or never
    /// waiting for its body, lets them through.
    pub fn body_data(&mut self, guard: &Guard, req: RequestId, size: usize, end_of_stream: bool) -> Flow {
        let Some(r) = self.requests.get_mut(&req) else { return Flow::Continue };
        let limit = match &r.wait {
            // The route's limit is applied once the head is decided.
            Wait::Keys { .. } => u64::MAX,
            Wait::Body(p) | Wait::Session { pending: p, .. } | Wait::Lookup { pending: p, .. } => p.max_body_bytes,
            Wait::Open => return Flow::Continue,
        };
        if size as u64 > limit {
            if let Some(pending) = r.wait.take_pending() {
                self.forget_waits(req);
                let verdict = guard.body_too_large(&pending);
                self.apply(req, verdict);
            }
            return Flow::Pause;
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        if matches!(r.wait, Wait::Body(_)) {
            self.actions.push_back(Action::ReadBody { req, size });
        } else {
            // Still waiting for the session, the keys or a lookup: keep the body for the
            // decision (a lookup's request has read it already, or never needs it).
            r.body_done = Some(size);
        }
        Flow::Pause
    }

    /// Request `req`'s whole body, as [`Action::ReadBody`] asked.
    pub fn body<S: SharedStore + ?Sized>(
        &mut self,
        guard: &Guard,
        store: &mut S,
        now_ms: u64,
        req: RequestId,
        body: &[u8],
    ) {
        let Some(pending) = self.requests.get_mut(&req).and_then(|r| match std::mem::take(&mut r.wait) {
            Wait::Body(pending) => Some(pending),
            other => {
                r.wait = other;
                None
            }
        }) else {
            return;
        };
        let step = guard.on_request_body(pending, body);
        self.advance(&mut Ctx { guard, store, now_ms }, req, step);
    }

    /// Whether request `req`'s response matters ([`Worker::response`]): only a logout's does, so
    /// a host need not read the others' status.
    pub fn awaits_response(&self, req: RequestId) -> bool {
        self.requests.get(&req).is_some_and(|r| r.logout.is_some())
    }

    /// Request `req`'s upstream answered with `status`: a logout that succeeded evicts its
    /// session for every worker.
    pub fn response<S: SharedStore + ?Sized>(
        &mut self,
        guard: &Guard,
        store: &mut S,
        now_ms: u64,
        req: RequestId,
        status: Option<u32>,
    ) {
        let Some(key) = self.requests.get_mut(&req).and_then(|r| r.logout.take()) else { return };
        if !status.is_some_and(|s| (200..300).contains(&s)) {
            return;
        }
        // The logout stays in the cache in place of the session: a callout in flight answers
        // for the session as it was before, and that answer must not be stored (see
        // `SessionCache::put`). Its claim stays: taking it would also take any claim made
        // since, and let a second callout out.
        if let Some(v) = guard.validator() {
            let hold_ms = v.timeout_ms() + CLAIM_GRACE_MS;
            let _ = SessionCache::new(&v.cache).log_out(store, &key, now_ms, hold_ms);
        }
        self.count(Stat::Logouts, 1);
        info!("logout: session {} evicted", short(&key));
    }

    /// Request `req` is gone (ended, or its client went away). Nothing may later try to resume
    /// it; the claims its callouts held are given up at once (the host will not deliver their
    /// answers to a context that is gone), so the next tick of a worker with waiters asks again
    /// rather than every waiter sitting out the claim's deadline.
    /// `now_ms` is asked only if a claim is given up: most requests hold none, and the time is
    /// a host call.
    pub fn dropped<S: SharedStore + ?Sized>(&mut self, store: &mut S, now_ms: impl FnOnce() -> u64, req: RequestId) {
        self.requests.remove(&req);
        self.forget_waits(req);
        self.awaiting_keys.retain(|c| *c != req);
        let mut orphaned = Vec::new();
        self.calls.retain(|_, call| match call {
            Call::Session { key, owner, .. } if *owner == req => {
                orphaned.push(key.clone());
                false
            }
            Call::Lookup { key, owner } if *owner == req => {
                orphaned.push(lookups::claim_key(key));
                false
            }
            _ => true,
        });
        self.tokens.retain(|_, id| self.calls.contains_key(id));
        if orphaned.is_empty() {
            return;
        }
        let now_ms = now_ms();
        for claim in orphaned {
            inflight::finish(store, &claim, now_ms, None);
        }
    }

    /// The host sent `call`; its answer will come with `token`.
    pub fn sent(&mut self, call: CallId, token: CallToken) {
        if self.calls.contains_key(&call) {
            self.tokens.insert(token, call);
        }
    }

    /// The host could not send `call` (`why`, for the log): it fails at once.
    pub fn not_sent<S: SharedStore + ?Sized>(
        &mut self,
        guard: &Guard,
        store: &mut S,
        now_ms: u64,
        call: CallId,
        why: String,
    ) {
        let Some(call) = self.calls.remove(&call) else { return };
        let ctx = &mut Ctx { guard, store, now_ms };
        match call {
            Call::Session { key, owner, .. } => self.session_not_sent(ctx, &key, owner, why),
            Call::Lookup { key, owner } => self.lookup_not_sent(ctx, key, owner, why),
            Call::Keys { provider } => self.keys_not_sent(ctx, provider, &why),
            Call::Discovery { provider } => self.discovery_not_sent(ctx, provider, &why),
        }
    }

    /// The answer to the callout sent with `token`: its `:status` (`None`: no answer, a
    /// timeout or a reset) and body. A token this worker did not send, or no longer waits for,
    /// is ignored.
    pub fn answer<S: SharedStore + ?Sized>(
        &mut self,
        guard: &Guard,
        store: &mut S,
        now_ms: u64,
        token: CallToken,
        status: Option<u32>,
        body: &[u8],
    ) {
        let Some(call) = self.tokens.remove(&token).and_then(|id| self.calls.remove(&id)) else { return };
        let ctx = &mut Ctx { guard, store, now_ms };
        match call {
            Call::Session { key, owner, asked_at_ms, claim_until_ms } => {
                self.session_answer(ctx, (&key, owner, asked_at_ms, claim_until_ms), status, body);
            }
            Call::Lookup { key, owner } => self.lookup_answer(ctx, key, owner, status, body),
            Call::Keys { provider } => self.keys_answer(ctx, provider, status, body),
            Call::Discovery { provider } => self.discovery_answer(ctx, provider, status, body),
        }
    }

    /// Whether the host should read the answer to `token` at all.
    pub fn awaits(&self, token: CallToken) -> bool {
        self.tokens.contains_key(&token)
    }

    /// Counts the remembered allows waiting for it, sends the JWK Set fetches that are
    /// due, decides again the requests that waited for keys past their deadline, looks for
    /// answers to callouts other workers own, and takes over from owners that did not answer in
    /// time.
    pub fn tick<S: SharedStore + ?Sized>(&mut self, guard: &Guard, store: &mut S, now_ms: u64) {
        self.count_tally();
        self.last_tick_ms = now_ms;
        self.fetch_now = false;
        // First, while the root context is still the one the host acts from: the fetches'
        // answers must come back to it.
        self.fetch_jwks(guard, now_ms);
        let ctx = &mut Ctx { guard, store, now_ms };
        self.recheck_keys(false, now_ms);
        self.tick_lookups(ctx);
        self.tick_sessions(ctx);
    }

    fn count_tally(&mut self) {
        self.actions.extend(self.tally.take().map(|(stat, n)| Action::Count(stat, n)));
    }

    /// How many requests and callouts the worker holds, for the simulation's bound on memory.
    pub fn held(&self) -> usize {
        self.requests.len()
            + self.waiting.values().map(Vec::len).sum::<usize>()
            + self.lookup_waiting.values().map(Vec::len).sum::<usize>()
            + self.awaiting_keys.len()
            + self.calls.len()
            + self.tokens.len()
    }

    fn count(&mut self, stat: Stat, n: u64) {
        if n > 0 {
            self.actions.push_back(Action::Count(stat, n));
            // What a remembered allow counts again when it answers (`allowed` is its own).
            if let Some((_, rec)) = self.recording.as_mut().filter(|_| stat != Stat::Allowed) {
                rec.counts.extend(std::iter::repeat_n(stat, usize::try_from(n).unwrap_or(0)));
            }
        }
    }

    fn call(&mut self, call: Call, from: Option<RequestId>, request: CalloutRequest) {
        let id = CallId(self.next_call);
        self.next_call += 1;
        self.calls.insert(id, call);
        self.actions.push_back(Action::Send { call: id, from, request });
    }

    fn set_wait(&mut self, req: RequestId, wait: Wait) {
        if let Some(r) = self.requests.get_mut(&req) {
            r.wait = wait;
        }
    }

    /// Takes request `req` out of every list of waiters.
    fn forget_waits(&mut self, req: RequestId) {
        for waiters in self.waiting.values_mut() {
            waiters.retain(|c| *c != req);
        }
        self.waiting.retain(|_, w| !w.is_empty());
        for waiters in self.lookup_waiting.values_mut() {
            waiters.retain(|c| *c != req);
        }
        self.lookup_waiting.retain(|_, w| !w.is_empty());
    }

    /// Lets request `req` go on: by its callback's return value if that is running, else by
    /// [`Action::Resume`].
    fn release(&mut self, req: RequestId) {
        match &mut self.current {
            Some(callback) if callback.req == req => callback.flow = Flow::Continue,
            _ => self.actions.push_back(Action::Resume { req }),
        }
    }

    /// Carries out `step` for request `req`.
    fn advance<S: SharedStore + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>, req: RequestId, step: Step) {
        if !self.requests.contains_key(&req) {
            return;
        }
        if !matches!(step, Step::Verdict(_) | Step::Session(_)) {
            self.spoil_recording();
        }
        match step {
            Step::Verdict(verdict) => self.apply(req, verdict),
            Step::Session(pending) => self.session(ctx, req, pending),
            Step::AwaitKeys => self.await_keys(ctx, req),
            Step::Resolve { key, pending } => self.resolve(ctx, req, key, pending),
            Step::ReadBody(pending) => self.read_body(ctx, req, pending),
        }
    }

    fn read_body<S: SharedStore + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>, req: RequestId, pending: Pending) {
        let Some(r) = self.requests.get_mut(&req) else { return };
        if let Some(size) = r.body_done {
            r.wait = Wait::Body(pending);
            self.actions.push_back(Action::ReadBody { req, size });
            return;
        }
        if ctx.guard.hold_headers_for_body() {
            // Envoy keeps the head paused only with the plugin's `allow_on_headers_stop_iteration`;
            // then the body callbacks still come.
            r.wait = Wait::Body(pending);
            return;
        }
        // Without that knob a paused head never sees its body: send the head (with the
        // verified identity) now and hold only the body until the decision.
        let headers = pending.upstream_headers.clone();
        r.headers_forwarded = true;
        r.wait = Wait::Body(pending);
        self.actions.push_back(Action::ForwardHead { req, headers });
        self.release(req);
    }

    /// Answers locally or lets the request go on with its identity headers.
    fn apply(&mut self, req: RequestId, verdict: Verdict) {
        let Some(r) = self.requests.get_mut(&req) else { return };
        r.wait = Wait::Open;
        match verdict {
            Verdict::Allow { headers, detail, audited, logout } => {
                if let Some((_, rec)) = self.recording.as_mut().filter(|(r, _)| *r == req) {
                    if audited.is_none() && logout.is_none() && !r.headers_forwarded {
                        rec.allowed = Some(headers.clone());
                    } else {
                        rec.spoiled = true;
                    }
                }
                r.logout = logout;
                let headers = if r.headers_forwarded { Vec::new() } else { headers };
                self.count(Stat::Allowed, 1);
                if audited.is_some() {
                    self.count(Stat::AuditWouldDeny, 1);
                    info!("{detail}");
                } else {
                    debug!("allow: {detail}");
                }
                let verdict = Verdict::Allow { headers, detail: String::new(), audited, logout: None };
                self.actions.push_back(Action::Decide { req, verdict });
                self.release(req);
            }
            Verdict::Deny(denial) => {
                self.spoil_recording();
                self.count(Stat::of_denial(denial.kind), 1);
                info!("deny {}: {}", denial.status, denial.detail);
                self.actions.push_back(Action::Decide { req, verdict: Verdict::Deny(denial) });
            }
        }
    }
}

/// A session key shortened for logs (it may hold a session id worth keeping out of them).
fn short(key: &str) -> String {
    let digest = crate::jwt::token_digest(key);
    format!("#{}", digest.get(..12).unwrap_or_default())
}

#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;

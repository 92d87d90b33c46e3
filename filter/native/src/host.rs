//! The dynamic-module glue: I/O only, as `filter/src/host.rs` is for the Wasm build. What
//! happens next is the core's [`Worker`]'s to say; this layer hands it each hook as an event
//! and carries out the actions it asks for.
//!
//! One module instance serves every worker thread. The configuration ([`Config`]) and the store
//! ([`store`]) are process-wide; each worker thread has its own [`Worker`] per configuration
//! ([`Local`], thread-local), as each Wasm VM has its own. Every hook of a stream runs on that
//! stream's worker thread, so an action for another request of the same worker is carried out
//! in that request's own context: queued, and posted to it through its scheduler
//! (`on_http_filter_scheduled`), never by touching its stream from another's hook.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{error, info, warn};

use crate::abi::{self, ConfigEnvoyPtr, FilterEnvoyPtr, SchedulerPtr};
use crate::core::header_map::HeaderMap;
use crate::core::protocol::{Action, Body, CallToken, Flow, Grant, Head, Recall, RequestId, Worker};
use crate::core::{Guard, Verdict};
use crate::envoy;
use crate::metrics::Metrics;
use crate::store::{ShardedStore, StoreHandle};
use crate::ticker::{self, TickSlot, EVENT_TICK};

/// The event that carries out the actions queued for a request.
pub const EVENT_DEFERRED: u64 = 2;

/// The most a worker keeps of its buffer for serialised request headers between requests: what
/// one request with headers far beyond the usual made it grow to is let go.
const KEPT_HEADER_BYTES: usize = 64 * 1024;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The store every worker thread shares, for the life of the process (as Envoy's shared data
/// outlives a configuration).
pub fn store() -> &'static ShardedStore {
    static STORE: OnceLock<ShardedStore> = OnceLock::new();
    STORE.get_or_init(ShardedStore::default)
}

/// Runs `f` on the value in `cell`; `None` (logged) if an outer call is using it. A host call
/// may come back into the module at once (a local reply runs the response hooks), so nothing
/// is borrowed across one, and a broken rule costs that call, not a panic.
fn with<T, R>(cell: &RefCell<T>, f: impl FnOnce(&mut T) -> R) -> Option<R> {
    match cell.try_borrow_mut() {
        Ok(mut value) => Some(f(&mut value)),
        Err(_) => {
            error!("the worker's state is in use by an outer call; this call goes on without it");
            None
        }
    }
}

/// One accepted configuration, shared by every worker thread.
#[derive(Debug)]
pub struct Config {
    /// The compiled configuration.
    pub guard: Guard,
    /// Its stats.
    pub metrics: Metrics,
}

impl Config {
    /// Compiles `json` (the same configuration the Wasm filter takes); `Err` says what to fix.
    pub fn new(envoy_config: ConfigEnvoyPtr, json: &[u8]) -> Result<Config, String> {
        let env = |name: &str| std::env::var(name).ok();
        let guard = crate::convert::compile(json, &env)?;
        let (version, hash) = (guard.policy_version(), guard.policy_version_hash());
        info!("configured; policy version {version:?} (policy_version_hash {hash})");
        if !guard.hold_headers_for_body() {
            warn!("{}", crate::core::config::EARLY_HEAD_WARNING);
        }
        let metrics = Metrics::define(envoy_config, hash);
        Ok(Config { guard, metrics })
    }
}

/// A request of this worker the worker may still act on.
#[derive(Debug)]
struct Slot {
    envoy: FilterEnvoyPtr,
    /// Made the first time something is posted to the request.
    scheduler: SchedulerPtr,
    /// Actions for it that came up in another request's hook.
    deferred: Vec<Action>,
    /// Envoy's ids of its callouts (unique per stream only) -> the worker's tokens.
    callouts: HashMap<u64, CallToken>,
}

impl Slot {
    fn new(envoy: FilterEnvoyPtr) -> Slot {
        Slot { envoy, scheduler: std::ptr::null_mut(), deferred: Vec::new(), callouts: HashMap::new() }
    }

    fn scheduler(&mut self) -> SchedulerPtr {
        if self.scheduler.is_null() {
            self.scheduler = envoy::scheduler_new(self.envoy);
        }
        self.scheduler
    }
}

/// One worker thread's state for one configuration.
#[derive(Debug)]
pub struct Local {
    config: Weak<Config>,
    worker: RefCell<Worker>,
    configured: Cell<bool>,
    draining: Cell<bool>,
    requests: RefCell<HashMap<RequestId, Slot>>,
    next_request: Cell<RequestId>,
    next_token: Cell<CallToken>,
    tick: Arc<TickSlot>,
    /// The buffer the request headers are serialised into, kept from one request to the next
    /// (the headers hook takes it, so a hook that runs inside another finds it empty and uses
    /// a fresh one).
    header_bytes: RefCell<Vec<u8>>,
}

thread_local! {
    static LOCALS: RefCell<Vec<Rc<Local>>> = const { RefCell::new(Vec::new()) };
}

impl Local {
    /// This thread's state for `config` (made on its first request; the states of
    /// configurations Envoy has let go are dropped then).
    pub fn of(config: &Arc<Config>) -> Option<Rc<Local>> {
        LOCALS.with(|locals| {
            with(locals, |locals| {
                if let Some(local) = locals.iter().find(|l| std::ptr::eq(l.config.as_ptr(), Arc::as_ptr(config))) {
                    return Rc::clone(local);
                }
                locals.retain(|l| l.config.strong_count() > 0);
                let local = Rc::new(Local {
                    config: Arc::downgrade(config),
                    worker: RefCell::default(),
                    configured: Cell::new(false),
                    draining: Cell::new(false),
                    requests: RefCell::default(),
                    next_request: Cell::new(1),
                    next_token: Cell::new(1),
                    tick: ticker::slot(),
                    header_bytes: RefCell::default(),
                });
                locals.push(Rc::clone(&local));
                local
            })
        })
    }

    /// Lends the ticker a live request's scheduler (`prefer`'s, if it is live) while the
    /// worker needs ticks.
    fn arm_ticker(&self, prefer: RequestId, now_ms: u64) {
        let Some(period) = with(&self.worker, |w| w.tick_period_ms()).flatten() else {
            self.tick.disarm(None);
            return;
        };
        let due = now_ms.saturating_add(period);
        let live = |id: RequestId| with(&self.requests, |rs| rs.contains_key(&id)).unwrap_or(false);
        if self.tick.owner().is_some_and(live) {
            self.tick.retime(due, period);
            return;
        }
        let lent = with(&self.requests, |rs| {
            let id = if rs.contains_key(&prefer) { prefer } else { *rs.keys().next()? };
            rs.get_mut(&id).map(|slot| (id, slot.scheduler()))
        });
        match lent.flatten() {
            Some((id, scheduler)) if !scheduler.is_null() => self.tick.arm(id, scheduler, due, period),
            _ => self.tick.disarm(None),
        }
    }

    fn new_request(&self) -> RequestId {
        let id = self.next_request.get();
        self.next_request.set(id.wrapping_add(1).max(1));
        id
    }

    fn new_token(&self) -> CallToken {
        let token = self.next_token.get();
        self.next_token.set(token.wrapping_add(1).max(1));
        token
    }
}

/// One request (the module's side of a stream).
#[derive(Debug)]
pub struct Filter {
    config: Arc<Config>,
    local: Rc<Local>,
    id: RequestId,
    envoy: FilterEnvoyPtr,
    /// Allowed by [`Worker::recall`]: the worker never held this request.
    recalled: Cell<bool>,
}

/// One hook's view: the configuration, this worker, the request the hook is for, the time.
struct Host<'a> {
    config: &'a Config,
    local: &'a Local,
    req: RequestId,
    envoy: FilterEnvoyPtr,
    now_ms: u64,
    /// In the body hook: the chunk just received is not in Envoy's buffer yet.
    received: bool,
}

impl Host<'_> {
    /// Feeds the worker one event, then carries out what it asks.
    fn run(&self, event: impl FnOnce(&mut Worker, &Guard, &mut StoreHandle<'static>, u64)) {
        with(&self.local.worker, |w| event(w, &self.config.guard, &mut StoreHandle(store()), self.now_ms));
        self.drain();
    }

    /// Takes the configuration on this worker's first request (its JWK Set fetches go out from
    /// that request), and ticks if a tick is due: the ticker only runs for workers with waiters.
    fn prepare(&self) {
        if !self.local.configured.replace(true) {
            self.run(Worker::configure);
        }
        let due = with(&self.local.worker, |w| w.poll_timeout()).flatten();
        if due.is_some_and(|due| due <= self.now_ms) {
            self.run(Worker::tick);
        }
    }

    fn drain(&self) {
        if self.local.draining.replace(true) {
            return;
        }
        while let Some(action) = with(&self.local.worker, Worker::poll_action).flatten() {
            self.carry_out(action);
        }
        self.local.draining.set(false);
        self.local.arm_ticker(self.req, self.now_ms);
    }

    fn carry_out(&self, action: Action) {
        if let Some(req) = action.request().filter(|req| *req != self.req) {
            self.defer(req, action);
            return;
        }
        let envoy = self.envoy;
        match action {
            Action::Count(stat, n) => self.config.metrics.add(envoy, stat, n),
            // The native build has no root context: a fetch the worker sends from it goes out
            // from the request whose hook is running, and its answer comes back to that request
            // (see the README's "Native build").
            Action::Send { call, request, .. } => match envoy::send_callout(envoy, &request) {
                Ok(callout_id) => {
                    let token = self.local.new_token();
                    // Its answer comes to this request, which the worker may not hold (a fetch
                    // sent while it is recalled): it is known from now on.
                    with(&self.local.requests, |rs| {
                        rs.entry(self.req).or_insert_with(|| Slot::new(envoy)).callouts.insert(callout_id, token)
                    });
                    with(&self.local.worker, |w| w.sent(call, token));
                }
                Err(why) => self.run(|w, g, s, now| w.not_sent(g, s, now, call, why)),
            },
            Action::ReadBody { .. } => {
                let body = envoy::body(envoy, self.received);
                self.run(|w, g, s, now| w.body(g, s, now, self.req, &body));
            }
            Action::Redecide { .. } => match envoy::header_bytes(envoy, abi::REQUEST_HEADER) {
                Some(bytes) => match HeaderMap::parse(&bytes) {
                    Ok(map) => self.decide_head(&map, Body::Follows),
                    Err(err) => envoy::refuse_unavailable(envoy, &err.to_string()),
                },
                None => envoy::refuse_unavailable(envoy, "the host gave no request headers"),
            },
            Action::ForwardHead { headers, .. } | Action::Decide { verdict: Verdict::Allow { headers, .. }, .. } => {
                for (name, value) in &headers {
                    envoy::set_request_header(envoy, name, Some(value));
                }
            }
            Action::Decide { verdict: Verdict::Deny(denial), .. } => {
                envoy::send_response(envoy, denial.status, &denial.headers, denial.body.as_bytes());
            }
            Action::Resume { .. } => envoy::continue_decoding(envoy),
        }
    }

    /// Queues `action` for request `req` and posts it there; a request that is gone is
    /// forgotten.
    fn defer(&self, req: RequestId, action: Action) {
        let posted = with(&self.local.requests, |rs| {
            rs.get_mut(&req).map(|slot| {
                slot.deferred.push(action);
                (slot.scheduler(), slot.deferred.len() == 1)
            })
        })
        .flatten();
        match posted {
            Some((scheduler, true)) => envoy::scheduler_commit(scheduler, EVENT_DEFERRED),
            Some((_, false)) => {} // posted already, not yet run
            None => {
                with(&self.local.worker, |w| w.dropped(&mut StoreHandle(store()), || self.now_ms, req));
            }
        }
    }

    /// Feeds the worker this request's head, without the identity headers a client sent.
    fn decide_head(&self, map: &HeaderMap<'_>, body: Body<'_>) {
        let head = Head::from_map(&self.config.guard, map);
        for name in &head.removed {
            envoy::set_request_header(self.envoy, name, None);
        }
        let body = head.body(body);
        let decided = with(&self.local.worker, |w| {
            w.head(&self.config.guard, &mut StoreHandle(store()), self.now_ms, self.req, &head.request(), body)
        });
        if decided.is_none() {
            envoy::refuse_unavailable(self.envoy, "the worker is busy");
        }
        self.drain();
    }
}

impl Filter {
    /// A request of `config` on this thread, for Envoy's stream `envoy`. Makes no host call:
    /// the stream is not ready for any before its first hook.
    pub fn new(config: &Arc<Config>, envoy: FilterEnvoyPtr) -> Option<Filter> {
        let local = Local::of(config)?;
        let id = local.new_request();
        Some(Filter { config: Arc::clone(config), local, id, envoy, recalled: Cell::new(false) })
    }

    fn host(&self, received: bool) -> Host<'_> {
        Host { config: &self.config, local: &self.local, req: self.id, envoy: self.envoy, now_ms: now_ms(), received }
    }

    /// Runs one of this request's hooks that the worker holds it in: other requests let go in
    /// it are resumed, this one by the return value.
    fn callback(&self, host: &Host<'_>, f: impl FnOnce(&Host<'_>) -> Flow) -> Flow {
        with(&self.local.requests, |rs| {
            rs.entry(self.id).or_insert_with(|| Slot::new(self.envoy));
        });
        let outer = with(&self.local.worker, |w| w.begin(self.id)).flatten();
        let flow = f(host);
        let released = with(&self.local.worker, |w| w.end(outer)).unwrap_or(Flow::Pause);
        flow.or(released)
    }

    /// Lets the request go as the worker allowed it before (see [`Worker::recall`]).
    /// `count_now` is always true here: this host never asks the worker to count in windows,
    /// whatever `stats_window_ms` says (an increment is an atomic add, not a call across a VM
    /// boundary, and a worker here has no timer to end a window with).
    fn allow_as_before(&self, grant: &Grant, count_now: bool) {
        self.recalled.set(true);
        // Added, not replaced: a remembered request carried no identity header.
        for (name, value) in &grant.headers {
            envoy::add_request_header(self.envoy, name, value);
        }
        for stat in grant.stats().filter(|_| count_now) {
            self.config.metrics.add(self.envoy, stat, 1);
        }
    }

    /// The request's headers arrived (`end_of_stream`: there is no body).
    pub fn on_request_headers(&self, end_of_stream: bool) -> Flow {
        let mut bytes = with(&self.local.header_bytes, std::mem::take).unwrap_or_default();
        let flow = self.request_headers(end_of_stream, &mut bytes);
        if bytes.capacity() <= KEPT_HEADER_BYTES {
            with(&self.local.header_bytes, |kept| *kept = bytes);
        }
        flow
    }

    /// [`Filter::on_request_headers`], the headers serialised into `bytes`.
    fn request_headers(&self, end_of_stream: bool, bytes: &mut Vec<u8>) -> Flow {
        self.config.metrics.record_policy_version(self.envoy);
        let host = self.host(false);
        host.prepare();
        if !envoy::header_bytes_into(self.envoy, abi::REQUEST_HEADER, bytes) {
            envoy::refuse_unavailable(self.envoy, "the host gave no request headers");
            return Flow::Pause;
        }
        let map = match HeaderMap::parse(bytes) {
            Ok(map) => map,
            Err(err) => {
                envoy::refuse_unavailable(self.envoy, &err.to_string());
                return Flow::Pause;
            }
        };
        let body = if end_of_stream {
            match with(&self.local.worker, |w| w.recall(&StoreHandle(store()), host.now_ms, &map)) {
                Some(Recall::Allow { grant, count_now }) => {
                    self.allow_as_before(&grant, count_now);
                    return Flow::Continue;
                }
                Some(Recall::Decide(key)) => Body::Absent(key),
                None => Body::Absent(None),
            }
        } else {
            Body::Follows
        };
        self.callback(&host, |host| {
            host.decide_head(&map, body);
            Flow::Pause
        })
    }

    /// Part of the body arrived (all of it with `end_of_stream`); `received`: in the body hook.
    pub fn on_request_body(&self, end_of_stream: bool, received: bool) -> Flow {
        if self.recalled.get() {
            return Flow::Continue;
        }
        let host = self.host(received);
        let size = envoy::body_size(self.envoy, received);
        self.callback(&host, |host| {
            let flow = with(&self.local.worker, |w| w.body_data(&self.config.guard, self.id, size, end_of_stream));
            host.drain();
            flow.unwrap_or(Flow::Pause)
        })
    }

    /// The upstream's answer arrived: only a logout's status matters.
    pub fn on_response_headers(&self) {
        if self.recalled.get() || with(&self.local.worker, |w| w.awaits_response(self.id)) != Some(true) {
            return;
        }
        let status = envoy::header(self.envoy, abi::RESPONSE_HEADER, ":status").and_then(|s| s.parse().ok());
        self.host(false).run(|w, g, s, now| w.response(g, s, now, self.id, status));
    }

    /// A callout of this request answered.
    pub fn on_callout_done(&self, callout_id: u64, status: Option<u32>, body: &[u8]) {
        let token = with(&self.local.requests, |rs| rs.get_mut(&self.id).and_then(|s| s.callouts.remove(&callout_id)));
        let Some(token) = token.flatten() else { return };
        if with(&self.local.worker, |w| w.awaits(token)) != Some(true) {
            return;
        }
        self.host(false).run(|w, g, s, now| w.answer(g, s, now, token, status, body));
    }

    /// Something was posted to this request: a tick of its worker, or actions for it.
    pub fn on_scheduled(&self, event: u64) {
        let host = self.host(false);
        if event == EVENT_TICK {
            host.run(Worker::tick);
            return;
        }
        let deferred = with(&self.local.requests, |rs| rs.get_mut(&self.id).map(|s| std::mem::take(&mut s.deferred)));
        for action in deferred.flatten().unwrap_or_default() {
            host.carry_out(action);
        }
        host.drain();
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        // A remembered allow leaves the map empty as a rule: no hash of the id for it then.
        let slot = with(&self.local.requests, |rs| if rs.is_empty() { None } else { rs.remove(&self.id) }).flatten();
        // A request that ends (or whose client goes away) while waiting must leave no trace. A
        // remembered allow never reached the worker.
        if !self.recalled.get() {
            with(&self.local.worker, |w| w.dropped(&mut StoreHandle(store()), now_ms, self.id));
        }
        let Some(slot) = slot else { return };
        // Its scheduler may be the ticker's: taken back before it is freed.
        self.local.tick.disarm(Some(self.id));
        envoy::scheduler_delete(slot.scheduler);
        // Other requests may still wait: one of them lends its scheduler now.
        self.local.arm_ticker(self.id, now_ms());
    }
}

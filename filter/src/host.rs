//! The proxy-wasm glue: I/O only. What happens next is the core's [`Worker`]'s to say; this
//! layer hands it each callback as an event and carries out the actions it asks for.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as HostAction, BufferType, ContextType, MapType};

use crate::core::header_map::HeaderMap;
use crate::core::protocol::{Action, Body, Flow, Grant, Head, Recall, RequestId, Worker};
use crate::core::{Guard, Verdict};
use crate::metrics::Metrics;
use crate::raw_headers::with_request_headers;
use crate::store::HostStore;

fn now_ms() -> u64 {
    let now = hostcalls::get_current_time().unwrap_or(UNIX_EPOCH);
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A worker's protocol state, shared by its root context and every request context.
///
/// A host call may come back into the filter at once: a local reply runs the response
/// callbacks, and resuming a request may run its body callbacks, before the call returns. So
/// the [`Worker`] is only borrowed for one of its methods at a time, never across a host call
/// ([`WorkerCell::with`] does without it, rather than panic, if that were ever broken: a panic
/// kills the VM for every later request on that worker), and actions are carried out by the
/// outermost callback only.
#[derive(Debug, Default)]
pub struct WorkerCell {
    worker: RefCell<Worker>,
    draining: Cell<bool>,
    tick_ms: Cell<Option<u64>>,
}

impl WorkerCell {
    /// Runs `f` on the worker; `None` (logged) if an outer call is using it.
    fn with<T>(&self, f: impl FnOnce(&mut Worker) -> T) -> Option<T> {
        match self.worker.try_borrow_mut() {
            Ok(mut worker) => Some(f(&mut worker)),
            Err(_) => {
                error!("the worker's state is in use by an outer call; this call goes on without it");
                None
            }
        }
    }
}

/// One callback's view: the configuration, the stats, the worker, the time, and which context
/// the host acts on.
struct Host<'a> {
    guard: &'a Guard,
    metrics: &'a Metrics,
    cell: &'a WorkerCell,
    now_ms: u64,
    /// The context the host acts on now (`None`: the root context).
    effective: Cell<Option<RequestId>>,
}

impl Host<'_> {
    /// Feeds the worker one event, then carries out what it asks.
    fn run(&self, event: impl FnOnce(&mut Worker, &Guard, &mut HostStore, u64)) {
        self.cell.with(|w| event(w, self.guard, &mut HostStore, self.now_ms));
        self.drain();
    }

    fn drain(&self) {
        if self.cell.draining.replace(true) {
            return;
        }
        while let Some(action) = self.cell.with(Worker::poll_action).flatten() {
            self.carry_out(action);
        }
        self.cell.draining.set(false);
        self.sync_tick();
    }

    /// Asks the host for the tick period the worker needs now (a host call only on a change).
    fn sync_tick(&self) {
        let period = self.cell.with(|w| w.tick_period_ms()).flatten();
        if self.cell.tick_ms.replace(period) != period {
            let _ = hostcalls::set_tick_period(Duration::from_millis(period.unwrap_or(0)));
        }
    }

    fn carry_out(&self, action: Action) {
        // A request whose client went away is forgotten by `enter`, its callouts with it.
        if action.request().is_some_and(|req| !self.enter(req)) {
            return;
        }
        match action {
            Action::Count(stat, n) => self.metrics.add(stat, n),
            Action::Send { call, from, request } => {
                // Answers come back to the context that sent: the root's fetches are asked for
                // before any request's action, while the root is still the one.
                let sent = if from.is_none() && self.effective.get().is_some() {
                    Err("the root context is not the current one".to_owned())
                } else {
                    let headers: Vec<(&str, &str)> =
                        request.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                    let body = (!request.body.is_empty()).then_some(request.body.as_slice());
                    let timeout = Duration::from_millis(request.timeout_ms);
                    hostcalls::dispatch_http_call(&request.cluster, headers, body, Vec::new(), timeout).map_err(|s| {
                        format!("{s:?} from the host: is there an Envoy cluster named {:?}?", request.cluster)
                    })
                };
                match sent {
                    Ok(token) => self.cell.with(|w| w.sent(call, token)).unwrap_or_default(),
                    Err(why) => self.run(|w, g, s, now| w.not_sent(g, s, now, call, why)),
                }
            }
            Action::ReadBody { req, size } => {
                let body = match size {
                    0 => None,
                    _ => hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size).ok().flatten(),
                };
                self.run(|w, g, s, now| w.body(g, s, now, req, body.as_deref().unwrap_or_default()));
            }
            Action::Redecide { req } => {
                if let Err(why) = with_request_headers(|map| self.decide_head(req, map, Body::Follows)) {
                    refuse_unavailable(&why);
                    self.effective.set(None);
                }
            }
            Action::ForwardHead { headers, .. } | Action::Decide { verdict: Verdict::Allow { headers, .. }, .. } => {
                set_headers(&headers);
            }
            Action::Decide { verdict: Verdict::Deny(denial), .. } => {
                let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
                headers.extend(denial.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                let _ = hostcalls::send_http_response(denial.status, headers, Some(denial.body.as_bytes()));
                // The reply may have run other callbacks: act on no context blindly.
                self.effective.set(None);
            }
            Action::Resume { .. } => {
                let _ = hostcalls::resume_http_request();
                self.effective.set(None);
            }
        }
    }

    /// Makes request `req` the context the host acts on; a request whose client went away is
    /// forgotten.
    fn enter(&self, req: RequestId) -> bool {
        if self.effective.get() == Some(req) {
            return true;
        }
        if hostcalls::set_effective_context(req).is_err() {
            self.cell.with(|w| w.dropped(&mut HostStore, || self.now_ms, req));
            return false;
        }
        self.effective.set(Some(req));
        true
    }

    /// Feeds the worker request `req`'s head, without the identity headers a client sent (see
    /// [`Head`]). A request with no body comes with what [`Worker::recall`] gave for it.
    fn decide_head(&self, req: RequestId, map: &HeaderMap<'_>, body: Body<'_>) {
        let head = Head::from_map(self.guard, map);
        for name in &head.removed {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
        }
        let body = head.body(body);
        let decided = self.cell.with(|w| w.head(self.guard, &mut HostStore, self.now_ms, req, &head.request(), body));
        if decided.is_none() {
            // Never left waiting for a decision that will not come (see `WorkerCell`).
            refuse_unavailable("the worker is busy");
        }
        self.drain();
    }
}

/// Answers the current request with 503: no decision can be made for it, for the reason `why`
/// (logged).
fn refuse_unavailable(why: &str) {
    error!("{why}; refusing the request");
    let body = br#"{"error":"unavailable"}"#;
    let _ = hostcalls::send_http_response(503, vec![("content-type", "application/json")], Some(body));
}

fn set_headers(headers: &[(String, String)]) {
    for (name, value) in headers {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }
}

/// The `:status` of a callout's answer; `None` when the host gives no headers (timeout, reset).
fn response_status(num_headers: usize) -> Option<u32> {
    if num_headers == 0 {
        return None;
    }
    hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten().and_then(|s| s.parse().ok())
}

/// The answer to a callout, for whichever context receives it.
fn on_answer(host: &Host<'_>, token: u32, num_headers: usize, body_size: usize) {
    if host.cell.with(|w| w.awaits(token)) != Some(true) {
        return;
    }
    let status = response_status(num_headers);
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
    host.run(|w, g, s, now| w.answer(g, s, now, token, status, &body));
}

/// The root context: compiles the configuration and hands each request what it needs.
#[derive(Default)]
pub struct GuardRoot {
    guard: Option<Rc<Guard>>,
    metrics: Metrics,
    worker: Rc<WorkerCell>,
}

impl GuardRoot {
    fn host<'a>(&'a self, guard: &'a Guard) -> Host<'a> {
        Host { guard, metrics: &self.metrics, cell: &self.worker, now_ms: now_ms(), effective: Cell::new(None) }
    }
}

impl Context for GuardRoot {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if let Some(guard) = &self.guard {
            on_answer(&self.host(guard), token_id, num_headers, body_size);
        }
    }

    fn on_done(&mut self) -> bool {
        // Envoy is done with this root context (a drain, a new VM): the counts still waiting
        // for their `stats_window_ms` window to end are counted now, not lost with it.
        if let Some(guard) = &self.guard {
            self.host(guard).run(|w, _, _, _| w.count_in_windows(0));
        }
        true
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
            Ok(mut guard) => {
                guard.set_terse(true);
                let (version, hash) = (guard.policy_version(), guard.policy_version_hash());
                info!("configured; policy version {version:?} (policy_version_hash {hash})");
                if !guard.hold_headers_for_body() {
                    // An explicit opt-in that lets the upstream see requests later denied: say
                    // so each time such a configuration is taken.
                    warn!("{}", crate::core::config::EARLY_HEAD_WARNING);
                }
                self.metrics.set_policy_version(hash);
                let guard = Rc::new(guard);
                self.guard = Some(Rc::clone(&guard));
                self.host(&guard).run(|w, g, s, now| {
                    w.configure(g, s, now);
                    w.count_in_windows(g.stats_window_ms());
                });
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
            Some(guard) => self.host(guard).run(Worker::tick),
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
            recalled: Cell::new(false),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request.
struct GuardHttp {
    id: u32,
    /// `None` only if a request arrives before a configuration was accepted: fail closed.
    guard: Option<Rc<Guard>>,
    metrics: Metrics,
    worker: Rc<WorkerCell>,
    /// Allowed by [`Worker::recall`]: the worker never held this request, and nothing about
    /// it is left to tell it.
    recalled: Cell<bool>,
}

impl GuardHttp {
    fn host<'a>(&'a self, guard: &'a Guard) -> Host<'a> {
        Host {
            guard,
            metrics: &self.metrics,
            cell: &self.worker,
            now_ms: now_ms(),
            effective: Cell::new(Some(self.id)),
        }
    }

    /// Runs one of this request's callbacks: other requests let go in it are resumed, this one
    /// by the return value.
    fn callback(&self, host: &Host<'_>, f: impl FnOnce(&Host<'_>) -> Flow) -> HostAction {
        let outer = self.worker.with(|w| w.begin(self.id)).flatten();
        let flow = f(host);
        let released = self.worker.with(|w| w.end(outer)).unwrap_or(Flow::Pause);
        match flow.or(released) {
            Flow::Continue => HostAction::Continue,
            Flow::Pause => HostAction::Pause,
        }
    }

    /// Lets the request go as the worker allowed it before (see [`Worker::recall`]), counting
    /// its stats now or leaving them to the tick that ends the counting window.
    fn allow_as_before(&self, host: &Host<'_>, grant: &Grant, count_now: bool) -> HostAction {
        self.recalled.set(true);
        // Added, not replaced: a remembered request carried no identity header (the memo never
        // remembers one that did, nor ignores their names), and adding skips Envoy's search
        // for the old value.
        for (name, value) in &grant.headers {
            let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value);
        }
        if count_now {
            for stat in grant.stats() {
                self.metrics.add(stat, 1);
            }
        } else {
            host.sync_tick();
        }
        HostAction::Continue
    }

    fn body(&self, size: usize, end_of_stream: bool) -> HostAction {
        let Some(guard) = self.guard.clone() else { return HostAction::Continue };
        self.callback(&self.host(&guard), |host| {
            let flow = host.cell.with(|w| w.body_data(host.guard, self.id, size, end_of_stream));
            host.drain();
            flow.unwrap_or(Flow::Pause)
        })
    }
}

impl Context for GuardHttp {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if let Some(guard) = self.guard.clone() {
            on_answer(&self.host(&guard), token_id, num_headers, body_size);
        }
    }
}

impl HttpContext for GuardHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> HostAction {
        let Some(guard) = self.guard.clone() else {
            refuse_unavailable("a request before any accepted configuration");
            return HostAction::Pause;
        };
        let host = self.host(&guard);
        let decided = with_request_headers(|map| {
            let body = if end_of_stream {
                match self.worker.with(|w| w.recall(&HostStore, host.now_ms, map)) {
                    Some(Recall::Allow { grant, count_now }) => return self.allow_as_before(&host, &grant, count_now),
                    Some(Recall::Decide(key)) => Body::Absent(key),
                    None => Body::Absent(None),
                }
            } else {
                Body::Follows
            };
            self.callback(&host, |host| {
                host.decide_head(self.id, map, body);
                Flow::Pause
            })
        });
        decided.unwrap_or_else(|why| {
            refuse_unavailable(&why);
            HostAction::Pause
        })
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> HostAction {
        self.body(body_size, end_of_stream)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> HostAction {
        // Trailers end the body: a request with trailers never sees end_of_stream on its body.
        let size = self.get_http_request_body(0, usize::MAX).map_or(0, |b| b.len());
        self.body(size, true)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> HostAction {
        // Only a logout's answer matters; the others' status is not even read.
        if self.recalled.get() || self.worker.with(|w| w.awaits_response(self.id)) != Some(true) {
            return HostAction::Continue;
        }
        if let Some(guard) = self.guard.clone() {
            let status = self.get_http_response_header(":status").and_then(|s| s.parse().ok());
            self.host(&guard).run(|w, g, s, now| w.response(g, s, now, self.id, status));
        }
        HostAction::Continue
    }
}

impl Drop for GuardHttp {
    fn drop(&mut self) {
        // A request that ends (or whose client goes away) while waiting must leave no trace.
        if !self.recalled.get() {
            self.worker.with(|w| w.dropped(&mut HostStore, now_ms, self.id));
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
            outer.begin(7);
            cell.with(|w| w.begin(8))
        });
        assert_eq!(inner, Some(None), "the inner call did without");
        assert_eq!(cell.with(|w| w.end(None)), Some(Flow::Pause));
    }
}

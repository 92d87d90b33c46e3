//! The proxy-wasm glue: I/O only. Every decision is the core's.

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType};

use crate::core::{Denial, DenialKind, Guard, HeadersStep, PendingBody, RequestHead, Verdict};

/// The filter's counters, as Envoy shows them (`wasmcustom.playbook_guard.<name>`).
#[derive(Debug, Default, Clone, Copy)]
struct Metrics {
    allowed: Option<u32>,
    denied: Option<u32>,
    unauthenticated: Option<u32>,
    bad_request: Option<u32>,
    payload_too_large: Option<u32>,
    audit_would_deny: Option<u32>,
}

impl Metrics {
    fn define() -> Self {
        let counter =
            |name: &str| match hostcalls::define_metric(MetricType::Counter, &format!("playbook_guard.{name}")) {
                Ok(id) => Some(id),
                Err(status) => {
                    warn!("cannot define metric {name}: {status:?}");
                    None
                }
            };
        Metrics {
            allowed: counter("allowed"),
            denied: counter("denied"),
            unauthenticated: counter("unauthenticated"),
            bad_request: counter("bad_request"),
            payload_too_large: counter("payload_too_large"),
            audit_would_deny: counter("audit_would_deny"),
        }
    }

    fn bump(id: Option<u32>) {
        if let Some(id) = id {
            // A failed stat update must never fail the request.
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

/// The root context: compiles the configuration and hands each request a reference to it.
#[derive(Default)]
pub struct GuardRoot {
    guard: Option<Rc<Guard>>,
    metrics: Metrics,
}

impl Context for GuardRoot {}

impl RootContext for GuardRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.metrics = Metrics::define();
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let env = |name: &str| std::env::var(name).ok();
        match Guard::from_json(&config, &env) {
            Ok(guard) => {
                info!("configured; policy version {:?}", guard.policy_version());
                self.guard = Some(Rc::new(guard));
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

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(GuardHttp {
            guard: self.guard.clone(),
            metrics: self.metrics,
            pending: None,
            headers_forwarded: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request.
struct GuardHttp {
    /// `None` only if a request arrives before a configuration was accepted: fail closed.
    guard: Option<Rc<Guard>>,
    metrics: Metrics,
    pending: Option<PendingBody>,
    /// The request headers already went upstream (a body-sourced route without
    /// `hold_headers_for_body`); they can no longer be changed.
    headers_forwarded: bool,
}

impl Context for GuardHttp {}

impl GuardHttp {
    fn now(&self) -> u64 {
        self.get_current_time().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    /// Carries out a verdict: sets the identity headers and goes on, or answers locally.
    fn apply(&mut self, verdict: Verdict) -> Action {
        match verdict {
            Verdict::Allow { headers, detail, audited } => {
                if !self.headers_forwarded {
                    for (name, value) in &headers {
                        self.set_http_request_header(name, Some(value));
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
            Verdict::Deny(denial) => self.deny(denial),
        }
    }

    fn deny(&mut self, denial: Denial) -> Action {
        let counter = match denial.kind {
            DenialKind::Unauthenticated => self.metrics.unauthenticated,
            DenialKind::Forbidden => self.metrics.denied,
            DenialKind::BadRequest => self.metrics.bad_request,
            DenialKind::PayloadTooLarge => self.metrics.payload_too_large,
        };
        Metrics::bump(counter);
        info!("deny {}: {}", denial.status, denial.detail);
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(denial.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        self.send_http_response(denial.status, headers, Some(denial.body.as_bytes()));
        Action::Pause
    }

    /// Decides a buffered request once its whole body is here.
    fn decide_body(&mut self, body_size: usize) -> Action {
        let (Some(guard), Some(pending)) = (self.guard.clone(), self.pending.take()) else {
            return Action::Continue;
        };
        let body = if body_size == 0 { None } else { self.get_http_request_body(0, body_size) };
        self.apply(guard.on_request_body(&pending, body.as_deref().unwrap_or_default()))
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
        // Identity headers are ours alone: whatever a client sent under those names goes first.
        for name in guard.identity_headers() {
            self.set_http_request_header(name, None);
        }
        let headers: Vec<(String, String)> = self
            .get_http_request_headers_bytes()
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        let pseudo = |name: &str| headers.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str());
        let head = RequestHead { method: pseudo(":method"), path: pseudo(":path"), headers: &headers };
        match guard.on_request_headers(&head, self.now()) {
            HeadersStep::Verdict(verdict) => self.apply(verdict),
            HeadersStep::ReadBody(pending) => {
                if end_of_stream {
                    self.pending = Some(pending);
                    return self.decide_body(0);
                }
                if guard.hold_headers_for_body() {
                    // Envoy passes this Pause on as StopIteration only with the plugin's
                    // `allow_on_headers_stop_iteration`; the body callbacks still come.
                    self.pending = Some(pending);
                    return Action::Pause;
                }
                // Without that knob a paused head never sees its body: send the head (with the
                // verified identity) now and hold only the body until the decision.
                for (name, value) in &pending.upstream_headers {
                    self.set_http_request_header(name, Some(value));
                }
                self.headers_forwarded = true;
                self.pending = Some(pending);
                Action::Continue
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(guard), Some(pending)) = (&self.guard, &self.pending) else {
            return Action::Continue;
        };
        if body_size as u64 > pending.max_body_bytes {
            let verdict = guard.body_too_large(pending);
            self.pending = None;
            return self.apply(verdict);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.decide_body(body_size)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the body: a request with trailers never sees end_of_stream on its body.
        if self.pending.is_none() {
            return Action::Continue;
        }
        let size = self.get_http_request_body(0, usize::MAX).map_or(0, |b| b.len());
        self.decide_body(size)
    }
}

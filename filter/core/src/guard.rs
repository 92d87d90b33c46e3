//! The request pipeline: route -> token -> JWT -> policy -> verdict (SPEC section 1).
//!
//! # Call order
//! 1. [`Guard::from_json`] once per configuration (Envoy's `on_configure`); share the result.
//! 2. [`Guard::on_request_headers`] for each request. It answers a [`Verdict`], or
//!    [`HeadersStep::ReadBody`] when the route's playbook path is in the body.
//! 3. Only after `ReadBody`: buffer up to [`PendingBody::max_body_bytes`], then
//!    [`Guard::on_request_body`] with the whole body (empty if there is none), or
//!    [`Guard::body_too_large`] once the limit is passed.
//!
//! Nothing here reads a clock, the environment or the network: the host passes `now` and the
//! environment in, so every decision can be replayed in a test.

use std::fmt::Write as _;

use crate::config::{parse_json, ConfigError, HeaderNames, Mode, PluginConfig};
use crate::jwt::{token_kind, AuthError, TokenKind, VerifiedToken, Verifier};
use crate::path::{normalize_request_path, PlaybookPath};
use crate::policy::Policy;
use crate::routes::{PlaybookError, PlaybookSource, RouteAction, Routes};
use crate::token::TokenSources;
use crate::verdict::{Denial, Verdict};

/// The facts of a request head the pipeline needs.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path`, as received (query string included).
    pub path: &'a str,
    /// All headers; names are compared case-insensitively.
    pub headers: &'a [(String, String)],
}

/// Who the request is from, once its token verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user's id (`sub`).
    pub user_id: Option<String>,
    /// The user's email.
    pub email: Option<String>,
    /// The user's display name.
    pub display_name: Option<String>,
    /// The user's roles.
    pub roles: Vec<String>,
    /// The session key (`sid`, `jti` or the token's SHA-256).
    pub session_key: String,
}

impl From<VerifiedToken> for Identity {
    fn from(t: VerifiedToken) -> Self {
        Identity {
            user_id: t.subject,
            email: t.email,
            display_name: t.name,
            roles: t.roles,
            session_key: t.session_key,
        }
    }
}

/// What [`Guard::on_request_headers`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum HeadersStep {
    /// Decided from the head alone.
    Verdict(Verdict),
    /// The playbook path is in the body: buffer it and call [`Guard::on_request_body`].
    ReadBody(PendingBody),
}

/// An authenticated request waiting for its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBody {
    route_id: String,
    permission: String,
    source: PlaybookSource,
    identity: Identity,
    /// The most bytes to buffer; more is [`Guard::body_too_large`].
    pub max_body_bytes: u64,
    /// The identity headers, for a host that forwards the headers before the body is decided
    /// (see [`Guard::hold_headers_for_body`]).
    pub upstream_headers: Vec<(String, String)>,
}

/// A compiled, immutable configuration: everything a request decision needs.
#[derive(Debug, Clone)]
pub struct Guard {
    mode: Mode,
    tokens: TokenSources,
    verifier: Verifier,
    routes: Routes,
    policy: Policy,
    headers: HeaderNames,
    allow_cors_preflight: bool,
    hold_headers_for_body: bool,
}

impl Guard {
    /// Parses and compiles the plugin configuration (JSON). `env` reads the VM's environment
    /// variables (HMAC secrets). Errors name the field path: `providers[1].jwks.keys[0].n: ...`.
    pub fn from_json(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let cfg: PluginConfig = parse_json(json)?;
        Self::compile(&cfg, env)
    }

    /// Compiles parsed configuration.
    pub fn compile(cfg: &PluginConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        if cfg.validation.is_some() {
            // Refused rather than ignored: a configuration asking for session validation must
            // not run without it.
            return Err(ConfigError::new(
                "validation",
                "the session-validation callout is not in this build yet; remove `validation` to use JWT roles",
            ));
        }
        if cfg.opaque_tokens {
            return Err(ConfigError::new(
                "opaque_tokens",
                "opaque session tokens need a `validation` service to vouch for them",
            ));
        }
        for (field, name) in [
            ("headers.user_id", &cfg.headers.user_id),
            ("headers.email", &cfg.headers.email),
            ("headers.display_name", &cfg.headers.display_name),
            ("headers.roles", &cfg.headers.roles),
        ] {
            let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok || name.starts_with(':') {
                return Err(ConfigError::new(field, format!("{name:?} is not a valid header name")));
            }
        }
        let mut headers = cfg.headers.clone();
        for name in [&mut headers.user_id, &mut headers.email, &mut headers.display_name, &mut headers.roles] {
            *name = name.to_ascii_lowercase();
        }
        Ok(Guard {
            mode: cfg.mode,
            tokens: TokenSources::compile(&cfg.token_sources).map_err(|e| e.within("token_sources"))?,
            verifier: Verifier::compile(&cfg.providers, cfg.clock_skew_secs, env).map_err(|e| e.within("providers"))?,
            routes: Routes::compile(&cfg.routes, cfg.default_action, cfg.max_body_bytes)
                .map_err(|e| e.within("routes"))?,
            policy: Policy::compile(&cfg.policy).map_err(|e| e.within("policy"))?,
            headers,
            allow_cors_preflight: cfg.allow_cors_preflight,
            hold_headers_for_body: cfg.hold_headers_for_body,
        })
    }

    /// The active policy's `version`.
    pub fn policy_version(&self) -> &str {
        self.policy.version()
    }

    /// Whether the host should hold a body-sourced request's headers until the decision
    /// (`hold_headers_for_body`), rather than forward them with [`PendingBody::upstream_headers`].
    pub fn hold_headers_for_body(&self) -> bool {
        self.hold_headers_for_body
    }

    /// The identity header names; the host removes these from every request before deciding,
    /// so a client can never supply its own.
    pub fn identity_headers(&self) -> [&str; 4] {
        let h = &self.headers;
        [&h.user_id, &h.email, &h.display_name, &h.roles]
    }

    /// Decides what it can from the request head, at time `now` (seconds since the epoch).
    pub fn on_request_headers(&self, head: &RequestHead<'_>, now: u64) -> HeadersStep {
        let path = match normalize_request_path(head.path) {
            Ok(path) => path,
            Err(e) => {
                return HeadersStep::Verdict(self.finish(Err(Denial::bad_request("invalid_path", e.to_string())), None))
            }
        };
        if self.allow_cors_preflight && is_cors_preflight(head) {
            return HeadersStep::Verdict(allowed(Vec::new(), "CORS preflight".into()));
        }
        let route = self.routes.find(head.method, &path);
        let (permission, source) = match route.action {
            RouteAction::Public => {
                return HeadersStep::Verdict(allowed(Vec::new(), format!("route={} public", route.id)))
            }
            RouteAction::Deny => return HeadersStep::Verdict(self.finish(Err(Denial::no_route()), None)),
            RouteAction::Authenticate => {
                return HeadersStep::Verdict(match self.authenticate(head, now) {
                    Ok(id) => self.finish(Ok(format!("route={} authenticated", route.id)), Some(&id)),
                    Err(e) => self.finish(Err(Denial::unauthenticated(&e)), None),
                });
            }
            RouteAction::Authorize { permission, source } => (permission, source),
        };
        let identity = match self.authenticate(head, now) {
            Ok(id) => id,
            Err(e) => return HeadersStep::Verdict(self.finish(Err(Denial::unauthenticated(&e)), None)),
        };
        if source.needs_body() {
            return HeadersStep::ReadBody(PendingBody {
                route_id: route.id.to_owned(),
                permission: permission.clone(),
                source: source.clone(),
                upstream_headers: self.identity_header_values(&identity),
                identity,
                max_body_bytes: route.max_body_bytes,
            });
        }
        let playbooks = source.from_head(&path, head.headers);
        HeadersStep::Verdict(self.authorize(route.id, permission, playbooks, &identity))
    }

    /// Decides a request whose playbook path is in `body` (the whole body, possibly empty).
    pub fn on_request_body(&self, pending: &PendingBody, body: &[u8]) -> Verdict {
        if body.len() as u64 > pending.max_body_bytes {
            return self.body_too_large(pending);
        }
        let playbooks = pending.source.from_body(body);
        self.authorize(&pending.route_id, &pending.permission, playbooks, &pending.identity)
    }

    /// The answer for a body over [`PendingBody::max_body_bytes`].
    pub fn body_too_large(&self, pending: &PendingBody) -> Verdict {
        self.finish(Err(Denial::too_large(pending.max_body_bytes)), Some(&pending.identity))
    }

    fn authenticate(&self, head: &RequestHead<'_>, now: u64) -> Result<Identity, AuthError> {
        let (token, _) = self.tokens.find(head.headers).ok_or(AuthError::Missing)?;
        match token_kind(token) {
            TokenKind::Jws => self.verifier.verify(token, now).map(Identity::from),
            TokenKind::Opaque => Err(AuthError::OpaqueNotAccepted),
        }
    }

    fn authorize(
        &self,
        route_id: &str,
        permission: &str,
        playbooks: Result<Vec<PlaybookPath>, PlaybookError>,
        identity: &Identity,
    ) -> Verdict {
        let playbooks = match playbooks {
            Ok(p) => p,
            Err(e) => {
                let reason = match e {
                    PlaybookError::Path(_) => "invalid_playbook_path",
                    _ => "playbook_not_found",
                };
                return self.finish(Err(Denial::bad_request(reason, format!("route={route_id} {e}"))), Some(identity));
            }
        };
        let mut detail = format!("route={route_id} permission={permission}");
        for playbook in &playbooks {
            let decision = self.policy.decide(&identity.roles, permission, playbook);
            let _ = write!(detail, " playbook={playbook} rule=\"{}\"", decision.rule);
            if !decision.allowed {
                let _ = write!(
                    detail,
                    " user={} roles={}",
                    identity.user_id.as_deref().unwrap_or("-"),
                    identity.roles.join(",")
                );
                return self.finish(Err(Denial::forbidden(playbook.as_str(), permission, detail)), Some(identity));
            }
        }
        self.finish(Ok(detail), Some(identity))
    }

    /// Applies the mode and attaches the identity headers.
    fn finish(&self, outcome: Result<String, Denial>, identity: Option<&Identity>) -> Verdict {
        let headers = identity.map(|id| self.identity_header_values(id)).unwrap_or_default();
        match (outcome, self.mode) {
            (Ok(detail), _) => allowed(headers, detail),
            (Err(denial), Mode::Enforce) => Verdict::Deny(denial),
            (Err(denial), Mode::Audit) => Verdict::Allow {
                headers,
                detail: format!("audit: would deny: {}", denial.detail),
                audited: Some(denial),
            },
        }
    }

    fn identity_header_values(&self, id: &Identity) -> Vec<(String, String)> {
        let h = &self.headers;
        let mut out = Vec::with_capacity(4);
        for (name, value) in [(&h.user_id, &id.user_id), (&h.email, &id.email), (&h.display_name, &id.display_name)] {
            if let Some(v) = value {
                out.push((name.clone(), header_safe(v)));
            }
        }
        out.push((h.roles.clone(), header_safe(&id.roles.join(","))));
        out
    }
}

fn allowed(headers: Vec<(String, String)>, detail: String) -> Verdict {
    Verdict::Allow { headers, detail, audited: None }
}

/// Claims end up in header values: drop characters a header cannot carry.
fn header_safe(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).collect()
}

fn is_cors_preflight(head: &RequestHead<'_>) -> bool {
    let has = |name: &str| head.headers.iter().any(|(n, v)| n.eq_ignore_ascii_case(name) && !v.is_empty());
    head.method == "OPTIONS" && has("origin") && has("access-control-request-method")
}

#[cfg(test)]
mod tests;

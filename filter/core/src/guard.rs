//! The request pipeline: route -> token -> JWT -> session -> body -> policy -> verdict (SPEC section 1).
//!
//! # Call order
//! 1. [`Guard::from_json`] once per configuration (Envoy's `on_configure`); share the result.
//! 2. [`Guard::on_request_headers`] for each request. It returns a [`Step`]:
//!    - [`Step::Verdict`] means done;
//!    - [`Step::Session`] (only with a validation service) means: look the session up in the cache
//!      and call [`Guard::on_session`]. On [`SessionStep::Miss`], send [`Guard::callout`] (once
//!      per session, however many requests wait for it), then call [`Guard::read_answer`] and
//!      [`Guard::on_answer`], or [`Guard::on_callout_failure`]. Each gives the next [`Step`];
//!    - [`Step::ReadBody`] means: buffer up to [`Pending::max_body_bytes`], then
//!      [`Guard::on_request_body`] with the whole body (empty if there is none), or
//!      [`Guard::body_too_large`] once the limit is passed;
//!    - [`Step::Resolve`] (only with a `resolver`) means: the request names a playbook by an id
//!      (`key`); find its answer in the lookup cache or send
//!      [`Guard::lookup`] (once per id, however many requests wait for it), read it with
//!      [`Guard::read_lookup`], and call [`Guard::on_lookup`], which gives the next [`Step`];
//!    - [`Step::AwaitKeys`] means: the token's issuer needs a remote JWK Set that is being
//!      fetched, or is due ([`RemoteKeys::due`]): hold the request, send the fetches that are
//!      due, and call [`Guard::on_request_headers_cached`] again once the fetch has ended
//!      (loaded with [`RemoteKeys::load`], or [`RemoteKeys::failed`]).
//!
//! Nothing here reads a clock, the environment or the network: the host passes `now` and the
//! environment in, so every decision can be replayed in a test.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::config::{parse_json, FailureMode, HeaderNames, Mode, PluginConfig, TokenRoles};
use crate::error::ConfigError;
use crate::forward::{self, ForwardBody, Forwarded};
use crate::graphql::GraphQlError;
use crate::jwt::{
    token_digest, token_kind, AuthError, RemoteKeys, TokenKind, TokenTally, Verification, VerifiedToken,
    VerifiedTokens, Verifier, VerifierState,
};
use crate::lookup::{LookupFailure, LookupKey, Resolver};
use crate::memo::Memo;
use crate::opaque::OpaqueShape;
use crate::path::{normalize_request_path, PlaybookAlphabet, PlaybookPath};
use crate::policy::Policy;
use crate::routes::{Matched, PlaybookError, PlaybookSource, RouteAction, Routes};
use crate::session::SessionEntry;
use crate::target::{is_json_content_type, parse_body, Target};
use crate::token::{AmbiguousToken, TokenSources};
use crate::validation::{Answer, CalloutFailure, CalloutRequest, Validator};
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

/// The next step of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Decided.
    Verdict(Verdict),
    /// The playbook path is in the body: buffer it (up to [`Pending::max_body_bytes`]) and call
    /// [`Guard::on_request_body`].
    ReadBody(Pending),
    /// The session's cache entry is needed: look up [`Pending::session_key`] and call
    /// [`Guard::on_session`].
    Session(Pending),
    /// The token's keys are being fetched: decide the head again once the fetch has ended.
    AwaitKeys,
    /// The request names a playbook by an id: look `key` up and call [`Guard::on_lookup`].
    Resolve {
        /// The id to look up next.
        key: LookupKey,
        /// The request.
        pending: Pending,
    },
}

/// What [`Guard::on_session`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum SessionStep {
    /// A fresh entry answered (a cache hit); go on with this step.
    Hit(Step),
    /// Missing or stale: one callout ([`Guard::callout`]) must answer, then
    /// [`Guard::on_answer`] or [`Guard::on_callout_failure`].
    Miss(Pending),
}

/// What an authenticated request still needs once its user is known.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Need {
    /// A valid session; a logout route also evicts the session after upstream success.
    Authenticate { logout: bool },
    /// One of the `restricted_roles`.
    Restricted,
    /// Every demand met.
    Authorize(Vec<Demand>),
    /// A JSON-RPC call: the body's `method` picks the permission on `targets` (from the head).
    JsonRpc { methods: Vec<(String, Option<String>)>, targets: Vec<Target> },
}

/// A permission on the targets of one requirement; `source` is kept until the body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Demand {
    permission: String,
    source: Option<PlaybookSource>,
    targets: Vec<Target>,
}

impl Need {
    /// Every target known so far.
    fn targets(&self) -> impl Iterator<Item = &Target> {
        let (demands, jsonrpc): (&[Demand], Option<&Vec<Target>>) = match self {
            Need::Authorize(demands) => (demands, None),
            Need::JsonRpc { targets, .. } => (&[], Some(targets)),
            Need::Authenticate { .. } | Need::Restricted => (&[], None),
        };
        demands.iter().flat_map(|d| d.targets.iter()).chain(jsonrpc.into_iter().flatten())
    }

    /// [`Need::targets`], to change them.
    fn targets_mut(&mut self) -> impl Iterator<Item = &mut Target> {
        let (demands, jsonrpc): (&mut [Demand], Option<&mut Vec<Target>>) = match self {
            Need::Authorize(demands) => (demands, None),
            Need::JsonRpc { targets, .. } => (&mut [], Some(targets)),
            Need::Authenticate { .. } | Need::Restricted => (&mut [], None),
        };
        demands.iter_mut().flat_map(|d| d.targets.iter_mut()).chain(jsonrpc.into_iter().flatten())
    }

    fn needs_body(&self) -> bool {
        match self {
            Need::Authorize(demands) => demands.iter().any(|d| d.source.is_some()),
            Need::JsonRpc { .. } => true,
            Need::Authenticate { .. } | Need::Restricted => false,
        }
    }
}

/// A request paused on its body or its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    route_id: String,
    need: Need,
    token: String,
    from_token: Option<Identity>,
    session_key: String,
    identity: Option<Identity>,
    /// The most body bytes to buffer; more is [`Guard::body_too_large`].
    pub max_body_bytes: u64,
    /// The identity headers, once the user is known, for a host that forwards the headers
    /// before a body-sourced decision (see [`Guard::hold_headers_for_body`]).
    pub upstream_headers: Vec<(String, String)>,
}

impl Pending {
    /// The session's cache key: `<provider>/<sid|jti|sha256>`, or `opaque/<sha256>`.
    pub fn session_key(&self) -> &str {
        &self.session_key
    }

    /// The session token, for the callout body.
    pub fn token(&self) -> &str {
        &self.token
    }

    fn lookups(&self) -> impl Iterator<Item = LookupKey> + '_ {
        self.need.targets().filter_map(|t| match t {
            Target::Lookup(key) => Some(*key),
            _ => None,
        })
    }

    /// Puts `with` in place of each target that is the id `key` (every id when `None`).
    fn replace_lookups(&mut self, key: Option<&LookupKey>, with: impl Fn(&LookupKey) -> Target) {
        for target in self.need.targets_mut() {
            if let Target::Lookup(k) = target {
                if key.is_none_or(|key| key == k) {
                    *target = with(k);
                }
            }
        }
    }

    fn lookup_count(&self) -> usize {
        let mut keys: Vec<LookupKey> = self.lookups().collect();
        keys.sort_by_key(|k| (k.kind.as_str(), k.id));
        keys.dedup();
        keys.len()
    }
}

/// A compiled, immutable configuration: everything a request decision needs.
///
/// # Example
///
/// A route that needs `execute` on the playbook named in the URL, and a token whose roles
/// come from its `roles` claim (no validation service, so the head alone decides):
///
/// ```
/// use playbook_guard_core::{Guard, RequestHead, Step, Verdict};
///
/// let config = br#"{
///   "providers": [{"name": "noetl", "issuer": "https://noetl.local", "algorithms": ["HS256"],
///                  "secret_env": "SECRET", "roles_claim": "roles"}],
///   "routes": [{"match": {"glob": "/api/playbooks/**/run"},
///               "authorize": {"permission": "execute", "playbook": {"path_capture": true}}}],
///   "policy": {"version": "1", "roles": {"analyst": {"allow": [
///     {"permissions": ["execute"], "playbooks": ["data/**"]}]}}}
/// }"#;
/// let secret = "a secret of at least thirty-two bytes!";
/// let guard = Guard::from_json(config, &|name| (name == "SECRET").then(|| secret.to_owned())).unwrap();
///
/// // No token: 401, before anything else is looked at.
/// let head = RequestHead { method: "POST", path: "/api/playbooks/data/load/run", headers: &[] };
/// let Step::Verdict(Verdict::Deny(denial)) = guard.on_request_headers(&head, 1_800_000_000) else {
///     panic!("decided from the head")
/// };
/// assert_eq!(denial.status, 401);
///
/// // No route: 403 (`default_action` is `deny`).
/// let head = RequestHead { method: "GET", path: "/elsewhere", headers: &[] };
/// let Step::Verdict(Verdict::Deny(denial)) = guard.on_request_headers(&head, 1_800_000_000) else {
///     panic!("decided from the head")
/// };
/// assert_eq!(denial.status, 403);
///
/// // What an analyst may do, without a token (as `playbook-guard explain` asks it).
/// let head = RequestHead { method: "POST", path: "/api/playbooks/system/reset/run", headers: &[] };
/// let (route, verdict) = guard.explain(&head, b"", &["analyst".to_owned()]);
/// assert_eq!(route, "routes[0]");
/// assert!(matches!(verdict, Verdict::Deny(d) if d.status == 403));
/// ```
#[derive(Debug, Clone)]
pub struct Guard {
    mode: Mode,
    tokens: TokenSources,
    /// With `opaque_tokens`, the shape a non-JWT token needs for the service to be asked.
    opaque: Option<OpaqueShape>,
    verifier: Verifier,
    validator: Option<Validator>,
    resolver: Option<Resolver>,
    routes: Routes,
    policy: Policy,
    headers: HeaderNames,
    /// `identity_header_prefix` as [`header_key`] spells it.
    identity_prefix: String,
    /// The identity headers' names as [`header_key`] spells them.
    identity_keys: [String; 4],
    playbook_alphabet: PlaybookAlphabet,
    allow_cors_preflight: bool,
    hold_headers_for_body: bool,
    jwt_cache_size: usize,
    restricted_roles: Vec<String>,
    /// Allows carry no detail unless the log level asks for it ([`Guard::set_terse`]).
    terse: bool,
    /// Policy decisions this configuration made, in terse mode: the memo belongs to the
    /// configuration, so a new policy starts with none.
    decisions: DecisionMemo,
    /// `hit_cache_size`.
    hit_cache_size: usize,
    /// `stats_window_ms`.
    stats_window_ms: u64,
    /// The per-request headers (see [`crate::protocol::hits::PER_REQUEST`]) the configuration
    /// mentions anywhere: the guard may read those, so a remembered allow is keyed by them.
    mentioned: Vec<&'static str>,
}

/// The decision memo: a lock so a guard may be shared by threads (as the fuzz targets share
/// one), taken with `try_lock` so that nobody ever waits for it (a contended question is
/// answered by the policy itself). A clone starts empty.
#[derive(Debug)]
struct DecisionMemo(Mutex<Memo<Box<[u8]>, bool>>);

impl Clone for DecisionMemo {
    fn clone(&self) -> Self {
        let capacity = self.0.try_lock().map_or(0, |m| m.capacity());
        DecisionMemo(Mutex::new(Memo::new(capacity)))
    }
}

impl Guard {
    /// Parses and compiles the plugin configuration (JSON). `env` reads the VM's environment
    /// variables (HMAC secrets). Errors name the field path: `providers[1].jwks.keys[0].n: ...`.
    pub fn from_json(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        // serde keeps the last of a key written twice in a map (two roles of one name: the
        // first one's deny dropped) and may refuse it in a struct: either way a configuration
        // that reads two ways is refused, by name, before it is read one way.
        if let Err(crate::json::JsonError::DuplicateKey(key)) = crate::json::parse_strict(json) {
            return Err(ConfigError::new("", format!("the key {key:?} is written twice in one object")));
        }
        let cfg: PluginConfig = parse_json(json)?;
        Self::compile(&cfg, env)
    }

    /// Compiles parsed configuration.
    pub fn compile(cfg: &PluginConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let validator = match &cfg.validation {
            None => None,
            Some(v) => Some(Validator::compile(v, &cfg.session).map_err(|e| {
                if e.path.starts_with("session.") {
                    e
                } else {
                    e.within("validation")
                }
            })?),
        };
        if cfg.opaque_tokens && validator.is_none() {
            return Err(ConfigError::new(
                "opaque_tokens",
                "opaque session tokens need a `validation` service to vouch for them",
            ));
        }
        let tokens = TokenSources::compile(&cfg.token_sources).map_err(|e| e.within("token_sources"))?;
        let valid_name =
            |name: &str| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name(&cfg.identity_header_prefix) {
            let p = &cfg.identity_header_prefix;
            return Err(ConfigError::new("identity_header_prefix", format!("{p:?} is not a header name prefix")));
        }
        let identity_prefix = header_key(&cfg.identity_header_prefix);
        for (field, name) in [
            ("headers.user_id", &cfg.headers.user_id),
            ("headers.email", &cfg.headers.email),
            ("headers.display_name", &cfg.headers.display_name),
            ("headers.roles", &cfg.headers.roles),
        ] {
            if !valid_name(name) {
                return Err(ConfigError::new(field, format!("{name:?} is not a valid header name")));
            }
            // The upstream reads the whole family; a name outside it would be one the filter
            // does not strip as a family member, so the two must agree.
            if !header_key(name).starts_with(&identity_prefix) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{name:?} is not under identity_header_prefix {:?}, so a client's own would not be \
                         removed as one of the family; give it that prefix or change the prefix",
                        cfg.identity_header_prefix
                    ),
                ));
            }
        }
        if let Some((i, name)) = tokens.header_names().find(|(_, name)| header_key(name).starts_with(&identity_prefix))
        {
            return Err(ConfigError::new(
                format!("token_sources[{i}].header"),
                format!("{name:?} is under identity_header_prefix, so it is removed before it could be read"),
            ));
        }
        if cfg.stats_window_ms > MAX_STATS_WINDOW_MS {
            return Err(ConfigError::new(
                "stats_window_ms",
                format!(
                    "{} is over {MAX_STATS_WINDOW_MS}: counts would reach the stats too late to watch",
                    cfg.stats_window_ms
                ),
            ));
        }
        let playbook_alphabet = PlaybookAlphabet::compile(&cfg.playbook_path_chars)
            .map_err(|m| ConfigError::new("playbook_path_chars", m))?;
        let mut headers = cfg.headers.clone();
        for name in [&mut headers.user_id, &mut headers.email, &mut headers.display_name, &mut headers.roles] {
            *name = name.to_ascii_lowercase();
        }
        let identity_keys =
            [&headers.user_id, &headers.email, &headers.display_name, &headers.roles].map(|n| header_key(n));
        let opaque = match cfg.opaque_tokens {
            true => Some(OpaqueShape::compile(&cfg.opaque_token_shape).map_err(|e| e.within("opaque_token_shape"))?),
            false => None,
        };
        Ok(Guard {
            mode: cfg.mode,
            tokens,
            opaque,
            verifier: Verifier::compile(&cfg.providers, cfg.clock_skew_secs, env).map_err(|e| e.within("providers"))?,
            validator,
            resolver: cfg.resolver.as_ref().map(Resolver::compile).transpose().map_err(|e| e.within("resolver"))?,
            routes: Routes::compile(&cfg.routes, cfg.default_action, cfg.max_body_bytes)
                .map_err(|e| e.within("routes"))?,
            policy: Policy::compile(&cfg.policy).map_err(|e| e.within("policy"))?,
            headers,
            identity_prefix,
            identity_keys,
            playbook_alphabet,
            allow_cors_preflight: cfg.allow_cors_preflight,
            hold_headers_for_body: cfg.hold_headers_for_body,
            jwt_cache_size: usize::try_from(cfg.jwt_cache_size).unwrap_or(usize::MAX),
            restricted_roles: compile_restricted_roles(&cfg.restricted_roles)?,
            terse: false,
            hit_cache_size: usize::try_from(cfg.hit_cache_size).unwrap_or(usize::MAX),
            stats_window_ms: cfg.stats_window_ms,
            mentioned: mentioned_per_request_headers(cfg),
            decisions: DecisionMemo(Mutex::new(Memo::new(
                usize::try_from(cfg.decision_cache_size).unwrap_or(usize::MAX),
            ))),
        })
    }

    /// The active policy's `version`.
    pub fn policy_version(&self) -> &str {
        self.policy.version()
    }

    /// The active policy's version as a number (see [`Policy::version_hash`]).
    pub fn policy_version_hash(&self) -> u64 {
        self.policy.version_hash()
    }

    /// The validation settings, if a validation service is configured.
    pub fn validator(&self) -> Option<&Validator> {
        self.validator.as_ref()
    }

    /// The lookup settings, if a `resolver` is configured.
    pub fn resolver(&self) -> Option<&Resolver> {
        self.resolver.as_ref()
    }

    /// The lookup callout for `key` (`None` without a resolver).
    pub fn lookup(&self, key: &LookupKey) -> Option<CalloutRequest> {
        self.resolver.as_ref().map(|r| r.request(key))
    }

    /// Reads a lookup's answer (`status`: `None` when the host got no response).
    pub fn read_lookup(
        &self,
        key: &LookupKey,
        status: Option<u32>,
        body: &[u8],
    ) -> Result<PlaybookPath, LookupFailure> {
        match &self.resolver {
            Some(r) => r.read_answer(key, status, body),
            None => Err(LookupFailure::Unavailable("no resolver is configured".into())),
        }
    }

    /// Goes on once the id `key` is looked up: the playbook it names, or why there is none.
    /// A failed lookup denies: 403 if NoETL has no such id, else 503.
    pub fn on_lookup(
        &self,
        mut pending: Pending,
        key: &LookupKey,
        answer: Result<PlaybookPath, LookupFailure>,
    ) -> Step {
        // A path outside `playbook_path_chars` is one the filter decides nothing on: no answer.
        let checked = answer.and_then(|p| match self.playbook_alphabet.check(&p) {
            Ok(()) => Ok(p),
            Err(e) => Err(LookupFailure::Unavailable(format!("{p}: {e}"))),
        });
        let denial = match checked {
            Ok(path) => {
                pending.replace_lookups(Some(key), |_| Target::Playbook(path.clone()));
                return self.settle(pending);
            }
            Err(LookupFailure::NotFound) => {
                Denial::refused("unresolved_target", format!("route={} {key}: NoETL has no such id", pending.route_id))
            }
            Err(failure) => Denial::lookup_unavailable(format!("route={} {key}: {failure}", pending.route_id)),
        };
        Step::Verdict(self.finish(Err(denial), pending.identity.as_ref()))
    }

    /// Decides, once every id the request names is looked up; without a resolver, or past
    /// `max_lookups_per_request` ids, each id stands for every playbook.
    fn settle(&self, mut pending: Pending) -> Step {
        let count = pending.lookup_count();
        let Some(key) = pending.lookups().next() else {
            return Step::Verdict(self.decide(pending));
        };
        match &self.resolver {
            Some(r) if count <= r.max_per_request() => Step::Resolve { key, pending },
            Some(r) => {
                let max = r.max_per_request();
                pending.replace_lookups(None, |k| {
                    Target::Every(format!("{k} is one of {count} ids, more than max_lookups_per_request {max}"))
                });
                Step::Verdict(self.decide(pending))
            }
            None => {
                pending.replace_lookups(None, |k| Target::Every(format!("{k} needs a lookup (no resolver)")));
                Step::Verdict(self.decide(pending))
            }
        }
    }

    /// Whether the host should hold a body-sourced request's headers until the decision
    /// (`hold_headers_for_body`), rather than forward them with [`Pending::upstream_headers`].
    pub fn hold_headers_for_body(&self) -> bool {
        self.hold_headers_for_body
    }

    /// Which of the request's header `names` the host must remove before anything else, on
    /// every request: the identity headers are the filter's alone. That is every name under
    /// `identity_header_prefix` and the four configured names, compared case-insensitively
    /// with `_` read as `-` (WSGI and CGI servers merge `x_noetl_user_roles` into
    /// `X-Noetl-User-Roles`).
    pub fn identity_headers_to_remove<'h>(&self, names: impl IntoIterator<Item = &'h str>) -> Vec<&'h str> {
        // Runs on every request: the names are compared as `header_key` spells them without
        // building that spelling (the configured names already are).
        let own = &self.identity_keys;
        names
            .into_iter()
            .filter(|name| {
                let prefix = self.identity_prefix.as_bytes();
                let starts = name.as_bytes().get(..prefix.len()).is_some_and(|start| same_header_key(start, prefix));
                starts || own.iter().any(|o| same_header_key(name.as_bytes(), o.as_bytes()))
            })
            .collect()
    }

    /// Decides what it can from the request head, at time `now` (seconds since the epoch).
    pub fn on_request_headers(&self, head: &RequestHead<'_>, now: u64) -> Step {
        self.on_request_headers_cached(head, now, &mut VerifierState::default())
    }

    /// A fresh verification state for this configuration (a `jwt_cache_size` cache of verified
    /// tokens, no remote JWK Sets yet), for [`Guard::on_request_headers_cached`]. Make a new one
    /// when the configuration changes: keys may have.
    pub fn verifier_state(&self) -> VerifierState {
        VerifierState {
            verified: VerifiedTokens::new(self.jwt_cache_size),
            remote: RemoteKeys::default(),
            tokens: TokenTally::default(),
        }
    }

    /// The JWT verifier (for the remote JWK Sets it needs).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// [`Guard::on_request_headers`], checking each token's signature once per `state` and
    /// using the remote JWK Sets fetched into it.
    pub fn on_request_headers_cached(&self, head: &RequestHead<'_>, now: u64, state: &mut VerifierState) -> Step {
        let path = match normalize_request_path(head.path) {
            Ok(path) => path,
            Err(e) => return Step::Verdict(self.finish(Err(Denial::bad_request("invalid_path", e.to_string())), None)),
        };
        if self.allow_cors_preflight && is_cors_preflight(head) {
            return Step::Verdict(allowed(Vec::new(), "CORS preflight".into()));
        }
        let route = match self.reach(head, path) {
            Ok(route) => route,
            Err(denial) => return Step::Verdict(self.finish(Err(denial), None)),
        };
        let need = match self.need_of(&route.id, route.action) {
            Ok(need) => need,
            Err(verdict) => return Step::Verdict(*verdict),
        };
        let (token, from_token, session_key, validate) = match self.authenticate(head, now, state) {
            Ok(found) => found,
            Err(Unauthenticated::AwaitingKeys) => return Step::AwaitKeys,
            Err(Unauthenticated::Auth(e)) => return Step::Verdict(self.finish(Err(Denial::unauthenticated(&e)), None)),
            Err(Unauthenticated::Ambiguous(e)) => {
                return Step::Verdict(self.finish(Err(Denial::bad_request(AMBIGUOUS, e.to_string())), None));
            }
        };
        let need = match self.head_need(&route, need) {
            Ok(need) => need,
            Err(denial) => return Step::Verdict(self.finish(Err(denial), from_token.as_ref())),
        };
        let pending = Pending {
            route_id: route.id,
            need,
            token: token.to_owned(),
            from_token,
            session_key,
            identity: None,
            max_body_bytes: route.max_body_bytes,
            upstream_headers: Vec::new(),
        };
        if self.validator.is_some() && validate {
            return Step::Session(pending);
        }
        let identity = pending.from_token.clone();
        self.proceed(pending, identity)
    }

    /// Decides a request for a user holding `roles`, as the filter does once the user is known
    /// (for `playbook-guard explain`): the matched route's id and the verdict, whose detail
    /// names the permissions, playbooks and deciding rules. `body` is the whole body (empty if
    /// none); tokens and sessions are not looked at.
    pub fn explain(&self, head: &RequestHead<'_>, body: &[u8], roles: &[String]) -> (String, Verdict) {
        let path = match normalize_request_path(head.path) {
            Ok(path) => path,
            Err(e) => return ("-".into(), self.finish(Err(Denial::bad_request("invalid_path", e.to_string())), None)),
        };
        let outer = self.routes.find(head.method, &path).id.to_owned();
        let route = match self.reach(head, path) {
            Ok(route) => route,
            Err(denial) => return (outer, self.finish(Err(denial), None)),
        };
        let need = match self.need_of(&route.id, route.action) {
            Ok(need) => need,
            Err(verdict) => return (outer, *verdict),
        };
        let identity = Identity {
            user_id: None,
            email: None,
            display_name: None,
            roles: roles.to_vec(),
            session_key: String::new(),
        };
        let need = match self.head_need(&route, need) {
            Ok(need) => need,
            Err(denial) => return (outer, self.finish(Err(denial), Some(&identity))),
        };
        let pending = Pending {
            route_id: route.id,
            need,
            token: String::new(),
            from_token: None,
            session_key: String::new(),
            identity: Some(identity),
            max_body_bytes: route.max_body_bytes,
            upstream_headers: Vec::new(),
        };
        let step = if pending.need.needs_body() { self.on_request_body(pending, body) } else { self.settle(pending) };
        let verdict = match step {
            Step::Verdict(verdict) => verdict,
            // No I/O here: an id stands for every playbook, as it would without a resolver.
            Step::Resolve { mut pending, .. } => {
                pending.replace_lookups(None, |k| Target::Every(format!("{k} is looked up at run time")));
                self.decide(pending)
            }
            Step::ReadBody(_) | Step::Session(_) | Step::AwaitKeys => self.finish(Err(Denial::unavailable()), None),
        };
        (outer, verdict)
    }

    /// The route `head` is decided on: the route it matches, or for a pass-through the route
    /// the forwarded request reaches, with the path and headers that route reads.
    fn reach<'h>(&self, head: &RequestHead<'h>, path: String) -> Result<Reached<'_, 'h>, Denial> {
        let route = self.routes.find(head.method, &path);
        let RouteAction::Forward { strip_prefix, prefix } = route.action else {
            return Ok(Reached {
                id: route.id.to_owned(),
                action: route.action,
                path,
                headers: Cow::Borrowed(head.headers),
                max_body_bytes: route.max_body_bytes,
                body_dropped: false,
            });
        };
        let forwarded = forward::rest(head.method, head.path, strip_prefix, prefix)
            .map_err(|e| self.playbook_denial(route.id, &e.into()))?;
        // The gateway passes on these headers only (its `Authorization` and cookies stay with it).
        let kept = |name: &str| {
            let name = name.to_ascii_lowercase();
            name == "content-type" || name == "accept" || name.starts_with("x-")
        };
        let headers = head.headers.iter().filter(|(n, _)| kept(n)).cloned().collect();
        self.reach_forwarded(route.id, &forwarded, Cow::Owned(headers))
    }

    /// The route a forwarded request reaches. One that is itself a pass-through is refused:
    /// nothing is forwarded twice.
    fn reach_forwarded<'h>(
        &self,
        outer: &str,
        forwarded: &Forwarded,
        headers: Cow<'h, [(String, String)]>,
    ) -> Result<Reached<'_, 'h>, Denial> {
        let Forwarded { method, path, body } = forwarded;
        let path = normalize_request_path(path)
            .map_err(|e| Denial::bad_request("invalid_path", format!("route={outer} forwarded {path}: {e}")))?;
        let Matched { id, action, max_body_bytes } = self.routes.find(method, &path);
        let name = self.routes.name_of(id).map(|n| format!(" ({n})")).unwrap_or_default();
        let id = format!("{outer} forwarded as {method} {path} to {id}{name}");
        if action.is_pass_through() {
            return Err(Denial::refused("pass_through", format!("route={id}, itself a pass-through")));
        }
        let body_dropped = *body == ForwardBody::Given(Vec::new());
        Ok(Reached { id, action, path, headers, max_body_bytes, body_dropped })
    }

    /// What the request head says about `need` on `route`: the body's content type, and the
    /// targets in the path and headers.
    fn head_need(&self, route: &Reached<'_, '_>, need: Need) -> Result<Need, Denial> {
        if route.action.needs_body() && route.body_dropped {
            // NoETL gets no body, so it cannot read the playbook from one.
            return Err(self.playbook_denial(&route.id, &PlaybookError::BodyNotJson));
        }
        if route.action.needs_body() && !is_json_content_type(&route.headers) {
            let detail = format!("route={} reads a JSON body and the content-type is not JSON", route.id);
            return Err(Denial::unsupported_media_type(detail));
        }
        self.read_head(need, route.action, &route.path, &route.headers).map_err(|e| self.playbook_denial(&route.id, &e))
    }

    /// Decides a request the gateway forwards from inside a GraphQL request (`proxyRequest`),
    /// for `identity`, as the route it reaches.
    fn decide_forwarded(&self, outer: &str, forwarded: &Forwarded, identity: &Identity) -> Verdict {
        // `need_of` answers without a user; a denial here is this user's.
        let theirs = |verdict: Verdict| match verdict {
            Verdict::Deny(d) | Verdict::Allow { audited: Some(d), .. } => self.finish(Err(d), Some(identity)),
            allowed => allowed,
        };
        let body = match &forwarded.body {
            ForwardBody::Given(body) => body.as_slice(),
            ForwardBody::Passed => &[],
        };
        // The gateway sends the body with reqwest's `.json()`, which sets this content type.
        let json = [("content-type".to_owned(), "application/json".to_owned())];
        let headers = if body.is_empty() { &json[..0] } else { &json[..] };
        let route = match self.reach_forwarded(outer, forwarded, Cow::Borrowed(headers)) {
            Ok(route) => route,
            Err(denial) => return self.finish(Err(denial), Some(identity)),
        };
        let need = match self.need_of(&route.id, route.action) {
            Ok(need) => need,
            Err(verdict) => return theirs(*verdict),
        };
        let need = match self.head_need(&route, need) {
            Ok(need) if need.needs_body() => self.need_from_body(&route.id, need, body),
            other => other,
        };
        match need {
            Ok(need) => self.decide(Pending {
                route_id: route.id,
                need,
                token: String::new(),
                from_token: None,
                session_key: String::new(),
                identity: Some(identity.clone()),
                max_body_bytes: route.max_body_bytes,
                upstream_headers: Vec::new(),
            }),
            Err(denial) => self.finish(Err(denial), Some(identity)),
        }
    }

    /// The route's name, if it has one (for `explain`).
    pub fn route_name(&self, id: &str) -> Option<&str> {
        self.routes.name_of(id)
    }

    /// What an authenticated request on the route needs, or the verdict of a route that needs
    /// no user (public, blocked, no route).
    fn need_of(&self, route_id: &str, action: &RouteAction) -> Result<Need, Box<Verdict>> {
        Ok(match action {
            RouteAction::Public => return Err(Box::new(allowed(Vec::new(), format!("route={route_id} public")))),
            RouteAction::Deny => return Err(Box::new(self.finish(Err(Denial::no_route()), None))),
            RouteAction::Blocked => {
                let detail = format!("route={route_id} is blocked at the edge (NoETL's workers only)");
                return Err(Box::new(self.finish(Err(Denial::refused("blocked", detail)), None)));
            }
            // `reach` resolves a pass-through to the route it reaches; never decide it as one.
            RouteAction::Forward { .. } => {
                let detail = format!("route={route_id} is a pass-through");
                return Err(Box::new(self.finish(Err(Denial::refused("pass_through", detail)), None)));
            }
            RouteAction::Authenticate { logout } => Need::Authenticate { logout: *logout },
            RouteAction::Restricted => Need::Restricted,
            RouteAction::Authorize { requirements } => Need::Authorize(
                requirements
                    .iter()
                    .map(|r| Demand {
                        permission: r.permission.clone(),
                        source: Some(r.source.clone()),
                        targets: Vec::new(),
                    })
                    .collect(),
            ),
            RouteAction::JsonRpc { methods, .. } => Need::JsonRpc { methods: methods.clone(), targets: Vec::new() },
        })
    }

    /// Answers from the session's cache entry (`None`: not cached) if it is fresh at `now_ms`
    /// (milliseconds since the epoch).
    pub fn on_session(&self, pending: Pending, entry: Option<&SessionEntry>, now_ms: u64) -> SessionStep {
        match (entry, &self.validator) {
            (Some(entry), Some(v)) if entry.is_fresh(&v.cache, now_ms) => {
                SessionStep::Hit(self.with_entry(pending, entry))
            }
            _ => SessionStep::Miss(pending),
        }
    }

    /// The callout that refreshes `pending`'s session (`None` without a validation service).
    pub fn callout(&self, pending: &Pending) -> Option<CalloutRequest> {
        self.validator.as_ref().map(|v| v.request(&pending.token))
    }

    /// Reads the callout's answer into a cache entry fetched at `now_ms`.
    pub fn read_answer(&self, status: Option<u32>, body: &[u8], now_ms: u64) -> Result<Answer, CalloutFailure> {
        match &self.validator {
            Some(v) => v.read_answer(status, body, now_ms),
            None => Err(CalloutFailure::NotSent("no validation service is configured".into())),
        }
    }

    /// Goes on with the entry a callout just fetched (fresh or not: it is the newest answer).
    pub fn on_answer(&self, pending: Pending, entry: &SessionEntry) -> Step {
        self.with_entry(pending, entry)
    }

    /// The failure mode, after a failed callout: a stale entry within its grace under
    /// `serve_stale` (the `bool` says one was served), else 503.
    pub fn on_callout_failure(&self, pending: Pending, stale: Option<&SessionEntry>, now_ms: u64) -> (Step, bool) {
        if let (Some(v), Some(entry)) = (&self.validator, stale) {
            if v.failure_mode == FailureMode::ServeStale && entry.may_serve_stale(&v.cache, now_ms) {
                return (self.with_entry(pending, entry), true);
            }
        }
        let identity = pending.from_token.clone();
        (Step::Verdict(self.finish(Err(Denial::unavailable()), identity.as_ref())), false)
    }

    /// The answer when a callout about a session the cache has never seen would pass the
    /// worker's limit ([`Validator::cold_callouts`]): 503 with `Retry-After`, reason
    /// `too_many_new_sessions`. There is no stale entry to serve.
    pub fn on_cold_callout_limited(&self, pending: Pending) -> Step {
        Step::Verdict(self.finish(Err(Denial::too_many_new_sessions()), pending.from_token.as_ref()))
    }

    /// Decides a request whose playbook path is in `body` (the whole body, possibly empty), or
    /// asks for the ids it names to be looked up ([`Step::Resolve`]).
    pub fn on_request_body(&self, pending: Pending, body: &[u8]) -> Step {
        if body.len() as u64 > pending.max_body_bytes {
            return Step::Verdict(self.body_too_large(&pending));
        }
        match self.need_from_body(&pending.route_id, pending.need.clone(), body) {
            Ok(need) => self.settle(Pending { need, ..pending }),
            Err(denial) => Step::Verdict(self.finish(Err(denial), pending.identity.as_ref())),
        }
    }

    /// What the whole `body` says about the targets of `need`.
    fn need_from_body(&self, route_id: &str, need: Need, body: &[u8]) -> Result<Need, Denial> {
        let need = match need {
            Need::Authorize(demands) => demands
                .into_iter()
                .map(|d| match d.source {
                    Some(source) => {
                        self.in_alphabet(source.from_body(body)).map(|targets| Demand { source: None, targets, ..d })
                    }
                    None => Ok(d),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Need::Authorize),
            Need::JsonRpc { methods, targets } => match jsonrpc_need(&methods, targets, body) {
                Ok(None) => {
                    let detail = format!("route={route_id} JSON-RPC method not listed");
                    return Err(Denial::refused("jsonrpc_method", detail));
                }
                Ok(Some(need)) => Ok(need),
                Err(e) => Err(e),
            },
            need => Ok(need),
        };
        need.map_err(|e| self.playbook_denial(route_id, &e))
    }

    /// Reads what the request head says about the targets of `need`.
    fn read_head(
        &self,
        need: Need,
        action: &RouteAction,
        path: &str,
        headers: &[(String, String)],
    ) -> Result<Need, PlaybookError> {
        Ok(match (need, action) {
            (Need::Authorize(demands), _) => Need::Authorize(
                demands
                    .into_iter()
                    .map(|d| match d.source {
                        Some(source) if !source.needs_body() => self
                            .in_alphabet(source.from_head(path, headers))
                            .map(|targets| Demand { source: None, targets, ..d }),
                        _ => Ok(d),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            (Need::JsonRpc { methods, .. }, RouteAction::JsonRpc { source, .. }) => {
                Need::JsonRpc { methods, targets: self.in_alphabet(source.from_head(path, headers))? }
            }
            (need, _) => need,
        })
    }

    /// The answer for a body over [`Pending::max_body_bytes`].
    pub fn body_too_large(&self, pending: &Pending) -> Verdict {
        self.finish(Err(Denial::too_large(pending.max_body_bytes)), pending.identity.as_ref())
    }

    /// Finds and checks the token: the token, what a JWT says (`None` for an opaque token), the
    /// session key, and whether a validation service must vouch for the session (always for an
    /// opaque token; for a JWT, as its provider's `validate_sessions` says).
    ///
    /// A token with the shape of a compact JWS is a JWT, whatever happens to it next: it never
    /// falls back to being an opaque token. Any other token must have the configured opaque
    /// shape to be sent to the validation service; the rest is refused here, without a callout.
    fn authenticate<'h>(
        &self,
        head: &RequestHead<'h>,
        now: u64,
        state: &mut VerifierState,
    ) -> Result<(&'h str, Option<Identity>, String, bool), Unauthenticated> {
        let (token, _) = self.tokens.find(head.headers)?.ok_or(AuthError::Missing)?;
        let tally = &mut state.tokens;
        match (token_kind(token), &self.opaque) {
            (TokenKind::Jws, _) => {
                tally.jwt = tally.jwt.saturating_add(1);
                let verification = self.verifier.verify_cached(token, now, &mut state.verified, &mut state.remote)?;
                let Verification::Verified(verified) = verification else {
                    return Err(Unauthenticated::AwaitingKeys);
                };
                let key = format!("{}/{}", verified.provider, verified.session_key);
                let validate = verified.validate_session;
                Ok((token, Some(Identity::from(verified)), key, validate))
            }
            (TokenKind::Opaque, Some(shape)) if shape.matches(token) => {
                tally.opaque = tally.opaque.saturating_add(1);
                Ok((token, None, format!("opaque/{}", token_digest(token)), true))
            }
            (TokenKind::Opaque, shape) => {
                tally.unrecognised = tally.unrecognised.saturating_add(1);
                Err(if shape.is_some() { AuthError::UnrecognisedToken } else { AuthError::OpaqueNotAccepted }.into())
            }
        }
    }

    /// Goes on with the validation service's answer. Who the user is comes from that answer
    /// alone, never field by field from the token as well: a token's `email` beside the
    /// service's `user_id` would name a user neither source vouches for. The token's roles join
    /// only as `token_roles` says.
    fn with_entry(&self, pending: Pending, entry: &SessionEntry) -> Step {
        if !entry.valid {
            return Step::Verdict(self.finish(Err(Denial::unauthenticated(&AuthError::SessionInvalid)), None));
        }
        let token_roles = pending.from_token.as_ref().map(|t| t.roles.as_slice()).unwrap_or_default();
        let roles = match self.validator.as_ref().map(|v| v.token_roles).unwrap_or_default() {
            TokenRoles::Ignore => entry.roles.clone(),
            TokenRoles::Fallback if entry.roles.is_empty() => token_roles.to_vec(),
            TokenRoles::Fallback => entry.roles.clone(),
            TokenRoles::Union => {
                let mut roles = entry.roles.clone();
                roles.extend(token_roles.iter().filter(|r| !entry.roles.contains(r)).cloned());
                roles
            }
        };
        let identity = Identity {
            user_id: entry.user_id.clone(),
            email: entry.email.clone(),
            display_name: entry.display_name.clone(),
            roles,
            session_key: pending.session_key.clone(),
        };
        self.proceed(pending, Some(identity))
    }

    /// With the user known: read the body if the route needs it, else decide.
    fn proceed(&self, mut pending: Pending, identity: Option<Identity>) -> Step {
        let Some(identity) = identity else {
            // Only an opaque token without a validation answer lands here, and the
            // configuration refuses opaque tokens without a validation service.
            return Step::Verdict(self.finish(Err(Denial::unauthenticated(&AuthError::OpaqueNotAccepted)), None));
        };
        pending.upstream_headers = self.identity_header_values(&identity);
        pending.identity = Some(identity);
        if pending.need.needs_body() {
            return Step::ReadBody(pending);
        }
        self.settle(pending)
    }

    /// `hit_cache_size`: how many allowed requests each worker remembers whole.
    pub fn hit_cache_size(&self) -> usize {
        self.hit_cache_size
    }

    /// `stats_window_ms`: how long a remembered allow's stats may wait to be counted (0: not
    /// at all).
    pub fn stats_window_ms(&self) -> u64 {
        self.stats_window_ms
    }

    /// Whether the configuration mentions header `name` (one of
    /// [`crate::protocol::hits::PER_REQUEST`]) anywhere, as any part of any string.
    pub fn mentions(&self, name: &str) -> bool {
        self.mentioned.iter().any(|m| m.eq_ignore_ascii_case(name))
    }

    /// In terse mode (the filter's), an allowed request's verdict carries no detail: the detail
    /// only feeds a debug log, and writing it is most of an allow's cost. Unless the log level
    /// is debug, requests that are simply allowed (a session, or every demand granted on named
    /// playbooks) are then decided without it, and each policy question is asked once per
    /// distinct (roles, permission, playbook), up to `decision_cache_size`. Everything else,
    /// and every denial, takes the full path with its detail.
    pub fn set_terse(&mut self, terse: bool) {
        self.terse = terse;
    }

    fn decide(&self, pending: Pending) -> Verdict {
        if self.terse && !log::log_enabled!(log::Level::Debug) {
            if let Some(verdict) = self.decide_tersely(&pending) {
                return verdict;
            }
        }
        self.decide_in_full(pending)
    }

    /// The verdict of [`Guard::decide_in_full`] for a request it would simply allow, without
    /// the detail; `None` for any other.
    fn decide_tersely(&self, pending: &Pending) -> Option<Verdict> {
        let identity = pending.identity.as_ref()?;
        let allow = || Some(self.finish(Ok(String::new()), Some(identity)));
        let demands = match &pending.need {
            Need::Authenticate { logout: false } => return allow(),
            Need::Authorize(demands) => demands,
            _ => return None,
        };
        for Demand { permission, targets, .. } in demands {
            if targets.is_empty() {
                return None;
            }
            for target in targets {
                let Target::Playbook(playbook) = target else { return None };
                if !self.memoized_decision(&identity.roles, permission, playbook) {
                    return None;
                }
            }
        }
        allow()
    }

    /// Whether `roles` may use `permission` on `playbook`, from the decision memo if it was
    /// asked before.
    fn memoized_decision(&self, roles: &[String], permission: &str, playbook: &PlaybookPath) -> bool {
        // Each part is written with its length first, so no two questions share a key whatever
        // their text (a role named "a,b" is not the roles a and b). Lengths as bytes, not
        // digits: the formatter would cost more than the policy question in wasm.
        let mut key = Vec::with_capacity(64);
        let length = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
        for part in roles.iter().map(String::as_str).chain([permission, playbook.as_str()]) {
            key.extend(length(part.len()));
            key.extend(part.as_bytes());
        }
        key.extend(length(roles.len()));
        let Ok(mut memo) = self.decisions.0.try_lock() else {
            return self.policy.decide(roles, permission, playbook).allowed;
        };
        if let Some(allowed) = memo.get(key.as_slice()) {
            return *allowed;
        }
        let allowed = self.policy.decide(roles, permission, playbook).allowed;
        memo.insert(key.into(), allowed);
        allowed
    }

    fn decide_in_full(&self, pending: Pending) -> Verdict {
        let Pending { route_id, need, identity, session_key, .. } = pending;
        let Some(identity) = identity else {
            return self.finish(Err(Denial::unauthenticated(&AuthError::Missing)), None);
        };
        let demands = match need {
            Need::Authenticate { logout } => {
                let mut verdict = self.finish(Ok(format!("route={route_id} authenticated")), Some(&identity));
                if let (true, Verdict::Allow { logout: evict, .. }) = (logout, &mut verdict) {
                    *evict = Some(session_key);
                }
                return verdict;
            }
            Need::Restricted => {
                let mut detail = format!("route={route_id} restricted");
                return match self.restricted_role(&identity) {
                    Some(role) => {
                        let _ = write!(detail, " role={role}");
                        self.finish(Ok(detail), Some(&identity))
                    }
                    None => self.refuse_restricted(detail, &identity),
                };
            }
            Need::Authorize(demands) => demands,
            Need::JsonRpc { .. } => {
                // Only reached if a host decides without the body it was asked to read.
                let e = PlaybookError::Missing("the route reads the body");
                return self.playbook_error(&route_id, &e, Some(&identity));
            }
        };
        let mut detail = format!("route={route_id}");
        for Demand { permission, targets, .. } in &demands {
            if targets.is_empty() {
                let e = PlaybookError::Missing("no playbook");
                return self.playbook_error(&route_id, &e, Some(&identity));
            }
            let _ = write!(detail, " permission={permission}");
            for target in targets {
                let (decision, playbook) = match target {
                    Target::Playbook(playbook) => {
                        (self.policy.decide(&identity.roles, permission, playbook), playbook.as_str())
                    }
                    Target::Every(why) => {
                        let _ = write!(detail, " every playbook ({why})");
                        (self.policy.decide_every(&identity.roles, permission), "*")
                    }
                    // Only a host that decides without the lookup it was asked for lands here.
                    Target::Lookup(key) => {
                        let _ = write!(detail, " every playbook ({key} not looked up)");
                        (self.policy.decide_every(&identity.roles, permission), "*")
                    }
                    Target::Forward(forwarded) => match self.decide_forwarded(&route_id, forwarded, &identity) {
                        Verdict::Allow { detail: inner, audited: None, .. } => {
                            let _ = write!(detail, " [{inner}]");
                            continue;
                        }
                        refused => return refused,
                    },
                    Target::Restricted(what) => {
                        let _ = write!(detail, " {what}");
                        match self.restricted_role(&identity) {
                            Some(role) => {
                                let _ = write!(detail, " role={role}");
                                continue;
                            }
                            None => return self.refuse_restricted(detail, &identity),
                        }
                    }
                };
                if let Target::Playbook(p) = target {
                    let _ = write!(detail, " playbook={p}");
                }
                let _ = write!(detail, " rule=\"{}\"", decision.rule);
                if !decision.allowed {
                    let _ = write!(
                        detail,
                        " user={} roles={}",
                        identity.user_id.as_deref().unwrap_or("-"),
                        identity.roles.join(",")
                    );
                    return self.finish(Err(Denial::forbidden(playbook, permission, detail)), Some(&identity));
                }
            }
        }
        self.finish(Ok(detail), Some(&identity))
    }

    /// The first role of the user that is one of the `restricted_roles`.
    fn restricted_role<'i>(&self, identity: &'i Identity) -> Option<&'i str> {
        identity.roles.iter().find(|r| self.restricted_roles.contains(r)).map(String::as_str)
    }

    fn refuse_restricted(&self, mut detail: String, identity: &Identity) -> Verdict {
        let _ = write!(
            detail,
            " needs one of [{}]; user={} roles={}",
            self.restricted_roles.join(","),
            identity.user_id.as_deref().unwrap_or("-"),
            identity.roles.join(",")
        );
        self.finish(Err(Denial::refused("restricted", detail)), Some(identity))
    }

    /// The targets a source found, if every playbook among them is spelled in
    /// `playbook_path_chars`.
    fn in_alphabet(&self, found: Result<Vec<Target>, PlaybookError>) -> Result<Vec<Target>, PlaybookError> {
        let targets = found?;
        for target in &targets {
            if let Target::Playbook(playbook) = target {
                self.playbook_alphabet.check(playbook)?;
            }
        }
        Ok(targets)
    }

    fn playbook_error(&self, route_id: &str, e: &PlaybookError, identity: Option<&Identity>) -> Verdict {
        self.finish(Err(self.playbook_denial(route_id, e)), identity)
    }

    fn playbook_denial(&self, route_id: &str, e: &PlaybookError) -> Denial {
        let reason = match e {
            PlaybookError::Path(_) => "invalid_playbook_path",
            PlaybookError::Ambiguous(_)
            | PlaybookError::Forward(_)
            | PlaybookError::GraphQl(GraphQlError::Ambiguous(_)) => AMBIGUOUS,
            _ => "playbook_not_found",
        };
        Denial::bad_request(reason, format!("route={route_id} {e}"))
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
                logout: None,
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

/// The requirement a JSON-RPC body's `method` picks; `None` for a method the route does not
/// list, or a body that is not one call object (a batch).
fn jsonrpc_need(
    methods: &[(String, Option<String>)],
    targets: Vec<Target>,
    body: &[u8],
) -> Result<Option<Need>, PlaybookError> {
    let json = parse_body(body)?;
    let method = json.get("method").and_then(|m| m.as_str());
    Ok(match methods.iter().find(|(m, _)| Some(m.as_str()) == method) {
        Some((_, Some(permission))) => {
            Some(Need::Authorize(vec![Demand { permission: permission.clone(), source: None, targets }]))
        }
        Some((_, None)) => Some(Need::Authenticate { logout: false }),
        None => None,
    })
}

/// Which per-request headers `cfg` mentions. Any string of the configuration counts (a route's
/// header source, a forwarded header list, a token source, anything), in any case, even inside a
/// longer string: a header the configuration could read is never left out of a remembered
/// allow's key, and a false alarm only makes the key longer.
fn mentioned_per_request_headers(cfg: &PluginConfig) -> Vec<&'static str> {
    let text = serde_json::to_string(cfg).unwrap_or_default().to_ascii_lowercase();
    let all = crate::protocol::hits::PER_REQUEST;
    // An unserialisable configuration (none is) mentions them all.
    all.iter().copied().filter(|name| text.is_empty() || text.contains(name)).collect()
}

fn compile_restricted_roles(roles: &[String]) -> Result<Vec<String>, ConfigError> {
    roles
        .iter()
        .enumerate()
        .map(|(i, r)| match r.trim() {
            "" => Err(ConfigError::new(format!("restricted_roles[{i}]"), "empty role name")),
            r => Ok(r.to_owned()),
        })
        .collect()
}

/// A header name as the upstreams that read it least strictly do: lowercase, `_` as `-`.
/// Whether `name` spells `key` once [`header_key`] is applied to it (`key` already is).
fn same_header_key(name: &[u8], key: &[u8]) -> bool {
    let fold = |b: u8| if b == b'_' { b'-' } else { b.to_ascii_lowercase() };
    name.len() == key.len() && name.iter().zip(key).all(|(&a, &b)| fold(a) == b)
}

fn header_key(name: &str) -> String {
    name.bytes().map(|b| if b == b'_' { '-' } else { char::from(b.to_ascii_lowercase()) }).collect()
}

/// The route a request is decided on (see [`Guard::reach`]).
struct Reached<'g, 'h> {
    /// The route's id; for a forwarded request, the pass-through's and the reached route's.
    id: String,
    action: &'g RouteAction,
    /// The normalised path the route reads.
    path: String,
    /// The headers the route reads.
    headers: Cow<'h, [(String, String)]>,
    max_body_bytes: u64,
    /// Forwarded without the body (the gateway drops it for `GET` and `DELETE`).
    body_dropped: bool,
}

/// The longest `stats_window_ms`: an operator watching `/stats` waits at most this long for a
/// count (a minute is also the shortest scrape interval Prometheus is commonly run at).
pub const MAX_STATS_WINDOW_MS: u64 = 60_000;

/// The 400 reason for a request that can be read more than one way.
const AMBIGUOUS: &str = "ambiguous_request";

/// Why a request has no user: a token that fails (401), or several tokens (400).
#[derive(Debug, thiserror::Error)]
enum Unauthenticated {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Not refused: the token's keys are being fetched.
    #[error("the issuer's keys are being fetched")]
    AwaitingKeys,
    #[error(transparent)]
    Ambiguous(#[from] AmbiguousToken),
}

fn allowed(headers: Vec<(String, String)>, detail: String) -> Verdict {
    Verdict::Allow { headers, detail, audited: None, logout: None }
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

#[cfg(test)]
mod forward_tests;

//! The plugin configuration Envoy hands the filter (SPEC section 9), as serde types.
//!
//! Parsing is the first of two phases: these types mirror the JSON exactly and
//! refuse unknown fields, so a typo is an error rather than a silently ignored
//! option. [`crate::Guard::from_json`] then compiles them into immutable
//! structures; every error of either phase names the field path it is about.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::opaque::OpaqueShapeConfig;
use crate::policy::PolicyDocument;

pub use crate::error::ConfigError;

/// Parses JSON into `T`, naming the field path of the first error.
#[cfg(feature = "field-paths")]
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, err.into_inner())
    })
}

/// Without `field-paths`: serde's message with its line and column, and the text around them.
#[cfg(not(feature = "field-paths"))]
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, ConfigError> {
    serde_json::from_slice(json).map_err(|err| {
        let near = json_near(json, err.line(), err.column());
        ConfigError::new("", format!("{err}, near `{near}`"))
    })
}

/// Up to 40 bytes of `json` before 1-based (`line`, `column`), and 10 after.
#[cfg(not(feature = "field-paths"))]
fn json_near(json: &[u8], line: usize, column: usize) -> String {
    let text = String::from_utf8_lossy(json);
    let line = text.lines().nth(line.saturating_sub(1)).unwrap_or_default();
    let at = column.min(line.len());
    let start = (0..=at.saturating_sub(40)).rev().find(|i| line.is_char_boundary(*i)).unwrap_or(0);
    let end = (at.saturating_add(10).min(line.len())..=line.len()).find(|i| line.is_char_boundary(*i));
    line.get(start..end.unwrap_or(line.len())).unwrap_or_default().to_owned()
}

/// Whether decisions are enforced or only logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Denials are answered (401/403/...). The default.
    #[default]
    Enforce,
    /// Every decision is logged, every request goes upstream: for rolling out a policy.
    Audit,
}

/// The whole plugin configuration.
///
/// # Defaults
/// `mode: enforce`, the three token sources of SPEC section 2, `opaque_tokens: false`,
/// `opaque_token_shape`: NoETL's 32 lowercase hex characters,
/// `clock_skew_secs: 60`, `default_action: deny`, `max_body_bytes: 65536`,
/// `allow_cors_preflight: true`, `hold_headers_for_body: true`, `jwt_cache_size: 1000`, the
/// `x-noetl-user-*` header names, `identity_header_prefix: x-noetl-user-`,
/// `playbook_path_chars: _-.`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// `enforce` or `audit`.
    #[serde(default)]
    pub mode: Mode,
    /// Where the session token is looked for, in order.
    #[serde(default = "default_token_sources")]
    pub token_sources: Vec<TokenSourceConfig>,
    /// Accept tokens that are not JWTs (only the validation service can vouch for them).
    #[serde(default)]
    pub opaque_tokens: bool,
    /// What an opaque token must look like to be sent to the validation service (with
    /// `opaque_tokens`); any other token that is not a JWT is refused without a callout.
    #[serde(default)]
    pub opaque_token_shape: OpaqueShapeConfig,
    /// Leeway for `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_secs: u64,
    /// The JWT issuers this filter trusts.
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// The per-session cache (used with a validation service).
    #[serde(default)]
    pub session: SessionConfig,
    /// The session-validation service; absent means roles come from the JWT alone.
    #[serde(default)]
    pub validation: Option<ValidationConfig>,
    /// Where a `catalog_id` or `execution_id` is looked up; absent means a request that names
    /// its target by such an id needs the permission on every playbook.
    #[serde(default)]
    pub resolver: Option<ResolverConfig>,
    /// Ordered route rules; the first that matches decides.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// What happens to a request that no route matches.
    #[serde(default)]
    pub default_action: DefaultAction,
    /// The largest request body a body-sourced route buffers; more is a 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Let CORS preflights through without a token, as `jwt_authn`'s `bypass_cors_preflight`.
    #[serde(default = "default_true")]
    pub allow_cors_preflight: bool,
    /// Hold a body-sourced request's headers until the decision (needs Envoy's
    /// `allow_on_headers_stop_iteration: true`, Envoy 1.35+). True by default, because only then
    /// does a denied request never reach the upstream. False is an opt-in for hosts without that
    /// knob: the headers (with the identity headers) go upstream first and only the body waits,
    /// so an upstream that acts on the head alone acts on requests the filter then denies
    /// ([`EARLY_HEAD_WARNING`] is logged when a configuration says so).
    #[serde(default = "default_true")]
    pub hold_headers_for_body: bool,
    /// How many verified tokens each worker remembers (by SHA-256, until `exp`) so a token's
    /// signature is checked once, as Envoy's `jwt_cache_config`; 0 disables it.
    #[serde(default = "default_jwt_cache_size")]
    pub jwt_cache_size: u64,
    /// Policy decisions (roles, permission, playbook) each worker remembers for the active
    /// policy, so a question is matched against the globs once; 0 disables it.
    #[serde(default = "default_decision_cache_size")]
    pub decision_cache_size: u64,
    /// Requests each worker remembers whole once allowed from its caches alone, so the same
    /// request again is allowed without being read again; 0 disables it.
    #[serde(default = "default_hit_cache_size")]
    pub hit_cache_size: u64,
    /// On the Wasm build, counts the stats of remembered allows (the requests `hit_cache_size`
    /// answers) a window of this many milliseconds at a time: the first in a window at once,
    /// the rest by the tick that ends it. 0, the default, counts each when it is answered. Each
    /// counter increment there is a host call, and a remembered allow counts three. The native
    /// build counts each at once whatever this says: an increment there is an atomic add.
    #[serde(default)]
    pub stats_window_ms: u64,
    /// Names of the identity headers sent upstream.
    #[serde(default)]
    pub headers: HeaderNames,
    /// The roles a `restricted: true` route admits (raw SQL, secrets, maintenance).
    #[serde(default = "default_restricted_roles")]
    pub restricted_roles: Vec<String>,
    /// Every request header whose name starts with this (case-insensitively, `_` read as `-`)
    /// is removed before anything else: the identity header family is the filter's alone.
    #[serde(default = "default_identity_header_prefix")]
    pub identity_header_prefix: String,
    /// The characters a playbook path may hold besides ASCII letters, digits and `/`.
    #[serde(default = "default_playbook_path_chars")]
    pub playbook_path_chars: String,
    /// Roles, permissions and playbook globs.
    pub policy: PolicyDocument,
}

/// What the filter logs (and `playbook-guard render` prints) for `hold_headers_for_body: false`.
pub const EARLY_HEAD_WARNING: &str = "hold_headers_for_body is false: on body-sourced routes the request head goes \
upstream before the body is decided, so an upstream that acts on the head alone (or answers before reading the body) \
acts on requests the filter then denies; set it to true with Envoy's allow_on_headers_stop_iteration: true";

fn default_token_sources() -> Vec<TokenSourceConfig> {
    vec![
        TokenSourceConfig { header: Some("authorization".into()), prefix: Some("Bearer ".into()), cookie: None },
        TokenSourceConfig { header: Some("x-session-token".into()), prefix: None, cookie: None },
        TokenSourceConfig { header: None, prefix: None, cookie: Some("session_token".into()) },
    ]
}

fn default_restricted_roles() -> Vec<String> {
    vec!["admin".into()]
}

fn default_identity_header_prefix() -> String {
    "x-noetl-user-".into()
}

fn default_playbook_path_chars() -> String {
    crate::path::PlaybookAlphabet::DEFAULT.into()
}

fn default_hit_cache_size() -> u64 {
    1000
}

fn default_decision_cache_size() -> u64 {
    1000
}

fn default_jwt_cache_size() -> u64 {
    1000
}

fn default_clock_skew() -> u64 {
    60
}

fn default_max_body_bytes() -> u64 {
    64 * 1024
}

fn default_true() -> bool {
    true
}

/// One place a token may be: a header (with an optional scheme prefix) or a cookie.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSourceConfig {
    /// Header name (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A prefix the header value must start with, such as `Bearer ` (scheme compared case-insensitively).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Cookie name (case-sensitive, as cookies are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// A trusted JWT issuer and how to check its tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// A name for logs and errors.
    pub name: String,
    /// The exact `iss` this provider's tokens carry.
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any audience.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allowed `alg` values (`HS256`, `RS256`, ...).
    pub algorithms: Vec<String>,
    /// Environment variable holding the HMAC secret (raw bytes, at least 32).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// An inline JWK Set (RFC 7517).
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// A JWK Set fetched through an Envoy cluster.
    #[serde(default)]
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// A JWK Set found through the issuer's OpenID Connect discovery document.
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
    /// Where the user's roles are (each an array, or a space-separated string): a top-level
    /// claim name, a JSON pointer (RFC 6901, starting with `/`), or a list of either, merged.
    #[serde(default)]
    pub roles_claim: Option<RolesClaim>,
    /// The IdP's role and group names mapped to the policy's roles, many to many.
    #[serde(default)]
    pub role_map: Option<BTreeMap<String, Vec<String>>>,
    /// With `role_map`: what becomes of a name it does not list (`drop` by default).
    #[serde(default)]
    pub unmapped_roles: Option<UnmappedRoles>,
    /// Scopes that must all be granted, in `scope` (space-separated) or `scp` (array or string).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// If non-empty, the `azp` claim must be one of these.
    #[serde(default)]
    pub authorized_parties: Vec<String>,
    /// Claims that must be present: a list of names, or names with the value they must have.
    #[serde(default)]
    pub required_claims: Option<RequiredClaims>,
    /// If non-empty, the `email` claim must be in one of these domains.
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// If set, the Auth0 `org_id` claim must equal it.
    #[serde(default)]
    pub organization: Option<String>,
    /// Whether this provider's tokens are sessions the validation service vouches for (when
    /// one is configured). `false`: the token alone says who the user is and which roles they
    /// hold, as with no validation service: for an IdP whose tokens NoETL has no session for.
    #[serde(default = "default_true")]
    pub validate_sessions: bool,
}

/// `roles_claim`: one claim name or JSON pointer, or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RolesClaim {
    /// One claim name or pointer.
    One(String),
    /// Several, whose roles are merged in this order.
    Many(Vec<String>),
}

impl RolesClaim {
    /// The claim names and pointers, in order.
    pub fn as_slice(&self) -> &[String] {
        match self {
            RolesClaim::One(one) => std::slice::from_ref(one),
            RolesClaim::Many(many) => many,
        }
    }
}

/// What becomes of a role name that `role_map` does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmappedRoles {
    /// Left out of the user's roles. The default.
    #[default]
    Drop,
    /// Kept under its own name (if it is a role name).
    Keep,
}

/// `required_claims`: `["email"]` or `{"email_verified": true, "tenant": null}` (null: any value).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RequiredClaims {
    /// Claims that must be present, with any value.
    Names(Vec<String>),
    /// Claims that must be present with this value (null: any value).
    Values(BTreeMap<String, serde_json::Value>),
}

/// Where a remote JWK Set comes from.
///
/// # Defaults
/// `cache_secs: 600`, `timeout_ms: 2000`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// The Envoy cluster to send the request through.
    pub cluster: String,
    /// The JWKS URL (its authority and path are used on the cluster).
    pub uri: String,
    /// How long a fetched set is trusted.
    #[serde(default = "default_jwks_cache_secs")]
    pub cache_secs: u64,
    /// The fetch timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// Where a provider's keys come from through OpenID Connect Discovery 1.0: the document at
/// `<issuer>/.well-known/openid-configuration`, then the JWK Set at its `jwks_uri`.
///
/// # Defaults
/// `cache_secs: 600`, `timeout_ms: 2000`, `jwks_cluster`: `cluster`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// The Envoy cluster the discovery document is fetched through.
    pub cluster: String,
    /// Each fetch's timeout (the document's, then the set's).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long the fetched set (and the document that named it) is trusted.
    #[serde(default = "default_jwks_cache_secs")]
    pub cache_secs: u64,
    /// The Envoy cluster the JWK Set is fetched through, when its host is not `cluster`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_cluster: Option<String>,
}

fn default_jwks_cache_secs() -> u64 {
    600
}

fn default_timeout_ms() -> u64 {
    2000
}

/// The per-session cache.
///
/// # Defaults
/// `ttl_secs: 300`, `negative_ttl_secs: 30`, `max_entries: 100000`,
/// `max_negative_entries: 10000`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// How long a validation answer is fresh.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// How long an invalid-session answer is remembered.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl_secs: u64,
    /// Bound on cached valid sessions; the oldest go first.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Bound on cached invalid-session answers, kept apart from valid sessions so that no
    /// number of unknown tokens can evict one.
    #[serde(default = "default_max_negative_entries")]
    pub max_negative_entries: u64,
    /// Sessions each worker keeps decoded, with the shared-data version they were read at, so
    /// a cache hit decodes nothing while its bucket is unchanged; 0 disables it.
    #[serde(default = "default_memo_entries")]
    pub memo_entries: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ttl_secs: default_ttl(),
            negative_ttl_secs: default_negative_ttl(),
            max_entries: default_max_entries(),
            max_negative_entries: default_max_negative_entries(),
            memo_entries: default_memo_entries(),
        }
    }
}

fn default_ttl() -> u64 {
    300
}

fn default_negative_ttl() -> u64 {
    30
}

fn default_max_entries() -> u64 {
    100_000
}

fn default_memo_entries() -> u64 {
    1000
}

/// A flood of unknown tokens at the default cold-callout limit adds 50 negative entries a
/// second per worker, kept `negative_ttl_secs` (30): 1,500 per worker. Ten thousand hold that
/// for six workers, in a few MB of shared data; past it, the oldest negative entries go (and
/// their tokens become cold again, so the limit still bounds the callouts).
fn default_max_negative_entries() -> u64 {
    10_000
}

/// The session-validation callout.
///
/// # Defaults
/// `path: /api/auth/session/validate`, `credential: pg_auth`, `timeout_ms: 2000`,
/// `failure_mode: deny`, `stale_grace_secs: 60`, `authority`: the cluster name,
/// `token_roles: ignore`, `max_cold_callouts_per_sec: 50`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    /// The Envoy cluster of the NoETL server.
    pub cluster: String,
    /// The validation API path.
    #[serde(default = "default_validation_path")]
    pub path: String,
    /// The `credential` sent with the token; `null` omits it.
    #[serde(default = "default_credential")]
    pub credential: Option<String>,
    /// The callout timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// What to do when the service cannot answer.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// How long past its freshness a stale entry may serve under `serve_stale`.
    #[serde(default = "default_stale_grace")]
    pub stale_grace_secs: u64,
    /// The callout's `:authority` (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    /// How a provider's `roles_claim` combines with the service's roles.
    #[serde(default)]
    pub token_roles: TokenRoles,
    /// Per worker, how many callouts a second may ask about sessions the cache has never seen
    /// (a token bucket of this rate and burst); past it such requests get 503.
    #[serde(default = "default_max_cold_callouts")]
    pub max_cold_callouts_per_sec: u64,
}

/// The lookup callouts that map an id NoETL resolves to the playbook it names.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    /// The Envoy cluster of the NoETL server.
    pub cluster: String,
    /// The lookup's `:authority` (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    /// The callout timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long an answer is kept. The mapping never changes (a catalog entry's path, the
    /// playbook a run ran), so this only bounds how long an entry can outlive its row.
    #[serde(default = "default_lookup_ttl")]
    pub ttl_secs: u64,
    /// How many answers the shared cache holds; the oldest go first.
    #[serde(default = "default_lookup_entries")]
    pub max_entries: u64,
    /// The most distinct ids one request may need looked up (a batch); past it the request
    /// needs the permission on every playbook.
    #[serde(default = "default_lookups_per_request")]
    pub max_lookups_per_request: u64,
    /// Per worker, how many lookups a second may be sent (a token bucket of this rate and
    /// burst); past it requests that need one get 503.
    #[serde(default = "default_lookups_per_sec")]
    pub max_lookups_per_sec: u64,
    /// NoETL's catalog entry API: `POST {"catalog_id": "<id>"}`, answered with the entry's `path`.
    #[serde(default = "default_catalog_lookup_path")]
    pub catalog_path: String,
    /// NoETL's run detail API, `{id}` standing for the execution id: `GET`, answered with the
    /// run's `path`.
    #[serde(default = "default_execution_lookup_path")]
    pub execution_path: String,
}

fn default_lookup_ttl() -> u64 {
    86_400
}

fn default_lookup_entries() -> u64 {
    100_000
}

fn default_lookups_per_request() -> u64 {
    8
}

fn default_lookups_per_sec() -> u64 {
    50
}

fn default_catalog_lookup_path() -> String {
    "/api/catalog/resource".into()
}

fn default_execution_lookup_path() -> String {
    "/api/executions/{id}".into()
}

fn default_validation_path() -> String {
    "/api/auth/session/validate".into()
}

fn default_credential() -> Option<String> {
    Some("pg_auth".into())
}

fn default_stale_grace() -> u64 {
    60
}

/// NoETL answers each callout with a PostgreSQL query. Fifty new sessions a second per worker is
/// 180,000 an hour, far more logins than a NoETL deployment sees (a known session calls out
/// once per `ttl_secs` and is not limited), while a flood of random tokens costs NoETL at most
/// 50 queries a second per Envoy worker.
fn default_max_cold_callouts() -> u64 {
    50
}

/// How the roles in a JWT claim combine with those the validation service returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRoles {
    /// Only the service's roles count (the default: the service is the source of truth).
    #[default]
    Ignore,
    /// The token's roles when the service returns none.
    Fallback,
    /// Both, merged.
    Union,
}

/// What to do when the validation service fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// 503 with `Retry-After`. The default.
    #[default]
    Deny,
    /// Serve the stale entry for up to `stale_grace_secs`, then deny.
    ServeStale,
}

/// One route rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for operators (`routes` table, `explain`, logs); not matched on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which requests the rule covers.
    #[serde(rename = "match")]
    pub matcher: RouteMatchConfig,
    /// No token needed.
    #[serde(default)]
    pub public: bool,
    /// A valid session is enough; no playbook check.
    #[serde(default)]
    pub authenticate: bool,
    /// Like `authenticate`, and once the upstream answers 2xx the session is evicted from the
    /// cache on every worker (the next request asks the validation service again).
    #[serde(default)]
    pub logout: bool,
    /// A valid session whose roles allow `permission` on the playbook: one requirement, or a
    /// list that must all hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize: Option<Requirements>,
    /// A JSON-RPC body whose `method` picks the requirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonrpc: Option<JsonRpcConfig>,
    /// A valid session holding one of the top-level `restricted_roles`.
    #[serde(default)]
    pub restricted: bool,
    /// Refused (403) for everyone before any token is looked at: routes only NoETL's own
    /// workers call.
    #[serde(default)]
    pub blocked: bool,
    /// A pass-through (the NoETL gateway's `/noetl/{*path}`): the request is decided as the
    /// route it reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardConfig>,
    /// Overrides the top-level `max_body_bytes` for this route.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
}

/// A pass-through route: the path after `strip_prefix`, put after `prefix`, is the path the
/// forwarded request reaches (`/noetl/x` -> `/api/x`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// What the pass-through removes from the request path (`/noetl/`).
    pub strip_prefix: String,
    /// What it puts in front of the rest (`/api/`).
    pub prefix: String,
}

/// Request matching: all given conditions must hold; exactly one of `path`, `prefix`, `glob`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatchConfig {
    /// HTTP methods (any, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// The exact path (query string ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A path glob (`*` within a segment, `**` across).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
}

/// What an `authorize` route checks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeConfig {
    /// The permission asked for (`execute`, `view`, ...).
    pub permission: String,
    /// Where the playbook path comes from.
    pub playbook: PlaybookSourceConfig,
}

/// `authorize`: one requirement, or several that must all hold.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
// Read once per configuration and compiled away: the size of one requirement does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Requirements {
    /// `authorize: {permission, playbook}` (boxed: a source config is large beside a `Vec`).
    One(Box<AuthorizeConfig>),
    /// `authorize: [{permission, playbook}, ...]`.
    All(Vec<AuthorizeConfig>),
}

impl Requirements {
    /// The requirements, in order.
    pub fn as_slice(&self) -> &[AuthorizeConfig] {
        match self {
            Requirements::One(one) => std::slice::from_ref(one),
            Requirements::All(all) => all,
        }
    }
}

// By hand rather than `#[serde(untagged)]`: an untagged enum buffers the value and its errors
// lose the field path ("data did not match any variant"); this keeps `authorize[1].permission`.
impl<'de> Deserialize<'de> for Requirements {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Requirements;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a requirement {permission, playbook} or a list of them")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Requirements, A::Error> {
                AuthorizeConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|one| Requirements::One(Box::new(one)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Requirements, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(Requirements::All)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A JSON-RPC route (`{"method": ...}` in the body): what each method needs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonRpcConfig {
    /// Where the playbook path comes from (a head source: `path_capture`, `path_after_prefix`).
    pub playbook: PlaybookSourceConfig,
    /// Method -> the permission it needs on that playbook, or `authenticate` for a session only.
    /// Any other method is refused (403).
    pub methods: BTreeMap<String, String>,
}

/// The kinds of id only NoETL can map to a playbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupKind {
    /// A catalog entry's id: the entry's path.
    CatalogId,
    /// A run's id: the path of the playbook it runs.
    ExecutionId,
}

impl LookupKind {
    /// The name used in configuration, logs and cache keys.
    pub fn as_str(self) -> &'static str {
        match self {
            LookupKind::CatalogId => "catalog_id",
            LookupKind::ExecutionId => "execution_id",
        }
    }
}

/// When a body field counts as given (a value that does not leaves the choice to the next field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Anything but absent or `null`. The default.
    #[default]
    NotNull,
    /// Anything but absent, `null` or `""` (a field the server coerces to a string).
    NonEmpty,
    /// Anything Python would not call falsy: absent, `null`, `false`, `0`, `""` leave the choice
    /// to the next field (a field the server coerces to an int and tests with `if`).
    Truthy,
}

/// One body field that may name the target.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonFieldConfig {
    /// A JSON pointer (RFC 6901), relative to the array item under `each`.
    pub pointer: String,
    /// The field holds an id the server resolves: when given, the `resolver` looks it up, or
    /// without one the request needs the permission on every playbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<LookupKind>,
    /// When the field counts as given.
    #[serde(default)]
    pub present: Presence,
}

/// Where a route finds the playbook path: exactly one field.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookSourceConfig {
    /// Every playbook: the target is not in the request (an execution id in the URL, a listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_playbooks: Option<bool>,
    /// Body fields in the server's precedence order: the first given decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_fields: Option<Vec<JsonFieldConfig>>,
    /// With `json_fields`: a pointer to an array whose every item is read (a batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub each: Option<String>,
    /// With `json_fields`: the playbook the server uses when no field is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// With `json_fields`: no field given means every playbook (a listing without a filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_if_absent: Option<bool>,
    /// With `json_fields`: body fields (JSON pointers, relative to the item under `each`) that,
    /// when given (not null), make the request need a `restricted_roles` role too: fields
    /// that change how NoETL runs the playbook, not which one (`execution_pool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restricted_fields: Option<Vec<String>>,
    /// With `graphql_variable`: fields whose calls need one of the `restricted_roles`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphql_restricted_fields: Option<Vec<String>>,
    /// With `graphql_variable`: fields whose `input: {method, endpoint, body}` is a request the
    /// gateway forwards (`proxyRequest`); each is decided as the route it reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphql_forward_fields: Option<Vec<String>>,
    /// The request path after the route's `prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_after_prefix: Option<bool>,
    /// The part of the request path matched by the one `*` or `**` segment of the route's
    /// `glob` (`/api/playbooks/**/run` captures `data/x` from `/api/playbooks/data/x/run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_capture: Option<bool>,
    /// A JSON pointer (RFC 6901) into the JSON request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_pointer: Option<String>,
    /// The argument of `executePlaybook(...)` in a GraphQL request, literal or variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphql_variable: Option<String>,
    /// The GraphQL field whose argument is read (default `executePlaybook`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphql_field: Option<String>,
    /// A request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// With `path_capture`: the capture is an id the `resolver` looks up (`execution_id` in
    /// `/api/executions/*/cancel`), not a playbook path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<LookupKind>,
    /// The path inside the catalog YAML of a body field, read as NoETL's catalog registration
    /// reads it (see [`crate::catalog_yaml`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_yaml: Option<CatalogYamlConfig>,
}

/// `catalog_yaml`: where the catalog content (YAML, or base64 of it) is in the JSON body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogYamlConfig {
    /// A JSON pointer (RFC 6901) to the content string (`/content`).
    pub pointer: String,
}

/// What a request that matches no route gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    /// 403. The default.
    #[default]
    Deny,
    /// Passed with no token check.
    Allow,
    /// A valid session is required, no playbook check.
    Authenticate,
}

/// Names of the identity headers sent upstream.
///
/// # Defaults
/// `x-noetl-user-id`, `x-noetl-user-email`, `x-noetl-user-name`, `x-noetl-user-roles`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderNames {
    /// The user's id (the JWT `sub`, or the validation service's `user_id`).
    #[serde(default = "default_user_id_header")]
    pub user_id: String,
    /// The user's email.
    #[serde(default = "default_email_header")]
    pub email: String,
    /// The user's display name.
    #[serde(default = "default_name_header")]
    pub display_name: String,
    /// The user's roles, comma-separated.
    #[serde(default = "default_roles_header")]
    pub roles: String,
}

impl Default for HeaderNames {
    fn default() -> Self {
        HeaderNames {
            user_id: default_user_id_header(),
            email: default_email_header(),
            display_name: default_name_header(),
            roles: default_roles_header(),
        }
    }
}

fn default_user_id_header() -> String {
    "x-noetl-user-id".into()
}

fn default_email_header() -> String {
    "x-noetl-user-email".into()
}

fn default_name_header() -> String {
    "x-noetl-user-name".into()
}

fn default_roles_header() -> String {
    "x-noetl-user-roles".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let err =
            parse_json::<PluginConfig>(br#"{"policy":{"roles":{}},"routes":[{"match":{"prefx":"/"}}]}"#).unwrap_err();
        assert_eq!(err.path, "routes[0].match.prefx");
        assert!(err.message.contains("prefx"), "{err}");
    }

    #[test]
    fn defaults_follow_the_spec() {
        let cfg: PluginConfig = parse_json(br#"{"policy":{"roles":{}}}"#).unwrap();
        assert_eq!(cfg.mode, Mode::Enforce);
        assert_eq!(cfg.clock_skew_secs, 60);
        assert_eq!(cfg.max_body_bytes, 65536);
        assert_eq!(cfg.session.ttl_secs, 300);
        assert_eq!(cfg.session.negative_ttl_secs, 30);
        assert_eq!(cfg.session.max_entries, 100_000);
        assert_eq!(cfg.default_action, DefaultAction::Deny);
        assert_eq!(cfg.token_sources.len(), 3);
        assert_eq!(cfg.headers.roles, "x-noetl-user-roles");
        assert!(cfg.allow_cors_preflight);
    }

    #[test]
    fn validation_defaults_and_null_credential() {
        let v: ValidationConfig = parse_json(br#"{"cluster":"noetl"}"#).unwrap();
        assert_eq!(v.path, "/api/auth/session/validate");
        assert_eq!(v.credential.as_deref(), Some("pg_auth"));
        assert_eq!(v.failure_mode, FailureMode::Deny);
        let v: ValidationConfig = parse_json(br#"{"cluster":"noetl","credential":null}"#).unwrap();
        assert_eq!(v.credential, None);
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"{", b"[]", b"null", b"{\"policy\": 3}", b"\xff\xfe"] {
            assert!(parse_json::<PluginConfig>(bad).is_err());
        }
    }

    #[test]
    fn within_joins_paths() {
        assert_eq!(ConfigError::new("roles.x", "m").within("policy").path, "policy.roles.x");
        assert_eq!(ConfigError::new("[0].n", "m").within("keys").path, "keys[0].n");
        assert_eq!(ConfigError::new("", "m").within("policy").path, "policy");
        assert_eq!(ConfigError::new("a", "m").to_string(), "a: m");
    }
}

//! Route rules: which requests are public, which need a session, and which playbook and
//! permission an `authorize` route asks about (SPEC section 5).

use crate::catalog_yaml::CatalogYaml;
use crate::config::{AuthorizeConfig, DefaultAction, LookupKind, PlaybookSourceConfig, RouteConfig};
use crate::error::ConfigError;
use crate::forward::{self, ForwardError};
use crate::graphql::{self, GraphQlError};
use crate::path::{normalize_request_path, PathError, PlaybookPath};
use crate::target::{parse_body, JsonSource, Target};
use globset::GlobMatcher;
use serde_json::Value;
use std::fmt::Write as _;

/// How a route matches the (normalised) request path.
#[derive(Debug, Clone)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    Glob(GlobMatcher),
}

/// What a matched route requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// No token needed.
    Public,
    /// A valid session, no playbook check; a logout route also evicts the session.
    Authenticate {
        /// Evict the session everywhere after the upstream answers 2xx.
        logout: bool,
    },
    /// A valid session whose roles meet every requirement.
    Authorize {
        /// The requirements, all of which must hold.
        requirements: Vec<Requirement>,
    },
    /// A JSON-RPC body: its `method` picks the permission needed on the playbook from `source`.
    JsonRpc {
        /// Where the playbook comes from (the request head).
        source: PlaybookSource,
        /// Method -> permission (`None`: a session is enough). Other methods are refused.
        methods: Vec<(String, Option<String>)>,
    },
    /// A valid session holding one of the `restricted_roles`.
    Restricted,
    /// Refused (403) for everyone before any token is looked at.
    Blocked,
    /// Refused (403) before any token is looked at: `default_action: deny`.
    Deny,
    /// A pass-through (the gateway's `/noetl/{*path}`): decided as the route the forwarded
    /// request reaches, `prefix` + the path after `strip_prefix`.
    Forward {
        /// Removed from the request path as sent (`/noetl/`).
        strip_prefix: String,
        /// Put in front of the rest (`/api/`).
        prefix: String,
    },
}

/// One requirement of an `authorize` route: `permission` on the playbooks from `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The permission asked for.
    pub permission: String,
    /// Where the playbook path comes from.
    pub source: PlaybookSource,
}

impl RouteAction {
    /// Whether the decision needs the request body.
    pub fn needs_body(&self) -> bool {
        match self {
            RouteAction::Authorize { requirements } => requirements.iter().any(|r| r.source.needs_body()),
            RouteAction::JsonRpc { .. } => true,
            _ => false,
        }
    }

    /// Whether requests on the route reach other routes (a REST pass-through, or a GraphQL
    /// route with forwarding fields): a forwarded request that lands on one is refused, so no
    /// request is forwarded twice.
    pub fn is_pass_through(&self) -> bool {
        match self {
            RouteAction::Forward { .. } => true,
            RouteAction::Authorize { requirements } => requirements
                .iter()
                .any(|r| matches!(&r.source, PlaybookSource::GraphQl { forward, .. } if !forward.is_empty())),
            _ => false,
        }
    }
}

/// Where an `authorize` route finds the playbook path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaybookSource {
    /// The request path after the route's prefix.
    PathAfterPrefix(String),
    /// What the route glob's `**` (or its one `*`) matched, read greedily as Starlette reads
    /// `{path:path}`: the path after `prefix` less its last `tail` segments.
    PathCapture {
        /// The glob's literal text before the wildcard.
        prefix: String,
        /// How many segments follow the wildcard.
        tail: usize,
        /// The capture is an id to look up, not a playbook path.
        lookup: Option<LookupKind>,
    },
    /// Body fields with a precedence (see [`JsonSource`]).
    Json(JsonSource),
    /// The path inside a catalog registration's YAML (see [`CatalogYaml`]).
    CatalogYaml(CatalogYaml),
    /// The `argument` of calls to `field` in a GraphQL body.
    GraphQl {
        /// The field (`executePlaybook`).
        field: String,
        /// The argument (`name`).
        argument: String,
        /// Fields whose calls need a restricted role (`rerunExecution`).
        restricted: Vec<String>,
        /// Fields whose `input` is a request the gateway forwards (`proxyRequest`).
        forward: Vec<String>,
    },
    /// A request header (lowercased name).
    Header(String),
    /// Every playbook (the request does not say which, or NoETL alone can tell).
    Every,
}

/// Why no playbook path could be found for an `authorize` route. Answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlaybookError {
    /// The source holds nothing.
    #[error("the request names no playbook ({0})")]
    Missing(&'static str),
    /// The body is not JSON.
    #[error("the request body is not JSON")]
    BodyNotJson,
    /// The JSON pointer points at something other than a string.
    #[error("the value at {0} is not a string")]
    NotAString(String),
    /// The JSON pointer of a batch points at something other than an array.
    #[error("the value at {0} is not an array")]
    NotAnArray(String),
    /// The GraphQL request could not be read.
    #[error("{0}")]
    GraphQl(#[from] GraphQlError),
    /// The playbook path is not acceptable.
    #[error("invalid playbook path: {0}")]
    Path(#[from] PathError),
    /// The request names its playbook in a way that can be read more than one way (a header
    /// sent twice, a duplicate JSON key). Answered 400 `ambiguous_request`.
    #[error("ambiguous request: {0}")]
    Ambiguous(String),
    /// A forwarded request (gateway pass-through) that NoETL could receive more than one way.
    /// Answered 400 `ambiguous_request`.
    #[error("ambiguous request: {0}")]
    Forward(#[from] ForwardError),
}

impl PlaybookSource {
    /// Whether the playbook path is in the request body (the request must be buffered).
    pub fn needs_body(&self) -> bool {
        matches!(self, PlaybookSource::Json(_) | PlaybookSource::CatalogYaml(_) | PlaybookSource::GraphQl { .. })
    }

    /// The playbooks from the request head (path or header sources).
    pub fn from_head(&self, path: &str, headers: &[(String, String)]) -> Result<Vec<Target>, PlaybookError> {
        let raw = match self {
            PlaybookSource::PathAfterPrefix(prefix) => path.strip_prefix(prefix.as_str()).unwrap_or_default(),
            PlaybookSource::PathCapture { prefix, tail, .. } => path
                .strip_prefix(prefix.as_str())
                .and_then(|rest| strip_last_segments(rest.strip_suffix('/').unwrap_or(rest), *tail))
                .unwrap_or_default(),
            PlaybookSource::Header(name) => {
                let mut values = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
                let first = values.next().map(|(_, v)| v.as_str()).unwrap_or_default();
                // Which of two would the upstream read? Even equal values are refused: a proxy
                // on the way may join them into one `a,a`.
                if values.next().is_some() {
                    return Err(PlaybookError::Ambiguous(format!("header {name} is sent more than once")));
                }
                first
            }
            PlaybookSource::Every => return Ok(vec![Target::Every("the route covers every playbook".into())]),
            PlaybookSource::Json(_) | PlaybookSource::CatalogYaml(_) | PlaybookSource::GraphQl { .. } => {
                return Err(PlaybookError::Missing("the route reads the body"));
            }
        };
        if raw.trim().is_empty() {
            return Err(PlaybookError::Missing("empty path or header"));
        }
        if let PlaybookSource::PathCapture { lookup: Some(kind), .. } = self {
            return Ok(vec![Target::of_id(*kind, &Value::String(raw.to_owned()), "the URL")]);
        }
        Ok(vec![Target::Playbook(PlaybookPath::parse(raw)?)])
    }

    /// The playbooks in a buffered body (JSON or GraphQL sources).
    pub fn from_body(&self, body: &[u8]) -> Result<Vec<Target>, PlaybookError> {
        if let (PlaybookSource::Json(source), []) = (self, body) {
            // FastAPI reads no body at all as an optional body's default, `None` (the AI
            // routes then run their default playbook); one of only spaces is a 422 there.
            return source.targets(&Value::Null);
        }
        let json = parse_body(body)?;
        match self {
            PlaybookSource::Json(source) => source.targets(&json),
            PlaybookSource::CatalogYaml(source) => source.targets(&json),
            PlaybookSource::GraphQl { field, argument, restricted, forward } => {
                let mut targets = Vec::new();
                for name in restricted {
                    if graphql::names_field(&json, name)? {
                        targets.push(Target::Restricted(format!("GraphQL {name}")));
                    }
                }
                for name in forward {
                    for input in graphql::argument_json(&json, name, FORWARD_ARGUMENT)? {
                        targets.push(Target::Forward(forward::proxy_input(&input)?));
                    }
                }
                let raw = graphql::playbook_arguments(&json, field, argument)?;
                if raw.is_empty() && targets.is_empty() {
                    return Err(PlaybookError::Missing("no playbook call in the GraphQL request"));
                }
                for s in raw {
                    targets.push(Target::Playbook(PlaybookPath::parse(&s)?));
                }
                Ok(targets)
            }
            PlaybookSource::PathAfterPrefix(_)
            | PlaybookSource::PathCapture { .. }
            | PlaybookSource::Header(_)
            | PlaybookSource::Every => Err(PlaybookError::Missing("the route reads the request head")),
        }
    }

    /// Where the playbook comes from, for the `routes` table.
    pub fn describe(&self) -> String {
        match self {
            PlaybookSource::PathAfterPrefix(prefix) => format!("URL after {prefix}"),
            PlaybookSource::PathCapture { lookup: None, .. } => "URL `**` (greedy, decoded)".into(),
            PlaybookSource::PathCapture { lookup: Some(kind), .. } => {
                format!("URL `*` ({}: looked up, or every playbook)", kind.as_str())
            }
            PlaybookSource::CatalogYaml(source) => source.describe(),
            PlaybookSource::Json(source) => source.describe(),
            PlaybookSource::GraphQl { field, argument, restricted, forward } => {
                let mut out = format!("GraphQL {field}({argument})");
                if !forward.is_empty() {
                    let _ = write!(out, "; {}({FORWARD_ARGUMENT}): as the route reached", forward.join(", "));
                }
                if !restricted.is_empty() {
                    let _ = write!(out, "; {}: restricted", restricted.join(", "));
                }
                out
            }
            PlaybookSource::Header(name) => format!("header {name}"),
            PlaybookSource::Every => "every playbook".into(),
        }
    }
}

/// The argument of a forwarding GraphQL field: the gateway's `ProxyRequestInput`.
const FORWARD_ARGUMENT: &str = "input";

/// `rest` without its last `n` segments (and the `/` before them); `None` if it has fewer.
fn strip_last_segments(rest: &str, n: usize) -> Option<&str> {
    let mut end = rest.len();
    for _ in 0..n {
        end = rest.get(..end)?.rfind('/')?;
    }
    rest.get(..end)
}

#[derive(Debug, Clone)]
struct Route {
    id: String,
    name: Option<String>,
    methods: Option<Vec<String>>,
    path: PathMatch,
    action: RouteAction,
    max_body_bytes: u64,
}

/// A route that matched: its id (`routes[2]`, or `default_action`) and what it requires.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'r> {
    /// The rule's id, for logs.
    pub id: &'r str,
    /// What the rule requires.
    pub action: &'r RouteAction,
    /// The body limit for body-sourced playbooks.
    pub max_body_bytes: u64,
}

/// The compiled route table.
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<Route>,
    default: Route,
}

impl Routes {
    /// Compiles `routes`; errors name `[i].field`.
    pub fn compile(
        configs: &[RouteConfig],
        default_action: DefaultAction,
        max_body_bytes: u64,
    ) -> Result<Self, ConfigError> {
        let routes = configs
            .iter()
            .enumerate()
            .map(|(i, cfg)| compile_route(cfg, i, max_body_bytes).map_err(|e| e.within(&format!("[{i}]"))))
            .collect::<Result<_, _>>()?;
        let action = match default_action {
            DefaultAction::Deny => RouteAction::Deny,
            DefaultAction::Allow => RouteAction::Public,
            DefaultAction::Authenticate => RouteAction::Authenticate { logout: false },
        };
        let default = Route {
            id: "default_action".into(),
            name: None,
            methods: None,
            path: PathMatch::Prefix("/".into()),
            action,
            max_body_bytes,
        };
        Ok(Routes { routes, default })
    }

    /// The first route matching `method` and the normalised `path`, else the default action.
    ///
    /// A path with one trailing `/` is the same route as the path without it (Starlette, behind
    /// NoETL, redirects `/api/auth/logout/` to `/api/auth/logout`): an exact or glob route
    /// matches both, and a prefix `/a/b/` also matches `/a/b`. Otherwise `/api/auth/logout/`
    /// would fall through to a later route (the public `/api/auth/`) and skip the logout.
    pub fn find(&self, method: &str, path: &str) -> Matched<'_> {
        let slashless = path.strip_suffix('/').filter(|p| !p.is_empty());
        let route = self
            .routes
            .iter()
            .find(|r| {
                r.methods.as_ref().is_none_or(|m| m.iter().any(|m| m == method))
                    && match &r.path {
                        PathMatch::Exact(p) => path == p || slashless == Some(p.as_str()),
                        PathMatch::Prefix(p) => path.starts_with(p.as_str()) || p.strip_suffix('/') == Some(path),
                        PathMatch::Glob(g) => g.is_match(path) || slashless.is_some_and(|p| g.is_match(p)),
                    }
            })
            .unwrap_or(&self.default);
        Matched { id: &route.id, action: &route.action, max_body_bytes: route.max_body_bytes }
    }
}

/// One route as configured, for the `routes` table and `explain`.
#[derive(Debug, Clone, Copy)]
pub struct RouteRow<'r> {
    /// `routes[i]`, or `default_action`.
    pub id: &'r str,
    /// The operator's name for it.
    pub name: Option<&'r str>,
    /// The methods it matches (`None`: any).
    pub methods: Option<&'r [String]>,
    /// How it matches the path: `= /exact`, `/prefix*`, or the glob.
    pub path: &'r str,
    /// What it requires.
    pub action: &'r RouteAction,
}

impl Routes {
    /// Every route in order, then the default action.
    pub fn rows(&self) -> Vec<RouteRow<'_>> {
        self.routes
            .iter()
            .chain(std::iter::once(&self.default))
            .map(|r| RouteRow {
                id: &r.id,
                name: r.name.as_deref(),
                methods: r.methods.as_deref(),
                path: match &r.path {
                    PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
                    PathMatch::Glob(g) => g.glob().glob(),
                },
                action: &r.action,
            })
            .collect()
    }

    /// Whether the route `id` matches by prefix (the table shows it as `prefix*`).
    pub fn is_prefix(&self, id: &str) -> bool {
        self.routes.iter().any(|r| r.id == id && matches!(r.path, PathMatch::Prefix(_)))
    }

    /// The name of route `id`, if it has one.
    pub fn name_of(&self, id: &str) -> Option<&str> {
        self.routes.iter().find(|r| r.id == id).and_then(|r| r.name.as_deref())
    }
}

fn compile_route(cfg: &RouteConfig, index: usize, max_body_bytes: u64) -> Result<Route, ConfigError> {
    let m = &cfg.matcher;
    let path = match (&m.path, &m.prefix, &m.glob) {
        (Some(p), None, None) => {
            // Kept without its trailing `/`: `find` matches both spellings.
            let exact = normalised_config_path(p, "match.path")?;
            PathMatch::Exact(match exact.strip_suffix('/') {
                Some(slashless) if !slashless.is_empty() => slashless.to_owned(),
                _ => exact,
            })
        }
        (None, Some(p), None) => PathMatch::Prefix(normalised_config_path(p, "match.prefix")?),
        (None, None, Some(g)) => {
            if !g.starts_with('/') {
                return Err(ConfigError::new("match.glob", format!("{g:?}: request path globs start with '/'")));
            }
            let glob = globset::GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .map_err(|e| ConfigError::new("match.glob", format!("{g:?}: {}", e.kind())))?;
            PathMatch::Glob(glob.compile_matcher())
        }
        _ => return Err(ConfigError::new("match", "give exactly one of `path`, `prefix`, `glob`")),
    };
    let methods = match &m.methods {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ConfigError::new("match.methods", "empty list; omit it to match any method"))
        }
        Some(list) => Some(list.iter().map(|s| s.trim().to_ascii_uppercase()).collect()),
    };
    let given = [
        cfg.public,
        cfg.authenticate || cfg.logout,
        cfg.authorize.is_some(),
        cfg.jsonrpc.is_some(),
        cfg.restricted,
        cfg.blocked,
        cfg.forward.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ConfigError::new(
            "",
            "give exactly one of `public: true`, `authenticate: true` (or `logout: true`), `authorize`, `jsonrpc`, \
             `restricted: true`, `blocked: true`, `forward`",
        ));
    }
    let action = if cfg.public {
        RouteAction::Public
    } else if cfg.authenticate || cfg.logout {
        RouteAction::Authenticate { logout: cfg.logout }
    } else if cfg.restricted {
        RouteAction::Restricted
    } else if cfg.blocked {
        RouteAction::Blocked
    } else if let Some(fwd) = &cfg.forward {
        compile_forward(fwd).map_err(|e| e.within("forward"))?
    } else if let Some(rpc) = &cfg.jsonrpc {
        compile_jsonrpc(rpc, &path).map_err(|e| e.within("jsonrpc"))?
    } else {
        let list = cfg.authorize.as_ref().map(|a| a.as_slice()).unwrap_or_default();
        let many = matches!(cfg.authorize, Some(crate::config::Requirements::All(_)));
        if list.is_empty() {
            return Err(ConfigError::new("authorize", "list at least one requirement"));
        }
        let requirements = list
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let at = if many { format!("authorize[{i}]") } else { "authorize".into() };
                compile_requirement(a, &path).map_err(|e| e.within(&at))
            })
            .collect::<Result<_, _>>()?;
        RouteAction::Authorize { requirements }
    };
    Ok(Route {
        id: format!("routes[{index}]"),
        name: cfg.name.clone(),
        methods,
        path,
        action,
        max_body_bytes: cfg.max_body_bytes.unwrap_or(max_body_bytes),
    })
}

fn compile_forward(cfg: &crate::config::ForwardConfig) -> Result<RouteAction, ConfigError> {
    for (field, value) in [("strip_prefix", &cfg.strip_prefix), ("prefix", &cfg.prefix)] {
        // As literal as the paths the gateway forwards (see `forward::check_path`), and ending
        // in `/` so `/noetlx` is not `/noetl/` + `x`.
        let ok = value.ends_with('/') && forward::check_path(value).is_ok();
        if !ok {
            return Err(ConfigError::new(
                field,
                format!("{value:?}: a path starting and ending with '/', no '%', '.' or '..' segments"),
            ));
        }
    }
    Ok(RouteAction::Forward { strip_prefix: cfg.strip_prefix.clone(), prefix: cfg.prefix.clone() })
}

/// The capture of a route glob: its one `**` segment, or else its one `*` segment. Segments
/// after the capture may be `*` (one segment each, as Starlette's `{name}`); everything else is
/// literal, so the capture is the path after the literal prefix less that many last segments:
/// greedy, as Starlette's `{path:path}`.
fn capture_around_wildcard(glob: &str) -> Result<PlaybookSource, String> {
    let segments: Vec<&str> = glob.split('/').collect();
    let count = |w: &str| segments.iter().filter(|s| **s == w).count();
    let at = match (count("**"), count("*")) {
        (1, _) => segments.iter().position(|s| *s == "**"),
        (0, 1) => segments.iter().position(|s| *s == "*"),
        _ => None,
    }
    .ok_or_else(|| format!("{glob:?} needs exactly one `**` segment (or one `*`) to capture"))?;
    let literal = |s: &str| !s.contains(['*', '?', '[', ']', '{', '}', '\\']);
    // One segment of literal alternatives (`{status,events}`): it still spans one segment.
    let one_of = |s: &str| {
        s.strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .is_some_and(|alts| alts.split(',').all(|alt| !alt.is_empty() && literal(alt)))
    };
    let ok = segments.iter().enumerate().all(|(i, s)| i == at || literal(s) || (i > at && (*s == "*" || one_of(s))));
    if !ok {
        return Err(format!(
            "{glob:?}: besides the captured segment, the glob must be literal (or `*` or `{{a,b}}` after it)"
        ));
    }
    let prefix = segments.get(..at).unwrap_or_default().join("/") + "/";
    let tail = segments.len().saturating_sub(at + 1);
    Ok(PlaybookSource::PathCapture { prefix, tail, lookup: None })
}

fn normalised_config_path(p: &str, field: &str) -> Result<String, ConfigError> {
    if !p.starts_with('/') {
        return Err(ConfigError::new(field, format!("{p:?}: request paths start with '/'")));
    }
    normalize_request_path(p).map_err(|e| ConfigError::new(field, format!("{p:?}: {e}")))
}

fn compile_requirement(a: &AuthorizeConfig, path: &PathMatch) -> Result<Requirement, ConfigError> {
    if a.permission.trim().is_empty() {
        return Err(ConfigError::new("permission", "must not be empty"));
    }
    let source = compile_source(&a.playbook, path).map_err(|e| e.within("playbook"))?;
    Ok(Requirement { permission: a.permission.trim().to_owned(), source })
}

fn compile_jsonrpc(cfg: &crate::config::JsonRpcConfig, path: &PathMatch) -> Result<RouteAction, ConfigError> {
    let source = compile_source(&cfg.playbook, path).map_err(|e| e.within("playbook"))?;
    if source.needs_body() {
        return Err(ConfigError::new("playbook", "the body holds the JSON-RPC call: take the playbook from the URL"));
    }
    if cfg.methods.is_empty() {
        return Err(ConfigError::new("methods", "list at least one method"));
    }
    let mut methods = Vec::with_capacity(cfg.methods.len());
    for (method, need) in &cfg.methods {
        let need = need.trim();
        if need.is_empty() {
            return Err(ConfigError::new(format!("methods.{method}"), "a permission, or `authenticate`"));
        }
        methods.push((method.clone(), (need != "authenticate").then(|| need.to_owned())));
    }
    Ok(RouteAction::JsonRpc { source, methods })
}

fn compile_source(cfg: &PlaybookSourceConfig, path: &PathMatch) -> Result<PlaybookSource, ConfigError> {
    let given = [
        cfg.all_playbooks.unwrap_or(false),
        cfg.path_after_prefix.unwrap_or(false),
        cfg.path_capture.unwrap_or(false),
        cfg.json_pointer.is_some() || cfg.json_fields.is_some(),
        cfg.graphql_variable.is_some(),
        cfg.header.is_some(),
        cfg.catalog_yaml.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ConfigError::new(
            "",
            "give exactly one of `all_playbooks: true`, `path_after_prefix: true`, `path_capture: true`, \
             `json_fields` (or `json_pointer`), `graphql_variable`, `header`, `catalog_yaml`",
        ));
    }
    let json = cfg.json_pointer.is_some() || cfg.json_fields.is_some();
    for (field, set) in [
        ("each", cfg.each.is_some()),
        ("default", cfg.default.is_some()),
        ("all_if_absent", cfg.all_if_absent.is_some()),
        ("restricted_fields", cfg.restricted_fields.is_some()),
    ] {
        if set && !json {
            return Err(ConfigError::new(field, "goes with `json_fields` or `json_pointer`"));
        }
    }
    if cfg.graphql_field.is_some() && cfg.graphql_variable.is_none() {
        return Err(ConfigError::new("graphql_field", "goes with `graphql_variable`"));
    }
    if cfg.graphql_restricted_fields.is_some() && cfg.graphql_variable.is_none() {
        return Err(ConfigError::new("graphql_restricted_fields", "goes with `graphql_variable`"));
    }
    if cfg.lookup.is_some() && cfg.path_capture != Some(true) {
        return Err(ConfigError::new("lookup", "goes with `path_capture` (in `json_fields`, give it per field)"));
    }
    if cfg.graphql_forward_fields.is_some() && cfg.graphql_variable.is_none() {
        return Err(ConfigError::new("graphql_forward_fields", "goes with `graphql_variable`"));
    }
    if cfg.all_playbooks == Some(true) {
        return Ok(PlaybookSource::Every);
    }
    if cfg.path_after_prefix == Some(true) {
        let PathMatch::Prefix(prefix) = path else {
            return Err(ConfigError::new("path_after_prefix", "needs a route that matches by `prefix`"));
        };
        return Ok(PlaybookSource::PathAfterPrefix(prefix.clone()));
    }
    if cfg.path_capture == Some(true) {
        let PathMatch::Glob(glob) = path else {
            return Err(ConfigError::new("path_capture", "needs a route that matches by `glob`"));
        };
        let capture = capture_around_wildcard(glob.glob().glob()).map_err(|m| ConfigError::new("path_capture", m))?;
        return match (capture, cfg.lookup) {
            // An id is one segment: a `**` capture could hold a `/` no id has.
            (PlaybookSource::PathCapture { .. }, Some(_)) if glob.glob().glob().contains("**") => {
                Err(ConfigError::new("lookup", "an id is one URL segment: capture it with `*`, not `**`"))
            }
            (PlaybookSource::PathCapture { prefix, tail, .. }, lookup) => {
                Ok(PlaybookSource::PathCapture { prefix, tail, lookup })
            }
            (other, _) => Ok(other),
        };
    }

    if json {
        return JsonSource::compile(cfg).map(PlaybookSource::Json);
    }
    if let Some(yaml) = &cfg.catalog_yaml {
        return CatalogYaml::compile(yaml).map(PlaybookSource::CatalogYaml);
    }
    if let Some(argument) = &cfg.graphql_variable {
        let field = cfg.graphql_field.clone().unwrap_or_else(|| "executePlaybook".into());
        let restricted = cfg.graphql_restricted_fields.clone().unwrap_or_default();
        let forward = cfg.graphql_forward_fields.clone().unwrap_or_default();
        let names = [("graphql_variable", argument), ("graphql_field", &field)]
            .into_iter()
            .chain(restricted.iter().map(|r| ("graphql_restricted_fields", r)))
            .chain(forward.iter().map(|r| ("graphql_forward_fields", r)));
        for (name, value) in names {
            let ok = value.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(ConfigError::new(name, format!("{value:?} is not a GraphQL name")));
            }
        }
        if let Some(both) = forward.iter().find(|f| restricted.contains(f) || **f == field) {
            return Err(ConfigError::new(
                "graphql_forward_fields",
                format!("{both:?} is also the playbook field or a restricted field: one reading per field"),
            ));
        }
        return Ok(PlaybookSource::GraphQl { field, argument: argument.clone(), restricted, forward });
    }
    match &cfg.header {
        Some(h) if !h.trim().is_empty() => Ok(PlaybookSource::Header(h.trim().to_ascii_lowercase())),
        _ => Err(ConfigError::new("header", "empty header name")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// The one requirement's source of the route matching `method path`.
    fn source_of(r: &Routes, method: &str, path: &str) -> PlaybookSource {
        match r.find(method, path).action {
            RouteAction::Authorize { requirements } if requirements.len() == 1 => requirements[0].source.clone(),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    fn path_of(t: &Target) -> &str {
        match t {
            Target::Playbook(p) => p.as_str(),
            other => panic!("{other:?}"),
        }
    }

    fn routes(json: Value) -> Result<Routes, ConfigError> {
        let cfgs: Vec<RouteConfig> = serde_json::from_value(json).unwrap();
        Routes::compile(&cfgs, DefaultAction::Deny, 1000)
    }

    fn spec_routes() -> Routes {
        routes(json!([
            {"match": {"prefix": "/api/auth/"}, "public": true},
            {"match": {"methods": ["POST"], "path": "/graphql"},
             "authorize": {"permission": "execute", "playbook": {"graphql_variable": "name"}}},
            {"match": {"methods": ["post"], "path": "/api/run/playbook"},
             "authorize": {"permission": "execute", "playbook": {"json_pointer": "/path"}}, "max_body_bytes": 10},
            {"match": {"prefix": "/api/catalog/"},
             "authorize": {"permission": "view", "playbook": {"path_after_prefix": true}}},
            {"match": {"glob": "/static/**"}, "public": true},
            {"match": {"path": "/api/me"}, "authenticate": true},
            {"match": {"path": "/api/auth/logout"}, "logout": true},
            {"match": {"glob": "/api/playbooks/**/run"},
             "authorize": {"permission": "execute", "playbook": {"path_capture": true}}},
            {"match": {"prefix": "/api/run/by-header"},
             "authorize": {"permission": "execute", "playbook": {"header": "X-Playbook"}}}
        ]))
        .unwrap()
    }

    #[test]
    fn first_match_wins_and_methods_filter() {
        let r = spec_routes();
        for (method, path, id) in [
            ("POST", "/api/auth/login", "routes[0]"),
            ("GET", "/api/auth/", "routes[0]"),
            ("POST", "/graphql", "routes[1]"),
            ("GET", "/graphql", "default_action"),
            ("POST", "/api/run/playbook", "routes[2]"),
            ("GET", "/api/catalog/data/x", "routes[3]"),
            ("GET", "/static/css/app.css", "routes[4]"),
            ("GET", "/api/me", "routes[5]"),
            ("GET", "/api/me/more", "default_action"),
            ("GET", "/elsewhere", "default_action"),
            ("POST", "/api/auth/logout", "routes[0]"),
        ] {
            assert_eq!(r.find(method, path).id, id, "{method} {path}");
        }
        assert_eq!(r.find("GET", "/nope").action, &RouteAction::Deny);
        assert_eq!(r.find("GET", "/api/me").action, &RouteAction::Authenticate { logout: false });
        assert_eq!(r.find("POST", "/api/run/playbook").max_body_bytes, 10);
        assert_eq!(r.find("GET", "/api/catalog/x").max_body_bytes, 1000);
    }

    #[test]
    fn one_trailing_slash_is_the_same_route() {
        let r = spec_routes();
        for (method, path, id) in [
            ("GET", "/api/me/", "routes[5]"),
            ("POST", "/graphql/", "routes[1]"),
            ("GET", "/api/catalog", "routes[3]"),
            ("GET", "/api/auth", "routes[0]"),
            ("POST", "/api/playbooks/data/x/run/", "routes[7]"),
            ("GET", "/api/mex", "default_action"),
            ("GET", "/api/m", "default_action"),
            ("GET", "/", "default_action"),
        ] {
            assert_eq!(r.find(method, path).id, id, "{method} {path}");
        }
        let r = routes(json!([
            {"match": {"methods": ["POST"], "path": "/api/auth/logout"}, "logout": true},
            {"match": {"path": "/api/x/"}, "authenticate": true},
            {"match": {"path": "/"}, "authenticate": true},
            {"match": {"prefix": "/api/auth/"}, "public": true}
        ]))
        .unwrap();
        for (path, id) in [
            ("/api/auth/logout", "routes[0]"),
            ("/api/auth/logout/", "routes[0]"),
            ("/api/auth/logout/x", "routes[3]"),
            ("/api/x", "routes[1]"),
            ("/api/x/", "routes[1]"),
            ("/", "routes[2]"),
        ] {
            assert_eq!(r.find("POST", path).id, id, "{path}");
        }
        let r = spec_routes();
        let source = source_of(&r, "POST", "/api/playbooks/a/run/");
        assert_eq!(path_of(&source.from_head("/api/playbooks/data/x/run/", &[]).unwrap()[0]), "data/x");
    }

    #[test]
    fn playbook_from_path_and_header() {
        let r = spec_routes();
        let source = source_of(&r, "GET", "/api/catalog/data/x");
        assert_eq!(path_of(&source.from_head("/api/catalog/data/daily_load", &[]).unwrap()[0]), "data/daily_load");
        assert_eq!(source.from_head("/api/catalog/", &[]), Err(PlaybookError::Missing("empty path or header")));
        assert!(!source.needs_body());
        let source = source_of(&r, "GET", "/api/run/by-header");
        let headers = vec![("x-playbook".to_string(), "data/x".to_string())];
        assert_eq!(path_of(&source.from_head("/api/run/by-header", &headers).unwrap()[0]), "data/x");
        let headers = vec![("x-playbook".to_string(), "/data//x".to_string())];
        assert_eq!(source.from_head("/", &headers), Err(PlaybookError::Path(PathError::NotNormal)));
        let headers = vec![("x-playbook".to_string(), "data/../system/x".to_string())];
        assert_eq!(source.from_head("/", &headers), Err(PlaybookError::Path(PathError::DotDot)));
        assert!(matches!(source.from_head("/", &[]), Err(PlaybookError::Missing(_))));
        let twice =
            vec![("x-playbook".to_string(), "data/x".to_string()), ("X-Playbook".to_string(), "data/x".to_string())];
        assert!(matches!(source.from_head("/", &twice), Err(PlaybookError::Ambiguous(_))));
    }

    #[test]
    fn playbook_from_a_path_capture() {
        let r = spec_routes();
        let source = source_of(&r, "POST", "/api/playbooks/data/daily_load/run");
        let got = source.from_head("/api/playbooks/data/daily_load/run", &[]).unwrap();
        assert_eq!(path_of(&got[0]), "data/daily_load");
        assert!(matches!(source.from_head("/elsewhere", &[]), Err(PlaybookError::Missing(_))));
        let single = capture_around_wildcard("/api/*/view").unwrap();
        assert_eq!(path_of(&single.from_head("/api/x/view", &[]).unwrap()[0]), "x");
        let tail = capture_around_wildcard("/api/catalog/**").unwrap();
        assert_eq!(path_of(&tail.from_head("/api/catalog/a/b", &[]).unwrap()[0]), "a/b");
        // Starlette's `{path:path}` is greedy: `/api/mcp/{path}/lifecycle/{verb}`.
        let greedy = capture_around_wildcard("/api/mcp/**/lifecycle/*").unwrap();
        let got = greedy.from_head("/api/mcp/a/lifecycle/b/lifecycle/x", &[]).unwrap();
        assert_eq!(path_of(&got[0]), "a/lifecycle/b");
        assert!(matches!(greedy.from_head("/api/mcp/x", &[]), Err(PlaybookError::Missing(_))));
        for bad in ["/api/*/x/*", "/api/x", "/api/{a,b}/**", "/api/**/x/**", "/api/*/**/x", "/api/**/[ab]"] {
            assert!(capture_around_wildcard(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn playbook_from_body() {
        let r = spec_routes();
        let source = source_of(&r, "POST", "/api/run/playbook");
        assert!(source.needs_body());
        assert_eq!(path_of(&source.from_body(br#"{"path": "data/x", "args": {}}"#).unwrap()[0]), "data/x");
        assert_eq!(source.from_body(b"not json"), Err(PlaybookError::BodyNotJson));
        // No body is FastAPI's `None`: no field given. A body of spaces is no JSON.
        assert!(matches!(source.from_body(b""), Err(PlaybookError::Missing(_))));
        assert_eq!(source.from_body(b" "), Err(PlaybookError::BodyNotJson));
        assert!(matches!(source.from_body(br#"{"other": 1}"#), Err(PlaybookError::Missing(_))));
        assert_eq!(source.from_body(br#"{"path": 7}"#), Err(PlaybookError::NotAString("/path".into())));
        let twice = br#"{"path": "data/x", "path": "system/x"}"#;
        assert_eq!(source.from_body(twice), Err(PlaybookError::Ambiguous("duplicate JSON key \"path\"".into())));
        assert_eq!(source.from_body(br#"{"path": "a/%2e%2e/../b"}"#), Err(PlaybookError::Path(PathError::DotDot)));

        let source = source_of(&r, "POST", "/graphql");
        let body = json!({"query": "mutation($n: String!) { executePlaybook(name: $n) { id } }", "variables": {"n": "data/q"}});
        assert_eq!(path_of(&source.from_body(body.to_string().as_bytes()).unwrap()[0]), "data/q");
        let body = json!({"query": "query { status }"});
        assert!(matches!(source.from_body(body.to_string().as_bytes()), Err(PlaybookError::Missing(_))));
    }

    #[test]
    fn configuration_errors_name_the_field() {
        let cases = [
            (json!([{"match": {"path": "/a"}, "restricted": true, "blocked": true}]), "[0]"),
            (json!([{"match": {"path": "/a"}, "authorize": []}]), "[0].authorize"),
            (
                json!([{"match": {"path": "/a"}, "authorize": [{"permission": "v", "playbook": {"all_playbooks": true}},
                                                              {"permission": "", "playbook": {"all_playbooks": true}}]}]),
                "[0].authorize[1].permission",
            ),
            (
                json!([{"match": {"path": "/a"}, "jsonrpc": {"playbook": {"json_pointer": "/p"}, "methods": {"x": "view"}}}]),
                "[0].jsonrpc.playbook",
            ),
            (
                json!([{"match": {"glob": "/a/**"}, "jsonrpc": {"playbook": {"path_capture": true}, "methods": {}}}]),
                "[0].jsonrpc.methods",
            ),
            (
                json!([{"match": {"path": "/a"}, "authorize": {"permission": "x", "playbook": {"all_playbooks": true, "each": "/e"}}}]),
                "[0].authorize.playbook.each",
            ),
            (
                json!([{"match": {"path": "/a"}, "authorize": {"permission": "x", "playbook": {"path_capture": true, "restricted_fields": ["/e"]}}}]),
                "[0].authorize.playbook.restricted_fields",
            ),
            (
                json!([{"match": {"path": "/a"}, "authorize": {"permission": "x", "playbook": {"graphql_variable": "name", "graphql_restricted_fields": ["a.b"]}}}]),
                "[0].authorize.playbook.graphql_restricted_fields",
            ),
            (
                json!([{"match": {"path": "/a"}, "authorize": {"permission": "x", "playbook": {"json_fields": [{"pointer": "x"}]}}}]),
                "[0].authorize.playbook.json_fields[0].pointer",
            ),
            (json!([{"match": {}, "public": true}]), "[0].match"),
            (json!([{"match": {"path": "/a", "prefix": "/b"}, "public": true}]), "[0].match"),
            (json!([{"match": {"path": "a"}, "public": true}]), "[0].match.path"),
            (json!([{"match": {"prefix": "/a/../b"}, "public": true}]), "[0].match.prefix"),
            (json!([{"match": {"glob": "/a/[b"}, "public": true}]), "[0].match.glob"),
            (json!([{"match": {"glob": "a/**"}, "public": true}]), "[0].match.glob"),
            (json!([{"match": {"path": "/a", "methods": []}, "public": true}]), "[0].match.methods"),
            (json!([{"match": {"path": "/a"}}]), "[0]"),
            (json!([{"match": {"path": "/a"}, "public": true, "authenticate": true}]), "[0]"),
            (json!([{"match": {"path": "/a"}, "public": true, "logout": true}]), "[0]"),
            (
                json!([{"match": {"path": "/a"}, "authorize": {"permission": "x", "playbook": {"path_after_prefix": true}}}]),
                "[0].authorize.playbook.path_after_prefix",
            ),
            (
                json!([{"match": {"path": "/a"}, "authorize": {"permission": "x", "playbook": {}}}]),
                "[0].authorize.playbook",
            ),
            (
                json!([{"match": {"prefix": "/a"}, "authorize": {"permission": "x", "playbook": {"path_capture": true}}}]),
                "[0].authorize.playbook.path_capture",
            ),
            (
                json!([{"match": {"glob": "/a/*/b/*"}, "authorize": {"permission": "x", "playbook": {"path_capture": true}}}]),
                "[0].authorize.playbook.path_capture",
            ),
            (
                json!([{"match": {"path": "/a"}, "authorize": {"permission": "x", "playbook": {"json_pointer": "path"}}}]),
                "[0].authorize.playbook.json_pointer",
            ),
            (
                json!([{"match": {"path": "/a"}, "authorize": {"permission": "x", "playbook": {"graphql_variable": "a-b"}}}]),
                "[0].authorize.playbook.graphql_variable",
            ),
            (
                json!([{"match": {"path": "/a"}, "authorize": {"permission": " ", "playbook": {"header": "h"}}}]),
                "[0].authorize.permission",
            ),
            (
                json!([{"match": {"path": "/a"}, "public": true}, {"match": {"path": "/b"}, "authorize": {"permission": "x", "playbook": {"header": ""}}}]),
                "[1].authorize.playbook.header",
            ),
        ];
        for (json, path) in cases {
            let err = routes(json.clone()).unwrap_err();
            assert_eq!(err.path, path, "{json}: {err}");
        }
    }
}

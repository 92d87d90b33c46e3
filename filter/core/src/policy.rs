//! Roles -> permissions -> playbook globs, and the decision (SPEC section 6).
//!
//! A user may act if some role of theirs allows the (permission, playbook) and that same role
//! does not deny it, and no top-level `deny` matches. Roles the policy does not know grant
//! nothing. A rule names playbooks by globs, SQL LIKE patterns (NoETL's own permission rows use
//! them) or exact paths, and may leave some out with `unless` (a NoETL row's `deny_pattern`,
//! which binds that row alone). Every rule is compiled once (a `GlobSet`, a [`LikeSet`]); each
//! keeps an id such as `roles.developer.deny[0]` so a decision can say which rule made it.

use std::collections::BTreeMap;
use std::fmt;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ConfigError;
use crate::like::{self, LikeSet};
use crate::path::PlaybookPath;

/// The policy file, as written (`policies/*.yaml`) and as embedded in the plugin configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Any string; reported in logs, stats and the CLI.
    #[serde(default = "default_version")]
    pub version: String,
    /// Grants and denials per role.
    #[serde(default)]
    pub roles: BTreeMap<String, RolePolicy>,
    /// Rules that bind every role (guard rails).
    #[serde(default)]
    pub deny: Vec<Rule>,
}

fn default_version() -> String {
    "unversioned".into()
}

/// What one role allows and denies.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolePolicy {
    /// Grants.
    #[serde(default)]
    pub allow: Vec<Rule>,
    /// Exceptions to this role's grants.
    #[serde(default)]
    pub deny: Vec<Rule>,
}

/// Permissions on playbooks: those any of its globs, LIKE patterns or exact paths name, less
/// those its `unless` names.
///
/// A rule with `unless` is one row of NoETL's `auth.playbook_permissions`: its `deny_pattern`
/// takes back only what that row grants, where a role's `deny` takes back every grant of the
/// role.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Permission names (`execute`, `view`, ...), or `*` for all.
    pub permissions: Vec<String>,
    /// Playbook path globs: `*`/`?` within a segment, `**` across, `{a,b}`, `[..]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub playbooks: Vec<String>,
    /// SQL LIKE patterns (see [`crate::like`]): `%` any run, `/` included; `_` one character.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub like: Vec<String>,
    /// Exact playbook paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Playbooks this rule does not cover even though it names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless: Option<Unless>,
}

/// The playbooks a [`Rule`] leaves out: any glob, LIKE pattern or exact path here.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Unless {
    /// Playbook path globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub playbooks: Vec<String>,
    /// SQL LIKE patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub like: Vec<String>,
    /// Exact playbook paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// Which permissions a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Permissions {
    Any,
    Listed(Vec<String>),
}

impl Permissions {
    fn covers(&self, permission: &str) -> bool {
        match self {
            Permissions::Any => true,
            Permissions::Listed(list) => list.iter().any(|p| p == permission),
        }
    }
}

/// Compiled globs, LIKE patterns and exact paths: a playbook matches if any of them does.
#[derive(Debug, Clone)]
struct Targets {
    globs: GlobSet,
    like: LikeSet,
    paths: Vec<String>,
}

impl Targets {
    fn compile(playbooks: &[String], like: &[String], paths: &[String], at: &str) -> Result<Self, ConfigError> {
        if playbooks.is_empty() && like.is_empty() && paths.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.playbooks"),
                "list at least one playbook glob (or `like` pattern, or exact path in `paths`), or \"**\"",
            ));
        }
        let like = LikeSet::new(like).map_err(|e| ConfigError::new(format!("{at}.like[{}]", e.index), e.message))?;
        Ok(Targets { globs: compile_globs(playbooks, at)?, like, paths: paths.to_vec() })
    }

    fn matches(&self, playbook: &str) -> bool {
        self.paths.iter().any(|p| p == playbook) || self.globs.is_match(playbook) || self.like.is_match(playbook)
    }
}

/// A compiled rule and its id.
#[derive(Debug, Clone)]
struct CompiledRule {
    id: String,
    permissions: Permissions,
    targets: Targets,
    unless: Option<Targets>,
    /// It matches every playbook: a glob `**` or a LIKE pattern `%`, and no `unless`.
    everything: bool,
}

impl CompiledRule {
    fn matches(&self, permission: &str, playbook: &PlaybookPath) -> bool {
        let playbook = playbook.as_str();
        self.permissions.covers(permission)
            && self.targets.matches(playbook)
            && !self.unless.as_ref().is_some_and(|u| u.matches(playbook))
    }
}

#[derive(Debug, Clone)]
struct CompiledRole {
    allow: Vec<CompiledRule>,
    deny: Vec<CompiledRule>,
    /// Permission -> the allow rule that grants it on every playbook, for the permissions the
    /// role holds unrestricted (see [`Policy::decide_every`]).
    unrestricted: BTreeMap<String, String>,
    /// The same for a permission no rule names (only `*` rules cover it).
    unrestricted_other: Option<String>,
}

impl CompiledRole {
    /// The allow rule that grants `permission` on `**` if no deny rule of the role, nor a
    /// top-level one, covers `permission` at all. Conservative: a deny rule that could only
    /// match playbooks that do not exist still makes the role restricted.
    fn unrestricted_for(&self, permission: &str, top_deny: &[CompiledRule]) -> Option<String> {
        let covers = |r: &&CompiledRule| r.permissions.covers(permission);
        if top_deny.iter().any(|r| covers(&r)) || self.deny.iter().any(|r| covers(&r)) {
            return None;
        }
        self.allow.iter().find(|r| r.everything && covers(r)).map(|r| r.id.clone())
    }
}

/// A compiled, immutable policy.
///
/// # Example
///
/// ```
/// use playbook_guard_core::path::PlaybookPath;
/// use playbook_guard_core::{Policy, PolicyDocument};
///
/// let doc: PolicyDocument = serde_json::from_str(r#"{"version": "1", "roles": {
///   "developer": {"allow": [{"permissions": ["execute", "view"], "playbooks": ["**"]}],
///                 "deny":  [{"permissions": ["*"], "playbooks": ["system/**"]}]}}}"#).unwrap();
/// let policy = Policy::compile(&doc).unwrap();
/// let path = |p: &str| PlaybookPath::parse(p).unwrap();
///
/// assert!(policy.decide(&["developer"], "execute", &path("data/load")).allowed);
/// let denied = policy.decide(&["developer"], "execute", &path("system/reset"));
/// assert!(!denied.allowed);
/// assert_eq!(denied.rule.to_string(), "roles.developer.deny[0]");
/// // A request that names no playbook needs the permission on every one: this role lacks it.
/// assert!(!policy.decide_every(&["developer"], "view").allowed);
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    version: String,
    roles: BTreeMap<String, CompiledRole>,
    deny: Vec<CompiledRule>,
}

/// The outcome of [`Policy::decide`]: allowed or not, and the rule that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Decision {
    /// Whether the action is allowed.
    pub allowed: bool,
    /// The deciding rule (`roles.analyst.allow[0]`, `deny[1]`), or why none decided.
    pub rule: DecidedBy,
}

/// What made a [`Decision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy {
    /// A rule, by id.
    Rule(String),
    /// No role of the user allows it (the default deny).
    NoGrant,
    /// The request needs the permission on every playbook and no role of the user holds it so.
    NotOnEvery,
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Rule(id) => f.write_str(id),
            DecidedBy::NoGrant => f.write_str("no role grants it"),
            DecidedBy::NotOnEvery => f.write_str("no role grants it on every playbook"),
        }
    }
}

impl Policy {
    /// Compiles a policy document; errors name the rule (`roles.analyst.allow[0].playbooks[1]`).
    pub fn compile(doc: &PolicyDocument) -> Result<Self, ConfigError> {
        let mut roles = BTreeMap::new();
        for (name, role) in &doc.roles {
            if name.trim().is_empty() || name.contains(',') {
                return Err(ConfigError::new(
                    format!("roles.{name}"),
                    "a role name must be non-empty and have no comma",
                ));
            }
            let at = format!("roles.{name}");
            roles.insert(
                name.clone(),
                CompiledRole {
                    allow: compile_rules(&role.allow, &format!("{at}.allow"))?,
                    deny: compile_rules(&role.deny, &format!("{at}.deny"))?,
                    unrestricted: BTreeMap::new(),
                    unrestricted_other: None,
                },
            );
        }
        let deny = compile_rules(&doc.deny, "deny")?;
        let named: Vec<String> = roles
            .values()
            .flat_map(|r| r.allow.iter().chain(&r.deny))
            .chain(&deny)
            .filter_map(|r| match &r.permissions {
                Permissions::Listed(list) => Some(list.clone()),
                Permissions::Any => None,
            })
            .flatten()
            .collect();
        for role in roles.values_mut() {
            role.unrestricted =
                named.iter().filter_map(|p| role.unrestricted_for(p, &deny).map(|id| (p.clone(), id))).collect();
            // A permission no rule names is covered by `*` rules alone; an empty name cannot
            // be listed, so it stands for all of them.
            role.unrestricted_other = role.unrestricted_for("", &deny);
        }
        Ok(Policy { version: doc.version.clone(), roles, deny })
    }

    /// The document's `version`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The version as a number, for the `policy_version_hash` gauge: a stat holds a number, not
    /// a string, and one gauge per version would accumulate with every update. The first 48
    /// bits of the version's SHA-256, so a double (Prometheus) holds it exactly;
    /// `playbook-guard check` prints it beside the version.
    pub fn version_hash(&self) -> u64 {
        let digest = Sha256::digest(self.version.as_bytes());
        digest.iter().take(6).fold(0, |n, b| (n << 8) | u64::from(*b))
    }

    /// Whether a user holding `roles` may use `permission` on `playbook`.
    pub fn decide<R: AsRef<str>>(&self, roles: &[R], permission: &str, playbook: &PlaybookPath) -> Decision {
        if let Some(rule) = self.deny.iter().find(|r| r.matches(permission, playbook)) {
            return Decision { allowed: false, rule: DecidedBy::Rule(rule.id.clone()) };
        }
        let mut denied_by = None;
        for role in roles.iter().filter_map(|r| self.roles.get(r.as_ref())) {
            let Some(allow) = role.allow.iter().find(|r| r.matches(permission, playbook)) else {
                continue;
            };
            match role.deny.iter().find(|r| r.matches(permission, playbook)) {
                None => return Decision { allowed: true, rule: DecidedBy::Rule(allow.id.clone()) },
                Some(deny) => denied_by = denied_by.or_else(|| Some(deny.id.clone())),
            }
        }
        Decision { allowed: false, rule: denied_by.map_or(DecidedBy::NoGrant, DecidedBy::Rule) }
    }
}

impl Policy {
    /// Whether a user holding `roles` may use `permission` on every playbook: for a request
    /// whose target only NoETL can resolve (a `catalog_id`, an `execution_id`) or that covers
    /// them all (a listing). Some role of the user must be unrestricted for `permission`
    /// (compiled: an allow rule on `**` and no deny rule, of the role or top-level, covering
    /// `permission`).
    pub fn decide_every<R: AsRef<str>>(&self, roles: &[R], permission: &str) -> Decision {
        if let Some(rule) = self.deny.iter().find(|r| r.permissions.covers(permission)) {
            return Decision { allowed: false, rule: DecidedBy::Rule(rule.id.clone()) };
        }
        for role in roles.iter().filter_map(|r| self.roles.get(r.as_ref())) {
            let grant = match role.unrestricted.get(permission) {
                Some(id) => Some(id),
                None if !self.names(permission) => role.unrestricted_other.as_ref(),
                None => None,
            };
            if let Some(id) = grant {
                return Decision { allowed: true, rule: DecidedBy::Rule(id.clone()) };
            }
        }
        Decision { allowed: false, rule: DecidedBy::NotOnEvery }
    }

    /// Whether some rule names `permission` (else only `*` rules cover it).
    fn names(&self, permission: &str) -> bool {
        let listed =
            |r: &CompiledRule| matches!(&r.permissions, Permissions::Listed(l) if l.iter().any(|p| p == permission));
        self.deny.iter().any(listed) || self.roles.values().any(|r| r.allow.iter().chain(&r.deny).any(listed))
    }
}

fn compile_rules(rules: &[Rule], at: &str) -> Result<Vec<CompiledRule>, ConfigError> {
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let id = format!("{at}[{i}]");
            let everything = rule.unless.is_none()
                && (rule.playbooks.iter().any(|p| p == "**") || rule.like.iter().any(|p| like::matches_everything(p)));
            let permissions = compile_permissions(rule, &id)?;
            let targets = Targets::compile(&rule.playbooks, &rule.like, &rule.paths, &id)?;
            let unless = match &rule.unless {
                None => None,
                Some(u) => Some(Targets::compile(&u.playbooks, &u.like, &u.paths, &format!("{id}.unless"))?),
            };
            Ok(CompiledRule { id, permissions, targets, unless, everything })
        })
        .collect()
}

fn compile_permissions(rule: &Rule, id: &str) -> Result<Permissions, ConfigError> {
    if rule.permissions.is_empty() {
        return Err(ConfigError::new(format!("{id}.permissions"), "list at least one permission, or \"*\""));
    }
    let mut listed = Vec::with_capacity(rule.permissions.len());
    for (i, p) in rule.permissions.iter().enumerate() {
        match p.trim() {
            "*" => return Ok(Permissions::Any),
            "" => return Err(ConfigError::new(format!("{id}.permissions[{i}]"), "empty permission name")),
            p if p.contains(['*', '?', ',']) => {
                return Err(ConfigError::new(
                    format!("{id}.permissions[{i}]"),
                    format!("{p:?}: permissions are names or the single wildcard \"*\""),
                ));
            }
            p => listed.push(p.to_owned()),
        }
    }
    Ok(Permissions::Listed(listed))
}

fn compile_globs(globs: &[String], at: &str) -> Result<GlobSet, ConfigError> {
    let mut set = GlobSetBuilder::new();
    for (i, pattern) in globs.iter().enumerate() {
        set.add(compile_glob(pattern).map_err(|m| ConfigError::new(format!("{at}.playbooks[{i}]"), m))?);
    }
    set.build().map_err(|e| ConfigError::new(format!("{at}.playbooks"), e))
}

/// One playbook glob, with `*` and `?` confined to a path segment.
pub fn compile_glob(pattern: &str) -> Result<globset::Glob, String> {
    if pattern.is_empty() {
        return Err("empty glob; use \"**\" for every playbook".into());
    }
    if pattern.starts_with('/') {
        return Err(format!(
            "{pattern:?}: playbook globs have no leading '/' (write {:?})",
            pattern.trim_start_matches('/')
        ));
    }
    if pattern.split('/').any(|s| s == ".." || s == "." || s.is_empty()) {
        return Err(format!("{pattern:?}: empty, '.' or '..' segments never match a normalised playbook path"));
    }
    // Two ways a glob can quietly mean less than it says, which in a deny is more allowed.
    if pattern.split('/').any(|s| s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace)) {
        return Err(format!(
            "{pattern:?}: a segment starts or ends with whitespace, which no playbook path has (a stray space?)"
        ));
    }
    if pattern.split('/').any(|s| s != "**" && s.contains("**")) {
        return Err(format!(
            "{pattern:?}: '**' spans segments only as a whole segment (`data/**`, `**/x`); elsewhere (`data**`, \
             `{{a,**}}`, `x/**.yaml`) it would mean '*'. Write one glob per alternative"
        ));
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .empty_alternates(true)
        .build()
        .map_err(|e| format!("{pattern:?}: {}", e.kind()))
}

#[cfg(test)]
mod tests;

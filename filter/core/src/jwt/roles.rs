//! A provider's roles: read from claims named or pointed at (RFC 6901), merged, and mapped
//! from the IdP's names to the policy's.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::claims::for_each_role_item;
use super::{is_role_name, MAX_ROLE_BYTES};
use crate::config::{ProviderConfig, RolesClaim, UnmappedRoles};
use crate::error::ConfigError;

/// Where roles are read from: a top-level claim, or a JSON pointer into the claims.
#[derive(Debug, Clone)]
enum ClaimRef {
    Name(String),
    Pointer(String),
}

impl ClaimRef {
    fn text(&self) -> &str {
        match self {
            ClaimRef::Name(s) | ClaimRef::Pointer(s) => s,
        }
    }
}

/// A provider's role rules, compiled.
#[derive(Debug, Clone)]
pub(super) struct RoleRules {
    claims: Vec<ClaimRef>,
    map: Option<BTreeMap<String, Vec<String>>>,
    keep_unmapped: bool,
}

/// What became of one item found in a roles claim.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoleFate {
    /// Kept under its own name.
    Kept,
    /// Replaced by these roles (`role_map`).
    Mapped(Vec<String>),
    /// Not in `role_map`, which drops unmapped names (not counted in `roles_dropped`).
    Unmapped,
    /// Not a role name ([`is_role_name`]); counted in `roles_dropped`.
    NotRoleName,
    /// Not a string; counted in `roles_dropped`.
    NotString,
}

/// One configured roles claim, what it held and what became of each item.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRoles {
    /// The claim name or pointer, as configured.
    pub claim: String,
    /// Its value in the token, if any.
    pub found: Option<Value>,
    /// Each item (a string's words, an array's items as JSON text when not strings) and its fate.
    pub items: Vec<(String, RoleFate)>,
}

/// What one roles claim yields, as [`RoleRules::apply`] reports it.
enum Step<'a> {
    Claim(&'a str, Option<&'a Value>),
    Item(Item<'a>, RoleFate),
}

enum Item<'a> {
    Name(&'a str),
    Other(&'a Value),
}

/// Whether `pointer` is an RFC 6901 pointer: `/`-separated tokens where `~` only starts `~0`
/// or `~1`. Only the syntax is checked here; `Value::pointer` reads it.
fn is_pointer(pointer: &str) -> bool {
    pointer.starts_with('/') && pointer.split('~').skip(1).all(|rest| rest.starts_with(['0', '1']))
}

impl RoleRules {
    /// `None` without a `roles_claim`. A lone empty name means none, as it always has; an empty
    /// name in a list is a configuration error.
    pub(super) fn compile(cfg: &ProviderConfig) -> Result<Option<Self>, ConfigError> {
        let listed = cfg.roles_claim.as_ref().map(|c| c.as_slice()).unwrap_or_default();
        let many = matches!(cfg.roles_claim, Some(RolesClaim::Many(_)));
        let mut claims = Vec::with_capacity(listed.len());
        for (i, claim) in listed.iter().enumerate() {
            let at = || if many { format!("roles_claim[{i}]") } else { "roles_claim".to_owned() };
            if claim.starts_with('/') {
                if !is_pointer(claim) {
                    return Err(ConfigError::new(
                        at(),
                        format!("{claim:?} is not a JSON pointer: `~` must be followed by 0 or 1"),
                    ));
                }
                claims.push(ClaimRef::Pointer(claim.clone()));
            } else if claim.is_empty() && many {
                return Err(ConfigError::new(at(), "must not be empty"));
            } else if !claim.is_empty() {
                claims.push(ClaimRef::Name(claim.clone()));
            }
        }
        if let Some(map) = &cfg.role_map {
            if claims.is_empty() {
                return Err(ConfigError::new("role_map", "needs a roles_claim to read the roles from"));
            }
            for (from, to) in map {
                if let Some((j, bad)) = to.iter().enumerate().find(|(_, r)| !is_role_name(r)) {
                    return Err(ConfigError::new(
                        format!("role_map.{from}[{j}]"),
                        format!("{bad:?} is not a role name (1 to {MAX_ROLE_BYTES} bytes, no comma, whitespace or control character)"),
                    ));
                }
            }
        } else if cfg.unmapped_roles.is_some() {
            return Err(ConfigError::new("unmapped_roles", "only means something with a role_map"));
        }
        if claims.is_empty() {
            return Ok(None);
        }
        Ok(Some(RoleRules {
            claims,
            map: cfg.role_map.clone(),
            keep_unmapped: cfg.unmapped_roles == Some(UnmappedRoles::Keep),
        }))
    }

    /// The roles `claims` yield, and how many items were dropped for not being role names.
    pub(super) fn roles(&self, claims: &Value) -> (Vec<String>, u32) {
        self.apply(claims, |_| {})
    }

    /// What each configured claim held and what became of each item (the roles themselves
    /// are [`RoleRules::roles`]'s).
    pub(super) fn explain(&self, claims: &Value) -> Vec<ClaimRoles> {
        let mut explained: Vec<ClaimRoles> = Vec::new();
        self.apply(claims, |step| match step {
            Step::Claim(claim, found) => {
                explained.push(ClaimRoles { claim: claim.to_owned(), found: found.cloned(), items: Vec::new() })
            }
            Step::Item(item, fate) => {
                let (text, fate) = match item {
                    Item::Name(name) => {
                        let fate = match (fate, self.map.as_ref().and_then(|m| m.get(name))) {
                            (RoleFate::Mapped(_), Some(to)) => RoleFate::Mapped(to.clone()),
                            (fate, _) => fate,
                        };
                        (name.to_owned(), fate)
                    }
                    Item::Other(value) => (value.to_string(), fate),
                };
                if let Some(last) = explained.last_mut() {
                    last.items.push((text, fate));
                }
            }
        });
        explained
    }

    /// Reads every claim in order, maps each name, and keeps each role once (first occurrence
    /// first). `note` sees every step; the filter's own path passes a no-op.
    fn apply<'a>(&'a self, claims: &'a Value, mut note: impl FnMut(Step<'a>)) -> (Vec<String>, u32) {
        let mut roles = Vec::new();
        let mut seen = BTreeSet::new();
        let mut dropped = 0u32;
        let mut add = |role: &'a str, roles: &mut Vec<String>| {
            if seen.insert(role) {
                roles.push(role.to_owned());
            }
        };
        for claim in &self.claims {
            let found = match claim {
                ClaimRef::Name(name) => claims.get(name),
                ClaimRef::Pointer(pointer) => claims.pointer(pointer),
            };
            note(Step::Claim(claim.text(), found));
            let mut item = |item: Item<'a>| {
                let fate = match item {
                    Item::Other(_) => RoleFate::NotString,
                    Item::Name(name) => match self.map.as_ref().map(|m| m.get(name)) {
                        Some(Some(to)) => {
                            to.iter().for_each(|role| add(role, &mut roles));
                            // Empty: `explain` fills it in, so verifying copies nothing.
                            RoleFate::Mapped(Vec::new())
                        }
                        Some(None) if !self.keep_unmapped => RoleFate::Unmapped,
                        _ if is_role_name(name) => {
                            add(name, &mut roles);
                            RoleFate::Kept
                        }
                        _ => RoleFate::NotRoleName,
                    },
                };
                if matches!(fate, RoleFate::NotString | RoleFate::NotRoleName) {
                    dropped = dropped.saturating_add(1);
                }
                note(Step::Item(item, fate));
            };
            for_each_role_item(found, |found| item(found.map_or_else(Item::Other, Item::Name)));
        }
        (roles, dropped)
    }
}

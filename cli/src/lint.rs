//! Warnings about a policy that compiles but does not say what its author meant: rules that can
//! never decide anything, roles that grant nothing, allows that a deny cancels.
//!
//! Every check is conservative: it warns only when the shadowing is certain from the rules'
//! text (literal glob prefixes, `**`, permission lists), never on a guess, so a warning is
//! always worth reading.

use playbook_guard_core::like::matches_everything;
use playbook_guard_core::path::PlaybookPath;
use playbook_guard_core::policy::{PolicyDocument, Rule, Unless};

/// One warning: the field path of the rule and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The rule or role (`roles.analyst.allow[1]`).
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// The warnings for a policy that compiled.
pub fn lint(doc: &PolicyDocument) -> Vec<Warning> {
    let mut out = Vec::new();
    let warn = |out: &mut Vec<Warning>, path: String, message: String| out.push(Warning { path, message });

    for (k, guard) in doc.deny.iter().enumerate() {
        unmatchable(guard, &format!("deny[{k}]"), &mut out);
        misspelt_permissions(guard, &format!("deny[{k}]"), &mut out);
        if perms(guard) == Perms::Any && guard.playbooks.iter().any(|g| g == "**") {
            warn(
                &mut out,
                format!("deny[{k}]"),
                "denies every permission on every playbook: nothing is ever allowed".into(),
            );
        } else if doc.roles.values().all(|role| role.allow.iter().all(|a| disjoint(guard, a))) {
            warn(
                &mut out,
                format!("deny[{k}]"),
                "overlaps no role's allow rule, so it never changes a decision (check its globs and permission names)"
                    .into(),
            );
        }
    }

    for (name, role) in &doc.roles {
        let at = format!("roles.{name}");
        let mut grants = 0;
        for (i, allow) in role.allow.iter().enumerate() {
            let here = format!("{at}.allow[{i}]");
            unmatchable(allow, &here, &mut out);
            misspelt_permissions(allow, &here, &mut out);
            if let Some(j) = role.deny.iter().position(|d| covers(d, allow)) {
                warn(
                    &mut out,
                    here,
                    format!("never grants anything: {at}.deny[{j}] denies everything it allows (narrow the deny or drop the allow)"),
                );
            } else if let Some(k) = doc.deny.iter().position(|d| covers(d, allow)) {
                warn(
                    &mut out,
                    here,
                    format!("never grants anything: the top-level deny[{k}] denies everything it allows"),
                );
            } else {
                grants += 1;
                if let Some(h) = role.allow.iter().take(i).position(|earlier| covers(earlier, allow)) {
                    warn(
                        &mut out,
                        here,
                        format!(
                            "can never match first: {at}.allow[{h}] allows all of it and decides instead (remove it)"
                        ),
                    );
                }
            }
        }
        if grants == 0 {
            let why = if role.allow.is_empty() { "it has no allow rules" } else { "every allow rule is denied" };
            warn(
                &mut out,
                at.clone(),
                format!("grants nothing: {why}; users with only this role are denied everything"),
            );
        }
        for (j, deny) in role.deny.iter().enumerate() {
            unmatchable(deny, &format!("{at}.deny[{j}]"), &mut out);
            misspelt_permissions(deny, &format!("{at}.deny[{j}]"), &mut out);
            if role.allow.iter().all(|a| disjoint(deny, a)) {
                warn(
                    &mut out,
                    format!("{at}.deny[{j}]"),
                    format!(
                        "can never match: it overlaps none of {at}'s allow rules, and a role's deny only narrows that \
                         role's own grants (a guard rail for every role goes in the top-level deny)"
                    ),
                );
            }
        }
    }
    out
}

/// The permissions NoETL's routes ask for.
const NOETL_PERMISSIONS: [&str; 3] = ["execute", "view", "modify"];

/// Warns of a permission name that looks like a misspelling of one of NoETL's: names match
/// exactly, so `Modify` or `exectue` in a deny takes back nothing. Other names (`delete`) may be
/// a route configuration's own, and are left alone.
fn misspelt_permissions(rule: &Rule, at: &str, out: &mut Vec<Warning>) {
    for name in &rule.permissions {
        if name == "*" || NOETL_PERMISSIONS.contains(&name.as_str()) {
            continue;
        }
        if let Some(meant) =
            NOETL_PERMISSIONS.iter().find(|p| p.eq_ignore_ascii_case(name) || strsim::osa_distance(p, name) <= 2)
        {
            out.push(Warning {
                path: format!("{at}.permissions"),
                message: format!(
                    "{name:?} is not a permission any NoETL route asks for (names match exactly): {meant:?}?"
                ),
            });
        }
    }
}

/// A rule's permissions: every one (`*`) or a list.
#[derive(Debug, PartialEq, Eq)]
enum Perms<'a> {
    Any,
    Listed(Vec<&'a str>),
}

fn perms(rule: &Rule) -> Perms<'_> {
    let names: Vec<&str> = rule.permissions.iter().map(|p| p.trim()).collect();
    if names.contains(&"*") {
        Perms::Any
    } else {
        Perms::Listed(names)
    }
}

/// Whether `outer` matches every (permission, playbook) that `inner` matches.
fn covers(outer: &Rule, inner: &Rule) -> bool {
    let perms_covered = match (perms(outer), perms(inner)) {
        (Perms::Any, _) => true,
        (Perms::Listed(_), Perms::Any) => false,
        (Perms::Listed(o), Perms::Listed(i)) => i.iter().all(|p| o.contains(p)),
    };
    // Only globs are compared: a LIKE pattern or exact path inside is not claimed covered unless
    // the outer rule matches every playbook, and an outer `unless` makes nothing certain.
    let everything = outer.playbooks.iter().any(|g| g == "**") || outer.like.iter().any(|p| matches_everything(p));
    let only_globs = inner.like.is_empty() && inner.paths.is_empty();
    perms_covered
        && outer.unless.is_none()
        && (everything
            || (only_globs && inner.playbooks.iter().all(|b| outer.playbooks.iter().any(|a| glob_covers(a, b)))))
}

/// Whether no (permission, playbook) matches both rules.
fn disjoint(a: &Rule, b: &Rule) -> bool {
    let perms_disjoint = match (perms(a), perms(b)) {
        (Perms::Listed(x), Perms::Listed(y)) => !x.iter().any(|p| y.contains(p)),
        _ => false,
    };
    let only_globs = |r: &Rule| r.like.is_empty() && r.paths.is_empty();
    perms_disjoint
        || (only_globs(a)
            && only_globs(b)
            && a.playbooks.iter().all(|x| b.playbooks.iter().all(|y| globs_disjoint(x, y))))
}

/// Warnings for LIKE patterns and exact paths that can never match a playbook path (an import
/// from NoETL keeps such rows, so `check` says what they do).
fn unmatchable(rule: &Rule, at: &str, out: &mut Vec<Warning>) {
    let none: &[String] = &[];
    let unless = |f: fn(&Unless) -> &[String]| rule.unless.as_ref().map_or(none, f);
    let fields = [
        (format!("{at}.like"), rule.like.as_slice(), rule.paths.as_slice()),
        (format!("{at}.unless.like"), unless(|u| &u.like), none),
        (format!("{at}.unless.paths"), none, unless(|u| &u.paths)),
    ];
    for (field, likes, paths) in fields {
        for (i, _) in likes.iter().enumerate().filter(|(_, p)| p.is_empty()) {
            out.push(Warning {
                path: format!("{field}[{i}]"),
                message: "an empty LIKE pattern matches only the empty path, which no playbook has".into(),
            });
        }
        for path in paths.iter().filter(|p| PlaybookPath::parse(p).map_or(true, |n| n.as_str() != p.as_str())) {
            out.push(Warning {
                path: field.replace(".like", ".paths"),
                message: format!(
                    "{path:?} never matches: a request's playbook path is normalised (no leading '/', no empty \
                     segments) and never holds '%' or '\\'"
                ),
            });
        }
    }
}

const META: [char; 5] = ['*', '?', '[', '{', '\\'];

/// The text every match of `glob` starts with.
fn literal_prefix(glob: &str) -> &str {
    glob.find(META).and_then(|at| glob.get(..at)).unwrap_or(glob)
}

/// Certain cases only: equal globs, `**`, and `prefix/**` over anything under that prefix.
fn glob_covers(outer: &str, inner: &str) -> bool {
    if outer == inner || outer == "**" {
        return true;
    }
    match outer.strip_suffix("/**") {
        Some(dir) if !dir.contains(META) => literal_prefix(inner).starts_with(&format!("{dir}/")),
        _ => false,
    }
}

/// Two globs share no match if their literal prefixes diverge, or both are different literals.
fn globs_disjoint(a: &str, b: &str) -> bool {
    let (pa, pb) = (literal_prefix(a), literal_prefix(b));
    let both_literal = pa.len() == a.len() && pb.len() == b.len();
    (both_literal && a != b) || !(pa.starts_with(pb) || pb.starts_with(pa))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(perms: &[&str], globs: &[&str]) -> Rule {
        Rule {
            permissions: perms.iter().map(|s| s.to_string()).collect(),
            playbooks: globs.iter().map(|s| s.to_string()).collect(),
            ..Rule::default()
        }
    }

    #[test]
    fn glob_coverage_is_certain_or_false() {
        assert!(glob_covers("**", "data/x"));
        assert!(glob_covers("data/**", "data/*/y"));
        assert!(glob_covers("data/**", "data/x"));
        assert!(!glob_covers("data/**", "data"), "data/** does not cover data itself");
        assert!(!glob_covers("data/**", "database/x"));
        assert!(!glob_covers("d*/**", "data/x"), "not certain, so not claimed");
    }

    #[test]
    fn glob_disjointness_uses_literal_prefixes() {
        assert!(globs_disjoint("system/**", "data/**"));
        assert!(globs_disjoint("data/a", "data/b"));
        assert!(!globs_disjoint("data/**", "data/x"));
        assert!(!globs_disjoint("**", "system/x"));
        assert!(!globs_disjoint("d*", "data"));
    }

    #[test]
    fn rules_cover_by_permissions_and_globs() {
        assert!(covers(&rule(&["*"], &["**"]), &rule(&["view"], &["a/b"])));
        assert!(!covers(&rule(&["view"], &["**"]), &rule(&["*"], &["a/b"])));
        assert!(covers(&rule(&["view", "execute"], &["data/**"]), &rule(&["view"], &["data/x", "data/y/**"])));
        assert!(!covers(&rule(&["view"], &["data/**"]), &rule(&["view"], &["data/x", "other"])));
        assert!(disjoint(&rule(&["view"], &["**"]), &rule(&["execute"], &["**"])));
    }

    #[test]
    fn like_rules_warn_when_unmatchable_and_are_never_claimed_covered() {
        let doc: PolicyDocument = serde_yaml_ng::from_str(
            r#"roles:
  r:
    allow:
      - { permissions: [view], paths: ["%"], like: [""] }
      - { permissions: [view], like: ["data/%"], unless: { like: [""], paths: ["/x"] } }
      - { permissions: [view], like: ["data/%"] }
"#,
        )
        .unwrap();
        let found: Vec<String> = lint(&doc).into_iter().map(|w| w.path).collect();
        assert_eq!(
            found,
            [
                "roles.r.allow[0].like[0]",
                "roles.r.allow[0].paths",
                "roles.r.allow[1].unless.like[0]",
                "roles.r.allow[1].unless.paths"
            ]
        );
        let every = Rule { permissions: vec!["*".into()], like: vec!["%".into()], ..Rule::default() };
        let data = Rule { permissions: vec!["view".into()], like: vec!["data/%".into()], ..Rule::default() };
        assert!(covers(&every, &data) && !covers(&data, &every));
        assert!(!covers(&Rule { unless: Some(Unless::default()), ..every }, &data));
        assert!(!disjoint(&rule(&["view"], &["system/**"]), &data), "a LIKE is never claimed disjoint from a glob");
    }

    #[test]
    fn permission_names_that_look_misspelt_are_warned_of_and_others_left_alone() {
        let doc: PolicyDocument = serde_yaml_ng::from_str(
            r#"roles:
  developer:
    allow: [ { permissions: ["*"], playbooks: ["**"] } ]
    deny: [ { permissions: [exectue, Modify, delete, view], playbooks: ["prod/**"] } ]
deny: [ { permissions: [veiw], playbooks: ["system/**"] } ]
"#,
        )
        .unwrap();
        let found: Vec<(String, String)> = lint(&doc).into_iter().map(|w| (w.path, w.message)).collect();
        let named = |path: &str, meant: &str| {
            found.iter().filter(|(p, m)| p == path && m.ends_with(&format!("{meant:?}?"))).count()
        };
        assert_eq!(named("roles.developer.deny[0].permissions", "execute"), 1, "{found:?}");
        assert_eq!(named("roles.developer.deny[0].permissions", "modify"), 1, "{found:?}");
        assert_eq!(named("deny[0].permissions", "view"), 1, "{found:?}");
        assert!(!found.iter().any(|(_, m)| m.contains("\"delete\"")), "a name of its own: {found:?}");
    }
}

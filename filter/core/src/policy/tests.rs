use super::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crate::path::PathError;
use crate::testing::POLICY_YAML;

fn default_policy() -> Policy {
    let doc: PolicyDocument = serde_yaml_ng::from_str(POLICY_YAML).unwrap();
    Policy::compile(&doc).unwrap()
}

fn p(path: &str) -> PlaybookPath {
    PlaybookPath::parse(path).unwrap()
}

fn policy(yaml: &str) -> Result<Policy, ConfigError> {
    Policy::compile(&serde_yaml_ng::from_str(yaml).unwrap())
}

#[test]
fn noetl_default_roles() {
    let pol = default_policy();
    assert_eq!(pol.version(), "2026-11-23.1");
    let cases: &[(&[&str], &str, &str, bool, &str)] = &[
        (&["admin"], "delete", "system/reset", true, "roles.admin.allow[0]"),
        (&["developer"], "execute", "data/daily_load", true, "roles.developer.allow[0]"),
        (&["developer"], "execute", "system/reset", false, "roles.developer.deny[0]"),
        (&["developer"], "delete", "data/daily_load", false, "no role grants it"),
        (&["analyst"], "execute", "data/daily_load", true, "roles.analyst.allow[0]"),
        (&["analyst"], "execute", "data/a/b/c", true, "roles.analyst.allow[0]"),
        (&["analyst"], "create", "data/daily_load", false, "no role grants it"),
        (&["analyst"], "execute", "api_integration/amadeus_ai_api", false, "no role grants it"),
        (&["analyst"], "execute", "database/x", false, "no role grants it"),
        (&["viewer"], "view", "system/reset", true, "roles.viewer.allow[0]"),
        (&["viewer"], "execute", "data/x", false, "no role grants it"),
        (&["unknown"], "view", "data/x", false, "no role grants it"),
        (&[], "view", "data/x", false, "no role grants it"),
        // A developer who is also a viewer may view system/ (the viewer role allows it and does
        // not deny it), but still not execute it.
        (&["developer", "viewer"], "view", "system/reset", true, "roles.viewer.allow[0]"),
        (&["developer", "viewer"], "execute", "system/reset", false, "roles.developer.deny[0]"),
        (&["analyst", "admin"], "execute", "system/x", true, "roles.admin.allow[0]"),
    ];
    for (roles, perm, path, allowed, rule) in cases {
        let d = pol.decide(roles, perm, &p(path));
        assert_eq!((d.allowed, d.rule.to_string().as_str()), (*allowed, *rule), "{roles:?} {perm} {path}");
    }
}

#[test]
fn top_level_deny_binds_every_role() {
    let pol = policy(
        r#"
roles:
  admin: { allow: [ { permissions: ["*"], playbooks: ["**"] } ] }
deny:
  - { permissions: [execute], playbooks: ["secrets/**", "*/danger"] }
"#,
    )
    .unwrap();
    assert_eq!(pol.version(), "unversioned");
    let d = pol.decide(&["admin"], "execute", &p("secrets/a/b"));
    assert_eq!((d.allowed, d.rule), (false, DecidedBy::Rule("deny[0]".into())));
    assert!(!pol.decide(&["admin"], "execute", &p("x/danger")).allowed);
    assert!(pol.decide(&["admin"], "execute", &p("x/y/danger")).allowed, "* stays in one segment");
    assert!(pol.decide(&["admin"], "view", &p("secrets/a")).allowed);
}

#[test]
fn glob_edge_cases_against_a_reference_matcher() {
    // A plain reference: segment-wise matching where `*` is any run within a segment and a `**`
    // segment is any number of segments. The compiled GlobSet must agree with it.
    fn seg_match(pat: &[u8], s: &[u8]) -> bool {
        match (pat.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => seg_match(&pat[1..], s) || (!s.is_empty() && seg_match(pat, &s[1..])),
            (Some(b'?'), Some(_)) => seg_match(&pat[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => seg_match(&pat[1..], &s[1..]),
            _ => false,
        }
    }
    // As in globset, a trailing `/**` needs at least one segment: `data/**` is what is inside
    // `data`, not `data` itself.
    fn reference(pat: &[&str], path: &[&str], at_start: bool) -> bool {
        match (pat.first(), path.first()) {
            (None, None) => true,
            (Some(&"**"), _) if pat.len() == 1 && !at_start => !path.is_empty(),
            (Some(&"**"), _) => {
                reference(&pat[1..], path, false) || (!path.is_empty() && reference(pat, &path[1..], at_start))
            }
            (Some(a), Some(b)) => seg_match(a.as_bytes(), b.as_bytes()) && reference(&pat[1..], &path[1..], false),
            _ => false,
        }
    }
    let patterns = ["data/*", "data/**", "**", "**/load", "data/**/load", "*/x", "d?ta/*", "data/*_load", "a/**/b/**"];
    let paths = [
        "data",
        "data/a",
        "data/a/b",
        "data/load",
        "data/a/load",
        "data/a/b/load",
        "x",
        "a/x",
        "a/b/x",
        "dota/q",
        "data/daily_load",
        "data/daily_load/x",
        "a/b",
        "a/q/b/z",
        "a/b/c",
        "load",
    ];
    for pat in patterns {
        let glob = compile_glob(pat).unwrap().compile_matcher();
        let pat_segs: Vec<&str> = pat.split('/').collect();
        for path in paths {
            let path_segs: Vec<&str> = path.split('/').collect();
            assert_eq!(glob.is_match(path), reference(&pat_segs, &path_segs, true), "{pat} vs {path}");
        }
    }
}

#[test]
fn braces_classes_and_escapes() {
    let m = |pat: &str, path: &str| compile_glob(pat).unwrap().compile_matcher().is_match(path);
    assert!(m("{data,reports}/**", "reports/q1"));
    assert!(!m("{data,reports}/**", "system/q1"));
    assert!(m("data/[ab]*", "data/alpha"));
    assert!(!m("data/[ab]*", "data/gamma"));
    assert!(m("data/\\*", "data/*"));
    assert!(!m("data/\\*", "data/x"));
}

#[test]
fn permission_matching_is_exact() {
    let pol = policy("roles: { r: { allow: [ { permissions: [view], playbooks: ['**'] } ] } }").unwrap();
    assert!(pol.decide(&["r"], "view", &p("a")).allowed);
    assert!(!pol.decide(&["r"], "View", &p("a")).allowed);
    assert!(!pol.decide(&["r"], "viewer", &p("a")).allowed);
    assert!(!pol.decide(&["r"], "*", &p("a")).allowed, "asking for `*` is not a wildcard");
}

#[test]
fn bad_policies_are_rejected_with_the_rule_path() {
    let cases = [
        (
            "roles: { a: { allow: [ { permissions: [view], playbooks: ['data/[a'] } ] } }",
            "roles.a.allow[0].playbooks[0]",
        ),
        (
            "roles: { a: { allow: [ { permissions: [view], playbooks: ['/data/**'] } ] } }",
            "roles.a.allow[0].playbooks[0]",
        ),
        (
            "roles: { a: { allow: [ { permissions: [view], playbooks: ['data/../x'] } ] } }",
            "roles.a.allow[0].playbooks[0]",
        ),
        ("roles: { a: { allow: [ { permissions: [view], playbooks: [''] } ] } }", "roles.a.allow[0].playbooks[0]"),
        ("roles: { a: { deny: [ { permissions: [], playbooks: ['**'] } ] } }", "roles.a.deny[0].permissions"),
        ("roles: { a: { deny: [ { permissions: [view], playbooks: [] } ] } }", "roles.a.deny[0].playbooks"),
        ("roles: { a: { deny: [ { permissions: ['vi*'], playbooks: ['**'] } ] } }", "roles.a.deny[0].permissions[0]"),
        ("deny: [ { permissions: [x], playbooks: ['{a'] } ]", "deny[0].playbooks[0]"),
        ("roles: { 'a,b': {} }", "roles.a,b"),
        // Globs that would match less than they say: a stray space, `**` that is not a segment.
        ("deny: [ { permissions: [x], playbooks: ['system/** '] } ]", "deny[0].playbooks[0]"),
        ("deny: [ { permissions: [x], playbooks: ['a', ' secrets/**'] } ]", "deny[0].playbooks[1]"),
        ("deny: [ { permissions: [x], playbooks: ['ops/{**}'] } ]", "deny[0].playbooks[0]"),
        ("deny: [ { permissions: [x], playbooks: ['data**'] } ]", "deny[0].playbooks[0]"),
        ("deny: [ { permissions: [x], playbooks: ['a/***/b'] } ]", "deny[0].playbooks[0]"),
        ("deny: [ { permissions: [x], playbooks: ['data/**.yaml'] } ]", "deny[0].playbooks[0]"),
        ("deny: [ { permissions: [x], playbooks: ['{x/**,y}'] } ]", "deny[0].playbooks[0]"),
    ];
    for (yaml, path) in cases {
        let err = policy(yaml).unwrap_err();
        assert_eq!(err.path, path, "{yaml}: {err}");
    }
    let err = policy("roles: { a: { allow: [ { permissions: [view], playbooks: ['/data/**'] } ] } }").unwrap_err();
    assert!(err.message.contains("\"data/**\""), "suggests the fix: {err}");
}

#[test]
fn unknown_fields_in_a_policy_are_refused() {
    let err = serde_yaml_ng::from_str::<PolicyDocument>("roles: { a: { alow: [] } }").unwrap_err();
    assert!(err.to_string().contains("alow"), "{err}");
}

#[test]
fn every_playbook_needs_an_unrestricted_role() {
    let pol = default_policy();
    let cases: &[(&[&str], &str, bool, &str)] = &[
        (&["admin"], "execute", true, "roles.admin.allow[0]"),
        (&["admin"], "anything", true, "roles.admin.allow[0]"),
        (&["developer"], "execute", false, "no role grants it on every playbook"),
        (&["developer"], "view", false, "no role grants it on every playbook"),
        (&["analyst"], "view", false, "no role grants it on every playbook"),
        (&["viewer"], "view", true, "roles.viewer.allow[0]"),
        (&["viewer"], "execute", false, "no role grants it on every playbook"),
        (&["developer", "viewer"], "view", true, "roles.viewer.allow[0]"),
        (&["unknown"], "view", false, "no role grants it on every playbook"),
        (&[], "view", false, "no role grants it on every playbook"),
    ];
    for (roles, permission, allowed, rule) in cases {
        let d = pol.decide_every(roles, permission);
        assert_eq!((d.allowed, d.rule.to_string().as_str()), (*allowed, *rule), "{roles:?} {permission}");
    }
}

#[test]
fn any_deny_covering_the_permission_restricts_the_role() {
    let pol = policy(
        r#"
roles:
  ops:
    allow: [{permissions: [view, execute], playbooks: ["data/**", "**"]}]
    deny: [{permissions: [execute], playbooks: ["nothing/matches/this"]}]
  star:
    allow: [{permissions: ["*"], playbooks: ["**"]}]
    deny: [{permissions: ["*"], playbooks: ["x"]}]
  narrow:
    allow: [{permissions: ["*"], playbooks: ["**/*"]}]
  wide:
    allow: [{permissions: ["*"], playbooks: ["**"]}]
deny: [{permissions: [modify], playbooks: ["system/**"]}]
"#,
    )
    .unwrap();
    let every = |roles: &[&str], p: &str| pol.decide_every(roles, p);
    assert!(every(&["ops"], "view").allowed);
    assert!(!every(&["ops"], "execute").allowed, "a role deny on execute, however narrow");
    assert!(!every(&["star"], "view").allowed);
    assert!(!every(&["star"], "unnamed").allowed);
    assert!(!every(&["narrow"], "view").allowed, "only a literal `**` grants every playbook");
    assert!(every(&["wide"], "view").allowed);
    assert!(every(&["wide"], "unnamed").allowed);
    let d = every(&["wide"], "modify");
    assert_eq!((d.allowed, d.rule), (false, DecidedBy::Rule("deny[0]".into())), "a top-level deny binds everyone");
}

#[test]
fn the_version_hash_is_the_first_48_bits_of_the_versions_sha256() {
    let policy = |version: &str| {
        Policy::compile(&serde_json::from_value(serde_json::json!({"version": version, "roles": {}})).unwrap()).unwrap()
    };
    // sha256("2026-11-23.1") begins a48ac71e2349.
    assert_eq!(policy("2026-11-23.1").version_hash(), 0xa48ac71e2349);
    assert_ne!(policy("v1").version_hash(), policy("v2").version_hash());
    assert!(policy("v1").version_hash() < 1 << 48, "a double holds it exactly");
}

/// NoETL's seed rows as `import-noetl` writes them: each row's `deny_pattern` binds that row only.
const NOETL_ROWS: &str = r#"
version: "rows"
roles:
  admin: { allow: [ { permissions: [execute, view, modify], paths: ["%"], like: ["%"] } ] }
  developer:
    allow:
      - { permissions: [execute, view, modify], paths: ["%"], like: ["%"], unless: { like: ["system/%"] } }
      - { permissions: [view], paths: ["system/status"] }
  analyst: { allow: [ { permissions: [execute, view], paths: ["%"], like: ["data/%"] } ] }
  viewer: { allow: [ { permissions: [view], paths: ["%"], like: ["%"] } ] }
"#;

#[test]
fn like_rules_with_unless_decide_as_noetl_rows() {
    let pol = policy(NOETL_ROWS).unwrap();
    let cases: &[(&[&str], &str, &str, bool, &str)] = &[
        (&["developer"], "execute", "data/x", true, "roles.developer.allow[0]"),
        (&["developer"], "execute", "system/reset", false, "no role grants it"),
        (&["developer"], "execute", "System/reset", true, "roles.developer.allow[0]"),
        // Another row of the same role still grants: the unless binds its own row only.
        (&["developer"], "view", "system/status", true, "roles.developer.allow[1]"),
        (&["developer"], "view", "system/status/x", false, "no role grants it"),
        (&["developer", "viewer"], "view", "system/reset", true, "roles.viewer.allow[0]"),
        (&["analyst"], "execute", "data/a/b", true, "roles.analyst.allow[0]"),
        (&["analyst"], "execute", "database", false, "no role grants it"),
        (&["analyst"], "modify", "data/a", false, "no role grants it"),
        (&["viewer"], "view", "ä/ß", true, "roles.viewer.allow[0]"),
        (&["admin"], "delete", "data/x", false, "no role grants it"),
    ];
    for (roles, perm, path, allowed, rule) in cases {
        let d = pol.decide(roles, perm, &p(path));
        assert_eq!((d.allowed, d.rule.to_string().as_str()), (*allowed, *rule), "{roles:?} {perm} {path}");
    }
    // `%` with no unless is every playbook; a row with an unless is not.
    assert!(pol.decide_every(&["admin"], "modify").allowed);
    assert!(pol.decide_every(&["viewer"], "view").allowed);
    assert!(!pol.decide_every(&["developer"], "view").allowed);
    assert!(!pol.decide_every(&["analyst"], "view").allowed);
}

#[test]
fn like_and_unless_errors_name_their_field() {
    let err = |yaml: &str| policy(yaml).unwrap_err().path;
    assert_eq!(
        err(r#"roles: { a: { allow: [ { permissions: [view], like: ["x", "y\\"] } ] } }"#),
        "roles.a.allow[0].like[1]"
    );
    assert_eq!(
        err(r#"roles: { a: { allow: [ { permissions: [view], like: ["%"], unless: { like: ["\\"] } } ] } }"#),
        "roles.a.allow[0].unless.like[0]"
    );
    assert_eq!(
        err(r#"roles: { a: { allow: [ { permissions: [view], like: ["%"], unless: {} } ] } }"#),
        "roles.a.allow[0].unless.playbooks"
    );
    assert_eq!(err(r#"roles: { a: { allow: [ { permissions: [view] } ] } }"#), "roles.a.allow[0].playbooks");
    assert_eq!(
        err(r#"deny: [ { permissions: [view], playbooks: ["**"], unless: { playbooks: ["/x"] } } ]"#),
        "deny[0].unless.playbooks[0]"
    );
}

#[test]
fn exact_paths_match_the_normalised_path_only() {
    let pol =
        policy(r#"roles: { a: { allow: [ { permissions: [view], paths: ["data/x", "%", "data/_"] } ] } }"#).unwrap();
    assert!(pol.decide(&["a"], "view", &p("data/x")).allowed);
    assert_eq!(PlaybookPath::parse("/data//x"), Err(PathError::NotNormal), "another name to NoETL");
    assert!(!pol.decide(&["a"], "view", &p("data/y")).allowed, "an exact path is not a pattern");
    assert!(!pol.decide(&["a"], "view", &p("data/x/y")).allowed);
}

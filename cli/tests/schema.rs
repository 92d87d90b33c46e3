//! The policy file's JSON Schema (policies/policy.schema.json) agrees with the serde types the
//! filter parses, and every policy in policies/ passes both.

// Helpers outside #[test] functions too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use playbook_guard_core::policy::{Policy, PolicyDocument, RolePolicy, Rule, Unless};
use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema() -> Value {
    let text = std::fs::read_to_string(root().join("policies/policy.schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).unwrap()
}

/// Whether the filter accepts the document: serde (with deny_unknown_fields) and compile.
fn filter_accepts(doc: &Value) -> bool {
    serde_json::from_value::<PolicyDocument>(doc.clone()).is_ok_and(|d| Policy::compile(&d).is_ok())
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[test]
fn schema_properties_are_the_serde_fields() {
    let schema = schema();
    // Serialising a default value lists every field serde knows, so a field added to the types
    // without the schema (or the reverse) fails here.
    let cases = [
        (&schema["properties"], serde_json::to_value(PolicyDocument::default()).unwrap()),
        (&schema["$defs"]["role"]["properties"], serde_json::to_value(RolePolicy::default()).unwrap()),
        (&schema["$defs"]["rule"]["properties"], serde_json::to_value(every_rule_field()).unwrap()),
        (&schema["$defs"]["unless"]["properties"], serde_json::to_value(every_rule_field().unless).unwrap()),
    ];
    for (properties, serde_fields) in cases {
        assert_eq!(keys(properties), keys(&serde_fields));
    }
    // deny_unknown_fields on every type is additionalProperties: false in the schema.
    assert_eq!(schema["additionalProperties"], json!(false));
    assert_eq!(schema["$defs"]["role"]["additionalProperties"], json!(false));
    assert_eq!(schema["$defs"]["rule"]["additionalProperties"], json!(false));
    assert_eq!(schema["$defs"]["unless"]["additionalProperties"], json!(false));
    assert_eq!(schema["$defs"]["rule"]["required"], json!(["permissions"]));
}

/// A rule with every optional field set: empty ones are not serialised.
fn every_rule_field() -> Rule {
    let one = || vec!["x".to_owned()];
    let unless = Unless { playbooks: one(), like: one(), paths: one() };
    Rule { permissions: one(), playbooks: one(), like: one(), paths: one(), unless: Some(unless) }
}

#[test]
fn schema_and_filter_agree_on_each_case() {
    let rule =
        |perms: Value, globs: Value| json!({"roles": {"r": {"allow": [{"permissions": perms, "playbooks": globs}]}}});
    let cases = [
        ("empty document", json!({}), true),
        (
            "the spec's example",
            json!({"version": "2026-11-23.1", "roles": {"admin": {"allow": [{"permissions": ["*"], "playbooks": ["**"]}]}}, "deny": []}),
            true,
        ),
        (
            "a role with only deny",
            json!({"roles": {"r": {"deny": [{"permissions": ["view"], "playbooks": ["x"]}]}}}),
            true,
        ),
        ("globs of every kind", rule(json!(["view"]), json!(["a/*/b", "c/**", "d/{e,f}", "g/[hi]?"])), true),
        ("a padded wildcard", rule(json!([" * "]), json!(["**"])), true),
        ("unknown top-level field", json!({"rolez": {}}), false),
        ("unknown role field", json!({"roles": {"r": {"alow": []}}}), false),
        (
            "unknown rule field",
            json!({"roles": {"r": {"allow": [{"permissions": ["view"], "playbooks": ["x"], "why": 1}]}}}),
            false,
        ),
        ("rule without playbooks", json!({"roles": {"r": {"allow": [{"permissions": ["view"]}]}}}), false),
        ("no permissions", rule(json!([]), json!(["x"])), false),
        ("no playbooks", rule(json!(["view"]), json!([])), false),
        ("a wildcard inside a permission", rule(json!(["exec*"]), json!(["x"])), false),
        ("a comma in a permission", rule(json!(["view,execute"]), json!(["x"])), false),
        ("a blank permission", rule(json!(["  "]), json!(["x"])), false),
        ("a leading slash", rule(json!(["view"]), json!(["/data/**"])), false),
        ("a .. segment", rule(json!(["view"]), json!(["data/../system/**"])), false),
        ("a . segment", rule(json!(["view"]), json!(["./data"])), false),
        ("an empty segment", rule(json!(["view"]), json!(["data//x"])), false),
        ("a trailing slash", rule(json!(["view"]), json!(["data/"])), false),
        ("an empty glob", rule(json!(["view"]), json!([""])), false),
        (
            "LIKE patterns and exact paths",
            json!({"roles": {"r": {"allow": [{"permissions": ["view"], "like": ["data/%", "a\\_b", "", "x\\\\"], "paths": ["%"]}]}}}),
            true,
        ),
        (
            "an unless",
            json!({"roles": {"r": {"allow": [{"permissions": ["view"], "like": ["%"], "unless": {"like": ["system/%"], "playbooks": ["ops/**"], "paths": ["a"]}}]}}}),
            true,
        ),
        (
            "a LIKE ending in an escape",
            json!({"roles": {"r": {"allow": [{"permissions": ["view"], "like": ["data\\"]}]}}}),
            false,
        ),
        (
            "an empty unless",
            json!({"roles": {"r": {"allow": [{"permissions": ["view"], "like": ["%"], "unless": {}}]}}}),
            false,
        ),
        (
            "an unknown unless field",
            json!({"roles": {"r": {"allow": [{"permissions": ["view"], "like": ["%"], "unless": {"deny": ["x"]}}]}}}),
            false,
        ),
        ("a numeric version", json!({"version": 2}), false),
        ("a role name with a comma", json!({"roles": {"a,b": {}}}), false),
        ("a blank role name", json!({"roles": {"  ": {}}}), false),
        ("roles as a list", json!({"roles": []}), false),
        ("deny as a mapping", json!({"deny": {}}), false),
    ];
    let validator = validator();
    for (what, doc, valid) in cases {
        assert_eq!(validator.is_valid(&doc), valid, "schema on {what}: {doc}");
        assert_eq!(filter_accepts(&doc), valid, "filter on {what}: {doc}");
    }
}

fn policy_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            policy_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_policy_in_policies_passes_the_schema_and_compiles() {
    let mut files = Vec::new();
    policy_files(&root().join("policies"), &mut files);
    assert!(files.len() >= 3, "{files:?}");
    let validator = validator();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
        let parsed: PolicyDocument = serde_yaml_ng::from_str(&text).unwrap();
        Policy::compile(&parsed).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_ne!(parsed.version, "unversioned", "{}: give it a version", file.display());
    }
}

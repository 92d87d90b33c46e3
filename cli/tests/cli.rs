//! The `playbook-guard` command, run as a user runs it: each subcommand and its error messages.

// Helpers outside #[test] functions too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use playbook_guard_core::testing::{AUDIENCE, ISSUER, SECRET, SECRET_ENV};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_playbook-guard"))
        .args(args)
        .current_dir(root())
        .env(SECRET_ENV, SECRET)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn policy(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

// ---- check ----

#[test]
fn check_accepts_the_shipped_policies() {
    let out = run(&["check", "policies/noetl-default.yaml", "policies/examples/guard-rails.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("policies/noetl-default.yaml: ok: version \"2026-11-23.1\" (stat policy_version_hash 180915953083209), 4 roles, 0 warnings"));
    assert_eq!(stderr(&out), "");
}

#[test]
fn check_locates_yaml_syntax_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = policy(&dir, "p.yaml", "version: x\nroles:\n  analyst: { allow: [ }\n");
    let out = run(&["check", &file]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with(&format!("{file}:3:")), "{err}");
    assert!(!err.contains(" at line "), "the place is said once: {err}");
}

#[test]
fn check_refuses_a_role_written_twice_and_a_hidden_line_break() {
    let dir = tempfile::tempdir().unwrap();
    let twice = "roles:\n  analyst:\n    allow: [{ permissions: [view], playbooks: [\"data/**\"] }]\n    deny: [{ permissions: [\"*\"], playbooks: [\"data/secret/**\"] }]\n  analyst:\n    allow: [{ permissions: [view], playbooks: [\"**\"] }]\n";
    let file = policy(&dir, "twice.yaml", twice);
    let out = run(&["check", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).trim(), format!("{file}:5:3: \"analyst\" is a key this mapping already has"));
    let hidden = "roles:\n  r:\n    allow: [] # x\u{2028}      - { permissions: [view], playbooks: [\"**\"] }\n";
    let file = policy(&dir, "hidden.yaml", hidden);
    let out = run(&["check", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with(&format!("{file}:3:18: '\\u{{2028}}'")), "{}", stderr(&out));
}

#[test]
fn check_locates_unknown_fields_with_the_expected_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = policy(&dir, "p.yaml", "version: x\nroles:\n  analyst:\n    alow: []\n");
    let out = run(&["check", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!("{file}:4:5: roles.analyst: unknown field `alow`, expected `allow` or `deny`")
    );
}

#[test]
fn check_locates_semantic_errors_at_the_bad_glob() {
    let dir = tempfile::tempdir().unwrap();
    let text = "version: x\nroles:\n  analyst:\n    allow:\n      - permissions: [view]\n        playbooks:\n          - data/**\n          - /system/**\n";
    let file = policy(&dir, "p.yaml", text);
    let out = run(&["check", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!("{file}:8:13: roles.analyst.allow[0].playbooks[1]: \"/system/**\": playbook globs have no leading '/' (write \"system/**\")")
    );
}

#[test]
fn check_locates_bad_permissions_and_empty_lists() {
    let dir = tempfile::tempdir().unwrap();
    let file =
        policy(&dir, "p.yaml", "roles:\n  a:\n    deny:\n      - { permissions: [\"exec*\"], playbooks: [x] }\n");
    let out = run(&["check", &file]);
    assert!(
        stderr(&out).starts_with(&format!("{file}:4:25: roles.a.deny[0].permissions[0]: \"exec*\"")),
        "{}",
        stderr(&out)
    );
    let file = policy(&dir, "q.yaml", "roles:\n  a:\n    allow:\n      - { permissions: [view], playbooks: [] }\n");
    let out = run(&["check", &file]);
    assert!(
        stderr(&out).starts_with(&format!("{file}:4:32: roles.a.allow[0].playbooks: list at least one")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_reports_every_bad_file_and_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad = policy(&dir, "bad.yaml", "deny: {}\n");
    let out = run(&["check", "policies/noetl-default.yaml", &bad, "/nonexistent/p.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("{bad}:1:7: deny: invalid type: map, expected a sequence")), "{err}");
    assert!(err.contains("/nonexistent/p.yaml: cannot read: No such file"), "{err}");
    assert!(stdout(&out).contains("noetl-default.yaml: ok"));
}

const SHADOWED: &str = "\
version: w
roles:
  analyst:
    allow:
      - { permissions: [view], playbooks: [\"data/**\"] }
      - { permissions: [view], playbooks: [data/reports/x] }
      - { permissions: [execute], playbooks: [\"system/**\"] }
    deny:
      - { permissions: [\"*\"], playbooks: [\"system/**\"] }
      - { permissions: [modify], playbooks: [\"other/**\"] }
  nobody: {}
deny:
  - { permissions: [view], playbooks: [\"archive/**\"] }
";

#[test]
fn check_warns_about_shadowed_rules_and_empty_roles() {
    let dir = tempfile::tempdir().unwrap();
    let file = policy(&dir, "p.yaml", SHADOWED);
    let out = run(&["check", &file]);
    assert!(out.status.success(), "warnings alone do not fail: {}", stderr(&out));
    let err = stderr(&out);
    let expected = [
        format!("{file}:6:9: warning: roles.analyst.allow[1]: can never match first: roles.analyst.allow[0] allows all of it"),
        format!("{file}:7:9: warning: roles.analyst.allow[2]: never grants anything: roles.analyst.deny[0] denies everything it allows"),
        format!("{file}:10:9: warning: roles.analyst.deny[1]: can never match: it overlaps none of roles.analyst's allow rules"),
        format!("{file}:11:3: warning: roles.nobody: grants nothing: it has no allow rules"),
        format!("{file}:13:5: warning: deny[0]: overlaps no role's allow rule"),
    ];
    for line in &expected {
        assert!(err.contains(line.as_str()), "missing {line:?} in\n{err}");
    }
    assert_eq!(err.lines().count(), expected.len(), "{err}");
    assert!(stdout(&out).contains("5 warnings"));
    assert_eq!(run(&["check", "--strict", &file]).status.code(), Some(1));
}

#[test]
fn check_warns_when_a_guard_rail_denies_everything() {
    let dir = tempfile::tempdir().unwrap();
    let text = "roles:\n  admin: { allow: [ { permissions: [\"*\"], playbooks: [\"**\"] } ] }\ndeny:\n  - { permissions: [\"*\"], playbooks: [\"**\"] }\n";
    let file = policy(&dir, "p.yaml", text);
    let err = stderr(&run(&["check", &file]));
    assert!(err.contains(&format!("{file}:4:5: warning: deny[0]: denies every permission on every playbook")), "{err}");
    assert!(err.contains("roles.admin.allow[0]: never grants anything: the top-level deny[0]"), "{err}");
}

// ---- explain ----

#[test]
fn explain_names_the_rule_that_allowed() {
    let out = run(&["explain", "--roles", "analyst", "--playbook", "data/x", "--permission", "execute"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), "allow: execute on data/x for roles [analyst], decided by roles.analyst.allow[0]");
}

#[test]
fn explain_names_the_rule_that_denied() {
    let out = run(&["explain", "--roles", "viewer,developer", "--playbook", "system/reset", "--permission", "execute"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with(
        "deny: execute on system/reset for roles [viewer, developer], decided by roles.developer.deny[0]"
    ));
    let out = run(&["explain", "--roles", "analyst", "--playbook", "system/x", "--permission", "view"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("deny: view on system/x") && stdout(&out).contains("no role grants it"));
    // NoETL compares names as written: `/system//x` is not `system/x` there, so it is refused.
    let out = run(&["explain", "--roles", "analyst", "--playbook", "/system//x", "--permission", "view"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not in normal form"), "{}", stderr(&out));
}

#[test]
fn explain_refuses_escaping_paths_and_broken_policies() {
    let out = run(&["explain", "--roles", "admin", "--playbook", "data/../system", "--permission", "view"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("playbook \"data/../system\""), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    let file = policy(&dir, "p.yaml", "roles:\n  a: { allow: [ { permissions: [view], playbooks: [\"/x\"] } ] }\n");
    let out = run(&["explain", "--policy", &file, "--roles", "a", "--playbook", "x", "--permission", "view"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&format!("{file}:2:52: roles.a.allow[0].playbooks[0]")), "{}", stderr(&out));
}

#[test]
fn explain_decides_a_request_through_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let body = policy(&dir, "body.json", r#"{"path": "data/x", "catalog_id": "1_000"}"#);
    let out = run(&["explain", "--roles", "analyst", "--method", "post", "--path", "/api/execute", "--body", &body]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("POST /api/execute for roles [analyst]: route routes[9] (run a playbook)"), "{text}");
    assert!(text.contains(r#"permission=execute every playbook (catalog_id "1_000" at /catalog_id is not a plain id)"#));
    assert!(text.contains("rule=\"no role grants it on every playbook\""), "{text}");
    // An id in its one spelling is looked up if a resolver is configured (the shipped profile has none).
    let body = policy(&dir, "id.json", r#"{"path": "data/x", "catalog_id": "1000"}"#);
    let out = run(&["explain", "--roles", "analyst", "--method", "POST", "--path", "/api/execute", "--body", &body]);
    let text = stdout(&out);
    assert!(text.contains("every playbook (catalog_id 1000 needs a lookup (no resolver))"), "{text}");

    let body = policy(&dir, "ok.json", r#"{"path": "system/x", "explanation_playbook_path": "data/e"}"#);
    let path = "/api/catalog/playbooks/explain/ai";
    let out = run(&["explain", "--roles", "viewer,developer", "--method", "POST", "--path", path, "--body", &body]);
    assert!(out.status.success(), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("permission=view playbook=system/x rule=\"roles.viewer.allow[0]\""), "{text}");
    assert!(text.contains("permission=execute playbook=data/e rule=\"roles.developer.allow[0]\""), "{text}");

    let out = run(&["explain", "--roles", "developer", "--method", "POST", "--path", "/api/postgres/execute"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("needs one of [admin]"), "{}", stdout(&out));
    let out = run(&["explain", "--roles", "admin", "--path", "/api/nothing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("route default_action") && stdout(&out).contains("no_route"), "{}", stdout(&out));
}

// ---- render ----

fn yaml(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_yaml_ng::from_str(&stdout(out)).unwrap()
}

#[test]
fn render_keeps_stop_iteration_and_held_headers_in_every_envoy_form() {
    for output in ["filter", "ecds", "bootstrap"] {
        let text = stdout(&run(&["render", "--output", output]));
        assert!(text.starts_with(&format!("# Rendered by `playbook-guard render --output {output}`")));
        assert!(
            text.contains("\"allow_on_headers_stop_iteration\": true")
                || text.contains("allow_on_headers_stop_iteration: true"),
            "{output}"
        );
        assert!(text.contains("hold_headers_for_body"), "{output}");
    }
    let plugin: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["render", "--output", "plugin-config"]))).unwrap();
    assert_eq!(plugin["policy"]["version"], "2026-11-23.1");
}

// ---- routes ----

#[test]
fn routes_table_in_the_readme_is_the_shipped_profile() {
    let out = run(&["routes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("| `/api/execute` | execute | body /catalog_id if non-empty"), "{table}");
    assert!(table.contains("| `/api/postgres/execute`") || table.contains("postgres/execute,context/render"));
    assert!(!table.contains("/api/run/playbook"));
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = readme
        .split_once("<!-- routes:begin -->\n")
        .and_then(|(_, rest)| rest.split_once("<!-- routes:end -->"))
        .map(|(block, _)| block)
        .expect("README.md has the routes markers");
    assert_eq!(block, table, "README.md's route table is stale: replace it with `playbook-guard routes`");
}

#[test]
fn routes_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = policy(&dir, "bad.yaml", "routes:\n  - match: {path: /a}\n    restricted: true\n    blocked: true\n");
    let out = run(&["routes", "--config", &config]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("routes[0]: give exactly one of"), "{}", stderr(&out));
}

#[test]
fn render_warns_when_the_head_may_go_upstream_before_the_body_is_decided() {
    let shipped = run(&["render", "--output", "plugin-config"]);
    assert!(shipped.status.success());
    assert!(!stderr(&shipped).contains("warning"), "{}", stderr(&shipped));
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("envoy/filter-config.yaml")).unwrap();
    let config = policy(&dir, "early.yaml", &format!("{text}\nhold_headers_for_body: false\n"));
    for output in ["plugin-config", "bootstrap"] {
        let out = run(&["render", "--output", output, "--config", &config]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("warning: hold_headers_for_body is false"), "{output}: {}", stderr(&out));
    }
}

#[test]
fn render_refuses_a_configuration_key_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(root().join("envoy/filter-config.yaml")).unwrap();
    let lines = shipped.lines().count();
    let file = policy(&dir, "twice.yaml", &format!("{shipped}mode: audit\n"));
    let out = run(&["render", "--config", &file, "--output", "plugin-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("{file}:{}:1: \"mode\" is a key this mapping already has", lines + 1)),
        "{}",
        stderr(&out)
    );
}

#[test]
fn render_ecds_is_versioned_by_the_policy() {
    let doc = yaml(&run(&["render", "--output", "ecds", "--policy", "policies/examples/guard-rails.yaml"]));
    assert_eq!(doc["version_info"], "2026-11-24.guard-rails");
    let resource = &doc["resources"][0];
    assert_eq!(resource["@type"], "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig");
    assert_eq!(resource["name"], "playbook-guard");
    let config = resource["typed_config"]["config"]["configuration"]["value"].as_str().unwrap();
    let plugin: serde_json::Value = serde_json::from_str(config).unwrap();
    assert_eq!(plugin["policy"]["deny"][0]["playbooks"][0], "prod/**");
    assert_eq!(plugin["hold_headers_for_body"], true);
}

#[test]
fn render_bootstrap_ecds_watches_the_files_directory() {
    let doc = yaml(&run(&["render", "--output", "bootstrap-ecds", "--ecds-path", "/srv/pg/filter.yaml"]));
    assert_eq!(doc["node"]["cluster"], "playbook-guard");
    let hcm = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let discovery = &hcm["http_filters"][0]["config_discovery"];
    assert_eq!(discovery["config_source"]["path_config_source"]["path"], "/srv/pg/filter.yaml");
    assert_eq!(discovery["config_source"]["path_config_source"]["watched_directory"]["path"], "/srv/pg");
    assert_eq!(discovery["type_urls"][0], "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm");
}

#[test]
fn render_for_the_native_build_loads_the_dynamic_module_with_the_same_configuration() {
    const NATIVE: &str = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
    let wasm = yaml(&run(&["render", "--output", "ecds"]));
    let doc = yaml(&run(&["render", "--output", "ecds", "--build", "native"]));
    assert_eq!(doc["version_info"], wasm["version_info"]);
    let typed = &doc["resources"][0]["typed_config"];
    assert_eq!(typed["@type"], NATIVE);
    assert_eq!(typed["dynamic_module_config"]["name"], "playbook_guard_native");
    // The module keeps a thread of its own: it must never be unloaded under it.
    assert_eq!(typed["dynamic_module_config"]["do_not_close"], true);
    assert_eq!(typed["filter_name"], "playbook-guard");
    assert_eq!(
        typed["filter_config"]["value"], wasm["resources"][0]["typed_config"]["config"]["configuration"]["value"],
        "the same JSON as the Wasm filter's"
    );
    let boot = yaml(&run(&["render", "--output", "bootstrap-ecds", "--build", "native"]));
    let hcm = &boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["http_filters"][0]["config_discovery"]["type_urls"], serde_json::json!([NATIVE]));
    let inline = yaml(&run(&["render", "--output", "filter", "--build", "native"]));
    assert_eq!(inline["typed_config"]["@type"], NATIVE);
}

#[test]
fn render_refuses_what_the_filter_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let config = policy(&dir, "c.yaml", "routes:\n  - match: { prefix: api/ }\n    public: true\n");
    let out = run(&["render", "--config", &config]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("routes[0].match.prefix"), "{}", stderr(&out));
    let config = policy(&dir, "d.yaml", "- not a mapping\n");
    assert!(stderr(&run(&["render", "--config", &config])).contains("must be a mapping"));
}

// ---- publish ----

#[test]
fn publish_replaces_the_watched_file_with_the_rendered_ecds() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("ecds/playbook-guard.yaml");
    let target_s = target.display().to_string();
    let out = run(&["publish", "--to", &target_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("published policy version \"2026-11-23.1\" to {target_s}"));
    let rendered = stdout(&run(&["render", "--output", "ecds"]));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), rendered);
    let out = run(&["publish", "--to", &target_s, "--policy", "policies/examples/data-teams.yaml"]);
    assert!(out.status.success());
    assert!(std::fs::read_to_string(&target).unwrap().contains("\"version_info\": \"2026-11-24.teams\""));
    let names: Vec<_> = std::fs::read_dir(target.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["playbook-guard.yaml"], "no temporary file is left behind");
}

#[test]
fn publish_refuses_a_broken_policy_and_keeps_the_last_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("playbook-guard.yaml").display().to_string();
    assert!(run(&["publish", "--to", &target]).status.success());
    let before = std::fs::read(&target).unwrap();
    let broken = policy(
        &dir,
        "broken.yaml",
        "version: v2\nroles:\n  a:\n    allow:\n      - { permissions: [view], playbooks: [\"data/[\"] }\n",
    );
    let out = run(&["publish", "--to", &target, "--policy", &broken]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("{broken}:5:44: roles.a.allow[0].playbooks[0]: \"data/[\"")),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&target).unwrap(), before);
}

#[test]
fn publish_says_what_check_would_warn_of_and_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("playbook-guard.yaml").display().to_string();
    let text = "version: v3\nroles:\n  developer:\n    allow: [ { permissions: [\"*\"], playbooks: [\"**\"] } ]\n    deny: [ { permissions: [Modify], playbooks: [\"prod/**\"] } ]\n";
    let file = policy(&dir, "typo.yaml", text);
    let out = run(&["publish", "--to", &target, "--policy", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{file}:5:")) && stderr(&out).contains("\"Modify\" is not a permission"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn publish_needs_a_file_to_replace() {
    let out = run(&["publish", "--to", "/"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--to /: name a file, not a directory"), "{}", stderr(&out));
}

// ---- token ----

#[test]
fn token_mints_an_hs256_jwt_the_filter_accepts() {
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
    let out = run(&["token", "--roles", "analyst,viewer", "--sub", "42", "--email", "ada@example.com", "--ttl", "120"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[ISSUER]);
    let token = stdout(&out);
    let claims = decode::<serde_json::Value>(token.trim(), &DecodingKey::from_secret(SECRET.as_bytes()), &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "42");
    assert_eq!(claims["roles"], serde_json::json!(["analyst", "viewer"]));
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 120);
}

#[test]
fn token_explains_what_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_playbook-guard"))
        .args(["token", "--roles", "analyst"])
        .env_remove(SECRET_ENV)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("set PLAYBOOK_GUARD_HS256_SECRET to the filter's HMAC secret"));
    assert!(stderr(&run(&["token", "--alg", "RS256"])).contains("--key PEM is needed for RS256"));
    assert!(stderr(&run(&["token", "--alg", "none"])).contains("unsupported algorithm \"none\""));
    assert!(stderr(&run(&["token", "--claims", "[1]"])).contains("--claims must be a JSON object"));
}

// ---- explain --token ----

#[test]
fn explain_token_names_the_provider_and_what_became_of_each_role() {
    let dir = tempfile::tempdir().unwrap();
    let config = policy(
        &dir,
        "filter.yaml",
        &format!(
            "providers:\n  - name: keycloak\n    issuer: {ISSUER}\n    algorithms: [HS256]\n    secret_env: {SECRET_ENV}\n    \
             roles_claim: [/realm_access/roles, groups]\n    role_map: {{NoETL Admins: [admin, developer], analyst: [analyst]}}\n"
        ),
    );
    let claims = r#"{"realm_access": {"roles": ["analyst", "offline_access"]}, "groups": ["NoETL Admins", 7]}"#;
    let token = stdout(&run(&["token", "--claims", claims]));
    let out = run(&["explain", "--token", token.trim(), "--config", &config]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "accepted by provider keycloak\n\
         claim /realm_access/roles: [\"analyst\",\"offline_access\"]\n  \
         analyst: mapped to analyst\n  \
         offline_access: dropped, not in role_map (unmapped_roles: drop)\n\
         claim groups: [\"NoETL Admins\",7]\n  \
         NoETL Admins: mapped to admin, developer\n  \
         7: dropped, not a string (counted in roles_dropped)\n\
         roles: [analyst, admin, developer]\n"
    );

    // Refused: which provider and why, exit 1.
    let expired = stdout(&run(&["token", "--ttl", "-600"]));
    let out = run(&["explain", "--token", expired.trim(), "--config", &config]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), "refused by provider keycloak: 401 expired: token expired\n");
    let other = stdout(&run(&["token", "--issuer", "https://elsewhere/"]));
    let out = run(&["explain", "--token", other.trim(), "--config", &config]);
    assert_eq!(stdout(&out), "refused: 401 unknown_issuer: unknown issuer \"https://elsewhere/\"\n");

    // A bad pointer is a configuration error naming the field.
    let bad =
        policy(&dir, "bad.yaml", &std::fs::read_to_string(&config).unwrap().replace("/realm_access/roles", "/a~2"));
    let out = run(&["explain", "--token", token.trim(), "--config", &bad]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("providers[0].roles_claim[0]: \"/a~2\" is not a JSON pointer"), "{}", stderr(&out));
}

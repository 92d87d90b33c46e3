//! The shipped NoETL route profile (envoy/filter-config.yaml with policies/noetl-default.yaml),
//! decided for the four default roles: one or more cases per route class of docs/NOETL-API.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use playbook_guard_core::testing::{self, guard_from, send, NOW};
use playbook_guard_core::{Guard, Verdict};
use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn guard() -> Guard {
    let mut cfg: Value = serde_yaml_ng::from_str(testing::FILTER_CONFIG_YAML).unwrap();
    let obj = cfg.as_object_mut().unwrap();
    // Roles from the token, as the e2e tests run it: this is about routes, not sessions (and so
    // without opaque session tokens, which only the validation service can vouch for).
    for field in ["validation", "opaque_tokens", "opaque_token_shape"] {
        obj.remove(field);
    }
    obj.insert("policy".into(), testing::policy());
    guard_from(&cfg)
}

/// The fixture token for user 7 with `role`, in the claim the shipped `noetl` provider reads.
fn token(role: &str) -> String {
    testing::token_with(&[role], NOW, json!({"sub": "7", "roles": [role]}))
}

/// The status the filter answers (200: passed upstream).
fn decide(
    g: &Guard,
    role: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
    content_type: Option<&str>,
) -> u32 {
    let mut headers = Vec::new();
    if let Some(role) = role {
        headers.push(("authorization".to_string(), format!("Bearer {}", token(role))));
    }
    if let Some(ct) = content_type {
        headers.push(("content-type".to_string(), ct.to_string()));
    }
    match send(g, method, path, &headers, body.unwrap_or_default()) {
        Verdict::Allow { .. } => 200,
        Verdict::Deny(d) => d.status,
    }
}

const ROLES: [&str; 4] = ["admin", "developer", "analyst", "viewer"];

/// (method, path, body, [admin, developer, analyst, viewer]).
type Case = (&'static str, &'static str, Option<&'static str>, [u32; 4]);

const ALL: [u32; 4] = [200, 200, 200, 200];
const ADMIN: [u32; 4] = [200, 403, 403, 403];
const BLOCKED: [u32; 4] = [403, 403, 403, 403];
const VIEW_EVERY: [u32; 4] = [200, 403, 403, 200];
const BAD: [u32; 4] = [400, 400, 400, 400];
const RUN_DATA: [u32; 4] = [200, 200, 200, 403];
const MODIFY_DATA: [u32; 4] = [200, 200, 403, 403];

const CASES: &[Case] = &[
    // Public and session-only.
    ("GET", "/api/health", None, ALL),
    ("POST", "/api/auth/session/validate", Some("{}"), ALL),
    ("GET", "/docs", None, ALL),
    // Run: path; catalog_id in each spelling NoETL takes (the Rust server takes 0 too, so false
    // and 0 are looked up as well); null and "" leave it to path.
    ("POST", "/api/execute", Some(r#"{"path": "data/daily_load"}"#), [200, 200, 200, 403]),
    ("POST", "/api/execute", Some(r#"{"path": "system/reset"}"#), [200, 403, 403, 403]),
    ("POST", "/api/execute", Some(r#"{"path": "examples/x", "version": 2}"#), [200, 200, 403, 403]),
    ("POST", "/api/execute", Some(r#"{"path": "data/x", "catalog_id": 123}"#), ADMIN),
    ("POST", "/api/execute", Some(r#"{"path": "data/x", "catalog_id": "123"}"#), ADMIN),
    ("POST", "/api/execute", Some(r#"{"path": "data/x", "catalog_id": " 12 "}"#), ADMIN),
    ("POST", "/api/execute", Some(r#"{"path": "data/x", "catalog_id": "1_000"}"#), ADMIN),
    ("POST", "/api/execute", Some(r#"{"path": "data/x", "catalog_id": true}"#), ADMIN),
    ("POST", "/api/execute", Some(r#"{"path": "data/x", "catalog_id": 0}"#), ADMIN),
    ("POST", "/api/execute", Some(r#"{"path": "data/x", "catalog_id": ""}"#), [200, 200, 200, 403]),
    ("POST", "/api/execute", Some(r#"{"path": "data/x", "catalog_id": false}"#), ADMIN),
    ("POST", "/api/execute", Some(r#"{"path": "data/x", "catalog_id": null}"#), [200, 200, 200, 403]),
    ("POST", "/api/execute", Some(r#"{"version": 2}"#), [400, 400, 400, 400]),
    // How NoETL's runtimes run a playbook is theirs to say: the restricted roles only.
    ("POST", "/api/execute", Some(r#"{"path": "data/x", "execution_pool": "system"}"#), ADMIN),
    ("POST", "/api/execute", Some(r#"{"path": "data/x", "dedup": {"key": "k"}}"#), ADMIN),
    ("POST", "/api/execute", Some(r#"{"path": "data/x", "parent_execution_id": 7}"#), ADMIN),
    ("POST", "/api/execute", Some(r#"{"path": "data/x", "execution_pool": null}"#), [200, 200, 200, 403]),
    ("POST", "/api/execute", Some(r#"{"path": "system/x", "execution_pool": "shared"}"#), ADMIN),
    // Batch: every item.
    (
        "POST",
        "/api/execute/batch",
        Some(r#"{"executions": [{"path": "data/a"}, {"path": "data/b"}]}"#),
        [200, 200, 200, 403],
    ),
    ("POST", "/api/execute/batch", Some(r#"{"executions": [{"path": "data/a"}, {"path": "system/b"}]}"#), ADMIN),
    ("POST", "/api/execute/batch", Some(r#"{"executions": [{"path": "data/a"}, {"catalog_id": 9}]}"#), ADMIN),
    // The Rust server runs catalog row 0 for `catalog_id: 0`, not `path`.
    ("POST", "/api/execute/batch", Some(r#"{"executions": [{"path": "data/a", "catalog_id": 0}]}"#), ADMIN),
    (
        "POST",
        "/api/execute/batch",
        Some(r#"{"executions": [{"path": "data/a"}, {"path": "data/b", "execution_pool": "system"}]}"#),
        ADMIN,
    ),
    // Gateway GraphQL.
    (
        "POST",
        "/graphql",
        Some(r#"{"query": "mutation { executePlaybook(name: \"data/x\") { id } }"}"#),
        [200, 200, 200, 403],
    ),
    (
        "POST",
        "/graphql",
        Some(r#"{"query": "mutation { executePlaybook(name: \"data/x\") { id } proxyRequest(input: {}) }"}"#),
        BAD,
    ),
    ("POST", "/graphql", Some(r#"{"query": "mutation { proxyRequest(input: {method: \"GET\"}) }"}"#), BAD),
    ("POST", "/graphql", Some(r#"{"query": "mutation { rerunExecution(executionId: \"1\") { id } }"}"#), ADMIN),
    // Catalog.
    // Register: the path inside the YAML (base64 first); both servers' paths where they part;
    // every playbook (admin only) where the YAML could be read two ways.
    ("POST", "/api/catalog/register", Some(r#"{"content": "metadata: {path: data/x}"}"#), MODIFY_DATA),
    ("POST", "/api/catalog/register", Some(r#"{"content": "metadata: {path: system/x}"}"#), ADMIN),
    ("POST", "/api/catalog/register", Some(r#"{"content": "bWV0YWRhdGE6IHtwYXRoOiBkYXRhL3h9"}"#), MODIFY_DATA),
    ("POST", "/api/catalog/register", Some(r#"{"content": "path: data/x\nmetadata: {name: system/y}"}"#), ADMIN),
    ("POST", "/api/catalog/register", Some(r#"{"content": "metadata: {path: &p data/x, name: *p}"}"#), ADMIN),
    ("POST", "/api/catalog/register", Some(r#"{"content": "metadata: {path: data/x, path: data/y}"}"#), ADMIN),
    ("POST", "/api/catalog/register", Some(r#"{"content": "metadata: {path: yes, name: data/x}"}"#), ADMIN),
    // List: the Rust server ignores `path` and lists every entry, so `path` narrows nothing.
    ("POST", "/api/catalog/list", Some(r#"{"resource_type": "playbook"}"#), VIEW_EVERY),
    ("POST", "/api/catalog/list", Some(r#"{"path": "data/x"}"#), VIEW_EVERY),
    ("POST", "/api/catalog/list", Some(r#"{"path": "data/x", "include_archived": true}"#), VIEW_EVERY),
    // Agents (Python server only, which narrows to `path`).
    ("POST", "/api/catalog/agents/list", Some(r#"{}"#), VIEW_EVERY),
    ("POST", "/api/catalog/agents/list", Some(r#"{"path": "data/x"}"#), ALL),
    ("POST", "/api/catalog/agents/list", Some(r#"{"path": "system/x"}"#), [200, 403, 403, 200]),
    ("POST", "/api/catalog/resource", Some(r#"{"path": "system/reset"}"#), [200, 403, 403, 200]),
    ("POST", "/api/catalog/resource", Some(r#"{"path": "data/x", "version": "latest"}"#), ALL),
    ("POST", "/api/catalog/resource", Some(r#"{"path": "data/x", "catalog_id": 0}"#), VIEW_EVERY),
    ("POST", "/api/catalog/resource", Some(r#"{"path": "data/x", "catalog_id": ""}"#), ALL),
    ("GET", "/api/catalog/data/x/ui_schema", None, ALL),
    ("GET", "/api/catalog/data/x/ui_schema/", None, ALL),
    ("GET", "/api/playbook-tests/suites/data/x/", None, ALL),
    ("POST", "/api/mcp/playbook/data/x/jsonrpc/", Some(r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#), ALL),
    ("GET", "/api/catalog/system/x/ui_schema", None, [200, 403, 403, 200]),
    ("GET", "/api/catalog/system%2Fx/ui_schema", None, [200, 403, 403, 200]),
    ("GET", "/api/catalog/data/x", None, BLOCKED),
    // AI: view the target and execute the AI playbook (default or named).
    ("POST", "/api/catalog/playbooks/explain/ai", Some(r#"{"path": "data/x"}"#), [200, 200, 403, 403]),
    (
        "POST",
        "/api/catalog/playbooks/explain/ai",
        Some(r#"{"path": "data/x", "explanation_playbook_path": "data/explain"}"#),
        [200, 200, 200, 403],
    ),
    (
        "POST",
        "/api/catalog/playbooks/explain/ai",
        Some(r#"{"path": "data/x", "explanation_playbook_path": "system/explain"}"#),
        ADMIN,
    ),
    ("POST", "/api/catalog/playbooks/generate/ai", Some(r#"{}"#), [200, 200, 403, 403]),
    ("POST", "/api/executions/42/analyze/ai", Some(r#"{}"#), ADMIN),
    // No body at all is FastAPI's default request (the default playbook); only spaces are not.
    ("POST", "/api/executions/42/analyze/ai", None, ADMIN),
    ("POST", "/api/executions/42/analyze/ai", Some(""), ADMIN),
    ("POST", "/api/executions/42/analyze/ai", Some(" "), BAD),
    ("POST", "/api/execute", Some(""), BAD),
    // MCP.
    (
        "POST",
        "/api/mcp/playbook/data/x/jsonrpc",
        Some(r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call"}"#),
        [200, 200, 200, 403],
    ),
    (
        "POST",
        "/api/mcp/playbook/system/x/jsonrpc",
        Some(r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call"}"#),
        ADMIN,
    ),
    (
        "POST",
        "/api/mcp/playbook/system/x/jsonrpc",
        Some(r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#),
        [200, 403, 403, 200],
    ),
    ("POST", "/api/mcp/playbook/system/x/jsonrpc", Some(r#"{"jsonrpc": "2.0", "id": 1, "method": "ping"}"#), ALL),
    (
        "POST",
        "/api/mcp/playbook/data/x/jsonrpc",
        Some(r#"{"jsonrpc": "2.0", "id": 1, "method": "resources/read"}"#),
        BLOCKED,
    ),
    ("POST", "/api/mcp/playbook/data/x/jsonrpc", Some(r#"[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]"#), BLOCKED),
    ("POST", "/api/mcp/playbook/data/x/lifecycle/jsonrpc", Some(r#"{"method": "ping"}"#), ADMIN),
    ("POST", "/api/mcp/data/x/lifecycle/deploy", Some(r#"{}"#), ADMIN),
    ("POST", "/api/mcp/data/x/discover", Some(r#"{}"#), ADMIN),
    // Runs (execution id: every playbook).
    ("GET", "/api/executions", None, VIEW_EVERY),
    ("GET", "/api/executions/42", None, VIEW_EVERY),
    ("GET", "/api/executions/42/status", None, VIEW_EVERY),
    ("POST", "/api/executions/42/cancel", Some(r#"{}"#), ADMIN),
    ("POST", "/api/executions/42/finalize", Some(r#"{}"#), ADMIN),
    ("POST", "/api/executions/cleanup", Some(r#"{}"#), ADMIN),
    ("GET", "/api/vars/42", None, VIEW_EVERY),
    ("POST", "/api/vars/42", Some(r#"{}"#), BLOCKED),
    ("GET", "/api/result/42/step", None, VIEW_EVERY),
    ("DELETE", "/api/temp/42", None, BLOCKED),
    // Blocked worker and internal routes.
    ("POST", "/api/events", Some(r#"{"execution_id": "1"}"#), BLOCKED),
    ("POST", "/api/events/batch", Some(r#"{}"#), BLOCKED),
    ("GET", "/api/commands/7", None, BLOCKED),
    ("POST", "/api/internal/outbox/claim", Some(r#"{}"#), BLOCKED),
    ("POST", "/api/worker/pool/register", Some(r#"{}"#), BLOCKED),
    ("POST", "/api/frames/1/commit", Some(r#"{}"#), BLOCKED),
    ("GET", "/api/credentials/pg/sealed", None, BLOCKED),
    // Restricted to admin.
    ("POST", "/api/postgres/execute", Some(r#"{"query": "select 1"}"#), ADMIN),
    ("POST", "/api/context/render", Some(r#"{}"#), ADMIN),
    ("GET", "/api/credentials", None, ADMIN),
    ("GET", "/api/credentials/pg_auth", None, ADMIN),
    ("GET", "/api/keychain/1/k", None, ADMIN),
    ("POST", "/api/gcp/token", Some(r#"{}"#), ADMIN),
    ("POST", "/api/db/init", None, ADMIN),
    ("GET", "/metrics", None, ADMIN),
    ("POST", "/api/profiler/memory/start", None, ADMIN),
    // Playbook test suites.
    ("GET", "/api/playbook-tests/suites/data/x", None, ALL),
    ("PUT", "/api/playbook-tests/suites/data/x", Some(r#"{}"#), [200, 200, 403, 403]),
    ("PUT", "/api/playbook-tests/suites/system/x", Some(r#"{}"#), ADMIN),
    // NoETL strips `.` and `/` from a suite id's ends (`_sanitize_suite_id`): `.system/x` is
    // the suite of `system/x` there, so an id with a `.` at either end has two readings.
    ("PUT", "/api/playbook-tests/suites/.system/x", Some(r#"{}"#), BAD),
    ("DELETE", "/api/playbook-tests/suites/..system/x", None, BAD),
    ("GET", "/api/playbook-tests/suites/%2E%2E%2E/system/x", None, BAD),
    ("GET", "/api/playbook-tests/suites/data/x.", None, BAD),
    // Unmapped, the old demo route; trailing-slash and percent-encoded variants are decided as
    // the route they reach in NoETL (Starlette redirects `/x/` to `/x` and decodes the path).
    ("POST", "/api/run/playbook", Some(r#"{"path": "data/x"}"#), BLOCKED),
    ("GET", "/api/nothing", None, BLOCKED),
    ("POST", "/api/execute/", Some(r#"{"path": "data/x"}"#), [200, 200, 200, 403]),
    ("POST", "/api/execute/", Some(r#"{"path": "system/x"}"#), ADMIN),
    ("POST", "/api/%65xecute", Some(r#"{"path": "system/x"}"#), ADMIN),
    ("GET", "/api/catalog/system/x/ui_schema/", None, [200, 403, 403, 200]),
    // The gateway's REST pass-through: `/noetl/{path}` is decided as `/api/{path}`, for each
    // class of route it can reach.
    ("POST", "/noetl/execute", Some(r#"{"path": "data/x"}"#), RUN_DATA),
    ("POST", "/noetl/execute", Some(r#"{"path": "system/x"}"#), ADMIN),
    ("POST", "/noetl/execute/", Some(r#"{"path": "system/x"}"#), ADMIN),
    ("POST", "/noetl/execute?path=data/x", Some(r#"{"path": "system/x"}"#), ADMIN),
    ("POST", "/noetl/execute", Some(r#"{"path": "data/x", "catalog_id": 7}"#), ADMIN),
    ("POST", "/noetl/postgres/execute", Some(r#"{"query": "select 1"}"#), ADMIN),
    ("POST", "/noetl/internal/outbox/claim", Some(r#"{}"#), BLOCKED),
    ("GET", "/noetl/credentials/pg/sealed", None, BLOCKED),
    ("POST", "/noetl/auth/login", Some(r#"{}"#), ALL),
    ("POST", "/noetl/auth/session/validate", Some(r#"{}"#), ALL),
    ("GET", "/noetl/nothing", None, BLOCKED),
    ("GET", "/noetl/catalog/list", None, BLOCKED),
    ("GET", "/noetl/catalog/system/x/ui_schema", None, [200, 403, 403, 200]),
    ("HEAD", "/noetl/catalog/system/x/ui_schema", None, [200, 403, 403, 200]),
    ("GET", "/noetl/executions/42", None, VIEW_EVERY),
    ("OPTIONS", "/noetl/executions/42", None, BAD),
    // Spellings the gateway or NoETL could read another way.
    ("GET", "/noetl/catalog/system%2Fx/ui_schema", None, BAD),
    ("POST", "/noetl/%65xecute", Some(r#"{"path": "system/x"}"#), BAD),
    ("POST", "/noetl/./execute", Some(r#"{"path": "system/x"}"#), BAD),
    ("POST", "/noetl//execute", Some(r#"{"path": "system/x"}"#), BAD),
    ("POST", "/noetl/data/../postgres/execute", Some(r#"{}"#), BAD),
    ("POST", "/noetl/data/%2e%2e/postgres/execute", Some(r#"{}"#), BAD),
    ("POST", "/noetl/", Some(r#"{}"#), BAD),
];

/// GraphQL `proxyRequest` calls on the shipped profile: (method, endpoint, body as a GraphQL
/// value, or "" for none; [admin, developer, analyst, viewer]). Each is decided as the route it
/// reaches.
const PROXY_REQUESTS: &[(&str, &str, &str, [u32; 4])] = &[
    ("POST", "/api/execute", r#"{path: "data/x"}"#, RUN_DATA),
    ("post", "/api/execute", r#"{path: "system/x"}"#, ADMIN),
    ("POST", "/api/execute", r#"{path: "data/x", catalog_id: 7}"#, ADMIN),
    ("GET", "/api/catalog/system/x/ui_schema", "", [200, 403, 403, 200]),
    ("GET", "/api/executions/42", "", VIEW_EVERY),
    ("POST", "/api/postgres/execute", r#"{query: "drop table x"}"#, ADMIN),
    ("POST", "/api/internal/outbox/claim", "{}", BLOCKED),
    ("GET", "/api/health", "", ALL),
    ("POST", "/api/auth/session/validate", "{}", ALL),
    ("GET", "/api/nothing", "", BLOCKED),
    // A pass-through reached from a pass-through.
    ("POST", "/noetl/execute", r#"{path: "data/x"}"#, BLOCKED),
    ("POST", "/graphql", r#"{query: "{ health }"}"#, BLOCKED),
    // Readings the filter cannot be sure of.
    ("POST", "/api/x/../execute", r#"{path: "data/x"}"#, BAD),
    ("POST", "/api/%65xecute", r#"{path: "data/x"}"#, BAD),
    ("POST", "api/execute", r#"{path: "data/x"}"#, BAD),
    ("PO\u{17f}T", "/api/execute", r#"{path: "data/x"}"#, BAD),
    ("POST", "/api/execute", r#"{path: $p}"#, BAD),
];

/// A GraphQL request body with these calls (`proxyRequest(input: ...)` for each input).
fn proxy_document(inputs: &[(&str, &str, &str)], variables: Value) -> String {
    let calls: Vec<String> = inputs
        .iter()
        .enumerate()
        .map(|(i, (method, endpoint, body))| {
            let body = if body.is_empty() { String::new() } else { format!(", body: {body}") };
            format!(r#"c{i}: proxyRequest(input: {{method: "{method}", endpoint: "{endpoint}"{body}}}) {{ success }}"#)
        })
        .collect();
    json!({"query": format!("mutation {{ {} }}", calls.join(" ")), "variables": variables}).to_string()
}

#[test]
fn proxy_requests_are_decided_as_the_route_they_reach() {
    let g = guard();
    let mut wrong = Vec::new();
    let mut check = |what: &str, body: &str, expected: &[u32; 4]| {
        for (role, want) in ROLES.iter().zip(expected) {
            let got = decide(&g, Some(role), "POST", "/graphql", Some(body), None);
            if got != *want {
                wrong.push(format!("{role} {what}: got {got}, want {want}"));
            }
        }
    };
    for (method, endpoint, body, expected) in PROXY_REQUESTS {
        check(
            &format!("{method} {endpoint} {body}"),
            &proxy_document(&[(method, endpoint, body)], json!({})),
            expected,
        );
    }
    // The input as a variable, and a variable inside a literal input.
    let query = "mutation($i: ProxyRequestInput!) { proxyRequest(input: $i) { success } }";
    let input = json!({"method": "GET", "endpoint": "/api/catalog/system/x/ui_schema"});
    check("input variable", &json!({"query": query, "variables": {"i": input}}).to_string(), &[200, 403, 403, 200]);
    let doc = proxy_document(&[("POST", "/api/execute", "{path: $p}")], json!({"p": "system/x"}));
    check("variable in the body", &doc, &ADMIN);
    // A document or batch: every forwarded request and every executePlaybook must be allowed.
    let run = |path| ("POST", "/api/execute", path);
    let doc = proxy_document(&[run(r#"{path: "data/a"}"#), run(r#"{path: "data/b"}"#)], json!({}));
    check("two allowed", &doc, &RUN_DATA);
    let doc = proxy_document(&[run(r#"{path: "data/a"}"#), run(r#"{path: "system/b"}"#)], json!({}));
    check("one forbidden", &doc, &ADMIN);
    let one = proxy_document(&[("POST", "/api/internal/outbox/claim", "{}")], json!({}));
    let run_data = r#"{"query": "mutation { executePlaybook(name: \"data/a\") { id } }"}"#;
    check("batch", &format!("[{run_data}, {one}]"), &BLOCKED);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_profile_decides_each_route_class_for_the_default_roles() {
    let g = guard();
    let mut wrong = Vec::new();
    for (method, path, body, expected) in CASES {
        for (role, want) in ROLES.iter().zip(expected) {
            let got = decide(&g, Some(role), method, path, *body, None);
            if got != *want {
                wrong.push(format!("{role} {method} {path} {}: got {got}, want {want}", body.unwrap_or("")));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn tokens_are_needed_except_on_public_and_blocked_routes() {
    let g = guard();
    assert_eq!(decide(&g, None, "POST", "/api/auth/login", Some("{}"), None), 200);
    assert_eq!(decide(&g, None, "GET", "/health", None, None), 200);
    // The gateway's own token checks: its GUI sends the token in the body or (EventSource) the
    // query string, and the gateway checks it with its own credential.
    let check = r#"{"session_token": "0123456789abcdef0123456789abcdef", "playbook_path": "system/x"}"#;
    assert_eq!(decide(&g, None, "POST", "/api/auth/validate", Some(check), None), 200);
    assert_eq!(decide(&g, None, "POST", "/api/auth/check-access", Some(check), None), 200);
    assert_eq!(decide(&g, None, "GET", "/events?session_token=0123456789abcdef0123456789abcdef", None, None), 200);
    // The servers' checks take a caller's `credential`: a session first.
    assert_eq!(decide(&g, None, "POST", "/api/auth/check-playbook-access", Some(check), None), 401);
    assert_eq!(decide(&g, None, "POST", "/api/auth/session/validate", Some(check), None), 401);
    assert_eq!(decide(&g, None, "POST", "/api/execute", Some(r#"{"path": "data/x"}"#), None), 401);
    assert_eq!(decide(&g, None, "POST", "/api/postgres/execute", Some("{}"), None), 401);
    assert_eq!(decide(&g, None, "POST", "/api/internal/outbox/claim", Some("{}"), None), 403);
    assert_eq!(decide(&g, None, "GET", "/nowhere", None, None), 403);
    // Through the pass-through, as the route reached.
    assert_eq!(decide(&g, None, "POST", "/noetl/auth/login", Some("{}"), None), 200);
    assert_eq!(decide(&g, None, "POST", "/noetl/execute", Some(r#"{"path": "data/x"}"#), None), 401);
    assert_eq!(decide(&g, None, "POST", "/noetl/internal/outbox/claim", Some("{}"), None), 403);
}

#[test]
fn body_routes_want_a_json_content_type() {
    let g = guard();
    let body = Some(r#"{"path": "data/x"}"#);
    for ct in ["application/json", "APPLICATION/JSON; charset=utf-8", "application/vnd.noetl+json"] {
        assert_eq!(decide(&g, Some("analyst"), "POST", "/api/execute", body, Some(ct)), 200, "{ct}");
    }
    for ct in ["text/plain", "application/x-www-form-urlencoded", ""] {
        assert_eq!(decide(&g, Some("analyst"), "POST", "/api/execute", body, Some(ct)), 415, "{ct}");
    }
    // Through the pass-through: the content type the gateway forwards.
    let via_gateway = |ct| decide(&g, Some("analyst"), "POST", "/noetl/execute", body, Some(ct));
    assert_eq!((via_gateway("application/json"), via_gateway("text/plain")), (200, 415));
    // Head-sourced and restricted routes do not read the body.
    assert_eq!(decide(&g, Some("admin"), "POST", "/api/db/init", None, Some("text/plain")), 200);
}

//! The gateway's entry points through the pipeline: `/noetl/{*path}` and GraphQL `proxyRequest`
//! decided as the route the forwarded request reaches.

use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::testing::{self, answer, bearer, config, guard_from, send, NOW};

fn guard_with(mode: &str) -> Guard {
    let execute = |pointer: &str| json!({"permission": "execute", "playbook": {"json_pointer": pointer}});
    let cfg = config(json!({
        "mode": mode,
        "routes": [
            {"name": "sign in", "match": {"methods": ["POST"], "path": "/api/auth/login"}, "public": true},
            {"match": {"methods": ["POST"], "path": "/api/auth/logout"}, "logout": true},
            {"match": {"methods": ["GET"], "path": "/api/me"}, "authenticate": true},
            {"name": "run", "match": {"methods": ["POST"], "path": "/api/execute"}, "authorize": execute("/path")},
            {"match": {"methods": ["DELETE"], "path": "/api/jobs"}, "authorize": execute("/path")},
            {"match": {"methods": ["GET"], "glob": "/api/catalog/**/ui_schema"},
             "authorize": {"permission": "view", "playbook": {"path_capture": true}}},
            {"match": {"methods": ["GET"], "path": "/api/by-x-header"},
             "authorize": {"permission": "view", "playbook": {"header": "x-playbook"}}},
            {"match": {"methods": ["GET"], "path": "/api/by-header"},
             "authorize": {"permission": "view", "playbook": {"header": "playbook"}}},
            {"match": {"methods": ["POST"], "path": "/api/postgres/execute"}, "restricted": true},
            {"match": {"glob": "/api/internal/**"}, "blocked": true},
            {"name": "graphql", "match": {"methods": ["POST"], "path": "/graphql"},
             "authorize": {"permission": "execute", "playbook": {"graphql_variable": "name",
                           "graphql_forward_fields": ["proxyRequest"], "graphql_restricted_fields": ["rerunExecution"]}}},
            {"name": "pass-through", "match": {"glob": "/noetl/**"}, "forward": {"strip_prefix": "/noetl/", "prefix": "/api/"}}
        ]
    }));
    guard_from(&cfg)
}

fn guard() -> Guard {
    guard_with("enforce")
}

fn headers(role: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out = bearer(&testing::token(&[role], NOW));
    out.extend(extra.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())));
    out
}

fn rest(g: &Guard, role: &str, method: &str, path: &str, body: &str) -> (u32, String) {
    answer(&send(g, method, path, &headers(role, &[]), body))
}

fn proxy(g: &Guard, role: &str, body: Value) -> (u32, String) {
    answer(&send(g, "POST", "/graphql", &headers(role, &[]), &body.to_string()))
}

fn proxy_input(method: &str, endpoint: &str, body: Value) -> Value {
    json!({"query": "mutation($i: ProxyRequestInput!) { proxyRequest(input: $i) { success } }",
           "variables": {"i": {"method": method, "endpoint": endpoint, "body": body}}})
}

fn ok() -> (u32, String) {
    (200, String::new())
}

fn no(status: u32, reason: &str) -> (u32, String) {
    (status, reason.to_owned())
}

#[test]
fn the_rest_pass_through_is_decided_as_the_route_it_reaches() {
    let g = guard();
    let run = |p: &str| json!({"path": p}).to_string();
    for (role, method, path, body, want) in [
        // Decided from the body, the path and a forwarded header.
        ("analyst", "POST", "/noetl/execute", run("data/x"), ok()),
        ("analyst", "POST", "/noetl/execute", run("system/x"), no(403, "")),
        ("analyst", "POST", "/noetl/execute?path=data/x", run("system/x"), no(403, "")),
        ("analyst", "GET", "/noetl/catalog/data/x/ui_schema", String::new(), ok()),
        ("analyst", "HEAD", "/noetl/catalog/system/x/ui_schema", String::new(), no(403, "")),
        // Restricted, blocked, public, a session only, unmapped.
        ("analyst", "POST", "/noetl/postgres/execute", "{}".into(), no(403, "restricted")),
        ("admin", "POST", "/noetl/postgres/execute", "{}".into(), ok()),
        ("admin", "POST", "/noetl/internal/outbox/claim", "{}".into(), no(403, "blocked")),
        ("viewer", "POST", "/noetl/auth/login", "{}".into(), ok()),
        ("viewer", "GET", "/noetl/me", String::new(), ok()),
        ("admin", "GET", "/noetl/nothing", String::new(), no(403, "no_route")),
        ("admin", "PUT", "/noetl/execute", run("data/x"), no(403, "no_route")),
        // NoETL serves no `/api/noetl/...`.
        ("admin", "GET", "/noetl/noetl/me", String::new(), no(403, "no_route")),
    ] {
        assert_eq!(rest(&g, role, method, path, &body), want, "{role} {method} {path} {body}");
    }
}

#[test]
fn rest_spellings_the_gateway_or_noetl_read_another_way_are_refused() {
    let g = guard();
    let body = json!({"path": "data/x"}).to_string();
    for path in [
        "/noetl/./execute",
        "/noetl//execute",
        "/noetl/%65xecute",
        "/noetl/catalog/data%2Fx/ui_schema",
        "/noetl/catalog/data/x%253f/ui_schema",
        "/noetl/execute%3F",
        "/noetl/",
    ] {
        assert_eq!(rest(&g, "admin", "POST", path, &body), no(400, "ambiguous_request"), "{path}");
    }
    // A method the gateway answers itself, or not at all.
    assert_eq!(rest(&g, "admin", "OPTIONS", "/noetl/me", ""), no(400, "ambiguous_request"));
    assert_eq!(rest(&g, "admin", "TRACE", "/noetl/me", ""), no(400, "ambiguous_request"));
}

#[test]
fn the_rest_pass_through_forwards_what_the_gateway_forwards() {
    let g = guard();
    let body = json!({"path": "data/x"}).to_string();
    // DELETE (and GET) go without their body: NoETL has no playbook to read.
    assert_eq!(rest(&g, "admin", "DELETE", "/api/jobs", &body), ok());
    assert_eq!(rest(&g, "admin", "DELETE", "/noetl/jobs", &body), no(400, "playbook_not_found"));
    // `x-*` headers go along; others stay with the gateway.
    let with = |name: &str, path: &str| answer(&send(&g, "GET", path, &headers("analyst", &[(name, "system/x")]), ""));
    assert_eq!(with("x-playbook", "/api/by-x-header"), no(403, ""));
    assert_eq!(with("x-playbook", "/noetl/by-x-header"), no(403, ""));
    assert_eq!(with("playbook", "/api/by-header"), no(403, ""));
    assert_eq!(with("playbook", "/noetl/by-header"), no(400, "playbook_not_found"));
    // The content type goes along too.
    let ct = [("content-type", "text/plain")];
    assert_eq!(answer(&send(&g, "POST", "/noetl/execute", &headers("admin", &ct), &body)).0, 415);
}

#[test]
fn a_logout_through_the_pass_through_still_evicts_the_session() {
    let g = guard();
    let v = send(&g, "POST", "/noetl/auth/logout", &headers("viewer", &[]), "");
    let Verdict::Allow { logout, .. } = v else { panic!("{v:?}") };
    assert_eq!(logout.as_deref(), Some("noetl/s-42"));
}

#[test]
fn proxy_requests_are_decided_as_the_route_they_reach() {
    let g = guard();
    for (role, input, want) in [
        ("analyst", proxy_input("POST", "/api/execute", json!({"path": "data/x"})), ok()),
        ("analyst", proxy_input("post", "/api/execute?x=1", json!({"path": "data/x"})), ok()),
        ("analyst", proxy_input("POST", "/api/execute", json!({"path": "system/x"})), no(403, "")),
        ("analyst", proxy_input("GET", "/api/catalog/system/x/ui_schema", Value::Null), no(403, "")),
        ("viewer", proxy_input("GET", "/api/catalog/system/x/ui_schema", Value::Null), ok()),
        ("analyst", proxy_input("POST", "/api/postgres/execute", json!({"query": "select 1"})), no(403, "restricted")),
        ("admin", proxy_input("POST", "/api/postgres/execute", json!({"query": "select 1"})), ok()),
        ("admin", proxy_input("POST", "/api/internal/outbox/claim", json!({})), no(403, "blocked")),
        ("viewer", proxy_input("POST", "/api/auth/login", json!({})), ok()),
        ("viewer", proxy_input("GET", "/api/me", Value::Null), ok()),
        ("admin", proxy_input("GET", "/api/nothing", Value::Null), no(403, "no_route")),
        // The body NoETL gets: none, so no playbook.
        ("admin", proxy_input("POST", "/api/execute", Value::Null), no(400, "playbook_not_found")),
        // Pass-throughs reached from a pass-through.
        ("admin", proxy_input("POST", "/noetl/execute", json!({"path": "data/x"})), no(403, "pass_through")),
        ("admin", proxy_input("POST", "/graphql", json!({"query": "{ health }"})), no(403, "pass_through")),
    ] {
        assert_eq!(proxy(&g, role, input.clone()), want, "{role} {input}");
    }
}

#[test]
fn every_call_in_a_document_or_batch_must_be_allowed() {
    let g = guard();
    let call = |alias: &str, path: &str| {
        format!(
            r#"{alias}: proxyRequest(input: {{method: "POST", endpoint: "/api/execute", body: {{path: "{path}"}}}}) {{ success }}"#
        )
    };
    let doc = |calls: &[String]| json!({"query": format!("mutation {{ {} }}", calls.join(" "))});
    let allowed = doc(&[call("a", "data/a"), call("b", "data/b")]);
    assert_eq!(proxy(&g, "analyst", allowed), ok());
    let one_bad = doc(&[call("a", "data/a"), call("b", "system/b"), call("c", "data/c")]);
    assert_eq!(proxy(&g, "analyst", one_bad), no(403, ""));
    // With executePlaybook: both kinds must hold.
    let mixed = |name: &str, path: &str| json!({"query": format!(r#"mutation {{ executePlaybook(name: "{name}") {{ id }} {} }}"#, call("p", path))});
    assert_eq!(proxy(&g, "analyst", mixed("data/a", "data/b")), ok());
    assert_eq!(proxy(&g, "analyst", mixed("system/a", "data/b")), no(403, ""));
    assert_eq!(proxy(&g, "analyst", mixed("data/a", "system/b")), no(403, ""));
    // A batch of documents, and a call inside a fragment.
    let batch = json!([doc(&[call("a", "data/a")]), doc(&[call("b", "system/b")])]);
    assert_eq!(proxy(&g, "analyst", batch), no(403, ""));
    let fragment =
        json!({"query": format!("mutation {{ ...F }} fragment F on MutationRoot {{ {} }}", call("x", "system/x"))});
    assert_eq!(proxy(&g, "analyst", fragment), no(403, ""));
    // A restricted field beside them is still restricted.
    let rerun = json!({"query": format!(r#"mutation {{ {} rerunExecution(executionId: "1") {{ id }} }}"#, call("a", "data/a"))});
    assert_eq!(proxy(&g, "analyst", rerun.clone()), no(403, "restricted"));
    assert_eq!(proxy(&g, "admin", rerun), ok());
}

#[test]
fn proxy_requests_the_filter_cannot_read_one_way_are_refused() {
    let g = guard();
    for input in [
        proxy_input("POST", "/api/./execute", json!({"path": "data/x"})),
        proxy_input("POST", "/api/x/../execute", json!({"path": "data/x"})),
        proxy_input("POST", "/api/%65xecute", json!({"path": "data/x"})),
        proxy_input("POST", "api/execute", json!({"path": "data/x"})),
        proxy_input("POST", "//evil/api/execute", json!({"path": "data/x"})),
        proxy_input("POST", "http://evil/api/execute", json!({"path": "data/x"})),
        proxy_input("POST", "/api/execute#x", json!({"path": "data/x"})),
        proxy_input("PO\u{17f}T", "/api/execute", json!({"path": "data/x"})),
        json!({"query": "mutation($p: String) { proxyRequest(input: {method: \"POST\", endpoint: \"/api/execute\", body: {path: $p}}) { success } }"}),
        json!({"query": "mutation { proxyRequest(input: {method: \"POST\", endpoint: \"/api/execute\", body: {path: \"data/x\", path: \"system/x\"}}) { success } }"}),
    ] {
        assert_eq!(proxy(&g, "admin", input.clone()), no(400, "ambiguous_request"), "{input}");
    }
}

#[test]
fn audit_mode_reports_a_forwarded_denial_with_the_identity() {
    let g = guard_with("audit");
    let input = proxy_input("POST", "/api/internal/outbox/claim", json!({}));
    let v = send(&g, "POST", "/graphql", &headers("analyst", &[]), &input.to_string());
    let Verdict::Allow { audited: Some(denial), headers, .. } = v else { panic!("{v:?}") };
    assert!(denial.body.contains("blocked"), "{}", denial.body);
    assert!(headers.iter().any(|(n, v)| n == "x-noetl-user-id" && v == "42"), "{headers:?}");
}

#[test]
fn explain_names_the_route_that_decided() {
    let g = guard();
    let roles = ["analyst".to_owned()];
    let json = [("content-type".to_owned(), "application/json".to_owned())];
    let head = RequestHead { method: "POST", path: "/noetl/execute", headers: &json };
    let (id, v) = g.explain(&head, br#"{"path": "data/x"}"#, &roles);
    let Verdict::Allow { detail, .. } = v else { panic!("{v:?}") };
    assert_eq!(id, "routes[11]");
    assert!(detail.starts_with("route=routes[11] forwarded as POST /api/execute to routes[3] (run)"), "{detail}");
    let input = proxy_input("POST", "/api/execute", json!({"path": "system/x"})).to_string();
    let head = RequestHead { method: "POST", path: "/graphql", headers: &json };
    let (_, v) = g.explain(&head, input.as_bytes(), &roles);
    let Verdict::Deny(d) = v else { panic!("{v:?}") };
    assert!(d.detail.contains("forwarded as POST /api/execute to routes[3] (run)"), "{}", d.detail);
}

#[test]
fn configuration_errors_name_the_field() {
    let policy = testing::policy();
    let env = |_: &str| None;
    for (route, path) in [
        (
            json!({"match": {"glob": "/noetl/**"}, "forward": {"strip_prefix": "/noetl", "prefix": "/api/"}}),
            "routes[0].forward.strip_prefix",
        ),
        (
            json!({"match": {"glob": "/noetl/**"}, "forward": {"strip_prefix": "/noetl/", "prefix": "/api/../"}}),
            "routes[0].forward.prefix",
        ),
        (json!({"match": {"glob": "/noetl/**"}, "forward": {"strip_prefix": "/noetl/"}}), "routes[0].forward"),
        (
            json!({"match": {"glob": "/noetl/**"}, "forward": {"strip_prefix": "/a/", "prefix": "/b/"}, "restricted": true}),
            "routes[0]",
        ),
        (
            json!({"match": {"path": "/graphql"}, "authorize": {"permission": "execute",
                   "playbook": {"graphql_variable": "name", "graphql_forward_fields": ["proxy-request"]}}}),
            "routes[0].authorize.playbook.graphql_forward_fields",
        ),
        (
            json!({"match": {"path": "/graphql"}, "authorize": {"permission": "execute",
                   "playbook": {"graphql_variable": "name", "graphql_forward_fields": ["p"], "graphql_restricted_fields": ["p"]}}}),
            "routes[0].authorize.playbook.graphql_forward_fields",
        ),
        (
            json!({"match": {"path": "/graphql"}, "authorize": {"permission": "execute",
                   "playbook": {"all_playbooks": true, "graphql_forward_fields": ["p"]}}}),
            "routes[0].authorize.playbook.graphql_forward_fields",
        ),
    ] {
        let cfg = json!({"routes": [route], "policy": policy});
        let err = Guard::from_json(cfg.to_string().as_bytes(), &env).unwrap_err();
        assert_eq!(err.path, path, "{route}: {err}");
    }
}

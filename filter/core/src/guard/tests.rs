use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::lookup::LookupFailure;
use crate::testing::decided;
use crate::testing::{bearer, config, env, guard, guard_with, policy, NOW, SECRET};
use crate::verdict::DenialKind;

/// The fixture token for user 42 with `roles`, valid at [`NOW`], with claims patched.
fn token(roles: &[&str], patch: Value) -> String {
    crate::testing::token_with(roles, NOW, patch)
}

fn head<'a>(method: &'a str, path: &'a str, headers: &'a [(String, String)]) -> RequestHead<'a> {
    RequestHead { method, path, headers }
}

fn verdict(g: &Guard, method: &str, path: &str, headers: &[(String, String)]) -> Verdict {
    match g.on_request_headers(&head(method, path, headers), NOW) {
        Step::Verdict(v) => v,
        other => panic!("{method} {path}: {other:?}"),
    }
}

fn with_body(g: &Guard, path: &str, headers: &[(String, String)], body: &str) -> Verdict {
    crate::testing::send(g, "POST", path, headers, body)
}

fn status(v: &Verdict) -> u32 {
    match v {
        Verdict::Allow { .. } => 200,
        Verdict::Deny(d) => d.status,
    }
}

fn body(v: &Verdict) -> Value {
    match v {
        Verdict::Deny(d) => serde_json::from_str(&d.body).unwrap(),
        Verdict::Allow { .. } => panic!("allowed"),
    }
}

#[test]
fn allowed_request_carries_identity_headers() {
    let g = guard();
    let v = verdict(&g, "GET", "/api/catalog/data/daily_load", &bearer(&token(&["analyst"], json!({}))));
    let Verdict::Allow { headers, detail, audited, .. } = v else { panic!("{v:?}") };
    assert_eq!(
        headers,
        [
            ("x-noetl-user-id".to_string(), "42".to_string()),
            ("x-noetl-user-email".into(), "ada@example.com".into()),
            ("x-noetl-user-name".into(), "Ada".into()),
            ("x-noetl-user-roles".into(), "analyst".into())
        ]
    );
    assert!(detail.contains("rule=\"roles.analyst.allow[0]\""), "{detail}");
    assert!(audited.is_none());
}

#[test]
fn policy_denial_is_403_with_the_spec_body() {
    let g = guard();
    let v = verdict(&g, "GET", "/api/catalog/system/reset", &bearer(&token(&["developer"], json!({}))));
    assert_eq!(status(&v), 403);
    assert_eq!(
        body(&v),
        json!({"error": "Permission denied", "playbook_path": "system/reset", "permission_type": "view"})
    );
    let Verdict::Deny(d) = v else { unreachable!() };
    assert!(d.detail.contains("roles.developer.deny[0]"), "{}", d.detail);
    assert_eq!(d.kind, DenialKind::Forbidden);
}

#[test]
fn unauthenticated_requests_get_401_with_reasons() {
    let g = guard();
    let cases = [
        (vec![], "missing_token"),
        (bearer("garbage"), "malformed"),
        (bearer("a.b.c"), "malformed"),
        (bearer(&token(&["admin"], json!({"exp": NOW - 3600}))), "expired"),
        (bearer(&token(&["admin"], json!({"iss": "https://other"}))), "unknown_issuer"),
        (bearer(&token(&["admin"], json!({"aud": "other"}))), "invalid_audience"),
        (bearer(&format!("{}x", token(&["admin"], json!({})))), "bad_signature"),
        (vec![("authorization".into(), "Basic dTpw".into())], "missing_token"),
    ];
    for (headers, reason) in cases {
        let v = verdict(&g, "GET", "/api/catalog/data/x", &headers);
        assert_eq!(status(&v), 401, "{headers:?}");
        assert_eq!(body(&v)["reason"], reason, "{headers:?}");
    }
}

#[test]
fn tokens_from_header_and_cookie() {
    let g = guard();
    let t = token(&["viewer"], json!({}));
    for headers in [
        vec![("x-session-token".to_string(), t.clone())],
        vec![("cookie".to_string(), format!("a=b; session_token={t}"))],
    ] {
        assert_eq!(status(&verdict(&g, "GET", "/api/catalog/data/x", &headers)), 200);
    }
}

#[test]
fn public_routes_cors_and_default_deny() {
    let g = guard();
    assert_eq!(status(&verdict(&g, "POST", "/api/auth/login", &[])), 200);
    let v = verdict(&g, "GET", "/unlisted", &bearer(&token(&["admin"], json!({}))));
    assert_eq!(status(&v), 403);
    assert_eq!(body(&v)["reason"], "no_route");
    let preflight = vec![
        ("origin".to_string(), "https://app.example".to_string()),
        ("access-control-request-method".to_string(), "POST".to_string()),
    ];
    assert_eq!(status(&verdict(&g, "OPTIONS", "/api/run/playbook", &preflight)), 200);
    assert_eq!(status(&verdict(&g, "OPTIONS", "/api/run/playbook", &preflight[..1])), 403, "not a preflight");
    let strict = guard_with(json!({"allow_cors_preflight": false}));
    assert_eq!(status(&verdict(&strict, "OPTIONS", "/api/run/playbook", &preflight)), 403);
    let open = guard_with(json!({"default_action": "allow"}));
    assert_eq!(status(&verdict(&open, "GET", "/unlisted", &[])), 200);
    let authn = guard_with(json!({"default_action": "authenticate"}));
    assert_eq!(status(&verdict(&authn, "GET", "/unlisted", &[])), 401);
}

#[test]
fn authenticate_routes_need_only_a_session() {
    let g = guard();
    assert_eq!(status(&verdict(&g, "GET", "/api/me", &bearer(&token(&[], json!({}))))), 200);
    assert_eq!(status(&verdict(&g, "GET", "/api/me", &[])), 401);
}

#[test]
fn body_sources_json_pointer_and_graphql() {
    let g = guard();
    let analyst = bearer(&token(&["analyst"], json!({})));
    assert_eq!(status(&with_body(&g, "/api/run/playbook", &analyst, r#"{"path": "data/load"}"#)), 200);
    let v = with_body(&g, "/api/run/playbook", &analyst, r#"{"path": "system/x"}"#);
    assert_eq!(body(&v)["playbook_path"], "system/x");
    assert_eq!(status(&with_body(&g, "/api/run/playbook", &analyst, r#"{"path": "data/../system/x"}"#)), 400);
    assert_eq!(status(&with_body(&g, "/api/run/playbook", &analyst, "{}")), 400);
    assert_eq!(status(&with_body(&g, "/api/run/playbook", &analyst, "")), 400);

    let q =
        json!({"query": "mutation($n: String!) { executePlaybook(name: $n) { id } }", "variables": {"n": "data/x"}});
    assert_eq!(status(&with_body(&g, "/graphql", &analyst, &q.to_string())), 200);
    let q = json!({"query": "mutation { a: executePlaybook(name: \"data/x\") { id } b: executePlaybook(name: \"system/y\") { id } }"});
    let v = with_body(&g, "/graphql", &analyst, &q.to_string());
    assert_eq!(body(&v)["playbook_path"], "system/y", "every call is checked");

    // An unauthenticated body route is refused before any body is read.
    assert_eq!(status(&with_body(&g, "/api/run/playbook", &[], r#"{"path": "data/load"}"#)), 401);
}

#[test]
fn body_over_the_limit_is_413() {
    let g = guard_with(json!({"max_body_bytes": 16}));
    let analyst = bearer(&token(&["analyst"], json!({})));
    let Step::ReadBody(p) = g.on_request_headers(&head("POST", "/api/run/playbook", &analyst), NOW) else { panic!() };
    assert_eq!(p.max_body_bytes, 16);
    assert!(p.upstream_headers.contains(&("x-noetl-user-id".into(), "42".into())));
    assert!(g.hold_headers_for_body(), "held by default: a denied request never reaches the upstream");
    assert!(!guard_with(json!({"hold_headers_for_body": false})).hold_headers_for_body());
    assert_eq!(status(&g.body_too_large(&p)), 413);
    assert_eq!(status(&decided(g.on_request_body(p, br#"{"path": "data/load-that-is-long"}"#))), 413);
}

#[test]
fn path_tricks_cannot_escape_a_glob() {
    let g = guard();
    let analyst = bearer(&token(&["analyst"], json!({})));
    for path in [
        "/api/catalog/data/../system/x",
        "/api/catalog/data/%2e%2e/system/x",
        "/api/catalog/data/%2E%2E/system/x",
        "/api/auth/../catalog/system/x",
    ] {
        assert_eq!(status(&verdict(&g, "GET", path, &analyst)), 400, "{path}");
    }
    for path in
        ["/api/catalog//system/x", "/api/catalog/./system/x", "/api/catalog/system%2fx", "//api/catalog/system/x"]
    {
        let v = verdict(&g, "GET", path, &analyst);
        assert_eq!(status(&v), 403, "{path}");
        assert_eq!(body(&v)["playbook_path"], "system/x", "{path}");
    }
}

#[test]
fn audit_mode_lets_everything_through_and_says_what_it_would_do() {
    let g = guard_with(json!({"mode": "audit"}));
    let v = verdict(&g, "GET", "/api/catalog/system/x", &bearer(&token(&["analyst"], json!({}))));
    let Verdict::Allow { headers, detail, audited, .. } = v else { panic!() };
    assert_eq!(audited.map(|d| d.status), Some(403));
    assert!(detail.starts_with("audit: would deny"), "{detail}");
    assert!(headers.iter().any(|(n, v)| n == "x-noetl-user-id" && v == "42"));
    let v = verdict(&g, "GET", "/api/catalog/data/x", &[]);
    assert!(matches!(v, Verdict::Allow { audited: Some(Denial { status: 401, .. }), .. }));
}

#[test]
fn header_names_are_configurable_and_listed_for_removal() {
    let g = guard_with(json!({"identity_header_prefix": "X-Auth-", "headers":
        {"user_id": "X-Auth-User", "email": "x-auth-email", "display_name": "x_auth_name", "roles": "x-auth-roles"}}));
    let sent =
        ["x-auth-user", "X_AUTH_ROLES", "x-auth-is-admin", "x-noetl-user-id", "x-authx", "authorization", "x-auth"];
    assert_eq!(g.identity_headers_to_remove(sent), ["x-auth-user", "X_AUTH_ROLES", "x-auth-is-admin"]);
    let v = verdict(&g, "GET", "/api/catalog/data/x", &bearer(&token(&["analyst", "viewer"], json!({}))));
    let Verdict::Allow { headers, .. } = v else { panic!() };
    assert!(headers.contains(&("x-auth-roles".into(), "analyst,viewer".into())));
    assert!(headers.contains(&("x_auth_name".into(), "Ada".into())));
}

#[test]
fn the_identity_header_family_is_removed_in_every_spelling() {
    let g = guard();
    let sent = [
        ":path",
        "x_noetl_user_roles",
        "X-NOETL-USER-ROLE",
        "x-noetl-user-is-admin",
        "x-noetl-user_id",
        "x-noetl-user-",
        "x-noetl-users",
        "x-noetl-user",
        "x-session-token",
        "cookie",
    ];
    assert_eq!(
        g.identity_headers_to_remove(sent),
        ["x_noetl_user_roles", "X-NOETL-USER-ROLE", "x-noetl-user-is-admin", "x-noetl-user_id", "x-noetl-user-"]
    );
    for (patch, path) in [
        (json!({"headers": {"user_id": "x-user-id"}}), "headers.user_id"),
        (json!({"identity_header_prefix": "x-user-"}), "headers.user_id"),
        (json!({"identity_header_prefix": ""}), "identity_header_prefix"),
        (json!({"identity_header_prefix": "x user"}), "identity_header_prefix"),
        (
            json!({"token_sources": [{"header": "authorization", "prefix": "Bearer "}, {"header": "X_NOETL_USER_TOKEN"}]}),
            "token_sources[1].header",
        ),
        (json!({"playbook_path_chars": "_-.%"}), "playbook_path_chars"),
    ] {
        let err = Guard::from_json(config(patch.clone()).to_string().as_bytes(), &env).unwrap_err();
        assert_eq!(err.path, path, "{patch}: {err}");
    }
}

#[test]
fn a_stats_window_is_taken_up_to_a_minute() {
    let env = |_: &str| Some(SECRET.to_owned());
    let window = |ms: u64| Guard::from_json(config(json!({"stats_window_ms": ms})).to_string().as_bytes(), &env);
    assert_eq!(guard_with(json!({})).stats_window_ms(), 0, "each counted as it is answered by default");
    assert_eq!(window(MAX_STATS_WINDOW_MS).unwrap().stats_window_ms(), MAX_STATS_WINDOW_MS);
    let err = window(MAX_STATS_WINDOW_MS + 1).unwrap_err();
    assert_eq!(err.path, "stats_window_ms", "{err}");
}

fn ambiguous(v: &Verdict) -> bool {
    status(v) == 400 && body(v) == json!({"error": "bad_request", "reason": "ambiguous_request"})
}

#[test]
fn requests_with_two_readings_are_refused_as_ambiguous() {
    let g = guard_with(json!({"routes": [
        {"match": {"methods": ["POST"], "path": "/graphql"},
         "authorize": {"permission": "execute", "playbook": {"graphql_variable": "name"}}},
        {"match": {"methods": ["POST"], "path": "/api/run/playbook"},
         "authorize": {"permission": "execute", "playbook": {"json_pointer": "/args/path"}}},
        {"match": {"prefix": "/api/run/by-header"},
         "authorize": {"permission": "execute", "playbook": {"header": "x-playbook"}}},
        {"match": {"prefix": "/api/catalog/"},
         "authorize": {"permission": "view", "playbook": {"path_after_prefix": true}}}
    ]}));
    let admin = token(&["admin"], json!({}));
    let other = token(&["analyst"], json!({"sid": "s-other"}));
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    // Two tokens: 400, not 401, whichever the two are; the same token twice is one token.
    for headers in [
        h(&[("authorization", &format!("Bearer {admin}")), ("cookie", &format!("session_token={other}"))]),
        h(&[("x-session-token", &other), ("authorization", &format!("Bearer {admin}"))]),
        h(&[("cookie", &format!("session_token={admin}; session_token={other}"))]),
        h(&[("authorization", &format!("Bearer {admin},Bearer {other}"))]),
        h(&[("authorization", &format!("Bearer {admin}")), ("x-session-token", "junk")]),
    ] {
        assert!(ambiguous(&verdict(&g, "GET", "/api/catalog/data/x", &headers)), "{headers:?}");
    }
    let same = h(&[("authorization", &format!("Bearer {admin}")), ("cookie", &format!("a=1; session_token={admin}"))]);
    assert_eq!(status(&verdict(&g, "GET", "/api/catalog/data/x", &same)), 200);
    let basic = h(&[("authorization", "Basic Zm9vOmJhcg=="), ("x-session-token", &admin)]);
    assert_eq!(status(&verdict(&g, "GET", "/api/catalog/data/x", &basic)), 200);

    // A playbook header sent twice, with different or equal values.
    for values in [["data/x", "system/x"], ["data/x", "data/x"]] {
        let mut headers = bearer(&admin);
        headers.extend(values.iter().map(|v| ("X-Playbook".to_string(), v.to_string())));
        assert!(ambiguous(&verdict(&g, "GET", "/api/run/by-header", &headers)), "{values:?}");
    }
    let mut one = bearer(&admin);
    one.push(("x-playbook".into(), "data/x".into()));
    assert_eq!(status(&verdict(&g, "GET", "/api/run/by-header", &one)), 200);

    // A duplicate key anywhere in a body, GraphQL variables included, or a repeated argument.
    let auth = bearer(&admin);
    for (path, body) in [
        ("/api/run/playbook", r#"{"args": {"path": "data/x", "path": "system/x"}}"#),
        ("/api/run/playbook", r#"{"args": {"path": "data/x"}, "args": {"path": "system/x"}}"#),
        ("/api/run/playbook", r#"{"args": {"path": "data/x"}, "other": {"a": 1, "a": 1}}"#),
        (
            "/graphql",
            r#"{"query": "mutation($n: String!) { executePlaybook(name: $n) { id } }", "variables": {"n": "data/x", "n": "system/x"}}"#,
        ),
        ("/graphql", r#"{"query": "mutation { executePlaybook(name: \"data/x\", name: \"system/x\") { id } }"}"#),
    ] {
        assert!(ambiguous(&with_body(&g, path, &auth, body)), "{body}");
    }
    assert_eq!(status(&with_body(&g, "/api/run/playbook", &auth, r#"{"args": {"path": "data/x"}}"#)), 200);
}

#[test]
fn playbook_names_another_decoder_reads_differently_are_400() {
    let g = guard_with(json!({"routes": [
        {"match": {"methods": ["POST"], "path": "/api/run/playbook"},
         "authorize": {"permission": "execute", "playbook": {"json_pointer": "/path"}}},
        {"match": {"prefix": "/api/run/by-header"},
         "authorize": {"permission": "execute", "playbook": {"header": "x-playbook"}}},
        {"match": {"prefix": "/api/catalog/"},
         "authorize": {"permission": "view", "playbook": {"path_after_prefix": true}}}
    ]}));
    let admin = bearer(&token(&["admin"], json!({})));
    let invalid = |v: &Verdict| status(v) == 400 && body(v)["reason"] == "invalid_playbook_path";
    for path in
        ["/api/catalog/data/%2541", "/api/catalog/data/a%20b", "/api/catalog/data/x%C3%A9", "/api/catalog/data/x:y"]
    {
        assert!(invalid(&verdict(&g, "GET", path, &admin)), "{path}");
    }
    // `..` once more decoded is refused before any route (the path itself is invalid).
    let v = verdict(&g, "GET", "/api/catalog/data/%252e%252e/system/x", &admin);
    assert_eq!(body(&v)["reason"], "invalid_path");
    for name in ["data/x%2e", " data/x", "data/x ", "data/a b", "data/é", "data\\x", "data/x\u{b}"] {
        let mut headers = admin.clone();
        headers.push(("x-playbook".into(), name.into()));
        assert!(invalid(&verdict(&g, "GET", "/api/run/by-header", &headers)), "{name:?}");
        let body_text = json!({"path": name}).to_string();
        assert!(invalid(&with_body(&g, "/api/run/playbook", &admin, &body_text)), "{name:?}");
    }
    assert_eq!(status(&with_body(&g, "/api/run/playbook", &admin, r#"{"path": "data/daily_load-v2.1"}"#)), 200);
    let wide = guard_with(json!({"playbook_path_chars": "_-.é:"}));
    assert_eq!(status(&verdict(&wide, "GET", "/api/catalog/data/x%C3%A9", &admin)), 200);
    assert_eq!(status(&verdict(&wide, "GET", "/api/catalog/data/x:y", &admin)), 200);
    assert!(invalid(&verdict(&wide, "GET", "/api/catalog/data/a%20b", &admin)));
}

#[test]
fn configuration_errors_name_the_field_path() {
    let cases = [
        (json!({"mode": "loud"}), "mode"),
        (
            json!({"providers": [{"name": "a", "issuer": "b", "algorithms": ["RS256"], "jwks": {"keys": [{"kty": "RSA", "n": "%", "e": "AQAB"}]}}]}),
            "providers[0].jwks.keys[0].n",
        ),
        (json!({"routes": [{"match": {"prefix": "x"}, "public": true}]}), "routes[0].match.prefix"),
        (
            json!({"policy": {"roles": {"a": {"allow": [{"permissions": ["x"], "playbooks": ["[z"]}]}}}}),
            "policy.roles.a.allow[0].playbooks[0]",
        ),
        (json!({"token_sources": []}), "token_sources"),
        (json!({"headers": {"roles": "bad header"}}), "headers.roles"),
        (json!({"validation": {"cluster": ""}}), "validation.cluster"),
        (json!({"session": {"max_entries": 0}, "validation": {"cluster": "c"}}), "session.max_entries"),
        (json!({"session": {"ttl_secs": 0}, "validation": {"cluster": "c"}}), "session.ttl_secs"),
        (json!({"session": {"negative_ttl_secs": 0}, "validation": {"cluster": "c"}}), "session.negative_ttl_secs"),
        (json!({"opaque_tokens": true}), "opaque_tokens"),
        (json!({"typo": 1}), "typo"),
        (json!({"restricted_roles": ["admin", " "]}), "restricted_roles[1]"),
        (
            json!({"routes": [{"match": {"path": "/a"}, "authorize": [
                {"permission": "view", "playbook": {"all_playbooks": true}}, {"permision": "x"}]}]}),
            "routes[0].authorize[1].permision",
        ),
    ];
    for (patch, path) in cases {
        let err = Guard::from_json(config(patch.clone()).to_string().as_bytes(), &env).unwrap_err();
        assert_eq!(err.path, path, "{patch}: {err}");
    }
    assert!(Guard::from_json(b"not json", &env).is_err());
    // A key written twice is refused, not read as its last value: two roles of one name (the
    // first one's deny would be dropped), or `mode` twice.
    let good = config(json!({})).to_string();
    let role = r#""viewer": {"allow": [{"permissions": ["view"], "playbooks": ["data/**"]}], "deny": [{"permissions": ["*"], "playbooks": ["data/secret/**"]}]}"#;
    let twice = r#""viewer": {"allow": [{"permissions": ["*"], "playbooks": ["**"]}]}"#;
    let roles = good.replacen(r#""roles":{"#, &format!(r#""roles":{{{role},{twice},"#), 1);
    assert_ne!(roles, good);
    let err = Guard::from_json(roles.as_bytes(), &env).unwrap_err();
    assert!(err.message.contains("\"viewer\" is written twice"), "{err}");
    let mode = good.replacen('{', r#"{"mode": "enforce", "mode": "audit", "#, 1);
    assert!(Guard::from_json(mode.as_bytes(), &env).unwrap_err().message.contains("\"mode\""));
}

#[test]
fn restricted_routes_admit_the_configured_roles_only() {
    let g = guard_with(json!({"restricted_roles": ["ops"], "routes": [
        {"match": {"path": "/sql"}, "restricted": true},
        {"match": {"path": "/worker"}, "blocked": true}]}));
    assert_eq!(status(&verdict(&g, "POST", "/sql", &bearer(&token(&["ops"], json!({}))))), 200);
    let admin = verdict(&g, "POST", "/sql", &bearer(&token(&["admin"], json!({}))));
    assert_eq!((status(&admin), body(&admin)["reason"].as_str()), (403, Some("restricted")));
    assert_eq!(status(&verdict(&g, "POST", "/sql", &[])), 401);
    let blocked = verdict(&g, "POST", "/worker", &[]);
    assert_eq!((status(&blocked), body(&blocked)["reason"].as_str()), (403, Some("blocked")));
    // Audit mode lets a blocked route through, and says so.
    let audit = guard_with(json!({"mode": "audit", "routes": [{"match": {"path": "/worker"}, "blocked": true}]}));
    assert!(matches!(verdict(&audit, "POST", "/worker", &[]), Verdict::Allow { audited: Some(_), .. }));
}

#[test]
fn the_example_in_the_spec_parses() {
    // SPEC section 9's example, minus `validation` (the next slice) and with a secret set.
    let mut cfg: Value = serde_json::from_str(
        r#"{
  "mode": "enforce",
  "token_sources": [{"header": "authorization", "prefix": "Bearer "},
                    {"header": "x-session-token"}, {"cookie": "session_token"}],
  "opaque_tokens": false,
  "clock_skew_secs": 60,
  "providers": [
    {"name": "noetl", "issuer": "https://noetl.local", "audiences": ["noetl-gateway"],
     "algorithms": ["HS256"], "secret_env": "PLAYBOOK_GUARD_HS256_SECRET"},
    {"name": "auth0", "roles_claim": "https://noetl.io/roles", "issuer": "https://tenant.auth0.com/", "audiences": ["https://noetl/api"],
     "algorithms": ["RS256"], "jwks": {"keys": []}},
    {"name": "okta", "issuer": "https://example.okta.com/oauth2/default", "algorithms": ["RS256"],
     "remote_jwks": {"cluster": "okta", "uri": "https://example.okta.com/oauth2/default/v1/keys",
                     "cache_secs": 600}}
  ],
  "session": {"ttl_secs": 300, "negative_ttl_secs": 30, "max_entries": 100000},
  "routes": [
    {"match": {"prefix": "/api/auth/"}, "public": true},
    {"match": {"methods": ["POST"], "path": "/graphql"},
     "authorize": {"permission": "execute", "playbook": {"graphql_variable": "name"}}},
    {"match": {"methods": ["POST"], "path": "/api/run/playbook"},
     "authorize": {"permission": "execute", "playbook": {"json_pointer": "/path"}}},
    {"match": {"prefix": "/api/catalog/"},
     "authorize": {"permission": "view", "playbook": {"path_after_prefix": true}}}
  ],
  "default_action": "deny",
  "headers": {"user_id": "x-noetl-user-id", "email": "x-noetl-user-email",
              "display_name": "x-noetl-user-name", "roles": "x-noetl-user-roles"},
  "policy": {"version": "...", "roles": {}, "deny": []}
}"#,
    )
    .unwrap();
    cfg["policy"] = policy();
    let g = Guard::from_json(cfg.to_string().as_bytes(), &env).unwrap();
    assert_eq!(g.policy_version(), "2026-11-23.1");
}

mod with_validation {
    use super::*;
    use crate::session::SessionEntry;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn vguard(validation: Value) -> Guard {
        let mut routes = config(json!({}))["routes"].clone();
        routes.as_array_mut().unwrap().push(json!({"match": {"path": "/logout"}, "logout": true}));
        guard_with(json!({"validation": validation, "routes": routes, "opaque_tokens": true}))
    }

    /// An entry fetched at `fetched_at` (seconds, as the tests' `NOW`).
    fn entry(valid: bool, roles: &[&str], fetched_at: u64) -> SessionEntry {
        SessionEntry {
            valid,
            user_id: Some("7".into()),
            email: Some("grace@example.com".into()),
            display_name: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            expires_at: None,
            fetched_at_ms: fetched_at * 1000,
        }
    }

    fn pending(g: &Guard, method: &str, path: &str, headers: &[(String, String)]) -> Pending {
        match g.on_request_headers(&head(method, path, headers), NOW) {
            Step::Session(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn hit(step: SessionStep) -> Verdict {
        match step {
            SessionStep::Hit(Step::Verdict(v)) => v,
            other => panic!("{other:?}"),
        }
    }

    fn verdict_of(step: Step) -> Verdict {
        match step {
            Step::Verdict(v) => v,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_cache_entry_decides_roles_and_identity() {
        let g = vguard(json!({"cluster": "noetl"}));
        // The token says admin; the validation service says analyst, and it is the authority.
        let t = bearer(&token(&["admin"], json!({})));
        let p = pending(&g, "GET", "/api/catalog/system/x", &t);
        assert_eq!(p.session_key(), "noetl/s-42");
        let SessionStep::Miss(p) = g.on_session(p, None, NOW * 1000) else { panic!() };
        let callout = g.callout(&p).unwrap();
        let body: Value = serde_json::from_slice(&callout.body).unwrap();
        assert_eq!(body["session_token"], p.token());
        let v = verdict_of(g.on_answer(p, &entry(true, &["analyst"], NOW)));
        assert_eq!(status(&v), 403);

        let p = pending(&g, "GET", "/api/catalog/data/x", &t);
        let Verdict::Allow { headers, .. } =
            hit(g.on_session(p, Some(&entry(true, &["analyst"], NOW - 299)), NOW * 1000))
        else {
            panic!()
        };
        assert!(headers.contains(&("x-noetl-user-id".into(), "7".into())), "the service's user id: {headers:?}");
        assert!(headers.contains(&("x-noetl-user-email".into(), "grace@example.com".into())));
        assert!(
            !headers.iter().any(|(n, _)| n == "x-noetl-user-name"),
            "the token never fills what the service left out: {headers:?}"
        );
        assert!(headers.contains(&("x-noetl-user-roles".into(), "analyst".into())));
    }

    fn header<'a>(v: &'a Verdict, name: &str) -> Option<&'a str> {
        let Verdict::Allow { headers, .. } = v else { return None };
        headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn identity_comes_from_the_service_alone_never_mixed_with_the_token() {
        let g = vguard(json!({"cluster": "noetl", "token_roles": "fallback"}));
        // The token names Ada (sub 42, email, name); the service answers user 9 with no email
        // and no name.
        let t = bearer(&token(&["viewer"], json!({})));
        let answer = br#"{"status": "ok", "valid": true, "user": {"user_id": 9}, "expires_at": null, "error": null}"#;
        let entry = g.read_answer(Some(200), answer, NOW * 1000).unwrap().entry;
        let v = verdict_of(g.on_answer(pending(&g, "GET", "/api/me", &t), &entry));
        assert_eq!(header(&v, "x-noetl-user-id"), Some("9"));
        assert_eq!(header(&v, "x-noetl-user-email"), None, "not the token's email beside the service's id");
        assert_eq!(header(&v, "x-noetl-user-name"), None);
        assert_eq!(header(&v, "x-noetl-user-roles"), Some("viewer"), "roles combine only as token_roles says");
        // Served stale under serve_stale, the same.
        let g = vguard(json!({"cluster": "noetl", "failure_mode": "serve_stale"}));
        let (step, served) = g.on_callout_failure(pending(&g, "GET", "/api/me", &t), Some(&entry), (NOW + 301) * 1000);
        let v = verdict_of(step);
        assert!(served);
        assert_eq!((header(&v, "x-noetl-user-id"), header(&v, "x-noetl-user-email")), (Some("9"), None));
        // Without a validation service the token is the one source.
        let v = verdict(&guard(), "GET", "/api/me", &t);
        assert_eq!(header(&v, "x-noetl-user-id"), Some("42"));
        assert_eq!(header(&v, "x-noetl-user-email"), Some("ada@example.com"));
    }

    #[test]
    fn a_role_with_syntax_in_it_never_reaches_the_policy_or_the_header() {
        // From the service.
        let g = vguard(json!({"cluster": "noetl"}));
        let t = bearer(&token(&[], json!({})));
        let answer =
            br#"{"status": "ok", "valid": true, "user": {"user_id": 9, "roles": ["viewer,admin", "analyst"]}}"#;
        let read = g.read_answer(Some(200), answer, NOW * 1000).unwrap();
        assert_eq!(read.roles_dropped, 1);
        let v = verdict_of(g.on_answer(pending(&g, "GET", "/api/catalog/data/x", &t), &read.entry));
        assert_eq!(header(&v, "x-noetl-user-roles"), Some("analyst"));
        // From a token's roles claim, without a validation service.
        let t = bearer(&token(&["viewer,admin", "analyst", "admin\u{85}", " admin"], json!({})));
        let v = verdict(&guard(), "GET", "/api/catalog/data/x", &t);
        assert_eq!(header(&v, "x-noetl-user-roles"), Some("analyst"));
        let v = verdict(&guard(), "GET", "/api/catalog/system/x", &t);
        assert_eq!(status(&v), 403, "analyst alone may not view system/**");
    }

    #[test]
    fn a_spent_cold_callout_limit_is_503_with_its_own_reason() {
        let g = vguard(json!({"cluster": "noetl"}));
        let t = bearer(&token(&[], json!({})));
        let v = verdict_of(g.on_cold_callout_limited(pending(&g, "GET", "/api/me", &t)));
        let Verdict::Deny(d) = &v else { panic!("{v:?}") };
        assert_eq!((d.status, d.kind), (503, DenialKind::Unavailable));
        assert!(d.headers.contains(&("retry-after".into(), "1".into())));
        assert_eq!(body(&v), json!({"error": "unavailable", "reason": "too_many_new_sessions"}));
    }

    #[test]
    fn stale_and_missing_entries_miss() {
        let g = vguard(json!({"cluster": "noetl"}));
        let t = bearer(&token(&[], json!({})));
        let stale = entry(true, &["analyst"], NOW - 300);
        assert!(matches!(
            g.on_session(pending(&g, "GET", "/api/me", &t), Some(&stale), NOW * 1000),
            SessionStep::Miss(_)
        ));
        assert!(matches!(g.on_session(pending(&g, "GET", "/api/me", &t), None, NOW * 1000), SessionStep::Miss(_)));
    }

    #[test]
    fn invalid_sessions_are_401_while_the_negative_entry_is_fresh() {
        let g = vguard(json!({"cluster": "noetl"}));
        let t = bearer(&token(&["admin"], json!({})));
        let v = hit(g.on_session(pending(&g, "GET", "/api/me", &t), Some(&entry(false, &[], NOW - 29)), NOW * 1000));
        assert_eq!(status(&v), 401);
        assert_eq!(body(&v)["reason"], "invalid_session");
        let negative = entry(false, &[], NOW - 30);
        assert!(matches!(
            g.on_session(pending(&g, "GET", "/api/me", &t), Some(&negative), NOW * 1000),
            SessionStep::Miss(_)
        ));
    }

    #[test]
    fn failure_modes() {
        let t = bearer(&token(&[], json!({})));
        let deny = vguard(json!({"cluster": "noetl"}));
        let (step, stale_served) = deny.on_callout_failure(
            pending(&deny, "GET", "/api/me", &t),
            Some(&entry(true, &[], NOW - 301)),
            NOW * 1000,
        );
        let Step::Verdict(Verdict::Deny(d)) = step else { panic!() };
        assert_eq!((d.status, stale_served), (503, false));
        assert!(d.headers.contains(&("retry-after".into(), "1".into())));

        let stale = vguard(json!({"cluster": "noetl", "failure_mode": "serve_stale", "stale_grace_secs": 60}));
        let within = entry(true, &["viewer"], NOW - 359);
        let (step, served) = stale.on_callout_failure(pending(&stale, "GET", "/api/me", &t), Some(&within), NOW * 1000);
        assert!(served);
        assert_eq!(status(&verdict_of(step)), 200);
        let beyond = entry(true, &["viewer"], NOW - 360);
        let (step, served) = stale.on_callout_failure(pending(&stale, "GET", "/api/me", &t), Some(&beyond), NOW * 1000);
        assert_eq!((status(&verdict_of(step)), served), (503, false));
        let (step, served) = stale.on_callout_failure(pending(&stale, "GET", "/api/me", &t), None, NOW * 1000);
        assert_eq!((status(&verdict_of(step)), served), (503, false));
    }

    #[test]
    fn token_roles_combine_as_configured() {
        let t = bearer(&token(&["viewer"], json!({})));
        let roles_of = |mode: &str, service: &[&str]| {
            let g = vguard(json!({"cluster": "noetl", "token_roles": mode}));
            let Verdict::Allow { headers, .. } =
                verdict_of(g.on_answer(pending(&g, "GET", "/api/me", &t), &entry(true, service, NOW)))
            else {
                panic!()
            };
            headers.into_iter().find(|(n, _)| n == "x-noetl-user-roles").unwrap().1
        };
        assert_eq!(roles_of("ignore", &["analyst"]), "analyst");
        assert_eq!(roles_of("ignore", &[]), "");
        assert_eq!(roles_of("fallback", &[]), "viewer");
        assert_eq!(roles_of("fallback", &["analyst"]), "analyst");
        assert_eq!(roles_of("union", &["analyst", "viewer"]), "analyst,viewer");
    }

    #[test]
    fn a_provider_whose_sessions_are_not_validated_is_decided_by_its_token_alone() {
        let mut provider = crate::testing::provider();
        provider["validate_sessions"] = json!(false);
        let g = guard_with(json!({"validation": {"cluster": "noetl"}, "providers": [provider]}));
        let t = bearer(&token(&["analyst"], json!({})));
        // No session step and no callout: the token's identity and roles decide.
        let v = verdict(&g, "GET", "/api/catalog/data/x", &t);
        assert_eq!(status(&v), 200);
        assert_eq!(header(&v, "x-noetl-user-id"), Some("42"));
        assert_eq!(header(&v, "x-noetl-user-roles"), Some("analyst"));
        assert_eq!(status(&verdict(&g, "GET", "/api/catalog/system/x", &t)), 403);
        // An opaque token still goes to the service; so does a JWT of a provider left as it is.
        let opaque = guard_with(json!({"validation": {"cluster": "noetl"}, "providers": [], "opaque_tokens": true}));
        let headers = vec![("x-session-token".to_string(), NOETL_SESSION.to_string())];
        assert!(matches!(
            opaque.on_request_headers(&head("GET", "/api/catalog/data/x", &headers), NOW),
            Step::Session(_)
        ));
        let g = vguard(json!({"cluster": "noetl"}));
        assert_eq!(pending(&g, "GET", "/api/catalog/data/x", &t).session_key(), "noetl/s-42");
    }

    /// A NoETL session token: `md5(random()::text || clock_timestamp()::text)`.
    const NOETL_SESSION: &str = "9e107d9d372bb6826bd81d3542a419d6";

    #[test]
    fn opaque_tokens_are_vouched_for_by_the_service_alone() {
        let g = vguard(json!({"cluster": "noetl"}));
        let headers = vec![("x-session-token".to_string(), NOETL_SESSION.to_string())];
        let p = pending(&g, "GET", "/api/catalog/data/x", &headers);
        assert_eq!(p.session_key(), format!("opaque/{}", crate::jwt::token_digest(NOETL_SESSION)));
        let sent: Value = serde_json::from_slice(&g.callout(&p).unwrap().body).unwrap();
        assert_eq!(sent, json!({"session_token": NOETL_SESSION, "credential": "pg_auth"}));
        let v = verdict_of(g.on_answer(p, &entry(true, &["analyst"], NOW)));
        assert_eq!(status(&v), 200);
        // Without `opaque_tokens`, the same token is refused before any callout.
        let strict = guard_with(json!({"validation": {"cluster": "noetl"}}));
        let v = verdict(&strict, "GET", "/api/catalog/data/x", &headers);
        assert_eq!(body(&v)["reason"], "malformed");
    }

    /// What [`Guard::on_request_headers_cached`] makes of a token: the reason of its 401 (`None`
    /// when it goes on to the session cache) and the kind it was counted as.
    fn classify(g: &Guard, token: &str) -> (Option<String>, TokenTally) {
        let headers = bearer(token);
        let head = RequestHead { method: "GET", path: "/api/catalog/data/x", headers: &headers };
        let mut state = g.verifier_state();
        let reason = match g.on_request_headers_cached(&head, NOW, &mut state) {
            Step::Session(_) => None,
            Step::Verdict(v) => Some(body(&v)["reason"].as_str().unwrap_or_default().to_owned()),
            other => panic!("{other:?}"),
        };
        (reason, state.tokens.take())
    }

    #[test]
    fn a_token_is_a_jwt_or_an_opaque_session_of_the_configured_shape_or_refused() {
        let g = vguard(json!({"cluster": "noetl"}));
        let counted = |jwt, opaque, unrecognised| TokenTally { jwt, opaque, unrecognised };
        assert_eq!(classify(&g, NOETL_SESSION), (None, counted(0, 1, 0)));
        assert_eq!(classify(&g, &token(&[], json!({}))), (None, counted(1, 0, 0)));
        // A token shaped as a JWT stays a JWT: a bad one is refused, never sent as opaque.
        let forged = format!("{}x", token(&[], json!({})));
        assert_eq!(classify(&g, &forged), (Some("bad_signature".into()), counted(1, 0, 0)));
        assert_eq!(classify(&g, "aaaa.bbbb.cccc"), (Some("malformed".into()), counted(1, 0, 0)));
        for junk in [
            "9E107D9D372BB6826BD81D3542A419D6",                                 // uppercase hex
            "9e107d9d372bb6826bd81d3542a419d69e107d9d372bb6826bd81d3542a419d6", // 64 hex
            "OWUxMDdkOWQzNzJiYjY4MjZiZDgxZDM1",                                 // base64
            "9e107d9d372bb6826bd81d3542a419d",                                  // 31
            "noetl-session-abc123",
            "a.b",
        ] {
            assert_eq!(classify(&g, junk), (Some("malformed".into()), counted(0, 0, 1)), "{junk}");
        }
        // Another shape, when configured.
        let hex64 = guard_with(json!({
            "validation": {"cluster": "noetl"}, "opaque_tokens": true,
            "opaque_token_shape": {"alphabet": "hex", "min_length": 32, "max_length": 64}
        }));
        for token in ["9E107D9D372BB6826BD81D3542A419D6", &NOETL_SESSION.repeat(2)] {
            assert_eq!(classify(&hex64, token), (None, counted(0, 1, 0)), "{token}");
        }
    }

    #[test]
    fn a_bad_opaque_shape_is_a_configuration_error() {
        let cfg = json!({"validation": {"cluster": "noetl"}, "opaque_tokens": true,
                         "opaque_token_shape": {"min_length": 4, "max_length": 8}});
        let env = |_: &str| Some(SECRET.to_owned());
        let err = Guard::from_json(config(cfg).to_string().as_bytes(), &env).unwrap_err();
        assert_eq!(err.path, "opaque_token_shape.min_length");
    }

    #[test]
    fn bad_tokens_never_reach_the_cache() {
        let g = vguard(json!({"cluster": "noetl"}));
        for t in [token(&[], json!({"exp": NOW - 3600})), format!("{}x", token(&[], json!({})))] {
            assert_eq!(status(&verdict(&g, "GET", "/api/me", &bearer(&t))), 401);
        }
    }

    #[test]
    fn logout_routes_name_the_session_to_evict() {
        let g = vguard(json!({"cluster": "noetl"}));
        let t = bearer(&token(&[], json!({})));
        let v = hit(g.on_session(pending(&g, "POST", "/logout", &t), Some(&entry(true, &[], NOW)), NOW * 1000));
        let Verdict::Allow { logout, .. } = v else { panic!() };
        assert_eq!(logout.as_deref(), Some("noetl/s-42"));
        let v = hit(g.on_session(pending(&g, "GET", "/api/me", &t), Some(&entry(true, &[], NOW)), NOW * 1000));
        assert!(matches!(v, Verdict::Allow { logout: None, .. }));
    }

    #[test]
    fn body_routes_read_the_body_after_the_session() {
        let g = vguard(json!({"cluster": "noetl"}));
        let t = bearer(&token(&[], json!({})));
        let p = pending(&g, "POST", "/api/run/playbook", &t);
        let Step::ReadBody(p) = g.on_answer(p, &entry(true, &["analyst"], NOW)) else { panic!() };
        assert!(p.upstream_headers.contains(&("x-noetl-user-id".into(), "7".into())));
        assert_eq!(status(&decided(g.on_request_body(p.clone(), br#"{"path": "data/x"}"#))), 200);
        assert_eq!(status(&decided(g.on_request_body(p, br#"{"path": "system/x"}"#))), 403);
    }
}

/// Routes that name playbooks by id, as NoETL's do.
fn lookup_routes() -> Value {
    json!([
        {"match": {"methods": ["POST"], "path": "/api/execute"},
         "authorize": {"permission": "execute", "playbook": {"json_fields": [
            {"pointer": "/catalog_id", "lookup": "catalog_id", "present": "truthy"}, {"pointer": "/path"}]}}},
        {"match": {"methods": ["POST"], "path": "/api/execute/batch"},
         "authorize": {"permission": "execute", "playbook": {"each": "/executions", "json_fields": [
            {"pointer": "/catalog_id", "lookup": "catalog_id", "present": "truthy"}, {"pointer": "/path"}]}}},
        {"match": {"methods": ["POST"], "glob": "/api/executions/*/cancel"},
         "authorize": {"permission": "execute", "playbook": {"path_capture": true, "lookup": "execution_id"}}}
    ])
}

fn resolving_guard(max_per_request: u64) -> Guard {
    guard_with(json!({"routes": lookup_routes(),
                      "resolver": {"cluster": "noetl", "max_lookups_per_request": max_per_request}}))
}

/// Runs a request, answering each lookup from `paths` (an id missing there is unknown to
/// NoETL); returns the verdict and the ids looked up, in order.
fn resolved(
    g: &Guard,
    method: &str,
    path: &str,
    roles: &[&str],
    body: &str,
    paths: &[(u64, &str)],
) -> (Verdict, Vec<String>) {
    let headers = [bearer(&token(roles, json!({}))), vec![("content-type".into(), "application/json".into())]].concat();
    let mut asked = Vec::new();
    let mut step = g.on_request_headers(&head(method, path, &headers), NOW);
    loop {
        step = match step {
            Step::Verdict(v) => return (v, asked),
            Step::ReadBody(p) => g.on_request_body(p, body.as_bytes()),
            Step::Resolve { key, pending } => {
                asked.push(key.to_string());
                let answer = paths
                    .iter()
                    .find(|(id, _)| *id == key.id)
                    .map(|(_, p)| PlaybookPath::parse(p).unwrap())
                    .ok_or(LookupFailure::NotFound);
                g.on_lookup(pending, &key, answer)
            }
            other => panic!("{other:?}"),
        };
    }
}

#[test]
fn ids_are_looked_up_and_decided_as_the_playbook_they_name() {
    let g = resolving_guard(8);
    let known = [(7, "data/load"), (9, "system/reset")];
    let run = |roles: &[&str], body: &str| resolved(&g, "POST", "/api/execute", roles, body, &known);
    let (v, asked) = run(&["analyst"], r#"{"catalog_id": 7, "path": "system/ignored"}"#);
    assert_eq!((status(&v), asked), (200, vec!["catalog_id 7".to_string()]));
    let (v, _) = run(&["analyst"], r#"{"catalog_id": "9", "path": "data/load"}"#);
    assert_eq!(status(&v), 403, "catalog_id 9 is system/reset whatever `path` says");
    assert_eq!(body(&v)["playbook_path"], "system/reset");
    assert_eq!(status(&run(&["admin"], r#"{"catalog_id": 9}"#).0), 200);
    // NoETL has no such id: refused, with the reason.
    let (v, _) = run(&["admin"], r#"{"catalog_id": 8}"#);
    assert_eq!((status(&v), body(&v)["reason"].as_str()), (403, Some("unresolved_target")));
    // An odd spelling is not looked up: every playbook, which only an unrestricted role holds.
    let (v, asked) = run(&["developer"], r#"{"catalog_id": " 7 ", "path": "data/load"}"#);
    assert_eq!((status(&v), asked.len()), (403, 0));
    assert_eq!(status(&run(&["admin"], r#"{"catalog_id": "1_000"}"#).0), 200);
    // A falsy id leaves the choice to `path`, with no lookup.
    let (v, asked) = run(&["analyst"], r#"{"catalog_id": 0, "path": "data/load"}"#);
    assert_eq!((status(&v), asked.len()), (200, 0));
}

#[test]
fn a_failed_lookup_denies() {
    let g = resolving_guard(8);
    let headers =
        [bearer(&token(&["admin"], json!({}))), vec![("content-type".into(), "application/json".into())]].concat();
    let Step::ReadBody(p) = g.on_request_headers(&head("POST", "/api/execute", &headers), NOW) else { panic!() };
    let Step::Resolve { key, pending } = g.on_request_body(p, br#"{"catalog_id": 7}"#) else { panic!() };
    for failure in [LookupFailure::Unavailable("timeout".into()), LookupFailure::Limited] {
        let v = decided(g.on_lookup(pending.clone(), &key, Err(failure)));
        assert_eq!((status(&v), body(&v)["reason"].as_str()), (503, Some("lookup_unavailable")));
    }
    // A path NoETL would never have given is no answer.
    let odd = PlaybookPath::parse("data/x y").unwrap_or_else(|_| PlaybookPath::parse("data/x;y").unwrap());
    assert_eq!(status(&decided(g.on_lookup(pending, &key, Ok(odd)))), 503);
}

#[test]
fn batches_look_up_each_id_once_and_within_the_limit() {
    let known = [(1, "data/a"), (2, "data/b"), (3, "system/c")];
    let batch = r#"{"executions": [{"catalog_id": 1}, {"catalog_id": "2"}, {"catalog_id": 1}, {"path": "data/d"}]}"#;
    let (v, asked) = resolved(&resolving_guard(8), "POST", "/api/execute/batch", &["analyst"], batch, &known);
    assert_eq!((status(&v), asked), (200, vec!["catalog_id 1".to_string(), "catalog_id 2".into()]));
    let forbidden = r#"{"executions": [{"catalog_id": 1}, {"catalog_id": 3}]}"#;
    assert_eq!(
        status(&resolved(&resolving_guard(8), "POST", "/api/execute/batch", &["analyst"], forbidden, &known).0),
        403
    );
    // Past max_lookups_per_request, the ids stand for every playbook: no lookups at all.
    let (v, asked) = resolved(&resolving_guard(1), "POST", "/api/execute/batch", &["analyst"], batch, &known);
    assert_eq!((status(&v), asked.len()), (403, 0));
    assert_eq!(status(&resolved(&resolving_guard(1), "POST", "/api/execute/batch", &["admin"], batch, &known).0), 200);
}

#[test]
fn an_id_in_the_url_is_looked_up_and_without_a_resolver_means_every_playbook() {
    let known = [(42, "data/load"), (43, "system/reset")];
    let g = resolving_guard(8);
    let cancel =
        |id: &str, roles: &[&str]| resolved(&g, "POST", &format!("/api/executions/{id}/cancel"), roles, "", &known);
    assert_eq!(
        (status(&cancel("42", &["analyst"]).0), cancel("42", &["analyst"]).1),
        (200, vec!["execution_id 42".into()])
    );
    assert_eq!(status(&cancel("43", &["analyst"]).0), 403);
    let (v, asked) = cancel("0042", &["analyst"]);
    assert_eq!((status(&v), asked.len()), (403, 0), "not the one spelling: every playbook");

    let plain = guard_with(json!({"routes": lookup_routes()}));
    let (v, asked) = resolved(&plain, "POST", "/api/executions/42/cancel", &["developer"], "", &known);
    assert_eq!((status(&v), asked.len()), (403, 0));
    assert_eq!(status(&resolved(&plain, "POST", "/api/executions/42/cancel", &["admin"], "", &known).0), 200);
    let (v, asked) = resolved(&plain, "POST", "/api/execute", &["admin"], r#"{"catalog_id": 9}"#, &known);
    assert_eq!((status(&v), asked.len()), (200, 0));
}

#[test]
fn resolver_configuration_is_checked() {
    let env = |_: &str| Some(SECRET.to_owned());
    let bad = |patch: Value| Guard::from_json(config(patch).to_string().as_bytes(), &env).unwrap_err().path;
    assert_eq!(bad(json!({"resolver": {"cluster": "noetl", "ttl_secs": 0}})), "resolver.ttl_secs");
    let capture_every = json!([{"match": {"glob": "/api/executions/**"},
        "authorize": {"permission": "view", "playbook": {"path_capture": true, "lookup": "execution_id"}}}]);
    assert_eq!(bad(json!({"routes": capture_every})), "routes[0].authorize.playbook.lookup");
    let lookup_alone = json!([{"match": {"path": "/x"},
        "authorize": {"permission": "view", "playbook": {"all_playbooks": true, "lookup": "execution_id"}}}]);
    assert_eq!(bad(json!({"routes": lookup_alone})), "routes[0].authorize.playbook.lookup");
    let unknown_kind = json!([{"match": {"path": "/x"}, "authorize": {"permission": "view",
        "playbook": {"json_fields": [{"pointer": "/id", "lookup": "user_id"}]}}}]);
    assert!(Guard::from_json(config(json!({"routes": unknown_kind})).to_string().as_bytes(), &env).is_err());
}

/// The terse path (the filter's) decides every request as the full path does; only an allow's
/// detail is left out. Each request is sent twice, the second answered from the decision memo.
#[test]
fn terse_decisions_are_the_full_decisions_without_the_detail() {
    let requests: &[(&str, &str, &str)] = &[
        ("GET", "/api/catalog/data/daily_load/ui_schema", ""),
        ("GET", "/api/catalog/system/reset/ui_schema", ""),
        ("POST", "/api/playbooks/data/load/run", ""),
        ("POST", "/api/playbooks/system/reset/run", ""),
        ("POST", "/api/run/playbook", r#"{"path": "data/load"}"#),
        ("POST", "/api/run/playbook", r#"{"path": "system/reset"}"#),
        ("POST", "/api/run/playbook", r#"{"catalog_id": "123"}"#),
        ("GET", "/api/me", ""),
        ("GET", "/api/catalog/api_integration/amadeus_ai_api/ui_schema", ""),
        ("GET", "/nowhere", ""),
    ];
    let role_sets: &[&[&str]] =
        &[&[], &["viewer"], &["analyst"], &["developer"], &["admin"], &["analyst", "developer"], &["nobody"]];
    for mode in ["enforce", "audit"] {
        let full = guard_with(json!({"mode": mode}));
        let mut terse = guard_with(json!({"mode": mode}));
        terse.set_terse(true);
        for roles in role_sets {
            let headers = bearer(&crate::testing::token(roles, NOW));
            for (method, path, body) in requests {
                let expected = match crate::testing::send(&full, method, path, &headers, body) {
                    Verdict::Allow { headers, audited: None, logout, .. } => {
                        Verdict::Allow { headers, detail: String::new(), audited: None, logout }
                    }
                    other => other,
                };
                for round in 0..2 {
                    let got = crate::testing::send(&terse, method, path, &headers, body);
                    let got = match got {
                        // An allow whose detail the terse path wrote anyway (it took the full path).
                        Verdict::Allow { headers, audited: None, logout, .. } => {
                            Verdict::Allow { headers, detail: String::new(), audited: None, logout }
                        }
                        other => other,
                    };
                    assert_eq!(got, expected, "{mode} {roles:?} {method} {path} {body} (round {round})");
                }
            }
        }
    }
}

#[test]
fn terse_allows_carry_no_detail_and_the_memo_is_bounded() {
    let mut g = guard_with(json!({"decision_cache_size": 2}));
    g.set_terse(true);
    let headers = bearer(&crate::testing::token(&["analyst"], NOW));
    for n in 0..5 {
        let v = crate::testing::send(&g, "GET", &format!("/api/catalog/data/p{n}/ui_schema"), &headers, "");
        assert!(matches!(&v, Verdict::Allow { detail, .. } if detail.is_empty()), "{v:?}");
    }
    assert_eq!(g.decisions.0.lock().unwrap().len(), 2);
}

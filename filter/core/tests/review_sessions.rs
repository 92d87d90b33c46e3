//! Review: how the shipped configuration treats NoETL's OWN sessions (32-hex opaque tokens from
//! NoETL's login, validated by `POST /api/auth/session/validate`), compared with what NoETL's
//! gateway (noetl/gateway src/auth/middleware.rs, src/auth/mod.rs, src/sse.rs), its Rust server
//! (noetl/server src/handlers/auth.rs), its Python server (noetl/noetl
//! noetl/server/api/auth/check_access.py) and its GUI (noetl/gui src/services/gatewayAuth.ts)
//! do.
//!
//! Tests named `finding_*` PASS WHILE THE DIVERGENCE EXISTS: each asserts what the filter does
//! today, and its comment says what NoETL does instead. Tests named `ok_*` check behaviour that
//! agrees with NoETL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use playbook_guard_core::testing::{self, answer, guard_from, NOW};
use playbook_guard_core::{Guard, RequestHead, SessionEntry, SessionStep, Step, Verdict};
use serde_json::{json, Value};

/// A NoETL session token as its login makes it: `md5(random()::text || clock_timestamp()::text)`.
const A: &str = "0cc175b9c0f1b6a831c399e269772661";
/// Another session (another user's, or the same user's second login).
const B: &str = "92eb5ffee6ae2fec3ad71c777531578f";

/// The shipped envoy/filter-config.yaml with the shipped policy: opaque sessions on, validation
/// through cluster `noetl` at /api/auth/session/validate.
fn shipped() -> Guard {
    shipped_with(json!({}))
}

fn shipped_with(patch: Value) -> Guard {
    let mut cfg: Value = serde_yaml_ng::from_str(testing::FILTER_CONFIG_YAML).unwrap();
    let obj = cfg.as_object_mut().unwrap();
    obj.insert("policy".into(), testing::policy());
    if let Value::Object(p) = patch {
        for (k, v) in p {
            obj.insert(k, v);
        }
    }
    guard_from(&cfg)
}

/// What NoETL's Rust server answers for a valid session (handlers/auth.rs validate_session_inner):
/// `s.expires_at::text` of a TIMESTAMPTZ, `user_id` an integer, roles a json_agg array.
fn valid_answer(user_id: u64, roles: &[&str], expires_at: &str) -> String {
    json!({"status": "ok", "valid": true,
           "user": {"user_id": user_id, "email": "ada@example.com", "display_name": "Ada", "roles": roles},
           "expires_at": expires_at})
    .to_string()
}

/// What a request led to: the verdict, and every token the filter asked the validation service
/// about (in order).
struct Outcome {
    verdict: Verdict,
    validated: Vec<String>,
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Runs a request to its verdict; a session step is answered by a callout whose 200 body is
/// `service_body`, at `now_ms`.
fn run(
    g: &Guard,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
    service_body: &str,
    now_ms: u64,
) -> Outcome {
    let mut validated = Vec::new();
    let mut step = g.on_request_headers(&RequestHead { method, path, headers }, now_ms / 1000);
    loop {
        step = match step {
            Step::Verdict(verdict) => return Outcome { verdict, validated },
            Step::ReadBody(p) => g.on_request_body(p, body.as_bytes()),
            Step::Session(p) => {
                validated.push(p.token().to_owned());
                let callout = g.callout(&p).expect("a validation service is configured");
                let sent: Value = serde_json::from_slice(&callout.body).unwrap();
                assert_eq!(sent["session_token"], json!(p.token()));
                match g.on_session(p, None, now_ms) {
                    SessionStep::Hit(_) => panic!("nothing is cached here"),
                    SessionStep::Miss(p) => match g.read_answer(Some(200), service_body.as_bytes(), now_ms) {
                        Ok(a) => g.on_answer(p, &a.entry),
                        Err(_) => g.on_callout_failure(p, None, now_ms).0,
                    },
                }
            }
            Step::AwaitKeys => panic!("no remote keys here"),
            Step::Resolve { .. } => panic!("no resolver here"),
        };
    }
}

fn status(o: &Outcome) -> (u32, String) {
    answer(&o.verdict)
}

fn identity(o: &Outcome) -> Vec<(String, String)> {
    match &o.verdict {
        Verdict::Allow { headers, .. } => headers.clone(),
        Verdict::Deny(d) => panic!("denied: {} {}", d.status, d.body),
    }
}

const NOW_MS: u64 = NOW * 1000; // 2027-01-15T08:00:00Z
const TOMORROW: &str = "2027-01-16 08:00:00.123456+00";

// ─────────────────────────────────────────────────────────────────────────────────────────────
// Findings
// ─────────────────────────────────────────────────────────────────────────────────────────────

/// FALSE REJECT. NoETL's GUI (gatewayAuth.ts `validateSession`) checks its stored session with
/// `POST /api/auth/validate` and the token ONLY in the JSON body (no Authorization, no
/// X-Session-Token, no cookie). The gateway serves that route publicly (main.rs public_routes)
/// and validates the body's token (auth/mod.rs validate_session). The shipped route
/// "session checks" is `authenticate: true`, which reads only headers/cookies: 401 `missing`,
/// and the GUI then treats the user as logged out.
#[test]
fn finding_gui_validate_with_the_token_in_the_body_is_refused() {
    let g = shipped();
    let body = json!({"session_token": A}).to_string();
    let o = run(&g, "POST", "/api/auth/validate", &h(&[("content-type", "application/json")]), &body, "{}", NOW_MS);
    assert_eq!(status(&o), (401, "missing_token".to_owned()));
    assert!(o.validated.is_empty(), "the body's token is never looked at");
}

/// FALSE REJECT. The GUI's `checkPlaybookAccess` (run before every executePlaybook) posts
/// `{session_token, playbook_path, permission_type}` to `/api/auth/check-access` with no header
/// token; the gateway route is public and checks the body's session. The filter: 401, so the
/// GUI reports "You do not have permission to execute this playbook" for every user.
#[test]
fn finding_gui_check_access_with_the_token_in_the_body_is_refused() {
    let g = shipped();
    let body = json!({"session_token": A, "playbook_path": "data/x", "permission_type": "execute"}).to_string();
    let o = run(&g, "POST", "/api/auth/check-access", &h(&[("content-type", "application/json")]), &body, "{}", NOW_MS);
    assert_eq!(status(&o), (401, "missing_token".to_owned()));
}

/// FALSE REJECT. The gateway's SSE endpoint takes the session ONLY from the query string
/// (sse.rs: `Query(params): Query<SseParams>` with `session_token: String`), and the GUI opens
/// `new EventSource(`${gateway}/events?session_token=...`)` (EventSource cannot set headers).
/// The shipped `/events` route is `authenticate: true` and reads no query token: 401.
#[test]
fn finding_gui_event_stream_with_the_token_in_the_query_is_refused() {
    let g = shipped();
    let path = format!("/events?session_token={A}&client_id=c1");
    let o = run(&g, "GET", &path, &[], "", &valid_answer(7, &["admin"], TOMORROW), NOW_MS);
    assert_eq!(status(&o), (401, "missing_token".to_owned()));
}

/// FALSE REJECT (deployment-dependent). The gateway's own calls to the NoETL server carry no
/// session header: `validate_session_via_api` posts `{session_token, credential}` to
/// /api/auth/session/validate, `check_access_via_api` to /api/auth/check-playbook-access,
/// `execute_playbook` (auth0_login / auth0_validate_session / check_playbook_access playbooks)
/// to /api/execute, all with body only (noetl_client.rs). If those go through a listener with
/// the shipped route table, each is 401, so the gateway cannot log anyone in or validate any
/// session.
#[test]
fn finding_the_gateways_own_auth_calls_carry_no_header_token() {
    let g = shipped();
    let ct = h(&[("content-type", "application/json")]);
    for (path, body) in [
        ("/api/auth/session/validate", json!({"session_token": A, "credential": "pg_auth"})),
        (
            "/api/auth/check-playbook-access",
            json!({"session_token": A, "playbook_path": "data/x", "action": "execute", "credential": "pg_auth"}),
        ),
        (
            "/api/execute",
            json!({"path": "api_integration/auth0/auth0_validate_session", "workload": {"session_token": A}, "resource_kind": "playbook"}),
        ),
    ] {
        let o = run(&g, "POST", path, &ct, &body.to_string(), "{}", NOW_MS);
        assert_eq!(status(&o), (401, "missing_token".to_owned()), "{path}");
    }
}

/// TWO TOKENS READ TWO WAYS. NoETL's Python server (check_access.py `extract_session_token`)
/// takes `Authorization: <token>` WITHOUT a scheme as the session token ("Some clients send the
/// raw token in Authorization without the Bearer prefix"), before X-Session-Token. The filter's
/// Authorization source needs the `Bearer ` scheme, so a raw token there is invisible to it:
/// with `Authorization: A` and `X-Session-Token: B` the filter validates and authorizes B (no
/// 400 `ambiguous_request`), while the Python server enforces (and attributes the run) with A.
/// Alone, `Authorization: A` is a 401 at the filter that the Python server accepts.
#[test]
fn finding_a_raw_authorization_token_is_invisible_to_the_ambiguity_check() {
    let g = shipped();
    let headers = h(&[("authorization", A), ("x-session-token", B)]);
    let o =
        run(&g, "GET", "/api/catalog/data/x/ui_schema", &headers, "", &valid_answer(7, &["admin"], TOMORROW), NOW_MS);
    assert_eq!(status(&o), (200, String::new()), "not refused as ambiguous");
    assert_eq!(o.validated, [B], "the filter decided on B; NoETL's Python server reads A");

    let o = run(&g, "GET", "/api/catalog/data/x/ui_schema", &h(&[("authorization", A)]), "", "{}", NOW_MS);
    assert_eq!(status(&o), (401, "missing_token".to_owned()), "raw token in Authorization: refused");
    // Compare: two different tokens the filter does see are refused, as documented.
    let o = run(
        &g,
        "GET",
        "/api/catalog/data/x/ui_schema",
        &h(&[("authorization", &format!("Bearer {A}")), ("x-session-token", B)]),
        "",
        "{}",
        NOW_MS,
    );
    assert_eq!(status(&o), (400, "ambiguous_request".to_owned()));
}

/// FALSE REJECT (sub-second). NoETL's validity test is `s.expires_at < NOW()` on a microsecond
/// TIMESTAMPTZ (auth.rs line 230; playbook and check_access.py alike use `expires_at > NOW()`),
/// so a session expiring at 08:00:00.900 is valid at 08:00:00.500. The filter parses
/// `expires_at` to whole seconds (fraction dropped, timestamp.rs) and treats `at <= now` as
/// expired: the answer is turned into an invalid session, 401 `invalid_session`, and cached as
/// such for `negative_ttl_secs`. Rounding is in the safe direction; the window is < 1 s.
#[test]
fn finding_fractional_expiry_is_truncated_so_the_last_second_is_refused() {
    let g = shipped();
    let headers = h(&[("x-session-token", A)]);
    let expires = "2027-01-15 08:00:00.900000+00"; // NOW + 0.9 s
    let o = run(
        &g,
        "GET",
        "/api/catalog/data/x/ui_schema",
        &headers,
        "",
        &valid_answer(7, &["viewer"], expires),
        NOW_MS + 500,
    );
    assert_eq!(status(&o), (401, "invalid_session".to_owned()));
}

/// UNCLEAR ANSWER. An invalid answer whose `expires_at` the filter cannot parse is a *failure*
/// (follows failure_mode: 503, or under serve_stale a stale VALID entry is served for up to
/// stale_grace_secs), not an invalid session. NoETL's gateway reads only `valid`
/// (`unwrap_or(false)`), so for it this answer is simply "invalid". NoETL's Rust server never
/// sends expires_at with valid:false, so this matters only for other validation endpoints.
#[test]
fn finding_an_invalid_answer_with_an_odd_expiry_is_a_failure_not_invalid() {
    let g = shipped();
    let err = g.read_answer(Some(200), br#"{"valid": false, "expires_at": "2027-01-15T08:00:00.000+0000"}"#, NOW_MS);
    assert!(err.is_err(), "{err:?}");
}

// ─────────────────────────────────────────────────────────────────────────────────────────────
// Checked and agreeing with NoETL
// ─────────────────────────────────────────────────────────────────────────────────────────────

/// The Rust server's valid answer: identity and roles from it, user_id an integer.
#[test]
fn ok_the_rust_servers_valid_answer_is_read() {
    let g = shipped();
    for headers in [
        h(&[("authorization", &format!("Bearer {A}"))]),
        h(&[("authorization", &format!("bearer {A}"))]),
        h(&[("x-session-token", A)]),
        h(&[("cookie", &format!("theme=dark; session_token={A}"))]),
        // The GUI's axios client sends both, with the same token.
        h(&[("authorization", &format!("Bearer {A}")), ("x-session-token", A)]),
    ] {
        let o = run(
            &g,
            "GET",
            "/api/catalog/data/x/ui_schema",
            &headers,
            "",
            &valid_answer(7, &["admin", "viewer"], TOMORROW),
            NOW_MS,
        );
        let id = identity(&o);
        assert!(id.contains(&("x-noetl-user-id".into(), "7".into())), "{id:?}");
        assert!(id.contains(&("x-noetl-user-roles".into(), "admin,viewer".into())), "{id:?}");
        assert_eq!(o.validated, [A]);
    }
}

/// The Rust server's invalid answer omits user, expires_at and error (skip_serializing_if):
/// `{"status":"ok","valid":false}` is an invalid session (401), not a malformed answer.
#[test]
fn ok_the_rust_servers_invalid_answer_is_an_invalid_session() {
    let g = shipped();
    let o = run(
        &g,
        "GET",
        "/api/catalog/data/x/ui_schema",
        &h(&[("x-session-token", A)]),
        "",
        r#"{"status":"ok","valid":false}"#,
        NOW_MS,
    );
    assert_eq!(status(&o), (401, "invalid_session".to_owned()));
    let o = run(
        &g,
        "GET",
        "/api/catalog/data/x/ui_schema",
        &h(&[("x-session-token", A)]),
        "",
        r#"{"status":"error","valid":false,"error":"pool timed out"}"#,
        NOW_MS,
    );
    assert_eq!(status(&o).0, 503, "a lookup error is a failure (failure_mode: deny), never a false grant");
}

/// Expiry text as PostgreSQL prints a TIMESTAMPTZ in any session TimeZone, the gateway's
/// (Python str(datetime)) form, and a numeric/string user_id; the gateway's own /api/auth/validate
/// answer shape (no `status`, an extra `message`) too.
#[test]
fn ok_expiry_formats_ids_and_extra_fields() {
    let g = shipped();
    let headers = h(&[("x-session-token", A)]);
    for expires in [
        "2027-01-16 08:00:00.123456+00",
        "2027-01-16 13:30:00.5+05:30",
        "2027-01-16 00:00:00-08",
        "2027-01-16 04:30:00-03:30",
        "2027-01-16 08:00:00+00:00",
        "2027-01-16T08:00:00.123456+00:00",
        "infinity",
    ] {
        let body = valid_answer(7, &["viewer"], expires);
        assert_eq!(
            status(&run(&g, "GET", "/api/catalog/data/x/ui_schema", &headers, "", &body, NOW_MS)).0,
            200,
            "{expires}"
        );
    }
    // An expiry already past (in another offset) is invalid.
    let past = valid_answer(7, &["viewer"], "2027-01-15 07:59:59-00");
    assert_eq!(
        status(&run(&g, "GET", "/api/catalog/data/x/ui_schema", &headers, "", &past, NOW_MS)).1,
        "invalid_session"
    );
    let gateway_shape = r#"{"valid": true, "user": {"user_id": "7", "email": "a@b.c", "display_name": "A", "roles": ["viewer"]},
                           "expires_at": "2027-01-16 08:00:00.123456+00:00", "message": "Session is valid"}"#;
    assert_eq!(status(&run(&g, "GET", "/api/catalog/data/x/ui_schema", &headers, "", gateway_shape, NOW_MS)).0, 200);
}

/// Login is public whatever stale token the client still sends (the GUI logs in again after a
/// 401), and the shape check keeps non-NoETL tokens from a callout.
#[test]
fn ok_login_is_public_and_junk_never_reaches_noetl() {
    let g = shipped();
    let body = json!({"auth0_token": "x.y.z", "auth0_domain": "t.auth0.com"}).to_string();
    let o = run(&g, "POST", "/api/auth/login", &h(&[("authorization", &format!("Bearer {A}"))]), &body, "{}", NOW_MS);
    assert_eq!(status(&o), (200, String::new()));
    assert!(o.validated.is_empty());
    // The GUI's dev token and a 64-hex token are refused without a callout.
    for junk in ["dev-skip-auth", &A.repeat(2)] {
        let o = run(&g, "GET", "/api/catalog/data/x/ui_schema", &h(&[("x-session-token", junk)]), "", "{}", NOW_MS);
        assert_eq!(status(&o), (401, "malformed".to_owned()), "{junk}");
        assert!(o.validated.is_empty());
    }
}

/// The cache never outlives the session's own expiry, nor ttl_secs; serve_stale stops at the
/// expiry too.
#[test]
fn ok_cached_sessions_end_at_their_expiry() {
    let g = shipped_with(
        json!({"validation": {"cluster": "noetl", "failure_mode": "serve_stale", "stale_grace_secs": 600}}),
    );
    let headers = h(&[("x-session-token", A)]);
    let entry = SessionEntry {
        valid: true,
        user_id: Some("7".into()),
        email: None,
        display_name: None,
        roles: vec!["viewer".into()],
        expires_at: Some(NOW + 60),
        fetched_at_ms: NOW_MS,
    };
    let at = |now_ms: u64| {
        let Step::Session(p) = g.on_request_headers(
            &RequestHead { method: "GET", path: "/api/catalog/data/x/ui_schema", headers: &headers },
            now_ms / 1000,
        ) else {
            panic!("a session step")
        };
        g.on_session(p, Some(&entry), now_ms)
    };
    assert!(matches!(at(NOW_MS + 59_999), SessionStep::Hit(_)));
    assert!(matches!(at(NOW_MS + 60_000), SessionStep::Miss(_)), "fresh no later than expires_at");
    let SessionStep::Miss(p) = at(NOW_MS + 60_000) else { panic!() };
    let (step, served) = g.on_callout_failure(p, Some(&entry), NOW_MS + 60_000);
    assert!(!served && matches!(step, Step::Verdict(Verdict::Deny(ref d)) if d.status == 503), "no stale past expiry");
    let long = SessionEntry { expires_at: Some(NOW + 86_400), ..entry.clone() };
    let Step::Session(p) = g.on_request_headers(
        &RequestHead { method: "GET", path: "/api/catalog/data/x/ui_schema", headers: &headers },
        NOW + 300,
    ) else {
        panic!()
    };
    assert!(matches!(g.on_session(p, Some(&long), NOW_MS + 300_000), SessionStep::Miss(_)), "ttl_secs 300");
}

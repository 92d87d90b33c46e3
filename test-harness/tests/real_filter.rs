//! The real playbook-guard filter under the harness: the behaviour Envoy would see.

mod common;

use common::{config, host, token, token_with, vm, SECRET_ENV};
use playbook_guard_test_harness::{Action, HarnessError, Host, HostOptions, LogLevel, Request, RequestOutcome};
use serde_json::json;

#[test]
fn an_allowed_request_continues_with_identity_headers() {
    let host = host();
    let mut vm = vm(&host);
    let t = token(&host, &["analyst"]);
    let exchange = vm.send_request(&Request::get("/api/catalog/data/sales").bearer(&t)).unwrap();
    let headers = exchange
        .outcome
        .forwarded_headers()
        .unwrap_or_else(|| panic!("not forwarded: {:?}\n{:#?}", exchange.outcome, vm.logs()));
    assert_eq!(headers.get("x-noetl-user-id").as_deref(), Some("42"));
    assert_eq!(headers.get("x-noetl-user-email").as_deref(), Some("ada@example.com"));
    assert_eq!(headers.get("x-noetl-user-roles").as_deref(), Some("analyst"));
    assert_eq!(host.metric("playbook_guard.allowed"), Some(1));
    assert_eq!(host.metric("playbook_guard.denied"), Some(0));
    vm.finish(exchange.context_id).unwrap();
}

#[test]
fn a_forbidden_playbook_gets_a_403_with_the_json_body() {
    let host = host();
    let mut vm = vm(&host);
    let t = token(&host, &["analyst"]);
    let exchange = vm.send_request(&Request::get("/api/catalog/system/secrets").bearer(&t)).unwrap();
    let response = exchange.outcome.local_response().unwrap();
    assert_eq!(response.status, 403);
    assert_eq!(response.header("content-type").as_deref(), Some("application/json"));
    let body = response.body_json().unwrap();
    assert_eq!(body["error"], "Permission denied");
    assert_eq!(body["playbook_path"], "system/secrets");
    assert_eq!(body["permission_type"], "view");
    assert_eq!(host.metric("playbook_guard.denied"), Some(1));
    assert_eq!(host.metric("playbook_guard.allowed"), Some(0));
    assert!(vm.logged(LogLevel::Info, "deny 403"), "{:#?}", vm.logs());
}

#[test]
fn a_missing_token_gets_401_with_www_authenticate() {
    let host = host();
    let mut vm = vm(&host);
    let exchange = vm.send_request(&Request::get("/api/catalog/data/sales")).unwrap();
    let response = exchange.outcome.local_response().unwrap();
    assert_eq!(response.status, 401);
    let challenge = response.header("www-authenticate").unwrap();
    assert!(challenge.starts_with("Bearer realm=\"playbook-guard\""), "{challenge}");
    assert_eq!(response.body_json().unwrap()["error"], "unauthenticated");
    assert_eq!(host.metric("playbook_guard.unauthenticated"), Some(1));
}

#[test]
fn an_expired_token_is_401_by_the_virtual_clock() {
    let host = host();
    let mut vm = vm(&host);
    let t = token(&host, &["analyst"]);
    // Past exp (300 s) plus the default 60 s skew.
    host.clock().advance(std::time::Duration::from_secs(361));
    let exchange = vm.send_request(&Request::get("/api/catalog/data/sales").bearer(&t)).unwrap();
    assert_eq!(exchange.outcome.status(), Some(401));
}

#[test]
fn spoofed_identity_headers_are_removed() {
    let host = host();
    let mut vm = vm(&host);
    // A public route: no identity is added, and the client's claim to one must be gone.
    let exchange = vm
        .send_request(
            &Request::get("/api/auth/login").header("x-noetl-user-id", "1").header("X-Noetl-User-Roles", "admin"),
        )
        .unwrap();
    let headers = exchange.outcome.forwarded_headers().unwrap();
    assert_eq!(headers.get("x-noetl-user-id"), None);
    assert_eq!(headers.get("x-noetl-user-roles"), None);

    // An authenticated route: the filter's value replaces the client's.
    let t = token(&host, &["viewer"]);
    let exchange = vm.send_request(&Request::get("/api/catalog/x").bearer(&t).header("x-noetl-user-id", "1")).unwrap();
    let headers = exchange.outcome.forwarded_headers().unwrap();
    assert_eq!(headers.get_all("x-noetl-user-id"), vec!["42"]);
}

#[test]
fn the_identity_header_family_is_removed_in_every_spelling_on_every_route() {
    let host = host();
    let mut vm = vm(&host);
    let spoof = |r: Request| {
        r.header("x_noetl_user_roles", "admin")
            .header("x-noetl-user-role", "admin")
            .header("X-Noetl-User-Is-Admin", "true")
            .header("X_NOETL_USER_ID", "1")
    };
    let preflight = Request::new("OPTIONS", "/api/run/playbook")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST");
    let t = token(&host, &["viewer"]);
    for request in
        [spoof(Request::get("/api/auth/login")), spoof(preflight), spoof(Request::get("/api/catalog/x").bearer(&t))]
    {
        let exchange = vm.send_request(&request).unwrap();
        let headers = exchange.outcome.forwarded_headers().unwrap_or_else(|| panic!("{:?}", exchange.outcome));
        for name in ["x_noetl_user_roles", "x-noetl-user-role", "x-noetl-user-is-admin", "x_noetl_user_id"] {
            assert_eq!(headers.get(name), None, "{name} reached the upstream");
        }
        assert!(headers.get_all("x-noetl-user-roles").iter().all(|v| v == "viewer"));
    }
}

#[test]
fn a_body_route_forwards_the_head_and_decides_on_the_body() {
    // The opt-in `hold_headers_for_body: false`: Envoy without `allow_on_headers_stop_iteration`
    // would never show a paused head its body, so the head goes upstream with the verified
    // identity and only the body waits for the decision.
    let host = common::host_without_stop_iteration();
    let mut vm = host.configured_vm(&config(json!({"hold_headers_for_body": false}))).unwrap();
    assert!(vm.logged(LogLevel::Warn, "hold_headers_for_body is false"), "{:#?}", vm.logs());
    let t = token(&host, &["analyst"]);
    let headers = Request::new("POST", "/api/run/playbook").bearer(&t).headers;

    let id = vm.create_http_context().unwrap();
    assert_eq!(vm.on_request_headers(id, &headers, false).unwrap(), Action::Continue);
    assert_eq!(vm.stream(id).unwrap().request_headers().get("x-noetl-user-id").as_deref(), Some("42"));
    assert_eq!(vm.on_request_body(id, br#"{"path": "data/"#, false).unwrap(), Action::Pause);
    assert_eq!(vm.outcome(id), Some(RequestOutcome::Paused));
    assert_eq!(vm.on_request_body(id, br#"etl"}"#, true).unwrap(), Action::Continue);
    match vm.outcome(id).unwrap() {
        RequestOutcome::Forwarded { headers, body } => {
            assert_eq!(headers.get("x-noetl-user-id").as_deref(), Some("42"));
            assert_eq!(body, br#"{"path": "data/etl"}"#);
        }
        other => panic!("{other:?}"),
    }

    // A playbook the analyst may not run, body in 5-byte chunks: decided on the body, 403.
    let exchange = vm
        .send_request(&Request::post("/api/run/playbook", r#"{"path": "system/wipe"}"#).bearer(&t).chunked(5))
        .unwrap();
    let response = exchange.outcome.local_response().unwrap();
    assert_eq!(response.status, 403);
    assert_eq!(response.body_json().unwrap()["playbook_path"], "system/wipe");
    assert_eq!(host.metric("playbook_guard.allowed"), Some(1));
    assert_eq!(host.metric("playbook_guard.denied"), Some(1));
}

#[test]
fn the_head_of_a_body_route_is_held_by_default() {
    let host = host();
    let mut vm = vm(&host);
    assert!(!vm.logged(LogLevel::Warn, "hold_headers_for_body"), "{:#?}", vm.logs());
    let t = token(&host, &["analyst"]);
    let headers = Request::new("POST", "/api/run/playbook").bearer(&t).headers;
    let id = vm.create_http_context().unwrap();
    assert_eq!(vm.on_request_headers(id, &headers, false).unwrap(), Action::Pause);
    assert_eq!(vm.on_request_body(id, br#"{"path": "data/etl"}"#, true).unwrap(), Action::Continue);
    let headers = vm.outcome(id).unwrap().forwarded_headers().cloned().unwrap();
    assert_eq!(headers.get("x-noetl-user-roles").as_deref(), Some("analyst"));
}

#[test]
fn without_allow_on_headers_stop_iteration_a_paused_head_never_sees_its_body() {
    // The Envoy hazard `hold_headers_for_body` documents, reproduced: StopAllIteration holds the
    // body from the filter, so the request stays paused (and never reaches the upstream).
    let host = common::host_without_stop_iteration();
    let mut vm = vm(&host);
    let t = token(&host, &["analyst"]);
    let exchange = vm.send_request(&Request::post("/api/run/playbook", r#"{"path": "data/etl"}"#).bearer(&t)).unwrap();
    assert_eq!(exchange.outcome, RequestOutcome::Paused);
    assert!(vm.stream(exchange.context_id).unwrap().request_held_from_filter());
}

#[test]
fn trailers_end_a_buffered_body() {
    let host = host();
    let mut vm = vm(&host);
    let t = token(&host, &["analyst"]);
    let exchange = vm
        .send_request(
            &Request::post("/api/run/playbook", r#"{"path": "data/etl"}"#).bearer(&t).trailer("x-checksum", "1"),
        )
        .unwrap();
    assert!(exchange.outcome.forwarded_headers().is_some(), "{:?}", exchange.outcome);
}

#[test]
fn a_bad_configuration_is_rejected_and_logged() {
    let host = host();
    let mut vm = host.start_vm().unwrap();
    let accepted = vm.configure(&config(json!({"mode": "loud"}))).unwrap();
    assert!(!accepted);
    assert!(vm.logged(LogLevel::Error, "configuration rejected"), "{:#?}", vm.logs());
    // The filter's build quotes the bad value and the text around it (the CLI names the path).
    assert!(vm.logged(LogLevel::Error, r#"unknown variant `loud`"#), "{:#?}", vm.logs());
    assert!(vm.logged(LogLevel::Error, r#"near `"#), "{:#?}", vm.logs());

    // Host::configured_vm turns the refusal into an error that carries the log.
    let err = host.configured_vm(b"not json").unwrap_err();
    assert!(matches!(&err, HarnessError::ConfigurationRejected { logs } if !logs.is_empty()), "{err}");
}

#[test]
fn the_secret_comes_from_the_host_environment() {
    // Without the variable the provider has no key: the configuration is refused.
    let bare = Host::new(&common::filter());
    let err = bare.configured_vm(&config(json!({}))).unwrap_err();
    assert!(err.to_string().contains(SECRET_ENV), "{err}");

    // A secret shorter than 32 bytes is refused too.
    let short = Host::with_options(&common::filter(), HostOptions::default().env(SECRET_ENV, "too-short"));
    assert!(short.configured_vm(&config(json!({}))).is_err());

    // With another secret in the environment, our tokens no longer verify.
    let other = Host::with_options(
        &common::filter(),
        HostOptions::default().env(SECRET_ENV, "ffffffffffffffffffffffffffffffff"),
    );
    let mut vm = vm(&other);
    let t = token(&other, &["admin"]);
    let exchange = vm.send_request(&Request::get("/api/catalog/x").bearer(&t)).unwrap();
    assert_eq!(exchange.outcome.status(), Some(401));
}

#[test]
fn workers_share_stats() {
    let host = host();
    let mut workers = host.workers(2, &config(json!({}))).unwrap();
    let t = token(&host, &["viewer"]);
    for vm in &mut workers {
        let exchange = vm.send_request(&Request::get("/api/catalog/x").bearer(&t)).unwrap();
        assert_eq!(exchange.outcome.status(), Some(200));
    }
    assert_eq!(host.metric("playbook_guard.allowed"), Some(2));
    assert_ne!(workers[0].index(), workers[1].index());
}

#[test]
fn audit_mode_lets_a_denied_request_through() {
    let host = host();
    let mut vm = host.configured_vm(&config(json!({"mode": "audit"}))).unwrap();
    let t = token_with(&host, &["viewer"], json!({}));
    let exchange = vm.send_request(&Request::post("/api/run/playbook", r#"{"path": "data/x"}"#).bearer(&t)).unwrap();
    assert!(exchange.outcome.forwarded_headers().is_some());
    assert_eq!(host.metric("playbook_guard.audit_would_deny"), Some(1));
}

#[test]
fn a_request_costs_a_bounded_number_of_instructions() {
    let host = host();
    let mut vm = vm(&host);
    let t = token(&host, &["analyst"]);
    let request = Request::get("/api/catalog/data/sales").bearer(&t);
    let (exchange, fuel) = vm.fuel_used(|vm| vm.send_request(&request)).unwrap();
    assert_eq!(exchange.outcome.status(), Some(200));
    // Measured around 10^5..10^6 for an HS256 request; the bound catches a pathological regression.
    assert!(fuel > 1_000 && fuel < 100_000_000, "fuel {fuel}");
    eprintln!("instructions per allowed HS256 request: {fuel}");
}

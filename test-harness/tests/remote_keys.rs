//! Remote JWK Sets (SPEC section 3) through the real filter: a request whose issuer's keys are
//! on their way waits for them, as `jwt_authn` waits for its JWKS, instead of being refused.

// Test helpers outside #[test] functions: failing loudly is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{config, filter, SECRET, SECRET_ENV};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use playbook_guard_test_harness::{Host, HostOptions, HttpCallResponse, LogLevel, Request, RequestOutcome, Vm};
use serde_json::{json, Value};

const RSA: &str = include_str!("../../filter/core/testdata/rsa.pem");
const RSA_OTHER: &str = include_str!("../../filter/core/testdata/rsa-other.pem");

fn idp_config(patch: Value) -> Vec<u8> {
    let mut all = json!({"providers": [{
        "name": "idp", "issuer": "https://idp.example/", "audiences": ["noetl"], "algorithms": ["RS256"],
        "roles_claim": "roles",
        "remote_jwks": {"cluster": "idp", "uri": "https://idp.example/keys.json", "timeout_ms": 1000}}]});
    for (k, v) in patch.as_object().into_iter().flatten() {
        all[k] = v.clone();
    }
    config(all)
}

fn host_with(options: HostOptions) -> Host {
    Host::with_options(&filter(), options.env(SECRET_ENV, SECRET))
}

fn public_jwk(pem: &str, kid: &str) -> Value {
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

fn keys(set: &[(&str, &str)]) -> HttpCallResponse {
    HttpCallResponse::json(200, &json!({"keys": set.iter().map(|(pem, kid)| public_jwk(pem, kid)).collect::<Vec<_>>()}))
}

fn token(host: &Host, pem: &str, kid: &str) -> String {
    let now = host.clock().now_secs();
    let claims = json!({"iss": "https://idp.example/", "aud": "noetl", "sub": "idp|1", "roles": ["analyst"],
                        "iat": now, "exp": now + 3600});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    encode(&header, &claims, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap()
}

fn catalog(token: &str) -> Request {
    Request::get("/api/catalog/data/x").bearer(token)
}

/// The one JWK Set fetch the worker has sent.
fn fetch(vm: &Vm) -> u32 {
    let calls = vm.http_calls();
    assert_eq!(calls.len(), 1, "one fetch: {calls:?}");
    let call = &calls[0];
    assert_eq!(call.upstream, "idp");
    assert_eq!(call.headers.get(":path").as_deref(), Some("/keys.json"));
    assert_eq!(call.headers.get(":authority").as_deref(), Some("idp.example"));
    call.token
}

fn reason(outcome: &RequestOutcome) -> String {
    let response = outcome.local_response().unwrap_or_else(|| panic!("a local answer, not {outcome:?}"));
    assert_eq!(response.status, 401);
    response.body_json().unwrap()["reason"].as_str().unwrap().to_owned()
}

#[test]
fn requests_before_the_first_fetch_is_answered_wait_for_it() {
    let host = host_with(HostOptions::default());
    let mut vm = host.configured_vm(&idp_config(json!({}))).unwrap();
    let first_fetch = fetch(&vm); // sent by the root context when the plugin was configured

    let t = token(&host, RSA, "k1");
    let mut waiting: Vec<u32> = (0..4).map(|_| vm.send_request(&catalog(&t)).unwrap()).map(|e| e.context_id).collect();
    for ctx in &waiting {
        assert_eq!(vm.outcome(*ctx), Some(RequestOutcome::Paused), "no keys yet: wait, not 401");
    }
    assert_eq!(vm.http_calls().len(), 1, "they wait for the fetch on its way, not fetch again");
    let gone = waiting.pop().unwrap();
    vm.finish(gone).unwrap(); // its client went away while it waited

    vm.respond_http_call(first_fetch, keys(&[(RSA, "k1")])).unwrap();
    for ctx in waiting {
        let outcome = vm.outcome(ctx).unwrap();
        let headers = outcome.forwarded_headers().unwrap_or_else(|| panic!("{outcome:?}"));
        assert_eq!(headers.get("x-noetl-user-id").as_deref(), Some("idp|1"));
    }
    assert_eq!(host.metric("playbook_guard.allowed"), Some(3));
    assert_eq!(host.metric("playbook_guard.jwks_waits"), Some(4));
    assert_eq!(host.metric("playbook_guard.jwks_fetch_success"), Some(1));
}

#[test]
fn a_key_rotated_in_is_fetched_while_its_first_request_waits() {
    let host = host_with(HostOptions::default());
    let mut vm = host.configured_vm(&idp_config(json!({}))).unwrap();
    let first_fetch = fetch(&vm);
    vm.respond_http_call(first_fetch, keys(&[(RSA, "k1")])).unwrap();
    assert_eq!(vm.send_request(&catalog(&token(&host, RSA, "k1"))).unwrap().outcome.status(), Some(200));

    // The issuer rotates in k2; past the refetch limit (10 s), its first token waits for a fetch
    // that the root context sends at its next tick.
    host.clock().advance(Duration::from_secs(11));
    let rotated = token(&host, RSA_OTHER, "k2");
    let waiter = vm.send_request(&catalog(&rotated)).unwrap();
    assert_eq!(waiter.outcome, RequestOutcome::Paused);
    assert_eq!(vm.tick_period(), Some(Duration::from_millis(1)), "the fetch goes at once");
    host.clock().advance(Duration::from_millis(1));
    vm.run_due_ticks().unwrap();
    vm.respond_http_call(fetch(&vm), keys(&[(RSA, "k1"), (RSA_OTHER, "k2")])).unwrap();
    assert_eq!(vm.outcome(waiter.context_id).unwrap().status(), Some(200));

    // Right after a fetch, a kid it did not bring is answered at once: a flood of forged kids
    // is not a flood of fetches, nor of held requests.
    let forged = token(&host, RSA_OTHER, "k3");
    assert_eq!(reason(&vm.send_request(&catalog(&forged)).unwrap().outcome), "unknown_key");
    assert!(vm.http_calls().is_empty());
    assert_eq!(vm.tick_period(), Some(Duration::from_secs(1)), "back to the slow JWKS tick");
}

#[test]
fn a_fetch_that_fails_or_never_answers_ends_the_wait_with_a_401() {
    let host = host_with(HostOptions::default());
    let t = token(&host, RSA, "k1");

    // Failed (a reset, a timeout): requests waiting for it are answered, and later ones at once.
    let mut vm = host.configured_vm(&idp_config(json!({}))).unwrap();
    let waiter = vm.send_request(&catalog(&t)).unwrap();
    vm.fail_http_call(fetch(&vm)).unwrap();
    assert_eq!(reason(&vm.outcome(waiter.context_id).unwrap()), "keys_unavailable");
    assert_eq!(reason(&vm.send_request(&catalog(&t)).unwrap().outcome), "keys_unavailable");

    // A non-2xx answer is a failed fetch too.
    let mut vm = host.configured_vm(&idp_config(json!({}))).unwrap();
    let waiter = vm.send_request(&catalog(&t)).unwrap();
    vm.respond_http_call(fetch(&vm), HttpCallResponse::new(503, "busy")).unwrap();
    assert_eq!(reason(&vm.outcome(waiter.context_id).unwrap()), "keys_unavailable");

    // No answer at all (the host lost it): the wait ends after the fetch timeout and a grace.
    let mut vm = host.configured_vm(&idp_config(json!({}))).unwrap();
    let waiter = vm.send_request(&catalog(&t)).unwrap();
    host.clock().advance(Duration::from_millis(2900));
    vm.run_due_ticks().unwrap();
    assert_eq!(vm.outcome(waiter.context_id), Some(RequestOutcome::Paused), "still within timeout + grace");
    host.clock().advance(Duration::from_millis(200));
    vm.run_due_ticks().unwrap();
    assert_eq!(reason(&vm.outcome(waiter.context_id).unwrap()), "keys_unavailable");
    assert_eq!(host.metric("playbook_guard.jwks_fetch_failed"), Some(2), "the reset and the 503");
    assert_eq!(host.metric("playbook_guard.jwks_fetch_success"), Some(0));
}

#[test]
fn a_body_route_waits_for_the_keys_then_decides_on_its_body() {
    for held in [false, true] {
        let host = host_with(HostOptions::default().allow_on_headers_stop_iteration(held));
        let mut vm = host.configured_vm(&idp_config(json!({"hold_headers_for_body": held}))).unwrap();
        let first_fetch = fetch(&vm);
        let t = token(&host, RSA, "k1");
        let allowed =
            vm.send_request(&Request::post("/api/run/playbook", r#"{"path": "data/etl"}"#).bearer(&t)).unwrap();
        let denied =
            vm.send_request(&Request::post("/api/run/playbook", r#"{"path": "system/wipe"}"#).bearer(&t)).unwrap();
        assert_eq!(allowed.outcome, RequestOutcome::Paused);

        vm.respond_http_call(first_fetch, keys(&[(RSA, "k1")])).unwrap();
        match vm.outcome(allowed.context_id).unwrap() {
            RequestOutcome::Forwarded { headers, body } => {
                assert_eq!(headers.get("x-noetl-user-roles").as_deref(), Some("analyst"), "held: {held}");
                assert_eq!(body, br#"{"path": "data/etl"}"#);
            }
            other => panic!("held: {held}: {other:?}"),
        }
        let response = vm.outcome(denied.context_id).unwrap();
        assert_eq!(response.status(), Some(403), "held: {held}");
    }
}

#[test]
fn a_fetch_sent_under_the_previous_configuration_is_not_loaded_into_the_new_one() {
    let provider = |name: &str, host: &str| {
        json!({"name": name, "issuer": format!("https://{host}/"), "audiences": ["noetl"], "algorithms": ["RS256"],
               "roles_claim": "roles",
               "remote_jwks": {"cluster": name, "uri": format!("https://{host}/keys.json"), "timeout_ms": 1000}})
    };
    let (idp, other) = (provider("idp", "idp.example"), provider("other", "other.example"));
    let host = host_with(HostOptions::default());
    let mut vm = host.configured_vm(&config(json!({"providers": [idp.clone(), other.clone()]}))).unwrap();
    let old_idp_fetch = vm.http_calls().iter().find(|c| c.upstream == "idp").unwrap().token;

    // The providers are reordered: index 0 is now `other`.
    assert!(vm.configure(&config(json!({"providers": [other, idp]}))).unwrap());
    // The answer to idp's fetch from before lands now. Matched by index it would become
    // `other`'s keys, and idp's key would verify tokens that claim to be `other`'s.
    vm.respond_http_call(old_idp_fetch, keys(&[(RSA, "a")])).unwrap();
    let now = host.clock().now_secs();
    let claims = json!({"iss": "https://other.example/", "aud": "noetl", "sub": "x", "roles": ["admin"],
                        "iat": now, "exp": now + 3600});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("a".into());
    let forged = encode(&header, &claims, &EncodingKey::from_rsa_pem(RSA.as_bytes()).unwrap()).unwrap();
    let exchange = vm.send_request(&catalog(&forged)).unwrap();
    let verified = exchange.outcome.forwarded_headers().is_some();
    assert!(!verified, "idp's key verified a token that claims to be `other`'s");
}

/// The issuer of [`token`], its keys found through OIDC discovery.
fn discovery_config(discovery: Value) -> Vec<u8> {
    config(json!({"providers": [{
        "name": "idp", "issuer": "https://idp.example/", "audiences": ["noetl"], "algorithms": ["RS256"],
        "roles_claim": "roles", "discovery": discovery}]}))
}

fn discovery_document(issuer: &str) -> HttpCallResponse {
    HttpCallResponse::json(
        200,
        &json!({"issuer": issuer, "jwks_uri": "https://keys.idp.example/v1/certs",
                "authorization_endpoint": "https://idp.example/authorize"}),
    )
}

/// The one fetch the worker has sent, checked to be the one expected; its token and context.
fn the_fetch(vm: &Vm, upstream: &str, authority: &str, path: &str) -> (u32, u32) {
    let calls = vm.http_calls();
    assert_eq!(calls.len(), 1, "one fetch: {calls:?}");
    let call = &calls[0];
    assert_eq!(call.upstream, upstream);
    assert_eq!(call.headers.get(":method").as_deref(), Some("GET"));
    assert_eq!(call.headers.get(":authority").as_deref(), Some(authority));
    assert_eq!(call.headers.get(":path").as_deref(), Some(path));
    (call.token, call.context_id)
}

fn document_fetch(vm: &Vm) -> (u32, u32) {
    the_fetch(vm, "idp", "idp.example", "/.well-known/openid-configuration")
}

#[test]
fn discovery_at_configuration_then_the_set_it_names_then_a_token_verified() {
    let host = host_with(HostOptions::default());
    let mut vm = host.configured_vm(&discovery_config(json!({"cluster": "idp", "jwks_cluster": "idp_keys"}))).unwrap();
    let (document, root) = document_fetch(&vm);
    vm.respond_http_call(document, discovery_document("https://idp.example/")).unwrap();
    let (set, from) = the_fetch(&vm, "idp_keys", "keys.idp.example", "/v1/certs");
    assert_eq!(from, root, "the set is fetched from the root context too");
    vm.respond_http_call(set, keys(&[(RSA, "k1")])).unwrap();

    let outcome = vm.send_request(&catalog(&token(&host, RSA, "k1"))).unwrap().outcome;
    assert_eq!(outcome.forwarded_headers().unwrap().get("x-noetl-user-id").as_deref(), Some("idp|1"));
    assert_eq!(host.metric("playbook_guard.discovery_fetch_success"), Some(1));
    assert_eq!(host.metric("playbook_guard.jwks_fetch_success"), Some(1));
    assert_eq!(host.metric("playbook_guard.jwks_waits"), Some(0), "the keys were there");
}

#[test]
fn a_discovery_document_for_another_issuer_is_refused_and_its_keys_never_fetched() {
    let host = host_with(HostOptions::default());
    let mut vm = host.configured_vm(&discovery_config(json!({"cluster": "idp"}))).unwrap();
    let t = token(&host, RSA, "k1");
    let waiter = vm.send_request(&catalog(&t)).unwrap();
    assert_eq!(waiter.outcome, RequestOutcome::Paused);

    let (document, _) = document_fetch(&vm);
    // Section 4.3: exactly equal; without its trailing slash it is another issuer.
    vm.respond_http_call(document, discovery_document("https://idp.example")).unwrap();
    assert!(vm.http_calls().is_empty(), "no set fetched from a refused document");
    assert_eq!(reason(&vm.outcome(waiter.context_id).unwrap()), "keys_unavailable");
    assert_eq!(reason(&vm.send_request(&catalog(&t)).unwrap().outcome), "keys_unavailable");
    assert_eq!(host.metric("playbook_guard.discovery_fetch_refused"), Some(1));
    assert_eq!(host.metric("playbook_guard.jwks_fetch_failed"), Some(1));
    assert_eq!(host.metric("playbook_guard.discovery_fetch_success"), Some(0));
    let both = r#"its issuer "https://idp.example" is not the configured issuer "https://idp.example/""#;
    assert!(vm.logged(LogLevel::Warn, both), "logged with both values: {:?}", vm.logs());
}

#[test]
fn requests_before_the_document_wait_for_it_and_for_the_set_after_it() {
    let host = host_with(HostOptions::default());
    let mut vm = host.configured_vm(&discovery_config(json!({"cluster": "idp", "timeout_ms": 1000}))).unwrap();
    let t = token(&host, RSA, "k1");
    let waiting: Vec<u32> = (0..3).map(|_| vm.send_request(&catalog(&t)).unwrap().context_id).collect();
    let (document, _) = document_fetch(&vm);
    vm.respond_http_call(document, discovery_document("https://idp.example/")).unwrap();
    for ctx in &waiting {
        assert_eq!(vm.outcome(*ctx), Some(RequestOutcome::Paused), "the set is still to come");
    }
    let (set, _) = the_fetch(&vm, "idp", "keys.idp.example", "/v1/certs");
    vm.respond_http_call(set, keys(&[(RSA, "k1")])).unwrap();
    for ctx in waiting {
        assert_eq!(vm.outcome(ctx).unwrap().status(), Some(200));
    }
    assert_eq!(host.metric("playbook_guard.jwks_waits"), Some(3));

    // The wait spans both fetches: 1 s for the document, 1 s for the set, 2 s of grace.
    let mut vm = host.configured_vm(&discovery_config(json!({"cluster": "idp", "timeout_ms": 1000}))).unwrap();
    let waiter = vm.send_request(&catalog(&t)).unwrap().context_id;
    let (document, _) = document_fetch(&vm);
    host.clock().advance(Duration::from_millis(900));
    vm.respond_http_call(document, discovery_document("https://idp.example/")).unwrap();
    host.clock().advance(Duration::from_millis(2900));
    vm.run_due_ticks().unwrap();
    assert_eq!(vm.outcome(waiter), Some(RequestOutcome::Paused), "within both timeouts and the grace");
    host.clock().advance(Duration::from_millis(300));
    vm.run_due_ticks().unwrap();
    assert_eq!(reason(&vm.outcome(waiter).unwrap()), "keys_unavailable", "the set's answer never came");
}

#[test]
fn a_discovery_that_fails_is_answered_as_a_failed_jwks_fetch_and_counted() {
    let host = host_with(HostOptions::default());
    let t = token(&host, RSA, "k1");
    let mut vm = host.configured_vm(&discovery_config(json!({"cluster": "idp"}))).unwrap();
    let waiter = vm.send_request(&catalog(&t)).unwrap();
    vm.respond_http_call(document_fetch(&vm).0, HttpCallResponse::new(503, "busy")).unwrap();
    assert!(vm.http_calls().is_empty());
    assert_eq!(reason(&vm.outcome(waiter.context_id).unwrap()), "keys_unavailable");
    assert_eq!(host.metric("playbook_guard.discovery_fetch_failed"), Some(1));
    assert_eq!(host.metric("playbook_guard.jwks_fetch_failed"), Some(1));
}

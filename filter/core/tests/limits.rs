//! The limits of the readers a client reaches hold alike natively, under wasmtime
//! (wasm32-wasip1, `make wasm-unit`) and in V8 (wasm32-unknown-unknown, `make v8-unit`), because
//! each run has a stack of its own size: 2 MiB for a native test thread, 1 MiB of linear memory
//! for wasm, under whatever the engine allows its own frames. A depth only the native stack
//! could afford would pass here and kill the worker's VM in Envoy. So the deepest input each
//! reader takes is decided, and one level more is refused as a bad request, in every run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use playbook_guard_core::testing::{answer, bearer, claims, guard, send, token, token_with, NOW, SECRET};
use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// The deepest nesting serde_json reads (its recursion limit, 128, refuses the 128th level; the
/// document's own object or array counts as one).
const JSON_DEPTH: usize = 127;

/// `depth` arrays, each inside the last.
fn nested(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

fn run_body(body: &str) -> (u32, String) {
    let headers = bearer(&token(&["analyst"], NOW));
    answer(&send(&guard(), "POST", "/api/run/playbook", &headers, body))
}

#[test]
fn a_json_body_is_read_to_serde_jsons_depth_and_no_deeper() {
    // The body object is one level, "pad" the rest.
    let at_limit = format!(r#"{{"path": "data/x", "pad": {}}}"#, nested(JSON_DEPTH - 1));
    assert_eq!(run_body(&at_limit), (200, String::new()));
    let over = format!(r#"{{"path": "data/x", "pad": {}}}"#, nested(JSON_DEPTH));
    assert_eq!(run_body(&over).0, 400);
    // Far deeper than any stack: refused by the limit, not by a crash.
    let deep = format!(r#"{{"path": "data/x", "pad": {}}}"#, nested(30_000));
    assert_eq!(run_body(&deep).0, 400);
}

#[test]
fn a_graphql_body_is_read_to_the_same_depths() {
    let headers = bearer(&token(&["analyst"], NOW));
    let query = "mutation($name: String!) { executePlaybook(name: $name) { id } }";
    let graphql = |pad: &str| {
        let body = format!(r#"{{"query": "{query}", "variables": {{"name": "data/x", "pad": {pad}}}}}"#);
        answer(&send(&guard(), "POST", "/graphql", &headers, &body))
    };
    assert_eq!(graphql(&nested(JSON_DEPTH - 2)), (200, String::new()));
    assert_eq!(graphql(&nested(JSON_DEPTH - 1)).0, 400);
    assert_eq!(graphql(&nested(30_000)).0, 400);
    // Selection sets are scanned, not recursed into: any depth is read the same.
    let deep_selection = format!(
        r#"{{"query": "mutation {{ executePlaybook(name: \"data/x\") {}id{} }}"}}"#,
        "{ a ".repeat(10_000),
        " }".repeat(10_000)
    );
    assert_eq!(answer(&send(&guard(), "POST", "/graphql", &headers, &deep_selection)).0, 200);
}

#[test]
fn token_claims_are_read_to_serde_jsons_depth_and_no_deeper() {
    let decide = |token: &str| answer(&send(&guard(), "GET", "/api/catalog/data/x", &bearer(token), ""));
    let pad: Value = serde_json::from_str(&nested(JSON_DEPTH - 1)).unwrap();
    // The claims object is one level, "pad" the rest.
    assert_eq!(decide(&token_with(&["analyst"], NOW, json!({"pad": pad}))), (200, String::new()));
    // serde_json cannot build one level more; the claims are written out by hand.
    for depth in [JSON_DEPTH, 60_000] {
        let mut claims = claims(&["analyst"], NOW).to_string();
        claims.insert_str(1, &format!(r#""pad":{},"#, nested(depth)));
        assert_eq!(decide(&sign_text(&claims)).0, 401, "{depth}");
    }
}

/// An HS256 token over `claims` exactly as written.
fn sign_text(claims: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#), URL_SAFE_NO_PAD.encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
    format!("{signing_input}.{signature}")
}

#[test]
fn big_tokens_are_decided_alike() {
    let decide = |token: &str| answer(&send(&guard(), "GET", "/api/catalog/data/x", &bearer(token), ""));
    // Envoy's own header limit (60 KiB by default, 96 KiB at most) bounds what reaches the
    // filter; the core decides past it all the same, in every run.
    for size in [60 * 1024, 96 * 1024, 1024 * 1024] {
        let big = token_with(&["analyst"], NOW, json!({"pad": "p".repeat(size)}));
        assert_eq!(decide(&big), (200, String::new()), "{size}");
        assert_eq!(decide(&format!("{big}x")), (401, "bad_signature".to_owned()), "{size}");
    }
}

//! The NoETL gateway's pass-throughs: the request NoETL receives when the gateway forwards one.
//!
//! The gateway (noetl/gateway) has two: the REST route `/noetl/{*path}`, which sends
//! `{base}/api/{path}` plus the query string, and the GraphQL field `proxyRequest(input:
//! {method, endpoint, body})`, which sends `{base}{endpoint}` with `body` as JSON. A forwarded
//! request is decided as the NoETL route it reaches, so the filter must know exactly which
//! path, method and body NoETL gets. Between the client and NoETL the path is read by axum
//! (which percent-decodes `{*path}` once), by the `url` crate behind reqwest (which resolves
//! `.`, `..`, `%2e` segments, reads `\` as `/`, drops tabs and newlines, and cuts a decoded
//! `?` or `#` off the path) and by Starlette (which decodes once more). Rather than replay
//! three readers, a forwarded path must be one that all of them leave alone: no `%`, no dot or
//! empty segment, no backslash, `#`, whitespace or control character. Anything else is
//! [`ForwardError`], answered 400 `ambiguous_request`.

use serde_json::Value;

/// Why a forwarded request cannot be read one way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// A method the gateway does not forward, or normalises in a way the filter does not
    /// replay (`to_uppercase` of a non-ASCII name).
    #[error("the gateway does not forward method {0:?}")]
    Method(String),
    /// A path the gateway or NoETL could read another way.
    #[error("forwarded path {path:?}: {why}")]
    Path {
        /// The path as forwarded.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A `proxyRequest` input that is not `{method, endpoint, body}`.
    #[error("proxyRequest input: {0}")]
    Input(&'static str),
}

/// What a forwarded request carries to NoETL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardBody {
    /// The client's own body, read later (REST pass-through, methods that keep it).
    Passed,
    /// These bytes (empty: no body, the gateway drops it or none was given).
    Given(Vec<u8>),
}

/// A request as NoETL receives it from the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The method NoETL sees.
    pub method: String,
    /// The path NoETL sees (no query string), checked by [`check_path`].
    pub path: String,
    /// The body NoETL sees.
    pub body: ForwardBody,
}

/// The REST pass-through: `method raw_path` on the gateway, whose route strips `strip_prefix`
/// from the path and puts `prefix` before the rest.
///
/// axum serves `HEAD` with the `GET` handler, so it is forwarded as `GET`; `GET` and `DELETE`
/// are forwarded without the body; `OPTIONS` is answered by the gateway itself, and other
/// methods get its 405, so neither reaches NoETL and both are refused here.
pub fn rest(method: &str, raw_path: &str, strip_prefix: &str, prefix: &str) -> Result<Forwarded, ForwardError> {
    let method = match method {
        "HEAD" => "GET",
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" => method,
        other => return Err(ForwardError::Method(other.to_owned())),
    };
    let path = raw_path.split('?').next().unwrap_or_default();
    // The route matched the normalised path; the gateway reads the path as sent.
    let rest = path.strip_prefix(strip_prefix).ok_or_else(|| ForwardError::Path {
        path: path.to_owned(),
        why: "does not start with the pass-through prefix as sent",
    })?;
    if rest.is_empty() {
        return Err(ForwardError::Path { path: path.to_owned(), why: "names no route after the prefix" });
    }
    let path = format!("{prefix}{rest}");
    check_path(&path)?;
    let body = if matches!(method, "GET" | "DELETE") { ForwardBody::Given(Vec::new()) } else { ForwardBody::Passed };
    Ok(Forwarded { method: method.to_owned(), path, body })
}

/// A `proxyRequest` input as the gateway reads it: `method` uppercased, `endpoint` appended to
/// the NoETL base URL as written, `body` (any JSON) sent as JSON when present and not `null`.
pub fn proxy_input(input: &Value) -> Result<Forwarded, ForwardError> {
    let Value::Object(fields) = input else {
        return Err(ForwardError::Input("not an object"));
    };
    if fields.keys().any(|k| !matches!(k.as_str(), "method" | "endpoint" | "body")) {
        return Err(ForwardError::Input("a field other than method, endpoint, body"));
    }
    let method = fields.get("method").and_then(Value::as_str).ok_or(ForwardError::Input("method is not a string"))?;
    // The gateway matches `method.to_uppercase()`, Unicode's: `poſt` is POST to it. Only
    // ASCII names are read, so the two uppercasings agree.
    let upper = method.to_ascii_uppercase();
    if !method.is_ascii() || !matches!(upper.as_str(), "GET" | "POST" | "PUT" | "DELETE" | "PATCH") {
        return Err(ForwardError::Method(method.to_owned()));
    }
    let endpoint =
        fields.get("endpoint").and_then(Value::as_str).ok_or(ForwardError::Input("endpoint is not a string"))?;
    // `format!("{base}{endpoint}")`: without a leading `/` the endpoint would run into the
    // base's host or port (`@other-host/...`).
    if !endpoint.starts_with('/') {
        return Err(ForwardError::Path { path: endpoint.to_owned(), why: "does not start with '/'" });
    }
    if let Some(why) = unreadable(endpoint) {
        return Err(ForwardError::Path { path: endpoint.to_owned(), why });
    }
    let path = endpoint.split('?').next().unwrap_or_default().to_owned();
    check_path(&path)?;
    let body = match fields.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(body) => serde_json::to_vec(body).map_err(|_| ForwardError::Input("body does not serialise"))?,
    };
    Ok(Forwarded { method: upper, path, body: ForwardBody::Given(body) })
}

/// A forwarded path every reader on the way reads alike: `/`, then non-empty segments (one
/// trailing `/` allowed, which NoETL redirects), none of them `.` or `..`, no `%`.
pub fn check_path(path: &str) -> Result<(), ForwardError> {
    let fail = |why| Err(ForwardError::Path { path: path.to_owned(), why });
    if let Some(why) = unreadable(path) {
        return fail(why);
    }
    if path.contains('%') {
        return fail("percent-encoded: the gateway and NoETL decode it, once or twice");
    }
    let Some(rest) = path.strip_prefix('/') else {
        return fail("does not start with '/'");
    };
    let segments: Vec<&str> = rest.strip_suffix('/').unwrap_or(rest).split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return fail("has an empty segment");
    }
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return fail("has a dot segment");
    }
    Ok(())
}

/// What makes a URL text read differently by the `url` crate than as written: a backslash
/// (read as `/`), `#` (a fragment, not sent), whitespace or a control character (dropped or
/// trimmed).
fn unreadable(text: &str) -> Option<&'static str> {
    if text.contains('\\') {
        return Some("has a backslash");
    }
    if text.contains('#') {
        return Some("has a fragment");
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("has whitespace or a control character");
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn path_error(r: Result<Forwarded, ForwardError>) -> bool {
        matches!(r, Err(ForwardError::Path { .. }))
    }

    #[test]
    fn rest_paths_become_noetl_paths() {
        let f = rest("POST", "/noetl/execute?x=1", "/noetl/", "/api/").unwrap();
        assert_eq!((f.method.as_str(), f.path.as_str(), &f.body), ("POST", "/api/execute", &ForwardBody::Passed));
        let f = rest("HEAD", "/noetl/catalog/data/x/ui_schema", "/noetl/", "/api/").unwrap();
        assert_eq!((f.method.as_str(), &f.body), ("GET", &ForwardBody::Given(Vec::new())));
        let f = rest("DELETE", "/noetl/playbook-tests/suites/data/x/", "/noetl/", "/api/").unwrap();
        assert_eq!((f.path.as_str(), &f.body), ("/api/playbook-tests/suites/data/x/", &ForwardBody::Given(Vec::new())));
    }

    #[test]
    fn rest_paths_with_another_reading_are_refused() {
        for raw in [
            "/noetl/",
            "/noetl",
            "//noetl/execute",
            "/noetl/./execute",
            "/noetl/data/../execute",
            "/noetl/catalog/%2e%2e/postgres/execute",
            "/noetl/catalog/system%2Fx/ui_schema",
            "/noetl/ex%65cute",
            "/noetl/catalog/a%253fb",
            "/noetl/execute%3Fx",
            "/noetl/execute%23x",
            "/noetl/a\\..\\postgres/execute",
            "/noetl//execute",
            "/noetl/execute//",
            "/noetl/exe\tcute",
            "/noetl/execute#x",
            "/%6eoetl/execute",
        ] {
            assert!(path_error(rest("POST", raw, "/noetl/", "/api/")), "{raw}");
        }
        for method in ["OPTIONS", "TRACE", "CONNECT", "post"] {
            assert_eq!(rest(method, "/noetl/execute", "/noetl/", "/api/"), Err(ForwardError::Method(method.into())));
        }
    }

    #[test]
    fn proxy_inputs_become_noetl_requests() {
        let f = proxy_input(&json!({"method": "post", "endpoint": "/api/execute?x=1", "body": {"path": "data/x"}}))
            .unwrap();
        assert_eq!((f.method.as_str(), f.path.as_str()), ("POST", "/api/execute"));
        assert_eq!(f.body, ForwardBody::Given(br#"{"path":"data/x"}"#.to_vec()));
        let f = proxy_input(&json!({"method": "Get", "endpoint": "/api/health", "body": null})).unwrap();
        assert_eq!((f.method.as_str(), &f.body), ("GET", &ForwardBody::Given(Vec::new())));
        let f = proxy_input(&json!({"method": "PUT", "endpoint": "/api/x", "body": "text"})).unwrap();
        assert_eq!(f.body, ForwardBody::Given(br#""text""#.to_vec()));
    }

    #[test]
    fn proxy_inputs_with_another_reading_are_refused() {
        let input = |method: &str, endpoint: &str| json!({"method": method, "endpoint": endpoint});
        for endpoint in [
            "api/execute",
            "@other-host/api/execute",
            "http://other-host/api/execute",
            "//other-host/api/execute",
            "/api/./execute",
            "/api/x/../postgres/execute",
            "/api/%2e%2e/postgres/execute",
            "/api/catalog/system%2Fx/ui_schema",
            "/api/execute#frag",
            "/api/exe\ncute",
            "/api/execute ",
            "/api\\execute",
            "/api/execute?x=\t",
        ] {
            assert!(path_error(proxy_input(&input("POST", endpoint))), "{endpoint:?}");
        }
        for method in ["poſt", "ɢET", "HEAD", "OPTIONS", "", "P OST"] {
            assert_eq!(
                proxy_input(&input(method, "/api/execute")),
                Err(ForwardError::Method(method.into())),
                "{method}"
            );
        }
        for bad in [
            json!("POST /api/execute"),
            json!({"method": "POST"}),
            json!({"endpoint": "/api/execute"}),
            json!({"method": 1, "endpoint": "/api/execute"}),
            json!({"method": "POST", "endpoint": "/api/execute", "headers": {}}),
        ] {
            assert!(matches!(proxy_input(&bad), Err(ForwardError::Input(_))), "{bad}");
        }
    }
}

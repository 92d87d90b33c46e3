//! Turning a decision into an HTTP answer or upstream headers (SPEC section 7).

use serde_json::json;

use crate::jwt::AuthError;

/// What kind of refusal; the host counts each in its own stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// 401: no token, or one that does not verify.
    Unauthenticated,
    /// 403: the policy or the route table says no.
    Forbidden,
    /// 400: the request names no usable playbook.
    BadRequest,
    /// 413: the body a route must read is too large.
    PayloadTooLarge,
    /// 503: the validation service cannot answer and no stale entry may serve.
    Unavailable,
}

/// A local reply: status, headers and a JSON body, plus a line for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Denial {
    /// The kind, for stats.
    pub kind: DenialKind,
    /// The HTTP status.
    pub status: u32,
    /// Response headers (besides `content-type`, which is always JSON).
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: String,
    /// Why, for the log line.
    pub detail: String,
}

impl Denial {
    /// 401 with a `reason` and an RFC 6750 `WWW-Authenticate` challenge.
    pub fn unauthenticated(err: &AuthError) -> Self {
        let description: String =
            err.to_string().chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
        // RFC 6750 section 3.1: a request with no credentials gets a challenge with no error code.
        let challenge = if *err == AuthError::Missing {
            "Bearer realm=\"playbook-guard\"".to_owned()
        } else {
            format!("Bearer realm=\"playbook-guard\", error=\"invalid_token\", error_description=\"{description}\"")
        };
        Denial {
            kind: DenialKind::Unauthenticated,
            status: 401,
            headers: vec![("www-authenticate".into(), challenge)],
            body: json!({"error": "unauthenticated", "reason": err.reason()}).to_string(),
            detail: err.to_string(),
        }
    }

    /// 403 for a (permission, playbook) the policy refuses.
    pub fn forbidden(playbook: &str, permission: &str, detail: String) -> Self {
        Denial {
            kind: DenialKind::Forbidden,
            status: 403,
            headers: Vec::new(),
            body: json!({"error": "Permission denied", "playbook_path": playbook, "permission_type": permission})
                .to_string(),
            detail,
        }
    }

    /// 403 for a request that no route allows (`default_action: deny`).
    pub fn no_route() -> Self {
        Denial {
            kind: DenialKind::Forbidden,
            status: 403,
            headers: Vec::new(),
            body:
                json!({"error": "Permission denied", "playbook_path": "", "permission_type": "", "reason": "no_route"})
                    .to_string(),
            detail: "no route matches and default_action is deny".into(),
        }
    }

    /// 403 with a reason, for a refusal that is about the route rather than a playbook:
    /// `blocked` (a worker or internal route), `restricted` (a route for the
    /// `restricted_roles`), `jsonrpc_method` (a JSON-RPC method the route does not list).
    pub fn refused(reason: &str, detail: String) -> Self {
        Denial {
            kind: DenialKind::Forbidden,
            status: 403,
            headers: Vec::new(),
            body: json!({"error": "Permission denied", "playbook_path": "", "permission_type": "", "reason": reason})
                .to_string(),
            detail,
        }
    }

    /// 415 for a body-sourced route whose body NoETL would not read as JSON (counted with the
    /// 400s: the request is malformed for this route).
    pub fn unsupported_media_type(detail: String) -> Self {
        Denial {
            kind: DenialKind::BadRequest,
            status: 415,
            headers: Vec::new(),
            body: json!({"error": "unsupported_media_type", "reason": "body_not_json"}).to_string(),
            detail,
        }
    }

    /// 400 with a reason.
    pub fn bad_request(reason: &str, detail: String) -> Self {
        Denial {
            kind: DenialKind::BadRequest,
            status: 400,
            headers: Vec::new(),
            body: json!({"error": "bad_request", "reason": reason}).to_string(),
            detail,
        }
    }

    /// 503 with `Retry-After` when the validation service fails (`failure_mode: deny`).
    pub fn unavailable() -> Self {
        Self::retry_later("session_validation_unavailable", "session validation unavailable")
    }

    /// 503 with `Retry-After` when an id the request names cannot be looked up this second (the
    /// `resolver` gave no usable answer, or this worker's `max_lookups_per_sec` is spent).
    pub fn lookup_unavailable(detail: String) -> Self {
        let mut denial = Self::retry_later("lookup_unavailable", "");
        denial.detail = detail;
        denial
    }

    /// 503 with `Retry-After` when this worker's limit on callouts about sessions the cache has
    /// never seen is spent (`validation.max_cold_callouts_per_sec`).
    pub fn too_many_new_sessions() -> Self {
        Self::retry_later(
            "too_many_new_sessions",
            "too many new sessions to validate this second (validation.max_cold_callouts_per_sec)",
        )
    }

    /// 503 with `Retry-After: 1` and a reason: the session cannot be vouched for this second.
    fn retry_later(reason: &str, detail: &str) -> Self {
        Denial {
            kind: DenialKind::Unavailable,
            status: 503,
            headers: vec![("retry-after".into(), "1".into())],
            body: json!({"error": "unavailable", "reason": reason}).to_string(),
            detail: detail.into(),
        }
    }

    /// 413 for a body over the route's limit.
    pub fn too_large(limit: u64) -> Self {
        Denial {
            kind: DenialKind::PayloadTooLarge,
            status: 413,
            headers: Vec::new(),
            body: json!({"error": "payload_too_large", "max_body_bytes": limit}).to_string(),
            detail: format!("request body over {limit} bytes"),
        }
    }
}

/// The final word on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// Send it upstream with these headers set (identity headers the client sent are removed
    /// by the host before, whatever the verdict).
    Allow {
        /// Headers to set on the upstream request.
        headers: Vec<(String, String)>,
        /// What allowed it, for the log line.
        detail: String,
        /// In audit mode, the denial that was not enforced.
        audited: Option<Denial>,
        /// On a logout route: the session to evict everywhere once the upstream answers 2xx.
        logout: Option<String>,
    },
    /// Answer locally.
    Deny(Denial),
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn unauthenticated_answers_carry_reason_and_challenge() {
        let d = Denial::unauthenticated(&AuthError::Expired);
        assert_eq!(d.status, 401);
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body, json!({"error": "unauthenticated", "reason": "expired"}));
        assert_eq!(
            d.headers,
            [(
                "www-authenticate".to_string(),
                "Bearer realm=\"playbook-guard\", error=\"invalid_token\", error_description=\"token expired\""
                    .to_string()
            )]
        );
        let d = Denial::unauthenticated(&AuthError::UnknownIssuer("a\"b\\c\n".into()));
        assert!(d.headers[0].1.ends_with("error_description=\"unknown issuer abcn\""), "{}", d.headers[0].1);
        let d = Denial::unauthenticated(&AuthError::Missing);
        assert_eq!(d.headers[0].1, "Bearer realm=\"playbook-guard\"");
        assert!(d.body.contains("missing_token"));
    }

    #[test]
    fn forbidden_body_names_playbook_and_permission() {
        let d = Denial::forbidden("system/x", "execute", String::new());
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(
            body,
            json!({"error": "Permission denied", "playbook_path": "system/x", "permission_type": "execute"})
        );
    }

    #[test]
    fn every_answer_has_the_body_the_readme_documents() {
        let body = |d: &Denial| serde_json::from_str::<Value>(&d.body).unwrap();
        let too_large = Denial::too_large(10);
        assert_eq!(
            (too_large.kind, body(&too_large)),
            (DenialKind::PayloadTooLarge, json!({"error": "payload_too_large", "max_body_bytes": 10}))
        );
        let no_route = Denial::no_route();
        assert_eq!(body(&no_route)["reason"], "no_route");
        let bad = Denial::bad_request("ambiguous_request", String::new());
        assert_eq!(body(&bad), json!({"error": "bad_request", "reason": "ambiguous_request"}));
        for (d, reason) in [
            (Denial::unavailable(), "session_validation_unavailable"),
            (Denial::too_many_new_sessions(), "too_many_new_sessions"),
            (Denial::lookup_unavailable("x".into()), "lookup_unavailable"),
        ] {
            assert_eq!((d.status, body(&d)), (503, json!({"error": "unavailable", "reason": reason})));
            assert_eq!(d.headers, [("retry-after".to_string(), "1".to_string())]);
        }
        assert_eq!(Denial::lookup_unavailable("why".into()).detail, "why", "the log line says why");
    }
}

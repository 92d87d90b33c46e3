//! The session-validation callout: the request the filter sends and how it reads the answer
//! (SPEC section 4). NoETL's synchronous session-validation API runs the same checks as its
//! `auth0_validate_session` playbook and answers whether the session is active, who the user
//! is and which roles they hold.

use serde_json::{json, Value};

use crate::config::{ConfigError, FailureMode, SessionConfig, TokenRoles, ValidationConfig};
use crate::session::SessionEntry;
use crate::timestamp::parse_timestamp;

/// The HTTP request for one callout, for the host to send with `dispatch_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct CalloutRequest {
    /// The Envoy cluster.
    pub cluster: String,
    /// Pseudo-headers and headers.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Vec<u8>,
    /// The timeout, in milliseconds.
    pub timeout_ms: u64,
}

/// Why a callout gave no usable answer. Every kind follows `failure_mode`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CalloutFailure {
    /// The host refused to send it (an unknown cluster, a bad `:authority`).
    #[error("validation callout could not be sent: {0}")]
    NotSent(String),
    /// No response: timeout, reset or connection failure (the host gives no headers).
    #[error("validation service did not answer (timeout or reset)")]
    NoResponse,
    /// A non-2xx status.
    #[error("validation service answered HTTP {0}")]
    Status(u32),
    /// A body that is not the expected JSON.
    #[error("validation service answered malformed JSON: {0}")]
    Malformed(String),
    /// `status: "error"` in the body.
    #[error("validation service reported an error: {0}")]
    ServiceError(String),
}

/// The compiled validation settings and session-cache policy.
#[derive(Debug, Clone)]
pub struct Validator {
    cluster: String,
    path: String,
    authority: String,
    credential: Option<String>,
    timeout_ms: u64,
    /// What to do when the service fails.
    pub failure_mode: FailureMode,
    /// How long a stale valid entry may serve under `serve_stale`.
    pub stale_grace_secs: u64,
    /// How long a valid answer is fresh.
    pub ttl_secs: u64,
    /// How long an invalid answer is remembered.
    pub negative_ttl_secs: u64,
    /// Bound on cached sessions.
    pub max_entries: u64,
    /// How token roles combine with the service's.
    pub token_roles: TokenRoles,
}

impl Validator {
    /// Compiles `validation` and `session`; errors name the field.
    pub fn compile(cfg: &ValidationConfig, session: &SessionConfig) -> Result<Self, ConfigError> {
        if cfg.cluster.trim().is_empty() {
            return Err(ConfigError::new("cluster", "name the Envoy cluster of the NoETL server"));
        }
        if !cfg.path.starts_with('/') {
            return Err(ConfigError::new("path", format!("{:?}: request paths start with '/'", cfg.path)));
        }
        if cfg.timeout_ms == 0 {
            return Err(ConfigError::new("timeout_ms", "must be at least 1"));
        }
        if session.max_entries == 0 {
            return Err(ConfigError::new("session.max_entries", "must be at least 1"));
        }
        Ok(Validator {
            cluster: cfg.cluster.clone(),
            path: cfg.path.clone(),
            authority: cfg.authority.clone().unwrap_or_else(|| cfg.cluster.clone()),
            credential: cfg.credential.clone(),
            timeout_ms: cfg.timeout_ms,
            failure_mode: cfg.failure_mode,
            stale_grace_secs: cfg.stale_grace_secs,
            ttl_secs: session.ttl_secs,
            negative_ttl_secs: session.negative_ttl_secs,
            max_entries: session.max_entries,
            token_roles: cfg.token_roles,
        })
    }

    /// The callout's timeout, in milliseconds.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// The callout for `token`: `POST` with `{"session_token": .., "credential": ..}`.
    pub fn request(&self, token: &str) -> CalloutRequest {
        let mut body = json!({"session_token": token});
        if let (Some(credential), Value::Object(map)) = (&self.credential, &mut body) {
            map.insert("credential".into(), json!(credential));
        }
        CalloutRequest {
            cluster: self.cluster.clone(),
            headers: vec![
                (":method".into(), "POST".into()),
                (":path".into(), self.path.clone()),
                (":authority".into(), self.authority.clone()),
                ("content-type".into(), "application/json".into()),
                ("accept".into(), "application/json".into()),
            ],
            body: body.to_string().into_bytes(),
            timeout_ms: self.timeout_ms,
        }
    }

    /// Reads an answer: `status` is the HTTP status (`None` when the host got no response).
    /// `valid: false` is an answer (an invalid session), not a failure.
    pub fn read_answer(&self, status: Option<u32>, body: &[u8], now: u64) -> Result<SessionEntry, CalloutFailure> {
        let status = status.ok_or(CalloutFailure::NoResponse)?;
        if !(200..300).contains(&status) {
            return Err(CalloutFailure::Status(status));
        }
        let json: Value = serde_json::from_slice(body).map_err(|e| CalloutFailure::Malformed(e.to_string()))?;
        let obj = json.as_object().ok_or_else(|| CalloutFailure::Malformed("not a JSON object".into()))?;
        if obj.get("status").and_then(Value::as_str) == Some("error") {
            let error = obj.get("error").map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned));
            return Err(CalloutFailure::ServiceError(error.unwrap_or_else(|| "unspecified".into())));
        }
        let valid = obj
            .get("valid")
            .and_then(Value::as_bool)
            .ok_or_else(|| CalloutFailure::Malformed("no boolean `valid`".into()))?;
        let user = obj.get("user").filter(|u| u.is_object());
        let field = |name: &str| user.and_then(|u| u.get(name)).and_then(text);
        let roles = user
            .and_then(|u| u.get("roles"))
            .filter(|r| !r.is_null())
            .or_else(|| obj.get("roles"))
            .map(|r| crate::jwt::roles_from(Some(r)))
            .unwrap_or_default();
        let expires_at = match obj.get("expires_at") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                parse_timestamp(s)
                    .ok_or_else(|| CalloutFailure::Malformed(format!("expires_at {s:?} is not a timestamp")))?,
            ),
            Some(Value::Number(n)) => n.as_u64(),
            Some(other) => return Err(CalloutFailure::Malformed(format!("expires_at {other} is not a timestamp"))),
        };
        // A session the service calls valid but whose own expiry has passed is over: answering it
        // as invalid (and caching that for negative_ttl_secs) is safer than trusting `valid`, and
        // an entry already past its expiry would otherwise never be fresh, so every request
        // would ask again.
        let valid = valid && expires_at.is_none_or(|at| at > now);
        Ok(SessionEntry {
            valid,
            user_id: field("user_id"),
            email: field("email"),
            display_name: field("display_name"),
            roles,
            expires_at,
            fetched_at: now,
        })
    }
}

/// A string, or a number written as one (`user_id: 42` and `"42"` are the same user).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_json;

    fn validator(json: &str) -> Validator {
        let cfg: ValidationConfig = parse_json(json.as_bytes()).unwrap();
        Validator::compile(&cfg, &SessionConfig::default()).unwrap()
    }

    #[test]
    fn request_follows_the_spec() {
        let v = validator(r#"{"cluster": "noetl"}"#);
        let req = v.request("tok");
        assert_eq!(req.cluster, "noetl");
        assert_eq!(req.timeout_ms, 2000);
        assert!(req.headers.contains(&(":path".into(), "/api/auth/session/validate".into())));
        assert!(req.headers.contains(&(":method".into(), "POST".into())));
        assert!(req.headers.contains(&(":authority".into(), "noetl".into())));
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body, json!({"session_token": "tok", "credential": "pg_auth"}));
        let v = validator(r#"{"cluster": "noetl", "credential": null, "path": "/v", "authority": "noetl.svc"}"#);
        let req = v.request("tok");
        assert_eq!(serde_json::from_slice::<Value>(&req.body).unwrap(), json!({"session_token": "tok"}));
        assert!(req.headers.contains(&(":authority".into(), "noetl.svc".into())));
    }

    #[test]
    fn reads_noetl_answers() {
        let v = validator(r#"{"cluster": "noetl"}"#);
        let body = br#"{"status": "ok", "valid": true, "user": {"user_id": 42, "email": "ada@example.com",
            "display_name": "Ada", "roles": ["analyst"]}, "expires_at": "2026-01-15 10:00:00+00", "error": null, "extra": 1}"#;
        let e = v.read_answer(Some(200), body, 100).unwrap();
        assert!(e.valid);
        assert_eq!(e.user_id.as_deref(), Some("42"));
        assert_eq!(e.email.as_deref(), Some("ada@example.com"));
        assert_eq!(e.display_name.as_deref(), Some("Ada"));
        assert_eq!(e.roles, ["analyst"]);
        assert_eq!(e.expires_at, Some(1_768_471_200));
        assert_eq!(e.fetched_at, 100);

        let body = br#"{"valid": true, "user": {"user_id": "7"}, "roles": ["viewer", "analyst"], "expires_at": null}"#;
        let e = v.read_answer(Some(200), body, 0).unwrap();
        assert_eq!((e.user_id.as_deref(), e.roles.len(), e.expires_at), (Some("7"), 2, None));

        let e = v.read_answer(Some(200), br#"{"status": "ok", "valid": false, "user": null}"#, 0).unwrap();
        assert!(!e.valid);

        let past = br#"{"valid": true, "user": {"user_id": 1}, "expires_at": "2020-01-01T00:00:00Z"}"#;
        assert!(!v.read_answer(Some(200), past, 1_768_471_200).unwrap().valid, "an expired session is not valid");
    }

    #[test]
    fn failures_of_every_kind() {
        let v = validator(r#"{"cluster": "noetl"}"#);
        assert_eq!(v.read_answer(None, b"", 0), Err(CalloutFailure::NoResponse));
        assert_eq!(v.read_answer(Some(500), b"{}", 0), Err(CalloutFailure::Status(500)));
        assert_eq!(v.read_answer(Some(404), b"", 0), Err(CalloutFailure::Status(404)));
        assert!(matches!(v.read_answer(Some(200), b"<html>", 0), Err(CalloutFailure::Malformed(_))));
        assert!(matches!(v.read_answer(Some(200), b"[1]", 0), Err(CalloutFailure::Malformed(_))));
        assert!(matches!(v.read_answer(Some(200), br#"{"status": "ok"}"#, 0), Err(CalloutFailure::Malformed(_))));
        assert!(matches!(
            v.read_answer(Some(200), br#"{"valid": true, "expires_at": "tomorrow"}"#, 0),
            Err(CalloutFailure::Malformed(_))
        ));
        assert_eq!(
            v.read_answer(Some(200), br#"{"status": "error", "valid": false, "error": "db down"}"#, 0),
            Err(CalloutFailure::ServiceError("db down".into()))
        );
    }

    #[test]
    fn configuration_errors() {
        let compile = |json: &str| {
            let cfg: ValidationConfig = parse_json(json.as_bytes()).unwrap();
            Validator::compile(&cfg, &SessionConfig::default()).unwrap_err().path
        };
        assert_eq!(compile(r#"{"cluster": ""}"#), "cluster");
        assert_eq!(compile(r#"{"cluster": "c", "path": "v"}"#), "path");
        assert_eq!(compile(r#"{"cluster": "c", "timeout_ms": 0}"#), "timeout_ms");
    }
}

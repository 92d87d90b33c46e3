//! The session-validation callout: the request the filter sends and how it reads the answer
//! (SPEC section 4). NoETL's synchronous session-validation API runs the same checks as its
//! `auth0_validate_session` playbook and answers whether the session is active, who the user
//! is and which roles they hold.

use serde_json::{json, Value};

use crate::config::{FailureMode, SessionConfig, TokenRoles, ValidationConfig};
use crate::error::ConfigError;
use crate::session::{CacheSettings, SessionEntry};
use crate::timestamp::{parse_expiry, Expiry};

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
    /// How long answers stay fresh, and how many are kept.
    pub cache: CacheSettings,
    /// How token roles combine with the service's.
    pub token_roles: TokenRoles,
    max_cold_callouts_per_sec: u64,
}

/// A validation answer, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What the cache keeps.
    pub entry: SessionEntry,
    /// How many of the answer's roles were not role names and were dropped (for the stat).
    pub roles_dropped: u32,
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
        // An entry fresh for no time would never answer: every request would call out, and
        // every worker waiting for an answer would take the claim over again.
        if session.ttl_secs == 0 {
            return Err(ConfigError::new("session.ttl_secs", "must be at least 1 (at 0 no answer is ever used twice)"));
        }
        if session.negative_ttl_secs == 0 {
            return Err(ConfigError::new(
                "session.negative_ttl_secs",
                "must be at least 1 (at 0 an invalid session is asked about on every request)",
            ));
        }
        if session.max_entries == 0 {
            return Err(ConfigError::new("session.max_entries", "must be at least 1"));
        }
        if session.max_negative_entries == 0 {
            return Err(ConfigError::new("session.max_negative_entries", "must be at least 1"));
        }
        if cfg.max_cold_callouts_per_sec == 0 {
            return Err(ConfigError::new(
                "max_cold_callouts_per_sec",
                "must be at least 1 (at 0 no new session could ever be validated)",
            ));
        }
        Ok(Validator {
            cluster: cfg.cluster.clone(),
            path: cfg.path.clone(),
            authority: cfg.authority.clone().unwrap_or_else(|| cfg.cluster.clone()),
            credential: cfg.credential.clone(),
            timeout_ms: cfg.timeout_ms,
            failure_mode: cfg.failure_mode,
            cache: CacheSettings {
                ttl_secs: session.ttl_secs,
                negative_ttl_secs: session.negative_ttl_secs,
                stale_grace_secs: cfg.stale_grace_secs,
                max_entries: session.max_entries,
                max_negative_entries: session.max_negative_entries,
                memo_entries: session.memo_entries,
            },
            token_roles: cfg.token_roles,
            max_cold_callouts_per_sec: cfg.max_cold_callouts_per_sec,
        })
    }

    /// A full bucket for one worker's callouts about sessions the cache has never seen.
    pub fn cold_callouts(&self) -> TokenBucket {
        TokenBucket::new(self.max_cold_callouts_per_sec)
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
    /// `valid: false` is an answer (an invalid session), not a failure. Read strictly: what is
    /// not NoETL's answer is [`CalloutFailure::Malformed`], never a guess that could let a
    /// session through. So `expires_at` must be absent, `null`, a timestamp, `infinity` or a
    /// non-negative whole number of seconds, and a valid session must name its user.
    pub fn read_answer(&self, status: Option<u32>, body: &[u8], now_ms: u64) -> Result<Answer, CalloutFailure> {
        let status = status.ok_or(CalloutFailure::NoResponse)?;
        if !(200..300).contains(&status) {
            return Err(CalloutFailure::Status(status));
        }
        let json: Value = serde_json::from_slice(body).map_err(|e| CalloutFailure::Malformed(e.to_string()))?;
        let obj = json.as_object().ok_or_else(|| CalloutFailure::Malformed("not a JSON object".into()))?;
        match obj.get("status") {
            None => {}
            Some(Value::String(s)) if s == "ok" => {}
            Some(Value::String(s)) if s == "error" => {
                let error = obj.get("error").map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned));
                return Err(CalloutFailure::ServiceError(error.unwrap_or_else(|| "unspecified".into())));
            }
            Some(other) => return Err(CalloutFailure::Malformed(format!("status {other} is neither ok nor error"))),
        }
        let valid = obj
            .get("valid")
            .and_then(Value::as_bool)
            .ok_or_else(|| CalloutFailure::Malformed("no boolean `valid`".into()))?;
        let expires_at = match obj.get("expires_at") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => match parse_expiry(s) {
                Some(Expiry::Never) => Ok(None),
                Some(Expiry::At(at)) => Ok(Some(at)),
                None => Err(CalloutFailure::Malformed(format!("expires_at {s:?} is not a timestamp"))),
            },
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                CalloutFailure::Malformed(format!("expires_at {n} is not a non-negative whole number of seconds"))
            }),
            Some(other) => Err(CalloutFailure::Malformed(format!("expires_at {other} is not a timestamp"))),
        };
        // A session the service calls invalid is invalid whatever else the answer holds: read
        // as a failure, `serve_stale` could serve an earlier valid entry of it.
        let expires_at = if valid { expires_at? } else { expires_at.unwrap_or(None) };
        let invalid = Answer {
            entry: SessionEntry {
                valid: false,
                user_id: None,
                email: None,
                display_name: None,
                roles: Vec::new(),
                expires_at,
                fetched_at_ms: now_ms,
            },
            roles_dropped: 0,
        };
        if !valid {
            return Ok(invalid);
        }
        let Some(Value::Object(user)) = obj.get("user") else {
            return Err(CalloutFailure::Malformed("valid: true without a `user` object".into()));
        };
        // The identity headers come from this user alone (see `Guard::with_entry`), so a valid
        // session must at least say whose it is.
        let user_id = user
            .get("user_id")
            .and_then(text)
            .ok_or_else(|| CalloutFailure::Malformed("user has no user_id".into()))?;
        let (roles, roles_dropped) =
            crate::jwt::roles_from(user.get("roles").filter(|r| !r.is_null()).or_else(|| obj.get("roles")));
        // A session the service calls valid but whose own expiry has passed is over: it is
        // answered and cached as invalid (for negative_ttl_secs), rather than trusted.
        if expires_at.is_some_and(|at| at.saturating_mul(1000) <= now_ms) {
            return Ok(invalid);
        }
        Ok(Answer {
            entry: SessionEntry {
                valid: true,
                user_id: Some(user_id),
                email: user.get("email").and_then(text),
                display_name: user.get("display_name").and_then(text),
                roles,
                expires_at,
                fetched_at_ms: now_ms,
            },
            roles_dropped,
        })
    }
}

/// A token bucket: on average at most `rate` takes a second, and `rate` at once after a quiet
/// second. Pure arithmetic on the caller's clock (milliseconds), in thousandths of a token, so
/// it needs neither floats nor a clock of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u64,
    /// Thousandths of a token available.
    milli: u64,
    /// When it was last topped up.
    last_ms: Option<u64>,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens, refilled at `rate` a second.
    pub fn new(rate: u64) -> Self {
        TokenBucket { rate, milli: rate.saturating_mul(1000), last_ms: None }
    }

    /// Takes a token at `now_ms` if there is one. A clock that steps back refills nothing.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        if let Some(last) = self.last_ms {
            let refill = now_ms.saturating_sub(last).saturating_mul(self.rate);
            self.milli = self.milli.saturating_add(refill).min(self.rate.saturating_mul(1000));
        }
        self.last_ms = Some(self.last_ms.map_or(now_ms, |last| last.max(now_ms)));
        if self.milli < 1000 {
            return false;
        }
        self.milli -= 1000;
        true
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
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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

    fn entry(v: &Validator, body: &str, now_ms: u64) -> SessionEntry {
        v.read_answer(Some(200), body.as_bytes(), now_ms).unwrap().entry
    }

    fn malformed(v: &Validator, body: &str, now: u64) -> bool {
        matches!(v.read_answer(Some(200), body.as_bytes(), now), Err(CalloutFailure::Malformed(_)))
    }

    #[test]
    fn reads_noetl_answers() {
        let v = validator(r#"{"cluster": "noetl"}"#);
        let body = br#"{"status": "ok", "valid": true, "user": {"user_id": 42, "email": "ada@example.com",
            "display_name": "Ada", "roles": ["analyst"]}, "expires_at": "2026-01-15 10:00:00+00", "error": null, "extra": 1}"#;
        let a = v.read_answer(Some(200), body, 100).unwrap();
        assert_eq!(a.roles_dropped, 0);
        let e = a.entry;
        assert!(e.valid);
        assert_eq!(e.user_id.as_deref(), Some("42"));
        assert_eq!(e.email.as_deref(), Some("ada@example.com"));
        assert_eq!(e.display_name.as_deref(), Some("Ada"));
        assert_eq!(e.roles, ["analyst"]);
        assert_eq!(e.expires_at, Some(1_768_471_200));
        assert_eq!(e.fetched_at_ms, 100);

        let e = entry(
            &v,
            r#"{"valid": true, "user": {"user_id": "7"}, "roles": ["viewer", "analyst"], "expires_at": null}"#,
            0,
        );
        assert_eq!((e.user_id.as_deref(), e.roles.len(), e.expires_at), (Some("7"), 2, None));

        let past = r#"{"valid": true, "user": {"user_id": 1}, "expires_at": "2020-01-01T00:00:00Z"}"#;
        assert!(!entry(&v, past, 1_768_471_200_000).valid, "an expired session is not valid");
    }

    #[test]
    fn noetl_invalid_session_and_unprocessable_request() {
        let v = validator(r#"{"cluster": "noetl"}"#);
        // What NoETL answers for an unknown, expired or inactive session.
        let e = entry(&v, r#"{"status":"ok","valid":false,"user":null,"expires_at":null,"error":null}"#, 5);
        assert_eq!((e.valid, e.user_id, e.roles.len(), e.fetched_at_ms), (false, None, 0, 5));
        // And for a request it cannot read (FastAPI's validation error): a failure, not an answer.
        let detail = br#"{"detail": [{"loc": ["body", "session_token"], "msg": "field required", "type": "value_error.missing"}]}"#;
        assert_eq!(v.read_answer(Some(422), detail, 0), Err(CalloutFailure::Status(422)));
    }

    #[test]
    fn an_invalid_answer_carries_no_identity() {
        let v = validator(r#"{"cluster": "noetl"}"#);
        // An expiry it cannot read does not make it a failure (which `serve_stale` could answer
        // with an earlier valid entry).
        let odd = r#"{"valid": false, "expires_at": "soon"}"#;
        assert!(!entry(&v, odd, 0).valid);
        let odd_valid = br#"{"valid": true, "user": {"user_id": 1}, "expires_at": "soon"}"#;
        assert!(matches!(v.read_answer(Some(200), odd_valid, 0), Err(CalloutFailure::Malformed(_))));
        let e = entry(&v, r#"{"valid": false, "user": {"user_id": 9, "roles": ["admin"]}, "roles": ["admin"]}"#, 0);
        assert_eq!(
            e,
            SessionEntry {
                valid: false,
                user_id: None,
                email: None,
                display_name: None,
                roles: vec![],
                expires_at: None,
                fetched_at_ms: 0
            }
        );
    }

    #[test]
    fn expires_at_in_every_accepted_form() {
        let v = validator(r#"{"cluster": "noetl"}"#);
        let base = 1_768_471_200; // 2026-01-15T10:00:00Z
        for (text, want) in [
            (r#""2026-01-15T10:00:00Z""#, Some(base)),
            (r#""2026-01-15T10:00:00.123+00:00""#, Some(base)),
            (r#""2026-01-15 10:00:00+00""#, Some(base)),
            (r#""2026-01-15 15:30:00.5+05:30""#, Some(base)),
            (r#""2026-01-15 07:00:00-03""#, Some(base)),
            (r#""2026-01-15 10:00:00""#, Some(base)),
            (r#""infinity""#, None),
            ("1768471200", Some(base)),
            ("null", None),
        ] {
            let body = format!(r#"{{"valid": true, "user": {{"user_id": 1}}, "expires_at": {text}}}"#);
            let e = entry(&v, &body, (base - 1) * 1000);
            assert_eq!((e.valid, e.expires_at), (true, want), "{text}");
        }
        let e = entry(&v, r#"{"valid": true, "user": {"user_id": 1}}"#, 0);
        assert_eq!(e.expires_at, None, "absent");
    }

    #[test]
    fn anything_else_in_expires_at_of_a_valid_session_is_malformed() {
        let v = validator(r#"{"cluster": "noetl"}"#);
        for text in [
            "1600000000.5",
            "1768471200.0",
            "1.7e9",
            "-5",
            "-1768471200",
            r#""-infinity""#,
            r#""Infinity""#,
            r#""tomorrow""#,
            r#""1768471200""#,
            r#""""#,
            r#""2026-01-15 10:00:00+0530""#,
            "true",
            "{}",
            r#"{"at": "2026-01-15 10:00:00+00"}"#,
            "[]",
        ] {
            let body = format!(r#"{{"valid": true, "user": {{"user_id": 1}}, "expires_at": {text}}}"#);
            assert!(malformed(&v, &body, 0), "expires_at {text}");
            // Of an invalid session it is ignored: the answer is still that it is invalid.
            let body = format!(r#"{{"valid": false, "user": {{"user_id": 1}}, "expires_at": {text}}}"#);
            assert!(!entry(&v, &body, 0).valid, "expires_at {text}");
        }
    }

    #[test]
    fn a_valid_answer_names_its_user() {
        let v = validator(r#"{"cluster": "noetl"}"#);
        for body in [
            r#"{"valid": true}"#,
            r#"{"valid": true, "user": null}"#,
            r#"{"valid": true, "user": "42"}"#,
            r#"{"valid": true, "user": {"email": "a@b.c"}}"#,
            r#"{"valid": true, "user": {"user_id": ""}}"#,
            r#"{"valid": true, "user": {"user_id": null}}"#,
            r#"{"valid": true, "user": {"user_id": [1]}}"#,
            r#"{"status": "pending", "valid": true, "user": {"user_id": 1}}"#,
            r#"{"status": null, "valid": true, "user": {"user_id": 1}}"#,
            r#"{"valid": "true", "user": {"user_id": 1}}"#,
        ] {
            assert!(malformed(&v, body, 0), "{body}");
        }
    }

    #[test]
    fn roles_that_are_not_names_are_dropped_and_counted() {
        let v = validator(r#"{"cluster": "noetl"}"#);
        let body = r#"{"valid": true, "user": {"user_id": 1, "roles": ["viewer,admin", "analyst", "", "de v", 7]}}"#;
        let a = v.read_answer(Some(200), body.as_bytes(), 0).unwrap();
        assert_eq!((a.entry.roles, a.roles_dropped), (vec!["analyst".to_owned()], 4));
        let top = r#"{"valid": true, "user": {"user_id": 1}, "roles": "analyst viewer,admin"}"#;
        let a = v.read_answer(Some(200), top.as_bytes(), 0).unwrap();
        assert_eq!((a.entry.roles, a.roles_dropped), (vec!["analyst".to_owned()], 1));
    }

    #[test]
    fn failures_of_every_kind() {
        let v = validator(r#"{"cluster": "noetl"}"#);
        assert_eq!(v.read_answer(None, b"", 0), Err(CalloutFailure::NoResponse));
        assert_eq!(v.read_answer(Some(500), b"{}", 0), Err(CalloutFailure::Status(500)));
        assert_eq!(v.read_answer(Some(404), b"", 0), Err(CalloutFailure::Status(404)));
        assert!(malformed(&v, "<html>", 0));
        assert!(malformed(&v, "[1]", 0));
        assert!(malformed(&v, r#"{"status": "ok"}"#, 0));
        assert!(malformed(&v, r#"{"valid": true, "user": {"user_id": 1}, "expires_at": "tomorrow"}"#, 0));
        assert_eq!(
            v.read_answer(Some(200), br#"{"status": "error", "valid": false, "error": "db down"}"#, 0),
            Err(CalloutFailure::ServiceError("db down".into()))
        );
    }

    #[test]
    fn the_token_bucket_allows_its_rate_and_burst() {
        let mut b = TokenBucket::new(5);
        assert_eq!((0..7).filter(|_| b.try_take(1000)).count(), 5, "a full bucket allows a burst of the rate");
        assert!(!b.try_take(1199), "a token takes 200 ms to come back");
        assert!(b.try_take(1200));
        assert!(!b.try_take(1200));
        assert_eq!((0..10).filter(|_| b.try_take(60_000)).count(), 5, "a long quiet spell refills to the burst only");
        assert!(!b.try_take(59_000), "a clock that steps back refills nothing");
        assert!(!b.try_take(60_100));
        assert!(b.try_take(60_200));
        // Over ten seconds, at most rate per second plus the burst.
        let mut b = TokenBucket::new(50);
        let taken: usize = (0..10_000u64).map(|ms| (0..2).filter(|_| b.try_take(100_000 + ms)).count()).sum();
        assert!((500..=550).contains(&taken), "{taken}");
        let mut huge = TokenBucket::new(u64::MAX);
        assert!(huge.try_take(0) && huge.try_take(u64::MAX));
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
        assert_eq!(compile(r#"{"cluster": "c", "max_cold_callouts_per_sec": 0}"#), "max_cold_callouts_per_sec");
        let session: SessionConfig = parse_json(br#"{"max_negative_entries": 0}"#).unwrap();
        let cfg: ValidationConfig = parse_json(br#"{"cluster": "c"}"#).unwrap();
        assert_eq!(Validator::compile(&cfg, &session).unwrap_err().path, "session.max_negative_entries");
        let v = Validator::compile(&cfg, &SessionConfig::default()).unwrap();
        assert_eq!(
            (v.cache.max_negative_entries, v.max_cold_callouts_per_sec),
            (10_000, 50),
            "the documented defaults"
        );
    }
}

//! A stand-in for NoETL's session-validation API (SPEC section 4), for tests and the local demo.
//!
//! `POST <path>` with `{"session_token": "...", "credential": "pg_auth"}` answers as NoETL's
//! server does: `{"status": "ok", "valid": true, "user": {...}, "expires_at": "...", "error": null}`.
//! Sessions come from a YAML or JSON file keyed by token or by `sid`; for a JWT the `sid` claim
//! is read from the (unverified) payload. Calls are counted per session (`GET /_stats`), and
//! `POST /_control` makes the service fail, stall or answer garbage, so a test can drive the
//! filter's failure modes, or gives a session a canned answer (`{"answers": {"<session key>":
//! {"status": 200, "body": ...}}}`), so a test can send the filter any answer NoETL might. A plain HTTP/1.1 server on `std::net`, bound to 127.0.0.1 only.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The largest request body the service reads (validation requests are tiny).
const MAX_BODY: usize = 1 << 20;

/// One session as the validation service knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// The user's id: a number or a numeric string, passed through as given.
    pub user_id: Value,
    /// The user's email.
    #[serde(default)]
    pub email: String,
    /// The user's display name.
    #[serde(default)]
    pub display_name: String,
    /// The user's roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// When the session ends, as NoETL prints it (`2026-01-15 10:00:00+00`).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Whether the session is active (`false` answers `valid: false`).
    #[serde(default = "yes")]
    pub valid: bool,
}

fn yes() -> bool {
    true
}

/// How the service answers validation requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer from the sessions file.
    Ok,
    /// Answer 500 with `{"status": "error", ...}`.
    Fail,
    /// Wait `delay_ms`, then answer normally (drives the filter's timeout).
    Slow,
    /// Answer 200 with a body that is not JSON.
    Garbage,
}

/// Errors loading the sessions file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The file is not a map of sessions.
    #[error(
        "{path}: not a map of session key -> {{user_id, email, display_name, roles, expires_at, valid}}: {message}"
    )]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
}

/// Reads a sessions file (YAML or JSON, a map keyed by token or `sid`).
///
/// # Errors
/// [`ServiceError`] when it cannot be read or parsed.
pub fn load_sessions(path: &Path) -> Result<HashMap<String, Session>, ServiceError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ServiceError::Read { path: path.display().to_string(), message: e.to_string() })?;
    // YAML 1.2 is a superset of JSON, so one parser reads both.
    serde_yaml_ng::from_str(&text)
        .map_err(|e| ServiceError::Parse { path: path.display().to_string(), message: e.to_string() })
}

/// What the service is told at start.
///
/// # Defaults
/// Path `/api/auth/session/validate`, no sessions, mode `ok`, delay 0.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The validation path.
    pub path: String,
    /// Sessions by token or `sid`.
    pub sessions: HashMap<String, Session>,
    /// The initial mode.
    pub mode: Mode,
    /// How long `slow` waits.
    pub delay: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            path: String::from("/api/auth/session/validate"),
            sessions: HashMap::new(),
            mode: Mode::Ok,
            delay: Duration::ZERO,
        }
    }
}

/// Call counts, as `GET /_stats` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Validation calls in all.
    pub total: u64,
    /// Calls per session key (the `sid` or token the call named; `unknown` when none).
    pub sessions: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct State {
    path: String,
    sessions: HashMap<String, Session>,
    mode: Mode,
    delay: Duration,
    stats: Stats,
    /// Canned answers by session key, set with `POST /_control`.
    canned: HashMap<String, Canned>,
}

/// A canned answer for one session: any status, any JSON body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Canned {
    status: u16,
    body: Value,
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The content type.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Response {
    fn json(status: u16, body: &Value) -> Self {
        Response {
            status,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
            delay: Duration::ZERO,
        }
    }
}

/// A running service.
#[derive(Debug)]
pub struct ValidationService {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: thread::JoinHandle<()>,
}

impl ValidationService {
    /// Binds 127.0.0.1:`port` (0 for an ephemeral port) and serves on background threads.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub fn start(port: u16, config: ServiceConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            path: config.path,
            sessions: config.sessions,
            mode: config.mode,
            delay: config.delay,
            stats: Stats::default(),
            canned: HashMap::new(),
        }));
        let shared = Arc::clone(&state);
        let accept = thread::spawn(move || {
            for connection in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                thread::spawn(move || serve_connection(connection, &state));
            }
        });
        Ok(ValidationService { addr, state, accept })
    }

    /// The address it listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The call counts so far.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.state.lock().map(|s| s.stats.clone()).unwrap_or_default()
    }

    /// Changes how it answers (as `POST /_control` does).
    pub fn set_mode(&self, mode: Mode, delay: Duration) {
        if let Ok(mut state) = self.state.lock() {
            state.mode = mode;
            state.delay = delay;
        }
    }

    /// Serves until the process ends.
    pub fn wait(self) {
        // The accept loop only ends if the listener fails; either way there is nothing to report.
        let _ = self.accept.join();
    }
}

fn serve_connection(connection: TcpStream, state: &Mutex<State>) {
    let Ok(write_half) = connection.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(connection);
    let mut writer = write_half;
    loop {
        let Some((method, target, headers, body)) = read_request(&mut reader) else {
            return;
        };
        let close = headers.get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let response = match state.lock() {
            Ok(mut state) => handle(&mut state, &method, &target, &body),
            Err(_) => Response::json(500, &json!({"status": "error", "error": "poisoned"})),
        };
        if !response.delay.is_zero() {
            thread::sleep(response.delay);
        }
        let head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n{}\r\n",
            response.status,
            reason(response.status),
            response.content_type,
            response.body.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        let sent = writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.write_all(&response.body))
            .and_then(|()| writer.flush());
        if sent.is_err() || close {
            return;
        }
    }
}

type Parsed = (String, String, HashMap<String, String>, Vec<u8>);

/// Reads one HTTP/1.1 request (Content-Length bodies only; chunked is not needed here).
fn read_request(reader: &mut impl BufRead) -> Option<Parsed> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    if length > MAX_BODY {
        return None;
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((method, target, headers, body))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "",
    }
}

#[derive(Debug, Deserialize)]
struct Control {
    mode: Option<Mode>,
    delay_ms: Option<u64>,
    #[serde(default)]
    reset_stats: bool,
    /// Canned answers to add (or replace), by session key.
    #[serde(default)]
    answers: HashMap<String, Canned>,
}

#[derive(Debug, Deserialize)]
struct ValidateRequest {
    session_token: String,
}

/// Answers one request (everything but the socket), so it can be tested directly.
fn handle(state: &mut State, method: &str, target: &str, body: &[u8]) -> Response {
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/_stats") => Response::json(
            200,
            &json!({"total": state.stats.total, "sessions": state.stats.sessions,
                    "mode": state.mode, "delay_ms": state.delay.as_millis()}),
        ),
        ("POST", "/_control") => match serde_json::from_slice::<Control>(body) {
            Ok(control) => {
                if let Some(mode) = control.mode {
                    state.mode = mode;
                }
                if let Some(ms) = control.delay_ms {
                    state.delay = Duration::from_millis(ms);
                }
                if control.reset_stats {
                    state.stats = Stats::default();
                }
                state.canned.extend(control.answers);
                Response::json(200, &json!({"mode": state.mode, "delay_ms": state.delay.as_millis()}))
            }
            Err(e) => Response::json(400, &json!({"error": e.to_string()})),
        },
        ("POST", p) if p == state.path => validate(state, body),
        (_, p) if p == state.path => Response::json(405, &json!({"error": "use POST"})),
        _ => Response::json(404, &json!({"error": "not found"})),
    }
}

fn validate(state: &mut State, body: &[u8]) -> Response {
    let token = serde_json::from_slice::<ValidateRequest>(body).map(|r| r.session_token);
    let key = token.as_ref().ok().map(|t| session_key(&state.sessions, t));
    state.stats.total = state.stats.total.saturating_add(1);
    let count = state.stats.sessions.entry(key.clone().unwrap_or_else(|| String::from("unknown"))).or_insert(0);
    *count = count.saturating_add(1);

    match state.mode {
        Mode::Fail => {
            return Response::json(
                500,
                &json!({"status": "error", "valid": false, "user": null, "expires_at": null,
                        "error": "validation service told to fail"}),
            )
        }
        Mode::Garbage => {
            return Response {
                status: 200,
                content_type: "application/json",
                body: b"<html>not json".to_vec(),
                delay: Duration::ZERO,
            }
        }
        Mode::Ok | Mode::Slow => {}
    }
    if let Some(canned) = key.as_ref().and_then(|k| state.canned.get(k)) {
        return Response::json(canned.status, &canned.body);
    }
    let invalid = |error: &str| {
        Response::json(
            200,
            &json!({"status": "ok", "valid": false, "user": null, "expires_at": null,
                    "error": error}),
        )
    };
    let mut response = match (key, token) {
        (Some(key), _) => match state.sessions.get(&key) {
            Some(session) if session.valid => Response::json(
                200,
                &json!({"status": "ok", "valid": true,
                        "user": {"user_id": session.user_id, "email": session.email,
                                 "display_name": session.display_name, "roles": session.roles},
                        "expires_at": session.expires_at, "error": null}),
            ),
            Some(_) => invalid("session inactive"),
            None => invalid("session not found"),
        },
        (None, token) => Response::json(
            400,
            &json!({"status": "error", "valid": false, "user": null, "expires_at": null,
                    "error": format!("bad request: {}", token.err().map(|e| e.to_string()).unwrap_or_default())}),
        ),
    };
    if state.mode == Mode::Slow {
        response.delay = state.delay;
    }
    response
}

/// The key a token is counted and looked up under: the token itself if the file has it, else
/// a JWT's `sid` claim (payload decoded, not verified: the filter verified it), else the token.
fn session_key(sessions: &HashMap<String, Session>, token: &str) -> String {
    if sessions.contains_key(token) {
        return token.to_owned();
    }
    jwt_sid(token).unwrap_or_else(|| token.to_owned())
}

fn jwt_sid(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sid")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        let sessions: HashMap<String, Session> = serde_yaml_ng::from_str(
            "s-42: {user_id: 42, email: ada@example.com, display_name: Ada, roles: [analyst], expires_at: '2026-01-15 10:00:00+00'}\n\
             opaque-1: {user_id: '7', valid: false}\n",
        )
        .unwrap();
        State {
            path: "/v".into(),
            sessions,
            mode: Mode::Ok,
            delay: Duration::ZERO,
            stats: Stats::default(),
            canned: HashMap::new(),
        }
    }

    fn body(r: &Response) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn answers_like_noetl_and_counts_per_session() {
        let mut s = state();
        // A JWT whose payload carries sid s-42 (signature irrelevant here).
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sid":"s-42"}"#);
        let jwt = format!("e30.{payload}.sig");
        let r =
            handle(&mut s, "POST", "/v", json!({"session_token": jwt, "credential": "pg_auth"}).to_string().as_bytes());
        assert_eq!(r.status, 200);
        assert_eq!(
            body(&r),
            json!({"status": "ok", "valid": true,
                   "user": {"user_id": 42, "email": "ada@example.com", "display_name": "Ada", "roles": ["analyst"]},
                   "expires_at": "2026-01-15 10:00:00+00", "error": null})
        );
        let r = handle(&mut s, "POST", "/v", br#"{"session_token": "opaque-1"}"#);
        assert_eq!(body(&r)["valid"], false);
        let r = handle(&mut s, "POST", "/v", br#"{"session_token": "nope"}"#);
        assert_eq!(body(&r)["error"], "session not found");
        assert_eq!(handle(&mut s, "POST", "/v", b"{").status, 400);
        assert_eq!(s.stats.total, 4);
        assert_eq!(s.stats.sessions.get("s-42"), Some(&1));
        assert_eq!(s.stats.sessions.get("unknown"), Some(&1));
        let stats = body(&handle(&mut s, "GET", "/_stats", b""));
        assert_eq!(stats["total"], 4);
    }

    #[test]
    fn control_switches_failure_modes() {
        let mut s = state();
        let req = br#"{"session_token": "s-42"}"#;
        handle(&mut s, "POST", "/_control", br#"{"mode": "fail"}"#);
        let r = handle(&mut s, "POST", "/v", req);
        assert_eq!((r.status, body(&r)["status"].clone()), (500, json!("error")));
        handle(&mut s, "POST", "/_control", br#"{"mode": "garbage"}"#);
        assert!(serde_json::from_slice::<Value>(&handle(&mut s, "POST", "/v", req).body).is_err());
        handle(&mut s, "POST", "/_control", br#"{"mode": "slow", "delay_ms": 250}"#);
        assert_eq!(handle(&mut s, "POST", "/v", req).delay, Duration::from_millis(250));
        handle(&mut s, "POST", "/_control", br#"{"mode": "ok", "reset_stats": true}"#);
        assert_eq!(s.stats.total, 0);
        assert_eq!(handle(&mut s, "POST", "/_control", b"{\"mode\": \"loud\"}").status, 400);
        assert_eq!(handle(&mut s, "GET", "/v", b"").status, 405);
        assert_eq!(handle(&mut s, "GET", "/x", b"").status, 404);
    }

    #[test]
    fn control_cans_an_answer_per_session() {
        let mut s = state();
        let canned = json!({"answers": {"s-42": {"status": 422, "body": {"detail": [{"msg": "field required"}]}},
                                        "weird": {"status": 200, "body": {"valid": true, "expires_at": 1.5}}}});
        assert_eq!(handle(&mut s, "POST", "/_control", canned.to_string().as_bytes()).status, 200);
        let r = handle(&mut s, "POST", "/v", br#"{"session_token": "s-42"}"#);
        assert_eq!((r.status, body(&r)), (422, json!({"detail": [{"msg": "field required"}]})));
        let r = handle(&mut s, "POST", "/v", br#"{"session_token": "weird"}"#);
        assert_eq!(body(&r)["expires_at"], 1.5);
        assert_eq!(s.stats.sessions.get("weird"), Some(&1), "canned answers are counted too");
        let r = handle(&mut s, "POST", "/v", br#"{"session_token": "opaque-1"}"#);
        assert_eq!(body(&r)["valid"], false, "other sessions answer as before");
    }
}

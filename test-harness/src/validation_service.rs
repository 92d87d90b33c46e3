//! A stand-in for NoETL's session-validation API (SPEC section 4), for tests and the local demo.
//!
//! `POST <path>` with `{"session_token": "...", "credential": "pg_auth"}` answers as NoETL's
//! server does: `{"status": "ok", "valid": true, "user": {...}, "expires_at": "...", "error": null}`.
//! Sessions come from a YAML or JSON file keyed by token or by `sid`; for a JWT the `sid` claim
//! is read from the (unverified) payload. `POST /api/auth/login` issues a NoETL-shaped opaque
//! session (32 lowercase hex characters) for the user in its body. Calls are counted per session (`GET /_stats`), and
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
        ("POST", LOGIN_PATH) => login(state, body),
        ("POST", p) if p == state.path => validate(state, body),
        (_, p) if p == state.path => Response::json(405, &json!({"error": "use POST"})),
        _ => Response::json(404, &json!({"error": "not found"})),
    }
}

/// Where the stand-in issues sessions, as NoETL's login does.
pub const LOGIN_PATH: &str = "/api/auth/login";

/// How long an issued session lasts: NoETL's sessions last 24 hours.
const SESSION_SECS: u64 = 24 * 3600;

/// Issues an opaque session the way NoETL's login does once it has checked the user: a token of
/// `md5(random()::text || clock_timestamp()::text)`'s shape (32 lowercase hex characters) that
/// the validation API then vouches for. The body is the session to create
/// (`{"user_id": 42, "roles": ["analyst"], ...}`); NoETL takes it from the verified ID token.
fn login(state: &mut State, body: &[u8]) -> Response {
    let mut session: Session = match serde_json::from_slice(body) {
        Ok(session) => session,
        Err(e) => return Response::json(422, &json!({"detail": [{"msg": e.to_string()}]})),
    };
    let Some(token) = random_hex_128() else {
        return Response::json(500, &json!({"status": "error", "error": "no randomness"}));
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    session.expires_at.get_or_insert_with(|| postgres_timestamp(now + SESSION_SECS));
    let answer = json!({"status": "ok", "session_token": token, "expires_at": session.expires_at,
                        "user": {"user_id": session.user_id, "email": session.email,
                                 "display_name": session.display_name, "roles": session.roles}});
    state.sessions.insert(token, session);
    Response::json(200, &answer)
}

/// 128 random bits as 32 lowercase hex characters (the length and alphabet of an MD5 digest).
fn random_hex_128() -> Option<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `secs` since the epoch as PostgreSQL prints a `timestamptz` in UTC (`2026-01-15 10:00:00+00`).
fn postgres_timestamp(secs: u64) -> String {
    // Days to a civil date: Howard Hinnant's `civil_from_days`, for the proleptic Gregorian calendar.
    let days = i64::try_from(secs / 86_400).unwrap_or(0) + 719_468;
    let (era, day_of_era) = (days.div_euclid(146_097), days.rem_euclid(146_097));
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let rest = secs % 86_400;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}+00", rest / 3600, rest / 60 % 60, rest % 60)
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
    fn login_issues_noetl_shaped_sessions_that_then_validate() {
        let mut s = state();
        let r =
            handle(&mut s, "POST", LOGIN_PATH, br#"{"user_id": 9, "email": "op@example.com", "roles": ["viewer"]}"#);
        assert_eq!(r.status, 200);
        let issued = body(&r);
        let token = issued["session_token"].as_str().unwrap().to_owned();
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{token}");
        let expires_at = issued["expires_at"].as_str().unwrap();
        assert!(is_postgres_utc(expires_at), "{expires_at}");
        let answer = body(&handle(&mut s, "POST", "/v", json!({"session_token": token}).to_string().as_bytes()));
        assert_eq!((answer["valid"].clone(), answer["user"]["roles"].clone()), (json!(true), json!(["viewer"])));
        assert_eq!(answer["expires_at"], issued["expires_at"]);
        let other = body(&handle(&mut s, "POST", LOGIN_PATH, br#"{"user_id": 9}"#));
        assert_ne!(other["session_token"], issued["session_token"], "each login is a new session");
        assert_eq!(handle(&mut s, "POST", LOGIN_PATH, br#"{"roles": []}"#).status, 422);
    }

    fn is_postgres_utc(s: &str) -> bool {
        s.len() == 22 && s.ends_with("+00") && s.as_bytes().get(10) == Some(&b' ')
    }

    #[test]
    fn postgres_timestamps_match_the_calendar() {
        assert_eq!(postgres_timestamp(0), "1970-01-01 00:00:00+00");
        assert_eq!(postgres_timestamp(951_782_400), "2000-02-29 00:00:00+00");
        assert_eq!(postgres_timestamp(1_768_471_200), "2026-01-15 10:00:00+00");
        assert_eq!(postgres_timestamp(4_107_542_399), "2100-02-28 23:59:59+00");
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

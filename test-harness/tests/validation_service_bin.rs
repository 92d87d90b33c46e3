//! The validation-service binary over real HTTP on 127.0.0.1.

// Test helpers outside #[test] functions: failing loudly is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

struct Service {
    child: Child,
    addr: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Service {
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_validation-service")).args(args).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap().to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    Service { child, addr }
}

/// One request on its own connection; returns (status, body).
fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[test]
fn answers_validation_counts_calls_and_obeys_control() {
    let dir = std::env::temp_dir().join(format!("validation-service-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sessions = dir.join("sessions.yaml");
    std::fs::write(
        &sessions,
        "s-42:\n  user_id: 42\n  email: ada@example.com\n  display_name: Ada\n  roles: [analyst]\n  expires_at: '2026-01-15 10:00:00+00'\n",
    )
    .unwrap();
    let service = start(&["--port", "0", "--sessions", sessions.to_str().unwrap()]);
    let validate = |token: &str| {
        request(
            &service.addr,
            "POST",
            "/api/auth/session/validate",
            &json!({"session_token": token, "credential": "pg_auth"}).to_string(),
        )
    };

    let (status, body) = validate("s-42");
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["valid"], true);
    assert_eq!(body["user"]["user_id"], 42);
    assert_eq!(body["user"]["roles"], json!(["analyst"]));
    assert_eq!(body["expires_at"], "2026-01-15 10:00:00+00");
    assert_eq!(body["error"], Value::Null);

    let (_, body) = validate("unknown-token");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["valid"], false);

    let (status, _) = request(&service.addr, "POST", "/_control", r#"{"mode": "fail"}"#);
    assert_eq!(status, 200);
    assert_eq!(validate("s-42").0, 500);

    let (_, stats) = request(&service.addr, "GET", "/_stats", "");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["total"], 3);
    assert_eq!(stats["sessions"]["s-42"], 2);
    assert_eq!(stats["mode"], "fail");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_sessions_file_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_validation-service"))
        .args(["--sessions", "/nonexistent/sessions.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read"));
}

//! validation-service: a stand-in for NoETL's session-validation API (SPEC section 4).
//!
//! ```text
//! validation-service --port 0 --sessions sessions.yaml
//! listening on 127.0.0.1:PORT
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use playbook_guard_test_harness::validation_service::{load_sessions, Mode, ServiceConfig, ValidationService};

/// Answers `POST <path> {"session_token": ..}` from a sessions file; `GET /_stats` counts calls,
/// `POST /_control {"mode": "ok|fail|slow|garbage", "delay_ms": N, "reset_stats": true}` changes
/// how it answers. Listens on 127.0.0.1 only.
#[derive(Debug, Parser)]
#[command(name = "validation-service", version)]
struct Args {
    /// Port to listen on (0: pick a free one; the line `listening on 127.0.0.1:PORT` says which).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Sessions file (YAML or JSON): session key (token or JWT `sid`) -> {user_id, email,
    /// display_name, roles, expires_at, valid}.
    #[arg(long)]
    sessions: Option<PathBuf>,
    /// The validation path.
    #[arg(long, default_value = "/api/auth/session/validate")]
    path: String,
    /// How to answer at start.
    #[arg(long, value_enum, default_value_t = Mode::Ok)]
    mode: Mode,
    /// How long `slow` waits, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sessions = match args.sessions.as_deref().map(load_sessions).transpose() {
        Ok(sessions) => sessions.unwrap_or_default(),
        Err(e) => {
            eprintln!("validation-service: {e}");
            return ExitCode::from(2);
        }
    };
    let config =
        ServiceConfig { path: args.path, sessions, mode: args.mode, delay: Duration::from_millis(args.delay_ms) };
    let service = match ValidationService::start(args.port, config) {
        Ok(service) => service,
        Err(e) => {
            eprintln!("validation-service: cannot listen on 127.0.0.1:{}: {e}", args.port);
            return ExitCode::from(1);
        }
    };
    // Scripts read this line to learn the port; print it only once the socket is bound.
    println!("listening on {}", service.addr());
    service.wait();
    ExitCode::SUCCESS
}

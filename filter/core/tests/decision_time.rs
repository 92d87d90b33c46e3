//! Time per request of the core's decision alone (no proxy-wasm, no Envoy), natively and in V8,
//! to set beside the instruction counts and requests/s of `make bench`. A measurement, not a
//! test: ignored by `make test`, run by `make bench` (release builds, both runs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
// A measurement reads the clock; the core, which the clippy rule is for, never does.
#![allow(clippy::disallowed_methods)]

use playbook_guard_core::testing::{bearer, guard, send, token, NOW};
use playbook_guard_core::{Guard, Verdict};
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
use std::time::Instant;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::{wasm_bindgen_test as test, Instant};

const REQUESTS: u32 = 20_000;

/// One request, sent to a guard until it is decided.
type Request<'a> = &'a dyn Fn(&Guard) -> Verdict;

/// Prints where each run shows it: stdout natively, the console in V8.
macro_rules! report {
    ($($arg:tt)*) => {{
        #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
        wasm_bindgen_test::console_log!($($arg)*);
        #[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
        println!($($arg)*);
    }};
}

/// Microseconds per decision of `request`, over [`REQUESTS`] after one warm-up (which fills the
/// worker's verified-token cache, as the first request of a session does in Envoy).
fn per_request(g: &Guard, request: Request) -> f64 {
    let _ = request(g);
    let start = Instant::now();
    for _ in 0..REQUESTS {
        let _ = std::hint::black_box(request(g));
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(REQUESTS)
}

#[test]
#[ignore = "a measurement: make bench runs it"]
fn decision_time_per_request() {
    let g = guard();
    let analyst = bearer(&token(&["analyst"], NOW));
    let runtime = if cfg!(all(target_arch = "wasm32", target_os = "unknown")) { "V8" } else { "native" };
    let cases: [(&str, Request); 3] = [
        ("GET a playbook by path, allowed", &|g| send(g, "GET", "/api/catalog/data/daily_load", &analyst, "")),
        ("GET a system playbook, denied", &|g| send(g, "GET", "/api/catalog/system/reset", &analyst, "")),
        ("POST /api/run/playbook, JSON body", &|g| {
            send(g, "POST", "/api/run/playbook", &analyst, r#"{"path": "data/x"}"#)
        }),
    ];
    for (name, request) in cases {
        report!("core decision ({runtime}): {name}: {:.2} us/request", per_request(&g, request));
    }
}

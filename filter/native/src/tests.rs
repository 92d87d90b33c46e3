//! The module's boundary, driven through its exported hooks against a stand-in of Envoy's
//! callbacks ([`fake`]), so these tests run without Envoy.

// The stand-in's state is a test's own thread-local, never borrowed twice.
#![allow(clippy::disallowed_methods)]

use std::ffi::c_void;

use playbook_guard_core::testing;

use crate::abi::{self, EnvoyBuffer, EnvoyHeader};
use crate::hooks::{self, boundary, stream_boundary};

/// Envoy's callbacks as the tests see them: what the module asked for, per thread.
#[allow(clippy::missing_safety_doc, missing_docs)]
pub mod fake {
    use std::cell::RefCell;

    use crate::abi::{
        ConfigEnvoyPtr, EnvoyBuffer, EnvoyHeader, FilterEnvoyPtr, ModuleBuffer, ModuleHeader, SchedulerPtr,
    };

    #[derive(Debug, Default)]
    pub struct Envoy {
        /// Request headers the stream has.
        pub headers: Vec<(String, String)>,
        /// Local replies sent (status).
        pub replies: Vec<u32>,
        /// Make the next header read panic, as a bug anywhere under a hook would.
        pub panic_on_headers: bool,
        /// Callouts sent.
        pub callouts: u64,
        /// Streams resumed (their Envoy pointers).
        pub continued: Vec<usize>,
        /// Events posted through streams' schedulers: (the stream's Envoy pointer, event).
        pub posted: Vec<(usize, u64)>,
        /// Headers set (name, value; empty when removed).
        pub set: Vec<(String, String)>,
        /// Gauges set through a configuration, with no stream: (id, value).
        pub config_gauges: Vec<(usize, u64)>,
    }

    thread_local! {
        pub static ENVOY: RefCell<Envoy> = RefCell::default();
    }

    fn envoy<T>(f: impl FnOnce(&mut Envoy) -> T) -> T {
        ENVOY.with(|e| f(&mut e.borrow_mut()))
    }

    pub unsafe fn envoy_dynamic_module_callback_log(_: u32, _: ModuleBuffer) {}
    pub unsafe fn envoy_dynamic_module_callback_log_enabled(_: u32) -> bool {
        false
    }
    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        _: ConfigEnvoyPtr,
        _: ModuleBuffer,
        _: *mut ModuleBuffer,
        _: usize,
        id: *mut usize,
    ) -> u32 {
        unsafe { *id = 1 };
        0
    }
    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        c: ConfigEnvoyPtr,
        n: ModuleBuffer,
        l: *mut ModuleBuffer,
        s: usize,
        id: *mut usize,
    ) -> u32 {
        unsafe { envoy_dynamic_module_callback_http_filter_config_define_counter(c, n, l, s, id) }
    }
    pub unsafe fn envoy_dynamic_module_callback_http_filter_increment_counter(
        _: FilterEnvoyPtr,
        _: usize,
        _: *mut ModuleBuffer,
        _: usize,
        _: u64,
    ) -> u32 {
        0
    }
    pub unsafe fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        _: ConfigEnvoyPtr,
        id: usize,
        _: *mut ModuleBuffer,
        _: usize,
        value: u64,
    ) -> u32 {
        envoy(|e| e.config_gauges.push((id, value)));
        0
    }
    pub unsafe fn envoy_dynamic_module_callback_http_filter_set_gauge(
        _: FilterEnvoyPtr,
        _: usize,
        _: *mut ModuleBuffer,
        _: usize,
        _: u64,
    ) -> u32 {
        0
    }
    pub unsafe fn envoy_dynamic_module_callback_http_get_headers_size(_: FilterEnvoyPtr, _: u32) -> usize {
        envoy(|e| {
            if std::mem::take(&mut e.panic_on_headers) {
                panic!("a bug under a hook");
            }
            e.headers.len()
        })
    }
    pub unsafe fn envoy_dynamic_module_callback_http_get_headers(
        _: FilterEnvoyPtr,
        _: u32,
        result: *mut EnvoyHeader,
    ) -> bool {
        // The strings live in the thread-local, unchanged until the test changes them.
        envoy(|e| {
            for (i, (n, v)) in e.headers.iter().enumerate() {
                unsafe {
                    *result.add(i) = EnvoyHeader {
                        key_ptr: n.as_ptr(),
                        key_length: n.len(),
                        value_ptr: v.as_ptr(),
                        value_length: v.len(),
                    }
                };
            }
        });
        true
    }
    /// The first request header of that name (the stand-in has no response headers).
    pub unsafe fn envoy_dynamic_module_callback_http_get_header(
        _: FilterEnvoyPtr,
        header_type: u32,
        name: ModuleBuffer,
        value: *mut EnvoyBuffer,
        _: usize,
        _: *mut usize,
    ) -> bool {
        let name = unsafe { std::slice::from_raw_parts(name.ptr, name.length) };
        // The strings live in the thread-local, unchanged until the test changes them.
        envoy(|e| {
            let found =
                e.headers.iter().find(|(n, _)| header_type == crate::abi::REQUEST_HEADER && n.as_bytes() == name);
            if let Some((_, v)) = found {
                unsafe { *value = EnvoyBuffer { ptr: v.as_ptr(), length: v.len() } };
            }
            found.is_some()
        })
    }
    pub unsafe fn envoy_dynamic_module_callback_http_set_header(
        _: FilterEnvoyPtr,
        _: u32,
        name: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool {
        let text = |b: ModuleBuffer| {
            if b.ptr.is_null() {
                String::new()
            } else {
                String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(b.ptr, b.length) }).into_owned()
            }
        };
        envoy(|e| e.set.push((text(name), text(value))));
        true
    }
    pub unsafe fn envoy_dynamic_module_callback_http_add_header(
        _: FilterEnvoyPtr,
        _: u32,
        _: ModuleBuffer,
        _: ModuleBuffer,
    ) -> bool {
        true
    }
    pub unsafe fn envoy_dynamic_module_callback_http_send_response(
        _: FilterEnvoyPtr,
        status: u32,
        _: *mut ModuleHeader,
        _: usize,
        _: ModuleBuffer,
        _: ModuleBuffer,
    ) {
        envoy(|e| e.replies.push(status));
    }
    pub unsafe fn envoy_dynamic_module_callback_http_get_body_chunks_size(_: FilterEnvoyPtr, _: u32) -> usize {
        0
    }
    pub unsafe fn envoy_dynamic_module_callback_http_get_body_chunks(
        _: FilterEnvoyPtr,
        _: u32,
        _: *mut EnvoyBuffer,
    ) -> bool {
        false
    }
    pub unsafe fn envoy_dynamic_module_callback_http_get_body_size(_: FilterEnvoyPtr, _: u32) -> usize {
        0
    }
    pub unsafe fn envoy_dynamic_module_callback_http_received_buffered_request_body(_: FilterEnvoyPtr) -> bool {
        false
    }
    pub unsafe fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterEnvoyPtr) {
        envoy(|e| e.continued.push(filter as usize));
    }
    pub unsafe fn envoy_dynamic_module_callback_http_filter_http_callout(
        _: FilterEnvoyPtr,
        id: *mut u64,
        _: ModuleBuffer,
        _: *mut ModuleHeader,
        _: usize,
        _: ModuleBuffer,
        _: u64,
    ) -> u32 {
        envoy(|e| {
            e.callouts += 1;
            unsafe { *id = e.callouts };
        });
        0
    }
    /// A stream's scheduler is its Envoy pointer, so a test sees which stream was posted to.
    pub unsafe fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: FilterEnvoyPtr) -> SchedulerPtr {
        filter
    }
    pub unsafe fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: SchedulerPtr, event: u64) {
        envoy(|e| e.posted.push((scheduler as usize, event)));
    }
    pub unsafe fn envoy_dynamic_module_callback_http_filter_scheduler_delete(_: SchedulerPtr) {}
}

const CONFIG: &str = r#"{
  "providers": [{"name": "noetl", "issuer": "https://noetl.local", "algorithms": ["HS256"],
                 "secret_env": "PLAYBOOK_GUARD_NATIVE_TEST_SECRET", "roles_claim": "roles"}],
  "routes": [{"match": {"glob": "/api/**"}, "authenticate": true}],
  "policy": {"version": "1", "roles": {}}
}"#;

fn replies() -> Vec<u32> {
    fake::ENVOY.with(|e| std::mem::take(&mut e.borrow_mut().replies))
}

/// The secrets the test configurations name, in the environment (once, before any test reads it).
fn secrets() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: set once, before any configuration of these tests reads the environment.
    ONCE.call_once(|| unsafe {
        std::env::set_var("PLAYBOOK_GUARD_NATIVE_TEST_SECRET", "a secret of at least thirty-two bytes!");
        std::env::set_var(testing::SECRET_ENV, testing::SECRET);
    });
}

/// A configuration from `json`, through the exported hook.
fn configure(json: &str) -> *const c_void {
    secrets();
    let json = EnvoyBuffer { ptr: json.as_ptr(), length: json.len() };
    // SAFETY: the buffers live for the call.
    unsafe { hooks::envoy_dynamic_module_on_http_filter_config_new(std::ptr::null_mut(), EnvoyBuffer::EMPTY, json) }
}

/// The request headers every stream of the test has.
fn set_headers(headers: &[(&str, &str)]) {
    let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    fake::ENVOY.with(|e| e.borrow_mut().headers = headers);
}

/// A configuration and a stream of it, through the exported hooks.
fn stream(headers: &[(&str, &str)]) -> (*const c_void, *const c_void, *mut c_void) {
    set_headers(headers);
    let config = configure(CONFIG);
    assert!(!config.is_null(), "the configuration is taken");
    // Never dereferenced by the stand-in.
    let envoy = 0x1000 as *mut c_void;
    // SAFETY: `config` is live.
    let filter = unsafe { hooks::envoy_dynamic_module_on_http_filter_new(config, envoy) };
    assert!(!filter.is_null());
    (config, filter, envoy)
}

fn end(config: *const c_void, filter: *const c_void) {
    // SAFETY: each freed once.
    unsafe {
        hooks::envoy_dynamic_module_on_http_filter_destroy(filter);
        hooks::envoy_dynamic_module_on_http_filter_config_destroy(config);
    }
}

#[test]
fn a_request_is_decided_through_the_hooks() {
    let (config, filter, envoy) = stream(&[(":method", "GET"), (":path", "/api/me"), (":authority", "x")]);
    // SAFETY: `filter` is live.
    let status = unsafe { hooks::envoy_dynamic_module_on_http_filter_request_headers(envoy, filter, true) };
    assert_eq!(status, abi::HEADERS_STOP_ITERATION, "held: answered locally");
    assert_eq!(replies(), vec![401], "no token: 401");
    end(config, filter);
}

#[test]
fn a_configuration_reports_its_policy_version_when_taken_and_a_refused_one_reports_nothing() {
    let taken = || fake::ENVOY.with(|e| std::mem::take(&mut e.borrow_mut().config_gauges));
    taken();
    let config = configure(CONFIG);
    assert!(!config.is_null());
    // SAFETY: `config` came from the hook and is live until destroyed below.
    let hash = unsafe { &*config.cast::<crate::host::Config>() }.guard.policy_version_hash();
    // Before any stream: ECDS delivers a configuration that may see no request for a while.
    assert_eq!(taken(), vec![(1, hash)]);
    assert!(configure(
        r#"{"policy": {"version": "2", "roles": {"a": {"allow": [{"permissions": ["view"], "playbooks": ["/x"]}]}}}}"#
    )
    .is_null());
    assert_eq!(taken(), vec![], "a refused configuration leaves the live one's hash in place");
    // SAFETY: freed once.
    unsafe { hooks::envoy_dynamic_module_on_http_filter_config_destroy(config) };
}

#[test]
fn a_hook_whose_body_panics_answers_503_and_stops_the_stream() {
    let (config, filter, envoy) = stream(&[(":method", "GET"), (":path", "/api/me")]);
    fake::ENVOY.with(|e| e.borrow_mut().panic_on_headers = true);
    // SAFETY: `filter` is live.
    let status = unsafe { hooks::envoy_dynamic_module_on_http_filter_request_headers(envoy, filter, true) };
    assert_eq!(status, abi::HEADERS_STOP_ITERATION);
    assert_eq!(replies(), vec![503], "a panic under the hook answers 503, and does not unwind into Envoy");
    // The module goes on serving: the next request is decided as usual.
    // SAFETY: `filter` is live.
    let status = unsafe { hooks::envoy_dynamic_module_on_http_filter_request_headers(envoy, filter, true) };
    assert_eq!((status, replies()), (abi::HEADERS_STOP_ITERATION, vec![401]));
    end(config, filter);
}

#[test]
fn a_panic_in_the_fallback_itself_still_returns_the_last_resort() {
    let got = boundary("test", || -> u32 { panic!("body") }, || panic!("fallback"), 7);
    assert_eq!(got, 7);
    let got = stream_boundary("test", std::ptr::null_mut(), abi::HEADERS_STOP_ITERATION, || panic!("body"));
    assert_eq!((got, replies()), (abi::HEADERS_STOP_ITERATION, vec![503]));
}

#[test]
fn a_bad_configuration_is_refused_not_a_crash() {
    let json = EnvoyBuffer { ptr: b"{not json".as_ptr(), length: 9 };
    // SAFETY: the buffers live for the call.
    let config = unsafe {
        hooks::envoy_dynamic_module_on_http_filter_config_new(std::ptr::null_mut(), EnvoyBuffer::EMPTY, json)
    };
    assert!(config.is_null());
}

#[test]
fn the_module_reports_the_abi_version_it_was_written_for() {
    let version = hooks::envoy_dynamic_module_on_program_init();
    assert!(!version.is_null(), "tests run with panic = unwind");
    // SAFETY: a NUL-terminated static.
    let version = unsafe { std::ffi::CStr::from_ptr(version.cast()) };
    assert_eq!(version.to_str().ok(), Some("v0.2.0"));
}

#[test]
fn a_callout_answer_is_read_whatever_envoy_hands_over() {
    use crate::abi::EnvoyHeader;
    use crate::convert::callout_answer;

    let header = |n: &'static str, v: &'static str| EnvoyHeader {
        key_ptr: n.as_ptr(),
        key_length: n.len(),
        value_ptr: v.as_ptr(),
        value_length: v.len(),
    };
    let headers = [header("content-type", "application/json"), header(":status", "200")];
    let chunks = [EnvoyBuffer { ptr: b"{\"a\"".as_ptr(), length: 4 }, EnvoyBuffer { ptr: b":1}".as_ptr(), length: 3 }];
    // SAFETY: every array and buffer lives for the calls.
    unsafe {
        assert_eq!(callout_answer(0, headers.as_ptr(), 2, chunks.as_ptr(), 2), (Some(200), b"{\"a\":1}".to_vec()));
        // A reset (or a body over the limit): no answer, whatever came with it.
        assert_eq!(callout_answer(1, headers.as_ptr(), 2, chunks.as_ptr(), 2), (None, Vec::new()));
        // Null arrays, as Envoy gives for an empty response.
        assert_eq!(callout_answer(0, std::ptr::null(), 0, std::ptr::null(), 0), (None, Vec::new()));
        assert_eq!(callout_answer(0, headers.as_ptr(), 2, std::ptr::null(), 0), (Some(200), Vec::new()));
        // A `:status` that is not a number is no status.
        let odd = [header(":status", "2oo"), header(":status", "")];
        assert_eq!(callout_answer(0, odd.as_ptr(), 2, chunks.as_ptr(), 0).0, None);
        // Empty buffers with null pointers read as empty.
        let empty = [EnvoyBuffer::EMPTY, EnvoyBuffer { ptr: std::ptr::null(), length: 5 }];
        assert_eq!(callout_answer(0, headers.as_ptr(), 2, empty.as_ptr(), 2), (Some(200), Vec::new()));
    }
}

#[test]
fn a_waiter_on_the_same_worker_is_released_through_its_own_scheduler() {
    let cfg = testing::config(serde_json::json!({"validation": {"cluster": "noetl", "timeout_ms": 1000}}));
    let config = configure(&cfg.to_string());
    assert!(!config.is_null(), "the configuration is taken");
    let now = crate::host::now_ms() / 1000;
    let auth = format!("Bearer {}", testing::token(&["admin"], now));
    set_headers(&[(":method", "GET"), (":path", "/api/catalog/data/x/ui_schema"), ("authorization", &auth)]);
    let (a_envoy, b_envoy) = (0xa000 as *mut c_void, 0xb000 as *mut c_void);
    // SAFETY: `config` is live; each stream is used while live and freed once.
    unsafe {
        let a = hooks::envoy_dynamic_module_on_http_filter_new(config, a_envoy);
        let b = hooks::envoy_dynamic_module_on_http_filter_new(config, b_envoy);
        // The same session twice: the first asks the validation service, the second waits for it.
        assert_eq!(
            hooks::envoy_dynamic_module_on_http_filter_request_headers(a_envoy, a, true),
            abi::HEADERS_STOP_ITERATION
        );
        assert_eq!(
            hooks::envoy_dynamic_module_on_http_filter_request_headers(b_envoy, b, true),
            abi::HEADERS_STOP_ITERATION
        );
        assert_eq!(fake::ENVOY.with(|e| e.borrow().callouts), 1, "one callout for the session");

        // The answer comes to the first request, in its own hook: it is let go at once, and the
        // second is posted to, through its own scheduler, not touched from the first's hook.
        let status =
            [EnvoyHeader { key_ptr: b":status".as_ptr(), key_length: 7, value_ptr: b"200".as_ptr(), value_length: 3 }];
        let body = br#"{"valid": true, "user": {"user_id": 7, "roles": ["analyst"]}}"#;
        let chunks = [EnvoyBuffer { ptr: body.as_ptr(), length: body.len() }];
        hooks::envoy_dynamic_module_on_http_filter_http_callout_done(
            a_envoy,
            a,
            1,
            0,
            status.as_ptr(),
            1,
            chunks.as_ptr(),
            1,
        );
        let (continued, posted) = fake::ENVOY.with(|e| (e.borrow().continued.clone(), e.borrow().posted.clone()));
        assert_eq!(continued, vec![0xa000]);
        assert_eq!(posted, vec![(0xb000, crate::host::EVENT_DEFERRED)]);

        // Envoy runs the posted event on the second request: it is let go there.
        hooks::envoy_dynamic_module_on_http_filter_scheduled(b_envoy, b, crate::host::EVENT_DEFERRED);
        assert_eq!(fake::ENVOY.with(|e| e.borrow().continued.clone()), vec![0xa000, 0xb000]);
        assert_eq!(replies(), Vec::<u32>::new(), "both allowed");

        hooks::envoy_dynamic_module_on_http_filter_destroy(a);
        hooks::envoy_dynamic_module_on_http_filter_destroy(b);
        hooks::envoy_dynamic_module_on_http_filter_config_destroy(config);
    }
}

/// A small deterministic generator (xorshift64*), so a failing case replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn text(&mut self) -> String {
        const BITS: &[&str] =
            &["a", "/", "%2e", "..", " ", "\t", ",", ";", "=", "\"", "é", "\u{0}", "Bearer ", "{", "}"];
        (0..self.below(12)).map(|_| self.pick(BITS)).collect()
    }
}

#[test]
fn random_requests_through_the_hooks_never_reach_the_panic_boundary() {
    // Without a validation service or a resolver nothing answers 503 but the boundary (or a
    // host that gives no headers, which the stand-in never does).
    let (config, first, _) = stream(&[]);
    // SAFETY: freed once.
    unsafe { hooks::envoy_dynamic_module_on_http_filter_destroy(first) };
    let mut answered = 0;
    let names = [
        ":method",
        ":path",
        ":authority",
        "authorization",
        "cookie",
        "x-session-token",
        "x-noetl-user-id",
        "x_noetl_user_roles",
        "content-type",
        "content-length",
        "transfer-encoding",
        "x-playbook",
    ];
    let values = ["GET", "POST", "/api/catalog/data/x/ui_schema", "/api/execute", "/api/me", "/health", "Bearer a.b.c"];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..2000 {
        let headers: Vec<(String, String)> = (0..rng.below(10))
            .map(|_| {
                let name = if rng.below(4) == 0 { rng.text() } else { rng.pick(&names).to_owned() };
                let value = if rng.below(2) == 0 { rng.text() } else { rng.pick(&values).to_owned() };
                (name, value)
            })
            .collect();
        fake::ENVOY.with(|e| e.borrow_mut().headers = headers.clone());
        let envoy = (0x1_0000 + case) as *mut c_void;
        // SAFETY: `config` is live; the stream is used while live and freed once.
        unsafe {
            let filter = hooks::envoy_dynamic_module_on_http_filter_new(config, envoy);
            hooks::envoy_dynamic_module_on_http_filter_request_headers(envoy, filter, rng.below(2) == 0);
            hooks::envoy_dynamic_module_on_http_filter_request_body(envoy, filter, rng.below(2) == 0);
            hooks::envoy_dynamic_module_on_http_filter_request_trailers(envoy, filter);
            hooks::envoy_dynamic_module_on_http_filter_response_headers(envoy, filter, true);
            hooks::envoy_dynamic_module_on_http_filter_destroy(filter);
        }
        let got = replies();
        assert!(!got.contains(&503), "case {case}: a 503 from the boundary for {headers:?}");
        answered += got.len();
    }
    assert!(answered > 500, "the cases reach decisions ({answered} answered locally)");
    // SAFETY: freed once.
    unsafe { hooks::envoy_dynamic_module_on_http_filter_config_destroy(config) };
}

/// The floor (`floor` feature), driven directly: the product's hooks drive it only in that build.
mod floor {
    use std::sync::Arc;

    use super::{fake, replies, set_headers};
    use crate::core::protocol::Flow;
    use crate::floor::{Config, Filter};

    fn set() -> Vec<(String, String)> {
        fake::ENVOY.with(|e| std::mem::take(&mut e.borrow_mut().set))
    }

    fn floor() -> Filter {
        let config = Arc::new(Config::new(std::ptr::null_mut(), b"{}").unwrap_or_else(|e| panic!("{e}")));
        Filter::new(&config, 0x1000 as *mut std::ffi::c_void).unwrap_or_else(|| panic!("a stream of the floor"))
    }

    #[test]
    fn the_floor_reads_authorization_and_sets_one_header() {
        set_headers(&[(":path", "/x"), ("authorization", "Bearer t")]);
        assert_eq!(floor().on_request_headers(true), Flow::Continue);
        assert_eq!(set(), vec![("x-floor".to_string(), "1".to_string())]);
        assert_eq!(replies(), Vec::<u32>::new());
    }

    #[test]
    fn the_floor_answers_a_request_without_authorization_401() {
        set_headers(&[(":path", "/x")]);
        assert_eq!(floor().on_request_headers(true), Flow::Pause, "held: answered locally");
        assert_eq!(replies(), vec![401]);
        assert_eq!(set(), Vec::<(String, String)>::new(), "nothing set on a refused request");
    }
}

mod headers {
    use super::set_headers;
    use crate::abi::REQUEST_HEADER;
    use crate::core::header_map::{serialize, HeaderMap};
    use crate::envoy;

    const ENVOY: *mut std::ffi::c_void = 0x1000 as *mut std::ffi::c_void;

    /// Writes each header count's map (beyond the stack array's 32 too) into a buffer that
    /// held a larger map before: it must come out as the core serialises it, and parse.
    #[test]
    fn the_headers_are_serialised_as_the_core_does_into_a_reused_buffer() {
        let mut out = serialize(&[("left", "over"); 40]);
        for n in [0, 1, 8, 32, 33, 70] {
            let names: Vec<String> = (0..n).map(|i| format!("x-h{i}")).collect();
            let values: Vec<String> = (0..n).map(|i| "v".repeat(i)).collect();
            let pairs: Vec<(&str, &str)> =
                names.iter().map(String::as_str).zip(values.iter().map(String::as_str)).collect();
            set_headers(&pairs);
            assert!(envoy::header_bytes_into(ENVOY, REQUEST_HEADER, &mut out));
            assert_eq!(out, serialize(&pairs), "{n} headers");
            assert_eq!(HeaderMap::parse(&out).map(|m| m.len()), Ok(n));
            assert_eq!(envoy::header_bytes(ENVOY, REQUEST_HEADER), Some(serialize(&pairs)));
        }
    }

    #[test]
    fn a_header_is_read_as_text() {
        set_headers(&[("authorization", "Bearer t\u{e9}")]);
        assert_eq!(envoy::header(ENVOY, REQUEST_HEADER, "authorization").as_deref(), Some("Bearer t\u{e9}"));
        assert_eq!(envoy::header(ENVOY, REQUEST_HEADER, "missing"), None);
    }
}

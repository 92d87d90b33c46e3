//! A callout's answer as Envoy hands it to `on_http_filter_http_callout_done`: any result code,
//! header array and body chunks (null arrays and null chunks, with any length beside them)
//! read to the status and body a plain reference reads, never a panic.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use playbook_guard_native::abi::{EnvoyBuffer, EnvoyHeader, CALLOUT_SUCCESS};
use playbook_guard_native::convert::callout_answer;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Mostly success (0); the other codes are resets, timeouts and the like.
    result: u8,
    /// `None`: a null array.
    headers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    /// `None`: a null array; a `None` chunk: a null buffer.
    chunks: Option<Vec<Option<Vec<u8>>>>,
    /// The length Envoy names beside a null array or buffer, which must never be read.
    null_length: u8,
}

/// A status as a plain reading would take it: decimal digits (a `+` before them allowed, as
/// Rust's integer parsing allows it), within `u32`.
fn reference_status(value: &[u8]) -> Option<u32> {
    let digits = value.strip_prefix(b"+").unwrap_or(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u32, |n, d| n.checked_mul(10)?.checked_add(u32::from(d - b'0')))
}

fuzz_target!(|input: Input| {
    let null_length = usize::from(input.null_length);
    let result = u32::from(input.result % 4);
    let headers: Option<Vec<EnvoyHeader>> = input.headers.as_ref().map(|pairs| {
        pairs
            .iter()
            .map(|(n, v)| EnvoyHeader {
                key_ptr: n.as_ptr(),
                key_length: n.len(),
                value_ptr: v.as_ptr(),
                value_length: v.len(),
            })
            .collect()
    });
    let chunks: Option<Vec<EnvoyBuffer>> = input.chunks.as_ref().map(|chunks| {
        chunks
            .iter()
            .map(|c| match c {
                Some(bytes) => EnvoyBuffer { ptr: bytes.as_ptr(), length: bytes.len() },
                None => EnvoyBuffer { ptr: std::ptr::null(), length: null_length },
            })
            .collect()
    });
    let (headers_ptr, headers_size) =
        headers.as_ref().map_or((std::ptr::null(), null_length), |h| (h.as_ptr(), h.len()));
    let (chunks_ptr, chunks_size) = chunks.as_ref().map_or((std::ptr::null(), null_length), |c| (c.as_ptr(), c.len()));
    // SAFETY: every non-null pointer is into `input` or the arrays above, which outlive the call.
    let (status, body) = unsafe { callout_answer(result, headers_ptr, headers_size, chunks_ptr, chunks_size) };

    let Some(pairs) = input.headers.as_ref().filter(|_| result == CALLOUT_SUCCESS) else {
        assert_eq!((status, body), (None, Vec::new()), "no answer: no status, no body");
        return;
    };
    let expected = pairs.iter().find(|(n, _)| n == b":status").and_then(|(_, v)| reference_status(v));
    assert_eq!(status, expected);
    let chunks = input.chunks.unwrap_or_default();
    assert_eq!(body, chunks.into_iter().flatten().flatten().collect::<Vec<u8>>());
});

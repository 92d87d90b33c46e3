//! The proxy-wasm ABI 0.2.1 vocabulary: status codes, enum values and the map serialization.
//!
//! The numbers are the ABI's (see the SDK's `types.rs`); the harness speaks them on the wire and
//! exposes them to tests as Rust enums.

/// A host call's result code (`WasmResult` in the ABI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Status {
    /// The call succeeded.
    Ok = 0,
    /// The key, buffer, queue or metric does not exist.
    NotFound = 1,
    /// An argument is out of range or names the wrong kind of thing.
    BadArgument = 2,
    /// A value could not be serialized.
    SerializationFailure = 3,
    /// A value could not be parsed.
    ParseFailure = 4,
    /// A pointer or length points outside the VM's memory.
    InvalidMemoryAccess = 6,
    /// The queue is empty.
    Empty = 7,
    /// The compare-and-swap token does not match the stored one.
    CasMismatch = 8,
    /// The host failed internally.
    InternalFailure = 10,
    /// The host does not implement the call.
    Unimplemented = 12,
}

impl Status {
    /// The ABI's integer for this status.
    #[must_use]
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// What a filter callback answers: go on or stop iteration (`Action` in the SDK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the stream go on to the next filter and upstream.
    Continue,
    /// Stop iteration until the filter calls `proxy_continue_stream` or answers locally.
    Pause,
}

impl Action {
    /// Reads a callback's return value; Envoy treats every non-zero value as a stop.
    #[must_use]
    pub fn from_code(code: i32) -> Self {
        if code == 0 {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

/// Log levels, lowest first, as `proxy_log` and `proxy_get_log_level` number them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Trace.
    Trace = 0,
    /// Debug.
    Debug = 1,
    /// Info.
    Info = 2,
    /// Warn.
    Warn = 3,
    /// Error.
    Error = 4,
    /// Critical: the SDK's panic hook logs panics at this level.
    Critical = 5,
}

impl LogLevel {
    /// Reads an ABI level; `None` for a number the ABI does not define.
    #[must_use]
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// Which buffer `proxy_get_buffer_bytes` / `proxy_set_buffer_bytes` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BufferType {
    /// The HTTP request body (what is buffered so far).
    HttpRequestBody,
    /// The HTTP response body.
    HttpResponseBody,
    /// The body of the response to a `proxy_http_call`, during `proxy_on_http_call_response`.
    HttpCallResponseBody,
    /// The VM configuration, during `proxy_on_vm_start`.
    VmConfiguration,
    /// The plugin configuration, during `proxy_on_configure`.
    PluginConfiguration,
}

impl BufferType {
    /// Reads an ABI buffer type; `None` for types the harness does not model (TCP, gRPC).
    #[must_use]
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => BufferType::HttpRequestBody,
            1 => BufferType::HttpResponseBody,
            4 => BufferType::HttpCallResponseBody,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            _ => return None,
        })
    }
}

/// Which header map a header call addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapType {
    /// Request headers.
    HttpRequestHeaders,
    /// Request trailers.
    HttpRequestTrailers,
    /// Response headers.
    HttpResponseHeaders,
    /// Response trailers.
    HttpResponseTrailers,
    /// Headers of the response to a `proxy_http_call`.
    HttpCallResponseHeaders,
    /// Trailers of the response to a `proxy_http_call`.
    HttpCallResponseTrailers,
}

impl MapType {
    /// Reads an ABI map type; `None` for gRPC metadata, which the harness does not model.
    #[must_use]
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => MapType::HttpRequestHeaders,
            1 => MapType::HttpRequestTrailers,
            2 => MapType::HttpResponseHeaders,
            3 => MapType::HttpResponseTrailers,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// The kinds of metric `proxy_define_metric` creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// Only goes up.
    Counter,
    /// Goes up and down, or is set.
    Gauge,
    /// Records values.
    Histogram,
}

impl MetricType {
    /// Reads an ABI metric type.
    #[must_use]
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => MetricType::Counter,
            1 => MetricType::Gauge,
            2 => MetricType::Histogram,
            _ => return None,
        })
    }
}

/// Which stream `proxy_continue_stream` / `proxy_close_stream` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// The HTTP request.
    HttpRequest,
    /// The HTTP response.
    HttpResponse,
    /// A TCP filter's downstream (not modelled beyond the status).
    Downstream,
    /// A TCP filter's upstream (not modelled beyond the status).
    Upstream,
}

impl StreamType {
    /// Reads an ABI stream type.
    #[must_use]
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => StreamType::HttpRequest,
            1 => StreamType::HttpResponse,
            2 => StreamType::Downstream,
            3 => StreamType::Upstream,
            _ => return None,
        })
    }
}

/// Serializes header pairs in the ABI's map format.
///
/// Layout: `u32` count, then `(u32 name_len, u32 value_len)` per pair, then each name and value
/// followed by a NUL byte. All integers little-endian.
#[must_use]
pub fn serialize_map<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let mut size = 4;
    for (name, value) in pairs {
        size += 8 + name.as_ref().len() + value.as_ref().len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&len_u32(name.as_ref().len()).to_le_bytes());
        out.extend_from_slice(&len_u32(value.as_ref().len()).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_ref());
        out.push(0);
        out.extend_from_slice(value.as_ref());
        out.push(0);
    }
    out
}

/// Parses the ABI's map format; `None` if the bytes are truncated or inconsistent.
///
/// An empty input is an empty map, as the SDK treats it.
#[must_use]
pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)? as usize;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut pairs = Vec::with_capacity(count.min(1024));
    for n in 0..count {
        let sizes = 4 + n * 8;
        let name_len = read_u32(bytes, sizes)? as usize;
        let value_len = read_u32(bytes, sizes + 4)? as usize;
        let name = bytes.get(data..data.checked_add(name_len)?)?;
        data = data.checked_add(name_len + 1)?;
        let value = bytes.get(data..data.checked_add(value_len)?)?;
        data = data.checked_add(value_len + 1)?;
        pairs.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    Some(pairs)
}

/// Splits a property path as `proxy_get_property` receives it (parts separated by NUL bytes).
#[must_use]
pub fn split_property_path(bytes: &[u8]) -> Vec<String> {
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|b| *b == 0).map(|part| String::from_utf8_lossy(part).into_owned()).collect()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

/// Lengths in the map format are `u32`; anything larger saturates (and would not fit a wasm32
/// memory anyway).
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_in_the_sdk_layout() {
        let pairs = [(":path", "/a"), ("x-empty", "")];
        let bytes = serialize_map(&pairs);
        // count, two (len, len) pairs, then ":path\0/a\0x-empty\0\0".
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &5u32.to_le_bytes());
        assert_eq!(&bytes[20..], b":path\0/a\0x-empty\0\0");
        let back = deserialize_map(&bytes).unwrap();
        assert_eq!(back[0], (":path".to_owned(), b"/a".to_vec()));
        assert_eq!(back[1], ("x-empty".to_owned(), Vec::new()));
        assert_eq!(deserialize_map(&[]).unwrap(), Vec::new());
        assert!(deserialize_map(&bytes[..bytes.len() - 3]).is_none());
    }

    #[test]
    fn property_paths_split_on_nul() {
        assert_eq!(split_property_path(b"plugin_name\0x"), vec!["plugin_name".to_owned(), "x".to_owned()]);
        assert!(split_property_path(b"").is_empty());
    }
}

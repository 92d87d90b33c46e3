//! One HTTP stream as the host sees it: header maps, buffered bodies, and where the request went.
//!
//! The flow rules are Envoy's: a `Pause` from a request callback stops iteration; body chunks still
//! arrive and are buffered while the body is paused; `Continue` (or `proxy_continue_stream`) sends
//! headers and buffered body upstream; a local response ends the stream.

use serde_json::Value;

/// Header pairs with Envoy's rules: names are lower-cased, lookups see the first value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    pairs: Vec<(String, Vec<u8>)>,
}

impl HeaderMap {
    /// A map holding `pairs` in order (names lower-cased).
    #[must_use]
    pub fn from_pairs<N: AsRef<str>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Self {
        let mut map = HeaderMap::default();
        for (name, value) in pairs {
            map.add(name.as_ref(), value.as_ref());
        }
        map
    }

    /// The first value of `name`, as bytes.
    #[must_use]
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        let name = name.to_ascii_lowercase();
        self.pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_slice())
    }

    /// The first value of `name`, lossily decoded.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<String> {
        self.get_bytes(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of `name`, in order.
    #[must_use]
    pub fn get_all(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        self.pairs.iter().filter(|(n, _)| *n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect()
    }

    /// Appends a value (`proxy_add_header_map_value`).
    pub fn add(&mut self, name: &str, value: &[u8]) {
        self.pairs.push((name.to_ascii_lowercase(), value.to_vec()));
    }

    /// Sets the only value of `name` (`proxy_replace_header_map_value`): the first occurrence
    /// keeps its place, later ones go; a missing header is appended.
    pub fn replace(&mut self, name: &str, value: &[u8]) {
        let name = name.to_ascii_lowercase();
        let mut seen = false;
        self.pairs.retain_mut(|(n, v)| {
            if *n != name {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            *v = value.to_vec();
            true
        });
        if !seen {
            self.pairs.push((name, value.to_vec()));
        }
    }

    /// Removes every value of `name` (`proxy_remove_header_map_value`).
    pub fn remove(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.pairs.retain(|(n, _)| *n != name);
    }

    /// All pairs in order, as bytes.
    #[must_use]
    pub fn pairs(&self) -> &[(String, Vec<u8>)] {
        &self.pairs
    }

    /// All pairs in order, values lossily decoded.
    #[must_use]
    pub fn to_strings(&self) -> Vec<(String, String)> {
        self.pairs.iter().map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned())).collect()
    }

    /// Replaces the whole map (`proxy_set_header_map_pairs`).
    pub fn set_pairs(&mut self, pairs: Vec<(String, Vec<u8>)>) {
        self.pairs = pairs.into_iter().map(|(n, v)| (n.to_ascii_lowercase(), v)).collect();
    }

    /// How many pairs the map holds (the `num_headers` Envoy passes to callbacks).
    #[must_use]
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the map is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// A response the filter sent itself (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// The HTTP status code.
    pub status: u32,
    /// Envoy's response code details, if the filter gave any.
    pub details: String,
    /// The response headers the filter set.
    pub headers: HeaderMap,
    /// The response body.
    pub body: Vec<u8>,
    /// The gRPC status, -1 for a plain HTTP answer.
    pub grpc_status: i32,
}

impl LocalResponse {
    /// The first value of a response header.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name)
    }

    /// The body, lossily decoded.
    #[must_use]
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    /// When the body is not JSON.
    pub fn body_json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Where a request stands after the host delivered what it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Went upstream with these headers and this body.
    Forwarded {
        /// The request headers as they left the filter.
        headers: HeaderMap,
        /// The body bytes that went upstream.
        body: Vec<u8>,
    },
    /// Answered by the filter.
    LocalResponse(LocalResponse),
    /// Stopped: waiting for the filter to continue it (e.g. after an HTTP callout).
    Paused,
    /// Reset by the filter (`proxy_close_stream`).
    Reset,
}

impl RequestOutcome {
    /// The local response, if the filter answered.
    #[must_use]
    pub fn local_response(&self) -> Option<&LocalResponse> {
        match self {
            RequestOutcome::LocalResponse(response) => Some(response),
            _ => None,
        }
    }

    /// The forwarded headers, if the request went upstream.
    #[must_use]
    pub fn forwarded_headers(&self) -> Option<&HeaderMap> {
        match self {
            RequestOutcome::Forwarded { headers, .. } => Some(headers),
            _ => None,
        }
    }

    /// The HTTP status a client would see: the local response's, 200 for a forwarded request
    /// (the stand-in upstream always answers 200), `None` while paused or after a reset.
    #[must_use]
    pub fn status(&self) -> Option<u32> {
        match self {
            RequestOutcome::Forwarded { .. } => Some(200),
            RequestOutcome::LocalResponse(response) => Some(response.status),
            RequestOutcome::Paused | RequestOutcome::Reset => None,
        }
    }
}

/// One direction (request or response) of a stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct Direction {
    /// Body bytes buffered in the host (the filter paused the body).
    pub(crate) buffered: Vec<u8>,
    /// Body bytes that went on.
    pub(crate) forwarded: Vec<u8>,
    /// Whether iteration is stopped.
    pub(crate) paused: bool,
    /// Whether the headers went on.
    pub(crate) headers_forwarded: bool,
    /// Whether the last body chunk or the trailers arrived.
    pub(crate) ended: bool,
    /// The headers callback paused and Envoy turned that into StopAllIteration (no
    /// `allow_on_headers_stop_iteration`): body and trailers wait in the host, unseen by the
    /// filter, until it continues the stream.
    pub(crate) stop_all: bool,
    /// Trailers that arrived during a StopAllIteration.
    pub(crate) held_trailers: Option<HeaderMap>,
    /// The filter continued a StopAllIteration stream: the held body and trailers are due.
    pub(crate) redeliver: bool,
}

impl Direction {
    /// Applies a callback's answer or a `proxy_continue_stream`.
    pub(crate) fn resume(&mut self) {
        self.paused = false;
        self.headers_forwarded = true;
        let buffered = std::mem::take(&mut self.buffered);
        self.forwarded.extend_from_slice(&buffered);
    }
}

/// The host's record of one HTTP context.
#[derive(Debug, Clone, Default)]
pub struct HttpStream {
    pub(crate) request_headers: HeaderMap,
    pub(crate) request_trailers: HeaderMap,
    pub(crate) response_headers: HeaderMap,
    pub(crate) response_trailers: HeaderMap,
    pub(crate) request: Direction,
    pub(crate) response: Direction,
    pub(crate) local_response: Option<LocalResponse>,
    pub(crate) reset: bool,
}

impl HttpStream {
    /// The request headers as they are now (after the filter's changes).
    #[must_use]
    pub fn request_headers(&self) -> &HeaderMap {
        &self.request_headers
    }

    /// The request trailers as they are now.
    #[must_use]
    pub fn request_trailers(&self) -> &HeaderMap {
        &self.request_trailers
    }

    /// The response headers as they are now.
    #[must_use]
    pub fn response_headers(&self) -> &HeaderMap {
        &self.response_headers
    }

    /// The local response, if the filter sent one.
    #[must_use]
    pub fn local_response(&self) -> Option<&LocalResponse> {
        self.local_response.as_ref()
    }

    /// Whether the request is stopped in the filter.
    #[must_use]
    pub fn request_paused(&self) -> bool {
        self.request.paused
    }

    /// Whether the response is stopped in the filter.
    #[must_use]
    pub fn response_paused(&self) -> bool {
        self.response.paused
    }

    /// The request body buffered in the host (not yet forwarded).
    #[must_use]
    pub fn buffered_request_body(&self) -> &[u8] {
        &self.request.buffered
    }

    /// Whether Envoy holds the request's body from the filter (headers paused without
    /// `allow_on_headers_stop_iteration`).
    #[must_use]
    pub fn request_held_from_filter(&self) -> bool {
        self.request.stop_all
    }

    /// Whether the filter reset the stream.
    #[must_use]
    pub fn was_reset(&self) -> bool {
        self.reset
    }

    /// Whether the stream is over for the filter (answered locally or reset): Envoy delivers no
    /// more callbacks for it.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.local_response.is_some() || self.reset
    }

    /// Where the request stands.
    #[must_use]
    pub fn request_outcome(&self) -> RequestOutcome {
        if let Some(response) = &self.local_response {
            RequestOutcome::LocalResponse(response.clone())
        } else if self.reset {
            RequestOutcome::Reset
        } else if self.request.paused || !self.request.headers_forwarded {
            RequestOutcome::Paused
        } else {
            RequestOutcome::Forwarded { headers: self.request_headers.clone(), body: self.request.forwarded.clone() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_follow_envoys_rules() {
        let mut map = HeaderMap::from_pairs(&[("A", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(map.get("a").as_deref(), Some("1"));
        assert_eq!(map.get_all("A"), vec!["1", "3"]);
        map.replace("a", b"9");
        assert_eq!(map.get_all("a"), vec!["9"]);
        assert_eq!(map.pairs()[0].0, "a");
        map.replace("c", b"new");
        assert_eq!(map.len(), 3);
        map.remove("B");
        assert_eq!(map.get("b"), None);
        map.set_pairs(vec![("X".into(), b"y".to_vec())]);
        assert_eq!(map.to_strings(), vec![("x".to_owned(), "y".to_owned())]);
    }
}

//! HTTP callouts (`proxy_http_call`): what the filter asked for, and the answer the test gives.
//!
//! Nothing leaves the process: a call waits in its VM until the test delivers a response, a
//! timeout or a reset, which is how a test controls exactly when a paused request resumes.

use std::time::Duration;

use crate::stream::HeaderMap;

/// A callout the filter dispatched and nobody has answered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// The token `proxy_http_call` returned; answer with it.
    pub token: u32,
    /// The context that dispatched the call (its answer is delivered there).
    pub context_id: u32,
    /// The Envoy cluster named as the upstream.
    pub upstream: String,
    /// The request headers, pseudo-headers included.
    pub headers: HeaderMap,
    /// The request body.
    pub body: Vec<u8>,
    /// The request trailers.
    pub trailers: HeaderMap,
    /// The timeout the filter asked for.
    pub timeout: Duration,
}

impl HttpCall {
    /// The body parsed as JSON.
    ///
    /// # Errors
    /// When the body is not JSON.
    pub fn body_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// The answer a test gives to a callout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallResponse {
    /// Response headers, `:status` among them.
    pub headers: HeaderMap,
    /// The response body.
    pub body: Vec<u8>,
    /// The response trailers.
    pub trailers: HeaderMap,
}

impl HttpCallResponse {
    /// A response with `status` and `body` and no other headers.
    #[must_use]
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        HttpCallResponse {
            headers: HeaderMap::from_pairs(&[(":status", status.to_string())]),
            body: body.into(),
            trailers: HeaderMap::default(),
        }
    }

    /// A JSON response with `status`.
    #[must_use]
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        let mut response = Self::new(status, body.to_string());
        response.headers.add("content-type", b"application/json");
        response
    }

    /// Adds a response header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.add(name, value.as_bytes());
        self
    }
}

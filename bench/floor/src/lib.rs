//! The Wasm floor: the least an Envoy Wasm HTTP filter can do per request. It reads
//! `authorization` and sets `x-floor: 1` on the request; that is the cost any V8 filter pays
//! (VM entry, the SDK's context bookkeeping, two header host calls), so `make bench` measures
//! playbook-guard against it rather than against no filter at all.
//!
//! A request without `authorization` gets a 401 from Envoy, so the bench can tell the floor is
//! really in the filter chain (a module that failed to load would let it through). The measured
//! requests all carry a token and take the read-one, set-one path.

#![deny(missing_docs)]

// The SDK's entry point (`_initialize`); the macro cannot carry a doc comment.
#[cfg(target_arch = "wasm32")]
#[allow(missing_docs)]
mod entry {
    use proxy_wasm::traits::{Context, HttpContext};
    use proxy_wasm::types::Action;

    proxy_wasm::main! {{
        // No root context of our own: the SDK's no-op root makes these HTTP contexts.
        proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Floor) });
    }}

    struct Floor;

    impl Context for Floor {}

    impl HttpContext for Floor {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            if self.get_http_request_header("authorization").is_none() {
                self.send_http_response(401, vec![], None);
                return Action::Pause;
            }
            self.set_http_request_header("x-floor", Some("1"));
            Action::Continue
        }
    }
}

//! What every host does with a request's head before the [`Worker`](super::Worker) sees it, so
//! the Wasm and native builds cannot drift apart: the identity headers a client sent are taken
//! out (they are ours alone, on every route, before anything reads the request), and a request
//! that carried some is not remembered by the hit memo.

use crate::guard::{Guard, RequestHead};
use crate::header_map::HeaderMap;

use super::{Body, Flow, Grant, Stat};

/// A request's head as the host hands it to [`Worker::head`](super::Worker::head).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// Every header but the identity headers the client sent.
    pub headers: Vec<(String, String)>,
    /// The identity headers the client sent: the host removes them from the request.
    pub removed: Vec<String>,
}

impl Head {
    /// The head of the request whose headers the host gave as `map`. Valid UTF-8 (nearly every
    /// name and value) is copied as it is; anything else lossily.
    pub fn from_map(guard: &Guard, map: &HeaderMap<'_>) -> Head {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let mut headers: Vec<(String, String)> = map.pairs().map(|(n, v)| (text(n), text(v))).collect();
        let removed: Vec<String> = guard
            .identity_headers_to_remove(headers.iter().map(|(n, _)| n.as_str()))
            .into_iter()
            .map(str::to_owned)
            .collect();
        headers.retain(|(name, _)| !removed.contains(name));
        Head { headers, removed }
    }

    /// The head as the guard reads it.
    pub fn request(&self) -> RequestHead<'_> {
        let pseudo = |name: &str| self.headers.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str());
        RequestHead { method: pseudo(":method"), path: pseudo(":path"), headers: &self.headers }
    }

    /// `body` as [`Worker::head`](super::Worker::head) takes it: what the request is remembered
    /// by is what the client sent, identity headers and all, so a request that carried some is
    /// not remembered.
    pub fn body<'a>(&self, body: Body<'a>) -> Body<'a> {
        match body {
            Body::Absent(Some(_)) if !self.removed.is_empty() => Body::Absent(None),
            body => body,
        }
    }
}

impl Grant {
    /// What a remembered allow counts when the host carries it out: `allowed`, then the stats
    /// the request counted when it was decided.
    pub fn stats(&self) -> impl Iterator<Item = Stat> + '_ {
        std::iter::once(Stat::Allowed).chain(self.counts.iter().copied())
    }
}

impl Flow {
    /// What a request's callback returns: the request goes on if the callback let it go
    /// (`self`) or the worker released it while the callback ran (`released`, from
    /// [`Worker::end`](super::Worker::end)).
    pub fn or(self, released: Flow) -> Flow {
        match (self, released) {
            (Flow::Continue, _) | (_, Flow::Continue) => Flow::Continue,
            (Flow::Pause, Flow::Pause) => Flow::Pause,
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::header_map::serialize;

    fn guard() -> Guard {
        let config = br#"{
          "providers": [{"name": "noetl", "issuer": "https://noetl.local", "algorithms": ["HS256"],
                         "secret_env": "SECRET", "roles_claim": "roles"}],
          "routes": [{"match": {"glob": "/api/**"}, "authenticate": true}],
          "policy": {"version": "1", "roles": {}}
        }"#;
        let secret = |_: &str| Some("a secret of at least thirty-two bytes!".to_owned());
        Guard::from_json(config, &secret).unwrap()
    }

    #[test]
    fn a_spoofed_identity_header_is_removed_and_the_request_not_remembered() {
        let guard = guard();
        let bytes = serialize(&[(":method", "GET"), (":path", "/api/me"), ("x-noetl-user-id", "1"), ("accept", "*/*")]);
        let map = HeaderMap::parse(&bytes).unwrap();
        let head = Head::from_map(&guard, &map);
        assert_eq!(head.removed, vec!["x-noetl-user-id".to_owned()]);
        assert!(head.headers.iter().all(|(n, _)| n != "x-noetl-user-id"));
        assert_eq!((head.request().method, head.request().path), ("GET", "/api/me"));
        assert!(matches!(head.body(Body::Follows), Body::Follows));
    }

    #[test]
    fn a_callback_lets_its_request_go_if_either_side_did() {
        assert_eq!(Flow::Pause.or(Flow::Pause), Flow::Pause);
        assert_eq!(Flow::Continue.or(Flow::Pause), Flow::Continue);
        assert_eq!(Flow::Pause.or(Flow::Continue), Flow::Continue);
    }
}

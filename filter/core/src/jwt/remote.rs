//! Remote JWK Sets: which to fetch when, and what was fetched.

use std::collections::HashMap;

use serde_json::Value;

use super::keys::{compile_fetched_jwks, split_http_uri, Key};
use super::Verifier;
use crate::error::ConfigError;
use crate::json::JsonError;

/// Where a provider's remote JWK Set comes from, as an HTTP request through an Envoy cluster:
/// the set itself (`remote_jwks`), or the discovery document that names it (`discovery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// The provider's index in `providers`.
    pub provider: usize,
    /// The Envoy cluster.
    pub cluster: String,
    /// The `:authority` (the URI's host).
    pub authority: String,
    /// The `:path` (the URI's path and query).
    pub path: String,
    /// How long a fetched set is trusted.
    pub cache_secs: u64,
    /// The fetch timeout (each fetch's, with discovery).
    pub timeout_ms: u64,
    /// With `discovery`: the location above is the discovery document's, and the set's is the
    /// `jwks_uri` it names.
    pub discovery: Option<Discovery>,
}

/// What a discovery document is checked against, and where the set it names is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The configured issuer, which the document's `issuer` must equal exactly (OpenID
    /// Connect Discovery 1.0, section 4.3).
    pub issuer: String,
    /// The Envoy cluster the set is fetched through.
    pub jwks_cluster: String,
}

impl RemoteJwks {
    /// The longest a fetch of this set takes before it has failed: with discovery, the
    /// document's timeout and then the set's.
    pub fn fetch_ms(&self) -> u64 {
        match self.discovery {
            None => self.timeout_ms,
            Some(_) => self.timeout_ms.saturating_mul(2),
        }
    }
}

/// What a fetch brings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    /// A discovery document: [`RemoteKeys::load_discovery`], then the set it names.
    Discovery,
    /// A JWK Set: [`RemoteKeys::load`].
    KeySet,
}

/// One `GET` to send through an Envoy cluster for `providers[provider]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// The provider's index in `providers`.
    pub provider: usize,
    /// What the answer is.
    pub kind: FetchKind,
    /// The Envoy cluster.
    pub cluster: String,
    /// The `:authority`.
    pub authority: String,
    /// The `:path`.
    pub path: String,
    /// The fetch timeout.
    pub timeout_ms: u64,
}

/// Why a discovery document gave no JWK Set to fetch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// Not JSON, or a key given twice (two readings of one document).
    #[error(transparent)]
    Json(#[from] JsonError),
    /// `issuer` or `jwks_uri` missing, or not a string.
    #[error("{0:?} is missing or not a string")]
    Field(&'static str),
    /// The document's `issuer` is not the configured one.
    #[error("its issuer {document:?} is not the configured issuer {configured:?}")]
    IssuerMismatch {
        /// The configured issuer.
        configured: String,
        /// The document's.
        document: String,
    },
    /// `jwks_uri` is not an absolute URI of an accepted scheme.
    #[error("its jwks_uri {uri:?} is refused: {why}")]
    JwksUri {
        /// The document's `jwks_uri`.
        uri: String,
        /// Why.
        why: &'static str,
    },
    /// The provider has no `discovery` (a configuration changed under the fetch).
    #[error("the provider has no discovery")]
    NoDiscovery,
}

/// The least time between two fetches of one JWK Set, however many unknown `kid`s arrive: a
/// flood of forged tokens must not become a flood of fetches.
pub const JWKS_REFETCH_SECS: u64 = 10;

/// What [`RemoteKeys::load`] took of a fetched JWK Set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedKeys {
    /// How many keys can verify tokens.
    pub usable: usize,
    /// Why each other key (encryption keys aside) was left out.
    pub skipped: Vec<ConfigError>,
}

/// One worker's remote JWK Sets: what was fetched, when, which sets are wanted, and which
/// fetches are on their way.
#[derive(Debug, Default)]
pub struct RemoteKeys {
    pub(super) sets: HashMap<usize, (Vec<Key>, u64)>,
    attempted: HashMap<usize, u64>,
    wanted: Vec<usize>,
    /// Provider -> when to stop waiting for the answer to its fetch (the fetch's timeout, plus
    /// a second: a host that loses the answer must not keep requests waiting for it).
    in_flight: HashMap<usize, u64>,
}

impl RemoteKeys {
    /// The sets to fetch now: never fetched, expired, or wanted for an unknown `kid`; each at
    /// most once per [`JWKS_REFETCH_SECS`]. Marks them attempted.
    /// With discovery, the fetch is the document's, and the deadline of the requests that wait
    /// spans it and the set's fetch after it.
    pub fn due(&mut self, verifier: &Verifier, now: u64) -> Vec<Fetch> {
        let wanted = std::mem::take(&mut self.wanted);
        let mut due = Vec::new();
        for source in verifier.remote_sources() {
            let stale =
                self.sets.get(&source.provider).is_none_or(|(_, at)| now >= at.saturating_add(source.cache_secs));
            let recently =
                self.attempted.get(&source.provider).is_some_and(|at| now < at.saturating_add(JWKS_REFETCH_SECS));
            if (stale || wanted.contains(&source.provider)) && !recently {
                self.attempted.insert(source.provider, now);
                let answer_by = now.saturating_add(source.fetch_ms().div_ceil(1000)).saturating_add(1);
                self.in_flight.insert(source.provider, answer_by);
                due.push(Fetch {
                    provider: source.provider,
                    kind: if source.discovery.is_some() { FetchKind::Discovery } else { FetchKind::KeySet },
                    cluster: source.cluster.clone(),
                    authority: source.authority.clone(),
                    path: source.path.clone(),
                    timeout_ms: source.timeout_ms,
                });
            }
        }
        due
    }

    /// Marks `provider`'s set as wanted (a token's issuer has no set yet, or the token's `kid`
    /// is not in it). Returns whether a request needing it should wait: a fetch is on its way,
    /// or may start now. A fetch within the last [`JWKS_REFETCH_SECS`] that did not bring the
    /// key means no: the token is answered at once.
    pub(super) fn want(&mut self, provider: usize, now: u64) -> bool {
        if !self.wanted.contains(&provider) {
            self.wanted.push(provider);
        }
        let on_its_way = self.in_flight.get(&provider).is_some_and(|until| now < *until);
        let recently = self.attempted.get(&provider).is_some_and(|at| now < at.saturating_add(JWKS_REFETCH_SECS));
        on_its_way || !recently
    }

    /// Whether any fetch is on its way (its answer not yet loaded or failed) at `now`. Only
    /// the tests ask: the host learns a fetch's end from its answer.
    #[cfg(test)]
    pub(crate) fn fetching(&self, now: u64) -> bool {
        self.in_flight.values().any(|until| now < *until)
    }

    /// The fetch for `provider` ended without a usable set (not sent, timed out, reset,
    /// non-2xx, refused): requests waiting for it are answered with the keys there are.
    pub fn failed(&mut self, provider: usize) {
        self.in_flight.remove(&provider);
    }

    /// Stores the usable keys of a fetched JWK Set (the body of a 2xx answer) for `provider`,
    /// and says why each other key was skipped; a set with no usable key is an error and the
    /// keys fetched before stay in use. Either way the fetch has ended.
    pub fn load(&mut self, provider: usize, body: &[u8], now: u64) -> Result<LoadedKeys, ConfigError> {
        self.failed(provider);
        let json: Value = serde_json::from_slice(body).map_err(|e| ConfigError::new("", format!("not JSON: {e}")))?;
        let (keys, skipped) = compile_fetched_jwks(&json)?;
        let usable = keys.len();
        self.sets.insert(provider, (keys, now));
        self.wanted.retain(|p| *p != provider);
        Ok(LoadedKeys { usable, skipped })
    }

    /// Reads `provider`'s discovery document (the body of a 2xx answer) and returns the fetch
    /// of the JWK Set it names, which the requests waiting for the set go on waiting for (the
    /// deadline [`RemoteKeys::due`] set spans it). A refused document ends the fetch: the keys
    /// fetched before stay in use.
    pub fn load_discovery(
        &mut self,
        verifier: &Verifier,
        provider: usize,
        body: &[u8],
    ) -> Result<Fetch, DiscoveryError> {
        let read = read_discovery(verifier, provider, body);
        if read.is_err() {
            self.failed(provider);
        }
        read
    }
}

fn read_discovery(verifier: &Verifier, provider: usize, body: &[u8]) -> Result<Fetch, DiscoveryError> {
    let source = verifier.remote_sources().find(|s| s.provider == provider).ok_or(DiscoveryError::NoDiscovery)?;
    let discovery = source.discovery.as_ref().ok_or(DiscoveryError::NoDiscovery)?;
    let doc = crate::json::parse_strict(body)?;
    let field = |name: &'static str| doc.get(name).and_then(Value::as_str).ok_or(DiscoveryError::Field(name));
    let issuer = field("issuer")?;
    if issuer != discovery.issuer {
        return Err(DiscoveryError::IssuerMismatch {
            configured: discovery.issuer.clone(),
            document: issuer.to_owned(),
        });
    }
    let uri = field("jwks_uri")?;
    let refused = |why| DiscoveryError::JwksUri { uri: uri.to_owned(), why };
    let (https, authority, path) = split_http_uri(uri).map_err(refused)?;
    // An `http` issuer is a test or a private network already; anywhere else, a document
    // must not downgrade the keys' transport.
    if !https && discovery.issuer.starts_with("https://") {
        return Err(refused("not https, and the issuer is"));
    }
    Ok(Fetch {
        provider,
        kind: FetchKind::KeySet,
        cluster: discovery.jwks_cluster.clone(),
        authority: authority.to_owned(),
        path,
        timeout_ms: source.timeout_ms,
    })
}

impl Verifier {
    /// The remote JWK Sets this configuration fetches.
    pub fn remote_sources(&self) -> impl Iterator<Item = &RemoteJwks> {
        self.providers.iter().filter_map(|p| p.remote.as_ref())
    }
}

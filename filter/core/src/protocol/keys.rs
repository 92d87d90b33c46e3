//! Remote JWK Sets: fetched from the root context at its tick (with discovery, the document
//! first, then the set it names), while requests with a token signed by a key not yet known
//! wait for the fetch (within a bound), then are decided again.

use log::{info, warn};

use super::{Action, Call, Ctx, RequestId, Stat, Wait, Worker, KEYS_GRACE_MS};
use crate::guard::Guard;
use crate::jwt::{Fetch, FetchKind, RemoteJwks};
use crate::shared::SharedStore;
use crate::validation::CalloutRequest;

impl Worker {
    /// Asks for the JWK Set fetches that are due. Only at the start of a root event (a tick, a
    /// configuration): the host sends them from the root context, so their answers come back
    /// to the root, which outlives any request.
    pub(super) fn fetch_jwks(&mut self, guard: &Guard, now_ms: u64) {
        for fetch in self.keys.remote.due(guard.verifier(), now_ms / 1000) {
            self.send_fetch(fetch);
        }
    }

    /// Sends `fetch` from the root context (see [`Worker::fetch_jwks`]).
    fn send_fetch(&mut self, fetch: Fetch) {
        let call = match fetch.kind {
            FetchKind::Discovery => Call::Discovery { provider: fetch.provider },
            FetchKind::KeySet => Call::Keys { provider: fetch.provider },
        };
        let request = CalloutRequest {
            cluster: fetch.cluster,
            headers: vec![
                (":method".into(), "GET".into()),
                (":path".into(), fetch.path),
                (":authority".into(), fetch.authority),
                ("accept".into(), "application/json".into()),
            ],
            body: Vec::new(),
            timeout_ms: fetch.timeout_ms,
        };
        self.call(call, None, request);
    }

    /// Parks a request until a JWK Set fetch ends (with discovery, the document's fetch and
    /// the set's after it); the fetch goes out at the next tick, which this makes come at once.
    pub(super) fn await_keys<S: SharedStore + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>, req: RequestId) {
        let timeout_ms = ctx.guard.verifier().remote_sources().map(RemoteJwks::fetch_ms).max().unwrap_or(0);
        self.set_wait(req, Wait::Keys { until_ms: ctx.now_ms + timeout_ms + KEYS_GRACE_MS });
        self.awaiting_keys.push(req);
        self.fetch_now = true;
        self.count(Stat::JwksWaits, 1);
    }

    pub(super) fn keys_not_sent<S: SharedStore + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>, provider: usize, why: &str) {
        warn!("remote JWKS for providers[{provider}] could not be fetched: {why}");
        self.count(Stat::JwksFetchFailed, 1);
        self.keys.remote.failed(provider);
        self.recheck_keys(true, ctx.now_ms);
    }

    pub(super) fn keys_answer<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        provider: usize,
        status: Option<u32>,
        body: &[u8],
    ) {
        if status.is_some_and(|s| (200..300).contains(&s)) {
            match self.keys.remote.load(provider, body, ctx.now_ms / 1000) {
                Ok(loaded) => {
                    self.count(Stat::JwksFetchSuccess, 1);
                    info!("remote JWKS for providers[{provider}]: {} keys", loaded.usable);
                    for why in &loaded.skipped {
                        warn!("remote JWKS for providers[{provider}]: skipped {why}");
                    }
                }
                Err(e) => {
                    self.count(Stat::JwksFetchFailed, 1);
                    warn!("remote JWKS for providers[{provider}] refused: {e}; keeping the keys it had");
                }
            }
        } else {
            self.count(Stat::JwksFetchFailed, 1);
            warn!(
                "remote JWKS for providers[{provider}]: no usable answer (status {status:?}); keeping the keys it had"
            );
            self.keys.remote.failed(provider);
        }
        self.recheck_keys(true, ctx.now_ms);
    }

    pub(super) fn discovery_not_sent<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        provider: usize,
        why: &str,
    ) {
        warn!("discovery document for providers[{provider}] could not be fetched: {why}");
        self.discovery_ended(ctx, provider, Stat::DiscoveryFetchFailed);
    }

    /// A discovery document's answer: a usable one sends the fetch of the set it names (from
    /// the root context, which this answer came back to), and the requests waiting for keys
    /// wait on for it; anything else ends the fetch as a failed JWK Set fetch ends.
    pub(super) fn discovery_answer<S: SharedStore + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        provider: usize,
        status: Option<u32>,
        body: &[u8],
    ) {
        if !status.is_some_and(|s| (200..300).contains(&s)) {
            warn!(
                "discovery document for providers[{provider}]: no usable answer (status {status:?}); keeping the keys it had"
            );
            return self.discovery_ended(ctx, provider, Stat::DiscoveryFetchFailed);
        }
        match self.keys.remote.load_discovery(ctx.guard.verifier(), provider, body) {
            Ok(fetch) => {
                self.count(Stat::DiscoveryFetchSuccess, 1);
                info!(
                    "discovery document for providers[{provider}]: JWK Set at {}{} through cluster {:?}",
                    fetch.authority, fetch.path, fetch.cluster
                );
                self.send_fetch(fetch);
            }
            Err(e) => {
                warn!("discovery document for providers[{provider}] refused: {e}; keeping the keys it had");
                self.discovery_ended(ctx, provider, Stat::DiscoveryFetchRefused);
            }
        }
    }

    /// A discovery that brought no set to fetch: counted as its own kind of end and as a failed
    /// JWK Set fetch, and the requests that waited are decided with the keys there are.
    fn discovery_ended<S: SharedStore + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>, provider: usize, stat: Stat) {
        self.count(stat, 1);
        self.count(Stat::JwksFetchFailed, 1);
        self.keys.remote.failed(provider);
        self.recheck_keys(true, ctx.now_ms);
    }

    /// Decides again the heads of the requests waiting for JWK Sets: all of them once a fetch
    /// has ended (`all`), else those that waited past their deadline.
    pub(super) fn recheck_keys(&mut self, all: bool, now_ms: u64) {
        let waiting = std::mem::take(&mut self.awaiting_keys);
        for req in waiting {
            let Some(r) = self.requests.get_mut(&req) else { continue };
            match r.wait {
                Wait::Keys { until_ms } if all || until_ms <= now_ms => {
                    r.wait = Wait::Open;
                    self.actions.push_back(Action::Redecide { req });
                }
                Wait::Keys { .. } => self.awaiting_keys.push(req),
                _ => {}
            }
        }
    }
}

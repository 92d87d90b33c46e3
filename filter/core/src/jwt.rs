//! Session JWTs: providers, keys, signature and claim checks (SPEC section 3).
//!
//! `jsonwebtoken` checks signatures; the claims are checked here rather than by its
//! `Validation`, because that reads the system clock and the core takes `now` as an argument,
//! and because each failure needs its own reason code for the 401 answer.

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, ProviderConfig, RequiredClaims};

/// The shortest HMAC secret accepted: RFC 7518 section 3.2 asks for a key at least as long as
/// the hash output, and 32 bytes is HS256's.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Why a token was refused. [`AuthError::reason`] is the code in the 401 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token in any configured source.
    #[error("no session token in the request")]
    Missing,
    /// Not a compact JWS, or a part that does not decode.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg: none`, refused always.
    #[error("unsigned tokens (alg none) are not accepted")]
    AlgNone,
    /// An `alg` this filter does not implement.
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// An `alg` the provider does not allow.
    #[error("algorithm {0:?} is not allowed for this issuer")]
    AlgorithmNotAllowed(String),
    /// No provider has this `iss`.
    #[error("unknown issuer {0:?}")]
    UnknownIssuer(String),
    /// No key of the provider matches the token's `kid` and `alg`.
    #[error("no key matches the token (kid {0:?})")]
    UnknownKey(Option<String>),
    /// The provider's keys are not available yet (a remote JWKS not fetched).
    #[error("the issuer's keys are not available")]
    KeysUnavailable,
    /// The key is not among the issuer's remote keys yet, but a fetch of them is on its way or
    /// may start now: the request should wait for it rather than be answered (as `jwt_authn`
    /// waits for its JWKS). Only [`Verifier::verify_with`] says this, and only given a
    /// [`RemoteKeys`] to fetch into.
    #[error("the issuer's keys are being fetched")]
    AwaitingKeys,
    /// The signature does not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// `exp` is past (beyond the clock skew).
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond the clock skew).
    #[error("token not yet valid")]
    NotYetValid,
    /// `exp` is missing, or a claim has the wrong type.
    #[error("missing or invalid claim {0:?}")]
    MissingClaim(String),
    /// `aud` does not name an accepted audience.
    #[error("audience not accepted")]
    InvalidAudience,
    /// A required claim has another value, the email domain or the organization is not allowed.
    #[error("claim {0:?} not accepted")]
    ClaimRejected(String),
    /// An opaque token where only JWTs are accepted.
    #[error("token is not a JWT and opaque session tokens are not enabled")]
    OpaqueNotAccepted,
    /// Neither a JWT nor an opaque token of the configured `opaque_token_shape`.
    #[error("token is neither a JWT nor an opaque session token of the configured shape")]
    UnrecognisedToken,
    /// The validation service says the session is not active.
    #[error("the session is not active")]
    SessionInvalid,
}

impl AuthError {
    /// The short, stable code sent in the 401 body's `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed(_) | AuthError::OpaqueNotAccepted | AuthError::UnrecognisedToken => "malformed",
            AuthError::AlgNone | AuthError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            AuthError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            AuthError::UnknownIssuer(_) => "unknown_issuer",
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::KeysUnavailable | AuthError::AwaitingKeys => "keys_unavailable",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::InvalidAudience => "invalid_audience",
            AuthError::ClaimRejected(_) => "claim_rejected",
            AuthError::SessionInvalid => "invalid_session",
        }
    }
}

/// A verification key with the constraints its JWK put on it.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    /// The only algorithm this key may verify, when its JWK says so (`alg`, or `crv` for EC).
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl Key {
    fn fits(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.key.family() == alg.family()
            && self.alg.is_none_or(|a| a == alg)
            && kid.is_none_or(|kid| self.kid.as_deref() == Some(kid))
    }
}

/// One trusted issuer.
#[derive(Clone)]
struct Provider {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    keys: Vec<Key>,
    remote: Option<RemoteJwks>,
    roles_claim: Option<String>,
    required_claims: Vec<(String, Option<Value>)>,
    email_domains: Vec<String>,
    organization: Option<String>,
}

/// The compiled providers and clock skew; verifies tokens.
#[derive(Clone)]
pub struct Verifier {
    providers: Vec<Provider>,
    clock_skew: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("providers", &self.providers.iter().map(|p| &p.name).collect::<Vec<_>>())
            .field("clock_skew", &self.clock_skew)
            .finish()
    }
}

/// What a verified token says about its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The provider's `name`.
    pub provider: String,
    /// The session key: `sid`, else `jti`, else the SHA-256 of the token (hex).
    pub session_key: String,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// `sub`, if any.
    pub subject: Option<String>,
    /// `email`, if any.
    pub email: Option<String>,
    /// `name`, if any.
    pub name: Option<String>,
    /// Roles from the provider's `roles_claim` (empty without one).
    pub roles: Vec<String>,
    /// How many items of the roles claim were not role names and were dropped.
    pub roles_dropped: u32,
}

/// A token as it was found in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Three base64url parts separated by dots: a compact JWS.
    Jws,
    /// Anything else: a NoETL opaque session token.
    Opaque,
}

/// Whether `token` has the shape of a compact JWS (RFC 7515 section 7.1).
pub fn token_kind(token: &str) -> TokenKind {
    let mut parts = 0;
    for (i, part) in token.split('.').enumerate() {
        parts += 1;
        let b64 = part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        // The signature may be empty (that is how `alg: none` looks); header and payload may not.
        if !b64 || (part.is_empty() && i < 2) {
            return TokenKind::Opaque;
        }
    }
    if parts == 3 {
        TokenKind::Jws
    } else {
        TokenKind::Opaque
    }
}

/// The SHA-256 of a token, hex: the session key of last resort and a safe name for logs.
pub fn token_digest(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        // Not `format!("{byte:02x}")`: this runs on every request, and the formatter costs
        // more than the hash in wasm.
        for nibble in [byte >> 4, byte & 0xf] {
            hex.push(char::from(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0')));
        }
    }
    hex
}

impl Verifier {
    /// Compiles `providers`. `env` looks up an environment variable of the VM (for `secret_env`).
    /// Errors name `[i].field`.
    pub fn compile(
        providers: &[ProviderConfig],
        clock_skew: u64,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut compiled = Vec::with_capacity(providers.len());
        for (i, cfg) in providers.iter().enumerate() {
            let mut provider = compile_provider(cfg, env).map_err(|e| e.within(&format!("[{i}]")))?;
            if let Some(remote) = &mut provider.remote {
                remote.provider = i;
            }
            if let Some(dup) = compiled.iter().position(|p: &Provider| p.issuer == provider.issuer) {
                return Err(ConfigError::new(
                    format!("[{i}].issuer"),
                    format!("issuer {:?} is already used by providers[{dup}]", provider.issuer),
                ));
            }
            compiled.push(provider);
        }
        Ok(Verifier { providers: compiled, clock_skew })
    }

    /// Verifies a compact JWS at time `now` (seconds since the epoch).
    ///
    /// The provider is chosen by the unverified `iss`, then the signature is checked with a key
    /// of that provider that fits the header's `alg` and `kid`, and only then the claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, AuthError> {
        self.verify_with(token, now, None)
    }

    /// [`Verifier::verify`], with the remote JWK Sets fetched so far (a provider with
    /// `remote_jwks` has no keys without them). A token whose issuer's set is missing, or whose
    /// `kid` is not in it, marks the set as wanted in `remote`, and is
    /// [`AuthError::AwaitingKeys`] while a fetch of that set is on its way or may start now.
    pub fn verify_with(
        &self,
        token: &str,
        now: u64,
        remote: Option<&mut RemoteKeys>,
    ) -> Result<VerifiedToken, AuthError> {
        let mut parts = token.splitn(3, '.');
        let (Some(header_b64), Some(payload_b64), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::Malformed("not three dot-separated parts"));
        };
        let header = decode_object(header_b64).ok_or(AuthError::Malformed("header is not base64url JSON"))?;
        let alg = match header.get("alg") {
            Some(Value::String(alg)) if alg.eq_ignore_ascii_case("none") => return Err(AuthError::AlgNone),
            Some(Value::String(alg)) => {
                Algorithm::from_str(alg).map_err(|_| AuthError::UnsupportedAlgorithm(alg.clone()))?
            }
            _ => return Err(AuthError::Malformed("header has no alg")),
        };
        // RFC 7515 section 4.1.11: extensions we do not understand must not be ignored.
        if header.contains_key("crit") {
            return Err(AuthError::Malformed("critical header extensions are not supported"));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(AuthError::Malformed("kid is not a string")),
        };
        let claims = decode_object(payload_b64).ok_or(AuthError::Malformed("payload is not base64url JSON"))?;
        let issuer = match claims.get("iss") {
            Some(Value::String(iss)) => iss.as_str(),
            _ => return Err(AuthError::MissingClaim("iss".into())),
        };
        let provider = self
            .providers
            .iter()
            .find(|p| p.issuer == issuer)
            .ok_or_else(|| AuthError::UnknownIssuer(issuer.to_owned()))?;
        if !provider.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed(format!("{alg:?}")));
        }

        let message_len = header_b64.len() + 1 + payload_b64.len();
        let message = token.get(..message_len).ok_or(AuthError::Malformed("truncated"))?;
        let fetched = match (&provider.remote, remote.as_deref()) {
            (None, _) => Some(provider.keys.as_slice()),
            (Some(source), Some(remote)) => remote.sets.get(&source.provider).map(|(keys, _)| keys.as_slice()),
            (Some(_), None) => None,
        };
        let outcome = match fetched {
            None => Err(AuthError::KeysUnavailable),
            Some(keys) => {
                let mut fitting = keys.iter().filter(|k| k.fits(alg, kid)).peekable();
                if fitting.peek().is_none() {
                    Err(AuthError::UnknownKey(kid.map(str::to_owned)))
                } else if fitting
                    .any(|k| jsonwebtoken::crypto::verify(signature, message.as_bytes(), &k.key, alg).unwrap_or(false))
                {
                    Ok(())
                } else {
                    Err(AuthError::BadSignature)
                }
            }
        };
        if let (Err(AuthError::KeysUnavailable | AuthError::UnknownKey(_)), Some(source), Some(remote)) =
            (&outcome, &provider.remote, remote)
        {
            // Not fetched yet, or a key rotated in at the issuer: fetch the set (rate-limited),
            // and have the request wait for that fetch if there is one to wait for.
            if remote.want(source.provider, now) {
                return Err(AuthError::AwaitingKeys);
            }
        }
        outcome?;

        self.check_claims(provider, &claims, token, now)
    }

    fn check_claims(
        &self,
        provider: &Provider,
        claims: &Map<String, Value>,
        token: &str,
        now: u64,
    ) -> Result<VerifiedToken, AuthError> {
        let skew = self.clock_skew;
        let exp = numeric_date(claims, "exp")?.ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
        if now >= exp.saturating_add(skew) {
            return Err(AuthError::Expired);
        }
        for name in ["nbf", "iat"] {
            if let Some(t) = numeric_date(claims, name)? {
                if t > now.saturating_add(skew) {
                    return Err(AuthError::NotYetValid);
                }
            }
        }
        if !provider.audiences.is_empty() {
            let accepted = |aud: &str| provider.audiences.iter().any(|a| a == aud);
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => accepted(aud),
                Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(accepted),
                _ => false,
            };
            if !ok {
                return Err(AuthError::InvalidAudience);
            }
        }
        for (name, want) in &provider.required_claims {
            match (claims.get(name), want) {
                (None | Some(Value::Null), _) => return Err(AuthError::MissingClaim(name.clone())),
                (Some(got), Some(want)) if got != want => return Err(AuthError::ClaimRejected(name.clone())),
                _ => {}
            }
        }
        let email = string_claim(claims, "email");
        if !provider.email_domains.is_empty() {
            let domain = email.as_deref().and_then(|e| e.rsplit_once('@')).map(|(_, d)| d.to_ascii_lowercase());
            if !domain.is_some_and(|d| provider.email_domains.contains(&d)) {
                return Err(AuthError::ClaimRejected("email".into()));
            }
        }
        if let Some(org) = &provider.organization {
            if string_claim(claims, "org_id").as_ref() != Some(org) {
                return Err(AuthError::ClaimRejected("org_id".into()));
            }
        }
        let (roles, roles_dropped) = match &provider.roles_claim {
            None => (Vec::new(), 0),
            Some(claim) => roles_from(claims.get(claim)),
        };
        let session_key =
            string_claim(claims, "sid").or_else(|| string_claim(claims, "jti")).unwrap_or_else(|| token_digest(token));
        Ok(VerifiedToken {
            provider: provider.name.clone(),
            session_key,
            expires_at: exp,
            subject: string_claim(claims, "sub"),
            email,
            name: string_claim(claims, "name"),
            roles,
            roles_dropped,
        })
    }
}

/// One worker's verification state for one configuration: the tokens it verified and the
/// remote JWK Sets it fetched. Make a new one when the configuration changes.
#[derive(Debug, Default)]
pub struct VerifierState {
    /// Tokens whose signature was checked.
    pub verified: VerifiedTokens,
    /// Remote JWK Sets.
    pub remote: RemoteKeys,
    /// The kinds of token seen since the host last took the tally, for its stats.
    pub tokens: TokenTally,
}

/// How many tokens of each kind requests presented: the core counts, the host drains the counts
/// into its stats ([`TokenTally::take`]) after each request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TokenTally {
    /// Compact JWS tokens, verified locally.
    pub jwt: u32,
    /// Opaque tokens of the configured shape, for the validation service to vouch for.
    pub opaque: u32,
    /// Tokens that were neither: refused as `malformed` without a callout.
    pub unrecognised: u32,
}

impl TokenTally {
    /// The counts so far, leaving zeros.
    pub fn take(&mut self) -> TokenTally {
        std::mem::take(self)
    }
}

/// Tokens that verified, remembered by their SHA-256 until their `exp`, so a token's signature
/// is checked once per worker rather than on every request (as Envoy's `jwt_cache_config`):
/// RSA in wasm costs about a hundred times what HMAC does. Bounded; the oldest go first.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    map: HashMap<String, VerifiedToken>,
    order: VecDeque<String>,
    capacity: usize,
    /// Role names dropped from the tokens verified since the host last took the count.
    roles_dropped: u64,
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize) -> Self {
        VerifiedTokens { map: HashMap::new(), order: VecDeque::new(), capacity, roles_dropped: 0 }
    }

    /// How many role names the tokens verified since the last call carried that were not role
    /// names (see [`roles_from`]), for the host's stat; counted when a token is verified, not
    /// each time the cache answers for it.
    pub fn take_roles_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.roles_dropped)
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn insert(&mut self, digest: String, token: VerifiedToken) {
        if self.capacity == 0 || self.map.contains_key(&digest) {
            return;
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.map.remove(&oldest);
                }
                None => break,
            }
        }
        self.order.push_back(digest.clone());
        self.map.insert(digest, token);
    }
}

impl Verifier {
    /// [`Verifier::verify`], answered from `cache` for a token that verified before and has not
    /// expired. Only successes are remembered: a token that failed is checked again, so a key
    /// rotation or a clock correction is never masked.
    pub fn verify_cached(
        &self,
        token: &str,
        now: u64,
        cache: &mut VerifiedTokens,
        remote: &mut RemoteKeys,
    ) -> Result<VerifiedToken, AuthError> {
        let digest = (cache.capacity > 0).then(|| token_digest(token));
        if let Some(hit) = digest.as_ref().and_then(|d| cache.map.get(d)) {
            if now < hit.expires_at.saturating_add(self.clock_skew) {
                return Ok(hit.clone());
            }
        }
        let verified = self.verify_with(token, now, Some(remote))?;
        cache.roles_dropped = cache.roles_dropped.saturating_add(u64::from(verified.roles_dropped));
        if let Some(digest) = digest {
            cache.insert(digest, verified.clone());
        }
        Ok(verified)
    }

    /// The remote JWK Sets this configuration fetches.
    pub fn remote_sources(&self) -> impl Iterator<Item = &RemoteJwks> {
        self.providers.iter().filter_map(|p| p.remote.as_ref())
    }
}

/// Where a provider's remote JWK Set comes from, as an HTTP request through an Envoy cluster.
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
    /// The fetch timeout.
    pub timeout_ms: u64,
}

/// The least time between two fetches of one JWK Set, however many unknown `kid`s arrive: a
/// flood of forged tokens must not become a flood of fetches.
pub const JWKS_REFETCH_SECS: u64 = 10;

/// One worker's remote JWK Sets: what was fetched, when, which sets are wanted, and which
/// fetches are on their way.
#[derive(Debug, Default)]
pub struct RemoteKeys {
    sets: HashMap<usize, (Vec<Key>, u64)>,
    attempted: HashMap<usize, u64>,
    wanted: Vec<usize>,
    /// Provider -> when to stop waiting for the answer to its fetch (the fetch's timeout, plus
    /// a second: a host that loses the answer must not keep requests waiting for it).
    in_flight: HashMap<usize, u64>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl RemoteKeys {
    /// The sets to fetch now: never fetched, expired, or wanted for an unknown `kid`; each at
    /// most once per [`JWKS_REFETCH_SECS`]. Marks them attempted.
    pub fn due(&mut self, verifier: &Verifier, now: u64) -> Vec<RemoteJwks> {
        let wanted = std::mem::take(&mut self.wanted);
        let mut due = Vec::new();
        for source in verifier.remote_sources() {
            let stale =
                self.sets.get(&source.provider).is_none_or(|(_, at)| now >= at.saturating_add(source.cache_secs));
            let recently =
                self.attempted.get(&source.provider).is_some_and(|at| now < at.saturating_add(JWKS_REFETCH_SECS));
            if (stale || wanted.contains(&source.provider)) && !recently {
                self.attempted.insert(source.provider, now);
                let answer_by = now.saturating_add(source.timeout_ms.div_ceil(1000)).saturating_add(1);
                self.in_flight.insert(source.provider, answer_by);
                due.push(source.clone());
            }
        }
        due
    }

    /// Marks `provider`'s set as wanted (a token's issuer has no set yet, or the token's `kid`
    /// is not in it). Returns whether a request needing it should wait: a fetch is on its way,
    /// or may start now. A fetch within the last [`JWKS_REFETCH_SECS`] that did not bring the
    /// key means no: the token is answered at once.
    fn want(&mut self, provider: usize, now: u64) -> bool {
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

    /// Stores a fetched JWK Set (the body of a 2xx answer) for `provider`; an unusable one is an
    /// error and the keys fetched before stay in use. Either way the fetch has ended.
    pub fn load(&mut self, provider: usize, body: &[u8], now: u64) -> Result<usize, ConfigError> {
        self.failed(provider);
        let json: Value = serde_json::from_slice(body).map_err(|e| ConfigError::new("", format!("not JSON: {e}")))?;
        let keys = compile_jwks(&json)?;
        let count = keys.len();
        self.sets.insert(provider, (keys, now));
        self.wanted.retain(|p| *p != provider);
        Ok(count)
    }
}

/// The longest role name kept, in bytes.
pub const MAX_ROLE_BYTES: usize = 128;

/// Whether `name` can be a role: a value, never syntax. Roles travel upstream joined with `,`
/// in one header, and NoETL splits that header again, so a role holding `,` (or whitespace,
/// which some readers split on too) would become several roles on the way; control characters
/// and huge names have no business in a header or a log line either.
pub fn is_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROLE_BYTES
        && !name.chars().any(|c| c == ',' || c.is_whitespace() || c.is_control())
}

/// Roles from a claim or a validation answer holding an array of strings or one string of
/// names separated by spaces, and how many items were dropped: those that are not strings or
/// not role names ([`is_role_name`]). Runs of spaces only separate; any other whitespace is
/// part of a name (and so drops it). A value of another type is one dropped item.
pub fn roles_from(value: Option<&Value>) -> (Vec<String>, u32) {
    let mut roles = Vec::new();
    let mut dropped = 0u32;
    let mut keep = |name: Option<&str>| match name {
        Some(name) if is_role_name(name) => roles.push(name.to_owned()),
        _ => dropped = dropped.saturating_add(1),
    };
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => items.iter().for_each(|item| keep(item.as_str())),
        Some(Value::String(s)) => s.split(' ').filter(|r| !r.is_empty()).for_each(|name| keep(Some(name))),
        Some(_) => keep(None),
    }
    (roles, dropped)
}

/// A string claim; numbers are accepted too (`sub: 42`), as some issuers send ids that way.
fn string_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A NumericDate claim (RFC 7519 section 2): seconds, possibly fractional; negative is 0.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n.as_u64().or_else(|| n.as_f64().map(|f| if f > 0.0 { f as u64 } else { 0 }));
            secs.map(Some).ok_or_else(|| AuthError::MissingClaim(name.into()))
        }
        Some(_) => Err(AuthError::MissingClaim(name.into())),
    }
}

fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn compile_provider(cfg: &ProviderConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Provider, ConfigError> {
    if cfg.name.trim().is_empty() {
        return Err(ConfigError::new("name", "must not be empty"));
    }
    if cfg.issuer.is_empty() {
        return Err(ConfigError::new("issuer", "must not be empty"));
    }
    if cfg.algorithms.is_empty() {
        return Err(ConfigError::new("algorithms", "list at least one algorithm, such as \"RS256\""));
    }
    let mut algorithms = Vec::with_capacity(cfg.algorithms.len());
    for (i, name) in cfg.algorithms.iter().enumerate() {
        let alg = Algorithm::from_str(name).map_err(|_| {
            ConfigError::new(
                format!("algorithms[{i}]"),
                format!("unsupported algorithm {name:?}; use one of HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA"),
            )
        })?;
        algorithms.push(alg);
    }

    let sources = [cfg.secret_env.is_some(), cfg.jwks.is_some(), cfg.remote_jwks.is_some()];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(ConfigError::new("", "give exactly one of `secret_env`, `jwks`, `remote_jwks`"));
    }
    let mut keys = Vec::new();
    if let Some(var) = &cfg.secret_env {
        let secret = env(var).ok_or_else(|| {
            ConfigError::new(
                "secret_env",
                format!(
                    "environment variable {var:?} is not set in the VM (pass it with vm_config.environment_variables)"
                ),
            )
        })?;
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            return Err(ConfigError::new(
                "secret_env",
                format!("the secret in {var:?} is {} bytes; at least {MIN_HMAC_SECRET_BYTES} are needed", secret.len()),
            ));
        }
        if let Some((i, _)) = algorithms.iter().enumerate().find(|(_, a)| a.family() != AlgorithmFamily::Hmac) {
            return Err(ConfigError::new(
                format!("algorithms[{i}]"),
                "an HMAC secret verifies only HS256, HS384 and HS512",
            ));
        }
        keys.push(Key { kid: None, alg: None, key: DecodingKey::from_secret(secret.as_bytes()) });
    }
    if let Some(jwks) = &cfg.jwks {
        keys = compile_jwks(jwks).map_err(|e| e.within("jwks"))?;
        if keys.is_empty() && !jwks.get("keys").and_then(Value::as_array).is_some_and(Vec::is_empty) {
            return Err(ConfigError::new("jwks.keys", "no usable signing key"));
        }
        if keys.iter().any(|k| k.key.family() == AlgorithmFamily::Hmac)
            && algorithms.iter().any(|a| a.family() != AlgorithmFamily::Hmac)
        {
            // An `oct` key next to asymmetric algorithms is the HS/RS confusion waiting to happen.
            return Err(ConfigError::new("jwks", "symmetric (oct) keys cannot be mixed with asymmetric algorithms"));
        }
    }
    let remote = match &cfg.remote_jwks {
        None => None,
        Some(remote) => {
            if remote.cluster.is_empty() {
                return Err(ConfigError::new("remote_jwks.cluster", "must not be empty"));
            }
            let rest = remote
                .uri
                .strip_prefix("https://")
                .or_else(|| remote.uri.strip_prefix("http://"))
                .ok_or_else(|| ConfigError::new("remote_jwks.uri", "must be an http(s) URL"))?;
            let (authority, path) = match rest.find(['/', '?']) {
                Some(at) => (rest.get(..at).unwrap_or_default(), rest.get(at..).unwrap_or("/")),
                None => (rest, "/"),
            };
            if authority.is_empty() {
                return Err(ConfigError::new("remote_jwks.uri", "has no host"));
            }
            let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
            Some(RemoteJwks {
                provider: 0,
                cluster: remote.cluster.clone(),
                authority: authority.to_owned(),
                path,
                cache_secs: remote.cache_secs,
                timeout_ms: remote.timeout_ms,
            })
        }
    };

    let required_claims = match &cfg.required_claims {
        None => Vec::new(),
        Some(RequiredClaims::Names(names)) => names.iter().map(|n| (n.clone(), None)).collect(),
        Some(RequiredClaims::Values(map)) => {
            map.iter().map(|(k, v)| (k.clone(), (!v.is_null()).then(|| v.clone()))).collect()
        }
    };
    Ok(Provider {
        name: cfg.name.clone(),
        issuer: cfg.issuer.clone(),
        audiences: cfg.audiences.clone(),
        algorithms,
        keys,
        remote,
        roles_claim: cfg.roles_claim.clone().filter(|c| !c.is_empty()),
        required_claims,
        email_domains: cfg
            .allowed_email_domains
            .iter()
            .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
            .collect(),
        organization: cfg.organization.clone(),
    })
}

/// Compiles a JWK Set. Keys meant for encryption (`use: enc`) are skipped; any other key that
/// does not parse is an error naming `keys[i].field`, because a silently dropped signing key
/// shows up only as 401s in production.
fn compile_jwks(jwks: &Value) -> Result<Vec<Key>, ConfigError> {
    let list = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| ConfigError::new("keys", "a JWK Set needs a `keys` array"))?;
    let mut keys = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let at = |field: &str| format!("keys[{i}]{field}");
        let obj = raw.as_object().ok_or_else(|| ConfigError::new(at(""), "a JWK is a JSON object"))?;
        if obj.get("use").and_then(Value::as_str) == Some("enc") {
            continue;
        }
        for field in ["n", "e", "x", "y", "k"] {
            if let Some(v) = obj.get(field) {
                let ok = v.as_str().is_some_and(|s| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).is_ok());
                if !ok {
                    return Err(ConfigError::new(at(&format!(".{field}")), "not base64url"));
                }
            }
        }
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(raw.clone())
            .map_err(|e| ConfigError::new(at(""), format!("not a usable JWK: {e}")))?;
        let key =
            DecodingKey::from_jwk(&jwk).map_err(|e| ConfigError::new(at(""), format!("not a usable key: {e}")))?;
        let alg = match obj.get("alg").and_then(Value::as_str) {
            Some(name) => Some(
                Algorithm::from_str(name)
                    .map_err(|_| ConfigError::new(at(".alg"), format!("unsupported signing algorithm {name:?}")))?,
            ),
            None => match obj.get("crv").and_then(Value::as_str) {
                Some("P-256") => Some(Algorithm::ES256),
                Some("P-384") => Some(Algorithm::ES384),
                Some("Ed25519") => Some(Algorithm::EdDSA),
                Some(other) if key.family() != AlgorithmFamily::Rsa => {
                    return Err(ConfigError::new(at(".crv"), format!("unsupported curve {other:?}")));
                }
                _ => None,
            },
        };
        let kid = obj.get("kid").and_then(Value::as_str).map(str::to_owned);
        keys.push(Key { kid, alg, key });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests;

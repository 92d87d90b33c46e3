//! Session JWTs: providers, keys, signature and claim checks (SPEC section 3).
//!
//! `jsonwebtoken` checks signatures; the claims are checked here rather than by its
//! `Validation`, because that reads the system clock and the core takes `now` as an argument,
//! and because each failure needs its own reason code for the 401 answer.

use std::str::FromStr;

use jsonwebtoken::Algorithm;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::ProviderConfig;
use crate::error::ConfigError;

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
    /// A scope in the provider's `required_scopes` is not granted.
    #[error("scope {0:?} not granted")]
    InsufficientScope(String),
    /// `scope` and `scp` both present and granting different scopes: two readings.
    #[error("the scope and scp claims disagree")]
    ConflictingScopes,
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
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::InvalidAudience => "invalid_audience",
            AuthError::ClaimRejected(_) => "claim_rejected",
            AuthError::SessionInvalid => "invalid_session",
            AuthError::InsufficientScope(_) => "insufficient_scope",
            AuthError::ConflictingScopes => "conflicting_scopes",
        }
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
    roles: Option<RoleRules>,
    required_scopes: Vec<String>,
    authorized_parties: Vec<String>,
    required_claims: Vec<(String, Option<Value>)>,
    email_domains: Vec<String>,
    organization: Option<String>,
    validate_sessions: bool,
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
    /// Roles from the provider's `roles_claim`, through its `role_map` (empty without one).
    pub roles: Vec<String>,
    /// How many items of the roles claims were not role names and were dropped (names a
    /// `role_map` drops as unmapped are not counted).
    pub roles_dropped: u32,
    /// Whether the validation service (if any) must vouch for the session: the provider's
    /// `validate_sessions`.
    pub validate_session: bool,
}

/// [`Verifier::explain`]'s answer.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenExplanation {
    /// The provider whose `issuer` is the token's `iss`, if any.
    pub provider: Option<String>,
    /// What verifying the token came to.
    pub outcome: Result<VerifiedToken, AuthError>,
    /// Once verified: each roles claim of the provider, what it held, what became of it.
    pub claims: Vec<ClaimRoles>,
}

/// What verifying a token came to, when it is not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Verification {
    /// The token verified.
    Verified(VerifiedToken),
    /// The key is not among the issuer's remote keys yet, but a fetch of them is on its way or
    /// may start now: the request should wait for it rather than be answered (as `jwt_authn`
    /// waits for its JWKS). Only given [`RemoteKeys`] to fetch into.
    AwaitingKeys,
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
    // One pass over the bytes: this runs on every request, before the verified-token cache.
    let (mut dots, mut part_len) = (0_usize, 0_usize);
    for &b in token.as_bytes() {
        if b == b'.' {
            // The signature may be empty (that is how `alg: none` looks); header and payload may not.
            if part_len == 0 || dots == 2 {
                return TokenKind::Opaque;
            }
            dots += 1;
            part_len = 0;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            part_len += 1;
        } else {
            return TokenKind::Opaque;
        }
    }
    if dots == 2 {
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
            // A session is cached as `<name>/<session>` and an opaque token as `opaque/<digest>`:
            // a name that repeats, holds a `/` or is `opaque` would let one issuer's session
            // answer for another's.
            if cfg.name.contains('/') || cfg.name == "opaque" {
                return Err(ConfigError::new(
                    format!("[{i}].name"),
                    format!(
                        "{:?}: a provider's name may not hold '/' nor be \"opaque\" (session cache keys start with it)",
                        cfg.name
                    ),
                ));
            }
            if let Some(dup) = providers.iter().take(i).position(|p| p.name == cfg.name) {
                return Err(ConfigError::new(
                    format!("[{i}].name"),
                    format!("name {:?} is already used by providers[{dup}]: sessions are cached by it", cfg.name),
                ));
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
        match self.verify_with(token, now, None)? {
            Verification::Verified(token) => Ok(token),
            // Only a caller with remote keys to fetch into is asked to wait.
            Verification::AwaitingKeys => Err(AuthError::KeysUnavailable),
        }
    }

    /// [`Verifier::verify`], with the remote JWK Sets fetched so far (a provider with
    /// `remote_jwks` has no keys without them). A token whose issuer's set is missing, or whose
    /// `kid` is not in it, marks the set as wanted in `remote`, and is
    /// [`Verification::AwaitingKeys`] while a fetch of that set is on its way or may start now.
    pub fn verify_with(
        &self,
        token: &str,
        now: u64,
        remote: Option<&mut RemoteKeys>,
    ) -> Result<Verification, AuthError> {
        let mut parts = token.splitn(3, '.');
        let (Some(header_b64), Some(payload_b64), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::Malformed("not three dot-separated parts"));
        };
        let header = decode_object(header_b64, Part::Header)?;
        let alg = match header.get("alg") {
            Some(Value::String(alg)) if alg.eq_ignore_ascii_case("none") => return Err(AuthError::AlgNone),
            Some(Value::String(alg)) => {
                Algorithm::from_str(alg).map_err(|_| AuthError::UnsupportedAlgorithm(alg.clone()))?
            }
            _ => return Err(AuthError::Malformed("header has no alg")),
        };
        // RFC 7515 section 4.1.11: extensions we do not understand must not be ignored.
        if header.get("crit").is_some() {
            return Err(AuthError::Malformed("critical header extensions are not supported"));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(AuthError::Malformed("kid is not a string")),
        };
        let payload = decode_object(payload_b64, Part::Payload)?;
        let issuer = match payload.get("iss") {
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
                let unknown = || Err(AuthError::UnknownKey(kid.map(str::to_owned)));
                if fitting.peek().is_none() {
                    unknown()
                } else if fitting
                    .any(|k| jsonwebtoken::crypto::verify(signature, message.as_bytes(), &k.key, alg).unwrap_or(false))
                {
                    Ok(())
                } else if provider.remote.is_some() && kid.is_some() && !keys.iter().any(|k| k.named(kid)) {
                    // Only keys without a `kid` were tried: the one the token names may have
                    // rotated in at the issuer since the set was fetched.
                    unknown()
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
                return Ok(Verification::AwaitingKeys);
            }
        }
        outcome?;

        self.check_claims(provider, &payload, token, now).map(Verification::Verified)
    }

    /// What [`Verifier::verify`] makes of `token`, and why: for `explain --token`. Not on the
    /// filter's path.
    pub fn explain(&self, token: &str, now: u64) -> TokenExplanation {
        let payload = token.split('.').nth(1).and_then(|p| decode_object(p, Part::Payload).ok());
        let issuer = payload.as_ref().and_then(|p| p.get("iss")).and_then(Value::as_str);
        let provider = self.providers.iter().find(|p| Some(p.issuer.as_str()) == issuer);
        let outcome = self.verify(token, now);
        let claims = match (&outcome, provider.and_then(|p| p.roles.as_ref()), &payload) {
            (Ok(_), Some(rules), Some(payload)) => rules.explain(payload),
            _ => Vec::new(),
        };
        TokenExplanation { provider: provider.map(|p| p.name.clone()), outcome, claims }
    }

    fn check_claims(
        &self,
        provider: &Provider,
        payload: &Value,
        token: &str,
        now: u64,
    ) -> Result<VerifiedToken, AuthError> {
        let Some(claims) = payload.as_object() else {
            return Err(AuthError::Malformed("payload is not base64url JSON"));
        };
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
            // An address the issuer says it never verified proves no domain (Cognito sends the
            // flag as a string). Issuers that leave the flag out (Entra ID) only hand out
            // addresses they manage.
            if claims.get("email_verified").is_some_and(|flag| *flag == false || *flag == "false") {
                return Err(AuthError::ClaimRejected("email_verified".into()));
            }
        }
        if let Some(org) = &provider.organization {
            if string_claim(claims, "org_id").as_ref() != Some(org) {
                return Err(AuthError::ClaimRejected("org_id".into()));
            }
        }
        if !provider.required_scopes.is_empty() {
            let granted = granted_scopes(claims)?;
            if let Some(missing) = provider.required_scopes.iter().find(|s| !granted.contains(s.as_str())) {
                return Err(AuthError::InsufficientScope(missing.clone()));
            }
        }
        if !provider.authorized_parties.is_empty() {
            match claims.get("azp") {
                Some(Value::String(azp)) if provider.authorized_parties.contains(azp) => {}
                Some(Value::String(_)) => return Err(AuthError::ClaimRejected("azp".into())),
                _ => return Err(AuthError::MissingClaim("azp".into())),
            }
        }
        let (roles, roles_dropped) = match &provider.roles {
            None => (Vec::new(), 0),
            Some(rules) => rules.roles(payload),
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
            validate_session: provider.validate_sessions,
        })
    }
}

mod cache;
mod claims;
mod keys;
mod remote;
mod roles;

pub use cache::{TokenTally, VerifiedTokens, VerifierState, MAX_TOKEN_KEY_BYTES};
pub use claims::{is_role_name, roles_from, MAX_ROLE_BYTES};
pub use remote::{Discovery, DiscoveryError, Fetch, FetchKind, RemoteJwks, RemoteKeys, JWKS_REFETCH_SECS};

pub use roles::{ClaimRoles, RoleFate};

use claims::{decode_object, granted_scopes, numeric_date, string_claim, Part};
use keys::{compile_provider, Key};
use roles::RoleRules;

#[cfg(test)]
mod tests;

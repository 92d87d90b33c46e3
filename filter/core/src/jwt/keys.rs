//! Verification keys: a provider's configuration compiled, and JWK Sets (RFC 7517) read.

use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

use super::{Discovery, Provider, RemoteJwks, RoleRules, MIN_HMAC_SECRET_BYTES};
use crate::config::{DiscoveryConfig, ProviderConfig, RequiredClaims};
use crate::error::ConfigError;

/// A verification key with the constraints its JWK put on it.
#[derive(Clone)]
pub(super) struct Key {
    kid: Option<String>,
    /// The only algorithm this key may verify, when its JWK says so (`alg`, or `crv` for EC).
    alg: Option<Algorithm>,
    pub(super) key: DecodingKey,
}

impl Key {
    /// Whether the key may verify a token signed with `alg` that names the key `kid`. A `kid`
    /// is only a hint (RFC 7515, section 4.1.4): a key without one is tried whatever the token
    /// names, as Envoy's `jwt_authn` does, so a secret verifies tokens whose issuer adds a
    /// `kid`. The signature decides either way.
    pub(super) fn fits(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.key.family() == alg.family()
            && self.alg.is_none_or(|a| a == alg)
            && match (kid, self.kid.as_deref()) {
                (Some(wanted), Some(own)) => wanted == own,
                _ => true,
            }
    }

    /// Whether this is the key the token names.
    pub(super) fn named(&self, kid: Option<&str>) -> bool {
        kid.is_some() && self.kid.as_deref() == kid
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

pub(super) fn compile_provider(
    cfg: &ProviderConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Provider, ConfigError> {
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

    let sources = [cfg.secret_env.is_some(), cfg.jwks.is_some(), cfg.remote_jwks.is_some(), cfg.discovery.is_some()];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(ConfigError::new("", "give exactly one of `secret_env`, `jwks`, `remote_jwks`, `discovery`"));
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
    let remote = match (&cfg.remote_jwks, &cfg.discovery) {
        (Some(remote), _) => {
            if remote.cluster.is_empty() {
                return Err(ConfigError::new("remote_jwks.cluster", "must not be empty"));
            }
            let (_, authority, path) =
                split_http_uri(&remote.uri).map_err(|why| ConfigError::new("remote_jwks.uri", why))?;
            Some(RemoteJwks {
                provider: 0,
                cluster: remote.cluster.clone(),
                authority: authority.to_owned(),
                path,
                cache_secs: remote.cache_secs,
                timeout_ms: remote.timeout_ms,
                discovery: None,
            })
        }
        (None, Some(discovery)) => Some(compile_discovery(cfg, discovery)?),
        (None, None) => None,
    };
    let required_claims = match &cfg.required_claims {
        None => Vec::new(),
        Some(RequiredClaims::Names(names)) => names.iter().map(|n| (n.clone(), None)).collect(),
        Some(RequiredClaims::Values(map)) => {
            map.iter().map(|(k, v)| (k.clone(), (!v.is_null()).then(|| v.clone()))).collect()
        }
    };
    for (i, scope) in cfg.required_scopes.iter().enumerate() {
        if scope.is_empty() || scope.contains(' ') {
            return Err(ConfigError::new(format!("required_scopes[{i}]"), "a scope is one non-empty word"));
        }
    }
    let required_scopes = cfg.required_scopes.clone();
    Ok(Provider {
        name: cfg.name.clone(),
        issuer: cfg.issuer.clone(),
        audiences: cfg.audiences.clone(),
        algorithms,
        keys,
        remote,
        roles: RoleRules::compile(cfg)?,
        required_scopes,
        authorized_parties: cfg.authorized_parties.clone(),
        required_claims,
        email_domains: cfg
            .allowed_email_domains
            .iter()
            .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
            .collect(),
        organization: cfg.organization.clone(),
        validate_sessions: cfg.validate_sessions,
    })
}

/// Where `discovery` finds the document: `<issuer>/.well-known/openid-configuration` (OpenID
/// Connect Discovery 1.0, section 4), the issuer's trailing `/` dropped.
fn compile_discovery(cfg: &ProviderConfig, discovery: &DiscoveryConfig) -> Result<RemoteJwks, ConfigError> {
    if discovery.cluster.is_empty() {
        return Err(ConfigError::new("discovery.cluster", "must not be empty"));
    }
    if discovery.jwks_cluster.as_ref().is_some_and(String::is_empty) {
        return Err(ConfigError::new("discovery.jwks_cluster", "must not be empty (leave it out to use `cluster`)"));
    }
    let (_, authority, path) = split_http_uri(&cfg.issuer)
        .map_err(|why| ConfigError::new("issuer", format!("with `discovery`, the issuer {why}")))?;
    if path.contains('?') {
        // Section 4.1: the issuer has no query for the well-known path to go after.
        return Err(ConfigError::new("issuer", "with `discovery`, the issuer must have no query"));
    }
    Ok(RemoteJwks {
        provider: 0,
        cluster: discovery.cluster.clone(),
        authority: authority.to_owned(),
        path: format!("{}/.well-known/openid-configuration", path.trim_end_matches('/')),
        cache_secs: discovery.cache_secs,
        timeout_ms: discovery.timeout_ms,
        discovery: Some(Discovery {
            issuer: cfg.issuer.clone(),
            jwks_cluster: discovery.jwks_cluster.clone().unwrap_or_else(|| discovery.cluster.clone()),
        }),
    })
}

/// An absolute `http(s)` URI as a request through a cluster: whether it is `https`, the
/// `:authority`, and the `:path` (path and query; `/` when it has none). A fragment, userinfo,
/// or a space or control character anywhere has no place in such a request and is refused.
pub(super) fn split_http_uri(uri: &str) -> Result<(bool, &str, String), &'static str> {
    let (https, rest) = match (uri.strip_prefix("https://"), uri.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err("must be an http(s) URL"),
    };
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not hold spaces or control characters");
    }
    if uri.contains('#') {
        return Err("must have no fragment");
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => (rest.get(..at).unwrap_or_default(), rest.get(at..).unwrap_or("/")),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err("has no host");
    }
    if authority.contains('@') {
        return Err("must have no userinfo");
    }
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
    Ok((https, authority, path))
}

/// Compiles a JWK Set. Keys meant for encryption (`use: enc`) are skipped; any other key that
/// does not parse is an error naming `keys[i].field`, because a silently dropped signing key
/// shows up only as 401s in production.
pub(super) fn compile_jwks(jwks: &Value) -> Result<Vec<Key>, ConfigError> {
    jwk_list(jwks)?.iter().enumerate().filter_map(|(i, raw)| compile_jwk(i, raw).transpose()).collect()
}

/// The usable keys of a JWK Set fetched from an issuer, and why each other key was skipped. A
/// configured set with a key the filter cannot use is a mistake to point out; a fetched one is
/// the issuer's choice (a new algorithm published beside the keys in use), and refusing the
/// whole set for it would refuse every token of the issuer. As Envoy's `jwt_authn` does, the
/// keys that can be used are kept; a set with none is refused.
pub(super) fn compile_fetched_jwks(jwks: &Value) -> Result<(Vec<Key>, Vec<ConfigError>), ConfigError> {
    let list = jwk_list(jwks)?;
    let (mut keys, mut skipped) = (Vec::with_capacity(list.len()), Vec::new());
    for (i, raw) in list.iter().enumerate() {
        match compile_jwk(i, raw) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err(why) => skipped.push(why),
        }
    }
    match skipped.first() {
        // No key to use: the first one's reason is the set's.
        Some(why) if keys.is_empty() => Err(why.clone()),
        _ => Ok((keys, skipped)),
    }
}

fn jwk_list(jwks: &Value) -> Result<&Vec<Value>, ConfigError> {
    jwks.get("keys").and_then(Value::as_array).ok_or_else(|| ConfigError::new("keys", "a JWK Set needs a `keys` array"))
}

/// The largest RSA modulus the verifier takes, in bytes (4096 bits).
const MAX_RSA_BYTES: usize = 512;

/// The key `raw`, the set's `i`th; `None` for an encryption key, which never verifies a token.
fn compile_jwk(i: usize, raw: &Value) -> Result<Option<Key>, ConfigError> {
    let at = |field: &str| format!("keys[{i}]{field}");
    let obj = raw.as_object().ok_or_else(|| ConfigError::new(at(""), "a JWK is a JSON object"))?;
    if obj.get("use").and_then(Value::as_str) == Some("enc") {
        return Ok(None);
    }
    for field in ["n", "e", "x", "y", "k"] {
        let Some(v) = obj.get(field) else { continue };
        let bytes = v
            .as_str()
            .and_then(|s| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
            .ok_or_else(|| ConfigError::new(at(&format!(".{field}")), "not base64url"))?;
        // The RSA verifier (the `rsa` crate) refuses moduli over 4096 bits at each signature:
        // such a key would load, then answer every token with a bad signature.
        if field == "n" && bytes.iter().skip_while(|b| **b == 0).count() > MAX_RSA_BYTES {
            return Err(ConfigError::new(at(".n"), "an RSA key over 4096 bits, which the verifier cannot use"));
        }
    }
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(raw.clone()).map_err(|e| ConfigError::new(at(""), format!("not a usable JWK: {e}")))?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| ConfigError::new(at(""), format!("not a usable key: {e}")))?;
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
    Ok(Some(Key { kid, alg, key }))
}

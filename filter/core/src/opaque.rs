//! NoETL's opaque session tokens: the shape a token that is not a JWT must have before the
//! validation service is asked about it.
//!
//! NoETL's login creates a session whose token is `md5(random()::text || clock_timestamp()::text)`:
//! 32 lowercase hex characters. Only the validation callout can vouch for such a token, so each
//! one the filter has not seen costs NoETL a query. Checking the shape first keeps junk (typos,
//! other systems' tokens, probes) from ever reaching NoETL: it is answered 401 `malformed`
//! without a callout. The shape is configurable for deployments whose sessions look otherwise.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The shortest opaque token a configuration may accept: shorter ones are guessable.
pub const MIN_OPAQUE_TOKEN_LENGTH: u32 = 16;

/// The longest opaque token a configuration may accept (Envoy's default header size limit is
/// 60 KiB; a session token is never near it).
pub const MAX_OPAQUE_TOKEN_LENGTH: u32 = 4096;

/// The characters an opaque token may be made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alphabet {
    /// `0-9a-f`: NoETL's `md5(...)` sessions. The default.
    #[default]
    LowerHex,
    /// `0-9a-fA-F`.
    Hex,
    /// `A-Za-z0-9`.
    Alphanumeric,
    /// `A-Za-z0-9-_` (RFC 4648 section 5, unpadded).
    Base64url,
    /// `A-Za-z0-9+/`, with up to two `=` of padding at the end (RFC 4648 section 4).
    Base64,
}

impl Alphabet {
    fn allows(self, b: u8) -> bool {
        match self {
            Alphabet::LowerHex => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            Alphabet::Hex => b.is_ascii_hexdigit(),
            Alphabet::Alphanumeric => b.is_ascii_alphanumeric(),
            Alphabet::Base64url => b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
            Alphabet::Base64 => b.is_ascii_alphanumeric() || b == b'+' || b == b'/',
        }
    }
}

/// `opaque_token_shape`: what an opaque session token looks like.
///
/// # Defaults
/// `alphabet: lower_hex`, `min_length: 32`, `max_length: 32` (NoETL's sessions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpaqueShapeConfig {
    /// The characters a token may use.
    #[serde(default)]
    pub alphabet: Alphabet,
    /// The fewest characters (padding included).
    #[serde(default = "default_length")]
    pub min_length: u32,
    /// The most characters (padding included).
    #[serde(default = "default_length")]
    pub max_length: u32,
}

impl Default for OpaqueShapeConfig {
    fn default() -> Self {
        OpaqueShapeConfig { alphabet: Alphabet::default(), min_length: default_length(), max_length: default_length() }
    }
}

fn default_length() -> u32 {
    32
}

/// A compiled, checked [`OpaqueShapeConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpaqueShape {
    alphabet: Alphabet,
    min_length: usize,
    max_length: usize,
}

impl OpaqueShape {
    /// Checks the lengths; errors name the field.
    pub fn compile(cfg: &OpaqueShapeConfig) -> Result<Self, ConfigError> {
        if cfg.min_length < MIN_OPAQUE_TOKEN_LENGTH {
            return Err(ConfigError::new(
                "min_length",
                format!("{}: tokens shorter than {MIN_OPAQUE_TOKEN_LENGTH} characters can be guessed", cfg.min_length),
            ));
        }
        if cfg.max_length > MAX_OPAQUE_TOKEN_LENGTH {
            return Err(ConfigError::new(
                "max_length",
                format!("{}: at most {MAX_OPAQUE_TOKEN_LENGTH}", cfg.max_length),
            ));
        }
        if cfg.max_length < cfg.min_length {
            return Err(ConfigError::new(
                "max_length",
                format!("{} is less than min_length {}", cfg.max_length, cfg.min_length),
            ));
        }
        let len = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(OpaqueShape { alphabet: cfg.alphabet, min_length: len(cfg.min_length), max_length: len(cfg.max_length) })
    }

    /// Whether `token` has this shape.
    pub fn matches(&self, token: &str) -> bool {
        let bytes = token.as_bytes();
        if !(self.min_length..=self.max_length).contains(&bytes.len()) {
            return false;
        }
        let body = match self.alphabet {
            // Padding only at the end, at most two, and never the whole token.
            Alphabet::Base64 => {
                let unpadded = token.trim_end_matches('=');
                if bytes.len() - unpadded.len() > 2 || unpadded.is_empty() {
                    return false;
                }
                unpadded.as_bytes()
            }
            _ => bytes,
        };
        body.iter().all(|&b| self.alphabet.allows(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn shape(json: &str) -> Result<OpaqueShape, ConfigError> {
        OpaqueShape::compile(&serde_json::from_str(json).unwrap())
    }

    const NOETL: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn the_default_is_noetls_md5_session() {
        let s = shape("{}").unwrap();
        assert!(s.matches(NOETL));
        assert!(s.matches("d41d8cd98f00b204e9800998ecf8427e"));
        for junk in [
            "",
            "0123456789abcdef0123456789abcde",   // 31
            "0123456789abcdef0123456789abcdef0", // 33
            "0123456789ABCDEF0123456789ABCDEF",  // uppercase
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", // sha-256 hex
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3",                                 // base64
            "0123456789abcdef 123456789abcdef",
            "0123456789abcdef0123456789abcde\u{e9}",
            "noetl-opaque-session-1",
        ] {
            assert!(!s.matches(junk), "{junk:?}");
        }
    }

    #[test]
    fn other_alphabets_when_configured() {
        let hex64 = shape(r#"{"alphabet": "hex", "min_length": 32, "max_length": 64}"#).unwrap();
        assert!(hex64.matches(&NOETL.repeat(2)));
        assert!(hex64.matches(&NOETL.to_uppercase()));
        assert!(!hex64.matches(&NOETL.repeat(3)));

        let b64 = shape(r#"{"alphabet": "base64", "min_length": 16, "max_length": 44}"#).unwrap();
        assert!(b64.matches("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"));
        assert!(b64.matches("MDEyMzQ1Njc4OWFiY2RlZg=="));
        assert!(b64.matches("ab+/cdefghijklmnop"));
        assert!(!b64.matches("MDEyMzQ1Njc4OWFiY2Rl==="), "three padding characters");
        assert!(!b64.matches("MDEyMzQ1Njc4=WFiY2RlZg="), "padding inside");
        assert!(!b64.matches("================"));
        assert!(!b64.matches("ab-_cdefghijklmnop"), "url-safe characters are another alphabet");

        let url = shape(r#"{"alphabet": "base64url", "min_length": 16, "max_length": 64}"#).unwrap();
        assert!(url.matches("ab-_cdefghijklmnop"));
        assert!(!url.matches("ab+/cdefghijklmnop"));
        assert!(!url.matches("abcdefghijklmnop=="));

        let alnum = shape(r#"{"alphabet": "alphanumeric", "min_length": 20, "max_length": 20}"#).unwrap();
        assert!(alnum.matches("AbCdEfGhIj0123456789"));
        assert!(!alnum.matches("AbCdEfGhIj012345678-"));
    }

    #[test]
    fn guessable_or_inconsistent_shapes_are_refused() {
        for (json, field) in [
            (r#"{"min_length": 8, "max_length": 32}"#, "min_length"),
            (r#"{"min_length": 40}"#, "max_length"),
            (r#"{"max_length": 100000}"#, "max_length"),
        ] {
            assert_eq!(shape(json).unwrap_err().path, field, "{json}");
        }
        assert!(serde_json::from_str::<OpaqueShapeConfig>(r#"{"alphabet": "emoji"}"#).is_err());
        assert!(serde_json::from_str::<OpaqueShapeConfig>(r#"{"length": 32}"#).is_err());
    }
}

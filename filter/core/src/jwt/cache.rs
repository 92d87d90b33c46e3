//! What a worker remembers between requests: tokens that verified, and the kinds it saw.

use std::rc::Rc;

use crate::memo::Memo;

use super::{AuthError, RemoteKeys, Verification, VerifiedToken, Verifier};

/// Tokens up to this many bytes are remembered by their bytes, so a request that presents one
/// again costs a hash-map probe rather than a SHA-256 (in wasm, about 25,000 instructions for a
/// typical token); longer ones by their SHA-256, so the cache's memory stays bounded by
/// `jwt_cache_size` times this.
pub const MAX_TOKEN_KEY_BYTES: usize = 4096;

/// What a verified token is remembered by: the token itself, or for a long one `#` and its
/// SHA-256. Only compact JWS are remembered, and `#` is not in their alphabet, so the two
/// kinds of key never meet.
fn long_token_key(token: &str) -> Rc<str> {
    format!("#{}", super::token_digest(token)).into()
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

/// Tokens that verified, remembered by their exact bytes (see [`MAX_TOKEN_KEY_BYTES`]) until
/// their `exp`, so a token's signature is checked once per worker rather than on every request
/// (as Envoy's `jwt_cache_config`): RSA in wasm costs about a hundred times what HMAC does.
/// Bounded; the oldest go first.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    memo: Memo<Rc<str>, VerifiedToken>,
    /// Role names dropped from the tokens verified since the host last took the count.
    roles_dropped: u64,
    /// Until when (seconds, the clock skew included) the token last answered for stays valid.
    answered_until: Option<u64>,
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize) -> Self {
        VerifiedTokens { memo: Memo::new(capacity), roles_dropped: 0, answered_until: None }
    }

    /// How many role names the tokens verified since the last call carried that were not role
    /// names (see [`roles_from`](super::roles_from)), for the host's stat; counted when a token is verified, not
    /// each time the cache answers for it.
    pub fn take_roles_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.roles_dropped)
    }

    /// The second the token [`Verifier::verify_cached`] last verified stops verifying (its
    /// `exp` plus the clock skew), taken once.
    pub fn take_answered_until(&mut self) -> Option<u64> {
        self.answered_until.take()
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.memo.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.memo.is_empty()
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
    ) -> Result<Verification, AuthError> {
        let remembers = cache.memo.capacity() > 0;
        let long = (remembers && token.len() > MAX_TOKEN_KEY_BYTES).then(|| long_token_key(token));
        if let Some(hit) = cache.memo.get(long.as_deref().unwrap_or(token)) {
            let until = hit.expires_at.saturating_add(self.clock_skew);
            if now < until {
                let hit = hit.clone();
                cache.answered_until = Some(until);
                return Ok(Verification::Verified(hit));
            }
        }
        let Verification::Verified(verified) = self.verify_with(token, now, Some(remote))? else {
            return Ok(Verification::AwaitingKeys);
        };
        cache.roles_dropped = cache.roles_dropped.saturating_add(u64::from(verified.roles_dropped));
        cache.answered_until = Some(verified.expires_at.saturating_add(self.clock_skew));
        if remembers {
            cache.memo.insert(long.unwrap_or_else(|| token.into()), verified.clone());
        }
        Ok(Verification::Verified(verified))
    }
}

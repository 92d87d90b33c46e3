//! Reading claims: role names, strings, NumericDates (RFC 7519 section 2).

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::AuthError;
use crate::json::{parse_strict, JsonError};

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
    for_each_role_item(value, |item| match item {
        Ok(name) if is_role_name(name) => roles.push(name.to_owned()),
        _ => dropped = dropped.saturating_add(1),
    });
    (roles, dropped)
}

/// The items of a roles value, read one way for the validation service's answer and every
/// claim a provider reads roles from: an array's items (`Err` for one that is not a string),
/// the words of a string (runs of spaces only separate), or the value itself as one `Err` when
/// it is of another type. Absent and `null` have none.
pub(super) fn for_each_role_item<'a>(value: Option<&'a Value>, mut item: impl FnMut(Result<&'a str, &'a Value>)) {
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => items.iter().for_each(|v| item(v.as_str().ok_or(v))),
        Some(Value::String(s)) => s.split(' ').filter(|r| !r.is_empty()).for_each(|name| item(Ok(name))),
        Some(other) => item(Err(other)),
    }
}

/// A string claim; numbers are accepted too (`sub: 42`), as some issuers send ids that way.
pub(super) fn string_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A NumericDate claim (RFC 7519 section 2): seconds, possibly fractional; negative is 0.
pub(super) fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n.as_u64().or_else(|| n.as_f64().map(|f| if f > 0.0 { f as u64 } else { 0 }));
            secs.map(Some).ok_or_else(|| AuthError::MissingClaim(name.into()))
        }
        Some(_) => Err(AuthError::MissingClaim(name.into())),
    }
}

/// Which part of a token [`decode_object`] reads, for the refusal's reason.
#[derive(Clone, Copy)]
pub(super) enum Part {
    Header,
    Payload,
}

/// A base64url JSON part that holds an object, as a `Value` (so JSON pointers can read it).
/// A duplicate key is refused, as in request bodies: `{"roles": ["viewer"], "roles": ["admin"]}`
/// is one token to a reader that keeps the first and another to one that keeps the last.
pub(super) fn decode_object(part: &str, which: Part) -> Result<Value, AuthError> {
    let (not_json, duplicate) = match which {
        Part::Header => ("header is not base64url JSON", "header has a duplicate key"),
        Part::Payload => ("payload is not base64url JSON", "payload has a duplicate key"),
    };
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::Malformed(not_json))?;
    match parse_strict(&bytes) {
        Ok(value) if value.is_object() => Ok(value),
        Err(JsonError::DuplicateKey(_)) => Err(AuthError::Malformed(duplicate)),
        _ => Err(AuthError::Malformed(not_json)),
    }
}

/// The scopes granted: `scope` (space-separated, RFC 8693 section 4.2; an array as Duende
/// IdentityServer and Spring Authorization Server send it) or `scp` (an array, as Entra ID and
/// Okta send it, or a string). Both present and granting different sets is two
/// readings of one token, refused; neither present, or a value of another shape, is a missing
/// claim.
pub(super) fn granted_scopes(claims: &Map<String, Value>) -> Result<BTreeSet<&str>, AuthError> {
    let read = |name: &str| -> Result<Option<BTreeSet<&str>>, AuthError> {
        let invalid = || AuthError::MissingClaim(name.into());
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.split(' ').filter(|s| !s.is_empty()).collect())),
            Some(Value::Array(items)) => {
                items.iter().map(|v| v.as_str().ok_or_else(invalid)).collect::<Result<_, _>>().map(Some)
            }
            Some(_) => Err(invalid()),
        }
    };
    match (read("scope")?, read("scp")?) {
        (Some(scope), Some(scp)) if scope != scp => Err(AuthError::ConflictingScopes),
        (Some(scopes), _) | (None, Some(scopes)) => Ok(scopes),
        (None, None) => Err(AuthError::MissingClaim("scope".into())),
    }
}

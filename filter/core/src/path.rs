//! Path normalisation: the one place that decides what a request path and a playbook path are.
//!
//! A glob such as `system/**` only protects `system/x` if no spelling of that path can slip
//! past it: `data/../system/x`, `data/%2e%2e/system/x`, `//system/x`, `/system/x`. Both request
//! paths (for route matching) and playbook paths (for the policy) go through here, and a
//! `..` segment is refused outright rather than resolved, because the upstream might resolve
//! it differently from us.

use std::fmt;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// A `..` segment (in any encoding).
    #[error("path contains a '..' segment")]
    DotDot,
    /// Percent-decoding gave bytes that are not UTF-8.
    #[error("path is not valid UTF-8 once percent-decoded")]
    NotUtf8,
    /// A control character or a backslash, which upstreams split or truncate differently.
    #[error("path contains a control character or a backslash")]
    ForbiddenCharacter,
    /// Nothing left once empty and `.` segments are removed.
    #[error("path is empty")]
    Empty,
}

/// A normalised playbook path: segments joined by `/`, no leading `/`, no empty, `.` or `..`
/// segments. Only [`PlaybookPath::parse`] makes one, so the policy never sees another spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlaybookPath(String);

impl PlaybookPath {
    /// Normalises a playbook path as found in a request (already percent-decoded).
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let normalised = join_segments(raw)?;
        if normalised.is_empty() {
            return Err(PathError::Empty);
        }
        Ok(PlaybookPath(normalised))
    }

    /// The normalised path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlaybookPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Normalises a request `:path` for route matching: query and fragment dropped, percent-decoded
/// once, empty and `.` segments removed, a leading `/`, and a trailing `/` kept if there was one
/// (so `prefix: /api/auth/` still matches `/api/auth/`).
pub fn normalize_request_path(raw: &str) -> Result<String, PathError> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8().map_err(|_| PathError::NotUtf8)?;
    let joined = join_segments(&decoded)?;
    let mut out = String::with_capacity(joined.len() + 2);
    out.push('/');
    out.push_str(&joined);
    if decoded.ends_with('/') && !joined.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Splits on `/`, drops empty and `.` segments, refuses `..` and forbidden characters.
fn join_segments(path: &str) -> Result<String, PathError> {
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err(PathError::ForbiddenCharacter);
    }
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/') {
        match segment {
            "" | "." => continue,
            ".." => return Err(PathError::DotDot),
            _ => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(segment);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playbook_paths_normalise_to_one_spelling() {
        for (raw, want) in [
            ("data/daily_load", "data/daily_load"),
            ("/data/daily_load", "data/daily_load"),
            ("data//daily_load/", "data/daily_load"),
            ("./data/./x", "data/x"),
            ("api_integration/amadeus_ai_api", "api_integration/amadeus_ai_api"),
        ] {
            assert_eq!(PlaybookPath::parse(raw).unwrap().as_str(), want, "{raw}");
        }
    }

    #[test]
    fn playbook_paths_that_escape_are_refused() {
        assert_eq!(PlaybookPath::parse("data/../system/x"), Err(PathError::DotDot));
        assert_eq!(PlaybookPath::parse(".."), Err(PathError::DotDot));
        assert_eq!(PlaybookPath::parse("data\\..\\system"), Err(PathError::ForbiddenCharacter));
        assert_eq!(PlaybookPath::parse("data/\0x"), Err(PathError::ForbiddenCharacter));
        assert_eq!(PlaybookPath::parse("data/\nx"), Err(PathError::ForbiddenCharacter));
        assert_eq!(PlaybookPath::parse(""), Err(PathError::Empty));
        assert_eq!(PlaybookPath::parse("//./"), Err(PathError::Empty));
    }

    #[test]
    fn request_paths_are_decoded_once_and_normalised() {
        for (raw, want) in [
            ("/api/catalog/data/x", "/api/catalog/data/x"),
            ("/api/catalog/data/x?y=1#f", "/api/catalog/data/x"),
            ("//api///catalog/./data/x", "/api/catalog/data/x"),
            ("/api/auth/", "/api/auth/"),
            ("/", "/"),
            ("", "/"),
            ("/api/catalog/system%2Fsecret", "/api/catalog/system/secret"),
            // Decoded once: `%252e` stays the literal `%2e`, which is not a dot segment.
            ("/api/catalog/%252e%252e/system", "/api/catalog/%2e%2e/system"),
        ] {
            assert_eq!(normalize_request_path(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn request_paths_that_escape_are_refused() {
        for raw in [
            "/api/catalog/data/../system/x",
            "/api/catalog/data/%2e%2e/system/x",
            "/api/catalog/data/%2E%2E/system/x",
            "/api/catalog/data/.%2e/system/x",
        ] {
            assert_eq!(normalize_request_path(raw), Err(PathError::DotDot), "{raw}");
        }
        assert_eq!(normalize_request_path("/a/%ff"), Err(PathError::NotUtf8));
        assert_eq!(normalize_request_path("/a/%00"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize_request_path("/a/%5c..%5cb"), Err(PathError::ForbiddenCharacter));
    }
}

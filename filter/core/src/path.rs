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
    /// A playbook path that still holds a `%` once decoded: another decoder would decode it
    /// again and read another name.
    #[error("playbook path still holds a '%' once decoded")]
    Encoded,
    /// A segment that starts or ends with whitespace, which some readers trim.
    #[error("playbook path has a segment with leading or trailing whitespace")]
    Whitespace,
    /// A name that starts or ends with `.`, which NoETL strips from a test suite's id
    /// (`.system/x` is the suite of `system/x` there).
    #[error("playbook path starts or ends with '.'")]
    EdgeDot,
    /// A playbook name written other than in its normal form: a `/` at either end, or an empty
    /// or `.` segment. NoETL compares names as written, so `/data/x` or `data//x` is another
    /// catalog entry there, and another string to its own LIKE patterns, than `data/x`.
    #[error("playbook path is not in normal form (a '/' at either end, or an empty or '.' segment)")]
    NotNormal,
    /// A character outside the configured alphabet (`playbook_path_chars`).
    #[error("playbook path holds {0:?}, outside the allowed characters")]
    OutsideAlphabet(char),
}

/// A normalised playbook path: segments joined by `/`, no leading `/`, no empty, `.` or `..`
/// segments. Only [`PlaybookPath::parse`] makes one, so the policy never sees another spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlaybookPath(String);

impl PlaybookPath {
    /// Reads a playbook path as found in a request (already percent-decoded). A name that
    /// another reader could take for another is refused: one not in normal form, one that still
    /// holds `%`, a backslash, a control character, a segment with whitespace at either end, or
    /// a `.` at either end.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let normalised = join_segments(raw)?;
        if normalised.is_empty() {
            return Err(PathError::Empty);
        }
        if normalised != raw {
            return Err(PathError::NotNormal);
        }
        if normalised.contains('%') {
            return Err(PathError::Encoded);
        }
        let padded = |s: &str| s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace);
        if normalised.split('/').any(padded) {
            return Err(PathError::Whitespace);
        }
        if normalised.starts_with('.') || normalised.ends_with('.') {
            return Err(PathError::EdgeDot);
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

/// The characters a playbook path may hold: ASCII letters and digits, `/`, and the configured
/// others (`playbook_path_chars`, by default `_-.`, which is what NoETL's catalog paths use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybookAlphabet(Vec<char>);

impl PlaybookAlphabet {
    /// The default others: `_`, `-` and `.`.
    pub const DEFAULT: &'static str = "_-.";

    /// The alphabet with `others` besides letters, digits and `/`. `%`, `\`, whitespace and
    /// control characters are refused: names holding them always have another reading.
    pub fn compile(others: &str) -> Result<Self, String> {
        if let Some(c) = others.chars().find(|c| *c == '%' || *c == '\\' || c.is_whitespace() || c.is_control()) {
            return Err(format!("{c:?} cannot be allowed in playbook paths: another reader decodes or trims it"));
        }
        Ok(PlaybookAlphabet(others.chars().collect()))
    }

    /// Whether every character of `path` is in the alphabet.
    pub fn check(&self, path: &PlaybookPath) -> Result<(), PathError> {
        match path.as_str().chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '/' || self.0.contains(c))) {
            Some(c) => Err(PathError::OutsideAlphabet(c)),
            None => Ok(()),
        }
    }
}

impl Default for PlaybookAlphabet {
    fn default() -> Self {
        PlaybookAlphabet(Self::DEFAULT.chars().collect())
    }
}

/// Normalises a request `:path` for route matching: query and fragment dropped, percent-decoded
/// once, empty and `.` segments removed, a leading `/`, and a trailing `/` kept if there was one
/// (so `prefix: /api/auth/` still matches `/api/auth/`).
pub fn normalize_request_path(raw: &str) -> Result<String, PathError> {
    if is_normal(raw) {
        return Ok(raw.to_owned());
    }
    normalize_in_full(raw)
}

/// [`normalize_request_path`] without the shortcut for paths already normal.
fn normalize_in_full(raw: &str) -> Result<String, PathError> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8().map_err(|_| PathError::NotUtf8)?;
    let joined = join_segments(&decoded)?;
    if decoded.contains('%') {
        // An upstream (or a proxy behind it) that decodes once more must not find a `..`
        // there either: `%252e%252e` is `%2e%2e` to us and `..` to it.
        let again = percent_encoding::percent_decode_str(&decoded).decode_utf8_lossy();
        join_segments(&again)?;
    }
    let mut out = String::with_capacity(joined.len() + 2);
    out.push('/');
    out.push_str(&joined);
    if decoded.ends_with('/') && !joined.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether `raw` is already what [`normalize_request_path`] makes of it: a leading `/`,
/// printable ASCII other than `%`, `?`, `#` and `\\`, and no empty, `.` or `..` segment (a
/// trailing `/` aside). Most requests are; they skip the decoding and the rebuilding.
fn is_normal(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    // The segment after each `/`: how it starts, checked when the next `/` (or the end) comes.
    let mut segment_start = 1;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match b {
            b'/' => {
                if !plain_segment(bytes.get(segment_start..i).unwrap_or_default()) {
                    return false;
                }
                segment_start = i + 1;
            }
            b'%' | b'?' | b'#' | b'\\' => return false,
            0x21..=0x7e => {}
            _ => return false,
        }
    }
    let last = bytes.get(segment_start..).unwrap_or_default();
    // The last segment may be empty only as a trailing `/` (and `/` alone is normal).
    last.is_empty() || plain_segment(last)
}

fn plain_segment(segment: &[u8]) -> bool {
    !matches!(segment, b"" | b"." | b"..")
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
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// The shortcut for paths already normal agrees with the full normalisation on every path
    /// up to six long over an alphabet of the characters that matter.
    #[test]
    fn normal_paths_take_the_shortcut_to_the_same_answer() {
        let alphabet = ["/", ".", "a", "%2e", "?", "\\", " ", "\u{e9}"];
        let mut paths = vec![String::new()];
        let mut level = vec![String::new()];
        for _ in 0..6 {
            level = level.iter().flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}"))).collect();
            paths.extend(level.iter().cloned());
        }
        let mut shortcuts = 0;
        for p in &paths {
            shortcuts += usize::from(is_normal(p));
            assert_eq!(normalize_request_path(p), normalize_in_full(p), "{p:?}");
        }
        assert!(shortcuts > 100, "the shortcut was taken {shortcuts} times");
    }

    #[test]
    fn playbook_paths_are_taken_only_in_normal_form() {
        for raw in ["data/daily_load", "api_integration/amadeus_ai_api", "a"] {
            assert_eq!(PlaybookPath::parse(raw).unwrap().as_str(), raw);
        }
        // NoETL compares names as written: each of these is another catalog entry there.
        for raw in ["/data/daily_load", "data/daily_load/", "data//daily_load", "./data/./x", "data/./x", "/a/"] {
            assert_eq!(PlaybookPath::parse(raw), Err(PathError::NotNormal), "{raw}");
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
    fn playbook_names_with_another_reading_are_refused() {
        for (raw, want) in [
            ("data/%2e%2e/system", PathError::Encoded),
            ("data/x%20", PathError::Encoded),
            ("%", PathError::Encoded),
            (" data/x", PathError::Whitespace),
            ("data/x ", PathError::Whitespace),
            ("data/ x", PathError::Whitespace),
            ("data /x", PathError::Whitespace),
            ("data/x\u{a0}", PathError::Whitespace),
            ("data/x\t", PathError::ForbiddenCharacter),
            ("data\\x", PathError::ForbiddenCharacter),
            ("data/\u{85}x", PathError::ForbiddenCharacter),
            (".system/x", PathError::EdgeDot),
            ("..system/x", PathError::EdgeDot),
            ("./..../system/x", PathError::NotNormal),
            ("..../system/x", PathError::EdgeDot),
            ("system/x.", PathError::EdgeDot),
            ("system/x/..x.", PathError::EdgeDot),
        ] {
            assert_eq!(PlaybookPath::parse(raw), Err(want), "{raw:?}");
        }
        assert_eq!(PlaybookPath::parse("data/a b").unwrap().as_str(), "data/a b", "the alphabet refuses inner spaces");
        assert_eq!(PlaybookPath::parse("data/.x/v1.2").unwrap().as_str(), "data/.x/v1.2", "inner dots are kept");
    }

    #[test]
    fn the_alphabet_is_noetls_catalog_paths_unless_configured() {
        let default = PlaybookAlphabet::default();
        let ok = |a: &PlaybookAlphabet, s: &str| a.check(&PlaybookPath::parse(s).unwrap());
        for name in ["data/daily_load", "api_integration/amadeus-ai.v2/X9"] {
            assert_eq!(ok(&default, name), Ok(()), "{name}");
        }
        for (name, c) in [("data/a b", ' '), ("data/é", 'é'), ("data/x:y", ':'), ("a+b", '+'), ("a,b", ',')] {
            assert_eq!(ok(&default, name), Err(PathError::OutsideAlphabet(c)), "{name}");
        }
        let wider = PlaybookAlphabet::compile("_-.:é").unwrap();
        assert_eq!(ok(&wider, "data/x:é"), Ok(()));
        assert_eq!(ok(&wider, "data/x+y"), Err(PathError::OutsideAlphabet('+')));
        for bad in ["%", "\\", " ", "\u{0}", "\u{a0}"] {
            assert!(PlaybookAlphabet::compile(bad).is_err(), "{bad:?}");
        }
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
            // Decoded once: `%2541` stays the literal `%41`.
            ("/api/catalog/a%2541", "/api/catalog/a%41"),
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
        // A second round of decoding may not reveal one either.
        for raw in ["/api/catalog/%252e%252e/system", "/a/data%252f..%252fsystem", "/a/%252E./b", "/a/..%25252f"] {
            let want = if raw.ends_with("%25252f") { Ok("/a/..%252f".to_owned()) } else { Err(PathError::DotDot) };
            assert_eq!(normalize_request_path(raw), want, "{raw}");
        }
        assert_eq!(normalize_request_path("/a/%255c..%255cb"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize_request_path("/a/%2500"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize_request_path("/a/%ff"), Err(PathError::NotUtf8));
        assert_eq!(normalize_request_path("/a/%00"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize_request_path("/a/%5c..%5cb"), Err(PathError::ForbiddenCharacter));
    }
}

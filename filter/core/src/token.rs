//! Where the session token comes from (SPEC section 2).

use crate::config::TokenSourceConfig;
use crate::error::ConfigError;

/// One compiled token source.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A header (name lowercased), with an optional scheme or prefix to strip.
    Header { name: String, prefix: Option<Prefix> },
    /// A cookie, by its case-sensitive name.
    Cookie { name: String },
}

/// A header value prefix: an auth scheme (`Bearer `: case-insensitive, any run of spaces
/// after it, as RFC 9110 allows) or a literal prefix matched case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Prefix {
    Scheme(String),
    Literal(String),
}

/// The ordered token sources; the first that yields a token wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSources(Vec<Source>);

/// Which source a token came from, for logs.
pub type SourceIndex = usize;

impl TokenSources {
    /// Compiles `token_sources`; errors name `[i].field`.
    pub fn compile(configs: &[TokenSourceConfig]) -> Result<Self, ConfigError> {
        if configs.is_empty() {
            return Err(ConfigError::new("", "at least one token source is needed"));
        }
        let mut sources = Vec::with_capacity(configs.len());
        for (i, cfg) in configs.iter().enumerate() {
            let at = |field: &str| format!("[{i}]{field}");
            let source = match (&cfg.header, &cfg.cookie) {
                (Some(header), None) if !header.trim().is_empty() => Source::Header {
                    name: header.trim().to_ascii_lowercase(),
                    prefix: cfg.prefix.as_deref().filter(|p| !p.is_empty()).map(|p| match p.strip_suffix(' ') {
                        Some(scheme) if !scheme.trim().is_empty() => Prefix::Scheme(scheme.trim().to_owned()),
                        _ => Prefix::Literal(p.to_owned()),
                    }),
                },
                (None, Some(cookie)) if !cookie.trim().is_empty() => {
                    if cfg.prefix.is_some() {
                        return Err(ConfigError::new(at(".prefix"), "a prefix applies to headers, not cookies"));
                    }
                    Source::Cookie { name: cookie.trim().to_owned() }
                }
                (Some(_), Some(_)) => {
                    return Err(ConfigError::new(at(""), "give either `header` or `cookie`, not both"));
                }
                (None, None) => return Err(ConfigError::new(at(""), "give `header` or `cookie`")),
                (Some(_), None) => return Err(ConfigError::new(at(".header"), "empty header name")),
                (None, Some(_)) => return Err(ConfigError::new(at(".cookie"), "empty cookie name")),
            };
            sources.push(source);
        }
        Ok(TokenSources(sources))
    }

    /// The header sources' names (lowercased), with their index in `token_sources`.
    pub fn header_names(&self) -> impl Iterator<Item = (usize, &str)> {
        self.0.iter().enumerate().filter_map(|(i, source)| match source {
            Source::Header { name, .. } => Some((i, name.as_str())),
            Source::Cookie { .. } => None,
        })
    }

    /// The token in `headers` (names compared case-insensitively), and the first source that
    /// carries it; `Ok(None)` when there is none.
    ///
    /// Every source is read, every occurrence of its header or cookie included, because a
    /// request that carries two different tokens (a Bearer header and a cookie, two
    /// `session_token` cookies) could be one user's to the filter and another's to the
    /// upstream: that is [`AmbiguousToken`]. The same token in several places is one token. A
    /// header whose scheme differs (`Authorization: Basic ...` for a `Bearer ` source) or whose
    /// token is empty carries none. A scheme header holding one bare word (`Authorization:
    /// <token>`) carries no token either, but NoETL's Python server takes that word for one: a
    /// request with it and another token is ambiguous too.
    pub fn find<'h>(&self, headers: &'h [(String, String)]) -> Result<Option<(&'h str, SourceIndex)>, AmbiguousToken> {
        let mut found: Option<(&'h str, SourceIndex)> = None;
        let mut bare: Option<&'h str> = None;
        for (i, source) in self.0.iter().enumerate() {
            let mut offer = |token: &'h str| match found {
                None => {
                    found = Some((token, i));
                    Ok(())
                }
                Some((first, _)) if first == token => Ok(()),
                Some(_) => Err(AmbiguousToken),
            };
            match source {
                Source::Header { name, prefix } => {
                    for (_, value) in headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)) {
                        for credential in credentials(value, prefix.as_ref()) {
                            if let Some(token) = strip_prefix(credential, prefix.as_ref()) {
                                offer(token)?;
                            } else if let Some(word) = bare_word(credential, prefix.as_ref()) {
                                bare = Some(word);
                            }
                        }
                    }
                }
                Source::Cookie { name } => {
                    for (_, value) in headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("cookie")) {
                        for token in cookie_values(value, name) {
                            offer(token)?;
                        }
                    }
                }
            }
        }
        match (found, bare) {
            (Some((token, _)), Some(word)) if word != token => Err(AmbiguousToken),
            _ => Ok(found),
        }
    }
}

/// The one word a scheme header holds in place of `scheme token`, other than the scheme itself.
fn bare_word<'v>(credential: &'v str, prefix: Option<&Prefix>) -> Option<&'v str> {
    let Some(Prefix::Scheme(scheme)) = prefix else { return None };
    let word = trim_ows(credential);
    (!word.is_empty() && !word.contains([' ', '\t']) && !word.eq_ignore_ascii_case(scheme)).then_some(word)
}

/// The request carries more than one distinct session token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request carries more than one session token")]
pub struct AmbiguousToken;

/// The credentials in one header value. Envoy joins repeated `Authorization` headers with `,`
/// (`Bearer a,Bearer b`), so for a scheme source a value that is a comma-separated list of
/// `scheme credentials` items is read as that many headers; any other value is one credential
/// (and a comma inside it belongs to the token, which then does not verify).
fn credentials<'v>(value: &'v str, prefix: Option<&Prefix>) -> Vec<&'v str> {
    let is_credential = |item: &str| {
        trim_ows(item).split_once([' ', '\t']).is_some_and(|(scheme, rest)| {
            !scheme.is_empty() && scheme.bytes().all(is_tchar) && !trim_ows(rest).is_empty()
        })
    };
    match prefix {
        Some(Prefix::Scheme(_)) if value.contains(',') && value.split(',').all(is_credential) => {
            value.split(',').collect()
        }
        _ => vec![value],
    }
}

/// A `tchar` of RFC 9110 section 5.6.2, what an auth scheme is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn strip_prefix<'v>(value: &'v str, prefix: Option<&Prefix>) -> Option<&'v str> {
    let rest = match prefix {
        None => value,
        Some(Prefix::Scheme(scheme)) => {
            let value = trim_ows(value);
            let (got, rest) = value.split_once([' ', '\t'])?;
            if !got.eq_ignore_ascii_case(scheme) {
                return None;
            }
            rest
        }
        Some(Prefix::Literal(literal)) => {
            let head = value.get(..literal.len())?;
            if !head.eq_ignore_ascii_case(literal) {
                return None;
            }
            value.get(literal.len()..)?
        }
    };
    let token = trim_ows(rest);
    (!token.is_empty()).then_some(token)
}

/// `s` without the whitespace HTTP allows around a value (RFC 9110 section 5.6.3: spaces and
/// tabs, nothing else: any other byte belongs to the token, which then fails to verify).
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Every value of cookie `name` in one `Cookie` header (`a=1; session_token=xyz`).
fn cookie_values<'v, 'n>(header: &'v str, name: &'n str) -> impl Iterator<Item = &'v str> + use<'v, 'n> {
    header.split(';').filter_map(move |pair| {
        let (k, v) = pair.split_once('=')?;
        let v = trim_ows(v);
        // RFC 6265 allows a value wrapped in one pair of double quotes; a lone or extra quote
        // is part of the value (and then no token), never silently dropped.
        let v = v.strip_prefix('"').and_then(|inner| inner.strip_suffix('"')).unwrap_or(v);
        (trim_ows(k) == name && !v.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginConfig;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn defaults() -> TokenSources {
        let cfg: PluginConfig = serde_json::from_str(r#"{"policy":{"roles":{}}}"#).unwrap();
        TokenSources::compile(&cfg.token_sources).unwrap()
    }

    /// The token, for requests that are not ambiguous.
    fn find<'h>(s: &TokenSources, headers: &'h [(String, String)]) -> Option<(&'h str, SourceIndex)> {
        s.find(headers).unwrap()
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn bearer_header_comes_first_and_scheme_is_case_insensitive() {
        let s = defaults();
        let headers = h(&[("x-session-token", "a"), ("authorization", "Bearer a"), ("cookie", "session_token=a")]);
        assert_eq!(find(&s, &headers), Some(("a", 0)));
        assert_eq!(find(&s, &h(&[("authorization", "bearer a")])), Some(("a", 0)));
        assert_eq!(find(&s, &h(&[("Authorization", "BEARER   a  ")])), Some(("a", 0)));
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_skipped() {
        let s = defaults();
        assert_eq!(find(&s, &h(&[("authorization", "Basic Zm9vOmJhcg==")])), None);
        assert_eq!(find(&s, &h(&[("authorization", "Bearer ")])), None);
        assert_eq!(find(&s, &h(&[("authorization", "Bearer")])), None);
        assert_eq!(find(&s, &h(&[("authorization", "Bearerx y")])), None);
        assert_eq!(find(&s, &h(&[("authorization", "abc123")])), None, "a bare word is no Bearer token");
        let headers = h(&[("authorization", "Basic xx"), ("x-session-token", "b")]);
        assert_eq!(find(&s, &headers), Some(("b", 1)));
    }

    #[test]
    fn session_header_and_cookie() {
        let s = defaults();
        assert_eq!(find(&s, &h(&[("x-session-token", " b\t")])), Some(("b", 1)));
        assert_eq!(find(&s, &h(&[("x-session-token", "b\u{a0}")])), Some(("b\u{a0}", 1)), "only spaces and tabs");
        assert_eq!(find(&s, &h(&[("cookie", "a=1; session_token=c; z=2")])), Some(("c", 2)));
        assert_eq!(find(&s, &h(&[("cookie", "a=1"), ("cookie", "session_token=\"c\"")])), Some(("c", 2)));
        assert_eq!(find(&s, &h(&[("cookie", "session_token=\"c")])), Some(("\"c", 2)), "a lone quote stays");
        assert_eq!(find(&s, &h(&[("cookie", "session_token=\"\"c\"\"")])), Some(("\"c\"", 2)), "one pair only");
        assert_eq!(find(&s, &h(&[("cookie", "Session_Token=c")])), None, "cookie names are case-sensitive");
        assert_eq!(find(&s, &h(&[("cookie", "session_token=")])), None);
        assert_eq!(find(&s, &h(&[("cookie", "garbage;;=;")])), None);
        assert_eq!(find(&s, &[]), None);
    }

    #[test]
    fn different_tokens_are_ambiguous_the_same_token_twice_is_not() {
        let s = defaults();
        for headers in [
            h(&[("authorization", "Bearer a"), ("cookie", "session_token=b")]),
            h(&[("x-session-token", "b"), ("authorization", "Bearer a")]),
            h(&[("cookie", "session_token=a; session_token=b")]),
            h(&[("cookie", "session_token=a"), ("cookie", "x=1; session_token=b")]),
            h(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
            // Envoy joins repeated Authorization headers with a comma.
            h(&[("authorization", "Bearer a,Bearer b")]),
            h(&[("authorization", "Bearer a, bearer b")]),
            h(&[("x-session-token", "a"), ("x-session-token", "b")]),
            h(&[("authorization", "Basic xx"), ("x-session-token", "a"), ("cookie", "session_token=\"b\"")]),
            // NoETL's Python server reads a bare Authorization value as the token.
            h(&[("authorization", "a"), ("x-session-token", "b")]),
            h(&[("authorization", " a "), ("cookie", "session_token=b")]),
        ] {
            assert_eq!(s.find(&headers), Err(AmbiguousToken), "{headers:?}");
        }
        for headers in [
            h(&[("authorization", "Bearer a"), ("cookie", "session_token=a")]),
            h(&[("authorization", "Bearer a"), ("authorization", "bearer  a ")]),
            h(&[("authorization", "Bearer a,Bearer a")]),
            h(&[("cookie", "session_token=a; session_token=\"a\""), ("x-session-token", "a")]),
            h(&[("authorization", "Basic xx"), ("authorization", "Bearer a")]),
            h(&[("authorization", "Bearer a,Basic xx")]),
            h(&[("authorization", "a"), ("x-session-token", "a")]),
            h(&[("authorization", "Bearer"), ("x-session-token", "a")]),
        ] {
            assert_eq!(find(&s, &headers).map(|(token, _)| token), Some("a"), "{headers:?}");
        }
        // A comma that does not separate credentials is part of the one token.
        assert_eq!(find(&s, &h(&[("authorization", "Bearer a,b")])), Some(("a,b", 0)));
        assert_eq!(find(&s, &h(&[("authorization", "Bearer a, b")])), Some(("a, b", 0)));
    }

    #[test]
    fn literal_prefixes_and_config_errors() {
        let cfg: Vec<TokenSourceConfig> = serde_json::from_str(r#"[{"header":"x-auth","prefix":"tok:"}]"#).unwrap();
        let s = TokenSources::compile(&cfg).unwrap();
        assert_eq!(find(&s, &h(&[("x-auth", "TOK:abc")])), Some(("abc", 0)));
        assert_eq!(find(&s, &h(&[("x-auth", "t")])), None);
        assert_eq!(find(&s, &h(&[("x-auth", "é")])), None);

        for (json, path) in [
            (r#"[{"header":"a","cookie":"b"}]"#, "[0]"),
            (r#"[{}]"#, "[0]"),
            (r#"[{"cookie":"c","prefix":"x"}]"#, "[0].prefix"),
            (r#"[{"header":"a"},{"header":" "}]"#, "[1].header"),
            (r#"[]"#, ""),
        ] {
            let cfg: Vec<TokenSourceConfig> = serde_json::from_str(json).unwrap();
            assert_eq!(TokenSources::compile(&cfg).unwrap_err().path, path, "{json}");
        }
    }
}

//! SQL `LIKE` patterns, evaluated as PostgreSQL evaluates them, because NoETL keeps its
//! permission patterns (`auth.playbook_permissions.allow_pattern`, `deny_pattern`) so and a
//! policy imported from there must decide exactly as NoETL's own query does.
//!
//! `%` is any run of characters (`/` included, and none), `_` exactly one character (a Unicode
//! scalar value, as in a UTF-8 database), `\` makes the next character literal; the match is
//! case-sensitive and covers the whole string. A pattern is translated once into a regular
//! expression for `regex-automata`, the engine `globset` already links into the filter, so it
//! costs the module next to nothing: measured, a hand-written wildcard walk made the module 300
//! bytes larger than this translation.

use regex_automata::meta::Regex;

/// A set of LIKE patterns compiled once; a string matches the set if it matches any of them.
#[derive(Debug, Clone, Default)]
pub struct LikeSet {
    /// `None` for an empty set, which matches nothing.
    regex: Option<Regex>,
}

/// Why a LIKE pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LikeError {
    /// Which pattern of the set.
    pub index: usize,
    /// What is wrong.
    pub message: String,
}

impl LikeSet {
    /// Compiles `patterns`. PostgreSQL refuses a pattern ending in a lone `\` ("LIKE pattern
    /// must not end with escape character"), so it is refused here too.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, LikeError> {
        if patterns.is_empty() {
            return Ok(LikeSet { regex: None });
        }
        let mut regexes = Vec::with_capacity(patterns.len());
        for (index, pattern) in patterns.iter().enumerate() {
            regexes.push(to_regex(pattern.as_ref()).map_err(|message| LikeError { index, message })?);
        }
        let regex = Regex::new_many(&regexes).map_err(|e| LikeError { index: 0, message: e.to_string() })?;
        Ok(LikeSet { regex: Some(regex) })
    }

    /// Whether `text` matches some pattern of the set, as `text LIKE pattern` would.
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.as_ref().is_some_and(|r| r.is_match(text))
    }
}

/// Whether `pattern` matches every string: it is made of `%` alone.
pub fn matches_everything(pattern: &str) -> bool {
    !pattern.is_empty() && pattern.chars().all(|c| c == '%')
}

/// The regular expression that matches what `pattern` matches: anchored at both ends, `.`
/// reaching across newlines (`%` and `_` match any character), every literal escaped.
fn to_regex(pattern: &str) -> Result<String, String> {
    let mut out = String::with_capacity(pattern.len() + 8);
    out.push_str("^(?s:");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => out.push_str(".*"),
            '_' => out.push('.'),
            '\\' => match chars.next() {
                Some(literal) => push_literal(&mut out, literal),
                None => {
                    return Err(format!(
                        "{pattern:?}: a LIKE pattern must not end with the escape character '\\' \
                         (write '\\\\' for a backslash)"
                    ))
                }
            },
            literal => push_literal(&mut out, literal),
        }
    }
    out.push_str(")$");
    Ok(out)
}

fn push_literal(out: &mut String, c: char) {
    regex_syntax::escape_into(c.encode_utf8(&mut [0; 4]), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(text: &str, pattern: &str) -> bool {
        LikeSet::new(&[pattern]).unwrap().is_match(text)
    }

    #[test]
    fn percent_is_any_run_including_slashes_and_none() {
        assert!(like("data/a/b", "data/%"));
        assert!(like("data/", "data/%"));
        assert!(like("x", "%"));
        assert!(like("", "%"));
        assert!(like("a/b/c", "a%c"));
        assert!(!like("database", "data/%"));
        assert!(like("line\nbreak", "line%"), "% crosses newlines, as in PostgreSQL");
    }

    #[test]
    fn underscore_is_exactly_one_character() {
        assert!(like("data/a", "data/_"));
        assert!(!like("data/ab", "data/_"));
        assert!(!like("data/", "data/_"));
        assert!(like("data/é", "data/_"), "one character, not one byte");
        assert!(like("a/b", "a_b"), "_ matches a slash too");
    }

    #[test]
    fn backslash_escapes_the_next_character() {
        assert!(like("a%b", "a\\%b"));
        assert!(!like("axb", "a\\%b"));
        assert!(like("a_b", "a\\_b"));
        assert!(!like("axb", "a\\_b"));
        assert!(like("a\\b", "a\\\\b"));
        assert!(like("ab", "a\\b"), "an escaped ordinary character is itself");
        let err = LikeSet::new(&["ok", "data\\"]).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.message.contains("escape character"), "{}", err.message);
    }

    #[test]
    fn case_sensitive_whole_string_and_regex_characters_are_literal() {
        assert!(!like("Data/x", "data/%"));
        assert!(!like("data/x", "data"));
        assert!(!like("xdata", "data"));
        assert!(like("a.b", "a.b"));
        assert!(!like("axb", "a.b"), "'.' is literal in LIKE");
        for special in ["a+b", "(a)", "[a]", "a{2}", "a|b", "^a$", "a*", "a?", "ü€𝄞"] {
            assert!(like(special, special), "{special:?}");
        }
        assert!(!like("aa", "a*"));
    }

    #[test]
    fn empty_pattern_matches_only_the_empty_string_and_a_set_any_pattern() {
        assert!(like("", ""));
        assert!(!like("x", ""));
        let set = LikeSet::new(&["data/%", "ops/_"]).unwrap();
        assert!(set.is_match("ops/a") && set.is_match("data/x") && !set.is_match("ops/ab"));
        assert!(!LikeSet::new::<&str>(&[]).unwrap().is_match(""));
        assert!(matches_everything("%") && matches_everything("%%") && !matches_everything("%_"));
    }

    /// The definition, recursively: slow, obviously right.
    fn reference(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('%', rest)) => (0..=text.len()).any(|i| reference(rest, &text[i..])),
            Some(('_', rest)) => !text.is_empty() && reference(rest, &text[1..]),
            Some(('\\', rest)) => match rest.split_first() {
                Some((c, rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
                None => unreachable!("refused at compile"),
            },
            Some((c, rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
        }
    }

    #[test]
    fn the_walk_agrees_with_the_definition_on_generated_cases() {
        let alphabet = ['a', 'b', '/', '%', '_', '\\', 'é', 'A'];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..3_000 {
            let (pattern_len, text_len) = (next(7), next(7));
            let pattern: Vec<char> = (0..pattern_len).map(|_| alphabet[next(alphabet.len())]).collect();
            let text: Vec<char> = (0..text_len).map(|_| alphabet[next(alphabet.len())]).collect();
            let source: String = pattern.iter().collect();
            let Ok(set) = LikeSet::new(&[&source]) else {
                assert!(source.ends_with('\\'));
                continue;
            };
            let text_str: String = text.iter().collect();
            assert_eq!(set.is_match(&text_str), reference(&pattern, &text), "{text_str:?} LIKE {source:?}");
        }
    }
}

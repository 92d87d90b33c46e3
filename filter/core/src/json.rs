//! Strict JSON for request bodies: one reading or none.
//!
//! `serde_json::Value` keeps the last of two equal keys, NoETL's Python server does the same and
//! its Rust server answers 422: a body such as `{"path": "data/x", "path": "system/x"}` means
//! different things to different readers. So the filter refuses a duplicate key at any depth
//! (keys compared once unescaped, so `"p\u0061th"` is `"path"`). This is serde's own machinery
//! (a seed and a visitor over `serde_json::Deserializer`), so the tokenizer and its recursion
//! limit are serde_json's.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// An object names the same key twice.
    #[error("duplicate JSON key {0:?}")]
    DuplicateKey(String),
    /// Not JSON (syntax, trailing data, nesting deeper than serde_json's limit, bad UTF-8).
    #[error("not JSON: {0}")]
    Syntax(String),
}

/// Parses `bytes` as one JSON value, refusing a duplicate key in any object.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    let duplicate = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict { duplicate: &duplicate }.deserialize(&mut de).and_then(|value| de.end().map(|()| value));
    match (parsed, duplicate.take()) {
        (_, Some(key)) => Err(JsonError::DuplicateKey(key)),
        (Ok(value), None) => Ok(value),
        (Err(e), None) => Err(JsonError::Syntax(e.to_string())),
    }
}

/// Builds a [`Value`] as serde_json does, but records the first duplicate key in `duplicate`
/// and stops there (an error, so the parse unwinds at once).
#[derive(Clone, Copy)]
struct Strict<'a> {
    duplicate: &'a Cell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json never hands a non-finite number; `Null` is what `Value::from` would give.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            out.push(item);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                self.duplicate.set(Some(key));
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(self)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn reads_what_serde_json_reads() {
        for text in [
            r#"{"path": "data/x", "args": {"a": [1, -2, 3.5, true, null, "s"]}}"#,
            r#"[{"query": "q", "variables": {"n": "x"}}, {"query": "r"}]"#,
            r#""only a string""#,
            "18446744073709551615",
            " {} ",
            r#"{"a": {"b": 1}, "c": {"b": 2}}"#,
        ] {
            let want: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse_strict(text.as_bytes()).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn a_duplicate_key_at_any_depth_is_refused() {
        for (text, key) in [
            (r#"{"path": "data/x", "path": "system/x"}"#, "path"),
            (r#"{"path": "data/x", "p\u0061th": "system/x"}"#, "path"),
            (r#"{"a": {"b": 1, "b": 1}}"#, "b"),
            (r#"[{"query": "q", "variables": {"n": "data/x", "n": "system/x"}}]"#, "n"),
            (r#"{"query": "q", "query": "r"}"#, "query"),
        ] {
            assert_eq!(parse_strict(text.as_bytes()), Err(JsonError::DuplicateKey(key.into())), "{text}");
        }
    }

    #[test]
    fn not_json_is_a_syntax_error() {
        for text in [&b""[..], b"{", b"{} {}", b"{\"a\": 1,}", b"\xff", b"[1] x", b"{\"a\": \"\\ud800\"}"] {
            assert!(matches!(parse_strict(text), Err(JsonError::Syntax(_))), "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn serde_jsons_recursion_limit_holds() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(matches!(parse_strict(deep.as_bytes()), Err(JsonError::Syntax(_))));
        let ok = "[".repeat(100) + &"]".repeat(100);
        assert!(parse_strict(ok.as_bytes()).is_ok());
        assert_eq!(parse_strict(b"[[1]]").unwrap(), json!([[1]]));
    }
}

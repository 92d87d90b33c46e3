//! What a requirement is about, read from a JSON body as NoETL reads it: several fields with a
//! precedence and NoETL's coercions, every item of a batch, a server-side default.
//!
//! A target named by an id (`catalog_id`, `execution_id`) is never guessed: only NoETL can map
//! it to a path, so it is looked up ([`Target::Lookup`], see [`crate::lookup`]) or, without a
//! resolver or in an odd spelling, the request needs the permission on every playbook
//! ([`Target::Every`]). The presence rules below are the conservative reading of pydantic's:
//! a value that NoETL might take as an id is an id here, so the worst a spelling can do is ask
//! for more than NoETL would have needed.

use serde_json::Value;

use crate::config::{JsonFieldConfig, LookupKind, PlaybookSourceConfig, Presence};
use crate::error::ConfigError;
use crate::lookup::{canonical_id, LookupKey};
use crate::path::PlaybookPath;
use crate::routes::PlaybookError;

/// What one requirement of a route is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One playbook.
    Playbook(PlaybookPath),
    /// Every playbook: the request names its target by an id only NoETL resolves, or covers
    /// them all. The text says why, for logs.
    Every(String),
    /// A call only the `restricted_roles` may make (a GraphQL `rerunExecution`).
    Restricted(String),
    /// A request the gateway forwards (a GraphQL `proxyRequest`): decided as the route it
    /// reaches, whatever the requirement's permission.
    Forward(crate::forward::Forwarded),
    /// The playbook an id names, once the `resolver` has looked it up (without a resolver the
    /// guard reads it as [`Target::Every`]).
    Lookup(LookupKey),
}

impl Target {
    /// The target an id names: looked up if it has the one spelling every reader agrees on,
    /// else every playbook (`at` says where it was found, for logs).
    pub fn of_id(kind: LookupKind, value: &Value, at: &str) -> Target {
        match canonical_id(value) {
            Some(id) => Target::Lookup(LookupKey { kind, id }),
            None => Target::Every(format!("{} {value} at {at} is not a plain id", kind.as_str())),
        }
    }
}

/// Parses a request body as JSON. The one place request bodies become a [`Value`].
///
/// Strictly: a duplicate key anywhere is ambiguous (NoETL's Python server reads the last, its Rust
/// server refuses the request), so such a body is refused rather than read one way.
pub fn parse_body(body: &[u8]) -> Result<Value, PlaybookError> {
    crate::json::parse_strict(body).map_err(|e| match e {
        crate::json::JsonError::DuplicateKey(_) => PlaybookError::Ambiguous(e.to_string()),
        _ => PlaybookError::BodyNotJson,
    })
}

/// Whether the request's `content-type` lets NoETL (Starlette) parse its body as JSON: absent,
/// `application/json` or `application/*+json`, any case, with parameters. Several headers must
/// all qualify.
pub fn is_json_content_type(headers: &[(String, String)]) -> bool {
    headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-type")).all(|(_, v)| {
        let essence = v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        essence == "application/json"
            || essence
                .strip_prefix("application/")
                .is_some_and(|sub| sub.len() > "+json".len() && sub.ends_with("+json"))
    })
}

/// One compiled body field.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JsonField {
    pointer: String,
    lookup: Option<LookupKind>,
    present: Presence,
}

/// What a body source yields when none of its fields is given.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Otherwise {
    Missing,
    Default(PlaybookPath),
    Every,
}

/// Body fields in precedence order, optionally over every item of an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonSource {
    each: Option<String>,
    fields: Vec<JsonField>,
    otherwise: Otherwise,
    restricted: Vec<String>,
}

impl JsonSource {
    /// Compiles `json_fields` (or the older `json_pointer`, one field) with `each`, `default`
    /// and `all_if_absent`.
    pub fn compile(cfg: &PlaybookSourceConfig) -> Result<Self, ConfigError> {
        let fields: Vec<JsonFieldConfig> = match (&cfg.json_fields, &cfg.json_pointer) {
            (Some(fields), None) => fields.clone(),
            (None, Some(pointer)) => {
                vec![JsonFieldConfig { pointer: pointer.clone(), lookup: None, present: Presence::NotNull }]
            }
            _ => return Err(ConfigError::new("", "give one of `json_fields`, `json_pointer`")),
        };
        if fields.is_empty() {
            return Err(ConfigError::new("json_fields", "list at least one field"));
        }
        let mut compiled = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            let at =
                if cfg.json_fields.is_some() { format!("json_fields[{i}].pointer") } else { "json_pointer".into() };
            check_pointer(&f.pointer, &at)?;
            compiled.push(JsonField { pointer: f.pointer.clone(), lookup: f.lookup, present: f.present });
        }
        if let Some(each) = &cfg.each {
            check_pointer(each, "each")?;
        }
        let otherwise = match (&cfg.default, cfg.all_if_absent.unwrap_or(false)) {
            (None, false) => Otherwise::Missing,
            (Some(d), false) => Otherwise::Default(
                PlaybookPath::parse(d).map_err(|e| ConfigError::new("default", format!("{d:?}: {e}")))?,
            ),
            (None, true) => Otherwise::Every,
            (Some(_), true) => {
                return Err(ConfigError::new("all_if_absent", "give `default` or `all_if_absent`, not both"))
            }
        };
        let restricted = cfg.restricted_fields.clone().unwrap_or_default();
        for (i, pointer) in restricted.iter().enumerate() {
            check_pointer(pointer, &format!("restricted_fields[{i}]"))?;
        }
        Ok(JsonSource { each: cfg.each.clone(), fields: compiled, otherwise, restricted })
    }

    /// The targets named by `json`: one per item under `each`, else one; and a restricted
    /// one for each restricted field an item gives.
    pub fn targets(&self, json: &Value) -> Result<Vec<Target>, PlaybookError> {
        let items = match &self.each {
            None => std::slice::from_ref(json),
            Some(each) => match json.pointer(each) {
                Some(Value::Array(items)) if !items.is_empty() => items.as_slice(),
                Some(Value::Array(_)) => return Err(PlaybookError::Missing("an empty array")),
                _ => return Err(PlaybookError::NotAnArray(each.clone())),
            },
        };
        let mut targets = Vec::with_capacity(items.len());
        for item in items {
            targets.push(self.item(item)?);
            for pointer in &self.restricted {
                if item.pointer(pointer).is_some_and(|v| !v.is_null()) {
                    targets.push(Target::Restricted(format!("body field {pointer}")));
                }
            }
        }
        Ok(targets)
    }

    fn item(&self, json: &Value) -> Result<Target, PlaybookError> {
        for field in &self.fields {
            let Some(value) = json.pointer(&field.pointer).filter(|v| is_given(v, field.present)) else {
                continue;
            };
            if let Some(kind) = field.lookup {
                return Ok(Target::of_id(kind, value, &field.pointer));
            }
            let Value::String(path) = value else {
                return Err(PlaybookError::NotAString(field.pointer.clone()));
            };
            return Ok(Target::Playbook(PlaybookPath::parse(path)?));
        }
        match &self.otherwise {
            Otherwise::Missing => Err(PlaybookError::Missing("no field names a playbook")),
            Otherwise::Default(path) => Ok(Target::Playbook(path.clone())),
            Otherwise::Every => Ok(Target::Every("no field narrows it".into())),
        }
    }

    /// How the source reads, for the `routes` table.
    pub fn describe(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|f| {
                let when = match f.present {
                    Presence::NotNull => "",
                    Presence::NonEmpty => " if non-empty",
                    Presence::Truthy => " if truthy",
                };
                match &f.lookup {
                    Some(kind) => format!("body {}{when} ({}: looked up, or every playbook)", f.pointer, kind.as_str()),
                    None => format!("body {}{when}", f.pointer),
                }
            })
            .collect();
        let mut out = fields.join(", else ");
        match &self.otherwise {
            Otherwise::Missing => {}
            Otherwise::Default(d) => out.push_str(&format!(", else {d}")),
            Otherwise::Every => out.push_str(", else every playbook"),
        }
        if !self.restricted.is_empty() {
            out.push_str(&format!("; restricted roles if given: {}", self.restricted.join(", ")));
        }
        match &self.each {
            Some(each) => format!("each item of {each}: {out}"),
            None => out,
        }
    }
}

/// Whether a field's value counts as given. A value NoETL could take either way counts as
/// given: a lookup field then asks for every playbook, more than NoETL could need.
fn is_given(value: &Value, present: Presence) -> bool {
    match (value, present) {
        (Value::Null, _) => false,
        (Value::String(s), Presence::NonEmpty | Presence::Truthy) => !s.is_empty(),
        (Value::Bool(b), Presence::Truthy) => *b,
        // Only the integer 0 is falsy for sure; `0.0` or `-0` may be read otherwise.
        (Value::Number(n), Presence::Truthy) => !(n.as_u64() == Some(0) || n.as_i64() == Some(0)),
        _ => true,
    }
}

fn check_pointer(pointer: &str, at: &str) -> Result<(), ConfigError> {
    if pointer.starts_with('/') {
        Ok(())
    } else {
        Err(ConfigError::new(at, format!("{pointer:?}: a JSON pointer starts with '/' (RFC 6901)")))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn source(cfg: Value) -> JsonSource {
        JsonSource::compile(&serde_json::from_value(cfg).unwrap()).unwrap()
    }

    fn execute() -> JsonSource {
        source(json!({"json_fields": [
            {"pointer": "/catalog_id", "lookup": "catalog_id", "present": "truthy"},
            {"pointer": "/path"}]}))
    }

    /// Not a playbook the request names itself: an id to look up, or every playbook.
    fn every(t: &Target) -> bool {
        matches!(t, Target::Every(_) | Target::Lookup(_))
    }

    fn id(kind: LookupKind, id: u64) -> Target {
        Target::Lookup(LookupKey { kind, id })
    }

    fn playbook(path: &str) -> Target {
        Target::Playbook(PlaybookPath::parse(path).unwrap())
    }

    #[test]
    fn execute_reads_catalog_id_before_path_as_pydantic_does() {
        let s = execute();
        for id in [
            json!(123),
            json!("123"),
            json!(" 12 "),
            json!("1_000"),
            json!(true),
            json!("0"),
            json!(0.0),
            json!(-1),
            json!("abc"),
            json!([]),
            json!({}),
            json!(1.5),
        ] {
            let body = json!({"path": "data/x", "catalog_id": id});
            let got = s.targets(&body).unwrap();
            assert!(every(&got[0]), "catalog_id {id} is an id: {got:?}");
        }
        for falsy in [json!(null), json!(0), json!(""), json!(false)] {
            let body = json!({"path": "data/x", "catalog_id": falsy});
            assert_eq!(s.targets(&body).unwrap(), [playbook("data/x")], "catalog_id {falsy} leaves it to path");
        }
        assert_eq!(s.targets(&json!({"path": "data/x", "version": 2})).unwrap(), [playbook("data/x")]);
        assert!(matches!(s.targets(&json!({"catalog_id": 0})), Err(PlaybookError::Missing(_))));
        // Only the one spelling every reader agrees on is looked up; the rest is every playbook.
        for (spelling, want) in [(json!(123), Some(123)), (json!("123"), Some(123)), (json!(" 12 "), None)] {
            let got = s.targets(&json!({"path": "data/x", "catalog_id": spelling})).unwrap();
            match want {
                Some(n) => assert_eq!(got, [id(LookupKind::CatalogId, n)]),
                None => assert!(matches!(got[..], [Target::Every(_)]), "{got:?}"),
            }
        }
        assert_eq!(s.targets(&json!({"path": 3})), Err(PlaybookError::NotAString("/path".into())));
    }

    #[test]
    fn catalog_resource_takes_any_non_empty_catalog_id() {
        let s = source(json!({"json_fields": [
            {"pointer": "/catalog_id", "lookup": "catalog_id", "present": "non_empty"}, {"pointer": "/path"}]}));
        for id in [json!(0), json!(false), json!("0"), json!(" "), json!(123)] {
            assert!(every(&s.targets(&json!({"path": "data/x", "catalog_id": id})).unwrap()[0]), "{id}");
        }
        for absent in [json!(null), json!("")] {
            let got = s.targets(&json!({"path": "data/x", "catalog_id": absent})).unwrap();
            assert_eq!(got, [playbook("data/x")]);
        }
    }

    #[test]
    fn batches_read_every_item_and_defaults_fill_in() {
        let s = source(json!({"each": "/executions", "json_fields": [
            {"pointer": "/catalog_id", "lookup": "catalog_id", "present": "truthy"}, {"pointer": "/path"}]}));
        let body =
            json!({"executions": [{"path": "data/a"}, {"catalog_id": "7", "path": "data/b"}, {"path": "system/c"}]});
        let got = s.targets(&body).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!((&got[0], every(&got[1]), &got[2]), (&playbook("data/a"), true, &playbook("system/c")));
        assert_eq!(s.targets(&json!({"executions": {}})), Err(PlaybookError::NotAnArray("/executions".into())));
        assert!(matches!(s.targets(&json!({"executions": []})), Err(PlaybookError::Missing(_))));
        assert!(matches!(s.targets(&json!({"executions": [{}]})), Err(PlaybookError::Missing(_))));

        let ai = source(json!({"json_fields": [{"pointer": "/explanation_playbook_path"}],
                               "default": "ops/playbook_ai_explain"}));
        assert_eq!(ai.targets(&json!({})).unwrap(), [playbook("ops/playbook_ai_explain")]);
        assert_eq!(
            ai.targets(&json!({"explanation_playbook_path": null})).unwrap(),
            [playbook("ops/playbook_ai_explain")]
        );
        assert_eq!(ai.targets(&json!({"explanation_playbook_path": "system/x"})).unwrap(), [playbook("system/x")]);

        let list = source(json!({"json_fields": [{"pointer": "/path"}], "all_if_absent": true}));
        assert!(every(&list.targets(&json!({"resource_type": "playbook"})).unwrap()[0]));
        assert_eq!(list.targets(&json!({"path": "data/x"})).unwrap(), [playbook("data/x")]);
    }

    #[test]
    fn restricted_fields_given_in_any_item_add_a_restricted_target() {
        let s = source(json!({"each": "/executions", "json_fields": [{"pointer": "/path"}],
                              "restricted_fields": ["/execution_pool", "/dedup/key"]}));
        let restricted = |pointer: &str| Target::Restricted(format!("body field {pointer}"));
        let body = json!({"executions": [{"path": "data/a", "execution_pool": null}, {"path": "data/b"}]});
        assert_eq!(s.targets(&body).unwrap(), [playbook("data/a"), playbook("data/b")], "null is not given");
        let body = json!({"executions": [{"path": "data/a"}, {"path": "data/b", "execution_pool": "",
                                                               "dedup": {"key": 0}}]});
        assert_eq!(
            s.targets(&body).unwrap(),
            [playbook("data/a"), playbook("data/b"), restricted("/execution_pool"), restricted("/dedup/key")]
        );
        assert!(s.describe().ends_with("; restricted roles if given: /execution_pool, /dedup/key"), "{}", s.describe());
    }

    #[test]
    fn json_content_types_as_starlette_reads_them() {
        let h = |v: &str| vec![("Content-Type".to_string(), v.to_string())];
        assert!(is_json_content_type(&[]));
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
            " application/json ",
        ] {
            assert!(is_json_content_type(&h(ok)), "{ok}");
        }
        for bad in [
            "",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/+json",
            "multipart/form-data",
            "application/jsonx",
            "text/json",
        ] {
            assert!(!is_json_content_type(&h(bad)), "{bad}");
        }
        let two = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("content-type".to_string(), "text/plain".to_string()),
        ];
        assert!(!is_json_content_type(&two));
    }

    #[test]
    fn configuration_errors_name_the_field() {
        let bad = |cfg: Value| JsonSource::compile(&serde_json::from_value(cfg).unwrap()).unwrap_err().path;
        assert_eq!(bad(json!({"json_fields": [{"pointer": "/a"}, {"pointer": "b"}]})), "json_fields[1].pointer");
        assert_eq!(bad(json!({"json_fields": []})), "json_fields");
        assert_eq!(bad(json!({"json_fields": [{"pointer": "/a"}], "each": "x"})), "each");
        assert_eq!(
            bad(json!({"json_fields": [{"pointer": "/a"}], "restricted_fields": ["/b", "c"]})),
            "restricted_fields[1]"
        );
        assert_eq!(bad(json!({"json_fields": [{"pointer": "/a"}], "default": "a/../b"})), "default");
        assert_eq!(
            bad(json!({"json_fields": [{"pointer": "/a"}], "default": "a", "all_if_absent": true})),
            "all_if_absent"
        );
    }
}

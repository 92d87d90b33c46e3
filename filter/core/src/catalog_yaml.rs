//! The playbook a catalog registration names: inside the YAML of its `content` field, read as
//! NoETL reads it, or every playbook when that reading is not certain.
//!
//! NoETL's two servers read `POST /api/catalog/register` differently, and the filter must come
//! to every path either of them could register under:
//!
//! - the Python server tries `base64.b64decode(content).decode("utf-8")` first and keeps
//!   `content` as it is on any error. That decoder is lenient: it skips every character outside
//!   the alphabet, stops at the first complete padding and ignores what follows, and never
//!   checks that the result is YAML. It then runs PyYAML's `safe_load` (YAML 1.1) and takes
//!   `metadata.path`, else `path`, else `metadata.name`, else `name` (each only if truthy), else
//!   `"unknown"`;
//! - the Rust server decodes with the `base64` crate's strict `STANDARD` engine (the one used
//!   here), reads YAML with `serde_yaml` (libyaml, YAML 1.2 scalars) and takes `metadata.path`,
//!   else `metadata.name`, each only if a string, and refuses the request without either.
//!
//! Both decodings are reproduced exactly, so the two texts are known; when they differ, or the
//! two chains pick different paths, the request needs the permission on both. What is not
//! reproduced is YAML itself: PyYAML, libyaml and the parser here (`yaml-rust2`) agree on plain
//! documents but not on every construct, so any construct where they may part, or that lets one
//! node stand for another, makes the request need the permission on every playbook: anchors and
//! aliases, tags, merge keys (`<<`), a key given twice, complex keys, a plain scalar that starts
//! with `?` or `:` (an explicit key to some readers), several documents,
//! directives, line breaks only YAML 1.1 knows (NEL, U+2028, U+2029), a byte-order mark, a
//! control character, nesting deeper than [`MAX_DEPTH`]. So does a plain scalar one of the
//! readers would not take as a string (`yes`, `0o12`, `1_000`, `1:30`, `2026-01-01`, `.inf`),
//! a path that is not a string, and a document where neither server finds a path (the Python
//! server files it under `unknown`, the Rust one refuses it).

use std::collections::HashSet;

use base64::Engine;
use serde_json::Value;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

use crate::config::CatalogYamlConfig;
use crate::error::ConfigError;
use crate::path::PlaybookPath;
use crate::routes::PlaybookError;
use crate::target::Target;

/// How deeply collections may nest before the document is not read: NoETL playbooks nest a
/// dozen levels at most, and the cap bounds the parser's stack on a hostile body.
pub const MAX_DEPTH: usize = 32;

/// A compiled `catalog_yaml` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogYaml {
    pointer: String,
}

impl CatalogYaml {
    /// Compiles `catalog_yaml: {pointer}`.
    pub fn compile(cfg: &CatalogYamlConfig) -> Result<Self, ConfigError> {
        if !cfg.pointer.starts_with('/') {
            return Err(ConfigError::new(
                "catalog_yaml.pointer",
                format!("{:?}: a JSON pointer starts with '/' (RFC 6901)", cfg.pointer),
            ));
        }
        Ok(CatalogYaml { pointer: cfg.pointer.clone() })
    }

    /// The playbooks a registration body would be filed under (one, or two when the servers
    /// part), or every playbook when that is not certain.
    pub fn targets(&self, json: &Value) -> Result<Vec<Target>, PlaybookError> {
        let content = match json.pointer(&self.pointer) {
            None | Some(Value::Null) => return Err(PlaybookError::Missing("no catalog content")),
            Some(Value::String(content)) => content,
            Some(_) => return Err(PlaybookError::NotAString(self.pointer.clone())),
        };
        match registered_paths(content) {
            Ok(paths) => paths.iter().map(|p| Ok(Target::Playbook(PlaybookPath::parse(p)?))).collect(),
            Err(why) => Ok(vec![Target::Every(format!("catalog content at {}: {why}", self.pointer))]),
        }
    }

    /// How the source reads, for the `routes` table.
    pub fn describe(&self) -> String {
        format!(
            "YAML in body {}, base64 first (Python server: metadata.path, path, metadata.name, name; Rust \
             server: metadata.path, metadata.name; both where they differ); ambiguous YAML: every playbook",
            self.pointer
        )
    }
}

/// The paths NoETL's servers would register `content` under (one, or the two servers' when they
/// differ), or why that is not certain.
pub fn registered_paths(content: &str) -> Result<Vec<String>, String> {
    let python_text = python_b64decode(content).and_then(|b| String::from_utf8(b).ok());
    let rust_text =
        base64::engine::general_purpose::STANDARD.decode(content).ok().and_then(|b| String::from_utf8(b).ok());
    let python_text = python_text.as_deref().unwrap_or(content);
    let rust_text = rust_text.as_deref().unwrap_or(content);
    let python_doc = Document::read(python_text)?;
    let python = python_doc.python_path()?;
    let rust = if rust_text == python_text {
        python_doc.rust_path()?
    } else if rust_text.bytes().all(|b| sextet(b).is_some() || b == b'=' || b.is_ascii_whitespace()) {
        // Base64 only Python's lenient decoder takes (wrapped lines, say): to the Rust server
        // the text is one scalar (or nothing), never a mapping, and it refuses the request.
        return Ok(vec![python]);
    } else {
        Document::read(rust_text)?.rust_path()?
    };
    Ok(if python == rust { vec![python] } else { vec![python, rust] })
}

/// Python's `base64.b64decode(s)` (CPython 3.11 to 3.13, `validate=False`): `None` where it
/// raises. A `str` must be ASCII; characters outside the alphabet are skipped; `=` counts as
/// padding only once two or three characters of a quantum are in, and a complete padding ends
/// the input, whatever follows; a quantum left unfinished is an error.
pub fn python_b64decode(s: &str) -> Option<Vec<u8>> {
    if !s.is_ascii() {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 3);
    let (mut quad, mut left, mut pads) = (0u8, 0u8, 0u8);
    for c in s.bytes() {
        if c == b'=' {
            if quad >= 2 {
                pads += 1;
                if quad + pads >= 4 {
                    return Some(out);
                }
            }
            continue;
        }
        let Some(v) = sextet(c) else { continue };
        pads = 0;
        match quad {
            0 => left = v,
            1 => {
                out.push(left << 2 | v >> 4);
                left = v & 0x0f;
            }
            2 => {
                out.push(left << 4 | v >> 2);
                left = v & 0x03;
            }
            _ => out.push(left << 6 | v),
        }
        quad = (quad + 1) % 4;
    }
    (quad == 0).then_some(out)
}

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// A value the servers look at, as both would take it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Slot {
    #[default]
    Absent,
    /// `~`, `null`, empty: `None` in Python, `Null` in serde_yaml.
    Null,
    /// A string for both readers.
    Str(String),
    /// A mapping (only kept for `metadata`).
    Map,
    /// Anything else: a collection, or a scalar one reader would not take as a string.
    Other,
}

/// The parts of a registration document the servers read.
#[derive(Debug, Clone, Default)]
struct Document {
    metadata: Slot,
    metadata_path: Slot,
    metadata_name: Slot,
    path: Slot,
    name: Slot,
}

/// Which slot the next value fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Metadata,
    MetadataPath,
    MetadataName,
    Path,
    Name,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Top,
    Metadata,
    Other,
}

#[derive(Debug)]
enum Frame {
    Sequence,
    Mapping {
        role: Role,
        keys: HashSet<String>,
        /// `Some` while the next node is a value: the field it fills, if any.
        value_for: Option<Option<Field>>,
    },
}

/// What the next node is, as far as this reader cares.
enum Node {
    Scalar(String, TScalarStyle),
    Mapping,
    Sequence,
}

impl Document {
    /// Reads the servers' fields out of one YAML text, refusing whatever the readers may part on.
    fn read(text: &str) -> Result<Document, String> {
        if let Some(c) = text.chars().find(|c| {
            (c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}')
        }) {
            return Err(format!("holds {c:?}, which YAML readers treat differently"));
        }
        if text.lines().any(|l| l.starts_with('%')) {
            return Err("a YAML directive".into());
        }
        let mut doc = Document::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut documents = 0;
        let mut parser = Parser::new_from_str(text);
        loop {
            let (event, _) = parser.next_token().map_err(|e| format!("not YAML here ({e})"))?;
            let node = match event {
                Event::StreamEnd => break,
                Event::Nothing | Event::StreamStart | Event::DocumentEnd => continue,
                Event::DocumentStart => {
                    documents += 1;
                    if documents > 1 {
                        return Err("several YAML documents".into());
                    }
                    continue;
                }
                Event::Alias(_) => return Err("a YAML alias".into()),
                Event::Scalar(_, _, anchor, _) | Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _)
                    if anchor != 0 =>
                {
                    return Err("a YAML anchor".into())
                }
                Event::Scalar(_, _, _, Some(_))
                | Event::SequenceStart(_, Some(_))
                | Event::MappingStart(_, Some(_)) => return Err("a YAML tag".into()),
                Event::SequenceEnd | Event::MappingEnd => {
                    stack.pop();
                    continue;
                }
                // yaml-rust2 reads `{?path: x}` as the key `?path`, PyYAML and libyaml as the
                // explicit key `path`; a plain scalar may not start with either indicator.
                Event::Scalar(value, TScalarStyle::Plain, _, None) if value.starts_with(['?', ':']) => {
                    return Err("a plain YAML scalar that starts with `?` or `:`".into())
                }
                Event::Scalar(value, style, _, None) => Node::Scalar(value, style),
                Event::SequenceStart(_, None) => Node::Sequence,
                Event::MappingStart(_, None) => Node::Mapping,
            };
            doc.take(&mut stack, node)?;
            if stack.len() > MAX_DEPTH {
                return Err(format!("YAML nested deeper than {MAX_DEPTH}"));
            }
        }
        Ok(doc)
    }

    /// One node, in the place the stack says.
    fn take(&mut self, stack: &mut Vec<Frame>, node: Node) -> Result<(), String> {
        let field = match stack.last_mut() {
            None => {
                // The root: only a mapping names a path (PyYAML's `or {}` and serde_yaml's
                // `get` read nothing in anything else).
                let role = if matches!(node, Node::Mapping) { Role::Top } else { return Err("not a mapping".into()) };
                stack.push(Frame::Mapping { role, keys: HashSet::new(), value_for: None });
                return Ok(());
            }
            Some(Frame::Sequence) => None,
            Some(Frame::Mapping { role, keys, value_for }) => match value_for.take() {
                Some(field) => field,
                None => {
                    let Node::Scalar(key, _) = node else { return Err("a complex YAML key".into()) };
                    if key == "<<" {
                        return Err("a YAML merge key".into());
                    }
                    // Keys are compared as written: `path` and `"path"` are one key to both
                    // readers, and `1` and `"1"` being called a duplicate only asks for more.
                    let field = match (*role, key.as_str()) {
                        (Role::Top, "metadata") => Some(Field::Metadata),
                        (Role::Top, "path") => Some(Field::Path),
                        (Role::Top, "name") => Some(Field::Name),
                        (Role::Metadata, "path") => Some(Field::MetadataPath),
                        (Role::Metadata, "name") => Some(Field::MetadataName),
                        _ => None,
                    };
                    if !keys.insert(key) {
                        return Err("a YAML key given twice".into());
                    }
                    *value_for = Some(field);
                    return Ok(());
                }
            },
        };
        let slot = match &node {
            Node::Scalar(value, style) => scalar(value, *style),
            Node::Mapping => Slot::Map,
            Node::Sequence => Slot::Other,
        };
        match field {
            Some(Field::Metadata) => self.metadata = slot,
            Some(Field::MetadataPath) => self.metadata_path = slot,
            Some(Field::MetadataName) => self.metadata_name = slot,
            Some(Field::Path) => self.path = slot,
            Some(Field::Name) => self.name = slot,
            None => {}
        }
        match node {
            Node::Scalar(..) => {}
            Node::Sequence => stack.push(Frame::Sequence),
            Node::Mapping => {
                let role = if field == Some(Field::Metadata) { Role::Metadata } else { Role::Other };
                stack.push(Frame::Mapping { role, keys: HashSet::new(), value_for: None });
            }
        }
        Ok(())
    }

    /// `(d.get("metadata") or {}).get("path") or d.get("path") or (d.get("metadata") or
    /// {}).get("name") or d.get("name") or "unknown"`.
    fn python_path(&self) -> Result<String, String> {
        if !matches!(self.metadata, Slot::Absent | Slot::Null | Slot::Map) {
            return Err("metadata is not a mapping".into());
        }
        for (slot, name) in [
            (&self.metadata_path, "metadata.path"),
            (&self.path, "path"),
            (&self.metadata_name, "metadata.name"),
            (&self.name, "name"),
        ] {
            match slot {
                // Falsy in Python: the next one decides.
                Slot::Absent | Slot::Null => {}
                Slot::Str(s) if s.is_empty() => {}
                Slot::Str(s) => return Ok(s.clone()),
                Slot::Map | Slot::Other => return Err(format!("{name} is not a string")),
            }
        }
        Err("no path: NoETL's Python server files it under \"unknown\", its Rust server refuses it".into())
    }

    /// `metadata.get("path").and_then(as_str).or_else(|| metadata.get("name").and_then(as_str))`,
    /// `metadata` required.
    fn rust_path(&self) -> Result<String, String> {
        if self.metadata != Slot::Map {
            return Err("no metadata mapping: NoETL's Rust server refuses it, its Python server does not".into());
        }
        for (slot, name) in [(&self.metadata_path, "metadata.path"), (&self.metadata_name, "metadata.name")] {
            match slot {
                Slot::Absent | Slot::Null => {}
                Slot::Str(s) => return Ok(s.clone()),
                Slot::Map | Slot::Other => return Err(format!("{name} is not a string")),
            }
        }
        Err("no metadata.path or metadata.name: NoETL's Rust server refuses it, its Python server does not".into())
    }
}

/// A scalar as both readers take it. Quoted and block scalars are strings to both; a plain one
/// is a string only where neither PyYAML's YAML 1.1 resolvers (bools `yes`/`on`/..., ints
/// `0b1`, `012`, `1_000`, `1:30`, floats, timestamps, `<<`, `=`) nor serde_yaml's YAML 1.2 ones
/// (`0o12`, `1e3`, ...) could match: a value holding `/`, or starting with a letter or `_` and
/// not one of the bool words. Everything else is [`Slot::Other`], which only asks for more.
fn scalar(value: &str, style: TScalarStyle) -> Slot {
    if style != TScalarStyle::Plain {
        return Slot::Str(value.to_owned());
    }
    if matches!(value, "" | "~" | "null" | "Null" | "NULL") {
        return Slot::Null;
    }
    const BOOLS: [&str; 22] = [
        "yes", "Yes", "YES", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON",
        "off", "Off", "OFF", "y", "Y", "n", "N",
    ];
    let word = value.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') && !BOOLS.contains(&value);
    if word || value.contains('/') {
        Slot::Str(value.to_owned())
    } else {
        Slot::Other
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn paths(yaml: &str) -> Vec<String> {
        registered_paths(yaml).unwrap_or_else(|why| panic!("{yaml:?}: {why}"))
    }

    fn every(yaml: &str) -> String {
        match registered_paths(yaml) {
            Err(why) => why,
            Ok(p) => panic!("{yaml:?} read as {p:?}"),
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn each_step_of_the_precedence() {
        let full = "metadata: {path: data/a, name: data/c}\npath: data/b\nname: data/d\n";
        assert_eq!(paths(full), ["data/a"]);
        // The Python server takes the top-level path before metadata.name; the Rust one never
        // reads it: both are needed.
        assert_eq!(paths("metadata: {name: data/c}\npath: data/b\nname: data/d\n"), ["data/b", "data/c"]);
        assert_eq!(paths("metadata: {name: data/c}\nname: data/d\n"), ["data/c"]);
        assert_eq!(paths("metadata:\n  name: x\n  path: data/x\n"), ["data/x"]);
        // Only the Python server reads a top-level name, and only the Rust server refuses
        // a document without metadata.path or metadata.name.
        assert!(every("metadata: {}\nname: data/d\n").contains("Rust server refuses"));
        assert!(every("path: data/b\n").contains("Rust server refuses"));
        assert!(every("kind: Playbook\n").contains("unknown"));
        assert!(every("").contains("unknown"));
    }

    #[test]
    fn falsy_values_leave_the_choice_to_the_next_field() {
        assert_eq!(paths("metadata: {path: ~, name: data/c}\n"), ["data/c"]);
        assert_eq!(paths("metadata: {path: null, name: data/c}\n"), ["data/c"]);
        assert_eq!(paths("metadata: {path: , name: data/c}\n"), ["data/c"]);
        // "" is falsy to the Python server and a string to the Rust one.
        assert_eq!(paths("metadata: {path: '', name: data/c}\n"), ["data/c", ""]);
    }

    #[test]
    fn base64_first_as_each_server_decodes_it() {
        let yaml = "metadata:\n  path: data/x\n";
        assert_eq!(paths(&b64(yaml)), ["data/x"]);
        // Wrapped lines: only Python's lenient decoder takes them; to the Rust server the text
        // is one plain scalar, which it refuses, so only the Python reading counts.
        let encoded = b64("metadata: {path: system/x}\n");
        let (head, tail) = encoded.split_at(8);
        assert_eq!(paths(&format!("{head}\n{tail}\n")), ["system/x"]);
        // Not base64 to either (or not UTF-8 once decoded): both read the text as it is.
        assert_eq!(paths("metadata: {path: data/x}"), ["data/x"]);
        assert_eq!(paths(&format!("{}{}", "metadata: {path: data/x}\n#", "/w==")), ["data/x"]);
    }

    #[test]
    fn text_python_decodes_and_rust_reads_as_yaml_needs_both_readings() {
        // Python skips `:` and spaces and stops at the padding: "#\n\nmetadata: {path: system/x}".
        // The Rust server's strict decoder refuses it and reads the text: metadata.path data/x.
        let content = "IwoK: bWV0YWRhdGE6IHtwYXRoOiBzeXN0ZW0veH0=\nmetadata: {path: data/x}\n";
        assert_eq!(python_b64decode(content).as_deref(), Some(&b"#\n\nmetadata: {path: system/x}"[..]));
        assert_eq!(paths(content), ["system/x", "data/x"]);
    }

    #[test]
    fn python_b64decode_matches_cpython() {
        // Expected values from CPython 3.11 `base64.b64decode(s)`.
        let cases: [(&str, Option<&[u8]>); 20] = [
            ("", Some(b"")),
            ("ZGF0YQ==", Some(b"data")),
            ("ZGF0YQ", None),
            ("ZGF0YQ=", None),
            ("ZGF0YQ==\n", Some(b"data")),
            ("ZG F0\nYQ==", Some(b"data")),
            ("ZGF0YQ==garbage", Some(b"data")),
            ("Z=GF0YQ==", Some(b"data")),
            ("ZGE=dA==", Some(b"da")),
            ("ZGF0", Some(b"dat")),
            ("ZGF", None),
            ("Z", None),
            ("ZGF0YR==", Some(b"data")),
            ("====ZGF0", Some(b"dat")),
            ("ZG==F0", Some(b"d")),
            ("ZGF=0", Some(b"da")),
            ("metadata: {path: data/x}", None),
            ("h\u{e9}llo", None),
            ("-_-_", Some(b"")),
            ("ZGF0YQ==ZGF0", Some(b"data")),
        ];
        for (input, want) in cases {
            assert_eq!(python_b64decode(input).as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn each_ambiguity_is_refused() {
        for (yaml, why) in [
            ("base: &b {path: data/x}\nmetadata: *b\n", "anchor"),
            ("metadata: {path: &p data/x, name: *p}\n", "anchor"),
            ("metadata: {path: !!str data/x}\n", "tag"),
            ("metadata: !foo {path: data/x}\n", "tag"),
            ("metadata: {<<: {path: system/x}, name: data/x}\n", "merge"),
            ("metadata: {'<<': {path: system/x}, name: data/x}\n", "merge"),
            ("metadata: {path: data/x, path: system/x}\n", "twice"),
            ("metadata: {path: data/x, \"path\": system/x}\n", "twice"),
            ("metadata: {path: data/x}\nmetadata: {path: system/x}\n", "twice"),
            ("metadata: {path: data/x}\nworkflow: [{step: a, step: b}]\n", "twice"),
            ("metadata: {path: data/x}\n---\nmetadata: {path: system/x}\n", "several"),
            ("%YAML 1.1\n---\nmetadata: {path: data/x}\n", "directive"),
            ("metadata: {path: data/x}\n? [a]\n: b\n", "complex"),
            // `?` opens an explicit key in a flow mapping to PyYAML and libyaml.
            ("metadata: {?path: system/x, name: data/x}\n", "starts with"),
            ("metadata: {?\"path\": system/x, name: data/x}\n", "starts with"),
            ("{?path: system/x, metadata: {name: data/x}}\n", "starts with"),
            ("metadata: {name: data/x}\n? metadata\n: {path: system/x}\n", "twice"),
            ("{metadata: {name: data/x}, ?metadata: {path: system/x}}\n", "starts with"),
            ("metadata: {path: data/x}\nnote: ?x\n", "starts with"),
            ("metadata: {path: data/x}\nnote: :x\n", "starts with"),
            ("metadata: {path: data/x}\nname: a\u{85}path: system/x\n", "holds"),
            ("metadata: {path: data/x}\nname: a\u{2028}path: system/x\n", "holds"),
            ("\u{feff}metadata: {path: data/x}\n", "holds"),
            ("metadata: {path: data/x}\x00\n", "holds"),
            ("metadata: {path: 'data/x\n", "not YAML"),
            ("- metadata: {path: data/x}\n", "not a mapping"),
            ("metadata: data/x\n", "not a mapping"),
            ("metadata: [path, data/x]\n", "not a mapping"),
            ("metadata: {path: [data/x]}\n", "not a string"),
        ] {
            let got = every(yaml);
            assert!(got.contains(why), "{yaml:?}: {got}");
        }
        let deep = format!("metadata: {{path: data/x}}\nw: {}{}\n", "[".repeat(40), "]".repeat(40));
        assert!(every(&deep).contains("deeper"));
        let fine = format!("metadata: {{path: data/x}}\nw: {}{}\n", "[".repeat(20), "]".repeat(20));
        assert_eq!(paths(&fine), ["data/x"]);
    }

    #[test]
    fn plain_scalars_pyyaml_or_serde_yaml_would_not_read_as_strings() {
        for value in [
            "yes",
            "No",
            "on",
            "OFF",
            "true",
            "y",
            "0o12",
            "012",
            "0x1f",
            "1_000",
            "1:30",
            "1.5",
            ".inf",
            ".NaN",
            "2026-01-01",
            "2026-01-01 10:00:00",
            "-1",
            "+1",
            "1e3",
            "=",
            "123abc",
        ] {
            let yaml = format!("metadata:\n  path: {value}\n  name: data/x\n");
            assert!(every(&yaml).contains("not a string"), "{value}");
        }
        // Quoted, they are strings to both (and then not valid playbook names, or fine ones).
        assert_eq!(paths("metadata: {path: 'yes'}\n"), ["yes"]);
        assert_eq!(paths("metadata: {path: \"2026/01\"}\n"), ["2026/01"]);
        // Plain words and paths are strings to both; block scalars too.
        for (yaml, want) in [
            ("metadata: {path: data/x}\n", "data/x"),
            ("metadata: {path: 2026/reports}\n", "2026/reports"),
            ("metadata: {name: example}\n", "example"),
            ("metadata: {name: _private}\n", "_private"),
            ("metadata:\n  path: |-\n    data/x\n", "data/x"),
            ("metadata:\n  path: \"d\\x61ta/x\"\n", "data/x"),
        ] {
            assert_eq!(paths(yaml), [want], "{yaml:?}");
        }
    }

    #[test]
    fn a_real_playbook_reads_as_its_metadata_path() {
        let yaml =
            "apiVersion: noetl.io/v1\nkind: Playbook\nmetadata:\n  name: daily_load\n  path: data/daily_load\n  \
                    labels: {team: data}\nworkload:\n  day: 1\nworkflow:\n  - step: start\n    next: [{step: end}]\n  \
                    - step: end\n    desc: \"Done: all\"   # a comment\n";
        assert_eq!(paths(yaml), ["data/daily_load"]);
        assert_eq!(paths(&b64(yaml)), ["data/daily_load"]);
    }

    /// The Rust server's reading, with its own YAML crate's fork (serde_yaml_ng: libyaml and
    /// serde_yaml's scalar rules): `None` where it refuses the request.
    fn rust_server(content: &str) -> Option<String> {
        let text = base64::engine::general_purpose::STANDARD
            .decode(content)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_else(|| content.to_owned());
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).ok()?;
        let metadata = yaml.get("metadata")?;
        let path = metadata.get("path").and_then(|v| v.as_str());
        path.or_else(|| metadata.get("name").and_then(|v| v.as_str())).map(str::to_owned)
    }

    #[test]
    fn whatever_the_rust_server_would_register_under_is_required() {
        const VALUES: [&str; 22] = [
            "data/a",
            "system/b",
            "'data/q'",
            "\"system/dq\"",
            "~",
            "null",
            "''",
            "",
            "yes",
            "on",
            "123",
            "0o12",
            "1_000",
            "1:30",
            "2026-01-01",
            "data/x # c",
            "|-\n    data/blk",
            "x",
            "True",
            "[data/l]",
            "\"d\\x61ta/esc\"",
            ".inf",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut checked, mut every) = (0, 0);
        for _ in 0..3000 {
            let mut doc = String::from("kind: Playbook\n");
            if next(4) > 0 {
                doc.push_str("metadata:\n");
                for key in ["path", "name"] {
                    if next(3) > 0 {
                        doc.push_str(&format!("  {key}: {}\n", VALUES[next(VALUES.len())]));
                    }
                }
            }
            for key in ["path", "name"] {
                if next(3) == 0 {
                    doc.push_str(&format!("{key}: {}\n", VALUES[next(VALUES.len())]));
                }
            }
            let content = if next(3) == 0 { b64(&doc) } else { doc };
            match (registered_paths(&content), rust_server(&content)) {
                (Ok(paths), Some(rust)) => {
                    assert!(paths.contains(&rust), "{content:?}: {paths:?} lacks the Rust server's {rust:?}");
                    checked += 1;
                }
                (Ok(paths), None) => panic!("{content:?}: {paths:?}, which the Rust server refuses"),
                (Err(_), _) => every += 1,
            }
        }
        assert!(checked > 300 && every > 300, "checked {checked}, every playbook {every}");
    }

    #[test]
    fn targets_from_the_body() {
        let src = CatalogYaml::compile(&CatalogYamlConfig { pointer: "/content".into() }).unwrap();
        let data = PlaybookPath::parse("data/x").unwrap();
        let system = PlaybookPath::parse("system/y").unwrap();
        let split = json!({"content": "path: data/x\nmetadata: {name: system/y}\n"});
        assert_eq!(src.targets(&split).unwrap(), [Target::Playbook(data.clone()), Target::Playbook(system)]);
        assert_eq!(src.targets(&json!({"content": "metadata: {path: data/x}"})).unwrap(), [Target::Playbook(data)]);
        assert!(matches!(src.targets(&json!({"content": "a: &x 1"})).unwrap()[..], [Target::Every(_)]));
        assert!(matches!(src.targets(&json!({})), Err(PlaybookError::Missing(_))));
        assert!(matches!(src.targets(&json!({"content": 3})), Err(PlaybookError::NotAString(_))));
        assert!(matches!(src.targets(&json!({"content": "metadata: {path: '../x'}"})), Err(PlaybookError::Path(_))));
        let bad = CatalogYaml::compile(&CatalogYamlConfig { pointer: "content".into() }).unwrap_err();
        assert_eq!(bad.path, "catalog_yaml.pointer");
    }
}

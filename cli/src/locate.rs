//! Where a field path (`roles.analyst.allow[0].playbooks[1]`) sits in a YAML file.
//!
//! serde reports semantic errors by field path only; an operator editing the file wants a line
//! and a column. This walks the file's YAML events once and remembers where each path starts,
//! spelling paths exactly as the core's `ConfigError` does, and where a key is written twice
//! (which serde would read as its last value).

use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, Parser};

/// A line and a column, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1.
    pub column: usize,
}

/// The positions of every field path in one YAML document, and the first mapping key in it
/// written twice.
#[derive(Debug, Default)]
pub struct Locations {
    found: HashMap<String, Position>,
    duplicate: Option<(Position, String)>,
}

enum Frame {
    /// `seen`: the mapping's keys so far.
    Map {
        path: String,
        key: Option<String>,
        seen: HashSet<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

impl Locations {
    /// Reads the positions of `text`; a file YAML cannot read yields none (serde already said
    /// where it failed).
    pub fn of_yaml(text: &str) -> Self {
        let mut found = HashMap::new();
        let mut duplicate = None;
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        while let Ok((event, mark)) = parser.next_token() {
            // yaml-rust2 counts columns from 0 (whatever its docs say); editors count from 1.
            let at = Position { line: mark.line(), column: mark.col() + 1 };
            if matches!(event, Event::StreamEnd) {
                break;
            }
            if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
                stack.pop();
                continue;
            }
            if !matches!(
                event,
                Event::Scalar(..) | Event::MappingStart(..) | Event::SequenceStart(..) | Event::Alias(..)
            ) {
                continue;
            }
            // The path of the node this event starts, or None when it is a mapping key.
            let node = match stack.last_mut() {
                None => Some(String::new()),
                Some(Frame::Seq { path, next }) => {
                    let item = format!("{path}[{next}]");
                    *next += 1;
                    found.entry(item.clone()).or_insert(at);
                    Some(item)
                }
                Some(Frame::Map { path, key, seen }) => match key.take() {
                    Some(key) => Some(join(path, &key)),
                    None => {
                        // A key: the field's position is its name, where an editor would look.
                        let name = match &event {
                            Event::Scalar(name, ..) => {
                                if !seen.insert(name.clone()) && duplicate.is_none() {
                                    duplicate = Some((at, format!("{name:?} is a key this mapping already has")));
                                }
                                name.clone()
                            }
                            _ => String::from("?"),
                        };
                        found.entry(join(path, &name)).or_insert(at);
                        *key = Some(name);
                        None
                    }
                },
            };
            let Some(node) = node else {
                continue;
            };
            match event {
                Event::MappingStart(..) => stack.push(Frame::Map { path: node, key: None, seen: HashSet::new() }),
                Event::SequenceStart(..) => stack.push(Frame::Seq { path: node, next: 0 }),
                _ => {}
            }
        }
        Locations { found, duplicate }
    }

    /// The first thing in `text` (the file these are the locations of) that YAML readers, or a
    /// reader and an editor, take two ways, with where it is:
    /// - a mapping key written twice (`roles: {analyst: .., analyst: ..}`, `mode` twice): serde
    ///   keeps the last one silently, so a role's first block, deny included, would be dropped;
    /// - U+0085, U+2028 or U+2029, which YAML reads as line breaks where editors show none: a
    ///   comment holding one can hide live rules.
    pub fn hazard(&self, text: &str) -> Option<(Position, String)> {
        hidden_line_break(text).or_else(|| self.duplicate.clone())
    }

    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(at) = self.found.get(path) {
                return Some(*at);
            }
            let cut = path.rfind(['.', '['])?;
            path = path.get(..cut)?;
        }
    }
}

fn hidden_line_break(text: &str) -> Option<(Position, String)> {
    let (at, c) = text.char_indices().find(|(_, c)| matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}'))?;
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((Position { line, column }, format!("{c:?} is a line break to YAML that editors do not show")))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "version: v1\nroles:\n  analyst:\n    allow:\n      - { permissions: [view], playbooks: [\"data/**\", \"/x\"] }\n      - permissions: [execute]\n        playbooks:\n          - a/b\n";

    #[test]
    fn finds_keys_flow_items_and_block_items() {
        let at = Locations::of_yaml(POLICY);
        assert_eq!(at.find("version"), Some(Position { line: 1, column: 1 }));
        assert_eq!(at.find("roles.analyst"), Some(Position { line: 3, column: 3 }));
        assert_eq!(at.find("roles.analyst.allow[0]"), Some(Position { line: 5, column: 9 }));
        assert_eq!(at.find("roles.analyst.allow[0].playbooks[1]"), Some(Position { line: 5, column: 55 }));
        assert_eq!(at.find("roles.analyst.allow[1].playbooks[0]"), Some(Position { line: 8, column: 13 }));
    }

    #[test]
    fn finds_duplicate_keys_and_hidden_line_breaks() {
        let at = |text: &str| Locations::of_yaml(text).hazard(text).map(|(at, why)| (at.line, at.column, why));
        assert_eq!(at(POLICY), None);
        let twice = "roles:\n  analyst:\n    allow: []\n  viewer: {}\n  analyst:\n    allow: []\n";
        assert_eq!(at(twice).map(|(l, c, _)| (l, c)), Some((5, 3)));
        assert_eq!(at("mode: enforce\nroutes: []\nmode: audit\n").map(|(l, _, _)| l), Some(3));
        assert_eq!(at("a: {x: 1, x: 2}").map(|(l, c, _)| (l, c)), Some((1, 11)));
        // The same key in two mappings, and a value equal to a key, are not duplicates.
        assert_eq!(at("a: {x: 1}\nb: {x: 1}\nc: [x, x]\nx: x\n"), None);
        let hidden = "roles:\n  r:\n    allow: [] # x\u{2028}    deny: []\n";
        assert_eq!(at(hidden).map(|(l, c, _)| (l, c)), Some((3, 18)));
        assert!(at("a: \u{85}").is_some());
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let at = Locations::of_yaml(POLICY);
        assert_eq!(at.find("roles.analyst.allow[1].playbooks[7]"), at.find("roles.analyst.allow[1].playbooks"));
        assert_eq!(at.find("nowhere.at.all"), None);
    }
}

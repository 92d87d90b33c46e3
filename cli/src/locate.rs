//! Where a field path (`roles.analyst.allow[0].playbooks[1]`) sits in a YAML file.
//!
//! serde reports semantic errors by field path only; an operator editing the file wants a line
//! and a column. This walks the file's YAML events once and remembers where each path starts,
//! spelling paths exactly as the core's `ConfigError` does.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// A line and a column, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1.
    pub column: usize,
}

/// The positions of every field path in one YAML document.
#[derive(Debug, Default)]
pub struct Locations(HashMap<String, Position>);

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

impl Locations {
    /// Reads the positions of `text`; a file YAML cannot read yields none (serde already said
    /// where it failed).
    pub fn of_yaml(text: &str) -> Self {
        let mut found = HashMap::new();
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
                Some(Frame::Map { path, key }) => match key.take() {
                    Some(key) => Some(join(path, &key)),
                    None => {
                        // A key: the field's position is its name, where an editor would look.
                        let name = match &event {
                            Event::Scalar(name, ..) => name.clone(),
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
                Event::MappingStart(..) => stack.push(Frame::Map { path: node, key: None }),
                Event::SequenceStart(..) => stack.push(Frame::Seq { path: node, next: 0 }),
                _ => {}
            }
        }
        Locations(found)
    }

    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(at) = self.0.get(path) {
                return Some(*at);
            }
            let cut = path.rfind(['.', '['])?;
            path = path.get(..cut)?;
        }
    }
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
    fn falls_back_to_the_nearest_ancestor() {
        let at = Locations::of_yaml(POLICY);
        assert_eq!(at.find("roles.analyst.allow[1].playbooks[7]"), at.find("roles.analyst.allow[1].playbooks"));
        assert_eq!(at.find("nowhere.at.all"), None);
    }
}

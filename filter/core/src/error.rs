//! The one error type of configuration, shared by every module that compiles a part of it
//! (the policy compiles its own document, so it cannot take this from `config`, which holds
//! that document).

use std::fmt;

/// A configuration error: the field path it is about and what is wrong.
///
/// Displayed as `providers[1].jwks.keys[0].n: not base64url`, so an operator
/// reading Envoy's log knows which line of the configuration to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", path_prefix(.path))]
pub struct ConfigError {
    /// Where in the configuration, as a JSON path (`routes[2].match.glob`); empty for the whole.
    pub path: String,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

impl ConfigError {
    /// An error about the field at `path`.
    pub fn new(path: impl Into<String>, message: impl fmt::Display) -> Self {
        ConfigError { path: path.into(), message: message.to_string() }
    }

    /// The same error, located inside the field `outer` (`policy` + `roles.x` -> `policy.roles.x`).
    #[must_use]
    pub fn within(mut self, outer: &str) -> Self {
        self.path = match (outer.is_empty(), self.path.is_empty()) {
            (true, _) => self.path,
            (false, true) => outer.to_owned(),
            (false, false) if self.path.starts_with('[') => format!("{outer}{}", self.path),
            (false, false) => format!("{outer}.{}", self.path),
        };
        self
    }
}

//! What a VM said: `proxy_log` lines and WASI stdout/stderr, kept per VM so tests can assert.

use std::fmt;

use crate::abi::LogLevel;

/// One `proxy_log` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The level the filter logged at.
    pub level: LogLevel,
    /// The message, lossily decoded as UTF-8.
    pub message: String,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        };
        write!(f, "[{level}] {}", self.message)
    }
}

/// Everything one VM logged, in order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Captured {
    pub(crate) lines: Vec<LogLine>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

impl Captured {
    /// The last `n` log lines, oldest first (what a trap report shows).
    pub(crate) fn tail(&self, n: usize) -> Vec<LogLine> {
        let start = self.lines.len().saturating_sub(n);
        self.lines.get(start..).map(<[LogLine]>::to_vec).unwrap_or_default()
    }
}

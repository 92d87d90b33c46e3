//! The harness's errors: what failed, and for a trap, what the filter said last.

use std::fmt;
use std::path::PathBuf;

use crate::logs::LogLine;

/// A filter that trapped (a panic, `unreachable`, running out of fuel, `proc_exit`).
///
/// The SDK's panic hook logs the panic message at critical level before aborting, so
/// [`FilterTrap::last_logs`] usually says why; the trap message says where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterTrap {
    /// The worker the VM plays.
    pub vm: usize,
    /// The export the host was calling (`proxy_on_request_headers`, ...).
    pub call: String,
    /// The trap: its message and cause chain.
    pub message: String,
    /// The exit code, when the trap was `proc_exit`.
    pub exit_code: Option<i32>,
    /// The VM's last log lines, oldest first.
    pub last_logs: Vec<LogLine>,
    /// What the VM wrote to stderr (Rust's default panic output goes there).
    pub stderr: String,
}

impl fmt::Display for FilterTrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "filter trapped in {} on VM {}: {}", self.call, self.vm, self.message)?;
        if self.last_logs.is_empty() {
            write!(f, "\n  (the filter logged nothing)")?;
        } else {
            write!(f, "\n  last log lines:")?;
            for line in &self.last_logs {
                write!(f, "\n    {line}")?;
            }
        }
        if !self.stderr.is_empty() {
            write!(f, "\n  stderr: {}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

impl std::error::Error for FilterTrap {}

/// Everything that can go wrong while hosting a filter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The .wasm file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// wasmtime could not compile the module.
    #[error("cannot compile the wasm module: {0}")]
    Compile(String),
    /// The module does not speak the proxy-wasm ABI the harness hosts, or an export has the
    /// wrong signature.
    #[error("proxy-wasm ABI mismatch: {0}")]
    Abi(String),
    /// Instantiation failed (a missing memory, a trap in a start function).
    #[error("cannot instantiate the wasm module: {0}")]
    Instantiate(String),
    /// The filter trapped; the VM is dead, as it would be in Envoy.
    #[error("{0}")]
    Trap(Box<FilterTrap>),
    /// A call on a VM that trapped before.
    #[error("the VM trapped earlier ({0}); start a new one")]
    VmFailed(String),
    /// `proxy_on_vm_start` returned false.
    #[error("the filter refused to start (proxy_on_vm_start returned false){}", tail(.logs))]
    VmStartRejected {
        /// The VM's log lines.
        logs: Vec<LogLine>,
    },
    /// `proxy_on_configure` returned false: Envoy would reject the configuration.
    #[error("the filter rejected its configuration (proxy_on_configure returned false){}", tail(.logs))]
    ConfigurationRejected {
        /// The VM's log lines (the filter should have said why).
        logs: Vec<LogLine>,
    },
    /// No HTTP context with this id on the VM.
    #[error("no HTTP context {0} on this VM")]
    UnknownContext(u32),
    /// No pending callout with this token on the VM.
    #[error("no pending HTTP call with token {0} on this VM")]
    UnknownHttpCall(u32),
    /// The filter .wasm could not be found or built.
    #[error("cannot provide the filter .wasm: {0}")]
    Build(String),
    /// The host itself failed (a poisoned lock, fuel accounting).
    #[error("harness failure: {0}")]
    Host(String),
}

fn tail(logs: &[LogLine]) -> String {
    if logs.is_empty() {
        return String::from("; it logged nothing");
    }
    let start = logs.len().saturating_sub(5);
    let lines: Vec<String> = logs.get(start..).unwrap_or_default().iter().map(ToString::to_string).collect();
    format!("; last log lines:\n    {}", lines.join("\n    "))
}

impl From<FilterTrap> for HarnessError {
    fn from(trap: FilterTrap) -> Self {
        HarnessError::Trap(Box::new(trap))
    }
}

impl HarnessError {
    /// The trap, if this error is one.
    #[must_use]
    pub fn trap(&self) -> Option<&FilterTrap> {
        match self {
            HarnessError::Trap(trap) => Some(trap),
            _ => None,
        }
    }
}

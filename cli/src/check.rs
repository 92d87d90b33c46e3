//! `check`: parse, compile and lint policy files, reporting `file:line:column: cause`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use playbook_guard_core::policy::{Policy, PolicyDocument};

use crate::lint::{lint, Warning};
use crate::locate::Locations;
use crate::Failure;

/// Options of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy files (YAML).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Treat warnings as errors (exit 1), for CI.
    #[arg(long)]
    strict: bool,
}

/// A policy file read, compiled and linted.
#[derive(Debug)]
pub struct Checked {
    /// The document as written.
    pub doc: PolicyDocument,
    /// The compiled policy, as the filter would hold it.
    pub policy: Policy,
    /// What `check` warns about, each already located (`file:line:column: warning: ...`).
    pub warnings: Vec<String>,
}

/// Reads, compiles and lints one policy file. The error is one line, `file:line:column: cause`
/// (the column is left out only when the YAML parser knows no place).
pub fn check_file(path: &Path) -> Result<Checked, Failure> {
    let file = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| Failure(format!("{file}: cannot read: {e}")))?;
    let locations = Locations::of_yaml(&text);
    if let Some((at, why)) = locations.hazard(&text) {
        return Err(Failure(format!("{file}:{}:{}: {why}", at.line, at.column)));
    }
    let doc: PolicyDocument = serde_yaml_ng::from_str(&text).map_err(|e| {
        // serde_yaml_ng appends "at line L column C" itself; the prefix says it the usual way.
        let message = e.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
        match e.location() {
            Some(at) => Failure(format!("{file}:{}:{}: {message}", at.line(), at.column())),
            None => Failure(format!("{file}: {message}")),
        }
    })?;
    let place = |path: &str| match locations.find(path) {
        Some(at) => format!("{file}:{}:{}", at.line, at.column),
        None => format!("{file}"),
    };
    let policy = Policy::compile(&doc).map_err(|e| Failure(format!("{}: {e}", place(&e.path))))?;
    let warnings = lint(&doc)
        .into_iter()
        .map(|Warning { path, message }| format!("{}: warning: {path}: {message}", place(&path)))
        .collect();
    Ok(Checked { doc, policy, warnings })
}

/// Checks every file; exit 1 if any is bad (or, with `--strict`, has warnings).
pub fn run(args: &CheckArgs) -> ExitCode {
    let mut failed = false;
    for path in &args.files {
        match check_file(path) {
            Ok(checked) => {
                for warning in &checked.warnings {
                    eprintln!("{warning}");
                }
                failed |= args.strict && !checked.warnings.is_empty();
                println!(
                    "{}: ok: version {:?} (stat policy_version_hash {}), {} roles, {} warnings",
                    path.display(),
                    checked.policy.version(),
                    checked.policy.version_hash(),
                    checked.doc.roles.len(),
                    checked.warnings.len()
                );
            }
            Err(Failure(message)) => {
                eprintln!("{message}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

//! Finding (and if needed building) the real playbook-guard `.wasm` in this workspace.
//!
//! Tests call [`playbook_guard_filter`] so that `cargo test -p playbook-guard-test-harness` works
//! on a fresh checkout: the filter is built once per test binary, and rebuilt when a source under
//! `filter/` is newer than the `.wasm` (so a stale build does not silently hide a change).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::error::HarnessError;
use crate::filter::Filter;

/// Environment variable naming a prebuilt filter to use instead (never rebuilt).
pub const WASM_ENV: &str = "PLAYBOOK_GUARD_WASM";

/// The workspace root (the harness crate's parent directory).
#[must_use]
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// Where `cargo build -p playbook-guard --target wasm32-wasip1 --release` puts the filter
/// (honouring `CARGO_TARGET_DIR`).
#[must_use]
pub fn default_wasm_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from);
    target.join("wasm32-wasip1").join("release").join("playbook_guard.wasm")
}

/// The filter's `.wasm`: `$PLAYBOOK_GUARD_WASM` if set, else the workspace build, built (once per
/// process) when missing or older than the filter's sources. A failed rebuild of an existing
/// `.wasm` falls back to it with a warning on stderr; a failed first build is an error.
///
/// # Errors
/// [`HarnessError::Build`] when the override names a missing file or the build fails.
pub fn playbook_guard_wasm() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os(WASM_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(HarnessError::Build(format!("{WASM_ENV}={} does not name a file", path.display())));
        }
        return Ok(path);
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let path = default_wasm_path();
            if !path.is_file() {
                build()?;
            } else if needs_build(&path) {
                // A stale build is still a build: if the sources do not compile right now (work
                // in progress), test the last good filter and say so, rather than fail every test.
                if let Err(e) = build() {
                    eprintln!(
                        "playbook-guard-test-harness: rebuild failed ({e}); testing the older {}",
                        path.display()
                    );
                }
            }
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!("the build did not produce {}", path.display()))
            }
        })
        .clone()
        .map_err(HarnessError::Build)
}

/// The real filter, compiled once per process.
///
/// # Errors
/// As [`playbook_guard_wasm`] and [`Filter::from_file`].
pub fn playbook_guard_filter() -> Result<Filter, HarnessError> {
    static FILTER: OnceLock<Result<Filter, String>> = OnceLock::new();
    FILTER
        .get_or_init(|| {
            let path = playbook_guard_wasm().map_err(|e| e.to_string())?;
            Filter::from_file(&path).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(HarnessError::Build)
}

fn needs_build(wasm: &Path) -> bool {
    let Some(built) = modified(wasm) else {
        return true;
    };
    let root = workspace_root();
    let sources = [root.join("filter"), root.join("Cargo.toml"), root.join("Cargo.lock")];
    sources.iter().any(|source| newest(source).is_some_and(|t| t > built))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time under `path` (a file or a directory tree).
fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path).ok()?.filter_map(Result::ok).filter_map(|entry| newest(&entry.path())).max()
}

fn build() -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "playbook-guard", "--target", "wasm32-wasip1", "--release"])
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo build -p playbook-guard --target wasm32-wasip1 --release` failed ({status})"))
    }
}

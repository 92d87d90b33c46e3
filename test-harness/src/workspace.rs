//! Finding (and if needed building) the real playbook-guard `.wasm` in this workspace, and the
//! Wasm floor `make bench` compares it with (`bench/floor`).
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

/// Environment variable naming a prebuilt floor filter to use instead (never rebuilt).
pub const FLOOR_WASM_ENV: &str = "PLAYBOOK_GUARD_FLOOR_WASM";

/// A module this workspace builds with `cargo build -p <package> --target wasm32-wasip1 --release`.
struct WorkspaceModule {
    package: &'static str,
    /// The file cargo writes under `wasm32-wasip1/release`.
    file: &'static str,
    /// Names a prebuilt module to use instead.
    env: &'static str,
    /// What the module is built from, relative to the workspace root (the manifests are added).
    sources: &'static [&'static str],
}

const GUARD: WorkspaceModule =
    WorkspaceModule { package: "playbook-guard", file: "playbook_guard.wasm", env: WASM_ENV, sources: &["filter"] };

const FLOOR: WorkspaceModule = WorkspaceModule {
    package: "playbook-guard-floor",
    file: "playbook_guard_floor.wasm",
    env: FLOOR_WASM_ENV,
    sources: &["bench/floor"],
};

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
    release_path(GUARD.file)
}

fn release_path(file: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from);
    target.join("wasm32-wasip1").join("release").join(file)
}

/// The filter's `.wasm`: `$PLAYBOOK_GUARD_WASM` if set, else the workspace build, built (once per
/// process) when missing or older than the filter's sources. A failed build is an error carrying
/// cargo's output, never a fall-back to the module already built.
///
/// # Errors
/// [`HarnessError::Build`] when the override names a missing file or the build fails.
pub fn playbook_guard_wasm() -> Result<PathBuf, HarnessError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    module_wasm(&GUARD, &BUILT)
}

/// The Wasm floor's `.wasm` (`bench/floor`), as [`playbook_guard_wasm`] finds the filter's:
/// `$PLAYBOOK_GUARD_FLOOR_WASM` if set, else the workspace's release build, built when stale.
///
/// # Errors
/// As [`playbook_guard_wasm`].
pub fn floor_wasm() -> Result<PathBuf, HarnessError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    module_wasm(&FLOOR, &BUILT)
}

fn module_wasm(module: &WorkspaceModule, built: &OnceLock<Result<PathBuf, String>>) -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os(module.env) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(HarnessError::Build(format!("{}={} does not name a file", module.env, path.display())));
        }
        return Ok(path);
    }
    built
        .get_or_init(|| resolve(&release_path(module.file), |wasm| needs_build(module, wasm), || build(module)))
        .clone()
        .map_err(HarnessError::Build)
}

/// The decision behind [`playbook_guard_wasm`], apart from cargo and the clock so it can be tested.
fn resolve(
    wasm: &Path,
    needs_build: impl FnOnce(&Path) -> bool,
    build: impl FnOnce() -> Result<(), String>,
) -> Result<PathBuf, String> {
    // A failed build is never answered with the module already there: the tests would pass
    // against code that is not the code under test.
    if !wasm.is_file() || needs_build(wasm) {
        build()?;
    }
    if wasm.is_file() {
        Ok(wasm.to_path_buf())
    } else {
        Err(format!("the build did not produce {}", wasm.display()))
    }
}

/// The real filter, compiled once per process.
///
/// # Errors
/// As [`playbook_guard_wasm`] and [`Filter::from_file`].
pub fn playbook_guard_filter() -> Result<Filter, HarnessError> {
    static FILTER: OnceLock<Result<Filter, String>> = OnceLock::new();
    compile_once(&FILTER, playbook_guard_wasm)
}

/// The Wasm floor (`bench/floor`), compiled once per process: what any proxy-wasm filter costs.
///
/// # Errors
/// As [`floor_wasm`] and [`Filter::from_file`].
pub fn floor_filter() -> Result<Filter, HarnessError> {
    static FILTER: OnceLock<Result<Filter, String>> = OnceLock::new();
    compile_once(&FILTER, floor_wasm)
}

fn compile_once(
    compiled: &OnceLock<Result<Filter, String>>,
    wasm: fn() -> Result<PathBuf, HarnessError>,
) -> Result<Filter, HarnessError> {
    compiled
        .get_or_init(|| {
            // Kept as the bare message: it is wrapped in HarnessError::Build again below.
            let path = wasm().map_err(|e| match e {
                HarnessError::Build(message) => message,
                other => other.to_string(),
            })?;
            Filter::from_file(&path).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(HarnessError::Build)
}

fn needs_build(module: &WorkspaceModule, wasm: &Path) -> bool {
    let Some(built) = modified(wasm) else {
        return true;
    };
    let root = workspace_root();
    let manifests = ["Cargo.toml", "Cargo.lock"];
    module.sources.iter().chain(&manifests).any(|source| newest(&root.join(source)).is_some_and(|t| t > built))
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

fn build(module: &WorkspaceModule) -> Result<(), String> {
    let args = ["build", "-p", module.package, "--target", "wasm32-wasip1", "--release"];
    let command = format!("cargo {}", args.join(" "));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("cannot run `{command}`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{command}` failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of its own under the system temp directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!("playbook-guard-harness-{}-{name}.wasm", std::process::id()));
            std::fs::write(&path, b"\0asm").unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn failing_build() -> Result<(), String> {
        Err("error[E0425]: cannot find value `x` in this scope".into())
    }

    #[test]
    fn a_failed_rebuild_of_a_stale_module_is_an_error_with_cargo_s_output() {
        let old = TempFile::new("stale");
        let result = resolve(&old.0, |_| true, failing_build);
        let error = result.expect_err("a stale module must not be tested when its rebuild fails");
        assert!(error.contains("error[E0425]"), "cargo's output is in the error: {error}");
    }

    #[test]
    fn a_failed_first_build_is_an_error() {
        let missing = std::env::temp_dir().join(format!("playbook-guard-harness-{}-missing.wasm", std::process::id()));
        let error = resolve(&missing, |_| false, failing_build).expect_err("nothing to test");
        assert!(error.contains("error[E0425]"), "{error}");
    }

    #[test]
    fn an_up_to_date_module_is_used_without_building() {
        let fresh = TempFile::new("fresh");
        let result = resolve(&fresh.0, |_| false, || panic!("an up-to-date module is not rebuilt"));
        assert_eq!(result, Ok(fresh.0.clone()));
    }

    #[test]
    fn a_stale_module_that_rebuilds_is_used() {
        let stale = TempFile::new("rebuilt");
        let mut built = false;
        let result = resolve(
            &stale.0,
            |_| true,
            || {
                built = true;
                Ok(())
            },
        );
        assert!(built, "a stale module is rebuilt");
        assert_eq!(result, Ok(stale.0.clone()));
    }
}

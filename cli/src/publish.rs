//! `publish`: render a policy into the ECDS file a running Envoy watches, atomically.
//!
//! Envoy reloads the file when a file is renamed into its directory, so the new content is
//! written to a temporary file beside it, flushed to disk, and renamed over the old one: Envoy
//! reads either the old file or the new one, never half of one. A policy or filter
//! configuration that does not compile is refused before anything is written, so the file
//! always holds the last good configuration.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::render::{ecds_resources, header, plugin_config, to_yaml, FilterArgs, Output, PluginConfig, PolicyArg};
use crate::Failure;

/// Options of `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    policy: PolicyArg,
    /// The ECDS file Envoy watches (`path_config_source.path` in its bootstrap).
    #[arg(long, default_value = "build/ecds/playbook-guard.yaml")]
    to: PathBuf,
}

/// Renders, checks and publishes; prints what went where.
pub fn run(args: &PublishArgs) -> Result<(), Failure> {
    let plugin = plugin_config(&args.filter, &args.policy.policy, true)?;
    publish(&args.filter, &plugin, &args.to)?;
    println!("published policy version {:?} to {}", plugin.version, args.to.display());
    Ok(())
}

/// Writes the ECDS file for a checked plugin configuration, atomically.
pub fn publish(filter: &FilterArgs, plugin: &PluginConfig, to: &Path) -> Result<(), Failure> {
    let resources = ecds_resources(filter, plugin)?;
    let text = format!("{}{}", header("ecds"), to_yaml(Output::Ecds, &resources)?);
    replace_atomically(to, text.as_bytes())
}

/// Writes `bytes` to a temporary file in `target`'s directory and renames it onto `target`.
pub fn replace_atomically(target: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let name = target
        .file_name()
        .ok_or_else(|| Failure(format!("--to {}: name a file, not a directory", target.display())))?;
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| Failure(format!("{}: cannot create the directory: {e}", dir.display())))?;
    // Same directory, so the rename stays on one file system and is atomic; the process id
    // keeps two concurrent publishers from writing into one temporary file.
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let written = File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        // On disk before it becomes visible: a crash leaves the old file or the whole new one.
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, target)) {
        // Best effort: a leftover temporary file is harmless but untidy.
        let _ = fs::remove_file(&tmp);
        return Err(Failure(format!("{}: cannot publish: {e}", target.display())));
    }
    Ok(())
}

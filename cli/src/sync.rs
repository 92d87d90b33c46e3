//! `sync-noetl`: keep Envoy's policy in step with NoETL's permission tables.
//!
//! Every `--every` it imports the tables (as `import-noetl` does) and, only when the policy's
//! text changed, publishes it through the ECDS file (as `publish` does: checked, then written
//! and renamed, so Envoy reads the old file or the new one, and every worker swaps to it
//! without a dropped request). While the database is down, or an import fails, the file keeps
//! the last policy and the import is retried with backoff.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::noetl::{import, mask_password, Imported, Source};
use crate::publish::publish;
use crate::render::{plugin_config_with, FilterArgs};
use crate::Failure;

/// Options of `sync-noetl`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    filter: FilterArgs,
    /// The ECDS file Envoy watches (`path_config_source.path` in its bootstrap).
    #[arg(long)]
    to: PathBuf,
    /// How often to re-import: `30s`, `500ms`, `2m`, or seconds.
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    every: Duration,
    /// Import and publish once, then exit (exit 2 if the import fails).
    #[arg(long)]
    once: bool,
}

/// The longest wait between retries while the database is down, unless `--every` is longer.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Runs until killed (or once, with `--once`).
pub fn run(args: &SyncArgs) -> Result<(), Failure> {
    let source = mask_password(&args.source.database_url);
    println!("sync-noetl: {source} (schema {}) to {} every {:?}", args.source.schema, args.to.display(), args.every);
    let mut last: Option<Imported> = None;
    let mut failures = 0;
    loop {
        match step(args, last.as_ref()) {
            Ok(Some(imported)) => {
                println!("sync-noetl: {}", summary(last.as_ref(), &imported, &args.to));
                for warning in &imported.warnings {
                    eprintln!("sync-noetl: warning: {warning}");
                }
                last = Some(imported);
                failures = 0;
            }
            Ok(None) => failures = 0,
            Err(Failure(e)) if args.once => return Err(Failure(e)),
            Err(Failure(e)) => {
                failures += 1;
                let wait = backoff(failures, args.every);
                let kept = match &last {
                    Some(l) => format!("Envoy keeps policy {:?}", l.doc.version),
                    None => "nothing published yet; Envoy keeps what it has".to_owned(),
                };
                eprintln!("sync-noetl: {e}; {kept}; retrying in {wait:?}");
                std::thread::sleep(wait);
                continue;
            }
        }
        if args.once {
            return Ok(());
        }
        std::thread::sleep(args.every);
    }
}

/// One import; publishes and returns it if its text differs from the last one published.
fn step(args: &SyncArgs, last: Option<&Imported>) -> Result<Option<Imported>, Failure> {
    let imported = import(&args.source)?;
    if last.is_some_and(|l| l.text == imported.text) {
        return Ok(None);
    }
    let plugin = plugin_config_with(&args.filter, &imported.doc, "the imported policy", true)?;
    publish(&args.filter, &plugin, &args.to)?;
    Ok(Some(imported))
}

/// `1s, 2s, 4s, ...` up to `every` or a minute, whichever is longer; never shorter than `every`
/// would allow at first (`--every 200ms` retries every 200 ms at first).
fn backoff(failures: u32, every: Duration) -> Duration {
    let first = every.min(Duration::from_secs(1));
    let cap = every.max(MAX_BACKOFF);
    first.saturating_mul(2_u32.saturating_pow(failures.saturating_sub(1))).min(cap)
}

/// One line: which version replaced which, and how many rules (source rows) came, went or
/// changed, and which roles.
fn summary(before: Option<&Imported>, after: &Imported, to: &Path) -> String {
    let to = to.display();
    let Some(before) = before else {
        return format!(
            "published policy {:?} to {to}: {} rules of {} roles (first import)",
            after.doc.version,
            after.rules.len(),
            after.doc.roles.len()
        );
    };
    let added = after.rules.keys().filter(|k| !before.rules.contains_key(*k)).count();
    let removed = before.rules.keys().filter(|k| !after.rules.contains_key(*k)).count();
    let changed = after.rules.iter().filter(|(k, r)| before.rules.get(*k).is_some_and(|b| b != *r)).count();
    let roles = |i: &Imported| i.doc.roles.keys().cloned().collect::<BTreeSet<String>>();
    let (old_roles, new_roles) = (roles(before), roles(after));
    let mut line = format!(
        "published policy {:?} to {to} (was {:?}): rules {added} added, {removed} removed, {changed} changed",
        after.doc.version, before.doc.version
    );
    let joined = |set: Vec<&String>| set.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    let gained: Vec<&String> = new_roles.difference(&old_roles).collect();
    let lost: Vec<&String> = old_roles.difference(&new_roles).collect();
    if !gained.is_empty() {
        line.push_str(&format!("; roles added: {}", joined(gained)));
    }
    if !lost.is_empty() {
        line.push_str(&format!("; roles removed: {}", joined(lost)));
    }
    line
}

/// `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?}: write a whole number and a unit: 30s, 500ms, 2m"))?;
    let interval = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{text:?}: the unit is ms, s, m or h")),
    };
    if interval < Duration::from_millis(100) {
        return Err(format!("{text:?}: at least 100ms"));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_with_units_and_refuse_the_rest() {
        assert_eq!(parse_interval("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_interval("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("1.5s").is_err());
        assert!(parse_interval("s").is_err());
        assert!(parse_interval("3 days").is_err());
    }

    #[test]
    fn backoff_doubles_from_a_second_up_to_a_minute_or_the_interval() {
        let every = Duration::from_secs(30);
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n, every).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(1, Duration::from_millis(200)), Duration::from_millis(200));
        assert_eq!(backoff(40, Duration::from_secs(300)), Duration::from_secs(300));
    }

    #[test]
    fn the_summary_counts_rows_added_removed_and_changed_and_names_roles() {
        use crate::noetl::{render, Row, Tables};
        let row = |id: i64, role: &str, allow: &str| Row {
            id,
            role: role.into(),
            playbook_path: None,
            can: [true, false, false],
            allow_pattern: Some(allow.into()),
            deny_pattern: None,
        };
        let mut tables = Tables::default();
        tables.roles.insert("a".into(), vec![row(1, "a", "data/%"), row(2, "a", "ops/%")]);
        let before = render(&tables, "auth").unwrap();
        tables.roles.insert("a".into(), vec![row(1, "a", "data/x%"), row(3, "a", "x")]);
        tables.roles.insert("b".into(), vec![row(4, "b", "%")]);
        let after = render(&tables, "auth").unwrap();
        let to = Path::new("ecds.yaml");
        assert!(summary(None, &before, to).ends_with("to ecds.yaml: 2 rules of 1 roles (first import)"));
        let line = summary(Some(&before), &after, to);
        assert!(
            line.contains(&format!(
                "(was {:?}): rules 2 added, 1 removed, 1 changed; roles added: b",
                before.doc.version
            )),
            "{line}"
        );
        assert!(summary(Some(&after), &before, to).ends_with("rules 1 added, 2 removed, 1 changed; roles removed: b"));
    }
}

//! `routes`: the route profile as a table (route, methods, what it requires, where the playbook
//! comes from), from the filter configuration itself, compiled by the filter's own core.

use std::path::{Path, PathBuf};

use clap::Args;
use playbook_guard_core::config::{DefaultAction, RouteConfig};
use playbook_guard_core::routes::{RouteAction, RouteRow, Routes};
use serde::Deserialize;

use crate::Failure;

/// Options of `routes`.
#[derive(Debug, Args)]
pub struct RoutesArgs {
    /// The filter configuration (YAML or JSON); only its routes are read.
    #[arg(long, default_value = "envoy/filter-config.yaml")]
    pub config: PathBuf,
}

/// The part of the filter configuration the table shows.
#[derive(Debug, Deserialize)]
struct RouteTable {
    #[serde(default)]
    routes: Vec<RouteConfig>,
    #[serde(default)]
    default_action: DefaultAction,
}

/// Compiles the routes of the configuration at `path`.
pub fn load_routes(path: &Path) -> Result<Routes, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure(format!("{}: {e}", path.display())))?;
    let table: RouteTable = serde_yaml_ng::from_str(&text).map_err(|e| Failure(format!("{}: {e}", path.display())))?;
    // The body limit does not show in the table; any value compiles the same routes.
    Routes::compile(&table.routes, table.default_action, 0)
        .map_err(|e| Failure(format!("{}: {}", path.display(), e.within("routes"))))
}

/// Prints the table.
pub fn run(args: &RoutesArgs) -> Result<(), Failure> {
    print!("{}", table(&load_routes(&args.config)?));
    Ok(())
}

/// The Markdown table of `routes`.
pub fn table(routes: &Routes) -> String {
    let mut out =
        String::from("| # | route | methods | path | requires | playbook from |\n|---|---|---|---|---|---|\n");
    for row in routes.rows() {
        let (requires, from) = describe(row.action);
        let path = match row.id {
            "default_action" => "*".to_owned(),
            id if routes.is_prefix(id) => format!("{}*", row.path),
            _ => row.path.to_owned(),
        };
        let methods = row.methods.map_or_else(|| "any".to_owned(), |m| m.join(", "));
        out.push_str(&format!(
            "| {} | {} | {methods} | `{path}` | {requires} | {from} |\n",
            number(&row),
            cell(row.name.unwrap_or(if row.id == "default_action" { "anything else" } else { "" })),
            requires = cell(&requires),
            from = cell(&from),
        ));
    }
    out
}

fn number(row: &RouteRow<'_>) -> String {
    row.id.strip_prefix("routes[").and_then(|r| r.strip_suffix(']')).unwrap_or("default").to_owned()
}

/// (what the route requires, where its playbooks come from).
fn describe(action: &RouteAction) -> (String, String) {
    match action {
        RouteAction::Public => ("public".into(), "-".into()),
        RouteAction::Authenticate { logout: false } => ("session".into(), "-".into()),
        RouteAction::Authenticate { logout: true } => ("session (logout)".into(), "-".into()),
        RouteAction::Restricted => ("restricted roles".into(), "-".into()),
        RouteAction::Blocked => ("blocked".into(), "-".into()),
        RouteAction::Deny => ("deny".into(), "-".into()),
        RouteAction::Authorize { requirements } if requirements.len() == 1 => {
            let r = requirements.iter().next();
            (r.map(|r| r.permission.clone()).unwrap_or_default(), r.map(|r| r.source.describe()).unwrap_or_default())
        }
        RouteAction::Authorize { requirements } => (
            requirements.iter().map(|r| r.permission.as_str()).collect::<Vec<_>>().join(" + "),
            requirements
                .iter()
                .map(|r| format!("{}: {}", r.permission, r.source.describe()))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        RouteAction::Forward { strip_prefix, prefix } => {
            ("as the route reached".into(), format!("the route of `{prefix}` + the path after `{strip_prefix}`"))
        }
        RouteAction::JsonRpc { source, methods } => {
            let each: Vec<String> =
                methods.iter().map(|(m, p)| format!("{m}: {}", p.as_deref().unwrap_or("session"))).collect();
            (format!("JSON-RPC `method`: {}; others refused", each.join(", ")), source.describe())
        }
    }
}

/// A Markdown table cell: no `|` or line break can end it early.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

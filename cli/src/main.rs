//! `playbook-guard`: check and explain policies, render Envoy configuration, mint dev tokens.
//!
//! Every decision it shows comes from the same core code the filter runs.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod check;
mod explain_request;
mod explain_token;
mod lint;
mod locate;
mod noetl;
mod publish;
mod render;
mod routes;
mod sync;
mod token;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use playbook_guard_core::path::PlaybookPath;
use playbook_guard_core::policy::{Policy, PolicyDocument};

/// Command-line tool for playbook-guard.
#[derive(Debug, Parser)]
#[command(name = "playbook-guard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check policy files: exit 1 with file:line:column and the cause if one is bad; warn
    /// about rules that never decide, roles that grant nothing, allows a deny cancels.
    Check(check::CheckArgs),
    /// Explain a decision: allow or deny, and the rule that decided (exit 0 allow, 1 deny).
    /// Either a permission on a playbook (`--playbook`, `--permission`), or a request
    /// (`--method`, `--path`, `--body`) decided through the route profile; or, with `--token`,
    /// which provider accepts a JWT and the roles it yields, and why (exit 0 accepted, 1 refused).
    Explain {
        /// The policy file.
        #[arg(long, default_value = "policies/noetl-default.yaml")]
        policy: PathBuf,
        /// The user's roles (comma-separated or repeated).
        #[arg(long, value_delimiter = ',', required_unless_present = "token")]
        roles: Vec<String>,
        /// The playbook path.
        #[arg(long, requires = "permission", conflicts_with = "path")]
        playbook: Option<String>,
        /// The permission asked for.
        #[arg(long, requires = "playbook")]
        permission: Option<String>,
        /// The request path (query string allowed): decide a request through the routes.
        #[arg(long, required_unless_present_any = ["playbook", "token"])]
        path: Option<String>,
        /// The request method.
        #[arg(long, default_value = "GET", requires = "path")]
        method: String,
        /// A file holding the request body (JSON), for routes that read it.
        #[arg(long, requires = "path")]
        body: Option<PathBuf>,
        /// The request's Content-Type (absent by default, which NoETL reads as JSON).
        #[arg(long, requires = "path")]
        content_type: Option<String>,
        /// The filter configuration whose routes decide the request (or whose providers verify
        /// the token).
        #[arg(long, default_value = "envoy/filter-config.yaml")]
        config: PathBuf,
        /// A JWT: say which provider accepts it and the roles it yields, claim by claim.
        #[arg(long, conflicts_with_all = ["roles", "playbook", "path"])]
        token: Option<String>,
    },
    /// Render Envoy configuration for a filter configuration plus a policy.
    Render(render::RenderArgs),
    /// Print the route profile as a table: route, methods, what it requires, where the
    /// playbook comes from.
    Routes(routes::RoutesArgs),
    /// Render the ECDS file for a policy and replace the file Envoy watches atomically.
    Publish(publish::PublishArgs),
    /// Mint a development JWT.
    Token(token::TokenArgs),
    /// Write a policy from NoETL's permission tables (`auth.roles`, `auth.playbook_permissions`).
    ImportNoetl(noetl::ImportArgs),
    /// Keep Envoy in step with NoETL's permission tables: re-import every `--every` and
    /// publish through the ECDS file when the policy changed.
    SyncNoetl(sync::SyncArgs),
}

/// A failure to report: the message, and the exit code.
#[derive(Debug)]
pub struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => Ok(check::run(&args)),
        Command::Explain { policy, roles, playbook, permission, path, method, body, content_type, config, token } => {
            match (token, playbook, permission, path) {
                (Some(token), ..) => explain_token::run(&config, &token),
                (None, Some(playbook), Some(permission), _) => explain(&policy, &roles, &playbook, &permission),
                (None, _, _, Some(path)) => {
                    let request = explain_request::Request { method, path, body, content_type };
                    explain_request::run(&config, &policy, &roles, &request)
                }
                _ => Err(Failure("give --playbook and --permission, or --path".into())),
            }
        }
        Command::Render(args) => render::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Routes(args) => routes::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Publish(args) => publish::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Token(args) => token::run(&args).map(|()| ExitCode::SUCCESS),
        Command::ImportNoetl(args) => noetl::run(&args).map(|()| ExitCode::SUCCESS),
        Command::SyncNoetl(args) => sync::run(&args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("playbook-guard: {message}");
            ExitCode::from(2)
        }
    }
}

/// Reads and compiles a policy file; errors say `file:line:column: cause`. `check`'s warnings go
/// to standard error: a file published or explained is as worth warning about as one checked.
pub fn load_policy(path: &Path) -> Result<(PolicyDocument, Policy), Failure> {
    let checked = check::check_file(path)?;
    for warning in &checked.warnings {
        eprintln!("{warning}");
    }
    Ok((checked.doc, checked.policy))
}

fn explain(policy: &Path, roles: &[String], playbook: &str, permission: &str) -> Result<ExitCode, Failure> {
    let (_, policy) = load_policy(policy)?;
    let playbook = PlaybookPath::parse(playbook).map_err(|e| Failure(format!("playbook {playbook:?}: {e}")))?;
    let decision = policy.decide(roles, permission, &playbook);
    let verb = if decision.allowed { "allow" } else { "deny" };
    println!("{verb}: {permission} on {playbook} for roles [{}], decided by {}", roles.join(", "), decision.rule);
    Ok(if decision.allowed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

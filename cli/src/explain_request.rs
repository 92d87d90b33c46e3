//! `explain --path`: a request decided through the route profile and the policy, as the filter
//! decides it once the user is known: which route matched, which playbooks, which permission,
//! which rule.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use playbook_guard_core::{Guard, RequestHead, Verdict};

use crate::render::{plugin_config, Build, FilterArgs};
use crate::Failure;

/// The request to explain.
#[derive(Debug)]
pub struct Request {
    /// `:method`.
    pub method: String,
    /// `:path`.
    pub path: String,
    /// A file with the body.
    pub body: Option<PathBuf>,
    /// The `content-type` header, if any.
    pub content_type: Option<String>,
}

/// Prints the decision; exit 0 allow, 1 deny.
pub fn run(config: &Path, policy: &Path, roles: &[String], request: &Request) -> Result<ExitCode, Failure> {
    let args = FilterArgs {
        config: config.to_owned(),
        build: Build::Wasm,
        wasm: String::new(),
        vm_env: Vec::new(),
        name: String::new(),
    };
    let plugin = plugin_config(&args, policy, false)?;
    let env = |_: &str| Some("x".repeat(64));
    let guard = Guard::from_json(plugin.config.to_string().as_bytes(), &env)?;
    let body = match &request.body {
        Some(file) => std::fs::read(file).map_err(|e| Failure(format!("{}: {e}", file.display())))?,
        None => Vec::new(),
    };
    let headers: Vec<(String, String)> =
        request.content_type.iter().map(|ct| ("content-type".to_owned(), ct.clone())).collect();
    let method = request.method.trim().to_ascii_uppercase();
    let head = RequestHead { method: &method, path: &request.path, headers: &headers };
    let (route, verdict) = guard.explain(&head, &body, roles);
    let name = guard.route_name(&route).map(|n| format!(" ({n})")).unwrap_or_default();
    println!("{method} {} for roles [{}]: route {route}{name}", request.path, roles.join(", "));
    Ok(match verdict {
        Verdict::Allow { detail, .. } => {
            println!("allow: {detail}");
            ExitCode::SUCCESS
        }
        Verdict::Deny(denial) => {
            println!("deny {}: {}", denial.status, denial.detail);
            println!("answer: {}", denial.body);
            ExitCode::from(1)
        }
    })
}

//! `explain --token`: which provider accepts a JWT (or why none does), and the roles it yields
//! claim by claim: what each configured claim held and what `role_map` made of each item.

use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use playbook_guard_core::config::ProviderConfig;
use playbook_guard_core::jwt::{RoleFate, Verifier};
use serde::Deserialize;

use crate::render::read_filter_config;
use crate::Failure;

/// The part of a filter configuration that verifies tokens; the rest is not needed here.
#[derive(Deserialize)]
struct Providers {
    #[serde(default)]
    providers: Vec<ProviderConfig>,
    #[serde(default = "default_clock_skew")]
    clock_skew_secs: u64,
}

fn default_clock_skew() -> u64 {
    60
}

/// Prints the explanation; exit 0 when a provider accepts the token, 1 when it is refused.
pub fn run(config: &Path, token: &str) -> Result<ExitCode, Failure> {
    let at = config.display();
    let Providers { providers, clock_skew_secs } =
        serde_json::from_value(read_filter_config(config)?).map_err(|e| Failure(format!("{at}: providers: {e}")))?;
    // The real environment: an HMAC secret must be the filter's to verify its tokens.
    let env = |name: &str| std::env::var(name).ok();
    let verifier = Verifier::compile(&providers, clock_skew_secs, &env)
        .map_err(|e| Failure(format!("{at}: {}", e.within("providers"))))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let explained = verifier.explain(token.trim(), now);
    let verified = match (&explained.provider, explained.outcome) {
        (_, Ok(verified)) => verified,
        (provider, Err(e)) => {
            let by = provider.as_deref().map(|p| format!(" by provider {p}")).unwrap_or_default();
            println!("refused{by}: 401 {}: {e}", e.reason());
            return Ok(ExitCode::from(1));
        }
    };
    println!("accepted by provider {}", verified.provider);
    if explained.claims.is_empty() {
        println!("no roles_claim: the token yields no roles");
    }
    for claim in &explained.claims {
        match &claim.found {
            None => println!("claim {}: absent", claim.claim),
            Some(value) => println!("claim {}: {value}", claim.claim),
        }
        for (item, fate) in &claim.items {
            match fate {
                RoleFate::Kept => println!("  {item}: kept"),
                RoleFate::Mapped(to) => println!("  {item}: mapped to {}", to.join(", ")),
                RoleFate::Unmapped => println!("  {item}: dropped, not in role_map (unmapped_roles: drop)"),
                RoleFate::NotRoleName => println!("  {item}: dropped, not a role name (counted in roles_dropped)"),
                RoleFate::NotString => println!("  {item}: dropped, not a string (counted in roles_dropped)"),
                _ => println!("  {item}: {fate:?}"),
            }
        }
    }
    println!("roles: [{}]", verified.roles.join(", "));
    Ok(ExitCode::SUCCESS)
}

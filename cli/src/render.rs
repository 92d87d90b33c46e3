//! `render`: Envoy configuration for a filter configuration plus a policy.
//!
//! The filter configuration (`envoy/filter-config.yaml`) holds everything but the policy; the
//! policy comes from its own file. Rendering merges them, compiles the result with the filter's
//! own core (so a configuration Envoy would reject is refused here first), and wraps it as
//! Envoy wants it: the HTTP filter entry, an ECDS resource, or a whole local bootstrap.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use playbook_guard_core::Guard;
use serde_json::{json, Value};

use crate::{load_policy, Failure};

/// What to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The plugin configuration JSON the filter receives.
    PluginConfig,
    /// The `http_filters` entry (envoy.filters.http.wasm).
    Filter,
    /// A file of ECDS `resources` (TypedExtensionConfig), for a watched file.
    Ecds,
    /// A whole Envoy bootstrap: the filter in front of one upstream, on loopback.
    Bootstrap,
}

/// Options of `render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The filter configuration (YAML or JSON), without or with a `policy`.
    #[arg(long, default_value = "envoy/filter-config.yaml")]
    config: PathBuf,
    /// The policy file; replaces any `policy` in the filter configuration.
    #[arg(long, default_value = "policies/noetl-default.yaml")]
    policy: PathBuf,
    /// What to render.
    #[arg(long, value_enum, default_value_t = Output::Bootstrap)]
    output: Output,
    /// The filter's .wasm, as Envoy will find it (relative to Envoy's working directory).
    #[arg(long, default_value = "build/playbook_guard.wasm")]
    wasm: String,
    /// Environment variables Envoy passes from its own environment into the VM.
    #[arg(long, value_delimiter = ',', default_value = "PLAYBOOK_GUARD_HS256_SECRET")]
    vm_env: Vec<String>,
    /// The filter (and ECDS resource) name.
    #[arg(long, default_value = "playbook-guard")]
    name: String,
    /// Bootstrap: the listener port.
    #[arg(long, default_value_t = 10000)]
    listen_port: u16,
    /// Bootstrap: the admin port.
    #[arg(long, default_value_t = 9901)]
    admin_port: u16,
    /// Bootstrap: the demo upstream's port.
    #[arg(long, default_value_t = 18080)]
    upstream_port: u16,
}

/// Prints the rendered configuration.
pub fn run(args: &RenderArgs) -> Result<(), Failure> {
    let plugin = plugin_config(args)?;
    let out = match args.output {
        Output::PluginConfig => {
            println!("{}", serde_json::to_string_pretty(&plugin)?);
            return Ok(());
        }
        Output::Filter => http_filter(args, &plugin)?,
        Output::Ecds => json!({"resources": [typed_extension_config(args, &plugin)?]}),
        Output::Bootstrap => bootstrap(args, &plugin)?,
    };
    print!(
        "# Rendered by `playbook-guard render --output {}`; edit the sources, not this file.\n{}",
        output_name(args.output),
        serde_yaml_ng::to_string(&out)?
    );
    Ok(())
}

fn output_name(output: Output) -> &'static str {
    match output {
        Output::PluginConfig => "plugin-config",
        Output::Filter => "filter",
        Output::Ecds => "ecds",
        Output::Bootstrap => "bootstrap",
    }
}

/// The merged plugin configuration, checked by compiling it as the filter would.
fn plugin_config(args: &RenderArgs) -> Result<Value, Failure> {
    let text = std::fs::read_to_string(&args.config).map_err(|e| Failure(format!("{}: {e}", args.config.display())))?;
    let mut config: Value =
        serde_yaml_ng::from_str(&text).map_err(|e| Failure(format!("{}: {e}", args.config.display())))?;
    let (doc, _) = load_policy(&args.policy)?;
    let Value::Object(map) = &mut config else {
        return Err(Failure(format!("{}: the filter configuration is a mapping", args.config.display())));
    };
    map.insert("policy".into(), serde_json::to_value(doc)?);
    // The rendered Envoy configuration sets `allow_on_headers_stop_iteration`, so the filter
    // may hold headers until a body-sourced decision.
    if args.output != Output::PluginConfig {
        map.entry("hold_headers_for_body").or_insert(Value::Bool(true));
    }
    // Secrets are Envoy's to pass in; a stand-in of the right length checks everything else.
    let env = |name: &str| Some(std::env::var(name).unwrap_or_else(|_| "x".repeat(64)));
    Guard::from_json(config.to_string().as_bytes(), &env)
        .map_err(|e| Failure(format!("{} + {}: {e}", args.config.display(), args.policy.display())))?;
    Ok(config)
}

fn wasm_config(args: &RenderArgs, plugin: &Value) -> Result<Value, Failure> {
    Ok(json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": args.name,
            "root_id": args.name,
            "vm_config": {
                "vm_id": args.name,
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": args.wasm}},
                "environment_variables": {"host_env_keys": args.vm_env},
            },
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": serde_json::to_string_pretty(plugin)?,
            },
            // A filter that cannot load must not let requests through unchecked.
            "failure_policy": "FAIL_CLOSED",
            // Lets the filter hold a body-sourced request's headers until it has read the
            // playbook path from the body (the filter's `hold_headers_for_body`).
            "allow_on_headers_stop_iteration": true,
        }
    }))
}

fn http_filter(args: &RenderArgs, plugin: &Value) -> Result<Value, Failure> {
    Ok(json!({"name": args.name, "typed_config": wasm_config(args, plugin)?}))
}

fn typed_extension_config(args: &RenderArgs, plugin: &Value) -> Result<Value, Failure> {
    Ok(json!({
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": args.name,
        "typed_config": wasm_config(args, plugin)?,
    }))
}

fn bootstrap(args: &RenderArgs, plugin: &Value) -> Result<Value, Failure> {
    let loopback = |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    Ok(json!({
        "node": {"id": "playbook-guard-local", "cluster": "playbook-guard"},
        "admin": {"address": loopback(args.admin_port)},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": loopback(args.listen_port),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        // Envoy resolves `..` and `//` before the filter sees the path, and the
                        // filter refuses what is left; both layers agree on one spelling.
                        "normalize_path": true,
                        "merge_slashes": true,
                        "route_config": {"virtual_hosts": [{
                            "name": "demo", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "demo_upstream"}}],
                        }]},
                        "http_filters": [
                            http_filter(args, plugin)?,
                            {"name": "envoy.filters.http.router",
                             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                        ],
                    },
                }]}],
            }],
            "clusters": [{
                "name": "demo_upstream",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "demo_upstream", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": loopback(args.upstream_port)}}
                ]}]},
            }],
        },
    }))
}

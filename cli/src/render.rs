//! `render`: Envoy configuration for a filter configuration plus a policy.
//!
//! The filter configuration (`envoy/filter-config.yaml`) holds everything but the policy; the
//! policy comes from its own file. Rendering merges them, compiles the result with the filter's
//! own core (so a configuration Envoy would reject is refused here first), and wraps it as
//! Envoy wants it: the HTTP filter entry, an ECDS resource, or a whole local bootstrap (with the
//! filter inline, or fetched through ECDS from a watched file).

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use playbook_guard_core::config::EARLY_HEAD_WARNING;
use playbook_guard_core::{Guard, PolicyDocument};
use serde_json::{json, Value};

use crate::{load_policy, Failure};

/// The Wasm filter's type.
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// The native build's type: Envoy's dynamic-module filter.
const NATIVE_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
/// The native module's name: Envoy loads `lib<name>.so` from `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
const NATIVE_MODULE: &str = "playbook_guard_native";

/// Which build of the filter Envoy loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Build {
    /// The `.wasm`, in Envoy's V8 (`--wasm` says where).
    Wasm,
    /// The native build, an Envoy dynamic module (`libplaybook_guard_native.so`), for the pinned
    /// Envoy only.
    Native,
}

impl Build {
    /// The type of the filter's configuration: the one type an ECDS entry accepts.
    fn type_url(self) -> &'static str {
        match self {
            Build::Wasm => WASM_TYPE,
            Build::Native => NATIVE_TYPE,
        }
    }
}

/// What to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The plugin configuration JSON the filter receives.
    PluginConfig,
    /// The `http_filters` entry (the Wasm or the native filter, as `--build` says).
    Filter,
    /// A file of ECDS `resources` (TypedExtensionConfig), for a watched file.
    Ecds,
    /// A whole Envoy bootstrap: the filter in front of one upstream, on loopback.
    Bootstrap,
    /// The same bootstrap, but the filter's configuration comes from ECDS: the watched file
    /// `--ecds-path`, which `publish` replaces atomically.
    BootstrapEcds,
}

/// Where the filter's configuration comes from and how Envoy loads the filter; shared by
/// `render` and `publish`.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// The filter configuration (YAML or JSON), without or with a `policy`.
    #[arg(long, default_value = "envoy/filter-config.yaml")]
    pub config: PathBuf,
    /// Which build Envoy loads: the .wasm or the native module.
    #[arg(long, value_enum, default_value_t = Build::Wasm)]
    pub build: Build,
    /// The filter's .wasm, as Envoy will find it (relative to Envoy's working directory); the
    /// native build ignores it (Envoy finds the module through its search path).
    #[arg(long, default_value = "build/playbook_guard.wasm")]
    pub wasm: String,
    /// Environment variables Envoy passes from its own environment into the VM.
    #[arg(long, value_delimiter = ',', default_value = "PLAYBOOK_GUARD_HS256_SECRET")]
    pub vm_env: Vec<String>,
    /// The filter (and ECDS resource) name.
    #[arg(long, default_value = "playbook-guard")]
    pub name: String,
}

/// The policy file of `render` and `publish`.
#[derive(Debug, Args)]
pub struct PolicyArg {
    /// The policy file; replaces any `policy` in the filter configuration.
    #[arg(long, default_value = "policies/noetl-default.yaml")]
    pub policy: PathBuf,
}

/// Options of `render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    policy: PolicyArg,
    /// What to render.
    #[arg(long, value_enum, default_value_t = Output::Bootstrap)]
    output: Output,
    /// Bootstrap: the listener's address (0.0.0.0 in a Pod, where the Service sends traffic).
    #[arg(long, default_value = "127.0.0.1")]
    listen_address: String,
    /// Bootstrap: the listener port.
    #[arg(long, default_value_t = 10000)]
    listen_port: u16,
    /// Bootstrap: the admin port.
    #[arg(long, default_value_t = 9901)]
    admin_port: u16,
    /// Bootstrap: the demo upstream's port.
    #[arg(long, default_value_t = 18080)]
    upstream_port: u16,
    /// Bootstrap: the port of the validation service behind `validation.cluster`.
    #[arg(long, default_value_t = 18081)]
    validation_port: u16,
    /// ECDS bootstrap: the watched file that holds the filter's configuration (relative to
    /// Envoy's working directory); its directory is the one Envoy watches.
    #[arg(long, default_value = "build/ecds/playbook-guard.yaml")]
    ecds_path: String,
}

/// Prints the rendered configuration.
pub fn run(args: &RenderArgs) -> Result<(), Failure> {
    let out = match args.output {
        Output::PluginConfig => {
            let plugin = plugin_config(&args.filter, &args.policy.policy, false)?;
            println!("{}", serde_json::to_string_pretty(&plugin.config)?);
            return Ok(());
        }
        Output::Filter => http_filter(&args.filter, &plugin_config(&args.filter, &args.policy.policy, true)?.config)?,
        Output::Ecds => ecds_resources(&args.filter, &plugin_config(&args.filter, &args.policy.policy, true)?)?,
        Output::Bootstrap => {
            let plugin = plugin_config(&args.filter, &args.policy.policy, true)?;
            bootstrap(args, http_filter(&args.filter, &plugin.config)?, &plugin.config)
        }
        Output::BootstrapEcds => {
            // The filter's configuration lives in the watched file, but render still checks it
            // so a bootstrap is never rendered next to a configuration Envoy would refuse.
            let plugin = plugin_config(&args.filter, &args.policy.policy, true)?;
            bootstrap(args, ecds_filter(&args.filter.name, args.filter.build, &args.ecds_path), &plugin.config)
        }
    };
    print!("{}{}", header(output_name(args.output)), to_yaml(args.output, &out)?);
    Ok(())
}

/// The text of a rendered file. The ECDS file is JSON (which is YAML too): Envoy reads YAML
/// scalars such as `1.0` or `true` as numbers and booleans, so a policy `version` of "1.0"
/// would not load as the string it is.
pub fn to_yaml(output: Output, value: &Value) -> Result<String, Failure> {
    Ok(match output {
        Output::Ecds => format!("{}\n", serde_json::to_string_pretty(value)?),
        _ => serde_yaml_ng::to_string(value)?,
    })
}

/// The first line of every rendered file: where it came from.
pub fn header(output: &str) -> String {
    format!("# Rendered by `playbook-guard render --output {output}`; edit the sources, not this file.\n")
}

fn output_name(output: Output) -> &'static str {
    match output {
        Output::PluginConfig => "plugin-config",
        Output::Filter => "filter",
        Output::Ecds => "ecds",
        Output::Bootstrap => "bootstrap",
        Output::BootstrapEcds => "bootstrap-ecds",
    }
}

/// A checked plugin configuration and the policy version inside it.
#[derive(Debug)]
pub struct PluginConfig {
    /// The merged configuration, as the filter receives it.
    pub config: Value,
    /// The policy's `version`.
    pub version: String,
}

/// The merged plugin configuration, checked by compiling it as the filter would.
///
/// `for_envoy` writes `hold_headers_for_body: true` out (unless the configuration says
/// otherwise), because every Envoy configuration rendered here sets
/// `allow_on_headers_stop_iteration`. A configuration that opts out gets the filter's own
/// warning on stderr, so whoever renders it learns what the filter will log.
pub fn plugin_config(args: &FilterArgs, policy: &Path, for_envoy: bool) -> Result<PluginConfig, Failure> {
    let (doc, _) = load_policy(policy)?;
    plugin_config_with(args, &doc, &policy.display().to_string(), for_envoy)
}

/// [`plugin_config`] with a policy document already in hand (`sync-noetl` imports it);
/// `policy_name` names it in errors.
pub fn plugin_config_with(
    args: &FilterArgs,
    doc: &PolicyDocument,
    policy_name: &str,
    for_envoy: bool,
) -> Result<PluginConfig, Failure> {
    let mut config = read_filter_config(&args.config)?;
    let Value::Object(map) = &mut config else {
        return Err(Failure(format!(
            "{}: the filter configuration must be a mapping (mode, providers, routes, ...)",
            args.config.display()
        )));
    };
    map.insert("policy".into(), serde_json::to_value(doc)?);
    if for_envoy {
        map.entry("hold_headers_for_body").or_insert(Value::Bool(true));
    }
    // Secrets are Envoy's to pass in; a stand-in of the right length checks everything else.
    let env = |name: &str| Some(std::env::var(name).unwrap_or_else(|_| "x".repeat(64)));
    let guard = Guard::from_json(config.to_string().as_bytes(), &env)
        .map_err(|e| Failure(format!("{} + {policy_name}: {e}", args.config.display())))?;
    if !guard.hold_headers_for_body() {
        eprintln!("{}: warning: {EARLY_HEAD_WARNING}", args.config.display());
    }
    Ok(PluginConfig { config, version: doc.version.clone() })
}

/// A filter configuration file (YAML or JSON) as JSON; errors say `file:line:column: cause`.
pub fn read_filter_config(path: &Path) -> Result<Value, Failure> {
    let text = read(path)?;
    if let Some((at, why)) = crate::locate::Locations::of_yaml(&text).hazard(&text) {
        return Err(Failure(format!("{}:{}:{}: {why}", path.display(), at.line, at.column)));
    }
    serde_yaml_ng::from_str(&text).map_err(|e| match e.location() {
        Some(at) => Failure(format!("{}:{}:{}: {e}", path.display(), at.line(), at.column())),
        None => Failure(format!("{}: {e}", path.display())),
    })
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure(format!("{}: {e}", path.display())))
}

/// The filter's typed configuration for the build `args` names.
fn typed_config(args: &FilterArgs, plugin: &Value) -> Result<Value, Failure> {
    match args.build {
        Build::Wasm => wasm_config(args, plugin),
        Build::Native => native_config(args, plugin),
    }
}

/// The native build's configuration: the same JSON the Wasm filter takes.
fn native_config(args: &FilterArgs, plugin: &Value) -> Result<Value, Failure> {
    Ok(json!({
        "@type": NATIVE_TYPE,
        // Never unloaded: the module runs a thread of its own (its ticker) and keeps
        // process-wide state, which must not outlive its code when an update drops the last
        // configuration that uses it.
        "dynamic_module_config": {"name": NATIVE_MODULE, "do_not_close": true},
        "filter_name": args.name,
        "filter_config": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": serde_json::to_string_pretty(plugin)?,
        },
    }))
}

fn wasm_config(args: &FilterArgs, plugin: &Value) -> Result<Value, Failure> {
    Ok(json!({
        "@type": WASM_TYPE,
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

/// The `http_filters` entry with the configuration inline.
pub fn http_filter(args: &FilterArgs, plugin: &Value) -> Result<Value, Failure> {
    Ok(json!({"name": args.name, "typed_config": typed_config(args, plugin)?}))
}

/// The `http_filters` entry whose configuration Envoy reads from a watched file (ECDS).
pub fn ecds_filter(name: &str, build: Build, ecds_path: &str) -> Value {
    // Envoy reloads the file when a file is renamed into its directory, so a writer that
    // writes a temporary file and renames it (`publish`) is never seen half-written.
    let dir = match Path::new(ecds_path).parent().map(Path::to_string_lossy) {
        Some(dir) if !dir.is_empty() => dir.into_owned(),
        _ => ".".to_owned(),
    };
    json!({
        "name": name,
        "config_discovery": {
            "config_source": {
                "resource_api_version": "V3",
                "path_config_source": {"path": ecds_path, "watched_directory": {"path": dir}},
            },
            // No default: until the first good configuration arrives the listener does not
            // serve, rather than serve unguarded.
            // One build's type only: a file of the other build's is rejected, not loaded.
            "type_urls": [build.type_url()],
        },
    })
}

/// The ECDS file: one `TypedExtensionConfig`, versioned by the policy's version so Envoy's
/// config dump and `version_text` stat show which policy is live.
pub fn ecds_resources(args: &FilterArgs, plugin: &PluginConfig) -> Result<Value, Failure> {
    Ok(json!({
        "version_info": plugin.version,
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": args.name,
            "typed_config": typed_config(args, &plugin.config)?,
        }],
    }))
}

fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        ]}]},
    })
}

fn bootstrap(args: &RenderArgs, filter: Value, plugin: &Value) -> Value {
    let mut clusters = vec![static_cluster("demo_upstream", args.upstream_port)];
    let validation = plugin.pointer("/validation/cluster").and_then(Value::as_str);
    // The cluster the filter calls out to must exist, or every callout fails; on loopback
    // because in a Pod NoETL's server (the app) answers the validation API itself.
    if let Some(name) = validation {
        clusters.push(static_cluster(name, args.validation_port));
    }
    // The admin interface and the upstream stay on loopback: in a Pod the app is a neighbour
    // on localhost, and the admin API must not be reachable from the network.
    let loopback = |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    json!({
        // ECDS needs a node identity; the inline bootstrap carries it too, harmlessly.
        "node": {"id": "playbook-guard-local", "cluster": "playbook-guard"},
        "admin": {"address": loopback(args.admin_port)},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": args.listen_address, "port_value": args.listen_port}},
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
                            filter,
                            {"name": "envoy.filters.http.router",
                             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                        ],
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    })
}

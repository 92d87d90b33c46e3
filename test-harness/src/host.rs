//! The host: what one Envoy process gives its workers' VMs.
//!
//! A [`Host`] owns the options (environment, log level, clusters, properties), the virtual clock,
//! and the state Envoy shares between workers: shared data, shared queues and stats. Each
//! [`Vm`] it starts is one worker's instance of the same compiled module, as with
//! `envoy --concurrency N`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::abi::{LogLevel, Status};
use crate::clock::VirtualClock;
use crate::error::HarnessError;
use crate::filter::Filter;
use crate::metrics::MetricStore;
use crate::shared::{SharedData, SharedQueues};
use crate::vm::Vm;

/// How the host presents itself to the filter.
///
/// # Defaults
/// No environment variables, log level trace (everything is captured), vm id and root id empty,
/// plugin name `playbook-guard`, `allow_on_headers_stop_iteration` off (as in Envoy), every cluster name accepted, 10^10 fuel per call, random seed 1.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The environment the WASI `environ_get` shows (Envoy's `vm_config.environment_variables`).
    pub env: Vec<(String, String)>,
    /// The level `proxy_get_log_level` answers; lines below it are not captured.
    pub log_level: LogLevel,
    /// The VM id (`vm_config.vm_id`): the namespace of shared queues.
    pub vm_id: String,
    /// The plugin's root id (`plugin_root_id` property).
    pub root_id: String,
    /// The plugin's name (`plugin_name` property).
    pub plugin_name: String,
    /// The VM configuration passed to `proxy_on_vm_start`.
    pub vm_configuration: Vec<u8>,
    /// Cluster names `proxy_http_call` accepts; `None` accepts any. An unknown cluster is
    /// `BadArgument`, as in Envoy.
    pub clusters: Option<Vec<String>>,
    /// Properties `proxy_get_property` answers, by path; others are `NotFound`.
    pub properties: HashMap<Vec<String>, Vec<u8>>,
    /// The fuel (≈ wasm instructions) one call into the filter may use before it traps.
    pub fuel_per_call: u64,
    /// Seed of the deterministic WASI `random_get`.
    pub random_seed: u64,
    /// Envoy's plugin option of the same name. Off (Envoy's default): a `Pause` from
    /// `proxy_on_request_headers` becomes StopAllIteration, so the filter sees no body or trailers
    /// until it calls `proxy_continue_stream`. On: a plain StopIteration; body callbacks go on.
    pub allow_on_headers_stop_iteration: bool,
    /// Also print every log line to the test's stderr as it happens (for debugging).
    pub echo_logs: bool,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            env: Vec::new(),
            log_level: LogLevel::Trace,
            vm_id: String::new(),
            root_id: String::new(),
            plugin_name: String::from("playbook-guard"),
            vm_configuration: Vec::new(),
            clusters: None,
            properties: HashMap::new(),
            fuel_per_call: 10_000_000_000,
            random_seed: 1,
            allow_on_headers_stop_iteration: false,
            echo_logs: false,
        }
    }
}

impl HostOptions {
    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the host's log level.
    #[must_use]
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// Restricts `proxy_http_call` to these clusters.
    #[must_use]
    pub fn clusters(mut self, names: &[&str]) -> Self {
        self.clusters = Some(names.iter().map(|n| (*n).to_owned()).collect());
        self
    }

    /// Adds a property.
    #[must_use]
    pub fn property(mut self, path: &[&str], value: &[u8]) -> Self {
        self.properties.insert(path.iter().map(|p| (*p).to_owned()).collect(), value.to_vec());
        self
    }

    /// Sets the VM id.
    #[must_use]
    pub fn vm_id(mut self, vm_id: &str) -> Self {
        self.vm_id = vm_id.to_owned();
        self
    }

    /// Sets Envoy's `allow_on_headers_stop_iteration`.
    #[must_use]
    pub fn allow_on_headers_stop_iteration(mut self, allow: bool) -> Self {
        self.allow_on_headers_stop_iteration = allow;
        self
    }

    /// Echoes log lines to stderr.
    #[must_use]
    pub fn echo_logs(mut self, echo: bool) -> Self {
        self.echo_logs = echo;
        self
    }
}

/// What every VM of one host shares.
#[derive(Debug, Default)]
pub(crate) struct SharedState {
    pub(crate) clock: VirtualClock,
    pub(crate) data: Mutex<SharedData>,
    pub(crate) queues: Mutex<SharedQueues>,
    pub(crate) metrics: Mutex<MetricStore>,
    pub(crate) next_vm: AtomicUsize,
}

/// Locks shared state; a poisoned lock (a test thread panicked) is the host's internal failure.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, Status> {
    mutex.lock().map_err(|_| Status::InternalFailure)
}

fn host_lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, HarnessError> {
    mutex.lock().map_err(|_| HarnessError::Host("shared state lock poisoned".into()))
}

/// One Envoy process hosting a filter: options, clock and cross-worker state.
#[derive(Debug, Clone)]
pub struct Host {
    filter: Filter,
    options: Arc<HostOptions>,
    shared: Arc<SharedState>,
}

impl Host {
    /// A host with default options.
    #[must_use]
    pub fn new(filter: &Filter) -> Self {
        Self::with_options(filter, HostOptions::default())
    }

    /// A host with `options`.
    #[must_use]
    pub fn with_options(filter: &Filter, options: HostOptions) -> Self {
        Host { filter: filter.clone(), options: Arc::new(options), shared: Arc::new(SharedState::default()) }
    }

    /// The options VMs are started with.
    #[must_use]
    pub fn options(&self) -> &HostOptions {
        &self.options
    }

    /// The virtual clock every VM of this host reads.
    #[must_use]
    pub fn clock(&self) -> &VirtualClock {
        &self.shared.clock
    }

    /// Starts one worker VM: instantiates, runs `_initialize`, creates the root context and
    /// calls `proxy_on_vm_start`. The plugin is not configured yet.
    ///
    /// # Errors
    /// Instantiation failures, traps, and [`HarnessError::VmStartRejected`].
    pub fn start_vm(&self) -> Result<Vm, HarnessError> {
        let index = self.shared.next_vm.fetch_add(1, Ordering::SeqCst);
        Vm::start(&self.filter, Arc::clone(&self.options), Arc::clone(&self.shared), index)
    }

    /// Starts a VM and configures it with `configuration` (the plugin configuration JSON).
    ///
    /// # Errors
    /// As [`Host::start_vm`], and [`HarnessError::ConfigurationRejected`].
    pub fn configured_vm(&self, configuration: &[u8]) -> Result<Vm, HarnessError> {
        let mut vm = self.start_vm()?;
        if !vm.configure(configuration)? {
            return Err(HarnessError::ConfigurationRejected { logs: vm.logs().to_vec() });
        }
        Ok(vm)
    }

    /// Starts `n` configured workers sharing this host's data, queues and stats.
    ///
    /// # Errors
    /// As [`Host::configured_vm`].
    pub fn workers(&self, n: usize, configuration: &[u8]) -> Result<Vec<Vm>, HarnessError> {
        (0..n).map(|_| self.configured_vm(configuration)).collect()
    }

    /// A counter's or gauge's value by the name the filter defined it with.
    #[must_use]
    pub fn metric(&self, name: &str) -> Option<u64> {
        lock(&self.shared.metrics).ok()?.value_by_name(name)
    }

    /// The values recorded into a histogram.
    #[must_use]
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        lock(&self.shared.metrics).ok()?.histogram_by_name(name)
    }

    /// Every counter and gauge as `(name, value)`, sorted (Envoy prefixes them `wasmcustom.`).
    #[must_use]
    pub fn metrics(&self) -> Vec<(String, u64)> {
        lock(&self.shared.metrics).map(|m| m.snapshot()).unwrap_or_default()
    }

    /// A shared-data entry and its CAS token.
    #[must_use]
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        lock(&self.shared.data).ok()?.get(key)
    }

    /// Stores a shared-data entry (unconditionally), as another plugin in the process could.
    ///
    /// # Errors
    /// [`HarnessError::Host`] if the store's lock is poisoned.
    pub fn set_shared_data(&self, key: &str, value: &[u8]) -> Result<(), HarnessError> {
        host_lock(&self.shared.data)?
            .set(key, value.to_vec(), 0)
            .map_err(|status| HarnessError::Host(format!("set_shared_data: {status:?}")))
    }

    /// Lands `writes` in shared data just before the next write a filter makes to a key
    /// starting with `prefix`, as if another worker's thread had made them between that filter's
    /// read and its write. Real threads hit such a moment now and then; this pins it down.
    ///
    /// # Errors
    /// [`HarnessError::Host`] if the store's lock is poisoned.
    pub fn interleave_before_write(&self, prefix: &str, writes: Vec<(String, Vec<u8>)>) -> Result<(), HarnessError> {
        host_lock(&self.shared.data)?.interleave(prefix, writes);
        Ok(())
    }

    /// Every shared-data key, sorted.
    #[must_use]
    pub fn shared_data_keys(&self) -> Vec<String> {
        lock(&self.shared.data).map(|d| d.keys()).unwrap_or_default()
    }

    /// How many items wait in a shared queue.
    #[must_use]
    pub fn queue_len(&self, queue_id: u32) -> Option<usize> {
        lock(&self.shared.queues).ok()?.len(queue_id)
    }

    /// Delivers `proxy_on_queue_ready` to the workers in `vms` until no notification is left
    /// (each worker's own "thread" runs its callbacks). Returns how many were delivered.
    ///
    /// # Errors
    /// A trap in a callback, or [`HarnessError::Host`] if deliveries never settle.
    pub fn deliver_queue_ready(&self, vms: &mut [Vm]) -> Result<usize, HarnessError> {
        let mut delivered = 0;
        // Callbacks may enqueue more; a ping-pong that never stops is the filter's bug.
        for _ in 0..1000 {
            let mut round = 0;
            for vm in vms.iter_mut() {
                round += vm.deliver_queue_ready()?;
            }
            delivered += round;
            let pending = host_lock(&self.shared.queues)?.has_ready();
            if !pending || round == 0 {
                return Ok(delivered);
            }
        }
        Err(HarnessError::Host("shared-queue notifications did not settle after 1000 rounds".into()))
    }
}

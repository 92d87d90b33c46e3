//! The filter's stats, under the same names as the Wasm build's (`playbook_guard.<name>`): the
//! core's [`Stat`] counters and the gauge `policy_version_hash`. Envoy gives a dynamic module's
//! stats its own prefix (see the README's "Native build"), where the Wasm build's are under
//! `wasmcustom.`.

use std::sync::atomic::{AtomicBool, Ordering};

use log::warn;

use crate::abi::{self, ConfigEnvoyPtr, FilterEnvoyPtr, ModuleBuffer};
use crate::core::protocol::Stat;

/// The ids Envoy gave one configuration's stats (`None` where it refused one: a stat must never
/// fail a request).
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Vec<Option<usize>>,
    policy_version_hash: Option<usize>,
    /// Whether the gauge holds this configuration's hash: set when it is defined, or else by
    /// the configuration's first request.
    gauge_set: AtomicBool,
    hash: u64,
}

type Define = unsafe extern "C" fn(ConfigEnvoyPtr, ModuleBuffer, *mut ModuleBuffer, usize, *mut usize) -> u32;

fn define(config: ConfigEnvoyPtr, how: Define, name: &str) -> Option<usize> {
    let full = format!("playbook_guard.{name}");
    let mut id = 0usize;
    // SAFETY: `config` is the configuration Envoy is creating (valid during config_new); the
    // name outlives the call; no labels.
    let result = unsafe { how(config, ModuleBuffer::of(full.as_bytes()), std::ptr::null_mut(), 0, &mut id) };
    if result == abi::METRICS_SUCCESS {
        Some(id)
    } else {
        warn!("cannot define metric {name}: {result}");
        None
    }
}

impl Metrics {
    /// Defines every stat of a configuration whose policy version hashes to `hash`.
    pub fn define(config: ConfigEnvoyPtr, hash: u64) -> Self {
        let counters = Stat::ALL
            .iter()
            .map(|stat| {
                define(config, abi::envoy_dynamic_module_callback_http_filter_config_define_counter, stat.name())
            })
            .collect();
        let gauge =
            define(config, abi::envoy_dynamic_module_callback_http_filter_config_define_gauge, "policy_version_hash");
        // Set now, as the Wasm build sets it on configure: a configuration delivered through ECDS
        // reports its policy before any request reaches it. Through a stream only if this fails.
        let set = gauge.is_some_and(|id| {
            // SAFETY: as in `define`; no labels.
            let result = unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(
                    config,
                    id,
                    std::ptr::null_mut(),
                    0,
                    hash,
                )
            };
            result == abi::METRICS_SUCCESS
        });
        Metrics { counters, policy_version_hash: gauge, gauge_set: AtomicBool::new(set), hash }
    }

    /// Adds `n` to `stat`, through stream `filter`.
    pub fn add(&self, filter: FilterEnvoyPtr, stat: Stat, n: u64) {
        if let (Some(Some(id)), 1..) = (self.counters.get(stat.index()), n) {
            // SAFETY: `filter` is live (a stream of this configuration); no labels.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                    filter,
                    *id,
                    std::ptr::null_mut(),
                    0,
                    n,
                );
            }
        }
    }

    /// Sets the policy version gauge through stream `filter`, once per configuration.
    pub fn record_policy_version(&self, filter: FilterEnvoyPtr) {
        if self.gauge_set.load(Ordering::Relaxed) || self.gauge_set.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(id) = self.policy_version_hash {
            // SAFETY: as `add`.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_set_gauge(
                    filter,
                    id,
                    std::ptr::null_mut(),
                    0,
                    self.hash,
                );
            }
        }
    }
}

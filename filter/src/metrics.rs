//! The filter's stats, as Envoy shows them: `wasmcustom.playbook_guard.<name>` at `/stats`
//! and `/stats/prometheus`. The counters are the core's [`Stat`]s; the gauge
//! `policy_version_hash` is the configured policy's version, hashed.

use std::rc::Rc;

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::core::protocol::Stat;

/// Metric ids of one VM (`None` where the host refused to define one: a stat must never fail
/// a request).
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    counters: Rc<Vec<Option<u32>>>,
    policy_version_hash: Option<u32>,
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    match hostcalls::define_metric(kind, &format!("playbook_guard.{name}")) {
        Ok(id) => Some(id),
        Err(status) => {
            warn!("cannot define metric {name}: {status:?}");
            None
        }
    }
}

impl Metrics {
    /// Defines every stat (once per VM).
    pub fn define() -> Self {
        let counters = Stat::ALL.iter().map(|stat| define(MetricType::Counter, stat.name())).collect();
        Metrics { counters: Rc::new(counters), policy_version_hash: define(MetricType::Gauge, "policy_version_hash") }
    }

    /// Adds `n` to `stat`.
    pub fn add(&self, stat: Stat, n: u64) {
        let id = self.counters.get(stat.index()).copied().flatten();
        if let (Some(id), 1..) = (id, n) {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Records the configured policy's version hash (one gauge, whatever the version: a
    /// gauge per version would grow without bound under frequent publishes).
    pub fn set_policy_version(&self, hash: u64) {
        if let Some(id) = self.policy_version_hash {
            let _ = hostcalls::record_metric(id, hash);
        }
    }
}

//! Stats behind `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric` and
//! `proxy_get_metric`.
//!
//! Envoy stats are process-wide: every worker's VM that defines `playbook_guard.allowed` bumps the
//! same counter (Envoy shows it as `wasmcustom.playbook_guard.allowed`), so the store is shared by
//! all VMs of a host. The rules on which call suits which kind follow Envoy's `Context`.

use std::collections::HashMap;

use crate::abi::{MetricType, Status};

/// Envoy keeps the metric type in an id's low two bits.
const TYPE_BITS: u32 = 2;

#[derive(Debug)]
struct Metric {
    name: String,
    kind: MetricType,
    value: u64,
    recorded: Vec<u64>,
}

/// Every metric the VMs of one host defined.
#[derive(Debug, Default)]
pub(crate) struct MetricStore {
    ids: HashMap<(String, u32), u32>,
    metrics: HashMap<u32, Metric>,
    next_index: u32,
}

fn type_code(kind: MetricType) -> u32 {
    match kind {
        MetricType::Counter => 0,
        MetricType::Gauge => 1,
        MetricType::Histogram => 2,
    }
}

impl MetricStore {
    /// Defines a metric, or returns the id of the one already defined under that name and kind.
    pub(crate) fn define(&mut self, kind: MetricType, name: &str) -> u32 {
        let key = (name.to_owned(), type_code(kind));
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        self.next_index = self.next_index.wrapping_add(1);
        let id = (self.next_index << TYPE_BITS) | type_code(kind);
        self.ids.insert(key, id);
        self.metrics.insert(id, Metric { name: name.to_owned(), kind, value: 0, recorded: Vec::new() });
        id
    }

    /// Adds `offset`: counters only go up (0 or less is BadArgument), gauges move either way,
    /// histograms refuse.
    pub(crate) fn increment(&mut self, id: u32, offset: i64) -> Result<(), Status> {
        let metric = self.metrics.get_mut(&id).ok_or(Status::NotFound)?;
        match metric.kind {
            MetricType::Counter if offset > 0 => {
                metric.value = metric.value.saturating_add(offset.unsigned_abs());
                Ok(())
            }
            MetricType::Gauge => {
                metric.value = if offset >= 0 {
                    metric.value.saturating_add(offset.unsigned_abs())
                } else {
                    metric.value.saturating_sub(offset.unsigned_abs())
                };
                Ok(())
            }
            MetricType::Counter | MetricType::Histogram => Err(Status::BadArgument),
        }
    }

    /// Records `value`: adds to a counter, sets a gauge, appends to a histogram.
    pub(crate) fn record(&mut self, id: u32, value: u64) -> Result<(), Status> {
        let metric = self.metrics.get_mut(&id).ok_or(Status::NotFound)?;
        match metric.kind {
            MetricType::Counter => metric.value = metric.value.saturating_add(value),
            MetricType::Gauge => metric.value = value,
            MetricType::Histogram => metric.recorded.push(value),
        }
        Ok(())
    }

    /// A counter's or gauge's value; histograms have none (BadArgument, as in Envoy).
    pub(crate) fn get(&self, id: u32) -> Result<u64, Status> {
        let metric = self.metrics.get(&id).ok_or(Status::NotFound)?;
        match metric.kind {
            MetricType::Histogram => Err(Status::BadArgument),
            MetricType::Counter | MetricType::Gauge => Ok(metric.value),
        }
    }

    /// The value of the counter or gauge named `name` (counters first).
    pub(crate) fn value_by_name(&self, name: &str) -> Option<u64> {
        [MetricType::Counter, MetricType::Gauge]
            .into_iter()
            .find_map(|kind| self.ids.get(&(name.to_owned(), type_code(kind))))
            .and_then(|id| self.metrics.get(id))
            .map(|m| m.value)
    }

    /// The values recorded into the histogram named `name`.
    pub(crate) fn histogram_by_name(&self, name: &str) -> Option<Vec<u64>> {
        self.ids
            .get(&(name.to_owned(), type_code(MetricType::Histogram)))
            .and_then(|id| self.metrics.get(id))
            .map(|m| m.recorded.clone())
    }

    /// `(name, value)` of every counter and gauge, sorted by name.
    pub(crate) fn snapshot(&self) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self
            .metrics
            .values()
            .filter(|m| m.kind != MetricType::Histogram)
            .map(|m| (m.name.clone(), m.value))
            .collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_envoys_rules() {
        let mut store = MetricStore::default();
        let c = store.define(MetricType::Counter, "c");
        assert_eq!(store.define(MetricType::Counter, "c"), c);
        let g = store.define(MetricType::Gauge, "g");
        let h = store.define(MetricType::Histogram, "h");
        assert_ne!(c, g);
        store.increment(c, 2).unwrap();
        assert_eq!(store.increment(c, 0), Err(Status::BadArgument));
        assert_eq!(store.increment(c, -1), Err(Status::BadArgument));
        store.record(c, 3).unwrap();
        assert_eq!(store.get(c), Ok(5));
        store.increment(g, 5).unwrap();
        store.increment(g, -2).unwrap();
        assert_eq!(store.get(g), Ok(3));
        store.record(g, 9).unwrap();
        assert_eq!(store.value_by_name("g"), Some(9));
        assert_eq!(store.increment(h, 1), Err(Status::BadArgument));
        store.record(h, 7).unwrap();
        assert_eq!(store.get(h), Err(Status::BadArgument));
        assert_eq!(store.histogram_by_name("h"), Some(vec![7]));
        assert_eq!(store.get(12345), Err(Status::NotFound));
        assert_eq!(store.snapshot(), vec![("c".to_owned(), 5), ("g".to_owned(), 9)]);
    }
}

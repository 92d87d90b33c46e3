//! The core's `log` lines, into Envoy's log (component `dynamic_modules`).

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::abi::{self, ModuleBuffer};

struct EnvoyLog;

fn envoy_level(level: Level) -> u32 {
    match level {
        Level::Error => abi::LOG_ERROR,
        Level::Warn => abi::LOG_WARN,
        Level::Info => abi::LOG_INFO,
        Level::Debug | Level::Trace => abi::LOG_DEBUG,
    }
}

impl Log for EnvoyLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // SAFETY: a plain query of Envoy's logger.
        unsafe { abi::envoy_dynamic_module_callback_log_enabled(envoy_level(metadata.level())) }
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("playbook-guard: {}", record.args());
            // SAFETY: the buffer outlives the call.
            unsafe {
                abi::envoy_dynamic_module_callback_log(envoy_level(record.level()), ModuleBuffer::of(line.as_bytes()))
            }
        }
    }

    fn flush(&self) {}
}

/// Sends `log` records to Envoy from now on (once per process). Envoy decides per line
/// whether its level is enabled, so the operator's `--component-log-level dynamic_modules:debug`
/// is followed without a restart of the module.
pub fn install() {
    static LOGGER: EnvoyLog = EnvoyLog;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Debug);
    }
}

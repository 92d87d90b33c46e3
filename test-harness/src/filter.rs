//! A compiled filter: one wasmtime `Engine` and `Module`, instantiated as many times as needed.
//!
//! Compiling is the slow part (seconds for a release filter); instantiating is cheap. Tests keep
//! one `Filter` per test binary (a `OnceLock`) and start fresh hosts and VMs from it.

use std::path::Path;

use wasmtime::{Config, Engine, Module};

use crate::error::HarnessError;

/// A filter module compiled for the harness (fuel metering on).
#[derive(Clone)]
pub struct Filter {
    engine: Engine,
    module: Module,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter").field("module", &self.module.name()).finish_non_exhaustive()
    }
}

impl Filter {
    /// Compiles a binary wasm module.
    ///
    /// # Errors
    /// [`HarnessError::Compile`] when wasmtime rejects it, [`HarnessError::Abi`] when it does not
    /// export a proxy-wasm 0.2.x ABI version (Envoy refuses those too).
    pub fn from_bytes(wasm: &[u8]) -> Result<Self, HarnessError> {
        let mut config = Config::new();
        // Fuel counts executed wasm instructions: the harness's "cost of a request".
        config.consume_fuel(true);
        // Tests compile far more often than they run long: skip Cranelift's optimisations
        // (fuel counts wasm instructions, so the cost measure does not change).
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        let engine = Engine::new(&config).map_err(|e| HarnessError::Compile(e.to_string()))?;
        let module = Module::new(&engine, wasm).map_err(|e| HarnessError::Compile(format!("{e:?}")))?;
        let filter = Filter { engine, module };
        if !filter.exports().iter().any(|name| name == "proxy_abi_version_0_2_1" || name == "proxy_abi_version_0_2_0") {
            return Err(HarnessError::Abi(
                "the module exports no proxy_abi_version_0_2_1 (or _0_2_0); is it a proxy-wasm filter?".into(),
            ));
        }
        Ok(filter)
    }

    /// Reads and compiles a .wasm file.
    ///
    /// # Errors
    /// [`HarnessError::Read`] when the file cannot be read; otherwise as [`Filter::from_bytes`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, HarnessError> {
        let path = path.as_ref();
        let wasm =
            std::fs::read(path).map_err(|e| HarnessError::Read { path: path.to_path_buf(), message: e.to_string() })?;
        Self::from_bytes(&wasm)
    }

    /// The module's imports as `module::name`, e.g. `env::proxy_log`.
    #[must_use]
    pub fn imports(&self) -> Vec<String> {
        self.module.imports().map(|i| format!("{}::{}", i.module(), i.name())).collect()
    }

    /// The names the module exports.
    #[must_use]
    pub fn exports(&self) -> Vec<String> {
        self.module.exports().map(|e| e.name().to_owned()).collect()
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn module(&self) -> &Module {
        &self.module
    }
}

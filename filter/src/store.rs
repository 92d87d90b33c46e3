//! Envoy's shared data, as the core's [`SharedStore`].

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use crate::core::shared::{SetError, SharedStore};

/// Envoy's shared data: one store for all workers of a VM id.
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&mut self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), SetError> {
        match hostcalls::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(_) => Err(SetError::Refused),
        }
    }
}

//! The request's headers as the host serialises them: one host call, one buffer, read in place
//! by the core's [`HeaderMap`](crate::core::header_map::HeaderMap). The SDK's `get_map_bytes`
//! copies each name and each value into an allocation of its own; that alone was a large part
//! of the instructions of a request the worker remembers (see the README's "Measuring").

use proxy_wasm::types::MapType;

use crate::core::header_map::HeaderMap;

/// Runs `f` on the current request's headers; `Err` says why they cannot be read.
pub fn with_request_headers<T>(f: impl FnOnce(&HeaderMap<'_>) -> T) -> Result<T, String> {
    let bytes = map_bytes(MapType::HttpRequestHeaders).ok_or("the host gave no request headers")?;
    let map = HeaderMap::parse(&bytes).map_err(|e| e.to_string())?;
    Ok(f(&map))
}

#[cfg(target_arch = "wasm32")]
fn map_bytes(map: MapType) -> Option<Vec<u8>> {
    #[link(wasm_import_module = "env")]
    extern "C" {
        // The import the SDK's `get_map_bytes` calls, which only hands the bytes on decoded.
        fn proxy_get_header_map_pairs(map_type: MapType, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    }
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes the address and size of a buffer it allocated through this
    // module's `proxy_on_memory_allocate` (the SDK's: a `Vec<u8>` of exactly `size` bytes,
    // leaked), or leaves the address null when it has nothing to give.
    let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    if status != 0 {
        return None;
    }
    if data.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: as above; the buffer is taken back exactly as the SDK's `get_map_bytes` does.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Outside wasm (the crate's own tests) the SDK's reading, serialized again.
#[cfg(not(target_arch = "wasm32"))]
fn map_bytes(map: MapType) -> Option<Vec<u8>> {
    proxy_wasm::hostcalls::get_map_bytes(map).ok().map(|pairs| crate::core::header_map::serialize(&pairs))
}

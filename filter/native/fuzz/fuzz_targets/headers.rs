//! A header array as Envoy fills it (`envoy_dynamic_module_type_envoy_http_header`), null
//! buffers included: the module's serialisation is always read back by the core's `HeaderMap`,
//! pair for pair, a null buffer as an empty one.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use playbook_guard_native::abi::EnvoyHeader;
use playbook_guard_native::convert::{array, serialized_headers};
use playbook_guard_native::core::header_map::HeaderMap;

#[derive(Debug, Arbitrary)]
struct Input {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bit 2i: pair i's name comes as a null pointer (with its length); bit 2i+1: its value.
    nulls: u64,
}

fn null(nulls: u64, bit: usize) -> bool {
    bit < 64 && nulls & (1 << bit) != 0
}

fuzz_target!(|input: Input| {
    let mut expected: Vec<(&[u8], &[u8])> = Vec::new();
    let raw: Vec<EnvoyHeader> = input
        .headers
        .iter()
        .enumerate()
        .map(|(i, (name, value))| {
            let (name_null, value_null) = (null(input.nulls, 2 * i), null(input.nulls, 2 * i + 1));
            expected.push((if name_null { &[] } else { name }, if value_null { &[] } else { value }));
            EnvoyHeader {
                key_ptr: if name_null { std::ptr::null() } else { name.as_ptr() },
                key_length: name.len(),
                value_ptr: if value_null { std::ptr::null() } else { value.as_ptr() },
                value_length: value.len(),
            }
        })
        .collect();
    // SAFETY: every pointer is null or into `input`, which outlives the reading.
    let bytes = unsafe { serialized_headers(array(raw.as_ptr(), raw.len())) };
    let map = HeaderMap::parse(&bytes).unwrap_or_else(|e| panic!("the module's own serialisation refused: {e:?}"));
    assert_eq!(map.pairs().collect::<Vec<_>>(), expected);
});

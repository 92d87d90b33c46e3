//! The header-map reader (the buffer a proxy-wasm host hands over): whatever it accepts has one
//! reading, the pairs it returns serialized back to exactly its bytes; and the runs the hit memo
//! keys requests by are exactly the kept pairs, end to end.

#![no_main]

use libfuzzer_sys::fuzz_target;
use playbook_guard_core::header_map::{serialize, HeaderMap};

fuzz_target!(|bytes: &[u8]| {
    let Ok(map) = HeaderMap::parse(bytes) else { return };
    let pairs: Vec<(&[u8], &[u8])> = map.pairs().collect();
    assert_eq!(pairs.len(), map.len());
    if !bytes.is_empty() {
        assert_eq!(serialize(&pairs), bytes, "a second reading of the same bytes");
    }
    let keep = |name: &[u8]| name.first().is_some_and(|b| b % 2 == 0);
    let kept: Vec<(&[u8], &[u8])> = pairs.iter().filter(|(n, _)| keep(n)).copied().collect();
    let whole = serialize(&kept);
    let (mut table, mut data) = (Vec::new(), Vec::new());
    for run in map.runs(keep) {
        table.extend_from_slice(run.table);
        data.extend_from_slice(run.data);
    }
    // The kept pairs serialized, their count aside.
    assert_eq!(whole.get(4..), Some([table, data].concat().as_slice()));
});

//! A lookup's answer (`resolver`): whatever NoETL says, only a 2xx JSON object whose `path` is
//! a valid playbook path, about the id that was asked, names a playbook; nothing panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use playbook_guard_core::config::{LookupKind, ResolverConfig};
use playbook_guard_core::lookup::{LookupKey, Resolver};
use playbook_guard_core::path::PlaybookPath;

fuzz_target!(|body: &[u8]| {
    let cfg: ResolverConfig = serde_json::from_str(r#"{"cluster": "noetl"}"#).expect("a valid resolver");
    let resolver = Resolver::compile(&cfg).expect("a valid resolver");
    for kind in [LookupKind::CatalogId, LookupKind::ExecutionId] {
        let key = LookupKey { kind, id: 7 };
        for status in [Some(200), Some(404), Some(500), None] {
            if let Ok(path) = resolver.read_answer(&key, status, body) {
                assert_eq!(status, Some(200), "only a 2xx answer names a playbook");
                let json: serde_json::Value = serde_json::from_slice(body).expect("an answer is JSON");
                let said = json["path"].as_str().expect("the answer's path is a string");
                assert_eq!(PlaybookPath::parse(said).as_ref(), Ok(&path), "the playbook is the one NoETL named");
            }
        }
    }
});

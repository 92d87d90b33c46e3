//! Looking up the playbook an id names: a `catalog_id` (the catalog entry's path) or an
//! `execution_id` (the path of the playbook the run runs), asked of NoETL itself.
//!
//! NoETL alone maps these ids, and the mapping never changes, so an answer is kept long and
//! shared by every worker (in a [`LookupCache`] beside the sessions). Only an id
//! in one spelling is looked up: a JSON integer, or a string of digits without a sign, spaces,
//! underscores or leading zeros. pydantic, Python's `int()` and PostgreSQL's casts all read
//! such an id the same way; any other spelling could be read as another id by one of them, so
//! it is not looked up and the request needs the permission on every playbook instead.

use std::fmt;

use serde_json::{json, Value};

use crate::config::{LookupKind, ResolverConfig};
use crate::error::ConfigError;
use crate::path::PlaybookPath;
use crate::shared::table::{self, Put, Table};
use crate::shared::{SharedStore, Unwritten};
use crate::validation::{CalloutRequest, TokenBucket};

/// PostgreSQL's `bigint` holds ids up to this; NoETL's ids are `bigint`s.
const MAX_ID: u64 = i64::MAX as u64;

/// One id to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LookupKey {
    /// What kind of id.
    pub kind: LookupKind,
    /// The id, in its one spelling.
    pub id: u64,
}

impl LookupKey {
    /// The key of its answer in the shared cache and of its in-flight mark.
    pub fn cache_key(&self) -> String {
        format!("{}/{}", self.kind.as_str(), self.id)
    }
}

impl fmt::Display for LookupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.id)
    }
}

/// The id a JSON value holds, if it has the one spelling every reader agrees on.
pub fn canonical_id(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().filter(|id| *id <= MAX_ID),
        Value::String(s) => canonical_id_text(s),
        _ => None,
    }
}

/// The id a string (a body field, a URL segment) holds: ASCII digits, no leading zero.
pub fn canonical_id_text(text: &str) -> Option<u64> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse::<u64>().ok().filter(|id| *id <= MAX_ID)
}

/// Why a lookup gave no playbook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupFailure {
    /// NoETL has no such id (404): the request is refused, as NoETL would refuse it.
    #[error("NoETL has no such id")]
    NotFound,
    /// No answer, or not one that can be read: the request is refused with 503.
    #[error("no usable answer: {0}")]
    Unavailable(String),
    /// This worker's lookup allowance (`resolver.max_lookups_per_sec`) is spent.
    #[error("too many lookups this second")]
    Limited,
}

/// The compiled `resolver`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    cluster: String,
    authority: String,
    timeout_ms: u64,
    ttl_ms: u64,
    max_entries: u64,
    max_per_request: usize,
    max_per_sec: u64,
    catalog_path: String,
    /// The run detail path around its `{id}`.
    execution_path: (String, String),
}

impl Resolver {
    /// Compiles the configuration; errors name the field.
    pub fn compile(cfg: &ResolverConfig) -> Result<Self, ConfigError> {
        if cfg.cluster.trim().is_empty() {
            return Err(ConfigError::new("cluster", "name the Envoy cluster of the NoETL server"));
        }
        for (field, value) in [
            ("timeout_ms", cfg.timeout_ms),
            ("ttl_secs", cfg.ttl_secs),
            ("max_entries", cfg.max_entries),
            ("max_lookups_per_request", cfg.max_lookups_per_request),
            ("max_lookups_per_sec", cfg.max_lookups_per_sec),
        ] {
            if value == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        if !cfg.catalog_path.starts_with('/') {
            return Err(ConfigError::new("catalog_path", format!("{:?}: paths start with '/'", cfg.catalog_path)));
        }
        let execution_path = match cfg.execution_path.split_once("{id}") {
            Some((before, after)) if before.starts_with('/') && !after.contains("{id}") => {
                (before.to_owned(), after.to_owned())
            }
            _ => {
                return Err(ConfigError::new(
                    "execution_path",
                    format!("{:?}: a path starting with '/' with one `{{id}}`", cfg.execution_path),
                ))
            }
        };
        Ok(Resolver {
            cluster: cfg.cluster.clone(),
            authority: cfg.authority.clone().unwrap_or_else(|| cfg.cluster.clone()),
            timeout_ms: cfg.timeout_ms,
            ttl_ms: cfg.ttl_secs.saturating_mul(1000),
            max_entries: cfg.max_entries,
            max_per_request: usize::try_from(cfg.max_lookups_per_request).unwrap_or(usize::MAX),
            max_per_sec: cfg.max_lookups_per_sec,
            catalog_path: cfg.catalog_path.clone(),
            execution_path,
        })
    }

    /// The callout timeout, in milliseconds.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// How many answers the shared cache holds.
    pub fn max_entries(&self) -> u64 {
        self.max_entries
    }

    /// The most distinct ids one request may need looked up.
    pub fn max_per_request(&self) -> usize {
        self.max_per_request
    }

    /// A full bucket of this worker's lookup allowance.
    pub fn allowance(&self) -> TokenBucket {
        TokenBucket::new(self.max_per_sec)
    }

    /// The lookup callout for `key`.
    pub fn request(&self, key: &LookupKey) -> CalloutRequest {
        let (method, path, body) = match key.kind {
            // Sent as a string: both NoETL servers take that spelling on this route.
            LookupKind::CatalogId => {
                ("POST", self.catalog_path.clone(), json!({"catalog_id": key.id.to_string()}).to_string())
            }
            LookupKind::ExecutionId => {
                let (before, after) = &self.execution_path;
                ("GET", format!("{before}{}{after}", key.id), String::new())
            }
        };
        let mut headers = vec![
            (":method".to_owned(), method.to_owned()),
            (":path".to_owned(), path),
            (":authority".to_owned(), self.authority.clone()),
            ("accept".to_owned(), "application/json".to_owned()),
        ];
        if !body.is_empty() {
            headers.push(("content-type".into(), "application/json".into()));
        }
        CalloutRequest { cluster: self.cluster.clone(), headers, body: body.into_bytes(), timeout_ms: self.timeout_ms }
    }

    /// Reads a lookup's answer (`status`: `None` when the host got no response): a JSON object
    /// whose `path` is the playbook. Read strictly: a duplicate key, a missing or odd `path`, or
    /// an answer about another id is no answer.
    pub fn read_answer(
        &self,
        key: &LookupKey,
        status: Option<u32>,
        body: &[u8],
    ) -> Result<PlaybookPath, LookupFailure> {
        let status = status.ok_or_else(|| LookupFailure::Unavailable("no response".into()))?;
        if status == 404 {
            return Err(LookupFailure::NotFound);
        }
        if !(200..300).contains(&status) {
            return Err(LookupFailure::Unavailable(format!("status {status}")));
        }
        let malformed = |why: String| LookupFailure::Unavailable(why);
        let json = crate::json::parse_strict(body).map_err(|e| malformed(e.to_string()))?;
        let id_field = key.kind.as_str();
        if let Some(id) = json.get(id_field).filter(|v| !v.is_null()) {
            if canonical_id(id) != Some(key.id) {
                return Err(malformed(format!("the answer is about {id_field} {id}, not {}", key.id)));
            }
        }
        match json.get("path") {
            Some(Value::String(path)) => {
                PlaybookPath::parse(path).map_err(|e| malformed(format!("path {path:?}: {e}")))
            }
            _ => Err(malformed("no string `path` in the answer".into())),
        }
    }
}

/// An answer as kept in shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Looked {
    /// The playbook.
    pub path: String,
    /// When it was fetched (milliseconds since the epoch).
    pub fetched_at_ms: u64,
}

impl Looked {
    /// The stored form: `<fetched_at_ms> <path>` (a path holds no space).
    pub fn encode(&self) -> String {
        format!("{} {}", self.fetched_at_ms, self.path)
    }

    /// Reads a stored answer; `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let (at, path) = text.split_once(' ')?;
        Some(Looked { path: path.to_owned(), fetched_at_ms: at.parse().ok()? })
    }

    /// The playbook, if the answer is fresh at `now_ms` and still names a valid path.
    pub fn fresh_path(&self, resolver: &Resolver, now_ms: u64) -> Option<PlaybookPath> {
        let fresh = now_ms < self.fetched_at_ms.saturating_add(resolver.ttl_ms);
        fresh.then(|| PlaybookPath::parse(&self.path).ok()).flatten()
    }
}

/// The answers in shared data, for every worker: a table with one ring of `max_entries`.
#[derive(Debug, Clone, Copy)]
pub struct LookupCache {
    table: Table,
    ring: table::Ring,
}

impl LookupCache {
    /// The cache of `resolver`'s answers.
    pub fn new(resolver: &Resolver) -> Self {
        let ring = table::Ring { id: 0, prefix: "pg1/lslot", capacity: resolver.max_entries };
        LookupCache { table: Table::new("pg2/l", ring.capacity), ring }
    }

    /// Creates what must exist before any worker writes (see [`Table::prepare`]).
    pub fn prepare<S: SharedStore + ?Sized>(&self, store: &mut S) {
        self.table.prepare(store, &[self.ring]);
    }

    /// The playbook `key` names, if a fresh answer is kept.
    pub fn get<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        resolver: &Resolver,
        key: &LookupKey,
        now_ms: u64,
    ) -> Option<PlaybookPath> {
        let stored = self.table.get(store, &key.cache_key())?;
        Looked::decode(&stored.value)?.fresh_path(resolver, now_ms)
    }

    /// Keeps an answer; returns the id evicted to make room.
    pub fn put<S: SharedStore + ?Sized>(
        &self,
        store: &mut S,
        key: &LookupKey,
        path: &PlaybookPath,
        now_ms: u64,
    ) -> Result<Option<String>, Unwritten> {
        let looked = Looked { path: path.as_str().to_owned(), fetched_at_ms: now_ms }.encode();
        Ok(match self.table.put(store, &key.cache_key(), &looked, self.ring, &|_| false, now_ms)? {
            Put::Stored { evicted } => evicted,
            Put::Kept => None,
        })
    }

    /// How many answers are kept, for the simulation's bound on memory.
    pub fn count(&self, store: &crate::shared::MemoryStore) -> usize {
        self.table.count(store)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn resolver() -> Resolver {
        let cfg: ResolverConfig = serde_json::from_value(json!({"cluster": "noetl"})).unwrap();
        Resolver::compile(&cfg).unwrap()
    }

    const CATALOG: LookupKey = LookupKey { kind: LookupKind::CatalogId, id: 478_775_660_589_088_776 };
    const RUN: LookupKey = LookupKey { kind: LookupKind::ExecutionId, id: 42 };

    #[test]
    fn only_the_one_spelling_of_an_id_is_looked_up() {
        assert_eq!(canonical_id(&json!(123)), Some(123));
        assert_eq!(canonical_id(&json!("123")), Some(123));
        assert_eq!(canonical_id(&json!(0)), Some(0));
        assert_eq!(canonical_id(&json!("478775660589088776")), Some(478_775_660_589_088_776));
        for other in [
            json!(" 12 "),
            json!("1_000"),
            json!("+5"),
            json!("-5"),
            json!(-5),
            json!("007"),
            json!(1.0),
            json!(1e3),
            json!(true),
            json!(""),
            json!("12a"),
            json!("٣"),
            json!(null),
            json!([1]),
            json!(u64::MAX),
            json!("9223372036854775808"),
        ] {
            assert_eq!(canonical_id(&other), None, "{other}");
        }
        assert_eq!(canonical_id(&json!(9_223_372_036_854_775_807_u64)), Some(MAX_ID));
    }

    #[test]
    fn lookups_ask_noetl_on_its_own_routes() {
        let r = resolver();
        let req = r.request(&CATALOG);
        assert_eq!(req.cluster, "noetl");
        let header = |req: &CalloutRequest, name: &str| {
            req.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        assert_eq!((header(&req, ":method"), header(&req, ":path")), ("POST".into(), "/api/catalog/resource".into()));
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body, json!({"catalog_id": "478775660589088776"}));
        let req = r.request(&RUN);
        assert_eq!((header(&req, ":method"), header(&req, ":path")), ("GET".into(), "/api/executions/42".into()));
        assert!(req.body.is_empty());
        assert_eq!(RUN.cache_key(), "execution_id/42");
        assert_eq!(RUN.to_string(), "execution_id 42");
    }

    #[test]
    fn answers_are_read_strictly() {
        let r = resolver();
        let ok = br#"{"catalog_id": "478775660589088776", "path": "data/daily_load", "version": 3}"#;
        assert_eq!(r.read_answer(&CATALOG, Some(200), ok).unwrap().as_str(), "data/daily_load");
        let run = br#"{"execution_id": 42, "path": "system/reset", "status": "COMPLETED"}"#;
        assert_eq!(r.read_answer(&RUN, Some(200), run).unwrap().as_str(), "system/reset");
        assert_eq!(r.read_answer(&RUN, Some(404), b"{}"), Err(LookupFailure::NotFound));
        for (status, body) in [
            (None, &b""[..]),
            (Some(500), br#"{"path": "data/x"}"#),
            (Some(200), b"not json"),
            (Some(200), br#"{"path": "data/x", "path": "system/y"}"#),
            (Some(200), br#"{"path": 3}"#),
            (Some(200), br#"{"path": "a/../system/x"}"#),
            (Some(200), br#"{"execution_id": 43, "path": "data/x"}"#),
            (Some(200), br#"["data/x"]"#),
        ] {
            assert!(
                matches!(r.read_answer(&RUN, status, body), Err(LookupFailure::Unavailable(_))),
                "{status:?} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn answers_keep_for_the_ttl_in_the_shared_cache() {
        let r = resolver();
        let cache = LookupCache::new(&r);
        let mut store = crate::shared::MemoryStore::default();
        cache.prepare(&mut store);
        let path = PlaybookPath::parse("data/x").unwrap();
        assert_eq!(cache.put(&mut store, &RUN, &path, 1_000), Ok(None));
        assert_eq!(cache.get(&store, &r, &RUN, 1_000), Some(path.clone()));
        assert_eq!(cache.get(&store, &r, &RUN, 1_000 + 86_400_000 - 1), Some(path));
        assert_eq!(cache.get(&store, &r, &RUN, 1_000 + 86_400_000), None);
        let other = LookupKey { id: RUN.id + 1, ..RUN };
        assert_eq!(cache.get(&store, &r, &other, 1_000), None);
    }

    #[test]
    fn configuration_errors_name_the_field() {
        let bad = |cfg: Value| Resolver::compile(&serde_json::from_value(cfg).unwrap()).unwrap_err().path;
        assert_eq!(bad(json!({"cluster": " "})), "cluster");
        assert_eq!(bad(json!({"cluster": "n", "ttl_secs": 0})), "ttl_secs");
        assert_eq!(bad(json!({"cluster": "n", "max_lookups_per_request": 0})), "max_lookups_per_request");
        assert_eq!(bad(json!({"cluster": "n", "execution_path": "/api/executions/"})), "execution_path");
        assert_eq!(bad(json!({"cluster": "n", "execution_path": "/a/{id}/{id}"})), "execution_path");
        assert_eq!(bad(json!({"cluster": "n", "catalog_path": "api"})), "catalog_path");
    }
}

//! A deterministic simulation of the protocol: several workers over one [`MemoryStore`],
//! driven by a seeded scheduler that interleaves requests, callout answers, failures,
//! timeouts, ticks, dropped requests and logouts, and runs other workers' events in the middle
//! of a worker's shared-data reads and writes (as real threads do). Invariants are checked at
//! every step; a failure names its seed and step.
//!
//! `PLAYBOOK_GUARD_SIM_SEEDS` sets how many seeds run (`make fuzz` runs many more), and
//! `PLAYBOOK_GUARD_SIM_SEED` runs one.

use std::cell::{RefCell, RefMut};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::{Action, Body, Flow, Grant, Recall, RequestId, Worker, CLAIM_GRACE_MS, FAILURE_BACKOFF_MS, TICK_MS};
use crate::guard::{Guard, RequestHead};
use crate::header_map::{serialize, HeaderMap};
use crate::session::SessionCache;
use crate::shared::{MemoryStore, SetError, SharedStore};
use crate::testing;
use crate::verdict::Verdict;

pub(super) const START_MS: u64 = 1_800_000_000_000;
const TIMEOUT_MS: u64 = 400;
const TTL_SECS: u64 = 2;
const NEGATIVE_TTL_SECS: u64 = 1;
const MAX_ENTRIES: u64 = 3;
const MAX_NEGATIVE: u64 = 2;
const SESSIONS: [&str; 5] = ["s-0", "s-1", "s-2", "s-3", "s-4"];
/// The longest any request may wait: its own callout, or a wait for another's that lapses and a
/// callout of its own after it, or a failure's backoff, each noticed within a tick or two.
const MAX_WAIT_MS: u64 = 3 * (TIMEOUT_MS + CLAIM_GRACE_MS) + FAILURE_BACKOFF_MS + 4 * TICK_MS;

pub(super) fn guard() -> Guard {
    testing::guard_with(json!({
        "routes": [
            {"match": {"methods": ["POST"], "path": "/api/auth/logout"}, "logout": true},
            {"match": {"glob": "/api/me"}, "authenticate": true},
        ],
        "validation": {"cluster": "noetl", "timeout_ms": TIMEOUT_MS, "max_cold_callouts_per_sec": 100_000},
        "session": {"ttl_secs": TTL_SECS, "negative_ttl_secs": NEGATIVE_TTL_SECS, "max_entries": MAX_ENTRIES,
                    "max_negative_entries": MAX_NEGATIVE},
    }))
}

/// The fixture token of session `sid`, valid long past any schedule.
pub(super) fn token(sid: &str) -> String {
    let now = START_MS / 1000;
    testing::token_with(&[], now, json!({"sid": sid, "exp": now + 100_000}))
}

fn mut_of<T>(cell: &RefCell<T>) -> RefMut<'_, T> {
    cell.try_borrow_mut().expect("the simulation never re-enters a part it is using")
}

/// A request as the scheduler sees it.
#[derive(Debug)]
struct Req {
    worker: usize,
    sid: &'static str,
    started_ms: u64,
    logout: bool,
    /// Decided (allowed or denied), and whether allowed.
    decided: Option<bool>,
}

/// A callout on its way to the validation service and back.
#[derive(Debug)]
struct InFlight {
    worker: usize,
    token: u32,
    owner: Option<RequestId>,
    sid: &'static str,
    /// What the service answered, when it was asked.
    answer: (Option<u32>, Vec<u8>),
    deadline_ms: u64,
}

/// Everything but the workers and the store.
struct World {
    rng: StdRng,
    now_ms: u64,
    /// Which sessions the service calls valid.
    valid: HashMap<&'static str, bool>,
    network: Vec<InFlight>,
    requests: BTreeMap<RequestId, Req>,
    /// Logout requests allowed, waiting for their upstream's answer.
    logouts_pending: Vec<RequestId>,
    /// When each session's logout completed.
    logged_out: HashMap<&'static str, u64>,
    next_req: u32,
    next_token: u32,
    depth: u32,
    /// Probability that a write meets another worker's write to the same key first.
    contention: f64,
    violations: Vec<String>,
    callouts: u64,
    /// Requests allowed, and `allowed` counted for them (by the host or by the worker).
    allows: u64,
    allows_counted: u64,
}

struct Sim<'g> {
    guard: &'g Guard,
    tokens: HashMap<&'static str, String>,
    store: RefCell<MemoryStore>,
    world: RefCell<World>,
    workers: Vec<RefCell<Worker>>,
}

/// Worker `worker`'s view of shared data: other workers' events may run between its reads and
/// writes.
struct SimStore<'a> {
    sim: &'a Sim<'a>,
    worker: usize,
}

impl SharedStore for SimStore<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.sim.interleave(self.worker);
        mut_of(&self.sim.store).get(key)
    }

    fn set(&mut self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), SetError> {
        self.sim.interleave(self.worker);
        let contended = {
            let mut world = mut_of(&self.sim.world);
            let p = world.contention;
            world.rng.gen_bool(p)
        };
        let mut store = mut_of(&self.sim.store);
        if contended && cas.is_some() {
            // Another worker rewrote the key (with what it held) since this worker read it.
            if let (Some(current), _) = store.get(key) {
                let _ = store.set(key, Some(&current), None);
            }
        }
        store.set(key, value, cas)
    }
}

impl<'g> Sim<'g> {
    fn new(guard: &'g Guard, seed: u64, workers: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let contention = if rng.gen_bool(0.3) { 0.9 } else { 0.05 };
        let valid = SESSIONS.iter().map(|s| (*s, *s != "s-4")).collect();
        let sim = Sim {
            guard,
            tokens: SESSIONS.iter().map(|s| (*s, token(s))).collect(),
            store: RefCell::new(MemoryStore::default()),
            world: RefCell::new(World {
                rng,
                now_ms: START_MS,
                valid,
                network: Vec::new(),
                requests: BTreeMap::new(),
                logouts_pending: Vec::new(),
                logged_out: HashMap::new(),
                next_req: 1,
                next_token: 1,
                depth: 0,
                contention,
                violations: Vec::new(),
                callouts: 0,
                allows: 0,
                allows_counted: 0,
            }),
            workers: (0..workers).map(|_| RefCell::new(Worker::default())).collect(),
        };
        // Envoy configures the plugin on the main thread first, then on each worker, before any
        // worker serves a request: nothing runs in between.
        mut_of(&sim.world).depth += 1;
        for w in 0..workers {
            // Half the workers count remembered allows a window at a time, as the Wasm host does
            // with `stats_window_ms`.
            mut_of(&sim.workers[w]).count_in_windows(if w % 2 == 0 { 2 } else { 0 });
            sim.with_worker(w, |worker, store, now| worker.configure(sim.guard, store, now));
        }
        mut_of(&sim.world).depth -= 1;
        sim
    }

    fn now(&self) -> u64 {
        mut_of(&self.world).now_ms
    }

    fn below(&self, n: usize) -> usize {
        mut_of(&self.world).rng.gen_range(0..n.max(1))
    }

    fn violation(&self, what: String) {
        mut_of(&self.world).violations.push(what);
    }

    /// Runs `f` on worker `w`, then carries out its actions.
    fn with_worker(&self, w: usize, f: impl FnOnce(&mut Worker, &mut SimStore<'_>, u64)) {
        let now = self.now();
        f(&mut mut_of(&self.workers[w]), &mut SimStore { sim: self, worker: w }, now);
        self.drain(w);
    }

    /// Runs another worker's event in the middle of worker `busy`'s read or write, now and then.
    fn interleave(&self, busy: usize) {
        {
            let mut world = mut_of(&self.world);
            if world.depth > 0 || !world.rng.gen_bool(0.15) {
                return;
            }
            world.depth += 1;
        }
        let others: Vec<usize> = (0..self.workers.len()).filter(|w| *w != busy).collect();
        let w = others[self.below(others.len())];
        if self.workers[w].try_borrow_mut().is_ok() {
            self.event_on(w);
        }
        mut_of(&self.world).depth -= 1;
    }

    /// One event on worker `w`: a request, an answer, a tick, a drop or a logout's completion.
    fn event_on(&self, w: usize) {
        match self.below(10) {
            0..=3 => self.request(w),
            4..=6 => self.deliver(Some(w), false),
            7 => self.tick(w),
            8 => self.drop_one(Some(w)),
            _ => self.complete_logout(),
        }
    }

    fn request(&self, w: usize) {
        let (id, sid, logout) = {
            let mut world = mut_of(&self.world);
            let id = world.next_req;
            world.next_req += 1;
            let sid = SESSIONS[world.rng.gen_range(0..SESSIONS.len())];
            let logout = world.rng.gen_bool(0.05);
            let now = world.now_ms;
            world.requests.insert(id, Req { worker: w, sid, started_ms: now, logout, decided: None });
            (id, sid, logout)
        };
        let headers = vec![("authorization".to_owned(), format!("Bearer {}", self.tokens[sid]))];
        let (method, path) = if logout { ("POST", "/api/auth/logout") } else { ("GET", "/api/me") };
        let now = self.now();
        let outer = mut_of(&self.workers[w]).begin(id);
        let recalled = head_alone(
            &mut mut_of(&self.workers[w]),
            self.guard,
            &mut SimStore { sim: self, worker: w },
            now,
            id,
            method,
            path,
            &headers,
        );
        if let Some((_, count_now)) = recalled {
            mut_of(&self.world).allows_counted += u64::from(count_now);
            self.decided(id, true);
        }
        self.drain(w);
        let flow = mut_of(&self.workers[w]).end(outer);
        let flow = if recalled.is_some() { Flow::Continue } else { flow };
        if flow == Flow::Continue && mut_of(&self.world).requests.get(&id).is_some_and(|r| r.decided != Some(true)) {
            self.violation(format!("request {id} went on without an allow"));
        }
        self.finish_decided(w);
    }

    /// Requests that are decided end (a logout once its upstream has answered).
    fn finish_decided(&self, w: usize) {
        let done: Vec<RequestId> = mut_of(&self.world)
            .requests
            .iter()
            .filter(|(_, r)| r.worker == w && r.decided.is_some() && !(r.logout && r.decided == Some(true)))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.drop_request(w, id);
        }
    }

    fn drop_request(&self, w: usize, id: RequestId) {
        mut_of(&self.world).requests.remove(&id);
        mut_of(&self.world).network.retain(|c| !(c.worker == w && c.owner == Some(id)));
        self.with_worker(w, |worker, store, now| worker.dropped(store, || now, id));
    }

    /// A client goes away: a waiting request on worker `w` (any worker with `None`).
    fn drop_one(&self, w: Option<usize>) {
        let waiting: Vec<(RequestId, usize)> = mut_of(&self.world)
            .requests
            .iter()
            .filter(|(_, r)| r.decided.is_none() && w.is_none_or(|w| r.worker == w))
            .map(|(id, r)| (*id, r.worker))
            .collect();
        if !waiting.is_empty() {
            let (id, w) = waiting[self.below(waiting.len())];
            if self.workers[w].try_borrow_mut().is_ok() {
                self.drop_request(w, id);
            }
        }
    }

    /// The upstream answers a logout: the service forgets the session, then the filter hears.
    fn complete_logout(&self) {
        let pending = {
            let mut world = mut_of(&self.world);
            if world.logouts_pending.is_empty() {
                return;
            }
            let n = world.logouts_pending.len();
            let i = world.rng.gen_range(0..n);
            world.logouts_pending.remove(i)
        };
        let Some((w, sid)) = mut_of(&self.world).requests.get(&pending).map(|r| (r.worker, r.sid)) else { return };
        if self.workers[w].try_borrow_mut().is_err() {
            mut_of(&self.world).logouts_pending.push(pending);
            return;
        }
        mut_of(&self.world).valid.insert(sid, false);
        self.with_worker(w, |worker, store, now| worker.response(self.guard, store, now, pending, Some(200)));
        let now = self.now();
        mut_of(&self.world).logged_out.entry(sid).or_insert(now);
        self.drop_request(w, pending);
    }

    /// Delivers one answer (of worker `w`'s callouts, or anyone's), or with `due`, one whose
    /// deadline has come (as a timeout).
    fn deliver(&self, w: Option<usize>, due: bool) {
        let call = {
            let mut world = mut_of(&self.world);
            let now = world.now_ms;
            let candidates: Vec<usize> = (0..world.network.len())
                .filter(|i| {
                    let c = &world.network[*i];
                    w.is_none_or(|w| c.worker == w) && (!due || c.deadline_ms <= now)
                })
                .collect();
            if candidates.is_empty() {
                return;
            }
            let i = candidates[world.rng.gen_range(0..candidates.len())];
            if self.workers[world.network[i].worker].try_borrow_mut().is_err() {
                return;
            }
            let mut call = world.network.remove(i);
            if due || world.rng.gen_bool(0.1) {
                call.answer = (None, Vec::new());
            }
            call
        };
        let (status, body) = call.answer;
        self.with_worker(call.worker, |worker, store, now| {
            worker.answer(self.guard, store, now, call.token, status, &body);
        });
        self.finish_decided(call.worker);
    }

    fn tick(&self, w: usize) {
        self.with_worker(w, |worker, store, now| worker.tick(self.guard, store, now));
        self.finish_decided(w);
    }

    /// Carries out worker `w`'s actions, checking what they may not do.
    /// Request `req` is allowed or denied.
    fn decided(&self, req: RequestId, allowed: bool) {
        let mut world = mut_of(&self.world);
        let Some(r) = world.requests.get_mut(&req) else { return };
        r.decided = Some(allowed);
        let (sid, started, logout) = (r.sid, r.started_ms, r.logout);
        world.allows += u64::from(allowed);
        if allowed && logout {
            world.logouts_pending.push(req);
        }
        if let (true, Some(at)) = (allowed, world.logged_out.get(sid)) {
            if started > *at {
                let what = format!("request {req} for {sid}, begun after its logout, was allowed");
                world.violations.push(what);
            }
        }
    }

    fn drain(&self, w: usize) {
        loop {
            let Some(action) = mut_of(&self.workers[w]).poll_action() else { return };
            match action {
                Action::Send { call, from, request } => {
                    let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
                    let token = body["session_token"].as_str().unwrap_or_default();
                    let sid =
                        self.tokens.iter().find(|(_, t)| *t == token).map(|(s, _)| *s).expect("a session callout");
                    self.check_callout(sid);
                    let mut world = mut_of(&self.world);
                    let answer = if world.valid[sid] {
                        json!({"valid": true, "user": {"user_id": 1, "roles": ["analyst"]}})
                    } else if world.rng.gen_bool(0.5) {
                        json!({"valid": false, "expires_at": "2020-01-01T00:00:00Z"})
                    } else {
                        json!({"valid": false})
                    };
                    let token = world.next_token;
                    world.next_token += 1;
                    world.callouts += 1;
                    let deadline_ms = world.now_ms + TIMEOUT_MS;
                    world.network.push(InFlight {
                        worker: w,
                        token,
                        owner: from,
                        sid,
                        answer: (Some(200), answer.to_string().into_bytes()),
                        deadline_ms,
                    });
                    drop(world);
                    mut_of(&self.workers[w]).sent(call, token);
                }
                Action::Decide { req, verdict } => self.decided(req, matches!(verdict, Verdict::Allow { .. })),
                Action::Resume { req } => {
                    if mut_of(&self.world).requests.get(&req).is_some_and(|r| r.decided != Some(true)) {
                        self.violation(format!("request {req} resumed without an allow"));
                    }
                }
                Action::Count(super::Stat::Allowed, n) => mut_of(&self.world).allows_counted += n,
                Action::Count(..) => {}
                other => self.violation(format!("unexpected action {other:?}")),
            }
        }
    }

    /// At most one callout per session in flight, and none while a fresh answer is cached.
    fn check_callout(&self, sid: &str) {
        let world = mut_of(&self.world);
        if world.network.iter().any(|c| c.sid == sid) {
            let what = format!("a second callout for {sid} while one is in flight");
            drop(world);
            return self.violation(what);
        }
        let now = world.now_ms;
        drop(world);
        let cache = SessionCache::new(&self.guard.validator().expect("validation").cache);
        if let Some(entry) = cache.get(&*mut_of(&self.store), &format!("noetl/{sid}")) {
            // Freshness as the contract says, worked out here rather than by the code under test.
            let ttl = if entry.valid { TTL_SECS } else { NEGATIVE_TTL_SECS } * 1000;
            let expiry = entry.expires_at.filter(|_| entry.valid).map_or(u64::MAX, |at| at * 1000);
            // Even one stored at this very moment: the worker reads the cache again once it holds
            // the claim, after which nobody else stores an answer for the session.
            if now < (entry.fetched_at_ms + ttl).min(expiry) {
                let age = now - entry.fetched_at_ms;
                self.violation(format!("a callout for {sid} while its answer of {age} ms ago is fresh"));
            }
        }
    }

    /// Moves time on by `ms`, delivering timeouts and ticking workers as they come due.
    fn advance(&self, ms: u64) {
        let target = self.now() + ms;
        loop {
            let now = self.now();
            let next_deadline = mut_of(&self.world).network.iter().map(|c| c.deadline_ms).min();
            if next_deadline.is_some_and(|d| d <= now) {
                self.deliver(None, true);
                continue;
            }
            let next_tick =
                (0..self.workers.len()).filter_map(|w| Some((mut_of(&self.workers[w]).poll_timeout()?, w))).min();
            if let Some((_, w)) = next_tick.filter(|(t, _)| *t <= now) {
                self.tick(w);
                continue;
            }
            let next =
                [next_deadline, next_tick.map(|(t, _)| t), Some(target)].into_iter().flatten().min().unwrap_or(target);
            if now >= target {
                return;
            }
            mut_of(&self.world).now_ms = next.min(target);
        }
    }

    /// Checks what must hold between events; the bounds on memory (which read the whole
    /// store) with `memory`.
    fn check(&self, memory: bool) {
        let now = self.now();
        let world = mut_of(&self.world);
        let mut found: Vec<String> = world
            .requests
            .iter()
            .filter(|(_, r)| r.decided.is_none() && now - r.started_ms > MAX_WAIT_MS)
            .map(|(id, r)| format!("request {id} for {} has waited {} ms", r.sid, now - r.started_ms))
            .collect();
        let live = world.requests.len();
        drop(world);
        if !memory {
            for what in found {
                self.violation(what);
            }
            return;
        }
        let store = mut_of(&self.store);
        let cache = SessionCache::new(&self.guard.validator().expect("validation").cache);
        let records = cache.count(&store);
        let bound = (MAX_ENTRIES + MAX_NEGATIVE) as usize + self.workers.len();
        if records > bound {
            found.push(format!("{records} session records cached, more than {bound}"));
        }
        let key_bound = 64 + 3 + 2 * 2 + (MAX_ENTRIES + MAX_NEGATIVE) as usize;
        if store.keys() > key_bound {
            found.push(format!("{} keys in shared data, more than {key_bound}", store.keys()));
        }
        drop(store);
        let held: usize = self.workers.iter().map(|w| mut_of(w).held()).sum();
        if held > 5 * live + 4 * self.workers.len() {
            found.push(format!("the workers hold {held} things for {live} requests"));
        }
        for what in found {
            self.violation(what);
        }
    }

    /// Runs `steps` scheduler steps; the first violation, with the step it was seen at.
    fn run(&self, steps: usize) -> Result<u64, String> {
        for step in 0..steps {
            match self.below(20) {
                0..=8 => self.request(self.below(self.workers.len())),
                9..=12 => self.deliver(None, false),
                13 => self.drop_one(None),
                14 => self.complete_logout(),
                15 => self.tick(self.below(self.workers.len())),
                _ => {
                    let ms = self.below(300) as u64;
                    self.advance(ms);
                }
            }
            self.check(step % 16 == 0);
            if let Some(first) = mut_of(&self.world).violations.first() {
                return Err(format!("step {step}: {first}"));
            }
        }
        // Let everything settle: every request is then decided.
        self.advance(MAX_WAIT_MS + 1);
        self.check(true);
        let world = mut_of(&self.world);
        if world.allows != world.allows_counted {
            return Err(format!("{} allows, {} counted", world.allows, world.allows_counted));
        }
        world.violations.first().map_or(Ok(world.callouts), |v| Err(format!("at the end: {v}")))
    }
}

// The test, not the core, reads how many seeds to run from the environment.
#[allow(clippy::disallowed_methods)]
fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("PLAYBOOK_GUARD_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    // Fewer where the tests run as wasm (wasmtime, V8): the schedules are the same code there.
    let default = if cfg!(target_arch = "wasm32") { 30 } else { 1000 };
    let n = std::env::var("PLAYBOOK_GUARD_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    (0..n).collect()
}

#[test]
fn the_protocol_keeps_its_invariants_across_workers_under_any_schedule() {
    let mut callouts = 0;
    let guard = guard();
    for seed in seeds() {
        let workers = 2 + (seed % 3) as usize;
        match Sim::new(&guard, seed, workers).run(300) {
            Ok(n) => callouts += n,
            Err(e) => panic!("seed {seed} ({workers} workers): {e} (rerun with PLAYBOOK_GUARD_SIM_SEED={seed})"),
        }
    }
    assert!(callouts > 0, "the simulation made callouts");
}

/// A request with no body, handed to `worker` as the host does: recalled if the worker can
/// ([`Worker::recall`]), else decided ([`Worker::head`]). The grant when it was recalled, and
/// whether the host counts its stats now.
#[allow(clippy::too_many_arguments)]
pub(super) fn head_alone<S: SharedStore + ?Sized>(
    worker: &mut Worker,
    guard: &Guard,
    store: &mut S,
    now_ms: u64,
    req: RequestId,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Option<(Rc<Grant>, bool)> {
    let pseudo = [(":method".to_owned(), method.to_owned()), (":path".to_owned(), path.to_owned())];
    let bytes = serialize(&[&pseudo[..], headers].concat());
    let map = HeaderMap::parse(&bytes).expect("serialized just now");
    let key = match worker.recall(&*store, now_ms, &map) {
        Recall::Allow { grant, count_now } => return Some((grant, count_now)),
        Recall::Decide(key) => key,
    };
    worker.head(guard, store, now_ms, req, &RequestHead { method, path, headers }, Body::Absent(key));
    None
}

//! The protocol on one worker, step by step (the simulation covers many workers at random).

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::simulation::{guard, head_alone, token, START_MS};
use super::*;
use crate::shared::MemoryStore;
use serde_json::{json, Value};

struct One {
    guard: Guard,
    store: MemoryStore,
    worker: Worker,
}

impl One {
    fn new() -> Self {
        let mut one = One { guard: guard(), store: MemoryStore::default(), worker: Worker::default() };
        one.worker.configure(&one.guard, &mut one.store, START_MS);
        assert_eq!(one.actions(), [], "no remote JWK Sets to fetch");
        one
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.worker.poll_action()).filter(|a| !matches!(a, Action::Count(..))).collect()
    }

    /// Request `req` for session `sid`, in its own callback: the actions, and what it returns.
    fn request(&mut self, req: RequestId, sid: &str, path: &str) -> (Vec<Action>, Flow) {
        let headers = vec![("authorization".to_owned(), format!("Bearer {}", token(sid)))];
        let method = if path.ends_with("logout") { "POST" } else { "GET" };
        let outer = self.worker.begin(req);
        let recalled =
            head_alone(&mut self.worker, &self.guard, &mut self.store, START_MS, req, method, path, &headers);
        let mut actions = self.actions();
        let mut flow = self.worker.end(outer);
        if let Some((grant, _)) = recalled {
            // What the host does with it, as the worker would have asked.
            let verdict =
                Verdict::Allow { headers: grant.headers.clone(), detail: String::new(), audited: None, logout: None };
            actions.push(Action::Decide { req, verdict });
            flow = Flow::Continue;
        }
        (actions, flow)
    }

    /// Sends every callout asked for, numbering them from `first`.
    fn send(&mut self, actions: &[Action], first: CallToken) -> usize {
        let mut n = 0;
        for action in actions {
            if let Action::Send { call, .. } = action {
                self.worker.sent(*call, first + n as CallToken);
                n += 1;
            }
        }
        n
    }

    fn answer(&mut self, token: CallToken, status: Option<u32>, body: &str) -> Vec<Action> {
        self.worker.answer(&self.guard, &mut self.store, START_MS + 10, token, status, body.as_bytes());
        self.actions()
    }
}

const VALID: &str = r#"{"valid": true, "user": {"user_id": 1, "roles": ["analyst"]}}"#;

fn decided(actions: &[Action], req: RequestId) -> Option<u32> {
    actions.iter().find_map(|a| match a {
        Action::Decide { req: r, verdict: Verdict::Allow { .. } } if *r == req => Some(200),
        Action::Decide { req: r, verdict: Verdict::Deny(d) } if *r == req => Some(d.status),
        _ => None,
    })
}

#[test]
fn one_callout_answers_every_request_of_the_session_and_only_others_are_resumed() {
    let mut one = One::new();
    let (actions, flow) = one.request(1, "s-0", "/api/me");
    assert_eq!((one.send(&actions, 100), flow), (1, Flow::Pause));
    let (actions, flow) = one.request(2, "s-0", "/api/me");
    assert_eq!((actions, flow), (vec![], Flow::Pause), "it waits for request 1's callout");
    let actions = one.answer(100, Some(200), VALID);
    assert_eq!((decided(&actions, 1), decided(&actions, 2)), (Some(200), Some(200)));
    assert!(actions.contains(&Action::Resume { req: 1 }) && actions.contains(&Action::Resume { req: 2 }));
    // Now cached: decided in its own callback, so let go by its return value.
    let (actions, flow) = one.request(3, "s-0", "/api/me");
    assert_eq!((decided(&actions, 3), flow), (Some(200), Flow::Continue));
    assert!(!actions.contains(&Action::Resume { req: 3 }));
}

#[test]
fn a_callout_the_host_cannot_send_fails_for_its_waiters_too() {
    let mut one = One::new();
    let (actions, _) = one.request(1, "s-0", "/api/me");
    let Some(Action::Send { call, .. }) = actions.first().cloned() else { panic!("{actions:?}") };
    let _ = one.request(2, "s-0", "/api/me");
    one.worker.not_sent(&one.guard, &mut one.store, START_MS, call, "no such cluster".into());
    let actions = one.actions();
    assert_eq!((decided(&actions, 1), decided(&actions, 2)), (Some(503), Some(503)));
    // The failure is remembered for a moment: no callout per request during an outage.
    let (actions, flow) = one.request(3, "s-0", "/api/me");
    assert_eq!((decided(&actions, 3), flow), (Some(503), Flow::Pause));
}

#[test]
fn an_answer_asked_before_a_logout_is_not_cached_and_later_waiters_ask_again() {
    let mut one = One::new();
    let (actions, _) = one.request(1, "s-0", "/api/me");
    one.send(&actions, 100);
    // Another worker logs the session out while the callout is on its way.
    let cache = SessionCache::new(&one.guard.validator().unwrap().cache);
    cache.log_out(&mut one.store, "noetl/s-0", START_MS + 5, 60_000).unwrap();
    let _ = one.request(2, "s-0", "/api/me");
    let actions = one.answer(100, Some(200), VALID);
    assert_eq!(decided(&actions, 1), Some(200), "request 1 came before the logout");
    assert_eq!(decided(&actions, 2), None, "request 2 may have come after it: it asks again");
    assert_eq!(actions.iter().filter(|a| matches!(a, Action::Send { from: Some(2), .. })).count(), 1);
    assert_eq!(cache.get(&one.store, "noetl/s-0"), None, "the answer was not cached");
}

#[test]
fn a_dropped_owner_lets_its_claim_go_and_nothing_resumes_it() {
    let mut one = One::new();
    let (actions, _) = one.request(1, "s-0", "/api/me");
    one.send(&actions, 100);
    one.worker.dropped(&mut one.store, || START_MS + 1, 1);
    assert_eq!(inflight::mark(&one.store, "noetl/s-0", START_MS + 1), None);
    assert_eq!(one.answer(100, Some(200), VALID), [], "its answer is no longer awaited");
    assert_eq!(one.worker.held(), 0);
}

#[test]
fn a_key_fetch_sent_under_an_old_configuration_is_not_awaited_under_the_new_one() {
    let remote = |name: &str| {
        json!({"name": name, "issuer": format!("https://{name}.example/"), "algorithms": ["RS256"],
               "remote_jwks": {"cluster": name, "uri": format!("https://{name}.example/keys.json"), "timeout_ms": 1000}})
    };
    let guard = |providers: Value| crate::testing::guard_with(json!({"providers": providers}));
    let (old, new) = (guard(json!([remote("a"), remote("b")])), guard(json!([remote("b"), remote("a")])));
    let mut store = MemoryStore::default();
    let mut worker = Worker::default();
    worker.configure(&old, &mut store, START_MS);
    let fetches: Vec<CallId> = std::iter::from_fn(|| worker.poll_action())
        .filter_map(|a| match a {
            Action::Send { call, from: None, .. } => Some(call),
            _ => None,
        })
        .collect();
    assert_eq!(fetches.len(), 2, "both sets are fetched from the root");
    for (token, call) in fetches.iter().enumerate() {
        worker.sent(*call, token as CallToken);
    }
    // The providers swap places: an answer matched by index would give one issuer's keys to
    // the other.
    worker.configure(&new, &mut store, START_MS + 1);
    assert!(!worker.awaits(0) && !worker.awaits(1), "the old fetches are forgotten");
}

#[test]
fn a_discovery_document_is_fetched_from_the_root_then_the_set_it_names_and_each_end_is_counted() {
    let guard = crate::testing::guard_with(json!({"providers": [{
        "name": "sso", "issuer": "https://sso.example/realms/noetl", "algorithms": ["RS256"],
        "discovery": {"cluster": "sso", "jwks_cluster": "sso-keys", "timeout_ms": 1000}}]}));
    let mut store = MemoryStore::default();
    let all = |worker: &mut Worker| std::iter::from_fn(|| worker.poll_action()).collect::<Vec<_>>();
    let sent = |actions: &[Action]| -> Vec<(CallId, String, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { call, from: None, request } => {
                    let path = request.headers.iter().find(|(n, _)| n == ":path").map(|(_, v)| v.clone());
                    Some((*call, request.cluster.clone(), path.unwrap_or_default()))
                }
                _ => None,
            })
            .collect()
    };
    let counts = |actions: &[Action]| -> Vec<Stat> {
        actions.iter().filter_map(|a| if let Action::Count(s, _) = a { Some(*s) } else { None }).collect()
    };
    let configured = |worker: &mut Worker, store: &mut MemoryStore| {
        *worker = Worker::default();
        worker.configure(&guard, store, START_MS);
        let actions = all(worker);
        let fetches = sent(&actions);
        assert_eq!(fetches.len(), 1, "{actions:?}");
        let (call, cluster, path) = fetches.into_iter().next().unwrap();
        assert_eq!((cluster.as_str(), path.as_str()), ("sso", "/realms/noetl/.well-known/openid-configuration"));
        worker.sent(call, 7);
    };
    let document = |issuer: &str| {
        json!({"issuer": issuer, "jwks_uri": "https://sso.example/realms/noetl/certs"}).to_string().into_bytes()
    };
    let mut worker = Worker::default();

    configured(&mut worker, &mut store);
    worker.answer(&guard, &mut store, START_MS + 10, 7, Some(200), &document("https://sso.example/realms/noetl"));
    let actions = all(&mut worker);
    assert_eq!(counts(&actions), [Stat::DiscoveryFetchSuccess]);
    let fetches = sent(&actions);
    assert_eq!(
        fetches.iter().map(|(_, c, p)| (c.as_str(), p.as_str())).collect::<Vec<_>>(),
        [("sso-keys", "/realms/noetl/certs")]
    );
    worker.sent(fetches[0].0, 8);
    worker.answer(&guard, &mut store, START_MS + 20, 8, Some(200), br#"{"keys": []}"#);
    assert_eq!(counts(&all(&mut worker)), [Stat::JwksFetchSuccess]);

    // Another issuer's document: refused, and no set is fetched.
    configured(&mut worker, &mut store);
    worker.answer(&guard, &mut store, START_MS + 10, 7, Some(200), &document("https://evil.example/realms/noetl"));
    let actions = all(&mut worker);
    assert_eq!(counts(&actions), [Stat::DiscoveryFetchRefused, Stat::JwksFetchFailed]);
    assert_eq!(sent(&actions), []);

    // No usable answer, or none sent: failed.
    configured(&mut worker, &mut store);
    worker.answer(&guard, &mut store, START_MS + 10, 7, Some(503), b"busy");
    assert_eq!(counts(&all(&mut worker)), [Stat::DiscoveryFetchFailed, Stat::JwksFetchFailed]);
    worker = Worker::default();
    worker.configure(&guard, &mut store, START_MS);
    let call = sent(&all(&mut worker))[0].0;
    worker.not_sent(&guard, &mut store, START_MS, call, "no such cluster".into());
    assert_eq!(counts(&all(&mut worker)), [Stat::DiscoveryFetchFailed, Stat::JwksFetchFailed]);
}

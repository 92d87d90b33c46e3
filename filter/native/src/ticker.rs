//! What drives a worker's [`Worker::tick`](crate::core::protocol::Worker::tick) in the native
//! build: a worker thread has no timer of its own in this ABI version (the http-filter config's
//! scheduler runs on the main thread, and a bootstrap extension's timers would have to reach
//! each worker's state through it). So each worker that needs ticks (requests wait for another
//! worker's callout, for a JWK Set fetch, or for a claim to lapse) lends the scheduler of one
//! of its live requests to one process-wide thread, which commits a tick event to it when the
//! worker's tick is due; the event runs on the worker's own thread, in that request's
//! `on_http_filter_scheduled`. A worker with no live request needs no tick: it ticks lazily,
//! on its next request, if one is due.

use std::sync::{Arc, Mutex, Once, Weak};
use std::time::Duration;

use crate::abi::SchedulerPtr;
use crate::core::protocol::RequestId;
use crate::envoy::scheduler_commit;

/// The event a tick comes as.
pub const EVENT_TICK: u64 = 1;

/// How often the ticker looks while some worker is armed: half the core's fastest tick.
const LOOK_MS: u64 = crate::core::protocol::TICK_MS / 2;
/// How often it looks while none is (a worker that arms is seen within this).
const IDLE_MS: u64 = 50;

#[derive(Debug, Clone, Copy)]
struct Armed {
    due_ms: u64,
    period_ms: u64,
    owner: RequestId,
    scheduler: SchedulerPtr,
}

/// One worker's (one thread's, for one configuration) tick, as the ticker sees it.
#[derive(Debug, Default)]
pub struct TickSlot {
    armed: Mutex<Option<Armed>>,
}

// SAFETY: the scheduler pointer is only committed to (thread-safe in Envoy: it posts to the
// worker's dispatcher) by the ticker, under the slot's lock; its owner disarms the slot under
// the same lock before it deletes the scheduler.
unsafe impl Send for TickSlot {}
// SAFETY: as above.
unsafe impl Sync for TickSlot {}

impl TickSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Armed>> {
        self.armed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The request whose scheduler the slot holds, if armed.
    pub fn owner(&self) -> Option<RequestId> {
        self.lock().map(|a| a.owner)
    }

    /// Ticks every `period_ms` from `due_ms` through `owner`'s `scheduler`.
    pub fn arm(&self, owner: RequestId, scheduler: SchedulerPtr, due_ms: u64, period_ms: u64) {
        *self.lock() = Some(Armed { due_ms, period_ms, owner, scheduler });
    }

    /// Keeps the owner, with a new period and due time.
    pub fn retime(&self, due_ms: u64, period_ms: u64) {
        if let Some(armed) = self.lock().as_mut() {
            armed.due_ms = armed.due_ms.min(due_ms);
            armed.period_ms = period_ms;
        }
    }

    /// No more ticks (through `owner`'s scheduler, if given: another's stays).
    pub fn disarm(&self, owner: Option<RequestId>) {
        let mut armed = self.lock();
        if owner.is_none() || armed.map(|a| a.owner) == owner {
            *armed = None;
        }
    }

    /// Commits a tick if one is due at `now_ms`; whether the slot is armed.
    fn fire(&self, now_ms: u64) -> bool {
        let mut armed = self.lock();
        let Some(a) = armed.as_mut() else { return false };
        if a.due_ms <= now_ms {
            scheduler_commit(a.scheduler, EVENT_TICK);
            // The worker re-arms (or disarms) once it has ticked; until then, not again.
            a.due_ms = now_ms.saturating_add(a.period_ms.max(LOOK_MS));
        }
        true
    }
}

static SLOTS: Mutex<Vec<Weak<TickSlot>>> = Mutex::new(Vec::new());

/// A new slot, seen by the ticker (started with the first one).
pub fn slot() -> Arc<TickSlot> {
    let slot = Arc::new(TickSlot::default());
    SLOTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Arc::downgrade(&slot));
    static START: Once = Once::new();
    START.call_once(|| {
        let spawned = std::thread::Builder::new().name("playbook-guard-ticker".into()).spawn(run);
        if let Err(err) = spawned {
            log::error!("cannot start the ticker thread ({err}): workers tick only on their own requests");
        }
    });
    slot
}

fn run() {
    loop {
        let now = crate::host::now_ms();
        let mut any = false;
        let slots: Vec<Arc<TickSlot>> = {
            let mut slots = SLOTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            slots.retain(|s| s.strong_count() > 0);
            slots.iter().filter_map(Weak::upgrade).collect()
        };
        for slot in slots {
            // A panic here must not end the process (the thread is ours, not Envoy's).
            any |= std::panic::catch_unwind(|| slot.fire(now)).unwrap_or(false);
        }
        std::thread::sleep(Duration::from_millis(if any { LOOK_MS } else { IDLE_MS }));
    }
}

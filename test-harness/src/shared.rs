//! State every VM of one host sees: shared data (with compare-and-swap) and shared queues.
//!
//! Envoy keeps these per process, not per worker; they are the only way one worker's VM can tell
//! another's anything. The semantics follow proxy-wasm-cpp-host's `SharedData` and `SharedQueue`.

use std::collections::{HashMap, VecDeque};

use crate::abi::Status;

/// The key-value store behind `proxy_get_shared_data` / `proxy_set_shared_data`.
#[derive(Debug, Default)]
pub(crate) struct SharedData {
    entries: HashMap<String, (Vec<u8>, u32)>,
    last_cas: u32,
    interleaved: Vec<Interleaved>,
}

/// Writes a test lands just before a filter's next write to a key with `prefix`: what another
/// worker's thread could have done between that filter's read and its write.
#[derive(Debug)]
struct Interleaved {
    prefix: String,
    writes: Vec<(String, Vec<u8>)>,
}

impl SharedData {
    /// The value and its CAS token.
    pub(crate) fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.entries.get(key).cloned()
    }

    /// Stores `value` under `key`; a non-zero `cas` must match the stored token.
    ///
    /// A missing key is created whatever `cas` says, as the C++ host does.
    pub(crate) fn set(&mut self, key: &str, value: Vec<u8>, cas: u32) -> Result<(), Status> {
        let next = self.next_cas();
        match self.entries.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Err(Status::CasMismatch);
                }
                *entry = (value, next);
            }
            None => {
                self.entries.insert(key.to_owned(), (value, next));
            }
        }
        Ok(())
    }

    /// Lands `writes` just before the next filter write to a key starting with `prefix`.
    pub(crate) fn interleave(&mut self, prefix: &str, writes: Vec<(String, Vec<u8>)>) {
        self.interleaved.push(Interleaved { prefix: prefix.to_owned(), writes });
    }

    /// Called by the host call before a filter writes `key`: lands the first set of interleaved
    /// writes that waits for such a key (each set lands once, one per filter write, so sets
    /// given for one prefix land before that many writes in turn).
    pub(crate) fn before_filter_write(&mut self, key: &str) {
        let Some(at) = self.interleaved.iter().position(|i| key.starts_with(&i.prefix)) else { return };
        let Interleaved { writes, .. } = self.interleaved.remove(at);
        for (key, value) in writes {
            let _ = self.set(&key, value, 0);
        }
    }

    /// Every key, sorted (for assertions on what a filter left behind).
    pub(crate) fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.entries.keys().cloned().collect();
        keys.sort();
        keys
    }

    fn next_cas(&mut self) -> u32 {
        // 0 means "no CAS" on the wire, so the token skips it when it wraps.
        self.last_cas = self.last_cas.wrapping_add(1).max(1);
        self.last_cas
    }
}

/// Which VM and root context hear `proxy_on_queue_ready` for a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueOwner {
    pub(crate) vm: usize,
    pub(crate) context_id: u32,
}

/// One `proxy_on_queue_ready` call waiting to be delivered on its VM's "thread".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueReady {
    pub(crate) owner: QueueOwner,
    pub(crate) queue_id: u32,
}

#[derive(Debug)]
struct Queue {
    owner: QueueOwner,
    items: VecDeque<Vec<u8>>,
}

/// The queues behind `proxy_register_shared_queue` and friends.
#[derive(Debug, Default)]
pub(crate) struct SharedQueues {
    ids: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    last_id: u32,
    ready: Vec<QueueReady>,
}

impl SharedQueues {
    /// Registers (or re-registers) `name` for `vm_id`; the latest registrant owns the queue, as in
    /// the C++ host, which is why filters use one queue name per worker.
    pub(crate) fn register(&mut self, vm_id: &str, name: &str, owner: QueueOwner) -> u32 {
        let key = (vm_id.to_owned(), name.to_owned());
        if let Some(id) = self.ids.get(&key).copied() {
            if let Some(queue) = self.queues.get_mut(&id) {
                queue.owner = owner;
            }
            return id;
        }
        self.last_id = self.last_id.wrapping_add(1).max(1);
        let id = self.last_id;
        self.ids.insert(key, id);
        self.queues.insert(id, Queue { owner, items: VecDeque::new() });
        id
    }

    /// The id of a registered queue.
    pub(crate) fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.ids.get(&(vm_id.to_owned(), name.to_owned())).copied()
    }

    /// Appends to a queue and schedules `proxy_on_queue_ready` on its owner.
    pub(crate) fn enqueue(&mut self, id: u32, value: Vec<u8>) -> Result<(), Status> {
        let queue = self.queues.get_mut(&id).ok_or(Status::NotFound)?;
        queue.items.push_back(value);
        self.ready.push(QueueReady { owner: queue.owner, queue_id: id });
        Ok(())
    }

    /// Takes the oldest item.
    pub(crate) fn dequeue(&mut self, id: u32) -> Result<Vec<u8>, Status> {
        let queue = self.queues.get_mut(&id).ok_or(Status::NotFound)?;
        queue.items.pop_front().ok_or(Status::Empty)
    }

    /// How many items wait in a queue.
    pub(crate) fn len(&self, id: u32) -> Option<usize> {
        self.queues.get(&id).map(|q| q.items.len())
    }

    /// Takes the notifications due on `vm`, oldest first.
    pub(crate) fn take_ready_for(&mut self, vm: usize) -> Vec<QueueReady> {
        let (mine, rest): (Vec<_>, Vec<_>) = self.ready.drain(..).partition(|r| r.owner.vm == vm);
        self.ready = rest;
        mine
    }

    /// Whether any VM has a notification waiting.
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_guards_updates_and_an_emptied_key_stays() {
        let mut data = SharedData::default();
        assert_eq!(data.get("k"), None);
        data.set("k", b"a".to_vec(), 0).unwrap();
        let (_, cas) = data.get("k").unwrap();
        assert_ne!(cas, 0);
        data.set("k", b"b".to_vec(), cas).unwrap();
        assert_eq!(data.set("k", b"c".to_vec(), cas), Err(Status::CasMismatch));
        let (value, cas2) = data.get("k").unwrap();
        assert_eq!(value, b"b");
        assert_eq!(data.set("k", Vec::new(), cas), Err(Status::CasMismatch));
        data.set("k", Vec::new(), cas2).unwrap();
        assert_eq!(data.keys(), ["k"], "an emptied key stays, as in Envoy");
    }

    #[test]
    fn interleaved_writes_land_once_before_the_first_matching_filter_write() {
        let mut data = SharedData::default();
        data.set("f/1", b"free".to_vec(), 0).unwrap();
        let (_, read_cas) = data.get("f/1").unwrap();
        data.interleave("f/", vec![("f/1".into(), b"other".to_vec()), ("s/1".into(), b"answer".to_vec())]);

        data.before_filter_write("s/2");
        assert_eq!(data.get("s/1"), None, "not a matching key");
        data.before_filter_write("f/1");
        assert_eq!(data.get("s/1").unwrap().0, b"answer");
        assert_eq!(data.set("f/1", b"mine".to_vec(), read_cas), Err(Status::CasMismatch), "the read went stale");

        data.set("s/1", b"later".to_vec(), 0).unwrap();
        data.before_filter_write("f/1");
        assert_eq!(data.get("s/1").unwrap().0, b"later", "landed once only");
    }

    #[test]
    fn sets_for_one_prefix_land_one_per_filter_write() {
        let mut data = SharedData::default();
        data.interleave("f/", vec![("a".into(), b"1".to_vec())]);
        data.interleave("f/", vec![("a".into(), b"2".to_vec())]);
        data.before_filter_write("f/1");
        assert_eq!(data.get("a").unwrap().0, b"1");
        data.before_filter_write("f/1");
        assert_eq!(data.get("a").unwrap().0, b"2");
    }

    #[test]
    fn queues_deliver_to_the_latest_registrant() {
        let mut queues = SharedQueues::default();
        let a = QueueOwner { vm: 0, context_id: 1 };
        let b = QueueOwner { vm: 1, context_id: 1 };
        let id = queues.register("vm", "q", a);
        assert_eq!(queues.register("vm", "q", b), id);
        assert_eq!(queues.resolve("vm", "q"), Some(id));
        assert_eq!(queues.resolve("other", "q"), None);
        assert_eq!(queues.dequeue(id), Err(Status::Empty));
        queues.enqueue(id, b"x".to_vec()).unwrap();
        assert_eq!(queues.enqueue(id + 1, Vec::new()), Err(Status::NotFound));
        assert!(queues.take_ready_for(0).is_empty());
        assert_eq!(queues.take_ready_for(1).len(), 1);
        assert!(!queues.has_ready());
        assert_eq!(queues.len(id), Some(1));
        assert_eq!(queues.dequeue(id).unwrap(), b"x");
    }
}

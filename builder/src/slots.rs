//! Build slots of one request (`build-max-jobs`), handed out in the C++ Worker's order.
//!
//! The C++ Worker is one thread: it brings every goal as far as it can go, then starts the
//! ready builds in the order of their keys (`b$NAME$DRV`: alphabetically by derivation name).
//! Our goals are tasks that reach "ready" at their own pace, so a slot is given only when no
//! goal of the request is still *preparing* (reading its derivation and the database before it
//! knows whether it needs to build): then every build that is ready competes, and the one with
//! the smallest key wins, as in C++. Preparing is short and bounded (file and database reads),
//! so holding slots back for it costs microseconds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use guix_formats::StorePath;
use tokio::sync::oneshot;

/// The order of ready builds: derivation name, then path (then a number making keys unique).
pub type SlotKey = (String, StorePath);
type Key = (String, StorePath, u64);

pub struct Slots {
    state: Mutex<State>,
}

struct State {
    free: usize,
    preparing: usize,
    waiting: BTreeMap<Key, oneshot::Sender<()>>,
    next: u64,
}

impl Slots {
    pub fn new(n: usize) -> Arc<Slots> {
        Arc::new(Slots { state: Mutex::new(State { free: n, preparing: 0, waiting: BTreeMap::new(), next: 0 }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A goal of this request is preparing until the guard is dropped.
    pub fn preparing(self: &Arc<Self>) -> Preparing {
        self.lock().preparing += 1;
        Preparing(self.clone())
    }

    /// Waits for a slot; `prep` (the caller's preparing guard) ends once the caller is queued.
    pub async fn acquire(self: &Arc<Self>, key: SlotKey, prep: Preparing) -> Slot {
        let (tx, rx) = oneshot::channel();
        let key = {
            let mut s = self.lock();
            s.next += 1;
            let key = (key.0, key.1, s.next);
            s.waiting.insert(key.clone(), tx);
            key
        };
        drop(prep);
        // Dropped while waiting (cancelled): leave the queue, or give back a slot granted
        // meanwhile.
        let mut queued = Queued { slots: self.clone(), key: Some(key) };
        // The sender lives in the queue until it grants: an error cannot happen, and would
        // mean a grant.
        let _ = rx.await;
        queued.key = None;
        Slot(self.clone())
    }

    fn dispatch(state: &mut State) {
        while state.free > 0 && state.preparing == 0 {
            let Some((_, tx)) = state.waiting.pop_first() else { break };
            if tx.send(()).is_ok() {
                state.free -= 1;
            }
        }
    }
}

/// See [`Slots::preparing`].
pub struct Preparing(Arc<Slots>);

impl Drop for Preparing {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.preparing -= 1;
        Slots::dispatch(&mut s);
    }
}

/// A build slot, given back when dropped.
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.free += 1;
        Slots::dispatch(&mut s);
    }
}

/// A waiter that is dropped before its grant leaves the queue (or returns the slot it got).
struct Queued {
    slots: Arc<Slots>,
    key: Option<Key>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut s = self.slots.lock();
            if s.waiting.remove(&key).is_none() {
                // Granted just now, but nobody will use it.
                s.free += 1;
            }
            Slots::dispatch(&mut s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guix_formats::StoreDir;
    use std::time::Duration;

    fn key(name: &str) -> SlotKey {
        let p = StoreDir::default().make_text_path(&format!("{name}.drv"), b"", std::iter::empty::<&StorePath>()).unwrap();
        (name.to_owned(), p)
    }

    #[tokio::test]
    async fn ready_builds_start_in_name_order_once_nothing_is_preparing() {
        let slots = Slots::new(1);
        let gate = slots.preparing();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for name in ["multi", "fod-rec", "fod-flat"] {
            let (slots, order) = (slots.clone(), order.clone());
            let prep = slots.preparing();
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire(key(name), prep).await;
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        // One goal still preparing: nothing starts.
        assert!(order.lock().unwrap().is_empty());
        drop(gate);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec!["fod-flat", "fod-rec", "multi"]);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_gives_its_place_back() {
        let slots = Slots::new(1);
        let held = slots.acquire(key("a"), slots.preparing()).await;
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(key("b"), slots.preparing()).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        // The slot is free again for the next one.
        let got = tokio::time::timeout(Duration::from_secs(1), slots.acquire(key("c"), slots.preparing())).await;
        assert!(got.is_ok());
    }
}

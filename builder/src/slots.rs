//! Build slots of one request (`build-max-jobs`), and the order in which its goals act, as
//! in the C++ Worker.
//!
//! The C++ Worker is one thread: it brings every goal as far as it can go, in the order of
//! their keys (`b$NAME$DRV`: alphabetically by derivation name), so what clients see — which
//! build starts first, which cached failure is reported first — follows that order. Our goals
//! are tasks that move at their own pace, so:
//! - a goal is *preparing* while it reads its derivation and the database before it knows what
//!   it must do ([`Slots::preparing`]);
//! - a goal that is ready to build waits for a slot ([`Slots::acquire`]), one that has
//!   something to report waits for its turn ([`Slots::turn`]);
//! - nothing is granted while a goal prepares; then the waiter with the smallest key that can
//!   go (a turn, or a slot while one is free) is granted, and the grant itself counts as
//!   preparing until the goal has done its visible step (started its build, printed its
//!   failure), so the next grant comes after it, as in C++;
//! - keys start with the goal's depth: C++ works a goal with nothing to wait for through to
//!   its build in the round it is first worked on, and the inputs it creates only in the next
//!   round, so what the client asked for and can build at once starts before inputs found on
//!   the way.
//!
//! Preparing is short and bounded (file and database reads, starting a build), so holding
//! grants back for it costs milliseconds at most.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use guix_formats::StorePath;
use tokio::sync::oneshot;

/// The order of ready builds: the goal's depth (0 for what the client asked for, 1 for their
/// inputs, …: the C++ Worker's round in which the goal is first worked on), derivation name,
/// then path (then a number making keys unique).
pub type SlotKey = (u32, String, StorePath);
type Key = (u32, String, StorePath, u64);

pub struct Slots {
    state: Mutex<State>,
}

struct Waiter {
    /// A slot, or only a turn.
    slot: bool,
    grant: oneshot::Sender<()>,
}

struct State {
    free: usize,
    preparing: usize,
    waiting: BTreeMap<Key, Waiter>,
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
    /// The slot comes with a preparing guard of its own: drop it once the build started.
    pub async fn acquire(self: &Arc<Self>, key: SlotKey, prep: Preparing) -> (Slot, Preparing) {
        self.wait(key, prep, true).await;
        (Slot(self.clone()), Preparing(self.clone()))
    }

    /// Waits for the goal's turn to act (no slot); the guard ends the turn.
    pub async fn turn(self: &Arc<Self>, key: SlotKey, prep: Preparing) -> Preparing {
        self.wait(key, prep, false).await;
        Preparing(self.clone())
    }

    async fn wait(self: &Arc<Self>, key: SlotKey, prep: Preparing, slot: bool) {
        let (grant, rx) = oneshot::channel();
        let key = {
            let mut s = self.lock();
            s.next += 1;
            let key = (key.0, key.1, key.2, s.next);
            s.waiting.insert(key.clone(), Waiter { slot, grant });
            key
        };
        drop(prep);
        // Dropped while waiting (cancelled): leave the queue, or give back what was granted
        // meanwhile.
        let mut queued = Queued { slots: self.clone(), key: Some(key), slot };
        // The sender lives in the queue until it grants: an error cannot happen, and would
        // mean a grant.
        let _ = rx.await;
        queued.key = None;
    }

    /// Grants the first waiter (in key order) that can go, if no goal is preparing. A grant
    /// counts as preparing (its guard is made by the waiter), so one grant at a time.
    fn dispatch(state: &mut State) {
        while state.preparing == 0 {
            let free = state.free;
            let Some(key) = state.waiting.iter().find(|(_, w)| !w.slot || free > 0).map(|(k, _)| k.clone()) else {
                break;
            };
            let Some(w) = state.waiting.remove(&key) else { break };
            if w.grant.send(()).is_ok() {
                state.preparing += 1;
                if w.slot {
                    state.free -= 1;
                }
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
    slot: bool,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut s = self.slots.lock();
            if s.waiting.remove(&key).is_none() {
                // Granted just now, but nobody will use it.
                s.preparing -= 1;
                if self.slot {
                    s.free += 1;
                }
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
        let p =
            StoreDir::default().make_text_path(&format!("{name}.drv"), b"", std::iter::empty::<&StorePath>()).unwrap();
        (0, name.to_owned(), p)
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
                let (_slot, started) = slots.acquire(key(name), prep).await;
                order.lock().unwrap().push(name);
                drop(started);
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
    async fn turns_and_slots_are_granted_one_at_a_time_in_key_order() {
        // Two slots, but a grant waits until the previous grantee is done with its step.
        let slots = Slots::new(2);
        let gate = slots.preparing();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, slot) in [("c-build", true), ("a-cached", false), ("b-build", true), ("d-cached", false)] {
            let (slots, order) = (slots.clone(), order.clone());
            let prep = slots.preparing();
            tasks.push(tokio::spawn(async move {
                let (held, step) = if slot {
                    let (s, p) = slots.acquire(key(name), prep).await;
                    (Some(s), p)
                } else {
                    (None, slots.turn(key(name), prep).await)
                };
                // The visible step takes a while; nobody else is granted meanwhile.
                order.lock().unwrap().push(format!("{name} begins"));
                tokio::time::sleep(Duration::from_millis(5)).await;
                order.lock().unwrap().push(format!("{name} ends"));
                drop(step);
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(held);
            }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(gate);
        for t in tasks {
            t.await.unwrap();
        }
        let want: Vec<String> = ["a-cached", "b-build", "c-build", "d-cached"]
            .iter()
            .flat_map(|n| [format!("{n} begins"), format!("{n} ends")])
            .collect();
        assert_eq!(*order.lock().unwrap(), want);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_gives_its_place_back() {
        let slots = Slots::new(1);
        let (held, started) = slots.acquire(key("a"), slots.preparing()).await;
        drop(started);
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

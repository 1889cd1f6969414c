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
//! - nothing is granted while a goal prepares; then every waiter that can go (a turn, or a slot
//!   while one is free) is granted, in key order, and each grant is numbered;
//! - what a grantee does that the client sees (its build's start, its failure) waits until
//!   every earlier grant's visible step is done ([`Preparing::visible`]), so the client sees
//!   them in grant order, as in C++. The work before it — a build user, output locks, the log
//!   file, the chroot and namespaces — runs in parallel: two builds set up at once on two
//!   slots, instead of one after the other;
//! - keys start with the goal's depth: C++ works a goal with nothing to wait for through to
//!   its build in the round it is first worked on, and the inputs it creates only in the next
//!   round, so what the client asked for and can build at once starts before inputs found on
//!   the way.
//!
//! Preparing is short and bounded (file and database reads, starting a build), so holding
//! grants back for it costs milliseconds at most. A grantee that must wait for something
//! another grantee may hold (a build user, an output lock) gives up its place in the order
//! first (drops its guard), so no grantee waits on a later one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use guix_formats::StorePath;
use tokio::sync::{oneshot, watch};

/// The order of ready builds: the goal's depth (0 for what the client asked for, 1 for their
/// inputs, …: the C++ Worker's round in which the goal is first worked on), derivation name,
/// then path (then a number making keys unique).
pub type SlotKey = (u32, String, StorePath);
type Key = (u32, String, StorePath, u64);

pub struct Slots {
    state: Mutex<State>,
    /// The lowest grant number whose visible step is not done: a grant may act visibly once
    /// this reaches its number.
    visible: watch::Sender<u64>,
    /// Likewise for taking from what grants share (a build user): see [`Preparing::in_order`].
    picked: watch::Sender<u64>,
}

/// One of the two orders grants keep.
#[derive(Clone, Copy)]
enum Order {
    Visible,
    Picked,
}

/// Grant numbers done with a step: the lowest one that is not, and those above it that are.
#[derive(Default)]
struct Done {
    from: u64,
    above: BTreeSet<u64>,
}

impl Done {
    /// Marks `number` done; the new lowest number not done.
    fn mark(&mut self, number: u64) -> u64 {
        if number >= self.from {
            self.above.insert(number);
            while self.above.remove(&self.from) {
                self.from += 1;
            }
        }
        self.from
    }
}

struct Waiter {
    /// A slot, or only a turn.
    slot: bool,
    /// Sends the grant's number.
    grant: oneshot::Sender<u64>,
}

struct State {
    free: usize,
    preparing: usize,
    waiting: BTreeMap<Key, Waiter>,
    next: u64,
    /// The next grant's number.
    next_grant: u64,
    /// See [`Slots::visible`].
    visible: Done,
    /// See [`Slots::picked`].
    picked: Done,
}

impl Slots {
    pub fn new(n: usize) -> Arc<Slots> {
        let state = State {
            free: n,
            preparing: 0,
            waiting: BTreeMap::new(),
            next: 0,
            next_grant: 0,
            visible: Done::default(),
            picked: Done::default(),
        };
        Arc::new(Slots { state: Mutex::new(state), visible: watch::Sender::new(0), picked: watch::Sender::new(0) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A goal of this request is preparing until the guard is dropped.
    pub fn preparing(self: &Arc<Self>) -> Preparing {
        self.lock().preparing += 1;
        Preparing { slots: self.clone(), grant: None }
    }

    /// Waits for a slot; `prep` (the caller's preparing guard) ends once the caller is queued.
    /// The slot comes with the grant's guard: await [`Preparing::visible`] before the build's
    /// start is shown, and drop it after.
    pub async fn acquire(self: &Arc<Self>, key: SlotKey, prep: Preparing) -> (Slot, Preparing) {
        let grant = self.wait(key, prep, true).await;
        (Slot(self.clone()), Preparing { slots: self.clone(), grant: Some(grant) })
    }

    /// Waits for the goal's turn to act (no slot): returns once it may act visibly; the guard
    /// ends the turn.
    pub async fn turn(self: &Arc<Self>, key: SlotKey, prep: Preparing) -> Preparing {
        let grant = self.wait(key, prep, false).await;
        let step = Preparing { slots: self.clone(), grant: Some(grant) };
        step.visible().await;
        step
    }

    async fn wait(self: &Arc<Self>, key: SlotKey, prep: Preparing, slot: bool) -> u64 {
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
        let mut queued = Queued { slots: self.clone(), key: Some(key), slot, rx };
        // The sender lives in the queue until it grants, so an error cannot happen; were it to,
        // the grant numbered `u64::MAX` never waits and marks nothing done.
        let grant = (&mut queued.rx).await.unwrap_or(u64::MAX);
        queued.key = None;
        grant
    }

    /// Grants, in key order, every waiter that can go, if no goal is preparing.
    fn dispatch(state: &mut State) {
        if state.preparing > 0 {
            return;
        }
        loop {
            let free = state.free;
            let Some(key) = state.waiting.iter().find(|(_, w)| !w.slot || free > 0).map(|(k, _)| k.clone()) else {
                break;
            };
            let Some(w) = state.waiting.remove(&key) else { break };
            let number = state.next_grant;
            if w.grant.send(number).is_ok() {
                state.next_grant += 1;
                if w.slot {
                    state.free -= 1;
                }
            }
        }
    }

    /// Grant `number` is done with the step of `order` (or will never take it).
    fn done(&self, number: u64, order: Order) {
        let mut s = self.lock();
        if number >= s.next_grant {
            return;
        }
        let done = match order {
            Order::Visible => &mut s.visible,
            Order::Picked => &mut s.picked,
        };
        let from = done.mark(number);
        drop(s);
        self.sender(order).send_replace(from);
    }

    /// Grant `number` is done with every step (its guard is gone).
    fn done_with_all(&self, number: u64) {
        self.done(number, Order::Picked);
        self.done(number, Order::Visible);
    }

    /// Where the lowest grant not done with the step of `order` is published.
    fn sender(&self, order: Order) -> &watch::Sender<u64> {
        match order {
            Order::Visible => &self.visible,
            Order::Picked => &self.picked,
        }
    }

    /// Waits until every grant before `number` is done with the step of `order`.
    async fn wait_for(&self, number: u64, order: Order) {
        // The sender lives as long as `self`: the wait cannot fail.
        let _ = self.sender(order).subscribe().wait_for(|v| *v >= number).await;
    }
}

/// A goal preparing (counted, so that nothing is granted meanwhile), or a grant that has not
/// yet done its visible step.
pub struct Preparing {
    slots: Arc<Slots>,
    grant: Option<u64>,
}

impl Preparing {
    /// Waits until every earlier grant has done its visible step (at once for a goal that is
    /// only preparing). Not bounded here: an earlier grantee reaches its visible step within
    /// its own bounded set-up, or drops its guard before it waits for anything.
    pub async fn visible(&self) {
        if let Some(number) = self.grant {
            self.slots.wait_for(number, Order::Visible).await;
        }
    }

    /// Runs `f` once every earlier grant has run its own (or dropped its guard): grants take
    /// from what they share in grant order, as the C++ Worker's goals do one after another
    /// (two builds started at once get the first and the second build user, in key order).
    /// `f` must not wait: later grants wait for it.
    pub async fn in_order<T>(&self, f: impl FnOnce() -> T) -> T {
        let Some(number) = self.grant else { return f() };
        self.slots.wait_for(number, Order::Picked).await;
        let out = f();
        self.slots.done(number, Order::Picked);
        out
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        match self.grant {
            Some(number) => self.slots.done_with_all(number),
            None => {
                let mut s = self.slots.lock();
                s.preparing -= 1;
                Slots::dispatch(&mut s);
            }
        }
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
    rx: oneshot::Receiver<u64>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut s = self.slots.lock();
            let granted = if s.waiting.remove(&key).is_none() { self.rx.try_recv().ok() } else { None };
            if granted.is_some() && self.slot {
                // Granted just now, but nobody will use it.
                s.free += 1;
            }
            Slots::dispatch(&mut s);
            drop(s);
            if let Some(number) = granted {
                self.slots.done_with_all(number);
            }
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
    async fn visible_steps_follow_key_order() {
        // Two slots: both builds are granted, but each visible step waits for the earlier ones.
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
                    p.visible().await;
                    (Some(s), p)
                } else {
                    (None, slots.turn(key(name), prep).await)
                };
                // The visible step takes a while; nobody else acts visibly meanwhile.
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
    async fn free_slots_are_granted_at_once_and_set_up_in_parallel() {
        let slots = Slots::new(2);
        let gate = slots.preparing();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for name in ["a", "b"] {
            let (slots, tx) = (slots.clone(), tx.clone());
            let prep = slots.preparing();
            tasks.push(tokio::spawn(async move {
                let (held, step) = slots.acquire(key(name), prep).await;
                let _ = tx.send(format!("{name} granted"));
                // "a" sets up slowly; "b" is granted meanwhile, not after "a" started.
                if name == "a" {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                step.visible().await;
                let _ = tx.send(format!("{name} visible"));
                drop(step);
                drop(held);
            }));
        }
        drop(tx);
        drop(gate);
        let mut seen = Vec::new();
        while let Some(e) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap() {
            seen.push(e);
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Both grants come before either visible step (the tasks may report them in any order).
        seen[..2].sort();
        assert_eq!(seen, ["a granted", "b granted", "a visible", "b visible"]);
    }

    #[tokio::test]
    async fn grants_pick_in_grant_order() {
        let slots = Slots::new(2);
        let gate = slots.preparing();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for name in ["a", "b"] {
            let (slots, order) = (slots.clone(), order.clone());
            let prep = slots.preparing();
            tasks.push(tokio::spawn(async move {
                let (_held, step) = slots.acquire(key(name), prep).await;
                // "a" gets there late; "b" still picks after it.
                if name == "a" {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                step.in_order(|| order.lock().unwrap().push(name)).await;
            }));
        }
        drop(gate);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["a", "b"]);
        // A grant dropped before picking does not hold the next one up.
        let (_c, c_step) = slots.acquire(key("c"), slots.preparing()).await;
        drop(c_step);
        let (_d, d_step) = slots.acquire(key("d"), slots.preparing()).await;
        tokio::time::timeout(Duration::from_secs(1), d_step.in_order(|| ())).await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_grant_lets_the_later_ones_act() {
        let slots = Slots::new(2);
        let (_a, a_step) = slots.acquire(key("a"), slots.preparing()).await;
        let (_b, b_step) = slots.acquire(key("b"), slots.preparing()).await;
        // "a" waits for something (a build user) and gives up its place: "b" may act.
        drop(a_step);
        tokio::time::timeout(Duration::from_secs(1), b_step.visible()).await.unwrap();
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

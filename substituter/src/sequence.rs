//! The order in which a job shows its paths' events while they download at once.
//!
//! A C++ substitution holds one of the request's build slots, so with the default
//! `--max-jobs=1` the client sees one path after the other, in the order the Worker runs
//! them. Ours download up to [`crate::substitute::PARALLEL_DOWNLOADS`] at once, and what
//! each path prints is held back until the paths before it in that order are done:
//! the client sees the same lines in the same order as with one slot, only sooner.
//!
//! What is held back stays small, so that releasing it cannot overflow the callers' event
//! buffers (a client that misses a `@ download-started` line fails): a path starts only
//! within [`WINDOW`] of the path being shown, and of the `@ download-progress` lines of a
//! path held back only the two latest are kept.
//!
//! The order ([`serial_order`]) is the one the C++ Worker's rounds give one build slot:
//! the order in which its goals reach the slot, simulated.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::watch;

use guix_formats::StorePath;
use guix_ipc::job::JobContext;
use guix_ipc::substituter::SubstituteEvent;

/// `todo` as one build slot runs it in the C++ Worker, for a request of `requested`; `refs`
/// gives a path's references. A simulation of the Worker's rounds (`Worker::run`): each round
/// runs every awake goal once, in goal-key order (the `awake` set is ordered by key); a
/// substitution goal takes one round to make the goals of its references (a path already
/// valid, or done earlier in the request, gets a goal that is done in its first round), one
/// when they are all done, and one to try for the slot. A goal that finds the slot taken
/// waits in `wantingToBuild` (ordered by key too), all of which are woken when a
/// substitution ends; and a substitution ends only when no goal is awake (the Worker then
/// waits for its children). Every path of `todo` comes once; a path its references keep
/// from ever running (none should be left: cycles are failed before) comes last.
pub fn serial_order<'a>(
    requested: &[StorePath],
    todo: &[&'a StorePath],
    refs: impl Fn(&StorePath) -> Vec<StorePath>,
) -> Vec<&'a StorePath> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum State {
        /// No goal: never made, or done (a later reference makes a new one).
        Absent,
        Init,
        /// Waiting for its references' goals, or (awake) all done.
        RefsValid,
        TryToRun,
        Running,
        /// Its substitution ended: woken to finish.
        Finished,
    }
    // Every path a goal can be made for, in goal-key order (`a$NAME$PATH`).
    let goal_key = |a: &&StorePath, b: &&StorePath| (a.name(), *a).cmp(&(b.name(), *b));
    let todo_refs: Vec<Vec<StorePath>> = todo
        .iter()
        .map(|p| {
            let mut r = refs(p);
            r.retain(|r| r != *p);
            r
        })
        .collect();
    let mut all: Vec<&StorePath> = todo.to_vec();
    all.extend(todo_refs.iter().flatten());
    all.extend(requested);
    all.sort_by(goal_key);
    all.dedup();
    let rank: HashMap<&StorePath, usize> = all.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    // For each goal (by rank): its `todo` index, if it is to be substituted.
    let mut todo_of: Vec<Option<usize>> = vec![None; all.len()];
    for (i, p) in todo.iter().enumerate() {
        todo_of[rank[p]] = Some(i);
    }
    let deps: Vec<Vec<usize>> = todo_refs.iter().map(|r| r.iter().map(|p| rank[p]).collect()).collect();
    let mut state = vec![State::Absent; all.len()];
    let mut waitees = vec![0usize; all.len()];
    let mut waiters: Vec<Vec<usize>> = vec![Vec::new(); all.len()];
    let mut substituted = vec![false; all.len()];
    let mut awake: BTreeSet<usize> = requested.iter().map(|p| rank[p]).collect();
    for &g in &awake {
        state[g] = State::Init;
    }
    let mut wanting: BTreeSet<usize> = BTreeSet::new();
    let mut running: Option<usize> = None;
    let mut out = Vec::with_capacity(todo.len());
    loop {
        while !awake.is_empty() {
            for g in std::mem::take(&mut awake) {
                let mut done = false;
                match state[g] {
                    State::Init => match todo_of[g].filter(|_| !substituted[g]) {
                        None => done = true,
                        Some(t) => {
                            for &r in &deps[t] {
                                if state[r] == State::Absent {
                                    state[r] = State::Init;
                                    awake.insert(r);
                                }
                                waiters[r].push(g);
                                waitees[g] += 1;
                            }
                            state[g] = State::RefsValid;
                            if waitees[g] == 0 {
                                awake.insert(g);
                            }
                        }
                    },
                    State::RefsValid => {
                        state[g] = State::TryToRun;
                        awake.insert(g);
                    }
                    State::TryToRun if running.is_some() => {
                        wanting.insert(g);
                    }
                    State::TryToRun => {
                        running = Some(g);
                        state[g] = State::Running;
                        if let Some(t) = todo_of[g] {
                            out.push(todo[t]);
                        }
                    }
                    State::Finished => {
                        awake.append(&mut wanting);
                        substituted[g] = true;
                        done = true;
                    }
                    State::Absent | State::Running => {}
                }
                if done {
                    state[g] = State::Absent;
                    for w in std::mem::take(&mut waiters[g]) {
                        waitees[w] -= 1;
                        if waitees[w] == 0 {
                            awake.insert(w);
                        }
                    }
                }
            }
        }
        match running.take() {
            Some(g) => {
                state[g] = State::Finished;
                awake.insert(g);
            }
            None => break,
        }
    }
    if out.len() < todo.len() {
        let shown: HashSet<&StorePath> = out.iter().copied().collect();
        out.extend(todo.iter().copied().filter(|p| !shown.contains(p)));
    }
    out
}

/// How far past the path being shown a path may start.
pub const WINDOW: usize = 2 * crate::substitute::PARALLEL_DOWNLOADS;

/// Passes each path's events on in [`serial_order`], holding back those of later paths.
pub struct Sequencer<'a> {
    ctx: &'a JobContext<SubstituteEvent>,
    rank: HashMap<StorePath, usize>,
    state: Mutex<State>,
    /// The rank being shown.
    live: watch::Sender<usize>,
}

struct State {
    /// The rank whose events go out as they come.
    live: usize,
    held: Vec<Vec<SubstituteEvent>>,
    done: Vec<bool>,
}

impl<'a> Sequencer<'a> {
    pub fn new(ctx: &'a JobContext<SubstituteEvent>, order: &[&StorePath]) -> Sequencer<'a> {
        let rank = order.iter().enumerate().map(|(i, p)| ((*p).clone(), i)).collect();
        let n = order.len();
        let state = Mutex::new(State { live: 0, held: vec![Vec::new(); n], done: vec![false; n] });
        Sequencer { ctx, rank, state, live: watch::channel(0).0 }
    }

    /// Where `path` emits its events.
    pub fn out(&'a self, path: &StorePath) -> PathOut<'a> {
        PathOut { seq: self, rank: self.rank.get(path).copied() }
    }

    fn emit(&self, rank: Option<usize>, e: SubstituteEvent) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match rank {
            Some(r) if r != s.live && r < s.held.len() => {
                let held = &mut s.held[r];
                // The two latest lines of a run of progress lines: a finished download's
                // last report and the final one `guix substitute` prints when it stops, as
                // a download shown live ends.
                let n = held.len();
                if is_progress(&e) && n >= 2 && is_progress(&held[n - 1]) && is_progress(&held[n - 2]) {
                    held.remove(n - 2);
                }
                held.push(e)
            }
            _ => self.ctx.emit(e),
        }
    }

    fn done(&self, rank: Option<usize>) {
        let Some(r) = rank else { return };
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        if r >= s.done.len() {
            return;
        }
        s.done[r] = true;
        while s.live < s.done.len() && s.done[s.live] {
            s.live += 1;
            let live = s.live;
            if live < s.held.len() {
                for e in std::mem::take(&mut s.held[live]) {
                    self.ctx.emit(e);
                }
            }
        }
        self.live.send_replace(s.live);
    }
}

fn is_progress(e: &SubstituteEvent) -> bool {
    matches!(e, SubstituteEvent::Output(b) if b.starts_with(b"@ download-progress "))
}

/// One path's events; dropped, the path is done and the next one's events flow.
pub struct PathOut<'a> {
    seq: &'a Sequencer<'a>,
    rank: Option<usize>,
}

impl PathOut<'_> {
    pub fn emit(&self, e: SubstituteEvent) {
        self.seq.emit(self.rank, e)
    }

    /// Waits until this path is within [`WINDOW`] of the path being shown.
    pub async fn wait_for_window(&self) {
        let Some(r) = self.rank else { return };
        let mut live = self.seq.live.subscribe();
        let _ = live.wait_for(|l| r < l + WINDOW).await;
    }
}

impl Drop for PathOut<'_> {
    fn drop(&mut self) {
        self.seq.done(self.rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(c: char) -> StorePath {
        StorePath::from_base_name(&format!("{}-{c}", c.to_string().repeat(32))).unwrap()
    }

    #[test]
    fn one_slot_order_follows_the_worker_rounds() {
        // top → b → a; top → d; c alone; c and top requested. Goal-key order: a b c d top.
        // c starts first (nothing to wait for); a and d then wait for the slot, and a, first
        // in key order, gets it; d next, as b still has a round to go; b, top.
        let (a, b, c, d, top) = (p('a'), p('b'), p('c'), p('d'), p('z'));
        let refs = |x: &StorePath| -> Vec<StorePath> {
            if *x == top {
                vec![b.clone(), d.clone(), top.clone()]
            } else if *x == b {
                vec![a.clone()]
            } else {
                vec![]
            }
        };
        let todo = [&top, &c, &b, &d, &a];
        let order = serial_order(&[c.clone(), top.clone()], &todo, refs);
        assert_eq!(order, [&c, &a, &d, &b, &top]);
    }

    /// The closures `tests/tests/substitute.rs` substitutes, in the orders the C++ daemon
    /// showed: top → (b → a, dir), and top → (b → a, big, dir).
    #[test]
    fn one_slot_order_is_the_cxx_daemons() {
        let named =
            |name: &str, c: char| StorePath::from_base_name(&format!("{}-{name}", c.to_string().repeat(32))).unwrap();
        let (a, b, big, dir, top) = (
            named("subst-a", 'a'),
            named("subst-b", 'i'),
            named("subst-big", 'j'),
            named("subst-dir", 'm'),
            named("subst-top", 'y'),
        );
        for (with_big, want) in [(false, vec![&dir, &a, &b, &top]), (true, vec![&big, &a, &dir, &b, &top])] {
            let refs = |x: &StorePath| -> Vec<StorePath> {
                if *x == top {
                    let mut r = vec![b.clone(), dir.clone()];
                    if with_big {
                        r.push(big.clone());
                    }
                    r
                } else if *x == b {
                    vec![a.clone()]
                } else {
                    vec![]
                }
            };
            let mut todo = vec![&top, &b, &dir, &a];
            if with_big {
                todo.push(&big);
            }
            assert_eq!(serial_order(std::slice::from_ref(&top), &todo, refs), want, "with big: {with_big}");
        }
    }

    /// A reference already valid (not to be substituted) still costs its goal a round; a
    /// path whose references can never run comes last.
    #[test]
    fn valid_references_take_a_round_and_stuck_paths_come_last() {
        // x → v (valid), y alone; both requested: y first, as x waits a round for v.
        let (v, x, y) = (p('v'), p('x'), p('y'));
        let refs = |p: &StorePath| if *p == x { vec![v.clone()] } else { vec![] };
        assert_eq!(serial_order(&[x.clone(), y.clone()], &[&x, &y], refs), [&y, &x]);
        // s → r, r → s (a cycle, not failed here): neither runs; both come, in todo order.
        let (s, t) = (p('s'), p('r'));
        let refs = |p: &StorePath| if *p == s { vec![t.clone()] } else { vec![s.clone()] };
        assert_eq!(serial_order(std::slice::from_ref(&s), &[&s, &t], refs), [&s, &t]);
    }
}

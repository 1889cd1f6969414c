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
//! The order ([`serial_order`]) is the one a single slot given first come first served
//! yields: the paths whose references are valid, in goal-key order; each path done makes
//! the paths waiting only on it ready, after those already waiting.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::watch;

use guix_formats::StorePath;
use guix_ipc::job::JobContext;
use guix_ipc::substituter::SubstituteEvent;

/// `todo` (in goal-key order) as one slot would run it; `refs` gives a path's references.
pub fn serial_order<'a>(todo: &[&'a StorePath], refs: impl Fn(&StorePath) -> Vec<StorePath>) -> Vec<&'a StorePath> {
    let set: HashSet<&StorePath> = todo.iter().copied().collect();
    let deps: Vec<Vec<StorePath>> =
        todo.iter().map(|p| refs(p).into_iter().filter(|r| r != *p && set.contains(r)).collect()).collect();
    let mut done: HashSet<&StorePath> = HashSet::new();
    let mut queued = vec![false; todo.len()];
    let mut queue = VecDeque::new();
    let mut out = Vec::with_capacity(todo.len());
    let enqueue_ready = |done: &HashSet<&StorePath>, queued: &mut Vec<bool>, queue: &mut VecDeque<usize>| {
        for (i, d) in deps.iter().enumerate() {
            if !queued[i] && d.iter().all(|r| done.contains(r)) {
                queued[i] = true;
                queue.push_back(i);
            }
        }
    };
    enqueue_ready(&done, &mut queued, &mut queue);
    while let Some(i) = queue.pop_front() {
        done.insert(todo[i]);
        out.push(todo[i]);
        enqueue_ready(&done, &mut queued, &mut queue);
    }
    // Paths in a cycle were failed before; anything left goes last.
    out.extend(todo.iter().enumerate().filter(|(i, _)| !queued[*i]).map(|(_, p)| *p));
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
    fn one_slot_order_puts_dependents_after_those_already_waiting() {
        // top → b → a; top → d; c alone. Goal-key order: a b c d top.
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
        let todo = [&a, &b, &c, &d, &top];
        let order = serial_order(&todo, refs);
        assert_eq!(order, [&a, &c, &d, &b, &top]);
    }
}

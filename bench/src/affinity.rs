//! CPU affinity for the pinned QueryPathInfo figures: the load generator's thread alone on
//! [`CLIENT_CPU`], every thread of the daemon's process tree on [`DAEMON_CPU`], and the
//! previous masks put back afterwards so later scenarios run unpinned.
//!
//! Affinity is per thread. A forked process or a new thread inherits the mask of the thread that
//! created it, so pinning the daemon tree before the connections are opened covers the C++
//! daemon's per-connection workers; [`PinnedDaemon::repin`] afterwards catches anything the
//! scan raced with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use crate::procmem::daemon_tree_threads;

/// Where the load generator runs in the pinned figures.
pub const CLIENT_CPU: usize = 0;
/// Where every thread of the daemon's tree runs in the pinned figures.
pub const DAEMON_CPU: usize = 1;

fn this_thread() -> Pid {
    Pid::from_raw(0)
}

/// A mask holding only `cpu`.
fn only(cpu: usize) -> Result<CpuSet, String> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    Ok(set)
}

/// Checks that this process may run on both [`CLIENT_CPU`] and [`DAEMON_CPU`], so the
/// pinned figures mean what their labels say.
pub fn check_cpus() -> Result<(), String> {
    let mine = sched_getaffinity(this_thread()).map_err(|e| format!("sched_getaffinity: {e}"))?;
    let usable = (0..CpuSet::count()).filter(|&c| mine.is_set(c).unwrap_or(false)).count();
    for cpu in [CLIENT_CPU, DAEMON_CPU] {
        if !mine.is_set(cpu).unwrap_or(false) {
            return Err(format!(
                "needs CPUs {CLIENT_CPU} and {DAEMON_CPU}; CPU {cpu} is not among the {usable} this process may use"
            ));
        }
    }
    Ok(())
}

/// Pins the calling thread to `cpu`; returns its previous mask for [`restore_thread`].
pub fn pin_thread(cpu: usize) -> Result<CpuSet, String> {
    let before = sched_getaffinity(this_thread()).map_err(|e| format!("sched_getaffinity: {e}"))?;
    sched_setaffinity(this_thread(), &only(cpu)?)
        .map_err(|e| format!("pinning the load generator to CPU {cpu}: {e}"))?;
    Ok(before)
}

/// Gives the calling thread back the mask [`pin_thread`] returned.
pub fn restore_thread(mask: &CpuSet) -> Result<(), String> {
    sched_setaffinity(this_thread(), mask).map_err(|e| format!("restoring the load generator's affinity: {e}"))
}

/// Every thread of a session's daemon tree pinned to one CPU until dropped; dropping puts back
/// each thread's previous mask (threads that appeared while pinned, which inherited the pinned
/// mask, get the mask this process had when pinning started).
pub struct PinnedDaemon {
    state: PathBuf,
    cpu: CpuSet,
    saved: BTreeMap<u32, CpuSet>,
    fallback: CpuSet,
}

impl PinnedDaemon {
    /// Pins the tree of the session whose state directory is `state` to `cpu`.
    pub fn pin(state: &Path, cpu: usize) -> Result<PinnedDaemon, String> {
        let fallback = sched_getaffinity(this_thread()).map_err(|e| format!("sched_getaffinity: {e}"))?;
        let mut pinned = PinnedDaemon { state: state.to_owned(), cpu: only(cpu)?, saved: BTreeMap::new(), fallback };
        pinned.pin_new(true)?;
        Ok(pinned)
    }

    /// Pins the threads of the tree that are not pinned yet (e.g. workers forked since).
    pub fn repin(&mut self) -> Result<(), String> {
        self.pin_new(false)
    }

    /// Pins the threads not pinned yet, remembering what to restore: their own mask on the
    /// first pass; later, the fallback (their own mask is the pinned one they inherited).
    fn pin_new(&mut self, first: bool) -> Result<(), String> {
        for tid in daemon_tree_threads(&self.state)? {
            if self.saved.contains_key(&tid) {
                continue;
            }
            let pid = Pid::from_raw(tid as i32);
            let before = match first {
                false => self.fallback,
                true => match sched_getaffinity(pid) {
                    Ok(m) => m,
                    Err(Errno::ESRCH) => continue,
                    Err(e) => return Err(format!("sched_getaffinity of daemon thread {tid}: {e}")),
                },
            };
            match sched_setaffinity(pid, &self.cpu) {
                Ok(()) => {}
                Err(Errno::ESRCH) => continue,
                Err(e) => return Err(format!("pinning daemon thread {tid}: {e}")),
            }
            self.saved.insert(tid, before);
        }
        Ok(())
    }
}

impl Drop for PinnedDaemon {
    fn drop(&mut self) {
        // Only the tree's current threads: exited ones need nothing (and their IDs may be
        // reused by now). Setting a mask cannot fail for root but on a thread exiting meanwhile.
        for tid in daemon_tree_threads(&self.state).unwrap_or_default() {
            let mask = self.saved.get(&tid).unwrap_or(&self.fallback);
            let _ = sched_setaffinity(Pid::from_raw(tid as i32), mask);
        }
    }
}

//! Memory of a rig session's daemon: the sum of `Pss` over the daemon's process tree.
//!
//! Which processes count: the daemon process itself and all its descendants. The C++ daemon
//! forks one worker per connection, ours is a supervisor with component children; both are
//! covered. The daemon is found through the session's state directory: `session.pid` is the
//! host PID of the session's PID-namespace init, `daemon.pid` the daemon's PID *inside* that
//! namespace. We scan `/proc` for processes in that PID namespace (`/proc/P/ns/pid`), take the
//! one whose innermost `NSpid` is the daemon's, and walk `PPid` links down from it. Processes
//! that exit during the scan are skipped. Pss (proportional set size) splits shared pages
//! between the processes sharing them, so the sum is what the tree costs the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Pss of the daemon's process tree.
#[derive(Debug, Clone, Copy)]
pub struct TreeMemory {
    pub pss_kib: u64,
    pub processes: usize,
}

fn read_pid(path: &Path) -> Result<u32, String> {
    let s = fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    s.trim().parse().map_err(|_| format!("{} does not hold a PID", path.display()))
}

fn status_fields(pid: u32) -> Option<(u32, u32)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut ppid = None;
    let mut inner = None;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("PPid:") {
            ppid = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("NSpid:") {
            inner = v.split_whitespace().last().and_then(|p| p.parse().ok());
        }
    }
    Some((ppid?, inner?))
}

fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The host PIDs of the daemon's process tree of the session whose state directory is `state`.
fn daemon_tree(state: &Path) -> Result<BTreeSet<u32>, String> {
    let init = read_pid(&state.join("session.pid"))?;
    let daemon_inner = read_pid(&state.join("daemon.pid"))?;
    let ns = fs::read_link(format!("/proc/{init}/ns/pid")).map_err(|e| format!("session init {init}: {e}"))?;
    // parent → children, for processes in the session's PID namespace.
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut root = None;
    let entries = fs::read_dir("/proc").map_err(|e| format!("reading /proc: {e}"))?;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if fs::read_link(format!("/proc/{pid}/ns/pid")).ok().as_ref() != Some(&ns) {
            continue;
        }
        let Some((ppid, inner)) = status_fields(pid) else { continue };
        children.entry(ppid).or_default().push(pid);
        if inner == daemon_inner {
            root = Some(pid);
        }
    }
    let root = root.ok_or_else(|| format!("no process with PID {daemon_inner} in the session's namespace"))?;
    let mut tree = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if tree.insert(p) {
            todo.extend(children.get(&p).into_iter().flatten().copied());
        }
    }
    Ok(tree)
}

/// CPU time used so far by each live thread of the daemon's tree, in nanoseconds (first field
/// of `/proc/P/task/T/schedstat`), keyed by host thread id: see [`CpuSnapshot::used_since`].
///
/// Not `utime + stime` from `/proc/P/stat`: those are whole clock ticks (10 ms) per process,
/// and with one C++ worker per connection the truncation (up to a tick per process, 256
/// processes) swamped the few milliseconds each worker uses in a run.
pub struct CpuSnapshot(BTreeMap<u32, u64>);

impl CpuSnapshot {
    pub fn take(state: &Path) -> Result<CpuSnapshot, String> {
        let mut threads = BTreeMap::new();
        for p in daemon_tree(state)? {
            let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else { continue };
            for t in tasks.flatten() {
                let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
                let Ok(stat) = fs::read_to_string(t.path().join("schedstat")) else { continue };
                if let Some(ns) = stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()) {
                    threads.insert(tid, ns);
                }
            }
        }
        Ok(CpuSnapshot(threads))
    }

    /// Seconds of CPU the tree used since `before`: per thread alive now, its time minus its
    /// time then (all of it for a thread born since). A thread that exited in between counts
    /// nothing (its time is gone with it), instead of taking its whole past away from the sum,
    /// as a plain total would: a C++ worker of an earlier connection exiting during the run
    /// made the figure too low. Callers keep their connections (and so the C++ workers) open
    /// until after the second snapshot.
    pub fn used_since(&self, before: &CpuSnapshot) -> f64 {
        let ns: u64 = self.0.iter().map(|(tid, now)| now.saturating_sub(before.0.get(tid).copied().unwrap_or(0))).sum();
        ns as f64 / 1e9
    }
}

/// The host thread IDs of every thread of every process of the daemon's tree (what CPU
/// affinity applies to: `sched_setaffinity` on a PID changes only that one thread). Threads and
/// processes that exit during the scan are skipped.
pub fn daemon_tree_threads(state: &Path) -> Result<BTreeSet<u32>, String> {
    let mut tids = BTreeSet::new();
    for p in daemon_tree(state)? {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else { continue };
        tids.extend(tasks.flatten().filter_map(|t| t.file_name().to_str().and_then(|s| s.parse::<u32>().ok())));
    }
    Ok(tids)
}

/// Measures the daemon tree of the session whose state directory is `state`.
pub fn daemon_tree_memory(state: &Path) -> Result<TreeMemory, String> {
    let tree = daemon_tree(state)?;
    let mut pss = 0;
    let mut processes = 0;
    for p in tree {
        if let Some(kib) = pss_kib(p) {
            pss += kib;
            processes += 1;
        }
    }
    Ok(TreeMemory { pss_kib: pss, processes })
}

/// Seconds of CPU of the children the daemon's tree has reaped so far (`cutime + cstime` of
/// `/proc/P/stat`, in clock ticks): a C++ worker's time once the client disconnected and the
/// daemon waited for it, which no [`CpuSnapshot`] of live threads sees. Whole ticks (10 ms):
/// for runs of seconds, not for single operations.
pub fn reaped_cpu(state: &Path) -> Result<f64, String> {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let mut ticks = 0u64;
    for p in daemon_tree(state)? {
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // Fields after the command name (which may hold spaces): state is field 3, so field
        // N is at index N - 3; cutime is 16, cstime 17.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f.get(13..15).into_iter().flatten().filter_map(|v| v.parse::<u64>().ok()).sum::<u64>();
    }
    Ok(ticks as f64 / tick)
}

/// How many processes the daemon's tree has now.
pub fn daemon_tree_size(state: &Path) -> Result<usize, String> {
    Ok(daemon_tree(state)?.len())
}

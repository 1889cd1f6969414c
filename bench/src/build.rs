//! The `build-derivations` scenario: `guix build -d --no-grafts PACKAGE` with the real `guix`
//! client, what every `guix` command that computes derivations pays. The client computes the
//! package graph and adds every derivation and builder script it needs (AddTextToStore, about
//! 3,400 items for emacs, 2,222 of them `.drv`) and the files it refers to (AddToStore), over
//! one connection, each addition waiting for the previous one's reply.
//!
//! Each repetition runs once against the C++ daemon and once against ours, alternating, each
//! in a fresh session (a fresh store: in a store that already has them, the additions are
//! only validity checks), so a change of the machine's load hits both about equally. Per run:
//! the wall time of the `guix` command, and the CPU the daemon's process tree used (its live
//! threads' `schedstat` plus the children it reaped: the C++ worker of the connection exits
//! when the client does). The two daemons must print the same derivation.

use std::path::Path;
use std::time::{Duration, Instant};

use guix_tests::{DaemonKind, Rig, Session, SessionOptions};

use crate::procmem::{daemon_tree_size, reaped_cpu, CpuSnapshot};
use crate::scenarios::median;

/// The package of a full run and of `--quick`.
pub const PACKAGE: &str = "emacs";
pub const QUICK_PACKAGE: &str = "hello";

/// One run against one daemon.
#[derive(Debug, Clone)]
pub struct BuildRun {
    /// Wall time of `guix build -d`, seconds.
    pub wall: f64,
    /// CPU of the daemon's process tree during it, seconds.
    pub daemon_cpu: f64,
    /// Items in the store afterwards.
    pub items: f64,
    /// What the command printed (the derivation).
    pub drv: String,
}

type Res<T> = Result<T, String>;

/// Runs `guix build -d --no-grafts package` in a fresh session of `kind`.
pub fn run_once(rig: &Rig, kind: &(DaemonKind, SessionOptions), package: &str) -> Res<BuildRun> {
    let session =
        Session::start_with(rig, kind.0.clone(), &kind.1).map_err(|e| format!("daemon did not start: {e}"))?;
    let state = session.state_dir().to_owned();
    let processes = daemon_tree_size(&state)?;
    let (cpu0, reaped0) = (CpuSnapshot::take(&state)?, reaped_cpu(&state)?);
    let start = Instant::now();
    let out = session.exec_guix(&["build", "-d", "--no-grafts", package]).map_err(|e| e.to_string())?;
    let wall = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("guix build -d {package}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    // The C++ worker must be reaped before its time shows in the daemon's `cutime`.
    wait_until(|| daemon_tree_size(&state).map(|n| n <= processes).unwrap_or(true), Duration::from_secs(10));
    let live = CpuSnapshot::take(&state)?.used_since(&cpu0);
    let reaped = reaped_cpu(&state)? - reaped0;
    let items = count_items(&session.store_dir_on_host())? as f64;
    let drv = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    drop(session);
    Ok(BuildRun { wall, daemon_cpu: live + reaped, items, drv })
}

fn wait_until(mut cond: impl FnMut() -> bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !cond() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Store items (names not starting with a dot, lock files aside).
fn count_items(store: &Path) -> Res<usize> {
    let dir = std::fs::read_dir(store).map_err(|e| format!("reading {}: {e}", store.display()))?;
    Ok(dir
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| !n.starts_with('.') && !n.ends_with(".lock")))
        .count())
}

pub type Kind = Result<(DaemonKind, SessionOptions), String>;

/// `reps` repetitions, each a C++ run (`runs[0]`) and one of ours (`runs[1]`), who goes first
/// alternating (or only one of them with `only`). After each pair, `pair(rep, c, o)` may print
/// it and return an error that replaces ours (the daemons disagree). Shared by the scenarios
/// that need a fresh session per run.
pub fn alternate_runs<T>(
    rig: &Rig,
    cxx: &Kind,
    ours: &Kind,
    only: Option<&str>,
    reps: usize,
    mut run: impl FnMut(&Rig, &(DaemonKind, SessionOptions), usize) -> Res<T>,
    mut pair: impl FnMut(usize, &T, &T) -> Option<String>,
) -> [Vec<Res<T>>; 2] {
    let mut runs: [Vec<Res<T>>; 2] = [Vec::new(), Vec::new()];
    for rep in 0..reps {
        // Who goes first alternates too: the first run of a pair may find colder caches.
        let mut order = [(0, cxx, "cxx"), (1, ours, "ours")];
        if rep % 2 == 1 {
            order.reverse();
        }
        for (i, kind, name) in order {
            if only.is_some_and(|o| o != name) {
                runs[i].push(Err("skipped (--only)".into()));
                continue;
            }
            let r = kind.as_ref().map_err(Clone::clone).and_then(|k| run(rig, k, rep));
            runs[i].push(r);
        }
        if let (Some(Ok(c)), Some(Ok(o))) = (runs[0].last(), runs[1].last()) {
            if let Some(e) = pair(rep, c, o) {
                runs[1].push(Err(e));
            }
        }
    }
    runs
}

/// `p.reps` repetitions ([`alternate_runs`]); the medians of wall time, daemon CPU and items,
/// per daemon. Prints each pair's wall-time ratio on stderr as it goes. A failed run fails that
/// daemon's figures.
pub fn alternate(
    rig: &Rig,
    cxx: &Kind,
    ours: &Kind,
    only: Option<&str>,
    p: &crate::scenarios::Params,
) -> (Vec<Res<f64>>, Vec<Res<f64>>) {
    let runs = alternate_runs(
        rig,
        cxx,
        ours,
        only,
        p.reps,
        |rig, k, _| run_once(rig, k, p.package),
        |rep, c: &BuildRun, o: &BuildRun| {
            eprintln!(
                "guix-bench: build-derivations rep {}: C++ {:.2} s, ours {:.2} s ({:.2}x); daemon CPU {:.2} s / {:.2} s",
                rep + 1,
                c.wall,
                o.wall,
                o.wall / c.wall,
                c.daemon_cpu,
                o.daemon_cpu
            );
            (c.drv != o.drv).then(|| format!("the daemons disagree: C++ printed `{}', ours `{}'", c.drv, o.drv))
        },
    );
    let medians = |v: &[Res<BuildRun>]| -> Vec<Res<f64>> {
        let field =
            |f: fn(&BuildRun) -> f64| median(v.iter().map(|r| r.as_ref().map(f).map_err(Clone::clone)).collect());
        vec![field(|r| r.wall), field(|r| r.daemon_cpu), field(|r| r.items)]
    };
    (medians(&runs[0]), medians(&runs[1]))
}

//! The `gc` scenario: a garbage collection of a store of many small paths, half of them dead,
//! and what other clients see while it runs.
//!
//! Populating (not timed): `--paths N` (default [`PATHS`], [`QUICK_PATHS`] with `--quick`)
//! text items added with AddTextToStore over [`WRITERS`] connections, in groups of
//! [`GROUP`]: [`GROUP`] − 1 leaves and a top item referring to all of them. The top of every
//! other group is rooted by a symlink in `/var/guix/gcroots/bench-gc/`; the other groups are
//! dead once the writers' connections close. Both daemons get the same items.
//!
//! Measured, in one session per daemon (one repetition: populating is most of the cost):
//! * idle: for [`IDLE`], one connection issues QueryPathInfo of live items, one every
//!   [`PACE`], and another AddTextToStore of fresh texts (kept as temp roots of that
//!   connection: live), one every [`PACE`]; their p99 latencies. Paced, not back to back: two
//!   loops flat out would take both cores of a small machine and measure how the collector
//!   shares the CPU with a saturating load (ours runs at a lower priority, so that serving
//!   clients wins), not what a client waits for;
//! * then CollectGarbage (delete dead, no limit) through the client library on a third
//!   connection, timed, while both loops go on: their p99 latencies during the collection
//!   (operations started while it ran), and the longest AddTextToStore;
//! * the number of paths the collection deleted (it must be the dead half, or the figure is
//!   not comparable: a mismatch is reported as an error).
//!
//! The C++ daemon holds its global GC lock for the whole collection, so its additions wait for
//! it: its longest addition is about its collection time.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guix_client::{gc_options, DaemonClient};
use guix_formats::store_path::StorePath;
use guix_formats::worker::GcAction;
use guix_tests::Session;

use crate::scenarios::Figure;

type Res<T> = Result<T, String>;

pub const PATHS: usize = 100_000;
pub const QUICK_PATHS: usize = 2_000;
const GROUP: usize = 50;
const WRITERS: usize = 4;
/// How long the idle latencies are sampled: about 5,000 operations per loop, so that the idle
/// p99 (the ratio's denominator) is the 50th longest, not the 15th (3 s moved it between 1.3
/// and 6.5 ms from run to run on the 2-core VM).
const IDLE: Duration = Duration::from_secs(10);
/// One probe operation per loop every this long (see the module docs).
const PACE: Duration = Duration::from_millis(2);

fn pacer() -> tokio::time::Interval {
    let mut i = tokio::time::interval(PACE);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// The figures of [`run`], in its order.
pub fn figures(paths: usize) -> Vec<Figure> {
    let f = |label: String, unit, higher_is_better| Figure { label, unit, higher_is_better };
    vec![
        f(format!("CollectGarbage, {paths} paths, half dead"), "s", false),
        f("  paths deleted (must be the dead half)".into(), "paths", true),
        f("QueryPathInfo p99, idle".into(), "µs", false),
        f("QueryPathInfo p99, during the collection".into(), "µs", false),
        f("  QueryPathInfo p99 during / idle (target ≤ 2)".into(), "x", false),
        f("AddTextToStore p99, idle".into(), "µs", false),
        f("AddTextToStore p99, during the collection".into(), "µs", false),
        f("  AddTextToStore p99 during / idle (target ≤ 2)".into(), "x", false),
        f("  longest AddTextToStore during it (target ≤ 100)".into(), "ms", false),
    ]
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Adds the groups; returns the live items (for QueryPathInfo) and how many items are dead.
async fn populate(session: &Session, paths: usize) -> Res<(Vec<StorePath>, usize)> {
    let groups = paths / GROUP;
    let roots = session.var_guix_on_host().join("gcroots").join("bench-gc");
    std::fs::create_dir_all(&roots).map_err(|e| format!("creating {}: {e}", roots.display()))?;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let socket = session.socket_path().to_owned();
        let roots = roots.clone();
        writers.push(tokio::spawn(async move {
            let mut c = DaemonClient::connect(&socket).await.map_err(err)?;
            let none = BTreeSet::new();
            let mut live = Vec::new();
            for g in (w..groups).step_by(WRITERS) {
                let mut leaves = BTreeSet::new();
                for i in 0..GROUP - 1 {
                    let text = format!("guix-bench gc group {g} leaf {i}\n");
                    leaves.insert(c.add_text_to_store("bench-gc-leaf", text.as_bytes(), &none).await.map_err(err)?);
                }
                let text = format!("guix-bench gc group {g} top\n");
                let top = c.add_text_to_store("bench-gc-top", text.as_bytes(), &leaves).await.map_err(err)?;
                if g % 2 == 0 {
                    let link = roots.join(g.to_string());
                    std::os::unix::fs::symlink(format!("/gnu/store/{top}"), &link)
                        .map_err(|e| format!("symlink {}: {e}", link.display()))?;
                    live.extend(leaves);
                    live.push(top);
                }
            }
            Ok::<_, String>(live)
        }));
    }
    let mut live = Vec::new();
    for w in writers {
        live.extend(w.await.map_err(err)??);
    }
    let dead = groups * GROUP - live.len();
    Ok((live, dead))
}

/// Latencies of one loop, split by whether the operation started while the collection ran.
#[derive(Default)]
struct Samples {
    idle: Vec<Duration>,
    during: Vec<Duration>,
}

/// The `q` quantile of `v` (sorted), none when empty.
fn quantile(v: &[Duration], q: f64) -> Option<Duration> {
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len().max(1)) - 1;
    v.get(i).copied()
}

fn p99(v: &mut [Duration]) -> Res<f64> {
    v.sort();
    quantile(v, 0.99).map(|d| d.as_secs_f64() * 1e6).ok_or_else(|| "no samples".into())
}

/// The median, p90, p99, p99.9 and longest of `v`, in µs, for the log.
fn spread(v: &mut [Duration]) -> String {
    v.sort();
    let at = |q| quantile(v, q).map_or(0, |d| d.as_micros());
    if v.is_empty() {
        return "no samples".into();
    }
    format!("p50 {} p90 {} p99 {} p99.9 {} max {} µs", at(0.5), at(0.9), at(0.99), at(0.999), at(1.0))
}

/// Phases of the run, seen by the loops.
struct Phase {
    collecting: AtomicBool,
    done: AtomicBool,
}

/// Records one latency in the phase it started in.
fn record(samples: &Mutex<Samples>, during: bool, took: Duration) {
    let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
    if during {
        s.during.push(took)
    } else {
        s.idle.push(took)
    }
}

/// QueryPathInfo of live items back to back until the run is over.
async fn qpi_loop(
    mut c: DaemonClient,
    live: Vec<StorePath>,
    phase: Arc<Phase>,
    samples: Arc<Mutex<Samples>>,
) -> Res<()> {
    let mut n = 0usize;
    let mut pace = pacer();
    while !phase.done.load(Ordering::SeqCst) {
        pace.tick().await;
        let path = &live[(n * 7919) % live.len()];
        let during = phase.collecting.load(Ordering::SeqCst);
        let start = Instant::now();
        match c.query_path_info(path).await.map_err(err)? {
            Some(_) => {}
            None => return Err(format!("live item {path} is not valid")),
        }
        record(&samples, during, start.elapsed());
        n += 1;
    }
    Ok(())
}

/// AddTextToStore of fresh texts back to back until the run is over.
async fn add_loop(mut c: DaemonClient, phase: Arc<Phase>, samples: Arc<Mutex<Samples>>) -> Res<()> {
    let none = BTreeSet::new();
    let mut n = 0usize;
    let mut pace = pacer();
    while !phase.done.load(Ordering::SeqCst) {
        pace.tick().await;
        let text = format!("guix-bench gc addition {n}\n");
        let during = phase.collecting.load(Ordering::SeqCst);
        let start = Instant::now();
        c.add_text_to_store("bench-gc-added", text.as_bytes(), &none).await.map_err(err)?;
        record(&samples, during, start.elapsed());
        n += 1;
    }
    Ok(())
}

/// The scenario against one session: every figure of [`figures`], in order.
pub async fn run(session: &Session, paths: usize) -> Res<Vec<Res<f64>>> {
    let (live, dead) = populate(session, paths).await?;
    if live.is_empty() {
        return Err(format!("--paths {paths}: too few paths for one live group of {GROUP}"));
    }
    let socket = session.socket_path();
    let phase = Arc::new(Phase { collecting: AtomicBool::new(false), done: AtomicBool::new(false) });
    let (qpi, add) = (Arc::new(Mutex::new(Samples::default())), Arc::new(Mutex::new(Samples::default())));
    let q = DaemonClient::connect(socket).await.map_err(err)?;
    let a = DaemonClient::connect(socket).await.map_err(err)?;
    let mut gc = DaemonClient::connect(socket).await.map_err(err)?;
    let loops = [
        tokio::spawn(qpi_loop(q, live, phase.clone(), qpi.clone())),
        tokio::spawn(add_loop(a, phase.clone(), add.clone())),
    ];
    tokio::time::sleep(IDLE).await;
    phase.collecting.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let collected = gc.collect_garbage(&gc_options(GcAction::DeleteDead, BTreeSet::new())).await;
    let took = start.elapsed().as_secs_f64();
    phase.done.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.map_err(err)??;
    }
    let collected = collected.map_err(err)?;
    let deleted = collected.paths.len();
    let mut qpi = std::mem::take(&mut *qpi.lock().unwrap_or_else(|p| p.into_inner()));
    let mut add = std::mem::take(&mut *add.lock().unwrap_or_else(|p| p.into_inner()));
    let longest = add.during.iter().max().map(|d| d.as_secs_f64() * 1e3).ok_or("no addition during the collection");
    let (qi, qd, ai, ad) = (p99(&mut qpi.idle), p99(&mut qpi.during), p99(&mut add.idle), p99(&mut add.during));
    let ratio = |d: &Res<f64>, i: &Res<f64>| match (d, i) {
        (Ok(d), Ok(i)) if *i > 0.0 => Ok(d / i),
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        _ => Err("idle p99 is 0".into()),
    };
    eprintln!(
        "guix-bench: gc: {deleted} paths deleted ({dead} dead); samples: QueryPathInfo {} idle, {} during; \
         AddTextToStore {} idle, {} during",
        qpi.idle.len(),
        qpi.during.len(),
        add.idle.len(),
        add.during.len()
    );
    for (name, v) in [("QueryPathInfo", &mut qpi), ("AddTextToStore", &mut add)] {
        eprintln!("guix-bench: gc: {name} idle: {}; during: {}", spread(&mut v.idle), spread(&mut v.during));
    }
    // Where our collection's time went (its own summary lines in the daemon log).
    for line in session.daemon_log().lines().filter(|l| l.starts_with("guix-gc: ")) {
        eprintln!("guix-bench: gc: daemon log: {line}");
    }
    let time = if deleted >= dead {
        Ok(took)
    } else {
        Err(format!("deleted {deleted} paths, not the {dead} dead ones: not comparable"))
    };
    Ok(vec![
        time,
        Ok(deleted as f64),
        qi.clone(),
        qd.clone(),
        ratio(&qd, &qi),
        ai.clone(),
        ad.clone(),
        ratio(&ad, &ai),
        longest.map_err(str::to_owned),
    ])
}

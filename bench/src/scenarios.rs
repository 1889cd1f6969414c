//! The workloads. Each scenario yields one or more figures; [`run`] measures every figure
//! `reps` times in one session and returns the medians.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guix_client::{ClientError, DaemonClient};
use guix_formats::store_path::StorePath;
use guix_tests::Session;
use nix::sched::CpuSet;

use crate::affinity::{check_cpus, pin_thread, restore_thread, PinnedDaemon, CLIENT_CPU, DAEMON_CPU};
use crate::procmem::{daemon_tree_memory, CpuSnapshot};
use crate::qpi::{drive, Workload};
use crate::tree::{hash_and_copy, sync, Tree, TreeShape};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Connect + handshake, sequentially and from concurrent tasks.
    Connect,
    /// AddTextToStore of distinct small texts on one connection.
    AddText,
    /// QueryPathInfo over a pre-populated store at 1, 16 and 256 concurrent connections.
    QueryPathInfo,
    /// Pss of the daemon's process tree with no connection and with 256 idle ones.
    IdleMemory,
    /// AddToStore of a big tree (1 GiB), and the floor: hashing and copying the same tree.
    AddTree,
    /// `guix build -d --no-grafts PACKAGE` with the real client, the daemons alternating
    /// (see [`crate::build`]).
    BuildDerivations,
    /// 200 trivial independent builds with `--max-jobs=2` (see [`crate::builds`]).
    TrivialBuilds,
    /// A collection of a store of small paths, half dead, and the latencies other clients see
    /// meanwhile (see [`crate::gc`]).
    Gc,
    /// Substitution from one server: a closure of small paths (ratio to the C++ daemon), one
    /// big zstd path (ratio to `curl | zstd -d`) (see [`crate::subst`]).
    Substitute,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::Connect,
        Scenario::AddText,
        Scenario::QueryPathInfo,
        Scenario::IdleMemory,
        Scenario::AddTree,
        Scenario::BuildDerivations,
        Scenario::TrivialBuilds,
        Scenario::Gc,
        Scenario::Substitute,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::AddText => "add-text",
            Scenario::QueryPathInfo => "query-path-info",
            Scenario::IdleMemory => "idle-memory",
            Scenario::AddTree => "add-tree",
            Scenario::BuildDerivations => "build-derivations",
            Scenario::TrivialBuilds => "trivial-builds",
            Scenario::Gc => "gc",
            Scenario::Substitute => "substitute",
        }
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn figures(self, p: &Params) -> Vec<Figure> {
        let rate = |label: String, unit| Figure { label, unit, higher_is_better: true };
        match self {
            Scenario::Connect => vec![
                rate(format!("connect+handshake, sequential ({})", p.connects), "conn/s"),
                rate(format!("connect+handshake, {} concurrent ({})", CONNECT_CONCURRENCY, p.connects), "conn/s"),
            ],
            Scenario::AddText => vec![
                rate(format!("AddTextToStore, 1 connection ({})", p.texts), "op/s"),
                Figure { label: "  daemon CPU per AddTextToStore".into(), unit: "µs", higher_is_better: false },
            ],
            Scenario::QueryPathInfo => {
                let label = |q: &Qpi| match q.pinned {
                    false => format!("{} conn", q.conns),
                    true => format!("{} conn, client cpu{CLIENT_CPU} / daemon cpu{DAEMON_CPU}", q.conns),
                };
                let per_op = |what: &str, q: &Qpi| Figure {
                    label: format!(
                        "  {what} CPU per QueryPathInfo, {} conn{}",
                        q.conns,
                        if q.pinned { ", pinned" } else { "" }
                    ),
                    unit: "µs",
                    higher_is_better: false,
                };
                QPI_RUNS
                    .iter()
                    .map(|q| {
                        let mut l = format!("QueryPathInfo, {}", label(q));
                        if !q.pinned {
                            l += &format!(" ({} paths, {:.1}s)", p.populate, p.duration.as_secs_f64());
                        }
                        rate(l, "op/s")
                    })
                    .chain(QPI_RUNS.iter().map(|q| per_op("daemon", q)))
                    .chain(QPI_RUNS.iter().map(|q| per_op("client", q)))
                    .collect()
            }
            Scenario::IdleMemory => vec![
                Figure { label: "daemon Pss, no connection".into(), unit: "MiB", higher_is_better: false },
                Figure {
                    label: format!("daemon Pss, {IDLE_CONNECTIONS} idle connections"),
                    unit: "MiB",
                    higher_is_better: false,
                },
            ],
            Scenario::AddTree => vec![
                Figure { label: format!("AddToStore, {}", p.tree.describe()), unit: "s", higher_is_better: false },
                Figure { label: FLOOR_LABEL.into(), unit: "s", higher_is_better: false },
            ],
            Scenario::TrivialBuilds => vec![
                Figure {
                    label: format!("{} trivial builds, --max-jobs=2", p.builds),
                    unit: "s",
                    higher_is_better: false,
                },
                Figure {
                    label: "  own time per build (1 job): slot -> exec".into(),
                    unit: "ms",
                    higher_is_better: false,
                },
                Figure {
                    label: "  own time per build (1 job): exit -> valid".into(),
                    unit: "ms",
                    higher_is_better: false,
                },
            ],
            Scenario::Gc => crate::gc::figures(p.gc_paths),
            Scenario::Substitute => {
                let (paths, mib) = if p.quick {
                    (crate::subst::QUICK_PATHS, crate::subst::QUICK_BIG_MIB)
                } else {
                    (crate::subst::PATHS, crate::subst::BIG_MIB)
                };
                crate::subst::labels(paths, mib)
                    .into_iter()
                    .map(|label| Figure { label, unit: "s", higher_is_better: false })
                    .collect()
            }
            Scenario::BuildDerivations => vec![
                Figure {
                    label: format!("guix build -d --no-grafts {}", p.package),
                    unit: "s",
                    higher_is_better: false,
                },
                Figure { label: "  daemon CPU during it".into(), unit: "s", higher_is_better: false },
                Figure {
                    label: "  store items after it (same for both)".into(),
                    unit: "items",
                    higher_is_better: true,
                },
            ],
        }
    }
}

pub struct Figure {
    pub label: String,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

const CONNECT_CONCURRENCY: usize = 16;
/// One QueryPathInfo run: how many connections, and whether the load generator and the
/// daemon are pinned to separate CPUs.
struct Qpi {
    conns: usize,
    pinned: bool,
}

/// The QueryPathInfo runs, in order (the figures are rates, then daemon CPU, then client CPU,
/// each in this order).
const QPI_RUNS: [Qpi; 5] = [
    Qpi { conns: 1, pinned: false },
    Qpi { conns: 16, pinned: false },
    Qpi { conns: 256, pinned: false },
    Qpi { conns: 16, pinned: true },
    Qpi { conns: 256, pinned: true },
];
const IDLE_CONNECTIONS: usize = 256;
/// The label of the floor figure of [`Scenario::AddTree`].
pub const FLOOR_LABEL: &str = "  floor: sha256 + copy of the same tree";

/// Sizes of the workloads.
pub struct Params {
    pub reps: usize,
    pub connects: usize,
    pub texts: usize,
    pub populate: usize,
    pub duration: Duration,
    pub tree: TreeShape,
    /// The package of [`Scenario::BuildDerivations`].
    pub package: &'static str,
    /// The derivations of [`Scenario::TrivialBuilds`].
    pub builds: usize,
    /// The store size of [`Scenario::Gc`] (`--paths`).
    pub gc_paths: usize,
    /// `--quick` (the sizes of [`Scenario::Substitute`]).
    pub quick: bool,
}

impl Params {
    pub fn new(quick: bool, reps: Option<usize>) -> Params {
        if quick {
            Params {
                reps: reps.unwrap_or(3),
                connects: 64,
                texts: 100,
                populate: 200,
                duration: Duration::from_millis(300),
                tree: TreeShape { dirs: 2, files_per_dir: 8, file_size: 4 << 20 },
                package: crate::build::QUICK_PACKAGE,
                builds: crate::builds::QUICK_BUILDS,
                gc_paths: crate::gc::QUICK_PATHS,
                quick: true,
            }
        } else {
            Params {
                reps: reps.unwrap_or(5),
                connects: 400,
                texts: 1000,
                populate: 1000,
                duration: Duration::from_secs(2),
                tree: TreeShape { dirs: 4, files_per_dir: 64, file_size: 4 << 20 },
                package: crate::build::PACKAGE,
                builds: crate::builds::BUILDS,
                gc_paths: crate::gc::PATHS,
                quick: false,
            }
        }
    }
}

type Res<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Connects, retrying while the daemon's listen backlog is full (a non-blocking connect to a
/// Unix socket fails with EAGAIN then, where a blocking one would wait).
async fn connect(socket: &Path) -> Res<DaemonClient> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match DaemonClient::connect(socket).await {
            Ok(c) => return Ok(c),
            Err(ClientError::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => return Err(err(e)),
        }
    }
}

/// The median of the samples, or the first failure among them.
pub fn median(v: Vec<Res<f64>>) -> Res<f64> {
    let mut v = v.into_iter().collect::<Res<Vec<f64>>>()?;
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    })
}

/// Measures every figure of `scenario` `p.reps` times against `session`; returns the medians.
/// A failure of the whole scenario is `Err`; a figure that could not be measured (e.g. the
/// pinned ones on a one-CPU machine) is an `Err` in its place.
pub async fn run(scenario: Scenario, session: &Session, p: &Params, tree: Option<&Tree>) -> Res<Vec<Res<f64>>> {
    if scenario == Scenario::Gc {
        // One repetition: a second collection of the same store would find nothing dead.
        return crate::gc::run(session, p.gc_paths).await;
    }
    let socket = session.socket_path();
    let n = scenario.figures(p).len();
    let mut samples: Vec<Vec<Res<f64>>> = vec![Vec::new(); n];
    let work = if scenario == Scenario::QueryPathInfo {
        let paths = populate(socket, p.populate).await?;
        Some(Arc::new(Workload::learn(connect(socket).await?, &paths).await?))
    } else {
        None
    };
    for rep in 0..p.reps {
        let one: Vec<Res<f64>> = match scenario {
            Scenario::Connect => vec![
                Ok(connect_rate(socket, p.connects, 1).await?),
                Ok(connect_rate(socket, p.connects, CONNECT_CONCURRENCY).await?),
            ],
            Scenario::AddText => {
                let (rate, cpu_us) = add_text_rate(socket, session.state_dir(), p.texts, rep).await?;
                vec![Ok(rate), Ok(cpu_us)]
            }
            Scenario::QueryPathInfo => {
                let work = work.as_ref().ok_or("the workload was not learnt")?;
                let mut runs = Vec::new();
                for q in &QPI_RUNS {
                    let r = qpi_rate(socket, session.state_dir(), work, q, p.duration).await;
                    // An unpinned run failing fails the scenario; a pinned one only its own
                    // figures (e.g. where there is no second CPU).
                    runs.push(if q.pinned { r } else { Ok(r?) });
                }
                let field =
                    |f: fn(&QpiSample) -> f64| runs.iter().map(move |r| r.as_ref().map(f).map_err(Clone::clone));
                field(|s| s.rate).chain(field(|s| s.daemon_us)).chain(field(|s| s.client_us)).collect()
            }
            Scenario::IdleMemory => idle_memory(socket, session.state_dir()).await?.into_iter().map(Ok).collect(),
            Scenario::AddTree => {
                let tree = tree.ok_or("the tree was not created")?;
                add_tree(socket, session, tree, rep).await?.into_iter().map(Ok).collect()
            }
            Scenario::BuildDerivations | Scenario::TrivialBuilds | Scenario::Gc | Scenario::Substitute => {
                return Err("measured by alternating sessions, not in one session".into())
            }
        };
        for (s, v) in samples.iter_mut().zip(one) {
            s.push(v);
        }
    }
    Ok(samples.into_iter().map(median).collect())
}

/// `n` connections with handshake, from `concurrency` tasks; connections per second.
async fn connect_rate(socket: &Path, n: usize, concurrency: usize) -> Res<f64> {
    let per_task = n.div_ceil(concurrency);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let socket = socket.to_owned();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                drop(connect(&socket).await?);
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(err)??;
    }
    Ok((per_task * concurrency) as f64 / start.elapsed().as_secs_f64())
}

/// `n` distinct AddTextToStore calls on one connection: operations per second, and the
/// daemon tree's CPU per operation in µs (the connection, and so the C++ worker, still open
/// at the second sample).
async fn add_text_rate(socket: &Path, state: &Path, n: usize, rep: usize) -> Res<(f64, f64)> {
    let mut c = connect(socket).await?;
    let none = BTreeSet::new();
    let cpu_before = CpuSnapshot::take(state)?;
    let start = Instant::now();
    for i in 0..n {
        let text = format!("guix-bench add-text rep {rep} item {i}\n");
        c.add_text_to_store("bench-text", text.as_bytes(), &none).await.map_err(err)?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let cpu = CpuSnapshot::take(state)?.used_since(&cpu_before);
    drop(c);
    Ok((rate, cpu / n as f64 * 1e6))
}

/// Adds `n` small text items (each referring to the previous one, so path infos have
/// references to send).
async fn populate(socket: &Path, n: usize) -> Res<Vec<StorePath>> {
    let mut c = connect(socket).await?;
    let mut out: Vec<StorePath> = Vec::with_capacity(n);
    for i in 0..n {
        let refs: BTreeSet<StorePath> = out.last().cloned().into_iter().collect();
        let text = format!("guix-bench populated item {i}\n");
        out.push(c.add_text_to_store("bench-item", text.as_bytes(), &refs).await.map_err(err)?);
    }
    Ok(out)
}

/// Above this share of the run spent on the CPU, the load generator may be what limits a
/// QueryPathInfo rate (a warning is printed).
const CLIENT_BOUND: f64 = 0.8;

/// One QueryPathInfo run's results.
struct QpiSample {
    /// Operations per second over all connections.
    rate: f64,
    /// The daemon tree's user + system time per operation, µs.
    daemon_us: f64,
    /// The load generator thread's CPU time per operation, µs.
    client_us: f64,
}

/// `q.conns` connections each issuing QueryPathInfo back to back for `duration`, all driven by
/// [`drive`] from one dedicated thread. The daemon's CPU time is its process tree's user +
/// system time over the run, connections already open (and kept open until after the second
/// sample: a C++ worker must not exit, taking its CPU time with it, before then).
///
/// Pinned: the daemon's tree is pinned to [`DAEMON_CPU`] before the connections are opened
/// (so C++ workers inherit it) and again after, the generator thread to [`CLIENT_CPU`]; all
/// masks are restored afterwards, also on failure.
async fn qpi_rate(socket: &Path, state: &Path, work: &Arc<Workload>, q: &Qpi, duration: Duration) -> Res<QpiSample> {
    let mut pinned = if q.pinned {
        check_cpus()?;
        Some(PinnedDaemon::pin(state, DAEMON_CPU)?)
    } else {
        None
    };
    let mut streams = Vec::with_capacity(q.conns);
    for _ in 0..q.conns {
        streams.push(connect(socket).await?.into_inner().into_std().map_err(err)?);
    }
    if let Some(p) = &mut pinned {
        p.repin()?;
    }
    let cpu_before = CpuSnapshot::take(state)?;
    let (work, pin) = (work.clone(), q.pinned);
    let generator = std::thread::Builder::new()
        .name("qpi-generator".into())
        .spawn(move || {
            let mask: Option<CpuSet> = if pin { Some(pin_thread(CLIENT_CPU)?) } else { None };
            let r = drive(&streams, &work, duration);
            if let Some(m) = &mask {
                restore_thread(m)?;
            }
            r.map(|d| (d, streams))
        })
        .map_err(|e| format!("starting the load generator thread: {e}"))?;
    let (driven, streams) = tokio::task::spawn_blocking(move || generator.join())
        .await
        .map_err(err)?
        .map_err(|_| "the load generator thread panicked".to_owned())??;
    let cpu = CpuSnapshot::take(state)?.used_since(&cpu_before);
    drop(streams);
    drop(pinned);
    let ops = driven.ops.max(1) as f64;
    let busy = driven.client_cpu.as_secs_f64() / driven.elapsed.as_secs_f64();
    if busy > CLIENT_BOUND {
        eprintln!(
            "guix-bench: QueryPathInfo, {} conn{}: the load generator was busy {:.0}% of the run; the rate may be client-bound",
            q.conns,
            if q.pinned { ", pinned" } else { "" },
            busy * 100.0
        );
    }
    Ok(QpiSample {
        rate: driven.ops as f64 / driven.elapsed.as_secs_f64(),
        daemon_us: cpu / ops * 1e6,
        client_us: driven.client_cpu.as_secs_f64() / ops * 1e6,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Pss of the daemon tree before and with [`IDLE_CONNECTIONS`] open idle connections.
async fn idle_memory(socket: &Path, state: &Path) -> Res<Vec<f64>> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = daemon_tree_memory(state)?;
    let mut clients = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        clients.push(connect(socket).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let with = daemon_tree_memory(state)?;
    drop(clients);
    // Let the per-connection processes (C++) exit before the next repetition.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if daemon_tree_memory(state)?.processes <= before.processes {
            break;
        }
    }
    Ok(vec![mib(before.pss_kib), mib(with.pss_kib)])
}

/// One repetition of [`Scenario::AddTree`]: the floor (hash + copy into a directory on the
/// store's file system, removed afterwards), then AddToStore of the tree under a name unique to
/// the repetition (so the daemon cannot find it valid already). Seconds for both.
async fn add_tree(socket: &Path, session: &Session, tree: &Tree, rep: usize) -> Res<Vec<f64>> {
    let store = session.store_dir_on_host();
    let floor_dir = store.parent().ok_or("the store directory has no parent")?.join(format!("bench-floor-{rep}"));
    let (src, dest) = (tree.root().to_owned(), floor_dir.clone());
    let floor = tokio::task::spawn_blocking(move || {
        sync();
        let r = hash_and_copy(&src, &dest);
        let _ = std::fs::remove_dir_all(&dest);
        sync();
        r
    })
    .await
    .map_err(err)?
    .map_err(|e| format!("floor copy into {}: {e}", floor_dir.display()))?
    .0;
    let mut c = connect(socket).await?;
    let start = Instant::now();
    let name = format!("bench-tree-{rep}");
    let path = c.add_to_store(&name, tree.root(), true, guix_formats::HashAlgo::Sha256).await.map_err(err)?;
    let add = start.elapsed().as_secs_f64();
    // Not a timing check: the item must really be there, or the figure means nothing.
    let shown = c.store_dir().display(&path);
    let on_host = session.host_path(&shown).ok_or_else(|| format!("{shown} is not in the session's store"))?;
    if !on_host.join("dir-00").is_dir() {
        return Err(format!("{shown} was not written"));
    }
    Ok(vec![add, floor])
}

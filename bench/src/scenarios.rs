//! The workloads. Each scenario yields one or more figures; [`run`] measures every figure
//! `reps` times in one session and returns the medians.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guix_client::{ClientError, DaemonClient};
use guix_formats::store_path::StorePath;
use guix_tests::Session;

use crate::procmem::{daemon_tree_cpu, daemon_tree_memory};
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
}

impl Scenario {
    pub const ALL: [Scenario; 5] =
        [Scenario::Connect, Scenario::AddText, Scenario::QueryPathInfo, Scenario::IdleMemory, Scenario::AddTree];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::AddText => "add-text",
            Scenario::QueryPathInfo => "query-path-info",
            Scenario::IdleMemory => "idle-memory",
            Scenario::AddTree => "add-tree",
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
            Scenario::AddText => vec![rate(format!("AddTextToStore, 1 connection ({})", p.texts), "op/s")],
            Scenario::QueryPathInfo => QPI_CONCURRENCY
                .iter()
                .map(|c| {
                    rate(
                        format!("QueryPathInfo, {c} conn ({} paths, {:.1}s)", p.populate, p.duration.as_secs_f64()),
                        "op/s",
                    )
                })
                .chain(QPI_CONCURRENCY.iter().map(|c| Figure {
                    label: format!("  daemon CPU per QueryPathInfo, {c} conn"),
                    unit: "µs",
                    higher_is_better: false,
                }))
                .collect(),
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
        }
    }
}

pub struct Figure {
    pub label: String,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

const CONNECT_CONCURRENCY: usize = 16;
const QPI_CONCURRENCY: [usize; 3] = [1, 16, 256];
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
            }
        } else {
            Params {
                reps: reps.unwrap_or(5),
                connects: 400,
                texts: 1000,
                populate: 1000,
                duration: Duration::from_secs(2),
                tree: TreeShape { dirs: 4, files_per_dir: 64, file_size: 4 << 20 },
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Measures every figure of `scenario` `p.reps` times against `session`; returns the medians.
pub async fn run(scenario: Scenario, session: &Session, p: &Params, tree: Option<&Tree>) -> Res<Vec<f64>> {
    let socket = session.socket_path();
    let n = scenario.figures(p).len();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); n];
    let paths = if scenario == Scenario::QueryPathInfo { Arc::new(populate(socket, p.populate).await?) } else { Arc::default() };
    for rep in 0..p.reps {
        let one = match scenario {
            Scenario::Connect => vec![
                connect_rate(socket, p.connects, 1).await?,
                connect_rate(socket, p.connects, CONNECT_CONCURRENCY).await?,
            ],
            Scenario::AddText => vec![add_text_rate(socket, p.texts, rep).await?],
            Scenario::QueryPathInfo => {
                let (mut rates, mut cpu) = (Vec::new(), Vec::new());
                for c in QPI_CONCURRENCY {
                    let (r, us) = qpi_rate(socket, session.state_dir(), &paths, c, p.duration).await?;
                    rates.push(r);
                    cpu.push(us);
                }
                rates.extend(cpu);
                rates
            }
            Scenario::IdleMemory => idle_memory(socket, session.state_dir()).await?,
            Scenario::AddTree => {
                let tree = tree.ok_or("the tree was not created")?;
                add_tree(socket, session, tree, rep).await?
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

/// `n` distinct AddTextToStore calls on one connection; operations per second.
async fn add_text_rate(socket: &Path, n: usize, rep: usize) -> Res<f64> {
    let mut c = connect(socket).await?;
    let none = BTreeSet::new();
    let start = Instant::now();
    for i in 0..n {
        let text = format!("guix-bench add-text rep {rep} item {i}\n");
        c.add_text_to_store("bench-text", text.as_bytes(), &none).await.map_err(err)?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
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

/// `concurrency` connections each issuing QueryPathInfo back to back for `duration`;
/// operations per second over all of them, and the daemon's CPU time per operation in µs
/// (its process tree's user + system time over the run, connections already open).
async fn qpi_rate(
    socket: &Path,
    state: &Path,
    paths: &Arc<Vec<StorePath>>,
    concurrency: usize,
    duration: Duration,
) -> Res<(f64, f64)> {
    if paths.is_empty() {
        return Err("no populated paths".into());
    }
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        clients.push(connect(socket).await?);
    }
    let cpu_before = daemon_tree_cpu(state)?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for (k, mut c) in clients.into_iter().enumerate() {
        let paths = paths.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut i = k * 7919;
            while Instant::now() < deadline {
                let p = &paths[i % paths.len()];
                if c.query_path_info(p).await.map_err(err)?.is_none() {
                    return Err(format!("{p} is not valid"));
                }
                done += 1;
                i += 1;
            }
            // The connection is returned, not closed: a C++ worker must not exit (taking its
            // CPU time with it) before the second CPU sample.
            Ok::<_, String>((done, c))
        }));
    }
    let mut total = 0;
    let mut open = Vec::with_capacity(concurrency);
    for t in tasks {
        let (done, c) = t.await.map_err(err)??;
        total += done;
        open.push(c);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = daemon_tree_cpu(state)? - cpu_before;
    drop(open);
    let ops = total.max(1) as f64;
    Ok((total as f64 / elapsed, cpu / ops * 1e6))
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
    let floor_dir = store
        .parent()
        .ok_or("the store directory has no parent")?
        .join(format!("bench-floor-{rep}"));
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

//! One collection (C++ `LocalStore::collectGarbage`), without a global lock.
//!
//! 1. `BeginCollection`: store-db's temp roots at this instant; from now on it records every
//!    new one and refuses to delete it (retried while store-db's root barrier is not ready, at
//!    most [`Limits::begin`]).
//! 2. The analysis ([`analyse`], on a blocking thread): the database in one read
//!    ([`Graph::load`]), the permanent roots ([`guix_store::roots::scan_roots`], which removes
//!    stale `gcroots/auto` links), the store items running processes use (what C++ gets from
//!    `guix gc --list-busy`, [`crate::busy`]), liveness ([`Graph::alive`]), then one `readdir` of the store.
//! 3. The trash left by an earlier collection is deleted (its bytes count, as in C++).
//! 4. Deletion: the invalid entries first, in `readdir` order, then the dead valid ones,
//!    shuffled, ordered keepers first ([`crate::order`]), in batches of `DeleteDead`. store-db
//!    decides each entry again ("if still dead") and renames the accepted ones into
//!    `<store>/trash`; their contents are deleted here, on a thread of their own, while the next
//!    batches go. A batch holds about [`BATCH_ENTRIES`] entries, whole groups; store-db runs it
//!    in short parts, cut between groups.
//! 5. `EndCollection`, "deleting `<store>/trash'", "deleting unused links...", the note.
//!
//! Faults: a store-db restart in the middle (a failed call, or its "unknown garbage collection",
//! both retryable errors) makes
//! the collection begin again from step 1, keeping what was already deleted and counted; a
//! cancelled job stops between batches and ends its collection.
//!
//! What the client sees is the C++ daemon's text, level and order, and the same paths and byte
//! counts (`_deletePath` with link threshold 2 under `auto-optimise-store`, else 1). Better than
//! C++: a root that cannot be read even as its owner is named in a warning, and then no valid
//! path is deleted (see [`guix_store::roots`]).

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use guix_formats::{StoreDir, StorePath};
use guix_ipc::gc::{GcAction, KeepRules};
use guix_ipc::store_db::{CollectionId, DeadBatch, DeadEntry, DeleteOutcome, KeptBecause};
use guix_ipc::{ErrorKind, LinkError};
use guix_store::roots::{scan_roots, ScanOptions};
use guix_store::scratch::SCRATCH_DIR_NAME;

use crate::error::{Error, Result};
use crate::files::{delete_counting, hard_linking_note, remove_unused_links, show_bytes};
use crate::graph::Graph;
use crate::order::{components, next_batch, shuffle};

/// C++ `printMsg` levels.
pub const ERROR: u32 = 0;
pub const INFO: u32 = 1;
pub const TALKATIVE: u32 = 2;

/// Entries per `DeleteDead` (whole groups, so a batch may hold more). store-db runs a batch in
/// parts of about [`guix_ipc::store_db::DEAD_PART_TARGET`] each, letting the requests that
/// wait for its writer go in between, so a batch's size only sets how many round trips the
/// collection costs and how often "deleting" lines reach the client. Measured with
/// `guix-bench --scenario gc` (2 cores, 100,000 paths, 50,000 dead, probes every 2 ms): when
/// the gc cut 500 µs batches itself, the round trips made the collection as slow as C++'s
/// (7.2 s against 7.6 s); with 4 ms batches it took 3.9 s, but additions' p99 rose 3–6x and
/// the longest waited 130–230 ms.
pub const BATCH_ENTRIES: usize = 1024;

/// store-db's side of a collection (the real one is [`crate::service::StoreDbLink`]).
pub trait StoreDbApi: Send + Sync {
    fn begin(&self) -> impl Future<Output = std::result::Result<(CollectionId, Vec<StorePath>), LinkError>> + Send;
    fn delete_dead(
        &self,
        batch: DeadBatch,
    ) -> impl Future<Output = std::result::Result<DeleteOutcome, LinkError>> + Send;
    fn end(&self, collection: CollectionId) -> impl Future<Output = ()> + Send;
}

/// Where things are, and the daemon settings a collection needs.
#[derive(Debug, Clone)]
pub struct Setup {
    pub store: StoreDir,
    pub store_dir: PathBuf,
    pub db_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Where the processes are (`/proc`), for the store items they use
    /// ([`crate::busy`]; `None`: none, in tests).
    pub proc_dir: Option<PathBuf>,
    pub auto_optimise: bool,
}

/// Bounds of a collection's waits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long `BeginCollection` is retried while store-db is not ready.
    pub begin: Duration,
    pub begin_pause: Duration,
    /// How many times a collection begins again after store-db went away.
    pub restarts: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { begin: Duration::from_secs(60), begin_pause: Duration::from_millis(500), restarts: 5 }
    }
}

/// What the client asked.
#[derive(Debug, Clone)]
pub struct Request {
    pub action: GcAction,
    pub paths: Vec<StorePath>,
    pub max_freed: u64,
    pub ignore_liveness: bool,
    pub keep: KeepRules,
}

/// Where the collection's lines go, and whether it should stop.
pub trait Sink: Send + Sync {
    fn say(&self, level: u32, text: String);
    fn cancelled(&self) -> bool;
}

/// The result: paths (sorted, absolute) and bytes freed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub paths: Vec<String>,
    pub bytes_freed: u64,
}

/// What one analysis found.
pub struct Analysis {
    pub graph: Graph,
    /// Lines of the root scan, in order.
    pub lines: Vec<(u32, String)>,
    /// Valid roots (nodes).
    pub valid_roots: Vec<u32>,
    /// Every root by base name, invalid ones included.
    pub roots: HashSet<String>,
    pub temp_roots: HashSet<String>,
    pub alive: Vec<bool>,
    /// Roots that could not be read: (link, why).
    pub unreadable: Vec<(String, String)>,
    /// Store entries that are not valid paths, in `readdir` order (`.links`, `trash` and the
    /// scratch directory left out).
    pub invalid_entries: Vec<String>,
    pub valid_entries: Vec<u32>,
}

impl Analysis {
    /// C++ `isActiveTempFile` for `.lock` and `.chroot`.
    fn is_active_temp_file(&self, name: &str) -> bool {
        [".lock", ".chroot"].iter().any(|s| name.strip_suffix(s).is_some_and(|p| self.temp_roots.contains(p)))
    }
}

/// Entries of the store directory that are never garbage: store-db's and the collector's own.
pub fn is_reserved(name: &str) -> bool {
    name == ".links" || name == "trash" || name == SCRATCH_DIR_NAME
}

/// Step 2 (module documentation).
pub fn analyse(setup: &Setup, temp_roots: &[StorePath], req: &Request) -> Result<Analysis> {
    let graph = Graph::load(&setup.db_dir, &setup.store)?;
    let mut lines = Vec::new();
    let mut roots: HashSet<String> = HashSet::new();
    let mut unreadable = Vec::new();
    if !req.ignore_liveness {
        let mut log = |l: u32, t: String| lines.push((l, t));
        let mut is_valid = |p: &StorePath| Ok(graph.id(&base_name(p)).is_some());
        let scan = scan_roots(&setup.state_dir, &setup.store, &mut is_valid, ScanOptions::collector(&mut log))?;
        let prefix = format!("{}/", setup.store.as_str());
        roots.extend(scan.roots.values().filter_map(|t| t.strip_prefix(&prefix)).map(str::to_owned));
        unreadable = scan.unreadable;
        if let Some(proc_dir) = &setup.proc_dir {
            // `addAdditionalRoots`: the valid ones.
            for p in crate::busy::busy_store_items(proc_dir, setup.store.as_str())? {
                if graph.id(&p).is_some() {
                    roots.insert(p);
                }
            }
        }
    }
    for (link, why) in &unreadable {
        lines.push((
            ERROR,
            format!(
                "warning: cannot read garbage collector root `{link}' ({why}), even as its owner; no valid store item is deleted by this collection"
            ),
        ));
    }
    let temp_roots: HashSet<String> = temp_roots.iter().map(base_name).collect();
    roots.extend(temp_roots.iter().cloned());
    let valid_roots: Vec<u32> = roots.iter().filter_map(|r| graph.id(r)).collect();
    let alive = graph.alive(valid_roots.iter().copied(), req.keep);
    let mut invalid_entries = Vec::new();
    let mut valid_entries = Vec::new();
    let dir = std::fs::read_dir(&setup.store_dir).map_err(|e| {
        Error::Client(format!("opening directory `{}': {}", setup.store_dir.display(), guix_store::strerror(&e)))
    })?;
    for e in dir {
        let name = e?.file_name().to_string_lossy().into_owned();
        if is_reserved(&name) {
            continue;
        }
        match graph.id(&name) {
            Some(n) => valid_entries.push(n),
            None => invalid_entries.push(name),
        }
    }
    Ok(Analysis { graph, lines, valid_roots, roots, temp_roots, alive, unreadable, invalid_entries, valid_entries })
}

fn base_name(p: &StorePath) -> String {
    p.base_name()
}

/// The collection's running totals (C++ `results.bytesFreed`, `bytesInvalidated`).
#[derive(Debug, Default)]
struct Totals {
    paths: Vec<String>,
    freed: u64,
    invalidated: u64,
    /// Deleted from the trash so far (counted into `freed` at the end, as C++ deletes the
    /// trash only then).
    trash_freed: u64,
    /// For the daemon log: batches sent, entries in them, time waiting for them, the longest.
    batches: u64,
    sent: u64,
    waited: Duration,
    longest: Duration,
}

/// Why a deletion phase stopped early.
enum Stop {
    /// `max_freed` reached.
    Limit,
    /// store-db went away: begin again.
    Restart(LinkError),
    /// store-db failed otherwise.
    Fail(LinkError),
    Cancelled,
}

/// Runs a collection.
pub async fn collect<A: StoreDbApi>(
    api: &A,
    setup: &Setup,
    req: Request,
    limits: Limits,
    sink: &dyn Sink,
) -> Result<Outcome> {
    let mut req = req;
    if req.action == GcAction::DeleteSpecific && req.ignore_liveness {
        // C++: with --ignore-liveness, the keep rules would make a deletion recurse.
        req.keep = KeepRules::default();
    }
    let should_delete = matches!(req.action, GcAction::DeleteDead | GcAction::DeleteSpecific);
    let threshold = if setup.auto_optimise { 2 } else { 1 };
    let trash = setup.store_dir.join("trash");
    sink.say(ERROR, "finding garbage collector roots...".into());
    let mut totals = Totals::default();
    let mut trasher = Trasher::new(threshold);
    let mut first = true;
    let mut restarts = 0;
    let started = Instant::now();
    let result = loop {
        let (id, temp_roots) = begin(api, &limits, sink).await?;
        let analysis = {
            let (setup, req) = (setup.clone(), req.clone());
            tokio::task::spawn_blocking(move || analyse(&setup, &temp_roots, &req))
                .await
                .map_err(|e| Error::Client(format!("the analysis failed: {e}")))
        };
        let analysis = match analysis {
            Ok(Ok(a)) => a,
            Ok(Err(e)) | Err(e) => {
                api.end(id).await;
                return Err(e);
            }
        };
        for (level, line) in &analysis.lines {
            if first || *level == ERROR {
                sink.say(*level, line.clone());
            }
        }
        if should_delete && first && trash.exists() {
            let t = trash.clone();
            totals.freed += tokio::task::spawn_blocking(move || delete_counting(&t, threshold))
                .await
                .map_err(|e| Error::Client(e.to_string()))??;
        }
        let phase = Phase { api, setup, req: &req, id, a: &analysis, threshold, sink, first };
        first = false;
        let analysed = started.elapsed();
        let r = phase.run(&mut totals, &mut trasher).await;
        eprintln!(
            "guix-gc: collection {id}: {} valid paths, {} entries analysed in {:.3}s; {} entries in {} batches, {:.3}s waiting for store-db (longest batch {:.1} ms), done at {:.3}s",
            analysis.graph.len(),
            analysis.valid_entries.len() + analysis.invalid_entries.len(),
            analysed.as_secs_f64(),
            totals.sent,
            totals.batches,
            totals.waited.as_secs_f64(),
            totals.longest.as_secs_f64() * 1000.0,
            started.elapsed().as_secs_f64()
        );
        api.end(id).await;
        match r {
            Err(Stop::Restart(e)) if restarts < limits.restarts => {
                restarts += 1;
                eprintln!("guix-gc: store-db went away during a collection ({}); beginning again", e.message);
                continue;
            }
            Err(Stop::Restart(e)) | Err(Stop::Fail(e)) => break Err(Error::StoreDb(e)),
            Err(Stop::Cancelled) => break Err(Error::Cancelled),
            Err(Stop::Limit) => break Ok(()),
            Ok(r) => break r,
        }
    };
    let trashed = trasher.finish().await;
    totals.trash_freed += trashed;
    let emptied = started.elapsed();
    result?;
    if !should_delete {
        totals.paths.sort();
        return Ok(Outcome { paths: totals.paths, bytes_freed: 0 });
    }
    sink.say(INFO, format!("deleting `{}'", trash.display()));
    let t = trash.clone();
    totals.trash_freed += tokio::task::spawn_blocking(move || delete_counting(&t, threshold))
        .await
        .map_err(|e| Error::Client(e.to_string()))??;
    totals.freed += totals.trash_freed;
    sink.say(ERROR, "deleting unused links...".into());
    let links = setup.store_dir.join(".links");
    let (freed, saved, talk) = tokio::task::spawn_blocking(move || {
        let mut talk = Vec::new();
        remove_unused_links(&links, &mut |l| talk.push(l)).map(|(f, s)| (f, s, talk))
    })
    .await
    .map_err(|e| Error::Client(e.to_string()))?
    .map_err(|e| Error::Client(e.to_string()))?;
    for l in talk {
        sink.say(TALKATIVE, l);
    }
    totals.freed += freed;
    sink.say(INFO, hard_linking_note(saved));
    eprintln!(
        "guix-gc: trash emptied at {:.3}s, unused links removed at {:.3}s",
        emptied.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    totals.paths.sort();
    Ok(Outcome { paths: totals.paths, bytes_freed: totals.freed })
}

/// `BeginCollection`, retried while store-db is not ready (its barrier) or away.
async fn begin<A: StoreDbApi>(api: &A, limits: &Limits, sink: &dyn Sink) -> Result<(CollectionId, Vec<StorePath>)> {
    let start = Instant::now();
    loop {
        if sink.cancelled() {
            return Err(Error::Cancelled);
        }
        match api.begin().await {
            Ok(v) => return Ok(v),
            Err(e) if e.kind == ErrorKind::Retryable && start.elapsed() < limits.begin => {
                tokio::time::sleep(limits.begin_pause).await;
            }
            Err(e) if e.kind == ErrorKind::Retryable => {
                return Err(Error::Client(format!(
                    "cannot collect garbage: store-db is not ready after {}s ({})",
                    limits.begin.as_secs(),
                    e.message
                )))
            }
            Err(e) => return Err(Error::StoreDb(e)),
        }
    }
}

/// Deletes trashed entries on a thread of its own while the collection goes on.
struct Trasher {
    tx: Option<std::sync::mpsc::Sender<(PathBuf, bool)>>,
    done: Option<std::thread::JoinHandle<u64>>,
    threshold: u64,
}

impl Trasher {
    fn new(threshold: u64) -> Trasher {
        Trasher { tx: None, done: None, threshold }
    }

    /// Queues one entry of the trash: a directory's files count (`_deletePath` of the trash in
    /// C++); a file's bytes were counted when store-db accepted it.
    fn push(&mut self, path: PathBuf, is_dir: bool) {
        if self.tx.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, bool)>();
            let threshold = self.threshold;
            self.done = std::thread::Builder::new()
                .name("gc-trash".into())
                .spawn(move || {
                    let mut freed = 0;
                    for (p, is_dir) in rx {
                        match delete_counting(&p, threshold) {
                            Ok(n) if is_dir => freed += n,
                            Ok(_) => {}
                            // Left in the trash: deleted (and counted) with it at the end.
                            Err(e) => eprintln!("guix-gc: deleting `{}': {e}", p.display()),
                        }
                    }
                    freed
                })
                .ok();
            if self.done.is_some() {
                self.tx = Some(tx);
            }
        }
        // Without a thread the entry stays in the trash, deleted at the end.
        if let Some(tx) = &self.tx {
            let _ = tx.send((path, is_dir));
        }
    }

    async fn finish(&mut self) -> u64 {
        self.tx = None;
        match self.done.take() {
            Some(h) => tokio::task::spawn_blocking(move || h.join().unwrap_or(0)).await.unwrap_or(0),
            None => 0,
        }
    }
}

/// One pass of deletion under one collection id.
struct Phase<'a, A> {
    api: &'a A,
    setup: &'a Setup,
    req: &'a Request,
    id: CollectionId,
    a: &'a Analysis,
    threshold: u64,
    sink: &'a dyn Sink,
    first: bool,
}

impl<A: StoreDbApi> Phase<'_, A> {
    fn full(&self, name: &str) -> String {
        format!("{}/{name}", self.setup.store.as_str())
    }

    async fn run(&self, totals: &mut Totals, trasher: &mut Trasher) -> std::result::Result<Result<()>, Stop> {
        let a = self.a;
        let g = &a.graph;
        match self.req.action {
            GcAction::DeleteSpecific => return self.delete_specific(totals, trasher).await,
            _ if self.req.max_freed == 0 => return Ok(Ok(())),
            _ => {}
        }
        if self.first {
            let what = if self.req.action == GcAction::DeleteDead {
                "deleting garbage..."
            } else {
                "determining live/dead paths..."
            };
            self.sink.say(ERROR, what.into());
        }
        match self.req.action {
            GcAction::ReturnLive => {
                totals.paths.extend(a.invalid_entries.iter().filter(|n| a.roots.contains(*n)).map(|n| self.full(n)));
                totals.paths.extend(
                    a.valid_entries.iter().filter(|&&n| a.alive[n as usize]).map(|&n| self.full(&g.names[n as usize])),
                );
                Ok(Ok(()))
            }
            GcAction::ReturnDead => {
                let dead_invalid =
                    a.invalid_entries.iter().filter(|n| !a.roots.contains(*n) && !a.is_active_temp_file(n));
                totals.paths.extend(dead_invalid.map(|n| self.full(n)));
                // The dead entries and what C++ visits from them (all dead).
                let starts: Vec<u32> = a.valid_entries.iter().copied().filter(|&n| !a.alive[n as usize]).collect();
                let comps = components(g, self.req.keep, &starts, &|n| !a.alive[n as usize]);
                totals.paths.extend(comps.iter().flatten().map(|&n| self.full(&g.names[n as usize])));
                Ok(Ok(()))
            }
            _ => {
                let invalid: Vec<Vec<DeadEntry>> = a
                    .invalid_entries
                    .iter()
                    .filter(|n| !a.roots.contains(*n) && !a.is_active_temp_file(n))
                    .map(|n| vec![DeadEntry { name: n.clone(), valid: false }])
                    .collect();
                self.send_all(&invalid, self.req.keep, totals, trasher).await?;
                if !a.unreadable.is_empty() {
                    return Ok(Ok(()));
                }
                let mut starts: Vec<u32> = a.valid_entries.iter().copied().filter(|&n| !a.alive[n as usize]).collect();
                shuffle(&mut starts);
                let comps = components(g, self.req.keep, &starts, &|n| !a.alive[n as usize]);
                let groups: Vec<Vec<DeadEntry>> = comps
                    .into_iter()
                    .map(|c| {
                        c.into_iter().map(|n| DeadEntry { name: g.names[n as usize].clone(), valid: true }).collect()
                    })
                    .collect();
                self.send_all(&groups, self.req.keep, totals, trasher).await?;
                Ok(Ok(()))
            }
        }
    }

    /// DeleteSpecific: each path in turn with the referrers C++ `deletePathRecursive` deletes
    /// first; a path still alive fails the request ("cannot delete path … since it is still
    /// alive") after the ones before it were deleted, as in C++.
    async fn delete_specific(
        &self,
        totals: &mut Totals,
        trasher: &mut Trasher,
    ) -> std::result::Result<Result<()>, Stop> {
        let a = self.a;
        let g = &a.graph;
        let mut done: HashSet<String> = HashSet::new();
        for p in &self.req.paths {
            let name = base_name(p);
            let shown = self.full(&name);
            let alive = |why: &str| Error::Client(format!("cannot delete path `{shown}' since it is still alive{why}"));
            if done.contains(&name) {
                continue;
            }
            let groups: Vec<Vec<DeadEntry>> = match g.id(&name) {
                Some(n) => {
                    if a.alive[n as usize] || a.roots.contains(&name) {
                        return Ok(Err(alive("")));
                    }
                    if !a.unreadable.is_empty() {
                        return Ok(Err(alive(" (a garbage collector root could not be read)")));
                    }
                    // Referrers only (C++ does not follow the keep rules when deleting), so
                    // store-db is asked without them.
                    components(g, KeepRules::default(), &[n], &|m| !done.contains(&g.names[m as usize]))
                        .into_iter()
                        .map(|c| {
                            c.into_iter()
                                .map(|m| DeadEntry { name: g.names[m as usize].clone(), valid: true })
                                .collect()
                        })
                        .collect()
                }
                None => {
                    if a.roots.contains(&name) || a.is_active_temp_file(&name) {
                        return Ok(Err(alive("")));
                    }
                    vec![vec![DeadEntry { name: name.clone(), valid: false }]]
                }
            };
            for gr in &groups {
                done.extend(gr.iter().map(|e| e.name.clone()));
            }
            let kept = self.send_all(&groups, KeepRules::default(), totals, trasher).await?;
            if kept.iter().any(|(n, why)| *n == name && *why != KeptBecause::Gone) {
                return Ok(Err(alive("")));
            }
        }
        Ok(Ok(()))
    }

    /// Sends `groups` in order, in batches; returns what store-db kept.
    async fn send_all(
        &self,
        groups: &[Vec<DeadEntry>],
        keep: KeepRules,
        totals: &mut Totals,
        trasher: &mut Trasher,
    ) -> std::result::Result<Vec<(String, KeptBecause)>, Stop> {
        let mut kept_all = Vec::new();
        let mut rest = groups;
        while !rest.is_empty() {
            if self.sink.cancelled() {
                return Err(Stop::Cancelled);
            }
            // The next batch: whole groups, about `size` entries.
            let n = next_batch(rest, BATCH_ENTRIES);
            let batch: Vec<DeadEntry> = rest[..n].iter().flatten().cloned().collect();
            let sizes: Vec<u32> = rest[..n].iter().map(|g| g.len() as u32).collect();
            totals.sent += batch.len() as u64;
            rest = &rest[n..];
            let before = totals.freed + totals.invalidated;
            let t = Instant::now();
            let req = DeadBatch {
                collection: self.id,
                entries: batch,
                groups: sizes,
                keep,
                freed_before: before,
                max_freed: self.req.max_freed,
                link_threshold: self.threshold,
            };
            // Retryable: store-db restarted, or no longer knows the collection: begin again.
            let outcome = self.api.delete_dead(req).await.map_err(|e| match e.kind {
                ErrorKind::Retryable => Stop::Restart(e),
                _ => Stop::Fail(e),
            })?;
            let took = t.elapsed();
            totals.batches += 1;
            totals.waited += took;
            totals.longest = totals.longest.max(took);
            let trash = self.setup.store_dir.join("trash");
            for d in &outcome.deleted {
                let freed = totals.freed + totals.invalidated;
                self.sink.say(INFO, progress(freed, self.req.max_freed, &self.full(&d.name)));
                totals.paths.push(self.full(&d.name));
                match (&d.trashed_as, d.is_dir) {
                    (Some(t), true) => {
                        totals.invalidated += d.accounted;
                        trasher.push(trash.join(t), true);
                    }
                    (Some(t), false) => {
                        totals.freed += d.accounted;
                        trasher.push(trash.join(t), false);
                    }
                    (None, true) => totals.freed += d.freed_in_place,
                    (None, false) => totals.freed += d.accounted,
                }
                if totals.freed + totals.invalidated > self.req.max_freed {
                    break;
                }
            }
            kept_all.extend(outcome.kept);
            if outcome.limit_reached || totals.freed + totals.invalidated > self.req.max_freed {
                self.sink.say(INFO, format!("deleted or invalidated more than {} bytes; stopping", self.req.max_freed));
                return Err(Stop::Limit);
            }
            if let Some(message) = outcome.stopped {
                // What went before the failure is reported and counted above.
                return Err(Stop::Fail(LinkError::client(message)));
            }
        }
        Ok(kept_all)
    }
}

/// The C++ progress line before a deletion: a percentage of `max_freed`, or the bytes so far
/// when there is no limit (`u64::MAX`: what the Guile client sends unless given `-C`/`-F`).
pub fn progress(freed: u64, max_freed: u64, path: &str) -> String {
    if max_freed != u64::MAX {
        let fraction = freed as f64 / max_freed as f64;
        let pct = ((if fraction > 1.0 { 1.0 } else { fraction }) * 100.0) as u32;
        format!("[{pct}%] deleting '{path}'")
    } else {
        format!("[{}] deleting '{path}'", show_bytes(freed as i64))
    }
}

#[cfg(test)]
#[path = "collect_tests.rs"]
mod loop_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(progress(0, u64::MAX, "/gnu/store/x"), "[   0  bytes] deleting '/gnu/store/x'");
        assert_eq!(progress(3 << 20, u64::MAX, "/x"), "[   3.00 MiB] deleting '/x'");
        assert_eq!(progress(50, 200, "/x"), "[25%] deleting '/x'");
        assert_eq!(progress(500, 200, "/x"), "[100%] deleting '/x'");
        assert_eq!(progress(1 << 40, i64::MAX as u64, "/x"), "[0%] deleting '/x'");
    }
}

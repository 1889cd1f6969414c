//! The writer: the one place where items are moved into the store and the database is
//! written.
//!
//! rusqlite is synchronous and SQLite has one writer at a time anyway, so every change is made
//! by whoever holds the one [`Writer`] (which owns the [`DbWriter`]). Requests are queued as
//! [`Job`]s; the caller that queued one then tries to take the writer and, if it is free, runs
//! the jobs queued at that moment itself (flat combining), right on its tokio worker thread.
//! A caller that finds the writer busy just waits for its reply: the holder runs its job, or
//! sees it queued after letting go and leaves it, with whatever else came meanwhile, to a
//! thread of the blocking pool (so no caller works for others without end while its own
//! client waits, and no job is left behind). So an uncontended request costs no thread
//! hand-off. Blocking a worker is deliberate: store-db's runtime carries
//! nothing but link traffic, its other worker goes on receiving (and queueing) requests
//! meanwhile, and the jobs are short (renames, small `.drv` reads, one transaction); sweeps,
//! which may delete whole trees, run on the blocking pool ([`WriterHandle::send_in_background`]).
//! Measured against a writer thread (tests/group_commit.rs, 2 cores): AddTextToStore through
//! the whole daemon 4.2k → 5.3k op/s on one connection; 32 callers × 100 items 1.2–1.3 s →
//! 1.0–1.2 s (460–610 transactions). `block_in_place` instead cost more than it saved
//! (1.2–1.5 s).
//!
//! **Group commit**: when several `AddItems` jobs are waiting, the writer prepares each (file
//! moves, `.drv` checks) and registers all of them in ONE transaction — with WAL and
//! `synchronous = normal` a commit costs little, but a transaction per small item still
//! dominates the cost of adding many small items concurrently (see the `group_commit` bench
//! in `tests/group_commit.rs`). Atomicity stays per request: when the group's transaction fails,
//! each job is retried in a transaction of its own, so one bad request never fails another.
//!
//! Temp-root changes do not go through the writer's queue (they must not wait behind a
//! group's transaction); they and the collector's deletions meet at the lock of
//! [`super::roots::TempRoots`] instead: a `DeleteDead` job decides and invalidates while
//! holding [`super::roots::TempRoots::deletion`] ([`super::collect`]).
//!
//! # Adding items (one job)
//! The caller holds the per-path locks ([`super::pathlock`]). For each item: if the path is
//! already valid, its scratch copy is removed and nothing else happens; otherwise whatever is
//! at the final name (an invalid leftover: a crash between rename and commit, a failed build)
//! is deleted, and the scratch item is renamed to its final name. Then every `.drv` of the job
//! is read back from the store, parsed and checked (`checkDerivationOutputs`), and the job's
//! items are registered. On any error nothing of the job is registered, the items it moved
//! into the store are deleted again, and its scratch copies are removed.
//!
//! A retried request whose items were moved in before a crash (so its scratch copies are gone
//! and its items sit, invalid, at their final names) is completed when the NAR hash and size
//! of what is at the final name are the ones announced; otherwise it fails ("scratch item
//! `N' does not exist").
//!
//! # Replacing valid paths (repair)
//! C++ `replaceValidPath` renames the old files away, the new ones in, and deletes the old:
//! a kill between the two renames leaves a valid path without files. Here the scratch item
//! and the path's files swap names in one `renameat2(RENAME_EXCHANGE)`, then the row is
//! updated (`registerValidPaths` on a valid path: hash, size, new references), then the old
//! files (now at the scratch name) are deleted. A kill before the swap leaves the old files;
//! after it, the new ones (with the old row until the commit, which a resend makes: the
//! path's files are then already the announced ones, so nothing is swapped back); a kill
//! before the deletion leaves the old files under the item's scratch name, which the resend
//! removes (or the sweep, once the item's writer is gone). So the path is never missing.
//!
//! # Crash safety and durability
//! A kill at any moment leaves the database consistent (one SQLite transaction per commit)
//! and never a registered path without its files: files reach their final name (atomically,
//! by `rename`) before the transaction that makes them valid. An item renamed but not yet
//! committed is invalid and is deleted by the next addition of that path (or the GC).
//! Like the C++ daemon (Guix 1.5.0: `fsync-metadata` only sets SQLite's `synchronous =
//! normal`), store files are not fsync'ed: after a power loss, a recently registered item may
//! have lost data the file system had not written yet; `guix gc --verify=contents` finds it.

use std::collections::HashSet;
use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

use guix_formats::derivation::{Derivation, ModuloHasher, MAX_DRV_SIZE};
use guix_formats::{StoreDir, StorePath};
use guix_ipc::store_db::{ItemSource, NewItem};
use guix_store::files::write_canonical_text;
use guix_store::optimise::{optimise_path_with, KnownHashes, OptimiseStats, DEDUPLICATION_MIN_SIZE, LVL_ERROR};
use guix_store::strerror;
use tokio::sync::oneshot;

use super::fsops::{check_item, delete_path, remove_scratch_copies, sweep_scratch};
use crate::{DbWriter, DerivationOutputs, Registration, ValidPathInfo};

/// The result of a job: `Err` holds the client-facing message.
pub type JobResult = Result<(), String>;

/// A request to the writer.
pub enum Job {
    /// Move items into the store and register them (the caller holds their path locks).
    Add { items: Vec<NewItem>, reply: oneshot::Sender<JobResult> },
    /// Repairing: the items replace the files of their valid paths (invalid ones are added),
    /// all registered in one transaction (see "Replacing valid paths" above).
    Replace { items: Vec<NewItem>, reply: oneshot::Sender<JobResult> },
    /// `clearFailedPaths`.
    ClearFailed { paths: Vec<StorePath>, reply: oneshot::Sender<JobResult> },
    /// `registerFailedPath` of each path.
    RegisterFailed { paths: Vec<StorePath>, reply: oneshot::Sender<JobResult> },
    /// Invalidate paths whose files are gone (VerifyStore), in order.
    InvalidateMissing { paths: Vec<StorePath>, reply: oneshot::Sender<JobResult> },
    /// Remove scratch leftovers of dead writers.
    Sweep,
    /// The collector's "delete these if still dead" ([`super::collect`]), one part per round
    /// of the queue: what is left goes back to the end of the queue, behind the requests that
    /// came while the part ran.
    DeleteDead {
        run: Box<super::collect::DeadRun>,
        roots: Arc<super::roots::TempRoots>,
        reply: oneshot::Sender<Result<guix_ipc::store_db::DeleteOutcome, super::collect::BatchError>>,
    },
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// The most `AddItems` jobs registered in one transaction (1 disables group commit).
    pub max_group: usize,
    /// `auto-optimise-store`: inline texts of [`DEDUPLICATION_MIN_SIZE`] bytes or more are
    /// linked with their `<store>/.links` entry as they are written (see [`guix_store::optimise`]).
    pub deduplicate: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { max_group: 64, deduplicate: true }
    }
}

/// Counters, for tests, benches and metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub jobs: AtomicU64,
    pub transactions: AtomicU64,
}

/// The writer's queue and the writer itself (see the module docs). Clones share both.
#[derive(Clone)]
pub struct WriterHandle {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Mutex<VecDeque<Job>>,
    writer: Mutex<Writer>,
    stats: Arc<WriterStats>,
}

impl WriterHandle {
    /// Runs a job that replies, and waits for the reply.
    pub async fn run(&self, make: impl FnOnce(oneshot::Sender<JobResult>) -> Job) -> JobResult {
        let (tx, rx) = oneshot::channel();
        self.push(make(tx));
        self.combine();
        rx.await.map_err(|_| "store-db writer stopped".to_owned())?
    }

    /// Runs a job whose reply is `T`, and waits for it (`Err`: the writer stopped).
    pub async fn run_for<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Job) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.push(make(tx));
        self.combine();
        rx.await.map_err(|_| "store-db writer stopped".to_owned())
    }

    /// Queues a job that does not reply, and runs the queue now unless the writer is busy
    /// (its holder will). Blocks the calling thread while it runs: for long jobs from async
    /// code, use [`WriterHandle::send_in_background`].
    pub fn send(&self, job: Job) {
        self.push(job);
        self.combine();
    }

    /// [`WriterHandle::send`] on tokio's blocking pool.
    pub fn send_in_background(&self, job: Job) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.send(job));
    }

    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.inner.stats
    }

    pub(super) fn push(&self, job: Job) {
        lock(&self.inner.queue).push_back(job);
        // A collection's part may hold the writer at a low priority: this job waits for it.
        super::collect::PART.boost();
    }

    /// If the writer is free: runs what is queued now (one round: jobs queued meanwhile wait),
    /// then, if more came, leaves them to [`WriterHandle::combine_all`] on the blocking pool,
    /// so a caller never works for others without end while its own client waits. Outside a
    /// tokio runtime, runs them all itself.
    ///
    /// A collection's part is never run on the caller's thread, a runtime worker: it waits for
    /// the blocking pool. Run there, a part (up to milliseconds) took one of store-db's two
    /// workers each time an addition found the writer free between two parts, and with the
    /// other one waiting for the temp-roots lock that part held (then for all of the part; now
    /// only a moment), no request was served at all.
    fn combine(&self) {
        let runtime = tokio::runtime::Handle::try_current();
        if !self.combine_round(runtime.is_ok()) {
            return;
        }
        match runtime {
            Ok(rt) => {
                let this = self.clone();
                rt.spawn_blocking(move || this.combine_all());
            }
            Err(_) => self.combine_all(),
        }
    }

    /// Runs rounds while the writer is free and jobs are queued.
    fn combine_all(&self) {
        while self.combine_once() {}
    }

    /// One round, if the writer is free; whether jobs are queued after it. `false` when the
    /// writer is busy: its holder runs what is queued before it lets go, or sees it after.
    pub(super) fn combine_once(&self) -> bool {
        self.combine_round(false)
    }

    /// [`WriterHandle::combine_once`]; with `no_parts`, a collection's part is queued again
    /// instead of run.
    pub(super) fn combine_round(&self, no_parts: bool) -> bool {
        let mut writer = match self.inner.writer.try_lock() {
            Ok(w) => w,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        let jobs = std::mem::take(&mut *lock(&self.inner.queue));
        let later = writer.run_jobs(jobs, no_parts);
        // Behind what came meanwhile, before letting go of the writer (so the holder, or the
        // next caller, sees them).
        lock(&self.inner.queue).extend(later);
        drop(writer);
        !lock(&self.inner.queue).is_empty()
    }
}

/// Locks `m`, also after a panic of a previous holder (the queue stays usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the writer works.
#[derive(Debug, Clone)]
pub struct StoreLayout {
    /// The store directory on disk.
    pub store_path: PathBuf,
    pub store_dir: StoreDir,
    /// The scratch directory (see [`super::fsops`]).
    pub scratch: PathBuf,
}

/// Sets up the writer (no thread: see the module docs).
pub fn new(db: DbWriter, layout: StoreLayout, opts: WriterOptions) -> WriterHandle {
    let stats = Arc::new(WriterStats::default());
    let writer = Writer::new(db, layout, opts, stats.clone());
    WriterHandle { inner: Arc::new(Inner { queue: Mutex::new(VecDeque::new()), writer: Mutex::new(writer), stats }) }
}

type Loader = Box<dyn FnMut(&StorePath) -> Result<Derivation, String> + Send>;

/// `drvHashes` is bounded: the memo is dropped after this many `.drv` checks.
const HASHER_RESET: u64 = 10_000;

struct Writer {
    db: DbWriter,
    layout: StoreLayout,
    opts: WriterOptions,
    stats: Arc<WriterStats>,
    hasher: ModuloHasher<Loader>,
    drv_checks: u64,
    /// The size of a collection's parts, learned from one batch to the next.
    part_size: super::collect::PartSize,
}

/// A job whose items are in place, ready to be registered.
struct Prepared {
    regs: Vec<Registration>,
    /// Final paths this job put there (deleted again if its registration fails).
    placed: Vec<PathBuf>,
}

impl Writer {
    fn new(db: DbWriter, layout: StoreLayout, opts: WriterOptions, stats: Arc<WriterStats>) -> Writer {
        let hasher = new_hasher(&layout);
        Writer { db, layout, opts, stats, hasher, drv_checks: 0, part_size: Default::default() }
    }

    /// Runs with the writer, which also does every rename into the store, so a path found
    /// missing here cannot be in the middle of being added.
    fn invalidate_missing(&mut self, paths: &[StorePath]) -> JobResult {
        for p in paths {
            match std::fs::symlink_metadata(self.layout.store_path.join(p.base_name())) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("getting status of `{}': {e}", self.layout.store_dir.display(p))),
            }
            self.stats.transactions.fetch_add(1, Ordering::Relaxed);
            self.db.invalidate_path(p).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Runs `jobs` in order, `AddItems` jobs in groups; returns the jobs to queue again (the
    /// rest of a long job, after one part; with `no_parts`, every collection's job untouched).
    fn run_jobs(&mut self, mut jobs: VecDeque<Job>, no_parts: bool) -> Vec<Job> {
        let mut later = Vec::new();
        while let Some(job) = jobs.pop_front() {
            match job {
                Job::Add { items, reply } => {
                    let mut group = vec![(items, reply)];
                    while group.len() < self.opts.max_group.max(1) {
                        match jobs.pop_front() {
                            Some(Job::Add { items, reply }) => group.push((items, reply)),
                            Some(other) => {
                                jobs.push_front(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    self.add_group(group);
                }
                Job::Replace { items, reply } => {
                    self.stats.jobs.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(self.replace(&items));
                }
                Job::ClearFailed { paths, reply } => {
                    self.stats.transactions.fetch_add(1, Ordering::Relaxed);
                    let set = paths.into_iter().collect();
                    let _ = reply.send(self.db.clear_failed_paths(&set).map_err(|e| e.to_string()));
                }
                Job::RegisterFailed { paths, reply } => {
                    self.stats.transactions.fetch_add(1, Ordering::Relaxed);
                    let res = paths.iter().try_for_each(|p| self.db.register_failed_path(p));
                    let _ = reply.send(res.map_err(|e| e.to_string()));
                }
                Job::InvalidateMissing { paths, reply } => {
                    let _ = reply.send(self.invalidate_missing(&paths));
                }
                job @ Job::DeleteDead { .. } if no_parts => later.push(job),
                Job::DeleteDead { run, roots, reply } => {
                    self.stats.transactions.fetch_add(1, Ordering::Relaxed);
                    if reply.is_closed() {
                        // The gc's request is gone (link closed): stop between parts.
                        continue;
                    }
                    // At the gc's priority: serving clients goes first (an addition that
                    // waits for this part meanwhile waits at most for it).
                    let step = super::collect::PART.run(super::collect::PART_NICE, || {
                        run.step(&mut self.db, &roots, &self.layout, &mut self.part_size)
                    });
                    match step {
                        super::collect::Step::More(run) => {
                            later.push(Job::DeleteDead { run: Box::new(run), roots, reply })
                        }
                        super::collect::Step::Done(outcome) => {
                            let _ = reply.send(outcome);
                        }
                    }
                }
                Job::Sweep => match sweep_scratch(&self.layout.scratch) {
                    Ok(removed) => {
                        for p in removed {
                            eprintln!("guix-store-db: removed scratch leftover `{}'", p.display());
                        }
                    }
                    Err(e) => eprintln!("guix-store-db: cleaning `{}': {e}", self.layout.scratch.display()),
                },
            }
        }
        later
    }

    fn add_group(&mut self, group: Vec<(Vec<NewItem>, oneshot::Sender<JobResult>)>) {
        self.stats.jobs.fetch_add(group.len() as u64, Ordering::Relaxed);
        let mut ready: Vec<(Prepared, oneshot::Sender<JobResult>)> = Vec::new();
        for (items, reply) in group {
            match self.prepare(&items) {
                Ok(p) if p.regs.is_empty() => {
                    let _ = reply.send(Ok(()));
                }
                Ok(p) => ready.push((p, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if ready.is_empty() {
            return;
        }
        if ready.len() > 1 {
            let all: Vec<Registration> = ready.iter().flat_map(|(p, _)| p.regs.iter().cloned()).collect();
            self.stats.transactions.fetch_add(1, Ordering::Relaxed);
            if self.db.register_valid_paths(&all).is_ok() {
                for (_, reply) in ready {
                    let _ = reply.send(Ok(()));
                }
                return;
            }
            // Some job of the group is at fault: commit each on its own.
        }
        for (p, reply) in ready {
            self.stats.transactions.fetch_add(1, Ordering::Relaxed);
            let res = self.db.register_valid_paths(&p.regs).map_err(|e| e.to_string());
            if res.is_err() {
                undo(&p.placed);
            }
            let _ = reply.send(res);
        }
    }

    /// Puts a job's items at their final names and builds their registrations. On error,
    /// undoes what it did and removes the job's scratch copies.
    fn prepare(&mut self, items: &[NewItem]) -> Result<Prepared, String> {
        let mut placed = Vec::new();
        let res = self.prepare_inner(items, &mut placed);
        if res.is_err() {
            undo(&placed);
            remove_scratch_copies(&self.layout.scratch, items);
        }
        res.map(|regs| Prepared { regs, placed })
    }

    fn prepare_inner(&mut self, items: &[NewItem], placed: &mut Vec<PathBuf>) -> Result<Vec<Registration>, String> {
        let mut seen = HashSet::new();
        let mut todo = Vec::new();
        for item in items {
            check_item(item)?;
            let already = !seen.insert(item.path.clone()) || self.db.is_valid(&item.path).map_err(|e| e.to_string())?;
            let dest = self.layout.store_path.join(item.path.base_name());
            if !already {
                check_lock_name(&dest)?;
            }
            let name = match &item.source {
                ItemSource::Scratch(name) => name,
                ItemSource::Text(_) if already => continue,
                ItemSource::Text(contents) => {
                    self.place_text(item, contents, &dest)?;
                    placed.push(dest.clone());
                    todo.push((item, dest));
                    continue;
                }
            };
            let scratch = self.layout.scratch.join(name);
            if already {
                delete_path(&scratch).map_err(|e| format!("deleting `{}': {}", scratch.display(), strerror(&e)))?;
                continue;
            }
            match std::fs::symlink_metadata(&scratch) {
                Ok(_) => {
                    delete_path(&dest).map_err(|e| format!("deleting `{}': {}", dest.display(), strerror(&e)))?;
                    std::fs::rename(&scratch, &dest).map_err(|e| {
                        format!("cannot rename `{}' to `{}': {}", scratch.display(), dest.display(), strerror(&e))
                    })?;
                    placed.push(dest.clone());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && already_in_place(&dest, item) => {
                    placed.push(dest.clone());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(format!("scratch item `{name}' does not exist"));
                }
                Err(e) => return Err(format!("getting status of `{}': {}", scratch.display(), strerror(&e))),
            }
            todo.push((item, dest));
        }
        let mut regs = Vec::with_capacity(todo.len());
        for (item, dest) in todo {
            let info = info_of(item);
            let reg = if item.path.is_derivation() {
                // An inline text is parsed from the bytes just written, not read back.
                let text = match &item.source {
                    ItemSource::Text(contents) => Some(contents.as_slice()),
                    ItemSource::Scratch(_) => None,
                };
                let outputs = self.check_drv(&item.path, &dest, text)?;
                Registration::derivation(info, outputs)
            } else {
                Registration::new(info)
            };
            regs.push(reg.map_err(|e| e.to_string())?);
        }
        Ok(regs)
    }

    /// A `ReplaceItems` job: the valid paths' files are swapped with their scratch items, the
    /// others placed as by an addition; then one transaction; then the old files go. On
    /// error the swaps are undone, the additions deleted and the scratch entries removed.
    fn replace(&mut self, items: &[NewItem]) -> JobResult {
        let mut swapped: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut placed = Vec::new();
        let res = self.replace_inner(items, &mut swapped, &mut placed);
        let committed = res.and_then(|regs| {
            self.stats.transactions.fetch_add(1, Ordering::Relaxed);
            self.db.register_valid_paths(&regs).map_err(|e| e.to_string())
        });
        if committed.is_err() {
            // The old files back at their names, so the row's hash describes them again.
            for (dest, scratch) in &swapped {
                if let Err(e) = exchange(scratch, dest) {
                    eprintln!("guix-store-db: cannot put back `{}': {e}", dest.display());
                }
            }
            undo(&placed);
        }
        // Now the old files of swapped paths (or, after an error, the new ones).
        remove_scratch_copies(&self.layout.scratch, items);
        committed
    }

    fn replace_inner(
        &mut self,
        items: &[NewItem],
        swapped: &mut Vec<(PathBuf, PathBuf)>,
        placed: &mut Vec<PathBuf>,
    ) -> Result<Vec<Registration>, String> {
        let mut seen = HashSet::new();
        let (mut valid, mut invalid) = (Vec::new(), Vec::new());
        for item in items {
            check_item(item)?;
            let Some(name) = item.scratch_name() else {
                return Err(format!("replacing `{}' needs a scratch item", self.layout.store_dir.display(&item.path)));
            };
            if !seen.insert(item.path.clone()) {
                return Err(format!("path `{}' is named twice", self.layout.store_dir.display(&item.path)));
            }
            if self.db.is_valid(&item.path).map_err(|e| e.to_string())? {
                valid.push((item, name));
            } else {
                invalid.push(item.clone());
            }
        }
        let mut regs = Vec::with_capacity(items.len());
        for (item, name) in valid {
            let dest = self.layout.store_path.join(item.path.base_name());
            let scratch = self.layout.scratch.join(name);
            // A resent request (swapped before a kill, not committed), or nothing to repair:
            // the path has the announced files already.
            if !already_in_place(&dest, item) {
                match std::fs::symlink_metadata(&scratch) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(format!("scratch item `{name}' does not exist"));
                    }
                    Err(e) => return Err(format!("getting status of `{}': {}", scratch.display(), strerror(&e))),
                }
                if std::fs::symlink_metadata(&dest).is_ok() {
                    exchange(&scratch, &dest)?;
                    swapped.push((dest, scratch));
                } else {
                    // Its files disappeared: nothing to swap with.
                    std::fs::rename(&scratch, &dest).map_err(|e| {
                        format!("cannot rename `{}' to `{}': {}", scratch.display(), dest.display(), strerror(&e))
                    })?;
                }
            }
            let info = info_of(item);
            // A valid path's row is updated: its derivation outputs are not added again.
            regs.push(Registration::new(info).map_err(|e| e.to_string())?);
        }
        if !invalid.is_empty() {
            let mut more = self.prepare_inner(&invalid, placed)?;
            regs.append(&mut more);
        }
        Ok(regs)
    }

    /// Writes an inline text at its final name `dest` (whatever invalid thing was there goes
    /// first), canonical: mode 0444, mtime 1. Its NAR hash and size must be the ones announced.
    fn place_text(&self, item: &NewItem, contents: &[u8], dest: &Path) -> Result<(), String> {
        let summary = guix_formats::nar::summary_of_regular(contents, false);
        if summary.nar_hash != item.nar_hash || summary.nar_size != item.nar_size {
            return Err(format!("inline text for `{}' does not match its announced NAR hash", dest.display()));
        }
        let write = || write_canonical_text(dest, contents);
        let written = match write() {
            // Usually nothing is there: no `lstat` first. Else an invalid leftover goes first.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                delete_path(dest).map_err(|e| format!("deleting `{}': {}", dest.display(), strerror(&e)))?;
                write()
            }
            r => r,
        };
        written.map_err(|e| format!("writing file `{}': {}", dest.display(), strerror(&e)))?;
        if self.opts.deduplicate && contents.len() as u64 >= DEDUPLICATION_MIN_SIZE {
            // The file's NAR hash is the item's, just checked: nothing is read back.
            let known: KnownHashes = [(PathBuf::new(), item.nar_hash)].into();
            let links = self.layout.store_path.join(".links");
            let mut stats = OptimiseStats::default();
            let mut log = |level: u32, msg: String| {
                if level == LVL_ERROR {
                    eprintln!("guix-store-db: {msg}");
                }
            };
            optimise_path_with(&self.layout.store_path, &links, dest, &known, &mut stats, &mut log)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Parses and checks a `.drv` that is at its final name `file` (whose contents are `text`
    /// when the caller has them; else they are read); returns its outputs.
    fn check_drv(&mut self, path: &StorePath, file: &Path, text: Option<&[u8]>) -> Result<DerivationOutputs, String> {
        self.drv_checks += 1;
        if self.drv_checks >= HASHER_RESET {
            self.hasher = new_hasher(&self.layout);
            self.drv_checks = 0;
        }
        let store = &self.layout.store_dir;
        let drv = match text {
            Some(t) => parse_drv(store, file, t)?,
            None => read_drv(store, file)?,
        };
        drv.check_outputs(store, path, &mut self.hasher).map_err(|e| e.to_string())?;
        let mut outputs = DerivationOutputs::new();
        for (name, out) in drv.output_paths() {
            let out = out.ok_or_else(|| format!("derivation `{}' has a blank output `{name}'", store.display(path)))?;
            outputs.insert(name.as_str().to_owned(), out.clone());
        }
        Ok(outputs)
    }
}

fn new_hasher(layout: &StoreLayout) -> ModuloHasher<Loader> {
    let store = layout.store_dir.clone();
    let dir = layout.store_path.clone();
    ModuloHasher::new(Box::new(move |p: &StorePath| read_drv(&store, &dir.join(p.base_name()))) as Loader)
}

/// `readDerivation`, bounded by [`MAX_DRV_SIZE`].
fn read_drv(store: &StoreDir, file: &Path) -> Result<Derivation, String> {
    let f = std::fs::File::open(file).map_err(|e| format!("opening file `{}': {}", file.display(), strerror(&e)))?;
    let mut text = Vec::new();
    f.take(MAX_DRV_SIZE as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("reading file `{}': {}", file.display(), strerror(&e)))?;
    parse_drv(store, file, &text)
}

/// `readDerivation` of `file`, whose contents are `text`.
fn parse_drv(store: &StoreDir, file: &Path, text: &[u8]) -> Result<Derivation, String> {
    if text.len() > MAX_DRV_SIZE {
        return Err(format!("derivation `{}' is too large", file.display()));
    }
    Derivation::parse(store, text).map_err(|e| format!("error parsing derivation `{}': {e}", file.display()))
}

/// What to register for `item` (registration time: now).
fn info_of(item: &NewItem) -> ValidPathInfo {
    ValidPathInfo {
        path: item.path.clone(),
        deriver: item.deriver.clone(),
        nar_hash: item.nar_hash,
        references: item.references.iter().cloned().collect(),
        registration_time: 0,
        nar_size: Some(item.nar_size),
    }
}

/// Whether the invalid item at `dest` is exactly the one announced (NAR hash and size).
fn already_in_place(dest: &Path, item: &NewItem) -> bool {
    if std::fs::symlink_metadata(dest).is_err() {
        return false;
    }
    match guix_formats::nar::dump_path(dest, &mut std::io::sink()) {
        Ok(s) => s.nar_hash == item.nar_hash && s.nar_size == item.nar_size,
        Err(_) => false,
    }
}

/// Swaps the names of `a` and `b` atomically (`renameat2(RENAME_EXCHANGE)`): at no moment is
/// either name missing. Both must exist, on the store's file system.
fn exchange(a: &Path, b: &Path) -> Result<(), String> {
    use nix::fcntl::{renameat2, RenameFlags};
    renameat2(None, a, None, b, RenameFlags::RENAME_EXCHANGE).map_err(|e| {
        format!("cannot exchange `{}' and `{}': {}", a.display(), b.display(), strerror(&std::io::Error::from(e)))
    })
}

fn undo(placed: &[PathBuf]) {
    for p in placed {
        if let Err(e) = delete_path(p) {
            eprintln!("guix-store-db: cannot remove unregistered `{}': {}", p.display(), strerror(&e));
        }
    }
}

/// The C++ daemon locks `<path>.lock` before it adds a path, so it refuses a path whose lock
/// file name is too long for the file system (a name of 218 to 222 bytes), with this error.
/// store-db takes no lock files ([`super::pathlock`]) but refuses the same paths, so both
/// daemons can register exactly the same ones.
fn check_lock_name(dest: &Path) -> Result<(), String> {
    const NAME_MAX: usize = 255;
    let name_len = dest.file_name().map_or(0, |n| n.len());
    if name_len + ".lock".len() > NAME_MAX {
        let e = std::io::Error::from_raw_os_error(nix::libc::ENAMETOOLONG);
        return Err(format!("opening lock file `{}.lock': {}", dest.display(), strerror(&e)));
    }
    Ok(())
}

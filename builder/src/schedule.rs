//! Goals shared by every request: one build per derivation at a time across all clients, input
//! derivations first, build slots, and cancellation when nobody wants a goal any more.
//!
//! A request ([`Builder::run_job`]) realises its targets by [`Builder::realise`]: wanted outputs
//! that are valid need nothing; otherwise the request waits for the derivation's [`Goal`],
//! joining the one that runs if there is one (as the C++ Worker keeps one goal per derivation,
//! but across clients, not per client process). A goal is a tokio task: it realises the input
//! derivations the same way (concurrently), then builds ([`crate::goal`]). Every request that
//! waits holds a [`Want`]; when the last one is dropped (its client went away, or a failure
//! stopped a request without `keep-going`) the goal is cancelled, which kills its build.
//!
//! Each request is also a connection of the builder's temp-root holder: every derivation it
//! touches and that derivation's outputs are temp roots for as long as the request runs (the
//! C++ worker's `addTempRoot` in `haveDerivation`), so nothing it builds on can be collected
//! from under it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use guix_formats::{StoreDir, StorePath};
use guix_ipc::builder::{BuildEvent, BuildMode, BuildOptions, BuildReply, BuildTarget, HEARTBEAT};
use guix_ipc::config::DaemonConfig;
use guix_ipc::job::JobContext;
use guix_ipc::store_db::ConnId;
use guix_ipc::substituter::{SubstituteOptions, SUBSTITUTER_LINK};
use guix_store::scratch::Scratch;
use guix_store::storedb::StoreDb;
use guix_store::DbReader;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, FailureKind, Result};
use crate::slots::Slots;
use crate::users::UserPool;

/// The builder's name as a temp-root holder (one of `ROOT_HOLDERS`).
pub const HOLDER: &str = "builder";

/// How a goal ended, as every request waiting for it learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every output is valid (built now, or already).
    Valid,
    Failed {
        kind: FailureKind,
        message: String,
    },
}

impl Outcome {
    fn from_result(r: Result<()>) -> Outcome {
        match r {
            Ok(()) => Outcome::Valid,
            Err(e) => Outcome::Failed { kind: e.failure_kind().unwrap_or(FailureKind::Misc), message: e.to_string() },
        }
    }
}

/// The settings one request builds with (its client's, over the daemon's).
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub max_jobs: u32,
    pub cores: u32,
    pub max_silent_time: u64,
    pub timeout: u64,
    pub max_log_size: u64,
    pub repeat: u64,
    pub cache_failures: bool,
    pub keep_failed: bool,
    pub keep_going: bool,
    pub print_build_trace: bool,
    pub client_uid: Option<u32>,
    /// How to ask the substituter (`urls` empty: substitutes off).
    pub substitute: SubstituteOptions,
    /// `--fallback` (`build-fallback`): build when substituting an output failed.
    pub fallback: bool,
    /// Every setting as `key=value` for `_NIX_OPTIONS` (built-in builders).
    pub options: BTreeMap<String, String>,
}

impl JobSettings {
    /// The daemon's settings overridden by the request's (socket-front checked the syntax;
    /// a value that does not parse keeps the daemon's).
    pub fn new(config: &DaemonConfig, o: &BuildOptions) -> JobSettings {
        let int = |k: &str, d: u64| {
            o.settings.get(k).and_then(|v| v.trim().parse::<i64>().ok()).map_or(d, |v| v.max(0) as u64)
        };
        let boolean = |k: &str, d: bool| o.settings.get(k).map_or(d, |v| v == "true");
        JobSettings {
            max_jobs: int("build-max-jobs", u64::from(config.max_build_jobs)) as u32,
            cores: int("build-cores", u64::from(config.build_cores)) as u32,
            max_silent_time: int("build-max-silent-time", config.max_silent_time.max(0) as u64),
            timeout: int("build-timeout", config.build_timeout.max(0) as u64),
            max_log_size: int("build-max-log-size", 0),
            repeat: int("build-repeat", config.build_repeat),
            cache_failures: boolean("build-cache-failure", config.cache_failures),
            keep_failed: o.keep_failed,
            keep_going: o.keep_going,
            print_build_trace: o.print_build_trace,
            client_uid: o.client_uid,
            substitute: o.substitute.clone(),
            fallback: boolean("build-fallback", false),
            options: o.settings.clone(),
        }
    }
}

/// One request while it runs: its settings, slots, roots and event stream.
pub struct Job {
    pub settings: JobSettings,
    pub mode: BuildMode,
    /// Its builds running at once (`build-max-jobs`).
    pub slots: Arc<Slots>,
    pub conn: ConnId,
    /// The depth of the goals this job (or goal) realises: 0 for the request's targets, one
    /// more for each goal's inputs (see `slots`).
    pub depth: u32,
    /// How every goal this request waited for failed (its exit status counts them all).
    pub failures: Arc<Mutex<Vec<FailureKind>>>,
    emit: Arc<dyn Fn(BuildEvent) + Send + Sync>,
}

impl Job {
    pub fn emit(&self, e: BuildEvent) {
        (self.emit)(e)
    }

    /// A line as C++ `printMsg(level, …)`.
    pub fn message(&self, level: u32, text: impl Into<String>) {
        self.emit(BuildEvent::Message { level, text: text.into() })
    }

    /// A `@ …` build trace line, when the client asked for them.
    pub fn trace(&self, text: impl FnOnce() -> String) {
        if self.settings.print_build_trace {
            self.message(0, text())
        }
    }
}

/// A goal: its outcome, for every request waiting for it. Its events go straight to the
/// request that started it (through its `Job`, synchronously, so they keep the order in which
/// goals emit them); a request that joins it later sees none of them, as a C++ worker waiting
/// for another process's output lock sees nothing of that build.
pub struct Goal {
    pub drv: StorePath,
    pub mode: BuildMode,
    outcome: watch::Receiver<Option<Outcome>>,
    wanted: AtomicUsize,
    cancel: CancellationToken,
}

/// A request's interest in a goal; the goal is cancelled when the last one goes.
struct Want(Arc<Goal>);

impl Drop for Want {
    fn drop(&mut self) {
        if self.0.wanted.fetch_sub(1, Ordering::AcqRel) == 1 && self.0.outcome.borrow().is_none() {
            self.0.cancel.cancel();
        }
    }
}

/// The builder process's shared state.
pub struct Builder {
    pub config: DaemonConfig,
    pub store: StoreDir,
    pub storedb: StoreDb,
    /// The build users (`--build-users-group`), or why they cannot be used (every build fails
    /// with that, as in C++), or none.
    pub users: Option<std::result::Result<Arc<UserPool>, String>>,
    pub scratch: Scratch,
    /// The link to the substituter (`crate::substitute`).
    pub substituter: crate::substitute::SubstituterLink,
    /// Chroot helpers started ahead of time (`crate::sandbox::Spares`).
    pub spares: Arc<crate::sandbox::Spares>,
    readers: Mutex<Vec<DbReader>>,
    goals: Mutex<HashMap<(StorePath, BuildModeKey), Weak<Goal>>>,
    next_conn: AtomicU64,
}

/// [`BuildMode`] as a map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BuildModeKey {
    Normal,
    Check,
    Repair,
}

impl From<BuildMode> for BuildModeKey {
    fn from(m: BuildMode) -> Self {
        match m {
            BuildMode::Normal => BuildModeKey::Normal,
            BuildMode::Check => BuildModeKey::Check,
            BuildMode::Repair => BuildModeKey::Repair,
        }
    }
}

type Realising<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

impl Builder {
    pub fn new(
        config: DaemonConfig,
        store: StoreDir,
        users: Option<std::result::Result<Arc<UserPool>, String>>,
    ) -> Builder {
        let storedb = StoreDb::new(&config, HOLDER);
        let scratch = Scratch::new(&config.paths.store_dir);
        let client = guix_ipc::component::connect_link(
            &config,
            SUBSTITUTER_LINK,
            HOLDER,
            std::time::Duration::from_secs(365 * 24 * 3600),
        );
        let substituter = crate::substitute::SubstituterLink::new(client);
        Builder {
            substituter,
            config,
            store,
            storedb,
            users,
            scratch,
            spares: Arc::default(),
            readers: Mutex::new(Vec::new()),
            goals: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Runs `f` with a read-only database connection on the blocking pool.
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&DbReader) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let reader = me.readers.lock().ok().and_then(|mut v| v.pop());
            let reader = match reader {
                Some(r) => r,
                None => DbReader::open(&me.config.paths.db_dir, me.store.clone())?,
            };
            let out = f(&reader);
            if let Ok(mut v) = me.readers.lock() {
                if v.len() < 4 {
                    v.push(reader);
                }
            }
            out
        })
        .await
        .map_err(|e| Error::io("reading the database", std::io::Error::other(e.to_string())))?
    }

    /// One `Build` request: realises every target, then the reply.
    pub async fn run_job(
        self: Arc<Self>,
        ctx: JobContext<BuildEvent>,
        targets: Vec<BuildTarget>,
        mode: BuildMode,
        options: BuildOptions,
    ) -> BuildReply {
        let settings = JobSettings::new(&self.config, &options);
        let conn = (u64::from(std::process::id()) << 32) | self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.storedb.open_connection(conn);
        let token = ctx.token().clone();
        let ctx = Arc::new(ctx);
        let emitter = ctx.clone();
        let job = Arc::new(Job {
            slots: Slots::new(settings.max_jobs as usize),
            settings,
            mode,
            conn,
            depth: 0,
            failures: Arc::default(),
            emit: Arc::new(move |e| emitter.emit(e)),
        });
        let heartbeat = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(HEARTBEAT);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    ctx.emit(BuildEvent::Alive);
                }
            })
        };
        let reply = tokio::select! {
            r = self.realise_targets(&job, targets) => r,
            _ = token.cancelled() => BuildReply::Error(guix_ipc::LinkError::retryable("the build was cancelled")),
        };
        heartbeat.abort();
        self.storedb.close_connection(conn).await;
        reply
    }

    async fn realise_targets(self: &Arc<Self>, job: &Arc<Job>, targets: Vec<BuildTarget>) -> BuildReply {
        let keep_going = job.settings.keep_going;
        let mut running: tokio::task::JoinSet<(StorePath, Outcome)> = tokio::task::JoinSet::new();
        // Every target prepares before any of them may be granted (see `slots`): each guard is
        // held until its task's `realise` holds its own.
        let preparing: Vec<_> = targets.into_iter().map(|t| (t, job.slots.preparing())).collect();
        for (t, prep) in preparing {
            let (me, job) = (self.clone(), job.clone());
            running.spawn(async move {
                let realising = me.realise(&job, t.drv.clone(), t.outputs);
                drop(prep);
                (t.drv, realising.await)
            });
        }
        let mut failed: BTreeMap<StorePath, FailureKind> = BTreeMap::new();
        while let Some(r) = running.join_next().await {
            let (drv, outcome) = match r {
                Ok(x) => x,
                // Stopped by a failure without keep-going (below).
                Err(e) if e.is_cancelled() => continue,
                Err(e) => return BuildReply::Error(guix_ipc::LinkError::internal(format!("a build task failed: {e}"))),
            };
            match outcome {
                Outcome::Valid => {}
                // Not a `BuildError` in C++: it escapes the worker, and the request fails
                // with its message.
                Outcome::Failed { kind: FailureKind::Misc, message } => {
                    running.abort_all();
                    return BuildReply::Failed { status: 1, message };
                }
                Outcome::Failed { kind, .. } => {
                    failed.insert(drv, kind);
                    if !keep_going {
                        // C++: a failed top goal stops the others unless keep-going.
                        running.abort_all();
                    }
                }
            }
        }
        if failed.is_empty() {
            return BuildReply::Done;
        }
        // C++ `Worker::exitStatus`: over every goal of the request, not only the top ones.
        let seen = job.failures.lock().map(|f| f.clone()).unwrap_or_default();
        let status = FailureKind::exit_status(failed.values().chain(seen.iter()));
        let shown: Vec<String> = failed.keys().map(|p| format!("`{}'", self.store.display(p))).collect();
        BuildReply::Failed { status, message: format!("build of {} failed", shown.join(", ")) }
    }

    /// Makes the `wanted` outputs of `drv` (all when empty) valid: nothing when they are (in
    /// normal mode), else through the derivation's goal.
    pub fn realise<'a>(self: &'a Arc<Self>, job: &'a Arc<Job>, drv: StorePath, wanted: Vec<String>) -> Realising<'a> {
        // Until its goal exists (or it needs none), this target may still become a ready
        // build: no slot is given meanwhile (`slots`). Taken when called, not when polled.
        let prep = job.slots.preparing();
        Box::pin(async move {
            let mode = job.mode;
            let q = drv.clone();
            let outputs = self.read(move |r| Ok(r.query_derivation_output_map(&q)?)).await;
            let outputs: BTreeMap<String, StorePath> = match outputs {
                Ok(o) => o.into_iter().collect(),
                Err(e) => return Outcome::Failed { kind: FailureKind::Misc, message: e.to_string() },
            };
            // The derivation and its outputs are roots while this request runs.
            let mut roots = vec![drv.clone()];
            roots.extend(outputs.values().cloned());
            if let Err(e) = self.storedb.add_temp_roots(job.conn, roots).await {
                return Outcome::Failed { kind: FailureKind::Misc, message: e.client_text("store-db") };
            }
            if mode == BuildMode::Normal {
                let wanted_paths: Vec<StorePath> = outputs
                    .iter()
                    .filter(|(n, _)| wanted.is_empty() || wanted.contains(n))
                    .map(|(_, p)| p.clone())
                    .collect();
                let all_valid = self
                    .read(move |r| Ok(wanted_paths.iter().try_fold(true, |acc, p| r.is_valid(p).map(|v| acc && v))?))
                    .await;
                if let Ok(true) = all_valid {
                    return Outcome::Valid;
                }
            }
            let (goal, created) = self.goal(job, drv, mode);
            drop(prep);
            let want = Want(goal.clone());
            if !created {
                job.message(0, "waiting for locks or build slots...");
            }
            let mut outcome = goal.outcome.clone();
            loop {
                if let Some(o) = outcome.borrow_and_update().clone() {
                    drop(want);
                    if let (Outcome::Failed { kind, .. }, Ok(mut f)) = (&o, job.failures.lock()) {
                        f.push(*kind);
                    }
                    return o;
                }
                if outcome.changed().await.is_err() && outcome.borrow().is_none() {
                    return Outcome::Failed {
                        kind: FailureKind::Misc,
                        message: "the build task ended without a result".into(),
                    };
                }
            }
        })
    }

    /// The running goal for `drv` in `mode`, or a new one started with `job`'s settings; and
    /// whether it is new.
    fn goal(self: &Arc<Self>, job: &Arc<Job>, drv: StorePath, mode: BuildMode) -> (Arc<Goal>, bool) {
        let key = (drv.clone(), BuildModeKey::from(mode));
        let mut goals = self.goals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = goals.get(&key).and_then(Weak::upgrade) {
            if g.outcome.borrow().is_none() && !g.cancel.is_cancelled() {
                g.wanted.fetch_add(1, Ordering::AcqRel);
                return (g, false);
            }
        }
        goals.retain(|_, g| g.strong_count() > 0);
        let (tx, outcome) = watch::channel(None);
        let goal = Arc::new(Goal { drv, mode, outcome, wanted: AtomicUsize::new(1), cancel: CancellationToken::new() });
        goals.insert(key, Arc::downgrade(&goal));
        drop(goals);
        let (me, g, job) = (self.clone(), goal.clone(), job.clone());
        let prep = job.slots.preparing();
        tokio::spawn(async move {
            let sink = Arc::new(Job {
                settings: job.settings.clone(),
                mode: job.mode,
                slots: job.slots.clone(),
                conn: job.conn,
                depth: job.depth + 1,
                failures: job.failures.clone(),
                emit: job.emit.clone(),
            });
            let result = tokio::select! {
                r = crate::goal::run(&me, &sink, &g.drv, g.mode, job.depth, prep) => r,
                _ = g.cancel.cancelled() => Err(Error::build(FailureKind::Misc, "build cancelled")),
            };
            let _ = tx.send(Some(Outcome::from_result(result)));
        });
        (goal, true)
    }

    /// The closure of `paths` (every path they refer to, transitively, themselves included).
    pub async fn closure(self: &Arc<Self>, paths: BTreeSet<StorePath>) -> Result<BTreeSet<StorePath>> {
        self.read(move |r| closure_of(r, paths)).await
    }
}

/// The directory where the builder notes the build directories of builds in progress
/// (`$state/daemon-rs/builds`): one symlink each, to the build directory, removed once the
/// build has cleaned up. A builder that starts finds there the directories of the builds its
/// dead predecessor left, and removes them (kept `--keep-failed` directories are not noted).
pub fn build_dirs_journal(config: &DaemonConfig) -> std::path::PathBuf {
    config.runtime_dir.join("builds")
}

/// A build directory noted in [`build_dirs_journal`]. Dropped, the note goes if the directory
/// is gone (cleaned up) or was kept on purpose ([`JournalEntry::kept`]); a directory left
/// otherwise (the builder stopping in the middle) keeps its note for the next builder.
#[derive(Debug)]
pub struct JournalEntry {
    link: std::path::PathBuf,
    dir: std::path::PathBuf,
    kept: bool,
}

impl JournalEntry {
    /// Notes `build_dir` in the journal directory `dir` ([`build_dirs_journal`]).
    pub fn note(dir: &std::path::Path, build_dir: &std::path::Path) -> std::io::Result<JournalEntry> {
        std::fs::create_dir_all(dir)?;
        let name = build_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let link = dir.join(format!("{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(build_dir, &link)?;
        Ok(JournalEntry { link, dir: build_dir.to_owned(), kept: false })
    }

    /// The directory is kept for the user (`--keep-failed`): not to be removed.
    pub fn kept(&mut self) {
        self.kept = true;
    }
}

impl Drop for JournalEntry {
    fn drop(&mut self) {
        if self.kept || std::fs::symlink_metadata(&self.dir).is_err() {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

/// Removes the build directories noted in the journal (a dead builder's), and the notes.
pub fn remove_journalled_build_dirs(config: &DaemonConfig) {
    let Ok(entries) = std::fs::read_dir(build_dirs_journal(config)) else { return };
    for e in entries.flatten() {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let ours = target.file_name().is_some_and(|n| n.to_string_lossy().starts_with("guix-build-"));
            if ours {
                if let Err(err) = guix_store::files::delete_tree(&target) {
                    eprintln!("guix-builder: removing `{}': {err}", target.display());
                }
            }
        }
        let _ = std::fs::remove_file(e.path());
    }
}

/// [`Builder::closure`] on a reader (blocking).
pub fn closure_of(r: &DbReader, paths: BTreeSet<StorePath>) -> Result<BTreeSet<StorePath>> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<StorePath> = paths.into_iter().collect();
    while let Some(p) = todo.pop() {
        if seen.contains(&p) {
            continue;
        }
        let refs = r.query_references(&p)?;
        seen.insert(p);
        todo.extend(refs.into_iter().filter(|q| !seen.contains(q)));
    }
    Ok(seen)
}

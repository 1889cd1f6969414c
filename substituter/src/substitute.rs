//! The work behind the link: queries, and substitution jobs that make a set of paths valid
//! with their closures, as the C++ daemon's substitution goals and `guix substitute` do
//! together (`nix/libstore/build.cc` `SubstitutionGoal`, `guix/scripts/substitute.scm`).
//!
//! # A job
//! 1. The closure is discovered breadth first: the paths not valid yet are looked up on
//!    the servers in one batch per level (in parallel), and the references of what was found
//!    are the next level. What the lookups print is shown as the C++ daemon shows its query
//!    agent's output (`substitute: looking for substitutes on …`), once per level where C++
//!    prints it once per path (each goal queries alone). Every path met becomes a temp root of the job (its own connection
//!    as a root holder) before anything is fetched.
//! 2. Each path to fetch waits for its references (a self-reference excepted), as
//!    `SubstitutionGoal::referencesValid`: one that failed makes it fail too ("incomplete
//!    closure" when it had no substitute). Then it waits for one of the request's build slots
//!    (`build-max-jobs`, as a C++ substitution takes a build slot), granted in the order C++
//!    goals would get them (breadth first, each level in goal-key order), so what the client
//!    sees comes in the C++ order; and for one of the process's [`PARALLEL_DOWNLOADS`].
//!    References that form a cycle fail their paths.
//! 3. One path: validity checked again, the nars of its narinfo tried in Guix's order
//!    ([`crate::choose::preferred`]; the next one when a download fails on the network), each
//!    streamed into a fresh scratch entry ([`crate::fetch`]), then one `AddItems` to store-db
//!    with the narinfo's references and deriver: the path is valid with its contents, or it is
//!    not there at all.
//!
//! What the client is shown for each path is what the C++ daemon and `guix substitute` print
//! (`fetching path`, `@ substituter-started`, `@ download-*` or `Downloading …`, then
//! `@ substituter-succeeded` or the failure with `@ substituter-failed`); the progress bar
//! `guix substitute` draws without `print-extended-build-trace` is not drawn.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures_util::future::join_all;
use guix_formats::narinfo::NarInfo;
use guix_formats::signature::Acl;
use guix_formats::{StoreDir, StorePath};
use guix_ipc::config::DaemonConfig;
use guix_ipc::job::JobContext;
use guix_ipc::store_db::{ConnId, ItemSource, NewItem};
use guix_ipc::substituter::{
    Outcome, SubstitutableInfo, SubstituteEvent, SubstituteOptions, SubstituterReply, HEARTBEAT,
};
use guix_ipc::LinkError;
use guix_store::scratch::Scratch;
use guix_store::storedb::StoreDb;
use guix_store::DbReader;
use tokio::sync::{watch, Semaphore};

use crate::choose;
use crate::fetch::{self, FetchError, Progress};
use crate::lookup::{Found, Lookup, Progress as LookupProgress, Trust};
use crate::sequence::{serial_order, PathOut, Sequencer};

/// The substituter's name as a temp-root holder (one of `ROOT_HOLDERS`).
pub const HOLDER: &str = "substituter";
/// Nars downloaded at once, over all jobs (not bounded by `build-max-jobs`: see `sequence`).
pub const PARALLEL_DOWNLOADS: usize = 8;
/// `guix substitute`'s connection timeout (`%fetch-timeout`).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Substituter {
    config: DaemonConfig,
    store: StoreDir,
    http: reqwest::Client,
    lookup: Lookup,
    pub storedb: StoreDb,
    scratch: Scratch,
    readers: Mutex<Vec<DbReader>>,
    /// `GUIX_ALLOW_UNAUTHENTICATED_SUBSTITUTES=yes` in the daemon's environment.
    allow_unauthenticated: bool,
    downloads: Semaphore,
    /// The paths being substituted ([`Substituter::gate`]).
    gates: Mutex<HashMap<StorePath, Weak<tokio::sync::Mutex<()>>>>,
    next_conn: AtomicU64,
}

/// The HTTP client every request shares (its connection pool is the reuse). Certificates are
/// not checked, as `guix substitute` does not check them (`#:verify-certificate? #f`):
/// narinfo signatures and nar hashes are what is trusted.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(16)
        .danger_accept_invalid_certs(true)
        .build()
}

/// Whether `GUIX_ALLOW_UNAUTHENTICATED_SUBSTITUTES` says "yes" (any case), as
/// `%allow-unauthenticated-substitutes?`.
pub fn allow_unauthenticated(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case("yes"))
}

impl Substituter {
    pub fn new(
        config: DaemonConfig,
        store: StoreDir,
        storedb: StoreDb,
        allow_unauthenticated: bool,
    ) -> Result<Substituter, String> {
        let http = http_client().map_err(|e| e.to_string())?;
        Ok(Substituter {
            lookup: Lookup::new(http.clone(), store.as_str()),
            scratch: Scratch::new(&config.paths.store_dir),
            config,
            store,
            http,
            storedb,
            readers: Mutex::new(Vec::new()),
            allow_unauthenticated,
            downloads: Semaphore::new(PARALLEL_DOWNLOADS),
            gates: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
        })
    }

    /// The trust of this request: `<conf>/acl` read now (as `guix substitute` reads it when
    /// it starts; a missing or unreadable ACL authorises nobody).
    fn trust(&self) -> Trust {
        if self.allow_unauthenticated {
            return Trust::Anything;
        }
        let file: PathBuf = self.config.paths.conf_dir.join("acl");
        let acl = std::fs::read(&file).ok().and_then(|t| Acl::parse(&t).ok()).unwrap_or_default();
        Trust::Acl(acl)
    }

    /// Which of `paths` are valid (read-only database connection, on the blocking pool).
    async fn valid(self: &Arc<Self>, paths: Vec<StorePath>) -> Result<HashSet<StorePath>, String> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let reader = me.readers.lock().ok().and_then(|mut v| v.pop());
            let reader = match reader {
                Some(r) => r,
                None => DbReader::open(&me.config.paths.db_dir, me.store.clone()).map_err(|e| e.to_string())?,
            };
            let mut out = HashSet::new();
            for p in paths {
                if reader.is_valid(&p).map_err(|e| e.to_string())? {
                    out.insert(p);
                }
            }
            if let Ok(mut v) = me.readers.lock() {
                v.push(reader);
            }
            Ok(out)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// `Query`: the infos of the paths with a trusted substitute.
    pub async fn query(self: &Arc<Self>, paths: Vec<StorePath>, options: SubstituteOptions) -> SubstituterReply {
        if options.urls.is_empty() || paths.is_empty() {
            return SubstituterReply::Infos { infos: vec![], messages: vec![] };
        }
        let trust = self.trust();
        let mut messages = Vec::new();
        let found = {
            let mut out = |text: String| messages.push(text);
            self.lookup.lookup(&options.urls, &paths, &trust, LookupProgress::PerRequest, &mut out).await
        };
        let mut infos = Vec::new();
        let mut seen = HashSet::new();
        for p in paths {
            if !seen.insert(p.clone()) {
                continue;
            }
            if let Some(f) = found.get(&p) {
                infos.push(info_of(f));
            }
        }
        SubstituterReply::Infos { infos, messages }
    }

    /// The lock of `path`'s substitution (shared while some job holds or waits for it).
    fn gate(&self, path: &StorePath) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = gates.get(path).and_then(Weak::upgrade) {
            return g;
        }
        gates.retain(|_, g| g.strong_count() > 0);
        let g = Arc::new(tokio::sync::Mutex::new(()));
        gates.insert(path.clone(), Arc::downgrade(&g));
        g
    }

    /// A fresh connection id of this holder for one job.
    fn new_conn(&self) -> ConnId {
        (u64::from(std::process::id()) << 32) | self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// `Substitute`: see the module documentation.
    pub async fn run_job(
        self: Arc<Self>,
        ctx: JobContext<SubstituteEvent>,
        paths: Vec<StorePath>,
        options: SubstituteOptions,
    ) -> SubstituterReply {
        let conn = self.new_conn();
        self.storedb.open_connection(conn);
        let reply = {
            let work = self.substitute(&ctx, conn, &paths, &options);
            tokio::pin!(work);
            let mut beat = tokio::time::interval(HEARTBEAT);
            beat.tick().await;
            loop {
                tokio::select! {
                    r = &mut work => break r,
                    _ = beat.tick() => ctx.emit(SubstituteEvent::Alive),
                    _ = ctx.token().cancelled() => break Err(LinkError::retryable("the substitution was cancelled")),
                }
            }
        };
        self.storedb.close_connection(conn).await;
        match reply {
            Ok(outcomes) => SubstituterReply::Substituted(outcomes),
            Err(e) => SubstituterReply::Error(e),
        }
    }

    async fn substitute(
        self: &Arc<Self>,
        ctx: &JobContext<SubstituteEvent>,
        conn: ConnId,
        paths: &[StorePath],
        options: &SubstituteOptions,
    ) -> Result<Vec<(StorePath, Outcome)>, LinkError> {
        let trust = self.trust();
        let internal = LinkError::internal;
        // 1. The closure.
        let mut valid: HashSet<StorePath> = HashSet::new();
        let mut infos: HashMap<StorePath, Found> = HashMap::new();
        let mut seen: HashSet<StorePath> = paths.iter().cloned().collect();
        let mut level: Vec<StorePath> = seen.iter().cloned().collect();
        // The C++ worker runs goals in key order (`a$NAME$PATH`); levels are met in breadth-first
        // order, so this is the order in which C++ goals find their paths.
        let key = |a: &StorePath, b: &StorePath| (a.name(), a).cmp(&(b.name(), b));
        level.sort_by(key);
        let mut order: Vec<StorePath> = Vec::new();
        while !level.is_empty() {
            order.extend(level.iter().cloned());
            self.storedb.add_temp_roots(conn, level.clone()).await?;
            let mut v = self.valid(level.clone()).await.map_err(internal)?;
            // Repair: the requested paths are fetched again although valid.
            if options.repair {
                v.retain(|p| !paths.contains(p));
            }
            let need: Vec<StorePath> = level.iter().filter(|p| !v.contains(*p)).cloned().collect();
            valid.extend(v);
            let found = if options.urls.is_empty() || need.is_empty() {
                HashMap::new()
            } else {
                // As the C++ daemon's query agent, whose stderr it relays prefixed.
                let mut out =
                    |text: String| ctx.emit(SubstituteEvent::Output(format!("substitute: {text}").into_bytes()));
                self.lookup.lookup(&options.urls, &need, &trust, LookupProgress::PerPath, &mut out).await
            };
            let mut next = Vec::new();
            for (p, f) in &found {
                for r in f.info.references() {
                    if r != p && seen.insert(r.clone()) {
                        next.push(r.clone());
                    }
                }
            }
            infos.extend(found);
            next.sort_by(key);
            level = next;
        }
        // 2. An outcome cell per path; cycles fail at once.
        let mut cells: HashMap<StorePath, watch::Sender<Option<Outcome>>> = HashMap::new();
        for p in &seen {
            let initial = if valid.contains(p) {
                Some(Outcome::Valid)
            } else if !infos.contains_key(p) {
                Some(Outcome::NoSubstitute)
            } else {
                None
            };
            cells.insert(p.clone(), watch::channel(initial).0);
        }
        for p in cyclic(&infos, &valid) {
            if let Some(c) = cells.get(&p) {
                c.send_replace(Some(Outcome::Failed(format!(
                    "`{}' is in a cycle of references",
                    self.store.display(&p)
                ))));
            }
        }
        // 3. Every path, concurrently, each after its references, downloads bounded by the
        // process's `PARALLEL_DOWNLOADS`; what each prints is shown in the order one build
        // slot would run them (`sequence`).
        let cells = &cells;
        let todo: Vec<&StorePath> =
            order.iter().filter(|p| cells.get(*p).is_some_and(|c| c.borrow().is_none())).collect();
        let serial =
            serial_order(paths, &todo, |p| infos.get(p).map(|f| f.info.references().to_vec()).unwrap_or_default());
        let seq = &Sequencer::new(ctx, &serial);
        let work = todo.into_iter().filter_map(|p| Some((p, infos.get(p)?))).map(|(p, f)| {
            let me = self.clone();
            async move {
                let out = seq.out(p);
                let outcome = me.one(&out, conn, p, f, cells, options, paths).await;
                if let Some(c) = cells.get(p) {
                    c.send_replace(Some(outcome));
                }
            }
        });
        join_all(work).await;
        Ok(paths
            .iter()
            .map(|p| {
                let o = cells.get(p).and_then(|c| c.borrow().clone()).unwrap_or(Outcome::NoSubstitute);
                (p.clone(), o)
            })
            .collect())
    }

    /// One path of a job, once its references are settled.
    #[allow(clippy::too_many_arguments)] // the job's parts, borrowed by each of its paths
    async fn one(
        self: &Arc<Self>,
        ctx: &PathOut<'_>,
        conn: ConnId,
        path: &StorePath,
        found: &Found,
        cells: &HashMap<StorePath, watch::Sender<Option<Outcome>>>,
        options: &SubstituteOptions,
        repaired: &[StorePath],
    ) -> Outcome {
        // `referencesValid`.
        let (mut failed, mut incomplete) = (false, false);
        for r in found.info.references().iter().filter(|r| *r != path) {
            let Some(cell) = cells.get(r) else { continue };
            let mut rx = cell.subscribe();
            let o = match rx.wait_for(|o| o.is_some()).await {
                Ok(o) => o.clone(),
                Err(_) => None,
            };
            match o {
                Some(Outcome::Valid) => {}
                Some(Outcome::NoSubstitute | Outcome::IncompleteClosure) => incomplete = true,
                _ => failed = true,
            }
        }
        if incomplete {
            return Outcome::IncompleteClosure;
        }
        if failed {
            return Outcome::Failed(format!(
                "some references of path `{}' could not be realised",
                self.store.display(path)
            ));
        }
        // Not too far ahead of what the client is shown (`sequence`).
        ctx.wait_for_window().await;
        // One substitution of a path at a time, over all jobs: a second waits for the first,
        // then finds the path valid.
        let gate = self.gate(path);
        let _gate = gate.lock().await;
        // A path to repair is valid already (and replaced: `repair`).
        let repair = options.repair && repaired.contains(path);
        if !repair && self.valid(vec![path.clone()]).await.is_ok_and(|v| !v.is_empty()) {
            return Outcome::Valid;
        }
        let Ok(_download) = self.downloads.acquire().await else {
            return Outcome::Failed("the substituter is shutting down".into());
        };
        // Someone else may have made it valid meanwhile.
        if !repair && self.valid(vec![path.clone()]).await.is_ok_and(|v| !v.is_empty()) {
            return Outcome::Valid;
        }
        let shown = self.store.display(path);
        let emit_msg = |level: u32, text: String| ctx.emit(SubstituteEvent::Message { level, text });
        emit_msg(1, format!("fetching path `{shown}'..."));
        if options.daemon_traces {
            emit_msg(0, format!("@ substituter-started {shown} substitute"));
        }
        match self.fetch_and_register(ctx, conn, path, &found.cache_url, &found.info, options, repair).await {
            Ok(()) => {
                emit_msg(3, format!("substitution of path `{shown}' succeeded"));
                if options.daemon_traces {
                    emit_msg(0, format!("@ substituter-succeeded {shown}"));
                }
                Outcome::Valid
            }
            Err(failure) => {
                // As `SubstitutionGoal::finished` reports a `SubstError`.
                let (status, msg) = match &failure {
                    Failure::HashMismatch { status } => {
                        if options.daemon_traces {
                            emit_msg(
                                0,
                                format!("@ hash-mismatch {shown} {}", status.trim_start_matches("hash-mismatch ")),
                            );
                        }
                        (status.clone(), format!("hash mismatch for substituted item `{shown}'"))
                    }
                    // `guix substitute` died with an error: no status line.
                    Failure::Error(e) => {
                        ctx.emit(SubstituteEvent::Output(format!("guix substitute: error: {e}\n").into_bytes()));
                        (String::new(), format!("fetching path `{shown}' (empty status)"))
                    }
                };
                emit_msg(1, msg.clone());
                if options.daemon_traces {
                    emit_msg(0, format!("@ substituter-failed {shown} {status} {msg}"));
                }
                Outcome::Failed(msg)
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // the job's parts and the path's
    async fn fetch_and_register(
        self: &Arc<Self>,
        ctx: &PathOut<'_>,
        conn: ConnId,
        path: &StorePath,
        cache_url: &str,
        info: &NarInfo,
        options: &SubstituteOptions,
        repair: bool,
    ) -> Result<(), Failure> {
        let shown = self.store.display(path);
        let choices = choose::preferred(cache_url, info, false);
        if choices.is_empty() {
            return Err(Failure::Error(format!("no valid nar URLs for {shown} at {cache_url}")));
        }
        let mut last = None;
        for (i, choice) in choices.iter().enumerate() {
            let dest = self.scratch.allocate_substitute(path).map_err(|e| Failure::Error(e.to_string()))?;
            let mut progress = Reporter {
                ctx,
                file: shown.clone(),
                url: choice.url.clone(),
                size: None,
                trace: options.print_build_trace,
            };
            let dedup = self.config.auto_optimise_store.then(|| self.config.paths.store_dir.clone());
            match fetch::download(&self.http, choice, info, dest, dedup, &mut progress).await {
                Ok((item, fetch::Unpacked { summary, messages })) => {
                    for (level, text) in messages {
                        ctx.emit(SubstituteEvent::Message { level, text });
                    }
                    // The blank lines `guix substitute` ends a download with.
                    ctx.emit(SubstituteEvent::Output(if options.print_build_trace {
                        b"\n".to_vec()
                    } else {
                        b"\n\n".to_vec()
                    }));
                    let new = NewItem {
                        source: ItemSource::Scratch(item.name().to_owned()),
                        path: path.clone(),
                        nar_hash: summary.nar_hash,
                        nar_size: summary.nar_size,
                        references: info.references().to_vec(),
                        deriver: info.deriver().cloned(),
                    };
                    // store-db owns the scratch entry from the request on (it moves or removes it).
                    item.handed_over();
                    // A repair replaces the valid path's files (C++ `replaceValidPath`).
                    let registered = if repair {
                        self.storedb.replace_items(conn, vec![new]).await
                    } else {
                        self.storedb.add_items(conn, vec![new]).await
                    };
                    return registered.map_err(|e| Failure::Error(e.message));
                }
                Err(FetchError::Network(e)) if i + 1 < choices.len() => {
                    ctx.emit(SubstituteEvent::Output(
                        format!("guix substitute: warning: download from '{}' failed, trying next URL\n", choice.url)
                            .into_bytes(),
                    ));
                    last = Some(e);
                }
                Err(FetchError::HashMismatch { expected, actual }) => {
                    let algo = expected.algo();
                    return Err(Failure::HashMismatch {
                        status: format!("hash-mismatch {algo} {} {}", expected.to_nix_base32(), actual.to_nix_base32()),
                    });
                }
                Err(e) => return Err(Failure::Error(e.to_string())),
            }
        }
        Err(Failure::Error(last.unwrap_or_else(|| format!("no valid nar URLs for {shown} at {cache_url}"))))
    }
}

/// How a path's substitution failed, as the C++ daemon tells it apart.
enum Failure {
    /// `guix substitute` said `hash-mismatch ALGO EXPECTED ACTUAL`.
    HashMismatch { status: String },
    /// `guix substitute` raised an error (and printed it).
    Error(String),
}

/// The query answer for a narinfo (`display-narinfo-data`: the download size is that of the
/// best nar, 0 when unknown).
fn info_of(f: &Found) -> SubstitutableInfo {
    let best = choose::preferred(&f.cache_url, &f.info, false).into_iter().next();
    SubstitutableInfo {
        path: f.info.path().clone(),
        deriver: f.info.deriver().cloned(),
        references: f.info.references().to_vec(),
        download_size: best.and_then(|c| c.file_size).unwrap_or(0),
        nar_size: f.info.nar_size(),
    }
}

/// The paths to fetch that are in (or wait on) a cycle of references (Kahn's algorithm).
fn cyclic(infos: &HashMap<StorePath, Found>, valid: &HashSet<StorePath>) -> Vec<StorePath> {
    let mut indegree: HashMap<&StorePath, usize> = HashMap::new();
    let mut referrers: HashMap<&StorePath, Vec<&StorePath>> = HashMap::new();
    for (p, f) in infos {
        if valid.contains(p) {
            continue;
        }
        let deps: Vec<&StorePath> =
            f.info.references().iter().filter(|r| *r != p && infos.contains_key(*r) && !valid.contains(*r)).collect();
        indegree.insert(p, deps.len());
        for d in deps {
            referrers.entry(d).or_default().push(p);
        }
    }
    let mut ready: VecDeque<&StorePath> = indegree.iter().filter(|(_, n)| **n == 0).map(|(p, _)| *p).collect();
    while let Some(p) = ready.pop_front() {
        indegree.remove(p);
        for r in referrers.get(p).into_iter().flatten() {
            if let Some(n) = indegree.get_mut(r) {
                *n -= 1;
                if *n == 0 {
                    ready.push_back(r);
                }
            }
        }
    }
    indegree.into_keys().cloned().collect()
}

/// Progress as `guix substitute` prints it: trace lines (`progress-reporter/trace`) or,
/// without `print-extended-build-trace`, the "Downloading URL..." line.
struct Reporter<'a> {
    ctx: &'a PathOut<'a>,
    file: String,
    url: String,
    size: Option<u64>,
    trace: bool,
}

impl Reporter<'_> {
    fn size(&self) -> String {
        self.size.map_or_else(|| "-".to_owned(), |s| s.to_string())
    }
    fn out(&self, line: String) {
        self.ctx.emit(SubstituteEvent::Output(line.into_bytes()));
    }
}

impl Progress for Reporter<'_> {
    fn started(&mut self, size: Option<u64>) {
        self.size = size;
        if self.trace {
            self.out(format!("@ download-started {} {} {}\n", self.file, self.url, self.size()));
        } else {
            self.out(format!("Downloading {}...\n", self.url));
        }
    }
    fn progress(&mut self, done: u64) {
        if self.trace {
            self.out(format!("@ download-progress {} {} {} {done}\n", self.file, self.url, self.size()));
        }
    }
    fn finished(&mut self, done: u64, reports: u64) {
        if self.trace {
            let size = self.size.unwrap_or(done);
            if reports == 0 {
                // The report Guix makes at its first read (see `fetch::send_bytes`).
                self.progress(done);
            }
            self.out(format!("@ download-progress {} {} {} {size}\n", self.file, self.url, self.size()));
            self.out(format!("@ download-succeeded {} {} {size}\n", self.file, self.url));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_only_with_yes() {
        assert!(allow_unauthenticated(Some("yes")) && allow_unauthenticated(Some("YES")));
        assert!(!allow_unauthenticated(Some("1")) && !allow_unauthenticated(Some("")) && !allow_unauthenticated(None));
    }

    fn found(path: &str, refs: &[&str]) -> (StorePath, Found) {
        let p = StorePath::from_base_name(path).unwrap();
        let text = format!(
            "StorePath: /gnu/store/{path}\nNarHash: sha256:1pm90v61iv2cgv23y2hpmfnqnlwr2sqzhw0bylyww7vh7f5rz8m8\nNarSize: 1\nReferences: {}\n",
            refs.join(" ")
        );
        (p, Found { cache_url: "http://h".into(), info: Arc::new(NarInfo::parse(text.as_bytes()).unwrap()) })
    }

    #[test]
    fn cycles_are_found_self_references_are_not_cycles() {
        let a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a";
        let b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b";
        let c = "cccccccccccccccccccccccccccccccc-c";
        let d = "dddddddddddddddddddddddddddddddd-d";
        let infos: HashMap<_, _> = [found(a, &[a, b]), found(b, &[]), found(c, &[d]), found(d, &[c])].into();
        let mut cyc: Vec<String> = cyclic(&infos, &HashSet::new()).iter().map(|p| p.base_name()).collect();
        cyc.sort();
        assert_eq!(cyc, [c, d]);
        // A valid member breaks the cycle.
        let valid: HashSet<_> = [StorePath::from_base_name(d).unwrap()].into();
        assert!(cyclic(&infos, &valid).is_empty());
    }
}

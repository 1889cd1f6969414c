//! BuildPaths through the builder component (link `builder`, [`guix_ipc::builder`]).
//!
//! This module owns socket-front's side of a build: whether a BuildPaths needs the builder at
//! all (every wanted output valid in Normal mode: answered at once), the temp roots it takes,
//! the one [`BuilderRequest::Build`] it sends (targets, mode, the connection's settings, a job
//! id), and the client's STDERR stream while the builder works — the builder's events written
//! as the C++ daemon writes them, its final reply as the C++ reply or error. The builder
//! itself (goals, build users, chroots, logs, traces) is another process.
//!
//! # What the client sees (C++ `build.cc`, `util.cc`, `nix-daemon.cc` of Guix 1.5.0)
//! * Builder output ([`BuildEvent::Log`]): `DerivationGoal::handleChildOutput` writes each chunk
//!   it read from the build to the client when `verbosity >= buildVerbosity` (both from
//!   SetOptions; the Guile client's defaults are 0 and 0, so the output is shown), one
//!   `STDERR_NEXT` per chunk. With `multiplexed-build-output` the chunk is prefixed, in the
//!   same frame, by `@ build-log PID LEN\n` (LEN: the chunk's length in bytes), whatever
//!   `print-build-trace` says.
//! * Messages ([`BuildEvent::Message`]): `printMsg(level, …)` is written when
//!   `level <= verbosity`, as the text and a newline in one `STDERR_NEXT`. Build traces
//!   (`@ build-started …`) are level 0: always written (the builder emits them only with
//!   `print-build-trace`). The `|   ` nesting prefixes C++ adds at verbosity ≥ 4 (debug) inside
//!   `buildPaths`' and `Worker::run`'s nests are not reproduced.
//! * Substituter output ([`BuildEvent::Output`], for the substitutions the builder runs before
//!   building): as socket-front shows its own substitutions' (`crate::substitute`).
//! * Events dropped because the client read too slowly ([`BuildEvent::Skipped`], which C++
//!   never does): a `note:` line, always written. [`BuildEvent::Alive`]: nothing.
//! * The end: success is `STDERR_LAST` and int 1; a failed build ([`BuildReply::Failed`]) is
//!   `STDERR_ERROR` with the builder's message ("build of `…' failed") and its status (C++
//!   `Worker::exitStatus()`: 101 a timeout, 100 a permanent failure, else 1), which `guix
//!   build` exits with; the connection stays usable. [`BuildReply::Error`] is shown as
//!   `LinkError::client_text("builder")`.
//!
//! # Waits, restarts, a client that leaves
//! A build may run for days, so the call's own deadline ([`JobLimits::call`]) is a year: the
//! bounds that matter are about the builder being there.
//! * While it answers, the builder sends an event at least every
//!   [`guix_ipc::builder::HEARTBEAT`]; with none for [`JobLimits::idle`]
//!   ([`guix_ipc::builder::IDLE_LIMIT`], 60 s) it is taken for hung: the call is dropped (the
//!   link sends `Cancel`) and the same `Build` sent again.
//! * When the stream breaks (the builder restarted or was killed: `Interrupted`, `MaybeDone`,
//!   `Unavailable`, or a `Retryable` error reply) the same `Build`, with the same [`JobId`],
//!   is sent again: the new builder realises what is not valid yet, or the running job is
//!   joined. Events emitted meanwhile are not shown.
//! * The builder may stay unreachable or silent for [`JobLimits::unavailable`] (60 s) in a
//!   row — at first contact, or from the moment a stream broke or the idle limit passed —
//!   before the client gets "builder is unavailable: no answer within 60s…" (status 1, the
//!   connection kept). So a builder that never answers fails a BuildPaths after 60 s; one that
//!   hangs mid-build, 120 s after its last event.
//! * The client's socket is watched all along, as the C++ daemon does with SIGPOLL: when it
//!   reaches end-of-file (the client closed it, or shut down its writing side) the call is
//!   dropped — the builder's job is cancelled — and the connection ends. Bytes the client
//!   sends meanwhile (it should send none) are left for the next request and the watch
//!   stops; a client gone after that is noticed when its socket is next written.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use guix_formats::worker::{BuildMode as WireMode, DerivedPath, Reply, StderrMsg};
use guix_formats::StorePath;
use guix_ipc::builder::{BuildEvent, BuildMode, BuildOptions, BuildReply, BuildTarget, BuilderRequest, BUILDER_LINK};
use guix_ipc::config::DaemonConfig;
use guix_ipc::job::{Heard, JobId, JobLimits, Resend};
use guix_ipc::store_db::{ConnId, HolderId};
use guix_ipc::{Client, ErrorKind};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::backend::{StoreBackend, StoreReads};
use crate::conn::{Conn, Stream};
use crate::error::Failure;

/// The builder link's client as socket-front holds it.
pub type BuilderClient = Client<BuilderRequest, BuildReply, BuildEvent>;

/// Job names unique across restarts of socket-front and of the components running the jobs.
pub struct JobNames {
    /// `socket-front-PID-START`: this incarnation of socket-front (start time in ticks since
    /// boot), so no job name is ever reused by a later one.
    prefix: String,
    next: AtomicU64,
}

impl JobNames {
    pub fn new() -> JobNames {
        let me = HolderId::this_process(crate::backend::HOLDER);
        JobNames { prefix: format!("{}-{}-{}", me.component, me.pid, me.started), next: AtomicU64::new(1) }
    }

    /// This incarnation, the connection and a counter.
    pub fn next(&self, conn: ConnId) -> JobId {
        JobId(format!("{}-{conn:x}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed)))
    }
}

impl Default for JobNames {
    fn default() -> JobNames {
        JobNames::new()
    }
}

/// The builder link of this socket-front: its client, the bounds, and job names.
pub struct BuilderLink {
    client: BuilderClient,
    limits: JobLimits,
    jobs: JobNames,
}

impl BuilderLink {
    pub fn new(client: BuilderClient, limits: JobLimits) -> BuilderLink {
        BuilderLink { client, limits, jobs: JobNames::new() }
    }

    /// The production link: the supervisor's `builder` socket.
    pub fn from_config(config: &DaemonConfig) -> BuilderLink {
        let limits = JobLimits::default();
        let client = guix_ipc::component::connect_link(config, BUILDER_LINK, crate::backend::HOLDER, limits.call);
        BuilderLink::new(client, limits)
    }

    /// A job name unique across restarts of socket-front and of the builder: this
    /// incarnation, the connection and a counter.
    fn new_job(&self, conn: ConnId) -> JobId {
        self.jobs.next(conn)
    }
}

/// A long job's link as [`Conn::run_job`] follows it: its client, bounds, and name.
pub(crate) struct JobLink<'a, Req, Resp, Item> {
    pub client: &'a Client<Req, Resp, Item>,
    pub limits: JobLimits,
    pub name: &'static str,
}

/// What a job's final reply means: the operation's result, or (`Err`) a reason to send the
/// request again (a retryable error: the component restarting).
pub(crate) type Verdict<T> = Result<Result<T, Failure>, String>;

/// Shows one event of a job to the client.
pub(crate) type ShowFn<S, B, Item> =
    for<'c> fn(&'c mut Conn<S, B>, Item) -> std::pin::Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + 'c>>;

/// The note for events the builder dropped for this client.
pub(crate) fn skipped_note(n: u64) -> String {
    format!(
        "note: {n} build events were not shown because the client read them too slowly; the build log has the output"
    )
}

/// The requested derivations, one target per derivation (C++ `makeDerivationGoal` makes one
/// goal per derivation and adds wanted outputs; "all outputs" wins), in path order.
/// Other paths are not built (substitution; see [`Conn::build_paths`]).
pub fn targets(paths: &[DerivedPath]) -> Vec<BuildTarget> {
    let mut by_drv: BTreeMap<StorePath, Option<BTreeSet<String>>> = BTreeMap::new();
    for dp in paths.iter().filter(|dp| dp.path.is_derivation()) {
        let wanted = (!dp.outputs.is_empty()).then(|| dp.outputs.clone());
        match by_drv.entry(dp.path.clone()) {
            Entry::Vacant(v) => {
                v.insert(wanted);
            }
            Entry::Occupied(mut o) => match (o.get_mut(), wanted) {
                (Some(have), Some(more)) => have.extend(more),
                (slot, None) => *slot = None,
                (None, Some(_)) => {}
            },
        }
    }
    by_drv
        .into_iter()
        .map(|(drv, outs)| BuildTarget { drv, outputs: outs.map(|o| o.into_iter().collect()).unwrap_or_default() })
        .collect()
}

/// What the database says about a BuildPaths request.
struct Plan {
    /// The requested paths and every output of the requested derivations (C++ `addTempRoot`
    /// in `SubstitutionGoal::init` and `DerivationGoal::haveDerivation`).
    roots: BTreeSet<StorePath>,
    /// Some wanted output is not valid, or a derivation is not valid itself.
    needs_build: bool,
}

fn plan(r: &dyn StoreReads, paths: &[DerivedPath]) -> Result<Plan, Failure> {
    let mut plan = Plan { roots: BTreeSet::new(), needs_build: false };
    for dp in paths {
        plan.roots.insert(dp.path.clone());
        if !dp.path.is_derivation() {
            // A plain item is substituted (`Conn::substitute_plain`), not built.
            continue;
        }
        let Ok(outputs) = r.derivation_output_map(&dp.path) else {
            plan.needs_build = true;
            continue;
        };
        for (name, out) in outputs {
            if (dp.outputs.is_empty() || dp.outputs.contains(&name)) && !r.is_valid(&out)? {
                plan.needs_build = true;
            }
            plan.roots.insert(out);
        }
    }
    Ok(plan)
}

/// What a client did while its build ran.
enum ClientMove {
    /// End of file (or a broken socket): it is gone.
    Left,
    /// It sent bytes (the next request, or garbage): left unread.
    Sent,
}

async fn client_move<S: AsyncBufRead + Unpin>(s: &mut S) -> ClientMove {
    match s.fill_buf().await {
        Ok(b) if !b.is_empty() => ClientMove::Sent,
        _ => ClientMove::Left,
    }
}

impl<S: Stream, B: StoreBackend> Conn<S, B> {
    /// BuildPaths (9): see the module documentation.
    pub(crate) async fn build_paths(&mut self, paths: Vec<DerivedPath>, mode: WireMode) -> Result<Reply, Failure> {
        if mode == WireMode::Repair && !self.trusted {
            return Err(Failure::fatal("repairing is a privileged operation"));
        }
        let mode = match mode {
            WireMode::Repair => BuildMode::Repair,
            WireMode::Check => BuildMode::Check,
            // C++ accepts any other number and treats it like no special mode.
            WireMode::Normal | WireMode::Other(_) => BuildMode::Normal,
        };
        let targets = targets(&paths);
        let plain: Vec<StorePath> =
            paths.iter().filter(|dp| !dp.path.is_derivation()).map(|dp| dp.path.clone()).collect();
        let shared = self.shared.clone();
        let db = &shared.backend;
        let plan = db.run(move |r| plan(r, &paths)).await?;
        if !plan.roots.is_empty() {
            db.add_temp_roots(self.id, plan.roots.into_iter().collect()).await?;
        }
        // Substitution goals come first in the C++ worker ("a$" keys before "b$").
        let substitution_failed = self.substitute_plain(plain).await?;
        if targets.is_empty() || (!plan.needs_build && mode == BuildMode::Normal) {
            return match substitution_failed {
                Some(msg) => Err(Failure::Status { msg, status: 1 }),
                None => Ok(Reply::Done),
            };
        }
        let options = self.build_options();
        let job = shared.builder.new_job(self.id);
        let built = self.run_build(BuilderRequest::Build { job, targets, mode, options }).await?;
        match substitution_failed {
            Some(msg) => Err(Failure::Status { msg, status: 1 }),
            None => Ok(built),
        }
    }

    /// What the builder needs of this connection's settings.
    fn build_options(&self) -> BuildOptions {
        BuildOptions {
            settings: self.settings.map().clone(),
            keep_going: self.settings.keep_going,
            keep_failed: self.settings.keep_failed,
            print_build_trace: self.settings.print_build_trace,
            client_uid: self.peer.uid,
            substitute: self.substitute_options(),
        }
    }

    /// C++ `LocalStore::repairPath`: a substitution of `p` in repair mode, else, when its
    /// deriver is valid, a build of the deriver in repair mode (its outcome, as in C++, is
    /// only what the build printed); else the error "cannot repair path `P'" (returned, for
    /// the caller to print). A failure of our own links fails the request.
    pub(crate) async fn repair_path(&mut self, p: &StorePath) -> Result<Option<String>, Failure> {
        let shared = self.shared.clone();
        let db = &shared.backend;
        let shown = shared.store.display(p);
        let q = p.clone();
        let deriver = db
            .run(move |r| {
                let Some(info) = r.try_path_info(&q)? else { return Ok(None) };
                match info.deriver {
                    Some(d) if r.is_valid(&d)? => Ok(Some(d)),
                    _ => Ok(None),
                }
            })
            .await?;
        db.add_temp_roots(self.id, vec![p.clone()]).await?;
        let substituted = self.substitute(vec![p.clone()], true).await?;
        if substituted.iter().all(|(_, o)| *o == guix_ipc::substituter::Outcome::Valid) {
            return Ok(None);
        }
        let Some(drv) = deriver else { return Ok(Some(format!("cannot repair path `{shown}'"))) };
        db.add_temp_roots(self.id, vec![drv.clone()]).await?;
        let options = self.build_options();
        let job = shared.builder.new_job(self.id);
        let targets = vec![BuildTarget { drv, outputs: Vec::new() }];
        match self.run_build(BuilderRequest::Build { job, targets, mode: BuildMode::Repair, options }).await {
            Ok(_) | Err(Failure::Status { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends `req` to the builder until it answers, showing its events (module documentation,
    /// "Waits").
    async fn run_build(&mut self, req: BuilderRequest) -> Result<Reply, Failure> {
        let shared = self.shared.clone();
        let link = JobLink { client: &shared.builder.client, limits: shared.builder.limits, name: BUILDER_LINK.name };
        let verdict = |r: BuildReply| match r {
            BuildReply::Done => Ok(Ok(Reply::Done)),
            BuildReply::Failed { status, message } => Ok(Err(Failure::Status { msg: message, status })),
            BuildReply::Error(e) if e.kind == ErrorKind::Retryable => Err(e.message),
            BuildReply::Error(e) => Ok(Err(Failure::Op(e.client_text(BUILDER_LINK.name)))),
        };
        self.run_job(link, req, |c, e| Box::pin(c.show(e)), verdict).await
    }

    /// Sends `req` (a job of another component: the builder, the gc) until it answers,
    /// showing its events with `show`, the final reply judged by `verdict` (module
    /// documentation, "Waits": idle limit, resend after a break, the unavailable bound, a
    /// client that leaves).
    pub(crate) async fn run_job<Req, Resp, Item, T>(
        &mut self,
        link: JobLink<'_, Req, Resp, Item>,
        req: Req,
        show: ShowFn<S, B, Item>,
        verdict: impl Fn(Resp) -> Verdict<T>,
    ) -> Result<T, Failure>
    where
        Req: guix_ipc::LinkRequest,
        Resp: serde::de::DeserializeOwned + Send + 'static,
        Item: serde::de::DeserializeOwned + Send + 'static,
    {
        // The frames shown for a run of events that are ready at once are written together.
        self.hold_frames();
        let res = async {
            let mut watching = true;
            let mut job = Resend::new(link.client, req, link.limits);
            loop {
                let heard = {
                    let mut next = std::pin::pin!(job.next());
                    // Polled once first: when nothing is ready, what is held goes out before
                    // the wait (the same future is then awaited: nothing is dropped half-read).
                    match std::future::poll_fn(|cx| std::task::Poll::Ready(next.as_mut().poll(cx))).await {
                        std::task::Poll::Ready(v) => v,
                        std::task::Poll::Pending => {
                            self.write_held().await?;
                            self.unless_client_leaves(&mut watching, next).await?
                        }
                    }
                };
                match heard {
                    Ok(Heard::Item(event)) => show(self, event).await?,
                    Ok(Heard::Reply(r)) => match verdict(r) {
                        Ok(done) => return done,
                        Err(retry) => job.resend(retry),
                    },
                    Err(e) => return Err(Failure::Op(e.client_text(link.name))),
                }
            }
        }
        .await;
        let written = self.release_frames().await;
        let out = res?;
        written?;
        Ok(out)
    }

    /// Waits for `fut` while watching the client's socket (module documentation): fails with
    /// [`Failure::Gone`] when the client leaves first.
    pub(crate) async fn unless_client_leaves<T>(
        &mut self,
        watching: &mut bool,
        fut: impl Future<Output = T>,
    ) -> Result<T, Failure> {
        tokio::pin!(fut);
        loop {
            let s = self.stream()?;
            tokio::select! {
                biased;
                m = client_move(s), if *watching => match m {
                    ClientMove::Left => return Err(Failure::Gone("the client left during a build".into())),
                    ClientMove::Sent => *watching = false,
                },
                v = &mut fut => return Ok(v),
            }
        }
    }

    /// Writes one builder event to the client, as the C++ daemon would (module documentation).
    async fn show(&mut self, event: BuildEvent) -> Result<(), Failure> {
        match event {
            BuildEvent::Log { pid, bytes } => {
                if bytes.is_empty() || self.settings.verbosity < self.settings.build_verbosity {
                    return Ok(());
                }
                let chunk = if self.settings.multiplexed_build_output() {
                    let mut b = format!("@ build-log {pid} {}\n", bytes.len()).into_bytes();
                    b.extend_from_slice(&bytes);
                    b
                } else {
                    bytes
                };
                self.send(&StderrMsg::Next(chunk)).await
            }
            BuildEvent::Output(bytes) => self.show_substitute_output(bytes).await,
            BuildEvent::Message { level, text } if level <= self.settings.verbosity => self.log(&text).await,
            BuildEvent::Message { .. } | BuildEvent::Alive => Ok(()),
            BuildEvent::Skipped(n) => self.log(&skipped_note(n)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guix_formats::StoreDir;
    use std::time::Duration;

    fn dp(s: &str, outs: &[&str]) -> DerivedPath {
        let path = StoreDir::default().parse(&format!("/gnu/store/{}-{s}", "a".repeat(32))).unwrap();
        DerivedPath { path, outputs: outs.iter().map(|o| o.to_string()).collect() }
    }

    #[test]
    fn targets_merge_outputs_per_derivation_and_skip_plain_items() {
        let t = targets(&[dp("x.drv", &["out"]), dp("x.drv", &["dev"]), dp("y.drv", &[]), dp("z", &[])]);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].outputs, vec!["dev".to_owned(), "out".to_owned()]);
        assert!(t[1].outputs.is_empty());
        // "All outputs" wins, in either order.
        let t = targets(&[dp("x.drv", &["out"]), dp("x.drv", &[])]);
        assert!(t[0].outputs.is_empty());
        let t = targets(&[dp("x.drv", &[]), dp("x.drv", &["out"])]);
        assert!(t[0].outputs.is_empty());
    }

    #[test]
    fn job_names_are_unique_and_name_the_incarnation() {
        let client = Client::new("/nonexistent", BUILDER_LINK, "test", Duration::from_secs(1));
        let link = BuilderLink::new(client, JobLimits::default());
        let (a, b) = (link.new_job(0x1_0000_0002), link.new_job(0x1_0000_0002));
        assert_ne!(a, b);
        assert!(a.0.starts_with(&format!("socket-front-{}-", std::process::id())), "{a}");
        assert!(a.0.contains("-100000002-"), "{a}");
    }
}

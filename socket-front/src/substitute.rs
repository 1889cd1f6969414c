//! Substitutes through the substituter component (link `substituter`,
//! [`guix_ipc::substituter`]).
//!
//! This module owns socket-front's side: what a connection's settings contribute to a
//! request ([`Conn::substitute_options`]: the URLs under the C++ rules, the trace flags),
//! the queries behind HasSubstitutes, QuerySubstitutablePaths and
//! QuerySubstitutablePathInfo(s), and the substitution of plain store paths a client asks
//! for (EnsurePath; BuildPaths of non-derivations, C++ `makeSubstitutionGoal`), with the
//! client's STDERR stream while it runs.
//!
//! # What the client sees
//! * Queries: the lines `guix substitute --query` writes on its standard error, prefixed
//!   `substitute: ` as the C++ daemon relays them; with substitutes off, empty answers and
//!   no call.
//! * A substitution: [`SubstituteEvent::Output`] (what `guix substitute` prints: the
//!   `@ download-*` lines, warnings) written as it is when `verbosity >= buildVerbosity`, as
//!   `SubstitutionGoal::handleChildOutput` does; messages at their `printMsg` level (the
//!   `@ substituter-*` traces are level 0).
//! * The end: EnsurePath of a path that could not be made valid fails with "path `P' does
//!   not exist and cannot be created" (status 1); BuildPaths with "build of `P' failed" for
//!   the plain paths whose substitution *failed* — one with no substitute at all is not a
//!   failure there, as in C++ (`ecNoSubstituters` is not `ecFailed`), and the path stays
//!   invalid.
//!
//! # Waits
//! A `Query` gets [`QUERY_DEADLINE`]. A `Substitute` is followed as a build is
//! ([`Conn::run_job`], [`guix_ipc::job::Resend`] under the default [`JobLimits`]): the call may
//! last a year, but with no event for [`guix_ipc::substituter::IDLE_LIMIT`] the substituter is
//! taken for hung and the same request (same job) is sent again, as it is when the stream
//! breaks; after [`JobLimits::unavailable`] (60 s) in a row without it the client gets
//! "substituter is unavailable: …". A client that leaves cancels the call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use guix_formats::worker::{Reply, StderrMsg, SubstitutablePathInfo};
use guix_formats::StorePath;
use guix_ipc::config::DaemonConfig;
use guix_ipc::job::{JobId, JobLimits};
use guix_ipc::store_db::{ConnId, HolderId};
use guix_ipc::substituter::{
    Outcome, SubstitutableInfo, SubstituteEvent, SubstituteOptions, SubstituterReply, SubstituterRequest,
    SUBSTITUTER_LINK,
};
use guix_ipc::{Client, ErrorKind, LinkError};

use crate::backend::StoreBackend;
use crate::build::JobLink;
use crate::conn::{Conn, Stream};
use crate::error::Failure;

pub type SubstituterClient = Client<SubstituterRequest, SubstituterReply, SubstituteEvent>;

/// How long a query may take (narinfos of many paths from slow servers).
pub const QUERY_DEADLINE: Duration = Duration::from_secs(300);

/// The substituter link of this socket-front.
pub struct SubstituterLink {
    client: SubstituterClient,
    job_prefix: String,
    next_job: AtomicU64,
}

impl SubstituterLink {
    pub fn new(client: SubstituterClient) -> SubstituterLink {
        let me = HolderId::this_process(crate::backend::HOLDER);
        SubstituterLink {
            client,
            job_prefix: format!("{}-{}-{}-subst", me.component, me.pid, me.started),
            next_job: AtomicU64::new(1),
        }
    }

    /// The production link: the supervisor's `substituter` socket.
    pub fn from_config(config: &DaemonConfig) -> SubstituterLink {
        let client =
            guix_ipc::component::connect_link(config, SUBSTITUTER_LINK, crate::backend::HOLDER, QUERY_DEADLINE);
        SubstituterLink::new(client)
    }

    fn new_job(&self, conn: ConnId) -> JobId {
        JobId(format!("{}-{conn:x}-{}", self.job_prefix, self.next_job.fetch_add(1, Ordering::Relaxed)))
    }
}

/// The wire's form of an info.
pub fn wire_info(i: &SubstitutableInfo) -> SubstitutablePathInfo {
    SubstitutablePathInfo {
        deriver: i.deriver.clone(),
        references: i.references.iter().cloned().collect(),
        download_size: i.download_size,
        nar_size: i.nar_size,
    }
}

/// `Worker`-style list of paths: "`/gnu/store/a', `/gnu/store/b'" (C++ `showPaths`).
fn show_paths(paths: &[String]) -> String {
    paths.iter().map(|p| format!("`{p}'")).collect::<Vec<_>>().join(", ")
}

impl<S: Stream, B: StoreBackend> Conn<S, B> {
    /// What this connection's settings contribute (module documentation of
    /// [`guix_ipc::substituter`]).
    pub(crate) fn substitute_options(&self) -> SubstituteOptions {
        let extended = self
            .settings
            .get("untrusted-print-extended-build-trace")
            .or_else(|| self.settings.get("print-extended-build-trace"))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .is_some_and(|n| n > 0);
        SubstituteOptions {
            urls: self.settings.substitute_urls(),
            print_build_trace: extended,
            daemon_traces: self.settings.print_build_trace,
            repair: false,
        }
    }

    /// The infos of the paths that have a substitute (none with substitutes off).
    pub(crate) async fn query_substitutes(&mut self, paths: Vec<StorePath>) -> Result<Vec<SubstitutableInfo>, Failure> {
        let options = self.substitute_options();
        if options.urls.is_empty() || paths.is_empty() {
            return Ok(Vec::new());
        }
        let shared = self.shared.clone();
        let reply = shared.substituter.client.call(SubstituterRequest::Query { paths, options }).await;
        match reply {
            Ok(SubstituterReply::Infos { infos, messages }) => {
                // Relayed as the C++ daemon relays what its agent writes on stderr.
                for m in messages {
                    self.send(&StderrMsg::Next(format!("substitute: {m}").into_bytes())).await?;
                }
                Ok(infos)
            }
            Ok(SubstituterReply::Error(e)) => Err(Failure::Op(e.client_text(SUBSTITUTER_LINK.name))),
            Ok(SubstituterReply::Substituted(_)) => {
                Err(Failure::Op(LinkError::internal("unexpected reply").client_text(SUBSTITUTER_LINK.name)))
            }
            Err(e) => Err(Failure::Op(LinkError::from(e).client_text(SUBSTITUTER_LINK.name))),
        }
    }

    /// The replies of the four query operations.
    pub(crate) async fn has_substitutes(&mut self, p: StorePath) -> Result<Reply, Failure> {
        let infos = self.query_substitutes(vec![p.clone()]).await?;
        Ok(Reply::Bool(infos.iter().any(|i| i.path == p)))
    }

    pub(crate) async fn substitutable_paths(&mut self, ps: BTreeSet<StorePath>) -> Result<Reply, Failure> {
        let infos = self.query_substitutes(ps.into_iter().collect()).await?;
        Ok(Reply::Paths(infos.into_iter().map(|i| i.path).collect()))
    }

    pub(crate) async fn substitutable_infos(&mut self, ps: BTreeSet<StorePath>) -> Result<Reply, Failure> {
        let infos = self.query_substitutes(ps.into_iter().collect()).await?;
        let map: BTreeMap<StorePath, SubstitutablePathInfo> =
            infos.iter().map(|i| (i.path.clone(), wire_info(i))).collect();
        Ok(Reply::QuerySubstitutablePathInfos(map))
    }

    /// QuerySubstitutablePathInfo (21): the path as the client sent it (not checked, as in
    /// C++: a string that is no store path has no substitute).
    pub(crate) async fn substitutable_info(&mut self, s: String) -> Result<Reply, Failure> {
        let Ok(p) = self.shared.store.parse(&s) else { return Ok(Reply::SubstitutablePathInfo(None)) };
        let infos = self.query_substitutes(vec![p.clone()]).await?;
        Ok(Reply::SubstitutablePathInfo(infos.iter().find(|i| i.path == p).map(wire_info)))
    }

    /// EnsurePath (10): valid already, or substituted now.
    pub(crate) async fn ensure_path(&mut self, p: StorePath) -> Result<Reply, Failure> {
        let shared = self.shared.clone();
        let db = &shared.backend;
        db.add_temp_roots(self.id, vec![p.clone()]).await?;
        if db.query(|r| r.is_valid(&p))? {
            return Ok(Reply::Done);
        }
        let outcomes = self.substitute(vec![p.clone()], false).await?;
        if outcomes.iter().all(|(_, o)| *o == Outcome::Valid) && !outcomes.is_empty() {
            return Ok(Reply::Done);
        }
        let shown = self.shared.store.display(&p);
        Err(Failure::Status { msg: format!("path `{shown}' does not exist and cannot be created"), status: 1 })
    }

    /// BuildPaths' plain paths: those not valid are substituted; the message for those whose
    /// substitution failed (module documentation), if any.
    pub(crate) async fn substitute_plain(&mut self, plain: Vec<StorePath>) -> Result<Option<String>, Failure> {
        let shared = self.shared.clone();
        let db = &shared.backend;
        let invalid: Vec<StorePath> = {
            let mut v = Vec::new();
            for p in plain {
                if !db.query(|r| r.is_valid(&p))? {
                    v.push(p);
                }
            }
            v
        };
        if invalid.is_empty() || self.substitute_options().urls.is_empty() {
            return Ok(None);
        }
        let outcomes = self.substitute(invalid, false).await?;
        let failed: Vec<String> = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
            .map(|(p, _)| self.shared.store.display(p))
            .collect();
        Ok((!failed.is_empty()).then(|| format!("build of {} failed", show_paths(&failed))))
    }

    /// Sends one `Substitute` (with `repair`, of valid paths to replace) until it is
    /// answered, showing its events.
    pub(crate) async fn substitute(
        &mut self,
        paths: Vec<StorePath>,
        repair: bool,
    ) -> Result<Vec<(StorePath, Outcome)>, Failure> {
        let options = SubstituteOptions { repair, ..self.substitute_options() };
        if options.urls.is_empty() {
            return Ok(paths.into_iter().map(|p| (p, Outcome::NoSubstitute)).collect());
        }
        let shared = self.shared.clone();
        let link = &shared.substituter;
        let req = SubstituterRequest::Substitute { job: link.new_job(self.id), paths, options };
        let job = JobLink { client: &link.client, limits: JobLimits::default(), name: SUBSTITUTER_LINK.name };
        let verdict = |r: SubstituterReply| match r {
            SubstituterReply::Substituted(outcomes) => Ok(Ok(outcomes)),
            SubstituterReply::Error(e) if e.kind == ErrorKind::Retryable => Err(e.message),
            SubstituterReply::Error(e) => Ok(Err(Failure::Op(e.client_text(SUBSTITUTER_LINK.name)))),
            SubstituterReply::Infos { .. } => Err("unexpected reply".to_owned()),
        };
        self.run_job(job, req, |c, e| Box::pin(c.show_substitute_event(e)), verdict).await
    }

    /// What `guix substitute` printed: written as it is when `verbosity >= buildVerbosity`
    /// (`SubstitutionGoal::handleChildOutput`), for socket-front's substitutions and the
    /// builder's alike.
    pub(crate) async fn show_substitute_output(&mut self, bytes: Vec<u8>) -> Result<(), Failure> {
        if bytes.is_empty() || self.settings.verbosity < self.settings.build_verbosity {
            return Ok(());
        }
        if let Some(started) = self.downloads.before(&bytes) {
            self.send(&StderrMsg::Next(started)).await?;
        }
        self.send(&StderrMsg::Next(bytes)).await
    }

    async fn show_substitute_event(&mut self, event: SubstituteEvent) -> Result<(), Failure> {
        match event {
            SubstituteEvent::Output(bytes) => self.show_substitute_output(bytes).await,
            SubstituteEvent::Message { level, text } if level <= self.settings.verbosity => self.log(&text).await,
            SubstituteEvent::Message { .. } | SubstituteEvent::Alive => Ok(()),
            SubstituteEvent::Skipped(n) => {
                self.log(&format!(
                    "note: {n} substitution events were not shown because the client read them too slowly"
                ))
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_shown_as_cxx_shows_them() {
        assert_eq!(show_paths(&["/gnu/store/a".into(), "/gnu/store/b".into()]), "`/gnu/store/a', `/gnu/store/b'");
    }

    #[test]
    fn job_names_name_the_incarnation() {
        let client = Client::new("/nonexistent", SUBSTITUTER_LINK, "test", Duration::from_secs(1));
        let link = SubstituterLink::new(client);
        let (a, b) = (link.new_job(7), link.new_job(7));
        assert_ne!(a, b);
        assert!(a.0.starts_with(&format!("socket-front-{}-", std::process::id())), "{a}");
    }
}

/// The download traces one client was sent, so that what it is sent stays a sequence the Guix
/// client can follow when events were skipped (a client that reads too slowly misses some,
/// [`SubstituteEvent::Skipped`]): its `guix build` status display fails ("struct-vtable … #f"
/// in `guix/status.scm`) on an `@ download-succeeded` for an item it saw no
/// `@ download-started` or `@ download-progress` of. Such a line is preceded by the
/// `@ download-started` it missed (same item, URL and size).
#[derive(Debug, Default)]
pub(crate) struct DownloadTraces {
    ongoing: std::collections::HashSet<Vec<u8>>,
}

impl DownloadTraces {
    /// Notes the trace line `bytes` about to be sent; returns the line to send before it.
    pub(crate) fn before(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let field = |rest: &[u8], n: usize| rest.split(|&b| b == b' ').nth(n).map(<[u8]>::to_vec);
        if let Some(rest) =
            line.strip_prefix(b"@ download-started ").or_else(|| line.strip_prefix(b"@ download-progress "))
        {
            self.ongoing.extend(field(rest, 0));
            return None;
        }
        let rest = line.strip_prefix(b"@ download-succeeded ")?;
        let (item, uri, size) = (field(rest, 0)?, field(rest, 1)?, field(rest, 2)?);
        if self.ongoing.remove(&item) {
            return None;
        }
        Some([b"@ download-started ".as_slice(), &item, b" ", &uri, b" ", &size, b"\n"].concat())
    }
}

#[cfg(test)]
mod download_trace_tests {
    use super::DownloadTraces;

    #[test]
    fn a_success_without_its_start_gets_one() {
        let mut t = DownloadTraces::default();
        let item = "/gnu/store/00000000000000000000000000000000-x";
        let ok = format!("@ download-succeeded {item} http://h/nar/gzip/x 120\n");
        // Seen started: nothing added.
        assert_eq!(t.before(format!("@ download-started {item} http://h/nar/gzip/x 120\n").as_bytes()), None);
        assert_eq!(t.before(ok.as_bytes()), None);
        // Started and progress skipped: the start is made up from the success.
        assert_eq!(
            t.before(ok.as_bytes()),
            Some(format!("@ download-started {item} http://h/nar/gzip/x 120\n").into_bytes())
        );
        // A progress line counts as a start (the client makes the download from it).
        assert_eq!(t.before(format!("@ download-progress {item} http://h/nar/gzip/x 120 60\n").as_bytes()), None);
        assert_eq!(t.before(ok.as_bytes()), None);
        // Anything else passes.
        assert_eq!(t.before(b"substituting /gnu/store/x...\n"), None);
        assert_eq!(t.before(b"@ download-succeeded short\n"), None);
    }
}

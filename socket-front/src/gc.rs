//! CollectGarbage and OptimiseStore through the gc component (link `gc`, [`guix_ipc::gc`]).
//!
//! This module owns socket-front's side: the keep rules of the connection (the daemon's
//! `gc-keep-outputs` / `gc-keep-derivations`, overridden by a trusted client's SetOptions as
//! C++ `settings.update()` reads them), the one request sent with a job id, and the STDERR
//! stream while the gc works: each [`GcEvent::Message`] written when its `printMsg` level is at
//! most the client's verbosity, [`GcEvent::Skipped`] as a note, [`GcEvent::Alive`] nothing.
//! The waits, resends and the client leaving are those of a build ([`crate::build`], "Waits":
//! [`Conn::run_job`]). The refusals come first, as in C++: a TCP client is refused before
//! `startWork` (in [`crate::conn`]), `ignore-liveness` after it.
//!
//! The reply on the wire is the paths, the bytes freed and an obsolete 0.

use guix_formats::worker::request::GcOptions;
use guix_formats::worker::{GcAction as WireAction, Reply};
use guix_ipc::config::DaemonConfig;
use guix_ipc::gc::{GcAction, GcEvent, GcReply, GcRequest, KeepRules, GC_LINK};
use guix_ipc::store_db::ConnId;
use guix_ipc::{Client, ErrorKind};

use crate::backend::StoreBackend;
use crate::build::{JobLink, JobNames, Verdict};
use crate::conn::{Conn, Stream};
use crate::error::Failure;
use crate::settings::Settings;
use guix_ipc::job::JobLimits;

pub type GcClient = Client<GcRequest, GcReply, GcEvent>;

/// The gc link of this socket-front.
pub struct GcLink {
    client: GcClient,
    limits: JobLimits,
    jobs: JobNames,
}

impl GcLink {
    pub fn new(client: GcClient, limits: JobLimits) -> GcLink {
        GcLink { client, limits, jobs: JobNames::new() }
    }

    /// The production link: the supervisor's `gc` socket. A collection may take long (the
    /// call's deadline is a year); the gc's heartbeats bound the waits that matter.
    pub fn from_config(config: &DaemonConfig) -> GcLink {
        let limits = JobLimits { idle: guix_ipc::gc::IDLE_LIMIT, ..JobLimits::default() };
        let client = guix_ipc::component::connect_link(config, GC_LINK, crate::backend::HOLDER, limits.call);
        GcLink::new(client, limits)
    }

    fn new_job(&self, conn: ConnId) -> guix_ipc::job::JobId {
        self.jobs.next(conn)
    }
}

/// The keep rules of a connection: `gc-keep-outputs` and `gc-keep-derivations` as the
/// connection's settings have them (a trusted client's override), else the daemon's.
pub fn keep_rules(settings: &Settings, config: &DaemonConfig) -> KeepRules {
    let flag = |key: &str, default: bool| settings.get(key).map_or(default, |v| v == "true");
    KeepRules {
        outputs: flag("gc-keep-outputs", config.gc_keep_outputs),
        derivations: flag("gc-keep-derivations", config.gc_keep_derivations),
    }
}

fn verdict<T>(r: GcReply, ok: impl Fn(GcReply) -> Option<T>) -> Verdict<T> {
    match r {
        GcReply::Error(e) if e.kind == ErrorKind::Retryable => Err(e.message),
        GcReply::Error(e) if e.kind == ErrorKind::Client => Ok(Err(Failure::Op(e.message))),
        GcReply::Error(e) => Ok(Err(Failure::Op(e.client_text(GC_LINK.name)))),
        other => Ok(ok(other).ok_or_else(|| Failure::Op("internal error in gc: unexpected reply".into()))),
    }
}

impl<S: Stream, B: StoreBackend> Conn<S, B> {
    /// CollectGarbage (20).
    pub(crate) async fn collect_garbage(&mut self, g: GcOptions) -> Result<Reply, Failure> {
        if g.ignore_liveness {
            return Err(Failure::op("you are not allowed to ignore liveness"));
        }
        let action = match g.action {
            WireAction::ReturnLive => GcAction::ReturnLive,
            WireAction::ReturnDead => GcAction::ReturnDead,
            WireAction::DeleteDead => GcAction::DeleteDead,
            WireAction::DeleteSpecific => GcAction::DeleteSpecific,
            WireAction::Other(n) => return Err(Failure::Op(format!("unknown garbage collector action {n}"))),
        };
        let shared = self.shared.clone();
        let keep = keep_rules(&self.settings, &shared.config);
        let req = GcRequest::Collect {
            job: shared.gc.new_job(self.id),
            action,
            paths: g.paths_to_delete.into_iter().collect(),
            max_freed: g.max_freed,
            ignore_liveness: false,
            keep,
        };
        let link = JobLink { client: &shared.gc.client, limits: shared.gc.limits, name: GC_LINK.name };
        let ok = |r| match r {
            GcReply::Collected { paths, bytes_freed } => {
                Some(Reply::CollectGarbage { paths: paths.into_iter().collect(), bytes_freed })
            }
            _ => None,
        };
        self.run_job(link, req, |c, e| Box::pin(c.show_gc(e)), |r| verdict(r, ok)).await
    }

    /// OptimiseStore (34).
    pub(crate) async fn optimise_store(&mut self) -> Result<Reply, Failure> {
        let shared = self.shared.clone();
        let req = GcRequest::Optimise { job: shared.gc.new_job(self.id) };
        let link = JobLink { client: &shared.gc.client, limits: shared.gc.limits, name: GC_LINK.name };
        let ok = |r| matches!(r, GcReply::Optimised).then_some(Reply::Done);
        self.run_job(link, req, |c, e| Box::pin(c.show_gc(e)), |r| verdict(r, ok)).await
    }

    async fn show_gc(&mut self, event: GcEvent) -> Result<(), Failure> {
        match event {
            GcEvent::Message { level, text } if level <= self.settings.verbosity => self.log(&text).await,
            GcEvent::Message { .. } | GcEvent::Alive => Ok(()),
            GcEvent::Skipped(n) => {
                self.log(&format!(
                    "note: {n} garbage collector messages were not shown because the client read them too slowly"
                ))
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guix_formats::worker::SetOptions;

    #[test]
    fn keep_rules_from_the_daemon_and_trusted_overrides() {
        let config = DaemonConfig { gc_keep_outputs: true, gc_keep_derivations: false, ..DaemonConfig::default() };
        let mut s = Settings::new(&config);
        assert_eq!(keep_rules(&s, &config), KeepRules { outputs: true, derivations: false });
        let o = |kv: &[(&str, &str)]| SetOptions {
            overrides: kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..SetOptions::default()
        };
        let flip = o(&[("gc-keep-outputs", "false"), ("gc-keep-derivations", "true")]);
        // Untrusted: ignored (stored as untrusted-…).
        s.apply(&flip, false, false).unwrap();
        assert_eq!(keep_rules(&s, &config), KeepRules { outputs: true, derivations: false });
        s.apply(&flip, true, false).unwrap();
        assert_eq!(keep_rules(&s, &config), KeepRules { outputs: false, derivations: true });
    }
}

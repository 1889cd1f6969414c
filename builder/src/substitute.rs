//! The builder's side of the `substituter` link (`guix_ipc::substituter`): the substitutions
//! a goal runs before it builds (its outputs, C++ `DerivationGoal::haveDerivation`) and for
//! its missing input sources (`outputsSubstituted`), as C++ substitution goals.
//!
//! One `Substitute` job per call, under a job id unique across restarts of the builder
//! (`builder-PID-START-subst-N`). Its events go to the goal's request as they come
//! ([`BuildEvent::Output`] for what `guix substitute` would print, messages at their
//! levels). The call is followed as socket-front follows one ([`Resend`] under the default
//! [`JobLimits`]): when the stream breaks (the substituter restarted or was killed) or no
//! event came for [`guix_ipc::substituter::IDLE_LIMIT`], the same request is sent again under the same id (the
//! substituter attaches to the running job, or a new substituter starts it again: what was
//! registered stays valid); after [`JobLimits::unavailable`] (60 s) in a row without it, the
//! goal fails with "substituter is unavailable: …". A goal that is cancelled drops the call,
//! which cancels the job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use guix_formats::StorePath;
use guix_ipc::builder::BuildEvent;
use guix_ipc::job::{Heard, JobId, JobLimits, Resend};
use guix_ipc::store_db::HolderId;
use guix_ipc::substituter::{Outcome, SubstituteEvent, SubstituterReply, SubstituterRequest, SUBSTITUTER_LINK};
use guix_ipc::{Client, ErrorKind};

use crate::error::{Error, FailureKind, Result};
use crate::schedule::{Builder, Job};

pub type SubstituterClient = Client<SubstituterRequest, SubstituterReply, SubstituteEvent>;

/// The builder's substituter link and its job names.
pub struct SubstituterLink {
    client: SubstituterClient,
    prefix: String,
    next: AtomicU64,
}

impl SubstituterLink {
    pub fn new(client: SubstituterClient) -> SubstituterLink {
        let me = HolderId::this_process(crate::schedule::HOLDER);
        SubstituterLink { client, prefix: format!("{}-{}-{}-subst", me.component, me.pid, me.started), next: 1.into() }
    }

    fn new_job(&self) -> JobId {
        JobId(format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed)))
    }
}

/// How a set of substitutions ended, counted as a C++ goal counts its waitees.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Every path not made valid (`nrFailed`).
    pub failed: usize,
    /// Of those, without a substitute (`nrNoSubstituters`).
    pub no_substitute: usize,
    /// Of those, with a reference lacking a substitute (`nrIncompleteClosure`).
    pub incomplete: usize,
}

impl Tally {
    pub fn of(outcomes: &[(StorePath, Outcome)]) -> Tally {
        let mut t = Tally::default();
        for (_, o) in outcomes {
            match o {
                Outcome::Valid => continue,
                Outcome::NoSubstitute => t.no_substitute += 1,
                Outcome::IncompleteClosure => t.incomplete += 1,
                Outcome::Failed(_) => {}
            }
            t.failed += 1;
        }
        t
    }

    /// Some substitution failed for another reason than a missing substitute.
    pub fn some_failed(&self) -> bool {
        self.failed > self.no_substitute + self.incomplete
    }
}

/// Substitutes `paths` (with their closures) for `job`'s goal; one outcome per path; with
/// `repair`, valid ones are fetched again and replaced. With substitutes off, every path has
/// none (nothing is asked).
pub async fn substitute(
    b: &Arc<Builder>,
    job: &Arc<Job>,
    paths: Vec<StorePath>,
    repair: bool,
) -> Result<Vec<(StorePath, Outcome)>> {
    let options = guix_ipc::substituter::SubstituteOptions { repair, ..job.settings.substitute.clone() };
    if options.urls.is_empty() || paths.is_empty() {
        return Ok(paths.into_iter().map(|p| (p, Outcome::NoSubstitute)).collect());
    }
    let link = &b.substituter;
    let req = SubstituterRequest::Substitute { job: link.new_job(), paths, options };
    let mut call = Resend::new(&link.client, req, JobLimits::default());
    let failed = |text: String| Error::build(FailureKind::Misc, text);
    loop {
        match call.next().await {
            Ok(Heard::Item(event)) => relay(job, event),
            Ok(Heard::Reply(SubstituterReply::Substituted(outcomes))) => return Ok(outcomes),
            Ok(Heard::Reply(SubstituterReply::Error(e))) if e.kind == ErrorKind::Retryable => call.resend(e.message),
            Ok(Heard::Reply(SubstituterReply::Error(e))) => return Err(failed(e.client_text(SUBSTITUTER_LINK.name))),
            Ok(Heard::Reply(SubstituterReply::Infos { .. })) => call.resend("unexpected reply".to_owned()),
            Err(e) => return Err(failed(e.client_text(SUBSTITUTER_LINK.name))),
        }
    }
}

/// One substituter event as the goal's request shows it.
fn relay(job: &Job, event: SubstituteEvent) {
    match event {
        SubstituteEvent::Output(bytes) => job.emit(BuildEvent::Output(bytes)),
        SubstituteEvent::Message { level, text } => job.message(level, text),
        SubstituteEvent::Skipped(n) => job.emit(BuildEvent::Skipped(n)),
        // The builder's own heartbeat keeps socket-front's call alive.
        SubstituteEvent::Alive => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_as_cxx_goals_do() {
        let p = |s: &str| StorePath::from_base_name(&format!("{}-{s}", "a".repeat(32))).unwrap();
        let t = Tally::of(&[
            (p("v"), Outcome::Valid),
            (p("n"), Outcome::NoSubstitute),
            (p("i"), Outcome::IncompleteClosure),
        ]);
        assert_eq!(t, Tally { failed: 2, no_substitute: 1, incomplete: 1 });
        assert!(!t.some_failed());
        let t = Tally::of(&[(p("f"), Outcome::Failed("x".into())), (p("n"), Outcome::NoSubstitute)]);
        assert!(t.some_failed());
    }
}

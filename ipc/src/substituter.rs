//! The `substituter` link: socket-front and the builder → substituter.
//!
//! Version 2 dropped `max_jobs` from [`SubstituteOptions`]: substitutions are not bounded by
//! `build-max-jobs` any more but by the substituter's own limit of parallel downloads, their
//! events shown in the order one build slot would have run them.
//!
//! The C++ daemon hands substitution to the Guile helper `guix substitute`, in two roles: a
//! `--query` agent answering `have PATHS` and `info PATHS`, and a `--substitute` agent
//! fetching one path per request. Ours is one process for every client; the two roles are
//! [`SubstituterRequest::Query`] (many paths per request, looked up in parallel) and
//! [`SubstituterRequest::Substitute`] (a job: the closure of the paths fetched, verified and
//! registered, with events streamed while it runs).
//!
//! # What the client's settings contribute ([`SubstituteOptions`])
//! socket-front resolves them as the C++ daemon and `guix substitute` do, and the
//! substituter takes them as they are:
//! - `urls`: empty when substitutes are off (`--no-substitutes`, or the client's
//!   `build-use-substitutes`/useSubstitutes field turning them off); else the client's
//!   `untrusted-substitute-urls` when it set some (an untrusted client's `substitute-urls`
//!   override, which C++ stores under that name), else the `substitute-urls` of the daemon
//!   (or a trusted client's override). Any client may thus name any server, as with the C++
//!   daemon: what is accepted from it is decided by signatures, not by who asked.
//! - `print_build_trace`: the client's `print-extended-build-trace` (or
//!   `untrusted-print-extended-build-trace`) > 0: progress as `@ download-*` trace lines;
//! - `daemon_traces`: the client's print-build-trace field: the daemon's own
//!   `@ substituter-*` lines;
//!
//! Trust is the daemon's, never the client's: narinfos must be signed by a key of
//! `<conf>/acl`, unless the daemon's environment has `GUIX_ALLOW_UNAUTHENTICATED_SUBSTITUTES`
//! set to "yes" (which `guix substitute`, started by the C++ daemon, inherits).
//!
//! # Jobs and restarts
//! A `Substitute` names a [`JobId`] chosen by its caller; one for a running job attaches to
//! it. It is idempotent: a path already valid is not fetched again, so after a substituter
//! restart the caller sends the same request and what was registered stays; an interrupted
//! download is started again from scratch (its scratch entry is removed by store-db's sweep
//! of dead writers). `Query` only reads.

use guix_formats::StorePath;
use serde::{Deserialize, Serialize};

use crate::job::JobId;
use crate::{LinkError, LinkRequest, LinkSpec};

pub const SUBSTITUTER_LINK: LinkSpec = LinkSpec { name: "substituter", version: 3 };

/// What a request takes from the client's settings (module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SubstituteOptions {
    /// The substitute servers, in order (http, https or file URLs); empty: substitutes off.
    pub urls: Vec<String>,
    /// `print-extended-build-trace`: progress as `@ download-started/progress/succeeded` lines
    /// instead of human-readable text.
    pub print_build_trace: bool,
    /// The print-build-trace field of SetOptions: the `@ substituter-started/succeeded/failed`
    /// (and `@ hash-mismatch`) lines the C++ daemon prints.
    pub daemon_traces: bool,
    /// C++ `SubstitutionGoal` in repair mode (`repairPath`): the requested paths are fetched
    /// even when valid and replace the valid ones (store-db `ReplaceItems`); their
    /// references are substituted as usual.
    pub repair: bool,
}

/// What a substitute server says about a path (`guix substitute --query`'s `info` answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubstitutableInfo {
    pub path: StorePath,
    pub deriver: Option<StorePath>,
    pub references: Vec<StorePath>,
    /// The compressed size of the nar that would be downloaded (0 when unknown).
    pub download_size: u64,
    pub nar_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubstituterRequest {
    /// Which of `paths` have a substitute the daemon trusts, with their infos (answers
    /// HasSubstitutes, QuerySubstitutablePaths and QuerySubstitutablePathInfo(s)). Answers
    /// [`SubstituterReply::Infos`]: in the order of `paths`, the paths without a substitute
    /// left out.
    Query { paths: Vec<StorePath>, options: SubstituteOptions },
    /// Make `paths` valid by substituting each with its closure (references first), as C++
    /// substitution goals do. Streams [`SubstituteEvent`]s, then answers
    /// [`SubstituterReply::Substituted`].
    Substitute { job: JobId, paths: Vec<StorePath>, options: SubstituteOptions },
}

/// How the substitution of one requested path ended (C++ `Goal::ExitCode`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Valid now (substituted, or it already was).
    Valid,
    /// No server has a substitute the daemon trusts (`ecNoSubstituters`).
    NoSubstitute,
    /// A reference could not be substituted for lack of a substitute (`ecIncompleteClosure`).
    IncompleteClosure,
    /// Fetching it or a reference failed (`ecFailed`): the message says why.
    Failed(String),
}

/// What the client is shown while a `Substitute` runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubstituteEvent {
    /// What `guix substitute` writes on its standard error (progress, `@ download-*` lines,
    /// warnings): the C++ daemon copies it to the client as it is when `verbosity >=
    /// buildVerbosity` (`SubstitutionGoal::handleChildOutput`).
    Output(Vec<u8>),
    /// A line the C++ daemon prints with `printMsg(level, …)`, without its newline.
    Message { level: u32, text: String },
    /// Some events were dropped because the caller read too slowly.
    Skipped(u64),
    /// Sent every [`HEARTBEAT`] while the job runs (see [`IDLE_LIMIT`]).
    Alive,
}

/// The heartbeat of [`SubstituteEvent::Alive`] and the caller's idle limit, as on every job link.
pub use crate::job::{HEARTBEAT, IDLE_LIMIT};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubstituterReply {
    /// The infos, and what `guix substitute --query` would have written on its standard
    /// error (warnings, "looking for substitutes on '…'... 100.0%", each with its newline),
    /// which the C++ daemon relays to the client prefixed with `substitute: `.
    Infos {
        infos: Vec<SubstitutableInfo>,
        messages: Vec<String>,
    },
    /// One outcome per requested path, in the request's order.
    Substituted(Vec<(StorePath, Outcome)>),
    Error(LinkError),
}

impl LinkRequest for SubstituterRequest {
    /// See the module documentation.
    fn idempotent(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_postcard() {
        let p = StorePath::from_base_name("1x9vvimabb763h6ca48gb3p3cbshkyjq-a").unwrap();
        let req = SubstituterRequest::Substitute {
            job: JobId("j".into()),
            paths: vec![p.clone()],
            options: SubstituteOptions {
                urls: vec!["http://x".into()],
                print_build_trace: true,
                daemon_traces: true,
                repair: false,
            },
        };
        let bytes = postcard::to_stdvec(&req).unwrap();
        assert_eq!(postcard::from_bytes::<SubstituterRequest>(&bytes).unwrap(), req);
        let reply = SubstituterReply::Substituted(vec![(p, Outcome::Failed("x".into()))]);
        let bytes = postcard::to_stdvec(&reply).unwrap();
        assert_eq!(postcard::from_bytes::<SubstituterReply>(&bytes).unwrap(), reply);
        assert!(req.idempotent());
    }
}

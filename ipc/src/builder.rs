//! The `builder` link: socket-front → builder.
//!
//! Version 2 added what the builder needs to substitute a derivation's outputs and missing
//! input sources before building ([`BuildOptions::substitute`], `build-fallback` in
//! [`BuildOptions::settings`]) and [`BuildEvent::Output`].
//!
//! A client's BuildPaths or EnsurePath of a derivation becomes one [`BuilderRequest::Build`].
//! The builder realises every wanted output (input derivations first, one build per output
//! across all requests) and streams [`BuildEvent`]s while it works: the builder's output bytes,
//! and the lines the C++ daemon prints (its messages and `@ build-…` traces, already filtered
//! by the request's `print-build-trace`). socket-front turns them into the client's STDERR
//! stream (verbosity, `multiplexed-build-output`) and the final [`BuildReply`] into the reply.
//!
//! # Jobs and restarts
//! Every `Build` names a [`JobId`] chosen by socket-front. A `Build` whose job the builder is
//! already running attaches to it (its further events, then its reply) instead of starting the
//! work again. When the builder restarts in the middle of a build, its builds die with it (each
//! build process is killed when the builder that started it dies), and socket-front sends the
//! same `Build` again to the new builder: outputs that became valid are not built again, the
//! others are built from the start. So a builder restart costs the builds in flight their
//! progress, never a client error.
//!
//! Idempotency ([`LinkRequest`]): `Build` is idempotent — realising a valid output does
//! nothing, and a second `Build` of a running job joins it. The [`crate::Client`] resends it
//! only if none of its events was handed out; socket-front itself sends it again after a
//! stream was cut ([`crate::ClientError::Interrupted`]).
//!
//! Failures: a build that fails is [`BuildReply::Failed`] with the C++ daemon's status (1, 100,
//! 101) and message; [`BuildReply::Error`] is a failure of the request itself.

use std::collections::BTreeMap;

use guix_formats::StorePath;
use serde::{Deserialize, Serialize};

use crate::job::JobId;
use crate::substituter::SubstituteOptions;
use crate::{LinkError, LinkRequest, LinkSpec};

pub const BUILDER_LINK: LinkSpec = LinkSpec { name: "builder", version: 2 };

/// How to build (the wire's `BuildMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildMode {
    Normal,
    /// Build again and compare with the valid outputs (`--check`).
    Check,
    /// Build again and replace outputs that are corrupt (`--repair`).
    Repair,
}

/// One derivation to realise, and which of its outputs (empty: all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildTarget {
    pub drv: StorePath,
    pub outputs: Vec<String>,
}

/// What the builder needs to know about the client and its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildOptions {
    /// The connection's setting overrides as the C++ worker keeps them (`build-max-jobs`,
    /// `build-cores`, `build-max-silent-time`, `build-timeout`, `build-repeat`,
    /// `build-max-log-size`, `build-cache-failure`, …; socket-front has checked their syntax).
    /// Settings not in the map are the daemon's.
    pub settings: BTreeMap<String, String>,
    pub keep_going: bool,
    pub keep_failed: bool,
    /// `print-build-trace`: the builder emits the `@ build-…` lines only when it is set.
    pub print_build_trace: bool,
    /// The client's uid when known (a `--keep-failed` build directory is given to it).
    pub client_uid: Option<u32>,
    /// How the builder asks the substituter for a derivation's outputs and missing input
    /// sources, resolved by socket-front as for its own substitutions (`urls` empty:
    /// substitutes off, nothing is asked).
    pub substitute: SubstituteOptions,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuilderRequest {
    /// Realise the targets' outputs (BuildPaths, EnsurePath). Streams [`BuildEvent`]s, then
    /// answers [`BuildReply`].
    Build { job: JobId, targets: Vec<BuildTarget>, mode: BuildMode, options: BuildOptions },
}

/// What the client is shown while a request runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildEvent {
    /// Bytes a builder wrote (its stdout and stderr, merged), from the build process `pid`
    /// (`@ build-log PID LEN` when the client asked for multiplexed output). socket-front shows
    /// them when the client's verbosity is at least its build verbosity.
    Log { pid: u32, bytes: Vec<u8> },
    /// What the substituter printed for a substitution the builder asked for (`guix
    /// substitute`'s standard error in C++, `SubstitutionGoal::handleChildOutput`): shown as
    /// it is when the verbosity is at least the build verbosity, never with `@ build-log`.
    Output(Vec<u8>),
    /// A line the C++ daemon prints with `printMsg(level, …)` (0 = error: always shown, 1 =
    /// info, 2 = talkative, …), without its newline. Build traces are level 0.
    Message { level: u32, text: String },
    /// Some of this request's events were dropped because it read them too slowly; the log
    /// file has everything.
    Skipped(u64),
    /// Sent every [`HEARTBEAT`] while the request runs, so that socket-front can tell a silent
    /// build from a builder that hangs: with no event for [`IDLE_LIMIT`] it gives up on the
    /// call (cancelling it) and sends the `Build` again.
    Alive,
}

/// The heartbeat of [`BuildEvent::Alive`] and the caller's idle limit, as on every job link.
pub use crate::job::{HEARTBEAT, IDLE_LIMIT};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildReply {
    /// Every wanted output is valid.
    Done,
    /// Some build failed: the client gets `message` with `status` (C++ `buildPaths`: 101 if a
    /// build timed out, 100 for a permanent failure, else 1).
    Failed {
        status: u32,
        message: String,
    },
    Error(LinkError),
}

impl LinkRequest for BuilderRequest {
    /// See the module documentation.
    fn idempotent(&self) -> bool {
        true
    }
}

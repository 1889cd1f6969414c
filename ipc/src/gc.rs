//! The `gc` link: socket-front → gc.
//!
//! A client's CollectGarbage becomes one [`GcRequest::Collect`], its OptimiseStore one
//! [`GcRequest::Optimise`]. The gc streams the lines the C++ daemon prints while it works
//! ("finding garbage collector roots...", `[SIZE] deleting '…'`, …) as [`GcEvent::Message`]s,
//! then answers a [`GcReply`].
//!
//! # Jobs and restarts
//! Every request names a [`JobId`] chosen by socket-front; a request whose job the gc is
//! already running attaches to it. A collection is safe to interrupt at any point (store-db
//! decides each deletion, and only ever moves an item away after invalidating it), so when the
//! gc restarts in the middle, socket-front sends the same request again and the new gc
//! collects from the start: what was deleted stays deleted, and is not reported twice
//! (a path already gone is not in the new collection's results; its bytes are lost from the
//! count, as a C++ collection killed half-way loses them).
//!
//! Idempotency ([`LinkRequest`]): both requests are (collecting twice deletes nothing more
//! than once; optimising an optimised store changes nothing).

use guix_formats::StorePath;
use serde::{Deserialize, Serialize};

use crate::job::JobId;
use crate::{LinkError, LinkRequest, LinkSpec};

pub const GC_LINK: LinkSpec = LinkSpec { name: "gc", version: 1 };

/// The wire's `GCAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GcAction {
    ReturnLive,
    ReturnDead,
    DeleteDead,
    DeleteSpecific,
}

/// What a collection keeps besides the closure of its roots (the daemon's `gc-keep-outputs`
/// and `gc-keep-derivations`, as the connection's settings have them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeepRules {
    /// A live derivation keeps its valid outputs alive.
    pub outputs: bool,
    /// A live output keeps the derivation recorded as its deriver alive.
    pub derivations: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GcRequest {
    /// CollectGarbage (20). `paths` only for [`GcAction::DeleteSpecific`]; `max_freed` as the
    /// client sent it (`u64::MAX`: no limit). `ignore_liveness` is refused by socket-front for
    /// clients, as the C++ daemon refuses it; it is here for the daemon's own use.
    Collect {
        job: JobId,
        action: GcAction,
        paths: Vec<StorePath>,
        max_freed: u64,
        ignore_liveness: bool,
        keep: KeepRules,
    },
    /// OptimiseStore (34): deduplicate every valid path through `<store>/.links`.
    Optimise { job: JobId },
}

/// What the client is shown while a request runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GcEvent {
    /// A line the C++ daemon prints with `printMsg(level, …)` (0 = error: always shown, 1 =
    /// info, 2 = talkative, …), without its newline.
    Message { level: u32, text: String },
    /// Sent every [`HEARTBEAT`] while the request runs (see [`IDLE_LIMIT`]).
    Alive,
    /// Some events were dropped because the caller read too slowly.
    Skipped(u64),
}

/// The heartbeat of [`GcEvent::Alive`] and the caller's idle limit, as on every job link.
pub use crate::job::{HEARTBEAT, IDLE_LIMIT};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GcReply {
    /// The collection's results as the client receives them: the paths (absolute names in the
    /// store; invalid entries need not be store paths), sorted as the C++ `PathSet` is, and
    /// the bytes freed.
    Collected { paths: Vec<String>, bytes_freed: u64 },
    /// OptimiseStore finished.
    Optimised,
    /// The request failed; a `Client` error's message is what the client is told.
    Error(LinkError),
}

impl LinkRequest for GcRequest {
    /// See the module documentation.
    fn idempotent(&self) -> bool {
        true
    }
}

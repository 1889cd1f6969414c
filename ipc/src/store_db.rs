//! The `store-db` link: socket-front (and later builder, substituter, gc) → store-db.
//!
//! store-db is the only writer of the database and the only process that renames items into the
//! store.
//!
//! Idempotency ([`LinkRequest`]): every request but `BeginCollection` is, so [`crate::Client`] resends it after a
//! store-db restart: adding a path that is already valid returns it unchanged (and the retry
//! of an `AddItems` whose rename happened but whose commit did not accepts the renamed item),
//! `ReplaceItems` skips the swap when the path already has the announced contents,
//! temp-root messages may be applied twice, late, or in any order (below), an indirect root
//! is made by renaming over its name, `InvalidateMissing` checks again before removing, and
//! `DeleteDead` finds what it deleted gone (`KeptBecause::Gone`).
//!
//! Failures are [`LinkError`]s: `Client` for what the guix client is told (the C++ daemon's
//! wording), `Internal` for store-db's own faults.
//!
//! # Temp roots
//! A *holder* (socket-front, the builder and the substituter: [`ROOT_HOLDERS`]) keeps the
//! authoritative copy of the temp roots of its connections and tells store-db about every
//! change, each message stamped ([`RootStamp`]) with the holder's identity ([`HolderId`]) and a
//! holder-local sequence number assigned, under the holder's lock, when its local state
//! changed. store-db merges them by rules that do not depend on the order in which messages
//! are applied (see `guix_store_db::server::roots` and ARCHITECTURE.md). What a holder must
//! guarantee:
//! - sequence numbers grow strictly; every change (roots added, connection closed, snapshot
//!   for a sync) takes a new one;
//! - a connection's roots only grow until it is closed, and a [`ConnId`] is never used again
//!   after its `ConnectionClosed`;
//! - a root is in the holder's copy before any message carrying it is sent;
//! - after every new link connection (or a failed call) it sends a complete
//!   `SyncConnections` before relying on store-db holding its roots.

use std::fs;

use guix_formats::{Hash, StorePath};
use serde::{Deserialize, Serialize};

use crate::gc::KeepRules;
use crate::{LinkError, LinkRequest, LinkSpec};

pub const STORE_DB_LINK: LinkSpec = LinkSpec { name: "store-db", version: 10 };

/// The components that hold temp roots. After store-db starts, nothing may be collected until
/// each of them has completed a sync with it (or is known not to run): store-db's
/// `RootsBarrier`. A component that starts holding roots is added here (and must be a row of
/// the supervisor's components table).
pub const ROOT_HOLDERS: &[&str] = &["socket-front", "builder", "substituter"];

/// A client connection, as numbered by socket-front. The high 32 bits are socket-front's pid,
/// so numbers from a previous socket-front incarnation never collide with current ones.
pub type ConnId = u64;

/// One incarnation of a root-holding component: its name, pid, and start time (clock ticks
/// since boot, `/proc/self/stat` field 22). A restarted component is a new holder; store-db
/// drops the roots of an incarnation once a later-started one of the same component speaks
/// (the supervisor runs one process per component, starting a new one only after the old
/// one was reaped).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HolderId {
    pub component: String,
    pub pid: u32,
    pub started: u64,
}

impl HolderId {
    /// This process as the holder `component`. Without `/proc`, `started` is 0, so no
    /// incarnation of the component is ever taken for older than another (their roots stay
    /// until store-db restarts: more kept, never less).
    pub fn this_process(component: &str) -> HolderId {
        let started = fs::read_to_string("/proc/self/stat").ok().and_then(|s| start_time(&s)).unwrap_or(0);
        HolderId { component: component.to_owned(), pid: std::process::id(), started }
    }
}

/// Field 22 (`starttime`) of a `/proc/PID/stat` line; the command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses.
fn start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Where a temp-root change comes from: a connection of a holder, and the holder's sequence
/// number of the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootStamp {
    pub holder: HolderId,
    pub conn: ConnId,
    pub seq: u64,
}

/// A finished item, and what to register for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewItem {
    /// Where its contents are.
    pub source: ItemSource,
    /// Its final name in the store.
    pub path: StorePath,
    /// SHA-256 of its NAR serialisation, computed while it was written.
    pub nar_hash: Hash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
}

/// The contents of a [`NewItem`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemSource {
    /// File name of the item inside the scratch directory (one path component). The tree is
    /// complete and canonicalised (modes 0444/0555, mtime 1, owned by the daemon).
    ///
    /// The scratch directory and the naming of its entries are `guix_store::scratch`'s.
    Scratch(String),
    /// A regular file's contents, at most [`MAX_INLINE_TEXT`] bytes (AddTextToStore):
    /// store-db writes the file at its final name itself (mode 0444, mtime 1), as the C++
    /// daemon does, instead of renaming a scratch copy. One file created in the store
    /// directory instead of one in the scratch directory plus a rename.
    Text(Vec<u8>),
}

/// The largest [`ItemSource::Text`].
pub const MAX_INLINE_TEXT: usize = 64 * 1024;

impl NewItem {
    /// The scratch entry holding the item, if it is in one.
    pub fn scratch_name(&self) -> Option<&str> {
        match &self.source {
            ItemSource::Scratch(name) => Some(name),
            ItemSource::Text(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreDbRequest {
    /// Moves the items into the store and registers them in one transaction (a `.drv` is parsed
    /// and checked, and its outputs recorded). Items already valid are left as they are and
    /// their scratch copies removed. Also adds every path to the connection's temp roots
    /// (before the items become valid).
    AddItems {
        conn: RootStamp,
        items: Vec<NewItem>,
    },
    /// Repairing (C++ `replaceValidPath` and `registerValidPaths`): as `AddItems`, but the
    /// files of an item whose path is valid are replaced: its scratch entry and the path's
    /// files swap names in one `renameat2(RENAME_EXCHANGE)`, so the path is never missing,
    /// then its row gets the new hash and size and its new references (registration time and
    /// deriver stay), and the old files are deleted. Items must be scratch entries. Invalid
    /// paths are added as by `AddItems`; all items are registered in one transaction. A
    /// resent request finds the path's files already the announced ones and only registers.
    ReplaceItems {
        conn: RootStamp,
        items: Vec<NewItem>,
    },
    /// Adds temp roots for a connection.
    AddTempRoots {
        conn: RootStamp,
        paths: Vec<StorePath>,
    },
    /// The connection ended: its temp roots go away, and later-applied additions for it are
    /// ignored.
    ConnectionClosed {
        conn: RootStamp,
    },
    /// The holder's live connections at its sequence number `seq`. With `complete`, each
    /// with all its roots (sent after every new link connection: store-db may have restarted
    /// and lost them; counts for the barrier); without, the roots lists are empty (a cheap
    /// sync that lets store-db forget closed connections). store-db never removes a root of
    /// a connection listed, nor of one opened after `seq`; it forgets the connections the
    /// holder had closed by `seq`. A sync older than one already applied is ignored.
    SyncConnections {
        holder: HolderId,
        seq: u64,
        live: Vec<(ConnId, Vec<StorePath>)>,
        complete: bool,
    },
    /// Creates the GC root symlink `gcroots/auto/<hash>` → `path` (AddIndirectRoot).
    AddIndirectRoot {
        path: String,
    },
    ClearFailedPaths {
        paths: Vec<StorePath>,
    },
    /// `registerFailedPath` for each path (the outputs of a build that failed, with
    /// `--cache-failures`): later builds of them fail at once as "cached".
    RegisterFailedPaths {
        paths: Vec<StorePath>,
    },
    /// VerifyStore's clean-up of paths whose files disappeared (`verifyPath`): each path, in
    /// order (referrers before what they refer to), is removed from the database if nothing is
    /// at its store name any more (checked again, by the writer) and no other valid path
    /// refers to it; a path whose files are back is left alone.
    InvalidateMissing {
        paths: Vec<StorePath>,
    },
    /// The gc starts a collection: answers [`StoreDbReply::CollectionBegun`] with every temp
    /// root at this instant; from then on every path made a temp root is recorded for the
    /// collection, until [`StoreDbRequest::EndCollection`] or until the collection has been
    /// idle (no request naming it) for [`COLLECTION_LEASE`]. Refused (a retryable error naming
    /// the holders waited for) until every component of [`ROOT_HOLDERS`] has synced after a
    /// store-db start. Not idempotent: a resent one begins a second collection, which expires.
    BeginCollection,
    /// Deletes store entries the gc found dead, each only if it is still dead now (see
    /// [`DeadEntry`] and ARCHITECTURE.md, "Garbage collection"). For each entry accepted, in
    /// order: a valid path is invalidated (all the batch's in one transaction), then a
    /// directory is renamed into `<store>/trash` (created if missing) so that the gc can delete
    /// its files outside the writer, and anything else is unlinked at once, as C++ does. Stops
    /// after the first entry that brings `freed_before` plus the entries'
    /// [`Deleted::accounted`] bytes above `max_freed`. An unknown (expired, or begun before a
    /// store-db restart) collection is a retryable error: the gc begins again.
    ///
    /// A large batch is decided and deleted in parts (cut between [`DeadBatch::groups`], each
    /// one transaction, about [`DEAD_PART_TARGET`] of the writer's time), with the requests
    /// that came meanwhile run between parts; the reply lists the deletions of every part. The
    /// result is the one of sending the parts as batches one after the other. A failure after
    /// a part was deleted ends the batch with [`DeleteOutcome::stopped`], so the gc still
    /// learns what went.
    DeleteDead(DeadBatch),
    /// The collection is over: store-db stops recording new temp roots for it.
    EndCollection {
        collection: CollectionId,
    },
    /// C++ `createUser` for a client with this uid: `<state>/profiles/per-user/<name>` (the
    /// user's name from the password database), mode 0755, owned by the user. Nothing happens
    /// for a uid without a user or with an unusable name. socket-front asks only when the
    /// directory is not already there with that owner; it cannot make it itself (not root).
    EnsureUserProfile {
        uid: u32,
    },
    /// Signs an export (`guix authenticate sign`): the SHA-256 `digest` of the record, with
    /// `<conf>/signing-key.sec` (C++ `checkSecrecy` first: the key must be 0600 or
    /// stricter). Answers [`StoreDbReply::Signature`]: the signature's canonical
    /// S-expression (advanced syntax, as it goes into the export trailer). The key never
    /// leaves store-db.
    SignDigest {
        digest: Hash,
    },
}

/// One [`StoreDbRequest::DeleteDead`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadBatch {
    pub collection: CollectionId,
    pub entries: Vec<DeadEntry>,
    /// The sizes of the runs of `entries` that must be decided together (strongly connected
    /// components: each keeps the others alive), in order; they add up to `entries.len()`.
    /// store-db decides a large batch in parts of about [`DEAD_PART_TARGET`] each, cut only
    /// between these runs, so that additions waiting for the writer go in between.
    pub groups: Vec<u32>,
    pub keep: KeepRules,
    pub freed_before: u64,
    pub max_freed: u64,
    /// How many links a file may have for its deletion to count as freeing its size (C++
    /// `linkThreshold`: 2 with automatic deduplication, where every file ≥ 8 KiB is also in
    /// `.links`, else 1).
    pub link_threshold: u64,
}

/// How long store-db's writer spends on one part of a [`DeadBatch`] before it lets waiting
/// requests in: what an addition may wait behind a collection. Measured with `guix-bench
/// --scenario gc`: about a dozen entries.
pub const DEAD_PART_TARGET: std::time::Duration = std::time::Duration::from_micros(500);

/// A collection, as store-db numbers them.
pub type CollectionId = u64;

/// How long store-db keeps a collection that no request names any more (a gc that died).
pub const COLLECTION_LEASE: std::time::Duration = std::time::Duration::from_secs(300);

/// A store directory entry a collection wants gone, in the order deletions must happen
/// (for valid paths: every path that keeps it alive first, or in the same batch).
///
/// store-db refuses an entry ([`KeptBecause`]) when it is a temp root, or became one since the
/// collection began (even if released again); when it is `<P>.lock` or `<P>.chroot` of such a
/// path `P`; when its validity is not what the gc saw; when it is valid and something that
/// keeps it alive (a valid referrer other than itself; with `keep.derivations` a valid output
/// whose deriver it is; with `keep.outputs` a valid deriver of it) is valid and not deleted by
/// the same batch; when an entry it keeps alive was refused; and when its name is one store-db
/// owns (`.links`, `trash`, the scratch directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadEntry {
    /// Its name in the store directory: one path component, not necessarily a store path's.
    pub name: String,
    /// Whether the gc saw it as a valid path.
    pub valid: bool,
}

/// An entry store-db deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub name: String,
    /// Its name under `<store>/trash` now (`None`: it was deleted in place: a file or symlink,
    /// or a directory that could not be moved — no space for the trash directory, or another
    /// file system).
    pub trashed_as: Option<String>,
    /// What the C++ collector counts for it when it deletes it (`bytesInvalidated` for a
    /// directory: its NAR size if it was valid, else 0; `bytesFreed` for anything else: its
    /// size if it has at most `link_threshold` links once the batch's earlier entries are
    /// gone), for `[SIZE] deleting` and `max_freed`.
    pub accounted: u64,
    /// Whether it was a directory (its bytes freed are counted when the trash is emptied).
    pub is_dir: bool,
    /// Bytes freed by deleting it in place (`trashed_as` is `None`), else 0.
    pub freed_in_place: u64,
}

/// Why store-db did not delete an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeptBecause {
    /// It is a temp root, became one during the collection, or is the lock or chroot of one.
    TempRoot,
    /// This valid path keeps it alive.
    LiveReferrer(String),
    /// Its validity changed since the gc looked.
    ValidityChanged,
    /// An entry of the batch that it keeps alive was kept.
    KeepsKept,
    /// Nothing is at that name any more (a valid path's row is removed all the same, as the
    /// C++ collector does, without reporting it).
    Gone,
    /// A name store-db owns.
    Reserved,
    /// Not reached: the batch stopped at `max_freed`.
    NotReached,
}

/// What [`StoreDbRequest::DeleteDead`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOutcome {
    /// In the order deleted.
    pub deleted: Vec<Deleted>,
    pub kept: Vec<(String, KeptBecause)>,
    /// The batch stopped because `max_freed` was exceeded.
    pub limit_reached: bool,
    /// The batch stopped early on this failure (a database or file-system error), after
    /// deleting what `deleted` lists; the entries not reached are not in `kept`.
    pub stopped: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreDbReply {
    Ok,
    CollectionBegun {
        id: CollectionId,
        temp_roots: Vec<StorePath>,
    },
    Deleted(DeleteOutcome),
    /// The answer to [`StoreDbRequest::SignDigest`].
    Signature(Vec<u8>),
    /// The request failed; a `Client` error's message is what the client is told (the C++
    /// daemon's wording).
    Error(LinkError),
}

impl LinkRequest for StoreDbRequest {
    /// Every request of this link but `BeginCollection` is idempotent (module documentation).
    fn idempotent(&self) -> bool {
        !matches!(self, StoreDbRequest::BeginCollection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_a_stat_line() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time(line), Some(987654));
        assert_eq!(start_time("garbage"), None);
        let me = HolderId::this_process("t");
        assert!(me.started > 0);
        assert_eq!(me, HolderId::this_process("t"));
    }
}

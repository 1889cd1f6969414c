//! The `store-db` link: socket-front (and later builder, substituter, gc) → store-db.
//!
//! store-db is the only writer of the database and the only process that renames items into the
//! store.
//!
//! Idempotency ([`LinkRequest`]): every request is, so [`crate::Client`] resends it after a
//! store-db restart: adding a path that is already valid returns it unchanged (and the retry
//! of an `AddItems` whose rename happened but whose commit did not accepts the renamed item),
//! temp roots are sets, `ConnectionClosed` of a closed connection does nothing,
//! `SyncConnections` replaces (not extends) the set of live connections, an indirect root is
//! made by renaming over its name, and `InvalidateMissing` checks again before removing.
//!
//! Failures are [`LinkError`]s: `Client` for what the guix client is told (the C++ daemon's
//! wording), `Internal` for store-db's own faults.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use guix_formats::{Hash, StorePath};
use serde::{Deserialize, Serialize};

use crate::{LinkError, LinkRequest, LinkSpec};

pub const STORE_DB_LINK: LinkSpec = LinkSpec { name: "store-db", version: 4 };

/// A client connection, as numbered by socket-front. The high 32 bits are socket-front's pid,
/// so numbers from a previous socket-front incarnation never collide with current ones.
pub type ConnId = u64;

/// Name of the scratch directory, directly under the store directory (same file system, so a
/// finished item is moved into place with `rename`). Writers create their work there; only
/// store-db moves things out of it.
pub const SCRATCH_DIR_NAME: &str = ".rs-scratch";

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
    /// Writers name their entries `<writer-pid>-<anything>`: store-db removes the entries of
    /// writers that are no longer alive (at its startup and periodically), and entries named
    /// otherwise once they are an hour old.
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
    /// their scratch copies removed. Also adds every path to the connection's temp roots.
    AddItems {
        conn: ConnId,
        items: Vec<NewItem>,
    },
    /// Adds temp roots for a connection.
    AddTempRoots {
        conn: ConnId,
        paths: Vec<StorePath>,
    },
    /// The connection ended: its temp roots go away.
    ConnectionClosed {
        conn: ConnId,
    },
    /// The complete set of live connections of the caller, sent after (re)connecting with the
    /// temp roots of each; store-db drops every other connection's roots.
    SyncConnections {
        live: Vec<(ConnId, Vec<StorePath>)>,
    },
    /// Creates the GC root symlink `gcroots/auto/<hash>` → `path` (AddIndirectRoot).
    AddIndirectRoot {
        path: String,
    },
    ClearFailedPaths {
        paths: Vec<StorePath>,
    },
    /// VerifyStore's clean-up of paths whose files disappeared (`verifyPath`): each path, in
    /// order (referrers before what they refer to), is removed from the database if nothing is
    /// at its store name any more (checked again, by the writer) and no other valid path
    /// refers to it; a path whose files are back is left alone.
    InvalidateMissing {
        paths: Vec<StorePath>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreDbReply {
    Ok,
    /// The request failed; a `Client` error's message is what the client is told (the C++
    /// daemon's wording).
    Error(LinkError),
}

impl LinkRequest for StoreDbRequest {
    /// Every request of this link is idempotent (module documentation).
    fn idempotent(&self) -> bool {
        true
    }
}

/// Creates `dest` (which must not exist) holding `contents`, canonical as a store file: mode
/// 0444, mtime 1. Shared by the writers of text items (in scratch space or, in store-db, at
/// their final name).
pub fn write_canonical_text(dest: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o444).open(dest)?;
    f.write_all(contents)?;
    drop(f);
    canonicalise(dest)
}

/// Sets the modification time of every file, directory and symlink of the tree to 1 (the
/// epoch plus one second), as `canonicalisePathMetaData` does; modes are the writer's. Shared
/// by every component that writes items.
pub fn canonicalise(path: &Path) -> io::Result<()> {
    let one = nix::sys::time::TimeSpec::new(1, 0);
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            canonicalise(&entry?.path())?;
        }
    }
    nix::sys::stat::utimensat(None, path, &one, &one, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
        .map_err(io::Error::from)
}

/// `deletePath`: removes a file, symlink or directory tree, making directories writable
/// first (store and scratch directories are 0555). A path that does not exist is not an error.
/// Shared by every component that removes scratch or store trees.
pub fn delete_tree(path: &Path) -> io::Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if md.is_dir() {
        if md.mode() & 0o700 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode((md.mode() | 0o700) & 0o7777))?;
        }
        for entry in fs::read_dir(path)? {
            delete_tree(&entry?.path())?;
        }
        match fs::remove_dir(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    } else {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

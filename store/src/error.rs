//! The error type of the store library (and of store-db, which re-exports it).
//!
//! Where the C++ daemon has a message for the same condition, `Display` gives exactly that
//! message, because clients see it verbatim (`store-protocol-error` in Guile).

use std::io;
use std::path::PathBuf;

use guix_formats::store_path::StorePathError;
use thiserror::Error;

/// Everything that can go wrong in this crate.
#[derive(Debug, Error)]
pub enum Error {
    /// `queryPathInfo` and friends on a path that is not in `ValidPaths`.
    #[error("path `{0}' is not valid")]
    NotValid(String),

    /// `queryValidPathId` on a path that is not in `ValidPaths`: an unknown reference during
    /// registration, or `queryDerivationOutputs` on an invalid derivation. The C++ daemon 1.5.0
    /// passes a Boost-style `%1%` to `std::format`, so its message never names the path; we
    /// reproduce the message byte for byte and keep the path for our own logs.
    #[error("path `%1%' is not valid")]
    NotValidId(String),

    /// `queryPathFromHashPart` with a hash part that is not 32 bytes long.
    #[error("invalid hash part")]
    InvalidHashPart,

    /// `invalidatePathChecked` on a path that other valid paths still refer to.
    #[error("cannot delete path `{path}' because it is in use by {referrers}")]
    PathInUse {
        path: String,
        /// The referrers in the C++ `showPaths` form: `` `a', `b' ``.
        referrers: String,
    },

    /// The registered batch has a reference cycle (`topoSortPaths`).
    #[error("cycle detected in the references of `{0}'")]
    Cycle(String),

    /// A `hash` column without an algorithm prefix.
    #[error("corrupt hash `{hash}' in valid-path entry for `{path}'")]
    CorruptHash { hash: String, path: String },

    /// A `hash` column with an unknown algorithm.
    #[error("unknown hash type `{algo}' in valid-path entry for `{path}'")]
    UnknownHashType { algo: String, path: String },

    /// A path column that does not hold a store path of this store.
    #[error("invalid store path `{value}' in the store database: {source}")]
    CorruptPath {
        value: String,
        #[source]
        source: StorePathError,
    },

    /// A column that holds something this crate does not understand (negative size, ...).
    #[error("corrupt store database: {0}")]
    Corrupt(String),

    /// Registration input that the C++ daemon would have rejected with an assertion.
    #[error("cannot register `{path}': {reason}")]
    BadRegistration { path: String, reason: &'static str },

    /// `db/schema` holds a version newer than 7.
    #[error("current store schema is version {0}, but I only support {SCHEMA_VERSION}", SCHEMA_VERSION = crate::SCHEMA_VERSION)]
    SchemaTooNew(i64),

    /// `db/schema` holds a version older than 7.
    #[error("Your store database uses an implausibly old schema, version {0}.")]
    SchemaTooOld(i64),

    /// `db/schema` is not an integer.
    #[error("`{}' is corrupt", .0.display())]
    SchemaCorrupt(PathBuf),

    /// A reader was pointed at a directory without `schema` (no store was ever opened there).
    #[error("no store database in `{}'", .0.display())]
    NoDatabase(PathBuf),

    /// `sqlite3_open_v2` failed.
    #[error("cannot open store database `{}'", .path.display())]
    CannotOpen {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// A failing SQLite call; `context` is the C++ wording ("executing SQLite statement", ...).
    #[error("{context}: {source}")]
    Sqlite {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    /// A failing system call; displayed like the C++ `SysError` (`message: strerror`).
    #[error("{context}: {}", strerror(source))]
    Sys {
        context: String,
        #[source]
        source: io::Error,
    },

    /// The store directory or one of its parents is a symlink.
    #[error("the path `{0}' is a symlink; this is not allowed for the store and its parent directories")]
    StoreIsSymlink(String),

    /// The store is on a read-only mount.
    #[error("'{0}' is read-only; make sure to mount it read-write for proper guix-daemon operation")]
    StoreReadOnly(String),

    /// `--build-users-group` names a group that does not exist.
    #[error("the group `{0}' specified in `build-users-group' does not exist")]
    NoSuchGroup(String),

    /// The store directory is not absolute.
    #[error("not an absolute path: `{0}'")]
    NotAbsolute(String),

    /// A directory from the environment is not valid UTF-8 (store paths are text).
    #[error("`{0}' is not valid UTF-8")]
    NotUtf8(String),
}

impl Error {
    pub fn sqlite(context: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
        move |source| Error::Sqlite { context, source }
    }

    pub fn sys(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Sys { context, source }
    }

    /// Whether this is SQLite saying "busy" (`SQLITE_BUSY`, `SQLITE_PROTOCOL`): the C++ daemon
    /// retries the whole transaction on these.
    pub fn is_busy(&self) -> bool {
        let source = match self {
            Error::Sqlite { source, .. } | Error::CannotOpen { source, .. } => source,
            _ => return false,
        };
        matches!(
            source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        ) || matches!(source, rusqlite::Error::SqliteFailure(e, _) if e.extended_code & 0xff == rusqlite::ffi::SQLITE_PROTOCOL)
            // A reader that cannot write the `-shm` (socket-front as its own user) right after
            // the writer died: the WAL index needs recovering, which the next writer does.
            || matches!(source, rusqlite::Error::SqliteFailure(e, _)
                if e.extended_code == rusqlite::ffi::SQLITE_READONLY_RECOVERY
                    || e.extended_code == rusqlite::ffi::SQLITE_READONLY_CANTINIT)
    }
}

/// `strerror(errno)` text for an OS error, as the C++ `SysError` prints it (without Rust's
/// " (os error N)"); other errors as they are. The one copy for every component.
pub fn strerror(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

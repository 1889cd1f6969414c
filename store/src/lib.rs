//! What every component of the daemon shares about the store (`/gnu/store`) and its state
//! (`/var/guix`), compatible with the C++ guix-daemon 1.5.0. socket-front, store-db, and later
//! the builder, the garbage collector and the substituter link it; only store-db links the
//! database writer (crate `guix-store-db`).
//!
//! - [`db`][mod@db] — [`DbReader`]: read-only connections to `db.sqlite` (any process, never
//!   waits for the writer) and the queries the writer shares.
//! - [`sql`][mod@sql] — the C++ daemon's SQL text, verbatim.
//! - [`info`][mod@info] — [`ValidPathInfo`] and [`Registration`].
//! - [`epoch`] — [`Epoch`], the counter the writer advances after commits that change what
//!   readers may keep in memory.
//! - [`dirs`][mod@dirs] — [`StateDirs`] (store, state, database, log, runtime directories and
//!   the names derived from them, from the configuration) and
//!   [`StateDirs::init`], which creates what the C++ daemon creates at store open and holds
//!   the big lock.
//! - [`files`] — store file policy: canonical metadata, text files, deleting trees, POSIX
//!   file locks (`lockFile`).
//! - [`scratch`] — the scratch directory where writers put new items before store-db moves
//!   them into the store, and how its entries are named (`<writer-pid>-…`).
//! - [`signing`] — signing exports with the daemon's key (`checkSecrecy`, `guix authenticate`).
//! - [`optimise`] — file deduplication through `<store>/.links` (`optimise-store.cc`).
//! - [`roots`] — GC root discovery (`findRoots`).
//! - [`sched`] — the calling thread's nice value and I/O class.
//! - [`storedb`] — [`storedb::StoreDb`], a component's side of the `store-db` link: its writes,
//!   and the temp roots it holds (stamped, synced).
//! - [`error`] — [`Error`], with the C++ daemon's messages, and [`strerror`].

pub mod db;
pub mod dirs;
pub mod epoch;
pub mod error;
pub mod files;
pub mod info;
pub mod optimise;
pub mod roots;
pub mod sched;
pub mod scratch;
pub mod signing;
pub mod sql;
pub mod storedb;

pub use db::{DbReader, SCHEMA_VERSION};
pub use dirs::{InitOptions, StateDirs, StoreLock};
pub use epoch::Epoch;
pub use error::{strerror, Error, Result};
pub use info::{DerivationOutputs, Registration, ValidPathInfo};

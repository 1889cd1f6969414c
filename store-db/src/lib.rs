//! The store database (`/var/guix/db/db.sqlite`) and the state directory files, compatible
//! with the C++ guix-daemon 1.5.0: same schema text, pragmas, SQL and semantics, so a database
//! written by either daemon is valid for the other.
//!
//! - [`dirs`][mod@dirs] — [`StateDirs`] (store, state, database, log directories from the environment)
//!   and [`StateDirs::init`], which creates what the C++ daemon creates at store open and
//!   holds the big lock.
//! - [`db`][mod@db] — [`DbReader`] (read-only, usable from any process, never waits for the writer)
//!   and [`DbWriter`] (the store-db process only).
//! - [`epoch`] — [`Epoch`], the counter [`DbWriter`] advances after commits that change what
//!   readers may keep in memory.
//! - [`info`][mod@info] — [`ValidPathInfo`] and [`Registration`].
//! - [`sql`][mod@sql] — the C++ daemon's SQL text, verbatim.
//! - [`server`] — the `guix-store-db` process: the `store-db` link, the writer, path
//!   locks, temp and indirect roots, the scratch directory.

pub mod db;
pub mod dirs;
pub mod epoch;
pub mod error;
pub mod info;
pub mod server;
pub mod sql;

pub use db::{DbOptions, DbReader, DbWriter, SCHEMA_VERSION};
pub use dirs::{InitOptions, StateDirs, StoreLock};
pub use epoch::Epoch;
pub use error::{Error, Result};
pub use info::{DerivationOutputs, Registration, ValidPathInfo};

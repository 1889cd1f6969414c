//! The store database writer and the store-db process, compatible with the C++ guix-daemon
//! 1.5.0: same schema text, pragmas, SQL and semantics, so a database written by either daemon
//! is valid for the other. What other components share (the reader, the directories, the
//! epoch, store file policy) is in [`guix_store`]; this crate adds what only store-db does.
//!
//! - [`db`][mod@db] — [`DbWriter`], the one connection that changes the database.
//! - [`server`] — the `guix-store-db` process: the `store-db` link, the writer, path
//!   locks, temp and indirect roots, the scratch directory.
//!
//! The re-exports below are the types of the writer's API (and let the tests and callers that
//! named them here keep their imports).

pub mod db;
pub mod server;

pub use db::{DbOptions, DbWriter};
pub use guix_store::{
    epoch, DbReader, DerivationOutputs, Epoch, Error, InitOptions, Registration, Result, StateDirs, StoreLock,
    ValidPathInfo, SCHEMA_VERSION,
};

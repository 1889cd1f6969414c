//! The store-db process (`guix-store-db`): serves the `store-db` link
//! ([`guix_ipc::store_db`]) for socket-front and the other components.
//!
//! - [`service`] — startup ([`service::main`]), the [`guix_ipc::Handler`] ([`service::StoreDb`]),
//!   SIGTERM.
//! - [`writer`] — the writer: file moves into the store, `.drv` checks, registration,
//!   group commit, crash safety.
//! - [`pathlock`] — per-path exclusion between requests (no C++ `.lock` files: see there).
//! - [`roots`] — temp roots (in memory), the collections' journals, and indirect roots.
//! - [`collect`] — the collector's "delete if still dead" (one writer job per batch).
//! - [`fsops`] — `deletePath`, the scratch directory and its sweep.

pub mod collect;
pub mod fsops;
pub mod pathlock;
pub mod roots;
pub mod service;
pub mod writer;

//! The garbage collector component (`guix-gc`), serving the `gc` link (`guix_ipc::gc`) for
//! socket-front: CollectGarbage and OptimiseStore.
//!
//! Unlike the C++ daemon, it takes no global lock: it computes liveness itself, from one read
//! of the database and the roots, and asks store-db to delete each dead entry "if it is still
//! dead" (`DeleteDead`), so additions and builds go on during a collection; store-db refuses
//! whatever became a temp root or got a live referrer meanwhile.
//!
//! - [`graph`] — the reference graph in memory and liveness (C++ `canReachRoot`).
//! - [`busy`] — the store items running processes use (`guix gc --list-busy`).
//! - [`order`] — keepers-first order and batches of the deletions.
//! - [`files`] — deleting trees and unused links with C++'s byte counts, `showBytes`.
//! - [`collect`] — one collection, its messages and results.
//! - [`server`] — the link: jobs, heartbeats, one collection at a time.
//! - [`service`] — the process and its store-db client.
//! - [`error`] — [`Error`].

pub mod busy;
pub mod collect;
pub mod error;
pub mod files;
pub mod graph;
pub mod order;
pub mod server;
pub mod service;

pub use error::{Error, Result};

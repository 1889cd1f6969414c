//! The substituter: substitutes fetched over http(s) and `file://` from the servers a
//! request names, trusted as Guix 1.5.0 trusts them, verified while they stream, and
//! registered through store-db atomically. It serves the `substituter` link
//! (`guix_ipc::substituter`).
//!
//! Modules: [`choose`] (which nar, which narinfo: Guix's orders), [`lookup`] (narinfos,
//! trust, the cache of answers), [`fetch`] (one nar: download, decompress, unpack, check),
//! [`substitute`] (queries and jobs: closures, references first, registration), [`sequence`]
//! (the order a job's events are shown in while its paths download at once), [`server`]
//! (the link), [`service`] (the process).

pub mod choose;
pub mod fetch;
pub mod lookup;
pub mod sequence;
pub mod server;
pub mod service;
pub mod substitute;

//! socket-front: every client connection of the daemon, in one tokio process.
//!
//! The supervisor hands over the client listening sockets (named `client`); socket-front
//! accepts on all of them and serves each connection in its own task, speaking the worker
//! protocol 0x164 byte for byte like the C++ `guix-daemon` (spec: `protocol.md`).
//!
//! * Reads go straight to SQLite through a small pool of read-only WAL connections
//!   ([`dbpool`]), never through another process.
//! * Writes — new items, temp roots, indirect roots, failed-path cache — go to store-db over
//!   the `store-db` link (`guix_store::storedb`); new items are first written into scratch space on the
//!   store's file system ([`scratch`]).
//! * Builds go to the builder over the `builder` link; its events become the client's STDERR
//!   stream ([`build`]). CollectGarbage and OptimiseStore go to the gc over the `gc` link
//!   ([`gc`]).
//!   stream ([`build`]). Substitute queries and substitutions go to the substituter over the
//!   `substituter` link ([`substitute`]).
//! * Errors are reported as the C++ daemon reports them, and the connection is kept or closed
//!   by the same rule ([`error`]).
//!
//! The connection logic reaches the store only through [`backend::StoreBackend`], so it runs
//! against an in-memory store in unit tests; [`backend::DaemonBackend`] is the real one.
//!
//! Modules: [`server`] (accepting), [`conn`] (one connection: handshake, request loop),
//! [`ops`] (queries and simple operations), [`build`] (BuildPaths), [`add`] (AddToStore, AddTextToStore),
//! [`transfer`] (ExportPath, ImportPaths), [`settings`] (SetOptions), [`roots`] (FindRoots),
//! [`metrics`] (reported to the supervisor), [`bridge`] (blocking I/O over the socket),
//! [`infocache`] (path infos kept in memory under store-db's change epoch), [`budget`] (what
//! requests may make us hold), [`transfer_pool`] (threads and idle limits of transfers).

pub mod add;
pub mod backend;
pub mod bridge;
pub mod budget;
pub mod build;
pub mod conn;
pub mod dbpool;
pub mod error;
pub mod gc;
pub mod infocache;
pub mod metrics;
pub mod ops;
#[cfg(test)]
mod scripted;
pub mod server;
pub mod settings;
pub mod substitute;
pub mod transfer;
pub mod transfer_pool;

use std::sync::Arc;

use guix_formats::worker::Limits;
use guix_formats::{nar, StoreDir};
use guix_ipc::component::{config_from_env, inherited_listeners, CLIENT_SOCKET_NAME};

use crate::conn::Shared;

/// Read-only database connections kept open.
pub const DB_READERS: usize = 4;

/// Threads of tokio's blocking pool (handshakes, store-wide queries, deduplication, writing
/// large texts): transfers have their own ([`transfer_pool`]), so this serves short jobs only,
/// and a few dozen threads keep both cores busy.
pub const BLOCKING_THREADS: usize = 32;

/// Whether this process is the unprivileged socket-front (`config.socket_front_user` is our
/// user): its scratch items go into its own directory, store-db takes them over and
/// deduplicates them. Otherwise (no such user configured: socket-front runs as the daemon's
/// user) everything is as the daemon's user does it.
pub(crate) fn unprivileged(config: &guix_ipc::config::DaemonConfig) -> bool {
    config.socket_front_user.is_some_and(|u| u.uid == nix::unistd::geteuid().as_raw())
}

/// The program: returns the exit status.
///
/// One runtime thread serves every connection. The protocol work per operation is a few
/// microseconds (decode, a point query on this thread's SQLite connection, encode), so a
/// second worker thread mostly added cross-thread wake-ups and work stealing: measured with
/// guix-bench on 2 cores, daemon CPU per QueryPathInfo went from about 22 µs (two workers) to
/// 16 µs (one), and at one client from 37 µs to 21 µs. Work whose cost grows with its input
/// (NAR transfers, store-wide queries, verification) runs on the blocking pool, so it never
/// holds this thread; transfers, which a client paces, have threads of their own
/// ([`transfer_pool`]), and what a request may make us hold is bounded ([`budget`]).
pub fn main_entry() -> i32 {
    let built =
        tokio::runtime::Builder::new_current_thread().max_blocking_threads(BLOCKING_THREADS).enable_all().build();
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("guix-socket-front: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("guix-socket-front: {e}");
            1
        }
    }
}

async fn run() -> Result<(), String> {
    let config = config_from_env().map_err(|e| e.to_string())?;
    let listeners = inherited_listeners().map_err(|e| e.to_string())?;
    let store_str = config.paths.store_dir.to_str().ok_or("the store directory is not valid UTF-8")?;
    let store = StoreDir::new(store_str).map_err(|e| e.to_string())?;
    // store-db's change epoch, for the path-info cache; without it, no caching.
    let dirs = guix_store::StateDirs::from_config(&config);
    let epoch_path = dirs.epoch_path();
    let epoch = match guix_store::Epoch::open_read_only(&epoch_path) {
        Ok(e) => Some(e),
        Err(e) => {
            eprintln!("guix-socket-front: not caching path infos: opening `{}': {e}", epoch_path.display());
            None
        }
    };
    let remover =
        guix_store::scratch::Remover::spawn().map_err(|e| format!("cannot start the scratch remover: {e}"))?;
    let shared = Arc::new(Shared {
        backend: backend::DaemonBackend {
            db: Arc::new(dbpool::ReaderPool::new(config.paths.db_dir.clone(), store.clone(), DB_READERS, epoch)),
            storedb: guix_store::storedb::StoreDb::new(&config, backend::HOLDER),
        },
        builder: build::BuilderLink::from_config(&config),
        gc: gc::GcLink::from_config(&config),
        substituter: substitute::SubstituterLink::from_config(&config),
        // Abandoned uploads are removed on a thread of their own, never on the runtime's.
        scratch: match unprivileged(&config) {
            true => {
                guix_store::scratch::Scratch::in_dir(guix_store::scratch::unprivileged_dir(&config.paths.store_dir))
            }
            false => guix_store::scratch::Scratch::new(&config.paths.store_dir),
        }
        .with_remover(remover),
        metrics: Arc::new(metrics::Metrics::default()),
        limits: Limits::DEFAULT,
        nar_limits: nar::Limits::default(),
        daemon_uid: config.daemon_uid,
        memory: budget::MemoryPool::default(),
        transfers: transfer_pool::TransferPool::from_env(),
        store,
        config,
    });
    tokio::spawn(metrics::report_loop(shared.metrics.clone(), shared.config.clone()));
    // Sync our temp roots with store-db now (its barrier waits for it), then periodically.
    {
        let shared = shared.clone();
        tokio::spawn(async move { shared.backend.storedb.maintain().await });
    }
    let ids = Arc::new(server::ConnIds::new(std::process::id()));
    let mut tasks = Vec::new();
    for (name, listener) in listeners {
        if name != CLIENT_SOCKET_NAME {
            continue;
        }
        tasks.push(tokio::spawn(server::accept_loop(shared.clone(), ids.clone(), listener)));
    }
    if tasks.is_empty() {
        return Err("no client socket was passed (GUIX_DAEMON_RS_FDS has no `client')".into());
    }
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("listening socket: {e}")),
            Err(e) => return Err(format!("accept task: {e}")),
        }
    }
    Ok(())
}

//! What socket-front needs from the rest of the daemon, as two traits: [`StoreReads`] (the
//! database queries of one read transaction) and [`StoreBackend`] (where those reads run, the
//! path-info cache, and every write: new items, temp roots, connections, indirect roots, the
//! failed-path cache, invalidation of vanished paths).
//!
//! Why a seam here: the connection logic ([`crate::conn`], [`crate::ops`], [`crate::add`],
//! [`crate::transfer`]) is the protocol — decoding, the STDERR stream, the C++ daemon's order
//! of checks and its messages. With its two dependencies behind these traits it runs against
//! the in-memory backend in unit tests, without root, a store-db process or SQLite, driven by
//! scripted byte streams; and a different daemon (an unprivileged or in-process one) can plug
//! in its own store.
//!
//! [`DaemonBackend`] is the production implementation: reads on socket-front's read-only WAL
//! connections ([`ReaderPool`]), writes over the store-db link ([`StoreDb`], which keeps the
//! authoritative copy of every connection's temp roots and re-sends them when store-db comes
//! back). Files stay outside the traits: new items are written into scratch space
//! ([`crate::scratch`]) and exported ones read from the store directory, both named by the
//! configuration.
//!
//! The connection code is generic over the backend (static dispatch): QueryPathInfo served
//! from the cache is the same call into [`ReaderPool::path_info`] as before. Only the closures
//! given to [`StoreBackend::query`] and [`StoreBackend::run`] see the reads as `&dyn
//! StoreReads`, one indirect call per query.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use guix_formats::StorePath;
use guix_ipc::store_db::{ConnId, NewItem};
use guix_store::{DbReader, ValidPathInfo};

use crate::dbpool::ReaderPool;
use crate::error::Failure;
use crate::infocache::CachedInfo;
use crate::storedb::StoreDb;

#[cfg(test)]
pub mod memory;

/// The queries of one read transaction, with the C++ daemon's messages as [`Failure::Op`].
pub trait StoreReads {
    fn is_valid(&self, path: &StorePath) -> Result<bool, Failure>;
    /// The info of `path`, `None` when it is not valid.
    fn try_path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>, Failure>;
    fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, Failure>;
    fn valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, Failure>;
    /// Output name → output path of a valid derivation ("path `%1%' is not valid" otherwise).
    fn derivation_output_map(&self, drv: &StorePath) -> Result<BTreeMap<String, StorePath>, Failure>;
    fn derivation_outputs(&self, drv: &StorePath) -> Result<BTreeSet<StorePath>, Failure> {
        Ok(self.derivation_output_map(drv)?.into_values().collect())
    }
    fn derivation_output_names(&self, drv: &StorePath) -> Result<BTreeSet<String>, Failure> {
        Ok(self.derivation_output_map(drv)?.into_keys().collect())
    }
    /// "invalid hash part" unless `hash_part` is 32 characters long.
    fn path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>, Failure>;
    fn all_valid_paths(&self) -> Result<BTreeSet<StorePath>, Failure>;
    /// Those of `paths` that are valid.
    fn valid_paths(&self, paths: &BTreeSet<StorePath>) -> Result<BTreeSet<StorePath>, Failure>;
    fn failed_paths(&self) -> Result<BTreeSet<StorePath>, Failure>;
}

/// The store as socket-front sees it (see the module docs). Writes fail with the message the
/// client is to see.
pub trait StoreBackend: Send + Sync + 'static {
    /// `queryPathInfo` ("path `P' is not valid" when it is not), from a cache when possible.
    /// The hottest call: QueryPathInfo's reply is kept encoded in the entry.
    fn path_info(&self, path: &StorePath) -> Result<Arc<CachedInfo>, Failure>;
    /// `isValidPath`, from the same cache when possible.
    fn is_valid(&self, path: &StorePath) -> Result<bool, Failure>;
    /// Runs a point query (cost independent of the store's size) right here.
    fn query<T>(&self, f: impl FnOnce(&dyn StoreReads) -> Result<T, Failure>) -> Result<T, Failure>;
    /// Runs a read whose cost grows with the store, off the runtime thread.
    fn run<T, F>(&self, f: F) -> impl Future<Output = Result<T, Failure>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&dyn StoreReads) -> Result<T, Failure> + Send + 'static;

    /// A new client connection (no temp roots yet).
    fn open_connection(&self, conn: ConnId);
    /// The connection ended: its temp roots go.
    fn close_connection(&self, conn: ConnId) -> impl Future<Output = ()> + Send;
    fn add_temp_roots(&self, conn: ConnId, paths: Vec<StorePath>) -> impl Future<Output = Result<(), Failure>> + Send;
    /// Moves finished scratch items (or inline texts) into the store and registers them, each
    /// also a temp root of `conn`; an item already valid is dropped.
    fn add_items(&self, conn: ConnId, items: Vec<NewItem>) -> impl Future<Output = Result<(), Failure>> + Send;
    /// `gcroots/auto/<hash>` → `path` (already absolute and canonical).
    fn add_indirect_root(&self, path: String) -> impl Future<Output = Result<(), Failure>> + Send;
    /// VerifyStore's clean-up: invalidates those of `paths` that vanished (in order).
    fn invalidate_missing(&self, paths: Vec<StorePath>) -> impl Future<Output = Result<(), Failure>> + Send;
    fn clear_failed_paths(&self, paths: Vec<StorePath>) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// A database error as the client sees it.
pub fn db_failure(e: guix_store::Error) -> Failure {
    Failure::Op(e.to_string())
}

impl StoreReads for DbReader {
    fn is_valid(&self, path: &StorePath) -> Result<bool, Failure> {
        DbReader::is_valid(self, path).map_err(db_failure)
    }
    fn try_path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>, Failure> {
        self.try_query_path_info(path).map_err(db_failure)
    }
    fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, Failure> {
        self.query_referrers(path).map_err(db_failure)
    }
    fn valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, Failure> {
        self.query_valid_derivers(path).map_err(db_failure)
    }
    fn derivation_output_map(&self, drv: &StorePath) -> Result<BTreeMap<String, StorePath>, Failure> {
        self.query_derivation_output_map(drv).map_err(db_failure)
    }
    fn derivation_outputs(&self, drv: &StorePath) -> Result<BTreeSet<StorePath>, Failure> {
        self.query_derivation_outputs(drv).map_err(db_failure)
    }
    fn derivation_output_names(&self, drv: &StorePath) -> Result<BTreeSet<String>, Failure> {
        self.query_derivation_output_names(drv).map_err(db_failure)
    }
    fn path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>, Failure> {
        self.query_path_from_hash_part(hash_part).map_err(db_failure)
    }
    fn all_valid_paths(&self) -> Result<BTreeSet<StorePath>, Failure> {
        self.query_all_valid_paths().map_err(db_failure)
    }
    fn valid_paths(&self, paths: &BTreeSet<StorePath>) -> Result<BTreeSet<StorePath>, Failure> {
        self.query_valid_paths(paths).map_err(db_failure)
    }
    fn failed_paths(&self) -> Result<BTreeSet<StorePath>, Failure> {
        self.query_failed_paths().map_err(db_failure)
    }
}

/// The daemon's store: SQLite read directly, writes through store-db.
pub struct DaemonBackend {
    pub db: Arc<ReaderPool>,
    pub storedb: StoreDb,
}

impl StoreBackend for DaemonBackend {
    fn path_info(&self, path: &StorePath) -> Result<Arc<CachedInfo>, Failure> {
        self.db.path_info(path)
    }
    fn is_valid(&self, path: &StorePath) -> Result<bool, Failure> {
        self.db.is_valid(path)
    }
    fn query<T>(&self, f: impl FnOnce(&dyn StoreReads) -> Result<T, Failure>) -> Result<T, Failure> {
        self.db.query(|r| f(r))
    }
    fn run<T, F>(&self, f: F) -> impl Future<Output = Result<T, Failure>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&dyn StoreReads) -> Result<T, Failure> + Send + 'static,
    {
        self.db.run(move |r| f(r))
    }

    fn open_connection(&self, conn: ConnId) {
        self.storedb.open_connection(conn)
    }
    fn close_connection(&self, conn: ConnId) -> impl Future<Output = ()> + Send {
        self.storedb.close_connection(conn)
    }
    fn add_temp_roots(&self, conn: ConnId, paths: Vec<StorePath>) -> impl Future<Output = Result<(), Failure>> + Send {
        self.storedb.add_temp_roots(conn, paths)
    }
    fn add_items(&self, conn: ConnId, items: Vec<NewItem>) -> impl Future<Output = Result<(), Failure>> + Send {
        self.storedb.add_items(conn, items)
    }
    fn add_indirect_root(&self, path: String) -> impl Future<Output = Result<(), Failure>> + Send {
        self.storedb.add_indirect_root(path)
    }
    fn invalidate_missing(&self, paths: Vec<StorePath>) -> impl Future<Output = Result<(), Failure>> + Send {
        self.storedb.invalidate_missing(paths)
    }
    fn clear_failed_paths(&self, paths: Vec<StorePath>) -> impl Future<Output = Result<(), Failure>> + Send {
        self.storedb.clear_failed_paths(paths)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::Duration;

    use guix_formats::StoreDir;
    use guix_ipc::store_db::{StoreDbReply, StoreDbRequest, STORE_DB_LINK};
    use guix_ipc::{serve_connection, Client, Handler, Hello};
    use tokio::net::UnixListener;
    use tokio::task::JoinHandle;

    use super::*;

    /// A stand-in for store-db on a real link socket: it records the requests and answers Ok.
    /// A stand-in because the test is about what socket-front sends when store-db comes back
    /// (store-db's handling of `SyncConnections` is tested in store-db), and because it must
    /// break the link connections at a chosen moment.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<StoreDbRequest>>,
    }

    impl Handler for Recorder {
        type Req = StoreDbRequest;
        type Resp = StoreDbReply;
        #[allow(clippy::manual_async_fn)]
        fn handle(
            self: &Arc<Self>,
            _peer: &Hello,
            req: StoreDbRequest,
        ) -> impl Future<Output = StoreDbReply> + Send + 'static {
            let me = self.clone();
            async move {
                me.seen.lock().unwrap().push(req);
                StoreDbReply::Ok
            }
        }
    }

    struct StandIn {
        recorder: Arc<Recorder>,
        conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
        accept: JoinHandle<()>,
    }

    impl StandIn {
        fn start(socket: &Path) -> StandIn {
            let listener = UnixListener::bind(socket).unwrap();
            let recorder = Arc::new(Recorder::default());
            let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
            let (r, c) = (recorder.clone(), conns.clone());
            let accept = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let r = r.clone();
                    let task = tokio::spawn(async move {
                        let _ = serve_connection(stream, STORE_DB_LINK, "store-db", r).await;
                    });
                    c.lock().unwrap().push(task);
                }
            });
            StandIn { recorder, conns, accept }
        }

        /// What arrived since the last call.
        fn take(&self) -> Vec<StoreDbRequest> {
            std::mem::take(&mut *self.recorder.seen.lock().unwrap())
        }

        /// Closes every link connection, as a store-db that died would (the listening socket,
        /// the supervisor's, stays).
        async fn break_connections(&self) {
            let tasks = std::mem::take(&mut *self.conns.lock().unwrap());
            for t in tasks {
                t.abort();
                let _ = t.await;
            }
        }
    }

    impl Drop for StandIn {
        fn drop(&mut self) {
            self.accept.abort();
        }
    }

    fn path(name: &str) -> StorePath {
        StoreDir::default().make_text_path(name, name.as_bytes(), []).unwrap()
    }

    /// store-db keeps temp roots in memory only: after it comes back, the next call is followed
    /// by every live connection's roots (`SyncConnections`), and a closed connection's are not.
    #[tokio::test]
    async fn every_live_connections_roots_are_resent_when_store_db_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("store-db.sock");
        let peer = StandIn::start(&socket);
        let client = Client::new(&socket, STORE_DB_LINK, "socket-front", Duration::from_secs(10));
        let backend = DaemonBackend {
            // Never opened: this test makes no reads.
            db: Arc::new(ReaderPool::new(dir.path().join("db"), StoreDir::default(), 1, None)),
            storedb: StoreDb::with_client(client),
        };
        let (a, b, c) = (path("a"), path("b"), path("c"));
        let run = async {
            backend.open_connection(1);
            backend.open_connection(2);
            backend.add_temp_roots(1, vec![a.clone()]).await.unwrap();
            backend.add_temp_roots(2, vec![b.clone()]).await.unwrap();
            // The first contact is a new store-db too.
            assert_eq!(
                peer.take(),
                vec![
                    StoreDbRequest::AddTempRoots { conn: 1, paths: vec![a.clone()] },
                    StoreDbRequest::SyncConnections { live: vec![(1, vec![a.clone()]), (2, vec![])] },
                    StoreDbRequest::AddTempRoots { conn: 2, paths: vec![b.clone()] },
                ]
            );
            // A root already held, same store-db: not sent again.
            backend.add_temp_roots(1, vec![a.clone()]).await.unwrap();
            assert_eq!(peer.take(), vec![]);

            peer.break_connections().await;
            backend.add_indirect_root("/home/u/result".into()).await.unwrap();
            assert_eq!(
                peer.take(),
                vec![
                    StoreDbRequest::AddIndirectRoot { path: "/home/u/result".into() },
                    StoreDbRequest::SyncConnections { live: vec![(1, vec![a.clone()]), (2, vec![b.clone()])] },
                ]
            );

            backend.close_connection(2).await;
            peer.break_connections().await;
            backend.add_items(1, vec![]).await.unwrap();
            backend.add_temp_roots(1, vec![c.clone()]).await.unwrap();
            assert_eq!(
                peer.take(),
                vec![
                    StoreDbRequest::ConnectionClosed { conn: 2 },
                    StoreDbRequest::AddItems { conn: 1, items: vec![] },
                    StoreDbRequest::SyncConnections { live: vec![(1, vec![a.clone()])] },
                    StoreDbRequest::AddTempRoots { conn: 1, paths: vec![c.clone()] },
                ]
            );
        };
        tokio::time::timeout(Duration::from_secs(30), run).await.expect("a link call hung");
    }
}

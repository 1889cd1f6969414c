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
//! ([`guix_store::scratch`]) and exported ones read from the store directory, both named by the
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
use guix_store::storedb::StoreDb;

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
    /// `createUser` for the client `uid` (socket-front, not root, cannot make the directory).
    fn ensure_user_profile(&self, uid: u32) -> impl Future<Output = Result<(), Failure>> + Send;
    /// The daemon's signature of an export's digest (socket-front cannot read the key).
    fn sign_digest(&self, digest: guix_formats::Hash) -> impl Future<Output = Result<Vec<u8>, Failure>> + Send;
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
        let f = self.storedb.add_temp_roots(conn, paths);
        async move { f.await.map_err(store_db_failure) }
    }
    fn add_items(&self, conn: ConnId, items: Vec<NewItem>) -> impl Future<Output = Result<(), Failure>> + Send {
        let f = self.storedb.add_items(conn, items);
        async move { f.await.map_err(store_db_failure) }
    }
    fn add_indirect_root(&self, path: String) -> impl Future<Output = Result<(), Failure>> + Send {
        let f = self.storedb.add_indirect_root(path);
        async move { f.await.map_err(store_db_failure) }
    }
    fn invalidate_missing(&self, paths: Vec<StorePath>) -> impl Future<Output = Result<(), Failure>> + Send {
        let f = self.storedb.invalidate_missing(paths);
        async move { f.await.map_err(store_db_failure) }
    }
    fn clear_failed_paths(&self, paths: Vec<StorePath>) -> impl Future<Output = Result<(), Failure>> + Send {
        let f = self.storedb.clear_failed_paths(paths);
        async move { f.await.map_err(store_db_failure) }
    }
    fn ensure_user_profile(&self, uid: u32) -> impl Future<Output = Result<(), Failure>> + Send {
        let f = self.storedb.ensure_user_profile(uid);
        async move { f.await.map_err(store_db_failure) }
    }
    fn sign_digest(&self, digest: guix_formats::Hash) -> impl Future<Output = Result<Vec<u8>, Failure>> + Send {
        let f = self.storedb.sign_digest(digest);
        async move { f.await.map_err(store_db_failure) }
    }
}

/// socket-front's name as a temp-root holder (one of `ROOT_HOLDERS`).
pub const HOLDER: &str = "socket-front";

/// A store-db failure as the client sees it: its own text when it is the client's fault, else
/// "store-db is unavailable: …" or "internal error in store-db: …".
fn store_db_failure(e: guix_ipc::LinkError) -> Failure {
    Failure::Op(e.client_text(guix_ipc::store_db::STORE_DB_LINK.name))
}

// The root resync through the production backend is tested below (a stand-in store-db with
// store-db's real `TempRoots`, connections really broken).

#[cfg(test)]
mod storedb_tests {
    use super::HOLDER;
    use guix_formats::StoreDir;
    use guix_formats::StorePath;
    use guix_ipc::store_db::{StoreDbReply, StoreDbRequest, STORE_DB_LINK};
    use guix_ipc::Client;
    use guix_ipc::{Call, Handler};
    use guix_store::storedb::StoreDb;
    use guix_store_db::server::roots::TempRoots;
    use std::future::Future;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    /// A stand-in for store-db (no real one can delay a sync on purpose): the real link server
    /// and store-db's real temp-root state, replying `Ok` to everything, after `sync_delay`
    /// for `SyncConnections`.
    struct StandIn {
        roots: TempRoots,
        sync_delay: Duration,
    }

    impl Handler for StandIn {
        type Req = StoreDbRequest;
        type Resp = StoreDbReply;
        type Item = ();
        fn handle(
            self: &Arc<Self>,
            _call: Call<()>,
            req: StoreDbRequest,
        ) -> impl Future<Output = StoreDbReply> + Send + 'static {
            let me = self.clone();
            async move {
                if matches!(req, StoreDbRequest::SyncConnections { .. }) {
                    tokio::time::sleep(me.sync_delay).await;
                }
                match me.roots.take(req) {
                    Ok(settle) => settle.settled().await,
                    Err(StoreDbRequest::AddItems { conn, items }) => {
                        me.roots.add(&conn, items.into_iter().map(|i| i.path)).settled().await
                    }
                    Err(_) => {}
                }
                StoreDbReply::Ok
            }
        }
    }

    /// Serves `path` until the returned task is aborted, which also closes every connection.
    fn serve(path: &Path, sync_delay: Duration) -> (Arc<StandIn>, tokio::task::JoinHandle<()>) {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let roots = TempRoots::default();
        // Only socket-front's sync is under test: the builder and the substituter are not
        // running.
        roots.holder_not_running("builder");
        roots.holder_not_running("substituter");
        let me = Arc::new(StandIn { roots, sync_delay });
        let s = me.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(guix_ipc::serve_connection(stream, STORE_DB_LINK, "stand-in", s.clone()));
            }
        });
        (me, task)
    }

    fn p(i: usize) -> StorePath {
        StoreDir::default().make_text_path(&format!("p{i}"), &[], std::iter::empty::<&StorePath>()).unwrap()
    }

    fn front(path: &Path) -> Arc<StoreDb> {
        Arc::new(StoreDb::with_client(Client::new(path, STORE_DB_LINK, HOLDER, Duration::from_secs(5)), HOLDER))
    }

    /// The defect of the old design: a sync delayed by 100 ms, handled after roots were added
    /// meanwhile, erased them in store-db while socket-front believed them held.
    #[tokio::test]
    async fn a_late_sync_does_not_erase_roots_added_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store-db.sock");
        let (stand_in, _srv) = serve(&path, Duration::from_millis(100));
        let front = front(&path);
        front.open_connection(1);
        front.add_temp_roots(1, vec![p(0)]).await.unwrap();
        // socket-front's start-up sync, delayed by the stand-in.
        let sync = {
            let f = front.clone();
            tokio::spawn(async move { f.sync().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        front.open_connection(2);
        front.add_temp_roots(2, vec![p(1)]).await.unwrap();
        front.add_temp_roots(1, vec![p(2)]).await.unwrap();
        front.open_connection(3);
        front.add_temp_roots(3, vec![p(3)]).await.unwrap();
        front.close_connection(3).await;
        sync.await.unwrap().unwrap();
        for i in 0..3 {
            assert!(stand_in.roots.is_temp_root(&p(i)), "root p{i} lost");
        }
        assert!(!stand_in.roots.is_temp_root(&p(3)), "a closed connection's root came back");
        assert!(stand_in.roots.ready());
    }

    /// store-db restarts (its connections really break): the next call reconnects and the
    /// live roots are all sent to the new one, whose barrier then opens.
    #[tokio::test]
    async fn roots_are_resent_to_a_restarted_store_db() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store-db.sock");
        let (first, srv) = serve(&path, Duration::ZERO);
        let front = front(&path);
        for c in 1..=3 {
            front.open_connection(c);
            front.add_temp_roots(c, vec![p(c as usize)]).await.unwrap();
        }
        front.close_connection(3).await;
        assert!(first.roots.is_temp_root(&p(1)) && !first.roots.is_temp_root(&p(3)));
        srv.abort();
        let _ = srv.await;
        let (second, _srv) = serve(&path, Duration::from_millis(50));
        assert!(!second.roots.ready());
        // The next call finds the connection broken, reconnects, and resyncs.
        front.add_temp_roots(1, vec![p(4)]).await.unwrap();
        for i in [1, 2, 4] {
            assert!(second.roots.is_temp_root(&p(i)), "root p{i} not resent");
        }
        assert!(!second.roots.is_temp_root(&p(3)));
        assert!(second.roots.ready());
    }
}

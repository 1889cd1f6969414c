//! socket-front's side of the `store-db` link: every write to the store or the database, and
//! the mirror of each connection's temp roots.
//!
//! store-db keeps temp roots in memory, per connection. When it restarts they are gone, so this
//! module keeps the authoritative copy: the set of live connections and their roots. After any
//! call that went over a connection made since the last sync (the [`Client`]'s generation
//! changed: first contact, or store-db came back), it sends `SyncConnections` with every live
//! connection's roots, which replaces whatever store-db holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use guix_formats::StorePath;
use guix_ipc::config::DaemonConfig;
use guix_ipc::store_db::{ConnId, NewItem, StoreDbReply, StoreDbRequest, STORE_DB_LINK};
use guix_ipc::{Client, LinkError};

use crate::error::Failure;

/// The deadline of a store-db call: how long a client's request waits for store-db to come
/// (back) and answer before it fails with "store-db is unavailable".
pub const STORE_DB_DEADLINE: Duration = guix_ipc::DEFAULT_DEADLINE;

pub struct StoreDb {
    client: Client<StoreDbRequest, StoreDbReply>,
    /// The client generation the last `SyncConnections` went to.
    synced: AtomicU64,
    live: Mutex<BTreeMap<ConnId, BTreeSet<StorePath>>>,
}

impl StoreDb {
    pub fn new(config: &DaemonConfig) -> StoreDb {
        let client = guix_ipc::component::connect_link(config, STORE_DB_LINK, "socket-front", STORE_DB_DEADLINE);
        StoreDb::with_client(client)
    }

    pub fn with_client(client: Client<StoreDbRequest, StoreDbReply>) -> StoreDb {
        StoreDb { client, synced: AtomicU64::new(0), live: Mutex::new(BTreeMap::new()) }
    }

    /// A new client connection (no roots yet).
    pub fn open_connection(&self, conn: ConnId) {
        if let Ok(mut l) = self.live.lock() {
            l.insert(conn, BTreeSet::new());
        }
    }

    /// The connection ended: forget its roots here and in store-db.
    pub async fn close_connection(&self, conn: ConnId) {
        if let Ok(mut l) = self.live.lock() {
            l.remove(&conn);
        }
        let _ = self.call(StoreDbRequest::ConnectionClosed { conn }).await;
    }

    fn remember_roots<'a>(&self, conn: ConnId, paths: impl IntoIterator<Item = &'a StorePath>) {
        if let Ok(mut l) = self.live.lock() {
            l.entry(conn).or_default().extend(paths.into_iter().cloned());
        }
    }

    /// Adds temp roots. Roots this connection already holds are not sent again while store-db
    /// is the incarnation last synced (a new one gets every root through `SyncConnections`).
    pub async fn add_temp_roots(&self, conn: ConnId, paths: Vec<StorePath>) -> Result<(), Failure> {
        let known = self.live.lock().ok().and_then(|l| l.get(&conn).map(|r| paths.iter().all(|p| r.contains(p))));
        if known == Some(true) && self.client.generation() == self.synced.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.remember_roots(conn, &paths);
        self.call(StoreDbRequest::AddTempRoots { conn, paths }).await
    }

    /// Moves finished scratch items into the store and registers them (also temp roots).
    pub async fn add_items(&self, conn: ConnId, items: Vec<NewItem>) -> Result<(), Failure> {
        self.remember_roots(conn, items.iter().map(|i| &i.path));
        self.call(StoreDbRequest::AddItems { conn, items }).await
    }

    pub async fn add_indirect_root(&self, path: String) -> Result<(), Failure> {
        self.call(StoreDbRequest::AddIndirectRoot { path }).await
    }

    pub async fn invalidate_missing(&self, paths: Vec<StorePath>) -> Result<(), Failure> {
        self.call(StoreDbRequest::InvalidateMissing { paths }).await
    }

    pub async fn clear_failed_paths(&self, paths: Vec<StorePath>) -> Result<(), Failure> {
        self.call(StoreDbRequest::ClearFailedPaths { paths }).await
    }

    /// Sends the live connections now (at start-up, so roots of a previous socket-front go).
    pub async fn sync(&self) -> Result<(), Failure> {
        let live: Vec<(ConnId, Vec<StorePath>)> = match self.live.lock() {
            Ok(l) => l.iter().map(|(c, r)| (*c, r.iter().cloned().collect())).collect(),
            Err(_) => Vec::new(),
        };
        let gen_before = self.client.generation();
        let res = self.raw_call(StoreDbRequest::SyncConnections { live }).await;
        if res.is_ok() {
            // Only a sync that went over the current connection counts.
            let gen = self.client.generation();
            if gen == gen_before || gen_before == 0 {
                self.synced.store(gen, Ordering::SeqCst);
            }
        }
        res
    }

    async fn call(&self, req: StoreDbRequest) -> Result<(), Failure> {
        let res = self.raw_call(req).await;
        // A connection made since the last sync: store-db may have lost the roots.
        for _ in 0..3 {
            let gen = self.client.generation();
            if gen == self.synced.load(Ordering::SeqCst) {
                break;
            }
            if self.sync().await.is_err() {
                break;
            }
        }
        res
    }

    /// A store-db error is shown to the client as it is when it is the client's; any other
    /// failure (store-db down past the deadline, a restart in the middle, a fault of
    /// store-db's) says "store-db is unavailable" or "internal error in store-db".
    async fn raw_call(&self, req: StoreDbRequest) -> Result<(), Failure> {
        let link = STORE_DB_LINK.name;
        match self.client.call(req).await {
            Ok(StoreDbReply::Ok) => Ok(()),
            Ok(StoreDbReply::Error(e)) => Err(Failure::Op(e.client_text(link))),
            Err(e) => Err(Failure::Op(LinkError::from(e).client_text(link))),
        }
    }

    /// How many connections are live (for tests and metrics).
    pub fn live_connections(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }
}

//! A component's side of the `store-db` link: every write to the store or the database, and
//! the authoritative copy of the temp roots of the component's connections (socket-front: its
//! client connections; the builder: its builds).
//!
//! Such a component is a temp-root *holder* (see [`guix_ipc::store_db`]): this module keeps the
//! set of its live connections and their roots, and every change to it takes, under its lock, the next
//! sequence number, which stamps the message that tells store-db ([`RootStamp`]). store-db
//! merges those messages by order-independent rules (`guix_store_db::server::roots`), so
//! concurrent, late, resent or abandoned requests never drop a live root.
//!
//! store-db keeps temp roots in memory: when it restarts they are gone. So after any call that
//! went over a link connection made since the last complete sync (the [`Client`]'s generation
//! changed: first contact, or store-db came back), this module sends a complete
//! `SyncConnections` with every live connection's roots. After a call that got no reply (the
//! link broke or gave up), store-db may or may not have applied it: the copy is marked unsynced,
//! so roots are sent again and [`StoreDb::maintain`] makes a complete sync within
//! [`SYNC_INTERVAL`]. `maintain` also sends a cheap sync (connection ids only) every
//! [`SYNC_INTERVAL`], so store-db forgets closed connections whose close was lost and prunes
//! its tombstones.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use guix_formats::StorePath;
use guix_ipc::config::DaemonConfig;
use guix_ipc::store_db::{ConnId, HolderId, NewItem, RootStamp, StoreDbReply, StoreDbRequest, STORE_DB_LINK};
use guix_ipc::{Client, ClientError, LinkError};

/// The deadline of a store-db call: how long a client's request waits for store-db to come
/// (back) and answer before it fails with "store-db is unavailable".
pub const STORE_DB_DEADLINE: Duration = guix_ipc::DEFAULT_DEADLINE;
/// How often [`StoreDb::maintain`] syncs.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(10);

pub struct StoreDb {
    client: Client<StoreDbRequest, StoreDbReply>,
    holder: HolderId,
    local: Mutex<Local>,
}

/// The holder's state, changed only under its lock.
#[derive(Default)]
struct Local {
    /// The sequence number of the last change (or sync snapshot).
    seq: u64,
    live: BTreeMap<ConnId, BTreeSet<StorePath>>,
    /// The client generation the last complete sync went over, if no call failed since.
    synced: Option<u64>,
    /// Calls that got no reply so far: a sync whose snapshot predates one does not count.
    failures: u64,
}

impl StoreDb {
    /// The link of the component `holder` (one of `ROOT_HOLDERS`) to store-db.
    pub fn new(config: &DaemonConfig, holder: &str) -> StoreDb {
        let client = guix_ipc::component::connect_link(config, STORE_DB_LINK, holder, STORE_DB_DEADLINE);
        StoreDb::with_client(client, holder)
    }

    pub fn with_client(client: Client<StoreDbRequest, StoreDbReply>, holder: &str) -> StoreDb {
        StoreDb { client, holder: HolderId::this_process(holder), local: Mutex::new(Local::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new client connection (no roots yet). A `ConnId` is never used again after its
    /// [`StoreDb::close_connection`].
    pub fn open_connection(&self, conn: ConnId) {
        self.lock().live.entry(conn).or_default();
    }

    /// The connection ended: forget its roots here and in store-db.
    pub async fn close_connection(&self, conn: ConnId) {
        let stamp = {
            let mut l = self.lock();
            l.live.remove(&conn);
            self.stamp(&mut l, conn)
        };
        let _ = self.call(StoreDbRequest::ConnectionClosed { conn: stamp }).await;
    }

    fn stamp(&self, l: &mut Local, conn: ConnId) -> RootStamp {
        l.seq += 1;
        RootStamp { holder: self.holder.clone(), conn, seq: l.seq }
    }

    /// Records `paths` as roots of `conn` (opening it if it is not yet) and stamps the change;
    /// also whether every path was already held and store-db is known to hold them too.
    fn remember_roots<'a>(&self, conn: ConnId, paths: impl IntoIterator<Item = &'a StorePath>) -> (RootStamp, bool) {
        let mut l = self.lock();
        let synced = l.synced.is_some_and(|g| g == self.client.generation());
        let roots = l.live.entry(conn).or_default();
        let mut known = true;
        for p in paths {
            known &= !roots.insert(p.clone());
        }
        (self.stamp(&mut l, conn), known && synced)
    }

    /// Adds temp roots. Roots this connection already holds are not sent again while store-db
    /// is known to hold them (a new store-db gets every root through `SyncConnections`).
    pub async fn add_temp_roots(&self, conn: ConnId, paths: Vec<StorePath>) -> Result<(), LinkError> {
        match self.remember_roots(conn, &paths) {
            (_, true) => Ok(()),
            (stamp, false) => self.call(StoreDbRequest::AddTempRoots { conn: stamp, paths }).await,
        }
    }

    /// Moves finished scratch items into the store and registers them (also temp roots).
    pub async fn add_items(&self, conn: ConnId, items: Vec<NewItem>) -> Result<(), LinkError> {
        let (stamp, _) = self.remember_roots(conn, items.iter().map(|i| &i.path));
        self.call(StoreDbRequest::AddItems { conn: stamp, items }).await
    }

    /// Repairs: the scratch items replace the files of their valid paths (invalid ones are
    /// added), registered in one transaction (also temp roots). See
    /// [`StoreDbRequest::ReplaceItems`].
    pub async fn replace_items(&self, conn: ConnId, items: Vec<NewItem>) -> Result<(), LinkError> {
        let (stamp, _) = self.remember_roots(conn, items.iter().map(|i| &i.path));
        self.call(StoreDbRequest::ReplaceItems { conn: stamp, items }).await
    }

    pub async fn add_indirect_root(&self, path: String) -> Result<(), LinkError> {
        self.call(StoreDbRequest::AddIndirectRoot { path }).await
    }

    pub async fn invalidate_missing(&self, paths: Vec<StorePath>) -> Result<(), LinkError> {
        self.call(StoreDbRequest::InvalidateMissing { paths }).await
    }

    pub async fn clear_failed_paths(&self, paths: Vec<StorePath>) -> Result<(), LinkError> {
        self.call(StoreDbRequest::ClearFailedPaths { paths }).await
    }

    pub async fn register_failed_paths(&self, paths: Vec<StorePath>) -> Result<(), LinkError> {
        self.call(StoreDbRequest::RegisterFailedPaths { paths }).await
    }

    /// `createUser` for the client `uid` (see [`StoreDbRequest::EnsureUserProfile`]).
    pub async fn ensure_user_profile(&self, uid: u32) -> Result<(), LinkError> {
        self.call(StoreDbRequest::EnsureUserProfile { uid }).await
    }

    /// Signs an export's digest with the daemon's key, which only store-db reads.
    pub async fn sign_digest(&self, digest: guix_formats::Hash) -> Result<Vec<u8>, LinkError> {
        match self.client.call(StoreDbRequest::SignDigest { digest }).await {
            Ok(StoreDbReply::Signature(sig)) => Ok(sig),
            other => reply(other).and_then(|()| Err(LinkError::internal("store-db sent no signature"))),
        }
    }

    /// Sends every live connection with its roots now (at start-up: store-db then forgets
    /// the roots of a previous socket-front, and its barrier counts us).
    pub async fn sync(&self) -> Result<(), LinkError> {
        self.send_sync(true).await
    }

    /// Runs for ever: a complete sync at start (retried until it succeeds), then every
    /// [`SYNC_INTERVAL`] a cheap one, or a complete one if a call failed or store-db came back
    /// since the last.
    pub async fn maintain(&self) {
        while self.sync().await.is_err() {}
        loop {
            tokio::time::sleep(SYNC_INTERVAL).await;
            let _ = self.send_sync(false).await;
            self.resync_if_needed().await;
        }
    }

    async fn send_sync(&self, complete: bool) -> Result<(), LinkError> {
        let (req, failures) = {
            let mut l = self.lock();
            l.seq += 1;
            let live = l
                .live
                .iter()
                .map(|(c, r)| (*c, if complete { r.iter().cloned().collect() } else { Vec::new() }))
                .collect();
            (StoreDbRequest::SyncConnections { holder: self.holder.clone(), seq: l.seq, live, complete }, l.failures)
        };
        let gen_before = self.client.generation();
        let res = self.client.call(req).await;
        let gen = self.client.generation();
        let mut l = self.lock();
        match &res {
            // Only a complete sync that went over the current connection, with no call failed
            // since its snapshot, tells that store-db holds every root.
            Ok(_) if complete && gen == gen_before.max(1) && l.failures == failures => l.synced = Some(gen),
            Ok(_) => {}
            Err(_) => {
                l.failures += 1;
                l.synced = None;
            }
        }
        drop(l);
        reply(res)
    }

    async fn call(&self, req: StoreDbRequest) -> Result<(), LinkError> {
        let res = self.client.call(req).await;
        if res.is_err() {
            // Maybe applied, maybe not: resend roots until the next complete sync. Not now:
            // store-db is likely away, and `maintain` syncs soon.
            let mut l = self.lock();
            l.failures += 1;
            l.synced = None;
        } else {
            self.resync_if_needed().await;
        }
        reply(res)
    }

    /// A complete sync unless the last one went over the current link connection.
    async fn resync_if_needed(&self) {
        for _ in 0..3 {
            let gen = self.client.generation();
            if self.lock().synced == Some(gen) {
                break;
            }
            if self.send_sync(true).await.is_err() {
                break;
            }
        }
    }

    /// How many connections are live (for tests and metrics).
    pub fn live_connections(&self) -> usize {
        self.lock().live.len()
    }
}

/// A failure as a [`LinkError`]: store-db's own (a `Client` error is what the guix client is
/// told, in the C++ daemon's wording), or the call's (store-db unavailable past the deadline, a
/// restart in the middle: `Retryable`). `LinkError::client_text("store-db")` is what to show.
fn reply(res: Result<StoreDbReply, ClientError>) -> Result<(), LinkError> {
    match res {
        Ok(StoreDbReply::Ok) => Ok(()),
        Ok(StoreDbReply::Error(e)) => Err(e),
        Ok(other) => Err(LinkError::internal(format!("unexpected store-db reply {other:?}"))),
        Err(e) => Err(LinkError::from(e)),
    }
}

//! [`MemoryStore`]: a [`StoreBackend`] kept in memory, for unit tests of the connection logic.
//!
//! Not a canned-answer mock: it is a small store. Path infos live in a map; an added item is
//! put in place in a real directory (moved out of the scratch directory, or written from its
//! text), so exports and verification read real files; temp roots are kept per connection.
//! Every write is also recorded as the store-db request it would have been
//! ([`MemoryStore::writes`]), for tests to check what the protocol logic asked for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use guix_formats::{StoreDir, StorePath};
use guix_ipc::store_db::{ConnId, HolderId, ItemSource, NewItem, RootStamp, StoreDbRequest};
use guix_store::files::{delete_tree, write_canonical_text};
use guix_store::scratch::SCRATCH_DIR_NAME;
use guix_store::ValidPathInfo;

use super::{StoreBackend, StoreReads};
use crate::error::Failure;
use crate::infocache::CachedInfo;

/// What the store holds (see the module docs).
#[derive(Default)]
pub struct State {
    pub infos: BTreeMap<StorePath, Arc<CachedInfo>>,
    /// Derivation → output name → output path.
    pub outputs: BTreeMap<StorePath, BTreeMap<String, StorePath>>,
    pub failed: BTreeSet<StorePath>,
    pub temp_roots: BTreeMap<ConnId, BTreeSet<StorePath>>,
    pub indirect_roots: BTreeSet<String>,
    /// Every write, in order, as a store-db request.
    pub writes: Vec<StoreDbRequest>,
}

pub struct MemoryStore {
    store: StoreDir,
    /// Where the items are on disk (the configuration's store directory).
    store_dir: PathBuf,
    state: Mutex<State>,
    /// Where the signing key is (`<conf>`), as store-db reads it.
    conf_dir: PathBuf,
}

impl MemoryStore {
    pub fn new(store: StoreDir, store_dir: PathBuf) -> MemoryStore {
        let conf_dir = PathBuf::from(guix_ipc::config::DEFAULT_CONF_DIR);
        MemoryStore { store, store_dir, state: Mutex::new(State::default()), conf_dir }
    }

    /// Signs exports with `<conf_dir>/signing-key.sec`.
    pub fn with_conf_dir(mut self, conf_dir: PathBuf) -> MemoryStore {
        self.conf_dir = conf_dir;
        self
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `info` as valid (its files are the caller's business).
    pub fn insert(&self, info: ValidPathInfo) {
        self.state().infos.insert(info.path.clone(), Arc::new(CachedInfo::new(info)));
    }

    /// The writes so far.
    pub fn writes(&self) -> Vec<StoreDbRequest> {
        self.state().writes.clone()
    }

    fn not_valid(&self, path: &StorePath) -> Failure {
        Failure::Op(format!("path `{}' is not valid", self.store.display(path)))
    }

    fn record(&self, req: StoreDbRequest) {
        self.state().writes.push(req);
    }

    /// Puts `item` in place, as store-db does: an item already valid is dropped.
    fn place(&self, state: &mut State, item: &NewItem) -> Result<(), Failure> {
        let dest = self.store_dir.join(item.path.base_name());
        let scratch = item.scratch_name().map(|n| self.store_dir.join(SCRATCH_DIR_NAME).join(n));
        if state.infos.contains_key(&item.path) {
            if let Some(s) = scratch {
                delete_tree(&s).map_err(|e| Failure::Op(e.to_string()))?;
            }
            return Ok(());
        }
        if item.references.iter().any(|r| *r != item.path && !state.infos.contains_key(r)) {
            // store-db's (and `queryValidPathId`'s) unformatted message.
            return Err(Failure::op("path `%1%' is not valid"));
        }
        match &item.source {
            ItemSource::Scratch(_) => {
                let from = scratch.ok_or_else(|| Failure::op("no scratch name"))?;
                std::fs::rename(&from, &dest).map_err(|e| Failure::Op(format!("moving `{}': {e}", from.display())))?
            }
            ItemSource::Text(contents) => write_canonical_text(&dest, contents)
                .map_err(|e| Failure::Op(format!("writing `{}': {e}", dest.display())))?,
        }
        let info = ValidPathInfo {
            path: item.path.clone(),
            deriver: item.deriver.clone(),
            nar_hash: item.nar_hash,
            references: item.references.iter().cloned().collect(),
            registration_time: 1,
            nar_size: Some(item.nar_size),
        };
        state.infos.insert(item.path.clone(), Arc::new(CachedInfo::new(info)));
        Ok(())
    }
}

impl StoreReads for MemoryStore {
    fn is_valid(&self, path: &StorePath) -> Result<bool, Failure> {
        Ok(self.state().infos.contains_key(path))
    }
    fn try_path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>, Failure> {
        Ok(self.state().infos.get(path).map(|e| e.info.clone()))
    }
    fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, Failure> {
        let s = self.state();
        Ok(s.infos.values().filter(|e| e.info.references.contains(path)).map(|e| e.info.path.clone()).collect())
    }
    fn valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, Failure> {
        let s = self.state();
        let derivers = s.outputs.iter().filter(|(_, outs)| outs.values().any(|o| o == path));
        Ok(derivers.map(|(drv, _)| drv.clone()).filter(|d| s.infos.contains_key(d)).collect())
    }
    fn derivation_output_map(&self, drv: &StorePath) -> Result<BTreeMap<String, StorePath>, Failure> {
        let s = self.state();
        if !s.infos.contains_key(drv) {
            return Err(Failure::op("path `%1%' is not valid"));
        }
        Ok(s.outputs.get(drv).cloned().unwrap_or_default())
    }
    fn path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>, Failure> {
        if hash_part.len() != 32 {
            return Err(Failure::op("invalid hash part"));
        }
        Ok(self.state().infos.keys().find(|p| p.hash_part().to_string() == hash_part).cloned())
    }
    fn all_valid_paths(&self) -> Result<BTreeSet<StorePath>, Failure> {
        Ok(self.state().infos.keys().cloned().collect())
    }
    fn valid_paths(&self, paths: &BTreeSet<StorePath>) -> Result<BTreeSet<StorePath>, Failure> {
        let s = self.state();
        Ok(paths.iter().filter(|p| s.infos.contains_key(*p)).cloned().collect())
    }
    fn failed_paths(&self) -> Result<BTreeSet<StorePath>, Failure> {
        Ok(self.state().failed.clone())
    }
}

impl StoreBackend for MemoryStore {
    fn path_info(&self, path: &StorePath) -> Result<Arc<CachedInfo>, Failure> {
        self.state().infos.get(path).cloned().ok_or_else(|| self.not_valid(path))
    }
    fn is_valid(&self, path: &StorePath) -> Result<bool, Failure> {
        StoreReads::is_valid(self, path)
    }
    fn query<T>(&self, f: impl FnOnce(&dyn StoreReads) -> Result<T, Failure>) -> Result<T, Failure> {
        f(self)
    }
    async fn run<T, F>(&self, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&dyn StoreReads) -> Result<T, Failure> + Send + 'static,
    {
        f(self)
    }

    fn open_connection(&self, conn: ConnId) {
        self.state().temp_roots.insert(conn, BTreeSet::new());
    }
    async fn close_connection(&self, conn: ConnId) {
        self.state().temp_roots.remove(&conn);
        self.record(StoreDbRequest::ConnectionClosed { conn: stamp(conn) });
    }
    async fn add_temp_roots(&self, conn: ConnId, paths: Vec<StorePath>) -> Result<(), Failure> {
        self.state().temp_roots.entry(conn).or_default().extend(paths.iter().cloned());
        self.record(StoreDbRequest::AddTempRoots { conn: stamp(conn), paths });
        Ok(())
    }
    async fn add_items(&self, conn: ConnId, items: Vec<NewItem>) -> Result<(), Failure> {
        self.record(StoreDbRequest::AddItems { conn: stamp(conn), items: items.clone() });
        let mut state = self.state();
        for item in &items {
            self.place(&mut state, item)?;
            state.temp_roots.entry(conn).or_default().insert(item.path.clone());
        }
        Ok(())
    }
    async fn add_indirect_root(&self, path: String) -> Result<(), Failure> {
        self.state().indirect_roots.insert(path.clone());
        self.record(StoreDbRequest::AddIndirectRoot { path });
        Ok(())
    }
    async fn invalidate_missing(&self, paths: Vec<StorePath>) -> Result<(), Failure> {
        self.record(StoreDbRequest::InvalidateMissing { paths: paths.clone() });
        let mut state = self.state();
        for p in paths {
            let gone = std::fs::symlink_metadata(self.store_dir.join(p.base_name())).is_err();
            let referred = state.infos.values().any(|e| e.info.path != p && e.info.references.contains(&p));
            if gone && !referred {
                state.infos.remove(&p);
            }
        }
        Ok(())
    }
    async fn ensure_user_profile(&self, uid: u32) -> Result<(), Failure> {
        self.record(StoreDbRequest::EnsureUserProfile { uid });
        Ok(())
    }
    async fn sign_digest(&self, digest: guix_formats::Hash) -> Result<Vec<u8>, Failure> {
        self.record(StoreDbRequest::SignDigest { digest });
        let key = self.conf_dir.join(guix_store::signing::SIGNING_KEY_FILE);
        guix_store::signing::sign_digest(&key, &digest).map_err(Failure::Op)
    }
    async fn clear_failed_paths(&self, paths: Vec<StorePath>) -> Result<(), Failure> {
        let mut state = self.state();
        for p in &paths {
            state.failed.remove(p);
        }
        state.writes.push(StoreDbRequest::ClearFailedPaths { paths });
        Ok(())
    }
}

/// How a write of connection `conn` is recorded: the request store-db would get, stamped as
/// from one fixed holder (the in-memory store keeps no sequence numbers: it applies every
/// write at once, in order).
pub fn stamp(conn: ConnId) -> RootStamp {
    RootStamp { holder: HolderId { component: "memory-store".into(), pid: 0, started: 0 }, conn, seq: 0 }
}

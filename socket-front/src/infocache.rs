//! The path-info cache: what `queryPathInfo` returned for valid paths, kept per worker thread,
//! so that the hot point queries (QueryPathInfo, QueryPathHash, QueryReferences,
//! QueryDeriver, IsValidPath) are answered without touching SQLite.
//!
//! Only positive answers are kept, and only a path's own row and references: a path that
//! becomes valid changes nothing kept here. Everything else that changes the database
//! (an update of a path's row, an invalidation, later garbage collection) makes store-db advance
//! the shared change epoch ([`guix_store::epoch`]). Every lookup first compares the epoch
//! with the one the contents were read under and drops them all when it moved; a new entry is
//! tagged with the epoch read *before* its database query. So an answer served from here is
//! never older than one a fresh read transaction started at the same moment could give.
//!
//! Bounded by two generations of [`GENERATION`] entries each: when the young one is full it
//! becomes the old one (the previous old one is dropped); a hit in the old one moves the entry
//! back to the young one. Each entry also keeps its QueryPathInfo reply encoded, so a hit is
//! one write of ready bytes.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use guix_formats::StorePath;
use guix_store::ValidPathInfo;

/// Entries per generation: at most twice this many are kept (a few MiB).
pub const GENERATION: usize = 8192;

/// One valid path's info, and its QueryPathInfo reply once encoded.
pub struct CachedInfo {
    pub info: ValidPathInfo,
    /// `STDERR_LAST` followed by the QueryPathInfo reply, as sent to clients (the same bytes
    /// for every protocol version the daemon accepts).
    encoded: OnceLock<Box<[u8]>>,
}

impl CachedInfo {
    pub fn new(info: ValidPathInfo) -> CachedInfo {
        CachedInfo { info, encoded: OnceLock::new() }
    }

    pub fn encoded(&self) -> Option<&[u8]> {
        self.encoded.get().map(|b| &b[..])
    }

    /// Keeps the encoded reply (the first one kept wins; all are equal).
    pub fn keep_encoded(&self, bytes: Vec<u8>) {
        let _ = self.encoded.set(bytes.into_boxed_slice());
    }
}

/// The cache of one thread (see the module docs).
#[derive(Default)]
pub struct InfoCache {
    /// The epoch the contents were read under.
    epoch: u64,
    young: HashMap<StorePath, Arc<CachedInfo>>,
    old: HashMap<StorePath, Arc<CachedInfo>>,
}

impl InfoCache {
    /// Drops everything when `current` (the epoch read now) differs from the contents' epoch.
    pub fn sync(&mut self, current: u64) {
        if current != self.epoch {
            self.young.clear();
            self.old.clear();
            self.epoch = current;
        }
    }

    /// The entry for `path`, if kept. Call [`InfoCache::sync`] first.
    pub fn get(&mut self, path: &StorePath) -> Option<Arc<CachedInfo>> {
        if let Some(hit) = self.young.get(path) {
            return Some(hit.clone());
        }
        let hit = self.old.remove(path)?;
        self.put(path.clone(), hit.clone());
        Some(hit)
    }

    /// Keeps `entry`, read from the database after the epoch `read_under` was read; dropped
    /// when the epoch has moved since (the entry may be stale already).
    pub fn insert(&mut self, read_under: u64, path: StorePath, entry: Arc<CachedInfo>) {
        if read_under == self.epoch {
            self.put(path, entry);
        }
    }

    fn put(&mut self, path: StorePath, entry: Arc<CachedInfo>) {
        if self.young.len() >= GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(path, entry);
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guix_formats::hash::sha256;
    use guix_formats::{Hash, HashAlgo, StoreDir};

    fn info(n: usize) -> (StorePath, Arc<CachedInfo>) {
        let store = StoreDir::default();
        let path = store.make_text_path("item", n.to_string().as_bytes(), []).unwrap();
        let info = ValidPathInfo {
            path: path.clone(),
            deriver: None,
            nar_hash: Hash::from_bytes(HashAlgo::Sha256, &sha256(b"nar")).unwrap(),
            references: Default::default(),
            registration_time: 1,
            nar_size: Some(1),
        };
        (path, Arc::new(CachedInfo::new(info)))
    }

    #[test]
    fn an_advanced_epoch_drops_everything() {
        let mut c = InfoCache::default();
        c.sync(5);
        let (p, e) = info(1);
        c.insert(5, p.clone(), e);
        assert!(c.get(&p).is_some());
        c.sync(5);
        assert!(c.get(&p).is_some());
        c.sync(6);
        assert!(c.get(&p).is_none());
    }

    #[test]
    fn an_entry_read_under_an_older_epoch_is_not_kept() {
        let mut c = InfoCache::default();
        c.sync(7);
        let (p, e) = info(1);
        c.insert(6, p.clone(), e);
        assert!(c.get(&p).is_none());
    }

    #[test]
    fn bounded_and_recently_used_entries_survive() {
        let mut c = InfoCache::default();
        c.sync(1);
        let (first, e) = info(0);
        c.insert(1, first.clone(), e);
        for n in 1..3 * GENERATION {
            let (p, e) = info(n);
            c.insert(1, p, e);
            if n % 1000 == 0 {
                // Used now and then: never dropped.
                assert!(c.get(&first).is_some(), "at {n}");
            }
            assert!(c.len() <= 2 * GENERATION);
        }
        assert!(c.get(&first).is_some());
        let (never_used, _) = info(1);
        assert!(c.get(&never_used).is_none());
    }
}

//! GC roots that store-db keeps: the temp roots of client connections (in memory) and
//! indirect roots (`gcroots/auto` symlinks).
//!
//! # Temp roots
//! The C++ daemon writes each client's temp roots to `temproots/<pid>` and the GC reads those
//! files. Our GC will run inside the daemon and ask store-db instead, so the roots live in
//! memory here, per connection of the caller ([`TempRoots`]), and no `temproots` file is
//! written. A store-db restart loses them; socket-front resends them all with
//! `SyncConnections` when it reconnects, which replaces the whole set. The GC's question is
//! [`TempRoots::is_temp_root`] (or [`TempRoots::snapshot`] to take them all at once).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use guix_formats::path::canon_path;
use guix_formats::{HashAlgo, StorePath};
use guix_ipc::store_db::ConnId;

use guix_store::strerror;

/// The temp roots of every live connection.
#[derive(Debug, Default)]
pub struct TempRoots {
    by_conn: Mutex<HashMap<ConnId, HashSet<StorePath>>>,
}

impl TempRoots {
    pub fn add(&self, conn: ConnId, paths: impl IntoIterator<Item = StorePath>) {
        if let Ok(mut m) = self.by_conn.lock() {
            m.entry(conn).or_default().extend(paths);
        }
    }

    /// The connection ended: its roots go away.
    pub fn close(&self, conn: ConnId) {
        if let Ok(mut m) = self.by_conn.lock() {
            m.remove(&conn);
        }
    }

    /// Replaces everything with the given connections and roots.
    pub fn sync(&self, live: Vec<(ConnId, Vec<StorePath>)>) {
        let mut fresh: HashMap<ConnId, HashSet<StorePath>> = HashMap::new();
        for (conn, paths) in live {
            fresh.entry(conn).or_default().extend(paths);
        }
        if let Ok(mut m) = self.by_conn.lock() {
            *m = fresh;
        }
    }

    /// Whether some live connection holds `path` as a temp root.
    pub fn is_temp_root(&self, path: &StorePath) -> bool {
        self.by_conn.lock().map(|m| m.values().any(|s| s.contains(path))).unwrap_or(false)
    }

    /// Every temp root, at one instant.
    pub fn snapshot(&self) -> HashSet<StorePath> {
        self.by_conn.lock().map(|m| m.values().flatten().cloned().collect()).unwrap_or_default()
    }

    /// Number of connections with roots (for logs and metrics).
    pub fn connections(&self) -> usize {
        self.by_conn.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// `LocalStore::addIndirectRoot`: the symlink `<state>/gcroots/auto/<base32(sha1(path))>` →
/// `path`, made atomically (a temporary `LINK.tmp-PID-N` renamed over the name). `path` must
/// be absolute (the daemon makes the client's argument absolute).
pub fn add_indirect_root(state_dir: &Path, path: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') {
        return Err(format!("not an absolute path: `{path}'"));
    }
    let hash = HashAlgo::Sha1.digest(path.as_bytes()).to_nix_base32();
    let auto = canon_path(state_dir.join("gcroots").join("auto")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&auto).map_err(|e| format!("creating directory `{}': {}", auto.display(), strerror(&e)))?;
    let link = auto.join(&hash);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = auto.join(format!("{hash}.tmp-{}-{n}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(path, &tmp)
        .map_err(|e| format!("symlinking `{}' to `{path}': {}", tmp.display(), strerror(&e)))?;
    std::fs::rename(&tmp, &link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rename `{}' to `{}': {}", tmp.display(), link.display(), strerror(&e))
    })?;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(s: &str) -> StorePath {
        StorePath::from_base_name(s).unwrap()
    }

    #[test]
    fn temp_roots_per_connection() {
        let r = TempRoots::default();
        let a = sp("00bgd045z0d4icpbc2yyz4gx48ak44la-a");
        let b = sp("01bgd045z0d4icpbc2yyz4gx48ak44la-b");
        r.add(1, [a.clone()]);
        r.add(2, [b.clone()]);
        assert!(r.is_temp_root(&a) && r.is_temp_root(&b));
        r.close(1);
        assert!(!r.is_temp_root(&a));
        r.sync(vec![(3, vec![a.clone()])]);
        assert!(r.is_temp_root(&a) && !r.is_temp_root(&b));
        assert_eq!(r.connections(), 1);
    }

    #[test]
    fn indirect_root_name_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let link = add_indirect_root(dir.path(), "/home/u/result").unwrap();
        // base32 of a SHA-1 is 32 characters.
        let name = link.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(name.len(), 32);
        assert_eq!(name, HashAlgo::Sha1.digest(b"/home/u/result").to_nix_base32());
        assert_eq!(std::fs::read_link(&link).unwrap(), PathBuf::from("/home/u/result"));
        assert_eq!(add_indirect_root(dir.path(), "/home/u/result").unwrap(), link);
        assert_eq!(std::fs::read_dir(link.parent().unwrap()).unwrap().count(), 1);
        assert!(add_indirect_root(dir.path(), "rel").is_err());
    }
}

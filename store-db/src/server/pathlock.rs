//! Per-path lock files, `<store>/<name>.lock`: the C++ daemon's `PathLocks` protocol, so that
//! store-db, the C++ daemon and its tools exclude each other on the same store item.
//!
//! The protocol (nix/libstore/pathlocks.cc): open or create the lock file (0600), take a POSIX
//! write lock on the whole file (`fcntl`), then check that the file is still empty: a holder
//! that is done with a lock it no longer needs unlinks the file and writes one byte (`d`) into
//! it before closing, so a non-empty lock file is a stale one that someone else may already
//! have replaced, and the locker starts over. Paths are locked in sorted order, which avoids
//! deadlocks between lockers of overlapping sets.
//!
//! POSIX locks belong to the process, not to a thread or a descriptor (and closing ANY
//! descriptor of the file drops them), so they cannot exclude two requests of this same
//! process from each other. [`PathLockTable`] adds that in-process exclusion: a path is
//! reserved in the table before its lock file is touched, and released after its descriptor is
//! closed.

use std::collections::{BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use guix_store::files::{lock_file, LockType};
use guix_store::strerror;
use tokio::sync::Notify;

/// The in-process side of path locking: which lock files this process holds or is acquiring.
#[derive(Debug, Default)]
pub struct PathLockTable {
    held: Mutex<HashSet<PathBuf>>,
    released: Notify,
}

impl PathLockTable {
    pub fn new() -> Arc<PathLockTable> {
        Arc::new(PathLockTable::default())
    }

    /// Locks `<p>.lock` for every `p` in `paths` (absolute paths of store items), in sorted
    /// order, waiting as long as another request of this process or another process holds one.
    /// Error texts are the C++ daemon's.
    pub async fn lock(self: &Arc<Self>, paths: BTreeSet<PathBuf>) -> Result<HeldLocks, String> {
        let mut held = HeldLocks { table: self.clone(), reserved: Vec::new(), files: Vec::new(), delete: false };
        for p in paths {
            let mut lock_path = p.into_os_string();
            lock_path.push(".lock");
            let lock_path = PathBuf::from(lock_path);
            self.reserve(&lock_path).await;
            held.reserved.push(lock_path.clone());
            // Uncontended (the usual case): lock on this thread. Only a lock another process
            // holds makes us wait, and that wait happens on the blocking pool.
            let file = match try_lock_file(&lock_path)? {
                Some(f) => f,
                None => tokio::task::spawn_blocking(move || lock_file_blocking(&lock_path))
                    .await
                    .map_err(|e| format!("acquiring/releasing lock: {e}"))??,
            };
            held.files.push(file);
        }
        Ok(held)
    }

    async fn reserve(&self, lock_path: &std::path::Path) {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.held.lock().map(|mut h| h.insert(lock_path.to_owned())).unwrap_or(false) {
                return;
            }
            notified.await;
        }
    }

    fn release(&self, lock_path: &std::path::Path) {
        if let Ok(mut h) = self.held.lock() {
            h.remove(lock_path);
        }
        self.released.notify_waiters();
    }

    /// Whether this process holds (or is acquiring) the lock of the item at `path`.
    pub fn is_locked(&self, path: &std::path::Path) -> bool {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        self.held.lock().map(|h| h.contains(&PathBuf::from(lock_path))).unwrap_or(false)
    }
}

/// Locks held until dropped. With [`HeldLocks::set_deletion`], dropping also deletes the lock
/// files the C++ way (unlink, then write `d`), as the C++ daemon does after a successful
/// addition; otherwise they are left (empty) for the next locker or the GC.
#[derive(Debug)]
pub struct HeldLocks {
    table: Arc<PathLockTable>,
    reserved: Vec<PathBuf>,
    files: Vec<(PathBuf, File)>,
    delete: bool,
}

impl HeldLocks {
    pub fn set_deletion(&mut self, delete: bool) {
        self.delete = delete;
    }
}

impl Drop for HeldLocks {
    fn drop(&mut self) {
        for (path, mut file) in self.files.drain(..) {
            if self.delete {
                // As in C++, the unlink's result is ignored: deleting is an optimisation.
                let _ = std::fs::remove_file(&path);
                let _ = file.write_all(b"d");
            }
            drop(file);
        }
        for p in self.reserved.drain(..) {
            self.table.release(&p);
        }
    }
}

/// Opens the lock file (creating it) without blocking.
fn open_lock_file(lock_path: &PathBuf) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(lock_path)
        .map_err(|e| format!("opening lock file `{}': {}", lock_path.display(), strerror(&e)))
}

/// One non-blocking attempt: `Some` with the locked, non-stale file, `None` when another
/// process holds the lock (or the file went stale under us: the blocking path retries).
fn try_lock_file(lock_path: &PathBuf) -> Result<Option<(PathBuf, File)>, String> {
    let file = open_lock_file(lock_path)?;
    if !lock_file(file.as_fd(), LockType::Write, false).map_err(lock_error)? {
        return Ok(None);
    }
    Ok((!is_stale(lock_path, &file)?).then(|| (lock_path.clone(), file)))
}

/// `PathLocks::lockPaths` for one path, waiting: returns the open, locked, non-stale file.
fn lock_file_blocking(lock_path: &PathBuf) -> Result<(PathBuf, File), String> {
    loop {
        let file = open_lock_file(lock_path)?;
        lock_file(file.as_fd(), LockType::Write, true).map_err(lock_error)?;
        if !is_stale(lock_path, &file)? {
            return Ok((lock_path.clone(), file));
        }
        // Stale: its holder deleted it after we opened it. Retry with a fresh file.
    }
}

fn lock_error(e: std::io::Error) -> String {
    format!("acquiring/releasing lock: {}", strerror(&e))
}

/// A lock file its holder deleted has a `d` in it (C++ `PathLocks`); an empty one is live.
fn is_stale(lock_path: &std::path::Path, file: &File) -> Result<bool, String> {
    let st = file.metadata().map_err(|e| format!("statting lock file `{}': {}", lock_path.display(), strerror(&e)))?;
    Ok(st.len() != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn exclusive_in_process_and_deleted_on_success() {
        let dir = tempfile::tempdir().unwrap();
        let item = dir.path().join("abc-item");
        let table = PathLockTable::new();
        let mut first = table.lock([item.clone()].into()).await.unwrap();
        assert!(table.is_locked(&item));
        let t2 = table.clone();
        let item2 = item.clone();
        let second = tokio::spawn(async move { t2.lock([item2].into()).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "a second request of this process must wait");
        first.set_deletion(true);
        drop(first);
        second.await.unwrap().unwrap();
        // The second holder re-created the file after the first deleted it; it is released
        // without deletion, so it stays (empty).
        let lock = dir.path().join("abc-item.lock");
        assert_eq!(std::fs::metadata(&lock).unwrap().len(), 0);
        assert!(!table.is_locked(&item));
    }
}

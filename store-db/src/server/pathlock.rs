//! Per-path exclusion between the requests store-db serves: a path being added by one request
//! is not touched by another until the first is done (registered, or undone).
//!
//! The writer runs one job at a time, but a group commit prepares several jobs before it
//! registers any, and a failing job deletes what it put in place: two requests for the same
//! path in one group could otherwise delete each other's item. [`PathLockTable`] reserves every
//! path of a request before its job is queued and releases them after the reply.
//!
//! **No `<path>.lock` files.** The C++ daemon takes an `fcntl` lock on `<path>.lock` (created
//! for the occasion, unlinked afterwards: `PathLocks` in nix/libstore/pathlocks.cc) so that
//! its worker processes, each of which may write the store, exclude each other. Here store-db
//! is the only process that writes the store's namespace, so this in-process table is all the
//! exclusion there is to have; the lock files would only exclude a C++ daemon or builder
//! running on the same store at the same time, which is not supported (its writes to
//! `db.sqlite` would not be seen by socket-front's caches either; see ARCHITECTURE.md). They
//! cost six system calls per addition (create, lock, fstat, unlink, write `d`, close), about a
//! tenth of store-db's work on an AddTextToStore. The C++ daemon needs none of them on a
//! store it takes over: it creates a lock file when it locks a path and deletes it after.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Which store paths (absolute) requests of this process hold.
#[derive(Debug, Default)]
pub struct PathLockTable {
    held: Mutex<HashSet<PathBuf>>,
    released: Notify,
}

impl PathLockTable {
    pub fn new() -> Arc<PathLockTable> {
        Arc::new(PathLockTable::default())
    }

    /// Reserves every path of `paths`, in sorted order (so requests with overlapping sets
    /// cannot deadlock), waiting while another request holds one.
    pub async fn lock(self: &Arc<Self>, paths: BTreeSet<PathBuf>) -> HeldLocks {
        let mut held = HeldLocks { table: self.clone(), reserved: Vec::with_capacity(paths.len()) };
        for p in paths {
            self.reserve(&p).await;
            held.reserved.push(p);
        }
        held
    }

    async fn reserve(&self, path: &std::path::Path) {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.held.lock().map(|mut h| h.insert(path.to_owned())).unwrap_or(false) {
                return;
            }
            notified.await;
        }
    }

    fn release(&self, path: &std::path::Path) {
        if let Ok(mut h) = self.held.lock() {
            h.remove(path);
        }
        self.released.notify_waiters();
    }

    /// Whether a request holds (or is acquiring) the item at `path`.
    pub fn is_locked(&self, path: &std::path::Path) -> bool {
        self.held.lock().map(|h| h.contains(path)).unwrap_or(false)
    }
}

/// Paths held until dropped.
#[derive(Debug)]
pub struct HeldLocks {
    table: Arc<PathLockTable>,
    reserved: Vec<PathBuf>,
}

impl Drop for HeldLocks {
    fn drop(&mut self) {
        for p in self.reserved.drain(..) {
            self.table.release(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn exclusive_in_process_and_no_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let item = dir.path().join("abc-item");
        let table = PathLockTable::new();
        let first = table.lock([item.clone()].into()).await;
        assert!(table.is_locked(&item));
        let t2 = table.clone();
        let item2 = item.clone();
        let second = tokio::spawn(async move { drop(t2.lock([item2].into()).await) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "a second request of this process must wait");
        drop(first);
        second.await.unwrap();
        assert!(!table.is_locked(&item));
        assert!(!dir.path().join("abc-item.lock").exists(), "no C++ lock file is made");
    }
}

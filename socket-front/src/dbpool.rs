//! Read-only database connections ([`DbReader`]): one per runtime worker thread for point
//! queries, and a small pool used from blocking threads for everything else.
//!
//! * [`ReaderPool::query`] runs a point query (one path's validity, info, deriver, …) right on
//!   the calling tokio worker, with that thread's own connection. Such a query is a few
//!   microseconds of SQLite work on pages that are almost always cached; handing it to another
//!   thread and back cost more than the query itself (two context switches and a wake-up per
//!   operation). Under WAL a reader never waits for the writer, so the worker is not held up
//!   by store-db.
//! * [`ReaderPool::run`] runs anything whose cost grows with the store (all valid paths,
//!   referrers, roots, verification) on tokio's blocking pool, with a connection taken from
//!   here; at most `size` of those run at once, so a handful of connections keeps both cores
//!   busy without piling up threads.
//!
//! SQLite's busy waits are bounded: [`INLINE_BUSY_LIMIT`] for the runtime thread's readers (a
//! wait there holds up every connection), [`POOL_BUSY_LIMIT`] for the pool's; past them the
//! client gets SQLite's "database is locked" instead of the C++ daemon's hour of waiting.
//!
//! Connections are opened lazily (store-db creates the database; socket-front may start
//! first).
//!
//! [`ReaderPool::path_info`] answers from this thread's [`InfoCache`] when it can, under the
//! change epoch store-db advances (see [`crate::infocache`]).

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use guix_formats::{StoreDir, StorePath};
use guix_store::{DbReader, Epoch};
use tokio::sync::Semaphore;

use crate::backend::db_failure;
use crate::error::Failure;
use crate::infocache::{CachedInfo, InfoCache};

/// How long a point query on the runtime thread waits while the database is busy.
pub const INLINE_BUSY_LIMIT: std::time::Duration = std::time::Duration::from_millis(100);
/// How long a query on the pool waits while the database is busy.
pub const POOL_BUSY_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct ReaderPool {
    /// Tells this pool's thread-local connections from another pool's (tests run several).
    id: u64,
    db_dir: PathBuf,
    store: StoreDir,
    idle: Mutex<Vec<DbReader>>,
    permits: Semaphore,
    /// store-db's change epoch; without it nothing is cached.
    epoch: Option<Epoch>,
}

static POOL_IDS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The connection of this thread for [`ReaderPool::query`], with the id of its pool.
    static LOCAL_READER: RefCell<Option<(u64, DbReader)>> = const { RefCell::new(None) };
    /// The path-info cache of this thread, with the id of its pool.
    static LOCAL_CACHE: RefCell<(u64, InfoCache)> = RefCell::new((u64::MAX, InfoCache::default()));
}

impl ReaderPool {
    /// A pool of at most `size` connections for [`ReaderPool::run`]. With `epoch`, path infos
    /// are cached ([`ReaderPool::path_info`]).
    pub fn new(db_dir: PathBuf, store: StoreDir, size: usize, epoch: Option<Epoch>) -> ReaderPool {
        ReaderPool {
            id: POOL_IDS.fetch_add(1, Ordering::Relaxed),
            db_dir,
            store,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
            epoch,
        }
    }

    /// Runs `f` on this thread's cache, synced with the current epoch; `None` when nothing is
    /// cached (no epoch).
    fn with_cache<T>(&self, f: impl FnOnce(&mut InfoCache, u64) -> T) -> Option<T> {
        let epoch = self.epoch.as_ref()?.current();
        Some(LOCAL_CACHE.with(|cell| {
            let mut slot = cell.borrow_mut();
            let (id, cache) = &mut *slot;
            if *id != self.id {
                *id = self.id;
                *cache = InfoCache::default();
            }
            cache.sync(epoch);
            f(cache, epoch)
        }))
    }

    /// `queryPathInfo`: "path `P' is not valid" when it is not. Served from this thread's
    /// cache when the path's info is there and still current.
    pub fn path_info(&self, path: &StorePath) -> Result<Arc<CachedInfo>, Failure> {
        let read_under = match self.with_cache(|cache, epoch| (cache.get(path), epoch)) {
            Some((Some(hit), _)) => return Ok(hit),
            Some((None, epoch)) => Some(epoch),
            None => None,
        };
        let entry = Arc::new(CachedInfo::new(self.query(|r| r.query_path_info(path).map_err(db_failure))?));
        if let Some(epoch) = read_under {
            self.with_cache(|cache, _| cache.insert(epoch, path.clone(), entry.clone()));
        }
        Ok(entry)
    }

    /// `isValidPath`: from the cache when the path's info is there, else one query (which does
    /// not fill the cache: it does not read the info).
    pub fn is_valid(&self, path: &StorePath) -> Result<bool, Failure> {
        if let Some(Some(_)) = self.with_cache(|cache, _| cache.get(path)) {
            return Ok(true);
        }
        self.query(|r| r.is_valid(path).map_err(db_failure))
    }

    /// Runs the point query `f` on the current thread with its own connection (see the module
    /// docs). Only for queries whose cost does not grow with the store.
    pub fn query<T, F>(&self, f: F) -> Result<T, Failure>
    where
        F: FnOnce(&DbReader) -> Result<T, Failure>,
    {
        LOCAL_READER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let reader = match &mut *slot {
                Some((id, reader)) if *id == self.id => reader,
                other => {
                    let mut reader =
                        DbReader::open(&self.db_dir, self.store.clone()).map_err(|e| Failure::op(e.to_string()))?;
                    reader.set_busy_limit(INLINE_BUSY_LIMIT).map_err(|e| Failure::op(e.to_string()))?;
                    &mut other.insert((self.id, reader)).1
                }
            };
            f(reader)
        })
    }

    /// Runs `f` with a connection on a blocking thread. Failing to open a connection is a
    /// [`Failure::Op`] with the error's text; callers that need to tell errors apart return
    /// them inside `T`.
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&DbReader) -> Result<T, Failure> + Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(|_| Failure::op("database pool closed"))?;
        let pool = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let reader = match pool.idle.lock().ok().and_then(|mut v| v.pop()) {
                Some(r) => r,
                None => open_reader(&pool.db_dir, &pool.store).map_err(|e| Failure::op(e.to_string()))?,
            };
            let res = f(&reader);
            if let Ok(mut v) = pool.idle.lock() {
                v.push(reader);
            }
            res
        })
        .await;
        joined.unwrap_or_else(|e| Err(Failure::op(format!("database query failed: {e}"))))
    }
}

/// How long a first query waits for store-db to create the database on a fresh state directory
/// (the supervisor starts both at once; the C++ daemon creates it before serving anyone).
const FIRST_OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn open_reader(db_dir: &std::path::Path, store: &StoreDir) -> Result<DbReader, guix_store::Error> {
    let deadline = std::time::Instant::now() + FIRST_OPEN_WAIT;
    loop {
        match DbReader::open(db_dir, store.clone()) {
            Err(guix_store::Error::NoDatabase(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(mut reader) => {
                reader.set_busy_limit(POOL_BUSY_LIMIT)?;
                return Ok(reader);
            }
            other => return other,
        }
    }
}

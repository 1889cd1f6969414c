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
//! Connections are opened lazily (store-db creates the database; socket-front may start
//! first).

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use guix_formats::StoreDir;
use guix_store_db::DbReader;
use tokio::sync::Semaphore;

use crate::error::Failure;

pub struct ReaderPool {
    /// Tells this pool's thread-local connections from another pool's (tests run several).
    id: u64,
    db_dir: PathBuf,
    store: StoreDir,
    idle: Mutex<Vec<DbReader>>,
    permits: Semaphore,
}

static POOL_IDS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The connection of this thread for [`ReaderPool::query`], with the id of its pool.
    static LOCAL_READER: RefCell<Option<(u64, DbReader)>> = const { RefCell::new(None) };
}

impl ReaderPool {
    pub fn new(db_dir: PathBuf, store: StoreDir, size: usize) -> ReaderPool {
        ReaderPool {
            id: POOL_IDS.fetch_add(1, Ordering::Relaxed),
            db_dir,
            store,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
        }
    }

    /// Runs the point query `f` on the current thread with its own connection (see the module
    /// docs). Errors become [`Failure::Op`] as with [`ReaderPool::run`]. Only for queries whose
    /// cost does not grow with the store.
    pub fn query<T, F>(&self, f: F) -> Result<T, Failure>
    where
        F: FnOnce(&DbReader) -> Result<T, guix_store_db::Error>,
    {
        LOCAL_READER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let reader = match &mut *slot {
                Some((id, reader)) if *id == self.id => reader,
                other => {
                    let reader = DbReader::open(&self.db_dir, self.store.clone()).map_err(|e| Failure::op(e.to_string()))?;
                    &mut other.insert((self.id, reader)).1
                }
            };
            f(reader).map_err(|e| Failure::op(e.to_string()))
        })
    }

    /// Runs `f` with a connection on a blocking thread. A database error becomes an
    /// [`Failure::Op`] with the error's text (the C++ daemon's wording, e.g. "path `P' is not
    /// valid"); callers that need to tell errors apart return them inside `T`.
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&DbReader) -> Result<T, guix_store_db::Error> + Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(|_| Failure::op("database pool closed"))?;
        let pool = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let reader = match pool.idle.lock().ok().and_then(|mut v| v.pop()) {
                Some(r) => r,
                None => open_reader(&pool.db_dir, &pool.store).map_err(|e| Failure::op(e.to_string()))?,
            };
            let res = f(&reader).map_err(|e| Failure::op(e.to_string()));
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

fn open_reader(db_dir: &std::path::Path, store: &StoreDir) -> Result<DbReader, guix_store_db::Error> {
    let deadline = std::time::Instant::now() + FIRST_OPEN_WAIT;
    loop {
        match DbReader::open(db_dir, store.clone()) {
            Err(guix_store_db::Error::NoDatabase(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

//! A small pool of read-only database connections ([`DbReader`]), used from blocking threads.
//!
//! SQLite calls block, so every query runs on tokio's blocking pool with a connection taken
//! from here. Connections are opened lazily (store-db creates the database; socket-front may
//! start first) and at most `size` queries run at once: under WAL they never wait for the
//! writer, so a handful of connections keeps both cores busy without piling up threads.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use guix_formats::StoreDir;
use guix_store_db::DbReader;
use tokio::sync::Semaphore;

use crate::error::Failure;

pub struct ReaderPool {
    db_dir: PathBuf,
    store: StoreDir,
    idle: Mutex<Vec<DbReader>>,
    permits: Semaphore,
}

impl ReaderPool {
    pub fn new(db_dir: PathBuf, store: StoreDir, size: usize) -> ReaderPool {
        ReaderPool { db_dir, store, idle: Mutex::new(Vec::new()), permits: Semaphore::new(size.max(1)) }
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

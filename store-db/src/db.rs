//! [`DbWriter`], the read-write connection to `db.sqlite` (the store-db process only; readers
//! use [`guix_store::DbReader`]). It speaks the C++ daemon's SQL ([`guix_store::sql`]), so a
//! database written by either daemon is valid for the other.
//!
//! Writes run in `BEGIN IMMEDIATE` transactions (the C++ daemon
//! uses a deferred `begin;`; taking the write lock up front only avoids the deadlock-prone lock
//! upgrade, the rows written are the same). Both retry on `SQLITE_BUSY`/`SQLITE_PROTOCOL`, like
//! `retrySQLite` ([`guix_store::db::retry`]).

use std::collections::BTreeSet;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use guix_formats::{StoreDir, StorePath};
use guix_store::db::{
    check_schema_version, read_schema_version, retry, Ctx, BUSY_TIMEOUT, DB_FILE, EXEC, SCHEMA_FILE, SCHEMA_VERSION,
};
use guix_store::{sql, DbReader, Epoch, Error, Registration, Result, StoreLock};
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

/// How much of the database file the writer maps (`pragma mmap_size`), in bytes: a store of
/// 100,000 paths has a database of about 60 MiB.
const MMAP_SIZE: u64 = 1 << 30;

/// `pragma wal_autocheckpoint` of the C++ daemon, in pages.
pub const WAL_AUTOCHECKPOINT: u32 = 40_000;

/// How often [`spawn_checkpointer`] copies the WAL back into the database.
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Checkpoints the WAL of `db_dir/db.sqlite` every [`CHECKPOINT_INTERVAL`] on a thread and
/// connection of its own (`wal_checkpoint(PASSIVE)`: it waits for nobody and nobody waits for
/// it). Without it, SQLite checkpoints inside whichever commit brings the WAL to
/// [`WAL_AUTOCHECKPOINT`] pages (160 MiB: a large collection or import gets there), and that
/// commit — some client's addition — waits for the whole copy and its fsync (measured: additions
/// stalled 130–230 ms during a collection of 50,000 paths). The writer keeps the C++
/// autocheckpoint as a bound should this thread fall behind.
pub fn spawn_checkpointer(db_dir: &Path) -> std::io::Result<std::thread::JoinHandle<()>> {
    let path = db_dir.join(DB_FILE);
    std::thread::Builder::new().name("wal-checkpoint".into()).spawn(move || {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match Connection::open_with_flags(&path, flags) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("guix-store-db: no background checkpoints of `{}': {e}", path.display());
                return;
            }
        };
        loop {
            std::thread::sleep(CHECKPOINT_INTERVAL);
            if let Err(e) = conn.query_row("pragma wal_checkpoint(PASSIVE);", [], |_| Ok(())) {
                eprintln!("guix-store-db: checkpointing `{}': {e}", path.display());
            }
        }
    })
}

/// Settings of the C++ daemon that change how the database is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbOptions {
    /// `fsync-metadata`: `synchronous = normal` when set, `off` otherwise.
    pub fsync_metadata: bool,
    /// `use-sqlite-wal`: journal mode `wal` when set, `truncate` otherwise. Without WAL,
    /// readers and the writer block each other.
    pub use_wal: bool,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions { fsync_metadata: true, use_wal: true }
    }
}

/// The read-write connection of the store-db process: the one place that changes the
/// database. Derefs to [`DbReader`] for queries.
pub struct DbWriter {
    reader: DbReader,
    /// Advanced after commits that change what readers may keep (see [`guix_store::epoch`]).
    epoch: Option<Arc<Epoch>>,
    /// Inside [`DbWriter::in_one_transaction`]: a write changed rows readers may keep, and
    /// the epoch is to be advanced once the whole transaction has committed.
    changed_in_transaction: bool,
}

impl Deref for DbWriter {
    type Target = DbReader;
    fn deref(&self) -> &DbReader {
        &self.reader
    }
}

impl DbWriter {
    /// `LocalStore::openDB`: opens (or, for a new store, creates) `db_dir/db.sqlite` with the
    /// C++ daemon's pragmas; for a new store also writes `db/schema`. `_lock` proves the big
    /// lock is held (see [`crate::StateDirs::init`]).
    pub fn open(db_dir: &Path, store_dir: StoreDir, _lock: &StoreLock, opts: &DbOptions) -> Result<DbWriter> {
        let version = read_schema_version(db_dir)?;
        check_schema_version(version)?;
        let create = version == 0;

        nix::unistd::access(db_dir, nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK).map_err(|e| {
            Error::sys(format!("store database directory `{}' is not writable", db_dir.display()))(e.into())
        })?;

        let path = db_dir.join(DB_FILE);
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(&path, flags)
            .map_err(|source| Error::CannotOpen { path: path.clone(), source })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(Error::sqlite("setting timeout"))?;
        conn.execute_batch("pragma foreign_keys = 1;").map_err(Error::sqlite("enabling foreign keys"))?;
        let sync = if opts.fsync_metadata { "normal" } else { "off" };
        conn.execute_batch(&format!("pragma synchronous = {sync};"))
            .map_err(Error::sqlite("setting synchronous mode"))?;
        let mode = if opts.use_wal { "wal" } else { "truncate" };
        let prev: String = conn
            .query_row("pragma main.journal_mode;", [], |r| r.get(0))
            .map_err(Error::sqlite("querying journal mode"))?;
        if prev != mode {
            // Returns the new mode as a row, hence query_row rather than execute.
            conn.query_row(&format!("pragma main.journal_mode = {mode};"), [], |_| Ok(()))
                .map_err(Error::sqlite("setting journal mode"))?;
        }
        if opts.use_wal {
            conn.query_row(&format!("pragma wal_autocheckpoint = {WAL_AUTOCHECKPOINT};"), [], |_| Ok(()))
                .map_err(Error::sqlite("setting autocheckpoint interval"))?;
        }
        if create {
            conn.execute_batch(sql::SCHEMA).map_err(Error::sqlite("initialising database schema"))?;
            write_schema_file(db_dir)?;
        }
        // Reads through a mapping instead of a `pread` per page: a collection or a large
        // registration looks up many pages (a connection setting; the file is unchanged).
        conn.query_row(&format!("pragma mmap_size = {MMAP_SIZE};"), [], |_| Ok(()))
            .map_err(Error::sqlite("setting the mapping size"))?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(DbWriter { reader: DbReader::from_connection(conn, store_dir), epoch: None, changed_in_transaction: false })
    }

    /// From now on, advances `epoch` after every commit that may change or remove rows readers
    /// have read; advances it once right away, for a commit a previous writer made and died
    /// before advancing.
    pub fn set_epoch(&mut self, epoch: Arc<Epoch>) {
        epoch.advance();
        self.epoch = Some(epoch);
    }

    /// Runs `f` in an immediate write transaction (see [`DbWriter::write_then`]); the commit
    /// advances the epoch.
    fn write<T>(&mut self, f: impl FnMut(&Ctx<'_>) -> Result<T>) -> Result<T> {
        self.write_then(f, |_| true)
    }

    /// Runs `f` in an immediate write transaction, retrying while SQLite is busy; rolls back
    /// when `f` fails. After the commit, advances the epoch when `changed(&result)` says the
    /// transaction changed or removed existing rows.
    fn write_then<T>(
        &mut self,
        mut f: impl FnMut(&Ctx<'_>) -> Result<T>,
        changed: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        if self.reader.in_transaction() {
            // The transaction of `in_one_transaction` (the write lock is held: no busy retries).
            let (conn, store_dir) = self.reader.parts_mut();
            let res = f(&Ctx { conn, store_dir })?;
            self.changed_in_transaction |= changed(&res);
            return Ok(res);
        }
        let (conn, store_dir) = self.reader.parts_mut();
        let res = retry(|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(Error::sqlite("starting transaction"))?;
            let res = f(&Ctx { conn: &tx, store_dir })?;
            tx.commit().map_err(Error::sqlite("committing transaction"))?;
            Ok(res)
        })?;
        if let Some(epoch) = &self.epoch {
            if changed(&res) {
                epoch.advance();
            }
        }
        Ok(res)
    }

    /// Runs `f` in one immediate transaction: every read and write it makes through this
    /// writer shares it (one `BEGIN`/`COMMIT` and one round of SQLite's locks instead of one
    /// per query, which was a quarter of a collection's time in store-db). Commits when `f`
    /// succeeds, then advances the epoch if a write asked for it; rolls everything back when
    /// it fails. `f` must not start transactions of its own.
    pub fn in_one_transaction<T, E: From<Error>>(
        &mut self,
        f: impl FnOnce(&mut DbWriter) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        retry(|| {
            let (conn, _) = self.reader.parts_mut();
            if !conn.is_autocommit() {
                // A previous call unwound (panicked) inside its transaction.
                conn.execute_batch("ROLLBACK").map_err(Error::sqlite("rolling back transaction"))?;
            }
            conn.prepare_cached("BEGIN IMMEDIATE")
                .and_then(|mut st| st.execute([]))
                .map_err(Error::sqlite("starting transaction"))
        })?;
        self.reader.set_in_transaction(true);
        self.changed_in_transaction = false;
        // A panic in `f` must not leave the flag set (later writes would run in a transaction
        // nobody commits): roll back, then let it go on unwinding.
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        self.reader.set_in_transaction(false);
        let (conn, _) = self.reader.parts_mut();
        let res = match res {
            Ok(res) => res,
            Err(panic) => {
                let _ = conn.execute_batch("ROLLBACK");
                std::panic::resume_unwind(panic);
            }
        };
        let end = if res.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = conn.prepare_cached(end).and_then(|mut st| st.execute([])).map(drop);
        let res = match (res, ended) {
            (Ok(v), Ok(())) => v,
            (Err(e), _) => return Err(e),
            (Ok(_), Err(e)) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(Error::sqlite("committing transaction")(e).into());
            }
        };
        if std::mem::take(&mut self.changed_in_transaction) {
            if let Some(epoch) = &self.epoch {
                epoch.advance();
            }
        }
        Ok(res)
    }

    /// `registerValidPaths`: registers all of `paths` in ONE transaction, or none of them.
    ///
    /// As in the C++ daemon: a path that is already valid gets its hash and NAR size updated
    /// (registration time and deriver stay, derivation outputs are not re-added) and its new
    /// references added, so registering the same batch again changes nothing; a new path is
    /// inserted, with one `DerivationOutputs` row per output when it is a `.drv`; every
    /// reference must be valid before or within the batch, else "path `%1%' is not valid";
    /// a reference cycle within the batch (self-references aside) is an error.
    ///
    /// Not done here: `checkDerivationOutputs` (the caller parses the `.drv` and must check its
    /// output paths before calling).
    pub fn register_valid_paths(&mut self, paths: &[Registration]) -> Result<()> {
        let now = unix_now();
        self.write_then(
            |c| {
                let mut batch = BTreeSet::new();
                let mut updated = false;
                // Each path's row id, kept for its references (no second lookup).
                let mut ids = Vec::with_capacity(paths.len());
                for reg in paths {
                    let info = reg.info();
                    let path = c.store_dir.display(&info.path);
                    let hash = format!("sha256:{}", info.nar_hash.to_base16());
                    let size = nar_size_column(info.nar_size);
                    if let Some(id) = c.path_id(&info.path)? {
                        updated = true;
                        c.prepare(sql::UPDATE_PATH_INFO)?
                            .execute(params![size, hash, path])
                            .map_err(Error::sqlite(EXEC))?;
                        ids.push(id);
                    } else {
                        let time = if info.registration_time == 0 { now } else { info.registration_time };
                        let deriver = info.deriver.as_ref().map(|d| c.store_dir.display(d));
                        c.prepare(sql::REGISTER_VALID_PATH)?
                            .execute(params![path, hash, time, deriver, size])
                            .map_err(Error::sqlite(EXEC))?;
                        let id = c.conn.last_insert_rowid();
                        ids.push(id);
                        for (name, out) in reg.derivation_outputs().into_iter().flatten() {
                            c.prepare(sql::ADD_DERIVATION_OUTPUT)?
                                .execute(params![id, name, c.store_dir.display(out)])
                                .map_err(Error::sqlite(EXEC))?;
                        }
                    }
                    batch.insert(info.path.clone());
                }
                for (reg, &referrer) in paths.iter().zip(&ids) {
                    let info = reg.info();
                    for r in &info.references {
                        let reference = c.valid_path_id(r)?;
                        c.prepare(sql::ADD_REFERENCE)?
                            .execute(params![referrer, reference])
                            .map_err(Error::sqlite(EXEC))?;
                    }
                }
                // One path cannot form a cycle (self-references do not count): no query needed.
                if batch.len() > 1 {
                    c.check_acyclic(&batch)?;
                }
                Ok(updated)
            },
            |updated| *updated,
        )
        .map(drop)
    }

    /// `invalidatePathChecked`: removes a valid path (its references and derivation outputs go
    /// with it), refusing while other valid paths refer to it. Not valid: nothing to do.
    pub fn invalidate_path(&mut self, path: &StorePath) -> Result<()> {
        self.write(|c| {
            if c.path_id(path)?.is_none() {
                return Ok(());
            }
            let mut referrers = c.referrers(path)?;
            referrers.remove(path);
            if !referrers.is_empty() {
                return Err(Error::PathInUse {
                    path: c.store_dir.display(path),
                    referrers: show_paths(c.store_dir, &referrers),
                });
            }
            c.prepare(sql::INVALIDATE_PATH)?.execute([c.store_dir.display(path)]).map_err(Error::sqlite(EXEC))?;
            Ok(())
        })
    }

    /// The collector's invalidation by row ids ([`crate::server::collect`]), its own
    /// references first, in one transaction. The caller has found every valid referrer of
    /// each among them; should it have missed one, the foreign key on `Refs.reference` refuses
    /// the deletion ("FOREIGN KEY constraint failed") and nothing changes. Nothing is looked
    /// up again (checking the referrers here was a quarter of a collection's queries).
    pub fn invalidate_ids(&mut self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(|c| {
            for id in ids {
                c.prepare(sql::DELETE_REFERENCES_OF)?.execute([id]).map_err(Error::sqlite(EXEC))?;
            }
            for id in ids {
                c.prepare(sql::INVALIDATE_PATH_ID)?.execute([id]).map_err(Error::sqlite(EXEC))?;
            }
            Ok(())
        })
    }

    /// `registerFailedPath`: records a failed build output (kept time: the first failure).
    pub fn register_failed_path(&mut self, path: &StorePath) -> Result<()> {
        let now = unix_now();
        self.write(|c| {
            c.prepare(sql::REGISTER_FAILED_PATH)?
                .execute(params![c.store_dir.display(path), now])
                .map_err(Error::sqlite(EXEC))?;
            Ok(())
        })
    }

    /// `clearFailedPaths`: forgets the given paths; a derivation also clears its outputs.
    pub fn clear_failed_paths(&mut self, paths: &BTreeSet<StorePath>) -> Result<()> {
        let paths: Vec<String> = paths.iter().map(|p| self.store_dir().display(p)).collect();
        self.clear_failed(&paths)
    }

    /// `clearFailedPaths` with `*`: forgets every failed path.
    pub fn clear_all_failed_paths(&mut self) -> Result<()> {
        self.clear_failed(&["*".to_owned()])
    }

    fn clear_failed(&mut self, keys: &[String]) -> Result<()> {
        self.write(|c| {
            for k in keys {
                c.prepare(sql::CLEAR_FAILED_PATH)?.execute([k]).map_err(Error::sqlite(EXEC))?;
            }
            Ok(())
        })
    }
}

/// Writes `db/schema` (`7`, no newline, mode 0644 under the daemon's umask 022).
fn write_schema_file(db_dir: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path: PathBuf = db_dir.join(SCHEMA_FILE);
    let ctx = || format!("writing file `{}'", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&path)
        .map_err(|e| Error::sys(ctx())(e))?;
    f.write_all(SCHEMA_VERSION.to_string().as_bytes()).map_err(|e| Error::sys(ctx())(e))
}

/// `narSize` column value: NULL for unknown or 0, as the C++ daemon binds it.
fn nar_size_column(size: Option<u64>) -> Option<i64> {
    size.filter(|&n| n != 0).and_then(|n| i64::try_from(n).ok())
}

/// `showPaths`: `` `a', `b' ``.
fn show_paths(store_dir: &StoreDir, paths: &BTreeSet<StorePath>) -> String {
    paths.iter().map(|p| format!("`{}'", store_dir.display(p))).collect::<Vec<_>>().join(", ")
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

//! Connections to `db.sqlite`: [`DbReader`] (read-only, any process) and [`DbWriter`] (the
//! store-db process only). Both speak the C++ daemon's SQL (see [`crate::sql`]), so a database
//! written by either daemon is valid for the other.
//!
//! Reads run in one deferred read transaction each: under WAL they see a consistent snapshot
//! and never wait for a writer. Writes run in `BEGIN IMMEDIATE` transactions (the C++ daemon
//! uses a deferred `begin;`; taking the write lock up front only avoids the deadlock-prone lock
//! upgrade, the rows written are the same). Both retry on `SQLITE_BUSY`/`SQLITE_PROTOCOL` after
//! a random sleep of at most 0.1 s, like `retrySQLite`.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use guix_formats::hash::base16_decode;
use guix_formats::{Hash, HashAlgo, StoreDir, StorePath};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::dirs::StoreLock;
use crate::epoch::Epoch;
use crate::error::{Error, Result};
use crate::info::{DerivationOutputs, Registration, ValidPathInfo};
use crate::sql;

/// The only schema version Guix has ever used.
pub const SCHEMA_VERSION: i64 = 7;
/// `sqlite3_busy_timeout` of the C++ daemon: one hour.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// `pragma wal_autocheckpoint` of the C++ daemon, in pages.
pub const WAL_AUTOCHECKPOINT: u32 = 40_000;
/// The database file name inside the database directory.
pub const DB_FILE: &str = "db.sqlite";
/// The schema version file name inside the database directory.
pub const SCHEMA_FILE: &str = "schema";

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

/// Reads `db/schema` like `LocalStore::getSchema`: 0 when missing, an error when not an integer.
pub fn read_schema_version(db_dir: &Path) -> Result<i64> {
    let path = db_dir.join(SCHEMA_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::sys(format!("opening file `{}'", path.display()))(e)),
    };
    // `string2Int`: leading white space is skipped, anything after the number is an error.
    std::str::from_utf8(&text)
        .ok()
        .and_then(|s| s.trim_start().parse::<i32>().ok())
        .map(i64::from)
        .ok_or(Error::SchemaCorrupt(path))
}

/// The C++ daemon's verdict on a schema version read from `db/schema` (0 = new store).
pub fn check_schema_version(version: i64) -> Result<()> {
    match version {
        v if v > SCHEMA_VERSION => Err(Error::SchemaTooNew(v)),
        v if v == SCHEMA_VERSION || v == 0 => Ok(()),
        v => Err(Error::SchemaTooOld(v)),
    }
}

/// A read-only connection. Every process may open one; it never writes and never waits for
/// the writer (WAL).
pub struct DbReader {
    conn: Connection,
    store_dir: StoreDir,
}

impl DbReader {
    /// Opens `db_dir/db.sqlite` read-only. `store_dir` is the store the paths in the database
    /// live in (`/gnu/store`). Fails when the directory holds no store database.
    pub fn open(db_dir: &Path, store_dir: StoreDir) -> Result<DbReader> {
        let version = read_schema_version(db_dir)?;
        if version == 0 {
            return Err(Error::NoDatabase(db_dir.to_owned()));
        }
        check_schema_version(version)?;
        let path = db_dir.join(DB_FILE);
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|source| Error::CannotOpen { path: path.clone(), source })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(Error::sqlite("setting timeout"))?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(DbReader { conn, store_dir })
    }

    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// Runs `f` in a read transaction, retrying while SQLite is busy.
    ///
    /// `BEGIN`, `COMMIT` and `ROLLBACK` are cached statements: a point query is a few
    /// microseconds, and parsing the transaction statements anew each time (as
    /// `Connection::unchecked_transaction` does) was a visible part of it.
    fn read<T>(&self, mut f: impl FnMut(&Ctx<'_>) -> Result<T>) -> Result<T> {
        retry(|| {
            if !self.conn.is_autocommit() {
                // A previous call unwound (panicked) inside its transaction.
                self.exec_cached("ROLLBACK", "rolling back transaction")?;
            }
            self.exec_cached("BEGIN", "starting transaction")?;
            let res = f(&Ctx { conn: &self.conn, store_dir: &self.store_dir })
                .and_then(|v| self.exec_cached("COMMIT", "committing transaction").map(|()| v));
            if res.is_err() && !self.conn.is_autocommit() {
                let _ = self.exec_cached("ROLLBACK", "rolling back transaction");
            }
            res
        })
    }

    fn exec_cached(&self, sql: &str, what: &'static str) -> Result<()> {
        self.conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(drop).map_err(Error::sqlite(what))
    }

    /// `isValidPath`.
    pub fn is_valid(&self, path: &StorePath) -> Result<bool> {
        self.read(|c| Ok(c.path_id(path)?.is_some()))
    }

    /// `queryPathInfo`, or `None` when the path is not valid.
    pub fn try_query_path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>> {
        self.read(|c| c.path_info(path))
    }

    /// `queryPathInfo`: "path `P' is not valid" when it is not.
    pub fn query_path_info(&self, path: &StorePath) -> Result<ValidPathInfo> {
        self.try_query_path_info(path)?.ok_or_else(|| Error::NotValid(self.store_dir.display(path)))
    }

    /// `queryReferences` (through `queryPathInfo`, so an invalid path is an error).
    pub fn query_references(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        Ok(self.query_path_info(path)?.references)
    }

    /// `queryReferrers`: the valid paths referring to `path` (maybe itself); empty when `path`
    /// is not valid.
    pub fn query_referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.read(|c| c.referrers(path))
    }

    /// `queryDeriver` (through `queryPathInfo`, so an invalid path is an error).
    pub fn query_deriver(&self, path: &StorePath) -> Result<Option<StorePath>> {
        Ok(self.query_path_info(path)?.deriver)
    }

    /// `queryValidDerivers`: the valid derivations that list `path` as an output.
    pub fn query_valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        let target = self.store_dir.display(path);
        self.read(|c| {
            let mut stmt = c.prepare(sql::QUERY_VALID_DERIVERS)?;
            let rows = stmt.query_map([&target], |r| r.get::<_, String>(1)).map_err(Error::sqlite(QUERY))?;
            rows.map(|r| c.parse_path(r.map_err(Error::sqlite(QUERY))?)).collect()
        })
    }

    /// `queryDerivationOutputs` + `queryDerivationOutputNames` in one: output name → path.
    /// An invalid derivation is an error ("path `%1%' is not valid", as in C++).
    pub fn query_derivation_output_map(&self, drv: &StorePath) -> Result<DerivationOutputs> {
        self.read(|c| {
            let id = c.valid_path_id(drv)?;
            let mut stmt = c.prepare(sql::QUERY_DERIVATION_OUTPUTS)?;
            let rows = stmt
                .query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(Error::sqlite(QUERY))?;
            rows.map(|r| {
                let (name, path) = r.map_err(Error::sqlite(QUERY))?;
                Ok((name, c.parse_path(path)?))
            })
            .collect()
        })
    }

    /// `queryDerivationOutputs`: the output paths a valid derivation declares.
    pub fn query_derivation_outputs(&self, drv: &StorePath) -> Result<BTreeSet<StorePath>> {
        Ok(self.query_derivation_output_map(drv)?.into_values().collect())
    }

    /// `queryDerivationOutputNames`: the output names a valid derivation declares.
    pub fn query_derivation_output_names(&self, drv: &StorePath) -> Result<BTreeSet<String>> {
        Ok(self.query_derivation_output_map(drv)?.into_keys().collect())
    }

    /// `queryPathFromHashPart`: the valid path whose hash part is `hash_part`, if any. Like the
    /// C++ daemon this only checks the length (32 bytes), then takes the smallest valid path
    /// `>= <store>/<hash_part>` and keeps it when it starts with that prefix.
    pub fn query_path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>> {
        if hash_part.len() != guix_formats::store_path::HASH_PART_LEN {
            return Err(Error::InvalidHashPart);
        }
        let prefix = format!("{}/{}", self.store_dir.as_str(), hash_part);
        self.read(|c| {
            let found: Option<String> = c
                .prepare(sql::QUERY_PATH_FROM_HASH_PART)?
                .query_row([&prefix], |r| r.get(0))
                .optional()
                .map_err(Error::sqlite(QUERY))?;
            match found {
                Some(p) if p.as_bytes().starts_with(prefix.as_bytes()) => Ok(Some(c.parse_path(p)?)),
                _ => Ok(None),
            }
        })
    }

    /// `queryAllValidPaths`.
    pub fn query_all_valid_paths(&self) -> Result<BTreeSet<StorePath>> {
        self.read(|c| {
            let mut stmt = c.prepare(sql::QUERY_VALID_PATHS)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(Error::sqlite(QUERY))?;
            rows.map(|r| c.parse_path(r.map_err(Error::sqlite(QUERY))?)).collect()
        })
    }

    /// `queryValidPaths`: the valid members of `paths`, from one snapshot.
    pub fn query_valid_paths<'a>(&self, paths: impl IntoIterator<Item = &'a StorePath> + Clone) -> Result<BTreeSet<StorePath>> {
        self.read(|c| {
            let mut res = BTreeSet::new();
            for p in paths.clone() {
                if c.path_id(p)?.is_some() {
                    res.insert(p.clone());
                }
            }
            Ok(res)
        })
    }

    /// `hasPathFailed`: whether `path` is in the failed-path cache.
    pub fn has_path_failed(&self, path: &StorePath) -> Result<bool> {
        let p = self.store_dir.display(path);
        self.read(|c| {
            c.prepare(sql::HAS_PATH_FAILED)?
                .query_row([&p], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
                .map_err(Error::sqlite(QUERY))
        })
    }

    /// `queryFailedPaths`.
    pub fn query_failed_paths(&self) -> Result<BTreeSet<StorePath>> {
        self.read(|c| {
            let mut stmt = c.prepare(sql::QUERY_FAILED_PATHS)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(Error::sqlite(QUERY))?;
            rows.map(|r| c.parse_path(r.map_err(Error::sqlite(QUERY))?)).collect()
        })
    }
}

/// The read-write connection of the store-db process: the one place that changes the
/// database. Derefs to [`DbReader`] for queries.
pub struct DbWriter {
    reader: DbReader,
    /// Advanced after commits that change what readers may keep (see [`crate::epoch`]).
    epoch: Option<Arc<Epoch>>,
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
        let conn = Connection::open_with_flags(&path, flags).map_err(|source| Error::CannotOpen { path: path.clone(), source })?;
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
        conn.set_prepared_statement_cache_capacity(32);
        Ok(DbWriter { reader: DbReader { conn, store_dir }, epoch: None })
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
    fn write_then<T>(&mut self, mut f: impl FnMut(&Ctx<'_>) -> Result<T>, changed: impl FnOnce(&T) -> bool) -> Result<T> {
        let store_dir = &self.reader.store_dir;
        let conn = &mut self.reader.conn;
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
        self.write_then(|c| {
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
        }, |updated| *updated)
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
            c.prepare(sql::INVALIDATE_PATH)?
                .execute([c.store_dir.display(path)])
                .map_err(Error::sqlite(EXEC))?;
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
        let paths: Vec<String> = paths.iter().map(|p| self.store_dir.display(p)).collect();
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

const QUERY: &str = "executing SQLite query";
const EXEC: &str = "executing SQLite statement";

/// A connection (inside a transaction) plus the store directory: the queries shared by the
/// reader and the writer.
struct Ctx<'a> {
    conn: &'a Connection,
    store_dir: &'a StoreDir,
}

impl Ctx<'_> {
    fn prepare(&self, sql: &str) -> Result<rusqlite::CachedStatement<'_>> {
        self.conn.prepare_cached(sql).map_err(Error::sqlite("creating statement"))
    }

    fn parse_path(&self, s: String) -> Result<StorePath> {
        self.store_dir.parse(&s).map_err(|source| Error::CorruptPath { value: s, source })
    }

    /// The row id of a valid path.
    fn path_id(&self, path: &StorePath) -> Result<Option<i64>> {
        self.prepare(sql::QUERY_PATH_INFO)?
            .query_row([self.store_dir.display(path)], |r| r.get(0))
            .optional()
            .map_err(Error::sqlite(QUERY))
    }

    /// `queryValidPathId`.
    fn valid_path_id(&self, path: &StorePath) -> Result<i64> {
        self.path_id(path)?.ok_or_else(|| Error::NotValidId(self.store_dir.display(path)))
    }

    fn references_of(&self, id: i64) -> Result<BTreeSet<StorePath>> {
        let mut stmt = self.prepare(sql::QUERY_REFERENCES)?;
        let rows = stmt.query_map([id], |r| r.get::<_, String>(0)).map_err(Error::sqlite(QUERY))?;
        rows.map(|r| self.parse_path(r.map_err(Error::sqlite(QUERY))?)).collect()
    }

    fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        let mut stmt = self.prepare(sql::QUERY_REFERRERS)?;
        let rows = stmt
            .query_map([self.store_dir.display(path)], |r| r.get::<_, String>(0))
            .map_err(Error::sqlite(QUERY))?;
        rows.map(|r| self.parse_path(r.map_err(Error::sqlite(QUERY))?)).collect()
    }

    fn path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>> {
        let full = self.store_dir.display(path);
        type Row = (i64, String, i64, Option<String>, Option<i64>);
        let row: Option<Row> = self
            .prepare(sql::QUERY_PATH_INFO)?
            .query_row([&full], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .optional()
            .map_err(Error::sqlite(QUERY))?;
        let Some((id, hash, registration_time, deriver, nar_size)) = row else {
            return Ok(None);
        };
        let nar_hash = parse_hash_field(&full, &hash)?;
        let deriver = match deriver {
            Some(d) if !d.is_empty() => Some(self.parse_path(d)?),
            _ => None,
        };
        let nar_size = nar_size
            .map(|n| u64::try_from(n).map_err(|_| Error::Corrupt(format!("negative NAR size for `{full}'"))))
            .transpose()?;
        let references = self.references_of(id)?;
        Ok(Some(ValidPathInfo { path: path.clone(), deriver, nar_hash, references, registration_time, nar_size }))
    }

    /// `topoSortPaths` for its error only: a depth-first walk over `batch` in sorted order,
    /// following references within `batch` (self-references aside); meeting a path that is on
    /// the current walk is a cycle, reported with that path, as in C++.
    fn check_acyclic(&self, batch: &BTreeSet<StorePath>) -> Result<()> {
        let mut visited = BTreeSet::new();
        let mut on_stack = BTreeSet::new();
        for root in batch {
            if !visited.insert(root.clone()) {
                continue;
            }
            on_stack.insert(root.clone());
            let mut stack = vec![(root.clone(), self.batch_refs(root, batch)?.into_iter())];
            while let Some((node, refs)) = stack.last_mut() {
                match refs.next() {
                    Some(next) => {
                        if on_stack.contains(&next) {
                            return Err(Error::Cycle(self.store_dir.display(&next)));
                        }
                        if visited.insert(next.clone()) {
                            on_stack.insert(next.clone());
                            let refs = self.batch_refs(&next, batch)?.into_iter();
                            stack.push((next, refs));
                        }
                    }
                    None => {
                        on_stack.remove(&*node);
                        stack.pop();
                    }
                }
            }
        }
        Ok(())
    }

    fn batch_refs(&self, path: &StorePath, batch: &BTreeSet<StorePath>) -> Result<Vec<StorePath>> {
        let id = self.valid_path_id(path)?;
        Ok(self.references_of(id)?.into_iter().filter(|r| r != path && batch.contains(r)).collect())
    }
}

/// `parseHashField`: `algo:base16`.
fn parse_hash_field(path: &str, s: &str) -> Result<Hash> {
    let (algo, digest) = s
        .split_once(':')
        .ok_or_else(|| Error::CorruptHash { hash: s.to_owned(), path: path.to_owned() })?;
    let algo = HashAlgo::from_name(algo)
        .ok_or_else(|| Error::UnknownHashType { algo: algo.to_owned(), path: path.to_owned() })?;
    // `parseHash` accepts base16 only.
    base16_decode(digest)
        .and_then(|bytes| Hash::from_bytes(algo, &bytes).ok())
        .ok_or_else(|| Error::Corrupt(format!("invalid hash `{digest}' in valid-path entry for `{path}'")))
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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `retrySQLite`: runs `f` again while it fails with "busy", after a random sleep ≤ 0.1 s.
fn retry<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut warned = false;
    loop {
        match f() {
            Err(e) if e.is_busy() => {
                if !warned {
                    eprintln!("warning: SQLite database is busy");
                    warned = true;
                }
                let jitter = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) % 100;
                std::thread::sleep(Duration::from_millis(u64::from(jitter)));
            }
            other => return other,
        }
    }
}


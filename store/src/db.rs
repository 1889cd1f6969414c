//! The read side of `db.sqlite`: [`DbReader`] (read-only, any process), the schema version
//! check, and the queries the reader and store-db's writer share ([`Ctx`], [`retry`]). The
//! writer (`DbWriter`) lives in the store-db crate, the only one that links it. Both speak the
//! C++ daemon's SQL (see [`crate::sql`]), so a database written by either daemon is valid for
//! the other.
//!
//! Reads run in one deferred read transaction each: under WAL they see a consistent snapshot
//! and never wait for a writer. Writes run in `BEGIN IMMEDIATE` transactions (the C++ daemon
//! uses a deferred `begin;`; taking the write lock up front only avoids the deadlock-prone lock
//! upgrade, the rows written are the same). Both retry on `SQLITE_BUSY`/`SQLITE_PROTOCOL`, like
//! `retrySQLite`, after pauses that start short ([`retry_for`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use guix_formats::hash::base16_decode;
use guix_formats::{Hash, HashAlgo, StoreDir, StorePath};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::{Error, Result};
use crate::info::{DerivationOutputs, ValidPathInfo};
use crate::sql;

/// The only schema version Guix has ever used.
pub const SCHEMA_VERSION: i64 = 7;
/// `sqlite3_busy_timeout` of the C++ daemon: one hour.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// The database file name inside the database directory.
pub const DB_FILE: &str = "db.sqlite";
/// The schema version file name inside the database directory.
pub const SCHEMA_FILE: &str = "schema";

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
    /// How long a read waits while SQLite is busy, retries included (C++: one hour).
    busy_limit: Duration,
    /// Set while store-db's writer holds a transaction of its own open on this connection
    /// ([`DbReader::set_in_transaction`]): reads then run inside it instead of opening one each.
    in_transaction: std::cell::Cell<bool>,
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
        let conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|source| Error::CannotOpen { path: path.clone(), source })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(Error::sqlite("setting timeout"))?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(DbReader { conn, store_dir, busy_limit: BUSY_TIMEOUT, in_transaction: Default::default() })
    }

    /// Wraps a connection store-db's writer opened read-write (its queries are the reader's).
    pub fn from_connection(conn: Connection, store_dir: StoreDir) -> DbReader {
        DbReader { conn, store_dir, busy_limit: BUSY_TIMEOUT, in_transaction: Default::default() }
    }

    /// For store-db's writer: says that the caller has opened a transaction on this connection
    /// (and will end it), so that reads run inside it rather than in one transaction each.
    pub fn set_in_transaction(&self, open: bool) {
        self.in_transaction.set(open);
    }

    /// Whether [`DbReader::set_in_transaction`] says a transaction of the caller's is open.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction.get()
    }

    /// Waits at most `limit` while SQLite is busy (say, while another process recovers the WAL)
    /// instead of the C++ hour, then fails with SQLite's "database is locked". For readers on a
    /// thread that must not be held up (socket-front's runtime thread).
    pub fn set_busy_limit(&mut self, limit: Duration) -> Result<()> {
        self.conn.busy_timeout(limit).map_err(Error::sqlite("setting timeout"))?;
        self.busy_limit = limit;
        Ok(())
    }

    /// The connection and the store directory, for store-db's writer to run its transactions.
    pub fn parts_mut(&mut self) -> (&mut Connection, &StoreDir) {
        (&mut self.conn, &self.store_dir)
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
        if self.in_transaction.get() {
            return f(&Ctx { conn: &self.conn, store_dir: &self.store_dir });
        }
        retry_for(self.busy_limit, || {
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

    /// The row id of `path` in `ValidPaths`, or `None` when it is not valid.
    pub fn path_id(&self, path: &StorePath) -> Result<Option<i64>> {
        self.read(|c| c.path_id(path))
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
    pub fn query_valid_paths<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath> + Clone,
    ) -> Result<BTreeSet<StorePath>> {
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

/// The C++ wording of a failing query, for [`Error::Sqlite`].
pub const QUERY: &str = "executing SQLite query";
/// The C++ wording of a failing statement, for [`Error::Sqlite`].
pub const EXEC: &str = "executing SQLite statement";

/// A connection (inside a transaction) plus the store directory: the queries shared by the
/// reader and the writer.
pub struct Ctx<'a> {
    pub conn: &'a Connection,
    pub store_dir: &'a StoreDir,
}

impl Ctx<'_> {
    pub fn prepare(&self, sql: &str) -> Result<rusqlite::CachedStatement<'_>> {
        self.conn.prepare_cached(sql).map_err(Error::sqlite("creating statement"))
    }

    pub fn parse_path(&self, s: String) -> Result<StorePath> {
        self.store_dir.parse(&s).map_err(|source| Error::CorruptPath { value: s, source })
    }

    /// The row id of a valid path.
    pub fn path_id(&self, path: &StorePath) -> Result<Option<i64>> {
        self.prepare(sql::QUERY_PATH_INFO)?
            .query_row([self.store_dir.display(path)], |r| r.get(0))
            .optional()
            .map_err(Error::sqlite(QUERY))
    }

    /// `queryValidPathId`.
    pub fn valid_path_id(&self, path: &StorePath) -> Result<i64> {
        self.path_id(path)?.ok_or_else(|| Error::NotValidId(self.store_dir.display(path)))
    }

    pub fn references_of(&self, id: i64) -> Result<BTreeSet<StorePath>> {
        let mut stmt = self.prepare(sql::QUERY_REFERENCES)?;
        let rows = stmt.query_map([id], |r| r.get::<_, String>(0)).map_err(Error::sqlite(QUERY))?;
        rows.map(|r| self.parse_path(r.map_err(Error::sqlite(QUERY))?)).collect()
    }

    pub fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        let mut stmt = self.prepare(sql::QUERY_REFERRERS)?;
        let rows =
            stmt.query_map([self.store_dir.display(path)], |r| r.get::<_, String>(0)).map_err(Error::sqlite(QUERY))?;
        rows.map(|r| self.parse_path(r.map_err(Error::sqlite(QUERY))?)).collect()
    }

    pub fn path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>> {
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
    pub fn check_acyclic(&self, batch: &BTreeSet<StorePath>) -> Result<()> {
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
    let (algo, digest) =
        s.split_once(':').ok_or_else(|| Error::CorruptHash { hash: s.to_owned(), path: path.to_owned() })?;
    let algo = HashAlgo::from_name(algo)
        .ok_or_else(|| Error::UnknownHashType { algo: algo.to_owned(), path: path.to_owned() })?;
    // `parseHash` accepts base16 only.
    base16_decode(digest)
        .and_then(|bytes| Hash::from_bytes(algo, &bytes).ok())
        .ok_or_else(|| Error::Corrupt(format!("invalid hash `{digest}' in valid-path entry for `{path}'")))
}

/// `retrySQLite`: runs `f` again while it fails with "busy" (see [`retry_for`]).
pub fn retry<T>(f: impl FnMut() -> Result<T>) -> Result<T> {
    retry_for(Duration::MAX, f)
}

/// The first pause of [`retry_for`].
const FIRST_PAUSE: Duration = Duration::from_micros(20);
/// The longest pause of [`retry_for`]: the C++ `retrySQLite` sleeps a random time up to this.
const LONGEST_PAUSE: Duration = Duration::from_millis(100);
/// [`retry_for`] warns once the database has been busy this long: shorter spells are races of
/// a few microseconds, not contention worth a line in the log.
const WARN_AFTER: Duration = Duration::from_millis(10);

/// The pauses of [`retry_for`]: each a random time between half of and the whole of a bound
/// that starts at [`FIRST_PAUSE`] and doubles up to [`LONGEST_PAUSE`]; `noise` gives a number
/// for the randomness.
///
/// Not the C++ daemon's flat random sleep of up to 0.1 s: a reader that cannot write the
/// `-shm` (socket-front as its own user) is told "busy" (`SQLITE_READONLY_RECOVERY`,
/// `SQLITE_READONLY_CANTINIT`) when it reads the WAL index header while the writer is updating
/// it, a race that is over microseconds later. Measured during a collection (a commit every
/// half millisecond): a few such races a second, each of which had held socket-front's runtime
/// thread, so every client, for up to 100 ms.
fn pauses(mut noise: impl FnMut() -> u32) -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(FIRST_PAUSE), |&bound| Some((bound * 2).min(LONGEST_PAUSE)))
        .map(move |bound| bound / 2 + bound / 2 * (noise() % 1000) / 1000)
}

/// [`retry`] for at most `limit`; then the "busy" error is returned.
pub fn retry_for<T>(limit: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = std::time::Instant::now();
    let mut warned = false;
    let noise = || SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mut pauses = pauses(noise);
    loop {
        match f() {
            Err(e) if e.is_busy() && start.elapsed() < limit => {
                if !warned && start.elapsed() >= WARN_AFTER {
                    eprintln!("warning: SQLite database is busy");
                    warned = true;
                }
                let pause = pauses.next().unwrap_or(LONGEST_PAUSE);
                std::thread::sleep(pause.min(limit.saturating_sub(start.elapsed())));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> Error {
        let code = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY_RECOVERY);
        Error::sqlite("reading")(rusqlite::Error::SqliteFailure(code, None))
    }

    #[test]
    fn pauses_start_at_microseconds_and_double_up_to_the_cxx_bound() {
        for noise in [0, 499, 999] {
            let p: Vec<Duration> = pauses(|| noise).take(20).collect();
            assert!(p[0] >= FIRST_PAUSE / 2 && p[0] <= FIRST_PAUSE, "{p:?}");
            for w in p.windows(2) {
                assert!(w[1] <= LONGEST_PAUSE, "{p:?}");
                assert!(w[1] >= w[0], "{p:?}");
            }
            // 20 µs doubled 13 times is past 100 ms: capped from there on.
            assert!(p[13..].iter().all(|&d| d >= LONGEST_PAUSE / 2), "{p:?}");
            let spent: Duration = p[..8].iter().sum();
            assert!(spent < Duration::from_millis(6), "the first eight retries take under 6 ms: {p:?}");
        }
    }

    #[test]
    fn retry_for_runs_again_while_busy_and_gives_up_at_its_limit() {
        let mut calls = 0;
        let r = retry_for(Duration::from_secs(10), || {
            calls += 1;
            if calls < 5 {
                Err(busy())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.ok(), Some(5));

        let mut calls = 0;
        let r: Result<()> = retry_for(Duration::ZERO, || {
            calls += 1;
            Err(busy())
        });
        assert!(r.is_err_and(|e| e.is_busy()));
        assert_eq!(calls, 1, "no time left: no second try");

        // Anything else is not retried.
        let mut calls = 0;
        let r: Result<()> = retry_for(Duration::from_secs(10), || {
            calls += 1;
            Err(Error::Corrupt("x".into()))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}

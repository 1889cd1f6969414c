//! Checks of a session's store and database from the host, independent of either daemon: the
//! SQLite file is opened read-only (WAL: a consistent snapshot, safe while a daemon writes), the
//! store items are read from the host directory behind `/gnu/store`.
//!
//! * [`integrity_check`]: `PRAGMA integrity_check` says `ok`.
//! * [`check_store`]: nothing is half-registered (every reference and deriver-output row names a
//!   valid path) and every valid path has its files with the NAR hash and size the database
//!   records. Returns the valid paths with their recorded hashes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use guix_formats::nar;
use rusqlite::{Connection, OpenFlags};

/// What the database records for one valid path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `sha256:<base16>` as in `ValidPaths.hash`.
    pub hash: String,
    pub nar_size: Option<u64>,
}

fn open(db: &Path) -> Result<Connection, String> {
    Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| format!("opening {} read-only: {e}", db.display()))
}

/// `PRAGMA integrity_check` on the database file `db` (opened read-only).
pub fn integrity_check(db: &Path) -> Result<(), String> {
    let conn = open(db)?;
    let mut stmt = conn.prepare("pragma integrity_check").map_err(|e| format!("integrity_check: {e}"))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| format!("integrity_check: {e}"))?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(format!("PRAGMA integrity_check on {}: {rows:?}", db.display()))
    }
}

/// Checks that nothing in the database `db` is half-registered and that every valid path's
/// files under `store_on_host` (the host directory mounted at `store_dir`, e.g. `/gnu/store`)
/// have the recorded NAR hash and size. Returns every valid path (as the daemon names it) with
/// what is recorded, or every problem found.
pub fn check_store(db: &Path, store_dir: &str, store_on_host: &Path) -> Result<BTreeMap<String, Recorded>, String> {
    let mut conn = open(db)?;
    // One read transaction: one snapshot even while a daemon commits.
    let tx = conn.transaction().map_err(|e| format!("begin: {e}"))?;
    let sql = |e: rusqlite::Error| format!("{}: {e}", db.display());
    let mut problems = String::new();

    let mut valid = BTreeMap::new();
    {
        let mut stmt = tx.prepare("select path, hash, narSize from ValidPaths").map_err(sql)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<i64>>(2)?)))
            .map_err(sql)?;
        for row in rows {
            let (path, hash, size) = row.map_err(sql)?;
            valid.insert(path, Recorded { hash, nar_size: size.and_then(|s| u64::try_from(s).ok()) });
        }
    }
    for (query, what) in [
        (
            "select count(*) from Refs where reference not in (select id from ValidPaths) \
             or referrer not in (select id from ValidPaths)",
            "reference rows naming an invalid path",
        ),
        (
            "select count(*) from DerivationOutputs where drv not in (select id from ValidPaths)",
            "derivation-output rows of an invalid derivation",
        ),
    ] {
        let n: i64 = tx.query_row(query, [], |r| r.get(0)).map_err(sql)?;
        if n != 0 {
            let _ = writeln!(problems, "{n} {what}");
        }
    }
    drop(tx);

    let prefix = format!("{store_dir}/");
    for (path, rec) in &valid {
        let Some(base) = path.strip_prefix(&prefix).filter(|b| !b.is_empty() && !b.contains('/')) else {
            let _ = writeln!(problems, "valid path `{path}' is not in {store_dir}");
            continue;
        };
        let on_host = store_on_host.join(base);
        match nar::dump_path(&on_host, &mut std::io::sink()) {
            Ok(sum) => {
                let got = format!("sha256:{}", sum.nar_hash.to_base16());
                if got != rec.hash {
                    let _ = writeln!(problems, "`{path}': recorded hash {}, files hash to {got}", rec.hash);
                }
                if rec.nar_size.is_some_and(|s| s != sum.nar_size) {
                    let _ = writeln!(problems, "`{path}': recorded size {:?}, NAR is {}", rec.nar_size, sum.nar_size);
                }
            }
            Err(e) => {
                let _ = writeln!(problems, "`{path}' is valid but its files cannot be read: {e}");
            }
        }
    }
    if problems.is_empty() {
        Ok(valid)
    } else {
        Err(problems)
    }
}

//! The database against real SQLite in temporary directories.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{fresh, info, reader, reg, sp};
use guix_formats::{HashAlgo, StoreDir};
use guix_store_db::{DbOptions, DbReader, DbWriter, Epoch, Error, InitOptions, Registration, StateDirs};

#[test]
fn init_creates_the_cxx_layout() {
    let t = tempfile::tempdir().unwrap();
    let s = fresh(t.path());
    let mode = |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    let st = t.path().join("var-guix");
    for d in ["profiles", "profiles/per-user", "temproots", "gcroots", "db"] {
        assert_eq!(mode(&st.join(d)), 0o755, "{d}");
    }
    assert_eq!(mode(&t.path().join("store/.links")), 0o755);
    assert_eq!(std::fs::read_link(st.join("gcroots/profiles")).unwrap(), st.join("profiles"));
    assert_eq!(std::fs::read(st.join("db/schema")).unwrap(), b"7");
    assert_eq!(mode(&st.join("db/schema")), 0o644);
    assert_eq!(mode(&st.join("db/big-lock")), 0o600);
    assert!(!s.lock.read_only());
    drop(s);
    // The reserve file, when asked for.
    let dirs = StateDirs::under(t.path());
    let _lock = dirs.init(&InitOptions { reserved_size: 4096, ..InitOptions::default() }).unwrap();
    assert_eq!(std::fs::metadata(st.join("db/reserved")).unwrap().len(), 4096);
    assert_eq!(mode(&st.join("db/reserved")), 0o600);
}

#[test]
fn schema_file_values() {
    let t = tempfile::tempdir().unwrap();
    drop(fresh(t.path()));
    let dirs = StateDirs::under(t.path());
    let schema = t.path().join("var-guix/db/schema");
    let init_err = |s: &str| {
        std::fs::write(&schema, s).unwrap();
        dirs.init(&InitOptions::default()).unwrap_err().to_string()
    };
    assert_eq!(init_err("8"), "current store schema is version 8, but I only support 7");
    assert_eq!(init_err("6"), "Your store database uses an implausibly old schema, version 6.");
    assert_eq!(init_err("7\n"), format!("`{}' is corrupt", schema.display()));
    assert_eq!(init_err("x"), format!("`{}' is corrupt", schema.display()));
}

#[test]
fn schema_text_is_the_cxx_one() {
    let t = tempfile::tempdir().unwrap();
    drop(fresh(t.path()));
    let conn = rusqlite::Connection::open(t.path().join("var-guix/db/db.sqlite")).unwrap();
    let mut stmt = conn.prepare("select type, name, tbl_name, sql from sqlite_master order by rowid").unwrap();
    let ours: String = stmt
        .query_map([], |r| {
            Ok(format!(
                "{} {} {}\n{}\n-- end --\n",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?.unwrap_or_default()
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // Captured from a database created by the C++ guix-daemon 1.5.0.
    assert_eq!(ours, include_str!("data/cxx-sqlite-master.txt"));
    let pragma =
        |p: &str| conn.query_row(&format!("pragma {p}"), [], |r| r.get::<_, rusqlite::types::Value>(0)).unwrap();
    assert_eq!(pragma("journal_mode"), rusqlite::types::Value::Text("wal".into()));
    assert_eq!(pragma("page_size"), rusqlite::types::Value::Integer(4096));
    assert_eq!(pragma("auto_vacuum"), rusqlite::types::Value::Integer(0));
    assert_eq!(pragma("user_version"), rusqlite::types::Value::Integer(0));
}

#[test]
fn round_trip_and_queries() {
    let t = tempfile::tempdir().unwrap();
    let mut s = fresh(t.path());
    let a = sp("a.txt");
    let b = sp("b.txt");
    let drv = sp("thing.drv");
    let out = sp("thing");
    let dev = sp("thing-dev");
    let outputs: BTreeMap<String, _> = [("out".to_owned(), out.clone()), ("dev".to_owned(), dev.clone())].into();
    s.writer
        .register_valid_paths(&[
            reg(&a, &[]),
            reg(&b, &[&a, &b]),
            Registration::derivation(info(&drv, &[&b]), outputs.clone()).unwrap(),
        ])
        .unwrap();
    let mut out_info = info(&out, &[&a]);
    out_info.deriver = Some(drv.clone());
    out_info.nar_size = None;
    s.writer.register_valid_paths(&[Registration::new(out_info.clone()).unwrap()]).unwrap();

    let r = reader(t.path());
    assert!(r.is_valid(&a).unwrap());
    assert!(!r.is_valid(&dev).unwrap());
    let bi = r.query_path_info(&b).unwrap();
    assert_eq!(bi, info(&b, &[&a, &b]));
    assert_eq!(r.query_path_info(&out).unwrap(), out_info);
    assert_eq!(r.query_references(&drv).unwrap(), [b.clone()].into());
    assert_eq!(r.query_referrers(&a).unwrap(), [b.clone(), out.clone()].into());
    assert_eq!(r.query_referrers(&dev).unwrap(), BTreeSet::new());
    assert_eq!(r.query_deriver(&out).unwrap(), Some(drv.clone()));
    assert_eq!(r.query_deriver(&a).unwrap(), None);
    assert_eq!(r.query_valid_derivers(&out).unwrap(), [drv.clone()].into());
    assert_eq!(r.query_valid_derivers(&dev).unwrap(), [drv.clone()].into());
    assert_eq!(r.query_derivation_output_map(&drv).unwrap(), outputs);
    assert_eq!(r.query_derivation_outputs(&drv).unwrap(), [out.clone(), dev.clone()].into());
    assert_eq!(r.query_derivation_output_names(&drv).unwrap(), ["dev".to_owned(), "out".to_owned()].into());
    assert_eq!(r.query_all_valid_paths().unwrap(), [a.clone(), b.clone(), drv.clone(), out.clone()].into());
    assert_eq!(r.query_valid_paths([&a, &dev, &out]).unwrap(), [a.clone(), out.clone()].into());

    // Errors with the C++ wording.
    let e = r.query_path_info(&dev).unwrap_err();
    assert_eq!(e.to_string(), format!("path `/gnu/store/{dev}' is not valid"));
    assert_eq!(r.query_derivation_outputs(&sp("nope.drv")).unwrap_err().to_string(), "path `%1%' is not valid");

    // Stored columns as the C++ daemon writes them.
    let conn = rusqlite::Connection::open(t.path().join("var-guix/db/db.sqlite")).unwrap();
    let (hash, deriver, size): (String, Option<String>, Option<i64>) = conn
        .query_row("select hash, deriver, narSize from ValidPaths where path = ?", [format!("/gnu/store/{out}")], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(hash, format!("sha256:{}", HashAlgo::Sha256.digest(b"thing").to_base16()));
    assert_eq!(deriver, Some(format!("/gnu/store/{drv}")));
    assert_eq!(size, None);
}

#[test]
fn re_registration_is_idempotent() {
    let t = tempfile::tempdir().unwrap();
    let mut s = fresh(t.path());
    let a = sp("a");
    let b = sp("b");
    let batch = [reg(&a, &[]), reg(&b, &[&a])];
    s.writer.register_valid_paths(&batch).unwrap();
    let before = s.writer.query_path_info(&b).unwrap();
    s.writer.register_valid_paths(&batch).unwrap();
    s.writer.register_valid_paths(&batch[1..]).unwrap();
    assert_eq!(s.writer.query_path_info(&b).unwrap(), before);
    assert_eq!(s.writer.query_all_valid_paths().unwrap().len(), 2);
    // Like C++: a new hash/size of an already valid path is taken, the time is kept.
    let mut changed = info(&a, &[]);
    changed.nar_hash = HashAlgo::Sha256.digest(b"other");
    changed.nar_size = Some(7);
    changed.registration_time = 5;
    s.writer.register_valid_paths(&[Registration::new(changed.clone()).unwrap()]).unwrap();
    let got = s.writer.query_path_info(&a).unwrap();
    assert_eq!((got.nar_hash, got.nar_size, got.registration_time), (changed.nar_hash, Some(7), 1_700_000_000));
}

/// A fresh store whose writer advances an epoch of its own.
fn fresh_with_epoch(root: &std::path::Path) -> (common::Store, std::sync::Arc<Epoch>) {
    let mut s = fresh(root);
    let epoch = std::sync::Arc::new(Epoch::open(&root.join("epoch")).unwrap());
    s.writer.set_epoch(epoch.clone());
    (s, epoch)
}

#[test]
fn the_epoch_moves_on_changes_not_on_additions() {
    let t = tempfile::tempdir().unwrap();
    let (mut s, epoch) = fresh_with_epoch(t.path());
    // A new writer advances it once: a predecessor may have died between commit and advance.
    assert_eq!(epoch.current(), 1);
    let a = sp("a");
    let b = sp("b");
    s.writer.register_valid_paths(&[reg(&a, &[])]).unwrap();
    s.writer.register_valid_paths(&[reg(&b, &[&a])]).unwrap();
    assert_eq!(epoch.current(), 1, "adding new paths changes nothing a reader kept");
    // A failed batch changes nothing either.
    assert!(s.writer.register_valid_paths(&[reg(&sp("c"), &[&sp("missing")])]).is_err());
    assert_eq!(epoch.current(), 1);
    // Re-registering a valid path updates its row.
    s.writer.register_valid_paths(&[reg(&a, &[])]).unwrap();
    assert_eq!(epoch.current(), 2);
    s.writer.invalidate_path(&b).unwrap();
    assert_eq!(epoch.current(), 3);
}

#[test]
fn one_transaction_commits_all_or_nothing_and_then_moves_the_epoch() {
    let t = tempfile::tempdir().unwrap();
    let (mut s, epoch) = fresh_with_epoch(t.path());
    let (a, b, c) = (sp("a"), sp("b"), sp("c"));
    s.writer.register_valid_paths(&[reg(&a, &[]), reg(&b, &[&a])]).unwrap();
    let other = reader(t.path());
    // A failure after a write undoes the write: `a`'s referrer is gone only inside.
    let e = s
        .writer
        .in_one_transaction(|w| {
            w.invalidate_path(&b)?;
            assert!(!w.is_valid(&b)?, "reads see the transaction's own writes");
            assert!(other.is_valid(&b)?, "other connections do not, before the commit");
            assert_eq!(epoch.current(), 1, "the epoch moves after the commit, not before");
            w.register_valid_paths(&[reg(&c, &[&sp("missing")])])
        })
        .unwrap_err();
    assert!(matches!(e, Error::NotValidId(_)), "{e:?}");
    assert!(s.writer.is_valid(&b).unwrap() && other.is_valid(&b).unwrap());
    assert_eq!(epoch.current(), 1, "nothing changed");
    // Success: both writes land at once, and the epoch moves once.
    s.writer
        .in_one_transaction(|w| {
            w.invalidate_path(&b)?;
            w.invalidate_path(&a)?;
            w.register_valid_paths(&[reg(&c, &[])])
        })
        .unwrap();
    assert!(!other.is_valid(&a).unwrap() && !other.is_valid(&b).unwrap() && other.is_valid(&c).unwrap());
    assert_eq!(epoch.current(), 2);
    // Afterwards writes commit on their own again.
    s.writer.invalidate_path(&c).unwrap();
    assert!(!other.is_valid(&c).unwrap());
    assert_eq!(epoch.current(), 3);
}

#[test]
fn invalidating_by_id_refuses_a_path_still_referred_to() {
    let t = tempfile::tempdir().unwrap();
    let mut s = fresh(t.path());
    let (a, b, c) = (sp("a"), sp("b"), sp("c"));
    s.writer.register_valid_paths(&[reg(&a, &[]), reg(&b, &[&a]), reg(&c, &[&c])]).unwrap();
    let id = |s: &guix_store_db::DbWriter, p| s.path_id(p).unwrap().expect("valid");
    let (ia, ib, ic) = (id(&s.writer, &a), id(&s.writer, &b), id(&s.writer, &c));
    // `b` refers to `a`: the foreign key refuses, and nothing of the batch goes.
    let e = s.writer.invalidate_ids(&[ic, ia]).unwrap_err();
    assert!(e.to_string().contains("FOREIGN KEY constraint failed"), "{e}");
    assert!(s.writer.is_valid(&a).unwrap() && s.writer.is_valid(&c).unwrap());
    assert_eq!(s.writer.query_referrers(&a).unwrap(), [b.clone()].into());
    // With its referrer in the batch it goes; a self-reference is no obstacle.
    s.writer.invalidate_ids(&[ib, ia, ic]).unwrap();
    assert!(s.writer.query_all_valid_paths().unwrap().is_empty());
    assert_eq!(s.writer.path_id(&a).unwrap(), None);
}

#[test]
fn a_bad_batch_registers_nothing() {
    let t = tempfile::tempdir().unwrap();
    let mut s = fresh(t.path());
    let a = sp("a");
    let b = sp("b");
    let missing = sp("missing");
    let e = s.writer.register_valid_paths(&[reg(&a, &[]), reg(&b, &[&a, &missing])]).unwrap_err();
    assert!(matches!(&e, Error::NotValidId(p) if p.ends_with("-missing")), "{e:?}");
    assert_eq!(e.to_string(), "path `%1%' is not valid");
    assert!(s.writer.query_all_valid_paths().unwrap().is_empty());
    // A cycle within a batch (not a self-reference) is refused, nothing stays.
    let e = s.writer.register_valid_paths(&[reg(&a, &[&b]), reg(&b, &[&a])]).unwrap_err();
    assert!(matches!(e, Error::Cycle(_)), "{e:?}");
    assert!(s.writer.query_all_valid_paths().unwrap().is_empty());
    // Registration checks.
    assert!(Registration::new(info(&sp("x.drv"), &[])).is_err());
    assert!(Registration::derivation(info(&a, &[]), BTreeMap::new()).is_err());
    let mut sha1 = info(&a, &[]);
    sha1.nar_hash = HashAlgo::Sha1.digest(b"");
    assert!(Registration::new(sha1).is_err());
}

#[test]
fn referrers_are_sorted() {
    let t = tempfile::tempdir().unwrap();
    let mut s = fresh(t.path());
    let target = sp("target");
    let mut batch = vec![reg(&target, &[])];
    let referrers: Vec<_> = (0..50).map(|i| sp(&format!("r{i}"))).collect();
    // Registered in reverse order so that row ids disagree with path order.
    for r in referrers.iter().rev() {
        batch.push(reg(r, &[&target]));
    }
    s.writer.register_valid_paths(&batch).unwrap();
    let got: Vec<_> = s.writer.query_referrers(&target).unwrap().into_iter().collect();
    let mut want = referrers.clone();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn hash_part_lookup() {
    let t = tempfile::tempdir().unwrap();
    let mut s = fresh(t.path());
    let a = sp("a");
    let b = sp("b");
    s.writer.register_valid_paths(&[reg(&a, &[]), reg(&b, &[])]).unwrap();
    let r = reader(t.path());
    assert_eq!(r.query_path_from_hash_part(a.hash_part().as_str()).unwrap(), Some(a.clone()));
    assert_eq!(r.query_path_from_hash_part(b.hash_part().as_str()).unwrap(), Some(b.clone()));
    assert_eq!(r.query_path_from_hash_part(&"0".repeat(32)).unwrap(), None);
    assert_eq!(r.query_path_from_hash_part(&"z".repeat(32)).unwrap(), None);
    assert_eq!(r.query_path_from_hash_part("abc").unwrap_err().to_string(), "invalid hash part");
}

#[test]
fn invalidate_and_failed_paths() {
    let t = tempfile::tempdir().unwrap();
    let mut s = fresh(t.path());
    let a = sp("a");
    let b = sp("b");
    let drv = sp("d.drv");
    let out = sp("d");
    s.writer
        .register_valid_paths(&[
            reg(&a, &[&a]),
            reg(&b, &[&a]),
            Registration::derivation(info(&drv, &[]), [("out".to_owned(), out.clone())].into()).unwrap(),
        ])
        .unwrap();
    let e = s.writer.invalidate_path(&a).unwrap_err();
    assert_eq!(e.to_string(), format!("cannot delete path `/gnu/store/{a}' because it is in use by `/gnu/store/{b}'"));
    s.writer.invalidate_path(&b).unwrap();
    s.writer.invalidate_path(&a).unwrap(); // only a self-reference left
    s.writer.invalidate_path(&a).unwrap(); // not valid: nothing to do
    assert_eq!(s.writer.query_all_valid_paths().unwrap(), [drv.clone()].into());

    s.writer.register_failed_path(&out).unwrap();
    s.writer.register_failed_path(&a).unwrap();
    assert!(s.writer.has_path_failed(&out).unwrap());
    assert_eq!(s.writer.query_failed_paths().unwrap(), [a.clone(), out.clone()].into());
    // Clearing a derivation clears its outputs.
    s.writer.clear_failed_paths(&[drv.clone()].into()).unwrap();
    assert_eq!(s.writer.query_failed_paths().unwrap(), [a.clone()].into());
    s.writer.register_failed_path(&b).unwrap();
    s.writer.clear_all_failed_paths().unwrap();
    assert!(s.writer.query_failed_paths().unwrap().is_empty());

    s.writer.invalidate_path(&drv).unwrap();
    let conn = rusqlite::Connection::open(t.path().join("var-guix/db/db.sqlite")).unwrap();
    let n: i64 = conn.query_row("select count(*) from DerivationOutputs", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0);
}

#[test]
fn reader_does_not_wait_for_a_long_write_transaction() {
    let t = tempfile::tempdir().unwrap();
    let mut s = fresh(t.path());
    let a = sp("a");
    s.writer.register_valid_paths(&[reg(&a, &[])]).unwrap();
    // Another connection holds the write lock with uncommitted rows for a while.
    let db = t.path().join("var-guix/db/db.sqlite");
    let (tx_started, started) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let mut c = rusqlite::Connection::open(&db).unwrap();
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        tx.execute("insert into ValidPaths (path, hash, registrationTime) values ('/gnu/store/x', 'sha256:00', 1)", [])
            .unwrap();
        tx_started.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        drop(tx);
    });
    started.recv().unwrap();
    let r = reader(t.path());
    let t0 = Instant::now();
    assert!(r.is_valid(&a).unwrap());
    assert_eq!(r.query_all_valid_paths().unwrap(), [a.clone()].into());
    assert!(t0.elapsed() < Duration::from_millis(500), "reader waited {:?}", t0.elapsed());
    holder.join().unwrap();
}

#[test]
fn reader_opens_after_the_writer_closed() {
    let t = tempfile::tempdir().unwrap();
    let s = fresh(t.path());
    drop(s);
    let r = reader(t.path());
    assert!(r.query_all_valid_paths().unwrap().is_empty());
    assert!(matches!(DbReader::open(&t.path().join("nothing"), StoreDir::default()), Err(Error::NoDatabase(_))));
}

#[test]
fn writer_refuses_a_newer_schema() {
    let t = tempfile::tempdir().unwrap();
    let s = fresh(t.path());
    std::fs::write(t.path().join("var-guix/db/schema"), "9").unwrap();
    let e = DbWriter::open(s.dirs.db_dir(), StoreDir::default(), &s.lock, &DbOptions::default()).err().unwrap();
    assert_eq!(e.to_string(), "current store schema is version 9, but I only support 7");
}

//! Compatibility with the REAL C++ guix-daemon 1.5.0, through the rig (`run` interface of
//! guix-ref): a store written by the C++ daemon is read with our reader, and a store written by
//! our writer is accepted by the C++ daemon (`guix gc --verify=contents`, `--references`).
//!
//! The rig is `$GUIX_RIG`, else `<workspace>/scripts/rig`. These tests need root and FAIL (they
//! do not skip) when the rig is missing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use guix_formats::{HashAlgo, StoreDir, StorePath};
use guix_store_db::{DbOptions, DbReader, DbWriter, InitOptions, Registration, StateDirs, ValidPathInfo};

/// The rig's `run` command: `$GUIX_RIG` (a guix-ref style `run` script) if set, else the
/// project's `scripts/rig run`.
fn rig_run() -> Command {
    if let Some(p) = std::env::var_os("GUIX_RIG") {
        return Command::new(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rig");
    assert!(p.is_file(), "the test rig `{}' is missing; these tests need it and root", p.display());
    let mut c = Command::new(p);
    c.arg("run");
    c
}

/// Runs `rig -q --keep DIR [--bind B] -- ARGS` and returns stdout; panics on failure.
fn run_rig(keep: &Path, bind: Option<(&Path, &str)>, args: &[&str]) -> String {
    let mut cmd = rig_run();
    cmd.arg("-q").arg("--keep").arg(keep);
    if let Some((host, inner)) = bind {
        cmd.arg("--bind").arg(format!("{}:{inner}", host.display()));
    }
    let out = cmd.arg("--").args(args).output().expect("running the rig");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rig {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn integrity_ok(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let res: String = conn.query_row("pragma integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(res, "ok");
    let fk: Option<String> = conn.query_row("pragma foreign_key_check", [], |r| r.get(0)).ok();
    assert_eq!(fk, None);
}

#[test]
fn our_reader_reads_a_store_written_by_the_cxx_daemon() {
    let t = tempfile::tempdir().unwrap();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rig");
    let out = run_rig(&t.path().join("k"), Some((&scripts, "/v")), &["guix", "repl", "/v/cxx-store.scm"]);
    let sd = StoreDir::default();
    let mut paths = BTreeMap::new();
    let mut hashes = BTreeMap::new();
    let mut sizes = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["hash", p, h] => drop(hashes.insert(sd.parse(p).unwrap(), h.to_string())),
            ["size", p, n] => drop(sizes.insert(sd.parse(p).unwrap(), n.parse::<u64>().unwrap())),
            [k, p] => drop(paths.insert(k.to_string(), sd.parse(p).unwrap())),
            _ => {}
        }
    }
    let p = |k: &str| paths.get(k).unwrap_or_else(|| panic!("{k} missing in {out}")).clone();
    let (a, b, c, drv, o, dev) = (p("a"), p("b"), p("c"), p("drv"), p("out"), p("dev"));

    let db_dir = t.path().join("k/var-guix/db");
    let r = DbReader::open(&db_dir, sd.clone()).unwrap();
    for x in [&a, &b, &c, &drv] {
        assert!(r.is_valid(x).unwrap());
        let info = r.query_path_info(x).unwrap();
        assert_eq!(&info.nar_hash.to_base16(), &hashes[x]);
        assert_eq!(info.nar_size, Some(sizes[x]));
        assert_eq!(info.deriver, None);
    }
    assert!(!r.is_valid(&o).unwrap());
    assert_eq!(r.query_references(&a).unwrap(), BTreeSet::new());
    assert_eq!(r.query_references(&c).unwrap(), [a.clone(), b.clone()].into());
    assert_eq!(r.query_references(&drv).unwrap(), [c.clone()].into());
    assert_eq!(r.query_referrers(&a).unwrap(), [b.clone(), c.clone()].into());
    assert_eq!(r.query_referrers(&c).unwrap(), [drv.clone()].into());
    assert_eq!(r.query_valid_derivers(&o).unwrap(), [drv.clone()].into());
    assert_eq!(r.query_valid_derivers(&dev).unwrap(), [drv.clone()].into());
    assert_eq!(
        r.query_derivation_output_map(&drv).unwrap(),
        [("dev".to_owned(), dev.clone()), ("out".to_owned(), o.clone())].into()
    );
    assert_eq!(r.query_path_from_hash_part(b.hash_part().as_str()).unwrap(), Some(b.clone()));
    assert_eq!(r.query_all_valid_paths().unwrap(), [a.clone(), b.clone(), c.clone(), drv.clone()].into());
    assert!(r.query_failed_paths().unwrap().is_empty());
    drop(r);
    integrity_ok(&db_dir.join("db.sqlite"));

    // And our writer can open that database and add to it.
    let dirs = StateDirs::under(&t.path().join("k"));
    let lock = dirs.init(&InitOptions::default()).unwrap();
    let mut w = DbWriter::open(dirs.db_dir(), sd, &lock, &DbOptions::default()).unwrap();
    let extra = common::sp("extra");
    w.register_valid_paths(&[common::reg(&extra, &[&a])]).unwrap();
    assert_eq!(w.query_referrers(&a).unwrap(), [b, c, extra].into());
}

/// A NAR of a single regular file.
fn nar_of_file(contents: &[u8]) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
        out.resize(out.len() + (8 - b.len() % 8) % 8, 0);
    }
    let mut n = Vec::new();
    for x in [&b"nix-archive-1"[..], b"(", b"type", b"regular", b"contents", contents, b")"] {
        s(&mut n, x);
    }
    n
}

/// Writes a text file into the store as the C++ daemon does (0444, mtime 1) and returns its
/// registration.
fn add_text(store: &Path, name: &str, contents: &str, refs: &[&StorePath]) -> ValidPathInfo {
    let sd = StoreDir::default();
    let path = sd.make_text_path(name, contents.as_bytes(), refs.iter().copied()).unwrap();
    let file = store.join(path.to_string());
    let mut f = File::create(&file).unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    drop(f);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let nar = nar_of_file(contents.as_bytes());
    ValidPathInfo {
        path,
        deriver: None,
        nar_hash: HashAlgo::Sha256.digest(&nar),
        references: refs.iter().map(|r| (*r).clone()).collect(),
        registration_time: 0,
        nar_size: Some(nar.len() as u64),
    }
}

#[test]
fn the_cxx_daemon_accepts_a_store_written_by_us() {
    let t = tempfile::tempdir().unwrap();
    let keep = t.path().join("k");
    let dirs = StateDirs::under(&keep);
    let lock = dirs.init(&InitOptions::default()).unwrap();
    let mut w = DbWriter::open(dirs.db_dir(), StoreDir::default(), &lock, &DbOptions::default()).unwrap();
    let store = dirs.store_path().to_owned();
    let sd = StoreDir::default();
    let a = add_text(&store, "a.txt", "I am A\n", &[]);
    let b_text = format!("I refer to {}\n", sd.display(&a.path));
    let b = add_text(&store, "b.txt", &b_text, &[&a.path]);
    let c_text = format!("refs {} {}\n", sd.display(&a.path), sd.display(&b.path));
    let c = add_text(&store, "c.txt", &c_text, &[&a.path, &b.path]);
    w.register_valid_paths(&[Registration::new(a.clone()).unwrap(), Registration::new(b.clone()).unwrap()]).unwrap();
    w.register_valid_paths(&[Registration::new(c.clone()).unwrap()]).unwrap();
    drop(w);
    drop(lock);

    let cp = sd.display(&c.path);
    let ap = sd.display(&a.path);
    let script = format!(
        "guix gc --verify=contents && echo refs: && guix gc --references {cp} && echo referrers: && guix gc --referrers {ap}"
    );
    let out = run_rig(&keep, None, &["sh", "-c", &script]);
    let want = format!(
        "refs:\n{}\n{}\nreferrers:\n{}\n{}\n",
        sd.display(&a.path),
        sd.display(&b.path),
        sd.display(&b.path),
        sd.display(&c.path)
    );
    // guix gc prints each list in store order; compare as sorted blocks.
    let norm = |s: &str| {
        s.split(":\n")
            .map(|blk| {
                let mut l: Vec<&str> = blk.lines().collect();
                l.sort();
                l.join("\n")
            })
            .collect::<Vec<_>>()
            .join(":\n")
    };
    assert_eq!(norm(&out), norm(&want), "rig output:\n{out}");
    integrity_ok(&dirs.db_dir().join("db.sqlite"));
}

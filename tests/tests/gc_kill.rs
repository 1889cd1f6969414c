//! `kill -9` of the gc, and separately of store-db, in the middle of a collection that deletes
//! many dead paths (our daemon only: the C++ daemon has no components).
//!
//! The store: [`DEAD`] dead text items (`GUIX_TESTS_GC_KILL_PATHS` overrides it), in chains of
//! ten (each referring to the previous one: deletion must go referrers first), added over four
//! connections that are then closed; and [`ROOTED`] items rooted by symlinks in
//! `/var/guix/gcroots`, each referring to a leaf of its own. `guix gc` (the real client) runs
//! in the chroot; once [`KILL_AFTER`] store entries are gone, the component is killed with
//! SIGKILL and the test waits until the supervisor has started it again.
//!
//! Afterwards:
//! * the interrupted `guix gc` has succeeded (the kill does not reach the client; `timeout`
//!   ends it after [`GC_DEADLINE`]);
//! * the supervisor restarted the component (`ctl status`: new pid, one restart more);
//! * from the host, before anything could repair it: `PRAGMA integrity_check` is ok, no row is
//!   half-registered, every valid path has its files with the recorded NAR hash and size, and
//!   every rooted item and its leaf are valid with their contents; then `guix gc --verify`
//!   exits 0 and reports nothing disappeared;
//! * the next `guix gc` succeeds, and then `guix gc --list-dead` is empty (nothing else runs,
//!   so nothing can legitimately be new) and every store entry is a valid path (no half-deleted
//!   item left, no trash).
//!
//! The test cannot pass vacuously: if the collection ends before [`KILL_AFTER`] entries are
//! gone or before the kill, it fails and says to raise `GUIX_TESTS_GC_KILL_PATHS`.
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode
//! (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Output;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use guix_client::DaemonClient;
use guix_formats::store_path::StorePath;
use guix_tests::ours::{ctl_status, kill_and_wait};
use guix_tests::store_check::{check_store, integrity_check};
use guix_tests::{start_ours, Rig, Session};

/// Dead items unless `GUIX_TESTS_GC_KILL_PATHS` says otherwise.
const DEAD: usize = 20_000;
const ROOTED: usize = 200;
/// Store entries deleted before the kill.
const KILL_AFTER: usize = 500;
/// How long the interrupted and the next `guix gc` may take.
const GC_DEADLINE: Duration = Duration::from_secs(600);
const WRITERS: usize = 4;

fn dead_count() -> usize {
    std::env::var("GUIX_TESTS_GC_KILL_PATHS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEAD)
}

/// Adds the dead chains and the rooted items; returns every rooted item and leaf with its
/// contents.
fn populate(s: &Session) -> BTreeMap<StorePath, Vec<u8>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let dead = dead_count();
    let socket = s.socket_path().to_owned();
    rt.block_on(async {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let mut c = DaemonClient::connect(&socket).await.unwrap_or_else(|e| panic!("{e}"));
                    let mut prev: Option<StorePath> = None;
                    for n in (w..dead).step_by(WRITERS) {
                        let refs: BTreeSet<StorePath> =
                            if n % 10 == 0 { BTreeSet::new() } else { prev.iter().cloned().collect() };
                        let name = format!("dead-{n}");
                        let p = c
                            .add_text_to_store(&name, format!("dead item {n}\n").as_bytes(), &refs)
                            .await
                            .unwrap_or_else(|e| panic!("adding {name}: {e}"));
                        prev = Some(p);
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap_or_else(|e| panic!("writer: {e}"));
        }
        let mut c = DaemonClient::connect(&socket).await.unwrap_or_else(|e| panic!("{e}"));
        let roots = s.var_guix_on_host().join("gcroots");
        let mut kept = BTreeMap::new();
        for n in 0..ROOTED {
            let leaf_text = format!("leaf {n}\n").into_bytes();
            let leaf = c.add_text_to_store(&format!("leaf-{n}"), &leaf_text, &BTreeSet::new()).await;
            let leaf = leaf.unwrap_or_else(|e| panic!("{e}"));
            let text = format!("rooted {n}, refers to {leaf}\n").into_bytes();
            let refs = BTreeSet::from([leaf.clone()]);
            let root =
                c.add_text_to_store(&format!("rooted-{n}"), &text, &refs).await.unwrap_or_else(|e| panic!("{e}"));
            std::os::unix::fs::symlink(format!("/gnu/store/{root}"), roots.join(format!("kill-test-{n}")))
                .unwrap_or_else(|e| panic!("{e}"));
            kept.insert(leaf, leaf_text);
            kept.insert(root, text);
        }
        kept
    })
}

fn store_entries(s: &Session) -> usize {
    fs::read_dir(s.store_dir_on_host()).map(|rd| rd.count()).unwrap_or(0)
}

/// `guix gc ARGS` in the chroot, ended by `timeout` after [`GC_DEADLINE`].
fn guix_gc(s: &Session, args: &[&str]) -> Output {
    let secs = GC_DEADLINE.as_secs().to_string();
    let mut cmd = vec!["timeout", secs.as_str(), "guix", "gc"];
    cmd.extend(args);
    s.exec(&cmd).unwrap_or_else(|e| panic!("{e}"))
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The whole test for one component (see the module documentation).
fn kill_during_deletion(component: &str) {
    let rig = Rig::discover().unwrap_or_else(|e| panic!("{e}"));
    let s = start_ours(&rig).unwrap_or_else(|e| panic!("{e}"));
    let kept = populate(&s);
    let before = store_entries(&s);
    let restarts_before = ctl_status(&s).get(component).map_or(0, |c| c.1);

    let (at_kill, interrupted) = std::thread::scope(|scope| {
        let (tx, gc) = mpsc::channel();
        let s = &s;
        scope.spawn(move || {
            let _ = tx.send(guix_gc(s, &[]));
        });
        let start = Instant::now();
        loop {
            if let Ok(out) = gc.try_recv() {
                assert!(
                    out.status.success(),
                    "guix gc failed before the kill:\n{}\n--- daemon.log ---\n{}",
                    text(&out),
                    s.daemon_log()
                );
                panic!(
                    "the collection ended before {KILL_AFTER} of {before} store entries were deleted; raise \
                     GUIX_TESTS_GC_KILL_PATHS:\n{}\n--- daemon.log ---\n{}",
                    text(&out),
                    s.daemon_log()
                );
            }
            if before - store_entries(s).min(before) >= KILL_AFTER {
                break;
            }
            assert!(start.elapsed() < GC_DEADLINE, "the collection deleted too little in {GC_DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let at_kill = store_entries(s);
        kill_and_wait(s, component);
        (at_kill, gc.recv().unwrap_or_else(|e| panic!("guix gc: {e}")))
    });
    let after = store_entries(&s);
    eprintln!(
        "{component} killed with {} of {before} entries deleted; the interrupted guix gc ended with {} entries left: {}",
        before - at_kill,
        after,
        text(&interrupted).lines().filter(|l| !l.contains("deleting '")).collect::<Vec<_>>().join("\n")
    );
    // Neither kill reaches the client: socket-front sends the job again to a new gc, and a gc
    // whose store-db restarted begins a new collection.
    assert!(interrupted.status.success(), "the interrupted guix gc failed: {}", text(&interrupted));
    let restarts = ctl_status(&s).get(component).map_or(0, |c| c.1);
    assert!(restarts > restarts_before, "{component}: restarts {restarts_before} → {restarts}");

    // The store as the kill left it, from the host, before anything repairs it.
    let db = s.var_guix_on_host().join("db").join("db.sqlite");
    integrity_check(&db).unwrap_or_else(|e| panic!("{e}"));
    let valid = check_store(&db, "/gnu/store", &s.store_dir_on_host()).unwrap_or_else(|e| panic!("store check:\n{e}"));
    for (p, contents) in &kept {
        assert!(valid.contains_key(&format!("/gnu/store/{p}")), "rooted item or its leaf {p} is not valid");
        let got = fs::read(s.store_dir_on_host().join(p.to_string())).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(&got, contents, "{p}: contents");
    }
    let verify = s.exec_guix(&["gc", "--verify"]).unwrap_or_else(|e| panic!("{e}"));
    let verify_text = text(&verify);
    assert!(verify.status.success() && !verify_text.contains("disappeared"), "guix gc --verify:\n{verify_text}");

    // The next collection finishes the work.
    let next = guix_gc(&s, &[]);
    assert!(next.status.success(), "the next guix gc: {}\n--- daemon.log ---\n{}", text(&next), s.daemon_log());
    let dead = s.exec_guix(&["gc", "--list-dead"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(dead.status.success() && dead.stdout.is_empty(), "dead paths left:\n{}", text(&dead));
    let valid = check_store(&db, "/gnu/store", &s.store_dir_on_host()).unwrap_or_else(|e| panic!("store check:\n{e}"));
    let stray: Vec<String> = fs::read_dir(s.store_dir_on_host())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !valid.contains_key(&format!("/gnu/store/{n}")))
        .collect();
    assert_eq!(stray, Vec::<String>::new(), "store entries that are not valid paths after the next guix gc");
    assert_eq!(valid.len(), kept.len(), "valid paths after the next guix gc: {:?}", valid.keys().collect::<Vec<_>>());
    s.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn gc_killed_in_the_middle_of_a_deletion() {
    kill_during_deletion("gc");
}

#[test]
fn store_db_killed_in_the_middle_of_a_deletion() {
    kill_during_deletion("store-db");
}

//! Faults: 16 host-side clients add paths in a loop against our daemon while store-db and then
//! socket-front are killed with SIGKILL, each several times.
//!
//! Every operation's outcome is recorded. Afterwards:
//! * the supervisor restarted both components (`ctl status` restart counts);
//! * every operation reported successful left a valid path with complete content (the NAR of
//!   the files hashes to what the client sent and to the database's narHash; text items have
//!   the references asked for);
//! * every failed operation got an error with a message (a dropped connection is one);
//! * every valid path in the database has its files, nothing is half-registered, and
//!   `PRAGMA integrity_check` is ok (the database is opened read-only from the host while the
//!   daemon runs);
//! * the scratch directory is empty again once the clients are gone.
//!
//! Needs root, `scripts/rig setup`, and the workspace binaries built in this test's target
//! directory (`cargo build --release --workspace`, then `cargo test --release`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guix_client::{ClientError, DaemonClient};
use guix_formats::hash::HashAlgo;
use guix_formats::nar;
use guix_formats::store_path::StorePath;
use guix_tests::ours::{ctl_status, kill_and_wait};
use guix_tests::store_check::{check_store, integrity_check};
use guix_tests::{start_ours, Rig};

const CLIENTS: usize = 16;
const KILLS_EACH: usize = 3;
/// An operation that takes longer than this is a hang, reported as such.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

/// What a client asked for.
#[derive(Debug, Clone)]
enum Op {
    Text { name: String, contents: Vec<u8>, refs: BTreeSet<StorePath> },
    Tree { name: String, source: PathBuf },
}

#[derive(Debug)]
enum Outcome {
    Ok(StorePath),
    /// The daemon reported an error (connection kept).
    DaemonError(String),
    /// The connection failed (dropped by a socket-front kill, or a protocol error).
    ConnectionError(String),
    Hang,
}

#[derive(Debug)]
struct Record {
    client: usize,
    op: Op,
    outcome: Outcome,
    /// Whether socket-front had been killed at least once when the operation ended.
    after_front_kill: bool,
    took: Duration,
}

async fn connect(socket: &Path) -> DaemonClient {
    let start = Instant::now();
    loop {
        match DaemonClient::connect(socket).await {
            Ok(c) => return c,
            Err(e) if start.elapsed() > Duration::from_secs(60) => panic!("cannot reconnect: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A small tree unique to (client, n): a file, an executable, a symlink, a subdirectory.
/// Every seventh item is instead one of three trees shared by all clients (same path added
/// concurrently).
fn make_tree(root: &Path, client: usize, n: u64) -> (String, PathBuf) {
    let (name, tag) = if n % 7 == 3 {
        let k = (n / 7) % 3;
        (format!("shared-tree-{k}"), format!("shared {k}"))
    } else {
        (format!("tree-{client}-{n}"), format!("client {client} item {n}"))
    };
    let dir = root.join(format!("{client}-{n}"));
    let _ = fs::remove_dir_all(&dir);
    let made = fs::create_dir_all(dir.join("sub"))
        .and_then(|()| fs::write(dir.join("file"), format!("{tag}\n")))
        .and_then(|()| fs::write(dir.join("sub/exe"), format!("#!/bin/sh\necho {tag}\n")))
        .and_then(|()| fs::set_permissions(dir.join("sub/exe"), fs::Permissions::from_mode(0o755)))
        .and_then(|()| fs::write(dir.join("sub/big"), tag.repeat(2000)))
        .and_then(|()| std::os::unix::fs::symlink("../file", dir.join("sub/link")));
    made.unwrap_or_else(|e| panic!("making {}: {e}", dir.display()));
    (name, dir)
}

async fn client_loop(
    client: usize,
    socket: PathBuf,
    trees: PathBuf,
    stop: Arc<AtomicBool>,
    front_killed: Arc<AtomicBool>,
) -> Vec<Record> {
    let mut records = Vec::new();
    let mut conn = connect(&socket).await;
    let mut last_text: Option<StorePath> = None;
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let op = if n % 2 == 1 {
            Op::Text {
                name: format!("text-{client}-{n}"),
                contents: format!("client {client} text {n}\n").into_bytes(),
                refs: last_text.iter().cloned().collect(),
            }
        } else {
            let (name, source) = make_tree(&trees, client, n);
            Op::Tree { name, source }
        };
        let call = async {
            match &op {
                Op::Text { name, contents, refs } => conn.add_text_to_store(name, contents, refs).await,
                Op::Tree { name, source } => conn.add_to_store(name, source, true, HashAlgo::Sha256).await,
            }
        };
        let started = Instant::now();
        let outcome = match tokio::time::timeout(OP_TIMEOUT, call).await {
            Ok(Ok(p)) => {
                if matches!(op, Op::Text { .. }) {
                    last_text = Some(p.clone());
                }
                Outcome::Ok(p)
            }
            Ok(Err(e @ ClientError::Daemon { .. })) => Outcome::DaemonError(e.to_string()),
            Ok(Err(e)) => Outcome::ConnectionError(e.to_string()),
            Err(_) => Outcome::Hang,
        };
        let reconnect = !matches!(outcome, Outcome::Ok(_) | Outcome::DaemonError(_));
        let after_front_kill = front_killed.load(Ordering::SeqCst);
        records.push(Record { client, op, outcome, after_front_kill, took: started.elapsed() });
        if reconnect {
            conn = connect(&socket).await;
        }
    }
    records
}

#[test]
fn sixteen_clients_survive_component_kills() {
    let rig = Rig::discover().unwrap_or_else(|e| panic!("{e}"));
    let s = start_ours(&rig).unwrap_or_else(|e| panic!("{e}"));
    let trees = s.state_dir().join("faults-trees");
    fs::create_dir_all(&trees).unwrap_or_else(|e| panic!("{e}"));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let front_killed = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            rt.spawn(client_loop(c, s.socket_path().to_owned(), trees.clone(), stop.clone(), front_killed.clone()))
        })
        .collect();

    let initial = ctl_status(&s);
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..KILLS_EACH {
        kill_and_wait(&s, "store-db");
        std::thread::sleep(Duration::from_millis(700));
    }
    front_killed.store(true, Ordering::SeqCst);
    for _ in 0..KILLS_EACH {
        kill_and_wait(&s, "socket-front");
        std::thread::sleep(Duration::from_millis(700));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let records: Vec<Record> = rt.block_on(async {
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_else(|e| panic!("client task: {e}")));
        }
        all
    });

    let checks = Instant::now();
    // The supervisor restarted both, each once per kill.
    let after = ctl_status(&s);
    for comp in ["store-db", "socket-front"] {
        let before = initial.get(comp).map_or(0, |c| c.1);
        let now = after.get(comp).map_or(0, |c| c.1);
        assert!(now >= before + KILLS_EACH as u64, "{comp}: restarts {before} → {now}: {after:?}");
    }

    // Tally, and every failure has a message.
    let mut ok = 0;
    let mut daemon_errors = BTreeMap::<String, usize>::new();
    let mut conn_errors = BTreeMap::<String, usize>::new();
    for r in &records {
        match &r.outcome {
            Outcome::Ok(_) => ok += 1,
            Outcome::DaemonError(m) => *daemon_errors.entry(m.clone()).or_default() += 1,
            Outcome::ConnectionError(m) => *conn_errors.entry(m.clone()).or_default() += 1,
            Outcome::Hang => panic!("client {}: {:?} hung for {OP_TIMEOUT:?}", r.client, r.op),
        }
        if let Outcome::DaemonError(m) | Outcome::ConnectionError(m) = &r.outcome {
            assert!(!m.trim().is_empty(), "client {}: {:?} failed without a message", r.client, r.op);
        }
        // Before socket-front is first killed, only store-db dies: socket-front retries its
        // requests, so clients must not notice.
        if let Outcome::ConnectionError(m) = &r.outcome {
            assert!(
                r.after_front_kill,
                "client {}: {:?} lost its connection while only store-db was killed: {m}",
                r.client, r.op
            );
        }
    }
    let slowest = records.iter().map(|r| r.took).max().unwrap_or_default();
    eprintln!(
        "{} operations: {ok} succeeded; daemon errors {daemon_errors:?}; connection errors {conn_errors:?}; \
         slowest {slowest:?}",
        records.len()
    );
    assert!(ok > CLIENTS * 10, "too few successful operations ({ok}) for the test to mean anything");
    // store-db kills are invisible to clients (socket-front retries its requests): a daemon
    // error means an operation was refused although the daemon was only restarting a part.
    assert!(daemon_errors.is_empty(), "daemon errors: {daemon_errors:?}\n--- daemon.log ---\n{}", s.daemon_log());

    // The database and the store, from the host.
    let db = s.var_guix_on_host().join("db").join("db.sqlite");
    integrity_check(&db).unwrap_or_else(|e| panic!("{e}"));
    let valid = check_store(&db, "/gnu/store", &s.store_dir_on_host()).unwrap_or_else(|e| panic!("store check:\n{e}"));

    // Every successful operation: valid, content as sent, references as asked.
    let mut check = rt.block_on(connect(s.socket_path()));
    for r in &records {
        let Outcome::Ok(path) = &r.outcome else { continue };
        let shown = format!("/gnu/store/{path}");
        let rec =
            valid.get(&shown).unwrap_or_else(|| panic!("client {}: {shown} reported added but is not valid", r.client));
        let on_host = s.store_dir_on_host().join(path.to_string());
        match &r.op {
            Op::Text { contents, refs, .. } => {
                let got = fs::read(&on_host).unwrap_or_else(|e| panic!("{shown}: {e}"));
                assert_eq!(&got, contents, "{shown}: contents");
                let info = rt
                    .block_on(check.query_path_info(path))
                    .unwrap_or_else(|e| panic!("{shown}: {e}"))
                    .unwrap_or_else(|| panic!("{shown}: no path info"));
                assert_eq!(&info.references, refs, "{shown}: references");
            }
            Op::Tree { source, .. } => {
                let sent = nar::dump_path(source, &mut std::io::sink()).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(rec.hash, format!("sha256:{}", sent.nar_hash.to_base16()), "{shown}: NAR hash");
            }
        }
    }
    drop(check);

    // Scratch space: empty again once the clients are gone (leftovers of killed writers are
    // swept by store-db).
    let start = Instant::now();
    loop {
        let left = s.scratch_leftovers();
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "scratch directory not emptied: {left:?}\n--- daemon.log ---\n{}",
            s.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Items renamed into the store whose commit a kill prevented are invalid, not registered
    // (the next add of that path or the GC removes them); report how many there are.
    let unregistered: Vec<String> = fs::read_dir(s.store_dir_on_host())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && !n.ends_with(".lock"))
                .filter(|n| !valid.contains_key(&format!("/gnu/store/{n}")))
                .collect()
        })
        .unwrap_or_default();
    eprintln!("store entries that are not valid paths: {unregistered:?}");
    let swept = s.daemon_log().lines().filter(|l| l.contains("removed scratch leftover")).count();
    eprintln!("scratch leftovers of killed writers swept by store-db: {swept}; checks took {:?}", checks.elapsed());
    drop(rt);
    s.stop().unwrap_or_else(|e| panic!("{e}"));
}

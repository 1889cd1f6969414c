//! Group commit in the writer, in process: correctness under concurrency, and a bench
//! (`cargo test --release -p guix-store-db --test group_commit -- --ignored --nocapture`)
//! comparing one transaction per request with grouped transactions.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guix_formats::nar::{self, Limits};
use guix_formats::StoreDir;
use guix_ipc::store_db::{HolderId, ItemSource, NewItem, RootStamp, StoreDbReply, StoreDbRequest};
use guix_store::scratch::SCRATCH_DIR_NAME;
use guix_store_db::server::fsops::ensure_scratch_dir;
use guix_store_db::server::service::StoreDb;
use guix_store_db::server::writer::{self, StoreLayout, WriterOptions};
use guix_store_db::{DbOptions, DbWriter, InitOptions, StateDirs};

struct Setup {
    _tmp: tempfile::TempDir,
    dirs: StateDirs,
    store: StoreDir,
    db: Arc<StoreDb>,
}

fn setup(max_group: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = StateDirs::under(tmp.path());
    let lock = dirs.init(&InitOptions::default()).unwrap();
    let store = dirs.store_dir().unwrap();
    let scratch = dirs.store_path().join(SCRATCH_DIR_NAME);
    ensure_scratch_dir(&scratch, None).unwrap();
    let w = DbWriter::open(dirs.db_dir(), store.clone(), &lock, &DbOptions::default()).unwrap();
    std::mem::forget(lock); // held for the test's lifetime
    let layout = StoreLayout { store_path: dirs.store_path().to_owned(), store_dir: store.clone(), scratch };
    let handle = writer::new(w, layout.clone(), WriterOptions { max_group, ..WriterOptions::default() });
    let db = Arc::new(StoreDb::new(layout, dirs.state_dir().to_owned(), handle));
    Setup { _tmp: tmp, dirs, store, db }
}

fn item(s: &Setup, task: usize, n: usize) -> NewItem {
    let contents = format!("task {task} item {n}");
    let path = s.store.make_text_path(&format!("t{task}-{n}"), contents.as_bytes(), &[]).unwrap();
    let name = format!("{}-{task}-{n}", std::process::id());
    let bytes = nar::nar_of_regular(contents.as_bytes(), false);
    let summary =
        nar::restore(&bytes[..], &s.dirs.store_path().join(SCRATCH_DIR_NAME).join(&name), &Limits::default()).unwrap();
    NewItem {
        source: ItemSource::Scratch(name),
        path,
        nar_hash: summary.nar_hash,
        nar_size: summary.nar_size,
        references: vec![],
        deriver: None,
    }
}

/// `tasks` concurrent callers each adding `per_task` single-item requests; returns the time
/// spent and the number of transactions.
fn run(max_group: usize, tasks: usize, per_task: usize) -> (Duration, u64, u64) {
    let s = Arc::new(setup(max_group));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Scratch items are made beforehand: only the store-db side is measured.
    let items: Vec<Vec<NewItem>> = (0..tasks).map(|t| (0..per_task).map(|n| item(&s, t, n)).collect()).collect();
    let start = Instant::now();
    rt.block_on(async {
        let mut handles = Vec::new();
        for (t, its) in items.into_iter().enumerate() {
            let db = s.db.clone();
            handles.push(tokio::spawn(async move {
                for i in its {
                    let r = db.execute(StoreDbRequest::AddItems { conn: conn(t as u64), items: vec![i] }).await;
                    assert_eq!(r, StoreDbReply::Ok);
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    let elapsed = start.elapsed();
    let r = guix_store_db::DbReader::open(s.dirs.db_dir(), s.store.clone()).unwrap();
    assert_eq!(r.query_all_valid_paths().unwrap().len(), tasks * per_task);
    let stats = s.db.writer().stats();
    (elapsed, stats.jobs.load(Ordering::Relaxed), stats.transactions.load(Ordering::Relaxed))
}

#[test]
fn concurrent_requests_share_transactions() {
    let (_, jobs, tx) = run(64, 16, 20);
    assert_eq!(jobs, 320);
    assert!(tx < jobs, "{tx} transactions for {jobs} jobs: no grouping happened");
}

#[test]
fn a_bad_request_does_not_fail_its_group() {
    let s = setup(64);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ghost = s.store.make_text_path("ghost", b"g", &[]).unwrap();
    let mut reqs = Vec::new();
    for n in 0..40 {
        let mut i = item(&s, 0, n);
        if n % 7 == 3 {
            i.references = vec![ghost.clone()];
        }
        reqs.push(i);
    }
    let results = rt.block_on(async {
        let hs: Vec<_> = reqs
            .iter()
            .cloned()
            .map(|i| {
                let db = s.db.clone();
                tokio::spawn(
                    async move { db.execute(StoreDbRequest::AddItems { conn: conn(1), items: vec![i] }).await },
                )
            })
            .collect();
        let mut out = Vec::new();
        for h in hs {
            out.push(h.await.unwrap());
        }
        out
    });
    let r = guix_store_db::DbReader::open(s.dirs.db_dir(), s.store.clone()).unwrap();
    for (n, (i, res)) in reqs.iter().zip(results).enumerate() {
        if n % 7 == 3 {
            assert_eq!(res, StoreDbReply::Error(guix_ipc::LinkError::client("path `%1%' is not valid")));
            assert!(!r.is_valid(&i.path).unwrap());
            assert!(!s.dirs.store_path().join(i.path.base_name()).exists());
        } else {
            assert_eq!(res, StoreDbReply::Ok, "{n}");
            assert!(r.is_valid(&i.path).unwrap());
        }
    }
}

#[test]
#[ignore = "bench: run with --ignored --nocapture, preferably --release"]
fn bench_group_commit() {
    for (tasks, per_task) in [(1, 2000), (32, 100)] {
        let (single, jobs, tx1) = run(1, tasks, per_task);
        let (grouped, _, txg) = run(64, tasks, per_task);
        println!(
            "{tasks} callers x {per_task}: one transaction per request {single:?} ({tx1} tx), grouped {grouped:?} ({txg} tx for {jobs} requests), speed-up {:.2}x",
            single.as_secs_f64() / grouped.as_secs_f64()
        );
    }
}

/// Connection `n` of this test process, as a temp-root holder.
fn conn(n: u64) -> RootStamp {
    static HOLDER: std::sync::OnceLock<HolderId> = std::sync::OnceLock::new();
    RootStamp { holder: HOLDER.get_or_init(|| HolderId::this_process("test")).clone(), conn: n, seq: 1 }
}

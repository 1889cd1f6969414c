//! The collection loop against a stand-in store-db that enforces the `DeleteDead` contract
//! (an entry goes only when everything that keeps it alive is gone already or in the same
//! batch) on a real SQLite database and store directory, and counts bytes as C++ does.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use guix_ipc::store_db::Deleted;

use super::*;

const HASH_CHARS: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A store path base name for `name` (its hash part made from the name).
fn sp(name: &str) -> String {
    let h: String = (0..32)
        .map(|i| HASH_CHARS[(name.len() * 7 + i * 3 + name.as_bytes()[i % name.len()] as usize) % 32] as char)
        .collect();
    format!("{h}-{name}")
}

struct World {
    _dir: tempfile::TempDir,
    setup: Setup,
}

/// A store with `paths` (name, references, deriver) valid, each a file of 100 bytes (a
/// directory holding one for names ending in `/`), `outputs` (drv, output) recorded.
fn world(paths: &[(&str, &[&str], Option<&str>)], outputs: &[(&str, &str)]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let (store_dir, state_dir, db_dir) = (dir.path().join("store"), dir.path().join("state"), dir.path().join("db"));
    for d in [&store_dir, &state_dir.join("gcroots"), &state_dir.join("profiles"), &db_dir, &store_dir.join(".links")] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(db_dir.join("schema"), "7").unwrap();
    let store = StoreDir::new(&store_dir.to_string_lossy()).unwrap();
    let db = rusqlite::Connection::open(db_dir.join("db.sqlite")).unwrap();
    db.execute_batch(include_str!("../../store/src/schema.sql")).unwrap();
    let full = |n: &str| format!("{}/{}", store_dir.display(), sp(n.trim_end_matches('/')));
    for (n, _, deriver) in paths {
        db.execute(
            "insert into ValidPaths (path, hash, registrationTime, deriver, narSize) values (?, 'sha256:0', 1, ?, 1000)",
            rusqlite::params![full(n), deriver.map(full)],
        )
        .unwrap();
        let p = store_dir.join(sp(n.trim_end_matches('/')));
        if n.ends_with('/') {
            fs::create_dir(&p).unwrap();
            fs::write(p.join("f"), [0u8; 100]).unwrap();
        } else {
            fs::write(&p, [0u8; 100]).unwrap();
        }
    }
    let id =
        |n: &str| -> i64 { db.query_row("select id from ValidPaths where path = ?", [full(n)], |r| r.get(0)).unwrap() };
    for (n, refs, _) in paths {
        for r in *refs {
            db.execute("insert into Refs (referrer, reference) values (?, ?)", [id(n), id(r)]).unwrap();
        }
    }
    for (d, o) in outputs {
        db.execute(
            "insert into DerivationOutputs (drv, id, path) values (?, ?, ?)",
            rusqlite::params![id(d), o, full(o)],
        )
        .unwrap();
    }
    let setup = Setup { store, store_dir, db_dir, state_dir, proc_dir: None, auto_optimise: false };
    World { _dir: dir, setup }
}

/// The stand-in: checks each batch against the graph as it was, deletes like store-db.
struct FakeStoreDb {
    setup: Setup,
    graph: Graph,
    keep_checked: KeepRules,
    temp_roots: Vec<StorePath>,
    gone: Mutex<HashSet<String>>,
    batches: Mutex<Vec<Vec<String>>>,
    /// Fail this many `DeleteDead` calls with store-db's "unknown garbage collection" (after the
    /// first batch).
    unknown: AtomicU32,
    /// Refuse `BeginCollection` this many times (the barrier).
    not_ready: AtomicU32,
    ended: Mutex<Vec<CollectionId>>,
    begun: AtomicU32,
}

impl FakeStoreDb {
    fn new(setup: &Setup, keep: KeepRules) -> FakeStoreDb {
        FakeStoreDb {
            graph: Graph::load(&setup.db_dir, &setup.store).unwrap(),
            setup: setup.clone(),
            keep_checked: keep,
            temp_roots: Vec::new(),
            gone: Mutex::new(HashSet::new()),
            batches: Mutex::new(Vec::new()),
            unknown: AtomicU32::new(0),
            not_ready: AtomicU32::new(0),
            ended: Mutex::new(Vec::new()),
            begun: AtomicU32::new(0),
        }
    }
}

impl StoreDbApi for FakeStoreDb {
    async fn begin(&self) -> std::result::Result<(CollectionId, Vec<StorePath>), LinkError> {
        if self.not_ready.load(Ordering::SeqCst) > 0 {
            self.not_ready.fetch_sub(1, Ordering::SeqCst);
            return Err(LinkError::retryable("waiting for socket-front"));
        }
        Ok((u64::from(self.begun.fetch_add(1, Ordering::SeqCst)), self.temp_roots.clone()))
    }

    async fn delete_dead(&self, batch: DeadBatch) -> std::result::Result<DeleteOutcome, LinkError> {
        let DeadBatch { entries, keep, freed_before, max_freed, link_threshold, .. } = batch;
        if !self.batches.lock().unwrap().is_empty() && self.unknown.load(Ordering::SeqCst) > 0 {
            self.unknown.fetch_sub(1, Ordering::SeqCst);
            // As store-db answers it (a retryable error).
            return Err(LinkError::retryable(
                "unknown garbage collection 0 (store-db restarted, or the collection expired)",
            ));
        }
        assert_eq!(keep, self.keep_checked);
        let mut gone = self.gone.lock().unwrap();
        let names: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let mut out = DeleteOutcome { deleted: Vec::new(), kept: Vec::new(), limit_reached: false, stopped: None };
        let mut freed = freed_before;
        let mut inc = Vec::new();
        for e in &entries {
            if let Some(n) = self.graph.id(&e.name) {
                assert!(e.valid);
                self.graph.incoming(n, keep, &mut inc);
                for &k in &inc {
                    let kn = &self.graph.names[k as usize];
                    assert!(gone.contains(kn) || names.contains(kn.as_str()), "{} sent before its keeper {kn}", e.name);
                }
            }
            if out.limit_reached {
                out.kept.push((e.name.clone(), KeptBecause::NotReached));
                continue;
            }
            let from = self.setup.store_dir.join(&e.name);
            let Ok(md) = fs::symlink_metadata(&from) else {
                gone.insert(e.name.clone());
                out.kept.push((e.name.clone(), KeptBecause::Gone));
                continue;
            };
            let accounted = if md.is_dir() {
                self.graph.id(&e.name).map_or(0, |n| self.graph.nar_size[n as usize])
            } else if md.nlink() <= link_threshold {
                md.size()
            } else {
                0
            };
            let trash = self.setup.store_dir.join("trash");
            let _ = fs::create_dir(&trash);
            fs::rename(&from, trash.join(&e.name)).unwrap();
            gone.insert(e.name.clone());
            out.deleted.push(Deleted {
                name: e.name.clone(),
                trashed_as: Some(e.name.clone()),
                accounted,
                is_dir: md.is_dir(),
                freed_in_place: 0,
            });
            freed += accounted;
            if freed > max_freed {
                out.limit_reached = true;
            }
        }
        self.batches.lock().unwrap().push(entries.into_iter().map(|e| e.name).collect());
        Ok(out)
    }

    async fn end(&self, collection: CollectionId) {
        self.ended.lock().unwrap().push(collection);
    }
}

#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<(u32, String)>>,
    cancel: AtomicBool,
}

impl Sink for Lines {
    fn say(&self, level: u32, text: String) {
        self.lines.lock().unwrap().push((level, text));
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

fn req(action: GcAction, keep: KeepRules) -> Request {
    Request { action, paths: Vec::new(), max_freed: u64::MAX, ignore_liveness: false, keep }
}

fn quick() -> Limits {
    Limits { begin: Duration::from_millis(300), begin_pause: Duration::from_millis(10), ..Limits::default() }
}

async fn run(api: &FakeStoreDb, w: &World, r: Request) -> (Result<Outcome>, Vec<(u32, String)>) {
    let sink = Lines::default();
    let o = collect(api, &w.setup, r, quick(), &sink).await;
    (o, sink.lines.into_inner().unwrap())
}

/// A chain lib ← app ← top, a derivation with an output (out refers to dev and back), a rooted
/// path, an invalid entry, and its `.lock` whose owner is a temp root.
fn sample() -> World {
    let w = world(
        &[
            ("lib", &[], None),
            ("app/", &["lib"], None),
            ("top", &["app"], None),
            ("x.drv", &["lib"], None),
            ("out", &["dev"], Some("x.drv")),
            ("dev", &["out"], Some("x.drv")),
            ("kept", &[], None),
        ],
        &[("x.drv", "out"), ("x.drv", "dev")],
    );
    std::os::unix::fs::symlink(w.setup.store_dir.join(sp("kept")), w.setup.state_dir.join("gcroots/kept")).unwrap();
    fs::write(w.setup.store_dir.join("junk"), b"12345").unwrap();
    fs::write(w.setup.store_dir.join(format!("{}.lock", sp("building"))), b"").unwrap();
    w
}

fn full(w: &World, n: &str) -> String {
    format!("{}/{}", w.setup.store_dir.display(), sp(n))
}

#[tokio::test]
async fn delete_dead_in_keeper_order_with_cxx_counts() {
    let both = KeepRules { outputs: true, derivations: true };
    let w = sample();
    let mut api = FakeStoreDb::new(&w.setup, both);
    api.temp_roots = vec![StorePath::from_base_name(&sp("building")).unwrap()];
    let (o, lines) = run(&api, &w, req(GcAction::DeleteDead, both)).await;
    let o = o.unwrap();
    let mut want: Vec<String> = ["lib", "app", "top", "x.drv", "out", "dev"].iter().map(|n| full(&w, n)).collect();
    want.push(format!("{}/junk", w.setup.store_dir.display()));
    want.sort();
    assert_eq!(o.paths, want);
    // Files: 5 × 100 + junk 5 in the batches; app's directory counted as its NAR size while
    // deleting (invalidated) and as its file (100) when the trash goes; .links is empty.
    assert_eq!(o.bytes_freed, 5 * 100 + 5 + 100);
    // The invalid entry went first, alone in its batch; x.drv, out and dev together.
    let batches = api.batches.lock().unwrap().clone();
    assert_eq!(batches[0], vec!["junk".to_owned()]);
    assert!(batches.iter().any(|b| ["x.drv", "out", "dev"].iter().all(|n| b.contains(&sp(n)))), "{batches:?}");
    assert!(!w.setup.store_dir.join("trash").exists());
    assert!(w.setup.store_dir.join(format!("{}.lock", sp("building"))).exists());
    assert!(w.setup.store_dir.join(sp("kept")).exists());
    let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts[0], "finding garbage collector roots...");
    assert_eq!(texts[1], "deleting garbage...");
    assert_eq!(texts[2], format!("[   0  bytes] deleting '{}/junk'", w.setup.store_dir.display()));
    assert_eq!(texts[texts.len() - 3], format!("deleting `{}/trash'", w.setup.store_dir.display()));
    assert_eq!(texts[texts.len() - 2], "deleting unused links...");
    assert!(texts[texts.len() - 1].starts_with("note: currently hard linking saves -"), "{texts:?}");
    assert_eq!(api.ended.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn list_live_and_dead() {
    let kd = KeepRules { outputs: false, derivations: true };
    let w = sample();
    let mut api = FakeStoreDb::new(&w.setup, kd);
    api.temp_roots = vec![StorePath::from_base_name(&sp("out")).unwrap()];
    let (live, _) = run(&api, &w, req(GcAction::ReturnLive, kd)).await;
    // out (temp root) keeps dev, and with keep-derivations x.drv and what it refers to.
    let mut want: Vec<String> = ["kept", "out", "dev", "x.drv", "lib"].iter().map(|n| full(&w, n)).collect();
    want.sort();
    assert_eq!(live.unwrap(), Outcome { paths: want, bytes_freed: 0 });
    let (dead, lines) = run(&api, &w, req(GcAction::ReturnDead, kd)).await;
    let mut want: Vec<String> = ["app", "top"].iter().map(|n| full(&w, n)).collect();
    want.push(format!("{}/junk", w.setup.store_dir.display()));
    want.push(format!("{}/{}.lock", w.setup.store_dir.display(), sp("building")));
    want.sort();
    assert_eq!(dead.unwrap().paths, want);
    assert_eq!(lines[1].1, "determining live/dead paths...");
    assert!(api.batches.lock().unwrap().is_empty());
}

#[tokio::test]
async fn delete_specific_takes_referrers_and_refuses_live_paths() {
    let none = KeepRules::default();
    let w = sample();
    let api = FakeStoreDb::new(&w.setup, none);
    let mut r = req(GcAction::DeleteSpecific, KeepRules { outputs: false, derivations: true });
    r.paths = vec![StorePath::from_base_name(&sp("app")).unwrap(), StorePath::from_base_name(&sp("kept")).unwrap()];
    let (o, _) = run(&api, &w, r).await;
    let Err(Error::Client(m)) = o else { panic!("{o:?}") };
    assert_eq!(m, format!("cannot delete path `{}' since it is still alive", full(&w, "kept")));
    // app went, with its referrer top, before the error; lib (a reference) stayed.
    assert!(!w.setup.store_dir.join(sp("app")).exists() && !w.setup.store_dir.join(sp("top")).exists());
    assert!(w.setup.store_dir.join(sp("lib")).exists());
    let batches = api.batches.lock().unwrap().concat();
    assert_eq!(batches, vec![sp("top"), sp("app")]);
}

#[tokio::test]
async fn max_freed_stops_after_the_entry_that_crosses_it() {
    let w = sample();
    let api = FakeStoreDb::new(&w.setup, KeepRules::default());
    let mut r = req(GcAction::DeleteDead, KeepRules::default());
    r.max_freed = 150;
    let (o, lines) = run(&api, &w, r).await;
    let o = o.unwrap();
    // junk (5), then valid paths until more than 150 bytes were deleted or invalidated.
    assert!(o.paths.len() >= 2 && o.paths.len() < 7, "{o:?}");
    let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
    assert!(texts.contains(&"deleted or invalidated more than 150 bytes; stopping"), "{texts:?}");
    assert!(texts.iter().any(|t| t.starts_with("[3%] deleting")), "{texts:?}");
}

#[tokio::test]
async fn store_db_restarts_and_barriers_are_survived() {
    let w = sample();
    let mut api = FakeStoreDb::new(&w.setup, KeepRules::default());
    api.unknown = AtomicU32::new(1);
    api.not_ready = AtomicU32::new(3);
    let (o, _) = run(&api, &w, req(GcAction::DeleteDead, KeepRules::default())).await;
    let o = o.unwrap();
    // Begun twice (the restart), ended twice, everything dead deleted once.
    assert_eq!(api.begun.load(Ordering::SeqCst), 2);
    assert_eq!(api.ended.lock().unwrap().len(), 2);
    assert_eq!(o.paths.len(), 8, "{o:?}");
    // A barrier that never opens fails the client clearly.
    let api = FakeStoreDb::new(&w.setup, KeepRules::default());
    api.not_ready.store(u32::MAX, Ordering::SeqCst);
    let (o, _) = run(&api, &w, req(GcAction::DeleteDead, KeepRules::default())).await;
    let Err(Error::Client(m)) = o else { panic!("{o:?}") };
    assert!(m.starts_with("cannot collect garbage: store-db is not ready after 0s (waiting for socket-front)"), "{m}");
}

#[tokio::test]
async fn cancelled_collections_stop_and_end() {
    let w = sample();
    let api = FakeStoreDb::new(&w.setup, KeepRules::default());
    let sink = Lines::default();
    sink.cancel.store(true, Ordering::SeqCst);
    let o = collect(&api, &w.setup, req(GcAction::DeleteDead, KeepRules::default()), quick(), &sink).await;
    assert!(matches!(o, Err(Error::Cancelled)), "{o:?}");
    assert!(api.batches.lock().unwrap().is_empty());
}

/// With a root that cannot be read, invalid entries still go but no valid path does, and the
/// warning names the root.
#[tokio::test]
async fn unreadable_roots_protect_every_valid_path() {
    use std::os::unix::fs::{chown, PermissionsExt};
    let w = sample();
    let home: PathBuf = w.setup.state_dir.parent().unwrap().join("home");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::symlink(full(&w, "top"), home.join("result")).unwrap();
    chown(&home, Some(4242), None).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o000)).unwrap();
    fs::create_dir(w.setup.state_dir.join("gcroots/auto")).unwrap();
    std::os::unix::fs::symlink(home.join("result"), w.setup.state_dir.join("gcroots/auto/r")).unwrap();
    let (setup, r) = (w.setup.clone(), req(GcAction::DeleteDead, KeepRules::default()));
    // The scan as root squashed to nobody (an NFS home): the owner cannot read it either.
    let a = std::thread::spawn(move || {
        // SAFETY: this thread's own credentials.
        unsafe { libc::setfsuid(65534) };
        analyse(&setup, &[], &r)
    })
    .join()
    .unwrap()
    .unwrap();
    let link = w.setup.state_dir.join("gcroots/auto/r");
    assert_eq!(a.unreadable.len(), 1);
    assert!(a.lines.iter().any(|(l, t)| *l == ERROR && t.contains(&format!("`{}'", link.display()))), "{:?}", a.lines);
    let api = FakeStoreDb::new(&w.setup, KeepRules::default());
    let sink = Lines::default();
    let r = req(GcAction::DeleteDead, KeepRules::default());
    let phase = Phase { api: &api, setup: &w.setup, req: &r, id: 0, a: &a, threshold: 1, sink: &sink, first: true };
    let (mut totals, mut trasher) = (Totals::default(), Trasher::new(1));
    assert!(matches!(phase.run(&mut totals, &mut trasher).await, Ok(Ok(()))));
    trasher.finish().await;
    totals.paths.sort();
    let d = w.setup.store_dir.display();
    assert_eq!(totals.paths, vec![format!("{d}/junk"), format!("{d}/{}.lock", sp("building"))]);
    fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
}

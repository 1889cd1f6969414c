//! Collections in a loop while other clients add, root and build: nothing in use may go.
//!
//! For `GUIX_TESTS_GC_STRESS_SECS` seconds (default [`DEFAULT_SECS`]) a collector calls
//! CollectGarbage (delete dead, no limit) again and again through the client library, while
//! * [`CHAIN_CLIENTS`] clients add text chains (each item referring to the previous one of its
//!   connection and to an indirectly rooted item of any client), every seventh item getting an
//!   indirect root (`add-indirect-root` of a symlink in the session's `/tmp`); a connection ends
//!   after [`CHAIN_LEN`] items and its unrooted items become garbage;
//! * a temp-root client adds an item on a short connection, makes it a temp root of a second,
//!   long-lived connection (`add-temp-root`), then closes the first;
//! * a `guix repl` process (the real client) adds a fresh input text and builds a busybox
//!   derivation whose sources are that input and busybox, then checks the output's contents.
//!
//! After each collection, under a lock that keeps clients from releasing what they hold (so
//! what the check expects protected is protected at that moment): `PRAGMA integrity_check` is
//! ok; no row of the database is half-registered and every valid path's files have the
//! recorded NAR hash and size ([`check_store`]); every rooted item and every item a live
//! connection holds (added on it, or its temp root) is valid with the contents its client sent.
//! No client operation and no build may fail (a missing path would fail them: "path … is not
//! valid", a build input gone). The run must have collected something, or it showed nothing.
//!
//! Only against ours: the C++ daemon takes its global GC lock for a whole collection, so its
//! clients just wait (`GUIX_TESTS_GC_DAEMON=cxx` runs it anyway, which checks the test itself:
//! it must pass there).
//!
//! How the test fails on a broken collector: `checker_reports_lost_items` feeds the same check
//! an item whose files were removed behind the daemon's back and an item that is not valid,
//! and requires both to be reported; a collector that deleted a root or a held item produces
//! exactly those states (invalid, or files gone). Checked by hand once against the gc of the
//! `gc` branch with its analysis made to ignore the roots under `/tmp/stress-roots` (store-db's
//! own check refuses only temp roots and paths with valid referrers, so nothing else saved
//! them): the run failed after 5 collections (1.3 s) with "rooted item … is not valid".
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode
//! (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guix_client::{gc_options, DaemonClient};
use guix_formats::store_path::StorePath;
use guix_formats::worker::GcAction;
use guix_tests::store_check::{check_store, integrity_check};
use guix_tests::{ours_kind, DaemonKind, Rig, Session, SessionOptions};

/// How long the collector loops unless `GUIX_TESTS_GC_STRESS_SECS` says otherwise.
pub const DEFAULT_SECS: u64 = 60;
const CHAIN_CLIENTS: usize = 3;
const CHAIN_LEN: usize = 20;
/// An operation taking longer than this is a hang (a C++ collection of this store takes a
/// few seconds at most, and ours must not block clients at all).
const OP_TIMEOUT: Duration = Duration::from_secs(120);
/// Where the indirect roots' symlinks live, inside the chroot (`tmp/` of the state directory).
const ROOTS_DIR: &str = "/tmp/stress-roots";

fn duration() -> Duration {
    let secs = std::env::var("GUIX_TESTS_GC_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SECS);
    Duration::from_secs(secs)
}

/// Whether `GUIX_TESTS_GC_DAEMON=cxx` asks for the C++ daemon (to check the test itself).
///
/// The C++ daemon then needs SyncWithGC after AddIndirectRoot: its collector reads the roots
/// (`findRoots`), then runs `guix gc --list-busy` (a second or more), then reads the temp
/// roots; an indirect root made in between, by a connection that closes before the temp
/// roots are read, is seen by neither, and the item is deleted although its root exists
/// (seen here: every run of 10 s lost rooted items). Nix's `addPermRoot` calls `syncWithGC`
/// for this reason; Guile's `add-indirect-root` and `guix build --root` do not, so `guix build
/// --root` during a C++ collection can lose its root. Ours must not need it.
fn cxx_mode() -> bool {
    std::env::var("GUIX_TESTS_GC_DAEMON").as_deref() == Ok("cxx")
}

/// Our daemon, or the C++ one in [`cxx_mode`].
fn start(rig: &Rig) -> Session {
    let (kind, opts) = if cxx_mode() { (DaemonKind::Cxx, SessionOptions::default()) } else { ours_kind(&[]) };
    Session::start_with(rig, kind, &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// What must be valid now, with the contents its client sent.
#[derive(Debug, Default, Clone)]
struct Protected {
    /// Items with an indirect root (never removed during the run).
    rooted: BTreeMap<StorePath, Vec<u8>>,
    /// (holder connection, item): added on that live connection or made its temp root.
    held: BTreeMap<(u64, StorePath), Vec<u8>>,
}

struct Shared {
    protected: Mutex<Protected>,
    /// Held by the check, and by a client while it forgets what a connection held and closes
    /// it: so nothing the check expects protected is released while it checks.
    release: tokio::sync::Mutex<()>,
    stop: AtomicBool,
    errors: Mutex<Vec<String>>,
    next_holder: AtomicU64,
    added: AtomicU64,
    /// Call SyncWithGC after each AddIndirectRoot, before the connection that held the item
    /// may close: only for the C++ daemon (see [`cxx_mode`]).
    sync_roots: bool,
}

impl Shared {
    fn new(sync_roots: bool) -> Arc<Shared> {
        Arc::new(Shared {
            protected: Mutex::new(Protected::default()),
            release: tokio::sync::Mutex::new(()),
            stop: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
            next_holder: AtomicU64::new(0),
            added: AtomicU64::new(0),
            sync_roots,
        })
    }

    fn error(&self, e: String) {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
        self.stop.store(true, Ordering::SeqCst);
    }

    fn protect(&self, f: impl FnOnce(&mut Protected)) {
        f(&mut self.protected.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Forgets what `holder` held, then closes its connection, under the release lock.
    async fn release(&self, holder: u64, conn: DaemonClient) {
        let _guard = self.release.lock().await;
        self.protect(|p| p.held.retain(|(h, _), _| *h != holder));
        drop(conn);
    }
}

/// Runs `op` with the [`OP_TIMEOUT`]; a failure or hang becomes an error of the run.
async fn op<T>(
    shared: &Shared,
    what: String,
    f: impl std::future::Future<Output = guix_client::Result<T>>,
) -> Option<T> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            shared.error(format!("{what}: {e}"));
            None
        }
        Err(_) => {
            shared.error(format!("{what}: no answer in {OP_TIMEOUT:?}"));
            None
        }
    }
}

async fn connect(shared: &Shared, socket: &Path) -> Option<DaemonClient> {
    op(shared, "connecting".into(), DaemonClient::connect(socket)).await
}

/// Text chains; see the module documentation.
async fn chain_client(k: usize, shared: Arc<Shared>, socket: PathBuf, roots_on_host: PathBuf) {
    let mut generation = 0;
    while !shared.stopped() {
        generation += 1;
        let holder = shared.next_holder.fetch_add(1, Ordering::SeqCst);
        let Some(mut conn) = connect(&shared, &socket).await else { return };
        let mut last: Option<StorePath> = None;
        for n in 0..CHAIN_LEN {
            if shared.stopped() {
                break;
            }
            let mut refs: BTreeSet<StorePath> = last.iter().cloned().collect();
            {
                let p = shared.protected.lock().unwrap_or_else(|p| p.into_inner());
                // Some rooted item, varying with n (any client's).
                if let Some((r, _)) = p.rooted.iter().nth(n * 7919 % p.rooted.len().max(1)) {
                    refs.insert(r.clone());
                }
            }
            let name = format!("chain-{k}-{generation}-{n}");
            let contents = format!("{name} refers to {refs:?}\n").into_bytes();
            let what = format!("client {k}: adding {name}");
            let Some(path) = op(&shared, what, conn.add_text_to_store(&name, &contents, &refs)).await else { return };
            shared.added.fetch_add(1, Ordering::Relaxed);
            shared.protect(|p| {
                p.held.insert((holder, path.clone()), contents.clone());
            });
            if n % 7 == 6 {
                let link = format!("{k}-{generation}-{n}");
                let made = std::os::unix::fs::symlink(format!("/gnu/store/{path}"), roots_on_host.join(&link));
                if let Err(e) = made {
                    shared.error(format!("client {k}: symlink {link}: {e}"));
                    return;
                }
                let what = format!("client {k}: add-indirect-root of {path}");
                op(&shared, what, conn.add_indirect_root(&format!("{ROOTS_DIR}/{link}"))).await;
                if shared.sync_roots {
                    op(&shared, format!("client {k}: sync-with-gc"), conn.sync_with_gc()).await;
                }
                shared.protect(|p| {
                    p.rooted.insert(path.clone(), contents.clone());
                });
            }
            last = Some(path);
        }
        shared.release(holder, conn).await;
    }
}

/// Temp roots through a second connection; see the module documentation.
async fn temp_root_client(shared: Arc<Shared>, socket: PathBuf) {
    let mut n = 0u64;
    while !shared.stopped() {
        let keeper = shared.next_holder.fetch_add(1, Ordering::SeqCst);
        let Some(mut keep) = connect(&shared, &socket).await else { return };
        for _ in 0..10 {
            if shared.stopped() {
                break;
            }
            n += 1;
            let adder = shared.next_holder.fetch_add(1, Ordering::SeqCst);
            let Some(mut add) = connect(&shared, &socket).await else { return };
            let name = format!("held-{n}");
            let contents = format!("held by a temp root, {n}\n").into_bytes();
            let what = format!("temp-root client: adding {name}");
            let Some(path) = op(&shared, what, add.add_text_to_store(&name, &contents, &BTreeSet::new())).await else {
                return;
            };
            shared.added.fetch_add(1, Ordering::Relaxed);
            shared.protect(|p| {
                p.held.insert((adder, path.clone()), contents.clone());
            });
            let what = format!("temp-root client: add-temp-root {path}");
            op(&shared, what, keep.add_temp_root(&path)).await;
            shared.protect(|p| {
                p.held.insert((keeper, path.clone()), contents.clone());
            });
            shared.release(adder, add).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shared.release(keeper, keep).await;
    }
}

/// The build client's script: busybox builds of fresh inputs until `/tmp/stress-stop` exists
/// (at most 300 per process). Prints `built N` per build; any failure ends it non-zero.
const BUILD_SCRIPT: &str = r##"
(use-modules (guix store) (guix derivations) (ice-9 textual-ports))
(define dir (format #f "/tmp/stress-bb-~a" (getpid)))
(system* "rm" "-rf" dir)
(mkdir dir) (mkdir (string-append dir "/bin"))
(copy-file "/bin/busybox" (string-append dir "/bin/busybox"))
(chmod (string-append dir "/bin/busybox") #o555)
(with-store store
  (set-build-options store #:use-substitutes? #f)
  (let* ((bbdir (add-to-store store "busybox-static" #t "sha256" dir))
         (bb (string-append bbdir "/bin/busybox")))
    (let loop ((i 0))
      (unless (or (file-exists? "/tmp/stress-stop") (>= i 300))
        (let* ((tag (format #f "~a-~a" (getpid) i))
               (text (string-append "input " tag "\n"))
               (input (add-text-to-store store (string-append "stress-input-" tag) text))
               (drv (derivation store (string-append "stress-build-" tag) bb
                                (list "sh" "-c" (string-append bb " cat " input " > $out"))
                                #:sources (list bbdir input)))
               (out (derivation->output-path drv)))
          (build-derivations store (list drv))
          (let ((got (call-with-input-file out get-string-all)))
            (unless (string=? got text)
              (error "wrong output contents" out got)))
          (format #t "built ~a~%" i)
          (force-output)
          (loop (+ i 1)))))))
"##;

/// Runs build processes one after the other until the run stops; the number of builds.
fn build_client(shared: &Shared, s: &Session) -> u64 {
    let script = s.state_dir().join("tmp/stress-build.scm");
    if let Err(e) = fs::write(&script, BUILD_SCRIPT) {
        shared.error(format!("writing {}: {e}", script.display()));
        return 0;
    }
    let mut built = 0;
    while !shared.stopped() {
        match s.exec_guix(&["repl", "/tmp/stress-build.scm"]) {
            Ok(out) => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                built += stdout.lines().filter(|l| l.starts_with("built ")).count() as u64;
                if !out.status.success() {
                    shared.error(format!(
                        "build client failed ({}):\n{stdout}{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
            Err(e) => shared.error(format!("build client: {e}")),
        }
    }
    built
}

/// The check after a collection (module documentation): `Err` lists every problem.
fn check(s: &Session, expected: &Protected) -> Result<(), String> {
    let db = s.var_guix_on_host().join("db").join("db.sqlite");
    integrity_check(&db)?;
    let valid = check_store(&db, "/gnu/store", &s.store_dir_on_host())?;
    let mut problems = String::new();
    let items = expected.rooted.iter().map(|(p, c)| ("rooted", p, c));
    let items = items.chain(expected.held.iter().map(|((_, p), c)| ("held", p, c)));
    for (why, path, contents) in items {
        let shown = format!("/gnu/store/{path}");
        if !valid.contains_key(&shown) {
            problems.push_str(&format!("{why} item {shown} is not valid\n"));
            continue;
        }
        match fs::read(s.store_dir_on_host().join(path.to_string())) {
            Ok(got) if &got == contents => {}
            Ok(got) => problems.push_str(&format!("{why} item {shown}: contents {got:?}, expected {contents:?}\n")),
            Err(e) => problems.push_str(&format!("{why} item {shown}: {e}\n")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// [`check`] with clients kept from releasing anything meanwhile.
async fn check_round(s: &Session, shared: &Shared) -> Result<(), String> {
    let _guard = shared.release.lock().await;
    let expected = shared.protected.lock().unwrap_or_else(|p| p.into_inner()).clone();
    check(s, &expected)
}

#[test]
fn collections_in_a_loop_lose_nothing_in_use() {
    let rig = Rig::discover().unwrap_or_else(|e| panic!("{e}"));
    let s = start(&rig);
    let roots_on_host = s.state_dir().join("tmp/stress-roots");
    fs::create_dir_all(&roots_on_host).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let shared = Shared::new(cxx_mode());
    let socket = s.socket_path().to_owned();
    let mut tasks = Vec::new();
    for k in 0..CHAIN_CLIENTS {
        tasks.push(rt.spawn(chain_client(k, shared.clone(), socket.clone(), roots_on_host.clone())));
    }
    tasks.push(rt.spawn(temp_root_client(shared.clone(), socket.clone())));

    let run = duration();
    let began = Instant::now();
    let (rounds, deleted, built) = std::thread::scope(|scope| {
        let builder = scope.spawn(|| build_client(&shared, &s));
        let start = Instant::now();
        let (mut rounds, mut deleted) = (0u64, 0usize);
        rt.block_on(async {
            let Some(mut gc) = connect(&shared, &socket).await else { return };
            while start.elapsed() < run && !shared.stopped() {
                let what = format!("collection {}", rounds + 1);
                let Some(res) =
                    op(&shared, what, gc.collect_garbage(&gc_options(GcAction::DeleteDead, BTreeSet::new()))).await
                else {
                    break;
                };
                deleted += res.paths.len();
                rounds += 1;
                if let Err(e) = check_round(&s, &shared).await {
                    shared.error(format!("after collection {rounds}:\n{e}"));
                }
            }
        });
        shared.stop.store(true, Ordering::SeqCst);
        let _ = fs::write(s.state_dir().join("tmp/stress-stop"), "");
        let built = builder.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (rounds, deleted, built)
    });
    rt.block_on(async {
        for t in tasks {
            if let Err(e) = t.await {
                shared.error(format!("client task: {e}"));
            }
        }
    });
    let added = shared.added.load(Ordering::Relaxed);
    let errors = shared.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    eprintln!(
        "{rounds} collections in {:.1?} (run {run:?}): {deleted} paths deleted, {added} items added, {built} builds",
        began.elapsed()
    );
    assert!(errors.is_empty(), "{}\n--- daemon.log ---\n{}", errors.join("\n"), s.daemon_log());
    // Once more with everything quiet.
    let expected = shared.protected.lock().unwrap_or_else(|p| p.into_inner()).clone();
    check(&s, &expected).unwrap_or_else(|e| panic!("at the end:\n{e}"));
    assert!(rounds >= 2, "only {rounds} collections ran");
    assert!(deleted > 0, "no collection deleted anything: the run showed nothing");
    assert!(added > 100 && built > 0, "too little work ran beside the collections: {added} additions, {built} builds");
}

/// The check must report what a collector that deleted something in use leaves: an item whose
/// files are gone, and an item that is not valid.
#[test]
fn checker_reports_lost_items() {
    let rig = Rig::discover().unwrap_or_else(|e| panic!("{e}"));
    let s = start(&rig);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    let mut expected = Protected::default();
    rt.block_on(async {
        let mut c = DaemonClient::connect(s.socket_path()).await.unwrap_or_else(|e| panic!("{e}"));
        for name in ["kept", "removed"] {
            let contents = format!("{name}\n").into_bytes();
            let p = c.add_text_to_store(name, &contents, &BTreeSet::new()).await.unwrap_or_else(|e| panic!("{e}"));
            expected.held.insert((0, p), contents);
        }
    });
    check(&s, &expected).unwrap_or_else(|e| panic!("a sound store is reported broken:\n{e}"));
    let never =
        StorePath::from_base_name("00000000000000000000000000000000-never-added").unwrap_or_else(|e| panic!("{e}"));
    let mut with_never = expected.clone();
    with_never.held.insert((1, never), b"x".to_vec());
    let report = check(&s, &with_never).err().unwrap_or_default();
    assert!(
        report.contains("held item /gnu/store/00000000000000000000000000000000-never-added is not valid"),
        "{report}"
    );
    let removed = expected.held.keys().map(|(_, p)| p.clone()).find(|p| p.name() == "removed");
    let removed = removed.unwrap_or_else(|| panic!("no item `removed'"));
    let on_host = s.store_dir_on_host().join(removed.to_string());
    fs::remove_file(&on_host).unwrap_or_else(|e| panic!("removing {}: {e}", on_host.display()));
    let report = check(&s, &expected).err().unwrap_or_default();
    assert!(report.contains(&format!("`/gnu/store/{removed}' is valid but its files cannot be read")), "{report}");
}

//! The `guix-store-db` process, run as it is in production: under the real `guix-daemon-rs`
//! supervisor (`--rs-libexec-dir` holding our binary), reached through its link socket with
//! `guix_ipc::Client`. Also the writer's group commit, in process.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use guix_formats::derivation::{Derivation, DerivationOutput, ModuloHasher, OutputName};
use guix_formats::nar::{self, Limits, Node};
use guix_formats::{StoreDir, StorePath};
use guix_ipc::store_db::{HolderId, ItemSource, NewItem, RootStamp, StoreDbReply, StoreDbRequest, STORE_DB_LINK};
use guix_ipc::Client;
use guix_store::scratch::SCRATCH_DIR_NAME;
use guix_store_db::{DbReader, StateDirs};
use guix_tests::supervised::{self, Program, Supervised};

type StoreDbClient = Client<StoreDbRequest, StoreDbReply>;

/// The supervisor binary, built on demand (it belongs to another crate of the workspace).
fn supervisor_bin() -> PathBuf {
    supervised::built_on_demand(
        guix_tests::target_dir().join("guix-daemon-rs"),
        &["-p", "guix-supervisor", "--bin", "guix-daemon-rs"],
    )
}

fn wait_for(cond: impl FnMut() -> bool, what: &str) {
    supervised::wait_for(cond, what, Duration::from_secs(20));
}

/// The supervisor running our store-db; its state in the layout of [`StateDirs::under`].
struct Daemon {
    sup: Supervised,
}

impl Daemon {
    fn start() -> Daemon {
        let components = [
            ("store-db", Program::Link(Path::new(env!("CARGO_BIN_EXE_guix-store-db")))),
            // socket-front is not under test: a stand-in that says "not implemented yet".
            ("socket-front", Program::Script("#!/bin/sh\nexec sleep 1000\n")),
        ];
        let d = Daemon { sup: Supervised::start(&supervisor_bin(), &components, &[]) };
        // `schema` is written after `db.sqlite` is created: wait for both (readers need it).
        wait_for(
            || {
                d.socket().exists()
                    && d.scratch().is_dir()
                    && std::fs::read(d.dirs().db_dir().join("schema")).is_ok_and(|v| !v.is_empty())
            },
            "store-db",
        );
        d
    }
    fn dirs(&self) -> StateDirs {
        StateDirs::under(self.sup.root())
    }
    fn store_dir(&self) -> StoreDir {
        self.dirs().store_dir().unwrap()
    }
    fn socket(&self) -> PathBuf {
        self.dirs().state_dir().join("daemon-rs/store-db.sock")
    }
    fn scratch(&self) -> PathBuf {
        self.dirs().store_path().join(SCRATCH_DIR_NAME)
    }
    fn client(&self) -> StoreDbClient {
        Client::new(self.socket(), STORE_DB_LINK, "test", Duration::from_secs(60))
    }
    fn reader(&self) -> DbReader {
        DbReader::open(self.dirs().db_dir(), self.store_dir()).unwrap()
    }
    fn store_db_pid(&self) -> Option<i32> {
        supervised::pid_in_status(&self.sup.ctl(&["status"]).1, "store-db")
    }
    /// `times` times: waits `pause`, kills store-db with SIGKILL and waits for the supervisor
    /// to start the next one; then waits `pause` once more. The pids killed.
    fn kill_store_db_repeatedly(&self, times: usize, pause: Duration) -> BTreeSet<i32> {
        let mut pids = BTreeSet::new();
        for _ in 0..times {
            std::thread::sleep(pause);
            let pid = loop {
                if let Some(p) = self.store_db_pid() {
                    break p;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            pids.insert(pid);
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
            wait_for(|| self.store_db_pid().is_some_and(|p| p != pid), "store-db restart");
        }
        std::thread::sleep(pause);
        pids
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Restores `node` into the scratch directory as a writer does (`<pid>-<n>`), canonicalised
/// (mtime 1), and returns the item to send.
fn scratch_item(scratch: &Path, path: StorePath, node: &Node, references: Vec<StorePath>) -> NewItem {
    let name = format!("{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    let dest = scratch.join(&name);
    let bytes = node.to_nar().unwrap();
    let summary = nar::restore(&bytes[..], &dest, &Limits::default()).unwrap();
    guix_store::files::canonicalise(&dest).unwrap();
    NewItem {
        source: ItemSource::Scratch(name),
        path,
        nar_hash: summary.nar_hash,
        nar_size: summary.nar_size,
        references,
        deriver: None,
    }
}

fn text(contents: &str) -> Node {
    Node::Regular { executable: false, contents: contents.as_bytes().to_vec() }
}

fn text_item(d: &Daemon, name: &str, contents: &str, references: Vec<StorePath>) -> NewItem {
    let path = d.store_dir().make_text_path(name, contents.as_bytes(), &references).unwrap();
    scratch_item(&d.scratch(), path, &text(contents), references)
}

fn tree() -> Node {
    let mut bin = BTreeMap::new();
    bin.insert(b"hello".to_vec(), Node::Regular { executable: true, contents: b"#!/bin/sh\necho hi\n".to_vec() });
    let mut top = BTreeMap::new();
    top.insert(b"bin".to_vec(), Node::Directory(bin));
    top.insert(b"README".to_vec(), text("read me"));
    top.insert(b"link".to_vec(), Node::Symlink { target: b"bin/hello".to_vec() });
    Node::Directory(top)
}

/// A derivation with one output depending on `src`, and its `.drv` path.
fn derivation(store: &StoreDir, name: &str, src: &StorePath) -> (Derivation, StorePath) {
    let mut outputs = BTreeMap::new();
    outputs.insert(OutputName::out(), DerivationOutput::blank());
    let mut drv = Derivation {
        outputs,
        input_drvs: BTreeMap::new(),
        input_srcs: [src.clone()].into(),
        platform: b"x86_64-linux".to_vec(),
        builder: store.display(src).into_bytes(),
        args: vec![],
        env: [(b"out".to_vec(), vec![])].into_iter().collect(),
    };
    let mut hasher = ModuloHasher::new(|_: &StorePath| -> Result<Derivation, String> { Err("no inputs".into()) });
    drv.fill_output_paths(store, name, &mut hasher).unwrap();
    let path = drv.drv_path(store, name).unwrap();
    (drv, path)
}

fn drv_item(d: &Daemon, drv: &Derivation, path: &StorePath) -> NewItem {
    let store = d.store_dir();
    let node = Node::Regular { executable: false, contents: drv.to_aterm(&store) };
    scratch_item(&d.scratch(), path.clone(), &node, drv.references().into_iter().collect())
}

fn nar_of(path: &Path) -> nar::NarSummary {
    nar::dump_path(path, &mut std::io::sink()).unwrap()
}

fn integrity_ok(d: &Daemon) {
    let conn = rusqlite::Connection::open(d.dirs().db_dir().join("db.sqlite")).unwrap();
    let res: String = conn.query_row("pragma integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(res, "ok");
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn adds_text_tree_and_derivation() {
    let d = Daemon::start();
    let rt = rt();
    let c = d.client();
    let store = d.store_dir();

    let a = text_item(&d, "a.txt", "aaa", vec![]);
    let t_path = store.make_fixed_output_path(true, &nar_of_node(&tree()), "tree").unwrap();
    let t = scratch_item(&d.scratch(), t_path.clone(), &tree(), vec![a.path.clone()]);
    let (drv, drv_path) = derivation(&store, "thing", &a.path);
    let dv = drv_item(&d, &drv, &drv_path);
    let items = vec![a.clone(), t.clone(), dv.clone()];
    assert_eq!(
        rt.block_on(c.call(StoreDbRequest::AddItems { conn: conn(1), items: items.clone() })).unwrap(),
        StoreDbReply::Ok
    );

    let r = d.reader();
    for i in &items {
        let info = r.query_path_info(&i.path).unwrap();
        assert_eq!(info.nar_hash, i.nar_hash);
        assert_eq!(info.nar_size, Some(i.nar_size));
        assert_eq!(info.references, i.references.iter().cloned().collect::<BTreeSet<_>>());
        let on_disk = d.dirs().store_path().join(i.path.base_name());
        assert_eq!(nar_of(&on_disk).nar_hash, i.nar_hash, "{}", on_disk.display());
        // No lock file (store-db takes none).
        assert!(!PathBuf::from(format!("{}.lock", on_disk.display())).exists());
    }
    let outs = r.query_derivation_output_map(&drv_path).unwrap();
    assert_eq!(outs.get("out"), drv.outputs.get(&OutputName::out()).and_then(|o| o.path.as_ref()));
    // Nothing left in the scratch directory.
    assert_eq!(std::fs::read_dir(d.scratch()).unwrap().count(), 0);

    // Idempotent: the same request again (scratch copies gone) succeeds and changes nothing.
    assert_eq!(rt.block_on(c.call(StoreDbRequest::AddItems { conn: conn(1), items })).unwrap(), StoreDbReply::Ok);
    // Adding a valid path with a fresh scratch copy removes the copy.
    let again = text_item(&d, "a.txt", "aaa", vec![]);
    let again_scratch = d.scratch().join(again.scratch_name().unwrap());
    assert_eq!(
        rt.block_on(c.call(StoreDbRequest::AddItems { conn: conn(2), items: vec![again] })).unwrap(),
        StoreDbReply::Ok
    );
    assert!(!again_scratch.exists());

    // Roots and failed paths.
    assert_eq!(
        rt.block_on(c.call(StoreDbRequest::AddIndirectRoot { path: "/home/x/result".into() })).unwrap(),
        StoreDbReply::Ok
    );
    let auto = d.dirs().gcroots_dir().join("auto");
    assert_eq!(std::fs::read_dir(&auto).unwrap().count(), 1);
    assert_eq!(
        rt.block_on(c.call(StoreDbRequest::ClearFailedPaths { paths: vec![drv_path] })).unwrap(),
        StoreDbReply::Ok
    );
    integrity_ok(&d);
}

fn nar_of_node(n: &Node) -> guix_formats::Hash {
    guix_formats::HashAlgo::Sha256.digest(&n.to_nar().unwrap())
}

fn error_of(r: StoreDbReply) -> String {
    match r {
        StoreDbReply::Error(e) => e.message,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn refuses_hostile_names_bad_derivations_and_invalid_references() {
    let d = Daemon::start();
    let rt = rt();
    let c = d.client();
    let store = d.store_dir();
    let r = d.reader();

    // Hostile scratch names: refused before anything is touched.
    let outside = d.sup.root().join("outside");
    std::fs::write(&outside, b"x").unwrap();
    let good = text_item(&d, "g", "g", vec![]);
    for bad in ["../../outside", "a/b", ".", "..", ""] {
        let mut item = good.clone();
        item.source = ItemSource::Scratch(bad.to_owned());
        let msg = error_of(rt.block_on(c.call(StoreDbRequest::AddItems { conn: conn(1), items: vec![item] })).unwrap());
        assert!(msg.contains("invalid scratch item name"), "{msg}");
    }
    assert!(outside.exists());
    assert!(!r.is_valid(&good.path).unwrap());

    // A missing scratch item.
    let mut missing = text_item(&d, "m", "m", vec![]);
    std::fs::remove_file(d.scratch().join(missing.scratch_name().unwrap())).unwrap();
    let nothing = format!("{}-nothing", std::process::id());
    missing.source = ItemSource::Scratch(nothing.clone());
    let msg = error_of(
        rt.block_on(c.call(StoreDbRequest::AddItems { conn: conn(1), items: vec![missing.clone()] })).unwrap(),
    );
    assert_eq!(msg, format!("scratch item `{nothing}' does not exist"));

    // A .drv with a wrong output path: the C++ message, nothing of the batch registered, the
    // items it moved into the store removed, its scratch copies too.
    let src = text_item(&d, "builder.sh", "echo", vec![]);
    let (mut drv, _) = derivation(&store, "bad", &src.path);
    let right = drv.outputs.get(&OutputName::out()).unwrap().path.clone().unwrap();
    let wrong = store.make_text_path("bad", b"nope", &BTreeSet::new()).unwrap();
    drv.outputs.get_mut(&OutputName::out()).unwrap().path = Some(wrong.clone());
    drv.env.insert(b"out".to_vec(), store.display(&wrong).into_bytes());
    let drv_path = drv.drv_path(&store, "bad").unwrap();
    let dv = drv_item(&d, &drv, &drv_path);
    let msg = error_of(
        rt.block_on(c.call(StoreDbRequest::AddItems { conn: conn(1), items: vec![src.clone(), dv] })).unwrap(),
    );
    assert_eq!(
        msg,
        format!(
            "derivation `{}' has incorrect output `{}', should be `{}'",
            store.display(&drv_path),
            store.display(&wrong),
            store.display(&right)
        )
    );
    assert!(!r.is_valid(&src.path).unwrap() && !r.is_valid(&drv_path).unwrap());
    assert!(!d.dirs().store_path().join(src.path.base_name()).exists());
    assert!(!d.dirs().store_path().join(drv_path.base_name()).exists());
    assert_eq!(std::fs::read_dir(d.scratch()).unwrap().count(), 1, "only `good' is left");
    // The same `.drv` inline (as AddTextToStore sends it: parsed from the request's bytes,
    // not read back from the store): refused the same way, nothing left at its name.
    let text = drv.to_aterm(&store);
    let summary = nar::summary_of_regular(&text, false);
    let inline_drv = NewItem {
        source: ItemSource::Text(text),
        path: drv_path.clone(),
        nar_hash: summary.nar_hash,
        nar_size: summary.nar_size,
        references: drv.references().into_iter().collect(),
        deriver: None,
    };
    let src = text_item(&d, "builder.sh", "echo", vec![]);
    let msg = error_of(
        rt.block_on(c.call(StoreDbRequest::AddItems { conn: conn(1), items: vec![src.clone(), inline_drv] })).unwrap(),
    );
    assert!(msg.starts_with(&format!("derivation `{}' has incorrect output", store.display(&drv_path))), "{msg}");
    assert!(!r.is_valid(&drv_path).unwrap() && !d.dirs().store_path().join(drv_path.base_name()).exists());

    // A reference that is neither valid nor in the batch: the C++ message (no path in it).
    let ghost = store.make_text_path("ghost", b"boo", &BTreeSet::new()).unwrap();
    let dangling = text_item(&d, "dangling", "d", vec![ghost]);
    let msg = error_of(
        rt.block_on(c.call(StoreDbRequest::AddItems { conn: conn(1), items: vec![dangling.clone()] })).unwrap(),
    );
    assert_eq!(msg, "path `%1%' is not valid");
    assert!(!d.dirs().store_path().join(dangling.path.base_name()).exists());
    // No C++ lock file is made (store-db is the only writer: see server::pathlock).
    assert!(!PathBuf::from(format!("{}/{}.lock", d.dirs().store_path().display(), dangling.path.base_name())).exists());

    // A stale invalid item at the final name is replaced.
    let stale_dest = d.dirs().store_path().join(good.path.base_name());
    std::fs::create_dir_all(stale_dest.join("junk")).unwrap();
    assert_eq!(
        rt.block_on(c.call(StoreDbRequest::AddItems { conn: conn(1), items: vec![good.clone()] })).unwrap(),
        StoreDbReply::Ok
    );
    assert_eq!(std::fs::read(&stale_dest).unwrap(), b"g");
    integrity_ok(&d);
}

/// An inline text item (`ItemSource::Text`, what AddTextToStore sends): `contents` announced
/// with its true NAR hash and size.
fn inline_text(d: &Daemon, name: &str, contents: &[u8]) -> NewItem {
    let path = d.store_dir().make_text_path(name, contents, []).unwrap();
    let summary = nar::summary_of_regular(contents, false);
    NewItem {
        source: ItemSource::Text(contents.to_vec()),
        path,
        nar_hash: summary.nar_hash,
        nar_size: summary.nar_size,
        references: vec![],
        deriver: None,
    }
}

#[test]
fn writes_inline_texts_at_their_final_name() {
    use std::os::unix::fs::MetadataExt;
    let d = Daemon::start();
    let rt = rt();
    let c = d.client();
    let r = d.reader();
    let add = |items: Vec<NewItem>| rt.block_on(c.call(StoreDbRequest::AddItems { conn: conn(1), items })).unwrap();

    // Written canonical (0444, mtime 1), registered, lock file gone, nothing in scratch.
    let a = inline_text(&d, "a.txt", b"inline\n");
    let dest = d.dirs().store_path().join(a.path.base_name());
    std::fs::create_dir_all(dest.join("stale")).unwrap(); // an invalid leftover goes first
    assert_eq!(add(vec![a.clone()]), StoreDbReply::Ok);
    assert_eq!(std::fs::read(&dest).unwrap(), b"inline\n");
    let md = std::fs::symlink_metadata(&dest).unwrap();
    assert_eq!((md.mode() & 0o7777, md.mtime()), (0o444, 1));
    assert_eq!(r.query_path_info(&a.path).unwrap().nar_hash, a.nar_hash);
    assert!(!PathBuf::from(format!("{}.lock", dest.display())).exists());
    assert_eq!(std::fs::read_dir(d.scratch()).unwrap().count(), 0);
    // Again: already valid, left alone.
    assert_eq!(add(vec![a.clone()]), StoreDbReply::Ok);

    // A text that does not match its announced hash: refused, nothing placed.
    let mut lying = inline_text(&d, "b.txt", b"honest");
    lying.source = ItemSource::Text(b"forged".to_vec());
    let msg = error_of(add(vec![lying.clone()]));
    assert!(msg.contains("does not match its announced NAR hash"), "{msg}");
    assert!(!d.dirs().store_path().join(lying.path.base_name()).exists());
    assert!(!r.is_valid(&lying.path).unwrap());

    // Over the size limit: refused before anything is done.
    let big = inline_text(&d, "big", &vec![b'x'; guix_ipc::store_db::MAX_INLINE_TEXT + 1]);
    let msg = error_of(add(vec![big.clone()]));
    assert!(msg.contains("exceeds the limit"), "{msg}");
    assert!(!d.dirs().store_path().join(big.path.base_name()).exists());
    integrity_ok(&d);
}

#[test]
fn survives_kill_9_in_a_loop() {
    let d = Daemon::start();
    let rt = rt();
    let client = Arc::new(d.client());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok: Arc<std::sync::Mutex<Vec<NewItem>>> = Arc::default();

    // Four writers adding items continuously, some chained by references.
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (client, stop, ok) = (client.clone(), stop.clone(), ok.clone());
        let scratch = d.scratch();
        let store = d.store_dir();
        tasks.push(rt.spawn(async move {
            let mut prev: Option<StorePath> = None;
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let contents = format!("writer {w} item {n} {}", "x".repeat((n as usize * 37) % 5000));
                let refs: Vec<StorePath> = prev.iter().cloned().collect();
                let path = store.make_text_path(&format!("w{w}-{n}"), contents.as_bytes(), &refs).unwrap();
                let item = scratch_item(&scratch, path.clone(), &text(&contents), refs);
                let reply = client.call(StoreDbRequest::AddItems { conn: conn(w), items: vec![item.clone()] }).await;
                match reply {
                    Ok(StoreDbReply::Ok) => {
                        ok.lock().unwrap().push(item);
                        prev = Some(path);
                    }
                    other => panic!("writer {w} item {n}: {other:?}"),
                }
                n += 1;
            }
        }));
    }

    let pids = d.kill_store_db_repeatedly(5, Duration::from_millis(400));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    assert!(pids.len() >= 5);

    let ok = ok.lock().unwrap();
    assert!(ok.len() > 20, "only {} items added", ok.len());
    let r = d.reader();
    for item in ok.iter() {
        let info = r.query_path_info(&item.path).unwrap();
        assert_eq!(info.nar_hash, item.nar_hash);
    }
    // Every registered path has its complete files.
    let all = r.query_all_valid_paths().unwrap();
    assert_eq!(all.len(), ok.len());
    for p in &all {
        let info = r.query_path_info(p).unwrap();
        let on_disk = d.dirs().store_path().join(p.base_name());
        let s = nar_of(&on_disk);
        assert_eq!((s.nar_hash, Some(s.nar_size)), (info.nar_hash, info.nar_size), "{}", on_disk.display());
    }
    integrity_ok(&d);
}

#[test]
fn sigterm_exits_zero() {
    let d = Daemon::start();
    let rt = rt();
    let c = d.client();
    let item = text_item(&d, "t", "t", vec![]);
    assert_eq!(
        rt.block_on(c.call(StoreDbRequest::AddItems { conn: conn(1), items: vec![item] })).unwrap(),
        StoreDbReply::Ok
    );
    let pid = d.store_db_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for(|| d.store_db_pid().is_some_and(|p| p != pid), "store-db restart");
    let (_, status, _) = d.sup.ctl(&["status"]);
    let line = status.lines().find(|l| l.starts_with("store-db")).unwrap().to_owned();
    assert!(line.contains("exit 0") || line.contains("status 0"), "{status}");
}

/// A writer that dies mid-restore leaves a half-written scratch item; when its successor
/// connects, store-db sweeps at once (not only every ten minutes).
#[test]
fn a_new_connection_sweeps_dead_writers_leftovers() {
    let d = Daemon::start();
    let rt = rt();
    // A pid that is certainly dead: a child that has exited and been reaped.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let leftover = d.scratch().join(format!("{dead_pid}-front-half-written"));
    std::fs::create_dir(&leftover).unwrap();
    std::fs::write(leftover.join("part"), b"half").unwrap();
    let live = d.scratch().join(format!("{}-still-writing", std::process::id()));
    std::fs::write(&live, b"mine").unwrap();
    // The writer's successor connects (the client connects on its first call).
    let c = d.client();
    assert_eq!(
        rt.block_on(c.call(StoreDbRequest::SyncConnections {
            holder: HolderId::this_process("test"),
            seq: 1,
            live: vec![],
            complete: true
        }))
        .unwrap(),
        StoreDbReply::Ok
    );
    wait_for(|| !leftover.exists(), "the dead writer's leftover to be swept");
    assert!(live.exists(), "a live writer's item was swept");
}

/// Connection `n` of this test process, as a temp-root holder.
fn conn(n: u64) -> RootStamp {
    static HOLDER: std::sync::OnceLock<HolderId> = std::sync::OnceLock::new();
    RootStamp { holder: HOLDER.get_or_init(|| HolderId::this_process("test")).clone(), conn: n, seq: 1 }
}

/// Tells store-db that every root holder has synced (none holds anything): collections may
/// begin.
async fn release_barrier(c: &StoreDbClient, seq: u64) {
    for component in guix_ipc::store_db::ROOT_HOLDERS {
        let holder = HolderId::this_process(component);
        let r = c.call(StoreDbRequest::SyncConnections { holder, seq, live: vec![], complete: true }).await;
        assert_eq!(r.unwrap(), StoreDbReply::Ok);
    }
}

async fn begin(c: &StoreDbClient) -> Result<(u64, Vec<StorePath>), String> {
    match c.call(StoreDbRequest::BeginCollection).await.unwrap() {
        StoreDbReply::CollectionBegun { id, temp_roots } => Ok((id, temp_roots)),
        StoreDbReply::Error(e) => Err(e.message),
        other => panic!("{other:?}"),
    }
}

fn delete(collection: u64, entries: &[(&StorePath, bool)]) -> StoreDbRequest {
    StoreDbRequest::DeleteDead(guix_ipc::store_db::DeadBatch {
        collection,
        entries: entries
            .iter()
            .map(|(p, valid)| guix_ipc::store_db::DeadEntry { name: p.base_name(), valid: *valid })
            .collect(),
        groups: Vec::new(),
        keep: guix_ipc::gc::KeepRules::default(),
        freed_before: 0,
        max_freed: u64::MAX,
        link_threshold: 1,
    })
}

/// Through the link, with the real process: no collection before the holders synced (after
/// every start), roots of a connection are refused, dead paths go to the trash, and a
/// collection does not survive a store-db restart (kill -9): its next batch is refused.
#[test]
fn collections_wait_for_the_barrier_and_do_not_survive_a_restart() {
    let d = Daemon::start();
    let rt = rt();
    let c = d.client();
    let a = text_item(&d, "a", "I am a", vec![]);
    let b = text_item(&d, "b", "I am b", vec![]);
    let (pa, pb) = (a.path.clone(), b.path.clone());
    rt.block_on(async {
        assert_eq!(
            c.call(StoreDbRequest::AddItems { conn: conn(1), items: vec![a, b] }).await.unwrap(),
            StoreDbReply::Ok
        );
        let refused = begin(&c).await.unwrap_err();
        assert!(refused.contains("waiting for the temp roots of builder, socket-front, substituter"), "{refused}");
        release_barrier(&c, 1).await;
        // `conn(1)` of the holder "test" still holds both: AddItems made them temp roots.
        let (id, roots) = begin(&c).await.unwrap();
        assert!(roots.contains(&pa) && roots.contains(&pb));
        let r = c.call(delete(id, &[(&pa, true)])).await.unwrap();
        let StoreDbReply::Deleted(o) = r else { panic!("{r:?}") };
        assert_eq!(o.kept, vec![(pa.base_name(), guix_ipc::store_db::KeptBecause::TempRoot)]);
        let closed = StoreDbRequest::ConnectionClosed { conn: RootStamp { seq: 2, ..conn(1) } };
        assert_eq!(c.call(closed).await.unwrap(), StoreDbReply::Ok);
        assert_eq!(c.call(StoreDbRequest::EndCollection { collection: id }).await.unwrap(), StoreDbReply::Ok);
        let (id, _) = begin(&c).await.unwrap();
        let r = c.call(delete(id, &[(&pa, true)])).await.unwrap();
        let StoreDbReply::Deleted(o) = r else { panic!("{r:?}") };
        assert_eq!(o.deleted.len(), 1, "{o:?}");
        assert!(!d.reader().is_valid(&pa).unwrap());
        assert!(!d.dirs().store_path().join(pa.base_name()).exists());
        // A file is unlinked at once (a directory would be in the trash).
        assert_eq!(o.deleted[0].trashed_as, None);
        assert!(!d.dirs().store_path().join("trash").join(pa.base_name()).exists());

        // kill -9: the collection is gone with the process, and the barrier is back.
        let pid = d.store_db_pid().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        wait_for(|| d.store_db_pid().is_some_and(|p| p != pid), "a new store-db");
        let r = c.call(delete(id, &[(&pb, true)])).await.unwrap();
        let StoreDbReply::Error(e) = r else { panic!("{r:?}") };
        assert_eq!(e.kind, guix_ipc::ErrorKind::Retryable, "{e:?}");
        assert!(e.message.contains("unknown garbage collection"));
        assert!(begin(&c).await.unwrap_err().contains("waiting for the temp roots"));
        release_barrier(&c, 3).await;
        let (id, _) = begin(&c).await.unwrap();
        let r = c.call(delete(id, &[(&pb, true)])).await.unwrap();
        let StoreDbReply::Deleted(o) = r else { panic!("{r:?}") };
        assert_eq!(o.deleted.len(), 1, "{o:?}");
    });
    assert!(d.reader().query_all_valid_paths().unwrap().is_empty());
    integrity_ok(&d);
}

/// `ReplaceItems` (repair): the valid path's files are swapped for the new ones, its row
/// updated (hash, size; registration time stays), the old files deleted; an invalid path in
/// the same request is added; a resend changes nothing.
#[test]
fn replaces_the_files_of_a_valid_path() {
    let d = Daemon::start();
    let rt = rt();
    let client = d.client();
    let store = d.store_dir();
    let path = store.make_text_path("repaired", b"good", &[]).unwrap();
    let first = scratch_item(&d.scratch(), path.clone(), &tree(), vec![]);
    let reply = rt.block_on(client.call(StoreDbRequest::AddItems { conn: conn(1), items: vec![first.clone()] }));
    assert_eq!(reply.unwrap(), StoreDbReply::Ok);
    let before = d.reader().query_path_info(&path).unwrap();
    let other = store.make_text_path("added-by-replace", b"x", &[]).unwrap();
    let items = vec![
        scratch_item(&d.scratch(), path.clone(), &text("new"), vec![]),
        text_item(&d, "added-by-replace", "x", vec![]),
    ];
    assert_eq!(items[1].path, other);
    let req = StoreDbRequest::ReplaceItems { conn: conn(1), items: items.clone() };
    assert_eq!(rt.block_on(client.call(req.clone())).unwrap(), StoreDbReply::Ok);
    let on_disk = d.dirs().store_path().join(path.base_name());
    assert_eq!(std::fs::read(&on_disk).unwrap(), b"new");
    let after = d.reader().query_path_info(&path).unwrap();
    assert_eq!((after.nar_hash, after.nar_size), (items[0].nar_hash, Some(items[0].nar_size)));
    assert_ne!(after.nar_hash, before.nar_hash);
    assert_eq!(after.registration_time, before.registration_time);
    assert!(d.reader().is_valid(&other).unwrap());
    // The old files and the scratch entries are gone.
    assert_eq!(
        std::fs::read_dir(d.scratch())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().unwrap().is_file() || e.file_type().unwrap().is_dir())
            .filter(|e| e.file_name() != "front")
            .count(),
        0
    );
    // Resent (its scratch entries gone): the files are already the announced ones.
    assert_eq!(rt.block_on(client.call(req)).unwrap(), StoreDbReply::Ok);
    assert_eq!(std::fs::read(&on_disk).unwrap(), b"new");
    // A resend after a kill between the swap and the commit: the scratch name holds the old
    // files and the path the new ones; nothing is swapped back.
    let stale = scratch_item(&d.scratch(), path.clone(), &tree(), vec![]);
    let resent = NewItem { nar_hash: items[0].nar_hash, nar_size: items[0].nar_size, ..stale };
    let reply = rt.block_on(client.call(StoreDbRequest::ReplaceItems { conn: conn(1), items: vec![resent] }));
    assert_eq!(reply.unwrap(), StoreDbReply::Ok);
    assert_eq!(std::fs::read(&on_disk).unwrap(), b"new");
    integrity_ok(&d);
}

/// A kill -9 of store-db at any moment of repeated replaces leaves the path valid with
/// complete files, never missing (watched meanwhile), and after the last reply the files and
/// the row are those of the last replace.
#[test]
fn a_replaced_path_survives_kill_9_in_a_loop() {
    let d = Daemon::start();
    let rt = rt();
    let client = Arc::new(d.client());
    let store = d.store_dir();
    let path = store.make_text_path("replaced", b"v", &[]).unwrap();
    let big = |n: u32| {
        let mut top = BTreeMap::new();
        for i in 0..200 {
            top.insert(format!("f{i}").into_bytes(), text(&format!("version {n} file {i}")));
        }
        Node::Directory(top)
    };
    let first = scratch_item(&d.scratch(), path.clone(), &big(0), vec![]);
    assert_eq!(
        rt.block_on(client.call(StoreDbRequest::AddItems { conn: conn(2), items: vec![first] })).unwrap(),
        StoreDbReply::Ok
    );
    let on_disk = d.dirs().store_path().join(path.base_name());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let missing = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, missing, on_disk) = (stop.clone(), missing.clone(), on_disk.clone());
        std::thread::spawn(move || {
            let mut looks = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if std::fs::symlink_metadata(&on_disk).is_err() {
                    missing.fetch_add(1, Ordering::Relaxed);
                }
                looks += 1;
            }
            looks
        })
    };
    let last: Arc<std::sync::Mutex<Option<NewItem>>> = Arc::default();
    let task = {
        let (client, stop, last, scratch, path) =
            (client.clone(), stop.clone(), last.clone(), d.scratch(), path.clone());
        rt.spawn(async move {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                let item = scratch_item(&scratch, path.clone(), &big(n), vec![]);
                let reply =
                    client.call(StoreDbRequest::ReplaceItems { conn: conn(2), items: vec![item.clone()] }).await;
                assert_eq!(reply.unwrap(), StoreDbReply::Ok, "replace {n}");
                *last.lock().unwrap() = Some(item);
                n += 1;
            }
            n
        })
    };
    let pids = d.kill_store_db_repeatedly(5, Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let replaces = rt.block_on(task).unwrap();
    let looks = watcher.join().unwrap();
    assert!(pids.len() >= 5);
    assert!(replaces > 10, "only {replaces} replaces");
    assert_eq!(missing.load(Ordering::Relaxed), 0, "the path was missing in some of {looks} looks");
    let last = last.lock().unwrap().clone().unwrap();
    let info = d.reader().query_path_info(&path).unwrap();
    let s = nar_of(&on_disk);
    assert_eq!((s.nar_hash, Some(s.nar_size)), (last.nar_hash, Some(last.nar_size)));
    assert_eq!((info.nar_hash, info.nar_size), (last.nar_hash, Some(last.nar_size)));
    integrity_ok(&d);
}

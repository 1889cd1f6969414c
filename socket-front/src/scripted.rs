//! Unit tests of the connection logic ([`crate::conn`], [`crate::ops`], [`crate::add`],
//! [`crate::transfer`]) against the in-memory store ([`MemoryStore`]), driven by scripted byte
//! streams over an in-memory pipe: the client's bytes are made with `guix_formats::worker`'s
//! encoders, and what the daemon sends is compared byte for byte with what the same encoders
//! make of the frames and replies the C++ daemon sends (spec: `protocol.md`). No root, no
//! store-db, no SQLite.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use guix_formats::export::{write_record, ExportTrailer, NarSource, Signature};
use guix_formats::signature::{Acl, SecretKey};
use guix_formats::wire::{put_bytes, put_u64};
use guix_formats::worker::{
    read_stderr, write_reply, write_request, write_stderr, Limits, Opcode, Reply, Request, StderrMsg, PROTOCOL_VERSION,
    STDERR_ERROR, STDERR_LAST, WORKER_MAGIC_1, WORKER_MAGIC_2,
};
use guix_formats::{nar, StoreDir, StorePath};
use guix_ipc::builder::BUILDER_LINK;
use guix_ipc::config::DaemonConfig;
use guix_ipc::store_db::{ConnId, ItemSource, NewItem, StoreDbRequest};
use guix_ipc::Client;
use guix_store::scratch::SCRATCH_DIR_NAME;
use guix_store::ValidPathInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use crate::backend::memory::{stamp, MemoryStore};
use crate::backend::StoreBackend;
use crate::build::BuilderLink;
use crate::conn::{path_info_reply, serve, Peer, Shared};
use crate::metrics::Metrics;
use guix_ipc::job::JobLimits;
use guix_store::scratch::Scratch;

mod build;

const V: u32 = PROTOCOL_VERSION;
const CONN: ConnId = 7;
/// No exchange here takes more than a few milliseconds; a hang fails the test instead.
const DEADLINE: Duration = Duration::from_secs(20);

/// A secret key with d = 1, so q is the base point: a fixture, good for nothing else.
const TEST_KEY: &[u8] = b"(private-key (ecc (curve Ed25519) \
    (q #5866666666666666666666666666666666666666666666666666666666666666#) (d #01#)))";

/// A daemon over a [`MemoryStore`], its store, state and configuration directories in a
/// temporary directory (the store's name stays `/gnu/store`).
struct Rig {
    _dir: tempfile::TempDir,
    shared: Arc<Shared<MemoryStore>>,
}

impl Rig {
    fn new() -> Rig {
        Rig::with_builder(JobLimits::default())
    }

    /// The builder link goes to `<dir>/builder.sock`, where nothing listens unless a test
    /// serves it ([`Rig::builder_socket`]), with `limits`.
    fn with_builder(limits: JobLimits) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mut config = DaemonConfig::default();
        for (field, name) in [
            (&mut config.paths.store_dir, "store"),
            (&mut config.paths.state_dir, "state"),
            (&mut config.paths.conf_dir, "conf"),
            (&mut config.paths.db_dir, "db"),
        ] {
            *field = dir.path().join(name);
            std::fs::create_dir(&*field).unwrap();
        }
        let store = StoreDir::default();
        let builder = Client::new(dir.path().join("builder.sock"), BUILDER_LINK, "socket-front", limits.call);
        let shared = Shared {
            backend: MemoryStore::new(store.clone(), config.paths.store_dir.clone())
                .with_conf_dir(config.paths.conf_dir.clone()),
            builder: BuilderLink::new(builder, limits),
            gc: crate::gc::GcLink::new(
                Client::new(dir.path().join("gc.sock"), guix_ipc::gc::GC_LINK, "socket-front", limits.call),
                limits,
            ),
            substituter: crate::substitute::SubstituterLink::new(Client::new(
                dir.path().join("substituter.sock"),
                guix_ipc::substituter::SUBSTITUTER_LINK,
                "socket-front",
                limits.call,
            )),
            scratch: Scratch::new(&config.paths.store_dir),
            metrics: Arc::new(Metrics::default()),
            limits: Limits::DEFAULT,
            nar_limits: nar::Limits::default(),
            daemon_uid: 0,
            memory: crate::budget::MemoryPool::default(),
            transfers: crate::transfer_pool::TransferPool::default(),
            store,
            config,
        };
        Rig { _dir: dir, shared: Arc::new(shared) }
    }

    fn store(&self) -> &StoreDir {
        &self.shared.store
    }

    fn builder_socket(&self) -> std::path::PathBuf {
        self._dir.path().join("builder.sock")
    }

    fn backend(&self) -> &MemoryStore {
        &self.shared.backend
    }

    fn on_disk(&self, p: &StorePath) -> std::path::PathBuf {
        self.shared.config.paths.store_dir.join(p.base_name())
    }

    /// A text item on disk and registered, as a previous AddTextToStore leaves it.
    fn valid_text(&self, name: &str, contents: &[u8]) -> ValidPathInfo {
        let path = self.store().make_text_path(name, contents, []).unwrap();
        std::fs::write(self.on_disk(&path), contents).unwrap();
        let summary = nar::summary_of_regular(contents, false);
        let info = ValidPathInfo {
            path,
            deriver: None,
            nar_hash: summary.nar_hash,
            references: BTreeSet::new(),
            registration_time: 1_700_000_000,
            nar_size: Some(summary.nar_size),
        };
        self.backend().insert(info.clone());
        info
    }

    fn trust(&self, key: &SecretKey) {
        let acl = Acl::new([key.public_key().to_sexp()]);
        std::fs::write(self.shared.config.paths.conf_dir.join("acl"), acl.to_advanced()).unwrap();
    }

    fn sign_with(&self, key: &[u8]) {
        let file = self.shared.config.paths.conf_dir.join("signing-key.sec");
        std::fs::write(&file, key).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// Serves one connection: sends `input`, then end of file; returns all the daemon sent
    /// until it closed the connection.
    async fn exchange(&self, input: &[u8]) -> Vec<u8> {
        let (client, server) = tokio::io::duplex(1 << 16);
        let task =
            tokio::spawn(serve(self.shared.clone(), CONN, Peer { uid: None, pid: None }, BufReader::new(server)));
        let (mut rd, mut wr) = tokio::io::split(client);
        let input = input.to_vec();
        let send = async move {
            // The daemon may close before reading everything (a fatal error): not ours to fail.
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        };
        let mut out = Vec::new();
        let (_, got) = tokio::time::timeout(DEADLINE, async { tokio::join!(send, rd.read_to_end(&mut out)) })
            .await
            .expect("the daemon neither answered nor closed");
        got.unwrap();
        tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
        out
    }

    /// ImportPaths of `export` (the client's container stream), answering each `STDERR_READ`
    /// as the Guile client does: returns the daemon's terminal frame and the bytes after it.
    async fn import(&self, export: &[u8]) -> (StderrMsg, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let task =
            tokio::spawn(serve(self.shared.clone(), CONN, Peer { uid: None, pid: None }, BufReader::new(server)));
        let run = async {
            let mut input = hello(V);
            input.extend(request(self.store(), &Request::ImportPaths).await);
            client.write_all(&input).await.unwrap();
            let mut greeting = vec![0u8; server_hello().len()];
            client.read_exact(&mut greeting).await.unwrap();
            assert_eq!(greeting, server_hello());
            let mut rest = export;
            let last = loop {
                match read_stderr(&mut client, V, &Limits::DEFAULT).await.unwrap() {
                    StderrMsg::Read(n) => {
                        let (chunk, tail) = rest.split_at(rest.len().min(n as usize));
                        rest = tail;
                        let mut answer = Vec::new();
                        put_bytes(&mut answer, chunk);
                        client.write_all(&answer).await.unwrap();
                    }
                    StderrMsg::Next(_) => {}
                    other => break other,
                }
            };
            client.shutdown().await.unwrap();
            let mut after = Vec::new();
            client.read_to_end(&mut after).await.unwrap();
            (last, after)
        };
        let out = tokio::time::timeout(DEADLINE, run).await.expect("ImportPaths hung");
        tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
        out
    }
}

/// The client's side of the handshake for `version` (the Guile client's words).
fn hello(version: u32) -> Vec<u8> {
    let mut b = Vec::new();
    put_u64(&mut b, WORKER_MAGIC_1.into());
    put_u64(&mut b, version.into());
    if version & 0xff >= 14 {
        put_u64(&mut b, 0); // no CPU affinity
    }
    if version & 0xff >= 11 {
        put_u64(&mut b, 0); // reserveSpace
    }
    b
}

/// The daemon's side of the handshake, up to and with `STDERR_LAST`.
fn server_hello() -> Vec<u8> {
    let mut b = Vec::new();
    put_u64(&mut b, WORKER_MAGIC_2.into());
    put_u64(&mut b, PROTOCOL_VERSION.into());
    put_u64(&mut b, STDERR_LAST.into());
    b
}

async fn request(store: &StoreDir, req: &Request) -> Vec<u8> {
    let mut b = Vec::new();
    write_request(&mut b, req, store, V).await.unwrap();
    b
}

async fn frame(msg: &StderrMsg) -> Vec<u8> {
    let mut b = Vec::new();
    write_stderr(&mut b, msg, V).await.unwrap();
    b
}

/// `STDERR_LAST` then `reply`.
async fn reply(store: &StoreDir, op: Opcode, reply: &Reply) -> Vec<u8> {
    let mut b = frame(&StderrMsg::Last).await;
    write_reply(&mut b, op, reply, store, V).await.unwrap();
    b
}

async fn error(msg: &str) -> Vec<u8> {
    frame(&StderrMsg::Error { msg: msg.into(), status: 1 }).await
}

fn cat(parts: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
    parts.into_iter().flatten().collect()
}

fn added_items(writes: &[StoreDbRequest]) -> Vec<NewItem> {
    writes
        .iter()
        .filter_map(|w| match w {
            StoreDbRequest::AddItems { items, .. } => Some(items.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn scratch_entries(rig: &Rig) -> usize {
    let dir = rig.shared.config.paths.store_dir.join(SCRATCH_DIR_NAME);
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn handshake_then_end_of_file() {
    let rig = Rig::new();
    let out = rig.exchange(&hello(V)).await;
    assert_eq!(out, server_hello());
    // The connection was opened and closed in the store too.
    assert_eq!(rig.backend().writes(), vec![StoreDbRequest::ConnectionClosed { conn: stamp(CONN) }]);
    assert!(rig.backend().state().temp_roots.is_empty());
}

#[tokio::test]
async fn a_wrong_magic_is_closed_without_a_frame() {
    let rig = Rig::new();
    let mut input = Vec::new();
    put_u64(&mut input, 0x1234_5678);
    put_u64(&mut input, V.into());
    assert_eq!(rig.exchange(&input).await, Vec::<u8>::new());
}

/// The C++ daemon checks no client version (verified down to 0x060, spec §2.1): an old client
/// is served, and its error frames carry no status (minor < 8).
#[tokio::test]
async fn an_old_client_is_served_and_gets_old_error_frames() {
    let rig = Rig::new();
    let mut input = hello(0x107);
    put_u64(&mut input, 2);
    let mut want = server_hello();
    put_u64(&mut want, STDERR_ERROR.into());
    put_bytes(&mut want, b"invalid operation 2");
    assert_eq!(rig.exchange(&input).await, want);
}

#[tokio::test]
async fn an_unknown_opcode_is_an_error_and_closes() {
    let rig = Rig::new();
    let info = rig.valid_text("x", b"x");
    let input =
        cat([hello(V), 2u64.to_le_bytes().to_vec(), request(rig.store(), &Request::QueryPathInfo(info.path)).await]);
    // Nothing after the error: the request that follows is not served.
    assert_eq!(rig.exchange(&input).await, cat([server_hello(), error("invalid operation 2").await]));
}

#[tokio::test]
async fn query_path_info_of_a_valid_and_an_invalid_path() {
    let rig = Rig::new();
    let info = rig.valid_text("valid", b"contents");
    let invalid = rig.store().make_text_path("invalid", b"", []).unwrap();
    let store = rig.store();
    let input = cat([
        hello(V),
        request(store, &Request::QueryPathInfo(info.path.clone())).await,
        request(store, &Request::QueryPathInfo(invalid.clone())).await,
        // Served again, from the reply kept encoded.
        request(store, &Request::QueryPathInfo(info.path.clone())).await,
    ]);
    let answer = reply(store, Opcode::QueryPathInfo, &Reply::PathInfo(path_info_reply(&info))).await;
    let want = cat([
        server_hello(),
        answer.clone(),
        // After startWork: reported, and the connection stays.
        error(&format!("path `{}' is not valid", store.display(&invalid))).await,
        answer,
    ]);
    assert_eq!(rig.exchange(&input).await, want);
}

#[tokio::test]
async fn add_text_to_store_registers_the_item() {
    let rig = Rig::new();
    let dep = rig.valid_text("dep", b"dep");
    let store = rig.store();
    let (name, contents) = ("hello.txt".to_owned(), b"hello, world\n".to_vec());
    let references: BTreeSet<StorePath> = [dep.path.clone()].into();
    let path = store.make_text_path(&name, &contents, &references).unwrap();
    let add = Request::AddTextToStore { name, contents: contents.clone(), references: references.clone() };
    let input =
        cat([hello(V), request(store, &add).await, request(store, &Request::QueryPathInfo(path.clone())).await]);
    let summary = nar::summary_of_regular(&contents, false);
    let info = ValidPathInfo {
        path: path.clone(),
        deriver: None,
        nar_hash: summary.nar_hash,
        references: references.clone(),
        registration_time: 1,
        nar_size: Some(summary.nar_size),
    };
    let want = cat([
        server_hello(),
        reply(store, Opcode::AddTextToStore, &Reply::Path(path.clone())).await,
        reply(store, Opcode::QueryPathInfo, &Reply::PathInfo(path_info_reply(&info))).await,
    ]);
    assert_eq!(rig.exchange(&input).await, want);
    let item = NewItem {
        source: ItemSource::Text(contents.clone()),
        path: path.clone(),
        nar_hash: summary.nar_hash,
        nar_size: summary.nar_size,
        references: vec![dep.path],
        deriver: None,
    };
    assert_eq!(added_items(&rig.backend().writes()), vec![item]);
    assert_eq!(std::fs::read(rig.on_disk(&path)).unwrap(), contents);
}

#[tokio::test]
async fn add_text_to_store_with_an_invalid_reference_registers_nothing() {
    let rig = Rig::new();
    let store = rig.store();
    let missing = store.make_text_path("missing", b"", []).unwrap();
    let add =
        Request::AddTextToStore { name: "t".into(), contents: b"t".to_vec(), references: [missing.clone()].into() };
    let input = cat([hello(V), request(store, &add).await, request(store, &Request::SyncWithGC).await]);
    let want = cat([
        server_hello(),
        error("path `%1%' is not valid").await,
        reply(store, Opcode::SyncWithGC, &Reply::Done).await,
    ]);
    assert_eq!(rig.exchange(&input).await, want);
    // store-db checks the references (socket-front sends the item as it is) and refuses it.
    let path = store.make_text_path("t", b"t", [&missing]).unwrap();
    assert!(!rig.backend().is_valid(&path).unwrap());
    assert!(std::fs::symlink_metadata(rig.on_disk(&path)).is_err());
}

/// The NAR of a regular file holding `contents`.
fn nar_of(contents: &[u8]) -> (Vec<u8>, nar::NarSummary) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, contents).unwrap();
    let mut out = Vec::new();
    let summary = nar::dump_path(&file, &mut out).unwrap();
    (out, summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn add_to_store_unpacks_the_nar_and_a_truncated_one_fails() {
    let rig = Rig::new();
    let store = rig.store();
    let add = Request::AddToStore { name: "file".into(), fixed: true, recursive: true, hash_algo: "sha256".into() };
    let (nar, summary) = nar_of(b"some file contents\n");
    let path = store.make_fixed_output_path(true, &summary.nar_hash, "file").unwrap();

    let whole = cat([hello(V), request(store, &add).await, nar.clone()]);
    let want = cat([server_hello(), reply(store, Opcode::AddToStore, &Reply::Path(path.clone())).await]);
    assert_eq!(rig.exchange(&whole).await, want);
    let items = added_items(&rig.backend().writes());
    assert_eq!(items.len(), 1);
    assert_eq!((&items[0].path, items[0].nar_hash, items[0].nar_size), (&path, summary.nar_hash, summary.nar_size));
    assert_eq!(std::fs::read(rig.on_disk(&path)).unwrap(), b"some file contents\n");

    let rig = Rig::new();
    let cut = cat([hello(V), request(store, &add).await, nar[..nar.len() - 24].to_vec()]);
    // Before startWork: the error, then the connection is closed.
    assert_eq!(rig.exchange(&cut).await, cat([server_hello(), error("unexpected end-of-file").await]));
    assert!(added_items(&rig.backend().writes()).is_empty());
    assert_eq!(scratch_entries(&rig), 0, "the partial item is removed");
}

/// The record ExportPath sends for `info`, as `write_record` makes it.
fn record_of(rig: &Rig, info: &ValidPathInfo, signature: Signature<'_>) -> Vec<u8> {
    let trailer = ExportTrailer {
        path: info.path.clone(),
        references: info.references.clone(),
        deriver: info.deriver.clone(),
        signature: None,
    };
    let mut out = Vec::new();
    write_record(&mut out, rig.store(), NarSource::Path(&rig.on_disk(&info.path)), &trailer, signature).unwrap();
    out
}

/// The data of the `STDERR_WRITE` frames at the start of `out`, and what follows them.
async fn written(mut out: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut data = Vec::new();
    loop {
        let before = out;
        match read_stderr(&mut out, V, &Limits::DEFAULT).await.unwrap() {
            StderrMsg::Write(chunk) => data.extend(chunk),
            _ => return (data, before.to_vec()),
        }
    }
}

/// "exporting path `P'": at `lvlInfo`, so sent to a client that did not lower the verbosity
/// with SetOptions (the worker's verbosity is the daemon's, `lvlInfo`, until then).
async fn exporting(store: &StoreDir, path: &StorePath) -> Vec<u8> {
    frame(&StderrMsg::Next(format!("exporting path `{}'\n", store.display(path)).into_bytes())).await
}

/// ExportPath of `path` with `sign` on a fresh connection: the exported record.
async fn export(rig: &Rig, path: &StorePath, sign: bool) -> Vec<u8> {
    let store = rig.store();
    let input = cat([hello(V), request(store, &Request::ExportPath { path: path.clone(), sign }).await]);
    let out = rig.exchange(&input).await;
    let rest = out.strip_prefix(&server_hello()[..]).expect("handshake");
    let rest = rest.strip_prefix(&exporting(store, path).await[..]).expect("exporting path");
    let (record, after) = written(rest).await;
    assert_eq!(after, reply(store, Opcode::ExportPath, &Reply::Done).await);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn export_sends_the_record_through_stderr_write() {
    let rig = Rig::new();
    let dep = rig.valid_text("dep", b"dep");
    let mut info = rig.valid_text("item", b"item contents");
    info.references = [dep.path.clone()].into();
    info.deriver = Some(rig.store().make_text_path("item.drv", b"", []).unwrap());
    rig.backend().insert(info.clone());
    assert_eq!(export(&rig, &info.path, false).await, record_of(&rig, &info, Signature::FromTrailer));

    let invalid = rig.store().make_text_path("invalid", b"", []).unwrap();
    let input =
        cat([hello(V), request(rig.store(), &Request::ExportPath { path: invalid.clone(), sign: false }).await]);
    let want = cat([
        server_hello(),
        exporting(rig.store(), &invalid).await,
        error(&format!("path `{}' is not valid", rig.store().display(&invalid))).await,
    ]);
    assert_eq!(rig.exchange(&input).await, want);
}

/// The container ImportPaths reads: each record after a 1, then a 0.
fn container(records: &[Vec<u8>]) -> Vec<u8> {
    let mut b = Vec::new();
    for r in records {
        put_u64(&mut b, 1);
        b.extend_from_slice(r);
    }
    put_u64(&mut b, 0);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn import_requires_a_good_signature_from_an_acl_key() {
    let key = SecretKey::parse(TEST_KEY).unwrap();
    let source = Rig::new();
    source.sign_with(TEST_KEY);
    let info = source.valid_text("imported", b"imported contents");
    let record = export(&source, &info.path, true).await;
    let store = source.store();

    // Trusted key: imported, registered with the exported info, rooted.
    let rig = Rig::new();
    rig.trust(&key);
    let (last, after) = rig.import(&container(std::slice::from_ref(&record))).await;
    assert_eq!(last, StderrMsg::Last);
    let mut want = Vec::new();
    write_reply(&mut want, Opcode::ImportPaths, &Reply::PathList(vec![info.path.clone()]), store, V).await.unwrap();
    assert_eq!(after, want);
    let got = rig.backend().path_info(&info.path).unwrap();
    assert_eq!((got.info.nar_hash, got.info.nar_size), (info.nar_hash, info.nar_size));
    assert_eq!(std::fs::read(rig.on_disk(&info.path)).unwrap(), b"imported contents");

    // The same record where no ACL trusts the key: refused, nothing registered.
    let rig = Rig::new();
    let (last, _) = rig.import(&container(std::slice::from_ref(&record))).await;
    let StderrMsg::Error { msg, .. } = last else { panic!("imported without an authorized key: {last:?}") };
    assert!(msg.starts_with("unauthorized public key: "), "{msg}");
    assert!(added_items(&rig.backend().writes()).is_empty());
    assert!(!rig.backend().is_valid(&info.path).unwrap());

    // Trusted key, but the contents changed after signing.
    let rig = Rig::new();
    rig.trust(&key);
    let mut forged = record.clone();
    let at = forged.windows(8).position(|w| w == b"imported").unwrap();
    forged[at] = b'I';
    let (last, _) = rig.import(&container(&[forged])).await;
    let StderrMsg::Error { msg, .. } = last else { panic!("a forged archive was imported: {last:?}") };
    assert!(msg.starts_with("signed hash doesn't match actual contents of imported archive"), "{msg}");
    assert!(added_items(&rig.backend().writes()).is_empty());
    assert!(!rig.backend().is_valid(&info.path).unwrap());
}

/// An item already valid is only rooted, not written or registered again (store-db's rule for
/// `AddItems`; a small text goes to store-db without a validity check of socket-front's own).
#[tokio::test]
async fn adding_a_valid_text_only_roots_it() {
    let rig = Rig::new();
    let info = rig.valid_text("again", b"again");
    let store = rig.store();
    let add =
        Request::AddTextToStore { name: "again".into(), contents: b"again".to_vec(), references: BTreeSet::new() };
    let input = cat([hello(V), request(store, &add).await]);
    let want = cat([server_hello(), reply(store, Opcode::AddTextToStore, &Reply::Path(info.path.clone())).await]);
    assert_eq!(rig.exchange(&input).await, want);
    let writes = rig.backend().writes();
    assert!(
        matches!(&writes[..], [StoreDbRequest::AddItems { conn, items }, StoreDbRequest::ConnectionClosed { conn: closed }]
            if items.len() == 1 && items[0].path == info.path && conn.conn == CONN && closed.conn == CONN),
        "{writes:?}"
    );
    assert_eq!(crate::backend::StoreReads::try_path_info(rig.backend(), &info.path).unwrap(), Some(info));
}

/// VerifyStore: a valid path whose files vanished is reported and invalidated; one still there
/// is left alone.
#[tokio::test]
async fn verify_store_invalidates_a_vanished_path() {
    let rig = Rig::new();
    let kept = rig.valid_text("kept", b"kept");
    let gone = rig.valid_text("gone", b"gone");
    std::fs::remove_file(rig.on_disk(&gone.path)).unwrap();
    let store = rig.store();
    let verify = Request::VerifyStore { check_contents: false, repair: false };
    let input = cat([hello(V), request(store, &verify).await]);
    let log = |line: &str| {
        let msg = StderrMsg::Next(format!("{line}\n").into_bytes());
        async move { frame(&msg).await }
    };
    let want = cat([
        server_hello(),
        log("reading the store...").await,
        log("checking path existence...").await,
        log(&format!("path `{}' disappeared, removing from database...", store.display(&gone.path))).await,
        reply(store, Opcode::VerifyStore, &Reply::Bool(false)).await,
    ]);
    assert_eq!(rig.exchange(&input).await, want);
    assert!(rig.backend().writes().contains(&StoreDbRequest::InvalidateMissing { paths: vec![gone.path.clone()] }));
    assert!(!rig.backend().is_valid(&gone.path).unwrap());
    assert!(rig.backend().is_valid(&kept.path).unwrap());
}

/// A client's socket is watched for reading only (`guix_ipc::quiet`): the daemon is not woken
/// each time its client reads a reply. Through the accept loop and a real Unix socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_clients_socket_is_watched_for_reading_only() {
    use guix_ipc::component::InheritedListener;
    use guix_ipc::quiet::watched_events;
    const EPOLLOUT: u32 = 0x4;
    let rig = Rig::new();
    let path = rig._dir.path().join("client.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let ids = Arc::new(crate::server::ConnIds::new(1));
    tokio::spawn(crate::server::accept_loop(rig.shared.clone(), ids, InheritedListener::Unix(listener)));
    let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let client = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        client.write_all(&hello(V)).unwrap();
        let mut got = vec![0u8; server_hello().len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, server_hello());
        client
    })
    .await
    .unwrap();
    // The daemon's end: the connected socket bound to our path in /proc/net/unix (accepted
    // sockets carry their listener's address), found among our descriptors by its inode.
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let inodes: Vec<String> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() == 8 && w[7] == path.to_str().unwrap() && w[5] == "03")
        .map(|w| w[6].to_owned())
        .collect();
    assert_eq!(inodes.len(), 1, "one accepted connection: {inodes:?}");
    let fd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == format!("socket:[{}]", inodes[0])))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
        .expect("the accepted socket is open here");
    let masks = watched_events(fd).unwrap();
    assert!(!masks.is_empty(), "the accepted socket is not registered with the runtime");
    assert!(masks.iter().all(|m| m & EPOLLOUT == 0), "watched for writability: {masks:x?}");
    drop(client);
}

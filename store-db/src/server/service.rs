//! Startup, request handling and shutdown of the store-db process.
//!
//! Startup ([`main`]): the configuration and the inherited listening socket `store-db` from
//! the supervisor ([`guix_ipc::component`]), [`StateDirs::init`] (directories, schema check,
//! big lock, reserved space), the scratch directory `<store>/.rs-scratch` (0700), one
//! [`DbWriter`] in the writer, a sweep of scratch leftovers (then every
//! [`SWEEP_INTERVAL`], and whenever a link connection is accepted), then one task per
//! connection ([`guix_ipc::serve_connection`]).
//!
//! Sweeping on accept: a writer that dies (socket-front killed while a client's NAR was
//! being restored) leaves a half-written scratch item; its restarted successor connects
//! anew, and by then the supervisor has reaped the dead one, so the sweep removes its debris
//! at once instead of up to [`SWEEP_INTERVAL`] later.
//!
//! Peers (`SO_PEERCRED` of each link connection, [`Peer`]): root (the builder, the
//! substituter, the gc, and socket-front when it runs as root), or socket-front's own user
//! (`config.socket_front_user`): its scratch items are taken over untrusted
//! ([`super::fsops::take_unprivileged`]) and it may not send what only the gc and the builder
//! send (collections, failed-path registration), nor speak for another holder's temp roots.
//! Any other uid is refused at once.
//!
//! SIGTERM/SIGINT: stop accepting connections, wait (at most [`DRAIN_TIMEOUT`]) until no
//! request is in flight, exit 0. Exiting earlier would be safe too (SQLite transactions,
//! idempotent requests retried by the callers); waiting only saves the callers a retry.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use guix_formats::StoreDir;
use guix_ipc::component::{config_from_env, inherited_link_listener};
use guix_ipc::store_db::{NewItem, RootStamp, StoreDbReply, StoreDbRequest, STORE_DB_LINK};
use guix_ipc::{Call, Handler, LinkError};

use super::collect::{BatchError, DeadRun};
use super::fsops::{check_item, ensure_scratch_dir, ensure_user_profile, remove_scratch_copies, take_unprivileged};
use super::pathlock::PathLockTable;
use super::roots::{add_indirect_root, TempRoots};
use super::writer::{self, Job, StoreLayout, WriterHandle, WriterOptions};
use crate::epoch::Epoch;
use crate::{DbOptions, DbWriter, InitOptions, StateDirs};

/// How often scratch leftovers of dead writers are removed (besides at startup).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// How long SIGTERM waits for requests in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// The holder name of socket-front (`ROOT_HOLDERS`), the only one its user may speak for.
const SOCKET_FRONT: &str = "socket-front";

/// Who is on the other end of a link connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Root: every request, scratch items trusted (their writers are root).
    Root,
    /// socket-front running as its own user (this uid).
    Unprivileged { uid: u32 },
}

/// The state shared by every connection.
pub struct StoreDb {
    layout: StoreLayout,
    state_dir: PathBuf,
    /// `<conf>`: the signing key.
    conf_dir: PathBuf,
    /// `auto-optimise-store`, for items taken over from socket-front.
    deduplicate: bool,
    writer: WriterHandle,
    locks: Arc<PathLockTable>,
    temp_roots: Arc<TempRoots>,
    inflight: AtomicUsize,
}

impl StoreDb {
    pub fn new(layout: StoreLayout, state_dir: PathBuf, writer: WriterHandle) -> StoreDb {
        StoreDb {
            layout,
            conf_dir: PathBuf::from(guix_ipc::config::DEFAULT_CONF_DIR),
            deduplicate: true,
            state_dir,
            writer,
            locks: PathLockTable::new(),
            temp_roots: Arc::new(TempRoots::default()),
            inflight: AtomicUsize::new(0),
        }
    }

    /// The temp roots of the callers' connections (for the GC).
    pub fn temp_roots(&self) -> &Arc<TempRoots> {
        &self.temp_roots
    }

    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    /// Requests being handled right now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// The configuration directory (the signing key) and `auto-optimise-store`.
    pub fn with_config(mut self, conf_dir: PathBuf, deduplicate: bool) -> StoreDb {
        self.conf_dir = conf_dir;
        self.deduplicate = deduplicate;
        self
    }

    /// Handles one request from root.
    pub async fn execute(&self, req: StoreDbRequest) -> StoreDbReply {
        self.execute_for(Peer::Root, req).await
    }

    /// Handles one request from `peer`.
    pub async fn execute_for(&self, peer: Peer, req: StoreDbRequest) -> StoreDbReply {
        if let Peer::Unprivileged { uid } = peer {
            if matches!(
                req,
                StoreDbRequest::BeginCollection
                    | StoreDbRequest::DeleteDead(_)
                    | StoreDbRequest::EndCollection { .. }
                    | StoreDbRequest::RegisterFailedPaths { .. }
            ) {
                return StoreDbReply::Error(LinkError::client(format!(
                    "this request is not permitted to uid {uid} (socket-front's user)"
                )));
            }
            // It speaks for its own temp roots only (not the builder's or the substituter's).
            let holder = match &req {
                StoreDbRequest::AddItems { conn, .. }
                | StoreDbRequest::ReplaceItems { conn, .. }
                | StoreDbRequest::AddTempRoots { conn, .. }
                | StoreDbRequest::ConnectionClosed { conn } => Some(&conn.holder),
                StoreDbRequest::SyncConnections { holder, .. } => Some(holder),
                _ => None,
            };
            if let Some(h) = holder.filter(|h| h.component != SOCKET_FRONT) {
                return StoreDbReply::Error(LinkError::client(format!(
                    "uid {uid} (socket-front's user) may not hold temp roots for `{}'",
                    h.component
                )));
            }
        }
        // Temp-root messages: applied by `TempRoots` at once, answered once settled (see
        // `roots`).
        let req = match self.temp_roots.take(req) {
            Ok(settle) => {
                settle.settled().await;
                return StoreDbReply::Ok;
            }
            Err(req) => req,
        };
        let res = match req {
            StoreDbRequest::AddItems { conn, items } => self.add_items(peer, &conn, items, false).await,
            StoreDbRequest::ReplaceItems { conn, items } => self.add_items(peer, &conn, items, true).await,
            StoreDbRequest::EnsureUserProfile { uid } => {
                let state = self.state_dir.clone();
                tokio::task::spawn_blocking(move || ensure_user_profile(&state, uid))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            }
            StoreDbRequest::SignDigest { digest } => {
                let key = self.conf_dir.join(guix_store::signing::SIGNING_KEY_FILE);
                return match tokio::task::spawn_blocking(move || guix_store::signing::sign_digest(&key, &digest)).await
                {
                    Ok(Ok(sig)) => StoreDbReply::Signature(sig),
                    Ok(Err(message)) => StoreDbReply::Error(LinkError::client(message)),
                    Err(e) => StoreDbReply::Error(LinkError::internal(e.to_string())),
                };
            }
            StoreDbRequest::AddTempRoots { .. }
            | StoreDbRequest::ConnectionClosed { .. }
            | StoreDbRequest::SyncConnections { .. } => Ok(()),
            StoreDbRequest::AddIndirectRoot { path } => {
                let state = self.state_dir.clone();
                tokio::task::spawn_blocking(move || add_indirect_root(&state, &path).map(|_| ()))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            }
            StoreDbRequest::ClearFailedPaths { paths } => {
                self.writer.run(|reply| Job::ClearFailed { paths, reply }).await
            }
            StoreDbRequest::RegisterFailedPaths { paths } => {
                self.writer.run(|reply| Job::RegisterFailed { paths, reply }).await
            }
            StoreDbRequest::InvalidateMissing { paths } => {
                self.writer.run(|reply| Job::InvalidateMissing { paths, reply }).await
            }
            StoreDbRequest::BeginCollection => {
                return match self.temp_roots.begin_collection() {
                    Ok((id, roots)) => StoreDbReply::CollectionBegun { id, temp_roots: roots.into_iter().collect() },
                    Err(waiting) => StoreDbReply::Error(LinkError::retryable(format!(
                        "not collecting garbage yet: waiting for the temp roots of {} after a store-db start",
                        waiting.join(", ")
                    ))),
                };
            }
            StoreDbRequest::DeleteDead(batch) => {
                let roots = self.temp_roots.clone();
                let run = match DeadRun::new(batch) {
                    Ok(run) => Box::new(run),
                    Err(e) => return StoreDbReply::Error(LinkError::client(e.to_string())),
                };
                return match self.writer.run_for(|reply| Job::DeleteDead { run, roots, reply }).await {
                    Ok(Ok(outcome)) => StoreDbReply::Deleted(outcome),
                    // Typed for the gc: a retryable error makes it begin a new collection.
                    Ok(Err(e @ BatchError::UnknownCollection(_))) => {
                        StoreDbReply::Error(LinkError::retryable(e.to_string()))
                    }
                    Ok(Err(BatchError::Failed(message))) | Err(message) => {
                        StoreDbReply::Error(LinkError::client(message))
                    }
                };
            }
            StoreDbRequest::EndCollection { collection } => {
                self.temp_roots.end_collection(collection);
                Ok(())
            }
        };
        match res {
            Ok(()) => StoreDbReply::Ok,
            Err(message) => StoreDbReply::Error(LinkError::client(message)),
        }
    }

    /// `AddItems`, or with `replace` `ReplaceItems`.
    async fn add_items(&self, peer: Peer, conn: &RootStamp, items: Vec<NewItem>, replace: bool) -> Result<(), String> {
        // As `addToStore`: the path is a temp root of the connection before it is valid. Also
        // when the request fails: the holder counts on store-db holding the roots of every
        // request it got an answer to.
        self.temp_roots.add(conn, items.iter().map(|i| i.path.clone())).settled().await;
        if let Some(bad) = items.iter().find_map(|i| check_item(i).err()) {
            // socket-front removes its own copies (we do not walk its directory).
            if peer == Peer::Root {
                remove_scratch_copies(&self.layout.scratch, &items);
            }
            return Err(bad);
        }
        if let Peer::Unprivileged { uid } = peer {
            self.take_items(uid, &items).await?;
        }
        let finals = items.iter().map(|i| self.layout.store_path.join(i.path.base_name())).collect();
        let locks = self.locks.lock(finals).await;
        let res = if replace {
            self.writer.run(|reply| Job::Replace { items, reply }).await
        } else {
            self.writer.run(|reply| Job::Add { items, reply }).await
        };
        drop(locks);
        res
    }
}

impl StoreDb {
    /// socket-front's scratch items, moved into our scratch directory and taken over (see
    /// [`super::fsops`]); on error, those already taken are removed.
    async fn take_items(&self, uid: u32, items: &[NewItem]) -> Result<(), String> {
        let todo: Vec<(String, u64)> =
            items.iter().filter_map(|i| i.scratch_name().map(|n| (n.to_owned(), i.nar_size))).collect();
        if todo.is_empty() {
            return Ok(());
        }
        let (store, scratch, dedup) = (self.layout.store_path.clone(), self.layout.scratch.clone(), self.deduplicate);
        tokio::task::spawn_blocking(move || {
            for (i, (name, nar_size)) in todo.iter().enumerate() {
                if let Err(e) = take_unprivileged(&store, &scratch, name, *nar_size, uid, dedup) {
                    for (done, _) in &todo[..i] {
                        let _ = super::fsops::remove_untrusted(&scratch.join(done));
                    }
                    return Err(e);
                }
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    }
}

/// The handler of the `store-db` link for one connection, with its peer's privileges.
pub struct PeerService {
    db: Arc<StoreDb>,
    peer: Peer,
}

struct Inflight(Arc<StoreDb>);
impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Handler for PeerService {
    type Req = StoreDbRequest;
    type Resp = StoreDbReply;
    type Item = ();
    fn handle(
        self: &Arc<Self>,
        _call: Call<()>,
        req: StoreDbRequest,
    ) -> impl std::future::Future<Output = StoreDbReply> + Send + 'static {
        handle_for(&self.db, self.peer, req)
    }
}

fn handle_for(
    db: &Arc<StoreDb>,
    peer: Peer,
    req: StoreDbRequest,
) -> impl std::future::Future<Output = StoreDbReply> + Send + 'static {
    let db = db.clone();
    db.inflight.fetch_add(1, Ordering::SeqCst);
    let guard = Inflight(db.clone());
    async move {
        let r = db.execute_for(peer, req).await;
        drop(guard);
        r
    }
}

/// Who `stream`'s peer is: root, socket-front's user, or someone to refuse (`None`).
fn classify(stream: &tokio::net::UnixStream, front: Option<guix_ipc::config::UnprivilegedUser>) -> Option<Peer> {
    let uid = stream.peer_cred().ok()?.uid();
    match front {
        _ if uid == 0 => Some(Peer::Root),
        Some(f) if f.uid == uid => Some(Peer::Unprivileged { uid }),
        _ => None,
    }
}

/// Why store-db could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Component(#[from] guix_ipc::component::ComponentError),
    #[error("no inherited listening socket `store-db'")]
    NoListener,
    #[error("{0}")]
    Store(#[from] crate::Error),
    #[error("the store is read-only (cannot open the big lock)")]
    ReadOnly,
    #[error("opening the change epoch `{}': {1}", .0.display())]
    Epoch(PathBuf, std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The program: returns the exit status.
pub fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guix-store-db: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), StartError> {
    let config = config_from_env()?;
    let listener = inherited_link_listener(STORE_DB_LINK.name)?.ok_or(StartError::NoListener)?;
    let dirs = StateDirs::from_config(&config);
    let lock =
        dirs.init(&InitOptions { build_users_group: config.build_users_group.clone(), ..InitOptions::default() })?;
    if lock.read_only() {
        return Err(StartError::ReadOnly);
    }
    let store_dir: StoreDir = dirs.store_dir()?;
    let scratch = dirs.scratch_dir();
    ensure_scratch_dir(&scratch, config.socket_front_user)?;
    let mut db = DbWriter::open(dirs.db_dir(), store_dir.clone(), &lock, &DbOptions::default())?;
    // The writer's connection made the database WAL: from now on checkpoints happen beside it.
    crate::db::spawn_checkpointer(dirs.db_dir())?;
    let epoch_path = dirs.epoch_path();
    let epoch = Epoch::open(&epoch_path).map_err(|e| StartError::Epoch(epoch_path.clone(), e))?;
    db.set_epoch(Arc::new(epoch));
    let layout = StoreLayout { store_path: dirs.store_path().to_owned(), store_dir, scratch };
    let opts = WriterOptions { deduplicate: config.auto_optimise_store, ..WriterOptions::default() };
    let writer = writer::new(db, layout.clone(), opts);
    writer.send(Job::Sweep);
    let state = Arc::new(
        StoreDb::new(layout, config.paths.state_dir.clone(), writer)
            .with_config(config.paths.conf_dir.clone(), config.auto_optimise_store),
    );

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(listener, state.clone(), config.socket_front_user))?;
    drop(rt);
    drop(state);
    drop(lock);
    Ok(())
}

/// Accepts connections until SIGTERM/SIGINT, then drains.
async fn serve(
    listener: std::os::unix::net::UnixListener,
    state: Arc<StoreDb>,
    front: Option<guix_ipc::config::UnprivilegedUser>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.tick().await;
    let who = format!("store-db[{}]", std::process::id());
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let Some(peer) = classify(&stream, front) else {
                        eprintln!("guix-store-db: refusing a link connection from {:?}", stream.peer_cred());
                        continue;
                    };
                    // A new peer may be the successor of a writer that died: sweep.
                    state.writer().send_in_background(Job::Sweep);
                    let service = Arc::new(PeerService { db: state.clone(), peer });
                    let who = who.clone();
                    tokio::spawn(async move {
                        if let Err(e) = guix_ipc::serve_connection(stream, STORE_DB_LINK, &who, service).await {
                            eprintln!("guix-store-db: connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    eprintln!("guix-store-db: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = sweep.tick() => state.writer().send_in_background(Job::Sweep),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    let start = std::time::Instant::now();
    while state.inflight() > 0 && start.elapsed() < DRAIN_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

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

use super::collect::BatchError;
use super::fsops::{check_item, ensure_scratch_dir, remove_scratch_copies};
use super::pathlock::PathLockTable;
use super::roots::{add_indirect_root, TempRoots};
use super::writer::{self, Job, StoreLayout, WriterHandle, WriterOptions};
use crate::epoch::Epoch;
use crate::{DbOptions, DbWriter, InitOptions, StateDirs};

/// How often scratch leftovers of dead writers are removed (besides at startup).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// How long SIGTERM waits for requests in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// The state shared by every connection.
pub struct StoreDb {
    layout: StoreLayout,
    state_dir: PathBuf,
    writer: WriterHandle,
    locks: Arc<PathLockTable>,
    temp_roots: Arc<TempRoots>,
    inflight: AtomicUsize,
}

impl StoreDb {
    pub fn new(layout: StoreLayout, state_dir: PathBuf, writer: WriterHandle) -> StoreDb {
        StoreDb {
            layout,
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

    /// Handles one request.
    pub async fn execute(&self, req: StoreDbRequest) -> StoreDbReply {
        // Temp-root messages: applied by `TempRoots` under its lock (see `roots`).
        let Some(req) = self.temp_roots.take(req) else { return StoreDbReply::Ok };
        let res = match req {
            StoreDbRequest::AddItems { conn, items } => self.add_items(&conn, items).await,
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
                return match self.writer.run_for(|reply| Job::DeleteDead { batch, roots, reply }).await {
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

    async fn add_items(&self, conn: &RootStamp, items: Vec<NewItem>) -> Result<(), String> {
        // As `addToStore`: the path is a temp root of the connection before it is valid. Also
        // when the request fails: the holder counts on store-db holding the roots of every
        // request it got an answer to.
        self.temp_roots.add(conn, items.iter().map(|i| i.path.clone()));
        if let Some(bad) = items.iter().find_map(|i| check_item(i).err()) {
            remove_scratch_copies(&self.layout.scratch, &items);
            return Err(bad);
        }
        let finals = items.iter().map(|i| self.layout.store_path.join(i.path.base_name())).collect();
        let locks = self.locks.lock(finals).await;
        let res = self.writer.run(|reply| Job::Add { items, reply }).await;
        drop(locks);
        res
    }
}

/// The handler of the `store-db` link.
pub struct Service(pub Arc<StoreDb>);

struct Inflight(Arc<StoreDb>);
impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Handler for Service {
    type Req = StoreDbRequest;
    type Resp = StoreDbReply;
    type Item = ();
    fn handle(
        self: &Arc<Self>,
        _call: Call<()>,
        req: StoreDbRequest,
    ) -> impl std::future::Future<Output = StoreDbReply> + Send + 'static {
        let db = self.0.clone();
        db.inflight.fetch_add(1, Ordering::SeqCst);
        let guard = Inflight(db.clone());
        async move {
            let r = db.execute(req).await;
            drop(guard);
            r
        }
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
    ensure_scratch_dir(&scratch)?;
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
    let state = Arc::new(StoreDb::new(layout, config.paths.state_dir.clone(), writer));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(listener, state.clone()))?;
    drop(rt);
    drop(state);
    drop(lock);
    Ok(())
}

/// Accepts connections until SIGTERM/SIGINT, then drains.
async fn serve(listener: std::os::unix::net::UnixListener, state: Arc<StoreDb>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let service = Arc::new(Service(state.clone()));
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.tick().await;
    let who = format!("store-db[{}]", std::process::id());
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    // A new peer may be the successor of a writer that died: sweep.
                    state.writer().send_in_background(Job::Sweep);
                    let service = service.clone();
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

//! The gc process: startup (configuration, the inherited `gc` listener, a lower CPU and I/O
//! priority so that serving clients wins), the serving loop, SIGTERM; and its store-db client
//! ([`StoreDbLink`]).

use std::sync::Arc;

use guix_formats::{StoreDir, StorePath};
use guix_ipc::component::{config_from_env, connect_link, inherited_link_listener};
use guix_ipc::gc::GC_LINK;
use guix_ipc::store_db::{CollectionId, DeadBatch, DeleteOutcome, StoreDbReply, StoreDbRequest, STORE_DB_LINK};
use guix_ipc::{Client, LinkError, DEFAULT_DEADLINE};

use crate::collect::{Limits, Setup, StoreDbApi};
use crate::error::{Error, Result};
use crate::server::Server;

/// The `store-db` link as the gc uses it (every call bounded by [`DEFAULT_DEADLINE`]).
pub struct StoreDbLink {
    client: Client<StoreDbRequest, StoreDbReply, ()>,
}

impl StoreDbLink {
    pub fn new(client: Client<StoreDbRequest, StoreDbReply, ()>) -> StoreDbLink {
        StoreDbLink { client }
    }

    async fn call(&self, req: StoreDbRequest) -> std::result::Result<StoreDbReply, LinkError> {
        match self.client.call(req).await {
            Ok(StoreDbReply::Error(e)) => Err(e),
            Ok(r) => Ok(r),
            Err(e) => Err(LinkError::from(e)),
        }
    }
}

fn unexpected(r: StoreDbReply) -> LinkError {
    LinkError::internal(format!("unexpected store-db reply {r:?}"))
}

impl StoreDbApi for StoreDbLink {
    async fn begin(&self) -> std::result::Result<(CollectionId, Vec<StorePath>), LinkError> {
        match self.call(StoreDbRequest::BeginCollection).await? {
            StoreDbReply::CollectionBegun { id, temp_roots } => Ok((id, temp_roots)),
            r => Err(unexpected(r)),
        }
    }

    async fn delete_dead(&self, batch: DeadBatch) -> std::result::Result<DeleteOutcome, LinkError> {
        match self.call(StoreDbRequest::DeleteDead(batch)).await? {
            StoreDbReply::Deleted(o) => Ok(o),
            r => Err(unexpected(r)),
        }
    }

    async fn end(&self, collection: CollectionId) {
        // A lost EndCollection only makes store-db record roots until the lease expires.
        if let Err(e) = self.call(StoreDbRequest::EndCollection { collection }).await {
            eprintln!("guix-gc: ending collection {collection}: {}", e.message);
        }
    }
}

/// OptimiseStore: every valid path, deduplicated (`guix_store::optimise::optimise_store`,
/// which prints C++'s summary).
pub fn optimise(setup: &Setup, log: &mut dyn FnMut(u32, String)) -> Result<()> {
    let reader = guix_store::DbReader::open(&setup.db_dir, setup.store.clone())?;
    let paths = reader.query_all_valid_paths()?;
    let store = setup.store.clone();
    let mut it = paths.into_iter().map(|p| std::path::PathBuf::from(store.display(&p)));
    let links = setup.store_dir.join(".links");
    guix_store::optimise::optimise_store(&setup.store_dir, &links, &mut it, log)
        .map_err(|e| Error::Client(e.to_string()))?;
    Ok(())
}

/// Nice 10 and the idle I/O class for this thread and every thread started after it (both
/// are per thread on Linux and inherited): a collection yields to the components serving
/// clients on a busy machine.
pub fn lower_priority() {
    let _ = guix_store::sched::set_thread_nice(10);
    let _ = guix_store::sched::set_thread_io_idle();
}

pub fn main() -> std::process::ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "--list-busy") {
        return list_busy();
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guix-gc: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `guix-gc --list-busy`: what `guix gc --list-busy` prints, from [`crate::busy`] (the store
/// is `$NIX_STORE_DIR`, else `/gnu/store`, as for Guile).
fn list_busy() -> std::process::ExitCode {
    let store = std::env::var("NIX_STORE_DIR").unwrap_or_else(|_| "/gnu/store".to_owned());
    match crate::busy::busy_store_items(std::path::Path::new("/proc"), &store) {
        Ok(items) => {
            for i in items {
                println!("{store}/{i}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("guix-gc: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let config = config_from_env()?;
    let listener = inherited_link_listener(GC_LINK.name)?.ok_or("no `gc' listener was passed")?;
    let store = StoreDir::new(&config.paths.store_dir.to_string_lossy())?;
    let setup = Setup {
        store,
        store_dir: config.paths.store_dir.clone(),
        db_dir: config.paths.db_dir.clone(),
        state_dir: config.paths.state_dir.clone(),
        proc_dir: Some(std::path::PathBuf::from("/proc")),
        auto_optimise: config.auto_optimise_store,
    };
    lower_priority();
    let client = connect_link(&config, STORE_DB_LINK, "gc", DEFAULT_DEADLINE);
    let server = Server::new(StoreDbLink::new(client), setup, Limits::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(listener, server))?;
    Ok(())
}

/// Accepts connections until SIGTERM/SIGINT; a collection in flight stops with the process
/// (store-db's lease ends its collection; what was trashed is deleted by the next one).
async fn serve(listener: std::os::unix::net::UnixListener, server: Arc<Server<StoreDbLink>>) -> std::io::Result<()> {
    guix_ipc::server::serve_until_signalled(listener, GC_LINK, "guix-gc", server).await
}

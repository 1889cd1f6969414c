//! The substituter process: startup, the link server loop, SIGTERM. It holds temp roots as a
//! holder of its own (`substituter`), synced with store-db like socket-front's; downloads in
//! flight die with it (their scratch entries are swept by store-db as a dead writer's).

use std::sync::Arc;

use guix_formats::StoreDir;
use guix_ipc::component::{config_from_env, inherited_link_listener};
use guix_ipc::substituter::SUBSTITUTER_LINK;
use guix_store::storedb::StoreDb;

use crate::server::Server;
use crate::substitute::{allow_unauthenticated, Substituter, HOLDER};

pub fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guix-substituter: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = config_from_env()?;
    let listener = inherited_link_listener(SUBSTITUTER_LINK.name)?.ok_or("no `substituter' listener was passed")?;
    let store = StoreDir::new(&config.paths.store_dir.to_string_lossy())?;
    // Read from the environment the supervisor was started with, as `guix substitute` reads
    // it from the C++ daemon's.
    let allow = allow_unauthenticated(std::env::var("GUIX_ALLOW_UNAUTHENTICATED_SUBSTITUTES").ok().as_deref());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let storedb = StoreDb::new(&config, HOLDER);
        let subst = Arc::new(Substituter::new(config, store, storedb, allow)?);
        serve(listener, subst).await.map_err(|e| e.to_string())
    })?;
    Ok(())
}

/// Accepts connections until SIGTERM/SIGINT; downloads in flight die with the process.
async fn serve(listener: std::os::unix::net::UnixListener, subst: Arc<Substituter>) -> std::io::Result<()> {
    {
        let s = subst.clone();
        tokio::spawn(async move { s.storedb.maintain().await });
    }
    guix_ipc::serve_until_signalled(listener, SUBSTITUTER_LINK, "guix-substituter", Server::new(subst)).await
}

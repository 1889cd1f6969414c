//! The builder process: startup, the link server loop, SIGTERM.
//!
//! At startup, before serving, it clears what a builder killed in the middle of builds left:
//! the processes of every build user (its builds die with it, but a stray one must not run on)
//! the `<drv>.chroot` directories in the store, and the build directories it had noted
//! (`schedule::build_dirs_journal`). Then it holds temp roots as a holder of its
//! own (`builder`), synced with store-db like socket-front's.

use std::path::Path;
use std::sync::Arc;

use guix_formats::StoreDir;
use guix_ipc::builder::BUILDER_LINK;
use guix_ipc::component::{config_from_env, inherited_link_listener};

use crate::schedule::Builder;
use crate::server::Server;
use crate::users::UserPool;

pub fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guix-builder: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = config_from_env()?;
    let listener = inherited_link_listener(BUILDER_LINK.name)?.ok_or("no `builder' listener was passed")?;
    let store = StoreDir::new(&config.paths.store_dir.to_string_lossy())?;
    let users = match config.build_users_group.as_deref() {
        Some(g) if !g.is_empty() => Some(UserPool::new(g, &config.paths.state_dir).map_err(|e| e.to_string())),
        _ => None,
    };
    if let Some(Ok(pool)) = &users {
        // Every free build user once: releasing one kills its processes (a dead builder's
        // builds; `BuildUser`'s drop, synchronous here, outside the runtime); users locked by
        // another process are left alone.
        let mut held = Vec::new();
        while let Ok(Some(u)) = pool.try_acquire() {
            held.push(u);
        }
        drop(held);
    }
    remove_stale_chroots(&config.paths.store_dir);
    crate::schedule::remove_journalled_build_dirs(&config);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(listener, Arc::new(Builder::new(config, store, users))))?;
    Ok(())
}

/// Removes `<store>/*.chroot`: no build runs before we serve, so each is a dead build's.
fn remove_stale_chroots(store_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(store_dir) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().ends_with(".chroot") {
            if let Err(err) = guix_store::files::delete_tree(&e.path()) {
                eprintln!("guix-builder: removing `{}': {err}", e.path().display());
            }
        }
    }
}

/// Accepts connections until SIGTERM/SIGINT; builds in flight die with the process.
async fn serve(listener: std::os::unix::net::UnixListener, builder: Arc<Builder>) -> std::io::Result<()> {
    {
        let b = builder.clone();
        tokio::spawn(async move { b.storedb.maintain().await });
    }
    guix_ipc::server::serve_until_signalled(listener, BUILDER_LINK, "guix-builder", Server::new(builder)).await
}

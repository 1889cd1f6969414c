//! A store-db that cannot start: the real supervisor, the real socket-front, and in place of
//! `guix-store-db` a stand-in script that exits at once (what a broken installation or a
//! database that cannot be opened looks like from outside). The supervisor keeps the link
//! socket, so socket-front's connection is queued and never answered. A client's
//! AddTextToStore must then fail with a clear error within the link's deadline instead of
//! waiting forever.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guix_client::{ClientError, DaemonClient};
use guix_store::storedb::STORE_DB_DEADLINE;
use guix_store_db::{DbOptions, DbWriter, InitOptions, StateDirs};
use guix_tests::supervised::{self, Program, Supervised};

fn supervisor_bin() -> PathBuf {
    supervised::built_on_demand(
        guix_tests::target_dir().join("guix-daemon-rs"),
        &["-p", "guix-supervisor", "--bin", "guix-daemon-rs"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_text_fails_clearly_when_store_db_cannot_start() {
    let components = [
        ("store-db", Program::Script("#!/bin/sh\nexit 1\n")),
        ("socket-front", Program::Link(Path::new(env!("CARGO_BIN_EXE_guix-socket-front")))),
    ];
    let sup = Supervised::start(&supervisor_bin(), &components, &[]);
    // The database a previous store-db made (socket-front reads it).
    let dirs = StateDirs::under(sup.root());
    let lock = dirs.init(&InitOptions::default()).unwrap();
    drop(DbWriter::open(dirs.db_dir(), dirs.store_dir().unwrap(), &lock, &DbOptions::default()).unwrap());
    drop(lock);
    let socket = sup.state_dir().join("daemon-socket/socket");
    supervised::wait_for(|| socket.exists(), "the client socket", Duration::from_secs(20));

    let mut client = DaemonClient::connect(&socket).await.unwrap();
    let start = Instant::now();
    let r =
        tokio::time::timeout(Duration::from_secs(120), client.add_text_to_store("hello", b"hello", &BTreeSet::new()))
            .await;
    let waited = start.elapsed();
    match r.expect("AddTextToStore hung although store-db is down") {
        Err(ClientError::Daemon { message, .. }) => {
            assert!(message.starts_with("store-db is unavailable: "), "{message}");
        }
        other => panic!("expected a daemon error, got {other:?}"),
    }
    // Within the documented bound (plus the time to get there), under a minute.
    assert!(STORE_DB_DEADLINE < Duration::from_secs(60));
    assert!(waited < STORE_DB_DEADLINE + Duration::from_secs(15), "{waited:?}");
    // The error was for this request only: the connection still serves reads.
    assert!(client.query_all_valid_paths().await.unwrap().is_empty());
}

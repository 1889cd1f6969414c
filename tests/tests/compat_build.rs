//! `guix build -d --no-substitutes hello` with the real client against the C++ daemon and ours,
//! in parallel sessions on fresh stores.
//!
//! `-d` only computes derivations: the client evaluates the package graph of `hello` down to the
//! bootstrap binaries and writes every source file, builder script and `.drv` with AddToStore
//! and AddTextToStore (hundreds of calls, about 400 items), builds nothing and downloads nothing,
//! so it works offline in the rig. Both daemons must print the same `.drv` path and end up with
//! the same valid paths, each with the same NAR hash, size, references and deriver, and the
//! same derivation outputs recorded for every `.drv`. Registration times are left out: they are
//! the clock at registration, which differs between two runs. The wall time of each run is
//! printed (`cargo test -- --nocapture` shows it).
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode in this test's target
//! directory (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use guix_client::DaemonClient;
use guix_tests::Session;

use common::{assert_same, on_both, start, transcript, Daemon};

/// Every valid path with everything the database holds about it except its registration time,
/// one line each, read through the daemon itself (QueryAllValidPaths, QueryPathInfo,
/// QueryDerivationOutputs).
fn valid_paths_dump(s: &Session) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    rt.block_on(async {
        let mut c = DaemonClient::connect(s.socket_path()).await.unwrap_or_else(|e| panic!("{e}"));
        let store = c.store_dir().clone();
        let all = c.query_all_valid_paths().await.unwrap_or_else(|e| panic!("{e}"));
        let mut out = format!("{} valid paths\n", all.len());
        for p in &all {
            let info = c
                .query_path_info(p)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("{} is listed as valid but has no info", store.display(p)));
            let refs: Vec<String> = info.references.iter().map(|r| store.display(r)).collect();
            let _ = writeln!(
                out,
                "{} {} {} deriver={} refs={}",
                store.display(p),
                info.nar_hash.to_base16(),
                info.nar_size,
                info.deriver.as_ref().map(|d| store.display(d)).unwrap_or_default(),
                refs.join(",")
            );
            if p.is_derivation() {
                let outs = c.query_derivation_outputs(p).await.unwrap_or_else(|e| panic!("{e}"));
                let outs: Vec<String> = outs.iter().map(|o| store.display(o)).collect();
                let _ = writeln!(out, "  outputs={}", outs.join(","));
            }
        }
        out
    })
}

fn build_d(rig: &guix_tests::Rig, d: Daemon, args: &[&str]) -> (String, String, Duration) {
    let s = start(rig, d);
    let t = Instant::now();
    let out = s.exec_guix(args).unwrap_or_else(|e| panic!("{e}"));
    let took = t.elapsed();
    let shown = transcript(&out);
    assert!(out.status.success(), "{d}: guix {args:?} failed:\n{shown}\n{}", s.daemon_log());
    (shown, valid_paths_dump(&s), took)
}

#[test]
fn build_d_hello_matches_cxx() {
    let args = ["build", "-d", "--no-substitutes", "hello"];
    let (cxx, ours) = on_both(|rig, d| build_d(rig, d, &args));
    eprintln!("guix build -d hello: C++ daemon {:.2?}, ours {:.2?}", cxx.2, ours.2);
    assert!(cxx.0.contains("-hello-"), "{}", cxx.0);
    assert_same("guix build -d hello (client output)", &cxx.0, &ours.0);
    assert_same("guix build -d hello (valid paths)", &cxx.1, &ours.1);
}

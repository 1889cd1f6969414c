//! Proves the test rig itself: real client + C++ daemon on private stores, visible from the host,
//! isolated between parallel sessions, and surviving a daemon restart (the swap tests need that).
//!
//! These need root and a rootfs built by `scripts/rig setup`; without them they FAIL with a
//! message saying so (a rig test that silently passes would prove nothing).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::thread;

use guix_tests::{DaemonKind, Rig, RigError, Session};

fn rig() -> Rig {
    Rig::discover().unwrap_or_else(|e| panic!("{e}"))
}

fn start(rig: &Rig, kind: DaemonKind) -> Session {
    rig.start(kind).unwrap_or_else(|e| panic!("{e}"))
}

/// Adds a text file through the real client; returns its store path (in-chroot).
fn add_text(session: &Session, name: &str, contents: &str) -> String {
    let script = format!(
        "(use-modules (guix store))\n\
         (with-store store\n  \
           (display (add-text-to-store store {name:?} {contents:?})))\n"
    );
    let out = session.repl_ok(&script).unwrap_or_else(|e| panic!("{e}"));
    let path = out.trim().to_owned();
    assert!(path.starts_with("/gnu/store/"), "unexpected repl output: {out:?}");
    path
}

fn valid_path(session: &Session, path: &str) -> bool {
    let script = format!(
        "(use-modules (guix store))\n\
         (with-store store (display (valid-path? store {path:?})))\n"
    );
    let out = session.repl_ok(&script).unwrap_or_else(|e| panic!("{e}"));
    match out.trim() {
        "#t" => true,
        "#f" => false,
        other => panic!("unexpected valid-path? output {other:?}"),
    }
}

#[test]
fn cxx_session_adds_text_visible_on_host() {
    let rig = rig();
    let session = start(&rig, DaemonKind::Cxx);
    assert!(session.socket_path().exists(), "socket {:?}", session.socket_path());
    let contents = "Hello from the rig!\n";
    let path = add_text(&session, "rig-hello.txt", contents);
    let host = session.host_path(&path).expect("a store path");
    assert!(host.starts_with(session.store_dir_on_host()));
    assert_eq!(fs::read_to_string(&host).expect("read on host"), contents);
    assert!(valid_path(&session, &path));

    // The CLI works too, and a host command sees the socket.
    let version = session.exec_guix(&["--version"]).expect("guix --version");
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).contains("1.5.0"));
    let host_out = session
        .exec_host(Command::new("sh").args(["-c", "test -S \"$GUIX_DAEMON_SOCKET\" && echo $GUIX_RIG_STORE"]))
        .expect("host command");
    assert!(host_out.status.success());
    assert_eq!(PathBuf::from(String::from_utf8_lossy(&host_out.stdout).trim()), session.store_dir_on_host());

    let state = session.state_dir().to_path_buf();
    session.stop().expect("stop");
    assert!(!state.exists(), "state dir {state:?} left behind");
}

#[test]
fn parallel_sessions_have_separate_stores() {
    let rig = rig();
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(|| start(&rig, DaemonKind::Cxx));
        let b = s.spawn(|| start(&rig, DaemonKind::Cxx));
        (a.join().expect("start a"), b.join().expect("start b"))
    });
    assert_ne!(a.store_dir_on_host(), b.store_dir_on_host());
    assert_ne!(a.socket_path(), b.socket_path());

    let path = add_text(&a, "only-in-a.txt", "a\n");
    assert!(valid_path(&a, &path));
    assert!(!valid_path(&b, &path), "session b sees a's path");
    assert!(a.host_path(&path).expect("store path").exists());
    assert!(!b.host_path(&path).expect("store path").exists());
}

#[test]
fn restart_daemon_keeps_store() {
    let rig = rig();
    let mut session = start(&rig, DaemonKind::Cxx);
    let path = add_text(&session, "survives-restart.txt", "still here\n");

    session.restart_daemon(DaemonKind::Cxx).expect("restart C++ -> C++");
    assert!(valid_path(&session, &path));

    // Swap to a host executable (the --daemon-cmd path our daemon takes): a wrapper that execs
    // the C++ daemon. Its shebang resolves inside the chroot.
    let wrapper = std::env::temp_dir().join(format!("rig-test-daemon-{}.sh", std::process::id()));
    fs::write(&wrapper, "#!/bin/sh\necho wrapper-daemon \"$@\" >&2\nexec /usr/bin/guix-daemon \"$@\"\n")
        .expect("write wrapper");
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod wrapper");
    let swapped = session.restart_daemon(DaemonKind::Ours { binary: wrapper.clone(), args: vec!["--debug".into()] });
    let _ = fs::remove_file(&wrapper);
    swapped.expect("restart C++ -> wrapper");
    assert!(
        session.daemon_log().contains("wrapper-daemon --debug --build-users-group=guixbuild --no-substitutes"),
        "{}",
        session.daemon_log()
    );
    assert!(valid_path(&session, &path));
    let second = add_text(&session, "after-swap.txt", "new\n");

    session.restart_daemon(DaemonKind::Cxx).expect("restart wrapper -> C++");
    assert!(valid_path(&session, &path));
    assert!(valid_path(&session, &second));
}

#[test]
fn missing_rootfs_is_a_clear_error() {
    let missing = std::env::temp_dir().join("guix-rig-no-such-rootfs");
    match Rig::discover_with_rootfs(Some(&missing)) {
        Err(e @ RigError::NotSetUp { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("scripts/rig setup"), "{msg}");
        }
        Err(RigError::NotRoot) => panic!("{}", RigError::NotRoot),
        other => panic!("expected NotSetUp, got {other:?}"),
    }
}

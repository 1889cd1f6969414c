//! End-to-end test of the real `guix-daemon-rs` binary with stand-in components.
//!
//! The components (store-db, socket-front) are not built yet, so the libexec directory given to
//! the daemon holds the `fake_component` example of this crate under their names: it picks up
//! its sockets like a real component and answers each connection with `NAME PID`.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use guix_tests::supervised::{self, Program, Supervised};

fn daemon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_guix-daemon-rs"))
}

/// The example binary; built on demand when `cargo test` was filtered to this test.
fn fake_component() -> PathBuf {
    supervised::built_on_demand(
        daemon_bin().parent().unwrap().join("examples").join("fake_component"),
        &["-p", "guix-supervisor", "--example", "fake_component"],
    )
}

fn wait_for(cond: impl FnMut() -> bool, what: &str) {
    supervised::wait_for(cond, what, Duration::from_secs(15));
}

/// The daemon with `fake_component` as both components.
struct Daemon {
    sup: Supervised,
}

impl Daemon {
    fn start() -> Daemon {
        let fake = fake_component();
        let components = [
            ("store-db", Program::Link(&fake)),
            ("builder", Program::Link(&fake)),
            ("gc", Program::Link(&fake)),
            ("socket-front", Program::Link(&fake)),
        ];
        let d = Daemon { sup: Supervised::start(&daemon_bin(), &components, &["--build-users-group=nobody"]) };
        wait_for(|| d.control().exists() && d.socket().exists(), "daemon sockets");
        d
    }
    fn state(&self) -> &Path {
        self.sup.state_dir()
    }
    fn socket(&self) -> PathBuf {
        self.state().join("daemon-socket/socket")
    }
    fn control(&self) -> PathBuf {
        self.state().join("daemon-socket/rs-control")
    }
    fn pid_of(&self, component: &str) -> Option<u32> {
        let (code, out, _) = self.sup.ctl(&["status"]);
        assert_eq!(code, 0);
        supervised::pid_in_status(&out, component)
    }
}

fn ask(socket: &Path) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut line = String::new();
    s.read_to_string(&mut line).unwrap();
    line
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[test]
fn supervises_restarts_and_stops_components() {
    let d = Daemon::start();

    // The client socket is world-connectable, like guix-daemon's; the control socket is not.
    let meta = std::fs::metadata(d.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    assert_eq!(std::fs::metadata(d.control()).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(d.state().join("daemon-rs")).unwrap().permissions().mode() & 0o777, 0o700);

    // ctl status lists both components with pids.
    wait_for(|| d.pid_of("store-db").is_some() && d.pid_of("socket-front").is_some(), "both components");
    let (code, out, _) = d.sup.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("COMPONENT"), "{out}");
    let front = d.pid_of("socket-front").unwrap();
    let store = d.pid_of("store-db").unwrap();

    // socket-front serves the client socket.
    assert_eq!(ask(&d.socket()).trim(), format!("socket-front {front}"));

    // kill -9 socket-front, and connect at once: the connection waits in the backlog of the
    // socket the supervisor keeps, and the restarted component answers it.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(front as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    // kill(2) returns before the process is gone; a connection it accepted in that window would
    // die with it. Connect once it is gone (the replacement starts only after a 100 ms backoff).
    // Gone means reaped, not merely a zombie: the thread-group leader turns zombie while its
    // other threads (the one blocked in accept) may still be dying, and a connection that
    // thread takes on its way out is closed unanswered. The supervisor reaps only once the
    // whole group has exited.
    wait_for(|| !Path::new(&format!("/proc/{front}")).exists(), "the killed socket-front to be reaped");
    let answer = ask(&d.socket());
    // The supervisor records the new pid after spawning; the status may lag the answer a little.
    wait_for(|| d.pid_of("socket-front").is_some_and(|p| p != front), "the new socket-front pid");
    let new_front = d.pid_of("socket-front").unwrap();
    assert_ne!(new_front, front);
    assert_eq!(answer.trim(), format!("socket-front {new_front}"));
    let (_, out, _) = d.sup.ctl(&["status"]);
    let line = out.lines().find(|l| l.starts_with("socket-front")).unwrap().to_owned();
    assert_eq!(line.split_whitespace().nth(3), Some("1"), "restart count in {line}");
    assert!(line.contains("signal 9"), "{line}");

    // ctl restart: a new pid at once.
    let (code, out, err) = d.sup.ctl(&["restart", "store-db"]);
    assert_eq!(code, 0, "{err}");
    let new_store = d.pid_of("store-db").unwrap();
    assert_ne!(new_store, store);
    assert!(out.contains(&format!("restarted store-db (pid {new_store})")), "{out}");
    assert!(!alive(store));
    let (code, _, err) = d.sup.ctl(&["restart", "no-such"]);
    assert_eq!(code, 1);
    assert!(err.contains("no component named `no-such'"), "{err}");

    // SIGTERM: every component is stopped, the sockets are removed, exit status 0.
    let mut d = d;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.sup.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = d.sup.child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert!(!alive(new_front) && !alive(new_store));
    assert!(!d.socket().exists() && !d.control().exists());
}

/// A supervisor killed with SIGKILL (no chance to stop its components) takes them with it:
/// each gets SIGTERM (`PR_SET_PDEATHSIG`), so no orphan store-db runs beside the next one.
#[test]
fn components_do_not_outlive_a_killed_supervisor() {
    let mut d = Daemon::start();
    wait_for(|| d.pid_of("store-db").is_some() && d.pid_of("socket-front").is_some(), "both components");
    let (front, store) = (d.pid_of("socket-front").unwrap(), d.pid_of("store-db").unwrap());
    d.sup.child.kill().unwrap();
    d.sup.child.wait().unwrap();
    wait_for(|| !alive(front) && !alive(store), "the components to stop after the supervisor died");
}

#[test]
fn ctl_without_daemon_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out =
        Command::new(daemon_bin()).args(["ctl", "status"]).env("GUIX_STATE_DIRECTORY", tmp.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the daemon"));
}

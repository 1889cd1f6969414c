//! Our supervisor, `guix-daemon-rs`, run on the host outside the rig, as the tests of the
//! supervisor and of the components run it: in a temporary directory, with a libexec directory
//! of the test's choosing (real component binaries or stand-ins).
//!
//! The state lives under one root in the layout of the rig's `--keep` directory (and of
//! `guix_store::StateDirs::under`): `ROOT/store`, `ROOT/var-guix`, `ROOT/var-guix/db`,
//! `ROOT/var-log-guix`.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// `path`, a binary of this workspace, built with `cargo build CARGO_BUILD_ARGS` when missing (a
/// filtered `cargo test` may not have built it).
pub fn built_on_demand(path: PathBuf, cargo_build_args: &[&str]) -> PathBuf {
    if !path.exists() {
        let status = Command::new(env!("CARGO")).arg("build").args(cargo_build_args).status().unwrap();
        assert!(status.success());
    }
    path
}

/// Polls `cond` every 20 ms; fails the test after `timeout`.
pub fn wait_for(mut cond: impl FnMut() -> bool, what: &str, timeout: Duration) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A program to put in the libexec directory under a component's name.
pub enum Program<'a> {
    /// A symbolic link to this binary.
    Link(&'a Path),
    /// An executable shell script with this text.
    Script(&'a str),
}

/// A running `guix-daemon-rs`. Dropping it stops the daemon: SIGTERM (so that it stops its
/// components), then SIGKILL if it is still running after 10 s.
pub struct Supervised {
    pub child: Child,
    bin: PathBuf,
    root: PathBuf,
    state: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Supervised {
    /// Starts `bin` with `--rs-libexec-dir=ROOT/libexec` holding `components` (`NAME` is
    /// installed as `guix-NAME`), then `args`, and the environment pointing at the layout of
    /// the module documentation. Returns at once: wait for what the test needs.
    pub fn start(bin: &Path, components: &[(&str, Program)], args: &[&str]) -> Supervised {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        let libexec = root.join("libexec");
        std::fs::create_dir(&libexec).unwrap();
        for (name, program) in components {
            let path = libexec.join(format!("guix-{name}"));
            match program {
                Program::Link(target) => symlink(target, &path).unwrap(),
                Program::Script(text) => {
                    std::fs::write(&path, text).unwrap();
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
                }
            }
        }
        let state = root.join("var-guix");
        let child = Command::new(bin)
            .arg(format!("--rs-libexec-dir={}", libexec.display()))
            .args(args)
            .env("NIX_STORE_DIR", root.join("store"))
            .env("GUIX_STATE_DIRECTORY", &state)
            .env("GUIX_DATABASE_DIRECTORY", state.join("db"))
            .env("GUIX_LOG_DIRECTORY", root.join("var-log-guix"))
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Supervised { child, bin: bin.to_owned(), root, state, _tmp: tmp }
    }

    /// The temporary directory holding everything.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `ROOT/var-guix` (`GUIX_STATE_DIRECTORY`).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Runs `guix-daemon-rs ctl ARGS` against this daemon: exit code (-1 for a signal), stdout,
    /// stderr.
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out =
            Command::new(&self.bin).arg("ctl").args(args).env("GUIX_STATE_DIRECTORY", &self.state).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

/// The pid of `component` in the output of `ctl status` (`NAME PID ...` lines), if it runs.
pub fn pid_in_status<T: FromStr>(status: &str, component: &str) -> Option<T> {
    status
        .lines()
        .find(|l| l.split_whitespace().next() == Some(component))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Only a child not yet reaped: the pid of a reaped one may belong to another process.
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

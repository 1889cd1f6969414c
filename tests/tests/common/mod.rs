//! Shared driver of the `compat_*` tests: the same commands run against the C++ daemon and ours,
//! each in its own fresh rig session (in parallel), and their transcripts are compared exactly.
//!
//! A transcript is what a user sees: the exit status, stdout and stderr of the real `guix`
//! client. Anything that must differ between two daemons (registration times, PIDs, timings) is
//! normalised by the test that produces it, with a comment saying why; nothing else is.

#![allow(dead_code)] // each compat_* test file uses a different part of this module

use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::process::Output;
use std::thread;

use guix_tests::{DaemonKind, Rig, Session};

pub mod wire;

/// Which daemon a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    Cxx,
    Ours,
}

impl fmt::Display for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Daemon::Cxx => "C++",
            Daemon::Ours => "ours",
        })
    }
}

pub fn rig() -> Rig {
    Rig::discover().unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh session of `daemon` (ours: the binaries of this test's target directory).
pub fn start(rig: &Rig, daemon: Daemon) -> Session {
    let s = match daemon {
        Daemon::Cxx => rig.start(DaemonKind::Cxx),
        Daemon::Ours => guix_tests::start_ours(rig),
    };
    s.unwrap_or_else(|e| panic!("starting a {daemon} session: {e}"))
}

/// Runs `f` once per daemon, each in its own thread (so the two sessions work in parallel);
/// returns (C++ result, our result).
pub fn on_both<T, F>(f: F) -> (T, T)
where
    T: Send,
    F: Fn(&Rig, Daemon) -> T + Sync,
{
    let rig = rig();
    thread::scope(|scope| {
        let cxx = scope.spawn(|| f(&rig, Daemon::Cxx));
        let ours = f(&rig, Daemon::Ours);
        let cxx = cxx.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (cxx, ours)
    })
}

/// Writes `contents` to `/tmp/<name>` of the session (its host-side `tmp/` directory).
pub fn put(s: &Session, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let host = s.state_dir().join("tmp").join(name);
    if let Some(dir) = host.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    }
    fs::write(&host, contents).unwrap_or_else(|e| panic!("writing {}: {e}", host.display()));
    host
}

/// Reads `/tmp/<name>` of the session.
pub fn get(s: &Session, name: &str) -> Vec<u8> {
    let host = s.state_dir().join("tmp").join(name);
    fs::read(&host).unwrap_or_else(|e| panic!("reading {}: {e}", host.display()))
}

/// The user-visible result of a command, printed in a stable form.
pub fn transcript(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status.code().map_or_else(|| format!("{}", out.status), |c| c.to_string()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the shell `script` in the session's chroot (`sh -c`, stderr merged into stdout so the
/// transcript keeps the order in which a user sees messages), returning its transcript.
pub fn sh(s: &Session, script: &str) -> String {
    let script = format!("exec 2>&1\n{script}");
    let out = s.exec(&["sh", "-c", &script]).unwrap_or_else(|e| panic!("{e}"));
    transcript(&out)
}

/// Runs the Guile `script` with `guix repl`; its stdout, failing the test (with the daemon log)
/// if it does not exit 0.
pub fn repl(s: &Session, daemon: Daemon, script: &str) -> String {
    s.repl_ok(script).unwrap_or_else(|e| panic!("{daemon}: {e}"))
}

/// Asserts two transcripts are equal, printing both in full (with line-level context) if not.
#[track_caller]
pub fn assert_same(what: &str, cxx: &str, ours: &str) {
    if cxx != ours {
        let mut diff = String::new();
        let (a, b): (Vec<_>, Vec<_>) = (cxx.lines().collect(), ours.lines().collect());
        for i in 0..a.len().max(b.len()) {
            let (x, y) = (a.get(i).copied(), b.get(i).copied());
            if x != y {
                diff.push_str(&format!("line {}:\n  C++:  {:?}\n  ours: {:?}\n", i + 1, x, y));
            }
        }
        panic!("{what}: our daemon differs from the C++ daemon\n{diff}\n=== C++ ===\n{cxx}\n=== ours ===\n{ours}");
    }
}

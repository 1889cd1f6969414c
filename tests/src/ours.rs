//! Starting OUR daemon in the rig: the supervisor binary plus its component binaries, taken from
//! the target directory of the running test (build them first: `cargo build --workspace`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{DaemonKind, Rig, RigError, Session, SessionOptions};

/// Where the component binaries appear inside the rig's chroot.
pub const LIBEXEC_IN_CHROOT: &str = "/opt/guix-daemon-rs";

/// The target directory holding the binaries of this build (`target/debug` or `target/release`),
/// found from the running test executable (`target/<profile>/deps/<test>-<hash>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().and_then(Path::parent).map(PathBuf::from).unwrap_or_default()
}

/// The daemon kind and session options that run our `guix-daemon-rs` with `extra_args`.
pub fn ours_kind(extra_args: &[&str]) -> (DaemonKind, SessionOptions) {
    ours_kind_in(&target_dir(), extra_args)
}

/// Like [`ours_kind`], with the binaries (`guix-daemon-rs` and the `guix-COMPONENT` programs)
/// taken from `dir`, which is bound into the chroot as the libexec directory.
pub fn ours_kind_in(dir: &Path, extra_args: &[&str]) -> (DaemonKind, SessionOptions) {
    let dir = dir.to_path_buf();
    let mut args = vec![format!("--rs-libexec-dir={LIBEXEC_IN_CHROOT}")];
    args.extend(extra_args.iter().map(|s| s.to_string()));
    let kind = DaemonKind::Ours { binary: dir.join("guix-daemon-rs"), args };
    let opts = SessionOptions { binds: vec![(dir, PathBuf::from(LIBEXEC_IN_CHROOT))], ..SessionOptions::default() };
    (kind, opts)
}

/// Like [`ours_kind`], with `env` (`NAME=VALUE`) in the daemon's environment: the rig starts
/// the daemon with an empty one, so the host's `/usr/bin/env`, bound in as the daemon binary,
/// starts it with these.
pub fn ours_kind_with_env(env: &[String], extra_args: &[&str]) -> (DaemonKind, SessionOptions) {
    let (kind, opts) = ours_kind(extra_args);
    let DaemonKind::Ours { args, .. } = kind else { unreachable!("ours_kind makes Ours") };
    let mut env_args = env.to_vec();
    env_args.push(format!("{LIBEXEC_IN_CHROOT}/guix-daemon-rs"));
    env_args.extend(args);
    (DaemonKind::Ours { binary: PathBuf::from("/usr/bin/env"), args: env_args }, opts)
}

/// Starts a session running our daemon; the binaries must have been built.
pub fn start_ours(rig: &Rig) -> Result<Session, RigError> {
    let (kind, opts) = ours_kind(&[]);
    Session::start_with(rig, kind, &opts)
}

/// `guix-daemon-rs ctl status` run in the session's chroot: component → (pid, restarts).
/// The pids are the session's (its own PID namespace). Panics if `ctl` fails.
pub fn ctl_status(s: &Session) -> BTreeMap<String, (Option<u32>, u64)> {
    let ctl = format!("{LIBEXEC_IN_CHROOT}/guix-daemon-rs");
    let out = s.exec(&[ctl.as_str(), "ctl", "status"]).unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ctl status: {}{}", text, String::from_utf8_lossy(&out.stderr));
    let mut map = BTreeMap::new();
    for line in text.lines().skip(2) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let pid = f[1].parse().ok();
        // Columns: COMPONENT PID UPTIME RESTARTS …; UPTIME may be two words ("in 0.1s").
        let restarts = if f[2] == "in" { f[4] } else { f[3] };
        map.insert(f[0].to_owned(), (pid, restarts.parse().unwrap_or(0)));
    }
    map
}

/// Kills `component` of the session's daemon with SIGKILL and waits (30 s at most) until the
/// supervisor has started it again: a new pid and one restart more in `ctl status`. Panics
/// otherwise.
pub fn kill_and_wait(s: &Session, component: &str) {
    let before = ctl_status(s);
    let (Some(pid), restarts) = before.get(component).copied().unwrap_or((None, 0)) else {
        panic!("{component} has no pid: {before:?}");
    };
    let out = s.exec(&["sh", "-c", &format!("kill -9 {pid}")]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "kill -9 {pid}: {}", String::from_utf8_lossy(&out.stderr));
    let start = Instant::now();
    loop {
        let now = ctl_status(s);
        if let Some((Some(p), r)) = now.get(component) {
            if *p != pid && *r > restarts {
                return;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{component} was not restarted: {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

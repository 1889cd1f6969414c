//! [`Rig`] (where `scripts/rig` and its rootfs are) and [`Session`] (one running daemon on one
//! private store), thin typed wrappers over `scripts/rig session …`.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The store directory as the daemon and the client inside the chroot see it.
pub const CHROOT_STORE_DIR: &str = "/gnu/store";

/// Errors of the rig itself (not of the commands run through it: those come back as [`Output`]).
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("the test rig needs root (mount and PID namespaces, chroot); run the tests as root")]
    NotRoot,
    #[error("the rig script {0} does not exist or is not executable")]
    ScriptMissing(PathBuf),
    #[error(
        "the test rig's rootfs is not set up ({detail}).\n\
         Run `sudo {script} setup` first (Debian sid + guix 1.5.0; about 70 s, needs the Debian \
         archive), or point GUIX_RS_ROOTFS at a rootfs it built."
    )]
    NotSetUp { script: PathBuf, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Command { command: String, status: ExitStatus, stderr: String },
    #[error(
        "{0}: the rig passes daemon arguments through the shell split on whitespace, so they must not contain any"
    )]
    Whitespace(String),
    #[error("the daemon binary {0} must be an absolute path")]
    RelativeBinary(PathBuf),
}

impl RigError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> RigError {
        let what = what.into();
        move |source| RigError::Io { what, source }
    }
}

/// Which daemon a session runs. Both get the same flags (by default
/// `--build-users-group=guixbuild --no-substitutes`, see [`SessionOptions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonKind {
    /// The real C++ `guix-daemon` 1.5.0 of the rootfs.
    Cxx,
    /// A host executable (our daemon), bind-mounted into the chroot as `/host-daemon/daemon` and
    /// run as `/host-daemon/daemon ARGS FLAGS`. It runs inside sid (glibc 2.43): a binary built on
    /// the host that links only glibc (libc, libm, libgcc_s) works.
    Ours { binary: PathBuf, args: Vec<String> },
}

impl DaemonKind {
    fn rig_args(&self) -> Result<Vec<String>, RigError> {
        match self {
            DaemonKind::Cxx => Ok(vec!["--daemon".into(), "cxx".into()]),
            DaemonKind::Ours { binary, args } => {
                if !binary.is_absolute() {
                    return Err(RigError::RelativeBinary(binary.clone()));
                }
                let mut cmd = vec![no_whitespace(&binary.to_string_lossy())?];
                for a in args {
                    cmd.push(no_whitespace(a)?);
                }
                Ok(vec!["--daemon-cmd".into(), cmd.join(" ")])
            }
        }
    }
}

fn no_whitespace(s: &str) -> Result<String, RigError> {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        Err(RigError::Whitespace(s.to_owned()))
    } else {
        Ok(s.to_owned())
    }
}

/// Daemon flags and extra bind mounts of a session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Replaces the default `--build-users-group=guixbuild --no-substitutes` when set.
    pub daemon_flags: Option<Vec<String>>,
    /// Appended to the daemon flags.
    pub extra_daemon_flags: Vec<String>,
    /// Adds `--disable-chroot`.
    pub no_chroot: bool,
    /// `(host path, chroot path)` bind mounts, both absolute.
    pub binds: Vec<(PathBuf, PathBuf)>,
}

impl SessionOptions {
    fn daemon_args(&self) -> Result<Vec<String>, RigError> {
        let mut out = Vec::new();
        if let Some(flags) = &self.daemon_flags {
            let flags: Result<Vec<_>, _> = flags.iter().map(|f| no_whitespace(f)).collect();
            out.extend(["--daemon-flags".into(), flags?.join(" ")]);
        }
        if !self.extra_daemon_flags.is_empty() {
            let flags: Result<Vec<_>, _> = self.extra_daemon_flags.iter().map(|f| no_whitespace(f)).collect();
            out.extend(["--extra-daemon-flags".into(), flags?.join(" ")]);
        }
        if self.no_chroot {
            out.push("--no-chroot".into());
        }
        Ok(out)
    }
}

/// The rig: the `scripts/rig` of this checkout and a rootfs it has set up.
#[derive(Debug, Clone)]
pub struct Rig {
    script: PathBuf,
    rootfs: PathBuf,
    /// Passed to the script as `GUIX_RS_ROOTFS` when set (otherwise the script's default or the
    /// inherited environment applies).
    rootfs_override: Option<PathBuf>,
}

impl Rig {
    /// Finds `scripts/rig` relative to this crate and checks that we are root and that the rootfs
    /// (`$GUIX_RS_ROOTFS`, default `~/.cache/guix-daemon-rs/rootfs`) is set up.
    pub fn discover() -> Result<Rig, RigError> {
        Self::discover_with_rootfs(None)
    }

    /// Like [`Rig::discover`], with an explicit rootfs instead of the default.
    pub fn discover_with_rootfs(rootfs: Option<&Path>) -> Result<Rig, RigError> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("scripts").join("rig");
        let script = script.canonicalize().unwrap_or(script);
        if !script.is_file() {
            return Err(RigError::ScriptMissing(script));
        }
        if !is_root() {
            return Err(RigError::NotRoot);
        }
        let mut rig = Rig { script, rootfs: PathBuf::new(), rootfs_override: rootfs.map(Path::to_path_buf) };
        let out = rig
            .command(["check"])
            .stdin(Stdio::null())
            .output()
            .map_err(RigError::io(format!("running {} check", rig.script.display())))?;
        if !out.status.success() {
            return Err(RigError::NotSetUp {
                script: rig.script,
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        rig.rootfs = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(rig)
    }

    /// The `scripts/rig` executable.
    pub fn script(&self) -> &Path {
        &self.script
    }

    /// The sid rootfs on the host.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// A `Command` for `scripts/rig ARGS` with this rig's environment.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.script);
        cmd.args(args);
        if let Some(r) = &self.rootfs_override {
            cmd.env("GUIX_RS_ROOTFS", r);
        }
        cmd
    }

    /// Starts a session with default options.
    pub fn start(&self, kind: DaemonKind) -> Result<Session, RigError> {
        Session::start_with(self, kind, &SessionOptions::default())
    }
}

fn is_root() -> bool {
    // Effective UID is the second field of the `Uid:` line.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A running daemon on a fresh private store, in its own namespaces. Drop stops it and removes
/// its state directory.
pub struct Session {
    rig: Rig,
    state: PathBuf,
    socket: PathBuf,
    stopped: bool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("state", &self.state).field("socket", &self.socket).finish()
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{}-{nanos:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd`; an unsuccessful exit becomes [`RigError::Command`].
fn run_checked(mut cmd: Command) -> Result<Output, RigError> {
    let line = command_line(&cmd);
    let out = cmd.stdin(Stdio::null()).output().map_err(RigError::io(format!("running {line}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(RigError::Command {
            command: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

impl Session {
    /// Discovers the rig and starts a session with default options.
    pub fn start(kind: DaemonKind) -> Result<Session, RigError> {
        Rig::discover()?.start(kind)
    }

    /// Starts a session of `rig`: a fresh state directory under the temp dir, the namespaces,
    /// and the daemon; returns once the daemon's socket exists.
    pub fn start_with(rig: &Rig, kind: DaemonKind, options: &SessionOptions) -> Result<Session, RigError> {
        let state = std::env::temp_dir().join(format!("guix-rig-session.{}", unique_suffix()));
        fs::create_dir(&state).map_err(RigError::io(format!("creating {}", state.display())))?;
        let mut cmd = rig.command(["session", "start", "-q", "--state"]);
        cmd.arg(&state)
            .arg("--owner")
            .arg(std::process::id().to_string())
            .args(kind.rig_args()?)
            .args(options.daemon_args()?);
        for (host, chroot) in &options.binds {
            let mut b = host.as_os_str().to_owned();
            b.push(":");
            b.push(chroot);
            cmd.arg("--bind").arg(b);
        }
        // From here on a failure must still clean up the state directory.
        let mut session = Session { rig: rig.clone(), state, socket: PathBuf::new(), stopped: false };
        let out = run_checked(cmd)?;
        session.socket = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(session)
    }

    /// The daemon's socket, reachable from the host.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The session's state directory (`store/`, `var-guix/`, `var-log-guix/`, `tmp/`,
    /// `daemon.log`, …).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The host directory mounted at `/gnu/store` in the session.
    pub fn store_dir_on_host(&self) -> PathBuf {
        self.state.join("store")
    }

    /// What is in our scratch space (`<store>/.rs-scratch`) besides socket-front's own
    /// directory, and what is in that (as `front/NAME`): nothing once no item is being added.
    pub fn scratch_leftovers(&self) -> Vec<String> {
        let names = |d: &Path| -> Vec<String> {
            fs::read_dir(d).map_or(Vec::new(), |rd| {
                rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
            })
        };
        let dir = self.store_dir_on_host().join(".rs-scratch");
        // `guix_store::scratch::UNPRIVILEGED_DIR_NAME` (this crate does not link the store's).
        let front = "front";
        let mut left: Vec<String> = names(&dir).into_iter().filter(|n| n != front).collect();
        left.extend(names(&dir.join(front)).into_iter().map(|n| format!("{front}/{n}")));
        left
    }

    /// The host directory mounted at `/var/guix` (holds `db/db.sqlite`, `daemon-socket/`, …).
    pub fn var_guix_on_host(&self) -> PathBuf {
        self.state.join("var-guix")
    }

    /// Where the in-chroot store path `path` (`/gnu/store/<base>[/…]`) is on the host.
    pub fn host_path(&self, path: &str) -> Option<PathBuf> {
        let rest = path.strip_prefix(CHROOT_STORE_DIR)?.strip_prefix('/')?;
        if rest.is_empty() || rest.split('/').any(|c| c == "..") {
            return None;
        }
        Some(self.store_dir_on_host().join(rest))
    }

    /// Everything the daemons of this session wrote to stdout/stderr.
    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.state.join("daemon.log")).unwrap_or_default()
    }

    /// Runs `cmd` inside the session's chroot (as root, `env -i` with PATH, HOME=/root,
    /// LC_ALL=C.UTF-8), against the session's daemon. The command's failure is in the `Output`.
    pub fn exec<S: AsRef<OsStr>>(&self, cmd: &[S]) -> Result<Output, RigError> {
        let mut c = self.rig.command(["session", "exec", "--state"]);
        c.arg(&self.state).arg("--").args(cmd).stdin(Stdio::null());
        let line = command_line(&c);
        c.output().map_err(RigError::io(format!("running {line}")))
    }

    /// `guix ARGS` inside the chroot.
    pub fn exec_guix<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output, RigError> {
        let mut cmd: Vec<&OsStr> = vec![OsStr::new("guix")];
        cmd.extend(args.iter().map(AsRef::as_ref));
        self.exec(&cmd)
    }

    /// Runs the Guile `script` with `guix repl` inside the chroot. The script is written to the
    /// session's `/tmp` (a host directory of the state dir) and removed afterwards.
    pub fn repl(&self, script: &str) -> Result<Output, RigError> {
        let name = format!("rig-repl-{}.scm", unique_suffix());
        let host = self.state.join("tmp").join(&name);
        fs::write(&host, script).map_err(RigError::io(format!("writing {}", host.display())))?;
        let out = self.exec_guix(&["repl", &format!("/tmp/{name}")]);
        let _ = fs::remove_file(&host);
        out
    }

    /// Like [`Session::repl`], but a non-zero exit is an error carrying stderr and the daemon log;
    /// returns stdout.
    pub fn repl_ok(&self, script: &str) -> Result<String, RigError> {
        let out = self.repl(script)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(RigError::Command {
                command: "guix repl".into(),
                status: out.status,
                stderr: format!(
                    "{}\n--- stdout ---\n{}\n--- daemon.log ---\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&out.stdout),
                    self.daemon_log()
                ),
            })
        }
    }

    /// Runs a host command against the session: sets `GUIX_DAEMON_SOCKET` (and the
    /// `GUIX_RIG_*`/`GUIX_REF_*` socket, store and rootfs variables `scripts/rig run --host` sets).
    pub fn exec_host(&self, cmd: &mut Command) -> Result<Output, RigError> {
        let store = self.store_dir_on_host();
        cmd.env("GUIX_DAEMON_SOCKET", &self.socket)
            .env("GUIX_RIG_SOCKET", &self.socket)
            .env("GUIX_REF_SOCKET", &self.socket)
            .env("GUIX_RIG_STORE", &store)
            .env("GUIX_REF_STORE", &store)
            .env("GUIX_RIG_ROOTFS", self.rig.rootfs())
            .env("GUIX_REF_ROOTFS", self.rig.rootfs());
        let line = command_line(cmd);
        cmd.output().map_err(RigError::io(format!("running {line}")))
    }

    /// Stops the session's daemon and starts `kind` on the same store and `/var/guix`.
    pub fn restart_daemon(&mut self, kind: DaemonKind) -> Result<(), RigError> {
        self.restart_daemon_with(kind, &SessionOptions::default())
    }

    /// [`Session::restart_daemon`] with other daemon flags (`binds` must be empty: bind mounts
    /// are made when the session starts).
    pub fn restart_daemon_with(&mut self, kind: DaemonKind, options: &SessionOptions) -> Result<(), RigError> {
        let mut cmd = self.rig.command(["session", "restart-daemon", "-q", "--state"]);
        cmd.arg(&self.state).args(kind.rig_args()?).args(options.daemon_args()?);
        run_checked(cmd).map(drop)
    }

    /// Stops the daemon, ends the namespaces and removes the state directory.
    pub fn stop(mut self) -> Result<(), RigError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), RigError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut cmd = self.rig.command(["session", "stop", "-q", "--state"]);
        cmd.arg(&self.state);
        run_checked(cmd).map(drop)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("guix-tests: stopping the rig session {}: {e}", self.state.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_args_reject_whitespace() {
        let kind = DaemonKind::Ours { binary: "/bin/x".into(), args: vec!["a b".into()] };
        assert!(matches!(kind.rig_args(), Err(RigError::Whitespace(_))));
        let rel = DaemonKind::Ours { binary: "x".into(), args: vec![] };
        assert!(matches!(rel.rig_args(), Err(RigError::RelativeBinary(_))));
        let ok = DaemonKind::Ours { binary: "/bin/x".into(), args: vec!["--a".into(), "b".into()] };
        assert_eq!(ok.rig_args().ok(), Some(vec!["--daemon-cmd".into(), "/bin/x --a b".into()]));
    }

    #[test]
    fn options_to_args() {
        let o = SessionOptions {
            daemon_flags: Some(vec!["--x".into()]),
            extra_daemon_flags: vec!["--y".into(), "--z".into()],
            no_chroot: true,
            binds: vec![],
        };
        assert_eq!(
            o.daemon_args().ok(),
            Some(vec![
                "--daemon-flags".into(),
                "--x".into(),
                "--extra-daemon-flags".into(),
                "--y --z".into(),
                "--no-chroot".into()
            ])
        );
    }
}

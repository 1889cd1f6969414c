//! What the daemon side decides and the sandbox helper (`guix-builder --sandbox-child`)
//! carries out: everything is computed before the helper starts, so the helper makes no
//! decision of its own. Byte strings throughout (paths and environment need not be UTF-8).

use serde::{Deserialize, Serialize};

/// `CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS`, as C++ clones a
/// chroot build (no user namespace: build users are real users).
pub const CHROOT_NAMESPACES: i32 =
    libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

/// The plan, sent as JSON on the helper's stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildPlan {
    /// The daemon's pid: the helper refuses to run if its parent is already another process
    /// (the daemon died before `PR_SET_PDEATHSIG` was set).
    pub daemon_pid: u32,
    /// The store directory (`isInStore` of the resolved builder).
    pub store_dir: Vec<u8>,
    /// Chroot build: namespaces, mounts, `pivot_root`. `None`: `--disable-chroot` or builtin.
    pub chroot: Option<ChrootPlan>,
    /// The working directory (inside the chroot when there is one).
    pub cwd: Vec<u8>,
    /// `personality(2)` value.
    pub persona: u64,
    /// `setgroups`/`setgid`/`setuid` to these, if any.
    pub ids: Option<Ids>,
    pub exec: Exec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChrootPlan {
    /// `<drv>.chroot/top` on the host.
    pub root: Vec<u8>,
    /// Bind mounts in C++ `std::map` order (byte order of the target), as `mountIntoChroot`.
    pub binds: Vec<Bind>,
    /// Bring `lo` up (`initLoopback`).
    pub init_loopback: bool,
    /// Mount a new devpts on `/dev/pts` (`maybeMountDevpts`).
    pub mount_devpts: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bind {
    /// Path inside the chroot.
    pub target: Vec<u8>,
    /// Path on the host.
    pub source: Vec<u8>,
    pub read_only: bool,
}

/// What is executed once the environment is set up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Exec {
    /// The derivation's builder: resolved inside the chroot, must be in the store.
    Builder {
        /// The builder as written in the derivation.
        program: Vec<u8>,
        /// argv, `argv[0]` (the builder's base name) included.
        args: Vec<Vec<u8>>,
        /// The complete environment, in `std::map` order.
        env: Vec<(Vec<u8>, Vec<u8>)>,
        /// The derivation's system is for another kernel (`-gnu` vs `-linux`): not even tried,
        /// as if `execve` had said `ENOEXEC`.
        foreign_kernel: bool,
        /// When the system cannot be built here (`canBuildLocally`), what `ENOEXEC` is
        /// reported as: "a `P' is required to build `DRV', but I am a `S'".
        unsupported_platform: Option<String>,
    },
    /// `builtin:download` / `builtin:git-download`: `$GUIX perform-download DRV OUT` in the
    /// daemon's environment plus `NIX_STORE` and `_NIX_OPTIONS`.
    Download { guix: Vec<u8>, drv_path: Vec<u8>, output: Vec<u8>, nix_store: Vec<u8>, nix_options: Vec<u8> },
    /// Any other `builtin:NAME`: C++ fails after the set-up succeeded, in the log.
    UnsupportedBuiltin { name: Vec<u8> },
}

/// A message of the helper to the daemon, one JSON object per line on the status pipe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Report {
    /// The build process exists: its pid in the daemon's PID namespace.
    Pid(u32),
    /// The environment is set up (C++ `signalSetupSuccess`); what follows goes to the log.
    SetUp,
    /// Setting up failed, with the C++ text ("while setting up the child process: in phase
    /// …: …"); the build process has exited.
    SetupFailed(String),
    /// The build process exited: the raw `waitpid` status.
    Exited(i32),
}

//! Starting one build process, isolated as the C++ `guix-daemon` 1.5.0 does it
//! (`DerivationGoal::startBuilder`, `nix/libutil/spawn.cc`):
//!
//! - the build directory `$TMPDIR/guix-build-NAME.drv-N` (0700; with a chroot the build user's
//!   `top/` inside it, seen as `/tmp/guix-build-NAME.drv-0`), the environment, the
//!   `exportReferencesGraph` files;
//! - the chroot `<store>/<drv>.chroot/top`: `/tmp`, `/etc/{passwd,group,hosts}`, the fake
//!   store, `/dev`, and the list of bind mounts (inputs read-only, `--chroot-directory`, the
//!   build directory) in C++ `std::map` order, which is the order of the mounts;
//! - the process, through a helper ([`child`], `guix-builder --sandbox-child`): new mount,
//!   network, PID, IPC and UTS namespaces, the mounts, `pivot_root`, credentials of the build
//!   user, personality, then `execve`; `--disable-chroot` and built-in builders without them.
//!
//! A build dies with the builder component: the helper has `PR_SET_PDEATHSIG` = SIGKILL
//! towards the daemon, the build process towards the helper (set again after `setuid`, which
//! clears it), and killing PID 1 of a PID namespace kills every process in it.
//!
//! Not done (C++ 1.5.0 has them): slirp4netns networking of fixed-output derivations (we
//! behave as C++ does when `/usr/bin/slirp4netns` is missing), the unprivileged mode (user
//! namespace when there are no build users), hash rewriting of `--disable-chroot` builds.

mod child;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guix_formats::derivation::Derivation;
use guix_formats::store_path::HashPart;
use guix_formats::{StoreDir, StorePath};
use guix_store::strerror;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;

pub use child::helper_main;
use plan::{Bind, ChildPlan, ChrootPlan, Exec, Ids, Report};

use crate::error::{Error, FailureKind, Result};

/// The argument that makes `guix-builder` the sandbox helper (see `main.rs`).
pub const HELPER_FLAG: &str = "--sandbox-child";

/// The compiled-in slirp4netns of the Debian 1.5.0 build.
pub const SLIRP4NETNS: &str = "/usr/bin/slirp4netns";

/// How long the set-up of a build may take before it is abandoned.
const SETUP_DEADLINE: Duration = Duration::from_secs(300);

/// The settings a build runs with: the daemon's configuration and the client's options.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    pub store_dir: PathBuf,
    /// Not `--disable-chroot`.
    pub use_chroot: bool,
    /// `build-chroot-dirs` (C++ `DEFAULT_CHROOT_DIRS`, empty in Guix's build).
    pub chroot_dirs: Vec<String>,
    /// `--chroot-directory` (`build-extra-chroot-dirs`): `PATH` or `INSIDE=OUTSIDE`.
    pub extra_chroot_dirs: Vec<String>,
    /// `NIX_BUILD_CORES`.
    pub build_cores: u32,
    pub impersonate_linux_26: bool,
    /// Not `--isolate-host-loopback`: a fixed-output build's `lo` stays down (without slirp).
    pub use_host_loopback: bool,
    /// `--system` (`settings.thisSystem`).
    pub system: String,
    /// Where build directories go: `$TMPDIR`, else `/tmp`.
    pub tmp_dir: PathBuf,
    /// `$GUIX`, run as `guix perform-download` for built-in builders.
    pub guix_program: PathBuf,
    /// `settings.pack()` for built-ins' `_NIX_OPTIONS`, as `key=value` lines.
    pub nix_options: Vec<(String, String)>,
    /// The program run as the sandbox helper with [`HELPER_FLAG`]: `None` is
    /// `/proc/self/exe` (the running `guix-builder`); tests name the binary.
    pub helper_program: Option<PathBuf>,
    /// Where to note the build directory as soon as it exists
    /// (`crate::schedule::build_dirs_journal`), so that a builder killed at any moment has
    /// its successor remove it; `None`: not noted (tests).
    pub journal_dir: Option<PathBuf>,
    /// Chroot helpers started ahead of time (see [`Spares`]); `None`: each build starts its own.
    pub spares: Option<Arc<Spares>>,
}

impl SandboxSettings {
    /// The daemon-wide part from the configuration; `tmp_dir` from `$TMPDIR`.
    pub fn from_config(cfg: &guix_ipc::config::DaemonConfig) -> SandboxSettings {
        SandboxSettings {
            store_dir: cfg.paths.store_dir.clone(),
            use_chroot: cfg.use_chroot,
            chroot_dirs: Vec::new(),
            extra_chroot_dirs: cfg.extra_chroot_dirs.clone(),
            build_cores: cfg.build_cores,
            impersonate_linux_26: cfg.impersonate_linux_26,
            use_host_loopback: cfg.use_host_loopback,
            system: cfg.system.clone(),
            tmp_dir: std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp")),
            guix_program: cfg.paths.guix_program.clone(),
            nix_options: Vec::new(),
            helper_program: None,
            journal_dir: None,
            spares: None,
        }
    }
}

/// One build to start.
#[derive(Debug, Clone)]
pub struct StartSpec {
    pub drv_path: StorePath,
    pub drv: Derivation,
    /// Every output of the derivation (for check builds: the redirected paths are the
    /// caller's business; these are erased from the chroot's bind mounts).
    pub outputs: BTreeMap<String, StorePath>,
    /// C++ `redirectedOutputs`: for a `--check` build without a chroot (`--disable-chroot`, or
    /// a builtin), each valid output → where the build makes it instead ([`rewrite_path`]);
    /// their hash parts are rewritten in the builder's environment and arguments. Empty
    /// otherwise.
    pub redirects: BTreeMap<StorePath, StorePath>,
    /// The closure of the inputs: bind-mounted read-only into the chroot.
    pub input_paths: BTreeSet<StorePath>,
    /// The build user's uid, gid and groups; `None` without build users.
    pub user: Option<(u32, u32, Vec<u32>)>,
    /// `exportReferencesGraph` files (name, contents) written into the build directory.
    pub extra_files: Vec<(String, Vec<u8>)>,
    pub settings: SandboxSettings,
}

/// Where a build's files are.
#[derive(Debug)]
pub struct BuildLayout {
    /// The host build directory `$TMPDIR/guix-build-NAME.drv-N` (root's).
    pub tmp_dir: PathBuf,
    /// The builder's directory: `tmp_dir/top` with a chroot, else `tmp_dir`.
    pub top: PathBuf,
    /// `top` as the builder sees it (`/tmp/guix-build-NAME.drv-0` in a chroot).
    pub top_in_sandbox: PathBuf,
    /// `<store>/<drv>.chroot/top`, with a chroot.
    pub chroot_root: Option<PathBuf>,
    /// The build directory's note, while it is one of a build in progress.
    journal: Option<crate::schedule::JournalEntry>,
    store_dir: PathBuf,
    /// [`StartSpec::redirects`].
    redirects: BTreeMap<StorePath, StorePath>,
}

impl BuildLayout {
    /// Where output `path` is on the host after the build.
    pub fn output_location(&self, path: &StorePath) -> PathBuf {
        let path = self.redirects.get(path).unwrap_or(path);
        let in_store = self.store_dir.join(path.base_name());
        match &self.chroot_root {
            Some(root) => {
                let mut p = root.as_os_str().to_owned();
                p.push(in_store.as_os_str());
                PathBuf::from(p)
            }
            None => in_store,
        }
    }

    /// `<store>/<drv>.chroot`.
    fn chroot_container(&self) -> Option<&Path> {
        self.chroot_root.as_deref().and_then(Path::parent)
    }

    /// Removes the chroot, then the build directory — or, with `keep` (`--keep-failed`),
    /// keeps the build directory as C++ `deleteTmpDir` does: the builder's directory made
    /// 0755 and, for a client that is not root, stripped of setuid/setgid/world-writable
    /// bits, given to the client, and (with a chroot) moved up to be the build directory
    /// itself. Returns the note to show the client.
    pub fn cleanup(mut self, keep: bool, client_uid: Option<u32>) -> Result<Option<String>> {
        if keep {
            if let Some(j) = &mut self.journal {
                j.kept();
            }
        }
        if let Some(c) = self.chroot_container() {
            guix_store::files::delete_tree(c).map_err(|e| sys(format!("deleting `{}'", c.display()), &e))?;
        }
        if !keep {
            guix_store::files::delete_tree(&self.tmp_dir)
                .map_err(|e| sys(format!("deleting `{}'", self.tmp_dir.display()), &e))?;
            return Ok(None);
        }
        let note = format!("note: keeping build directory `{}'", self.tmp_dir.display());
        fs::set_permissions(&self.top, fs::Permissions::from_mode(0o755))
            .map_err(|e| sys(format!("changing mode of `{}'", self.top.display()), &e))?;
        if let Some(uid) = client_uid.filter(|&u| u != 0) {
            // C++ gives it the client's gid too (its peer credentials); we have its uid: its
            // primary group.
            let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.gid.as_raw())
                .filter(|&g| g != 0);
            secure_and_chown(&self.top, uid, gid)?;
            if self.top != self.tmp_dir {
                let pivot = PathBuf::from(format!("{}.pivot", self.tmp_dir.display()));
                fs::rename(&self.tmp_dir, &pivot).map_err(|e| sys("pivoting failed build tree".into(), &e))?;
                fs::rename(pivot.join("top"), &self.tmp_dir)
                    .map_err(|e| sys("renaming failed build tree".into(), &e))?;
                let _ = fs::remove_dir(&pivot);
            }
        }
        Ok(Some(note))
    }
}

/// C++ `secureFilePerms`: strips setuid, setgid and world-writable bits, recursively.
pub fn secure_file_perms(path: &Path) -> Result<()> {
    secure(path, None)
}

/// Strips setuid, setgid and world-writable bits, then `lchown`s to `uid` (and `gid`),
/// recursively.
fn secure_and_chown(path: &Path, uid: u32, gid: Option<u32>) -> Result<()> {
    secure(path, Some((uid, gid)))
}

fn secure(path: &Path, owner: Option<(u32, Option<u32>)>) -> Result<()> {
    let md = fs::symlink_metadata(path).map_err(|e| sys(format!("getting status of `{}'", path.display()), &e))?;
    if !md.file_type().is_symlink() {
        let mode = md.permissions().mode() & 0o7777;
        let safe = mode & !(0o4000 | 0o2000 | 0o002);
        if safe != mode {
            fs::set_permissions(path, fs::Permissions::from_mode(safe))
                .map_err(|e| sys(format!("changing mode of `{}'", path.display()), &e))?;
        }
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), gid)
            .map_err(|e| sys(format!("cannot change ownership of `{}'", path.display()), &e))?;
    }
    if md.is_dir() {
        for entry in fs::read_dir(path).map_err(|e| sys(format!("reading `{}'", path.display()), &e))? {
            let entry = entry.map_err(|e| sys(format!("reading `{}'", path.display()), &e))?;
            secure(&entry.path(), owner)?;
        }
    }
    Ok(())
}

/// A running build.
#[derive(Debug)]
pub struct Started {
    /// The build process's pid in the daemon's PID namespace (`@ build-started`).
    pub pid: u32,
    /// The builder's stdout and stderr, merged: EOF once every process of the build closed it.
    pub log: pipe::Receiver,
    pub layout: BuildLayout,
    /// Messages C++ prints to the client before `@ build-started` (the slirp4netns one).
    pub notes: Vec<String>,
    helper: tokio::process::Child,
    status: BufReader<pipe::Receiver>,
    line: String,
    chroot: bool,
    exited: Option<ExitStatus>,
    /// The helper reported the build process's exit (it reaped it).
    reaped: bool,
}

impl Started {
    /// Whether nothing of the build can still run: it ran as PID 1 of its own PID namespace
    /// (a chroot build), and the helper reaped it. The kernel ends a PID namespace's init only
    /// once every other process in the namespace is gone, and no build process can start one
    /// outside it; so its build user runs nothing now and need not be killed again.
    pub fn nothing_left_running(&self) -> bool {
        self.chroot && self.reaped
    }

    /// Waits for the build process to exit. Cancel-safe.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.exited {
            return Ok(s);
        }
        loop {
            let n =
                self.status.read_line(&mut self.line).await.map_err(|e| sys("reading the build status".into(), &e))?;
            if n == 0 {
                // The helper died without a word (killed): its status stands for the build's.
                let s = self.helper.wait().await.map_err(|e| sys("waiting for the sandbox helper".into(), &e))?;
                self.exited = Some(s);
                return Ok(s);
            }
            if !self.line.ends_with('\n') {
                continue;
            }
            let report = serde_json::from_str::<Report>(self.line.trim_end());
            self.line.clear();
            if let Ok(Report::Exited(raw)) = report {
                let s = ExitStatus::from_raw(raw);
                self.exited = Some(s);
                self.reaped = true;
                let _ = self.helper.wait().await;
                return Ok(s);
            }
        }
    }

    /// Kills the whole build: PID 1 of its namespace (which takes every process in it), or
    /// the process group without a chroot, and the helper. Build users' other processes are
    /// for [`crate::users::kill_user`].
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let pid = self.pid as libc::pid_t;
            // SAFETY: signalling a process (group) of ours that has not been reaped.
            unsafe {
                if !self.chroot {
                    libc::kill(-pid, libc::SIGKILL);
                }
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = self.helper.start_kill();
    }
}

/// C++ `statusToString`, as in "builder for `DRV' failed with exit code 1".
pub fn status_to_string(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        if code == 0 {
            return "succeeded".into();
        }
        return format!("failed with exit code {code}");
    }
    if let Some(sig) = status.signal() {
        // SAFETY: strsignal returns a static or thread-local string.
        let desc = unsafe {
            let p = libc::strsignal(sig);
            if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        return format!("failed due to signal {sig} ({desc})");
    }
    "died abnormally".into()
}

fn sys(context: String, e: &io::Error) -> Error {
    Error::Setup(format!("{context}: {}", strerror(e)))
}

fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// C++ `writeFile`: created 0666 under umask 022, i.e. 0644.
fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| sys(format!("opening file `{}'", path.display()), &e))?;
    f.write_all(contents).map_err(|e| sys(format!("writing file `{}'", path.display()), &e))
}

/// C++ `createDirs`: missing directories made 0755 (0777 under umask 022).
fn create_dirs(path: &Path) -> Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true).mode(0o755);
    b.create(path).map_err(|e| sys(format!("creating directory `{}'", path.display()), &e))
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| sys(format!("changing mode of `{}'", path.display()), &e))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| sys(format!("cannot change ownership of ‘{}’", path.display()), &e))
}

/// C++ `createTempDir(tmpRoot, prefix, false, false, 0700)`: `ROOT/PREFIX-N`, the first N
/// from 0 that does not exist; the group set to ours.
fn create_temp_dir(root: &Path, prefix: &str) -> Result<PathBuf> {
    let root = fs::canonicalize(root).map_err(|e| sys(format!("getting status of `{}'", root.display()), &e))?;
    for n in 0u64.. {
        let dir = root.join(format!("{prefix}-{n}"));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                // SAFETY: getegid cannot fail.
                let gid = unsafe { libc::getegid() };
                std::os::unix::fs::chown(&dir, None, Some(gid))
                    .map_err(|e| sys(format!("setting group of directory `{}'", dir.display()), &e))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(sys(format!("creating directory `{}'", dir.display()), &e)),
        }
    }
    unreachable!("u64 temp dir counter exhausted")
}

/// C++ `canBuildLocally`.
fn can_build_locally(platform: &str, system: &str) -> bool {
    platform == system
        || (platform == "i686-linux" && system == "x86_64-linux")
        || (platform == "armhf-linux" && system == "aarch64-linux")
}

/// The kernel part of a system type (`-linux` of `x86_64-linux`).
fn kernel_of(system: &str) -> &str {
    system.find('-').map_or("", |i| &system[i..])
}

fn host_machine() -> String {
    nix::sys::utsname::uname().map(|u| u.machine().to_string_lossy().into_owned()).unwrap_or_default()
}

/// The personality of the build (`startBuilder`).
fn persona(platform: &str, settings: &SandboxSettings) -> u64 {
    let machine = host_machine();
    let mut p = 0u64; // PER_LINUX
    if (platform == "i686-linux" && (settings.system == "x86_64-linux" || machine == "x86_64"))
        || (platform == "armhf-linux" && (settings.system == "aarch64-linux" || machine == "aarch64"))
    {
        p = 0x0008; // PER_LINUX32
    }
    if (platform == "i686-linux" || platform == "x86_64-linux") && settings.impersonate_linux_26 {
        p |= libc::UNAME26 as u64;
    }
    p | libc::ADDR_NO_RANDOMIZE as u64
}

/// `tokenizeString` with the default separators.
fn tokens(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|c| b" \t\n\r".contains(c)).filter(|t| !t.is_empty())
}

/// `exportReferencesGraph`: the (file name, store path) pairs, with the C++ checks that need
/// no database ("odd number of tokens", "non-store path"); the caller checks validity and
/// computes each closure (plus the outputs of the `.drv` files in it), then writes
/// [`validity_registration`] of it as the file.
pub fn export_references_graph(drv: &Derivation, store: &StoreDir) -> Result<Vec<(String, StorePath)>> {
    let s = drv.env_var("exportReferencesGraph").unwrap_or_default();
    let toks: Vec<&[u8]> = tokens(s).collect();
    if !toks.len().is_multiple_of(2) {
        return Err(Error::build(
            FailureKind::InputRejected,
            format!("odd number of tokens in `exportReferencesGraph': `{}'", String::from_utf8_lossy(s)),
        ));
    }
    let mut out = Vec::new();
    for pair in toks.chunks(2) {
        let name = String::from_utf8_lossy(pair[0]).into_owned();
        guix_formats::store_path::check_name(&name)
            .map_err(|e| Error::build(FailureKind::InputRejected, e.to_string()))?;
        let path = String::from_utf8_lossy(pair[1]);
        let non_store = || {
            Error::build(
                FailureKind::InputRejected,
                format!("`exportReferencesGraph' contains a non-store path `{path}'"),
            )
        };
        let (sp, _) = store.parse_prefix(&path).map_err(|_| non_store())?;
        out.push((name, sp));
    }
    Ok(out)
}

/// `makeValidityRegistration(paths, false, false)`: per path (in order) the path, an empty
/// deriver line, the number of references and the references.
pub fn validity_registration(store: &StoreDir, paths: &BTreeMap<StorePath, BTreeSet<StorePath>>) -> String {
    let mut s = String::new();
    for (p, refs) in paths {
        s.push_str(&store.display(p));
        s.push_str("\n\n");
        s.push_str(&format!("{}\n", refs.len()));
        for r in refs {
            s.push_str(&store.display(r));
            s.push('\n');
        }
    }
    s
}

/// Sets everything up and starts the builder. Errors are C++'s: [`Error::Setup`] for what
/// C++ throws as a plain `Error` from `startBuilder` (the client's request fails), including
/// a failed set-up of the build process ("while setting up the child process: …").
///
/// Cancel-safe: dropping the future kills the helper (and with it the build process) and
/// removes the build directory and the chroot.
pub async fn start(spec: StartSpec) -> Result<Started> {
    let mut prepared = prepare(&spec)?;
    launch(&spec, &mut prepared).await
}

struct Prepared {
    /// Until the build runs: removed (with the chroot) when `Prepared` goes.
    layout: Option<BuildLayout>,
    plan: ChildPlan,
    notes: Vec<String>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(layout) = self.layout.take() {
            let _ = layout.cleanup(false, None);
        }
    }
}

/// C++ `addHashRewrite`: where a check build without a chroot makes the valid output `path`
/// of `drv_path` instead: the same name, with the hash part the first 32 characters of the
/// Nix base32 SHA-256 of `rewrite:DRV:PATH` (full paths).
pub fn rewrite_path(store: &StoreDir, drv_path: &StorePath, path: &StorePath) -> Option<StorePath> {
    let text = format!("rewrite:{}:{}", store.display(drv_path), store.display(path));
    let hash = guix_formats::base32::encode(&guix_formats::hash::sha256(text.as_bytes()));
    let part = HashPart::parse(hash.get(..32)?).ok()?;
    StorePath::from_parts(part, path.name()).ok()
}

/// C++ `rewriteHashes`: every occurrence of each `from` replaced by its `to` (same length).
fn rewrite_hashes(value: &[u8], rewrites: &[(String, String)]) -> Vec<u8> {
    let mut out = value.to_vec();
    for (from, to) in rewrites {
        let (from, to) = (from.as_bytes(), to.as_bytes());
        let mut i = 0;
        while i + from.len() <= out.len() {
            if &out[i..i + from.len()] == from {
                out[i..i + from.len()].copy_from_slice(to);
                i += from.len();
            } else {
                i += 1;
            }
        }
    }
    out
}

/// The parent's part of `startBuilder`: environment, directories, chroot contents, the plan.
fn prepare(spec: &StartSpec) -> Result<Prepared> {
    let s = &spec.settings;
    let drv = &spec.drv;
    let store_dir = s.store_dir.clone();
    let store = bytes(&store_dir).to_vec();
    let builtin = drv.is_builtin();
    let use_chroot = s.use_chroot && !builtin;
    let fixed_output = !drv.outputs.is_empty() && drv.outputs.values().all(|o| !o.hash.is_empty());
    let drv_name = spec.drv_path.name().to_owned();

    let mut env: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    env.insert(b"PATH".to_vec(), b"/path-not-set".to_vec());
    let home = "/homeless-shelter";
    env.insert(b"HOME".to_vec(), home.into());
    env.insert(b"NIX_STORE".to_vec(), store.clone());
    env.insert(b"NIX_BUILD_CORES".to_vec(), s.build_cores.to_string().into_bytes());
    let rewrites: Vec<(String, String)> = spec
        .redirects
        .iter()
        .map(|(from, to)| (from.hash_part().as_str().to_owned(), to.hash_part().as_str().to_owned()))
        .collect();
    for (k, v) in &drv.env {
        env.insert(k.clone(), rewrite_hashes(v, &rewrites));
    }
    // C++ `addHashRewrite`: nothing may be at a redirected output's path.
    for to in spec.redirects.values() {
        let p = store_dir.join(to.base_name());
        if fs::symlink_metadata(&p).is_ok() {
            guix_store::files::delete_tree(&p).map_err(|e| sys(format!("deleting `{}'", p.display()), &e))?;
        }
    }

    let tmp_dir = create_temp_dir(&s.tmp_dir, &format!("guix-build-{drv_name}"))?;
    // Noted at once: from here a killed builder's successor removes it.
    let journal = match &s.journal_dir {
        Some(dir) => match crate::schedule::JournalEntry::note(dir, &tmp_dir) {
            Ok(j) => Some(j),
            Err(e) => {
                let _ = guix_store::files::delete_tree(&tmp_dir);
                return Err(sys("noting the build directory".into(), &e));
            }
        },
        None => None,
    };
    let mut layout = BuildLayout {
        top: tmp_dir.clone(),
        top_in_sandbox: tmp_dir.clone(),
        tmp_dir,
        chroot_root: None,
        journal,
        store_dir: store_dir.clone(),
        redirects: spec.redirects.clone(),
    };
    // From here on, a failure removes what was made.
    let result = prepare_in(spec, &mut layout, env, use_chroot, fixed_output, builtin, home);
    match result {
        Ok((plan, notes)) => Ok(Prepared { layout: Some(layout), plan, notes }),
        Err(e) => {
            let _ = layout.cleanup(false, None);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn prepare_in(
    spec: &StartSpec,
    layout: &mut BuildLayout,
    mut env: BTreeMap<Vec<u8>, Vec<u8>>,
    use_chroot: bool,
    fixed_output: bool,
    builtin: bool,
    home: &str,
) -> Result<(ChildPlan, Vec<String>)> {
    let s = &spec.settings;
    let drv = &spec.drv;
    let store_dir = &s.store_dir;
    let store = bytes(store_dir).to_vec();
    let drv_name = spec.drv_path.name();
    let mut notes = Vec::new();

    if use_chroot {
        layout.top = layout.tmp_dir.join("top");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&layout.top)
            .map_err(|e| sys("creating top-level build directory".into(), &e))?;
        let host_tmp = fs::canonicalize("/tmp").unwrap_or_else(|_| PathBuf::from("/tmp"));
        layout.top_in_sandbox = host_tmp.join(format!("guix-build-{drv_name}-0"));
    } else {
        layout.top_in_sandbox = layout.top.clone();
    }
    let in_sandbox = bytes(&layout.top_in_sandbox).to_vec();
    for k in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
        env.insert(k.as_bytes().to_vec(), in_sandbox.clone());
    }
    if fixed_output {
        let names: Vec<Vec<u8>> =
            tokens(drv.env_var("impureEnvVars").unwrap_or_default()).map(<[u8]>::to_vec).collect();
        for name in names {
            let value = std::env::var_os(OsStr::from_bytes(&name)).map(OsString::into_vec).unwrap_or_default();
            env.insert(name, value);
        }
    }
    for (name, contents) in &spec.extra_files {
        write_file(&layout.top.join(name), contents)?;
    }
    if let Some((uid, gid, _)) = &spec.user {
        std::os::unix::fs::chown(&layout.top, Some(*uid), Some(*gid))
            .map_err(|e| sys(format!("cannot change ownership of '{}'", layout.top.display()), &e))?;
    }

    let chroot = if use_chroot {
        let (plan, mut n) = prepare_chroot(spec, layout, fixed_output)?;
        notes.append(&mut n);
        Some(plan)
    } else {
        if Path::new(home).exists() {
            return Err(Error::Setup(format!("directory `{home}' exists; please remove it")));
        }
        None
    };

    let platform = String::from_utf8_lossy(&drv.platform).into_owned();
    let exec = match drv.builtin_name() {
        Some(b"download") | Some(b"git-download") => {
            let out = spec
                .outputs
                .get("out")
                .ok_or_else(|| Error::build(FailureKind::InputRejected, "builtin derivation has no `out' output"))?;
            // A check build downloads to the redirected path.
            let out = spec.redirects.get(out).unwrap_or(out);
            let pack: String = s.nix_options.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            Exec::Download {
                guix: bytes(&s.guix_program).to_vec(),
                drv_path: format!("{}/{}", store_dir.display(), spec.drv_path.base_name()).into_bytes(),
                output: format!("{}/{}", store_dir.display(), out.base_name()).into_bytes(),
                nix_store: store.clone(),
                nix_options: pack.into_bytes(),
            }
        }
        Some(other) => Exec::UnsupportedBuiltin { name: other.to_vec() },
        None => {
            let base = drv.builder.rsplit(|&c| c == b'/').next().unwrap_or_default().to_vec();
            let rewrites: Vec<(String, String)> = spec
                .redirects
                .iter()
                .map(|(from, to)| (from.hash_part().as_str().to_owned(), to.hash_part().as_str().to_owned()))
                .collect();
            let mut args = vec![base];
            args.extend(drv.args.iter().map(|a| rewrite_hashes(a, &rewrites)));
            Exec::Builder {
                program: drv.builder.clone(),
                args,
                env: env.into_iter().collect(),
                foreign_kernel: kernel_of(&platform) != kernel_of(&s.system),
                unsupported_platform: (!can_build_locally(&platform, &s.system)).then(|| {
                    format!(
                        "a `{platform}' is required to build `{}/{}', but I am a `{}'",
                        store_dir.display(),
                        spec.drv_path.base_name(),
                        s.system
                    )
                }),
            }
        }
    };
    debug_assert!(builtin == !matches!(exec, Exec::Builder { .. }));
    let plan = ChildPlan {
        daemon_pid: std::process::id(),
        store_dir: store,
        chroot,
        cwd: in_sandbox,
        persona: persona(&platform, s),
        ids: spec.user.as_ref().map(|(uid, gid, groups)| Ids { uid: *uid, gid: *gid, groups: groups.clone() }),
        exec,
    };
    Ok((plan, notes))
}

/// The chroot's contents made by the parent, and the list of bind mounts.
fn prepare_chroot(spec: &StartSpec, layout: &mut BuildLayout, fixed_output: bool) -> Result<(ChrootPlan, Vec<String>)> {
    let s = &spec.settings;
    let store_dir = &s.store_dir;
    let mut notes = Vec::new();
    let container = store_dir.join(format!("{}.chroot", spec.drv_path.base_name()));
    let root = container.join("top");
    if fs::symlink_metadata(&container).is_ok() {
        guix_store::files::delete_tree(&container)
            .map_err(|e| sys(format!("deleting `{}'", container.display()), &e))?;
    }
    if fixed_output {
        if Path::new(SLIRP4NETNS).exists() {
            notes.push(format!("`{SLIRP4NETNS}' is not supported by guix-daemon-rs yet, network access disabled"));
        } else {
            notes.push(format!("`{SLIRP4NETNS}' can't be found in PATH, network access disabled"));
        }
    }
    fs::DirBuilder::new()
        .mode(0o750)
        .create(&container)
        .map_err(|e| sys(format!("cannot create build root container '{}'", container.display()), &e))?;
    layout.chroot_root = Some(root.clone());
    fs::DirBuilder::new()
        .mode(0o750)
        .create(&root)
        .map_err(|e| sys(format!("cannot create build root '{}'", root.display()), &e))?;
    if let Some((_, gid, _)) = &spec.user {
        chown(&root, 0, *gid)?;
    }
    let tmp = root.join("tmp");
    create_dirs(&tmp)?;
    chmod(&tmp, 0o1777)?;
    create_dirs(&root.join("etc"))?;
    let (uid, gid) = spec.user.as_ref().map_or((30001, 30000), |(u, g, _)| (*u, *g));
    write_file(
        &root.join("etc/passwd"),
        format!("nixbld:x:{uid}:{gid}:Nix build user:/:/noshell\nnobody:x:65534:65534:Nobody:/:/noshell\n").as_bytes(),
    )?;
    write_file(&root.join("etc/group"), format!("nixbld:!:{gid}:\n").as_bytes())?;

    // Target in the chroot → source on the host, in `std::map` (byte) order.
    let mut files: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut read_only: BTreeSet<Vec<u8>> = BTreeSet::new();
    if fixed_output {
        for f in ["/etc/services", "/etc/nsswitch.conf", "/etc/hosts", "/etc/resolv.conf"] {
            if Path::new(f).exists() {
                files.insert(f.into(), f.into());
                read_only.insert(f.into());
            }
        }
    } else {
        write_file(&root.join("etc/hosts"), b"127.0.0.1 localhost\n::1 localhost\n")?;
    }
    let dirs: BTreeSet<&String> = s.chroot_dirs.iter().chain(&s.extra_chroot_dirs).collect();
    for d in dirs {
        match d.split_once('=') {
            None => files.insert(d.as_bytes().to_vec(), d.as_bytes().to_vec()),
            Some((inside, outside)) => files.insert(inside.as_bytes().to_vec(), outside.as_bytes().to_vec()),
        };
    }
    files.insert(bytes(&layout.top_in_sandbox).to_vec(), bytes(&layout.top).to_vec());

    let chroot_store = PathBuf::from(OsString::from_vec([bytes(&root), bytes(store_dir)].concat()));
    create_dirs(&chroot_store)?;
    chmod(&chroot_store, 0o1775)?;
    if let Some((_, gid, _)) = &spec.user {
        chown(&chroot_store, 0, *gid)?;
    }
    let store_str = store_dir.to_string_lossy().into_owned();
    for p in &spec.input_paths {
        let abs = format!("{store_str}/{}", p.base_name()).into_bytes();
        files.insert(abs.clone(), abs.clone());
        read_only.insert(abs);
    }
    for p in spec.outputs.values() {
        files.remove(format!("{store_str}/{}", p.base_name()).as_bytes());
    }
    if !files.contains_key(b"/dev".as_slice()) {
        create_dirs(&root.join("dev/shm"))?;
        create_dirs(&root.join("dev/pts"))?;
        let mut nodes = vec!["/dev/full"];
        if Path::new("/dev/kvm").exists() {
            nodes.push("/dev/kvm");
        }
        nodes.extend(["/dev/null", "/dev/random", "/dev/tty", "/dev/urandom", "/dev/zero"]);
        for (target, link) in [
            ("/proc/self/fd", "dev/fd"),
            ("/proc/self/fd/0", "dev/stdin"),
            ("/proc/self/fd/1", "dev/stdout"),
            ("/proc/self/fd/2", "dev/stderr"),
        ] {
            let l = root.join(link);
            std::os::unix::fs::symlink(target, &l)
                .map_err(|e| sys(format!("creating symlink from `{}' to `{target}'", l.display()), &e))?;
        }
        for n in nodes {
            files.insert(n.into(), n.into());
        }
    }
    let mount_devpts = Path::new("/dev/pts/ptmx").exists() && !files.contains_key(b"/dev/pts".as_slice());
    for (target, source) in &files {
        if source.starts_with(bytes(store_dir)) {
            read_only.insert(target.clone());
        }
    }
    let binds = files
        .into_iter()
        .map(|(target, source)| Bind { read_only: read_only.contains(&target), target, source })
        .collect();
    let plan = ChrootPlan {
        root: bytes(&root).to_vec(),
        binds,
        init_loopback: !fixed_output || !s.use_host_loopback,
        mount_devpts,
    };
    Ok((plan, notes))
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(sys("creating a pipe".into(), &io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptors from pipe2.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A started sandbox helper waiting for its plan on `stdin`.
struct Helper {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    status: pipe::Receiver,
    log: pipe::Receiver,
}

impl Helper {
    /// Starts `program` as the helper; `unshared`: in the chroot build's namespaces already
    /// ([`child::UNSHARED_FLAG`]). Needs a runtime.
    fn spawn(program: &Path, unshared: bool) -> Result<Helper> {
        let (log_r, log_w) = cloexec_pipe()?;
        let (status_r, status_w) = cloexec_pipe()?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg(HELPER_FLAG);
        if unshared {
            cmd.arg(child::UNSHARED_FLAG);
        }
        // No `pre_exec`: std then starts the helper with `posix_spawn`, without a `fork` of our
        // address space. The helper itself takes `PR_SET_PDEATHSIG` and checks that we are
        // still its parent (`ChildPlan::daemon_pid`).
        cmd.stdin(Stdio::piped()).stdout(Stdio::from(status_w)).stderr(Stdio::from(log_w)).kill_on_drop(true);
        let mut child =
            cmd.spawn().map_err(|e| sys(format!("starting the sandbox helper `{}'", program.display()), &e))?;
        // Our copies of the helper's ends of the pipes: the helper's death must be their EOF.
        drop(cmd);
        let stdin = child.stdin.take().ok_or_else(|| Error::Setup("the sandbox helper has no stdin".into()))?;
        let status = pipe::Receiver::from_owned_fd(status_r).map_err(|e| sys("status pipe".into(), &e))?;
        let log = pipe::Receiver::from_owned_fd(log_r).map_err(|e| sys("log pipe".into(), &e))?;
        Ok(Helper { child, stdin, status, log })
    }
}

/// Chroot-build helpers started ahead of time, so that a build's start does not wait for a
/// helper's `exec` and for its new namespaces. One pool per builder process (its runtime owns
/// the helpers' pipes); at most [`Spares::KEPT`] wait, each an idle process blocked on
/// reading its plan, which exits when the builder does (`PR_SET_PDEATHSIG`, and its plan's
/// EOF).
///
/// They are started by a thread of the pool's own that lives as long as the pool: a helper's
/// `PR_SET_PDEATHSIG` follows the *thread* that started it, and tokio's blocking threads end
/// when idle, which would kill the spares they started.
#[derive(Debug, Default)]
pub struct Spares {
    kept: Mutex<Vec<HelperSlot>>,
    /// Wakes the starting thread (made on first use) with the helper program.
    starter: Mutex<Option<std::sync::mpsc::Sender<PathBuf>>>,
}

/// A spare helper (behind a type that `Debug` can show).
struct HelperSlot(Helper);

impl std::fmt::Debug for HelperSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Helper({:?})", self.0.child.id())
    }
}

impl Spares {
    /// How many spare helpers wait at most.
    pub const KEPT: usize = 2;

    /// The pids of the spares waiting now.
    pub fn waiting(&self) -> Vec<u32> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(|h| h.0.child.id()).collect()
    }

    /// A waiting spare. It may have died meanwhile (killed by someone): then `launch` sees its
    /// pipe's EOF before any report and starts a helper of the build's own.
    fn take(&self) -> Option<Helper> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).pop().map(|h| h.0)
    }

    /// Starts spare helpers of `program` until [`Spares::KEPT`] wait, off the caller's path
    /// (each start is a `posix_spawn` and its `exec`). Needs a runtime.
    fn refill(self: &Arc<Self>, program: PathBuf) {
        let mut starter = self.starter.lock().unwrap_or_else(|p| p.into_inner());
        if starter.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
            let pool = Arc::downgrade(self);
            let rt = tokio::runtime::Handle::current();
            let started = std::thread::Builder::new().name("spare-helpers".into()).spawn(move || {
                let _rt = rt.enter();
                // Ends when the pool (the sender's owner) is dropped.
                while let Ok(program) = rx.recv() {
                    let Some(pool) = pool.upgrade() else { return };
                    pool.fill(&program);
                }
            });
            match started {
                Ok(_) => *starter = Some(tx),
                Err(e) => {
                    eprintln!("guix-builder: starting the spare helpers' thread: {e}");
                    return;
                }
            }
        }
        if let Some(tx) = starter.as_ref() {
            let _ = tx.send(program);
        }
    }

    fn fill(&self, program: &Path) {
        while self.kept.lock().unwrap_or_else(|p| p.into_inner()).len() < Spares::KEPT {
            match Helper::spawn(program, true) {
                Ok(h) => self.kept.lock().unwrap_or_else(|p| p.into_inner()).push(HelperSlot(h)),
                Err(e) => {
                    eprintln!("guix-builder: starting a spare sandbox helper: {e}");
                    return;
                }
            }
        }
    }
}

/// Starts the helper with the plan (a spare one for a chroot build, when there is one) and
/// waits until the build process is set up.
async fn launch(spec: &StartSpec, prepared: &mut Prepared) -> Result<Started> {
    let json = serde_json::to_vec(&prepared.plan).map_err(|e| Error::Setup(format!("encoding the build plan: {e}")))?;
    let program = spec.settings.helper_program.clone().unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let chroot = prepared.plan.chroot.is_some();
    let spares = spec.settings.spares.as_ref().filter(|_| chroot);
    let mut spare = spares.and_then(|s| s.take());
    loop {
        let from_spare = spare.is_some();
        let Helper { mut child, mut stdin, status, log } = match spare.take() {
            Some(h) => {
                // Back at our priority before it is woken with its plan (it waits at a lower
                // one, `child::SPARE_NICE`).
                if let Some(pid) = h.child.id() {
                    // SAFETY: plain system call on our own child.
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, 0) };
                }
                h
            }
            None => Helper::spawn(&program, false)?,
        };
        let mut status = BufReader::new(status);
        let mut reported = false;
        let setup = async {
            // A helper that dies early makes this write fail; its report says why.
            let _ = stdin.write_all(&json).await;
            drop(stdin);
            let mut pid = None;
            let mut line = String::new();
            loop {
                line.clear();
                let n = status.read_line(&mut line).await.map_err(|e| sys("reading the build status".into(), &e))?;
                if n == 0 {
                    return Err(None);
                }
                reported = true;
                match serde_json::from_str::<Report>(line.trim_end()) {
                    Ok(Report::Pid(p)) => pid = Some(p),
                    Ok(Report::SetUp) => return pid.ok_or(None),
                    Ok(Report::SetupFailed(msg)) => return Err(Some(Error::Setup(msg))),
                    Ok(Report::Exited(_)) => return Err(None),
                    Err(e) => return Err(Some(Error::Setup(format!("bad report from the sandbox helper: {e}")))),
                }
            }
        };
        let outcome = tokio::time::timeout(SETUP_DEADLINE, setup).await;
        let pid = match outcome {
            Ok(Ok(pid)) => pid,
            Ok(Err(None)) if from_spare && !reported => {
                // A spare that died before it said anything (killed while it waited): it
                // started nothing, so the build goes to a helper of its own.
                let _ = child.start_kill();
                let _ = child.wait().await;
                continue;
            }
            Ok(Err(e)) => {
                let _ = child.start_kill();
                let st = child.wait().await.ok();
                return Err(e.map_or_else(
                    || {
                        Error::Setup(format!(
                            "the sandbox helper failed ({})",
                            st.as_ref().map_or("?".into(), status_to_string)
                        ))
                    },
                    |e| match e {
                        Error::Io { context, source } => sys(context, &source),
                        e => e,
                    },
                ));
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(Error::Setup(format!(
                    "setting up the build environment took more than {} s",
                    SETUP_DEADLINE.as_secs()
                )));
            }
        };
        // The next spare only now: its new namespaces (the network one takes the kernel's
        // rtnl lock) would slow down this build's set-up (its loopback takes it too).
        if let Some(s) = spares {
            s.refill(program.clone());
        }
        return started(prepared, pid, log, child, status);
    }
}

/// The build set up by `child` (the helper), whose build process is `pid`.
fn started(
    prepared: &mut Prepared,
    pid: u32,
    log: pipe::Receiver,
    child: tokio::process::Child,
    status: BufReader<pipe::Receiver>,
) -> Result<Started> {
    let layout = prepared.layout.take().ok_or_else(|| Error::Setup("build layout used twice".into()))?;
    Ok(Started {
        pid,
        log,
        layout,
        notes: std::mem::take(&mut prepared.notes),
        helper: child,
        status,
        line: String::new(),
        chroot: prepared.plan.chroot.is_some(),
        exited: None,
        reaped: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_texts_are_the_cxx_ones() {
        assert_eq!(status_to_string(&ExitStatus::from_raw(3 << 8)), "failed with exit code 3");
        assert_eq!(status_to_string(&ExitStatus::from_raw(0)), "succeeded");
        assert_eq!(status_to_string(&ExitStatus::from_raw(9)), "failed due to signal 9 (Killed)");
        assert_eq!(status_to_string(&ExitStatus::from_raw(15)), "failed due to signal 15 (Terminated)");
    }

    #[test]
    fn check_builds_without_chroot_are_redirected_as_cxx() {
        // Observed: the C++ daemon 1.5.0 checking a `builtin:download` derivation.
        let store = StoreDir::default();
        let drv = store.parse("/gnu/store/adk7f5yj8vi0nd3ck8pl26jvk85d4qg2-file.txt.drv").expect("drv");
        let out = store.parse("/gnu/store/6cp4dps094ian9f9gmpl4s7w9aiw9jcr-file.txt").expect("out");
        let to = rewrite_path(&store, &drv, &out).expect("redirected");
        assert_eq!(store.display(&to), "/gnu/store/0m2p3is4nisjwzjm499ab34cgnzsgkwb-file.txt");
        let rewrites = vec![(out.hash_part().as_str().to_owned(), to.hash_part().as_str().to_owned())];
        assert_eq!(rewrite_hashes(store.display(&out).as_bytes(), &rewrites), store.display(&to).into_bytes());
        assert_eq!(rewrite_hashes(b"nothing", &rewrites), b"nothing".to_vec());
    }

    #[test]
    fn personality_as_start_builder() {
        let mut s = SandboxSettings::from_config(&guix_ipc::config::DaemonConfig::default());
        s.system = "x86_64-linux".into();
        assert_eq!(persona("x86_64-linux", &s), 0x0040000);
        assert_eq!(persona("i686-linux", &s), 0x0040008);
        s.impersonate_linux_26 = true;
        assert_eq!(persona("x86_64-linux", &s), 0x0060000);
        assert_eq!(persona("aarch64-linux", &s), 0x0040000);
    }

    #[test]
    fn platforms() {
        assert!(can_build_locally("i686-linux", "x86_64-linux"));
        assert!(!can_build_locally("aarch64-linux", "x86_64-linux"));
        assert_eq!(kernel_of("i586-gnu"), "-gnu");
        assert_ne!(kernel_of("i586-gnu"), kernel_of("x86_64-linux"));
    }

    #[test]
    fn canon_path_resolves_like_cxx() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        fs::create_dir(base.join("a")).unwrap();
        fs::write(base.join("a/f"), "").unwrap();
        std::os::unix::fs::symlink("a", base.join("l")).unwrap();
        std::os::unix::fs::symlink(base.join("a/f"), base.join("abs")).unwrap();
        let p = |s: &str| bytes(&base).iter().chain(s.as_bytes()).copied().collect::<Vec<u8>>();
        assert_eq!(child::canon_path(&p("/l/./f")).unwrap(), p("/a/f"));
        assert_eq!(child::canon_path(&p("/abs")).unwrap(), p("/a/f"));
        assert_eq!(child::canon_path(&p("/a/../a/f")).unwrap(), p("/a/f"));
        let e = child::canon_path(&p("/nope/x")).unwrap_err();
        assert_eq!(e, format!("getting status of `{}/nope': No such file or directory", base.display()));
        assert!(child::is_in_store(b"/gnu/store", b"/gnu/store/x"));
        assert!(!child::is_in_store(b"/gnu/store", b"/gnu/storex/y"));
        assert!(!child::is_in_store(b"/gnu/store", b"/gnu/store/"));
    }

    #[test]
    fn export_references_graph_checks() {
        let store = StoreDir::default();
        let mut drv = Derivation {
            outputs: BTreeMap::new(),
            input_drvs: BTreeMap::new(),
            input_srcs: BTreeSet::new(),
            platform: b"x86_64-linux".to_vec(),
            builder: b"/bin/sh".to_vec(),
            args: vec![],
            env: BTreeMap::new(),
        };
        drv.env.insert(b"exportReferencesGraph".to_vec(), b"a".to_vec());
        let e = export_references_graph(&drv, &store).unwrap_err();
        assert_eq!(e.to_string(), "odd number of tokens in `exportReferencesGraph': `a'");
        drv.env.insert(b"exportReferencesGraph".to_vec(), b"a /tmp/x".to_vec());
        let e = export_references_graph(&drv, &store).unwrap_err();
        assert_eq!(e.to_string(), "`exportReferencesGraph' contains a non-store path `/tmp/x'");
        let p = "/gnu/store/8r61nxqxvn2k5w4ai4pz9b7mxc5w0m5p-a-text";
        drv.env.insert(b"exportReferencesGraph".to_vec(), format!("g {p}/sub").into_bytes());
        let v = export_references_graph(&drv, &store).unwrap();
        assert_eq!(v[0].0, "g");
        assert_eq!(store.display(&v[0].1), p);
        let mut m = BTreeMap::new();
        m.insert(v[0].1.clone(), BTreeSet::from([v[0].1.clone()]));
        assert_eq!(validity_registration(&store, &m), format!("{p}\n\n1\n{p}\n"));
    }
}

//! The daemon's directories ([`StateDirs`], one type for every component, from the
//! configuration the supervisor hands out), and what the C++ daemon creates in them when it
//! opens the store (`LocalStore::LocalStore`): the store itself, `.links`, `profiles/per-user`,
//! `temproots`, `gcroots` (+ `gcroots/profiles`), the database directory with `reserved`,
//! `big-lock` (held shared for the process lifetime) and the `schema` check.
//!
//! The environment is read once, by the supervisor (`guix_ipc::config::Paths::from_lookup`,
//! canonical as in C++); components get the result in their [`DaemonConfig`].

use std::fs::{DirBuilder, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use guix_formats::StoreDir;
use guix_ipc::config::DaemonConfig;

use crate::db::{check_schema_version, read_schema_version};
use crate::epoch::EPOCH_FILE;
use crate::error::{Error, Result};
use crate::files::{lock_file, LockType};
use crate::scratch::SCRATCH_DIR_NAME;

/// `gc-reserved-space` default: 8 MiB.
pub const DEFAULT_RESERVED_SIZE: u64 = 8 * 1024 * 1024;

/// Where the store and its state live: the directories of the daemon's configuration, and
/// the names the C++ daemon (and ours) derives from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDirs {
    store_dir: PathBuf,
    state_dir: PathBuf,
    db_dir: PathBuf,
    log_dir: PathBuf,
    runtime_dir: PathBuf,
}

impl StateDirs {
    /// The directories of the configuration every component receives.
    pub fn from_config(config: &DaemonConfig) -> StateDirs {
        let p = &config.paths;
        StateDirs {
            store_dir: p.store_dir.clone(),
            state_dir: p.state_dir.clone(),
            db_dir: p.db_dir.clone(),
            log_dir: p.log_dir.clone(),
            runtime_dir: config.runtime_dir.clone(),
        }
    }

    /// Explicit directories (tests, tools); the runtime directory is `STATE/daemon-rs`, as
    /// the supervisor makes it. The store directory must be valid UTF-8.
    pub fn new(store_dir: PathBuf, state_dir: PathBuf, db_dir: PathBuf, log_dir: PathBuf) -> StateDirs {
        let runtime_dir = state_dir.join("daemon-rs");
        StateDirs { store_dir, state_dir, db_dir, log_dir, runtime_dir }
    }

    /// Everything under one root (`ROOT/store`, `ROOT/var-guix`, `ROOT/var-guix/db`,
    /// `ROOT/var-log-guix`): the layout of the rig's `--keep` directory.
    pub fn under(root: &Path) -> StateDirs {
        let state = root.join("var-guix");
        StateDirs::new(root.join("store"), state.clone(), state.join("db"), root.join("var-log-guix"))
    }

    pub fn store_path(&self) -> &Path {
        &self.store_dir
    }

    /// The store directory as the prefix of store paths.
    pub fn store_dir(&self) -> Result<StoreDir> {
        let s = self.store_dir.to_str().ok_or_else(|| Error::NotUtf8(self.store_dir.display().to_string()))?;
        StoreDir::new(s).map_err(|_| Error::NotAbsolute(s.to_owned()))
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn db_dir(&self) -> &Path {
        &self.db_dir
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Our private runtime directory (link sockets, the change epoch).
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// The change epoch's file ([`crate::epoch`]).
    pub fn epoch_path(&self) -> PathBuf {
        self.runtime_dir.join(EPOCH_FILE)
    }

    /// The scratch directory ([`crate::scratch`]).
    pub fn scratch_dir(&self) -> PathBuf {
        self.store_dir.join(SCRATCH_DIR_NAME)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.store_dir.join(".links")
    }

    pub fn profiles_dir(&self) -> PathBuf {
        self.state_dir.join("profiles")
    }

    pub fn per_user_dir(&self) -> PathBuf {
        self.profiles_dir().join("per-user")
    }

    pub fn temproots_dir(&self) -> PathBuf {
        self.state_dir.join("temproots")
    }

    pub fn gcroots_dir(&self) -> PathBuf {
        self.state_dir.join("gcroots")
    }

    pub fn big_lock_path(&self) -> PathBuf {
        self.db_dir.join("big-lock")
    }

    pub fn reserved_path(&self) -> PathBuf {
        self.db_dir.join("reserved")
    }

    /// Creates the store and state layout as the C++ daemon does at store open, takes the big
    /// lock (shared) and checks `db/schema`. Keep the returned [`StoreLock`] for the lifetime
    /// of the process. A read-only store mount is an error (the C++ daemon remounts it in a
    /// private namespace when root; not done here).
    pub fn init(&self, opts: &InitOptions) -> Result<StoreLock> {
        create_dirs(&self.store_dir)?;
        check_store_writable(&self.store_dir)?;
        create_dirs(&self.links_dir())?;
        create_dirs(&self.profiles_dir())?;
        create_dirs(&self.temproots_dir())?;
        create_dirs(&self.db_dir)?;
        let gcroots = self.gcroots_dir();
        if std::fs::symlink_metadata(&gcroots).is_err() {
            create_dirs(&gcroots)?;
            let link = gcroots.join("profiles");
            std::os::unix::fs::symlink(self.profiles_dir(), &link)
                .map_err(Error::sys(format!("creating symlink to `{}'", link.display())))?;
        }
        let per_user = self.per_user_dir();
        create_dirs(&per_user)?;

        if let Some(group) = &opts.build_users_group {
            if nix::unistd::getuid().is_root() {
                set_multi_user_permissions(&self.store_dir, &per_user, group)?;
            }
        }
        check_store_not_symlink(&self.store_dir)?;

        // Errors are ignored, as in C++: the reserve only helps the GC on a full disk.
        let reserved = self.reserved_path();
        if opts.reserve_space {
            let _ = reserve(&reserved, opts.reserved_size);
        } else {
            let _ = std::fs::remove_file(&reserved);
        }

        let lock_path = self.big_lock_path();
        let big_lock =
            match OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&lock_path) {
                Ok(f) => OwnedFd::from(f),
                Err(e) if e.raw_os_error() == Some(nix::libc::EACCES) => {
                    return Ok(StoreLock { big_lock: None });
                }
                Err(e) => return Err(Error::sys(format!("opening lock file `{}'", lock_path.display()))(e)),
            };
        let read_lock =
            |wait| lock_file(big_lock.as_fd(), LockType::Read, wait).map_err(Error::sys("acquiring/releasing lock"));
        if !read_lock(false)? {
            eprintln!("waiting for the big store lock...");
            read_lock(true)?;
        }
        check_schema_version(read_schema_version(&self.db_dir)?)?;
        Ok(StoreLock { big_lock: Some(big_lock) })
    }
}

/// Options of [`StateDirs::init`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Keep `db/reserved` at `reserved_size` bytes (false: delete it, as the GC does).
    pub reserve_space: bool,
    /// `gc-reserved-space`.
    pub reserved_size: u64,
    /// `--build-users-group`: when running as root, the store becomes `root:<group>` 01775
    /// and `profiles/per-user` 0755.
    pub build_users_group: Option<String>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions { reserve_space: true, reserved_size: DEFAULT_RESERVED_SIZE, build_users_group: None }
    }
}

/// The shared lock on `db/big-lock`, held until dropped. Without it (`big-lock` not openable:
/// `EACCES`) the store is read-only, as in the C++ daemon.
#[derive(Debug)]
pub struct StoreLock {
    big_lock: Option<OwnedFd>,
}

impl StoreLock {
    /// Whether the big lock could not be opened (the C++ `readOnlyMode`).
    pub fn read_only(&self) -> bool {
        self.big_lock.is_none()
    }
}

/// `createDirs`: `mkdir -p`, mode 0755 (0777 under the daemon's umask 022).
fn create_dirs(path: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(Error::sys(format!("creating directory `{}'", path.display())))
}

fn check_store_writable(store: &Path) -> Result<()> {
    let st = nix::sys::statvfs::statvfs(store)
        .map_err(|e| Error::sys("getting info about the store mount point")(e.into()))?;
    if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Err(Error::StoreReadOnly(store.display().to_string()));
    }
    Ok(())
}

/// `checkStoreNotSymlink` (skipped when `NIX_IGNORE_SYMLINK_STORE=1`).
fn check_store_not_symlink(store: &Path) -> Result<()> {
    if std::env::var_os("NIX_IGNORE_SYMLINK_STORE").is_some_and(|v| v == "1") {
        return Ok(());
    }
    let mut p = Some(store);
    while let Some(path) = p.filter(|p| *p != Path::new("/")) {
        let md =
            std::fs::symlink_metadata(path).map_err(Error::sys(format!("getting status of `{}'", path.display())))?;
        if md.file_type().is_symlink() {
            return Err(Error::StoreIsSymlink(path.display().to_string()));
        }
        p = path.parent();
    }
    Ok(())
}

fn set_multi_user_permissions(store: &Path, per_user: &Path, group: &str) -> Result<()> {
    std::fs::set_permissions(per_user, std::fs::Permissions::from_mode(0o755))
        .map_err(Error::sys(format!("could not set permissions on '{}' to 755", per_user.display())))?;
    let gr = nix::unistd::Group::from_name(group).ok().flatten().ok_or_else(|| Error::NoSuchGroup(group.to_owned()))?;
    let md =
        std::fs::metadata(store).map_err(Error::sys(format!("getting attributes of path '{}'", store.display())))?;
    const PERM: u32 = 0o1775;
    if md.uid() != 0 || md.gid() != gr.gid.as_raw() || md.mode() & 0o7777 != PERM {
        nix::unistd::chown(store, Some(nix::unistd::Uid::from_raw(0)), Some(gr.gid))
            .map_err(|e| Error::sys(format!("changing ownership of path '{}'", store.display()))(e.into()))?;
        std::fs::set_permissions(store, std::fs::Permissions::from_mode(PERM))
            .map_err(Error::sys(format!("changing permissions on path '{}'", store.display())))?;
    }
    Ok(())
}

/// Makes `db/reserved` exactly `size` bytes (`posix_fallocate`, else writing `X`s).
fn reserve(path: &Path, size: u64) -> std::io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    let f = OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path)?;
    let len = i64::try_from(size).map_err(|_| std::io::Error::from_raw_os_error(nix::libc::EFBIG))?;
    if nix::fcntl::posix_fallocate(f.as_raw_fd(), 0, len).is_err() {
        use std::io::Write;
        let chunk = vec![b'X'; 64 * 1024];
        let mut left = size;
        let mut w = &f;
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            w.write_all(chunk.get(..n).unwrap_or(&chunk))?;
            left -= n as u64;
        }
        f.set_len(size)?;
    }
    Ok(())
}

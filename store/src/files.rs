//! Store file policy: how every component that writes, removes or locks store files treats
//! them, as the C++ daemon does (`canonicalisePathMetaData` — the mtime-only form for items
//! written by the daemon, the full one with the build-user ownership check for build outputs —,
//! `deletePath`, `lockFile`).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg};

/// Creates `dest` (which must not exist) holding `contents`, canonical as a store file: mode
/// 0444, mtime 1. Shared by the writers of text items (in scratch space or, in store-db, at
/// their final name).
pub fn write_canonical_text(dest: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o444).open(dest)?;
    f.write_all(contents)?;
    // Through the descriptor: no second path lookup (it is one regular file, no tree to walk).
    let one = nix::sys::time::TimeSpec::new(1, 0);
    nix::sys::stat::futimens(f.as_raw_fd(), &one, &one).map_err(io::Error::from)
}

/// Sets the modification time of every file, directory and symlink of the tree to 1 (the
/// epoch plus one second), as `canonicalisePathMetaData` does; modes are the writer's. Shared
/// by every component that writes items.
pub fn canonicalise(path: &Path) -> io::Result<()> {
    let one = nix::sys::time::TimeSpec::new(1, 0);
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            canonicalise(&entry?.path())?;
        }
    }
    nix::sys::stat::utimensat(None, path, &one, &one, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
        .map_err(io::Error::from)
}

/// The inodes [`canonicalise_path_metadata`] already took over in one build (C++
/// `InodesSeen`), shared by all outputs of the build so that hard links between them pass the
/// ownership check: `(st_dev, st_ino)`.
pub type InodesSeen = HashSet<(u64, u64)>;

/// Why [`canonicalise_path_metadata`] refused or failed; `Display` is the C++ message.
#[derive(Debug, thiserror::Error)]
pub enum CanonicaliseError {
    /// Not a regular file, directory or symlink (C++ `Error`).
    #[error("file `{}' has an unsupported type", .0.display())]
    UnsupportedType(PathBuf),
    /// A file not owned by the build user that this build did not take over before, e.g. a
    /// hard link to `/etc/shadow` (C++ `BuildError`).
    #[error("invalid ownership on file `{}'", .0.display())]
    InvalidOwnership(PathBuf),
    /// The top-level path is still not ours afterwards (C++ `Error`).
    #[error("wrong ownership of top-level store path `{}'", .0.display())]
    WrongTopOwnership(PathBuf),
    /// A failing system call, displayed like the C++ `SysError`.
    #[error("{context}: {}", crate::strerror(source))]
    Sys { context: String, source: io::Error },
}

/// C++ `canonicalisePathMetaData(path, fromUid, inodesSeen)`, for build outputs: every file,
/// directory and symlink of the tree gets mode 0444 or 0555 (unless it already has one of
/// them; symlinks keep theirs), mtime 1 (atime kept, whole seconds), and the daemon's euid
/// and egid (only where the owner is not already the euid). With `from_uid` (the build user),
/// anything owned by another uid is refused unless it is an inode this build already took
/// over (a hard link within the outputs). Messages name `shown` (and the names below it)
/// instead of `path`, so that an output being worked on elsewhere is reported where the
/// build left it.
pub fn canonicalise_path_metadata(
    path: &Path,
    shown: &Path,
    from_uid: Option<u32>,
    seen: &mut InodesSeen,
) -> Result<(), CanonicaliseError> {
    canonicalise_node(path, shown, from_uid, None, seen)?;
    check_top_owner(path, shown)
}

/// Whether a file already ours is the `.links` entry of its content (see [`canonicalise_resumed`]).
pub type Linked = dyn Fn(&Path, &fs::Metadata) -> bool;

/// [`canonicalise_path_metadata`] from `uid` again, of a tree whose earlier canonicalisation
/// was interrupted (the process doing it was killed): nodes already ours are taken as done
/// by it and walked again, but only directories, files or symlinks with one link, and files
/// for which `linked` says yes (the deduplication that followed the first attempt made them
/// another name of their `.links` entry). A node
/// that was ours before the first attempt and has one link cannot be another name of a file
/// outside the tree: `uid` could only have made a hard link to it, which adds a link (and
/// `fs.protected_hardlinks` forbids that anyway); nor can `uid` have put it in a directory
/// that is already ours.
pub fn canonicalise_resumed(
    path: &Path,
    shown: &Path,
    uid: u32,
    linked: &Linked,
    seen: &mut InodesSeen,
) -> Result<(), CanonicaliseError> {
    canonicalise_node(path, shown, Some(uid), Some(linked), seen)?;
    check_top_owner(path, shown)
}

fn check_top_owner(path: &Path, shown: &Path) -> Result<(), CanonicaliseError> {
    let md = fs::symlink_metadata(path).map_err(|source| CanonicaliseError::Sys {
        context: format!("getting attributes of path `{}'", shown.display()),
        source,
    })?;
    if md.uid() != nix::unistd::geteuid().as_raw() {
        return Err(CanonicaliseError::WrongTopOwnership(shown.to_owned()));
    }
    Ok(())
}

fn canonicalise_node(
    path: &Path,
    shown: &Path,
    from_uid: Option<u32>,
    resumed: Option<&Linked>,
    seen: &mut InodesSeen,
) -> Result<(), CanonicaliseError> {
    let sys = |context: String| move |source| CanonicaliseError::Sys { context, source };
    let md = fs::symlink_metadata(path).map_err(sys(format!("getting attributes of path `{}'", shown.display())))?;
    let ft = md.file_type();
    if !(ft.is_file() || ft.is_dir() || ft.is_symlink()) {
        return Err(CanonicaliseError::UnsupportedType(shown.to_owned()));
    }
    let inode = (md.dev(), md.ino());
    let done_before = resumed.is_some_and(|linked| {
        md.uid() == nix::unistd::geteuid().as_raw()
            && (ft.is_dir() || (!seen.contains(&inode) && (md.nlink() == 1 || (ft.is_file() && linked(path, &md)))))
    });
    if let Some(uid) = from_uid.filter(|_| !done_before) {
        if md.uid() != uid {
            // C++ asserts that such a thing is not a directory; refusing it is the safe reading.
            if ft.is_dir() || !seen.contains(&inode) {
                return Err(CanonicaliseError::InvalidOwnership(shown.to_owned()));
            }
            // Another name of an inode already made canonical: nothing to do.
            return Ok(());
        }
    }
    seen.insert(inode);

    // The owner first: once the node is ours, its previous owner can no longer change its mode
    // (through a descriptor it kept), so the mode read again now is the one to correct. And a
    // directory is ours and read-only before its entries are read, so nobody else can swap
    // an entry (for a symlink to a file outside) between our `lstat` and our `chmod`.
    let euid = nix::unistd::geteuid().as_raw();
    let md = if md.uid() != euid {
        std::os::unix::fs::lchown(path, Some(euid), Some(nix::unistd::getegid().as_raw()))
            .map_err(sys(format!("changing owner of `{}' to {euid}", shown.display())))?;
        fs::symlink_metadata(path).map_err(sys(format!("getting attributes of path `{}'", shown.display())))?
    } else {
        md
    };
    if !ft.is_symlink() {
        let perm = md.mode() & 0o7777;
        if perm != 0o444 && perm != 0o555 {
            let mode = (md.mode() & nix::libc::S_IFMT) | 0o444 | if md.mode() & 0o100 != 0 { 0o111 } else { 0 };
            // The C++ message prints the mode with its file type bits.
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(sys(format!("changing mode of `{}' to {mode:o}", shown.display())))?;
        }
    }
    if md.mtime() != 1 {
        let atime = nix::sys::time::TimeSpec::new(md.atime(), 0);
        let mtime = nix::sys::time::TimeSpec::new(1, 0);
        nix::sys::stat::utimensat(None, path, &atime, &mtime, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
            .map_err(io::Error::from)
            .map_err(sys(format!("changing modification time of `{}'", shown.display())))?;
    }
    if ft.is_dir() {
        let rd = fs::read_dir(path).map_err(sys(format!("opening directory `{}'", shown.display())))?;
        for entry in rd {
            let entry = entry.map_err(sys(format!("reading directory `{}'", shown.display())))?;
            let name = entry.file_name();
            canonicalise_node(&path.join(&name), &shown.join(&name), from_uid, resumed, seen)?;
        }
    }
    Ok(())
}

/// `deletePath`: removes a file, symlink or directory tree, making directories writable
/// first (store and scratch directories are 0555). A path that does not exist is not an error.
/// Shared by every component that removes scratch or store trees.
pub fn delete_tree(path: &Path) -> io::Result<()> {
    delete_tree_counted(path, 0).map(drop)
}

/// [`delete_tree`], returning the bytes it freed as the C++ `deletePath(path, bytesFreed,
/// linkThreshold)` counts them: the size of every file or symlink that had at most
/// `link_threshold` links (so with deduplication, threshold 2, a file also in `.links` counts
/// once here and once more when its `.links` entry goes: the C++ figure, kept as it is).
/// Directories count nothing.
pub fn delete_tree_counted(path: &Path, link_threshold: u64) -> io::Result<u64> {
    let md = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut freed = 0;
    if md.is_dir() {
        if md.mode() & 0o700 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode((md.mode() | 0o700) & 0o7777))?;
        }
        for entry in fs::read_dir(path)? {
            freed += delete_tree_counted(&entry?.path(), link_threshold)?;
        }
        match fs::remove_dir(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(freed),
        }
    } else {
        if md.nlink() <= link_threshold {
            freed = md.size();
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(freed),
        }
    }
}

/// A POSIX record lock's kind (the C++ `LockType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockType {
    /// Shared (`ltRead`).
    Read,
    /// Exclusive (`ltWrite`).
    Write,
}

/// `lockFile(fd, type, wait)`: a POSIX record lock on the whole file (`fcntl`, so it is the
/// process's, shared with the C++ daemon and its tools), retried when a signal interrupts it.
/// Returns false when `wait` is false and another process holds a conflicting lock.
pub fn lock_file(fd: BorrowedFd<'_>, ty: LockType, wait: bool) -> io::Result<bool> {
    let l_type = match ty {
        LockType::Read => nix::libc::F_RDLCK,
        LockType::Write => nix::libc::F_WRLCK,
    };
    let lock =
        nix::libc::flock { l_type: l_type as _, l_whence: nix::libc::SEEK_SET as _, l_start: 0, l_len: 0, l_pid: 0 };
    loop {
        let arg = if wait { FcntlArg::F_SETLKW(&lock) } else { FcntlArg::F_SETLK(&lock) };
        match fcntl(fd.as_raw_fd(), arg) {
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EACCES | nix::errno::Errno::EAGAIN) if !wait => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{lchown, symlink};

    /// A uid that is not ours, as a build user would be (the tests run as root).
    const BUILD_UID: u32 = 30_123;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn canonical_metadata_of_a_build_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("plain"), b"x").unwrap();
        fs::write(out.join("exec"), b"x").unwrap();
        fs::write(out.join("suid"), b"x").unwrap();
        fs::write(out.join("ro"), b"x").unwrap();
        fs::create_dir(out.join("sub")).unwrap();
        symlink("plain", out.join("link")).unwrap();
        fs::set_permissions(out.join("plain"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(out.join("exec"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(out.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::set_permissions(out.join("ro"), fs::Permissions::from_mode(0o444)).unwrap();
        fs::set_permissions(out.join("sub"), fs::Permissions::from_mode(0o2775)).unwrap();
        for name in ["", "plain", "exec", "suid", "ro", "sub", "link"] {
            lchown(out.join(name), Some(BUILD_UID), Some(BUILD_UID)).unwrap();
        }
        let mut seen = InodesSeen::new();
        canonicalise_path_metadata(&out, &out, Some(BUILD_UID), &mut seen).unwrap();
        assert_eq!(mode(&out), 0o555);
        assert_eq!(mode(&out.join("plain")), 0o444);
        assert_eq!(mode(&out.join("exec")), 0o555);
        assert_eq!(mode(&out.join("suid")), 0o555, "setuid dropped");
        assert_eq!(mode(&out.join("ro")), 0o444);
        assert_eq!(mode(&out.join("sub")), 0o555, "setgid dropped");
        assert_eq!(mode(&out.join("link")), 0o777, "symlinks keep their mode");
        let euid = nix::unistd::geteuid().as_raw();
        for name in ["", "plain", "exec", "suid", "ro", "sub", "link"] {
            let md = fs::symlink_metadata(out.join(name)).unwrap();
            assert_eq!(md.mtime(), 1, "{name}");
            assert_eq!(md.uid(), euid, "{name}");
            assert_eq!(md.gid(), nix::unistd::getegid().as_raw(), "{name}");
        }
        assert_eq!(seen.len(), 7);
    }

    #[test]
    fn foreign_files_are_refused_unless_already_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        // Owned by someone else (as a hard link to /etc/shadow would be).
        fs::write(out.join("foreign"), b"secret").unwrap();
        fs::set_permissions(out.join("foreign"), fs::Permissions::from_mode(0o600)).unwrap();
        lchown(&out, Some(BUILD_UID), None).unwrap();
        let shown = Path::new("/gnu/store/x.chroot/top/out");
        let err = canonicalise_path_metadata(&out, shown, Some(BUILD_UID), &mut InodesSeen::new()).unwrap_err();
        assert_eq!(err.to_string(), "invalid ownership on file `/gnu/store/x.chroot/top/out/foreign'");
        assert_eq!(mode(&out.join("foreign")), 0o600, "left alone");

        // A hard link to a file of this build that an earlier output already took over.
        let dir2 = tempfile::tempdir().unwrap();
        let first = dir2.path().join("first");
        fs::write(&first, b"shared").unwrap();
        lchown(&first, Some(BUILD_UID), None).unwrap();
        let mut seen = InodesSeen::new();
        canonicalise_path_metadata(&first, &first, Some(BUILD_UID), &mut seen).unwrap();
        let second = dir2.path().join("second");
        fs::create_dir(&second).unwrap();
        fs::hard_link(&first, second.join("same")).unwrap();
        lchown(&second, Some(BUILD_UID), None).unwrap();
        canonicalise_path_metadata(&second, &second, Some(BUILD_UID), &mut seen).unwrap();
        // Without that earlier output, the same link is foreign.
        let err = canonicalise_path_metadata(&second, &second, Some(BUILD_UID), &mut InodesSeen::new()).unwrap_err();
        assert!(matches!(err, CanonicaliseError::InvalidOwnership(_)), "{err}");
        // Without a build user nothing is refused for ownership.
        canonicalise_path_metadata(&out, &out, None, &mut InodesSeen::new()).unwrap();
        assert_eq!(mode(&out.join("foreign")), 0o444);
    }

    #[test]
    fn unsupported_types_and_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        nix::unistd::mkfifo(&out.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let err = canonicalise_path_metadata(&out, &out, None, &mut InodesSeen::new()).unwrap_err();
        assert_eq!(err.to_string(), format!("file `{}' has an unsupported type", out.join("fifo").display()));
        let err =
            canonicalise_path_metadata(&dir.path().join("nope"), Path::new("/shown"), None, &mut InodesSeen::new())
                .unwrap_err();
        assert_eq!(err.to_string(), "getting attributes of path `/shown': No such file or directory");
    }

    #[test]
    fn write_lock_excludes_another_process_and_read_locks_share() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let f = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).unwrap();
        assert!(lock_file(f.as_fd(), LockType::Read, false).unwrap());
        // POSIX locks are per process: ask a child.
        let try_in_child = |ty: LockType| {
            // SAFETY: the child only tries a lock and exits without returning.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    let code = match fs::OpenOptions::new().read(true).write(true).open(&path) {
                        Ok(g) => match lock_file(g.as_fd(), ty, false) {
                            Ok(true) => 0,
                            Ok(false) => 1,
                            Err(_) => 2,
                        },
                        Err(_) => 3,
                    };
                    // SAFETY: `_exit` in the forked child, no destructors of the parent's state.
                    unsafe { nix::libc::_exit(code) }
                }
                nix::unistd::ForkResult::Parent { child } => match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("{other:?}"),
                },
            }
        };
        assert_eq!(try_in_child(LockType::Read), 0, "read locks are shared");
        assert_eq!(try_in_child(LockType::Write), 1, "a write lock waits for the reader");
        assert!(lock_file(f.as_fd(), LockType::Write, false).unwrap());
        assert_eq!(try_in_child(LockType::Read), 1, "a read lock waits for the writer");
    }
}

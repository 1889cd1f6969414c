//! Store file policy: how every component that writes, removes or locks store files treats
//! them, as the C++ daemon does (`canonicalisePathMetaData`, `deletePath`, `lockFile`).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

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

/// `deletePath`: removes a file, symlink or directory tree, making directories writable
/// first (store and scratch directories are 0555). A path that does not exist is not an error.
/// Shared by every component that removes scratch or store trees.
pub fn delete_tree(path: &Path) -> io::Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if md.is_dir() {
        if md.mode() & 0o700 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode((md.mode() | 0o700) & 0o7777))?;
        }
        for entry in fs::read_dir(path)? {
            delete_tree(&entry?.path())?;
        }
        match fs::remove_dir(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    } else {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
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

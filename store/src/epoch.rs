//! The change epoch: a counter, shared between processes, that the database writer advances
//! after every commit that may have changed or removed what a reader already read.
//!
//! Readers that keep answers in memory (socket-front's path-info cache) read the epoch *before*
//! they query the database and tag what they keep with it; an answer whose tag differs from the
//! current epoch is dropped. Since the writer advances the epoch *after* its commit, any answer
//! read before the commit carries an older tag than the one visible once the commit is done,
//! and the operation that made the change replies to its client only after that.
//!
//! Adding new valid paths does not advance the epoch: a reader only keeps what was valid, and a
//! path that becomes valid changes nothing it kept. Updating an existing path's row, removing
//! a path, or anything else does.
//!
//! The counter is the first 8 bytes of a small file in the daemon's private runtime directory,
//! mapped shared by every process that opens it. The file is created once and never truncated
//! or replaced, so a restarted writer or reader maps the same counter; a writer advances it when
//! it starts, so a commit whose writer died before advancing the epoch is still seen.
//!
//! Only writes made through store-db's `DbWriter` advance the epoch. Something else writing
//! `db.sqlite` while the daemon runs (the C++ daemon started on the same store, `sqlite3` by
//! hand) is not seen by readers that keep answers; the daemons must not run at the same time.

use std::fs::OpenOptions;
use std::num::NonZeroUsize;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// Size of the mapping: one page holds the counter (the rest is unused).
const MAP_LEN: usize = 4096;

/// Name of the epoch file in the runtime directory.
pub const EPOCH_FILE: &str = "store-db.epoch";

/// The shared counter (see the module docs).
pub struct Epoch {
    map: NonNull<AtomicU64>,
    path: PathBuf,
    /// Mapped read-write (the writer) or read-only (a reader: [`Epoch::open_read_only`]).
    writable: bool,
}

// SAFETY: the mapping is only ever accessed through `AtomicU64`, which is `Sync`; the pointer
// stays valid until `drop`.
unsafe impl Send for Epoch {}
unsafe impl Sync for Epoch {}

impl Epoch {
    /// Opens the epoch file at `path` for writing, creating it when missing. Never truncates
    /// it. Mode 0644: readers that are not root (socket-front) map it read-only; the counter
    /// is no secret (the runtime directory decides who reaches it).
    pub fn open(path: &Path) -> std::io::Result<Epoch> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o644).open(path)?;
        // Made 0600 by earlier versions.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        // Only ever grown, never shrunk: a process that mapped the file before must not fault.
        if file.metadata()?.len() < MAP_LEN as u64 {
            file.set_len(MAP_LEN as u64)?;
        }
        let len = NonZeroUsize::new(MAP_LEN).ok_or_else(|| std::io::Error::other("empty mapping"))?;
        // SAFETY: a fresh shared mapping of a file we opened read-write and sized to at least
        // `MAP_LEN`; nothing else aliases it in this process.
        let ptr =
            unsafe { mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, &file, 0) }
                .map_err(std::io::Error::from)?;
        Ok(Epoch { map: ptr.cast(), path: path.to_owned(), writable: true })
    }

    /// Maps an existing epoch file read-only, for a reader (which never advances it).
    pub fn open_read_only(path: &Path) -> std::io::Result<Epoch> {
        let file = OpenOptions::new().read(true).open(path)?;
        if file.metadata()?.len() < MAP_LEN as u64 {
            return Err(std::io::Error::other("the epoch file is not initialised yet"));
        }
        let len = NonZeroUsize::new(MAP_LEN).ok_or_else(|| std::io::Error::other("empty mapping"))?;
        // SAFETY: a fresh shared read-only mapping of a file at least `MAP_LEN` long, which is
        // never shrunk; only ever loaded from (`advance` does not write through it).
        let ptr = unsafe { mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, &file, 0) }
            .map_err(std::io::Error::from)?;
        Ok(Epoch { map: ptr.cast(), path: path.to_owned(), writable: false })
    }

    fn counter(&self) -> &AtomicU64 {
        // SAFETY: page-aligned, so aligned for `AtomicU64`; valid while `self` lives.
        unsafe { self.map.as_ref() }
    }

    /// The current epoch.
    pub fn current(&self) -> u64 {
        self.counter().load(Ordering::SeqCst)
    }

    /// Advances the epoch: everything tagged with an older one is stale. Does nothing on a
    /// read-only mapping (a reader has nothing to advance; writing would fault).
    pub fn advance(&self) {
        if !self.writable {
            debug_assert!(false, "advancing a read-only epoch");
            return;
        }
        self.counter().fetch_add(1, Ordering::SeqCst);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, with its length; no reference to it outlives self.
        let _ = unsafe { munmap(self.map.cast(), MAP_LEN) };
    }
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epoch").field("path", &self.path).field("current", &self.current()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_share_the_counter_and_reopening_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EPOCH_FILE);
        let a = Epoch::open(&path).unwrap();
        let b = Epoch::open(&path).unwrap();
        assert_eq!(a.current(), 0);
        a.advance();
        a.advance();
        assert_eq!(b.current(), 2);
        drop(a);
        drop(b);
        let c = Epoch::open(&path).unwrap();
        assert_eq!(c.current(), 2, "reopening must not reset the counter");
        let r = Epoch::open_read_only(&path).unwrap();
        c.advance();
        assert_eq!(r.current(), 3, "a read-only mapping sees the writer's advances");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn another_process_sees_advances() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EPOCH_FILE);
        let e = Epoch::open(&path).unwrap();
        // SAFETY: the child only advances the counter and exits without returning.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = match Epoch::open(&path) {
                    Ok(child) => {
                        child.advance();
                        0
                    }
                    Err(_) => 1,
                };
                // SAFETY: `_exit` in the forked child, no destructors of the parent's state.
                unsafe { nix::libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
                assert_eq!(e.current(), 1);
            }
        }
    }
}

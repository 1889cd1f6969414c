//! Scratch space for items being added: `<store>/.rs-scratch/<unique>`, on the store's file
//! system so store-db moves a finished item into place with one `rename`.
//!
//! Naming (what store-db's sweep relies on): every writer names its entries
//! `<writer-pid>-<anything>` ([`scratch_owner`] reads the pid back); store-db removes the
//! entries of writers that are no longer alive, and entries named otherwise once they are an
//! hour old. [`check_scratch_name`] is what store-db accepts as an entry name.
//!
//! socket-front writes new items only here, canonicalised (modes from the restorer, mtime 1),
//! then hands the name to store-db (`AddItems`), which renames it into the store or removes it.
//! A [`ScratchItem`] removes its tree when dropped unless [`ScratchItem::handed_over`] was
//! called, so an error or a dropped connection never leaves debris behind. With a
//! [`Remover`] ([`Scratch::with_remover`]) that removal happens on the remover's thread, not
//! where the item was dropped: a tree of any size a client uploaded then abandoned never holds
//! up the dropping thread (socket-front's single runtime thread).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use guix_ipc::store_db::ConnId;

/// Name of the scratch directory, directly under the store directory (same file system, so a
/// finished item is moved into place with `rename`). Writers create their work there; only
/// store-db moves things out of it.
pub const SCRATCH_DIR_NAME: &str = ".rs-scratch";

/// Name of socket-front's own scratch directory inside [`SCRATCH_DIR_NAME`], when it runs as
/// its own user: `<store>/.rs-scratch/front`, mode 0700, owned by that user (store-db creates
/// it; `.rs-scratch` is then 0710 with socket-front's group, so it can reach only this). Its
/// items are not trusted: store-db moves each out of it before it looks at it, then checks and
/// takes over its ownership (see store-db's `fsops`).
pub const UNPRIVILEGED_DIR_NAME: &str = "front";

/// `<store>/.rs-scratch/front` (see [`UNPRIVILEGED_DIR_NAME`]).
pub fn unprivileged_dir(store_dir: &Path) -> PathBuf {
    store_dir.join(SCRATCH_DIR_NAME).join(UNPRIVILEGED_DIR_NAME)
}

pub struct Scratch {
    dir: PathBuf,
    counter: AtomicU64,
    remover: Option<Arc<Remover>>,
}

impl Scratch {
    pub fn new(store_dir: &Path) -> Scratch {
        Scratch::in_dir(store_dir.join(SCRATCH_DIR_NAME))
    }

    /// Scratch space in `dir` (socket-front's own: [`unprivileged_dir`]).
    pub fn in_dir(dir: PathBuf) -> Scratch {
        Scratch { dir, counter: AtomicU64::new(0), remover: None }
    }

    /// Items dropped without being handed over are removed by `remover`.
    pub fn with_remover(mut self, remover: Remover) -> Scratch {
        self.remover = Some(Arc::new(remover));
        self
    }

    fn item(&self, name: String) -> ScratchItem {
        ScratchItem { path: self.dir.join(&name), name, armed: true, remover: self.remover.clone() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh name for connection `conn`; nothing is created yet. The directory is created
    /// (mode 0700) if missing.
    pub fn allocate(&self, conn: ConnId) -> io::Result<ScratchItem> {
        self.ensure_dir()?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // `<pid>-…`: store-db sweeps entries whose writer pid is dead (see [`scratch_owner`]).
        let name = format!("{}-front-{conn:016x}-{n}", std::process::id());
        Ok(self.item(name))
    }
}

impl Scratch {
    /// A fresh name for an output of a build (the builder's entries:
    /// `<builder-pid>-build-<n>-<hash part>`); nothing is created yet. The directory is
    /// created (mode 0700) if missing.
    pub fn allocate_build(&self, output: &guix_formats::StorePath) -> io::Result<ScratchItem> {
        self.ensure_dir()?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-build-{n}-{}", std::process::id(), output.hash_part());
        Ok(self.item(name))
    }

    /// A fresh name for a substitute being downloaded (the substituter's entries:
    /// `<substituter-pid>-subst-<n>-<hash part>`); nothing is created yet. The directory is
    /// created (mode 0700) if missing.
    pub fn allocate_substitute(&self, path: &guix_formats::StorePath) -> io::Result<ScratchItem> {
        self.ensure_dir()?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-subst-{n}-{}", std::process::id(), path.hash_part());
        Ok(self.item(name))
    }

    fn ensure_dir(&self) -> io::Result<()> {
        if !self.dir.is_dir() {
            match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One item in the scratch directory, removed on drop unless handed over to store-db.
#[derive(Debug)]
pub struct ScratchItem {
    path: PathBuf,
    name: String,
    armed: bool,
    remover: Option<Arc<Remover>>,
}

impl ScratchItem {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file name inside the scratch directory (what `NewItem::scratch_name` carries).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// store-db owns the item now (it moves it or removes it).
    pub fn handed_over(mut self) {
        self.armed = false;
    }
}

impl Drop for ScratchItem {
    fn drop(&mut self) {
        if self.armed {
            match &self.remover {
                Some(r) => r.remove(std::mem::take(&mut self.path)),
                None => {
                    let _ = remove_tree(&self.path);
                }
            }
        }
    }
}

/// A thread that removes abandoned scratch trees, fed through a bounded queue.
///
/// The thread runs at nice 10, so removing a large tree yields the CPU to serving clients.
/// When [`REMOVER_QUEUE`] removals are already waiting (or the thread is gone), the dropping
/// thread removes the tree itself: back-pressure instead of an unbounded queue.
#[derive(Debug)]
pub struct Remover {
    tx: SyncSender<PathBuf>,
}

/// Removals that may wait for the remover thread.
pub const REMOVER_QUEUE: usize = 1024;

impl Remover {
    /// Starts the thread.
    pub fn spawn() -> io::Result<Remover> {
        let (tx, rx) = sync_channel::<PathBuf>(REMOVER_QUEUE);
        std::thread::Builder::new().name("scratch-remover".into()).spawn(move || {
            let _ = crate::sched::set_thread_nice(10);
            for path in rx {
                let _ = remove_tree(&path);
            }
        })?;
        Ok(Remover { tx })
    }

    fn remove(&self, path: PathBuf) {
        match self.tx.try_send(path) {
            Ok(()) => {}
            Err(TrySendError::Full(path) | TrySendError::Disconnected(path)) => {
                let _ = remove_tree(&path);
            }
        }
    }
}

pub use crate::files::{canonicalise, delete_tree as remove_tree};

/// Why a scratch name is refused (the text the client sees).
pub fn check_scratch_name(name: &str) -> Result<(), String> {
    let bad =
        name.is_empty() || name == "." || name == ".." || name.len() > 255 || name.bytes().any(|b| b == b'/' || b == 0);
    if bad {
        return Err(format!("invalid scratch item name `{name}'"));
    }
    Ok(())
}

/// The writer pid a scratch entry name starts with (`<pid>-…`).
pub fn scratch_owner(name: &OsStr) -> Option<i32> {
    let s = name.to_str()?;
    let (pid, _) = s.split_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn allocate_canonicalise_and_clean_up() {
        let store = tempfile::tempdir().unwrap();
        let s = Scratch::new(store.path());
        let item = s.allocate(7).unwrap();
        assert!(s.dir().is_dir());
        fs::create_dir(item.path()).unwrap();
        fs::write(item.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("nowhere", item.path().join("l")).unwrap();
        fs::set_permissions(item.path(), fs::Permissions::from_mode(0o555)).unwrap();
        canonicalise(item.path()).unwrap();
        assert_eq!(fs::symlink_metadata(item.path().join("f")).unwrap().mtime(), 1);
        assert_eq!(fs::symlink_metadata(item.path().join("l")).unwrap().mtime(), 1);
        assert_eq!(fs::symlink_metadata(item.path()).unwrap().mtime(), 1);
        let p = item.path().to_owned();
        drop(item);
        assert!(!p.exists());
        let other = s.allocate(7).unwrap();
        assert_ne!(other.name(), p.file_name().unwrap().to_str().unwrap());
        fs::write(other.path(), b"y").unwrap();
        let p = other.path().to_owned();
        other.handed_over();
        assert!(p.exists());
    }

    #[test]
    fn a_remover_removes_dropped_items_on_its_thread() {
        let store = tempfile::tempdir().unwrap();
        let s = Scratch::new(store.path()).with_remover(Remover::spawn().unwrap());
        let item = s.allocate(1).unwrap();
        fs::create_dir(item.path()).unwrap();
        for i in 0..100 {
            fs::write(item.path().join(i.to_string()), b"x").unwrap();
        }
        let p = item.path().to_owned();
        drop(item);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while p.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!p.exists());
        let kept = s.allocate(1).unwrap();
        fs::write(kept.path(), b"y").unwrap();
        let p = kept.path().to_owned();
        kept.handed_over();
        assert!(p.exists());
    }

    #[test]
    fn build_entries_are_named_after_the_builder_pid() {
        let store = tempfile::tempdir().unwrap();
        let s = Scratch::new(store.path());
        let out = guix_formats::StorePath::from_base_name("0123456789abcdfghijklmnpqrsvwxyz-out").unwrap();
        let a = s.allocate_build(&out).unwrap();
        let b = s.allocate_build(&out).unwrap();
        assert!(s.dir().is_dir());
        assert_ne!(a.name(), b.name());
        assert!(check_scratch_name(a.name()).is_ok());
        assert_eq!(scratch_owner(OsStr::new(a.name())), Some(std::process::id() as i32));
        assert!(a.name().contains("-build-") && a.name().ends_with(out.hash_part().as_str()), "{}", a.name());
    }

    #[test]
    fn scratch_names() {
        for ok in ["123-abc", "x", "a.b", "..."] {
            assert!(check_scratch_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/abs", "../x", "a\0b"] {
            assert!(check_scratch_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_scratch_name(&"a".repeat(256)).is_err());
        assert_eq!(scratch_owner(OsStr::new("42-x")), Some(42));
        assert_eq!(scratch_owner(OsStr::new("x-42")), None);
        assert_eq!(scratch_owner(OsStr::new("-x")), None);
    }
}

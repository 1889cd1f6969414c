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
//! called, so an error or a dropped connection never leaves debris behind.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
}

impl Scratch {
    pub fn new(store_dir: &Path) -> Scratch {
        Scratch::in_dir(store_dir.join(SCRATCH_DIR_NAME))
    }

    /// Scratch space in `dir` (socket-front's own: [`unprivileged_dir`]).
    pub fn in_dir(dir: PathBuf) -> Scratch {
        Scratch { dir, counter: AtomicU64::new(0) }
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
        Ok(ScratchItem { path: self.dir.join(&name), name, armed: true })
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
        Ok(ScratchItem { path: self.dir.join(&name), name, armed: true })
    }

    /// A fresh name for a substitute being downloaded (the substituter's entries:
    /// `<substituter-pid>-subst-<n>-<hash part>`); nothing is created yet. The directory is
    /// created (mode 0700) if missing.
    pub fn allocate_substitute(&self, path: &guix_formats::StorePath) -> io::Result<ScratchItem> {
        self.ensure_dir()?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-subst-{n}-{}", std::process::id(), path.hash_part());
        Ok(ScratchItem { path: self.dir.join(&name), name, armed: true })
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
            let _ = remove_tree(&self.path);
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

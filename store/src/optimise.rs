//! File deduplication through `<store>/.links`, as the C++ daemon does it
//! (`nix/libstore/optimise-store.cc`): identical regular files of store items become hard
//! links of one inode.
//!
//! # Layout
//! `<store>/.links/<H>` is a hard link of every store file whose NAR serialisation (the file's
//! contents *and* its executable bit) has SHA-256 `H` (52 nix-base32 characters). Store files
//! are canonical (0444 or 0555, mtime 1, owned by the daemon), so a `.links` entry is too:
//! it is one more name of such a file. Only regular files of [`DEDUPLICATION_MIN_SIZE`] bytes
//! or more take part; directories and symlinks never do. To deduplicate a file `F`:
//! * no `.links/H` yet: `link(F, .links/H)` — `F` is now the pool's copy;
//! * `.links/H` is another inode (of the same size): a hard link of it is made as
//!   `<store>/.tmp-link-PID-RAND` and renamed over `F` (atomic: `F`'s name never goes
//!   missing), its directory made writable for the rename and its mode and mtime put back.
//!
//! The garbage collector's last step ("deleting unused links...") removes entries whose link
//! count is 1: no store file uses them any more.
//!
//! # Why races with the GC (and other deduplicating processes) are harmless
//! A file is only ever *replaced* by a link to an inode with the same NAR hash and size, by a
//! `rename`, so no reader ever sees it missing or different, whatever happens meanwhile.
//! * The GC may remove `.links/H` between our check and our `link` of it (it had link count 1
//!   then, so no store file was using it): the `link` fails with `ENOENT` and we start again
//!   at the check, which now finds no entry and makes our file the pool's copy.
//! * The GC may remove our `.tmp-link-…` (an invalid store entry to it) before the rename:
//!   the rename fails with `ENOENT`, our file is untouched, and we start again.
//! * The GC may remove `.links/H` after we linked it to `.tmp-link-…` (it saw the count
//!   before our link): the inode lives on through the temporary name and then `F`; the pool
//!   merely lacks an entry, which the next deduplication of an identical file adds again.
//! * Two processes linking identical files at once: one `link` into `.links` wins, the other
//!   gets `EEXIST` and replaces its file with a link to the winner's.
//!
//! Retries are bounded ([`MAX_ATTEMPTS`]); a file that keeps losing races is left as it is.
//!
//! # Where it runs
//! Automatically (`auto-optimise-store`, on unless `--disable-deduplication`) on every item
//! before it is registered: socket-front's scratch items (AddToStore, ImportPaths, large
//! texts), store-db's inline texts, the builder's outputs; and over every valid path for the
//! OptimiseStore operation (`guix gc --optimize`), by the gc.
//!
//! Messages go to `log(level, text)` at the C++ `printMsg` levels ([`LVL_ERROR`] …), with
//! the C++ wording, its unformatted ``linking `%1%' to `%2%'`` and
//! ``removing corrupted link `%1%'`` included (Guix 1.5.0 passes those two strings to its
//! `{}`-style formatter without converting their `%1%` directives).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use guix_formats::nar::{self, Event, NarError, RegularNarHasher, Visitor};
use guix_formats::Hash;

use crate::strerror;

/// Files smaller than this are not deduplicated (C++ `deduplicationMinSize`; keep in sync
/// with Guix's `(guix store deduplication)`).
pub const DEDUPLICATION_MIN_SIZE: u64 = 8192;

/// C++ `Verbosity` levels of the messages given to `log`.
pub const LVL_ERROR: u32 = 0;
pub const LVL_INFO: u32 = 1;
pub const LVL_TALKATIVE: u32 = 2;
pub const LVL_CHATTY: u32 = 3;
pub const LVL_DEBUG: u32 = 4;

/// How many times one file is tried again after losing a race (see the module docs).
pub const MAX_ATTEMPTS: u32 = 64;

/// What a deduplication did (C++ `OptimiseStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OptimiseStats {
    /// Files replaced by a link to their `.links` entry.
    pub files_linked: u64,
    /// Their sizes (`st_size`), summed.
    pub bytes_freed: u64,
    /// Their `st_blocks` (512-byte units), summed.
    pub blocks_freed: u64,
}

/// The NAR hashes of some regular files of a tree, by their path relative to its root (the
/// root itself: the empty path), for files already hashed while they were written (see
/// [`FileNarHashes`]). A file not listed is read and hashed. An item's own NAR hash can always
/// go at the empty path: it is the root file's when the root is a regular file, and only then
/// is the entry looked at.
pub type KnownHashes = HashMap<PathBuf, Hash>;

/// C++ `optimisePath_` over the tree at `path` (one store item, in the store or in scratch
/// space): every regular file of [`DEDUPLICATION_MIN_SIZE`] bytes or more is linked with
/// its `.links` entry. Errors carry the C++ message (`"getting attributes of path `P': …"`).
pub fn optimise_path(
    store_dir: &Path,
    links_dir: &Path,
    path: &Path,
    stats: &mut OptimiseStats,
    log: &mut dyn FnMut(u32, String),
) -> io::Result<()> {
    optimise_path_with(store_dir, links_dir, path, &KnownHashes::new(), stats, log)
}

/// [`optimise_path`], taking the NAR hashes in `known` instead of reading those files again.
pub fn optimise_path_with(
    store_dir: &Path,
    links_dir: &Path,
    path: &Path,
    known: &KnownHashes,
    stats: &mut OptimiseStats,
    log: &mut dyn FnMut(u32, String),
) -> io::Result<()> {
    let mut o = Optimiser { store_dir, links_dir, inodes: HashSet::new(), known, stats, log };
    o.node(path, Path::new(""))
}

/// OptimiseStore: [`optimise_path`] over each of `paths` (every valid path; a path gone
/// meanwhile — collected — is skipped), skipping files already in `.links` (its inodes are
/// read first, C++ `loadInodeHash`), then the C++ summary at `lvlError`:
/// `"  29.30 KiB freed by hard-linking 2 files"`.
pub fn optimise_store(
    store_dir: &Path,
    links_dir: &Path,
    paths: &mut dyn Iterator<Item = PathBuf>,
    log: &mut dyn FnMut(u32, String),
) -> io::Result<OptimiseStats> {
    let mut stats = OptimiseStats::default();
    let inodes = load_inode_hash(links_dir, log)?;
    let known = KnownHashes::new();
    let mut o = Optimiser { store_dir, links_dir, inodes, known: &known, stats: &mut stats, log };
    for path in paths {
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // collected, probably
            _ => {}
        }
        (o.log)(LVL_CHATTY, format!("hashing files in `{}'", path.display()));
        o.node(&path, Path::new(""))?;
    }
    log(
        LVL_ERROR,
        format!("{} freed by hard-linking {} files", show_bytes(stats.bytes_freed as i128), stats.files_linked),
    );
    Ok(stats)
}

/// C++ 1.5.0 `showBytes`: `"{:4}  bytes"` below 1 KiB (negative figures included), else
/// `"{:7.2f} KiB"`, `MiB`, `GiB`, `TiB`, `PiB`, `EiB` (the binary's strings). Shared with the
/// collector ("[SIZE] deleting", "note: currently hard linking saves -4096  bytes").
/// Whether the file at `path` (`md`, its metadata) is its content's entry in `links_dir`:
/// the same inode as `<links_dir>/<hash of its NAR>`.
pub fn is_links_entry(links_dir: &Path, path: &Path, md: &fs::Metadata) -> bool {
    match nar::dump_path(path, &mut io::sink()) {
        Ok(dumped) => fs::symlink_metadata(links_dir.join(dumped.nar_hash.to_nix_base32()))
            .is_ok_and(|l| (l.dev(), l.ino()) == (md.dev(), md.ino())),
        Err(_) => false,
    }
}

pub fn show_bytes(bytes: i128) -> String {
    const KIB: i128 = 1024;
    let units = [
        ("EiB", KIB.pow(6)),
        ("PiB", KIB.pow(5)),
        ("TiB", KIB.pow(4)),
        ("GiB", KIB.pow(3)),
        ("MiB", KIB.pow(2)),
        ("KiB", KIB),
    ];
    for (unit, size) in units {
        if bytes >= size {
            return format!("{:7.2} {unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes:4}  bytes")
}

/// C++ `loadInodeHash`: the inode numbers of `.links`' entries.
fn load_inode_hash(links_dir: &Path, log: &mut dyn FnMut(u32, String)) -> io::Result<HashSet<u64>> {
    log(LVL_DEBUG, "loading hash inodes in memory".to_owned());
    let mut inodes = HashSet::new();
    let rd = fs::read_dir(links_dir).map_err(sys(format!("opening directory `{}'", links_dir.display())))?;
    for entry in rd {
        let entry = entry.map_err(sys(format!("reading directory `{}'", links_dir.display())))?;
        inodes.insert(entry.ino());
    }
    log(LVL_TALKATIVE, format!("loaded {} hash inodes", inodes.len()));
    Ok(inodes)
}

/// An `io::Error` whose text is the C++ `SysError`'s, `"CONTEXT: strerror"`.
fn sys(context: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{context}: {}", strerror(&e)))
}

fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

struct Optimiser<'a, 'l> {
    store_dir: &'a Path,
    links_dir: &'a Path,
    /// Inodes known to be `.links` entries (C++ `InodeHash`).
    inodes: HashSet<u64>,
    known: &'a KnownHashes,
    stats: &'a mut OptimiseStats,
    log: &'l mut dyn FnMut(u32, String),
}

impl Optimiser<'_, '_> {
    /// `path` is `rel` below the item's root.
    fn node(&mut self, path: &Path, rel: &Path) -> io::Result<()> {
        let md = fs::symlink_metadata(path).map_err(sys(format!("getting attributes of path `{}'", path.display())))?;
        if md.is_dir() {
            // C++ `readDirectoryIgnoringInodes`: names first, then the recursion.
            let mut names = Vec::new();
            let rd = fs::read_dir(path).map_err(sys(format!("opening directory `{}'", path.display())))?;
            for entry in rd {
                let entry = entry.map_err(sys(format!("reading directory `{}'", path.display())))?;
                if self.inodes.contains(&entry.ino()) {
                    (self.log)(LVL_DEBUG, format!("`{}' is already linked", entry.file_name().to_string_lossy()));
                    continue;
                }
                names.push(entry.file_name());
            }
            for name in names {
                self.node(&path.join(&name), &rel.join(&name))?;
            }
            return Ok(());
        }
        // Only regular files, and only big enough ones: this size check is all a small file
        // costs.
        if !md.is_file() || md.size() < DEDUPLICATION_MIN_SIZE {
            return Ok(());
        }
        self.file(path, rel, &md)
    }

    fn file(&mut self, path: &Path, rel: &Path, md: &fs::Metadata) -> io::Result<()> {
        let shown = path.display();
        if md.mode() & 0o200 != 0 {
            (self.log)(LVL_ERROR, format!("skipping suspicious writable file `{shown}'"));
            return Ok(());
        }
        if md.nlink() > 1 && self.inodes.contains(&md.ino()) {
            (self.log)(LVL_DEBUG, format!("`{shown}' is already linked, with {} other file(s).", md.nlink() - 2));
            return Ok(());
        }
        let hash = match self.known.get(rel) {
            Some(h) => *h,
            None => {
                nar::dump_path(path, &mut io::sink())
                    .map_err(|e| match e {
                        NarError::Io { context, source } => sys(context)(source),
                        e => io::Error::other(e.to_string()),
                    })?
                    .nar_hash
            }
        };
        (self.log)(LVL_DEBUG, format!("`{shown}' has hash `{}'", hash.to_base16()));
        let link_path = self.links_dir.join(hash.to_nix_base32());
        let link_shown = link_path.display();

        let lstat_link = || fs::symlink_metadata(&link_path);
        for _ in 0..MAX_ATTEMPTS {
            let st_link = match lstat_link() {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::hard_link(path, &link_path) {
                    Ok(()) => {
                        self.inodes.insert(md.ino());
                        return Ok(());
                    }
                    // Another process made it first: link with theirs.
                    Err(e) if errno(&e) == Some(nix::libc::EEXIST) => match lstat_link() {
                        Ok(st) => st,
                        // ... and the GC removed it since: start again.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(sys(format!("getting attributes of path `{link_shown}'"))(e)),
                    },
                    // ext4's directory index is full: this file stays as it is.
                    Err(e) if errno(&e) == Some(nix::libc::ENOSPC) => {
                        (self.log)(LVL_INFO, format!("cannot link `{link_shown}' to `{shown}': {}", strerror(&e)));
                        return Ok(());
                    }
                    Err(e) => return Err(sys(format!("cannot link `{link_shown}' to `{shown}'"))(e)),
                },
                Err(e) => return Err(sys(format!("getting attributes of path `{link_shown}'"))(e)),
            };
            if st_link.ino() == md.ino() {
                (self.log)(LVL_DEBUG, format!("`{shown}' is already linked to `{link_shown}'"));
                return Ok(());
            }
            if st_link.size() != md.size() {
                // Unformatted in C++ 1.5.0 (see the module docs).
                (self.log)(LVL_ERROR, "removing corrupted link `%1%'".to_owned());
                let _ = fs::remove_file(&link_path);
                continue;
            }
            (self.log)(LVL_TALKATIVE, "linking `%1%' to `%2%'".to_owned());
            match self.replace(path, rel, &link_path)? {
                Replaced::Done => {
                    self.stats.files_linked += 1;
                    self.stats.bytes_freed += md.size();
                    self.stats.blocks_freed += md.blocks();
                    return Ok(());
                }
                Replaced::MaxLinks => {
                    if md.size() != 0 {
                        (self.log)(LVL_INFO, format!("`{link_shown}' has maximum number of links"));
                    }
                    return Ok(());
                }
                Replaced::Raced => continue,
            }
        }
        Ok(())
    }

    /// Replaces `path` by a hard link of `link_path` through `<store>/.tmp-link-PID-RAND`,
    /// the parent directory made writable meanwhile (unless the file is an item's root: its
    /// parent is the store or scratch directory) and its mode and mtime put back.
    fn replace(&mut self, path: &Path, rel: &Path, link_path: &Path) -> io::Result<Replaced> {
        let parent = match path.parent() {
            Some(p) if !rel.as_os_str().is_empty() && !p.as_os_str().is_empty() => Some(p),
            _ => None,
        };
        let restore = match parent {
            Some(dir) => Some(DirRestore::open(dir)?),
            None => None,
        };
        let r = self.link_and_rename(path, link_path);
        if let Some(restore) = restore {
            restore.finish();
        }
        r
    }

    fn link_and_rename(&mut self, path: &Path, link_path: &Path) -> io::Result<Replaced> {
        let link_shown = link_path.display();
        let mut temp = temp_link_name(self.store_dir);
        let mut tries = 0;
        loop {
            match fs::hard_link(link_path, &temp) {
                Ok(()) => break,
                Err(e) if errno(&e) == Some(nix::libc::EMLINK) => return Ok(Replaced::MaxLinks),
                // The `.links` entry was removed by the GC since we looked.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replaced::Raced),
                Err(e) if errno(&e) == Some(nix::libc::EEXIST) && tries < MAX_ATTEMPTS => {
                    tries += 1;
                    temp = temp_link_name(self.store_dir);
                }
                Err(e) => return Err(sys(format!("cannot link `{}' to `{link_shown}'", temp.display()))(e)),
            }
        }
        match fs::rename(&temp, path) {
            Ok(()) => Ok(Replaced::Done),
            Err(e) => {
                if fs::remove_file(&temp).is_err() && e.kind() != io::ErrorKind::NotFound {
                    (self.log)(LVL_ERROR, format!("unable to unlink `{}'", temp.display()));
                }
                match errno(&e) {
                    // Some file systems count the link twice during a rename.
                    Some(nix::libc::EMLINK) => Ok(Replaced::MaxLinks),
                    // The temporary link was removed (by the GC) before the rename.
                    Some(nix::libc::ENOENT) => Ok(Replaced::Raced),
                    _ => Err(sys(format!("cannot rename `{}' to `{}'", temp.display(), path.display()))(e)),
                }
            }
        }
    }
}

enum Replaced {
    Done,
    MaxLinks,
    /// Lost a race with the GC: try the file again.
    Raced,
}

/// `<store>/.tmp-link-PID-RAND`: unique within the process through a counter, across
/// processes through the pid.
fn temp_link_name(store_dir: &Path) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    // A positive `int`, as C++ `rand()` gives.
    let rand = (nanos ^ n.wrapping_mul(0x9e37_79b9)) & 0x7fff_ffff;
    store_dir.join(format!(".tmp-link-{}-{rand}", std::process::id()))
}

/// A directory made writable for a rename in it, whose mode and mtime are put back.
struct DirRestore {
    dir: PathBuf,
    mode: u32,
    atime: i64,
    mtime: i64,
    mtime_nsec: i64,
}

impl DirRestore {
    fn open(dir: &Path) -> io::Result<DirRestore> {
        let md = fs::symlink_metadata(dir).map_err(sys(format!("getting attributes of path `{}'", dir.display())))?;
        let mode = md.mode() & 0o7777;
        if mode & 0o200 == 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o200))
                .map_err(sys(format!("changing writability of `{}'", dir.display())))?;
        }
        Ok(DirRestore { dir: dir.to_owned(), mode, atime: md.atime(), mtime: md.mtime(), mtime_nsec: md.mtime_nsec() })
    }

    /// Best effort, as C++ `MakeReadOnly` (which ignores its errors).
    fn finish(self) {
        let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(self.mode));
        let atime = nix::sys::time::TimeSpec::new(self.atime, 0);
        let mtime = nix::sys::time::TimeSpec::new(self.mtime, self.mtime_nsec);
        let _ =
            nix::sys::stat::utimensat(None, &self.dir, &atime, &mtime, nix::sys::stat::UtimensatFlags::NoFollowSymlink);
    }
}

/// A NAR [`Visitor`] wrapper that hashes, as they go by, the NAR serialisation of each
/// regular file below the root of [`DEDUPLICATION_MIN_SIZE`] bytes or more, so that the
/// tree's deduplication ([`optimise_path_with`]) need not read them again. (A root regular
/// file's NAR hash is the item's own: the caller knows it.)
pub struct FileNarHashes<V> {
    pub inner: V,
    rel: PathBuf,
    current: Option<RegularNarHasher>,
    hashes: KnownHashes,
}

impl<V> FileNarHashes<V> {
    pub fn new(inner: V) -> FileNarHashes<V> {
        FileNarHashes { inner, rel: PathBuf::new(), current: None, hashes: KnownHashes::new() }
    }

    /// The hashes, by path relative to the root.
    pub fn into_hashes(self) -> KnownHashes {
        self.hashes
    }

    /// The wrapped visitor and the hashes.
    pub fn into_parts(self) -> (V, KnownHashes) {
        (self.inner, self.hashes)
    }
}

impl<V: Visitor> Visitor for FileNarHashes<V> {
    fn event(&mut self, event: Event<'_>) -> Result<(), NarError> {
        match &event {
            Event::Entry { name } => self.rel.push(OsStr::from_bytes(name)),
            Event::EntryEnd => {
                self.rel.pop();
            }
            Event::Regular { executable, size }
                if *size >= DEDUPLICATION_MIN_SIZE && !self.rel.as_os_str().is_empty() =>
            {
                self.current = Some(RegularNarHasher::new(*executable, *size));
            }
            _ => {}
        }
        self.inner.event(event)
    }

    fn contents(&mut self, chunk: &[u8]) -> Result<(), NarError> {
        if let Some(h) = self.current.as_mut() {
            h.update(chunk);
        }
        self.inner.contents(chunk)
    }

    fn contents_done(&mut self) -> Result<(), NarError> {
        if let Some(h) = self.current.take() {
            self.hashes.insert(self.rel.clone(), h.finish()?.nar_hash);
        }
        self.inner.contents_done()
    }
}

#[cfg(test)]
mod tests;

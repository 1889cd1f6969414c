//! GC root discovery as `LocalStore::findRoots` does it (`nix/libstore/gc.cc`): FindRoots (14)
//! for socket-front, and the collector's roots.
//!
//! Scanned: `<state>/gcroots`, `<state>/manifests` (when it exists) and `<state>/profiles`,
//! recursively. A symlink into the store is a root (link → the store path it points into); a
//! symlink elsewhere is an indirect root (`gcroots/auto/…` → a link somewhere else → the
//! store), followed one level; a regular file names a root by its base name. Only valid store
//! paths are reported. Unreadable entries (EACCES, ENOENT, ENOTDIR) are skipped, as in C++,
//! with its messages ([`ScanOptions::log`]).
//!
//! [`find_roots`] (FindRoots) changes nothing. [`scan_roots`] with
//! [`ScanOptions::collector`] is the collector's scan: it deletes stale `gcroots/auto` links as
//! C++ does, and it does better than C++ with a root it cannot read (EACCES — an indirect
//! root whose target is on an NFS home that root may not read): it tries again with the file
//! system uid and gid of the owner of the nearest directory it can see above the target (in a
//! short-lived thread: `setfsuid` is per thread), and what stays unreadable is reported in
//! [`Scan::unreadable`] (the collector then deletes no valid path) instead of being dropped.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use guix_formats::{StoreDir, StorePath};
use nix::libc;

/// link → target store path, sorted by link (a C++ `std::map`).
pub type Roots = BTreeMap<String, String>;

/// How [`scan_roots`] behaves.
pub struct ScanOptions<'a> {
    /// Delete `gcroots/auto` links whose target does not exist ("removing stale link").
    pub remove_stale: bool,
    /// Retry roots that cannot be read with the fs uid of their owner, and report those that
    /// still cannot be read ([`Scan::unreadable`]).
    pub retry_as_owner: bool,
    /// The C++ `printMsg(level, text)` lines of the scan.
    pub log: &'a mut dyn FnMut(u32, String),
}

impl<'a> ScanOptions<'a> {
    /// The collector's scan (see the module documentation).
    pub fn collector(log: &'a mut dyn FnMut(u32, String)) -> ScanOptions<'a> {
        ScanOptions { remove_stale: true, retry_as_owner: true, log }
    }
}

/// What [`scan_roots`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    pub roots: Roots,
    /// Roots that could not be read even as their owner: `(link, why)`.
    pub unreadable: Vec<(String, String)>,
}

/// FindRoots: scans the roots under `state_dir` without changing anything; `is_valid` tells
/// valid store paths.
pub fn find_roots(
    state_dir: &Path,
    store: &StoreDir,
    is_valid: &mut dyn FnMut(&StorePath) -> io::Result<bool>,
) -> io::Result<Roots> {
    let mut quiet = |_: u32, _: String| {};
    let opts = ScanOptions { remove_stale: false, retry_as_owner: false, log: &mut quiet };
    Ok(scan_roots(state_dir, store, is_valid, opts)?.roots)
}

/// Scans the roots under `state_dir` (module documentation).
pub fn scan_roots(
    state_dir: &Path,
    store: &StoreDir,
    is_valid: &mut dyn FnMut(&StorePath) -> io::Result<bool>,
    opts: ScanOptions<'_>,
) -> io::Result<Scan> {
    let mut scan = Scan::default();
    let auto_dir = state_dir.join("gcroots/auto");
    let mut f = Finder { store, is_valid, scan: &mut scan, opts, auto_dir };
    f.scan(&state_dir.join("gcroots"), 0)?;
    for extra in ["manifests", "profiles"] {
        let dir = state_dir.join(extra);
        if extra == "profiles" || dir.exists() {
            f.scan(&dir, 0)?;
        }
    }
    Ok(scan)
}

/// Deepest directory nesting followed (a loop of bind mounts must not recurse forever).
const MAX_DEPTH: usize = 64;

struct Finder<'a, 'o> {
    store: &'a StoreDir,
    is_valid: &'a mut dyn FnMut(&StorePath) -> io::Result<bool>,
    scan: &'a mut Scan,
    opts: ScanOptions<'o>,
    auto_dir: PathBuf,
}

/// C++ `lvlInfo`.
const INFO: u32 = 1;

impl Finder<'_, '_> {
    /// `toStorePath`: the store path a path inside the store belongs to.
    fn store_path_of(&self, target: &str) -> Option<StorePath> {
        self.store.parse_prefix(target).ok().map(|(p, _)| p)
    }

    fn is_in_store(&self, target: &str) -> bool {
        is_in_store(self.store, target)
    }

    /// `foundRoot`.
    fn found(&mut self, link: &Path, target: &str) -> io::Result<()> {
        let valid = match self.store_path_of(target) {
            Some(p) => (self.is_valid)(&p)?.then(|| self.store.display(&p)),
            None => None,
        };
        match valid {
            Some(p) => {
                self.scan.roots.insert(link.to_string_lossy().into_owned(), p);
            }
            None => {
                // C++ prints `toStorePath(target)`: the target up to its store path's name.
                let shown = store_prefix(self.store, target);
                (self.opts.log)(INFO, format!("skipping invalid root from `{}' to `{shown}'", link.display()));
            }
        }
        Ok(())
    }

    fn scan(&mut self, path: &Path, depth: usize) -> io::Result<()> {
        match self.scan_inner(path, depth) {
            Err(e) if is_permanent(&e) => {
                (self.opts.log)(INFO, format!("cannot read potential root `{}'", path.display()));
                if self.opts.retry_as_owner && e.raw_os_error() == Some(libc::EACCES) {
                    self.scan.unreadable.push((path.to_string_lossy().into_owned(), crate::strerror(&e)));
                }
                Ok(())
            }
            other => other,
        }
    }

    fn scan_inner(&mut self, path: &Path, depth: usize) -> io::Result<()> {
        let md = fs::symlink_metadata(path)?;
        let ft = md.file_type();
        if ft.is_dir() {
            if depth >= MAX_DEPTH {
                return Ok(());
            }
            let mut names: Vec<PathBuf> = fs::read_dir(path)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            names.sort();
            for child in names {
                self.scan(&child, depth + 1)?;
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(path)?;
            let target_s = target.to_string_lossy().into_owned();
            if self.is_in_store(&target_s) {
                self.found(path, &target_s)?;
            } else {
                // Indirect root: the link points to another link, which points into the store.
                let abs = match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(&target),
                    _ => target,
                };
                let read = match read_indirect(&abs) {
                    Err(e) if e.raw_os_error() == Some(libc::EACCES) && self.opts.retry_as_owner => {
                        read_indirect_as_owner(&abs)
                    }
                    other => other,
                };
                match read? {
                    Indirect::Missing => {
                        if self.opts.remove_stale && path.starts_with(&self.auto_dir) {
                            (self.opts.log)(
                                INFO,
                                format!("removing stale link from `{}' to `{}'", path.display(), abs.display()),
                            );
                            let _ = fs::remove_file(path);
                        }
                    }
                    Indirect::NotALink => {}
                    Indirect::Target(target2) => {
                        if self.is_in_store(&target2) {
                            self.found(&abs, &target2)?;
                        }
                    }
                }
            }
        } else if ft.is_file() {
            if let Some(base) = path.file_name().and_then(|b| b.to_str()) {
                if let Ok(p) = StorePath::from_base_name(base) {
                    if (self.is_valid)(&p)? {
                        self.scan.roots.insert(path.to_string_lossy().into_owned(), self.store.display(&p));
                    }
                }
            }
        }
        Ok(())
    }
}

fn is_in_store(store: &StoreDir, target: &str) -> bool {
    target.strip_prefix(store.as_str()).is_some_and(|r| r.starts_with('/'))
}

/// `toStorePath`: `<store>/<first component>` of a path in the store.
fn store_prefix(store: &StoreDir, target: &str) -> String {
    let rest = target.strip_prefix(store.as_str()).and_then(|r| r.strip_prefix('/')).unwrap_or(target);
    let first = rest.split('/').next().unwrap_or(rest);
    format!("{}/{first}", store.as_str())
}

/// What is at an indirect root's target.
enum Indirect {
    Missing,
    NotALink,
    Target(String),
}

fn read_indirect(abs: &Path) -> io::Result<Indirect> {
    let md = match fs::symlink_metadata(abs) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Indirect::Missing),
        Err(e) => return Err(e),
    };
    if !md.file_type().is_symlink() {
        return Ok(Indirect::NotALink);
    }
    Ok(Indirect::Target(fs::read_link(abs)?.to_string_lossy().into_owned()))
}

/// The uid and gid of the nearest ancestor of `path` whose status can be read.
fn owner_of(path: &Path) -> Option<(u32, u32)> {
    path.ancestors().skip(1).find_map(|dir| fs::symlink_metadata(dir).ok()).map(|md| (md.uid(), md.gid()))
}

/// [`read_indirect`] with the file system uid and gid of the target's owner ([`owner_of`]), in a
/// thread of its own (the fs ids are per thread and die with it). Without an owner, or when
/// the thread cannot be made, the first error stands.
fn read_indirect_as_owner(abs: &Path) -> io::Result<Indirect> {
    let denied = || io::Error::from_raw_os_error(libc::EACCES);
    let Some((uid, gid)) = owner_of(abs) else { return Err(denied()) };
    let abs = abs.to_owned();
    let t = std::thread::Builder::new().name("root-as-owner".into()).spawn(move || {
        // SAFETY: plain system calls on this thread's own credentials.
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        read_indirect(&abs)
    });
    match t.map(|h| h.join()) {
        Ok(Ok(r)) => r,
        _ => Err(denied()),
    }
}

fn is_permanent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn direct_indirect_and_profiles() {
        let state = tempfile::tempdir().unwrap();
        let s = state.path();
        let store = StoreDir::default();
        let valid = "/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-hi";
        let invalid = "/gnu/store/0mq8hhmddhzpq4p6ra4qsm034pi4xayb-no";
        fs::create_dir_all(s.join("gcroots/auto")).unwrap();
        fs::create_dir_all(s.join("profiles/per-user/root")).unwrap();
        symlink(valid, s.join("gcroots/direct")).unwrap();
        symlink(format!("{valid}/bin/sh"), s.join("gcroots/inside")).unwrap();
        symlink(invalid, s.join("gcroots/dead")).unwrap();
        // Indirect: auto/x -> /elsewhere/result -> store.
        let elsewhere = tempfile::tempdir().unwrap();
        let result = elsewhere.path().join("result");
        symlink(valid, &result).unwrap();
        symlink(&result, s.join("gcroots/auto/x")).unwrap();
        symlink("/nonexistent/link", s.join("gcroots/auto/stale")).unwrap();
        symlink(valid, s.join("profiles/per-user/root/guix-profile-1-link")).unwrap();
        let mut is_valid = |p: &StorePath| Ok(store.display(p) == valid);
        let roots = find_roots(s, &store, &mut is_valid).unwrap();
        let want: Roots = [
            (s.join("gcroots/direct"), valid),
            (s.join("gcroots/inside"), valid),
            (result.clone(), valid),
            (s.join("profiles/per-user/root/guix-profile-1-link"), valid),
        ]
        .into_iter()
        .map(|(l, t)| (l.to_string_lossy().into_owned(), t.to_owned()))
        .collect();
        assert_eq!(roots, want);
        // The stale indirect link is left alone.
        assert!(fs::symlink_metadata(s.join("gcroots/auto/stale")).is_ok());
    }

    /// The collector's scan removes stale `auto/` links (only there) and says so, and says
    /// which roots it skipped as C++ does.
    #[test]
    fn collector_removes_stale_auto_links() {
        let state = tempfile::tempdir().unwrap();
        let s = state.path();
        let store = StoreDir::default();
        let invalid = "/gnu/store/0mq8hhmddhzpq4p6ra4qsm034pi4xayb-no";
        fs::create_dir_all(s.join("gcroots/auto")).unwrap();
        fs::create_dir_all(s.join("profiles")).unwrap();
        symlink("/nonexistent/link", s.join("gcroots/auto/stale")).unwrap();
        symlink("/nonexistent/link", s.join("gcroots/elsewhere")).unwrap();
        symlink(format!("{invalid}/bin"), s.join("gcroots/dead")).unwrap();
        let mut lines = Vec::new();
        let mut log = |l: u32, t: String| lines.push((l, t));
        let mut is_valid = |_: &StorePath| Ok(false);
        let scan = scan_roots(s, &store, &mut is_valid, ScanOptions::collector(&mut log)).unwrap();
        assert!(scan.roots.is_empty() && scan.unreadable.is_empty());
        assert!(fs::symlink_metadata(s.join("gcroots/auto/stale")).is_err());
        assert!(fs::symlink_metadata(s.join("gcroots/elsewhere")).is_ok());
        let g = s.join("gcroots");
        assert_eq!(
            lines,
            vec![
                (1, format!("removing stale link from `{}/auto/stale' to `/nonexistent/link'", g.display())),
                (1, format!("skipping invalid root from `{}/dead' to `{invalid}'", g.display())),
            ]
        );
    }

    /// An indirect root whose target root may not read (as on an NFS home with root
    /// squashing: here the scan runs with fs uid `nobody`) is read as the owner of the
    /// directory above it; one its owner cannot read either is reported, not dropped.
    #[test]
    fn unreadable_roots_are_read_as_their_owner_or_reported() {
        use std::os::unix::fs::{chown, PermissionsExt};
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (setfsuid)");
        }
        let state = tempfile::tempdir().unwrap();
        let s = state.path().to_owned();
        fs::set_permissions(&s, fs::Permissions::from_mode(0o755)).unwrap();
        let valid = "/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-hi";
        fs::create_dir_all(s.join("gcroots/auto")).unwrap();
        // home/alice is alice's (uid 4242) and hers alone; home/bob is closed even to bob.
        for (user, mode) in [("alice", 0o700), ("bob", 0o000)] {
            let home = s.join("home").join(user);
            fs::create_dir_all(&home).unwrap();
            symlink(valid, home.join("result")).unwrap();
            chown(&home, Some(4242), Some(4242)).unwrap();
            fs::set_permissions(&home, fs::Permissions::from_mode(mode)).unwrap();
            symlink(home.join("result"), s.join("gcroots/auto").join(user)).unwrap();
        }
        let store = StoreDir::default();
        let t = std::thread::spawn(move || {
            // SAFETY: this thread's own credentials.
            unsafe { libc::setfsuid(65534) };
            let mut lines = Vec::new();
            let mut log = |l: u32, t: String| lines.push((l, t));
            let mut is_valid = |_: &StorePath| Ok(true);
            let scan = scan_roots(&s, &store, &mut is_valid, ScanOptions::collector(&mut log)).unwrap();
            // Without the retry, both are lost, as in C++.
            let mut quiet = |_: u32, _: String| {};
            let plain = ScanOptions { remove_stale: false, retry_as_owner: false, log: &mut quiet };
            let c = scan_roots(&s, &store, &mut is_valid, plain).unwrap();
            (scan, lines, c, s)
        });
        let (scan, lines, cxx, s) = t.join().unwrap();
        let alice = s.join("home/alice/result").to_string_lossy().into_owned();
        assert_eq!(scan.roots, [(alice, valid.to_owned())].into_iter().collect::<Roots>());
        let bob = s.join("gcroots/auto/bob").to_string_lossy().into_owned();
        assert_eq!(scan.unreadable, vec![(bob.clone(), "Permission denied".to_owned())]);
        assert!(lines.contains(&(1, format!("cannot read potential root `{bob}'"))), "{lines:?}");
        assert!(cxx.roots.is_empty() && cxx.unreadable.is_empty(), "{cxx:?}");
        // Nothing stale was removed: both links are still there.
        assert!(fs::symlink_metadata(&bob).is_ok());
    }

    #[test]
    fn missing_dirs_are_fine() {
        let state = tempfile::tempdir().unwrap();
        let mut is_valid = |_: &StorePath| Ok(true);
        assert!(find_roots(state.path(), &StoreDir::default(), &mut is_valid).unwrap().is_empty());
    }
}

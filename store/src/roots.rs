//! FindRoots (14): the GC roots as `LocalStore::findRoots` finds them (`nix/libstore/gc.cc`).
//!
//! Scanned: `<state>/gcroots` and `<state>/profiles`, recursively. A symlink into the store is
//! a root (link → the store path it points into); a symlink elsewhere is an indirect root
//! (`gcroots/auto/…` → a link somewhere else → the store), followed one level; a regular file
//! names a root by its base name. Only valid store paths are reported. Unreadable entries
//! (EACCES, ENOENT, ENOTDIR) are skipped, as in C++.
//!
//! Difference: the C++ daemon deletes stale `gcroots/auto` links while scanning. socket-front
//! never changes the state directory, so it leaves them (they are not reported either).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use guix_formats::{StoreDir, StorePath};
use nix::libc;

/// link → target store path, sorted by link (a C++ `std::map`).
pub type Roots = BTreeMap<String, String>;

/// Scans the roots under `state_dir`; `is_valid` tells valid store paths.
pub fn find_roots(
    state_dir: &Path,
    store: &StoreDir,
    is_valid: &mut dyn FnMut(&StorePath) -> io::Result<bool>,
) -> io::Result<Roots> {
    let mut roots = Roots::new();
    let mut f = Finder { store, is_valid, roots: &mut roots };
    f.scan(&state_dir.join("gcroots"), 0)?;
    let profiles = state_dir.join("profiles");
    if profiles.exists() {
        f.scan(&profiles, 0)?;
    }
    Ok(roots)
}

/// Deepest directory nesting followed (a loop of bind mounts must not recurse forever).
const MAX_DEPTH: usize = 64;

struct Finder<'a> {
    store: &'a StoreDir,
    is_valid: &'a mut dyn FnMut(&StorePath) -> io::Result<bool>,
    roots: &'a mut Roots,
}

impl Finder<'_> {
    /// `toStorePath`: the store path a path inside the store belongs to.
    fn store_path_of(&self, target: &str) -> Option<StorePath> {
        self.store.parse_prefix(target).ok().map(|(p, _)| p)
    }

    fn is_in_store(&self, target: &str) -> bool {
        target.strip_prefix(self.store.as_str()).is_some_and(|r| r.starts_with('/'))
    }

    fn found(&mut self, link: &Path, target: &str) -> io::Result<()> {
        if let Some(p) = self.store_path_of(target) {
            if (self.is_valid)(&p)? {
                self.roots.insert(link.to_string_lossy().into_owned(), self.store.display(&p));
            }
        }
        Ok(())
    }

    fn scan(&mut self, path: &Path, depth: usize) -> io::Result<()> {
        match self.scan_inner(path, depth) {
            Err(e) if is_permanent(&e) => Ok(()),
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
                let Ok(md2) = fs::symlink_metadata(&abs) else { return Ok(()) };
                if !md2.file_type().is_symlink() {
                    return Ok(());
                }
                let target2 = fs::read_link(&abs)?.to_string_lossy().into_owned();
                if self.is_in_store(&target2) {
                    self.found(&abs, &target2)?;
                }
            }
        } else if ft.is_file() {
            if let Some(base) = path.file_name().and_then(|b| b.to_str()) {
                if let Ok(p) = StorePath::from_base_name(base) {
                    if (self.is_valid)(&p)? {
                        self.roots.insert(path.to_string_lossy().into_owned(), self.store.display(&p));
                    }
                }
            }
        }
        Ok(())
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

    #[test]
    fn missing_dirs_are_fine() {
        let state = tempfile::tempdir().unwrap();
        let mut is_valid = |_: &StorePath| Ok(true);
        assert!(find_roots(state.path(), &StoreDir::default(), &mut is_valid).unwrap().is_empty());
    }
}

//! File-system operations of store-db on store items and the scratch directory.
//!
//! # The scratch directory
//! `<store>/.rs-scratch` (mode 0700, owned by the daemon) is where writers (socket-front,
//! later the builder and the substituter) put finished items before asking store-db to move
//! them into the store. It is on the store's file system, so the move is one `rename`.
//!
//! Naming convention (what the sweep relies on): a writer names its entries
//! `<writer-pid>-<anything>`. store-db removes leftovers ([`sweep_scratch`]) at startup and
//! every few minutes, holding the writer (so never while it is renaming one): an entry whose
//! writer pid is no longer alive is removed; an entry whose name does not start with a pid is
//! removed once its status-change time is older than [`UNNAMED_MAX_AGE`]. A writer that is
//! alive keeps its entries however long it takes, and a store-db restart never removes the
//! work of a writer that is still filling it.
//!
//! # socket-front's own scratch directory
//! When socket-front runs as its own user (`config.socket_front_user`), it cannot write into
//! `.rs-scratch`. It gets `.rs-scratch/front` (mode 0700, its own), and `.rs-scratch` becomes
//! 0710 with its group, so that it reaches that directory and nothing else in it. Its items
//! are not trusted: before store-db looks at one, [`take_unprivileged`] renames it into
//! `.rs-scratch` (where socket-front has no access any more, so no path it names can change
//! under us; no name it chose can replace another writer's entry), then takes it over as the
//! C++ daemon takes over a build user's output (`canonicalisePathMetaData` with the user's
//! uid: every file must be socket-front's, or a second name of one already taken over; each
//! node becomes root's before its mode is corrected and before a directory's entries are
//! read), then deduplicates it (hashing the files itself: a hash socket-front announced is
//! not trusted to name a `.links` entry). store-db never removes a tree inside socket-front's
//! directory by walking it ([`remove_untrusted`] does not follow symlinks); socket-front
//! removes its own failed items.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use guix_ipc::config::UnprivilegedUser;
use guix_ipc::store_db::{ItemSource, NewItem, MAX_INLINE_TEXT};
use guix_store::files::{canonicalise_path_metadata, canonicalise_resumed, InodesSeen};
use guix_store::optimise::{
    is_links_entry, optimise_path_with, KnownHashes, OptimiseStats, DEDUPLICATION_MIN_SIZE, LVL_ERROR,
};
use guix_store::scratch::UNPRIVILEGED_DIR_NAME;
use guix_store::strerror;

/// Age after which a scratch entry not named `<pid>-…` is removed.
pub const UNNAMED_MAX_AGE: Duration = Duration::from_secs(3600);

pub use guix_store::files::delete_tree as delete_path;
use guix_store::scratch::{check_scratch_name, scratch_owner};

/// Removes the scratch copies of `items` (after a refusal or a failure), skipping names that
/// are not one plain component.
pub fn remove_scratch_copies(scratch: &Path, items: &[NewItem]) {
    for name in items.iter().filter_map(NewItem::scratch_name) {
        if check_scratch_name(name).is_ok() {
            let _ = delete_path(&scratch.join(name));
        }
    }
}

/// Why an item is refused before anything is done: a bad scratch name, a text too large.
pub fn check_item(item: &NewItem) -> Result<(), String> {
    match &item.source {
        ItemSource::Scratch(name) => check_scratch_name(name),
        ItemSource::Text(t) if t.len() > MAX_INLINE_TEXT => {
            Err(format!("inline text of {} bytes exceeds the limit of {MAX_INLINE_TEXT}", t.len()))
        }
        ItemSource::Text(_) => Ok(()),
    }
}

/// Creates `dir` if needed and checks that it is a real directory (not a symlink).
fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("`{}' is not a directory", dir.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(dir),
        Err(e) => Err(e),
    }
}

/// Creates the scratch directory if needed: mode 0700; with an unprivileged socket-front,
/// 0710 with its group, and its own `front` directory (0700, its user's). See the module docs.
pub fn ensure_scratch_dir(dir: &Path, front: Option<UnprivilegedUser>) -> io::Result<()> {
    ensure_dir(dir)?;
    let Some(user) = front else {
        return fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    };
    std::os::unix::fs::chown(dir, Some(0), Some(user.gid))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o710))?;
    let own = dir.join(UNPRIVILEGED_DIR_NAME);
    ensure_dir(&own)?;
    std::os::unix::fs::lchown(&own, Some(user.uid), Some(user.gid))?;
    fs::set_permissions(&own, fs::Permissions::from_mode(0o700))
}

/// Removes `path` without following a symlink anywhere below it (the tree may be changed
/// meanwhile by its unprivileged owner): `remove_dir_all` opens each directory relative to its
/// parent without following links. Root needs no write permission on the directories.
pub fn remove_untrusted(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// An item of socket-front's own scratch directory made store-db's (see the module docs): moved
/// from `<front_dir>/<name>` to `<scratch>/<name>`, owned by root with canonical modes, and
/// deduplicated when `dedup` (`auto-optimise-store`) and its NAR is long enough. On error,
/// whatever was moved is removed.
pub fn take_unprivileged(
    store: &Path,
    scratch: &Path,
    name: &str,
    nar_size: u64,
    uid: u32,
    dedup: bool,
) -> Result<(), String> {
    check_scratch_name(name)?;
    let from = scratch.join(UNPRIVILEGED_DIR_NAME).join(name);
    let to = scratch.join(name);
    let moved = |to: &Path| {
        nix::fcntl::renameat2(None, &from, None, to, nix::fcntl::RenameFlags::RENAME_NOREPLACE).map_err(io::Error::from)
    };
    match moved(&to) {
        Ok(()) => {}
        // A leftover of an earlier attempt (store-db stopped in the middle): not to be trusted.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            remove_untrusted(&to).map_err(|e| format!("deleting `{}': {}", to.display(), strerror(&e)))?;
            moved(&to).map_err(|e| format!("cannot rename `{}': {}", from.display(), strerror(&e)))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A resent request whose item was moved before store-db stopped: the copy in
            // `.rs-scratch` may be half taken over, and is taken over again (nodes already
            // ours only as `canonicalise_resumed` allows). With no copy, the writer accepts the
            // item only if it is already in place with the announced hash.
            if fs::symlink_metadata(&to).is_err() {
                return Ok(());
            }
            let res = readopt(store, &to, nar_size, uid, dedup);
            if res.is_err() {
                let _ = remove_untrusted(&to);
            }
            return res;
        }
        Err(e) => return Err(format!("cannot rename `{}': {}", from.display(), strerror(&e))),
    }
    let res = adopt(store, &to, nar_size, uid, dedup);
    if res.is_err() {
        let _ = remove_untrusted(&to);
    }
    res
}

fn adopt(store: &Path, item: &Path, nar_size: u64, uid: u32, dedup: bool) -> Result<(), String> {
    let mut seen = InodesSeen::new();
    canonicalise_path_metadata(item, item, Some(uid), &mut seen).map_err(|e| e.to_string())?;
    deduplicate(store, item, nar_size, dedup)
}

/// [`adopt`] of an item whose taking over was interrupted.
fn readopt(store: &Path, item: &Path, nar_size: u64, uid: u32, dedup: bool) -> Result<(), String> {
    let mut seen = InodesSeen::new();
    let links = store.join(".links");
    let linked = move |p: &Path, md: &fs::Metadata| is_links_entry(&links, p, md);
    canonicalise_resumed(item, item, uid, &linked, &mut seen).map_err(|e| e.to_string())?;
    deduplicate(store, item, nar_size, dedup)
}

fn deduplicate(store: &Path, item: &Path, nar_size: u64, dedup: bool) -> Result<(), String> {
    if dedup && nar_size >= DEDUPLICATION_MIN_SIZE {
        let mut stats = OptimiseStats::default();
        let mut log = |level: u32, msg: String| {
            if level == LVL_ERROR {
                eprintln!("guix-store-db: {msg}");
            }
        };
        optimise_path_with(store, &store.join(".links"), item, &KnownHashes::new(), &mut stats, &mut log)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// C++ `createUser`: `<state>/profiles/per-user/<name>` for the user `uid`, mode 0755, owned
/// by the user. Nothing for a uid without a user, or with a name that is not one plain
/// component.
pub fn ensure_user_profile(state_dir: &Path, uid: u32) -> Result<(), String> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten();
    let Some(user) = user else {
        // C++ logs "user with UID … not found" and carries on.
        return Ok(());
    };
    if user.name.is_empty() || user.name.contains('/') || user.name.starts_with('.') {
        return Ok(());
    }
    let dir = state_dir.join("profiles/per-user").join(&user.name);
    fs::create_dir_all(&dir).map_err(|e| format!("creating directory `{}': {e}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("changing permissions of `{}': {e}", dir.display()))?;
    nix::unistd::chown(&dir, Some(user.uid), None).map_err(|e| format!("changing owner of `{}': {e}", dir.display()))
}

fn pid_alive(pid: i32) -> bool {
    !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
}

/// Removes the scratch entries whose writer is gone (see the module documentation). Returns
/// the entries removed.
pub fn sweep_scratch(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == UNPRIVILEGED_DIR_NAME {
            // socket-front's own directory: its stale entries go, without trusting the tree.
            match sweep_unprivileged(&entry.path()) {
                Ok(mut r) => removed.append(&mut r),
                Err(e) => eprintln!("guix-store-db: cleaning `{}': {e}", entry.path().display()),
            }
            continue;
        }
        let stale = match scratch_owner(&name) {
            Some(pid) => !pid_alive(pid),
            None => match entry.path().symlink_metadata() {
                Ok(md) => now.saturating_sub(md.ctime()) > UNNAMED_MAX_AGE.as_secs() as i64,
                Err(_) => false,
            },
        };
        if stale {
            let p = entry.path();
            delete_path(&p)?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// [`sweep_scratch`] of socket-front's own directory: entries of dead writers, removed with
/// [`remove_untrusted`].
fn sweep_unprivileged(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if scratch_owner(&entry.file_name()).is_none_or(|pid| !pid_alive(pid)) {
            let p = entry.path();
            remove_untrusted(&p)?;
            removed.push(p);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_read_only_tree_and_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        ensure_scratch_dir(&scratch, None).unwrap();
        // A read-only tree of a dead writer (pid 2^22+1 is above pid_max's default range
        // on most systems, but check to be sure).
        let dead = (4_194_000..4_194_300).find(|&p| !pid_alive(p)).unwrap();
        let t = scratch.join(format!("{dead}-item"));
        fs::create_dir_all(t.join("sub")).unwrap();
        fs::write(t.join("sub/f"), b"x").unwrap();
        fs::set_permissions(t.join("sub"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(&t, fs::Permissions::from_mode(0o555)).unwrap();
        let live = scratch.join(format!("{}-item", std::process::id()));
        fs::write(&live, b"y").unwrap();
        let fresh_unnamed = scratch.join("unnamed");
        fs::write(&fresh_unnamed, b"z").unwrap();
        let front = scratch.join(UNPRIVILEGED_DIR_NAME);
        fs::create_dir(&front).unwrap();
        let dead_front = front.join(format!("{dead}-front-1"));
        fs::create_dir(&dead_front).unwrap();
        std::os::unix::fs::symlink("/", dead_front.join("root")).unwrap();
        let live_front = front.join(format!("{}-front-2", std::process::id()));
        fs::write(&live_front, b"w").unwrap();
        let mut removed = sweep_scratch(&scratch).unwrap();
        removed.sort();
        assert_eq!(removed, vec![t.clone(), dead_front.clone()]);
        assert!(front.is_dir() && live_front.exists(), "socket-front's directory and live entries stay");
        assert!(std::path::Path::new("/").read_dir().is_ok());
        assert!(!t.exists() && live.exists() && fresh_unnamed.exists());
        delete_path(&live).unwrap();
        delete_path(&live).unwrap();
    }

    /// socket-front's item taken over: moved out of its directory, root's, canonical; a file
    /// of someone else inside is refused and the item removed. Needs root (chown), as the
    /// daemon does.
    #[test]
    fn unprivileged_items_are_taken_over_or_refused() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (store, scratch) = (dir.path().to_owned(), dir.path().join(".rs-scratch"));
        let user = UnprivilegedUser { uid: 65534, gid: 65534 };
        ensure_scratch_dir(&scratch, Some(user)).unwrap();
        let front = scratch.join(UNPRIVILEGED_DIR_NAME);
        let (sm, fm) = (fs::metadata(&scratch).unwrap(), fs::metadata(&front).unwrap());
        assert_eq!((sm.mode() & 0o7777, sm.uid(), sm.gid()), (0o710, 0, 65534));
        assert_eq!((fm.mode() & 0o7777, fm.uid(), fm.gid()), (0o700, 65534, 65534));
        let own = |p: &Path| std::os::unix::fs::lchown(p, Some(user.uid), Some(user.gid)).unwrap();
        let make = |name: &str| {
            let item = front.join(name);
            fs::create_dir_all(item.join("sub")).unwrap();
            fs::write(item.join("sub/f"), b"data").unwrap();
            fs::set_permissions(item.join("sub/f"), fs::Permissions::from_mode(0o4755)).unwrap();
            std::os::unix::fs::symlink("sub/f", item.join("l")).unwrap();
            for p in [item.join("sub/f"), item.join("l"), item.join("sub"), item.clone()] {
                own(&p);
            }
            item
        };
        make("1-front-good");
        take_unprivileged(&store, &scratch, "1-front-good", 100, user.uid, false).unwrap();
        assert!(!front.join("1-front-good").exists());
        let taken = scratch.join("1-front-good");
        for (p, mode) in [(taken.clone(), 0o555), (taken.join("sub"), 0o555), (taken.join("sub/f"), 0o555)] {
            let m = fs::symlink_metadata(&p).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o7777, m.mtime()), (0, mode, 1), "{}", p.display());
        }
        assert_eq!(fs::symlink_metadata(taken.join("l")).unwrap().uid(), 0);

        // A file that is not socket-front's (a hard link to root's file): refused, removed.
        let item = make("1-front-bad");
        let secret = dir.path().join("secret");
        fs::write(&secret, b"root's").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        fs::hard_link(&secret, item.join("sub/secret")).unwrap();
        let e = take_unprivileged(&store, &scratch, "1-front-bad", 100, user.uid, false).unwrap_err();
        assert!(e.starts_with("invalid ownership on file `"), "{e}");
        assert!(!scratch.join("1-front-bad").exists() && !item.exists());
        assert_eq!(fs::metadata(&secret).unwrap().mode() & 0o7777, 0o600, "the foreign file is untouched");

        // Gone from socket-front's directory (a resent request): the half-taken copy is taken
        // over again, its nodes already root's with one link accepted, a second name not.
        let half = scratch.join("1-front-again");
        fs::create_dir_all(half.join("sub")).unwrap();
        fs::write(half.join("sub/done"), b"ours").unwrap();
        fs::write(half.join("sub/todo"), b"theirs").unwrap();
        own(&half.join("sub/todo"));
        take_unprivileged(&store, &scratch, "1-front-again", 100, user.uid, false).unwrap();
        for f in ["sub/done", "sub/todo"] {
            let m = fs::symlink_metadata(half.join(f)).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o7777, m.mtime()), (0, 0o444, 1), "{f}");
        }
        let half = scratch.join("1-front-again2");
        fs::create_dir(&half).unwrap();
        fs::hard_link(&secret, half.join("secret")).unwrap();
        let e = take_unprivileged(&store, &scratch, "1-front-again2", 100, user.uid, false).unwrap_err();
        assert!(e.starts_with("invalid ownership on file `"), "{e}");
        assert!(!half.exists());
        assert_eq!(fs::metadata(&secret).unwrap().mode() & 0o7777, 0o600, "the foreign file is untouched");
        // A leftover under the same name in `.rs-scratch` is replaced, not merged.
        fs::write(scratch.join("1-front-x"), b"old").unwrap();
        fs::write(front.join("1-front-x"), b"new").unwrap();
        own(&front.join("1-front-x"));
        take_unprivileged(&store, &scratch, "1-front-x", 100, user.uid, false).unwrap();
        assert_eq!(fs::read(scratch.join("1-front-x")).unwrap(), b"new");
        assert!(take_unprivileged(&store, &scratch, "../x", 1, user.uid, false).is_err());
    }
}

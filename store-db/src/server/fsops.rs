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

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use guix_ipc::store_db::{ItemSource, NewItem, MAX_INLINE_TEXT};

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

/// Creates the scratch directory (0700) if needed and checks that it is a real directory.
pub fn ensure_scratch_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("`{}' is not a directory", dir.display())))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(dir)?,
        Err(e) => return Err(e),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_read_only_tree_and_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        ensure_scratch_dir(&scratch).unwrap();
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
        let removed = sweep_scratch(&scratch).unwrap();
        assert_eq!(removed, vec![t.clone()]);
        assert!(!t.exists() && live.exists() && fresh_unnamed.exists());
        delete_path(&live).unwrap();
        delete_path(&live).unwrap();
    }
}

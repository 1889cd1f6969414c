//! Store file policy: how every component that writes or removes store items treats their
//! files, as the C++ daemon does (`canonicalisePathMetaData`, `deletePath`).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Creates `dest` (which must not exist) holding `contents`, canonical as a store file: mode
/// 0444, mtime 1. Shared by the writers of text items (in scratch space or, in store-db, at
/// their final name).
pub fn write_canonical_text(dest: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o444).open(dest)?;
    f.write_all(contents)?;
    drop(f);
    canonicalise(dest)
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

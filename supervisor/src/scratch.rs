//! The store's scratch directory (`<store>/.rs-scratch`, see `guix_store::scratch`) after every
//! component has stopped.
//!
//! Nothing can be writing there once the supervisor has reaped all its components, so whatever
//! is left is debris of requests that never completed, and the directory itself is ours alone:
//! the C++ daemon's GC, run on the same store after a swap, would list it as dead and delete it
//! (`guix gc --list-dead` printing `/gnu/store/.rs-scratch`). The supervisor removes it so that
//! a cleanly stopped guix-daemon-rs leaves the store as guix-daemon would. store-db creates it
//! again at its next start.

use std::io;
use std::path::Path;

use guix_store::scratch::SCRATCH_DIR_NAME;

/// Removes `<store_dir>/.rs-scratch` and everything in it. Call only when no component runs.
pub fn remove_scratch_dir(store_dir: &Path) -> io::Result<()> {
    guix_store::files::delete_tree(&store_dir.join(SCRATCH_DIR_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn removes_read_only_leftovers_and_tolerates_absence() {
        let store = tempfile::tempdir().unwrap();
        assert!(remove_scratch_dir(store.path()).is_ok());
        let item = store.path().join(SCRATCH_DIR_NAME).join("123-front-x");
        fs::create_dir_all(item.join("sub")).unwrap();
        fs::write(item.join("sub/f"), b"x").unwrap();
        fs::set_permissions(item.join("sub"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(&item, fs::Permissions::from_mode(0o555)).unwrap();
        remove_scratch_dir(store.path()).unwrap();
        assert!(!store.path().join(SCRATCH_DIR_NAME).exists());
        assert!(store.path().exists());
    }
}

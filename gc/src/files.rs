//! What the collector does to files itself (outside store-db's writer), counting bytes exactly
//! as C++ does: deleting trees (`deletePath(path, bytesFreed, linkThreshold)` of
//! `nix/libutil/util.cc`, [`guix_store::files::delete_tree_counted`]), the unused links of
//! `.links` (`removeUnusedLinks`), `showBytes` (`guix_store::optimise`'s).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// C++ `deduplicationMinSize`: smaller files are never deduplicated, so their links go.
pub const DEDUPLICATION_MIN_SIZE: u64 = 8192;

/// `showBytes` of the C++ daemon 1.5.0 (signed: "note: currently hard linking saves -4096
/// bytes" is what C++ prints for an empty `.links`, verified in the rig).
pub fn show_bytes(bytes: i64) -> String {
    guix_store::optimise::show_bytes(i128::from(bytes))
}

/// `deletePath(path, bytesFreed, linkThreshold)`: the store crate's, shared with store-db.
pub use guix_store::files::delete_tree_counted as delete_counting;

/// `removeUnusedLinks`: deletes every link in `links_dir` that nothing else uses (one link
/// left) or that is smaller than [`DEDUPLICATION_MIN_SIZE`]; returns the bytes freed and what
/// hard linking saves ("note: currently hard linking saves …"). `talk` gets the C++ lvlTalkative
/// "deleting unused link" lines.
pub fn remove_unused_links(links_dir: &Path, talk: &mut dyn FnMut(String)) -> io::Result<(u64, i64)> {
    let opening = |e: io::Error| io::Error::new(e.kind(), format!("opening directory `{}': {e}", links_dir.display()));
    let (mut actual, mut unshared, mut freed) = (0i64, 0i64, 0u64);
    for e in fs::read_dir(links_dir).map_err(opening)? {
        let e = e?;
        let path = e.path();
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("statting `{}': {e}", path.display()))),
        };
        if md.nlink() != 1 && md.size() >= DEDUPLICATION_MIN_SIZE {
            actual += md.size() as i64;
            unshared += (md.nlink() as i64 - 1) * md.size() as i64;
            continue;
        }
        talk(format!("deleting unused link `{}'", path.display()));
        fs::remove_file(&path).map_err(|e| io::Error::new(e.kind(), format!("deleting `{}': {e}", path.display())))?;
        freed += md.size();
    }
    let overhead = fs::metadata(links_dir).map_err(opening)?.size() as i64;
    Ok((freed, unshared - actual - overhead))
}

/// The note C++ prints after removing unused links (negative for an empty `.links`: minus the
/// directory's own size).
pub fn hard_linking_note(saved: i64) -> String {
    format!("note: currently hard linking saves {}", show_bytes(saved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn show_bytes_as_cxx() {
        // The figures of the rig's C++ transcripts (ARCHITECTURE/spec: daemon.md).
        assert_eq!(show_bytes(0), "   0  bytes");
        assert_eq!(show_bytes(61), "  61  bytes");
        assert_eq!(show_bytes(1023), "1023  bytes");
        assert_eq!(show_bytes(1024), "   1.00 KiB");
        assert_eq!(show_bytes(237_558), " 231.99 KiB");
        assert_eq!(show_bytes(3 << 29), "   1.50 GiB");
        assert_eq!(show_bytes(i64::MAX), "   8.00 EiB");
        assert_eq!(hard_linking_note(-4096), "note: currently hard linking saves -4096  bytes");
    }

    #[test]
    fn delete_counts_files_under_the_link_threshold() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("tree");
        fs::create_dir_all(t.join("sub")).unwrap();
        fs::write(t.join("a"), vec![0u8; 100]).unwrap();
        fs::write(t.join("sub/b"), vec![0u8; 10]).unwrap();
        std::os::unix::fs::symlink("abc", t.join("link")).unwrap();
        // b has a second link outside the tree (as in .links).
        fs::hard_link(t.join("sub/b"), d.path().join("b-link")).unwrap();
        fs::set_permissions(t.join("sub"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(&t, fs::Permissions::from_mode(0o555)).unwrap();
        let mut t2 = d.path().join("tree2");
        fs::create_dir(&t2).unwrap();
        fs::write(t2.join("b"), vec![0u8; 10]).unwrap();
        fs::hard_link(t2.join("b"), d.path().join("b2-link")).unwrap();
        // Threshold 1: a (100) and the symlink (3); b has two links.
        assert_eq!(delete_counting(&t, 1).unwrap(), 103);
        assert!(!t.exists());
        // Threshold 2 (automatic deduplication): b counts too.
        assert_eq!(delete_counting(&t2, 2).unwrap(), 10);
        t2.push("gone");
        assert_eq!(delete_counting(&t2, 1).unwrap(), 0);
        let f = d.path().join("file");
        fs::write(&f, b"12345").unwrap();
        assert_eq!(delete_counting(&f, 1).unwrap(), 5);
    }

    #[test]
    fn unused_links() {
        let d = tempfile::tempdir().unwrap();
        let links = d.path().join(".links");
        fs::create_dir(&links).unwrap();
        // Used and big: kept. Unused: removed. Used but small: removed.
        fs::write(links.join("big"), vec![0u8; 10000]).unwrap();
        fs::hard_link(links.join("big"), d.path().join("big-user")).unwrap();
        fs::write(links.join("unused"), vec![0u8; 9000]).unwrap();
        fs::write(links.join("small"), vec![0u8; 100]).unwrap();
        fs::hard_link(links.join("small"), d.path().join("small-user")).unwrap();
        let mut talked = Vec::new();
        let (freed, saved) = remove_unused_links(&links, &mut |l| talked.push(l)).unwrap();
        assert_eq!(freed, 9100);
        let overhead = fs::metadata(&links).unwrap().size() as i64;
        assert_eq!(saved, 10000 - 10000 - overhead);
        assert!(links.join("big").exists() && !links.join("unused").exists() && !links.join("small").exists());
        assert_eq!(talked.len(), 2);
    }
}

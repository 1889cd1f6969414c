//! NAR restore (`nar::restore`): unpacking a NAR from a peer into a fresh directory, as
//! AddToStore, ImportPaths and the substituter do. Properties: restore accepts what
//! validation accepts (except for file-system limits such as over-long paths), consumes the
//! same bytes, and dumping the restored tree (`nar::dump_path`) reproduces them byte for
//! byte — nothing outside the destination is written (the destination's parent holds nothing
//! else afterwards).
#![no_main]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

use guix_formats::nar::{self, Limits, NarError};
use libfuzzer_sys::fuzz_target;

/// One scratch directory per process (under `TMPDIR`; scripts/fuzz points it at /dev/shm).
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::Builder::new().prefix("nar-restore-fuzz").tempdir().expect("a scratch directory"))
        .path()
}

/// Removes a restored tree, making its read-only directories writable first.
fn remove(p: &Path) {
    let Ok(meta) = fs::symlink_metadata(p) else { return };
    if meta.is_dir() {
        let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
        if let Ok(entries) = fs::read_dir(p) {
            for e in entries.flatten() {
                remove(&e.path());
            }
        }
        fs::remove_dir(p).expect("removing a restored directory");
    } else {
        fs::remove_file(p).expect("removing a restored file");
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let dest = scratch().join("item");
    let mut input = data;
    let restored = nar::restore(&mut input, &dest, &limits);
    let used = data.len() - input.len();
    let mut input = data;
    let validated = nar::validate(&mut input, &limits);
    match (&restored, &validated) {
        (Ok(r), Ok(v)) => {
            assert_eq!(r, v);
            assert_eq!(data.len() - input.len(), used);
            let mut again = Vec::new();
            let dumped = nar::dump_path(&dest, &mut again).expect("dumping the restored tree");
            assert_eq!(again, data[..used]);
            assert_eq!(&dumped, r);
        }
        (Err(_), Err(_)) => {}
        // The file system's own limits (a path longer than PATH_MAX) come on top of the
        // format's.
        (Err(NarError::Io { .. }), Ok(_)) => {}
        (r, v) => panic!("restore and validate disagree: {r:?} / {v:?}"),
    }
    let names: Vec<_> =
        fs::read_dir(scratch()).expect("the scratch directory").flatten().map(|e| e.file_name()).collect();
    assert!(names.iter().all(|n| n == "item"), "restore wrote outside its destination: {names:?}");
    remove(&dest);
});

use super::*;
use std::os::unix::fs::symlink;

/// A store directory with `.links`, and a canonical item builder.
struct Store {
    _tmp: tempfile::TempDir,
    store: PathBuf,
    links: PathBuf,
}

impl Store {
    fn new() -> Store {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        let links = store.join(".links");
        fs::create_dir_all(&links).expect("mkdir");
        Store { _tmp: tmp, store, links }
    }

    /// An item directory `name` with `files` (name, contents, executable) and a symlink,
    /// made canonical (0444/0555, mtime 1) as items in the store are.
    fn item(&self, name: &str, files: &[(&str, &[u8], bool)]) -> PathBuf {
        let dir = self.store.join(name);
        fs::create_dir(&dir).expect("mkdir item");
        for (f, contents, exec) in files {
            let p = dir.join(f);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).expect("mkdir sub");
            }
            fs::write(&p, contents).expect("write");
            fs::set_permissions(&p, fs::Permissions::from_mode(if *exec { 0o555 } else { 0o444 })).expect("chmod");
        }
        symlink("f", dir.join("a-symlink")).expect("symlink");
        make_read_only(&dir);
        dir
    }

    fn links(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.links)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into())
            .collect();
        v.sort();
        v
    }

    fn optimise(&self, path: &Path) -> (OptimiseStats, Vec<(u32, String)>) {
        let mut stats = OptimiseStats::default();
        let mut msgs = Vec::new();
        optimise_path(&self.store, &self.links, path, &mut stats, &mut |l, m| msgs.push((l, m))).expect("optimise");
        (stats, msgs)
    }
}

fn make_read_only(p: &Path) {
    let md = fs::symlink_metadata(p).expect("lstat");
    if md.is_dir() {
        for e in fs::read_dir(p).expect("ls") {
            make_read_only(&e.expect("entry").path());
        }
        fs::set_permissions(p, fs::Permissions::from_mode(0o555)).expect("chmod dir");
    }
    crate::files::canonicalise(p).expect("mtime 1");
}

fn md(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).expect("lstat")
}

fn big(n: usize, byte: u8) -> Vec<u8> {
    vec![byte; n]
}

#[test]
fn identical_files_of_two_items_share_one_inode_with_the_links_entry() {
    let s = Store::new();
    let content = big(8192, b'x');
    let a = s.item("aaa-a", &[("f", &content, false), ("sub/small", &big(8191, b'y'), false)]);
    let b = s.item("bbb-b", &[("g", &content, false), ("small", &big(8191, b'y'), false)]);
    let (st_a, _) = s.optimise(&a);
    assert_eq!(st_a, OptimiseStats::default(), "the first copy only enters .links");
    let (st_b, msgs) = s.optimise(&b);
    assert_eq!((st_b.files_linked, st_b.bytes_freed), (1, 8192));

    let (fa, fb) = (md(&a.join("f")), md(&b.join("g")));
    assert_eq!(fa.ino(), fb.ino());
    assert_eq!(fa.nlink(), 3, "two store files and the .links entry");
    assert_eq!(fs::read(b.join("g")).expect("read"), content);
    // The name is the nix-base32 SHA-256 of the file's NAR serialisation.
    let h = nar::summary_of_regular(&content, false).nar_hash.to_nix_base32();
    assert_eq!(s.links(), vec![h.clone()]);
    let l = md(&s.links.join(&h));
    assert_eq!((l.ino(), l.mode() & 0o7777, l.mtime()), (fa.ino(), 0o444, 1), "canonical .links entry");

    // 8191 bytes, symlinks and directories: untouched.
    assert_eq!(md(&a.join("sub/small")).nlink(), 1);
    assert_eq!(md(&b.join("small")).nlink(), 1);
    assert!(md(&a.join("a-symlink")).file_type().is_symlink());
    assert_eq!(md(&a.join("sub")).nlink(), 2);
    // The item's directory is read-only again, its mtime 1; no temporary link is left.
    let d = md(&b);
    assert_eq!((d.mode() & 0o7777, d.mtime()), (0o555, 1));
    assert!(!fs::read_dir(&s.store).expect("ls").any(|e| e
        .expect("e")
        .file_name()
        .to_string_lossy()
        .starts_with(".tmp-link")));
    // The messages of C++ 1.5.0, the unformatted one included.
    assert!(msgs.contains(&(LVL_TALKATIVE, "linking `%1%' to `%2%'".to_owned())), "{msgs:?}");
    let hashed = format!(
        "`{}' has hash `{}'",
        b.join("g").display(),
        nar::summary_of_regular(&content, false).nar_hash.to_base16()
    );
    assert!(msgs.contains(&(LVL_DEBUG, hashed)), "{msgs:?}");

    // Again: nothing more to do.
    let (again, _) = s.optimise(&b);
    assert_eq!(again, OptimiseStats::default());
}

#[test]
fn the_executable_bit_is_part_of_the_hash() {
    let s = Store::new();
    let content = big(10_000, b'e');
    let a = s.item("aaa-a", &[("plain", &content, false), ("exec", &content, true)]);
    s.optimise(&a);
    assert_eq!(s.links().len(), 2);
    assert_ne!(md(&a.join("plain")).ino(), md(&a.join("exec")).ino());
    let exec_link = s.links.join(nar::summary_of_regular(&content, true).nar_hash.to_nix_base32());
    assert_eq!(md(&exec_link).mode() & 0o7777, 0o555);
}

#[test]
fn a_root_file_item_in_the_store_is_linked_without_touching_the_store_directory() {
    let s = Store::new();
    let content = big(9000, b't');
    for name in ["aaa-t", "bbb-t"] {
        let p = s.store.join(name);
        crate::files::write_canonical_text(&p, &content).expect("write");
    }
    let before = md(&s.store);
    s.optimise(&s.store.join("aaa-t"));
    let (st, _) = s.optimise(&s.store.join("bbb-t"));
    assert_eq!(st.files_linked, 1);
    assert_eq!(md(&s.store.join("aaa-t")).ino(), md(&s.store.join("bbb-t")).ino());
    assert_eq!(md(&s.store.join("bbb-t")).nlink(), 3);
    assert_eq!(md(&s.store).mode(), before.mode());
}

#[test]
fn a_different_inode_already_in_links_replaces_the_file() {
    let s = Store::new();
    let content = big(8200, b'p');
    let h = nar::summary_of_regular(&content, false).nar_hash.to_nix_base32();
    // A pool entry left by an earlier item that is gone.
    crate::files::write_canonical_text(&s.links.join(&h), &content).expect("write");
    let pool = md(&s.links.join(&h)).ino();
    let a = s.item("aaa-a", &[("deep/er/f", &content, false)]);
    let (st, _) = s.optimise(&a);
    assert_eq!(st.files_linked, 1);
    let f = md(&a.join("deep/er/f"));
    assert_eq!((f.ino(), f.nlink()), (pool, 2));
    let d = md(&a.join("deep/er"));
    assert_eq!((d.mode() & 0o7777, d.mtime()), (0o555, 1), "directory mode and mtime put back");
}

#[test]
fn a_corrupted_links_entry_is_replaced() {
    let s = Store::new();
    let content = big(8192, b'c');
    let h = nar::summary_of_regular(&content, false).nar_hash.to_nix_base32();
    crate::files::write_canonical_text(&s.links.join(&h), b"truncated").expect("write");
    let a = s.item("aaa-a", &[("f", &content, false)]);
    let (st, msgs) = s.optimise(&a);
    assert_eq!(st.files_linked, 0);
    assert_eq!(md(&s.links.join(&h)).ino(), md(&a.join("f")).ino());
    assert!(msgs.contains(&(LVL_ERROR, "removing corrupted link `%1%'".to_owned())), "{msgs:?}");
}

/// The GC removes an unused `.links` entry between our check and our link of it: the file is
/// not lost, and becomes the pool's copy on the retry.
#[test]
fn a_links_entry_removed_concurrently_is_retried() {
    let s = Store::new();
    let content = big(8192, b'r');
    let h = nar::summary_of_regular(&content, false).nar_hash.to_nix_base32();
    let entry = s.links.join(&h);
    crate::files::write_canonical_text(&entry, &content).expect("write");
    let a = s.item("aaa-a", &[("f", &content, false)]);
    let mut stats = OptimiseStats::default();
    let mut removed = false;
    // The "linking" message comes right after the check, before the link of the entry.
    let mut log = |_: u32, m: String| {
        if m.starts_with("linking") && !removed {
            fs::remove_file(&entry).expect("remove, as the GC would");
            removed = true;
        }
    };
    optimise_path(&s.store, &s.links, &a, &mut stats, &mut log).expect("optimise");
    assert!(removed);
    assert_eq!(stats.files_linked, 0, "nothing was replaced");
    assert_eq!(fs::read(a.join("f")).expect("read"), content, "no data lost");
    assert_eq!(md(&entry).ino(), md(&a.join("f")).ino(), "the file became the pool's copy");
}

#[test]
fn writable_files_are_skipped() {
    let s = Store::new();
    let a = s.item("aaa-a", &[("f", &big(8192, b'w'), false)]);
    fs::set_permissions(&a, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(a.join("f"), fs::Permissions::from_mode(0o644)).expect("chmod");
    let (_, msgs) = s.optimise(&a);
    assert!(s.links().is_empty());
    assert_eq!(msgs, vec![(LVL_ERROR, format!("skipping suspicious writable file `{}'", a.join("f").display()))]);
}

#[test]
fn known_hashes_are_used_instead_of_reading() {
    let s = Store::new();
    let content = big(8192, b'k');
    let a = s.item("aaa-a", &[("f", &content, false)]);
    // A wrong "known" hash proves it was not read: the entry gets that name.
    let fake = nar::summary_of_regular(b"other", false).nar_hash;
    let known: KnownHashes = [(PathBuf::from("f"), fake)].into();
    let mut stats = OptimiseStats::default();
    optimise_path_with(&s.store, &s.links, &a, &known, &mut stats, &mut |_, _| {}).expect("optimise");
    assert_eq!(s.links(), vec![fake.to_nix_base32()]);
}

#[test]
fn file_nar_hashes_match_the_files_nar_hashes() {
    let s = Store::new();
    let tree = nar::Node::Directory(
        [
            (b"big".to_vec(), nar::Node::Regular { executable: true, contents: big(9000, b'n') }),
            (b"small".to_vec(), nar::Node::Regular { executable: false, contents: big(100, b'n') }),
            (
                b"d".to_vec(),
                nar::Node::Directory(
                    [(b"big2".to_vec(), nar::Node::Regular { executable: false, contents: big(8192, b'm') })].into(),
                ),
            ),
        ]
        .into(),
    );
    let bytes = tree.to_nar().expect("nar");
    let dest = s.store.join("aaa-x");
    let mut v = FileNarHashes::new(nar::Restorer::new(&dest));
    nar::read_with(&bytes[..], &nar::Limits::default(), &mut v, &mut io::sink()).expect("restore");
    let hashes = v.into_hashes();
    assert_eq!(hashes.len(), 2);
    for rel in ["big", "d/big2"] {
        let want = nar::dump_path(&dest.join(rel), &mut io::sink()).expect("dump").nar_hash;
        assert_eq!(hashes.get(Path::new(rel)), Some(&want), "{rel}");
    }
}

#[test]
fn optimise_store_links_everything_and_reports_as_cxx() {
    let s = Store::new();
    let x = big(10_000, b'x');
    let y = big(20_000, b'y');
    let items = [s.item("aaa-a", &[("x", &x, false)]), s.item("bbb-b", &[("x", &x, false), ("y", &y, false)])];
    let c = s.store.join("ccc-c");
    crate::files::write_canonical_text(&c, &y).expect("write");
    let gone = s.store.join("ddd-collected-meanwhile");
    let mut paths = items.iter().cloned().chain([c.clone(), gone]);
    let mut msgs = Vec::new();
    let st = optimise_store(&s.store, &s.links, &mut paths, &mut |l, m| msgs.push((l, m))).expect("optimise");
    assert_eq!((st.files_linked, st.bytes_freed), (2, 30_000));
    assert_eq!(msgs.last(), Some(&(LVL_ERROR, "  29.30 KiB freed by hard-linking 2 files".to_owned())));
    assert_eq!(md(&c).nlink(), 3);
    // Once more: everything is in .links already.
    let mut msgs = Vec::new();
    let st = optimise_store(&s.store, &s.links, &mut items.iter().cloned(), &mut |l, m| msgs.push((l, m)))
        .expect("optimise");
    assert_eq!(st, OptimiseStats::default());
    assert_eq!(msgs.last(), Some(&(LVL_ERROR, "   0  bytes freed by hard-linking 0 files".to_owned())));
}

#[test]
fn show_bytes_is_cxx_1_5_0() {
    assert_eq!(show_bytes(0), "   0  bytes");
    assert_eq!(show_bytes(-4096), "-4096  bytes");
    assert_eq!(show_bytes(1023), "1023  bytes");
    assert_eq!(show_bytes(30_000), "  29.30 KiB");
    assert_eq!(show_bytes(5 * 1024 * 1024), "   5.00 MiB");
    assert_eq!(show_bytes(3 << 30), "   3.00 GiB");
}

// EMLINK is not tested: it needs a file system with a small link limit (ext4's is 65000;
// tmpfs has none), which a unit test cannot make without root and a loop device.

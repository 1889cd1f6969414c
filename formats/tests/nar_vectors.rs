//! Checks the NAR writer and reader against NARs made by the real Guix client (Guile
//! `write-file`) and the narHash the C++ daemon recorded for them; see
//! `tests/vectors/gen/nar.scm` for the format of `tests/vectors/nar.txt`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use guix_formats::hash::{base16_decode, HashAlgo};
use guix_formats::nar::{self, Limits, Node};

#[derive(Default)]
struct Vector {
    name: String,
    entries: Vec<Vec<String>>,
    nar: Vec<u8>,
    sha256: String,
    size: u64,
    daemon_hash: String,
}

fn hex(s: &str) -> Vec<u8> {
    if s == "-" {
        Vec::new()
    } else {
        base16_decode(s).expect("hex")
    }
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("vectors/nar.txt");
    let mut out = Vec::new();
    let mut cur = Vector::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "vector" => cur = Vector { name: f[1].to_owned(), ..Vector::default() },
            "dir" | "file" | "link" => cur.entries.push(f.iter().map(|s| s.to_string()).collect()),
            "nar" => cur.nar = hex(f[1]),
            "nar-sha256" => cur.sha256 = f[1].to_owned(),
            "nar-size" => cur.size = f[1].parse().unwrap(),
            "daemon-nar-hash" => cur.daemon_hash = f[1].to_owned(),
            "end" => out.push(std::mem::take(&mut cur)),
            other => panic!("unknown line {other}"),
        }
    }
    out
}

fn target(root: &Path, rel: &[u8]) -> PathBuf {
    if rel == b"." {
        root.to_owned()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// Creates the vector's tree on disk.
fn build_on_disk(v: &Vector, root: &Path) {
    for e in &v.entries {
        let p = target(root, &hex(&e[1]));
        match e[0].as_str() {
            "dir" => fs::create_dir(&p).unwrap(),
            "file" => {
                fs::write(&p, hex(&e[3])).unwrap();
                let mode = if e[2] == "1" { 0o755 } else { 0o644 };
                fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            }
            "link" => std::os::unix::fs::symlink(OsStr::from_bytes(&hex(&e[2])), &p).unwrap(),
            _ => unreachable!(),
        }
    }
}

/// Builds the vector's tree in memory.
fn build_node(v: &Vector) -> Node {
    fn insert(node: &mut Node, path: &[&[u8]], leaf: Node) {
        match (node, path) {
            (n, []) => *n = leaf,
            (Node::Directory(entries), [first, rest @ ..]) => {
                let child = entries.entry(first.to_vec()).or_insert(Node::Directory(BTreeMap::new()));
                insert(child, rest, leaf)
            }
            _ => panic!("not a directory"),
        }
    }
    let mut root = Node::Directory(BTreeMap::new());
    for e in &v.entries {
        let rel = hex(&e[1]);
        let leaf = match e[0].as_str() {
            "dir" => Node::Directory(BTreeMap::new()),
            "file" => Node::Regular { executable: e[2] == "1", contents: hex(&e[3]) },
            "link" => Node::Symlink { target: hex(&e[2]) },
            _ => unreachable!(),
        };
        let parts: Vec<&[u8]> = if rel == b"." { vec![] } else { rel.split(|&b| b == b'/').collect() };
        insert(&mut root, &parts, leaf);
    }
    root
}

fn make_writable(p: &Path) {
    if fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false) {
        let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
        for e in fs::read_dir(p).unwrap().flatten() {
            make_writable(&e.path());
        }
    }
}

#[test]
fn vectors_from_the_guile_writer() {
    let vs = vectors();
    assert_eq!(vs.len(), 6);
    for v in &vs {
        let want = HashAlgo::Sha256.digest(&v.nar);
        assert_eq!(want.to_base16(), v.sha256, "{}", v.name);
        assert_eq!(v.daemon_hash, v.sha256, "{}: daemon and client agree", v.name);
        assert_eq!(v.size, v.nar.len() as u64);

        // In-memory builder.
        assert_eq!(build_node(v).to_nar().unwrap(), v.nar, "{}: builder", v.name);

        // Writer from disk.
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        build_on_disk(v, &src);
        let mut out = Vec::new();
        let s = nar::dump_path(&src, &mut out).unwrap();
        assert_eq!(out, v.nar, "{}: dump_path", v.name);
        assert_eq!((s.nar_hash, s.nar_size), (want, v.size));

        // Readers.
        assert_eq!(nar::validate(&v.nar[..], &Limits::default()).unwrap(), s);
        let dest = tmp.path().join("dest");
        assert_eq!(nar::restore(&v.nar[..], &dest, &Limits::default()).unwrap(), s);
        let mut again = Vec::new();
        nar::dump_path(&dest, &mut again).unwrap();
        assert_eq!(again, v.nar, "{}: restore", v.name);
        make_writable(tmp.path());
    }
}

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::hash::HashAlgo;
use crate::wire::put_bytes;

fn file(contents: &[u8], executable: bool) -> Node {
    Node::Regular { executable, contents: contents.to_vec() }
}

fn dir(entries: &[(&str, Node)]) -> Node {
    Node::Directory(entries.iter().map(|(n, c)| (n.as_bytes().to_vec(), c.clone())).collect())
}

fn sample() -> Node {
    dir(&[
        ("a.txt", file(b"hello\n", false)),
        ("link", Node::Symlink { target: b"a.txt".to_vec() }),
        ("run.sh", file(b"#!/bin/sh\necho hi\n", true)),
        ("sub", dir(&[("deep", file(b"deep\n", false)), ("empty", dir(&[]))])),
    ])
}

/// A NAR from raw tokens, for malformed inputs.
fn toks(t: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::new();
    for x in t {
        put_bytes(&mut b, x);
    }
    b
}

/// Tokens of a directory NAR with the given entries (each a regular empty file).
fn dir_with_names(names: &[&[u8]]) -> Vec<u8> {
    let mut t: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
    for n in names {
        t.extend_from_slice(&[
            b"entry",
            b"(",
            b"name",
            n,
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"",
            b")",
            b")",
        ]);
    }
    t.push(b")");
    toks(&t)
}

fn err(nar: &[u8]) -> NarError {
    match validate(nar, &Limits::default()) {
        Err(e) => e,
        Ok(s) => panic!("accepted: {s:?}"),
    }
}

#[test]
fn regular_layouts_agree() {
    for exec in [false, true] {
        let a = nar_of_regular(b"12345678", exec);
        assert_eq!(a, file(b"12345678", exec).to_nar().unwrap());
        let mut b = Vec::new();
        write_regular(&mut b, exec, 8, &b"12345678"[..]).unwrap();
        assert_eq!(a, b);
        let s = validate(&a[..], &Limits::default()).unwrap();
        assert_eq!(s.nar_size, a.len() as u64);
        assert_eq!(s.nar_hash, HashAlgo::Sha256.digest(&a));
    }
}

#[test]
fn regular_nar_hasher_in_chunks() {
    for exec in [false, true] {
        for contents in [&b""[..], b"1234567", b"12345678", b"123456789"] {
            let nar = nar_of_regular(contents, exec);
            let mut h = RegularNarHasher::new(exec, contents.len() as u64);
            for chunk in contents.chunks(3) {
                h.update(chunk);
            }
            let s = h.finish().unwrap();
            assert_eq!((s.nar_hash, s.nar_size), (HashAlgo::Sha256.digest(&nar), nar.len() as u64));
            assert_eq!(summary_of_regular(contents, exec), s);
        }
    }
    // Fewer or more bytes than announced is an error, not a wrong hash.
    let mut short = RegularNarHasher::new(false, 4);
    short.update(b"abc");
    assert!(matches!(short.finish(), Err(NarError::FileChanged { .. })));
    let mut long = RegularNarHasher::new(false, 2);
    long.update(b"abc");
    assert!(long.finish().is_err());
}

#[test]
fn node_round_trip() {
    let nar = sample().to_nar().unwrap();
    let (node, summary) = Node::from_nar(&nar[..], &Limits::default()).unwrap();
    assert_eq!(node, sample());
    assert_eq!(summary.nar_size, nar.len() as u64);
}

#[test]
fn rejects_bad_magic() {
    assert!(matches!(err(&toks(&[b"nix-archive-2"])), NarError::BadMagic));
    assert!(matches!(err(&toks(&[b"nix"])), NarError::BadMagic));
    assert!(matches!(err(&[0xff; 16]), NarError::BadMagic));
    assert_eq!(NarError::BadMagic.to_string(), "bad archive: input doesn't look like a normalized archive");
}

#[test]
fn rejects_bad_structure() {
    let e = err(&toks(&[b"nix-archive-1", b"(", b"type", b"fifo"]));
    assert_eq!(e.to_string(), "bad archive: unknown file type fifo");
    let e = err(&toks(&[b"nix-archive-1", b"[", b"type"]));
    assert_eq!(e.to_string(), "bad archive: expected open tag");
    let e = err(&toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"bogus"]));
    assert_eq!(e.to_string(), "bad archive: unknown field bogus");
    // C++ accepts "executable" after "contents"; we do not.
    let e = err(&toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"", b"executable"]));
    assert!(matches!(e, NarError::Unexpected { .. }), "{e}");
    let e = err(&toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"x"]));
    assert!(matches!(e, NarError::ExecutableNotEmpty));
    let e = err(&toks(&[b"nix-archive-1", b"(", b"type", b"symlink", b")"]));
    assert!(matches!(e, NarError::Unexpected { expected: "target", .. }));
    let e = err(&toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"x", b"entry"]));
    assert!(matches!(e, NarError::Unexpected { expected: ")", .. }));
}

#[test]
fn rejects_bad_names_and_order() {
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
        let e = err(&dir_with_names(&[bad]));
        assert!(matches!(e, NarError::InvalidName(_)), "{e}");
    }
    assert_eq!(err(&dir_with_names(&[b".."])).to_string(), "NAR contains invalid file name `..'");
    assert!(matches!(err(&dir_with_names(&[b"b", b"a"])), NarError::NotSorted { .. }));
    assert!(matches!(err(&dir_with_names(&[b"a", b"a"])), NarError::NotSorted { .. }));
    assert_eq!(err(&dir_with_names(&[b"a", b"a"])).to_string(), "NAR directory is not sorted");
    validate(&dir_with_names(&[b"B", b"a", b"a-b", b"a.b", b"\xc3\xa9"])[..], &Limits::default()).unwrap();
}

#[test]
fn rejects_bad_framing_and_limits() {
    let mut nar = nar_of_regular(b"abc", false);
    let i = nar.len() - 16 - 2; // a padding byte after "abc"
    nar[i] = 1;
    assert!(matches!(err(&nar), NarError::Wire(crate::wire::WireError::NonZeroPadding)));

    let long = vec![b'x'; 256];
    assert!(matches!(err(&dir_with_names(&[&long])), NarError::NameTooLong { len: 256, .. }));
    let target = vec![b'x'; 4096];
    let e = err(&toks(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target", &target]));
    assert!(matches!(e, NarError::TargetTooLong { .. }));

    // A size word announcing far more than the limit fails before anything is read.
    let mut nar = toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
    nar.extend_from_slice(&u64::MAX.to_le_bytes());
    let limits = Limits { max_nar_size: Some(1 << 20), ..Limits::default() };
    assert!(matches!(validate(&nar[..], &limits), Err(NarError::TooLarge { .. })));
    assert!(matches!(validate(&nar[..], &Limits::default()), Err(NarError::TooLarge { .. })));

    let mut deep = file(b"", false);
    for _ in 0..5 {
        deep = dir(&[("d", deep)]);
    }
    let nar = deep.to_nar().unwrap();
    validate(&nar[..], &Limits { max_depth: 5, ..Limits::default() }).unwrap();
    let e = validate(&nar[..], &Limits { max_depth: 4, ..Limits::default() }).unwrap_err();
    assert!(matches!(e, NarError::TooDeep { max: 4 }));
}

#[test]
fn every_truncation_fails() {
    let nar = sample().to_nar().unwrap();
    for n in 0..nar.len() {
        assert!(validate(&nar[..n], &Limits::default()).is_err(), "prefix {n}");
    }
}

#[test]
fn dump_restore_dump() {
    let tmp = tempfile::tempdir().unwrap();
    let nar = sample().to_nar().unwrap();
    let dest = tmp.path().join("out");
    let s = restore(&nar[..], &dest, &Limits::default()).unwrap();
    assert_eq!(s.nar_hash, HashAlgo::Sha256.digest(&nar));
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dest), 0o555);
    assert_eq!(mode(&dest.join("a.txt")), 0o444);
    assert_eq!(mode(&dest.join("run.sh")), 0o555);
    assert_eq!(fs::read_link(dest.join("link")).unwrap(), Path::new("a.txt"));
    let mut again = Vec::new();
    let s2 = dump_path(&dest, &mut again).unwrap();
    assert_eq!(again, nar);
    assert_eq!(s, s2);
    // The destination must not exist.
    assert!(restore(&nar[..], &dest, &Limits::default()).is_err());
    make_writable(tmp.path());
}

#[test]
fn dump_rejects_special_files() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let e = dump_path(tmp.path(), &mut Vec::new()).unwrap_err();
    assert_eq!(e.to_string(), format!("file `{}' has an unsupported type", sock.display()));
}

/// Restored trees are read-only; make them removable for `TempDir`'s drop.
fn make_writable(p: &Path) {
    if let Ok(md) = fs::symlink_metadata(p) {
        if md.is_dir() {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof!["[a-zA-Z0-9._+-]{1,12}".prop_map(String::into_bytes), proptest::collection::vec(1u8..=255, 1..8),]
        .prop_filter("valid name", |n| super::parser::valid_name(n))
}

fn arb_node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(executable, contents)| Node::Regular { executable, contents }),
        proptest::collection::vec(1u8..=255, 1..20).prop_map(|target| Node::Symlink { target }),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        proptest::collection::btree_map(arb_name(), inner, 0..5).prop_map(Node::Directory)
    })
}

/// Only `dest` may exist beside it after a restore, whatever the input.
fn check_contained(tmp: &Path) {
    let names: Vec<_> = fs::read_dir(tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| n == "dest"), "{names:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn prop_dump_restore_dump(node in arb_node()) {
        let nar = node.to_nar().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let s = restore(&nar[..], &dest, &Limits::default()).unwrap();
        let mut again = Vec::new();
        let s2 = dump_path(&dest, &mut again).unwrap();
        make_writable(tmp.path());
        prop_assert_eq!(&again, &nar);
        prop_assert_eq!(s, s2);
        let (back, _) = Node::from_nar(&nar[..], &Limits::default()).unwrap();
        prop_assert_eq!(back, node);
    }

    #[test]
    fn prop_mutations_never_escape(node in arb_node(), pos in any::<prop::sample::Index>(),
                                   byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut nar = node.to_nar().unwrap();
        let i = pos.index(nar.len());
        nar[i] = byte;
        let nar = &nar[..cut.index(nar.len() + 1)];
        let tmp = tempfile::tempdir().unwrap();
        let _ = restore(nar, &tmp.path().join("dest"), &Limits::default());
        make_writable(tmp.path());
        check_contained(tmp.path());
    }

    #[test]
    fn prop_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut input = toks(&[b"nix-archive-1"]);
        input.extend_from_slice(&bytes);
        let _ = validate(&bytes[..], &Limits::default());
        let _ = validate(&input[..], &Limits::default());
        let tmp = tempfile::tempdir().unwrap();
        let _ = restore(&input[..], &tmp.path().join("dest"), &Limits::default());
        make_writable(tmp.path());
        check_contained(tmp.path());
    }
}

#[test]
fn malicious_names_stay_inside() {
    // A symlink followed by an entry that would traverse it is impossible: same name twice
    // is rejected before anything is created under it.
    let t: Vec<&[u8]> = vec![
        b"nix-archive-1",
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"name",
        b"x",
        b"node",
        b"(",
        b"type",
        b"symlink",
        b"target",
        b"/tmp",
        b")",
        b")",
        b"entry",
        b"(",
        b"name",
        b"x",
        b"node",
        b"(",
        b"type",
        b"directory",
        b")",
        b")",
        b")",
    ];
    let tmp = tempfile::tempdir().unwrap();
    let e = restore(&toks(&t)[..], &tmp.path().join("dest"), &Limits::default()).unwrap_err();
    assert!(matches!(e, NarError::NotSorted { .. }));
    make_writable(tmp.path());
    check_contained(tmp.path());
}

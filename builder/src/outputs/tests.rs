//! Real files in temporary directories, as root: build outputs chowned to a build uid, left in
//! a chroot-like tree, processed into a real scratch directory.

use super::*;
use guix_formats::derivation::{DerivationOutput, OutputName};
use guix_formats::nar::dump_path;
use std::os::unix::fs::{lchown, symlink};

const BUILD_UID: u32 = 30_123;
const H_OUT: &str = "0000000000000000000000000000000a";
const H_LIB: &str = "1111111111111111111111111111111b";
const H_IN: &str = "2222222222222222222222222222222c";
const H_UNUSED: &str = "3333333333333333333333333333333d";
const H_DEP: &str = "4444444444444444444444444444444f";
const H_DRV: &str = "5555555555555555555555555555555g";

fn sp(hash: &str, name: &str) -> StorePath {
    StorePath::from_base_name(&format!("{hash}-{name}")).unwrap()
}

/// A store directory, its scratch space, and a chroot where builds leave their outputs.
struct World {
    _tmp: tempfile::TempDir,
    store: StoreDir,
    store_path: PathBuf,
    chroot: PathBuf,
    scratch: Scratch,
    drv_path: StorePath,
    drv: Derivation,
    outputs: BTreeMap<String, StorePath>,
    candidates: BTreeSet<StorePath>,
    build_uid: Option<u32>,
    /// What the requisites closure gives for each path (itself plus these).
    closures: BTreeMap<StorePath, BTreeSet<StorePath>>,
    /// [`OutputsSpec::in_place`].
    in_place: bool,
}

impl World {
    /// A derivation with outputs `out` and `lib`, one input `in` (depending on `dep`) and an
    /// unused input.
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let store_path = tmp.path().join("store");
        fs::create_dir(&store_path).unwrap();
        let store = StoreDir::new(store_path.to_str().unwrap()).unwrap();
        let chroot = tmp.path().join("x.chroot/top");
        let in_chroot = chroot.join(store_path.strip_prefix("/").unwrap());
        fs::create_dir_all(&in_chroot).unwrap();
        let scratch = Scratch::new(&store_path);
        let out = sp(H_OUT, "foo");
        let lib = sp(H_LIB, "foo-lib");
        let mut drv = Derivation {
            outputs: BTreeMap::new(),
            input_drvs: BTreeMap::new(),
            input_srcs: BTreeSet::new(),
            platform: b"x86_64-linux".to_vec(),
            builder: b"/bin/sh".to_vec(),
            args: vec![],
            env: BTreeMap::new(),
        };
        for (name, path) in [("out", &out), ("lib", &lib)] {
            let o = DerivationOutput { path: Some(path.clone()), hash_algo: String::new(), hash: String::new() };
            drv.outputs.insert(OutputName::new(name).unwrap(), o);
        }
        let outputs = [("lib".to_owned(), lib), ("out".to_owned(), out)].into_iter().collect();
        let candidates = [sp(H_IN, "in"), sp(H_UNUSED, "unused"), sp(H_DEP, "dep")].into_iter().collect();
        let closures = [(sp(H_IN, "in"), [sp(H_DEP, "dep")].into_iter().collect())].into_iter().collect();
        World {
            _tmp: tmp,
            store,
            store_path,
            chroot,
            scratch,
            drv_path: sp(H_DRV, "foo.drv"),
            drv,
            outputs,
            candidates,
            build_uid: Some(BUILD_UID),
            closures,
            in_place: false,
        }
    }

    /// A fixed-output derivation with the single output `out`.
    fn fixed(algo: &str, hash: &Hash) -> World {
        let mut w = World::new();
        let out = sp(H_OUT, "src.tar");
        w.drv.outputs.clear();
        let o = DerivationOutput { path: Some(out.clone()), hash_algo: algo.to_owned(), hash: hash.to_base16() };
        w.drv.outputs.insert(OutputName::out(), o);
        w.outputs = [("out".to_owned(), out)].into_iter().collect();
        w
    }

    fn out(&self, name: &str) -> StorePath {
        self.outputs[name].clone()
    }

    /// Where the build leaves an output.
    fn loc(&self, p: &StorePath) -> PathBuf {
        self.chroot.join(self.store.display(p).trim_start_matches('/'))
    }

    fn spec<'a>(
        &'a self,
        locate: &'a dyn Fn(&StorePath) -> PathBuf,
        closure: &'a dyn Fn(&BTreeSet<StorePath>) -> Result<BTreeSet<StorePath>>,
    ) -> OutputsSpec<'a> {
        OutputsSpec {
            store: &self.store,
            drv_path: &self.drv_path,
            drv: &self.drv,
            outputs: &self.outputs,
            locate,
            build_uid: self.build_uid,
            candidates: &self.candidates,
            closure,
            scratch: &self.scratch,
            in_place: self.in_place,
        }
    }

    fn with_spec<T>(&self, f: impl FnOnce(&OutputsSpec) -> T) -> T {
        let locate = |p: &StorePath| self.loc(p);
        let closure = |ps: &BTreeSet<StorePath>| -> Result<BTreeSet<StorePath>> {
            let mut all = ps.clone();
            for p in ps {
                all.extend(self.closures.get(p).into_iter().flatten().cloned());
            }
            Ok(all)
        };
        f(&self.spec(&locate, &closure))
    }

    fn process(&self) -> Result<ProcessedOutputs> {
        self.with_spec(process_outputs_kept)
    }

    fn scratch_entries(&self) -> Vec<String> {
        match fs::read_dir(self.scratch.dir()) {
            Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => vec![],
        }
    }

    /// Writes a file of the build (owned by the build user).
    fn file(&self, path: &Path, contents: &[u8], mode: u32) {
        fs::write(path, contents).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        lchown(path, Some(BUILD_UID), Some(BUILD_UID)).unwrap();
    }

    fn dir(&self, path: &Path) {
        fs::create_dir(path).unwrap();
        lchown(path, Some(BUILD_UID), Some(BUILD_UID)).unwrap();
    }

    fn link(&self, target: &str, path: &Path) {
        symlink(target, path).unwrap();
        lchown(path, Some(BUILD_UID), Some(BUILD_UID)).unwrap();
    }

    /// A minimal valid `lib` output.
    fn plain_lib(&self) {
        self.file(&self.loc(&self.out("lib")), b"lib", 0o644);
    }
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn message(r: Result<impl std::fmt::Debug>) -> (Option<FailureKind>, String) {
    let e = r.unwrap_err();
    (e.failure_kind(), e.to_string())
}

#[test]
fn outputs_are_canonicalised_moved_scanned_and_described() {
    let w = World::new();
    let out = w.out("out");
    let o = w.loc(&out);
    w.dir(&o);
    w.dir(&o.join("bin"));
    w.file(&o.join("bin/prog"), b"#!/bin/sh\n", 0o4755);
    // A reference to the input across a boundary of the buffer the NAR dump copies files with
    // (its size divides 64 KiB), so it reaches the scanner in two writes.
    let mut big = vec![b'.'; 150_000];
    let at = 65_536 - 13;
    big[at..at + 32].copy_from_slice(H_IN.as_bytes());
    w.file(&o.join("data"), &big, 0o600);
    // A self-reference only as a symlink target, and `lib` only as an entry name.
    w.link(&format!("{}/bin/prog", w.store.display(&out)), &o.join("self"));
    w.file(&o.join(format!("{H_LIB}-x")), b"", 0o644);
    fs::set_permissions(&o, fs::Permissions::from_mode(0o755)).unwrap();
    w.plain_lib();

    let done = w.process().unwrap();
    let items: Vec<&NewItem> = done.items().collect();
    assert_eq!(items.len(), 2);
    assert_eq!(done.outputs()[0].name, "lib");
    let item = items[1];
    assert_eq!(item.path, out);
    assert_eq!(item.deriver, Some(w.drv_path.clone()));
    assert_eq!(item.references, vec![out.clone(), w.out("lib"), sp(H_IN, "in")]);
    assert_eq!(items[0].references, vec![]);
    let at = done.outputs()[1].scratch_path().to_owned();
    assert_eq!(item.source, ItemSource::Scratch(at.file_name().unwrap().to_str().unwrap().to_owned()));
    assert!(!o.exists(), "moved out of the chroot");
    // Canonical in scratch space, NAR hash of what is there.
    assert_eq!(mode(&at), 0o555);
    assert_eq!(mode(&at.join("bin/prog")), 0o555);
    assert_eq!(mode(&at.join("data")), 0o444);
    for p in [at.clone(), at.join("bin"), at.join("bin/prog"), at.join("data"), at.join("self")] {
        let md = fs::symlink_metadata(&p).unwrap();
        assert_eq!((md.uid(), md.mtime()), (0, 1), "{}", p.display());
    }
    let summary = dump_path(&at, &mut io::sink()).unwrap();
    assert_eq!((item.nar_hash, item.nar_size), (summary.nar_hash, summary.nar_size));

    // Handing over keeps the entries; dropping removes them.
    let names = w.scratch_entries();
    assert_eq!(names.len(), 2);
    assert!(names.iter().all(|n| n.starts_with(&format!("{}-build-", std::process::id()))));
    let items = done.hand_over();
    assert_eq!(w.scratch_entries().len(), 2);
    assert_eq!(items.len(), 2);
}

#[test]
fn dropping_processed_outputs_cleans_scratch_space() {
    let w = World::new();
    w.file(&w.loc(&w.out("out")), b"x", 0o644);
    w.plain_lib();
    let done = w.process().unwrap();
    assert_eq!(w.scratch_entries().len(), 2);
    drop(done);
    assert!(w.scratch_entries().is_empty());
}

#[test]
fn a_missing_output_fails_and_leaves_nothing_in_scratch() {
    let w = World::new();
    // `lib` (first in name order) is fine and already in scratch when `out` is found missing.
    w.plain_lib();
    let (kind, msg) = message(w.process());
    assert_eq!(kind, Some(FailureKind::OutputRejected));
    assert_eq!(
        msg,
        format!(
            "builder for `{}' failed to produce output path `{}'",
            w.store.display(&w.drv_path),
            w.store.display(&w.out("out"))
        )
    );
    assert!(w.scratch_entries().is_empty());
}

#[test]
fn suspicious_permissions_or_owner_are_rejected() {
    let expect = |w: &World| {
        let (kind, msg) = message(w.process());
        assert_eq!(kind, Some(FailureKind::OutputRejected));
        assert_eq!(
            msg,
            format!(
                "suspicious ownership or permission on `{}'; rejecting this build output",
                w.store.display(&w.out("out"))
            )
        );
        assert!(w.scratch_entries().is_empty());
    };
    for bad in [0o664, 0o646] {
        let w = World::new();
        w.plain_lib();
        w.file(&w.loc(&w.out("out")), b"x", bad);
        expect(&w);
    }
    // Not the build user's.
    let w = World::new();
    w.plain_lib();
    w.file(&w.loc(&w.out("out")), b"x", 0o644);
    lchown(w.loc(&w.out("out")), Some(BUILD_UID + 1), None).unwrap();
    expect(&w);
    // Without build users the owner does not matter; a symlink's mode never does.
    let mut w = World::new();
    w.build_uid = None;
    w.plain_lib();
    symlink("/nowhere", w.loc(&w.out("out"))).unwrap();
    lchown(w.loc(&w.out("out")), Some(BUILD_UID + 1), None).unwrap();
    let done = w.process().unwrap();
    assert_eq!(fs::read_link(done.outputs()[1].scratch_path()).unwrap(), Path::new("/nowhere"));
}

#[test]
fn foreign_files_inside_are_refused_but_hard_links_between_outputs_pass() {
    let w = World::new();
    let o = w.loc(&w.out("out"));
    w.dir(&o);
    w.file(&o.join("shadow"), b"root:x", 0o600);
    lchown(o.join("shadow"), Some(0), None).unwrap();
    w.plain_lib();
    let (kind, msg) = message(w.process());
    assert_eq!(kind, Some(FailureKind::OutputRejected));
    assert_eq!(msg, format!("invalid ownership on file `{}'", o.join("shadow").display()));
    assert!(w.scratch_entries().is_empty());

    // `out/shared` is a hard link to `lib`, which is canonicalised first.
    let w = World::new();
    let o = w.loc(&w.out("out"));
    w.dir(&o);
    w.plain_lib();
    fs::hard_link(w.loc(&w.out("lib")), o.join("shared")).unwrap();
    let done = w.process().unwrap();
    assert_eq!(fs::read(done.outputs()[1].scratch_path().join("shared")).unwrap(), b"lib");
}

#[test]
fn fixed_output_flat_accepted_from_a_fresh_copy() {
    let contents = b"source tarball";
    let w = World::fixed("sha256", &HashAlgo::Sha256.digest(contents));
    let o = w.loc(&w.out("out"));
    w.file(&o, contents, 0o644);
    // A descriptor leaked out of the build keeps pointing at the file the build made.
    let mut leaked = fs::OpenOptions::new().write(true).open(&o).unwrap();
    let original_ino = fs::metadata(&o).unwrap().ino();
    let done = w.process().unwrap();
    let at = done.outputs()[0].scratch_path().to_owned();
    assert!(!o.exists());
    assert_ne!(fs::metadata(&at).unwrap().ino(), original_ino, "a copy, not the build's inode");
    leaked.write_all(b"evil").unwrap();
    assert_eq!(fs::read(&at).unwrap(), contents);
    assert_eq!(mode(&at), 0o444);
    let item = &done.outputs()[0].item;
    assert_eq!(item.nar_hash, guix_formats::nar::summary_of_regular(contents, false).nar_hash);
}

#[test]
fn fixed_output_flat_must_be_a_non_executable_file() {
    let w = World::fixed("sha256", &HashAlgo::Sha256.digest(b"x"));
    w.file(&w.loc(&w.out("out")), b"x", 0o755);
    let (kind, msg) = message(w.process());
    assert_eq!(kind, Some(FailureKind::OutputRejected));
    assert_eq!(
        msg,
        format!("output path `{}' should be a non-executable regular file", w.store.display(&w.out("out")))
    );
    assert!(w.scratch_entries().is_empty());
}

#[test]
fn fixed_output_hash_mismatch_says_what_it_got() {
    let announced = HashAlgo::Sha256.digest(b"expected");
    let w = World::fixed("sha256", &announced);
    w.file(&w.loc(&w.out("out")), b"actual", 0o644);
    let e = w.process().unwrap_err();
    assert_eq!(e.failure_kind(), Some(FailureKind::OutputRejected));
    let shown = w.store.display(&w.out("out"));
    assert_eq!(e.to_string(), format!("hash mismatch for store item '{shown}'"));
    let Error::HashMismatch(m) = e else { panic!("{e:?}") };
    assert_eq!(
        m.trace(),
        format!(
            "@ hash-mismatch {shown} sha256 {} {}",
            announced.to_nix_base32(),
            HashAlgo::Sha256.digest(b"actual").to_nix_base32()
        )
    );
    assert!(w.scratch_entries().is_empty());
    // MD5 hashes print in base16.
    let w = World::fixed("md5", &HashAlgo::Md5.digest(b"expected"));
    w.file(&w.loc(&w.out("out")), b"actual", 0o644);
    let Error::HashMismatch(m) = w.process().unwrap_err() else { panic!() };
    assert_eq!(m.actual, HashAlgo::Md5.digest(b"actual").to_base16());
}

#[test]
fn fixed_output_built_in_place_is_copied_afresh_where_it_is() {
    let announced = HashAlgo::Sha256.digest(b"expected");
    let mut w = World::fixed("sha256", &announced);
    w.in_place = true;
    let loc = w.loc(&w.out("out"));
    w.file(&loc, b"actual", 0o644);
    let before = fs::symlink_metadata(&loc).unwrap().ino();
    // A hash mismatch leaves the fresh copy where the build made it (the store, without a
    // chroot), as C++ does.
    let Error::HashMismatch(_) = w.process().unwrap_err() else { panic!() };
    assert_ne!(fs::symlink_metadata(&loc).unwrap().ino(), before);
    assert_eq!(fs::read(&loc).unwrap(), b"actual");
    assert!(w.scratch_entries().is_empty());
    // The right contents go on into scratch space.
    let w2 = {
        let mut w = World::fixed("sha256", &HashAlgo::Sha256.digest(b"actual"));
        w.in_place = true;
        w
    };
    w2.file(&w2.loc(&w2.out("out")), b"actual", 0o644);
    let processed = w2.process().unwrap();
    assert_eq!(processed.outputs().len(), 1);
    assert!(fs::symlink_metadata(w2.loc(&w2.out("out"))).is_err());
}

#[test]
fn fixed_output_recursive_hashes_the_nar() {
    // Build the tree once elsewhere to learn its NAR hash (sha512, not the NAR's sha256).
    let proto = tempfile::tempdir().unwrap();
    let tree = proto.path().join("t");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("a"), b"A").unwrap();
    fs::set_permissions(tree.join("a"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("a", tree.join("l")).unwrap();
    let mut nar = Vec::new();
    dump_path(&tree, &mut nar).unwrap();
    let expected = HashAlgo::Sha512.digest(&nar);

    let make = |w: &World| {
        let o = w.loc(&w.out("out"));
        w.dir(&o);
        w.file(&o.join("a"), b"A", 0o755);
        w.link("a", &o.join("l"));
    };
    let w = World::fixed("r:sha512", &expected);
    make(&w);
    let done = w.process().unwrap();
    assert_eq!(done.outputs()[0].item.nar_hash, HashAlgo::Sha256.digest(&nar));
    assert!(!w.loc(&w.out("out")).exists());

    let w = World::fixed("r:sha512", &HashAlgo::Sha512.digest(b"other"));
    make(&w);
    let Error::HashMismatch(m) = w.process().unwrap_err() else { panic!() };
    assert_eq!(m.algo, "r:sha512");
    assert_eq!(m.actual, expected.to_nix_base32());
    assert!(w.scratch_entries().is_empty());
}

/// `out` refers to itself, to `lib` and to `in` (whose closure holds `dep`). `{in}` and `{dep}`
/// in `value` stand for those store paths.
fn referring_world(attr: &str, value: &str) -> World {
    let mut w = World::new();
    let value =
        value.replace("{in}", &w.store.display(&sp(H_IN, "in"))).replace("{dep}", &w.store.display(&sp(H_DEP, "dep")));
    w.drv.env.insert(attr.as_bytes().to_vec(), value.into_bytes());
    let refs = format!("{} {} {}", w.store.display(&w.out("out")), w.store.display(&w.out("lib")), H_IN);
    w.file(&w.loc(&w.out("out")), refs.as_bytes(), 0o644);
    w.plain_lib();
    w
}

#[test]
fn reference_constraints() {
    let not_allowed = |w: &World, q: &StorePath| {
        format!(
            "output (`{}') is not allowed to refer to path `{}'",
            w.store.display(&w.out("out")),
            w.store.display(q)
        )
    };
    let in_ = sp(H_IN, "in");
    let dep = sp(H_DEP, "dep");

    // Output names and store paths, any whitespace.
    let w = referring_world("allowedReferences", "out\tlib");
    assert_eq!(message(w.process()), (Some(FailureKind::OutputRejected), not_allowed(&w, &in_)));
    let w = referring_world("allowedReferences", "out lib\n{in}");
    w.process().unwrap();

    // Requisites: the closure of the references other than the output itself.
    let w = referring_world("allowedRequisites", "lib {in}");
    assert_eq!(message(w.process()).1, not_allowed(&w, &dep));
    let w = referring_world("allowedRequisites", "lib {in}  {dep}");
    w.process().unwrap();

    let w = referring_world("disallowedReferences", "lib");
    assert_eq!(message(w.process()).1, not_allowed(&w, &w.out("lib")));
    let w = referring_world("disallowedReferences", "{dep}");
    w.process().unwrap();
    let w = referring_world("disallowedRequisites", "{dep}");
    assert_eq!(message(w.process()).1, not_allowed(&w, &dep));
    assert!(w.scratch_entries().is_empty());

    let w = referring_world("allowedReferences", "out nonsense");
    assert_eq!(
        message(w.process()),
        (Some(FailureKind::OutputRejected), "derivation contains an invalid reference specifier `nonsense'".into())
    );
}

#[test]
fn check_mode_compares_with_the_valid_hashes() {
    let w = World::new();
    w.file(&w.loc(&w.out("out")), b"rebuilt", 0o644);
    w.plain_lib();
    let out_hash = guix_formats::nar::summary_of_regular(b"rebuilt", false).nar_hash;
    let lib_hash = guix_formats::nar::summary_of_regular(b"lib", false).nar_hash;
    let valid: BTreeMap<StorePath, Hash> = [(w.out("out"), out_hash), (w.out("lib"), lib_hash)].into_iter().collect();
    let checked = w.with_spec(|s| check_outputs(s, &valid, true)).unwrap();
    assert_eq!(checked.len(), 2);
    assert!(w.loc(&w.out("out")).exists(), "left where it was built");
    assert!(w.scratch_entries().is_empty());

    let w = World::new();
    w.file(&w.loc(&w.out("out")), b"different", 0o644);
    w.plain_lib();
    let d = w.store.display(&w.drv_path);
    let p = w.store.display(&w.out("out"));
    let (kind, msg) = message(w.with_spec(|s| check_outputs(s, &valid, false)));
    assert_eq!(kind, Some(FailureKind::NotDeterministic));
    assert_eq!(msg, format!("derivation `{d}' may not be deterministic: output `{p}' differs"));
    assert!(!Path::new(&format!("{p}-check")).exists());

    // Keeping it: `P-check` in the store, replacing an old one (after a new build).
    fs::write(format!("{p}-check"), b"stale").unwrap();
    fs::remove_file(w.loc(&w.out("out"))).unwrap();
    fs::remove_file(w.loc(&w.out("lib"))).unwrap();
    w.file(&w.loc(&w.out("out")), b"different", 0o644);
    w.plain_lib();
    let msg = message(w.with_spec(|s| check_outputs(s, &valid, true))).1;
    assert_eq!(msg, format!("derivation `{d}' may not be deterministic: output `{p}' differs from `{p}-check'"));
    assert_eq!(fs::read(format!("{p}-check")).unwrap(), b"different");
    assert!(!w.loc(&w.out("out")).exists());

    // Outputs that are not valid are not compared.
    let w = World::new();
    w.file(&w.loc(&w.out("out")), b"whatever", 0o644);
    w.plain_lib();
    let only_lib: BTreeMap<StorePath, Hash> = [(w.out("lib"), lib_hash)].into_iter().collect();
    assert_eq!(w.with_spec(|s| check_outputs(s, &only_lib, false)).unwrap().len(), 1);
}

#[test]
fn rounds_compare_with_the_previous_round() {
    let round = |w: &World, contents: &[u8]| {
        w.file(&w.loc(&w.out("out")), contents, 0o644);
        w.plain_lib();
        w.process().unwrap()
    };
    let w = World::new();
    let p = w.store.display(&w.out("out"));
    let d = w.store.display(&w.drv_path);
    let first = round(&w, b"same");
    let second = round(&w, b"same");
    fs::write(format!("{p}-check"), b"old").unwrap();
    compare_rounds(&w.store, &w.drv_path, &w.drv, first, &second, true).unwrap();
    assert!(!Path::new(&format!("{p}-check")).exists(), "keep-failed removes P-check on success");
    assert_eq!(w.scratch_entries().len(), 2, "only the new round is left");

    let third = round(&w, b"other");
    let (kind, msg) = message(compare_rounds(&w.store, &w.drv_path, &w.drv, second, &third, false));
    assert_eq!(kind, Some(FailureKind::NotDeterministic));
    assert_eq!(msg, format!("output `{p}' of `{d}' differs from previous round"));
    assert_eq!(w.scratch_entries().len(), 2);

    let fourth = round(&w, b"yet another");
    let msg = message(compare_rounds(&w.store, &w.drv_path, &w.drv, third, &fourth, true)).1;
    assert_eq!(msg, format!("output `{p}' of `{d}' differs from `{p}-check' from previous round"));
    assert_eq!(fs::read(format!("{p}-check")).unwrap(), b"other", "the previous round is kept");
    assert!(Path::new(&format!("{}-check", w.store.display(&w.out("lib")))).exists());
    drop(fourth);
    assert!(w.scratch_entries().is_empty());
}

#[test]
fn directories_move_with_their_canonical_mode() {
    let w = World::new();
    let o = w.loc(&w.out("out"));
    w.dir(&o);
    w.dir(&o.join("d"));
    w.file(&o.join("d/f"), b"f", 0o644);
    w.plain_lib();
    let done = w.process().unwrap();
    let at = done.outputs()[1].scratch_path();
    assert_eq!(mode(at), 0o555);
    assert_eq!(mode(&at.join("d")), 0o555);
    assert_eq!(w.store_path.join(".rs-scratch"), at.parent().unwrap());
}

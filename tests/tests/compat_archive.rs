//! `guix archive --export` and `--import` with the real client, against the C++ daemon and ours
//! in parallel sessions.
//!
//! 1. In a first session of each daemon: text items (one referring to another) and a directory
//!    tree are added, then exported (signed: both sessions use the rootfs's signing key, and
//!    Ed25519 signatures are deterministic, so the exported bytes must be identical), also
//!    recursively, one item alone, and unsigned (`export-paths #:sign? #f`, which the CLI never
//!    does).
//! 2. A tampered copy is made (one byte of a file's contents flipped).
//! 3. In a fresh session of each daemon, the unsigned, tampered and incomplete archives are
//!    imported (each must be refused with the same message by both), then the good archive, and
//!    the imported items are queried, re-exported and verified.
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode in this test's target
//! directory (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

mod common;

use common::{assert_same, get, on_both, put, repl, sh, start};

const SETUP: &str = r##"
(use-modules (guix store))
(define (spit file text) (call-with-output-file file (lambda (p) (display text p))))
(define dir "/tmp/archive-in")
(system* "rm" "-rf" dir)
(mkdir dir) (mkdir (string-append dir "/sub"))
(spit (string-append dir "/a.txt") "file a\n")
(spit (string-append dir "/sub/b.txt") "file b\n")
(spit (string-append dir "/run.sh") "#!/bin/sh\necho hi\n")
(chmod (string-append dir "/run.sh") #o755)
(spit (string-append dir "/big") (make-string 150001 #\z))
(symlink "a.txt" (string-append dir "/link-to-a"))
(with-store store
  (let* ((a (add-text-to-store store "a.txt" "hello compat\n"))
         (b (add-text-to-store store "b.txt" (string-append "I refer to " a "\n") (list a)))
         (tree (add-to-store store "tree" #t "sha256" dir)))
    (call-with-output-file "/tmp/unsigned.nar"
      (lambda (port) (export-paths store (list a) port #:sign? #f)))
    (format #t "a=~a~%b=~a~%tree=~a~%" a b tree)))
"##;

/// ExportPath's "exporting path" message is at the C++ daemon's `lvlInfo`: the CLI (verbosity 0
/// in SetOptions) never shows it, a client asking for verbosity 1 does.
const VERBOSE_EXPORT: &str = r##"
(use-modules (guix store))
(with-store store
  (set-build-options store #:verbosity 1)
  (export-paths store (cdr (command-line)) (%make-void-port "w")))
"##;

const EXPORT: &str = r##"
set -u; . /tmp/items.env
echo "== export at verbosity 1"; guix repl /tmp/verbose-export.scm $a $b; echo "status: $?"
echo "== export"; guix archive --export $a $b $tree > /tmp/export.nar; echo "status: $?"
echo "== export -r"; guix archive --export -r $b > /tmp/export-r.nar; echo "status: $?"
echo "== export b alone"; guix archive --export $b > /tmp/b-only.nar; echo "status: $?"
echo "== export missing"; guix archive --export /gnu/store/00000000000000000000000000000000-missing > /tmp/x.nar; echo "status: $?"
for f in export export-r b-only unsigned; do
  echo "$f: $(wc -c < /tmp/$f.nar) bytes, sha256 $(sha256sum < /tmp/$f.nar | cut -d' ' -f1)"
done
"##;

const INFO: &str = r##"
(use-modules (guix store) (guix base16))
(with-store store
  (for-each (lambda (p)
              (let ((i (query-path-info store p)))
                (format #t "~a: ~s~%" p
                        (list (path-info-deriver i)
                              (bytevector->base16-string (path-info-hash i))
                              (path-info-references i)
                              (path-info-nar-size i)))))
            (cdr (command-line))))
"##;

const IMPORT: &str = r##"
set -u; . /tmp/items.env
imp() { echo "== import $1"; guix archive --import < /tmp/$1.nar; echo "status: $?"; }
imp unsigned
imp tampered
imp b-only
echo "== nothing registered"; guix gc --references $a; guix gc --references $b; echo "status: $?"
imp export
echo "== queries"
guix gc --references $b; guix gc --referrers $a; guix gc --requisites $b $tree
guix repl /tmp/info.scm $a $b $tree
echo "== files"
cat $a $b; (cd $tree && find . | sort | while read f; do stat -c '%n %F %a %s %Y' "$f"; done)
readlink $tree/link-to-a
echo "== re-export"; guix archive --export $a $b $tree | cmp - /tmp/export.nar; echo "status: $?"
imp export
imp export-r
echo "== verify"; guix gc --verify=contents; echo "status: $?"
"##;

/// Flips one byte of the contents of item `a` inside the archive.
fn tamper(archive: &[u8]) -> Vec<u8> {
    let needle = b"hello compat";
    let at = archive
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("the export does not contain the contents of item a"));
    let mut out = archive.to_vec();
    out[at] ^= 0x20; // "hello" → "Hello"
    out
}

#[test]
fn archive_export_and_import_match_cxx() {
    let (cxx, ours) = on_both(|rig, d| {
        // First store: add and export.
        let s = start(rig, d);
        let items = repl(&s, d, SETUP);
        put(&s, "items.env", &items);
        put(&s, "verbose-export.scm", VERBOSE_EXPORT);
        let export = sh(&s, EXPORT);
        let files: Vec<(&str, Vec<u8>)> = ["export", "export-r", "b-only", "unsigned"]
            .into_iter()
            .map(|f| (f, get(&s, &format!("{f}.nar"))))
            .collect();
        drop(s);
        // Fresh store: import.
        let s = start(rig, d);
        put(&s, "items.env", &items);
        put(&s, "info.scm", INFO);
        for (name, bytes) in &files {
            put(&s, &format!("{name}.nar"), bytes);
        }
        put(&s, "tampered.nar", tamper(&files[0].1));
        let import = sh(&s, IMPORT);
        (format!("{export}\n{import}"), files)
    });
    assert!(cxx.0.contains("signed hash doesn't match"), "{}", cxx.0);
    assert!(cxx.0.contains("verbosity 1\nexporting path `"), "{}", cxx.0);
    assert_same("guix archive", &cxx.0, &ours.0);
    for ((name, c), (_, o)) in cxx.1.iter().zip(&ours.1) {
        assert!(c == o, "{name}.nar differs between the C++ daemon and ours");
    }
}

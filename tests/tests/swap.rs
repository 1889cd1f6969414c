//! Swap: one store and one `/var/guix` served in turn by the C++ daemon and by ours. Paths added
//! under one daemon must be served identically by the other (validity, path-info, references,
//! referrers, derivers, derivation outputs, readable contents), and after every swap the
//! database passes `PRAGMA integrity_check` (opened read-only from the host while the daemon
//! runs: WAL gives a consistent snapshot) and `guix gc --verify=contents` succeeds.
//!
//! Two chains run in parallel sessions: C++ → ours → C++ (ours adopts a C++ database) and
//! ours → C++ → ours (ours creates the database, C++ adopts it, ours takes it back).
//!
//! Needs root, `scripts/rig setup`, and the workspace binaries built in this test's target
//! directory (`cargo build --release --workspace`, then `cargo test --release`).

use std::collections::{BTreeMap, BTreeSet};

use guix_tests::store_check::{check_store, integrity_check};
use guix_tests::{ours_kind, DaemonKind, Rig, Session};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Cxx,
    Ours,
}

fn kind(which: Which) -> DaemonKind {
    match which {
        Which::Cxx => DaemonKind::Cxx,
        Which::Ours => ours_kind(&[]).0,
    }
}

/// Adds, under tag `TAG`: a text, a text referring to it and to `PREV` (paths added under an
/// earlier daemon), a directory tree (file, executable, symlink, subdirectory), a text with
/// the empty name, and a
/// two-output derivation whose inputs are the builder text and the tree; then builds (in a
/// chroot, with the rig's static busybox) a derivation whose inputs are `BUILT`, the outputs
/// built under earlier daemons (used, not built again: their descriptions, registration time
/// included, must not change), and whose output refers to them. Prints the paths.
const ADD: &str = r##"
(use-modules (guix store) (guix derivations))
(define tag "TAG")
(define prev '(PREV))
(define (write-file name text)
  (call-with-output-file name (lambda (p) (display text p))))
(define (make-tree dir)
  (mkdir dir)
  (write-file (string-append dir "/file") (string-append "file of " tag "\n"))
  (mkdir (string-append dir "/sub"))
  (write-file (string-append dir "/sub/exe") "#!/bin/sh\necho hi\n")
  (chmod (string-append dir "/sub/exe") #o755)
  (symlink "../file" (string-append dir "/sub/link")))
(define built '(BUILT))
(define bbsrc (string-append "/tmp/swap-busybox-" tag))
(mkdir bbsrc) (mkdir (string-append bbsrc "/bin"))
(copy-file "/bin/busybox" (string-append bbsrc "/bin/busybox"))
(chmod (string-append bbsrc "/bin/busybox") #o555)
(with-store store
  (let* ((dir (string-append "/tmp/swap-tree-" tag))
         (_ (make-tree dir))
         (a (add-text-to-store store (string-append "swap-a-" tag) (string-append "hello " tag "\n")))
         (b (add-text-to-store store (string-append "swap-b-" tag)
                               (string-append "refers to " a "\n")
                               (cons a prev)))
         (d (add-to-store store (string-append "swap-tree-" tag) #t "sha256" dir))
         ;; The empty name, which the C++ daemon accepts: `/gnu/store/<hash>-'.
         (no-name (add-text-to-store store "" (string-append "no name " tag "\n")))
         (builder (add-text-to-store store (string-append "swap-builder-" tag ".sh") "echo hi > $out\n"))
         (drv (derivation store (string-append "swap-thing-" tag) "/bin/sh" (list builder)
                          #:sources (list builder d)
                          #:outputs '("out" "dev")))
         (bbdir (add-to-store store "busybox-static" #t "sha256" bbsrc))
         (bb (string-append bbdir "/bin/busybox"))
         (step (derivation store (string-append "swap-built-" tag) bb
                           (list "sh" "-c"
                                 (string-append "for i in " (string-join built " ") "; do "
                                                bb " cat $i >> $out; done; echo " tag " $in >> $out"))
                           #:sources (cons* bbdir a built)
                           #:env-vars `(("in" . ,a))))
         (step-out (derivation->output-path step)))
    (build-derivations store (list step))
    (for-each (lambda (p) (display p) (newline))
              (list a b d no-name builder (derivation-file-name drv) bbdir (derivation-file-name step) step-out))))
"##;

/// For each of `PATHS`, everything the daemon says about it plus its contents as read in the
/// chroot, one line per path.
const DESCRIBE: &str = r#"
(use-modules (guix store) (ice-9 ftw) (ice-9 textual-ports) (srfi srfi-1))
(define (contents p)
  (let ((st (lstat p)))
    (case (stat:type st)
      ((regular) (list 'file (stat:perms st) (call-with-input-file p get-string-all)))
      ((symlink) (list 'link (readlink p)))
      ((directory)
       (cons 'dir (map (lambda (n) (list n (contents (string-append p "/" n))))
                       (scandir p (lambda (n) (not (member n '("." ".."))))))))
      (else (list 'other (stat:type st))))))
(define (sorted l) (sort l string<?))
(with-store store
  (for-each
   (lambda (p)
     (let ((info (query-path-info store p)))
       (write (list p
                    (valid-path? store p)
                    (path-info-deriver info)
                    (path-info-hash info)
                    (sorted (path-info-references info))
                    (path-info-registration-time info)
                    (path-info-nar-size info)
                    (sorted (references store p))
                    (sorted (referrers store p))
                    (sorted (valid-derivers store p))
                    (if (string-suffix? ".drv" p)
                        (sorted (query-derivation-outputs store p))
                        '())
                    ;; Not `store-path-hash-part': the client's regexp wants a name.
                    (hash-part->path store (substring (basename p) 0 32))
                    (contents p)))
       (newline)))
   '(PATHS)))
"#;

fn scheme_list(paths: &[String]) -> String {
    paths.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(" ")
}

fn add(s: &Session, tag: &str, prev: &[String], built: &[String]) -> Vec<String> {
    let script = ADD.replace("TAG", tag).replace("PREV", &scheme_list(prev)).replace("BUILT", &scheme_list(built));
    let out = s.repl_ok(&script).unwrap_or_else(|e| panic!("adding {tag}: {e}"));
    let paths: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(paths.len(), 9, "{out}");
    paths
}

/// path → its description line.
fn describe(s: &Session, paths: &[String]) -> BTreeMap<String, String> {
    let out = s.repl_ok(&DESCRIBE.replace("PATHS", &scheme_list(paths))).unwrap_or_else(|e| panic!("describing: {e}"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), paths.len(), "{out}");
    paths.iter().cloned().zip(lines.iter().map(|l| l.to_string())).collect()
}

/// The checks run after every swap (and at the start): database integrity, every valid path's
/// files matching the database, and `guix gc --verify=contents`.
fn check_after_swap(s: &Session, step: &str, expect_valid: &[String]) {
    let db = s.var_guix_on_host().join("db").join("db.sqlite");
    integrity_check(&db).unwrap_or_else(|e| panic!("{step}: {e}"));
    let valid =
        check_store(&db, "/gnu/store", &s.store_dir_on_host()).unwrap_or_else(|e| panic!("{step}: store check:\n{e}"));
    for p in expect_valid {
        assert!(valid.contains_key(p), "{step}: {p} is not in ValidPaths");
    }
    let out = s.exec_guix(&["gc", "--verify=contents"]).unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{step}: guix gc --verify=contents failed ({}):\n{stderr}\n--- daemon.log ---\n{}",
        out.status,
        s.daemon_log()
    );
    assert!(
        !stderr.contains("modified") && !stderr.contains("disappeared") && !stderr.contains("error"),
        "{step}: guix gc --verify=contents complained:\n{stderr}"
    );
}

/// Runs the chain `daemons` on one session: under each daemon, checks every earlier path is
/// described exactly as under the daemon that came before, then adds paths of its own.
fn chain(daemons: &[Which]) {
    let rig = Rig::discover().unwrap_or_else(|e| panic!("{e}"));
    let first = daemons[0];
    // Our binaries are bind-mounted when the session starts, whichever daemon runs first.
    let (_, opts) = ours_kind(&[]);
    let mut s = Session::start_with(&rig, kind(first), &opts).unwrap_or_else(|e| panic!("{e}"));

    let mut all: Vec<String> = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (i, &which) in daemons.iter().enumerate() {
        let step = format!("step {i} ({which:?})");
        if i > 0 {
            s.restart_daemon(kind(which)).unwrap_or_else(|e| panic!("{step}: swapping: {e}"));
            // (Before the first addition there may be no database yet: the C++ daemon creates
            // it when the first client connects.)
            check_after_swap(&s, &step, &all);
        }
        if !all.is_empty() {
            let now = describe(&s, &all);
            for p in &all {
                assert_eq!(
                    now.get(p),
                    seen.get(p),
                    "{step}: {p} is described differently than under the previous daemon\n--- daemon.log ---\n{}",
                    s.daemon_log()
                );
            }
        }
        // Link the new items to the previous step's text items.
        let prev: Vec<String> = all.iter().filter(|p| p.contains("-swap-a-")).cloned().collect();
        // And build on the outputs built under the earlier daemons.
        let built: Vec<String> =
            all.iter().filter(|p| p.contains("-swap-built-") && !p.ends_with(".drv")).cloned().collect();
        let new = add(&s, &format!("{i}{which:?}"), &prev, &built);
        all.extend(new);
        seen = describe(&s, &all);
        check_after_swap(&s, &format!("{step} after adding"), &all);
    }
    // A last look by the last daemon at everything, including referrers created meanwhile.
    assert_eq!(describe(&s, &all), seen);
    s.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn cxx_then_ours_then_cxx() {
    chain(&[Which::Cxx, Which::Ours, Which::Cxx]);
}

#[test]
fn ours_then_cxx_then_ours() {
    chain(&[Which::Ours, Which::Cxx, Which::Ours]);
}

/// Whatever our daemon leaves in the store must not trouble the C++ daemon: after a clean stop
/// of ours, the C++ GC sees exactly the items added as garbage (not our scratch directory),
/// collects them, and ours then works on the collected store.
#[test]
fn cxx_gc_after_ours() {
    let rig = Rig::discover().unwrap_or_else(|e| panic!("{e}"));
    let (ours, opts) = ours_kind(&[]);
    let mut s = Session::start_with(&rig, ours.clone(), &opts).unwrap_or_else(|e| panic!("{e}"));
    let paths: BTreeSet<String> = add(&s, "gc", &[], &[]).into_iter().collect();
    s.restart_daemon(DaemonKind::Cxx).unwrap_or_else(|e| panic!("{e}"));
    let out = s.exec_guix(&["gc", "--list-dead"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dead: BTreeSet<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(dead, paths, "the C++ GC's dead paths after our daemon ran");

    let out = s.exec_guix(&["gc"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "guix gc: {}", String::from_utf8_lossy(&out.stderr));
    check_after_swap(&s, "after the C++ GC", &[]);

    s.restart_daemon(ours).unwrap_or_else(|e| panic!("{e}"));
    let again = add(&s, "gc2", &[], &[]);
    check_after_swap(&s, "ours after the C++ GC", &again);
    s.stop().unwrap_or_else(|e| panic!("{e}"));
}

//! End-to-end: OUR daemon (supervisor + store-db + socket-front) against the real Guix client,
//! each script also run against the C++ daemon in a parallel session, outputs compared.
//!
//! Needs root, `scripts/rig setup`, and the workspace binaries built in the same target
//! directory as this test (`cargo build -p guix-supervisor -p guix-store-db -p guix-socket-front`).

use std::thread;

use guix_tests::{DaemonKind, Rig, Session};

fn ours(rig: &Rig) -> Session {
    guix_tests::start_ours(rig).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `script` against both daemons in parallel; returns (C++ output, our output).
fn both(script: &'static str) -> (String, String) {
    let rig = Rig::discover().unwrap_or_else(|e| panic!("{e}"));
    let r2 = rig.clone();
    let cxx = thread::spawn(move || {
        let s = r2.start(DaemonKind::Cxx).unwrap_or_else(|e| panic!("{e}"));
        s.repl_ok(script).unwrap_or_else(|e| panic!("C++: {e}"))
    });
    let s = ours(&rig);
    let mine = s.repl_ok(script).unwrap_or_else(|e| panic!("ours: {e}\n{}", s.daemon_log()));
    (cxx.join().expect("C++ session"), mine)
}

const ADD_TEXT_AND_QUERIES: &str = r#"
(use-modules (guix store) (srfi srfi-34))
(with-store store
  (let* ((a (add-text-to-store store "a.txt" "hello\n"))
         (b (add-text-to-store store "b.txt" "refers" (list a)))
         (d (add-to-store store "dir" #t "sha256" "/etc/guix")))
    (write (list a b
                 (valid-path? store a)
                 (valid-path? store "/gnu/store/x")
                 (references store b)
                 (referrers store a)
                 (valid-derivers store a)
                 (path-info-hash (query-path-info store b))
                 (path-info-nar-size (query-path-info store b))
                 (guard (c ((store-protocol-error? c) (store-protocol-error-message c)))
                   (query-path-info store "/gnu/store/00000000000000000000000000000000-none"))
                 (hash-part->path store (store-path-hash-part a))
                 (substitute-urls store)
                 (built-in-builders store)))
    (newline)))
"#;

#[test]
fn add_text_and_queries_match_cxx() {
    let (cxx, mine) = both(ADD_TEXT_AND_QUERIES);
    assert_eq!(mine, cxx);
}

const DERIVATION: &str = r#"
(use-modules (guix store) (guix derivations))
(with-store store
  (let* ((builder (add-text-to-store store "builder.sh" "echo hi > $out"))
         (drv (derivation store "thing" "/bin/sh" (list builder)
                          #:sources (list builder)
                          #:outputs '("out" "dev"))))
    (write (list (derivation-file-name drv)
                 (derivation->output-paths drv)
                 (valid-derivers store (derivation->output-path drv "out"))
                 (references store (derivation-file-name drv))))
    (newline)))
"#;

#[test]
fn derivation_creation_matches_cxx() {
    let (cxx, mine) = both(DERIVATION);
    assert_eq!(mine, cxx);
}

//! `guix build --check` and `--rounds` with the real `guix` client, the C++ daemon and ours in
//! parallel sessions on fresh stores (derivations of `builds/prelude.scm`; the nondeterministic
//! ones write a fresh `/proc/sys/kernel/random/uuid`).
//!
//! * `check_matches_cxx`: `--check` of a derivation not built yet, of a deterministic one
//!   (passes), of a nondeterministic one without and with `-K` (the message names the kept
//!   `-check` output), what is left (kept build directories, `-check` items in the store) and
//!   what is valid; the same through `build-derivations` with `(build-mode check)` in
//!   `guix repl` (the daemon's status and traces).
//! * `rounds_match_cxx`: `--rounds=2` of a deterministic derivation (passes) and of a
//!   nondeterministic one without and with `-K`, likewise.
//!
//! Normalised: the builder's PID in `@ build-started`. The nondeterministic outputs' hashes
//! and contents are never printed (they are random); only their validity, names and modes.
//! Left out of store listings: `.lock` files (our daemon takes no C++ path locks), `.links`
//! (deduplication) and our `.rs-scratch`.
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode in this test's target
//! directory (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

mod builds;
mod common;

use builds::{assert_all_same, assert_cxx_has, normalise_pids, on_both, repl, session, sh};

/// Shell functions: `list PATH…` (every file under them: mode, owner, name; or `absent`) and
/// `store` (the
/// store's entries but lock files, `.links` and `.rs-scratch`).
const LISTS: &str = r##"
list() {
  for p in "$@"; do
    if [ -e "$p" ]; then find "$p" | sort | while read -r f; do stat -c '%A %U %G %N' "$f"; done
    else echo "absent: $p"; fi
  done
}
store() { echo "== store"; ls -a /gnu/store | grep -v -e '\.lock$' -e '^\.links$' -e '^\.rs-scratch$'; }
"##;

const CHECK_SH: &str = r##"
b --check $det
b $det
b --check $det
b $nondet_check
b --check $nondet_check
b $nondet_check_k
b --check -K $nondet_check_k
echo "== kept"; list /tmp/guix-build-*
echo "== -check items"; list $nondet_check_out-check $nondet_check_k_out-check
store
"##;

/// Validity of each output of the derivations and of its `-check` sibling, and the valid
/// deriver of each valid one (hashes are not printed: the outputs are random).
const VALIDITY: &str = r##"
(define (validity store drvs)
  (for-each
   (lambda (drv)
     (for-each
      (match-lambda
        ((name . o)
         (for-each (lambda (p)
                     (format #t "~a: ~a~%" p
                             (if (valid-path? store p)
                                 (list 'valid (path-info-deriver (query-path-info store p)))
                                 'not-valid)))
                   (let ((p (derivation-output-path o))) (list p (string-append p "-check"))))))
      (derivation-outputs drv)))
   drvs))
"##;

const CHECK_REPL: &str = r##"
(define fresh (nondet "nondet-check-repl"))
(try-build "check before building" (list fresh) #:mode (build-mode check))
(try-build "build" (list fresh))
(try-build "check, deterministic" (list det) #:mode (build-mode check))
(try-build "check, nondeterministic" (list fresh) #:mode (build-mode check))
(try-build "check, nondeterministic, keep-failed" (list fresh) #:mode (build-mode check)
           #:options '(#:keep-failed? #t))
(with-store store (validity store (list det nondet-check nondet-check-k fresh)))
"##;

#[test]
fn check_matches_cxx() {
    let (cxx, ours) = on_both("--check", |rig, d| {
        let s = session(rig, d, &[]);
        (sh(&s, &format!("{LISTS}{CHECK_SH}")), normalise_pids(&repl(&s, &format!("{VALIDITY}{CHECK_REPL}"))))
    });
    assert_cxx_has(
        "--check (guix build)",
        &cxx.0,
        &[
            "may not be deterministic: output `/gnu/store/",
            "-nondet-check' differs\n",
            "-nondet-check-k' differs from `/gnu/store/",
            "note: keeping build directory `/tmp/guix-build-nondet-check-k.drv-0'",
        ],
    );
    assert_cxx_has("--check (guix repl)", &cxx.1, &["@ build-succeeded /gnu/store/", "-nondet-check-repl' differs"]);
    assert_all_same(&[("--check (guix build)", &cxx.0, &ours.0), ("--check (guix repl)", &cxx.1, &ours.1)]);
}

const ROUNDS_SH: &str = r##"
b --rounds=2 $det_rounds
b --rounds=2 $nondet_rounds
b --rounds=2 -K $nondet_rounds_k
echo "== kept"; list /tmp/guix-build-*
echo "== -check items"; list $nondet_rounds_out-check $nondet_rounds_k_out-check
echo "== outputs"; list $nondet_rounds_out $nondet_rounds_k_out
store
"##;

const ROUNDS_REPL: &str = r##"
(define fresh (nondet "nondet-rounds-repl"))
(define fresh-k (nondet "nondet-rounds-repl-k"))
(define fresh-det (mk "det-rounds-repl" "echo deterministic > $out"))
(try-build "rounds 3, deterministic" (list fresh-det) #:options '(#:rounds 3))
(try-build "rounds 2, nondeterministic" (list fresh) #:options '(#:rounds 2))
(try-build "rounds 2, nondeterministic, keep-failed" (list fresh-k)
           #:options '(#:rounds 2 #:keep-failed? #t))
(try-build "rounds 2, fixed-output (one round)" (list fod-flat) #:options '(#:rounds 2))
(with-store store
  (validity store (list det-rounds nondet-rounds nondet-rounds-k fresh fresh-k fresh-det fod-flat)))
"##;

#[test]
fn rounds_match_cxx() {
    let (cxx, ours) = on_both("--rounds", |rig, d| {
        let s = session(rig, d, &[]);
        (sh(&s, &format!("{LISTS}{ROUNDS_SH}")), normalise_pids(&repl(&s, &format!("{VALIDITY}{ROUNDS_REPL}"))))
    });
    assert_cxx_has(
        "--rounds (guix build)",
        &cxx.0,
        &["-nondet-rounds.drv' differs from previous round\n", "-nondet-rounds-k-check' from previous round\n"],
    );
    assert_cxx_has("--rounds (guix repl)", &cxx.1, &["differs from previous round", "->: #t"]);
    assert_all_same(&[("--rounds (guix build)", &cxx.0, &ours.0), ("--rounds (guix repl)", &cxx.1, &ours.1)]);
}

//! `guix repl` scripts using the store RPCs directly (add-to-store flat and recursive with every
//! hash algorithm, add-text-to-store with references, query-path-info, valid-path?, and the
//! guix-ref examples a/b/c), run against the C++ daemon and ours in parallel sessions; the
//! printed answers must be identical.
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode in this test's target
//! directory (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

mod common;

use common::{assert_same, on_both, repl, start};

/// Prints one line per answer. Registration times differ between two runs (they are the clock
/// at registration), so only their plausibility is printed: within a day of the script's clock.
const PRELUDE: &str = r##"
(use-modules (guix store) (guix base16) (guix base32) (srfi srfi-1) (srfi srfi-34)
             (ice-9 format))
(define (spit file text) (call-with-output-file file (lambda (p) (display text p))))
(define (show label value) (format #t "~a: ~s~%" label value))
(define (show-info store p)
  (let ((i (query-path-info store p)))
    (show (string-append "  info " (basename p))
          (list (path-info-deriver i)
                (bytevector->base16-string (path-info-hash i))
                (bytevector->nix-base32-string (path-info-hash i))
                (sort (path-info-references i) string<?)
                (path-info-nar-size i)
                (< (abs (- (path-info-registration-time i) (current-time))) 86400)))))
;; Runs THUNK on a fresh connection; prints its value or the daemon's error message (a fresh
;; connection each time, so an error that closes the connection cannot hide later answers).
(define-syntax-rule (try label store body ...)
  (show label
        (guard (c ((store-protocol-error? c)
                   (list 'error (store-protocol-error-message c) (store-protocol-error-status c)))
                  ((store-connection-error? c) (list 'connection-error)))
          (with-store store body ...))))
"##;

const ADD_TO_STORE: &str = r##"
(define dir "/tmp/compat-in")
(system* "rm" "-rf" dir)
(mkdir dir) (mkdir (string-append dir "/tree")) (mkdir (string-append dir "/tree/sub"))
(spit (string-append dir "/flat.txt") "a flat file\n")
(spit (string-append dir "/tree/a.txt") "file a\n")
(spit (string-append dir "/tree/sub/b.txt") "file b\n")
(spit (string-append dir "/tree/empty") "")
(spit (string-append dir "/tree/run.sh") "#!/bin/sh\necho hi\n")
(chmod (string-append dir "/tree/run.sh") #o755)
(spit (string-append dir "/flat-exec.sh") "#!/bin/sh\necho flat\n")
(chmod (string-append dir "/flat-exec.sh") #o755)
(symlink "a.txt" (string-append dir "/tree/link-to-a"))
(symlink "/nowhere" (string-append dir "/tree/dangling"))
(with-store store
  (set-build-options store #:use-substitutes? #f)
  (for-each
   (lambda (algo)
     (for-each
      (lambda (recursive? source)
        (let* ((name (format #f "~a-~a" algo (if recursive? "rec" "flat")))
               (p (add-to-store store name recursive? algo (string-append dir "/" source))))
          (show (format #f "add-to-store ~a ~a ~a" algo recursive? source) p)
          (show "  valid-path?" (valid-path? store p))
          (show-info store p)
          ;; Adding the same thing again gives the same path.
          (show "  again" (equal? p (add-to-store store name recursive? algo
                                                  (string-append dir "/" source))))))
      '(#f #t #t #f #t)
      '("flat.txt" "flat.txt" "tree" "flat-exec.sh" "flat-exec.sh")))
   '("md5" "sha1" "sha256" "sha512")))
;; A flat add keeps only the contents: the C++ daemon stores a non-executable file.
(with-store store
  (let ((p (add-to-store store "exec-flat" #f "sha256" (string-append dir "/flat-exec.sh"))))
    (show "flat exec perms" (stat:perms (stat p)))))
;; Error cases, each on its own connection.
(try "flat add of a directory" store (add-to-store store "d" #f "sha256" (string-append dir "/tree")))
(try "invalid name" store (add-to-store store "bad name/x" #t "sha256" (string-append dir "/flat.txt")))
(try "name starting with a dot" store (add-to-store store ".hidden" #t "sha256" (string-append dir "/flat.txt")))
(try "unknown hash algorithm" store (add-to-store store "x" #f "sha3" (string-append dir "/flat.txt")))
"##;

#[test]
fn add_to_store_every_algo_matches_cxx() {
    let script = format!("{PRELUDE}{ADD_TO_STORE}");
    let (cxx, ours) = on_both(|rig, d| repl(&start(rig, d), d, &script));
    assert_same("add-to-store", &cxx, &ours);
}

const ADD_TEXT: &str = r##"
(with-store store
  (let* ((a (add-text-to-store store "a.txt" "I am A\n"))
         (b (add-text-to-store store "b.txt" (string-append "I refer to " a "\n") (list a)))
         (c (add-text-to-store store "c.txt" (string-append "refs " a " " b "\n") (list b a)))
         (self-ish (add-text-to-store store "mentions-but-no-ref" a '()))
         (empty (add-text-to-store store "empty" ""))
         ;; The C++ daemon accepts the empty name: `/gnu/store/<hash>-'.
         (no-name (add-text-to-store store "" "I have no name\n"))
         (big (add-text-to-store store "big" (make-string 300000 #\x)))
         (missing "/gnu/store/00000000000000000000000000000000-missing"))
    (for-each (lambda (p) (show "path" p) (show-info store p)) (list a b c self-ish empty no-name big))
    (show "same again" (equal? a (add-text-to-store store "a.txt" "I am A\n")))
    (for-each (lambda (p) (show (string-append "valid-path? " p) (valid-path? store p)))
              (list a b c missing "/gnu/store/x" "/gnu/store/00000000000000000000000000000000"))
    (show "references c" (sort (references store c) string<?))
    (show "referrers a" (sort (referrers store a) string<?))
    (show "referrers c" (referrers store c))
    (show "valid-derivers a" (valid-derivers store a))
    (show "query-path-hash" (bytevector->base16-string (query-path-hash store b)))
    (show "hash-part->path" (hash-part->path store (store-path-hash-part c)))
    (show "hash-part->path missing" (hash-part->path store "00000000000000000000000000000000"))
    (show "contents b" (call-with-input-file b (@ (ice-9 textual-ports) get-string-all)))
    (show "mode b" (number->string (stat:perms (stat b)) 8))
    (show "mtime b" (stat:mtime (stat b)))))
(try "reference to an invalid path" store
     (add-text-to-store store "bad-ref" "x" '("/gnu/store/00000000000000000000000000000000-missing")))
(try "reference outside the store" store (add-text-to-store store "bad-ref2" "x" '("/tmp/x")))
(try "invalid name" store (add-text-to-store store "a b" "x"))
(try "name starting with a dot" store (add-text-to-store store "." "x"))
(try "non-ASCII name" store (add-text-to-store store "été" "x"))
(try "longest name" store (add-text-to-store store (make-string 211 #\a) "x"))
(try "name too long for the lock file" store (add-text-to-store store (make-string 220 #\a) "x"))
(try "valid-path? outside the store" store (valid-path? store "/tmp/x"))
(try "query-path-info of an invalid path" store
     (query-path-info store "/gnu/store/00000000000000000000000000000000-missing"))
(try "references of an invalid path" store
     (references store "/gnu/store/00000000000000000000000000000000-missing"))
"##;

#[test]
fn add_text_and_queries_match_cxx() {
    let script = format!("{PRELUDE}{ADD_TEXT}");
    let (cxx, ours) = on_both(|rig, d| repl(&start(rig, d), d, &script));
    assert_same("add-text-to-store", &cxx, &ours);
}

/// The three `guix repl` examples of the guix-ref harness (a: add-text, b: add a directory,
/// c: valid-path?/references/referrers), in one session, printed as the examples print them.
const EXAMPLES_ABC: &str = r##"
(use-modules (guix store) (guix base32) (guix base16))
(define (spit file text) (call-with-output-file file (lambda (p) (display text p))))
;; (a)
(with-store store
  (set-build-options store #:use-substitutes? #f)
  (let ((p (add-text-to-store store "hello.txt" "Hello, Guix!\n")))
    (format #t "add-text-to-store: ~a~%" p)
    (format #t "valid-path?: ~a~%" (valid-path? store p))
    (format #t "contents: ~s~%" (call-with-input-file p (@ (ice-9 textual-ports) get-string-all)))))
;; (b)
(define dir "/tmp/guix-ref-demo-dir")
(system* "rm" "-rf" dir)
(mkdir dir) (mkdir (string-append dir "/sub"))
(spit (string-append dir "/a.txt") "file a\n")
(spit (string-append dir "/sub/b.txt") "file b\n")
(spit (string-append dir "/run.sh") "#!/bin/sh\necho hi\n")
(chmod (string-append dir "/run.sh") #o755)
(symlink "a.txt" (string-append dir "/link-to-a"))
(with-store store
  (set-build-options store #:use-substitutes? #f)
  (let* ((p    (add-to-store store "demo-dir" #t "sha256" dir))
         (info (query-path-info store p)))
    (format #t "add-to-store: ~a~%" p)
    (format #t "hash(nix-base32): ~a~%" (bytevector->nix-base32-string (path-info-hash info)))
    (format #t "hash(base16): ~a~%" (bytevector->base16-string (path-info-hash info)))
    (format #t "nar-size: ~a~%" (path-info-nar-size info))
    (format #t "references: ~s~%" (path-info-references info))
    (format #t "deriver: ~s~%" (path-info-deriver info))
    (let ((f (add-to-store store "a.txt" #f "sha256" (string-append dir "/a.txt"))))
      (format #t "add-to-store(flat): ~a~%" f)
      (format #t "flat nar-size: ~a~%" (path-info-nar-size (query-path-info store f))))))
;; (c)
(with-store store
  (set-build-options store #:use-substitutes? #f)
  (let* ((a (add-text-to-store store "a.txt" "I am A\n"))
         (b (add-text-to-store store "b.txt" (string-append "I refer to " a "\n") (list a)))
         (c (add-text-to-store store "c.txt" (string-append "refs " a " " b "\n") (list a b)))
         (missing "/gnu/store/00000000000000000000000000000000-missing"))
    (format #t "a: ~a~%b: ~a~%c: ~a~%" a b c)
    (for-each (lambda (p) (format #t "valid-path? ~a: ~a~%" p (valid-path? store p)))
              (list a b c missing))
    (format #t "references a: ~s~%" (references store a))
    (format #t "references b: ~s~%" (references store b))
    (format #t "references c: ~s~%" (sort (references store c) string<?))
    (format #t "referrers a: ~s~%" (sort (referrers store a) string<?))
    (format #t "referrers b: ~s~%" (referrers store b))
    (format #t "referrers c: ~s~%" (referrers store c))
    (format #t "path-info-references c: ~s~%" (sort (path-info-references (query-path-info store c)) string<?))))
"##;

#[test]
fn guix_ref_examples_abc_match_cxx() {
    let (cxx, ours) = on_both(|rig, d| repl(&start(rig, d), d, EXAMPLES_ABC));
    assert!(cxx.contains("valid-path? /gnu/store/00000000000000000000000000000000-missing: #f"), "{cxx}");
    assert_same("examples a/b/c", &cxx, &ours);
}

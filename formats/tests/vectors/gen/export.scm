;;; Generator of formats/tests/vectors/export.txt: `guix archive --export' streams made by the
;;; real client and C++ daemon (`export-paths', signed with the rig's key).
;;;
;;; Run from the worktree root:
;;;   /work/shared/guix-ref/run -q --bind $PWD/formats/tests/vectors:/vectors -- \
;;;     guix repl /vectors/gen/export.scm > formats/tests/vectors/export.txt
;;;
;;; Output, per vector:
;;;   vector NAME
;;;   item PATH NAR-HASH NAR-SIZE   ; per exported path, in stream order: the daemon's
;;;                                 ; narHash (hex) and narSize from query-path-info
;;;   ref PATH                      ; references of the preceding item (sorted)
;;;   export HEX                    ; the whole container, (u64 1, record)* u64 0
;;;   end
;;;
;;; The signatures depend on the rig's signing key (generated at rig setup), so the Rust test
;;; checks structure, NAR and trailer, and the digest inside the signature, not the sig value.

(use-modules (guix store) (guix base16) (rnrs bytevectors) (rnrs io ports)
             (ice-9 match) (srfi srfi-11))

(define (export-vector store name items)
  (let-values (((port get) (open-bytevector-output-port)))
    (export-paths store items port #:sign? #t)
    (format #t "vector ~a~%" name)
    (for-each
     (lambda (item)
       (let ((info (query-path-info store item)))
         (format #t "item ~a ~a ~a~%" item
                 (bytevector->base16-string (path-info-hash info))
                 (path-info-nar-size info))
         (for-each (lambda (r) (format #t "ref ~a~%" r))
                   (sort (path-info-references info) string<?))))
     items)
    (format #t "export ~a~%" (bytevector->base16-string (get)))
    (format #t "end~%")))

(with-store store
  (let* ((text (add-text-to-store store "hello.txt" "hello\n" '()))
         (text2 (add-text-to-store store "uses-hello.txt"
                                   (string-append "see " text "\n") (list text)))
         (dir (begin
                (mkdir "/tmp/export-dir")
                (call-with-output-file "/tmp/export-dir/a.txt"
                  (lambda (p) (display "hello\n" p)))
                (call-with-output-file "/tmp/export-dir/run.sh"
                  (lambda (p) (display "#!/bin/sh\necho run\n" p)))
                (chmod "/tmp/export-dir/run.sh" #o755)
                (symlink "a.txt" "/tmp/export-dir/link")
                (mkdir "/tmp/export-dir/sub")
                (call-with-output-file "/tmp/export-dir/sub/deep"
                  (lambda (p) (display "deep\n" p)))
                (add-to-store store "export-dir" #t "sha256" "/tmp/export-dir"))))
    (export-vector store "text" (list text))
    (export-vector store "dir" (list dir))
    (export-vector store "text-with-ref" (list text2))
    (export-vector store "multi" (list text text2 dir))))

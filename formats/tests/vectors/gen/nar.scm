;;; Generator of formats/tests/vectors/nar.txt: NARs written by the real Guix client.
;;;
;;; Run from the worktree root:
;;;   /work/shared/guix-ref/run -q --bind $PWD/formats/tests/vectors:/vectors -- \
;;;     guix repl /vectors/gen/nar.scm > formats/tests/vectors/nar.txt
;;;
;;; For each tree below, the script creates it on disk, serialises it with
;;; (guix serialization) `write-file' into a bytevector, adds it to the store
;;; (recursive, sha256) so the C++ daemon computes its own narHash, and prints:
;;;
;;;   vector NAME
;;;   dir  PATH                    ; PATH is hex of the path relative to the root, "." = root
;;;   file PATH EXEC CONTENTS      ; EXEC is 0/1, CONTENTS hex or "-" when empty
;;;   link PATH TARGET             ; TARGET hex
;;;   nar HEX                      ; the NAR bytes from `write-file'
;;;   nar-sha256 HEX               ; sha256 of those bytes (guile-gcrypt)
;;;   nar-size N
;;;   daemon-nar-hash HEX          ; narHash the C++ daemon recorded on add-to-store
;;;   end
;;;
;;; Entries are listed parents first; the Rust test rebuilds the tree from them.

(use-modules (guix store) (guix serialization) (guix base16) (gcrypt hash)
             (rnrs bytevectors) (rnrs io ports) (ice-9 match) (srfi srfi-11))

(define trees
  `(("empty-file" (file "." #f ""))
    ("exec-file" (file "." #t "#!/bin/sh\necho hi\n"))
    ("aligned-file" (file "." #f "12345678"))
    ("symlink" (link "." "/gnu/store/some target/with spaces"))
    ("empty-dir" (dir "."))
    ("tree"
     (dir ".")
     (file "a-b.c" #f "hello\n")
     (file "a.b" #t "#!/bin/sh\nexit 0\n")
     (file "B" #f "")
     (link "Z" "a-b.c")
     (file "10" #f "ten")
     (file "9" #f "nine")
     (file "\u00e9t\u00e9" #f "summer\n")
     (dir "empty-dir")
     (dir "sub")
     (dir "sub/deep")
     (file "sub/deep/x" #f "ABCDEFGH")
     (file "sub/deep/run" #t "")
     (link "sub/up" "../a.b"))))

(define (hex str)
  (if (string-null? str) "-" (bytevector->base16-string (string->utf8 str))))

(define (create root entry)
  (match entry
    (('dir rel)
     (let ((p (if (string=? rel ".") root (string-append root "/" rel))))
       (mkdir p #o755)))
    (('file rel exec? contents)
     (let ((p (if (string=? rel ".") root (string-append root "/" rel))))
       (call-with-output-file p (lambda (port) (put-bytevector port (string->utf8 contents))))
       (chmod p (if exec? #o755 #o644))))
    (('link rel target)
     (let ((p (if (string=? rel ".") root (string-append root "/" rel))))
       (symlink target p)))))

(define (describe entry)
  (match entry
    (('dir rel) (format #t "dir ~a~%" (hex rel)))
    (('file rel exec? contents)
     (format #t "file ~a ~a ~a~%" (hex rel) (if exec? 1 0) (hex contents)))
    (('link rel target) (format #t "link ~a ~a~%" (hex rel) (hex target)))))

(with-store store
  (for-each
   (match-lambda
     ((name . entries)
      (let ((root (string-append "/tmp/nar-vec-" name)))
        (for-each (lambda (e) (create root e)) entries)
        (let-values (((port get) (open-bytevector-output-port)))
          (write-file root port)
          (let* ((nar (get))
                 (item (add-to-store store (string-append "vec-" name) #t "sha256" root))
                 (info (query-path-info store item)))
            (format #t "vector ~a~%" name)
            (for-each describe entries)
            (format #t "nar ~a~%" (bytevector->base16-string nar))
            (format #t "nar-sha256 ~a~%" (bytevector->base16-string (sha256 nar)))
            (format #t "nar-size ~a~%" (bytevector-length nar))
            (format #t "daemon-nar-hash ~a~%"
                    (bytevector->base16-string (path-info-hash info)))
            (format #t "end~%"))))))
   trees))

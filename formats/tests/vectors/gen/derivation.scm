;;; Known-answer vectors for derivations, produced by the real Guix client
;;; ((guix derivations) `derivation') against the real C++ daemon, which
;;; accepted every .drv below (so its checkDerivationOutputs agreed too).
;;;
;;; Run:
;;;   /work/shared/guix-ref/run -q --bind <worktree>/formats/tests/vectors:/vectors \
;;;     -- guix repl /vectors/gen/derivation.scm > formats/tests/vectors/derivation.txt
;;;
;;; Output format: one record per derivation, lines of `KEY VALUE' (one space):
;;;   drv NAME            start of a record; NAME is the name given to `derivation'
;;;   path P              the .drv store path returned by the daemon
;;;   bytes HEX           the exact bytes of the .drv file in the store, base16
;;;   output ID P         each output of the derivation and its path (sorted by ID)
;;;   hash HEX            `derivation-hash' (hashDerivationModulo), base16
;;;   ref P               each reference the daemon recorded for the .drv (sorted)
;;;   end                 end of the record
;;; Lines starting with `#' are comments.  Nothing here depends on the signing key.

(use-modules (guix store)
             (guix derivations)
             (guix base16)
             (gcrypt hash)
             (rnrs bytevectors)
             (rnrs io ports)
             (ice-9 match))

(define store (open-connection))

;; Note: with this client (Guix 1.5.0 on Guile 3.0, Debian sid) the .drv
;; text is written through a binary port, so characters U+0080..U+00FF come out
;; as single Latin-1 bytes (NOT UTF-8) and anything above U+00FF makes
;; `derivation' throw an encoding error, whatever the locale.  The daemon
;; accepts the resulting non-UTF-8 .drv files; the "latin1" record below pins
;; that down.

(define (file-bytes file)
  (call-with-input-file file get-bytevector-all #:binary #t))

(define (emit name drv)
  (let ((file (derivation-file-name drv)))
    (format #t "drv ~a~%" name)
    (format #t "path ~a~%" file)
    (format #t "bytes ~a~%" (bytevector->base16-string (file-bytes file)))
    (for-each (match-lambda
                ((id . path) (format #t "output ~a ~a~%" id path)))
              (derivation->output-paths drv))
    (format #t "hash ~a~%" (bytevector->base16-string (derivation-hash drv)))
    (for-each (lambda (ref) (format #t "ref ~a~%" ref))
              (sort (references store file) string<?))
    (format #t "end~%")))

(define src
  (add-text-to-store store "builder.sh" "echo hello > $out\n"))
(define src2
  (add-text-to-store store "data.txt" "some data\n"))

(define simple
  (derivation store "simple" "/bin/sh" (list "-e" src)
              #:sources (list src)
              #:env-vars '(("A" . "1") ("B" . "two words"))))

(define multi
  (derivation store "multi" "/bin/sh" (list "-e" src)
              #:sources (list src src2)
              #:outputs '("out" "dev" "doc")))

(define chain-1
  (derivation store "chain-1" "/bin/sh" (list "-e" src) #:sources (list src)))
(define chain-2
  (derivation store "chain-2" "/bin/sh" (list "-e" src)
              #:sources (list src)
              #:inputs (list (derivation-input chain-1))))
(define chain-3
  (derivation store "chain-3" "/bin/sh" (list "-e" src)
              #:sources (list src)
              #:inputs (list (derivation-input chain-2)
                             (derivation-input chain-1)
                             (derivation-input multi '("dev" "out")))))

(define escapes
  (derivation store "escapes" "/bin/sh"
              (list "-c" "printf '%s\\n' \"$x\" > $out" "tab\there" "\\")
              #:sources (list src)
              #:env-vars
              `(("quote" . "say \"hi\"")
                ("backslash" . "a\\b\\\\c\\")
                ("newline" . "line1\nline2\n")
                ("cr" . "a\rb")
                ("tab" . "a\tb")
                ("latin1" . "héllo wörld ÿ±")
                ("empty" . "")
                ("mixed" . "\"\\\n\r\t\"")
                ("Zupper" . "sorted before lowercase"))))

(define (fixed name algo recursive? content)
  (derivation store name "/bin/sh" (list "-e" src)
              #:sources (list src)
              #:hash (bytevector-hash (string->utf8 content)
                                      (lookup-hash-algorithm algo))
              #:hash-algo algo
              #:recursive? recursive?))

(define fixed-sha256 (fixed "fixed-sha256" 'sha256 #f "hello\n"))
(define fixed-rec-sha256 (fixed "fixed-rec-sha256" 'sha256 #t "hello\n"))
(define fixed-sha1 (fixed "fixed-sha1" 'sha1 #f "hello\n"))
(define fixed-md5 (fixed "fixed-md5" 'md5 #f "hello\n"))
(define fixed-rec-sha512 (fixed "fixed-rec-sha512" 'sha512 #t "hello\n"))

(define download
  (derivation store "download.tar.gz" "builtin:download" '()
              #:env-vars `(("url" . ,(object->string "http://example.org/x.tar.gz"))
                           ("executable" . "0"))
              #:hash (sha256 (string->utf8 "not really"))
              #:hash-algo 'sha256
              #:leaked-env-vars '("http_proxy" "https_proxy")
              #:local-build? #t))

;; A regular derivation whose inputs are fixed-output ones: its modulo hash
;; uses their `fixed:out:' hashes.
(define uses-fixed
  (derivation store "uses-fixed" "/bin/sh" (list "-e" src)
              #:sources (list src)
              #:inputs (list (derivation-input fixed-sha256)
                             (derivation-input download)
                             (derivation-input escapes))
              #:allowed-references '()
              #:substitutable? #f
              #:properties '((type . test) (note . "a \"quoted\" note"))))

(for-each (match-lambda ((name . drv) (emit name drv)))
          `(("simple" . ,simple)
            ("multi" . ,multi)
            ("chain-1" . ,chain-1)
            ("chain-2" . ,chain-2)
            ("chain-3" . ,chain-3)
            ("escapes" . ,escapes)
            ("fixed-sha256" . ,fixed-sha256)
            ("fixed-rec-sha256" . ,fixed-rec-sha256)
            ("fixed-sha1" . ,fixed-sha1)
            ("fixed-md5" . ,fixed-md5)
            ("fixed-rec-sha512" . ,fixed-rec-sha512)
            ("download" . ,download)
            ("uses-fixed" . ,uses-fixed)))

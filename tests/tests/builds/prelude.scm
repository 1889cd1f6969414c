;;; Shared prelude of the compat_build_* tests (run by `guix repl` in a rig session).
;;;
;;; Adds the rootfs's static busybox to the store as a directory `busybox-static/bin/busybox'
;;; (the daemon runs the builder with argv[0] = its basename, which must be "busybox"), then
;;; defines every derivation the tests build, all with busybox `sh -c SCRIPT' as builder. Nothing
;;; is built here. Every derivation is a pure function of busybox and its script, so both daemons
;;; get the same .drv and output paths. `/tmp/vars' receives `NAME=DRV' and `NAME_OUTPUT=PATH'
;;; lines, sourced by the tests' shell scripts.

(use-modules (guix store) (guix derivations) (guix serialization) (guix base32) (gcrypt hash)
             (rnrs bytevectors) (srfi srfi-1) (srfi srfi-34) (ice-9 match) (ice-9 format)
             (ice-9 rdelim) (ice-9 textual-ports))

(define (spit file text) (call-with-output-file file (lambda (p) (display text p))))

(define bb-src "/tmp/compat-busybox")
(system* "rm" "-rf" bb-src)
(mkdir bb-src)
(mkdir (string-append bb-src "/bin"))
(copy-file "/bin/busybox" (string-append bb-src "/bin/busybox"))
(chmod (string-append bb-src "/bin/busybox") #o555)

;; The tree the recursive fixed-output derivation `fod-rec' must produce, and its NAR hash.
(define rec-src "/tmp/compat-fod-rec")
(system* "rm" "-rf" rec-src)
(mkdir rec-src)
(spit (string-append rec-src "/a") "fixed a\n")
(spit (string-append rec-src "/run") "#!/bin/sh\n")
(chmod (string-append rec-src "/run") #o755)
(symlink "a" (string-append rec-src "/link"))
(define rec-hash
  (call-with-values open-sha256-port
    (lambda (port get)
      (write-file rec-src port)
      (close-port port)
      (get))))

(define (text-hash text) (sha256 (string->utf8 text)))

;; A line of 2000 `x' (one write of the builder, below PIPE_BUF, so the daemon reads it whole).
(define big-line (make-string 2000 #\x))

(define %store (open-connection))
(set-build-options %store #:use-substitutes? #f)
(define bbdir (add-to-store %store "busybox-static" #t "sha256" bb-src))
(define bb (string-append bbdir "/bin/busybox"))

(define* (mk name script #:key (outputs '("out")) hash (hash-algo 'sha256) recursive?
             (inputs '()) (env '()) disallowed graphs)
  (derivation %store name bb (list "sh" "-c" (string-append "B=" bb "\n" script))
              #:sources (list bbdir) #:outputs outputs #:hash hash #:hash-algo hash-algo
              #:recursive? recursive? #:inputs (map derivation-input inputs) #:env-vars env
              #:disallowed-references disallowed #:references-graphs graphs))

;;; Outputs (compat_builds): a chain of five, each reading its input and referring to it.
(define c1 (mk "chain-1" "echo building chain-1; echo chain-1 stderr >&2; echo chain-1 > $out"))
(define (chain-link n prev)
  (mk (format #f "chain-~a" n)
      (format #f "echo building chain-~a from $in
$B cat $in > $out
echo chain-~a >> $out
echo $in >> $out" n n)
      #:inputs (list prev) #:env `(("in" . ,(derivation->output-path prev)))))
(define c2 (chain-link 2 c1))
(define c3 (chain-link 3 c2))
(define c4 (chain-link 4 c3))
(define c5 (chain-link 5 c4))

;; Three outputs referring to each other (out -> lib -> doc, out -> itself), a symlink, modes
;; the daemon must canonicalise (setuid, 0600, 0700 dir), the same file in two outputs.
(define multi
  (mk "multi" "echo building multi
$B mkdir -p $out/bin $lib/lib $doc/share/doc $out/private
echo docs > $doc/share/doc/README
echo $doc > $lib/lib/docref
echo $lib > $out/bin/libref
echo $out > $out/self
echo same > $out/same; echo same > $doc/same
echo tool > $out/bin/tool; $B chmod 4755 $out/bin/tool
echo secret > $out/private/f; $B chmod 0600 $out/private/f; $B chmod 0700 $out/private
$B ln -s $lib/lib $out/lib-link
$B ln -s ../same $out/bin/same-link
$B mkdir $lib/empty"
      #:outputs '("out" "lib" "doc")))

(define fod-flat
  (mk "fod-flat" "echo building fod-flat; echo fixed flat > $out"
      #:hash (text-hash "fixed flat\n")))
(define fod-rec
  (mk "fod-rec" "echo building fod-rec
$B mkdir $out; echo fixed a > $out/a
$B printf '#!/bin/sh\\n' > $out/run; $B chmod 755 $out/run
$B ln -s a $out/link"
      #:hash rec-hash #:recursive? #t))

;; exportReferencesGraph: the closure of an output, and of a .drv (with its outputs).
(define graph
  (mk "graph" "echo building graph; $B cat out-graph > $out; echo == >> $out; $B cat drv-graph >> $out"
      #:inputs (list c3)
      #:graphs `(("out-graph" . ,(derivation->output-path c3)) ("drv-graph" . ,(derivation-file-name c3)))))
;; Built by two clients at once (compat_builds).
(define sleepy (mk "sleepy" "echo sleeping; $B sleep 3; echo done > $out"))
;; The daemon's build-cores setting, as the builder sees it.
(define cores (mk "cores" "echo $NIX_BUILD_CORES > $out"))

;;; Failures (compat_build_failures).
(define fail3 (mk "will-fail" "echo to stdout; echo to stderr >&2; exit 3"))
(define no-output (mk "no-output" "echo I make nothing"))
(define fod-bad (mk "fod-bad" "echo -n wrong > $out" #:hash (text-hash "right")))
(define slow (mk "slow" "echo start; $B sleep 20; echo late > $out"))
(define loud (mk "loud" (string-append "echo before; $B sleep 1; echo " big-line "; $B sleep 20")))
(define disallow (mk "disallow" "echo $B > $out" #:disallowed (list bbdir)))
(define outside (derivation %store "outside" "/bin/sh" '("-c" "echo > $out")))
(define keep (mk "keep" "echo keeping
echo kept > kept.txt; $B mkdir sub; echo deep > sub/f; $B chmod 4777 sub/f
$B mkdir $out; echo partial > $out/p; $B chmod 4777 $out/p
exit 3"))
(define cached (mk "cached" "echo failing for the cache; exit 1"))
(define suspicious (mk "suspicious" "echo x > $out; $B chmod 0664 $out"))
(define fifo-out (mk "fifo-out" "$B mkfifo $out"))
(define dep-fail (mk "dep-fail" "echo never > $out" #:inputs (list fail3)))

;;; --check and --rounds (compat_build_check).
(define det (mk "det" "echo deterministic > $out"))
(define (nondet name) (mk name "$B cat /proc/sys/kernel/random/uuid > $out"))
(define nondet-check (nondet "nondet-check"))
(define nondet-check-k (nondet "nondet-check-k"))
(define nondet-rounds (nondet "nondet-rounds"))
(define nondet-rounds-k (nondet "nondet-rounds-k"))
(define det-rounds (mk "det-rounds" "echo deterministic too > $out"))

(define all-derivations
  `((c1 . ,c1) (c2 . ,c2) (c3 . ,c3) (c4 . ,c4) (c5 . ,c5) (multi . ,multi)
    (fod_flat . ,fod-flat) (fod_rec . ,fod-rec) (graph . ,graph) (cores . ,cores)
    (sleepy . ,sleepy)
    (fail3 . ,fail3) (no_output . ,no-output) (fod_bad . ,fod-bad) (slow . ,slow)
    (loud . ,loud) (disallow . ,disallow) (outside . ,outside) (keep . ,keep)
    (cached . ,cached) (suspicious . ,suspicious) (fifo_out . ,fifo-out) (dep_fail . ,dep-fail)
    (det . ,det) (nondet_check . ,nondet-check) (nondet_check_k . ,nondet-check-k)
    (nondet_rounds . ,nondet-rounds) (nondet_rounds_k . ,nondet-rounds-k)
    (det_rounds . ,det-rounds)))

(call-with-output-file "/tmp/vars"
  (lambda (port)
    (format port "bb=~a~%bbdir=~a~%" bb bbdir)
    (for-each (match-lambda
                ((name . drv)
                 (format port "~a=~a~%" name (derivation-file-name drv))
                 (for-each (match-lambda
                             ((output . o)
                              (format port "~a_~a=~a~%" name output (derivation-output-path o))))
                           (derivation-outputs drv))))
              all-derivations)))

;;; Helpers of the tests' scripts.

(define (show label value) (format #t "~a: ~s~%" label value))

;; Builds DRVS on a fresh connection with OPTIONS (set-build-options keywords) and, if given,
;; extra SetOptions pairs; the daemon's build output and traces go to stdout, in order with
;; what this script prints. Prints `-> #t' or `-> (error MESSAGE STATUS)'.
(define* (try-build label drvs #:key (options '()) (pairs #f) (mode (build-mode normal)))
  (format #t "== ~a~%" label)
  (force-output)
  (with-store store
    (apply set-build-options store #:use-substitutes? #f options)
    (when pairs (set-options/extra store pairs))
    (parameterize ((current-build-output-port (current-output-port)))
      (show "->"
            (guard (c ((store-protocol-error? c)
                       (list 'error (store-protocol-error-message c)
                             (store-protocol-error-status c))))
              (build-derivations store drvs mode))))))

;; SetOptions (opcode 19) as `set-build-options' sends it to a protocol-0x164 daemon (no
;; max-jobs/max-silent/cores fields), with PAIRS as its settings: the only way a client sets
;; settings `set-build-options' has no keyword for (e.g. build-max-log-size, which a trusted
;; client may set).
(define (set-options/extra store pairs)
  (let ((p (store-connection-socket store)))
    (for-each (lambda (n) (write-int n p))
              '(19 0 0 0 0        ; opcode; keep-failed, keep-going, fallback, verbosity
                1                 ; use build hook (offload)
                0 0 1             ; build-verbosity, log-type, print-build-trace
                0))               ; use-substitutes
    (write-string-pairs pairs p)
    (force-output p)
    ((@@ (guix store) process-stderr) store)))

;; One line per output of DRV: validity and, if valid, everything the daemon says about it.
(define (dump-outputs store drv)
  (for-each
   (match-lambda
     ((name . o)
      (let ((p (derivation-output-path o)))
        (if (valid-path? store p)
            (let ((i (query-path-info store p)))
              (format #t "~a ~a: valid deriver=~a hash=~a size=~a refs=~a derivers=~a referrers=~a~%"
                      (derivation-name drv) name
                      (path-info-deriver i)
                      (bytevector->nix-base32-string (path-info-hash i))
                      (path-info-nar-size i)
                      (sort (path-info-references i) string<?)
                      (valid-derivers store p)
                      (sort (referrers store p) string<?)))
            (format #t "~a ~a: not valid~%" (derivation-name drv) name)))))
   (derivation-outputs drv))
  (format #t "~a: derivation outputs ~a~%" (derivation-name drv)
          (guard (c ((store-protocol-error? c) (list 'error (store-protocol-error-message c))))
            (query-derivation-outputs store (derivation-file-name drv)))))


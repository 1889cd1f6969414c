;; Runs tests/sandbox-probe.sh as a chroot build under a real daemon and prints what it saw:
;;   scripts/rig run --daemon cxx -q --bind $PWD/builder/tests:/v -- guix repl /v/sandbox-probe-cxx.scm
;; (compare with GUIX_RS_PROBE_OUT=FILE cargo test -p guix-builder --test sandbox chroot_build).
(use-modules (guix store) (guix derivations) (ice-9 textual-ports))
(define dir "/tmp/guix-ref-busybox")
(system* "rm" "-rf" dir)
(mkdir dir) (mkdir (string-append dir "/bin"))
(copy-file "/bin/busybox" (string-append dir "/bin/busybox"))
(chmod (string-append dir "/bin/busybox") #o555)
(define probe (call-with-input-file "/v/sandbox-probe.sh" get-string-all))
(with-store store
  (set-build-options store #:use-substitutes? #f)
  (let* ((bbdir (add-to-store store "busybox-static" #t "sha256" dir))
         (bb (string-append bbdir "/bin/busybox"))
         (ps (add-text-to-store store "probe.sh" probe '()))
         (run "\"$1\" mkdir \"$out\"; \"$1\" sh \"$2\" \"$1\" > \"$out/log\" 2>&1")
         (drv (derivation store "probe-normal" bb (list "sh" "-c" run "x" bb ps)
                          #:sources (list bbdir ps) #:env-vars (quote (("impureEnvVars" . "FOO_IMPURE http_proxy"))))))
    (build-derivations store (list drv))
    (display (call-with-input-file (string-append (derivation->output-path drv) "/log") get-string-all))))

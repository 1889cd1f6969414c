;; Writes a chain of three derivations built with the rig's static busybox (no Guix bootstrap
;; needed) and prints the last one's file name: each step reads its input and adds a line.
(use-modules (guix store) (guix derivations))
(define dir "/tmp/demo-busybox")
(system* "rm" "-rf" dir)
(mkdir dir) (mkdir (string-append dir "/bin"))
(copy-file "/bin/busybox" (string-append dir "/bin/busybox"))
(chmod (string-append dir "/bin/busybox") #o555)
(with-store store
  (let* ((bbdir (add-to-store store "busybox-static" #t "sha256" dir))
         (bb (string-append bbdir "/bin/busybox"))
         (step (lambda (name input)
                 (derivation store name bb
                             (list "sh" "-c"
                                   (string-append
                                    "echo building " name "; "
                                    (if input (string-append bb " cat " (derivation->output-path input) " > $out; ") "")
                                    "echo " name " was built in $PWD by $(" bb " id -u) >> $out"))
                             #:inputs (if input (list (derivation-input input)) '())
                             #:sources (list bbdir))))
         (a (step "demo-chain-a" #f))
         (b (step "demo-chain-b" a))
         (c (step "demo-chain-c" b)))
    (display (derivation-file-name c))
    (newline)))

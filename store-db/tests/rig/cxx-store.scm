;; Creates a store with the C++ daemon for tests/rig.rs: text files with references, a
;; derivation with two outputs, and prints "KEY VALUE" lines the test reads.
(use-modules (guix store) (guix derivations) (gcrypt hash) (guix base16))
(with-store store
  (let* ((a (add-text-to-store store "a.txt" "I am A\n"))
         (b (add-text-to-store store "b.txt" (string-append "I refer to " a "\n") (list a)))
         (c (add-text-to-store store "c.txt" (string-append "refs " a " " b "\n") (list a b)))
         (drv (derivation store "thing" "/bin/sh" '("-c" "true")
                          #:inputs (list (list c)) #:outputs '("out" "dev"))))
    (for-each (lambda (kv) (format #t "~a ~a~%" (car kv) (cdr kv)))
              `(("a" . ,a) ("b" . ,b) ("c" . ,c)
                ("drv" . ,(derivation-file-name drv))
                ("out" . ,(derivation->output-path drv "out"))
                ("dev" . ,(derivation->output-path drv "dev"))))
    (for-each (lambda (p)
                (let ((info (query-path-info store p)))
                  (format #t "hash ~a ~a~%" p (bytevector->base16-string (path-info-hash info)))
                  (format #t "size ~a ~a~%" p (path-info-nar-size info))))
              (list a b c (derivation-file-name drv)))))

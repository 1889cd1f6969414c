;; Store operations through the real Guile client, for scripts/demo.
(use-modules (guix store) (guix base16))
(with-store store
  (let* ((a (add-text-to-store store "demo-a.txt" "Hello from guix-daemon-rs\n"))
         (t (add-text-to-store store "demo-b.txt" (string-append "refers to " a "\n") (list a)))
         (d (add-to-store store "demo-dir" #t "sha256" "/etc/guix"))
         (info (query-path-info store t)))
    (format #t "added: ~a~%added: ~a~%added: ~a~%" a t d)
    (format #t "text: ~a~%" t)
    (format #t "valid-path?: ~a~%" (valid-path? store t))
    (format #t "nar hash: ~a~%nar size: ~a~%references: ~a~%"
            (bytevector->base16-string (path-info-hash info))
            (path-info-nar-size info)
            (path-info-references info))))

//! The built-in builder `builtin:download` with the real `guix` client, the C++ daemon and ours
//! in parallel sessions on fresh stores.
//!
//! The test serves files over HTTP on 127.0.0.1 from a thread of its own (the rig's sessions
//! share the host's network, and a built-in build runs without a chroot in the daemon's
//! network); both daemons download from the same server, so their derivations (whose `url` is
//! part of the `.drv`) are the same. The derivations are made as Guix's `url-fetch` makes them
//! (`guix/download.scm`): builder `builtin:download`, no arguments, `url` the `write`n URL (or
//! list of URLs), `executable` = "1" for a recursive hash, the proxy and locale variables as
//! `impureEnvVars`, `preferLocalBuild`. The daemon runs `guix perform-download DRV OUT` as a
//! build user, which fetches the URL and writes OUT; the daemon then checks the hash.
//!
//! * `downloads_match_cxx`: `guix build` of a flat file, of an executable (recursive hash), of
//!   a list of URLs whose first one answers 404, of one with a wrong hash, and `--check` of the
//!   flat one (perform-download writes the check output). Compared: the client's transcripts,
//!   the build logs, the outputs' files (mode, owner, link count, mtime) and contents, the store's
//!   entries, what the daemon says about each output (validity, NAR hash, size, references,
//!   deriver); then through `guix repl`, the raw build traces of a download (plain and with
//!   `print-extended-build-trace`, which `guix perform-download` learns from `_NIX_OPTIONS`
//!   and answers with `@ download-started`/`download-progress`/`download-succeeded` traces)
//!   and of a hash mismatch (`@ hash-mismatch`, `@ build-failed`, the error and its status), and
//!   the `BuiltinBuilders` the daemon reports.
//!
//! C++ facts this relies on (checked in its transcripts): the log holds perform-download's
//! `@ download-*` traces even for `guix build` (the client asks for extended traces, which
//! reach perform-download in `_NIX_OPTIONS`); a hash mismatch is `@ hash-mismatch PATH sha256
//! EXPECTED ACTUAL`, "hash mismatch for store item 'P'", status 1, and the downloaded file stays
//! in the store, invalid, as the build user made it (0644, owned by the build user); a check
//! downloads to the redirected path (`addHashRewrite`: the hash part from `rewrite:DRV:PATH`),
//! warns "rewriting hashes in `P'; cross fingers" and reports success twice; `BuiltinBuilders`
//! is `("download" "git-download")`.
//!
//! Not compared: the mtime of the valid output after `--check`. The C++ daemon makes a fresh
//! copy of every fixed output of a build without a chroot at its store path before checking
//! (the CVE-2024-27297 copy in `buildDone`, which in check mode copies the *valid* output, not
//! the redirected one), so after a check its valid output has the time of the check as mtime
//! instead of 1. Our daemon leaves the valid output alone.
//!
//! Normalised: the builder's PID in `@ build-started`/`@ build-log` (a process id of the daemon's
//! machine), the transfer rates of perform-download's progress bar (`58KiB/s`, right-aligned,
//! so the padding before them too), mtimes other than 1 (a time of the run).
//! Left out of store listings: `.lock` files (our daemon takes no C++ path locks), `.links`
//! (deduplication) and our `.rs-scratch`.
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode in this test's target
//! directory (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

mod builds;
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use builds::{assert_all_same, assert_cxx_has, normalise_pids, on_both, repl, session, sh};

/// What the test's HTTP server serves: (path, body). Anything else is a 404.
const FILES: [(&str, &[u8]); 2] =
    [("/file.txt", b"hello from the test server\n"), ("/tool", b"#!/bin/sh\necho downloaded tool\n")];

/// Answers one HTTP request on `stream`: the request line and headers are read (up to the empty
/// line), then a `200` with the body of the path, or a `404`; the connection is closed.
fn answer(stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header.trim_end().is_empty() => break,
            Ok(_) => {}
        }
    }
    let path = request.split(' ').nth(1).unwrap_or_default();
    let (status, body): (&str, &[u8]) = match FILES.iter().find(|(p, _)| *p == path) {
        Some((_, body)) => ("200 OK", body),
        None => ("404 Not Found", b"not found\n"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = &stream;
    let _ = out.write_all(head.as_bytes()).and_then(|()| out.write_all(body)).and_then(|()| out.flush());
}

/// Starts the HTTP server on 127.0.0.1 (a free port) in a thread that lives as long as the test
/// process, each connection answered in a thread of its own; returns the port.
fn serve() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding 127.0.0.1: {e}"));
    let port = listener.local_addr().unwrap_or_else(|e| panic!("the listener's address: {e}")).port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || answer(stream));
        }
    });
    port
}

/// The download derivations (as `url-fetch` makes them, see the module doc) and `/tmp/dl-vars`
/// (`NAME=DRV`, `NAME_out=PATH`), after the prelude; `@PORT@` is the server's port.
const DEFS: &str = r##"
(define dl-base "http://127.0.0.1:@PORT@")
(define tool-body "#!/bin/sh\necho downloaded tool\n")
;; The NAR hash of the executable `tool' as perform-download leaves it (mode 755).
(define tool-src "/tmp/dl-tool")
(spit tool-src tool-body)
(chmod tool-src #o755)
(define tool-hash
  (call-with-values open-sha256-port
    (lambda (port get) (write-file tool-src port) (close-port port) (get))))
(define* (dl name url hash #:key executable?)
  (derivation %store name "builtin:download" '()
              #:hash-algo 'sha256 #:hash hash #:recursive? executable?
              #:env-vars `(("url" . ,(object->string url))
                           ,@(if executable? '(("executable" . "1")) '()))
              #:leaked-env-vars '("http_proxy" "https_proxy" "LC_ALL" "LC_MESSAGES" "LANG" "COLUMNS")
              #:local-build? #t))
(define file-hash (text-hash "hello from the test server\n"))
(define dl-file (dl "file.txt" (string-append dl-base "/file.txt") file-hash))
(define dl-tool (dl "tool" (string-append dl-base "/tool") tool-hash #:executable? #t))
(define dl-list (dl "file-list.txt" (list (string-append dl-base "/missing") (string-append dl-base "/file.txt"))
                    file-hash))
(define dl-bad (dl "file-bad.txt" (string-append dl-base "/file.txt") (text-hash "something else\n")))
(define dl-traced (dl "file-traced.txt" (string-append dl-base "/file.txt") file-hash))
(define dl-all `((dl_file . ,dl-file) (dl_tool . ,dl-tool) (dl_list . ,dl-list) (dl_bad . ,dl-bad)
                 (dl_traced . ,dl-traced)))
(call-with-output-file "/tmp/dl-vars"
  (lambda (port)
    (for-each (match-lambda
                ((name . drv)
                 (format port "~a=~a~%~a_out=~a~%" name (derivation-file-name drv)
                         name (derivation->output-path drv))))
              dl-all)))
"##;

const DOWNLOADS_SH: &str = r##"
. /tmp/dl-vars
# Mode, owner, group, links, mtime (1, or `<clock>' for any other: a time of the run), name.
files() {
  for p in "$@"; do
    if [ -e $p ]; then
      m=$(stat -c %Y $p); [ "$m" = 1 ] || m='<clock>'
      echo "$(stat -c '%A %U %G %h' $p) $m $(stat -c %N $p)"
    else echo "absent: $p"; fi
  done
}
echo "== the derivation"; cat $dl_list; echo
b $dl_file
b $dl_tool
b $dl_list
b $dl_bad
echo "== files of the outputs"
files $dl_file_out $dl_tool_out $dl_list_out $dl_bad_out
b --check $dl_file
echo "== after the check (no mtime: see the module doc)"
stat -c '%A %U %G %h %N' $dl_file_out
echo "== again (nothing to build)"
b $dl_file $dl_tool
for d in $dl_file $dl_tool $dl_list $dl_bad; do log $d; done
echo "== contents"
cat $dl_file_out $dl_tool_out $dl_list_out
echo "== store"
ls -a /gnu/store | grep -v -e '\.lock$' -e '^\.links$' -e '^\.rs-scratch$'
"##;

const DOWNLOADS_REPL: &str = r##"
(with-store store
  (for-each (lambda (d) (dump-outputs store (cdr d))) dl-all)
  (show "builtin builders" (built-in-builders store)))
(try-build "download, extended trace" (list dl-traced) #:options '(#:print-extended-build-trace? #t))
(try-build "hash mismatch, again" (list dl-bad))
(try-build "already valid" (list dl-file dl-traced))
"##;

/// Replaces each transfer rate of perform-download's progress bar (`0B/s`, `58KiB/s`, right
/// aligned in its column) together with the spaces before it by ` <rate>`: timing.
fn normalise_rates(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("B/s") {
        let (before, after) = rest.split_at(at);
        let number_start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_digit() || matches!(c, '.' | 'K' | 'M' | 'G' | 'T' | 'i'))
            .last()
            .map_or(before.len(), |(i, _)| i);
        let spaces_start = before[..number_start].trim_end_matches(' ').len();
        if number_start < before.len() && spaces_start < number_start {
            out.push_str(&before[..spaces_start]);
            out.push_str(" <rate>");
        } else {
            out.push_str(before);
            out.push_str("B/s");
        }
        rest = &after["B/s".len()..];
    }
    out.push_str(rest);
    out
}

#[test]
fn downloads_match_cxx() {
    let port = serve();
    let defs = DEFS.replace("@PORT@", &port.to_string());
    let (cxx, ours) = on_both("builtin:download", |rig, d| {
        let s = session(rig, d, &[]);
        let defined = repl(&s, &defs);
        let shell = normalise_rates(&sh(&s, DOWNLOADS_SH));
        let traces = normalise_rates(&normalise_pids(&repl(&s, &format!("{defs}\n{DOWNLOADS_REPL}"))));
        (defined, shell, traces)
    });
    assert_cxx_has("defining the downloads", &cxx.0, &["status: 0\n"]);
    assert_cxx_has(
        "downloads (guix build)",
        &cxx.1,
        &[
            "builtin:download",
            "Starting download of /gnu/store/",
            "hash mismatch for store item '/gnu/store/",
            "-r--r--r-- root root 1 1 '/gnu/store/",
            "-r-xr-xr-x root root 1 1 '/gnu/store/",
            "-rw-r--r-- guixbuilder01 guixbuild 1 <clock> '/gnu/store/",
            "warning: rewriting hashes in `/gnu/store/",
            "hello from the test server\n#!/bin/sh\necho downloaded tool\nhello from the test server\n",
        ],
    );
    assert_cxx_has(
        "downloads (guix repl)",
        &cxx.2,
        &[
            "builtin builders: (\"download\" \"git-download\")",
            "file.txt out: valid deriver=",
            "file-bad.txt out: not valid",
            "@ download-started /gnu/store/",
            "@ download-succeeded /gnu/store/",
            "@ hash-mismatch /gnu/store/",
            "' failed\" 1)",
        ],
    );
    assert_all_same(&[
        ("defining the downloads", &cxx.0, &ours.0),
        ("guix build of the downloads", &cxx.1, &ours.1),
        ("what the daemon says, and the build traces", &cxx.2, &ours.2),
    ]);
}

#[cfg(test)]
mod tests {
    use super::normalise_rates;

    #[test]
    fn rates_are_normalised() {
        let bar = "\x1b[K file.txt  27B                            0B/s 00:00 |  0.0%\
                   \x1b[K file.txt  27B                         58KiB/s 00:00 | 100.0%";
        assert_eq!(
            normalise_rates(bar),
            "\x1b[K file.txt  27B <rate> 00:00 |  0.0%\x1b[K file.txt  27B <rate> 00:00 | 100.0%"
        );
        assert_eq!(normalise_rates("no B/s here, 1.5MiB/s"), "no B/s here, <rate>");
    }
}

//! Substitution end to end: a real `guix publish` (from the rig's Guix) serves a store the
//! C++ daemon wrote; our daemon, on a fresh store, substitutes from it through the real
//! `guix` client.
//!
//! * Each compression `guix publish` offers (none, gzip, lzip, zstd): the closure of a small
//!   item (texts with references, a directory with an executable and a symlink) is
//!   substituted; contents (NAR bytes), NAR hashes, sizes and references equal the source.
//! * `guix build --dry-run` of that item prints the same through ours as through the C++
//!   daemon with its `guix substitute` (both fresh, same server).
//! * Narinfos that are unsigned, signed over other contents, or signed by a key not in the
//!   ACL are refused; a nar that is corrupt, truncated or larger than announced is rejected;
//!   in every case nothing is registered and nothing is left in the store. These come from a
//!   small HTTP server in this test that serves `guix publish`'s own signed narinfos, altered.
//! * A nar behind a redirect is fetched; a nar that stops halfway and a server that never
//!   answers fail within the (shortened) stall limit, leaving nothing behind.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use guix_tests::http;
use guix_tests::{ours_kind, DaemonKind, Rig, Session, SessionOptions};

fn rig() -> Rig {
    Rig::discover().unwrap_or_else(|e| panic!("{e}"))
}

/// A port free on loopback now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` on 127.0.0.1:port: (status, body), `None` if nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).ok()?;
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&all[..head_end]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = all[head_end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Some((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

/// The source: a C++ session holding the closure, and `guix publish` processes serving it.
struct Source {
    session: Session,
    /// top → b → a, top → dir, top → big (10,000 bytes: deduplicated); e1…e6 stand alone.
    paths: BTreeMap<&'static str, String>,
}

const MAKE: &str = r#"
(use-modules (guix store) (ice-9 format))
(with-store s
  (let* ((a (add-text-to-store s "subst-a" "hello from a\n"))
         (b (add-text-to-store s "subst-b" (string-append "b refers to " a "\n") (list a)))
         (dir (add-to-store s "subst-dir" #t "sha256" "/tmp/subst-dir"))
         (big (add-text-to-store s "subst-big" (make-string 10000 #\y)))
         (top (add-text-to-store s "subst-top" (string-append b " " dir " " big "\n") (list b dir big))))
    (for-each (lambda (name path) (format #t "~a ~a~%" name path))
              '("a" "b" "dir" "big" "top") (list a b dir big top))
    (for-each (lambda (i)
                (format #t "e~a ~a~%" i
                        (add-text-to-store s (format #f "subst-e~a" i)
                                           (format #f "standalone item ~a, a little longer than the others ~a~%" i
                                                   (make-string 200 #\x)))))
              '(1 2 3 4 5 6))))
"#;

impl Source {
    fn start(rig: &Rig) -> Source {
        let session = rig.start(DaemonKind::Cxx).unwrap_or_else(|e| panic!("{e}"));
        let dir = session.state_dir().join("tmp/subst-dir");
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
        std::fs::set_permissions(dir.join("bin/hello"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("data"), vec![b'z'; 100_000]).unwrap();
        std::os::unix::fs::symlink("bin/hello", dir.join("link")).unwrap();
        let out = session.repl_ok(MAKE).unwrap_or_else(|e| panic!("{e}"));
        let mut paths = BTreeMap::new();
        for line in out.lines() {
            let (k, v) = line.split_once(' ').unwrap();
            let k: &'static str = Box::leak(k.to_owned().into_boxed_str());
            paths.insert(k, v.to_owned());
        }
        assert_eq!(paths.len(), 11, "{out}");
        Source { session, paths }
    }

    /// Starts `guix publish -C COMPRESSION…` on a free port; waits until it answers.
    fn publish(&self, compressions: &[&str]) -> u16 {
        let port = free_port();
        let cs: Vec<String> = compressions.iter().map(|c| format!("-C {c}")).collect();
        let cmd =
            format!("guix publish --listen=127.0.0.1 --port={port} {} > /tmp/publish-{port}.log 2>&1 &", cs.join(" "));
        let out = self.session.exec(&["sh", "-c", &cmd]).unwrap();
        assert!(out.status.success(), "{out:?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(port, "/nix-cache-info").is_none_or(|(s, _)| s != 200) {
            assert!(Instant::now() < deadline, "guix publish on port {port} did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
        port
    }

    fn path(&self, k: &str) -> &str {
        &self.paths[k]
    }

    /// The signed narinfo of item `k` from the `guix publish` on `port`.
    fn signed_narinfo(&self, port: u16, k: &str) -> String {
        let (status, body) = http_get(port, &format!("/{}.narinfo", hash_part(self.path(k)))).unwrap();
        assert_eq!(status, 200);
        String::from_utf8(body).unwrap()
    }

    /// The NAR of item `k`.
    fn nar(&self, k: &str) -> Vec<u8> {
        nar_of(&self.session.host_path(self.path(k)).unwrap())
    }
}

/// `(hash size (refs…))` of each path, as the daemon reports them, or `#f` for invalid ones.
fn infos(s: &Session, paths: &[&str]) -> String {
    let list: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
    let script = format!(
        r#"(use-modules (guix store) (ice-9 format))
(with-store s
  (for-each (lambda (p)
              (if (valid-path? s p)
                  (let ((i (query-path-info s p)))
                    (format #t "~a ~a ~a ~a~%" p (path-info-hash i) (path-info-nar-size i)
                            (sort (path-info-references i) string<?)))
                  (format #t "~a #f~%" p)))
            (list {})))"#,
        list.join(" ")
    );
    s.repl_ok(&script).unwrap_or_else(|e| panic!("{e}"))
}

fn nar_of(host: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    guix_formats::nar::dump_path(host, &mut out).unwrap();
    out
}

/// Our daemon on a fresh store, substituting from `urls`.
fn ours_with(rig: &Rig, urls: &str) -> Session {
    let (kind, mut opts) = ours_kind(&[]);
    opts.daemon_flags = Some(vec!["--build-users-group=guixbuild".into(), format!("--substitute-urls={urls}")]);
    Session::start_with(rig, kind, &opts).unwrap_or_else(|e| panic!("{e}"))
}

fn cxx_with(rig: &Rig, urls: &str) -> Session {
    let opts = SessionOptions {
        daemon_flags: Some(vec!["--build-users-group=guixbuild".into(), format!("--substitute-urls={urls}")]),
        ..SessionOptions::default()
    };
    Session::start_with(rig, DaemonKind::Cxx, &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// What a user sees of a `guix` command, with what must differ between two runs removed:
/// transfer rates and the padding the client puts before them to right-align them, and where
/// `substitute: ` prefixes fall (the C++ daemon prefixes each piece it happened to read from
/// its agent's stderr).
fn transcript(out: &std::process::Output) -> String {
    let text = format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = text.replace("substitute: ", "");
    let mut norm = String::new();
    for word in text.split_inclusive(' ') {
        if word.trim_end().ends_with("B/s") && word.trim_end().chars().next().is_some_and(|c| c.is_ascii_digit()) {
            norm.push_str("RATE ");
        } else {
            norm.push_str(word);
        }
    }
    while norm.contains("  RATE") {
        norm = norm.replace("  RATE", " RATE");
    }
    norm
}

/// zstd nars of `paths`, with `guix publish`'s signed narinfos (from `port`) pointing at them:
/// the rig's `guix publish` cannot make zstd (its Guix lacks guile-zstd; so does its
/// `guix substitute`, which therefore never picks zstd).
fn zstd_server(src: &Source, port: u16, paths: &[&str]) -> u16 {
    let mut files = BTreeMap::new();
    for p in paths {
        let h = hash_part(p).to_owned();
        let (status, body) = http_get(port, &format!("/{h}.narinfo")).unwrap();
        assert_eq!(status, 200);
        let signed = String::from_utf8(body).unwrap();
        let nar = nar_of(&src.session.host_path(p).unwrap());
        let end = signed.find("\nURL:").map_or(signed.len(), |i| i + 1);
        let narinfo = format!("{}URL: nar/zstd/{h}\nCompression: zstd\n", &signed[..end]);
        files.insert(format!("/{h}.narinfo"), narinfo.into_bytes());
        files.insert(format!("/nar/zstd/{h}"), zstd::encode_all(&nar[..], 3).unwrap());
    }
    serve(files)
}

#[test]
fn every_compression_substitutes_the_closure_exactly() {
    let rig = rig();
    let src = Source::start(&rig);
    let closure = ["a", "b", "dir", "big", "top"].map(|k| src.path(k).to_owned());
    let closure: Vec<&str> = closure.iter().map(String::as_str).collect();
    let expected = infos(&src.session, &closure);
    let gzip_port = src.publish(&["gzip"]);
    for compression in ["0", "gzip", "lzip", "zstd"] {
        let port = match compression {
            "zstd" => zstd_server(&src, gzip_port, &closure),
            "gzip" => gzip_port,
            c => src.publish(&[c]),
        };
        let ours = ours_with(&rig, &format!("http://127.0.0.1:{port}"));
        let out = ours.exec_guix(&["build", src.path("top")]).unwrap();
        assert!(out.status.success(), "{compression}: {}", transcript(&out));
        assert_eq!(infos(&ours, &closure), expected, "{compression}: path infos differ");
        for p in &closure {
            let (a, b) = (src.session.host_path(p).unwrap(), ours.host_path(p).unwrap());
            assert_eq!(nar_of(&a), nar_of(&b), "{compression}: contents of {p} differ");
        }
        assert!(ours.scratch_leftovers().is_empty(), "{compression}: scratch entries left");
    }
}

#[test]
fn dry_run_reports_as_the_cxx_daemon_does() {
    let rig = rig();
    let src = Source::start(&rig);
    let port = src.publish(&["lzip", "gzip"]);
    let urls = format!("http://127.0.0.1:{port}");
    let (cxx, ours) = (cxx_with(&rig, &urls), ours_with(&rig, &urls));
    for args in
        [vec!["build", "--dry-run", src.path("top")], vec!["build", src.path("b")], vec!["build", src.path("top")]]
    {
        let c = transcript(&cxx.exec_guix(&args).unwrap());
        let o = transcript(&ours.exec_guix(&args).unwrap());
        assert_eq!(o, c, "guix {args:?}: ours differs from C++");
    }
    let closure: Vec<&str> = ["a", "b", "dir", "big", "top"].iter().map(|k| src.path(k)).collect();
    assert_eq!(infos(&ours, &closure), infos(&cxx, &closure));
    // Substitutes are deduplicated as C++ `optimisePath` does after a substitution: `big`
    // (a root file) and `dir`'s `data` linked with their `.links` entries, nothing else.
    let links = |s: &Session| {
        let out = s.exec(&["sh", "-c", LINKS]).unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (c, o) = (links(&cxx), links(&ours));
    assert_eq!(o, c, "the store's links differ from C++");
    assert_eq!(c.lines().filter(|l| l.starts_with("2 ")).count(), 4, "not what this test expects of C++:\n{c}");
}

/// Every `.links` entry and store file: link count and name, sorted.
const LINKS: &str = r#"cd /gnu/store && find .links -type f -printf '%n %P\n' | sort
find . -path ./.links -prune -o -path ./.rs-scratch -prune -o -type f ! -name '*.lock' -printf '%n %P\n' | sort -k2"#;

/// A stand-in substitute server ([`http::serve`]): fixed answers per path, 404 otherwise.
fn serve(files: BTreeMap<String, Vec<u8>>) -> u16 {
    serve_at(files, None)
}

/// [`serve`], sending bodies at `rate` bytes per second at most.
fn serve_at(files: BTreeMap<String, Vec<u8>>, rate: Option<usize>) -> u16 {
    http::serve(files.into_iter().map(|(p, b)| (p, http::Body::Bytes(b))).collect(), rate).unwrap()
}

fn hash_part(path: &str) -> &str {
    &path["/gnu/store/".len().."/gnu/store/".len() + 32]
}

/// `guix publish`'s narinfo for `path` cut after its signature, with one uncompressed nar.
fn narinfo_with_nar(signed: &str, nar_url: &str) -> String {
    let end = signed.find("\nURL:").map_or(signed.len(), |i| i + 1);
    format!("{}URL: {nar_url}\nCompression: none\n", &signed[..end])
}

/// Replaces the public key in a narinfo's signature by another (one not in the ACL).
fn with_foreign_key(narinfo: &str) -> String {
    use guix_formats::sexp::{base64_decode, base64_encode};
    let line = narinfo.lines().find(|l| l.starts_with("Signature: ")).unwrap();
    let b64 = line.rsplit(';').next().unwrap();
    let sexp = String::from_utf8(base64_decode(b64.as_bytes()).unwrap()).unwrap();
    let at = sexp.find("(q #").unwrap() + 4;
    let other = format!("{}{}{}", &sexp[..at], "1".repeat(64), &sexp[at + 64..]);
    let new_line = line.replace(b64, &base64_encode(other.as_bytes()));
    narinfo.replace(line, &new_line)
}

#[test]
fn untrusted_narinfos_and_bad_nars_are_refused_and_leave_nothing() {
    let rig = rig();
    let src = Source::start(&rig);
    let port = src.publish(&["gzip"]);
    let signed = |k: &str| src.signed_narinfo(port, k);
    let nar = |k: &str| src.nar(k);
    let mut files = BTreeMap::new();
    let mut put = |k: &str, narinfo: String, nar_bytes: Vec<u8>| {
        let h = hash_part(src.path(k)).to_owned();
        files.insert(format!("/{h}.narinfo"), narinfo_with_nar(&narinfo, &format!("nar/{h}")).into_bytes());
        files.insert(format!("/nar/{h}"), nar_bytes);
    };
    // e1: unsigned.
    let e1 = signed("e1");
    let unsigned: String = e1.lines().filter(|l| !l.starts_with("Signature:")).map(|l| format!("{l}\n")).collect();
    put("e1", unsigned, nar("e1"));
    // e2: e3's signature over e2's text: the signed hash does not match.
    let e3 = signed("e3");
    let sig3 = e3.lines().find(|l| l.starts_with("Signature:")).unwrap();
    let e2 = signed("e2");
    let sig2 = e2.lines().find(|l| l.starts_with("Signature:")).unwrap();
    put("e2", e2.replace(sig2, sig3), nar("e2"));
    // e3: signed by a key not in the ACL.
    put("e3", with_foreign_key(&e3), nar("e3"));
    // e4: corrupt nar (one byte of the file changed).
    let mut corrupt = nar("e4");
    let at = corrupt.windows(9).position(|w| w == b"standalon").unwrap();
    corrupt[at] = b'S';
    put("e4", signed("e4"), corrupt);
    // e5: truncated nar.
    let full = nar("e5");
    put("e5", signed("e5"), full[..full.len() / 2].to_vec());
    // e6: a larger nar than announced (the directory's, 100 kB; what follows the end of a nar
    // is not looked at, by Guix either).
    put("e6", signed("e6"), nar("dir"));
    // a: the control, served right.
    put("a", signed("a"), nar("a"));
    let bad_port = serve(files);
    let ours = ours_with(&rig, &format!("http://127.0.0.1:{bad_port}"));
    for k in ["e1", "e2", "e3", "e4", "e5", "e6"] {
        let p = src.path(k);
        let script = format!(
            r#"(use-modules (guix store))
(with-store s
  (display (if (has-substitutes? s "{p}") "substitutable" "none")) (newline)
  (display (catch #t (lambda () (ensure-path s "{p}") "ensured")
                     (lambda args "refused")))
  (newline)
  (display (valid-path? s "{p}")) (newline))"#
        );
        let out = ours.repl_ok(&script).unwrap_or_else(|e| panic!("{k}: {e}"));
        let lines: Vec<&str> = out.lines().collect();
        // The untrusted narinfos are no substitutes at all; the bad nars are announced by a
        // trusted narinfo but fail.
        let announced = if ["e1", "e2", "e3"].contains(&k) { "none" } else { "substitutable" };
        assert_eq!(lines, [announced, "refused", "#f"], "{k}");
        assert!(!ours.store_dir_on_host().join(&p["/gnu/store/".len()..]).exists(), "{k}: something at {p}");
        assert!(ours.scratch_leftovers().is_empty(), "{k}: scratch entries left");
    }
    let a = src.path("a");
    let out = ours
        .repl_ok(&format!(
            "(use-modules (guix store)) (with-store s (ensure-path s \"{a}\") (display (valid-path? s \"{a}\")))"
        ))
        .unwrap();
    assert_eq!(out.trim(), "#t", "the control item");
    assert_eq!(nar_of(&ours.host_path(a).unwrap()), nar("a"));
}

/// Our daemon substituting from `urls` with the substituter's stall limit at `stall_secs`
/// (`GUIX_DAEMON_RS_SUBSTITUTE_STALL`).
fn ours_with_stall(rig: &Rig, urls: &str, stall_secs: u32) -> Session {
    let (kind, mut opts) =
        guix_tests::ours::ours_kind_with_env(&[format!("GUIX_DAEMON_RS_SUBSTITUTE_STALL={stall_secs}")], &[]);
    opts.daemon_flags = Some(vec!["--build-users-group=guixbuild".into(), format!("--substitute-urls={urls}")]);
    Session::start_with(rig, kind, &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// Faults of the server: a nar behind a redirect is fetched; a nar that stops coming halfway,
/// and a server that never answers the nar's request, fail the substitution with a clear
/// error once the stall limit passes (2 s here), leaving nothing at the path nor in scratch
/// space; the control item is then substituted as usual.
#[test]
fn redirects_are_followed_and_stalled_downloads_fail_cleanly() {
    const STALL_SECS: u32 = 2;
    let rig = rig();
    let src = Source::start(&rig);
    let port = src.publish(&["gzip"]);
    let signed = |k: &str| src.signed_narinfo(port, k);
    let nar = |k: &str| src.nar(k);
    let mut routes = BTreeMap::new();
    // Item `k`'s narinfo, naming its nar `DIR/HASH`, and what that URL answers.
    let mut put = |k: &str, dir: &str, body: http::Body| {
        let h = hash_part(src.path(k)).to_owned();
        let url = format!("{dir}/{h}");
        routes.insert(format!("/{h}.narinfo"), http::Body::Bytes(narinfo_with_nar(&signed(k), &url).into_bytes()));
        routes.insert(format!("/{url}"), body);
    };
    // e1: the nar's URL redirects to where it is.
    let e1 = hash_part(src.path("e1")).to_owned();
    put("e1", "moved", http::Body::Redirect(format!("/nar/{e1}")));
    // e2: half the nar, then nothing.
    let full = nar("e2");
    let half = full[..full.len() / 2].to_vec();
    put("e2", "nar", http::Body::Stall { announced: full.len() as u64, sent: half });
    // e3: no answer to the nar's request.
    put("e3", "nar", http::Body::Silent);
    // a: the control.
    put("a", "nar", http::Body::Bytes(nar("a")));
    routes.insert(format!("/nar/{e1}"), http::Body::Bytes(nar("e1")));
    let bad_port = http::serve(routes, None).unwrap();
    let ours = ours_with_stall(&rig, &format!("http://127.0.0.1:{bad_port}"), STALL_SECS);

    let e1 = src.path("e1");
    let out = ours.exec_guix(&["build", e1]).unwrap();
    assert!(out.status.success(), "e1 behind a redirect: {}", transcript(&out));
    assert_eq!(nar_of(&ours.host_path(e1).unwrap()), nar("e1"), "e1's contents");
    for k in ["e2", "e3"] {
        let p = src.path(k);
        let started = Instant::now();
        let out = ours.exec_guix(&["build", p]).unwrap();
        let took = started.elapsed();
        let text = transcript(&out);
        assert!(!out.status.success(), "{k}: substituted from a stalled server: {text}");
        assert!(text.contains(&format!("no data for {STALL_SECS}s")), "{k}: no stall error: {text}");
        // A deadline, not a speed: without the limit this waits for the server's minute.
        assert!(took < Duration::from_secs(50), "{k}: took {took:?}");
        assert!(!ours.store_dir_on_host().join(&p["/gnu/store/".len()..]).exists(), "{k}: something at {p}");
        assert!(ours.scratch_leftovers().is_empty(), "{k}: scratch entries left");
        assert_eq!(infos(&ours, &[p]), format!("{p} #f\n"), "{k}: valid after a stalled download");
    }
    let a = src.path("a");
    let out = ours.exec_guix(&["build", a]).unwrap();
    assert!(out.status.success(), "the control: {}", transcript(&out));
    assert_eq!(nar_of(&ours.host_path(a).unwrap()), nar("a"));
}

/// Two derivations with busybox builders (`builds/prelude.scm` style): `dep` writes a random
/// uuid, `top` refers to `dep`'s output and adds another uuid, so an output that was built
/// again differs from the one substituted; `big` writes 24 MiB of random bytes. Printed:
/// `NAME DRV OUT` for each; with
/// `build` true the derivations are built too.
fn derivations_script(build: bool) -> String {
    format!(
        r#"(use-modules (guix store) (guix derivations) (ice-9 format))
(define bb-src "/tmp/subst-busybox")
(system* "rm" "-rf" bb-src)
(mkdir bb-src)
(mkdir (string-append bb-src "/bin"))
(copy-file "/bin/busybox" (string-append bb-src "/bin/busybox"))
(chmod (string-append bb-src "/bin/busybox") #o555)
(with-store s
  (let* ((bbdir (add-to-store s "busybox-static" #t "sha256" bb-src))
         (bb (string-append bbdir "/bin/busybox"))
         (mk (lambda (name script inputs env)
               (derivation s name bb (list "sh" "-c" (string-append "B=" bb "\n" script))
                           #:sources (list bbdir) #:inputs (map derivation-input inputs)
                           #:env-vars env)))
         (dep (mk "subst-drv-dep" "echo building dep; $B cat /proc/sys/kernel/random/uuid > $out" '() '()))
         (dep-out (derivation->output-path dep))
         (top (mk "subst-drv-top"
                  "echo building top; echo \"top of $in\" > $out; $B cat /proc/sys/kernel/random/uuid >> $out"
                  (list dep) `(("in" . ,dep-out))))
         (big (mk "subst-drv-big" "$B head -c 25165824 /dev/urandom > $out" '() '())))
    (when {build}
      (build-derivations s (list top big)))
    (format #t "dep ~a ~a~%" (derivation-file-name dep) dep-out)
    (format #t "top ~a ~a~%" (derivation-file-name top) (derivation->output-path top))
    (format #t "big ~a ~a~%" (derivation-file-name big) (derivation->output-path big))))
"#,
        build = if build { "#t" } else { "#f" }
    )
}

/// `name → (drv, out)` from [`derivations_script`]'s output.
fn drv_paths(out: &str) -> BTreeMap<String, (String, String)> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), (w.next()?.to_owned(), w.next()?.to_owned())))
        })
        .collect()
}

/// The derivations built by the C++ daemon of `src` (which `guix publish` then serves).
fn built_derivations(src: &Source) -> BTreeMap<String, (String, String)> {
    let d = drv_paths(&src.session.repl_ok(&derivations_script(true)).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(d.len(), 3, "{d:?}");
    d
}

/// The same derivations defined (not built) in `s`; their paths must be the source's.
fn define_derivations(s: &Session, expected: &BTreeMap<String, (String, String)>) {
    let d = drv_paths(&s.repl_ok(&derivations_script(false)).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(&d, expected, "the derivations differ between the stores");
}

#[test]
fn derivation_outputs_are_substituted_instead_of_built() {
    let rig = rig();
    let src = Source::start(&rig);
    let drvs = built_derivations(&src);
    let port = src.publish(&["gzip"]);
    let urls = format!("http://127.0.0.1:{port}");
    let (cxx, ours) = (cxx_with(&rig, &urls), ours_with(&rig, &urls));
    define_derivations(&cxx, &drvs);
    define_derivations(&ours, &drvs);
    let (top_drv, top_out) = &drvs["top"];
    let (_, dep_out) = &drvs["dep"];
    // What would be downloaded, then the build itself: the same through both daemons.
    for args in [vec!["build", "--dry-run", top_drv.as_str()], vec!["build", top_drv.as_str()]] {
        let c = cxx.exec_guix(&args).unwrap();
        let o = ours.exec_guix(&args).unwrap();
        assert!(o.status.success(), "guix {args:?} through ours: {}\n{}", transcript(&o), ours.daemon_log());
        assert_eq!(transcript(&o), transcript(&c), "guix {args:?}: ours differs from C++");
    }
    // Substituted, not built: the outputs are the source's (a build writes new uuids).
    for p in [top_out, dep_out] {
        let (a, b) = (src.session.host_path(p).unwrap(), ours.host_path(p).unwrap());
        assert_eq!(nar_of(&a), nar_of(&b), "{p} was built, not substituted");
    }
    assert_eq!(infos(&ours, &[top_out, dep_out]), infos(&src.session, &[top_out, dep_out]));
    // `guix build --repair` of a modified output: substituted again in repair mode (C++
    // `haveDerivation`'s substitution goals with repair), not rebuilt (the uuid stays the
    // source's), the same transcript as C++'s (but the progress bar: `without_progress_bar`).
    let repair = format!(
        "chmod u+w {top_out} && echo tampered >> {top_out} && guix build --repair {top_drv} && guix gc --verify=contents"
    );
    let c = without_progress_bar(&transcript(&cxx.exec(&["sh", "-c", &repair]).unwrap()));
    let o = without_progress_bar(&transcript(&ours.exec(&["sh", "-c", &repair]).unwrap()));
    assert!(c.contains("is corrupted or missing!") && c.contains("status Some(0)"), "{c}");
    assert_eq!(o, c, "guix build --repair: ours differs from C++");
    let (a, b) = (src.session.host_path(top_out).unwrap(), ours.host_path(top_out).unwrap());
    assert_eq!(nar_of(&a), nar_of(&b), "{top_out} was rebuilt, not substituted, by the repair");
    assert_eq!(infos(&ours, &[top_out, dep_out]), infos(&src.session, &[top_out, dep_out]));
    assert!(ours.scratch_leftovers().is_empty(), "scratch entries left");
}

#[test]
fn a_failed_substitute_fails_the_build_unless_fallback() {
    let rig = rig();
    let src = Source::start(&rig);
    let drvs = built_derivations(&src);
    let port = src.publish(&["gzip"]);
    let (top_drv, top_out) = drvs["top"].clone();
    let (_, dep_out) = drvs["dep"].clone();
    // A stand-in server: `guix publish`'s signed narinfos, dep's nar as it is, top's with one
    // byte of its uuid changed.
    let mut files = BTreeMap::new();
    for (p, corrupt) in [(&dep_out, false), (&top_out, true)] {
        let h = hash_part(p).to_owned();
        let (status, body) = http_get(port, &format!("/{h}.narinfo")).unwrap();
        assert_eq!(status, 200, "{p}");
        let signed = String::from_utf8(body).unwrap();
        let mut nar = nar_of(&src.session.host_path(p).unwrap());
        if corrupt {
            let at = nar.len() - 30;
            nar[at] = if nar[at] == b'0' { b'1' } else { b'0' };
        }
        files.insert(format!("/{h}.narinfo"), narinfo_with_nar(&signed, &format!("nar/{h}")).into_bytes());
        files.insert(format!("/nar/{h}"), nar);
    }
    let bad = format!("http://127.0.0.1:{}", serve(files));
    let (cxx, ours) = (cxx_with(&rig, &bad), ours_with(&rig, &bad));
    define_derivations(&cxx, &drvs);
    define_derivations(&ours, &drvs);
    let c = cxx.exec_guix(&["build", &top_drv]).unwrap();
    let o = ours.exec_guix(&["build", &top_drv]).unwrap();
    let error = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains("error:")).collect::<Vec<_>>().join("\n")
    };
    assert!(!c.status.success() && !o.status.success(), "C++: {}\nours: {}", transcript(&c), transcript(&o));
    assert_eq!(o.status.code(), c.status.code());
    assert_eq!(error(&o), error(&c), "ours: {}", transcript(&o));
    assert!(error(&o).contains("try `--fallback' to build derivation from source"), "{}", transcript(&o));
    // Nothing of top's output registered or left; dep's (a good substitute) is valid.
    let shown = infos(&ours, &[&top_out, &dep_out]);
    assert!(shown.contains(&format!("{top_out} #f")), "{shown}");
    assert!(!shown.contains(&format!("{dep_out} #f")), "{shown}");
    assert!(!ours.store_dir_on_host().join(&top_out["/gnu/store/".len()..]).exists(), "something at {top_out}");
    assert!(ours.scratch_leftovers().is_empty(), "scratch entries left");
    // With --fallback, top is built instead: a new uuid, not the source's.
    let o = ours.exec_guix(&["build", "--fallback", &top_drv]).unwrap();
    assert!(o.status.success(), "{}\n{}", transcript(&o), ours.daemon_log());
    let (a, b) = (src.session.host_path(&top_out).unwrap(), ours.host_path(&top_out).unwrap());
    assert_ne!(nar_of(&a), nar_of(&b), "with --fallback, {top_out} must have been built");
    assert!(String::from_utf8_lossy(&o.stderr).contains("building top") || transcript(&o).contains("building path"));
    assert!(ours.scratch_leftovers().is_empty(), "scratch entries left");
}

/// Waits until the substituter of `s` writes a scratch entry of at least `bytes` (a download
/// in progress).
fn wait_for_download(s: &Session, bytes: u64) {
    let dir = s.store_dir_on_host().join(".rs-scratch");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let size: u64 = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().contains("-subst-"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if size >= bytes {
            return;
        }
        assert!(Instant::now() < deadline, "no download of {bytes} bytes started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_substituter_killed_mid_download_leaves_nothing_and_the_request_completes() {
    let rig = rig();
    let src = Source::start(&rig);
    // 24 MiB as a plain item (and `big`, a derivation's output of 24 MiB).
    let bytes: Vec<u8> = (0..24usize << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(src.session.state_dir().join("tmp/subst-big"), bytes).unwrap();
    let plain = src
        .session
        .repl_ok(r#"(use-modules (guix store)) (with-store s (display (add-to-store s "subst-big" #f "sha256" "/tmp/subst-big")))"#)
        .unwrap_or_else(|e| panic!("{e}"));
    let drvs = built_derivations(&src);
    let (big_drv, big_out) = drvs["big"].clone();
    let port = src.publish(&["gzip"]);
    // Served uncompressed at 3 MiB/s: downloads of 8 s, killed after 3 MiB.
    let mut files = BTreeMap::new();
    for p in [&plain, &big_out] {
        let h = hash_part(p).to_owned();
        let (status, body) = http_get(port, &format!("/{h}.narinfo")).unwrap();
        assert_eq!(status, 200, "{p}");
        let signed = String::from_utf8(body).unwrap();
        files.insert(format!("/{h}.narinfo"), narinfo_with_nar(&signed, &format!("nar/{h}")).into_bytes());
        files.insert(format!("/nar/{h}"), nar_of(&src.session.host_path(p).unwrap()));
    }
    let slow = format!("http://127.0.0.1:{}", serve_at(files, Some(3 << 20)));
    let ours = ours_with(&rig, &slow);
    define_derivations(&ours, &drvs);
    // Through socket-front (a plain item), then through the builder (the derivation, whose
    // output the builder substitutes): the substituter is killed in the middle of each.
    let out = std::thread::scope(|scope| {
        let client = scope.spawn(|| ours.exec_guix(&["build", &plain]).unwrap());
        wait_for_download(&ours, 3 << 20);
        guix_tests::ours::kill_and_wait(&ours, "substituter");
        client.join().unwrap()
    });
    assert!(out.status.success(), "guix build {plain}: {}\n{}", transcript(&out), ours.daemon_log());
    assert_eq!(nar_of(&ours.host_path(&plain).unwrap()), nar_of(&src.session.host_path(&plain).unwrap()));
    assert!(ours.scratch_leftovers().is_empty(), "scratch entries left after the plain item");
    let out = std::thread::scope(|scope| {
        let client = scope.spawn(|| ours.exec_guix(&["build", &big_drv]).unwrap());
        wait_for_download(&ours, 3 << 20);
        guix_tests::ours::kill_and_wait(&ours, "substituter");
        client.join().unwrap()
    });
    assert!(out.status.success(), "guix build {big_drv}: {}\n{}", transcript(&out), ours.daemon_log());
    let (a, b) = (src.session.host_path(&big_out).unwrap(), ours.host_path(&big_out).unwrap());
    assert!(nar_of(&a) == nar_of(&b), "{big_out} was built, not substituted");
    assert!(ours.scratch_leftovers().is_empty(), "scratch entries left after the derivation");
}

/// Repair by substitution (C++ `repairPath`: a `SubstitutionGoal` in repair mode), through
/// the real client against ours and the C++ daemon, both fresh, substituting from the same
/// `guix publish`: `top`'s closure substituted, then a file of `dir` modified and
/// `guix gc --verify=contents,repair`, then `a` removed (`b` refers to it) and
/// `guix gc --verify=repair`. The transcripts must be the same; afterwards every NAR hash is
/// the database's (`guix gc --verify=contents` exits 0) and the files are the source's.
#[test]
fn repair_by_substitution_matches_cxx() {
    let rig = rig();
    let src = Source::start(&rig);
    let port = src.publish(&["gzip"]);
    let urls = format!("http://127.0.0.1:{port}");
    let (cxx, ours) = (cxx_with(&rig, &urls), ours_with(&rig, &urls));
    let (dir, a) = (src.path("dir"), src.path("a"));
    let steps = [
        format!("guix build {}", src.path("top")),
        format!("chmod -R u+w {dir} && echo tampered >> {dir}/bin/hello && guix gc --verify=contents,repair"),
        format!("rm -f {a} && guix gc --verify=repair"),
        "guix gc --verify=contents".to_owned(),
    ];
    for step in &steps {
        let c = without_progress_bar(&transcript(&cxx.exec(&["sh", "-c", step]).unwrap()));
        let o = without_progress_bar(&transcript(&ours.exec(&["sh", "-c", step]).unwrap()));
        assert_eq!(o, c, "{step}: ours differs from C++");
        if step.contains("repair") {
            assert!(c.contains("was modified!") || c.contains("still has valid referrers"), "{step}: {c}");
        }
    }
    for p in [dir, a] {
        let (s, o) = (src.session.host_path(p).unwrap(), ours.host_path(p).unwrap());
        assert_eq!(nar_of(&s), nar_of(&o), "contents of {p} differ from the source's");
    }
    let closure: Vec<&str> = ["a", "b", "dir", "top"].iter().map(|k| src.path(k)).collect();
    assert_eq!(infos(&ours, &closure), infos(&cxx, &closure));
    assert!(ours.scratch_leftovers().is_empty(), "scratch entries left");
}

/// `text` without the progress bar `guix substitute` redraws (`\r\x1b[K` and the bar, up to
/// the next `\r` or newline), which `guix gc --verify=…,repair` shows and our substituter does
/// not draw (ARCHITECTURE.md, substituter: a known difference, not repair's).
fn without_progress_bar(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("\r\x1b[K") {
        out.push_str(&rest[..i]);
        let bar = &rest[i + 4..];
        rest = &bar[bar.find(['\r', '\n']).unwrap_or(bar.len())..];
    }
    out.push_str(rest);
    out
}

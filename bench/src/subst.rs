//! The `substitute` scenario: substitution from one substitute server, on fresh stores.
//!
//! * A closure of many small paths (499 texts of 1 KiB and one referring to all of them),
//!   made by a C++ session and served by the rig's real `guix publish` (gzip): `guix build
//!   TOP` on a fresh store, through the C++ daemon (its `guix substitute`) and through ours,
//!   alternating, each repetition in fresh sessions. Target: ours ≤ 0.5x.
//! * One big path (500 MiB; 50 MiB with `--quick`) served with zstd. The rig's `guix
//!   publish` cannot compress with zstd and its `guix substitute` cannot decompress it, so
//!   the server is a stand-in in this process (the nar compressed here, `guix publish`'s
//!   signed narinfo pointing at it) and the C++ column is the floor instead: `curl | zstd -d`
//!   of the same URL onto the store's file system, measured beside each run of ours.
//!   Target: ours within 1.2x of the floor. A third figure takes the `guix` client's own
//!   time out (Guile start-up, its queries: the same `guix build` again once the path is
//!   valid), which the floor does not pay.
//!
//! Nothing is asserted about timings.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use guix_tests::http::{self, Body};
use guix_tests::{DaemonKind, Rig, Session, SessionOptions};

use crate::build::Kind;
use crate::scenarios::median;

type Res<T> = Result<T, String>;

/// Small paths in the closure (with `--quick`).
pub const PATHS: usize = 500;
pub const QUICK_PATHS: usize = 50;
/// The big path's size in MiB (with `--quick`).
pub const BIG_MIB: usize = 500;
pub const QUICK_BIG_MIB: usize = 50;

pub fn labels(paths: usize, big_mib: usize) -> [String; 3] {
    [
        format!("substitute a closure of {paths} small paths (gzip)"),
        format!("substitute one {big_mib} MiB path, zstd (C++ column: curl | zstd -d)"),
        "  ours without the client's own time (guix build of a valid path)".into(),
    ]
}

/// The source: a C++ session with the items, and `guix publish` serving them.
struct Source {
    session: Session,
    port: u16,
    top: String,
    big: String,
}

fn daemon_flags(urls: &str) -> Vec<String> {
    vec!["--build-users-group=guixbuild".into(), format!("--substitute-urls={urls}")]
}

fn http_ok(url: &str) -> bool {
    Command::new("curl").args(["-sf", "-o", "/dev/null", url]).status().is_ok_and(|s| s.success())
}

fn curl(url: &str) -> Res<Vec<u8>> {
    let out = Command::new("curl").args(["-sf", url]).output().map_err(|e| format!("curl: {e}"))?;
    if !out.status.success() {
        return Err(format!("curl {url}: {:?}", out.status));
    }
    Ok(out.stdout)
}

impl Source {
    fn start(rig: &Rig, paths: usize, big_mib: usize) -> Res<Source> {
        let session = rig.start(DaemonKind::Cxx).map_err(|e| e.to_string())?;
        // Compressible but not trivially: bytes of a small alphabet from an LCG.
        let mut x: u32 = 12345;
        let big: Vec<u8> = (0..big_mib << 20)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b"abcdefghijklmnop"[(x >> 27) as usize & 15]
            })
            .collect();
        std::fs::write(session.state_dir().join("tmp/bench-big"), big).map_err(|e| e.to_string())?;
        let script = format!(
            r#"(use-modules (guix store) (ice-9 format))
(with-store s
  (let* ((leaves (map (lambda (i) (add-text-to-store s (format #f "bench-leaf-~a" i)
                                                     (format #f "leaf ~a ~a~%" i (make-string 1024 #\x))))
                      (iota {n})))
         (top (add-text-to-store s "bench-top" (string-join leaves " ") leaves)))
    (format #t "~a~%~a~%" top (add-to-store s "bench-big" #f "sha256" "/tmp/bench-big"))))"#,
            n = paths - 1
        );
        let out = session.repl_ok(&script).map_err(|e| e.to_string())?;
        let mut lines = out.lines();
        let (top, big) = match (lines.next(), lines.next()) {
            (Some(t), Some(b)) => (t.to_owned(), b.to_owned()),
            _ => return Err(format!("the source items: {out}")),
        };
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let cmd = format!("guix publish --listen=127.0.0.1 --port={port} -C gzip > /tmp/publish-{port}.log 2>&1 &");
        session.exec(&["sh", "-c", &cmd]).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http_ok(&format!("http://127.0.0.1:{port}/nix-cache-info")) {
            if Instant::now() > deadline {
                return Err("guix publish did not come up".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(Source { session, port, top, big })
    }
}

/// The time of `guix build PATH` in a fresh session of `kind` substituting from `urls`, and
/// of the same command again once PATH is valid (the client's own time: start-up, queries).
fn substitute_once(rig: &Rig, kind: &(DaemonKind, SessionOptions), urls: &str, path: &str) -> Res<(f64, f64)> {
    let mut opts = kind.1.clone();
    opts.daemon_flags = Some(daemon_flags(urls));
    let session = Session::start_with(rig, kind.0.clone(), &opts).map_err(|e| format!("daemon did not start: {e}"))?;
    let start = Instant::now();
    let out = session.exec_guix(&["build", path]).map_err(|e| e.to_string())?;
    let took = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("guix build {path}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let start = Instant::now();
    let again = session.exec_guix(&["build", path]).map_err(|e| e.to_string())?;
    let noop = start.elapsed().as_secs_f64();
    if !again.status.success() {
        return Err(format!("guix build {path} again: {}", String::from_utf8_lossy(&again.stderr).trim()));
    }
    Ok((took, noop))
}

/// The stand-in zstd server: the narinfo and the compressed nar (a file, streamed).
fn serve_zstd(narinfo_path: String, narinfo: Vec<u8>, nar_path: String, nar_file: PathBuf) -> Res<u16> {
    let routes = [(narinfo_path, Body::Bytes(narinfo)), (nar_path, Body::File(nar_file))].into_iter().collect();
    http::serve(routes, None).map_err(|e| e.to_string())
}

/// The nar of the big item compressed with zstd, and a server for it; the nar's URL.
fn zstd_source(src: &Source) -> Res<(u16, String)> {
    let hash = src.big.strip_prefix("/gnu/store/").and_then(|b| b.get(..32)).ok_or("bad store path")?.to_owned();
    let signed = String::from_utf8_lossy(&curl(&format!("http://127.0.0.1:{}/{hash}.narinfo", src.port))?).into_owned();
    let end = signed.find("\nURL:").map_or(signed.len(), |i| i + 1);
    let narinfo = format!("{}URL: nar/zstd/{hash}\nCompression: zstd\n", &signed[..end]);
    let host = src.session.host_path(&src.big).ok_or("the big item is not on the host")?;
    let mut nar = Vec::new();
    guix_formats::nar::dump_path(&host, &mut nar).map_err(|e| e.to_string())?;
    let file = zstd_file();
    let compressed = zstd::encode_all(&nar[..], 3).map_err(|e| e.to_string())?;
    std::fs::write(&file, compressed).map_err(|e| e.to_string())?;
    let nar_path = format!("/nar/zstd/{hash}");
    let port = serve_zstd(format!("/{hash}.narinfo"), narinfo.into_bytes(), nar_path.clone(), file)?;
    Ok((port, format!("http://127.0.0.1:{port}{nar_path}")))
}

/// Where the compressed nar is kept while the scenario runs.
fn zstd_file() -> PathBuf {
    std::env::temp_dir().join(format!("guix-bench-big-{}.nar.zst", std::process::id()))
}

/// `curl URL | zstd -d` into a file on `dir`'s file system; seconds.
fn floor_once(url: &str, dir: &Path) -> Res<f64> {
    let out = dir.join(format!(".bench-floor-{}", std::process::id()));
    let start = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("curl -sf '{url}' | zstd -d -q -f -o '{}'", out.display()))
        .status()
        .map_err(|e| e.to_string())?;
    let took = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&out);
    if !status.success() {
        return Err(format!("curl | zstd -d: {status:?}"));
    }
    Ok(took)
}

/// Both figures: (C++ or floor, ours) per label of [`labels`].
pub fn measure(rig: &Rig, ours: &Kind, only: Option<&str>, reps: usize, quick: bool) -> Vec<(Res<f64>, Res<f64>)> {
    let (paths, mib) = if quick { (QUICK_PATHS, QUICK_BIG_MIB) } else { (PATHS, BIG_MIB) };
    let src = match Source::start(rig, paths, mib) {
        Ok(s) => s,
        Err(e) => return vec![(Err(e.clone()), Err(e.clone())); 3],
    };
    let urls = format!("http://127.0.0.1:{}", src.port);
    let cxx: Kind = Ok((DaemonKind::Cxx, SessionOptions::default()));
    // The closure: the daemons alternate, who goes first too.
    let (mut c, mut o) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let mut order = [("cxx", &cxx), ("ours", ours)];
        if rep % 2 == 1 {
            order.reverse();
        }
        for (name, kind) in order {
            let r = if only.is_some_and(|x| x != name) {
                Err("skipped (--only)".to_owned())
            } else {
                kind.as_ref().map_err(Clone::clone).and_then(|k| substitute_once(rig, k, &urls, &src.top)).map(|t| t.0)
            };
            if let Ok(t) = &r {
                eprintln!("guix-bench: substitute {paths} paths rep {}: {name} {t:.2} s", rep + 1);
            }
            if name == "cxx" { &mut c } else { &mut o }.push(r);
        }
    }
    let closure = (median(c), median(o));
    // The big zstd path: ours, and the floor measured right after each run.
    let dir = src.session.store_dir_on_host();
    let mut big_net: (Res<f64>, Res<f64>) = (Err("not measured".into()), Err("not measured".into()));
    let big = match zstd_source(&src) {
        Err(e) => (Err(e.clone()), Err(e)),
        Ok((port, nar_url)) => {
            let urls = format!("http://127.0.0.1:{port}");
            let (mut f, mut o, mut net) = (Vec::new(), Vec::new(), Vec::new());
            for rep in 0..reps.min(3) {
                let r = if only == Some("cxx") {
                    Err("skipped (--only)".to_owned())
                } else {
                    ours.as_ref().map_err(Clone::clone).and_then(|k| substitute_once(rig, k, &urls, &src.big))
                };
                let floor = floor_once(&nar_url, &dir);
                if let (Ok((a, noop)), Ok(b)) = (&r, &floor) {
                    eprintln!(
                        "guix-bench: substitute {mib} MiB zstd rep {}: ours {a:.2} s (client alone {noop:.2} s), floor {b:.2} s",
                        rep + 1
                    );
                }
                o.push(r.clone().map(|t| t.0));
                net.push(r.map(|(t, noop)| t - noop));
                f.push(floor);
            }
            let _ = std::fs::remove_file(zstd_file());
            let floor = median(f);
            big_net = (floor.clone(), median(net));
            (floor, median(o))
        }
    };
    vec![closure, big, big_net]
}

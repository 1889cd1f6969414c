//! The `trivial-builds` scenario: 200 independent trivial derivations (`echo N > $out`, each in
//! a chroot as a build user) built with one `build-derivations` call of the real client, with
//! the daemon started with `--max-jobs=2`. What it measures is the daemon's cost per build:
//! starting a chroot build and registering its output, twice at a time.
//!
//! Each repetition is a fresh session per daemon, alternating who goes first. The derivations
//! are written first (not timed); the script then times `build-derivations` itself
//! (`get-internal-real-time`), so `guix repl`'s start-up is not in the figure.

use guix_tests::{DaemonKind, Rig, Session, SessionOptions};

use crate::build::Kind;
use crate::scenarios::median;

type Res<T> = Result<T, String>;

/// How many derivations.
pub const BUILDS: usize = 200;
pub const QUICK_BUILDS: usize = 20;

fn script(n: usize, rep: usize) -> String {
    format!(
        r#"(use-modules (guix store) (guix derivations))
(define dir "/tmp/bench-busybox")
(system* "rm" "-rf" dir)
(mkdir dir) (mkdir (string-append dir "/bin"))
(copy-file "/bin/busybox" (string-append dir "/bin/busybox"))
(chmod (string-append dir "/bin/busybox") #o555)
(with-store store
  (set-build-options store #:use-substitutes? #f #:max-build-jobs 2)
  (let* ((bbdir (add-to-store store "busybox-static" #t "sha256" dir))
         (bb (string-append bbdir "/bin/busybox"))
         (drvs (map (lambda (i)
                      (derivation store (format #f "trivial-~a-~a" {rep} i) bb
                                  (list "sh" "-c" (format #f "echo ~a > $out" i))
                                  #:sources (list bbdir)))
                    (iota {n})))
         (start (get-internal-real-time)))
    (build-derivations store drvs)
    (format #t "~a~%" (exact->inexact (/ (- (get-internal-real-time) start)
                                          internal-time-units-per-second)))))
"#
    )
}

/// Seconds `build-derivations` took in a fresh session of `kind`.
fn run_once(rig: &Rig, kind: &(DaemonKind, SessionOptions), n: usize, rep: usize) -> Res<f64> {
    let mut opts = kind.1.clone();
    opts.extra_daemon_flags.push("--max-jobs=2".into());
    let session = Session::start_with(rig, kind.0.clone(), &opts).map_err(|e| format!("daemon did not start: {e}"))?;
    let out = session.repl_ok(&script(n, rep)).map_err(|e| e.to_string())?;
    out.trim().lines().last().and_then(|l| l.trim().parse::<f64>().ok()).ok_or_else(|| format!("no time in `{out}'"))
}

/// `reps` repetitions of each daemon, alternating ([`crate::build::alternate_runs`]); the
/// median seconds of each.
pub fn alternate(
    rig: &Rig,
    cxx: &Kind,
    ours: &Kind,
    only: Option<&str>,
    n: usize,
    reps: usize,
) -> (Res<f64>, Res<f64>) {
    let [c, o] = crate::build::alternate_runs(
        rig,
        cxx,
        ours,
        only,
        reps,
        |rig, k, rep| run_once(rig, k, n, rep),
        |rep, c, o| {
            eprintln!("guix-bench: trivial-builds rep {}: C++ {c:.2} s, ours {o:.2} s ({:.2}x)", rep + 1, o / c);
            None
        },
    );
    (median(c), median(o))
}

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

fn script(n: usize, rep: usize, jobs: usize) -> String {
    format!(
        r#"(use-modules (guix store) (guix derivations))
(define dir "/tmp/bench-busybox")
(system* "rm" "-rf" dir)
(mkdir dir) (mkdir (string-append dir "/bin"))
(copy-file "/bin/busybox" (string-append dir "/bin/busybox"))
(chmod (string-append dir "/bin/busybox") #o555)
(with-store store
  (set-build-options store #:use-substitutes? #f #:max-build-jobs {jobs})
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

/// Seconds `build-derivations` took in a fresh session of `kind` started with `flags` more,
/// and the session's daemon log.
fn run_once_with(
    rig: &Rig,
    kind: &(DaemonKind, SessionOptions),
    flags: &[&str],
    jobs: usize,
    n: usize,
    rep: usize,
) -> Res<(f64, String)> {
    let mut opts = kind.1.clone();
    opts.extra_daemon_flags.push(format!("--max-jobs={jobs}"));
    opts.extra_daemon_flags.extend(flags.iter().map(|f| (*f).to_owned()));
    let session = Session::start_with(rig, kind.0.clone(), &opts).map_err(|e| format!("daemon did not start: {e}"))?;
    let out = session.repl_ok(&script(n, rep, jobs)).map_err(|e| e.to_string())?;
    let secs = out
        .trim()
        .lines()
        .last()
        .and_then(|l| l.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("no time in `{out}'"))?;
    Ok((secs, session.daemon_log()))
}

fn run_once(rig: &Rig, kind: &(DaemonKind, SessionOptions), n: usize, rep: usize) -> Res<f64> {
    run_once_with(rig, kind, &[], 2, n, rep).map(|(secs, _)| secs)
}

/// The two halves of our daemon's own time per build, in ms, from the builder's `--debug`
/// lines (`timing DRV: X ms from slot to builder start, Y ms from builder exit to valid
/// outputs`): one pair per build found in `log`.
fn own_times(log: &str) -> Vec<(f64, f64)> {
    log.lines()
        .filter_map(|l| {
            const TAG: &str = "guix-builder: timing ";
            let rest = &l[l.find(TAG)? + TAG.len()..];
            let (_, rest) = rest.split_once(": ")?;
            let (before, rest) = rest.split_once(" ms from slot to builder start, ")?;
            let (after, _) = rest.split_once(" ms from builder exit to valid outputs")?;
            Some((before.trim().parse().ok()?, after.trim().parse().ok()?))
        })
        .collect()
}

/// Our daemon's own time per build: one more run of ours, with `--debug` (so the timed runs
/// above are not slowed by the debug output) and one build at a time (so that a build's
/// figure is not its wait for the CPU the other build holds on two cores), and the medians
/// over its builds, in ms, of slot → builder exec and builder exit → valid outputs.
pub fn own_time(rig: &Rig, ours: &Kind, n: usize) -> (Res<f64>, Res<f64>) {
    let run = ours.as_ref().map_err(Clone::clone).and_then(|k| run_once_with(rig, k, &["--debug"], 1, n, 1000));
    let times = run.and_then(|(_, log)| {
        let t = own_times(&log);
        if t.len() == n {
            Ok(t)
        } else {
            Err(format!("{} timing lines for {n} builds in the daemon log", t.len()))
        }
    });
    match times {
        Ok(t) => {
            let (before, after): (Vec<f64>, Vec<f64>) = t.into_iter().unzip();
            (median(before.into_iter().map(Ok).collect()), median(after.into_iter().map(Ok).collect()))
        }
        Err(e) => (Err(e.clone()), Err(e)),
    }
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

#[cfg(test)]
mod tests {
    use super::own_times;

    #[test]
    fn own_times_reads_the_builders_debug_lines() {
        let log = "guix-socket-front: something else\n\
            [builder] guix-builder: timing /gnu/store/abc-x.drv: 3.25 ms from slot to builder start, 1.50 ms from builder exit to valid outputs\n\
            guix-builder: timing /gnu/store/def-y.drv: 4.00 ms from slot to builder start, 2.00 ms from builder exit to valid outputs\n\
            guix-builder: timing /gnu/store/bad.drv: x ms from slot to builder start, 2 ms from builder exit to valid outputs\n";
        assert_eq!(own_times(log), vec![(3.25, 1.5), (4.0, 2.0)]);
    }
}

//! Shared driver of the `compat_build_*` tests: real builds (busybox builders, see
//! `prelude.scm`) run by the real `guix` client against the C++ daemon and ours, each in its own
//! fresh rig session, in parallel.
//!
//! Every step returns a transcript (status, stdout, stderr) instead of failing, so a daemon that
//! cannot build shows up as a readable difference from the C++ transcript, not as a panic in
//! the middle of a test.
//!
//! `GUIX_TESTS_BUILDS_CXX_TWICE=1` runs the C++ daemon in both sessions: the comparison then
//! checks that the tests themselves are deterministic (what they normalise is enough), which is
//! how they were checked while our builder did not exist yet. `GUIX_TESTS_BUILDS_SHOW=1` prints
//! the C++ transcripts the tests check.

#![allow(dead_code)] // each compat_build_* file uses a different part of this module

use std::thread;
use std::time::{Duration, Instant};

use guix_tests::{Rig, Session, SessionOptions};

use crate::common::{self, transcript, Daemon};

/// Defines busybox, every test derivation and the Guile helpers; writes `/tmp/vars`.
pub const PRELUDE: &str = include_str!("prelude.scm");

/// The daemon flags of the rig's default sessions, which the tests that add flags extend.
const DEFAULT_FLAGS: [&str; 2] = ["--build-users-group=guixbuild", "--no-substitutes"];

/// The daemon run in place of ours: ours, or the C++ one with `GUIX_TESTS_BUILDS_CXX_TWICE=1`.
pub fn second_daemon() -> Daemon {
    match std::env::var("GUIX_TESTS_BUILDS_CXX_TWICE") {
        Ok(v) if v == "1" => Daemon::Cxx,
        _ => Daemon::Ours,
    }
}

/// Runs `f` for the C++ daemon and for ours (see [`second_daemon`]), in two threads; returns
/// (C++ result, our result) and prints how long each took.
pub fn on_both<T, F>(what: &str, f: F) -> (T, T)
where
    T: Send,
    F: Fn(&Rig, Daemon) -> T + Sync,
{
    let rig = common::rig();
    let timed = |d: Daemon| {
        let t = Instant::now();
        let r = f(&rig, d);
        (r, t.elapsed())
    };
    let ((cxx, tc), (ours, to)): ((T, Duration), (T, Duration)) = thread::scope(|scope| {
        let cxx = scope.spawn(|| timed(Daemon::Cxx));
        let ours = timed(second_daemon());
        let cxx = cxx.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (cxx, ours)
    });
    eprintln!("{what}: C++ daemon {tc:.2?}, {} {to:.2?}", second_daemon());
    (cxx, ours)
}

/// A fresh session of `daemon` with `extra` daemon flags after the default ones.
pub fn start_with_flags(rig: &Rig, daemon: Daemon, extra: &[&str]) -> Session {
    if extra.is_empty() {
        return common::start(rig, daemon);
    }
    let flags: Vec<String> = DEFAULT_FLAGS.iter().chain(extra).map(|s| s.to_string()).collect();
    let s = match daemon {
        Daemon::Cxx => {
            let opts = SessionOptions { daemon_flags: Some(flags), ..SessionOptions::default() };
            Session::start_with(rig, guix_tests::DaemonKind::Cxx, &opts)
        }
        Daemon::Ours => {
            let (kind, mut opts) = guix_tests::ours_kind(&[]);
            opts.daemon_flags = Some(flags);
            Session::start_with(rig, kind, &opts)
        }
    };
    s.unwrap_or_else(|e| panic!("starting a {daemon} session with {extra:?}: {e}"))
}

/// A session with the prelude run (busybox in the store, `/tmp/vars` written). The prelude
/// builds nothing, so it must succeed under any daemon that stores files.
pub fn session(rig: &Rig, daemon: Daemon, extra_flags: &[&str]) -> Session {
    let s = start_with_flags(rig, daemon, extra_flags);
    common::repl(&s, daemon, PRELUDE);
    s
}

/// `guix repl` of the prelude followed by `body`: its transcript (a failing script is a
/// transcript too).
pub fn repl(s: &Session, body: &str) -> String {
    let out = s.repl(&format!("{PRELUDE}\n{body}")).unwrap_or_else(|e| panic!("{e}"));
    transcript(&out)
}

/// Shell functions of [`sh`]: `b ARGS` runs `guix build --no-substitutes ARGS` framed by
/// `== guix build ARGS` and `status: N`; `log DRV` prints the log path `guix build --log-file`
/// gives, the log file's mode and owner, and its contents (decompressed).
const SH_FUNCTIONS: &str = r#"
b() { echo "== guix build $*"; guix build --no-substitutes "$@"; echo "status: $?"; }
log() {
  l=$(guix build --log-file "$1"); echo "== log of $1: $l (status $?)"
  [ -f "$l" ] || return 0
  stat -c '%A %U %G' "$l"
  case $l in *.gz) zcat "$l";; *.bz2) busybox bzcat "$l";; *) cat "$l";; esac
}
"#;

/// The shell script `body` with `/tmp/vars` sourced and the functions `b` and `log` (see
/// [`SH_FUNCTIONS`]), stderr merged into stdout.
pub fn sh(s: &Session, body: &str) -> String {
    common::sh(s, &format!("set -u\n. /tmp/vars\n{SH_FUNCTIONS}\n{body}"))
}

/// Replaces the last field of `@ build-started DRV - SYSTEM LOG PID` lines and the PID of
/// `@ build-log PID LEN` lines by `<pid>`: a process id of the daemon's machine, which differs
/// between two runs.
pub fn normalise_pids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let fields: Vec<&str> = body.split(' ').collect();
        if body.starts_with("@ build-started ") && fields.len() == 7 {
            out.push_str(&fields[..6].join(" "));
            out.push_str(" <pid>");
        } else if body.starts_with("@ build-log ") && fields.len() == 4 {
            out.push_str(&format!("@ build-log <pid> {}", fields[3]));
        } else {
            out.push_str(body);
        }
        out.push_str(nl);
    }
    out
}

/// Asserts that `text` (a C++ transcript) contains every one of `needles`: the facts the test
/// relies on, so that a change of the C++ side (or of the rig) cannot make a comparison vacuous.
#[track_caller]
pub fn assert_cxx_has(what: &str, text: &str, needles: &[&str]) {
    if std::env::var_os("GUIX_TESTS_BUILDS_SHOW").is_some() {
        eprintln!("=== {what} (C++) ===\n{text}");
    }
    for n in needles {
        assert!(text.contains(n), "{what}: the C++ daemon's transcript lacks {n:?}:\n{text}");
    }
}

/// Asserts two transcripts are equal; if not, panics with a line diff (`-` C++, `+` ours, two
/// lines of context, `@@ C++ line N` headers) followed by both transcripts in full.
#[track_caller]
pub fn assert_same(what: &str, cxx: &str, ours: &str) {
    if cxx != ours {
        panic!(
            "{what}: our daemon differs from the C++ daemon (- C++, + ours)\n{}\n=== C++ ===\n{cxx}\n=== ours ===\n{ours}",
            line_diff(cxx, ours)
        );
    }
}

/// Like [`assert_same`] for several comparisons of one test: every one that differs is shown
/// (diffs first, then the transcripts), so one run tells everything that broke.
#[track_caller]
pub fn assert_all_same(parts: &[(&str, &str, &str)]) {
    let differing: Vec<&(&str, &str, &str)> = parts.iter().filter(|(_, c, o)| c != o).collect();
    if differing.is_empty() {
        return;
    }
    let mut msg = String::new();
    for (what, cxx, ours) in &differing {
        msg.push_str(&format!(
            "{what}: our daemon differs from the C++ daemon (- C++, + ours)\n{}\n",
            line_diff(cxx, ours)
        ));
    }
    for (what, cxx, ours) in &differing {
        msg.push_str(&format!("=== {what}: C++ ===\n{cxx}\n=== {what}: ours ===\n{ours}\n"));
    }
    panic!("{msg}");
}

/// A line diff of `a` and `b` (longest common subsequence), with two lines of context.
pub fn line_diff(a: &str, b: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    // The edit script: (' ' | '-' | '+', line number in a, text).
    let mut ops: Vec<(char, usize, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', i, a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, a[i]));
            i += 1;
        } else {
            ops.push(('+', i, b[j]));
            j += 1;
        }
    }
    const CONTEXT: usize = 2;
    let changed: Vec<bool> = ops.iter().map(|(k, _, _)| *k != ' ').collect();
    let near = |x: usize| {
        let lo = x.saturating_sub(CONTEXT);
        let hi = (x + CONTEXT + 1).min(ops.len());
        changed[lo..hi].iter().any(|c| *c)
    };
    let mut out = String::new();
    let mut last_shown: Option<usize> = None;
    for (x, (kind, line, text)) in ops.iter().enumerate() {
        if !near(x) {
            continue;
        }
        if last_shown.is_none_or(|l| l + 1 != x) {
            out.push_str(&format!("@@ C++ line {}\n", line + 1));
        }
        out.push_str(&format!("{kind} {text}\n"));
        last_shown = Some(x);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{line_diff, normalise_pids};

    #[test]
    fn diff_shows_changes_with_context() {
        let d = line_diff("a\nb\nc\nd\ne\nf\ng\n", "a\nb\nc\nX\ne\nf\ng\nh\n");
        assert_eq!(d, "@@ C++ line 2\n  b\n  c\n- d\n+ X\n  e\n  f\n  g\n+ h\n");
        assert_eq!(line_diff("same\n", "same\n"), "");
    }

    #[test]
    fn pids_are_normalised() {
        let t = "@ build-started /gnu/store/x.drv - x86_64-linux /var/log/guix/drvs/x//y.drv.gz 278\n\
                 @ build-log 12 5\nhello\n@ build-succeeded /gnu/store/x.drv -\n";
        assert_eq!(
            normalise_pids(t),
            "@ build-started /gnu/store/x.drv - x86_64-linux /var/log/guix/drvs/x//y.drv.gz <pid>\n\
             @ build-log <pid> 5\nhello\n@ build-succeeded /gnu/store/x.drv -\n"
        );
    }
}

//! Failing builds with the real `guix` client, the C++ daemon and ours in parallel sessions on
//! fresh stores (derivations of `builds/prelude.scm`).
//!
//! Each failure is run twice: by `guix build DRV` (what a user sees: the client's messages and
//! exit status) and by `build-derivations` in `guix repl` on a fresh connection (the daemon's
//! error message and status as the client library gets them, with the build output and the
//! `print-build-trace` lines in order). After each, what the daemon says about the outputs
//! (not valid) is compared.
//!
//! * `failed_builds_match_cxx`: builder exits 3, builder exits 0 without making its output,
//!   fixed-output hash mismatch, a disallowed reference (`#:disallowed-references`), a builder
//!   outside the store, a group-writable output, an output that is a fifo, a failed
//!   dependency (with and without `--keep-going`); the build logs.
//! * `timeouts_and_log_limit_match_cxx`: `--timeout=2`, `--max-silent-time=2`, and
//!   `build-max-log-size` (set by a raw SetOptions pair: `set-build-options` has no keyword
//!   for it; the builder writes 2000 bytes in one write, so both daemons see the limit crossed
//!   by one chunk whatever their read size).
//! * `cached_failures_match_cxx`: a daemon run with `--cache-failures`: the second build of a
//!   failed derivation fails at once as cached, `guix gc --list-failures` / `--clear-failures`.
//! * `keep_failed_matches_cxx`: `guix build -K` of a failing build: the note line, the kept
//!   build directory (entries, modes, owners), a second `-K` run (next directory number), a
//!   `-K` run by a client that is not root (`nobody`, through `setpriv`: the kept directory is
//!   given to the client), the partial output left in the store (invalid) and the store's
//!   entries.
//!
//! Normalised: the builder's PID in `@ build-started` (a process id of the daemon's machine);
//! in "file `X' has an unsupported type", the part of X before the output's store path (the
//! C++ daemon names the file inside its chroot on the host, `<drv>.chroot/top/gnu/store/…`;
//! where a daemon keeps its chroot is its own business) becomes `<chroot>`.
//! Left out of store listings: `.lock` files (our daemon takes no C++ path locks), `.links`
//! (deduplication) and our `.rs-scratch`.
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode in this test's target
//! directory (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

mod builds;
mod common;

use builds::{assert_all_same, assert_cxx_has, normalise_pids, on_both, repl, session, sh};

const FAILURES_SH: &str = r##"
b $fail3
b $no_output
b $fod_bad
b $disallow
b $outside
b $suspicious
b $fifo_out
b $dep_fail
b --keep-going $dep_fail $no_output
for d in $fail3 $no_output $fod_bad $disallow $outside $suspicious $fifo_out $dep_fail; do log $d; done
"##;

const FAILURES_REPL: &str = r##"
(try-build "exit 3" (list fail3))
(try-build "no output" (list no-output))
(try-build "hash mismatch" (list fod-bad))
(try-build "disallowed reference" (list disallow))
(try-build "builder outside the store" (list outside))
(try-build "group-writable output" (list suspicious))
(try-build "output is a fifo" (list fifo-out))
(try-build "a dependency fails" (list dep-fail))
(try-build "two failures, keep going" (list fail3 no-output) #:options '(#:keep-going? #t))
(with-store store
  (for-each (lambda (d) (dump-outputs store d))
            (list fail3 no-output fod-bad disallow outside suspicious fifo-out dep-fail)))
"##;

#[test]
fn failed_builds_match_cxx() {
    let (cxx, ours) = on_both("failed builds", |rig, d| {
        let s = session(rig, d, &[]);
        (normalise_chroot(&sh(&s, FAILURES_SH)), normalise_chroot(&normalise_pids(&repl(&s, FAILURES_REPL))))
    });
    assert_cxx_has(
        "failed builds (guix build)",
        &cxx.0,
        &[
            "failed with exit code 3\n",
            "failed to produce output path `/gnu/store/",
            "hash mismatch for store item '/gnu/store/",
            "is not allowed to refer to path `/gnu/store/",
            "error: file `<chroot>/gnu/store/",
            "guix build: error: build of `/gnu/store/",
            "status: 1\n",
        ],
    );
    assert_cxx_has(
        "failed builds (guix repl)",
        &cxx.1,
        &["' failed\" 100)", "' failed\" 1)", "@ build-failed /gnu/store/", "@ hash-mismatch /gnu/store/", "not valid"],
    );
    assert_all_same(&[("failed builds (guix build)", &cxx.0, &ours.0), ("failed builds (guix repl)", &cxx.1, &ours.1)]);
}

const TIMEOUTS_SH: &str = r##"
b --timeout=2 $slow
b --max-silent-time=2 $slow
log $slow
"##;

const TIMEOUTS_REPL: &str = r##"
(try-build "timeout" (list slow) #:options '(#:timeout 2))
(try-build "max-silent-time" (list slow) #:options '(#:max-silent-time 2))
(try-build "log limit" (list loud) #:pairs '(("build-max-log-size" . "1000")))
(with-store store (for-each (lambda (d) (dump-outputs store d)) (list slow loud)))
(force-output)
(system* "sh" "-c" (string-append "echo == log of loud; zcat $(guix build --log-file " (derivation-file-name loud) ")"))
"##;

#[test]
fn timeouts_and_log_limit_match_cxx() {
    let (cxx, ours) = on_both("timeouts and log limit", |rig, d| {
        let s = session(rig, d, &[]);
        (sh(&s, TIMEOUTS_SH), normalise_pids(&repl(&s, TIMEOUTS_REPL)))
    });
    assert_cxx_has(
        "timeouts (guix build)",
        &cxx.0,
        &["timed out after %2% seconds\n", "timed out after 2 seconds of silence\n"],
    );
    assert_cxx_has(
        "timeouts (guix repl)",
        &cxx.1,
        &["' failed\" 101)", "killed after writing more than 1000 bytes of log output", " - timeout\n"],
    );
    assert_all_same(&[
        ("timeouts (guix build)", &cxx.0, &ours.0),
        ("timeouts and log limit (guix repl)", &cxx.1, &ours.1),
    ]);
}

const CACHED_SH: &str = r##"
b $cached
b $cached
b $no_output
b $no_output
b $fod_bad
b $fod_bad
echo "== list-failures"; guix gc --list-failures | sort; echo "status: $?"
echo "== clear-failures"; guix gc --clear-failures $cached_out; echo "status: $?"
guix gc --list-failures | sort
b $cached
log $cached
"##;

const CACHED_REPL: &str = r##"
(try-build "cached" (list cached))
(try-build "cached, keep going" (list cached no-output) #:options '(#:keep-going? #t))
(with-store store (for-each (lambda (d) (dump-outputs store d)) (list cached no-output fod-bad)))
"##;

#[test]
fn cached_failures_match_cxx() {
    let (cxx, ours) = on_both("cached failures", |rig, d| {
        let s = session(rig, d, &["--cache-failures"]);
        (sh(&s, CACHED_SH), normalise_pids(&repl(&s, CACHED_REPL)))
    });
    assert_cxx_has(
        "cached failures (guix build)",
        &cxx.0,
        &["failed previously (cached)\n", "== list-failures\n/gnu/store/"],
    );
    assert_cxx_has("cached failures (guix repl)", &cxx.1, &[" - cached\n"]);
    assert_all_same(&[
        ("cached failures (guix build)", &cxx.0, &ours.0),
        ("cached failures (guix repl)", &cxx.1, &ours.1),
    ]);
}

const KEEP_SH: &str = r##"
list() {
  for p in "$@"; do
    if [ -e "$p" ]; then find "$p" | sort | while read -r f; do stat -c '%A %U %G %N' "$f"; done
    else echo "absent: $p"; fi
  done
}
b -K $keep
echo "== kept"; list /tmp/guix-build-*
b -K $keep
echo "== kept twice"; list /tmp/guix-build-*
b $keep
echo "== not kept without -K"; list /tmp/guix-build-*
echo "== a client that is not root (nobody)"
mkdir -p /tmp/nobody-home && chown 65534:65534 /tmp/nobody-home
setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp/nobody-home \
  guix build --no-substitutes -K $keep
echo "status: $?"
list /tmp/guix-build-keep.drv-2
echo "== left in the store"; list $keep_out
cat $keep_out/p
echo "== store"
ls -a /gnu/store | grep -v -e '\.lock$' -e '^\.links$' -e '^\.rs-scratch$'
"##;

const KEEP_REPL: &str = r##"
(try-build "keep-failed" (list keep) #:options '(#:keep-failed? #t))
(with-store store (dump-outputs store keep))
"##;

#[test]
fn keep_failed_matches_cxx() {
    let (cxx, ours) = on_both("keep failed", |rig, d| {
        let s = session(rig, d, &[]);
        (sh(&s, KEEP_SH), normalise_pids(&repl(&s, KEEP_REPL)))
    });
    assert_cxx_has(
        "keep failed (guix build)",
        &cxx.0,
        &[
            "note: keeping build directory `/tmp/guix-build-keep.drv-0'\n",
            "note: keeping build directory `/tmp/guix-build-keep.drv-1'\n",
            "guixbuilder01 guixbuild '/tmp/guix-build-keep.drv-0/top/kept.txt'",
            "nobody nogroup '/tmp/guix-build-keep.drv-2/kept.txt'",
        ],
    );
    assert_cxx_has("keep failed (guix repl)", &cxx.1, &["note: keeping build directory `/tmp/guix-build-keep.drv-3'"]);
    assert_all_same(&[("keep failed (guix build)", &cxx.0, &ours.0), ("keep failed (guix repl)", &cxx.1, &ours.1)]);
}

/// In "file `X' has an unsupported type" messages, replaces what precedes the store path in X
/// by `<chroot>` (see the module documentation).
fn normalise_chroot(text: &str) -> String {
    const TAIL: &str = "' has an unsupported type";
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let fixed = line.find(TAIL).and_then(|end| {
            let start = line[..end].rfind("file `")? + "file `".len();
            let inner = line[start..end].rfind("/gnu/store/")?;
            (inner > 0).then(|| format!("{}<chroot>{}", &line[..start], &line[start + inner..]))
        });
        out.push_str(fixed.as_deref().unwrap_or(line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalise_chroot;

    #[test]
    fn chroot_in_unsupported_type_is_normalised() {
        let t = "x\nguix build: error: file `/gnu/store/a-f.drv.chroot/top/gnu/store/b-f' has an unsupported type\n";
        assert_eq!(
            normalise_chroot(t),
            "x\nguix build: error: file `<chroot>/gnu/store/b-f' has an unsupported type\n"
        );
        let plain = "file `/gnu/store/b-f' has an unsupported type\n";
        assert_eq!(normalise_chroot(plain), plain);
    }
}

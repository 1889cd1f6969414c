//! Successful builds with the real `guix` client, the C++ daemon and ours in parallel sessions
//! on fresh stores (derivations of `builds/prelude.scm`: busybox builders, no Guix bootstrap, no
//! network).
//!
//! * `outputs_match_cxx`: a chain of five dependent derivations (each reads its input and
//!   refers to it), one with outputs out + lib + doc referring to each other and to themselves,
//!   with modes to canonicalise, and two fixed-output derivations (flat sha256, recursive
//!   sha256), one with `exportReferencesGraph` (the closure of an output and of a `.drv`), one
//!   printing `NIX_BUILD_CORES` (`guix build --cores=3`), built by `guix build`. Compared: the client's transcript, every output's path,
//!   validity, NAR hash, size, references, referrers, deriver and valid derivers, the derivation
//!   outputs recorded for each `.drv` (all through the daemon), each output's files (mode,
//!   owner, link count, mtime, symlink target), the build logs (`guix build --log-file`, the path
//!   and the decompressed contents, the file's mode and owner) and the store's entries.
//!   Registration times are not compared (the clock); `.lock` files are left out of the store
//!   listing (our daemon does not take C++ path locks: ARCHITECTURE.md, store-db), as are
//!   `.links` (the deduplication directory: its entries are named by content hashes and are no
//!   interface) and our `.rs-scratch`.
//! * `log_compression_matches_cxx`: the daemon run with `--log-compression=bzip2`, `=none`, and
//!   `--lose-logs`: the log's name, mode and contents (`guix build --log-file`), the log
//!   directory's files.
//! * `two_clients_build_one_derivation`: a second `guix build` of a derivation another client
//!   is building (started 1 s into its 3 s build) waits for it and gets the output; each
//!   client's transcript is compared.
//! * `build_traces_match_cxx`: the raw `@ build-started/succeeded` traces and build output the
//!   daemon sends to a client that asked for `print-build-trace`, plain and multiplexed
//!   (`@ build-log`), through `guix repl`. The builder's PID (last field of `build-started`, and
//!   of `build-log`) is normalised: it is a process id of the daemon's machine.
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode in this test's target
//! directory (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

mod builds;
mod common;

use builds::{assert_all_same, assert_cxx_has, assert_same, normalise_pids, on_both, repl, session, sh};

const OUTPUTS_SH: &str = r##"
b $c5
b $multi $fod_flat $fod_rec
echo "== again (nothing to build)"
b $c5 $multi
b $graph
b --cores=3 $cores
for d in $c1 $c2 $c3 $c4 $c5 $multi $fod_flat $fod_rec $graph; do log $d; done
echo "== log files"; find /var/log/guix | sort
echo "== files of the outputs"
for p in $c1_out $c2_out $c3_out $c4_out $c5_out $multi_out $multi_lib $multi_doc $fod_flat_out $fod_rec_out; do
  find $p | sort | while read -r f; do stat -c '%A %U %G %h %Y %N' "$f"; done
done
echo "== contents"
cat $c5_out $multi_out/self $multi_out/bin/libref $multi_lib/lib/docref $fod_flat_out $fod_rec_out/a $graph_out $cores_out
echo "== store"
ls -a /gnu/store | grep -v -e '\.lock$' -e '^\.links$' -e '^\.rs-scratch$'
"##;

const OUTPUTS_DUMP: &str = r##"
(with-store store
  (for-each (lambda (d) (dump-outputs store d)) (list c1 c2 c3 c4 c5 multi fod-flat fod-rec graph cores))
  (show "valid-derivers busybox" (valid-derivers store bbdir)))
"##;

#[test]
fn outputs_match_cxx() {
    let (cxx, ours) = on_both("chain, multi-output and fixed-output builds", |rig, d| {
        let s = session(rig, d, &[]);
        (sh(&s, OUTPUTS_SH), repl(&s, OUTPUTS_DUMP))
    });
    assert_cxx_has(
        "builds",
        &cxx.0,
        &["successfully built", "chain-5\n", "building chain-1\nchain-1 stderr\n", "-r-xr-xr-x root root"],
    );
    assert_cxx_has("builds", &cxx.1, &["chain-5 out: valid deriver=", "multi lib: valid", "fod-rec out: valid"]);
    assert_all_same(&[
        ("guix build of the chain, multi-output and fixed-output derivations", &cxx.0, &ours.0),
        ("what the daemon says about the outputs", &cxx.1, &ours.1),
    ]);
}

const LOG_SH: &str = r##"
b $c1
log $c1
echo "== log files"; find /var/log/guix | sort
"##;

#[test]
fn log_compression_matches_cxx() {
    let flags = ["--log-compression=bzip2", "--log-compression=none", "--log-compression=gzip", "--lose-logs"];
    let (cxx, ours) = on_both("log compression", |rig, d| {
        flags.iter().map(|f| format!("=== daemon flag {f}\n{}", sh(&session(rig, d, &[f]), LOG_SH))).collect::<String>()
    });
    assert_cxx_has(
        "log compression",
        &cxx,
        &["-chain-1.drv.bz2\n", "-chain-1.drv\n", "-chain-1.drv.gz\n", "building chain-1\n"],
    );
    assert_same("log compression", &cxx, &ours);
}

const TWO_CLIENTS_SH: &str = r##"
guix build --no-substitutes $sleepy > /tmp/first.txt 2>&1 &
sleep 1
guix build --no-substitutes $sleepy > /tmp/second.txt 2>&1
echo "second: status $?"
wait $!
echo "first: status $?"
echo "== first client"; cat /tmp/first.txt
echo "== second client"; cat /tmp/second.txt
"##;

#[test]
fn two_clients_build_one_derivation() {
    let (cxx, ours) = on_both("two clients, one derivation", |rig, d| sh(&session(rig, d, &[]), TWO_CLIENTS_SH));
    assert_cxx_has("two clients", &cxx, &["== second client\n", "waiting for locks or build slots...\n"]);
    assert_same("two clients building one derivation", &cxx, &ours);
}

const TRACES: &str = r##"
(try-build "chain" (list c3))
(try-build "multi and fixed-output" (list multi fod-flat))
(try-build "already valid" (list c3 multi))
(try-build "multiplexed" (list c5 fod-rec)
           #:options '(#:multiplexed-build-output? #t #:print-extended-build-trace? #t))
"##;

#[test]
fn build_traces_match_cxx() {
    let (cxx, ours) = on_both("build traces", |rig, d| normalise_pids(&repl(&session(rig, d, &[]), TRACES)));
    assert_cxx_has(
        "traces",
        &cxx,
        &["@ build-started /gnu/store/", "@ build-succeeded /gnu/store/", "@ build-log <pid> ", "->: #t"],
    );
    assert_same("build traces", &cxx, &ours);
}

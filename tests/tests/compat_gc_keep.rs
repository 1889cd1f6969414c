//! The keep rules of a collection (`--gc-keep-outputs`, `--gc-keep-derivations`, and a
//! client's SetOptions override), compared with the C++ daemon on built derivations of
//! `builds/prelude.scm`: a chain c1 ← c2 (c2's builder reads c1's output, which c2's output
//! refers to), and `multi` (outputs out, lib, doc referring to each other: a cycle of
//! references). `guix gc --list-live`, `--list-dead` and `-D` with each combination of the
//! daemon's flags; paths sorted (the C++ collector's order is random).
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode.

mod builds;
mod common;

use builds::{on_both, session, sh};
use common::assert_same;

/// Builds c2 (and so c1) and multi, roots c2's derivation and multi's lib, then lists and
/// deletes.
const KEEP: &str = r##"
run() {
  echo "== guix gc $*"; guix gc "$@" >/tmp/out 2>/tmp/err; echo "status: $?"
  echo "-- stdout"; sort /tmp/out; echo "-- stderr"; grep -v '^\[' /tmp/err | sort
}
guix build --no-substitutes $c2 $multi >/dev/null 2>&1; echo "built: $?"
ln -s $c2 /var/guix/gcroots/c2-drv
ln -s $multi_lib /var/guix/gcroots/multi-lib
run --list-live
run --list-dead
run -D $c1_out
run -D $c1
run -D $multi_doc
rm /var/guix/gcroots/c2-drv
run --list-dead
run -D $c2
run --list-live
"##;

fn keep_case(flags: &[&str]) {
    let (cxx, ours) = on_both("keep rules", |rig, d| sh(&session(rig, d, flags), KEEP));
    assert!(cxx.contains("built: 0"), "{cxx}");
    assert_same(&format!("guix gc with {flags:?}"), &cxx, &ours);
}

#[test]
fn default_keep_rules_match_cxx() {
    keep_case(&[]);
}

#[test]
fn keep_outputs_and_derivations_match_cxx() {
    keep_case(&["--gc-keep-outputs=yes", "--gc-keep-derivations=yes"]);
}

#[test]
fn keep_nothing_matches_cxx() {
    keep_case(&["--gc-keep-outputs=no", "--gc-keep-derivations=no"]);
}

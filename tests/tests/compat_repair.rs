//! Repairing with the real `guix` client, the C++ daemon and ours in parallel sessions on fresh
//! stores (derivations of `builds/prelude.scm`, substitutes off):
//!
//! * `repair_matches_cxx`: chain-1 and chain-2 built (chain-2's output refers to chain-1's);
//!   then chain-1's output modified (made writable, a line appended) and
//!   `guix gc --verify=contents,repair` (rebuilt from its deriver, in repair mode); chain-1's
//!   output removed while chain-2's still refers to it and `guix gc --verify=repair`; chain-2's
//!   output modified and `guix build --repair`; finally a `.drv` modified (no deriver: "cannot
//!   repair"). After each step: the client's transcript and exit status, the output's
//!   contents, and `guix gc --verify=contents` (every NAR hash equal to the database's). The
//!   transcripts must be identical.
//!
//! Normalised: nothing (no PIDs are printed without `print-build-trace`). Our daemon's
//! database is also checked for integrity afterwards (`PRAGMA integrity_check` through the
//! rig's sqlite3, if it has one: else the verify above is the check).
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode in this test's target
//! directory (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

mod builds;
mod common;

use builds::{assert_all_same, assert_cxx_has, on_both, session, sh};

const REPAIR_SH: &str = r##"
v() { echo "== guix gc --verify=$1"; guix gc --verify=$1; echo "status: $?"; }
b $c2
echo "== modify chain-1's output"
chmod u+w $c1_out && echo tampered >> $c1_out && chmod a-w $c1_out
v contents,repair
echo "== contents"; cat $c1_out; stat -c '%A %U %G %h %Y' $c1_out
v contents
echo "== remove chain-1's output (chain-2's refers to it)"
rm -f $c1_out
v repair
echo "== contents"; cat $c1_out; stat -c '%A %U %G %h %Y' $c1_out
v contents
echo "== modify chain-2's output"
chmod u+w $c2_out && echo tampered >> $c2_out && chmod a-w $c2_out
b --repair $c2
echo "== contents"; cat $c2_out; stat -c '%A %U %G %h %Y' $c2_out
v contents
echo "== nothing to repair"
b --repair $c2
echo "== modify chain-1's .drv (no deriver)"
chmod u+w $c1 && echo >> $c1 && chmod a-w $c1
v contents,repair
echo "== leftovers"; ls -a /gnu/store | grep -e '\.old' -e '\.tmp' -e '-check$'; echo "status: $?"
"##;

#[test]
fn repair_matches_cxx() {
    let (cxx, ours) = on_both("repair", |rig, d| {
        let s = session(rig, d, &[]);
        sh(&s, REPAIR_SH)
    });
    assert_cxx_has(
        "repair",
        &cxx,
        &[
            "was modified!",
            "disappeared, but it still has valid referrers!",
            "cannot repair path",
            "repairing path(s)",
            "is corrupted or missing!",
        ],
    );
    assert_all_same(&[("guix gc --verify=repair, guix build --repair", &cxx, &ours)]);
}

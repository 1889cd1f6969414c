//! Garbage collection itself (`guix gc`, `--list-dead`, `--list-live`, `-D`, `-C MIN`) with the
//! real `guix` client, the C++ daemon and ours in parallel sessions on stores made by the same
//! script, compared transcript against transcript.
//!
//! The store (`SETUP`, after `builds/prelude.scm`, which adds busybox and defines derivations):
//! * a direct root (`gcroots/direct-root` → an item referring to another), an indirect root
//!   (`add-indirect-root`: `gcroots/auto/…` → `/tmp/ind-link` → item) and a stale one (its link
//!   removed: the collector removes `auto/…` and says so), a profile as `guix package` makes it
//!   (`profiles/per-user/root/test-profile` → `test-profile-1-link` → item), a root on a
//!   derivation (`gcroots/drv-root` → `chain-4.drv`: its outputs live only with
//!   `--gc-keep-outputs`), `guix build --root` of `chain-1` and of `det` (their derivations live
//!   only with `gc-keep-derivations`, the default);
//! * derivations with outputs built (`chain-1`…`chain-4`, `det`) and without (all the others of
//!   the prelude), a failed build's partial output (`keep`, left unregistered in the store) and
//!   its stale `.lock` file;
//! * a dead chain `dead-1` ← `dead-2` ← `dead-3` (`guix gc -D dead-1` deletes its referrers
//!   first);
//! * items of 10 000 and 12 000 bytes with the same contents (deduplicated through `.links` by
//!   the C++ daemon: the bytes freed count a file only when its last link outside `.links` goes),
//!   one copy live and two dead, and two dead copies of another;
//! * temp roots of an open connection: a `guix repl` process (`HOLD`) adds an item and
//!   `add-temp-root`s a dead one, then stays connected while `guix gc` runs from other
//!   processes; once it exits, both are dead.
//!
//! Then (`BODY`): `--list-dead`, `--list-live`, `-D` of live items (a root's reference, both
//! temp roots: "still alive"), `-D` of a dead item, `guix gc`, the store and `.links`
//! afterwards; the holder exits; `--list-dead`, `guix gc`; then six dead items of equal size
//! and `guix gc -C 1`, `guix gc -C 20` (min-freed: the C++ daemon stops after the first
//! deletion that passes the limit; with equal sizes, how many are deleted and the figures are
//! deterministic), `guix gc`.
//!
//! Each of four daemon configurations is a test: the defaults, `--gc-keep-outputs`,
//! `--gc-keep-derivations=no`, and `--disable-deduplication` (the bytes freed without `.links`).
//!
//! Normalised, and only this (both differ by design):
//! * the order of the "deleting" lines of a whole collection, and the running byte count in
//!   front of each: the C++ daemon deletes the dead valid paths in a random order (`std::shuffle`
//!   in `collectGarbage`) and the invalid entries in `readdir` order. Those lines are sorted and
//!   their `[N bytes] ` prefix dropped; the final figure ("freed …") is compared as it is.
//!   The items of equal size are interchangeable: which one goes first is random, so each
//!   becomes `<an eq item>` (under `-C` the percentages in front stay: with equal sizes they do
//!   not depend on the order), and only how many are left is compared.
//! * our scratch directory `.rs-scratch` in store listings.
//!
//! The bytes freed with deduplication: the C++ daemon counts the last copy of a deduplicated
//! file twice, once when its item goes (`deleteGarbage` counts a file whose link count is at
//! most 2, the item's and `.links`') and once more when `removeUnusedLinks` removes its
//! `.links` entry. `big2-dead-a`/`-b` (12 000 bytes, no live copy) show it: 24 000 bytes for
//! one file. The tests compare the C++ figure as it is; if ours is to count the file once, that
//! is a deliberate difference to be decided and written here.
//!
//! `large_collection_shows_every_deletion_like_cxx`: a collection of 3000 dead items shows
//! every deletion and the same figure.
//!
//! `guix gc -F` (free space) is not compared: what it deletes depends on the free space of the
//! file system the two stores share, which the other session changes at the same time.
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode in this test's target
//! directory (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

mod builds;
mod common;

use builds::{assert_all_same, assert_cxx_has, on_both, start_with_flags};

/// Run after the prelude (same `guix repl`): the roots and items described in the module
/// documentation; writes `/tmp/gcvars` (`name=path` lines) and `/tmp/held-path`.
const SETUP: &str = r##"
(define (txt name s . refs) (add-text-to-store %store name s refs))
(define (root! path name) (symlink path (string-append "/var/guix/gcroots/" name)))
(define r-base (txt "r-base" "rooted base\n"))
(define r-top (txt "r-top" (string-append "top " r-base "\n") r-base))
(root! r-top "direct-root")
(define ind (txt "ind" "indirect\n"))
(symlink ind "/tmp/ind-link")
(add-indirect-root %store "/tmp/ind-link")
(define stale (txt "stale-target" "stale\n"))
(symlink stale "/tmp/stale-link")
(add-indirect-root %store "/tmp/stale-link")
(delete-file "/tmp/stale-link")
(define prof (txt "prof" "profile contents\n"))
(define profdir "/var/guix/profiles/per-user/root")
(system* "mkdir" "-p" profdir)
(symlink prof (string-append profdir "/test-profile-1-link"))
(symlink "test-profile-1-link" (string-append profdir "/test-profile"))
(define d1 (txt "dead-1" "dead one\n"))
(define d2 (txt "dead-2" (string-append "two " d1) d1))
(define d3 (txt "dead-3" (string-append "three " d2) d2))
(define big (make-string 10000 #\b))
(define big-live (txt "big-live" big))
(root! big-live "big-root")
(define big-dead-a (txt "big-dead-a" big))
(define big-dead-b (txt "big-dead-b" big))
(define big2 (make-string 12000 #\c))
(define big2-dead-a (txt "big2-dead-a" big2))
(define big2-dead-b (txt "big2-dead-b" big2))
(define held (txt "held" "held by a temp root\n"))
(root! (derivation-file-name c4) "drv-root")
(call-with-output-file "/tmp/held-path" (lambda (port) (display held port)))
(call-with-output-file "/tmp/gcvars"
  (lambda (port)
    (for-each (lambda (name value) (format port "~a=~a~%" name value))
              '(r_base r_top ind stale prof d1 d2 d3 big_live held)
              (list r-base r-top ind stale prof d1 d2 d3 big-live held))))
"##;

/// The holder: one connection that adds an item and makes the item of `/tmp/held-path` a temp
/// root, writes the added item's path to `/tmp/held-ready`, and stays connected until
/// `/tmp/release` exists (two minutes at most).
const HOLD: &str = r##"
(use-modules (guix store) (ice-9 rdelim))
(define held (call-with-input-file "/tmp/held-path" read-line))
(with-store s
  (let ((new (add-text-to-store s "held-new" "added by the holder\n")))
    (add-temp-root s held)
    (call-with-output-file "/tmp/held-ready.tmp" (lambda (p) (display new p)))
    (rename-file "/tmp/held-ready.tmp" "/tmp/held-ready")
    (let loop ((i 0))
      (unless (or (file-exists? "/tmp/release") (> i 1200))
        (usleep 100000)
        (loop (+ i 1))))))
"##;

/// Six dead items of 8 bytes each (for `-C`).
const EQUAL: &str = r##"
(use-modules (guix store))
(with-store s
  (for-each (lambda (i)
              (add-text-to-store s (format #f "eq-~a" i) (format #f "equal ~a\n" i)))
            (iota 6 1)))
"##;

/// The commands compared (see the module documentation). `q ARGS` runs `guix gc ARGS` and
/// prints its sorted stdout, its stderr and its status under a `== guix gc ARGS` header.
const BODY: &str = r##"
. /tmp/gcvars
q() { echo "== guix gc $*"; guix gc "$@" >/tmp/q.out 2>/tmp/q.err; st=$?; echo "-- stdout"; sort /tmp/q.out; echo "-- stderr"; cat /tmp/q.err; echo "status: $st"; }
store() { echo "== store $1"; ls -a /gnu/store | grep -v -e '^\.\.\?$' -e '^\.rs-scratch$' | sort; echo "== links $1"; ls /gnu/store/.links | sort; }
echo "== builds"
guix build --no-substitutes --root=/tmp/c1-root $c1 >/dev/null 2>&1; echo "chain-1 $?"
guix build --no-substitutes --root=/tmp/det-root $det >/dev/null 2>&1; echo "det $?"
guix build --no-substitutes $c4 >/dev/null 2>&1; echo "chain-4 $?"
guix build --no-substitutes $keep >/dev/null 2>&1; echo "keep (fails) $?"
store before
guix repl /tmp/hold.scm >/tmp/hold.log 2>&1 & hold=$!
i=0; while [ ! -e /tmp/held-ready ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
held_new=$(cat /tmp/held-ready); echo "holder ready: $held_new"
q --list-dead
q --list-live
q -D $r_base
q -D $held
q -D $held_new
q -D $d1
q --list-dead
q
store after
touch /tmp/release; wait $hold; echo "holder exited: $?"; cat /tmp/hold.log
q --list-dead
q
store "after the holder"
guix repl /tmp/equal.scm; echo "equal items: $?"
q --list-dead
q -C 1
echo "eq items left: $(ls /gnu/store | grep -c -e '-eq-[0-9]$')"
q -C 20
echo "eq items left: $(ls /gnu/store | grep -c -e '-eq-[0-9]$')"
q
echo "eq items left: $(ls /gnu/store | grep -c -e '-eq-[0-9]$')"
store end
"##;

/// Runs the whole scenario on a fresh session of `daemon` with `flags`; the normalised
/// transcript.
fn scenario(rig: &guix_tests::Rig, daemon: common::Daemon, flags: &[&str]) -> String {
    let s = start_with_flags(rig, daemon, flags);
    let setup = builds::repl(&s, SETUP);
    assert!(setup.starts_with("status: 0\n"), "{daemon}: setup failed:\n{setup}\n{}", s.daemon_log());
    common::put(&s, "hold.scm", HOLD);
    common::put(&s, "equal.scm", EQUAL);
    normalise(&builds::sh(&s, BODY))
}

/// See the module documentation: in the sections of whole collections (`guix gc`), the
/// deletion lines lose their byte-count prefix and are sorted in place; under `-C` they keep
/// their order and prefix. In both, the equal items become `<an eq item>`.
fn normalise(text: &str) -> String {
    let mut out = String::new();
    let mut section: Vec<&str> = Vec::new();
    let mut header = "";
    let flush = |header: &str, section: &mut Vec<&str>, out: &mut String| {
        let whole = header == "== guix gc ";
        let limited = header.starts_with("== guix gc -C ");
        let mut deletions: Vec<String> = Vec::new();
        let mut first = None;
        let mut lines: Vec<String> = Vec::new();
        for line in section.drain(..) {
            let Some(rest) = deletion(line) else {
                lines.push(line.to_owned());
                continue;
            };
            if whole {
                first.get_or_insert(lines.len());
                deletions.push(equal_item(rest));
            } else if limited {
                lines.push(equal_item(line));
            } else {
                lines.push(line.to_owned());
            }
        }
        deletions.sort();
        if let Some(at) = first {
            lines.splice(at..at, deletions);
        }
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with("== ") {
            flush(header, &mut section, &mut out);
            header = line;
        }
        section.push(line);
    }
    flush(header, &mut section, &mut out);
    out
}

/// `deleting '…'` of a line `[PREFIX] deleting '…'` the C++ daemon prints per deleted path.
fn deletion(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('[')?;
    let (_, rest) = rest.split_once("] ")?;
    rest.starts_with("deleting '").then_some(rest)
}

/// `[P%] deleting '/gnu/store/…-eq-N'` → `[P%] deleting '<an eq item>'` (also without the
/// prefix).
fn equal_item(line: &str) -> String {
    match line.find("deleting '/gnu/store/") {
        Some(at) if line.contains("-eq-") => format!("{}deleting '<an eq item>'", &line[..at]),
        _ => line.to_owned(),
    }
}

/// Facts of every C++ transcript the comparison relies on (so that it cannot pass vacuously).
const CXX_FACTS: [&str; 10] = [
    "chain-4 0\n",
    "keep (fails) 1\n",
    "-keep.lock\n",
    "removing stale link from `/var/guix/gcroots/auto/",
    "since it is still alive\n",
    "deleting '/gnu/store/",
    "deleting unused links...\n",
    "guix gc: freed ",
    "deleted or invalidated more than 1 bytes; stopping\n",
    "eq items left: 5\n",
];

/// Runs the scenario on both daemons with `flags`; the C++ transcript must contain `CXX_FACTS`
/// and `facts` and none of `absent`.
fn compare(what: &str, flags: &[&str], facts: &[&str], absent: &[&str]) {
    let (cxx, ours) = on_both(what, |rig, d| scenario(rig, d, flags));
    assert_cxx_has(what, &cxx, &CXX_FACTS);
    assert_cxx_has(what, &cxx, facts);
    for a in absent {
        assert!(!cxx.contains(a), "{what}: the C++ transcript has {a:?}:\n{cxx}");
    }
    assert_all_same(&[(what, &cxx, &ours)]);
}

#[test]
fn collection_matches_cxx() {
    // Default: gc-keep-derivations yes, gc-keep-outputs no. `det.drv` is kept by its rooted
    // output; `chain-4`'s output (its derivation rooted) is deleted.
    compare("guix gc, default keep rules", &[], &["-chain-4'\n"], &["-det.drv'\n"]);
}

#[test]
fn collection_with_keep_outputs_matches_cxx() {
    compare("guix gc, --gc-keep-outputs", &["--gc-keep-outputs"], &[], &["-chain-4'\n", "-det.drv'\n"]);
}

#[test]
fn collection_without_keep_derivations_matches_cxx() {
    compare("guix gc, --gc-keep-derivations=no", &["--gc-keep-derivations=no"], &["-det.drv'\n"], &[]);
}

#[test]
fn collection_without_deduplication_matches_cxx() {
    // Without `.links`, every file counts in the bytes freed when its item goes.
    compare("guix gc, --disable-deduplication", &["--disable-deduplication"], &["-chain-4'\n"], &["-det.drv'\n"]);
}

/// Adds 3000 small items, dead once the connection closes.
const MANY: &str = r##"
(use-modules (guix store))
(with-store s
  (for-each (lambda (i) (add-text-to-store s (format #f "many-~a" i) (format #f "item ~a\n" i)))
            (iota 3000)))
"##;

/// A collection deleting thousands of paths: the client is shown every one of them, as the C++
/// daemon shows them (it never drops a message), and the same figure.
#[test]
fn large_collection_shows_every_deletion_like_cxx() {
    let what = "guix gc of 3000 dead items";
    let (cxx, ours) = on_both(what, |rig, d| {
        let s = start_with_flags(rig, d, &["--disable-deduplication"]);
        common::repl(&s, d, MANY);
        normalise(&common::sh(&s, "echo '== guix gc '; guix gc; echo \"status: $?\""))
    });
    assert_cxx_has(what, &cxx, &["-many-2999'\n", "guix gc: freed "]);
    assert_all_same(&[(what, &cxx, &ours)]);
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn whole_collections_are_sorted_limited_ones_anonymised() {
        let t = "== guix gc \nfinding\n[ 20  bytes] deleting '/gnu/store/b-x'\n[   0  bytes] deleting '/gnu/store/a-y'\n[ 8  bytes] deleting '/gnu/store/c-eq-1'\nfreed\n\
                 == guix gc -D /gnu/store/a\n[   0  bytes] deleting '/gnu/store/z'\n[   1  bytes] deleting '/gnu/store/a'\n\
                 == guix gc -C 20\n[40%] deleting '/gnu/store/h-eq-3'\nstatus: 0\n";
        assert_eq!(
            normalise(t),
            "== guix gc \nfinding\ndeleting '/gnu/store/a-y'\ndeleting '/gnu/store/b-x'\ndeleting '<an eq item>'\nfreed\n\
             == guix gc -D /gnu/store/a\n[   0  bytes] deleting '/gnu/store/z'\n[   1  bytes] deleting '/gnu/store/a'\n\
             == guix gc -C 20\n[40%] deleting '<an eq item>'\nstatus: 0\n"
        );
    }
}

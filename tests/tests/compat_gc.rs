//! `guix gc` queries (`--references`, `--referrers`, `--derivers`, `--requisites`, `--verify`,
//! `--verify=contents`) and `guix size`, run by the real client against the C++ daemon and ours
//! in parallel sessions on the same items; the transcripts (status, stdout, stderr) must be
//! identical; and garbage collections themselves (`--list-live`, `--list-dead`, `-D`, `-C`,
//! `-F`, plain `guix gc`) on the same small store.
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode in this test's target
//! directory (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

mod common;

use common::{assert_same, on_both, put, repl, sh, start, Daemon};

/// Adds a small graph and prints `name=path` lines for the shell: text items a ← b ← c (c also
/// refers to a), a derivation `thing` (outputs out and dev, its builder as a source) and a
/// derivation `user` taking thing:out as input.
const SETUP: &str = r##"
(use-modules (guix store) (guix derivations))
(with-store store
  (let* ((a (add-text-to-store store "a.txt" "I am A\n"))
         (b (add-text-to-store store "b.txt" (string-append "I refer to " a "\n") (list a)))
         (c (add-text-to-store store "c.txt" (string-append "refs " a " " b "\n") (list a b)))
         (builder (add-text-to-store store "builder.sh" "echo hi > $out" (list a)))
         (thing (derivation store "thing" "/bin/sh" (list builder)
                            #:sources (list builder)
                            #:outputs '("out" "dev")))
         (user (derivation store "user" "/bin/sh" (list builder)
                           #:sources (list builder)
                           #:inputs (list (derivation-input thing '("out"))))))
    (for-each (lambda (name value) (format #t "~a=~a~%" name value))
              '(a b c builder thing thing_out thing_dev user user_out)
              (list a b c builder (derivation-file-name thing)
                    (derivation->output-path thing "out") (derivation->output-path thing "dev")
                    (derivation-file-name user) (derivation->output-path user "out")))))
"##;

/// Runs SETUP, then the shell `body` with its variables set; returns the transcript.
fn with_graph(s: &guix_tests::Session, d: Daemon, body: &str) -> String {
    let vars = repl(s, d, SETUP);
    put(s, "graph.env", vars);
    sh(s, &format!("set -u; . /tmp/graph.env\n{body}"))
}

const QUERIES: &str = r##"
missing=/gnu/store/00000000000000000000000000000000-missing
q() { echo "== guix gc $*"; guix gc "$@"; echo "status: $?"; }
for p in $a $b $c $builder $thing $user $thing_out; do q --references $p; done
for p in $a $b $c $builder $thing $thing_out; do q --referrers $p; done
q --references $a $b $c
q --referrers $a $b
q --requisites $c
q --requisites $user
q --requisites $a $thing
q --derivers $thing_out
q --derivers $thing_dev
q --derivers $user_out
q --derivers $a
q --references $missing
q --referrers $missing
q --requisites $missing
q --references /tmp
q --verify
q --verify=contents
echo "== guix size"; guix size $c; echo "status: $?"
echo "== guix size user"; guix size $user; echo "status: $?"
echo "== guix size missing"; guix size $missing; echo "status: $?"
"##;

#[test]
fn gc_queries_and_size_match_cxx() {
    let (cxx, ours) = on_both(|rig, d| with_graph(&start(rig, d), d, QUERIES));
    assert!(cxx.contains("== guix gc --derivers"), "{cxx}");
    assert_same("guix gc queries / guix size", &cxx, &ours);
}

/// `--verify=contents` on a store whose item was modified behind the daemon's back: both
/// daemons must report the same hash mismatch (and neither may "fix" anything: no repair).
const MODIFIED: &str = r##"
chmod u+w $b && echo tampered >> $b && chmod a-w $b
echo "== verify=contents"; guix gc --verify=contents; echo "status: $?"
echo "== verify"; guix gc --verify; echo "status: $?"
echo "== still valid"; guix gc --references $c; echo "status: $?"
"##;

#[test]
fn verify_contents_of_a_modified_item_matches_cxx() {
    let (cxx, ours) = on_both(|rig, d| with_graph(&start(rig, d), d, MODIFIED));
    assert!(cxx.contains("was modified!"), "{cxx}");
    assert_same("guix gc --verify=contents after a modification", &cxx, &ours);
}

/// `--verify` on a store whose items were deleted behind the daemon's back: a disappeared path
/// nothing present refers to is removed from the database (its missing referrers first); one
/// still referred to by a present path stays and is reported as an error. The items are
/// queried first, so our daemon has their infos cached when they go: the answers after the
/// verification show the cache was dropped.
const DISAPPEARED: &str = r##"
echo "== before"; guix gc --references $c; guix size $c; echo "status: $?"
rm -rf $a $b $c
echo "== verify"; guix gc --verify; echo "status: $?"
echo "== again"; guix gc --verify=contents; echo "status: $?"
echo "== after"; guix gc --references $c; guix gc --referrers $a; guix gc --references $builder; echo "status: $?"
echo "== size after"; guix size $c; echo "status: $?"
"##;

#[test]
fn verify_of_disappeared_items_matches_cxx() {
    let (cxx, ours) = on_both(|rig, d| with_graph(&start(rig, d), d, DISAPPEARED));
    assert!(cxx.contains("disappeared, removing from database..."), "{cxx}");
    assert!(cxx.contains("disappeared, but it still has valid referrers!"), "{cxx}");
    assert_same("guix gc --verify after deletions", &cxx, &ours);
}

/// A collection on the graph: b is a root (so a is alive through it), the shell holds `builder`
/// open (a busy item: a root), the store holds an invalid directory and file, `gcroots/auto` a
/// stale link. Each command's stdout and stderr
/// are sorted: the C++ collector deletes valid paths in a random order, so its progress lines
/// ("[N%] deleting '…'") come in a random order too; the set of lines, the paths and the
/// bytes freed must be the same. Store paths in the output are those of the graph: the same
/// in both sessions.
const COLLECT: &str = r##"
run() {
  echo "== guix gc $*"; guix gc "$@" >/tmp/out 2>/tmp/err; echo "status: $?"
  echo "-- stdout"; sort /tmp/out; echo "-- stderr"; sort /tmp/err
}
ln -s $b /var/guix/gcroots/keep-b
exec 3<$builder
mkdir -p /var/guix/gcroots/auto && ln -s /tmp/nowhere /var/guix/gcroots/auto/stale
mkdir -p /gnu/store/00000000000000000000000000000000-junk/sub
echo junk > /gnu/store/00000000000000000000000000000000-junk/sub/f
echo 0123456789 > /gnu/store/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-junkfile
run --list-live
run --list-dead
run -D $c
run -D $a
run -D $a $c
run -C 1
run --list-dead
run -F 100000G
echo "== stale link"; ls /var/guix/gcroots/auto; echo "status: $?"
rm /var/guix/gcroots/keep-b
run
run --list-dead
run --list-live
echo "== left"; ls /gnu/store | grep -v '^\.links$' | sort; echo "status: $?"
"##;

#[test]
fn collections_match_cxx() {
    let (cxx, ours) = on_both(|rig, d| with_graph(&start(rig, d), d, COLLECT));
    assert!(cxx.contains("since it is still alive"), "{cxx}");
    assert!(cxx.contains("deleting unused links..."), "{cxx}");
    assert!(cxx.contains("-junk"), "{cxx}");
    assert_same("guix gc collections", &cxx, &ours);
}

/// Copies `sleep` into the store (a directory item), for a process mapping a store file.
const SLEEPY: &str = r##"
(use-modules (guix store))
(with-store s (display (add-to-store s "sleepy" #t "sha256" "/tmp/bin")))
"##;

/// Our `guix-gc --list-busy` (the collector's native scan of /proc) prints what the Guile
/// `guix gc --list-busy`, which the C++ daemon runs, prints: processes with a store item as
/// their executable (so also mapped), an open file, their cwd and one in their environment.
#[test]
fn busy_items_are_those_of_guix_gc_list_busy() {
    let rig = common::rig();
    let s = start(&rig, Daemon::Ours);
    sh(&s, "mkdir -p /tmp/bin && cp \"$(command -v sleep)\" /tmp/bin/sleep");
    let bin = repl(&s, Daemon::Ours, SLEEPY);
    let out = with_graph(
        &s,
        Daemon::Ours,
        &format!(
            r##"
SOME=x:$c:y {bin}/sleep 30 >/dev/null 2>&1 & p1=$!
sleep 30 < $a >/dev/null 2>&1 & p2=$!
(cd {bin} && exec sleep 30) >/dev/null 2>&1 & p3=$!
sleep 1
echo "== guix"; guix gc --list-busy | sort
echo "== ours"; /opt/guix-daemon-rs/guix-gc --list-busy | sort
kill $p1 $p2 $p3
"##
        ),
    );
    let after = |m: &str| out.split_once(m).map(|(_, r)| r).unwrap_or_else(|| panic!("no {m} in:\n{out}"));
    let guix = after("== guix\n").split("== ours\n").next().unwrap_or_default();
    let ours = after("== ours\n").split("--- stderr ---").next().unwrap_or_default();
    for want in ["-c.txt", "-a.txt", "-sleepy"] {
        assert!(guix.contains(want), "guix gc --list-busy misses {want}:\n{out}");
    }
    assert_eq!(guix, ours, "{out}");
}

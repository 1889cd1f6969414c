//! The build sandbox, as builders see it, under the C++ daemon and ours (parallel rig sessions,
//! fresh stores, real `guix` client; busybox builders of `builds/prelude.scm`).
//!
//! * `sandbox_matches_cxx`: the probe `builds/probe.sh`, built as a normal and as a
//!   fixed-output derivation, writes to its build log what it sees: its open fds, `id`, the
//!   processes of its PID namespace, hostname and domainname, cwd and umask, the sorted
//!   environment, the `/proc/self/status` ids, capabilities, NoNewPrivs and seccomp, the
//!   personality, resource limits, uid/gid maps, `/proc/self/mountinfo`, the modes and owners of
//!   `/`, `/dev`, `/etc`, `/gnu/store`, `/tmp` and their entries, `/etc` contents, network
//!   interfaces, addresses and routes (from `/proc/net`, no `ip`), whether `/sys` exists, and
//!   the outcome of writes outside its build directory and outputs (the store, an input,
//!   `/tmp`, `/etc`, `/`, `/dev`, procfs) and of privileged calls (sethostname, mount, chown,
//!   mknod). The logs are read through `guix build --log-file`. Afterwards, from outside: none
//!   of the probe's writes reached the real store or `/tmp`, no build directory is left.
//! * `concurrent_builds_are_isolated`: two derivations built at once (`max-build-jobs` 2):
//!   `iso-a` leaves files in its build directory and `/tmp` and sleeps; `iso-b` looks for
//!   them (its `/tmp`, `/gnu/store`, processes, a `find /`) while `iso-a` still runs, which the
//!   trace order (both started before either succeeded) shows.
//!
//! Normalised, because it legitimately differs between two runs or two daemons: pipe and
//! socket inode numbers in fd links; in mountinfo, the mount and parent ids, the device numbers
//! and peer-group numbers, and the host side of each mount's root (the session's state
//! directory becomes `<session>`, the rig rootfs `<rootfs>`, and the host paths of the chroot
//! and of the build directory — where a daemon keeps them is its own business — become
//! `<chroot on the host>` and `<build dir on the host>`); mountinfo lines are sorted (mount
//! order is not visible to a builder except there). The builder's PID in `@ build-started`.
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode in this test's target
//! directory (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

mod builds;
mod common;

use std::path::Path;

use builds::{assert_all_same, assert_cxx_has, assert_same, normalise_pids, on_both, repl, session, sh};
use common::put;

const PROBE: &str = include_str!("builds/probe.sh");

const PROBE_REPL: &str = r##"
(define probe-script (call-with-input-file "/tmp/probe.sh" get-string-all))
(define probe (mk "probe" probe-script #:env `(("bbdir" . ,bbdir))))
(define probe-fod
  (mk "probe-fod" probe-script #:hash (text-hash "probe-ok\n")
      #:env `(("bbdir" . ,bbdir) ("impureEnvVars" . "http_proxy PROBE_IMPURE"))))
(call-with-output-file "/tmp/probe-vars"
  (lambda (p) (format p "probe=~a~%probe_fod=~a~%" (derivation-file-name probe)
                      (derivation-file-name probe-fod))))
(with-store store
  (set-build-options store #:use-substitutes? #f)
  ;; The probe's output is read from its logs, where it is normalised.
  (parameterize ((current-build-output-port (%make-void-port "w")))
    (show "build" (build-derivations store (list probe probe-fod)))))
"##;

const PROBE_SH: &str = r##"
. /tmp/probe-vars
log $probe
log $probe_fod
echo "== outside, after the builds"
for f in /gnu/store/probe-write /gnu/store/probe-dir /tmp/probe-write /tmp/guix-build-*; do
  if [ -e "$f" ]; then echo "present: $f"; else echo "absent: $f"; fi
done
"##;

#[test]
fn sandbox_matches_cxx() {
    let (cxx, ours) = on_both("build sandbox probe", |rig, d| {
        let s = session(rig, d, &[]);
        put(&s, "probe.sh", PROBE);
        let built = repl(&s, PROBE_REPL);
        let seen = sh(&s, PROBE_SH);
        let hosts = [(s.state_dir(), "<session>"), (rig.rootfs(), "<rootfs>")];
        (built, normalise_probe(&seen, &hosts))
    });
    assert_cxx_has("probe (build)", &cxx.0, &["build: #t"]);
    assert_cxx_has(
        "probe (what the builders saw)",
        &cxx.1,
        &[
            "== mountinfo\n",
            "uid=999(nixbld) gid=999(nixbld) groups=999(nixbld)\n",
            "/ rw,relatime - ext4",
            "<chroot on the host> / ",
            "<build dir on the host> /tmp/guix-build-probe.drv-0 rw,",
            "<store>/vxjjybzmw4wxl9xlv1ar16phlzlmfii2-busybox-static /gnu/store/vxjjybzmw4wxl9xlv1ar16phlzlmfii2-busybox-static ro,",
            "<rootfs>/etc/resolv.conf /etc/resolv.conf ro,",
            "pipe:[…]",
            "can't create /etc/probe-write: Permission denied",
            "absent: /gnu/store/probe-write\n",
        ],
    );
    assert_all_same(&[("the probe's build", &cxx.0, &ours.0), ("what the probe saw", &cxx.1, &ours.1)]);
}

/// Normalises the probe logs (see the module documentation): `hosts` maps host paths to their
/// placeholders.
fn normalise_probe(text: &str, hosts: &[(&Path, &str)]) -> String {
    let mut out = String::new();
    let mut mounts: Vec<String> = Vec::new();
    let mut in_mounts = false;
    // The build directory of the log being read, from its NIX_BUILD_TOP line.
    let mut build_top = String::new();
    for line in text.lines() {
        if let Some(top) = line.strip_prefix("NIX_BUILD_TOP=") {
            build_top = top.to_owned();
        }
        if in_mounts && line.starts_with("== ") {
            mounts.sort();
            for m in mounts.drain(..) {
                out.push_str(&m);
                out.push('\n');
            }
            in_mounts = false;
        }
        if in_mounts {
            mounts.push(normalise_mount(line, hosts, &build_top));
            continue;
        }
        in_mounts = line == "== mountinfo";
        out.push_str(&normalise_inodes(line));
        out.push('\n');
    }
    out
}

/// `pipe:[123]` → `pipe:[…]`, likewise for sockets and anonymous inodes.
fn normalise_inodes(line: &str) -> String {
    let mut out = line.to_owned();
    for kind in ["pipe:[", "socket:["] {
        let mut from = 0;
        while let Some(i) = out[from..].find(kind) {
            let start = from + i + kind.len();
            let Some(len) = out[start..].find(']') else { break };
            out.replace_range(start..start + len, "…");
            from = start;
        }
    }
    out
}

/// One mountinfo line without ids and device numbers, its root's host part normalised.
/// Format: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTIONS`.
fn normalise_mount(line: &str, hosts: &[(&Path, &str)], build_top: &str) -> String {
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() < 7 {
        return format!("unparsed: {line}");
    }
    let (root, point) = (fields[3], fields[4]);
    let mut root = root.to_owned();
    for (host, name) in hosts {
        let host = host.to_string_lossy();
        if let Some(rest) = root.strip_prefix(host.as_ref()) {
            root = format!("{name}{rest}");
        }
    }
    if let Some(item) = root.strip_prefix("<session>/store/") {
        root = format!("<store>/{item}");
    }
    if point == "/" {
        root = "<chroot on the host>".into();
    } else if !build_top.is_empty() && point == build_top {
        root = "<build dir on the host>".into();
    }
    let rest: Vec<String> = fields[6..]
        .iter()
        .map(|f| match f.split_once(':') {
            // Peer-group numbers of the optional fields (`shared:N`, `master:N`).
            Some((tag @ ("shared" | "master" | "propagate_from"), _)) => format!("{tag}:N"),
            _ => (*f).to_owned(),
        })
        .collect();
    format!("{root} {point} {} {}", fields[5], rest.join(" "))
}

const ISO_REPL: &str = r##"
(define iso-a
  (mk "iso-a" "echo secret-a > $NIX_BUILD_TOP/secret-a; echo secret-a > /tmp/secret-a
$B sleep 4; echo a > $out"))
(define iso-b
  (mk "iso-b" "$B sleep 1
echo '== id'; $B id
echo '== processes'; for p in /proc/[0-9]*; do echo ${p#/proc/}; done
echo '== /tmp'; $B ls -a /tmp
echo '== /gnu/store'; $B ls -a /gnu/store
echo '== secrets'; $B find / -path /proc -prune -o -name 'secret*' -print
echo b > $out"))
(try-build "two builds at once" (list iso-a iso-b) #:options '(#:max-build-jobs 2))
"##;

#[test]
fn concurrent_builds_are_isolated() {
    let (cxx, ours) = on_both("concurrent builds", |rig, d| normalise_pids(&repl(&session(rig, d, &[]), ISO_REPL)));
    assert_cxx_has("concurrent builds", &cxx, &["== secrets\n@ build-succeeded", "uid=998(nixbld)", "->: #t"]);
    // Both started before either finished: iso-b looked while iso-a ran.
    let started_both =
        cxx.find("@ build-started").and_then(|a| cxx[a + 1..].find("@ build-started").map(|b| a + 1 + b));
    let first_done = cxx.find("@ build-succeeded");
    assert!(
        matches!((started_both, first_done), (Some(s), Some(d)) if s < d),
        "the two C++ builds did not overlap:\n{cxx}"
    );
    assert_same("concurrent builds", &cxx, &ours);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_normalised() {
        let hosts = [(Path::new("/tmp/s"), "<session>"), (Path::new("/r"), "<rootfs>")];
        let text = "NIX_BUILD_TOP=/tmp/guix-build-p.drv-0\n== mountinfo\n\
            9 8 0:44 / /dev/pts rw,relatime shared:3 - devpts none rw,mode=620\n\
            1 0 254:0 /tmp/s/store/abc-p.drv.chroot/top / rw,relatime - ext4 /dev/vda rw\n\
            7 1 254:0 /tmp/s/store/abc-busybox /gnu/store/abc-busybox ro,relatime - ext4 /dev/vda rw\n\
            5 1 254:0 /tmp/s/tmp/guix-build-p.drv-0/top /tmp/guix-build-p.drv-0 rw,relatime - ext4 /dev/vda rw\n\
            6 1 254:0 /r/etc/hosts /etc/hosts ro,relatime - ext4 /dev/vda rw\n\
            == fds\nl-wx------ 1 -> pipe:[113103]\n";
        assert_eq!(
            normalise_probe(text, &hosts),
            "NIX_BUILD_TOP=/tmp/guix-build-p.drv-0\n== mountinfo\n\
             / /dev/pts rw,relatime shared:N - devpts none rw,mode=620\n\
             <build dir on the host> /tmp/guix-build-p.drv-0 rw,relatime - ext4 /dev/vda rw\n\
             <chroot on the host> / rw,relatime - ext4 /dev/vda rw\n\
             <rootfs>/etc/hosts /etc/hosts ro,relatime - ext4 /dev/vda rw\n\
             <store>/abc-busybox /gnu/store/abc-busybox ro,relatime - ext4 /dev/vda rw\n\
             == fds\nl-wx------ 1 -> pipe:[…]\n"
        );
    }
}

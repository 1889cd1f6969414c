//! The builder restarted or killed while builds run, and many builds wanted at once.
//!
//! * `builds_survive_builder_restarts`: 4 real `guix` clients (`guix repl`), each building 5
//!   derivations (20 builds in flight, each a few seconds of `sleep` in a chroot as a build
//!   user), while the builder is restarted with `ctl restart builder` and then killed with
//!   SIGKILL, each three times. Every client must get all its outputs, with the contents a quiet
//!   run gives, and no error; afterwards nothing is left behind: no process of a build user, no
//!   `.chroot` directory, no build directory in `/tmp`, no `.lock` file of a valid output, no
//!   `userpool` lock held, and `ctl status` shows the builder's restarts.
//! * `more_builds_than_build_users_all_succeed`: five clients connect at once to a freshly
//!   started daemon and ask for 20 builds in all with 10 build users and `--max-jobs=20`: the C++
//!   daemon fails some with "all build users are currently in use" (or a database error at a
//!   fresh start); ours makes the surplus wait for a free user, so all succeed.
//!
//! Needs root, `scripts/rig setup`, and the workspace built in release mode
//! (`cargo build --release --workspace`, then `cargo test --release -p guix-tests`).

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use guix_tests::ours::{ctl_status, ours_kind};
use guix_tests::{Rig, Session};

/// The rig's sessions share the build users' uids (the chroot's `/etc/passwd`). Each session
/// has its own PID namespace, so one daemon's kills of a build user's processes do not reach
/// another session's builds; but [`assert_nothing_stray`] looks for build users' processes in
/// the host's `/proc`, where it sees every session's. These two tests build for seconds with
/// many users: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// A client script: adds the rig's static busybox, then builds `n` derivations named
/// `PREFIX-I`, each sleeping `secs` seconds and writing `built PREFIX-I`, and prints each
/// output's contents.
fn client_script(prefix: &str, n: usize, secs: u32) -> String {
    format!(
        r#"(use-modules (guix store) (guix derivations) (ice-9 textual-ports))
(define dir "/tmp/bb-{prefix}")
(system* "rm" "-rf" dir)
(mkdir dir) (mkdir (string-append dir "/bin"))
(copy-file "/bin/busybox" (string-append dir "/bin/busybox"))
(chmod (string-append dir "/bin/busybox") #o555)
(with-store store
  (set-build-options store #:use-substitutes? #f #:max-build-jobs {n})
  (let* ((bbdir (add-to-store store "busybox-static" #t "sha256" dir))
         (bb (string-append bbdir "/bin/busybox"))
         (drvs (map (lambda (i)
                      (derivation store (format #f "{prefix}-~a" i) bb
                                  (list "sh" "-c"
                                        (format #f "~a sleep {secs}; echo built {prefix}-~a > $out" bb i))
                                  #:sources (list bbdir)))
                    (iota {n}))))
    (build-derivations store drvs)
    (for-each (lambda (d)
                (display (call-with-input-file (derivation->output-path d) get-string-all)))
              drvs)))
"#
    )
}

fn expected(prefix: &str, n: usize) -> String {
    (0..n).map(|i| format!("built {prefix}-{i}\n")).collect()
}

/// The uids of the rig's build users (`guixbuild` members in the rootfs's `/etc/group`).
fn build_uids(rig: &Rig) -> Vec<u32> {
    let group = fs::read_to_string(rig.rootfs().join("etc/group")).unwrap_or_default();
    let passwd = fs::read_to_string(rig.rootfs().join("etc/passwd")).unwrap_or_default();
    let members: Vec<&str> = group
        .lines()
        .find(|l| l.starts_with("guixbuild:"))
        .and_then(|l| l.rsplit(':').next())
        .map(|m| m.split(',').collect())
        .unwrap_or_default();
    let uids: Vec<u32> = passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && members.contains(&f[0])).then(|| f[2].parse().ok()).flatten()
        })
        .collect();
    assert_eq!(uids.len(), 10, "the rig has 10 build users");
    uids
}

/// Processes (pid, command) running as one of `uids`, anywhere on the machine.
fn processes_of(uids: &[u32]) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(md) = fs::metadata(e.path()) else { continue };
        if uids.contains(&md.uid()) {
            let cmd = fs::read_to_string(e.path().join("cmdline")).unwrap_or_default().replace('\0', " ");
            found.push((pid, cmd));
        }
    }
    found
}

/// What a builder restart must not leave behind.
fn assert_nothing_stray(rig: &Rig, s: &Session) {
    let uids = build_uids(rig);
    // Build processes die with their builder; give the kernel a moment to reap.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_of(&uids).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(processes_of(&uids), vec![], "processes of build users remain");
    let store = s.store_dir_on_host();
    let mut stray = Vec::new();
    for e in fs::read_dir(&store).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".chroot") || name.ends_with(".lock") {
            stray.push(name);
        }
    }
    assert_eq!(stray, Vec::<String>::new(), "chroots or output locks left in the store");
    let tmp: Vec<String> = fs::read_dir(s.state_dir().join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("guix-build-"))
        .collect();
    assert_eq!(tmp, Vec::<String>::new(), "build directories left in /tmp");
    // No build user stays locked: each userpool file can be locked by us. A user freed with
    // nothing left running stays the builder's for 2 s (`guix_builder::users::IDLE_HOLD`).
    let deadline = Instant::now() + Duration::from_secs(10);
    for e in fs::read_dir(s.var_guix_on_host().join("userpool")).unwrap().flatten() {
        let f = fs::OpenOptions::new().read(true).write(true).open(e.path()).unwrap();
        while !guix_store::files::lock_file(f.as_fd(), guix_store::files::LockType::Write, false).unwrap() {
            assert!(Instant::now() < deadline, "build user lock {} still held", e.path().display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn wait_for_pid(s: &Session, component: &str, not: Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((Some(pid), _)) = ctl_status(s).get(component) {
            if Some(*pid) != not {
                return *pid;
            }
        }
        assert!(Instant::now() < deadline, "{component} did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn builds_survive_builder_restarts() {
    let _one = one_at_a_time();
    let rig = Rig::discover().unwrap_or_else(|e| panic!("{e}"));
    let (kind, opts) = ours_kind(&["--max-jobs=20"]);
    let s = Session::start_with(&rig, kind, &opts).unwrap_or_else(|e| panic!("{e}"));
    let clients: Vec<String> = (0..4).map(|c| format!("restart-c{c}")).collect();
    let outputs = std::thread::scope(|scope| {
        let running: Vec<_> = clients
            .iter()
            .map(|prefix| {
                let s = &s;
                scope.spawn(move || s.repl_ok(&client_script(prefix, 5, 3)))
            })
            .collect();
        // While they build: three restarts, then three kills, a few seconds apart (a build
        // takes 3 s, so each one catches builds in flight).
        std::thread::sleep(Duration::from_secs(4));
        for round in 0..6 {
            let pid = wait_for_pid(&s, "builder", None);
            if round < 3 {
                let out = s.exec(&["/opt/guix-daemon-rs/guix-daemon-rs", "ctl", "restart", "builder"]).unwrap();
                assert!(out.status.success(), "ctl restart: {}", String::from_utf8_lossy(&out.stderr));
            } else {
                // The pid is the session's (its own PID namespace): killed from inside.
                let out = s.exec(&["sh", "-c", &format!("kill -9 {pid}")]).unwrap();
                assert!(out.status.success(), "kill -9 {pid}: {}", String::from_utf8_lossy(&out.stderr));
            }
            wait_for_pid(&s, "builder", Some(pid));
            std::thread::sleep(Duration::from_millis(1500));
        }
        running.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    for (prefix, out) in clients.iter().zip(outputs) {
        let out = out.unwrap_or_else(|e| panic!("client {prefix} failed: {e}"));
        assert_eq!(out, expected(prefix, 5), "client {prefix}");
    }
    let (_, restarts) = ctl_status(&s)["builder"];
    assert!(restarts >= 6, "builder restarted {restarts} times");
    assert_nothing_stray(&rig, &s);
    s.stop().unwrap();
}

#[test]
fn more_builds_than_build_users_all_succeed() {
    let _one = one_at_a_time();
    let rig = Rig::discover().unwrap_or_else(|e| panic!("{e}"));
    let (kind, opts) = ours_kind(&["--max-jobs=20"]);
    let s = Session::start_with(&rig, kind, &opts).unwrap_or_else(|e| panic!("{e}"));
    let clients: Vec<String> = (0..5).map(|c| format!("crowd-c{c}")).collect();
    let outputs = std::thread::scope(|scope| {
        let running: Vec<_> = clients
            .iter()
            .map(|prefix| {
                let s = &s;
                scope.spawn(move || s.repl_ok(&client_script(prefix, 4, 2)))
            })
            .collect();
        running.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    for (prefix, out) in clients.iter().zip(outputs) {
        let out = out.unwrap_or_else(|e| panic!("client {prefix} failed: {e}"));
        assert_eq!(out, expected(prefix, 4), "client {prefix}");
    }
    assert_nothing_stray(&rig, &s);
    s.stop().unwrap();
}

//! Least privilege: our daemon's socket-front runs as the rig's `guix-daemon-rs` user, read from
//! `/proc/<pid>/status` of the running component (uid and gid not 0 and the user's, no
//! supplementary groups, every capability set empty — bounding and ambient included —, and
//! `NoNewPrivs: 1`), while store-db stays root; and what needed root in socket-front before
//! still works through store-db, with the real client: a per-user profile directory for a
//! client that never connected (`nobody`), `guix archive --export` signed (imported again,
//! which checks the signature against the ACL) while socket-front's user cannot read the key,
//! items added through socket-front's own scratch directory owned by root in the store,
//! canonical, and deduplicated (a `.links` entry shared by two items), its metrics reports
//! accepted by the supervisor's control socket, which refuses it anything else. Trust by `SO_PEERCRED`:
//! root is trusted, socket-front's own uid is not (`guix gc --verify=repair` is refused to it
//! as to any user).
//!
//! Needs root, `scripts/rig setup` (which creates the user), and the workspace binaries built
//! in this test's target directory (`cargo build --release --workspace`).

mod common;

use common::{put, sh, Daemon};
use guix_tests::ours::{ctl_status, LIBEXEC_IN_CHROOT};
use guix_tests::Session;

/// The fields of `/proc/<pid>/status` of a component of the session's daemon.
fn proc_status(s: &Session, component: &str) -> std::collections::BTreeMap<String, String> {
    let status = ctl_status(s);
    let Some((Some(pid), _)) = status.get(component).copied() else { panic!("{component} has no pid: {status:?}") };
    let out = s.exec(&["cat", &format!("/proc/{pid}/status")]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "reading /proc/{pid}/status: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// `sh -c script` in the session, which must succeed; its stdout.
fn ok(s: &Session, script: &str) -> String {
    let out = s.exec(&["sh", "-c", script]).unwrap_or_else(|e| panic!("{e}"));
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "`{script}' failed: {o}{e}\n--- daemon log ---\n{}", s.daemon_log());
    o.trim().to_owned()
}

/// Runs `guix repl` on `script` as `user` (with a home of its own under /tmp).
fn repl_as(s: &Session, user: &str, script: &str) -> String {
    put(s, &format!("{user}.scm"), script);
    sh(
        s,
        &format!(
            "mkdir -p /tmp/home-{user} && chown {user} /tmp/home-{user} && \
             runuser -u {user} -- env HOME=/tmp/home-{user} guix repl /tmp/{user}.scm"
        ),
    )
}

#[test]
fn socket_front_runs_unprivileged_and_what_needed_root_still_works() {
    let rig = common::rig();
    let s = common::start(&rig, Daemon::Ours);

    // --- The process, as the kernel sees it.
    let uid = ok(&s, "id -u guix-daemon-rs");
    let gid = ok(&s, "id -g guix-daemon-rs");
    assert_ne!(uid, "0");
    let front = proc_status(&s, "socket-front");
    let ids = |v: &str| -> Vec<String> { v.split_whitespace().map(str::to_owned).collect() };
    assert_eq!(ids(&front["Uid"]), vec![uid.clone(); 4], "real, effective, saved, fs uid: {front:?}");
    assert_eq!(ids(&front["Gid"]), vec![gid.clone(); 4], "{front:?}");
    assert_eq!(front["Groups"], "", "no supplementary groups");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(front[set], "0000000000000000", "{set}: {front:?}");
    }
    assert_eq!(front["NoNewPrivs"], "1");
    let store_db = proc_status(&s, "store-db");
    assert_eq!(ids(&store_db["Uid"]), vec!["0"; 4], "store-db stays root");

    // --- Directories it reaches through its group, and only those.
    let listing = ok(
        &s,
        "stat -c '%n %a %U %G' /gnu/store/.rs-scratch /gnu/store/.rs-scratch/front /var/guix/daemon-rs \
         /var/guix/daemon-rs/store-db.sock /var/guix/daemon-rs/store-db.epoch /var/guix/daemon-socket/rs-control",
    );
    assert_eq!(
        listing,
        "/gnu/store/.rs-scratch 710 root guix-daemon-rs\n\
         /gnu/store/.rs-scratch/front 700 guix-daemon-rs guix-daemon-rs\n\
         /var/guix/daemon-rs 750 root guix-daemon-rs\n\
         /var/guix/daemon-rs/store-db.sock 660 root guix-daemon-rs\n\
         /var/guix/daemon-rs/store-db.epoch 644 root root\n\
         /var/guix/daemon-socket/rs-control 660 root guix-daemon-rs"
    );
    let key = sh(&s, "runuser -u guix-daemon-rs -- cat /etc/guix/signing-key.sec >/dev/null");
    assert!(key.contains("Permission denied"), "socket-front's user must not read the key: {key}");

    // --- A client that never connected gets its per-user profile directory (made by store-db).
    let script = r#"(use-modules (guix store)) (with-store s (display (valid-path? s "/gnu/store/00000000000000000000000000000000-x")))"#;
    let out = repl_as(&s, "nobody", script);
    assert!(out.contains("#f"), "{out}");
    assert_eq!(ok(&s, "stat -c '%a %U' /var/guix/profiles/per-user/nobody"), "755 nobody");

    // --- Adds through socket-front's scratch directory, taken over by store-db and deduplicated:
    // two texts over the inline limit (written into scratch space) with the same contents, and a
    // tree whose file has those contents too.
    let add = r#"
(use-modules (guix store))
(define big (make-string 70000 #\p))
(call-with-output-file "/tmp/privs-tree-file" (lambda (p) (display big p)))
(mkdir "/tmp/privs-tree") (rename-file "/tmp/privs-tree-file" "/tmp/privs-tree/f")
(with-store s
  (for-each (lambda (p) (display p) (newline))
            (list (add-text-to-store s "privs-a" big) (add-text-to-store s "privs-b" big)
                  (add-to-store s "privs-tree" #t "sha256" "/tmp/privs-tree"))))
"#;
    let paths: Vec<String> = s.repl_ok(add).unwrap_or_else(|e| panic!("{e}")).lines().map(str::to_owned).collect();
    assert_eq!(paths.len(), 3, "{paths:?}");
    let files = format!("{} {} {}/f", paths[0], paths[1], paths[2]);
    let stat = ok(&s, &format!("stat -c '%a %U %G %h %i %Y' {files}"));
    let lines: Vec<&str> = stat.lines().collect();
    let inode = lines[0].split_whitespace().nth(4).unwrap_or_default();
    for l in &lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(&f[..4], ["444", "root", "root", "4"], "owned by root, canonical, 3 items + .links: {stat}");
        assert_eq!(f[4], inode, "one inode: {stat}");
        assert_eq!(f[5], "1", "mtime 1: {stat}");
    }
    assert_eq!(ok(&s, &format!("stat -c '%a %U' {}", paths[2])), "555 root");
    assert_eq!(ok(&s, "ls -A /gnu/store/.rs-scratch/front"), "", "nothing left in socket-front's scratch space");

    // --- ExportPath signed by store-db; importing it again checks the signature.
    let export = sh(
        &s,
        &format!(
            "guix archive --export {} > /tmp/privs.nar && guix archive --import < /tmp/privs.nar && echo imported",
            paths[2]
        ),
    );
    assert!(export.contains("imported") && export.starts_with("status: 0"), "{export}");

    // --- The control socket: socket-front's user reports its metrics (`ctl status` shows its
    // connections, reported every 2 s) and may do nothing else there.
    let ctl = format!("{LIBEXEC_IN_CHROOT}/guix-daemon-rs ctl");
    let reported = (0..50).any(|_| {
        let status = ok(&s, &format!("{ctl} status"));
        let line = status.lines().find(|l| l.starts_with("socket-front")).unwrap_or_default().to_owned();
        let connections = line.split_whitespace().nth(4).unwrap_or("-");
        std::thread::sleep(std::time::Duration::from_millis(100));
        connections.parse::<u64>().is_ok()
    });
    assert!(reported, "socket-front's metrics never reached the supervisor");
    for request in ["status", "restart store-db"] {
        let refused = sh(&s, &format!("runuser -u guix-daemon-rs -- {ctl} {request}"));
        assert!(
            refused.contains("socket-front's user may only report its metrics") && !refused.starts_with("status: 0"),
            "{refused}"
        );
    }

    // --- Trust: root is trusted (the verification with repair runs, nothing to repair),
    // socket-front's user is not.
    let root = sh(&s, "guix gc --verify=repair");
    assert!(root.starts_with("status: 0") && root.contains("checking path existence..."), "{root}");
    assert!(!root.contains("not privileged"), "{root}");
    let front_user = sh(
        &s,
        "mkdir -p /tmp/home-f && chown guix-daemon-rs /tmp/home-f && \
         runuser -u guix-daemon-rs -- env HOME=/tmp/home-f guix gc --verify=repair",
    );
    assert!(front_user.contains("you are not privileged to repair paths"), "{front_user}");

    s.stop().unwrap_or_else(|e| panic!("{e}"));
}

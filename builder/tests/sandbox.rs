//! Real sandboxed builds (root, real namespaces): a temporary store with the rig's static
//! busybox as the only input, `tests/sandbox-probe.sh` as the build script, and what the
//! probe prints inside compared with what the Appendix of the daemon spec records for the
//! C++ daemon 1.5.0.
//!
//! The build user is uid/gid 30999 (no passwd entry needed: the sandbox only takes ids);
//! `users.rs` has its own tests with real users. Tests skip (pass, saying so) when not run
//! as root or when the busybox is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guix_builder::sandbox::{self, SandboxSettings, StartSpec, Started};
use guix_builder::Error;
use guix_formats::derivation::{Derivation, DerivationOutput, OutputName};
use guix_formats::store_path::HashPart;
use guix_formats::StorePath;
use tokio::io::AsyncReadExt;

const PROBE: &str = include_str!("sandbox-probe.sh");
const BUILD_UID: u32 = 30999;
const BUILD_GID: u32 = 30999;
/// The build user of `starter_role`'s build, which no other test uses.
const STARTER_UID: u32 = 30998;

fn busybox() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("HOME")?).join(".cache/guix-daemon-rs/rootfs/bin/busybox");
    p.exists().then_some(p)
}

fn can_run() -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || busybox().is_none() {
        eprintln!("skipped: needs root and the rig's busybox");
        return false;
    }
    true
}

fn path(n: u8, name: &str) -> StorePath {
    let mut d = [0u8; 20];
    d[0] = n;
    d[19] = 0x5a;
    StorePath::from_parts(HashPart::from_digest(&d), name).unwrap()
}

/// A temporary store holding `<hash>-busybox-static/bin/busybox`.
struct TestStore {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
    tmp: PathBuf,
    busybox: StorePath,
}

impl TestStore {
    fn new() -> TestStore {
        TestStore::new_in(&std::env::temp_dir())
    }

    fn new_in(parent: &Path) -> TestStore {
        let dir = tempfile::Builder::new().prefix("guix-rs-sbx-").tempdir_in(parent).unwrap();
        let root = dir.path().canonicalize().unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let store = root.join("store");
        let tmp = root.join("tmp");
        fs::create_dir_all(&store).unwrap();
        fs::create_dir_all(&tmp).unwrap();
        // As a store of a daemon with build users: 1775 root:guixbuild.
        std::os::unix::fs::chown(&store, Some(0), Some(BUILD_GID)).unwrap();
        fs::set_permissions(&store, fs::Permissions::from_mode(0o1775)).unwrap();
        let busybox = path(1, "busybox-static");
        let bin = store.join(busybox.base_name()).join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::copy(crate::busybox().unwrap(), bin.join("busybox")).unwrap();
        fs::set_permissions(bin.join("busybox"), fs::Permissions::from_mode(0o555)).unwrap();
        TestStore { _dir: dir, root, store, tmp, busybox }
    }

    fn bb(&self) -> String {
        format!("{}/{}/bin/busybox", self.store.display(), self.busybox.base_name())
    }

    fn abs(&self, p: &StorePath) -> String {
        format!("{}/{}", self.store.display(), p.base_name())
    }

    fn settings(&self) -> SandboxSettings {
        let mut s = SandboxSettings::from_config(&guix_ipc::config::DaemonConfig::default());
        s.store_dir = self.store.clone();
        s.tmp_dir = self.tmp.clone();
        s.system = "x86_64-linux".into();
        s.helper_program = Some(PathBuf::from(env!("CARGO_BIN_EXE_guix-builder")));
        s
    }

    /// A derivation running the probe (or `script`) with busybox, output `out`.
    fn spec(&self, name: &str, script: &str, fixed: bool) -> StartSpec {
        let out = path(2, name);
        let drv_path = path(3, &format!("{name}.drv"));
        let mut env = BTreeMap::new();
        env.insert(b"out".to_vec(), self.abs(&out).into_bytes());
        env.insert(b"impureEnvVars".to_vec(), b"FOO_IMPURE http_proxy".to_vec());
        let mut outputs = BTreeMap::new();
        let mut o = DerivationOutput { path: Some(out.clone()), hash_algo: String::new(), hash: String::new() };
        if fixed {
            o.hash_algo = "r:sha256".into();
            o.hash = "0".repeat(64);
        }
        outputs.insert(OutputName::out(), o);
        let drv = Derivation {
            outputs,
            input_drvs: BTreeMap::new(),
            input_srcs: BTreeSet::from([self.busybox.clone()]),
            platform: b"x86_64-linux".to_vec(),
            builder: self.bb().into_bytes(),
            args: vec![
                b"sh".to_vec(),
                b"-c".to_vec(),
                script.as_bytes().to_vec(),
                b"probe".to_vec(),
                self.bb().into_bytes(),
            ],
            env,
        };
        StartSpec {
            drv_path,
            drv,
            outputs: BTreeMap::from([("out".to_owned(), out)]),
            redirects: BTreeMap::new(),
            input_paths: BTreeSet::from([self.busybox.clone()]),
            user: Some((BUILD_UID, BUILD_GID, vec![BUILD_GID])),
            extra_files: vec![],
            settings: self.settings(),
        }
    }
}

/// Reads the whole log (with a deadline) and waits for the exit.
async fn finish(started: &mut Started) -> (String, std::process::ExitStatus) {
    let mut log = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), started.log.read_to_end(&mut log))
        .await
        .expect("log EOF within 60 s")
        .unwrap();
    let status =
        tokio::time::timeout(Duration::from_secs(30), started.wait()).await.expect("exit within 30 s").unwrap();
    (String::from_utf8_lossy(&log).into_owned(), status)
}

/// The probe's sections.
fn sections(log: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cur = String::new();
    for line in log.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            cur = name.to_owned();
            m.entry(cur.clone()).or_default();
        } else {
            m.entry(cur.clone()).or_default().push(line.to_owned());
        }
    }
    m
}

/// The mount point (field 5) and options (field 6) of each mountinfo line.
fn mounts(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[4].to_owned(), f[5].split(',').next().unwrap_or("").to_owned())
        })
        .collect()
}

#[tokio::test]
async fn chroot_build_is_isolated_as_the_cxx_daemon() {
    if !can_run() {
        return;
    }
    let t = TestStore::new();
    let mut spec = t.spec("probe-normal", PROBE, false);
    spec.drv.env.insert(b"PROBE_WAIT".to_vec(), b"1".to_vec());
    spec.extra_files.push(("graph".into(), b"x\n".to_vec()));
    let drv_abs = t.abs(&spec.drv_path);
    let out = spec.outputs["out"].clone();
    let mut started = sandbox::start(spec).await.unwrap();
    assert!(started.notes.is_empty());
    let layout = &started.layout;
    let n = "guix-build-probe-normal.drv-0";
    assert_eq!(layout.tmp_dir, t.tmp.join(n));
    assert_eq!(layout.top_in_sandbox, Path::new("/tmp").join(n));

    // From outside, while the build runs (§4.4, §4.5, Appendix).
    let md = |p: &Path| fs::symlink_metadata(p).unwrap();
    let tmp = md(&layout.tmp_dir);
    assert_eq!((tmp.mode() & 0o7777, tmp.uid(), tmp.gid()), (0o700, 0, 0));
    let top = md(&layout.top);
    assert_eq!((top.mode() & 0o7777, top.uid(), top.gid()), (0o700, BUILD_UID, BUILD_GID));
    let container = md(Path::new(&format!("{drv_abs}.chroot")));
    assert_eq!((container.mode() & 0o7777, container.uid(), container.gid()), (0o750, 0, 0));
    let root = layout.chroot_root.clone().unwrap();
    assert_eq!(root, PathBuf::from(format!("{drv_abs}.chroot/top")));
    // `/` becomes 0555 inside; give the child a moment to get there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while md(&root).mode() & 0o7777 != 0o555 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = md(&root);
    assert_eq!((r.mode() & 0o7777, r.uid(), r.gid()), (0o555, 0, BUILD_GID));
    let graph = md(&layout.top.join("graph"));
    assert_eq!((graph.mode() & 0o7777, graph.uid()), (0o644, 0));
    fs::write(layout.top.join("go"), "").unwrap();

    let (log, status) = finish(&mut started).await;
    assert!(status.success(), "{log}");
    if let Some(dump) = std::env::var_os("GUIX_RS_PROBE_OUT") {
        fs::write(dump, &log).unwrap(); // for comparing with the C++ daemon's run by hand
    }
    let s = sections(&log);
    let top_in = format!("/tmp/{n}");
    let store = t.store.display().to_string();
    let mut expected_env: Vec<String> = Vec::new();
    for (k, v) in [
        ("HOME", "/homeless-shelter"),
        ("NIX_BUILD_CORES", "0"),
        ("NIX_BUILD_TOP", &top_in),
        ("NIX_STORE", &store),
        ("PATH", "/path-not-set"),
        ("PROBE_WAIT", "1"),
        ("PWD", &top_in),
        ("SHLVL", "1"),
        ("TEMP", &top_in),
        ("TEMPDIR", &top_in),
        ("TMP", &top_in),
        ("TMPDIR", &top_in),
        ("impureEnvVars", "FOO_IMPURE http_proxy"),
        ("out", &t.abs(&out)),
    ] {
        expected_env.push(format!("{k}={v}"));
    }
    expected_env.sort();
    assert_eq!(s["env"], expected_env, "{log}");
    assert_eq!(s["id"], ["uid=30999(nixbld) gid=30999(nixbld) groups=30999(nixbld)"]);
    assert_eq!(s["hostname"], ["localhost"]);
    assert_eq!(s["domainname"], ["(none)"]);
    assert_eq!(s["pid"], ["1"]);
    assert_eq!(s["cwd"], std::slice::from_ref(&top_in));
    assert_eq!(s["umask"], ["0022"]);
    assert!(s["argv0"][0].starts_with("busybox sh -c "), "{:?}", s["argv0"]);

    // `ls -la /`: exactly dev etc proc tmp (+ the test store's first component), 0555 root:nixbld.
    let ls_root = &s["ls /"];
    assert!(
        ls_root
            .iter()
            .any(|l| l.starts_with("dr-xr-xr-x") && l.contains(" 0 ") && l.contains("nixbld") && l.ends_with(" .")),
        "{ls_root:?}"
    );
    let names: BTreeSet<&str> = ls_root
        .iter()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last())
        .filter(|n| *n != "." && *n != "..")
        .collect();
    assert_eq!(names, BTreeSet::from(["dev", "etc", "proc", "tmp"]), "{ls_root:?}");
    assert!(ls_root.iter().any(|l| l.starts_with("drwxrwxrwt") && l.ends_with(" tmp")), "{ls_root:?}");

    let dev: BTreeSet<String> = s["ls /dev"]
        .iter()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|x| *x == "->");
            let name = match i {
                Some(i) => format!("{} -> {}", f[i - 1], f[i + 1]),
                None => f.last()?.to_string(),
            };
            (name != "." && name != "..").then_some(name)
        })
        .collect();
    let mut want_dev: BTreeSet<String> = [
        "fd -> /proc/self/fd",
        "full",
        "null",
        "ptmx -> /dev/pts/ptmx",
        "pts",
        "random",
        "shm",
        "stderr -> /proc/self/fd/2",
        "stdin -> /proc/self/fd/0",
        "stdout -> /proc/self/fd/1",
        "tty",
        "urandom",
        "zero",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if Path::new("/dev/kvm").exists() {
        want_dev.insert("kvm".into());
    }
    assert_eq!(dev, want_dev, "{:?}", s["ls /dev"]);

    assert_eq!(
        s["passwd"],
        ["nixbld:x:30999:30999:Nix build user:/:/noshell", "nobody:x:65534:65534:Nobody:/:/noshell"]
    );
    assert_eq!(s["group"], ["nixbld:!:30999:"]);
    assert_eq!(s["hosts"], ["127.0.0.1 localhost", "::1 localhost"]);
    for f in ["group", "hosts", "passwd"] {
        assert!(
            s["ls /etc"].iter().any(|l| l.starts_with("-rw-r--r--") && l.ends_with(&format!(" {f}"))),
            "{:?}",
            s["ls /etc"]
        );
    }
    assert!(
        s["ls /tmp"].iter().any(|l| l.starts_with("drwx------") && l.contains("nixbld") && l.ends_with(n)),
        "{:?}",
        s["ls /tmp"]
    );
    assert!(s["ls store"].iter().any(|l| l.starts_with("drwxrwxr-t") && l.ends_with(" .")), "{:?}", s["ls store"]);

    // Mounts, in the order of the observed C++ mountinfo: `/`, the binds in the byte order
    // of their targets (with /gnu/store: /dev nodes, inputs, build dir), then proc, shm, pts.
    let m = mounts(&s["mountinfo"]);
    let mut want: Vec<(String, String)> = vec![("/".into(), "rw".into())];
    let mut binds: Vec<(String, String)> = Vec::new();
    for d in ["full", "kvm", "null", "random", "tty", "urandom", "zero"] {
        if d != "kvm" || Path::new("/dev/kvm").exists() {
            binds.push((format!("/dev/{d}"), "rw".into()));
        }
    }
    binds.push((t.abs(&t.busybox), "ro".into()));
    binds.push((top_in.clone(), "rw".into()));
    binds.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    want.extend(binds);
    want.push(("/proc".into(), "rw".into()));
    want.push(("/dev/shm".into(), "rw".into()));
    want.push(("/dev/pts".into(), "rw".into()));
    assert_eq!(m, want, "{:?}", s["mountinfo"]);
    assert!(
        s["mountinfo"].last().unwrap().contains("devpts")
            && s["mountinfo"].last().unwrap().contains("mode=620,ptmxmode=000")
    );

    // Network: only lo, up, with 127.0.0.1/8 and ::1/128.
    let ip = s["ip"].join("\n");
    assert!(ip.starts_with("1: lo: <LOOPBACK,UP,LOWER_UP>"), "{ip}");
    assert!(ip.contains("inet 127.0.0.1/8 scope host lo"), "{ip}");
    assert!(!ip.contains("2: "), "{ip}");
    let netdev: Vec<&String> = s["netdev"].iter().skip(2).collect();
    assert_eq!(netdev.len(), 1, "{netdev:?}");
    assert!(netdev[0].trim_start().starts_with("lo:"));

    let status_lines = &s["status"];
    for want in [
        "CapInh:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t0",
        "Seccomp:\t0",
    ] {
        assert!(status_lines.iter().any(|l| l == want), "{want}: {status_lines:?}");
    }
    assert!(status_lines.iter().any(|l| l.starts_with("Uid:\t30999\t30999\t30999\t30999")));
    assert!(status_lines.iter().any(|l| l.starts_with("Groups:\t30999")));
    assert_eq!(s["personality"], ["00040000"]);
    assert_eq!(s["fds"], ["0", "1", "2", "3"], "fd 3 is ls's own directory");
    let fdt = &s["fd targets"];
    // A bind of the devtmpfs node: the kernel names it within its mount ("/null").
    assert!(fdt[0] == "/null" || fdt[0] == "/dev/null", "{fdt:?}");
    assert!(fdt[1].starts_with("pipe:") && fdt[1] == fdt[2], "{fdt:?}");

    // The output is in the chroot's store, owned by the build user.
    let out_host = started.layout.output_location(&out);
    assert_eq!(out_host, root.join(t.store.strip_prefix("/").unwrap()).join(out.base_name()));
    assert_eq!(fs::read_to_string(out_host.join("file")).unwrap(), "probe\n");
    assert_eq!(md(&out_host).uid(), BUILD_UID);

    let layout = started.layout;
    let tmp_dir = layout.tmp_dir.clone();
    assert_eq!(layout.cleanup(false, None).unwrap(), None);
    assert!(!tmp_dir.exists());
    assert!(!Path::new(&format!("{drv_abs}.chroot")).exists());
}

#[tokio::test]
async fn fixed_output_build_gets_the_hosts_etc_and_no_network() {
    if !can_run() {
        return;
    }
    let t = TestStore::new();
    let spec = t.spec("probe-fod", PROBE, true);
    let mut started = sandbox::start(spec).await.unwrap();
    assert_eq!(started.notes, ["`/usr/bin/slirp4netns' can't be found in PATH, network access disabled"]);
    let (log, status) = finish(&mut started).await;
    assert!(status.success(), "{log}");
    let s = sections(&log);
    assert!(s["env"].contains(&"FOO_IMPURE=".to_owned()), "{:?}", s["env"]);
    assert!(s["env"].contains(&"http_proxy=".to_owned()));
    let ip = s["ip"].join("\n");
    assert!(ip.starts_with("1: lo: <LOOPBACK> "), "{ip}");
    assert!(!ip.contains("inet"), "{ip}");
    let m = mounts(&s["mountinfo"]);
    for f in ["/etc/hosts", "/etc/nsswitch.conf", "/etc/resolv.conf", "/etc/services"] {
        if Path::new(f).exists() {
            assert!(m.contains(&(f.to_owned(), "ro".to_owned())), "{f}: {m:?}");
        }
    }
    // /etc binds come after /dev and before the store inputs (map order).
    let pos = |p: &str| m.iter().position(|(x, _)| x == p);
    if let (Some(e), Some(z), Some(b)) = (pos("/etc/hosts"), pos("/dev/zero"), pos(&t.abs(&t.busybox))) {
        assert!(z < e && e < b, "{m:?}");
    }
    if Path::new("/etc/hosts").exists() {
        assert_eq!(s["hosts"].join("\n") + "\n", fs::read_to_string("/etc/hosts").unwrap());
    }
    started.layout.cleanup(false, None).unwrap();
}

#[tokio::test]
async fn set_up_and_exec_failures_have_the_cxx_messages() {
    if !can_run() {
        return;
    }
    let t = TestStore::new();

    // A failed phase: the build does not start, the message is C++'s.
    let mut spec = t.spec("bad-chroot-dir", "true", false);
    spec.settings.extra_chroot_dirs = vec!["/nonexistent-guix-rs".into()];
    let drv_abs = t.abs(&spec.drv_path);
    let e = sandbox::start(spec).await.unwrap_err();
    assert!(matches!(e, Error::Setup(_)));
    assert_eq!(
        e.to_string(),
        "while setting up the child process: in phase mountIntoChroot: getting attributes of path `/nonexistent-guix-rs': No such file or directory"
    );
    assert!(!Path::new(&format!("{drv_abs}.chroot")).exists(), "chroot removed after a failed set-up");
    assert!(!t.tmp.join("guix-build-bad-chroot-dir.drv-0").exists(), "build dir removed");

    // After set-up: a builder outside the store fails the build with the message in the log
    // (observed with the C++ daemon: "builder for `…' failed with exit code 1").
    let mut spec = t.spec("outside", "true", false);
    spec.drv.builder = b"/dev/null".to_vec();
    let mut started = sandbox::start(spec).await.unwrap();
    let (log, status) = finish(&mut started).await;
    assert_eq!(
        log,
        "while setting up the child process: in phase exec: derivation builder `/dev/null' is outside the store\n"
    );
    assert_eq!(sandbox::status_to_string(&status), "failed with exit code 1");
    started.layout.cleanup(false, None).unwrap();

    let mut spec = t.spec("missing", "true", false);
    let missing = format!("{}/{}/bin/nope", t.store.display(), t.busybox.base_name());
    spec.drv.builder = missing.clone().into_bytes();
    let mut started = sandbox::start(spec).await.unwrap();
    let (log, status) = finish(&mut started).await;
    assert_eq!(log, format!("while setting up the child process: in phase exec: getting status of `{missing}': No such file or directory\n"));
    assert_eq!(status.code(), Some(1));
    started.layout.cleanup(false, None).unwrap();

    // A builder that exits non-zero, and one killed by a signal.
    let mut started = sandbox::start(t.spec("exit3", "exit 3", false)).await.unwrap();
    let (_, status) = finish(&mut started).await;
    assert_eq!(sandbox::status_to_string(&status), "failed with exit code 3");
    started.layout.cleanup(true, Some(0)).unwrap();

    let bb = t.bb();
    let mut started = sandbox::start(t.spec("sig", &format!("\"{bb}\" sleep 100 & wait"), false)).await.unwrap();
    started.kill();
    let (_, status) = finish(&mut started).await;
    assert_eq!(sandbox::status_to_string(&status), "failed due to signal 9 (Killed)");
    started.layout.cleanup(false, None).unwrap();
}

#[tokio::test]
async fn keep_failed_keeps_the_build_directory_as_cxx_for_root() {
    if !can_run() {
        return;
    }
    let t = TestStore::new();
    let mut started =
        sandbox::start(t.spec("will-fail", "echo kept > keep.txt; mkdir sub; exit 3", false)).await.unwrap();
    let (_, status) = finish(&mut started).await;
    assert_eq!(status.code(), Some(3));
    let tmp_dir = started.layout.tmp_dir.clone();
    let note = started.layout.cleanup(true, Some(0)).unwrap();
    assert_eq!(note.unwrap(), format!("note: keeping build directory `{}'", tmp_dir.display()));
    let md = fs::metadata(&tmp_dir).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o700, 0));
    let top = fs::metadata(tmp_dir.join("top")).unwrap();
    assert_eq!((top.mode() & 0o7777, top.uid(), top.gid()), (0o755, BUILD_UID, BUILD_GID));
    assert_eq!(fs::read_to_string(tmp_dir.join("top/keep.txt")).unwrap(), "kept\n");
}

#[tokio::test]
async fn without_chroot_the_build_runs_in_the_real_build_directory() {
    if !can_run() {
        return;
    }
    let t = TestStore::new();
    let mut spec = t.spec("nochroot", PROBE, false);
    spec.settings.use_chroot = false;
    let mut started = sandbox::start(spec).await.unwrap();
    assert!(started.layout.chroot_root.is_none());
    let top = started.layout.top.clone();
    assert_eq!(top, t.tmp.join("guix-build-nochroot.drv-0"));
    let (log, status) = finish(&mut started).await;
    assert!(status.success(), "{log}");
    let s = sections(&log);
    let top_s = top.display().to_string();
    assert_eq!(s["cwd"], std::slice::from_ref(&top_s));
    assert!(s["env"].contains(&format!("NIX_BUILD_TOP={top_s}")));
    assert!(s["env"].contains(&"HOME=/homeless-shelter".to_owned()));
    assert_eq!(s["ids"], ["30999", "30999", "30999"]);
    assert_ne!(s["pid"], ["1"]);
    assert_eq!(s["umask"], ["0022"]);
    assert_eq!(s["personality"], ["00040000"]);
    let out = started.layout.output_location(&path(2, "nochroot"));
    assert_eq!(out, t.store.join(path(2, "nochroot").base_name()));
    assert!(out.join("file").exists());
    fs::remove_dir_all(&out).unwrap();
    started.layout.cleanup(false, None).unwrap();
}

#[tokio::test]
async fn builtins_run_guix_perform_download_or_fail_in_the_log() {
    if !can_run() {
        return;
    }
    let t = TestStore::new();
    let mut spec = t.spec("frob", "", true);
    spec.drv.builder = b"builtin:frob".to_vec();
    let mut started = sandbox::start(spec).await.unwrap();
    assert!(started.layout.chroot_root.is_none());
    let (log, status) = finish(&mut started).await;
    assert_eq!(log, "error: unsupported builtin function 'frob'\n");
    assert_eq!(status.code(), Some(1));
    started.layout.cleanup(false, None).unwrap();

    // `guix` here is a script printing how it was run.
    let guix = t.root.join("guix");
    fs::write(&guix, "#!/bin/sh\necho \"argv0=$0 args=$*\"\necho \"NIX_STORE=$NIX_STORE\"\nprintf '%s' \"$_NIX_OPTIONS\"\necho \"cwd=$(pwd) uid=$(id -u)\"\nls /proc/self/fd\n").unwrap();
    fs::set_permissions(&guix, fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = t.spec("dl", "", true);
    spec.drv.builder = b"builtin:download".to_vec();
    spec.settings.guix_program = guix.clone();
    spec.settings.nix_options =
        vec![("print-extended-build-trace".into(), "true".into()), ("build-cores".into(), "0".into())];
    let drv = t.abs(&spec.drv_path);
    let out = t.abs(&spec.outputs["out"]);
    let mut started = sandbox::start(spec).await.unwrap();
    let top = started.layout.top.clone();
    let (log, status) = finish(&mut started).await;
    assert!(status.success(), "{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], format!("argv0={} args=perform-download {drv} {out}", guix.display()));
    assert_eq!(lines[1], format!("NIX_STORE={}", t.store.display()));
    assert_eq!(lines[2], "print-extended-build-trace=true");
    assert_eq!(lines[3], "build-cores=0");
    assert_eq!(lines[4], format!("cwd={} uid=30999", top.display()));
    started.layout.cleanup(false, None).unwrap();
}

/// The role of `build_dies_with_the_process_that_started_it`'s victim: starts a build that
/// never ends, prints the build's pid, and waits to be killed.
#[tokio::test]
#[ignore = "helper role, run by build_dies_with_the_process_that_started_it"]
async fn starter_role() {
    let Ok(dir) = std::env::var("GUIX_RS_STARTER_DIR") else { return };
    let t = TestStore::new_in(Path::new(&dir));
    let bb = t.bb();
    let mut spec = t.spec("forever", &format!("\"{bb}\" sleep 1000 & \"{bb}\" sleep 1000"), false);
    spec.user = Some((STARTER_UID, STARTER_UID, vec![STARTER_UID]));
    let started = sandbox::start(spec).await.unwrap();
    fs::write(Path::new(&dir).join("pid"), started.pid.to_string()).unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test]
async fn build_dies_with_the_process_that_started_it() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut victim = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "starter_role", "--ignored", "--nocapture"])
        .env("GUIX_RS_STARTER_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = dir.path().join("pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "the starter never started its build");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pid: u32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // The build's processes: PID 1 of the namespace and its children, all of uid 30999.
    let build_procs = || -> Vec<u32> {
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| fs::metadata(format!("/proc/{p}")).map(|m| m.uid() == STARTER_UID).unwrap_or(false))
            .collect()
    };
    assert!(build_procs().contains(&pid), "build process {pid} is running as the build user");
    assert!(build_procs().len() >= 2, "PID 1 and its sleeping child");
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = build_procs();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "build processes survived the starter: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn keep_failed_for_a_client_that_is_not_root_gives_it_the_tree() {
    if !can_run() {
        return;
    }
    let t = TestStore::new();
    let script = "echo kept > keep.txt; echo x > s; chmod 4777 s; exit 3";
    let mut started = sandbox::start(t.spec("will-fail-user", script, false)).await.unwrap();
    let (_, status) = finish(&mut started).await;
    assert_eq!(status.code(), Some(3));
    let tmp_dir = started.layout.tmp_dir.clone();
    let note = started.layout.cleanup(true, Some(4242)).unwrap().unwrap();
    assert_eq!(note, format!("note: keeping build directory `{}'", tmp_dir.display()));
    // Pivoted: the kept directory is the builder's `top` itself, now the client's.
    let md = fs::metadata(&tmp_dir).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o755, 4242));
    assert_eq!(fs::read_to_string(tmp_dir.join("keep.txt")).unwrap(), "kept\n");
    let s = fs::metadata(tmp_dir.join("s")).unwrap();
    assert_eq!((s.mode() & 0o7777, s.uid()), (0o775, 4242), "setuid and o+w stripped");
    assert!(!tmp_dir.join("top").exists());
    assert!(!Path::new(&format!("{}.pivot", tmp_dir.display())).exists());
}

/// Waits (10 s at most) until `spares` has its full count of waiting helpers.
fn wait_for_spares(spares: &sandbox::Spares) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = spares.waiting();
        if pids.len() == sandbox::Spares::KEPT {
            return pids;
        }
        assert!(Instant::now() < deadline, "spare helpers not started: {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: u32) -> bool {
    // Not a zombie: the spares' parent (tokio) reaps them when they die.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

#[test]
fn spare_helpers_outlive_idle_threads_and_a_dead_one_is_replaced() {
    if !can_run() {
        return;
    }
    // Blocking threads that end after 50 ms idle: spares started by one would die with it
    // (`PR_SET_PDEATHSIG` follows the thread).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(Duration::from_millis(50))
        .enable_all()
        .build()
        .unwrap();
    let t = TestStore::new();
    let spares = std::sync::Arc::new(sandbox::Spares::default());
    rt.block_on(async {
        for round in 0..3 {
            let mut spec = t.spec(&format!("spare-{round}"), "echo ok > $out", false);
            spec.settings.spares = Some(spares.clone());
            if round > 0 {
                let pids = wait_for_spares(&spares);
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(pids.iter().all(|p| alive(*p)), "spares died while waiting: {pids:?}");
                if round == 2 {
                    // Killed while waiting (by an administrator, say): the build still starts.
                    for p in &pids {
                        // SAFETY: signalling our own children.
                        unsafe { libc::kill(*p as libc::pid_t, libc::SIGKILL) };
                    }
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while pids.iter().any(|p| alive(*p)) {
                        assert!(Instant::now() < deadline, "killed spares still alive");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            let mut started = sandbox::start(spec).await.unwrap();
            let (log, status) = finish(&mut started).await;
            assert!(status.success(), "round {round}: {log}");
            started.layout.cleanup(false, None).unwrap();
        }
    });
}

/// The pids of processes whose real uid is `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(status) = fs::read_to_string(e.path().join("status")) else { continue };
        let ruid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
        if ruid == Some(&uid.to_string()) {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test]
async fn a_chroot_build_leaves_nothing_running_once_reaped_and_one_without_may() {
    if !can_run() {
        return;
    }
    let t = TestStore::new();
    // A uid of its own: the other tests here build as BUILD_UID at the same time.
    const UID: u32 = 30997;
    // Whatever an earlier failed run left.
    guix_builder::users::kill_user(UID).unwrap();
    let spec = |name: &str| {
        let mut spec = t.spec(name, "$1 sleep 100 & echo ok > $out", false);
        spec.user = Some((UID, BUILD_GID, vec![BUILD_GID]));
        spec
    };
    // A background process that would outlive its builder.
    let mut started = sandbox::start(spec("leftover-chroot")).await.unwrap();
    let (log, status) = finish(&mut started).await;
    assert!(status.success(), "{log}");
    assert!(started.nothing_left_running());
    assert_eq!(processes_of(UID), Vec::<u32>::new(), "a chroot build's process survived");
    started.layout.cleanup(false, None).unwrap();

    let mut spec = spec("leftover-nochroot");
    spec.settings.use_chroot = false;
    let mut started = sandbox::start(spec).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), started.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!started.nothing_left_running());
    assert!(!processes_of(UID).is_empty(), "the background sleep should still run without a chroot");
    guix_builder::users::kill_user(UID).unwrap();
    let out = started.layout.output_location(&path(2, "leftover-nochroot"));
    let _ = fs::remove_file(&out);
    started.layout.cleanup(false, None).unwrap();
}

//! The sandbox helper: `guix-builder --sandbox-child`, started by [`super::start`] for each
//! build. A fresh single-threaded process, so that `unshare` of the mount namespace is allowed
//! and the build process's `PR_SET_PDEATHSIG` follows a parent that does not go away while the
//! build runs (a thread of the tokio blocking pool would).
//!
//! With [`UNSHARED_FLAG`] after the helper flag, the helper enters the new namespaces before
//! it reads the plan (which must then be a chroot build's): the daemon starts such helpers
//! ahead of time, so a build's start does not wait for the helper's `exec` and namespaces.
//!
//! File descriptors on entry: 0 = the [`ChildPlan`] as JSON (read to EOF), 1 = the status
//! pipe ([`Report`] lines), 2 = the log pipe; the helper moves the status pipe out of the way
//! and gives the build the log on 1 and 2. (No descriptor above 2 is passed, so the daemon
//! starts the helper with `posix_spawn`, without a `fork` of its own large address space.) The helper enters the new namespaces
//! (`unshare`), forks the build process (PID 1 of the new PID namespace for chroot builds),
//! reports its pid, whether its set-up succeeded, and finally its wait status.
//!
//! The build process runs the C++ spawn phases in the C++ order (`getCloneSpawnPhases`, or
//! `getBasicSpawnPhases` without chroot) and reports a failure as C++ does: "while setting
//! up the child process: in phase LABEL: MESSAGE". As in C++, set-up success is signalled
//! before the `exec` phase, so a builder outside the store or one that cannot be executed
//! fails the build (exit 1) with that message in the log.

use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use super::plan::{Bind, ChildPlan, ChrootPlan, Exec, Report, CHROOT_NAMESPACES};

type Phase = Result<(), String>;

/// See the module documentation.
pub const UNSHARED_FLAG: &str = "--unshared";

/// The niceness of a spare helper until it has a build.
const SPARE_NICE: libc::c_int = 10;

/// Entry point of `guix-builder --sandbox-child`. Never returns.
pub fn helper_main() -> ! {
    // SAFETY: fd 1 is the status pipe given by the daemon (see the module documentation); it
    // moves to a close-on-exec descriptor of its own, and fd 1 becomes the log, as fd 2 is.
    let status_fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if status_fd < 0 || unsafe { libc::dup2(2, 1) } < 0 {
        std::process::exit(1);
    }
    let mut status = unsafe { std::fs::File::from_raw_fd(status_fd) };
    let code = match run_helper(&mut status) {
        Ok(()) => 0,
        Err(msg) => {
            report(&mut status, &Report::SetupFailed(msg));
            1
        }
    };
    std::process::exit(code)
}

fn report(status: &mut std::fs::File, r: &Report) {
    if let Ok(mut line) = serde_json::to_vec(r) {
        line.push(b'\n');
        let _ = status.write_all(&line);
    }
}

fn errno_text() -> String {
    guix_store::strerror(&std::io::Error::last_os_error())
}

fn sys(context: impl AsRef<str>) -> String {
    format!("{}: {}", context.as_ref(), errno_text())
}

fn show(p: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(p)
}

fn cstr(b: &[u8]) -> Result<CString, String> {
    CString::new(b).map_err(|_| format!("`{}' contains a NUL byte", show(b)))
}

fn run_helper(status: &mut std::fs::File) -> Result<(), String> {
    let status_fd = std::os::fd::AsRawFd::as_raw_fd(status);
    // SAFETY: plain system calls. A daemon that dies from here on takes us with it; one that
    // died before is noticed below (our parent changed), or as the plan's EOF.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let unshared = std::env::args_os().nth(2).is_some_and(|a| a == UNSHARED_FLAG);
    if unshared {
        // A spare: its start-up must not take the CPU from builds being set up now. Back at
        // our priority once it has a build (a build inherits it).
        // SAFETY: plain system calls; this process is single-threaded.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, SPARE_NICE) };
        if unsafe { libc::unshare(CHROOT_NAMESPACES) } == -1 {
            return Err(sys("clone"));
        }
    }
    let mut json = Vec::new();
    std::io::stdin().lock().read_to_end(&mut json).map_err(|e| format!("reading the build plan: {e}"))?;
    // SAFETY: plain system call (root may raise its priority again).
    if unshared && unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) } == -1 {
        return Err(sys("setpriority"));
    }
    if json.is_empty() {
        // A spare helper the daemon no longer wants (or a daemon gone).
        // SAFETY: exiting without unwinding.
        unsafe { libc::_exit(1) };
    }
    let plan: ChildPlan = serde_json::from_slice(&json).map_err(|e| format!("parsing the build plan: {e}"))?;
    // SAFETY: plain system call.
    if unsafe { libc::getppid() } as u32 != plan.daemon_pid {
        // The daemon is gone already: nobody wants this build.
        // SAFETY: exiting without unwinding.
        unsafe { libc::_exit(1) };
    }
    if plan.chroot.is_some() != unshared {
        if unshared {
            return Err("a helper started for a chroot build got a build without one".into());
        }
        // SAFETY: this process is single-threaded.
        if unsafe { libc::unshare(CHROOT_NAMESPACES) } == -1 {
            return Err(sys("clone"));
        }
    }
    let (setup_r, setup_w) = pipe()?;
    let (life_r, life_w) = pipe()?;
    // SAFETY: single-threaded; the child runs `build_process`, which never returns.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(sys("unable to fork"));
    }
    if pid == 0 {
        // SAFETY: closing our copies of the helper's ends.
        unsafe {
            libc::close(setup_r);
            libc::close(life_w);
            libc::close(status_fd);
        }
        build_process(&plan, setup_w, life_r);
    }
    // SAFETY: closing the child's ends, and our log descriptors (the log's EOF must come from
    // the build's processes alone).
    unsafe {
        libc::close(setup_w);
        libc::close(life_r);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::close(null);
        }
    }
    report(status, &Report::Pid(pid as u32));
    // SAFETY: `setup_r` is ours.
    let mut setup = unsafe { std::fs::File::from_raw_fd(setup_r) };
    let mut msg = Vec::new();
    let _ = setup.read_to_end(&mut msg);
    drop(setup);
    if msg.is_empty() {
        report(status, &Report::SetUp);
    } else {
        report(status, &Report::SetupFailed(String::from_utf8_lossy(&msg).trim_end_matches('\n').to_owned()));
    }
    let mut wstatus = 0;
    loop {
        // SAFETY: waiting for our child.
        let r = unsafe { libc::waitpid(pid, &mut wstatus, 0) };
        if r == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(sys("waiting for the build process"));
        }
    }
    report(status, &Report::Exited(wstatus));
    // SAFETY: `life_w` is ours; closing it is harmless now.
    unsafe { libc::close(life_w) };
    Ok(())
}

fn pipe() -> Result<(RawFd, RawFd), String> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(sys("creating a pipe"));
    }
    Ok((fds[0], fds[1]))
}

/// The build process. `setup_w`: where a set-up failure is written (closed empty on success);
/// `life_r`: readable (EOF) once the helper is gone.
fn build_process(plan: &ChildPlan, setup_w: RawFd, life_r: RawFd) -> ! {
    // SAFETY: plain system calls in a single-threaded child.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if helper_gone(life_r) {
            libc::_exit(1);
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::umask(0o022);
    }
    type Step<'a> = (&'static str, Box<dyn Fn() -> Phase + 'a>);
    let mut phases: Vec<Step<'_>> = vec![
        ("setsid", Box::new(setsid)),
        ("earlyIOSetup", Box::new(early_io_setup)),
        ("dropAmbientCapabilities", Box::new(drop_ambient_capabilities)),
    ];
    if let Some(c) = &plan.chroot {
        phases.extend::<[Step<'_>; 10]>([
            ("initLoopback", Box::new(|| if c.init_loopback { init_loopback() } else { Ok(()) })),
            ("setHostAndDomain", Box::new(set_host_and_domain)),
            ("makeFilesystemsPrivate", Box::new(make_filesystems_private)),
            ("makeChrootSeparateFilesystem", Box::new(|| make_chroot_separate_filesystem(c))),
            ("mountIntoChroot", Box::new(|| c.binds.iter().try_for_each(|b| bind_mount(c, b)))),
            ("mountProc", Box::new(|| mount_fresh(c, b"/proc", c"proc", None))),
            ("mountDevshm", Box::new(|| mount_fresh(c, b"/dev/shm", c"tmpfs", None))),
            ("mountDevpts", Box::new(|| mount_devpts(c))),
            ("chroot", Box::new(|| pivot_root(c))),
            ("clearRootWritePerms", Box::new(clear_root_write_perms)),
        ]);
    }
    phases.extend::<[Step<'_>; 6]>([
        ("chdir", Box::new(|| chdir(&plan.cwd))),
        ("closeMostFDs", Box::new(|| close_most_fds(&[setup_w, life_r]))),
        ("setPersonality", Box::new(|| set_personality(plan.persona))),
        ("oomSacrifice", Box::new(oom_sacrifice)),
        ("setIDs", Box::new(|| set_ids(plan, life_r))),
        ("restoreSIGPIPE", Box::new(restore_sigpipe)),
    ]);
    for (label, phase) in phases {
        if let Err(e) = phase() {
            let msg = format!("while setting up the child process: in phase {label}: {e}\n");
            // SAFETY: writing to our own pipe, then exiting without unwinding.
            unsafe {
                libc::write(setup_w, msg.as_ptr().cast(), msg.len());
                libc::_exit(1);
            }
        }
    }
    // setupSuccess: from here on, messages go to the log.
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(setup_w) };
    let (msg, prefix) = match &plan.exec {
        Exec::Builder { program, args, env, foreign_kernel, unsupported_platform } => (
            exec_builder(plan, program, args, env, *foreign_kernel, unsupported_platform.as_deref()),
            "while setting up the child process: in phase exec: ",
        ),
        Exec::Download { guix, drv_path, output, nix_store, nix_options } => {
            (exec_download(guix, drv_path, output, nix_store, nix_options), "error: ")
        }
        Exec::UnsupportedBuiltin { name } => (format!("unsupported builtin function '{}'", show(name)), "error: "),
    };
    let line = format!("{prefix}{msg}\n");
    // SAFETY: writing to stderr (the log), then exiting without unwinding.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::_exit(1)
    }
}

fn helper_gone(life_r: RawFd) -> bool {
    let mut p = libc::pollfd { fd: life_r, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n != 0
}

fn setsid() -> Phase {
    // SAFETY: plain system call.
    if unsafe { libc::setsid() } == -1 {
        return Err(sys("creating a new session"));
    }
    Ok(())
}

fn early_io_setup() -> Phase {
    // stdout and stderr are the log already (the helper's 1 and 2).
    // SAFETY: plain system calls on descriptors we own.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if fd == -1 {
            return Err(sys("cannot open `/dev/null'"));
        }
        if libc::dup2(fd, 0) == -1 {
            return Err(sys("cannot dup2 fd into stdin fd"));
        }
        if fd != 0 {
            libc::close(fd);
        }
    }
    Ok(())
}

fn drop_ambient_capabilities() -> Phase {
    // SAFETY: plain system call; C++ ignores its result too.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    Ok(())
}

fn init_loopback() -> Phase {
    // SAFETY: an ifreq for "lo" with the flags set, as C++ `initLoopbackAction`.
    unsafe {
        let fd = libc::socket(libc::PF_INET, libc::SOCK_DGRAM, libc::IPPROTO_IP);
        if fd == -1 {
            return Err(sys("cannot open IP socket"));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo") {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
        let r = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr);
        let err = sys("cannot set loopback interface flags");
        libc::close(fd);
        if r == -1 {
            return Err(err);
        }
    }
    Ok(())
}

fn set_host_and_domain() -> Phase {
    let h = b"localhost";
    // SAFETY: a valid buffer and its length.
    if unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) } == -1 {
        return Err(sys("cannot set host name"));
    }
    let d = b"(none)";
    // SAFETY: a valid buffer and its length.
    if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } == -1 {
        return Err(sys("cannot set domain name"));
    }
    Ok(())
}

fn mount(
    src: Option<&[u8]>,
    target: &[u8],
    fstype: Option<&std::ffi::CStr>,
    flags: libc::c_ulong,
    data: Option<&std::ffi::CStr>,
) -> bool {
    let src = match src.map(cstr).transpose() {
        Ok(s) => s,
        Err(_) => return false,
    };
    let Ok(target) = cstr(target) else { return false };
    let src_ptr = src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: valid C strings or NULL.
    unsafe {
        libc::mount(
            src_ptr,
            target.as_ptr(),
            fstype.map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        ) == 0
    }
}

fn make_filesystems_private() -> Phase {
    if !mount(None, b"/", None, libc::MS_REC | libc::MS_PRIVATE, None) {
        return Err(sys("unable to make `/' private mount"));
    }
    Ok(())
}

fn make_chroot_separate_filesystem(c: &ChrootPlan) -> Phase {
    if !mount(Some(&c.root), &c.root, None, libc::MS_BIND, None) {
        return Err(sys(format!("unable to bind mount ‘{}’", show(&c.root))));
    }
    Ok(())
}

fn join(root: &[u8], p: &[u8]) -> Vec<u8> {
    [root, p].concat()
}

/// `createDirs`: mkdir -p with mode 0777 (under umask 022).
fn create_dirs(p: &[u8]) -> Phase {
    let path = std::path::Path::new(OsStr::from_bytes(p));
    let mut b = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(b.recursive(true), 0o777);
    b.create(path).map_err(|e| format!("creating directory `{}': {}", show(p), guix_store::strerror(&e)))
}

fn dir_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|&c| c == b'/') {
        Some(0) | None => b"/",
        Some(i) => &p[..i],
    }
}

fn lstat(p: &[u8]) -> Result<libc::stat, std::io::Error> {
    let c = CString::new(p).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a zeroed stat buffer is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::lstat(c.as_ptr(), &mut st) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// C++ `bindMount` (spawn.cc): directories get a directory, symlinks are copied (a bind
/// mount would follow them), other files get an empty 0600 placeholder; `MS_BIND | MS_REC`,
/// then a read-only remount keeping the mount's other flags.
fn bind_mount(c: &ChrootPlan, b: &Bind) -> Phase {
    let target = join(&c.root, &b.target);
    let st = lstat(&b.source)
        .map_err(|e| format!("getting attributes of path `{}': {}", show(&b.source), guix_store::strerror(&e)))?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => create_dirs(&target)?,
        libc::S_IFLNK => {
            create_dirs(dir_of(&target))?;
            let link = std::fs::read_link(OsStr::from_bytes(&b.source))
                .map_err(|e| format!("reading symbolic link `{}': {}", show(&b.source), guix_store::strerror(&e)))?;
            std::os::unix::fs::symlink(&link, OsStr::from_bytes(&target)).map_err(|e| {
                format!(
                    "creating symlink from `{}' to `{}': {}",
                    show(&target),
                    link.display(),
                    guix_store::strerror(&e)
                )
            })?;
            return Ok(());
        }
        _ => {
            create_dirs(dir_of(&target))?;
            loop {
                match lstat(&target) {
                    Ok(st2) => {
                        if st2.st_mode & libc::S_IFMT != libc::S_IFREG {
                            return Err(format!("mount target `{}' exists but is not a regular file", show(&target)));
                        }
                        break;
                    }
                    Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                        return Err(format!("stat'ing path `{}': {}", show(&target), guix_store::strerror(&e)))
                    }
                    Err(_) => {}
                }
                let t = cstr(&target)?;
                // SAFETY: a valid C string.
                let fd = unsafe {
                    libc::open(
                        t.as_ptr(),
                        libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                        0o600,
                    )
                };
                if fd != -1 {
                    // SAFETY: our descriptor.
                    unsafe { libc::close(fd) };
                    break;
                }
                if std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                    return Err(sys(format!("Creating placeholder regular file target mount `{}'", show(&target))));
                }
            }
        }
    }
    if !mount(Some(&b.source), &target, None, libc::MS_BIND | libc::MS_REC, None) {
        return Err(sys(format!("bind mount from `{}' to `{}' failed", show(&b.source), show(&target))));
    }
    if b.read_only {
        let t = cstr(&target)?;
        // SAFETY: a zeroed statvfs is a valid out-parameter.
        let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(t.as_ptr(), &mut sv) } == -1 {
            return Err(sys(format!("statvfs of `{}'", show(&target))));
        }
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | statvfs_to_mount_flags(sv.f_flag);
        if !mount(Some(&b.source), &target, None, flags, None) {
            return Err(sys(format!("read-only remount of `{}' failed", show(&target))));
        }
    }
    Ok(())
}

fn statvfs_to_mount_flags(f: libc::c_ulong) -> libc::c_ulong {
    let pairs = [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    pairs.iter().filter(|(st, _)| f & st != 0).fold(0, |acc, (_, ms)| acc | ms)
}

fn mount_fresh(c: &ChrootPlan, at: &[u8], fstype: &std::ffi::CStr, data: Option<&std::ffi::CStr>) -> Phase {
    let target = join(&c.root, at);
    create_dirs(&target)?;
    if !mount(Some(b"none"), &target, Some(fstype), 0, data) {
        return Err(sys(format!("mounting `{}'", show(&target))));
    }
    Ok(())
}

fn mount_devpts(c: &ChrootPlan) -> Phase {
    if !c.mount_devpts || lstat(&join(&c.root, b"/dev/ptmx")).is_ok() {
        return Ok(());
    }
    mount_fresh(c, b"/dev/pts", c"devpts", Some(c"newinstance,mode=0620"))?;
    let link = join(&c.root, b"/dev/ptmx");
    std::os::unix::fs::symlink("/dev/pts/ptmx", OsStr::from_bytes(&link)).map_err(|e| {
        format!("creating symlink from `{}' to `/dev/pts/ptmx': {}", show(&link), guix_store::strerror(&e))
    })?;
    let ptmx = cstr(&join(&c.root, b"/dev/pts/ptmx"))?;
    // SAFETY: a valid C string.
    if unsafe { libc::chmod(ptmx.as_ptr(), 0o666) } == -1 {
        return Err(sys(format!("setting permissions on `{}'", ptmx.to_string_lossy())));
    }
    Ok(())
}

fn pivot_root(c: &ChrootPlan) -> Phase {
    let root = cstr(&c.root)?;
    // SAFETY: valid C strings; the steps of C++ `pivotRootAction`.
    unsafe {
        if libc::chdir(root.as_ptr()) == -1 {
            return Err(sys(format!("cannot change directory to '{}'", show(&c.root))));
        }
        if libc::mkdir(c"real-root".as_ptr(), 0) == -1 {
            return Err(sys("cannot create real-root directory"));
        }
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c"real-root".as_ptr()) == -1 {
            return Err(sys(format!("cannot pivot old root directory onto '{}/real-root'", show(&c.root))));
        }
        if libc::chroot(c".".as_ptr()) == -1 {
            return Err(sys(format!("cannot change root directory to '{}'", show(&c.root))));
        }
        if libc::umount2(c"real-root".as_ptr(), libc::MNT_DETACH) == -1 {
            return Err(sys("cannot unmount real root filesystem"));
        }
        if libc::rmdir(c"real-root".as_ptr()) == -1 {
            return Err(sys("cannot remove real-root directory"));
        }
    }
    Ok(())
}

fn clear_root_write_perms() -> Phase {
    // SAFETY: a valid C string.
    if unsafe { libc::chmod(c"/".as_ptr(), 0o555) } == -1 {
        return Err(sys("changing mode of chroot root directory"));
    }
    Ok(())
}

fn chdir(dir: &[u8]) -> Phase {
    let d = cstr(dir)?;
    // SAFETY: a valid C string.
    if unsafe { libc::chdir(d.as_ptr()) } == -1 {
        return Err(sys(format!("changing into `{}'", show(dir))));
    }
    Ok(())
}

/// Closes every descriptor above 2 but `keep` (our own two CLOEXEC pipes).
fn close_most_fds(keep: &[RawFd]) -> Phase {
    let mut keep: Vec<u32> = keep.iter().map(|&k| k as u32).collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for k in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if k > from {
            let last = if k == u32::MAX { u32::MAX } else { k - 1 };
            // SAFETY: closing descriptors nobody in this process uses.
            if unsafe { libc::syscall(libc::SYS_close_range, from, last, 0) } == -1 {
                for fd in from..last.min(from + 65536) {
                    // SAFETY: as above.
                    unsafe { libc::close(fd as RawFd) };
                }
            }
        }
        from = from.max(k.saturating_add(1));
    }
    Ok(())
}

fn set_personality(persona: u64) -> Phase {
    // SAFETY: plain system call.
    if unsafe { libc::personality(persona as libc::c_ulong) } == -1 {
        return Err(sys("cannot set personality"));
    }
    Ok(())
}

fn oom_sacrifice() -> Phase {
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    Ok(())
}

fn set_ids(plan: &ChildPlan, life_r: RawFd) -> Phase {
    let Some(ids) = &plan.ids else { return Ok(()) };
    // SAFETY: plain system calls; this process is single-threaded.
    unsafe {
        if libc::setgroups(ids.groups.len(), ids.groups.as_ptr()) == -1 {
            return Err(sys("cannot set supplementary groups"));
        }
        if libc::setgid(ids.gid) == -1 || libc::getgid() != ids.gid || libc::getegid() != ids.gid {
            return Err(sys("setgid failed"));
        }
        if libc::setuid(ids.uid) == -1 || libc::getuid() != ids.uid || libc::geteuid() != ids.uid {
            return Err(sys("setuid failed"));
        }
        // Changing credentials cleared the parent-death signal: set it again, then make sure
        // the helper did not die in between.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if helper_gone(life_r) {
            libc::_exit(1);
        }
    }
    Ok(())
}

fn restore_sigpipe() -> Phase {
    // SAFETY: resetting a disposition.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(sys("resetting SIGPIPE"));
    }
    Ok(())
}

/// C++ `canonPath(path, true)`: `.` and `..` removed, symlinks resolved one component at a
/// time; a missing component fails with "getting status of `P'".
pub(crate) fn canon_path(path: &[u8]) -> Result<Vec<u8>, String> {
    if path.first() != Some(&b'/') {
        return Err(format!("not an absolute path: `{}'", show(path)));
    }
    let mut s: Vec<u8> = Vec::new();
    let mut rest: Vec<u8> = path.to_vec();
    let mut i = 0;
    let mut follow = 0;
    loop {
        while i < rest.len() && rest[i] == b'/' {
            i += 1;
        }
        if i == rest.len() {
            break;
        }
        let at_end = |j: usize| j == rest.len() || rest[j] == b'/';
        if rest[i] == b'.' && at_end(i + 1) {
            i += 1;
        } else if rest[i] == b'.' && i + 1 < rest.len() && rest[i + 1] == b'.' && at_end(i + 2) {
            if let Some(p) = s.iter().rposition(|&c| c == b'/') {
                s.truncate(p);
            }
            i += 2;
        } else {
            s.push(b'/');
            while i < rest.len() && rest[i] != b'/' {
                s.push(rest[i]);
                i += 1;
            }
            let st =
                lstat(&s).map_err(|e| format!("getting status of `{}': {}", show(&s), guix_store::strerror(&e)))?;
            if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                follow += 1;
                if follow >= 1024 {
                    return Err(format!("infinite symlink recursion in path `{}'", show(path)));
                }
                let target = std::fs::read_link(OsStr::from_bytes(&s))
                    .map_err(|e| format!("reading symbolic link `{}': {}", show(&s), guix_store::strerror(&e)))?;
                let target = target.as_os_str().as_bytes();
                let abs =
                    if target.first() == Some(&b'/') { target.to_vec() } else { [dir_of(&s), b"/", target].concat() };
                rest = [abs.as_slice(), &rest[i..]].concat();
                i = 0;
                s.clear();
            }
        }
    }
    Ok(if s.is_empty() { b"/".to_vec() } else { s })
}

/// `isInStore`: `path` is below the store directory.
pub(crate) fn is_in_store(store: &[u8], path: &[u8]) -> bool {
    path.first() == Some(&b'/') && path.starts_with(store) && path.len() >= store.len() + 2 && path[store.len()] == b'/'
}

fn exec_builder(
    plan: &ChildPlan,
    program: &[u8],
    args: &[Vec<u8>],
    env: &[(Vec<u8>, Vec<u8>)],
    foreign_kernel: bool,
    unsupported_platform: Option<&str>,
) -> String {
    let resolved = match canon_path(program) {
        Ok(p) => p,
        Err(e) => return e,
    };
    if !is_in_store(&plan.store_dir, &resolved) {
        return format!("derivation builder `{}' is outside the store", show(&resolved));
    }
    let Ok(prog) = CString::new(resolved) else { return "builder contains a NUL byte".into() };
    let argv: Vec<CString> = args.iter().filter_map(|a| CString::new(a.as_slice()).ok()).collect();
    let envp: Vec<CString> =
        env.iter().filter_map(|(k, v)| CString::new([k.as_slice(), b"=", v].concat()).ok()).collect();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    let errno = if foreign_kernel {
        libc::ENOEXEC
    } else {
        // SAFETY: NULL-terminated arrays of valid C strings.
        unsafe { libc::execve(prog.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    };
    match unsupported_platform {
        Some(msg) if errno == libc::ENOEXEC => msg.to_owned(),
        _ => format!(
            "executing `{}': {}",
            show(program),
            guix_store::strerror(&std::io::Error::from_raw_os_error(errno))
        ),
    }
}

fn exec_download(guix: &[u8], drv: &[u8], out: &[u8], nix_store: &[u8], nix_options: &[u8]) -> String {
    std::env::set_var("NIX_STORE", OsStr::from_bytes(nix_store));
    std::env::set_var("_NIX_OPTIONS", OsStr::from_bytes(nix_options));
    let failed = || format!("failed to run download program '{}'", show(guix));
    let (Ok(prog), Ok(drv), Ok(out)) = (CString::new(guix), CString::new(drv), CString::new(out)) else {
        return failed();
    };
    let argv = [c"guix".as_ptr(), c"perform-download".as_ptr(), drv.as_ptr(), out.as_ptr(), std::ptr::null()];
    // SAFETY: a NULL-terminated array of valid C strings; `environ` as set above.
    unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
    format!("{}: {}", failed(), errno_text())
}

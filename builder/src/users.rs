//! Build users (`--build-users-group`), as the C++ `UserLock`: the group's members in order,
//! one `$state/userpool/<uid>` lock file each (an `fcntl` write lock, so a C++ daemon on the
//! same store sees our users as taken and we see its), and `killUser` before and after every
//! use so that no process of a previous build survives into the next.
//!
//! Where we differ:
//! - when every user is taken, [`UserPool::acquire`] waits for one instead of failing with "all
//!   build users are currently in use" — released users of this process wake a waiter at once,
//!   users held by another process are polled every second;
//! - a user whose processes were all killed after its build ([`BuildUser::release_killed`])
//!   keeps its lock for [`IDLE_HOLD`]: no other daemon can run anything as that user meanwhile,
//!   so the next build of ours takes it without killing again;
//! - the kill itself runs in a `vfork`-style child (`CLONE_VM | CLONE_VFORK`), which copies no
//!   page tables: a `fork` of the builder costs milliseconds, twice per build.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use guix_store::files::{lock_file, LockType};
use guix_store::strerror;
use tokio::sync::Notify;

use crate::error::{Error, IoContext, Result};

/// How often users locked by another process are tried again.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a user released with nothing left running keeps its lock, ready for our next
/// build: long enough to bridge the gap between two builds, short enough that a C++ daemon on
/// the same store (which fails when every user is locked) rarely notices.
pub const IDLE_HOLD: Duration = Duration::from_secs(2);

/// One member of the build users group.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    uid: u32,
    groups: Vec<u32>,
}

/// The build users of `--build-users-group`.
#[derive(Debug)]
pub struct UserPool {
    group: String,
    /// The group's gid: the gid every build runs with (C++ takes `gr_gid`, not `pw_gid`).
    gid: u32,
    members: Vec<Member>,
    userpool_dir: PathBuf,
    /// Users this process holds (C++ `UserLock::lockedPaths`): their lock files must not be
    /// opened again, since closing any descriptor of a file drops the process's lock on it.
    in_use: Mutex<InUse>,
    released: Notify,
}

/// The users this process holds.
#[derive(Debug, Default)]
struct InUse {
    /// Taken by a build.
    taken: HashSet<u32>,
    /// Free, nothing of theirs running, lock still held (see [`IDLE_HOLD`]); with the number of
    /// the release that put them here, so a late expiry leaves a newer one alone.
    idle: HashMap<u32, (File, u64)>,
    releases: u64,
}

impl UserPool {
    /// Reads the group's members in order (`getgrnam`, `gr_mem`, `getpwnam` each) and their
    /// supplementary groups (`getgrouplist`); lock files go in `$state_dir/userpool/<uid>`.
    pub fn new(group: &str, state_dir: &Path) -> Result<Arc<UserPool>> {
        let (gid, names) = group_members(group)?;
        if names.is_empty() {
            return Err(Error::Setup(format!("the build users group `{group}' has no members")));
        }
        let mut members = Vec::with_capacity(names.len());
        for name in names {
            let (uid, pw_gid) = passwd_entry(&name)?
                .ok_or_else(|| Error::Setup(format!("the user `{name}' in the group `{group}' does not exist")))?;
            let groups = group_list(&name, pw_gid)?;
            members.push(Member { name, uid, groups });
        }
        Ok(Arc::new(UserPool {
            group: group.to_owned(),
            gid,
            members,
            userpool_dir: state_dir.join("userpool"),
            in_use: Mutex::new(InUse::default()),
            released: Notify::new(),
        }))
    }

    /// The number of build users.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Waits until a build user is free, takes its lock, and kills whatever still runs under
    /// its uid. Cancel-safe: a dropped call holds nothing.
    pub async fn acquire(self: &Arc<Self>) -> Result<BuildUser> {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(user) = self.acquire_free().await? {
                return Ok(user);
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// [`UserPool::acquire`] without the wait: `None` when every user is taken.
    async fn acquire_free(self: &Arc<Self>) -> Result<Option<BuildUser>> {
        match self.pick()? {
            Some(p) => Ok(Some(p.ready().await?)),
            None => Ok(None),
        }
    }

    /// Takes the first free user, at once (`None` when every user is taken); its processes
    /// are killed by [`Picked::ready`].
    pub fn pick(self: &Arc<Self>) -> Result<Option<Picked>> {
        Ok(self.take_first_free()?.map(|(user, clean)| Picked { user, clean }))
    }

    /// One pass over the members in group order, as C++ `UserLock::acquire`; `None` when all
    /// are taken. Whoever takes a user kills its processes first.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Option<BuildUser>> {
        Ok(self.take_first_free()?.map(|(user, _)| user))
    }

    /// The first free member and whether it is known to run nothing (idle since its last
    /// build of ours, lock held throughout).
    fn take_first_free(self: &Arc<Self>) -> Result<Option<(BuildUser, bool)>> {
        let mut in_use = self.lock_in_use();
        for m in &self.members {
            if in_use.taken.contains(&m.uid) {
                continue;
            }
            if let Some((file, _)) = in_use.idle.remove(&m.uid) {
                in_use.taken.insert(m.uid);
                return Ok(Some((self.user(m, file), true)));
            }
            let mut dir = fs::DirBuilder::new();
            dir.recursive(true).mode(0o755);
            dir.create(&self.userpool_dir)
                .map_err(|e| sys(format!("creating directory `{}'", self.userpool_dir.display()), &e))?;
            let path = self.userpool_dir.join(m.uid.to_string());
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| sys(format!("opening user lock `{}'", path.display()), &e))?;
            if !lock_file(file.as_fd(), LockType::Write, false).context(|| format!("locking `{}'", path.display()))? {
                continue;
            }
            // SAFETY: getuid/geteuid cannot fail.
            let (me, eme) = unsafe { (libc::getuid(), libc::geteuid()) };
            if m.uid == me || m.uid == eme {
                return Err(Error::Setup(format!("the build user should not be a member of `{}'", self.group)));
            }
            in_use.taken.insert(m.uid);
            return Ok(Some((self.user(m, file), false)));
        }
        Ok(None)
    }

    fn user(self: &Arc<Self>, m: &Member, lock: File) -> BuildUser {
        BuildUser {
            uid: m.uid,
            gid: self.gid,
            groups: m.groups.clone(),
            name: m.name.clone(),
            lock: Some(lock),
            pool: Arc::clone(self),
        }
    }

    fn lock_in_use(&self) -> MutexGuard<'_, InUse> {
        self.in_use.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self, uid: u32, lock: File) {
        let mut in_use = self.lock_in_use();
        drop(lock); // Closing the only descriptor releases the fcntl lock.
        in_use.taken.remove(&uid);
        drop(in_use);
        self.released.notify_one();
    }

    /// Frees `uid`, which runs nothing, keeping its lock for [`IDLE_HOLD`] (released at once
    /// outside a runtime).
    fn release_idle(self: &Arc<Self>, uid: u32, lock: File) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return self.release(uid, lock) };
        let mut in_use = self.lock_in_use();
        in_use.taken.remove(&uid);
        in_use.releases += 1;
        let number = in_use.releases;
        in_use.idle.insert(uid, (lock, number));
        drop(in_use);
        self.released.notify_one();
        let pool = Arc::clone(self);
        rt.spawn(async move {
            tokio::time::sleep(IDLE_HOLD).await;
            let mut in_use = pool.lock_in_use();
            if in_use.idle.get(&uid).is_some_and(|(_, n)| *n == number) {
                // Closing the only descriptor releases the fcntl lock.
                in_use.idle.remove(&uid);
            }
        });
    }
}

/// A build user taken by [`UserPool::pick`], whose processes may not be killed yet.
#[derive(Debug)]
pub struct Picked {
    user: BuildUser,
    /// Idle since its last build of ours, lock held throughout: nothing to kill.
    clean: bool,
}

impl Picked {
    /// Kills whatever still runs under the user's uid (unless nothing can). Cancel-safe: a
    /// dropped call releases the user.
    pub async fn ready(self) -> Result<BuildUser> {
        if !self.clean {
            let uid = self.user.uid;
            tokio::task::spawn_blocking(move || kill_user(uid))
                .await
                .map_err(|e| Error::Setup(format!("killing the processes of uid `{uid}': {e}")))??;
        }
        Ok(self.user)
    }
}

/// A build user taken from the pool. Dropping it kills the user's processes again, then
/// releases the lock and wakes one waiter.
#[derive(Debug)]
pub struct BuildUser {
    pub uid: u32,
    /// The build users group's gid.
    pub gid: u32,
    /// Supplementary groups (`getgrouplist` of the user with its passwd gid).
    pub groups: Vec<u32>,
    pub name: String,
    lock: Option<File>,
    pool: Arc<UserPool>,
}

impl BuildUser {
    /// Releases the user at once, for a caller that has just killed its processes (C++
    /// `killUser` in `buildDone`, after the builder exited): free for the next build when this
    /// returns, without killing a second time, and kept locked a while for it ([`IDLE_HOLD`]).
    /// Dropping it instead kills them again, then releases it in the background.
    pub fn release_killed(mut self) {
        if let Some(lock) = self.lock.take() {
            self.pool.release_idle(self.uid, lock);
        }
    }

    /// [`BuildUser::release_killed`] if `killed` (its processes were just killed), else drops
    /// it (killed again, then freed).
    pub fn release(self, killed: bool) {
        if killed {
            self.release_killed();
        }
    }

    /// `(uid, gid, groups)`, as [`crate::sandbox::StartSpec::user`] takes it.
    pub fn ids(&self) -> (u32, u32, Vec<u32>) {
        (self.uid, self.gid, self.groups.clone())
    }
}

impl Drop for BuildUser {
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else { return };
        let uid = self.uid;
        let pool = Arc::clone(&self.pool);
        let finish = move || {
            // The lock is kept until the kill is done, so nobody gets a user with survivors.
            let _ = kill_user(uid);
            pool.release(uid, lock);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(finish);
            }
            Err(_) => finish(),
        }
    }
}

/// C++ `killUser`: a child process takes the uid and sends SIGKILL to every process it may
/// signal (`kill(-1, SIGKILL)`), which is every process of that uid, in every PID namespace
/// below ours.
///
/// The child shares our memory and runs on a stack of its own while the calling thread is
/// suspended (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does): no page tables are copied.
pub fn kill_user(uid: u32) -> Result<()> {
    if uid == 0 {
        return Err(Error::Setup("refusing to kill every process of uid 0".into()));
    }
    /// What the child runs: raw system calls only (it must not take a lock another thread of
    /// ours may hold, nor allocate); its return value is its exit status.
    extern "C" fn kill_child(arg: *mut libc::c_void) -> libc::c_int {
        let uid = arg as usize as libc::uid_t;
        // SAFETY: plain system calls. The raw setresuid changes only this process's ids (it is
        // a process of its own, not a thread of ours), without glibc's cross-thread machinery.
        unsafe {
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                return 1;
            }
            // As C++: one signal to all, retried only when interrupted. errno here is the
            // suspended caller's thread's, which reads nothing of it after we exit.
            loop {
                if libc::kill(-1, libc::SIGKILL) == 0 {
                    return 0;
                }
                match *libc::__errno_location() {
                    libc::ESRCH => return 0,
                    libc::EINTR => continue,
                    _ => return 2,
                }
            }
        }
    }
    const STACK: usize = 64 * 1024;
    let mut stack = vec![0u8; STACK];
    // SAFETY: the stack is ours until the child exits (`CLONE_VFORK` suspends us until then);
    // its top is 16-byte aligned as the ABI wants.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(STACK);
        let top = top.sub(top as usize % 16);
        libc::clone(kill_child, top.cast(), libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD, uid as usize as *mut _)
    };
    if pid < 0 {
        return Err(sys("unable to fork".into(), &std::io::Error::last_os_error()));
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(sys("waiting for the kill process".into(), &e));
        }
    }
    drop(stack);
    if status != 0 {
        return Err(Error::Setup(format!(
            "cannot kill processes for uid `{uid}': {}",
            crate::sandbox::status_to_string(&std::os::unix::process::ExitStatusExt::from_raw(status))
        )));
    }
    Ok(())
}

fn sys(context: String, e: &std::io::Error) -> Error {
    Error::Setup(format!("{context}: {}", strerror(e)))
}

/// `getgrnam`: the group's gid and member names.
fn group_members(group: &str) -> Result<(u32, Vec<String>)> {
    let missing = || Error::Setup(format!("the group `{group}' specified in `build-users-group' does not exist"));
    let cname = CString::new(group).map_err(|_| missing())?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: a zeroed `group` is a valid out-parameter; `buf` outlives the reads below.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < 1 << 24 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return Err(missing());
        }
        let mut names = Vec::new();
        let mut p = grp.gr_mem;
        // SAFETY: `gr_mem` is a NULL-terminated array of C strings inside `buf`.
        unsafe {
            while !p.is_null() && !(*p).is_null() {
                names.push(CStr::from_ptr(*p).to_string_lossy().into_owned());
                p = p.add(1);
            }
        }
        return Ok((grp.gr_gid, names));
    }
}

/// `getpwnam`: uid and primary gid.
fn passwd_entry(name: &str) -> Result<Option<(u32, u32)>> {
    let Ok(cname) = CString::new(name) else { return Ok(None) };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: as in `group_members`.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < 1 << 24 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return Ok(None);
        }
        return Ok(Some((pw.pw_uid, pw.pw_gid)));
    }
}

/// `getgrouplist(name, gid)`.
fn group_list(name: &str, gid: u32) -> Result<Vec<u32>> {
    let failed = || Error::Setup(format!("failed to get list of supplementary groups for ‘{name}’"));
    let cname = CString::new(name).map_err(|_| failed())?;
    let mut groups: Vec<libc::gid_t> = vec![0; 16];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return Ok(groups);
        }
        if n as usize <= groups.len() || n > 65536 {
            return Err(failed());
        }
        groups.resize(n as usize, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_group_has_the_cxx_message() {
        let dir = tempfile::tempdir().unwrap();
        let e = UserPool::new("no-such-group-guix-rs", dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "the group `no-such-group-guix-rs' specified in `build-users-group' does not exist");
    }

    #[test]
    fn group_without_members_has_the_cxx_message() {
        // `root` exists everywhere and normally lists no members in /etc/group.
        let (_, names) = group_members("root").unwrap();
        if !names.is_empty() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let e = UserPool::new("root", dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "the build users group `root' has no members");
    }

    #[test]
    fn kill_user_refuses_root() {
        assert!(kill_user(0).is_err());
    }
}

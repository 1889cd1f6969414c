//! The user socket-front runs as, and how it gets there: least privilege for the component that
//! parses every client's bytes.
//!
//! socket-front runs as its own user (`--rs-socket-front-user=USER`, default
//! [`DEFAULT_SOCKET_FRONT_USER`] when that user exists), with no supplementary groups, no
//! capabilities in any set (bounding and ambient included) and `PR_SET_NO_NEW_PRIVS`, set by
//! [`drop_to`] between fork and exec, so the program never held root. What it needed root for
//! is done by store-db (per-user profile directories, export signatures, taking over scratch
//! items, deduplication) or reached through the group of its user (the link sockets, the
//! control socket, the runtime directory, `.rs-scratch`): ARCHITECTURE.md, "Privileges".
//!
//! Without that user, the daemon still starts: socket-front runs as the supervisor's user (root)
//! as before, with a warning. An unused uid instead would leave files owned by a number no
//! administrator recognises, and a production daemon must not refuse to start over a user an
//! upgrade did not create yet. A user named explicitly must exist.

use guix_ipc::config::UnprivilegedUser;

/// The user socket-front runs as when `--rs-socket-front-user` is not given, if it exists.
pub const DEFAULT_SOCKET_FRONT_USER: &str = "guix-daemon-rs";

/// The user socket-front is to run as (`None`: as ours). `option` is `--rs-socket-front-user`.
/// Errors: a user named explicitly that does not exist, or that cannot be taken (we are not
/// root). Warnings go to stderr.
pub fn socket_front_user(option: Option<&str>) -> Result<Option<UnprivilegedUser>, String> {
    let name = option.unwrap_or(DEFAULT_SOCKET_FRONT_USER);
    let user = nix::unistd::User::from_name(name).map_err(|e| format!("looking up user `{name}': {e}"))?;
    let Some(user) = user else {
        if option.is_some() {
            return Err(format!("user `{name}' (--rs-socket-front-user) does not exist"));
        }
        eprintln!(
            "warning: user `{name}' does not exist, so socket-front runs with the daemon's privileges; \
             create it (a system user) or pass `--rs-socket-front-user'"
        );
        return Ok(None);
    };
    if !nix::unistd::geteuid().is_root() {
        if option.is_some() {
            return Err(format!("cannot run socket-front as `{name}': the daemon is not running as root"));
        }
        return Ok(None);
    }
    if user.uid.is_root() {
        eprintln!("warning: user `{name}' is root, so socket-front runs with the daemon's privileges");
        return Ok(None);
    }
    Ok(Some(UnprivilegedUser { uid: user.uid.as_raw(), gid: user.gid.as_raw() }))
}

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Becomes `user` for good, in a child between fork and exec: every capability dropped from the
/// bounding set and the ambient set, no supplementary groups, real, effective and saved gid and
/// uid set, the (then already empty) permitted and effective sets and the inheritable set
/// cleared, and `PR_SET_NO_NEW_PRIVS` (no set-user-ID program or file capability can give any
/// back). Only async-signal-safe system calls, no allocation. Must run before
/// `PR_SET_PDEATHSIG` (a change of credentials clears it).
///
/// # Safety
/// Only in a forked child before exec (it changes the credentials of the calling thread's
/// process, assuming it is the only thread).
pub unsafe fn drop_to(user: UnprivilegedUser) -> std::io::Result<()> {
    use nix::libc;
    let check = |r: libc::c_int| if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
    // Every capability number the kernel may know (0..=CAP_LAST_CAP); unknown ones are EINVAL.
    for cap in 0..64 {
        if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0))?;
    check(libc::setgroups(0, std::ptr::null()))?;
    check(libc::setresgid(user.gid, user.gid, user.gid))?;
    check(libc::setresuid(user.uid, user.uid, user.uid))?;
    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    check(libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) as libc::c_int)?;
    check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_user_must_exist() {
        let e = socket_front_user(Some("no-such-user-for-sure")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }
}

//! The listening sockets the supervisor owns: client sockets (`--listen`, the default socket or
//! systemd's), one Unix socket per internal link, and the control socket.
//!
//! They are all created before any component starts and live as long as the supervisor, so a
//! component that restarts finds its socket where it was and clients' connection attempts wait
//! in the kernel's backlog meanwhile.
//!
//! Unix sockets are created as `open_unix_domain_socket` of guix-daemon.cc does: `mkdir -p` of
//! the parent, unlink of an old file, bind under `umask(0111)` so the socket is mode 0666 (access
//! is controlled by the directory). The umask is process-wide, so this runs before any thread is
//! started (see `main`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::stat::{umask, Mode};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SocketError {
    #[error("cannot bind to socket '{path}': {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("creating directory '{path}': {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("setting the mode of '{path}': {source}")]
    Chmod { path: PathBuf, source: io::Error },
    #[error("inherited socket {fd}: {source}")]
    Inherited { fd: RawFd, source: nix::Error },
}

/// A listening socket and, when we created a file for it, that file (removed at exit).
#[derive(Debug)]
pub struct Listening {
    pub fd: OwnedFd,
    pub file: Option<PathBuf>,
}

/// Binds a Unix socket at `path` with the given mode (via the umask at bind time).
pub fn bind_unix(path: &Path, mode: u32) -> Result<Listening, SocketError> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|source| SocketError::Dir { path: parent.to_owned(), source })?;
    }
    let _ = std::fs::remove_file(path);
    let old = umask(Mode::from_bits_truncate(!mode & 0o777));
    let res = UnixListener::bind(path);
    umask(old);
    let listener = res.map_err(|source| SocketError::Bind { path: path.to_owned(), source })?;
    Ok(Listening { fd: listener.into(), file: Some(path.to_owned()) })
}

/// [`bind_unix`] of a socket only root may connect to (0600), or root and the members of
/// `group` (0660, that group: socket-front's, when it runs as its own user).
pub fn bind_unix_for_group(path: &Path, group: Option<u32>) -> Result<Listening, SocketError> {
    let Some(gid) = group else { return bind_unix(path, 0o600) };
    let l = bind_unix(path, 0o600)?;
    let chmod = |source| SocketError::Chmod { path: path.to_owned(), source };
    std::os::unix::fs::lchown(path, Some(0), Some(gid)).map_err(chmod)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(chmod)?;
    Ok(l)
}

/// Creates the private runtime directory for the internal link sockets: mode 0700, or 0750
/// with `group` (socket-front's, when it runs as its own user: it reaches the sockets and
/// reads the change epoch there).
pub fn private_dir(path: &Path, group: Option<u32>) -> Result<(), SocketError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| SocketError::Dir { path: path.to_owned(), source })?;
    let chmod = |source| SocketError::Chmod { path: path.to_owned(), source };
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, Some(0), Some(gid)).map_err(chmod)?;
            0o750
        }
        None => 0o700,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(chmod)
}

/// The sockets systemd passed (`LISTEN_PID` equal to our pid, `LISTEN_FDS` of them from fd 3),
/// or `None` when we are not socket-activated. They are marked close-on-exec: components get
/// their own copies.
pub fn systemd_sockets(get: impl Fn(&str) -> Option<String>) -> Result<Option<Vec<Listening>>, SocketError> {
    if get("LISTEN_PID").as_deref() != Some(std::process::id().to_string().as_str()) {
        return Ok(None);
    }
    let Some(n) = get("LISTEN_FDS").and_then(|v| v.trim().parse::<u16>().ok()) else {
        return Ok(None);
    };
    if n == 0 {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(usize::from(n));
    for fd in 3..3 + RawFd::from(n) {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|source| SocketError::Inherited { fd, source })?;
        // SAFETY: systemd passed this descriptor to this process (LISTEN_PID is ours), it is open
        // (F_SETFD succeeded) and nothing else in the process owns it.
        out.push(Listening { fd: unsafe { OwnedFd::from_raw_fd(fd) }, file: None });
    }
    Ok(Some(out))
}

/// Removes the socket files we created. Errors are ignored: this runs on the way out.
pub fn remove_files<'a>(sockets: impl IntoIterator<Item = &'a Listening>) {
    for s in sockets {
        if let Some(f) = &s.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Raw fd of a listening socket, for passing to a child.
pub fn raw(l: &Listening) -> RawFd {
    l.fd.as_raw_fd()
}

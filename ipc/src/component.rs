//! What a spawned component receives from the supervisor, and how it finds its peers.
//!
//! The supervisor starts each component with:
//!
//! * its listening sockets as inherited file descriptors, named in [`ENV_FDS`] as
//!   `name:fd` pairs separated by commas (e.g. `client:3,client:4,store-db:5`). `client` are the
//!   sockets guix clients connect to; any other name is the internal link of that name, which
//!   this component serves;
//! * the whole configuration as JSON in [`ENV_CONFIG`] ([`DaemonConfig`]);
//! * its own component name in [`ENV_COMPONENT`].
//!
//! The systemd `LISTEN_PID`/`LISTEN_FDS` variables are not used for this hand-over: `LISTEN_PID`
//! must hold the child's pid, which is only known after `fork`, and setting environment variables
//! between `fork` and `exec` is not async-signal-safe. The supervisor removes them from the
//! children's environment.
//!
//! A component connects to another component's link with [`connect_link`]; the socket is
//! [`link_socket_path`] in the private runtime directory, created and kept by the supervisor, so
//! it exists even while the serving component restarts (connections queue in the kernel).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};
use nix::sys::stat::{fstat, SFlag};
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::config::DaemonConfig;
use crate::{Client, LinkRequest, LinkSpec};

/// Names and numbers of the inherited listening sockets: `name:fd,name:fd,…`.
pub const ENV_FDS: &str = "GUIX_DAEMON_RS_FDS";
/// The [`DaemonConfig`] as JSON.
pub const ENV_CONFIG: &str = "GUIX_DAEMON_RS_CONFIG";
/// The component's own name (`store-db`, `socket-front`, …).
pub const ENV_COMPONENT: &str = "GUIX_DAEMON_RS_COMPONENT";
/// The name under which client sockets are passed.
pub const CLIENT_SOCKET_NAME: &str = "client";

/// Exit status of a component that is not implemented yet. The supervisor still restarts it,
/// with the longest back-off, and says so in its log.
pub const EXIT_NOT_IMPLEMENTED: i32 = 2;

#[derive(Debug, Error)]
pub enum ComponentError {
    #[error("environment variable {0} is not set (this program is started by guix-daemon-rs)")]
    Missing(&'static str),
    #[error("environment variable {var} is malformed: {why}")]
    Malformed { var: &'static str, why: String },
    #[error("inherited file descriptor {fd} ({name}) is not a listening socket: {why}")]
    NotASocket { name: String, fd: RawFd, why: String },
    #[error("the inherited sockets were already taken")]
    AlreadyTaken,
}

/// One inherited listening socket, set non-blocking (ready for tokio's `from_std`).
#[derive(Debug)]
pub enum InheritedListener {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

/// Parses the value of [`ENV_FDS`]. Each fd must be 3 or more and appear once.
pub fn parse_fds(value: &str) -> Result<Vec<(String, RawFd)>, ComponentError> {
    let bad = |why: String| ComponentError::Malformed { var: ENV_FDS, why };
    let mut out: Vec<(String, RawFd)> = Vec::new();
    if value.is_empty() {
        return Ok(out);
    }
    for item in value.split(',') {
        let (name, fd) = item.rsplit_once(':').ok_or_else(|| bad(format!("`{item}' is not NAME:FD")))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(bad(format!("`{name}' is not a valid socket name")));
        }
        let fd: RawFd = fd.parse().map_err(|_| bad(format!("`{fd}' is not a file descriptor number")))?;
        if fd < 3 {
            return Err(bad(format!("file descriptor {fd} is below 3")));
        }
        if out.iter().any(|(_, f)| *f == fd) {
            return Err(bad(format!("file descriptor {fd} appears twice")));
        }
        out.push((name.to_owned(), fd));
    }
    Ok(out)
}

/// Formats the value of [`ENV_FDS`] (the inverse of [`parse_fds`]).
pub fn format_fds<'a>(fds: impl IntoIterator<Item = (&'a str, RawFd)>) -> String {
    fds.into_iter().map(|(n, fd)| format!("{n}:{fd}")).collect::<Vec<_>>().join(",")
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the listening sockets named in [`ENV_FDS`]. Succeeds once per process
/// (a second call returns [`ComponentError::AlreadyTaken`]), so no descriptor is owned twice.
pub fn inherited_listeners() -> Result<Vec<(String, InheritedListener)>, ComponentError> {
    let value = std::env::var(ENV_FDS).map_err(|_| ComponentError::Missing(ENV_FDS))?;
    let fds = parse_fds(&value)?;
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(ComponentError::AlreadyTaken);
    }
    let mut out = Vec::with_capacity(fds.len());
    for (name, fd) in fds {
        let not_socket = |why: String| ComponentError::NotASocket { name: name.clone(), fd, why };
        let st = fstat(fd).map_err(|e| not_socket(e.to_string()))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
            return Err(not_socket("not a socket".to_owned()));
        }
        // SAFETY: the supervisor passed `fd` to us for this purpose, it is open (fstat succeeded),
        // and TAKEN guarantees this is the only place that takes ownership of it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let family = getsockname::<SockaddrStorage>(owned.as_raw_fd()).map_err(|e| not_socket(e.to_string()))?.family();
        let listener = match family {
            Some(AddressFamily::Unix) => InheritedListener::Unix(owned.into()),
            Some(AddressFamily::Inet) | Some(AddressFamily::Inet6) => InheritedListener::Tcp(owned.into()),
            other => return Err(not_socket(format!("unexpected address family {other:?}"))),
        };
        match &listener {
            InheritedListener::Unix(l) => l.set_nonblocking(true),
            InheritedListener::Tcp(l) => l.set_nonblocking(true),
        }
        .map_err(|e| not_socket(e.to_string()))?;
        out.push((name, listener));
    }
    Ok(out)
}

/// The inherited Unix listener of internal link `link` (what a component serves), if the
/// supervisor passed one; takes every inherited socket, as [`inherited_listeners`] does.
pub fn inherited_link_listener(link: &str) -> Result<Option<std::os::unix::net::UnixListener>, ComponentError> {
    Ok(inherited_listeners()?.into_iter().find_map(|(name, l)| match l {
        InheritedListener::Unix(u) if name == link => Some(u),
        _ => None,
    }))
}

/// Reads the configuration from [`ENV_CONFIG`].
pub fn config_from_env() -> Result<DaemonConfig, ComponentError> {
    let json = std::env::var(ENV_CONFIG).map_err(|_| ComponentError::Missing(ENV_CONFIG))?;
    serde_json::from_str(&json).map_err(|e| ComponentError::Malformed { var: ENV_CONFIG, why: e.to_string() })
}

/// This component's name, from [`ENV_COMPONENT`].
pub fn component_name() -> Result<String, ComponentError> {
    std::env::var(ENV_COMPONENT).map_err(|_| ComponentError::Missing(ENV_COMPONENT))
}

/// The socket of the internal link `link`.
pub fn link_socket_path(config: &DaemonConfig, link: &str) -> PathBuf {
    config.runtime_dir.join(format!("{link}.sock"))
}

/// A client of another component's link. It connects lazily; each call waits at most
/// `deadline` (unless given another) for the serving component, which may be restarting
/// (see [`Client`]).
pub fn connect_link<Req, Resp, Item>(
    config: &DaemonConfig,
    spec: LinkSpec,
    who: &str,
    deadline: Duration,
) -> Client<Req, Resp, Item>
where
    Req: LinkRequest,
    Resp: DeserializeOwned + Send + 'static,
    Item: DeserializeOwned + Send + 'static,
{
    Client::new(link_socket_path(config, spec.name), spec, who, deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fds_round_trip_and_errors() {
        let v = parse_fds("client:3,client:4,store-db:5").unwrap();
        assert_eq!(v, vec![("client".into(), 3), ("client".into(), 4), ("store-db".into(), 5)]);
        assert_eq!(format_fds(v.iter().map(|(n, f)| (n.as_str(), *f))), "client:3,client:4,store-db:5");
        assert!(parse_fds("").unwrap().is_empty());
        for bad in ["client", "client:x", "client:2", ":3", "a b:3", "a:3,b:3", "a:-1", "a:3,"] {
            assert!(parse_fds(bad).is_err(), "{bad}");
        }
    }
}

//! Raw wire clients of the daemon socket for end-to-end tests: hand-made frames
//! (`guix_formats::wire`), connections as root or `nobody`, reading STDERR frames, and a
//! well-behaved client that adds and queries paths. Shared by `bad_input` and `hostile`.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use guix_formats::wire::{put_bytes, put_u64};

pub const MAGIC1: u64 = 0x6e69_7863;
pub const VERSION: u64 = 0x164;
pub const STDERR_NEXT: u64 = 0x6f6c_6d67;
pub const STDERR_READ: u64 = 0x6461_7461;
pub const STDERR_WRITE: u64 = 0x6461_7416;
pub const STDERR_LAST: u64 = 0x616c_7473;
pub const STDERR_ERROR: u64 = 0x6378_7470;

/// A well-formed store path that is not valid, used by probes.
pub const PROBE_PATH: &str = "/gnu/store/00000000000000000000000000000000-probe";
/// The uid/gid of `nobody`, for the untrusted client.
pub const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------------------------
// Frame building.

pub fn op(n: u64) -> Vec<u8> {
    let mut b = Vec::new();
    put_u64(&mut b, n);
    b
}

pub fn s(b: &mut Vec<u8>, x: &[u8]) {
    put_bytes(b, x);
}

pub fn strs(b: &mut Vec<u8>, xs: &[&[u8]]) {
    put_u64(b, xs.len() as u64);
    for x in xs {
        put_bytes(b, x);
    }
}

pub fn handshake_bytes() -> Vec<u8> {
    let mut b = Vec::new();
    for w in [MAGIC1, VERSION, 0, 0] {
        put_u64(&mut b, w);
    }
    b
}

/// `op` followed by one string.
pub fn op_str(n: u64, x: &[u8]) -> Vec<u8> {
    let mut b = op(n);
    s(&mut b, x);
    b
}

/// AddToStore's header (recursive SHA-256), the NAR follows.
pub fn add_to_store(nar: &[u8]) -> Vec<u8> {
    let mut b = op(7);
    s(&mut b, b"hostile");
    put_u64(&mut b, 1);
    put_u64(&mut b, 1);
    s(&mut b, b"sha256");
    b.extend_from_slice(nar);
    b
}

/// A NAR made of string tokens; [`Tok::Raw`] for hand-made bytes.
pub enum Tok<'a> {
    S(&'a [u8]),
    Raw(Vec<u8>),
}

pub fn nar(toks: &[Tok<'_>]) -> Vec<u8> {
    let mut b = Vec::new();
    for t in toks {
        match t {
            Tok::S(x) => s(&mut b, x),
            Tok::Raw(r) => b.extend_from_slice(r),
        }
    }
    b
}

pub fn file_node(contents: &[u8]) -> Vec<u8> {
    nar(&[Tok::S(b"("), Tok::S(b"type"), Tok::S(b"regular"), Tok::S(b"contents"), Tok::S(contents), Tok::S(b")")])
}

pub fn entry(name: &[u8], node: Vec<u8>) -> Vec<u8> {
    nar(&[Tok::S(b"entry"), Tok::S(b"("), Tok::S(b"name"), Tok::S(name), Tok::S(b"node"), Tok::Raw(node), Tok::S(b")")])
}

pub fn dir_nar(entries: Vec<Vec<u8>>) -> Vec<u8> {
    let mut b = nar(&[Tok::S(b"nix-archive-1"), Tok::S(b"("), Tok::S(b"type"), Tok::S(b"directory")]);
    for e in entries {
        b.extend_from_slice(&e);
    }
    s(&mut b, b")");
    b
}

/// A NAR of one regular file whose contents announce `size` bytes and carry `have` of them.
pub fn truncated_file_nar(size: u64, have: usize) -> Vec<u8> {
    let mut b =
        nar(&[Tok::S(b"nix-archive-1"), Tok::S(b"("), Tok::S(b"type"), Tok::S(b"regular"), Tok::S(b"contents")]);
    put_u64(&mut b, size);
    b.extend(std::iter::repeat_n(b'x', have));
    b
}

/// SetOptions with the 0x164 layout and the given overrides.
pub fn set_options(overrides: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = op(19);
    for w in [0u64, 0, 0, 0, 1, 0, 0, 1, 0] {
        put_u64(&mut b, w);
    }
    put_u64(&mut b, overrides.len() as u64);
    for (k, v) in overrides {
        s(&mut b, k);
        s(&mut b, v);
    }
    b
}

/// One export record (§6) without signature, preceded by the `1` separator, ending the stream.
pub fn unsigned_import_stream(path: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_u64(&mut b, 1);
    let mut n = nar(&[Tok::S(b"nix-archive-1")]);
    n.extend(file_node(b"imported\n"));
    b.extend(n);
    put_u64(&mut b, 0x4558_494e);
    s(&mut b, path.as_bytes());
    strs(&mut b, &[]);
    s(&mut b, b"");
    put_u64(&mut b, 0);
    put_u64(&mut b, 0);
    b
}

// ---------------------------------------------------------------------------------------------
// Raw connections.

pub fn connect(socket: &Path) -> io::Result<UnixStream> {
    let st = UnixStream::connect(socket)?;
    st.set_read_timeout(Some(Duration::from_secs(30)))?;
    st.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(st)
}

/// Connects as uid/gid `NOBODY`: the socket is created here and connected by a forked child
/// that dropped its privileges first (`SO_PEERCRED` records the connecting process). The child
/// reaches the socket through `/proc/self/fd/N/`, so only the socket's own directory must be
/// searchable by `nobody`.
pub fn connect_untrusted(socket: &Path) -> io::Result<UnixStream> {
    use nix::sys::socket::{self as sk, AddressFamily, SockFlag, SockType, UnixAddr};
    use nix::unistd::{fork, ForkResult, Gid, Uid};
    let dir = std::fs::File::open(socket.parent().unwrap_or(Path::new("/")))?;
    let name = socket.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let addr = UnixAddr::new(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()).as_str()).map_err(io::Error::from)?;
    let fd: OwnedFd =
        sk::socket(AddressFamily::Unix, SockType::Stream, SockFlag::empty(), None).map_err(io::Error::from)?;
    let raw = fd.as_raw_fd();
    // SAFETY: the child only makes system calls (setgroups/setgid/setuid/connect/_exit).
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Child => {
            let ok = nix::unistd::setgroups(&[]).is_ok()
                && nix::unistd::setgid(Gid::from_raw(NOBODY)).is_ok()
                && nix::unistd::setuid(Uid::from_raw(NOBODY)).is_ok()
                && sk::connect(raw, &addr).is_ok();
            // SAFETY: `_exit` in the child of a fork.
            unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None).map_err(io::Error::from)?;
            if !matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)) {
                return Err(io::Error::other(format!("untrusted connect failed: {st:?}")));
            }
        }
    }
    let st = UnixStream::from(fd);
    st.set_read_timeout(Some(Duration::from_secs(30)))?;
    st.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(st)
}

pub fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut w = [0u8; 8];
    r.read_exact(&mut w)?;
    Ok(u64::from_le_bytes(w))
}

/// Reads a string, bounded (replies and frames of well-behaved daemons are small).
pub fn read_str(r: &mut impl Read, raw: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let len = read_u64(r)?;
    raw.extend_from_slice(&len.to_le_bytes());
    if len > 1 << 20 {
        return Err(io::Error::other(format!("string of {len} bytes from the daemon")));
    }
    let padded = (len as usize).div_ceil(8) * 8;
    let mut b = vec![0u8; padded];
    r.read_exact(&mut b)?;
    raw.extend_from_slice(&b);
    b.truncate(len as usize);
    Ok(b)
}

/// How a STDERR sequence ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Last,
    Error {
        msg: Vec<u8>,
        status: u64,
    },
    /// EOF (or a reset) before any terminator.
    Eof,
}

/// Reads STDERR frames up to the terminator, appending every byte to `raw`. `STDERR_READ`
/// requests are served from `feed` (empty answers once it is exhausted).
pub fn read_frames(st: &mut UnixStream, raw: &mut Vec<u8>, feed: &mut &[u8]) -> io::Result<End> {
    loop {
        let code = match read_u64(st) {
            Ok(c) => c,
            Err(e) if is_gone(&e) => return Ok(End::Eof),
            Err(e) => return Err(e),
        };
        raw.extend_from_slice(&code.to_le_bytes());
        let r = match code {
            STDERR_NEXT | STDERR_WRITE => read_str(st, raw).map(|_| None),
            STDERR_READ => {
                let want = read_u64(st)?;
                raw.extend_from_slice(&want.to_le_bytes());
                let n = feed.len().min(want as usize);
                let (chunk, rest) = feed.split_at(n);
                *feed = rest;
                let mut b = Vec::new();
                put_bytes(&mut b, chunk);
                st.write_all(&b).map(|_| None)
            }
            STDERR_LAST => Ok(Some(End::Last)),
            STDERR_ERROR => read_str(st, raw).and_then(|msg| {
                let status = read_u64(st)?;
                raw.extend_from_slice(&status.to_le_bytes());
                Ok(Some(End::Error { msg, status }))
            }),
            other => Err(io::Error::other(format!("unknown STDERR code {other:#x}"))),
        };
        match r {
            Ok(Some(end)) => return Ok(end),
            Ok(None) => {}
            Err(e) if is_gone(&e) => return Ok(End::Eof),
            Err(e) => return Err(e),
        }
    }
}

pub fn is_gone(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
}

/// The handshake; returns the daemon's bytes (magic, version, frames up to STDERR_LAST).
pub fn hello(st: &mut UnixStream) -> io::Result<Vec<u8>> {
    st.write_all(&handshake_bytes())?;
    let mut raw = vec![0u8; 16];
    st.read_exact(&mut raw)?;
    match read_frames(st, &mut raw, &mut &[][..])? {
        End::Last => Ok(raw),
        end => Err(io::Error::other(format!("handshake ended with {end:?}"))),
    }
}

/// Whether the connection still answers a request: IsValidPath of [`PROBE_PATH`] → false.
pub fn probe(st: &mut UnixStream) -> io::Result<bool> {
    if let Err(e) = st.write_all(&op_str(1, PROBE_PATH.as_bytes())) {
        return if is_gone(&e) { Ok(false) } else { Err(e) };
    }
    let mut raw = Vec::new();
    match read_frames(st, &mut raw, &mut &[][..])? {
        End::Eof => Ok(false),
        End::Last => match read_u64(st) {
            Ok(0) => Ok(true),
            Ok(v) => Err(io::Error::other(format!("probe answered {v}"))),
            Err(e) if is_gone(&e) => Ok(false),
            Err(e) => Err(e),
        },
        end => Err(io::Error::other(format!("probe ended with {end:?}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// The well-behaved client, and the "nothing changed" checks.

/// Adds a text item and reads it back, on one connection, until `stop`; returns the paths.
pub fn good_client(socket: &Path, stop: &AtomicBool) -> io::Result<Vec<String>> {
    let mut st = connect(socket)?;
    hello(&mut st)?;
    let mut added = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) || i < 3 {
        let mut b = op(8);
        s(&mut b, format!("good-{i}").as_bytes());
        s(&mut b, format!("well-behaved {i}\n").as_bytes());
        strs(&mut b, &[]);
        st.write_all(&b)?;
        let mut raw = Vec::new();
        let end = read_frames(&mut st, &mut raw, &mut &[][..])?;
        if end != End::Last {
            return Err(io::Error::other(format!("good client: AddTextToStore ended with {end:?}")));
        }
        let path = String::from_utf8_lossy(&read_str(&mut st, &mut raw)?).into_owned();
        st.write_all(&op_str(26, path.as_bytes()))?;
        let end = read_frames(&mut st, &mut raw, &mut &[][..])?;
        if end != End::Last {
            return Err(io::Error::other(format!("good client: QueryPathInfo ended with {end:?}")));
        }
        read_str(&mut st, &mut raw)?; // deriver
        read_str(&mut st, &mut raw)?; // narHash
        let n = read_u64(&mut st)?;
        for _ in 0..n {
            read_str(&mut st, &mut raw)?;
        }
        read_u64(&mut st)?; // registration time
        read_u64(&mut st)?; // narSize
        added.push(path);
        i += 1;
    }
    Ok(added)
}

pub fn all_valid_paths(socket: &Path) -> io::Result<BTreeSet<String>> {
    let mut st = connect(socket)?;
    hello(&mut st)?;
    st.write_all(&op(23))?;
    let mut raw = Vec::new();
    let end = read_frames(&mut st, &mut raw, &mut &[][..])?;
    if end != End::Last {
        return Err(io::Error::other(format!("QueryAllValidPaths ended with {end:?}")));
    }
    let n = read_u64(&mut st)?;
    let mut out = BTreeSet::new();
    for _ in 0..n {
        out.insert(String::from_utf8_lossy(&read_str(&mut st, &mut raw)?).into_owned());
    }
    Ok(out)
}

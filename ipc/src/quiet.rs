//! Sockets that wake their process only when there is something to read.
//!
//! tokio registers every socket for readability and writability, edge-triggered. A Unix
//! stream socket reports "writable" each time its peer consumes bytes it sent (the kernel's
//! write-space callback runs when the peer's read frees them). So a process that writes a
//! request and sleeps until the reply comes is woken once for nothing when the peer reads the
//! request, and the peer, in its read, pays for the wakeup (on a VM, an interrupt sent to a
//! halted CPU) before it can serve the request. Seen with strace during `guix-bench --scenario
//! gc`: a third of socket-front's `epoll_wait` returns and half of store-db's brought only
//! `EPOLLOUT`.
//!
//! A [`QuietStream`] is registered for readability only and writes straight to the socket.
//! When a write would block (the socket's buffer is full: a peer slower than us), the writing
//! half registers a duplicate of the descriptor for writability and waits on it, and drops
//! that registration as soon as a write goes through. Nothing else changes: the halves read
//! and write as tokio's do, and dropping the writing half shuts the socket down for writing,
//! as tokio's `OwnedWriteHalf` does.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A connected stream socket of the standard library, in non-blocking mode.
pub trait Socket: AsRawFd + AsFd + Into<OwnedFd> + Send + Sync + 'static {
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_some(&self, buf: &[u8]) -> io::Result<usize>;
    fn shutdown_write(&self) -> io::Result<()>;
    fn set_nonblocking(&self) -> io::Result<()>;
}

/// The standard library's stream sockets: reads and writes through `&T`.
macro_rules! std_socket {
    ($($t:ty),*) => {$(
        impl Socket for $t {
            fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
                (&*self).read(buf)
            }
            fn write_some(&self, buf: &[u8]) -> io::Result<usize> {
                (&*self).write(buf)
            }
            fn shutdown_write(&self) -> io::Result<()> {
                self.shutdown(std::net::Shutdown::Write)
            }
            fn set_nonblocking(&self) -> io::Result<()> {
                <$t>::set_nonblocking(self, true)
            }
        }
    )*};
}
std_socket!(std::os::unix::net::UnixStream, std::net::TcpStream);

/// A socket registered for readability only (see the module docs). Must be made inside a
/// tokio runtime with I/O enabled.
pub struct QuietStream<T: Socket> {
    read: QuietRead<T>,
    write: QuietWrite<T>,
}

/// The reading half of a [`QuietStream`].
pub struct QuietRead<T: Socket> {
    io: Arc<AsyncFd<T>>,
}

/// The writing half of a [`QuietStream`]; dropping it shuts the socket down for writing.
pub struct QuietWrite<T: Socket> {
    io: Arc<AsyncFd<T>>,
    /// While a write is blocked: a duplicate of the descriptor, registered for writability.
    blocked: Option<AsyncFd<OwnedFd>>,
}

/// Registers `fd` with the runtime for `interest`.
fn register<F: AsRawFd + Into<OwnedFd>>(fd: F, interest: Interest) -> io::Result<AsyncFd<F>> {
    // SAFETY: `F` owns its open descriptor (it converts into an `OwnedFd`, which a borrowed
    // one cannot), and nothing here closes or replaces it while the `AsyncFd` holds it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

impl<T: Socket> QuietStream<T> {
    pub fn new(socket: T) -> io::Result<QuietStream<T>> {
        socket.set_nonblocking()?;
        let io = Arc::new(register(socket, Interest::READABLE)?);
        Ok(QuietStream { read: QuietRead { io: io.clone() }, write: QuietWrite { io, blocked: None } })
    }

    pub fn into_split(self) -> (QuietRead<T>, QuietWrite<T>) {
        (self.read, self.write)
    }
}

impl QuietStream<std::os::unix::net::UnixStream> {
    /// Takes over a socket tokio has registered (it is deregistered from tokio first).
    pub fn from_unix(s: tokio::net::UnixStream) -> io::Result<Self> {
        QuietStream::new(s.into_std()?)
    }
}

impl QuietStream<std::net::TcpStream> {
    /// Takes over a socket tokio has registered (it is deregistered from tokio first).
    pub fn from_tcp(s: tokio::net::TcpStream) -> io::Result<Self> {
        QuietStream::new(s.into_std()?)
    }
}

impl<T: Socket> AsRawFd for QuietStream<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.read.io.as_raw_fd()
    }
}

impl<T: Socket> AsyncRead for QuietRead<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.io.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            // `try_io` clears the readiness only when the read would block.
            match ready.try_io(|io| io.get_ref().read_some(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl<T: Socket> AsyncWrite for QuietWrite<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            match this.io.get_ref().write_some(buf) {
                Ok(n) => {
                    this.blocked = None;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
            let blocked = match &mut this.blocked {
                Some(b) => b,
                // Registering reports the present state too: room made between the failed
                // write and now is not missed.
                None => {
                    this.blocked.insert(register(this.io.get_ref().as_fd().try_clone_to_owned()?, Interest::WRITABLE)?)
                }
            };
            let mut ready = ready!(blocked.poll_write_ready(cx))?;
            // Writable now, or a stale report: the next write tells, and clears a stale one.
            match ready.try_io(|_| this.io.get_ref().write_some(buf)) {
                Ok(r) => {
                    this.blocked = None;
                    return Poll::Ready(r);
                }
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.get_ref().shutdown_write())
    }
}

impl<T: Socket> Drop for QuietWrite<T> {
    fn drop(&mut self) {
        let _ = self.io.get_ref().shutdown_write();
    }
}

impl<T: Socket> AsyncRead for QuietStream<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<T: Socket> AsyncWrite for QuietStream<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

/// The event masks (`EPOLLIN` 0x1, `EPOLLOUT` 0x4, …) with which this process's epoll
/// instances watch the file `fd` is open on, under any of this process's descriptors, read
/// from `/proc/self/fdinfo`: for tests and diagnostics, to check that a socket is registered as
/// this module intends. An epoll instance open under two descriptors (the runtime keeps a
/// duplicate) counts once.
pub fn watched_events(fd: RawFd) -> io::Result<Vec<u32>> {
    let file = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
    let mut found = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        if std::fs::read_link(entry.path()).ok().as_deref() != Some(Path::new("anon_inode:[eventpoll]")) {
            continue;
        }
        let name = entry.file_name();
        let Ok(info) = std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(&name)) else { continue };
        // `tfd: <fd> events: <mask> data: <data> pos:<pos> ino:<inode> sdev:<dev>`
        for line in info.lines().filter_map(|l| l.strip_prefix("tfd:")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (Some(tfd), Some(mask)) = (words.first(), words.get(2)) else { continue };
            let Ok(mask) = u32::from_str_radix(mask, 16) else { continue };
            if std::fs::read_link(format!("/proc/self/fd/{tfd}")).ok().as_ref() == Some(&file) {
                found.insert((tfd.to_string(), mask));
            }
        }
    }
    Ok(found.into_iter().map(|(_, mask)| mask).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (QuietStream<std::os::unix::net::UnixStream>, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (QuietStream::new(a).unwrap(), b)
    }

    fn masks(fd: RawFd) -> Vec<u32> {
        watched_events(fd).unwrap()
    }

    const EPOLLOUT: u32 = 0x4;
    const EPOLLIN: u32 = 0x1;

    #[tokio::test]
    async fn registered_for_reading_only_and_round_trips() {
        let (mut q, mut peer) = pair();
        let masks = masks(q.as_raw_fd());
        assert_eq!(masks.len(), 1, "registered once with the runtime: {masks:x?}");
        assert_eq!(masks[0] & EPOLLOUT, 0, "registered for writability: {masks:x?}");
        assert_ne!(masks[0] & EPOLLIN, 0);
        q.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        peer.write_all(b"pong").unwrap();
        q.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        drop(peer);
        assert_eq!(q.read(&mut got).await.unwrap(), 0, "end of stream");
    }

    /// A write larger than the socket's buffer waits for the peer, through a registration for
    /// writability that goes away once the write goes through.
    #[tokio::test]
    async fn a_blocked_write_waits_for_room_and_then_unregisters() {
        let (q, peer) = pair();
        let (mut rd, mut wr) = q.into_split();
        let fd = rd.io.as_raw_fd();
        let data: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let reader = std::thread::spawn(move || {
            let mut peer = peer;
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while got.len() < expected.len() {
                let n = peer.read(&mut buf).unwrap();
                assert_ne!(n, 0);
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == expected, "bytes differ");
            peer.write_all(b"done").unwrap();
            peer
        });
        let w = tokio::spawn(async move {
            wr.write_all(&data).await.unwrap();
            wr
        });
        // While the writer waits, two registrations watch the socket: ours for reading, the
        // duplicate for writing.
        let mut saw_blocked = false;
        for _ in 0..200 {
            if masks(fd).iter().any(|m| m & EPOLLOUT != 0) {
                saw_blocked = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(saw_blocked, "the blocked write never registered for writability");
        let wr = w.await.unwrap();
        let mut done = [0u8; 4];
        rd.read_exact(&mut done).await.unwrap();
        assert_eq!(&done, b"done");
        let left = masks(fd);
        assert!(left.len() == 1 && left[0] & EPOLLOUT == 0, "a registration for writability is left: {left:x?}");
        drop(wr);
        let _peer = reader.join().unwrap();
    }

    #[tokio::test]
    async fn dropping_the_writing_half_ends_the_peers_stream() {
        let (q, mut peer) = pair();
        let (_rd, wr) = q.into_split();
        drop(wr);
        let mut buf = [0u8; 1];
        assert_eq!(peer.read(&mut buf).unwrap(), 0);
    }
}

//! A blocking `std::io` view of an async stream, for the parts of an operation that run on a
//! blocking thread (unpacking a NAR into the store, dumping one, reading an export stream).
//!
//! Why: the NAR restorer, the dumper and the export reader are blocking code over
//! `std::io::{Read, Write}` (one validation core for every reader). Running them on a
//! `spawn_blocking` thread with the socket bridged in means the bytes go from the socket's
//! read buffer straight into the files being created, with no spool and no second pass; the
//! only cost is one thread parked per transfer in progress (a thread of
//! [`crate::transfer_pool`]).
//!
//! Idle limit: on a thread running [`under_idle_limit`] (every transfer thread), each read or
//! write through a [`SyncBridge`] waits at most that limit for the client; past it the call
//! fails with `TimedOut` and the thread records that the client went silent, so the
//! connection is dropped whatever the transfer made of the error. The limit lives in a
//! thread-local so the transfer code (`add`, `transfer`) bridges the socket the same way
//! everywhere without passing it around.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;

thread_local! {
    /// The idle limit of bridged I/O on this thread, and whether it was reached.
    static IDLE: Cell<Option<Duration>> = const { Cell::new(None) };
    static IDLED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with bridged reads and writes on this thread bounded by `idle`; returns what it
/// returned and whether one of them gave up.
pub fn under_idle_limit<T>(idle: Duration, f: impl FnOnce() -> T) -> (T, bool) {
    IDLE.with(|c| c.set(Some(idle)));
    IDLED.with(|c| c.set(false));
    let out = f();
    IDLE.with(|c| c.set(None));
    (out, IDLED.with(|c| c.replace(false)))
}

/// `op` under this thread's idle limit, if any.
fn bounded<T>(handle: &Handle, op: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    match IDLE.with(Cell::get) {
        None => handle.block_on(op),
        Some(idle) => handle.block_on(async { tokio::time::timeout(idle, op).await }).unwrap_or_else(|_| {
            IDLED.with(|c| c.set(true));
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client was silent for {} s in the middle of a transfer", idle.as_secs_f64()),
            ))
        }),
    }
}

/// Implements [`Read`]/[`Write`] by blocking on the async ones. Use only on a blocking thread
/// (`spawn_blocking`): `Handle::block_on` must not run inside the runtime's workers.
pub struct SyncBridge<'a, T: ?Sized> {
    inner: &'a mut T,
    handle: Handle,
}

impl<'a, T: ?Sized> SyncBridge<'a, T> {
    pub fn new(inner: &'a mut T, handle: Handle) -> Self {
        SyncBridge { inner, handle }
    }
}

impl<T: AsyncRead + Unpin + ?Sized> Read for SyncBridge<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let inner = &mut *self.inner;
        bounded(&self.handle, inner.read(buf))
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> Write for SyncBridge<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let inner = &mut *self.inner;
        bounded(&self.handle, inner.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        let inner = &mut *self.inner;
        bounded(&self.handle, inner.flush())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn bridges_both_ways() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let h = Handle::current();
        let t = tokio::task::spawn_blocking(move || {
            let mut br = SyncBridge::new(&mut b, h);
            let mut got = [0u8; 5];
            br.read_exact(&mut got).unwrap();
            br.write_all(b"pong").unwrap();
            br.flush().unwrap();
            got
        });
        a.write_all(b"ping!").await.unwrap();
        let mut back = [0u8; 4];
        a.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
        assert_eq!(&t.await.unwrap(), b"ping!");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_silent_peer_is_given_up_after_the_idle_limit() {
        let (_a, mut b) = tokio::io::duplex(64);
        let h = Handle::current();
        let t = tokio::task::spawn_blocking(move || {
            under_idle_limit(Duration::from_millis(50), || {
                let mut got = [0u8; 1];
                SyncBridge::new(&mut b, h).read(&mut got).map_err(|e| e.kind())
            })
        });
        let (r, idled) = t.await.unwrap();
        assert_eq!(r, Err(io::ErrorKind::TimedOut));
        assert!(idled);
    }
}

//! A blocking `std::io` view of an async stream, for the parts of an operation that run on a
//! blocking thread (unpacking a NAR into the store, dumping one, reading an export stream).
//!
//! Why: the NAR restorer, the dumper and the export reader are blocking code over
//! `std::io::{Read, Write}` (one validation core for every reader). Running them on a
//! `spawn_blocking` thread with the socket bridged in means the bytes go from the socket's
//! read buffer straight into the files being created, with no spool and no second pass; the
//! only cost is one thread parked per transfer in progress.

use std::io::{self, Read, Write};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;

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
        self.handle.block_on(inner.read(buf))
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> Write for SyncBridge<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let inner = &mut *self.inner;
        self.handle.block_on(inner.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        let inner = &mut *self.inner;
        self.handle.block_on(inner.flush())
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
}

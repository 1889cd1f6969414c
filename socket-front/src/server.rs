//! Accepting clients: one task per inherited `client` listener, one task per connection.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use guix_ipc::component::InheritedListener;
use guix_ipc::quiet::{QuietStream, Socket};
use guix_ipc::store_db::ConnId;
use tokio::io::BufReader;
use tokio::net::{TcpListener, UnixListener};

use crate::backend::StoreBackend;
use crate::conn::{serve, Peer, Shared};

/// Connection numbers: our pid in the high 32 bits, a counter in the low ones, so numbers of a
/// previous socket-front never collide with ours in store-db.
pub struct ConnIds {
    pid: u32,
    next: AtomicU32,
}

impl ConnIds {
    pub fn new(pid: u32) -> ConnIds {
        ConnIds { pid, next: AtomicU32::new(1) }
    }

    pub fn next(&self) -> ConnId {
        (u64::from(self.pid) << 32) | u64::from(self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// Accepts on `listener` forever. Accept errors (EMFILE, …) are logged and retried after a
/// short pause; they never end the loop.
pub async fn accept_loop<B: StoreBackend>(
    shared: Arc<Shared<B>>,
    ids: Arc<ConnIds>,
    listener: InheritedListener,
) -> std::io::Result<()> {
    match listener {
        InheritedListener::Unix(l) => {
            let l = UnixListener::from_std(l)?;
            loop {
                match l.accept().await {
                    Ok((stream, _)) => {
                        let peer = match stream.peer_cred() {
                            Ok(c) => Peer { uid: Some(c.uid()), pid: c.pid() },
                            Err(_) => Peer { uid: None, pid: None },
                        };
                        start(&shared, &ids, peer, QuietStream::from_unix(stream));
                    }
                    Err(e) => pause_after(&e).await,
                }
            }
        }
        InheritedListener::Tcp(l) => {
            let l = TcpListener::from_std(l)?;
            loop {
                match l.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        start(&shared, &ids, Peer { uid: None, pid: None }, QuietStream::from_tcp(stream));
                    }
                    Err(e) => pause_after(&e).await,
                }
            }
        }
    }
}

/// Serves an accepted connection, registered for reading only (see `guix_ipc::quiet`: not
/// woken each time the client reads a reply); one that cannot be registered is dropped.
fn start<B: StoreBackend, T: Socket>(
    shared: &Arc<Shared<B>>,
    ids: &ConnIds,
    peer: Peer,
    stream: std::io::Result<QuietStream<T>>,
) {
    match stream {
        Ok(stream) => {
            tokio::spawn(serve(shared.clone(), ids.next(), peer, BufReader::with_capacity(4096, stream)));
        }
        Err(e) => eprintln!("guix-socket-front: dropping a connection: {e}"),
    }
}

async fn pause_after(e: &std::io::Error) {
    eprintln!("guix-socket-front: accept failed: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_pid() {
        let ids = ConnIds::new(0x1234);
        assert_eq!(ids.next(), 0x1234_0000_0001);
        assert_eq!(ids.next(), 0x1234_0000_0002);
    }
}

//! The serving side of a link: reads requests, runs each in its own task with a [`Call`]
//! (peer, cancellation token, flow-controlled stream sender), writes items and replies as
//! they come.
//!
//! Memory per connection is bounded: a request may have at most the window it announced of
//! stream items on their way (a handler's [`Call::send`] waits for credit, so a slow caller
//! holds up only its own stream), and encoded frames wait in a queue of [`WRITE_QUEUE`].
//! When the caller sends `Cancel` for a request, or the connection ends, the request's token
//! is cancelled; the handler decides what stopping means (its task is not aborted, so a
//! handler in the middle of a write finishes it). The final reply of a cancelled request is
//! not sent.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::frame::{
    encode_frame, exchange_hello, read_frame, FrameError, Hello, ToClient, ToServer, READ_BUFFER, WRITE_BATCH,
};
use crate::quiet::QuietStream;
use crate::LinkSpec;

/// Encoded frames waiting to be written on one connection.
pub const WRITE_QUEUE: usize = 64;

/// Credit one request may hold at most (a caller announcing more gets this).
const MAX_WINDOW: u32 = 1024;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Why [`Call::send`] did not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SendError {
    #[error("the call was cancelled")]
    Cancelled,
    #[error("the stream item could not be encoded")]
    Encode,
}

/// One request being served: who asked, whether they still want it, and its stream.
pub struct Call<Item> {
    peer: Arc<Hello>,
    id: u64,
    cancel: CancellationToken,
    credit: Arc<Semaphore>,
    out: mpsc::Sender<Vec<u8>>,
    _item: PhantomData<fn(Item)>,
}

impl<Item> Clone for Call<Item> {
    fn clone(&self) -> Self {
        Call {
            peer: self.peer.clone(),
            id: self.id,
            cancel: self.cancel.clone(),
            credit: self.credit.clone(),
            out: self.out.clone(),
            _item: PhantomData,
        }
    }
}

impl<Item: Serialize> Call<Item> {
    /// The caller's hello.
    pub fn peer(&self) -> &Hello {
        &self.peer
    }

    /// Cancelled when the caller dropped the call or its connection ended.
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Sends one stream item, waiting until the caller has room for it.
    pub async fn send(&self, item: Item) -> Result<(), SendError> {
        let frame =
            encode_frame(&ToClient::<Item, ()>::Item { id: self.id, body: item }).map_err(|_| SendError::Encode)?;
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return Err(SendError::Cancelled),
            permit = self.credit.acquire() => match permit {
                Ok(p) => p.forget(),
                Err(_) => return Err(SendError::Cancelled),
            },
        }
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(SendError::Cancelled),
            r = self.out.send(frame) => r.map_err(|_| SendError::Cancelled),
        }
    }
}

/// What a component does with one request of its link.
pub trait Handler: Send + Sync + 'static {
    type Req: DeserializeOwned + Send + 'static;
    type Resp: Serialize + Send + 'static;
    /// The link's stream messages (`()` for a link without streams).
    type Item: Serialize + Send + 'static;
    fn handle(
        self: &Arc<Self>,
        call: Call<Self::Item>,
        req: Self::Req,
    ) -> impl Future<Output = Self::Resp> + Send + 'static;
}

struct Running {
    cancel: CancellationToken,
    credit: Arc<Semaphore>,
    window: u32,
}

/// Serves one connection until the peer closes it. Requests run concurrently; returns once
/// every handler started for it has returned.
/// A component's serving loop: accepts connections on its inherited `listener` for link `spec`
/// and serves each with `handler`, until SIGTERM or SIGINT. `program` (`guix-builder`, …)
/// names the process in its messages.
pub async fn serve_until_signalled<H: Handler>(
    listener: std::os::unix::net::UnixListener,
    spec: LinkSpec,
    program: &str,
    handler: Arc<H>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let who = format!("{}[{}]", program.trim_start_matches("guix-"), std::process::id());
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let (handler, who, program) = (handler.clone(), who.clone(), program.to_owned());
                    tokio::spawn(async move {
                        if let Err(e) = serve_connection(stream, spec, &who, handler).await {
                            eprintln!("{program}: connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    eprintln!("{program}: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    Ok(())
}

pub async fn serve_connection<H: Handler>(
    stream: UnixStream,
    spec: LinkSpec,
    who: &str,
    handler: Arc<H>,
) -> Result<(), ServerError> {
    // Registered for reading only: see [`crate::quiet`].
    let mut stream = QuietStream::from_unix(stream).map_err(FrameError::Io)?;
    let peer = Arc::new(exchange_hello(&mut stream, spec, who).await?);
    let (rd, mut wr) = stream.into_split();
    // Frames are read from a buffer (one system call for many small frames, not two each).
    let mut rd = tokio::io::BufReader::with_capacity(READ_BUFFER, rd);
    let (out, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let writer = tokio::spawn(async move {
        // The frames queued by the time one is written go out in one write: a collection
        // streams 50,000 progress lines, which were as many writes and wakeups of the peer.
        let mut batch = Vec::new();
        while let Some(frame) = rx.recv().await {
            batch.clear();
            batch.extend_from_slice(&frame);
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if wr.write_all(&batch).await.is_err() {
                break;
            }
        }
    });
    let running: Arc<Mutex<HashMap<u64, Running>>> = Arc::default();
    let result = loop {
        match read_frame::<_, ToServer<H::Req>>(&mut rd).await {
            Ok(ToServer::Request { id, window, body }) => {
                let window = window.min(MAX_WINDOW);
                let cancel = CancellationToken::new();
                let credit = Arc::new(Semaphore::new(window as usize));
                if let Ok(mut r) = running.lock() {
                    r.insert(id, Running { cancel: cancel.clone(), credit: credit.clone(), window });
                }
                let call = Call {
                    peer: peer.clone(),
                    id,
                    cancel: cancel.clone(),
                    credit,
                    out: out.clone(),
                    _item: PhantomData,
                };
                let fut = handler.handle(call, body);
                let out = out.clone();
                let running = running.clone();
                tokio::spawn(async move {
                    let body = fut.await;
                    if let Ok(mut r) = running.lock() {
                        r.remove(&id);
                    }
                    if cancel.is_cancelled() {
                        return;
                    }
                    match encode_frame(&ToClient::<(), H::Resp>::Final { id, body }) {
                        Ok(frame) => {
                            let _ = out.send(frame).await;
                        }
                        Err(e) => eprintln!("ipc: the reply to request {id} cannot be sent: {e}"),
                    }
                });
            }
            Ok(ToServer::Credit { id, n }) => {
                if let Some(r) = running.lock().ok().as_ref().and_then(|r| r.get(&id)) {
                    // Never more than the window outstanding, whatever the peer sends.
                    let room = (r.window as usize).saturating_sub(r.credit.available_permits());
                    r.credit.add_permits((n as usize).min(room));
                }
            }
            Ok(ToServer::Cancel { id }) => {
                if let Some(r) = running.lock().ok().as_ref().and_then(|r| r.get(&id)) {
                    r.cancel.cancel();
                }
            }
            Err(FrameError::Closed) => break Ok(()),
            Err(e) => break Err(e.into()),
        }
    };
    // The caller is gone: nobody wants what is still running.
    if let Ok(r) = running.lock() {
        r.values().for_each(|r| r.cancel.cancel());
    }
    drop(out);
    let _ = writer.await;
    result
}

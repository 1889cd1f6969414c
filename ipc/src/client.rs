//! The calling side of a link: one shared connection, many requests in flight, each with a
//! deadline; streams with per-request flow control; cancellation when a call is dropped;
//! reconnect and resend of idempotent requests when the serving component restarts.
//!
//! * **Deadlines.** Every call has one: the client's default ([`DEFAULT_DEADLINE`] unless
//!   [`Client::new`] was given another) or the one given to [`Client::call_with_deadline`].
//!   Connecting, the hello, sending and waiting for the reply are all bounded by the time left,
//!   so a peer whose socket exists but who never accepts, never says hello or never answers
//!   makes the call fail with [`ClientError::Unavailable`] (or [`ClientError::MaybeDone`]) when
//!   the deadline passes, never later.
//! * **Resend.** A connection that breaks before the final reply is replaced, and the request
//!   sent again on the new one if it was never written, or if it is idempotent
//!   ([`LinkRequest::idempotent`]) and none of its stream items was handed out yet. Otherwise
//!   the call fails with [`ClientError::MaybeDone`] (a request that may or may not have been
//!   carried out) or [`ClientError::Interrupted`] (a stream cut in the middle).
//! * **Streams.** [`Client::call_stream`] returns a [`CallStream`]: the request's items, then
//!   its final reply. Items for one call are buffered in a channel of [`STREAM_WINDOW`] items;
//!   the server may send no more than that ahead of what the caller has taken (the caller
//!   grants credit as it reads), so the connection's reader never waits for a slow consumer
//!   and other calls on the connection are not held up.
//! * **Cancellation.** Dropping a call's future or its [`CallStream`] before the final reply
//!   sends `Cancel` for its id; the server cancels the handler's token ([`crate::Call`]).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant};

use crate::error::{ErrorKind, LinkError, LinkRequest};
use crate::frame::{exchange_hello, read_frame, write_frame, FrameError, ToClient, ToServer};
use crate::quiet::QuietStream;
use crate::LinkSpec;

/// The deadline of a call when its client was not given another: a component that cannot
/// start makes its callers fail within this bound.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// Stream items a server may send for one request ahead of what its caller has read.
pub const STREAM_WINDOW: u32 = 16;

#[derive(Debug, Error)]
pub enum ClientError {
    /// The peer was not reached, or did not answer, before the deadline. Nothing half-done is
    /// left: the request was not delivered, or it is idempotent.
    #[error("{link} is unavailable (no answer within {waited:?}): {last}")]
    Unavailable { link: &'static str, waited: Duration, last: String },
    /// A request that is not idempotent was sent, and its connection broke or its deadline
    /// passed before the final reply: it may or may not have been carried out.
    #[error("{link} did not answer ({why}); the request may or may not have been carried out")]
    MaybeDone { link: &'static str, why: String },
    /// A stream was cut after some of its items were handed out (not resent: they would come
    /// twice).
    #[error("{link}: the stream was cut before its end ({why})")]
    Interrupted { link: &'static str, why: String },
    /// The call's stream already returned its final reply.
    #[error("{link}: the call already ended")]
    Ended { link: &'static str },
}

impl ClientError {
    /// Every way a call fails on the calling side is the peer's being unavailable.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Ended { .. } => ErrorKind::Internal,
            _ => ErrorKind::Retryable,
        }
    }
}

impl From<ClientError> for LinkError {
    /// The message does not repeat the link's name: [`LinkError::client_text`] adds it.
    fn from(e: ClientError) -> LinkError {
        let message = match &e {
            ClientError::Unavailable { waited, last, .. } => format!("no answer within {waited:?}: {last}"),
            ClientError::MaybeDone { why, .. } => {
                format!("no reply ({why}); the request may or may not have been carried out")
            }
            ClientError::Interrupted { why, .. } => format!("the stream was cut before its end ({why})"),
            ClientError::Ended { .. } => "the call already ended".to_owned(),
        };
        LinkError::new(e.kind(), message)
    }
}

struct Outgoing<Req> {
    frame: ToServer<Req>,
    /// Set once a request frame was written to the socket.
    written: Option<Arc<AtomicBool>>,
}

struct Waiter<Resp, Item> {
    items: mpsc::Sender<Item>,
    fin: oneshot::Sender<Resp>,
}

/// The calls waiting on one connection; `None` once the connection is dead, so that a call
/// can never register on a connection nobody reads any more.
type Pending<Resp, Item> = Arc<Mutex<Option<HashMap<u64, Waiter<Resp, Item>>>>>;

struct Conn<Req, Resp, Item> {
    tx: mpsc::UnboundedSender<Outgoing<Req>>,
    pending: Pending<Resp, Item>,
}

impl<Req, Resp, Item> Conn<Req, Resp, Item> {
    fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.pending.lock().map(|p| p.is_none()).unwrap_or(true)
    }
}

/// A client of one link. Cheap to share (`Arc`); every call may run concurrently. `Item` is
/// the type of the link's stream messages (`()` for a link without streams).
pub struct Client<Req, Resp, Item = ()> {
    path: PathBuf,
    spec: LinkSpec,
    who: String,
    deadline: Duration,
    next_id: AtomicU64,
    generation: AtomicU64,
    conn: tokio::sync::Mutex<Option<Arc<Conn<Req, Resp, Item>>>>,
    _marker: PhantomData<fn(Req) -> (Resp, Item)>,
}

impl<Req, Resp, Item> Client<Req, Resp, Item>
where
    Req: LinkRequest,
    Resp: DeserializeOwned + Send + 'static,
    Item: DeserializeOwned + Send + 'static,
{
    /// A client of the link served at `path`; calls have `deadline` unless given another.
    pub fn new(path: impl Into<PathBuf>, spec: LinkSpec, who: &str, deadline: Duration) -> Self {
        Client {
            path: path.into(),
            spec,
            who: who.to_owned(),
            deadline,
            next_id: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            conn: tokio::sync::Mutex::new(None),
            _marker: PhantomData,
        }
    }

    /// How many connections this client has made so far. A caller whose peer keeps state per
    /// connection of its own (store-db's temp roots) compares it before and after a call: a
    /// change means the peer may have restarted and lost that state.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Sends `req` and waits for its final reply (stream items are dropped), within the
    /// client's default deadline.
    pub async fn call(&self, req: Req) -> Result<Resp, ClientError> {
        self.call_with_deadline(req, self.deadline).await
    }

    /// [`Client::call`] with the deadline `within` from now.
    pub async fn call_with_deadline(&self, req: Req, within: Duration) -> Result<Resp, ClientError> {
        self.call_stream_with_deadline(req, within).reply().await
    }

    /// Sends `req` (when first polled) and returns its stream of items and final reply,
    /// within the client's default deadline.
    pub fn call_stream(&self, req: Req) -> CallStream<'_, Req, Resp, Item> {
        self.call_stream_with_deadline(req, self.deadline)
    }

    /// [`Client::call_stream`] with the deadline `within` from now (for the whole stream).
    pub fn call_stream_with_deadline(&self, req: Req, within: Duration) -> CallStream<'_, Req, Resp, Item> {
        let start = Instant::now();
        CallStream {
            client: self,
            req,
            start,
            deadline: start + within,
            active: None,
            delivered: false,
            last: String::new(),
            delay: Duration::from_millis(5),
            fin: None,
            ended: false,
        }
    }

    /// Registers a call on the current connection (made if needed) and queues its request.
    async fn start(&self, req: Req) -> Result<Active<Req, Resp, Item>, String> {
        let conn = self.connection().await.map_err(|e| e.to_string())?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (items_tx, items) = mpsc::channel(STREAM_WINDOW as usize);
        let (fin_tx, fin) = oneshot::channel();
        match conn.pending.lock().as_deref_mut() {
            Ok(Some(p)) => {
                p.insert(id, Waiter { items: items_tx, fin: fin_tx });
            }
            _ => return Err("connection closed".to_owned()),
        }
        let written = Arc::new(AtomicBool::new(false));
        let frame = ToServer::Request { id, window: STREAM_WINDOW, body: req };
        if conn.tx.send(Outgoing { frame, written: Some(written.clone()) }).is_err() {
            return Err("connection closed".to_owned());
        }
        Ok(Active { conn, id, items, fin, written, unacked: 0, done: false })
    }

    async fn connection(&self) -> Result<Arc<Conn<Req, Resp, Item>>, FrameError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        // Registered for reading only: see [`crate::quiet`].
        let mut stream = QuietStream::from_unix(UnixStream::connect(&self.path).await?)?;
        exchange_hello(&mut stream, self.spec, &self.who).await?;
        let (rd, mut wr) = stream.into_split();
        // Frames are read from a buffer (one system call for many small frames, not two each).
        let mut rd = tokio::io::BufReader::with_capacity(crate::frame::READ_BUFFER, rd);
        let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing<Req>>();
        let pending: Pending<Resp, Item> = Arc::new(Mutex::new(Some(HashMap::new())));
        let conn = Arc::new(Conn { tx, pending: pending.clone() });

        // The reader never waits for a caller: an item goes into its call's channel, which
        // has room because the server sends no more than the credit it was given. It ends
        // when the peer goes away; marking the connection dead drops the waiters, which wakes
        // every waiting call.
        let reader_pending = pending.clone();
        let reader_tx = conn.tx.clone();
        let reader = tokio::spawn(async move {
            while let Ok(frame) = read_frame::<_, ToClient<Item, Resp>>(&mut rd).await {
                let Ok(mut guard) = reader_pending.lock() else { break };
                let Some(p) = guard.as_mut() else { break };
                match frame {
                    ToClient::Item { id, body } => {
                        if let Some(w) = p.get(&id) {
                            if w.items.try_send(body).is_err() {
                                // Over its credit (or the caller is gone): the call fails,
                                // and the server stops.
                                p.remove(&id);
                                let _ = reader_tx.send(Outgoing { frame: ToServer::Cancel { id }, written: None });
                            }
                        }
                    }
                    ToClient::Final { id, body } => {
                        if let Some(w) = p.remove(&id) {
                            let _ = w.fin.send(body);
                        }
                    }
                }
            }
            if let Ok(mut p) = reader_pending.lock() {
                *p = None;
            }
        });
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                if write_frame(&mut wr, &out.frame).await.is_err() {
                    break;
                }
                if let Some(w) = out.written {
                    w.store(true, Ordering::SeqCst);
                }
            }
            // Make the connection unusable for new calls and wake the waiting ones.
            rx.close();
            reader.abort();
            if let Ok(mut p) = pending.lock() {
                *p = None;
            }
        });
        *guard = Some(conn.clone());
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(conn)
    }
}

/// One attempt of a call: registered on a connection. Dropped before the final reply, it
/// tells the server to cancel.
struct Active<Req, Resp, Item> {
    conn: Arc<Conn<Req, Resp, Item>>,
    id: u64,
    items: mpsc::Receiver<Item>,
    fin: oneshot::Receiver<Resp>,
    written: Arc<AtomicBool>,
    /// Items taken since the last credit sent.
    unacked: u32,
    done: bool,
}

impl<Req, Resp, Item> Active<Req, Resp, Item> {
    fn took_item(&mut self) {
        self.unacked += 1;
        if self.unacked >= STREAM_WINDOW / 2 {
            let _ =
                self.conn.tx.send(Outgoing { frame: ToServer::Credit { id: self.id, n: self.unacked }, written: None });
            self.unacked = 0;
        }
    }
}

impl<Req, Resp, Item> Drop for Active<Req, Resp, Item> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let was_pending =
            self.conn.pending.lock().ok().and_then(|mut p| p.as_mut().and_then(|p| p.remove(&self.id))).is_some();
        if was_pending {
            let _ = self.conn.tx.send(Outgoing { frame: ToServer::Cancel { id: self.id }, written: None });
        }
    }
}

/// A call in progress: its stream items ([`CallStream::next_item`]), then its final reply
/// ([`CallStream::reply`]). Dropping it before the end cancels the request.
pub struct CallStream<'c, Req, Resp, Item> {
    client: &'c Client<Req, Resp, Item>,
    req: Req,
    start: Instant,
    deadline: Instant,
    active: Option<Active<Req, Resp, Item>>,
    /// Whether an item was handed out (then the request is not resent).
    delivered: bool,
    last: String,
    delay: Duration,
    fin: Option<Resp>,
    ended: bool,
}

impl<Req, Resp, Item> CallStream<'_, Req, Resp, Item>
where
    Req: LinkRequest,
    Resp: DeserializeOwned + Send + 'static,
    Item: DeserializeOwned + Send + 'static,
{
    fn link(&self) -> &'static str {
        self.client.spec.name
    }

    fn unavailable(&self) -> ClientError {
        ClientError::Unavailable { link: self.link(), waited: self.start.elapsed(), last: self.last.clone() }
    }

    /// The next stream item; `None` once the final reply has come (take it with
    /// [`CallStream::reply`]).
    pub async fn next_item(&mut self) -> Result<Option<Item>, ClientError> {
        if self.fin.is_some() {
            return Ok(None);
        }
        if self.ended {
            return Err(ClientError::Ended { link: self.link() });
        }
        loop {
            if self.active.is_none() {
                match timeout_at(self.deadline, self.client.start(self.req.clone())).await {
                    Err(_) => {
                        if self.last.is_empty() {
                            self.last = "timed out connecting".to_owned();
                        }
                        return Err(self.unavailable());
                    }
                    Ok(Err(e)) => {
                        self.last = e;
                        self.back_off().await?;
                        continue;
                    }
                    Ok(Ok(a)) => self.active = Some(a),
                }
            }
            let Some(a) = self.active.as_mut() else { continue };
            let why = match timeout_at(self.deadline, a.items.recv()).await {
                Ok(Some(item)) => {
                    a.took_item();
                    self.delivered = true;
                    return Ok(Some(item));
                }
                Ok(None) => match a.fin.try_recv() {
                    Ok(resp) => {
                        a.done = true;
                        self.active = None;
                        self.fin = Some(resp);
                        return Ok(None);
                    }
                    Err(_) => "the connection was lost before the reply",
                },
                Err(_) => "no reply before the deadline",
            };
            let written = a.written.load(Ordering::SeqCst);
            // Dropping the attempt cancels it on the server if the connection still works.
            self.active = None;
            self.last = why.to_owned();
            if self.delivered {
                self.ended = true;
                return Err(ClientError::Interrupted { link: self.link(), why: why.to_owned() });
            }
            if written && !self.req.idempotent() {
                self.ended = true;
                return Err(ClientError::MaybeDone { link: self.link(), why: why.to_owned() });
            }
            self.back_off().await?;
        }
    }

    /// Waits before the next attempt, or fails if the deadline would pass.
    async fn back_off(&mut self) -> Result<(), ClientError> {
        let now = Instant::now();
        if now + self.delay >= self.deadline {
            self.ended = true;
            return Err(self.unavailable());
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_millis(200));
        Ok(())
    }

    /// The final reply; stream items not read yet are dropped.
    pub async fn reply(mut self) -> Result<Resp, ClientError> {
        while self.next_item().await?.is_some() {}
        self.fin.take().ok_or(ClientError::Ended { link: self.link() })
    }
}

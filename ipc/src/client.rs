//! The calling side of a link: one shared connection, many requests in flight, reconnect and
//! retry when the serving component restarts.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::frame::{exchange_hello, read_frame, write_frame, Envelope, FrameError};
use crate::LinkSpec;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("{link} is unavailable (no answer within {waited:?}): {last}")]
    Unavailable { link: &'static str, waited: Duration, last: String },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The callers waiting for a reply on one connection; `None` once the connection is dead, so
/// that a call can never register on a connection nobody reads any more.
type Pending<Resp> = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Resp>>>>>;

struct Conn<Req, Resp> {
    tx: mpsc::UnboundedSender<Envelope<Req>>,
    pending: Pending<Resp>,
}

impl<Req, Resp> Conn<Req, Resp> {
    fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.pending.lock().map(|p| p.is_none()).unwrap_or(true)
    }
}

/// A client of one link. Cheap to share (`Arc`); every call may run concurrently.
///
/// [`Client::call`] retries a request whose connection broke before the reply arrived, until
/// `retry_for` has passed. That is only correct because every request on our links is
/// idempotent (see ARCHITECTURE.md): a request that was executed but whose reply was lost can be
/// executed again with the same result.
pub struct Client<Req, Resp> {
    path: PathBuf,
    spec: LinkSpec,
    who: String,
    retry_for: Duration,
    next_id: AtomicU64,
    generation: AtomicU64,
    conn: tokio::sync::Mutex<Option<Arc<Conn<Req, Resp>>>>,
    _marker: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Client<Req, Resp>
where
    Req: Serialize + Clone + Send + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    pub fn new(path: impl Into<PathBuf>, spec: LinkSpec, who: &str, retry_for: Duration) -> Self {
        Client {
            path: path.into(),
            spec,
            who: who.to_owned(),
            retry_for,
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

    /// Sends `req` and waits for its reply, reconnecting and resending while the peer is away.
    pub async fn call(&self, req: Req) -> Result<Resp, ClientError> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(5);
        loop {
            let last = match self.try_call(req.clone()).await {
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            };
            if start.elapsed() >= self.retry_for {
                return Err(ClientError::Unavailable { link: self.spec.name, waited: start.elapsed(), last });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    async fn try_call(&self, req: Req) -> Result<Resp, String> {
        let conn = self.connection().await.map_err(|e| e.to_string())?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match conn.pending.lock().as_deref_mut() {
            Ok(Some(p)) => {
                p.insert(id, tx);
            }
            _ => return Err("connection closed".to_owned()),
        }
        if conn.tx.send(Envelope { id, body: req }).is_err() {
            return Err("connection closed".to_owned());
        }
        rx.await.map_err(|_| "connection lost before the reply".to_owned())
    }

    async fn connection(&self) -> Result<Arc<Conn<Req, Resp>>, FrameError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let mut stream = UnixStream::connect(&self.path).await?;
        exchange_hello(&mut stream, self.spec, &self.who).await?;
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Envelope<Req>>();
        let pending: Pending<Resp> = Arc::new(Mutex::new(Some(HashMap::new())));
        let conn = Arc::new(Conn { tx, pending: pending.clone() });

        // The reader ends when the peer goes away; marking the connection dead drops the
        // pending senders, which wakes every waiting caller; each retries on a new connection.
        let reader_pending = pending.clone();
        let reader = tokio::spawn(async move {
            while let Ok(env) = read_frame::<_, Envelope<Resp>>(&mut rd).await {
                let waiter = reader_pending.lock().ok().and_then(|mut p| p.as_mut().and_then(|p| p.remove(&env.id)));
                if let Some(w) = waiter {
                    let _ = w.send(env.body);
                }
            }
            if let Ok(mut p) = reader_pending.lock() {
                *p = None;
            }
        });
        tokio::spawn(async move {
            while let Some(env) = rx.recv().await {
                if write_frame(&mut wr, &env).await.is_err() {
                    break;
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

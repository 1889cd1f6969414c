//! The serving side of a link: reads requests, runs each in its own task, writes replies as they
//! complete.

use std::future::Future;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::frame::{exchange_hello, read_frame, write_frame, Envelope, FrameError, Hello};
use crate::LinkSpec;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// What a component does with one request of its link.
pub trait Handler: Send + Sync + 'static {
    type Req: DeserializeOwned + Send + 'static;
    type Resp: Serialize + Send + 'static;
    fn handle(self: &Arc<Self>, peer: &Hello, req: Self::Req) -> impl Future<Output = Self::Resp> + Send + 'static;
}

/// Serves one connection until the peer closes it. Requests run concurrently.
pub async fn serve_connection<H: Handler>(
    mut stream: UnixStream,
    spec: LinkSpec,
    who: &str,
    handler: Arc<H>,
) -> Result<(), ServerError> {
    let peer = exchange_hello(&mut stream, spec, who).await?;
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Envelope<H::Resp>>();
    let writer = tokio::spawn(async move {
        while let Some(env) = rx.recv().await {
            if write_frame(&mut wr, &env).await.is_err() {
                break;
            }
        }
    });
    let result = loop {
        match read_frame::<_, Envelope<H::Req>>(&mut rd).await {
            Ok(env) => {
                let fut = handler.handle(&peer, env.body);
                let tx = tx.clone();
                let id = env.id;
                tokio::spawn(async move {
                    let body = fut.await;
                    let _ = tx.send(Envelope { id, body });
                });
            }
            Err(FrameError::Closed) => break Ok(()),
            Err(e) => break Err(e.into()),
        }
    };
    drop(tx);
    let _ = writer.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Client;
    use std::time::Duration;

    struct Echo;
    impl Handler for Echo {
        type Req = (u32, u64);
        type Resp = u32;
        // Not an `async fn`: the future must be `'static`, so it may not borrow `self`.
        #[allow(clippy::manual_async_fn)]
        fn handle(self: &Arc<Self>, _peer: &Hello, req: (u32, u64)) -> impl Future<Output = u32> + Send + 'static {
            async move {
                tokio::time::sleep(Duration::from_millis(req.1)).await;
                req.0 * 2
            }
        }
    }

    const SPEC: LinkSpec = LinkSpec { name: "echo", version: 1 };

    async fn serve(path: std::path::PathBuf) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve_connection(s, SPEC, "echo-server", Arc::new(Echo)));
            }
        })
    }

    #[tokio::test]
    async fn out_of_order_replies_are_matched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let _srv = serve(path.clone()).await;
        let client = Arc::new(Client::<(u32, u64), u32>::new(&path, SPEC, "t", Duration::from_secs(2)));
        let slow = {
            let c = client.clone();
            tokio::spawn(async move { c.call((1, 200)).await })
        };
        let fast = client.call((2, 0)).await.unwrap();
        assert_eq!(fast, 4);
        assert_eq!(slow.await.unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn call_survives_a_server_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let srv = serve(path.clone()).await;
        let client = Arc::new(Client::<(u32, u64), u32>::new(&path, SPEC, "t", Duration::from_secs(5)));
        assert_eq!(client.call((3, 0)).await.unwrap(), 6);
        // Kill the server while a request is in flight, then bring it back.
        let inflight = {
            let c = client.clone();
            tokio::spawn(async move { c.call((5, 300)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        srv.abort();
        let _ = srv.await;
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _srv2 = serve(path.clone()).await;
        assert_eq!(inflight.await.unwrap().unwrap(), 10);
    }

    #[tokio::test]
    async fn call_after_the_peer_closed_an_idle_connection() {
        // A server that answers one request per connection, then closes it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = exchange_hello(&mut s, SPEC, "one-shot").await;
                if let Ok(env) = read_frame::<_, Envelope<(u32, u64)>>(&mut s).await {
                    let _ = write_frame(&mut s, &Envelope { id: env.id, body: env.body.0 * 2 }).await;
                }
            }
        });
        let client = Client::<(u32, u64), u32>::new(&path, SPEC, "t", Duration::from_secs(5));
        assert_eq!(client.call((1, 0)).await.unwrap(), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The connection is dead but the client has not written to it since: the call must
        // not wait forever on it.
        let r = tokio::time::timeout(Duration::from_secs(3), client.call((2, 0))).await;
        assert_eq!(r.expect("call hung on a dead connection").unwrap(), 4);
    }

    #[tokio::test]
    async fn unavailable_after_retry_window() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::<(u32, u64), u32>::new(dir.path().join("none"), SPEC, "t", Duration::from_millis(100));
        assert!(matches!(client.call((1, 0)).await, Err(crate::ClientError::Unavailable { .. })));
    }
}

//! Frames, the hello exchange, and the frames of a link after the hello.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::LinkSpec;

/// Largest frame accepted. Bulk data never travels in a frame (it goes through files on the
/// store's file system); this bounds what a confused peer can make us allocate.
pub const MAX_FRAME: u32 = 64 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("IPC peer closed the connection")]
    Closed,
    #[error("IPC frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(u64),
    #[error("IPC frame could not be decoded: {0}")]
    Decode(#[from] postcard::Error),
    #[error("IPC I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("IPC peer speaks link `{peer_link}' version {peer_version}, we speak `{our_link}' version {our_version}")]
    VersionMismatch { our_link: String, our_version: u32, peer_link: String, peer_version: u32 },
}

/// The first frame on a link, sent by both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The link name, e.g. `store-db`.
    pub link: String,
    /// The link's message version.
    pub version: u32,
    /// Who is talking (component name and process id), for logs.
    pub peer: String,
    pub pid: u32,
}

impl Hello {
    pub fn new(spec: LinkSpec, peer: &str) -> Hello {
        Hello { link: spec.name.to_owned(), version: spec.version, peer: peer.to_owned(), pid: std::process::id() }
    }

    /// Checks that the peer's hello is for the same link and version.
    pub fn check(&self, spec: LinkSpec) -> Result<(), FrameError> {
        if self.link != spec.name || self.version != spec.version {
            return Err(FrameError::VersionMismatch {
                our_link: spec.name.to_owned(),
                our_version: spec.version,
                peer_link: self.link.clone(),
                peer_version: self.version,
            });
        }
        Ok(())
    }
}

/// What the calling side sends after the hello. `id` is chosen by the caller, unique on the
/// connection, and pairs a request with its stream items and final reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToServer<Req> {
    /// A request. The server may send up to `window` stream items for it before it receives
    /// a [`ToServer::Credit`] for more.
    Request { id: u64, window: u32, body: Req },
    /// The caller consumed `n` more stream items of request `id`: the server may send `n` more.
    Credit { id: u64, n: u32 },
    /// The caller no longer wants the reply of request `id` (its call was dropped).
    Cancel { id: u64 },
}

/// What the serving side sends after the hello: any number of stream items of a request,
/// then its final reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToClient<Item, Resp> {
    Item { id: u64, body: Item },
    Final { id: u64, body: Resp },
}

/// Encodes `value` as one frame (length prefix included).
pub fn encode_frame<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = postcard::to_extend(value, vec![0u8; 4])?;
    let len = buf.len() - 4;
    if len as u64 > u64::from(MAX_FRAME) {
        return Err(FrameError::TooLarge(len as u64));
    }
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(buf)
}

/// Writes one frame holding `value`. The value is encoded before the returned future is
/// created, so the future does not borrow it (and stays `Send` for any `T`).
pub fn write_frame<'a, W, T>(w: &'a mut W, value: &T) -> impl std::future::Future<Output = Result<(), FrameError>> + 'a
where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize + ?Sized,
{
    let encoded = encode_frame(value);
    async move {
        w.write_all(&encoded?).await?;
        Ok(())
    }
}

/// The buffer a link connection's frames are read through.
pub(crate) const READ_BUFFER: usize = 64 << 10;

/// A server writes the frames queued meanwhile together, up to about this many bytes.
pub(crate) const WRITE_BATCH: usize = 64 << 10;

/// Reads one frame; `Closed` on a clean end of stream before the length.
pub async fn read_frame<R, T>(r: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(u64::from(len)));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    Ok(postcard::from_bytes(&buf)?)
}

/// Sends our hello and checks the peer's.
pub(crate) async fn exchange_hello<S>(s: &mut S, spec: LinkSpec, who: &str) -> Result<Hello, FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    write_frame(s, &Hello::new(spec, who)).await?;
    let peer: Hello = read_frame(s).await?;
    peer.check(spec)?;
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trip_and_limits() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let sent = ToServer::Request { id: 7, window: 4, body: vec!["x".to_owned()] };
        write_frame(&mut a, &sent).await.unwrap();
        let got: ToServer<Vec<String>> = read_frame(&mut b).await.unwrap();
        assert_eq!(got, sent);
        // An announced length over the limit is refused before allocating.
        a.write_all(&(MAX_FRAME + 1).to_le_bytes()).await.unwrap();
        assert!(matches!(read_frame::<_, ToServer<u8>>(&mut b).await, Err(FrameError::TooLarge(_))));
        drop(a);
        assert!(matches!(read_frame::<_, u8>(&mut b).await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn hello_mismatch_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let ours = LinkSpec { name: "store-db", version: 1 };
        let theirs = LinkSpec { name: "store-db", version: 2 };
        let t = tokio::spawn(async move { exchange_hello(&mut b, theirs, "other").await });
        let r = exchange_hello(&mut a, ours, "me").await;
        assert!(matches!(r, Err(FrameError::VersionMismatch { .. })));
        assert!(t.await.unwrap().is_err());
    }
}

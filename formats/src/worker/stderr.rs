//! The STDERR stream that precedes every reply (spec §3), and the two data tunnels built on it:
//! [`TunnelSource`] (ImportPaths pulls its input with `STDERR_READ`) and [`TunnelSink`]
//! (ExportPath pushes its output with `STDERR_WRITE`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::io::{into_string, Enc, Reader};
use super::{protocol_minor, Limits, ProtoError, STDERR_ERROR, STDERR_LAST, STDERR_NEXT, STDERR_READ, STDERR_WRITE};
use crate::store_path::StoreDir;
use crate::wire::{int_from_word, padding};

/// One frame of the STDERR stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StderrMsg {
    /// Log output (arbitrary bytes, build logs included).
    Next(Vec<u8>),
    /// The daemon wants at most this many bytes; the client answers with one string.
    Read(u32),
    /// Data for the client's sink.
    Write(Vec<u8>),
    /// Success; the reply follows.
    Last,
    /// Failure; no reply follows. `status` is on the wire only if the client's minor is ≥ 8
    /// and the status is not 0 (the daemon never sends 0 to such clients; it is read as 1 when
    /// absent).
    Error { msg: String, status: u32 },
}

impl StderrMsg {
    /// Whether this frame ends the stream.
    pub fn is_terminal(&self) -> bool {
        matches!(self, StderrMsg::Last | StderrMsg::Error { .. })
    }
}

/// The default status of an error: the C++ `Error` class's.
pub const DEFAULT_ERROR_STATUS: u32 = 1;

pub(crate) fn encode_stderr(e: &mut Enc, msg: &StderrMsg, client_version: u32) {
    match msg {
        StderrMsg::Next(s) => {
            e.int(STDERR_NEXT);
            e.bytes(s);
        }
        StderrMsg::Read(n) => {
            e.int(STDERR_READ);
            e.int(*n);
        }
        StderrMsg::Write(s) => {
            e.int(STDERR_WRITE);
            e.bytes(s);
        }
        StderrMsg::Last => e.int(STDERR_LAST),
        StderrMsg::Error { msg, status } => {
            e.int(STDERR_ERROR);
            e.str(msg);
            if protocol_minor(client_version) >= 8 && *status != 0 {
                e.int(*status);
            }
        }
    }
}

/// Daemon side: appends one frame to `buf` (to write several at once).
pub fn put_stderr(buf: &mut Vec<u8>, msg: &StderrMsg, client_version: u32) {
    let mut e = Enc { buf: std::mem::take(buf) };
    encode_stderr(&mut e, msg, client_version);
    *buf = e.buf;
}

/// Daemon side: writes one frame and flushes. `client_version` decides whether an error's
/// status is sent.
pub async fn write_stderr<W>(w: &mut W, msg: &StderrMsg, client_version: u32) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut e = Enc::default();
    encode_stderr(&mut e, msg, client_version);
    e.send(w).await
}

/// Client side: reads one frame. `client_version` is the version the client announced (the
/// daemon conditions the error status on it).
pub async fn read_stderr<R>(r: &mut R, client_version: u32, limits: &Limits) -> Result<StderrMsg, ProtoError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let store = StoreDir::default();
    let mut rd = Reader::new(r, &store, limits);
    let max = limits.max_string_len;
    let code = rd.int().await?;
    Ok(match code {
        STDERR_NEXT => StderrMsg::Next(rd.bytes("log message", max).await?),
        STDERR_READ => StderrMsg::Read(rd.int().await?),
        STDERR_WRITE => StderrMsg::Write(rd.bytes("STDERR_WRITE chunk", max).await?),
        STDERR_LAST => StderrMsg::Last,
        STDERR_ERROR => {
            let msg = into_string(rd.bytes("error message", max).await?);
            let status = if protocol_minor(client_version) >= 8 { rd.int().await? } else { DEFAULT_ERROR_STATUS };
            StderrMsg::Error { msg, status }
        }
        other => return Err(ProtoError::InvalidStderrCode(other)),
    })
}

/// How many bytes [`TunnelSource`] asks for each time: the C++ `BufferedSource` buffer size.
pub const TUNNEL_READ_SIZE: u32 = 32768;

enum SourceState {
    /// Nothing buffered, no request outstanding.
    Idle,
    /// Sending the `STDERR_READ` request (`pos` bytes of `req` written).
    Requesting {
        req: [u8; 16],
        pos: usize,
    },
    Flushing,
    /// Reading the length word of the client's answer.
    Header {
        word: [u8; 8],
        got: usize,
    },
    /// Reading the answer and its padding into `buf`.
    Body {
        need: usize,
    },
    /// Serving `buf[pos..len]` to the caller.
    Serving {
        pos: usize,
        len: usize,
    },
}

/// Daemon side of ImportPaths: an [`AsyncRead`] that asks the client for data with
/// `STDERR_READ 32768` and reads its answer, a string of 1 to 32768 bytes (longer → "string is
/// too long", empty → "unexpected end-of-file", as the C++ `TunnelSource` says). Every answer is
/// read completely, padding included, before any of it is handed out, so the stream is in
/// sync whenever the caller stops reading.
pub struct TunnelSource<'a, S: ?Sized> {
    stream: &'a mut S,
    state: SourceState,
    buf: Vec<u8>,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin + ?Sized> TunnelSource<'a, S> {
    pub fn new(stream: &'a mut S) -> Self {
        TunnelSource { stream, state: SourceState::Idle, buf: Vec::new() }
    }
}

fn proto_io(e: ProtoError) -> io::Error {
    match e {
        ProtoError::Wire(crate::wire::WireError::Eof) => {
            io::Error::new(io::ErrorKind::UnexpectedEof, "unexpected end-of-file")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + ?Sized> AsyncRead for TunnelSource<'_, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match &mut this.state {
                SourceState::Idle => {
                    let mut req = [0u8; 16];
                    req[..8].copy_from_slice(&u64::from(STDERR_READ).to_le_bytes());
                    req[8..].copy_from_slice(&u64::from(TUNNEL_READ_SIZE).to_le_bytes());
                    this.state = SourceState::Requesting { req, pos: 0 };
                }
                SourceState::Requesting { req, pos } => {
                    let rest = req.get(*pos..).unwrap_or_default();
                    if rest.is_empty() {
                        this.state = SourceState::Flushing;
                        continue;
                    }
                    let n = ready!(Pin::new(&mut *this.stream).poll_write(cx, rest))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *pos += n;
                }
                SourceState::Flushing => {
                    ready!(Pin::new(&mut *this.stream).poll_flush(cx))?;
                    this.state = SourceState::Header { word: [0u8; 8], got: 0 };
                }
                SourceState::Header { word, got } => {
                    if *got < 8 {
                        let mut rb = ReadBuf::new(word.get_mut(*got..).unwrap_or_default());
                        ready!(Pin::new(&mut *this.stream).poll_read(cx, &mut rb))?;
                        let n = rb.filled().len();
                        if n == 0 {
                            return Poll::Ready(Err(proto_io(ProtoError::Wire(crate::wire::WireError::Eof))));
                        }
                        *got += n;
                        continue;
                    }
                    let len = int_from_word(u64::from_le_bytes(*word)).map_err(|e| proto_io(e.into()))?;
                    if len == 0 {
                        return Poll::Ready(Err(proto_io(ProtoError::Wire(crate::wire::WireError::Eof))));
                    }
                    if len > TUNNEL_READ_SIZE {
                        return Poll::Ready(Err(proto_io(ProtoError::TunnelStringTooLong)));
                    }
                    let total = len as usize + padding(u64::from(len));
                    this.buf.clear();
                    this.buf.reserve(total);
                    this.state = SourceState::Body { need: len as usize };
                }
                SourceState::Body { need } => {
                    let total = *need + padding(*need as u64);
                    if this.buf.len() < total {
                        let have = this.buf.len();
                        this.buf.resize(total, 0);
                        let mut rb = ReadBuf::new(this.buf.get_mut(have..).unwrap_or_default());
                        let res = Pin::new(&mut *this.stream).poll_read(cx, &mut rb);
                        let n = rb.filled().len();
                        this.buf.truncate(have + n);
                        ready!(res)?;
                        if n == 0 {
                            return Poll::Ready(Err(proto_io(ProtoError::Wire(crate::wire::WireError::Eof))));
                        }
                        continue;
                    }
                    if this.buf.get(*need..).unwrap_or_default().iter().any(|&b| b != 0) {
                        return Poll::Ready(Err(proto_io(crate::wire::WireError::NonZeroPadding.into())));
                    }
                    this.state = SourceState::Serving { pos: 0, len: *need };
                }
                SourceState::Serving { pos, len } => {
                    let avail = this.buf.get(*pos..*len).unwrap_or_default();
                    let n = avail.len().min(out.remaining());
                    out.put_slice(avail.get(..n).unwrap_or_default());
                    *pos += n;
                    if *pos >= *len {
                        this.state = SourceState::Idle;
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// The C++ `TunnelSink` buffer size: ExportPath data comes in `STDERR_WRITE` chunks of at most
/// this many bytes, except a single write at least this large, which passes through whole.
pub const TUNNEL_WRITE_SIZE: usize = 65536;

/// Daemon side of ExportPath: an [`AsyncWrite`] that wraps what is written in `STDERR_WRITE`
/// frames, chunked exactly like the C++ `BufferedSink` (64 KiB buffer, bypassed by writes that
/// would fill it). Call `flush` before `STDERR_LAST`; `shutdown` only flushes, it does not
/// close the connection.
pub struct TunnelSink<'a, W: ?Sized> {
    inner: &'a mut W,
    /// Data not yet framed.
    buf: Vec<u8>,
    /// Framed bytes not yet written to `inner`, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
}

impl<'a, W: AsyncWrite + Unpin + ?Sized> TunnelSink<'a, W> {
    pub fn new(inner: &'a mut W) -> Self {
        TunnelSink { inner, buf: Vec::new(), out: Vec::new(), out_pos: 0 }
    }

    fn frame(&mut self, data: &[u8]) {
        let mut e = Enc { buf: std::mem::take(&mut self.out) };
        e.int(STDERR_WRITE);
        e.bytes(data);
        self.out = e.buf;
    }

    fn frame_buffer(&mut self) {
        if !self.buf.is_empty() {
            let data = std::mem::take(&mut self.buf);
            self.frame(&data);
            self.buf = data;
            self.buf.clear();
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let rest = self.out.get(self.out_pos..).unwrap_or_default();
            let n = ready!(Pin::new(&mut *self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin + ?Sized> AsyncWrite for TunnelSink<'_, W> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.buf.len() + data.len() >= TUNNEL_WRITE_SIZE {
            // BufferedSink: flush what is buffered, then write this data in one piece.
            this.frame_buffer();
            this.frame(data);
        } else {
            this.buf.extend_from_slice(data);
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        this.frame_buffer();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut *this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::test_util::words;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[tokio::test]
    async fn error_frame_matches_trace() {
        let msg = StderrMsg::Error { msg: "path `/tmp/x' is not in the store".into(), status: 1 };
        let mut out = Vec::new();
        write_stderr(&mut out, &msg, 0x164).await.unwrap();
        let want = words(
            "7074786300000000 2100000000000000 7061746820602f74 6d702f7827206973 \
             206e6f7420696e20 7468652073746f72 6500000000000000 0100000000000000",
        );
        assert_eq!(out, want);
        let got = read_stderr(&mut &want[..], 0x164, &Limits::DEFAULT).await.unwrap();
        assert_eq!(got, msg);
        // Minor 7: no status word.
        let mut old = Vec::new();
        write_stderr(&mut old, &msg, 0x107).await.unwrap();
        assert_eq!(old.len(), want.len() - 8);
        let got = read_stderr(&mut &old[..], 0x107, &Limits::DEFAULT).await.unwrap();
        assert_eq!(got, msg);
    }

    #[tokio::test]
    async fn unknown_code() {
        let b = words("0100000000000000");
        let e = read_stderr(&mut &b[..], 0x164, &Limits::DEFAULT).await.unwrap_err();
        assert_eq!(e.to_string(), "invalid error code 1");
    }

    fn arb_msg() -> impl Strategy<Value = StderrMsg> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(StderrMsg::Next),
            any::<u32>().prop_map(StderrMsg::Read),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(StderrMsg::Write),
            Just(StderrMsg::Last),
            ("\\PC{0,40}", 1u32..).prop_map(|(msg, status)| StderrMsg::Error { msg, status }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(m in arb_msg()) {
            let rt = rt();
            let mut out = Vec::new();
            rt.block_on(write_stderr(&mut out, &m, 0x164)).unwrap();
            let got = rt.block_on(read_stderr(&mut &out[..], 0x164, &Limits::DEFAULT)).unwrap();
            prop_assert_eq!(got, m);
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..80), v in 0x100u32..0x170) {
            let rt = rt();
            let _ = rt.block_on(read_stderr(&mut &b[..], v, &Limits::DEFAULT));
        }
    }

    /// Plays the client of a TunnelSource: answers each STDERR_READ with `chunk`-byte strings.
    async fn tunnel_client(mut s: tokio::io::DuplexStream, data: Vec<u8>, chunk: usize) -> Vec<u8> {
        let mut requests = Vec::new();
        let mut off = 0;
        loop {
            let m = read_stderr(&mut s, 0x164, &Limits::DEFAULT).await;
            let Ok(StderrMsg::Read(n)) = m else { break };
            requests.push(n);
            let end = (off + chunk).min(data.len()).min(off + n as usize);
            let mut e = Enc::default();
            e.bytes(&data[off..end]);
            off = end;
            s.write_all(&e.buf).await.unwrap();
        }
        assert!(requests.iter().all(|&n| n == TUNNEL_READ_SIZE));
        data[..off].to_vec()
    }

    #[tokio::test]
    async fn tunnel_source_reads_everything() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in [100, 32768] {
            let (a, mut b) = tokio::io::duplex(1 << 16);
            let client = tokio::spawn(tunnel_client(a, data.clone(), chunk));
            let mut src = TunnelSource::new(&mut b);
            let mut got = vec![0u8; data.len()];
            src.read_exact(&mut got).await.unwrap();
            assert_eq!(got, data);
            // The next read asks again and sees the client answer with an empty string.
            let mut one = [0u8; 1];
            let e = src.read(&mut one).await.unwrap_err();
            assert_eq!(e.to_string(), "unexpected end-of-file");
            drop(b);
            assert_eq!(client.await.unwrap(), data);
        }
    }

    #[tokio::test]
    async fn tunnel_source_rejects_long_answer() {
        let (mut a, mut b) = tokio::io::duplex(1 << 17);
        let mut e = Enc::default();
        e.bytes(&vec![1u8; TUNNEL_READ_SIZE as usize + 1]);
        a.write_all(&e.buf).await.unwrap();
        let mut src = TunnelSource::new(&mut b);
        let mut one = [0u8; 1];
        let err = src.read(&mut one).await.unwrap_err();
        assert_eq!(err.to_string(), "string is too long");
    }

    #[tokio::test]
    async fn tunnel_sink_chunks_like_cxx() {
        // 96 bytes of header, 3 × 64 KiB of contents, a small tail: the chunks the spec saw.
        let mut out = Vec::new();
        {
            let mut sink = TunnelSink::new(&mut out);
            sink.write_all(&[1u8; 96]).await.unwrap();
            for _ in 0..3 {
                sink.write_all(&[2u8; 65536]).await.unwrap();
            }
            sink.write_all(&[3u8; 3496]).await.unwrap();
            sink.flush().await.unwrap();
        }
        let mut r = &out[..];
        let mut sizes = Vec::new();
        loop {
            match read_stderr(&mut r, 0x164, &Limits::DEFAULT).await {
                Ok(StderrMsg::Write(d)) => sizes.push(d.len()),
                Ok(m) => panic!("unexpected {m:?}"),
                Err(e) => {
                    assert!(e.is_eof());
                    break;
                }
            }
        }
        assert_eq!(sizes, [96, 65536, 65536, 65536, 3496]);
    }
}

//! The QueryPathInfo load generator: cheap enough that the figures measure the daemon, strict
//! enough that they cannot come from wrong answers.
//!
//! [`Workload::learn`] encodes every request once (with the worker-protocol encoder) and
//! learns every expected answer once: one real round trip per path, the `STDERR_LAST` word and
//! the reply parsed by the worker-protocol reader, the exact bytes read kept, and checked to
//! re-encode to themselves. [`drive`] then runs all connections from the calling thread with
//! one non-blocking epoll loop: per operation it writes the precomputed request, reads the
//! answer into the connection's reused buffer and compares each chunk with the expected bytes
//! as it arrives. Any difference (an error frame, a different reply, extra bytes, EOF) fails
//! the run. Nothing is allocated per operation; the thread's own CPU time over the timed loop
//! is returned so the generator's cost is a figure too.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use guix_client::DaemonClient;
use guix_formats::store_path::StorePath;
use guix_formats::worker::{
    read_reply, read_stderr, write_reply, write_request, write_stderr, Limits, Opcode, Reply, Request, StderrMsg,
    PROTOCOL_VERSION,
};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::time::{clock_gettime, ClockId};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

type Res<T> = Result<T, String>;

/// How long the loop waits without any connection making progress before it gives up.
const STALL: Duration = Duration::from_secs(10);
/// Longest single `epoll_wait`, so the deadline is noticed on an idle loop.
const WAIT_MS: u16 = 50;

/// One path's request and the exact bytes the daemon answers it with.
struct Op {
    request: Vec<u8>,
    /// `STDERR_LAST` followed by the reply.
    answer: Vec<u8>,
}

/// The requests and expected answers for a set of paths.
pub struct Workload {
    ops: Vec<Op>,
}

/// An `AsyncRead` that keeps a copy of everything read through it.
struct Tee<'a, R> {
    inner: &'a mut R,
    seen: Vec<u8>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Tee<'_, R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.seen.extend_from_slice(buf.filled().get(before..).unwrap_or_default());
        }
        r
    }
}

impl Workload {
    /// Learns the answers to QueryPathInfo for `paths` over `client`'s connection (which is
    /// consumed: from here on the protocol is spoken raw).
    pub async fn learn(client: DaemonClient, paths: &[StorePath]) -> Res<Workload> {
        if paths.is_empty() {
            return Err("no populated paths".into());
        }
        let store = client.store_dir().clone();
        let version = PROTOCOL_VERSION;
        let limits = Limits::DEFAULT;
        let mut stream = client.into_inner();
        let mut ops = Vec::with_capacity(paths.len());
        for p in paths {
            let shown = store.display(p);
            let mut request = Vec::new();
            write_request(&mut request, &Request::QueryPathInfo(p.clone()), &store, version)
                .await
                .map_err(|e| format!("encoding QueryPathInfo {shown}: {e}"))?;
            stream.write_all(&request).await.map_err(|e| format!("sending QueryPathInfo {shown}: {e}"))?;
            let mut tee = Tee { inner: &mut stream, seen: Vec::new() };
            let frame =
                read_stderr(&mut tee, version, &limits).await.map_err(|e| format!("QueryPathInfo {shown}: {e}"))?;
            match frame {
                StderrMsg::Last => {}
                StderrMsg::Error { msg, .. } => return Err(format!("QueryPathInfo {shown}: {msg}")),
                other => return Err(format!("QueryPathInfo {shown}: unexpected frame {other:?} before the reply")),
            }
            let reply = read_reply(&mut tee, Opcode::QueryPathInfo, &store, version, &limits)
                .await
                .map_err(|e| format!("QueryPathInfo {shown}: {e}"))?;
            if !matches!(reply, Reply::PathInfo(_)) {
                return Err(format!("QueryPathInfo {shown}: unexpected reply {reply:?}"));
            }
            // The reader must have consumed exactly the answer, or the timed loop would compare
            // against a truncated one: what it parsed has to re-encode to the bytes it read.
            let mut again = Vec::new();
            write_stderr(&mut again, &StderrMsg::Last, version).await.map_err(|e| e.to_string())?;
            write_reply(&mut again, Opcode::QueryPathInfo, &reply, &store, version).await.map_err(|e| e.to_string())?;
            if again != tee.seen {
                return Err(format!(
                    "QueryPathInfo {shown}: the {} bytes read do not re-encode to themselves ({} bytes)",
                    tee.seen.len(),
                    again.len()
                ));
            }
            ops.push(Op { request, answer: tee.seen });
        }
        Ok(Workload { ops })
    }

    fn get(&self, i: usize) -> &Op {
        // `learn` refuses an empty set, so the modulo is defined and the index in range.
        &self.ops[i % self.ops.len()]
    }
}

/// What one [`drive`] did.
pub struct Driven {
    pub ops: u64,
    pub elapsed: Duration,
    /// CPU time (user + system) of the generator's thread over the timed loop.
    pub client_cpu: Duration,
}

/// Where one connection is in its current operation.
struct Conn<'a> {
    stream: &'a UnixStream,
    /// Index (modulo the workload) of the current operation.
    next: usize,
    sent: usize,
    got: usize,
    buf: Vec<u8>,
    /// Waiting for the socket to take the rest of the request (`EPOLLOUT` registered).
    blocked_on_write: bool,
}

fn thread_cpu() -> Res<Duration> {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_err(|e| format!("clock_gettime: {e}"))?;
    Ok(Duration::from(t))
}

/// The start of `bytes`, printable, for an error message.
fn excerpt(bytes: &[u8]) -> String {
    let shown: String = String::from_utf8_lossy(bytes.get(..bytes.len().min(160)).unwrap_or_default())
        .chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '.' })
        .collect();
    shown
}

impl Conn<'_> {
    /// Writes (the rest of) the current request. `Ok(true)` once it is all sent.
    fn send(&mut self, w: &Workload) -> Res<bool> {
        let req = &w.get(self.next).request;
        while let Some(rest) = req.get(self.sent..).filter(|r| !r.is_empty()) {
            match (&mut &*self.stream).write(rest) {
                Ok(0) => return Err("the daemon closed the connection".into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("sending QueryPathInfo: {e}")),
            }
        }
        Ok(true)
    }

    /// Reads what is there of the answer and checks it. `Ok(true)` once all of it is in.
    fn receive(&mut self, w: &Workload) -> Res<bool> {
        let answer = &w.get(self.next).answer;
        let want = answer.len();
        let before = self.got;
        let Some(room) = self.buf.get_mut(before..want) else { return Err("answer buffer too small".into()) };
        match (&mut &*self.stream).read(room) {
            Ok(0) => return Err("the daemon closed the connection".into()),
            Ok(n) => self.got += n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => return Ok(false),
            Err(e) => return Err(format!("reading the QueryPathInfo answer: {e}")),
        }
        if self.buf.get(before..self.got) != answer.get(before..self.got) {
            return Err(format!(
                "QueryPathInfo answer differs from the learnt one at byte {before}..{}: got `{}'",
                self.got,
                excerpt(self.buf.get(..self.got).unwrap_or_default())
            ));
        }
        Ok(self.got == want)
    }

    /// Moves on to the next operation.
    fn advance(&mut self) {
        self.next = self.next.wrapping_add(1);
        self.sent = 0;
        self.got = 0;
    }
}

/// Runs QueryPathInfo back to back on every connection in `streams` (non-blocking Unix
/// streams, handshake done, nothing pending) from the calling thread for `duration`, then lets
/// the operations in flight finish. Connection `k` starts at path `k * 7919` so they do not
/// all ask for the same path at once.
pub fn drive(streams: &[UnixStream], w: &Workload, duration: Duration) -> Res<Driven> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| format!("epoll_create: {e}"))?;
    let longest = w.ops.iter().map(|o| o.answer.len()).max().unwrap_or(0);
    let mut conns: Vec<Conn<'_>> = streams
        .iter()
        .enumerate()
        .map(|(k, stream)| Conn {
            stream,
            next: k.wrapping_mul(7919),
            sent: 0,
            got: 0,
            buf: vec![0; longest],
            blocked_on_write: false,
        })
        .collect();
    for (k, c) in conns.iter().enumerate() {
        epoll
            .add(c.stream.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, k as u64))
            .map_err(|e| format!("epoll_ctl: {e}"))?;
    }
    let interest = |c: &Conn<'_>, k: usize, out: bool| {
        let flags = if out { EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT } else { EpollFlags::EPOLLIN };
        epoll.modify(c.stream.as_fd(), &mut EpollEvent::new(flags, k as u64)).map_err(|e| format!("epoll_ctl: {e}"))
    };
    let mut events = vec![EpollEvent::empty(); conns.len().clamp(1, 1024)];

    let cpu_start = thread_cpu()?;
    let start = Instant::now();
    let deadline = start + duration;
    for (k, c) in conns.iter_mut().enumerate() {
        if !c.send(w)? {
            c.blocked_on_write = true;
            interest(c, k, true)?;
        }
    }
    let mut done = 0u64;
    let mut in_flight = conns.len();
    let mut stopping = false;
    let mut progress = start;
    while in_flight > 0 {
        let n = match epoll.wait(&mut events, WAIT_MS) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(format!("epoll_wait: {e}")),
        };
        let now = Instant::now();
        stopping |= now >= deadline;
        if n == 0 {
            if now.duration_since(progress) > STALL {
                return Err(format!("no answer for {}s ({in_flight} operations in flight)", STALL.as_secs()));
            }
            continue;
        }
        progress = now;
        for ev in events.get(..n).unwrap_or_default() {
            let k = ev.data() as usize;
            let Some(c) = conns.get_mut(k) else { return Err(format!("epoll returned unknown connection {k}")) };
            if c.blocked_on_write {
                if c.send(w)? {
                    c.blocked_on_write = false;
                    interest(c, k, false)?;
                }
                continue;
            }
            if !c.receive(w)? {
                continue;
            }
            done += 1;
            c.advance();
            if stopping {
                in_flight -= 1;
            } else if !c.send(w)? {
                c.blocked_on_write = true;
                interest(c, k, true)?;
            }
        }
    }
    let elapsed = start.elapsed();
    let client_cpu = thread_cpu()?.saturating_sub(cpu_start);
    // Nothing may follow the last answers: extra bytes would be an answer longer than learnt.
    for c in &mut conns {
        let mut probe = [0u8; 1];
        match (&mut &*c.stream).read(&mut probe) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(0) => return Err("the daemon closed the connection".into()),
            Ok(_) => return Err("the daemon sent more than the learnt QueryPathInfo answer".into()),
            Err(e) => return Err(format!("checking for trailing bytes: {e}")),
        }
    }
    Ok(Driven { ops: done, elapsed, client_cpu })
}

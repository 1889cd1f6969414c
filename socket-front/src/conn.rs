//! One client connection: the handshake, the request loop and its error policy.
//!
//! Each connection is one tokio task owning a [`Conn`]: its id, the peer's credentials and
//! trust, the version the client announced, its [`Settings`], and the stream. Requests are
//! served one after the other (the protocol has no pipelining); a failure is reported as the
//! C++ daemon reports it ([`Failure`]) and never affects another connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use guix_formats::nar;
use guix_formats::worker::{
    put_stderr, read_op, read_request_budgeted, server_handshake, write_reply, write_stderr, Limits, Opcode, PathInfo,
    ProtoError, Reply, Request, StderrMsg,
};
use guix_formats::StoreDir;
use guix_ipc::config::DaemonConfig;
use guix_ipc::store_db::ConnId;
use guix_store::ValidPathInfo;
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;

use crate::backend::{DaemonBackend, StoreBackend};
use crate::build::BuilderLink;
use crate::error::Failure;
use crate::infocache::CachedInfo;
use crate::metrics::Metrics;
use crate::settings::Settings;
use guix_store::scratch::Scratch;

/// Initial capacity of the buffer a reply is encoded into (most replies are a few hundred
/// bytes; larger ones grow it).
const REPLY_BUFFER: usize = 512;

/// How long a handshake waits for store-db to make the client's profile directory.
const PROFILE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What every connection shares. `B` is the store behind the protocol ([`crate::backend`]).
pub struct Shared<B = DaemonBackend> {
    pub config: DaemonConfig,
    pub store: StoreDir,
    pub backend: B,
    /// The builder component (BuildPaths that need a build).
    pub builder: BuilderLink,
    /// The gc component (CollectGarbage, OptimiseStore).
    pub gc: crate::gc::GcLink,
    /// The substituter component (substitute queries, EnsurePath, plain BuildPaths).
    pub substituter: crate::substitute::SubstituterLink,
    pub scratch: Scratch,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub nar_limits: nar::Limits,
    /// The daemon's (the supervisor's) effective uid: a peer with this uid is trusted, like
    /// root. Not socket-front's own uid when it runs as its own user: a process of that user
    /// is nobody to trust.
    pub daemon_uid: u32,
    /// The bytes decoded requests of all connections may hold ([`crate::budget`]).
    pub memory: crate::budget::MemoryPool,
    /// Threads for transfers ([`Conn::blocking`]).
    pub transfers: crate::transfer_pool::TransferPool,
}

/// Who is on the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// From `SO_PEERCRED`; `None` for TCP clients.
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl Peer {
    pub fn is_remote(&self) -> bool {
        self.uid.is_none()
    }
}

/// Anything a connection can run over: a buffered Unix socket, or a buffered pipe in tests.
/// Buffered, so that [`crate::build`] can tell a client that closed its socket from one that
/// sent more bytes without consuming them (`fill_buf`).
pub trait Stream: AsyncBufRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncBufRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

pub struct Conn<S, B = DaemonBackend> {
    pub(crate) shared: Arc<Shared<B>>,
    pub(crate) id: ConnId,
    pub(crate) peer: Peer,
    pub(crate) trusted: bool,
    pub(crate) version: u32,
    pub(crate) settings: Settings,
    /// The store items whose `@ download-started` or `@ download-progress` trace this client
    /// was sent and whose `@ download-succeeded` it was not (see
    /// [`crate::substitute::DownloadTraces`]).
    pub(crate) downloads: crate::substitute::DownloadTraces,
    /// `None` only while a blocking thread has it (see [`Conn::blocking`]).
    stream: Option<S>,
    /// While a job's events are shown ([`Conn::run_job`]): STDERR frames encoded and not yet
    /// written ([`Conn::send`]), written together once no further event is ready.
    held: Option<Vec<u8>>,
}

/// Held frames are written once they reach this size, whatever follows.
const HELD_MAX: usize = 64 << 10;

/// Serves one connection to its end. Never panics on input; every outcome is logged by the
/// caller's metrics.
pub async fn serve<S: Stream, B: StoreBackend>(shared: Arc<Shared<B>>, id: ConnId, peer: Peer, stream: S) {
    shared.metrics.connection_opened();
    shared.backend.open_connection(id);
    let trusted = peer.uid.is_some_and(|u| u == 0 || u == shared.daemon_uid);
    let settings = Settings::new(&shared.config);
    let mut conn = Conn {
        shared: shared.clone(),
        id,
        peer,
        trusted,
        version: 0,
        settings,
        downloads: Default::default(),
        stream: Some(stream),
        held: None,
    };
    if let Err(why) = conn.run().await {
        if shared.config.debug {
            eprintln!("guix-socket-front: connection {id:x} ended: {why}");
        }
    }
    shared.backend.close_connection(id).await;
    shared.metrics.connection_closed();
}

/// What an operation answers.
enum Answer {
    Reply(Reply),
    /// QueryPathInfo's answer, with its encoded reply once one connection encoded it.
    PathInfo(Arc<CachedInfo>),
}

/// The QueryPathInfo reply for `info`.
pub(crate) fn path_info_reply(info: &ValidPathInfo) -> PathInfo {
    PathInfo {
        deriver: info.deriver.clone(),
        nar_hash: info.nar_hash,
        references: info.references.clone(),
        // `writeInt(time_t)`: truncated to 32 bits.
        registration_time: info.registration_time as u32,
        nar_size: info.nar_size.unwrap_or(0),
    }
}

/// The C++ daemon's message levels (`Verbosity`) above `lvlError`, for [`Conn::log_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Info = 1,
}

impl<S: Stream, B: StoreBackend> Conn<S, B> {
    pub(crate) fn stream(&mut self) -> Result<&mut S, Failure> {
        self.stream.as_mut().ok_or_else(|| Failure::Gone("stream lost by a failed transfer".into()))
    }

    /// Sends one STDERR frame. A write failure means the client is gone.
    pub(crate) async fn send(&mut self, msg: &StderrMsg) -> Result<(), Failure> {
        let version = self.version;
        if let Some(held) = &mut self.held {
            put_stderr(held, msg, version);
            if held.len() >= HELD_MAX {
                self.write_held().await?;
            }
            return Ok(());
        }
        let s = self.stream()?;
        write_stderr(s, msg, version).await.map_err(|e| Failure::Gone(e.to_string()))
    }

    /// From now on [`Conn::send`] holds its frames until [`Conn::write_held`] (one write for
    /// many: a collection's 50,000 progress lines were 50,000 writes and as many wakeups of
    /// the client).
    pub(crate) fn hold_frames(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// Writes the held frames (and goes on holding).
    pub(crate) async fn write_held(&mut self) -> Result<(), Failure> {
        let Some(held) = self.held.as_mut().filter(|h| !h.is_empty()) else { return Ok(()) };
        let bytes = std::mem::take(held);
        let s = self.stream()?;
        s.write_all(&bytes).await.map_err(|e| Failure::Gone(e.to_string()))?;
        s.flush().await.map_err(|e| Failure::Gone(e.to_string()))?;
        if let Some(h) = &mut self.held {
            // Keep the allocation for the next frames.
            *h = bytes;
            h.clear();
        }
        Ok(())
    }

    /// Writes the held frames and stops holding.
    pub(crate) async fn release_frames(&mut self) -> Result<(), Failure> {
        let res = self.write_held().await;
        self.held = None;
        res
    }

    /// `STDERR_NEXT` with a log line the C++ daemon prints at `lvlError`: always sent.
    pub(crate) async fn log(&mut self, line: &str) -> Result<(), Failure> {
        self.send(&StderrMsg::Next(format!("{line}\n").into_bytes())).await
    }

    /// `STDERR_NEXT` with a log line the C++ daemon prints at `level`: as `printMsg`, sent only
    /// when the client asked for that much with SetOptions' verbosity.
    pub(crate) async fn log_at(&mut self, level: Level, line: &str) -> Result<(), Failure> {
        if self.settings.verbosity < level as u32 {
            return Ok(());
        }
        self.log(line).await
    }

    /// Sends messages made away from the connection (deduplication's), each as `printMsg`
    /// at its level would.
    pub(crate) async fn log_messages(&mut self, msgs: Vec<(u32, String)>) -> Result<(), Failure> {
        for (level, line) in msgs {
            if self.settings.verbosity >= level {
                self.log(&line).await?;
            }
        }
        Ok(())
    }

    /// Runs the transfer `f` on a thread of the transfer pool ([`crate::transfer_pool`]) with
    /// the stream (bridged with [`crate::bridge`]), and takes the stream back. If the pool has
    /// no slot in time, the thread dies, or the client was silent past the idle limit, the
    /// connection is closed (what `f` left behind, such as a scratch item, is dropped with it).
    pub(crate) async fn blocking<T, F>(&mut self, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut S, Handle) -> T + Send + 'static,
    {
        let slot = self.shared.transfers.slot().await?;
        let mut s = self.stream.take().ok_or_else(|| Failure::Gone("stream lost".into()))?;
        let h = Handle::current();
        let ((s, r), idled) = slot
            .run(move || {
                let r = f(&mut s, h);
                (s, r)
            })
            .await?;
        if idled {
            let idle = self.shared.transfers.idle().as_secs_f64();
            return Err(Failure::Gone(format!("client silent for {idle} s in the middle of a transfer")));
        }
        self.stream = Some(s);
        Ok(r)
    }

    async fn run(&mut self) -> Result<(), Failure> {
        // Handshake errors end the connection without a frame, as in C++.
        let hello = server_handshake(self.stream()?).await.map_err(|e| Failure::Gone(e.to_string()))?;
        self.version = hello.version;
        // startWork: open the store, create the per-user profile directory.
        if let Err(msg) = self.create_user().await {
            self.send(&StderrMsg::Error { msg, status: 1 }).await?;
            return Ok(());
        }
        self.send(&StderrMsg::Last).await?;
        loop {
            let op = match read_op(self.stream()?).await {
                Ok(None) => return Ok(()),
                Ok(Some(op)) => op,
                Err(e @ ProtoError::InvalidOperation(_)) => {
                    self.send(&StderrMsg::Error { msg: e.to_string(), status: 1 }).await?;
                    return Ok(());
                }
                // A high half in the opcode word or a broken stream: closed without a frame.
                Err(e) => return Err(Failure::Gone(e.to_string())),
            };
            let start = Instant::now();
            // Boxed: the operation's future is large (the biggest of all operations), and
            // inline it would make every idle connection's task that large too.
            let res = Box::pin(self.perform(op)).await;
            self.shared.metrics.op_done(op, res.is_ok(), start.elapsed());
            match res {
                Ok(Answer::Reply(reply)) => {
                    let out = self.encode(op, &reply).await?;
                    self.send_encoded(&out).await?;
                }
                Ok(Answer::PathInfo(entry)) => match entry.encoded() {
                    Some(out) => self.send_encoded(out).await?,
                    None => {
                        let out = self.encode(op, &Reply::PathInfo(path_info_reply(&entry.info))).await?;
                        self.send_encoded(&out).await?;
                        entry.keep_encoded(out);
                    }
                },
                Err(Failure::Op(msg)) => self.send(&StderrMsg::Error { msg, status: 1 }).await?,
                Err(Failure::Status { msg, status }) => self.send(&StderrMsg::Error { msg, status }).await?,
                Err(Failure::Fatal(msg)) => {
                    self.send(&StderrMsg::Error { msg, status: 1 }).await?;
                    return Ok(());
                }
                Err(gone @ Failure::Gone(_)) => return Err(gone),
            }
        }
    }

    /// `STDERR_LAST` and the reply to `op`, encoded: they leave in one write, as the C++
    /// daemon's buffered sink sends them.
    async fn encode(&self, op: Opcode, reply: &Reply) -> Result<Vec<u8>, Failure> {
        let mut out = Vec::with_capacity(REPLY_BUFFER);
        write_stderr(&mut out, &StderrMsg::Last, self.version).await.map_err(|e| Failure::Gone(e.to_string()))?;
        write_reply(&mut out, op, reply, &self.shared.store, self.version)
            .await
            .map_err(|e| Failure::Gone(e.to_string()))?;
        Ok(out)
    }

    async fn send_encoded(&mut self, out: &[u8]) -> Result<(), Failure> {
        let s = self.stream()?;
        s.write_all(out).await.map_err(|e| Failure::Gone(e.to_string()))?;
        s.flush().await.map_err(|e| Failure::Gone(e.to_string()))
    }

    /// `createUser`: `<state>/profiles/per-user/<name>`, owned by the user, mode 0755. Made by
    /// store-db (socket-front is not root); asked for only when it is not there like that.
    async fn create_user(&mut self) -> Result<(), String> {
        let Some(uid) = self.peer.uid else { return Ok(()) };
        let per_user: PathBuf = self.shared.config.paths.state_dir.join("profiles/per-user");
        let needed = tokio::task::spawn_blocking(move || {
            let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten();
            // No such user (C++ logs "user with UID … not found" and carries on), or a name
            // store-db will not make a directory for: nothing to do.
            let Some(user) = user.filter(|u| !u.name.is_empty() && !u.name.contains('/') && !u.name.starts_with('.'))
            else {
                return false;
            };
            use std::os::unix::fs::MetadataExt;
            let md = std::fs::symlink_metadata(per_user.join(&user.name));
            !md.is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o7777 == 0o755)
        })
        .await
        .map_err(|e| e.to_string())?;
        if !needed {
            return Ok(());
        }
        // Asked of store-db, which may be restarting: the handshake waits for it only a
        // little ([`PROFILE_WAIT`]), so clients still connect and read while store-db is
        // down; the directory is made as soon as it is back.
        let shared = self.shared.clone();
        let task = tokio::spawn(async move { shared.backend.ensure_user_profile(uid).await });
        match tokio::time::timeout(PROFILE_WAIT, task).await {
            Ok(Ok(r)) => r.map_err(|f| f.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                eprintln!("guix-socket-front: the profile directory of uid {uid} is still being made; going on");
                Ok(())
            }
        }
    }

    async fn perform(&mut self, op: Opcode) -> Result<Answer, Failure> {
        match op {
            Opcode::AddToStore => self.add_to_store().await.map(Answer::Reply),
            Opcode::CollectGarbage if self.peer.is_remote() => {
                Err(Failure::fatal("Garbage collection is disabled for remote hosts."))
            }
            _ => {
                let (store, version, limits) = (self.shared.store.clone(), self.version, self.shared.limits);
                // Held until the request is answered: its bytes are the request's.
                let mut grant = self.shared.memory.request();
                let stream = self.stream()?;
                let req = read_request_budgeted(stream, op, &store, version, &limits, &mut grant).await?;
                match req {
                    // The hottest query: its reply may be ready-encoded in the cache.
                    Request::QueryPathInfo(p) => self.shared.backend.path_info(&p).map(Answer::PathInfo),
                    req => self.handle(req).await.map(Answer::Reply),
                }
            }
        }
    }
}

//! An async (tokio) client of the Guix daemon, speaking the worker protocol 0x164 through
//! [`guix_formats::worker`].
//!
//! This crate owns one thing: driving a single daemon connection the way the reference Guile
//! client (`guix/store.scm`) does. [`DaemonClient::connect`] performs the same handshake
//! (version 0x164, no CPU affinity, reserve space), each operation is one method that writes
//! the request, consumes the STDERR stream up to `STDERR_LAST` and decodes the typed reply.
//!
//! * `STDERR_NEXT` log output goes to the connection's [`LogSink`] (discarded by default).
//! * `STDERR_ERROR` becomes [`ClientError::Daemon`] carrying the daemon's message and status.
//!   The daemon keeps the connection open after errors raised while working (most of them)
//!   and closes it after errors raised while reading a request; in the latter case the next
//!   call fails with an end-of-file.
//! * `STDERR_WRITE` data (ExportPath) is copied into a caller-supplied [`AsyncWrite`];
//!   `STDERR_READ` requests (ImportPaths) are answered from a caller-supplied [`AsyncRead`].
//! * AddToStore streams the NAR of a host path straight onto the socket, never holding it in
//!   memory.
//!
//! A framing or I/O error leaves the stream at an unknown position; the client then refuses
//! further calls with [`ClientError::Broken`] instead of misreading the next reply.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use guix_formats::hash::{Hash, HashAlgo};
use guix_formats::store_path::{StoreDir, StorePath};
use guix_formats::wire::put_bytes;
use guix_formats::worker::request::GcOptions;
use guix_formats::worker::{
    client_handshake, read_reply, read_stderr, write_request, ClientHello, Limits, Opcode, ProtoError, Reply, Request,
    StderrMsg, PROTOCOL_VERSION,
};

pub use guix_formats::worker::request::GcAction;
pub use guix_formats::worker::{BuildMode, DerivedPath, PathInfo, SetOptions, SubstitutablePathInfo};

/// The socket the Guile client uses when `GUIX_DAEMON_SOCKET` is not set.
pub const DEFAULT_SOCKET: &str = "/var/guix/daemon-socket/socket";

/// Errors of a client call.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to the daemon at `{path}': {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon reported a failure with `STDERR_ERROR`.
    #[error("{message}")]
    Daemon { message: String, status: u32 },
    /// Framing, decoding or I/O on the daemon socket.
    #[error("daemon protocol: {0}")]
    Protocol(#[from] ProtoError),
    /// Reading a host file for AddToStore failed (the connection is unusable afterwards: the
    /// daemon got a truncated archive).
    #[error("archiving `{path}': {source}")]
    Nar {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing ExportPath data to the caller's sink, or reading ImportPaths data from the
    /// caller's source, failed.
    #[error("{what}: {source}")]
    Transfer {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The daemon sent a STDERR frame the current operation cannot use.
    #[error("unexpected {frame} from the daemon during {op}")]
    UnexpectedFrame { op: &'static str, frame: &'static str },
    /// A reply of the wrong shape (cannot happen with `read_reply`; kept instead of a panic).
    #[error("unexpected reply to {0}")]
    UnexpectedReply(Opcode),
    /// An earlier error left the connection in an unknown state.
    #[error("the daemon connection is unusable after an earlier error")]
    Broken,
}

impl ClientError {
    /// Whether this is an error the daemon reported (as opposed to a local or transport one).
    pub fn daemon_message(&self) -> Option<&str> {
        match self {
            ClientError::Daemon { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Whether the connection may still be used after this error.
    fn keeps_connection(&self) -> bool {
        matches!(self, ClientError::Daemon { .. })
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A log callback.
pub type LogFn = Box<dyn FnMut(&[u8]) + Send>;

/// Where `STDERR_NEXT` log output goes.
pub enum LogSink {
    Discard,
    /// The process's standard error, as the Guile client's `current-build-output-port`.
    Stderr,
    /// A callback receiving each chunk as sent.
    Func(LogFn),
}

impl LogSink {
    fn write(&mut self, chunk: &[u8]) {
        match self {
            LogSink::Discard => {}
            LogSink::Stderr => {
                let _ = io::stderr().write_all(chunk);
            }
            LogSink::Func(f) => f(chunk),
        }
    }
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogSink::Discard => "Discard",
            LogSink::Stderr => "Stderr",
            LogSink::Func(_) => "Func",
        })
    }
}

/// What a CollectGarbage call returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcResult {
    /// Deleted paths (or the live/dead set for the `Return*` actions): plain strings, since
    /// dead sets include store entries that are not store paths (`…lock`, `trash`).
    pub paths: BTreeSet<String>,
    pub bytes_freed: u64,
}

/// Upper bound on one answer to `STDERR_READ` (the daemon asks for 32 KiB).
const MAX_READ_ANSWER: usize = 1 << 20;
/// Chunk size of the AddToStore NAR stream.
const NAR_CHUNK: usize = 64 * 1024;

/// The data channel of the current operation.
enum Data<'a> {
    None,
    /// ExportPath: `STDERR_WRITE` payloads go here.
    Sink(&'a mut (dyn AsyncWrite + Unpin + Send)),
    /// ImportPaths: `STDERR_READ` requests are answered from here.
    Source(&'a mut (dyn AsyncRead + Unpin + Send)),
}

/// One connection to the daemon.
pub struct DaemonClient<S = UnixStream> {
    stream: BufStream<S>,
    store: StoreDir,
    /// The version we announced (governs what the daemon sends).
    version: u32,
    server_version: u32,
    limits: Limits,
    log: LogSink,
    broken: bool,
}

impl<S> std::fmt::Debug for DaemonClient<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonClient")
            .field("store", &self.store.as_str())
            .field("server_version", &format_args!("{:#x}", self.server_version))
            .field("broken", &self.broken)
            .finish()
    }
}

impl DaemonClient<UnixStream> {
    /// Connects to the daemon socket at `path` and performs the handshake.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let stream =
            UnixStream::connect(path).await.map_err(|source| ClientError::Connect { path: path.to_owned(), source })?;
        DaemonClient::handshake(stream).await
    }

    /// Connects to `$GUIX_DAEMON_SOCKET`, or [`DEFAULT_SOCKET`] when unset.
    pub async fn connect_default() -> Result<Self> {
        let path = std::env::var_os("GUIX_DAEMON_SOCKET").map(PathBuf::from);
        DaemonClient::connect(path.as_deref().unwrap_or(Path::new(DEFAULT_SOCKET))).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> DaemonClient<S> {
    /// Performs the handshake on an established stream, as the Guile client's
    /// `open-connection` does: magic, version 0x164, no CPU affinity, reserve space, then the
    /// STDERR stream up to `STDERR_LAST`.
    pub async fn handshake(stream: S) -> Result<Self> {
        let mut client = DaemonClient {
            stream: BufStream::new(stream),
            store: StoreDir::default(),
            version: PROTOCOL_VERSION,
            server_version: 0,
            limits: Limits::DEFAULT,
            log: LogSink::Discard,
            broken: false,
        };
        let hello = ClientHello { version: PROTOCOL_VERSION, affinity: None, reserve_space: true };
        let server = client_handshake(&mut client.stream, &hello).await?;
        client.server_version = server.version;
        client.process_stderr("handshake", Data::None).await?;
        Ok(client)
    }

    /// The store directory paths are printed and parsed against (`/gnu/store`).
    pub fn store_dir(&self) -> &StoreDir {
        &self.store
    }

    /// The protocol version the daemon announced.
    pub fn server_version(&self) -> u32 {
        self.server_version
    }

    /// Where `STDERR_NEXT` output goes from now on.
    pub fn set_log_sink(&mut self, sink: LogSink) {
        self.log = sink;
    }

    /// Limits applied to what the daemon sends.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Whether an earlier transport error made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Gives the stream back, for callers that speak the protocol raw from here on (tests,
    /// the benchmark's load generator). Between operations nothing is left in the buffers, so
    /// no byte is lost.
    pub fn into_inner(self) -> S {
        self.stream.into_inner()
    }

    fn check_usable(&self) -> Result<()> {
        if self.broken {
            Err(ClientError::Broken)
        } else {
            Ok(())
        }
    }

    /// Marks the connection broken unless the error leaves it in sync.
    fn poison<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if !e.keeps_connection() {
                self.broken = true;
            }
        }
        r
    }

    /// Reads STDERR frames up to the terminator, routing log output and data.
    async fn process_stderr(&mut self, op: &'static str, mut data: Data<'_>) -> Result<()> {
        loop {
            let msg = read_stderr(&mut self.stream, self.version, &self.limits).await?;
            match msg {
                StderrMsg::Next(chunk) => self.log.write(&chunk),
                StderrMsg::Last => return Ok(()),
                StderrMsg::Error { msg, status } => return Err(ClientError::Daemon { message: msg, status }),
                StderrMsg::Write(chunk) => match &mut data {
                    Data::Sink(sink) => sink
                        .write_all(&chunk)
                        .await
                        .map_err(|source| ClientError::Transfer { what: "writing exported data", source })?,
                    _ => return Err(ClientError::UnexpectedFrame { op, frame: "STDERR_WRITE" }),
                },
                StderrMsg::Read(n) => match &mut data {
                    Data::Source(source) => {
                        let want = (n as usize).min(MAX_READ_ANSWER);
                        let mut buf = vec![0u8; want];
                        let got = source
                            .read(&mut buf)
                            .await
                            .map_err(|source| ClientError::Transfer { what: "reading data to import", source })?;
                        let mut frame = Vec::with_capacity(got + 16);
                        put_bytes(&mut frame, buf.get(..got).unwrap_or_default());
                        self.stream.write_all(&frame).await.map_err(ProtoError::from)?;
                        self.stream.flush().await.map_err(ProtoError::from)?;
                    }
                    _ => return Err(ClientError::UnexpectedFrame { op, frame: "STDERR_READ" }),
                },
            }
        }
    }

    /// One complete operation: request, STDERR stream, reply.
    async fn call(&mut self, req: &Request, data: Data<'_>) -> Result<Reply> {
        self.check_usable()?;
        let r = self.call_inner(req, data).await;
        self.poison(r)
    }

    async fn call_inner(&mut self, req: &Request, data: Data<'_>) -> Result<Reply> {
        let op = req.opcode();
        write_request(&mut self.stream, req, &self.store, self.version).await?;
        self.process_stderr(op_name(op), data).await?;
        Ok(read_reply(&mut self.stream, op, &self.store, self.version, &self.limits).await?)
    }

    async fn call_plain(&mut self, req: Request) -> Result<Reply> {
        self.call(&req, Data::None).await
    }

    /// SetOptions (19).
    pub async fn set_options(&mut self, options: &SetOptions) -> Result<()> {
        match self.call_plain(Request::SetOptions(options.clone())).await? {
            Reply::Nothing => Ok(()),
            _ => Err(ClientError::UnexpectedReply(Opcode::SetOptions)),
        }
    }

    /// IsValidPath (1). Takes any string, as the daemon checks it is a store path only after
    /// starting work (a non-store path is a recoverable daemon error).
    pub async fn is_valid_path(&mut self, path: &str) -> Result<bool> {
        match self.call_plain(Request::IsValidPath(path.to_owned())).await? {
            Reply::Bool(b) => Ok(b),
            _ => Err(ClientError::UnexpectedReply(Opcode::IsValidPath)),
        }
    }

    /// QueryValidPaths (31): the valid subset.
    pub async fn query_valid_paths(&mut self, paths: &BTreeSet<StorePath>) -> Result<BTreeSet<StorePath>> {
        self.paths_reply(Request::QueryValidPaths(paths.clone())).await
    }

    /// QueryPathInfo (26). `None` when the daemon says "path `P' is not valid" (the Guile
    /// client's `query-path-info*` maps that error to `#f`); other errors pass through.
    pub async fn query_path_info(&mut self, path: &StorePath) -> Result<Option<PathInfo>> {
        match self.call_plain(Request::QueryPathInfo(path.clone())).await {
            Ok(Reply::PathInfo(info)) => Ok(Some(info)),
            Ok(_) => Err(ClientError::UnexpectedReply(Opcode::QueryPathInfo)),
            Err(ClientError::Daemon { message, .. })
                if message == format!("path `{}' is not valid", self.store.display(path)) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// QueryPathHash (4): SHA-256 of the path's NAR.
    pub async fn query_path_hash(&mut self, path: &StorePath) -> Result<Hash> {
        match self.call_plain(Request::QueryPathHash(path.clone())).await? {
            Reply::Hash(h) => Ok(h),
            _ => Err(ClientError::UnexpectedReply(Opcode::QueryPathHash)),
        }
    }

    /// QueryReferences (5).
    pub async fn query_references(&mut self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.paths_reply(Request::QueryReferences(path.clone())).await
    }

    /// QueryReferrers (6).
    pub async fn query_referrers(&mut self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.paths_reply(Request::QueryReferrers(path.clone())).await
    }

    /// QueryDeriver (18).
    pub async fn query_deriver(&mut self, path: &StorePath) -> Result<Option<StorePath>> {
        self.opt_path_reply(Request::QueryDeriver(path.clone())).await
    }

    /// QueryValidDerivers (33).
    pub async fn query_valid_derivers(&mut self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.paths_reply(Request::QueryValidDerivers(path.clone())).await
    }

    /// QueryDerivationOutputs (22): the output paths of a derivation.
    pub async fn query_derivation_outputs(&mut self, drv: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.paths_reply(Request::QueryDerivationOutputs(drv.clone())).await
    }

    /// QueryDerivationOutputNames (28).
    pub async fn query_derivation_output_names(&mut self, drv: &StorePath) -> Result<Vec<String>> {
        self.strings_reply(Request::QueryDerivationOutputNames(drv.clone())).await
    }

    /// QueryPathFromHashPart (29). The daemon refuses hash parts that are not 32 characters.
    pub async fn query_path_from_hash_part(&mut self, hash_part: &str) -> Result<Option<StorePath>> {
        self.opt_path_reply(Request::QueryPathFromHashPart(hash_part.to_owned())).await
    }

    /// QueryAllValidPaths (23).
    pub async fn query_all_valid_paths(&mut self) -> Result<BTreeSet<StorePath>> {
        self.paths_reply(Request::QueryAllValidPaths).await
    }

    /// AddTextToStore (8): a text item with the given references.
    pub async fn add_text_to_store(
        &mut self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath> {
        let req = Request::AddTextToStore {
            name: name.to_owned(),
            contents: contents.to_vec(),
            references: references.clone(),
        };
        self.path_reply(req).await
    }

    /// AddToStore (7): adds the host file or tree at `source` under `name`, as Guile's
    /// `add-to-store` does (fixed = 1). `recursive`: the NAR of `source` is hashed (a directory
    /// tree, or a file keeping its executable bit); otherwise `source` must be a regular file
    /// and its contents are hashed with `algo`. The NAR is streamed from disk to the socket.
    pub async fn add_to_store(
        &mut self,
        name: &str,
        source: &Path,
        recursive: bool,
        algo: HashAlgo,
    ) -> Result<StorePath> {
        self.check_usable()?;
        let r = self.add_to_store_inner(name, source, recursive, algo).await;
        self.poison(r)
    }

    async fn add_to_store_inner(
        &mut self,
        name: &str,
        source: &Path,
        recursive: bool,
        algo: HashAlgo,
    ) -> Result<StorePath> {
        let req =
            Request::AddToStore { name: name.to_owned(), fixed: true, recursive, hash_algo: algo.name().to_owned() };
        write_request(&mut self.stream, &req, &self.store, self.version).await?;

        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let src = source.to_owned();
        let dumper = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter { tx, buf: Vec::with_capacity(NAR_CHUNK) };
            guix_formats::nar::dump_path_to(&src, &mut w).map_err(io::Error::other)?;
            w.send_buf()
        });
        let mut send_err = None;
        while let Some(chunk) = rx.recv().await {
            if let Err(e) = self.stream.write_all(&chunk).await {
                send_err = Some(e);
                break;
            }
        }
        // Closing the receiver stops a dumper still blocked on a full channel.
        drop(rx);
        let dumped = dumper.await.unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        if let Some(e) = send_err {
            // The daemon may have refused the archive and closed: its message explains more
            // than our EPIPE does.
            return match self.process_stderr("AddToStore", Data::None).await {
                Err(daemon @ ClientError::Daemon { .. }) => {
                    self.broken = true;
                    Err(daemon)
                }
                _ => Err(ProtoError::from(e).into()),
            };
        }
        if let Err(source_err) = dumped {
            // The daemon got a truncated archive: the stream is out of sync for good.
            self.broken = true;
            return Err(ClientError::Nar { path: source.to_owned(), source: source_err });
        }
        self.stream.flush().await.map_err(ProtoError::from)?;
        self.process_stderr("AddToStore", Data::None).await?;
        match read_reply(&mut self.stream, Opcode::AddToStore, &self.store, self.version, &self.limits).await? {
            Reply::Path(p) => Ok(p),
            _ => Err(ClientError::UnexpectedReply(Opcode::AddToStore)),
        }
    }

    /// ExportPath (16): writes the export record of `path` (NAR, "NIXE", path, references,
    /// deriver, signature flag and signature) to `sink`, as sent in `STDERR_WRITE` frames.
    /// Guile's `export-paths` wraps each record in `u64 1 … u64 0`; this writes the bare record.
    pub async fn export_path<W>(&mut self, path: &StorePath, sign: bool, sink: &mut W) -> Result<()>
    where
        W: AsyncWrite + Unpin + Send,
    {
        match self.call(&Request::ExportPath { path: path.clone(), sign }, Data::Sink(sink)).await? {
            Reply::Done => {}
            _ => return Err(ClientError::UnexpectedReply(Opcode::ExportPath)),
        }
        sink.flush().await.map_err(|source| ClientError::Transfer { what: "writing exported data", source })
    }

    /// ImportPaths (27): feeds `source` (a `u64 1 record … u64 0` stream, as `export-paths`
    /// writes) to the daemon on its `STDERR_READ` requests; returns the imported paths.
    pub async fn import_paths<R>(&mut self, source: &mut R) -> Result<Vec<StorePath>>
    where
        R: AsyncRead + Unpin + Send,
    {
        match self.call(&Request::ImportPaths, Data::Source(source)).await? {
            Reply::PathList(v) => Ok(v),
            _ => Err(ClientError::UnexpectedReply(Opcode::ImportPaths)),
        }
    }

    /// AddTempRoot (11): protects `path` from the GC until this connection closes.
    pub async fn add_temp_root(&mut self, path: &StorePath) -> Result<()> {
        self.done_reply(Request::AddTempRoot(path.clone())).await
    }

    /// AddIndirectRoot (12): registers the symlink `link` (made absolute by the daemon) as a
    /// GC root.
    pub async fn add_indirect_root(&mut self, link: &str) -> Result<()> {
        self.done_reply(Request::AddIndirectRoot(link.to_owned())).await
    }

    /// SyncWithGC (13).
    pub async fn sync_with_gc(&mut self) -> Result<()> {
        self.done_reply(Request::SyncWithGC).await
    }

    /// FindRoots (14): (link, target) pairs sorted by link.
    pub async fn find_roots(&mut self) -> Result<Vec<(String, String)>> {
        match self.call_plain(Request::FindRoots).await? {
            Reply::Roots(r) => Ok(r),
            _ => Err(ClientError::UnexpectedReply(Opcode::FindRoots)),
        }
    }

    /// BuildPaths (9).
    pub async fn build_paths(&mut self, paths: &[DerivedPath], mode: BuildMode) -> Result<()> {
        self.done_reply(Request::BuildPaths { paths: paths.to_vec(), mode }).await
    }

    /// QueryFailedPaths (24).
    pub async fn query_failed_paths(&mut self) -> Result<BTreeSet<StorePath>> {
        self.paths_reply(Request::QueryFailedPaths).await
    }

    /// ClearFailedPaths (25).
    pub async fn clear_failed_paths(&mut self, paths: &BTreeSet<StorePath>) -> Result<()> {
        let strings = paths.iter().map(|p| self.store.display(p)).collect();
        self.done_reply(Request::ClearFailedPaths(strings)).await
    }

    /// BuiltinBuilders (80): e.g. `["download", "git-download"]`.
    pub async fn builtin_builders(&mut self) -> Result<Vec<String>> {
        self.strings_reply(Request::BuiltinBuilders).await
    }

    /// SubstituteURLs (81).
    pub async fn substitute_urls(&mut self) -> Result<Vec<String>> {
        self.strings_reply(Request::SubstituteURLs).await
    }

    /// HasSubstitutes (3).
    pub async fn has_substitutes(&mut self, path: &StorePath) -> Result<bool> {
        match self.call_plain(Request::HasSubstitutes(path.clone())).await? {
            Reply::Bool(b) => Ok(b),
            _ => Err(ClientError::UnexpectedReply(Opcode::HasSubstitutes)),
        }
    }

    /// QuerySubstitutablePaths (32).
    pub async fn query_substitutable_paths(&mut self, paths: &BTreeSet<StorePath>) -> Result<BTreeSet<StorePath>> {
        self.paths_reply(Request::QuerySubstitutablePaths(paths.clone())).await
    }

    /// QuerySubstitutablePathInfos (30).
    pub async fn query_substitutable_path_infos(
        &mut self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<std::collections::BTreeMap<StorePath, SubstitutablePathInfo>> {
        match self.call_plain(Request::QuerySubstitutablePathInfos(paths.clone())).await? {
            Reply::QuerySubstitutablePathInfos(m) => Ok(m),
            _ => Err(ClientError::UnexpectedReply(Opcode::QuerySubstitutablePathInfos)),
        }
    }

    /// CollectGarbage (20). `max_freed = u64::MAX` means no limit (Guile's default).
    pub async fn collect_garbage(&mut self, options: &GcOptions) -> Result<GcResult> {
        match self.call_plain(Request::CollectGarbage(options.clone())).await? {
            Reply::CollectGarbage { paths, bytes_freed } => Ok(GcResult { paths, bytes_freed }),
            _ => Err(ClientError::UnexpectedReply(Opcode::CollectGarbage)),
        }
    }

    /// VerifyStore (35): whether errors remain.
    pub async fn verify_store(&mut self, check_contents: bool, repair: bool) -> Result<bool> {
        match self.call_plain(Request::VerifyStore { check_contents, repair }).await? {
            Reply::Bool(b) => Ok(b),
            _ => Err(ClientError::UnexpectedReply(Opcode::VerifyStore)),
        }
    }

    /// OptimiseStore (34).
    pub async fn optimise_store(&mut self) -> Result<()> {
        self.done_reply(Request::OptimiseStore).await
    }

    async fn done_reply(&mut self, req: Request) -> Result<()> {
        let op = req.opcode();
        match self.call_plain(req).await? {
            Reply::Done => Ok(()),
            _ => Err(ClientError::UnexpectedReply(op)),
        }
    }

    async fn path_reply(&mut self, req: Request) -> Result<StorePath> {
        let op = req.opcode();
        match self.call_plain(req).await? {
            Reply::Path(p) => Ok(p),
            _ => Err(ClientError::UnexpectedReply(op)),
        }
    }

    async fn opt_path_reply(&mut self, req: Request) -> Result<Option<StorePath>> {
        let op = req.opcode();
        match self.call_plain(req).await? {
            Reply::OptPath(p) => Ok(p),
            _ => Err(ClientError::UnexpectedReply(op)),
        }
    }

    async fn paths_reply(&mut self, req: Request) -> Result<BTreeSet<StorePath>> {
        let op = req.opcode();
        match self.call_plain(req).await? {
            Reply::Paths(p) => Ok(p),
            _ => Err(ClientError::UnexpectedReply(op)),
        }
    }

    async fn strings_reply(&mut self, req: Request) -> Result<Vec<String>> {
        let op = req.opcode();
        match self.call_plain(req).await? {
            Reply::Strings(s) => Ok(s),
            _ => Err(ClientError::UnexpectedReply(op)),
        }
    }
}

/// A GC request with every field but the action and paths at Guile's defaults.
pub fn gc_options(action: GcAction, paths_to_delete: BTreeSet<StorePath>) -> GcOptions {
    GcOptions { action, paths_to_delete, ignore_liveness: false, max_freed: u64::MAX }
}

fn op_name(op: Opcode) -> &'static str {
    // `Opcode`'s Debug names, as static strings for error values.
    match op {
        Opcode::IsValidPath => "IsValidPath",
        Opcode::HasSubstitutes => "HasSubstitutes",
        Opcode::QueryPathHash => "QueryPathHash",
        Opcode::QueryReferences => "QueryReferences",
        Opcode::QueryReferrers => "QueryReferrers",
        Opcode::AddToStore => "AddToStore",
        Opcode::AddTextToStore => "AddTextToStore",
        Opcode::BuildPaths => "BuildPaths",
        Opcode::EnsurePath => "EnsurePath",
        Opcode::AddTempRoot => "AddTempRoot",
        Opcode::AddIndirectRoot => "AddIndirectRoot",
        Opcode::SyncWithGC => "SyncWithGC",
        Opcode::FindRoots => "FindRoots",
        Opcode::ExportPath => "ExportPath",
        Opcode::QueryDeriver => "QueryDeriver",
        Opcode::SetOptions => "SetOptions",
        Opcode::CollectGarbage => "CollectGarbage",
        Opcode::QuerySubstitutablePathInfo => "QuerySubstitutablePathInfo",
        Opcode::QueryDerivationOutputs => "QueryDerivationOutputs",
        Opcode::QueryAllValidPaths => "QueryAllValidPaths",
        Opcode::QueryFailedPaths => "QueryFailedPaths",
        Opcode::ClearFailedPaths => "ClearFailedPaths",
        Opcode::QueryPathInfo => "QueryPathInfo",
        Opcode::ImportPaths => "ImportPaths",
        Opcode::QueryDerivationOutputNames => "QueryDerivationOutputNames",
        Opcode::QueryPathFromHashPart => "QueryPathFromHashPart",
        Opcode::QuerySubstitutablePathInfos => "QuerySubstitutablePathInfos",
        Opcode::QueryValidPaths => "QueryValidPaths",
        Opcode::QuerySubstitutablePaths => "QuerySubstitutablePaths",
        Opcode::QueryValidDerivers => "QueryValidDerivers",
        Opcode::OptimiseStore => "OptimiseStore",
        Opcode::VerifyStore => "VerifyStore",
        Opcode::BuiltinBuilders => "BuiltinBuilders",
        Opcode::SubstituteURLs => "SubstituteURLs",
    }
}

/// The blocking side of the AddToStore pipe: buffers the NAR writer's output into chunks and
/// hands them to the async side, blocking when it is behind.
struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(NAR_CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the daemon connection stopped taking data"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = NAR_CHUNK.saturating_sub(self.buf.len());
        let n = room.min(data.len());
        self.buf.extend_from_slice(data.get(..n).unwrap_or_default());
        if self.buf.len() >= NAR_CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

#[cfg(test)]
mod tests;

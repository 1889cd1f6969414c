//! The worker protocol 0x164 spoken over the daemon socket, as typed values.
//!
//! This module owns the bytes of the protocol and nothing else: constants and opcodes, the
//! handshake ([`handshake`]), the STDERR log/control stream ([`stderr`], including the
//! STDERR_READ/STDERR_WRITE tunnels used by ImportPaths and ExportPath), requests
//! ([`request`]) and replies ([`reply`]). Every function is async (tokio) and usable from both
//! ends: the daemon reads requests and writes replies, a client does the opposite.
//!
//! Versions. The C++ daemon conditions every optional field on the version the *client*
//! announced in the handshake; the Guile client conditions what it sends on the *server's*
//! version. Functions here take a single `version`: the version the decoding side applies,
//! i.e. the client's announced version when talking to a Guix daemon. With both sides at
//! [`PROTOCOL_VERSION`] the two rules agree.
//!
//! Every string and list a peer can send is bounded by [`Limits`]; nothing announced by input
//! is allocated before being checked against a limit. A request is also bounded as a whole:
//! the sum of what it decodes ([`budget`]).

use thiserror::Error;

use crate::store_path::StorePathError;
use crate::wire::WireError;

pub mod budget;
pub mod handshake;
pub mod reply;
pub mod request;
pub mod stderr;

pub use budget::{Budget, Unpooled};
pub use handshake::{client_handshake, server_handshake, ClientHello, ServerHello};
pub use reply::{read_reply, write_reply, PathInfo, Reply, ReplyShape, SubstitutablePathInfo};
pub use request::{
    read_op, read_request, read_request_body, read_request_budgeted, write_request, BuildMode, DerivedPath, GcAction,
    Request, SetOptions,
};
pub use stderr::{put_stderr, read_stderr, write_stderr, StderrMsg, TunnelSink, TunnelSource};

/// `WORKER_MAGIC_1`, sent by the client first.
pub const WORKER_MAGIC_1: u32 = 0x6e69_7863;
/// `WORKER_MAGIC_2`, the daemon's answer.
pub const WORKER_MAGIC_2: u32 = 0x6478_696f;
/// The protocol version of Guix 1.5.0 (major 0x100, minor 0x64).
pub const PROTOCOL_VERSION: u32 = 0x164;

/// `STDERR_NEXT`: a chunk of log output follows.
pub const STDERR_NEXT: u32 = 0x6f6c_6d67;
/// `STDERR_READ`: the daemon wants up to N bytes from the client.
pub const STDERR_READ: u32 = 0x6461_7461;
/// `STDERR_WRITE`: data for the client's sink follows.
pub const STDERR_WRITE: u32 = 0x6461_7416;
/// `STDERR_LAST`: success, the reply follows.
pub const STDERR_LAST: u32 = 0x616c_7473;
/// `STDERR_ERROR`: failure, message (and status) follow.
pub const STDERR_ERROR: u32 = 0x6378_7470;

/// `GET_PROTOCOL_MAJOR`.
pub const fn protocol_major(version: u32) -> u32 {
    version & 0xff00
}

/// `GET_PROTOCOL_MINOR`.
pub const fn protocol_minor(version: u32) -> u32 {
    version & 0x00ff
}

/// Operation numbers (`WorkerOp` in `worker-protocol.hh`). Numbers not listed (0, 2, 15, 17,
/// 36–79, 82+) are invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum Opcode {
    IsValidPath = 1,
    HasSubstitutes = 3,
    QueryPathHash = 4,
    QueryReferences = 5,
    QueryReferrers = 6,
    AddToStore = 7,
    AddTextToStore = 8,
    BuildPaths = 9,
    EnsurePath = 10,
    AddTempRoot = 11,
    AddIndirectRoot = 12,
    SyncWithGC = 13,
    FindRoots = 14,
    ExportPath = 16,
    QueryDeriver = 18,
    SetOptions = 19,
    CollectGarbage = 20,
    QuerySubstitutablePathInfo = 21,
    QueryDerivationOutputs = 22,
    QueryAllValidPaths = 23,
    QueryFailedPaths = 24,
    ClearFailedPaths = 25,
    QueryPathInfo = 26,
    ImportPaths = 27,
    QueryDerivationOutputNames = 28,
    QueryPathFromHashPart = 29,
    QuerySubstitutablePathInfos = 30,
    QueryValidPaths = 31,
    QuerySubstitutablePaths = 32,
    QueryValidDerivers = 33,
    OptimiseStore = 34,
    VerifyStore = 35,
    BuiltinBuilders = 80,
    SubstituteURLs = 81,
}

impl Opcode {
    /// Every valid opcode, in numeric order.
    pub const ALL: [Opcode; 34] = [
        Opcode::IsValidPath,
        Opcode::HasSubstitutes,
        Opcode::QueryPathHash,
        Opcode::QueryReferences,
        Opcode::QueryReferrers,
        Opcode::AddToStore,
        Opcode::AddTextToStore,
        Opcode::BuildPaths,
        Opcode::EnsurePath,
        Opcode::AddTempRoot,
        Opcode::AddIndirectRoot,
        Opcode::SyncWithGC,
        Opcode::FindRoots,
        Opcode::ExportPath,
        Opcode::QueryDeriver,
        Opcode::SetOptions,
        Opcode::CollectGarbage,
        Opcode::QuerySubstitutablePathInfo,
        Opcode::QueryDerivationOutputs,
        Opcode::QueryAllValidPaths,
        Opcode::QueryFailedPaths,
        Opcode::ClearFailedPaths,
        Opcode::QueryPathInfo,
        Opcode::ImportPaths,
        Opcode::QueryDerivationOutputNames,
        Opcode::QueryPathFromHashPart,
        Opcode::QuerySubstitutablePathInfos,
        Opcode::QueryValidPaths,
        Opcode::QuerySubstitutablePaths,
        Opcode::QueryValidDerivers,
        Opcode::OptimiseStore,
        Opcode::VerifyStore,
        Opcode::BuiltinBuilders,
        Opcode::SubstituteURLs,
    ];

    pub const fn number(self) -> u32 {
        self as u32
    }
}

impl TryFrom<u32> for Opcode {
    type Error = ProtoError;

    fn try_from(n: u32) -> Result<Opcode, ProtoError> {
        Opcode::ALL.iter().copied().find(|op| op.number() == n).ok_or(ProtoError::InvalidOperation(n))
    }
}

/// Bounds on everything a peer can make us allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Store paths, file names, root links, hash parts (`PATH_MAX`).
    pub max_path_len: u64,
    /// Other strings: names, hash algorithm names, option keys and values, messages, log chunks,
    /// STDERR_WRITE chunks.
    pub max_string_len: u64,
    /// The contents of AddTextToStore (derivations, builder scripts).
    pub max_text_len: u64,
    /// Elements of any list or set, and entries of any map in a reply.
    pub max_list_len: u64,
    /// SetOptions override pairs.
    pub max_overrides: u64,
    /// Everything one request decodes, summed as [`budget`] counts it (each string's length
    /// plus [`budget::STRING_OVERHEAD`]). Not applied to replies.
    pub max_request_bytes: u64,
}

impl Limits {
    /// Limits meant for a daemon facing untrusted clients.
    pub const DEFAULT: Limits = Limits {
        max_path_len: 4096,
        max_string_len: 1 << 20,
        max_text_len: 16 << 20,
        max_list_len: 1 << 20,
        max_overrides: 1024,
        // An AddTextToStore of the largest text (16 MiB) with thousands of references fits;
        // the Guix client never sends anything near it otherwise.
        max_request_bytes: 32 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Errors of the worker protocol. Display texts match the C++ daemon's where it has one.
#[derive(Debug, Error)]
pub enum ProtoError {
    /// Framing: bad int, non-zero padding, EOF, I/O.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A string longer than our [`Limits`] allow (the C++ daemon has no such limit).
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    StringTooLong { what: &'static str, len: u64, max: u64 },
    /// A request whose strings and lists add up to more than [`Limits::max_request_bytes`].
    #[error("request too large: it holds more than {max} bytes of strings (the limit of guix-daemon-rs)")]
    RequestTooLarge { max: u64 },
    /// The [`Budget`] refused the request's bytes (the daemon's memory is taken by other
    /// requests); the text says why.
    #[error("{0}")]
    Budget(String),
    /// A list longer than our [`Limits`] allow.
    #[error("{what} with {len} elements exceeds the limit of {max} elements")]
    ListTooLong { what: &'static str, len: u64, max: u64 },
    /// The first word of the handshake is not `WORKER_MAGIC_1`/`WORKER_MAGIC_2`.
    #[error("protocol mismatch")]
    ProtocolMismatch,
    /// The server's major version is not 0x100 (the Guile client's check).
    #[error("build daemon handshake failed")]
    HandshakeFailed { server_version: u32 },
    #[error("invalid operation {0}")]
    InvalidOperation(u32),
    /// `readStorePath`: the string is not directly under the store directory.
    #[error("path `{0}' is not in the store")]
    NotInStore(String),
    /// A string that `isStorePath` accepts but that has no valid hash part or name (for example
    /// `/gnu/store/x`). The C++ daemon lets such paths through as merely invalid; the request
    /// was read to its end, so the connection stays usable.
    #[error("path `{path}' is not valid")]
    MalformedPath { op: Opcode, path: String },
    /// A path the peer sent that is not a store path (in a reply or a DerivedPath).
    #[error(transparent)]
    StorePath(#[from] StorePathError),
    /// A reply hash that is not base16 of the expected length.
    #[error("invalid hash `{0}' in reply")]
    BadHash(String),
    /// An unknown STDERR code (the Guile client's wording).
    #[error("invalid error code {0}")]
    InvalidStderrCode(u32),
    /// A STDERR_READ reply longer than what was asked for (`TunnelSource`).
    #[error("string is too long")]
    TunnelStringTooLong,
    /// A reply does not fit the operation it answers (programming error on the writing side).
    #[error("reply {reply:?} does not answer operation {op:?}")]
    ReplyMismatch { op: Opcode, reply: ReplyShape },
}

impl ProtoError {
    /// Whether the C++ daemon would close the connection after reporting this error while
    /// reading a request (it is raised before `startWork`): every decode error except
    /// [`ProtoError::MalformedPath`], after which the stream is still in sync.
    pub fn closes_connection(&self) -> bool {
        !matches!(self, ProtoError::MalformedPath { .. })
    }

    /// Whether the error was an end of file on a word boundary at the very start (clean EOF
    /// between requests is detected by [`request::read_op`] returning `None`).
    pub fn is_eof(&self) -> bool {
        matches!(self, ProtoError::Wire(WireError::Eof))
    }
}

impl From<std::io::Error> for ProtoError {
    fn from(e: std::io::Error) -> Self {
        ProtoError::Wire(WireError::from(e))
    }
}

pub(crate) mod io;

/// Helpers for tests of this module.
#[cfg(test)]
pub(crate) mod test_util {
    /// Bytes from space-separated hex words as the spec's traces print them.
    pub fn words(s: &str) -> Vec<u8> {
        let hex: String = s.split_whitespace().collect();
        crate::hash::base16_decode(&hex).expect("test hex")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes() {
        for op in Opcode::ALL {
            assert_eq!(Opcode::try_from(op.number()).unwrap(), op);
        }
        for n in [0u32, 2, 15, 17, 36, 79, 82, 99, u32::MAX] {
            let e = Opcode::try_from(n).unwrap_err();
            assert_eq!(e.to_string(), format!("invalid operation {n}"));
        }
    }

    #[test]
    fn magic_bytes() {
        assert_eq!(&WORKER_MAGIC_1.to_le_bytes(), b"cxin");
        assert_eq!(&WORKER_MAGIC_2.to_le_bytes(), b"oixd");
        assert_eq!(&STDERR_LAST.to_le_bytes(), b"stla");
        assert_eq!(&STDERR_ERROR.to_le_bytes(), b"ptxc");
        assert_eq!(&STDERR_NEXT.to_le_bytes(), b"gmlo");
        assert_eq!(&STDERR_READ.to_le_bytes(), b"atad");
        assert_eq!(protocol_major(PROTOCOL_VERSION), 0x100);
        assert_eq!(protocol_minor(PROTOCOL_VERSION), 0x64);
    }
}

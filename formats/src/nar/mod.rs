//! The Nix ARchive (NAR): the canonical serialisation of a store item, whose SHA-256 is the
//! item's `narHash` and whose length is its `narSize`.
//!
//! This module owns the format in both directions:
//!
//! - Writing ([`dump_path`], [`Node`], [`nar_of_regular`], [`HashingWriter`]): from a file
//!   tree on disk, streaming file contents, or from an in-memory tree. Entries are emitted in
//!   byte-wise order, "executable" iff the owner-exec bit is set, as the C++ `dumpPath` and the
//!   Guile `write-file` do; the output is byte-identical to theirs.
//! - Reference scanning ([`scan_path`], [`RefScanner`]): which store paths' hash parts a NAR
//!   mentions, found in the pass that hashes it (C++ `scanForReferences`).
//! - Reading: one validation core, the sans-IO [`Parser`], drives every reader so they all
//!   accept exactly the same language: [`validate`] and [`restore`] (blocking, `std::io`) and
//!   [`read_with`] for a custom [`Visitor`].
//!
//! # Strictness
//!
//! The reader accepts only what the writers produce: fixed token order, "executable" followed
//! by the empty string and then "contents", a symlink must have a target, zero padding. This
//! is deliberately **stricter than the C++ daemon**, whose parser is order-lenient and whose
//! sort check is dead code: we reject entries that are not strictly increasing in byte order
//! (so duplicates too) with "NAR directory is not sorted", where the C++ daemon accepts
//! unsorted entries and fails on duplicates only at restore time with EEXIST. No writer ever
//! produces such NARs, and rejecting them is what makes [`restore`] safe by construction: an
//! entry can never name a path created earlier in the same archive (see [`restore`]).
//! Names, symlink targets, nesting depth and the total size are bounded by [`Limits`] so
//! that nothing the input announces is allocated before it is checked.

mod parser;
mod read;
mod scan;
mod write;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::hash::Hash;
use crate::wire::WireError;

pub use parser::{Event, Parser, Step};
pub use read::{read_with, restore, validate, validate_copy, Restorer, Visitor};
pub use scan::{scan_path, RefScanner, ScanResult, ScanWriter};
pub use write::{
    dump_path, dump_path_to, nar_of_regular, summary_of_regular, write_regular, HashingWriter, Node, RegularNarHasher,
};

/// The first token of every NAR.
pub const NAR_MAGIC: &[u8] = b"nix-archive-1";

/// What reading or writing a NAR learned about its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarSummary {
    /// SHA-256 of the NAR bytes.
    pub nar_hash: Hash,
    /// Length of the NAR in bytes.
    pub nar_size: u64,
}

/// Bounds on what a NAR read from an untrusted source may contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest entry name (`NAME_MAX` on Linux).
    pub max_name_len: u64,
    /// Longest symlink target (`PATH_MAX - 1`).
    pub max_target_len: u64,
    /// Deepest directory nesting; the root node is depth 0.
    pub max_depth: usize,
    /// Largest NAR, in bytes, if bounded.
    pub max_nar_size: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_name_len: 255, max_target_len: 4095, max_depth: 256, max_nar_size: None }
    }
}

/// Everything that can go wrong reading or writing a NAR. Messages are the C++ daemon's where
/// it has one.
#[derive(Debug, Error)]
pub enum NarError {
    #[error("bad archive: input doesn't look like a normalized archive")]
    BadMagic,
    #[error("bad archive: expected open tag")]
    ExpectedOpenTag,
    #[error("bad archive: expected `{expected}', got `{got}'")]
    Unexpected { expected: &'static str, got: String },
    #[error("bad archive: unknown file type {0}")]
    UnknownType(String),
    #[error("bad archive: unknown field {0}")]
    UnknownField(String),
    #[error("bad archive: token of {len} bytes where a tag was expected")]
    TagTooLong { len: u64 },
    #[error("bad archive: `executable' must be followed by an empty string")]
    ExecutableNotEmpty,
    #[error("NAR contains invalid file name `{0}'")]
    InvalidName(String),
    #[error("NAR directory is not sorted")]
    NotSorted { name: String },
    #[error("bad archive: file name of {len} bytes is longer than the limit of {max}")]
    NameTooLong { len: u64, max: u64 },
    #[error("bad archive: symlink target of {len} bytes is longer than the limit of {max}")]
    TargetTooLong { len: u64, max: u64 },
    #[error("bad archive: directories nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("bad archive: archive is larger than the limit of {max} bytes")]
    TooLarge { max: u64 },
    #[error("regular file expected")]
    RegularFileExpected,
    #[error("{0}")]
    Wire(#[from] WireError),
    /// A file system or stream operation failed; `context` says which, as the C++ daemon's
    /// `SysError` does ("creating file `P'").
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("file `{0}' has an unsupported type")]
    UnsupportedType(PathBuf),
    #[error("file `{path}' changed while it was being archived")]
    FileChanged { path: PathBuf },
    /// The parser was driven against its own [`Step`]s: a bug in the caller, not bad input.
    #[error("NAR parser misuse: {0}")]
    Misuse(&'static str),
}

impl NarError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> NarError {
        NarError::Io { context: context.into(), source }
    }
}

/// Reads of the input stream: end-of-file becomes the framing layer's error.
pub(crate) fn input_error(e: io::Error) -> NarError {
    NarError::Wire(WireError::from(e))
}

#[cfg(test)]
mod tests;

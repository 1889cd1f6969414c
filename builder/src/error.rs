//! The builder's error type.
//!
//! A build that fails is an [`Error::Build`]: the C++ daemon's message for it (shown to the
//! client as it is) and its [`FailureKind`], which decides the client's exit status and whether
//! the failure is cached. Everything else is the builder's own trouble, with context.

use std::io;

/// How a build failed (C++ `BuildResult::Status`, the failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// The builder failed (non-zero exit, missing output, hash mismatch of a normal
    /// derivation, …): exit status 100, cached with `--cache-failures`.
    Permanent,
    /// The build could not even start (bad derivation, builder outside the store, …): 100.
    InputRejected,
    /// The outputs were refused after a successful builder (suspicious permissions, disallowed
    /// references): 1.
    OutputRejected,
    /// May succeed another time (fixed-output derivation failed, disk full): 1, never cached.
    Transient,
    /// `--timeout`, `--max-silent-time`, or the log size limit: 101.
    TimedOut,
    /// `--check` or `--rounds` found different outputs: 1.
    NotDeterministic,
    /// An output failed before and `--cache-failures` remembered it: 100.
    Cached,
    /// An input derivation failed: 1.
    DependencyFailed,
    /// Anything else: 1.
    Misc,
}

impl FailureKind {
    /// C++ `buildPaths`: 101 if any build timed out, else 100 if any failed permanently, else 1.
    pub fn exit_status<'a>(kinds: impl IntoIterator<Item = &'a FailureKind>) -> u32 {
        let mut status = 1;
        for k in kinds {
            match k {
                FailureKind::TimedOut => return 101,
                FailureKind::Permanent | FailureKind::Cached | FailureKind::InputRejected => status = 100,
                _ => {}
            }
        }
        status
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A build failed; `message` is the C++ daemon's.
    #[error("{message}")]
    Build { kind: FailureKind, message: String },
    /// A failing system call, displayed like the C++ `SysError` (`context: strerror`).
    #[error("{context}: {}", guix_store::strerror(source))]
    Io { context: String, source: io::Error },
    /// A fixed-output derivation produced something else than it announced (C++ `BuildError`,
    /// so [`FailureKind::OutputRejected`] after a successful builder). `Display` is the C++
    /// message; [`HashMismatch::trace`] is the `@ hash-mismatch` line it prints first with
    /// `--print-build-trace`.
    #[error("hash mismatch for store item '{}'", .0.path)]
    HashMismatch(Box<HashMismatch>),
    #[error(transparent)]
    Db(#[from] guix_store::Error),
    #[error("{0}")]
    Link(guix_ipc::LinkError),
    /// A C++ `Error`/`SysError` outside a build's own failure (bad `--build-users-group`, a
    /// chroot that cannot be set up, `/homeless-shelter` existing, …): in C++ it escapes the
    /// worker, so the client's whole request fails with this message (status 1). The text is
    /// the C++ one, `strerror` included.
    #[error("{0}")]
    Setup(String),
    /// A build failure of this kind whose message and trace were already shown (the C++
    /// order puts something after them, e.g. the `--keep-failed` note of a `--rounds`
    /// mismatch).
    #[error("")]
    Reported(FailureKind),
}

/// What a [`Error::HashMismatch`] carries: the output, its `outputHashAlgo` as the derivation
/// spells it (`sha256`, `r:sha256`), and both hashes as C++ `printHash16or32` prints them
/// (base16 for MD5, else Nix base32).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashMismatch {
    pub path: String,
    pub algo: String,
    pub expected: String,
    pub actual: String,
}

impl HashMismatch {
    /// `@ hash-mismatch PATH ALGO EXPECTED ACTUAL`.
    pub fn trace(&self) -> String {
        format!("@ hash-mismatch {} {} {} {}", self.path, self.algo, self.expected, self.actual)
    }
}

impl Error {
    /// How the build failed, if this error is a build failure (the ones the C++ daemon
    /// throws as `BuildError` and its subclasses); `None` for the builder's own trouble.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            Error::Build { kind, .. } => Some(*kind),
            Error::HashMismatch(_) => Some(FailureKind::OutputRejected),
            Error::Reported(kind) => Some(*kind),
            _ => None,
        }
    }

    pub fn build(kind: FailureKind, message: impl Into<String>) -> Error {
        Error::Build { kind, message: message.into() }
    }

    /// An I/O error with what was being done (`"creating `/tmp/x'"`).
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds context to I/O results: `fs::create_dir(p).context(|| format!("creating `{}'", …))`.
pub trait IoContext<T> {
    fn context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_as_cxx_build_paths() {
        use FailureKind::*;
        assert_eq!(FailureKind::exit_status(&[]), 1);
        assert_eq!(FailureKind::exit_status(&[Transient, OutputRejected]), 1);
        assert_eq!(FailureKind::exit_status(&[Transient, Permanent]), 100);
        assert_eq!(FailureKind::exit_status(&[Permanent, TimedOut, Cached]), 101);
        assert_eq!(FailureKind::exit_status(&[DependencyFailed]), 1);
    }
}

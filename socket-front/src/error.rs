//! How an operation can fail, and what the client sees.
//!
//! The C++ daemon's rule (spec §3, §9.4): an error raised before `startWork` (while reading the
//! request) is reported with `STDERR_ERROR` and then the connection is closed; an error raised
//! after `startWork` is reported and the connection stays usable. Some failures (a broken
//! stream, a bad opcode word, end-of-file between requests) close the connection without any
//! frame. End-of-file *inside* a request is an ordinary error: the C++ daemon reports
//! "unexpected end-of-file" (a client that only shut down its writing side reads it) and
//! closes. [`Failure`] names the three outcomes so the connection loop never has to guess.

use guix_formats::nar::NarError;
use guix_formats::worker::ProtoError;

/// The outcome of a failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Raised after `startWork`: `STDERR_ERROR msg` (status 1), connection kept.
    Op(String),
    /// As [`Failure::Op`] with another status: a failed build (C++ `Worker::exitStatus()`:
    /// 100 permanent failure, 101 timeout, else 1), which `guix build` exits with.
    Status { msg: String, status: u32 },
    /// Raised before `startWork`: `STDERR_ERROR msg`, then the connection is closed.
    Fatal(String),
    /// The stream is broken (I/O error, EOF between requests, framing the C++ daemon drops
    /// silently): close without a frame. The text is for our log only.
    Gone(String),
}

impl Failure {
    pub fn op(msg: impl Into<String>) -> Failure {
        Failure::Op(msg.into())
    }

    pub fn fatal(msg: impl Into<String>) -> Failure {
        Failure::Fatal(msg.into())
    }
}

impl std::fmt::Display for Failure {
    /// The message (what the client is told, or for `Gone` our log's reason).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Op(m) | Failure::Fatal(m) | Failure::Gone(m) | Failure::Status { msg: m, .. } => f.write_str(m),
        }
    }
}

impl From<ProtoError> for Failure {
    /// A request decoding error: always before `startWork`.
    fn from(e: ProtoError) -> Failure {
        match &e {
            ProtoError::Wire(w) if is_stream_failure(w) => Failure::Gone(e.to_string()),
            _ if e.closes_connection() => Failure::Fatal(e.to_string()),
            _ => Failure::Op(e.to_string()),
        }
    }
}

/// I/O errors (reset, …) mean the client is gone. Other framing errors get an error frame
/// first, as the C++ daemon sends one: high-half ints, non-zero padding, and end-of-file in the
/// middle of a request ("unexpected end-of-file", verified with a client that shut down its
/// writing side mid-NAR and mid-string). End-of-file *between* requests never gets here
/// (`read_op` returns `None`; a partial opcode word is dropped silently by the caller).
fn is_stream_failure(w: &guix_formats::wire::WireError) -> bool {
    matches!(w, guix_formats::wire::WireError::Io(_))
}

/// A NAR read from the socket failed: parse errors and end-of-file close the connection after
/// the frame (they happen before `startWork` in the C++ daemon); a broken stream closes it
/// silently.
pub fn nar_failure(e: NarError) -> Failure {
    match &e {
        NarError::Wire(w) if is_stream_failure(w) => Failure::Gone(e.to_string()),
        _ => Failure::Fatal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guix_formats::wire::WireError;
    use guix_formats::worker::Opcode;

    #[test]
    fn classification() {
        assert_eq!(Failure::from(ProtoError::Wire(WireError::Eof)), Failure::Fatal("unexpected end-of-file".into()));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(matches!(Failure::from(ProtoError::Wire(WireError::Io(reset))), Failure::Gone(_)));
        assert_eq!(Failure::from(ProtoError::InvalidOperation(2)), Failure::Fatal("invalid operation 2".into()));
        assert_eq!(
            Failure::from(ProtoError::MalformedPath { op: Opcode::QueryPathInfo, path: "/gnu/store/x".into() }),
            Failure::Op("path `/gnu/store/x' is not valid".into())
        );
        assert!(matches!(nar_failure(NarError::BadMagic), Failure::Fatal(_)));
        assert_eq!(nar_failure(NarError::Wire(WireError::Eof)), Failure::Fatal("unexpected end-of-file".into()));
    }
}

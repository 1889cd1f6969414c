//! How an operation can fail, and what the client sees.
//!
//! The C++ daemon's rule (spec §3, §9.4): an error raised before `startWork` (while reading the
//! request) is reported with `STDERR_ERROR` and then the connection is closed; an error raised
//! after `startWork` is reported and the connection stays usable. Some failures (a broken
//! stream, a bad opcode word) close the connection without any frame. [`Failure`] names the
//! three outcomes so the connection loop never has to guess.

use guix_formats::nar::NarError;
use guix_formats::worker::ProtoError;

/// The outcome of a failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Raised after `startWork`: `STDERR_ERROR msg`, connection kept.
    Op(String),
    /// Raised before `startWork`: `STDERR_ERROR msg`, then the connection is closed.
    Fatal(String),
    /// The stream is broken (EOF, I/O error, framing the C++ daemon drops silently): close
    /// without a frame. The text is for our log only.
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

/// EOF and I/O errors mean the client is gone; other framing errors (high-half ints, non-zero
/// padding) get an error frame first, as the C++ daemon sends one.
fn is_stream_failure(w: &guix_formats::wire::WireError) -> bool {
    use guix_formats::wire::WireError;
    matches!(w, WireError::Eof | WireError::Io(_))
}

/// A NAR read from the socket failed: parse errors close the connection after the frame (they
/// happen before `startWork` in the C++ daemon); a broken stream closes it silently.
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
        assert!(matches!(Failure::from(ProtoError::Wire(WireError::Eof)), Failure::Gone(_)));
        assert_eq!(Failure::from(ProtoError::InvalidOperation(2)), Failure::Fatal("invalid operation 2".into()));
        assert_eq!(
            Failure::from(ProtoError::MalformedPath { op: Opcode::QueryPathInfo, path: "/gnu/store/x".into() }),
            Failure::Op("path `/gnu/store/x' is not valid".into())
        );
        assert!(matches!(nar_failure(NarError::BadMagic), Failure::Fatal(_)));
        assert!(matches!(nar_failure(NarError::Wire(WireError::Eof)), Failure::Gone(_)));
    }
}

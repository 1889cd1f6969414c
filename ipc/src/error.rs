//! Typed failures carried in link replies ([`LinkError`]), and what a request says about
//! being resent ([`LinkRequest`]).

use serde::{Deserialize, Serialize};

/// Whose failure it is, which decides what the caller does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request itself is at fault (bad path, invalid reference, …): the message is shown
    /// to the guix client as it is, in the C++ daemon's wording.
    Client,
    /// The serving side could not do it now (a peer unavailable, shutting down): trying again
    /// later may succeed.
    Retryable,
    /// A fault of ours (I/O error, broken invariant): worth a log line, not the client's doing.
    Internal,
}

/// A failure in a link reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct LinkError {
    pub kind: ErrorKind,
    pub message: String,
}

impl LinkError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> LinkError {
        LinkError { kind, message: message.into() }
    }
    /// The client's fault; `message` is shown to it as it is.
    pub fn client(message: impl Into<String>) -> LinkError {
        LinkError::new(ErrorKind::Client, message)
    }
    pub fn retryable(message: impl Into<String>) -> LinkError {
        LinkError::new(ErrorKind::Retryable, message)
    }
    pub fn internal(message: impl Into<String>) -> LinkError {
        LinkError::new(ErrorKind::Internal, message)
    }

    /// The text for a guix client of a failure reported by the component serving `link`:
    /// a client error as it is, the others naming the component.
    pub fn client_text(&self, link: &str) -> String {
        match self.kind {
            ErrorKind::Client => self.message.clone(),
            ErrorKind::Retryable => format!("{link} is unavailable: {}", self.message),
            ErrorKind::Internal => format!("internal error in {link}: {}", self.message),
        }
    }
}

/// A link's request enum. [`crate::Client`] resends a request whose connection broke before
/// its reply only when [`LinkRequest::idempotent`] says that doing it twice is the same as
/// doing it once; otherwise the call fails with [`crate::ClientError::MaybeDone`].
pub trait LinkRequest: Serialize + Clone + Send + 'static {
    fn idempotent(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_names_the_component_unless_the_client_is_at_fault() {
        assert_eq!(LinkError::client("path `x' is not valid").client_text("store-db"), "path `x' is not valid");
        assert_eq!(LinkError::retryable("restarting").client_text("store-db"), "store-db is unavailable: restarting");
        assert_eq!(LinkError::internal("EIO").client_text("store-db"), "internal error in store-db: EIO");
    }
}

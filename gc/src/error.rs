//! [`Error`]: everything that can make a request of the gc fail.

use guix_ipc::LinkError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the database.
    #[error("{0}")]
    Db(String),
    #[error(transparent)]
    Store(#[from] guix_store::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// What the client is told, in the C++ daemon's wording.
    #[error("{0}")]
    Client(String),
    /// store-db refused or failed (after the collection's own retries).
    #[error("{}", .0.message)]
    StoreDb(LinkError),
    /// The job was cancelled (its client went away).
    #[error("the collection was cancelled")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The error as the gc link's reply carries it.
    pub fn to_link(&self) -> LinkError {
        match self {
            Error::Client(m) => LinkError::client(m.clone()),
            // The gc retried already (module `collect`): socket-front must not send it again.
            Error::StoreDb(e) if e.kind == guix_ipc::ErrorKind::Retryable => {
                LinkError::client(format!("store-db is unavailable: {}", e.message))
            }
            Error::StoreDb(e) => e.clone(),
            Error::Cancelled => LinkError::retryable(self.to_string()),
            Error::Io(_) | Error::Db(_) | Error::Store(_) => LinkError::client(self.to_string()),
        }
    }
}

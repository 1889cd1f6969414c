//! What decoding one request may make us allocate, counted as its bytes arrive.
//!
//! [`super::Limits`] bounds each string and each list; that alone lets one request hold
//! `max_list_len × max_path_len` (4 GiB for a ClearFailedPaths of 2^20 paths of 4 KiB) or
//! `max_overrides × 2 × max_string_len` (2 GiB for SetOptions). So the request decoder also
//! counts the *sum*: every string costs its length plus [`STRING_OVERHEAD`] (what holding it in
//! a `String` or `StorePath` inside a list or set costs beyond its bytes), charged before the
//! string is allocated. The sum is checked against [`super::Limits::max_request_bytes`]
//! ([`ProtoError::RequestTooLarge`]) and offered to a [`Budget`], through which a daemon shares
//! one memory pool between all its connections (it may wait for bytes, or refuse with
//! [`ProtoError::Budget`]).
//!
//! Only requests are counted: replies (read by clients) are as large as the store they
//! describe.

use std::future::Future;
use std::pin::Pin;

use super::ProtoError;

/// What a decoded string costs beyond its bytes: the `String`/`StorePath` itself and its
/// share of the list or set node holding it.
pub const STRING_OVERHEAD: u64 = 64;

/// A wait for bytes of a shared pool; resolves to an error when they cannot be had.
pub type Wait<'a> = Pin<Box<dyn Future<Output = Result<(), ProtoError>> + Send + 'a>>;

/// Where a request's bytes come from, beyond the per-request limit.
pub trait Budget: Send {
    /// The request being decoded now holds `total` bytes (as counted by the decoder, growing
    /// with each string, before it is allocated). `None`: granted at once; else the caller
    /// awaits the [`Wait`] before allocating.
    fn admit(&mut self, total: u64) -> Option<Wait<'_>>;
}

/// No shared pool: only the per-request limit applies.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unpooled;

impl Budget for Unpooled {
    fn admit(&mut self, _total: u64) -> Option<Wait<'_>> {
        None
    }
}

//! Local IPC between guix-daemon-rs components.
//!
//! Every link is a Unix stream socket carrying frames: a little-endian `u32` length, then a
//! postcard-encoded value. The first frame each side sends is a [`Hello`] naming the
//! component, the link and the link's protocol version, so swapping a component's binary for one
//! that speaks another version fails with a clear error instead of garbage. After the hello,
//! the caller sends [`ToServer`] frames (requests with an id, stream credit, cancellation) and
//! the server [`ToClient`] frames (stream items, then one final reply per request), so one
//! connection carries many requests at once and replies can come back in any order.
//!
//! Modules: [`frame`] (framing, hello); [`client`] (deadlines, resend, streams, cancel);
//! [`server`] (the serving loop, [`Call`]); [`error`] (typed failures in replies, which
//! requests are idempotent); [`job`] (long work that outlives a connection); [`component`]
//! and [`config`] (what the supervisor hands a component); one module per link
//! ([`store_db`], [`builder`], [`gc`], [`substituter`], [`control`]) with its messages.
//!
//! This crate knows nothing of what the messages mean: each link defines its own request and
//! reply enums (see ARCHITECTURE.md, "Link semantics") and plugs them in as type parameters.

pub mod builder;
pub mod client;
pub mod component;
pub mod config;
pub mod control;
pub mod error;
pub mod frame;
pub mod gc;
pub mod job;
pub mod quiet;
pub mod server;
pub mod store_db;
pub mod substituter;

pub use client::{CallStream, Client, ClientError, DEFAULT_DEADLINE, STREAM_WINDOW};
pub use error::{ErrorKind, LinkError, LinkRequest};
pub use frame::{encode_frame, read_frame, write_frame, FrameError, Hello, ToClient, ToServer, MAX_FRAME};
pub use server::{serve_connection, serve_until_signalled, Call, Handler, SendError, ServerError};

/// A link's identity: its name and the version of its message enums. Bump the version whenever
/// a message enum of the link, or the framing of this crate, changes shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    pub name: &'static str,
    pub version: u32,
}

#[cfg(test)]
mod tests;

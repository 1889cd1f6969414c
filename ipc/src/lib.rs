//! Local IPC between guix-daemon-rs components.
//!
//! Every link is a Unix stream socket carrying frames: a little-endian `u32` length, then a
//! postcard-encoded [`Envelope`]. The first frame each side sends is a [`Hello`] naming the
//! component, the link and the link's protocol version, so swapping a component's binary for one
//! that speaks another version fails with a clear error instead of garbage. After the hello,
//! requests carry an id and replies echo it, so one connection carries many requests at once
//! and replies can come back in any order ([`Client`] matches them).
//!
//! This crate knows nothing of what the messages mean: each link defines its own request and
//! reply enums (see ARCHITECTURE.md) and plugs them in as type parameters.

mod client;
pub mod component;
pub mod config;
pub mod control;
mod frame;
mod server;
pub mod store_db;

pub use client::{Client, ClientError};
pub use frame::{encode_frame, read_frame, write_frame, Envelope, FrameError, Hello, MAX_FRAME};
pub use server::{serve_connection, Handler, ServerError};

/// A link's identity: its name and the version of its message enums. Bump the version whenever
/// a message enum of the link changes shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    pub name: &'static str,
    pub version: u32,
}

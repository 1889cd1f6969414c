//! The builder component (`guix-builder`): realises derivations as the C++ `guix-daemon` 1.5.0
//! does, serving the `builder` link (`guix_ipc::builder`) for socket-front.
//!
//! - [`error`] — [`Error`], [`FailureKind`] (the client's exit status).
//! - [`users`] — build users from `--build-users-group`: `userpool/<uid>` locks, killing
//!   their processes, waiting for a free one.
//! - [`sandbox`] — starting one build process: build directory, chroot `<drv>.chroot/top`,
//!   namespaces, environment, credentials, exactly as the C++ daemon; `--disable-chroot`;
//!   built-in builders through `guix perform-download`.
//! - [`outputs`] — after the builder exits: checks, canonicalisation, the fixed-output hash,
//!   reference scanning with the NAR hash in one pass, reference constraints, moving the
//!   outputs into scratch space for store-db to register.
//! - [`log`] — build logs in `/var/log/guix/drvs` (none / gzip / bzip2) and log limits.
//! - [`goal`] — one derivation's build, from loading it to registering its outputs.
//! - [`schedule`] — goals shared by every request (one build per output), input derivations
//!   first, build slots (`--max-jobs`), cancellation when no request wants a goal any more.
//! - [`substitute`] — the `substituter` link: substituting a goal's outputs and missing input
//!   sources before it builds.
//! - [`slots`] — build slots, given to ready builds in the C++ Worker's order.
//! - [`server`] — the `builder` link: jobs, events, replies.
//! - [`service`] — the process: startup clean-up, the serving loop.

pub mod error;
pub mod goal;
pub mod log;
pub mod outputs;
pub mod sandbox;
pub mod schedule;
pub mod server;
pub mod service;
pub mod slots;
pub mod substitute;
pub mod users;

pub use error::{Error, FailureKind, Result};

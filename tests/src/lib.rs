//! The project's test rig, seen from Rust.
//!
//! `scripts/rig` (bash, run as root) owns the hard parts: a Debian sid rootfs with the real Guix
//! 1.5.0 client and C++ `guix-daemon`, and for every session a private mount + PID namespace with
//! a fresh `/gnu/store`, `/var/guix` and `/var/log/guix`. This crate drives that script:
//!
//! * [`Rig::discover`] finds `scripts/rig` next to this crate and checks that the rootfs is set up
//!   (if not, the error says to run `scripts/rig setup`; tests must fail, never skip).
//! * [`Session::start`] starts a daemon ([`DaemonKind::Cxx`] or [`DaemonKind::Ours`]) on a fresh
//!   store; [`Session::exec_guix`], [`Session::repl`] and [`Session::exec`] run the real client
//!   inside the chroot, [`Session::exec_host`] runs a host command against the daemon's socket, and
//!   [`Session::restart_daemon`] swaps daemons on the same store. Dropping the session stops it
//!   and removes its state directory.
//!
//! Sessions are independent (own state directory, own namespaces), so tests using them run in
//! parallel. If the test process dies without dropping a session, the rig's supervisor notices
//! (it watches this process's PID) and tears the session down.
//!
//! [`supervised`] is the other way to run our daemon: on the host, in a temporary directory, for
//! the tests of the supervisor and of the components (no rig needed).

pub mod http;
pub mod ours;
pub mod rig;
pub mod store_check;
pub mod supervised;

pub use ours::{ours_kind, ours_kind_in, start_ours, target_dir};
pub use rig::{DaemonKind, Rig, RigError, Session, SessionOptions};

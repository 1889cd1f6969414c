//! Guix store formats, usable on their own: no daemon logic, no I/O policy.
//!
//! - [`base32`], [`hash`]: Nix base32 and hash values in every textual form the daemon uses.
//! - [`store_path`]: store paths as a validated type, and the store-path computations.
//! - [`path`][mod@path]: absolute file names normalised as the C++ daemon does (`canonPath`).
//! - [`nar`]: the Nix ARchive, streaming writer and strict reader/unpacker.
//! - [`derivation`]: ATerm derivations, modulo hashes, output paths.
//! - [`worker`]: the worker protocol 0x164 spoken over the daemon socket.
//! - [`export`], [`sexp`], [`signature`], [`narinfo`]: `guix archive` export streams, Guix
//!   S-expressions and their signatures (libgcrypt's ECDSA over the Ed25519 curve, as Guix
//!   keys are used), the ACL, narinfo files.

pub mod base32;
pub mod derivation;
pub mod export;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod path;
pub mod sexp;
pub mod signature;
pub mod store_path;
pub mod wire;
pub mod worker;

pub use hash::{Hash, HashAlgo};
pub use store_path::{StoreDir, StorePath};

//! The builder: runs derivation builds in chroots as build users.
//!
//! Not implemented yet: a later issue fills this component. Until then it refuses to run, so
//! nothing can mistake it for a working one.

fn main() {
    eprintln!("guix-builder: not implemented yet");
    std::process::exit(2);
}

//! The garbage collector, without a global lock.
//!
//! Not implemented yet: a later issue fills this component. Until then it refuses to run, so
//! nothing can mistake it for a working one.

fn main() {
    eprintln!("guix-gc: not implemented yet");
    std::process::exit(2);
}

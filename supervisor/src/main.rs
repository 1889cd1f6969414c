//! The supervisor: the guix-daemon-rs binary, spawns and watches the components.
//!
//! Not implemented yet: a later issue fills this component. Until then it refuses to run, so
//! nothing can mistake it for a working one.

fn main() {
    eprintln!("guix-daemon-rs: not implemented yet");
    std::process::exit(2);
}

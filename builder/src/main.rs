//! `guix-builder`: the builder component, started by the supervisor (`guix-daemon-rs`).

fn main() {
    eprintln!("guix-builder: not implemented yet");
    std::process::exit(2);
}

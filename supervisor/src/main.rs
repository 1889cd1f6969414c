//! `guix-daemon-rs`: see the library crate for everything it does.

fn main() {
    std::process::exit(guix_supervisor::run(std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect()));
}

//! `guix-substituter`: the substituter component, started by the supervisor
//! (`guix-daemon-rs`); see [`guix_substituter::service`].

fn main() -> std::process::ExitCode {
    guix_substituter::service::main()
}

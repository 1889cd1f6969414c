//! `guix-gc`: the garbage collector component, started by the supervisor (`guix-daemon-rs`);
//! see [`guix_gc::service`].

fn main() -> std::process::ExitCode {
    guix_gc::service::main()
}

//! `guix-gc`: the garbage collector component, started by the supervisor (`guix-daemon-rs`);
//! see [`guix_gc::service`]. `guix-gc --list-busy` prints what `guix gc --list-busy` prints.

fn main() -> std::process::ExitCode {
    guix_gc::service::main()
}

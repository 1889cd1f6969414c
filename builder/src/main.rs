//! `guix-builder`: the builder component, started by the supervisor (`guix-daemon-rs`); see
//! [`guix_builder::service`].
//!
//! `guix-builder --sandbox-child` is the sandbox helper of one build
//! (`guix_builder::sandbox::helper_main`): it must be dispatched before anything starts a
//! thread, since it enters new namespaces.

fn main() -> std::process::ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == guix_builder::sandbox::HELPER_FLAG) {
        guix_builder::sandbox::helper_main();
    }
    guix_builder::service::main()
}

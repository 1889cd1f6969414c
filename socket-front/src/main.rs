//! `guix-socket-front`: serves every client connection of the daemon (see the library docs).

fn main() {
    std::process::exit(guix_socket_front::main_entry());
}

//! `guix-store-db`: the only writer of the store database and of the store's namespace. The
//! supervisor (`guix-daemon-rs`) starts it; see [`guix_store_db::server::service`].

fn main() -> std::process::ExitCode {
    guix_store_db::server::service::main()
}

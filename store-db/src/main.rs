//! store-db: the only writer of /var/guix/db/db.sqlite.
//!
//! Not implemented yet: a later issue fills this component. Until then it refuses to run, so
//! nothing can mistake it for a working one.

fn main() {
    eprintln!("guix-store-db: not implemented yet");
    std::process::exit(2);
}

//! A stand-in for components that are not built yet, used by `tests/supervisor.rs`: the test
//! links it into a libexec directory as `guix-store-db` and `guix-socket-front`.
//!
//! It picks up its sockets and configuration as a real component does (`guix_ipc::component`),
//! then answers every connection on every inherited Unix socket with one line
//! `COMPONENT PID\n` and closes it. It runs until killed.

use std::io::Write;

use guix_ipc::component::{component_name, config_from_env, inherited_listeners, InheritedListener};

fn main() {
    let name = component_name().unwrap_or_else(|e| fail(e));
    let _config = config_from_env().unwrap_or_else(|e| fail(e));
    let listeners = inherited_listeners().unwrap_or_else(|e| fail(e));
    let mut threads = Vec::new();
    for (_sock, l) in listeners {
        let InheritedListener::Unix(l) = l else { continue };
        let name = name.clone();
        threads.push(std::thread::spawn(move || {
            let _ = l.set_nonblocking(false);
            for s in l.incoming().flatten() {
                let mut s = s;
                let _ = writeln!(s, "{name} {}", std::process::id());
            }
        }));
    }
    if threads.is_empty() {
        loop {
            std::thread::park();
        }
    }
    for t in threads {
        let _ = t.join();
    }
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("fake component: {e}");
    std::process::exit(1);
}

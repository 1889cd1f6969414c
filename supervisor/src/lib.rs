//! The supervisor of guix-daemon-rs: the `guix-daemon-rs` program.
//!
//! It takes the command line of the C++ `guix-daemon` ([`cli`], [`settings`]), creates every
//! listening socket ([`sockets`]), starts one process per component of the table in
//! [`components`] and keeps them running ([`supervise`]), serves the control socket and the
//! `ctl` subcommands ([`control`]) and, when asked, Prometheus metrics ([`metrics`]).
//! [`run`] is the whole program; `main.rs` only calls it.

pub mod cli;
pub mod components;
pub mod control;
pub mod metrics;
pub mod privileges;
pub mod scratch;
pub mod settings;
pub mod sockets;
pub mod supervise;

use std::os::fd::AsRawFd;

use guix_ipc::config::{ClientSockets, ListenAddr};
use nix::sys::stat::{umask, Mode};
use tokio::sync::mpsc;

use crate::components::COMPONENTS;
use crate::sockets::Listening;
use crate::supervise::{ComponentSockets, Supervisor};

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn program_name(argv0: Option<&String>) -> String {
    argv0
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("guix-daemon-rs")
        .to_owned()
}

/// Runs the program with `argv` (program name first) and returns its exit status.
pub fn run(argv: Vec<String>) -> i32 {
    // As guix-daemon: no group- or world-writable files.
    umask(Mode::S_IWGRP | Mode::S_IWOTH);
    let program = program_name(argv.first());
    let args = argv.get(1..).unwrap_or_default();

    if args.first().map(String::as_str) == Some("ctl") {
        let paths = match guix_ipc::config::Paths::from_env() {
            Ok(p) => p,
            Err(e) => return fail(e),
        };
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return fail(e),
        };
        return rt.block_on(control::ctl(&paths.control_socket(), args.get(1..).unwrap_or_default()));
    }

    let opts = match cli::parse(&program, args) {
        Ok(o) => o,
        Err(exit) => {
            print!("{}", exit.stdout);
            eprint!("{}", exit.stderr);
            return exit.code;
        }
    };
    let paths = match guix_ipc::config::Paths::from_env() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let addrs = match settings::listen_addrs(&opts, &paths) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    if let Err(e) = settings::check_supported(&opts, &addrs) {
        return fail(e);
    }

    // Sockets are opened before the settings are checked, as guix-daemon does. No thread
    // exists yet, so changing the umask while binding is safe.
    let mut owned: Vec<Listening> = Vec::new();
    let (clients, client_sockets) = match sockets::systemd_sockets(env_var) {
        Ok(Some(l)) => {
            let n = l.len();
            eprintln!("socket-activated with {n} socket{}", if n == 1 { "" } else { "s" });
            (l, ClientSockets::SocketActivated(n))
        }
        Ok(None) => {
            let mut l = Vec::new();
            for a in &addrs {
                if let ListenAddr::Unix(p) = a {
                    match sockets::bind_unix(p, 0o666) {
                        Ok(s) => l.push(s),
                        Err(e) => {
                            sockets::remove_files(&l);
                            return fail(e);
                        }
                    }
                }
            }
            (l, ClientSockets::Opened(addrs.clone()))
        }
        Err(e) => return fail(e),
    };
    let mut config = match settings::build_config(&opts, &paths, client_sockets) {
        Ok(c) => c,
        Err(e) => {
            sockets::remove_files(&clients);
            return fail(e);
        }
    };
    config.socket_front_user = match privileges::socket_front_user(opts.rs_socket_front_user.as_deref()) {
        Ok(u) => u,
        Err(e) => {
            sockets::remove_files(&clients);
            return fail(e);
        }
    };
    let front_gid = config.socket_front_user.map(|u| u.gid);
    if nix::unistd::geteuid().is_root() && config.build_users_group.is_none() {
        eprintln!("warning: daemon is running as root, so using `--build-users-group' is highly recommended");
    }

    type Internal = (Vec<(&'static str, Listening)>, Listening);
    let result = (|| -> Result<Internal, Box<dyn std::error::Error>> {
        sockets::private_dir(&config.runtime_dir, front_gid)?;
        // socket-front maps it read-only: it must exist before socket-front starts.
        guix_store::Epoch::open(&guix_store::StateDirs::from_config(&config).epoch_path())?;
        let mut links = Vec::new();
        // socket-front connects to every link; with its own user, through its group.
        for link in components::links(COMPONENTS) {
            let path = guix_ipc::component::link_socket_path(&config, link);
            links.push((link, sockets::bind_unix_for_group(&path, front_gid)?));
        }
        let control = sockets::bind_unix_for_group(&config.control_socket, front_gid)?;
        Ok((links, control))
    })();
    let (links, control) = match result {
        Ok(r) => r,
        Err(e) => {
            sockets::remove_files(&clients);
            return fail(e);
        }
    };
    owned.extend(clients);
    let cleanup = |owned: &[Listening], links: &[(&str, Listening)], control: &Listening| {
        sockets::remove_files(owned);
        sockets::remove_files(links.iter().map(|(_, l)| l));
        sockets::remove_files([control]);
    };

    let config_json = match serde_json::to_string(&config) {
        Ok(j) => j,
        Err(e) => {
            cleanup(&owned, &links, &control);
            return fail(e);
        }
    };
    let libexec = match components::libexec_dir(opts.rs_libexec_dir.as_deref(), env_var("GUIX_DAEMON_RS_LIBEXEC_DIR")) {
        Ok(d) => d,
        Err(e) => {
            cleanup(&owned, &links, &control);
            return fail(e);
        }
    };
    let component_sockets = ComponentSockets {
        clients: owned.iter().map(|l| l.fd.as_raw_fd()).collect(),
        links: links.iter().map(|(n, l)| (*n, l.fd.as_raw_fd())).collect(),
    };

    let code = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Err(e) => fail(e),
        Ok(rt) => rt.block_on(async {
            let (tx, rx) = mpsc::channel(64);
            match control.fd.try_clone().map(std::os::unix::net::UnixListener::from).and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::UnixListener::from_std(l)
            }) {
                Ok(l) => {
                    let front_uid = config.socket_front_user.map(|u| u.uid);
                    tokio::spawn(control::serve(l, tx.clone(), front_uid));
                }
                Err(e) => return fail(e),
            }
            if let Some(addr) = opts.rs_metrics_listen {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => {
                        tokio::spawn(metrics::serve(l, tx.clone()));
                    }
                    Err(e) => return fail(format!("cannot listen for metrics on {addr}: {e}")),
                }
            }
            let sup = Supervisor::new(COMPONENTS, libexec, config_json, component_sockets)
                .with_front_user(config.socket_front_user);
            match sup.run(rx).await {
                Ok(()) => {
                    // Every component has been reaped: nothing writes to the scratch space.
                    if let Err(e) = scratch::remove_scratch_dir(&config.paths.store_dir) {
                        eprintln!("warning: cannot remove the scratch directory: {e}");
                    }
                    0
                }
                Err(e) => fail(e),
            }
        }),
    };
    cleanup(&owned, &links, &control);
    code
}

fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("error: {e}");
    1
}

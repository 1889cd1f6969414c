//! The daemon's configuration as every component receives it.
//!
//! The supervisor builds one [`DaemonConfig`] from the command line of `guix-daemon` and the
//! environment (the same variables the C++ daemon reads) and hands it to each component it
//! spawns as JSON in the environment variable [`crate::component::ENV_CONFIG`]. The field names
//! follow the C++ daemon's setting keys (given in each field's doc) so that a reader who knows
//! `nix/libstore/globals.hh` finds their way.
//!
//! Every setting is already validated and typed here: a component never parses an option string.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Compression of build logs (`--log-compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogCompression {
    None,
    Gzip,
    Bzip2,
}

impl LogCompression {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LogCompression::None => "none",
            LogCompression::Gzip => "gzip",
            LogCompression::Bzip2 => "bzip2",
        }
    }
}

/// One `--listen` argument: an absolute path is a Unix socket, anything else `HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp { host: String, port: String },
}

/// Where the client listening sockets come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientSockets {
    /// Opened by the supervisor from these addresses (the default Unix socket when `--listen`
    /// was not given).
    Opened(Vec<ListenAddr>),
    /// Inherited from systemd (`LISTEN_PID`/`LISTEN_FDS`): this many sockets.
    SocketActivated(usize),
}

/// Every setting of the daemon. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonConfig {
    // --- Locations (environment, §1.3 of the daemon spec) ---
    /// `NIX_STORE_DIR`, then `NIX_STORE`; default `/gnu/store`.
    pub store_dir: PathBuf,
    /// `GUIX_STATE_DIRECTORY`; default `/var/guix`.
    pub state_dir: PathBuf,
    /// `GUIX_DATABASE_DIRECTORY`; default `$state_dir/db`.
    pub db_dir: PathBuf,
    /// `GUIX_LOG_DIRECTORY`; default `/var/log/guix`.
    pub log_dir: PathBuf,
    /// `GUIX_CONFIGURATION_DIRECTORY`; default `/etc/guix`.
    pub conf_dir: PathBuf,
    /// `GUIX`; default `$NIX_BIN_DIR/guix`. The program run for helpers (`guix substitute`, …).
    pub guix_program: PathBuf,
    /// The client sockets.
    pub client_sockets: ClientSockets,
    /// The last absolute `--listen` path, else the default socket (`settings.nixDaemonSocketFile`).
    pub daemon_socket_file: PathBuf,

    // --- Our own runtime layout ---
    /// Private directory (mode 0700) holding the internal link sockets:
    /// `$state_dir/daemon-rs`.
    pub runtime_dir: PathBuf,
    /// The supervisor's control socket: `$state_dir/daemon-socket/rs-control`.
    pub control_socket: PathBuf,

    // --- Settings (command line, §1.2) ---
    /// `--debug`.
    pub debug: bool,
    /// `--build-users-group`; `None` when not given (empty).
    pub build_users_group: Option<String>,
    /// `--cache-failures` (`build-cache-failure`).
    pub cache_failures: bool,
    /// `--chroot-directory`, in order (`build-extra-chroot-dirs`).
    pub extra_chroot_dirs: Vec<String>,
    /// `-c`/`--cores` (`build-cores`); 0 means all available.
    pub build_cores: u32,
    /// `-M`/`--max-jobs` (`build-max-jobs`).
    pub max_build_jobs: u32,
    /// `--max-silent-time` (`build-max-silent-time`), seconds; 0 means none.
    pub max_silent_time: i64,
    /// `--timeout` (`build-timeout`), seconds; 0 means none.
    pub build_timeout: i64,
    /// `--rounds` minus one (`build-repeat`).
    pub build_repeat: u64,
    /// Not `--disable-chroot` (`build-use-chroot`).
    pub use_chroot: bool,
    /// Not `--disable-deduplication` (`auto-optimise-store`).
    pub auto_optimise_store: bool,
    /// `--discover` (`discover`).
    pub discover: bool,
    /// `--gc-keep-derivations` (`gc-keep-derivations`).
    pub gc_keep_derivations: bool,
    /// `--gc-keep-outputs` (`gc-keep-outputs`).
    pub gc_keep_outputs: bool,
    /// `--impersonate-linux-2.6` (`build-impersonate-linux-26`).
    pub impersonate_linux_26: bool,
    /// Not `--isolate-host-loopback` (`useHostLoopback`).
    pub use_host_loopback: bool,
    /// `--log-compression` / `--disable-log-compression`.
    pub log_compression: LogCompression,
    /// Not `--lose-logs` (`build-keep-log`).
    pub keep_log: bool,
    /// Not `--no-offload` (`useBuildHook`).
    pub use_build_hook: bool,
    /// Not `--no-substitutes` (`build-use-substitutes`).
    pub use_substitutes: bool,
    /// `--substitute-urls`, split on spaces (`substitute-urls`).
    pub substitute_urls: Vec<String>,
    /// `--system` (`system`).
    pub system: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let c = DaemonConfig {
            store_dir: "/gnu/store".into(),
            state_dir: "/var/guix".into(),
            db_dir: "/var/guix/db".into(),
            log_dir: "/var/log/guix".into(),
            conf_dir: "/etc/guix".into(),
            guix_program: "/usr/bin/guix".into(),
            client_sockets: ClientSockets::Opened(vec![
                ListenAddr::Unix("/var/guix/daemon-socket/socket".into()),
                ListenAddr::Tcp { host: "localhost".into(), port: "44146".into() },
            ]),
            daemon_socket_file: "/var/guix/daemon-socket/socket".into(),
            runtime_dir: "/var/guix/daemon-rs".into(),
            control_socket: "/var/guix/daemon-socket/rs-control".into(),
            debug: false,
            build_users_group: Some("guixbuild".into()),
            cache_failures: false,
            extra_chroot_dirs: vec!["/a".into(), "/b=/c".into()],
            build_cores: 0,
            max_build_jobs: 1,
            max_silent_time: 3600,
            build_timeout: 86400,
            build_repeat: 0,
            use_chroot: true,
            auto_optimise_store: true,
            discover: false,
            gc_keep_derivations: true,
            gc_keep_outputs: false,
            impersonate_linux_26: false,
            use_host_loopback: true,
            log_compression: LogCompression::Gzip,
            keep_log: true,
            use_build_hook: true,
            use_substitutes: true,
            substitute_urls: vec!["https://bordeaux.guix.gnu.org".into()],
            system: "x86_64-linux".into(),
        };
        let json = serde_json::to_string(&c).unwrap();
        let back: DaemonConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}

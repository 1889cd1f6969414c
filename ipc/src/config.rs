//! The daemon's configuration as every component receives it.
//!
//! The supervisor builds one [`DaemonConfig`] from the command line of `guix-daemon` and the
//! environment (the same variables the C++ daemon reads) and hands it to each component it
//! spawns as JSON in the environment variable [`crate::component::ENV_CONFIG`]. The field names
//! follow the C++ daemon's setting keys (given in each field's doc) so that a reader who knows
//! `nix/libstore/globals.hh` finds their way.
//!
//! Every setting is already validated and typed here: a component never parses an option string.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use guix_formats::path::{canon_path, NotAbsolute};
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

// The directories' defaults: the one place every component takes them from.

/// `NIX_STORE_DIR`'s default: the configure-time `storedir` (also [`guix_formats::StoreDir`]'s
/// default, hence defined there).
pub use guix_formats::store_path::DEFAULT_STORE_DIR;
/// `GUIX_STATE_DIRECTORY`'s default: the configure-time `localstatedir` plus `/guix`.
pub const DEFAULT_STATE_DIR: &str = "/var/guix";
/// `GUIX_LOG_DIRECTORY`'s default.
pub const DEFAULT_LOG_DIR: &str = "/var/log/guix";
/// `GUIX_CONFIGURATION_DIRECTORY`'s default.
pub const DEFAULT_CONF_DIR: &str = "/etc/guix";
/// The configure-time `bindir` (that of Debian's package), used when `NIX_BIN_DIR` is unset.
pub const DEFAULT_BIN_DIR: &str = "/usr/bin";
/// The configure-time `GUIX_SUBSTITUTE_URLS`.
pub const DEFAULT_SUBSTITUTE_URLS: &str = "https://bordeaux.guix.gnu.org https://ci.guix.gnu.org";

/// The locations the daemon takes from the environment (`settings.processEnvironment()`, §1.3
/// of the daemon spec). The supervisor reads them ([`Paths::from_lookup`]); [`Paths::default`]
/// is what an empty environment gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paths {
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
}

impl Paths {
    /// From the process environment ([`Paths::from_lookup`]).
    pub fn from_env() -> Result<Paths, NotAbsolute> {
        Paths::from_lookup(|k| std::env::var_os(k))
    }

    /// `settings.processEnvironment()`, through an environment lookup (a function, so tests
    /// need not touch the process environment). As in C++, every directory is made canonical
    /// (`canonPath`: `.`, `..` and repeated slashes removed, a relative name refused) except
    /// `GUIX_DATABASE_DIRECTORY`, which is taken as it is; a variable that is set counts even
    /// when empty (and then fails: not absolute). The one reader of these variables.
    pub fn from_lookup(get: impl Fn(&str) -> Option<OsString>) -> Result<Paths, NotAbsolute> {
        let or = |k: &str, default: &str| get(k).unwrap_or_else(|| default.into());
        // In the C++ order, so the first error is the same.
        let store_dir =
            canon_path(get("NIX_STORE_DIR").or_else(|| get("NIX_STORE")).unwrap_or_else(|| DEFAULT_STORE_DIR.into()))?;
        let log_dir = canon_path(or("GUIX_LOG_DIRECTORY", DEFAULT_LOG_DIR))?;
        let state_dir = canon_path(or("GUIX_STATE_DIRECTORY", DEFAULT_STATE_DIR))?;
        let db_dir = get("GUIX_DATABASE_DIRECTORY").map(PathBuf::from).unwrap_or_else(|| state_dir.join("db"));
        let conf_dir = canon_path(or("GUIX_CONFIGURATION_DIRECTORY", DEFAULT_CONF_DIR))?;
        let bin_dir = canon_path(or("NIX_BIN_DIR", DEFAULT_BIN_DIR))?;
        let guix_program = canon_path(get("GUIX").map(PathBuf::from).unwrap_or_else(|| bin_dir.join("guix")))?;
        Ok(Paths { store_dir, state_dir, db_dir, log_dir, conf_dir, guix_program })
    }

    /// `$state/daemon-socket/socket`.
    pub fn default_socket(&self) -> PathBuf {
        self.state_dir.join("daemon-socket").join("socket")
    }
    /// `$state/daemon-socket/rs-control`.
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("daemon-socket").join("rs-control")
    }
    /// `$state/daemon-rs`: the internal link sockets.
    pub fn runtime_dir(&self) -> PathBuf {
        self.state_dir.join("daemon-rs")
    }
}

impl Default for Paths {
    fn default() -> Paths {
        let state_dir = PathBuf::from(DEFAULT_STATE_DIR);
        Paths {
            store_dir: DEFAULT_STORE_DIR.into(),
            db_dir: state_dir.join("db"),
            state_dir,
            log_dir: DEFAULT_LOG_DIR.into(),
            conf_dir: DEFAULT_CONF_DIR.into(),
            guix_program: Path::new(DEFAULT_BIN_DIR).join("guix"),
        }
    }
}

/// The system type this program was built for, in Guix's spelling (the default of `--system`).
pub fn default_system() -> String {
    let arch = match std::env::consts::ARCH {
        "x86" => "i686",
        "arm" => "armhf",
        "powerpc64" if cfg!(target_endian = "little") => "powerpc64le",
        a => a,
    };
    format!("{arch}-{}", std::env::consts::OS)
}

/// A user a component runs as instead of root: its ids, resolved by the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnprivilegedUser {
    pub uid: u32,
    pub gid: u32,
}

/// Every setting of the daemon. See the module documentation.
///
/// [`DaemonConfig::default`] is what the C++ `guix-daemon` of Guix 1.5.0 runs with when given
/// no option and an empty environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonConfig {
    /// The locations from the environment (flattened: the JSON has their fields at top level).
    #[serde(flatten)]
    pub paths: Paths,
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
    /// The user socket-front runs as (`--socket-front-user`), or `None` when it runs as the
    /// daemon's own user (no such user: see ARCHITECTURE.md, "Privileges").
    #[serde(default)]
    pub socket_front_user: Option<UnprivilegedUser>,
    /// The supervisor's effective uid: a client with this uid is trusted, like root (C++
    /// trusts the daemon's own uid). socket-front's own uid is not trusted unless it is this.
    #[serde(default)]
    pub daemon_uid: u32,

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

impl Default for DaemonConfig {
    fn default() -> DaemonConfig {
        let paths = Paths::default();
        DaemonConfig {
            client_sockets: ClientSockets::Opened(vec![ListenAddr::Unix(paths.default_socket())]),
            daemon_socket_file: paths.default_socket(),
            runtime_dir: paths.runtime_dir(),
            control_socket: paths.control_socket(),
            socket_front_user: None,
            daemon_uid: 0,
            paths,
            debug: false,
            build_users_group: None,
            cache_failures: false,
            extra_chroot_dirs: vec![],
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
            substitute_urls: DEFAULT_SUBSTITUTE_URLS.split_ascii_whitespace().map(str::to_owned).collect(),
            system: default_system(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(vars: &'static [(&'static str, &'static str)]) -> Result<Paths, NotAbsolute> {
        Paths::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into()))
    }

    #[test]
    fn paths_from_the_environment_are_canonical_as_in_cxx() {
        assert_eq!(paths(&[]), Ok(Paths::default()));
        let p = paths(&[
            ("NIX_STORE", "/other"),
            ("GUIX_STATE_DIRECTORY", "/st/./a/../b/"),
            ("GUIX_LOG_DIRECTORY", "/l//x"),
            ("GUIX_CONFIGURATION_DIRECTORY", "/c/."),
            ("NIX_BIN_DIR", "/bin/../sbin"),
        ])
        .unwrap();
        assert_eq!(p.store_dir, PathBuf::from("/other"));
        // The state directory is canonical, and so is everything derived from it.
        assert_eq!(p.state_dir, PathBuf::from("/st/b"));
        assert_eq!(p.db_dir, PathBuf::from("/st/b/db"));
        assert_eq!(p.control_socket(), PathBuf::from("/st/b/daemon-socket/rs-control"));
        assert_eq!((p.log_dir.as_path(), p.conf_dir.as_path()), (Path::new("/l/x"), Path::new("/c")));
        assert_eq!(p.guix_program, PathBuf::from("/sbin/guix"));
        let p = paths(&[
            ("NIX_STORE_DIR", "/a//b/./c/../store/"),
            ("NIX_STORE", "/ignored"),
            ("GUIX_DATABASE_DIRECTORY", "/d/./x"),
            ("GUIX", "/g/"),
        ])
        .unwrap();
        assert_eq!(p.store_dir, PathBuf::from("/a/b/store"));
        // Not canonicalised, as in C++.
        assert_eq!(p.db_dir, PathBuf::from("/d/./x"));
        assert_eq!(p.guix_program, PathBuf::from("/g"));
        for var in ["NIX_STORE_DIR", "GUIX_STATE_DIRECTORY", "GUIX_LOG_DIRECTORY"] {
            let rel = Paths::from_lookup(|k| (k == var).then(|| "rel".into()));
            assert_eq!(rel, Err(NotAbsolute("rel".into())), "{var}");
            let empty = Paths::from_lookup(|k| (k == var).then(OsString::new));
            assert_eq!(empty, Err(NotAbsolute("".into())), "{var} set but empty");
        }
    }

    #[test]
    fn json_round_trip() {
        let c = DaemonConfig {
            client_sockets: ClientSockets::Opened(vec![
                ListenAddr::Unix("/var/guix/daemon-socket/socket".into()),
                ListenAddr::Tcp { host: "localhost".into(), port: "44146".into() },
            ]),
            build_users_group: Some("guixbuild".into()),
            extra_chroot_dirs: vec!["/a".into(), "/b=/c".into()],
            substitute_urls: vec!["https://bordeaux.guix.gnu.org".into()],
            system: "x86_64-linux".into(),
            ..DaemonConfig::default()
        };
        let json = serde_json::to_string(&c).unwrap();
        // The paths are flattened: the JSON keeps one object with the C++ setting names.
        assert!(json.contains(r#""store_dir":"/gnu/store""#), "{json}");
        let back: DaemonConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}

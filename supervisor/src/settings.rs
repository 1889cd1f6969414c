//! From parsed options and the environment to a typed [`DaemonConfig`].
//!
//! The paths from environment variables (`settings.processEnvironment()`) are read by
//! [`guix_ipc::config::Paths::from_lookup`]; this is `settings.update()` (integer settings
//! checked, in the same order, with the same messages), the `--listen` addresses, plus our
//! refusals: options whose feature is not built and whose silent acceptance
//! would mislead are refused here with a clear message.

use guix_formats::path::{canon_path, NotAbsolute};
use guix_ipc::config::{default_system, ClientSockets, DaemonConfig, ListenAddr, Paths, DEFAULT_SUBSTITUTE_URLS};
use thiserror::Error;

use crate::cli::Options;

/// Default port of `--listen HOST` (`DEFAULT_GUIX_PORT`).
pub const DEFAULT_PORT: &str = "44146";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SettingError {
    /// Same text as `nix::Settings::_get` for integers.
    #[error("configuration setting `{0}' should have an integer value")]
    Integer(&'static str),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    NotAbsolute(#[from] NotAbsolute),
}

/// Interprets the `--listen` arguments (empty: the default socket).
pub fn listen_addrs(opts: &Options, paths: &Paths) -> Result<Vec<ListenAddr>, SettingError> {
    if opts.listen.is_empty() {
        return Ok(vec![ListenAddr::Unix(paths.default_socket())]);
    }
    opts.listen
        .iter()
        .map(|l| {
            if l.starts_with('/') {
                Ok(ListenAddr::Unix(canon_path(l)?))
            } else {
                let (host, port) = match l.rsplit_once(':') {
                    Some((h, p)) => (h.to_owned(), p.to_owned()),
                    None => (l.clone(), DEFAULT_PORT.to_owned()),
                };
                Ok(ListenAddr::Tcp { host, port })
            }
        })
        .collect()
}

/// Refuses what we cannot do yet and would otherwise silently not do.
pub fn check_supported(opts: &Options, addrs: &[ListenAddr]) -> Result<(), SettingError> {
    if let Some(ListenAddr::Tcp { host, port }) = addrs.iter().find(|a| matches!(a, ListenAddr::Tcp { .. })) {
        return Err(SettingError::Unsupported(format!(
            "--listen={host}:{port}: listening on TCP is not supported by guix-daemon-rs yet (use an absolute socket file name)"
        )));
    }
    if opts.discover {
        return Err(SettingError::Unsupported(
            "--discover=yes: discovery of substitute servers is not supported by guix-daemon-rs yet".to_owned(),
        ));
    }
    Ok(())
}

/// `string2Int` (an `istream >>` of the type): optional leading blanks, a sign, digits, and
/// nothing after. Unsigned types take a negative number modulo 2^n, as `istream` does.
fn parse_u32(s: &str) -> Option<u32> {
    let (neg, mag) = parse_magnitude(s)?;
    let n = u32::try_from(mag).ok()?;
    Some(if neg { n.wrapping_neg() } else { n })
}

fn parse_i64(s: &str) -> Option<i64> {
    let (neg, mag) = parse_magnitude(s)?;
    if neg {
        0i64.checked_sub_unsigned(mag)
    } else {
        i64::try_from(mag).ok()
    }
}

fn parse_magnitude(s: &str) -> Option<(bool, u64)> {
    let t = s.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, t.get(1..)?),
        Some(b'+') => (false, t.get(1..)?),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n = 0u64;
    for b in digits.bytes() {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((neg, n))
}

fn int_setting<T>(
    raw: &Option<String>,
    key: &'static str,
    default: T,
    parse: fn(&str) -> Option<T>,
) -> Result<T, SettingError> {
    match raw {
        None => Ok(default),
        Some(s) => parse(s).ok_or(SettingError::Integer(key)),
    }
}

/// Builds the configuration (`settings.update()`): integer settings are checked in the order of
/// the C++ daemon, so the first error reported is the same.
pub fn build_config(
    opts: &Options,
    paths: &Paths,
    client_sockets: ClientSockets,
) -> Result<DaemonConfig, SettingError> {
    let max_build_jobs = int_setting(&opts.max_jobs, "build-max-jobs", 1, parse_u32)?;
    let build_cores = int_setting(&opts.cores, "build-cores", 0, parse_u32)?;
    let max_silent_time = int_setting(&opts.max_silent_time, "build-max-silent-time", 3600, parse_i64)?;
    let build_timeout = int_setting(&opts.timeout, "build-timeout", 86400, parse_i64)?;
    let daemon_socket_file = match &client_sockets {
        ClientSockets::Opened(addrs) => addrs
            .iter()
            .rev()
            .find_map(|a| match a {
                ListenAddr::Unix(p) => Some(p.clone()),
                ListenAddr::Tcp { .. } => None,
            })
            .unwrap_or_else(|| paths.default_socket()),
        ClientSockets::SocketActivated(_) => paths.default_socket(),
    };
    Ok(DaemonConfig {
        paths: paths.clone(),
        client_sockets,
        daemon_socket_file,
        runtime_dir: paths.runtime_dir(),
        control_socket: paths.control_socket(),
        socket_front_user: None,
        daemon_uid: nix::unistd::geteuid().as_raw(),
        debug: opts.debug,
        build_users_group: opts.build_users_group.clone().filter(|g| !g.is_empty()),
        cache_failures: opts.cache_failures,
        extra_chroot_dirs: opts.chroot_dirs.clone(),
        build_cores,
        max_build_jobs,
        max_silent_time,
        build_timeout,
        build_repeat: opts.build_repeat,
        use_chroot: !opts.disable_chroot,
        auto_optimise_store: !opts.disable_deduplication,
        discover: opts.discover,
        gc_keep_derivations: opts.gc_keep_derivations,
        gc_keep_outputs: opts.gc_keep_outputs,
        impersonate_linux_26: opts.impersonate_linux_26,
        use_host_loopback: !opts.isolate_host_loopback,
        log_compression: opts.log_compression,
        keep_log: !opts.lose_logs,
        use_build_hook: !opts.no_offload,
        use_substitutes: !opts.no_substitutes,
        substitute_urls: opts
            .substitute_urls
            .as_deref()
            .unwrap_or(DEFAULT_SUBSTITUTE_URLS)
            .split_ascii_whitespace()
            .map(str::to_owned)
            .collect(),
        system: opts.system.clone().unwrap_or_else(default_system),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn paths(vars: &[(&str, &str)]) -> Paths {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Paths::from_lookup(|k| m.get(k).map(Into::into)).unwrap()
    }

    fn config(opts: &Options) -> Result<DaemonConfig, SettingError> {
        let p = paths(&[]);
        let addrs = listen_addrs(opts, &p)?;
        build_config(opts, &p, ClientSockets::Opened(addrs))
    }

    #[test]
    fn no_option_and_no_environment_is_the_default_config() {
        assert_eq!(config(&Options::default()), Ok(DaemonConfig::default()));
    }

    #[test]
    fn integer_settings() {
        let c = config(&Options::default()).unwrap();
        assert_eq!((c.max_build_jobs, c.build_cores, c.max_silent_time, c.build_timeout), (1, 0, 3600, 86400));
        let o = Options {
            cores: Some("-1".into()),
            max_jobs: Some(" +5".into()),
            timeout: Some("-3".into()),
            ..Options::default()
        };
        let c = config(&o).unwrap();
        assert_eq!((c.build_cores, c.max_build_jobs, c.build_timeout), (u32::MAX, 5, -3));
        for (o, key) in [
            (Options { max_jobs: Some("x".into()), ..Options::default() }, "build-max-jobs"),
            (Options { max_jobs: Some(String::new()), ..Options::default() }, "build-max-jobs"),
            (Options { max_jobs: Some("99999999999".into()), ..Options::default() }, "build-max-jobs"),
            (Options { cores: Some("5x".into()), ..Options::default() }, "build-cores"),
            (Options { max_silent_time: Some("1.5".into()), ..Options::default() }, "build-max-silent-time"),
            (Options { timeout: Some("abc".into()), ..Options::default() }, "build-timeout"),
            // Reported in the C++ order: max-jobs before cores.
            (Options { cores: Some("x".into()), max_jobs: Some("x".into()), ..Options::default() }, "build-max-jobs"),
        ] {
            assert_eq!(config(&o), Err(SettingError::Integer(key)));
        }
        assert_eq!(
            SettingError::Integer("build-max-jobs").to_string(),
            "configuration setting `build-max-jobs' should have an integer value"
        );
    }

    #[test]
    fn listen_and_refusals() {
        let p = paths(&[]);
        let o = Options { listen: vec!["/a/../s".into(), "host".into(), "h:1".into()], ..Options::default() };
        let a = listen_addrs(&o, &p).unwrap();
        assert_eq!(
            a,
            vec![
                ListenAddr::Unix("/s".into()),
                ListenAddr::Tcp { host: "host".into(), port: DEFAULT_PORT.into() },
                ListenAddr::Tcp { host: "h".into(), port: "1".into() },
            ]
        );
        assert!(matches!(check_supported(&o, &a), Err(SettingError::Unsupported(m)) if m.contains("TCP")));
        let o = Options { discover: true, ..Options::default() };
        assert!(check_supported(&o, &[]).is_err());
        let o = Options { listen: vec!["/x/s1".into(), "/x/s2".into()], ..Options::default() };
        assert_eq!(config(&o).unwrap().daemon_socket_file, PathBuf::from("/x/s2"));
    }

    #[test]
    fn flags_map_to_settings() {
        let o = Options {
            build_users_group: Some(String::new()),
            substitute_urls: Some(" a  b ".into()),
            disable_chroot: true,
            isolate_host_loopback: true,
            ..Options::default()
        };
        let c = config(&o).unwrap();
        assert_eq!(c.build_users_group, None);
        assert_eq!(c.substitute_urls, vec!["a", "b"]);
        assert!(!c.use_chroot && !c.use_host_loopback && c.keep_log && c.use_substitutes && c.auto_optimise_store);
        assert_eq!(config(&Options::default()).unwrap().substitute_urls.len(), 2);
        assert!(default_system().ends_with("-linux"));
    }
}

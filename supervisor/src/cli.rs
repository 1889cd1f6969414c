//! The command line of `guix-daemon` 1.5.0, parsed the way GNU argp parses it.
//!
//! argp (over glibc `getopt_long`) gives the C++ daemon its behaviour, which administrators and
//! service files rely on: long options may be abbreviated to any unambiguous prefix, take their
//! value after `=` or as the next argument (optional values only after `=`), short options may
//! be clustered (`-Vc4`), options are processed in order (so `--help --bogus` prints the help
//! and `--bogus --help` an error), a stray argument is "Too many arguments", and usage errors
//! exit with status 64. This module reproduces that, message for message (the program name is
//! ours), and stores each option's value without interpreting integer settings: like the C++
//! daemon (`settings.update()`), those are checked later by [`crate::settings`], after the
//! sockets are open.

use std::net::SocketAddr;
use std::path::PathBuf;

use guix_ipc::config::LogCompression;

/// The version line printed by `--version`.
pub const VERSION_LINE: &str = concat!(
    "guix-daemon-rs (guix-daemon-rs) ",
    env!("CARGO_PKG_VERSION"),
    "; compatible with guix-daemon (GNU Guix) 1.5.0"
);

/// Exit status of argp usage errors (`EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// Everything given on the command line, before integer settings are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub system: Option<String>,
    /// `-c`/`--cores`, unchecked (`build-cores`).
    pub cores: Option<String>,
    /// `-M`/`--max-jobs`, unchecked (`build-max-jobs`).
    pub max_jobs: Option<String>,
    /// `--timeout`, unchecked (`build-timeout`).
    pub timeout: Option<String>,
    /// `--max-silent-time`, unchecked (`build-max-silent-time`).
    pub max_silent_time: Option<String>,
    pub disable_chroot: bool,
    pub chroot_dirs: Vec<String>,
    pub build_users_group: Option<String>,
    pub no_substitutes: bool,
    pub substitute_urls: Option<String>,
    pub no_offload: bool,
    pub cache_failures: bool,
    /// `--rounds` minus one.
    pub build_repeat: u64,
    pub lose_logs: bool,
    pub log_compression: LogCompression,
    pub discover: bool,
    pub disable_deduplication: bool,
    pub impersonate_linux_26: bool,
    pub isolate_host_loopback: bool,
    pub gc_keep_outputs: bool,
    pub gc_keep_derivations: bool,
    pub listen: Vec<String>,
    pub debug: bool,
    /// `--rs-metrics-listen`: our own, off by default.
    pub rs_metrics_listen: Option<SocketAddr>,
    /// `--rs-libexec-dir`: our own.
    pub rs_libexec_dir: Option<PathBuf>,
    /// `--rs-socket-front-user`: our own; the user socket-front runs as (see
    /// `crate::privileges`). `None`: [`crate::privileges::DEFAULT_SOCKET_FRONT_USER`] if it
    /// exists.
    pub rs_socket_front_user: Option<String>,
}

impl Default for Options {
    /// The defaults `guix-daemon`'s `main` sets before parsing.
    fn default() -> Self {
        Options {
            system: None,
            cores: None,
            max_jobs: None,
            timeout: None,
            max_silent_time: None,
            disable_chroot: false,
            chroot_dirs: Vec::new(),
            build_users_group: None,
            no_substitutes: false,
            substitute_urls: None,
            no_offload: false,
            cache_failures: false,
            build_repeat: 0,
            lose_logs: false,
            log_compression: LogCompression::Gzip,
            discover: false,
            disable_deduplication: false,
            impersonate_linux_26: false,
            isolate_host_loopback: false,
            gc_keep_outputs: false,
            gc_keep_derivations: true,
            listen: Vec::new(),
            debug: false,
            rs_metrics_listen: None,
            rs_libexec_dir: None,
            rs_socket_front_user: None,
        }
    }
}

/// Parsing ended without options to run with: print `stdout`/`stderr` and exit with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Exit {
    fn usage_error(program: &str, msg: String) -> Exit {
        Exit {
            code: EXIT_USAGE,
            stdout: String::new(),
            stderr: format!("{program}: {msg}\nTry `{program} --help' or `{program} --usage' for more information.\n"),
        }
    }
    fn error(msg: String) -> Exit {
        Exit { code: 1, stdout: String::new(), stderr: format!("error: {msg}\n") }
    }
    fn print(text: String) -> Exit {
        Exit { code: 0, stdout: text, stderr: String::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg {
    None,
    Required,
    Optional,
}

/// Which setting an option sets; aliases share a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    System,
    Cores,
    MaxJobs,
    Timeout,
    MaxSilentTime,
    DisableChroot,
    ChrootDir,
    BuildUsersGroup,
    NoSubstitutes,
    SubstituteUrls,
    NoBuildHook,
    CacheFailures,
    Rounds,
    LoseLogs,
    DisableLogCompression,
    LogCompression,
    Discover,
    DisableDeduplication,
    ImpersonateLinux26,
    IsolateHostLoopback,
    GcKeepOutputs,
    GcKeepDerivations,
    Listen,
    Debug,
    RsLibexecDir,
    RsMetricsListen,
    RsSocketFrontUser,
    Help,
    Usage,
    Version,
}

struct Opt {
    long: &'static str,
    short: Option<char>,
    key: Key,
    arg: Arg,
}

const fn opt(long: &'static str, short: Option<char>, key: Key, arg: Arg) -> Opt {
    Opt { long, short, key, arg }
}

/// The option table in the C++ daemon's order (getopt lists ambiguous candidates in this
/// order), hidden aliases included, then ours, then argp's own.
const OPTIONS: &[Opt] = &[
    opt("system", None, Key::System, Arg::Required),
    opt("cores", Some('c'), Key::Cores, Arg::Required),
    opt("max-jobs", Some('M'), Key::MaxJobs, Arg::Required),
    opt("timeout", None, Key::Timeout, Arg::Required),
    opt("max-silent-time", None, Key::MaxSilentTime, Arg::Required),
    opt("disable-chroot", None, Key::DisableChroot, Arg::None),
    opt("chroot-directory", None, Key::ChrootDir, Arg::Required),
    opt("build-users-group", None, Key::BuildUsersGroup, Arg::Required),
    opt("no-substitutes", None, Key::NoSubstitutes, Arg::None),
    opt("substitute-urls", None, Key::SubstituteUrls, Arg::Required),
    opt("no-offload", None, Key::NoBuildHook, Arg::None),
    opt("no-build-hook", None, Key::NoBuildHook, Arg::None),
    opt("cache-failures", None, Key::CacheFailures, Arg::None),
    opt("rounds", None, Key::Rounds, Arg::Required),
    opt("lose-logs", None, Key::LoseLogs, Arg::None),
    opt("disable-log-compression", None, Key::DisableLogCompression, Arg::None),
    opt("log-compression", None, Key::LogCompression, Arg::Required),
    opt("discover", None, Key::Discover, Arg::Optional),
    opt("disable-deduplication", None, Key::DisableDeduplication, Arg::None),
    opt("disable-store-optimization", None, Key::DisableDeduplication, Arg::None),
    opt("impersonate-linux-2.6", None, Key::ImpersonateLinux26, Arg::None),
    opt("isolate-host-loopback", None, Key::IsolateHostLoopback, Arg::None),
    opt("gc-keep-outputs", None, Key::GcKeepOutputs, Arg::Optional),
    opt("gc-keep-derivations", None, Key::GcKeepDerivations, Arg::Optional),
    opt("listen", None, Key::Listen, Arg::Required),
    opt("debug", None, Key::Debug, Arg::None),
    opt("rs-libexec-dir", None, Key::RsLibexecDir, Arg::Required),
    opt("rs-metrics-listen", None, Key::RsMetricsListen, Arg::Required),
    opt("rs-socket-front-user", None, Key::RsSocketFrontUser, Arg::Required),
    opt("help", Some('?'), Key::Help, Arg::None),
    opt("usage", None, Key::Usage, Arg::None),
    opt("version", Some('V'), Key::Version, Arg::None),
];

/// Parses `args` (without the program name). `program` is the name used in messages.
pub fn parse(program: &str, args: &[String]) -> Result<Options, Exit> {
    let mut opts = Options::default();
    let mut positional = 0usize;
    let mut i = 0usize;
    while let Some(arg) = args.get(i) {
        i += 1;
        if arg == "--" {
            positional += args.len().saturating_sub(i);
            break;
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let o = lookup_long(program, name)?;
            let value = match (o.arg, inline) {
                (Arg::None, Some(_)) => {
                    return Err(Exit::usage_error(program, format!("option '--{}' doesn't allow an argument", o.long)))
                }
                (Arg::None, None) | (Arg::Optional, None) => None,
                (_, Some(v)) => Some(v.to_owned()),
                (Arg::Required, None) => match args.get(i) {
                    Some(v) => {
                        i += 1;
                        Some(v.clone())
                    }
                    None => {
                        return Err(Exit::usage_error(program, format!("option '--{}' requires an argument", o.long)))
                    }
                },
            };
            apply(&mut opts, o.key, value)?;
        } else if let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) {
            for (pos, c) in cluster.char_indices() {
                let o = OPTIONS
                    .iter()
                    .find(|o| o.short == Some(c))
                    .ok_or_else(|| Exit::usage_error(program, format!("invalid option -- '{c}'")))?;
                if o.arg == Arg::None {
                    apply(&mut opts, o.key, None)?;
                    continue;
                }
                let rest = &cluster[pos + c.len_utf8()..];
                let value = if !rest.is_empty() {
                    rest.to_owned()
                } else if let Some(v) = args.get(i) {
                    i += 1;
                    v.clone()
                } else {
                    return Err(Exit::usage_error(program, format!("option requires an argument -- '{c}'")));
                };
                apply(&mut opts, o.key, Some(value))?;
                break;
            }
        } else {
            // getopt moves non-options to the end; argp then rejects them.
            positional += 1;
        }
    }
    if positional > 0 {
        return Err(Exit::usage_error(program, "Too many arguments".to_owned()));
    }
    Ok(opts)
}

fn lookup_long(program: &str, name: &str) -> Result<&'static Opt, Exit> {
    if let Some(o) = OPTIONS.iter().find(|o| o.long == name) {
        return Ok(o);
    }
    let matches: Vec<&Opt> =
        if name.is_empty() { Vec::new() } else { OPTIONS.iter().filter(|o| o.long.starts_with(name)).collect() };
    match matches.as_slice() {
        [] => Err(Exit::usage_error(program, format!("unrecognized option '--{name}'"))),
        [first, rest @ ..] if rest.iter().all(|o| o.key == first.key && o.arg == first.arg) => Ok(first),
        all => {
            let list: Vec<String> = all.iter().map(|o| format!("'--{}'", o.long)).collect();
            Err(Exit::usage_error(
                program,
                format!("option '--{name}' is ambiguous; possibilities: {}", list.join(" ")),
            ))
        }
    }
}

/// `string_to_bool` of guix-daemon.cc: missing means yes; `yes`/`no` in any case.
fn parse_bool(value: Option<&str>) -> Result<bool, Exit> {
    match value {
        None => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("yes") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("no") => Ok(false),
        Some(v) => Err(Exit::error(format!("'{v}': invalid Boolean value"))),
    }
}

/// `strtoul` as guix-daemon.cc uses it for `--rounds`: leading blanks, a sign, digits;
/// accepted only if the whole string was consumed (so the empty string is 0). Saturates at the
/// maximum and wraps negative numbers, as `strtoul` does.
fn parse_rounds(s: &str) -> Option<u64> {
    let t = s.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() {
        // No conversion: strtoul leaves `end` at the start.
        return s.is_empty().then_some(0);
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = digits.bytes().fold(0u64, |acc, b| acc.saturating_mul(10).saturating_add(u64::from(b - b'0')));
    Some(if neg { n.wrapping_neg() } else { n })
}

fn apply(opts: &mut Options, key: Key, value: Option<String>) -> Result<(), Exit> {
    let v = value.clone().unwrap_or_default();
    match key {
        Key::System => opts.system = Some(v),
        Key::Cores => opts.cores = Some(v),
        Key::MaxJobs => opts.max_jobs = Some(v),
        Key::Timeout => opts.timeout = Some(v),
        Key::MaxSilentTime => opts.max_silent_time = Some(v),
        Key::DisableChroot => opts.disable_chroot = true,
        Key::ChrootDir => opts.chroot_dirs.push(v),
        Key::BuildUsersGroup => opts.build_users_group = Some(v),
        Key::NoSubstitutes => opts.no_substitutes = true,
        Key::SubstituteUrls => opts.substitute_urls = Some(v),
        Key::NoBuildHook => opts.no_offload = true,
        Key::CacheFailures => opts.cache_failures = true,
        Key::Rounds => {
            let n = parse_rounds(&v).ok_or_else(|| Exit::error(format!("{v}: invalid number of rounds")))?;
            // The C++ daemon stores n - 1 even for 0, which wraps to a huge repeat count; we
            // treat 0 like 1 (no repetition) instead.
            opts.build_repeat = n.saturating_sub(1);
        }
        Key::LoseLogs => opts.lose_logs = true,
        Key::DisableLogCompression => opts.log_compression = LogCompression::None,
        Key::LogCompression => {
            opts.log_compression = match v.as_str() {
                "none" => LogCompression::None,
                "gzip" => LogCompression::Gzip,
                "bzip2" => LogCompression::Bzip2,
                _ => return Err(Exit::error(format!("{v}: unknown compression type"))),
            }
        }
        Key::Discover => opts.discover = parse_bool(value.as_deref())?,
        Key::DisableDeduplication => opts.disable_deduplication = true,
        Key::ImpersonateLinux26 => opts.impersonate_linux_26 = true,
        Key::IsolateHostLoopback => opts.isolate_host_loopback = true,
        Key::GcKeepOutputs => opts.gc_keep_outputs = parse_bool(value.as_deref())?,
        Key::GcKeepDerivations => opts.gc_keep_derivations = parse_bool(value.as_deref())?,
        Key::Listen => opts.listen.push(v),
        Key::Debug => opts.debug = true,
        Key::RsLibexecDir => opts.rs_libexec_dir = Some(PathBuf::from(v)),
        Key::RsSocketFrontUser => opts.rs_socket_front_user = Some(v),
        Key::RsMetricsListen => {
            opts.rs_metrics_listen =
                Some(v.parse().map_err(|_| {
                    Exit::error(format!("{v}: invalid address for --rs-metrics-listen (expected IP:PORT)"))
                })?)
        }
        Key::Help => return Err(Exit::print(help_text())),
        Key::Usage => return Err(Exit::print(usage_text())),
        Key::Version => return Err(Exit::print(format!("{VERSION_LINE}\n"))),
    }
    Ok(())
}

/// The text of `--help`, laid out as argp lays it out.
pub fn help_text() -> String {
    HELP.to_owned()
}

/// The text of `--usage`.
pub fn usage_text() -> String {
    USAGE.to_owned()
}

const HELP: &str = "\
Usage: guix-daemon-rs [OPTION...]
guix-daemon-rs -- perform derivation builds and store accesses

      --build-users-group=GROUP   perform builds as a user of GROUP
      --cache-failures       cache build failures
      --chroot-directory=DIR add DIR to the build chroot
  -c, --cores=N              use N CPU cores to build each derivation; 0 means
                             as many as available
      --debug                produce debugging output
      --disable-chroot       disable chroot builds
      --disable-deduplication   disable automatic file \"deduplication\" in the
                             store
      --discover[=yes/no]    use substitute servers discovered on the local
                             network
      --gc-keep-derivations[=yes/no]
                             tell whether the GC must keep derivations
                             corresponding to live outputs
      --gc-keep-outputs[=yes/no]   tell whether the GC must keep outputs of
                             live derivations
      --impersonate-linux-2.6   impersonate Linux 2.6
      --isolate-host-loopback   do not allow fixed-output chroot builds to
                             access the host loopback
      --listen=SOCKET        listen for connections on SOCKET
      --log-compression=TYPE use the specified compression type for build logs
      --lose-logs            do not keep build logs
      --max-silent-time=SECONDS   mark builds as failed after SECONDS of
                             silence
  -M, --max-jobs=N           allow at most N build jobs
      --no-offload           do not attempt to offload builds
      --no-substitutes       do not use substitutes
      --rounds=N             build each derivation N times in a row
      --rs-libexec-dir=DIR   (guix-daemon-rs) run the component programs
                             guix-COMPONENT from DIR
      --rs-metrics-listen=ADDR   (guix-daemon-rs) serve Prometheus metrics
                             over HTTP on ADDR (IP:PORT); off by default
      --rs-socket-front-user=USER   (guix-daemon-rs) run the socket-front
                             component (client connections) as USER, without
                             capabilities; default: guix-daemon-rs if that
                             user exists, else root with a warning
      --substitute-urls=URLS use URLS as the default list of substitute
                             providers
      --system=SYSTEM        assume SYSTEM as the current system type
      --timeout=SECONDS      mark builds as failed after SECONDS of activity
  -?, --help                 Give this help list
      --usage                Give a short usage message
  -V, --version              Print program version

Mandatory or optional arguments to long options are also mandatory or optional
for any corresponding short options.


This program is a daemon meant to run in the background.  It serves requests
sent over a Unix-domain socket.  It accesses the store, and builds derivations
on behalf of its clients.

Control subcommands (guix-daemon-rs only):
  guix-daemon-rs ctl status              show the components and their state
  guix-daemon-rs ctl restart COMPONENT   restart one component now

Report bugs to https://codeberg.org/guix/guix/issues/.
";

const USAGE: &str = "\
Usage: guix-daemon-rs [-?V] [-c N] [-M N] [--build-users-group=GROUP]
            [--cache-failures] [--chroot-directory=DIR] [--cores=N] [--debug]
            [--disable-chroot] [--disable-deduplication] [--discover[=yes/no]]
            [--gc-keep-derivations[=yes/no]] [--gc-keep-outputs[=yes/no]]
            [--impersonate-linux-2.6] [--isolate-host-loopback]
            [--listen=SOCKET] [--log-compression=TYPE] [--lose-logs]
            [--max-silent-time=SECONDS] [--max-jobs=N] [--no-offload]
            [--no-substitutes] [--rounds=N] [--rs-libexec-dir=DIR]
            [--rs-metrics-listen=ADDR] [--rs-socket-front-user=USER]
            [--substitute-urls=URLS] [--system=SYSTEM] [--timeout=SECONDS]
            [--help] [--usage] [--version]
";

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "guix-daemon-rs";

    fn ok(args: &[&str]) -> Options {
        let v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(P, &v).unwrap_or_else(|e| panic!("{args:?}: {e:?}"))
    }
    fn err(args: &[&str]) -> Exit {
        let v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(P, &v).expect_err("should fail")
    }
    fn usage(msg: &str) -> Exit {
        Exit::usage_error(P, msg.to_owned())
    }

    #[test]
    fn defaults() {
        let o = ok(&[]);
        assert_eq!(o, Options::default());
        assert!(o.gc_keep_derivations && !o.gc_keep_outputs);
        assert_eq!(o.log_compression, LogCompression::Gzip);
    }

    #[test]
    fn every_option() {
        let o = ok(&[
            "--system=i686-linux",
            "-c",
            "4",
            "-M3",
            "--timeout",
            "10",
            "--max-silent-time=20",
            "--disable-chroot",
            "--chroot-directory=/a",
            "--chroot-directory",
            "/b=/c",
            "--build-users-group=guixbuild",
            "--no-substitutes",
            "--substitute-urls=https://a https://b",
            "--no-offload",
            "--cache-failures",
            "--rounds=3",
            "--lose-logs",
            "--log-compression=bzip2",
            "--discover=no",
            "--disable-deduplication",
            "--impersonate-linux-2.6",
            "--isolate-host-loopback",
            "--gc-keep-outputs",
            "--gc-keep-derivations=NO",
            "--listen=/x/s",
            "--listen",
            "/y/s",
            "--debug",
            "--rs-libexec-dir=/lib",
            "--rs-metrics-listen=127.0.0.1:9100",
            "--rs-socket-front-user=nobody",
        ]);
        assert_eq!(o.system.as_deref(), Some("i686-linux"));
        assert_eq!(o.cores.as_deref(), Some("4"));
        assert_eq!(o.max_jobs.as_deref(), Some("3"));
        assert_eq!(o.timeout.as_deref(), Some("10"));
        assert_eq!(o.max_silent_time.as_deref(), Some("20"));
        assert!(o.disable_chroot && o.no_substitutes && o.no_offload && o.cache_failures && o.lose_logs);
        assert_eq!(o.chroot_dirs, vec!["/a", "/b=/c"]);
        assert_eq!(o.build_users_group.as_deref(), Some("guixbuild"));
        assert_eq!(o.substitute_urls.as_deref(), Some("https://a https://b"));
        assert_eq!(o.build_repeat, 2);
        assert_eq!(o.log_compression, LogCompression::Bzip2);
        assert!(!o.discover && o.disable_deduplication && o.impersonate_linux_26 && o.isolate_host_loopback);
        assert!(o.gc_keep_outputs && !o.gc_keep_derivations);
        assert_eq!(o.listen, vec!["/x/s", "/y/s"]);
        assert!(o.debug);
        assert_eq!(o.rs_libexec_dir, Some(PathBuf::from("/lib")));
        assert_eq!(o.rs_socket_front_user.as_deref(), Some("nobody"));
        assert_eq!(o.rs_metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn aliases_and_abbreviations() {
        assert!(ok(&["--disable-store-optimization"]).disable_deduplication);
        assert!(ok(&["--no-build-hook"]).no_offload);
        assert_eq!(ok(&["--disable-log-compression"]).log_compression, LogCompression::None);
        assert_eq!(ok(&["--list=/s"]).listen, vec!["/s"]);
        assert!(ok(&["--debu"]).debug);
        assert!(ok(&["--disc=YES"]).discover);
        assert!(ok(&["--disable-s"]).disable_deduplication);
        assert_eq!(ok(&["--log-c=none"]).log_compression, LogCompression::None);
        // Aliases of one option are not ambiguous.
        assert!(ok(&["--no-b"]).no_offload);
    }

    #[test]
    fn short_options_cluster() {
        let o = ok(&["-c4", "-M", "2"]);
        assert_eq!((o.cores.as_deref(), o.max_jobs.as_deref()), (Some("4"), Some("2")));
        assert_eq!(ok(&["-Mx"]).max_jobs.as_deref(), Some("x"));
        assert_eq!(err(&["-Vc4"]).stdout, format!("{VERSION_LINE}\n"));
    }

    #[test]
    fn booleans() {
        for (v, b) in [("yes", true), ("YES", true), ("No", false), ("no", false)] {
            assert_eq!(ok(&[&format!("--gc-keep-outputs={v}")]).gc_keep_outputs, b);
        }
        assert_eq!(err(&["--gc-keep-outputs=maybe"]), Exit::error("'maybe': invalid Boolean value".into()));
        assert_eq!(err(&["--discover="]), Exit::error("'': invalid Boolean value".into()));
        assert_eq!(err(&["--gc-keep-derivations=1"]).code, 1);
        // An optional value is only taken after `=`.
        assert_eq!(err(&["--discover", "maybe"]), usage("Too many arguments"));
    }

    #[test]
    fn log_compression_and_rounds_errors() {
        assert_eq!(err(&["--log-compression=zstd"]), Exit::error("zstd: unknown compression type".into()));
        assert_eq!(err(&["--log-compression=GZIP"]), Exit::error("GZIP: unknown compression type".into()));
        assert_eq!(err(&["--rounds=x"]), Exit::error("x: invalid number of rounds".into()));
        assert_eq!(err(&["--rounds=5x"]), Exit::error("5x: invalid number of rounds".into()));
        assert_eq!(err(&["--rounds= "]).code, 1);
        assert_eq!(ok(&["--rounds=0"]).build_repeat, 0);
        assert_eq!(ok(&["--rounds="]).build_repeat, 0);
        assert_eq!(ok(&["--rounds= +7"]).build_repeat, 6);
        assert_eq!(ok(&["--rounds=99999999999999999999"]).build_repeat, u64::MAX - 1);
        assert_eq!(err(&["--rs-metrics-listen=nope"]).code, 1);
    }

    #[test]
    fn usage_errors_exit_64() {
        assert_eq!(err(&["--bogus"]), usage("unrecognized option '--bogus'"));
        assert_eq!(err(&["--allow-aslr"]), usage("unrecognized option '--allow-aslr'"));
        assert_eq!(err(&["-x"]), usage("invalid option -- 'x'"));
        assert_eq!(err(&["-h"]), usage("invalid option -- 'h'"));
        assert_eq!(err(&["--listen"]), usage("option '--listen' requires an argument"));
        assert_eq!(err(&["-c"]), usage("option requires an argument -- 'c'"));
        assert_eq!(err(&["--debug=x"]), usage("option '--debug' doesn't allow an argument"));
        assert_eq!(err(&["--version=3"]), usage("option '--version' doesn't allow an argument"));
        assert_eq!(err(&["extra"]), usage("Too many arguments"));
        assert_eq!(err(&["--", "--debug"]), usage("Too many arguments"));
        assert_eq!(
            err(&["--dis"]),
            usage("option '--dis' is ambiguous; possibilities: '--disable-chroot' '--disable-log-compression' '--discover' '--disable-deduplication' '--disable-store-optimization'")
        );
        let e = err(&["--bogus"]);
        assert_eq!(e.code, 64);
        assert_eq!(
            e.stderr,
            "guix-daemon-rs: unrecognized option '--bogus'\nTry `guix-daemon-rs --help' or `guix-daemon-rs --usage' for more information.\n"
        );
    }

    #[test]
    fn options_act_in_order() {
        assert_eq!(err(&["--help", "--bogus"]).code, 0);
        assert_eq!(err(&["--bogus", "--help"]).code, 64);
        assert_eq!(err(&["-V", "-x"]).stdout, format!("{VERSION_LINE}\n"));
        assert_eq!(err(&["--gc-keep-outputs=maybe", "--bogus"]).code, 1);
    }

    #[test]
    fn help_usage_version() {
        for a in ["--help", "-?", "--he"] {
            let e = err(&[a]);
            assert_eq!(e.code, 0);
            assert!(e.stdout.starts_with("Usage: guix-daemon-rs [OPTION...]\n"));
        }
        let help = help_text();
        for o in OPTIONS
            .iter()
            .filter(|o| !matches!(o.long, "no-build-hook" | "disable-log-compression" | "disable-store-optimization"))
        {
            assert!(help.contains(&format!("--{}", o.long)), "help lacks --{}", o.long);
        }
        assert!(err(&["--usage"]).stdout.starts_with("Usage: guix-daemon-rs [-?V]"));
        assert_eq!(err(&["--version"]).stdout, format!("{VERSION_LINE}\n"));
        assert!(VERSION_LINE.contains("compatible with guix-daemon (GNU Guix) 1.5.0"));
    }

    #[test]
    fn garbage_never_panics() {
        let pieces = ["-", "--", "=", "-c", "--c", "--listen", "x", "é", "-é", "--é=é", "-M", "--rounds=", "-?V"];
        for a in pieces {
            for b in pieces {
                let _ = parse(P, &[a.to_owned(), b.to_owned()]);
            }
        }
    }
}

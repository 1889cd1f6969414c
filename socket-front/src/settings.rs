//! Per-connection settings: what SetOptions (19) changes, as the C++ worker process keeps them
//! in its copy of `settings`.
//!
//! The C++ daemon stores overrides in a string map, then `Settings::update()` re-reads the typed
//! settings from it; a key whose value does not parse is an error *before* `startWork`, so the
//! connection closes. Keys from untrusted clients other than a short whitelist are stored as
//! `untrusted-KEY` (so they never reach a typed setting), which is how
//! `untrusted-substitute-urls` comes about.

use std::collections::BTreeMap;

use guix_formats::worker::SetOptions;
use guix_ipc::config::DaemonConfig;

/// Override keys honoured verbatim from any client (`performOp`, wopSetOptions).
const WHITELIST: &[&str] = &[
    "build-timeout",
    "build-max-silent-time",
    "build-max-jobs",
    "build-cores",
    "build-repeat",
    "multiplexed-build-output",
];

/// What a connection's settings may hold, keys and values summed: SetOptions replaces or adds
/// keys, so without a bound a client could pile up overrides request after request (the
/// per-connection memory budget, [`crate::budget`]). The Guix client sends a few hundred bytes.
pub const MAX_SETTINGS_BYTES: usize = 1 << 20;

/// Keys `Settings::update()` reads as integers.
const INT_KEYS: &[&str] = &[
    "build-max-jobs",
    "build-cores",
    "build-max-silent-time",
    "build-timeout",
    "gc-reserved-space",
    "build-max-log-size",
    "build-poll-interval",
];

/// Keys `Settings::update()` reads as booleans ("true"/"false").
const BOOL_KEYS: &[&str] = &[
    "build-fallback",
    "multiplexed-build-output",
    "fsync-metadata",
    "use-sqlite-wal",
    "sync-before-registering",
    "build-use-substitutes",
    "build-use-chroot",
    "build-impersonate-linux-26",
    "build-keep-log",
    "build-cache-failure",
    "gc-check-reachability",
    "gc-keep-outputs",
    "gc-keep-derivations",
    "auto-optimise-store",
    "env-keep-derivations",
];

/// The settings of one connection.
#[derive(Debug, Clone)]
pub struct Settings {
    map: BTreeMap<String, String>,
    pub keep_failed: bool,
    pub keep_going: bool,
    pub verbosity: u32,
    pub build_verbosity: u32,
    pub print_build_trace: bool,
    /// Typed `build-use-substitutes`.
    pub use_substitutes: bool,
}

impl Settings {
    /// The daemon's settings as a fresh worker process has them.
    pub fn new(config: &DaemonConfig) -> Settings {
        let mut map = BTreeMap::new();
        map.insert("build-use-substitutes".to_owned(), bool_str(config.use_substitutes).to_owned());
        map.insert("substitute-urls".to_owned(), config.substitute_urls.join(" "));
        Settings {
            map,
            keep_failed: false,
            keep_going: false,
            // The worker's global `verbosity` until SetOptions: `lvlInfo`, `lvlDebug` with
            // `--debug` (verified: ExportPath without SetOptions says "exporting path").
            verbosity: if config.debug { 4 } else { 1 },
            // `settings.buildVerbosity`: `lvlError`.
            build_verbosity: 0,
            print_build_trace: false,
            use_substitutes: config.use_substitutes,
        }
    }

    /// The raw value of a key, as `settings.get` returns it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// Every setting of the connection as the C++ worker keeps them in its `settings` map: the
    /// daemon's own that a fresh worker has, then what SetOptions put there (the builder reads
    /// the ones it needs; their syntax is checked).
    pub fn map(&self) -> &BTreeMap<String, String> {
        &self.map
    }

    /// `multiplexed-build-output` (typed by `Settings::update()`: only "true" is true).
    pub fn multiplexed_build_output(&self) -> bool {
        self.get("multiplexed-build-output") == Some("true")
    }

    /// Applies SetOptions. `remote`: the client came over TCP. An error is the message of
    /// `settings.update()`, raised before `startWork` (the connection closes).
    pub fn apply(&mut self, o: &SetOptions, trusted: bool, remote: bool) -> Result<(), String> {
        self.keep_failed = o.keep_failed && !remote;
        self.keep_going = o.keep_going;
        self.map.insert("build-fallback".to_owned(), bool_str(o.fallback).to_owned());
        self.verbosity = o.verbosity;
        if let Some(n) = o.max_build_jobs {
            self.map.insert("build-max-jobs".to_owned(), n.to_string());
        }
        if let Some(n) = o.max_silent_time {
            self.map.insert("build-max-silent-time".to_owned(), n.to_string());
        }
        self.build_verbosity = o.build_verbosity;
        self.print_build_trace = o.print_build_trace;
        if let Some(n) = o.build_cores {
            self.map.insert("build-cores".to_owned(), n.to_string());
        }
        // `--no-substitutes` wins over the field (but not over a trusted override below).
        if self.use_substitutes {
            self.map.insert("build-use-substitutes".to_owned(), bool_str(o.use_substitutes).to_owned());
        }
        for (k, v) in &o.overrides {
            if WHITELIST.contains(&k.as_str()) {
                self.map.insert(k.clone(), v.clone());
            } else if k == "user-name" {
                // Only meaningful for TCP clients, whose uid is unknown; ignored here.
            } else if trusted {
                self.map.insert(k.clone(), v.clone());
            } else {
                self.map.insert(format!("untrusted-{k}"), v.clone());
            }
        }
        let held: usize = self.map.iter().map(|(k, v)| k.len() + v.len()).sum();
        if held > MAX_SETTINGS_BYTES {
            return Err(format!(
                "the settings of this connection would hold {held} bytes, more than the limit of {MAX_SETTINGS_BYTES} bytes"
            ));
        }
        self.update()
    }

    /// `Settings::update()`: re-reads the typed settings, checking their syntax.
    fn update(&mut self) -> Result<(), String> {
        for key in INT_KEYS {
            if let Some(v) = self.map.get(*key) {
                if !is_int(v) {
                    return Err(format!("configuration setting `{key}' should have an integer value"));
                }
            }
        }
        for key in BOOL_KEYS {
            if let Some(v) = self.map.get(*key) {
                if v != "true" && v != "false" {
                    return Err(format!("configuration option `{key}' should be either `true' or `false', not `{v}'"));
                }
            }
        }
        self.use_substitutes = self.map.get("build-use-substitutes").is_none_or(|v| v == "true");
        Ok(())
    }

    /// SubstituteURLs (81): with substitutes on, the client's `untrusted-substitute-urls` if
    /// it set them, else the daemon's `substitute-urls`; nothing with substitutes off.
    pub fn substitute_urls(&self) -> Vec<String> {
        if !self.use_substitutes {
            return Vec::new();
        }
        let urls = self.get("untrusted-substitute-urls").or_else(|| self.get("substitute-urls")).unwrap_or("");
        urls.split_whitespace().map(str::to_owned).collect()
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// `string2Int`: optional leading white space, an optional sign, digits, nothing after.
fn is_int(s: &str) -> bool {
    let t = s.trim_start();
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && digits.len() <= 19
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the substitute settings matter to [`Settings`]; the rest are the C++ defaults.
    pub(crate) fn config(use_substitutes: bool) -> DaemonConfig {
        DaemonConfig { use_substitutes, ..DaemonConfig::default() }
    }

    fn opts(overrides: &[(&str, &str)]) -> SetOptions {
        SetOptions {
            overrides: overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..SetOptions::default()
        }
    }

    #[test]
    fn settings_cannot_pile_up_across_requests() {
        let mut s = Settings::new(&config(true));
        let value = "v".repeat(100_000);
        let mut err = None;
        for i in 0..20 {
            let key = format!("k{i}");
            if let Err(e) = s.apply(&opts(&[(key.as_str(), value.as_str())]), false, false) {
                err = Some((i, e));
                break;
            }
        }
        let (i, e) = err.expect("refused");
        assert_eq!(i, 10, "{e}");
        assert!(e.contains("more than the limit of 1048576 bytes"), "{e}");
    }

    #[test]
    fn substitute_urls_follow_the_cxx_rules() {
        // --no-substitutes: nothing, and the field does not help.
        let mut s = Settings::new(&config(false));
        assert!(s.substitute_urls().is_empty());
        s.apply(&opts(&[]), true, false).unwrap();
        assert!(s.substitute_urls().is_empty());
        // A trusted override turns them on.
        s.apply(&opts(&[("build-use-substitutes", "true")]), true, false).unwrap();
        assert_eq!(s.substitute_urls(), ["https://bordeaux.guix.gnu.org", "https://ci.guix.gnu.org"]);
        s.apply(&opts(&[("build-use-substitutes", "true"), ("substitute-urls", "http://a http://b")]), true, false)
            .unwrap();
        assert_eq!(s.substitute_urls(), ["http://a", "http://b"]);
        s.apply(&opts(&[("untrusted-substitute-urls", "http://c")]), true, false).unwrap();
        assert_eq!(s.substitute_urls(), ["http://c"]);
        s.apply(&opts(&[("build-use-substitutes", "false")]), true, false).unwrap();
        assert!(s.substitute_urls().is_empty());
    }

    #[test]
    fn untrusted_keys_are_prefixed() {
        let mut s = Settings::new(&config(true));
        s.apply(&opts(&[("substitute-urls", "http://x"), ("build-cores", "4"), ("foo", "bar")]), false, false).unwrap();
        assert_eq!(s.get("untrusted-substitute-urls"), Some("http://x"));
        assert_eq!(s.get("untrusted-foo"), Some("bar"));
        assert_eq!(s.get("build-cores"), Some("4"));
        assert_eq!(s.substitute_urls(), ["http://x"]);
        // An untrusted client cannot reach a typed setting, so no error.
        s.apply(&opts(&[("build-use-substitutes", "maybe")]), false, false).unwrap();
    }

    #[test]
    fn verbosity_before_set_options_is_the_daemons() {
        assert_eq!(Settings::new(&config(true)).verbosity, 1);
        let debug = DaemonConfig { debug: true, ..config(true) };
        assert_eq!(Settings::new(&debug).verbosity, 4);
        assert_eq!(Settings::new(&debug).build_verbosity, 0);
    }

    #[test]
    fn typed_values_are_checked() {
        let mut s = Settings::new(&config(true));
        assert_eq!(
            s.apply(&opts(&[("build-cores", "notanumber")]), true, false).unwrap_err(),
            "configuration setting `build-cores' should have an integer value"
        );
        let mut s = Settings::new(&config(true));
        assert_eq!(
            s.apply(&opts(&[("build-use-chroot", "yes")]), true, false).unwrap_err(),
            "configuration option `build-use-chroot' should be either `true' or `false', not `yes'"
        );
        assert!(is_int(" 12") && is_int("-3") && !is_int("1x") && !is_int("") && !is_int("-"));
    }
}

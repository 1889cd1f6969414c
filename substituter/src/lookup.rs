//! Narinfo lookups: `<cache>/<hash>.narinfo` over http(s) (in parallel, connections reused)
//! and `file://`, the trust decision, and the cache of answers with Guix 1.5.0's lifetimes
//! (`guix/substitutes.scm`).
//!
//! * Lifetimes: a narinfo found (200) is kept for the server's `Cache-Control: max-age`, else
//!   36 hours; "not found" (404, or 202 "being baked") for `max-age`, else 2 minutes; any other
//!   status for 1 minute. A connection failure is not cached (Guix neither); its host is
//!   warned about once per process ("HOST: connection failed: REASON"). `file://` caches are
//!   read every time, as Guix reads them. The cache is in memory: a restarted substituter
//!   asks again (Guix keeps it in files under `/var/guix/substitute/cache`).
//! * A narinfo whose `StorePath` is not in our store directory, or is not the path asked
//!   for, is ignored, not cached (Guix drops the former; the latter it would report under
//!   the other path's name).
//! * `nix-cache-info` is not read: `guix substitute` 1.5.0 does not read it either (the
//!   store directory is checked per narinfo instead).
//! * Trust (`valid-narinfo?`): signed by a key of the ACL, with the signed hash matching;
//!   or anything when the daemon runs with `GUIX_ALLOW_UNAUTHENTICATED_SUBSTITUTES=yes`.
//!   Across caches, `lookup-narinfos/diverse`: each cache is asked for the paths without an
//!   authorised narinfo yet; the narinfo used is the first, in cache order, equivalent to an
//!   authorised one ([`crate::choose::select`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use guix_formats::narinfo::{NarInfo, MAX_NARINFO};
use guix_formats::signature::Acl;
use guix_formats::StorePath;

use crate::choose;

/// `%narinfo-ttl`.
pub const POSITIVE_TTL: Duration = Duration::from_secs(36 * 3600);
/// `%narinfo-negative-ttl`.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(2 * 60);
/// `%narinfo-transient-error-ttl`.
pub const TRANSIENT_TTL: Duration = Duration::from_secs(60);
/// Narinfo requests in flight per cache (Guix pipelines them on one connection).
const PARALLEL_REQUESTS: usize = 16;

/// Whether a lookup prints `guix substitute --query`'s progress ([`Lookup::lookup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Silent,
    PerRequest,
    PerPath,
}

/// What decides whether a narinfo is authorised.
#[derive(Debug, Clone)]
pub enum Trust {
    Acl(Acl),
    /// `GUIX_ALLOW_UNAUTHENTICATED_SUBSTITUTES=yes`.
    Anything,
}

impl Trust {
    pub fn authorised(&self, info: &NarInfo) -> bool {
        match self {
            Trust::Anything => true,
            Trust::Acl(acl) => info.verify(acl).is_ok(),
        }
    }
}

/// A narinfo and the cache it came from.
#[derive(Debug, Clone)]
pub struct Found {
    pub cache_url: String,
    pub info: Arc<NarInfo>,
}

/// One narinfo request: the narinfo, none, or why the server could not be reached.
type FetchResult = Result<Option<(StorePath, Arc<NarInfo>)>, String>;

/// What one cache said about one path, as cached.
#[derive(Debug, Clone)]
enum Answer {
    Hit(Arc<NarInfo>),
    Miss,
}

/// The lifetime of an HTTP answer (module documentation).
pub fn ttl(status: u16, cache_control: Option<&str>) -> Duration {
    let max_age = cache_control.and_then(|cc| {
        cc.split(',').find_map(|d| d.trim().strip_prefix("max-age=").and_then(|n| n.trim().parse::<u64>().ok()))
    });
    match (status, max_age) {
        (200 | 404 | 202, Some(s)) => Duration::from_secs(s),
        (200, None) => POSITIVE_TTL,
        (404 | 202, None) => NEGATIVE_TTL,
        _ => TRANSIENT_TTL,
    }
}

/// The narinfo URL of `path` at `cache` (`narinfo-request`: the cache URL with a trailing
/// slash, then `HASH.narinfo`).
pub fn narinfo_url(cache: &str, path: &StorePath) -> String {
    let sep = if cache.ends_with('/') { "" } else { "/" };
    format!("{cache}{sep}{}.narinfo", path.hash_part().as_str())
}

pub struct Lookup {
    http: reqwest::Client,
    store_dir: String,
    cache: Mutex<HashMap<(String, String), (Answer, Instant)>>,
    warned: Mutex<HashSet<String>>,
}

impl Lookup {
    pub fn new(http: reqwest::Client, store_dir: &str) -> Lookup {
        Lookup { http, store_dir: store_dir.to_owned(), cache: Mutex::new(HashMap::new()), warned: Mutex::default() }
    }

    /// For each of `paths` with an authorised substitute on `caches`, the narinfo to use
    /// (module documentation). What `guix substitute` would print on its standard error goes
    /// to `out` as it would print it: warnings, and with `progress` (its `--query` role) the
    /// "looking for substitutes on 'URL'..." line of each cache asked over the network (from
    /// 0.0% to 100.0% through every answer's step), once per request or, with
    /// [`Progress::PerPath`], once per path asked (as the C++ daemon's substitution goals,
    /// which query one path each, make it print).
    pub async fn lookup(
        &self,
        caches: &[String],
        paths: &[StorePath],
        trust: &Trust,
        progress: Progress,
        out: &mut (dyn FnMut(String) + Send),
    ) -> HashMap<StorePath, Found> {
        let mut found: HashMap<StorePath, Vec<(Found, bool)>> = HashMap::new();
        let mut missing: Vec<StorePath> = paths.to_vec();
        missing.sort();
        missing.dedup();
        for cache in caches {
            if missing.is_empty() {
                break;
            }
            let answers = self.lookup_one(cache, &missing, progress, out).await;
            let mut definite = HashSet::new();
            for (path, info) in answers {
                let ok = trust.authorised(&info);
                if ok {
                    definite.insert(path.clone());
                }
                found.entry(path).or_default().push((Found { cache_url: cache.clone(), info }, ok));
            }
            missing.retain(|p| !definite.contains(p));
        }
        found
            .into_iter()
            .filter_map(|(path, all)| {
                let i = choose::select(&all, |f: &Found| &f.info)?;
                Some((path, all[i].0.clone()))
            })
            .collect()
    }

    /// What `cache` has for `paths` (no trust decision yet).
    async fn lookup_one(
        &self,
        cache: &str,
        paths: &[StorePath],
        progress: Progress,
        out: &mut (dyn FnMut(String) + Send),
    ) -> Vec<(StorePath, Arc<NarInfo>)> {
        if let Some(dir) = cache.strip_prefix("file://") {
            return paths.iter().filter_map(|p| Some((p.clone(), self.read_file(dir, p)?))).collect();
        }
        let now = Instant::now();
        let mut found = Vec::new();
        let mut ask = Vec::new();
        {
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            for p in paths {
                let key = (cache.to_owned(), p.hash_part().as_str().to_owned());
                match c.get(&key) {
                    Some((answer, until)) if *until > now => {
                        if let Answer::Hit(info) = answer {
                            found.push((p.clone(), info.clone()));
                        }
                    }
                    Some(_) => {
                        c.remove(&key);
                        ask.push(p.clone());
                    }
                    None => ask.push(p.clone()),
                }
            }
        }
        if ask.is_empty() {
            return found;
        }
        let looking = |pct: f64| format!("\x1b[Klooking for substitutes on '{cache}'... {pct:5.1}%");
        let started = looking(0.0);
        // Per report, the paths it counts: Guix prints 0% when it starts, then done/total
        // after each answer (`make-progress-reporter` of `guix substitute`).
        let (times, steps) = match progress {
            Progress::Silent => (0, 1),
            Progress::PerRequest => (1, ask.len()),
            Progress::PerPath => (ask.len(), 1),
        };
        let results: Vec<FetchResult> = stream::iter(ask)
            .map(|p| async move { self.fetch(cache, p).await })
            .buffer_unordered(PARALLEL_REQUESTS)
            .collect()
            .await;
        for _ in 0..times {
            // `erase-current-line` is "\r" then "\x1b[K": the C++ daemon reads the first alone,
            // so the client gets them in two pieces.
            out("\r".to_owned());
            let mut line = started.clone();
            for k in 1..=steps {
                line.push('\r');
                line.push_str(&looking(100.0 * k as f64 / steps as f64));
            }
            out(format!("{line}\n"));
        }
        let mut failure = None;
        for r in results {
            match r {
                Ok(Some(hit)) => found.push(hit),
                Ok(None) => {}
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            let host =
                reqwest::Url::parse(cache).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
            if self.warned.lock().unwrap_or_else(|p| p.into_inner()).insert(host.clone()) {
                out(format!("guix substitute: warning: {host}: connection failed: {e}\n"));
            }
        }
        found
    }

    /// One narinfo over http(s): `Ok(None)` when the server has none (cached), `Err` when the
    /// server could not be reached (not cached).
    async fn fetch(&self, cache: &str, path: StorePath) -> FetchResult {
        let url = narinfo_url(cache, &path);
        let resp = self.http.get(&url).header("User-Agent", "GNU Guile").send().await.map_err(|e| io_reason(&e))?;
        let status = resp.status().as_u16();
        let cc = resp.headers().get("cache-control").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let lifetime = ttl(status, cc.as_deref());
        let key = (cache.to_owned(), path.hash_part().as_str().to_owned());
        let answer = if status == 200 {
            let body = read_bounded(resp, MAX_NARINFO).await.map_err(|e| io_reason(&e))?;
            match body.and_then(|b| NarInfo::parse(&b).ok()) {
                Some(info) if info.store_dir() == self.store_dir && info.path() == &path => Answer::Hit(Arc::new(info)),
                // Unreadable, or for another store or path: ignored, not cached.
                _ => return Ok(None),
            }
        } else {
            Answer::Miss
        };
        let until = Instant::now() + lifetime;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (answer.clone(), until));
        Ok(match answer {
            Answer::Hit(info) => Some((path, info)),
            Answer::Miss => None,
        })
    }

    fn read_file(&self, dir: &str, path: &StorePath) -> Option<Arc<NarInfo>> {
        let file = format!("{}/{}.narinfo", dir.trim_end_matches('/'), path.hash_part().as_str());
        let meta = std::fs::metadata(&file).ok()?;
        if meta.len() > MAX_NARINFO as u64 {
            return None;
        }
        let info = NarInfo::parse(&std::fs::read(&file).ok()?).ok()?;
        (info.store_dir() == self.store_dir && info.path() == path).then(|| Arc::new(info))
    }
}

/// The body, unless longer than `max`.
async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The system's words for why a request failed ("Connection refused"), as Guix prints
/// `strerror` of the failed `connect`; else reqwest's text.
pub fn io_reason(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return guix_store::error::strerror(io);
        }
        source = s.source();
    }
    if e.is_timeout() {
        return "Connection timed out".to_owned();
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn lifetimes_are_guix_ones() {
        assert_eq!(ttl(200, None), POSITIVE_TTL);
        assert_eq!(ttl(200, Some("public, max-age=600")), Duration::from_secs(600));
        assert_eq!(ttl(404, None), NEGATIVE_TTL);
        assert_eq!(ttl(202, None), NEGATIVE_TTL);
        assert_eq!(ttl(404, Some("max-age=5")), Duration::from_secs(5));
        assert_eq!(ttl(504, Some("max-age=5")), TRANSIENT_TTL);
        assert_eq!(ttl(500, None), TRANSIENT_TTL);
    }

    fn narinfo_text(store: &str, base: &str) -> String {
        format!(
            "StorePath: {store}/{base}\nNarHash: sha256:1pm90v61iv2cgv23y2hpmfnqnlwr2sqzhw0bylyww7vh7f5rz8m8\n\
             NarSize: 168\nReferences: \nURL: nar/{base}\nCompression: none\n"
        )
    }

    #[tokio::test]
    async fn file_caches_are_read_in_order_and_foreign_stores_ignored() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = StorePath::from_base_name("1x9vvimabb763h6ca48gb3p3cbshkyjq-a").unwrap();
        let b = StorePath::from_base_name("2x9vvimabb763h6ca48gb3p3cbshkyjq-b").unwrap();
        let c = StorePath::from_base_name("3x9vvimabb763h6ca48gb3p3cbshkyjq-c").unwrap();
        let write = |dir: &Path, p: &StorePath, store: &str| {
            std::fs::write(dir.join(format!("{}.narinfo", p.hash_part().as_str())), narinfo_text(store, &p.base_name()))
                .unwrap()
        };
        write(one.path(), &a, "/gnu/store");
        write(two.path(), &a, "/gnu/store");
        write(two.path(), &b, "/gnu/store");
        // For another store directory: not a substitute here.
        write(one.path(), &c, "/other/store");
        let caches = [one.path(), two.path()].map(|d| format!("file://{}", d.display()));
        let lookup = Lookup::new(reqwest::Client::new(), "/gnu/store");
        let mut out = Vec::new();
        let mut push = |t: String| out.push(t);
        let found = lookup
            .lookup(&caches, &[a.clone(), b.clone(), c.clone()], &Trust::Anything, Progress::PerRequest, &mut push)
            .await;
        assert_eq!(found[&a].cache_url, caches[0], "the first cache that has it");
        assert_eq!(found[&b].cache_url, caches[1]);
        assert!(!found.contains_key(&c));
        // No network, no progress line.
        assert!(out.is_empty(), "{out:?}");
        // Unsigned narinfos are no substitutes under an ACL.
        let found = lookup.lookup(&caches, &[a], &Trust::Acl(Acl::default()), Progress::Silent, &mut |_| {}).await;
        assert!(found.is_empty());
    }

    #[test]
    fn narinfo_urls() {
        let p = StorePath::from_base_name("1x9vvimabb763h6ca48gb3p3cbshkyjq-a").unwrap();
        assert_eq!(narinfo_url("http://h:8080", &p), "http://h:8080/1x9vvimabb763h6ca48gb3p3cbshkyjq.narinfo");
        assert_eq!(narinfo_url("http://h/c/", &p), "http://h/c/1x9vvimabb763h6ca48gb3p3cbshkyjq.narinfo");
    }
}

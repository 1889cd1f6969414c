//! Which nar to download, and which narinfo to trust, as Guix 1.5.0 decides
//! (`guix/narinfo.scm`: `narinfo-preferred-uris`, `equivalent-narinfo?`;
//! `guix/substitutes.scm`: `lookup-narinfos/diverse`).

use guix_formats::narinfo::{NarInfo, NarUrl};

/// A compression this substituter decompresses. Guix 1.5.0 also knows `bzip2`, which
/// `guix publish` never offers; a nar offered only that way is not a choice here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Lzip,
    Zstd,
    Xz,
}

impl Compression {
    /// The narinfo's `Compression` value; `None` when this substituter cannot decompress it.
    pub fn from_name(name: &str) -> Option<Compression> {
        Some(match name {
            "none" => Compression::None,
            "gzip" => Compression::Gzip,
            "lzip" => Compression::Lzip,
            "zstd" => Compression::Zstd,
            "xz" => Compression::Xz,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lzip => "lzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
        }
    }
}

/// One downloadable nar of a narinfo, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Absolute URL.
    pub url: String,
    pub compression: Compression,
    pub file_size: Option<u64>,
}

/// `compresses-better?`: whether `a` generally compresses better than `b` (Guix's rough
/// approximation, quirks included: lzip beats everything, itself too).
fn compresses_better(a: Compression, b: Compression) -> bool {
    use Compression as C;
    match a {
        C::None => false,
        C::Gzip => b == C::None,
        C::Lzip => true,
        _ => matches!(b, C::None | C::Gzip),
    }
}

/// `decompresses-faster?`.
fn decompresses_faster(a: Compression, b: Compression) -> bool {
    use Compression as C;
    match a {
        C::None | C::Zstd => true,
        C::Gzip => b == C::Lzip,
        _ => false,
    }
}

/// The nar URL as Guix resolves it against the cache it came from (`narinfo-maker`): an
/// absolute URL as it is, anything else appended to the cache URL, with a slash between
/// unless the cache URL ends with one.
pub fn resolve_url(cache_url: &str, url: &str) -> String {
    if reqwest::Url::parse(url).is_ok() {
        url.to_owned()
    } else if cache_url.ends_with('/') {
        format!("{cache_url}{url}")
    } else {
        format!("{cache_url}/{url}")
    }
}

/// `narinfo-preferred-uris`: the nars of `info` this substituter can decompress, preferred
/// first. With `fast_decompression` the fastest to decompress first (zstd, none), else the
/// smallest download (by `FileSize`; without sizes, by `compresses-better?`). The sort is
/// Guile's stable `sort` over Guix's comparison, reproduced as a stable insertion sort so
/// that its non-transitive order gives the same result. A nar without a `Compression` field
/// is no choice (Guix has no supported compression for it either).
pub fn preferred(cache_url: &str, info: &NarInfo, fast_decompression: bool) -> Vec<Choice> {
    let choices: Vec<Choice> = info
        .urls()
        .iter()
        .filter_map(|u: &NarUrl| {
            let compression = Compression::from_name(u.compression.as_deref()?)?;
            Some(Choice { url: resolve_url(cache_url, &u.url), compression, file_size: u.file_size })
        })
        .collect();
    let less = |a: &Choice, b: &Choice| -> bool {
        if fast_decompression {
            // (negate speed<?): speed<? a b = decompresses-faster? b a.
            !decompresses_faster(b.compression, a.compression)
        } else {
            match (a.file_size, b.file_size) {
                (Some(x), Some(y)) => x < y,
                (Some(_), None) => true,
                (None, _) => compresses_better(a.compression, b.compression),
            }
        }
    };
    stable_sort(choices, less)
}

/// Guile's `sort` on a list is a stable merge sort; on the few elements a narinfo has, an
/// insertion sort that moves an element before another only when `less(x, y)` gives the same
/// order for Guix's comparisons.
fn stable_sort<T>(items: Vec<T>, less: impl Fn(&T, &T) -> bool) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for x in items {
        let mut at = out.len();
        while at > 0 && less(&x, &out[at - 1]) {
            at -= 1;
        }
        out.insert(at, x);
    }
    out
}

/// `equivalent-narinfo?`: the same store item (hash, path, references, size), whatever the
/// nar URLs.
pub fn equivalent(a: &NarInfo, b: &NarInfo) -> bool {
    a.nar_hash() == b.nar_hash()
        && a.path() == b.path()
        && a.references() == b.references()
        && a.nar_size() == b.nar_size()
}

/// `lookup-narinfos/diverse`'s choice among the narinfos of one path found on the caches (in
/// cache order, each with whether it is authorised): the first one equivalent to the last
/// authorised one, so an unsigned mirror earlier in the list serves a nar whose hash a
/// trusted server vouches for. `None` when none is authorised.
pub fn select<T>(found: &[(T, bool)], info: impl Fn(&T) -> &NarInfo) -> Option<usize> {
    let (_, authorised) = found.iter().rev().find(|(_, ok)| *ok).map(|(n, ok)| (n, *ok))?;
    debug_assert!(authorised);
    let trusted = found.iter().rev().find(|(_, ok)| *ok).map(|(n, _)| info(n))?;
    found.iter().position(|(n, _)| equivalent(info(n), trusted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(urls: &[(&str, Option<&str>, Option<u64>)]) -> NarInfo {
        let mut text = String::from(
            "StorePath: /gnu/store/1x9vvimabb763h6ca48gb3p3cbshkyjq-a\n\
             NarHash: sha256:1pm90v61iv2cgv23y2hpmfnqnlwr2sqzhw0bylyww7vh7f5rz8m8\n\
             NarSize: 168\nReferences: \n",
        );
        for (u, c, s) in urls {
            text.push_str(&format!("URL: {u}\n"));
            if let Some(c) = c {
                text.push_str(&format!("Compression: {c}\n"));
            }
            if let Some(s) = s {
                text.push_str(&format!("FileSize: {s}\n"));
            }
        }
        NarInfo::parse(text.as_bytes()).unwrap()
    }

    fn order(choices: &[Choice]) -> Vec<&'static str> {
        choices.iter().map(|c| c.compression.name()).collect()
    }

    #[test]
    fn smallest_download_first_unless_fast_decompression() {
        // What `guix publish -C lzip -C zstd -C gzip` announces (sizes known with --cache).
        let n = info(&[
            ("nar/gzip/x", Some("gzip"), Some(300)),
            ("nar/lzip/x", Some("lzip"), Some(200)),
            ("nar/zstd/x", Some("zstd"), Some(250)),
        ]);
        assert_eq!(order(&preferred("http://h:8080", &n, false)), ["lzip", "zstd", "gzip"]);
        assert_eq!(order(&preferred("http://h:8080", &n, true)), ["zstd", "gzip", "lzip"]);
        // Without sizes (`guix publish` without --cache): compresses-better? decides.
        let n = info(&[("a", Some("gzip"), None), ("b", Some("zstd"), None), ("c", Some("lzip"), None)]);
        assert_eq!(order(&preferred("http://h", &n, false)), ["lzip", "zstd", "gzip"]);
        let n = info(&[("a", Some("none"), None), ("b", Some("gzip"), None)]);
        assert_eq!(order(&preferred("http://h", &n, false)), ["gzip", "none"]);
    }

    #[test]
    fn unsupported_or_missing_compressions_are_no_choice() {
        let n = info(&[("a", Some("bzip2"), Some(1)), ("b", None, Some(2)), ("c", Some("brotli"), Some(3))]);
        assert!(preferred("http://h", &n, false).is_empty());
    }

    #[test]
    fn urls_resolve_against_the_cache() {
        assert_eq!(resolve_url("http://h:8080", "nar/lzip/x"), "http://h:8080/nar/lzip/x");
        assert_eq!(resolve_url("http://h:8080/", "nar/x"), "http://h:8080/nar/x");
        assert_eq!(resolve_url("file:///srv/cache", "nar/x"), "file:///srv/cache/nar/x");
        assert_eq!(resolve_url("http://h", "https://mirror/nar/x"), "https://mirror/nar/x");
    }

    #[test]
    fn an_unauthorised_narinfo_is_used_when_equivalent_to_an_authorised_one() {
        let a = info(&[("a", Some("gzip"), None)]);
        let b = info(&[("b", Some("zstd"), None)]);
        // Unauthorised first, an equivalent authorised one later: the first serves.
        assert_eq!(select(&[(a.clone(), false), (b.clone(), true)], |n| n), Some(0));
        assert_eq!(select(&[(a.clone(), false)], |n| n), None);
        assert_eq!(select(&[(a.clone(), true)], |n| n), Some(0));
        // Not equivalent (another hash): only the authorised one.
        let other = NarInfo::parse(
            b"StorePath: /gnu/store/1x9vvimabb763h6ca48gb3p3cbshkyjq-a\n\
              NarHash: sha256:0000000000000000000000000000000000000000000000000000\n\
              NarSize: 168\nReferences: \nURL: x\nCompression: none\n",
        )
        .unwrap();
        assert_eq!(select(&[(other, false), (b, true)], |n| n), Some(1));
    }
}

//! Store paths (`/gnu/store/<32 base32 chars>-<name>`) and the computations that produce them.
//!
//! A [`StorePath`] is the base name only (hash part and name), validated at parse time; the store
//! directory it lives in is a [`StoreDir`], so the same value works under `NIX_STORE_DIR`. The
//! derived order of `StorePath` is the byte order of the full path, which is the order the daemon
//! uses for every set it sends.

use std::fmt;

use thiserror::Error;

use crate::base32;
use crate::hash::{base16_encode, compress_hash, sha256, Hash, HashAlgo};

/// Length of the hash part of a store path base name.
pub const HASH_PART_LEN: usize = 32;
/// Bytes behind the hash part (SHA-256 folded to 160 bits).
pub const HASH_BYTES: usize = 20;
/// A file name may have at most 255 bytes; the hash part and the dash take 33.
pub const MAX_NAME_LEN: usize = 255 - HASH_PART_LEN - 1;
/// The default store directory.
pub const DEFAULT_STORE_DIR: &str = "/gnu/store";

/// Why a string is not a store path or a store path name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    /// The daemon's wording for a path outside the store.
    #[error("path `{0}' is not in the store")]
    NotInStore(String),
    #[error("invalid hash part in store path `{0}'")]
    BadHashPart(String),
    /// The daemon's wording (`checkStoreName`). The C++ daemon names the offending *byte*; for
    /// a non-ASCII character that is a lone byte of its UTF-8 encoding, which clients decode as
    /// U+FFFD, so `ch` is U+FFFD then and the message reads the same to the client.
    #[error("invalid character `{ch}' in name `{name}'")]
    BadNameChar { ch: char, name: String },
    /// The daemon's wording (`checkStoreName`) for a name starting with a dot.
    #[error("invalid name: `{0}' (can't begin with dot)")]
    IllegalName(String),
    /// The C++ daemon accepts an empty name (`<hash>-`); we do not (yet).
    #[error("invalid name: empty store path names are not supported")]
    EmptyName,
    #[error("store path name `{0}' is too long")]
    NameTooLong(String),
    #[error("invalid hash part `{0}'")]
    BadHashPartString(String),
}

/// Checks a store path name the way `checkStoreName` does, plus the file name length limit.
pub fn check_name(name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName);
    }
    if name.starts_with('.') {
        return Err(StorePathError::IllegalName(name.to_owned()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong(name.to_owned()));
    }
    if let Some(ch) = name.chars().find(|&c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c))) {
        let ch = if ch.is_ascii() { ch } else { char::REPLACEMENT_CHARACTER };
        return Err(StorePathError::BadNameChar { ch, name: name.to_owned() });
    }
    Ok(())
}

/// The 32-character hash part of a store path, validated as Nix base32.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HashPart([u8; HASH_PART_LEN]);

impl HashPart {
    pub fn parse(s: &str) -> Result<HashPart, StorePathError> {
        let b = s.as_bytes();
        if b.len() != HASH_PART_LEN || base32::decode(s).is_err() {
            return Err(StorePathError::BadHashPartString(s.to_owned()));
        }
        let mut a = [0u8; HASH_PART_LEN];
        a.copy_from_slice(b);
        Ok(HashPart(a))
    }

    /// From the 20 digest bytes.
    pub fn from_digest(digest: &[u8; HASH_BYTES]) -> HashPart {
        let s = base32::encode(digest);
        let mut a = [0u8; HASH_PART_LEN];
        a.copy_from_slice(s.as_bytes());
        HashPart(a)
    }

    pub fn as_str(&self) -> &str {
        // Only base32 characters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The 20 digest bytes.
    pub fn digest(&self) -> [u8; HASH_BYTES] {
        let v = base32::decode(self.as_str()).unwrap_or_default();
        let mut a = [0u8; HASH_BYTES];
        if v.len() == HASH_BYTES {
            a.copy_from_slice(&v);
        }
        a
    }
}

impl fmt::Display for HashPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for HashPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashPart({})", self.as_str())
    }
}

/// The base name of a store item: hash part and name, both valid.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    hash: HashPart,
    name: Box<str>,
}

impl StorePath {
    /// Parses `<hash>-<name>` (no directory).
    pub fn from_base_name(base: &str) -> Result<StorePath, StorePathError> {
        if base.len() < HASH_PART_LEN + 2 || base.as_bytes()[HASH_PART_LEN] != b'-' {
            return Err(StorePathError::BadHashPart(base.to_owned()));
        }
        let (h, rest) = base.split_at(HASH_PART_LEN);
        let hash = HashPart::parse(h).map_err(|_| StorePathError::BadHashPart(base.to_owned()))?;
        let name = &rest[1..];
        check_name(name)?;
        Ok(StorePath { hash, name: name.into() })
    }

    /// Builds a path from its parts, checking the name.
    pub fn from_parts(hash: HashPart, name: &str) -> Result<StorePath, StorePathError> {
        check_name(name)?;
        Ok(StorePath { hash, name: name.into() })
    }

    pub fn hash_part(&self) -> &HashPart {
        &self.hash
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }

    /// Whether the name ends in `.drv`.
    pub fn is_derivation(&self) -> bool {
        self.name.ends_with(".drv")
    }
}

impl fmt::Display for StorePath {
    /// Displays the base name; use [`StoreDir::display`] for the absolute path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash, self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({}-{})", self.hash, self.name)
    }
}

/// The store directory (`/gnu/store` unless `NIX_STORE_DIR` says otherwise), and everything
/// that needs it: parsing absolute paths, printing them, computing new ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreDir {
    dir: Box<str>,
}

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir { dir: DEFAULT_STORE_DIR.into() }
    }
}

impl StoreDir {
    /// A store directory: absolute, without a trailing slash.
    pub fn new(dir: &str) -> Result<StoreDir, StorePathError> {
        let trimmed = dir.trim_end_matches('/');
        if !trimmed.starts_with('/') || trimmed.contains("//") {
            return Err(StorePathError::NotInStore(dir.to_owned()));
        }
        Ok(StoreDir { dir: trimmed.into() })
    }

    pub fn as_str(&self) -> &str {
        &self.dir
    }

    /// Whether `path` is directly in the store, as the daemon's `isStorePath` decides (prefix,
    /// no further slash); says nothing about the hash part or the name.
    pub fn is_in_store_syntax(&self, path: &str) -> bool {
        path.strip_prefix(&*self.dir)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|r| !r.is_empty() && !r.contains('/'))
    }

    /// Parses an absolute store path `<dir>/<hash>-<name>`.
    pub fn parse(&self, path: &str) -> Result<StorePath, StorePathError> {
        if !self.is_in_store_syntax(path) {
            return Err(StorePathError::NotInStore(path.to_owned()));
        }
        StorePath::from_base_name(&path[self.dir.len() + 1..])
    }

    /// Parses a path that is a store path or lies inside one (`/gnu/store/…-x/bin/sh`): returns
    /// the store path and the rest (empty or starting with `/`).
    pub fn parse_prefix<'a>(&self, path: &'a str) -> Result<(StorePath, &'a str), StorePathError> {
        let rest = path
            .strip_prefix(&*self.dir)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(path.to_owned()))?;
        let (base, tail) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        Ok((StorePath::from_base_name(base)?, tail))
    }

    /// The absolute path of a store item.
    pub fn display(&self, path: &StorePath) -> String {
        format!("{}/{}-{}", self.dir, path.hash, path.name)
    }

    /// `makeStorePath`: the path for a type string, an inner SHA-256 and a name.
    pub fn make_store_path(&self, kind: &str, inner: &[u8; 32], name: &str) -> Result<StorePath, StorePathError> {
        check_name(name)?;
        let s = format!("{}:sha256:{}:{}:{}", kind, base16_encode(inner), self.dir, name);
        let folded = compress_hash(&sha256(s.as_bytes()), HASH_BYTES);
        let mut digest = [0u8; HASH_BYTES];
        digest.copy_from_slice(&folded);
        Ok(StorePath { hash: HashPart::from_digest(&digest), name: name.into() })
    }

    /// The path of a text item (AddTextToStore, `.drv` files): type `text` plus every reference
    /// in sorted order.
    pub fn make_text_path<'a, I>(&self, name: &str, contents: &[u8], references: I) -> Result<StorePath, StorePathError>
    where
        I: IntoIterator<Item = &'a StorePath>,
    {
        let mut refs: Vec<&StorePath> = references.into_iter().collect();
        refs.sort();
        refs.dedup();
        let mut kind = String::from("text");
        for r in refs {
            kind.push(':');
            kind.push_str(&self.display(r));
        }
        self.make_store_path(&kind, &sha256(contents), name)
    }

    /// `makeFixedOutputPath`: recursive SHA-256 gives a `source` path, anything else an
    /// `output:out` path over `fixed:out:[r:]algo:hex:`.
    pub fn make_fixed_output_path(
        &self,
        recursive: bool,
        hash: &Hash,
        name: &str,
    ) -> Result<StorePath, StorePathError> {
        if recursive && hash.algo() == HashAlgo::Sha256 {
            let mut inner = [0u8; 32];
            inner.copy_from_slice(hash.as_bytes());
            self.make_store_path("source", &inner, name)
        } else {
            let s = format!("fixed:out:{}{}:{}:", if recursive { "r:" } else { "" }, hash.algo(), hash.to_base16());
            self.make_store_path("output:out", &sha256(s.as_bytes()), name)
        }
    }

    /// The path of output `output` of a derivation named `drv_name` (without `.drv`) whose
    /// modulo hash is `drv_hash`.
    pub fn make_output_path(
        &self,
        output: &str,
        drv_hash: &[u8; 32],
        drv_name: &str,
    ) -> Result<StorePath, StorePathError> {
        let name = if output == "out" { drv_name.to_owned() } else { format!("{drv_name}-{output}") };
        self.make_store_path(&format!("output:{output}"), drv_hash, &name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn store() -> StoreDir {
        StoreDir::default()
    }

    #[test]
    fn text_path_known_answer() {
        // From the C++ daemon (protocol spec appendix): AddTextToStore("hi", "hello\n", []).
        let p = store().make_text_path("hi", b"hello\n", []).unwrap();
        assert_eq!(store().display(&p), "/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-hi");
    }

    #[test]
    fn parse_and_display() {
        let s = "/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-hi";
        let p = store().parse(s).unwrap();
        assert_eq!(p.name(), "hi");
        assert_eq!(store().display(&p), s);
        let (q, rest) = store().parse_prefix("/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-hi/bin/sh").unwrap();
        assert_eq!(q, p);
        assert_eq!(rest, "/bin/sh");
    }

    #[test]
    fn rejects_hostile_paths() {
        for bad in [
            "/tmp/x",
            "/gnu/store",
            "/gnu/store/",
            "/gnu/store/x",
            "/gnu/storex/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-hi",
            "/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-hi/../../etc",
            "/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-",
            "/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xaye-hi",
            "/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-.hidden",
            "/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-a b",
            "/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-a\0b",
            "/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb_hi",
        ] {
            assert!(store().parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-{}", "a".repeat(MAX_NAME_LEN + 1));
        assert!(store().parse(&long).is_err());
    }

    #[test]
    fn order_is_byte_order_of_full_path() {
        let a = store().parse("/gnu/store/00000000000000000000000000000000-b").unwrap();
        let b = store().parse("/gnu/store/00000000000000000000000000000000-b-c").unwrap();
        let c = store().parse("/gnu/store/10000000000000000000000000000000-a").unwrap();
        let mut v = [c.clone(), b.clone(), a.clone()];
        v.sort();
        let mut s: Vec<String> = v.iter().map(|p| store().display(p)).collect();
        let sorted = {
            let mut t = s.clone();
            t.sort();
            t
        };
        assert_eq!(s, sorted);
        s.dedup();
        assert_eq!(s.len(), 3);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,120}") {
            let _ = store().parse(&s);
            let _ = store().parse_prefix(&s);
        }

        #[test]
        fn valid_names_round_trip(name in "[a-zA-Z0-9+_?=][a-zA-Z0-9+._?=-]{0,60}", digest in proptest::array::uniform20(any::<u8>())) {
            let p = StorePath::from_parts(HashPart::from_digest(&digest), &name).unwrap();
            let abs = store().display(&p);
            prop_assert_eq!(store().parse(&abs).unwrap(), p);
        }
    }
}

#[cfg(feature = "serde")]
mod serde_impls {
    //! Store paths travel between our processes as their base name, validated on arrival.
    use super::StorePath;
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    impl Serialize for StorePath {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&self.base_name())
        }
    }

    impl<'de> Deserialize<'de> for StorePath {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StorePath, D::Error> {
            let s = String::deserialize(d)?;
            StorePath::from_base_name(&s).map_err(D::Error::custom)
        }
    }
}

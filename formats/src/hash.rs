//! Hash algorithms and hash values as the daemon names, prints and parses them.
//!
//! Textual forms: bare lowercase base16 (the wire form of narHash), `algo:base16` (the DB form),
//! Nix base32, and `algo:base16|base32` (parsed by length). Also `compress_hash`, which folds a
//! digest into fewer bytes for store path hash parts.

use std::fmt;
use std::str::FromStr;

use sha2::Digest;
use thiserror::Error;

use crate::base32;

/// Largest digest this module handles (SHA-512, SHA3-512).
pub const MAX_DIGEST_LEN: usize = 64;

/// A hash algorithm the daemon accepts (`parseHashType` of the C++ daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
    Sha3_256,
    Sha3_512,
    Blake2s256,
}

impl HashAlgo {
    pub const ALL: [HashAlgo; 7] = [
        HashAlgo::Md5,
        HashAlgo::Sha1,
        HashAlgo::Sha256,
        HashAlgo::Sha512,
        HashAlgo::Sha3_256,
        HashAlgo::Sha3_512,
        HashAlgo::Blake2s256,
    ];

    /// The name used on the wire, in derivations and in the DB.
    pub const fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
            HashAlgo::Sha3_256 => "sha3-256",
            HashAlgo::Sha3_512 => "sha3-512",
            HashAlgo::Blake2s256 => "blake2s-256",
        }
    }

    /// Digest length in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 | HashAlgo::Sha3_256 | HashAlgo::Blake2s256 => 32,
            HashAlgo::Sha512 | HashAlgo::Sha3_512 => 64,
        }
    }

    /// Parses an algorithm name exactly as the daemon does (case-sensitive).
    pub fn from_name(name: &str) -> Option<HashAlgo> {
        HashAlgo::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Starts a streaming hash.
    pub fn hasher(self) -> Hasher {
        Hasher::new(self)
    }

    /// Hashes one buffer.
    pub fn digest(self, data: &[u8]) -> Hash {
        let mut h = self.hasher();
        h.update(data);
        h.finish()
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, HashError> {
        HashAlgo::from_name(s).ok_or_else(|| HashError::UnknownAlgo(s.to_owned()))
    }
}

/// Errors of hash parsing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    #[error("unknown hash type `{0}'")]
    UnknownAlgo(String),
    #[error("invalid hash `{0}'")]
    Invalid(String),
    #[error("hash `{hash}' has wrong length for hash type `{algo}'")]
    WrongLength { algo: HashAlgo, hash: String },
}

/// A digest together with its algorithm. The length always matches the algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hash {
    algo: HashAlgo,
    bytes: [u8; MAX_DIGEST_LEN],
}

impl Hash {
    /// Builds a hash from raw digest bytes; the length must match the algorithm.
    pub fn from_bytes(algo: HashAlgo, digest: &[u8]) -> Result<Hash, HashError> {
        if digest.len() != algo.digest_len() {
            return Err(HashError::WrongLength { algo, hash: base16_encode(digest) });
        }
        let mut bytes = [0u8; MAX_DIGEST_LEN];
        bytes[..digest.len()].copy_from_slice(digest);
        Ok(Hash { algo, bytes })
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.algo.digest_len()]
    }

    /// Lowercase base16, no algorithm prefix (wire form of QueryPathHash / narHash).
    pub fn to_base16(&self) -> String {
        base16_encode(self.as_bytes())
    }

    /// Nix base32, no algorithm prefix.
    pub fn to_nix_base32(&self) -> String {
        base32::encode(self.as_bytes())
    }

    /// `algo:base16`, the form of the `hash` column of `ValidPaths`.
    pub fn to_typed_base16(&self) -> String {
        format!("{}:{}", self.algo, self.to_base16())
    }

    /// `algo:base32`, the form used in narinfo files.
    pub fn to_typed_base32(&self) -> String {
        format!("{}:{}", self.algo, self.to_nix_base32())
    }

    /// Parses a hash of a known algorithm from base16 or Nix base32, told apart by length
    /// (`parseHash16or32`).
    pub fn parse_bare(algo: HashAlgo, s: &str) -> Result<Hash, HashError> {
        let len = algo.digest_len();
        let bytes = if s.len() == 2 * len {
            base16_decode(s).ok_or_else(|| HashError::Invalid(s.to_owned()))?
        } else if s.len() == base32::encoded_len(len) {
            base32::decode(s).map_err(|_| HashError::Invalid(s.to_owned()))?
        } else {
            return Err(HashError::WrongLength { algo, hash: s.to_owned() });
        };
        Hash::from_bytes(algo, &bytes)
    }

    /// Parses `algo:digest` with the digest in base16 or Nix base32.
    pub fn parse_typed(s: &str) -> Result<Hash, HashError> {
        let (algo, digest) = s.split_once(':').ok_or_else(|| HashError::Invalid(s.to_owned()))?;
        Hash::parse_bare(algo.parse()?, digest)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_typed_base16())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_typed_base16())
    }
}

/// Folds `digest` into `len` bytes by XOR (`compressHash`): byte `i` goes to `i % len`.
pub fn compress_hash(digest: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if len == 0 {
        return out;
    }
    for (i, b) in digest.iter().enumerate() {
        out[i % len] ^= b;
    }
    out
}

/// Lowercase base16.
pub fn base16_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// Base16 in either case; `None` on odd length or a non-hex character.
pub fn base16_decode(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

/// A streaming hash of any supported algorithm. Also an `io::Write`, so it can sit behind a
/// tee while a NAR is produced or consumed.
#[derive(Clone)]
pub struct Hasher {
    inner: HasherImpl,
}

#[derive(Clone)]
enum HasherImpl {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    Sha3_256(sha3::Sha3_256),
    Sha3_512(sha3::Sha3_512),
    Blake2s256(blake2::Blake2s256),
}

impl Hasher {
    pub fn new(algo: HashAlgo) -> Hasher {
        let inner = match algo {
            HashAlgo::Md5 => HasherImpl::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => HasherImpl::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => HasherImpl::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => HasherImpl::Sha512(sha2::Sha512::new()),
            HashAlgo::Sha3_256 => HasherImpl::Sha3_256(sha3::Sha3_256::new()),
            HashAlgo::Sha3_512 => HasherImpl::Sha3_512(sha3::Sha3_512::new()),
            HashAlgo::Blake2s256 => HasherImpl::Blake2s256(blake2::Blake2s256::new()),
        };
        Hasher { inner }
    }

    pub fn algo(&self) -> HashAlgo {
        match self.inner {
            HasherImpl::Md5(_) => HashAlgo::Md5,
            HasherImpl::Sha1(_) => HashAlgo::Sha1,
            HasherImpl::Sha256(_) => HashAlgo::Sha256,
            HasherImpl::Sha512(_) => HashAlgo::Sha512,
            HasherImpl::Sha3_256(_) => HashAlgo::Sha3_256,
            HasherImpl::Sha3_512(_) => HashAlgo::Sha3_512,
            HasherImpl::Blake2s256(_) => HashAlgo::Blake2s256,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.inner {
            HasherImpl::Md5(h) => h.update(data),
            HasherImpl::Sha1(h) => h.update(data),
            HasherImpl::Sha256(h) => h.update(data),
            HasherImpl::Sha512(h) => h.update(data),
            HasherImpl::Sha3_256(h) => h.update(data),
            HasherImpl::Sha3_512(h) => h.update(data),
            HasherImpl::Blake2s256(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Hash {
        let algo = self.algo();
        let digest: Vec<u8> = match self.inner {
            HasherImpl::Md5(h) => h.finalize().to_vec(),
            HasherImpl::Sha1(h) => h.finalize().to_vec(),
            HasherImpl::Sha256(h) => h.finalize().to_vec(),
            HasherImpl::Sha512(h) => h.finalize().to_vec(),
            HasherImpl::Sha3_256(h) => h.finalize().to_vec(),
            HasherImpl::Sha3_512(h) => h.finalize().to_vec(),
            HasherImpl::Blake2s256(h) => h.finalize().to_vec(),
        };
        let mut bytes = [0u8; MAX_DIGEST_LEN];
        bytes[..digest.len()].copy_from_slice(&digest);
        Hash { algo, bytes }
    }
}

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// SHA-256 of one buffer, as raw bytes (the hash used by every store path computation).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_digests() {
        let cases = [
            (HashAlgo::Md5, "d41d8cd98f00b204e9800998ecf8427e"),
            (HashAlgo::Sha1, "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            (HashAlgo::Sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ];
        for (algo, hex) in cases {
            assert_eq!(algo.digest(b"").to_base16(), hex);
        }
    }

    #[test]
    fn typed_forms_round_trip() {
        let h = HashAlgo::Sha256.digest(b"hello\n");
        assert_eq!(Hash::parse_typed(&h.to_typed_base16()).unwrap(), h);
        assert_eq!(Hash::parse_typed(&h.to_typed_base32()).unwrap(), h);
        assert!(Hash::parse_typed("sha256:abc").is_err());
        assert!(Hash::parse_typed("sha999:00").is_err());
        assert!(Hash::parse_typed("nocolon").is_err());
    }

    #[test]
    fn names_round_trip() {
        for a in HashAlgo::ALL {
            assert_eq!(HashAlgo::from_name(a.name()), Some(a));
            assert_eq!(a.digest(b"x").as_bytes().len(), a.digest_len());
        }
        assert_eq!(HashAlgo::from_name("SHA256"), None);
    }

    #[test]
    fn compress() {
        let digest: Vec<u8> = (0u8..32).collect();
        let c = compress_hash(&digest, 20);
        assert_eq!(c[0], 20);
        assert_eq!(c[11], 11 ^ 31);
        assert_eq!(c[12], 12);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,140}") {
            let _ = Hash::parse_typed(&s);
            let _ = base16_decode(&s);
        }
    }
}

#[cfg(feature = "serde")]
mod serde_impls {
    //! Hashes travel between our processes in their `algo:base16` form.
    use super::Hash;
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    impl Serialize for Hash {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&self.to_typed_base16())
        }
    }

    impl<'de> Deserialize<'de> for Hash {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
            let s = String::deserialize(d)?;
            Hash::parse_typed(&s).map_err(D::Error::custom)
        }
    }
}

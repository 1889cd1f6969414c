//! Narinfo files: what `guix publish` serves at `/<hash>.narinfo` and `guix substitute`
//! reads (`guix/narinfo.scm`, `guix/scripts/publish.scm`).
//!
//! A narinfo is a recutils-style record, one `Field: value` per line. `guix publish`
//! writes `StorePath`, `NarHash`, `NarSize`, `References` (base names separated by single
//! spaces, possibly none), `Deriver` (a base name, absent for derivations),
//! `Signature: 1;HOST;BASE64`, then per nar a `URL`, `Compression` and optional
//! `FileSize` block. The signature covers the UTF-8 bytes of the text *before the first
//! occurrence of `Signature:`*; its S-expression is `(signature (data … (hash sha256
//! SHA256(that text))) (sig-val …) (public-key …))` printed in advanced form, stored as
//! base64 of its UTF-8 encoding (Guix treats the printed bytes as Latin-1 characters).
//!
//! [`NarInfo::parse`] is strict (every line must be a known field, required fields present,
//! values well-formed) and keeps the original text, so [`NarInfo::text`] round-trips byte
//! for byte and [`NarInfo::verify`] checks exactly what was signed, like Guix's
//! `narinfo-contents`. [`NarInfo::new_signed`] writes what `guix publish` writes.

use thiserror::Error;

use crate::hash::{sha256, Hash};
use crate::sexp::{base64_decode, base64_encode, Sexp, SexpError};
use crate::signature::{self, Acl, PublicKey, SecretKey};
use crate::store_path::{StorePath, StorePathError};

/// Largest narinfo accepted, in bytes (Guix's are well under 4 KiB, signature included).
pub const MAX_NARINFO: usize = 1 << 20;

/// Why a narinfo could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarInfoError {
    #[error("narinfo too large ({0} bytes)")]
    TooLarge(usize),
    #[error("narinfo is not valid UTF-8")]
    NotUtf8,
    #[error("line {0}: not a `Field: value` line")]
    BadLine(usize),
    #[error("line {0}: unknown field `{1}`")]
    UnknownField(usize, String),
    #[error("line {0}: duplicate field `{1}`")]
    Duplicate(usize, String),
    #[error("line {0}: `{1}` before any `URL`")]
    OrphanNarField(usize, String),
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("line {0}: invalid store path `{1}`: {2}")]
    BadStorePath(usize, String, StorePathError),
    #[error("line {0}: invalid number `{1}`")]
    BadNumber(usize, String),
    #[error("line {0}: invalid hash `{1}`")]
    BadHash(usize, String),
    #[error("invalid format of the signature field: {0}")]
    BadSignatureField(String),
    #[error("unsupported signature version: {0}")]
    SignatureVersion(String),
    #[error("signature is not a valid s-expression: {0}")]
    SignatureSexp(#[from] SexpError),
}

/// Why a narinfo's signature is not accepted (the cases of Guix's `signature-case`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarInfoVerifyError {
    /// No `Signature` field, or `StorePath`, `NarHash` or `References` not above it.
    #[error("narinfo is not signed")]
    Unsigned,
    #[error("corrupt signature")]
    CorruptSignature,
    #[error("signed by an unauthorized party")]
    UnauthorizedKey,
    #[error("hash mismatch")]
    HashMismatch,
    #[error("invalid signature")]
    InvalidSignature,
}

/// One downloadable nar: a `URL` with its `Compression`, `FileSize` and `FileHash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarUrl {
    /// Relative to the cache URL or absolute, as written.
    pub url: String,
    /// `none`, `gzip`, `lzip`, `zstd`, … (absent in old narinfos).
    pub compression: Option<String>,
    pub file_size: Option<u64>,
    pub file_hash: Option<String>,
}

/// The `Signature` field: version 1, the signing host's name and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfoSignature {
    pub host: String,
    pub sexp: Sexp,
}

/// A parsed narinfo; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    store_dir: String,
    path: StorePath,
    nar_hash: Hash,
    nar_size: u64,
    references: Vec<StorePath>,
    deriver: Option<StorePath>,
    system: Option<String>,
    signature: Option<NarInfoSignature>,
    urls: Vec<NarUrl>,
    text: String,
}

const FIELDS: &[&str] = &[
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "System",
    "Signature",
];

/// Latin-1 bytes as a string of the same characters.
fn latin1_to_string(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Parses a `Signature` value: `1;HOST;BASE64`.
fn parse_signature_field(value: &str) -> Result<NarInfoSignature, NarInfoError> {
    let parts: Vec<&str> = value.split(';').collect();
    let [version, host, sig] = parts.as_slice() else {
        return Err(NarInfoError::BadSignatureField(value.to_owned()));
    };
    if *version != "1" {
        return Err(NarInfoError::SignatureVersion((*version).to_owned()));
    }
    let bad = || NarInfoError::BadSignatureField(value.to_owned());
    let utf8 = base64_decode(sig.as_bytes()).ok_or_else(bad)?;
    let text = String::from_utf8(utf8).map_err(|_| bad())?;
    // Guix hands the characters to libgcrypt as ISO-8859-1 bytes.
    let latin1: Vec<u8> =
        text.chars().map(|c| u8::try_from(u32::from(c)).map_err(|_| bad())).collect::<Result<_, _>>()?;
    Ok(NarInfoSignature { host: (*host).to_owned(), sexp: Sexp::parse(&latin1)? })
}

/// The `Signature` value for a signature S-expression.
fn signature_field(host: &str, sig: &Sexp) -> String {
    format!("1;{host};{}", base64_encode(latin1_to_string(&sig.to_advanced()).as_bytes()))
}

fn parse_number(line: usize, v: &str) -> Result<u64, NarInfoError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NarInfoError::BadNumber(line, v.to_owned()));
    }
    v.parse().map_err(|_| NarInfoError::BadNumber(line, v.to_owned()))
}

fn parse_base(line: usize, v: &str) -> Result<StorePath, NarInfoError> {
    StorePath::from_base_name(v).map_err(|e| NarInfoError::BadStorePath(line, v.to_owned(), e))
}

impl NarInfo {
    /// Parses a narinfo strictly; the text is kept for [`NarInfo::text`] and verification.
    pub fn parse(bytes: &[u8]) -> Result<NarInfo, NarInfoError> {
        if bytes.len() > MAX_NARINFO {
            return Err(NarInfoError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| NarInfoError::NotUtf8)?;
        let mut store: Option<(String, StorePath)> = None;
        let (mut nar_hash, mut nar_size, mut references, mut deriver, mut system, mut signature) =
            (None, None, None, None, None, None);
        let mut urls: Vec<NarUrl> = Vec::new();
        let mut lines = text.split('\n').enumerate().peekable();
        while let Some((i, line)) = lines.next() {
            let n = i + 1;
            if line.is_empty() {
                // Only the end of the text may follow the last newline (Guix would stop
                // reading the record at an empty line and ignore the rest).
                if lines.peek().is_some() {
                    return Err(NarInfoError::BadLine(n));
                }
                break;
            }
            let (field, value) = line.split_once(':').ok_or(NarInfoError::BadLine(n))?;
            let value = value.trim();
            if !FIELDS.contains(&field) {
                return Err(NarInfoError::UnknownField(n, field.to_owned()));
            }
            let dup = || NarInfoError::Duplicate(n, field.to_owned());
            match field {
                "StorePath" => {
                    if store.is_some() {
                        return Err(dup());
                    }
                    let (dir, base) =
                        value.rsplit_once('/').filter(|(dir, _)| dir.starts_with('/')).ok_or_else(|| {
                            NarInfoError::BadStorePath(
                                n,
                                value.to_owned(),
                                StorePathError::NotInStore(value.to_owned()),
                            )
                        })?;
                    store = Some((dir.to_owned(), parse_base(n, base)?));
                }
                "NarHash" => {
                    if nar_hash.is_some() {
                        return Err(dup());
                    }
                    nar_hash = Some(Hash::parse_typed(value).map_err(|_| NarInfoError::BadHash(n, value.to_owned()))?);
                }
                "NarSize" => {
                    if nar_size.replace(parse_number(n, value)?).is_some() {
                        return Err(dup());
                    }
                }
                "References" => {
                    let refs = value.split_whitespace().map(|r| parse_base(n, r)).collect::<Result<Vec<_>, _>>()?;
                    if references.replace(refs).is_some() {
                        return Err(dup());
                    }
                }
                "Deriver" => {
                    let d = if value.is_empty() { None } else { Some(parse_base(n, value)?) };
                    if deriver.replace(d).is_some() {
                        return Err(dup());
                    }
                }
                "System" => {
                    if system.replace(value.to_owned()).is_some() {
                        return Err(dup());
                    }
                }
                "Signature" => {
                    if signature.replace(parse_signature_field(value)?).is_some() {
                        return Err(dup());
                    }
                }
                "URL" => {
                    urls.push(NarUrl { url: value.to_owned(), compression: None, file_size: None, file_hash: None })
                }
                _ => {
                    let current = urls.last_mut().ok_or_else(|| NarInfoError::OrphanNarField(n, field.to_owned()))?;
                    let was_set = match field {
                        "Compression" => current.compression.replace(value.to_owned()).is_some(),
                        "FileSize" => current.file_size.replace(parse_number(n, value)?).is_some(),
                        _ => current.file_hash.replace(value.to_owned()).is_some(),
                    };
                    if was_set {
                        return Err(dup());
                    }
                }
            }
        }
        let (store_dir, path) = store.ok_or(NarInfoError::Missing("StorePath"))?;
        Ok(NarInfo {
            store_dir,
            path,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size: nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
            references: references.ok_or(NarInfoError::Missing("References"))?,
            deriver: deriver.flatten(),
            system,
            signature,
            urls,
            text: text.to_owned(),
        })
    }

    /// Writes and signs a narinfo exactly as `guix publish` does (`narinfo-string`):
    /// `NarHash` is printed as `sha256:<nix base32>`, `References` and `Deriver` as base
    /// names, `Deriver` only when given, and `FileSize` only when known.
    #[allow(clippy::too_many_arguments)]
    pub fn new_signed(
        store_dir: &str,
        path: &StorePath,
        nar_hash: &Hash,
        nar_size: u64,
        references: &[StorePath],
        deriver: Option<&StorePath>,
        urls: &[NarUrl],
        host: &str,
        secret: &SecretKey,
        public: &PublicKey,
    ) -> Result<NarInfo, NarInfoError> {
        let refs: Vec<String> = references.iter().map(StorePath::base_name).collect();
        let mut info = format!(
            "StorePath: {store_dir}/{}\nNarHash: {}:{}\nNarSize: {nar_size}\nReferences: {}\n",
            path.base_name(),
            nar_hash.algo(),
            nar_hash.to_nix_base32(),
            refs.join(" ")
        );
        if let Some(d) = deriver {
            info.push_str(&format!("Deriver: {}\n", d.base_name()));
        }
        let sig = signature::sign(secret, public, &sha256(info.as_bytes()));
        info.push_str(&format!("Signature: {}\n", signature_field(host, &sig)));
        for u in urls {
            info.push_str(&format!("URL: {}\nCompression: {}\n", u.url, u.compression.as_deref().unwrap_or("none")));
            if let Some(size) = u.file_size {
                info.push_str(&format!("FileSize: {size}\n"));
            }
            if let Some(h) = &u.file_hash {
                info.push_str(&format!("FileHash: {h}\n"));
            }
        }
        NarInfo::parse(info.as_bytes())
    }

    /// The narinfo text, byte for byte as parsed or written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The store directory of `StorePath` (e.g. `/gnu/store`).
    pub fn store_dir(&self) -> &str {
        &self.store_dir
    }

    pub fn path(&self) -> &StorePath {
        &self.path
    }

    pub fn nar_hash(&self) -> &Hash {
        &self.nar_hash
    }

    pub fn nar_size(&self) -> u64 {
        self.nar_size
    }

    pub fn references(&self) -> &[StorePath] {
        &self.references
    }

    pub fn deriver(&self) -> Option<&StorePath> {
        self.deriver.as_ref()
    }

    pub fn system(&self) -> Option<&str> {
        self.system.as_deref()
    }

    pub fn signature(&self) -> Option<&NarInfoSignature> {
        self.signature.as_ref()
    }

    pub fn urls(&self) -> &[NarUrl] {
        &self.urls
    }

    /// SHA-256 of the signed part (the text before `Signature:`), provided the
    /// mandatory fields `StorePath`, `NarHash` and `References` are in it
    /// (Guix's `narinfo-sha256`).
    pub fn signed_hash(&self) -> Option<[u8; 32]> {
        let above = self.text.get(..self.text.find("Signature:")?)?;
        let fields: Vec<&str> = above.lines().filter_map(|l| l.split_once(':').map(|(f, _)| f)).collect();
        ["StorePath", "NarHash", "References"].iter().all(|m| fields.contains(m)).then(|| sha256(above.as_bytes()))
    }

    /// Checks the signature against `acl` as `valid-narinfo?` does, in Guix's order:
    /// unsigned, corrupt, unauthorized, hash mismatch, invalid.
    pub fn verify(&self, acl: &Acl) -> Result<(), NarInfoVerifyError> {
        let (Some(hash), Some(sig)) = (self.signed_hash(), &self.signature) else {
            return Err(NarInfoVerifyError::Unsigned);
        };
        let sexp = &sig.sexp;
        let (Some(data), Some(subject)) = (sexp.find_token("data"), sexp.find_token("public-key")) else {
            return Err(NarInfoVerifyError::CorruptSignature);
        };
        if !acl.is_authorized_sexp(subject) {
            return Err(NarInfoVerifyError::UnauthorizedKey);
        }
        if signature::signed_hash(data) != Some(hash.as_slice()) {
            return Err(NarInfoVerifyError::HashMismatch);
        }
        signature::verify(sexp, acl).map(|_| ()).map_err(|_| NarInfoVerifyError::InvalidSignature)
    }
}

impl std::fmt::Display for NarInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "StorePath: /gnu/store/1x9vvimabb763h6ca48gb3p3cbshkyjq-narinfo-a
NarHash: sha256:1pm90v61iv2cgv23y2hpmfnqnlwr2sqzhw0bylyww7vh7f5rz8m8
NarSize: 168
References: 
URL: nar/1x9vvimabb763h6ca48gb3p3cbshkyjq-narinfo-a
Compression: none
FileSize: 168
";

    #[test]
    fn parses_unsigned() {
        let n = NarInfo::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(n.store_dir(), "/gnu/store");
        assert_eq!(n.path().base_name(), "1x9vvimabb763h6ca48gb3p3cbshkyjq-narinfo-a");
        assert_eq!(n.nar_size(), 168);
        assert!(n.references().is_empty());
        assert_eq!(n.urls().len(), 1);
        assert_eq!(n.urls()[0].file_size, Some(168));
        assert_eq!(n.text(), SAMPLE);
        assert_eq!(n.verify(&Acl::default()), Err(NarInfoVerifyError::Unsigned));
    }

    #[test]
    fn rejects_malformed() {
        for (bad, what) in [
            ("NarSize: 1\n", "missing"),
            ("Foo: bar\n", "unknown"),
            ("StorePath /x\n", "no colon"),
            ("Compression: none\n", "orphan"),
        ] {
            assert!(NarInfo::parse(bad.as_bytes()).is_err(), "{what}");
        }
        let dup = SAMPLE.replace("NarSize: 168\n", "NarSize: 168\nNarSize: 168\n");
        assert!(matches!(NarInfo::parse(dup.as_bytes()), Err(NarInfoError::Duplicate(..))));
        let neg = SAMPLE.replace("NarSize: 168", "NarSize: -1");
        assert!(matches!(NarInfo::parse(neg.as_bytes()), Err(NarInfoError::BadNumber(..))));
        let sig = format!("{SAMPLE}Signature: 2;h;AAAA\n");
        assert!(matches!(NarInfo::parse(sig.as_bytes()), Err(NarInfoError::SignatureVersion(_))));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = NarInfo::parse(&bytes);
        }

        #[test]
        fn mutated_sample_never_panics(pos in 0usize..300, byte in any::<u8>()) {
            let mut b = SAMPLE.as_bytes().to_vec();
            let p = pos % b.len();
            b[p] = byte;
            if let Ok(n) = NarInfo::parse(&b) {
                prop_assert_eq!(n.text().as_bytes(), &b[..]);
            }
        }
    }
}

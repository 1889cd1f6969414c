//! Guix signing keys, signatures and the ACL (`guix/pki.scm`, `guix authenticate`).
//!
//! Guix's keys are libgcrypt `(ecc (curve Ed25519) …)` keys generated with
//! `(genkey (ecdsa (curve Ed25519) (flags rfc6979)))`. Without the `eddsa` flag libgcrypt
//! signs them with **ECDSA over the Ed25519 curve**, not EdDSA: the signature value is
//! `(sig-val (ecdsa (r …) (s …)))`, `r` being the affine x of `k·G` mod the group order
//! `n`, `s = k⁻¹(h + d·r) mod n`, `h` the signed digest truncated to the 253 bits of `n`,
//! and `k` the RFC 6979 nonce (HMAC-SHA-256) derived from the secret scalar `d` exactly
//! as libgcrypt's `_gcry_dsa_gen_rfc6979_k` does. Signing is thus deterministic and our
//! signatures are byte-identical to Guix's. The secret `d` is a 255-bit integer (not an
//! EdDSA seed) and `q` is `d·G` in the 32-byte EdDSA point encoding.
//!
//! This module owns [`PublicKey`], [`SecretKey`], [`sign`] (what `guix authenticate sign`
//! returns), [`verify`] (what `guix authenticate verify` does: ACL check, signature check,
//! returns the signed hash) and the [`Acl`] (`/etc/guix/acl`). RSA keys, which Guix
//! still accepts in principle, are not supported.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::hash::HashAlgo;
use crate::sexp::{Sexp, SexpError};

/// Bits of the Ed25519 group order `n = 2^252 + 27742317777372353535851937790883648493`.
const QBITS: u64 = 253;

/// Errors reading keys and ACLs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error(transparent)]
    Sexp(#[from] SexpError),
    #[error("not a {0} S-expression")]
    NotA(&'static str),
    #[error("unsupported key: {0}")]
    Unsupported(String),
    #[error("invalid Ed25519 point in key")]
    BadPoint,
    #[error("secret key does not match its public key")]
    Mismatch,
    #[error("invalid access-control list")]
    InvalidAcl,
}

/// Why `verify` rejected a signature; messages are those of `guix authenticate`, each
/// carrying the advanced-form text of the offending S-expression.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// No `data` or no `public-key` in the signature.
    #[error("corrupt signature data: {}", String::from_utf8_lossy(.0))]
    Corrupt(Vec<u8>),
    /// The public key is not in the ACL.
    #[error("unauthorized public key: {}", String::from_utf8_lossy(.0))]
    Unauthorized(Vec<u8>),
    /// The signature does not verify (or its parts are malformed).
    #[error("invalid signature: {}", String::from_utf8_lossy(.0))]
    Invalid(Vec<u8>),
}

/// An Ed25519-curve public key, `(public-key (ecc (curve Ed25519) (q #…#)))`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    q: [u8; 32],
    point: EdwardsPoint,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", crate::hash::base16_encode(&self.q))
    }
}

/// The `ecc` part of a key: checks algorithm and curve, returns the list and `q`.
fn ecc_params<'a>(key: &'a Sexp, kind: &'static str) -> Result<(&'a Sexp, [u8; 32]), KeyError> {
    if key.head() != Some(kind.as_bytes()) {
        return Err(KeyError::NotA(kind));
    }
    let params = key.nth(1).filter(|p| p.as_list().is_some()).ok_or(KeyError::NotA(kind))?;
    match params.head() {
        Some(b"ecc") | Some(b"ecdsa") => {}
        other => {
            return Err(KeyError::Unsupported(format!(
                "algorithm {}",
                String::from_utf8_lossy(other.unwrap_or_default())
            )))
        }
    }
    match params.find_token("curve").and_then(|c| c.nth_atom(1)) {
        Some(b"Ed25519") | Some(b"1.3.6.1.4.1.11591.15.1") | Some(b"1.3.101.112") => {}
        other => {
            return Err(KeyError::Unsupported(format!("curve {}", String::from_utf8_lossy(other.unwrap_or_default()))))
        }
    }
    if let Some(flags) = params.find_token("flags") {
        let flags = flags.as_list().unwrap_or_default();
        if flags.iter().skip(1).any(|f| f.as_atom() == Some(b"eddsa")) {
            return Err(KeyError::Unsupported("EdDSA key".into()));
        }
    }
    let q = params
        .find_token("q")
        .and_then(|q| q.nth_atom(1))
        .and_then(|q| <[u8; 32]>::try_from(q).ok())
        .ok_or(KeyError::BadPoint)?;
    Ok((params, q))
}

impl PublicKey {
    /// A key from its 32-byte point encoding.
    pub fn from_q(q: [u8; 32]) -> Result<PublicKey, KeyError> {
        let point = CompressedEdwardsY(q).decompress().ok_or(KeyError::BadPoint)?;
        Ok(PublicKey { q, point })
    }

    /// Reads `(public-key (ecc (curve Ed25519) (q #…#)))`.
    pub fn from_sexp(sexp: &Sexp) -> Result<PublicKey, KeyError> {
        let (_, q) = ecc_params(sexp, "public-key")?;
        PublicKey::from_q(q)
    }

    /// Reads a public key file (`signing-key.pub`).
    pub fn parse(text: &[u8]) -> Result<PublicKey, KeyError> {
        PublicKey::from_sexp(&Sexp::parse(text)?)
    }

    /// The point encoding (`q`).
    pub fn q(&self) -> &[u8; 32] {
        &self.q
    }

    /// The S-expression Guix writes for this key.
    pub fn to_sexp(&self) -> Sexp {
        Sexp::tagged(
            "public-key",
            vec![Sexp::tagged(
                "ecc",
                vec![Sexp::tagged("curve", vec![Sexp::atom("Ed25519")]), Sexp::tagged("q", vec![Sexp::atom(self.q)])],
            )],
        )
    }

    /// The file text (`signing-key.pub`).
    pub fn to_advanced(&self) -> Vec<u8> {
        self.to_sexp().to_advanced()
    }
}

/// An Ed25519-curve secret key, `(private-key (ecc (curve Ed25519) (q #…#) (d #…#)))`.
#[derive(Clone)]
pub struct SecretKey {
    /// `d` as a 32-byte big-endian integer (libgcrypt reads it as an unsigned MPI).
    d: [u8; 32],
    public: PublicKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({:?})", self.public)
    }
}

impl SecretKey {
    /// Reads a secret key S-expression; `q` must be `d·G`.
    pub fn from_sexp(sexp: &Sexp) -> Result<SecretKey, KeyError> {
        let (params, q) = ecc_params(sexp, "private-key")?;
        let d_bytes = params.find_token("d").and_then(|d| d.nth_atom(1)).ok_or(KeyError::NotA("private-key"))?;
        // An unsigned MPI: drop leading zeros, then it must fit 32 bytes.
        let first = d_bytes.iter().position(|&b| b != 0).unwrap_or(d_bytes.len());
        let digits = d_bytes.get(first..).unwrap_or_default();
        if digits.is_empty() || digits.len() > 32 {
            return Err(KeyError::Unsupported("secret scalar size".into()));
        }
        let mut d = [0u8; 32];
        d[32 - digits.len()..].copy_from_slice(digits);
        let public = PublicKey::from_q(q)?;
        let key = SecretKey { d, public };
        if EdwardsPoint::mul_base(&key.scalar()).compress().0 != q {
            return Err(KeyError::Mismatch);
        }
        Ok(key)
    }

    /// Reads a secret key file (`signing-key.sec`).
    pub fn parse(text: &[u8]) -> Result<SecretKey, KeyError> {
        SecretKey::from_sexp(&Sexp::parse(text)?)
    }

    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn scalar(&self) -> Scalar {
        let mut le = self.d;
        le.reverse();
        Scalar::from_bytes_mod_order(le)
    }

    /// The S-expression Guix writes for this key.
    pub fn to_sexp(&self) -> Sexp {
        let first = self.d.iter().position(|&b| b != 0).unwrap_or(31);
        Sexp::tagged(
            "private-key",
            vec![Sexp::tagged(
                "ecc",
                vec![
                    Sexp::tagged("curve", vec![Sexp::atom("Ed25519")]),
                    Sexp::tagged("q", vec![Sexp::atom(self.public.q)]),
                    Sexp::tagged("d", vec![Sexp::atom(self.d.get(first..).unwrap_or_default())]),
                ],
            )],
        )
    }
}

/// The field `GF(2^255 - 19)` of the curve's coordinates, in constant-time Montgomery form.
mod field {
    use crypto_bigint::modular::constant_mod::Residue;
    use crypto_bigint::{impl_modulus, Encoding, Integer, U256};
    use curve25519_dalek::edwards::EdwardsPoint;
    use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

    impl_modulus!(P25519, U256, "7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffed");

    pub(super) type Fe = Residue<P25519, { U256::LIMBS }>;

    pub(super) const fn fe(be_hex: &str) -> Fe {
        Fe::new(&U256::from_be_hex(be_hex))
    }

    /// The curve constant `d = -121665/121666`.
    pub(super) const EDWARDS_D: Fe = fe("52036cee2b6ffe738cc740797779e89800700a4d4141d8ab75eb4dca135978a3");
    /// A square root of -1, `2^((p-1)/4)`.
    pub(super) const SQRT_M1: Fe = fe("2b8324804fc1df0b2b4d00993dfbd7a72f431806ad2fe478c4ee1b274a0ea0b0");
    /// `(p - 5) / 8`.
    const P_MINUS_5_DIV_8: U256 = U256::from_be_hex("0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffd");

    /// The affine x coordinate of `p` (libgcrypt `_gcry_mpi_ec_get_affine`), little-endian.
    ///
    /// In constant time, since `p` is `k·G` for the secret nonce `k` when signing: from the
    /// point's encoding (y and the sign of x, which curve25519-dalek computes in constant
    /// time), `x = ±sqrt((y² - 1)/(d·y² + 1))` as in RFC 8032 §5.1.3, with fixed
    /// exponentiations and selections instead of branches.
    pub(super) fn affine_x(p: &EdwardsPoint) -> [u8; 32] {
        let mut enc = p.compress().0;
        let sign = Choice::from(enc[31] >> 7);
        enc[31] &= 0x7f;
        let y = Fe::new(&U256::from_le_bytes(enc));
        let y2 = y.square();
        let u = y2.sub(&Fe::ONE);
        let v = EDWARDS_D.mul(&y2).add(&Fe::ONE);
        // x = u·v³·(u·v⁷)^((p-5)/8), a root of u/v or of -u/v.
        let v3 = v.square().mul(&v);
        let uv7 = u.mul(&v3.square()).mul(&v);
        let mut x = u.mul(&v3).mul(&uv7.pow(&P_MINUS_5_DIV_8));
        let is_root = v.mul(&x.square()).ct_eq(&u);
        x = Fe::conditional_select(&x.mul(&SQRT_M1), &x, is_root);
        let odd = x.retrieve().is_odd();
        x = Fe::conditional_select(&x, &x.neg(), odd ^ sign);
        x.retrieve().to_le_bytes()
    }
}

use field::affine_x;

/// A scalar from a big-endian integer below 2^256, reduced mod n.
fn scalar_be(be: &[u8; 32]) -> Scalar {
    let mut le = *be;
    le.reverse();
    Scalar::from_bytes_mod_order(le)
}

/// libgcrypt `_gcry_dsa_normalize_hash`: the digest as an integer truncated to its leftmost
/// QBITS bits (a digest of 32 bytes or more: its first 32 bytes shifted right by 3 bits),
/// big-endian.
fn hash_integer(value: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    match value.first_chunk::<32>() {
        Some(first) => {
            let shift = 256 - QBITS;
            let mut carry = 0u8;
            for (o, &b) in out.iter_mut().zip(first) {
                *o = carry | (b >> shift);
                carry = b << (8 - shift);
            }
        }
        None => out[32 - value.len()..].copy_from_slice(value),
    }
    out
}

/// RFC 6979 nonces as libgcrypt's `_gcry_dsa_gen_rfc6979_k` derives them for a 32-byte
/// SHA-256 digest and the 253-bit Ed25519 order; yields successive candidates. The nonce
/// stays in constant-time code: HMAC-SHA-256, byte shifts and curve25519-dalek's scalars.
struct Rfc6979 {
    k: [u8; 32],
    v: [u8; 32],
    first: bool,
}

impl Rfc6979 {
    fn new(d: &[u8; 32], digest: &[u8; 32]) -> Rfc6979 {
        // bits2octets(h): the truncated digest (below 2^253 < 2n) reduced mod n.
        let mut h1 = scalar_be(&hash_integer(digest)).to_bytes();
        h1.reverse();
        let mut g = Rfc6979 { k: [0; 32], v: [1; 32], first: true };
        g.k = g.hmac(&[&g.v, &[0], d, &h1]);
        g.v = g.hmac(&[&g.v]);
        g.k = g.hmac(&[&g.v, &[1], d, &h1]);
        g.v = g.hmac(&[&g.v]);
        g
    }

    fn hmac(&self, parts: &[&[u8]]) -> [u8; 32] {
        // HMAC accepts keys of any length; a 32-byte key cannot fail.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.k) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// The next candidate `k` with `0 < k < n`. Only whether a candidate is rejected
    /// depends on a branch, as RFC 6979 has it.
    fn next_k(&mut self) -> Scalar {
        loop {
            if !self.first {
                self.k = self.hmac(&[&self.v, &[0]]);
                self.v = self.hmac(&[&self.v]);
            }
            self.first = false;
            self.v = self.hmac(&[&self.v]);
            // bits2int: the leftmost QBITS bits of V.
            let mut le = hash_integer(&self.v);
            le.reverse();
            let k = Scalar::from_canonical_bytes(le);
            let k_ok = k.is_some() & !k.unwrap_or(Scalar::ZERO).ct_eq(&Scalar::ZERO);
            if bool::from(k_ok) {
                return k.unwrap_or(Scalar::ZERO);
            }
        }
    }
}

/// Minimal big-endian bytes of a positive integer (libgcrypt `%M` of a value below 2^253).
fn mpi_bytes(s: &Scalar) -> Vec<u8> {
    let mut be = s.to_bytes();
    be.reverse();
    let first = be.iter().position(|&b| b != 0).unwrap_or(31);
    be.get(first..).unwrap_or_default().to_vec()
}

/// `(data (flags rfc6979) (hash sha256 #DIGEST#))`, Guix's `bytevector->hash-data`.
pub fn hash_data(digest: &[u8; 32]) -> Sexp {
    Sexp::tagged(
        "data",
        vec![
            Sexp::tagged("flags", vec![Sexp::atom("rfc6979")]),
            Sexp::tagged("hash", vec![Sexp::atom("sha256"), Sexp::atom(digest.as_slice())]),
        ],
    )
}

/// Signs a SHA-256 digest as `guix authenticate sign` does: returns
/// `(signature (data …) (sig-val (ecdsa (r …) (s …))) PUBLIC)`, PUBLIC being the key
/// from `signing-key.pub`. Print it with [`Sexp::to_advanced`].
///
/// The secret scalar and the nonce only meet constant-time code: the nonce derivation
/// ([`Rfc6979`]), curve25519-dalek's `k·G`, scalar inversion and products, and the affine x
/// of `k·G` ([`affine_x`]).
pub fn sign(secret: &SecretKey, public: &PublicKey, digest: &[u8; 32]) -> Sexp {
    let h = scalar_be(&hash_integer(digest));
    let d = secret.scalar();
    let mut nonces = Rfc6979::new(&secret.d, digest);
    let (r, s) = loop {
        let k = nonces.next_k();
        let r = Scalar::from_bytes_mod_order(affine_x(&EdwardsPoint::mul_base(&k)));
        if r == Scalar::ZERO {
            continue;
        }
        let s = k.invert() * (h + d * r);
        if s != Scalar::ZERO {
            break (r, s);
        }
    };
    let sig_val = Sexp::tagged(
        "sig-val",
        vec![Sexp::tagged(
            "ecdsa",
            vec![
                Sexp::tagged("r", vec![Sexp::Atom(mpi_bytes(&r))]),
                Sexp::tagged("s", vec![Sexp::Atom(mpi_bytes(&s))]),
            ],
        )],
    );
    Sexp::tagged("signature", vec![hash_data(digest), sig_val, public.to_sexp()])
}

/// An unsigned MPI strictly between 0 and n, as a scalar.
fn sig_scalar(v: &[u8]) -> Option<Scalar> {
    let first = v.iter().position(|&b| b != 0)?;
    let digits = v.get(first..).filter(|d| d.len() <= 32)?;
    let mut le = [0u8; 32];
    le[..digits.len()].copy_from_slice(digits);
    le[..digits.len()].reverse();
    Option::from(Scalar::from_canonical_bytes(le))
}

/// `gcry_pk_verify(sig-val, data, public-key)` for Guix's key type.
fn ecdsa_verify(sig_val: &Sexp, data: &Sexp, public: &PublicKey) -> bool {
    // (sig-val (ecdsa (r …) (s …)))
    let Some(alg) = sig_val.nth(1) else { return false };
    if !matches!(alg.head(), Some(b"ecdsa") | Some(b"ecc")) {
        return false;
    }
    let part = |name| alg.find_token(name).and_then(|l| l.nth_atom(1)).and_then(sig_scalar);
    let (Some(r), Some(s)) = (part("r"), part("s")) else { return false };
    let Some(value) = signed_hash(data) else { return false };
    let flags_ok = match data.find_token("flags") {
        Some(flags) => {
            let fl = flags.as_list().unwrap_or_default();
            let rest = fl.get(1..).unwrap_or_default();
            rest.iter().all(|f| matches!(f.as_atom(), Some(b"rfc6979") | Some(b"raw")))
                && rest.iter().any(|f| f.as_atom().is_some())
        }
        None => false,
    };
    if !flags_ok {
        return false;
    }
    let h = scalar_be(&hash_integer(value));
    let w = s.invert();
    let x = EdwardsPoint::vartime_double_scalar_mul_basepoint(&(r * w), &public.point, &(h * w));
    Scalar::from_bytes_mod_order(affine_x(&x)) == r
}

/// The digest a `(data … (hash ALGO VALUE))` S-expression carries (Guix's
/// `hash-data->bytevector`), provided ALGO is a hash algorithm and VALUE is non-empty.
pub fn signed_hash(data: &Sexp) -> Option<&[u8]> {
    let hash = data.find_token("hash")?;
    if hash.as_list()?.len() != 3 {
        return None;
    }
    let algo = std::str::from_utf8(hash.nth_atom(1)?).ok()?;
    HashAlgo::from_name(algo)?;
    hash.nth_atom(2).filter(|v| !v.is_empty())
}

/// Verifies a signature S-expression as `guix authenticate verify` does: the signer's
/// key must be in `acl`, the signature must verify; returns the signed hash.
pub fn verify(signature: &Sexp, acl: &Acl) -> Result<Vec<u8>, VerifyError> {
    let data = signature.find_token("data");
    let subject = signature.find_token("public-key");
    let (Some(data), Some(subject)) = (data, subject) else {
        return Err(VerifyError::Corrupt(signature.to_advanced()));
    };
    if !acl.is_authorized_sexp(subject) {
        return Err(VerifyError::Unauthorized(subject.to_advanced()));
    }
    let valid = signature
        .find_token("sig-val")
        .is_some_and(|sig_val| PublicKey::from_sexp(subject).is_ok_and(|public| ecdsa_verify(sig_val, data, &public)));
    match (valid, signed_hash(data)) {
        (true, Some(hash)) => Ok(hash.to_vec()),
        _ => Err(VerifyError::Invalid(signature.to_advanced())),
    }
}

/// The ACL, `(acl (entry KEY (tag (guix import))) …)`: the keys whose signatures are
/// accepted for imports and substitutes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// Entry subjects, usually public-key S-expressions, without duplicates.
    subjects: Vec<Sexp>,
}

impl Acl {
    /// An ACL authorizing `keys` (Guix's `public-keys->acl`, duplicates dropped).
    pub fn new(keys: impl IntoIterator<Item = Sexp>) -> Acl {
        let mut acl = Acl::default();
        for k in keys {
            acl.authorize(k);
        }
        acl
    }

    /// Adds a key unless already present.
    pub fn authorize(&mut self, key: Sexp) {
        if !self.subjects.contains(&key) {
            self.subjects.push(key);
        }
    }

    /// Reads the ACL; every entry must be `(entry SUBJECT (tag (guix import)))`.
    pub fn from_sexp(sexp: &Sexp) -> Result<Acl, KeyError> {
        let items = sexp.as_list().ok_or(KeyError::InvalidAcl)?;
        let (head, entries) = items.split_first().ok_or(KeyError::InvalidAcl)?;
        if head.as_atom() != Some(b"acl") {
            return Err(KeyError::InvalidAcl);
        }
        let tag = Sexp::tagged("tag", vec![Sexp::list(vec![Sexp::atom("guix"), Sexp::atom("import")])]);
        let mut subjects = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry.as_list() {
                Some([e, subject, t]) if e.as_atom() == Some(b"entry") && *t == tag => subjects.push(subject.clone()),
                _ => return Err(KeyError::InvalidAcl),
            }
        }
        // Guix keeps duplicates when reading; membership is all that matters.
        Ok(Acl { subjects })
    }

    /// Reads an ACL file.
    pub fn parse(text: &[u8]) -> Result<Acl, KeyError> {
        Acl::from_sexp(&Sexp::parse(text)?)
    }

    /// The S-expression Guix writes.
    pub fn to_sexp(&self) -> Sexp {
        let entries = self.subjects.iter().map(|s| {
            Sexp::tagged(
                "entry",
                vec![s.clone(), Sexp::tagged("tag", vec![Sexp::list(vec![Sexp::atom("guix"), Sexp::atom("import")])])],
            )
        });
        Sexp::tagged("acl", entries.collect())
    }

    /// The file text (`/etc/guix/acl`).
    pub fn to_advanced(&self) -> Vec<u8> {
        self.to_sexp().to_advanced()
    }

    /// The entry subjects.
    pub fn subjects(&self) -> &[Sexp] {
        &self.subjects
    }

    /// Whether `key` is authorized (structural comparison, as Guix's `authorized-key?`).
    pub fn is_authorized(&self, key: &PublicKey) -> bool {
        self.is_authorized_sexp(&key.to_sexp())
    }

    /// Whether the key S-expression `key` is authorized.
    pub fn is_authorized_sexp(&self, key: &Sexp) -> bool {
        self.subjects.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use proptest::prelude::*;

    /// The Ed25519 group order, big-endian: `2^252 + 27742317777372353535851937790883648493`.
    const N_BE: [u8; 32] = [
        0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x14, 0xde, 0xf9, 0xde, 0xa2, 0xf7, 0x9c, 0xd6, 0x58, 0x12,
        0x63, 0x1a, 0x5c, 0xf5, 0xd3, 0xed,
    ];

    #[test]
    fn order_constant() {
        assert_eq!(scalar_be(&N_BE), Scalar::ZERO);
        assert_eq!(256 - u64::from(N_BE[0].leading_zeros()), QBITS);
        let mut n_minus_1 = N_BE;
        n_minus_1[31] -= 1;
        assert_eq!(sig_scalar(&n_minus_1), Some(-Scalar::ONE));
        assert_eq!(sig_scalar(&N_BE), None);
        assert_eq!(sig_scalar(&[0, 0, 1]), Some(Scalar::ONE));
        assert_eq!(sig_scalar(&[0, 0]), None);
        assert_eq!(sig_scalar(&[1; 33]), None);
    }

    #[test]
    fn field_constants() {
        use field::{fe, Fe, EDWARDS_D, SQRT_M1};
        let minus_one = Fe::ONE.neg();
        assert_eq!(SQRT_M1.square(), minus_one);
        let d_times = EDWARDS_D.mul(&fe("000000000000000000000000000000000000000000000000000000000001db42"));
        assert_eq!(d_times, fe("000000000000000000000000000000000000000000000000000000000001db41").neg());
    }

    #[test]
    fn hash_truncation() {
        let mut want = [0xff; 32];
        want[0] = 0x1f;
        assert_eq!(hash_integer(&[0xff; 32]), want);
        let mut long = [0u8; 64];
        long[0] = 0x80;
        long[32] = 0xff;
        let mut want = [0u8; 32];
        want[0] = 0x10;
        assert_eq!(hash_integer(&long), want);
        let mut want = [0u8; 32];
        want[30..].copy_from_slice(&[1, 2]);
        assert_eq!(hash_integer(&[1, 2]), want);
    }

    #[test]
    fn affine_x_of_base_point() {
        let be = |hex: &str| {
            let mut b: [u8; 32] = crate::hash::base16_decode(hex).unwrap().try_into().unwrap();
            b.reverse();
            b
        };
        let gx = "216936D3CD6E53FEC0A4E231FDD6DC5C692CC7609525A7B2C9562D608F25D51A";
        assert_eq!(affine_x(&ED25519_BASEPOINT_POINT), be(gx));
        // p - gx
        let minus_gx = "5E96C92C3291AC013F5B1DCE022923A396D3389F6ADA584D36A9D29F70DA2AD3";
        assert_eq!(affine_x(&-ED25519_BASEPOINT_POINT), be(minus_gx));
        assert_eq!(affine_x(&EdwardsPoint::default()), [0u8; 32]);
    }

    fn key_from_seed(seed: u8) -> SecretKey {
        let mut d = [seed; 32];
        d[0] = (d[0] & 0x3f) | 0x40;
        d[31] &= 0xf8;
        let mut le = d;
        le.reverse();
        let q = EdwardsPoint::mul_base(&Scalar::from_bytes_mod_order(le)).compress().0;
        SecretKey { d, public: PublicKey::from_q(q).unwrap() }
    }

    #[test]
    fn sign_verify_round_trip() {
        let key = key_from_seed(7);
        let acl = Acl::new([key.public_key().to_sexp()]);
        let digest = crate::hash::sha256(b"hello");
        let sig = sign(&key, key.public_key(), &digest);
        assert_eq!(verify(&sig, &acl), Ok(digest.to_vec()));
        let reparsed = Sexp::parse(&sig.to_advanced()).unwrap();
        assert_eq!(verify(&reparsed, &acl), Ok(digest.to_vec()));
        // Another key is unauthorized; a changed digest is invalid.
        assert!(matches!(verify(&sig, &Acl::default()), Err(VerifyError::Unauthorized(_))));
        let other = crate::hash::sha256(b"world");
        let text = String::from_utf8(sig.to_advanced()).unwrap();
        let forged = text.replace(
            &crate::hash::base16_encode(&digest).to_uppercase(),
            &crate::hash::base16_encode(&other).to_uppercase(),
        );
        assert!(matches!(verify(&Sexp::parse(forged.as_bytes()).unwrap(), &acl), Err(VerifyError::Invalid(_))));
        assert!(matches!(verify(&Sexp::parse(b"(signature)").unwrap(), &acl), Err(VerifyError::Corrupt(_))));
    }

    #[test]
    fn keys_round_trip() {
        let key = key_from_seed(3);
        let again = SecretKey::from_sexp(&key.to_sexp()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert_eq!(PublicKey::parse(&key.public_key().to_advanced()).unwrap(), *key.public_key());
        let other = key_from_seed(4);
        let mut bad = key.to_sexp().to_advanced();
        let q = crate::hash::base16_encode(key.public_key().q()).to_uppercase();
        let q2 = crate::hash::base16_encode(other.public_key().q()).to_uppercase();
        bad = String::from_utf8(bad).unwrap().replace(&q, &q2).into_bytes();
        assert_eq!(SecretKey::parse(&bad).unwrap_err(), KeyError::Mismatch);
    }

    proptest! {
        #[test]
        fn signatures_verify(seed in any::<u8>(), digest in any::<[u8; 32]>()) {
            let key = key_from_seed(seed);
            let acl = Acl::new([key.public_key().to_sexp()]);
            let sig = sign(&key, key.public_key(), &digest);
            prop_assert_eq!(verify(&sig, &acl), Ok(digest.to_vec()));
        }

        #[test]
        fn garbage_signatures_are_errors(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(s) = Sexp::parse(&bytes) {
                prop_assert!(verify(&s, &Acl::default()).is_err());
                let _ = Acl::from_sexp(&s);
                let _ = PublicKey::from_sexp(&s);
                let _ = SecretKey::from_sexp(&s);
            }
        }
    }
}

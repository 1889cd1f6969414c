//! Keys and the ACL: `PublicKey::parse` (`signing-key.pub`, keys inside signatures),
//! `SecretKey::parse` (`signing-key.sec`), `Acl::parse` (`/etc/guix/acl`). Properties: each
//! prints and parses back to itself; a secret key signs, and its signature verifies.
//! An input of a 0 byte and 64 more is instead a secret scalar `d` and a digest: the key
//! file for `d` (with `q = d·G`) is written, read, and used to sign and verify, so that
//! signing is exercised on arbitrary keys, not only the vectors'.
#![no_main]

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use guix_formats::hash::{base16_encode, sha256};
use guix_formats::signature::{sign, verify, Acl, PublicKey, SecretKey};
use libfuzzer_sys::fuzz_target;

fn sign_and_verify(key: &SecretKey, digest: &[u8; 32]) {
    let sig = sign(key, key.public_key(), digest);
    let acl = Acl::new([key.public_key().to_sexp()]);
    assert_eq!(verify(&sig, &acl).as_deref(), Ok(&digest[..]));
}

fuzz_target!(|data: &[u8]| {
    if let [0, rest @ ..] = data {
        if let (Some(d), Some(digest)) = (rest.first_chunk::<32>(), rest.get(32..64)) {
            let mut le = *d;
            le.reverse();
            let q = EdwardsPoint::mul_base(&Scalar::from_bytes_mod_order(le)).compress().0;
            let text =
                format!("(private-key (ecc (curve Ed25519) (q #{}#) (d #{}#)))", base16_encode(&q), base16_encode(d));
            match SecretKey::parse(text.as_bytes()) {
                Ok(key) => sign_and_verify(&key, digest.try_into().expect("32 bytes")),
                Err(e) => assert!(d.iter().all(|&b| b == 0), "{e}: {text}"),
            }
            return;
        }
    }
    if let Ok(key) = PublicKey::parse(data) {
        assert_eq!(PublicKey::parse(&key.to_advanced()).ok(), Some(key));
    }
    if let Ok(key) = SecretKey::parse(data) {
        let again = SecretKey::from_sexp(&key.to_sexp()).expect("a printed secret key");
        assert_eq!(again.public_key(), key.public_key());
        sign_and_verify(&key, &sha256(data));
    }
    if let Ok(acl) = Acl::parse(data) {
        assert_eq!(Acl::parse(&acl.to_advanced()).ok(), Some(acl));
    }
});

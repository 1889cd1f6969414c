//! The daemon's signature of exports: `<conf>/signing-key.sec`, read only by the process that
//! signs (store-db; the key is root's, mode 0600), with the checks and messages of the C++
//! daemon and `guix authenticate`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use guix_formats::signature::{self, SecretKey};
use guix_formats::Hash;

use crate::strerror;

/// The key's file name in the configuration directory.
pub const SIGNING_KEY_FILE: &str = "signing-key.sec";

/// `checkSecrecy`, then the key itself.
pub fn load_secret_key(path: &Path) -> Result<SecretKey, String> {
    let md =
        std::fs::metadata(path).map_err(|e| format!("getting status of `{}': {}", path.display(), strerror(&e)))?;
    if md.permissions().mode() & 0o077 != 0 {
        return Err(format!("file `{}' should be secret (inaccessible to everyone else)!", path.display()));
    }
    let text = std::fs::read(path).map_err(|e| format!("opening file `{}': {}", path.display(), strerror(&e)))?;
    SecretKey::parse(&text).map_err(|e| format!("reading signing key `{}': {e}", path.display()))
}

/// Signs an export record's SHA-256 `digest` with the key in `key_file`: the signature as it
/// goes into the export trailer (canonical S-expression, advanced syntax).
pub fn sign_digest(key_file: &Path, digest: &Hash) -> Result<Vec<u8>, String> {
    let key = load_secret_key(key_file)?;
    let d: [u8; 32] = digest.as_bytes().try_into().map_err(|_| "signed digest is not SHA-256".to_owned())?;
    Ok(signature::sign(&key, key.public_key(), &d).to_advanced())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_must_be_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(SIGNING_KEY_FILE);
        let missing = sign_digest(&file, &guix_formats::HashAlgo::Sha256.digest(b"x")).unwrap_err();
        assert!(missing.starts_with("getting status of `"), "{missing}");
        std::fs::write(&file, b"not a key").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = sign_digest(&file, &guix_formats::HashAlgo::Sha256.digest(b"x")).unwrap_err();
        assert!(open.ends_with("should be secret (inaccessible to everyone else)!"), "{open}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let bad = sign_digest(&file, &guix_formats::HashAlgo::Sha256.digest(b"x")).unwrap_err();
        assert!(bad.starts_with("reading signing key `"), "{bad}");
    }
}

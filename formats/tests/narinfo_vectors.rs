//! Checks `narinfo` against narinfos served by the real `guix publish`
//! (`tests/vectors/gen/narinfo.scm`, format documented there). They are signed with the
//! rig's throwaway key, whose public key, secret key and ACL are in `signature.txt`.

use guix_formats::hash::base16_decode;
use guix_formats::narinfo::{NarInfo, NarInfoVerifyError};
use guix_formats::signature::{Acl, PublicKey, SecretKey};

fn field(file: &str, kind: &str) -> Vec<u8> {
    let line = file.lines().find(|l| l.starts_with(&format!("{kind} "))).unwrap();
    base16_decode(line.split(' ').nth(1).unwrap()).unwrap()
}

fn narinfos() -> Vec<(String, Vec<u8>, bool)> {
    let text = include_str!("vectors/narinfo.txt");
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    for pair in lines.chunks(2) {
        let n: Vec<&str> = pair[0].split(' ').collect();
        let v: Vec<&str> = pair[1].split(' ').collect();
        assert_eq!((n[0], v[0], n[1]), ("narinfo", "valid", v[1]));
        out.push((n[1].to_string(), base16_decode(n[2]).unwrap(), v[2] == "true"));
    }
    out
}

#[test]
fn publish_narinfos_parse_round_trip_and_verify() {
    let sig = include_str!("vectors/signature.txt");
    let acl = Acl::parse(&field(sig, "rig-acl")).unwrap();
    let public = PublicKey::parse(&field(sig, "rig-public")).unwrap();
    let secret = SecretKey::parse(&field(sig, "rig-secret")).unwrap();
    let all = narinfos();
    assert_eq!(all.len(), 6);
    let mut with_deriver = 0;
    for (path, bytes, guix_valid) in all {
        let info = NarInfo::parse(&bytes).unwrap();
        assert_eq!(format!("{}/{}", info.store_dir(), info.path().base_name()), path);
        assert_eq!(info.text().as_bytes(), bytes.as_slice());
        assert!(guix_valid);
        assert_eq!(info.verify(&acl), Ok(()));
        assert_eq!(info.verify(&Acl::default()), Err(NarInfoVerifyError::UnauthorizedKey));
        with_deriver += usize::from(info.deriver().is_some());

        // Writing the same facts with the same key reproduces publish's text exactly.
        let sig = info.signature().unwrap();
        let again = NarInfo::new_signed(
            info.store_dir(),
            info.path(),
            info.nar_hash(),
            info.nar_size(),
            info.references(),
            info.deriver(),
            info.urls(),
            &sig.host,
            &secret,
            &public,
        )
        .unwrap();
        assert_eq!(again.text(), info.text());

        // Tampering with the signed part breaks the hash; the unsigned part is free.
        let text = info.text();
        let tampered = text.replacen("NarSize: ", "NarSize: 1", 1);
        let t = NarInfo::parse(tampered.as_bytes()).unwrap();
        assert_eq!(t.verify(&acl), Err(NarInfoVerifyError::HashMismatch));
        let moved = text.replacen("Compression: gzip", "Compression: zstd", 1);
        assert_eq!(NarInfo::parse(moved.as_bytes()).unwrap().verify(&acl), Ok(()));
    }
    assert_eq!(with_deriver, 1);
}

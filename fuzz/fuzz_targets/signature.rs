//! Signature verification (`signature::verify`, what `guix authenticate verify` does for
//! imports): a signature S-expression checked against the rig's ACL of the vectors, and
//! against an ACL that authorizes whatever key the signature names, so the ECDSA check runs
//! on arbitrary points and values. Property: an accepted signature returns the hash its
//! `data` carries.
#![no_main]

use guix_formats::sexp::Sexp;
use guix_formats::signature::{signed_hash, verify, Acl};
use guix_formats_fuzz::acl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sig) = Sexp::parse(data) else { return };
    let own = Acl::new(sig.find_token("public-key").cloned());
    for acl in [acl(), &own] {
        if let Ok(hash) = verify(&sig, acl) {
            let data = sig.find_token("data").expect("verified signatures have data");
            assert_eq!(signed_hash(data), Some(&hash[..]));
        }
    }
});

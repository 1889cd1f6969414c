//! Narinfo files from substitute servers (`NarInfo::parse`), then their signature checked
//! against the rig's ACL of the vectors and against one that authorizes the key they name.
//! Property: the parser keeps the text (`text()` is the input), and the text parses back to
//! the same narinfo.
#![no_main]

use guix_formats::narinfo::NarInfo;
use guix_formats::signature::Acl;
use guix_formats_fuzz::acl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(info) = NarInfo::parse(data) else { return };
    assert_eq!(info.text().as_bytes(), data);
    assert_eq!(NarInfo::parse(info.to_string().as_bytes()).ok().as_ref(), Some(&info));
    let _ = info.verify(acl());
    if let Some(sig) = info.signature() {
        let own = Acl::new(sig.sexp.find_token("public-key").cloned());
        let _ = info.verify(&own);
    }
});

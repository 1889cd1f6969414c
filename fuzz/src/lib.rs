//! Helpers shared by the fuzz targets in `fuzz_targets/`: running the async (tokio) parsers
//! over in-memory bytes, and the real keys of `formats/tests/vectors/signature.txt` that the
//! signature targets verify against.

use std::future::Future;
use std::sync::OnceLock;

use guix_formats::hash::base16_decode;
use guix_formats::signature::{Acl, PublicKey};

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime");
}

/// Runs `f` to completion on this thread's current-thread runtime. The parsers only ever wait
/// on in-memory readers, so nothing here needs the I/O driver or timers.
pub fn block_on<F: Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}

/// The first field of the first line of `kind` in the signature vectors.
fn signature_vector(kind: &str) -> Vec<u8> {
    let text = include_str!("../../formats/tests/vectors/signature.txt");
    text.lines()
        .find_map(|l| l.strip_prefix(kind)?.strip_prefix(' '))
        .and_then(|rest| base16_decode(rest.split(' ').next()?))
        .unwrap_or_else(|| panic!("no `{kind}' vector"))
}

/// The ACL of the test rig (`rig-acl`, the key the real daemon signs exports with) plus the
/// key that signed the `sign` vectors (`key-public`).
pub fn acl() -> &'static Acl {
    static ACL: OnceLock<Acl> = OnceLock::new();
    ACL.get_or_init(|| {
        let mut acl = Acl::parse(&signature_vector("rig-acl")).expect("rig-acl vector");
        let key = PublicKey::parse(&signature_vector("key-public")).expect("key-public vector");
        acl.authorize(key.to_sexp());
        acl
    })
}

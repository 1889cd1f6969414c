//! NAR validation, parse only (`nar::validate`, `validate_copy`, `Node::from_nar`): what the
//! daemon does with an AddToStore NAR, an imported NAR whose path is already valid, and a
//! downloaded substitute. Properties: all readers accept the same language and consume the
//! same bytes; the summary is the SHA-256 and length of those bytes; an accepted NAR is
//! canonical, so writing its tree back reproduces it byte for byte.
#![no_main]

use guix_formats::hash::{sha256, HashAlgo};
use guix_formats::nar::{self, Limits, Node};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut input = data;
    let validated = nar::validate(&mut input, &limits);
    let used = data.len() - input.len();

    let mut copy = Vec::new();
    let mut input = data;
    let copied = nar::validate_copy(&mut input, &mut copy, &limits);
    let copy_used = data.len() - input.len();

    let mut input = data;
    let tree = Node::from_nar(&mut input, &limits);
    let tree_used = data.len() - input.len();

    match (validated, copied, tree) {
        (Ok(a), Ok(b), Ok((node, c))) => {
            // On success every reader consumed exactly the NAR (on errors a short read may
            // swallow the rest of the input).
            assert_eq!((copy_used, tree_used), (used, used));
            assert_eq!(copy, data[..used]);
            assert_eq!(a, b);
            assert_eq!(a, c);
            assert_eq!(a.nar_size, used as u64);
            assert_eq!(a.nar_hash.algo(), HashAlgo::Sha256);
            assert_eq!(a.nar_hash.as_bytes(), sha256(&data[..used]));
            assert_eq!(node.to_nar().expect("an accepted tree"), data[..used]);
        }
        (Err(_), Err(_), Err(_)) => {}
        (a, b, c) => panic!("readers disagree: {a:?} / {b:?} / {:?}", c.map(|(_, s)| s)),
    }
});

//! Reference scanning (`RefScanner`) of bytes from a peer (the NAR of AddToStore, of
//! imports and substitutes), fed in chunks of the size the first input byte picks.
//! Candidates are the hash-part-shaped windows of the first half of the rest; the second
//! half is scanned. Property: a candidate is found exactly when it occurs in the scanned
//! bytes, wherever the chunk boundaries fall.
#![no_main]

use std::collections::BTreeSet;

use guix_formats::nar::RefScanner;
use guix_formats::store_path::HashPart;
use libfuzzer_sys::fuzz_target;

const LEN: usize = 32;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let chunk = usize::from(chunk % 64) + 1;
    let (head, scanned) = rest.split_at(rest.len() / 2);
    let candidates: BTreeSet<HashPart> =
        head.windows(LEN).filter_map(|w| HashPart::parse(std::str::from_utf8(w).ok()?).ok()).collect();
    let mut scanner = RefScanner::new(&candidates);
    for c in scanned.chunks(chunk) {
        scanner.update(c);
    }
    let want: BTreeSet<HashPart> =
        candidates.iter().filter(|c| scanned.windows(LEN).any(|w| w == c.as_str().as_bytes())).cloned().collect();
    assert_eq!(scanner.found(), &want);
});

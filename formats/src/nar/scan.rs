//! Reference scanning (C++ `scanForReferences`): which of a set of store paths an item refers
//! to, found by searching its NAR serialisation for their 32-character hash parts — file
//! contents, entry names and symlink targets alike — in the same pass that computes the NAR's
//! SHA-256 and size.
//!
//! [`RefScanner`] is the sans-IO core: feed it the bytes of a stream in chunks of any size (a
//! hash part may straddle chunk boundaries) and it reports the candidates it saw.
//! [`ScanWriter`] is that core as an [`io::Write`] sink, and [`scan_path`] runs
//! [`dump_path`](super::dump_path) into it.

use std::collections::{BTreeSet, HashSet};
use std::io::{self, Write};
use std::path::Path;

use super::{NarError, NarSummary};
use crate::base32;
use crate::store_path::{HashPart, HASH_PART_LEN};

/// Bytes of context kept from one chunk for the next: a hash part that starts in one chunk
/// ends at most this many bytes into the next.
const CARRY: usize = HASH_PART_LEN - 1;

/// Searches a byte stream for the hash parts of a set of candidates.
///
/// The search finds every occurrence of a candidate, wherever it lies relative to the chunk
/// boundaries: a window of 32 bytes matches when all of them are base32 digits and they equal
/// a candidate's hash part, which is what the C++ `search` decides.
pub struct RefScanner {
    /// Candidates not seen yet.
    pending: HashSet<[u8; HASH_PART_LEN]>,
    /// A bit per possible first two bytes of a pending candidate: most windows are rejected
    /// without hashing them.
    prefix: Box<[u64; 1024]>,
    found: BTreeSet<HashPart>,
    /// The last bytes of the stream so far (at most [`CARRY`]).
    carry: Vec<u8>,
    /// Base32 digits that end the stream so far (saturating at 32).
    run: usize,
}

impl RefScanner {
    pub fn new<'a>(candidates: impl IntoIterator<Item = &'a HashPart>) -> RefScanner {
        let mut prefix = Box::new([0u64; 1024]);
        let mut pending = HashSet::new();
        for c in candidates {
            let mut bytes = [0u8; HASH_PART_LEN];
            bytes.copy_from_slice(c.as_str().as_bytes());
            let p = prefix_index(bytes[0], bytes[1]);
            prefix[p / 64] |= 1 << (p % 64);
            pending.insert(bytes);
        }
        RefScanner { pending, prefix, found: BTreeSet::new(), carry: Vec::with_capacity(2 * CARRY), run: 0 }
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, data: &[u8]) {
        if self.pending.is_empty() || data.is_empty() {
            return;
        }
        for (i, &b) in data.iter().enumerate() {
            if base32::digit_value(b).is_none() {
                self.run = 0;
                continue;
            }
            self.run = (self.run + 1).min(HASH_PART_LEN);
            if self.run < HASH_PART_LEN {
                continue;
            }
            // A window of 32 digits ends at `i`.
            if i + 1 >= HASH_PART_LEN {
                let start = i + 1 - HASH_PART_LEN;
                self.consider(&data[start..=i]);
            } else {
                // It began in the carry: only the first 31 positions of a chunk get here.
                let from_carry = HASH_PART_LEN - (i + 1);
                let mut window = [0u8; HASH_PART_LEN];
                window[..from_carry].copy_from_slice(&self.carry[self.carry.len() - from_carry..]);
                window[from_carry..].copy_from_slice(&data[..=i]);
                self.consider(&window);
            }
            if self.pending.is_empty() {
                return;
            }
        }
        // Keep the last CARRY bytes of the stream for the next chunk.
        if data.len() >= CARRY {
            self.carry.clear();
            self.carry.extend_from_slice(&data[data.len() - CARRY..]);
        } else {
            self.carry.extend_from_slice(data);
            let excess = self.carry.len().saturating_sub(CARRY);
            self.carry.drain(..excess);
        }
    }

    fn consider(&mut self, window: &[u8]) {
        let p = prefix_index(window[0], window[1]);
        if self.prefix[p / 64] & (1 << (p % 64)) == 0 {
            return;
        }
        let mut key = [0u8; HASH_PART_LEN];
        key.copy_from_slice(window);
        if self.pending.remove(&key) {
            // The window equals a candidate's hash part, so it is one.
            if let Some(h) = std::str::from_utf8(&key).ok().and_then(|s| HashPart::parse(s).ok()) {
                self.found.insert(h);
            }
        }
    }

    /// The candidates seen so far.
    pub fn found(&self) -> &BTreeSet<HashPart> {
        &self.found
    }

    pub fn into_found(self) -> BTreeSet<HashPart> {
        self.found
    }
}

fn prefix_index(a: u8, b: u8) -> usize {
    (usize::from(a) << 8) | usize::from(b)
}

/// A sink that scans everything written to it for references.
pub struct ScanWriter {
    scanner: RefScanner,
}

impl ScanWriter {
    pub fn new(scanner: RefScanner) -> ScanWriter {
        ScanWriter { scanner }
    }

    pub fn into_scanner(self) -> RefScanner {
        self.scanner
    }
}

impl Write for ScanWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.scanner.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What [`scan_path`] learned about a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanResult {
    /// SHA-256 and size of the tree's NAR.
    pub summary: NarSummary,
    /// The candidates whose hash part occurs in the NAR.
    pub found: BTreeSet<HashPart>,
}

/// `scanForReferences`: the NAR hash and size of the tree at `path`, and which of the
/// `candidates` its NAR mentions, in one pass over the files.
pub fn scan_path<'a>(path: &Path, candidates: impl IntoIterator<Item = &'a HashPart>) -> Result<ScanResult, NarError> {
    let mut sink = ScanWriter::new(RefScanner::new(candidates));
    let summary = super::dump_path(path, &mut sink)?;
    Ok(ScanResult { summary, found: sink.into_scanner().into_found() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn hp(s: &str) -> HashPart {
        HashPart::parse(s).unwrap()
    }

    const A: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    const B: &str = "zyxwvsrqpnmlkjihgfdcba9876543210";
    const C: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    /// Every occurrence, the slow way.
    fn naive(data: &[u8], candidates: &[HashPart]) -> BTreeSet<HashPart> {
        candidates.iter().filter(|c| data.windows(32).any(|w| w == c.as_str().as_bytes())).copied().collect()
    }

    #[test]
    fn finds_hash_parts_across_every_chunk_boundary() {
        let cands = [hp(A), hp(B), hp(C)];
        let mut data = b"xx/gnu/store/".to_vec();
        data.extend_from_slice(A.as_bytes());
        data.extend_from_slice(b"-foo\0\xff");
        // B embedded in a longer run of digits: found at a non-aligned offset of the run.
        data.extend_from_slice(b"00");
        data.extend_from_slice(B.as_bytes());
        data.extend_from_slice(b"11 tail");
        assert_eq!(naive(&data, &cands), [hp(A), hp(B)].into_iter().collect());
        // One split point anywhere, and also chunks of every fixed size.
        for split in 0..=data.len() {
            let mut s = RefScanner::new(&cands);
            s.update(&data[..split]);
            s.update(&data[split..]);
            assert_eq!(s.found(), &naive(&data, &cands), "split at {split}");
        }
        for size in 1..40 {
            let mut s = RefScanner::new(&cands);
            for chunk in data.chunks(size) {
                s.update(chunk);
            }
            assert_eq!(s.found(), &naive(&data, &cands), "chunks of {size}");
        }
    }

    #[test]
    fn a_non_digit_breaks_a_match_and_near_misses_do_not_count() {
        let cands = [hp(A)];
        // 31 digits of A, then a non-digit, then the last digit: no match in any chunking.
        let mut data = A.as_bytes()[..31].to_vec();
        data.push(b'-');
        data.push(A.as_bytes()[31]);
        for size in 1..=data.len() {
            let mut s = RefScanner::new(&cands);
            data.chunks(size).for_each(|c| s.update(c));
            assert!(s.found().is_empty(), "chunks of {size}");
        }
        // A candidate's hash part shifted by one digit inside a run is not a match either.
        let mut s = RefScanner::new(&cands);
        s.update(format!("1{}", &A[..31]).as_bytes());
        assert!(s.found().is_empty());
    }

    #[test]
    fn random_streams_agree_with_the_naive_search() {
        // Deterministic pseudo-random streams rich in base32 digits, with candidates planted.
        let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz-e/";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let cands: Vec<HashPart> = [A, B, C, "0000000000000000000000000000000z"].iter().map(|s| hp(s)).collect();
        for round in 0..200 {
            let len = (next() % 300) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            if round % 2 == 0 && len > 40 {
                let at = (next() as usize) % (len - 32);
                let c = &cands[(next() % cands.len() as u64) as usize];
                data[at..at + 32].copy_from_slice(c.as_str().as_bytes());
            }
            let size = 1 + (next() % 50) as usize;
            let mut s = RefScanner::new(&cands);
            data.chunks(size).for_each(|c| s.update(c));
            assert_eq!(s.found(), &naive(&data, &cands), "round {round}");
        }
    }

    #[test]
    fn scan_path_sees_contents_names_and_symlink_targets_and_hashes_like_dump_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("item");
        fs::create_dir(&root).unwrap();
        // A file big enough to be copied in several chunks, with A right across 64 KiB.
        let mut big = vec![b'.'; 200_000];
        big[65_536 - 10..65_536 + 22].copy_from_slice(A.as_bytes());
        fs::write(root.join("big"), &big).unwrap();
        // B only as an entry name, C only as a symlink target.
        fs::write(root.join(format!("{B}-name")), b"nothing").unwrap();
        std::os::unix::fs::symlink(format!("/gnu/store/{C}-x/bin"), root.join("link")).unwrap();
        let other = hp("11111111111111111111111111111111");
        let cands = [hp(A), hp(B), hp(C), other];
        let r = scan_path(&root, &cands).unwrap();
        assert_eq!(r.found, [hp(A), hp(B), hp(C)].into_iter().collect());
        let mut nar = Vec::new();
        let expected = super::super::dump_path(&root, &mut nar).unwrap();
        assert_eq!(r.summary, expected);
        assert_eq!(r.summary.nar_size, nar.len() as u64);
        assert_eq!(r.found, naive(&nar, &cands));
    }

    #[test]
    fn no_candidates_still_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, A).unwrap();
        let r = scan_path(&f, &[]).unwrap();
        assert!(r.found.is_empty());
        assert_eq!(r.summary, super::super::dump_path(&f, &mut io::sink()).unwrap());
    }
}

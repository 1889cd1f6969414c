//! The daemon's side of ImportPaths' data tunnel (`TunnelSource`): it asks the client for
//! data with `STDERR_READ 32768` and reads each answer, a string of 1 to 32768 bytes. The
//! input is the client's answers. Property: what comes out is exactly the concatenation of
//! the well-formed answers before the first bad one, and one request went out per answer
//! read plus the one that got no good answer.
#![no_main]

use guix_formats::worker::{TunnelSource, STDERR_READ};
use guix_formats_fuzz::block_on;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncReadExt;

const MAX: u64 = 32768;

/// The answers, decoded independently of the state machine under test.
fn reference(mut data: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut answers = 0;
    while let Some((word, rest)) = data.split_first_chunk::<8>() {
        let len = u64::from_le_bytes(*word);
        if len == 0 || len > MAX {
            break;
        }
        let len = len as usize;
        let total = len.div_ceil(8) * 8;
        let Some(body) = rest.get(..total) else { break };
        if body[len..].iter().any(|&b| b != 0) {
            break;
        }
        out.extend_from_slice(&body[..len]);
        answers += 1;
        data = &rest[total..];
    }
    (out, answers)
}

fuzz_target!(|data: &[u8]| {
    let (want, answers) = reference(data);
    block_on(async {
        let mut peer = tokio::io::join(data, Vec::new());
        let mut got = Vec::new();
        // The client's answers always run out: the tunnel has no clean end of its own.
        let res = TunnelSource::new(&mut peer).read_to_end(&mut got).await;
        assert!(res.is_err());
        assert_eq!(got, want);
        let (_, requests) = peer.into_inner();
        let mut one = Vec::new();
        one.extend_from_slice(&u64::from(STDERR_READ).to_le_bytes());
        one.extend_from_slice(&MAX.to_le_bytes());
        assert_eq!(requests, one.repeat(answers + 1));
    });
});

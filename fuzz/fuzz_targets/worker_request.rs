//! The daemon reading requests (`read_op` and each opcode's fields, `read_request`), as
//! socket-front does on every connection. Input: one byte, the client's protocol minor (the
//! version every optional field depends on), then the request stream. AddToStore's inline NAR
//! is validated as the daemon reads it. Property: every decoded request, written back with
//! `write_request`, decodes to itself and is consumed exactly.
#![no_main]

use guix_formats::nar;
use guix_formats::worker::{read_request, write_request, Limits, Request};
use guix_formats::StoreDir;
use guix_formats_fuzz::block_on;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&minor, mut input)) = data.split_first() else { return };
    let version = 0x100 | u32::from(minor);
    let store = StoreDir::default();
    let limits = Limits::DEFAULT;
    block_on(async {
        loop {
            let req = match read_request(&mut input, &store, version, &limits).await {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(e) if e.closes_connection() => break,
                // A malformed path inside the store: the request was read to its end and the
                // connection goes on, as in the C++ daemon.
                Err(_) => continue,
            };
            let mut out = Vec::new();
            write_request(&mut out, &req, &store, version).await.expect("writing to a Vec");
            let mut again = &out[..];
            let back = read_request(&mut again, &store, version, &limits).await;
            assert_eq!(back.ok().flatten().as_ref(), Some(&req), "round trip of {req:?}");
            assert!(again.is_empty(), "{} bytes left after {req:?}", again.len());
            if let Request::AddToStore { .. } = req {
                if nar::validate(&mut input, &nar::Limits::default()).is_err() {
                    break;
                }
            }
        }
    });
});

//! The handshake, both sides. Input: one byte of choices, then the peer's bytes.
//! Even first byte: the daemon's side (`server_handshake`), then requests with the version
//! the client announced, as socket-front does. Odd: the client's side (`client_handshake`
//! with the options the byte's other bits pick), then the STDERR frames up to the end of
//! the handshake, as the Rust client does.
#![no_main]

use guix_formats::worker::{
    client_handshake, read_request, read_stderr, server_handshake, ClientHello, Limits, PROTOCOL_VERSION,
};
use guix_formats::StoreDir;
use guix_formats_fuzz::block_on;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, input)) = data.split_first() else { return };
    let limits = Limits::DEFAULT;
    block_on(async {
        let mut peer = tokio::io::join(input, tokio::io::sink());
        if choice & 1 == 0 {
            let Ok(hello) = server_handshake(&mut peer).await else { return };
            let store = StoreDir::default();
            let (mut rest, _) = peer.into_inner();
            while let Ok(Some(_)) = read_request(&mut rest, &store, hello.version, &limits).await {}
        } else {
            let hello = ClientHello {
                version: PROTOCOL_VERSION,
                affinity: (choice & 2 != 0).then_some(u32::from(choice >> 3)),
                reserve_space: choice & 4 != 0,
            };
            let Ok(_server) = client_handshake(&mut peer, &hello).await else { return };
            let (mut rest, _) = peer.into_inner();
            while let Ok(msg) = read_stderr(&mut rest, hello.version, &limits).await {
                if msg.is_terminal() {
                    break;
                }
            }
        }
    });
});

//! The client reading what the daemon sends after a request: STDERR frames (`read_stderr`)
//! up to `STDERR_LAST`, then the reply (`read_reply`) of the operation the first input byte
//! picks. Property: every frame and reply written back decodes to itself.
#![no_main]

use guix_formats::worker::{
    read_reply, read_stderr, write_reply, write_stderr, Limits, Opcode, StderrMsg, PROTOCOL_VERSION,
};
use guix_formats::StoreDir;
use guix_formats_fuzz::block_on;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut input)) = data.split_first() else { return };
    let op = Opcode::ALL[usize::from(pick) % Opcode::ALL.len()];
    let version = PROTOCOL_VERSION;
    let store = StoreDir::default();
    let limits = Limits::DEFAULT;
    block_on(async {
        loop {
            let Ok(msg) = read_stderr(&mut input, version, &limits).await else { return };
            // A status of 0 is not on the wire (the daemon never sends it to current clients).
            if !matches!(msg, StderrMsg::Error { status: 0, .. }) {
                let mut out = Vec::new();
                write_stderr(&mut out, &msg, version).await.expect("writing to a Vec");
                let back = read_stderr(&mut &out[..], version, &limits).await;
                assert_eq!(back.ok().as_ref(), Some(&msg));
            }
            match msg {
                StderrMsg::Last => break,
                StderrMsg::Error { .. } => return,
                _ => {}
            }
        }
        let Ok(reply) = read_reply(&mut input, op, &store, version, &limits).await else { return };
        assert!(reply.answers(op), "{reply:?} read as the reply to {op:?}");
        let mut out = Vec::new();
        write_reply(&mut out, op, &reply, &store, version).await.expect("a reply that answers op");
        let back = read_reply(&mut &out[..], op, &store, version, &limits).await;
        assert_eq!(back.ok().as_ref(), Some(&reply));
    });
});

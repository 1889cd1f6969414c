//! Checks the worker protocol code against exchanges captured between the real Guix 1.5.0
//! client and the real C++ daemon (`tests/vectors/worker.txt`, made by
//! `tests/vectors/gen/worker.scm`):
//!
//! - the daemon-side handshake answers the client's bytes with the daemon's bytes, and the
//!   client-side handshake sends exactly what Guile sent;
//! - every client message decodes with `read_request` (AddToStore: up to the NAR) and
//!   re-encodes with `write_request` to the same bytes;
//! - every daemon message decodes as STDERR frames plus the typed reply and re-encodes to the
//!   same bytes;
//! - the paths, hashes and sizes in the replies are the ones our store-path and hash code
//!   computes from the request contents (registration times excepted: they are only decoded).

use std::collections::BTreeSet;

use guix_formats::hash::{sha256, HashAlgo};
use guix_formats::store_path::StoreDir;
use guix_formats::wire;
use guix_formats::worker::{
    client_handshake, read_reply, read_request, read_stderr, server_handshake, write_reply, write_request,
    write_stderr, ClientHello, Limits, Reply, Request, StderrMsg, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VERSION: u32 = PROTOCOL_VERSION;

struct Exchange {
    label: String,
    /// (direction, bytes) in order.
    lines: Vec<(char, Vec<u8>)>,
}

fn hex(s: &str) -> Vec<u8> {
    guix_formats::hash::base16_decode(s).expect("vector hex")
}

fn load() -> Vec<Exchange> {
    let text = include_str!("vectors/worker.txt");
    let mut out: Vec<Exchange> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(label) = line.strip_prefix("= ") {
            out.push(Exchange { label: label.to_owned(), lines: Vec::new() });
        } else {
            let (dir, data) = line.split_once(' ').expect("direction");
            let ex = out.last_mut().expect("exchange before data");
            ex.lines.push((dir.chars().next().expect("dir"), hex(data)));
        }
    }
    out
}

/// The NAR of a regular, non-executable file.
fn file_nar(contents: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for t in ["nix-archive-1", "(", "type", "regular", "contents"] {
        wire::put_bytes(&mut b, t.as_bytes());
    }
    wire::put_bytes(&mut b, contents);
    wire::put_bytes(&mut b, b")");
    b
}

#[tokio::test]
async fn handshake_vectors() {
    let ex = load().into_iter().find(|e| e.label == "handshake").expect("handshake vector");
    let [(c1d, c1), (s1d, s1), (c2d, c2), (s2d, s2)] = &ex.lines[..] else { panic!("handshake shape") };
    assert_eq!((*c1d, *s1d, *c2d, *s2d), ('C', 'S', 'C', 'S'));

    // Daemon side.
    let (mut client, mut daemon) = tokio::io::duplex(4096);
    client.write_all(c1).await.unwrap();
    client.write_all(c2).await.unwrap();
    let hello = server_handshake(&mut daemon).await.unwrap();
    assert_eq!(hello, ClientHello { version: VERSION, affinity: None, reserve_space: false });
    write_stderr(&mut daemon, &StderrMsg::Last, hello.version).await.unwrap();
    drop(daemon);
    let mut sent = Vec::new();
    client.read_to_end(&mut sent).await.unwrap();
    assert_eq!(sent, [&s1[..], &s2[..]].concat());

    // Client side.
    let (mut client, mut daemon) = tokio::io::duplex(4096);
    daemon.write_all(s1).await.unwrap();
    daemon.write_all(s2).await.unwrap();
    let server = client_handshake(&mut client, &hello).await.unwrap();
    assert_eq!(server.version, VERSION);
    assert_eq!(read_stderr(&mut client, VERSION, &Limits::DEFAULT).await.unwrap(), StderrMsg::Last);
    drop(client);
    let mut got = Vec::new();
    daemon.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, [&c1[..], &c2[..]].concat());
}

#[tokio::test]
async fn request_and_reply_vectors() {
    let store = StoreDir::default();
    let limits = Limits::DEFAULT;
    let exchanges = load();
    assert!(exchanges.len() >= 15);
    let mut text_items = Vec::new(); // (path, contents) of AddTextToStore items
    let mut checked_info = false;
    for ex in exchanges.iter().filter(|e| e.label != "handshake") {
        let [('C', c), ('S', s)] = &ex.lines[..] else { panic!("{}: shape", ex.label) };

        // Client message.
        let mut r = &c[..];
        let req = read_request(&mut r, &store, VERSION, &limits).await.unwrap().expect("a request");
        let mut enc = Vec::new();
        write_request(&mut enc, &req, &store, VERSION).await.unwrap();
        let nar = &c[enc.len()..];
        assert_eq!(&c[..enc.len()], &enc[..], "{}: re-encoded request", ex.label);
        assert_eq!(r, nar);
        if matches!(req, Request::AddToStore { .. }) {
            let mut n = nar;
            assert_eq!(wire::read_bytes(&mut n, 64).unwrap(), b"nix-archive-1", "{}", ex.label);
        } else {
            assert!(nar.is_empty(), "{}: trailing bytes", ex.label);
        }

        // Daemon message.
        let mut r = &s[..];
        let mut frames = Vec::new();
        loop {
            let m = read_stderr(&mut r, VERSION, &limits).await.unwrap();
            let done = m.is_terminal();
            frames.push(m);
            if done {
                break;
            }
        }
        let mut enc = Vec::new();
        for f in &frames {
            write_stderr(&mut enc, f, VERSION).await.unwrap();
        }
        let op = req.opcode();
        let reply = if frames.last() == Some(&StderrMsg::Last) {
            let reply = read_reply(&mut r, op, &store, VERSION, &limits).await.unwrap();
            write_reply(&mut enc, op, &reply, &store, VERSION).await.unwrap();
            Some(reply)
        } else {
            None
        };
        assert!(r.is_empty(), "{}: unread reply bytes", ex.label);
        assert_eq!(&enc, s, "{}: re-encoded reply", ex.label);

        // Semantics.
        match (&req, &reply) {
            (Request::AddTextToStore { name, contents, references }, Some(Reply::Path(p))) => {
                assert_eq!(&store.make_text_path(name, contents, references).unwrap(), p, "{}", ex.label);
                text_items.push((p.clone(), contents.clone()));
            }
            (Request::AddToStore { name, fixed: true, recursive: true, hash_algo }, Some(Reply::Path(p))) => {
                assert_eq!(hash_algo, "sha256");
                let h = HashAlgo::Sha256.digest(nar);
                assert_eq!(&store.make_fixed_output_path(true, &h, name).unwrap(), p);
            }
            (Request::AddToStore { name, fixed: true, recursive: false, hash_algo }, Some(Reply::Path(p))) => {
                let algo: HashAlgo = hash_algo.parse().unwrap();
                let mut n = nar;
                for t in ["nix-archive-1", "(", "type", "regular", "contents"] {
                    assert_eq!(wire::read_bytes(&mut n, 64).unwrap(), t.as_bytes());
                }
                let contents = wire::read_bytes(&mut n, 1 << 20).unwrap();
                assert_eq!(nar, file_nar(&contents));
                let h = algo.digest(&contents);
                assert_eq!(&store.make_fixed_output_path(false, &h, name).unwrap(), p);
            }
            (Request::QueryPathInfo(p), Some(Reply::PathInfo(info))) => {
                let (_, contents) = text_items.iter().find(|(q, _)| q == p).expect("known item");
                let nar = file_nar(contents);
                assert_eq!(info.nar_hash.as_bytes(), sha256(&nar));
                assert_eq!(info.nar_size, nar.len() as u64);
                assert_eq!(info.deriver, None);
                let refs: BTreeSet<_> = text_items.iter().map(|(q, _)| q.clone()).filter(|q| q != p).collect();
                assert_eq!(info.references, refs);
                checked_info = true;
            }
            (Request::QueryPathHash(p), Some(Reply::Hash(h))) => {
                let (_, contents) = text_items.iter().find(|(q, _)| q == p).expect("known item");
                assert_eq!(h.as_bytes(), sha256(&file_nar(contents)));
            }
            (Request::QueryPathInfo(p), None) => {
                let StderrMsg::Error { msg, status } = frames.last().unwrap() else { panic!() };
                assert_eq!(msg, &format!("path `{}' is not valid", store.display(p)));
                assert_eq!(*status, 1);
            }
            (Request::SetOptions(o), Some(Reply::Nothing)) => {
                assert!(o.keep_going && o.fallback && !o.use_substitutes);
                assert_eq!(o.verbosity, 1);
                assert_eq!(o.max_build_jobs, None);
                assert!(o.overrides.contains(&("build-cores".into(), "2".into())));
                assert!(o.overrides.contains(&("substitute-urls".into(), "http://a.example http://b.example".into())));
            }
            (Request::BuiltinBuilders, Some(Reply::Strings(s))) => {
                assert_eq!(s, &["download", "git-download"]);
            }
            _ => {}
        }
    }
    assert!(checked_info);
}

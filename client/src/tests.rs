//! The client against a scripted fake daemon built from the formats crate's server-side
//! functions (the real daemon is exercised by `tests/tests/client_vs_guile.rs`).

use std::sync::{Arc, Mutex};

use guix_formats::store_path::HashPart;
use guix_formats::worker::{read_request, server_handshake, write_reply, write_stderr};
use tokio::io::{AsyncReadExt, DuplexStream};

use super::*;

fn path(name: &str, seed: u8) -> StorePath {
    StorePath::from_parts(HashPart::from_digest(&[seed; 20]), name).unwrap()
}

/// Runs `daemon` on the server end of a pipe after the handshake; returns a connected client.
async fn pair<F, Fut>(daemon: F) -> (DaemonClient<DuplexStream>, tokio::task::JoinHandle<()>)
where
    F: FnOnce(DuplexStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let h = tokio::spawn(async move {
        let hello = server_handshake(&mut b).await.unwrap();
        assert_eq!(hello.version, 0x164);
        assert!(hello.reserve_space);
        assert_eq!(hello.affinity, None);
        write_stderr(&mut b, &StderrMsg::Last, hello.version).await.unwrap();
        daemon(b).await
    });
    let client = DaemonClient::handshake(a).await.unwrap();
    (client, h)
}

async fn next(b: &mut DuplexStream) -> Request {
    read_request(b, &StoreDir::default(), 0x164, &Limits::DEFAULT).await.unwrap().unwrap()
}

#[tokio::test]
async fn path_info_logs_and_invalid_mapping() {
    let p = path("hello", 1);
    let q = path("missing", 2);
    let info = PathInfo {
        deriver: None,
        nar_hash: HashAlgo::Sha256.digest(b"x"),
        references: [p.clone()].into(),
        registration_time: 42,
        nar_size: 120,
    };
    let info2 = info.clone();
    let (p2, q2) = (p.clone(), q.clone());
    let (mut c, h) = pair(move |mut b| async move {
        assert_eq!(next(&mut b).await, Request::QueryPathInfo(p2));
        write_stderr(&mut b, &StderrMsg::Next(b"log line\n".to_vec()), 0x164).await.unwrap();
        write_stderr(&mut b, &StderrMsg::Last, 0x164).await.unwrap();
        write_reply(&mut b, Opcode::QueryPathInfo, &Reply::PathInfo(info2), &StoreDir::default(), 0x164).await.unwrap();
        assert_eq!(next(&mut b).await, Request::QueryPathInfo(q2.clone()));
        let msg = format!("path `{}' is not valid", StoreDir::default().display(&q2));
        write_stderr(&mut b, &StderrMsg::Error { msg, status: 1 }, 0x164).await.unwrap();
        assert_eq!(next(&mut b).await, Request::QueryReferences(q2));
        let msg = "some other failure".to_owned();
        write_stderr(&mut b, &StderrMsg::Error { msg, status: 7 }, 0x164).await.unwrap();
        assert!(matches!(next(&mut b).await, Request::IsValidPath(_)));
        write_stderr(&mut b, &StderrMsg::Last, 0x164).await.unwrap();
        write_reply(&mut b, Opcode::IsValidPath, &Reply::Bool(true), &StoreDir::default(), 0x164).await.unwrap();
    })
    .await;
    let logged = Arc::new(Mutex::new(Vec::new()));
    let l2 = logged.clone();
    c.set_log_sink(LogSink::Func(Box::new(move |b| l2.lock().unwrap().extend_from_slice(b))));
    assert_eq!(c.query_path_info(&p).await.unwrap(), Some(info));
    assert_eq!(&*logged.lock().unwrap(), b"log line\n");
    assert_eq!(c.query_path_info(&q).await.unwrap(), None);
    match c.query_references(&q).await {
        Err(ClientError::Daemon { message, status }) => {
            assert_eq!(message, "some other failure");
            assert_eq!(status, 7);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Daemon errors keep the connection.
    assert!(c.is_valid_path("/gnu/store/x").await.unwrap());
    h.await.unwrap();
}

#[tokio::test]
async fn export_collects_writes_and_import_answers_reads() {
    let p = path("tree", 3);
    let record: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let rec2 = record.clone();
    let p2 = p.clone();
    let (mut c, h) = pair(move |mut b| async move {
        assert_eq!(next(&mut b).await, Request::ExportPath { path: p2.clone(), sign: false });
        for chunk in rec2.chunks(65536) {
            write_stderr(&mut b, &StderrMsg::Write(chunk.to_vec()), 0x164).await.unwrap();
        }
        write_stderr(&mut b, &StderrMsg::Last, 0x164).await.unwrap();
        write_reply(&mut b, Opcode::ExportPath, &Reply::Done, &StoreDir::default(), 0x164).await.unwrap();
        // Import: pull everything through TunnelSource.
        assert_eq!(next(&mut b).await, Request::ImportPaths);
        let mut got = Vec::new();
        {
            let mut src = guix_formats::worker::TunnelSource::new(&mut b);
            let mut buf = vec![0u8; rec2.len()];
            src.read_exact(&mut buf).await.unwrap();
            got.extend_from_slice(&buf);
        }
        assert_eq!(got, rec2);
        write_stderr(&mut b, &StderrMsg::Last, 0x164).await.unwrap();
        write_reply(&mut b, Opcode::ImportPaths, &Reply::PathList(vec![p2]), &StoreDir::default(), 0x164)
            .await
            .unwrap();
    })
    .await;
    let mut out = Vec::new();
    c.export_path(&p, false, &mut out).await.unwrap();
    assert_eq!(out, record);
    let imported = c.import_paths(&mut &record[..]).await.unwrap();
    assert_eq!(imported, vec![p]);
    h.await.unwrap();
}

#[tokio::test]
async fn add_to_store_streams_the_nar() {
    let dir = std::env::temp_dir().join(format!("guix-client-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("b"), vec![7u8; 300_000]).unwrap();
    std::fs::write(dir.join("sub/a"), b"a").unwrap();
    std::os::unix::fs::symlink("b", dir.join("link")).unwrap();
    let mut want = Vec::new();
    guix_formats::nar::dump_path_to(&dir, &mut want).unwrap();
    let result = path("tree", 9);
    let r2 = result.clone();
    let (mut c, h) = pair(move |mut b| async move {
        assert_eq!(
            next(&mut b).await,
            Request::AddToStore { name: "tree".into(), fixed: true, recursive: true, hash_algo: "sha256".into() }
        );
        let mut got = vec![0u8; want.len()];
        b.read_exact(&mut got).await.unwrap();
        assert!(got == want, "NAR differs");
        write_stderr(&mut b, &StderrMsg::Last, 0x164).await.unwrap();
        write_reply(&mut b, Opcode::AddToStore, &Reply::Path(r2), &StoreDir::default(), 0x164).await.unwrap();
    })
    .await;
    assert_eq!(c.add_to_store("tree", &dir, true, HashAlgo::Sha256).await.unwrap(), result);
    h.await.unwrap();
    // A missing source: the connection is unusable afterwards (the daemon saw a partial NAR).
    let (mut c, h) = pair(|mut b| async move {
        let _ = next(&mut b).await;
        let mut sink = Vec::new();
        let _ = b.read_to_end(&mut sink).await;
    })
    .await;
    let e = c.add_to_store("x", &dir.join("nope"), false, HashAlgo::Sha256).await.unwrap_err();
    assert!(matches!(e, ClientError::Nar { .. }), "{e:?}");
    assert!(matches!(c.sync_with_gc().await, Err(ClientError::Broken)));
    drop(c);
    h.await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn garbage_breaks_the_connection() {
    let (mut c, h) = pair(|mut b| async move {
        let _ = next(&mut b).await;
        use tokio::io::AsyncWriteExt;
        b.write_all(&[1, 0, 0, 0, 0, 0, 0, 0]).await.unwrap();
    })
    .await;
    let e = c.query_all_valid_paths().await.unwrap_err();
    assert_eq!(e.to_string(), "daemon protocol: invalid error code 1");
    assert!(c.is_broken());
    assert!(matches!(c.query_all_valid_paths().await, Err(ClientError::Broken)));
    h.await.unwrap();
}

#[tokio::test]
async fn unexpected_write_frame_is_an_error() {
    let (mut c, h) = pair(|mut b| async move {
        let _ = next(&mut b).await;
        write_stderr(&mut b, &StderrMsg::Write(b"data".to_vec()), 0x164).await.unwrap();
    })
    .await;
    let e = c.sync_with_gc().await.unwrap_err();
    assert_eq!(e.to_string(), "unexpected STDERR_WRITE from the daemon during SyncWithGC");
    h.await.unwrap();
}

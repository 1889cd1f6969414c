//! The greeting exchanged before any operation (spec §2.1).
//!
//! Both sides stop before the daemon's `startWork`: the daemon then opens the store and ends the
//! handshake with `STDERR_LAST` (or `STDERR_ERROR`) through [`super::stderr`], which the client
//! reads with [`super::read_stderr`].

use tokio::io::{AsyncRead, AsyncWrite};

use super::io::Enc;
use super::{protocol_major, protocol_minor, ProtoError, PROTOCOL_VERSION, WORKER_MAGIC_1, WORKER_MAGIC_2};
use crate::wire::async_read_int;

/// What the client said in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHello {
    /// The version the client announced; governs every optional field it sends later.
    pub version: u32,
    /// The CPU the client asked the worker to be pinned to (minor ≥ 14, `useAffinity` ≠ 0).
    pub affinity: Option<u32>,
    /// `reserveSpace` (minor ≥ 11); `true` when not sent.
    pub reserve_space: bool,
}

/// What a client sends: its version and options. The fields are sent only if the *server's*
/// minor allows them (as the Guile client does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHello {
    /// The version the daemon announced.
    pub version: u32,
}

/// Daemon side: reads magic1, sends magic2 and [`PROTOCOL_VERSION`], reads the client's version
/// and options. Any error here ends the connection without a STDERR frame.
pub async fn server_handshake<S>(s: &mut S) -> Result<ClientHello, ProtoError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    if async_read_int(s).await? != WORKER_MAGIC_1 {
        return Err(ProtoError::ProtocolMismatch);
    }
    let mut e = Enc::default();
    e.int(WORKER_MAGIC_2);
    e.int(PROTOCOL_VERSION);
    e.send(s).await?;
    let version = async_read_int(s).await?;
    let mut affinity = None;
    if protocol_minor(version) >= 14 && async_read_int(s).await? != 0 {
        affinity = Some(async_read_int(s).await?);
    }
    let mut reserve_space = true;
    if protocol_minor(version) >= 11 {
        reserve_space = async_read_int(s).await? != 0;
    }
    Ok(ClientHello { version, affinity, reserve_space })
}

/// Client side: sends magic1, checks magic2 and the server's major version, sends
/// `hello.version` and the options the server's minor asks for. The caller then reads the
/// STDERR stream up to `STDERR_LAST`.
pub async fn client_handshake<S>(s: &mut S, hello: &ClientHello) -> Result<ServerHello, ProtoError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut e = Enc::default();
    e.int(WORKER_MAGIC_1);
    e.send(s).await?;
    if async_read_int(s).await? != WORKER_MAGIC_2 {
        return Err(ProtoError::ProtocolMismatch);
    }
    let server = async_read_int(s).await?;
    if protocol_major(server) != 0x100 {
        return Err(ProtoError::HandshakeFailed { server_version: server });
    }
    let mut e = Enc::default();
    e.int(hello.version);
    if protocol_minor(server) >= 14 {
        match hello.affinity {
            Some(cpu) => {
                e.int(1);
                e.int(cpu);
            }
            None => e.int(0),
        }
    }
    if protocol_minor(server) >= 11 {
        e.bool(hello.reserve_space);
    }
    e.send(s).await?;
    Ok(ServerHello { version: server })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::test_util::words as base16_words;

    #[tokio::test]
    async fn spec_trace() {
        // Appendix "Handshake (client 0x164, no affinity, reserve 0)".
        let client = base16_words("6378696e00000000 6401000000000000 0000000000000000 0000000000000000");
        let (mut a, mut b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let h = server_handshake(&mut b).await.unwrap();
            (h, b)
        });
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        a.write_all(&client).await.unwrap();
        let (h, _b) = server.await.unwrap();
        assert_eq!(h, ClientHello { version: 0x164, affinity: None, reserve_space: false });
        let mut got = [0u8; 16];
        a.read_exact(&mut got).await.unwrap();
        assert_eq!(got.to_vec(), base16_words("6f69786400000000 6401000000000000"));
    }

    #[tokio::test]
    async fn client_reproduces_trace() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        b.write_all(&base16_words("6f69786400000000 6401000000000000")).await.unwrap();
        let hello = ClientHello { version: 0x164, affinity: None, reserve_space: false };
        let s = client_handshake(&mut a, &hello).await.unwrap();
        assert_eq!(s.version, 0x164);
        let mut got = [0u8; 32];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got.to_vec(), base16_words("6378696e00000000 6401000000000000 0000000000000000 0000000000000000"));
    }

    #[tokio::test]
    async fn handshake_variants() {
        use tokio::io::AsyncWriteExt;
        // Old client (minor 10): neither affinity nor reserve is read.
        let (mut a, mut b) = tokio::io::duplex(4096);
        let mut bytes = base16_words("6378696e00000000 0a01000000000000");
        a.write_all(&bytes).await.unwrap();
        let h = server_handshake(&mut b).await.unwrap();
        assert_eq!(h, ClientHello { version: 0x10a, affinity: None, reserve_space: true });
        // Affinity 1, cpu 9999.
        let (mut a, mut b) = tokio::io::duplex(4096);
        bytes = base16_words("6378696e00000000 6401000000000000 0100000000000000 0f27000000000000 0100000000000000");
        a.write_all(&bytes).await.unwrap();
        let h = server_handshake(&mut b).await.unwrap();
        assert_eq!(h, ClientHello { version: 0x164, affinity: Some(9999), reserve_space: true });
        // Wrong magic.
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(&[0u8; 8]).await.unwrap();
        assert_eq!(server_handshake(&mut b).await.unwrap_err().to_string(), "protocol mismatch");
        // High half in the version word.
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(&base16_words("6378696e00000000 6401000001000000")).await.unwrap();
        assert_eq!(
            server_handshake(&mut b).await.unwrap_err().to_string(),
            "implementation cannot deal with > 32-bit integers"
        );
        // Truncated.
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(&base16_words("6378696e00000000")[..4]).await.unwrap();
        drop(a);
        assert!(server_handshake(&mut b).await.unwrap_err().is_eof());
    }
}

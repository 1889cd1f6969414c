//! The 8-byte-word framing shared by the worker protocol, NAR and export streams.
//!
//! An "int" is a u32 in a little-endian u64 word whose high half must be zero; a u64 is a full
//! word; a string is an int length, the bytes, and zero padding to the next multiple of 8.
//! Readers take a maximum length for every string so a client cannot make us allocate what it
//! announces. Sync functions work on `std::io`, the `async_*` ones on tokio.

use std::io::{self, Read, Write};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Errors of the framing layer; messages match the C++ daemon's where it has one.
#[derive(Debug, Error)]
pub enum WireError {
    #[error("implementation cannot deal with > 32-bit integers")]
    IntTooLarge,
    #[error("non-zero padding")]
    NonZeroPadding,
    #[error("string of {len} bytes is longer than the limit of {max} bytes")]
    TooLong { len: u64, max: u64 },
    #[error("unexpected end-of-file")]
    Eof,
    #[error("{0}")]
    Io(io::Error),
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            WireError::Eof
        } else {
            WireError::Io(e)
        }
    }
}

/// Number of zero bytes that follow a string of `len` bytes.
pub const fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Checks that an int word fits in 32 bits.
pub fn int_from_word(w: u64) -> Result<u32, WireError> {
    u32::try_from(w).map_err(|_| WireError::IntTooLarge)
}

fn check_padding(pad: &[u8]) -> Result<(), WireError> {
    if pad.iter().any(|&b| b != 0) {
        return Err(WireError::NonZeroPadding);
    }
    Ok(())
}

/// Appends a u64 word to a buffer.
pub fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Appends a string (length, bytes, padding) to a buffer.
pub fn put_bytes(buf: &mut Vec<u8>, s: &[u8]) {
    put_u64(buf, s.len() as u64);
    buf.extend_from_slice(s);
    buf.extend_from_slice(&[0u8; 8][..padding(s.len() as u64)]);
}

/// Appends a list of strings.
pub fn put_strings<I, S>(buf: &mut Vec<u8>, items: I)
where
    I: IntoIterator<Item = S>,
    I::IntoIter: ExactSizeIterator,
    S: AsRef<[u8]>,
{
    let it = items.into_iter();
    put_u64(buf, it.len() as u64);
    for s in it {
        put_bytes(buf, s.as_ref());
    }
}

pub fn read_u64<R: Read + ?Sized>(r: &mut R) -> Result<u64, WireError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

pub fn read_int<R: Read + ?Sized>(r: &mut R) -> Result<u32, WireError> {
    int_from_word(read_u64(r)?)
}

/// Reads a string of at most `max` bytes.
pub fn read_bytes<R: Read + ?Sized>(r: &mut R, max: u64) -> Result<Vec<u8>, WireError> {
    let len = read_u64(r)?;
    if len > max {
        return Err(WireError::TooLong { len, max });
    }
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v)?;
    let mut pad = [0u8; 8];
    let p = padding(len);
    r.read_exact(&mut pad[..p])?;
    check_padding(&pad[..p])?;
    Ok(v)
}

/// Reads and discards the padding after `len` payload bytes were consumed by the caller.
pub fn read_padding<R: Read + ?Sized>(r: &mut R, len: u64) -> Result<(), WireError> {
    let mut pad = [0u8; 8];
    let p = padding(len);
    r.read_exact(&mut pad[..p])?;
    check_padding(&pad[..p])
}

pub fn write_u64<W: Write + ?Sized>(w: &mut W, v: u64) -> io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

pub fn write_bytes<W: Write + ?Sized>(w: &mut W, s: &[u8]) -> io::Result<()> {
    write_u64(w, s.len() as u64)?;
    w.write_all(s)?;
    w.write_all(&[0u8; 8][..padding(s.len() as u64)])
}

pub async fn async_read_u64<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> Result<u64, WireError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).await?;
    Ok(u64::from_le_bytes(b))
}

pub async fn async_read_int<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> Result<u32, WireError> {
    int_from_word(async_read_u64(r).await?)
}

/// Reads a string of at most `max` bytes.
pub async fn async_read_bytes<R: AsyncRead + Unpin + ?Sized>(r: &mut R, max: u64) -> Result<Vec<u8>, WireError> {
    let len = async_read_u64(r).await?;
    if len > max {
        return Err(WireError::TooLong { len, max });
    }
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v).await?;
    async_read_padding(r, len).await?;
    Ok(v)
}

pub async fn async_read_padding<R: AsyncRead + Unpin + ?Sized>(r: &mut R, len: u64) -> Result<(), WireError> {
    let mut pad = [0u8; 8];
    let p = padding(len);
    r.read_exact(&mut pad[..p]).await?;
    check_padding(&pad[..p])
}

pub async fn async_write_u64<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, v: u64) -> io::Result<()> {
    w.write_all(&v.to_le_bytes()).await
}

pub async fn async_write_bytes<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, s: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(s.len() + 16);
    put_bytes(&mut buf, s);
    w.write_all(&buf).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn string_layout() {
        let mut b = Vec::new();
        put_bytes(&mut b, b"hi");
        assert_eq!(b, [2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i', 0, 0, 0, 0, 0, 0]);
        assert_eq!(read_bytes(&mut &b[..], 100).unwrap(), b"hi");
    }

    #[test]
    fn rejects_bad_framing() {
        let big = 0x0000_0100_0000_0010u64.to_le_bytes();
        assert!(matches!(read_int(&mut &big[..]), Err(WireError::IntTooLarge)));
        let mut b = Vec::new();
        put_bytes(&mut b, b"hi");
        b[15] = 1;
        assert!(matches!(read_bytes(&mut &b[..], 100), Err(WireError::NonZeroPadding)));
        assert!(matches!(read_bytes(&mut &b[..], 1), Err(WireError::TooLong { .. })));
        assert!(matches!(read_bytes(&mut &b[..12], 100), Err(WireError::Eof)));
    }

    proptest! {
        #[test]
        fn round_trip(s in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut b = Vec::new();
            put_bytes(&mut b, &s);
            prop_assert_eq!(b.len() % 8, 0);
            prop_assert_eq!(read_bytes(&mut &b[..], 1000).unwrap(), s.clone());
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = rt.block_on(async { async_read_bytes(&mut &b[..], 1000).await }).unwrap();
            prop_assert_eq!(got, s);
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = read_bytes(&mut &b[..], 32);
        }
    }
}

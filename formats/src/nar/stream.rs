//! The tokio NAR reader: consumes exactly one NAR from a stream (the inline NAR of
//! AddToStore arrives unframed on the socket), validates it with the shared [`Parser`],
//! hashes it, and copies it to a writer such as a spool file.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::parser::{Event, Parser, Step};
use super::read::CHUNK;
use super::{input_error, Limits, NarError, NarSummary};
use crate::hash::{Hash, HashAlgo, Hasher};
use crate::wire::{padding, WireError};

/// A NAR that is a single regular file, as a flat (non-recursive) AddToStore requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlatFile {
    pub executable: bool,
    /// Hash of the file's contents (not of the NAR) with the requested algorithm.
    pub contents_hash: Hash,
}

struct Input<'a, R: ?Sized, W: ?Sized> {
    r: &'a mut R,
    w: &'a mut W,
    hasher: Hasher,
    size: u64,
}

impl<R, W> Input<'_, R, W>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        self.r.read_exact(buf).await.map_err(input_error)?;
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        self.w.write_all(buf).await.map_err(|e| NarError::io("copying NAR", e))
    }

    async fn read_u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b).await?;
        Ok(u64::from_le_bytes(b))
    }

    async fn read_padding(&mut self, len: u64) -> Result<(), NarError> {
        let mut pad = [0u8; 8];
        let pad = &mut pad[..padding(len)];
        self.read_exact(pad).await?;
        if pad.iter().any(|&b| b != 0) {
            return Err(NarError::Wire(WireError::NonZeroPadding));
        }
        Ok(())
    }
}

/// Reads exactly the bytes of one NAR from `r`, validates it completely, copies it to `w`
/// and returns its SHA-256 and size. Nothing beyond the NAR's last byte is read.
pub async fn copy_validated<R, W>(r: &mut R, w: &mut W, limits: &Limits) -> Result<NarSummary, NarError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    copy(r, w, limits, None).await.map(|(summary, _)| summary)
}

/// Like [`copy_validated`], for a NAR that must be a single regular file ("regular file
/// expected" otherwise, raised as soon as the root node's type is read); also hashes the
/// file's contents with `algo`.
pub async fn copy_validated_flat<R, W>(
    r: &mut R,
    w: &mut W,
    limits: &Limits,
    algo: HashAlgo,
) -> Result<(NarSummary, FlatFile), NarError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let (summary, flat) = copy(r, w, limits, Some(algo)).await?;
    let flat = flat.ok_or(NarError::RegularFileExpected)?;
    Ok((summary, flat))
}

async fn copy<R, W>(
    r: &mut R,
    w: &mut W,
    limits: &Limits,
    flat: Option<HashAlgo>,
) -> Result<(NarSummary, Option<FlatFile>), NarError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut input = Input { r, w, hasher: HashAlgo::Sha256.hasher(), size: 0 };
    let mut parser = Parser::new(limits.clone());
    let mut buf: Vec<u8> = Vec::new();
    // In flat mode: the contents hasher and the executable bit, once the root is known.
    let mut contents: Option<(Hasher, bool)> = None;
    loop {
        match parser.step() {
            Step::Token => {
                let len = input.read_u64().await?;
                parser.token_len(len)?;
                buf.resize(usize::try_from(len).map_err(|_| NarError::Misuse("length"))?, 0);
                input.read_exact(&mut buf).await?;
                input.read_padding(len).await?;
                let ev = parser.token(&buf)?;
                if flat.is_some() && matches!(ev, Some(Event::Directory | Event::Symlink { .. })) {
                    return Err(NarError::RegularFileExpected);
                }
            }
            Step::Size => {
                let size = input.read_u64().await?;
                if let Event::Regular { executable, .. } = parser.contents_size(size)? {
                    if let Some(algo) = flat {
                        contents = Some((algo.hasher(), executable));
                    }
                }
            }
            Step::Contents { len } => {
                let mut chunk = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
                let mut left = len;
                while left > 0 {
                    let n = usize::try_from(left).map_or(chunk.len(), |l| l.min(chunk.len()));
                    let part = &mut chunk[..n];
                    input.read_exact(part).await?;
                    if let Some((h, _)) = contents.as_mut() {
                        h.update(part);
                    }
                    left -= n as u64;
                }
                input.read_padding(len).await?;
                parser.contents_done()?;
            }
            Step::Done => break,
        }
    }
    input.w.flush().await.map_err(|e| NarError::io("copying NAR", e))?;
    let summary = NarSummary { nar_hash: input.hasher.finish(), nar_size: input.size };
    let flat = contents.map(|(h, executable)| FlatFile { executable, contents_hash: h.finish() });
    Ok((summary, flat))
}

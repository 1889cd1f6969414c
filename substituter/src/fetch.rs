//! One nar: downloaded (http(s) through the shared client, or read from `file://`),
//! decompressed, checked and unpacked into a scratch entry in one streaming pass.
//!
//! The bytes come from the network on the async side and go through a bounded channel to a
//! blocking thread. For a compressed nar larger than one buffer that thread only
//! decompresses, into [`PIPE_BUF`]-byte buffers that a second thread takes (through a
//! channel of [`PIPE_DEPTH`]; the buffers are recycled) and runs the shared NAR restorer
//! (`guix_formats::nar::restore`) on, which validates the archive, unpacks it and computes its
//! SHA-256 and size as it goes: decompression and hashing-plus-writing overlap (one thread
//! doing all three was the bottleneck of a large substitution). The restorer is bounded by
//! the narinfo's `NarSize`: a nar that grows past it is refused the moment it does, so an
//! oversized nar fills no disk. After the end of the archive the SHA-256 and size must be
//! the narinfo's. On any failure the scratch entry is removed ([`ScratchItem`]'s drop), so
//! nothing is left to register.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc as sync_mpsc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use guix_formats::nar::{self, Limits, NarSummary};
use guix_formats::narinfo::NarInfo;
use guix_formats::Hash;
use guix_store::optimise::{optimise_path_with, FileNarHashes, KnownHashes, OptimiseStats, DEDUPLICATION_MIN_SIZE};
use guix_store::scratch::ScratchItem;
use tokio::sync::mpsc;

use crate::choose::{Choice, Compression};

/// Chunks in flight between the network and the unpacking thread.
const CHANNEL_CHUNKS: usize = 32;
/// Size of the buffers the decompressing thread fills for the restoring one.
const PIPE_BUF: usize = 1 << 20;
/// Full buffers queued between the two; with the one being filled and the one being read,
/// a download holds at most `PIPE_DEPTH + 2` buffers (6 MiB).
const PIPE_DEPTH: usize = 4;
/// Without a byte for this long, a download is given up (Guix has no such bound; a server
/// that stalls would hold a Guix substitution for ever).
pub const STALL_LIMIT: Duration = Duration::from_secs(300);
/// The environment variable that sets the stall limit instead, in seconds (fractions
/// allowed): for tests of a stalling server.
pub const STALL_ENV: &str = "GUIX_DAEMON_RS_SUBSTITUTE_STALL";

/// [`STALL_LIMIT`], or what [`STALL_ENV`] says (read once; a value that is not a positive
/// number of seconds is reported and ignored).
pub fn stall_limit() -> Duration {
    static LIMIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let Ok(v) = std::env::var(STALL_ENV) else { return STALL_LIMIT };
        match v.parse::<f64>() {
            Ok(secs) if secs > 0.0 && secs.is_finite() => Duration::from_secs_f64(secs),
            _ => {
                eprintln!("guix-substituter: ignoring {STALL_ENV}={v:?}: not a positive number of seconds");
                STALL_LIMIT
            }
        }
    })
}

/// Why a nar could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The server could not be reached, answered with an error status, or the connection
    /// broke: another URL may do better.
    Network(String),
    /// The nar was complete but is not the one the narinfo announced.
    HashMismatch { expected: Box<Hash>, actual: Box<Hash> },
    /// A corrupt, truncated or oversized nar, or a local failure.
    Bad(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Network(m) | FetchError::Bad(m) => f.write_str(m),
            FetchError::HashMismatch { expected, actual } => {
                write!(f, "hash mismatch: expected {}, got {}", expected.to_nix_base32(), actual.to_nix_base32())
            }
        }
    }
}

/// Download progress, for the `@ download-*` lines.
pub trait Progress: Send {
    /// The transfer started; `size` is what will be transferred, when known.
    fn started(&mut self, size: Option<u64>);
    /// `done` bytes transferred so far (called at most every 200 ms, as Guix's rate limit).
    fn progress(&mut self, done: u64);
    /// The transfer ended with `done` bytes, after `reports` calls of [`Progress::progress`].
    fn finished(&mut self, done: u64, reports: u64);
}

/// A [`Read`] over the chunks the async side sends; a [`BufRead`] too, so a decompressor
/// reads the chunks where they are.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = buf.len().min(avail.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        bytes::Buf::advance(&mut self.current, n);
    }
}

/// The restoring thread's end of the pipe: a [`Read`] over the buffers the decompressing
/// thread fills, each sent back to it once read.
struct PipeReader {
    full: sync_mpsc::Receiver<io::Result<Vec<u8>>>,
    empty: sync_mpsc::SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.full.recv() {
                Ok(Ok(next)) => {
                    let done = std::mem::replace(&mut self.current, next);
                    self.pos = 0;
                    // A full queue of empty buffers, or a decompressor that stopped: dropped.
                    let _ = self.empty.try_send(done);
                }
                Ok(Err(e)) => return Err(e),
                // The decompressor ended the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Fills `buf` from `r` as far as it goes; its length is then what was read.
fn fill(r: &mut dyn Read, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.resize(PIPE_BUF, 0);
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.truncate(n);
                return Err(e);
            }
        }
    }
    buf.truncate(n);
    Ok(())
}

/// The decompressing reader for `compression`.
pub fn decompressor<'a>(
    compression: Compression,
    r: impl BufRead + Send + 'a,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        Compression::Lzip => Box::new(lzma_rust2::LzipReader::new(r)),
        Compression::Xz => Box::new(lzma_rust2::XzReader::new(r, true)),
    })
}

/// A nar unpacked and checked by [`unpack`].
#[derive(Debug)]
pub struct Unpacked {
    pub summary: NarSummary,
    /// What the deduplication told, at `printMsg` levels (C++ prints them to the client).
    pub messages: Vec<(u32, String)>,
}

/// Unpacks the nar read (compressed) from `r` into `dest` and checks it against `info`.
/// With `dedup` (the store directory, when `auto-optimise-store` is on) the checked item's
/// big files are then linked with their `<store>/.links` entries, as C++ `optimisePath` does
/// after a substitution; their NAR hashes are computed as they are unpacked (a root regular
/// file's is the nar's own), so nothing is read back.
pub fn unpack(
    r: impl BufRead + Send,
    compression: Compression,
    dest: &Path,
    info: &NarInfo,
    dedup: Option<&Path>,
) -> Result<Unpacked, FetchError> {
    let bad = |what: String| FetchError::Bad(what);
    let dec = decompressor(compression, r).map_err(|e| bad(format!("decompressing: {e}")))?;
    let limits = Limits { max_nar_size: Some(info.nar_size()), ..Limits::default() };
    let hash_files = dedup.is_some() && info.nar_size() >= DEDUPLICATION_MIN_SIZE;
    let (summary, mut known) = if compression == Compression::None {
        // Not drained: `guix publish` sends an uncompressed nar without a length and keeps
        // the connection open, so its end is where the archive ends (Guix reads exactly
        // `NarSize` bytes of it).
        restore(BufReader::with_capacity(64 * 1024, dec), dest, &limits, hash_files).map_err(|e| bad(e.to_string()))?
    } else if info.nar_size() <= PIPE_BUF as u64 {
        // One buffer's worth: nothing to overlap, no thread to start.
        let mut input = BufReader::with_capacity(64 * 1024, dec);
        let restored = restore(&mut input, dest, &limits, hash_files).map_err(|e| bad(e.to_string()))?;
        drain(&mut input)?;
        restored
    } else {
        restore_pipelined(dec, dest, &limits, hash_files)?
    };
    guix_store::scratch::canonicalise(dest).map_err(|e| bad(format!("canonicalising `{}': {e}", dest.display())))?;
    if summary.nar_hash != *info.nar_hash() {
        return Err(FetchError::HashMismatch {
            expected: Box::new(*info.nar_hash()),
            actual: Box::new(summary.nar_hash),
        });
    }
    if summary.nar_size != info.nar_size() {
        return Err(bad(format!("nar size mismatch: expected {}, got {}", info.nar_size(), summary.nar_size)));
    }
    let mut messages = Vec::new();
    if let (Some(store), true) = (dedup, hash_files) {
        known.insert(PathBuf::new(), summary.nar_hash);
        let mut stats = OptimiseStats::default();
        optimise_path_with(store, &store.join(".links"), dest, &known, &mut stats, &mut |l, m| messages.push((l, m)))
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(Unpacked { summary, messages })
}

/// [`nar::restore`], also computing the NAR hash of each big regular file below the root
/// when `hash_files` (see [`FileNarHashes`]).
fn restore(
    input: impl Read,
    dest: &Path,
    limits: &Limits,
    hash_files: bool,
) -> Result<(NarSummary, KnownHashes), nar::NarError> {
    if !hash_files {
        return Ok((nar::restore(input, dest, limits)?, KnownHashes::new()));
    }
    let mut visitor = FileNarHashes::new(nar::Restorer::new(dest));
    let summary = nar::read_with(input, limits, &mut visitor, &mut io::sink())?;
    Ok((summary, visitor.into_hashes()))
}

/// Reads the rest of a compressed stream, so that its own checks (gzip's CRC and length,
/// lzip's and xz's trailers, zstd's frame end) run: a stream cut after the archive's end is
/// refused too.
fn drain(r: &mut dyn Read) -> Result<(), FetchError> {
    io::copy(r, &mut io::sink()).map(drop).map_err(|e| FetchError::Bad(format!("decompressing: {e}")))
}

/// [`nar::restore`] of the decompressed `dec` on a second thread while this one
/// decompresses; then the rest of `dec` is drained ([`drain`]). A decompression error
/// reaches the restorer as its input's error; a restorer that stops (done or failed) makes
/// this thread stop filling buffers for it.
fn restore_pipelined(
    mut dec: Box<dyn Read + Send + '_>,
    dest: &Path,
    limits: &Limits,
    hash_files: bool,
) -> Result<(NarSummary, KnownHashes), FetchError> {
    let (full_tx, full_rx) = sync_mpsc::sync_channel::<io::Result<Vec<u8>>>(PIPE_DEPTH);
    let (empty_tx, empty_rx) = sync_mpsc::sync_channel::<Vec<u8>>(PIPE_DEPTH + 2);
    std::thread::scope(|s| {
        let restorer = std::thread::Builder::new()
            .name("nar-restore".into())
            .spawn_scoped(s, move || {
                let input = PipeReader { full: full_rx, empty: empty_tx, current: Vec::new(), pos: 0 };
                restore(input, dest, limits, hash_files)
            })
            .map_err(|e| FetchError::Bad(format!("starting the restoring thread: {e}")))?;
        // Whether the restorer stopped reading before the stream's end, and the
        // decompressor's error if it had one (reported even when the restorer has finished:
        // a trailer may be what is wrong).
        let mut left_early = false;
        let mut failed = None;
        loop {
            let mut buf = empty_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(PIPE_BUF));
            let res = fill(&mut dec, &mut buf);
            let end = buf.is_empty();
            if !end && full_tx.send(Ok(buf)).is_err() {
                left_early = true;
            }
            if let Err(e) = res {
                // The restorer fails on it, unless it has what it wants already.
                let _ = full_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                failed = Some(e);
                break;
            }
            if end || left_early {
                break;
            }
        }
        drop(full_tx);
        let restored = restorer
            .join()
            .map_err(|_| FetchError::Bad("the restoring thread panicked".into()))?
            .map_err(|e| FetchError::Bad(e.to_string()))?;
        if let Some(e) = failed {
            return Err(FetchError::Bad(format!("decompressing: {e}")));
        }
        if left_early {
            drain(&mut dec)?;
        }
        Ok(restored)
    })
}

/// Downloads `choice` and unpacks it into `dest` (which must not exist yet); `dedup` as
/// for [`unpack`].
pub async fn download(
    http: &reqwest::Client,
    choice: &Choice,
    info: &NarInfo,
    dest: ScratchItem,
    dedup: Option<PathBuf>,
    progress: &mut dyn Progress,
) -> Result<(ScratchItem, Unpacked), FetchError> {
    let (tx, rx) = mpsc::channel::<io::Result<bytes::Bytes>>(CHANNEL_CHUNKS);
    let compression = choice.compression;
    let info2 = info.clone();
    let unpacker = tokio::task::spawn_blocking(move || {
        let r = ChannelReader { rx, current: bytes::Bytes::new() };
        let res = unpack(r, compression, dest.path(), &info2, dedup.as_deref());
        (dest, res)
    });
    let sent = send_bytes(http, choice, info, tx, progress).await;
    let (dest, res) = unpacker.await.map_err(|e| FetchError::Bad(format!("unpacking: {e}")))?;
    match (sent, res) {
        (_, Ok(unpacked)) => Ok((dest, unpacked)),
        // The network failed first: the unpacker only saw the stream end.
        (Err(e), Err(_)) => Err(e),
        (Ok(()), Err(e)) => Err(e),
    }
}

/// Sends the nar's bytes to the unpacker; stops early when it has what it wants.
async fn send_bytes(
    http: &reqwest::Client,
    choice: &Choice,
    info: &NarInfo,
    tx: mpsc::Sender<io::Result<bytes::Bytes>>,
    progress: &mut dyn Progress,
) -> Result<(), FetchError> {
    let net = FetchError::Network;
    let mut done = 0u64;
    // Guix's `rate-limited` reports at its first read, then at most every 200 ms. Its first
    // read comes once its decompressor has started, by which time a small nar has arrived
    // whole: so the first report here waits 200 ms too, and a download that ends before has
    // its one report at the end ([`Progress::finished`] is told how many there were).
    let mut last = Instant::now();
    let mut reports = 0u64;
    let mut report = |done: u64, progress: &mut dyn Progress| {
        if last.elapsed() >= Duration::from_millis(200) {
            last = Instant::now();
            reports += 1;
            progress.progress(done);
        }
    };
    if let Some(file) = choice.url.strip_prefix("file://") {
        let mut f =
            tokio::fs::File::open(file).await.map_err(|e| net(format!("{file}: {}", guix_store::strerror(&e))))?;
        let size = f.metadata().await.ok().map(|m| m.len());
        progress.started(size);
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf).await.map_err(|e| net(guix_store::strerror(&e)))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            done += n as u64;
            if tx.send(Ok(buf.into())).await.is_err() {
                break;
            }
            report(done, progress);
        }
        progress.finished(done, reports);
        return Ok(());
    }
    let stall = stall_limit();
    let stalled = || net(format!("{}: no data for {}s", choice.url, stall.as_secs_f64()));
    // A server that takes the request and never answers is a stall too.
    let resp = tokio::time::timeout(stall, http.get(&choice.url).header("User-Agent", "GNU Guile").send())
        .await
        .map_err(|_| stalled())?
        .map_err(|e| net(crate::lookup::io_reason(&e)))?;
    if !resp.status().is_success() {
        let s = resp.status();
        return Err(net(format!(
            "{}: HTTP download failed: {} ({})",
            choice.url,
            s.as_u16(),
            s.canonical_reason().unwrap_or("")
        )));
    }
    // As `guix substitute`: the Content-Length, else for an uncompressed nar its size.
    let size = resp.content_length().or((compression_is_none(choice)).then(|| info.nar_size()));
    progress.started(size);
    let mut body = resp.bytes_stream();
    loop {
        let next = tokio::select! {
            n = tokio::time::timeout(stall, body.next()) => n,
            // The unpacker has what it wants (an uncompressed nar has no end on the wire).
            _ = tx.closed() => break,
        };
        let next = match next {
            Ok(n) => n,
            Err(_) => {
                let _ = tx.send(Err(io::Error::other("stalled"))).await;
                return Err(stalled());
            }
        };
        match next {
            None => break,
            Some(Ok(chunk)) => {
                done += chunk.len() as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    break;
                }
                // Guix reports after each read of its buffered port, which takes everything
                // that has arrived: chunks already here count in the same report.
                let mut ended = false;
                loop {
                    match body.next().now_or_never() {
                        Some(Some(Ok(chunk))) => {
                            done += chunk.len() as u64;
                            if tx.send(Ok(chunk)).await.is_err() {
                                break;
                            }
                        }
                        Some(Some(Err(e))) => {
                            let reason = crate::lookup::io_reason(&e);
                            let _ = tx.send(Err(io::Error::other(reason.clone()))).await;
                            return Err(net(reason));
                        }
                        Some(None) => {
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
                report(done, progress);
                if ended {
                    break;
                }
            }
            Some(Err(e)) => {
                let reason = crate::lookup::io_reason(&e);
                let _ = tx.send(Err(io::Error::other(reason.clone()))).await;
                return Err(net(reason));
            }
        }
    }
    progress.finished(done, reports);
    Ok(())
}

fn compression_is_none(choice: &Choice) -> bool {
    choice.compression == Compression::None
}

#[cfg(test)]
mod tests {
    use super::*;
    use guix_formats::nar::Node;
    use std::io::Write;

    fn sample() -> (Vec<u8>, NarInfo) {
        sample_with(Vec::new())
    }

    /// The sample tree, with a file `big` of `big` bytes when that is not empty.
    fn sample_with(big: Vec<u8>) -> (Vec<u8>, NarInfo) {
        let hello = Node::Regular { executable: true, contents: b"#!/bin/sh\necho hi\n".to_vec() };
        let mut entries: std::collections::BTreeMap<Vec<u8>, Node> = [
            (b"bin".to_vec(), Node::Directory([(b"hello".to_vec(), hello)].into())),
            (b"link".to_vec(), Node::Symlink { target: b"bin/hello".to_vec() }),
        ]
        .into();
        if !big.is_empty() {
            entries.insert(b"big".to_vec(), Node::Regular { executable: false, contents: big });
        }
        let nar = Node::Directory(entries).to_nar().unwrap();
        let info = info_for(&nar, nar.len() as u64);
        (nar, info)
    }

    fn info_for(nar: &[u8], size: u64) -> NarInfo {
        let hash = guix_formats::hash::HashAlgo::Sha256.digest(nar);
        let text = format!(
            "StorePath: /gnu/store/1x9vvimabb763h6ca48gb3p3cbshkyjq-a\nNarHash: sha256:{}\nNarSize: {size}\nReferences: \n",
            hash.to_nix_base32(),
        );
        NarInfo::parse(text.as_bytes()).unwrap()
    }

    /// Several [`PIPE_BUF`]s of not quite trivially compressible bytes.
    fn big_contents() -> Vec<u8> {
        let mut x: u32 = 7;
        (0..2 * PIPE_BUF + 12345)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b"abcdefghijklmnop"[(x >> 27) as usize & 15]
            })
            .collect()
    }

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        match c {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
            Compression::Lzip => {
                let mut w = lzma_rust2::LzipWriter::new(Vec::new(), lzma_rust2::LzipOptions::default());
                w.write_all(data).unwrap();
                w.finish().unwrap()
            }
            Compression::Xz => {
                let mut w = lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::default()).unwrap();
                w.write_all(data).unwrap();
                w.finish().unwrap()
            }
        }
    }

    const ALL: [Compression; 5] =
        [Compression::None, Compression::Gzip, Compression::Zstd, Compression::Lzip, Compression::Xz];

    #[test]
    fn every_compression_unpacks_to_the_announced_nar() {
        let (nar, info) = sample();
        for c in ALL {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("item");
            let s = unpack(&compress(c, &nar)[..], c, &dest, &info, None).unwrap_or_else(|e| panic!("{c:?}: {e}"));
            assert!(s.messages.is_empty());
            assert_eq!(s.summary.nar_size, nar.len() as u64);
            assert_eq!(std::fs::read(dest.join("bin/hello")).unwrap(), b"#!/bin/sh\necho hi\n");
            // Canonical: mtime 1.
            let m = std::fs::symlink_metadata(dest.join("bin/hello")).unwrap();
            assert_eq!(std::os::unix::fs::MetadataExt::mtime(&m), 1, "{c:?}");
        }
    }

    #[test]
    fn truncated_corrupt_and_mismatched_nars_are_refused() {
        let (nar, info) = sample();
        for c in ALL {
            let packed = compress(c, &nar);
            let dir = tempfile::tempdir().unwrap();
            // Truncated.
            let r = unpack(&packed[..packed.len() - 9], c, &dir.path().join("t"), &info, None);
            assert!(matches!(r, Err(FetchError::Bad(_))), "{c:?}: {r:?}");
            // Corrupt compressed bytes (or, uncompressed, a changed byte in a file).
            let mut bad = packed.clone();
            let at = bad.len() / 2;
            bad[at] ^= 0x55;
            let r = unpack(&bad[..], c, &dir.path().join("c"), &info, None);
            assert!(r.is_err(), "{c:?}: corrupt accepted");
        }
        // Another nar than announced, of the same size: a hash mismatch.
        let mut other = nar.clone();
        let at = other.windows(7).position(|w| w == b"echo hi").unwrap();
        other[at + 5] = b'H';
        let dir = tempfile::tempdir().unwrap();
        let r = unpack(&other[..], Compression::None, &dir.path().join("m"), &info, None);
        assert!(matches!(r, Err(FetchError::HashMismatch { .. })), "{r:?}");
    }

    #[test]
    fn a_nar_larger_than_announced_is_cut_off() {
        let (nar, _) = sample();
        let text = format!(
            "StorePath: /gnu/store/1x9vvimabb763h6ca48gb3p3cbshkyjq-a\nNarHash: sha256:{}\nNarSize: {}\nReferences: \n",
            guix_formats::hash::HashAlgo::Sha256.digest(&nar).to_nix_base32(),
            nar.len() - 8
        );
        let info = NarInfo::parse(text.as_bytes()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let r = unpack(&nar[..], Compression::None, &dir.path().join("x"), &info, None);
        assert!(matches!(&r, Err(FetchError::Bad(m)) if m.contains("larger than")), "{r:?}");
    }

    /// Larger than one pipe buffer: decompressed and restored on two threads.
    #[test]
    fn a_large_nar_is_unpacked_on_two_threads_with_every_check() {
        let big = big_contents();
        let (nar, info) = sample_with(big.clone());
        assert!(info.nar_size() > PIPE_BUF as u64);
        for c in ALL {
            let packed = compress(c, &nar);
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("item");
            // Deduplicated as it is unpacked (into a store of its own per compression).
            let store = dir.path().join("store");
            std::fs::create_dir_all(store.join(".links")).unwrap();
            let s = unpack(&packed[..], c, &dest, &info, Some(&store)).unwrap_or_else(|e| panic!("{c:?}: {e}"));
            let s = s.summary;
            assert_eq!((s.nar_size, s.nar_hash), (info.nar_size(), *info.nar_hash()), "{c:?}");
            assert!(std::fs::read(dest.join("big")).unwrap() == big, "{c:?}");
            assert_linked(&store, &dest.join("big"));
            assert_eq!(std::fs::read(dest.join("bin/hello")).unwrap(), b"#!/bin/sh\necho hi\n");
            // Truncated in the middle, and just before the compressor's trailer.
            for cut in [packed.len() / 2, packed.len() - 3] {
                let r = unpack(&packed[..cut], c, &dir.path().join(format!("t{cut}")), &info, None);
                assert!(matches!(r, Err(FetchError::Bad(_))), "{c:?} cut at {cut}: {r:?}");
            }
            // Corrupt compressed bytes.
            let mut bad = packed.clone();
            let at = bad.len() / 3;
            bad[at] ^= 0x55;
            assert!(unpack(&bad[..], c, &dir.path().join("c"), &info, None).is_err(), "{c:?}: corrupt accepted");
            // Larger than announced: cut off.
            let small = info_for(&nar, nar.len() as u64 - 4096);
            let r = unpack(&packed[..], c, &dir.path().join("x"), &small, None);
            assert!(matches!(&r, Err(FetchError::Bad(m)) if m.contains("larger than")), "{c:?}: {r:?}");
        }
        // Another nar of the same size: a hash mismatch, found after the whole stream.
        let mut other_big = big.clone();
        other_big[PIPE_BUF + 5] ^= 1;
        let (other, _) = sample_with(other_big);
        let dir = tempfile::tempdir().unwrap();
        let r = unpack(&compress(Compression::Zstd, &other)[..], Compression::Zstd, &dir.path().join("m"), &info, None);
        assert!(matches!(r, Err(FetchError::HashMismatch { .. })), "{r:?}");
    }

    /// `file` is a hard link of its `.links` entry, named by its NAR hash read back.
    fn assert_linked(store: &Path, file: &Path) {
        use std::os::unix::fs::MetadataExt;
        let hash = nar::dump_path(file, &mut io::sink()).unwrap().nar_hash;
        let link = store.join(".links").join(hash.to_nix_base32());
        let (a, b) = (std::fs::metadata(file).unwrap(), std::fs::metadata(&link).unwrap());
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "{} not linked with {}", file.display(), link.display());
    }

    /// A root regular file is linked under the nar's own hash; a small nar is not looked at;
    /// without `dedup` nothing is linked.
    #[test]
    fn a_root_file_is_deduplicated_under_the_nar_hash() {
        let nar = Node::Regular { executable: false, contents: big_contents() }.to_nar().unwrap();
        let info = info_for(&nar, nar.len() as u64);
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(store.join(".links")).unwrap();
        for c in [Compression::None, Compression::Zstd] {
            let dest = dir.path().join(format!("{c:?}"));
            unpack(&compress(c, &nar)[..], c, &dest, &info, Some(&store)).unwrap();
            assert_linked(&store, &dest);
            std::fs::remove_file(&dest).unwrap();
        }
        let plain = dir.path().join("plain");
        unpack(&nar[..], Compression::None, &plain, &info, None).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(&plain).unwrap()), 1);
        let (small, small_info) = sample();
        unpack(&small[..], Compression::None, &dir.path().join("small"), &small_info, Some(&store)).unwrap();
        assert_eq!(std::fs::read_dir(store.join(".links")).unwrap().count(), 1);
    }

    /// Bytes after the archive's end inside the compressed stream are read (the trailer is
    /// checked) but not part of the nar, as with one thread.
    #[test]
    fn a_large_nar_followed_by_more_bytes_is_drained() {
        let (nar, info) = sample_with(big_contents());
        let mut longer = nar.clone();
        longer.extend(std::iter::repeat_n(0u8, 2 * PIPE_BUF));
        let dir = tempfile::tempdir().unwrap();
        let packed = compress(Compression::Zstd, &longer);
        unpack(&packed[..], Compression::Zstd, &dir.path().join("a"), &info, None).unwrap();
        let r = unpack(&packed[..packed.len() - 3], Compression::Zstd, &dir.path().join("b"), &info, None);
        assert!(matches!(r, Err(FetchError::Bad(_))), "{r:?}");
    }
}

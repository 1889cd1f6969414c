//! The `guix archive --export` format: what ExportPath (op 16) sends and ImportPaths (op 27)
//! reads, `nix-store --export` of old.
//!
//! A record is a NAR followed by a trailer: `EXPORT_MAGIC`, the store path, its references,
//! the deriver ("" if none), then an int flag and, if it is 1, the signature S-expression
//! text. The container is `(u64 1, record)* u64 0`.
//!
//! The signed digest is SHA-256 over the record's bytes from the first NAR byte through the
//! deriver string (the signature flag is not covered). Both [`write_record`] and
//! [`read_record`] compute it in the same pass as everything else. Signatures themselves are
//! opaque bytes here; parsing and verifying them is the `signature` module's business.
//!
//! Writing follows the C++ daemon's order step by step, because clients can see it:
//! [`RecordWriter`] sends the NAR, lets the caller refuse the record before any of the trailer
//! (the daemon's "hash of path … has changed" check), and writes the signature flag before it
//! asks the [`Signer`] (a missing key fails after the flag went out). The daemon's checks, keys
//! and database stay with the caller.
//!
//! The reader never trusts the sender for anything it can compute: it returns the
//! [`NarSummary`] of the bytes it actually consumed and restored.
//!
//! Stricter than the C++ daemon: a signature flag other than 0 or 1 is an error (C++ treats
//! anything but 1 as "no signature" and then misreads the rest of the stream).

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::path::Path;

use thiserror::Error;

use crate::hash::{Hash, HashAlgo, Hasher};
use crate::nar::{self, Limits, NarError, NarSummary, Restorer};
use crate::store_path::{StoreDir, StorePath, StorePathError};
use crate::wire::{self, put_bytes, put_u64, WireError};

/// The int that separates a record's NAR from its trailer ("NIXE" as little-endian bytes).
pub const EXPORT_MAGIC: u32 = 0x4558_494e;

/// Everything after the NAR in a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTrailer {
    pub path: StorePath,
    pub references: BTreeSet<StorePath>,
    pub deriver: Option<StorePath>,
    /// The signature S-expression text, raw.
    pub signature: Option<Vec<u8>>,
}

impl ExportTrailer {
    /// The trailer fields covered by the signature: magic, path, references, deriver.
    pub fn signed_fields(&self, store_dir: &StoreDir) -> Vec<u8> {
        let mut b = Vec::new();
        put_u64(&mut b, u64::from(EXPORT_MAGIC));
        put_bytes(&mut b, store_dir.display(&self.path).as_bytes());
        put_u64(&mut b, self.references.len() as u64);
        for r in &self.references {
            put_bytes(&mut b, store_dir.display(r).as_bytes());
        }
        let deriver = self.deriver.as_ref().map(|d| store_dir.display(d)).unwrap_or_default();
        put_bytes(&mut b, deriver.as_bytes());
        b
    }
}

/// Errors of export streams; messages are the C++ daemon's where it has one.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("input doesn't look like something created by `nix-store --export'")]
    BadSeparator,
    #[error("normalized archive cannot be imported; wrong format")]
    BadMagic,
    #[error("bad archive: invalid signature flag {0}")]
    BadSignatureFlag(u64),
    #[error("bad archive: {count} references exceed the limit of {max}")]
    TooManyReferences { count: u64, max: u64 },
    #[error("{0}")]
    Nar(#[from] NarError),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("{0}")]
    StorePath(#[from] StorePathError),
    /// The destination of a record being written failed (e.g. the client went away).
    #[error("writing export stream: {0}")]
    Write(#[source] io::Error),
    /// The [`Signer`] failed; its message as is.
    #[error("{0}")]
    Signer(String),
}

/// Bounds on what a record read from an untrusted source may contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportLimits {
    pub nar: Limits,
    pub max_references: u64,
    pub max_signature_len: u64,
}

impl Default for ExportLimits {
    fn default() -> Self {
        ExportLimits { nar: Limits::default(), max_references: 1 << 16, max_signature_len: 64 * 1024 }
    }
}

/// Longest store path string we read (`PATH_MAX`).
const MAX_PATH_LEN: u64 = 4096;

/// A writer that also feeds the signed digest and counts what went through: the NAR and the
/// signed trailer fields of a record being written or read go through it.
struct DigestTee<'a, W: ?Sized> {
    inner: &'a mut W,
    digest: &'a mut Hasher,
    written: u64,
    /// Set when `inner` failed, so a NAR error can be told apart from a dead destination.
    inner_failed: bool,
}

impl<'a, W: ?Sized> DigestTee<'a, W> {
    fn new(inner: &'a mut W, digest: &'a mut Hasher) -> Self {
        DigestTee { inner, digest, written: 0, inner_failed: false }
    }
}

impl<W: Write + ?Sized> Write for DigestTee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf).inspect_err(|_| self.inner_failed = true)?;
        let done = buf.get(..n).unwrap_or(buf);
        self.digest.update(done);
        self.written += done.len() as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.inner_failed = true)
    }
}

/// A reader that feeds everything it reads into the signed digest.
struct DigestRead<'a, R: ?Sized> {
    inner: &'a mut R,
    digest: &'a mut Hasher,
}

impl<R: Read + ?Sized> Read for DigestRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digest.update(buf.get(..n).unwrap_or(buf));
        Ok(n)
    }
}

/// Where a record's NAR comes from when writing.
pub enum NarSource<'a> {
    /// Dump this file system path.
    Path(&'a Path),
    /// Copy these NAR bytes, validating them on the way.
    Nar(&'a mut dyn Read),
}

/// What writing or reading a record computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSummary {
    pub nar: NarSummary,
    /// SHA-256 over NAR ‖ magic ‖ path ‖ references ‖ deriver: what the signature signs.
    pub signed_digest: Hash,
}

/// Produces the signature text for a signed digest (e.g. by asking `guix authenticate`). Its
/// error message is reported as is ([`ExportError::Signer`]).
pub type Signer<'a> = dyn FnMut(&Hash) -> Result<Vec<u8>, String> + 'a;

/// How the signature of a written record is obtained.
pub enum Signature<'a> {
    /// Use the trailer's `signature` as is: flag 0 if it has none, else flag 1 and the text.
    FromTrailer,
    /// Write flag 1, then ask this signer for the text (ignores the trailer's `signature`).
    /// The flag goes out first, so a failing signer leaves it written, as in the C++ daemon.
    Sign(&'a mut Signer<'a>),
}

/// One record being written, in the order of the C++ daemon's `LocalStore::exportPath`: the
/// NAR ([`RecordWriter::write_nar`]), then the trailer ([`RecordWriter::finish`]).
///
/// Between the two the caller can look at [`RecordWriter::nar`] (the daemon compares it with
/// the database's narHash) and drop the writer to refuse the record: then the NAR has gone out
/// and nothing of the trailer has.
pub struct RecordWriter<'w, W: ?Sized> {
    w: &'w mut W,
    digest: Hasher,
    nar: NarSummary,
}

impl<'w, W: Write + ?Sized> RecordWriter<'w, W> {
    /// Streams the record's NAR to `w`, feeding the signed digest on the way. A failure of `w`
    /// itself is [`ExportError::Write`]; one of the source is [`ExportError::Nar`].
    pub fn write_nar(w: &'w mut W, nar: NarSource<'_>) -> Result<Self, ExportError> {
        let mut digest = HashAlgo::Sha256.hasher();
        let mut tee = DigestTee::new(&mut *w, &mut digest);
        let res = match nar {
            NarSource::Path(p) => nar::dump_path_to(p, &mut tee),
            NarSource::Nar(r) => nar::validate_copy(r, &mut tee, &Limits::default()).map(drop),
        };
        match res {
            Ok(()) => {}
            Err(NarError::Io { source, .. }) if tee.inner_failed => return Err(ExportError::Write(source)),
            Err(e) if tee.inner_failed => return Err(ExportError::Write(io::Error::other(e.to_string()))),
            Err(e) => return Err(e.into()),
        }
        let nar_size = tee.written;
        let nar = NarSummary { nar_hash: digest.clone().finish(), nar_size };
        Ok(RecordWriter { w, digest, nar })
    }

    /// Hash and size of the NAR written.
    pub fn nar(&self) -> NarSummary {
        self.nar
    }

    /// Writes the trailer: the signed fields of `trailer`, then the signature flag and, if
    /// any, the signature that `signature` says. Returns what the record's bytes hash to.
    pub fn finish(
        mut self,
        store_dir: &StoreDir,
        trailer: &ExportTrailer,
        signature: Signature<'_>,
    ) -> Result<RecordSummary, ExportError> {
        let mut tee = DigestTee::new(&mut *self.w, &mut self.digest);
        tee.write_all(&trailer.signed_fields(store_dir)).map_err(ExportError::Write)?;
        let signed_digest = self.digest.finish();
        let mut b = Vec::new();
        match signature {
            Signature::FromTrailer => match &trailer.signature {
                None => put_u64(&mut b, 0),
                Some(s) => {
                    put_u64(&mut b, 1);
                    put_bytes(&mut b, s);
                }
            },
            Signature::Sign(sign) => {
                self.w.write_all(&1u64.to_le_bytes()).map_err(ExportError::Write)?;
                put_bytes(&mut b, &sign(&signed_digest).map_err(ExportError::Signer)?);
            }
        }
        self.w.write_all(&b).map_err(ExportError::Write)?;
        Ok(RecordSummary { nar: self.nar, signed_digest })
    }
}

/// Writes one record (no container separator): what ExportPath sends.
pub fn write_record<W: Write + ?Sized>(
    w: &mut W,
    store_dir: &StoreDir,
    nar: NarSource<'_>,
    trailer: &ExportTrailer,
    signature: Signature<'_>,
) -> Result<RecordSummary, ExportError> {
    RecordWriter::write_nar(w, nar)?.finish(store_dir, trailer, signature)
}

/// Writes the multi-record container: `(u64 1, record)* u64 0`.
pub struct ExportWriter<W> {
    w: W,
    store_dir: StoreDir,
}

impl<W: Write> ExportWriter<W> {
    pub fn new(w: W, store_dir: StoreDir) -> ExportWriter<W> {
        ExportWriter { w, store_dir }
    }

    /// Writes the separator and one record.
    pub fn write_record(
        &mut self,
        nar: NarSource<'_>,
        trailer: &ExportTrailer,
        signature: Signature<'_>,
    ) -> Result<RecordSummary, ExportError> {
        self.w.write_all(&1u64.to_le_bytes()).map_err(ExportError::Write)?;
        write_record(&mut self.w, &self.store_dir, nar, trailer, signature)
    }

    /// Writes the end marker and returns the writer.
    pub fn finish(mut self) -> Result<W, ExportError> {
        self.w.write_all(&0u64.to_le_bytes()).map_err(ExportError::Write)?;
        self.w.flush().map_err(ExportError::Write)?;
        Ok(self.w)
    }
}

/// What to do with a record's NAR when reading.
pub enum NarSink<'a> {
    /// Unpack it into this path, which must not exist (see [`nar::Restorer`]).
    Restore(&'a Path),
    /// Validate and hash it only (e.g. the path is already valid).
    Discard,
    /// Copy its bytes here.
    Copy(&'a mut dyn Write),
}

/// One record read from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedRecord {
    /// Position in the container, from 0.
    pub index: usize,
    /// Computed from the bytes consumed, never taken from the sender.
    pub summary: RecordSummary,
    pub trailer: ExportTrailer,
}

fn read_store_path<R: Read + ?Sized>(r: &mut R, store_dir: &StoreDir) -> Result<StorePath, ExportError> {
    let b = wire::read_bytes(r, MAX_PATH_LEN)?;
    let s = String::from_utf8(b)
        .map_err(|e| StorePathError::NotInStore(String::from_utf8_lossy(e.as_bytes()).into_owned()))?;
    Ok(store_dir.parse(&s)?)
}

/// Reads one record (no container separator), handling its NAR as `sink` says.
pub fn read_record<R: Read + ?Sized>(
    r: &mut R,
    store_dir: &StoreDir,
    limits: &ExportLimits,
    sink: NarSink<'_>,
) -> Result<(RecordSummary, ExportTrailer), ExportError> {
    let mut digest = HashAlgo::Sha256.hasher();
    let mut discard = io::sink();
    let nar = match sink {
        NarSink::Restore(dest) => {
            let mut tee = DigestTee::new(&mut discard, &mut digest);
            nar::read_with(&mut *r, &limits.nar, &mut Restorer::new(dest), &mut tee)?
        }
        NarSink::Discard => {
            let mut tee = DigestTee::new(&mut discard, &mut digest);
            nar::read_with(&mut *r, &limits.nar, &mut (), &mut tee)?
        }
        NarSink::Copy(w) => {
            let mut tee = DigestTee::new(w, &mut digest);
            nar::read_with(&mut *r, &limits.nar, &mut (), &mut tee)?
        }
    };

    let (path, references, deriver) = {
        let mut hr = DigestRead { inner: &mut *r, digest: &mut digest };
        if wire::read_u64(&mut hr)? != u64::from(EXPORT_MAGIC) {
            return Err(ExportError::BadMagic);
        }
        let path = read_store_path(&mut hr, store_dir)?;
        let count = u64::from(wire::read_int(&mut hr)?);
        if count > limits.max_references {
            return Err(ExportError::TooManyReferences { count, max: limits.max_references });
        }
        let mut references = BTreeSet::new();
        for _ in 0..count {
            references.insert(read_store_path(&mut hr, store_dir)?);
        }
        let d = wire::read_bytes(&mut hr, MAX_PATH_LEN)?;
        let deriver = if d.is_empty() {
            None
        } else {
            let s = String::from_utf8(d)
                .map_err(|e| StorePathError::NotInStore(String::from_utf8_lossy(e.as_bytes()).into_owned()))?;
            Some(store_dir.parse(&s)?)
        };
        (path, references, deriver)
    };
    let signed_digest = digest.finish();

    let signature = match wire::read_u64(r)? {
        0 => None,
        1 => Some(wire::read_bytes(r, limits.max_signature_len)?),
        other => return Err(ExportError::BadSignatureFlag(other)),
    };
    let trailer = ExportTrailer { path, references, deriver, signature };
    Ok((RecordSummary { nar, signed_digest }, trailer))
}

/// Reads the multi-record container record by record.
pub struct ExportReader<R> {
    r: R,
    store_dir: StoreDir,
    limits: ExportLimits,
    index: usize,
    done: bool,
}

impl<R: Read> ExportReader<R> {
    pub fn new(r: R, store_dir: StoreDir, limits: ExportLimits) -> ExportReader<R> {
        ExportReader { r, store_dir, limits, index: 0, done: false }
    }

    /// Index the next record will have.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Reads the next separator and, if another record follows, the record, handling its
    /// NAR as `sink` says. `None` once the end marker was read (then `sink` is unused).
    pub fn next_record(&mut self, sink: NarSink<'_>) -> Result<Option<ImportedRecord>, ExportError> {
        if self.done {
            return Ok(None);
        }
        match wire::read_u64(&mut self.r)? {
            0 => {
                self.done = true;
                Ok(None)
            }
            1 => {
                let (summary, trailer) = read_record(&mut self.r, &self.store_dir, &self.limits, sink)?;
                let index = self.index;
                self.index += 1;
                Ok(Some(ImportedRecord { index, summary, trailer }))
            }
            _ => Err(ExportError::BadSeparator),
        }
    }

    pub fn into_inner(self) -> R {
        self.r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::{nar_of_regular, Node};
    use proptest::prelude::*;

    fn sp(s: &str) -> StorePath {
        StorePath::from_base_name(s).unwrap()
    }

    fn trailer(sig: Option<&[u8]>) -> ExportTrailer {
        ExportTrailer {
            path: sp("k9pad896kygyvpxli7f20bkl9813p9y4-hello.txt"),
            references: [sp("wi4jz6bs7yjmisfq07picybwnfsn1z0d-uses-hello.txt")].into_iter().collect(),
            deriver: Some(sp("j9xllg2qig7kk8987lnaplmdmmvcdmad-hello.drv")),
            signature: sig.map(<[u8]>::to_vec),
        }
    }

    fn container(records: &[(&[u8], ExportTrailer)]) -> Vec<u8> {
        let mut w = ExportWriter::new(Vec::new(), StoreDir::default());
        for (nar, t) in records {
            w.write_record(NarSource::Nar(&mut &nar[..]), t, Signature::FromTrailer).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_and_digest() {
        let nar = nar_of_regular(b"hello\n", false);
        let t = trailer(Some(b"(signature)"));
        let bytes = container(&[(&nar, t.clone()), (&nar, trailer(None))]);
        let mut r = ExportReader::new(&bytes[..], StoreDir::default(), ExportLimits::default());
        let a = r.next_record(NarSink::Discard).unwrap().unwrap();
        assert_eq!(a.trailer, t);
        assert_eq!(a.index, 0);
        let mut signed = nar.clone();
        signed.extend_from_slice(&t.signed_fields(&StoreDir::default()));
        assert_eq!(a.summary.signed_digest, HashAlgo::Sha256.digest(&signed));
        assert_eq!(a.summary.nar.nar_hash, HashAlgo::Sha256.digest(&nar));
        let mut copy = Vec::new();
        let b = r.next_record(NarSink::Copy(&mut copy)).unwrap().unwrap();
        assert_eq!((b.index, b.trailer.signature.as_ref()), (1, None));
        assert_eq!(copy, nar);
        assert_eq!(b.summary.signed_digest, a.summary.signed_digest, "flag is not signed");
        assert!(r.next_record(NarSink::Discard).unwrap().is_none());
    }

    #[test]
    fn signer_sees_the_digest() {
        let nar = nar_of_regular(b"x", true);
        let mut seen = None;
        let mut sign = |h: &Hash| {
            seen = Some(*h);
            Ok(b"sig".to_vec())
        };
        let mut out = Vec::new();
        let s = write_record(
            &mut out,
            &StoreDir::default(),
            NarSource::Nar(&mut &nar[..]),
            &trailer(None),
            Signature::Sign(&mut sign),
        )
        .unwrap();
        assert_eq!(seen, Some(s.signed_digest));
        let (s2, t) =
            read_record(&mut &out[..], &StoreDir::default(), &ExportLimits::default(), NarSink::Discard).unwrap();
        assert_eq!(s, s2);
        assert_eq!(t.signature.as_deref(), Some(&b"sig"[..]));
    }

    /// The signer runs after the flag word went out (C++ `exportPath` writes `1`, then reads
    /// the key), and a failing signer leaves exactly that flag behind.
    #[test]
    fn flag_goes_out_before_the_signer_runs() {
        let nar = nar_of_regular(b"x", false);
        let t = trailer(None);
        // The signer cannot see the destination while the writer borrows it; a shared log can.
        let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut dest = SharedLog(log.clone());
        let rec = RecordWriter::write_nar(&mut dest, NarSource::Nar(&mut &nar[..])).unwrap();
        let seen = log.clone();
        let mut sign = move |_: &Hash| -> Result<Vec<u8>, String> {
            let b = seen.borrow();
            assert_eq!(b.get(b.len() - 8..), Some(&1u64.to_le_bytes()[..]), "flag written before signing");
            Err("file `/etc/guix/signing-key.sec' should be secret (inaccessible to everyone else)!".into())
        };
        let e = rec.finish(&StoreDir::default(), &t, Signature::Sign(&mut sign)).unwrap_err();
        assert!(matches!(&e, ExportError::Signer(m) if m.contains("should be secret")), "{e}");
        let mut want = nar.clone();
        want.extend_from_slice(&t.signed_fields(&StoreDir::default()));
        want.extend_from_slice(&1u64.to_le_bytes());
        assert_eq!(*log.borrow(), want, "NAR, signed fields, flag 1, nothing else");
    }

    struct SharedLog(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

    impl Write for SharedLog {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A refused record (the daemon's hash check between NAR and trailer) is the NAR alone.
    #[test]
    fn dropping_after_the_nar_writes_no_trailer() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, b"contents").unwrap();
        let mut out = Vec::new();
        // Looked at and then abandoned, as when the hash differs from the database's.
        let nar = RecordWriter::write_nar(&mut out, NarSource::Path(&f)).unwrap().nar();
        assert_eq!(out, nar_of_regular(b"contents", false));
        assert_eq!(nar.nar_hash, HashAlgo::Sha256.digest(&out));
        assert_eq!(nar.nar_size, out.len() as u64);
    }

    /// A dead destination is `Write`, an unreadable source is `Nar`: the daemon closes the
    /// connection for the one and reports the other.
    #[test]
    fn destination_and_source_failures_differ() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, vec![7u8; 100_000]).unwrap();
        let e = RecordWriter::write_nar(&mut Broken, NarSource::Path(&f)).err().unwrap();
        assert!(matches!(&e, ExportError::Write(io) if io.kind() == io::ErrorKind::BrokenPipe), "{e}");
        let e = RecordWriter::write_nar(&mut Vec::new(), NarSource::Path(&tmp.path().join("gone"))).err().unwrap();
        assert!(matches!(e, ExportError::Nar(NarError::Io { .. })), "{e}");
    }

    #[test]
    fn daemon_errors() {
        let mut bad = Vec::new();
        put_u64(&mut bad, 2);
        let mut r = ExportReader::new(&bad[..], StoreDir::default(), ExportLimits::default());
        let e = r.next_record(NarSink::Discard).unwrap_err();
        assert_eq!(e.to_string(), "input doesn't look like something created by `nix-store --export'");

        let nar = nar_of_regular(b"", false);
        let mut bytes = container(&[(&nar, trailer(None))]);
        bytes[8 + nar.len()] ^= 1;
        let mut r = ExportReader::new(&bytes[..], StoreDir::default(), ExportLimits::default());
        let e = r.next_record(NarSink::Discard).unwrap_err();
        assert_eq!(e.to_string(), "normalized archive cannot be imported; wrong format");

        let other = StoreDir::new("/other/store").unwrap();
        let bytes = container(&[(&nar, trailer(None))]);
        let mut r = ExportReader::new(&bytes[..], other, ExportLimits::default());
        assert!(matches!(r.next_record(NarSink::Discard), Err(ExportError::StorePath(_))));

        let limits = ExportLimits { max_references: 0, ..ExportLimits::default() };
        let mut r = ExportReader::new(&bytes[..], StoreDir::default(), limits);
        assert!(matches!(r.next_record(NarSink::Discard), Err(ExportError::TooManyReferences { .. })));
    }

    #[test]
    fn restores_into_dest() {
        let node = Node::Directory(
            [(b"f".to_vec(), Node::Regular { executable: false, contents: b"hi".to_vec() })].into_iter().collect(),
        );
        let nar = node.to_nar().unwrap();
        let bytes = container(&[(&nar, trailer(None))]);
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("d");
        let mut r = ExportReader::new(&bytes[..], StoreDir::default(), ExportLimits::default());
        let rec = r.next_record(NarSink::Restore(&dest)).unwrap().unwrap();
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"hi");
        assert_eq!(rec.summary.nar.nar_size, nar.len() as u64);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    proptest! {
        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600), cut in any::<prop::sample::Index>()) {
            let _ = ExportReader::new(&b[..], StoreDir::default(), ExportLimits::default()).next_record(NarSink::Discard);
            let nar = nar_of_regular(b"hello\n", false);
            let good = container(&[(&nar, trailer(Some(b"s")))]);
            let cut = &good[..cut.index(good.len())];
            prop_assert!(ExportReader::new(cut, StoreDir::default(), ExportLimits::default())
                .next_record(NarSink::Discard).is_err() || cut.len() >= good.len() - 8);
        }
    }
}

//! The blocking NAR readers: one driver of the [`Parser`] over `std::io::Read`, with a
//! [`Visitor`] for what to do with the structure, and the unpacker [`Restorer`].

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::parser::{Event, Parser, Step};
use super::{input_error, Limits, NarError, NarSummary};
use crate::hash::{HashAlgo, Hasher};
use crate::wire::{padding, WireError};

/// Size of the buffer file contents are streamed through.
pub(crate) const CHUNK: usize = 64 * 1024;

/// What a reader does with a NAR's structure. Events arrive in NAR order; a
/// [`Event::Regular`] is followed by zero or more `contents` chunks and one `contents_done`.
pub trait Visitor {
    fn event(&mut self, event: Event<'_>) -> Result<(), NarError>;
    fn contents(&mut self, chunk: &[u8]) -> Result<(), NarError>;
    fn contents_done(&mut self) -> Result<(), NarError> {
        Ok(())
    }
}

/// Validation only.
impl Visitor for () {
    fn event(&mut self, _: Event<'_>) -> Result<(), NarError> {
        Ok(())
    }
    fn contents(&mut self, _: &[u8]) -> Result<(), NarError> {
        Ok(())
    }
}

/// The input side of a driver: reads exactly what is asked, hashing and copying it.
struct Input<'a, R, T: ?Sized> {
    r: R,
    tee: &'a mut T,
    hasher: Hasher,
    size: u64,
}

impl<R: Read, T: Write + ?Sized> Input<'_, R, T> {
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        self.r.read_exact(buf).map_err(input_error)?;
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        self.tee.write_all(buf).map_err(|e| NarError::io("copying NAR", e))
    }

    fn read_u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_padding(&mut self, len: u64) -> Result<(), NarError> {
        let mut pad = [0u8; 8];
        let pad = &mut pad[..padding(len)];
        self.read_exact(pad)?;
        if pad.iter().any(|&b| b != 0) {
            return Err(NarError::Wire(WireError::NonZeroPadding));
        }
        Ok(())
    }
}

/// Reads exactly one NAR from `r`, validating it completely, reporting its structure to
/// `visitor` and copying its bytes to `tee`. Returns the SHA-256 and size of those bytes.
pub fn read_with<R, V, T>(r: R, limits: &Limits, visitor: &mut V, tee: &mut T) -> Result<NarSummary, NarError>
where
    R: Read,
    V: Visitor + ?Sized,
    T: Write + ?Sized,
{
    let mut input = Input { r, tee, hasher: HashAlgo::Sha256.hasher(), size: 0 };
    let mut parser = Parser::new(limits.clone());
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match parser.step() {
            Step::Token => {
                let len = input.read_u64()?;
                parser.token_len(len)?;
                // The parser bounded `len` by a limit, so this allocation is bounded too.
                buf.resize(usize::try_from(len).map_err(|_| NarError::Misuse("length"))?, 0);
                input.read_exact(&mut buf)?;
                input.read_padding(len)?;
                if let Some(ev) = parser.token(&buf)? {
                    visitor.event(ev)?;
                }
            }
            Step::Size => {
                let size = input.read_u64()?;
                let ev = parser.contents_size(size)?;
                visitor.event(ev)?;
            }
            Step::Contents { len } => {
                let mut chunk = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
                let mut left = len;
                while left > 0 {
                    let n = usize::try_from(left).map_or(chunk.len(), |l| l.min(chunk.len()));
                    let part = &mut chunk[..n];
                    input.read_exact(part)?;
                    visitor.contents(part)?;
                    left -= n as u64;
                }
                input.read_padding(len)?;
                parser.contents_done()?;
                visitor.contents_done()?;
            }
            Step::Done => break,
        }
    }
    debug_assert_eq!(input.size, parser.offset());
    Ok(NarSummary { nar_hash: input.hasher.finish(), nar_size: input.size })
}

/// Reads and fully validates one NAR, discarding it.
pub fn validate<R: Read>(r: R, limits: &Limits) -> Result<NarSummary, NarError> {
    read_with(r, limits, &mut (), &mut io::sink())
}

/// Reads and fully validates one NAR, copying its bytes to `w`.
pub fn validate_copy<R: Read, W: Write + ?Sized>(r: R, w: &mut W, limits: &Limits) -> Result<NarSummary, NarError> {
    read_with(r, limits, &mut (), w)
}

/// Unpacks one NAR read from `r` into `dest`, which must not exist, and returns the SHA-256
/// and size of the NAR bytes consumed. See [`Restorer`] for what is created.
pub fn restore<R: Read>(r: R, dest: &Path, limits: &Limits) -> Result<NarSummary, NarError> {
    read_with(r, limits, &mut Restorer::new(dest), &mut io::sink())
}

/// A [`Visitor`] that unpacks the NAR under a destination path that must not exist yet.
///
/// Regular files are created with `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0444 (0555 if
/// executable); directories are created 0755 and made 0555 once their entries are in;
/// symlinks are created as they are, target unchecked. Times and ownership are left to the
/// caller (the daemon canonicalises them: mtime 1, owner root).
///
/// Nothing is ever created outside `dest`: every name is checked by the parser (no "..", no
/// "/", not empty), and since entries must be strictly increasing, each path is created
/// exactly once, so no path component can be a symlink restored earlier — every component
/// below `dest` is a directory this restorer just made with `mkdir`, which never follows a
/// symlink. This assumes nobody else writes under `dest` concurrently (the daemon restores
/// into a fresh directory of its own). After an error the partial tree is left in place for
/// the caller to remove (directories may still be 0755, finished ones are 0555).
pub struct Restorer {
    path: PathBuf,
    file: Option<File>,
}

impl Restorer {
    pub fn new(dest: &Path) -> Restorer {
        Restorer { path: dest.to_owned(), file: None }
    }
}

impl Visitor for Restorer {
    fn event(&mut self, event: Event<'_>) -> Result<(), NarError> {
        let p = &self.path;
        match event {
            Event::Directory => DirBuilder::new()
                .mode(0o755)
                .create(p)
                .map_err(|e| NarError::io(format!("creating directory `{}'", p.display()), e))?,
            Event::DirectoryEnd => fs::set_permissions(p, Permissions::from_mode(0o555))
                .map_err(|e| NarError::io(format!("changing permissions of `{}'", p.display()), e))?,
            Event::Entry { name } => self.path.push(OsStr::from_bytes(name)),
            Event::EntryEnd => {
                self.path.pop();
            }
            Event::Regular { executable, .. } => {
                let mode = if executable { 0o555 } else { 0o444 };
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(p)
                    .map_err(|e| NarError::io(format!("creating file `{}'", p.display()), e))?;
                // The umask may have cleared bits of `mode`.
                file.set_permissions(Permissions::from_mode(mode))
                    .map_err(|e| NarError::io(format!("changing permissions of `{}'", p.display()), e))?;
                self.file = Some(file);
            }
            Event::Symlink { target } => std::os::unix::fs::symlink(OsStr::from_bytes(target), p)
                .map_err(|e| NarError::io(format!("creating symlink `{}'", p.display()), e))?,
        }
        Ok(())
    }

    fn contents(&mut self, chunk: &[u8]) -> Result<(), NarError> {
        let file = self.file.as_mut().ok_or(NarError::Misuse("contents outside a regular file"))?;
        file.write_all(chunk).map_err(|e| NarError::io(format!("writing file `{}'", self.path.display()), e))
    }

    fn contents_done(&mut self) -> Result<(), NarError> {
        self.file = None;
        Ok(())
    }
}

//! Producing NARs: from a file tree on disk (streaming), from an in-memory [`Node`], or a
//! single regular file; and [`HashingWriter`], the tee that yields a [`NarSummary`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::parser::valid_name;
use super::{Limits, NarError, NarSummary, Visitor, NAR_MAGIC};
use crate::hash::{HashAlgo, Hasher};
use crate::wire::{padding, put_bytes, write_bytes, write_u64};

/// The owner-exec bit that decides "executable".
const S_IXUSR: u32 = 0o100;

/// A writer that passes everything through to `inner` while computing the SHA-256 and the
/// length of what was written.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> HashingWriter<W> {
        HashingWriter { inner, hasher: HashAlgo::Sha256.hasher(), size: 0 }
    }

    /// Hash and size of everything written so far.
    pub fn summary(&self) -> NarSummary {
        NarSummary { nar_hash: self.hasher.clone().finish(), nar_size: self.size }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let done = buf.get(..n).unwrap_or(buf);
        self.hasher.update(done);
        self.size += done.len() as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_err(e: io::Error) -> NarError {
    NarError::io("writing NAR", e)
}

/// Writes the NAR of the file, symlink or directory tree at `path` to `w` and returns its
/// hash and size. File contents are streamed, never held in memory whole.
pub fn dump_path<W: Write + ?Sized>(path: &Path, w: &mut W) -> Result<NarSummary, NarError> {
    let mut tee = HashingWriter::new(w);
    dump_path_to(path, &mut tee)?;
    Ok(tee.summary())
}

/// Writes the NAR of `path` to `w` without hashing it.
pub fn dump_path_to<W: Write + ?Sized>(path: &Path, w: &mut W) -> Result<(), NarError> {
    write_bytes(w, NAR_MAGIC).map_err(write_err)?;
    dump_node(path, w)
}

fn tokens<W: Write + ?Sized>(w: &mut W, toks: &[&[u8]]) -> Result<(), NarError> {
    let mut buf = Vec::with_capacity(toks.len() * 24);
    for t in toks {
        put_bytes(&mut buf, t);
    }
    w.write_all(&buf).map_err(write_err)
}

fn dump_node<W: Write + ?Sized>(path: &Path, w: &mut W) -> Result<(), NarError> {
    let md = fs::symlink_metadata(path)
        .map_err(|e| NarError::io(format!("getting attributes of path `{}'", path.display()), e))?;
    let ft = md.file_type();
    if ft.is_file() {
        let file = File::options()
            .read(true)
            // Only what `lstat` said is a regular file; never a symlink swapped in since.
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| NarError::io(format!("opening file `{}'", path.display()), e))?;
        // Size and mode from the open file, so they describe the bytes we are about to copy.
        let md =
            file.metadata().map_err(|e| NarError::io(format!("getting attributes of path `{}'", path.display()), e))?;
        if !md.file_type().is_file() {
            return Err(NarError::FileChanged { path: path.to_owned() });
        }
        tokens(w, &[b"(", b"type", b"regular"])?;
        if md.mode() & S_IXUSR != 0 {
            tokens(w, &[b"executable", b""])?;
        }
        tokens(w, &[b"contents"])?;
        write_contents(w, &mut &file, md.len()).map_err(|e| match e {
            NarError::FileChanged { .. } => NarError::FileChanged { path: path.to_owned() },
            e => e,
        })?;
    } else if ft.is_symlink() {
        let target =
            fs::read_link(path).map_err(|e| NarError::io(format!("reading symbolic link `{}'", path.display()), e))?;
        tokens(w, &[b"(", b"type", b"symlink", b"target", target.as_os_str().as_bytes()])?;
    } else if ft.is_dir() {
        tokens(w, &[b"(", b"type", b"directory"])?;
        let mut names: Vec<OsString> = Vec::new();
        let rd = fs::read_dir(path).map_err(|e| NarError::io(format!("opening directory `{}'", path.display()), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| NarError::io(format!("reading directory `{}'", path.display()), e))?;
            names.push(entry.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            tokens(w, &[b"entry", b"(", b"name", name.as_bytes(), b"node"])?;
            dump_node(&path.join(&name), w)?;
            tokens(w, &[b")"])?;
        }
    } else {
        return Err(NarError::UnsupportedType(path.to_owned()));
    }
    tokens(w, &[b")"])
}

/// Writes the size word, exactly `size` bytes from `r`, and the padding.
fn write_contents<W: Write + ?Sized, R: Read>(w: &mut W, r: &mut R, size: u64) -> Result<(), NarError> {
    write_u64(w, size).map_err(write_err)?;
    let copied =
        io::copy(&mut r.take(size), &mut WriteAdapter(w)).map_err(|e| NarError::io("reading file contents", e))?;
    if copied != size {
        return Err(NarError::FileChanged { path: Default::default() });
    }
    w.write_all(&[0u8; 8][..padding(size)]).map_err(write_err)
}

/// `io::copy` wants a sized writer.
struct WriteAdapter<'a, W: ?Sized>(&'a mut W);

impl<W: Write + ?Sized> Write for WriteAdapter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Writes the NAR of a single regular file whose `size` bytes of contents come from
/// `contents` (a flat file: the NAR AddToStore expects for a non-recursive add).
pub fn write_regular<W: Write + ?Sized, R: Read>(
    w: &mut W,
    executable: bool,
    size: u64,
    mut contents: R,
) -> Result<(), NarError> {
    write_bytes(w, NAR_MAGIC).map_err(write_err)?;
    tokens(w, &[b"(", b"type", b"regular"])?;
    if executable {
        tokens(w, &[b"executable", b""])?;
    }
    tokens(w, &[b"contents"])?;
    write_contents(w, &mut contents, size)?;
    tokens(w, &[b")"])
}

/// The NAR of a single regular file held in memory.
pub fn nar_of_regular(contents: &[u8], executable: bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(contents.len() + 160);
    put_bytes(&mut buf, NAR_MAGIC);
    Node::put_regular(&mut buf, executable, contents);
    buf
}

/// The NAR hash and size of a single regular file held in memory, without building the NAR.
pub fn summary_of_regular(contents: &[u8], executable: bool) -> NarSummary {
    let mut nar = HashingWriter::new(io::sink());
    // Writing to a sink cannot fail.
    let _ = write_regular(&mut nar, executable, contents.len() as u64, contents);
    nar.summary()
}

/// A file system object held in memory, for building NARs in tests and for small items.
/// Directory entries live in a `BTreeMap`, so they are always in NAR (byte-wise) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Regular { executable: bool, contents: Vec<u8> },
    Symlink { target: Vec<u8> },
    Directory(BTreeMap<Vec<u8>, Node>),
}

impl Node {
    /// Serialises the tree; fails with "NAR contains invalid file name" on a name that no
    /// reader would accept.
    pub fn to_nar(&self) -> Result<Vec<u8>, NarError> {
        let mut buf = Vec::new();
        put_bytes(&mut buf, NAR_MAGIC);
        self.put(&mut buf)?;
        Ok(buf)
    }

    fn put_regular(buf: &mut Vec<u8>, executable: bool, contents: &[u8]) {
        for t in [&b"("[..], b"type", b"regular"] {
            put_bytes(buf, t);
        }
        if executable {
            put_bytes(buf, b"executable");
            put_bytes(buf, b"");
        }
        put_bytes(buf, b"contents");
        put_bytes(buf, contents);
        put_bytes(buf, b")");
    }

    fn put(&self, buf: &mut Vec<u8>) -> Result<(), NarError> {
        match self {
            Node::Regular { executable, contents } => Node::put_regular(buf, *executable, contents),
            Node::Symlink { target } => {
                for t in [&b"("[..], b"type", b"symlink", b"target", target, b")"] {
                    put_bytes(buf, t);
                }
            }
            Node::Directory(entries) => {
                for t in [&b"("[..], b"type", b"directory"] {
                    put_bytes(buf, t);
                }
                for (name, node) in entries {
                    if !valid_name(name) {
                        return Err(NarError::InvalidName(String::from_utf8_lossy(name).into_owned()));
                    }
                    for t in [&b"entry"[..], b"(", b"name", name, b"node"] {
                        put_bytes(buf, t);
                    }
                    node.put(buf)?;
                    put_bytes(buf, b")");
                }
                put_bytes(buf, b")");
            }
        }
        Ok(())
    }

    /// Reads a whole NAR into memory. Every file's contents are held, so bound
    /// [`Limits::max_nar_size`] when the input is not trusted.
    pub fn from_nar<R: Read>(r: R, limits: &Limits) -> Result<(Node, NarSummary), NarError> {
        let mut builder = TreeBuilder::default();
        let summary = super::read_with(r, limits, &mut builder, &mut io::sink())?;
        let node = builder.root.ok_or(NarError::Misuse("empty archive"))?;
        Ok((node, summary))
    }
}

/// An open directory: the name it will have in its parent (none for the root), its entries.
type OpenDir = (Option<Vec<u8>>, BTreeMap<Vec<u8>, Node>);

/// Builds a [`Node`] from parser events.
#[derive(Default)]
struct TreeBuilder {
    root: Option<Node>,
    stack: Vec<OpenDir>,
    name: Option<Vec<u8>>,
}

impl TreeBuilder {
    fn finish_node(&mut self, node: Node) -> Result<(), NarError> {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some((_, entries)) => {
                let name = self.name.take().ok_or(NarError::Misuse("node without a name"))?;
                entries.insert(name, node);
            }
        }
        Ok(())
    }
}

impl Visitor for TreeBuilder {
    fn event(&mut self, event: super::Event<'_>) -> Result<(), NarError> {
        use super::Event;
        match event {
            Event::Directory => self.stack.push((self.name.take(), BTreeMap::new())),
            Event::DirectoryEnd => {
                let (name, entries) = self.stack.pop().ok_or(NarError::Misuse("unbalanced directory"))?;
                self.name = name;
                self.finish_node(Node::Directory(entries))?;
            }
            Event::Entry { name } => self.name = Some(name.to_vec()),
            Event::EntryEnd => {}
            Event::Regular { executable, .. } => {
                self.finish_node(Node::Regular { executable, contents: Vec::new() })?
            }
            Event::Symlink { target } => self.finish_node(Node::Symlink { target: target.to_vec() })?,
        }
        Ok(())
    }

    fn contents(&mut self, chunk: &[u8]) -> Result<(), NarError> {
        // The regular file just inserted is the root or the greatest entry of the current
        // directory: the parser guarantees entries arrive in strictly increasing order.
        let file = match self.stack.last_mut() {
            None => self.root.as_mut(),
            Some((_, entries)) => entries.values_mut().next_back(),
        };
        match file {
            Some(Node::Regular { contents, .. }) => {
                contents.extend_from_slice(chunk);
                Ok(())
            }
            _ => Err(NarError::Misuse("contents outside a regular file")),
        }
    }
}

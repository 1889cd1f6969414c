//! A minimal NAR writer for AddToStore (`dumpPath` of the C++ daemon, `write-file` of Guile).
//!
//! TODO: switch to `guix_formats::nar::dump_path` once the `nar` module lands; this private copy
//! exists only so the client could be written before it. It has the same shape (synchronous,
//! streaming into a `Write`, never holding a file in memory).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn put_u64<W: Write + ?Sized>(w: &mut W, v: u64) -> io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn put_str<W: Write + ?Sized>(w: &mut W, s: &[u8]) -> io::Result<()> {
    put_u64(w, s.len() as u64)?;
    w.write_all(s)?;
    let pad = (8 - s.len() % 8) % 8;
    w.write_all(&[0u8; 8][..pad])
}

/// Writes the NAR serialisation of `path` (not following a symlink at `path` itself) to `w`.
/// Directory entries are sorted byte-wise; a file is executable iff its owner-exec bit is set;
/// other file types are refused with the C++ daemon's message.
pub fn dump_path<W: Write + ?Sized>(path: &Path, w: &mut W) -> io::Result<()> {
    put_str(w, b"nix-archive-1")?;
    dump_node(path, w)
}

fn dump_node<W: Write + ?Sized>(path: &Path, w: &mut W) -> io::Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| context(e, "getting attributes of path", path))?;
    put_str(w, b"(")?;
    put_str(w, b"type")?;
    let ft = meta.file_type();
    if ft.is_file() {
        put_str(w, b"regular")?;
        if meta.permissions().mode() & 0o100 != 0 {
            put_str(w, b"executable")?;
            put_str(w, b"")?;
        }
        put_str(w, b"contents")?;
        let mut f = fs::File::open(path).map_err(|e| context(e, "opening file", path))?;
        let size = meta.len();
        put_u64(w, size)?;
        // Copy exactly `size` bytes: a file that changes size under us is an error, not a
        // corrupt archive.
        let copied = io::copy(&mut (&mut f).take(size), w)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file `{}' changed size while being archived", path.display()),
            ));
        }
        let pad = ((8 - size % 8) % 8) as usize;
        w.write_all(&[0u8; 8][..pad])?;
    } else if ft.is_symlink() {
        put_str(w, b"symlink")?;
        put_str(w, b"target")?;
        let target = fs::read_link(path).map_err(|e| context(e, "reading symbolic link", path))?;
        put_str(w, target.as_os_str().as_bytes())?;
    } else if ft.is_dir() {
        put_str(w, b"directory")?;
        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(|e| context(e, "opening directory", path))? {
            names.push(entry?.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            put_str(w, b"entry")?;
            put_str(w, b"(")?;
            put_str(w, b"name")?;
            put_str(w, name.as_bytes())?;
            put_str(w, b"node")?;
            dump_node(&path.join(&name), w)?;
            put_str(w, b")")?;
        }
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file `{}' has an unsupported type", path.display()),
        ));
    }
    put_str(w, b")")
}

fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} `{}': {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_file_layout() {
        let dir = std::env::temp_dir().join(format!("guix-client-nar-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        fs::write(&f, b"hello\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let mut out = Vec::new();
        dump_path(&f, &mut out).unwrap();
        let mut want = Vec::new();
        for s in [&b"nix-archive-1"[..], b"(", b"type", b"regular", b"contents"] {
            put_str(&mut want, s).unwrap();
        }
        put_str(&mut want, b"hello\n").unwrap();
        put_str(&mut want, b")").unwrap();
        assert_eq!(out, want);
        fs::remove_dir_all(&dir).unwrap();
    }
}

//! The "AddToStore of a big tree" workload and its floor.
//!
//! The tree (by default 4 directories × 64 files × 4 MiB = 1 GiB) is created once per bench
//! run under the host's temp directory, from a fast pseudo-random generator (so no file system
//! can store it sparsely or deduplicate it), and removed at exit. Both daemons add that same
//! tree, under a different name each repetition so that every repetition really writes it.
//!
//! The **floor** is what any daemon must at least do with those bytes: read every file,
//! SHA-256 it (`sha2` with its assembly back end, as the daemons use) and write it into a
//! fresh directory on the store's file system, streaming through one buffer. The ratios
//! add/floor say how close a daemon gets to the disk and the hash.
//!
//! Dirty pages of a previous measurement are written back (`sync`) before each timed run, so
//! one measurement does not pay for the writeback of another.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

/// Shape of the tree.
#[derive(Debug, Clone, Copy)]
pub struct TreeShape {
    pub dirs: usize,
    pub files_per_dir: usize,
    pub file_size: usize,
}

impl TreeShape {
    pub fn total_bytes(&self) -> u64 {
        (self.dirs * self.files_per_dir * self.file_size) as u64
    }

    /// "1 GiB tree, 256 × 4 MiB".
    pub fn describe(&self) -> String {
        let total = self.total_bytes() as f64;
        let size = if total >= (1u64 << 30) as f64 {
            format!("{:.0} GiB", total / (1u64 << 30) as f64)
        } else {
            format!("{:.0} MiB", total / (1u64 << 20) as f64)
        };
        format!("{size} tree, {} × {} MiB", self.dirs * self.files_per_dir, self.file_size >> 20)
    }
}

/// The tree on the host, removed when dropped.
pub struct Tree {
    root: PathBuf,
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

impl Tree {
    /// Creates the tree under `parent` (written back to disk before returning).
    pub fn create(parent: &Path, shape: TreeShape) -> io::Result<Tree> {
        let root = parent.join(format!("guix-bench-tree.{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir(&root)?;
        let tree = Tree { root };
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut buf = vec![0u8; 1 << 20];
        for d in 0..shape.dirs {
            let dir = tree.root.join(format!("dir-{d:02}"));
            fs::create_dir(&dir)?;
            for f in 0..shape.files_per_dir {
                let mut out = fs::File::create(dir.join(format!("file-{f:03}.bin")))?;
                let mut left = shape.file_size;
                while left > 0 {
                    let n = left.min(buf.len());
                    rng.fill(&mut buf[..n]);
                    out.write_all(&buf[..n])?;
                    left -= n;
                }
            }
        }
        sync();
        Ok(tree)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// xorshift64*: fast, good enough to defeat compression and deduplication.
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes every dirty page back, so that the next timed run starts from a clean page cache.
pub fn sync() {
    nix::unistd::sync();
}

/// The floor: reads every file of `src` (in name order), SHA-256s all the bytes and writes
/// them into the same layout under `dest` (created; must not exist). Returns the seconds
/// taken and the digest (so the work cannot be optimised away).
pub fn hash_and_copy(src: &Path, dest: &Path) -> io::Result<(f64, [u8; 32])> {
    let start = Instant::now();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    copy_dir(src, dest, &mut hasher, &mut buf)?;
    let digest: [u8; 32] = hasher.finalize().into();
    Ok((start.elapsed().as_secs_f64(), digest))
}

fn copy_dir(src: &Path, dest: &Path, hasher: &mut Sha256, buf: &mut [u8]) -> io::Result<()> {
    fs::create_dir(dest)?;
    let mut entries: Vec<_> = fs::read_dir(src)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let (from, to) = (e.path(), dest.join(e.file_name()));
        if e.file_type()?.is_dir() {
            copy_dir(&from, &to, hasher, buf)?;
        } else {
            let mut input = fs::File::open(&from)?;
            let mut output = fs::File::create(&to)?;
            loop {
                let n = input.read(buf)?;
                if n == 0 {
                    break;
                }
                let chunk = &buf[..n];
                hasher.update(chunk);
                output.write_all(chunk)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_copies_and_hashes_the_tree() {
        let tmp = std::env::temp_dir().join(format!("guix-bench-test.{}", std::process::id()));
        fs::create_dir_all(&tmp).unwrap();
        let tree = Tree::create(&tmp, TreeShape { dirs: 2, files_per_dir: 3, file_size: 1 << 20 }).unwrap();
        let dest = tmp.join("copy");
        let (_, digest) = hash_and_copy(tree.root(), &dest).unwrap();
        let mut all = Vec::new();
        for d in ["dir-00", "dir-01"] {
            for f in ["file-000.bin", "file-001.bin", "file-002.bin"] {
                let a = fs::read(tree.root().join(d).join(f)).unwrap();
                assert_eq!(a, fs::read(dest.join(d).join(f)).unwrap());
                all.extend(a);
            }
        }
        let want: [u8; 32] = Sha256::digest(&all).into();
        assert_eq!(digest, want);
        drop(tree);
        fs::remove_dir_all(&tmp).unwrap();
    }
}

//! AddToStore (7) and AddTextToStore (8): new items written into scratch space and committed
//! through store-db.
//!
//! AddToStore's NAR arrives inline on the socket. It is unpacked straight into a scratch item
//! by the shared NAR reader running on a blocking thread over the bridged socket
//! ([`crate::bridge`]): one pass validates it, restores it, computes its SHA-256 (the
//! narHash), the hash the client asked for (of the NAR if recursive, of the file contents if
//! flat) — no spool, no second read. Parse errors close the connection (the C++ daemon parses
//! before `startWork`); "regular file expected" and "unknown hash type" come after the whole
//! NAR was read and keep it, as in C++ — but nothing of such a NAR is unpacked: it is refused as
//! soon as its root node (or the hash name) shows it, and the rest is only parsed through.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use guix_formats::hash::Hasher;
use guix_formats::nar::{self, Event, NarError, NarSummary, RegularNarHasher, Restorer, Visitor};
use guix_formats::worker::{read_request_body, Opcode, Reply, Request};
use guix_formats::{Hash, HashAlgo, StorePath};
use guix_ipc::config::DaemonConfig;
use guix_ipc::store_db::{ItemSource, NewItem, MAX_INLINE_TEXT};
use guix_store::files::write_canonical_text;
use guix_store::optimise::{optimise_path_with, FileNarHashes, KnownHashes, OptimiseStats, DEDUPLICATION_MIN_SIZE};

use crate::backend::StoreBackend;
use crate::bridge::SyncBridge;
use crate::conn::{Conn, Stream};
use crate::error::{nar_failure, Failure};
use guix_store::scratch::canonicalise;

/// The kind of a NAR's root node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootKind {
    Regular,
    Directory,
    Symlink,
}

/// Restores the NAR, noting the root's kind and hashing a root regular file's contents.
///
/// A flat add (`contents` set) keeps only the contents of a root regular file, as the C++
/// daemon does (`RetrieveRegularNARSink`, then `writeFile`): the item is a non-executable
/// file whatever the client's NAR said, and `flat_nar` hashes that file's NAR, which is what
/// is registered.
///
/// `discard`: the add is refused whatever follows (unknown hash type, or a flat add whose root
/// is not a regular file): the NAR is only validated, nothing is written.
struct AddVisitor {
    restorer: Restorer,
    discard: bool,
    root: Option<RootKind>,
    contents: Option<Hasher>,
    flat_nar: Option<RegularNarHasher>,
}

impl Visitor for AddVisitor {
    fn event(&mut self, mut event: Event<'_>) -> Result<(), NarError> {
        if self.root.is_none() {
            self.root = Some(match event {
                Event::Regular { .. } => RootKind::Regular,
                Event::Symlink { .. } => RootKind::Symlink,
                _ => RootKind::Directory,
            });
            if let (Some(_), Event::Regular { executable, size }) = (&self.contents, &mut event) {
                *executable = false;
                self.flat_nar = Some(RegularNarHasher::new(false, *size));
            }
            // A flat add of a directory or symlink: "regular file expected", nothing unpacked.
            self.discard |= self.contents.is_some() && self.root != Some(RootKind::Regular);
        }
        if self.discard {
            return Ok(());
        }
        self.restorer.event(event)
    }

    fn contents(&mut self, chunk: &[u8]) -> Result<(), NarError> {
        if self.root == Some(RootKind::Regular) {
            if let Some(h) = self.contents.as_mut() {
                h.update(chunk);
            }
            if let Some(h) = self.flat_nar.as_mut() {
                h.update(chunk);
            }
        }
        if self.discard {
            return Ok(());
        }
        self.restorer.contents(chunk)
    }

    fn contents_done(&mut self) -> Result<(), NarError> {
        if self.discard {
            return Ok(());
        }
        self.restorer.contents_done()
    }
}

/// A `Write` that only hashes (the NAR with the client's algorithm, when it is not SHA-256).
struct HashSink(Option<Hasher>);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(h) = self.0.as_mut() {
            h.update(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Received {
    summary: NarSummary,
    /// NAR hashes of the item's files big enough to be deduplicated, from the restore.
    hashes: KnownHashes,
    root: Option<RootKind>,
    contents_hash: Option<Hash>,
    nar_hash_algo: Option<Hash>,
}

impl<S: Stream, B: StoreBackend> Conn<S, B> {
    pub(crate) async fn add_to_store(&mut self) -> Result<Reply, Failure> {
        let (store, version, limits) = (self.shared.store.clone(), self.version, self.shared.limits);
        let req = read_request_body(self.stream()?, Opcode::AddToStore, &store, version, &limits).await?;
        let Request::AddToStore { name, fixed, recursive, hash_algo } = req else {
            return Err(Failure::fatal("AddToStore request expected"));
        };
        // The old "compat hack": fixed != 1 forces recursive SHA-256.
        let (recursive, algo_name) = if fixed { (recursive, hash_algo) } else { (true, "sha256".to_owned()) };
        let algo = HashAlgo::from_name(&algo_name);
        let item = self
            .shared
            .scratch
            .allocate(self.id)
            .map_err(|e| Failure::Fatal(format!("creating scratch space: {e}")))?;
        let dest = item.path().to_owned();
        let nar_limits = self.shared.nar_limits.clone();
        let received = self
            .blocking(move |s, h| -> Result<Received, NarError> {
                let mut input = SyncBridge::new(s, h);
                let flat_algo = if recursive { None } else { algo };
                let mut visitor = FileNarHashes::new(AddVisitor {
                    restorer: Restorer::new(&dest),
                    discard: algo.is_none(),
                    root: None,
                    contents: flat_algo.map(Hasher::new),
                    flat_nar: None,
                });
                let nar_algo = algo.filter(|a| recursive && *a != HashAlgo::Sha256);
                let mut tee = HashSink(nar_algo.map(Hasher::new));
                let summary = nar::read_with(&mut input, &nar_limits, &mut visitor, &mut tee)?;
                let (visitor, hashes) = visitor.into_parts();
                // Canonical (mtime 1) while still on this blocking thread.
                if !visitor.discard {
                    canonicalise(&dest).map_err(|e| NarError::Io {
                        context: format!("canonicalising `{}'", dest.display()),
                        source: e,
                    })?;
                }
                // A flat item is registered with the NAR of what was stored.
                let summary = match visitor.flat_nar {
                    Some(flat) => flat.finish()?,
                    None => summary,
                };
                Ok(Received {
                    summary,
                    hashes,
                    root: visitor.root,
                    contents_hash: visitor.contents.map(Hasher::finish),
                    nar_hash_algo: tee.0.map(Hasher::finish),
                })
            })
            .await?
            .map_err(nar_failure)?;
        // startWork: from here on errors keep the connection.
        if !recursive && received.root != Some(RootKind::Regular) {
            return Err(Failure::op("regular file expected"));
        }
        let Some(algo) = algo else {
            return Err(Failure::op("unknown hash type"));
        };
        let hash = if !recursive {
            received.contents_hash
        } else if algo == HashAlgo::Sha256 {
            Some(received.summary.nar_hash)
        } else {
            received.nar_hash_algo
        }
        .ok_or_else(|| Failure::op("regular file expected"))?;
        let path = store.make_fixed_output_path(recursive, &hash, &name).map_err(|e| Failure::Op(e.to_string()))?;
        if self.rooted_and_valid(&path).await? {
            return Ok(Reply::Path(path));
        }
        let mut known = received.hashes;
        if received.root == Some(RootKind::Regular) {
            // A root file's NAR is the item's.
            known.insert(PathBuf::new(), received.summary.nar_hash);
        }
        // Nothing to do (not even a thread hop) without a file big enough: a root file's NAR
        // is longer than its contents, so this lets through all that are.
        let big = !known.is_empty() && (received.summary.nar_size >= DEDUPLICATION_MIN_SIZE);
        if big && deduplicates_here(&self.shared.config) {
            let (config, dest) = (self.shared.config.clone(), item.path().to_owned());
            let msgs = tokio::task::spawn_blocking(move || deduplicate(&config, &dest, &known))
                .await
                .map_err(|e| Failure::Op(e.to_string()))??;
            self.log_messages(msgs).await?;
        }
        let source = ItemSource::Scratch(item.name().to_owned());
        let reply = self.register(source, path, received.summary, BTreeSet::new()).await?;
        item.handed_over();
        Ok(reply)
    }

    pub(crate) async fn add_text(
        &mut self,
        name: String,
        contents: Vec<u8>,
        references: BTreeSet<StorePath>,
    ) -> Result<Reply, Failure> {
        let store = self.shared.store.clone();
        let path = store.make_text_path(&name, &contents, &references).map_err(|e| Failure::Op(e.to_string()))?;
        // No validity or reference check here: store-db does both in the same step (a valid
        // path is only rooted; an unknown reference fails with `queryValidPathId`'s message,
        // after the `.drv` check, in the C++ daemon's order). Checking here too cost two read
        // transactions per addition, each re-reading its pages after store-db's last commit.
        if contents.len() <= MAX_INLINE_TEXT {
            // store-db writes it at its final name: no scratch file, no rename.
            let summary = nar::summary_of_regular(&contents, false);
            return self.register(ItemSource::Text(contents), path, summary, references).await;
        }
        if self.rooted_and_valid(&path).await? {
            return Ok(Reply::Path(path));
        }
        let item =
            self.shared.scratch.allocate(self.id).map_err(|e| Failure::Op(format!("creating scratch space: {e}")))?;
        let dest = item.path().to_owned();
        let config = self.shared.config.clone();
        let (summary, msgs) = tokio::task::spawn_blocking(move || {
            let summary = write_text(&dest, &contents).map_err(|e| Failure::Op(e.to_string()))?;
            // Larger than the inline limit, so always big enough to be deduplicated.
            let msgs = match deduplicates_here(&config) {
                true => deduplicate(&config, &dest, &[(PathBuf::new(), summary.nar_hash)].into())?,
                false => Vec::new(),
            };
            Ok::<_, Failure>((summary, msgs))
        })
        .await
        .map_err(|e| Failure::Op(e.to_string()))??;
        self.log_messages(msgs).await?;
        let reply = self.register(ItemSource::Scratch(item.name().to_owned()), path, summary, references).await?;
        item.handed_over();
        Ok(reply)
    }

    /// C++ `addTempRoot` then `isValidPath`, with one store-db round trip at most: a path
    /// found invalid gets its temp root from the `AddItems` that follows (store-db adds the
    /// roots of what it registers, or finds valid, in the same step); a path found valid is
    /// rooted, then checked again, so it cannot have gone in between.
    async fn rooted_and_valid(&mut self, path: &StorePath) -> Result<bool, Failure> {
        if !self.shared.backend.is_valid(path)? {
            return Ok(false);
        }
        self.shared.backend.add_temp_roots(self.id, vec![path.clone()]).await?;
        self.shared.backend.is_valid(path)
    }

    /// Hands a finished, canonical item to store-db (`AddItems`: put in place and registered,
    /// or dropped when the path became valid meanwhile; rooted either way). A scratch item
    /// is store-db's once this succeeds.
    async fn register(
        &mut self,
        source: ItemSource,
        path: StorePath,
        summary: NarSummary,
        references: BTreeSet<StorePath>,
    ) -> Result<Reply, Failure> {
        let new = NewItem {
            source,
            path: path.clone(),
            nar_hash: summary.nar_hash,
            nar_size: summary.nar_size,
            references: references.into_iter().collect(),
            deriver: None,
        };
        self.shared.backend.add_items(self.id, vec![new]).await?;
        Ok(Reply::Path(path))
    }
}

/// Whether socket-front deduplicates its items itself (`auto-optimise-store`): not when it
/// runs as its own user, which cannot write `.links` and the store; store-db deduplicates
/// those items when it takes them over (hashing their files itself).
pub(crate) fn deduplicates_here(config: &DaemonConfig) -> bool {
    config.auto_optimise_store && !crate::unprivileged(config)
}

/// `optimisePath` of a scratch item (C++ `auto-optimise-store`, checked by the caller), on a
/// blocking thread: its big files are linked with their `<store>/.links` entries before
/// store-db renames it into the store (hard links survive the rename: same file system).
/// `known`: NAR hashes already computed, by path relative to the item. Returns the messages
/// for the client ([`Conn::log_messages`]).
pub(crate) fn deduplicate(
    config: &DaemonConfig,
    dir: &Path,
    known: &KnownHashes,
) -> Result<Vec<(u32, String)>, Failure> {
    let store = &config.paths.store_dir;
    let mut msgs = Vec::new();
    let mut stats = OptimiseStats::default();
    optimise_path_with(store, &store.join(".links"), dir, known, &mut stats, &mut |level, msg| msgs.push((level, msg)))
        .map_err(|e| Failure::Op(e.to_string()))?;
    Ok(msgs)
}

/// Writes a text item into scratch space, already canonical (0444, mtime 1), and returns the
/// hash and size of its NAR, computed from the contents in memory (no second read).
fn write_text(dest: &Path, contents: &[u8]) -> Result<NarSummary, NarError> {
    write_canonical_text(dest, contents)
        .map_err(|e| NarError::Io { context: format!("writing file `{}'", dest.display()), source: e })?;
    Ok(nar::summary_of_regular(contents, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `nar` as a flat add (`contents` set) would, into `dest`.
    fn flat_add(nar: &[u8], dest: &Path) -> AddVisitor {
        let mut v = AddVisitor {
            restorer: Restorer::new(dest),
            discard: false,
            root: None,
            contents: Some(Hasher::new(HashAlgo::Sha256)),
            flat_nar: None,
        };
        nar::read_with(nar, &nar::Limits::default(), &mut v, &mut io::sink()).unwrap();
        v
    }

    #[test]
    fn a_flat_add_of_a_directory_unpacks_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        for i in 0..10 {
            std::fs::write(src.join(format!("f{i}")), b"x").unwrap();
        }
        let mut dir_nar = Vec::new();
        nar::dump_path(&src, &mut dir_nar).unwrap();
        let dest = tmp.path().join("dest");
        let v = flat_add(&dir_nar, &dest);
        assert_eq!((v.root, v.discard), (Some(RootKind::Directory), true));
        assert!(!dest.exists(), "nothing of the directory was written");
        // A regular file is restored.
        let mut file_nar = Vec::new();
        nar::dump_path(&src.join("f0"), &mut file_nar).unwrap();
        let v = flat_add(&file_nar, &dest);
        assert_eq!((v.root, v.discard), (Some(RootKind::Regular), false));
        assert_eq!(std::fs::read(&dest).unwrap(), b"x");
    }
}

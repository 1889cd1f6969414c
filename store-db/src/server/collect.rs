//! The deciding half of a garbage collection: "delete these entries if they are still dead",
//! run by the writer ([`super::writer::Job::DeleteDead`]).
//!
//! The gc computes what is live from its roots and a snapshot of the database, and sends the
//! dead store entries in batches, everything that keeps an entry alive before it or in the
//! same batch ([`guix_ipc::store_db::DeadEntry`]). Its snapshot may be stale; this module
//! decides against the present, with the part's names marked from the first check to the
//! last rename ([`TempRoots::deletion`]: an addition of a temp root for one of them is
//! answered only after the part), and running in the writer (which every registration goes
//! through), so no root and no registration can come in between:
//! 1. an entry is refused if it is a temp root, or became one since the collection began, or
//!    is `<P>.lock` / `<P>.chroot` of such a `P`; if its validity is not the one the gc saw
//!    (a path registered since the gc's snapshot is not known to be dead); or if it is one of
//!    store-db's own names;
//! 2. a valid entry is refused if something that keeps it alive — a valid referrer other
//!    than itself; with `keep.derivations`, a valid output whose recorded deriver it is; with
//!    `keep.outputs`, a valid deriver of it — is valid and not accepted in this batch; this is
//!    repeated until nothing changes (an entry that keeps a refused one's referents alive is
//!    refused in turn);
//! 3. the accepted entries, in the batch's order, are counted as the C++ collector counts them
//!    until `max_freed` is exceeded (step 2 again on what is left);
//! 4. the valid ones are invalidated in one transaction, then every accepted directory is
//!    renamed into `<store>/trash` and every other entry unlinked (as the C++ collector does).
//!
//! Why a path that is live now is never deleted: it is live because some root reaches it.
//! A root that existed when the collection began was in the gc's roots, so the gc did not
//! send the path (it cannot have been dead in the snapshot and live now through an old root,
//! since the edges of a valid path do not change while it stays valid — references are set at
//! registration, derivation outputs with the `.drv`, derivers with the output). A temp root
//! added since is refused by step 1, and everything it reaches keeps a valid keeper that is
//! not deleted (step 2), down the whole closure. A new GC root symlink is made by a client
//! that holds the path as a temp root first (the Guix client does, as for the C++ daemon). A
//! path registered after the snapshot is refused by step 1's validity check, and a path it
//! refers to keeps it as a valid referrer. The files of a valid path move only after the
//! transaction that invalidates it commits, so a kill at any moment leaves at worst an invalid
//! entry at its name (the next collection deletes it) or in the trash.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use guix_formats::StorePath;
use guix_ipc::store_db::{CollectionId, DeadBatch, DeleteOutcome, Deleted, KeptBecause, DEAD_PART_TARGET};
use guix_store::files::delete_tree_counted;
use guix_store::scratch::SCRATCH_DIR_NAME;
use guix_store::strerror;

use super::roots::TempRoots;
use super::writer::StoreLayout;
use crate::DbWriter;

/// The name of the trash directory in the store (the C++ collector's).
pub const TRASH_DIR_NAME: &str = "trash";

/// Why a batch was not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The collection is not (or no longer) known here: the gc must begin again.
    UnknownCollection(CollectionId),
    /// A database or file-system failure, before anything was invalidated.
    Failed(String),
}

impl From<String> for BatchError {
    fn from(message: String) -> BatchError {
        BatchError::Failed(message)
    }
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::UnknownCollection(id) => {
                write!(f, "unknown garbage collection {id} (store-db restarted, or the collection expired)")
            }
            BatchError::Failed(m) => f.write_str(m),
        }
    }
}

/// An entry that passed step 1.
struct Candidate {
    name: String,
    /// Set when it is a valid path: the path and its row id.
    valid: Option<StorePath>,
    id: Option<i64>,
    /// `None`: nothing at its name (a valid path's row goes all the same).
    md: Option<std::fs::Metadata>,
}

/// Names store-db and the collector never delete.
fn reserved(name: &str) -> bool {
    name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name == ".links"
        || name == TRASH_DIR_NAME
        || name == SCRATCH_DIR_NAME
}

/// A [`DeadBatch`] being run in parts by the writer ([`super::writer::Job::DeleteDead`]):
/// each [`DeadRun::step`] decides and deletes the next runs of whole groups (about
/// [`DEAD_PART_TARGET`] of work, as many entries as the writer's [`PartSize`] says) as a batch
/// of its own, so that the writer can run the requests waiting for it before the next part.
///
/// Cutting between groups changes nothing of the outcome: every entry comes after what keeps
/// it alive, or in its group, so a keeper in an earlier part is invalid by now (deleted) or
/// was refused there (and then refuses this entry as a valid keeper outside the part, as it
/// would inside one batch); the bytes counted so far carry over to `max_freed`.
pub struct DeadRun {
    batch: DeadBatch,
    /// The groups' sizes, in order; `next_group` is the first not run yet.
    groups: Vec<usize>,
    next_group: usize,
    /// The entries not run yet (the batch's, taken out as their parts run).
    entries: std::vec::IntoIter<guix_ipc::store_db::DeadEntry>,
    outcome: DeleteOutcome,
    freed: u64,
}

/// What [`DeadRun::step`] left.
pub enum Step {
    /// More parts to run.
    More(DeadRun),
    /// The batch is over: the reply.
    Done(Result<DeleteOutcome, BatchError>),
}

/// The nice value a part runs at (the gc process's own). Measured with `guix-bench --scenario
/// gc` (2 cores, same run twice each): at nice 0 the collection took 0.45–0.50x the C++ time,
/// with QueryPathInfo's p99 3.7x its idle value and AddTextToStore's 6–12x; at nice 10
/// 0.56–0.57x, with 0.7–1.5x and 2.3–3.3x.
pub const PART_NICE: i32 = 10;

/// The part running now, at [`PART_NICE`]: a request that comes to wait for it (queued for the
/// writer, or adding a temp root for a name the part decides) boosts it back to normal
/// priority.
pub static PART: guix_store::sched::Lowered = guix_store::sched::Lowered::new();

/// How many entries a part of a collection takes, learned from the parts before (kept by the
/// writer from one batch to the next): it doubles, up to [`PartSize::MAX`], after a part that
/// took under a quarter of [`DEAD_PART_TARGET`], and halves after one that took longer. Each
/// batch starting again at a fixed size made its first parts take three times the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSize(usize);

impl PartSize {
    const FIRST: usize = 4;
    const MAX: usize = 4096;

    /// The entries of the next part (a whole group at least).
    pub fn entries(self) -> usize {
        self.0
    }

    /// Learns from a part that took `took`.
    pub fn took(&mut self, took: std::time::Duration) {
        if took > DEAD_PART_TARGET {
            self.0 = (self.0 / 2).max(1);
        } else if took < DEAD_PART_TARGET / 4 {
            self.0 = (self.0 * 2).min(PartSize::MAX);
        }
    }
}

impl Default for PartSize {
    fn default() -> Self {
        PartSize(PartSize::FIRST)
    }
}

impl DeadRun {
    /// Checks the batch's groups (they must add up to its entries; none are given: one group
    /// each, the batch of a gc that does not cut them).
    pub fn new(mut batch: DeadBatch) -> Result<DeadRun, BatchError> {
        let groups: Vec<usize> = if batch.groups.is_empty() {
            vec![1; batch.entries.len()]
        } else {
            batch.groups.iter().map(|&n| n as usize).collect()
        };
        if groups.contains(&0) || groups.iter().sum::<usize>() != batch.entries.len() {
            return Err(BatchError::Failed(format!(
                "malformed batch: {} groups adding up to {} entries, not {}",
                groups.len(),
                groups.iter().sum::<usize>(),
                batch.entries.len()
            )));
        }
        let entries = std::mem::take(&mut batch.entries).into_iter();
        let freed = batch.freed_before;
        Ok(DeadRun {
            batch,
            groups,
            next_group: 0,
            entries,
            outcome: DeleteOutcome { deleted: Vec::new(), kept: Vec::new(), limit_reached: false, stopped: None },
            freed,
        })
    }

    /// Runs the next part, of about `size` entries, and updates `size` with what it took.
    pub fn step(mut self, db: &mut DbWriter, roots: &TempRoots, layout: &StoreLayout, size: &mut PartSize) -> Step {
        let mut n = 0;
        while self.next_group < self.groups.len() && (n == 0 || n + self.groups[self.next_group] <= size.entries()) {
            n += self.groups[self.next_group];
            self.next_group += 1;
        }
        let part = DeadBatch {
            collection: self.batch.collection,
            entries: self.entries.by_ref().take(n).collect(),
            groups: Vec::new(),
            keep: self.batch.keep,
            freed_before: self.freed,
            max_freed: self.batch.max_freed,
            link_threshold: self.batch.link_threshold,
        };
        let nothing_yet = self.outcome.deleted.is_empty() && self.outcome.kept.is_empty();
        let started = std::time::Instant::now();
        let res = delete_dead(db, roots, layout, part);
        let took = started.elapsed();
        size.took(took);
        match res {
            Ok(o) => {
                self.freed = o.deleted.iter().fold(self.freed, |f, d| f.saturating_add(freed_by(d)));
                self.outcome.deleted.extend(o.deleted);
                self.outcome.kept.extend(o.kept);
                if o.limit_reached {
                    self.outcome.limit_reached = true;
                    self.outcome.kept.extend(self.entries.by_ref().map(|e| (e.name, KeptBecause::NotReached)));
                    return Step::Done(Ok(self.outcome));
                }
            }
            // Nothing of this part was invalidated; earlier parts were.
            Err(e) if nothing_yet => return Step::Done(Err(e)),
            Err(e) => {
                self.outcome.stopped = Some(e.to_string());
                return Step::Done(Ok(self.outcome));
            }
        }
        if self.next_group == self.groups.len() {
            Step::Done(Ok(self.outcome))
        } else {
            Step::More(self)
        }
    }
}

/// The bytes a deletion adds to the collection's count (the gc's `freed + invalidated`): a
/// directory deleted in place counts what it freed, anything else what it was accounted.
pub fn freed_by(d: &Deleted) -> u64 {
    if d.trashed_as.is_none() && d.is_dir {
        d.freed_in_place
    } else {
        d.accounted
    }
}

/// The paths whose temp roots keep the entry `name`: itself if it is a store path name, and
/// the owner `P` of `<P>.lock` and `<P>.chroot` (which parse as store paths too).
fn marked_names(name: &str) -> impl Iterator<Item = StorePath> {
    let path = StorePath::from_base_name(name).ok();
    let owner = name
        .strip_suffix(".lock")
        .or_else(|| name.strip_suffix(".chroot"))
        .and_then(|base| StorePath::from_base_name(base).ok());
    path.into_iter().chain(owner)
}

/// Runs one batch (see the module docs).
pub fn delete_dead(
    db: &mut DbWriter,
    roots: &TempRoots,
    layout: &StoreLayout,
    batch: DeadBatch,
) -> Result<DeleteOutcome, BatchError> {
    let mut guard = roots.deletion(batch.entries.iter().flat_map(|e| marked_names(&e.name)));
    guard.touch(batch.collection).map_err(|_| BatchError::UnknownCollection(batch.collection))?;
    // Steps 1 to 3 and the invalidation share one transaction; the files move once it has
    // committed.
    let link_threshold = batch.link_threshold;
    let held = &guard;
    let Decided { cands, accepted, accounted, mut kept, limit_reached } =
        db.in_one_transaction(move |db| decide(db, held, layout, batch))?;

    // Step 4, the files.
    let trash = layout.store_path.join(TRASH_DIR_NAME);
    let mut deleted = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        if !accepted[i] {
            continue;
        }
        let Some(md) = &c.md else {
            kept.push((c.name.clone(), KeptBecause::Gone));
            continue;
        };
        let from = layout.store_path.join(&c.name);
        if !md.is_dir() {
            // A file or symlink is unlinked right away, as C++ does: one system call, and its
            // bytes are freed (and counted) in the order of deletion. What it frees is what
            // step 3 counted: its links were counted then, and only the writer, which is
            // running this, adds or removes links of store files.
            let freed_in_place = accounted[i];
            match std::fs::remove_file(&from) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(format!("cannot unlink `{}': {}", from.display(), strerror(&e)).into());
                }
                _ => {}
            }
            deleted.push(Deleted {
                name: c.name.clone(),
                trashed_as: None,
                accounted: accounted[i],
                is_dir: false,
                freed_in_place,
            });
            continue;
        }
        let (trashed_as, freed_in_place) = match move_to_trash(&from, &trash, &c.name, md) {
            Ok(name) => (Some(name), 0),
            Err(e) => {
                // C++: "note: can't create move": delete in place (rare: the trash directory
                // cannot be made, or is another file system).
                eprintln!(
                    "guix-store-db: cannot move `{}' to the trash ({}); deleting it in place",
                    from.display(),
                    strerror(&e)
                );
                let n = delete_tree_counted(&from, link_threshold)
                    .map_err(|e| format!("deleting `{}': {}", from.display(), strerror(&e)))?;
                (None, n)
            }
        };
        deleted.push(Deleted {
            name: c.name.clone(),
            trashed_as,
            accounted: accounted[i],
            is_dir: md.is_dir(),
            freed_in_place,
        });
    }
    drop(guard);
    Ok(DeleteOutcome { deleted, kept, limit_reached, stopped: None })
}

/// What steps 1 to 3 decided of a batch, its valid accepted paths invalidated.
struct Decided {
    cands: Vec<Candidate>,
    accepted: Vec<bool>,
    /// What each candidate counts ([`Deleted::accounted`]).
    accounted: Vec<u64>,
    kept: Vec<(String, KeptBecause)>,
    limit_reached: bool,
}

impl From<crate::Error> for BatchError {
    fn from(e: crate::Error) -> BatchError {
        BatchError::Failed(e.to_string())
    }
}

/// Steps 1 to 3 and the invalidation of step 4, in the writer's transaction
/// ([`DbWriter::in_one_transaction`]), the part's names marked.
fn decide(
    db: &mut DbWriter,
    guard: &super::roots::DeletionGuard<'_>,
    layout: &StoreLayout,
    batch: DeadBatch,
) -> Result<Decided, BatchError> {
    let err = |e: crate::Error| e.to_string();
    let mut kept: Vec<(String, KeptBecause)> = Vec::new();
    let mut cands: Vec<Candidate> = Vec::with_capacity(batch.entries.len());
    let mut seen = HashSet::new();
    let named: HashSet<StorePath> =
        batch.entries.iter().filter_map(|e| StorePath::from_base_name(&e.name).ok()).collect();
    for e in batch.entries {
        if reserved(&e.name) {
            kept.push((e.name, KeptBecause::Reserved));
            continue;
        }
        if !seen.insert(e.name.clone()) {
            continue;
        }
        let path = StorePath::from_base_name(&e.name).ok();
        let id = match &path {
            Some(p) => db.path_id(p).map_err(err)?,
            None => None,
        };
        let valid = id.is_some();
        if valid != e.valid {
            kept.push((e.name, KeptBecause::ValidityChanged));
            continue;
        }
        let mut rooted = false;
        for p in marked_names(&e.name) {
            rooted |=
                guard.rooted(batch.collection, &p).map_err(|_| BatchError::UnknownCollection(batch.collection))?;
        }
        if rooted {
            kept.push((e.name, KeptBecause::TempRoot));
            continue;
        }
        let md = match std::fs::symlink_metadata(layout.store_path.join(&e.name)) {
            Ok(md) => Some(md),
            Err(x) if x.kind() == io::ErrorKind::NotFound => None,
            Err(x) => {
                return Err(format!(
                    "getting status of `{}': {}",
                    layout.store_path.join(&e.name).display(),
                    strerror(&x)
                )
                .into())
            }
        };
        if md.is_none() && !valid {
            kept.push((e.name, KeptBecause::Gone));
            continue;
        }
        cands.push(Candidate { name: e.name, valid: valid.then_some(path).flatten(), id, md });
    }

    // Step 2: what keeps each valid candidate alive.
    let mut keepers: HashMap<StorePath, Vec<StorePath>> = HashMap::new();
    for c in &cands {
        let Some(p) = &c.valid else { continue };
        let mut k: Vec<StorePath> = db.query_referrers(p).map_err(err)?.into_iter().filter(|r| r != p).collect();
        if batch.keep.derivations && p.is_derivation() {
            for o in db.query_derivation_outputs(p).map_err(err)? {
                if &o != p && db.is_valid(&o).map_err(err)? && db.query_deriver(&o).map_err(err)?.as_ref() == Some(p) {
                    k.push(o);
                }
            }
        }
        if batch.keep.outputs {
            k.extend(db.query_valid_derivers(p).map_err(err)?.into_iter().filter(|d| d != p));
        }
        keepers.insert(p.clone(), k);
    }
    let in_batch = named;
    let mut accepted: Vec<bool> = vec![true; cands.len()];
    settle(&cands, &keepers, &in_batch, &mut accepted, &mut kept, KeptBecause::KeepsKept);

    // Step 3: the C++ accounting, up to `max_freed`.
    let mut freed = batch.freed_before;
    let mut accounted = vec![0u64; cands.len()];
    // Files are unlinked one after the other (step 4), so a later entry sharing an inode with
    // an earlier one of the batch sees one link less, as it would in the C++ collector.
    let mut unlinked_before: HashMap<(u64, u64), u64> = HashMap::new();
    let mut limit_reached = false;
    for (i, c) in cands.iter().enumerate() {
        if !accepted[i] {
            continue;
        }
        if limit_reached {
            accepted[i] = false;
            kept.push((c.name.clone(), KeptBecause::NotReached));
            continue;
        }
        let Some(md) = &c.md else { continue };
        accounted[i] = if md.is_dir() {
            match &c.valid {
                Some(p) => db.try_query_path_info(p).map_err(err)?.and_then(|i| i.nar_size).unwrap_or(0),
                None => 0,
            }
        } else {
            let earlier = unlinked_before.entry((md.dev(), md.ino())).or_insert(0);
            let links = md.nlink().saturating_sub(*earlier);
            *earlier += 1;
            if links <= batch.link_threshold {
                md.size()
            } else {
                0
            }
        };
        freed = freed.saturating_add(accounted[i]);
        if freed > batch.max_freed {
            limit_reached = true;
        }
    }
    if limit_reached {
        settle(&cands, &keepers, &in_batch, &mut accepted, &mut kept, KeptBecause::NotReached);
    }

    // Step 4: invalidate (referrers first); the caller moves the files once this commits.
    // Step 2 found every valid referrer of these paths among them: the foreign key on
    // `Refs.reference` would refuse the deletion otherwise (and the transaction roll back).
    let doomed: Vec<i64> = cands.iter().zip(&accepted).filter(|(_, a)| **a).filter_map(|(c, _)| c.id).collect();
    db.invalidate_ids(&doomed).map_err(err)?;
    Ok(Decided { cands, accepted, accounted, kept, limit_reached })
}

/// Step 2's fixpoint: refuses every accepted valid candidate with a keeper that is valid and
/// not accepted (`because` when the keeper was in the batch, else `LiveReferrer`).
fn settle(
    cands: &[Candidate],
    keepers: &HashMap<StorePath, Vec<StorePath>>,
    in_batch: &HashSet<StorePath>,
    accepted: &mut [bool],
    kept: &mut Vec<(String, KeptBecause)>,
    because: KeptBecause,
) {
    let index: HashMap<&StorePath, usize> =
        cands.iter().enumerate().filter_map(|(i, c)| c.valid.as_ref().map(|p| (p, i))).collect();
    loop {
        let mut changed = false;
        for (i, c) in cands.iter().enumerate() {
            let Some(p) = &c.valid else { continue };
            if !accepted[i] {
                continue;
            }
            let blocker = keepers.get(p).into_iter().flatten().find(|k| match index.get(k) {
                Some(&j) => !accepted[j],
                None => true,
            });
            if let Some(k) = blocker {
                accepted[i] = false;
                changed = true;
                let why = if in_batch.contains(k) { because.clone() } else { KeptBecause::LiveReferrer(k.to_string()) };
                kept.push((c.name.clone(), why));
            }
        }
        if !changed {
            return;
        }
    }
}

/// Renames `from` to `<trash>/<name>` (or `<name>-N` if that is taken), making a directory
/// writable first so that the gc can empty it; returns the name under the trash.
fn move_to_trash(from: &Path, trash: &Path, name: &str, md: &std::fs::Metadata) -> io::Result<String> {
    if md.is_dir() && md.mode() & 0o200 == 0 {
        std::fs::set_permissions(from, std::fs::Permissions::from_mode((md.mode() | 0o200) & 0o7777))?;
    }
    match std::fs::create_dir(trash) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    // Only store-db puts things in the trash (and only the writer), so a free name stays free
    // until the rename.
    let mut target = name.to_owned();
    for n in 1..=1000u32 {
        if std::fs::symlink_metadata(trash.join(&target)).is_err() {
            std::fs::rename(from, trash.join(&target))?;
            return Ok(target);
        }
        target = format!("{name}-{n}");
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free name in the trash"))
}

#[cfg(test)]
mod tests;

//! GC roots that store-db keeps: the temp roots of the callers' connections (in memory), the
//! barrier after a restart, the GC's final "may this path go" check, and indirect roots
//! (`gcroots/auto` symlinks).
//!
//! # Temp roots
//! The C++ daemon writes each client's temp roots to `temproots/<pid>` and the GC reads those
//! files. Our GC will run inside the daemon and ask store-db instead, so the roots live in
//! memory here ([`TempRoots`]), per *holder* (one incarnation of a root-holding component,
//! [`HolderId`]) and per connection of the holder; no `temproots` file is written. The holder
//! keeps the authoritative copy (socket-front's `storedb.rs`) and sends every change stamped
//! with a sequence number it assigned, under its own lock, when its copy changed
//! ([`RootStamp`]); the holder's obligations are listed in [`guix_ipc::store_db`].
//!
//! ## Why the order of messages does not matter
//! store-db runs each request in its own task, a request abandoned by its caller (deadline)
//! may still be applied later, and a request may be resent on a new link connection while the
//! old copy is still being handled. So the rules below give the same safety whatever the order
//! in which messages are applied, and whatever is applied twice or never. Per holder, store-db
//! keeps: for each connection it heard of, its roots and `first`, the smallest sequence number
//! it saw for it; tombstones (connection, close number) for closes newer than the last sync;
//! and that last sync's number `S` and live set `L`.
//! - **Add** `(c, q, paths)` — ignored if `c` has a tombstone or (`q ≤ S` and `c ∉ L`);
//!   otherwise `paths` are added to `c`'s roots (a union).
//! - **Close** `(c, k)` — drops `c`'s roots; leaves a tombstone unless `k ≤ S` and `c ∉ L`.
//! - **Sync** `(s, live)` — each listed connection's roots are added as by an add stamped
//!   `s` (and refused as such an add would be). Then, only if `s > S`: a connection *not*
//!   listed is dropped if `first ≤ s`; tombstones with `k ≤ s` go; `S, L := s, live`.
//!
//! Claim: a root `r` that the holder's connection `c` holds is in store-db's state from the
//! moment a message carrying it (an add, or a sync listing `c`) is applied, until `c` is closed
//! at the holder. Each way to remove or refuse something needs `c` closed:
//! - a tombstone comes only from a close of `c`;
//! - `q ≤ S, c ∉ L`: the add was stamped while `c` was live (the holder stamps adds only for
//!   live connections), and `c` was not live at `S ≥ q`; connections never reopen, so `c` is
//!   closed for good;
//! - a sync drops an unlisted `c` only if some message stamped `c` at `first ≤ s`: `c` was
//!   live then and not at `s`, so it is closed;
//! - a sync older than `S` removes nothing (it cannot simply be ignored: the newer one may be
//!   a cheap sync that lists no roots);
//! - pruning a tombstone `(c, k)` at a sync `s ≥ k` keeps refusing late adds for `c`: they are
//!   stamped `q < k ≤ s = S` and `c ∉ L`.
//!
//! So no interleaving of late, repeated or lost messages drops a live root; what a lost
//! message would have added comes with the holder's next complete sync, which it sends after
//! every new link connection and soon after every failed call. The converse (no leak): once
//! the holder's newest complete sync is applied, whatever else arrives, the state is exactly
//! the holder's copy (the `prop_*` tests below). Memory: the connections the holder has, plus
//! those closed after `S` (the holder sends a cheap sync, ids only, every few seconds).
//!
//! A new incarnation of a component (a later start time) makes store-db drop its
//! predecessors' roots and ignore their late messages: the supervisor runs one process per
//! component and starts the next only after the previous one was reaped.
//!
//! ## After a restart: the barrier
//! store-db starts with no temp roots. [`TempRoots::ready`] is false until each component of
//! [`ROOT_HOLDERS`] has had a complete sync applied (or was declared not running with
//! [`TempRoots::holder_not_running`]); the GC collects nothing before ([`DeletionGuard`]
//! refuses). A holder's complete sync lists every root it holds, and roots it adds later reach
//! this store-db directly (or come with its next sync), so from then on the claim above holds.
//!
//! ## Roots added while the GC collects
//! The gc calls [`TempRoots::begin_collection`] (every temp root at that instant; from then
//! on every root added is also recorded for the collection, even if released again),
//! computes what is live, then asks for dead entries to be deleted, referrers first. The
//! writer decides each part of a batch under a [`DeletionGuard`] ([`TempRoots::deletion`]):
//! from its start to its end (the last file moved) the part's names are marked as being
//! decided, and an entry is refused if it is a temp root now or became one since the
//! collection began ([`DeletionGuard::rooted`]), or if something valid that is not deleted
//! with it keeps it alive (`super::collect`).
//!
//! A temp-root addition is applied at once, whatever runs, but is answered only once no
//! part is deciding any of its paths ([`Settle::settled`]). Marking, applying an addition and
//! checking a mark each happen under this module's lock, so for a path `P` of a part and an
//! addition of `P` either
//! - the addition was applied before the part checked `P`: `P` is refused; or
//! - the part marked `P` before the addition was applied, and checked it after: the
//!   addition sees the mark and is answered after the part's end, when `P` is either kept or
//!   invalid with its files gone — what the caller would see of an addition made after the
//!   part, and it checks validity after its addition is answered (as with the C++ daemon).
//!
//! So a root `R` added during the collection is refused, or answered only once its caller
//! can see that `R` is gone. A kept `R` stays valid, so each of its references still has a
//! valid referrer and is refused, and so on down its closure: the whole closure survives.
//! What the part decides from the database cannot change under it: it runs in the writer,
//! which every registration goes through. An addition of a path no part is deciding (a
//! fresh item, nearly always) waits for no part at all.
//!
//! A collection ends with [`TempRoots::end_collection`], or expires when no request named
//! it for [`COLLECTION_LEASE`] (a gc that died); a batch for an unknown collection is refused,
//! so an expired collection can delete nothing more. After a store-db restart every
//! collection is unknown, and none can begin before the barrier is ready.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, MutexGuard};
use std::time::Instant;

use guix_formats::path::canon_path;
use guix_formats::{HashAlgo, StorePath};
use guix_ipc::store_db::{CollectionId, ConnId, HolderId, RootStamp, StoreDbRequest, COLLECTION_LEASE, ROOT_HOLDERS};

use guix_store::strerror;

/// The temp roots of every holder's live connections, the barrier, the mark journal and the
/// names a part of a collection is deciding, under one lock (see the module docs).
#[derive(Debug)]
pub struct TempRoots {
    inner: Mutex<Inner>,
    /// Notified each time a part of a collection ends: [`Settle::settled`] looks again.
    part_ended: tokio::sync::Notify,
}

#[derive(Debug)]
struct Inner {
    holders: HashMap<HolderId, HolderRoots>,
    /// Per component, the start time of its newest incarnation seen.
    newest: HashMap<String, u64>,
    barrier: RootsBarrier,
    /// The collections in progress: for each, every path made a temp root since it began.
    collections: HashMap<CollectionId, Collection>,
    next_collection: CollectionId,
    /// The paths the parts running now are deciding, with how many parts name each.
    deciding: HashMap<StorePath, u32>,
}

#[derive(Debug)]
struct Collection {
    journal: HashSet<StorePath>,
    last_used: Instant,
}

/// Records `paths` as rooted in every collection in progress.
fn journal<'a>(collections: &mut HashMap<CollectionId, Collection>, paths: impl IntoIterator<Item = &'a StorePath>) {
    if collections.is_empty() {
        return;
    }
    for p in paths {
        for c in collections.values_mut() {
            c.journal.insert(p.clone());
        }
    }
}

/// Takes one off `path`'s count, forgetting it at zero.
fn count_down(counts: &mut HashMap<StorePath, u32>, path: &StorePath) {
    if let Some(n) = counts.get_mut(path) {
        *n -= 1;
        if *n == 0 {
            counts.remove(path);
        }
    }
}

/// What store-db knows of one holder (see the module docs for the rules).
#[derive(Debug, Default)]
struct HolderRoots {
    conns: HashMap<ConnId, ConnRoots>,
    /// Connections closed after `synced_seq`, with the sequence number of the close.
    closed: HashMap<ConnId, u64>,
    synced_seq: u64,
    synced_live: HashSet<ConnId>,
    /// For each path, how many of `conns` hold it: whether a path is a temp root costs one
    /// lookup per holder, however many connections there are.
    counts: HashMap<StorePath, u32>,
}

#[derive(Debug)]
struct ConnRoots {
    first: u64,
    roots: HashSet<StorePath>,
}

impl HolderRoots {
    fn refuses(&self, conn: ConnId, seq: u64) -> bool {
        self.closed.contains_key(&conn) || (seq <= self.synced_seq && !self.synced_live.contains(&conn))
    }

    fn add(
        &mut self,
        conn: ConnId,
        seq: u64,
        paths: impl IntoIterator<Item = StorePath>,
        collections: &mut HashMap<CollectionId, Collection>,
    ) {
        let mut paths = paths.into_iter().peekable();
        if paths.peek().is_none() || self.refuses(conn, seq) {
            return;
        }
        let c = self.conns.entry(conn).or_insert_with(|| ConnRoots { first: seq, roots: HashSet::new() });
        c.first = c.first.min(seq);
        for p in paths {
            journal(collections, [&p]);
            if c.roots.insert(p.clone()) {
                *self.counts.entry(p).or_insert(0) += 1;
            }
        }
    }

    /// A connection's roots are gone.
    fn forget(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else { return };
        for p in &c.roots {
            count_down(&mut self.counts, p);
        }
    }

    fn holds(&self, path: &StorePath) -> bool {
        self.counts.contains_key(path)
    }

    fn close(&mut self, conn: ConnId, seq: u64) {
        self.forget(conn);
        if seq > self.synced_seq || self.synced_live.contains(&conn) {
            self.closed.insert(conn, seq);
        }
    }

    /// Applies a sync; whether it was newer than every sync applied before (an older one
    /// only adds roots).
    fn sync(
        &mut self,
        seq: u64,
        live: Vec<(ConnId, Vec<StorePath>)>,
        collections: &mut HashMap<CollectionId, Collection>,
    ) -> bool {
        let ids: HashSet<ConnId> = live.iter().map(|(c, _)| *c).collect();
        for (conn, paths) in live {
            self.add(conn, seq, paths, collections);
        }
        if seq <= self.synced_seq {
            return false;
        }
        let gone: Vec<ConnId> =
            self.conns.iter().filter(|(c, r)| !ids.contains(c) && r.first <= seq).map(|(c, _)| *c).collect();
        for c in gone {
            self.forget(c);
        }
        self.closed.retain(|_, k| *k > seq);
        self.synced_seq = seq;
        self.synced_live = ids;
        true
    }
}

/// After store-db starts: which root-holding components have not yet synced with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootsBarrier {
    waiting: BTreeSet<String>,
}

impl RootsBarrier {
    /// Waits for each of `holders`.
    pub fn new<'a>(holders: impl IntoIterator<Item = &'a str>) -> RootsBarrier {
        RootsBarrier { waiting: holders.into_iter().map(str::to_owned).collect() }
    }

    /// `component` had a complete sync applied, or is known not to run.
    pub fn release(&mut self, component: &str) {
        self.waiting.remove(component);
    }

    /// Whether every holder has synced: only then may anything be collected.
    pub fn ready(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn waiting_for(&self) -> impl Iterator<Item = &str> {
        self.waiting.iter().map(String::as_str)
    }
}

impl Default for TempRoots {
    /// Waiting for every component of [`ROOT_HOLDERS`].
    fn default() -> Self {
        TempRoots::new(RootsBarrier::new(ROOT_HOLDERS.iter().copied()))
    }
}

impl TempRoots {
    pub fn new(barrier: RootsBarrier) -> TempRoots {
        TempRoots {
            inner: Mutex::new(Inner {
                holders: HashMap::new(),
                newest: HashMap::new(),
                barrier,
                collections: HashMap::new(),
                next_collection: 1,
                deciding: HashMap::new(),
            }),
            part_ended: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        if let Some(g) = self.inner.try_lock() {
            return g;
        }
        // Held, maybe by a collection's part at a low priority (briefly): it goes first now.
        super::collect::PART.boost();
        self.inner.lock()
    }

    /// Applies a temp-root message (`AddTempRoots`, `ConnectionClosed`, `SyncConnections`),
    /// to be answered once it has settled; gives any other request back.
    ///
    /// A sync need not wait for a part: the holder counts only on the roots of the additions
    /// it had answered, and a sync after a store-db start comes before any collection.
    pub fn take(&self, req: StoreDbRequest) -> Result<Settle<'_>, StoreDbRequest> {
        match req {
            StoreDbRequest::AddTempRoots { conn, paths } => return Ok(self.add(&conn, paths)),
            StoreDbRequest::ConnectionClosed { conn } => self.close(&conn),
            StoreDbRequest::SyncConnections { holder, seq, live, complete } => {
                self.sync(&holder, seq, live, complete);
            }
            other => return Err(other),
        }
        Ok(Settle { roots: self, clash: Vec::new() })
    }

    /// Adds temp roots of a holder's connection, at once; the caller answers once the
    /// [`Settle`] has settled (see the module docs).
    pub fn add(&self, stamp: &RootStamp, paths: impl IntoIterator<Item = StorePath>) -> Settle<'_> {
        let paths: Vec<StorePath> = paths.into_iter().collect();
        let mut inner = self.lock();
        let Inner { holders, newest, collections, deciding, .. } = &mut *inner;
        if let Some(h) = holder(holders, newest, &stamp.holder) {
            h.add(stamp.conn, stamp.seq, paths.iter().cloned(), collections);
        }
        Settle { roots: self, clash: clashing(deciding, &paths) }
    }

    /// A holder's connection ended: its roots go away.
    pub fn close(&self, stamp: &RootStamp) {
        let mut inner = self.lock();
        let Inner { holders, newest, .. } = &mut *inner;
        if let Some(h) = holder(holders, newest, &stamp.holder) {
            h.close(stamp.conn, stamp.seq);
        }
    }

    /// A holder's live connections at its sequence number `seq` (see the module docs).
    /// Whether it was newer than every sync of the holder applied before.
    pub fn sync(&self, id: &HolderId, seq: u64, live: Vec<(ConnId, Vec<StorePath>)>, complete: bool) -> bool {
        let mut inner = self.lock();
        let Inner { holders, newest, collections, barrier, .. } = &mut *inner;
        let Some(h) = holder(holders, newest, id) else { return false };
        let newest = h.sync(seq, live, collections);
        if complete {
            barrier.release(&id.component);
        }
        newest
    }

    /// Whether every root-holding component has synced since store-db started: until then
    /// nothing may be collected.
    pub fn ready(&self) -> bool {
        self.lock().barrier.ready()
    }

    /// The components the barrier still waits for.
    pub fn waiting_for(&self) -> Vec<String> {
        self.lock().barrier.waiting_for().map(str::to_owned).collect()
    }

    /// `component` is known not to run (so it holds no roots): the barrier stops waiting
    /// for it.
    pub fn holder_not_running(&self, component: &str) {
        self.lock().barrier.release(component);
    }

    /// Whether some live connection holds `path` as a temp root.
    pub fn is_temp_root(&self, path: &StorePath) -> bool {
        self.lock().is_temp_root(path)
    }

    /// Every temp root, at one instant.
    pub fn snapshot(&self) -> HashSet<StorePath> {
        self.lock().roots().cloned().collect()
    }

    /// Number of connections with roots (for logs and metrics).
    pub fn connections(&self) -> usize {
        self.lock().holders.values().map(|h| h.conns.len()).sum()
    }

    /// A collection begins: its id and every temp root now; from now on every root added
    /// is recorded for it. Refused (with the components waited for) until the barrier is
    /// ready. Collections idle for longer than [`COLLECTION_LEASE`] are forgotten here.
    pub fn begin_collection(&self) -> Result<(CollectionId, HashSet<StorePath>), Vec<String>> {
        let mut inner = self.lock();
        if !inner.barrier.ready() {
            return Err(inner.barrier.waiting_for().map(str::to_owned).collect());
        }
        let now = Instant::now();
        inner.collections.retain(|_, c| now.duration_since(c.last_used) < COLLECTION_LEASE);
        let id = inner.next_collection;
        inner.next_collection += 1;
        inner.collections.insert(id, Collection { journal: HashSet::new(), last_used: now });
        Ok((id, inner.roots().cloned().collect()))
    }

    /// The collection is over: stop recording new roots for it.
    pub fn end_collection(&self, id: CollectionId) {
        self.lock().collections.remove(&id);
    }

    /// Collections in progress (for tests and metrics).
    pub fn collections(&self) -> usize {
        self.lock().collections.len()
    }

    /// A part of a collection begins deciding (and maybe deleting) `names`: an addition of
    /// one of them is answered only after the guard is dropped.
    pub fn deletion(&self, names: impl IntoIterator<Item = StorePath>) -> DeletionGuard<'_> {
        let names: Vec<StorePath> = names.into_iter().collect();
        let mut inner = self.lock();
        for n in &names {
            *inner.deciding.entry(n.clone()).or_insert(0) += 1;
        }
        DeletionGuard { roots: self, names }
    }
}

/// Those of `paths` that a part is deciding.
fn clashing(deciding: &HashMap<StorePath, u32>, paths: &[StorePath]) -> Vec<StorePath> {
    paths.iter().filter(|p| deciding.contains_key(*p)).cloned().collect()
}

/// A temp-root change applied: [`Settle::settled`] returns once no part of a collection is
/// deciding any of its paths, and only then may the change be answered.
#[must_use = "a temp-root change may be answered only once `settled` has returned"]
pub struct Settle<'a> {
    roots: &'a TempRoots,
    /// Its paths that a part was deciding when it was applied.
    clash: Vec<StorePath>,
}

impl Settle<'_> {
    /// Whether no part was deciding any of its paths when it was applied (it settled then).
    pub fn is_settled(&self) -> bool {
        self.clash.is_empty()
    }

    /// Waits until no part is deciding any of its paths. Bounded by the parts' length: a
    /// path is in one part at a time, and a part always ends (its guard is dropped).
    pub async fn settled(mut self) {
        while !self.clash.is_empty() {
            let ended = self.roots.part_ended.notified();
            tokio::pin!(ended);
            // Registered before looking, so that a part ending in between is not missed.
            ended.as_mut().enable();
            self.clash = clashing(&self.roots.lock().deciding, &self.clash);
            if self.clash.is_empty() {
                return;
            }
            // The part may run at a low priority: it goes first now.
            super::collect::PART.boost();
            ended.await;
        }
    }
}

/// The state of `id`, after dropping older incarnations of its component; `None` when `id` is
/// itself older than one seen (its late messages are ignored).
fn holder<'a>(
    holders: &'a mut HashMap<HolderId, HolderRoots>,
    newest: &mut HashMap<String, u64>,
    id: &HolderId,
) -> Option<&'a mut HolderRoots> {
    match newest.get(&id.component) {
        Some(&n) if id.started < n => return None,
        Some(&n) if id.started == n => {}
        _ => {
            newest.insert(id.component.clone(), id.started);
            holders.retain(|h, _| h.component != id.component || h.started >= id.started);
        }
    }
    Some(holders.entry(id.clone()).or_default())
}

impl Inner {
    fn roots(&self) -> impl Iterator<Item = &StorePath> {
        self.holders.values().flat_map(|h| h.conns.values()).flat_map(|c| c.roots.iter())
    }

    fn is_temp_root(&self, path: &StorePath) -> bool {
        self.holders.values().any(|h| h.holds(path))
    }

    /// Checks [`HolderRoots::counts`] against the connections' roots.
    #[cfg(test)]
    fn check_counts(&self) {
        for h in self.holders.values() {
            let mut want: HashMap<&StorePath, u32> = HashMap::new();
            for p in h.conns.values().flat_map(|c| c.roots.iter()) {
                *want.entry(p).or_insert(0) += 1;
            }
            let have: HashMap<&StorePath, u32> = h.counts.iter().map(|(p, n)| (p, *n)).collect();
            assert_eq!(have, want);
        }
    }
}

/// The collection named is not (or no longer) in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownCollection;

/// Held while a part of a collection checks, invalidates and moves its entries: additions
/// of the names it marked are answered only once it is dropped.
pub struct DeletionGuard<'a> {
    roots: &'a TempRoots,
    names: Vec<StorePath>,
}

impl Drop for DeletionGuard<'_> {
    fn drop(&mut self) {
        {
            let mut inner = self.roots.lock();
            for n in &self.names {
                count_down(&mut inner.deciding, n);
            }
        }
        self.roots.part_ended.notify_waiters();
    }
}

impl DeletionGuard<'_> {
    /// Marks `collection` as used now (its lease starts again); refused when it is unknown or
    /// expired.
    pub fn touch(&mut self, collection: CollectionId) -> Result<(), UnknownCollection> {
        let now = Instant::now();
        let mut inner = self.roots.lock();
        match inner.collections.get_mut(&collection) {
            Some(c) if now.duration_since(c.last_used) < COLLECTION_LEASE => {
                c.last_used = now;
                Ok(())
            }
            Some(_) => {
                inner.collections.remove(&collection);
                Err(UnknownCollection)
            }
            None => Err(UnknownCollection),
        }
    }

    /// Whether `path` is a temp root now, or became one since `collection` began. `path`
    /// must be one of the guard's names (or the check could be stale by the time the part
    /// acts on it).
    pub fn rooted(&self, collection: CollectionId, path: &StorePath) -> Result<bool, UnknownCollection> {
        let inner = self.roots.lock();
        let c = inner.collections.get(&collection).ok_or(UnknownCollection)?;
        Ok(c.journal.contains(path) || inner.is_temp_root(path))
    }
}

/// `LocalStore::addIndirectRoot`: the symlink `<state>/gcroots/auto/<base32(sha1(path))>` →
/// `path`, made atomically (a temporary `LINK.tmp-PID-N` renamed over the name). `path` must
/// be absolute (the daemon makes the client's argument absolute).
pub fn add_indirect_root(state_dir: &Path, path: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') {
        return Err(format!("not an absolute path: `{path}'"));
    }
    let hash = HashAlgo::Sha1.digest(path.as_bytes()).to_nix_base32();
    let auto = canon_path(state_dir.join("gcroots").join("auto")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&auto).map_err(|e| format!("creating directory `{}': {}", auto.display(), strerror(&e)))?;
    let link = auto.join(&hash);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = auto.join(format!("{hash}.tmp-{}-{n}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(path, &tmp)
        .map_err(|e| format!("symlinking `{}' to `{path}': {}", tmp.display(), strerror(&e)))?;
    std::fs::rename(&tmp, &link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rename `{}' to `{}': {}", tmp.display(), link.display(), strerror(&e))
    })?;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guix_formats::StoreDir;
    use proptest::prelude::*;

    fn sp(s: &str) -> StorePath {
        StorePath::from_base_name(s).unwrap()
    }

    fn holder(component: &str, pid: u32, started: u64) -> HolderId {
        HolderId { component: component.to_owned(), pid, started }
    }

    fn front() -> HolderId {
        holder("socket-front", 7, 100)
    }

    fn stamp(conn: ConnId, seq: u64) -> RootStamp {
        RootStamp { holder: front(), conn, seq }
    }

    /// The roots store-db holds for `front()`'s connection `conn`.
    fn roots_of(r: &TempRoots, conn: ConnId) -> HashSet<StorePath> {
        r.lock().holders.get(&front()).and_then(|h| h.conns.get(&conn)).map(|c| c.roots.clone()).unwrap_or_default()
    }

    fn tombstones(r: &TempRoots) -> usize {
        r.lock().holders.values().map(|h| h.closed.len()).sum()
    }

    /// Adds with no part running: settled at once.
    fn add(r: &TempRoots, stamp: &RootStamp, paths: impl IntoIterator<Item = StorePath>) {
        assert!(r.add(stamp, paths).is_settled());
    }

    fn p(i: usize) -> StorePath {
        StoreDir::default().make_text_path(&format!("p{i}"), &[], std::iter::empty::<&StorePath>()).unwrap()
    }

    fn set(paths: &[StorePath]) -> HashSet<StorePath> {
        paths.iter().cloned().collect()
    }

    #[test]
    fn temp_roots_per_connection() {
        let r = TempRoots::default();
        let (a, b) = (sp("00bgd045z0d4icpbc2yyz4gx48ak44la-a"), sp("01bgd045z0d4icpbc2yyz4gx48ak44la-b"));
        add(&r, &stamp(1, 1), [a.clone()]);
        add(&r, &stamp(2, 2), [b.clone()]);
        assert!(r.is_temp_root(&a) && r.is_temp_root(&b));
        r.close(&stamp(1, 3));
        assert!(!r.is_temp_root(&a));
        assert_eq!(r.snapshot(), set(std::slice::from_ref(&b)));
        assert_eq!(r.connections(), 1);
    }

    /// The defect of the old design: a sync whose snapshot predates an addition, applied after
    /// it, erased the new root.
    #[test]
    fn late_sync_after_an_add_keeps_the_root() {
        let r = TempRoots::default();
        // Snapshot at seq 2: connection 1 with p0.
        let snapshot = vec![(1, vec![p(0)])];
        add(&r, &stamp(1, 1), [p(0)]);
        // After the snapshot: p1 on connection 1, p2 on a new connection 2.
        add(&r, &stamp(1, 3), [p(1)]);
        add(&r, &stamp(2, 4), [p(2)]);
        assert!(r.sync(&front(), 2, snapshot, true));
        assert_eq!(roots_of(&r, 1), set(&[p(0), p(1)]));
        assert_eq!(roots_of(&r, 2), set(&[p(2)]));
    }

    #[test]
    fn abandoned_sync_delivered_after_later_adds_and_syncs() {
        let r = TempRoots::default();
        let old = vec![(1, vec![p(0)]), (3, vec![p(3)])];
        add(&r, &stamp(2, 2), [p(1)]);
        // Connection 3 closed at 3, then a newer sync at 5.
        r.close(&stamp(3, 3));
        add(&r, &stamp(2, 4), [p(2)]);
        assert!(r.sync(&front(), 5, vec![(1, vec![p(0)]), (2, vec![p(1), p(2)])], true));
        // The sync of seq 1, abandoned by its caller, is handled now: ignored.
        assert!(!r.sync(&front(), 1, old, true));
        assert_eq!(roots_of(&r, 1), set(&[p(0)]));
        assert_eq!(roots_of(&r, 2), set(&[p(1), p(2)]));
        assert!(roots_of(&r, 3).is_empty());
    }

    #[test]
    fn close_before_a_late_sync_is_not_undone() {
        let r = TempRoots::default();
        add(&r, &stamp(1, 1), [p(0)]);
        add(&r, &stamp(2, 2), [p(1)]);
        let snapshot = vec![(1, vec![p(0)]), (2, vec![p(1)])];
        r.close(&stamp(1, 4));
        assert!(r.sync(&front(), 3, snapshot, true));
        assert!(roots_of(&r, 1).is_empty(), "a closed connection came back");
        assert_eq!(roots_of(&r, 2), set(&[p(1)]));
        // Its tombstone outlives that sync (the close is newer) and goes with a newer one.
        assert_eq!(tombstones(&r), 1);
        assert!(r.sync(&front(), 5, vec![(2, vec![])], false));
        assert_eq!(tombstones(&r), 0);
        assert_eq!(roots_of(&r, 2), set(&[p(1)]), "a cheap sync dropped roots");
    }

    #[test]
    fn resent_add_after_close_is_ignored() {
        let r = TempRoots::default();
        add(&r, &stamp(1, 1), [p(0)]);
        r.close(&stamp(1, 2));
        add(&r, &stamp(1, 1), [p(0)]);
        assert!(!r.is_temp_root(&p(0)));
        // Also once the tombstone is pruned by a sync that knows of the close.
        assert!(r.sync(&front(), 3, vec![], false));
        assert_eq!(tombstones(&r), 0);
        add(&r, &stamp(1, 1), [p(0)]);
        assert!(!r.is_temp_root(&p(0)));
        // A close whose message was lost is cleaned up by the next sync; a connection opened
        // after the snapshot is not.
        add(&r, &stamp(4, 4), [p(4)]);
        add(&r, &stamp(6, 6), [p(6)]);
        assert!(r.sync(&front(), 5, vec![], false));
        assert!(!r.is_temp_root(&p(4)) && r.is_temp_root(&p(6)));
    }

    /// Roots whose barrier waits for socket-front alone (the builder and the substituter
    /// declared not running).
    fn socket_front_only() -> TempRoots {
        let r = TempRoots::default();
        r.holder_not_running("builder");
        r.holder_not_running("substituter");
        r
    }

    #[test]
    fn a_new_incarnation_replaces_the_old() {
        let r = socket_front_only();
        let old = front();
        let new = holder("socket-front", 8, 200);
        let other = holder("builder", 9, 50);
        add(&r, &stamp(1, 1), [p(0)]);
        add(&r, &RootStamp { holder: other.clone(), conn: 1, seq: 1 }, [p(2)]);
        add(&r, &RootStamp { holder: new.clone(), conn: 1, seq: 1 }, [p(1)]);
        assert!(!r.is_temp_root(&p(0)) && r.is_temp_root(&p(1)) && r.is_temp_root(&p(2)));
        // The old one's late messages change nothing, not even the barrier.
        add(&r, &stamp(2, 2), [p(3)]);
        assert!(!r.sync(&old, 9, vec![(5, vec![p(4)])], true));
        assert!(!r.is_temp_root(&p(3)) && !r.is_temp_root(&p(4)));
        assert!(!r.ready());
        assert!(r.sync(&new, 2, vec![(1, vec![p(1)])], true));
        assert!(r.ready());
    }

    #[test]
    fn barrier_waits_for_every_holder() {
        let r = TempRoots::new(RootsBarrier::new(["socket-front", "builder"]));
        assert!(!r.ready());
        // A cheap sync does not count: it lists no roots.
        assert!(r.sync(&front(), 1, vec![(1, vec![])], false));
        assert!(!r.ready());
        assert!(r.sync(&front(), 2, vec![(1, vec![p(0)])], true));
        assert_eq!(r.waiting_for(), vec!["builder".to_owned()]);
        r.holder_not_running("builder");
        assert!(r.ready());
        assert!(TempRoots::new(RootsBarrier::new([])).ready());
        let mut all: Vec<String> = ROOT_HOLDERS.iter().map(|s| s.to_string()).collect();
        all.sort();
        assert_eq!(TempRoots::default().waiting_for(), all);
    }

    #[test]
    fn collections_record_roots_added_while_they_run() {
        let r = socket_front_only();
        assert_eq!(r.begin_collection().unwrap_err(), vec!["socket-front".to_owned()]);
        assert!(r.sync(&front(), 1, vec![], true));
        add(&r, &stamp(1, 2), [p(3)]);
        let (id, roots) = r.begin_collection().unwrap();
        assert!(roots.contains(&p(3)));
        assert_eq!(r.deletion([p(3)]).rooted(id, &p(3)), Ok(true));
        assert_eq!(r.deletion([p(0)]).rooted(id, &p(0)), Ok(false));
        // p0 becomes a root during the collection and is released again before the GC gets
        // to it: still refused. A second collection that began later records it too.
        let (id2, _) = r.begin_collection().unwrap();
        add(&r, &stamp(2, 3), [p(0)]);
        r.close(&stamp(2, 4));
        r.close(&stamp(1, 5));
        let mut g = r.deletion([p(0), p(3)]);
        assert_eq!(g.touch(id), Ok(()));
        assert_eq!(g.rooted(id, &p(0)), Ok(true));
        assert_eq!(g.rooted(id2, &p(0)), Ok(true));
        assert_eq!(g.rooted(id, &p(3)), Ok(false), "released before and not since");
        drop(g);
        r.end_collection(id);
        assert_eq!(r.deletion([p(0)]).rooted(id, &p(0)), Err(UnknownCollection));
        assert_eq!(r.deletion([]).touch(id), Err(UnknownCollection));
        let (id3, _) = r.begin_collection().unwrap();
        assert_eq!(r.deletion([p(0)]).rooted(id3, &p(0)), Ok(false));
        assert_eq!(r.collections(), 2);
    }

    /// A holder, as the model: the same bookkeeping as socket-front's `storedb.rs`, one
    /// operation at a time (its lock), producing the messages it would send.
    #[derive(Default)]
    struct Model {
        seq: u64,
        next_conn: ConnId,
        live: std::collections::BTreeMap<ConnId, BTreeSet<StorePath>>,
        sent: Vec<StoreDbRequest>,
    }

    impl Model {
        fn step(&mut self, op: u8, a: u8, b: u8) {
            let pick = |live: &std::collections::BTreeMap<ConnId, BTreeSet<StorePath>>| {
                live.keys().nth(usize::from(a) % live.len().max(1)).copied()
            };
            match op % 4 {
                0 => {
                    self.next_conn += 1;
                    self.live.insert(self.next_conn, BTreeSet::new());
                }
                1 => {
                    if let Some(c) = pick(&self.live) {
                        let path = p(usize::from(b) % 6);
                        self.live.get_mut(&c).unwrap().insert(path.clone());
                        self.seq += 1;
                        self.sent.push(StoreDbRequest::AddTempRoots { conn: stamp(c, self.seq), paths: vec![path] });
                    }
                }
                2 => {
                    if let Some(c) = pick(&self.live) {
                        self.live.remove(&c);
                        self.seq += 1;
                        self.sent.push(StoreDbRequest::ConnectionClosed { conn: stamp(c, self.seq) });
                    }
                }
                _ => {
                    let sync = self.sync(b.is_multiple_of(2));
                    self.sent.push(sync);
                }
            }
        }

        fn sync(&mut self, complete: bool) -> StoreDbRequest {
            self.seq += 1;
            let live = self
                .live
                .iter()
                .map(|(c, r)| (*c, if complete { r.iter().cloned().collect() } else { vec![] }))
                .collect();
            StoreDbRequest::SyncConnections { holder: front(), seq: self.seq, live, complete }
        }
    }

    /// Whether `msg` carries root `path` for connection `conn`.
    fn carries(msg: &StoreDbRequest, conn: ConnId, path: &StorePath) -> bool {
        match msg {
            StoreDbRequest::AddTempRoots { conn: s, paths } => s.conn == conn && paths.contains(path),
            StoreDbRequest::SyncConnections { live, .. } => live.iter().any(|(c, r)| *c == conn && r.contains(path)),
            _ => false,
        }
    }

    fn history() -> impl Strategy<Value = Vec<(u8, u8, u8)>> {
        proptest::collection::vec((0u8..4, any::<u8>(), any::<u8>()), 1..40)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any subset of the holder's messages, repeated, in any order: every root of a
        /// connection live at the holder's latest state that some applied message carried is
        /// present.
        #[test]
        fn prop_no_live_root_is_lost(ops in history(), order in proptest::collection::vec(any::<u16>(), 0..100)) {
            let mut m = Model::default();
            for (op, a, b) in ops {
                m.step(op, a, b);
            }
            prop_assume!(!m.sent.is_empty());
            let r = TempRoots::default();
            let applied: Vec<&StoreDbRequest> = order.iter().map(|i| &m.sent[usize::from(*i) % m.sent.len()]).collect();
            for msg in &applied {
                prop_assert!(r.take((*msg).clone()).is_ok_and(|s| s.is_settled()));
                r.lock().check_counts();
            }
            for (conn, roots) in &m.live {
                let held = roots_of(&r, *conn);
                for path in roots {
                    if applied.iter().any(|msg| carries(msg, *conn, path)) {
                        prop_assert!(held.contains(path), "lost {path:?} of live connection {conn}");
                    }
                }
            }
        }

        /// Once the holder's newest complete sync is applied, wherever it falls among the
        /// others, store-db holds exactly the holder's roots: nothing lost, nothing leaked, no
        /// tombstone left.
        #[test]
        fn prop_newest_sync_makes_the_state_exact(ops in history(), order in proptest::collection::vec(any::<u16>(), 0..100), at in any::<u16>()) {
            let mut m = Model::default();
            for (op, a, b) in ops {
                m.step(op, a, b);
            }
            let last = m.sync(true);
            let mut applied: Vec<StoreDbRequest> =
                if m.sent.is_empty() { vec![] } else { order.iter().map(|i| m.sent[usize::from(*i) % m.sent.len()].clone()).collect() };
            let at = usize::from(at) % (applied.len() + 1);
            applied.insert(at, last);
            let r = socket_front_only();
            for msg in applied {
                assert!(r.take(msg).is_ok_and(|s| s.is_settled()));
                r.lock().check_counts();
            }
            prop_assert!(r.ready());
            for (conn, roots) in &m.live {
                for path in roots {
                    prop_assert!(r.is_temp_root(path), "{path:?} of live connection {conn}");
                }
            }
            for (conn, roots) in &m.live {
                prop_assert_eq!(&roots_of(&r, *conn), &roots.iter().cloned().collect::<HashSet<_>>());
            }
            let expected: HashSet<StorePath> = m.live.values().flatten().cloned().collect();
            prop_assert_eq!(r.snapshot(), expected);
            let held = r.lock().holders.get(&front()).map(|h| h.conns.keys().copied().collect::<BTreeSet<_>>()).unwrap_or_default();
            prop_assert!(held.iter().all(|c| m.live.get(c).is_some_and(|r| !r.is_empty())), "leaked connections {held:?}");
            prop_assert_eq!(tombstones(&r), 0);
        }
    }

    #[test]
    fn indirect_root_name_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let link = add_indirect_root(dir.path(), "/home/u/result").unwrap();
        // base32 of a SHA-1 is 32 characters.
        let name = link.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(name.len(), 32);
        assert_eq!(name, HashAlgo::Sha1.digest(b"/home/u/result").to_nix_base32());
        assert_eq!(std::fs::read_link(&link).unwrap(), PathBuf::from("/home/u/result"));
        assert_eq!(add_indirect_root(dir.path(), "/home/u/result").unwrap(), link);
        assert_eq!(std::fs::read_dir(link.parent().unwrap()).unwrap().count(), 1);
        assert!(add_indirect_root(dir.path(), "rel").is_err());
    }

    #[tokio::test]
    async fn an_addition_waits_only_for_a_part_deciding_its_path() {
        use std::sync::Arc;
        use std::time::Duration;
        let roots = Arc::new(TempRoots::new(RootsBarrier::new([])));
        let (id, _) = roots.begin_collection().unwrap();
        // Two parts deciding p1 (as the writer would never run, but the count must hold).
        let part = roots.deletion([p(1), p(5)]);
        let other = roots.deletion([p(1)]);
        // Another path: answered at once, even from another thread while the parts run.
        let (tx, rx) = std::sync::mpsc::channel();
        let r = roots.clone();
        std::thread::spawn(move || tx.send(r.add(&stamp(1, 1), [p(2)]).is_settled()).unwrap());
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
        // p1: applied at once (the parts see it), answered only after both parts.
        let settle = roots.add(&stamp(1, 2), [p(2), p(1)]);
        assert!(!settle.is_settled());
        assert!(roots.is_temp_root(&p(1)));
        assert_eq!(part.rooted(id, &p(1)), Ok(true));
        let settled = settle.settled();
        tokio::pin!(settled);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut settled).await.is_err());
        drop(part);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut settled).await.is_err(),
            "one part still decides p1"
        );
        drop(other);
        tokio::time::timeout(Duration::from_secs(10), &mut settled).await.expect("answered once the parts ended");
        assert!(roots.add(&stamp(1, 3), [p(1), p(5)]).is_settled(), "no marks left");
    }

    #[test]
    fn an_addition_applied_as_its_part_ends_is_not_left_waiting() {
        use std::time::Duration;
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let roots = TempRoots::new(RootsBarrier::new([]));
        for i in 0..200u64 {
            std::thread::scope(|s| {
                let guard = roots.deletion([p(1)]);
                let settle = roots.add(&stamp(1, i + 1), [p(1)]);
                // Ended on another thread, as the writer's parts are, racing with the wait.
                s.spawn(move || drop(guard));
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), settle.settled()).await })
                    .expect("a part's end was missed");
            });
        }
    }
}

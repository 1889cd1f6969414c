//! The batch decision against a real database and store directory.

use std::collections::BTreeMap;

use guix_formats::{HashAlgo, StoreDir};
use guix_ipc::gc::KeepRules;
use guix_ipc::store_db::{DeadEntry, RootStamp};

use super::*;
use crate::server::roots::RootsBarrier;
use crate::{DbOptions, InitOptions, Registration, StateDirs, ValidPathInfo};

struct Fixture {
    _dir: tempfile::TempDir,
    db: DbWriter,
    layout: StoreLayout,
    roots: TempRoots,
}

fn text(name: &str) -> StorePath {
    StoreDir::default().make_text_path(name, name.as_bytes(), std::iter::empty::<&StorePath>()).unwrap()
}

fn drv(name: &str) -> StorePath {
    text(&format!("{name}.drv"))
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let dirs = StateDirs::under(dir.path());
    let lock = dirs.init(&InitOptions { reserve_space: false, ..Default::default() }).unwrap();
    let db = DbWriter::open(dirs.db_dir(), StoreDir::default(), &lock, &DbOptions::default()).unwrap();
    std::fs::create_dir_all(dirs.store_path()).unwrap();
    let layout = StoreLayout {
        store_path: dirs.store_path().to_owned(),
        store_dir: StoreDir::default(),
        scratch: dirs.scratch_dir(),
    };
    Fixture { _dir: dir, db, layout, roots: TempRoots::new(RootsBarrier::new([])) }
}

impl Fixture {
    /// Registers `path` (a directory with one file of `size` bytes, or a file when `file`).
    fn add(
        &mut self,
        path: &StorePath,
        refs: &[&StorePath],
        deriver: Option<&StorePath>,
        outputs: &[(&str, &StorePath)],
    ) {
        let on_disk = self.layout.store_path.join(path.base_name());
        if path.is_derivation() {
            std::fs::write(&on_disk, b"Derive()").unwrap();
        } else {
            std::fs::create_dir(&on_disk).unwrap();
            std::fs::write(on_disk.join("f"), vec![b'x'; 100]).unwrap();
        }
        let info = ValidPathInfo {
            path: path.clone(),
            deriver: deriver.cloned(),
            nar_hash: HashAlgo::Sha256.digest(path.name().as_bytes()),
            references: refs.iter().map(|r| (*r).clone()).collect(),
            registration_time: 1,
            nar_size: Some(1000),
        };
        let reg = if path.is_derivation() {
            let outs: BTreeMap<String, StorePath> =
                outputs.iter().map(|(n, p)| (n.to_string(), (*p).clone())).collect();
            Registration::derivation(info, outs).unwrap()
        } else {
            Registration::new(info).unwrap()
        };
        self.db.register_valid_paths(&[reg]).unwrap();
    }

    fn run(
        &mut self,
        id: CollectionId,
        entries: &[(&str, bool)],
        keep: KeepRules,
        max_freed: u64,
    ) -> Result<DeleteOutcome, BatchError> {
        let batch = DeadBatch {
            collection: id,
            entries: entries.iter().map(|(n, v)| DeadEntry { name: n.to_string(), valid: *v }).collect(),
            groups: Vec::new(),
            keep,
            freed_before: 0,
            max_freed,
            link_threshold: 1,
        };
        delete_dead(&mut self.db, &self.roots, &self.layout, batch)
    }

    fn exists(&self, p: &StorePath) -> bool {
        self.layout.store_path.join(p.base_name()).exists()
    }
}

fn names(o: &DeleteOutcome) -> Vec<String> {
    o.deleted.iter().map(|d| d.name.clone()).collect()
}

fn kept(o: &DeleteOutcome, name: &str) -> Option<KeptBecause> {
    o.kept.iter().find(|(n, _)| n == name).map(|(_, k)| k.clone())
}

fn stamp(conn: u64, seq: u64) -> RootStamp {
    RootStamp {
        holder: guix_ipc::store_db::HolderId { component: "socket-front".into(), pid: 1, started: 1 },
        conn,
        seq,
    }
}

#[test]
fn a_dead_chain_goes_referrers_first_into_the_trash() {
    let mut f = fixture();
    let (a, b, c) = (text("a"), text("b"), text("c"));
    f.add(&a, &[], None, &[]);
    f.add(&b, &[&a], None, &[]);
    f.add(&c, &[&b, &a, &c], None, &[]);
    let (id, _) = f.roots.begin_collection().unwrap();
    let o = f
        .run(
            id,
            &[(&c.base_name(), true), (&b.base_name(), true), (&a.base_name(), true)],
            KeepRules::default(),
            u64::MAX,
        )
        .unwrap();
    assert_eq!(names(&o), vec![c.base_name(), b.base_name(), a.base_name()]);
    assert!(o.kept.is_empty(), "{o:?}");
    for p in [&a, &b, &c] {
        assert!(!f.db.is_valid(p).unwrap());
        assert!(!f.exists(p));
        assert!(f.layout.store_path.join("trash").join(p.base_name()).join("f").exists());
    }
    assert!(o.deleted.iter().all(|d| d.is_dir && d.accounted == 1000 && d.freed_in_place == 0));
}

#[test]
fn a_referrer_outside_the_batch_keeps_the_path_and_what_it_keeps() {
    let mut f = fixture();
    let (a, b, c) = (text("a"), text("b"), text("c"));
    f.add(&a, &[], None, &[]);
    f.add(&b, &[&a], None, &[]);
    f.add(&c, &[&b], None, &[]);
    let (id, _) = f.roots.begin_collection().unwrap();
    // c is not in the batch (the gc's snapshot thought it live, or it is new).
    let o = f.run(id, &[(&b.base_name(), true), (&a.base_name(), true)], KeepRules::default(), u64::MAX).unwrap();
    assert!(o.deleted.is_empty());
    assert_eq!(kept(&o, &b.base_name()), Some(KeptBecause::LiveReferrer(c.to_string())));
    assert_eq!(kept(&o, &a.base_name()), Some(KeptBecause::KeepsKept));
    assert!(f.db.is_valid(&a).unwrap() && f.exists(&a));
}

#[test]
fn a_root_added_during_the_collection_saves_its_closure_even_when_released() {
    let mut f = fixture();
    let (a, b, c) = (text("a"), text("b"), text("c"));
    f.add(&a, &[], None, &[]);
    f.add(&b, &[&a], None, &[]);
    f.add(&c, &[&b], None, &[]);
    f.roots.sync(&stamp(0, 0).holder, 1, vec![], true);
    let (id, _) = f.roots.begin_collection().unwrap();
    assert!(f.roots.add(&stamp(7, 2), [c.clone()]).is_settled());
    f.roots.close(&stamp(7, 3));
    let all = [(c.base_name(), true), (b.base_name(), true), (a.base_name(), true)];
    let entries: Vec<(&str, bool)> = all.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let o = f.run(id, &entries, KeepRules::default(), u64::MAX).unwrap();
    assert!(o.deleted.is_empty(), "{o:?}");
    assert_eq!(kept(&o, &c.base_name()), Some(KeptBecause::TempRoot));
    assert_eq!(kept(&o, &b.base_name()), Some(KeptBecause::KeepsKept));
    assert_eq!(kept(&o, &a.base_name()), Some(KeptBecause::KeepsKept));
    // A collection begun after the release may take them.
    f.roots.end_collection(id);
    let (id2, _) = f.roots.begin_collection().unwrap();
    assert_eq!(f.run(id2, &entries, KeepRules::default(), u64::MAX).unwrap().deleted.len(), 3);
}

#[test]
fn invalid_entries_locks_of_roots_validity_changes_and_reserved_names() {
    let mut f = fixture();
    let (a, out) = (text("a"), text("out"));
    f.add(&a, &[], None, &[]);
    let junk = f.layout.store_path.join("junk");
    std::fs::write(&junk, b"12345").unwrap();
    let lock = format!("{}.lock", out.base_name());
    std::fs::write(f.layout.store_path.join(&lock), b"").unwrap();
    std::fs::create_dir_all(f.layout.store_path.join(".links")).unwrap();
    f.roots.sync(&stamp(0, 0).holder, 1, vec![], true);
    let (id, _) = f.roots.begin_collection().unwrap();
    assert!(f.roots.add(&stamp(3, 2), [out.clone()]).is_settled());
    let o = f
        .run(
            id,
            &[
                ("junk", false),
                (&lock, false),
                (&a.base_name(), false),
                (".links", false),
                ("trash", false),
                ("absent", false),
            ],
            KeepRules::default(),
            u64::MAX,
        )
        .unwrap();
    assert_eq!(names(&o), vec!["junk".to_owned()]);
    assert_eq!(o.deleted[0].accounted, 5, "a file counts its size");
    assert_eq!(kept(&o, &lock), Some(KeptBecause::TempRoot));
    assert_eq!(kept(&o, &a.base_name()), Some(KeptBecause::ValidityChanged));
    assert_eq!(kept(&o, ".links"), Some(KeptBecause::Reserved));
    assert_eq!(kept(&o, "trash"), Some(KeptBecause::Reserved));
    assert_eq!(kept(&o, "absent"), Some(KeptBecause::Gone));
    assert!(f.db.is_valid(&a).unwrap());
}

#[test]
fn keep_rules_tie_derivations_and_outputs() {
    let mut f = fixture();
    let (d, o) = (drv("thing"), text("thing-out"));
    f.add(&d, &[], None, &[("out", &o)]);
    f.add(&o, &[], Some(&d), &[]);
    let (id, _) = f.roots.begin_collection().unwrap();
    let both = KeepRules { outputs: true, derivations: true };
    // keep-derivations: the valid output keeps its deriver.
    let r = f.run(id, &[(&d.base_name(), true)], KeepRules { outputs: false, derivations: true }, u64::MAX).unwrap();
    assert_eq!(kept(&r, &d.base_name()), Some(KeptBecause::LiveReferrer(o.to_string())));
    // keep-outputs: the valid deriver keeps its output.
    let r = f.run(id, &[(&o.base_name(), true)], KeepRules { outputs: true, derivations: false }, u64::MAX).unwrap();
    assert_eq!(kept(&r, &o.base_name()), Some(KeptBecause::LiveReferrer(d.to_string())));
    // Both: a cycle, deleted together in one batch.
    let r = f.run(id, &[(&d.base_name(), true), (&o.base_name(), true)], both, u64::MAX).unwrap();
    assert_eq!(r.deleted.len(), 2, "{r:?}");
    assert!(!f.db.is_valid(&d).unwrap() && !f.db.is_valid(&o).unwrap());
}

#[test]
fn max_freed_stops_after_the_entry_that_exceeds_it() {
    let mut f = fixture();
    let ps: Vec<StorePath> = (0..4).map(|i| text(&format!("p{i}"))).collect();
    for p in &ps {
        f.add(p, &[], None, &[]);
    }
    let (id, _) = f.roots.begin_collection().unwrap();
    let names_: Vec<String> = ps.iter().map(|p| p.base_name()).collect();
    let entries: Vec<(&str, bool)> = names_.iter().map(|n| (n.as_str(), true)).collect();
    // Each counts its NAR size, 1000: 0 → 1000 → 2000 > 1500 stops after the second.
    let o = f.run(id, &entries, KeepRules::default(), 1500).unwrap();
    assert!(o.limit_reached);
    assert_eq!(names(&o), names_[..2].to_vec());
    assert_eq!(kept(&o, &names_[2]), Some(KeptBecause::NotReached));
    assert!(f.db.is_valid(&ps[2]).unwrap() && f.exists(&ps[3]));
}

#[test]
fn the_limit_never_splits_a_path_from_its_referrer() {
    let mut f = fixture();
    let (a, b) = (text("a"), text("b"));
    f.add(&a, &[], None, &[]);
    f.add(&b, &[&a], None, &[]);
    let (id, _) = f.roots.begin_collection().unwrap();
    // A bad order (reference first) with a limit hit at the first entry: b stays, so a must.
    let o = f.run(id, &[(&a.base_name(), true), (&b.base_name(), true)], KeepRules::default(), 0).unwrap();
    assert!(o.deleted.is_empty(), "{o:?}");
    assert!(f.db.is_valid(&a).unwrap() && f.db.is_valid(&b).unwrap());
}

#[test]
fn an_unknown_collection_deletes_nothing_and_a_missing_valid_path_is_dropped() {
    let mut f = fixture();
    let a = text("a");
    f.add(&a, &[], None, &[]);
    assert_eq!(
        f.run(42, &[(&a.base_name(), true)], KeepRules::default(), u64::MAX).unwrap_err(),
        BatchError::UnknownCollection(42)
    );
    assert!(f.db.is_valid(&a).unwrap());
    std::fs::remove_dir_all(f.layout.store_path.join(a.base_name())).unwrap();
    let (id, _) = f.roots.begin_collection().unwrap();
    let o = f.run(id, &[(&a.base_name(), true)], KeepRules::default(), u64::MAX).unwrap();
    assert!(o.deleted.is_empty());
    assert_eq!(kept(&o, &a.base_name()), Some(KeptBecause::Gone));
    assert!(!f.db.is_valid(&a).unwrap());
}

#[test]
fn a_taken_trash_name_gets_another() {
    let mut f = fixture();
    let a = text("a");
    f.add(&a, &[], None, &[]);
    std::fs::create_dir_all(f.layout.store_path.join("trash").join(a.base_name())).unwrap();
    let (id, _) = f.roots.begin_collection().unwrap();
    let o = f.run(id, &[(&a.base_name(), true)], KeepRules::default(), u64::MAX).unwrap();
    assert_eq!(o.deleted[0].trashed_as, Some(format!("{}-1", a.base_name())));
}

#[test]
fn files_sharing_an_inode_count_once_in_the_order_deleted() {
    let mut f = fixture();
    // Two file items and a `.links` entry on one inode (deduplicated): 3 links.
    let (x, y) = (text("x"), text("y"));
    let links = f.layout.store_path.join(".links");
    std::fs::create_dir_all(&links).unwrap();
    std::fs::write(links.join("h"), vec![b'z'; 9000]).unwrap();
    for p in [&x, &y] {
        std::fs::hard_link(links.join("h"), f.layout.store_path.join(p.base_name())).unwrap();
    }
    let (id, _) = f.roots.begin_collection().unwrap();
    let mut batch = DeadBatch {
        collection: id,
        entries: [&x, &y].iter().map(|p| DeadEntry { name: p.base_name(), valid: false }).collect(),
        groups: Vec::new(),
        keep: KeepRules::default(),
        freed_before: 0,
        max_freed: u64::MAX,
        link_threshold: 2,
    };
    let o = delete_dead(&mut f.db, &f.roots, &f.layout, batch.clone()).unwrap();
    // The first sees 3 links (nothing freed), the second 2 (its size, as C++ counts it).
    assert_eq!(
        o.deleted.iter().map(|d| (d.accounted, d.freed_in_place)).collect::<Vec<_>>(),
        vec![(0, 0), (9000, 9000)]
    );
    assert!(o.deleted.iter().all(|d| d.trashed_as.is_none()));
    assert!(!f.exists(&x) && !f.exists(&y));
    assert_eq!(std::fs::metadata(links.join("h")).unwrap().nlink(), 1);
    batch.entries.clear();
    assert!(delete_dead(&mut f.db, &f.roots, &f.layout, batch).unwrap().deleted.is_empty());
}

/// A store of `n` dead chains `top_i → mid_i → leaf_i`, for every fifth chain a derivation
/// and its output referring to the leaf (one component under [`BOTH`]), and a live path
/// referring to the leaf of chain 7; the batch in the gc's order with its groups.
const BOTH: KeepRules = KeepRules { outputs: true, derivations: true };

fn chains(f: &mut Fixture, n: usize) -> (Vec<(String, bool)>, Vec<u32>, StorePath) {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let (mut tops, mut mids, mut leaves) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let (t, m, l) = (text(&format!("top{i}")), text(&format!("mid{i}")), text(&format!("leaf{i}")));
        f.add(&l, &[], None, &[]);
        f.add(&m, &[&l], None, &[]);
        f.add(&t, &[&m], None, &[]);
        tops.push(t);
        mids.push(m);
        leaves.push(l);
    }
    // A derivation and its output (referring to a leaf): with both keep rules each keeps the
    // other alive, one component of two.
    let mut paired = Vec::new();
    for i in (0..n.saturating_sub(1)).step_by(5) {
        let (d, o) = (drv(&format!("pair{i}")), text(&format!("out{i}")));
        f.add(&d, &[], None, &[("out", &o)]);
        f.add(&o, &[&leaves[i]], Some(&d), &[]);
        paired.push((i, d, o));
    }
    let live = text("live");
    f.add(&live, &[&leaves[7]], None, &[]);
    for t in &tops {
        groups.push(vec![t.base_name()]);
    }
    for (_, a, b) in &paired {
        groups.push(vec![a.base_name(), b.base_name()]);
    }
    for m in &mids {
        groups.push(vec![m.base_name()]);
    }
    for l in &leaves {
        groups.push(vec![l.base_name()]);
    }
    let sizes = groups.iter().map(|g| g.len() as u32).collect();
    (groups.into_iter().flatten().map(|n| (n, true)).collect(), sizes, live)
}

fn run_in_parts(f: &mut Fixture, batch: DeadBatch) -> (Result<DeleteOutcome, BatchError>, usize) {
    let mut run = DeadRun::new(batch).unwrap();
    let mut parts = 0;
    let mut size = PartSize::default();
    loop {
        parts += 1;
        match run.step(&mut f.db, &f.roots, &f.layout, &mut size) {
            Step::More(next) => run = next,
            Step::Done(o) => return (o, parts),
        }
    }
}

#[test]
fn a_batch_run_in_parts_decides_as_one_batch() {
    for max_freed in [u64::MAX, 250_500] {
        let (mut whole, mut parted) = (fixture(), fixture());
        let (entries, groups, _) = chains(&mut whole, 120);
        assert_eq!(chains(&mut parted, 120).0, entries);
        let batch = |f: &Fixture, groups: Vec<u32>| {
            let (id, _) = f.roots.begin_collection().unwrap();
            DeadBatch {
                collection: id,
                entries: entries.iter().map(|(n, v)| DeadEntry { name: n.clone(), valid: *v }).collect(),
                groups,
                keep: BOTH,
                freed_before: 500,
                max_freed,
                link_threshold: 1,
            }
        };
        let one = batch(&whole, Vec::new());
        let one = delete_dead(&mut whole.db, &whole.roots, &whole.layout, one).unwrap();
        let b = batch(&parted, groups);
        let (parts, n) = run_in_parts(&mut parted, b);
        let parts = parts.unwrap();
        assert!(n >= 4, "{n} parts");
        assert_eq!(names(&parts), names(&one), "max_freed {max_freed}");
        assert_eq!(parts.limit_reached, one.limit_reached);
        assert_eq!(parts.stopped, None);
        // Why: the same, but that an entry past the limit may be "not reached" in parts where
        // one batch looked at it first (chain 7's leaf, kept by the live path).
        let sorted = |o: &DeleteOutcome, why: bool| {
            let mut k: Vec<(String, Option<KeptBecause>)> =
                o.kept.iter().map(|(n, k)| (n.clone(), why.then(|| k.clone()))).collect();
            k.sort_by(|a, b| a.0.cmp(&b.0));
            k
        };
        let why = max_freed == u64::MAX;
        assert_eq!(sorted(&parts, why), sorted(&one, why));
        if max_freed == u64::MAX {
            // Everything but chain 7's leaf (which keeps nothing alive).
            assert_eq!(one.deleted.len(), entries.len() - 1);
        } else {
            // 250 directories of 1,000 bytes (the 24 `.drv` files count 8 bytes each).
            let dirs = one.deleted.iter().filter(|d| d.is_dir).count();
            assert!(one.limit_reached && dirs == 250, "{dirs}");
        }
    }
}

#[test]
fn malformed_groups_are_refused_before_anything() {
    let mut f = fixture();
    let (entries, mut groups, _) = chains(&mut f, 10);
    let (id, _) = f.roots.begin_collection().unwrap();
    groups[0] += 1;
    let batch = DeadBatch {
        collection: id,
        entries: entries.iter().map(|(n, v)| DeadEntry { name: n.clone(), valid: *v }).collect(),
        groups,
        keep: KeepRules::default(),
        freed_before: 0,
        max_freed: u64::MAX,
        link_threshold: 1,
    };
    assert!(matches!(DeadRun::new(batch), Err(BatchError::Failed(m)) if m.contains("malformed batch")));
}

#[test]
fn a_failure_after_a_part_reports_what_went() {
    let mut f = fixture();
    let (entries, groups, _) = chains(&mut f, 40);
    let (id, _) = f.roots.begin_collection().unwrap();
    // The last leaf cannot be looked at: its parent is not searchable... as root, a name too
    // long for the file system is what fails `lstat` (ENAMETOOLONG) for anyone.
    let mut entries: Vec<DeadEntry> = entries.iter().map(|(n, v)| DeadEntry { name: n.clone(), valid: *v }).collect();
    let mut groups = groups;
    entries.push(DeadEntry { name: "x".repeat(300), valid: false });
    groups.push(1);
    let batch = DeadBatch {
        collection: id,
        entries,
        groups,
        keep: KeepRules::default(),
        freed_before: 0,
        max_freed: u64::MAX,
        link_threshold: 1,
    };
    let (o, parts) = run_in_parts(&mut f, batch);
    let o = o.unwrap();
    assert!(parts > 1);
    assert!(o.stopped.as_deref().is_some_and(|m| m.contains("getting status of")), "{:?}", o.stopped);
    assert!(!o.deleted.is_empty());
    for d in &o.deleted {
        let p = StorePath::from_base_name(&d.name).unwrap();
        assert!(!f.db.is_valid(&p).unwrap() && !f.exists(&p));
    }
}

#[test]
fn requests_queued_meanwhile_run_between_the_parts_of_a_batch() {
    use super::super::writer::{new, Job, WriterOptions};
    let mut f = fixture();
    let (entries, groups, _) = chains(&mut f, 60);
    let (id, _) = f.roots.begin_collection().unwrap();
    let batch = DeadBatch {
        collection: id,
        entries: entries.iter().map(|(n, v)| DeadEntry { name: n.clone(), valid: *v }).collect(),
        groups,
        keep: BOTH,
        freed_before: 0,
        max_freed: u64::MAX,
        link_threshold: 1,
    };
    let Fixture { _dir, db, layout, roots } = f;
    let writer = new(db, layout, WriterOptions::default());
    let (done, mut outcome) = tokio::sync::oneshot::channel();
    let run = Box::new(DeadRun::new(batch).unwrap());
    writer.push(Job::DeleteDead { run, roots: std::sync::Arc::new(roots), reply: done });
    // A turn on a runtime worker (a caller's) runs no part: left for the blocking pool.
    let stats =
        |w: &super::super::writer::WriterHandle| w.stats().transactions.load(std::sync::atomic::Ordering::SeqCst);
    let before = stats(&writer);
    assert!(writer.combine_round(true));
    assert_eq!(stats(&writer), before, "no part ran on the caller's thread");
    // One turn of the writer: one part, the rest queued again.
    assert!(writer.combine_once());
    assert_eq!(stats(&writer), before + 1);
    assert!(outcome.try_recv().is_err());
    let (tx, mut cleared) = tokio::sync::oneshot::channel();
    writer.push(Job::ClearFailed { paths: Vec::new(), reply: tx });
    // The next turn runs the request queued meanwhile, then one more part.
    assert!(writer.combine_once());
    assert_eq!(cleared.try_recv(), Ok(Ok(())));
    assert!(outcome.try_recv().is_err(), "the whole batch ran in one turn");
    let mut turns = 2;
    while writer.combine_once() {
        turns += 1;
    }
    let o = outcome.try_recv().unwrap().unwrap();
    assert_eq!(o.deleted.len(), entries.len() - 1);
    assert!(turns >= 3, "{turns}");
}

#[test]
fn part_sizes_follow_what_the_parts_took() {
    let mut size = PartSize::default();
    let first = size.entries();
    size.took(DEAD_PART_TARGET * 3);
    assert_eq!(size.entries(), first / 2);
    size.took(DEAD_PART_TARGET / 2);
    assert_eq!(size.entries(), first / 2, "within the target: kept");
    size.took(DEAD_PART_TARGET / 8);
    assert_eq!(size.entries(), first);
    for _ in 0..20 {
        size.took(DEAD_PART_TARGET * 2);
    }
    assert_eq!(size.entries(), 1, "a whole group at least");
    for _ in 0..20 {
        size.took(std::time::Duration::ZERO);
    }
    assert_eq!(size.entries(), PartSize::MAX);
}

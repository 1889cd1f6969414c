//! The operations that read the database or need no store change: each request decoded by
//! `guix_formats::worker` becomes a [`Reply`] or a [`Failure`] with the C++ daemon's message.
//! Additions live in [`crate::add`], export and import in [`crate::transfer`], builds in
//! [`crate::build`], garbage collection and deduplication in [`crate::gc`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use guix_formats::worker::{Reply, Request};
use guix_formats::{nar, StorePath};

use crate::backend::StoreBackend;
use crate::conn::{path_info_reply, Conn, Stream};
use crate::error::Failure;
use guix_store::roots;

impl<S: Stream, B: StoreBackend> Conn<S, B> {
    pub(crate) async fn handle(&mut self, req: Request) -> Result<Reply, Failure> {
        use Request as Q;
        let shared = self.shared.clone();
        let db = &shared.backend;
        match req {
            Q::IsValidPath(s) => {
                let store = self.shared.store.clone();
                match store.parse(&s) {
                    Ok(p) => Ok(Reply::Bool(db.is_valid(&p)?)),
                    // `isStorePath` holds but no valid hash/name: simply not valid.
                    Err(_) if store.is_in_store_syntax(&s) => Ok(Reply::Bool(false)),
                    Err(_) => Err(Failure::Op(format!("path `{s}' is not in the store"))),
                }
            }
            Q::HasSubstitutes(p) => self.has_substitutes(p).await,
            Q::QueryPathHash(p) => Ok(Reply::Hash(db.path_info(&p)?.info.nar_hash)),
            Q::QueryReferences(p) => Ok(Reply::Paths(db.path_info(&p)?.info.references.clone())),
            Q::QueryReferrers(p) => Ok(Reply::Paths(db.run(move |r| r.referrers(&p)).await?)),
            Q::QueryDeriver(p) => Ok(Reply::OptPath(db.path_info(&p)?.info.deriver.clone())),
            Q::QueryValidDerivers(p) => Ok(Reply::Paths(db.query(|r| r.valid_derivers(&p))?)),
            Q::QueryDerivationOutputs(p) => Ok(Reply::Paths(db.query(|r| r.derivation_outputs(&p))?)),
            Q::QueryDerivationOutputNames(p) => {
                Ok(Reply::Strings(db.query(|r| r.derivation_output_names(&p))?.into_iter().collect()))
            }
            Q::QueryPathFromHashPart(h) => Ok(Reply::OptPath(db.query(|r| r.path_from_hash_part(&h))?)),
            Q::QueryAllValidPaths => Ok(Reply::Paths(db.run(|r| r.all_valid_paths()).await?)),
            Q::QueryFailedPaths => Ok(Reply::Paths(db.run(|r| r.failed_paths()).await?)),
            Q::QueryValidPaths(ps) => Ok(Reply::Paths(db.run(move |r| r.valid_paths(&ps)).await?)),
            Q::QueryPathInfo(p) => Ok(Reply::PathInfo(path_info_reply(&db.path_info(&p)?.info))),
            Q::QuerySubstitutablePathInfo(s) => self.substitutable_info(s).await,
            Q::QuerySubstitutablePathInfos(ps) => self.substitutable_infos(ps).await,
            Q::QuerySubstitutablePaths(ps) => self.substitutable_paths(ps).await,
            Q::ClearFailedPaths(ss) => {
                let store = self.shared.store.clone();
                let paths: Vec<StorePath> = ss.iter().filter_map(|s| store.parse(s).ok()).collect();
                if !paths.is_empty() {
                    db.clear_failed_paths(paths).await?;
                }
                Ok(Reply::Done)
            }
            Q::AddTempRoot(p) => {
                db.add_temp_roots(self.id, vec![p]).await?;
                Ok(Reply::Done)
            }
            Q::AddIndirectRoot(s) => {
                db.add_indirect_root(abs_path(&s)).await?;
                Ok(Reply::Done)
            }
            Q::SyncWithGC => Ok(Reply::Done),
            Q::FindRoots => {
                let state = self.shared.config.paths.state_dir.clone();
                let store = self.shared.store.clone();
                let found = db
                    .run(move |r| {
                        let mut is_valid =
                            |p: &StorePath| r.is_valid(p).map_err(|e| std::io::Error::other(e.to_string()));
                        Ok(roots::find_roots(&state, &store, &mut is_valid))
                    })
                    .await?
                    .map_err(|e| Failure::Op(e.to_string()))?;
                Ok(Reply::Roots(found.into_iter().collect()))
            }
            Q::SetOptions(o) => {
                let (trusted, remote) = (self.trusted, self.peer.is_remote());
                self.settings.apply(&o, trusted, remote).map_err(Failure::Fatal)?;
                Ok(Reply::Nothing)
            }
            Q::BuiltinBuilders => Ok(Reply::Strings(vec!["download".into(), "git-download".into()])),
            Q::SubstituteURLs => Ok(Reply::Strings(self.settings.substitute_urls())),
            Q::OptimiseStore => self.optimise_store().await,
            Q::VerifyStore { check_contents, repair } => self.verify_store(check_contents, repair).await,
            Q::EnsurePath(p) => self.ensure_path(p).await,
            Q::BuildPaths { paths, mode } => self.build_paths(paths, mode).await,
            Q::CollectGarbage(g) => self.collect_garbage(g).await,
            Q::AddTextToStore { name, contents, references } => self.add_text(name, contents, references).await,
            Q::ExportPath { path, sign } => self.export_path(path, sign).await,
            Q::ImportPaths => self.import_paths().await,
            Q::AddToStore { .. } => Err(Failure::fatal("AddToStore is handled before decoding")),
        }
    }

    /// VerifyStore (35): every valid path must exist; with `check_contents`, its NAR hash must
    /// match the database; with `repair`, a path that fails either is repaired
    /// ([`Conn::repair_path`]). Returns whether errors remain.
    async fn verify_store(&mut self, check_contents: bool, repair: bool) -> Result<Reply, Failure> {
        if repair && !self.trusted {
            return Err(Failure::op("you are not privileged to repair paths"));
        }
        self.log("reading the store...").await?;
        self.log("checking path existence...").await?;
        let store = self.shared.store.clone();
        let store_dir = self.shared.config.paths.store_dir.clone();
        let shared = self.shared.clone();
        let db = &shared.backend;
        let check = db
            .run(move |r| {
                let all = r.all_valid_paths()?;
                let present = |p: &StorePath| std::fs::symlink_metadata(store_dir.join(p.base_name())).is_ok();
                check_existence(&all, present, |p| r.referrers(p), &store)
            })
            .await?;
        for m in &check.messages {
            self.log(m).await?;
        }
        if !check.invalidate.is_empty() {
            db.invalidate_missing(check.invalidate).await?;
        }
        // With repair, a disappeared path is an error only if it could not be repaired.
        let (mut errors, valid) = (check.errors && !repair, check.valid);
        // C++ `verifyPath` with repair: a disappeared path with valid referrers is repaired
        // (after all messages of the existence pass: they come from one read of the database).
        if repair {
            for p in check.still_referred {
                if let Some(message) = self.repair_path(&p).await? {
                    self.log(&format!("warning: {message}")).await?;
                    errors = true;
                }
            }
        }
        if check_contents {
            self.log("checking hashes...").await?;
            for p in valid {
                let store = self.shared.store.clone();
                let on_disk: PathBuf = self.shared.config.paths.store_dir.join(p.base_name());
                let shown = store.display(&p);
                let q = p.clone();
                let info = db.run(move |r| r.try_path_info(&q)).await?;
                let Some(info) = info else { continue };
                let current = tokio::task::spawn_blocking(move || nar::dump_path(&on_disk, &mut std::io::sink()))
                    .await
                    .map_err(|e| Failure::Op(e.to_string()))?;
                match current {
                    Ok(sum) if sum.nar_hash != info.nar_hash => {
                        self.log(&format!(
                            "path `{shown}' was modified! expected hash `{}', got `{}'",
                            info.nar_hash.to_base16(),
                            sum.nar_hash.to_base16()
                        ))
                        .await?;
                        match repair {
                            // C++: `repairPath`'s error is caught as the path's ("error: …").
                            true => {
                                if let Some(message) = self.repair_path(&p).await? {
                                    self.log(&format!("error: {message}")).await?;
                                    errors = true;
                                }
                            }
                            false => errors = true,
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.log(&format!("error: {e}")).await?;
                        errors = true;
                    }
                }
            }
        }
        Ok(Reply::Bool(errors))
    }
}

/// What the existence pass of VerifyStore found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Existence {
    /// The log lines, in the C++ daemon's order.
    messages: Vec<String>,
    /// Some path disappeared but could not be invalidated.
    errors: bool,
    /// The paths present on disk, in order.
    valid: Vec<StorePath>,
    /// The disappeared paths to invalidate, referrers first.
    invalidate: Vec<StorePath>,
    /// The disappeared paths that present paths still refer to, in the order reported.
    still_referred: Vec<StorePath>,
}

/// C++ `verifyPath` over every valid path, without repair. A disappeared path is invalidated
/// ("disappeared, removing from database...") unless a referrer other than itself is present
/// on disk ("disappeared, but it still has valid referrers!", an error); its disappeared
/// referrers are handled first, depth first, as the C++ recursion does (here with an explicit
/// stack, so a long chain of missing paths cannot overflow ours).
fn check_existence<E>(
    all: &BTreeSet<StorePath>,
    present: impl Fn(&StorePath) -> bool,
    mut referrers: impl FnMut(&StorePath) -> Result<BTreeSet<StorePath>, E>,
    store: &guix_formats::StoreDir,
) -> Result<Existence, E> {
    let mut out = Existence::default();
    let mut done: BTreeSet<StorePath> = BTreeSet::new();
    // A missing path being handled: its referrers still to visit, and whether one is present.
    struct Frame {
        path: StorePath,
        pending: std::collections::btree_set::IntoIter<StorePath>,
        referred_by_valid: bool,
    }
    let frame = |p: StorePath, referrers: &mut dyn FnMut(&StorePath) -> Result<BTreeSet<StorePath>, E>| {
        let mut refs = referrers(&p)?;
        refs.remove(&p);
        let referred_by_valid = refs.iter().any(&present);
        Ok::<Frame, E>(Frame { path: p, pending: refs.into_iter(), referred_by_valid })
    };
    for p in all {
        if !done.insert(p.clone()) {
            continue;
        }
        if present(p) {
            out.valid.push(p.clone());
            continue;
        }
        let mut stack = vec![frame(p.clone(), &mut referrers)?];
        while let Some(top) = stack.last_mut() {
            if let Some(r) = top.pending.next() {
                if done.insert(r.clone()) {
                    if present(&r) {
                        out.valid.push(r);
                    } else {
                        stack.push(frame(r, &mut referrers)?);
                    }
                }
                continue;
            }
            let Some(f) = stack.pop() else { break };
            let shown = store.display(&f.path);
            if f.referred_by_valid {
                out.messages.push(format!("path `{shown}' disappeared, but it still has valid referrers!"));
                out.errors = true;
                out.still_referred.push(f.path);
            } else {
                out.messages.push(format!("path `{shown}' disappeared, removing from database..."));
                out.invalidate.push(f.path);
            }
        }
    }
    out.valid.sort();
    Ok(out)
}

/// `absPath(s)` relative to the daemon's working directory `/`, then `canonPath`: `.` and
/// `..` resolved lexically, duplicate slashes removed.
pub fn abs_path(s: &str) -> String {
    guix_formats::path::abs_path(s, Path::new("/")).to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use guix_formats::{StoreDir, StorePath};

    use super::{abs_path, check_existence};

    #[test]
    fn existence_follows_cxx_verify_path() {
        let store = StoreDir::new("/gnu/store").unwrap();
        let p = |h: char, n: &str| store.parse(&format!("/gnu/store/{}-{n}", h.to_string().repeat(32))).unwrap();
        // a ← b ← c, c missing and b missing: c first (no referrers), then b; a present.
        // d ← e, d missing but e present: d stays, an error. f refers to itself and is missing.
        let (a, b, c, d, e, f) = (p('0', "a"), p('1', "b"), p('2', "c"), p('3', "d"), p('4', "e"), p('5', "f"));
        let referrers: BTreeMap<StorePath, BTreeSet<StorePath>> = [
            (a.clone(), [b.clone(), c.clone()].into()),
            (b.clone(), [c.clone()].into()),
            (d.clone(), [e.clone()].into()),
            (f.clone(), [f.clone()].into()),
        ]
        .into();
        let all: BTreeSet<StorePath> = [&a, &b, &c, &d, &e, &f].into_iter().cloned().collect();
        let present: BTreeSet<StorePath> = [a.clone(), e.clone()].into();
        let out = check_existence(
            &all,
            |x| present.contains(x),
            |x| Ok::<_, ()>(referrers.get(x).cloned().unwrap_or_default()),
            &store,
        )
        .unwrap();
        let shown = |x: &StorePath| store.display(x);
        assert_eq!(
            out.messages,
            vec![
                format!("path `{}' disappeared, removing from database...", shown(&c)),
                format!("path `{}' disappeared, removing from database...", shown(&b)),
                format!("path `{}' disappeared, but it still has valid referrers!", shown(&d)),
                format!("path `{}' disappeared, removing from database...", shown(&f)),
            ]
        );
        assert!(out.errors);
        assert_eq!(out.valid, vec![a, e]);
        assert_eq!(out.invalidate, vec![c, b, f]);
    }

    #[test]
    fn abs_path_is_canonical() {
        assert_eq!(abs_path("/a//b/./c/../d"), "/a/b/d");
        assert_eq!(abs_path("rel/x"), "/rel/x");
        assert_eq!(abs_path("../.."), "/");
        assert_eq!(abs_path(""), "/");
    }
}

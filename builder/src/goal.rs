//! One derivation's build (C++ `DerivationGoal`): load the derivation, realise its inputs,
//! take a build slot, a build user and the output locks, run the builder with its log and
//! time limits, process the outputs and register them through store-db in one transaction.
//!
//! Output locks: the builder holds the C++ daemon's `<out>.lock` files (POSIX locks) for the
//! whole build, so neither another build of ours nor a C++ daemon on the same store builds the
//! same output at once. store-db takes no such files when it registers (see
//! ARCHITECTURE.md), so the two cannot deadlock: the builder holds its locks while it waits
//! for store-db, and store-db waits for nothing the builder holds.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use guix_formats::derivation::{drv_name, Derivation};
use guix_formats::StorePath;
use guix_ipc::builder::{BuildEvent, BuildMode};
use guix_store::files::{lock_file, LockType};
use tokio::io::AsyncReadExt;

use crate::error::{Error, FailureKind, IoContext, Result};
use crate::log::BuildLog;
use crate::outputs::{self, OutputsSpec, ProcessedOutputs};
use crate::sandbox::{self, SandboxSettings, StartSpec};
use crate::schedule::{closure_of, Builder, Job, Outcome};
use crate::slots::{Preparing, SlotKey};
use crate::substitute::Tally;
use crate::users::{Picked, UserPool};
use guix_ipc::substituter::Outcome as SubstOutcome;

/// C++ `lvlError`, `lvlInfo`, `lvlDebug`.
const LVL_ERROR: u32 = 0;
const LVL_INFO: u32 = 1;
const LVL_DEBUG: u32 = 4;

/// Builds `drv` (its outputs that are not valid) for the requests waiting on its goal; `job`
/// is the request that started the goal (its settings) and the sink of its events.
pub async fn run(
    b: &Arc<Builder>,
    job: &Arc<Job>,
    drv_path: &StorePath,
    mode: BuildMode,
    depth: u32,
    prep: Preparing,
) -> Result<()> {
    let shown = b.store.display(drv_path);
    // The goal's turn or preparing guard, if it holds one when it ends (see `slots`): its
    // failure is reported before the next goal acts.
    let mut step = Some(prep);
    let key = (depth, drv_name(drv_path).unwrap_or_default().to_owned(), drv_path.clone());
    let result = build(b, job, drv_path, mode, &key, &mut step).await;
    if let Err(e) = &result {
        if let Some(s) = &step {
            s.visible().await;
        }
        report(job, &shown, e);
    }
    drop(step);
    result
}

/// Picks a free build user in grant order (see `slots`), as C++ gives the first user to the
/// first build it starts.
async fn pick_user(pool: &Arc<UserPool>, step: &Option<Preparing>) -> Result<Option<Picked>> {
    match step {
        Some(s) => s.in_order(|| pool.pick()).await,
        None => pool.pick(),
    }
}

/// Waits for the goal's turn (see `slots`), holding it in `step`.
async fn take_turn(job: &Arc<Job>, key: &SlotKey, step: &mut Option<Preparing>) {
    let prep = step.take().unwrap_or_else(|| job.slots.preparing());
    *step = Some(job.slots.turn(key.clone(), prep).await);
}

/// What C++ prints when a goal fails: the message (`printMsg(lvlError, …)`) and, with
/// `print-build-trace`, the `@ build-failed` trace — except for failures that are no
/// `BuildError` in C++ ([`FailureKind::Misc`] and our own errors), which escape the worker and
/// become the request's error, and for a failed dependency, which has no trace.
fn report(job: &Arc<Job>, shown: &str, e: &Error) {
    let message = e.to_string();
    if let Error::HashMismatch(h) = e {
        job.trace(|| h.trace());
    }
    match e.failure_kind() {
        None | Some(FailureKind::Misc) => {}
        // Already reported where it happened.
        Some(_) if matches!(e, Error::Reported(_)) => {}
        Some(FailureKind::DependencyFailed) => job.message(LVL_ERROR, message),
        Some(kind) => {
            job.message(LVL_ERROR, message.clone());
            job.trace(|| match kind {
                FailureKind::TimedOut => format!("@ build-failed {shown} - timeout"),
                FailureKind::Cached => format!("@ build-failed {shown} - cached"),
                _ => format!("@ build-failed {shown} - 1 {message}"),
            });
        }
    }
}

/// `step` holds the goal's preparing guard (see `slots`) while it prepares: until it waits
/// for its inputs, and again from their end to its place in the slot queue; then the guard of
/// its slot until the build started, or its turn to report a failure.
async fn build(
    b: &Arc<Builder>,
    job: &Arc<Job>,
    drv_path: &StorePath,
    mode: BuildMode,
    key: &SlotKey,
    step: &mut Option<Preparing>,
) -> Result<()> {
    let shown = b.store.display(drv_path);
    let drv = match load(b, drv_path).await {
        Ok(d) => d,
        Err(e) => {
            take_turn(job, key, step).await;
            return Err(e);
        }
    };
    let outputs: BTreeMap<String, StorePath> =
        drv.output_paths().filter_map(|(n, p)| Some((n.as_str().to_owned(), p?.clone()))).collect();

    // Which outputs to build (check mode: all, which must be valid).
    let mut missing = missing_outputs(b, &outputs).await?;
    if mode == BuildMode::Repair {
        // C++ `checkPathValidity(false, true)`: valid outputs whose contents are not the
        // registered ones are rebuilt too.
        missing.extend(corrupt_outputs(b, job, &outputs, &missing).await?);
    }
    if mode == BuildMode::Check && !missing.is_empty() {
        take_turn(job, key, step).await;
        return Err(Error::build(
            FailureKind::Misc,
            format!("`{shown}' is missing outputs; build it normally before using `--check'"),
        ));
    }
    if missing.is_empty() && mode != BuildMode::Check {
        return Ok(());
    }
    if job.settings.cache_failures {
        if let Err(e) = check_cached_failures(b, &missing).await {
            take_turn(job, key, step).await;
            return Err(e);
        }
    }

    // Substitutes before building (C++ `haveDerivation`, `outputsSubstituted`).
    // Repair too (C++ `SubstitutionGoal`s with repair for the corrupt outputs).
    let substituting = mode != BuildMode::Check && substitutes_allowed(&drv);
    let mut retry_substitution = false;
    if substituting {
        match substitute_outputs(b, job, drv_path, &missing, mode, step).await {
            Ok(Substituted::All) => return Ok(()),
            Ok(Substituted::IncompleteClosure) => retry_substitution = true,
            Ok(Substituted::Some) => {}
            Err(e) => {
                take_turn(job, key, step).await;
                return Err(e);
            }
        }
    }

    // Inputs first: every input derivation's used outputs, and the input sources.
    let prep = step.take().unwrap_or_else(|| job.slots.preparing());
    let inputs = match realise_inputs(b, job, drv_path, &drv, prep).await {
        Ok((inputs, prep)) => {
            *step = Some(prep);
            inputs
        }
        Err(e) => {
            take_turn(job, key, step).await;
            return Err(e);
        }
    };
    // A reference of an output had no substitute: with the inputs there now, once more
    // (C++ `retrySubstitution`).
    if retry_substitution {
        let missing = missing_outputs(b, &outputs).await?;
        match substitute_outputs(b, job, drv_path, &missing, mode, step).await {
            Ok(Substituted::All) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                take_turn(job, key, step).await;
                return Err(e);
            }
        }
    }
    let extra_files = match references_graphs(b, &drv).await {
        Ok(f) => f,
        Err(e) => {
            take_turn(job, key, step).await;
            return Err(e);
        }
    };

    // A build slot, then a build user (we wait for one instead of failing as C++ does).
    if job.settings.max_jobs == 0 {
        take_turn(job, key, step).await;
        return Err(Error::build(
            FailureKind::Misc,
            "unable to start any build; either increase `--max-jobs' or enable distributed builds",
        ));
    }
    let prep = step.take().unwrap_or_else(|| job.slots.preparing());
    let (_slot, starting) = job.slots.acquire(key.clone(), prep).await;
    *step = Some(starting);
    // The daemon's own time per build, printed with `--debug` (bench/README.md).
    let granted = Instant::now();
    let mut started_in = Duration::ZERO;
    let mut exit_to_valid = None;
    // Whether every kill of the build user's processes after a round succeeded.
    let mut all_killed = true;
    let mut user = match &b.users {
        Some(Ok(pool)) => Some(match pick_user(pool, step).await? {
            Some(p) => p.ready().await?,
            None => {
                // Waiting for a user another grantee may hold: later grants act meanwhile.
                *step = None;
                pool.acquire().await?
            }
        }),
        Some(Err(e)) => return Err(Error::Setup(e.clone())),
        None => None,
    };

    // The output locks, then validity again: someone may have built them meanwhile.
    let locks = lock_outputs(b, job, &outputs, step).await?;
    let missing = missing_outputs(b, &outputs).await?;
    if missing.is_empty() && mode == BuildMode::Normal {
        locks.release(true);
        return Ok(());
    }
    let to_build: BTreeMap<String, StorePath> = match mode {
        BuildMode::Normal => missing,
        _ => outputs.clone(),
    };

    // C++ `nrRounds`: `--rounds` (build-repeat + 1) for a normal build, one for a
    // fixed-output derivation or a check.
    let rounds =
        if mode == BuildMode::Normal && !crate::outputs::all_outputs_fixed(&drv) { job.settings.repeat + 1 } else { 1 };
    let what = to_build.values().map(|p| format!("`{}'", b.store.display(p))).collect::<Vec<_>>().join(", ");
    let system = String::from_utf8_lossy(&drv.platform).into_owned();
    let keep_failed = job.settings.keep_failed;
    // A check without a chroot (a builtin, or `--disable-chroot`) must not touch the valid
    // outputs: the build makes them at other paths (C++ `addHashRewrite`).
    let settings = sandbox_settings(b, job);
    // A repair the same way: the corrupt outputs are replaced only once the new ones are
    // complete (store-db `ReplaceItems`).
    let redirects: BTreeMap<StorePath, StorePath> =
        if mode != BuildMode::Normal && (!settings.use_chroot || drv.is_builtin()) {
            outputs.values().filter_map(|p| Some((p.clone(), sandbox::rewrite_path(&b.store, drv_path, p)?))).collect()
        } else {
            BTreeMap::new()
        };
    let mut previous: Option<ProcessedOutputs> = None;
    for round in 1..=rounds {
        let spec = StartSpec {
            drv_path: drv_path.clone(),
            drv: drv.clone(),
            outputs: outputs.clone(),
            redirects: redirects.clone(),
            input_paths: inputs.clone(),
            user: user.as_ref().map(|u| (u.uid, u.gid, u.groups.clone())),
            extra_files: extra_files.clone(),
            settings: settings.clone(),
        };
        let building = match mode {
            BuildMode::Repair => format!("repairing path(s) {what}"),
            BuildMode::Check => format!("checking path(s) {what}"),
            BuildMode::Normal if rounds > 1 => format!("building path(s) {what} (round {round}/{rounds})"),
            BuildMode::Normal => format!("building path(s) {what}"),
        };
        // Set up while earlier grants act; shown in grant order (`slots`), the message first
        // even when the set-up failed, as C++ prints it before it starts.
        let set_up = async {
            let log = BuildLog::create(&b.config.paths.log_dir, drv_path, b.config.log_compression, b.config.keep_log)?;
            Ok::<_, Error>((log, sandbox::start(spec).await?))
        }
        .await;
        if round == 1 {
            started_in = granted.elapsed();
        }
        if let Some(s) = step.as_ref() {
            s.visible().await;
        }
        job.message(LVL_INFO, building);
        let (mut log, mut started) = set_up?;
        for note in started.notes.drain(..) {
            job.message(LVL_ERROR, note);
        }
        job.trace(|| format!("@ build-started {shown} - {system} {} {}", log.trace_path(), started.pid));
        // Started: the next goal of the request may act.
        *step = None;

        let ended = supervise(job, &shown, &mut started, &mut log).await;
        let exited_at = Instant::now();
        let _ = log.finish();
        let status = match ended {
            Ok(status) => status,
            Err(e) => {
                started.kill();
                let _ = started.wait().await;
                let _ = started.layout.cleanup(false, job.settings.client_uid);
                return Err(e);
            }
        };
        // Nothing of the build may run on once its builder ended (C++ `killUser`; not needed
        // when its PID namespace is gone).
        if let Some(u) = user.as_ref().filter(|_| !started.nothing_left_running()) {
            let uid = u.uid;
            let killed = tokio::task::spawn_blocking(move || crate::users::kill_user(uid)).await;
            // Not known to run nothing: when released, it is killed again before it is freed.
            all_killed &= matches!(killed, Ok(Ok(())));
        }

        if !status.success() {
            let message = format!("builder for `{shown}' {}", sandbox::status_to_string(&status));
            let kind = if drv.is_fixed_output() { FailureKind::Transient } else { FailureKind::Permanent };
            if mode == BuildMode::Normal {
                keep_failed_outputs(b, &started.layout, &to_build);
            }
            if let Some(note) = started.layout.cleanup(keep_failed, job.settings.client_uid)? {
                job.message(LVL_ERROR, note);
            }
            if let Some(u) = user.take() {
                u.release(all_killed);
            }
            if kind == FailureKind::Permanent && job.settings.cache_failures {
                cache_failure(b, job, &to_build).await;
            }
            return Err(Error::build(kind, message));
        }
        let build_uid = user.as_ref().map(|u| u.uid);

        if mode == BuildMode::Check {
            // Built again: compared with the valid outputs, nothing registered.
            for p in outputs.values().filter(|p| redirects.contains_key(p)) {
                if fs::symlink_metadata(started.layout.output_location(p)).is_ok() {
                    job.message(
                        LVL_ERROR,
                        format!("warning: rewriting hashes in `{}'; cross fingers", b.store.display(p)),
                    );
                }
            }
            let checked = check(b, drv_path, &drv, &outputs, &started, build_uid, keep_failed).await;
            // C++ `buildDone` deletes what the build made at the redirected paths once the
            // check passed; a failed check leaves it in the store, invalid.
            for p in outputs.values() {
                if checked.is_ok() && redirects.contains_key(p) {
                    let at = started.layout.output_location(p);
                    if fs::symlink_metadata(&at).is_ok() {
                        let _ = guix_store::files::delete_tree(&at);
                    }
                }
            }
            let keep = checked.is_err() && keep_failed;
            if let Some(note) = started.layout.cleanup(keep, job.settings.client_uid)? {
                job.message(LVL_ERROR, note);
            }
            return match checked {
                Ok(()) => {
                    locks.release(true);
                    // C++ reports a successful check twice (after the build and the check).
                    job.trace(|| format!("@ build-succeeded {shown} -"));
                    job.trace(|| format!("@ build-succeeded {shown} -"));
                    Ok(())
                }
                // A plain `Error` in C++ (not a `BuildError`): the request fails with it.
                Err(Error::Build { kind: FailureKind::NotDeterministic, message }) => {
                    Err(Error::build(FailureKind::Misc, message))
                }
                Err(e) => Err(e),
            };
        }

        // The outputs: checked, scanned, moved to scratch space.
        let processed = process(b, drv_path, &drv, &to_build, &outputs, &inputs, &started, build_uid).await;
        let processed = match processed {
            Ok(p) => p,
            Err(e) => {
                if let Some(note) = started.layout.cleanup(keep_failed, job.settings.client_uid)? {
                    job.message(LVL_ERROR, note);
                }
                // C++ caches every `BuildError` of a build that is not fixed-output.
                let cached = e.failure_kind().is_some_and(|k| k != FailureKind::Misc);
                if cached && job.settings.cache_failures && !crate::outputs::all_outputs_fixed(&drv) {
                    cache_failure(b, job, &to_build).await;
                }
                return Err(e);
            }
        };
        if let Some(prev) = previous.take() {
            if let Err(e) = crate::outputs::compare_rounds(&b.store, drv_path, &drv, prev, &processed, keep_failed) {
                // C++ moved this round's outputs into the store before comparing: they stay
                // there, invalid; the failure is reported before the kept directory's note.
                leave_in_store(b, &processed);
                report(job, &shown, &e);
                if let Some(note) = started.layout.cleanup(keep_failed, job.settings.client_uid)? {
                    job.message(LVL_ERROR, note);
                }
                if job.settings.cache_failures {
                    cache_failure(b, job, &to_build).await;
                }
                return Err(Error::Reported(e.failure_kind().unwrap_or(FailureKind::NotDeterministic)));
            }
        }
        if round < rounds {
            started.layout.cleanup(false, job.settings.client_uid)?;
            previous = Some(processed);
            continue;
        }
        let registered = async {
            // The last round's outputs only, as C++ `optimisePath` in `registerOutputs`.
            let processed = deduplicate(b, job, processed).await?;
            // Every output in one transaction; they become temp roots of the request first.
            // A repair replaces the valid outputs' files (C++ `replaceValidPath`).
            let items = processed.hand_over();
            let registered = if mode == BuildMode::Repair {
                b.storedb.replace_items(job.conn, items).await
            } else {
                b.storedb.add_items(job.conn, items).await
            };
            registered.map_err(|e| Error::build(FailureKind::Misc, e.client_text("store-db")))
        }
        .await;
        if registered.is_ok() {
            exit_to_valid = Some(exited_at.elapsed());
        }
        // The build directory goes after the registration, as C++ `deleteTmpDir` after
        // `registerOutputs`: the outputs are valid sooner.
        started.layout.cleanup(false, job.settings.client_uid)?;
        registered?;
    }
    // Free for the next build before this one's slot is (C++ releases it in `buildDone`).
    if let Some(u) = user.take() {
        u.release(all_killed);
    }
    locks.release(true);
    if b.config.debug {
        eprintln!(
            "guix-builder: timing {shown}: {:.2} ms from slot to builder start, {:.2} ms from builder exit to valid outputs",
            started_in.as_secs_f64() * 1e3,
            exit_to_valid.unwrap_or_default().as_secs_f64() * 1e3
        );
    }
    job.trace(|| format!("@ build-succeeded {shown} -"));
    Ok(())
}

/// `registerFailedPath` of the outputs (`--cache-failures`).
async fn cache_failure(b: &Arc<Builder>, job: &Arc<Job>, outputs: &BTreeMap<String, StorePath>) {
    let paths = outputs.values().cloned().collect();
    if let Err(e) = b.storedb.register_failed_paths(paths).await {
        job.message(LVL_ERROR, format!("cannot record the failure: {}", e.client_text("store-db")));
    }
}

/// Moves processed outputs from scratch space to their store names, unregistered (where
/// nothing is there yet), as a C++ round that failed its comparison leaves them.
fn leave_in_store(b: &Arc<Builder>, processed: &ProcessedOutputs) {
    for o in processed.outputs() {
        let to = b.config.paths.store_dir.join(o.item.path.base_name());
        if fs::symlink_metadata(&to).is_err() {
            let _ = fs::rename(o.scratch_path(), &to);
        }
    }
}

/// C++ `buildDone` after a failed builder in a chroot: what the build left of each output is
/// moved into the store, invalid and unregistered, for debugging (setuid, setgid and
/// world-writable bits stripped; the next collection removes it). Only where nothing is at
/// the store name (store-db deletes an invalid leftover before it moves a new item there).
fn keep_failed_outputs(b: &Arc<Builder>, layout: &sandbox::BuildLayout, outputs: &BTreeMap<String, StorePath>) {
    if layout.chroot_root.is_none() {
        return;
    }
    for p in outputs.values() {
        let from = layout.output_location(p);
        let to = b.config.paths.store_dir.join(p.base_name());
        if fs::symlink_metadata(&from).is_err() || fs::symlink_metadata(&to).is_ok() {
            continue;
        }
        if sandbox::secure_file_perms(&from).is_ok() {
            let _ = fs::rename(&from, &to);
        }
    }
}

/// How substituting a goal's missing outputs ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Substituted {
    /// Every output is valid: nothing to build.
    All,
    /// Some output has no substitute (or one of its references has none): build.
    Some,
    /// A reference of an output had no substitute: build the inputs, then try again.
    IncompleteClosure,
}

/// C++ `substitutesAllowed`: unless the derivation says `allowSubstitutes` other than "1".
fn substitutes_allowed(drv: &Derivation) -> bool {
    drv.env_var("allowSubstitutes").is_none_or(|v| v == b"1")
}

/// Substitutes the missing outputs (C++ `haveDerivation`'s substitution goals, then
/// `outputsSubstituted`): a failure other than "no substitute" is the request's error
/// unless `--fallback`. The goal's preparing guard is let go meanwhile (a download is no
/// short step) and taken again after.
async fn substitute_outputs(
    b: &Arc<Builder>,
    job: &Arc<Job>,
    drv_path: &StorePath,
    missing: &BTreeMap<String, StorePath>,
    mode: BuildMode,
    step: &mut Option<Preparing>,
) -> Result<Substituted> {
    if job.settings.substitute.urls.is_empty() || missing.is_empty() {
        return Ok(Substituted::Some);
    }
    drop(step.take());
    let repair = mode == BuildMode::Repair;
    let outcomes = crate::substitute::substitute(b, job, missing.values().cloned().collect(), repair).await;
    *step = Some(job.slots.preparing());
    let outcomes = outcomes?;
    let tally = Tally::of(&outcomes);
    if tally.some_failed() && !job.settings.fallback {
        return Err(Error::build(
            FailureKind::Misc,
            format!(
                "some substitutes for the outputs of derivation `{}' failed (usually happens due to networking issues); try `--fallback' to build derivation from source ",
                b.store.display(drv_path)
            ),
        ));
    }
    // A repaired output was valid before: only its outcome tells.
    let all = match repair {
        true => outcomes.iter().all(|(_, o)| *o == SubstOutcome::Valid),
        false => missing_outputs(b, missing).await?.is_empty(),
    };
    if all {
        Ok(Substituted::All)
    } else if tally.incomplete > 0 {
        Ok(Substituted::IncompleteClosure)
    } else {
        Ok(Substituted::Some)
    }
}

/// Reads and parses the `.drv` file.
async fn load(b: &Arc<Builder>, drv_path: &StorePath) -> Result<Derivation> {
    let file = b.config.paths.store_dir.join(drv_path.base_name());
    let text = tokio::fs::read(&file).await.context(|| format!("opening file `{}'", file.display()))?;
    Derivation::parse(&b.store, &text).map_err(|e| {
        Error::build(FailureKind::Misc, format!("error parsing derivation `{}': {e}", b.store.display(drv_path)))
    })
}

/// The outputs that are not valid.
async fn missing_outputs(
    b: &Arc<Builder>,
    outputs: &BTreeMap<String, StorePath>,
) -> Result<BTreeMap<String, StorePath>> {
    let outputs = outputs.clone();
    b.read(move |r| {
        let mut missing = BTreeMap::new();
        for (n, p) in outputs {
            if !r.is_valid(&p)? {
                missing.insert(n, p);
            }
        }
        Ok(missing)
    })
    .await
}

/// C++ `pathContentsGood` of each valid output (not in `missing`), in output-name order:
/// "checking path `P'..." (`lvlInfo`), and for one whose NAR hash is not the registered one
/// (or that is not there) "path `P' is corrupted or missing!" (`lvlError`). Returns those.
async fn corrupt_outputs(
    b: &Arc<Builder>,
    job: &Arc<Job>,
    outputs: &BTreeMap<String, StorePath>,
    missing: &BTreeMap<String, StorePath>,
) -> Result<BTreeMap<String, StorePath>> {
    let mut corrupt = BTreeMap::new();
    for (name, p) in outputs.iter().filter(|(n, _)| !missing.contains_key(*n)) {
        let shown = b.store.display(p);
        job.message(LVL_INFO, format!("checking path `{shown}'..."));
        let q = p.clone();
        let Some(info) = b.read(move |r| Ok(r.try_query_path_info(&q)?)).await? else { continue };
        let file = b.config.paths.store_dir.join(p.base_name());
        let current = tokio::task::spawn_blocking(move || guix_formats::nar::dump_path(&file, &mut std::io::sink()))
            .await
            .map_err(|e| Error::io("hashing an output", std::io::Error::other(e.to_string())))?;
        if !current.is_ok_and(|s| s.nar_hash == info.nar_hash) {
            job.message(LVL_ERROR, format!("path `{shown}' is corrupted or missing!"));
            corrupt.insert(name.clone(), p.clone());
        }
    }
    Ok(corrupt)
}

/// `pathFailed`: with `--cache-failures`, an output that failed before fails at once.
async fn check_cached_failures(b: &Arc<Builder>, missing: &BTreeMap<String, StorePath>) -> Result<()> {
    let paths: Vec<StorePath> = missing.values().cloned().collect();
    let failed = b.read(move |r| Ok(paths.into_iter().find(|p| r.has_path_failed(p).unwrap_or(false)))).await?;
    match failed {
        None => Ok(()),
        Some(p) => Err(Error::build(
            FailureKind::Cached,
            format!("builder for `{}' failed previously (cached)", b.store.display(&p)),
        )),
    }
}

/// Realises the input derivations (concurrently) and checks the input sources; returns the
/// closure of everything the build may use, and the goal's preparing guard again (taken as
/// soon as the inputs are done).
async fn realise_inputs(
    b: &Arc<Builder>,
    job: &Arc<Job>,
    drv_path: &StorePath,
    drv: &Derivation,
    prep: Preparing,
) -> Result<(BTreeSet<StorePath>, Preparing)> {
    let mut tasks = Vec::new();
    for (input, outs) in &drv.input_drvs {
        let wanted: Vec<String> = outs.iter().map(|o| o.as_str().to_owned()).collect();
        tasks.push(b.realise(job, input.clone(), wanted));
    }
    let srcs: Vec<StorePath> = drv.input_srcs.iter().cloned().collect();
    let invalid =
        b.read(move |r| Ok(srcs.into_iter().filter(|p| !r.is_valid(p).unwrap_or(false)).collect::<Vec<_>>())).await?;
    // With inputs to wait for, each holds its own guard from here (taken when its future was
    // made) and ours goes while we wait; without, we go on preparing. Missing sources are
    // substituted meanwhile.
    let (results, substituted, prep) = if tasks.is_empty() && invalid.is_empty() {
        (Vec::new(), Vec::new(), prep)
    } else {
        drop(prep);
        let (results, substituted) =
            tokio::join!(futures_join_all(tasks), crate::substitute::substitute(b, job, invalid, false));
        (results, substituted?, job.slots.preparing())
    };
    // An input's error that is no build failure escapes the worker in C++: pass it on.
    if let Some(message) = results.iter().find_map(|o| match o {
        Outcome::Failed { kind: FailureKind::Misc, message } => Some(message.clone()),
        _ => None,
    }) {
        return Err(Error::build(FailureKind::Misc, message));
    }
    let mut failed = results.iter().filter(|o| matches!(o, Outcome::Failed { .. })).count();
    // Input sources that are not valid: C++ substitution goals, which count as failed
    // dependencies when they do not make them valid.
    for (p, o) in &substituted {
        match o {
            SubstOutcome::Valid => continue,
            SubstOutcome::NoSubstitute => job.message(
                LVL_DEBUG,
                format!("path `{}' is required, but there is no substituter that can build it", b.store.display(p)),
            ),
            _ => {}
        }
        failed += 1;
    }
    if failed > 0 {
        return Err(Error::build(
            FailureKind::DependencyFailed,
            format!("cannot build derivation `{}': {failed} dependencies couldn't be built", b.store.display(drv_path)),
        ));
    }
    // The used outputs of the input derivations, and the sources, with their closures.
    let input_drvs = drv.input_drvs.clone();
    let srcs = drv.input_srcs.clone();
    b.read(move |r| {
        let mut start: BTreeSet<StorePath> = srcs;
        for (input, outs) in input_drvs {
            for (name, path) in r.query_derivation_output_map(&input)? {
                if outs.iter().any(|o| o.as_str() == name) {
                    start.insert(path);
                }
            }
        }
        closure_of(r, start)
    })
    .await
    .map(|inputs| (inputs, prep))
}

/// `exportReferencesGraph`: for each (file, path), the validity registration of the path's
/// closure and of the outputs of every derivation in it (C++ `startBuilder`).
async fn references_graphs(b: &Arc<Builder>, drv: &Derivation) -> Result<Vec<(String, Vec<u8>)>> {
    let graph = sandbox::export_references_graph(drv, &b.store)?;
    if graph.is_empty() {
        return Ok(Vec::new());
    }
    let store = b.store.clone();
    b.read(move |r| {
        let mut files = Vec::new();
        for (name, path) in graph {
            if !r.is_valid(&path)? {
                return Err(Error::build(
                    FailureKind::InputRejected,
                    format!("`exportReferencesGraph' contains an invalid path `{}'", store.display(&path)),
                ));
            }
            let mut paths = closure_of(r, BTreeSet::from([path]))?;
            let drvs: Vec<StorePath> = paths.iter().filter(|p| p.is_derivation()).cloned().collect();
            for d in drvs {
                for (_, out) in r.query_derivation_output_map(&d)? {
                    if r.is_valid(&out)? {
                        paths.extend(closure_of(r, BTreeSet::from([out]))?);
                    }
                }
            }
            let mut graph = BTreeMap::new();
            for p in paths {
                let refs = r.query_references(&p)?;
                graph.insert(p, refs);
            }
            files.push((name, sandbox::validity_registration(&store, &graph).into_bytes()));
        }
        Ok(files)
    })
    .await
}

/// Waits for every future (they share the request's state, so no spawning).
async fn futures_join_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

fn sandbox_settings(b: &Arc<Builder>, job: &Arc<Job>) -> SandboxSettings {
    let mut settings = SandboxSettings::from_config(&b.config);
    settings.build_cores = job.settings.cores;
    settings.nix_options = job.settings.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    settings.journal_dir = Some(crate::schedule::build_dirs_journal(&b.config));
    settings.spares = Some(b.spares.clone());
    settings
}

/// Copies the build's output to the log and the requests, enforcing the silence, time and
/// log-size limits (C++ `handleChildOutput`, `Worker::waitForInput`); the builder's exit status.
async fn supervise(
    job: &Arc<Job>,
    shown: &str,
    started: &mut sandbox::Started,
    log: &mut BuildLog,
) -> Result<std::process::ExitStatus> {
    let s = &job.settings;
    let name = format!("building of `{shown}'");
    let begun = Instant::now();
    let mut last_output = Instant::now();
    let mut written: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    // Until every process of the build closed the log pipe.
    while !eof {
        let next = limits(s, &name, begun, last_output)?;
        tokio::select! {
            r = started.log.read(&mut buf) => match r {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => {
                    let bytes = &buf[..n];
                    written += n as u64;
                    if s.max_log_size > 0 && written > s.max_log_size {
                        return Err(Error::build(FailureKind::TimedOut, format!("{name} killed after writing more than {} bytes of log output", s.max_log_size)));
                    }
                    log.write(bytes).context(|| "writing the build log".to_owned())?;
                    job.emit(BuildEvent::Log { pid: started.pid, bytes: bytes.to_vec() });
                    last_output = Instant::now();
                }
            },
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    }
    // Then its exit status (the builder ended: PID 1 of its namespace, so all of it).
    loop {
        let next = limits(s, &name, begun, last_output)?;
        tokio::select! {
            r = started.wait() => return r,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

/// The time and silence limits: an error once one is passed, else when to look again.
fn limits(s: &crate::schedule::JobSettings, name: &str, begun: Instant, last_output: Instant) -> Result<Instant> {
    let now = Instant::now();
    let mut next = now + Duration::from_secs(3600);
    if s.max_silent_time > 0 {
        let at = last_output + Duration::from_secs(s.max_silent_time);
        if now >= at {
            return Err(Error::build(
                FailureKind::TimedOut,
                format!("{name} timed out after {} seconds of silence", s.max_silent_time),
            ));
        }
        next = next.min(at);
    }
    if s.timeout > 0 {
        let at = begun + Duration::from_secs(s.timeout);
        if now >= at {
            // Sic: the C++ daemon 1.5.0 prints its format directive (`%2%`) instead of the
            // number here, and clients see that text.
            return Err(Error::build(FailureKind::TimedOut, format!("{name} timed out after %2% seconds")));
        }
        next = next.min(at);
    }
    Ok(next)
}

#[allow(clippy::too_many_arguments)]
/// [`outputs::process_outputs_kept`] on the blocking pool: the outputs in scratch space,
/// described for store-db.
async fn process(
    b: &Arc<Builder>,
    drv_path: &StorePath,
    drv: &Derivation,
    to_build: &BTreeMap<String, StorePath>,
    all_outputs: &BTreeMap<String, StorePath>,
    inputs: &BTreeSet<StorePath>,
    started: &sandbox::Started,
    build_uid: Option<u32>,
) -> Result<ProcessedOutputs> {
    let mut candidates = inputs.clone();
    candidates.extend(all_outputs.values().cloned());
    let locations: BTreeMap<StorePath, PathBuf> =
        to_build.values().map(|p| (p.clone(), started.layout.output_location(p))).collect();
    let (b2, drv_path2, drv2, to_build2) = (b.clone(), drv_path.clone(), drv.clone(), to_build.clone());
    let in_place = started.layout.chroot_root.is_none();
    b.read(move |reader| {
        let closure = |paths: &BTreeSet<StorePath>| closure_of(reader, paths.clone());
        let store_dir = b2.config.paths.store_dir.clone();
        let locate = |p: &StorePath| locations.get(p).cloned().unwrap_or_else(|| store_dir.join(p.base_name()));
        let spec = OutputsSpec {
            store: &b2.store,
            drv_path: &drv_path2,
            drv: &drv2,
            outputs: &to_build2,
            locate: &locate,
            build_uid,
            candidates: &candidates,
            closure: &closure,
            scratch: &b2.scratch,
            in_place,
        };
        outputs::process_outputs_kept(&spec)
    })
    .await
}

/// `auto-optimise-store`: each output's big files linked with their `<store>/.links` entries
/// in scratch space, before store-db renames them into the store (same file system: the
/// links survive). A root regular file's NAR hash is the output's, already known; an output
/// whose NAR is shorter than the threshold is not even looked at. Messages go to the job at
/// their `printMsg` levels.
async fn deduplicate(b: &Arc<Builder>, job: &Arc<Job>, processed: ProcessedOutputs) -> Result<ProcessedOutputs> {
    use guix_store::optimise::{optimise_path_with, KnownHashes, OptimiseStats, DEDUPLICATION_MIN_SIZE};
    if !b.config.auto_optimise_store || processed.items().all(|i| i.nar_size < DEDUPLICATION_MIN_SIZE) {
        return Ok(processed);
    }
    let store = b.config.paths.store_dir.clone();
    let (processed, msgs) = tokio::task::spawn_blocking(move || {
        let (links, mut msgs, mut stats) = (store.join(".links"), Vec::new(), OptimiseStats::default());
        for out in processed.outputs().iter().filter(|o| o.item.nar_size >= DEDUPLICATION_MIN_SIZE) {
            let known: KnownHashes = [(PathBuf::new(), out.item.nar_hash)].into();
            let dir = out.scratch_path();
            let r = optimise_path_with(&store, &links, dir, &known, &mut stats, &mut |l, m| msgs.push((l, m)));
            if let Err(e) = r {
                return Err(Error::build(FailureKind::Misc, e.to_string()));
            }
        }
        Ok((processed, msgs))
    })
    .await
    .map_err(|e| Error::build(FailureKind::Misc, e.to_string()))??;
    for (level, text) in msgs {
        job.message(level, text);
    }
    Ok(processed)
}

/// `--check`: [`outputs::check_outputs`] of every output against its valid NAR hash.
async fn check(
    b: &Arc<Builder>,
    drv_path: &StorePath,
    drv: &Derivation,
    all_outputs: &BTreeMap<String, StorePath>,
    started: &sandbox::Started,
    build_uid: Option<u32>,
    keep_failed: bool,
) -> Result<()> {
    let locations: BTreeMap<StorePath, PathBuf> =
        all_outputs.values().map(|p| (p.clone(), started.layout.output_location(p))).collect();
    let (b2, drv_path2, drv2, outputs2) = (b.clone(), drv_path.clone(), drv.clone(), all_outputs.clone());
    let in_place = started.layout.chroot_root.is_none();
    b.read(move |reader| {
        let mut valid = BTreeMap::new();
        for p in outputs2.values() {
            if let Some(info) = reader.try_query_path_info(p)? {
                valid.insert(p.clone(), info.nar_hash);
            }
        }
        let closure = |paths: &BTreeSet<StorePath>| closure_of(reader, paths.clone());
        let store_dir = b2.config.paths.store_dir.clone();
        let locate = |p: &StorePath| locations.get(p).cloned().unwrap_or_else(|| store_dir.join(p.base_name()));
        let no_candidates = BTreeSet::new();
        let spec = OutputsSpec {
            store: &b2.store,
            drv_path: &drv_path2,
            drv: &drv2,
            outputs: &outputs2,
            locate: &locate,
            build_uid,
            candidates: &no_candidates,
            closure: &closure,
            scratch: &b2.scratch,
            in_place,
        };
        outputs::check_outputs(&spec, &valid, keep_failed).map(drop)
    })
    .await
}

/// Polling interval while an output lock is held by another process (C++ `pollInterval`
/// is 5 s; a shorter one costs nothing here).
const LOCK_POLL: Duration = Duration::from_millis(500);

/// The output `.lock` files held by this process (POSIX locks are per process: a second lock
/// of ours would succeed, so we keep the set, as C++ keeps `lockedPaths`).
fn held() -> &'static Mutex<HashSet<PathBuf>> {
    static HELD: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

/// The locks on a build's outputs.
pub struct OutputLocks {
    locks: Vec<(PathBuf, File)>,
}

impl OutputLocks {
    /// Unlocks; with `delete` (after a success) removes the lock files first, marking them
    /// deleted for a waiter (C++ `deleteLockFile`: unlink, then write `d`).
    pub fn release(mut self, delete: bool) {
        self.unlock(delete)
    }

    fn unlock(&mut self, delete: bool) {
        let mut set = held().lock().unwrap_or_else(|p| p.into_inner());
        for (path, mut file) in self.locks.drain(..) {
            if delete {
                let _ = fs::remove_file(&path);
                let _ = std::io::Write::write_all(&mut file, b"d");
            }
            set.remove(&path);
        }
    }
}

impl Drop for OutputLocks {
    fn drop(&mut self) {
        self.unlock(false)
    }
}

/// Takes `<out>.lock` for every output, waiting (and saying so once) while another build,
/// ours or another process's, holds one.
async fn lock_outputs(
    b: &Arc<Builder>,
    job: &Arc<Job>,
    outputs: &BTreeMap<String, StorePath>,
    step: &mut Option<Preparing>,
) -> Result<OutputLocks> {
    let paths: Vec<PathBuf> =
        outputs.values().map(|p| b.config.paths.store_dir.join(format!("{}.lock", p.base_name()))).collect();
    let mut said = false;
    loop {
        match try_lock_all(&paths)? {
            Some(locks) => return Ok(locks),
            None => {
                if !said {
                    if let Some(s) = step.as_ref() {
                        s.visible().await;
                    }
                    job.message(LVL_ERROR, "waiting for locks or build slots...");
                    said = true;
                }
                // Waiting: the other goals of the request go on meanwhile.
                *step = None;
                tokio::time::sleep(LOCK_POLL).await;
            }
        }
    }
}

fn try_lock_all(paths: &[PathBuf]) -> Result<Option<OutputLocks>> {
    let mut locks = OutputLocks { locks: Vec::new() };
    for path in paths {
        {
            let mut set = held().lock().unwrap_or_else(|p| p.into_inner());
            if set.contains(path) {
                return Ok(None);
            }
            set.insert(path.clone());
        }
        match lock_one(path) {
            Ok(Some(f)) => locks.locks.push((path.clone(), f)),
            Ok(None) => {
                held().lock().unwrap_or_else(|p| p.into_inner()).remove(path);
                return Ok(None);
            }
            Err(e) => {
                held().lock().unwrap_or_else(|p| p.into_inner()).remove(path);
                return Err(e);
            }
        }
    }
    Ok(Some(locks))
}

/// One lock file: open (create 0600), try the lock; a file marked deleted (non-empty) by its
/// last holder is opened again.
fn lock_one(path: &Path) -> Result<Option<File>> {
    loop {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .context(|| format!("opening lock file `{}'", path.display()))?;
        if !lock_file(f.as_fd(), LockType::Write, false).context(|| format!("locking `{}'", path.display()))? {
            return Ok(None);
        }
        let st = f.metadata().context(|| format!("statting `{}'", path.display()))?;
        if st.size() != 0 || st.nlink() == 0 {
            // Deleted by the previous holder after we opened it: take the new file.
            continue;
        }
        return Ok(Some(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_locks_exclude_this_process_and_are_deleted_after_success() {
        let dir = tempfile::tempdir().unwrap();
        let p = vec![dir.path().join("a.lock"), dir.path().join("b.lock")];
        let first = try_lock_all(&p).unwrap().expect("free");
        // The same process again: refused through the in-process set, not fcntl.
        assert!(try_lock_all(&p[1..]).unwrap().is_none());
        first.release(true);
        assert!(!p[0].exists() && !p[1].exists());
        let again = try_lock_all(&p).unwrap().expect("free again");
        drop(again);
        // Released without deletion (a failure): the files stay, empty, as C++ leaves them.
        assert!(p[0].exists() && fs::metadata(&p[0]).unwrap().len() == 0);
    }

    #[test]
    fn another_process_holding_a_lock_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.lock");
        File::create(&p).unwrap();
        // flock(1) uses flock, not fcntl; hold an fcntl lock from a child process instead.
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import fcntl,sys,time; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)"])
            .arg(&p)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "locked");
        assert!(try_lock_all(std::slice::from_ref(&p)).unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(try_lock_all(std::slice::from_ref(&p)).unwrap().is_some());
    }
}

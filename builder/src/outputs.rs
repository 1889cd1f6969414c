//! What happens to a build's outputs after the builder exited successfully, up to the
//! [`NewItem`]s store-db registers: C++ `registerOutputs` (and the fixed-output copy of
//! `buildDone` just before it), with its checks, in its order, with its messages.
//!
//! For each output to register, in output-name order:
//!
//! 1. Fixed-output derivations only, for every output first: a fresh recursive copy
//!    replaces what the build left (CVE-2024-27297: no descriptor leaked out of the build may
//!    still point at the registered files). Ours goes straight into scratch space, or after a
//!    build without a chroot back to the store path it was copied from.
//! 2. `lstat` ("builder for `D' failed to produce output path `P'").
//! 3. Not group/world-writable (unless a symlink) and owned by the build user ("suspicious
//!    ownership or permission on `P'; rejecting this build output").
//! 4. An output with a fixed hash: flat = a regular non-executable file whose contents have
//!    that hash, `r:ALGO` = the NAR has it ("hash mismatch for store item 'P'",
//!    [`Error::HashMismatch`] with what `@ hash-mismatch` prints).
//! 5. [`canonicalise_path_metadata`] with the build uid (modes 0444/0555, mtime 1, owner
//!    root; files the build user does not own are refused unless this build already took the
//!    inode over — hard links between outputs), one [`InodesSeen`] for all outputs.
//! 6. Moved into scratch space by `rename` (a directory gets u+rwx for the move, then its
//!    canonical mode back), unless step 1 put it there already.
//! 7. [`scan_path`]: NAR hash, size and references (hash parts of the candidates anywhere in
//!    the NAR, self-references included) in one pass.
//! 8. `allowedReferences`, `allowedRequisites`, `disallowedReferences`,
//!    `disallowedRequisites` ("output (`P') is not allowed to refer to path `Q'").
//!
//! Every check failure is a C++ `BuildError` after a builder that exited 0, hence
//! [`FailureKind::OutputRejected`]; conditions the C++ daemon throws as plain `Error` (an
//! unsupported file type, a bad fixed hash, non-determinism found by `--check`) are
//! [`FailureKind::Misc`] / [`FailureKind::NotDeterministic`], system call failures
//! [`Error::Io`].
//!
//! `--check` ([`check_outputs`]) runs steps 1–5 and 7 where the build left the outputs and
//! compares the NAR hashes with the valid ones; `--rounds` keeps each round's outputs
//! ([`process_outputs_kept`]) and compares them ([`compare_rounds`]). Both make the
//! `--keep-failed` `P-check` copies the C++ daemon makes, directly in the store directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use guix_formats::derivation::Derivation;
use guix_formats::hash::Hasher;
use guix_formats::nar::{dump_path_to, scan_path, NarSummary};
use guix_formats::store_path::HashPart;
use guix_formats::{Hash, HashAlgo, StoreDir, StorePath};
use guix_ipc::store_db::{ItemSource, NewItem};
use guix_store::files::{canonicalise_path_metadata, delete_tree, CanonicaliseError, InodesSeen};
use guix_store::scratch::{Scratch, ScratchItem};

use crate::error::{Error, FailureKind, HashMismatch, IoContext, Result};

/// What [`process_outputs`] needs to know about one finished build.
pub struct OutputsSpec<'a> {
    pub store: &'a StoreDir,
    pub drv_path: &'a StorePath,
    pub drv: &'a Derivation,
    /// The outputs to register: name → path (every output of the drv that is not yet valid).
    pub outputs: &'a BTreeMap<String, StorePath>,
    /// Where each output is on the host now (inside `<store>/<drv>.chroot/top/...` for chroot
    /// builds, or at its store path).
    pub locate: &'a dyn Fn(&StorePath) -> PathBuf,
    /// The build user's uid (files must be owned by it or by us), None without build users.
    pub build_uid: Option<u32>,
    /// The reference-scan candidates: the input closure ∪ all outputs of this drv (the
    /// outputs of the drv are added in any case).
    pub candidates: &'a BTreeSet<StorePath>,
    /// The closure of a set of valid paths (for allowedRequisites/disallowedRequisites) — the
    /// caller passes a DB-backed closure.
    pub closure: &'a dyn Fn(&BTreeSet<StorePath>) -> Result<BTreeSet<StorePath>>,
    pub scratch: &'a Scratch,
    /// The build ran without a chroot, so its outputs are in the store directory already:
    /// step 1's fresh copy replaces each one where it is (C++ copies to `P.tmp` and renames it
    /// over `P`), and an output that then fails a check stays there, invalid, as in C++.
    pub in_place: bool,
}

/// One output, processed: its registration and its tree in scratch space.
#[derive(Debug)]
pub struct ProcessedOutput {
    /// The output's name (`out`, `lib`, …).
    pub name: String,
    /// What store-db is to register (source: the scratch entry below).
    pub item: NewItem,
    entry: ScratchItem,
}

impl ProcessedOutput {
    /// Where the tree is now.
    pub fn scratch_path(&self) -> &Path {
        self.entry.path()
    }
}

/// The processed outputs of one build, in output-name order. Dropping this removes their
/// trees from scratch space; [`ProcessedOutputs::hand_over`] gives them to store-db instead.
#[derive(Debug, Default)]
pub struct ProcessedOutputs {
    outputs: Vec<ProcessedOutput>,
}

impl ProcessedOutputs {
    pub fn outputs(&self) -> &[ProcessedOutput] {
        &self.outputs
    }

    pub fn items(&self) -> impl Iterator<Item = &NewItem> {
        self.outputs.iter().map(|o| &o.item)
    }

    /// The items for `AddItems`; their scratch entries are no longer removed here (store-db
    /// moves them into the store or removes them).
    pub fn hand_over(self) -> Vec<NewItem> {
        self.outputs
            .into_iter()
            .map(|o| {
                o.entry.handed_over();
                o.item
            })
            .collect()
    }
}

/// Blocking (the caller runs it on the blocking pool). On success every output has been
/// moved out of its build location into scratch space, canonicalised, and described by a
/// NewItem (source Scratch(name), nar_hash, nar_size, references, deriver Some(drv_path)). On
/// error nothing is left in scratch space.
pub fn process_outputs(spec: &OutputsSpec) -> Result<Vec<NewItem>> {
    Ok(process_outputs_kept(spec)?.hand_over())
}

/// [`process_outputs`], keeping the scratch entries owned (removed when the result is dropped):
/// for a caller that hands them over only once it is sure to send them, and for the rounds
/// of `--rounds` ([`compare_rounds`]).
pub fn process_outputs_kept(spec: &OutputsSpec) -> Result<ProcessedOutputs> {
    let held = acquire(spec)?;
    let mut seen = InodesSeen::new();
    let refs = Candidates::new(spec);
    let mut done = ProcessedOutputs::default();
    for mut out in held {
        let st = prepare(spec, &mut out, &mut seen)?;
        let entry = match out.entry.take() {
            Some(entry) => entry,
            None => move_to_scratch(spec, &out, &st)?,
        };
        let (summary, references) = refs.scan(entry.path())?;
        check_references(spec, &out.path, &references)?;
        let item = NewItem {
            source: ItemSource::Scratch(entry.name().to_owned()),
            path: out.path.clone(),
            nar_hash: summary.nar_hash,
            nar_size: summary.nar_size,
            references: references.into_iter().collect(),
            deriver: Some(spec.drv_path.clone()),
        };
        done.outputs.push(ProcessedOutput { name: out.name, item, entry });
    }
    Ok(done)
}

/// `--check`: the outputs were rebuilt (where `spec.locate` says) although they are valid
/// (`spec.outputs`: all outputs of the derivation, as C++ checks them all);
/// compares each one's NAR hash with the valid one's (`valid`: path → NAR hash from the
/// database; outputs not in it are skipped, as C++ skips outputs no longer valid). Nothing is
/// registered or moved, except that with `keep_failed` a differing output becomes `P-check`
/// in the store directory (replacing an older one). Returns the outputs' new NAR summaries.
pub fn check_outputs(
    spec: &OutputsSpec,
    valid: &BTreeMap<StorePath, Hash>,
    keep_failed: bool,
) -> Result<Vec<(StorePath, NarSummary)>> {
    let held = acquire(spec)?;
    let mut seen = InodesSeen::new();
    // Only the NAR hash is compared: no candidates to look for.
    let refs = Candidates { by_hash: BTreeMap::new() };
    let mut checked = Vec::new();
    for mut out in held {
        prepare(spec, &mut out, &mut seen)?;
        let (summary, _) = refs.scan(out.current())?;
        let path = &out.path;
        let Some(expected) = valid.get(path) else { continue };
        if summary.nar_hash != *expected {
            let drv = spec.store.display(spec.drv_path);
            let shown = spec.store.display(path);
            if keep_failed {
                let dst = check_path(spec.store, path);
                delete_tree(&dst).context(|| format!("deleting `{}'", dst.display()))?;
                fs::rename(out.current(), &dst)
                    .context(|| format!("renaming `{}' to `{}'", out.location.display(), dst.display()))?;
                if let Some(entry) = out.entry.take() {
                    entry.handed_over();
                }
                return Err(Error::build(
                    FailureKind::NotDeterministic,
                    format!(
                        "derivation `{drv}' may not be deterministic: output `{shown}' differs from `{}'",
                        dst.display()
                    ),
                ));
            }
            return Err(Error::build(
                FailureKind::NotDeterministic,
                format!("derivation `{drv}' may not be deterministic: output `{shown}' differs"),
            ));
        }
        checked.push((path.clone(), summary));
    }
    Ok(checked)
}

/// `--rounds`: compares a round's outputs with the previous round's (path, NAR hash and
/// references, as C++ compares `ValidPathInfo`s). On a difference: "output `P' of `D' differs
/// from `P-check' from previous round", or "… differs from previous round" when there is no
/// `P-check`; with `keep_failed` the previous round's outputs become `P-check` in the store
/// directory first, as the C++ daemon leaves them. When they agree, `keep_failed` removes
/// the `P-check` of every output of the derivation. The previous round's scratch entries
/// are removed (or moved to `P-check`) in any case.
pub fn compare_rounds(
    store: &StoreDir,
    drv_path: &StorePath,
    drv: &Derivation,
    prev: ProcessedOutputs,
    new: &ProcessedOutputs,
    keep_failed: bool,
) -> Result<()> {
    let same = |a: &NewItem, b: &NewItem| a.path == b.path && a.nar_hash == b.nar_hash && a.references == b.references;
    let differing = prev.outputs.iter().zip(&new.outputs).find(|(a, b)| !same(&a.item, &b.item)).map(|(a, _)| a);
    let differing = match (differing, prev.outputs.len() == new.outputs.len()) {
        (Some(d), _) => Some(d.item.path.clone()),
        (None, true) => None,
        // C++ asserts the two rounds registered the same outputs.
        (None, false) => Some(
            prev.outputs
                .first()
                .or(new.outputs.first())
                .map(|o| o.item.path.clone())
                .ok_or_else(|| Error::build(FailureKind::Misc, "rounds produced different sets of outputs"))?,
        ),
    };
    let Some(path) = differing else {
        if keep_failed {
            for (_, out) in drv.output_paths() {
                if let Some(p) = out {
                    let dst = check_path(store, p);
                    delete_tree(&dst).context(|| format!("deleting `{}'", dst.display()))?;
                }
            }
        }
        return Ok(());
    };
    if keep_failed {
        for o in prev.outputs {
            let dst = check_path(store, &o.item.path);
            delete_tree(&dst).context(|| format!("deleting `{}'", dst.display()))?;
            fs::rename(o.entry.path(), &dst)
                .context(|| format!("renaming `{}' to `{}'", store.display(&o.item.path), dst.display()))?;
            o.entry.handed_over();
        }
    }
    let prev_check = check_path(store, &path);
    let message = if fs::symlink_metadata(&prev_check).is_ok() {
        format!(
            "output `{}' of `{}' differs from `{}' from previous round",
            store.display(&path),
            store.display(drv_path),
            prev_check.display()
        )
    } else {
        format!("output `{}' of `{}' differs from previous round", store.display(&path), store.display(drv_path))
    };
    Err(Error::build(FailureKind::NotDeterministic, message))
}

/// C++ `fixedOutput` of a goal: every output has a fixed hash (then the build gets one round,
/// the network, and its outputs are copied afresh before they are registered).
pub fn all_outputs_fixed(drv: &Derivation) -> bool {
    drv.outputs.values().all(|o| !o.hash.is_empty())
}

/// `P-check`: where `--keep-failed` leaves a differing output.
pub fn check_path(store: &StoreDir, path: &StorePath) -> PathBuf {
    PathBuf::from(format!("{}-check", store.display(path)))
}

/// One output on its way: where the build left it, and its scratch entry once it has one.
struct Held {
    name: String,
    path: StorePath,
    location: PathBuf,
    entry: Option<ScratchItem>,
}

impl Held {
    fn current(&self) -> &Path {
        self.entry.as_ref().map_or(&self.location, |e| e.path())
    }
}

/// Step 1: where each output is, and for a fixed-output derivation a fresh copy in scratch
/// space of each one that exists (the build's own files are removed as they are copied).
fn acquire(spec: &OutputsSpec) -> Result<Vec<Held>> {
    let fixed = all_outputs_fixed(spec.drv);
    let mut held = Vec::new();
    for (name, path) in spec.outputs {
        let location = (spec.locate)(path);
        let mut out = Held { name: name.clone(), path: path.clone(), location, entry: None };
        if fixed && fs::symlink_metadata(&out.location).is_ok() {
            let entry = spec.scratch.allocate_build(path).context(|| "allocating scratch space".to_owned())?;
            copy_recursively(&out.location, entry.path())?;
            if spec.in_place {
                fs::rename(entry.path(), &out.location)
                    .context(|| format!("renaming `{}' to `{}'", entry.path().display(), out.location.display()))?;
                entry.handed_over();
            } else {
                out.entry = Some(entry);
            }
        }
        held.push(out);
    }
    Ok(held)
}

/// Steps 2–5 on one output, where it is now; returns its `lstat` from step 2.
fn prepare(spec: &OutputsSpec, out: &mut Held, seen: &mut InodesSeen) -> Result<fs::Metadata> {
    let shown = spec.store.display(&out.path);
    let st = match fs::symlink_metadata(out.current()) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(rejected(format!(
                "builder for `{}' failed to produce output path `{shown}'",
                spec.store.display(spec.drv_path)
            )))
        }
        Err(e) => return Err(Error::io(format!("getting attributes of path `{}'", out.location.display()), e)),
    };
    let writable = !st.file_type().is_symlink() && st.mode() & 0o022 != 0;
    if writable || spec.build_uid.is_some_and(|uid| st.uid() != uid) {
        return Err(rejected(format!("suspicious ownership or permission on `{shown}'; rejecting this build output")));
    }
    let output = spec.drv.outputs.iter().find(|(n, _)| n.as_str() == out.name).map(|(_, o)| o);
    if let Some(o) = output.filter(|o| !o.hash.is_empty()) {
        let (recursive, expected) = o.fixed_hash().map_err(|e| Error::build(FailureKind::Misc, e.to_string()))?;
        if !recursive && (!st.file_type().is_file() || st.mode() & 0o100 != 0) {
            return Err(rejected(format!("output path `{shown}' should be a non-executable regular file")));
        }
        let actual = if recursive {
            hash_path(expected.algo(), out.current(), &out.location)?
        } else {
            hash_file(expected.algo(), out.current(), &out.location)?
        };
        if actual != expected {
            return Err(Error::HashMismatch(Box::new(HashMismatch {
                path: shown,
                algo: o.hash_algo.clone(),
                expected: print_hash_16_or_32(&expected),
                actual: print_hash_16_or_32(&actual),
            })));
        }
    }
    canonicalise_path_metadata(out.current(), &out.location, spec.build_uid, seen).map_err(|e| match e {
        CanonicaliseError::InvalidOwnership(_) => rejected(e.to_string()),
        CanonicaliseError::Sys { context, source } => Error::Io { context, source },
        e => Error::build(FailureKind::Misc, e.to_string()),
    })?;
    Ok(st)
}

/// Step 6: `rename` into a new scratch entry; a directory is made u+rwx for the move (moving
/// a directory to another parent updates its `..`), then gets its canonical mode back.
fn move_to_scratch(spec: &OutputsSpec, out: &Held, st: &fs::Metadata) -> Result<ScratchItem> {
    let path = &out.path;
    let entry = spec.scratch.allocate_build(path).context(|| "allocating scratch space".to_owned())?;
    let loc = &out.location;
    let mut dir_mode = None;
    if st.file_type().is_dir() {
        let now = fs::symlink_metadata(loc)
            .context(|| format!("getting canonicalized permissions of directory `{}'", loc.display()))?;
        let mode = now.mode() & 0o7777;
        fs::set_permissions(loc, fs::Permissions::from_mode(mode | 0o700))
            .context(|| format!("making `{}' writable for move from chroot to store", loc.display()))?;
        dir_mode = Some(mode);
    }
    fs::rename(loc, entry.path())
        .context(|| format!("moving build output `{}' from the chroot to the store", spec.store.display(path)))?;
    if let Some(mode) = dir_mode {
        fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode))
            .context(|| format!("restoring permissions on directory `{}'", loc.display()))?;
    }
    Ok(entry)
}

/// The reference-scan candidates by hash part.
struct Candidates {
    by_hash: BTreeMap<HashPart, StorePath>,
}

impl Candidates {
    fn new(spec: &OutputsSpec) -> Candidates {
        let own = spec.drv.output_paths().filter_map(|(_, p)| p);
        let by_hash = spec.candidates.iter().chain(own).map(|p| (*p.hash_part(), p.clone())).collect();
        Candidates { by_hash }
    }

    /// Step 7.
    fn scan(&self, path: &Path) -> Result<(NarSummary, BTreeSet<StorePath>)> {
        let r = scan_path(path, self.by_hash.keys()).map_err(|e| nar_error(path, e))?;
        let refs = r.found.iter().filter_map(|h| self.by_hash.get(h)).cloned().collect();
        Ok((r.summary, refs))
    }
}

/// Step 8 (C++ `checkRefs`), for the output `path` with `references`.
fn check_references(spec: &OutputsSpec, path: &StorePath, references: &BTreeSet<StorePath>) -> Result<()> {
    let checks = [
        ("allowedReferences", true, false),
        ("allowedRequisites", true, true),
        ("disallowedReferences", false, false),
        ("disallowedRequisites", false, true),
    ];
    for (attr, allowed, recursive) in checks {
        let Some(value) = spec.drv.env_var(attr) else { continue };
        let listed = reference_specifiers(spec, value)?;
        let used = if recursive {
            // The requisites: the closures of the references, not asking about ourselves.
            let others: BTreeSet<StorePath> = references.iter().filter(|r| *r != path).cloned().collect();
            if others.is_empty() {
                others
            } else {
                (spec.closure)(&others)?
            }
        } else {
            references.clone()
        };
        if let Some(bad) = used.iter().find(|u| listed.contains(*u) != allowed) {
            return Err(rejected(format!(
                "output (`{}') is not allowed to refer to path `{}'",
                spec.store.display(path),
                spec.store.display(bad)
            )));
        }
    }
    Ok(())
}

/// `parseReferenceSpecifiers`: whitespace-separated store paths or output names. A token in
/// the store that is not a well-formed store path can match no reference; it is dropped.
fn reference_specifiers(spec: &OutputsSpec, value: &[u8]) -> Result<BTreeSet<StorePath>> {
    let mut set = BTreeSet::new();
    for token in value.split(|b| b" \t\n\r".contains(b)).filter(|t| !t.is_empty()) {
        let text = String::from_utf8_lossy(token);
        if spec.store.is_in_store_syntax(&text) {
            if let Ok(p) = spec.store.parse(&text) {
                set.insert(p);
            }
            continue;
        }
        let output =
            spec.drv.outputs.iter().find(|(n, _)| n.as_str().as_bytes() == token).and_then(|(_, o)| o.path.clone());
        match output {
            Some(p) => {
                set.insert(p);
            }
            None => return Err(rejected(format!("derivation contains an invalid reference specifier `{text}'"))),
        }
    }
    Ok(set)
}

/// A C++ `BuildError` raised after a successful builder.
fn rejected(message: String) -> Error {
    Error::build(FailureKind::OutputRejected, message)
}

fn nar_error(path: &Path, e: guix_formats::nar::NarError) -> Error {
    match e {
        guix_formats::nar::NarError::Io { context, source } => Error::Io { context, source },
        e => Error::build(FailureKind::Misc, format!("{e} (in `{}')", path.display())),
    }
}

/// `printHash16or32`.
fn print_hash_16_or_32(h: &Hash) -> String {
    if h.algo() == HashAlgo::Md5 {
        h.to_base16()
    } else {
        h.to_nix_base32()
    }
}

/// A sink feeding a hasher.
struct HashSink(Hasher);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `hashPath(algo, path)`: the hash of the NAR of `path`.
fn hash_path(algo: HashAlgo, path: &Path, shown: &Path) -> Result<Hash> {
    let mut sink = HashSink(algo.hasher());
    dump_path_to(path, &mut sink).map_err(|e| nar_error(shown, e))?;
    Ok(sink.0.finish())
}

/// `hashFile(algo, path)`: the hash of a file's contents.
fn hash_file(algo: HashAlgo, path: &Path, shown: &Path) -> Result<Hash> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .context(|| format!("opening file `{}'", shown.display()))?;
    let mut h = algo.hasher();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).context(|| format!("reading file `{}'", shown.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// C++ `copyFileRecursively(source, destination, deleteSource = true)`: regular files are
/// created with the source's mode (the process umask applies) and get its owner and group,
/// symlinks likewise, directories are created 0755 (umask applies) and get the source's
/// owner and group; each source is removed once copied. Anything else is refused.
fn copy_recursively(src: &Path, dst: &Path) -> Result<()> {
    let st = fs::symlink_metadata(src).context(|| format!("statting file `{}'", src.display()))?;
    let ft = st.file_type();
    if ft.is_file() {
        let mut from = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(src)
            .context(|| format!("opening `{}'", src.display()))?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(st.mode() & 0o7777)
            .custom_flags(libc::O_CLOEXEC)
            .open(dst)
            .context(|| format!("opening `{}'", src.display()))?;
        io::copy(&mut from, &mut to).context(|| format!("copying `{}' to `{}'", src.display(), dst.display()))?;
        // As in C++, a failing chown is not checked here: the ownership checks that follow
        // refuse what is not the build user's.
        let _ = std::os::unix::fs::fchown(&to, Some(st.uid()), Some(st.gid()));
    } else if ft.is_symlink() {
        let target = fs::read_link(src).context(|| "reading symlink target".to_owned())?;
        std::os::unix::fs::symlink(&target, dst).context(|| format!("creating symlink `{}'", dst.display()))?;
        let _ = std::os::unix::fs::lchown(dst, Some(st.uid()), Some(st.gid()));
    } else if ft.is_dir() {
        fs::DirBuilder::new().mode(0o755).create(dst).context(|| format!("creating directory `{}'", dst.display()))?;
        if st.mode() & 0o200 == 0 {
            // Writable, so that its entries can be removed as they are copied.
            fs::set_permissions(src, fs::Permissions::from_mode((st.mode() | 0o200) & 0o7777))
                .context(|| format!("making `{}' directory writable", src.display()))?;
        }
        let entries = fs::read_dir(src).context(|| format!("opening `{}'", src.display()))?;
        for entry in entries {
            let entry = entry.context(|| format!("reading directory `{}'", src.display()))?;
            let name = entry.file_name();
            copy_recursively(&src.join(&name), &dst.join(&name))?;
        }
        let _ = std::os::unix::fs::lchown(dst, Some(st.uid()), Some(st.gid()));
    } else {
        return Err(Error::build(FailureKind::Misc, format!("refusing to copy irregular file `{}'", src.display())));
    }
    let _ = if ft.is_dir() { fs::remove_dir(src) } else { fs::remove_file(src) };
    Ok(())
}

#[cfg(test)]
mod tests;

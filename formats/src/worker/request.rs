//! Requests: the opcode and the fields the daemon reads before `startWork` (spec §4, §8.3).
//!
//! Decoding follows `performOp` of the C++ daemon field by field: store paths where it uses
//! `readStorePath` (a string outside the store is its fatal "path `X' is not in the store"),
//! raw strings where it reads plain strings (validated later by the daemon, after `startWork`).
//! Every error from [`read_request`] is raised before `startWork`; per
//! [`ProtoError::closes_connection`] all of them but [`ProtoError::MalformedPath`] end the
//! connection after the error frame.
//!
//! AddToStore's NAR follows the request header inline and is *not* read here: the caller reads
//! it right after [`read_request`] returns (with the `nar` module). ImportPaths carries no
//! fields; its data arrives through [`super::TunnelSource`].

use std::collections::BTreeSet;
use std::fmt;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::budget::{Budget, Unpooled};
use super::io::{Enc, Reader};
use super::{protocol_minor, Limits, Opcode, ProtoError};
use crate::store_path::{StoreDir, StorePath};
use crate::wire::{int_from_word, WireError};

/// `BuildMode` (BuildPaths, client minor ≥ 15). The daemon does not range-check the value;
/// unknown values are kept and behave like [`BuildMode::Normal`] in the C++ daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMode {
    Normal,
    /// Root only; refused before `startWork` for others ("repairing is a privileged operation").
    Repair,
    Check,
    Other(u32),
}

impl BuildMode {
    pub fn from_wire(n: u32) -> BuildMode {
        match n {
            0 => BuildMode::Normal,
            1 => BuildMode::Repair,
            2 => BuildMode::Check,
            n => BuildMode::Other(n),
        }
    }

    pub fn to_wire(self) -> u32 {
        match self {
            BuildMode::Normal => 0,
            BuildMode::Repair => 1,
            BuildMode::Check => 2,
            BuildMode::Other(n) => n,
        }
    }
}

/// `GCAction` (CollectGarbage). Not range-checked by the C++ daemon either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcAction {
    ReturnLive,
    ReturnDead,
    DeleteDead,
    DeleteSpecific,
    Other(u32),
}

impl GcAction {
    pub fn from_wire(n: u32) -> GcAction {
        match n {
            0 => GcAction::ReturnLive,
            1 => GcAction::ReturnDead,
            2 => GcAction::DeleteDead,
            3 => GcAction::DeleteSpecific,
            n => GcAction::Other(n),
        }
    }

    pub fn to_wire(self) -> u32 {
        match self {
            GcAction::ReturnLive => 0,
            GcAction::ReturnDead => 1,
            GcAction::DeleteDead => 2,
            GcAction::DeleteSpecific => 3,
            GcAction::Other(n) => n,
        }
    }
}

/// A BuildPaths element: `drv` or `drv!out1,out2` (`parseDrvPathWithOutputs`: split at the
/// first `!`, outputs comma-separated, empty names dropped), or a plain store item to
/// substitute. A minimal local type; the `derivation` module may grow a richer one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DerivedPath {
    pub path: StorePath,
    /// Empty: all outputs (or a non-derivation item).
    pub outputs: BTreeSet<String>,
}

impl DerivedPath {
    /// The wire form under `store`.
    pub fn to_wire(&self, store: &StoreDir) -> String {
        let mut s = store.display(&self.path);
        if !self.outputs.is_empty() {
            s.push('!');
            let outs: Vec<&str> = self.outputs.iter().map(String::as_str).collect();
            s.push_str(&outs.join(","));
        }
        s
    }
}

/// SetOptions (19) fields, in wire order. Which are on the wire depends on the client's minor
/// (spec §4.2); fields absent for a version decode as their [`Default`], the three that only
/// old clients send are `None` for current ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetOptions {
    pub keep_failed: bool,
    pub keep_going: bool,
    pub fallback: bool,
    pub verbosity: u32,
    /// minor < 0x61 only (`build-max-jobs`); Guile sends 1 when unset.
    pub max_build_jobs: Option<u32>,
    /// minor < 0x61 only (`build-max-silent-time`); Guile sends 3600 when unset.
    pub max_silent_time: Option<u32>,
    /// minor ≥ 2.
    pub use_build_hook: bool,
    /// minor ≥ 4.
    pub build_verbosity: u32,
    /// minor ≥ 4.
    pub log_type: u32,
    /// minor ≥ 4.
    pub print_build_trace: bool,
    /// 6 ≤ minor < 0x61 (`build-cores`).
    pub build_cores: Option<u32>,
    /// minor ≥ 10.
    pub use_substitutes: bool,
    /// minor ≥ 12: `(key, value)` pairs in the client's order.
    pub overrides: Vec<(String, String)>,
}

impl Default for SetOptions {
    /// The Guile client's defaults.
    fn default() -> Self {
        SetOptions {
            keep_failed: false,
            keep_going: false,
            fallback: false,
            verbosity: 0,
            max_build_jobs: None,
            max_silent_time: None,
            use_build_hook: true,
            build_verbosity: 0,
            log_type: 0,
            print_build_trace: true,
            build_cores: None,
            use_substitutes: true,
            overrides: Vec::new(),
        }
    }
}

impl SetOptions {
    /// What a peer decoding with `version` sees of these options.
    pub fn for_version(&self, version: u32) -> SetOptions {
        let m = protocol_minor(version);
        let d = SetOptions::default();
        let old = m < 0x61;
        SetOptions {
            keep_failed: self.keep_failed,
            keep_going: self.keep_going,
            fallback: self.fallback,
            verbosity: self.verbosity,
            max_build_jobs: old.then_some(self.max_build_jobs.unwrap_or(1)),
            max_silent_time: old.then_some(self.max_silent_time.unwrap_or(3600)),
            use_build_hook: if m >= 2 { self.use_build_hook } else { d.use_build_hook },
            build_verbosity: if m >= 4 { self.build_verbosity } else { d.build_verbosity },
            log_type: if m >= 4 { self.log_type } else { d.log_type },
            print_build_trace: if m >= 4 { self.print_build_trace } else { d.print_build_trace },
            build_cores: (old && m >= 6).then_some(self.build_cores.unwrap_or(0)),
            use_substitutes: if m >= 10 { self.use_substitutes } else { d.use_substitutes },
            overrides: if m >= 12 { self.overrides.clone() } else { Vec::new() },
        }
    }
}

/// CollectGarbage (20) options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOptions {
    pub action: GcAction,
    pub paths_to_delete: BTreeSet<StorePath>,
    /// Refused by the daemon after `startWork` ("you are not allowed to ignore liveness").
    pub ignore_liveness: bool,
    /// Stop after freeing this many bytes; `u64::MAX` = no limit.
    pub max_freed: u64,
}

/// One request, as decoded by the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Raw: the daemon asserts it is a store path only after `startWork` (recoverable).
    IsValidPath(String),
    HasSubstitutes(StorePath),
    QueryPathHash(StorePath),
    QueryReferences(StorePath),
    QueryReferrers(StorePath),
    /// Header only: the NAR follows on the stream and is read by the caller. `fixed` and
    /// `recursive` are `== 1` tests; `fixed == false` makes the daemon use recursive SHA-256.
    AddToStore {
        name: String,
        fixed: bool,
        recursive: bool,
        hash_algo: String,
    },
    AddTextToStore {
        name: String,
        contents: Vec<u8>,
        references: BTreeSet<StorePath>,
    },
    BuildPaths {
        paths: Vec<DerivedPath>,
        mode: BuildMode,
    },
    EnsurePath(StorePath),
    AddTempRoot(StorePath),
    /// Raw: the daemon makes it absolute (`absPath`, relative to `/`).
    AddIndirectRoot(String),
    SyncWithGC,
    FindRoots,
    /// `sign` is `== 1`.
    ExportPath {
        path: StorePath,
        sign: bool,
    },
    QueryDeriver(StorePath),
    SetOptions(SetOptions),
    CollectGarbage(GcOptions),
    /// Raw (`absPath`'d, not asserted).
    QuerySubstitutablePathInfo(String),
    QueryDerivationOutputs(StorePath),
    QueryAllValidPaths,
    QueryFailedPaths,
    /// Raw strings (`readStrings<PathSet>`).
    ClearFailedPaths(BTreeSet<String>),
    QueryPathInfo(StorePath),
    /// No fields: the data comes through [`super::TunnelSource`].
    ImportPaths,
    QueryDerivationOutputNames(StorePath),
    /// Raw: the daemon checks the length (32) after `startWork`.
    QueryPathFromHashPart(String),
    QuerySubstitutablePathInfos(BTreeSet<StorePath>),
    QueryValidPaths(BTreeSet<StorePath>),
    QuerySubstitutablePaths(BTreeSet<StorePath>),
    QueryValidDerivers(StorePath),
    OptimiseStore,
    VerifyStore {
        check_contents: bool,
        repair: bool,
    },
    BuiltinBuilders,
    SubstituteURLs,
}

impl Request {
    pub fn opcode(&self) -> Opcode {
        use Request as R;
        match self {
            R::IsValidPath(_) => Opcode::IsValidPath,
            R::HasSubstitutes(_) => Opcode::HasSubstitutes,
            R::QueryPathHash(_) => Opcode::QueryPathHash,
            R::QueryReferences(_) => Opcode::QueryReferences,
            R::QueryReferrers(_) => Opcode::QueryReferrers,
            R::AddToStore { .. } => Opcode::AddToStore,
            R::AddTextToStore { .. } => Opcode::AddTextToStore,
            R::BuildPaths { .. } => Opcode::BuildPaths,
            R::EnsurePath(_) => Opcode::EnsurePath,
            R::AddTempRoot(_) => Opcode::AddTempRoot,
            R::AddIndirectRoot(_) => Opcode::AddIndirectRoot,
            R::SyncWithGC => Opcode::SyncWithGC,
            R::FindRoots => Opcode::FindRoots,
            R::ExportPath { .. } => Opcode::ExportPath,
            R::QueryDeriver(_) => Opcode::QueryDeriver,
            R::SetOptions(_) => Opcode::SetOptions,
            R::CollectGarbage(_) => Opcode::CollectGarbage,
            R::QuerySubstitutablePathInfo(_) => Opcode::QuerySubstitutablePathInfo,
            R::QueryDerivationOutputs(_) => Opcode::QueryDerivationOutputs,
            R::QueryAllValidPaths => Opcode::QueryAllValidPaths,
            R::QueryFailedPaths => Opcode::QueryFailedPaths,
            R::ClearFailedPaths(_) => Opcode::ClearFailedPaths,
            R::QueryPathInfo(_) => Opcode::QueryPathInfo,
            R::ImportPaths => Opcode::ImportPaths,
            R::QueryDerivationOutputNames(_) => Opcode::QueryDerivationOutputNames,
            R::QueryPathFromHashPart(_) => Opcode::QueryPathFromHashPart,
            R::QuerySubstitutablePathInfos(_) => Opcode::QuerySubstitutablePathInfos,
            R::QueryValidPaths(_) => Opcode::QueryValidPaths,
            R::QuerySubstitutablePaths(_) => Opcode::QuerySubstitutablePaths,
            R::QueryValidDerivers(_) => Opcode::QueryValidDerivers,
            R::OptimiseStore => Opcode::OptimiseStore,
            R::VerifyStore { .. } => Opcode::VerifyStore,
            R::BuiltinBuilders => Opcode::BuiltinBuilders,
            R::SubstituteURLs => Opcode::SubstituteURLs,
        }
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self)
    }
}

/// Reads the next opcode. `Ok(None)` is a clean end of file before the first byte (the client
/// closed the connection between requests). A word with a non-zero high half is the daemon's
/// silent disconnect; an unknown number is "invalid operation N" (frame, then close).
pub async fn read_op<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> Result<Option<Opcode>, ProtoError> {
    let mut word = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        let n = r.read(word.get_mut(got..).unwrap_or_default()).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(WireError::Eof.into());
        }
        got += n;
    }
    let n = int_from_word(u64::from_le_bytes(word))?;
    Ok(Some(Opcode::try_from(n)?))
}

/// Daemon side: reads the next request (opcode and fields). `Ok(None)` on clean EOF.
pub async fn read_request<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    store: &StoreDir,
    client_version: u32,
    limits: &Limits,
) -> Result<Option<Request>, ProtoError> {
    match read_op(r).await? {
        None => Ok(None),
        Some(op) => Ok(Some(read_request_body(r, op, store, client_version, limits).await?)),
    }
}

/// Daemon side: reads the fields of `op`, conditioned on the client's version; the request's
/// whole size is bounded by [`Limits::max_request_bytes`] (no shared pool).
pub async fn read_request_body<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    op: Opcode,
    store: &StoreDir,
    client_version: u32,
    limits: &Limits,
) -> Result<Request, ProtoError> {
    read_request_budgeted(r, op, store, client_version, limits, &mut Unpooled).await
}

/// [`read_request_body`], drawing the request's bytes from `budget` as they arrive (see
/// [`super::budget`]).
pub async fn read_request_budgeted<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    op: Opcode,
    store: &StoreDir,
    client_version: u32,
    limits: &Limits,
    budget: &mut dyn Budget,
) -> Result<Request, ProtoError> {
    use Request as Q;
    let minor = protocol_minor(client_version);
    let mut rd = Reader::for_request(r, store, limits, budget);
    let req = match op {
        Opcode::IsValidPath => Q::IsValidPath(rd.short_string("path").await?),
        Opcode::HasSubstitutes => Q::HasSubstitutes(rd.store_path().await?),
        Opcode::QueryPathHash => Q::QueryPathHash(rd.store_path().await?),
        Opcode::QueryReferences => Q::QueryReferences(rd.store_path().await?),
        Opcode::QueryReferrers => Q::QueryReferrers(rd.store_path().await?),
        Opcode::AddToStore => {
            let name = rd.short_string("name").await?;
            let fixed = rd.bool_eq1().await?;
            let recursive = rd.bool_eq1().await?;
            let hash_algo = rd.short_string("hash algorithm").await?;
            Q::AddToStore { name, fixed, recursive, hash_algo }
        }
        Opcode::AddTextToStore => {
            let name = rd.short_string("name").await?;
            let max = limits.max_text_len;
            let contents = rd.bytes("text contents", max).await?;
            let references = rd.store_path_set().await?;
            Q::AddTextToStore { name, contents, references }
        }
        Opcode::BuildPaths => {
            let n = rd.list_count("path list").await?;
            let mut paths = Vec::new();
            for _ in 0..n {
                let s = rd.store_path_string().await?;
                let (drv, outs) = match s.split_once('!') {
                    Some((d, o)) => (d.to_owned(), o),
                    None => (s.clone(), ""),
                };
                let outputs = outs.split(',').filter(|o| !o.is_empty()).map(str::to_owned).collect();
                let path = rd.typed_path(drv)?;
                paths.push(DerivedPath { path, outputs });
            }
            let mode = if minor >= 15 { BuildMode::from_wire(rd.int().await?) } else { BuildMode::Normal };
            Q::BuildPaths { paths, mode }
        }
        Opcode::EnsurePath => Q::EnsurePath(rd.store_path().await?),
        Opcode::AddTempRoot => Q::AddTempRoot(rd.store_path().await?),
        Opcode::AddIndirectRoot => Q::AddIndirectRoot(rd.short_string("path").await?),
        Opcode::SyncWithGC => Q::SyncWithGC,
        Opcode::FindRoots => Q::FindRoots,
        Opcode::ExportPath => {
            let path = rd.store_path().await?;
            let sign = rd.bool_eq1().await?;
            Q::ExportPath { path, sign }
        }
        Opcode::QueryDeriver => Q::QueryDeriver(rd.store_path().await?),
        Opcode::SetOptions => {
            let mut o = SetOptions {
                keep_failed: rd.bool().await?,
                keep_going: rd.bool().await?,
                fallback: rd.bool().await?,
                verbosity: rd.int().await?,
                ..SetOptions::default()
            };
            if minor < 0x61 {
                o.max_build_jobs = Some(rd.int().await?);
                o.max_silent_time = Some(rd.int().await?);
            }
            if minor >= 2 {
                o.use_build_hook = rd.bool().await?;
            }
            if minor >= 4 {
                o.build_verbosity = rd.int().await?;
                o.log_type = rd.int().await?;
                o.print_build_trace = rd.bool().await?;
            }
            if (6..0x61).contains(&minor) {
                o.build_cores = Some(rd.int().await?);
            }
            if minor >= 10 {
                o.use_substitutes = rd.bool().await?;
            }
            if minor >= 12 {
                let max = limits.max_overrides;
                let n = rd.count("option overrides", max).await?;
                for _ in 0..n {
                    let k = rd.long_string("option name").await?;
                    let v = rd.long_string("option value").await?;
                    o.overrides.push((k, v));
                }
            }
            Q::SetOptions(o)
        }
        Opcode::CollectGarbage => {
            let action = GcAction::from_wire(rd.int().await?);
            let paths_to_delete = rd.store_path_set().await?;
            let ignore_liveness = rd.bool().await?;
            let max_freed = rd.u64().await?;
            rd.int().await?;
            if minor >= 5 {
                rd.int().await?;
                rd.int().await?;
            }
            Q::CollectGarbage(GcOptions { action, paths_to_delete, ignore_liveness, max_freed })
        }
        Opcode::QuerySubstitutablePathInfo => Q::QuerySubstitutablePathInfo(rd.short_string("path").await?),
        Opcode::QueryDerivationOutputs => Q::QueryDerivationOutputs(rd.store_path().await?),
        Opcode::QueryAllValidPaths => Q::QueryAllValidPaths,
        Opcode::QueryFailedPaths => Q::QueryFailedPaths,
        Opcode::ClearFailedPaths => Q::ClearFailedPaths(rd.strings("path list").await?.into_iter().collect()),
        Opcode::QueryPathInfo => Q::QueryPathInfo(rd.store_path().await?),
        Opcode::ImportPaths => Q::ImportPaths,
        Opcode::QueryDerivationOutputNames => Q::QueryDerivationOutputNames(rd.store_path().await?),
        Opcode::QueryPathFromHashPart => Q::QueryPathFromHashPart(rd.short_string("hash part").await?),
        Opcode::QuerySubstitutablePathInfos => Q::QuerySubstitutablePathInfos(rd.store_path_set().await?),
        Opcode::QueryValidPaths => Q::QueryValidPaths(rd.store_path_set().await?),
        Opcode::QuerySubstitutablePaths => Q::QuerySubstitutablePaths(rd.store_path_set().await?),
        Opcode::QueryValidDerivers => Q::QueryValidDerivers(rd.store_path().await?),
        Opcode::OptimiseStore => Q::OptimiseStore,
        Opcode::VerifyStore => {
            let check_contents = rd.bool().await?;
            let repair = rd.bool().await?;
            Q::VerifyStore { check_contents, repair }
        }
        Opcode::BuiltinBuilders => Q::BuiltinBuilders,
        Opcode::SubstituteURLs => Q::SubstituteURLs,
    };
    rd.finish(op, req)
}

pub(crate) fn encode_request(e: &mut Enc, req: &Request, store: &StoreDir, version: u32) {
    use Request as Q;
    let minor = protocol_minor(version);
    e.int(req.opcode().number());
    match req {
        Q::IsValidPath(s) | Q::AddIndirectRoot(s) | Q::QuerySubstitutablePathInfo(s) | Q::QueryPathFromHashPart(s) => {
            e.str(s)
        }
        Q::HasSubstitutes(p)
        | Q::QueryPathHash(p)
        | Q::QueryReferences(p)
        | Q::QueryReferrers(p)
        | Q::EnsurePath(p)
        | Q::AddTempRoot(p)
        | Q::QueryDeriver(p)
        | Q::QueryDerivationOutputs(p)
        | Q::QueryPathInfo(p)
        | Q::QueryDerivationOutputNames(p)
        | Q::QueryValidDerivers(p) => e.path(store, p),
        Q::AddToStore { name, fixed, recursive, hash_algo } => {
            e.str(name);
            e.bool(*fixed);
            e.bool(*recursive);
            e.str(hash_algo);
        }
        Q::AddTextToStore { name, contents, references } => {
            e.str(name);
            e.bytes(contents);
            e.paths(store, references.iter());
        }
        Q::BuildPaths { paths, mode } => {
            e.len(paths.len());
            for p in paths {
                e.str(&p.to_wire(store));
            }
            if minor >= 15 {
                e.int(mode.to_wire());
            }
        }
        Q::ExportPath { path, sign } => {
            e.path(store, path);
            e.bool(*sign);
        }
        Q::SetOptions(o) => {
            e.bool(o.keep_failed);
            e.bool(o.keep_going);
            e.bool(o.fallback);
            e.int(o.verbosity);
            if minor < 0x61 {
                e.int(o.max_build_jobs.unwrap_or(1));
                e.int(o.max_silent_time.unwrap_or(3600));
            }
            if minor >= 2 {
                e.bool(o.use_build_hook);
            }
            if minor >= 4 {
                e.int(o.build_verbosity);
                e.int(o.log_type);
                e.bool(o.print_build_trace);
            }
            if (6..0x61).contains(&minor) {
                e.int(o.build_cores.unwrap_or(0));
            }
            if minor >= 10 {
                e.bool(o.use_substitutes);
            }
            if minor >= 12 {
                e.len(o.overrides.len());
                for (k, v) in &o.overrides {
                    e.str(k);
                    e.str(v);
                }
            }
        }
        Q::CollectGarbage(g) => {
            e.int(g.action.to_wire());
            e.paths(store, g.paths_to_delete.iter());
            e.bool(g.ignore_liveness);
            e.u64(g.max_freed);
            e.int(0);
            if minor >= 5 {
                e.int(0);
                e.int(0);
            }
        }
        Q::ClearFailedPaths(ss) => e.strs(ss.iter()),
        Q::QuerySubstitutablePathInfos(ps) | Q::QueryValidPaths(ps) | Q::QuerySubstitutablePaths(ps) => {
            e.paths(store, ps.iter())
        }
        Q::VerifyStore { check_contents, repair } => {
            e.bool(*check_contents);
            e.bool(*repair);
        }
        Q::SyncWithGC
        | Q::FindRoots
        | Q::QueryAllValidPaths
        | Q::QueryFailedPaths
        | Q::ImportPaths
        | Q::OptimiseStore
        | Q::BuiltinBuilders
        | Q::SubstituteURLs => {}
    }
}

/// Client side: writes a request (opcode and fields) and flushes. `version` is the version the
/// daemon decodes with, i.e. the client's announced version (see the module docs of
/// [`super`]). For AddToStore the caller then writes the NAR; for ImportPaths it answers the
/// daemon's `STDERR_READ`s.
pub async fn write_request<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    req: &Request,
    store: &StoreDir,
    version: u32,
) -> Result<(), ProtoError> {
    let mut e = Enc::default();
    encode_request(&mut e, req, store, version);
    e.send(w).await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store_path::HashPart;
    use crate::worker::test_util::words;
    use proptest::prelude::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().unwrap()
    }

    pub(crate) fn arb_path() -> impl Strategy<Value = StorePath> {
        (proptest::array::uniform20(any::<u8>()), "[a-zA-Z0-9+_?=][a-zA-Z0-9+._?=-]{0,20}")
            .prop_map(|(d, n)| StorePath::from_parts(HashPart::from_digest(&d), &n).unwrap())
    }

    pub(crate) fn arb_paths() -> impl Strategy<Value = BTreeSet<StorePath>> {
        proptest::collection::btree_set(arb_path(), 0..4)
    }

    fn arb_str() -> impl Strategy<Value = String> {
        "\\PC{0,30}"
    }

    fn arb_derived() -> impl Strategy<Value = DerivedPath> {
        (arb_path(), proptest::collection::btree_set("[a-z][a-z0-9-]{0,6}", 0..3))
            .prop_map(|(path, outputs)| DerivedPath { path, outputs })
    }

    fn arb_options() -> impl Strategy<Value = SetOptions> {
        (
            (any::<bool>(), any::<bool>(), any::<bool>(), any::<u32>()),
            (any::<Option<u32>>(), any::<Option<u32>>(), any::<bool>(), any::<u32>(), any::<u32>(), any::<bool>()),
            (any::<Option<u32>>(), any::<bool>()),
            proptest::collection::vec((arb_str(), arb_str()), 0..4),
        )
            .prop_map(|((kf, kg, fb, v), (mj, ms, bh, bv, lt, pt), (bc, us), overrides)| SetOptions {
                keep_failed: kf,
                keep_going: kg,
                fallback: fb,
                verbosity: v,
                max_build_jobs: mj,
                max_silent_time: ms,
                use_build_hook: bh,
                build_verbosity: bv,
                log_type: lt,
                print_build_trace: pt,
                build_cores: bc,
                use_substitutes: us,
                overrides,
            })
    }

    pub(crate) fn arb_request() -> impl Strategy<Value = Request> {
        use Request as Q;
        prop_oneof![
            arb_str().prop_map(Q::IsValidPath),
            arb_path().prop_map(Q::HasSubstitutes),
            arb_path().prop_map(Q::QueryPathHash),
            arb_path().prop_map(Q::QueryReferences),
            arb_path().prop_map(Q::QueryReferrers),
            (arb_str(), any::<bool>(), any::<bool>(), arb_str())
                .prop_map(|(name, fixed, recursive, hash_algo)| Q::AddToStore { name, fixed, recursive, hash_algo }),
            (arb_str(), proptest::collection::vec(any::<u8>(), 0..40), arb_paths())
                .prop_map(|(name, contents, references)| Q::AddTextToStore { name, contents, references }),
            (proptest::collection::vec(arb_derived(), 0..4), prop_oneof![Just(0u32), Just(1), Just(2), any::<u32>()])
                .prop_map(|(paths, m)| Q::BuildPaths { paths, mode: BuildMode::from_wire(m) }),
            arb_path().prop_map(Q::EnsurePath),
            arb_path().prop_map(Q::AddTempRoot),
            arb_str().prop_map(Q::AddIndirectRoot),
            Just(Q::SyncWithGC),
            Just(Q::FindRoots),
            (arb_path(), any::<bool>()).prop_map(|(path, sign)| Q::ExportPath { path, sign }),
            arb_path().prop_map(Q::QueryDeriver),
            arb_options().prop_map(Q::SetOptions),
            (any::<u32>(), arb_paths(), any::<bool>(), any::<u64>()).prop_map(
                |(a, paths_to_delete, ignore_liveness, max_freed)| {
                    Q::CollectGarbage(GcOptions {
                        action: GcAction::from_wire(a),
                        paths_to_delete,
                        ignore_liveness,
                        max_freed,
                    })
                }
            ),
            arb_str().prop_map(Q::QuerySubstitutablePathInfo),
            arb_path().prop_map(Q::QueryDerivationOutputs),
            Just(Q::QueryAllValidPaths),
            Just(Q::QueryFailedPaths),
            proptest::collection::btree_set(arb_str(), 0..4).prop_map(Q::ClearFailedPaths),
            arb_path().prop_map(Q::QueryPathInfo),
            Just(Q::ImportPaths),
            arb_path().prop_map(Q::QueryDerivationOutputNames),
            arb_str().prop_map(Q::QueryPathFromHashPart),
            arb_paths().prop_map(Q::QuerySubstitutablePathInfos),
            arb_paths().prop_map(Q::QueryValidPaths),
            arb_paths().prop_map(Q::QuerySubstitutablePaths),
            arb_path().prop_map(Q::QueryValidDerivers),
            Just(Q::OptimiseStore),
            (any::<bool>(), any::<bool>())
                .prop_map(|(check_contents, repair)| Q::VerifyStore { check_contents, repair }),
            Just(Q::BuiltinBuilders),
            Just(Q::SubstituteURLs),
        ]
    }

    /// What a daemon decoding with `version` sees of `req`.
    fn normalized(req: &Request, version: u32) -> Request {
        match req {
            Request::SetOptions(o) => Request::SetOptions(o.for_version(version)),
            Request::BuildPaths { paths, .. } if protocol_minor(version) < 15 => {
                Request::BuildPaths { paths: paths.clone(), mode: BuildMode::Normal }
            }
            r => r.clone(),
        }
    }

    async fn decode(bytes: &[u8], version: u32) -> Result<Option<Request>, ProtoError> {
        read_request(&mut &bytes[..], &StoreDir::default(), version, &Limits::DEFAULT).await
    }

    #[tokio::test]
    async fn add_text_trace() {
        let bytes = words(
            "0800000000000000 0200000000000000 6869000000000000 0600000000000000 68656c6c6f0a0000 0000000000000000",
        );
        let req = decode(&bytes, 0x164).await.unwrap().unwrap();
        let want =
            Request::AddTextToStore { name: "hi".into(), contents: b"hello\n".to_vec(), references: BTreeSet::new() };
        assert_eq!(req, want);
        let mut out = Vec::new();
        write_request(&mut out, &want, &StoreDir::default(), 0x164).await.unwrap();
        assert_eq!(out, bytes);
    }

    #[tokio::test]
    async fn not_in_store_is_fatal() {
        let bytes = words("1a00000000000000 0600000000000000 2f746d702f780000");
        let e = decode(&bytes, 0x164).await.unwrap_err();
        assert_eq!(e.to_string(), "path `/tmp/x' is not in the store");
        assert!(e.closes_connection());
    }

    #[tokio::test]
    async fn malformed_in_store_path_is_recoverable() {
        // QueryValidPaths ["/gnu/store/x", valid]: read to the end, then reported.
        let mut e = Enc::default();
        e.int(31);
        e.len(2);
        e.str("/gnu/store/x");
        e.str("/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-hi");
        e.int(1); // next request: IsValidPath...
        let mut r = &e.buf[..];
        let err = read_request(&mut r, &StoreDir::default(), 0x164, &Limits::DEFAULT).await.unwrap_err();
        assert_eq!(err.to_string(), "path `/gnu/store/x' is not valid");
        assert!(!err.closes_connection());
        assert_eq!(r.len(), 8, "stream must stay in sync");
    }

    #[tokio::test]
    async fn invalid_ops_and_eof() {
        for n in [0u32, 2, 15, 17, 36, 79, 82, 99] {
            let mut e = Enc::default();
            e.int(n);
            assert_eq!(decode(&e.buf, 0x164).await.unwrap_err().to_string(), format!("invalid operation {n}"));
        }
        assert!(decode(&[], 0x164).await.unwrap().is_none());
        assert!(decode(&[1, 0, 0], 0x164).await.unwrap_err().is_eof());
        let high = 0x0000_0001_0000_0001u64.to_le_bytes();
        assert_eq!(
            decode(&high, 0x164).await.unwrap_err().to_string(),
            "implementation cannot deal with > 32-bit integers"
        );
    }

    #[tokio::test]
    async fn limits_are_enforced() {
        let mut e = Enc::default();
        e.int(8);
        e.str("hi");
        e.int(u32::MAX); // announces 4 GiB of contents
        let err = decode(&e.buf, 0x164).await.unwrap_err();
        assert!(matches!(err, ProtoError::StringTooLong { what: "text contents", .. }), "{err}");
        let mut e = Enc::default();
        e.int(31);
        e.int(u32::MAX);
        assert!(matches!(decode(&e.buf, 0x164).await.unwrap_err(), ProtoError::ListTooLong { .. }));
        let mut e = Enc::default();
        e.int(19);
        for _ in 0..9 {
            e.int(0);
        }
        e.int(1_000_000);
        assert!(matches!(
            decode(&e.buf, 0x164).await.unwrap_err(),
            ProtoError::ListTooLong { what: "option overrides", .. }
        ));
    }

    #[tokio::test]
    async fn the_sum_of_a_request_is_bounded() {
        let limits = Limits::DEFAULT;
        // ClearFailedPaths: each path within max_path_len, their sum over the request limit.
        let path = "x".repeat(4096);
        let n = limits.max_request_bytes / 4096 + 1;
        let mut e = Enc::default();
        e.int(25);
        e.len(n as usize);
        for _ in 0..n {
            e.str(&path);
        }
        let err = decode(&e.buf, 0x164).await.unwrap_err();
        assert!(matches!(err, ProtoError::RequestTooLarge { .. }), "{err}");
        assert!(err.closes_connection());
        // Empty strings still cost their overhead: 2^20 of them do not fit.
        let mut e = Enc::default();
        e.int(25);
        e.len(1 << 20);
        for _ in 0..1 << 20 {
            e.str("");
        }
        assert!(matches!(decode(&e.buf, 0x164).await.unwrap_err(), ProtoError::RequestTooLarge { .. }));
        // SetOptions: 40 overrides of 1 MiB values.
        let mut e = Enc::default();
        e.int(19);
        for w in [0u32, 0, 0, 0, 1, 0, 0, 1, 0] {
            e.int(w);
        }
        e.len(40);
        let big = "v".repeat(1 << 20);
        for i in 0..40 {
            e.str(&format!("k{i}"));
            e.str(&big);
        }
        assert!(matches!(decode(&e.buf, 0x164).await.unwrap_err(), ProtoError::RequestTooLarge { .. }));
        // The largest text with 10,000 references is fine.
        let refs: BTreeSet<StorePath> = (0..10_000u32)
            .map(|i| {
                let mut d = [0u8; 20];
                d[..4].copy_from_slice(&i.to_le_bytes());
                StorePath::from_parts(HashPart::from_digest(&d), &format!("reference-{i}")).unwrap()
            })
            .collect();
        let req = Request::AddTextToStore {
            name: "big.drv".into(),
            contents: vec![b'x'; limits.max_text_len as usize],
            references: refs,
        };
        let mut out = Vec::new();
        write_request(&mut out, &req, &StoreDir::default(), 0x164).await.unwrap();
        assert_eq!(decode(&out, 0x164).await.unwrap(), Some(req));
    }

    /// Records what the decoder asked for and refuses past `max`.
    struct Recording {
        totals: Vec<u64>,
        max: u64,
    }

    impl Budget for Recording {
        fn admit(&mut self, total: u64) -> Option<crate::worker::budget::Wait<'_>> {
            self.totals.push(total);
            let refuse = total > self.max;
            Some(Box::pin(async move {
                match refuse {
                    true => Err(ProtoError::Budget("daemon busy".into())),
                    false => Ok(()),
                }
            }))
        }
    }

    #[tokio::test]
    async fn bytes_are_drawn_from_the_budget_as_they_arrive() {
        let mut e = Enc::default();
        e.len(3);
        for p in ["/gnu/store/a", "/gnu/store/bb", "/gnu/store/ccc"] {
            e.str(p);
        }
        let store = StoreDir::default();
        // The request read under a budget that refuses past `max` bytes; what it was asked for.
        let read = |max| {
            let (buf, store) = (&e.buf, &store);
            async move {
                let mut budget = Recording { totals: Vec::new(), max };
                let r = read_request_budgeted(
                    &mut &buf[..],
                    Opcode::ClearFailedPaths,
                    store,
                    0x164,
                    &Limits::DEFAULT,
                    &mut budget,
                )
                .await;
                (r, budget.totals)
            }
        };
        let (r, totals) = read(u64::MAX).await;
        assert!(matches!(r.unwrap(), Request::ClearFailedPaths(ref s) if s.len() == 3));
        assert_eq!(totals, vec![12 + 64, 12 + 64 + 13 + 64, 12 + 64 + 13 + 64 + 14 + 64]);
        // Refused at the second string: the error is the budget's, and closes the connection.
        let (r, totals) = read(100).await;
        let err = r.unwrap_err();
        assert_eq!(err.to_string(), "daemon busy");
        assert!(err.closes_connection());
        assert_eq!(totals.len(), 2);
    }

    #[tokio::test]
    async fn set_options_layouts() {
        // 0x164: 4 ints, useBuildHook, 3 ints, useSubstitutes, overrides (n=0) = 10 words.
        let o = SetOptions::default();
        let mut out = Vec::new();
        write_request(&mut out, &Request::SetOptions(o.clone()), &StoreDir::default(), 0x164).await.unwrap();
        assert_eq!(out.len(), 8 * 11);
        // 0x15f: plus maxBuildJobs, maxSilentTime, buildCores.
        let mut old = Vec::new();
        write_request(&mut old, &Request::SetOptions(o), &StoreDir::default(), 0x15f).await.unwrap();
        assert_eq!(old.len(), 8 * 14);
    }

    #[tokio::test]
    async fn build_paths_syntax() {
        let mut e = Enc::default();
        e.int(9);
        e.len(2);
        e.str("/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-x.drv!out,dev");
        e.str("/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-hi");
        e.int(2);
        let Request::BuildPaths { paths, mode } = decode(&e.buf, 0x164).await.unwrap().unwrap() else { panic!() };
        assert_eq!(mode, BuildMode::Check);
        assert_eq!(paths[0].outputs.iter().collect::<Vec<_>>(), ["dev", "out"]);
        assert_eq!(paths[0].path.name(), "x.drv");
        assert!(paths[1].outputs.is_empty());
    }

    proptest! {
        #[test]
        fn round_trip(req in arb_request(), version in prop_oneof![Just(0x164u32), 0x100u32..0x170]) {
            let rt = rt();
            let mut out = Vec::new();
            rt.block_on(write_request(&mut out, &req, &StoreDir::default(), version)).unwrap();
            let mut r = &out[..];
            let got = rt.block_on(read_request(&mut r, &StoreDir::default(), version, &Limits::DEFAULT)).unwrap();
            prop_assert_eq!(got, Some(normalized(&req, version)));
            prop_assert!(r.is_empty());
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200), version in 0u32..0x200) {
            let rt = rt();
            let _ = rt.block_on(decode(&b, version));
        }

        #[test]
        fn garbage_after_valid_opcode(op in proptest::sample::select(Opcode::ALL.to_vec()),
                                      b in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..200),
                                      version in 0u32..0x200) {
            let rt = rt();
            let _ = rt.block_on(read_request_body(&mut &b[..], op, &StoreDir::default(), version, &Limits::DEFAULT));
        }

        #[test]
        fn truncation_is_an_error(req in arb_request(), cut in any::<prop::sample::Index>()) {
            let rt = rt();
            let mut out = Vec::new();
            rt.block_on(write_request(&mut out, &req, &StoreDir::default(), 0x164)).unwrap();
            let n = cut.index(out.len());
            if n > 0 {
                let r = rt.block_on(decode(&out[..n], 0x164));
                prop_assert!(r.is_err());
            }
        }
    }
}

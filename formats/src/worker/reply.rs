//! Replies: what follows `STDERR_LAST`, typed per operation (spec §4, §8.3).
//!
//! Sets are encoded in byte order of the full path and deduplicated, as the C++ daemon's
//! `PathSet`s are; [`StorePath`]'s order is that order, so a `BTreeSet<StorePath>` encodes
//! exactly like the daemon's reply.

use std::collections::{BTreeMap, BTreeSet};

use tokio::io::{AsyncRead, AsyncWrite};

use super::io::{Enc, Reader};
use super::{protocol_minor, Limits, Opcode, ProtoError};
use crate::hash::{Hash, HashAlgo};
use crate::store_path::{StoreDir, StorePath};

/// QueryPathInfo (26) reply. There is no "valid" flag: an invalid path is an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// `""` on the wire when unknown.
    pub deriver: Option<StorePath>,
    /// SHA-256 of the NAR, sent as bare lowercase base16.
    pub nar_hash: Hash,
    pub references: BTreeSet<StorePath>,
    /// Seconds since the epoch, truncated to 32 bits by the daemon's `writeInt`.
    pub registration_time: u32,
    pub nar_size: u64,
}

/// What a substituter knows about a path (ops 21 and 30).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubstitutablePathInfo {
    pub deriver: Option<StorePath>,
    pub references: BTreeSet<StorePath>,
    pub download_size: u64,
    /// Not sent by op 21 to clients with minor < 7 (decodes as 0).
    pub nar_size: u64,
}

/// A reply, shaped by its operation (see [`Reply::answers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// SetOptions: nothing follows `STDERR_LAST`.
    Nothing,
    /// `int 1`: BuildPaths, EnsurePath, AddTempRoot, AddIndirectRoot, SyncWithGC, ExportPath,
    /// ClearFailedPaths, OptimiseStore. Any value is accepted when reading.
    Done,
    /// IsValidPath, HasSubstitutes, VerifyStore (errors remain).
    Bool(bool),
    /// AddToStore, AddTextToStore.
    Path(StorePath),
    /// QueryDeriver, QueryPathFromHashPart (`""` = none).
    OptPath(Option<StorePath>),
    /// QueryPathHash: SHA-256 of the NAR, base16.
    Hash(Hash),
    /// QueryReferences, QueryReferrers, QueryValidDerivers, QueryDerivationOutputs,
    /// QueryAllValidPaths, QueryFailedPaths, QueryValidPaths, QuerySubstitutablePaths.
    Paths(BTreeSet<StorePath>),
    /// ImportPaths: the imported paths in import order.
    PathList(Vec<StorePath>),
    /// QueryDerivationOutputNames, BuiltinBuilders (sets, sorted), SubstituteURLs (list).
    Strings(Vec<String>),
    /// FindRoots: (link, target) pairs, sorted by link.
    Roots(Vec<(String, String)>),
    PathInfo(PathInfo),
    /// QuerySubstitutablePathInfo (obsolete op 21): `int 0`, or `int 1` and the info.
    SubstitutablePathInfo(Option<SubstitutablePathInfo>),
    QuerySubstitutablePathInfos(BTreeMap<StorePath, SubstitutablePathInfo>),
    /// CollectGarbage: deleted paths (or the live/dead set), bytes freed. Entries are plain
    /// strings: dead sets include non-path store entries such as `…-x.lock` or `trash`.
    CollectGarbage {
        paths: BTreeSet<String>,
        bytes_freed: u64,
    },
}

/// Which [`Reply`] variant an operation answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyShape {
    Nothing,
    Done,
    Bool,
    Path,
    OptPath,
    Hash,
    Paths,
    PathList,
    Strings,
    Roots,
    PathInfo,
    SubstitutablePathInfo,
    QuerySubstitutablePathInfos,
    CollectGarbage,
}

impl ReplyShape {
    /// The opcode → reply shape table, the only one: writing checks a reply against it
    /// ([`Reply::answers`]) and reading decodes by it ([`read_reply`]).
    pub fn of(op: Opcode) -> ReplyShape {
        use Opcode as O;
        use ReplyShape as S;
        match op {
            O::SetOptions => S::Nothing,
            O::BuildPaths
            | O::EnsurePath
            | O::AddTempRoot
            | O::AddIndirectRoot
            | O::SyncWithGC
            | O::ExportPath
            | O::ClearFailedPaths
            | O::OptimiseStore => S::Done,
            O::IsValidPath | O::HasSubstitutes | O::VerifyStore => S::Bool,
            O::AddToStore | O::AddTextToStore => S::Path,
            O::QueryDeriver | O::QueryPathFromHashPart => S::OptPath,
            O::QueryPathHash => S::Hash,
            O::QueryReferences
            | O::QueryReferrers
            | O::QueryValidDerivers
            | O::QueryDerivationOutputs
            | O::QueryAllValidPaths
            | O::QueryFailedPaths
            | O::QueryValidPaths
            | O::QuerySubstitutablePaths => S::Paths,
            O::ImportPaths => S::PathList,
            O::QueryDerivationOutputNames | O::BuiltinBuilders | O::SubstituteURLs => S::Strings,
            O::FindRoots => S::Roots,
            O::QueryPathInfo => S::PathInfo,
            O::QuerySubstitutablePathInfo => S::SubstitutablePathInfo,
            O::QuerySubstitutablePathInfos => S::QuerySubstitutablePathInfos,
            O::CollectGarbage => S::CollectGarbage,
        }
    }
}

impl Reply {
    /// Whether this reply has the shape operation `op` answers with.
    pub fn answers(&self, op: Opcode) -> bool {
        self.shape() == ReplyShape::of(op)
    }

    pub fn shape(&self) -> ReplyShape {
        use ReplyShape as S;
        match self {
            Reply::Nothing => S::Nothing,
            Reply::Done => S::Done,
            Reply::Bool(_) => S::Bool,
            Reply::Path(_) => S::Path,
            Reply::OptPath(_) => S::OptPath,
            Reply::Hash(_) => S::Hash,
            Reply::Paths(_) => S::Paths,
            Reply::PathList(_) => S::PathList,
            Reply::Strings(_) => S::Strings,
            Reply::Roots(_) => S::Roots,
            Reply::PathInfo(_) => S::PathInfo,
            Reply::SubstitutablePathInfo(_) => S::SubstitutablePathInfo,
            Reply::QuerySubstitutablePathInfos(_) => S::QuerySubstitutablePathInfos,
            Reply::CollectGarbage { .. } => S::CollectGarbage,
        }
    }
}

fn encode_subst(e: &mut Enc, store: &StoreDir, i: &SubstitutablePathInfo, with_nar_size: bool) {
    e.opt_path(store, i.deriver.as_ref());
    e.paths(store, i.references.iter());
    e.u64(i.download_size);
    if with_nar_size {
        e.u64(i.nar_size);
    }
}

pub(crate) fn encode_reply(
    e: &mut Enc,
    op: Opcode,
    reply: &Reply,
    store: &StoreDir,
    client_version: u32,
) -> Result<(), ProtoError> {
    if !reply.answers(op) {
        return Err(ProtoError::ReplyMismatch { op, reply: reply.shape() });
    }
    match reply {
        Reply::Nothing => {}
        Reply::Done => e.int(1),
        Reply::Bool(b) => e.bool(*b),
        Reply::Path(p) => e.path(store, p),
        Reply::OptPath(p) => e.opt_path(store, p.as_ref()),
        Reply::Hash(h) => e.str(&h.to_base16()),
        Reply::Paths(ps) => e.paths(store, ps.iter()),
        Reply::PathList(ps) => e.paths(store, ps.iter()),
        Reply::Strings(ss) => e.strs(ss.iter()),
        Reply::Roots(roots) => {
            e.len(roots.len());
            for (link, target) in roots {
                e.str(link);
                e.str(target);
            }
        }
        Reply::PathInfo(i) => {
            e.opt_path(store, i.deriver.as_ref());
            e.str(&i.nar_hash.to_base16());
            e.paths(store, i.references.iter());
            e.int(i.registration_time);
            e.u64(i.nar_size);
        }
        Reply::SubstitutablePathInfo(None) => e.int(0),
        Reply::SubstitutablePathInfo(Some(i)) => {
            e.int(1);
            encode_subst(e, store, i, protocol_minor(client_version) >= 7);
        }
        Reply::QuerySubstitutablePathInfos(m) => {
            e.len(m.len());
            for (p, i) in m {
                e.path(store, p);
                encode_subst(e, store, i, true);
            }
        }
        Reply::CollectGarbage { paths, bytes_freed } => {
            e.strs(paths.iter());
            e.u64(*bytes_freed);
            e.u64(0);
        }
    }
    Ok(())
}

/// Daemon side: writes the reply to `op` (after `STDERR_LAST`) and flushes.
pub async fn write_reply<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    op: Opcode,
    reply: &Reply,
    store: &StoreDir,
    client_version: u32,
) -> Result<(), ProtoError> {
    let mut e = Enc::default();
    encode_reply(&mut e, op, reply, store, client_version)?;
    e.send(w).await
}

async fn read_hash<R: AsyncRead + Unpin + ?Sized>(rd: &mut Reader<'_, R>) -> Result<Hash, ProtoError> {
    let s = rd.short_string("hash").await?;
    if s.len() != 2 * HashAlgo::Sha256.digest_len() {
        return Err(ProtoError::BadHash(s));
    }
    Hash::parse_bare(HashAlgo::Sha256, &s).map_err(|_| ProtoError::BadHash(s))
}

async fn read_subst<R: AsyncRead + Unpin + ?Sized>(
    rd: &mut Reader<'_, R>,
    with_nar_size: bool,
) -> Result<SubstitutablePathInfo, ProtoError> {
    let deriver = rd.reply_opt_path().await?;
    let references = rd.reply_path_set().await?;
    let download_size = rd.u64().await?;
    let nar_size = if with_nar_size { rd.u64().await? } else { 0 };
    Ok(SubstitutablePathInfo { deriver, references, download_size, nar_size })
}

/// Client side: reads the reply to `op` (after `STDERR_LAST`). `client_version` is the version
/// the client announced.
pub async fn read_reply<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    op: Opcode,
    store: &StoreDir,
    client_version: u32,
    limits: &Limits,
) -> Result<Reply, ProtoError> {
    use ReplyShape as S;
    let mut rd = Reader::new(r, store, limits);
    Ok(match ReplyShape::of(op) {
        S::Nothing => Reply::Nothing,
        S::Done => {
            rd.int().await?;
            Reply::Done
        }
        S::Bool => Reply::Bool(rd.bool().await?),
        S::Path => Reply::Path(rd.reply_path().await?),
        S::OptPath => Reply::OptPath(rd.reply_opt_path().await?),
        S::Hash => Reply::Hash(read_hash(&mut rd).await?),
        S::Paths => Reply::Paths(rd.reply_path_set().await?),
        S::PathList => {
            let n = rd.list_count("path list").await?;
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(rd.reply_path().await?);
            }
            Reply::PathList(v)
        }
        // The URLs are long strings, the names and builders short ones.
        S::Strings if op == Opcode::SubstituteURLs => {
            let n = rd.list_count("URL list").await?;
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(rd.long_string("URL").await?);
            }
            Reply::Strings(v)
        }
        S::Strings => Reply::Strings(rd.strings("string list").await?),
        S::Roots => {
            let n = rd.list_count("root list").await?;
            let mut v = Vec::new();
            for _ in 0..n {
                let link = rd.short_string("root link").await?;
                let target = rd.short_string("root target").await?;
                v.push((link, target));
            }
            Reply::Roots(v)
        }
        S::PathInfo => {
            let deriver = rd.reply_opt_path().await?;
            let nar_hash = read_hash(&mut rd).await?;
            let references = rd.reply_path_set().await?;
            let registration_time = rd.int().await?;
            let nar_size = rd.u64().await?;
            Reply::PathInfo(PathInfo { deriver, nar_hash, references, registration_time, nar_size })
        }
        S::SubstitutablePathInfo => {
            if rd.bool().await? {
                Reply::SubstitutablePathInfo(Some(read_subst(&mut rd, protocol_minor(client_version) >= 7).await?))
            } else {
                Reply::SubstitutablePathInfo(None)
            }
        }
        S::QuerySubstitutablePathInfos => {
            let n = rd.list_count("path info list").await?;
            let mut m = BTreeMap::new();
            for _ in 0..n {
                let p = rd.reply_path().await?;
                let i = read_subst(&mut rd, true).await?;
                m.insert(p, i);
            }
            Reply::QuerySubstitutablePathInfos(m)
        }
        S::CollectGarbage => {
            let n = rd.list_count("path list").await?;
            let mut paths = BTreeSet::new();
            for _ in 0..n {
                paths.insert(rd.short_string("path").await?);
            }
            let bytes_freed = rd.u64().await?;
            rd.u64().await?;
            Reply::CollectGarbage { paths, bytes_freed }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::request::tests::{arb_path, arb_paths};
    use crate::worker::test_util::words;
    use proptest::prelude::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().unwrap()
    }

    fn arb_hash() -> impl Strategy<Value = Hash> {
        proptest::array::uniform32(any::<u8>()).prop_map(|b| Hash::from_bytes(HashAlgo::Sha256, &b).unwrap())
    }

    fn arb_subst() -> impl Strategy<Value = SubstitutablePathInfo> {
        (proptest::option::of(arb_path()), arb_paths(), any::<u64>(), any::<u64>()).prop_map(
            |(deriver, references, download_size, nar_size)| SubstitutablePathInfo {
                deriver,
                references,
                download_size,
                nar_size,
            },
        )
    }

    fn arb_strs() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("\\PC{0,20}", 0..4)
    }

    /// A reply together with an operation it answers.
    fn arb_reply() -> impl Strategy<Value = (Opcode, Reply)> {
        use Opcode as O;
        prop_oneof![
            Just((O::SetOptions, Reply::Nothing)),
            proptest::sample::select(vec![O::BuildPaths, O::EnsurePath, O::ExportPath, O::OptimiseStore])
                .prop_map(|o| (o, Reply::Done)),
            (proptest::sample::select(vec![O::IsValidPath, O::HasSubstitutes, O::VerifyStore]), any::<bool>())
                .prop_map(|(o, b)| (o, Reply::Bool(b))),
            arb_path().prop_map(|p| (O::AddTextToStore, Reply::Path(p))),
            proptest::option::of(arb_path()).prop_map(|p| (O::QueryDeriver, Reply::OptPath(p))),
            arb_hash().prop_map(|h| (O::QueryPathHash, Reply::Hash(h))),
            arb_paths().prop_map(|p| (O::QueryValidPaths, Reply::Paths(p))),
            proptest::collection::vec(arb_path(), 0..4).prop_map(|p| (O::ImportPaths, Reply::PathList(p))),
            arb_strs().prop_map(|s| (O::SubstituteURLs, Reply::Strings(s))),
            proptest::collection::vec(("\\PC{0,20}", "\\PC{0,20}"), 0..3).prop_map(|r| (O::FindRoots, Reply::Roots(r))),
            (proptest::option::of(arb_path()), arb_hash(), arb_paths(), any::<u32>(), any::<u64>()).prop_map(
                |(deriver, nar_hash, references, registration_time, nar_size)| {
                    (
                        O::QueryPathInfo,
                        Reply::PathInfo(PathInfo { deriver, nar_hash, references, registration_time, nar_size }),
                    )
                }
            ),
            proptest::option::of(arb_subst())
                .prop_map(|i| (O::QuerySubstitutablePathInfo, Reply::SubstitutablePathInfo(i))),
            proptest::collection::btree_map(arb_path(), arb_subst(), 0..3)
                .prop_map(|m| (O::QuerySubstitutablePathInfos, Reply::QuerySubstitutablePathInfos(m))),
            (proptest::collection::btree_set("\\PC{0,20}", 0..4), any::<u64>())
                .prop_map(|(paths, bytes_freed)| (O::CollectGarbage, Reply::CollectGarbage { paths, bytes_freed })),
        ]
    }

    #[tokio::test]
    async fn add_text_reply_trace() {
        let want = words(
            "2e00000000000000 2f676e752f73746f 72652f686d713868 686d6464687a7071 3470367261347173 \
             6d30333470693478 6179622d68690000",
        );
        let store = StoreDir::default();
        let p = store.parse("/gnu/store/hmq8hhmddhzpq4p6ra4qsm034pi4xayb-hi").unwrap();
        let mut out = Vec::new();
        write_reply(&mut out, Opcode::AddTextToStore, &Reply::Path(p.clone()), &store, 0x164).await.unwrap();
        assert_eq!(out, want);
        let got = read_reply(&mut &want[..], Opcode::AddTextToStore, &store, 0x164, &Limits::DEFAULT).await.unwrap();
        assert_eq!(got, Reply::Path(p));
    }

    #[tokio::test]
    async fn mismatch_is_refused() {
        let mut out = Vec::new();
        let e = write_reply(&mut out, Opcode::QueryPathInfo, &Reply::Done, &StoreDir::default(), 0x164).await;
        assert!(matches!(e, Err(ProtoError::ReplyMismatch { .. })));
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn substitutable_info_old_client() {
        let i = SubstitutablePathInfo { deriver: None, references: BTreeSet::new(), download_size: 5, nar_size: 9 };
        let r = Reply::SubstitutablePathInfo(Some(i.clone()));
        let mut out = Vec::new();
        write_reply(&mut out, Opcode::QuerySubstitutablePathInfo, &r, &StoreDir::default(), 0x106).await.unwrap();
        assert_eq!(out.len(), 8 * 4);
        let got = read_reply(
            &mut &out[..],
            Opcode::QuerySubstitutablePathInfo,
            &StoreDir::default(),
            0x106,
            &Limits::DEFAULT,
        )
        .await
        .unwrap();
        assert_eq!(got, Reply::SubstitutablePathInfo(Some(SubstitutablePathInfo { nar_size: 0, ..i })));
    }

    proptest! {
        #[test]
        fn round_trip((op, reply) in arb_reply()) {
            let rt = rt();
            let store = StoreDir::default();
            let mut out = Vec::new();
            rt.block_on(write_reply(&mut out, op, &reply, &store, 0x164)).unwrap();
            let mut r = &out[..];
            let got = rt.block_on(read_reply(&mut r, op, &store, 0x164, &Limits::DEFAULT)).unwrap();
            prop_assert_eq!(got, reply);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn garbage_never_panics(op in proptest::sample::select(Opcode::ALL.to_vec()),
                                b in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..200),
                                version in 0x100u32..0x170) {
            let rt = rt();
            let _ = rt.block_on(read_reply(&mut &b[..], op, &StoreDir::default(), version, &Limits::DEFAULT));
        }
    }
}

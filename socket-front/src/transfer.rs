//! ExportPath (16) and ImportPaths (27): the export record format pushed through
//! `STDERR_WRITE` ([`TunnelSink`]) and pulled through `STDERR_READ` ([`TunnelSource`]).
//!
//! Both run on a blocking thread over the bridged tunnels, so a NAR goes between the store
//! and the socket in one streaming pass. Signatures are made and checked in process with
//! `guix_formats::signature` (the C++ daemon asks the `guix authenticate` agent): checked here
//! against `<conf>/acl`, made by store-db, the only process that reads
//! `<conf>/signing-key.sec` (`StoreBackend::sign_digest`). Imports require a valid signature from an ACL
//! key for everyone, root included, as the Guix daemon does.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use guix_formats::export::{
    ExportError, ExportLimits, ExportReader, ExportTrailer, NarSink, NarSource, RecordWriter, Signature,
};
use guix_formats::sexp::Sexp;
use guix_formats::signature::{self, Acl};
use guix_formats::worker::{Reply, TunnelSink, TunnelSource};
use guix_formats::{nar, Hash, StorePath};
use guix_ipc::store_db::{ItemSource, NewItem};
use guix_store::strerror;

use crate::backend::StoreBackend;
use crate::bridge::SyncBridge;
use crate::conn::{Conn, Level, Shared, Stream};
use crate::error::Failure;
use guix_store::optimise::{KnownHashes, DEDUPLICATION_MIN_SIZE};
use guix_store::scratch::canonicalise;

const TROJAN: &str = "signed hash doesn't match actual contents of imported archive; archive could be corrupt, \
                      or someone is trying to import a Trojan horse";

/// The ACL of `guix authenticate`: a missing file is an empty list.
fn load_acl(path: &Path) -> Result<Acl, String> {
    match std::fs::read(path) {
        Ok(text) => Acl::parse(&text).map_err(|e| format!("reading `{}': {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Acl::default()),
        Err(e) => Err(format!("opening file `{}': {}", path.display(), strerror(&e))),
    }
}

fn write_failure(e: io::Error) -> Failure {
    Failure::Gone(format!("writing to the client: {e}"))
}

/// The client going away closes the connection; anything else is reported to it.
fn export_failure(e: ExportError) -> Failure {
    match e {
        ExportError::Write(e) => write_failure(e),
        e => Failure::Op(e.to_string()),
    }
}

impl<S: Stream, B: StoreBackend> Conn<S, B> {
    pub(crate) async fn export_path(&mut self, path: StorePath, sign: bool) -> Result<Reply, Failure> {
        let store = self.shared.store.clone();
        let shown = store.display(&path);
        self.log_at(Level::Info, &format!("exporting path `{shown}'")).await?;
        let p = path.clone();
        let info = self.shared.backend.query(|r| r.try_path_info(&p))?;
        let Some(info) = info else { return Err(Failure::Op(format!("path `{shown}' is not valid"))) };
        let on_disk = self.shared.config.paths.store_dir.join(path.base_name());
        let shared = self.shared.clone();
        let trailer = ExportTrailer { path, references: info.references, deriver: info.deriver, signature: None };
        let expected = info.nar_hash;
        self.blocking(move |s, h| -> Result<(), Failure> {
            let mut sink = TunnelSink::new(s);
            let mut out = SyncBridge::new(&mut sink, h.clone());
            let rec = RecordWriter::write_nar(&mut out, NarSource::Path(&on_disk)).map_err(export_failure)?;
            // `exportPath` refuses a path whose contents changed, after the NAR went out and
            // before the trailer; an all-zero stored hash means "unknown".
            let actual = rec.nar().nar_hash;
            if actual != expected && expected.as_bytes().iter().any(|&b| b != 0) {
                return Err(Failure::Op(format!(
                    "hash of path `{shown}' has changed from `{}' to `{}'!",
                    expected.to_base16(),
                    actual.to_base16()
                )));
            }
            let mut sign_with_key = |digest: &Hash| -> Result<Vec<u8>, String> {
                h.block_on(shared.backend.sign_digest(*digest)).map_err(|f| f.to_string())
            };
            let signature = if sign { Signature::Sign(&mut sign_with_key) } else { Signature::FromTrailer };
            rec.finish(&store, &trailer, signature).map_err(export_failure)?;
            out.flush().map_err(write_failure)
        })
        .await??;
        Ok(Reply::Done)
    }

    pub(crate) async fn import_paths(&mut self) -> Result<Reply, Failure> {
        let shared = self.shared.clone();
        let conn = self.id;
        let imported = self
            .blocking(move |s, h| -> Result<Vec<StorePath>, Failure> {
                let mut source = TunnelSource::new(s);
                let input = SyncBridge::new(&mut source, h.clone());
                let limits = ExportLimits { nar: shared.nar_limits.clone(), ..ExportLimits::default() };
                let mut reader = ExportReader::new(input, shared.store.clone(), limits);
                let mut acl: Option<Acl> = None;
                let mut imported = Vec::new();
                loop {
                    let item = shared
                        .scratch
                        .allocate(conn)
                        .map_err(|e| Failure::Op(format!("creating scratch space: {e}")))?;
                    let Some(rec) =
                        reader.next_record(NarSink::Restore(item.path())).map_err(|e| Failure::Op(e.to_string()))?
                    else {
                        break;
                    };
                    let path = rec.trailer.path.clone();
                    let shown = shared.store.display(&path);
                    let Some(sig) = rec.trailer.signature.as_deref() else {
                        return Err(Failure::Op(format!("imported archive of `{shown}' lacks a signature")));
                    };
                    if acl.is_none() {
                        acl = Some(load_acl(&shared.config.paths.conf_dir.join("acl")).map_err(Failure::Op)?);
                    }
                    let sexp = Sexp::parse(sig).map_err(|e| Failure::Op(format!("corrupt signature data: {e}")))?;
                    let signed = signature::verify(&sexp, acl.as_ref().unwrap_or(&Acl::default()))
                        .map_err(|e| Failure::Op(e.to_string()))?;
                    if signed != rec.summary.signed_digest.as_bytes() {
                        return Err(Failure::op(TROJAN));
                    }
                    h.block_on(register_import(&shared, conn, item, rec.summary.nar, rec.trailer))?;
                    imported.push(path);
                }
                Ok(imported)
            })
            .await??;
        Ok(Reply::PathList(imported))
    }
}

/// `importPath` after the checks: temp root, then move in and register unless already valid;
/// the deriver is kept only if it is itself valid.
async fn register_import<B: StoreBackend>(
    shared: &Arc<Shared<B>>,
    conn: u64,
    item: guix_store::scratch::ScratchItem,
    nar: nar::NarSummary,
    trailer: ExportTrailer,
) -> Result<(), Failure> {
    let path = trailer.path.clone();
    shared.backend.add_temp_roots(conn, vec![path.clone()]).await?;
    let (p, d) = (path.clone(), trailer.deriver.clone());
    let (valid, deriver_valid) = shared
        .backend
        .run(move |r| {
            Ok((
                r.is_valid(&p)?,
                match &d {
                    Some(d) => r.is_valid(d)?,
                    None => false,
                },
            ))
        })
        .await?;
    if valid {
        return Ok(());
    }
    let dest: PathBuf = item.path().to_owned();
    let config = shared.config.clone();
    // A NAR shorter than the threshold holds no file that long.
    let dedup = crate::add::deduplicates_here(&config) && nar.nar_size >= DEDUPLICATION_MIN_SIZE;
    tokio::task::spawn_blocking(move || {
        canonicalise(&dest).map_err(|e| Failure::Op(format!("canonicalising imported path: {e}")))?;
        // The stream is the importer's here: deduplication's messages (only debugging ones
        // can arise for a freshly restored tree) are not shown.
        match dedup {
            true => crate::add::deduplicate(&config, &dest, &KnownHashes::new()).map(drop),
            false => Ok(()),
        }
    })
    .await
    .map_err(|e| Failure::Op(e.to_string()))??;
    let references: BTreeSet<StorePath> = trailer.references;
    let new = NewItem {
        source: ItemSource::Scratch(item.name().to_owned()),
        path,
        nar_hash: nar.nar_hash,
        nar_size: nar.nar_size,
        references: references.into_iter().collect(),
        deriver: if deriver_valid { trailer.deriver } else { None },
    };
    shared.backend.add_items(conn, vec![new]).await?;
    item.handed_over();
    Ok(())
}

//! Checks the export reader and writer against `guix archive --export` streams made by the
//! real client and C++ daemon; see `tests/vectors/gen/export.scm` for the format of
//! `tests/vectors/export.txt`. Signatures come from the rig's key, so only the digest inside
//! each signature is checked, against the one we compute.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use guix_formats::export::{ExportLimits, ExportReader, ExportWriter, NarSink, NarSource, Signature};
use guix_formats::hash::base16_decode;
use guix_formats::StoreDir;

#[derive(Default)]
struct Item {
    path: String,
    nar_hash: String,
    nar_size: u64,
    refs: Vec<String>,
}

#[derive(Default)]
struct Vector {
    name: String,
    items: Vec<Item>,
    export: Vec<u8>,
}

fn vectors() -> Vec<Vector> {
    let mut out = Vec::new();
    let mut cur = Vector::default();
    for line in include_str!("vectors/export.txt").lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "vector" => cur = Vector { name: f[1].to_owned(), ..Vector::default() },
            "item" => cur.items.push(Item {
                path: f[1].to_owned(),
                nar_hash: f[2].to_owned(),
                nar_size: f[3].parse().unwrap(),
                refs: Vec::new(),
            }),
            "ref" => cur.items.last_mut().unwrap().refs.push(f[1].to_owned()),
            "export" => cur.export = base16_decode(f[1]).unwrap(),
            "end" => out.push(std::mem::take(&mut cur)),
            other => panic!("unknown line {other}"),
        }
    }
    out
}

/// The `(hash sha256 #HEX#)` of a signature S-expression.
fn signed_hash(sig: &[u8]) -> String {
    let s = String::from_utf8_lossy(sig);
    let start = s.find("(hash sha256 #").expect("hash in signature") + "(hash sha256 #".len();
    let len = s[start..].find('#').unwrap();
    s[start..start + len].to_ascii_lowercase()
}

fn make_writable(p: &Path) {
    if fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false) {
        let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
        for e in fs::read_dir(p).unwrap().flatten() {
            make_writable(&e.path());
        }
    }
}

#[test]
fn vectors_from_guix_archive_export() {
    let vs = vectors();
    assert_eq!(vs.len(), 4);
    let store = StoreDir::default();
    for v in &vs {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = ExportReader::new(&v.export[..], store.clone(), ExportLimits::default());
        let mut records = Vec::new();
        while let Some(rec) = r.next_record(NarSink::Restore(&tmp.path().join(r.index().to_string()))).unwrap() {
            records.push(rec);
        }
        assert_eq!(records.len(), v.items.len(), "{}", v.name);
        for (rec, item) in records.iter().zip(&v.items) {
            let t = &rec.trailer;
            assert_eq!(store.display(&t.path), item.path);
            assert_eq!(rec.summary.nar.nar_hash.to_base16(), item.nar_hash, "{}", v.name);
            assert_eq!(rec.summary.nar.nar_size, item.nar_size);
            let refs: Vec<String> = t.references.iter().map(|p| store.display(p)).collect();
            assert_eq!(refs, item.refs);
            assert_eq!(t.deriver, None);
            let sig = t.signature.as_ref().expect("signed export");
            assert_eq!(signed_hash(sig), rec.summary.signed_digest.to_base16(), "{}", v.name);
        }

        // Writing the same records from the restored trees reproduces the stream exactly.
        let mut w = ExportWriter::new(Vec::new(), store.clone());
        for rec in &records {
            let dir = tmp.path().join(rec.index.to_string());
            let s = w.write_record(NarSource::Path(&dir), &rec.trailer, Signature::FromTrailer).unwrap();
            assert_eq!(s, rec.summary);
        }
        assert_eq!(w.finish().unwrap(), v.export, "{}", v.name);
        make_writable(tmp.path());
    }
}

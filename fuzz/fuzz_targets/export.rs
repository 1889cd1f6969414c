//! The export format read by ImportPaths (`ExportReader`, as socket-front reads it), with
//! each record's signature parsed and verified as the daemon does (against the rig's ACL of
//! the vectors). Properties: the summary is the SHA-256 and size of the NAR bytes read; a
//! record written back with `write_record` reads back to the same record and summary.
#![no_main]

use guix_formats::export::{read_record, write_record, ExportLimits, ExportReader, NarSink, NarSource, Signature};
use guix_formats::hash::sha256;
use guix_formats::sexp::Sexp;
use guix_formats::signature;
use guix_formats::StoreDir;
use guix_formats_fuzz::acl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let store = StoreDir::default();
    let limits = ExportLimits::default();
    let mut reader = ExportReader::new(data, store.clone(), limits.clone());
    loop {
        let mut nar = Vec::new();
        let Ok(Some(rec)) = reader.next_record(NarSink::Copy(&mut nar)) else { break };
        assert_eq!(rec.summary.nar.nar_size, nar.len() as u64);
        assert_eq!(rec.summary.nar.nar_hash.as_bytes(), sha256(&nar));

        let mut out = Vec::new();
        let written =
            write_record(&mut out, &store, NarSource::Nar(&mut &nar[..]), &rec.trailer, Signature::FromTrailer)
                .expect("writing an accepted record back");
        assert_eq!(written, rec.summary);
        let (summary, trailer) =
            read_record(&mut &out[..], &store, &limits, NarSink::Discard).expect("reading a written record");
        assert_eq!(summary, rec.summary);
        assert_eq!(trailer, rec.trailer);

        if let Some(sig) = &rec.trailer.signature {
            if let Ok(sexp) = Sexp::parse(sig) {
                let _ = signature::verify(&sexp, acl());
            }
        }
    }
});

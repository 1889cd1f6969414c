//! Item 4 of the foundation: our Rust client (`guix-client`) and the real Guile client, against
//! the real C++ daemon in the same rig session, give byte-identical answers.
//!
//! Our client adds a text item, a second text item referring to it, a directory tree
//! (recursive NAR, streamed from a host directory) and a flat file, then queries them. A
//! `guix repl` script in the same session adds the same items from the same files (which
//! must land on the same store paths: the daemon computes a recursive item's path from the
//! NAR it receives, so our NAR bytes must equal Guile's) and runs the same queries. Both sides
//! print one canonical line per answer; the two transcripts must be identical. Exports are
//! compared by length and SHA-256 of the bytes, unsigned and signed (Ed25519 signatures are
//! deterministic, so with the rootfs's signing key the signed records match too).
//!
//! Needs root and `scripts/rig setup`; fails (never skips) otherwise.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use guix_client::{DaemonClient, SetOptions};
use guix_formats::hash::{base16_encode, sha256, HashAlgo};
use guix_formats::store_path::StorePath;
use guix_tests::{DaemonKind, Rig, Session};

/// Where the shared input files live, relative to the session's `/tmp`.
const INPUT_DIR: &str = "client-vs-guile";
const MISSING: &str = "/gnu/store/00000000000000000000000000000000-missing";

fn make_inputs(root: &Path) {
    let tree = root.join("tree");
    fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    fs::write(tree.join("a.txt"), "hello\n").unwrap();
    fs::write(tree.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(tree.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(tree.join("sub/deep"), "deep\n").unwrap();
    // Larger than one 64 KiB STDERR_WRITE chunk, with a length that needs padding.
    let big: Vec<u8> = (0..200_003u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(tree.join("sub/deeper/big.bin"), big).unwrap();
    fs::write(tree.join("empty"), "").unwrap();
    std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", tree.join("dangling")).unwrap();
    fs::write(root.join("flat.txt"), "a flat file\n").unwrap();
}

/// The `guix repl` script: the same additions and queries, printed canonically.
fn guile_script(sign: bool) -> String {
    format!(
        r#"
(use-modules (guix store) (guix base16) (gcrypt hash)
             (rnrs bytevectors) (rnrs io ports) (ice-9 format) (srfi srfi-34))
(define store (open-connection))
(define base (add-text-to-store store "cvg-base.txt" "the base item\n" '()))
(define ref (add-text-to-store store "cvg-ref.txt"
                               (string-append "this refers to " base "\n")
                               (list base)))
(define tree (add-to-store store "cvg-tree" #t "sha256" "/tmp/{INPUT_DIR}/tree"))
(define flat (add-to-store store "cvg-flat.txt" #f "sha256" "/tmp/{INPUT_DIR}/flat.txt"))
(define items (list base ref tree flat))
(define missing "{MISSING}")
(for-each (lambda (p) (format #t "added ~a~%" p)) items)
(for-each
 (lambda (p)
   (let ((i (query-path-info store p)))
     (format #t "info ~a deriver=~a hash=~a size=~a time=~a refs=~{{~a~^,~}}~%"
             p (or (path-info-deriver i) "-")
             (bytevector->base16-string (path-info-hash i))
             (path-info-nar-size i) (path-info-registration-time i)
             (path-info-references i))))
 items)
(format #t "info ~a ~a~%" missing
        (guard (c ((store-protocol-error? c) "not-valid"))
          (query-path-info store missing)))
(for-each (lambda (p) (format #t "valid ~a ~a~%" p (valid-path? store p)))
          (append items (list missing)))
(for-each
 (lambda (p)
   (format #t "refs ~a ~{{~a~^,~}}~%" p (references store p))
   (format #t "referrers ~a ~{{~a~^,~}}~%" p (referrers store p))
   (format #t "hash ~a ~a~%" p (bytevector->base16-string (query-path-hash store p)))
   (format #t "from-hash-part ~a ~a~%" p
           (hash-part->path store (string-take (basename p) 32))))
 items)
(define (export-bytes thunk)
  (call-with-values open-bytevector-output-port
    (lambda (port get) (thunk port) (get))))
(define (show what p bv)
  (format #t "~a ~a len=~a sha256=~a~%" what p (bytevector-length bv)
          (bytevector->base16-string (sha256 bv))))
(for-each
 (lambda (sign?)
   (for-each
    (lambda (p)
      (show (format #f "export-path sign=~a" sign?) p
            (export-bytes (lambda (port) ((@@ (guix store) export-path) store p port #:sign? sign?))))
      (show (format #f "export-paths sign=~a" sign?) p
            (export-bytes (lambda (port) (export-paths store (list p) port #:sign? sign?)))))
    items))
 (list #f {sign}))
"#,
        sign = if sign { "#t" } else { "#f" }
    )
}

fn join(sd: &guix_formats::StoreDir, set: &BTreeSet<StorePath>) -> String {
    set.iter().map(|p| sd.display(p)).collect::<Vec<_>>().join(",")
}

fn show_export(out: &mut String, what: &str, p: &str, bytes: &[u8]) {
    writeln!(out, "{what} {p} len={} sha256={}", bytes.len(), base16_encode(&sha256(bytes))).unwrap();
}

/// Our side: the same additions and queries through guix-client, printed like the script.
async fn ours(socket: &Path, inputs: &Path, sign: bool) -> String {
    let mut c = DaemonClient::connect(socket).await.unwrap();
    c.set_options(&SetOptions::default()).await.unwrap();
    let sd = c.store_dir().clone();
    let base = c.add_text_to_store("cvg-base.txt", b"the base item\n", &BTreeSet::new()).await.unwrap();
    let text = format!("this refers to {}\n", sd.display(&base));
    let refs: BTreeSet<StorePath> = [base.clone()].into();
    let reff = c.add_text_to_store("cvg-ref.txt", text.as_bytes(), &refs).await.unwrap();
    let tree = c.add_to_store("cvg-tree", &inputs.join("tree"), true, HashAlgo::Sha256).await.unwrap();
    let flat = c.add_to_store("cvg-flat.txt", &inputs.join("flat.txt"), false, HashAlgo::Sha256).await.unwrap();
    let items = [base, reff, tree, flat];
    let missing = sd.parse(MISSING).unwrap();

    let mut out = String::new();
    for p in &items {
        writeln!(out, "added {}", sd.display(p)).unwrap();
    }
    for p in &items {
        let i = c.query_path_info(p).await.unwrap().expect("just added");
        writeln!(
            out,
            "info {} deriver={} hash={} size={} time={} refs={}",
            sd.display(p),
            i.deriver.map(|d| sd.display(&d)).unwrap_or_else(|| "-".into()),
            i.nar_hash.to_base16(),
            i.nar_size,
            i.registration_time,
            join(&sd, &i.references)
        )
        .unwrap();
    }
    assert!(c.query_path_info(&missing).await.unwrap().is_none());
    writeln!(out, "info {MISSING} not-valid").unwrap();
    // QueryValidPaths answers for all five at once; the script asks valid-path? one by one.
    let mut ask: BTreeSet<StorePath> = items.iter().cloned().collect();
    ask.insert(missing.clone());
    let valid = c.query_valid_paths(&ask).await.unwrap();
    for p in items.iter().chain([&missing]) {
        assert_eq!(c.is_valid_path(&sd.display(p)).await.unwrap(), valid.contains(p));
        writeln!(out, "valid {} {}", sd.display(p), if valid.contains(p) { "#t" } else { "#f" }).unwrap();
    }
    for p in &items {
        let sp = sd.display(p);
        writeln!(out, "refs {sp} {}", join(&sd, &c.query_references(p).await.unwrap())).unwrap();
        writeln!(out, "referrers {sp} {}", join(&sd, &c.query_referrers(p).await.unwrap())).unwrap();
        writeln!(out, "hash {sp} {}", c.query_path_hash(p).await.unwrap().to_base16()).unwrap();
        let found = c.query_path_from_hash_part(p.hash_part().as_str()).await.unwrap();
        writeln!(out, "from-hash-part {sp} {}", found.map(|f| sd.display(&f)).unwrap_or_default()).unwrap();
        // Guile has no QueryDeriver wrapper; its deriver is QueryPathInfo's (checked above).
        assert_eq!(c.query_deriver(p).await.unwrap(), None);
    }
    let signs: &[bool] = if sign { &[false, true] } else { &[false, false] };
    for &s in signs {
        let label = if s { "#t" } else { "#f" };
        for p in &items {
            let sp = sd.display(p);
            let mut record = Vec::new();
            c.export_path(p, s, &mut record).await.unwrap();
            show_export(&mut out, &format!("export-path sign={label}"), &sp, &record);
            // export-paths: `u64 1`, the record, `u64 0`.
            let mut container = 1u64.to_le_bytes().to_vec();
            container.extend_from_slice(&record);
            container.extend_from_slice(&0u64.to_le_bytes());
            show_export(&mut out, &format!("export-paths sign={label}"), &sp, &container);
        }
    }
    out
}

#[test]
fn rust_client_matches_guile_client_on_the_cxx_daemon() {
    let rig = Rig::discover().unwrap_or_else(|e| panic!("{e}"));
    let session = rig.start(DaemonKind::Cxx).unwrap_or_else(|e| panic!("{e}"));
    // The session's /tmp is a host directory: both clients read the same files.
    let inputs = session.state_dir().join("tmp").join(INPUT_DIR);
    make_inputs(&inputs);
    let sign = rig.rootfs().join("etc/guix/signing-key.sec").is_file();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ours = rt.block_on(ours(session.socket_path(), &inputs, sign));
    let guile = session.repl_ok(&guile_script(sign)).unwrap_or_else(|e| panic!("{e}"));

    eprintln!("--- ours ---\n{ours}--- guile ---\n{guile}");
    let (o, g): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), guile.lines().collect());
    for (i, (a, b)) in o.iter().zip(&g).enumerate() {
        assert_eq!(a, b, "line {} differs", i + 1);
    }
    assert_eq!(o.len(), g.len(), "transcripts differ in length");
    assert!(o.len() > 30, "suspiciously short transcript");
    // The signed exports really were signed (a record with hasSignature 1 is longer).
    if sign {
        assert!(ours.contains("export-path sign=#t"));
    }
}

/// Errors: the daemon's messages come through as `ClientError::Daemon` and, for errors raised
/// after the daemon started working, the connection stays usable, as with Guile.
#[test]
fn daemon_errors_are_reported_and_connection_survives() {
    let session = Session::start(DaemonKind::Cxx).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = DaemonClient::connect(session.socket_path()).await.unwrap();
        let missing = c.store_dir().parse(MISSING).unwrap();
        let e = c.query_references(&missing).await.unwrap_err();
        match &e {
            guix_client::ClientError::Daemon { message, status } => {
                assert_eq!(message, &format!("path `{MISSING}' is not valid"));
                assert_eq!(*status, 1);
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = c.is_valid_path("/tmp/x").await.unwrap_err();
        assert_eq!(e.daemon_message(), Some("path `/tmp/x' is not in the store"));
        let e = c.query_path_from_hash_part("abc").await.unwrap_err();
        assert_eq!(e.daemon_message(), Some("invalid hash part"));
        assert!(!c.is_valid_path(MISSING).await.unwrap());
        assert_eq!(c.builtin_builders().await.unwrap(), ["download", "git-download"]);
        assert!(c.find_roots().await.unwrap().is_empty());
        assert!(c.query_failed_paths().await.unwrap().is_empty());
        c.sync_with_gc().await.unwrap();
        assert!(!c.verify_store(false, false).await.unwrap());
        assert_eq!(c.substitute_urls().await.unwrap(), Vec::<String>::new());
        assert!(!c.has_substitutes(&missing).await.unwrap());
        // Import what we export, after deleting it.
        let p = c.add_text_to_store("cvg-import.txt", b"round trip\n", &BTreeSet::new()).await.unwrap();
        let mut record = Vec::new();
        c.export_path(&p, true, &mut record).await.unwrap();
        let gc = c
            .collect_garbage(&guix_client::gc_options(guix_client::GcAction::DeleteSpecific, [p.clone()].into()))
            .await
            .unwrap();
        assert!(gc.paths.contains(&c.store_dir().display(&p)));
        assert!(!c.is_valid_path(&c.store_dir().display(&p)).await.unwrap());
        let mut stream = 1u64.to_le_bytes().to_vec();
        stream.extend_from_slice(&record);
        stream.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(c.import_paths(&mut &stream[..]).await.unwrap(), vec![p.clone()]);
        assert!(c.is_valid_path(&c.store_dir().display(&p)).await.unwrap());
    });
}

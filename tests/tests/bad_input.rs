//! Bad input against OUR daemon over raw sockets, compared byte for byte with the C++ daemon
//! wherever the C++ behaviour is specified (spec protocol.md §1–4, §9: the exact messages, and
//! which errors close the connection).
//!
//! Every case opens its own connection from the host to the session's socket, sends hand-made
//! frames (`guix_formats::wire`), and records what comes back: the bytes up to and including
//! the first terminating STDERR frame (or up to EOF), the error text, and whether the
//! connection survived (a probe request answered) or was closed. Meanwhile a well-behaved
//! client keeps adding and querying paths on another connection. Afterwards: no new valid
//! path but the well-behaved client's, no new file in the store or `.rs-scratch`, and the
//! daemon's processes have the same pids and no restarts.
//!
//! Intentional differences from the C++ daemon are cases marked [`Cxx::Differs`]: our limits
//! refuse strings, lists and NARs the C++ daemon would try to allocate or store; the C++
//! outcome is printed (run with `--nocapture`) next to ours.
//!
//! Needs root, `scripts/rig setup`, and the workspace built in the same target directory
//! (`cargo build --release --workspace`, then `cargo test --release -p guix-tests --test bad_input`).

mod common;

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::wire::*;
use guix_formats::wire::put_u64;
use guix_tests::{DaemonKind, Rig, Session};

// ---------------------------------------------------------------------------------------------
// Cases.

/// How a case is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The bytes replace the handshake; then our side is shut down and everything read to EOF.
    Handshake,
    /// After a normal handshake: the bytes, then STDERR frames to the terminator, then a probe
    /// tells whether the connection was kept.
    Request,
    /// Like `Request` as uid `nobody`.
    Untrusted,
    /// After a handshake: the bytes, then our side is shut down, frames read to EOF.
    Truncated,
    /// After a handshake: ImportPaths (op 27), its `STDERR_READ`s served from the bytes.
    Import,
}

/// What is compared with the C++ daemon.
#[derive(Debug, Clone, Copy)]
enum Cxx {
    /// The same bytes and the same closed/kept outcome.
    Same,
    /// An intentional difference; the C++ daemon gets the bytes in `mode` and its outcome is
    /// only printed.
    Differs { mode: Mode, why: &'static str },
}

struct Case {
    name: String,
    mode: Mode,
    bytes: Vec<u8>,
    /// Our expected error text (`None`: no error frame at all) and whether we close.
    error: Option<String>,
    closed: bool,
    cxx: Cxx,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// What the daemon sent after the handshake (from the start in `Handshake` mode), up to and
    /// including the terminator.
    bytes: Vec<u8>,
    end: End,
    closed: bool,
}

impl Outcome {
    fn error(&self) -> Option<String> {
        match &self.end {
            End::Error { msg, .. } => Some(String::from_utf8_lossy(msg).into_owned()),
            _ => None,
        }
    }
}

fn run_case(socket: &Path, mode: Mode, bytes: &[u8]) -> io::Result<Outcome> {
    let mut st = if mode == Mode::Untrusted { connect_untrusted(socket)? } else { connect(socket)? };
    if mode == Mode::Handshake {
        st.write_all(bytes)?;
        st.shutdown(Shutdown::Write)?;
        let mut raw = Vec::new();
        let _ = st.read_to_end(&mut raw);
        return Ok(Outcome { bytes: raw, end: End::Eof, closed: true });
    }
    hello(&mut st)?;
    let mut raw = Vec::new();
    match mode {
        Mode::Truncated => {
            st.write_all(bytes)?;
            st.shutdown(Shutdown::Write)?;
            let end = read_frames(&mut st, &mut raw, &mut &[][..])?;
            let mut rest = Vec::new();
            let _ = st.read_to_end(&mut rest);
            raw.extend(rest);
            Ok(Outcome { bytes: raw, end, closed: true })
        }
        Mode::Import => {
            st.write_all(&op(27))?;
            let end = read_frames(&mut st, &mut raw, &mut &bytes[..])?;
            let closed = !matches!(end, End::Error { .. }) || !probe(&mut st)?;
            Ok(Outcome { bytes: raw, end, closed })
        }
        _ => {
            if let Err(e) = st.write_all(bytes) {
                // The daemon may refuse and close before it has read everything.
                if !is_gone(&e) {
                    return Err(e);
                }
            }
            let end = read_frames(&mut st, &mut raw, &mut &[][..])?;
            let closed = match end {
                End::Error { .. } => !probe(&mut st)?,
                End::Last => false,
                End::Eof => true,
            };
            Ok(Outcome { bytes: raw, end, closed })
        }
    }
}

fn case(name: impl Into<String>, mode: Mode, bytes: Vec<u8>, error: Option<&str>, closed: bool, cxx: Cxx) -> Case {
    Case { name: name.into(), mode, bytes, error: error.map(str::to_owned), closed, cxx }
}

fn cases() -> Vec<Case> {
    use Mode::*;
    let mut v = Vec::new();
    let same = Cxx::Same;

    // Malformed handshakes: no frame at all, the connection is just closed.
    let mut b = Vec::new();
    put_u64(&mut b, 0x1234_5678);
    v.push(case("handshake: wrong magic", Handshake, b, None, true, same));
    let mut b = Vec::new();
    put_u64(&mut b, MAGIC1 | 1 << 32);
    v.push(case("handshake: magic with high half", Handshake, b, None, true, same));
    let mut b = Vec::new();
    put_u64(&mut b, MAGIC1);
    put_u64(&mut b, VERSION | 1 << 40);
    v.push(case("handshake: version with high half", Handshake, b, None, true, same));
    let mut b = handshake_bytes();
    b.truncate(28);
    v.push(case(
        "handshake: reserve-space word with high half",
        Handshake,
        [&b[..24], &[0, 0, 0, 0, 1, 0, 0, 0][..]].concat(),
        None,
        true,
        same,
    ));
    v.push(case(
        "handshake: half the magic, then shutdown",
        Handshake,
        MAGIC1.to_le_bytes()[..4].to_vec(),
        None,
        true,
        same,
    ));
    v.push(case("handshake: magic only, then shutdown", Handshake, MAGIC1.to_le_bytes().to_vec(), None, true, same));
    let mut b = Vec::new();
    put_u64(&mut b, MAGIC1);
    put_u64(&mut b, VERSION);
    b.extend_from_slice(&[0, 0, 0]);
    v.push(case("handshake: version plus 3 bytes, then shutdown", Handshake, b, None, true, same));

    // Unknown opcodes: "invalid operation N", closed.
    for n in [0u64, 2, 15, 17, 36, 79, 82, 99] {
        let msg = format!("invalid operation {n}");
        v.push(case(format!("opcode {n}"), Request, op(n), Some(&msg), true, same));
    }
    v.push(case("opcode word with high half", Request, op(1 | 1 << 32), None, true, same));
    v.push(case("opcode: half a word, then shutdown", Truncated, vec![1, 0, 0], None, true, same));

    // Oversized strings and lists: refused by our limits before anything is allocated.
    let limits = guix_formats::worker::Limits::DEFAULT;
    for (what, len) in [("2^32-1", 0xffff_ffffu64), ("1 GiB", 1 << 30)] {
        let mut b = op(8);
        s(&mut b, b"big");
        put_u64(&mut b, len);
        let msg = format!("text contents of {len} bytes exceeds the limit of {} bytes", limits.max_text_len);
        let why = "C++ allocates the announced length (readString) and waits for the bytes";
        v.push(case(
            format!("AddTextToStore contents of {what}"),
            Request,
            b,
            Some(&msg),
            true,
            Cxx::Differs { mode: Truncated, why },
        ));
        let mut b = op(26);
        put_u64(&mut b, len);
        let msg = format!("store path of {len} bytes exceeds the limit of {} bytes", limits.max_path_len);
        v.push(case(
            format!("QueryPathInfo path of {what}"),
            Request,
            b,
            Some(&msg),
            true,
            Cxx::Differs { mode: Truncated, why },
        ));
    }
    let mut b = op(8);
    s(&mut b, b"big");
    put_u64(&mut b, 1 << 32);
    v.push(case(
        "AddTextToStore contents length with high half",
        Request,
        b,
        Some("implementation cannot deal with > 32-bit integers"),
        true,
        same,
    ));
    let mut b = op(31);
    put_u64(&mut b, 1 << 31);
    let msg =
        format!("store path list with {} elements exceeds the limit of {} elements", 1u64 << 31, limits.max_list_len);
    v.push(case(
        "QueryValidPaths count 2^31",
        Request,
        b,
        Some(&msg),
        true,
        Cxx::Differs { mode: Truncated, why: "C++ reads elements until the stream ends" },
    ));
    let mut b = op(31);
    put_u64(&mut b, (1 << 32) | 1);
    v.push(case(
        "QueryValidPaths count with high half",
        Request,
        b,
        Some("implementation cannot deal with > 32-bit integers"),
        true,
        same,
    ));

    // Non-zero padding.
    let mut b = op(1);
    put_u64(&mut b, 3);
    b.extend_from_slice(b"abc\0\0\0\0\x01");
    v.push(case("IsValidPath with non-zero padding", Request, b, Some("non-zero padding"), true, same));
    let mut b = op(8);
    s(&mut b, b"pad");
    put_u64(&mut b, 1);
    b.extend_from_slice(b"x\0\0\0\0\0\0\x07");
    strs(&mut b, &[]);
    v.push(case("AddTextToStore contents with non-zero padding", Request, b, Some("non-zero padding"), true, same));

    // Invalid store paths.
    for p in ["/tmp/x", "../", "/gnu/store/../etc/passwd", "/gnu/store", "/gnu/storex/y", ""] {
        let msg = format!("path `{p}' is not in the store");
        v.push(case(format!("QueryPathInfo `{p}'"), Request, op_str(26, p.as_bytes()), Some(&msg), true, same));
    }
    for p in ["/gnu/store/x", "/gnu/store/.."] {
        let msg = format!("path `{p}' is not valid");
        v.push(case(format!("QueryPathInfo `{p}'"), Request, op_str(26, p.as_bytes()), Some(&msg), false, same));
    }
    v.push(case(
        "IsValidPath `/tmp/x'",
        Request,
        op_str(1, b"/tmp/x"),
        Some("path `/tmp/x' is not in the store"),
        false,
        same,
    ));
    v.push(case("IsValidPath `../'", Request, op_str(1, b"../"), Some("path `../' is not in the store"), false, same));
    let mut b = op(31);
    strs(&mut b, &[PROBE_PATH.as_bytes(), b"/tmp/x"]);
    v.push(case("QueryValidPaths with `/tmp/x'", Request, b, Some("path `/tmp/x' is not in the store"), true, same));
    let mut b = op(8);
    s(&mut b, b"t");
    s(&mut b, b"text");
    strs(&mut b, &[b"/tmp/x"]);
    v.push(case(
        "AddTextToStore reference `/tmp/x'",
        Request,
        b,
        Some("path `/tmp/x' is not in the store"),
        true,
        same,
    ));
    let mut b = op(8);
    s(&mut b, b"bad/name");
    s(&mut b, b"text");
    strs(&mut b, &[]);
    v.push(case(
        "AddTextToStore name `bad/name'",
        Request,
        b,
        Some("invalid character `/' in name `bad/name'"),
        false,
        same,
    ));
    let mut b = op(8);
    s(&mut b, b"t");
    s(&mut b, b"text");
    strs(&mut b, &[PROBE_PATH.as_bytes()]);
    v.push(case("AddTextToStore unknown reference", Request, b, Some("path `%1%' is not valid"), false, same));

    // Truncated and hostile NARs in AddToStore.
    let magic = |rest: Vec<u8>| [nar(&[Tok::S(b"nix-archive-1")]), rest].concat();
    v.push(case(
        "NAR: bad magic",
        Request,
        add_to_store(&[nar(&[Tok::S(b"nix-archive-2")]), file_node(b"x")].concat()),
        Some("bad archive: input doesn't look like a normalized archive"),
        true,
        same,
    ));
    v.push(case(
        "NAR: unknown type fifo",
        Request,
        add_to_store(&magic(nar(&[Tok::S(b"("), Tok::S(b"type"), Tok::S(b"fifo"), Tok::S(b")")]))),
        Some("bad archive: unknown file type fifo"),
        true,
        same,
    ));
    for name in [&b".."[..], b".", b"a/b", b"a\0b", b"/"] {
        let msg = format!("NAR contains invalid file name `{}'", String::from_utf8_lossy(name));
        v.push(case(
            format!("NAR: entry name {:?}", String::from_utf8_lossy(name)),
            Request,
            add_to_store(&dir_nar(vec![entry(name, file_node(b"x"))])),
            Some(&msg),
            true,
            same,
        ));
    }
    let sorted = "NAR directory is not sorted";
    v.push(case(
        "NAR: empty entry name",
        Request,
        add_to_store(&dir_nar(vec![entry(b"", file_node(b"x"))])),
        Some("NAR contains invalid file name `'"),
        true,
        same,
    ));
    v.push(case(
        "NAR: unsorted entries",
        Request,
        add_to_store(&dir_nar(vec![entry(b"b", file_node(b"x")), entry(b"a", file_node(b"y"))])),
        Some(sorted),
        true,
        Cxx::Differs {
            mode: Request,
            why: "C++ stores unsorted NARs as sent, so the item later fails --verify=contents",
        },
    ));
    v.push(case(
        "NAR: duplicate entries",
        Request,
        add_to_store(&dir_nar(vec![entry(b"a", file_node(b"x")), entry(b"a", file_node(b"y"))])),
        Some(sorted),
        true,
        Cxx::Differs {
            mode: Request,
            why: "C++ fails at restore time (`File exists', naming its temp dir) and keeps the connection",
        },
    ));
    let symlink = nar(&[
        Tok::S(b"("),
        Tok::S(b"type"),
        Tok::S(b"symlink"),
        Tok::S(b"target"),
        Tok::S(b"/gnu/store"),
        Tok::S(b")"),
    ]);
    let under = nar(&[Tok::S(b"("), Tok::S(b"type"), Tok::S(b"directory")])
        .into_iter()
        .chain(entry(b"planted-by-bad-input", file_node(b"owned\n")))
        .chain(nar(&[Tok::S(b")")]))
        .collect::<Vec<u8>>();
    v.push(case(
        "NAR: symlink to the store, then a file under it",
        Request,
        add_to_store(&dir_nar(vec![entry(b"a", symlink), entry(b"a", under)])),
        Some(sorted),
        true,
        Cxx::Differs { mode: Request, why: "C++ fails at restore time (`File exists') and keeps the connection" },
    ));
    let mut long_name = dir_nar(vec![]);
    long_name.truncate(long_name.len() - 16);
    long_name.extend(nar(&[Tok::S(b"entry"), Tok::S(b"("), Tok::S(b"name")]));
    put_u64(&mut long_name, 0xffff_ffff);
    v.push(case(
        "NAR: entry name of 2^32-1 bytes",
        Request,
        add_to_store(&long_name),
        Some("bad archive: file name of 4294967295 bytes is longer than the limit of 255"),
        true,
        Cxx::Differs { mode: Truncated, why: "C++ allocates the announced length and waits for the bytes" },
    ));
    let eof = Some("unexpected end-of-file");
    v.push(case(
        "NAR: contents of 2^62 bytes, then shutdown",
        Truncated,
        add_to_store(&truncated_file_nar(1 << 62, 16)),
        eof,
        true,
        same,
    ));
    v.push(case(
        "NAR: truncated mid-file, then shutdown",
        Truncated,
        add_to_store(&truncated_file_nar(100, 50)),
        eof,
        true,
        same,
    ));
    v.push(case(
        "NAR: truncated after the magic, then shutdown",
        Truncated,
        add_to_store(&magic(Vec::new())),
        eof,
        true,
        same,
    ));

    // Requests cut short: the same error as inside a NAR.
    let mut b = op(26);
    put_u64(&mut b, 20);
    b.extend_from_slice(b"/gnu/");
    v.push(case("QueryPathInfo: path cut short, then shutdown", Truncated, b, eof, true, same));
    let mut b = op(8);
    s(&mut b, b"cut");
    put_u64(&mut b, 1000);
    b.extend_from_slice(&[b'x'; 100]);
    v.push(case("AddTextToStore: contents cut short, then shutdown", Truncated, b, eof, true, same));
    let mut b = set_options(&[]);
    b.truncate(b.len() - 16);
    v.push(case("SetOptions: cut short, then shutdown", Truncated, b, eof, true, same));
    v.push(case("AddToStore: header cut short, then shutdown", Truncated, op_str(7, b"name"), eof, true, same));

    // ImportPaths.
    let mut b = Vec::new();
    put_u64(&mut b, 2);
    v.push(case(
        "ImportPaths: separator 2",
        Import,
        b,
        Some("input doesn't look like something created by `nix-store --export'"),
        false,
        same,
    ));
    let imported = "/gnu/store/11111111111111111111111111111111-imported";
    let msg = format!("imported archive of `{imported}' lacks a signature");
    v.push(case("ImportPaths: unsigned record", Import, unsigned_import_stream(imported), Some(&msg), false, same));
    v.push(case("ImportPaths: empty answer", Import, Vec::new(), Some("unexpected end-of-file"), false, same));

    // SetOptions with a bad typed value.
    for key in [&b"build-cores"[..], b"build-max-jobs"] {
        let msg = format!("configuration setting `{}' should have an integer value", String::from_utf8_lossy(key));
        v.push(case(
            format!("SetOptions {}=notanumber", String::from_utf8_lossy(key)),
            Request,
            set_options(&[(key, b"notanumber")]),
            Some(&msg),
            true,
            same,
        ));
    }

    // Untrusted clients asking for trusted operations.
    let mut b = op(9);
    strs(&mut b, &[PROBE_PATH.as_bytes()]);
    put_u64(&mut b, 1);
    v.push(case("untrusted BuildPaths repair", Untrusted, b, Some("repairing is a privileged operation"), true, same));
    let mut b = op(35);
    put_u64(&mut b, 0);
    put_u64(&mut b, 1);
    v.push(case(
        "untrusted VerifyStore repair",
        Untrusted,
        b,
        Some("you are not privileged to repair paths"),
        false,
        same,
    ));
    v
}

/// Every entry of the store directory and of `.rs-scratch`, as `/gnu/store` names.
fn store_listing(session: &Session) -> BTreeSet<String> {
    let store = session.store_dir_on_host();
    let mut out = BTreeSet::new();
    for (dir, prefix) in [(store.clone(), "/gnu/store/"), (store.join(".rs-scratch"), "/gnu/store/.rs-scratch/")] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                out.insert(format!("{prefix}{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// `ctl status` in the session: (component, pid, restarts) of the running components and the
/// supervisor's pid line.
fn component_pids(session: &Session) -> Vec<String> {
    let out = session
        .exec(&[format!("{}/guix-daemon-rs", guix_tests::ours::LIBEXEC_IN_CHROOT).as_str(), "ctl", "status"])
        .unwrap_or_else(|e| panic!("ctl status: {e}"));
    assert!(out.status.success(), "ctl status: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["supervisor:", "pid", pid, ..] => Some(format!("supervisor {pid}")),
                // Not running in either snapshot: a component that is not built yet (the
                // supervisor restarts it with back-off); one that crashed is missing from
                // `after` only, so the change is still seen.
                [_, "-", ..] => None,
                [name, pid, _up, restarts, ..] if *name != "COMPONENT" => {
                    Some(format!("{name} pid {pid} restarts {restarts}"))
                }
                _ => None,
            }
        })
        .collect()
}

fn show(o: &io::Result<Outcome>) -> String {
    match o {
        Ok(o) => format!("{:?}, {}, {} bytes", o.error(), if o.closed { "closed" } else { "kept" }, o.bytes.len()),
        Err(e) => format!("test error: {e}"),
    }
}

#[test]
fn bad_input_against_ours_and_cxx() {
    let rig = Rig::discover().unwrap_or_else(|e| panic!("{e}"));
    let r2 = rig.clone();
    let cxx = thread::spawn(move || r2.start(DaemonKind::Cxx).unwrap_or_else(|e| panic!("C++: {e}")));
    let ours = guix_tests::start_ours(&rig).unwrap_or_else(|e| panic!("ours: {e}"));
    let cxx = cxx.join().expect("C++ session");
    let sock = ours.socket_path().to_owned();

    // The untrusted client must reach the socket's directory.
    let pids_before = component_pids(&ours);
    assert!(pids_before.iter().any(|l| l.starts_with("socket-front")), "{pids_before:?}");
    let valid_before = all_valid_paths(&sock).expect("QueryAllValidPaths");
    let files_before = store_listing(&ours);

    let stop = Arc::new(AtomicBool::new(false));
    let good = {
        let (sock, stop) = (sock.clone(), stop.clone());
        thread::spawn(move || good_client(&sock, &stop))
    };

    let mut failures = Vec::new();
    for c in cases() {
        let mine = run_case(&sock, c.mode, &c.bytes);
        let theirs = match c.cxx {
            Cxx::Same => run_case(cxx.socket_path(), c.mode, &c.bytes),
            Cxx::Differs { mode, .. } => run_case(cxx.socket_path(), mode, &c.bytes),
        };
        println!("{}:\n  ours: {}\n  C++:  {}", c.name, show(&mine), show(&theirs));
        let mine = match mine {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{}: ours: {e}", c.name));
                continue;
            }
        };
        if mine.error() != c.error || mine.closed != c.closed {
            failures.push(format!(
                "{}: ours gave {:?} ({}), expected {:?} ({})",
                c.name,
                mine.error(),
                if mine.closed { "closed" } else { "kept" },
                c.error,
                if c.closed { "closed" } else { "kept" }
            ));
        }
        if let End::Error { status, .. } = mine.end {
            if status != 1 {
                failures.push(format!("{}: status {status}", c.name));
            }
        }
        match (c.cxx, theirs) {
            (Cxx::Same, Ok(t)) if t != mine => failures.push(format!(
                "{}: C++ differs: C++ {:?} {:?} ({}), ours {:?} {:?} ({})",
                c.name, t.end, t.bytes, t.closed, mine.end, mine.bytes, mine.closed
            )),
            (Cxx::Same, Err(e)) => failures.push(format!("{}: C++: {e}", c.name)),
            (Cxx::Differs { why, .. }, _) => println!("  intentional difference: {why}"),
            _ => {}
        }
    }

    stop.store(true, Ordering::Relaxed);
    let added = good.join().expect("good client thread").expect("the well-behaved client kept working");
    assert!(added.len() >= 3);

    // Nothing written: the only new valid paths and store entries are the good client's.
    let valid_after = all_valid_paths(&sock).expect("QueryAllValidPaths");
    let expected: BTreeSet<String> = valid_before.iter().cloned().chain(added.iter().cloned()).collect();
    if valid_after != expected {
        failures.push(format!(
            "valid paths changed: {:?}",
            valid_after.symmetric_difference(&expected).collect::<Vec<_>>()
        ));
    }
    let expected_files: BTreeSet<String> = files_before.iter().cloned().chain(added.iter().cloned()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut files_after = store_listing(&ours);
    while files_after != expected_files && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        files_after = store_listing(&ours);
    }
    if files_after != expected_files {
        failures.push(format!(
            "store entries changed: {:?}",
            files_after.symmetric_difference(&expected_files).collect::<Vec<_>>()
        ));
    }
    let pids_after = component_pids(&ours);
    if pids_after != pids_before {
        failures.push(format!("daemon processes changed: {pids_before:?} -> {pids_after:?}"));
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}\n--- our daemon.log ---\n{}",
        failures.len(),
        failures.join("\n"),
        ours.daemon_log()
    );
}

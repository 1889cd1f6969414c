//! Compares `guix-daemon-rs` with the real C++ `guix-daemon` 1.5.0 on bad command lines: same
//! exit status and same messages (with the program name normalised).
//!
//! Needs the test rig (`scripts/rig run`, or a guix-ref style `run` script named by
//! `GUIX_REF_RUN`) and root; without them it fails.

use std::path::PathBuf;
use std::process::Command;

/// Bad command lines (each a shell word list).
const CASES: &[&str] = &[
    "--bogus",
    "-x",
    "--allow-aslr",
    "--gc-keep-outputs=maybe",
    "--gc-keep-derivations=",
    "--discover=perhaps",
    "--log-compression=zstd",
    "--log-compression=GZIP",
    "--rounds=x",
    "--rounds=5x",
    "extra",
    "--listen",
    "-c",
    "-M",
    "--debug=x",
    "--version=3",
    "--dis",
    "--no-",
    "--max-jobs=x",
    "-Mx",
    "--cores=5x",
    "-cx",
    "--timeout=abc",
    "--max-silent-time=1.5",
    "--max-jobs=",
    "--max-jobs=99999999999999999999",
    "--cores=x --max-jobs=y",
    "--bogus --help",
    "--gc-keep-outputs=maybe --bogus",
    "--discover maybe",
];

/// The rig's `run` command: `$GUIX_REF_RUN` (a guix-ref style `run` script) if set, else the
/// project's `scripts/rig run`. Missing rig = failure, never a silent pass.
fn rig_run() -> Command {
    if let Some(p) = std::env::var_os("GUIX_REF_RUN") {
        return Command::new(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rig");
    assert!(p.exists(), "the test rig {} is missing", p.display());
    let mut c = Command::new(p);
    c.arg("run");
    c
}

#[test]
fn bad_command_lines_match_the_cxx_daemon() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_guix-daemon-rs"), dir.path().join("guix-daemon-rs")).unwrap();
    let mut script = String::from("cd /tmp\n");
    for (i, case) in CASES.iter().enumerate() {
        for (who, prog) in [("cxx", "guix-daemon"), ("rs", "/rs/guix-daemon-rs")] {
            script.push_str(&format!(
                "echo '@@ {i} {who}'; timeout 5 {prog} --listen=/tmp/cmp-{who}-{i}/socket {case} 2>&1 </dev/null; echo \"rc=$?\"\n"
            ));
        }
    }
    std::fs::write(dir.path().join("cases.sh"), script).unwrap();
    let out = rig_run()
        .arg("-q")
        .arg("--bind")
        .arg(format!("{}:/rs", dir.path().display()))
        .args(["--", "sh", "/rs/cases.sh"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut outputs: std::collections::HashMap<(usize, String), String> = Default::default();
    let mut current: Option<(usize, String)> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("@@ ") {
            let mut p = h.split(' ');
            current = Some((p.next().unwrap().parse().unwrap(), p.next().unwrap().to_owned()));
        } else if let Some(k) = &current {
            let e = outputs.entry(k.clone()).or_default();
            e.push_str(&line.replace("/rs/guix-daemon-rs", "guix-daemon").replace("guix-daemon-rs", "guix-daemon"));
            e.push('\n');
        }
    }
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let cxx = outputs.get(&(i, "cxx".into())).cloned().unwrap_or_default();
        let rs = outputs.get(&(i, "rs".into())).cloned().unwrap_or_default();
        assert!(cxx.contains("rc="), "no output for case {case}: {text}");
        if cxx != rs {
            failures.push(format!("{case}:\n  C++: {cxx:?}\n  us:  {rs:?}"));
        }
    }
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
}

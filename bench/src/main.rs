//! guix-bench: the same workload against the C++ guix-daemon and against ours, each in its own
//! rig session (fresh private store), printing per figure the C++ value, ours and the ratio.
//!
//! Every measurement is repeated and the median reported. Nothing here asserts a timing.
//! While our daemon does not serve clients, its column says "not available" with the reason.
//! See bench/README.md.

mod affinity;
mod build;
mod builds;
mod gc;
mod procmem;
mod qpi;
mod scenarios;
mod subst;
mod tree;

use std::path::PathBuf;
use std::process::ExitCode;

use guix_tests::{DaemonKind, Rig, Session, SessionOptions};

use scenarios::{Params, Scenario};
use tree::Tree;

struct Args {
    scenarios: Vec<Scenario>,
    quick: bool,
    reps: Option<usize>,
    ours: Option<PathBuf>,
    /// Measure only this column (`cxx` or `ours`), e.g. while profiling one daemon.
    only: Option<String>,
    /// The store size of the `gc` scenario.
    paths: Option<usize>,
}

const USAGE: &str = "usage: guix-bench [--scenario NAME]... [--quick] [--reps N] [--ours PATH]
  --scenario NAME  run only NAME (repeatable): connect, add-text, query-path-info, idle-memory,
                   add-tree, build-derivations, trivial-builds, gc, substitute
  --quick          smaller counts and shorter runs (a smoke test, not a measurement)
  --reps N         repetitions per measurement (default 5, 3 with --quick); the median is shown
  --ours PATH      our daemon binary (default: guix-daemon-rs next to this executable)
  --only cxx|ours  measure only that daemon (e.g. while profiling it)
  --paths N        store size of the gc scenario (default 100000, 2000 with --quick)
Needs root and a rig set up with `scripts/rig setup`.";

fn parse_args() -> Result<Args, String> {
    let mut args = Args { scenarios: Vec::new(), quick: false, reps: None, ours: None, only: None, paths: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--scenario" => {
                let name = it.next().ok_or("--scenario needs a name")?;
                args.scenarios.push(Scenario::from_name(&name).ok_or_else(|| format!("unknown scenario `{name}'"))?);
            }
            "--quick" => args.quick = true,
            "--reps" => {
                let n = it.next().ok_or("--reps needs a number")?;
                let n: usize = n.parse().map_err(|_| format!("--reps: `{n}' is not a number"))?;
                args.reps = Some(n.max(1));
            }
            "--ours" => args.ours = Some(PathBuf::from(it.next().ok_or("--ours needs a path")?)),
            "--only" => {
                let d = it.next().ok_or("--only needs cxx or ours")?;
                if d != "cxx" && d != "ours" {
                    return Err(format!("--only: `{d}' is neither cxx nor ours"));
                }
                args.only = Some(d);
            }
            "--paths" => {
                let n = it.next().ok_or("--paths needs a number")?;
                args.paths = Some(n.parse().map_err(|_| format!("--paths: `{n}' is not a number"))?);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}'")),
        }
    }
    if args.scenarios.is_empty() {
        args.scenarios = Scenario::ALL.to_vec();
    }
    Ok(args)
}

/// One line of the report: a figure measured on both daemons.
struct Row {
    label: String,
    unit: &'static str,
    higher_is_better: bool,
    cxx: Result<f64, String>,
    ours: Result<f64, String>,
}

fn fmt_value(v: f64, unit: &str) -> String {
    let n = if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") };
    format!("{n} {unit}")
}

/// The C++ column of a figure only our daemon has.
const OURS_ONLY: &str = "ours only";

fn print_row(r: &Row) {
    let cxx = match &r.cxx {
        Ok(v) => fmt_value(*v, r.unit),
        Err(e) if e == OURS_ONLY => "-".into(),
        Err(e) => format!("failed: {e}"),
    };
    let ours = match &r.ours {
        Ok(v) => fmt_value(*v, r.unit),
        Err(e) => format!("not available ({e})"),
    };
    let ratio = match (&r.cxx, &r.ours) {
        (Ok(c), Ok(o)) if *c > 0.0 => {
            format!("{:.2}x ({})", o / c, if r.higher_is_better { "higher is better" } else { "lower is better" })
        }
        _ => "-".into(),
    };
    println!("{:<52} {:>16}   {:<18} {}", r.label, cxx, ours, ratio);
}

/// Our daemon as the tests start it (`guix_tests::ours_kind_in`): the supervisor and the
/// component programs from one directory, bound into the chroot as `--rs-libexec-dir`; or why
/// it cannot be measured.
fn ours_kind(args: &Args) -> Result<(DaemonKind, SessionOptions), String> {
    let binary = match &args.ours {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("locating this executable: {e}"))?
            .with_file_name("guix-daemon-rs"),
    };
    let build = "run `cargo build --release --workspace`";
    let binary = binary.canonicalize().map_err(|_| format!("{} not built; {build}", binary.display()))?;
    let dir = binary.parent().ok_or("the daemon binary has no directory")?;
    for component in ["guix-store-db", "guix-socket-front"] {
        if !dir.join(component).is_file() {
            return Err(format!("{} not built; {build}", dir.join(component).display()));
        }
    }
    if binary.file_name() != Some(std::ffi::OsStr::new("guix-daemon-rs")) {
        return Err(format!("{}: the supervisor must be called guix-daemon-rs", binary.display()));
    }
    Ok(guix_tests::ours_kind_in(dir, &[]))
}

/// The first meaningful line of a (possibly long) error, for the table.
fn short(e: &str) -> String {
    let interesting = e
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .find(|l| l.contains("not implemented"))
        .or_else(|| e.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("unknown error");
    let mut s: String = interesting.chars().take(120).collect();
    if interesting.chars().count() > 120 {
        s.push('…');
    }
    s
}

/// Runs `scenario` against one daemon in a fresh session; one result per figure.
fn measure(
    rig: &Rig,
    kind: Result<(DaemonKind, SessionOptions), String>,
    scenario: Scenario,
    p: &Params,
    tree: Option<&Tree>,
) -> Vec<Result<f64, String>> {
    let n = scenario.figures(p).len();
    let fail = |e: String| vec![Err(e); n];
    let (kind, opts) = match kind {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let session = match Session::start_with(rig, kind, &opts) {
        Ok(s) => s,
        Err(e) => {
            // The rig's own message is generic; the daemon's log says why.
            let why = format!("{e}");
            return fail(format!("daemon did not start: {}", short(&why)));
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("tokio runtime: {e}")),
    };
    let out = rt.block_on(scenarios::run(scenario, &session, p, tree));
    let log = session.daemon_log();
    drop(session);
    match out {
        Ok(v) => v,
        Err(e) => {
            let mut why = short(&e);
            if let Some(line) = log.lines().find(|l| l.contains("not implemented")) {
                why = format!("{why}; daemon log: {}", line.trim());
            }
            fail(why)
        }
    }
}

/// For [`Scenario::AddTree`] (figures: add, floor — each measured in that daemon's session):
/// how many times the floor each daemon took.
fn print_floor_ratios(cxx: &[Result<f64, String>], ours: &[Result<f64, String>]) {
    let ratio = |v: &[Result<f64, String>]| match v {
        [Ok(add), Ok(floor)] if *floor > 0.0 => format!("{:.2}x", add / floor),
        _ => "-".into(),
    };
    println!(
        "{:<52} {:>16}   {:<18} (time / floor, lower is better)",
        "AddToStore tree / floor",
        ratio(cxx),
        ratio(ours)
    );
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("guix-bench: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) };
        }
    };
    let rig = match Rig::discover() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("guix-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut params = Params::new(args.quick, args.reps);
    if let Some(n) = args.paths {
        params.gc_paths = n;
    }
    let ours = ours_kind(&args);
    println!(
        "guix-bench: {} repetitions per figure, median shown{}",
        params.reps,
        if args.quick { " (--quick)" } else { "" }
    );
    println!("{:<52} {:>16}   {:<18} ratio ours/C++", "figure", "C++ guix-daemon", "ours");
    let mut cxx_failed = false;
    for &scenario in &args.scenarios {
        let figures = scenario.figures(&params);
        let tree = if scenario == Scenario::AddTree {
            match Tree::create(&std::env::temp_dir(), params.tree) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("guix-bench: creating the tree under {}: {e}", std::env::temp_dir().display());
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        let skipped = |n: usize| vec![Err("skipped (--only)".to_owned()); n];
        if scenario == Scenario::TrivialBuilds {
            let cxx_kind = Ok((DaemonKind::Cxx, SessionOptions::default()));
            let (c, o) = builds::alternate(&rig, &cxx_kind, &ours, args.only.as_deref(), params.builds, params.reps);
            cxx_failed |= c.is_err() && args.only.as_deref() != Some("ours");
            let (before, after) = if args.only.as_deref() == Some("cxx") {
                (Err("skipped (--only)".to_owned()), Err("skipped (--only)".to_owned()))
            } else {
                builds::own_time(&rig, &ours, params.builds)
            };
            let values = [(c, o), (Err(OURS_ONLY.to_owned()), before), (Err(OURS_ONLY.to_owned()), after)];
            for (f, (cxx, ours)) in figures.into_iter().zip(values) {
                print_row(&Row { label: f.label, unit: f.unit, higher_is_better: f.higher_is_better, cxx, ours });
            }
            continue;
        }
        if scenario == Scenario::Substitute {
            let rows = subst::measure(&rig, &ours, args.only.as_deref(), params.reps, args.quick);
            for (f, (c, o)) in figures.into_iter().zip(rows) {
                print_row(&Row { label: f.label, unit: f.unit, higher_is_better: f.higher_is_better, cxx: c, ours: o });
            }
            continue;
        }
        if scenario == Scenario::BuildDerivations {
            let cxx_kind = Ok((DaemonKind::Cxx, SessionOptions::default()));
            let (c, o) = build::alternate(&rig, &cxx_kind, &ours, args.only.as_deref(), &params);
            for ((f, c), o) in figures.into_iter().zip(c).zip(o) {
                cxx_failed |= c.is_err() && args.only.as_deref() != Some("ours");
                print_row(&Row { label: f.label, unit: f.unit, higher_is_better: f.higher_is_better, cxx: c, ours: o });
            }
            continue;
        }
        let cxx = if args.only.as_deref() == Some("ours") {
            skipped(figures.len())
        } else {
            measure(&rig, Ok((DaemonKind::Cxx, SessionOptions::default())), scenario, &params, tree.as_ref())
        };
        let ours = if args.only.as_deref() == Some("cxx") {
            skipped(figures.len())
        } else {
            measure(&rig, ours.clone(), scenario, &params, tree.as_ref())
        };
        for ((f, c), o) in figures.into_iter().zip(cxx.iter().cloned()).zip(ours.iter().cloned()) {
            cxx_failed |= c.is_err() && args.only.as_deref() != Some("ours");
            print_row(&Row { label: f.label, unit: f.unit, higher_is_better: f.higher_is_better, cxx: c, ours: o });
        }
        if scenario == Scenario::AddTree {
            print_floor_ratios(&cxx, &ours);
        }
    }
    if cxx_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

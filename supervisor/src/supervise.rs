//! The supervision loop: spawns the components, reaps them, restarts them with back-off,
//! answers control requests and shuts everything down on SIGTERM/SIGINT.
//!
//! All state lives in one task ([`Supervisor::run`]); the control server and the metrics server
//! talk to it through a channel ([`Command`]). That task is also the only place that calls
//! `waitpid`, and it spawns children itself, so a child's exit can never be reaped before its
//! pid is recorded. The supervisor is a child subreaper (`PR_SET_CHILD_SUBREAPER`): processes a
//! component leaves behind are re-parented to us and reaped here too.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use guix_ipc::component::{format_fds, CLIENT_SOCKET_NAME, ENV_COMPONENT, ENV_CONFIG, ENV_FDS, EXIT_NOT_IMPLEMENTED};
use guix_ipc::config::UnprivilegedUser;
use guix_ipc::control::{ComponentStatus, ControlReply, ControlRequest, Metric, SupervisorStatus, CONNECTIONS_METRIC};
use guix_ipc::LinkError;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use crate::components::{ComponentSpec, SocketRole};
use crate::metrics;

/// First restart delay after a crash.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest restart delay; also the delay after a component said "not implemented yet".
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A component that stayed up this long gets its back-off reset.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Time a component has to exit after SIGTERM before it gets SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Children get their inherited sockets copied above this number first, so that moving them to
/// 3, 4, … never overwrites one not moved yet.
const FD_STAGING_BASE: RawFd = 64;

/// Requests to the supervision task.
#[derive(Debug)]
pub enum Command {
    Control(ControlRequest, oneshot::Sender<ControlReply>),
    Metrics(oneshot::Sender<String>),
}

/// The sockets given to components, by role.
#[derive(Debug)]
pub struct ComponentSockets {
    pub clients: Vec<RawFd>,
    pub links: Vec<(&'static str, RawFd)>,
}

struct Stop {
    deadline: Instant,
    killed: bool,
    /// Set for `ctl restart`: start again at once and reply with the new pid.
    reply: Option<oneshot::Sender<ControlReply>>,
}

struct Comp {
    spec: ComponentSpec,
    pid: Option<Pid>,
    since: Option<Instant>,
    starts: u64,
    last_exit: Option<String>,
    backoff: Duration,
    next_start: Option<Instant>,
    stop: Option<Stop>,
    metrics: Vec<Metric>,
}

pub struct Supervisor {
    comps: Vec<Comp>,
    /// The user of the components marked `unprivileged` (`None`: ours).
    front_user: Option<UnprivilegedUser>,
    libexec: PathBuf,
    config_json: String,
    sockets: ComponentSockets,
    started: Instant,
    shutting_down: bool,
}

impl Supervisor {
    pub fn new(table: &[ComponentSpec], libexec: PathBuf, config_json: String, sockets: ComponentSockets) -> Self {
        let comps = table
            .iter()
            .map(|&spec| Comp {
                spec,
                pid: None,
                since: None,
                starts: 0,
                last_exit: None,
                backoff: BACKOFF_INITIAL,
                next_start: None,
                stop: None,
                metrics: Vec::new(),
            })
            .collect();
        Supervisor {
            comps,
            front_user: None,
            libexec,
            config_json,
            sockets,
            started: Instant::now(),
            shutting_down: false,
        }
    }

    /// Components marked `unprivileged` run as `user` ([`crate::privileges::drop_to`]).
    pub fn with_front_user(mut self, user: Option<UnprivilegedUser>) -> Self {
        self.front_user = user;
        self
    }

    /// Runs until SIGTERM or SIGINT has stopped every component.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> std::io::Result<()> {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            eprintln!("warning: cannot become a child subreaper: {e}");
        }
        let mut sigchld = signal(SignalKind::child())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        for i in 0..self.comps.len() {
            self.start(i);
        }
        loop {
            let wake = self.next_wake().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = sigterm.recv() => self.begin_shutdown("SIGTERM"),
                _ = sigint.recv() => self.begin_shutdown("SIGINT"),
                Some(cmd) = commands.recv() => self.command(cmd),
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            // Signals coalesce, so reap on every turn, and let timers fire.
            self.reap();
            self.timers();
            if self.shutting_down && self.comps.iter().all(|c| c.pid.is_none()) {
                eprintln!("all components stopped");
                return Ok(());
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        self.comps
            .iter()
            .flat_map(|c| [c.next_start, c.stop.as_ref().filter(|s| !s.killed).map(|s| s.deadline)])
            .flatten()
            .min()
    }

    fn start(&mut self, i: usize) {
        let Some(c) = self.comps.get_mut(i) else { return };
        c.next_start = None;
        let binary = c.spec.binary(&self.libexec);
        c.starts += 1;
        let user = self.front_user.filter(|_| c.spec.unprivileged);
        match spawn(&c.spec, &binary, &self.sockets, &self.config_json, user) {
            Ok(pid) => {
                eprintln!("started component {} (pid {pid})", c.spec.name);
                c.pid = Some(pid);
                c.since = Some(Instant::now());
            }
            Err(e) => {
                let delay = c.backoff;
                c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
                c.last_exit = Some(format!("could not start: {e}"));
                eprintln!(
                    "error: cannot start component {} ({}): {e}; retrying in {delay:?}",
                    c.spec.name,
                    binary.display()
                );
                c.next_start = Some(Instant::now() + delay);
            }
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.exited(pid, format!("exit status {code}"), Some(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => self.exited(pid, format!("signal {}", sig as i32), None),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("error: waitpid: {e}");
                    return;
                }
            }
        }
    }

    fn exited(&mut self, pid: Pid, how: String, code: Option<i32>) {
        let Some(i) = self.comps.iter().position(|c| c.pid == Some(pid)) else {
            // An orphan re-parented to us (we are a subreaper): reaped, nothing else to do.
            return;
        };
        let shutting_down = self.shutting_down;
        let Some(c) = self.comps.get_mut(i) else { return };
        let uptime = c.since.take().map(|s| s.elapsed()).unwrap_or_default();
        c.pid = None;
        c.metrics.clear();
        c.last_exit = Some(how.clone());
        if let Some(stop) = c.stop.take() {
            eprintln!("component {} (pid {pid}) stopped ({how})", c.spec.name);
            if let Some(reply) = stop.reply {
                if !shutting_down {
                    self.start(i);
                    let answer = match self.comps.get(i).and_then(|c| c.pid.map(|p| (c.spec.name, p))) {
                        Some((name, pid)) => {
                            ControlReply::Restarted { component: name.to_owned(), pid: pid.as_raw() as u32 }
                        }
                        None => ControlReply::Error(LinkError::internal(
                            "the component could not be started again; see the daemon's log",
                        )),
                    };
                    let _ = reply.send(answer);
                }
            }
            return;
        }
        if shutting_down {
            return;
        }
        if uptime >= STABLE_AFTER {
            c.backoff = BACKOFF_INITIAL;
        }
        let delay = if code == Some(EXIT_NOT_IMPLEMENTED) {
            eprintln!(
                "component {} (pid {pid}) is not implemented yet ({how}); retrying in {BACKOFF_MAX:?}",
                c.spec.name
            );
            BACKOFF_MAX
        } else {
            let d = c.backoff;
            eprintln!(
                "error: component {} (pid {pid}) died ({how}) after {uptime:.1?}; restarting in {d:?}",
                c.spec.name
            );
            d
        };
        c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
        c.next_start = Some(Instant::now() + delay);
    }

    fn timers(&mut self) {
        let now = Instant::now();
        for i in 0..self.comps.len() {
            let Some(c) = self.comps.get_mut(i) else { continue };
            if let (Some(stop), Some(pid)) = (c.stop.as_mut(), c.pid) {
                if !stop.killed && stop.deadline <= now {
                    eprintln!("component {} (pid {pid}) did not stop within {STOP_GRACE:?}; killing it", c.spec.name);
                    let _ = kill(pid, Signal::SIGKILL);
                    stop.killed = true;
                }
            }
            if !self.shutting_down && c.pid.is_none() && c.next_start.is_some_and(|t| t <= now) {
                self.start(i);
            }
        }
    }

    fn stop(c: &mut Comp, reply: Option<oneshot::Sender<ControlReply>>) {
        if let Some(pid) = c.pid {
            let _ = kill(pid, Signal::SIGTERM);
            c.stop = Some(Stop { deadline: Instant::now() + STOP_GRACE, killed: false, reply });
        }
        c.next_start = None;
    }

    fn begin_shutdown(&mut self, why: &str) {
        if self.shutting_down {
            return;
        }
        eprintln!("received {why}; stopping the components");
        self.shutting_down = true;
        for c in &mut self.comps {
            if c.stop.is_none() {
                Self::stop(c, None);
            }
            c.next_start = None;
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Metrics(reply) => {
                let _ = reply.send(self.metrics_text());
            }
            Command::Control(ControlRequest::Status, reply) => {
                let _ = reply.send(ControlReply::Status(self.status()));
            }
            Command::Control(ControlRequest::Restart { component }, reply) => {
                if self.shutting_down {
                    let _ = reply.send(ControlReply::Error(LinkError::retryable("the daemon is shutting down")));
                    return;
                }
                let Some(i) = self.comps.iter().position(|c| c.spec.name == component) else {
                    let _ =
                        reply.send(ControlReply::Error(LinkError::client(format!("no component named `{component}'"))));
                    return;
                };
                let Some(c) = self.comps.get_mut(i) else { return };
                if c.stop.is_some() {
                    let _ = reply.send(ControlReply::Error(LinkError::retryable(format!(
                        "component `{component}' is already being stopped"
                    ))));
                } else if c.pid.is_some() {
                    eprintln!("restarting component {component} on request");
                    Self::stop(c, Some(reply));
                } else {
                    c.backoff = BACKOFF_INITIAL;
                    self.start(i);
                    let answer = match self.comps.get(i).and_then(|c| c.pid) {
                        Some(pid) => ControlReply::Restarted { component, pid: pid.as_raw() as u32 },
                        None => ControlReply::Error(LinkError::internal(
                            "the component could not be started; see the daemon's log",
                        )),
                    };
                    let _ = reply.send(answer);
                }
            }
            Command::Control(ControlRequest::ReportMetrics { component, metrics }, reply) => {
                let answer = match self.comps.iter_mut().find(|c| c.spec.name == component) {
                    Some(c) => {
                        c.metrics = metrics.into_iter().filter(metrics::is_valid).collect();
                        ControlReply::Ok
                    }
                    None => ControlReply::Error(LinkError::client(format!("no component named `{component}'"))),
                };
                let _ = reply.send(answer);
            }
        }
    }

    fn status(&self) -> SupervisorStatus {
        let now = Instant::now();
        SupervisorStatus {
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            components: self
                .comps
                .iter()
                .map(|c| ComponentStatus {
                    name: c.spec.name.to_owned(),
                    pid: c.pid.map(|p| p.as_raw() as u32),
                    uptime_secs: c.since.map(|s| s.elapsed().as_secs()),
                    restarts: c.starts.saturating_sub(1),
                    last_exit: c.last_exit.clone(),
                    restart_in_secs: c.next_start.map(|t| t.saturating_duration_since(now).as_secs_f64()),
                    connections: c
                        .metrics
                        .iter()
                        .find(|m| m.name == CONNECTIONS_METRIC)
                        .map(|m| m.value.max(0.0) as u64),
                })
                .collect(),
        }
    }

    fn metrics_text(&self) -> String {
        let comps: Vec<metrics::ComponentSample<'_>> = self
            .comps
            .iter()
            .map(|c| metrics::ComponentSample {
                name: c.spec.name,
                up: c.pid.is_some(),
                restarts: c.starts.saturating_sub(1),
                reported: &c.metrics,
            })
            .collect();
        metrics::render(self.started.elapsed(), &comps)
    }
}

/// Spawns one component with its sockets at fds 3, 4, … and the hand-over environment.
fn spawn(
    spec: &ComponentSpec,
    binary: &std::path::Path,
    sockets: &ComponentSockets,
    config_json: &str,
    user: Option<UnprivilegedUser>,
) -> std::io::Result<Pid> {
    let mut named: Vec<(&str, RawFd)> = Vec::new();
    for role in spec.sockets {
        match role {
            SocketRole::Clients => named.extend(sockets.clients.iter().map(|&fd| (CLIENT_SOCKET_NAME, fd))),
            SocketRole::Link(l) => named.extend(sockets.links.iter().filter(|(n, _)| n == l).map(|&(n, fd)| (n, fd))),
        }
    }
    if named.len() > 32 {
        return Err(std::io::Error::other("too many sockets for one component"));
    }
    // Copies above FD_STAGING_BASE, close-on-exec: only the dup2'ed targets survive exec.
    let mut staged: Vec<OwnedFd> = Vec::with_capacity(named.len());
    for &(_, fd) in &named {
        let high = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(FD_STAGING_BASE)).map_err(std::io::Error::from)?;
        // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor, owned by nobody else.
        staged.push(unsafe { OwnedFd::from_raw_fd(high) });
    }
    let moves: Vec<(RawFd, RawFd)> = staged.iter().zip(3..).map(|(s, target)| (s.as_raw_fd(), target)).collect();
    let fds_env = format_fds(named.iter().zip(3..).map(|(&(n, _), target)| (n, target)));

    let mut cmd = std::process::Command::new(binary);
    cmd.env(ENV_FDS, fds_env)
        .env(ENV_CONFIG, config_json)
        .env(ENV_COMPONENT, spec.name)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null());
    let supervisor = nix::unistd::getpid();
    // SAFETY: the closure only calls prctl, getppid, dup2 and the system calls of
    // `privileges::drop_to`, which are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // First: a change of credentials clears the parent-death signal set below.
            if let Some(user) = user {
                crate::privileges::drop_to(user)?;
            }
            // A component must not outlive the supervisor (killed with SIGKILL, by the OOM
            // killer, …): it gets SIGTERM and stops cleanly. Otherwise the next supervisor would
            // start a second store-db beside the orphan. The signal comes when the thread that
            // forked dies: this runs on a tokio worker, which lives as long as the supervisor.
            if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGTERM) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor died before the prctl: no signal will come.
            if nix::libc::getppid() != supervisor.as_raw() {
                return Err(std::io::Error::other("the supervisor is gone"));
            }
            for &(from, to) in &moves {
                // dup2 leaves the new descriptor without FD_CLOEXEC.
                if nix::libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The Child handle is dropped without waiting: the supervision loop reaps every child.
    Ok(Pid::from_raw(child.id() as i32))
}

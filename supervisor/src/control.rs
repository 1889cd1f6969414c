//! The control socket (`$GUIX_STATE_DIRECTORY/daemon-socket/rs-control`, mode 0600) and the
//! `ctl` subcommands that use it.
//!
//! The server accepts only peers running as root or as the daemon's own user (checked with
//! `SO_PEERCRED`, on top of the file mode) and forwards each request to the supervision loop;
//! and socket-front's own user (the socket is then 0660 with its group), for its metrics
//! reports only: any other request from it is refused.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use guix_ipc::control::{ControlReply, ControlRequest, SupervisorStatus, CONTROL_LINK};
use guix_ipc::{serve_connection, Call, Client, Handler, LinkError};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use crate::supervise::{Command, STOP_GRACE};

struct Forward {
    commands: mpsc::Sender<Command>,
    /// The peer is socket-front's own user: `ReportMetrics` for socket-front only.
    socket_front_only: bool,
}

impl Handler for Forward {
    type Req = ControlRequest;
    type Resp = ControlReply;
    type Item = ();
    fn handle(
        self: &Arc<Self>,
        _call: Call<()>,
        req: ControlRequest,
    ) -> impl Future<Output = ControlReply> + Send + 'static {
        let tx = self.commands.clone();
        let refused = self.socket_front_only
            && !matches!(&req, ControlRequest::ReportMetrics { component, .. } if component == "socket-front");
        async move {
            if refused {
                return ControlReply::Error(LinkError::client("socket-front's user may only report its metrics"));
            }
            let (reply_tx, reply_rx) = oneshot::channel();
            if tx.send(Command::Control(req, reply_tx)).await.is_err() {
                return ControlReply::Error(LinkError::retryable("the supervisor is shutting down"));
            }
            reply_rx
                .await
                .unwrap_or_else(|_| ControlReply::Error(LinkError::retryable("the supervisor is shutting down")))
        }
    }
}

/// Serves the control socket until the process ends. `front_uid`: socket-front's own user,
/// if it has one (its metrics reports only).
pub async fn serve(listener: UnixListener, commands: mpsc::Sender<Command>, front_uid: Option<u32>) {
    let full = Arc::new(Forward { commands: commands.clone(), socket_front_only: false });
    let reports = Arc::new(Forward { commands, socket_front_only: true });
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let handler = match stream.peer_cred() {
            Ok(cred) if cred.uid() == 0 || cred.uid() == me => full.clone(),
            Ok(cred) if Some(cred.uid()) == front_uid => reports.clone(),
            _ => continue,
        };
        tokio::spawn(serve_connection(stream, CONTROL_LINK, "guix-daemon-rs", handler));
    }
}

/// How long `ctl` waits for the daemon: a restart may take [`STOP_GRACE`] before the
/// component is killed, then its start.
pub const CTL_DEADLINE: Duration = Duration::from_secs(5 + STOP_GRACE.as_secs());

/// Sends one request to the running daemon. `Restart` is not resent after a broken
/// connection (it is not idempotent): its failure then says it may have happened.
pub async fn request(socket: &Path, req: ControlRequest) -> Result<ControlReply, String> {
    let client = Client::<ControlRequest, ControlReply>::new(socket, CONTROL_LINK, "ctl", CTL_DEADLINE);
    client.call(req).await.map_err(|e| format!("cannot reach the daemon at {}: {e}", socket.display()))
}

fn secs(s: u64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// The human-readable table of `ctl status`.
pub fn format_status(st: &SupervisorStatus) -> String {
    let mut out = format!("supervisor: pid {}, up {}\n", st.pid, secs(st.uptime_secs));
    out.push_str(&format!(
        "{:<14} {:>8} {:>9} {:>8} {:>11}  {}\n",
        "COMPONENT", "PID", "UPTIME", "RESTARTS", "CONNECTIONS", "LAST EXIT"
    ));
    for c in &st.components {
        let pid = c.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let up = match (c.uptime_secs, c.restart_in_secs) {
            (Some(u), _) => secs(u),
            (None, Some(r)) => format!("in {r:.1}s"),
            (None, None) => "down".to_owned(),
        };
        let conns = c.connections.map_or_else(|| "-".to_owned(), |n| n.to_string());
        out.push_str(&format!(
            "{:<14} {:>8} {:>9} {:>8} {:>11}  {}\n",
            c.name,
            pid,
            up,
            c.restarts,
            conns,
            c.last_exit.as_deref().unwrap_or("-")
        ));
    }
    out
}

/// `guix-daemon-rs ctl ARGS`: returns the exit status.
pub async fn ctl(socket: &Path, args: &[String]) -> i32 {
    let req = match args {
        [cmd] if cmd == "status" => ControlRequest::Status,
        [cmd, comp] if cmd == "restart" => ControlRequest::Restart { component: comp.clone() },
        _ => {
            eprintln!("usage: guix-daemon-rs ctl status\n       guix-daemon-rs ctl restart COMPONENT");
            return crate::cli::EXIT_USAGE;
        }
    };
    match request(socket, req).await {
        Ok(ControlReply::Status(st)) => {
            print!("{}", format_status(&st));
            0
        }
        Ok(ControlReply::Restarted { component, pid }) => {
            println!("restarted {component} (pid {pid})");
            0
        }
        Ok(ControlReply::Ok) => 0,
        Ok(ControlReply::Error(e)) => {
            eprintln!("error: {e}");
            1
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

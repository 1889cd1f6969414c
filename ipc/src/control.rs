//! The `control` link: the supervisor's control socket
//! (`$GUIX_STATE_DIRECTORY/daemon-socket/rs-control`, mode 0600).
//!
//! `guix-daemon-rs ctl status|restart` speak it, and so do components that report metrics:
//! a component connects to [`crate::config::DaemonConfig::control_socket`] and sends
//! [`ControlRequest::ReportMetrics`] now and then (every few seconds, or when a value changes).
//! Each report replaces that component's previous set; the supervisor serves them on its
//! `/metrics` endpoint next to its own, and forgets them when the component exits. The metric
//! [`CONNECTIONS_METRIC`] (a gauge) is also shown by `ctl status` as the component's connection
//! count.
//!
//! Idempotency ([`LinkRequest`]): `Status` and `ReportMetrics` (a report replaces the previous
//! one) are resent after a broken connection; `Restart` is not (it would restart the component
//! twice): a restart whose reply was lost fails with [`crate::ClientError::MaybeDone`].
//! Failures are [`LinkError`]s (`Client`: no such component; `Retryable`: shutting down or
//! already stopping; `Internal`: the component could not be started).

use serde::{Deserialize, Serialize};

use crate::{LinkError, LinkRequest, LinkSpec};

pub const CONTROL_LINK: LinkSpec = LinkSpec { name: "control", version: 2 };

/// The gauge a component reports for its number of open client connections.
pub const CONNECTIONS_METRIC: &str = "guix_daemon_rs_connections";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// The state of every component.
    Status,
    /// Stop the component (SIGTERM, then SIGKILL after a grace period) and start it again at
    /// once, without back-off.
    Restart { component: String },
    /// A component's current metrics; replaces its previous report.
    ReportMetrics { component: String, metrics: Vec<Metric> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlReply {
    Status(SupervisorStatus),
    /// The component was restarted; its new pid.
    Restarted {
        component: String,
        pid: u32,
    },
    Ok,
    Error(LinkError),
}

impl LinkRequest for ControlRequest {
    fn idempotent(&self) -> bool {
        match self {
            ControlRequest::Status | ControlRequest::ReportMetrics { .. } => true,
            ControlRequest::Restart { .. } => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    pub pid: u32,
    pub uptime_secs: u64,
    pub components: Vec<ComponentStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    /// The pid while running.
    pub pid: Option<u32>,
    /// Seconds since the current process started, while running.
    pub uptime_secs: Option<u64>,
    /// How many times it was started again after the first start.
    pub restarts: u64,
    /// How the previous process ended (e.g. `exit status 2`, `signal 9`).
    pub last_exit: Option<String>,
    /// When waiting to be restarted: seconds until the next start.
    pub restart_in_secs: Option<f64>,
    /// The [`CONNECTIONS_METRIC`] gauge, if the component reports it.
    pub connections: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// One sample, in Prometheus terms. `name` must match `[a-zA-Z_:][a-zA-Z0-9_:]*`; the supervisor
/// drops samples whose name or label names do not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub help: String,
    pub kind: MetricKind,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_is_not_resent() {
        assert!(ControlRequest::Status.idempotent());
        assert!(ControlRequest::ReportMetrics { component: "x".into(), metrics: vec![] }.idempotent());
        assert!(!ControlRequest::Restart { component: "store-db".into() }.idempotent());
    }
}

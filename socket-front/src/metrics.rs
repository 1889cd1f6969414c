//! Counters of socket-front, reported to the supervisor (`ReportMetrics` on the control link)
//! every few seconds: open connections (the gauge `ctl status` shows), connections accepted,
//! and per opcode the number of requests, failures and total seconds spent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use guix_formats::worker::Opcode;
use guix_ipc::config::DaemonConfig;
use guix_ipc::control::{ControlReply, ControlRequest, Metric, MetricKind, CONNECTIONS_METRIC, CONTROL_LINK};
use guix_ipc::Client;

/// How often the metrics are sent.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Default, Clone, Copy)]
struct OpStats {
    count: u64,
    failures: u64,
    seconds: f64,
}

#[derive(Default)]
pub struct Metrics {
    connections: AtomicI64,
    accepted: AtomicU64,
    ops: Mutex<BTreeMap<Opcode, OpStats>>,
}

impl Metrics {
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn op_done(&self, op: Opcode, ok: bool, elapsed: Duration) {
        if let Ok(mut m) = self.ops.lock() {
            let s = m.entry(op).or_default();
            s.count += 1;
            s.failures += u64::from(!ok);
            s.seconds += elapsed.as_secs_f64();
        }
    }

    /// The samples to report.
    pub fn snapshot(&self) -> Vec<Metric> {
        let mut out = vec![
            Metric {
                name: CONNECTIONS_METRIC.into(),
                help: "Open client connections.".into(),
                kind: MetricKind::Gauge,
                labels: vec![],
                value: self.connections().max(0) as f64,
            },
            Metric {
                name: "guix_daemon_rs_connections_accepted_total".into(),
                help: "Client connections accepted.".into(),
                kind: MetricKind::Counter,
                labels: vec![],
                value: self.accepted.load(Ordering::Relaxed) as f64,
            },
        ];
        let ops = self.ops.lock().map(|m| m.clone()).unwrap_or_default();
        for (op, s) in ops {
            let labels = vec![("op".to_owned(), format!("{op:?}"))];
            out.push(Metric {
                name: "guix_daemon_rs_requests_total".into(),
                help: "Worker protocol requests, by operation.".into(),
                kind: MetricKind::Counter,
                labels: labels.clone(),
                value: s.count as f64,
            });
            out.push(Metric {
                name: "guix_daemon_rs_request_failures_total".into(),
                help: "Requests answered with STDERR_ERROR, by operation.".into(),
                kind: MetricKind::Counter,
                labels: labels.clone(),
                value: s.failures as f64,
            });
            out.push(Metric {
                name: "guix_daemon_rs_request_seconds_total".into(),
                help: "Time spent serving requests, by operation.".into(),
                kind: MetricKind::Counter,
                labels,
                value: s.seconds,
            });
        }
        out
    }
}

/// Sends the metrics to the supervisor forever (errors are ignored: the supervisor may be
/// restarting, or absent in tests).
pub async fn report_loop(metrics: std::sync::Arc<Metrics>, config: DaemonConfig) {
    let client: Client<ControlRequest, ControlReply> =
        Client::new(config.control_socket.clone(), CONTROL_LINK, "socket-front", Duration::from_secs(1));
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tick.tick().await;
        let req = ControlRequest::ReportMetrics { component: "socket-front".into(), metrics: metrics.snapshot() };
        let _ = client.call(req).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_has_the_gauge_and_per_op_series() {
        let m = Metrics::default();
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.op_done(Opcode::IsValidPath, true, Duration::from_millis(3));
        m.op_done(Opcode::IsValidPath, false, Duration::from_millis(1));
        let s = m.snapshot();
        let find = |name: &str| s.iter().find(|x| x.name == name).map(|x| x.value);
        assert_eq!(find(CONNECTIONS_METRIC), Some(1.0));
        assert_eq!(find("guix_daemon_rs_connections_accepted_total"), Some(2.0));
        assert_eq!(find("guix_daemon_rs_requests_total"), Some(2.0));
        assert_eq!(find("guix_daemon_rs_request_failures_total"), Some(1.0));
    }
}

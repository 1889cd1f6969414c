//! The optional metrics endpoint (`--rs-metrics-listen=IP:PORT`): `GET /metrics` in the
//! Prometheus text format.
//!
//! The supervisor's own series are `guix_daemon_rs_uptime_seconds`,
//! `guix_daemon_rs_component_up{component}` and
//! `guix_daemon_rs_component_restarts_total{component}`. Components push theirs with the control
//! link's `ReportMetrics` (see `guix_ipc::control`); they are served with an added
//! `component` label, until the component exits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use guix_ipc::control::{Metric, MetricKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::supervise::Command;

/// Largest request head we read.
const MAX_REQUEST: usize = 8192;

/// One component's figures, as the supervision loop sees them.
pub struct ComponentSample<'a> {
    pub name: &'a str,
    pub up: bool,
    pub restarts: u64,
    pub reported: &'a [Metric],
}

fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// Whether a reported metric may be served (valid metric and label names, no `component`
/// label of its own, finite value).
pub fn is_valid(m: &Metric) -> bool {
    valid_name(&m.name)
        && m.value.is_finite()
        && m.labels.iter().all(|(k, _)| valid_name(k) && !k.contains(':') && k != "component")
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders every series in the text exposition format.
pub fn render(uptime: Duration, comps: &[ComponentSample<'_>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP guix_daemon_rs_uptime_seconds Seconds since the supervisor started.");
    let _ = writeln!(out, "# TYPE guix_daemon_rs_uptime_seconds gauge");
    let _ = writeln!(out, "guix_daemon_rs_uptime_seconds {}", uptime.as_secs());
    let _ = writeln!(out, "# HELP guix_daemon_rs_component_up Whether the component is running.");
    let _ = writeln!(out, "# TYPE guix_daemon_rs_component_up gauge");
    for c in comps {
        let _ = writeln!(out, "guix_daemon_rs_component_up{{component=\"{}\"}} {}", escape(c.name), u8::from(c.up));
    }
    let _ = writeln!(out, "# HELP guix_daemon_rs_component_restarts_total Times the component was started again.");
    let _ = writeln!(out, "# TYPE guix_daemon_rs_component_restarts_total counter");
    for c in comps {
        let _ =
            writeln!(out, "guix_daemon_rs_component_restarts_total{{component=\"{}\"}} {}", escape(c.name), c.restarts);
    }
    // Reported series, grouped by name so HELP/TYPE appear once.
    let mut by_name: BTreeMap<&str, Vec<(&str, &Metric)>> = BTreeMap::new();
    for c in comps {
        for m in c.reported.iter().filter(|m| is_valid(m)) {
            by_name.entry(m.name.as_str()).or_default().push((c.name, m));
        }
    }
    for (name, samples) in by_name {
        if let Some((_, first)) = samples.first() {
            let kind = match first.kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}", first.help.replace('\\', "\\\\").replace('\n', "\\n"));
            let _ = writeln!(out, "# TYPE {name} {kind}");
        }
        for (comp, m) in samples {
            let mut labels = format!("component=\"{}\"", escape(comp));
            for (k, v) in &m.labels {
                let _ = write!(labels, ",{k}=\"{}\"", escape(v));
            }
            let _ = writeln!(out, "{name}{{{labels}}} {}", m.value);
        }
    }
    out
}

/// Serves `GET /metrics` until the process ends.
pub async fn serve(listener: TcpListener, commands: mpsc::Sender<Command>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let commands = commands.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let first_line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
            let mut parts = first_line.split(|&b| b == b' ');
            let (method, path) = (parts.next(), parts.next());
            let response = if method == Some(b"GET") && path == Some(b"/metrics") {
                let (tx, rx) = oneshot::channel();
                let body = match commands.send(Command::Metrics(tx)).await {
                    Ok(()) => rx.await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n".to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_supervisor_and_reported_series() {
        let reported = vec![
            Metric {
                name: "guix_daemon_rs_connections".into(),
                help: "Open connections.".into(),
                kind: MetricKind::Gauge,
                labels: vec![],
                value: 3.0,
            },
            Metric {
                name: "bad name".into(),
                help: String::new(),
                kind: MetricKind::Gauge,
                labels: vec![],
                value: 1.0,
            },
            Metric {
                name: "x".into(),
                help: String::new(),
                kind: MetricKind::Counter,
                labels: vec![("component".into(), "spoof".into())],
                value: 1.0,
            },
        ];
        let comps = [
            ComponentSample { name: "store-db", up: true, restarts: 2, reported: &[] },
            ComponentSample { name: "socket-front", up: false, restarts: 0, reported: &reported },
        ];
        let text = render(Duration::from_secs(7), &comps);
        assert!(text.contains("guix_daemon_rs_uptime_seconds 7\n"));
        assert!(text.contains("guix_daemon_rs_component_up{component=\"store-db\"} 1\n"));
        assert!(text.contains("guix_daemon_rs_component_up{component=\"socket-front\"} 0\n"));
        assert!(text.contains("guix_daemon_rs_component_restarts_total{component=\"store-db\"} 2\n"));
        assert!(text.contains("# TYPE guix_daemon_rs_connections gauge\n"));
        assert!(text.contains("guix_daemon_rs_connections{component=\"socket-front\"} 3\n"));
        assert!(!text.contains("bad name"));
        assert!(!text.contains("spoof"));
    }
}

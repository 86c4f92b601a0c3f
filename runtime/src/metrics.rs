//! Prometheus metrics, by the book: base units, `_total` counters, bounded
//! labels, served in the OpenMetrics text format when `ZCCL_METRICS_ADDR` is
//! set (off by default).
//!
//! **One endpoint per rank.** `ZCCL_METRICS_ADDR=host:port` makes the rank
//! with local rank `l` serve `http://host:(port + l)/metrics` (port 0: an
//! ephemeral port, logged at INFO under `INIT`). Per-rank endpoints keep
//! every counter owned by one process, need no cross-process aggregation, and
//! match how Prometheus scrapes per-process exporters; sum over ranks in
//! PromQL (`sum by (instance, nic)`).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `zccl_nic_transmit_bytes_total` | counter | `nic`, `rail` | payload bytes sent on a NIC (`shm` for shared memory) |
//! | `zccl_nic_receive_bytes_total` | counter | `nic`, `rail` | payload bytes received on a NIC |
//! | `zccl_nic_inflight_bytes` | gauge | `nic` | bytes queued or in flight on a NIC |
//! | `zccl_nic_failures_total` | counter | `nic` | connections lost on a NIC |
//! | `zccl_peer_timeouts_total` | counter | — | peers declared stuck (silent past `ZCCL_PEER_TIMEOUT`) |
//! | `zccl_op_bytes_total` | counter | `op` | bytes moved by completed operations |
//! | `zccl_op_duration_seconds` | histogram | `op` | issue-to-completion time of operations |
//! | `zccl_route_chunks_total` | counter | `nic`, `via` | chunks the router sent, `via` = `direct` or `proxy` |
//! | `zccl_build_info` | info | `version` | the zccl version |
//!
//! ```
//! let m = zccl_runtime::metrics::Metrics::new();
//! m.nic_transmit("eth0", Some(0), 4096);
//! m.op_done("send", 4096, std::time::Duration::from_micros(50));
//! let text = m.encode();
//! assert!(text.contains("zccl_nic_transmit_bytes_total{nic=\"eth0\",rail=\"0\"} 4096"));
//! assert!(text.contains("zccl_op_duration_seconds_count{op=\"send\"} 1"));
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

pub use zccl_transports::metrics::Metrics;

/// The address rank `local_rank` serves on for `ZCCL_METRICS_ADDR=base`:
/// the base port plus the local rank (port 0 stays 0: ephemeral).
///
/// ```
/// use zccl_runtime::metrics::rank_addr;
/// assert_eq!(rank_addr("127.0.0.1:9400", 2).unwrap().to_string(), "127.0.0.1:9402");
/// assert_eq!(rank_addr("127.0.0.1:0", 5).unwrap().port(), 0);
/// assert!(rank_addr("nonsense", 0).is_err());
/// ```
pub fn rank_addr(base: &str, local_rank: u32) -> Result<SocketAddr, String> {
    let addr: SocketAddr = base.trim().parse().map_err(|_| {
        format!(
            "ZCCL_METRICS_ADDR={} is not ip:port (e.g. 127.0.0.1:9400)",
            crate::envvars::shown(base)
        )
    })?;
    if addr.port() == 0 {
        return Ok(addr);
    }
    let port = u32::from(addr.port()) + local_rank;
    let port = u16::try_from(port).map_err(|_| {
        format!(
            "ZCCL_METRICS_ADDR={}: port {port} for local rank {local_rank} is out of range",
            crate::envvars::shown(base)
        )
    })?;
    Ok(SocketAddr::new(addr.ip(), port))
}

/// Start this process's `/metrics` endpoint for `ZCCL_METRICS_ADDR=base` if
/// it is not running yet, and return its address. Every communicator of the
/// process shares it; it runs until the process exits.
pub fn serve_once(base: &str, local_rank: u32) -> Result<SocketAddr, String> {
    static SERVER: std::sync::Mutex<Option<MetricsServer>> = std::sync::Mutex::new(None);
    let mut s = SERVER
        .lock()
        .map_err(|_| "metrics endpoint lock poisoned".to_string())?;
    if let Some(srv) = s.as_ref() {
        return Ok(srv.addr());
    }
    let addr = rank_addr(base, local_rank)?;
    let srv = MetricsServer::start(addr, Metrics::global())
        .map_err(|e| format!("ZCCL_METRICS_ADDR={base:?}: cannot serve on {addr}: {e}"))?;
    let bound = srv.addr();
    *s = Some(srv);
    Ok(bound)
}

/// A running `/metrics` endpoint; stops when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MetricsServer({})", self.addr)
    }
}

impl MetricsServer {
    /// Serve `metrics` on `addr` (`GET /metrics`; anything else is 404).
    pub fn start(addr: SocketAddr, metrics: &'static Metrics) -> std::io::Result<MetricsServer> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| std::io::Error::other(format!("metrics endpoint {addr}: {e}")))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("metrics endpoint is not an IP socket"))?;
        let server = Arc::new(server);
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name("zccl-metrics".into())
            .spawn(move || {
                for req in s.incoming_requests() {
                    let resp = if req.url() == "/metrics" || req.url().starts_with("/metrics?") {
                        let ct = tiny_http::Header::from_bytes(
                            &b"Content-Type"[..],
                            &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
                        )
                        .expect("static header");
                        tiny_http::Response::from_string(metrics.encode()).with_header(ct)
                    } else {
                        tiny_http::Response::from_string("not found; try /metrics\n")
                            .with_status_code(404)
                    };
                    let _ = req.respond(resp);
                }
            })?;
        Ok(MetricsServer {
            server,
            addr,
            thread: Some(thread),
        })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    #[test]
    fn serves_metrics_over_http() {
        let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        m.nic_transmit("lo", None, 42);
        let srv = MetricsServer::start("127.0.0.1:0".parse().unwrap(), m).unwrap();
        let get = |path: &str| {
            let mut s = std::net::TcpStream::connect(srv.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("/metrics");
        assert!(
            ok.starts_with("HTTP/1.0 200") || ok.starts_with("HTTP/1.1 200"),
            "{ok}"
        );
        assert!(ok.contains("openmetrics-text"));
        assert!(ok.contains("zccl_nic_transmit_bytes_total{nic=\"lo\",rail=\"none\"} 42"));
        assert!(get("/other").contains(" 404 "));
        drop(srv);
    }
}

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
//! let m = zccl_transports::metrics::Metrics::new();
//! m.nic_transmit("eth0", Some(0), 4096);
//! m.op_done("send", 4096, std::time::Duration::from_micros(50));
//! let text = m.encode();
//! assert!(text.contains("zccl_nic_transmit_bytes_total{nic=\"eth0\",rail=\"0\"} 4096"));
//! assert!(text.contains("zccl_op_duration_seconds_count{op=\"send\"} 1"));
//! ```

use std::sync::atomic::AtomicI64;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

mod duration;
mod tally;
pub use duration::DurationHistogram;
pub use tally::TallyCounter;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NicRail {
    nic: String,
    rail: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Nic {
    nic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NicVia {
    nic: String,
    via: String,
}

/// The metrics of one process. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    tx: Family<NicRail, TallyCounter>,
    rx: Family<NicRail, TallyCounter>,
    inflight: Family<Nic, Gauge<i64, AtomicI64>>,
    failures: Family<Nic, Counter>,
    timeouts: Counter,
    op_bytes: Family<OpLabel, TallyCounter>,
    op_seconds: Family<OpLabel, DurationHistogram>,
    route_chunks: Family<NicVia, Counter>,
    /// The shared-memory transport's two series, looked up once (every
    /// message counts here: no label allocation or hashing per message).
    shm_tx: OnceLock<TallyCounter>,
    shm_rx: OnceLock<TallyCounter>,
    /// Each op's series, looked up once (a handful of ops; counted per
    /// completed op).
    ops: Mutex<Vec<(&'static str, OpSeries)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Adds `bytes` to `nic`'s series of `family`; the shared-memory one
/// (every message counts there) through `shm`, looked up once.
fn count_nic(
    family: &Family<NicRail, TallyCounter>,
    shm: &OnceLock<TallyCounter>,
    nic: &str,
    rail: Option<u32>,
    bytes: u64,
) {
    let label = || NicRail {
        nic: nic.to_string(),
        rail: rail_label(rail),
    };
    if nic == "shm" && rail.is_none() {
        shm.get_or_init(|| family.get_or_create(&label()).clone())
            .inc_by(bytes);
    } else {
        family.get_or_create(&label()).inc_by(bytes);
    }
}

fn rail_label(rail: Option<u32>) -> String {
    rail.map_or_else(|| "none".to_string(), |r| r.to_string())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One operation's completions: bytes and issue-to-completion time
/// ([`Metrics::op`]).
///
/// ```
/// let m = zccl_transports::metrics::Metrics::new();
/// m.op("recv").done(4096, std::time::Duration::from_micros(50));
/// assert!(m.encode().contains("zccl_op_duration_seconds_count{op=\"recv\"} 1"));
/// ```
#[derive(Clone)]
pub struct OpSeries {
    bytes: TallyCounter,
    seconds: DurationHistogram,
}

impl OpSeries {
    /// One completed operation that moved `bytes` in `elapsed`.
    ///
    /// ```
    /// let m = zccl_transports::metrics::Metrics::new();
    /// m.op("send").done(8, std::time::Duration::from_micros(1));
    /// assert!(m.encode().contains("zccl_op_bytes_total{op=\"send\"} 8"));
    /// ```
    pub fn done(&self, bytes: u64, elapsed: Duration) {
        self.done_ns(bytes, u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// [`OpSeries::done`] with the time in nanoseconds.
    ///
    /// ```
    /// let m = zccl_transports::metrics::Metrics::new();
    /// m.op("recv").done_ns(8, 1_500);
    /// assert!(m.encode().contains("zccl_op_duration_seconds_sum{op=\"recv\"} 0.0000015"));
    /// ```
    #[inline]
    pub fn done_ns(&self, bytes: u64, elapsed_ns: u64) {
        self.bytes.inc_by(bytes);
        self.seconds.observe_ns(elapsed_ns);
    }
}

impl Metrics {
    /// A fresh registry with every zccl metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("zccl");
        // The byte counters (every message on shared memory counts there)
        // and the op series are tallies: each thread adds to its own,
        // without a locked instruction (`tally.rs`).
        let tx = Family::<NicRail, TallyCounter>::default();
        registry.register_with_unit(
            "nic_transmit",
            "Payload bytes sent on a NIC",
            Unit::Bytes,
            tx.clone(),
        );
        let rx = Family::<NicRail, TallyCounter>::default();
        registry.register_with_unit(
            "nic_receive",
            "Payload bytes received on a NIC",
            Unit::Bytes,
            rx.clone(),
        );
        let inflight = Family::<Nic, Gauge<i64, AtomicI64>>::default();
        registry.register_with_unit(
            "nic_inflight",
            "Bytes queued or in flight on a NIC",
            Unit::Bytes,
            inflight.clone(),
        );
        let failures = Family::<Nic, Counter>::default();
        registry.register(
            "nic_failures",
            "Connections lost on a NIC",
            failures.clone(),
        );
        let timeouts = Counter::default();
        registry.register("peer_timeouts", "Peers declared stuck", timeouts.clone());
        let op_bytes = Family::<OpLabel, TallyCounter>::default();
        registry.register_with_unit(
            "op",
            "Bytes moved by completed operations",
            Unit::Bytes,
            op_bytes.clone(),
        );
        // 1 µs .. ~4.5 min, ×4 per bucket, without a lock per observation.
        let op_seconds = Family::<OpLabel, DurationHistogram>::default();
        registry.register_with_unit(
            "op_duration",
            "Issue-to-completion time of operations",
            Unit::Seconds,
            op_seconds.clone(),
        );
        let route_chunks = Family::<NicVia, Counter>::default();
        registry.register(
            "route_chunks",
            "Chunks sent by the router",
            route_chunks.clone(),
        );
        registry.register(
            "build",
            "zccl build information",
            Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        Metrics {
            registry,
            tx,
            rx,
            inflight,
            failures,
            timeouts,
            op_bytes,
            op_seconds,
            route_chunks,
            shm_tx: OnceLock::new(),
            shm_rx: OnceLock::new(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// The process-wide metrics every communicator of this process updates.
    pub fn global() -> &'static Metrics {
        static GLOBAL: OnceLock<Metrics> = OnceLock::new();
        GLOBAL.get_or_init(Metrics::new)
    }

    /// `bytes` of payload sent on `nic`.
    pub fn nic_transmit(&self, nic: &str, rail: Option<u32>, bytes: u64) {
        count_nic(&self.tx, &self.shm_tx, nic, rail, bytes);
    }

    /// `bytes` of payload received on `nic`.
    pub fn nic_receive(&self, nic: &str, rail: Option<u32>, bytes: u64) {
        count_nic(&self.rx, &self.shm_rx, nic, rail, bytes);
    }

    /// Bytes queued on `nic` changed by `delta`.
    pub fn nic_inflight_add(&self, nic: &str, delta: i64) {
        self.inflight
            .get_or_create(&Nic {
                nic: nic.to_string(),
            })
            .inc_by(delta);
    }

    /// A connection on `nic` was lost.
    pub fn nic_failure(&self, nic: &str) {
        self.failures
            .get_or_create(&Nic {
                nic: nic.to_string(),
            })
            .inc();
    }

    /// A peer was declared stuck.
    pub fn peer_timeout(&self) {
        self.timeouts.inc();
    }

    /// An operation `op` moved `bytes` and took `elapsed` from issue to completion.
    pub fn op_done(&self, op: &'static str, bytes: u64, elapsed: Duration) {
        self.op(op).done(bytes, elapsed);
    }

    /// The series of operation `op` (`zccl_op_bytes_total`,
    /// `zccl_op_duration_seconds`), to count its completions without
    /// looking them up each time.
    ///
    /// ```
    /// use std::time::Duration;
    /// let m = zccl_transports::metrics::Metrics::new();
    /// let sends = m.op("send");
    /// sends.done(8, Duration::from_micros(2));
    /// sends.done(8, Duration::from_micros(3));
    /// assert!(m.encode().contains("zccl_op_bytes_total{op=\"send\"} 16"));
    /// ```
    pub fn op(&self, op: &'static str) -> OpSeries {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = ops.iter().find(|(o, _)| *o == op) {
            return s.clone();
        }
        let l = OpLabel { op: op.to_string() };
        let s = OpSeries {
            bytes: self.op_bytes.get_or_create(&l).clone(),
            seconds: self.op_seconds.get_or_create(&l).clone(),
        };
        ops.push((op, s.clone()));
        s
    }

    /// The router sent a chunk on `nic`, directly or through a proxy.
    pub fn route_chunk(&self, nic: &str, via_proxy: bool) {
        let via = if via_proxy { "proxy" } else { "direct" };
        self.route_chunks
            .get_or_create(&NicVia {
                nic: nic.to_string(),
                via: via.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let m = Metrics::new();
        m.nic_transmit("nic0", Some(1), 10);
        m.nic_receive("nic0", None, 7);
        m.nic_inflight_add("nic0", 5);
        m.nic_failure("nic0");
        m.peer_timeout();
        m.route_chunk("nic1", true);
        m.op_done("all_reduce", 100, Duration::from_millis(3));
        // Several ops and repeated calls land in the same families.
        m.op_done("send", 8, Duration::from_micros(2));
        m.op_done("send", 16, Duration::from_micros(3));
        m.op_done("recv", 4, Duration::from_micros(2));
        let t = m.encode();
        for want in [
            "zccl_nic_transmit_bytes_total{nic=\"nic0\",rail=\"1\"} 10",
            "zccl_nic_receive_bytes_total{nic=\"nic0\",rail=\"none\"} 7",
            "zccl_nic_inflight_bytes{nic=\"nic0\"} 5",
            "zccl_nic_failures_total{nic=\"nic0\"} 1",
            "zccl_peer_timeouts_total 1",
            "zccl_route_chunks_total{nic=\"nic1\",via=\"proxy\"} 1",
            "zccl_op_bytes_total{op=\"all_reduce\"} 100",
            "zccl_op_duration_seconds_count{op=\"all_reduce\"} 1",
            "zccl_op_bytes_total{op=\"send\"} 24",
            "zccl_op_duration_seconds_count{op=\"send\"} 2",
            "zccl_op_bytes_total{op=\"recv\"} 4",
            "zccl_build_info{version=\"",
            "# EOF",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }
}

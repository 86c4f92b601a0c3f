//! Runtime configuration from `ZCCL_*` environment variables.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `ZCCL_TIMEOUT` | deadline of every op and of init, seconds | 300 |
//! | `ZCCL_PEER_TIMEOUT` | a peer silent this long is declared stuck, seconds | min(`ZCCL_TIMEOUT`/2, 60) |
//! | `ZCCL_HEARTBEAT_MS` | heartbeat period of idle sockets | min(1000, peer timeout/5) |
//! | `ZCCL_HANDSHAKE_TIMEOUT` | longest wait for a connection's hello, seconds | min(10, `ZCCL_TIMEOUT`) |
//! | `ZCCL_SOCKET_IFNAME` | NICs to use (NCCL syntax, see [`zccl_transports::ifname`]) | all but `docker*`, `lo*` |
//! | `ZCCL_NSOCKS_PERPEER` | TCP connections per peer | one per NIC (the most NICs any rank selected) |
//! | `ZCCL_CHUNK_BYTES` | striping chunk size | 524288 |
//! | `ZCCL_MAX_FRAME_BYTES` | largest frame accepted | 16 MiB |
//! | `ZCCL_MAX_MESSAGE_BYTES` | largest message accepted | 16 GiB |
//! | `ZCCL_SOCKET_BUFFER_BYTES` | `SO_SNDBUF`/`SO_RCVBUF`; 0 = the kernel's autotuning (a fixed receive buffer that fills gets pruned, and the dropped segment costs a 200 ms retransmission timeout) | 0 |
//! | `ZCCL_METRICS_ADDR` | serve Prometheus metrics: rank with local rank `l` on `host:(port + l)`; unset = off | unset |
//! | `ZCCL_NTHREADS` | progress-engine threads per rank | 1 with at most 2 CPUs, else 2 |
//! | `ZCCL_SHM_DISABLE` | `1`: ranks of one host talk over TCP, not shared memory | `0` |
//! | `ZCCL_SHM_RING_BYTES` | bytes of each shared-memory ring (one per direction and pair) | 4 MiB |
//! | `ZCCL_SHM_SPIN` | spin rounds before a shared-memory wait sleeps in `futex` | 200 |
//! | `ZCCL_SHM_CMA_MIN_BYTES` | same-host messages at least this large are copied once, straight from the sender's memory (`process_vm_readv`), instead of twice through the ring | 262144 |
//! | `ZCCL_SHM_CMA_DISABLE` | `1`: never use that single copy | `0` |
//! | `ZCCL_HOST_ID` | overrides the host identity (boot id + network namespace) | — |
//! | `ZCCL_SPIN_US` | how long a thread waiting on a handle spins, polling for messages, before it sleeps; microseconds, 0 = never | 50 |
//! | `ZCCL_ROUTER` | sends to other hosts: `on` (NIC-aware router), `affinity` (whole, on the sender's own NIC), `off` (striped by TCP) | `on` |
//! | `ZCCL_CROSS_NIC` | router rail matching: `0` same rail only, `1` any NIC, `2` same rail first | `2` |
//! | `ZCCL_PXN_DISABLE` | `1`: the router's sender drives other NICs itself instead of relaying through the rank affine to them | `0` |
//! | `ZCCL_ROUTE_CHUNK_BYTES` | largest chunk the router sends | 1 MiB |
//!
//! Shared memory is used between two ranks when both have the same host
//! identity and neither set `ZCCL_SHM_DISABLE=1`; everything else uses TCP.

use std::time::Duration;

use zccl_transports::shm::ShmConfig;
use zccl_transports::tcp::TcpConfig;

use crate::error::{Error, Result};

/// Configuration of a communicator.
#[derive(Debug, Clone)]
pub struct Config {
    /// Deadline of every op (from issue) and of initialisation.
    pub timeout: Duration,
    /// Raw `ZCCL_SOCKET_IFNAME`, if set.
    pub socket_ifname: Option<String>,
    /// TCP transport settings.
    pub tcp: TcpConfig,
    /// Worker threads of the progress engine.
    pub engine_threads: usize,
    /// Whether same-host peers use shared memory (`ZCCL_SHM_DISABLE` unset or `0`).
    pub shm_enabled: bool,
    /// Shared-memory transport settings.
    pub shm: ShmConfig,
    /// `ZCCL_METRICS_ADDR`: where this host's ranks serve Prometheus metrics
    /// (rank with local rank `l` on port + `l`; see [`crate::metrics`]).
    pub metrics_addr: Option<String>,
    /// `ZCCL_SPIN_US`: how long a waiting thread spins (polling the
    /// transports for messages already there) before it sleeps.
    pub spin_wait: Duration,
    /// `ZCCL_ROUTER`.
    pub router: crate::router::RouterMode,
    /// The router's policy (`ZCCL_CROSS_NIC`, `ZCCL_PXN_DISABLE`,
    /// `ZCCL_ROUTE_CHUNK_BYTES`).
    pub route_policy: crate::router::Policy,
}

impl Default for Config {
    fn default() -> Self {
        Self::from_lookup(|_| None).expect("defaults are valid")
    }
}

fn secs(name: &str, v: &str) -> Result<Duration> {
    let s: f64 = v
        .trim()
        .parse()
        .map_err(|_| Error::Config(format!("{name}={v:?} is not a number of seconds")))?;
    if !(s.is_finite() && s > 0.0) {
        return Err(Error::Config(format!("{name}={v:?} must be positive")));
    }
    Ok(Duration::from_secs_f64(s))
}

fn int<T: std::str::FromStr>(name: &str, v: &str) -> Result<T> {
    v.trim()
        .parse()
        .map_err(|_| Error::Config(format!("{name}={v:?} is not a valid integer")))
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `get` (pure; used by tests).
    ///
    /// ```
    /// use std::time::Duration;
    /// let c = zccl_runtime::Config::from_lookup(|k| (k == "ZCCL_TIMEOUT").then(|| "4".to_string())).unwrap();
    /// assert_eq!(c.timeout, Duration::from_secs(4));
    /// assert_eq!(c.tcp.peer_timeout, Duration::from_secs(2));
    /// ```
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let timeout = get("ZCCL_TIMEOUT")
            .map(|v| secs("ZCCL_TIMEOUT", &v))
            .transpose()?
            .unwrap_or(Duration::from_secs(300));
        let peer_timeout = get("ZCCL_PEER_TIMEOUT")
            .map(|v| secs("ZCCL_PEER_TIMEOUT", &v))
            .transpose()?
            .unwrap_or_else(|| (timeout / 2).min(Duration::from_secs(60)));
        let heartbeat_interval = match get("ZCCL_HEARTBEAT_MS") {
            Some(v) => Duration::from_millis(int::<u64>("ZCCL_HEARTBEAT_MS", &v)?.max(1)),
            None => (peer_timeout / 5)
                .min(Duration::from_secs(1))
                .max(Duration::from_millis(1)),
        };
        let handshake_timeout = get("ZCCL_HANDSHAKE_TIMEOUT")
            .map(|v| secs("ZCCL_HANDSHAKE_TIMEOUT", &v))
            .transpose()?
            .unwrap_or_else(|| timeout.min(Duration::from_secs(10)));
        let mut tcp = TcpConfig {
            peer_timeout,
            heartbeat_interval,
            handshake_timeout,
            ..TcpConfig::default()
        };
        if let Some(v) = get("ZCCL_NSOCKS_PERPEER") {
            tcp.sockets_per_peer = int("ZCCL_NSOCKS_PERPEER", &v)?;
            if tcp.sockets_per_peer == 0 || tcp.sockets_per_peer > 64 {
                return Err(Error::Config(format!(
                    "ZCCL_NSOCKS_PERPEER={v:?} must be in 1..=64"
                )));
            }
        }
        if let Some(v) = get("ZCCL_MAX_FRAME_BYTES") {
            tcp.limits.max_frame = int("ZCCL_MAX_FRAME_BYTES", &v)?;
        }
        if let Some(v) = get("ZCCL_MAX_MESSAGE_BYTES") {
            tcp.limits.max_message = int("ZCCL_MAX_MESSAGE_BYTES", &v)?;
        }
        if let Some(v) = get("ZCCL_CHUNK_BYTES") {
            tcp.chunk_bytes = int("ZCCL_CHUNK_BYTES", &v)?;
        }
        if tcp.chunk_bytes == 0 || tcp.chunk_bytes > tcp.limits.max_frame as usize {
            return Err(Error::Config(format!(
                "chunk size {} must be in 1..=ZCCL_MAX_FRAME_BYTES ({})",
                tcp.chunk_bytes, tcp.limits.max_frame
            )));
        }
        if let Some(v) = get("ZCCL_SOCKET_BUFFER_BYTES") {
            let b: usize = int("ZCCL_SOCKET_BUFFER_BYTES", &v)?;
            tcp.socket_buffer_bytes = (b > 0).then_some(b);
        }
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let engine_threads = match get("ZCCL_NTHREADS") {
            Some(v) => int::<usize>("ZCCL_NTHREADS", &v)?.clamp(1, 64),
            // With 2 CPUs or fewer, a second worker per rank only adds
            // context switches (measured with the p2p benchmark).
            None if cpus <= 2 => 1,
            None => 2,
        };
        let socket_ifname = get("ZCCL_SOCKET_IFNAME").filter(|s| !s.trim().is_empty());
        let shm_enabled = match get("ZCCL_SHM_DISABLE").as_deref().map(str::trim) {
            None | Some("" | "0" | "false" | "no") => true,
            Some("1" | "true" | "yes") => false,
            Some(v) => {
                return Err(Error::Config(format!(
                    "ZCCL_SHM_DISABLE={v:?} must be 0 or 1"
                )));
            }
        };
        let mut shm = ShmConfig {
            max_message: tcp.limits.max_message,
            ..ShmConfig::default()
        };
        if let Some(v) = get("ZCCL_SHM_RING_BYTES") {
            shm.ring_bytes = int("ZCCL_SHM_RING_BYTES", &v)?;
            if !(4096..=1 << 30).contains(&shm.ring_bytes) {
                return Err(Error::Config(format!(
                    "ZCCL_SHM_RING_BYTES={v:?} must be in 4096..=1073741824"
                )));
            }
        }
        if let Some(v) = get("ZCCL_SHM_SPIN") {
            shm.spin_iterations = int("ZCCL_SHM_SPIN", &v)?;
        }
        if let Some(v) = get("ZCCL_SHM_CMA_MIN_BYTES") {
            shm.cma_min_bytes = int("ZCCL_SHM_CMA_MIN_BYTES", &v)?;
        }
        match get("ZCCL_SHM_CMA_DISABLE").as_deref().map(str::trim) {
            None | Some("" | "0") => {}
            Some("1") => shm.cma_min_bytes = 0,
            Some(v) => {
                return Err(Error::Config(format!(
                    "ZCCL_SHM_CMA_DISABLE={v:?} must be 0 or 1"
                )));
            }
        }
        let metrics_addr = get("ZCCL_METRICS_ADDR").filter(|v| !v.trim().is_empty());
        if let Some(a) = &metrics_addr {
            crate::metrics::rank_addr(a, 0).map_err(Error::Config)?;
        }
        let router = match get("ZCCL_ROUTER") {
            Some(v) => crate::router::RouterMode::parse(&v).map_err(Error::Config)?,
            None => crate::router::RouterMode::On,
        };
        let route_policy =
            crate::router::Policy::from_lookup(&get).map_err(|e| Error::Config(e.to_string()))?;
        let spin_wait = match get("ZCCL_SPIN_US") {
            Some(v) => Duration::from_micros(int::<u64>("ZCCL_SPIN_US", &v)?.min(1_000_000)),
            None => Duration::from_micros(50),
        };
        Ok(Self {
            timeout,
            socket_ifname,
            tcp,
            engine_threads,
            shm_enabled,
            shm,
            metrics_addr,
            spin_wait,
            router,
            route_policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.timeout, Duration::from_secs(300));
        assert_eq!(c.tcp.peer_timeout, Duration::from_secs(60));
        assert_eq!(c.tcp.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.tcp.sockets_per_peer, 0, "one per NIC");
        assert!(c.socket_ifname.is_none());
        assert!(c.shm_enabled);
        assert_eq!(c.shm.ring_bytes, 4 << 20);
    }

    #[test]
    fn overrides_and_errors() {
        let c = cfg(&[
            ("ZCCL_TIMEOUT", "2.5"),
            ("ZCCL_NSOCKS_PERPEER", "4"),
            ("ZCCL_SOCKET_BUFFER_BYTES", "0"),
            ("ZCCL_SOCKET_IFNAME", "=lo"),
            ("ZCCL_SHM_DISABLE", "1"),
            ("ZCCL_SHM_RING_BYTES", "65536"),
        ])
        .unwrap();
        assert!(!c.shm_enabled);
        assert_eq!(c.shm.ring_bytes, 65536);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.tcp.peer_timeout, Duration::from_millis(1250));
        assert_eq!(c.tcp.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.tcp.sockets_per_peer, 4);
        assert_eq!(c.tcp.socket_buffer_bytes, None);
        assert_eq!(c.socket_ifname.as_deref(), Some("=lo"));
        for bad in [
            vec![("ZCCL_TIMEOUT", "soon")],
            vec![("ZCCL_TIMEOUT", "-1")],
            vec![("ZCCL_NSOCKS_PERPEER", "0")],
            vec![("ZCCL_CHUNK_BYTES", "100"), ("ZCCL_MAX_FRAME_BYTES", "10")],
            vec![("ZCCL_SHM_DISABLE", "maybe")],
            vec![("ZCCL_SHM_RING_BYTES", "100")],
            vec![("ZCCL_ROUTER", "sideways")],
            vec![("ZCCL_CROSS_NIC", "3")],
        ] {
            assert!(matches!(cfg(&bad), Err(Error::Config(_))), "{bad:?}");
        }
    }
}

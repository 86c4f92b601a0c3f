//! Runtime configuration from `ZCCL_*` environment variables.
//!
//! | variable | meaning | accepted | default |
//! |---|---|---|---|
//! | `ZCCL_TIMEOUT` | deadline of every op and of init, seconds | [0.001, 1e9] | 300 |
//! | `ZCCL_PEER_TIMEOUT` | a peer silent this long is declared stuck, seconds | [0.001, 1e9] | min(`ZCCL_TIMEOUT`/2, 60) |
//! | `ZCCL_HEARTBEAT_MS` | heartbeat period of idle sockets | 0..=10¹² (0 means 1), at most half the peer timeout | min(1000, peer timeout/5) |
//! | `ZCCL_HANDSHAKE_TIMEOUT` | longest wait for a connection's hello, seconds | [0.001, 1e9] | min(10, `ZCCL_TIMEOUT`) |
//! | `ZCCL_SOCKET_IFNAME` | NICs to use (NCCL syntax, see [`zccl_transports::ifname`]) | any | all but `docker*`, `lo*` |
//! | `ZCCL_NSOCKS_PERPEER` | TCP connections per peer; set the same on every rank (a rank set otherwise fails the job at connection setup, on every rank, naming it) | 1..=64 | one per NIC (the most NICs any rank selected) |
//! | `ZCCL_CHUNK_BYTES` | striping chunk size | 1..=`ZCCL_MAX_FRAME_BYTES` | 524288 |
//! | `ZCCL_MAX_FRAME_BYTES` | largest frame accepted | 1..=4294967295 | 16 MiB |
//! | `ZCCL_MAX_MESSAGE_BYTES` | largest message accepted | 1..=2⁴⁰ (1 TiB) | 16 GiB |
//! | `ZCCL_SOCKET_BUFFER_BYTES` | `SO_SNDBUF`/`SO_RCVBUF`; 0 = the kernel's autotuning (a fixed receive buffer that fills gets pruned, and the dropped segment costs a 200 ms retransmission timeout) | 0..=2147483647 | 0 |
//! | `ZCCL_METRICS_ADDR` | serve Prometheus metrics: rank with local rank `l` on `host:(port + l)`; unset = off | `ip:port` | unset |
//! | `ZCCL_NTHREADS` | progress-engine threads per rank | a whole number, clamped to 1..=64 | 1 with at most 2 CPUs, else 2 |
//! | `ZCCL_SHM_DISABLE` | `1`: ranks of one host talk over TCP, not shared memory | `0`/`1` (`false`/`true`, `no`/`yes`) | `0` |
//! | `ZCCL_SHM_RING_BYTES` | bytes of each shared-memory ring (one per direction and pair; smaller, with a warning, where `/dev/shm` cannot hold all pairs' rings) | 4096..=2³⁰ | 4 MiB |
//! | `ZCCL_SHM_SPIN` | spin rounds before a shared-memory wait sleeps in `futex` | 0..=4294967295 | 200 |
//! | `ZCCL_SHM_CMA_MIN_BYTES` | same-host messages at least this large are copied once, straight from the sender's memory (`process_vm_readv`), instead of twice through the ring | a whole number; `0` turns the single copy off, as `ZCCL_SHM_CMA_DISABLE=1` does | 1048577 (more than 1 MiB); 262145 (more than 256 KiB) on a host whose ranks outnumber their CPUs (the union of the local ranks' affinity masks) |
//! | `ZCCL_SHM_CMA_DISABLE` | `1`: never use that single copy (and leave Yama alone: where `kernel.yama.ptrace_scope` is 1, Ubuntu's default, a rank otherwise declares its parent process, the launcher, its ptracer, `prctl(PR_SET_PTRACER)`, so that its sibling ranks, and only the launcher's descendants, may read it) | `0`/`1` | `0` |
//! | `ZCCL_SHM_POLL_LEASE_US` | how long, after a thread's op completes, same-host peers leave small messages to this rank's next poll instead of waking its reader threads; also about the longest such a message waits when nothing polls again (see [`zccl_transports::shm::ShmConfig::poll_lease`]) | 0..=1000000 (`0`: no lease) | 1000; 4000 on a host whose ranks have no spare CPU each (twice the ranks outnumber their CPUs) |
//! | `ZCCL_HOST_ID` | overrides the host identity (boot id + network namespace) | any | — |
//! | `ZCCL_MAX_UNEXPECTED_BYTES` | per sending peer: most bytes a receiver buffers for receives not posted yet; a sender that would exceed it sends a request and waits for a clear-to-send ([`crate::flow`]); set the same on every rank | 1..=2⁶³ | 67108864 (64 MiB) |
//! | `ZCCL_MALLOC_TUNE` | `1`: at the first communicator, keep glibc's allocator from returning memory to the kernel between operations, and the ranks `zccl run` and `zccl bench -N` start get `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (huge pages for that heap; see [`crate::malloc`]); `0`: leave both alone | `0`/`1` | `1` |
//! | `ZCCL_SPIN_US` | how long a thread waiting on a handle spins, polling for messages, before it sleeps (the first 10 µs back to back when this host's ranks have a core each, yielding the core between polls after that, or from the start when ranks outnumber cores); microseconds, 0 = never | a whole number, clamped to 0..=10⁶ | 300 |
//! | `ZCCL_SPIN_US_PER_MIB` | how much longer a thread waiting for a large op spins, per MiB of the op, before it sleeps: a large op's wait is mostly a copy, and a thread that sleeps through it can wake late (on a VM its vCPU halts); it spins for the longer of `ZCCL_SPIN_US` and this times the op's MiB, at most one second, and not at all where `ZCCL_SPIN_US` is 0; where this host's ranks outnumber its CPUs only for ops of more than 2 MiB up to 8 MiB, whose copies the waiter makes itself there (it would take CPU from the other ranks' copies of larger ones; those of up to 16 MiB it copies when they are there as it polls); microseconds, 0 = `ZCCL_SPIN_US` alone | 0..=1000000 | 250 |
//! | `ZCCL_ROUTER` | sends to other hosts: `on` (NIC-aware router), `affinity` (whole, on the sender's own NIC), `off` (striped by TCP); the same on every rank (ranks that differ fail at init, each naming the variable and who holds which value) | see left | `on` |
//! | `ZCCL_CROSS_NIC` | router rail matching: `0` same rail only, `1` any NIC, `2` same rail first | `0`, `1`, `2` | `2` |
//! | `ZCCL_PXN_DISABLE` | `1`: the router's sender drives other NICs itself instead of relaying through the rank affine to them | `0`/`1` | `0` |
//! | `ZCCL_ALGO` | collective algorithm (read by `zccl_primitives`, once per process; set it alike on every rank: ranks that differ fail at init, each naming it): `ring`, `tree` (recursive doubling, Bruck, binomial tree), `halving` (Rabenseifner's all-reduce over power-of-two groups; the ring elsewhere), `auto` (by size: tree up to 64 KiB, halving for all-reduce up to 2 MiB over power-of-two groups of 4+ ranks, ring above) | see left | `auto` |
//! | `ZCCL_BIND_TO` | where `zccl run` and `zccl bench -N` bind their ranks (read by those launchers, [`crate::binding`]): `auto` (as `mpirun`: a core each for up to 2 ranks, a package each for more, none when oversubscribed), `core` (a core each when the cores are enough), `none` | `auto`, `core`, `none` | `none` for `zccl run`, `auto` for `zccl bench -N` |
//! | `ZCCL_ROUTE_CHUNK_BYTES` | largest chunk the router sends | 4096..=18446744073709551615 | 1 MiB |
//!
//! A value outside its range is an [`Error::Config`] that names the variable
//! and the range; nothing is silently wrapped or truncated. Durations stop at
//! 1e9 s ([`MAX_DURATION_SECS`], about 31 years), so every deadline computed
//! from them (`Instant::now() + timeout`) stays representable. A variable set
//! to bytes that are not UTF-8 is an error too ([`Config::from_env`]).
//!
//! Shared memory is used between two ranks when both have the same host
//! identity and neither set `ZCCL_SHM_DISABLE=1`; everything else uses TCP.

use std::time::Duration;

use zccl_transports::shm::ShmConfig;
use zccl_transports::tcp::TcpConfig;

use crate::envvars::{read_process_env, shown};
use crate::error::{Error, Result};

/// `ZCCL_SPIN_US_PER_MIB`'s default: a waiter spins 250 µs per MiB of its
/// op (64 MiB: 16 ms), where that is longer than `ZCCL_SPIN_US`.
pub const DEFAULT_SPIN_PER_MIB: Duration = Duration::from_micros(250);

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
    /// `ZCCL_MAX_UNEXPECTED_BYTES`: the flow-control window per peer
    /// ([`crate::flow`]).
    pub max_unexpected_bytes: u64,
    /// `ZCCL_SPIN_US`: how long a waiting thread spins (polling the
    /// transports for messages already there) before it sleeps.
    pub spin_wait: Duration,
    /// `ZCCL_SPIN_US_PER_MIB`: how much longer than `spin_wait` a thread
    /// waiting for a large op spins, per MiB of the op.
    pub spin_per_mib: Duration,
    /// `ZCCL_MALLOC_TUNE`: whether the first communicator tunes glibc's
    /// allocator ([`crate::malloc`]).
    pub malloc_tune: bool,
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

/// Longest duration any `ZCCL_*` variable accepts, in seconds (about 31.7
/// years): `Instant::now()` plus this never overflows.
pub const MAX_DURATION_SECS: f64 = 1e9;

/// Largest accepted `ZCCL_MAX_MESSAGE_BYTES` (1 TiB).
const MAX_MESSAGE_LIMIT: u64 = 1 << 40;

/// Shortest duration a `ZCCL_*` seconds variable accepts: 1 ms (the
/// heartbeat's granularity; anything shorter cannot work).
const MIN_DURATION_SECS: f64 = 1e-3;

/// A yes/no variable: `0`/`1` (also `false`/`true`, `no`/`yes`); unset or
/// empty means `default`.
pub(crate) fn flag(name: &str, v: Option<String>, default: bool) -> Result<bool> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(default),
        Some("1" | "true" | "yes") => Ok(true),
        Some("0" | "false" | "no") => Ok(false),
        Some(v) => Err(Error::Config(format!(
            "{name}={}: must be 0 or 1",
            shown(v)
        ))),
    }
}

/// A duration in seconds, in [1 ms, [`MAX_DURATION_SECS`]].
fn secs(name: &str, v: &str) -> Result<Duration> {
    let bad = || {
        Error::Config(format!(
            "{name}={}: must be a number of seconds in [0.001, 1e9]",
            shown(v)
        ))
    };
    let s: f64 = v.trim().parse().map_err(|_| bad())?;
    // NaN is in no range.
    if !(MIN_DURATION_SECS..=MAX_DURATION_SECS).contains(&s) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(s))
}

/// A whole decimal number in `range`.
fn uint(name: &str, v: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64> {
    v.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            Error::Config(format!(
                "{name}={}: must be a whole number in {}..={}",
                shown(v),
                range.start(),
                range.end()
            ))
        })
}

/// [`uint`] for a value held in a `usize`.
fn usize_in(name: &str, v: &str, range: std::ops::RangeInclusive<u64>) -> Result<usize> {
    let n = uint(name, v, range)?;
    usize::try_from(n).map_err(|_| {
        Error::Config(format!(
            "{name}={}: {n} does not fit this machine's usize",
            shown(v)
        ))
    })
}

impl Config {
    /// Reads the process environment. A variable that is set to bytes that
    /// are not UTF-8 is an [`Error::Config`] naming it.
    pub fn from_env() -> Result<Self> {
        match read_process_env(|get| Self::from_lookup(get)) {
            (_, Some(k)) => Err(Error::Config(format!("{k} is not valid UTF-8"))),
            (r, None) => r,
        }
    }

    /// Checks what [`Config::from_lookup`] checks of the durations and the
    /// engine's threads, for a configuration built or changed in code: each
    /// duration is positive and at most [`MAX_DURATION_SECS`], so no
    /// deadline computed from it overflows, and `engine_threads` is in
    /// 1..=64 (`ZCCL_NTHREADS` is clamped to that; 0 made the engine's
    /// runtime panic in `Communicator::init`).
    ///
    /// ```
    /// let mut c = zccl_runtime::Config::default();
    /// assert!(c.validate().is_ok());
    /// c.timeout = std::time::Duration::MAX;
    /// assert!(c.validate().unwrap_err().to_string().contains("timeout"));
    /// let c = zccl_runtime::Config { engine_threads: 0, ..Default::default() };
    /// assert!(c.validate().unwrap_err().to_string().contains("engine_threads (ZCCL_NTHREADS) of 0"));
    /// ```
    pub fn validate(&self) -> Result<()> {
        if !(1..=64).contains(&self.engine_threads) {
            return Err(Error::Config(format!(
                "engine_threads (ZCCL_NTHREADS) of {} must be in 1..=64",
                self.engine_threads
            )));
        }
        let max = Duration::from_secs(MAX_DURATION_SECS as u64);
        for (what, d) in [
            ("timeout (ZCCL_TIMEOUT)", self.timeout),
            ("peer timeout (ZCCL_PEER_TIMEOUT)", self.tcp.peer_timeout),
            (
                "handshake timeout (ZCCL_HANDSHAKE_TIMEOUT)",
                self.tcp.handshake_timeout,
            ),
            (
                "heartbeat interval (ZCCL_HEARTBEAT_MS)",
                self.tcp.heartbeat_interval,
            ),
        ] {
            if d.is_zero() || d > max {
                return Err(Error::Config(format!(
                    "{what} of {d:?} must be in (0, 1e9] seconds"
                )));
            }
        }
        heartbeat_fits(self.tcp.heartbeat_interval, self.tcp.peer_timeout)
    }

    /// Reads variables through `get` (pure; used by tests). Never panics: a
    /// value out of range is an [`Error::Config`] naming the variable and
    /// what it accepts.
    ///
    /// ```
    /// use std::time::Duration;
    /// let c = zccl_runtime::Config::from_lookup(|k| (k == "ZCCL_TIMEOUT").then(|| "4".to_string())).unwrap();
    /// assert_eq!(c.timeout, Duration::from_secs(4));
    /// assert_eq!(c.tcp.peer_timeout, Duration::from_secs(2));
    /// let e = zccl_runtime::Config::from_lookup(|k| (k == "ZCCL_TIMEOUT").then(|| "1e19".to_string()));
    /// assert!(e.unwrap_err().to_string().contains("ZCCL_TIMEOUT=\"1e19\": must be a number of seconds in [0.001, 1e9]"));
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
            Some(v) => Duration::from_millis(
                uint(
                    "ZCCL_HEARTBEAT_MS",
                    &v,
                    0..=(MAX_DURATION_SECS as u64) * 1000,
                )?
                .max(1),
            ),
            None => (peer_timeout / 5)
                .min(Duration::from_secs(1))
                .max(Duration::from_millis(1)),
        };
        heartbeat_fits(heartbeat_interval, peer_timeout)?;
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
            tcp.sockets_per_peer = uint("ZCCL_NSOCKS_PERPEER", &v, 1..=64)? as u16;
        }
        if let Some(v) = get("ZCCL_MAX_FRAME_BYTES") {
            tcp.limits.max_frame =
                uint("ZCCL_MAX_FRAME_BYTES", &v, 1..=u64::from(u32::MAX))? as u32;
        }
        if let Some(v) = get("ZCCL_MAX_MESSAGE_BYTES") {
            tcp.limits.max_message = uint("ZCCL_MAX_MESSAGE_BYTES", &v, 1..=MAX_MESSAGE_LIMIT)?;
        }
        if let Some(v) = get("ZCCL_CHUNK_BYTES") {
            tcp.chunk_bytes =
                usize_in("ZCCL_CHUNK_BYTES", &v, 1..=u64::from(tcp.limits.max_frame))?;
        } else if tcp.chunk_bytes > tcp.limits.max_frame as usize {
            return Err(Error::Config(format!(
                "ZCCL_MAX_FRAME_BYTES={}: smaller than the chunk size {} (set ZCCL_CHUNK_BYTES too)",
                tcp.limits.max_frame, tcp.chunk_bytes
            )));
        }
        if let Some(v) = get("ZCCL_SOCKET_BUFFER_BYTES") {
            // The kernel takes an `int`.
            let b = usize_in("ZCCL_SOCKET_BUFFER_BYTES", &v, 0..=i32::MAX as u64)?;
            tcp.socket_buffer_bytes = (b > 0).then_some(b);
        }
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let engine_threads = match get("ZCCL_NTHREADS") {
            // Clamped, as NCCL clamps NCCL_NTHREADS.
            Some(v) => uint("ZCCL_NTHREADS", &v, 0..=u64::MAX)?.clamp(1, 64) as usize,
            // With 2 CPUs or fewer, a second worker per rank only adds
            // context switches (measured with the p2p benchmark).
            None if cpus <= 2 => 1,
            None => 2,
        };
        let socket_ifname = get("ZCCL_SOCKET_IFNAME").filter(|s| !s.trim().is_empty());
        let shm_enabled = !flag("ZCCL_SHM_DISABLE", get("ZCCL_SHM_DISABLE"), false)?;
        let mut shm = ShmConfig {
            max_message: tcp.limits.max_message,
            ..ShmConfig::default()
        };
        if let Some(v) = get("ZCCL_SHM_RING_BYTES") {
            shm.ring_bytes = usize_in("ZCCL_SHM_RING_BYTES", &v, 4096..=1 << 30)?;
        }
        if let Some(v) = get("ZCCL_SHM_SPIN") {
            shm.spin_iterations = uint("ZCCL_SHM_SPIN", &v, 0..=u64::from(u32::MAX))? as u32;
        }
        if let Some(v) = get("ZCCL_SHM_CMA_MIN_BYTES") {
            // An explicit threshold holds on any host, crowded or not.
            shm.cma_min_bytes = usize_in("ZCCL_SHM_CMA_MIN_BYTES", &v, 0..=u64::MAX)?;
            shm.crowded_cma_min_bytes = shm.cma_min_bytes;
        }
        if let Some(v) = get("ZCCL_SHM_POLL_LEASE_US") {
            // An explicit lease holds on any host, full or not.
            let us = uint("ZCCL_SHM_POLL_LEASE_US", &v, 0..=1_000_000)?;
            shm.poll_lease = Duration::from_micros(us);
            shm.full_poll_lease = shm.poll_lease;
        }
        match get("ZCCL_SHM_CMA_DISABLE").as_deref().map(str::trim) {
            None | Some("" | "0") => {}
            Some("1") => {
                shm.cma_min_bytes = 0;
                shm.crowded_cma_min_bytes = 0;
            }
            Some(v) => {
                return Err(Error::Config(format!(
                    "ZCCL_SHM_CMA_DISABLE={}: must be 0 or 1",
                    shown(v)
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
        let max_unexpected_bytes = match get("ZCCL_MAX_UNEXPECTED_BYTES") {
            Some(v) => uint("ZCCL_MAX_UNEXPECTED_BYTES", &v, 1..=1 << 63)?,
            None => crate::flow::DEFAULT_WINDOW,
        };
        let spin_wait = match get("ZCCL_SPIN_US") {
            // Clamped to one second.
            Some(v) => {
                Duration::from_micros(uint("ZCCL_SPIN_US", &v, 0..=u64::MAX)?.min(1_000_000))
            }
            // Long enough for a 1 MiB step's copy and reduction (a wait
            // that sleeps costs a chain of wake-ups; see docs/performance.md).
            None => Duration::from_micros(300),
        };
        let spin_per_mib = match get("ZCCL_SPIN_US_PER_MIB") {
            Some(v) => Duration::from_micros(uint("ZCCL_SPIN_US_PER_MIB", &v, 0..=1_000_000)?),
            // About the time a MiB takes to copy here (64 MiB: 11 ms), with
            // room for a peer a little late.
            None => DEFAULT_SPIN_PER_MIB,
        };
        let malloc_tune = flag("ZCCL_MALLOC_TUNE", get("ZCCL_MALLOC_TUNE"), true)?;
        Ok(Self {
            malloc_tune,
            timeout,
            socket_ifname,
            tcp,
            engine_threads,
            shm_enabled,
            shm,
            metrics_addr,
            spin_wait,
            spin_per_mib,
            max_unexpected_bytes,
            router,
            route_policy,
        })
    }
}

/// A heartbeat must come well within the peer timeout: an idle, healthy
/// peer is silent for a heartbeat period between frames, and one silent for
/// the peer timeout is declared stuck (`ZCCL_HEARTBEAT_MS=120000` with the
/// default 60 s would fail every idle job; a huge period would switch the
/// detection of dead peers off). At most half of it, as the default's fifth.
fn heartbeat_fits(heartbeat: Duration, peer_timeout: Duration) -> Result<()> {
    // (1 ms, the floor, is allowed whatever the timeout: the default for
    // peer timeouts under 2 ms, which only tests forcing stalls use.)
    if heartbeat > Duration::from_millis(1) && heartbeat.saturating_mul(2) > peer_timeout {
        return Err(Error::Config(format!(
            "ZCCL_HEARTBEAT_MS: a heartbeat every {heartbeat:?} does not fit the peer timeout \
             (ZCCL_PEER_TIMEOUT) of {peer_timeout:?}: idle healthy peers would be declared \
             stuck; it must be at most half of it"
        )));
    }
    Ok(())
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

    /// Asserts that each of `values` for `var` is an error naming `var`.
    fn refused(var: &str, values: &[&str]) {
        for v in values {
            let e = cfg(&[(var, v)]).unwrap_err().to_string();
            assert!(e.contains(var), "{var}={v:?}: {e}");
        }
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
        // Two CMA thresholds, picked by the transport per host (more
        // ranks than CPUs or not).
        assert_eq!(c.shm.cma_min_bytes, zccl_transports::shm::CMA_MIN_BYTES);
        assert_eq!(
            c.shm.crowded_cma_min_bytes,
            zccl_transports::shm::CROWDED_CMA_MIN_BYTES
        );
    }

    #[test]
    fn the_poll_lease_is_longer_on_a_full_host_unless_set() {
        use zccl_transports::shm::{FULL_HOST_POLL_LEASE, POLL_LEASE};
        let c = cfg(&[]).unwrap();
        assert_eq!(c.shm.poll_lease_for(2, 8), POLL_LEASE);
        assert_eq!(c.shm.poll_lease_for(2, 2), FULL_HOST_POLL_LEASE);
        let c = cfg(&[("ZCCL_SHM_POLL_LEASE_US", "250")]).unwrap();
        let set = Duration::from_micros(250);
        assert_eq!(
            (c.shm.poll_lease_for(2, 8), c.shm.poll_lease_for(8, 2)),
            (set, set)
        );
        let c = cfg(&[("ZCCL_SHM_POLL_LEASE_US", "0")]).unwrap();
        assert_eq!(c.shm.poll_lease_for(8, 2), Duration::ZERO);
        refused("ZCCL_SHM_POLL_LEASE_US", &["1000001", "-1", "1ms", "0x10"]);
    }

    #[test]
    fn a_waiter_spins_per_mib_of_its_op_unless_set_otherwise() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.spin_per_mib, DEFAULT_SPIN_PER_MIB);
        let c = cfg(&[("ZCCL_SPIN_US_PER_MIB", "0")]).unwrap();
        assert_eq!(c.spin_per_mib, Duration::ZERO);
        let c = cfg(&[("ZCCL_SPIN_US_PER_MIB", " 1000000 ")]).unwrap();
        assert_eq!(c.spin_per_mib, Duration::from_secs(1));
        refused(
            "ZCCL_SPIN_US_PER_MIB",
            &["1000001", "-1", "250us", "", "0x10"],
        );
    }

    #[test]
    fn an_explicit_cma_threshold_holds_on_every_host() {
        let c = cfg(&[("ZCCL_SHM_CMA_MIN_BYTES", "1000000")]).unwrap();
        assert_eq!(c.shm.cma_min_for(2, 8), 1_000_000);
        assert_eq!(c.shm.cma_min_for(8, 2), 1_000_000);
        for off in [
            ("ZCCL_SHM_CMA_MIN_BYTES", "0"),
            ("ZCCL_SHM_CMA_DISABLE", "1"),
        ] {
            let c = cfg(&[off]).unwrap();
            assert_eq!(
                (c.shm.cma_min_for(2, 8), c.shm.cma_min_for(8, 2)),
                (0, 0),
                "{off:?}"
            );
        }
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

    #[test]
    fn a_heartbeat_must_fit_twice_in_the_peer_timeout() {
        // The default peer timeout is 60 s.
        let e = cfg(&[("ZCCL_HEARTBEAT_MS", "120000")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ZCCL_HEARTBEAT_MS") && e.contains("ZCCL_PEER_TIMEOUT"),
            "{e}"
        );
        assert!(cfg(&[("ZCCL_HEARTBEAT_MS", "1000000000000")]).is_err());
        assert!(cfg(&[("ZCCL_HEARTBEAT_MS", "30000")]).is_ok());
        let c = cfg(&[("ZCCL_PEER_TIMEOUT", "2"), ("ZCCL_HEARTBEAT_MS", "1000")]).unwrap();
        assert_eq!(c.tcp.heartbeat_interval, Duration::from_secs(1));
        assert!(cfg(&[("ZCCL_PEER_TIMEOUT", "1.5"), ("ZCCL_HEARTBEAT_MS", "1000")]).is_err());
        // Defaults always fit, down to the smallest peer timeout.
        assert!(cfg(&[("ZCCL_PEER_TIMEOUT", "0.001")]).is_ok());
        // A Config built in code is checked the same way.
        let mut c = Config::default();
        c.tcp.heartbeat_interval = Duration::from_secs(31);
        assert!(c.validate().is_err());
        c.tcp.heartbeat_interval = Duration::from_secs(30);
        c.validate().unwrap();
    }

    #[test]
    fn out_of_range_values_are_errors_naming_the_range() {
        for v in [
            "1e19", "1e20", "1e300", "inf", "nan", "0", "-0", "1e-4", "1e9x",
        ] {
            for k in [
                "ZCCL_TIMEOUT",
                "ZCCL_PEER_TIMEOUT",
                "ZCCL_HANDSHAKE_TIMEOUT",
            ] {
                let e = cfg(&[(k, v)]).unwrap_err().to_string();
                assert!(
                    e.contains(&format!(
                        "{k}={v:?}: must be a number of seconds in [0.001, 1e9]"
                    )),
                    "{e}"
                );
            }
        }
        let c = cfg(&[("ZCCL_TIMEOUT", "1e9"), ("ZCCL_PEER_TIMEOUT", "1e9")]).unwrap();
        assert_eq!(c.timeout, Duration::from_secs(1_000_000_000));
        assert!(std::time::Instant::now().checked_add(c.timeout).is_some());
        let e = cfg(&[("ZCCL_SOCKET_BUFFER_BYTES", "4294967296")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("must be a whole number in 0..=2147483647"),
            "{e}"
        );
        let e = cfg(&[("ZCCL_MAX_FRAME_BYTES", "1000")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ZCCL_MAX_FRAME_BYTES=1000"), "{e}");
        assert_eq!(
            cfg(&[("ZCCL_NTHREADS", "1000")]).unwrap().engine_threads,
            64
        );
        assert_eq!(
            cfg(&[("ZCCL_HEARTBEAT_MS", "0")])
                .unwrap()
                .tcp
                .heartbeat_interval,
            Duration::from_millis(1)
        );
        let long = "9".repeat(100_000);
        let e = cfg(&[("ZCCL_SHM_SPIN", &long)]).unwrap_err().to_string();
        assert!(e.len() < 300 && e.contains("(100000 bytes)"), "{e}");
        assert_eq!(shown("１２"), "\"１２\"");
        assert!(shown(&"é".repeat(100)).ends_with("... (200 bytes)"));
    }
}

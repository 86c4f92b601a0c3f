//! Tuning of the shared-memory transport, and what a rank brings to its
//! setup.

use std::time::Duration;

/// Tuning of the shared-memory transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmConfig {
    /// Bytes of each ring (one per direction); rounded up to a multiple of
    /// 4096, at least 4096. Only the creating (lower) rank's value matters.
    pub ring_bytes: usize,
    /// Rounds of `spin_loop()` before a futex wait.
    pub spin_iterations: u32,
    /// Longest single futex wait (how fast a blocked thread notices a close).
    pub wait_slice: Duration,
    /// Largest message accepted from a peer.
    pub max_message: u64,
    /// Data messages of at least this many bytes are copied once, straight
    /// from the sender's memory with cross-memory attach, instead of twice
    /// through the ring (see the module docs); `0` turns CMA off for this
    /// rank, in both directions. The runtime sets it from
    /// `ZCCL_SHM_CMA_MIN_BYTES` (and `0` from `ZCCL_SHM_CMA_DISABLE=1`).
    /// Default: [`CMA_MIN_BYTES`]. Applies where this host's ranks have a
    /// CPU each; see [`ShmConfig::crowded_cma_min_bytes`] and
    /// [`ShmConfig::cma_min_for`].
    pub cma_min_bytes: usize,
    /// [`ShmConfig::cma_min_bytes`] for a host with more ranks than CPUs
    /// (oversubscribed): there the ranks' copies share the CPUs, so the
    /// total copying decides and one copy beats two from smaller messages.
    /// The runtime sets it, like `cma_min_bytes`, from
    /// `ZCCL_SHM_CMA_MIN_BYTES` when that is set (an explicit threshold
    /// holds on any host). `0` here alone: this rank sends nothing by CMA
    /// on a crowded host, but still reads the CMA records of a peer that
    /// counted the host otherwise (whether the host is crowded is known
    /// only once the segments are up, after CMA was agreed). Default:
    /// [`CROWDED_CMA_MIN_BYTES`].
    pub crowded_cma_min_bytes: usize,
    /// How long a thread that stops polling because its op completed
    /// ([`Transport::pause_polling`](crate::Transport::pause_polling))
    /// keeps producers from waking this rank's reader threads for small
    /// messages: the next op's poll takes them with no system call on
    /// either side. Also about the longest a small message can wait when
    /// this rank does not poll again (its lease watcher thread looks when
    /// the lease runs out, which is why it is short, and wakes the reader
    /// threads that have something left). A thread that sleeps until its op
    /// completes ends the lease.
    /// `Duration::ZERO`: no lease. The runtime sets it from
    /// `ZCCL_SHM_POLL_LEASE_US`. Default: [`POLL_LEASE`]. Applies where
    /// each of this host's ranks has a spare CPU; see
    /// [`ShmConfig::full_poll_lease`] and [`ShmConfig::poll_lease_for`].
    pub poll_lease: Duration,
    /// [`ShmConfig::poll_lease`] for a host whose ranks have no spare CPU
    /// each ([`full`](super::full)): there each wake-up of the lease
    /// watcher preempts a rank, and the rank that waits for it waits that
    /// long too, so a longer lease (fewer wake-ups) is the better trade.
    /// The runtime sets it, like `poll_lease`, from
    /// `ZCCL_SHM_POLL_LEASE_US` (an explicit lease holds on any host).
    /// Default: [`FULL_HOST_POLL_LEASE`].
    pub full_poll_lease: Duration,
    /// How long a CMA record whose receive is not posted yet (no landing
    /// zone, no [mark](crate::landing::Landing::mark)) waits for it, in all:
    /// left in the ring while polls may take it, and, one of more than
    /// [`POLL_MAX_CMA_BYTES`], waited for by the reader thread that takes
    /// it (its bytes then go straight into the receive's buffer, one copy
    /// instead of two), before it is copied into a buffer of its own:
    /// `None` (the default) scales with its length (the payload at
    /// 0.5 GB/s: 2 ms for 1 MiB, at most 50 ms; see `land_wait` in
    /// `shm/recv.rs`); tests set it.
    pub unposted_wait: Option<Duration>,
}

/// Default of [`ShmConfig::poll_lease`]: the lease watcher wakes when a
/// lease runs out, so a rank that keeps issuing ops wakes it (one thread,
/// whatever the number of peers) about once per lease.
///
/// ```
/// use zccl_transports::shm::{POLL_LEASE, ShmConfig};
/// assert_eq!(ShmConfig::default().poll_lease, POLL_LEASE);
/// assert_eq!(POLL_LEASE.as_micros(), 1000);
/// ```
pub const POLL_LEASE: Duration = Duration::from_millis(1);

/// Default of [`ShmConfig::full_poll_lease`]: the lease on a host whose
/// ranks have no spare CPU each. A rank that keeps issuing ops renews its
/// lease when less than half of it is left, and its lease watcher wakes at
/// each lease's end, about every 0.75 lease: 1,300 wake-ups a second per
/// rank with a 1 ms lease. On 2 vCPUs each one preempted a rank (the peer
/// waiting for that rank polled, then yielded, for 20-30 us); medians of 5
/// interleaved rounds, 1 ms / 4 ms / 10 ms lease: all_reduce 2 ranks 8 B
/// 1.238 / 1.173 / 1.167 us (the 4 and 10 ms builds renewing at 7/8),
/// 256 KiB 49.3 / 42.8 / 40.5 us; 4 ranks
/// 256 KiB 171 / 152 / 130 us, 1 MiB 705 / 517 / 460 us (see
/// docs/performance.md). 4 ms keeps most of the gain and bounds the wait
/// of a message nobody polls for at 4 ms, not 10.
///
/// ```
/// use zccl_transports::shm::{FULL_HOST_POLL_LEASE, ShmConfig};
/// assert_eq!(ShmConfig::default().full_poll_lease, FULL_HOST_POLL_LEASE);
/// assert_eq!(FULL_HOST_POLL_LEASE.as_micros(), 4000);
/// ```
pub const FULL_HOST_POLL_LEASE: Duration = Duration::from_millis(4);

/// Default of [`ShmConfig::cma_min_bytes`]: messages larger than
/// [`POLL_MAX_PAYLOAD`] (1 MiB) go by CMA; up to it, two copies through
/// the ring, the first with streaming stores and the second by the
/// waiting thread's poll, beat the system call (whose pinning of the
/// sender's pages costs more than its copy, and which this VM's kernel
/// copies with `rep movsq`). Measured on 2 vCPUs, 2 ranks, medians of 5
/// interleaved rounds, CMA from 256 KiB against from 1 MiB: sendrecv
/// 512 KiB 82.4 against 60.8 µs, 1 MiB 154.2 against 117.5 (Open MPI 155.3);
/// all-reduce 1 MiB 236.6 against 145.0 (274.2), 2 MiB 440.9 against
/// 292.9; all-to-all 1 MiB 102.7 against 74.5 (98.6), 2 MiB 206.1 against
/// 158.5; all-gather 2 MiB 190.6 against 148.0; reduce-scatter 2 MiB
/// 218.7 against 172.8; broadcast 1 MiB, all-reduce 4 MiB and sendrecv
/// 2 MiB alike. From 2 MiB instead (a 2 MiB poll bound) two 2 MiB records
/// no longer fit the 4 MiB ring whole: all-to-all 4 MiB 389 against
/// 684 µs, all-gather 4 MiB 343 against 537 (docs/performance.md). Before
/// the ring's payloads were streamed the bound was 256 KiB (ping-pong at
/// 256 KiB 23 µs by CMA against 15.5 µs through the ring; at 512 KiB CMA
/// won then).
///
/// ```
/// use zccl_transports::shm::{CMA_MIN_BYTES, POLL_MAX_PAYLOAD, ShmConfig};
/// assert_eq!(ShmConfig::default().cma_min_bytes, CMA_MIN_BYTES);
/// assert_eq!(CMA_MIN_BYTES, POLL_MAX_PAYLOAD + 1);
/// // What `ZCCL_SHM_CMA_DISABLE=1` (or `ZCCL_SHM_CMA_MIN_BYTES=0`) means:
/// let off = ShmConfig { cma_min_bytes: 0, ..ShmConfig::default() };
/// # let _ = off;
/// ```
pub const CMA_MIN_BYTES: usize = POLL_MAX_PAYLOAD + 1;

/// Default of [`ShmConfig::crowded_cma_min_bytes`]: on a host with more
/// ranks than CPUs, messages larger than 256 KiB go by CMA. It was more
/// than 64 KiB while the ring's payloads went in with plain stores (the
/// reader then pulled each line out of the writer core's cache; 4 ranks
/// on 2 vCPUs, medians of 9 interleaved runs then, 256 KiB against 64 KiB:
/// all-to-all 512 KiB 266 against 209 µs, sendrecv 128 KiB 94 against
/// 72 µs). With streaming stores into the ring
/// ([`crate::copy::copy_raw_shared`]) the ring is ahead up to 256 KiB
/// there (medians of 5 interleaved rounds, 64 KiB against 256 KiB:
/// sendrecv 128 KiB 76.7 against 68.3 µs, 256 KiB 94.3 against 85.6;
/// all-gather 512 KiB 234 against 191; reduce-scatter 1 MiB 453 against
/// 355; all-reduce 512 KiB 385 against 316; broadcast 256 KiB 170 against
/// 131; all-to-all 1 MiB 412 against 292 in 7 rounds; docs/performance.md).
/// Not up to 1 MiB as with a CPU per rank: the waiter that polls a ring
/// record there shares a CPU with the peer that writes the next one
/// (256 KiB against 1 MiB: sendrecv 1 MiB 360 against 437 µs, all-reduce
/// 1 MiB 568 against 580; all-gather 2 MiB 749 against 554).
///
/// ```
/// use zccl_transports::shm::{CMA_MIN_BYTES, CROWDED_CMA_MIN_BYTES, ShmConfig};
/// assert_eq!(ShmConfig::default().crowded_cma_min_bytes, CROWDED_CMA_MIN_BYTES);
/// assert_eq!(CROWDED_CMA_MIN_BYTES, (256 << 10) + 1);
/// assert!(CROWDED_CMA_MIN_BYTES < CMA_MIN_BYTES);
/// ```
pub const CROWDED_CMA_MIN_BYTES: usize = (256 << 10) + 1;

/// The smallest ring payload whose stores may bypass the caches below
/// [`STREAM_SHARED_MIN`](crate::copy::STREAM_SHARED_MIN): from here up to
/// it, the consumer of each ring chooses from the times its copies take
/// (`stream_choice.rs`). 16 KiB: below it records share the ring's first
/// pages, warm in both caches (up to 8 KiB, `REWIND_MAX_RECORD` in
/// `ring.rs`), and a copy is too short to time well.
///
/// ```
/// assert_eq!(zccl_transports::shm::STREAM_ADAPT_MIN, 16 << 10);
/// assert!(zccl_transports::shm::STREAM_ADAPT_MIN < zccl_transports::copy::STREAM_SHARED_MIN);
/// ```
pub const STREAM_ADAPT_MIN: usize = 16 << 10;

/// Largest payload [`Transport::poll`](crate::Transport::poll) delivers;
/// larger messages are left to the reader thread. The largest message
/// that goes through the ring by default where ranks have a CPU each
/// ([`CMA_MIN_BYTES`] is one more): a waiting thread copies a message or a
/// collective's piece out itself rather than waking the reader thread for
/// it (measured on 2 vCPUs: a 256 KiB all-reduce of 2 ranks, whose ring
/// steps move 128 KiB, took 180–200 µs with a 64 KiB bound; 1 MiB rather
/// than 256 KiB: see [`CMA_MIN_BYTES`]).
pub const POLL_MAX_PAYLOAD: usize = 1 << 20;

/// The largest CMA record a [`Transport::poll`](crate::Transport::poll)
/// always copies itself (on the waiting thread, no thread wake-up); larger
/// ones are left to the reader thread, which copies the next piece of a
/// pipeline while the waiting thread works on the last (measured on
/// 2 vCPUs: polls copying 2 MiB pieces lost 10–20 % at 64 MiB, copying
/// 512 KiB ones gained at 1 MiB). The exception, where the host has a CPU
/// per rank: one written when the peer had copied every earlier one is no
/// pipeline's piece but a message a thread waits for, and polls take it
/// (2 ranks, sendrecv 2-4 MiB in about 0.6x the time; see the
/// shared-memory module's Polling notes).
pub const POLL_MAX_CMA_BYTES: usize = 1 << 20;

/// Where ranks outnumber CPUs (crowded), the sizes of the CMA records past
/// [`POLL_MAX_CMA_BYTES`] a poll takes when they are no pipeline's piece
/// (written when the peer had copied every earlier one): more than 2 MiB
/// (zccl's ring pipelines send pieces of 2 MiB at most,
/// `zccl_primitives::collectives::RING_PIECE_BYTES`, which a reader thread
/// copies while the waiter combines the last) up to 16 MiB. The thread
/// that waits for such a message copies it, as an Open MPI rank does,
/// instead of sleeping while a reader thread is woken to copy it and then
/// wakes it; up to 8 MiB it also spins through the op to be there when the
/// record comes (the runtime's `ZCCL_SPIN_US_PER_MIB`): 4 ranks on 2 vCPUs,
/// medians of 6 interleaved rounds (each build first in turn), sendrecv
/// 4 MiB 1238 -> 827 us, 8 MiB 2529 -> 2050 us, all-to-all 16 MiB (4 MiB
/// blocks) 5.40 -> 5.16 ms (see docs/performance.md). Records of 8-16 MiB
/// are polled when a poll finds them (a waiter that spun through those
/// took CPU from the other ranks' copies: all-to-all 64 MiB 17.4 against
/// 16.5 ms): an all-to-all's blocks are then copied one after the other by
/// the waiting thread, as it waits for each, rather than by a reader
/// thread per peer at once (4 ranks, all-to-all 64 MiB, 16 MiB blocks,
/// medians of 9 interleaved rounds: 17.88 -> 17.11 ms, Open MPI 17.89;
/// 48 MiB 12.80 -> 12.42 ms; sendrecv 12 MiB 4.46 -> 4.22 ms, 16 MiB and
/// ping-pong 16 MiB even). Larger messages stay with the reader thread and
/// a sleeping waiter: polled, a sendrecv of 32-128 MiB took 2-3 % longer
/// (7 % when spun through too); so did pipelines' pieces (reduce-scatter
/// 16 MiB 8 % longer with its 2 MiB pieces polled).
///
/// ```
/// use zccl_transports::shm::{CROWDED_POLL_CMA, POLL_MAX_CMA_BYTES};
/// assert!(!CROWDED_POLL_CMA.contains(&(2 << 20)));
/// assert!(CROWDED_POLL_CMA.contains(&(4 << 20)));
/// assert!(CROWDED_POLL_CMA.contains(&(16 << 20)));
/// assert!(!CROWDED_POLL_CMA.contains(&((16 << 20) + 1)));
/// assert!(*CROWDED_POLL_CMA.start() > POLL_MAX_CMA_BYTES as u64);
/// ```
pub const CROWDED_POLL_CMA: std::ops::RangeInclusive<u64> = (2 << 20) + 1..=16 << 20;

/// How long a clean close waits for the peer to finish copying the payloads
/// of this rank's CMA records before the links close regardless.
pub const CMA_CLOSE_WAIT: Duration = Duration::from_secs(1);

impl Default for ShmConfig {
    fn default() -> Self {
        Self {
            ring_bytes: 4 << 20,
            spin_iterations: 200,
            wait_slice: Duration::from_millis(20),
            max_message: 16 << 30,
            cma_min_bytes: CMA_MIN_BYTES,
            crowded_cma_min_bytes: CROWDED_CMA_MIN_BYTES,
            poll_lease: POLL_LEASE,
            full_poll_lease: FULL_HOST_POLL_LEASE,
            unposted_wait: None,
        }
    }
}

impl ShmConfig {
    /// The CMA threshold a rank uses where `local_ranks` ranks of the job
    /// share a host of `cpus` CPUs: [`ShmConfig::crowded_cma_min_bytes`]
    /// when they outnumber the CPUs, else [`ShmConfig::cma_min_bytes`].
    /// `cma_min_bytes == 0` turns CMA off on any host; `0` as the crowded
    /// threshold stops this rank sending by CMA on crowded hosts only.
    ///
    /// ```
    /// use zccl_transports::shm::{CMA_MIN_BYTES, CROWDED_CMA_MIN_BYTES, ShmConfig};
    /// let c = ShmConfig::default();
    /// assert_eq!(c.cma_min_for(2, 2), CMA_MIN_BYTES);
    /// assert_eq!(c.cma_min_for(4, 2), CROWDED_CMA_MIN_BYTES);
    /// let off = ShmConfig { cma_min_bytes: 0, crowded_cma_min_bytes: 0, ..c };
    /// assert_eq!(off.cma_min_for(4, 2), 0);
    /// ```
    pub fn cma_min_for(&self, local_ranks: usize, cpus: usize) -> usize {
        if self.cma_min_bytes == 0 {
            0
        } else if super::cpus::crowded(local_ranks, cpus) {
            self.crowded_cma_min_bytes
        } else {
            self.cma_min_bytes
        }
    }

    /// The poll lease a rank holds where `local_ranks` ranks of the job
    /// share a host of `cpus` CPUs: [`ShmConfig::full_poll_lease`] when
    /// they leave no spare CPU each ([`full`](super::full)), else
    /// [`ShmConfig::poll_lease`].
    ///
    /// ```
    /// use zccl_transports::shm::{FULL_HOST_POLL_LEASE, POLL_LEASE, ShmConfig};
    /// let c = ShmConfig::default();
    /// assert_eq!(c.poll_lease_for(2, 8), POLL_LEASE);
    /// assert_eq!(c.poll_lease_for(2, 2), FULL_HOST_POLL_LEASE);
    /// assert_eq!(c.poll_lease_for(4, 2), FULL_HOST_POLL_LEASE);
    /// ```
    pub fn poll_lease_for(&self, local_ranks: usize, cpus: usize) -> Duration {
        if super::cpus::full(local_ranks, cpus) {
            self.full_poll_lease
        } else {
            self.poll_lease
        }
    }
}

/// Who this rank is and which peers it reaches over shared memory.
#[derive(Debug, Clone)]
pub struct ShmSetup {
    /// This rank.
    pub rank: u32,
    /// World size.
    pub world_size: u32,
    /// [`job_tag`](super::job_tag) of the job secret.
    pub job: u64,
    /// Every rank's published segment tag (see
    /// [`valid_tag`](super::valid_tag)), indexed by rank; `None` where the
    /// rank does not use shared memory.
    pub tags: Vec<Option<String>>,
    /// The peers to connect over shared memory (each must have a tag, as must this rank).
    pub peers: Vec<u32>,
    /// Transport configuration.
    pub config: ShmConfig,
    /// Deadline for the whole setup.
    pub setup_timeout: Duration,
}

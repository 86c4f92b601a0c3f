//! The shared-memory transport between ranks of one host and one network
//! namespace.
//!
//! * **Who is local.** [`host_identity`] is `/proc/sys/kernel/random/boot_id`
//!   plus the inode of `/proc/self/ns/net` (or `ZCCL_HOST_ID`); the runtime
//!   publishes it in the address book, and two ranks use shared memory when
//!   their identities are equal and both published a segment tag (a rank with
//!   `ZCCL_SHM_DISABLE=1` publishes none, so the pair falls back to TCP on both
//!   sides).
//! * **Segments.** One POSIX shared-memory segment per pair of ranks `a < b`,
//!   created by `a` with `shm_open(O_CREAT | O_EXCL, 0600)` + `ftruncate`,
//!   mapped with `memmap2`, named [`segment_name`]:
//!   `/zccl-<job>-<tag of a>-<a>-<b>` where `<job>` is [`job_tag`] (a 64-bit
//!   hash of the job secret, so the secret itself never appears in
//!   `/dev/shm`) and the tag is a random value rank `a` published, so
//!   concurrent jobs, and reruns with the same secret, never collide.
//! * **Cleanup.** Rank `b` unlinks the name as soon as it has mapped the
//!   segment, then sets the `attached` flag; rank `a` waits for that flag
//!   during setup (and unlinks the name itself if `b` never attaches). From
//!   then on the segment has no name: the kernel frees it when the last of the
//!   two processes unmaps it or exits, so neither a clean close, an abort, a
//!   panic nor `kill -9` leaves anything in `/dev/shm`. (Only a rank killed in
//!   the few milliseconds between creating a segment and its peer opening it
//!   can leave one behind.)
//! * **Rings.** The segment holds two single-producer/single-consumer byte
//!   rings (`a → b` and `b → a`), each of [`ShmConfig::ring_bytes`]
//!   (`ZCCL_SHM_RING_BYTES`, 4 MiB by default). Positions are monotonic `u64`
//!   counters (`head` written only by the producer, `tail` only by the
//!   consumer, on separate cache lines). A message is a 32-byte record header
//!   followed by its payload, streamed through the ring in pieces, so messages
//!   of any size pass through a small ring.
//! * **CMA (single copy).** A data message of at least
//!   [`ShmConfig::cma_min_bytes`] (256 KiB by default; 0 turns CMA off) does
//!   not go through the ring: the sender writes a 64-byte record carrying its
//!   pid, the address and length of the payload and a sequence number, and
//!   keeps the payload (`Bytes`) alive; the receiver's reader thread copies
//!   the payload straight from the sender's memory into the receive buffer
//!   with `process_vm_readv` (cross-memory attach, as Open MPI's `vader`
//!   does), then publishes how many such records it has copied in a counter
//!   of the ring's consumer line and wakes the sender's reader thread, which
//!   drops the kept payloads. A counter rather than a release record on the
//!   reverse ring: it needs no ring space, so a reader never waits for the
//!   peer while it holds a message (no deadlock), and a clean close can wait
//!   for the exact count. Whether one rank may read the other (ptrace
//!   rights: Yama, containers, PID namespaces) is probed once per direction
//!   at setup by reading a known word of the peer; where that fails, the
//!   pair keeps the ring copy, and the reason is logged once at INFO. Kept
//!   payloads are dropped when the receiver has copied them, or with the
//!   link (a dead peer); a clean close waits (up to [`CMA_CLOSE_WAIT`]) until
//!   the peer has copied them all. A payload may also be **lent** memory
//!   ([`Transport::send_lent`]: a slice of the user's buffer, read by the
//!   peer only). When the sender gives up on such a send (a timeout,
//!   [`Transport::withdraw`]) or aborts, it may reuse the memory at once, so
//!   it first marks the ring withdrawn (a word of the producer line, then a
//!   full fence); the reader checks the mark after every CMA copy (after a
//!   fence) and rejects a copy made after it, closing the link as lost, so
//!   bytes the owner changed are never delivered as data. An abort
//!   withdraws and then drops the kept payloads. A record with an impossible length,
//!   address, pid or sequence number, and a failed copy (`EFAULT`: the
//!   buffer is gone; `ESRCH`: the process is gone), close the link as
//!   [`CloseReason::Lost`]. Records stay in ring order, whatever their kind.
//! * **Waiting.** A thread that finds the ring empty (reader) or full
//!   (writer) spins for [`ShmConfig::spin_iterations`] rounds of
//!   `spin_loop()` (microseconds: on a 2-core machine a spinning rank would
//!   starve its peer), then sleeps with `FUTEX_WAIT` on a sequence word in the
//!   shared segment, with a timeout of [`ShmConfig::wait_slice`] so that
//!   closing is noticed. The other side bumps the word and calls `FUTEX_WAKE`
//!   only when the waiter announced itself. The reader thread waits for data
//!   *without* holding the ring's consumer lock, then takes the lock and
//!   reads one whole record (it keeps the lock while a large message streams
//!   in); when it finds the ring empty under the lock (a [`Transport::poll`]
//!   took the message meanwhile) it simply waits again, on a fresh sequence
//!   value, so no wake-up is lost.
//! * **Threads.** Per peer, one writer thread (fed by an unbounded queue, so
//!   [`Transport::send`] never blocks) and one reader thread that delivers
//!   whole messages as [`TransportEvent::Message`]. A sender writes a message
//!   into the ring itself, without waking the writer thread, when nothing is
//!   queued before it and the ring has room for its record (small messages,
//!   and CMA records of any size). The rings are always drained by the reader
//!   thread, whatever the application does.
//! * **Polling.** [`Transport::poll`] lets a user thread that waits on a
//!   handle take small messages (payload at most [`POLL_MAX_PAYLOAD`]) that
//!   are already complete in a ring, without waking the reader thread:
//!   per link (round robin), it `try_lock`s the consumer lock and reads the
//!   record at the tail if it is a whole data or control record, or a CMA
//!   record of at most [`POLL_MAX_CMA_BYTES`] (it makes the copy itself: a
//!   copy never waits for the peer). Goodbyes, larger CMA records, large
//!   and partly written messages are left to the reader thread, so a poll
//!   never waits. A poll also drops the kept CMA payloads the peers have
//!   copied: a receiver that finishes a copy wakes the sender's reader
//!   thread for that only when no thread of the sender polls (the last
//!   poller to stop wakes it if a release is left). Both paths read records in ring order
//!   under the lock, and the callback runs under it; but a message that the
//!   reader thread already sent as an event may still sit in the event
//!   channel when a later message is delivered by a poll, so the layer above
//!   must match messages by their keys (`comm`, `channel`, `seq`), not by
//!   arrival order across the two paths. While a thread polls
//!   ([`Transport::set_polling`], a counter in the ring's consumer line), a
//!   producer that writes a small record does not wake the reader thread for
//!   it (that wake-up, on a 2-core machine, preempts the very thread that
//!   polls); the last poller to stop wakes the reader thread if anything is
//!   left, so either it sees the record or the producer sees no poller.
//! * **Dead peers.** This transport only reports what it sees in the ring: a
//!   clean goodbye record ([`CloseReason::Clean`], after every message sent
//!   before it) and corrupt ring state ([`CloseReason::Lost`]). A peer that is
//!   killed or stopped is detected by the TCP connection that
//!   [`crate::hybrid::HybridTransport`] keeps to every peer (EOF, heartbeats),
//!   which names the segment in its report.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::frame::GoodbyeReason;
use crate::handshake::JobSecret;
use crate::recvbuf::RecvBuf;
use crate::{
    BoxFuture, CloseReason, Message, MessageKind, PeerPath, Transport, TransportError,
    TransportEvent,
};

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
    /// Default: [`CMA_MIN_BYTES`].
    pub cma_min_bytes: usize,
}

/// Default of [`ShmConfig::cma_min_bytes`]: below this size, copying through
/// the ring (which stays in the caches) is as fast as the system call.
///
/// ```
/// use zccl_transports::shm::{CMA_MIN_BYTES, ShmConfig};
/// assert_eq!(ShmConfig::default().cma_min_bytes, CMA_MIN_BYTES);
/// // What `ZCCL_SHM_CMA_DISABLE=1` (or `ZCCL_SHM_CMA_MIN_BYTES=0`) means:
/// let off = ShmConfig { cma_min_bytes: 0, ..ShmConfig::default() };
/// # let _ = off;
/// ```
pub const CMA_MIN_BYTES: usize = 256 << 10;

/// Largest payload [`Transport::poll`] delivers; larger messages are left
/// to the reader thread.
pub const POLL_MAX_PAYLOAD: usize = 64 << 10;

/// The largest CMA record a [`Transport::poll`] copies itself (on the
/// waiting thread, no thread wake-up); larger ones are left to the reader
/// thread, which copies the next piece of a pipeline while the waiting
/// thread works on the last (measured on 2 vCPUs: polls copying 2 MiB
/// pieces lost 10–20 % at 64 MiB, copying 512 KiB ones gained at 1 MiB).
pub const POLL_MAX_CMA_BYTES: usize = 1 << 20;

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
        }
    }
}

/// This host's identity for choosing shared memory: `ZCCL_HOST_ID` if set,
/// else `<boot_id>/net:<device>:<inode of /proc/self/ns/net>`. Two processes
/// with equal identities can share `/dev/shm` segments and are on one host.
/// When `/proc` cannot be read, the identity is unique to this process (no
/// peer is considered local).
///
/// ```
/// let id = zccl_transports::shm::host_identity();
/// assert!(!id.is_empty());
/// assert_eq!(id, zccl_transports::shm::host_identity());
/// ```
pub fn host_identity() -> String {
    if let Ok(id) = std::env::var("ZCCL_HOST_ID")
        && !id.trim().is_empty()
    {
        return id.trim().to_string();
    }
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let ns = std::fs::metadata("/proc/self/ns/net").map(|m| format!("{}:{}", m.dev(), m.ino()));
    match ns {
        Ok(ns) if !boot.is_empty() => format!("{boot}/net:{ns}"),
        _ => format!("unknown-host/pid:{}", std::process::id()),
    }
}

/// The job part of segment names: a 64-bit hash of the job secret (the
/// secret itself must not appear in `/dev/shm`, which every local user can
/// list).
///
/// ```
/// use zccl_transports::handshake::JobSecret;
/// use zccl_transports::shm::job_tag;
/// let a = job_tag(&JobSecret::from_bytes([1; 16]));
/// assert_eq!(a, job_tag(&JobSecret::from_bytes([1; 16])));
/// assert_ne!(a, job_tag(&JobSecret::from_bytes([2; 16])));
/// ```
pub fn job_tag(secret: &JobSecret) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"zccl-shm-job".iter().chain(secret.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finaliser.
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// Whether `tag` is usable in a segment name (1 to 32 ASCII alphanumerics).
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.len() <= 32 && tag.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The POSIX name (leading `/`) of the segment of ranks `a < b`, created by
/// `a`, whose published tag is `tag_a`.
///
/// ```
/// assert_eq!(zccl_transports::shm::segment_name(0xab, "f00d", 1, 3), "/zccl-00000000000000ab-f00d-1-3");
/// ```
pub fn segment_name(job: u64, tag_a: &str, a: u32, b: u32) -> String {
    format!("/zccl-{job:016x}-{tag_a}-{a}-{b}")
}

/// Who this rank is and which peers it reaches over shared memory.
#[derive(Debug, Clone)]
pub struct ShmSetup {
    /// This rank.
    pub rank: u32,
    /// World size.
    pub world_size: u32,
    /// [`job_tag`] of the job secret.
    pub job: u64,
    /// Every rank's published segment tag (see [`valid_tag`]), indexed by
    /// rank; `None` where the rank does not use shared memory.
    pub tags: Vec<Option<String>>,
    /// The peers to connect over shared memory (each must have a tag, as must this rank).
    pub peers: Vec<u32>,
    /// Transport configuration.
    pub config: ShmConfig,
    /// Deadline for the whole setup.
    pub setup_timeout: Duration,
}

// ---------------------------------------------------------------------------
// Segment layout.

const MAGIC: u64 = u64::from_le_bytes(*b"ZCCLSHM2");
const HEADER: usize = 4096;
const OFF_MAGIC: usize = 0;
const OFF_RING_BYTES: usize = 8;
const OFF_JOB: usize = 16;
const OFF_LO: usize = 24;
const OFF_HI: usize = 28;
const OFF_ATTACHED: usize = 32;
const OFF_CREATOR_PID: usize = 36;
const OFF_OPENER_PID: usize = 40;
/// Address and value of each side's CMA probe word (see [`crate::cma`]).
const OFF_CREATOR_PROBE: usize = 48;
const OFF_CREATOR_PROBE_VAL: usize = 56;
const OFF_OPENER_PROBE: usize = 64;
const OFF_OPENER_PROBE_VAL: usize = 72;
/// Ring control blocks: ring 0 carries `lo → hi`, ring 1 `hi → lo`.
const CTL: [usize; 2] = [256, 512];
// Within a control block: producer-written line, then consumer-written line.
const W_HEAD: usize = 0;
const W_DATA_SEQ: usize = 8;
const W_WAITING: usize = 12;
/// Lent CMA payloads the producer has withdrawn: 0, or `u64::MAX` once it
/// gave up on one ([`Transport::withdraw`], an abort). The consumer checks it
/// after every CMA copy and rejects the copy (closing the link) when set.
const W_CMA_WITHDRAWN: usize = 16;
const R_TAIL: usize = 64;
const R_SPACE_SEQ: usize = 72;
const R_WAITING: usize = 76;
/// Whether the consumer reads CMA records of this ring: 0 (not decided
/// yet), [`CMA_YES`] or [`CMA_NO`] (written once, at setup).
const R_CMA_OK: usize = 80;
/// How many CMA records of this ring the consumer has copied (monotonic).
const R_CMA_DONE: usize = 88;
/// How many threads of the consumer are polling this ring right now
/// ([`Transport::set_polling`]): a small record is then left to them and
/// the reader thread is not woken for it.
const R_POLLING: usize = 96;
const CMA_YES: u32 = 1;
const CMA_NO: u32 = 2;

const REC_LEN: usize = 32;
const REC_MARK: u8 = b'R';
const REC_DATA: u8 = 1;
const REC_CONTROL: u8 = 2;
const REC_GOODBYE: u8 = 3;
/// A data message whose payload stays in the sender's memory; the header is
/// followed by [`CMA_EXT`] bytes: address (u64), sequence number (u64, 1 for
/// the first CMA record of the ring), sender pid (u32), zeros.
const REC_CMA: u8 = 4;
const CMA_EXT: usize = 32;
/// Largest control record accepted (control messages are tiny).
const MAX_CONTROL: u64 = 1 << 20;

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 in a mapping that outlives the
    // call; FUTEX_WAIT (not _PRIVATE) works across processes on MAP_SHARED.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// One mapped segment. Unlinks its name on drop unless it is already gone.
struct Segment {
    map: MmapRaw,
    name: String,
    unlinked: AtomicBool,
}

impl Segment {
    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= HEADER);
        // SAFETY: in bounds, aligned (the mapping is page aligned), and only
        // ever accessed atomically by both processes.
        unsafe { &*(self.base().add(off) as *const AtomicU64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off.is_multiple_of(4) && off + 4 <= HEADER);
        // SAFETY: as in `u64_at`.
        unsafe { &*(self.base().add(off) as *const AtomicU32) }
    }

    fn unlink(&self) {
        if !self.unlinked.swap(true, Ordering::AcqRel)
            && let Err(e) = nix::sys::mman::shm_unlink(self.name.as_str())
            && e != Errno::ENOENT
        {
            warn!("shm_unlink {}: {e}", self.name);
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.unlink();
    }
}

/// Why a ring operation stopped.
#[derive(Debug)]
enum RingStop {
    /// The transport is closing.
    Closed,
    /// The peer left the ring in an impossible state.
    Corrupt(String),
}

/// One direction of a segment, seen from one side.
struct Ring {
    seg: Arc<Segment>,
    ctl: usize,
    data: *mut u8,
    cap: u64,
    spin: u32,
    slice: Duration,
}

// SAFETY: the raw data pointer points into `seg`'s mapping, which the ring
// keeps alive; the SPSC protocol gives each byte range one writer at a time.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    fn new(seg: Arc<Segment>, dir: usize, cap: u64, cfg: &ShmConfig) -> Self {
        // SAFETY: the segment is HEADER + 2 * cap bytes long.
        let data = unsafe { seg.base().add(HEADER + dir * cap as usize) };
        Self {
            seg,
            ctl: CTL[dir],
            data,
            cap,
            spin: cfg.spin_iterations,
            slice: cfg.wait_slice,
        }
    }

    fn head(&self) -> &AtomicU64 {
        self.seg.u64_at(self.ctl + W_HEAD)
    }
    fn data_seq(&self) -> &AtomicU32 {
        self.seg.u32_at(self.ctl + W_DATA_SEQ)
    }
    fn writer_waiting(&self) -> &AtomicU32 {
        self.seg.u32_at(self.ctl + W_WAITING)
    }
    fn tail(&self) -> &AtomicU64 {
        self.seg.u64_at(self.ctl + R_TAIL)
    }
    fn space_seq(&self) -> &AtomicU32 {
        self.seg.u32_at(self.ctl + R_SPACE_SEQ)
    }
    fn reader_waiting(&self) -> &AtomicU32 {
        self.seg.u32_at(self.ctl + R_WAITING)
    }
    fn cma_ok(&self) -> &AtomicU32 {
        self.seg.u32_at(self.ctl + R_CMA_OK)
    }
    fn cma_done(&self) -> &AtomicU64 {
        self.seg.u64_at(self.ctl + R_CMA_DONE)
    }
    fn cma_withdrawn(&self) -> &AtomicU64 {
        self.seg.u64_at(self.ctl + W_CMA_WITHDRAWN)
    }
    fn polling(&self) -> &AtomicU32 {
        self.seg.u32_at(self.ctl + R_POLLING)
    }

    /// Producer side, after publishing data: like
    /// [`Ring::notify_reader`], except that a small record (one a poll can
    /// take) is left to the consumer's polling threads when there are any,
    /// without the cost of waking its reader thread. A poller that stops
    /// wakes the reader itself if data is left ([`ShmTransport`]'s
    /// `set_polling`): either it sees the data, or this side sees no poller.
    fn notify_data(&self, small: bool) {
        self.data_seq().fetch_add(1, Ordering::SeqCst);
        if self.reader_waiting().load(Ordering::SeqCst) != 0
            && !(small && self.polling().load(Ordering::SeqCst) != 0)
        {
            futex_wake(self.data_seq());
        }
    }

    /// Wakes whatever thread of ours waits on this ring (used on close).
    fn wake_all(&self) {
        self.data_seq().fetch_add(1, Ordering::SeqCst);
        futex_wake(self.data_seq());
        self.space_seq().fetch_add(1, Ordering::SeqCst);
        futex_wake(self.space_seq());
    }

    /// Producer side: tells the consumer's reader thread to look again (new
    /// data, or a CMA release for it to handle), waking it if it sleeps.
    fn notify_reader(&self) {
        self.data_seq().fetch_add(1, Ordering::SeqCst);
        if self.reader_waiting().load(Ordering::SeqCst) != 0 {
            futex_wake(self.data_seq());
        }
    }

    /// Waits until `ready()` returns `Some`: spin briefly, then futex-wait on
    /// `seq` after announcing ourselves in `waiting`.
    fn wait<T>(
        &self,
        seq: &AtomicU32,
        waiting: &AtomicU32,
        stop: &AtomicBool,
        mut ready: impl FnMut() -> Result<Option<T>, RingStop>,
    ) -> Result<T, RingStop> {
        for _ in 0..self.spin {
            if let Some(v) = ready()? {
                return Ok(v);
            }
            std::hint::spin_loop();
        }
        loop {
            if stop.load(Ordering::Acquire) {
                return Err(RingStop::Closed);
            }
            waiting.store(1, Ordering::SeqCst);
            let s = seq.load(Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if let Some(v) = ready()? {
                waiting.store(0, Ordering::Relaxed);
                return Ok(v);
            }
            futex_wait(seq, s, self.slice);
            waiting.store(0, Ordering::Relaxed);
            if let Some(v) = ready()? {
                return Ok(v);
            }
        }
    }

    /// Producer: bytes that can be written without waiting.
    fn free(&self) -> u64 {
        let head = self.head().load(Ordering::Relaxed);
        let tail = self.tail().load(Ordering::Acquire);
        self.cap.saturating_sub(head.saturating_sub(tail))
    }

    /// Producer: copies `buf` into the ring, waiting for space as needed.
    fn write_all(&self, buf: &[u8], stop: &AtomicBool) -> Result<(), RingStop> {
        self.write_inner(buf, stop, false)
    }

    /// Producer: writes one whole record a poll can take (a small data or
    /// control message), see [`Ring::notify_data`].
    fn write_pollable(&self, buf: &[u8], stop: &AtomicBool) -> Result<(), RingStop> {
        self.write_inner(buf, stop, true)
    }

    /// Producer: writes a record made of a header and a payload. When the
    /// ring has room for all of it and it is `pollable`, both are copied and
    /// published at once (a poll sees it whole, and the reader thread is
    /// left alone while a poller is there, see [`Ring::notify_data`]);
    /// otherwise it streams through the ring, waiting for space.
    fn write_record(
        &self,
        header: &[u8],
        payload: &[u8],
        stop: &AtomicBool,
        pollable: bool,
    ) -> Result<(), RingStop> {
        let total = (header.len() + payload.len()) as u64;
        if pollable && self.free() >= total {
            let head = self.head().load(Ordering::Relaxed);
            // SAFETY: `total` bytes from `head` are free (the consumer only
            // frees more meanwhile), and only the producer writes them.
            unsafe {
                self.copy_in(head, header);
                self.copy_in(head + header.len() as u64, payload);
            }
            self.head().store(head + total, Ordering::Release);
            self.notify_data(true);
            return Ok(());
        }
        self.write_all(header, stop)?;
        self.write_all(payload, stop)
    }

    /// Producer: copies `buf` into the ring at position `pos`.
    ///
    /// # Safety
    /// `[pos, pos + buf.len())` must be free space of the ring (behind the
    /// consumer's tail by at most the capacity) that only this producer
    /// writes.
    unsafe fn copy_in(&self, pos: u64, buf: &[u8]) {
        let n = buf.len();
        debug_assert!(n as u64 <= self.cap);
        let idx = (pos % self.cap) as usize;
        let first = n.min(self.cap as usize - idx);
        // SAFETY: [idx, idx + first) and [0, n - first) lie in the data area
        // (the caller's contract makes them free).
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), self.data.add(idx), first);
            std::ptr::copy_nonoverlapping(buf.as_ptr().add(first), self.data, n - first);
        }
    }

    fn write_inner(&self, mut buf: &[u8], stop: &AtomicBool, small: bool) -> Result<(), RingStop> {
        let cap = self.cap;
        let mut head = self.head().load(Ordering::Relaxed);
        while !buf.is_empty() {
            let free = self.wait(self.space_seq(), self.writer_waiting(), stop, || {
                let tail = self.tail().load(Ordering::Acquire);
                if tail > head || head - tail > cap {
                    return Err(RingStop::Corrupt(format!(
                        "ring positions head {head} tail {tail} (capacity {cap})"
                    )));
                }
                let free = cap - (head - tail);
                Ok((free > 0).then_some(free))
            })?;
            let n = (free as usize).min(buf.len());
            let idx = (head % cap) as usize;
            let first = n.min(cap as usize - idx);
            // SAFETY: [idx, idx + first) and [0, n - first) lie in the data
            // area, and the consumer does not read them until `head` moves.
            unsafe {
                std::ptr::copy_nonoverlapping(buf.as_ptr(), self.data.add(idx), first);
                std::ptr::copy_nonoverlapping(buf.as_ptr().add(first), self.data, n - first);
            }
            head += n as u64;
            self.head().store(head, Ordering::Release);
            self.notify_data(small);
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Consumer, holding the consumer lock: bytes published and not yet
    /// consumed.
    fn readable(&self) -> Result<u64, String> {
        let tail = self.tail().load(Ordering::Acquire);
        let head = self.head().load(Ordering::Acquire);
        if head < tail || head - tail > self.cap {
            return Err(format!(
                "ring positions head {head} tail {tail} (capacity {})",
                self.cap
            ));
        }
        Ok(head - tail)
    }

    /// Consumer, without the consumer lock: whether bytes seem to be
    /// waiting (to be confirmed with [`Ring::readable`] under the lock).
    /// The tail is loaded first: it never passes the head, so a head below
    /// it is corrupt; but the other consumer may move the tail meanwhile,
    /// and the producer fill the space it freed, so a distance above the
    /// capacity proves nothing here.
    fn pending(&self) -> Result<bool, String> {
        let tail = self.tail().load(Ordering::Acquire);
        let head = self.head().load(Ordering::Acquire);
        if head < tail {
            return Err(format!(
                "ring positions head {head} tail {tail} (capacity {})",
                self.cap
            ));
        }
        Ok(head > tail)
    }

    /// Consumer: copies `out.len()` bytes starting at position `pos`
    /// without consuming them.
    ///
    /// # Safety
    /// The bytes `[pos, pos + out.len())` must have been published by the
    /// producer (observed with Acquire on `head`) and not consumed yet, and
    /// the caller must hold the consumer role (no other consumer moves the
    /// tail meanwhile).
    unsafe fn copy_out(&self, pos: u64, out: &mut [u8]) {
        let n = out.len();
        debug_assert!(n as u64 <= self.cap);
        let idx = (pos % self.cap) as usize;
        let first = n.min(self.cap as usize - idx);
        // SAFETY: [idx, idx + first) and [0, n - first) lie in the data area;
        // the producer does not overwrite them until the tail moves past.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(idx), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.data, out.as_mut_ptr().add(first), n - first);
        }
    }

    /// Consumer: moves the tail to `tail` (space for the producer) and wakes
    /// a writer that waits for space.
    fn consume_to(&self, tail: u64) {
        self.tail().store(tail, Ordering::Release);
        self.space_seq().fetch_add(1, Ordering::SeqCst);
        if self.writer_waiting().load(Ordering::SeqCst) != 0 {
            futex_wake(self.space_seq());
        }
    }

    /// Consumer: fills `out` from the ring, waiting for data as needed. The
    /// caller holds the link's consumer lock.
    fn read_exact(&self, out: &mut [u8], stop: &AtomicBool) -> Result<(), RingStop> {
        let mut tail = self.tail().load(Ordering::Relaxed);
        let mut off = 0usize;
        while off < out.len() {
            let avail = self.wait(self.data_seq(), self.reader_waiting(), stop, || {
                let head = self.head().load(Ordering::Acquire);
                if head < tail || head - tail > self.cap {
                    return Err(RingStop::Corrupt(format!(
                        "ring positions head {head} tail {tail} (capacity {})",
                        self.cap
                    )));
                }
                Ok((head > tail).then_some(head - tail))
            })?;
            let n = (avail as usize).min(out.len() - off);
            // SAFETY: published (Acquire on head above), not consumed, and
            // we hold the consumer lock.
            unsafe { self.copy_out(tail, &mut out[off..off + n]) };
            tail += n as u64;
            self.consume_to(tail);
            off += n;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Records.

fn encode_record(
    kind: u8,
    dtype: u8,
    comm: u32,
    channel: u32,
    seq: u64,
    len: u64,
) -> [u8; REC_LEN] {
    let mut b = [0u8; REC_LEN];
    b[0] = REC_MARK;
    b[1] = kind;
    b[2] = dtype;
    b[4..8].copy_from_slice(&comm.to_le_bytes());
    b[8..12].copy_from_slice(&channel.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..32].copy_from_slice(&len.to_le_bytes());
    b
}

struct Record {
    kind: u8,
    dtype: u8,
    comm: u32,
    channel: u32,
    seq: u64,
    len: u64,
}

impl Record {
    fn message_kind(&self) -> MessageKind {
        if self.kind == REC_CONTROL {
            MessageKind::Control
        } else {
            MessageKind::Data
        }
    }
}

fn decode_record(b: &[u8; REC_LEN], max_message: u64) -> Result<Record, String> {
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    if b[0] != REC_MARK || b[3] != 0 || u32_at(12) != 0 {
        return Err(format!("bad record header {:02x?}", &b[..4]));
    }
    let r = Record {
        kind: b[1],
        dtype: b[2],
        comm: u32_at(4),
        channel: u32_at(8),
        seq: u64_at(16),
        len: u64_at(24),
    };
    match r.kind {
        REC_DATA | REC_CMA if r.len <= max_message => Ok(r),
        REC_CONTROL if r.len <= MAX_CONTROL => Ok(r),
        REC_GOODBYE if r.len == 0 => Ok(r),
        REC_DATA | REC_CMA | REC_CONTROL | REC_GOODBYE => Err(format!(
            "record of {} bytes exceeds the limit of {max_message} bytes",
            r.len
        )),
        k => Err(format!("unknown record kind {k}")),
    }
}

/// The part of a CMA record after its header.
#[derive(Debug, PartialEq, Eq)]
struct CmaExt {
    addr: u64,
    number: u64,
    pid: u32,
}

fn encode_cma(e: &CmaExt) -> [u8; CMA_EXT] {
    let mut b = [0u8; CMA_EXT];
    b[0..8].copy_from_slice(&e.addr.to_le_bytes());
    b[8..16].copy_from_slice(&e.number.to_le_bytes());
    b[16..20].copy_from_slice(&e.pid.to_le_bytes());
    b
}

/// Decodes and checks the CMA part of a record of `len` payload bytes.
fn decode_cma(b: &[u8; CMA_EXT], len: u64) -> Result<CmaExt, String> {
    let e = CmaExt {
        addr: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
        number: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        pid: u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")),
    };
    if b[20..].iter().any(|&x| x != 0) {
        return Err("bad CMA record (reserved bytes set)".into());
    }
    let end = e.addr.checked_add(len);
    if e.addr == 0 || end.is_none_or(|end| usize::try_from(end).is_err()) {
        return Err(format!(
            "CMA record of {len} bytes at impossible address {:#x}",
            e.addr
        ));
    }
    Ok(e)
}

// ---------------------------------------------------------------------------
// Setup.

fn os_err(context: impl Into<String>, e: Errno) -> TransportError {
    TransportError::Io {
        context: context.into(),
        message: e.desc().to_string(),
    }
}

fn map(file: &File, len: usize, name: &str) -> Result<MmapRaw, TransportError> {
    MmapOptions::new()
        .len(len)
        .map_raw(file)
        .map_err(|e| TransportError::io(format!("mmap shm {name}"), &e))
}

fn create_segment(
    name: &str,
    job: u64,
    lo: u32,
    hi: u32,
    cap: u64,
) -> Result<Arc<Segment>, TransportError> {
    let fd = nix::sys::mman::shm_open(
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .map_err(|e| os_err(format!("create shm segment /dev/shm{name}"), e))?;
    let file = File::from(fd);
    let len = HEADER + 2 * cap as usize;
    // From here on the name exists: the Segment unlinks it on any failure.
    let unlink_on_err = |e: TransportError| {
        let _ = nix::sys::mman::shm_unlink(name);
        e
    };
    nix::unistd::ftruncate(&file, len as libc::off_t)
        .map_err(|e| unlink_on_err(os_err(format!("ftruncate /dev/shm{name} to {len}"), e)))?;
    let map = map(&file, len, name).map_err(unlink_on_err)?;
    let seg = Arc::new(Segment {
        map,
        name: name.to_string(),
        unlinked: AtomicBool::new(false),
    });
    seg.u64_at(OFF_RING_BYTES).store(cap, Ordering::Relaxed);
    seg.u64_at(OFF_JOB).store(job, Ordering::Relaxed);
    seg.u32_at(OFF_LO).store(lo, Ordering::Relaxed);
    seg.u32_at(OFF_HI).store(hi, Ordering::Relaxed);
    seg.u32_at(OFF_CREATOR_PID)
        .store(std::process::id(), Ordering::Relaxed);
    let (probe, val) = crate::cma::probe_word();
    seg.u64_at(OFF_CREATOR_PROBE)
        .store(probe, Ordering::Relaxed);
    seg.u64_at(OFF_CREATOR_PROBE_VAL)
        .store(val, Ordering::Relaxed);
    seg.u64_at(OFF_MAGIC).store(MAGIC, Ordering::Release);
    Ok(seg)
}

/// One attempt to open and map the segment created by the peer; `Ok(None)`
/// when it does not exist or is not initialised yet.
fn try_open_segment(
    name: &str,
    job: u64,
    lo: u32,
    hi: u32,
) -> Result<Option<(Arc<Segment>, u64)>, TransportError> {
    let fd = match nix::sys::mman::shm_open(name, OFlag::O_RDWR, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(os_err(format!("open shm segment /dev/shm{name}"), e)),
    };
    let file = File::from(fd);
    let size = file
        .metadata()
        .map_err(|e| TransportError::io(format!("fstat /dev/shm{name}"), &e))?
        .len() as usize;
    if size < HEADER {
        return Ok(None); // not truncated yet
    }
    let map = map(&file, size, name)?;
    let seg = Arc::new(Segment {
        map,
        name: name.to_string(),
        // Not ours to unlink until we have validated it.
        unlinked: AtomicBool::new(true),
    });
    if seg.u64_at(OFF_MAGIC).load(Ordering::Acquire) != MAGIC {
        return Ok(None); // not initialised yet
    }
    let cap = seg.u64_at(OFF_RING_BYTES).load(Ordering::Relaxed);
    let bad = |what: String| TransportError::Io {
        context: format!("open shm segment /dev/shm{name}"),
        message: what,
    };
    if seg.u64_at(OFF_JOB).load(Ordering::Relaxed) != job
        || seg.u32_at(OFF_LO).load(Ordering::Relaxed) != lo
        || seg.u32_at(OFF_HI).load(Ordering::Relaxed) != hi
    {
        return Err(bad("segment belongs to another job or rank pair".into()));
    }
    if cap == 0 || !cap.is_multiple_of(4096) || HEADER as u64 + 2 * cap != size as u64 {
        return Err(bad(format!(
            "inconsistent size: {size} bytes for rings of {cap} bytes"
        )));
    }
    seg.unlinked.store(false, Ordering::Release);
    Ok(Some((seg, cap)))
}

/// A mapped segment during setup: peer, segment, ring bytes, and whether
/// this rank reads the peer's CMA records (the peer's pid, or why not).
type PeerSegment = (u32, Arc<Segment>, u64, Result<u32, String>);

/// Decides whether this rank reads the CMA records of ring `dir` of `seg`
/// (the ring from the peer), probing the peer whose pid and probe word sit
/// at the given header offsets, and publishes the answer in the ring's
/// consumer line. Returns the peer's pid when CMA is on, else why not.
fn cma_accept(
    seg: &Segment,
    dir: usize,
    enabled: bool,
    offs: (usize, usize, usize),
) -> Result<u32, String> {
    let (pid_off, probe_off, val_off) = offs;
    let res = if enabled {
        let pid = seg.u32_at(pid_off).load(Ordering::Acquire);
        let addr = seg.u64_at(probe_off).load(Ordering::Acquire);
        let val = seg.u64_at(val_off).load(Ordering::Acquire);
        crate::cma::probe(pid, addr, val).map(|()| pid)
    } else {
        Err("disabled here (cma_min_bytes = 0)".to_string())
    };
    let flag = if res.is_ok() { CMA_YES } else { CMA_NO };
    seg.u32_at(CTL[dir] + R_CMA_OK)
        .store(flag, Ordering::Release);
    res
}

// ---------------------------------------------------------------------------
// The transport.

enum Out {
    Msg(Message),
    Goodbye,
}

struct Ctx {
    rank: u32,
    events: mpsc::UnboundedSender<TransportEvent>,
    closing: AtomicBool,
    max_message: u64,
    /// The engine's direct delivery ([`Transport::set_deliver`]).
    deliver: std::sync::OnceLock<crate::Deliver>,
    /// Receives' posted destinations: CMA copies land there directly.
    landing: Arc<crate::landing::Landing>,
    /// Tests: readers take no record while set (so that polls get them all).
    #[cfg(test)]
    pause_readers: AtomicBool,
}

struct Link {
    peer: u32,
    path: String,
    tx: Mutex<Option<std::sync::mpsc::Sender<Out>>>,
    stop: Arc<AtomicBool>,
    out_ring: Arc<Ring>,
    in_ring: Arc<Ring>,
    done: Mutex<Vec<oneshot::Receiver<()>>>,
    reported: AtomicBool,
    /// Held by whoever writes into `out_ring` (the writer thread, or a
    /// sender writing a message inline).
    producer: Mutex<()>,
    /// Held by whoever reads a record from `in_ring` (the reader thread, or
    /// a [`Transport::poll`]); records are consumed whole under it.
    consumer: Mutex<()>,
    /// Set (under `consumer`) when the reader thread stopped: the ring is
    /// finished (goodbye) or corrupt, and polls leave it alone.
    reader_gone: AtomicBool,
    /// Number of the last CMA record of `in_ring` copied (by the reader
    /// thread or a poll, under `consumer`).
    cma_seen: AtomicU64,
    /// Messages queued for the writer thread and not yet in the ring: a
    /// sender may write inline only when it is 0, which keeps messages in
    /// send order.
    backlog: AtomicUsize,
    /// This rank's [`ShmConfig::cma_min_bytes`].
    cma_min: usize,
    /// The peer's pid when this rank reads the peer's CMA records.
    cma_from: Option<u32>,
    /// Payloads of CMA records written to `out_ring`, with their numbers,
    /// kept alive until the peer has copied them.
    kept: Mutex<std::collections::VecDeque<(u64, Bytes)>>,
    /// Number of the last CMA record written (under `producer`).
    cma_sent: AtomicU64,
    /// The peer's copy count last acted on (kept payloads up to it dropped).
    cma_released: AtomicU64,
}

fn lock(m: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    // The mutexes guard no data: a panic elsewhere leaves nothing broken.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Link {
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.tx.lock().expect("shm tx").take();
        self.out_ring.wake_all();
        self.in_ring.wake_all();
    }

    fn report(&self, ctx: &Ctx, reason: CloseReason) {
        if ctx.closing.load(Ordering::Acquire) || self.reported.swap(true, Ordering::AcqRel) {
            return;
        }
        match &reason {
            CloseReason::Clean => info!(
                rank = ctx.rank,
                peer = self.peer,
                "peer closed its shm rings"
            ),
            other => warn!(rank = ctx.rank, peer = self.peer, path = %self.path, "peer {other}"),
        }
        let _ = ctx.events.send(TransportEvent::PeerClosed {
            peer: self.peer,
            reason,
            path: Some(PeerPath::Shm {
                segment: self.path.clone(),
                control: None,
            }),
        });
    }

    /// Whether `m` goes by CMA: a data message of at least `cma_min` bytes,
    /// to a peer that reads our CMA records.
    fn use_cma(&self, m: &Message) -> bool {
        self.cma_min > 0
            && m.kind == MessageKind::Data
            && m.payload.len() >= self.cma_min
            && self.out_ring.cma_ok().load(Ordering::Acquire) == CMA_YES
    }

    /// Whether the peer copied CMA payloads that we still keep.
    fn release_pending(&self) -> bool {
        self.out_ring.cma_done().load(Ordering::Acquire) > self.cma_released.load(Ordering::Acquire)
    }

    /// Drops the kept payloads the peer has copied.
    fn reap(&self) -> Result<(), String> {
        if !self.release_pending() {
            return Ok(());
        }
        let mut freed = Vec::new();
        {
            let mut kept = self.kept.lock().expect("shm kept");
            let done = self.out_ring.cma_done().load(Ordering::Acquire);
            let sent = self.cma_sent.load(Ordering::Acquire);
            if done > sent {
                return Err(format!(
                    "the peer claims to have copied {done} CMA payloads of {sent} sent"
                ));
            }
            while let Some((n, _)) = kept.front()
                && *n <= done
            {
                freed.extend(kept.pop_front().map(|(_, b)| b));
            }
            self.cma_released.fetch_max(done, Ordering::AcqRel);
        }
        // Freed outside the lock (a large buffer may be unmapped here).
        drop(freed);
        Ok(())
    }

    /// Withdraws every CMA payload of this link, written or still to be
    /// written: the peer rejects any CMA copy it finishes from now on (see
    /// [`W_CMA_WITHDRAWN`]), so this process may reuse their memory; the
    /// kept payloads are dropped. The full fence orders the mark before
    /// whatever the caller writes into the memory next; the reader fences
    /// between its copy and its check, so a copy that passes the check
    /// finished before any such write.
    fn withdraw(&self) {
        self.out_ring
            .cma_withdrawn()
            .store(u64::MAX, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let freed: Vec<_> = self.kept.lock().expect("shm kept").drain(..).collect();
        drop(freed);
    }

    fn kept_empty(&self) -> bool {
        self.kept.lock().expect("shm kept").is_empty()
    }
}

/// The shared-memory implementation of [`Transport`] (see the module docs).
///
/// Dropping it stops its threads (within [`ShmConfig::wait_slice`]); the
/// mappings, and the payloads kept for the peers' CMA copies, go with the
/// last thread.
pub struct ShmTransport {
    ctx: Arc<Ctx>,
    links: Vec<Option<Arc<Link>>>,
    /// The links, densely (for polling).
    live: Vec<Arc<Link>>,
    /// Where the next poll starts (round robin).
    poll_next: AtomicUsize,
}

impl std::fmt::Debug for ShmTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmTransport")
            .field("rank", &self.ctx.rank)
            .field(
                "peers",
                &self.live.iter().map(|l| l.peer).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ShmTransport {
    /// Creates, opens and maps the segments of every peer in `setup.peers`,
    /// waits until each peer mapped its side (the names are then unlinked),
    /// probes in both directions whether CMA works, and starts the reader and
    /// writer threads. Blocks until done or `setup.setup_timeout`; every peer
    /// listed must run this concurrently.
    ///
    /// Incoming messages and clean goodbyes are sent on `events`.
    pub fn establish(
        setup: ShmSetup,
        events: mpsc::UnboundedSender<TransportEvent>,
    ) -> Result<Self, TransportError> {
        let deadline = Instant::now() + setup.setup_timeout;
        let rank = setup.rank;
        let cfg = &setup.config;
        let cma_on = cfg.cma_min_bytes > 0;
        let cap = (cfg.ring_bytes.max(4096).div_ceil(4096) * 4096) as u64;
        let tag_of = |r: u32| -> Result<&str, TransportError> {
            match setup.tags.get(r as usize) {
                Some(Some(t)) if valid_tag(t) => Ok(t.as_str()),
                _ => Err(TransportError::Io {
                    context: format!("shm setup with rank {r}"),
                    message: "rank published no valid shm tag".into(),
                }),
            }
        };
        tag_of(rank)?;
        for &p in &setup.peers {
            if p == rank || p >= setup.world_size {
                return Err(TransportError::NoSuchPeer(p));
            }
            tag_of(p)?;
        }
        let mut segs: Vec<PeerSegment> = Vec::new();
        // 1. Create the segments we own (we are the lower rank).
        for &p in setup.peers.iter().filter(|&&p| p > rank) {
            let name = segment_name(setup.job, tag_of(rank)?, rank, p);
            let seg = create_segment(&name, setup.job, rank, p, cap)?;
            segs.push((p, seg, cap, Err(String::new())));
        }
        // 2. Open the peers' segments, then unlink their names at once.
        for &p in setup.peers.iter().filter(|&&p| p < rank) {
            let name = segment_name(setup.job, tag_of(p)?, p, rank);
            let mut pause = Duration::from_millis(1);
            let (seg, pcap) = loop {
                if let Some(found) = try_open_segment(&name, setup.job, p, rank)? {
                    break found;
                }
                if Instant::now() >= deadline {
                    return Err(TransportError::SetupTimeout {
                        after: setup.setup_timeout,
                        missing: format!("shm segment /dev/shm{name} of rank {p} never appeared"),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            };
            seg.unlink();
            seg.u32_at(OFF_OPENER_PID)
                .store(std::process::id(), Ordering::Relaxed);
            let (probe, val) = crate::cma::probe_word();
            seg.u64_at(OFF_OPENER_PROBE).store(probe, Ordering::Relaxed);
            seg.u64_at(OFF_OPENER_PROBE_VAL)
                .store(val, Ordering::Relaxed);
            // We read ring 0 (the creator's, lower rank's, direction).
            let cma = cma_accept(
                &seg,
                0,
                cma_on,
                (OFF_CREATOR_PID, OFF_CREATOR_PROBE, OFF_CREATOR_PROBE_VAL),
            );
            seg.u32_at(OFF_ATTACHED).store(1, Ordering::Release);
            futex_wake(seg.u32_at(OFF_ATTACHED));
            segs.push((p, seg, pcap, cma));
        }
        // 3. Wait until the peers mapped ours (they unlinked the names).
        for (p, seg, _, cma) in segs.iter_mut().filter(|(p, ..)| *p > rank) {
            while seg.u32_at(OFF_ATTACHED).load(Ordering::Acquire) == 0 {
                let now = Instant::now();
                if now >= deadline {
                    return Err(TransportError::SetupTimeout {
                        after: setup.setup_timeout,
                        missing: format!("rank {p} never mapped shm segment /dev/shm{}", seg.name),
                    });
                }
                futex_wait(
                    seg.u32_at(OFF_ATTACHED),
                    0,
                    (deadline - now).min(Duration::from_millis(20)),
                );
            }
            seg.unlinked.store(true, Ordering::Release);
            // We read ring 1 (the opener's direction).
            *cma = cma_accept(
                seg,
                1,
                cma_on,
                (OFF_OPENER_PID, OFF_OPENER_PROBE, OFF_OPENER_PROBE_VAL),
            );
        }
        // 4. Start the threads.
        let ctx = Arc::new(Ctx {
            rank,
            events,
            closing: AtomicBool::new(false),
            max_message: cfg.max_message,
            deliver: std::sync::OnceLock::new(),
            landing: Arc::default(),
            #[cfg(test)]
            pause_readers: AtomicBool::new(false),
        });
        let mut links: Vec<Option<Arc<Link>>> = (0..setup.world_size).map(|_| None).collect();
        let mut cma_peers = Vec::new();
        let mut ring_peers = Vec::new();
        for (p, seg, pcap, cma) in segs {
            // Ring 0 carries lo -> hi.
            let (out_dir, in_dir) = if rank < p { (0, 1) } else { (1, 0) };
            let (tx, rx) = std::sync::mpsc::channel();
            let (wdone_tx, wdone_rx) = oneshot::channel();
            let (rdone_tx, rdone_rx) = oneshot::channel();
            match &cma {
                Ok(_) => cma_peers.push(p),
                Err(why) => ring_peers.push((p, why.clone())),
            }
            let link = Arc::new(Link {
                peer: p,
                path: format!("/dev/shm{}", seg.name),
                tx: Mutex::new(Some(tx)),
                stop: Arc::new(AtomicBool::new(false)),
                out_ring: Arc::new(Ring::new(seg.clone(), out_dir, pcap, cfg)),
                in_ring: Arc::new(Ring::new(seg, in_dir, pcap, cfg)),
                done: Mutex::new(vec![wdone_rx, rdone_rx]),
                reported: AtomicBool::new(false),
                producer: Mutex::new(()),
                consumer: Mutex::new(()),
                reader_gone: AtomicBool::new(false),
                cma_seen: AtomicU64::new(0),
                backlog: AtomicUsize::new(0),
                cma_min: cfg.cma_min_bytes,
                cma_from: cma.ok(),
                kept: Mutex::new(std::collections::VecDeque::new()),
                cma_sent: AtomicU64::new(0),
                cma_released: AtomicU64::new(0),
            });
            let spawn = |what: &str, f: Box<dyn FnOnce() + Send>| {
                std::thread::Builder::new()
                    .name(format!("zccl-shm-{what}{rank}-{p}"))
                    .spawn(f)
                    .map(|_| ())
                    .map_err(|e| TransportError::io(format!("spawn shm {what} thread"), &e))
            };
            let (l, c) = (link.clone(), ctx.clone());
            spawn(
                "w",
                Box::new(move || {
                    writer(&l, &c, rx);
                    drop(wdone_tx);
                }),
            )?;
            let (l, c) = (link.clone(), ctx.clone());
            spawn(
                "r",
                Box::new(move || {
                    reader(&l, &c);
                    drop(rdone_tx);
                }),
            )?;
            debug!(rank, peer = p, path = %link.path, ring_bytes = pcap, cma = link.cma_from.is_some(), "shm link up");
            links[p as usize] = Some(link);
        }
        info!(
            rank,
            peers = ?setup.peers,
            ring_bytes = cap,
            cma_min_bytes = cfg.cma_min_bytes,
            cma_from = ?cma_peers,
            "shm transport ready"
        );
        if !ring_peers.is_empty() {
            let (peers, why): (Vec<u32>, Vec<String>) = ring_peers.into_iter().unzip();
            info!(
                rank,
                peers = ?peers,
                "shm: large messages from these ranks are copied through the ring, not by CMA: {}",
                why[0]
            );
        }
        let live = links.iter().flatten().cloned().collect();
        Ok(Self {
            ctx,
            links,
            live,
            poll_next: AtomicUsize::new(0),
        })
    }

    fn link(&self, peer: u32) -> Option<&Arc<Link>> {
        self.links.get(peer as usize)?.as_ref()
    }

    fn stop_all(&self) {
        self.ctx.closing.store(true, Ordering::Release);
        for l in &self.live {
            l.stop();
        }
    }

    /// Whether messages of at least [`ShmConfig::cma_min_bytes`] to `peer`
    /// go by CMA (the peer accepted them at setup).
    ///
    /// Only meaningful once the peer finished its setup; `false` for a peer
    /// not reached over shared memory.
    pub fn cma_to(&self, peer: u32) -> bool {
        self.link(peer).is_some_and(|l| {
            l.cma_min > 0 && l.out_ring.cma_ok().load(Ordering::Acquire) == CMA_YES
        })
    }

    /// Whether this rank copies large messages from `peer` by CMA (its probe
    /// of the peer succeeded at setup).
    pub fn cma_from(&self, peer: u32) -> bool {
        self.link(peer).is_some_and(|l| l.cma_from.is_some())
    }
}

impl Drop for ShmTransport {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Largest message a sender writes into the ring itself (when the ring has
/// room and nothing is queued before it) instead of waking the writer thread.
const INLINE_MAX: usize = 64 << 10;

/// Writes one message record into the link's out ring, counting data
/// payloads in the metrics (`nic="shm"`); the caller holds the producer lock.
fn write_msg(link: &Link, m: &Message) -> Result<(), RingStop> {
    let res = if link.use_cma(m) {
        write_cma(link, m)
    } else {
        write_copy(&link.out_ring, m, &link.stop)
    };
    if res.is_ok() && m.kind == MessageKind::Data {
        crate::metrics::Metrics::global().nic_transmit("shm", None, m.payload.len() as u64);
    }
    res
}

/// A record carrying the payload itself.
fn write_copy(ring: &Ring, m: &Message, stop: &AtomicBool) -> Result<(), RingStop> {
    let kind = match m.kind {
        MessageKind::Data => REC_DATA,
        MessageKind::Control => REC_CONTROL,
    };
    let rec = encode_record(
        kind,
        m.dtype,
        m.comm,
        m.channel,
        m.seq,
        m.payload.len() as u64,
    );
    ring.write_record(&rec, &m.payload, stop, m.payload.len() <= POLL_MAX_PAYLOAD)
}

/// A CMA record: the payload stays where it is, kept alive until the peer
/// copied it.
fn write_cma(link: &Link, m: &Message) -> Result<(), RingStop> {
    let number = link.cma_sent.load(Ordering::Relaxed) + 1;
    // Kept before the record is visible, so a release never precedes it.
    link.kept
        .lock()
        .expect("shm kept")
        .push_back((number, m.payload.clone()));
    link.cma_sent.store(number, Ordering::Release);
    let mut rec = [0u8; REC_LEN + CMA_EXT];
    rec[..REC_LEN].copy_from_slice(&encode_record(
        REC_CMA,
        m.dtype,
        m.comm,
        m.channel,
        m.seq,
        m.payload.len() as u64,
    ));
    rec[REC_LEN..].copy_from_slice(&encode_cma(&CmaExt {
        addr: m.payload.as_ptr() as u64,
        number,
        pid: std::process::id(),
    }));
    if m.payload.len() <= POLL_MAX_CMA_BYTES {
        // Pollable: a waiting thread of the consumer copies it itself.
        link.out_ring.write_pollable(&rec, &link.stop)
    } else {
        link.out_ring.write_all(&rec, &link.stop)
    }
}

/// Ring bytes the record of `m` takes.
fn record_bytes(link: &Link, m: &Message) -> usize {
    if link.use_cma(m) {
        REC_LEN + CMA_EXT
    } else {
        REC_LEN + m.payload.len()
    }
}

fn writer(link: &Link, ctx: &Ctx, rx: std::sync::mpsc::Receiver<Out>) {
    let ring = &link.out_ring;
    let stop = &*link.stop;
    while let Ok(out) = rx.recv() {
        let _producer = lock(&link.producer);
        let res = match out {
            Out::Goodbye => {
                let rec = encode_record(REC_GOODBYE, 0, 0, 0, 0, 0);
                let _ = ring.write_all(&rec, stop);
                return;
            }
            Out::Msg(m) => {
                let r = write_msg(link, &m);
                link.backlog.fetch_sub(1, Ordering::AcqRel);
                r
            }
        };
        match res {
            Ok(()) => {}
            Err(RingStop::Closed) => return,
            Err(RingStop::Corrupt(why)) => {
                link.report(
                    ctx,
                    CloseReason::Lost(format!("shm ring to the peer: {why}")),
                );
                return;
            }
        }
    }
}

/// What the reader thread does after a record.
enum Next {
    /// Read the next one.
    Go,
    /// Stop: the ring is finished, corrupt, or the transport closes.
    Stop,
}

fn reader(link: &Link, ctx: &Ctx) {
    let ring = &link.in_ring;
    let stop = &*link.stop;
    let lost = |why: String| {
        link.report(
            ctx,
            CloseReason::Lost(format!("shm ring from the peer: {why}")),
        )
    };
    loop {
        // Wait for a record (or a CMA release) without the consumer lock, so
        // that polls can take small messages meanwhile.
        let waited = ring.wait(ring.data_seq(), ring.reader_waiting(), stop, || {
            let data = ring.pending().map_err(RingStop::Corrupt)?;
            Ok((data || link.release_pending()).then_some(()))
        });
        match waited {
            Ok(()) => {}
            Err(RingStop::Closed) => break,
            Err(RingStop::Corrupt(why)) => {
                lost(why);
                break;
            }
        }
        #[cfg(test)]
        while ctx.pause_readers.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Err(why) = link.reap() {
            lost(why);
            break;
        }
        if !matches!(ring.pending(), Ok(true)) {
            continue; // woken for a release only, or a poll took the data
        }
        let guard = lock(&link.consumer);
        match ring.readable() {
            Ok(0) => continue, // a poll took it; wait again
            Ok(_) => {}
            Err(why) => {
                link.reader_gone.store(true, Ordering::Release);
                lost(why);
                break;
            }
        }
        let next = read_record(link, ctx);
        if let Next::Stop = next {
            link.reader_gone.store(true, Ordering::Release);
            drop(guard);
            break;
        }
    }
    link.reader_gone.store(true, Ordering::Release);
}

/// Reads one whole record under the consumer lock and delivers it.
fn read_record(link: &Link, ctx: &Ctx) -> Next {
    let ring = &link.in_ring;
    let stop = &*link.stop;
    let lost = |why: String| {
        link.report(
            ctx,
            CloseReason::Lost(format!("shm ring from the peer: {why}")),
        );
        Next::Stop
    };
    let mut hb = [0u8; REC_LEN];
    match ring.read_exact(&mut hb, stop) {
        Ok(()) => {}
        Err(RingStop::Closed) => return Next::Stop,
        Err(RingStop::Corrupt(why)) => return lost(why),
    }
    let rec = match decode_record(&hb, ctx.max_message) {
        Ok(r) => r,
        Err(why) => return lost(why),
    };
    let payload = match rec.kind {
        REC_GOODBYE => {
            link.report(ctx, CloseReason::Clean);
            return Next::Stop;
        }
        REC_CMA => {
            let mut xb = [0u8; CMA_EXT];
            match ring.read_exact(&mut xb, stop) {
                Ok(()) => {}
                Err(RingStop::Closed) => return Next::Stop,
                Err(RingStop::Corrupt(why)) => return lost(why),
            }
            match copy_cma(link, ctx, &rec, &xb) {
                Ok(p) => p,
                Err(why) => return lost(why),
            }
        }
        _ => {
            // Straight from the ring into the buffer handed up (no zeroing,
            // no further copy; recycled when the receiver drops it).
            let mut payload = RecvBuf::new(rec.len as usize);
            match ring.read_exact(payload.as_mut_slice(), stop) {
                Ok(()) => {}
                Err(RingStop::Closed) => return Next::Stop,
                Err(RingStop::Corrupt(why)) => return lost(why),
            }
            payload
        }
    };
    let msg = received(&rec, payload);
    // Delivered under the consumer lock: a poll cannot deliver a later
    // record before this one is in the engine or its event channel.
    let msg = match ctx.deliver.get() {
        Some(deliver) => match deliver(link.peer, msg) {
            Ok(()) => return Next::Go,
            Err(msg) => msg,
        },
        None => msg,
    };
    match ctx.events.send(TransportEvent::Message {
        peer: link.peer,
        msg,
    }) {
        Ok(()) => Next::Go,
        Err(_) => Next::Stop,
    }
}

/// The message of a record read whole (by the reader thread or a poll),
/// counted in the metrics when it carries data.
fn received(rec: &Record, payload: RecvBuf) -> Message {
    if rec.kind != REC_CONTROL {
        crate::metrics::Metrics::global().nic_receive("shm", None, rec.len);
    }
    Message {
        kind: rec.message_kind(),
        dtype: rec.dtype,
        comm: rec.comm,
        channel: rec.channel,
        seq: rec.seq,
        payload: payload.into_bytes(),
    }
}

/// Copies the payload of a CMA record (header `rec`, extension `xb`) from
/// the sender's memory, then tells the sender it may drop it.
/// Called under the consumer lock. When the receive of this message posted
/// a landing zone, the payload is copied into it and an empty buffer is
/// returned (see [`crate::landing`]).
fn copy_cma(link: &Link, ctx: &Ctx, rec: &Record, xb: &[u8; CMA_EXT]) -> Result<RecvBuf, String> {
    let cma_seen = link.cma_seen.load(Ordering::Relaxed);
    let ext = decode_cma(xb, rec.len)?;
    let Some(pid) = link.cma_from else {
        return Err("CMA record from a peer this rank does not read by CMA".into());
    };
    if ext.pid != pid {
        return Err(format!(
            "CMA record names pid {}, the peer is pid {pid}",
            ext.pid
        ));
    }
    if ext.number != cma_seen + 1 {
        return Err(format!(
            "CMA record number {} where {} was due",
            ext.number,
            cma_seen + 1
        ));
    }
    let key = crate::landing::LandKey {
        peer: link.peer,
        comm: rec.comm,
        channel: rec.channel,
        seq: rec.seq,
    };
    let mut claim = ctx.landing.claim(key, rec.len as usize);
    let mut payload = RecvBuf::new(if claim.is_some() { 0 } else { rec.len as usize });
    let dest = match claim.as_mut() {
        Some(c) => c.dest(),
        None => payload.as_mut_slice(),
    };
    crate::cma::read_parallel(pid, ext.addr, dest).map_err(|e| {
        format!(
            "copying {} bytes at {:#x} from pid {pid} by CMA failed: {}",
            rec.len,
            ext.addr,
            crate::cma::explain(e)
        )
    })?;
    // A lent payload the sender withdrew may have changed under the copy.
    fence(Ordering::SeqCst);
    if link.in_ring.cma_withdrawn().load(Ordering::SeqCst) >= ext.number {
        return Err(format!(
            "the peer withdrew CMA payload {} ({} bytes) while it was copied \
             (it gave up on the send: timeout or abort); its bytes are not delivered",
            ext.number, rec.len
        ));
    }
    if let Some(c) = claim {
        c.done(true);
    }
    link.cma_seen.store(ext.number, Ordering::Relaxed);
    // The sender drops the payload on this: a thread of the sender that
    // polls does it (no wake-up); otherwise its reader thread, woken here.
    // (SeqCst store, then SeqCst load of the sender's poller count; the
    // sender's last poller decrements it, then checks for releases: one of
    // the two sees the other.)
    link.in_ring.cma_done().store(ext.number, Ordering::SeqCst);
    if link.out_ring.polling().load(Ordering::SeqCst) == 0 {
        link.out_ring.notify_reader();
    }
    Ok(payload)
}

/// One poll of one link: delivers the record at the tail if it is a whole
/// small data or control record and nobody else is reading.
fn poll_link(link: &Link, ctx: &Ctx, f: &mut dyn FnMut(u32, Message)) -> bool {
    let ring = &link.in_ring;
    // Cheap checks first: most links of a poll are idle.
    if link.stop.load(Ordering::Acquire) || !matches!(ring.pending(), Ok(true)) {
        return false;
    }
    let _consumer = match link.consumer.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return false,
    };
    if link.reader_gone.load(Ordering::Acquire) {
        return false;
    }
    let avail = match ring.readable() {
        Ok(n) if n >= REC_LEN as u64 => n,
        _ => return false, // taken meanwhile, or corrupt: the reader reports it
    };
    let tail = ring.tail().load(Ordering::Relaxed);
    let mut hb = [0u8; REC_LEN];
    // SAFETY: `avail >= REC_LEN` bytes are published (Acquire on head in
    // `readable`), and we hold the consumer lock.
    unsafe { ring.copy_out(tail, &mut hb) };
    let Ok(rec) = decode_record(&hb, ctx.max_message) else {
        return false; // the reader thread reports it
    };
    let payload = if rec.kind == REC_CMA {
        // A CMA record is whole in the ring; its copy never waits for the
        // peer (only for the memory), so the waiting thread makes it
        // itself instead of waking the reader thread.
        if avail < (REC_LEN + CMA_EXT) as u64 || rec.len > POLL_MAX_CMA_BYTES as u64 {
            return false;
        }
        let mut xb = [0u8; CMA_EXT];
        // SAFETY: the whole record is published (checked above).
        unsafe { ring.copy_out(tail + REC_LEN as u64, &mut xb) };
        ring.consume_to(tail + (REC_LEN + CMA_EXT) as u64);
        match copy_cma(link, ctx, &rec, &xb) {
            Ok(p) => p,
            Err(why) => {
                link.report(
                    ctx,
                    CloseReason::Lost(format!("shm ring from the peer: {why}")),
                );
                link.stop();
                return false;
            }
        }
    } else {
        if !matches!(rec.kind, REC_DATA | REC_CONTROL)
            || rec.len > POLL_MAX_PAYLOAD as u64
            || avail < REC_LEN as u64 + rec.len
        {
            return false;
        }
        let mut payload = RecvBuf::new(rec.len as usize);
        // SAFETY: the whole record is published (checked above).
        unsafe { ring.copy_out(tail + REC_LEN as u64, payload.as_mut_slice()) };
        ring.consume_to(tail + REC_LEN as u64 + rec.len);
        payload
    };
    let msg = received(&rec, payload);
    // Called under the consumer lock, so the next record of this link (by
    // poll or reader) is delivered after this one.
    f(link.peer, msg);
    true
}

/// Waits, on a thread of its own, until the peers copied the CMA payloads
/// this rank sent them, or [`CMA_CLOSE_WAIT`] passed.
async fn drain_kept(links: &[Arc<Link>]) {
    if links.iter().all(|l| l.kept_empty()) {
        return;
    }
    let (tx, rx) = oneshot::channel();
    let links = links.to_vec();
    let spawned = std::thread::Builder::new()
        .name("zccl-shm-drain".into())
        .spawn(move || {
            let until = Instant::now() + CMA_CLOSE_WAIT;
            for l in &links {
                while !l.kept_empty() && Instant::now() < until {
                    if l.reap().is_err() {
                        break;
                    }
                    if !l.kept_empty() {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            }
            let _ = tx.send(());
        });
    if spawned.is_ok() {
        let _ = rx.await;
    }
}

impl Transport for ShmTransport {
    fn name(&self) -> &'static str {
        "shm"
    }

    fn send(&self, peer: u32, msg: Message) -> Result<(), TransportError> {
        let link = self.link(peer).ok_or(TransportError::NoSuchPeer(peer))?;
        if self.ctx.closing.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        if link.release_pending() {
            // The reader thread does it too; this only frees memory sooner.
            let _ = link.reap();
        }
        let len = msg.payload.len();
        if (len <= INLINE_MAX || link.use_cma(&msg))
            && link.backlog.load(Ordering::Acquire) == 0
            && let Ok(_producer) = link.producer.try_lock()
            && link.backlog.load(Ordering::Acquire) == 0
            && link.out_ring.free() >= record_bytes(link, &msg) as u64
        {
            // Fast path: the ring has room and nothing is queued before this
            // message, so write it here (never waits) instead of handing it
            // to the writer thread (one thread wake-up less per message).
            return match write_msg(link, &msg) {
                Ok(()) => Ok(()),
                Err(RingStop::Closed) => Err(TransportError::Closed),
                Err(RingStop::Corrupt(why)) => {
                    link.report(
                        &self.ctx,
                        CloseReason::Lost(format!("shm ring to the peer: {why}")),
                    );
                    Err(TransportError::PeerGone(peer))
                }
            };
        }
        let tx = link.tx.lock().expect("shm tx");
        let tx = tx.as_ref().ok_or(TransportError::Closed)?;
        link.backlog.fetch_add(1, Ordering::AcqRel);
        tx.send(Out::Msg(msg))
            // The writer thread stopped on a corrupt ring and reported the peer.
            .map_err(|_| TransportError::PeerGone(peer))
    }

    /// A lent message that goes by CMA is sent as it is (only the peer
    /// copies its payload); any other is copied first.
    fn send_lent(&self, peer: u32, mut msg: Message) -> Result<(), TransportError> {
        let link = self.link(peer).ok_or(TransportError::NoSuchPeer(peer))?;
        if !link.use_cma(&msg) {
            msg.payload = Bytes::copy_from_slice(&msg.payload);
        }
        self.send(peer, msg)
    }

    fn withdraw(&self, peer: u32) {
        if let Some(link) = self.link(peer) {
            link.withdraw();
        }
    }

    fn path(&self, peer: u32) -> Option<PeerPath> {
        self.link(peer).map(|l| PeerPath::Shm {
            segment: l.path.clone(),
            control: None,
        })
    }

    fn set_deliver(&self, hook: crate::Deliver) {
        let _ = self.ctx.deliver.set(hook);
    }

    fn landing(&self) -> Option<Arc<crate::landing::Landing>> {
        Some(self.ctx.landing.clone())
    }

    fn set_polling(&self, on: bool) {
        for l in &self.live {
            let r = &l.in_ring;
            if on {
                r.polling().fetch_add(1, Ordering::SeqCst);
            } else {
                r.polling().fetch_sub(1, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                // A record a producer left to us while we polled, or a
                // release of our CMA payloads: the reader thread takes it
                // from here.
                if !matches!(r.pending(), Ok(false)) || l.release_pending() {
                    r.notify_reader();
                }
            }
        }
    }

    fn poll(&self, max: usize, f: &mut dyn FnMut(u32, Message)) -> usize {
        let n = self.live.len();
        if n == 0 || max == 0 {
            return 0;
        }
        let start = self.poll_next.fetch_add(1, Ordering::Relaxed) % n;
        // Payloads the peers copied meanwhile (they do not wake our
        // reader thread for that while we poll).
        for l in &self.live {
            if l.release_pending() && l.reap().is_err() {
                // An impossible count: the reader thread reports it.
                l.in_ring.notify_reader();
            }
        }
        let mut got = 0;
        // Rounds of at most one message per link, so that a busy peer
        // cannot starve the others.
        loop {
            let before = got;
            for i in 0..n {
                if got == max {
                    return got;
                }
                if poll_link(&self.live[(start + i) % n], &self.ctx, f) {
                    got += 1;
                }
            }
            if got == before {
                return got;
            }
        }
    }

    fn close(&self, reason: GoodbyeReason) -> BoxFuture {
        let first = !self.ctx.closing.swap(true, Ordering::AcqRel);
        let links = self.live.clone();
        Box::pin(async move {
            let clean = matches!(reason, GoodbyeReason::Clean);
            if first {
                match reason {
                    GoodbyeReason::Clean => {
                        // The goodbye record follows everything queued.
                        for l in &links {
                            if let Some(tx) = l.tx.lock().expect("shm tx").take() {
                                let _ = tx.send(Out::Goodbye);
                            }
                        }
                    }
                    GoodbyeReason::Abort { .. } => {
                        for l in &links {
                            l.stop();
                        }
                    }
                }
            }
            // Writers finish (clean) or stop (abort); then stop the readers.
            // If this future is dropped early, Drop of the transport stops all.
            let mut waits = Vec::new();
            for l in &links {
                let mut d = l.done.lock().expect("shm done");
                if !d.is_empty() {
                    waits.push(d.remove(0));
                }
            }
            for w in waits {
                let _ = w.await;
            }
            if clean {
                // The peers read our CMA payloads from our memory: let them
                // finish before this rank may free it.
                drain_kept(&links).await;
            } else {
                // An abort does not wait for them: withdraw them (a peer
                // still copying rejects what it copied, so memory this
                // process reuses is never delivered as data) and drop them.
                for l in &links {
                    l.withdraw();
                }
            }
            let mut readers = Vec::new();
            for l in &links {
                l.stop();
                readers.extend(l.done.lock().expect("shm done").drain(..));
            }
            for r in readers {
                let _ = r.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject() {
        let r = encode_record(REC_DATA, 6, 7, 9, 1 << 40, 123);
        let d = decode_record(&r, 1000).unwrap();
        assert_eq!(
            (d.kind, d.dtype, d.comm, d.channel, d.seq, d.len),
            (REC_DATA, 6, 7, 9, 1 << 40, 123)
        );
        assert!(decode_record(&encode_record(REC_DATA, 0, 0, 0, 0, 1001), 1000).is_err());
        assert!(decode_record(&encode_record(REC_CMA, 0, 0, 0, 0, 1001), 1000).is_err());
        assert!(decode_record(&encode_record(REC_GOODBYE, 0, 0, 0, 0, 1), 1000).is_err());
        assert!(decode_record(&encode_record(9, 0, 0, 0, 0, 0), 1000).is_err());
        let mut bad = r;
        bad[0] = b'X';
        assert!(decode_record(&bad, 1000).is_err());
    }

    #[test]
    fn cma_extensions_round_trip_and_reject() {
        let e = CmaExt {
            addr: 0x7f00_0000_1000,
            number: 3,
            pid: 42,
        };
        assert_eq!(decode_cma(&encode_cma(&e), 1 << 20).unwrap(), e);
        let mut b = encode_cma(&e);
        b[31] = 1;
        assert!(decode_cma(&b, 10).unwrap_err().contains("reserved"));
        let zero = CmaExt { addr: 0, ..e };
        assert!(decode_cma(&encode_cma(&zero), 10).is_err());
        let wraps = CmaExt {
            addr: u64::MAX - 4,
            ..e
        };
        assert!(
            decode_cma(&encode_cma(&wraps), 10)
                .unwrap_err()
                .contains("impossible address")
        );
    }

    #[test]
    fn names_and_tags() {
        assert!(valid_tag("abc123"));
        assert!(!valid_tag(""));
        assert!(!valid_tag("a/b"));
        assert!(!valid_tag(&"a".repeat(33)));
        let n = segment_name(1, "t", 2, 3);
        assert!(n.starts_with("/zccl-") && n.ends_with("-t-2-3"), "{n}");
    }

    type Side = (ShmTransport, mpsc::UnboundedReceiver<TransportEvent>);

    /// Ranks 0 and 1 of a fresh job, as threads of this process.
    fn pair(cfg0: ShmConfig, cfg1: ShmConfig) -> (Side, Side) {
        static N: AtomicU32 = AtomicU32::new(0);
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&std::process::id().to_le_bytes());
        b[4..8].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        b[8] = 0x5e;
        let job = job_tag(&JobSecret::from_bytes(b));
        let start = |rank: u32, config: ShmConfig| {
            std::thread::spawn(move || {
                let (tx, rx) = mpsc::unbounded_channel();
                let setup = ShmSetup {
                    rank,
                    world_size: 2,
                    job,
                    tags: vec![Some("u0".into()), Some("u1".into())],
                    peers: vec![1 - rank],
                    config,
                    setup_timeout: Duration::from_secs(10),
                };
                (ShmTransport::establish(setup, tx).unwrap(), rx)
            })
        };
        let (a, b) = (start(0, cfg0), start(1, cfg1));
        (a.join().unwrap(), b.join().unwrap())
    }

    fn cfg() -> ShmConfig {
        ShmConfig {
            max_message: 64 << 20,
            ..ShmConfig::default()
        }
    }

    fn next(rx: &mut mpsc::UnboundedReceiver<TransportEvent>) -> TransportEvent {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.try_recv() {
                Ok(e) => return e,
                Err(mpsc::error::TryRecvError::Empty) => {
                    assert!(Instant::now() < until, "no event within 10 s");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Expects the next event to report `peer` lost, for a reason
    /// containing `want`.
    fn expect_lost(rx: &mut mpsc::UnboundedReceiver<TransportEvent>, peer: u32, want: &str) {
        match next(rx) {
            TransportEvent::PeerClosed {
                peer: p,
                reason: CloseReason::Lost(why),
                ..
            } if p == peer => assert!(why.contains(want), "{why:?} lacks {want:?}"),
            other => panic!("expected peer {peer} lost ({want}): {other:?}"),
        }
    }

    fn msg(kind: MessageKind, seq: u64, len: usize) -> Message {
        Message {
            kind,
            dtype: 1,
            comm: 2,
            channel: 3,
            seq,
            payload: (0..len)
                .map(|i| (i as u64 ^ seq) as u8)
                .collect::<Vec<_>>()
                .into(),
        }
    }

    #[test]
    fn poll_takes_small_whole_messages_in_order_and_leaves_the_rest() {
        let ((t0, _rx0), (t1, mut rx1)) = pair(cfg(), cfg());
        t1.ctx.pause_readers.store(true, Ordering::Release);
        // Sends that find room are written inline: in the ring on return.
        for i in 0..20 {
            let kind = if i % 3 == 0 {
                MessageKind::Control
            } else {
                MessageKind::Data
            };
            t0.send(1, msg(kind, i, i as usize * 200)).unwrap();
        }
        t0.send(1, msg(MessageKind::Data, 20, POLL_MAX_PAYLOAD + 1))
            .unwrap();
        for i in 21..26 {
            t0.send(1, msg(MessageKind::Data, i, 8)).unwrap();
        }
        let mut got = Vec::new();
        assert_eq!(t1.poll(3, &mut |p, m| got.push((p, m))), 3);
        assert_eq!(t1.poll(100, &mut |p, m| got.push((p, m))), 17);
        // The large message blocks the tail: nothing more for polls.
        assert_eq!(t1.poll(100, &mut |p, m| got.push((p, m))), 0);
        for (i, (p, m)) in got.iter().enumerate() {
            assert_eq!(*p, 0);
            let kind = if i % 3 == 0 {
                MessageKind::Control
            } else {
                MessageKind::Data
            };
            assert_eq!(*m, msg(kind, i as u64, i * 200));
        }
        assert!(rx1.try_recv().is_err(), "polled messages are no events");
        // The reader thread takes the rest, in order.
        t1.ctx.pause_readers.store(false, Ordering::Release);
        for i in 20..26 {
            match next(&mut rx1) {
                TransportEvent::Message { peer: 0, msg: m } => {
                    let len = if i == 20 { POLL_MAX_PAYLOAD + 1 } else { 8 };
                    assert_eq!(m, msg(MessageKind::Data, i, len));
                }
                other => panic!("{other:?}"),
            }
        }
        // A goodbye is the reader's too.
        t1.ctx.pause_readers.store(true, Ordering::Release);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(t0.close(GoodbyeReason::Clean));
        assert_eq!(t1.poll(100, &mut |_, _| panic!("no message")), 0);
        t1.ctx.pause_readers.store(false, Ordering::Release);
        assert!(matches!(
            next(&mut rx1),
            TransportEvent::PeerClosed {
                peer: 0,
                reason: CloseReason::Clean,
                ..
            }
        ));
    }

    /// Writes a raw record (header, then `ext`) from rank 0 to rank 1, then
    /// expects rank 1 to report rank 0 lost with a reason containing `want`.
    fn refused(cfg1: ShmConfig, header: [u8; REC_LEN], ext: &[u8], want: &str) {
        let ((t0, _rx0), (t1, mut rx1)) = pair(cfg(), cfg1);
        let link = t0.link(1).unwrap();
        {
            let _p = lock(&link.producer);
            link.out_ring.write_all(&header, &link.stop).unwrap();
            link.out_ring.write_all(ext, &link.stop).unwrap();
        }
        expect_lost(&mut rx1, 0, want);
        // The link is finished for polls too.
        assert_eq!(t1.poll(10, &mut |_, _| panic!("no message")), 0);
        drop(t1);
    }

    #[test]
    fn corrupt_cma_records_close_the_link_as_lost() {
        let buf = vec![7u8; 1 << 20];
        let pid = std::process::id();
        let hdr = |len: u64| encode_record(REC_CMA, 0, 0, 0, 0, len);
        let ext = |addr: u64, number: u64, pid: u32| encode_cma(&CmaExt { addr, number, pid });
        let at = buf.as_ptr() as u64;
        // The sender's buffer is not mapped.
        refused(cfg(), hdr(4096), &ext(8, 1, pid), "not mapped");
        // Another pid than the peer's.
        refused(cfg(), hdr(16), &ext(at, 1, pid + 1), "names pid");
        // Out of sequence.
        refused(cfg(), hdr(16), &ext(at, 2, pid), "number 2 where 1 was due");
        // Too long.
        refused(cfg(), hdr(65 << 20), &ext(at, 1, pid), "exceeds the limit");
        // Address range wraps.
        refused(
            cfg(),
            hdr(16),
            &ext(u64::MAX - 4, 1, pid),
            "impossible address",
        );
        // Reserved bytes set.
        let mut x = ext(at, 1, pid);
        x[25] = 1;
        refused(cfg(), hdr(16), &x, "reserved");
        // To a rank that does not read CMA.
        let off = ShmConfig {
            cma_min_bytes: 0,
            ..cfg()
        };
        refused(off, hdr(16), &ext(at, 1, pid), "does not read by CMA");
        // A sound record passes (the control case of the above).
        let ((t0, _rx0), (_t1, mut rx1)) = pair(cfg(), cfg());
        let link = t0.link(1).unwrap();
        {
            let _p = lock(&link.producer);
            link.out_ring.write_all(&hdr(16), &link.stop).unwrap();
            link.out_ring
                .write_all(&ext(at, 1, pid), &link.stop)
                .unwrap();
        }
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg } => assert_eq!(&msg.payload[..], &buf[..16]),
            other => panic!("{other:?}"),
        }
    }

    /// A payload whose drop is observable (what a lent payload's owner is).
    struct Watched(Arc<Vec<u8>>, Arc<AtomicBool>);
    impl AsRef<[u8]> for Watched {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    impl Drop for Watched {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }

    /// A message whose payload reports its drop; the memory itself stays
    /// mapped while the returned `Arc<Vec<u8>>` lives (as a lender's does).
    fn watched(seq: u64, len: usize) -> (Message, Arc<AtomicBool>, Arc<Vec<u8>>) {
        let mut m = msg(MessageKind::Data, seq, len);
        let dropped = Arc::new(AtomicBool::new(false));
        let mem = Arc::new(m.payload.to_vec());
        m.payload = Bytes::from_owner(Watched(mem.clone(), dropped.clone()));
        (m, dropped, mem)
    }

    fn wait_true(b: &AtomicBool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !b.load(Ordering::SeqCst) {
            assert!(Instant::now() < until, "not within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn lent_payloads_are_read_only_by_the_peer_and_released_after_its_copy() {
        let ((t0, _rx0), (t1, mut rx1)) = pair(cfg(), cfg());
        t1.ctx.pause_readers.store(true, Ordering::Release);
        // Below the CMA threshold a lent payload is copied at once.
        let (small, small_dropped, _mem) = watched(0, 1000);
        let want_small = msg(MessageKind::Data, 0, 1000);
        t0.send_lent(1, small).unwrap();
        assert!(small_dropped.load(Ordering::SeqCst), "copied, so dropped");
        // Above it, only the peer copies it: kept until it did.
        let (big, big_dropped, _mem) = watched(1, CMA_MIN_BYTES * 3);
        let want_big = msg(MessageKind::Data, 1, CMA_MIN_BYTES * 3);
        t0.send_lent(1, big).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!big_dropped.load(Ordering::SeqCst), "kept for the peer");
        t1.ctx.pause_readers.store(false, Ordering::Release);
        for want in [want_small, want_big] {
            match next(&mut rx1) {
                TransportEvent::Message { peer: 0, msg: m } => assert_eq!(m, want),
                other => panic!("{other:?}"),
            }
        }
        wait_true(&big_dropped);
    }

    #[test]
    fn polls_copy_cma_records_up_to_their_bound_and_reap_released_payloads() {
        let ((t0, _rx0), (t1, mut rx1)) = pair(cfg(), cfg());
        // Neither reader thread runs: whatever happens is the polls' doing.
        t0.ctx.pause_readers.store(true, Ordering::Release);
        t1.ctx.pause_readers.store(true, Ordering::Release);
        t1.set_polling(true);
        // A sender that polls is not woken for releases: its polls reap.
        t0.set_polling(true);
        let (small, small_dropped, _m1) = watched(1, POLL_MAX_CMA_BYTES);
        let (big, big_dropped, _m2) = watched(2, POLL_MAX_CMA_BYTES + 1);
        t0.send(1, small).unwrap();
        t0.send(1, big).unwrap();
        let mut got = Vec::new();
        assert_eq!(t1.poll(10, &mut |p, m| got.push((p, m))), 1);
        assert_eq!(
            got,
            vec![(0, msg(MessageKind::Data, 1, POLL_MAX_CMA_BYTES))]
        );
        // The larger record stays for the reader thread.
        assert_eq!(
            t1.poll(10, &mut |_, _| panic!("polled a large CMA record")),
            0
        );
        // The sender's poll drops the payload the peer copied.
        std::thread::sleep(Duration::from_millis(20));
        assert!(!small_dropped.load(Ordering::SeqCst));
        t0.poll(10, &mut |_, _| panic!("no message for rank 0"));
        assert!(small_dropped.load(Ordering::SeqCst), "reaped by the poll");
        assert!(!big_dropped.load(Ordering::SeqCst));
        t0.set_polling(false);
        t1.set_polling(false);
        t0.ctx.pause_readers.store(false, Ordering::Release);
        t1.ctx.pause_readers.store(false, Ordering::Release);
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg: m } => {
                assert_eq!(m, msg(MessageKind::Data, 2, POLL_MAX_CMA_BYTES + 1))
            }
            other => panic!("{other:?}"),
        }
        wait_true(&big_dropped);
    }

    #[test]
    fn a_withdrawn_lent_payload_is_never_delivered() {
        for abort in [false, true] {
            let ((t0, _rx0), (t1, mut rx1)) = pair(cfg(), cfg());
            t1.ctx.pause_readers.store(true, Ordering::Release);
            let (big, dropped, _mem) = watched(1, CMA_MIN_BYTES * 2);
            t0.send_lent(1, big).unwrap();
            if abort {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(t0.close(GoodbyeReason::Abort {
                    cause_rank: None,
                    message: "test".into(),
                }));
            } else {
                t0.withdraw(1);
            }
            // Released at once: the owner may reuse the memory.
            assert!(dropped.load(Ordering::SeqCst), "abort {abort}");
            t1.ctx.pause_readers.store(false, Ordering::Release);
            expect_lost(&mut rx1, 0, "withdrew CMA payload 1");
        }
    }

    #[test]
    fn an_impossible_release_count_closes_the_link_as_lost() {
        let ((_t0, mut rx0), (t1, _rx1)) = pair(cfg(), cfg());
        let link = t1.link(0).unwrap();
        link.in_ring.cma_done().store(5, Ordering::Release);
        link.out_ring.notify_reader();
        expect_lost(&mut rx0, 1, "copied 5 CMA payloads of 0");
    }

    #[test]
    fn cma_is_probed_in_both_directions() {
        let ((t0, _rx0), (t1, _rx1)) = pair(cfg(), cfg());
        let until = Instant::now() + Duration::from_secs(5);
        // Rank 0's probe of rank 1 may end after rank 1's setup returned.
        while !t1.cma_to(0) {
            assert!(Instant::now() < until);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(t0.cma_to(1) && t0.cma_from(1) && t1.cma_from(0));
        let off = ShmConfig {
            cma_min_bytes: 0,
            ..cfg()
        };
        let ((t0, _rx0), (t1, _rx1)) = pair(cfg(), off);
        assert!(!t0.cma_to(1) && !t1.cma_from(0) && !t1.cma_to(0));
        // Rank 0 still reads rank 1's CMA records; rank 1 sends none.
        assert!(t0.cma_from(1));
    }
}

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
//! * **Waiting.** A thread that finds the ring empty (reader) or full
//!   (writer) spins for [`ShmConfig::spin_iterations`] rounds of
//!   `spin_loop()` (microseconds: on a 2-core machine a spinning rank would
//!   starve its peer), then sleeps with `FUTEX_WAIT` on a sequence word in the
//!   shared segment, with a timeout of [`ShmConfig::wait_slice`] so that
//!   closing is noticed. The other side bumps the word and calls `FUTEX_WAKE`
//!   only when the waiter announced itself.
//! * **Threads.** Per peer, one writer thread (fed by an unbounded queue, so
//!   [`Transport::send`] never blocks) and one reader thread that delivers
//!   whole messages as [`TransportEvent::Message`]. The rings are always
//!   drained by the reader thread, whatever the application does.
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
}

impl Default for ShmConfig {
    fn default() -> Self {
        Self {
            ring_bytes: 4 << 20,
            spin_iterations: 200,
            wait_slice: Duration::from_millis(20),
            max_message: 16 << 30,
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

const MAGIC: u64 = u64::from_le_bytes(*b"ZCCLSHM1");
const HEADER: usize = 4096;
const OFF_MAGIC: usize = 0;
const OFF_RING_BYTES: usize = 8;
const OFF_JOB: usize = 16;
const OFF_LO: usize = 24;
const OFF_HI: usize = 28;
const OFF_ATTACHED: usize = 32;
const OFF_CREATOR_PID: usize = 36;
const OFF_OPENER_PID: usize = 40;
/// Ring control blocks: ring 0 carries `lo → hi`, ring 1 `hi → lo`.
const CTL: [usize; 2] = [256, 512];
// Within a control block: producer-written line, then consumer-written line.
const W_HEAD: usize = 0;
const W_DATA_SEQ: usize = 8;
const W_WAITING: usize = 12;
const R_TAIL: usize = 64;
const R_SPACE_SEQ: usize = 72;
const R_WAITING: usize = 76;

const REC_LEN: usize = 32;
const REC_MARK: u8 = b'R';
const REC_DATA: u8 = 1;
const REC_CONTROL: u8 = 2;
const REC_GOODBYE: u8 = 3;
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

    /// Wakes whatever thread of ours waits on this ring (used on close).
    fn wake_all(&self) {
        self.data_seq().fetch_add(1, Ordering::SeqCst);
        futex_wake(self.data_seq());
        self.space_seq().fetch_add(1, Ordering::SeqCst);
        futex_wake(self.space_seq());
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
    fn write_all(&self, mut buf: &[u8], stop: &AtomicBool) -> Result<(), RingStop> {
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
            self.data_seq().fetch_add(1, Ordering::SeqCst);
            if self.reader_waiting().load(Ordering::SeqCst) != 0 {
                futex_wake(self.data_seq());
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Consumer: fills `out` from the ring, waiting for data as needed.
    fn read_exact(&self, out: &mut [u8], stop: &AtomicBool) -> Result<(), RingStop> {
        let cap = self.cap;
        let mut tail = self.tail().load(Ordering::Relaxed);
        let mut off = 0usize;
        while off < out.len() {
            let avail = self.wait(self.data_seq(), self.reader_waiting(), stop, || {
                let head = self.head().load(Ordering::Acquire);
                if head < tail || head - tail > cap {
                    return Err(RingStop::Corrupt(format!(
                        "ring positions head {head} tail {tail} (capacity {cap})"
                    )));
                }
                Ok((head > tail).then_some(head - tail))
            })?;
            let n = (avail as usize).min(out.len() - off);
            let idx = (tail % cap) as usize;
            let first = n.min(cap as usize - idx);
            // SAFETY: the producer published these bytes (Acquire on head)
            // and does not overwrite them until `tail` moves past them.
            unsafe {
                std::ptr::copy_nonoverlapping(self.data.add(idx), out.as_mut_ptr().add(off), first);
                std::ptr::copy_nonoverlapping(
                    self.data,
                    out.as_mut_ptr().add(off + first),
                    n - first,
                );
            }
            tail += n as u64;
            self.tail().store(tail, Ordering::Release);
            self.space_seq().fetch_add(1, Ordering::SeqCst);
            if self.writer_waiting().load(Ordering::SeqCst) != 0 {
                futex_wake(self.space_seq());
            }
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
        REC_DATA if r.len <= max_message => Ok(r),
        REC_CONTROL if r.len <= MAX_CONTROL => Ok(r),
        REC_GOODBYE if r.len == 0 => Ok(r),
        REC_DATA | REC_CONTROL | REC_GOODBYE => Err(format!(
            "record of {} bytes exceeds the limit of {max_message} bytes",
            r.len
        )),
        k => Err(format!("unknown record kind {k}")),
    }
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
    /// sender writing a small message inline).
    producer: Mutex<()>,
    /// Messages queued for the writer thread and not yet in the ring: a
    /// sender may write inline only when it is 0, which keeps messages in
    /// send order.
    backlog: AtomicUsize,
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
}

/// The shared-memory implementation of [`Transport`] (see the module docs).
///
/// Dropping it stops its threads (within [`ShmConfig::wait_slice`]); the
/// mappings go with the last thread.
pub struct ShmTransport {
    ctx: Arc<Ctx>,
    links: Vec<Option<Arc<Link>>>,
}

impl std::fmt::Debug for ShmTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmTransport")
            .field("rank", &self.ctx.rank)
            .field(
                "peers",
                &self
                    .links
                    .iter()
                    .flatten()
                    .map(|l| l.peer)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ShmTransport {
    /// Creates, opens and maps the segments of every peer in `setup.peers`,
    /// waits until each peer mapped its side (the names are then unlinked),
    /// and starts the reader and writer threads. Blocks until done or
    /// `setup.setup_timeout`; every peer listed must run this concurrently.
    ///
    /// Incoming messages and clean goodbyes are sent on `events`.
    pub fn establish(
        setup: ShmSetup,
        events: mpsc::UnboundedSender<TransportEvent>,
    ) -> Result<Self, TransportError> {
        let deadline = Instant::now() + setup.setup_timeout;
        let rank = setup.rank;
        let cfg = &setup.config;
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
        let mut segs: Vec<(u32, Arc<Segment>, u64)> = Vec::new();
        // 1. Create the segments we own (we are the lower rank).
        for &p in setup.peers.iter().filter(|&&p| p > rank) {
            let name = segment_name(setup.job, tag_of(rank)?, rank, p);
            segs.push((p, create_segment(&name, setup.job, rank, p, cap)?, cap));
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
            seg.u32_at(OFF_ATTACHED).store(1, Ordering::Release);
            futex_wake(seg.u32_at(OFF_ATTACHED));
            segs.push((p, seg, pcap));
        }
        // 3. Wait until the peers mapped ours (they unlinked the names).
        for (p, seg, _) in segs.iter().filter(|(p, _, _)| *p > rank) {
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
        }
        // 4. Start the threads.
        let ctx = Arc::new(Ctx {
            rank,
            events,
            closing: AtomicBool::new(false),
            max_message: cfg.max_message,
        });
        let mut links: Vec<Option<Arc<Link>>> = (0..setup.world_size).map(|_| None).collect();
        for (p, seg, pcap) in segs {
            // Ring 0 carries lo -> hi.
            let (out_dir, in_dir) = if rank < p { (0, 1) } else { (1, 0) };
            let (tx, rx) = std::sync::mpsc::channel();
            let (wdone_tx, wdone_rx) = oneshot::channel();
            let (rdone_tx, rdone_rx) = oneshot::channel();
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
                backlog: AtomicUsize::new(0),
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
            debug!(rank, peer = p, path = %link.path, ring_bytes = pcap, "shm link up");
            links[p as usize] = Some(link);
        }
        info!(
            rank,
            peers = ?setup.peers,
            ring_bytes = cap,
            "shm transport ready"
        );
        Ok(Self { ctx, links })
    }

    fn link(&self, peer: u32) -> Option<&Arc<Link>> {
        self.links.get(peer as usize)?.as_ref()
    }

    fn stop_all(&self) {
        self.ctx.closing.store(true, Ordering::Release);
        for l in self.links.iter().flatten() {
            l.stop();
        }
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

/// Writes one message record (header and payload) into `ring`; the caller
/// holds the link's producer lock.
/// Writes one message into the ring, counting data payloads in the metrics
/// (`nic="shm"`).
fn write_msg(ring: &Ring, m: &Message, stop: &AtomicBool) -> Result<(), RingStop> {
    let res = write_msg_inner(ring, m, stop);
    if res.is_ok() && m.kind == MessageKind::Data {
        crate::metrics::Metrics::global().nic_transmit("shm", None, m.payload.len() as u64);
    }
    res
}

fn write_msg_inner(ring: &Ring, m: &Message, stop: &AtomicBool) -> Result<(), RingStop> {
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
    if m.payload.len() <= 4096 {
        let mut buf = [0u8; REC_LEN + 4096];
        buf[..REC_LEN].copy_from_slice(&rec);
        buf[REC_LEN..REC_LEN + m.payload.len()].copy_from_slice(&m.payload);
        ring.write_all(&buf[..REC_LEN + m.payload.len()], stop)
    } else {
        ring.write_all(&rec, stop)
            .and_then(|()| ring.write_all(&m.payload, stop))
    }
}

fn writer(link: &Link, ctx: &Ctx, rx: std::sync::mpsc::Receiver<Out>) {
    let ring = &link.out_ring;
    let stop = &*link.stop;
    while let Ok(out) = rx.recv() {
        let _producer = link.producer.lock().expect("shm producer");
        let res = match out {
            Out::Goodbye => {
                let rec = encode_record(REC_GOODBYE, 0, 0, 0, 0, 0);
                let _ = ring.write_all(&rec, stop);
                return;
            }
            Out::Msg(m) => {
                let r = write_msg(ring, &m, stop);
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
        let mut hb = [0u8; REC_LEN];
        match ring.read_exact(&mut hb, stop) {
            Ok(()) => {}
            Err(RingStop::Closed) => return,
            Err(RingStop::Corrupt(why)) => return lost(why),
        }
        let rec = match decode_record(&hb, ctx.max_message) {
            Ok(r) => r,
            Err(why) => return lost(why),
        };
        if rec.kind == REC_GOODBYE {
            link.report(ctx, CloseReason::Clean);
            return;
        }
        // Straight from the ring into the buffer handed up (no zeroing, no
        // further copy; recycled when the receiver drops it).
        let mut payload = RecvBuf::new(rec.len as usize);
        match ring.read_exact(payload.as_mut_slice(), stop) {
            Ok(()) => {}
            Err(RingStop::Closed) => return,
            Err(RingStop::Corrupt(why)) => return lost(why),
        }
        if rec.kind == REC_DATA {
            crate::metrics::Metrics::global().nic_receive("shm", None, rec.len);
        }
        let msg = Message {
            kind: if rec.kind == REC_DATA {
                MessageKind::Data
            } else {
                MessageKind::Control
            },
            dtype: rec.dtype,
            comm: rec.comm,
            channel: rec.channel,
            seq: rec.seq,
            payload: payload.into_bytes(),
        };
        if ctx
            .events
            .send(TransportEvent::Message {
                peer: link.peer,
                msg,
            })
            .is_err()
        {
            return;
        }
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
        let len = msg.payload.len();
        if len <= INLINE_MAX
            && link.backlog.load(Ordering::Acquire) == 0
            && let Ok(_producer) = link.producer.try_lock()
            && link.backlog.load(Ordering::Acquire) == 0
            && link.out_ring.free() >= (REC_LEN + len) as u64
        {
            // Fast path: the ring has room and nothing is queued before this
            // message, so write it here (never waits) instead of handing it
            // to the writer thread (one thread wake-up less per message).
            return match write_msg(&link.out_ring, &msg, &link.stop) {
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

    fn path(&self, peer: u32) -> Option<PeerPath> {
        self.link(peer).map(|l| PeerPath::Shm {
            segment: l.path.clone(),
            control: None,
        })
    }

    fn close(&self, reason: GoodbyeReason) -> BoxFuture {
        let first = !self.ctx.closing.swap(true, Ordering::AcqRel);
        let links: Vec<Arc<Link>> = self.links.iter().flatten().cloned().collect();
        Box::pin(async move {
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
        assert!(decode_record(&encode_record(REC_GOODBYE, 0, 0, 0, 0, 1), 1000).is_err());
        assert!(decode_record(&encode_record(9, 0, 0, 0, 0, 0), 1000).is_err());
        let mut bad = r;
        bad[0] = b'X';
        assert!(decode_record(&bad, 1000).is_err());
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
}

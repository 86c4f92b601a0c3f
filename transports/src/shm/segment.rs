//! Shared-memory segments: which ranks may share one ([`host_identity`]),
//! what a segment is called ([`job_tag`], [`segment_name`]), the layout of
//! its header page, and creating, opening, mapping and unlinking it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use tracing::warn;

use crate::TransportError;
use crate::handshake::JobSecret;

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

// ---------------------------------------------------------------------------
// Segment layout: a header page (these words, the two rings' control blocks
// at `CTL`, then each side's affinity mask at `OFF_CREATOR_MASK` and
// `OFF_OPENER_MASK`), then the data of ring 0 and of ring 1, each of the
// ring size the header records.

// `ZCCLSHM5`: ring records' header byte 12 carries the streamed flag and
// the consumer line the reader's streaming choice (`stream_choice.rs`); a
// build before them never takes such a segment for one it can open
// (as for one not initialised yet) instead of closing links on a record
// it reads as corrupt.
const MAGIC: u64 = u64::from_le_bytes(*b"ZCCLSHM5");
pub(super) const HEADER: usize = 4096;
const OFF_MAGIC: usize = 0;
const OFF_RING_BYTES: usize = 8;
const OFF_JOB: usize = 16;
const OFF_LO: usize = 24;
const OFF_HI: usize = 28;
pub(super) const OFF_ATTACHED: usize = 32;
pub(super) const OFF_CREATOR_PID: usize = 36;
pub(super) const OFF_OPENER_PID: usize = 40;
/// Address and value of each side's CMA probe word (see [`crate::cma`]).
pub(super) const OFF_CREATOR_PROBE: usize = 48;
pub(super) const OFF_CREATOR_PROBE_VAL: usize = 56;
pub(super) const OFF_OPENER_PROBE: usize = 64;
pub(super) const OFF_OPENER_PROBE_VAL: usize = 72;
/// Ring control blocks: ring 0 carries `lo → hi`, ring 1 `hi → lo`.
pub(super) const CTL: [usize; 2] = [256, 512];
/// Each side's affinity mask ([`CpuMask`](super::cpus::CpuMask)).
pub(super) const OFF_CREATOR_MASK: usize = 1024;
pub(super) const OFF_OPENER_MASK: usize = OFF_CREATOR_MASK + super::cpus::CpuMask::BYTES;
// The masks sit past both control blocks (256 bytes each) and inside the header.
const _: () = assert!(
    OFF_CREATOR_MASK >= CTL[1] + 256 && OFF_OPENER_MASK + super::cpus::CpuMask::BYTES <= HEADER
);

/// One mapped segment. Unlinks its name on drop unless it is already gone.
pub(super) struct Segment {
    map: MmapRaw,
    pub(super) name: String,
    pub(super) unlinked: AtomicBool,
}

impl Segment {
    #[inline]
    pub(super) fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Maps every page of the segment into this process now
    /// (`MADV_POPULATE_WRITE`, Linux 5.14+), instead of one fault per page
    /// on the rings' first lap: a 4 MiB ring's 1024 pages cost each side
    /// about 2 ms there, 100 µs an op for 64 KiB messages until the ring
    /// has gone round once. The ring this rank writes (`out_dir`) first, so
    /// that a page the two ranks have not touched yet is allocated by its
    /// producer (its NUMA node) unless the peer got to it first. Best
    /// effort: on failure (older kernel: `EINVAL`; `/dev/shm` full:
    /// `EFAULT`, `ENOMEM`) the pages fault in as before; the error is
    /// returned.
    pub(super) fn prefault(&self, out_dir: usize) -> Result<(), Errno> {
        let cap = (self.map.len() - HEADER) / 2;
        let populate = |off: usize, len: usize| {
            // SAFETY: the range lies in this mapping; populating changes
            // which pages are present, not their contents.
            let rc = unsafe {
                libc::madvise(self.base().add(off).cast(), len, libc::MADV_POPULATE_WRITE)
            };
            if rc == 0 { Ok(()) } else { Err(Errno::last()) }
        };
        populate(HEADER + out_dir * cap, cap)?;
        populate(0, self.map.len())
    }

    #[inline]
    pub(super) fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= HEADER);
        // SAFETY: in bounds, aligned (the mapping is page aligned), and only
        // ever accessed atomically by both processes.
        unsafe { &*(self.base().add(off) as *const AtomicU64) }
    }

    #[inline]
    pub(super) fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off.is_multiple_of(4) && off + 4 <= HEADER);
        // SAFETY: as in `u64_at`.
        unsafe { &*(self.base().add(off) as *const AtomicU32) }
    }

    pub(super) fn unlink(&self) {
        if !self.unlinked.swap(true, Ordering::AcqRel)
            && let Err(e) = nix::sys::mman::shm_unlink(self.name.as_str())
            && e != Errno::ENOENT
        {
            warn!("shm_unlink {}: {e}", self.name);
        }
    }
}

/// Smallest ring [`fit_ring_bytes`] shrinks to.
pub(super) const MIN_FIT_RING: u64 = 64 << 10;

/// The ring capacity (bytes per direction) to create segments with, so that
/// the segments of every pair of `local` ranks of this host fit in `free`
/// bytes of `/dev/shm` with a tenth to spare: `wanted`, or halved until they
/// fit (down to [`MIN_FIT_RING`]), else why not. Segments are sparse when
/// created and fill as their rings are used (or at setup, where
/// [`prefault_fits`]), so a `/dev/shm` too small for
/// them (Docker's 64 MiB default and 8 ranks of 4 MiB rings: 28 pairs of
/// 8 MiB) would otherwise end a rank with `SIGBUS` in the middle of a job.
/// Only the creator of a segment chooses its size (the opener reads it), so
/// ranks that see different free space still agree per pair. Pure.
pub(super) fn fit_ring_bytes(wanted: u64, local: u64, free: u64) -> Result<u64, String> {
    let pairs = local * local.saturating_sub(1) / 2;
    let budget = free - free / 10;
    let need = |cap: u64| pairs.saturating_mul(HEADER as u64 + 2 * cap);
    let mut cap = wanted;
    while need(cap) > budget && cap > MIN_FIT_RING {
        cap = (cap / 2).max(MIN_FIT_RING).div_ceil(4096) * 4096;
    }
    if need(cap) <= budget {
        return Ok(cap);
    }
    Err(format!(
        "{} MiB free, but the shared-memory rings of {local} ranks on this host need {} MiB \
         even at {} KiB per ring ({pairs} pairs): enlarge it (docker run --shm-size) or run \
         fewer ranks per host",
        free >> 20,
        need(cap).div_ceil(1 << 20),
        cap >> 10,
    ))
}

/// Most bytes of rings a job's ranks on one host map up front
/// ([`Segment::prefault`]): the rings of up to 8 ranks of 4 MiB rings
/// (28 pairs of 8 MiB, a GPU node's). Above it, pages fault in as the
/// rings are used, which keeps a many-rank host whose pairs do not all
/// talk from holding every ring whole (a mapped page counts in each
/// process's RSS, though the two ranks of a pair share it).
pub(super) const PREFAULT_MAX_BYTES: u64 = 256 << 20;

/// Whether the segments of `local` ranks with rings of `cap` bytes are
/// small enough, all together, to be mapped up front. Pure.
pub(super) fn prefault_fits(local: u64, cap: u64) -> bool {
    let pairs = local * local.saturating_sub(1) / 2;
    pairs.saturating_mul(HEADER as u64 + 2 * cap) <= PREFAULT_MAX_BYTES
}

/// Bytes free in the filesystem of `/dev/shm`, if it can be asked.
pub(super) fn shm_free_bytes() -> Option<u64> {
    let st = nix::sys::statvfs::statvfs("/dev/shm").ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

#[cfg(test)]
impl Segment {
    /// A segment of `len` bytes in this process's own memory (an anonymous
    /// mapping without a name): unit tests of what lives in a segment.
    pub(super) fn anonymous(len: usize) -> Arc<Self> {
        let map = MmapOptions::new()
            .len(len)
            .map_anon()
            .expect("anonymous mapping")
            .into();
        Arc::new(Self {
            map,
            name: String::new(),
            unlinked: AtomicBool::new(true),
        })
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.unlink();
    }
}

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

pub(super) fn create_segment(
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
    super::cpus::CpuMask::own().store(&seg, OFF_CREATOR_MASK);
    seg.u64_at(OFF_MAGIC).store(MAGIC, Ordering::Release);
    Ok(seg)
}

/// One attempt to open and map the segment created by the peer; `Ok(None)`
/// when it does not exist or is not initialised yet.
pub(super) fn try_open_segment(
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn rings_shrink_to_fit_dev_shm_or_say_why_not() {
        let seg = |cap: u64| HEADER as u64 + 2 * cap;
        // Room enough: what was asked for, whatever the rank count.
        assert_eq!(fit_ring_bytes(4 << 20, 4, 1 << 30), Ok(4 << 20));
        assert_eq!(fit_ring_bytes(4 << 20, 1, 0), Ok(4 << 20));
        assert_eq!(fit_ring_bytes(4 << 20, 0, 0), Ok(4 << 20));
        // Docker's 64 MiB and 8 ranks: 28 pairs of 8 MiB do not fit; 1 MiB
        // rings do (28 x 2 MiB + headers = 56.1 MiB, within 90 % of 64).
        let got = fit_ring_bytes(4 << 20, 8, 64 << 20).unwrap();
        assert_eq!(got, 1 << 20);
        assert!(28 * seg(got) <= (64 << 20) * 9 / 10);
        assert!(28 * seg(2 * got) > (64 << 20) * 9 / 10);
        // 4 ranks fit as they are (6 pairs of 8 MiB = 48 MiB).
        assert_eq!(fit_ring_bytes(4 << 20, 4, 64 << 20), Ok(4 << 20));
        // Shrinking keeps whole pages and stops at the minimum.
        let odd = fit_ring_bytes(3 * 4096 * 100, 2, 600 << 10).unwrap();
        assert!(odd.is_multiple_of(4096) && odd >= MIN_FIT_RING, "{odd}");
        assert!(seg(odd) <= (600 << 10) * 9 / 10);
        // Not even the smallest rings fit: an error with the numbers and
        // what to do.
        let why = fit_ring_bytes(4 << 20, 64, 64 << 20).unwrap_err();
        for want in [
            "64 MiB free",
            "64 ranks",
            "2016 pairs",
            "64 KiB per ring",
            "--shm-size",
        ] {
            assert!(why.contains(want), "{why:?} lacks {want:?}");
        }
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

    /// A job of its own for each call (segments of this test process never
    /// meet those of another test or run).
    fn job() -> u64 {
        static N: AtomicU32 = AtomicU32::new(0);
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&std::process::id().to_le_bytes());
        b[4..8].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        b[8] = 0x5e;
        b[9] = 0x9;
        job_tag(&JobSecret::from_bytes(b))
    }

    fn exists(name: &str) -> bool {
        Path::new(&format!("/dev/shm{name}")).exists()
    }

    #[test]
    fn a_segment_is_opened_once_checked_and_then_has_no_name() {
        let job = job();
        let name = segment_name(job, "segtest", 0, 1);
        // Not there yet: the opener keeps waiting.
        assert!(try_open_segment(&name, job, 0, 1).unwrap().is_none());
        let a = create_segment(&name, job, 0, 1, 8192).unwrap();
        assert!(exists(&name));
        // One creator per name.
        assert!(create_segment(&name, job, 0, 1, 8192).is_err());
        // Another job's or another pair's segment is refused, and left alone.
        let other = try_open_segment(&name, job ^ 1, 0, 1).err().unwrap();
        assert!(other.to_string().contains("another job"), "{other}");
        assert!(try_open_segment(&name, job, 0, 2).is_err());
        assert!(exists(&name));
        let (b, cap) = try_open_segment(&name, job, 0, 1).unwrap().unwrap();
        assert_eq!(cap, 8192);
        assert_eq!(
            b.u32_at(OFF_CREATOR_PID).load(Ordering::Relaxed),
            std::process::id()
        );
        // Both mappings are the same memory.
        a.u32_at(OFF_ATTACHED).store(1, Ordering::Release);
        assert_eq!(b.u32_at(OFF_ATTACHED).load(Ordering::Acquire), 1);
        // The opener unlinks the name; the mappings stay.
        b.unlink();
        assert!(!exists(&name));
        assert!(try_open_segment(&name, job, 0, 1).unwrap().is_none());
        a.u64_at(HEADER - 8).store(7, Ordering::Relaxed);
        assert_eq!(b.u64_at(HEADER - 8).load(Ordering::Relaxed), 7);
    }

    /// Pages of `seg` present in memory (`mincore`).
    fn resident(seg: &Segment) -> usize {
        let pages = seg.map.len().div_ceil(4096);
        let mut v = vec![0u8; pages];
        // SAFETY: the range is the mapping; `v` has a byte per page.
        let rc = unsafe { libc::mincore(seg.base().cast(), seg.map.len(), v.as_mut_ptr()) };
        assert_eq!(rc, 0);
        v.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn prefault_maps_every_page_and_keeps_what_is_written() {
        let job = job();
        let name = segment_name(job, "segtest", 4, 5);
        let a = create_segment(&name, job, 4, 5, 1 << 20).unwrap();
        let pages = a.map.len().div_ceil(4096);
        // Sparse when created: only the header's pages were touched.
        assert!(resident(&a) < pages / 2, "{} of {pages}", resident(&a));
        if let Err(e) = a.prefault(0) {
            eprintln!(
                "skipped: MADV_POPULATE_WRITE failed here ({e}: unsupported before Linux 5.14, or /dev/shm full)"
            );
            return;
        }
        assert_eq!(resident(&a), pages);
        assert_eq!(a.u64_at(OFF_MAGIC).load(Ordering::Acquire), MAGIC);
        assert_eq!(a.u64_at(OFF_RING_BYTES).load(Ordering::Relaxed), 1 << 20);
    }

    #[test]
    fn rings_are_mapped_up_front_only_within_the_budget() {
        // Up to 8 ranks of 4 MiB rings, not 9; 32 ranks of 64 KiB rings,
        // not 64; a rank alone has no pair.
        assert!(prefault_fits(8, 4 << 20));
        assert!(!prefault_fits(9, 4 << 20));
        assert!(prefault_fits(32, 64 << 10));
        assert!(!prefault_fits(64, 64 << 10));
        assert!(prefault_fits(1, u64::MAX / 4));
    }

    #[test]
    fn a_dropped_segment_takes_its_name_along() {
        let job = job();
        let name = segment_name(job, "segtest", 2, 3);
        let a = create_segment(&name, job, 2, 3, 4096).unwrap();
        assert!(exists(&name));
        drop(a);
        assert!(!exists(&name));
    }
}

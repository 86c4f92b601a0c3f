//! Receive buffers: where incoming message bytes land, once.
//!
//! A transport reader copies each received byte straight from the socket or
//! the shared-memory ring into a [`RecvBuf`] sized for the whole message, then
//! hands it to the layer above as [`Bytes`] ([`RecvBuf::into_bytes`], no copy).
//! The runtime exposes those bytes as the user's typed buffer without copying
//! them again (the start is aligned to [`RECV_ALIGN`], enough for every
//! element type).
//!
//! * **No zeroing, few page faults.** Large buffers are anonymous mappings
//!   (zero pages from the kernel, no `memset`), advised to use transparent
//!   huge pages (`MADV_HUGEPAGE`; on a kernel in `madvise` mode this turns
//!   16 384 page faults per 64 MiB into 32) and faulted in with one
//!   `MADV_POPULATE_WRITE` (the TCP reader: per chunk, just before reading
//!   it) rather than page by page inside `read`.
//! * **Recycling.** When the last reference to a large buffer is dropped
//!   (typically the user drops the received data), the memory goes back to a
//!   small process-wide pool and the next receive of a similar size reuses
//!   it, already faulted in. The pool holds at most [`POOL_MAX_BUFFERS`]
//!   buffers and [`POOL_MAX_BYTES`] bytes, the most recently returned ones
//!   (the sizes in use now); the oldest are unmapped to make room. Buffers below [`POOL_MIN_BYTES`] come from the global allocator.
//! * A reused buffer holds stale bytes of an earlier message of this process;
//!   readers overwrite every byte before a message is delivered, and a
//!   message is never delivered partially.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Mutex;

use bytes::Bytes;

/// Alignment of the start of every receive buffer (at least the alignment
/// of any element type).
pub const RECV_ALIGN: usize = 16;
/// Buffers at least this large are mapped and recycled.
pub const POOL_MIN_BYTES: usize = 256 << 10;
/// Most buffers kept for reuse.
pub const POOL_MAX_BUFFERS: usize = 16;
/// Most bytes kept for reuse.
pub const POOL_MAX_BYTES: usize = 512 << 20;
const HUGE: usize = 2 << 20;

/// An owned, initialised byte buffer of fixed length (see the module docs).
pub struct RecvBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes reserved: mapping length for mapped buffers, layout size otherwise.
    cap: usize,
    mapped: bool,
}

// SAFETY: the buffer exclusively owns its memory.
unsafe impl Send for RecvBuf {}
// SAFETY: shared access is read-only.
unsafe impl Sync for RecvBuf {}

struct Pooled {
    ptr: NonNull<u8>,
    cap: usize,
}
// SAFETY: pooled memory is owned by the pool alone.
unsafe impl Send for Pooled {}

static POOL: Mutex<Vec<Pooled>> = Mutex::new(Vec::new());

fn map_len(len: usize) -> usize {
    // Round up to 64 KiB so that similar sizes share buffers.
    len.div_ceil(64 << 10) * (64 << 10)
}

fn map_fresh(cap: usize) -> Option<NonNull<u8>> {
    // SAFETY: a private anonymous mapping; checked for failure below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            cap,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    if cap >= HUGE {
        // Advisory only: without THP the kernel ignores it.
        // SAFETY: the range is the mapping just created.
        unsafe { libc::madvise(p, cap, libc::MADV_HUGEPAGE) };
    }
    NonNull::new(p.cast())
}

/// A `Vec` of `len` zero bytes made by `malloc` and a zeroing store, not
/// by `calloc` (which `vec![0; len]` is): glibc's `calloc` skips the
/// thread's cache of freed chunks, where a small buffer freed a moment ago
/// is (2-rank 8-byte all-reduce: 1.4 % of the time in `calloc`). For small
/// buffers made per message; large ones come from a pool.
///
/// ```
/// let v = zccl_transports::recvbuf::small_zeroed(100);
/// assert_eq!(v, vec![0u8; 100]);
/// ```
// `vec![0; len]` is the `calloc` this avoids on purpose.
#[allow(clippy::slow_vector_initialization)]
#[inline]
pub fn small_zeroed(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.resize(len, 0);
    v
}

/// Faults the `len` bytes at `p`, part of a buffer from
/// [`RecvBuf::new_lazy`], in at once (cheap where they already are).
///
/// # Safety
/// The range must lie inside one live buffer, claimed by the caller: its
/// bytes may be overwritten.
pub(crate) unsafe fn prefault_range(p: *mut u8, len: usize) {
    if len == 0 {
        return;
    }
    // `madvise` wants a page-aligned start; it changes no byte, so the
    // part of the first page before `p` (maybe another reader's) is safe.
    let start = p as usize & !4095;
    // SAFETY: the pages hold the caller's live buffer.
    if unsafe {
        libc::madvise(
            start as *mut _,
            p as usize + len - start,
            libc::MADV_POPULATE_WRITE,
        )
    } == 0
    {
        return;
    }
    // Kernels before 5.14: one store per page, inside the claimed range only.
    let mut at = p as usize;
    while at < p as usize + len {
        // SAFETY: in the caller's claimed range; it is about to be overwritten.
        unsafe { (at as *mut u8).write_volatile(0) };
        at = (at & !4095) + 4096;
    }
}

/// Faults a fresh mapping in at once: every byte of it is about to be
/// written by a reader, and one `madvise` (or one store per page on kernels
/// before 5.14) is much cheaper than a fault per page taken inside the
/// socket's `read` (measured with the p2p benchmark: the first 64 MiB
/// receives ran at a quarter of the speed of later, recycled ones).
fn prefault(p: *mut u8, cap: usize) {
    // SAFETY: a fresh mapping of `cap` bytes owned by the caller, all of
    // which the caller is about to overwrite.
    unsafe { prefault_range(p, cap) }
}

impl RecvBuf {
    /// A buffer of `len` bytes (contents unspecified but initialised).
    ///
    /// ```
    /// let mut b = zccl_transports::recvbuf::RecvBuf::new(1 << 20);
    /// b.as_mut_slice().fill(7);
    /// let bytes = b.into_bytes();
    /// assert_eq!(bytes.len(), 1 << 20);
    /// assert_eq!(bytes.as_ptr() as usize % zccl_transports::recvbuf::RECV_ALIGN, 0);
    /// ```
    pub fn new(len: usize) -> Self {
        let (b, fresh) = Self::alloc(len);
        if fresh {
            prefault(b.ptr.as_ptr(), b.cap);
        }
        b
    }

    /// Like [`RecvBuf::new`], but a freshly mapped buffer (the `bool`) is
    /// not faulted in at once: for readers that fill it piece by piece,
    /// each calling `prefault_range` on its piece just before (a 64 MiB
    /// buffer takes long enough to fault in that the sender's window would
    /// close meanwhile), and for a buffer posted long before its bytes come
    /// (whoever copies into it faults its pages in).
    ///
    /// ```
    /// let (mut b, _fresh) = zccl_transports::recvbuf::RecvBuf::new_lazy(8 << 20);
    /// b.as_mut_slice()[0] = 1;
    /// assert_eq!(b.len(), 8 << 20);
    /// ```
    pub fn new_lazy(len: usize) -> (Self, bool) {
        Self::alloc(len)
    }

    /// A buffer, and whether it is a fresh mapping (not faulted in).
    fn alloc(len: usize) -> (Self, bool) {
        if len >= POOL_MIN_BYTES {
            let want = map_len(len);
            {
                let mut pool = POOL.lock().expect("recv pool");
                // Best fit among buffers at most 25 % larger than needed.
                let best = pool
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.cap >= want && b.cap <= want + want / 4)
                    .min_by_key(|(_, b)| b.cap)
                    .map(|(i, _)| i);
                if let Some(i) = best {
                    let b = pool.swap_remove(i);
                    let buf = Self {
                        ptr: b.ptr,
                        len,
                        cap: b.cap,
                        mapped: true,
                    };
                    return (buf, false);
                }
            }
            if let Some(ptr) = map_fresh(want) {
                let buf = Self {
                    ptr,
                    len,
                    cap: want,
                    mapped: true,
                };
                return (buf, true);
            }
        }
        if len == 0 {
            // No memory (`Drop` frees none for a capacity of 0).
            let buf = Self {
                ptr: NonNull::new(std::ptr::without_provenance_mut(RECV_ALIGN)).expect("non-zero"),
                len: 0,
                cap: 0,
                mapped: false,
            };
            return (buf, false);
        }
        let layout = Layout::from_size_align(len, RECV_ALIGN).expect("layout");
        // SAFETY: non-zero size; zeroed so the bytes are initialised (calloc
        // skips the memset for fresh memory).
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let buf = Self {
            ptr,
            len,
            cap: layout.size(),
            mapped: false,
        };
        (buf, false)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Raw start pointer (for readers that fill disjoint ranges concurrently).
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Hands the buffer over without copying; dropping the last clone of
    /// the `Bytes` recycles the memory. An empty buffer becomes an empty
    /// `Bytes` (no allocation: a message whose bytes went straight into
    /// its receive's memory arrives empty, once per op).
    ///
    /// ```
    /// let b = zccl_transports::recvbuf::RecvBuf::new(0).into_bytes();
    /// assert!(b.is_empty());
    /// ```
    pub fn into_bytes(self) -> Bytes {
        if self.len == 0 {
            return Bytes::new();
        }
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for RecvBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecvBuf({} B)", self.len)
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        if self.cap == 0 {
            return;
        }
        if !self.mapped {
            let layout = Layout::from_size_align(self.cap, RECV_ALIGN).expect("layout");
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
            return;
        }
        if self.cap > POOL_MAX_BYTES {
            // SAFETY: the mapping created in `map_fresh`, no longer referenced.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
            return;
        }
        // The newest buffers are kept (they have the sizes in use now); the
        // oldest are unmapped to make room.
        let evicted: Vec<Pooled> = {
            let mut pool = POOL.lock().expect("recv pool");
            pool.push(Pooled {
                ptr: self.ptr,
                cap: self.cap,
            });
            let mut held: usize = pool.iter().map(|b| b.cap).sum();
            let mut out = Vec::new();
            while pool.len() > POOL_MAX_BUFFERS || held > POOL_MAX_BYTES {
                let old = pool.remove(0);
                held -= old.cap;
                out.push(old);
            }
            out
        };
        for b in evicted {
            // SAFETY: a pooled mapping from `map_fresh`, no longer referenced.
            unsafe { libc::munmap(b.ptr.as_ptr().cast(), b.cap) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_alignment_and_reuse() {
        for len in [0usize, 1, 17, 4096, POOL_MIN_BYTES, 3 << 20] {
            let mut b = RecvBuf::new(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_slice().as_ptr() as usize % RECV_ALIGN, 0);
            b.as_mut_slice().fill(0xab);
            let bytes = b.into_bytes();
            assert!(bytes.iter().all(|&x| x == 0xab));
        }
        // A lazily faulted buffer filled piece by piece at unaligned offsets.
        let (mut l, _) = RecvBuf::new_lazy(3 << 20);
        let base = l.as_mut_ptr();
        for (off, len) in [(0usize, 4097usize), (4097, 1 << 20), ((1 << 20) + 4097, 0)] {
            // SAFETY: in bounds, and no other reference to the buffer.
            unsafe { prefault_range(base.add(off), len) };
            l.as_mut_slice()[off..off + len].fill(0x5a);
        }
        assert!(l.as_slice()[..(1 << 20) + 4097].iter().all(|&x| x == 0x5a));
        let a = RecvBuf::new(5 << 20);
        let p = a.as_slice().as_ptr();
        drop(a);
        // Another test may take it first; only check that reuse is possible.
        let b = RecvBuf::new(5 << 20);
        let _ = p == b.as_slice().as_ptr();
    }
}

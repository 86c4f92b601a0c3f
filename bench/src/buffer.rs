//! The bench's buffers: allocated as numpy allocates its arrays, so that
//! zccl is measured on the same kind of memory as the peers' benchmarks
//! (`mpi_bench.py` runs Open MPI on numpy arrays).
//!
//! numpy advises the kernel to back every array of 4 MiB or more with
//! transparent huge pages (`madvise(MADV_HUGEPAGE)`, on Linux by default);
//! with the kernel's THP setting `madvise` (a common default, and this
//! VM's), plain `Vec`s of that size get 4 KiB pages instead, and every
//! copy into or out of them by another process (`process_vm_readv`) pins
//! and walks 512 times as many pages: 64 MiB sendrecv took 13–17 ms here on
//! plain pages against 8–11 ms with THP on. torch's CPU tensors are not
//! advised by default (torch 2.x: `THP_MEM_ALLOC_ENABLE=1`), so the torch
//! backend's users get what their allocator gives.

/// Bytes from which a buffer is advised for huge pages (numpy's bound).
pub const HUGE_MIN_BYTES: usize = 4 << 20;

/// A buffer of `len` elements, element `i` from `f(i)`, advised for
/// transparent huge pages before it is first touched when it has at least
/// [`HUGE_MIN_BYTES`].
///
/// ```
/// use zccl_bench::buffer::filled;
/// let v = filled(5 << 20, |i| (i % 251) as u8);
/// assert_eq!(v.len(), 5 << 20);
/// assert_eq!(v[300], 49);
/// ```
pub fn filled<T>(len: usize, f: impl FnMut(usize) -> T) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    advise_huge(v.as_mut_ptr().cast(), len * std::mem::size_of::<T>());
    v.extend((0..len).map(f));
    v
}

/// Advises `[p, p + len)`'s whole pages for transparent huge pages when
/// `len` is at least [`HUGE_MIN_BYTES`] (a hint: refused or unsupported, it
/// changes nothing).
fn advise_huge(p: *mut u8, len: usize) {
    if len < HUGE_MIN_BYTES {
        return;
    }
    let page = 4096;
    let start = (p as usize).next_multiple_of(page);
    let end = (p as usize + len) & !(page - 1);
    if end > start {
        // SAFETY: the range lies inside one live allocation of ours;
        // MADV_HUGEPAGE only changes how its pages are backed.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

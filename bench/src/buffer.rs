//! The bench's buffers: aligned as torch aligns its CPU tensors (64
//! bytes, [`Buf`]), and advised for huge pages as numpy advises its arrays,
//! so that zccl is measured on the kind of memory its users and the peers'
//! benchmarks have (`mpi_bench.py` runs Open MPI on numpy arrays).
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
//!
//! The advice alone does not reach memory already on 4 KiB pages: the
//! ranks keep buffers of up to 32 MiB on the heap (`ZCCL_MALLOC_TUNE`), and
//! a sweep's later buffers reuse what its earlier ones touched. The ranks
//! `zccl bench -N` starts have `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, as
//! `zccl run`'s do (`zccl_runtime::malloc`), which advises the heap as it
//! grows.

/// Bytes from which a buffer is advised for huge pages (numpy's bound).
pub const HUGE_MIN_BYTES: usize = 4 << 20;

/// Alignment of the bench's buffers (bytes). See [`Buf`].
pub const ALIGN: usize = 64;

/// A buffer of the bench: `len` elements at an address aligned to
/// [`ALIGN`] bytes (when it holds any bytes), as torch's CPU allocator aligns its tensors (64 bytes)
/// and as nccl-tests' `cudaMalloc` and the OSU micro-benchmarks align
/// theirs (256 bytes, a page). A plain `Vec<f32>` is aligned to 16 bytes
/// only (malloc's), and ranks that allocate alike then place their buffers
/// 16 bytes apart modulo 4 KiB: the distance at which this CPU's copies
/// (`rep movsb`, also inside `process_vm_readv`) run 3–20 times slower
/// (`zccl_transports::copy`; docs/performance.md, "The short-distance copy
/// trap"). zccl copes with such buffers (its copies run backwards there,
/// its cross-process reads bounce), at a cost the bench would report instead of the library's speed on the
/// buffers its users have. Dereferences to `[T]`.
///
/// ```
/// use zccl_bench::buffer::{filled, Buf, ALIGN};
/// let b: Buf<f32> = filled(1000, |i| i as f32);
/// assert_eq!(b.len(), 1000);
/// assert_eq!(b[7], 7.0);
/// assert_eq!(b.as_ptr() as usize % ALIGN, 0);
/// assert!(Buf::<f32>::default().is_empty());
/// ```
pub struct Buf<T: Copy> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
}

// SAFETY: `Buf` owns its elements like a `Vec<T>`.
unsafe impl<T: Copy + Send> Send for Buf<T> {}
// SAFETY: shared access only reads, as for `Vec<T>`.
unsafe impl<T: Copy + Sync> Sync for Buf<T> {}

impl<T: Copy> Buf<T> {
    fn layout(len: usize) -> std::alloc::Layout {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("buffer size overflows");
        std::alloc::Layout::from_size_align(bytes, ALIGN.max(std::mem::align_of::<T>()))
            .expect("buffer layout")
    }
}

impl<T: Copy> Default for Buf<T> {
    fn default() -> Self {
        Buf {
            ptr: std::ptr::NonNull::dangling(),
            len: 0,
        }
    }
}

impl<T: Copy> Drop for Buf<T> {
    fn drop(&mut self) {
        let layout = Self::layout(self.len);
        if layout.size() != 0 {
            // SAFETY: allocated in `filled` with this very layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), layout) }
        }
    }
}

impl<T: Copy> std::ops::Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` initialised elements (or a dangling, aligned
        // pointer for none, or zero-sized elements).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> std::ops::DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as `deref`, borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// A buffer of `len` elements, element `i` from `f(i)`, aligned to
/// [`ALIGN`] bytes ([`Buf`]), and advised for transparent huge pages
/// before it is first touched when it has at least [`HUGE_MIN_BYTES`].
///
/// ```
/// use zccl_bench::buffer::filled;
/// let v = filled(5 << 20, |i| (i % 251) as u8);
/// assert_eq!(v.len(), 5 << 20);
/// assert_eq!(v[300], 49);
/// ```
pub fn filled<T: Copy>(len: usize, mut f: impl FnMut(usize) -> T) -> Buf<T> {
    let layout = Buf::<T>::layout(len);
    let ptr = if layout.size() == 0 {
        // Nothing to allocate (no elements, or zero-sized ones, which are
        // still produced by `f` and written, as any others).
        std::ptr::NonNull::dangling()
    } else {
        // SAFETY: a layout of non-zero size.
        let p = unsafe { std::alloc::alloc(layout) }.cast::<T>();
        let Some(ptr) = std::ptr::NonNull::new(p) else {
            std::alloc::handle_alloc_error(layout);
        };
        advise_huge(p.cast(), layout.size());
        ptr
    };
    // Frees the allocation if `f` panics before the buffer owns it.
    struct Unfilled(*mut u8, std::alloc::Layout);
    impl Drop for Unfilled {
        fn drop(&mut self) {
            if self.1.size() != 0 {
                // SAFETY: allocated just above with this layout; no element
                // needs dropping (`T: Copy`).
                unsafe { std::alloc::dealloc(self.0, self.1) }
            }
        }
    }
    let guard = Unfilled(ptr.as_ptr().cast(), layout);
    for i in 0..len {
        // SAFETY: `i < len` elements of the allocation (or zero-sized
        // writes through an aligned dangling pointer); written once each.
        unsafe { ptr.as_ptr().add(i).write(f(i)) };
    }
    std::mem::forget(guard);
    Buf { ptr, len }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_filled() {
        for len in [0usize, 1, 3, 1000, (HUGE_MIN_BYTES / 8) + 5] {
            let b: Buf<f64> = filled(len, |i| i as f64 * 0.5);
            assert_eq!(b.len(), len);
            if len > 0 {
                assert_eq!(b.as_ptr() as usize % ALIGN, 0, "len {len}");
            }
            assert!(b.iter().enumerate().all(|(i, &v)| v == i as f64 * 0.5));
        }
        let mut b: Buf<u16> = filled(10, |i| i as u16);
        b[9] = 99;
        assert_eq!(&b[8..], &[8, 99]);
        let mut calls = 0;
        let z: Buf<()> = filled(7, |_| calls += 1);
        assert_eq!((z.len(), calls), (7, 7));
    }
}

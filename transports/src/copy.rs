//! Copying message bytes without x86's short-distance `rep movsb` trap.
//!
//! On x86 CPUs with fast short `rep movsb` (FSRM; measured on this project's
//! AMD EPYC VMs), a forward copy whose destination lies 1 to 63 bytes ahead
//! of its source modulo 4 KiB runs 10 to 20 times slower than the same copy
//! at any other distance: each load waits behind the store just issued to an
//! address that aliases it in the low 12 bits. glibc (2.36) copies 2 KiB to
//! the L2 size with `rep movsb` and does not avoid that distance on AMD,
//! and the kernel's `copy_to_user` (which `process_vm_readv` uses) always
//! does. Measured here, 64 KiB: 2.4 GB/s at distance 16 against 45 GB/s at
//! distance 0; a 16 MiB `process_vm_readv`: 2.0 against 5.7 GB/s.
//!
//! The distance is common in practice: two heap blocks allocated one after
//! the other, the first a whole number of pages long, start 16 bytes apart
//! modulo 4 KiB (malloc's chunk header), and ranks that allocate alike get
//! the same layout, so one rank's receive buffer lies 16 bytes ahead of its
//! peer's send buffer; ring slots and mapped buffers meet it by chance.
//!
//! [`copy`] copies such pairs backwards, 64 bytes at a time with SSE2
//! (x86-64's baseline): a load then never follows a store to an aliasing
//! address, and the copy runs at memcpy's usual speed (`cargo bench -p
//! zccl-bench --bench copy`).
//! Copies from a quarter of the last-level cache up ([`stream_min`]: 4 MiB
//! with this VM's 16 MiB L3) store past the caches instead (`vmovntdq`,
//! AVX; `copy_streaming`), as glibc's `memcpy` does from its own
//! threshold, a quarter of the L3 it reads from CPUID. On the project's
//! VM, CPUID reports a 256 MiB shared cache, so glibc streams only from
//! 192 MiB, and below that its `rep movsb` reads each destination line
//! before it overwrites it: 9.3 GB/s for 16 MiB from memory against 17.5
//! GB/s streamed (docs/performance.md; `cargo bench -p zccl-bench --bench
//! copy`: 8.9 against 17.6). The
//! threshold here comes from the kernel's cache description
//! (`/sys/devices/system/cpu/cpu0/cache`), so a copy larger than the cache
//! streams whatever CPUID says.
//!
//! Every other copy is plain `memcpy`. [`is_slow_distance`] tells a caller
//! whose copy another party makes (the kernel) when to bounce through a
//! buffer of its own.

/// Copies below this many bytes are latency, not bandwidth: `memcpy` does
/// them in a few vector moves whatever the distance.
const SMALL: usize = 256;

/// Whether a forward copy from `src` to `dst` falls into the short-distance
/// trap: `dst` 1 to 63 bytes ahead of `src` modulo 4 KiB (the page offset
/// aliasing the CPU checks loads against earlier stores with).
///
/// ```
/// use zccl_transports::copy::is_slow_distance;
/// assert!(is_slow_distance(0x1010, 0x1000)); // 16 ahead
/// assert!(is_slow_distance(0x5010, 0x1000)); // 16 ahead, pages apart
/// assert!(!is_slow_distance(0x1000, 0x1000)); // same offset
/// assert!(!is_slow_distance(0x1000, 0x1010)); // behind
/// assert!(!is_slow_distance(0x1040, 0x1000)); // a cache line ahead
/// ```
#[inline]
pub fn is_slow_distance(dst: usize, src: usize) -> bool {
    let d = dst.wrapping_sub(src) & 4095;
    d != 0 && d < 64
}

/// Copies `src` into `dst` (equal lengths), at full speed whatever their
/// relative alignment.
///
/// # Panics
/// If the lengths differ, as `copy_from_slice` does.
///
/// ```
/// let src: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
/// let mut dst = vec![0u8; 100_016];
/// // 16 bytes ahead of a malloc'd source: the slow distance for `rep movsb`.
/// zccl_transports::copy::copy(&mut dst[16..], &src);
/// assert_eq!(&dst[16..], &src[..]);
/// ```
#[inline]
pub fn copy(dst: &mut [u8], src: &[u8]) {
    copy_slice(dst, src)
}

/// [`copy`] for elements of any `Copy` type (a typed buffer's blocks).
///
/// ```
/// let src = vec![1.5f32; 5000];
/// let mut dst = vec![0f32; 5000];
/// zccl_transports::copy::copy_slice(&mut dst, &src);
/// assert_eq!(dst, src);
/// ```
#[inline]
pub fn copy_slice<T: Copy>(dst: &mut [T], src: &[T]) {
    assert_eq!(
        dst.len(),
        src.len(),
        "copy: destination and source lengths differ"
    );
    // SAFETY: as in `copy`; `T: Copy` has no drop glue, so a bytewise copy
    // is a valid copy of the elements.
    unsafe {
        copy_raw(
            dst.as_mut_ptr().cast(),
            src.as_ptr().cast(),
            std::mem::size_of_val(src),
        )
    }
}

/// A `Bytes` holding a copy of `src` (as `Bytes::copy_from_slice`, through
/// [`copy`]).
///
/// ```
/// let b = zccl_transports::copy::to_bytes(&[7u8; 5000]);
/// assert_eq!(&b[..], &[7u8; 5000][..]);
/// ```
pub fn to_bytes(src: &[u8]) -> bytes::Bytes {
    bytes::Bytes::from(to_vec(src))
}

/// Appends a copy of `src` to `v` (as `extend_from_slice`, through
/// [`copy`]).
///
/// ```
/// let mut v = vec![1u32, 2];
/// zccl_transports::copy::extend(&mut v, &[3u32; 2000]);
/// assert_eq!(v.len(), 2002);
/// assert_eq!(v[2001], 3);
/// ```
pub fn extend<T: Copy>(v: &mut Vec<T>, src: &[T]) {
    v.reserve(src.len());
    let len = v.len();
    // SAFETY: `reserve` made room for `src.len()` more elements after
    // `len`; the copy writes all of them before `set_len` exposes them, and
    // `T: Copy` has no drop glue.
    unsafe {
        copy_raw(
            v.as_mut_ptr().add(len).cast(),
            src.as_ptr().cast(),
            std::mem::size_of_val(src),
        );
        v.set_len(len + src.len());
    }
}

/// A `Vec` holding a copy of `src` (as `to_vec`, through [`copy`]).
///
/// ```
/// assert_eq!(zccl_transports::copy::to_vec(&[5u8; 3000]), vec![5u8; 3000]);
/// ```
pub fn to_vec<T: Copy>(src: &[T]) -> Vec<T> {
    let mut v = Vec::new();
    extend(&mut v, src);
    v
}

/// [`copy`] on raw pointers.
///
/// # Safety
/// As `std::ptr::copy_nonoverlapping(src, dst, n)`: `src` readable and
/// `dst` writable for `n` bytes, the two ranges disjoint.
///
/// ```
/// let src = [3u8; 4096];
/// let mut dst = [0u8; 4096];
/// unsafe { zccl_transports::copy::copy_raw(dst.as_mut_ptr(), src.as_ptr(), 4096) };
/// assert_eq!(dst, src);
/// ```
#[inline]
pub unsafe fn copy_raw(dst: *mut u8, src: *const u8, n: usize) {
    // A small copy (a small message's, on every op) looks at nothing else.
    #[cfg(target_arch = "x86_64")]
    if n >= SMALL {
        if n >= stream_min() {
            // SAFETY: the caller's contract; `stream_min` is finite only
            // where the CPU has AVX.
            unsafe { copy_streaming(dst, src, n) };
            return;
        }
        if is_slow_distance(dst as usize, src as usize) {
            // SAFETY: the caller's contract.
            unsafe { copy_backward(dst, src, n) };
            return;
        }
    }
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, n) }
}

/// [`copy_raw`] for bytes another core reads next, not this one (a
/// shared-memory ring's payload): from [`STREAM_SHARED_MIN`] up its stores
/// bypass the caches wherever [`copy_raw`] would stream at all (AVX), so
/// the reader takes them from memory instead of from lines this core holds
/// modified, and the copy does not read each destination line first. 2
/// processes on 2 vCPUs exchanging 1 MiB through 64-256 KiB slots (C, both
/// copies one thread each side): 260-290 us with plain stores into the
/// slots, 111-120 us streamed (docs/performance.md). Below it, [`copy_raw`].
///
/// # Safety
/// As [`copy_raw`].
///
/// ```
/// let src = vec![7u8; 256 << 10];
/// let mut dst = vec![0u8; 256 << 10];
/// unsafe { zccl_transports::copy::copy_raw_shared(dst.as_mut_ptr(), src.as_ptr(), src.len()) };
/// assert_eq!(dst, src);
/// ```
#[inline]
pub unsafe fn copy_raw_shared(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller's contract.
    unsafe { copy_raw_shared_from(dst, src, n, STREAM_SHARED_MIN) }
}

/// [`copy_raw_shared`], streaming from `min` bytes rather than from
/// [`STREAM_SHARED_MIN`] (the shared-memory ring streams smaller payloads
/// where their reader found streamed ones faster to copy).
///
/// # Safety
/// As [`copy_raw`].
///
/// ```
/// let src = vec![7u8; 16 << 10];
/// let mut dst = vec![0u8; 16 << 10];
/// unsafe { zccl_transports::copy::copy_raw_shared_from(dst.as_mut_ptr(), src.as_ptr(), src.len(), 0) };
/// assert_eq!(dst, src);
/// ```
#[inline]
pub unsafe fn copy_raw_shared_from(dst: *mut u8, src: *const u8, n: usize, min: usize) {
    #[cfg(target_arch = "x86_64")]
    if n >= min && stream_min() != usize::MAX {
        // SAFETY: the caller's contract; `stream_min` is finite only where
        // the CPU has AVX.
        unsafe { copy_streaming(dst, src, n) };
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = min;
    // SAFETY: the caller's contract.
    unsafe { copy_raw(dst, src, n) }
}

/// The size from which [`copy_raw_shared`] streams: 64 KiB, where the
/// measurements start (2 ranks, a 64 KiB sendrecv 17.7 -> 9.8 us). Below
/// it, which is faster depends on the cores of the two sides (whether they
/// share a cache): the shared-memory ring streams 16-64 KiB payloads where
/// their reader timed streamed ones faster (`shm::STREAM_ADAPT_MIN`).
pub const STREAM_SHARED_MIN: usize = 64 << 10;

/// Copies from the end down, four 16-byte moves per step (`movdqu`, in
/// assembly: the bytes are moved, never read as Rust values, so
/// uninitialised source bytes such as padding are copied soundly, as
/// `copy_nonoverlapping` copies them; and the compiler cannot turn the
/// loop back into a `memcpy` call); the first `n % 64` bytes by `memcpy`.
///
/// # Safety
/// As [`copy_raw`].
#[cfg(target_arch = "x86_64")]
#[inline(never)]
unsafe fn copy_backward(dst: *mut u8, src: *const u8, n: usize) {
    let mut i = n;
    while i >= 64 {
        i -= 64;
        // SAFETY: [i, i + 64) lies in both ranges (readable source,
        // writable destination, disjoint); `movdqu` takes any alignment and
        // SSE2 is part of x86-64.
        unsafe {
            std::arch::asm!(
                "movdqu {a}, [{s}]",
                "movdqu {b}, [{s} + 16]",
                "movdqu {c}, [{s} + 32]",
                "movdqu {e}, [{s} + 48]",
                "movdqu [{d}], {a}",
                "movdqu [{d} + 16], {b}",
                "movdqu [{d} + 32], {c}",
                "movdqu [{d} + 48], {e}",
                s = in(reg) src.add(i),
                d = in(reg) dst.add(i),
                a = out(xmm_reg) _,
                b = out(xmm_reg) _,
                c = out(xmm_reg) _,
                e = out(xmm_reg) _,
                options(nostack, preserves_flags),
            );
        }
    }
    // SAFETY: the first `i` bytes of both ranges.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, i) }
}

/// The size from which [`copy`] streams its stores past the caches
/// (`copy_streaming`): a quarter of the last-level cache, as glibc's
/// default (from 2.38; a copy that large would evict much of what the
/// cache holds, and streaming skips reading each destination line first),
/// with the cache's size from the kernel (`last_level_cache`), or
/// [`STREAM_MIN_DEFAULT`] where it does not say; never (`usize::MAX`)
/// without AVX or off x86-64. Read once.
///
/// ```
/// let min = zccl_transports::copy::stream_min();
/// assert!(min >= 1 << 20);
/// ```
pub fn stream_min() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            return stream_min_of(last_level_cache());
        }
        usize::MAX
    })
}

/// Where the kernel does not describe the caches: the threshold a 16 MiB
/// L3 gives.
pub const STREAM_MIN_DEFAULT: usize = 4 << 20;
// `copy_raw` asks for streaming only past `SMALL` (every threshold is).
const _: () = assert!(SMALL < 1 << 20 && SMALL < STREAM_MIN_DEFAULT);

/// The streaming threshold for a last-level cache of `cache` bytes (where
/// known): a quarter of it, at least 1 MiB. Pure.
///
/// ```
/// use zccl_transports::copy::{stream_min_of, STREAM_MIN_DEFAULT};
/// assert_eq!(stream_min_of(Some(16 << 20)), 4 << 20);
/// assert_eq!(stream_min_of(Some(512 << 10)), 1 << 20);
/// assert_eq!(stream_min_of(None), STREAM_MIN_DEFAULT);
/// ```
pub fn stream_min_of(cache: Option<usize>) -> usize {
    cache.map_or(STREAM_MIN_DEFAULT, |c| (c / 4).max(1 << 20))
}

/// The size of CPU 0's highest-level cache in bytes, as the kernel
/// describes it (`/sys/devices/system/cpu/cpu0/cache/index*/`), if it does.
fn last_level_cache() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| {
        let p = e.ok()?.path();
        let level: u32 = std::fs::read_to_string(p.join("level"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let size = parse_cache_size(&std::fs::read_to_string(p.join("size")).ok()?)?;
        Some((level, size))
    })
    .max()
    .map(|(_, size)| size)
}

/// A cache size as sysfs writes it (`16384K`; `M` and plain bytes also
/// taken). Pure.
///
/// ```
/// use zccl_transports::copy::parse_cache_size;
/// assert_eq!(parse_cache_size("16384K\n"), Some(16 << 20));
/// assert_eq!(parse_cache_size("32M"), Some(32 << 20));
/// assert_eq!(parse_cache_size("512"), Some(512));
/// assert_eq!(parse_cache_size("lots"), None);
/// ```
pub fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, unit) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

/// Copies with stores that bypass the caches (`vmovntdq`): the destination
/// brought to a 64-byte boundary by `memcpy`, then 128 bytes a step (four
/// 32-byte loads, then four streaming stores: at every distance between
/// the two ranges, 15.6-18 GB/s here, where 64 bytes a step fell to 3 GB/s
/// with the destination 1 to 63 bytes ahead of the source modulo 4 KiB,
/// the trap [`copy_backward`] avoids), the rest by `memcpy`, and an
/// `sfence`: the streamed stores are ordered before whatever the caller
/// stores next (a flag that publishes the bytes). In assembly, as
/// [`copy_backward`]: the bytes are moved, never read as Rust values.
///
/// # Safety
/// As [`copy_raw`]; and the CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline(never)]
unsafe fn copy_streaming(dst: *mut u8, src: *const u8, n: usize) {
    let head = ((dst as usize).wrapping_neg() & 63).min(n);
    // SAFETY: the first `head` bytes of both ranges.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
    let mut i = head;
    while n - i >= 128 {
        // SAFETY: [i, i + 128) lies in both ranges; `dst + i` is 64-byte
        // aligned (as `vmovntdq` needs 32); `vmovdqu` takes any alignment;
        // the caller checked AVX.
        unsafe {
            std::arch::asm!(
                "vmovdqu {a}, [{s}]",
                "vmovdqu {b}, [{s} + 32]",
                "vmovdqu {c}, [{s} + 64]",
                "vmovdqu {e}, [{s} + 96]",
                "vmovntdq [{d}], {a}",
                "vmovntdq [{d} + 32], {b}",
                "vmovntdq [{d} + 64], {c}",
                "vmovntdq [{d} + 96], {e}",
                s = in(reg) src.add(i),
                d = in(reg) dst.add(i),
                a = out(ymm_reg) _,
                b = out(ymm_reg) _,
                c = out(ymm_reg) _,
                e = out(ymm_reg) _,
                options(nostack, preserves_flags),
            );
        }
        i += 128;
    }
    // SAFETY: orders the streamed stores before later ones (no operands).
    unsafe { std::arch::asm!("sfence", options(nostack, preserves_flags)) };
    // SAFETY: the last `n - i` bytes of both ranges.
    unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), n - i) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every distance within a cache line of the trap and beyond, every
    /// length class around the thresholds, both page offsets: the bytes
    /// land exactly, and nothing outside the range is written.
    #[test]
    fn copies_exactly_at_every_distance_and_length() {
        let src_buf: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [
            0, 1, 63, 64, 65, 255, 256, 257, 1000, 4095, 4096, 4097, 12_345,
        ] {
            for dist in [0usize, 1, 8, 15, 16, 31, 32, 63, 64, 100, 4000, 4095] {
                for src_off in [0usize, 16, 1000] {
                    let src = &src_buf[src_off..src_off + len];
                    let mut dst_buf = vec![0xEEu8; len + 8192];
                    // Place dst so that (dst - src) mod 4096 == dist.
                    let base = dst_buf.as_ptr() as usize;
                    let want = (src.as_ptr() as usize + dist) & 4095;
                    let start = (want + 4096 - (base & 4095)) & 4095;
                    copy(&mut dst_buf[start..start + len], src);
                    assert_eq!(&dst_buf[start..start + len], src, "len {len} dist {dist}");
                    assert!(dst_buf[..start].iter().all(|&b| b == 0xEE));
                    assert!(dst_buf[start + len..].iter().all(|&b| b == 0xEE));
                    assert_eq!(
                        is_slow_distance(dst_buf[start..].as_ptr() as usize, src.as_ptr() as usize),
                        dist != 0 && dist < 64
                    );
                }
            }
        }
    }

    /// The streaming copy (called directly, below its threshold): every
    /// distance around the trap, lengths around its 64-byte head and
    /// 128-byte steps, destinations at every offset in a cache line: the
    /// bytes land exactly, nothing outside the range is written.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn streaming_copies_exactly_at_every_distance_length_and_offset() {
        if !std::arch::is_x86_feature_detected!("avx") {
            eprintln!("SKIPPED: this CPU has no AVX: copies never stream here");
            return;
        }
        let src_buf: Vec<u8> = (0..40_000u32).map(|i| (i * 13 + 5) as u8).collect();
        for len in [
            0, 1, 63, 64, 127, 128, 129, 191, 255, 256, 1000, 4096, 12_345, 33_000,
        ] {
            for dist in [0usize, 1, 16, 32, 63, 64, 100, 2048, 4032, 4080, 4095] {
                for src_off in [0usize, 16, 1000] {
                    let src = &src_buf[src_off..src_off + len];
                    let mut dst_buf = vec![0xEEu8; len + 8192];
                    let base = dst_buf.as_ptr() as usize;
                    let want = (src.as_ptr() as usize + dist) & 4095;
                    let start = (want + 4096 - (base & 4095)) & 4095;
                    // SAFETY: both ranges valid for `len` bytes, disjoint;
                    // AVX checked above.
                    unsafe { copy_streaming(dst_buf[start..].as_mut_ptr(), src.as_ptr(), len) };
                    assert_eq!(&dst_buf[start..start + len], src, "len {len} dist {dist}");
                    assert!(dst_buf[..start].iter().all(|&b| b == 0xEE));
                    assert!(dst_buf[start + len..].iter().all(|&b| b == 0xEE));
                }
            }
        }
    }

    /// Around the shared-copy threshold, at every destination offset in a
    /// cache line: exact, nothing outside the range written.
    #[test]
    fn shared_copies_land_exactly_around_their_threshold() {
        for n in [
            STREAM_SHARED_MIN - 1,
            STREAM_SHARED_MIN,
            STREAM_SHARED_MIN + 1,
            STREAM_SHARED_MIN + 127,
            STREAM_SHARED_MIN + 4096 + 63,
        ] {
            for off in [0usize, 1, 16, 31, 63] {
                let src: Vec<u8> = (0..n + 64).map(|i| (i % 253) as u8).collect();
                let mut dst = vec![0xEEu8; n + 128];
                // SAFETY: `src[3..]` holds `n` readable bytes, `dst[off..]`
                // `n` writable ones; distinct vectors.
                unsafe { copy_raw_shared(dst.as_mut_ptr().add(off), src.as_ptr().add(3), n) };
                assert!(dst[off..off + n] == src[3..3 + n], "{n} B at {off}");
                assert!(dst[..off].iter().chain(&dst[off + n..]).all(|&b| b == 0xEE));
            }
        }
    }

    #[test]
    fn a_copy_past_the_threshold_lands_exactly() {
        let n = stream_min().min(16 << 20) + 4099;
        let src: Vec<u8> = (0..n as u32).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![0u8; n + 40];
        copy(&mut dst[17..17 + n], &src);
        assert_eq!(&dst[17..17 + n], &src[..]);
        assert!(dst[..17].iter().chain(&dst[17 + n..]).all(|&b| b == 0));
    }

    #[test]
    fn typed_and_bytes_copies_match_their_source() {
        let src: Vec<u64> = (0..3000).collect();
        let mut dst = vec![0u64; 3002];
        copy_slice(&mut dst[2..], &src);
        assert_eq!(&dst[2..], &src[..]);
        let bytes: Vec<u8> = (0..9000u32).map(|i| i as u8).collect();
        assert_eq!(&to_bytes(&bytes[5..])[..], &bytes[5..]);
        assert!(to_bytes(&[]).is_empty());
        let mut v = to_vec(&bytes[..3]);
        extend(&mut v, &bytes[16..9000]);
        assert_eq!(&v[..3], &bytes[..3]);
        assert_eq!(&v[3..], &bytes[16..9000]);
        extend(&mut v, &[]);
        assert_eq!(v.len(), 3 + 9000 - 16);
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn unequal_lengths_panic_as_copy_from_slice_does() {
        copy(&mut [0u8; 3], &[1u8; 4]);
    }
}

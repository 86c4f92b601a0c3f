//! The payload of `zccl bench route` (pure): bytes that depend on the
//! sending rank and on their offset, so that a receiver can check every byte
//! of what it got, and a byte delivered at the wrong offset, from the wrong
//! sender, or not at all, shows up as a mismatch.
//!
//! Word `i` (bytes `8i..8i+8`, little-endian) of rank `r`'s payload is
//! SplitMix64 of `r << 48 | i`; a last partial word is cut short.

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `i` of rank `rank`'s payload.
fn word(rank: u32, i: u64) -> u64 {
    mix((u64::from(rank) << 48) ^ i)
}

/// Rank `rank`'s payload of `len` bytes.
///
/// ```
/// use zccl_bench::route::pattern::fill;
/// let a = fill(0, 20);
/// assert_eq!(a.len(), 20);
/// assert_eq!(&fill(0, 8)[..], &a[..8]); // a prefix does not depend on the length
/// assert_ne!(fill(1, 20), a);          // nor the same for another rank
/// ```
pub fn fill(rank: u32, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut words = out.chunks_exact_mut(8);
    let mut i = 0u64;
    for w in &mut words {
        w.copy_from_slice(&word(rank, i).to_le_bytes());
        i += 1;
    }
    let tail = words.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&word(rank, i).to_le_bytes()[..n]);
    out
}

/// The first offset where `got` differs from `want`, counting a missing or
/// extra byte at the end as a difference; `None` when they are equal.
///
/// ```
/// use zccl_bench::route::pattern::{fill, first_difference};
/// let want = fill(3, 1000);
/// let mut got = want.clone();
/// assert_eq!(first_difference(&got, &want), None);
/// got[777] ^= 1;
/// assert_eq!(first_difference(&got, &want), Some(777));
/// assert_eq!(first_difference(&want[..10], &want), Some(10));
/// ```
pub fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    if got == want {
        return None;
    }
    // Compare in blocks (memcmp) and only scan the first block that differs.
    const BLOCK: usize = 4096;
    let common = got.len().min(want.len());
    let mut start = 0;
    while start < common {
        let end = (start + BLOCK).min(common);
        if got[start..end] != want[start..end] {
            return (start..end).find(|&k| got[k] != want[k]);
        }
        start = end;
    }
    Some(common)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_depend_on_rank_and_offset() {
        let a = fill(0, 4096);
        let b = fill(1, 4096);
        // Every word differs between two ranks, and words differ along the buffer.
        for (x, y) in a.chunks(8).zip(b.chunks(8)) {
            assert_ne!(x, y);
        }
        assert_ne!(&a[..8], &a[8..16]);
        // Shifting by one word is detected at once.
        assert_eq!(first_difference(&a[8..], &a[..a.len() - 8]), Some(0));
        // Lengths that are not a multiple of 8.
        for len in [0, 1, 7, 9, 15] {
            let v = fill(5, len);
            assert_eq!(v.len(), len);
            assert_eq!(&v[..], &fill(5, 16)[..len]);
        }
    }

    #[test]
    fn differences_are_found_anywhere() {
        let want = fill(2, 3 * 4096 + 5);
        for k in [0, 4095, 4096, 8191, want.len() - 1] {
            let mut got = want.clone();
            got[k] = got[k].wrapping_add(1);
            assert_eq!(first_difference(&got, &want), Some(k));
        }
        assert_eq!(first_difference(&want, &want[..100]), Some(100));
        assert_eq!(first_difference(&[], &[]), None);
    }
}

//! Splitting a count into `n` nearly equal contiguous chunks.
//!
//! Chunk `j` of `count` over `n` has `count / n` elements, plus one for the
//! first `count % n` chunks; chunks are in order and cover `0..count`. Chunks
//! may be empty when `count < n`.

use std::ops::Range;

/// The element range of chunk `j`.
///
/// ```
/// use zccl_primitives::schedule::chunks::chunk_range;
/// // 10 elements over 4 ranks: 3, 3, 2, 2.
/// assert_eq!(chunk_range(10, 4, 0), 0..3);
/// assert_eq!(chunk_range(10, 4, 1), 3..6);
/// assert_eq!(chunk_range(10, 4, 3), 8..10);
/// assert_eq!(chunk_range(2, 4, 3), 2..2);
/// ```
pub fn chunk_range(count: usize, n: usize, j: usize) -> Range<usize> {
    assert!(n > 0 && j < n, "chunk {j} of {n}");
    let q = count / n;
    let r = count % n;
    let start = j * q + j.min(r);
    let len = q + usize::from(j < r);
    start..start + len
}

/// Every chunk range, in order.
///
/// ```
/// use zccl_primitives::schedule::chunks::chunk_ranges;
/// assert_eq!(chunk_ranges(5, 3), vec![0..2, 2..4, 4..5]);
/// ```
pub fn chunk_ranges(count: usize, n: usize) -> Vec<Range<usize>> {
    (0..n).map(|j| chunk_range(count, n, j)).collect()
}

/// Exclusive prefix sums of `counts`: the offset of each part in a packed buffer.
///
/// The sums saturate at `usize::MAX` instead of wrapping around, so counts
/// whose sum overflows (hostile split sizes) end at `usize::MAX`, which no
/// buffer's length equals: a caller that compares the last offset with its
/// buffer's length rejects them, and the offsets never wrap back into it.
///
/// ```
/// use zccl_primitives::schedule::chunks::offsets;
/// assert_eq!(offsets(&[2, 0, 3]), vec![0, 2, 2, 5]);
/// // 2^64 - 1 + 2 would wrap to 1; it stays at the top instead.
/// assert_eq!(offsets(&[usize::MAX, 2]), vec![0, usize::MAX, usize::MAX]);
/// ```
pub fn offsets(counts: &[usize]) -> Vec<usize> {
    let mut o = Vec::with_capacity(counts.len() + 1);
    let mut acc = 0usize;
    o.push(0);
    for &c in counts {
        acc = acc.saturating_add(c);
        o.push(acc);
    }
    o
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_exactly() {
        for n in 1..=9 {
            for count in 0..40 {
                let r = chunk_ranges(count, n);
                assert_eq!(r[0].start, 0);
                assert_eq!(r[n - 1].end, count);
                for w in r.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() - w[1].len() <= 1);
                }
            }
        }
    }
}

//! Pairwise-exchange schedule for all-to-all(-v).
//!
//! `n` steps; at step `s` rank `r` sends its chunk for `(r+s) mod n` and
//! receives the chunk from `(r-s) mod n`. Step 0 is the local copy. Every
//! ordered pair of ranks meets exactly once and each rank has one send and
//! one receive in flight per step.

/// Peers of `rank` at step `s`: `(send_to, recv_from)`.
///
/// ```
/// use zccl_primitives::schedule::pairwise::peers;
/// assert_eq!(peers(1, 4, 0), (1, 1));
/// assert_eq!(peers(1, 4, 3), (0, 2));
/// ```
pub fn peers(rank: usize, n: usize, s: usize) -> (usize, usize) {
    ((rank + s) % n, (rank + n - s % n) % n)
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_once_and_matched() {
        for n in 1..=9 {
            let mut seen = vec![vec![0; n]; n];
            for s in 0..n {
                for r in 0..n {
                    let (to, from) = peers(r, n, s);
                    assert_eq!(peers(to, n, s).1, r);
                    assert_eq!(peers(from, n, s).0, r);
                    seen[r][to] += 1;
                }
            }
            assert!(seen.iter().flatten().all(|&c| c == 1));
        }
    }
}

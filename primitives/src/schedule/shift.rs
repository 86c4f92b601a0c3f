//! Ring shift by an offset `k`: send to `(r+k) mod n`, receive from `(r-k) mod n`.
//!
//! Repeated shifts: after `s` steps rank `r` holds the block that started on
//! rank `(r - k·s) mod n`. `n` blocks visit every rank exactly once iff
//! `gcd(k, n) = 1`.

use super::wrap;

/// `(send_to, recv_from)` of `rank` for a shift by `offset`.
///
/// ```
/// use zccl_primitives::schedule::shift::peers;
/// assert_eq!(peers(0, 4, 1), (1, 3));
/// assert_eq!(peers(0, 4, -1), (3, 1));
/// // Any offset, however large, agrees with its remainder on every rank.
/// assert_eq!(peers(1, 3, isize::MAX), peers(1, 3, isize::MAX % 3));
/// assert_eq!(peers(2, 3, isize::MIN), peers(2, 3, isize::MIN.rem_euclid(3)));
/// ```
pub fn peers(rank: usize, n: usize, offset: isize) -> (usize, usize) {
    // The offset is reduced first: `rank + offset` could overflow (and
    // wrap differently on different ranks, which would then disagree on
    // who sends to whom).
    let k = wrap(offset, n);
    ((rank + k) % n, (rank + n - k) % n)
}

/// The origin of the block `rank` holds after `step` shifts by `offset`.
///
/// ```
/// use zccl_primitives::schedule::shift::origin_at;
/// assert_eq!(origin_at(0, 4, 1, 1), 3);
/// assert_eq!(origin_at(0, 4, -1, 1), 1);
/// ```
pub fn origin_at(rank: usize, n: usize, offset: isize, step: usize) -> usize {
    let k = wrap(offset, n);
    // (k·step) mod n without the product overflowing.
    let ks = ((k as u128 * step as u128) % n as u128) as usize;
    (rank + n - ks) % n
}

/// Whether `n` shifts by `offset` show every block to every rank (`gcd(k, n) = 1`).
///
/// ```
/// use zccl_primitives::schedule::shift::visits_all;
/// assert!(visits_all(5, 2));
/// assert!(!visits_all(4, 2));
/// assert!(visits_all(1, 0));
/// ```
pub fn visits_all(n: usize, offset: isize) -> bool {
    let (mut a, mut b) = (wrap(offset, n), n);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a == 1
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    #[test]
    fn origins_follow_the_shift() {
        for n in 1..=8 {
            for k in -9isize..=9 {
                for r in 0..n {
                    for s in 0..2 * n {
                        let (_, from) = peers(r, n, k);
                        assert_eq!(origin_at(r, n, k, s + 1), origin_at(from, n, k, s));
                    }
                }
                if visits_all(n, k) {
                    let mut o: Vec<_> = (0..n).map(|s| origin_at(0, n, k, s)).collect();
                    o.sort();
                    assert_eq!(o, (0..n).collect::<Vec<_>>());
                }
            }
        }
    }
}

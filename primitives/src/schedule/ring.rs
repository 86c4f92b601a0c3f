//! Ring reduce-scatter and all-gather (the two halves of ring all-reduce).
//!
//! The buffer is split into `n` chunks ([`super::chunks`]). Every step, rank
//! `r` sends one chunk to `r+1` and receives one from `r-1`.
//!
//! **Reduce-scatter**: at step `s` (`0..n-1`) rank `r` sends chunk
//! `(r-s-1) mod n` and receives chunk `(r-s-2) mod n`, which it combines as
//! `received ⊕ local`. Chunk `j` thus starts at rank `j+1` and ends, fully
//! reduced, at rank `j`, with the bracketing
//! `((x[j+1] ⊕ x[j+2]) ⊕ …) ⊕ x[j]` (ranks mod `n`).
//!
//! **All-gather**: rank `r` starts with chunk `r`; at step `s` it sends chunk
//! `(r-s) mod n` and receives chunk `(r-s-1) mod n`, which it stores.

/// One ring step for one rank.
///
/// ```
/// use zccl_primitives::schedule::ring::{all_gather_steps, RingStep};
/// let s0 = RingStep { step: 0, send_to: 1, recv_from: 2, send_chunk: 0, recv_chunk: 2 };
/// assert_eq!(all_gather_steps(0, 3)[0], s0);
/// // The chunk a rank sends at step s is the one its successor receives.
/// let n = 4;
/// for r in 0..n {
///     let next = all_gather_steps((r + 1) % n, n);
///     for (a, b) in all_gather_steps(r, n).iter().zip(&next) {
///         assert_eq!(a.send_chunk, b.recv_chunk);
///     }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingStep {
    /// Step index.
    pub step: usize,
    /// Destination of the send (`r+1`).
    pub send_to: usize,
    /// Source of the receive (`r-1`).
    pub recv_from: usize,
    /// Chunk index sent.
    pub send_chunk: usize,
    /// Chunk index received.
    pub recv_chunk: usize,
}

fn step(rank: usize, n: usize, s: usize, send_back: usize) -> RingStep {
    let w = |k: usize| (rank + n * 2 - k % n) % n;
    RingStep {
        step: s,
        send_to: (rank + 1) % n,
        recv_from: (rank + n - 1) % n,
        send_chunk: w(s + send_back),
        recv_chunk: w(s + send_back + 1),
    }
}

/// The `n-1` reduce-scatter steps of `rank`; afterwards `rank` holds the fully
/// reduced chunk `rank`.
///
/// ```
/// use zccl_primitives::schedule::ring::reduce_scatter_steps;
/// let s = reduce_scatter_steps(0, 3);
/// assert_eq!((s[0].send_chunk, s[0].recv_chunk), (2, 1));
/// assert_eq!((s[1].send_chunk, s[1].recv_chunk), (1, 0));
/// ```
pub fn reduce_scatter_steps(rank: usize, n: usize) -> Vec<RingStep> {
    (0..n.saturating_sub(1))
        .map(|s| step(rank, n, s, 1))
        .collect()
}

/// The `n-1` all-gather steps of `rank`, which starts with chunk `rank`.
///
/// ```
/// use zccl_primitives::schedule::ring::all_gather_steps;
/// let s = all_gather_steps(1, 3);
/// assert_eq!((s[0].send_chunk, s[0].recv_chunk), (1, 0));
/// assert_eq!((s[1].send_chunk, s[1].recv_chunk), (0, 2));
/// ```
pub fn all_gather_steps(rank: usize, n: usize) -> Vec<RingStep> {
    (0..n.saturating_sub(1))
        .map(|s| step(rank, n, s, 0))
        .collect()
}

/// The order in which ring reduce-scatter combines contributions to chunk
/// `j`: ranks `j+1, j+2, …, j` (left fold). References use it to reproduce
/// the float result bit for bit.
///
/// ```
/// use zccl_primitives::schedule::ring::reduction_order;
/// assert_eq!(reduction_order(1, 4), vec![2, 3, 0, 1]);
/// ```
pub fn reduction_order(j: usize, n: usize) -> Vec<usize> {
    (1..=n).map(|k| (j + k) % n).collect()
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    /// Simulates the ring symbolically: each chunk as the list of ranks folded into it.
    #[test]
    fn reduce_scatter_then_all_gather_is_complete() {
        for n in 1..=8 {
            let mut st: Vec<Vec<Vec<usize>>> =
                (0..n).map(|r| (0..n).map(|_| vec![r]).collect()).collect();
            for s in 0..n - 1 {
                let snap = st.clone();
                for r in 0..n {
                    let p = reduce_scatter_steps(r, n)[s];
                    let from = reduce_scatter_steps(p.recv_from, n)[s];
                    assert_eq!(from.send_chunk, p.recv_chunk, "n={n} r={r} s={s}");
                    let mut v = snap[p.recv_from][p.recv_chunk].clone();
                    v.push(r);
                    st[r][p.recv_chunk] = v;
                }
            }
            for r in 0..n {
                assert_eq!(st[r][r], reduction_order(r, n), "n={n} r={r}");
            }
            // all-gather: each rank ends with every chunk
            let mut have: Vec<Vec<bool>> =
                (0..n).map(|r| (0..n).map(|j| j == r).collect()).collect();
            for s in 0..n - 1 {
                let snap = have.clone();
                for r in 0..n {
                    let p = all_gather_steps(r, n)[s];
                    assert!(snap[r][p.send_chunk]);
                    let from = all_gather_steps(p.recv_from, n)[s];
                    assert_eq!(from.send_chunk, p.recv_chunk);
                    have[r][p.recv_chunk] = true;
                }
            }
            assert!(have.iter().all(|h| h.iter().all(|&b| b)));
        }
    }
}

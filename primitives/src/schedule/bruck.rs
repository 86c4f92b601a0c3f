//! Bruck all-gather: `⌈log₂ n⌉` steps for any `n` (the small-message
//! all-gather).
//!
//! Rank `r` keeps a buffer of blocks in *rotated* order: position `i` holds
//! the block of rank `(r+i) mod n`. It starts with its own block. At step `k`
//! (distance `d = 2^k`) it sends its first `min(d, n-d)` blocks to `r-d` and
//! appends the same number received from `r+d`. After the last step position
//! `i` holds block `(r+i) mod n`; the executor un-rotates.

/// One Bruck step.
///
/// ```
/// use zccl_primitives::schedule::bruck::{steps, BruckStep};
/// assert_eq!(steps(2, 4)[1], BruckStep { send_to: 0, recv_from: 0, blocks: 2 });
/// // Every step pairs up: whoever rank 2 sends to receives from rank 2 ...
/// let n = 6;
/// for (k, st) in steps(2, n).iter().enumerate() {
///     assert_eq!(steps(st.send_to, n)[k].recv_from, 2);
/// }
/// // ... and the blocks received add up to the n-1 other blocks.
/// assert_eq!(steps(2, n).iter().map(|s| s.blocks).sum::<usize>(), n - 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BruckStep {
    /// Destination (`r - d`).
    pub send_to: usize,
    /// Source (`r + d`).
    pub recv_from: usize,
    /// Blocks sent and received (the first `blocks` of the rotated buffer).
    pub blocks: usize,
}

/// The steps of `rank` in a group of `n`.
///
/// ```
/// use zccl_primitives::schedule::bruck::steps;
/// let s = steps(0, 5);
/// assert_eq!(s.iter().map(|s| s.blocks).collect::<Vec<_>>(), vec![1, 2, 1]);
/// assert_eq!((s[0].send_to, s[0].recv_from), (4, 1));
/// ```
pub fn steps(rank: usize, n: usize) -> Vec<BruckStep> {
    let mut out = Vec::new();
    let mut d = 1;
    while d < n {
        out.push(BruckStep {
            send_to: (rank + n - d) % n,
            recv_from: (rank + d) % n,
            blocks: d.min(n - d),
        });
        d *= 2;
    }
    out
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    #[test]
    fn bruck_collects_everything_in_rotated_order() {
        for n in 1..=11 {
            let mut buf: Vec<Vec<usize>> = (0..n).map(|r| vec![r]).collect();
            for k in 0..steps(0, n).len() {
                let snap = buf.clone();
                for (r, b) in buf.iter_mut().enumerate() {
                    let st = steps(r, n)[k];
                    assert_eq!(steps(st.recv_from, n)[k].send_to, r);
                    b.extend_from_slice(&snap[st.recv_from][..st.blocks]);
                }
            }
            for (r, b) in buf.iter().enumerate() {
                assert_eq!(*b, (0..n).map(|i| (r + i) % n).collect::<Vec<_>>(), "n={n}");
            }
        }
    }
}

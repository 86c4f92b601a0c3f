//! Rabenseifner's all-reduce for a power-of-two group: a reduce-scatter by
//! recursive halving, then an all-gather by recursive doubling (Open MPI's
//! `redscat_allgather`, MPICH's medium-message all-reduce).
//!
//! The buffer is cut into `n` blocks ([`chunk_ranges`](super::chunks::chunk_ranges)).
//! It moves the same bytes as the ring (`2 (n-1)/n` of the buffer each way)
//! in `2 log₂ n` steps instead of `2 (n-1)`: fewer rounds of waiting on
//! each other, which is what medium messages pay for (and, with more ranks
//! than CPUs, every round may wait for a rank to be scheduled).
//!
//! Reduce-scatter, masks `1, 2, …, n/2`: the window of blocks a rank works
//! on halves each step; the rank keeps the lower half when bit `mask` of its
//! rank is clear (and is then the left operand, so both partners compute the
//! same bracketing), sends the other half to `rank ^ mask` and combines the
//! partner's copy of the kept half into its own (every operator is
//! commutative bit for bit, so the operand order does not change the result;
//! the order is kept for a reader who compares with a reference tree). It
//! ends owning one reduced
//! block ([`owned_block`], `rank` with its bits reversed); only that rank
//! computes it. The all-gather runs the steps backwards, each rank sending
//! what it kept and receiving what it gave away, so every rank ends with the
//! same bits.
//!
//! The first step pairs ranks `2i` and `2i+1`, ring neighbours: where ranks
//! wrongly pass different sizes and some take the ring, a halving rank's
//! first message meets a ring rank's first receive (or the reverse), and the
//! size mismatch is reported at once instead of both waiting out their
//! timeout.

use std::ops::Range;

/// One reduce-scatter step of a rank: blocks `send` go to `peer`, which
/// sends back its copy of `keep`; the rank combines it into its own.
///
/// ```
/// use zccl_primitives::schedule::halving::reduce_scatter_steps;
/// let s = reduce_scatter_steps(1, 4);
/// // Mask 1: rank 1 keeps blocks 2..4 (bit 1 set), sends 0..2 to rank 0.
/// assert_eq!((s[0].peer, s[0].keep.clone(), s[0].send.clone(), s[0].self_is_left), (0, 2..4, 0..2, false));
/// // Mask 2: keeps block 2 (bit 2 clear), sends block 3 to rank 3.
/// assert_eq!((s[1].peer, s[1].keep.clone(), s[1].send.clone(), s[1].self_is_left), (3, 2..3, 3..4, true));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HalvingStep {
    /// Step index (0-based, in order).
    pub step: usize,
    /// The partner (`rank ^ mask`).
    pub peer: usize,
    /// Blocks sent to the partner.
    pub send: Range<usize>,
    /// Blocks kept, into which the partner's copy is combined.
    pub keep: Range<usize>,
    /// Whether this rank's operand is the left one of the combine.
    pub self_is_left: bool,
}

/// One all-gather step of a rank: it sends the blocks it holds (`send`) to
/// `peer` and receives the partner's (`recv`), after which it holds both.
///
/// ```
/// use zccl_primitives::schedule::halving::all_gather_steps;
/// let s = all_gather_steps(1, 4);
/// assert_eq!((s[0].peer, s[0].send.clone(), s[0].recv.clone()), (3, 2..3, 3..4));
/// assert_eq!((s[1].peer, s[1].send.clone(), s[1].recv.clone()), (0, 2..4, 0..2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoublingStep {
    /// Step index (0-based, in order).
    pub step: usize,
    /// The partner (`rank ^ mask`).
    pub peer: usize,
    /// Blocks this rank holds and sends.
    pub send: Range<usize>,
    /// Blocks the partner holds and this rank receives.
    pub recv: Range<usize>,
}

fn check(rank: usize, n: usize) {
    assert!(
        n.is_power_of_two(),
        "halving needs a power-of-two group, not {n}"
    );
    assert!(rank < n, "rank {rank} of {n}");
}

/// The reduce-scatter steps of `rank` in a group of `n` (a power of two):
/// `log₂ n` of them; the last `keep` is the [`owned_block`] alone.
///
/// ```
/// use zccl_primitives::schedule::halving::{owned_block, reduce_scatter_steps};
/// for r in 0..8 {
///     let s = reduce_scatter_steps(r, 8);
///     assert_eq!(s.len(), 3);
///     assert_eq!(s[0].peer, r ^ 1);
///     let b = owned_block(r, 8);
///     assert_eq!(s[2].keep, b..b + 1);
/// }
/// assert!(reduce_scatter_steps(0, 1).is_empty());
/// ```
pub fn reduce_scatter_steps(rank: usize, n: usize) -> Vec<HalvingStep> {
    check(rank, n);
    let mut window = 0..n;
    let mut steps = Vec::new();
    let mut mask = 1;
    while mask < n {
        let half = window.len() / 2;
        let low = rank & mask == 0;
        let (lower, upper) = (
            window.start..window.start + half,
            window.start + half..window.end,
        );
        let (keep, send) = if low { (lower, upper) } else { (upper, lower) };
        window = keep.clone();
        steps.push(HalvingStep {
            step: steps.len(),
            peer: rank ^ mask,
            send,
            keep,
            self_is_left: low,
        });
        mask *= 2;
    }
    steps
}

/// The block `rank` owns after the reduce-scatter of a group of `n` (a power
/// of two): `rank` with its `log₂ n` bits reversed.
///
/// ```
/// use zccl_primitives::schedule::halving::owned_block;
/// assert_eq!((0..8).map(|r| owned_block(r, 8)).collect::<Vec<_>>(), [0, 4, 2, 6, 1, 5, 3, 7]);
/// assert_eq!(owned_block(0, 1), 0);
/// ```
pub fn owned_block(rank: usize, n: usize) -> usize {
    check(rank, n);
    let bits = n.trailing_zeros();
    if bits == 0 {
        0
    } else {
        rank.reverse_bits() >> (usize::BITS - bits)
    }
}

/// The all-gather steps of `rank` in a group of `n` (a power of two), which
/// starts holding its [`owned_block`]: the reduce-scatter's steps backwards,
/// sending what the rank kept and receiving what it gave away; `log₂ n` of
/// them, after which it holds all blocks.
///
/// ```
/// use zccl_primitives::schedule::halving::all_gather_steps;
/// let s = all_gather_steps(5, 8);
/// assert_eq!(s.iter().map(|s| s.peer).collect::<Vec<_>>(), [1, 7, 4]);
/// assert_eq!(s[2].send.len() + s[2].recv.len(), 8);
/// ```
pub fn all_gather_steps(rank: usize, n: usize) -> Vec<DoublingStep> {
    let rs = reduce_scatter_steps(rank, n);
    rs.iter()
        .rev()
        .enumerate()
        .map(|(step, h)| DoublingStep {
            step,
            peer: h.peer,
            send: h.keep.clone(),
            recv: h.send.clone(),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    /// Symbolic run over every rank: values are bracketing strings per
    /// block. Partners must agree on what they exchange, each block's final
    /// value must involve every rank once, and every rank must end with the
    /// same n blocks.
    #[test]
    fn every_rank_ends_with_every_block_reduced_over_all_ranks() {
        for n in [1, 2, 4, 8, 16, 32] {
            let mut v: Vec<Vec<String>> = (0..n)
                .map(|r| (0..n).map(|_| r.to_string()).collect())
                .collect();
            let rs: Vec<_> = (0..n).map(|r| reduce_scatter_steps(r, n)).collect();
            for k in 0..n.trailing_zeros() as usize {
                let before = v.clone();
                for r in 0..n {
                    let s = &rs[r][k];
                    let p = &rs[s.peer][k];
                    assert_eq!((p.peer, &p.send, &p.keep), (r, &s.keep, &s.send));
                    assert_ne!(s.self_is_left, p.self_is_left);
                    for b in s.keep.clone() {
                        let (mine, theirs) = (&before[r][b], &before[s.peer][b]);
                        v[r][b] = if s.self_is_left {
                            format!("({mine}+{theirs})")
                        } else {
                            format!("({theirs}+{mine})")
                        };
                    }
                }
            }
            let owner: Vec<usize> = (0..n).map(|r| owned_block(r, n)).collect();
            let mut sorted = owner.clone();
            sorted.sort();
            assert_eq!(
                sorted,
                (0..n).collect::<Vec<_>>(),
                "every block has one owner"
            );
            let mut owned = vec![String::new(); n];
            for r in 0..n {
                owned[owner[r]] = v[r][owner[r]].clone();
            }
            for b in &owned {
                let mut ranks: Vec<usize> = b
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().unwrap())
                    .collect();
                ranks.sort();
                assert_eq!(ranks, (0..n).collect::<Vec<_>>(), "{b}");
            }
            // All-gather: start with the owned block only.
            let mut held: Vec<Vec<Option<String>>> = (0..n)
                .map(|r| {
                    (0..n)
                        .map(|b| (b == owner[r]).then(|| owned[b].clone()))
                        .collect()
                })
                .collect();
            let ag: Vec<_> = (0..n).map(|r| all_gather_steps(r, n)).collect();
            for k in 0..n.trailing_zeros() as usize {
                let before = held.clone();
                for r in 0..n {
                    let s = &ag[r][k];
                    let p = &ag[s.peer][k];
                    assert_eq!((p.peer, &p.send, &p.recv), (r, &s.recv, &s.send));
                    for b in s.send.clone() {
                        assert!(
                            before[r][b].is_some(),
                            "n={n} r={r} sends block {b} it lacks"
                        );
                    }
                    for b in s.recv.clone() {
                        held[r][b] = before[s.peer][b].clone();
                    }
                }
            }
            for h in &held {
                let h: Vec<String> = h.iter().map(|x| x.clone().unwrap()).collect();
                assert_eq!(h, owned);
            }
        }
    }
}

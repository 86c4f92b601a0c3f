//! TokenRing step plan: Q travels around the ring while each computed
//! partial result (out, lse) travels straight back to the owner of its Q.
//!
//! With Q offset `k` (`+1` for the non-causal xDiT schedule, `-1` for the
//! causal zigzag schedule), at step `s` rank `r` holds and computes with the
//! Q of rank `(r - k·s) mod n`. Steps are `0..=n`:
//!
//! * step `s < n-1` posts the Q shift: send the current Q to `r+k`, receive
//!   the next one from `r-k`;
//! * step `s ≥ 2` posts the return of the block computed at step `s-1`: send
//!   it to its Q's owner `r - k(s-1)`, receive the block of this rank's own Q
//!   computed at step `s-1` by rank `r + k(s-1)`;
//! * steps `s < n` compute; step `n` only returns the last block.
//!
//! The block computed at step 0 is the rank's own and is merged locally, so
//! each rank receives exactly `n-1` foreign blocks, one from every other rank.

use super::wrap;

/// A Q transfer posted at some step.
///
/// ```
/// use zccl_primitives::schedule::token_ring::{plan, QShift};
/// let q = plan(0, 4, 1)[0].q_shift.unwrap();
/// assert_eq!(q, QShift { send_to: 1, recv_from: 3, sent_origin: 0, recv_origin: 3 });
/// // The Q received at step s is the one computed with at step s+1.
/// let p = plan(2, 5, -1);
/// for s in 0..4 {
///     assert_eq!(Some(p[s].q_shift.unwrap().recv_origin), p[s + 1].compute_origin);
/// }
/// assert!(p[4].q_shift.is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QShift {
    /// Destination (`r + k`).
    pub send_to: usize,
    /// Source (`r - k`).
    pub recv_from: usize,
    /// Owner of the Q sent (the one computed with at this step).
    pub sent_origin: usize,
    /// Owner of the Q received (computed with at the next step).
    pub recv_origin: usize,
}

/// A partial-result transfer posted at some step.
///
/// ```
/// use zccl_primitives::schedule::token_ring::{plan, OutReturn};
/// let p = plan(1, 4, 1);
/// assert_eq!(p[2].out_return, Some(OutReturn { computed_at: 1, send_to: 0, recv_from: 2 }));
/// // Rank 1 gets exactly one block of its Q back from every other rank.
/// let mut from: Vec<usize> = p.iter().filter_map(|s| s.out_return).map(|o| o.recv_from).collect();
/// from.sort();
/// assert_eq!(from, vec![0, 2, 3]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutReturn {
    /// The step at which the returned blocks were computed (`step - 1`).
    pub computed_at: usize,
    /// Owner of the Q of the block sent; the destination.
    pub send_to: usize,
    /// The rank that computed a block of this rank's Q at `computed_at`; the source.
    pub recv_from: usize,
}

/// What one rank does at one step.
///
/// ```
/// use zccl_primitives::schedule::token_ring::plan;
/// let steps = plan(2, 4, -1);
/// // A rank computes with its own Q first, then with every other Q once.
/// let mut seen: Vec<usize> = steps.iter().filter_map(|s| s.compute_origin).collect();
/// assert_eq!(seen[0], 2);
/// seen.sort();
/// assert_eq!(seen, vec![0, 1, 2, 3]);
/// // The last step only returns the last block.
/// let last = steps.last().unwrap();
/// assert_eq!((last.step, last.compute_origin, last.q_shift), (4, None, None));
/// assert!(last.out_return.is_some());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRingStep {
    /// Step index, `0..=n`.
    pub step: usize,
    /// Owner of the Q computed with at this step (`None` at step `n`).
    pub compute_origin: Option<usize>,
    /// Q transfer posted before this step's compute.
    pub q_shift: Option<QShift>,
    /// Partial-result transfer posted before this step's compute.
    pub out_return: Option<OutReturn>,
}

/// The `n+1` steps of `rank` for Q offset `q_offset`.
///
/// ```
/// use zccl_primitives::schedule::token_ring::plan;
/// let p = plan(0, 4, 1);
/// assert_eq!(p.len(), 5);
/// assert_eq!(p[1].compute_origin, Some(3));
/// let o = p[2].out_return.unwrap();
/// assert_eq!((o.computed_at, o.send_to, o.recv_from), (1, 3, 1));
/// assert!(p[4].compute_origin.is_none() && p[4].out_return.is_some());
/// ```
pub fn plan(rank: usize, n: usize, q_offset: isize) -> Vec<TokenRingStep> {
    let r = rank as isize;
    let origin = |s: usize| wrap(r - q_offset * s as isize, n);
    (0..=n)
        .map(|s| TokenRingStep {
            step: s,
            compute_origin: (s < n).then(|| origin(s)),
            q_shift: (s + 1 < n).then(|| QShift {
                send_to: wrap(r + q_offset, n),
                recv_from: wrap(r - q_offset, n),
                sent_origin: origin(s),
                recv_origin: origin(s + 1),
            }),
            out_return: (s >= 2).then(|| OutReturn {
                computed_at: s - 1,
                send_to: origin(s - 1),
                recv_from: wrap(r + q_offset * (s as isize - 1), n),
            }),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    #[test]
    fn plans_match_across_ranks() {
        for n in 1..=8 {
            for k in [1isize, -1] {
                let plans: Vec<_> = (0..n).map(|r| plan(r, n, k)).collect();
                let mut foreign = vec![Vec::new(); n];
                for r in 0..n {
                    for st in &plans[r] {
                        if let Some(q) = st.q_shift {
                            let peer = plans[q.send_to][st.step].q_shift.unwrap();
                            assert_eq!(peer.recv_from, r);
                            assert_eq!(peer.recv_origin, q.sent_origin);
                            assert_eq!(
                                plans[q.send_to][st.step + 1].compute_origin,
                                Some(q.sent_origin)
                            );
                        }
                        if let Some(o) = st.out_return {
                            // The block I computed at computed_at was for Q of send_to.
                            assert_eq!(plans[r][o.computed_at].compute_origin, Some(o.send_to));
                            let peer = plans[o.send_to][st.step].out_return.unwrap();
                            assert_eq!(peer.recv_from, r);
                            foreign[o.send_to].push(r);
                        }
                    }
                }
                for (r, f) in foreign.iter_mut().enumerate() {
                    f.sort();
                    assert_eq!(
                        *f,
                        (0..n).filter(|&x| x != r).collect::<Vec<_>>(),
                        "n={n} k={k}"
                    );
                }
            }
        }
    }
}

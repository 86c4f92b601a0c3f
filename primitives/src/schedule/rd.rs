//! Recursive doubling all-reduce for any `n` (the latency-optimal algorithm
//! for small messages: `⌈log₂ n⌉ + 2` steps when `n` is not a power of two,
//! `log₂ n` otherwise, each moving the whole buffer).
//!
//! Let `p` be the largest power of two `≤ n` and `e = n - p`. Ranks `0..2e`
//! pair up: each even rank `2i` sends its buffer to `2i+1` (which combines
//! `x[2i] ⊕ x[2i+1]`) and sits out; the `p` remaining ranks are renumbered
//! `0..p` in rank order and run `log₂ p` exchange rounds (partner
//! `new ^ mask`); the odd ranks finally send the result back to their even
//! partner. In every combine the operand of the **lower** group is on the
//! left, so all ranks compute the same bracketing — a balanced binary tree
//! over the ranks in rank order — and get bit-identical results.

/// The plan of one rank.
///
/// ```
/// use zccl_primitives::schedule::rd::{plan, RdRole};
/// // n = 6 = 4 + 2: two even ranks are folded in, four ranks exchange.
/// let roles: Vec<RdRole> = (0..6).map(|r| plan(r, 6)).collect();
/// assert_eq!(roles[2], RdRole::Extra { partner: 3 });
/// assert_eq!(roles.iter().filter(|r| matches!(r, RdRole::Extra { .. })).count(), 2);
/// let RdRole::Core { new_rank, fold_from, rounds } = &roles[5] else { panic!() };
/// assert_eq!((*new_rank, *fold_from, rounds.len()), (3, None, 2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdRole {
    /// Sends its buffer to `partner` (= rank + 1), then receives the result from it.
    Extra {
        /// The odd rank that folds this rank in.
        partner: usize,
    },
    /// Takes part in the exchange rounds.
    Core {
        /// Rank in the power-of-two core group.
        new_rank: usize,
        /// The even rank folded into this one before the rounds (combined on the left).
        fold_from: Option<usize>,
        /// The exchange rounds in order (up to 64 ranks' without an
        /// allocation: a small all-reduce plans its rounds at every call).
        rounds: smallvec::SmallVec<[RdRound; 6]>,
    },
}

/// One exchange round of a core rank.
///
/// ```
/// use zccl_primitives::schedule::rd::{plan, RdRole, RdRound};
/// let rounds = |r| match plan(r, 4) {
///     RdRole::Core { rounds, .. } => rounds,
///     RdRole::Extra { .. } => unreachable!("n = 4 is a power of two"),
/// };
/// // Partners see each other in the same round, on opposite sides.
/// assert_eq!(rounds(1)[1], RdRound { round: 1, peer: 3, self_is_left: true });
/// assert_eq!(rounds(3)[1], RdRound { round: 1, peer: 1, self_is_left: false });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdRound {
    /// Round index (`mask = 1 << round`).
    pub round: usize,
    /// The partner's original rank.
    pub peer: usize,
    /// Whether this rank's operand goes on the left (its group is the lower one).
    pub self_is_left: bool,
}

/// Largest power of two `≤ n` (`n ≥ 1`).
///
/// ```
/// assert_eq!(zccl_primitives::schedule::rd::pow2_floor(6), 4);
/// ```
pub fn pow2_floor(n: usize) -> usize {
    assert!(n >= 1);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// Original rank of core rank `new_rank` for a group of `n`.
///
/// ```
/// use zccl_primitives::schedule::rd::{core_to_rank, plan, RdRole};
/// // n = 6: the core is ranks 1, 3 (which fold in 0, 2), then 4, 5.
/// let core: Vec<usize> = (0..4).map(|v| core_to_rank(v, 6)).collect();
/// assert_eq!(core, vec![1, 3, 4, 5]);
/// // It inverts the `new_rank` of `plan`.
/// for v in 0..4 {
///     let RdRole::Core { new_rank, .. } = plan(core_to_rank(v, 6), 6) else { panic!() };
///     assert_eq!(new_rank, v);
/// }
/// // For a power of two it is the identity.
/// assert_eq!(core_to_rank(5, 8), 5);
/// ```
pub fn core_to_rank(new_rank: usize, n: usize) -> usize {
    let e = n - pow2_floor(n);
    if new_rank < e {
        2 * new_rank + 1
    } else {
        new_rank + e
    }
}

/// The plan of `rank` in a group of `n`.
///
/// ```
/// use zccl_primitives::schedule::rd::{plan, RdRole};
/// // n = 3: rank 0 folds into rank 1; ranks 1 and 2 exchange.
/// assert_eq!(plan(0, 3), RdRole::Extra { partner: 1 });
/// let RdRole::Core { new_rank, fold_from, rounds } = plan(1, 3) else { panic!() };
/// assert_eq!((new_rank, fold_from, rounds[0].peer, rounds[0].self_is_left), (0, Some(0), 2, true));
/// ```
pub fn plan(rank: usize, n: usize) -> RdRole {
    assert!(rank < n);
    let p = pow2_floor(n);
    let e = n - p;
    if rank < 2 * e && rank.is_multiple_of(2) {
        return RdRole::Extra { partner: rank + 1 };
    }
    let (new_rank, fold_from) = if rank < 2 * e {
        (rank / 2, Some(rank - 1))
    } else {
        (rank - e, None)
    };
    let rounds = (0..p.trailing_zeros() as usize)
        .map(|round| {
            let peer_new = new_rank ^ (1 << round);
            RdRound {
                round,
                peer: core_to_rank(peer_new, n),
                self_is_left: new_rank < peer_new,
            }
        })
        .collect();
    RdRole::Core {
        new_rank,
        fold_from,
        rounds,
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    /// Symbolic run: values are bracketing strings; every rank must end with the same one,
    /// and it must list all ranks in order.
    #[test]
    fn every_rank_gets_the_same_bracketing() {
        for n in 1..=13 {
            let mut v: Vec<String> = (0..n).map(|r| r.to_string()).collect();
            for r in 0..n {
                if let RdRole::Core {
                    fold_from: Some(f), ..
                } = plan(r, n)
                {
                    assert_eq!(plan(f, n), RdRole::Extra { partner: r });
                    v[r] = format!("({}+{})", v[f], v[r]);
                }
            }
            let rounds = pow2_floor(n).trailing_zeros() as usize;
            for k in 0..rounds {
                let snap = v.clone();
                for r in 0..n {
                    if let RdRole::Core { rounds, .. } = plan(r, n) {
                        let rd = rounds[k];
                        let RdRole::Core { rounds: pr, .. } = plan(rd.peer, n) else {
                            panic!()
                        };
                        assert_eq!(pr[k].peer, r);
                        assert_eq!(pr[k].self_is_left, !rd.self_is_left);
                        v[r] = if rd.self_is_left {
                            format!("({}+{})", snap[r], snap[rd.peer])
                        } else {
                            format!("({}+{})", snap[rd.peer], snap[r])
                        };
                    }
                }
            }
            for r in 0..n {
                if let RdRole::Extra { partner } = plan(r, n) {
                    v[r] = v[partner].clone();
                }
            }
            assert!(v.iter().all(|x| *x == v[0]), "n={n}: {v:?}");
            let digits: Vec<usize> = v[0]
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            assert_eq!(digits, (0..n).collect::<Vec<_>>());
        }
    }
}

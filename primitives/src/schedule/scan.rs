//! All-Scan chain plan (ZeCO): a pipelined receive-combine-send chain over
//! the ranks, in rank order ([`ScanDirection::Forward`]) or reverse rank
//! order ([`ScanDirection::Reverse`]), with the state cut into `K` row blocks.
//!
//! Rank `p` receives its exclusive prefix block by block from its
//! predecessor, combines each block with its own element as soon as it
//! arrives, and forwards the inclusive block to its successor before the next
//! block arrives. The last rank of the chain sends nothing; the first receives
//! nothing (its exclusive prefix is the identity).
//!
//! Latency model: with `τ` the time to send the whole state, the chain takes
//! `(K + n - 2)·τ/K` (for `n ≥ 2`), see [`pipeline_latency`].

use std::ops::Range;

use super::chunks::chunk_range;
use crate::error::{Result, invalid};

/// Direction of the scan.
///
/// ```
/// use zccl_primitives::schedule::scan::{exclusive_ranks, ScanDirection};
/// // What rank 1 of 4 combines before its own element.
/// assert_eq!(exclusive_ranks(1, 4, ScanDirection::Forward), vec![0]);
/// assert_eq!(exclusive_ranks(1, 4, ScanDirection::Reverse), vec![3, 2]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanDirection {
    /// Rank 0 first: rank `p` gets the combine of ranks `0..p`.
    Forward,
    /// Rank `n-1` first: rank `p` gets the combine of ranks `n-1, n-2, …, p+1`.
    Reverse,
}

/// Where a rank sits on the chain.
///
/// ```
/// use zccl_primitives::schedule::scan::{chain_role, ChainRole, ScanDirection::*};
/// assert_eq!(chain_role(2, 4, Forward), ChainRole { recv_from: Some(1), send_to: Some(3) });
/// // Following `send_to` from the rank with no predecessor walks the chain.
/// let n = 4;
/// let first = (0..n).find(|&r| chain_role(r, n, Reverse).recv_from.is_none()).unwrap();
/// let mut order = vec![first];
/// while let Some(next) = chain_role(*order.last().unwrap(), n, Reverse).send_to {
///     order.push(next);
/// }
/// assert_eq!(order, vec![3, 2, 1, 0]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainRole {
    /// Predecessor (source of the exclusive prefix); `None` for the first rank.
    pub recv_from: Option<usize>,
    /// Successor (destination of the inclusive prefix); `None` for the last rank.
    pub send_to: Option<usize>,
}

/// The chain role of `rank`.
///
/// ```
/// use zccl_primitives::schedule::scan::{chain_role, ScanDirection::*};
/// assert_eq!(chain_role(0, 3, Forward).recv_from, None);
/// assert_eq!(chain_role(0, 3, Forward).send_to, Some(1));
/// assert_eq!(chain_role(0, 3, Reverse).recv_from, Some(1));
/// assert_eq!(chain_role(0, 3, Reverse).send_to, None);
/// ```
pub fn chain_role(rank: usize, n: usize, dir: ScanDirection) -> ChainRole {
    let prev = rank.checked_sub(1);
    let next = (rank + 1 < n).then_some(rank + 1);
    match dir {
        ScanDirection::Forward => ChainRole {
            recv_from: prev,
            send_to: next,
        },
        ScanDirection::Reverse => ChainRole {
            recv_from: next,
            send_to: prev,
        },
    }
}

/// The ranks combined into `rank`'s exclusive prefix, in combine order.
///
/// ```
/// use zccl_primitives::schedule::scan::{exclusive_ranks, ScanDirection::*};
/// assert_eq!(exclusive_ranks(2, 4, Forward), vec![0, 1]);
/// assert_eq!(exclusive_ranks(1, 4, Reverse), vec![3, 2]);
/// ```
pub fn exclusive_ranks(rank: usize, n: usize, dir: ScanDirection) -> Vec<usize> {
    match dir {
        ScanDirection::Forward => (0..rank).collect(),
        ScanDirection::Reverse => (rank + 1..n).rev().collect(),
    }
}

/// Splits `rows` rows into `k` contiguous blocks (sizes differ by at most one).
/// `k` must be in `1..=max(rows, 1)`.
///
/// ```
/// use zccl_primitives::schedule::scan::row_blocks;
/// assert_eq!(row_blocks(5, 2).unwrap(), vec![0..3, 3..5]);
/// assert!(row_blocks(4, 5).is_err());
/// assert!(row_blocks(4, 0).is_err());
/// ```
pub fn row_blocks(rows: usize, k: usize) -> Result<Vec<Range<usize>>> {
    if k == 0 || k > rows.max(1) {
        return Err(invalid(format!(
            "all_scan: {k} blocks for {rows} rows (need 1..={})",
            rows.max(1)
        )));
    }
    Ok((0..k).map(|j| chunk_range(rows, k, j)).collect())
}

/// Latency of the pipelined chain in units of `τ` (time to send the whole state).
///
/// ```
/// use zccl_primitives::schedule::scan::pipeline_latency;
/// assert_eq!(pipeline_latency(8, 1), 7.0);
/// assert_eq!(pipeline_latency(8, 4), 2.5);
/// assert_eq!(pipeline_latency(1, 4), 0.0);
/// ```
pub fn pipeline_latency(n: usize, k: usize) -> f64 {
    if n < 2 {
        0.0
    } else {
        (k + n - 2) as f64 / k as f64
    }
}

//! Bandwidth figures as nccl-tests defines them (`algbw = S / t`,
//! `busbw = algbw × factor(n)`), with `S` taken per operation as nccl-tests
//! does.
//!
//! | op | `S` | factor |
//! |---|---|---|
//! | all_reduce | buffer per rank | `2(n−1)/n` |
//! | all_gather | total output | `(n−1)/n` |
//! | reduce_scatter | total input | `(n−1)/n` |
//! | all_to_all | whole send buffer per rank | `(n−1)/n` |
//! | sendrecv (ring shift, each TokenRing direction) | bytes sent per rank | 1 |
//! | broadcast, reduce | buffer | 1 |

/// An operation measured the nccl-tests way.
///
/// ```
/// use zccl_primitives::busbw::{bus_factor, BwOp};
/// // On one rank a collective moves nothing over the bus ...
/// assert_eq!(bus_factor(BwOp::AllReduce, 1), 0.0);
/// assert_eq!(bus_factor(BwOp::ReduceScatter, 4), 0.75);
/// // ... while point-to-point and rooted operations always count in full.
/// assert_eq!(bus_factor(BwOp::Broadcast, 4), 1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BwOp {
    /// All-reduce.
    AllReduce,
    /// All-gather.
    AllGather,
    /// Reduce-scatter.
    ReduceScatter,
    /// All-to-all.
    AllToAll,
    /// Send/recv ring step.
    SendRecv,
    /// Broadcast.
    Broadcast,
    /// Reduce.
    Reduce,
}

/// The bus-bandwidth factor of `op` over `n` ranks.
///
/// ```
/// use zccl_primitives::busbw::{bus_factor, BwOp};
/// assert_eq!(bus_factor(BwOp::AllReduce, 8), 1.75);
/// assert_eq!(bus_factor(BwOp::SendRecv, 8), 1.0);
/// ```
pub fn bus_factor(op: BwOp, n: usize) -> f64 {
    let n = n as f64;
    match op {
        BwOp::AllReduce => 2.0 * (n - 1.0) / n,
        BwOp::AllGather | BwOp::ReduceScatter | BwOp::AllToAll => (n - 1.0) / n,
        BwOp::SendRecv | BwOp::Broadcast | BwOp::Reduce => 1.0,
    }
}

/// Algorithm and bus bandwidth, in bytes per second.
///
/// ```
/// use zccl_primitives::busbw::{bandwidth, Bandwidth, BwOp};
/// // 4 GB all-reduced in 2 s over 4 ranks: busbw = algbw × 2(n−1)/n.
/// let b = bandwidth(BwOp::AllReduce, 4e9, 2.0, 4);
/// assert_eq!(b, Bandwidth { algbw: 2e9, busbw: 3e9 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    /// `S / t`.
    pub algbw: f64,
    /// `algbw × factor(n)`.
    pub busbw: f64,
}

/// Bandwidths of `op` moving `bytes` (`S`, per the table above) in `secs`
/// seconds over `n` ranks.
///
/// ```
/// use zccl_primitives::busbw::{bandwidth, BwOp};
/// let b = bandwidth(BwOp::AllGather, 1e9, 1.0, 8);
/// assert_eq!((b.algbw / 1e9, b.busbw / 1e9), (1.0, 0.875));
/// ```
pub fn bandwidth(op: BwOp, bytes: f64, secs: f64, n: usize) -> Bandwidth {
    let algbw = bytes / secs;
    Bandwidth {
        algbw,
        busbw: algbw * bus_factor(op, n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nccl_tests_factors_n8_1gb_1s() {
        let gb = |op| bandwidth(op, 1e9, 1.0, 8).busbw / 1e9;
        assert_eq!(gb(BwOp::AllReduce), 1.75);
        assert_eq!(gb(BwOp::AllGather), 0.875);
        assert_eq!(gb(BwOp::ReduceScatter), 0.875);
        assert_eq!(gb(BwOp::AllToAll), 0.875);
        assert_eq!(gb(BwOp::SendRecv), 1.0);
    }
}

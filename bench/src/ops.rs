//! The operations `zccl-bench` measures, and how a requested size becomes
//! buffer counts, the table's `size` and `count` columns and the `S` of
//! `algbw = S / t` (pure; nccl-tests' `getCollByteCount` and `getBw`).
//!
//! | op | send / recv count per rank (`c = size / sizeof`) | `size` column | `count` column | `S` | busbw factor |
//! |---|---|---|---|---|---|
//! | all_reduce | `c` / `c` | `c·e` | `c` | `c·e` | `2(n−1)/n` |
//! | all_gather | `b` / `n·b`, `b = ⌊c/n⌋` rounded down to 16 B | `n·b·e` | `b` | `n·b·e` | `(n−1)/n` |
//! | reduce_scatter | `n·b` / `b` | `n·b·e` | `b` | `n·b·e` | `(n−1)/n` |
//! | alltoall | `n·b` / `n·b` | `n·b·e` | `b` | `n·b·e` | `(n−1)/n` |
//! | broadcast | `c` / `c` | `c·e` | `c` | `c·e` | 1 |
//! | sendrecv, ring_shift | `c` / `c` | `c·e` | `c` | `c·e` | 1 |
//! | pingpong (time: half the round trip) | `c` / `c` | `c·e` | `c` | `c·e` | 1 |
//! | token_ring | `2h` / `2h`, `h = ⌊c/2⌋` rounded down to 16 B per direction | `2h·e` | `2h` | `2h·e` (both directions) | 1 |
//! | all_scan (`f32` only) | `rows·cols` / `rows·cols` | `rows·cols·4` | `rows·cols` | `rows·cols·4` | 1 |
//!
//! `e` is the element size. The factors come from
//! [`zccl_primitives::busbw`], which this crate does not duplicate.

use serde::Serialize;
use zccl_primitives::busbw::BwOp;

/// An operation of `zccl-bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// All-reduce.
    AllReduce,
    /// All-gather.
    AllGather,
    /// Reduce-scatter.
    ReduceScatter,
    /// Broadcast from `-r` root.
    Broadcast,
    /// All-to-all (equal splits).
    Alltoall,
    /// Rank `r` sends to `r+1` and receives from `r−1`.
    Sendrecv,
    /// Rank `r` sends to `r+k` and receives from `r−k` (`--offset k`).
    RingShift,
    /// Ranks `2i` and `2i+1` bounce the buffer (send, then receive it back);
    /// the time is half the round trip (MPI ping-pong's one-way latency).
    Pingpong,
    /// TokenRing's bidirectional step: half the bytes to `r+1`, half to `r−1`, on two channels.
    TokenRing,
    /// ZeCO's All-Scan (diagonal-decay combine, `f32` states).
    AllScan,
}

impl Op {
    /// Every operation, in the order of the command's subcommands.
    pub const ALL: [Op; 10] = [
        Op::AllReduce,
        Op::AllGather,
        Op::ReduceScatter,
        Op::Broadcast,
        Op::Alltoall,
        Op::Sendrecv,
        Op::RingShift,
        Op::Pingpong,
        Op::TokenRing,
        Op::AllScan,
    ];

    /// The subcommand name (`"all_reduce"`).
    pub const fn name(self) -> &'static str {
        match self {
            Op::AllReduce => "all_reduce",
            Op::AllGather => "all_gather",
            Op::ReduceScatter => "reduce_scatter",
            Op::Broadcast => "broadcast",
            Op::Alltoall => "alltoall",
            Op::Sendrecv => "sendrecv",
            Op::RingShift => "ring_shift",
            Op::Pingpong => "pingpong",
            Op::TokenRing => "token_ring",
            Op::AllScan => "all_scan",
        }
    }

    /// The nccl-tests operation whose bus-bandwidth factor applies.
    /// All-Scan has no nccl-tests analogue: like a chain of sendrecvs, factor 1.
    pub const fn bw_op(self) -> BwOp {
        match self {
            Op::AllReduce => BwOp::AllReduce,
            Op::AllGather => BwOp::AllGather,
            Op::ReduceScatter => BwOp::ReduceScatter,
            Op::Alltoall => BwOp::AllToAll,
            Op::Broadcast => BwOp::Broadcast,
            Op::Sendrecv | Op::RingShift | Op::Pingpong | Op::TokenRing | Op::AllScan => {
                BwOp::SendRecv
            }
        }
    }

    /// Whether the op reduces (uses `-o`).
    pub const fn reduces(self) -> bool {
        matches!(self, Op::AllReduce | Op::ReduceScatter)
    }

    /// Whether the op has a root (uses `-r`).
    pub const fn rooted(self) -> bool {
        matches!(self, Op::Broadcast)
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Buffer counts and table figures of one op at one size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Elements each rank sends (its input buffer).
    pub send_count: usize,
    /// Elements each rank receives (its output buffer).
    pub recv_count: usize,
    /// nccl-tests' "count": the per-rank parameter count (per-peer block for
    /// all_gather, reduce_scatter and alltoall).
    pub count: usize,
    /// The `size` column: `max(send, recv)` bytes.
    pub bytes: usize,
    /// `S` of `algbw = S / t`, in bytes.
    pub bw_bytes: usize,
    /// all_scan: state rows and columns (`rows·cols = count`); `(0, 0)` otherwise.
    pub rows_cols: (usize, usize),
}

/// Rounds a per-rank element count down to a whole number of 16-byte units,
/// as nccl-tests does for per-peer blocks (`count & -(16/eltSize)`).
fn align16(count: usize, elem: usize) -> usize {
    let unit = (16 / elem).max(1);
    count - count % unit
}

/// The layout of `op` for a requested `size` in bytes, elements of `elem`
/// bytes, `n` ranks, and (all_scan) states of at most `scan_cols` columns.
///
/// ```
/// use zccl_bench::ops::{layout, Op};
/// let l = layout(Op::AllGather, 4, 1024, 3, 0);
/// assert_eq!((l.send_count, l.recv_count, l.count, l.bytes), (84, 252, 84, 1008));
/// ```
pub fn layout(op: Op, elem: usize, size: usize, n: usize, scan_cols: usize) -> Layout {
    let c = size / elem;
    let plain = |c: usize| Layout {
        send_count: c,
        recv_count: c,
        count: c,
        bytes: c * elem,
        bw_bytes: c * elem,
        rows_cols: (0, 0),
    };
    match op {
        Op::AllReduce | Op::Broadcast | Op::Sendrecv | Op::RingShift | Op::Pingpong => plain(c),
        Op::AllGather | Op::ReduceScatter | Op::Alltoall => {
            let b = align16(c / n, elem);
            let (send, recv) = match op {
                Op::AllGather => (b, n * b),
                Op::ReduceScatter => (n * b, b),
                _ => (n * b, n * b),
            };
            Layout {
                send_count: send,
                recv_count: recv,
                count: b,
                bytes: n * b * elem,
                bw_bytes: n * b * elem,
                rows_cols: (0, 0),
            }
        }
        Op::TokenRing => plain(2 * align16(c / 2, elem)),
        Op::AllScan => {
            let cols = scan_cols.max(1).min(c.max(1));
            let rows = c / cols;
            Layout {
                rows_cols: (rows, if rows == 0 { 0 } else { cols }),
                ..plain(rows * cols)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_follow_nccl_tests() {
        // all_reduce: the whole buffer; a size that is not a multiple of the element size rounds down.
        let l = layout(Op::AllReduce, 4, 1027, 8, 0);
        assert_eq!(
            (l.send_count, l.recv_count, l.count, l.bytes),
            (256, 256, 256, 1024)
        );
        // reduce_scatter: input n·b, output b, count b, size n·b·e.
        let l = layout(Op::ReduceScatter, 2, 1 << 20, 8, 0);
        assert_eq!(
            (l.send_count, l.recv_count, l.count),
            (524288, 65536, 65536)
        );
        assert_eq!((l.bytes, l.bw_bytes), (1 << 20, 1 << 20));
        // alltoall with 3 ranks of doubles: 1024 B -> 42 per peer -> 42 rounded to 2.
        let l = layout(Op::Alltoall, 8, 1024, 3, 0);
        assert_eq!((l.count, l.send_count, l.bytes), (42, 126, 1008));
        // int8-like elements: 16 per unit.
        let l = layout(Op::AllGather, 1, 100, 3, 0);
        assert_eq!((l.count, l.recv_count), (32, 96));
        // Too small for one unit per peer: empty.
        assert_eq!(layout(Op::AllGather, 4, 8, 4, 0).bytes, 0);
        // token_ring: both directions, 16 B per direction unit.
        let l = layout(Op::TokenRing, 4, 1000, 4, 0);
        assert_eq!((l.send_count, l.bytes), (248, 992));
        // all_scan: rows x cols, cols capped by the count.
        let l = layout(Op::AllScan, 4, 1 << 16, 4, 128);
        assert_eq!(
            (l.rows_cols, l.count, l.bytes),
            ((128, 128), 16384, 1 << 16)
        );
        let l = layout(Op::AllScan, 4, 40, 4, 128);
        assert_eq!((l.rows_cols, l.count), ((1, 10), 10));
        let l = layout(Op::AllScan, 4, 1000, 4, 64);
        assert_eq!((l.rows_cols, l.count), ((3, 64), 192));
        assert_eq!(layout(Op::AllScan, 4, 2, 4, 64).rows_cols, (0, 0));
    }

    #[test]
    fn bw_ops() {
        assert_eq!(Op::AllScan.bw_op(), BwOp::SendRecv);
        assert_eq!(Op::Alltoall.bw_op(), BwOp::AllToAll);
        assert!(Op::ReduceScatter.reduces() && !Op::AllGather.reduces());
        assert!(Op::Broadcast.rooted());
        assert_eq!(Op::ALL.map(|o| o.name()).len(), 10);
    }
}

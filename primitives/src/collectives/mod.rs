//! All-reduce, all-gather, reduce-scatter, broadcast and barrier over a
//! [`Fabric`](crate::Fabric).
//!
//! The plain functions are blocking and must be called by every rank of the
//! fabric with matching arguments (same length, op, root and channel). They
//! use one channel; run two collectives concurrently only on different
//! channels.
//!
//! Each has a non-blocking form (`iall_reduce`, `iall_gather`,
//! `ireduce_scatter`, `ibroadcast`, `ibarrier`) that takes the fabric as an
//! `Arc`, owns its buffer, runs the same schedule on a progress thread and
//! returns an [`OpHandle`](crate::OpHandle); see [`crate::nonblocking`] for
//! the rules (one in-flight operation per channel).
//!
//! Reduction semantics and rounding are those of [`crate::reduce`]: for
//! `f16`/`bf16` the ring reduce-scatter and the recursive-doubling exchange
//! move `f32` partial results (twice the bytes of the reduce-scatter half),
//! and the result is rounded to 16 bits once, by the rank that finishes it;
//! the all-gather half moves the rounded values. Every rank ends with
//! bit-identical results.
//!
//! Counts need not be divisible by the number of ranks (chunks follow
//! [`crate::schedule::chunks`]; zero-length chunks are sent as empty messages).

use crate::dtype::Elem;
use crate::error::Result;
use crate::fabric::{SendHandle, tag};

// One file per collective, each with its non-blocking form: `all_reduce.rs`
// (ring and recursive doubling, in place and out of place),
// `all_gather.rs` (ring and Bruck), `reduce_scatter.rs` (ring and recursive halving),
// `broadcast.rs` (binomial tree and chain), `barrier.rs` (dissemination).
// The pipelined ring phases that all-reduce shares with reduce-scatter and
// all-gather (pieces, receives posted ahead) are in `ring_pipe.rs`.
mod all_gather;
mod all_reduce;
mod barrier;
mod broadcast;
mod reduce_scatter;
mod ring_pipe;

pub use all_gather::{all_gather, all_gather_into, all_gather_with, iall_gather};
pub use all_reduce::{all_reduce, all_reduce_into, all_reduce_with, iall_reduce};
pub use barrier::{barrier, ibarrier};
pub use broadcast::{CHAIN_SEGMENT_BYTES, broadcast, broadcast_with, ibroadcast};
pub use reduce_scatter::{ireduce_scatter, reduce_scatter, reduce_scatter_into};
pub use ring_pipe::RING_PIECE_BYTES;

// The opcodes of the message tags, one per phase, kept here so that they
// stay distinct across the collectives.
const OP_AR_RS: u8 = 0x01;
const OP_AR_AG: u8 = 0x02;
const OP_RD: u8 = 0x03;
const OP_AG: u8 = 0x04;
const OP_BCAST: u8 = 0x05;
const OP_BARRIER: u8 = 0x06;
const OP_RS: u8 = 0x07;
const OP_HALVING: u8 = 0x08;
const OP_HALVING_RS: u8 = 0x09;

fn step_tag(op: u8, s: usize) -> u64 {
    tag(op, s as u16, 0)
}

fn wait_all(sends: impl IntoIterator<Item = SendHandle>) -> Result<()> {
    for s in sends {
        s.wait()?;
    }
    Ok(())
}

/// Whether `T` is its own accumulator type (every type but `f16`/`bf16`).
pub(super) fn own_acc<T: Elem>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<T::Acc>()
}

/// `buf` as its accumulator type, when that is its own type.
pub(super) fn as_acc<T: Elem>(buf: &[T]) -> Option<&[T::Acc]> {
    own_acc::<T>().then(|| {
        // SAFETY: `T` and `T::Acc` are the same type (checked just above).
        unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<T::Acc>(), buf.len()) }
    })
}

/// `buf` as its accumulator type, when that is its own type (every type but
/// `f16`/`bf16`, which accumulate in `f32`).
pub(super) fn as_acc_mut<T: Elem>(buf: &mut [T]) -> Option<&mut [T::Acc]> {
    own_acc::<T>().then(|| {
        // SAFETY: `T` and `T::Acc` are the same type (checked just above).
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<T::Acc>(), buf.len()) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::Fabric;
    use crate::reduce::ReduceOp;
    use crate::schedule::algo::Algo;
    use crate::sim::{SimConfig, try_run_ranks};
    use std::time::Duration;

    /// Ranks whose chunks differ by whole pieces: rank 1's pieces are rank
    /// 0's and one more (or the reverse), every size alike up to there.
    /// Every rank that receives must fail; none may complete with the
    /// other's first pieces.
    #[test]
    fn chunks_that_differ_by_a_whole_piece_fail_on_every_rank() {
        let cfg = SimConfig {
            op_timeout: Duration::from_secs(3),
            ..SimConfig::default()
        };
        let p = ring_pipe::piece_elems::<f32>();
        type Case = (
            &'static str,
            fn(&crate::sim::SimFabric, usize) -> Result<()>,
        );
        let cases: [Case; 4] = [
            ("all_reduce", |f, p| {
                let mut v = vec![1f32; 2 * p + if f.rank() == 1 { 2 } else { 0 }];
                all_reduce_with(f, 0, &mut v, ReduceOp::Sum, Algo::Ring)
            }),
            ("reduce_scatter", |f, p| {
                let extra = if f.rank() == 1 { 1 } else { 0 };
                let input = vec![1f32; 2 * (p + extra)];
                let mut out = vec![0f32; p + extra];
                reduce_scatter_into(f, 0, &input, &mut out, ReduceOp::Sum)
            }),
            ("all_gather", |f, p| {
                let extra = if f.rank() == 1 { 1 } else { 0 };
                let input = vec![1f32; p + extra];
                all_gather_with(f, 0, &input, Algo::Ring).map(drop)
            }),
            ("broadcast", |f, _| {
                // The root's two segments against one on rank 1.
                let seg = CHAIN_SEGMENT_BYTES;
                let mut v = vec![1u8; if f.rank() == 0 { 2 * seg } else { seg }];
                broadcast_with(f, 0, &mut v, 0, Algo::Ring)
            }),
        ];
        for (name, case) in cases {
            let run = try_run_ranks(cfg.clone(), 2, move |f| {
                case(f, p).err().map(|e| e.to_string())
            })
            .unwrap();
            for (r, e) in run.results.iter().enumerate() {
                // (A broadcast's root only sends: on the communicator it
                // learns of the mismatch with its next operation.)
                if name != "broadcast" || r != 0 {
                    assert!(e.is_some(), "{name}: rank {r} completed");
                }
            }
        }
    }
}

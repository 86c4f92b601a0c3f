//! Reduce-scatter: the pipelined ring reduce-scatter phase on its own.

use crate::fabric::Signed;
use std::sync::Arc;
use zccl_runtime::label::OpLabel;

use super::ring_pipe::{
    RecvAhead, RsBuf, combine_as_received, piece_elems, ring_reduce_scatter_pipe,
};
use super::{OP_RS, wait_all};
use crate::dtype::Elem;
use crate::error::{Error, Result};
use crate::fabric::Fabric;
use crate::nonblocking::{OpHandle, start};
use crate::reduce::{ReduceOp, finish_into, to_acc};
use crate::schedule::chunks::chunk_ranges;
use crate::schedule::ring;

/// Reduces `input` element-wise over all ranks and returns this rank's chunk
/// of the result: elements [`chunk_range`](crate::schedule::chunks::chunk_range)`(input.len(), n, rank)`, i.e. the
/// `rank`-th equal slice when the length is divisible by `n`. Ring algorithm.
///
/// ```
/// use zccl_primitives::{collectives::reduce_scatter, reduce::ReduceOp, sim::run_ranks, Fabric};
/// let out = run_ranks(2, |f| reduce_scatter(f, 0, &[1i64, 2, 3, 4, 5], ReduceOp::Sum).unwrap());
/// assert_eq!(out, vec![vec![2, 4, 6], vec![8, 10]]);
/// ```
pub fn reduce_scatter<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    input: &[T],
    op: ReduceOp,
) -> Result<Vec<T>> {
    let len = chunk_ranges(input.len(), f.size())[f.rank()].len();
    let mut mine = vec![T::default(); len];
    reduce_scatter_into(f, ch, input, &mut mine, op)?;
    Ok(mine)
}

/// [`reduce_scatter`] into a caller-owned `output` of this rank's chunk
/// length (NCCL's `recvbuff`): nothing is allocated for the result, and the
/// input is only read (the last step writes `received ⊕ input` into
/// `output`).
///
/// ```
/// use zccl_primitives::{collectives::reduce_scatter_into, reduce::ReduceOp, sim::run_ranks, Fabric};
/// let out = run_ranks(2, |f| {
///     let mut out = vec![0i64; 3 - f.rank()];
///     reduce_scatter_into(f, 0, &[1i64, 2, 3, 4, 5], &mut out, ReduceOp::Sum).unwrap();
///     out
/// });
/// assert_eq!(out, vec![vec![2, 4, 6], vec![8, 10]]);
/// ```
pub fn reduce_scatter_into<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    input: &[T],
    output: &mut [T],
    op: ReduceOp,
) -> Result<()> {
    let f = &Signed::new::<T>(f, op.label(OpLabel::REDUCE_SCATTER_SUM));
    let (r, n) = (f.rank(), f.size());
    let chunks = chunk_ranges(input.len(), n);
    let mine_at = chunks[r].clone();
    if output.len() != mine_at.len() {
        return Err(Error::InvalidArgument(format!(
            "reduce_scatter_into: output has {} elements, rank {r}'s chunk of {} has {}",
            output.len(),
            input.len(),
            mine_at.len()
        )));
    }
    if n == 1 {
        f.ensure_live()?;
        finish_into::<T>(op, &to_acc(input), 1, output);
        return Ok(());
    }
    let mut b = RsBuf {
        before: &[],
        mine: output,
        after: &[],
        mine_at,
        src: Some(input),
    };
    let per = piece_elems::<T::Acc>();
    let steps = ring::reduce_scatter_steps(r, n);
    let mut rx = RecvAhead::new(f, ch, steps[0].recv_from);
    if combine_as_received(std::mem::size_of_val(input), n) {
        // SAFETY: `b`'s memory (the caller's `input` and `output`)
        // outlives `rx`; `output` is not read before the reduce-scatter
        // ends, and `input` never written.
        unsafe { rx.plan_reduce_scatter(&mut b, &chunks, &steps, op, n, OP_RS, per) }
    } else {
        for st in &steps {
            rx.plan_step::<T::Acc>(OP_RS, st.step, chunks[st.recv_chunk].clone(), per);
        }
    }
    rx.post_all()?;
    let (mut first, mut sends) = (Vec::new(), Vec::new());
    ring_reduce_scatter_pipe(
        f, ch, &mut b, &chunks, op, OP_RS, per, &mut rx, &mut first, &mut sends, false,
    )?;
    first.append(&mut sends);
    wait_all(first)
}

/// Non-blocking [`reduce_scatter`]: the handle returns this rank's chunk.
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{collectives::ireduce_scatter, reduce::ReduceOp, sim::run_ranks};
/// let out = run_ranks(2, |f| {
///     ireduce_scatter(Arc::new(f.clone()), 0, vec![1i32, 2, 3, 4], ReduceOp::Sum).wait().unwrap()
/// });
/// assert_eq!(out, vec![vec![2, 4], vec![6, 8]]);
/// ```
pub fn ireduce_scatter<T: Elem, F: Fabric + ?Sized + 'static>(
    f: Arc<F>,
    ch: u32,
    input: Vec<T>,
    op: ReduceOp,
) -> OpHandle<Vec<T>> {
    start(f, "reduce_scatter", move |f| {
        reduce_scatter(f, ch, &input, op)
    })
}

//! Reduce-scatter: the pipelined ring reduce-scatter phase on its own, and
//! recursive halving over power-of-two groups of 4 ranks or more (fewer
//! rounds for the same bytes; [`choose_reduce_scatter`]).

use crate::fabric::Signed;
use std::ops::Range;
use std::sync::Arc;
use zccl_runtime::label::OpLabel;

use super::ring_pipe::{
    RecvAhead, RsBuf, combine_as_received, piece_elems, ring_reduce_scatter_pipe,
};
use super::{OP_HALVING_RS, OP_RS, as_acc, as_acc_mut, wait_all};
use crate::dtype::{Elem, as_bytes, as_bytes_mut};
use crate::error::{Error, Result};
use crate::fabric::{Fabric, tag};
use crate::nonblocking::{OpHandle, start};
use crate::reduce::{Accumulator, ReduceOp, combine_finish, combine_into, finish_into, to_acc};
use crate::schedule::algo::{Algo, choice_from_env, choose_reduce_scatter};
use crate::schedule::chunks::chunk_ranges;
use crate::schedule::{halving, ring};

/// Reduces `input` element-wise over all ranks and returns this rank's chunk
/// of the result: elements [`chunk_range`](crate::schedule::chunks::chunk_range)`(input.len(), n, rank)`, i.e. the
/// `rank`-th equal slice when the length is divisible by `n`. The algorithm
/// follows `ZCCL_ALGO` and the size ([`choose_reduce_scatter`]).
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
    let algo = choose_reduce_scatter(choice_from_env()?, std::mem::size_of_val(input), n);
    if algo == Algo::Halving
        && let (Some(src), Some(out)) = (as_acc(input), as_acc_mut(output))
    {
        return halving_reduce_scatter(f, ch, &chunks, src, out, op);
    }
    ring_reduce_scatter(f, ch, &chunks, input, output, op)
}

/// The pipelined ring reduce-scatter into `output` (this rank's chunk of
/// `chunks`, its length checked), over 2 ranks or more.
fn ring_reduce_scatter<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    chunks: &[Range<usize>],
    input: &[T],
    output: &mut [T],
    op: ReduceOp,
) -> Result<()> {
    let (r, n) = (f.rank(), f.size());
    let mine_at = chunks[r].clone();
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
        unsafe { rx.plan_reduce_scatter(&mut b, chunks, &steps, op, n, OP_RS, per) }
    } else {
        for st in &steps {
            rx.plan_step::<T::Acc>(OP_RS, st.step, chunks[st.recv_chunk].clone(), per);
        }
    }
    rx.post_all()?;
    let (mut first, mut sends) = (Vec::new(), Vec::new());
    ring_reduce_scatter_pipe(
        f, ch, &mut b, chunks, op, OP_RS, per, &mut rx, &mut first, &mut sends, false,
    )?;
    first.append(&mut sends);
    wait_all(first)
}

/// Reduce-scatter by recursive halving ([`halving`]) over a power-of-two
/// group, for a type that is its own accumulator: `log₂ n` rounds (the ring
/// takes `n - 1`) moving the same bytes, each rank sending half of what it
/// still holds to its partner and combining the partner's copy of the half
/// it keeps.
///
/// Halving's windows are ranges of *virtual* blocks; virtual block `v` is
/// chunk [`halving::owned_block`]`(v, n)` (`v`'s bits reversed, a
/// permutation that is its own inverse), so that the block a rank ends with,
/// virtual `owned_block(rank)`, is chunk `rank`, as a reduce-scatter's
/// output must be (halving over chunks in their own order ends with the
/// bit-reversed one, which the all-reduce does not mind). The first step
/// pairs ring neighbours, as the all-reduce's does (see [`halving`]: a
/// size mismatch against a ring rank shows at once).
///
/// Memory: the first step sends its half straight from `input`, one lent
/// message per block (the blocks of a virtual range are not contiguous in
/// `input`), and receives the partner's copies of its kept blocks into
/// `acc`, which holds the kept half in virtual order and is combined with
/// `input` there; later steps lend a contiguous range of `acc`. The last
/// step's copy lands in `output`, which then gets `acc`'s block combined in
/// and finished (`Avg`'s division): `output` is written once and never
/// copied into. Middle steps (8 ranks or more) land in `scratch`.
fn halving_reduce_scatter<A, F>(
    f: &F,
    ch: u32,
    chunks: &[Range<usize>],
    input: &[A],
    output: &mut [A],
    op: ReduceOp,
) -> Result<()>
where
    A: Elem<Acc = A> + Accumulator,
    F: Fabric + ?Sized,
{
    let (r, n) = (f.rank(), f.size());
    let chunk_of = |v: usize| chunks[halving::owned_block(v, n)].clone();
    // Where each virtual block starts when the blocks lie in virtual order.
    let mut at = vec![0usize; n + 1];
    for v in 0..n {
        at[v + 1] = at[v] + chunk_of(v).len();
    }
    let rs = halving::reduce_scatter_steps(r, n);
    let (first, last) = (&rs[0], rs.len() - 1);
    // `acc` holds the first step's kept blocks, in virtual order, from
    // virtual offset `base`.
    let base = at[first.keep.start];
    let span = |b: &Range<usize>| at[b.start] - base..at[b.end] - base;
    let mut acc = vec![A::default(); at[first.keep.end] - base];
    let middle = rs[1..last].iter().map(|s| span(&s.keep).len()).max();
    let mut scratch = vec![A::default(); middle.unwrap_or(0)];
    // Declared after the memory they lend (`acc`), so that on an early
    // return they drop (and wait for its release) first.
    let mut sends = Vec::with_capacity(n / 2 + last);
    let mut recvs = Vec::with_capacity(n / 2);
    // From here on `acc` is only reached through this pointer.
    let acc_ptr = acc.as_mut_ptr();
    for (j, v) in first.keep.clone().enumerate() {
        let t = tag(OP_HALVING_RS, 0, j as u32);
        let at_v = span(&(v..v + 1));
        // SAFETY: the kept blocks are disjoint ranges of `acc`, which is
        // not touched until this receive was waited (or its handle dropped,
        // which takes the memory back) and outlives the handle.
        let dst = unsafe { std::slice::from_raw_parts_mut(acc_ptr.add(at_v.start), at_v.len()) };
        recvs.push(unsafe { f.irecv_into(first.peer, ch, t, as_bytes_mut(dst)) }?);
    }
    for (j, v) in first.send.clone().enumerate() {
        let t = tag(OP_HALVING_RS, 0, j as u32);
        // SAFETY: `input` is borrowed for the whole call, only read, and
        // every send is waited (or dropped, which waits) before it returns.
        sends.push(unsafe { f.isend_lent(first.peer, ch, t, as_bytes(&input[chunk_of(v)])) }?);
    }
    for (rv, v) in recvs.into_iter().zip(first.keep.clone()) {
        rv.wait()?;
        let at_v = span(&(v..v + 1));
        // SAFETY: block `v` of `acc`, received (waited above), disjoint
        // from the blocks still being received.
        let mine = unsafe { std::slice::from_raw_parts_mut(acc_ptr.add(at_v.start), at_v.len()) };
        // The partner's copy, received in place, on the left (as the
        // ring's out-of-place step); every operator is commutative bit for
        // bit.
        combine_into(op, mine, &input[chunk_of(v)]);
    }
    for st in &rs[1..] {
        let t = tag(OP_HALVING_RS, st.step as u16, 0);
        let (keep, send) = (span(&st.keep), span(&st.send));
        // SAFETY: `send` is a range of `acc` no later step writes (a rank
        // only ever combines into what it keeps, and keeps a part of what
        // it kept before); `acc` outlives the handle (see `sends`).
        let lent = unsafe { std::slice::from_raw_parts(acc_ptr.add(send.start), send.len()) };
        if st.step == last {
            // The partner's copy of this rank's chunk lands in `output`
            // (of that chunk's length, checked by the caller).
            let rv = unsafe { f.irecv_into(st.peer, ch, t, as_bytes_mut(output)) }?;
            sends.push(unsafe { f.isend_lent(st.peer, ch, t, as_bytes(lent)) }?);
            rv.wait()?;
            // SAFETY: `keep` lies in `acc`, disjoint from every lent range.
            let mine = unsafe { std::slice::from_raw_parts(acc_ptr.add(keep.start), keep.len()) };
            combine_finish::<A>(op, n, output, mine);
        } else {
            let got = &mut scratch[..keep.len()];
            let rv = unsafe { f.irecv_into(st.peer, ch, t, as_bytes_mut(got)) }?;
            sends.push(unsafe { f.isend_lent(st.peer, ch, t, as_bytes(lent)) }?);
            rv.wait()?;
            // SAFETY: as above.
            let mine =
                unsafe { std::slice::from_raw_parts_mut(acc_ptr.add(keep.start), keep.len()) };
            combine_into(op, mine, &scratch[..keep.len()]);
        }
    }
    wait_all(sends)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimConfig, run_ranks, try_run_ranks};
    use std::time::Duration;

    /// Rank `r`'s element `i`: small integers, so that sums of floats are
    /// exact whatever the bracketing.
    fn x(r: usize, i: usize) -> i64 {
        ((r * 7 + i * 3) % 11) as i64 - 5
    }

    #[test]
    fn halving_gives_each_rank_its_chunk_reduced_over_all_ranks() {
        for n in [4, 8, 16] {
            for len in [0, 1, 3, n - 1, n, 2 * n + 3, 1000, 4099] {
                let out = run_ranks(n, move |f| {
                    let r = f.rank();
                    let chunks = chunk_ranges(len, n);
                    let mine = chunks[r].len();
                    let i64s: Vec<i64> = (0..len).map(|i| x(r, i)).collect();
                    let f64s: Vec<f64> = i64s.iter().map(|&v| v as f64).collect();
                    let prods: Vec<i64> = (0..len).map(|i| (r + i) as i64 % 3 + 1).collect();
                    let mut got = Vec::new();
                    for (op, input) in [
                        (ReduceOp::Sum, &i64s),
                        (ReduceOp::Min, &i64s),
                        (ReduceOp::Max, &i64s),
                        (ReduceOp::Prod, &prods),
                    ] {
                        let mut h = vec![0i64; mine];
                        halving_reduce_scatter(f, 0, &chunks, input, &mut h, op).unwrap();
                        // The ring gives the same integers.
                        let mut g = vec![0i64; mine];
                        ring_reduce_scatter(f, 0, &chunks, input, &mut g, op).unwrap();
                        assert_eq!(h, g, "{op:?} n {n} len {len} rank {r}");
                        got.push(h.iter().map(|&v| v as f64).collect::<Vec<_>>());
                    }
                    for op in [ReduceOp::Sum, ReduceOp::Avg] {
                        let mut h = vec![0f64; mine];
                        halving_reduce_scatter(f, 0, &chunks, &f64s, &mut h, op).unwrap();
                        got.push(h);
                    }
                    got
                });
                for (r, got) in out.iter().enumerate() {
                    let at = chunk_ranges(len, n)[r].clone();
                    let col = |i: usize| (0..n).map(move |q| x(q, i));
                    let want: [Vec<f64>; 6] = [
                        at.clone().map(|i| col(i).sum::<i64>() as f64).collect(),
                        at.clone().map(|i| col(i).min().unwrap() as f64).collect(),
                        at.clone().map(|i| col(i).max().unwrap() as f64).collect(),
                        at.clone()
                            .map(|i| (0..n).map(|q| (q + i) as i64 % 3 + 1).product::<i64>() as f64)
                            .collect(),
                        at.clone().map(|i| col(i).sum::<i64>() as f64).collect(),
                        at.clone()
                            .map(|i| col(i).sum::<i64>() as f64 / n as f64)
                            .collect(),
                    ];
                    for (k, w) in want.iter().enumerate() {
                        assert_eq!(&got[k], w, "result {k}, n {n} len {len} rank {r}");
                    }
                }
            }
        }
    }

    #[test]
    fn halving_pairs_ring_neighbours_first_then_sends_half_as_much() {
        // 4 ranks, 4 elements of 4 bytes each: rank 0 sends blocks 1 and 3
        // (virtual blocks 2 and 3) to rank 1, then block 2 (virtual 1) to
        // rank 2, and ends with block 0.
        let run = try_run_ranks(SimConfig::default(), 4, |f| {
            let input: Vec<i32> = (0..4).map(|i| (10 * f.rank() + i) as i32).collect();
            let mut out = [0i32; 1];
            halving_reduce_scatter(
                f,
                0,
                &chunk_ranges(input.len(), 4),
                &input,
                &mut out,
                ReduceOp::Sum,
            )
            .unwrap();
            out[0]
        })
        .unwrap();
        assert_eq!(run.results, [60, 64, 68, 72]);
        let from0: Vec<(usize, usize)> = run
            .log
            .iter()
            .filter(|m| m.src == 0)
            .map(|m| (m.dst, m.len))
            .collect();
        assert_eq!(from0, [(1, 4), (1, 4), (2, 4)]);
    }

    #[test]
    fn ranks_that_pass_different_lengths_fail_rather_than_hang() {
        let cfg = SimConfig {
            op_timeout: Duration::from_secs(2),
            ..SimConfig::default()
        };
        let run = try_run_ranks(cfg, 4, |f| {
            // Rank 2 passes 12 elements, the others 8.
            let len = if f.rank() == 2 { 12 } else { 8 };
            let input = vec![1i32; len];
            let mut out = vec![0i32; chunk_ranges(len, 4)[f.rank()].len()];
            halving_reduce_scatter(
                f,
                0,
                &chunk_ranges(input.len(), 4),
                &input,
                &mut out,
                ReduceOp::Sum,
            )
            .err()
            .map(|e| e.to_string())
        })
        .unwrap();
        // Rank 2's first partner (rank 3) finds the sizes differ at once.
        for r in [2, 3] {
            let e = run.results[r].as_deref().unwrap_or("no error");
            assert!(e.contains("expected"), "rank {r}: {e}");
        }
        assert!(run.results.iter().all(Option::is_some), "{:?}", run.results);
    }
}

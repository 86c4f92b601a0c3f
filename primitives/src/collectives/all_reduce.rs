//! All-reduce: the ring (a pipelined reduce-scatter whose finished pieces go
//! straight on as the all-gather), in place or out of place, and recursive
//! doubling for small buffers.

use crate::fabric::Signed;
use std::sync::Arc;
use zccl_runtime::label::OpLabel;

use super::ring_pipe::{
    RecvAhead, piece_elems, ring_all_gather_pipe, ring_reduce_scatter_pipe, split_mine,
};
use super::{OP_AR_AG, OP_AR_RS, OP_RD, wait_all};
use crate::dtype::{Elem, from_bytes, to_bytes};
use crate::error::{Error, Result};
use crate::fabric::{Fabric, tag};
use crate::nonblocking::{OpHandle, start};
use crate::reduce::{ReduceOp, combine_into, combine_into_rhs, finish, to_acc};
use crate::schedule::algo::{Algo, choice_from_env, choose};
use crate::schedule::chunks::chunk_ranges;
use crate::schedule::{rd, ring};

/// Reduces `buf` element-wise over all ranks with `op`; every rank receives
/// the result in `buf`. The algorithm follows `ZCCL_ALGO` and the size (see
/// [`crate::schedule::algo`]).
///
/// ```
/// use zccl_primitives::{collectives::all_reduce, reduce::ReduceOp, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| {
///     let mut v = vec![f.rank() as i32 + 1; 5];
///     all_reduce(f, 0, &mut v, ReduceOp::Sum).unwrap();
///     v
/// });
/// assert!(out.iter().all(|v| v == &vec![6; 5]));
/// ```
pub fn all_reduce<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    buf: &mut [T],
    op: ReduceOp,
) -> Result<()> {
    let algo = choose(choice_from_env()?, std::mem::size_of_val(buf), f.size());
    all_reduce_with(f, ch, buf, op, algo)
}

/// [`all_reduce`] with an explicit algorithm.
///
/// ```
/// use zccl_primitives::{collectives::all_reduce_with, reduce::ReduceOp, schedule::algo::Algo, sim::run_ranks, Fabric};
/// for algo in [Algo::Ring, Algo::Tree] {
///     let out = run_ranks(5, move |f| {
///         let mut v = vec![f.rank() as f64; 7];
///         all_reduce_with(f, 0, &mut v, ReduceOp::Max, algo).unwrap();
///         v
///     });
///     assert!(out.iter().all(|v| v == &vec![4.0; 7]));
/// }
/// ```
pub fn all_reduce_with<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    buf: &mut [T],
    op: ReduceOp,
    algo: Algo,
) -> Result<()> {
    let f = &Signed::new::<T>(f, op.label(OpLabel::ALL_REDUCE_SUM));
    let n = f.size();
    if n == 1 {
        let out = finish::<T>(op, &to_acc(buf), 1);
        buf.copy_from_slice(&out);
        return Ok(());
    }
    match algo {
        Algo::Ring => ring_all_reduce(f, ch, buf, op),
        Algo::Tree => rd_all_reduce(f, ch, buf, op),
    }
}

/// All-reduce out of place: `output` gets the reduction of every rank's
/// `input` (NCCL's `sendbuff`/`recvbuff`). The ring reads contributions
/// straight from `input`, so no full copy of it is made first (Open MPI's
/// ring copies the whole send buffer into the receive buffer before it
/// starts).
///
/// ```
/// use zccl_primitives::{collectives::all_reduce_into, reduce::ReduceOp, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| {
///     let input = vec![f.rank() as f32 + 1.0; 10];
///     let mut output = vec![0.0f32; 10];
///     all_reduce_into(f, 0, &input, &mut output, ReduceOp::Sum).unwrap();
///     (input, output)
/// });
/// for (input, output) in &out {
///     assert_eq!(output, &vec![6.0; 10]);
///     assert!(input.iter().all(|&x| x >= 1.0)); // untouched
/// }
/// ```
pub fn all_reduce_into<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    input: &[T],
    output: &mut [T],
    op: ReduceOp,
) -> Result<()> {
    if input.len() != output.len() {
        return Err(Error::InvalidArgument(format!(
            "all_reduce_into: input has {} elements, output {}",
            input.len(),
            output.len()
        )));
    }
    let f = &Signed::new::<T>(f, op.label(OpLabel::ALL_REDUCE_SUM));
    let algo = choose(choice_from_env()?, std::mem::size_of_val(input), f.size());
    if f.size() == 1 || algo != Algo::Ring {
        output.copy_from_slice(input);
        return all_reduce_with(f, ch, output, op, algo);
    }
    ring_all_reduce_from(f, ch, Some(input), output, op)
}

fn ring_all_reduce<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    buf: &mut [T],
    op: ReduceOp,
) -> Result<()> {
    ring_all_reduce_from(f, ch, None, buf, op)
}

/// The ring all-reduce into `buf`, out of place when `src` is given (every
/// contribution of this rank is read from it, its own chunk's included: the
/// last reduce-scatter step writes `received ⊕ src` into `buf`, so `buf` is
/// only written, never copied into first).
fn ring_all_reduce_from<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    src: Option<&[T]>,
    buf: &mut [T],
    op: ReduceOp,
) -> Result<()> {
    let (r, n) = (f.rank(), f.size());
    let chunks = chunk_ranges(buf.len(), n);
    // One piece size (in elements) for both halves, so that each finished
    // piece of the reduce-scatter is sent on as it is.
    let per = piece_elems::<T::Acc>();
    let rs = ring::reduce_scatter_steps(r, n);
    let mut rx = RecvAhead::new(f, ch, rs[0].recv_from);
    for st in &rs {
        rx.plan_step::<T::Acc>(OP_AR_RS, st.step, chunks[st.recv_chunk].clone(), per);
    }
    let base = buf.as_mut_ptr();
    for st in ring::all_gather_steps(r, n) {
        let chunk = chunks[st.recv_chunk].clone();
        if src.is_some() {
            // Out of place, the all-gather's chunks of `buf` are neither
            // read nor lent before they arrive: receive them in place.
            // SAFETY: they lie in `buf`, are touched only once their receive
            // returned, and `rx` is dropped before `buf` is released.
            unsafe { rx.plan_step_into::<T>(OP_AR_AG, st.step, chunk, per, base) };
        } else {
            rx.plan_step::<T>(OP_AR_AG, st.step, chunk, per);
        }
    }
    rx.post_all()?;
    let (mut first, mut sends) = (Vec::new(), Vec::new());
    {
        let mut b = split_mine(buf, chunks[r].clone());
        b.src = src;
        ring_reduce_scatter_pipe(
            f, ch, &mut b, &chunks, op, OP_AR_RS, per, &mut rx, &mut first, &mut sends, true,
        )?;
    }
    if src.is_none() {
        // In place, step 0 lent chunks of `buf` that the all-gather
        // overwrites: they must be free first. (Only free: their
        // completion follows every receive posted before them.)
        for s in &mut first {
            s.wait_free()?;
        }
    }
    ring_all_gather_pipe(f, ch, buf, &chunks, OP_AR_AG, per, &mut rx, &mut sends)?;
    first.append(&mut sends);
    wait_all(first)
}

fn rd_all_reduce<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    buf: &mut [T],
    op: ReduceOp,
) -> Result<()> {
    let n = f.size();
    let accb = std::mem::size_of::<T::Acc>() * buf.len();
    let mut acc = to_acc(buf);
    match rd::plan(f.rank(), n) {
        rd::RdRole::Extra { partner } => {
            let s = f.isend(partner, ch, tag(OP_RD, 0, 0), to_bytes(&acc))?;
            let got = f
                .irecv(
                    partner,
                    ch,
                    tag(OP_RD, 0xffff, 0),
                    std::mem::size_of_val(buf),
                )?
                .wait()?;
            buf.copy_from_slice(&from_bytes::<T>(&got));
            s.wait()?;
        }
        rd::RdRole::Core {
            fold_from, rounds, ..
        } => {
            if let Some(src) = fold_from {
                let got: Vec<T::Acc> = f.irecv(src, ch, tag(OP_RD, 0, 0), accb)?.wait_elems()?;
                combine_into_rhs(op, &mut acc, &got);
            }
            // Sends own their bytes: they are waited once, at the end, so
            // that a round starts as soon as its partner's data is in (not
            // after the partner acknowledged the previous round's).
            let mut sends = Vec::with_capacity(rounds.len());
            for rd in rounds {
                let t = tag(OP_RD, 1 + rd.round as u16, 0);
                sends.push(f.isend(rd.peer, ch, t, to_bytes(&acc))?);
                let got: Vec<T::Acc> = f.irecv(rd.peer, ch, t, accb)?.wait_elems()?;
                if rd.self_is_left {
                    combine_into(op, &mut acc, &got);
                } else {
                    combine_into_rhs(op, &mut acc, &got);
                }
            }
            wait_all(sends)?;
            let done = finish::<T>(op, &acc, n);
            buf.copy_from_slice(&done);
            if let Some(dst) = fold_from {
                f.isend(dst, ch, tag(OP_RD, 0xffff, 0), to_bytes(buf))?
                    .wait()?;
            }
        }
    }
    Ok(())
}

/// Non-blocking [`all_reduce`]: reduces the owned `buf` on a progress thread;
/// [`OpHandle::wait`] returns the reduced buffer.
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{collectives::iall_reduce, reduce::ReduceOp, sim::run_ranks, Fabric};
/// let out = run_ranks(4, |f| {
///     let h = iall_reduce(Arc::new(f.clone()), 0, vec![f.rank() as f32; 8], ReduceOp::Max);
///     let local: f32 = (0..100).map(|i| i as f32).sum(); // compute meanwhile
///     (local, h.wait().unwrap())
/// });
/// assert!(out.iter().all(|(l, v)| *l == 4950.0 && v == &[3.0; 8]));
/// ```
pub fn iall_reduce<T: Elem, F: Fabric + ?Sized + 'static>(
    f: Arc<F>,
    ch: u32,
    mut buf: Vec<T>,
    op: ReduceOp,
) -> OpHandle<Vec<T>> {
    start(f, "all_reduce", move |f| {
        all_reduce(f, ch, &mut buf, op)?;
        Ok(buf)
    })
}

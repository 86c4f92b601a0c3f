//! All-reduce, all-gather, reduce-scatter, broadcast and barrier over a [`Fabric`].
//!
//! The plain functions are blocking and must be called by every rank of the
//! fabric with matching arguments (same length, op, root and channel). They
//! use one channel; run two collectives concurrently only on different
//! channels.
//!
//! Each has a non-blocking form (`iall_reduce`, `iall_gather`,
//! `ireduce_scatter`, `ibroadcast`, `ibarrier`) that takes the fabric as an
//! `Arc`, owns its buffer, runs the same schedule on a progress thread and
//! returns an [`OpHandle`]; see [`crate::nonblocking`] for the rules (one
//! in-flight operation per channel).
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

use std::sync::Arc;

use crate::dtype::{Elem, from_bytes, to_bytes};
use crate::error::Result;
use crate::fabric::{Fabric, check_rank, tag};
use crate::nonblocking::{OpHandle, start};
use crate::reduce::{Accumulator, ReduceOp, combine_into, combine_into_rhs, finish, to_acc};
use crate::schedule::algo::{Algo, choice_from_env, choose};
use crate::schedule::chunks::{chunk_range, chunk_ranges};
use crate::schedule::{bruck, rd, ring, tree};

const OP_AR_RS: u8 = 0x01;
const OP_AR_AG: u8 = 0x02;
const OP_RD: u8 = 0x03;
const OP_AG: u8 = 0x04;
const OP_BCAST: u8 = 0x05;
const OP_BARRIER: u8 = 0x06;
const OP_RS: u8 = 0x07;

/// Bytes per broadcast chain segment.
pub const CHAIN_SEGMENT_BYTES: usize = 256 * 1024;

fn step_tag(op: u8, s: usize) -> u64 {
    tag(op, s as u16, 0)
}

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

/// Ring reduce-scatter over `n` chunks of `acc`; afterwards chunk `rank` is complete.
fn ring_reduce_scatter_acc<A: Accumulator, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    acc: &mut [A],
    op: ReduceOp,
    opcode: u8,
) -> Result<()> {
    let (r, n) = (f.rank(), f.size());
    let chunks = chunk_ranges(acc.len(), n);
    for st in ring::reduce_scatter_steps(r, n) {
        let t = step_tag(opcode, st.step);
        let s = f.isend(
            st.send_to,
            ch,
            t,
            to_bytes(&acc[chunks[st.send_chunk].clone()]),
        )?;
        let rc = chunks[st.recv_chunk].clone();
        let rv = f.irecv(st.recv_from, ch, t, rc.len() * std::mem::size_of::<A>())?;
        let got: Vec<A> = rv.wait_elems()?;
        combine_into_rhs(op, &mut acc[rc], &got);
        s.wait()?;
    }
    Ok(())
}

fn ring_all_gather_chunks<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    out: &mut [T],
    chunks: &[std::ops::Range<usize>],
    opcode: u8,
) -> Result<()> {
    let (r, n) = (f.rank(), f.size());
    for st in ring::all_gather_steps(r, n) {
        let t = step_tag(opcode, st.step);
        let s = f.isend(
            st.send_to,
            ch,
            t,
            to_bytes(&out[chunks[st.send_chunk].clone()]),
        )?;
        let rc = chunks[st.recv_chunk].clone();
        let got = f
            .irecv(st.recv_from, ch, t, std::mem::size_of_val(&out[rc.clone()]))?
            .wait()?;
        out[rc].copy_from_slice(&from_bytes::<T>(&got));
        s.wait()?;
    }
    Ok(())
}

fn ring_all_reduce<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    buf: &mut [T],
    op: ReduceOp,
) -> Result<()> {
    let (r, n) = (f.rank(), f.size());
    let mut acc = to_acc(buf);
    ring_reduce_scatter_acc(f, ch, &mut acc, op, OP_AR_RS)?;
    let chunks = chunk_ranges(buf.len(), n);
    let mine = chunks[r].clone();
    let done = finish::<T>(op, &acc[mine.clone()], n);
    buf[mine].copy_from_slice(&done);
    ring_all_gather_chunks(f, ch, buf, &chunks, OP_AR_AG)
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
            for rd in rounds {
                let t = tag(OP_RD, 1 + rd.round as u16, 0);
                let s = f.isend(rd.peer, ch, t, to_bytes(&acc))?;
                let got: Vec<T::Acc> = f.irecv(rd.peer, ch, t, accb)?.wait_elems()?;
                if rd.self_is_left {
                    combine_into(op, &mut acc, &got);
                } else {
                    combine_into_rhs(op, &mut acc, &got);
                }
                s.wait()?;
            }
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

/// Concatenates every rank's `input` in rank order; all inputs must have the
/// same length. Ring for large outputs, Bruck for small ones (by the total
/// output size and `ZCCL_ALGO`).
///
/// ```
/// use zccl_primitives::{collectives::all_gather, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| all_gather(f, 0, &[f.rank() as u8; 2]).unwrap());
/// assert!(out.iter().all(|v| v == &[0, 0, 1, 1, 2, 2]));
/// ```
pub fn all_gather<T: Elem, F: Fabric + ?Sized>(f: &F, ch: u32, input: &[T]) -> Result<Vec<T>> {
    let algo = choose(
        choice_from_env()?,
        std::mem::size_of_val(input) * f.size(),
        f.size(),
    );
    all_gather_with(f, ch, input, algo)
}

/// [`all_gather`] with an explicit algorithm.
///
/// ```
/// use zccl_primitives::{collectives::all_gather_with, schedule::algo::Algo, sim::run_ranks, Fabric};
/// for algo in [Algo::Ring, Algo::Tree] {
///     let out = run_ranks(5, move |f| all_gather_with(f, 0, &[f.rank() as i32], algo).unwrap());
///     assert!(out.iter().all(|v| v == &[0, 1, 2, 3, 4]));
/// }
/// ```
pub fn all_gather_with<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    input: &[T],
    algo: Algo,
) -> Result<Vec<T>> {
    let (r, n, m) = (f.rank(), f.size(), input.len());
    let mut out = vec![T::default(); n * m];
    match algo {
        Algo::Ring => {
            out[r * m..(r + 1) * m].copy_from_slice(input);
            let chunks: Vec<_> = (0..n).map(|j| j * m..(j + 1) * m).collect();
            ring_all_gather_chunks(f, ch, &mut out, &chunks, OP_AG)?;
        }
        Algo::Tree => {
            let mut rot: Vec<T> = Vec::with_capacity(n * m);
            rot.extend_from_slice(input);
            for (k, st) in bruck::steps(r, n).into_iter().enumerate() {
                let t = tag(OP_AG, k as u16, 1);
                let s = f.isend(st.send_to, ch, t, to_bytes(&rot[..st.blocks * m]))?;
                let got = f
                    .irecv(
                        st.recv_from,
                        ch,
                        t,
                        st.blocks * m * std::mem::size_of::<T>(),
                    )?
                    .wait()?;
                rot.extend_from_slice(&from_bytes::<T>(&got));
                s.wait()?;
            }
            for i in 0..n {
                let j = (r + i) % n;
                out[j * m..(j + 1) * m].copy_from_slice(&rot[i * m..(i + 1) * m]);
            }
        }
    }
    Ok(out)
}

/// Reduces `input` element-wise over all ranks and returns this rank's chunk
/// of the result: elements [`chunk_range`]`(input.len(), n, rank)`, i.e. the
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
    let (r, n) = (f.rank(), f.size());
    let mut acc = to_acc(input);
    ring_reduce_scatter_acc(f, ch, &mut acc, op, OP_RS)?;
    Ok(finish::<T>(op, &acc[chunk_range(input.len(), n, r)], n))
}

/// Copies `root`'s `buf` into every rank's `buf` (all lengths equal).
/// Binomial tree for small buffers, pipelined chain of
/// [`CHAIN_SEGMENT_BYTES`] segments for large ones.
///
/// ```
/// use zccl_primitives::{collectives::broadcast, sim::run_ranks, Fabric};
/// let out = run_ranks(4, |f| {
///     let mut v = if f.rank() == 2 { vec![7u8, 8] } else { vec![0, 0] };
///     broadcast(f, 0, &mut v, 2).unwrap();
///     v
/// });
/// assert!(out.iter().all(|v| v == &[7, 8]));
/// ```
pub fn broadcast<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    buf: &mut [T],
    root: usize,
) -> Result<()> {
    let algo = choose(choice_from_env()?, std::mem::size_of_val(buf), f.size());
    broadcast_with(f, ch, buf, root, algo)
}

/// [`broadcast`] with an explicit algorithm.
///
/// ```
/// use zccl_primitives::{collectives::broadcast_with, schedule::algo::Algo, sim::run_ranks, Fabric};
/// for algo in [Algo::Ring, Algo::Tree] {
///     let out = run_ranks(3, move |f| {
///         let mut v = vec![f.rank() as u8; 4];
///         broadcast_with(f, 0, &mut v, 1, algo).unwrap();
///         v
///     });
///     assert!(out.iter().all(|v| v == &[1; 4]));
/// }
/// ```
pub fn broadcast_with<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    buf: &mut [T],
    root: usize,
    algo: Algo,
) -> Result<()> {
    check_rank(f, root, "broadcast root")?;
    let (r, n) = (f.rank(), f.size());
    if n == 1 {
        return Ok(());
    }
    match algo {
        Algo::Tree => {
            let node = tree::binomial(r, root, n);
            let t = tag(OP_BCAST, 0, root as u32);
            if let Some(p) = node.parent {
                let got = f.irecv(p, ch, t, std::mem::size_of_val(buf))?.wait()?;
                buf.copy_from_slice(&from_bytes::<T>(&got));
            }
            let sends: Vec<_> = node
                .children
                .iter()
                .map(|&c| f.isend(c, ch, t, to_bytes(buf)))
                .collect::<Result<_>>()?;
            for s in sends {
                s.wait()?;
            }
        }
        Algo::Ring => {
            let seg = (CHAIN_SEGMENT_BYTES / std::mem::size_of::<T>()).max(1);
            let segs: Vec<_> = (0..buf.len().div_ceil(seg).max(1))
                .map(|i| i * seg..((i + 1) * seg).min(buf.len()))
                .collect();
            let (prev, next) = tree::chain(r, root, n);
            let t = |i: usize| tag(OP_BCAST, 1, i as u32);
            let recvs = match prev {
                Some(p) => segs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        f.irecv(p, ch, t(i), s.len() * std::mem::size_of::<T>())
                            .map(Some)
                    })
                    .collect::<Result<Vec<_>>>()?,
                None => segs.iter().map(|_| None).collect(),
            };
            let mut sends = Vec::new();
            for ((i, s), rv) in segs.iter().enumerate().zip(recvs) {
                if let Some(rv) = rv {
                    let got = rv.wait()?;
                    buf[s.clone()].copy_from_slice(&from_bytes::<T>(&got));
                }
                if let Some(nx) = next {
                    sends.push(f.isend(nx, ch, t(i), to_bytes(&buf[s.clone()]))?);
                }
            }
            for s in sends {
                s.wait()?;
            }
        }
    }
    Ok(())
}

/// Returns once every rank has entered the barrier (dissemination barrier,
/// `⌈log₂ n⌉` rounds of empty messages).
///
/// ```
/// use zccl_primitives::{collectives::barrier, sim::run_ranks};
/// run_ranks(5, |f| barrier(f, 0).unwrap());
/// ```
pub fn barrier<F: Fabric + ?Sized>(f: &F, ch: u32) -> Result<()> {
    let (r, n) = (f.rank(), f.size());
    let mut d = 1;
    let mut k = 0u16;
    while d < n {
        let t = tag(OP_BARRIER, k, 0);
        let s = f.isend((r + d) % n, ch, t, Vec::new())?;
        f.irecv((r + n - d) % n, ch, t, 0)?.wait()?;
        s.wait()?;
        d *= 2;
        k += 1;
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

/// Non-blocking [`all_gather`].
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{collectives::iall_gather, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| iall_gather(Arc::new(f.clone()), 0, vec![f.rank() as u8]).wait().unwrap());
/// assert!(out.iter().all(|v| v == &[0, 1, 2]));
/// ```
pub fn iall_gather<T: Elem, F: Fabric + ?Sized + 'static>(
    f: Arc<F>,
    ch: u32,
    input: Vec<T>,
) -> OpHandle<Vec<T>> {
    start(f, "all_gather", move |f| all_gather(f, ch, &input))
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

/// Non-blocking [`broadcast`]: the handle returns `root`'s buffer.
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{collectives::ibroadcast, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| {
///     let v = if f.rank() == 0 { vec![5u8, 6] } else { vec![0, 0] };
///     ibroadcast(Arc::new(f.clone()), 0, v, 0).wait().unwrap()
/// });
/// assert!(out.iter().all(|v| v == &[5, 6]));
/// ```
pub fn ibroadcast<T: Elem, F: Fabric + ?Sized + 'static>(
    f: Arc<F>,
    ch: u32,
    mut buf: Vec<T>,
    root: usize,
) -> OpHandle<Vec<T>> {
    start(f, "broadcast", move |f| {
        broadcast(f, ch, &mut buf, root)?;
        Ok(buf)
    })
}

/// Non-blocking [`barrier`]: the handle completes once every rank entered.
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{collectives::ibarrier, sim::run_ranks};
/// run_ranks(4, |f| ibarrier(Arc::new(f.clone()), 0).wait().unwrap());
/// ```
pub fn ibarrier<F: Fabric + ?Sized + 'static>(f: Arc<F>, ch: u32) -> OpHandle<()> {
    start(f, "barrier", move |f| barrier(f, ch))
}

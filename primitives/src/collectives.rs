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

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use crate::dtype::{Elem, as_bytes, from_bytes, message_with, to_bytes};
use crate::error::{Error, Result};
use crate::fabric::{Fabric, RecvBytes, RecvHandle, RecvIntoHandle, SendHandle, check_rank, tag};
use crate::nonblocking::{OpHandle, start};
use crate::reduce::{
    ReduceOp, combine_finish, combine_finish_to, combine_into, combine_into_rhs, combine_to,
    finish, to_acc,
};
use crate::schedule::algo::{Algo, choice_from_env, choose};
use crate::schedule::chunks::chunk_ranges;
use crate::schedule::{bruck, rd, ring, tree};

const OP_AR_RS: u8 = 0x01;
const OP_AR_AG: u8 = 0x02;
const OP_RD: u8 = 0x03;
const OP_AG: u8 = 0x04;
const OP_BCAST: u8 = 0x05;
const OP_BARRIER: u8 = 0x06;
const OP_RS: u8 = 0x07;

/// Bytes per broadcast chain segment.
///
/// ```
/// use zccl_primitives::collectives::{broadcast_with, CHAIN_SEGMENT_BYTES};
/// use zccl_primitives::schedule::algo::Algo;
/// use zccl_primitives::sim::{try_run_ranks, SimConfig};
/// use zccl_primitives::Fabric;
/// // A chain broadcast of 2.5 segments from rank 1 to rank 0: three messages.
/// let len = CHAIN_SEGMENT_BYTES * 5 / 2;
/// let run = try_run_ranks(SimConfig::default(), 2, move |f| {
///     let mut v = vec![f.rank() as u8; len];
///     broadcast_with(f, 0, &mut v, 1, Algo::Ring).unwrap();
///     v
/// })
/// .unwrap();
/// assert!(run.results.iter().all(|v| v.iter().all(|&b| b == 1)));
/// let lens: Vec<usize> = run.log.iter().map(|m| m.len).collect();
/// assert_eq!(lens, [CHAIN_SEGMENT_BYTES, CHAIN_SEGMENT_BYTES, CHAIN_SEGMENT_BYTES / 2]);
/// ```
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
    let algo = choose(choice_from_env()?, std::mem::size_of_val(input), f.size());
    if f.size() == 1 || algo != Algo::Ring {
        output.copy_from_slice(input);
        return all_reduce_with(f, ch, output, op, algo);
    }
    ring_all_reduce_from(f, ch, Some(input), output, op)
}

/// Bytes per message of the ring algorithms: every ring step is cut into
/// pieces of this size (in the accumulator type for all-reduce and
/// reduce-scatter, in the element type for all-gather), so that forwarding
/// piece `k` overlaps the transfer of piece `k+1`. Measured on 2 cores with
/// shared memory (64 MiB f32 all-reduce): 2 MiB beat 64 KiB–1 MiB (per-message
/// costs) and whole chunks (no overlap).
///
/// ```
/// use zccl_primitives::collectives::{all_gather_with, RING_PIECE_BYTES};
/// use zccl_primitives::schedule::algo::Algo;
/// use zccl_primitives::sim::{try_run_ranks, SimConfig};
/// use zccl_primitives::Fabric;
/// // Ring all-gather over 2 ranks of 1.5 pieces each: every rank sends its
/// // chunk as one full piece and one half piece.
/// let len = RING_PIECE_BYTES * 3 / 2;
/// let run = try_run_ranks(SimConfig::default(), 2, move |f| {
///     let out = all_gather_with(f, 0, &vec![f.rank() as u8; len], Algo::Ring).unwrap();
///     out[len - 1] == 0 && out[len] == 1
/// })
/// .unwrap();
/// assert_eq!(run.results, [true, true]);
/// let mut lens: Vec<usize> = run.log.iter().map(|m| m.len).collect();
/// lens.sort();
/// assert_eq!(lens, [len - RING_PIECE_BYTES, len - RING_PIECE_BYTES, RING_PIECE_BYTES, RING_PIECE_BYTES]);
/// ```
pub const RING_PIECE_BYTES: usize = 2 << 20;

/// Elements of `E` per ring piece.
fn piece_elems<E>() -> usize {
    (RING_PIECE_BYTES / std::mem::size_of::<E>()).max(1)
}

/// The pieces of a chunk, in order; an empty chunk is one empty piece (sent
/// as an empty message).
fn pieces(r: Range<usize>, per: usize) -> impl Iterator<Item = (u32, Range<usize>)> {
    let count = r.len().div_ceil(per).max(1);
    (0..count).map(move |k| {
        let a = (r.start + k * per).min(r.end);
        (k as u32, a..(a + per).min(r.end))
    })
}

/// The receives of a ring schedule from one peer, in schedule order.
///
/// All of them are posted (by [`RecvAhead::post_all`]) **before the first
/// send** of the schedule: a fabric may complete the operations of a channel
/// in posting order (the runtime's communicator does, and a send completes
/// only once the peer posted its receive), so a receive posted after a send
/// could not complete before the peer posted the receive of that send. With
/// every receive first, receives complete as their messages arrive and the
/// ring pipelines piece by piece.
struct RecvAhead<'a, F: Fabric + ?Sized> {
    f: &'a F,
    ch: u32,
    from: usize,
    /// `(tag, bytes, destination)` of every receive, in order; a receive
    /// with a destination lands there ([`Fabric::irecv_into`]).
    plan: Vec<(u64, usize, Option<*mut u8>)>,
    posted: VecDeque<(Posted, usize)>,
}

enum Posted {
    Bytes(RecvHandle),
    Into(RecvIntoHandle),
}

/// A received piece: its bytes, or (a receive into memory) already in place.
enum Got {
    Bytes(RecvBytes),
    InPlace,
}

impl<'a, F: Fabric + ?Sized> RecvAhead<'a, F> {
    fn new(f: &'a F, ch: u32, from: usize) -> Self {
        RecvAhead {
            f,
            ch,
            from,
            plan: Vec::new(),
            posted: VecDeque::new(),
        }
    }

    /// Adds the pieces of one step (in `E` elements) to the plan.
    fn plan_step<E>(&mut self, opcode: u8, step: usize, chunk: Range<usize>, per: usize) {
        let sz = std::mem::size_of::<E>();
        self.plan.extend(
            pieces(chunk, per).map(|(k, p)| (tag(opcode, step as u16, k), p.len() * sz, None)),
        );
    }

    /// Like [`RecvAhead::plan_step`], each piece received straight into its
    /// place in the buffer that starts at `base`.
    ///
    /// # Safety
    /// `base` must point to a buffer holding `chunk`, valid for writes until
    /// this `RecvAhead` is dropped, whose pieces of `chunk` are not accessed
    /// until their receive was returned by [`RecvAhead::next`].
    unsafe fn plan_step_into<E>(
        &mut self,
        opcode: u8,
        step: usize,
        chunk: Range<usize>,
        per: usize,
        base: *mut E,
    ) {
        let sz = std::mem::size_of::<E>();
        self.plan.extend(pieces(chunk, per).map(|(k, p)| {
            // SAFETY: `p` lies in `chunk`, inside the buffer (our contract).
            let dst = unsafe { base.add(p.start) }.cast::<u8>();
            (tag(opcode, step as u16, k), p.len() * sz, Some(dst))
        }));
    }

    /// Posts every planned receive.
    fn post_all(&mut self) -> Result<()> {
        for &(t, len, dst) in &self.plan {
            let h = match dst {
                None => Posted::Bytes(self.f.irecv(self.from, self.ch, t, len)?),
                Some(dst) => {
                    // SAFETY: `plan_step_into`'s contract; the handle is
                    // dropped (taking the memory back) with `self` at the
                    // latest.
                    let dst = unsafe { std::slice::from_raw_parts_mut(dst, len) };
                    Posted::Into(unsafe { self.f.irecv_into(self.from, self.ch, t, dst) }?)
                }
            };
            self.posted.push_back((h, len));
        }
        Ok(())
    }

    /// Waits for the next receive of the plan.
    fn next(&mut self) -> Result<Got> {
        let (h, len) = self
            .posted
            .pop_front()
            .expect("ring: more receives waited than posted");
        let got = match h {
            Posted::Into(h) => {
                h.wait()?;
                return Ok(Got::InPlace);
            }
            Posted::Bytes(h) => h.wait_bytes()?,
        };
        if got.len() != len {
            return Err(crate::error::invalid(format!(
                "ring: received {} B from rank {}, expected {len} B",
                got.len(),
                self.from
            )));
        }
        Ok(Got::Bytes(got))
    }

    /// Waits for the next receive of the plan, which has no destination.
    fn next_bytes(&mut self) -> Result<RecvBytes> {
        match self.next()? {
            Got::Bytes(b) => Ok(b),
            Got::InPlace => unreachable!("ring: a receive into memory where bytes were planned"),
        }
    }
}

/// Rank `r`'s buffer during the reduce-scatter: its own chunk (mutable,
/// where the result lands) and the rest (its contributions, read only).
struct RsBuf<'a, T> {
    before: &'a [T],
    mine: &'a mut [T],
    after: &'a [T],
    mine_at: Range<usize>,
    /// Out of place: the contributions are read from here (the whole
    /// input), not from the buffer around `mine`.
    src: Option<&'a [T]>,
}

impl<T> RsBuf<'_, T> {
    /// The local contribution to elements `p` (within one chunk that is not `mine`).
    fn local(&self, p: &Range<usize>) -> &[T] {
        if let Some(src) = self.src {
            return &src[p.clone()];
        }
        if p.start >= self.mine_at.end {
            let o = self.mine_at.end;
            &self.after[p.start - o..p.end - o]
        } else {
            &self.before[p.clone()]
        }
    }

    fn mine_piece(&mut self, p: &Range<usize>) -> &mut [T] {
        let o = self.mine_at.start;
        &mut self.mine[p.start - o..p.end - o]
    }
}

/// Ring reduce-scatter, pipelined in pieces of `per` elements: partial
/// results travel in the accumulator type and every combine is
/// `received ⊕ local` (see [`crate::schedule::ring`]); the last one, into
/// `b.mine`, also finishes (Avg division, rounding to `T`). With
/// `then_gather`, each finished piece is sent on at once as step 0 of the
/// all-gather (opcode [`OP_AR_AG`]), before the next piece is waited; it is
/// lent (sent from `b.mine` without a copy where the fabric can). Step 0's
/// contributions are lent too when `T` accumulates as itself; those sends
/// go to `first`, the others to `sends`.
#[allow(clippy::too_many_arguments)]
fn ring_reduce_scatter_pipe<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    b: &mut RsBuf<'_, T>,
    chunks: &[Range<usize>],
    op: ReduceOp,
    opcode: u8,
    per: usize,
    rx: &mut RecvAhead<'_, F>,
    first: &mut Vec<SendHandle>,
    sends: &mut Vec<SendHandle>,
    then_gather: bool,
) -> Result<()> {
    let (r, n) = (f.rank(), f.size());
    let steps = ring::reduce_scatter_steps(r, n);
    let to = steps[0].send_to;
    for (k, p) in pieces(chunks[steps[0].send_chunk].clone(), per) {
        let local = b.local(&p);
        let t = step_tag(opcode, 0) | k as u64;
        if acc_is_self::<T>() {
            // Step 0 sends this rank's contribution as it is: lend it.
            // SAFETY: `local` is read-only input, or (in place) a chunk of
            // the caller's buffer that it writes only after `wait_free` on
            // `first` (see `ring_all_reduce_from`).
            first.push(unsafe { f.isend_lent(to, ch, t, as_bytes(local)) }?);
            continue;
        }
        let msg = message_with::<T::Acc>(p.len(), |o| {
            for (o, &x) in o.iter_mut().zip(local) {
                *o = x.to_acc();
            }
        });
        sends.push(f.isend(to, ch, t, msg)?);
    }
    for st in &steps {
        let last = st.step + 1 == steps.len();
        for (k, p) in pieces(chunks[st.recv_chunk].clone(), per) {
            let got = rx.next_bytes()?;
            let x = got.elems::<T::Acc>();
            if last {
                let src = b.src;
                let mine = b.mine_piece(&p);
                match src {
                    Some(src) => combine_finish_to(op, n, mine, &x, &src[p.clone()]),
                    None => combine_finish(op, n, mine, &x),
                }
                if then_gather {
                    // SAFETY: this rank's finished piece is not written
                    // again; `sends` are waited (or dropped, which waits)
                    // before the caller's buffer is released.
                    sends.push(unsafe {
                        f.isend_lent(to, ch, tag(OP_AR_AG, 0, k), as_bytes(mine))
                    }?);
                }
            } else {
                let local = b.local(&p);
                let msg = message_with::<T::Acc>(p.len(), |o| combine_to(op, o, &x, local));
                let t = tag(opcode, st.step as u16 + 1, k);
                sends.push(f.isend(to, ch, t, msg)?);
            }
        }
    }
    Ok(())
}

/// The receiving steps of a ring all-gather, pipelined in pieces of `per`
/// elements: each piece is stored and forwarded at once. Step 0's sends
/// (chunk `r`) must already be posted.
#[allow(clippy::too_many_arguments)]
fn ring_all_gather_pipe<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    out: &mut [T],
    chunks: &[Range<usize>],
    opcode: u8,
    per: usize,
    rx: &mut RecvAhead<'_, F>,
    sends: &mut Vec<SendHandle>,
) -> Result<()> {
    let (r, n) = (f.rank(), f.size());
    let steps = ring::all_gather_steps(r, n);
    for st in &steps {
        let last = st.step + 1 == steps.len();
        for (k, p) in pieces(chunks[st.recv_chunk].clone(), per) {
            let t = tag(opcode, st.step as u16 + 1, k);
            match rx.next()? {
                Got::Bytes(got) => {
                    out[p].copy_from_slice(&got.elems::<T>());
                    if !last {
                        sends.push(f.isend_bytes(st.send_to, ch, t, got)?);
                    }
                }
                // Landed in `out` already: forward it from there.
                Got::InPlace if !last => {
                    // SAFETY: this piece of `out` is final (not written
                    // again); `sends` are waited (or dropped, which waits)
                    // before `out` is released.
                    sends.push(unsafe { f.isend_lent(st.send_to, ch, t, as_bytes(&out[p])) }?);
                }
                Got::InPlace => {}
            }
        }
    }
    Ok(())
}

/// Whether `T` is its own accumulator type (its partial results are its
/// own bytes).
fn acc_is_self<T: Elem>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<T::Acc>()
}

fn wait_all(sends: Vec<SendHandle>) -> Result<()> {
    for s in sends {
        s.wait()?;
    }
    Ok(())
}

fn ring_all_gather_chunks<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    out: &mut [T],
    chunks: &[Range<usize>],
    opcode: u8,
) -> Result<()> {
    let (r, n) = (f.rank(), f.size());
    let per = piece_elems::<T>();
    let steps = ring::all_gather_steps(r, n);
    let Some(first) = steps.first() else {
        return Ok(());
    };
    let mut rx = RecvAhead::new(f, ch, first.recv_from);
    let base = out.as_mut_ptr();
    for st in &steps {
        // SAFETY: the received chunks lie in `out` and are touched only
        // once their receive returned; `rx` is dropped before `out` is
        // released.
        unsafe {
            rx.plan_step_into::<T>(opcode, st.step, chunks[st.recv_chunk].clone(), per, base)
        };
    }
    rx.post_all()?;
    let mut sends = Vec::new();
    for (k, p) in pieces(chunks[first.send_chunk].clone(), per) {
        let t = step_tag(opcode, 0) | k as u64;
        // SAFETY: this rank's own chunk of `out` is not written by the
        // all-gather; `sends` are waited (or dropped, which waits) before
        // `out` is released.
        sends.push(unsafe { f.isend_lent(first.send_to, ch, t, as_bytes(&out[p])) }?);
    }
    ring_all_gather_pipe(f, ch, out, chunks, opcode, per, &mut rx, &mut sends)?;
    wait_all(sends)
}

/// Splits `buf` around this rank's chunk `mine_at`.
fn split_mine<T>(buf: &mut [T], mine_at: Range<usize>) -> RsBuf<'_, T> {
    let (before, rest) = buf.split_at_mut(mine_at.start);
    let (mine, after) = rest.split_at_mut(mine_at.len());
    RsBuf {
        before,
        mine,
        after,
        mine_at,
        src: None,
    }
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
    let mut out = vec![T::default(); f.size() * input.len()];
    all_gather_into_with(f, ch, input, &mut out, algo)?;
    Ok(out)
}

/// [`all_gather`] into a caller-owned `output` of `size() * input.len()`
/// elements (NCCL's `recvbuff`): nothing is allocated for the result.
///
/// ```
/// use zccl_primitives::{collectives::all_gather_into, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| {
///     let mut out = [0u8; 6];
///     all_gather_into(f, 0, &[f.rank() as u8; 2], &mut out).unwrap();
///     out
/// });
/// assert!(out.iter().all(|v| v == &[0, 0, 1, 1, 2, 2]));
/// ```
pub fn all_gather_into<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    input: &[T],
    output: &mut [T],
) -> Result<()> {
    let algo = choose(
        choice_from_env()?,
        std::mem::size_of_val(input) * f.size(),
        f.size(),
    );
    all_gather_into_with(f, ch, input, output, algo)
}

fn all_gather_into_with<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    input: &[T],
    out: &mut [T],
    algo: Algo,
) -> Result<()> {
    let (r, n, m) = (f.rank(), f.size(), input.len());
    if out.len() != n * m {
        return Err(Error::InvalidArgument(format!(
            "all_gather_into: output has {} elements, {n} ranks x {m} need {}",
            out.len(),
            n * m
        )));
    }
    match algo {
        Algo::Ring => {
            out[r * m..(r + 1) * m].copy_from_slice(input);
            let chunks: Vec<_> = (0..n).map(|j| j * m..(j + 1) * m).collect();
            ring_all_gather_chunks(f, ch, out, &chunks, OP_AG)?;
        }
        Algo::Tree => {
            let mut rot: Vec<T> = Vec::with_capacity(n * m);
            rot.extend_from_slice(input);
            // Sends own their bytes: waited once, at the end (a step need
            // not wait for the previous one's acknowledgement).
            let mut sends = Vec::new();
            for (k, st) in bruck::steps(r, n).into_iter().enumerate() {
                let t = tag(OP_AG, k as u16, 1);
                sends.push(f.isend(st.send_to, ch, t, to_bytes(&rot[..st.blocks * m]))?);
                let got = f
                    .irecv(
                        st.recv_from,
                        ch,
                        t,
                        st.blocks * m * std::mem::size_of::<T>(),
                    )?
                    .wait()?;
                rot.extend_from_slice(&from_bytes::<T>(&got));
            }
            wait_all(sends)?;
            for i in 0..n {
                let j = (r + i) % n;
                out[j * m..(j + 1) * m].copy_from_slice(&rot[i * m..(i + 1) * m]);
            }
        }
    }
    Ok(())
}

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
        output.copy_from_slice(&finish::<T>(op, &to_acc(input), 1));
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
    for st in &steps {
        rx.plan_step::<T::Acc>(OP_RS, st.step, chunks[st.recv_chunk].clone(), per);
    }
    rx.post_all()?;
    let (mut first, mut sends) = (Vec::new(), Vec::new());
    ring_reduce_scatter_pipe(
        f, ch, &mut b, &chunks, op, OP_RS, per, &mut rx, &mut first, &mut sends, false,
    )?;
    first.append(&mut sends);
    wait_all(first)
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
    // Each round waits for its receive only (what the barrier needs); the
    // sends are waited at the end.
    let mut sends = Vec::new();
    while d < n {
        let t = tag(OP_BARRIER, k, 0);
        sends.push(f.isend((r + d) % n, ch, t, Vec::new())?);
        f.irecv((r + n - d) % n, ch, t, 0)?.wait()?;
        d *= 2;
        k += 1;
    }
    wait_all(sends)
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

//! All-reduce: the ring (a pipelined reduce-scatter whose finished pieces go
//! straight on as the all-gather), in place or out of place, recursive
//! doubling for small buffers, and Rabenseifner's halving and doubling for
//! medium ones over power-of-two groups.

use crate::fabric::Signed;
use std::sync::Arc;
use zccl_runtime::label::OpLabel;

use super::ring_pipe::{
    RecvAhead, combine_as_received, piece_elems, ring_all_gather_pipe, ring_reduce_scatter_pipe,
    split_mine,
};
use super::{OP_AR_AG, OP_AR_RS, OP_HALVING, OP_RD, as_acc, as_acc_mut, own_acc, wait_all};
use crate::dtype::{Elem, from_bytes, to_bytes};
use crate::error::{Error, Result};
use crate::fabric::{Fabric, SendHandle, tag};
use crate::nonblocking::{OpHandle, start};
use crate::reduce::{ReduceOp, combine_into, combine_into_rhs, finish_into, to_acc};
use crate::schedule::algo::{Algo, AlgoChoice, choice_from_env, choose, choose_all_reduce};
use crate::schedule::chunks::chunk_ranges;
use crate::schedule::{halving, rd, ring};
use smallvec::SmallVec;

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
    let algo = pick::<T>(choice_from_env()?, std::mem::size_of_val(buf), f.size());
    all_reduce_with(f, ch, buf, op, algo)
}

/// The algorithm for `bytes` of `T` over `n` ranks: [`choose_all_reduce`]'s,
/// or, where halving does not apply (a group that is not a power of two,
/// f16/bf16), [`choose`]'s: recursive doubling up to [`TREE_MAX_BYTES`]
/// (halving starts below it), the ring above. Pure.
///
/// [`TREE_MAX_BYTES`]: crate::schedule::algo::TREE_MAX_BYTES
fn pick<T: Elem>(choice: AlgoChoice, bytes: usize, n: usize) -> Algo {
    match choose_all_reduce(choice, bytes, n) {
        Algo::Halving if !(n.is_power_of_two() && own_acc::<T>()) => choose(choice, bytes, n),
        a => a,
    }
}

/// [`all_reduce`] with an explicit algorithm.
///
/// ```
/// use zccl_primitives::{collectives::all_reduce_with, reduce::ReduceOp, schedule::algo::Algo, sim::run_ranks, Fabric};
/// for algo in [Algo::Ring, Algo::Tree, Algo::Halving] {
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
        f.ensure_live()?;
        let acc = to_acc(buf);
        finish_into::<T>(op, &acc, 1, buf);
        return Ok(());
    }
    match algo {
        Algo::Halving if n.is_power_of_two() => match as_acc_mut(buf) {
            Some(acc) => halving_all_reduce(f, ch, None, acc, op),
            None => ring_all_reduce(f, ch, buf, op),
        },
        Algo::Ring | Algo::Halving => ring_all_reduce(f, ch, buf, op),
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
    let algo = pick::<T>(choice_from_env()?, std::mem::size_of_val(input), f.size());
    if f.size() > 1
        && algo == Algo::Halving
        && let (Some(src), Some(out)) = (as_acc(input), as_acc_mut(output))
    {
        return halving_all_reduce(f, ch, Some(src), out, op);
    }
    if f.size() == 1 || algo != Algo::Ring {
        zccl_transports::copy::copy_slice(output, input);
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
    let combine = combine_as_received(std::mem::size_of_val(buf), f.size());
    ring_all_reduce_as(f, ch, src, buf, op, combine)
}

/// [`ring_all_reduce_from`], its reduce-scatter's pieces reduced as they
/// come (`combine`) or once each is in.
fn ring_all_reduce_as<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    src: Option<&[T]>,
    buf: &mut [T],
    op: ReduceOp,
    combine: bool,
) -> Result<()> {
    let (r, n) = (f.rank(), f.size());
    let chunks = chunk_ranges(buf.len(), n);
    // One piece size (in elements) for both halves, so that each finished
    // piece of the reduce-scatter is sent on as it is.
    let per = piece_elems::<T::Acc>();
    let rs = ring::reduce_scatter_steps(r, n);
    let mut rx = RecvAhead::new(f, ch, rs[0].recv_from);
    let base = buf.as_mut_ptr();
    let mut b = split_mine(buf, chunks[r].clone());
    b.src = src;
    // Large: reduced as they come (`combine_as_received`).
    // SAFETY: `b`'s memory (the caller's `buf` and `src`) outlives `rx`;
    // `b.mine`'s pieces are read (lent) only after their receive returned,
    // the contributions never written before the reduce-scatter ends (in
    // place, the all-gather overwrites them after it).
    if combine {
        unsafe { rx.plan_reduce_scatter(&mut b, &chunks, &rs, op, n, OP_AR_RS, per) }
    } else {
        for st in &rs {
            rx.plan_step::<T::Acc>(OP_AR_RS, st.step, chunks[st.recv_chunk].clone(), per);
        }
    }
    // The all-gather's pieces are received straight into their place in
    // `buf`, in place too. There a chunk is read (this rank's contribution)
    // or lent (step 0's) during the reduce-scatter while its zone is
    // posted, but no byte of it can arrive before that is over: the final
    // value of piece `k` of chunk `c` exists only once every rank combined
    // its contribution to that piece and sent the result on, this rank's
    // included (and, for the chunk lent at step 0, once its right
    // neighbour copied it: that copy starts the chunk's chain). (Received
    // into buffers of their own and copied in, in place took 1.2x as long
    // as out of place; landed, 4 ranks, medians of 5 interleaved rounds:
    // 64 MiB 61.5 -> 48.0 ms, 16 MiB 16.8 -> 9.2 ms; 2 ranks 64 MiB 16.4
    // -> 11.2 ms, 4 MiB 641 -> 476 us.)
    for st in ring::all_gather_steps(r, n) {
        let chunk = chunks[st.recv_chunk].clone();
        // SAFETY: the pieces lie in `buf`, are written only by their
        // message (see above), read by this rank only once their receive
        // returned, and `rx` is dropped before `buf` is released.
        unsafe { rx.plan_step_into::<T>(OP_AR_AG, st.step, chunk, per, base) };
    }
    rx.post_all()?;
    let (mut first, mut sends) = (Vec::new(), Vec::new());
    ring_reduce_scatter_pipe(
        f, ch, &mut b, &chunks, op, OP_AR_RS, per, &mut rx, &mut first, &mut sends, true,
    )?;
    if src.is_none() {
        // In place, step 0 lent chunks of `buf` that the all-gather's
        // values land in: taken back before the pipe forwards those (the
        // peer's copy preceded them, see above; this collects the
        // transport's release). (Only free: their completion follows every
        // receive posted before them.)
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
    if n.is_power_of_two()
        && let Some(acc) = as_acc_mut(buf)
    {
        return if std::mem::size_of_val(acc) >= RD_IN_PLACE_MIN_BYTES {
            rd_in_place(f, ch, acc, op)
        } else {
            rd_small_in_place(f, ch, acc, op)
        };
    }
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
            zccl_transports::copy::copy_slice(buf, &from_bytes::<T>(&got));
            s.wait()?;
        }
        rd::RdRole::Core {
            fold_from, rounds, ..
        } => {
            // Received data is combined straight from the runtime's buffer
            // (`elems` borrows it when aligned, as the runtime's buffers
            // are): no copy and no allocation for it (each send still
            // copies `acc` into its own message).
            if let Some(src) = fold_from {
                let got = f.irecv(src, ch, tag(OP_RD, 0, 0), accb)?.wait_bytes()?;
                combine_into_rhs(op, &mut acc, &got.elems::<T::Acc>());
            }
            // Sends own their bytes: they are waited once, at the end, so
            // that a round starts as soon as its partner's data is in (not
            // after the partner acknowledged the previous round's). Up to
            // 64 ranks' rounds without an allocation.
            let mut sends: SmallVec<[SendHandle; 6]> = SmallVec::new();
            for rd in rounds {
                let t = tag(OP_RD, 1 + rd.round as u16, 0);
                // The round's send and receive in one issue.
                let (s, rv) = f.isend_irecv(rd.peer, rd.peer, ch, t, to_bytes(&acc), accb)?;
                sends.push(s);
                let got = rv.wait_bytes()?;
                let got = got.elems::<T::Acc>();
                if rd.self_is_left {
                    combine_into(op, &mut acc, &got);
                } else {
                    combine_into_rhs(op, &mut acc, &got);
                }
            }
            wait_all(sends)?;
            finish_into::<T>(op, &acc, n, buf);
            if let Some(dst) = fold_from {
                f.isend(dst, ch, tag(OP_RD, 0xffff, 0), to_bytes(buf))?
                    .wait()?;
            }
        }
    }
    Ok(())
}

/// From this size up, recursive doubling lends `buf` to its sends and
/// receives into a scratch buffer ([`rd_in_place`]); below it each send
/// copies `buf` and each receive is the runtime's buffer
/// ([`rd_small_in_place`]): those copies cost less than the lent send's and
/// the receive-into's own bookkeeping. Measured (medians of 7–9
/// interleaved rounds) once shared memory wrote lent payloads straight into
/// its ring, when the general path was still taken below this size: lent
/// in place against the general path, 2 ranks 8 B 2.25 against
/// 1.89 µs, 2 KiB 2.86 against 2.60, 4 KiB 2.93 against 3.21 (5.82 against
/// 5.64 in a slower hour), 8 KiB 3.94 against 4.88; 4 ranks 1 KiB 14.2
/// against 16.1, 4 KiB 20.0 against 24.0. (Before, when the lent send
/// copied its payload first, the crossover was at 16 KiB.)
const RD_IN_PLACE_MIN_BYTES: usize = 4 << 10;

/// Recursive doubling over a power-of-two group below
/// [`RD_IN_PLACE_MIN_BYTES`], for a type that is its own accumulator: the
/// same rounds, messages and combine order as [`rd_all_reduce`] (so the
/// same bits on every rank), but `buf` is the accumulator: no conversion
/// into a fresh one and back (two allocations and copies fewer than the
/// general path). Each round's send copies `buf` into its message (cheaper
/// than lending at these sizes) and is issued with the round's receive.
///
/// Its round loop is the general path's, written again: one helper shared
/// by both measured 2.6 % slower at 8 B, 2 ranks (1.384 against 1.349 µs,
/// medians of 9 interleaved rounds; 1.409 inlined by force).
fn rd_small_in_place<A, F>(f: &F, ch: u32, buf: &mut [A], op: ReduceOp) -> Result<()>
where
    A: Elem<Acc = A> + crate::reduce::Accumulator,
    F: Fabric + ?Sized,
{
    let n = f.size();
    let rd::RdRole::Core { rounds, .. } = rd::plan(f.rank(), n) else {
        unreachable!("a power-of-two group has no folded ranks");
    };
    let bytes = std::mem::size_of_val(buf);
    // Up to 64 ranks' rounds without an allocation.
    let mut sends: SmallVec<[SendHandle; 6]> = SmallVec::new();
    for rd in rounds {
        let t = tag(OP_RD, 1 + rd.round as u16, 0);
        let (s, rv) = f.isend_irecv(rd.peer, rd.peer, ch, t, to_bytes(buf), bytes)?;
        sends.push(s);
        let got = rv.wait_bytes()?;
        let got = got.elems::<A>();
        if rd.self_is_left {
            combine_into(op, buf, &got);
        } else {
            combine_into_rhs(op, buf, &got);
        }
    }
    wait_all(sends)?;
    if op == ReduceOp::Avg {
        divide_all(buf, n);
    }
    Ok(())
}

/// Recursive doubling over a power-of-two group, for a type that is its own
/// accumulator: the same rounds, messages and combine order as
/// [`rd_all_reduce`] (so the same bits on every rank), reduced in place.
/// Each round lends `buf` to the send and receives the partner's into one
/// scratch buffer; the general path instead converts the buffer to a fresh
/// accumulator, copies it into each send, gets each receive as a buffer of
/// its own and converts that again, and builds the result in a third one
/// (five allocations and six copies of the buffer at 4 KiB, 2 ranks).
fn rd_in_place<A, F>(f: &F, ch: u32, buf: &mut [A], op: ReduceOp) -> Result<()>
where
    A: Elem<Acc = A> + crate::reduce::Accumulator,
    F: Fabric + ?Sized,
{
    use crate::dtype::{as_bytes, as_bytes_mut};
    let n = f.size();
    let rd::RdRole::Core { rounds, .. } = rd::plan(f.rank(), n) else {
        unreachable!("a power-of-two group has no folded ranks");
    };
    let mut scratch = vec![A::default(); buf.len()];
    let mut sends = Vec::with_capacity(rounds.len());
    for rd in rounds {
        let t = tag(OP_RD, 1 + rd.round as u16, 0);
        // SAFETY: `scratch` is not touched until the receive was waited
        // (or its handle dropped, which takes it back); `buf` is not written
        // until the send released it (`wait_free`), and every send is waited
        // (or dropped, which waits for the release) before this returns.
        let rv = unsafe { f.irecv_into(rd.peer, ch, t, as_bytes_mut(&mut scratch)) }?;
        let mut s = unsafe { f.isend_lent(rd.peer, ch, t, as_bytes(buf)) }?;
        rv.wait()?;
        s.wait_free()?;
        if rd.self_is_left {
            combine_into(op, buf, &scratch);
        } else {
            combine_into_rhs(op, buf, &scratch);
        }
        sends.push(s);
    }
    wait_all(sends)?;
    if op == ReduceOp::Avg {
        divide_all(buf, n);
    }
    Ok(())
}

/// AVG's last step over a sum in place (the in-place algorithms, whose
/// values are their own accumulators).
fn divide_all<A: crate::reduce::Accumulator>(xs: &mut [A], n: usize) {
    for x in xs {
        *x = A::divide(*x, n);
    }
}

/// Rabenseifner's all-reduce ([`halving`]) over a power-of-two group, for a
/// type that is its own accumulator, into `buf`; out of place when `src` is
/// given (its first step reads `src` and writes `buf`, so nothing is copied
/// first, as the ring does). Each reduce-scatter step lends the half it
/// gives away and receives the partner's copy of the half it keeps, then
/// combines it in; the all-gather lends what the rank holds and receives
/// straight into `buf`.
///
/// Where the partner's copy lands: out of place, the first step's straight
/// into the kept half of `buf` (nothing is there yet; it is then combined
/// with `src` in place), and the later steps' into the half of `buf` the
/// first step gave away (lent from `src`, so that part of `buf` is unused
/// until the all-gather fills it): no scratch buffer at all. In place, into
/// one scratch buffer the size of the first step's half.
fn halving_all_reduce<A, F>(
    f: &F,
    ch: u32,
    src: Option<&[A]>,
    buf: &mut [A],
    op: ReduceOp,
) -> Result<()>
where
    A: Elem<Acc = A> + crate::reduce::Accumulator,
    F: Fabric + ?Sized,
{
    use crate::dtype::{as_bytes, as_bytes_mut};
    let (r, n) = (f.rank(), f.size());
    let chunks = chunk_ranges(buf.len(), n);
    let span = |b: &std::ops::Range<usize>| chunks[b.start].start..chunks[b.end - 1].end;
    let rs = halving::reduce_scatter_steps(r, n);
    // Where the partner's copy of a later step's kept half lands: the first
    // step's given-away half of `buf` out of place (when it is large enough,
    // as it is unless blocks are nearly empty), else a scratch buffer.
    let later = rs
        .iter()
        .skip(1)
        .map(|s| span(&s.keep).len())
        .max()
        .unwrap_or(0);
    let free = match (src, rs.first()) {
        (Some(_), Some(s0)) if span(&s0.send).len() >= later => Some(span(&s0.send)),
        _ => None,
    };
    let most = match (src, &free) {
        (Some(_), Some(_)) => 0,
        (Some(_), None) => later,
        (None, _) => rs.iter().map(|s| span(&s.keep).len()).max().unwrap_or(0),
    };
    let mut scratch = vec![A::default(); most];
    let base = buf.as_mut_ptr();
    let mut sends = Vec::with_capacity(2 * rs.len());
    for st in &rs {
        let (send, keep) = (span(&st.send), span(&st.keep));
        let t = tag(OP_HALVING, st.step as u16, 0);
        // The first step reads this rank's contribution from `src` when out
        // of place; later ones read what the earlier ones wrote into `buf`.
        let first_src = src.filter(|_| st.step == 0);
        let from = first_src.map_or(base.cast_const(), <[A]>::as_ptr);
        // Where the partner's copy lands: out of place, the first step's in
        // the kept half of `buf` itself (read only once the receive was
        // waited); later steps' in `free`, the part of `buf` the first step
        // lent from `src` instead (disjoint from every kept half and every
        // block lent from `buf`, written by nothing else before the
        // all-gather); else in `scratch` (not touched until the receive was
        // waited, or its handle dropped, which takes it back).
        let land: *mut A = match (&first_src, &free) {
            // SAFETY: `keep` and `free` lie in `buf`.
            (Some(_), _) => unsafe { base.add(keep.start) },
            (None, Some(fr)) => unsafe { base.add(fr.start) },
            (None, None) => scratch.as_mut_ptr(),
        };
        // SAFETY: `keep.len()` elements at `land` (see above); the lent
        // blocks `send` lie in `src` (the first step out of place) or in
        // `buf`, disjoint from every block written from here to the
        // all-gather, and the sends are free before the all-gather writes
        // anywhere.
        let got = unsafe { std::slice::from_raw_parts_mut(land, keep.len()) };
        let rv = unsafe { f.irecv_into(st.peer, ch, t, as_bytes_mut(got)) }?;
        let lent = unsafe { std::slice::from_raw_parts(from.add(send.start), send.len()) };
        sends.push(unsafe { f.isend_lent(st.peer, ch, t, as_bytes(lent)) }?);
        rv.wait()?;
        // SAFETY: `keep` lies in `buf`, disjoint from every lent block and
        // from `free` (out of place, the first step's copy is already in it).
        let mine = unsafe { std::slice::from_raw_parts_mut(base.add(keep.start), keep.len()) };
        match first_src {
            Some(src) => {
                // `mine = partner's ⊕ src's` (as the ring's out-of-place
                // step): the partner's partial result, received in place, on
                // the left.
                combine_into(op, mine, &src[keep]);
            }
            None => {
                // SAFETY: what landed at `land`, received (waited above),
                // disjoint from `mine`.
                let got = unsafe { std::slice::from_raw_parts(land, keep.len()) };
                if st.self_is_left {
                    combine_into(op, mine, got);
                } else {
                    combine_into_rhs(op, mine, got);
                }
            }
        }
    }
    if op == ReduceOp::Avg {
        let own = chunks[halving::owned_block(r, n)].clone();
        // SAFETY: the owned block is this rank's last kept one, not lent.
        divide_all(
            unsafe { std::slice::from_raw_parts_mut(base.add(own.start), own.len()) },
            n,
        );
    }
    // The all-gather writes blocks lent above: they must be free first.
    for s in &mut sends {
        s.wait_free()?;
    }
    for st in halving::all_gather_steps(r, n) {
        let (send, recv) = (span(&st.send), span(&st.recv));
        let t = tag(OP_HALVING, (rs.len() + st.step) as u16, 0);
        // SAFETY: `recv` and `send` are disjoint ranges of `buf`; `recv` is
        // not read until its receive was waited, `send` (already final) is
        // not written again, and every send is waited (or dropped, which
        // waits for the release) before this returns.
        let dst = unsafe { std::slice::from_raw_parts_mut(base.add(recv.start), recv.len()) };
        let rv = unsafe { f.irecv_into(st.peer, ch, t, as_bytes_mut(dst)) }?;
        let lent = unsafe { std::slice::from_raw_parts(base.add(send.start), send.len()) };
        sends.push(unsafe { f.isend_lent(st.peer, ch, t, as_bytes(lent)) }?);
        rv.wait()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::run_ranks;

    /// Rank r's value at index i: spread over magnitudes, so that a
    /// different bracketing of the sum would show in the low bits.
    fn x(r: usize, i: usize) -> f32 {
        ((r * 7919 + i * 104_729) % 1_000_003) as f32 * 10f32.powi((r % 4) as i32 - 2)
    }

    /// The ring all-reduce gives the same bits whether its reduce-scatter
    /// reduces each piece as it comes (through the fabric's
    /// `irecv_combine`) or once it is in: every type (f16/bf16 partial
    /// results travel as f32) and op, in place and out of place, 3 ranks
    /// (a middle step) and 2, pieces of several sizes (a chunk of several
    /// pieces, the last one short).
    #[test]
    fn reducing_as_pieces_come_gives_the_bits_of_reducing_them_after() {
        use crate::dtype::{bf16, f16};
        fn check<T: Elem>(n: usize, len: usize, mk: fn(f32) -> T, ops: &[ReduceOp]) {
            for &op in ops {
                for in_place in [false, true] {
                    let got = run_ranks(n, move |f| {
                        let input: Vec<T> = (0..len).map(|i| mk(x(f.rank(), i) / 64.0)).collect();
                        [true, false].map(|combine| {
                            let mut out = if in_place {
                                input.clone()
                            } else {
                                vec![T::default(); len]
                            };
                            let src = (!in_place).then_some(&input[..]);
                            ring_all_reduce_as(f, 0, src, &mut out, op, combine).unwrap();
                            out
                        })
                    });
                    for (r, [a, b]) in got.iter().enumerate() {
                        assert!(
                            crate::dtype::as_bytes(a) == crate::dtype::as_bytes(b),
                            "{} over {n} ranks, {len} elements, {op:?}, in place {in_place}: \
                             rank {r} differs",
                            std::any::type_name::<T>()
                        );
                    }
                }
            }
        }
        let all = [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Prod];
        for n in [2, 3] {
            // Chunks of a piece and a half (pieces of 2 MiB of the
            // accumulator: 524 288 f32).
            check::<f32>(n, n * 786_432, |v| v, &[ReduceOp::Sum]);
            check::<bf16>(n, n * 786_432, bf16::from_f32, &[ReduceOp::Avg]);
            check::<f16>(n, 1000, f16::from_f32, &all);
            check::<f64>(n, 1000, f64::from, &all);
            check::<i32>(n, 1001, |v| v as i32, &all);
        }
    }

    #[test]
    fn types_and_groups_halving_does_not_serve_take_what_they_would_without_it() {
        use crate::dtype::f16;
        let auto = AlgoChoice::Auto;
        // 48 KiB: halving for f32 over 4 or 8 ranks ...
        assert_eq!(pick::<f32>(auto, 48 << 10, 4), Algo::Halving);
        assert_eq!(pick::<f32>(auto, 48 << 10, 8), Algo::Halving);
        // ... recursive doubling for f16, for 6 ranks, for 2 ranks.
        assert_eq!(pick::<f16>(auto, 48 << 10, 4), Algo::Tree);
        assert_eq!(pick::<f32>(auto, 48 << 10, 6), Algo::Tree);
        assert_eq!(pick::<f32>(auto, 48 << 10, 2), Algo::Tree);
        // Past recursive doubling's range: the ring.
        assert_eq!(pick::<f16>(auto, 1 << 20, 4), Algo::Ring);
        assert_eq!(pick::<f32>(auto, 1 << 20, 4), Algo::Halving);
        // Asked for by name: halving where it applies, else the ring.
        assert_eq!(pick::<f16>(AlgoChoice::Halving, 8, 4), Algo::Ring);
        assert_eq!(pick::<f32>(AlgoChoice::Halving, 8, 4), Algo::Halving);
    }

    #[test]
    fn in_place_recursive_doubling_gives_the_same_bits_as_the_tree_it_follows() {
        // 2 and 1000 f32 (`buf` the accumulator, each send a copy), 1024 =
        // 4 KiB (lent and received in place from exactly
        // RD_IN_PLACE_MIN_BYTES), 8192 = 32 KiB: all below the ring.
        assert_eq!(1024 * 4, RD_IN_PLACE_MIN_BYTES);
        for (len, n) in [2usize, 1000, 1024, 8192]
            .into_iter()
            .flat_map(|len| [2usize, 4, 8].map(|n| (len, n)))
        {
            let out = run_ranks(n, move |f| {
                let mut v: Vec<f32> = (0..len).map(|i| x(f.rank(), i)).collect();
                all_reduce_with(f, 0, &mut v, ReduceOp::Sum, Algo::Tree).unwrap();
                let mut a: Vec<f32> = (0..len).map(|i| x(f.rank(), i)).collect();
                all_reduce_with(f, 0, &mut a, ReduceOp::Avg, Algo::Tree).unwrap();
                let mut m: Vec<i64> = (0..len).map(|i| (x(f.rank(), i) as i64) - 500).collect();
                all_reduce_with(f, 0, &mut m, ReduceOp::Max, Algo::Tree).unwrap();
                (v, a, m)
            });
            // Recursive doubling's bracketing: a balanced tree over the
            // ranks in rank order, lower group on the left.
            fn tree(xs: &[f32]) -> f32 {
                if xs.len() == 1 {
                    xs[0]
                } else {
                    let h = xs.len() / 2;
                    tree(&xs[..h]) + tree(&xs[h..])
                }
            }
            for i in 0..len {
                let xs: Vec<f32> = (0..n).map(|r| x(r, i)).collect();
                let sum = tree(&xs);
                let max = xs.iter().map(|&v| v as i64 - 500).max().unwrap();
                for (r, (v, a, m)) in out.iter().enumerate() {
                    assert_eq!(v[i].to_bits(), sum.to_bits(), "n {n} rank {r} index {i}");
                    assert_eq!(
                        a[i].to_bits(),
                        (sum / n as f32).to_bits(),
                        "avg n {n} rank {r} index {i}"
                    );
                    assert_eq!(m[i], max, "max n {n} rank {r} index {i}");
                }
            }
        }
    }

    #[test]
    fn halving_agrees_with_a_reference_and_every_rank_holds_the_same_bits() {
        // Lengths below, at and above the group size (empty and uneven
        // blocks); power-of-two groups run halving, others fall back.
        for n in [1usize, 2, 3, 4, 6, 8, 16] {
            for len in [0usize, 1, 3, 7, 8, 33, 1000] {
                let out = run_ranks(n, move |f| {
                    let mut v: Vec<f32> = (0..len).map(|i| x(f.rank(), i)).collect();
                    all_reduce_with(f, 0, &mut v, ReduceOp::Sum, Algo::Halving).unwrap();
                    let mut a: Vec<f64> = (0..len).map(|i| x(f.rank(), i) as f64).collect();
                    all_reduce_with(f, 0, &mut a, ReduceOp::Avg, Algo::Halving).unwrap();
                    let mut m: Vec<i32> = (0..len).map(|i| x(f.rank(), i) as i32 - 500).collect();
                    all_reduce_with(f, 0, &mut m, ReduceOp::Min, Algo::Halving).unwrap();
                    let mut p: Vec<i64> = (0..len).map(|i| (f.rank() + i) as i64 % 5 + 1).collect();
                    all_reduce_with(f, 0, &mut p, ReduceOp::Prod, Algo::Halving).unwrap();
                    // Out of place (by size: recursive doubling here), and a
                    // type that accumulates in f32 (halving does not apply:
                    // the ring runs).
                    let input: Vec<f32> = (0..len).map(|i| x(f.rank(), i)).collect();
                    let mut o = vec![0f32; len];
                    all_reduce_into(f, 0, &input, &mut o, ReduceOp::Max).unwrap();
                    let mut h: Vec<half::f16> = (0..len)
                        .map(|i| half::f16::from_f32((f.rank() + i % 3) as f32))
                        .collect();
                    all_reduce_with(f, 0, &mut h, ReduceOp::Sum, Algo::Halving).unwrap();
                    // Halving out of place: the same bits as in place.
                    let mut s = vec![0f32; len];
                    if f.size().is_power_of_two() && f.size() > 1 {
                        halving_all_reduce(f, 0, Some(&input), &mut s, ReduceOp::Sum).unwrap();
                        assert_eq!(
                            s.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            "out of place, rank {}",
                            f.rank()
                        );
                    }
                    (v, a, m, p, o, h)
                });
                for i in 0..len {
                    let xs: Vec<f64> = (0..n).map(|r| x(r, i) as f64).collect();
                    let sum: f64 = xs.iter().sum();
                    let (v0, ..) = &out[0];
                    for (r, (v, a, m, p, o, h)) in out.iter().enumerate() {
                        let at = format!("n {n} len {len} rank {r} index {i}");
                        assert_eq!(v[i].to_bits(), v0[i].to_bits(), "{at}");
                        assert!(
                            ((v[i] as f64) - sum).abs() <= 1e-5 * sum.abs().max(1.0),
                            "{at}"
                        );
                        assert!(
                            (a[i] - sum / n as f64).abs() <= 1e-12 * sum.abs().max(1.0),
                            "{at}"
                        );
                        let min = (0..n).map(|q| x(q, i) as i32 - 500).min().unwrap();
                        assert_eq!(m[i], min, "{at}");
                        let prod: i64 = (0..n).map(|q| (q + i) as i64 % 5 + 1).product();
                        assert_eq!(p[i], prod, "{at}");
                        let max = (0..n).map(|q| x(q, i)).fold(f32::MIN, f32::max);
                        assert_eq!(o[i], max, "{at}");
                        let hs: usize = (0..n).map(|q| q + i % 3).sum();
                        assert_eq!(h[i].to_f32(), hs as f32, "{at}");
                    }
                }
            }
        }
    }
}

//! The pipelined ring phases shared by the ring collectives: pieces of
//! [`RING_PIECE_BYTES`], every receive of a schedule posted ahead
//! ([`RecvAhead`]), the reduce-scatter phase (all-reduce and
//! reduce-scatter) and the all-gather phase (all-reduce and all-gather).

use std::collections::VecDeque;
use std::ops::Range;

use super::{OP_AR_AG, step_tag};
use crate::dtype::{Elem, as_bytes, as_elems, fill_as, message_with};
use crate::error::Result;
use crate::fabric::{
    Combine, Fabric, RecvBytes, RecvHandle, RecvIntoHandle, SendHandle, piece_index, tag,
};
use crate::reduce::{ReduceOp, combine_finish, combine_finish_to, combine_to};
use crate::schedule::ring;

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
// Where ranks outnumber CPUs, the shared-memory transport leaves a
// pipeline's pieces to the reader thread by their size: none may be larger.
const _: () = assert!(RING_PIECE_BYTES as u64 <= *zccl_transports::shm::CROWDED_POLL_CMA.start());

/// Elements of `E` per ring piece.
pub(super) fn piece_elems<E>() -> usize {
    (RING_PIECE_BYTES / std::mem::size_of::<E>()).max(1)
}

/// The pieces of a chunk, in order, each with the index its tags carry
/// (marked, but for the last, as a piece with more to follow:
/// [`piece_index`]); an empty chunk is one empty piece (sent as an empty
/// message).
pub(super) fn pieces(r: Range<usize>, per: usize) -> impl Iterator<Item = (u32, Range<usize>)> {
    let count = r.len().div_ceil(per).max(1);
    (0..count).map(move |k| {
        let a = (r.start + k * per).min(r.end);
        (piece_index(k, k + 1 < count), a..(a + per).min(r.end))
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
pub(super) struct RecvAhead<'a, F: Fabric + ?Sized> {
    f: &'a F,
    ch: u32,
    from: usize,
    /// `(tag, bytes, destination)` of every receive, in order.
    plan: Vec<(u64, usize, Dest)>,
    /// (Dropped before `partials`, which their sinks may write.)
    posted: VecDeque<(Posted, usize)>,
    /// The partial results the reduce-scatter's receives combine into
    /// ([`RecvAhead::plan_reduce_scatter`]), in order, until each is sent
    /// on ([`RecvAhead::take_partial`]).
    partials: VecDeque<Vec<u8>>,
}

/// Where a planned receive goes.
enum Dest {
    /// A buffer of the fabric's ([`Fabric::irecv`]).
    Bytes,
    /// This memory ([`Fabric::irecv_into`]).
    Into(*mut u8),
    /// This sink ([`Fabric::irecv_combine`]).
    Combine(Combine),
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
    pub(super) fn new(f: &'a F, ch: u32, from: usize) -> Self {
        RecvAhead {
            f,
            ch,
            from,
            plan: Vec::new(),
            posted: VecDeque::new(),
            partials: VecDeque::new(),
        }
    }

    /// Adds the pieces of one step (in `E` elements) to the plan.
    pub(super) fn plan_step<E>(
        &mut self,
        opcode: u8,
        step: usize,
        chunk: Range<usize>,
        per: usize,
    ) {
        let sz = std::mem::size_of::<E>();
        self.plan.extend(
            pieces(chunk, per)
                .map(|(k, p)| (tag(opcode, step as u16, k), p.len() * sz, Dest::Bytes)),
        );
    }

    /// Like [`RecvAhead::plan_step`], each piece received straight into its
    /// place in the buffer that starts at `base`.
    ///
    /// # Safety
    /// `base` must point to a buffer holding `chunk`, valid for writes until
    /// this `RecvAhead` is dropped, whose pieces of `chunk` are not accessed
    /// until their receive was returned by [`RecvAhead::next`].
    pub(super) unsafe fn plan_step_into<E>(
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
            (tag(opcode, step as u16, k), p.len() * sz, Dest::Into(dst))
        }));
    }

    /// Posts every planned receive.
    pub(super) fn post_all(&mut self) -> Result<()> {
        for (t, len, dst) in std::mem::take(&mut self.plan) {
            let h = match dst {
                Dest::Bytes => Posted::Bytes(self.f.irecv(self.from, self.ch, t, len)?),
                Dest::Into(dst) => {
                    // SAFETY: `plan_step_into`'s contract; the handle is
                    // dropped (taking the memory back) with `self` at the
                    // latest.
                    let dst = unsafe { std::slice::from_raw_parts_mut(dst, len) };
                    Posted::Into(unsafe { self.f.irecv_into(self.from, self.ch, t, dst) }?)
                }
                Dest::Combine(c) => {
                    Posted::Into(self.f.irecv_combine(self.from, self.ch, t, len, c)?)
                }
            };
            self.posted.push_back((h, len));
        }
        Ok(())
    }

    /// Plans the receives of a ring reduce-scatter (`steps`, pieces of
    /// `per` elements) as receives that reduce what they get as it comes
    /// ([`Fabric::irecv_combine`]): a piece of every step but the last is
    /// combined with this rank's contribution into a new partial result
    /// (kept here, to be sent on once its receive completed), a piece of
    /// the last step into its place in `b.mine`, finished. A
    /// same-host peer's piece is then read from its memory a cache-sized
    /// part at a time and reduced at once, never written to memory whole
    /// and read back (4 ranks, 64 MiB: 240 MiB of memory traffic per rank
    /// instead of 336). The partial results stay here until
    /// [`RecvAhead::take_partial`] hands them out.
    ///
    /// # Safety
    /// `b`'s memory must stay valid until `self` is dropped; `b.mine`'s
    /// pieces must not be accessed until their receive was returned by
    /// [`RecvAhead::next`], and the contributions read (`b.local`) not
    /// written until then.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn plan_reduce_scatter<T: Elem>(
        &mut self,
        b: &mut RsBuf<'_, T>,
        chunks: &[Range<usize>],
        steps: &[ring::RingStep],
        op: ReduceOp,
        n: usize,
        opcode: u8,
        per: usize,
    ) {
        let acc = std::mem::size_of::<T::Acc>();
        for st in steps {
            let last = st.step + 1 == steps.len();
            for (k, p) in pieces(chunks[st.recv_chunk].clone(), per) {
                let t = tag(opcode, st.step as u16, k);
                let combine: Combine = if last {
                    let mine = Shared(b.mine_piece(&p).as_mut_ptr());
                    let src = b.src.map(|s| Shared(s[p.clone()].as_ptr()));
                    Box::new(move |off: usize, got: &[u8]| {
                        let (e, m) = (off / acc, got.len() / acc);
                        let x = as_elems::<T::Acc>(got);
                        // SAFETY: elements `e..e + m` of this piece of
                        // `b.mine` (and of the input), ours to write
                        // (read) until the receive returns (the contract).
                        let out = unsafe { std::slice::from_raw_parts_mut(mine.get().add(e), m) };
                        // SAFETY: as above, read only.
                        let src =
                            src.map(|s| unsafe { std::slice::from_raw_parts(s.get().add(e), m) });
                        finish_piece(op, n, out, &x, src);
                    })
                } else {
                    let mut msg = zccl_runtime::buffer::recycled_vec(p.len() * acc);
                    let into = Shared(msg.as_mut_ptr());
                    let local = Shared(b.local(&p).as_ptr());
                    self.partials.push_back(msg);
                    Box::new(move |off: usize, got: &[u8]| {
                        let x = as_elems::<T::Acc>(got);
                        // SAFETY: the partial result's bytes `off..`, and
                        // elements of this rank's contribution, valid until
                        // the receive returns (the contract).
                        let (out, local) = unsafe {
                            (
                                std::slice::from_raw_parts_mut(into.get().add(off), got.len()),
                                std::slice::from_raw_parts(local.get().add(off / acc), x.len()),
                            )
                        };
                        fill_as::<T::Acc>(out, |o| combine_to::<T>(op, o, &x, local));
                    })
                };
                self.plan.push((t, p.len() * acc, Dest::Combine(combine)));
            }
        }
    }

    /// The next partial result of [`RecvAhead::plan_reduce_scatter`], once
    /// its receive was returned by [`RecvAhead::next`].
    fn take_partial(&mut self) -> Vec<u8> {
        self.partials
            .pop_front()
            .expect("ring: a partial result for every piece combined as it came")
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
}

/// From this many bytes of the ranks' buffers together (`n` times one
/// rank's) the ring reduce-scatter's receives reduce what they get as it
/// comes ([`RecvAhead::plan_reduce_scatter`]); below, each piece is
/// received whole, then reduced. Above it the pieces no longer stay in
/// the cache between their copy and their reduction: 4 ranks on 2 vCPUs,
/// all-reduce 64 MiB, medians of 3 interleaved rounds 69.5 -> 51.0 ms
/// (Open MPI 86.1 ms); 8 MiB 5.80 -> 4.52 ms; 2 ranks 32 MiB 7.77 -> 6.59
/// ms, 64 MiB 17.2 -> 13.8 ms. Below it reducing as they came was slower
/// (2 ranks, medians of 5: 2 MiB 322 -> 358 us, 8 MiB 1439 -> 1520 us;
/// at 16 MiB, even: 2914 -> 2926 us; 4 ranks 4 MiB 2528 -> 2627 us).
pub(super) const COMBINE_MIN_TOTAL_BYTES: usize = 32 << 20;

/// Whether a ring reduce-scatter of `bytes` per rank over `n` ranks
/// reduces its pieces as they come ([`COMBINE_MIN_TOTAL_BYTES`]).
pub(super) fn combine_as_received(bytes: usize, n: usize) -> bool {
    bytes.saturating_mul(n) >= COMBINE_MIN_TOTAL_BYTES
}

/// Rank `r`'s buffer during the reduce-scatter: its own chunk (mutable,
/// where the result lands) and the rest (its contributions, read only).
pub(super) struct RsBuf<'a, T> {
    pub(super) before: &'a [T],
    pub(super) mine: &'a mut [T],
    pub(super) after: &'a [T],
    pub(super) mine_at: Range<usize>,
    /// Out of place: the contributions are read from here (the whole
    /// input), not from the buffer around `mine`.
    pub(super) src: Option<&'a [T]>,
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

/// Splits `buf` around this rank's chunk `mine_at`.
pub(super) fn split_mine<T>(buf: &mut [T], mine_at: Range<usize>) -> RsBuf<'_, T> {
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

/// Ring reduce-scatter, pipelined in pieces of `per` elements: partial
/// results travel in the accumulator type and every combine is
/// `received ⊕ local` (see [`crate::schedule::ring`]); the last one, into
/// `b.mine`, also finishes (Avg division, rounding to `T`). The combines
/// happen as the pieces come where `rx` planned its receives with
/// [`RecvAhead::plan_reduce_scatter`] (this then sends each partial result
/// on once its receive completed), else here. With
/// `then_gather`, each finished piece is sent on at once as step 0 of the
/// all-gather (opcode [`OP_AR_AG`]), before the next piece is waited; it is
/// lent (sent from `b.mine` without a copy where the fabric can). Step 0's
/// contributions are lent too when `T` accumulates as itself; those sends
/// go to `first`, the others to `sends`.
#[allow(clippy::too_many_arguments)]
pub(super) fn ring_reduce_scatter_pipe<T: Elem, F: Fabric + ?Sized>(
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
            // Combined as it came (`RecvAhead::plan_reduce_scatter`), or
            // to combine now.
            let got = match rx.next()? {
                Got::InPlace => None,
                Got::Bytes(got) => Some(got),
            };
            if last {
                if let Some(got) = got {
                    let src = b.src.map(|s| &s[p.clone()]);
                    finish_piece(op, n, b.mine_piece(&p), &got.elems::<T::Acc>(), src);
                }
                if then_gather {
                    let mine = b.mine_piece(&p);
                    // SAFETY: this rank's finished piece is not written
                    // again; `sends` are waited (or dropped, which waits)
                    // before the caller's buffer is released.
                    sends.push(unsafe {
                        f.isend_lent(to, ch, tag(OP_AR_AG, 0, k), as_bytes(mine))
                    }?);
                }
            } else {
                let msg = match got {
                    None => rx.take_partial(),
                    Some(got) => {
                        let x = got.elems::<T::Acc>();
                        let local = b.local(&p);
                        message_with::<T::Acc>(p.len(), |o| combine_to(op, o, &x, local))
                    }
                };
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
pub(super) fn ring_all_gather_pipe<T: Elem, F: Fabric + ?Sized>(
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
                    zccl_transports::copy::copy_slice(&mut out[p], &got.elems::<T>());
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

/// The last reduce-scatter step's combine of a received piece `x` into
/// `out`, finished (Avg division, rounding to `T`): `x ⊕ src` out of
/// place, `x ⊕ out` in place.
fn finish_piece<T: Elem>(op: ReduceOp, n: usize, out: &mut [T], x: &[T::Acc], src: Option<&[T]>) {
    match src {
        Some(src) => combine_finish_to(op, n, out, x, src),
        None => combine_finish(op, n, out, x),
    }
}

/// A pointer a receive's sink may use on another thread (the contract of
/// [`RecvAhead::plan_reduce_scatter`] keeps what it points to valid).
#[derive(Clone, Copy)]
struct Shared<P>(P);

// SAFETY: see the type's doc: the memory is valid, and written by the sink
// alone, while the sink may run.
unsafe impl<P> Send for Shared<P> {}

impl<P: Copy> Shared<P> {
    /// The pointer (a method, so that a closure captures the whole
    /// wrapper, not its field).
    fn get(self) -> P {
        self.0
    }
}

/// Whether `T` is its own accumulator type (its partial results are its
/// own bytes).
fn acc_is_self<T: Elem>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<T::Acc>()
}

//! The pipelined ring phases shared by the ring collectives: pieces of
//! [`RING_PIECE_BYTES`], every receive of a schedule posted ahead
//! ([`RecvAhead`]), the reduce-scatter phase (all-reduce and
//! reduce-scatter) and the all-gather phase (all-reduce and all-gather).

use std::collections::VecDeque;
use std::ops::Range;

use super::{OP_AR_AG, step_tag};
use crate::dtype::{Elem, as_bytes, message_with};
use crate::error::Result;
use crate::fabric::{Fabric, RecvBytes, RecvHandle, RecvIntoHandle, SendHandle, tag};
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

/// Elements of `E` per ring piece.
pub(super) fn piece_elems<E>() -> usize {
    (RING_PIECE_BYTES / std::mem::size_of::<E>()).max(1)
}

/// The pieces of a chunk, in order; an empty chunk is one empty piece (sent
/// as an empty message).
pub(super) fn pieces(r: Range<usize>, per: usize) -> impl Iterator<Item = (u32, Range<usize>)> {
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
pub(super) struct RecvAhead<'a, F: Fabric + ?Sized> {
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
    pub(super) fn new(f: &'a F, ch: u32, from: usize) -> Self {
        RecvAhead {
            f,
            ch,
            from,
            plan: Vec::new(),
            posted: VecDeque::new(),
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
            (tag(opcode, step as u16, k), p.len() * sz, Some(dst))
        }));
    }

    /// Posts every planned receive.
    pub(super) fn post_all(&mut self) -> Result<()> {
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
/// `b.mine`, also finishes (Avg division, rounding to `T`). With
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

/// Whether `T` is its own accumulator type (its partial results are its
/// own bytes).
fn acc_is_self<T: Elem>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<T::Acc>()
}

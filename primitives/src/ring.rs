//! Ring point-to-point: one shift, a bidirectional step on two channels, and
//! a ring driver that overlaps the transfer of block `s+1` with the caller's
//! work on block `s`.
//!
//! # Overlap contract
//!
//! * [`ring_shift_start`] / [`bidir_ring_step`] post their sends and receives
//!   and return at once; the caller computes, then waits the [`Shift`]
//!   handles.
//! * [`ring_pass`] (bytes) and [`ring_pass_elems`] (typed: `Vec<T>` in,
//!   `&[T]` to the callback) post the shift that brings block `s+1`
//!   **before** they call the callback for block `s`, and wait for it only
//!   after the callback returns.
//!
//! # Channels
//!
//! Every function here uses exactly the channel(s) it is given and no
//! other; none has a default. [`bidir_ring_step`] and
//! [`bidir_ring_step_into`] use two (one per direction), the others one.
//! [`crate::channels::Channels`] hands out channel ids that stay clear of
//! channel 0 (the one `Communicator::send`/`recv`/`isend`/`irecv`/`batch`
//! use).

use crate::dtype::{Elem, ElemVec, as_elems};
use crate::error::{Result, invalid};
use crate::fabric::Signed;
use crate::fabric::{Fabric, RecvBytes, RecvHandle, SendHandle, tag};
use crate::schedule::shift;
use zccl_runtime::DType;
use zccl_runtime::label::OpLabel;

const OP_SHIFT: u8 = 0x20;
const OP_PASS: u8 = 0x21;

/// A posted ring shift: wait it to get the received block.
///
/// ```
/// use zccl_primitives::{ring::ring_shift_start, sim::run_ranks, Fabric};
/// let out = run_ranks(2, |f| {
///     let mut h = ring_shift_start(f, 0, vec![f.rank() as u8], 1, 1, 0).unwrap();
///     assert_eq!(h.from, 1 - f.rank());
///     while !h.test().unwrap() {} // compute here instead of spinning
///     h.wait().unwrap()
/// });
/// assert_eq!(out, vec![vec![1], vec![0]]);
/// ```
#[derive(Debug)]
pub struct Shift {
    send: SendHandle,
    recv: RecvHandle,
    /// The rank the block is received from.
    pub from: usize,
}

impl Shift {
    /// Waits for both directions and returns the received bytes.
    ///
    /// ```
    /// use zccl_primitives::{ring::ring_shift_start, sim::run_ranks, Fabric};
    /// // Shift by 2 over 4 ranks: rank r receives the block of rank r-2.
    /// let out = run_ranks(4, |f| {
    ///     let h = ring_shift_start(f, 0, vec![f.rank() as u8; 2], 2, 2, 0).unwrap();
    ///     h.wait().unwrap()
    /// });
    /// assert_eq!(out, vec![vec![2, 2], vec![3, 3], vec![0, 0], vec![1, 1]]);
    /// ```
    pub fn wait(self) -> Result<Vec<u8>> {
        let got = self.recv.wait()?;
        self.send.wait()?;
        Ok(got)
    }

    /// Like [`Shift::wait`], but hands over the fabric's received buffer
    /// without copying it into a vector.
    ///
    /// ```
    /// use zccl_primitives::{ring::ring_shift_start, sim::run_ranks, Fabric};
    /// let out = run_ranks(2, |f| {
    ///     let h = ring_shift_start(f, 0, vec![f.rank() as u8; 3], 3, 1, 0).unwrap();
    ///     h.wait_bytes().unwrap().to_vec()
    /// });
    /// assert_eq!(out, vec![vec![1; 3], vec![0; 3]]);
    /// ```
    pub fn wait_bytes(self) -> Result<RecvBytes> {
        let got = self.recv.wait_bytes()?;
        self.send.wait()?;
        Ok(got)
    }

    /// Non-blocking: whether the received block has arrived.
    ///
    /// ```
    /// use zccl_primitives::{ring::ring_shift_start, sim::run_ranks, Fabric};
    /// // Shift by -1: rank r receives the block of rank r+1.
    /// let out = run_ranks(3, |f| {
    ///     let mut h = ring_shift_start(f, 0, vec![f.rank() as u8], 1, -1, 0).unwrap();
    ///     while !h.test().unwrap() {} // compute here instead of spinning
    ///     assert!(h.test().unwrap()); // stays true once arrived
    ///     h.wait().unwrap()
    /// });
    /// assert_eq!(out, vec![vec![1], vec![2], vec![0]]);
    /// ```
    pub fn test(&mut self) -> Result<bool> {
        self.recv.test()
    }
}

/// Posts a shift by `offset`: sends `send` to `(r+offset) mod n` and receives
/// `recv_len` bytes from `(r-offset) mod n`, on channel `ch` with tag `t`.
///
/// ```
/// use zccl_primitives::{ring::ring_shift_start, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| {
///     let h = ring_shift_start(f, 0, vec![f.rank() as u8], 1, 1, 0).unwrap();
///     // ... compute while the block moves ...
///     h.wait().unwrap()
/// });
/// assert_eq!(out, vec![vec![2], vec![0], vec![1]]);
/// ```
pub fn ring_shift_start<F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    send: Vec<u8>,
    recv_len: usize,
    offset: isize,
    t: u64,
) -> Result<Shift> {
    let f = &Signed::bytes(f, OpLabel::RING_SHIFT, DType::U8);
    let (to, from) = shift::peers(f.rank(), f.size(), offset);
    let (send, recv) = f.isend_irecv(to, from, ch, t, send, recv_len)?;
    Ok(Shift { send, recv, from })
}

/// Blocking ring shift by `offset` (see [`ring_shift_start`]).
///
/// ```
/// use zccl_primitives::{ring::ring_shift, sim::run_ranks, Fabric};
/// let out = run_ranks(4, |f| ring_shift(f, 0, vec![f.rank() as u8], 1, -1).unwrap());
/// assert_eq!(out, vec![vec![1], vec![2], vec![3], vec![0]]);
/// ```
pub fn ring_shift<F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    send: Vec<u8>,
    recv_len: usize,
    offset: isize,
) -> Result<Vec<u8>> {
    let f = &Signed::bytes(f, OpLabel::RING_SHIFT, DType::U8);
    ring_shift_start(f, ch, send, recv_len, offset, tag(OP_SHIFT, 0, 0))?.wait()
}

/// Ring shift by `offset` between the caller's buffers, without copies
/// where the fabric can avoid them: `send` is lent to the send (the peer
/// reads it where it is) and the block from `(r-offset) mod n` is received
/// straight into `recv` (see [`Fabric::isend_lent`] and
/// [`Fabric::irecv_into`]). Blocking; `recv.len()` bytes are expected.
///
/// ```
/// use zccl_primitives::{ring::ring_shift_into, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| {
///     let mut got = [0u8; 2];
///     ring_shift_into(f, 0, &[f.rank() as u8; 2], &mut got, 1).unwrap();
///     got
/// });
/// assert_eq!(out, vec![[2; 2], [0; 2], [1; 2]]);
/// ```
pub fn ring_shift_into<F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    send: &[u8],
    recv: &mut [u8],
    offset: isize,
) -> Result<()> {
    let f = &Signed::bytes(f, OpLabel::RING_SHIFT, DType::U8);
    let (to, from) = shift::peers(f.rank(), f.size(), offset);
    let t = tag(OP_SHIFT, 0, 0);
    // The receive first, so that the block finds its destination posted.
    // SAFETY: `recv` is borrowed mutably and `send` immutably for the whole
    // call; both handles are waited (or dropped, which waits / takes the
    // buffer back) before it returns.
    let r = unsafe { f.irecv_into(from, ch, t, recv) }?;
    let s = unsafe { f.isend_lent(to, ch, t, send) }?;
    r.wait()?;
    s.wait()
}

/// One direction of a [`bidir_ring_step`].
///
/// ```
/// use zccl_primitives::ring::ShiftSpec;
/// let s = ShiftSpec { channel: 1, offset: -1, send: vec![0; 8], recv_len: 8, tag: 0 };
/// assert_eq!(s.clone().offset, -1);
/// ```
#[derive(Debug, Clone)]
pub struct ShiftSpec {
    /// Channel of this direction.
    pub channel: u32,
    /// Shift offset (`+1` forward, `-1` backward, any other distance).
    pub offset: isize,
    /// Bytes to send.
    pub send: Vec<u8>,
    /// Bytes expected.
    pub recv_len: usize,
    /// Tag (checked by fabrics that check tags).
    pub tag: u64,
}

/// Posts two shifts at once, typically on two channels in opposite
/// directions (TokenRing: Q forward, partial outputs back to their owners).
/// Both are in flight when this returns.
///
/// ```
/// use zccl_primitives::{ring::{bidir_ring_step, ShiftSpec}, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| {
///     let r = f.rank() as u8;
///     let (a, b) = bidir_ring_step(f,
///         ShiftSpec { channel: 0, offset: 1, send: vec![r], recv_len: 1, tag: 0 },
///         ShiftSpec { channel: 1, offset: -1, send: vec![r + 10], recv_len: 1, tag: 0 }).unwrap();
///     (a.wait().unwrap(), b.wait().unwrap())
/// });
/// assert_eq!(out[0], (vec![2], vec![11]));
/// ```
pub fn bidir_ring_step<F: Fabric + ?Sized>(
    f: &F,
    fwd: ShiftSpec,
    bwd: ShiftSpec,
) -> Result<(Shift, Shift)> {
    let f = &Signed::bytes(f, OpLabel::RING_SHIFT, DType::U8);
    let a = ring_shift_start(f, fwd.channel, fwd.send, fwd.recv_len, fwd.offset, fwd.tag)?;
    let b = ring_shift_start(f, bwd.channel, bwd.send, bwd.recv_len, bwd.offset, bwd.tag)?;
    Ok((a, b))
}

/// One direction of a [`bidir_ring_step_into`]: the caller's buffers.
#[derive(Debug)]
pub struct ShiftInto<'a> {
    /// Channel of this direction.
    pub channel: u32,
    /// Shift offset (`+1` forward, `-1` backward, any other distance).
    pub offset: isize,
    /// Bytes to send (lent: read where they are where the fabric can).
    pub send: &'a [u8],
    /// Where the received block goes (`recv.len()` bytes are expected).
    pub recv: &'a mut [u8],
}

/// [`bidir_ring_step`] between the caller's buffers, both directions in
/// flight at once, without copies where the fabric can avoid them (lent
/// sends, receives into `recv`). Blocking: returns when both blocks are in.
///
/// ```
/// use zccl_primitives::{ring::{bidir_ring_step_into, ShiftInto}, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| {
///     let r = f.rank() as u8;
///     let (mut a, mut b) = ([0u8], [0u8]);
///     bidir_ring_step_into(f,
///         ShiftInto { channel: 0, offset: 1, send: &[r], recv: &mut a },
///         ShiftInto { channel: 1, offset: -1, send: &[r + 10], recv: &mut b }).unwrap();
///     (a[0], b[0])
/// });
/// assert_eq!(out[0], (2, 11));
/// ```
pub fn bidir_ring_step_into<F: Fabric + ?Sized>(
    f: &F,
    fwd: ShiftInto<'_>,
    bwd: ShiftInto<'_>,
) -> Result<()> {
    let f = &Signed::bytes(f, OpLabel::RING_SHIFT, DType::U8);
    let t = tag(OP_SHIFT, 0, 0);
    let mut recvs = Vec::with_capacity(2);
    let mut sends = Vec::with_capacity(2);
    for d in [fwd, bwd] {
        let (to, from) = shift::peers(f.rank(), f.size(), d.offset);
        // SAFETY: the buffers are borrowed for the whole call, and every
        // handle is waited (or dropped, which waits / takes the buffer
        // back) before it returns.
        recvs.push(unsafe { f.irecv_into(from, d.channel, t, d.recv) }?);
        sends.push(unsafe { f.isend_lent(to, d.channel, t, d.send) }?);
    }
    for r in recvs {
        r.wait()?;
    }
    for s in sends {
        s.wait()?;
    }
    Ok(())
}

/// What [`ring_pass`] hands the callback.
///
/// ```
/// use zccl_primitives::{ring::ring_pass, sim::run_ranks, Fabric};
/// run_ranks(2, |f| {
///     ring_pass(f, 0, 1, vec![f.rank() as u8], |_| 1, |b| {
///         assert_eq!(b.data, &[b.origin as u8]);
///         Ok(())
///     }).unwrap()
/// });
/// ```
#[derive(Debug)]
pub struct RingBlock<'a> {
    /// Step `0..n`.
    pub step: usize,
    /// The rank whose block this is: `(r - offset·step) mod n`.
    pub origin: usize,
    /// The block's bytes.
    pub data: &'a [u8],
}

/// Circulates every rank's block around the ring by `offset` (which must be
/// coprime to `n`), calling `on_block` once per block, own block first
/// (step 0). The transfer of block `s+1` is posted before `on_block` runs
/// for block `s`. `len_of(origin)` gives the byte length of rank `origin`'s
/// block (the receiver must know it). Blocks make `n-1` hops; no block
/// returns home.
///
/// This is the driver of ring attention: blocks are K/V shards and the
/// callback computes attention of the local Q against them.
///
/// ```
/// use zccl_primitives::{ring::ring_pass, sim::run_ranks, Fabric};
/// let seen = run_ranks(3, |f| {
///     let mut seen = Vec::new();
///     ring_pass(f, 0, 1, vec![f.rank() as u8; f.rank() + 1], |o| o + 1, |b| {
///         assert_eq!(b.data.len(), b.origin + 1);
///         seen.push(b.origin);
///         Ok(())
///     }).unwrap();
///     seen
/// });
/// assert_eq!(seen[0], vec![0, 2, 1]);
/// ```
pub fn ring_pass<F, L, C>(
    f: &F,
    ch: u32,
    offset: isize,
    block: Vec<u8>,
    len_of: L,
    on_block: C,
) -> Result<()>
where
    F: Fabric + ?Sized,
    L: Fn(usize) -> usize,
    C: FnMut(RingBlock<'_>) -> Result<()>,
{
    let f = &Signed::bytes(f, OpLabel::RING_PASS, DType::U8);
    let (r, n) = (f.rank(), f.size());
    if n == 1 {
        // No message to send: the fabric's state is the only failure.
        f.ensure_live()?;
    }
    if !shift::visits_all(n, offset) {
        return Err(invalid(format!(
            "ring_pass: offset {offset} is not coprime to {n} ranks"
        )));
    }
    if block.len() != len_of(r) {
        return Err(invalid(format!(
            "ring_pass: own block has {} B, len_of({r}) says {}",
            block.len(),
            len_of(r)
        )));
    }
    pass_blocks(f, ch, offset, RecvBytes::from(block), len_of, on_block)
}

/// The driver of [`ring_pass`] and [`ring_pass_elems`], after their
/// argument checks: `block` is this rank's own block (any owner of bytes),
/// `len_of` gives byte lengths.
fn pass_blocks<F, L, C>(
    f: &F,
    ch: u32,
    offset: isize,
    block: RecvBytes,
    len_of: L,
    mut on_block: C,
) -> Result<()>
where
    F: Fabric + ?Sized,
    L: Fn(usize) -> usize,
    C: FnMut(RingBlock<'_>) -> Result<()>,
{
    let (r, n) = (f.rank(), f.size());
    // The block travels without copies: each step lends `cur` to the send
    // (the peer reads it where it is, on a fabric that can) while the
    // callback reads it too, and the received buffer becomes the next `cur`
    // as it is.
    let mut cur = block;
    for s in 0..n {
        let origin = shift::origin_at(r, n, offset, s);
        let next = if s + 1 < n {
            let next_origin = shift::origin_at(r, n, offset, s + 1);
            let t = tag(OP_PASS, s as u16, next_origin as u32);
            // The block sent now is `cur` (origin); the peer at r+offset expects origin as its next.
            let (to, from) = shift::peers(r, n, offset);
            let t_send = tag(OP_PASS, s as u16, origin as u32);
            // SAFETY: `cur` is only read until the handle is done: `wait`
            // below waits the send before `cur` is replaced, and an early
            // return drops `next` (whose send handle waits) before `cur`.
            let send = unsafe { f.isend_lent(to, ch, t_send, &cur) }?;
            let recv = f.irecv(from, ch, t, len_of(next_origin))?;
            Some(Shift { send, recv, from })
        } else {
            None
        };
        if let Err(e) = on_block(RingBlock {
            step: s,
            origin,
            data: &cur,
        }) {
            // The other ranks go on with steps this rank will not take:
            // the channel is out of step (Fabric::abandon).
            f.abandon(ch);
            return Err(e);
        }
        if let Some(h) = next {
            cur = h.wait_bytes()?;
        }
    }
    Ok(())
}

/// What [`ring_pass_elems`] hands the callback: a block as elements.
///
/// ```
/// use zccl_primitives::{ring::ring_pass_elems, sim::run_ranks, Fabric};
/// run_ranks(2, |f| {
///     ring_pass_elems(f, 1, 1, vec![f.rank() as f32; 2], |_| 2, |b| {
///         assert_eq!(b.data, &[b.origin as f32; 2]);
///         Ok(())
///     }).unwrap()
/// });
/// ```
#[derive(Debug)]
pub struct RingElems<'a, T> {
    /// Step `0..n`.
    pub step: usize,
    /// The rank whose block this is: `(r - offset·step) mod n`.
    pub origin: usize,
    /// The block's elements.
    pub data: &'a [T],
}

/// [`ring_pass`] with blocks typed by element: `block` is this rank's own
/// block, `len_of(origin)` the number of **elements** of rank `origin`'s
/// block, and the callback gets each block as `&[T]` ([`RingElems`]).
///
/// Same schedule, channel use and overlap as [`ring_pass`]: one channel,
/// `ch`, owned until the call returns; the transfer of block `s+1` is
/// posted before the callback runs for block `s`. No copies where the
/// fabric's buffers are aligned for `T` (the runtime's received buffers
/// always are): the own block is lent to the first send as it is, and
/// every received block is viewed in place. A block that arrives unaligned
/// is copied once for the callback ([`crate::dtype::as_elems`]).
///
/// A block made of several tensors (K and V) is one vector with the
/// tensors one after the other; split `data` in the callback.
///
/// ```
/// use zccl_primitives::{ring::ring_pass_elems, sim::run_ranks, Fabric};
/// // Every rank sums the blocks of all ranks; rank p's block has p + 1 values.
/// let sums = run_ranks(4, |f| {
///     let mine = vec![f.rank() as f64; f.rank() + 1];
///     let mut total = 0.0;
///     ring_pass_elems(f, 1, 1, mine, |origin| origin + 1, |b| {
///         assert_eq!(b.data.len(), b.origin + 1);
///         total += b.data.iter().sum::<f64>();
///         Ok(())
///     }).unwrap();
///     total
/// });
/// assert_eq!(sums, vec![20.0; 4]); // 0·1 + 1·2 + 2·3 + 3·4
/// ```
pub fn ring_pass_elems<T, F, L, C>(
    f: &F,
    ch: u32,
    offset: isize,
    block: Vec<T>,
    len_of: L,
    mut on_block: C,
) -> Result<()>
where
    T: Elem,
    F: Fabric + ?Sized,
    L: Fn(usize) -> usize,
    C: FnMut(RingElems<'_, T>) -> Result<()>,
{
    let f = &Signed::new::<T>(f, OpLabel::RING_PASS);
    let (r, n) = (f.rank(), f.size());
    if !shift::visits_all(n, offset) {
        return Err(invalid(format!(
            "ring_pass_elems: offset {offset} is not coprime to {n} ranks"
        )));
    }
    if block.len() != len_of(r) {
        return Err(invalid(format!(
            "ring_pass_elems: own block has {} {} elements, len_of({r}) says {}",
            block.len(),
            T::DTYPE,
            len_of(r)
        )));
    }
    let sz = std::mem::size_of::<T>();
    pass_blocks(
        f,
        ch,
        offset,
        RecvBytes::from_owner(ElemVec(block)),
        |origin| len_of(origin) * sz,
        |b| {
            let data = as_elems::<T>(b.data);
            on_block(RingElems {
                step: b.step,
                origin: b.origin,
                data: &data,
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::dtype::{from_bytes, to_bytes};
    use crate::sim::{SimConfig, run_ranks, try_run_ranks};

    /// Rank `o`'s block: `len(o)` values that name the rank and the index.
    fn block_of(o: usize, len: usize) -> Vec<f64> {
        (0..len)
            .map(|i| o as f64 * 1000.0 + i as f64 + 0.25)
            .collect()
    }

    /// Uneven lengths, including an empty block (rank 0).
    fn uneven(o: usize) -> usize {
        3 * o + (o % 2)
    }

    #[test]
    fn typed_pass_uneven_blocks_both_directions() {
        for n in 1..=6 {
            for offset in [1isize, -1] {
                let got = run_ranks(n, move |f| {
                    let mut seen = Vec::new();
                    ring_pass_elems(
                        f,
                        3,
                        offset,
                        block_of(f.rank(), uneven(f.rank())),
                        uneven,
                        |b| {
                            seen.push((b.step, b.origin, b.data.to_vec()));
                            Ok(())
                        },
                    )
                    .unwrap();
                    seen
                });
                for (r, seen) in got.iter().enumerate() {
                    assert_eq!(seen.len(), n, "n={n} offset={offset}");
                    for (s, (step, origin, data)) in seen.iter().enumerate() {
                        let want = crate::schedule::shift::origin_at(r, n, offset, s);
                        assert_eq!((*step, *origin), (s, want), "n={n} offset={offset} r={r}");
                        assert_eq!(data, &block_of(want, uneven(want)), "n={n} r={r} s={s}");
                    }
                }
            }
        }
    }

    #[test]
    fn typed_pass_matches_the_byte_pass_and_its_messages() {
        // Same blocks through ring_pass (bytes) and ring_pass_elems: same
        // blocks in the same order, and the same messages on the wire.
        for offset in [1isize, -1, 2] {
            let n = 5;
            let bytes = try_run_ranks(SimConfig::default(), n, move |f| {
                let mut seen = Vec::new();
                let own = to_bytes(&block_of(f.rank(), uneven(f.rank())));
                ring_pass(
                    f,
                    4,
                    offset,
                    own,
                    |o| uneven(o) * 8,
                    |b| {
                        seen.push((b.origin, from_bytes::<f64>(b.data)));
                        Ok(())
                    },
                )
                .unwrap();
                seen
            })
            .unwrap();
            let elems = try_run_ranks(SimConfig::default(), n, move |f| {
                let mut seen = Vec::new();
                let own = block_of(f.rank(), uneven(f.rank()));
                ring_pass_elems(f, 4, offset, own, uneven, |b| {
                    seen.push((b.origin, b.data.to_vec()));
                    Ok(())
                })
                .unwrap();
                seen
            })
            .unwrap();
            assert_eq!(bytes.results, elems.results, "offset {offset}");
            let key = |log: &[crate::sim::MsgRecord]| {
                let mut k: Vec<_> = log
                    .iter()
                    // The same messages; only their label's element type
                    // differs (bytes against elements).
                    .map(|m| {
                        let t = m.tag & ((1 << crate::fabric::LABEL_SHIFT) - 1);
                        (m.src, m.dst, m.channel, t, m.seq, m.len)
                    })
                    .collect();
                k.sort_unstable();
                k
            };
            assert_eq!(key(&bytes.log), key(&elems.log), "offset {offset}");
            assert!(elems.log.iter().all(|m| m.channel == 4));
        }
    }

    #[test]
    fn typed_pass_reads_the_own_block_in_place() {
        run_ranks(3, |f| {
            let own = vec![f.rank() as i32; 16];
            let at = own.as_ptr() as usize;
            ring_pass_elems(
                f,
                1,
                1,
                own,
                |_| 16,
                |b| {
                    if b.step == 0 {
                        assert_eq!(b.data.as_ptr() as usize, at, "own block copied");
                    }
                    assert_eq!(b.data, &[b.origin as i32; 16]);
                    Ok(())
                },
            )
            .unwrap();
        });
    }

    #[test]
    fn typed_pass_argument_errors_count_elements() {
        let errs = run_ranks(4, |f| {
            let coprime = ring_pass_elems(f, 1, 2, vec![0f32; 2], |_| 2, |_| Ok(()));
            let short = ring_pass_elems(f, 1, 1, vec![0f32; 1], |_| 2, |_| Ok(()));
            (coprime.unwrap_err(), short.unwrap_err())
        });
        let (coprime, short) = &errs[0];
        assert!(matches!(coprime, Error::InvalidArgument(_)), "{coprime}");
        assert!(coprime.to_string().contains("not coprime"), "{coprime}");
        assert!(
            short
                .to_string()
                .contains("own block has 1 f32 elements, len_of(0) says 2"),
            "{short}"
        );
    }

    #[test]
    fn typed_pass_callback_error_stops_every_rank_cleanly() {
        // A failing callback returns its error; the block it was lent to
        // the send stays valid until the send is done.
        let out = run_ranks(2, |f| {
            let e = ring_pass_elems(
                f,
                1,
                1,
                vec![1u8, 2, 3],
                |_| 3,
                |b| {
                    if b.step == 0 {
                        Err(crate::error::invalid("stop"))
                    } else {
                        Ok(())
                    }
                },
            );
            e.unwrap_err().to_string()
        });
        assert!(out.iter().all(|e| e.contains("stop")), "{out:?}");
    }
}

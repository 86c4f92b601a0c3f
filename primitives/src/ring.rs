//! Ring point-to-point: one shift, a bidirectional step on two channels, and
//! a ring driver that overlaps the transfer of block `s+1` with the caller's
//! work on block `s`.
//!
//! # Overlap contract
//!
//! * [`ring_shift_start`] / [`bidir_ring_step`] post their sends and receives
//!   and return at once; the caller computes, then waits the [`Shift`]
//!   handles.
//! * [`ring_pass`] posts the shift that brings block `s+1` **before** it calls
//!   the callback for block `s`, and waits for it only after the callback
//!   returns.

use crate::error::{Result, invalid};
use crate::fabric::{Fabric, RecvBytes, RecvHandle, SendHandle, tag};
use crate::schedule::shift;

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
    let (to, from) = shift::peers(f.rank(), f.size(), offset);
    let send = f.isend(to, ch, t, send)?;
    let recv = f.irecv(from, ch, t, recv_len)?;
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
    mut on_block: C,
) -> Result<()>
where
    F: Fabric + ?Sized,
    L: Fn(usize) -> usize,
    C: FnMut(RingBlock<'_>) -> Result<()>,
{
    let (r, n) = (f.rank(), f.size());
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
    // The block travels without copies: each step lends `cur` to the send
    // (the peer reads it where it is, on a fabric that can) while the
    // callback reads it too, and the received buffer becomes the next `cur`
    // as it is.
    let mut cur = RecvBytes::from(block);
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
        on_block(RingBlock {
            step: s,
            origin,
            data: &cur,
        })?;
        if let Some(h) = next {
            cur = h.wait_bytes()?;
        }
    }
    Ok(())
}

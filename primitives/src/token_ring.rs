//! TokenRing executor: Q moves around the ring on one channel while each
//! partial result (out, lse) goes straight back to the owner of its Q on a
//! second channel, both in flight during the step's compute.
//!
//! The schedule is [`crate::schedule::token_ring::plan`]. The numerics (what
//! a block is, how Q is trimmed, how blocks are merged) belong to the caller,
//! through [`TokenRingKernel`]; the executor only moves bytes and calls the
//! kernel in plan order.
//!
//! # Overlap contract
//!
//! At step `s` the executor posts the Q shift for step `s+1` and the return
//! of the block computed at step `s-1` (the bidirectional step, two
//! channels), then calls [`TokenRingKernel::compute`] for step `s`, and only
//! then waits for the transfers and calls [`TokenRingKernel::merge`] for the
//! received block.

use crate::error::{Result, invalid};
use crate::fabric::{Fabric, tag};
use crate::ring::{ShiftSpec, bidir_ring_step, ring_shift_start};
use crate::schedule::token_ring::plan;
use crate::schedule::wrap;

const OP_TR_Q: u8 = 0x30;
const OP_TR_OUT: u8 = 0x31;

/// The two channels TokenRing uses.
///
/// ```
/// use zccl_primitives::token_ring::TokenRingChannels;
/// // Two channels of their own: Q and the partial results move concurrently.
/// let ch = TokenRingChannels { q: 5, out: 6 };
/// assert_ne!(ch.q, ch.out);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRingChannels {
    /// Channel of the Q shift.
    pub q: u32,
    /// Channel of the partial results.
    pub out: u32,
}

/// The caller's side of TokenRing: sizes, compute and merge.
///
/// Length functions must agree on every rank (they are evaluated by the
/// sender and by the receiver of each message).
///
/// ```
/// use zccl_primitives::{Result, token_ring::TokenRingKernel};
/// // The smallest kernel: 1-byte Q, 1-byte blocks, counts merges.
/// struct Count(usize);
/// impl TokenRingKernel for Count {
///     fn q_len(&self, _: usize, _: usize, _: usize) -> usize { 1 }
///     fn out_len(&self, _: usize, _: usize, _: usize) -> usize { 1 }
///     fn compute(&mut self, _: usize, _: usize, q: &[u8]) -> Result<Vec<u8>> { Ok(q.to_vec()) }
///     fn merge(&mut self, _: usize, _: usize, _: Vec<u8>) -> Result<()> { self.0 += 1; Ok(()) }
/// }
/// let mut k = Count(0);
/// assert_eq!(k.forward_q(0, 0, &[7]), vec![7]); // default: forward all of Q
/// ```
pub trait TokenRingKernel {
    /// Bytes of the Q of `origin` that rank `holder` receives for `step`.
    fn q_len(&self, holder: usize, step: usize, origin: usize) -> usize;
    /// Bytes of the block rank `computer` computes at `step` for the Q of `origin`.
    fn out_len(&self, computer: usize, step: usize, origin: usize) -> usize;
    /// The part of the Q of `origin` held at `step` that the next holder needs
    /// (default: all of it). Its length must be `q_len(next holder, step + 1, origin)`.
    fn forward_q(&mut self, step: usize, origin: usize, q: &[u8]) -> Vec<u8> {
        let _ = (step, origin);
        q.to_vec()
    }
    /// Computes this rank's partial result for the Q of `origin` at `step`
    /// (attention of that Q against this rank's K, V).
    fn compute(&mut self, step: usize, origin: usize, q: &[u8]) -> Result<Vec<u8>>;
    /// Merges a partial result for this rank's own Q, computed by rank `from`
    /// at `step` (`from` is this rank for `step` 0).
    fn merge(&mut self, from: usize, step: usize, block: Vec<u8>) -> Result<()>;
}

/// Runs one TokenRing pass. `q_offset` is `+1` for the non-causal schedule
/// (Q forward) or `-1` for the causal zigzag schedule (Q backward).
/// `q_local` is this rank's own Q (length `q_len(rank, 0, rank)`).
///
/// ```
/// use zccl_primitives::{Fabric, Result, sim::run_ranks};
/// use zccl_primitives::token_ring::{token_ring, TokenRingChannels, TokenRingKernel};
/// // Toy kernel: a "block" is (computer, origin); merge records who computed for us.
/// struct K { me: usize, got: Vec<(usize, usize)> }
/// impl TokenRingKernel for K {
///     fn q_len(&self, _: usize, _: usize, _: usize) -> usize { 1 }
///     fn out_len(&self, _: usize, _: usize, _: usize) -> usize { 2 }
///     fn compute(&mut self, _: usize, origin: usize, q: &[u8]) -> Result<Vec<u8>> {
///         assert_eq!(q[0] as usize, origin);
///         Ok(vec![self.me as u8, origin as u8])
///     }
///     fn merge(&mut self, from: usize, _: usize, b: Vec<u8>) -> Result<()> {
///         assert_eq!((b[0] as usize, b[1] as usize), (from, self.me));
///         self.got.push((from, b[1] as usize));
///         Ok(())
///     }
/// }
/// let out = run_ranks(4, |f| {
///     let mut k = K { me: f.rank(), got: vec![] };
///     token_ring(f, TokenRingChannels { q: 0, out: 1 }, 1, vec![f.rank() as u8], &mut k).unwrap();
///     k.got.len()
/// });
/// assert_eq!(out, vec![4; 4]); // own block + 3 foreign ones
/// ```
pub fn token_ring<F: Fabric + ?Sized, K: TokenRingKernel>(
    f: &F,
    ch: TokenRingChannels,
    q_offset: isize,
    q_local: Vec<u8>,
    kernel: &mut K,
) -> Result<()> {
    let (r, n) = (f.rank(), f.size());
    if q_offset != 1 && q_offset != -1 {
        return Err(invalid(format!(
            "token_ring: Q offset must be +1 or -1, got {q_offset}"
        )));
    }
    if q_local.len() != kernel.q_len(r, 0, r) {
        return Err(invalid(format!(
            "token_ring: own Q has {} B, q_len says {}",
            q_local.len(),
            kernel.q_len(r, 0, r)
        )));
    }
    let mut q_cur = q_local;
    let mut pending: Option<Vec<u8>> = None;
    for st in plan(r, n, q_offset) {
        let q_spec = st.q_shift.map(|q| {
            let fwd = kernel.forward_q(st.step, q.sent_origin, &q_cur);
            (q, fwd)
        });
        let out_spec = st.out_return.map(|o| {
            (
                o,
                pending
                    .take()
                    .expect("a block computed at the previous step"),
            )
        });
        let (q_h, out_h) = match (q_spec, out_spec) {
            (Some((q, fwd)), Some((o, blk))) => {
                let owner_offset = wrap(o.send_to as isize - r as isize, n) as isize;
                let (a, b) = bidir_ring_step(
                    f,
                    ShiftSpec {
                        channel: ch.q,
                        offset: q_offset,
                        send: fwd,
                        recv_len: kernel.q_len(r, st.step + 1, q.recv_origin),
                        tag: tag(OP_TR_Q, st.step as u16, 0),
                    },
                    ShiftSpec {
                        channel: ch.out,
                        offset: owner_offset,
                        send: blk,
                        recv_len: kernel.out_len(o.recv_from, o.computed_at, r),
                        tag: tag(OP_TR_OUT, st.step as u16, 0),
                    },
                )?;
                (Some((a, q.recv_origin)), Some((b, o)))
            }
            (Some((q, fwd)), None) => {
                let recv_len = kernel.q_len(r, st.step + 1, q.recv_origin);
                let t = tag(OP_TR_Q, st.step as u16, 0);
                (
                    Some((
                        ring_shift_start(f, ch.q, fwd, recv_len, q_offset, t)?,
                        q.recv_origin,
                    )),
                    None,
                )
            }
            (None, Some((o, blk))) => {
                let owner_offset = wrap(o.send_to as isize - r as isize, n) as isize;
                let recv_len = kernel.out_len(o.recv_from, o.computed_at, r);
                let t = tag(OP_TR_OUT, st.step as u16, 0);
                (
                    None,
                    Some((
                        ring_shift_start(f, ch.out, blk, recv_len, owner_offset, t)?,
                        o,
                    )),
                )
            }
            (None, None) => (None, None),
        };
        if let Some(origin) = st.compute_origin {
            let blk = kernel.compute(st.step, origin, &q_cur)?;
            let want = kernel.out_len(r, st.step, origin);
            if blk.len() != want {
                return Err(invalid(format!(
                    "token_ring: compute gave {} B at step {}, out_len says {want}",
                    blk.len(),
                    st.step
                )));
            }
            if st.step == 0 {
                kernel.merge(r, 0, blk)?;
            } else {
                pending = Some(blk);
            }
        }
        if let Some((h, _origin)) = q_h {
            q_cur = h.wait()?;
        }
        if let Some((h, o)) = out_h {
            debug_assert_eq!(h.from, o.recv_from);
            let blk = h.wait()?;
            kernel.merge(o.recv_from, o.computed_at, blk)?;
        }
    }
    Ok(())
}

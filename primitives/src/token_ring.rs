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
//!
//! # Bytes or elements
//!
//! * [`token_ring`] with a [`TokenRingKernel`]: lengths in bytes, Q and
//!   blocks as `&[u8]` / `Vec<u8>` (a block may mix element types).
//! * [`token_ring_elems`] with an [`ElemKernel<T>`]: lengths in elements,
//!   Q and blocks as `&[T]` / `Vec<T>`; the same schedule, messages and
//!   channels. Received Q and blocks are read in place where the fabric's
//!   buffers are aligned for `T` (the runtime's always are); each Q and
//!   block a kernel hands over is copied once into a message, as a byte
//!   kernel does itself.
//!
//! # Channels
//!
//! Two, given as [`TokenRingChannels`] (no default): Q moves on `q`, the
//! partial results on `out`. Take them from a
//! [`Channels`](crate::channels::Channels) allocator with
//! `TokenRingChannels::from(&mut channels)`.

use crate::fabric::Signed;
use std::borrow::Cow;
use std::marker::PhantomData;
use zccl_runtime::DType;
use zccl_runtime::label::OpLabel;

use crate::dtype::{Elem, ElemVec, as_elems, to_bytes};
use crate::error::{Error, Result, invalid};
use crate::fabric::{Fabric, RecvBytes, tag};
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
        zccl_transports::copy::to_vec(q)
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
    let f = &Signed::bytes(f, OpLabel::TOKEN_RING, DType::U8);
    let r = f.rank();
    if f.size() == 1 {
        // No message to send: the fabric's state is the only failure.
        f.ensure_live()?;
    }
    check_offset("token_ring", q_offset)?;
    if q_local.len() != kernel.q_len(r, 0, r) {
        return Err(invalid(format!(
            "token_ring: own Q has {} B, q_len says {}",
            q_local.len(),
            kernel.q_len(r, 0, r)
        )));
    }
    drive(
        f,
        ch,
        q_offset,
        RecvBytes::from(q_local),
        &mut BytesKernel(kernel),
    )
}

fn check_offset(what: &str, q_offset: isize) -> Result<()> {
    if q_offset != 1 && q_offset != -1 {
        return Err(invalid(format!(
            "{what}: Q offset must be +1 or -1, got {q_offset}"
        )));
    }
    Ok(())
}

/// What the executor needs of a kernel, in bytes; received blocks are
/// handed over as the fabric's buffers ([`RecvBytes`]), so that a typed
/// kernel can read them in place.
trait Driven {
    fn q_len(&self, holder: usize, step: usize, origin: usize) -> usize;
    fn out_len(&self, computer: usize, step: usize, origin: usize) -> usize;
    fn forward_q(&mut self, step: usize, origin: usize, q: &[u8]) -> Vec<u8>;
    fn compute(&mut self, step: usize, origin: usize, q: &[u8]) -> Result<Vec<u8>>;
    fn merge(&mut self, from: usize, step: usize, block: RecvBytes) -> Result<()>;
}

/// A [`TokenRingKernel`] as the executor sees it.
struct BytesKernel<'k, K>(&'k mut K);

impl<K: TokenRingKernel> Driven for BytesKernel<'_, K> {
    fn q_len(&self, holder: usize, step: usize, origin: usize) -> usize {
        self.0.q_len(holder, step, origin)
    }
    fn out_len(&self, computer: usize, step: usize, origin: usize) -> usize {
        self.0.out_len(computer, step, origin)
    }
    fn forward_q(&mut self, step: usize, origin: usize, q: &[u8]) -> Vec<u8> {
        self.0.forward_q(step, origin, q)
    }
    fn compute(&mut self, step: usize, origin: usize, q: &[u8]) -> Result<Vec<u8>> {
        self.0.compute(step, origin, q)
    }
    fn merge(&mut self, from: usize, step: usize, block: RecvBytes) -> Result<()> {
        self.0.merge(from, step, block.into_vec())
    }
}

/// The executor of [`token_ring`] and [`token_ring_elems`], after their
/// argument checks.
fn drive<F: Fabric + ?Sized, K: Driven>(
    f: &F,
    ch: TokenRingChannels,
    q_offset: isize,
    q_local: RecvBytes,
    kernel: &mut K,
) -> Result<()> {
    let (r, n) = (f.rank(), f.size());
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
            let blk = kernel
                .compute(st.step, origin, &q_cur)
                .map_err(|e| gave_up(f, ch, e))?;
            let want = kernel.out_len(r, st.step, origin);
            if blk.len() != want {
                return Err(gave_up(
                    f,
                    ch,
                    invalid(format!(
                        "token_ring: compute gave {} B at step {}, out_len says {want}",
                        blk.len(),
                        st.step
                    )),
                ));
            }
            if st.step == 0 {
                kernel
                    .merge(r, 0, RecvBytes::from(blk))
                    .map_err(|e| gave_up(f, ch, e))?;
            } else {
                pending = Some(blk);
            }
        }
        if let Some((h, _origin)) = q_h {
            q_cur = h.wait_bytes()?;
        }
        if let Some((h, o)) = out_h {
            debug_assert_eq!(h.from, o.recv_from);
            let blk = h.wait_bytes()?;
            kernel
                .merge(o.recv_from, o.computed_at, blk)
                .map_err(|e| gave_up(f, ch, e))?;
        }
    }
    Ok(())
}

/// The kernel failed midway (`e`, its caller's error): the other ranks go
/// on with steps this rank will not take, so both channels are out of step
/// ([`Fabric::abandon`]). Returns `e`.
fn gave_up<F: Fabric + ?Sized>(f: &F, ch: TokenRingChannels, e: Error) -> Error {
    f.abandon(ch.q);
    f.abandon(ch.out);
    e
}

/// The caller's side of TokenRing with Q and partial results typed by
/// element: [`TokenRingKernel`] in elements of `T` instead of bytes. Run it
/// with [`token_ring_elems`].
///
/// Length functions count elements and must agree on every rank (they are
/// evaluated by the sender and by the receiver of each message). A partial
/// result made of several tensors (attention's `out` rows and `lse`) is one
/// vector with the tensors one after the other.
///
/// ```
/// use std::borrow::Cow;
/// use zccl_primitives::{Result, token_ring::ElemKernel};
/// // Q of 4 values; a block is the sum of Q and this rank's number.
/// struct Sum { me: f32, total: f32 }
/// impl ElemKernel<f32> for Sum {
///     fn q_len(&self, _: usize, _: usize, _: usize) -> usize { 4 }
///     fn out_len(&self, _: usize, _: usize, _: usize) -> usize { 1 }
///     fn compute(&mut self, _: usize, _: usize, q: &[f32]) -> Result<Vec<f32>> {
///         Ok(vec![q.iter().sum::<f32>() + self.me])
///     }
///     fn merge(&mut self, _: usize, _: usize, block: &[f32]) -> Result<()> {
///         self.total += block[0];
///         Ok(())
///     }
/// }
/// let mut k = Sum { me: 1.0, total: 0.0 };
/// // Default: forward all of Q, without a copy.
/// assert!(matches!(k.forward_q(0, 0, &[1.0; 4]), Cow::Borrowed(q) if q.len() == 4));
/// ```
pub trait ElemKernel<T: Elem> {
    /// Elements of the Q of `origin` that rank `holder` receives for `step`.
    fn q_len(&self, holder: usize, step: usize, origin: usize) -> usize;
    /// Elements of the block rank `computer` computes at `step` for the Q of
    /// `origin`.
    fn out_len(&self, computer: usize, step: usize, origin: usize) -> usize;
    /// The part of the Q of `origin` held at `step` that the next holder
    /// needs (default: all of it). Its length must be
    /// `q_len(next holder, step + 1, origin)`. Return a sub-slice of `q` as
    /// `Cow::Borrowed` to trim it, or a new vector as `Cow::Owned`.
    fn forward_q<'q>(&mut self, step: usize, origin: usize, q: &'q [T]) -> Cow<'q, [T]> {
        let _ = (step, origin);
        Cow::Borrowed(q)
    }
    /// Computes this rank's partial result for the Q of `origin` at `step`
    /// (attention of that Q against this rank's K, V); its length must be
    /// `out_len(this rank, step, origin)`.
    fn compute(&mut self, step: usize, origin: usize, q: &[T]) -> Result<Vec<T>>;
    /// Merges a partial result for this rank's own Q, computed by rank `from`
    /// at `step` (`from` is this rank for `step` 0).
    fn merge(&mut self, from: usize, step: usize, block: &[T]) -> Result<()>;
}

/// An [`ElemKernel`] as the executor sees it (bytes out, received buffers
/// read in place).
struct ElemsKernel<'k, T, K> {
    kernel: &'k mut K,
    rank: usize,
    _elem: PhantomData<fn() -> T>,
}

impl<T: Elem, K: ElemKernel<T>> Driven for ElemsKernel<'_, T, K> {
    fn q_len(&self, holder: usize, step: usize, origin: usize) -> usize {
        self.kernel.q_len(holder, step, origin) * std::mem::size_of::<T>()
    }
    fn out_len(&self, computer: usize, step: usize, origin: usize) -> usize {
        self.kernel.out_len(computer, step, origin) * std::mem::size_of::<T>()
    }
    fn forward_q(&mut self, step: usize, origin: usize, q: &[u8]) -> Vec<u8> {
        let q = as_elems::<T>(q);
        to_bytes(&self.kernel.forward_q(step, origin, &q))
    }
    fn compute(&mut self, step: usize, origin: usize, q: &[u8]) -> Result<Vec<u8>> {
        let blk = self.kernel.compute(step, origin, &as_elems::<T>(q))?;
        let want = self.kernel.out_len(self.rank, step, origin);
        if blk.len() != want {
            return Err(invalid(format!(
                "token_ring_elems: compute gave {} {} elements at step {step}, out_len says {want}",
                blk.len(),
                T::DTYPE
            )));
        }
        Ok(to_bytes(&blk))
    }
    fn merge(&mut self, from: usize, step: usize, block: RecvBytes) -> Result<()> {
        self.kernel.merge(from, step, &as_elems::<T>(&block))
    }
}

/// Runs one TokenRing pass with a typed kernel: [`token_ring`] with Q and
/// partial results in elements of `T`. `q_offset` is `+1` for the
/// non-causal schedule (Q forward) or `-1` for the causal zigzag schedule
/// (Q backward). `q_local` is this rank's own Q (`q_len(rank, 0, rank)`
/// elements).
///
/// Same schedule, messages, channels and overlap as [`token_ring`] (a byte
/// kernel that converts to and from `T` itself gets the same results).
/// `q_local` travels as it is (no copy); received Q and blocks are read in
/// place where the fabric's buffers are aligned for `T`; each block
/// `compute` returns and each Q forwarded is copied once into a message.
///
/// ```
/// use zccl_primitives::{Fabric, Result, sim::run_ranks};
/// use zccl_primitives::channels::Channels;
/// use zccl_primitives::token_ring::{ElemKernel, TokenRingChannels, token_ring_elems};
/// // Q is [rank; 3]; the block for Q of `origin` computed on rank `me` is
/// // [q[0] * 10 + me]; every rank merges one block from every rank.
/// struct K { me: usize, got: Vec<f64> }
/// impl ElemKernel<f64> for K {
///     fn q_len(&self, _: usize, _: usize, _: usize) -> usize { 3 }
///     fn out_len(&self, _: usize, _: usize, _: usize) -> usize { 1 }
///     fn compute(&mut self, _: usize, origin: usize, q: &[f64]) -> Result<Vec<f64>> {
///         assert_eq!(q, &[origin as f64; 3]);
///         Ok(vec![q[0] * 10.0 + self.me as f64])
///     }
///     fn merge(&mut self, from: usize, _: usize, b: &[f64]) -> Result<()> {
///         assert_eq!(b[0], self.me as f64 * 10.0 + from as f64);
///         self.got.push(b[0]);
///         Ok(())
///     }
/// }
/// let out = run_ranks(4, |f| {
///     let ch = TokenRingChannels::from(&mut Channels::new()); // channels 1 and 2
///     let mut k = K { me: f.rank(), got: vec![] };
///     token_ring_elems(f, ch, 1, vec![f.rank() as f64; 3], &mut k).unwrap();
///     k.got.len()
/// });
/// assert_eq!(out, vec![4; 4]); // own block + 3 foreign ones
/// ```
pub fn token_ring_elems<T, F, K>(
    f: &F,
    ch: TokenRingChannels,
    q_offset: isize,
    q_local: Vec<T>,
    kernel: &mut K,
) -> Result<()>
where
    T: Elem,
    F: Fabric + ?Sized,
    K: ElemKernel<T>,
{
    let f = &Signed::new::<T>(f, OpLabel::TOKEN_RING);
    let r = f.rank();
    check_offset("token_ring_elems", q_offset)?;
    if q_local.len() != kernel.q_len(r, 0, r) {
        return Err(invalid(format!(
            "token_ring_elems: own Q has {} {} elements, q_len says {}",
            q_local.len(),
            T::DTYPE,
            kernel.q_len(r, 0, r)
        )));
    }
    let mut k = ElemsKernel {
        kernel,
        rank: r,
        _elem: PhantomData,
    };
    drive(
        f,
        ch,
        q_offset,
        RecvBytes::from_owner(ElemVec(q_local)),
        &mut k,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::from_bytes;
    use crate::sim::{MsgRecord, SimConfig, SimRun, try_run_ranks};

    /// Lengths that vary with the rank, the step and the origin: Q of
    /// `origin` starts at `n + 2 + origin` elements and loses one per hop
    /// (trimmed by `forward_q`); blocks are `1 + computer + origin` long.
    fn q_elems(n: usize, step: usize, origin: usize) -> usize {
        n + 2 + origin - step
    }

    fn out_elems(computer: usize, origin: usize) -> usize {
        1 + computer + origin
    }

    /// The block rank `me` computes at `step` for a Q: depends on every
    /// input, so that any mix-up shows.
    fn block(me: usize, step: usize, origin: usize, q: &[f64]) -> Vec<f64> {
        let s: f64 = q.iter().enumerate().map(|(i, x)| x * (i + 1) as f64).sum();
        (0..out_elems(me, origin))
            .map(|j| s * (me + 1) as f64 + (step * 100 + j) as f64 + 0.5)
            .collect()
    }

    fn own_q(r: usize, n: usize) -> Vec<f64> {
        (0..q_elems(n, 0, r))
            .map(|i| r as f64 - i as f64 / 8.0)
            .collect()
    }

    /// (from, step, block) merged, in order.
    type Merged = Vec<(usize, usize, Vec<f64>)>;

    struct Typed {
        n: usize,
        me: usize,
        merged: Merged,
    }

    impl ElemKernel<f64> for Typed {
        fn q_len(&self, _holder: usize, step: usize, origin: usize) -> usize {
            q_elems(self.n, step, origin)
        }
        fn out_len(&self, computer: usize, _step: usize, origin: usize) -> usize {
            out_elems(computer, origin)
        }
        fn forward_q<'q>(&mut self, _step: usize, _origin: usize, q: &'q [f64]) -> Cow<'q, [f64]> {
            Cow::Borrowed(&q[..q.len() - 1])
        }
        fn compute(&mut self, step: usize, origin: usize, q: &[f64]) -> Result<Vec<f64>> {
            Ok(block(self.me, step, origin, q))
        }
        fn merge(&mut self, from: usize, step: usize, b: &[f64]) -> Result<()> {
            self.merged.push((from, step, b.to_vec()));
            Ok(())
        }
    }

    /// The same kernel written against the byte API.
    struct Bytes {
        n: usize,
        me: usize,
        merged: Merged,
    }

    impl TokenRingKernel for Bytes {
        fn q_len(&self, _holder: usize, step: usize, origin: usize) -> usize {
            q_elems(self.n, step, origin) * 8
        }
        fn out_len(&self, computer: usize, _step: usize, origin: usize) -> usize {
            out_elems(computer, origin) * 8
        }
        fn forward_q(&mut self, _step: usize, _origin: usize, q: &[u8]) -> Vec<u8> {
            q[..q.len() - 8].to_vec()
        }
        fn compute(&mut self, step: usize, origin: usize, q: &[u8]) -> Result<Vec<u8>> {
            Ok(to_bytes(&block(self.me, step, origin, &from_bytes(q))))
        }
        fn merge(&mut self, from: usize, step: usize, b: Vec<u8>) -> Result<()> {
            self.merged.push((from, step, from_bytes(&b)));
            Ok(())
        }
    }

    const CH: TokenRingChannels = TokenRingChannels { q: 3, out: 4 };

    fn run_typed(n: usize, q_offset: isize) -> SimRun<Merged> {
        try_run_ranks(SimConfig::default(), n, move |f| {
            let (me, n) = (f.rank(), f.size());
            let mut k = Typed {
                n,
                me,
                merged: vec![],
            };
            token_ring_elems(f, CH, q_offset, own_q(me, n), &mut k).unwrap();
            k.merged
        })
        .unwrap()
    }

    fn run_bytes(n: usize, q_offset: isize) -> SimRun<Merged> {
        try_run_ranks(SimConfig::default(), n, move |f| {
            let (me, n) = (f.rank(), f.size());
            let mut k = Bytes {
                n,
                me,
                merged: vec![],
            };
            token_ring(f, CH, q_offset, to_bytes(&own_q(me, n)), &mut k).unwrap();
            k.merged
        })
        .unwrap()
    }

    fn wire(log: &[MsgRecord]) -> Vec<(usize, usize, u32, u64, u64, usize)> {
        let mut k: Vec<_> = log
            .iter()
            // Only the label's element type differs (elements vs bytes).
            .map(|m| {
                let t = m.tag & ((1 << crate::fabric::LABEL_SHIFT) - 1);
                (m.src, m.dst, m.channel, t, m.seq, m.len)
            })
            .collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn typed_token_ring_matches_the_byte_version() {
        for n in 1..=6 {
            for q_offset in [1isize, -1] {
                let (t, b) = (run_typed(n, q_offset), run_bytes(n, q_offset));
                let ctx = format!("n={n} q_offset={q_offset}");
                assert_eq!(t.results, b.results, "{ctx}");
                assert_eq!(wire(&t.log), wire(&b.log), "{ctx}");
                for (r, merged) in t.results.iter().enumerate() {
                    // Own block first, then one from every other rank.
                    assert_eq!(merged.len(), n, "{ctx}");
                    assert_eq!((merged[0].0, merged[0].1), (r, 0), "{ctx}");
                    let mut from: Vec<usize> = merged.iter().map(|m| m.0).collect();
                    from.sort_unstable();
                    assert_eq!(from, (0..n).collect::<Vec<_>>(), "{ctx}");
                    for (from, step, blk) in merged {
                        // The Q rank `from` saw was ours, trimmed once per hop.
                        let q = &own_q(r, n)[..q_elems(n, *step, r)];
                        assert_eq!(blk, &block(*from, *step, r, q), "{ctx} r={r}");
                    }
                }
                assert!(t.log.iter().all(|m| m.channel == 3 || m.channel == 4));
            }
        }
    }

    #[test]
    fn typed_token_ring_argument_errors_count_elements() {
        struct Wrong;
        impl ElemKernel<f32> for Wrong {
            fn q_len(&self, _: usize, _: usize, _: usize) -> usize {
                2
            }
            fn out_len(&self, _: usize, _: usize, _: usize) -> usize {
                3
            }
            fn compute(&mut self, _: usize, _: usize, _: &[f32]) -> Result<Vec<f32>> {
                Ok(vec![0.0; 2]) // one short
            }
            fn merge(&mut self, _: usize, _: usize, _: &[f32]) -> Result<()> {
                Ok(())
            }
        }
        let run = try_run_ranks(SimConfig::default(), 1, |f| {
            let own_q = token_ring_elems(f, CH, 1, vec![0f32; 3], &mut Wrong);
            let offset = token_ring_elems(f, CH, 2, vec![0f32; 2], &mut Wrong);
            let out = token_ring_elems(f, CH, 1, vec![0f32; 2], &mut Wrong);
            [own_q, offset, out].map(|e| e.unwrap_err().to_string())
        })
        .unwrap();
        let [own_q, offset, out] = &run.results[0];
        assert!(
            own_q.contains("own Q has 3 f32 elements, q_len says 2"),
            "{own_q}"
        );
        assert!(
            offset.contains("Q offset must be +1 or -1, got 2"),
            "{offset}"
        );
        assert!(
            out.contains("compute gave 2 f32 elements at step 0, out_len says 3"),
            "{out}"
        );
    }
}

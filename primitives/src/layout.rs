//! Ulysses resharding: sequence-sharded `[B, c, H, d]` ↔ head-sharded
//! `[B, S, H/P, d]` (`S = c·P`), with DeepSpeed/yunchang chunk ordering: rank
//! `j` gets head group `j` (heads `j·H/P .. (j+1)·H/P`), and the sequence
//! shard of rank `i` lands at positions `i·c .. (i+1)·c`.
//!
//! The `pack_*`/`unpack_*` functions are pure (one all-to-all sits between
//! them); [`seq_to_heads`] and [`heads_to_seq`] run the whole exchange.
//! `H % P ≠ 0` is rejected with [`Error::HeadsNotDivisible`].
//! [`iseq_to_heads`] and [`iheads_to_seq`] are the non-blocking forms (see
//! [`crate::nonblocking`]): e.g. start the exchange of K while Q is being
//! projected.

use std::sync::Arc;

use crate::alltoall::all_to_all;
use crate::dtype::Elem;
use crate::error::{Error, Result, invalid};
use crate::fabric::Fabric;
use crate::nonblocking::{OpHandle, start};

/// Geometry of one rank's sequence shard.
///
/// ```
/// use zccl_primitives::layout::UlyssesShape;
/// let s = UlyssesShape { batch: 2, seq_local: 4, heads: 8, dim: 16 };
/// assert_eq!(s.heads_per_rank(4).unwrap(), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UlyssesShape {
    /// Batch `B`.
    pub batch: usize,
    /// Tokens per rank `c` (the sequence shard).
    pub seq_local: usize,
    /// Heads `H` (all of them).
    pub heads: usize,
    /// Head dimension `d`.
    pub dim: usize,
}

impl UlyssesShape {
    /// Heads per rank after resharding over `ranks`; errors if `heads % ranks != 0`.
    ///
    /// ```
    /// use zccl_primitives::layout::UlyssesShape;
    /// let s = UlyssesShape { batch: 1, seq_local: 4, heads: 6, dim: 8 };
    /// assert_eq!(s.heads_per_rank(3).unwrap(), 2);
    /// assert_eq!(s.heads_per_rank(4).unwrap_err().to_string(),
    ///     "Ulysses: 6 heads cannot be split evenly over 4 ranks (heads % ranks = 2)");
    /// ```
    pub fn heads_per_rank(&self, ranks: usize) -> Result<usize> {
        if ranks == 0 || !self.heads.is_multiple_of(ranks) {
            return Err(Error::HeadsNotDivisible {
                heads: self.heads,
                ranks,
            });
        }
        Ok(self.heads / ranks)
    }

    /// Elements of a sequence shard `[B, c, H, d]` (`usize::MAX` where
    /// the product does not fit; see [`UlyssesShape::checked_seq_shard_len`]).
    ///
    /// ```
    /// use zccl_primitives::layout::UlyssesShape;
    /// let s = UlyssesShape { batch: 2, seq_local: 4, heads: 8, dim: 16 };
    /// assert_eq!(s.seq_shard_len(), 2 * 4 * 8 * 16);
    /// ```
    pub fn seq_shard_len(&self) -> usize {
        self.checked_seq_shard_len().unwrap_or(usize::MAX)
    }

    /// Elements of a sequence shard `[B, c, H, d]`, `None` where the
    /// product does not fit in a `usize` (0 when any dimension is 0).
    ///
    /// ```
    /// use zccl_primitives::layout::UlyssesShape;
    /// let s = UlyssesShape { batch: 1 << 63, seq_local: 2, heads: 2, dim: 1 };
    /// assert_eq!(s.checked_seq_shard_len(), None);
    /// assert_eq!(UlyssesShape { dim: 0, ..s }.checked_seq_shard_len(), Some(0));
    /// ```
    pub fn checked_seq_shard_len(&self) -> Option<usize> {
        let dims = [self.batch, self.seq_local, self.heads, self.dim];
        if dims.contains(&0) {
            return Some(0);
        }
        dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
}

/// Checks a layout function's arguments: the heads split over `ranks`, and
/// `got` elements for the shape (which must fit in a `usize`: a shape
/// whose product wrapped around passed a short buffer's length check, and
/// the copies then indexed past it). Returns the heads per rank. With the
/// length right and not 0, every index the loops form is below it (`H ≥
/// P` and every dimension at least 1), and so is their number of steps.
fn check_args(s: UlyssesShape, ranks: usize, got: usize, what: &str) -> Result<usize> {
    let hp = s.heads_per_rank(ranks)?;
    let want = s.checked_seq_shard_len().ok_or_else(|| {
        invalid(format!(
            "{what}: a shape [B, c, H, d] = [{}, {}, {}, {}] has more elements than memory holds",
            s.batch, s.seq_local, s.heads, s.dim
        ))
    })?;
    if got != want {
        return Err(invalid(format!("{what}: {got} elements, expected {want}")));
    }
    Ok(hp)
}

/// Packs a sequence shard `[B, c, H, d]` into the all-to-all send buffer:
/// chunk `j` is head group `j`, `[B, c, H/P, d]`.
///
/// ```
/// use zccl_primitives::layout::{pack_seq_to_heads, UlyssesShape};
/// let s = UlyssesShape { batch: 1, seq_local: 2, heads: 2, dim: 1 };
/// // x[t, h] = 10 t + h
/// assert_eq!(pack_seq_to_heads(&[0, 1, 10, 11], s, 2).unwrap(), vec![0, 10, 1, 11]);
/// ```
pub fn pack_seq_to_heads<T: Elem>(x: &[T], s: UlyssesShape, ranks: usize) -> Result<Vec<T>> {
    let hp = check_args(s, ranks, x.len(), "seq_to_heads input")?;
    if x.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(x.len());
    for j in 0..ranks {
        for b in 0..s.batch {
            for t in 0..s.seq_local {
                let base = ((b * s.seq_local + t) * s.heads + j * hp) * s.dim;
                zccl_transports::copy::extend(&mut out, &x[base..base + hp * s.dim]);
            }
        }
    }
    Ok(out)
}

/// Unpacks the all-to-all receive buffer (chunk `i` = rank `i`'s sequence
/// shard of this rank's head group) into `[B, S, H/P, d]`.
///
/// ```
/// use zccl_primitives::layout::{pack_seq_to_heads, unpack_seq_to_heads, UlyssesShape};
/// // One rank: packing then unpacking is the identity.
/// let s = UlyssesShape { batch: 1, seq_local: 2, heads: 2, dim: 1 };
/// let x = [0u8, 1, 10, 11];
/// assert_eq!(unpack_seq_to_heads(&pack_seq_to_heads(&x, s, 1).unwrap(), s, 1).unwrap(), x);
/// ```
pub fn unpack_seq_to_heads<T: Elem>(recv: &[T], s: UlyssesShape, ranks: usize) -> Result<Vec<T>> {
    let hp = check_args(s, ranks, recv.len(), "seq_to_heads receive buffer")?;
    if recv.is_empty() {
        return Ok(Vec::new());
    }
    let seq = s.seq_local * ranks;
    let row = hp * s.dim;
    let mut out = vec![T::default(); recv.len()];
    let chunk = s.batch * s.seq_local * row;
    for i in 0..ranks {
        for b in 0..s.batch {
            for t in 0..s.seq_local {
                let src = i * chunk + (b * s.seq_local + t) * row;
                let dst = (b * seq + i * s.seq_local + t) * row;
                zccl_transports::copy::copy_slice(&mut out[dst..dst + row], &recv[src..src + row]);
            }
        }
    }
    Ok(out)
}

/// Packs a head shard `[B, S, H/P, d]` into the all-to-all send buffer:
/// chunk `j` is sequence shard `j`, `[B, c, H/P, d]`.
///
/// ```
/// use zccl_primitives::layout::{pack_heads_to_seq, UlyssesShape};
/// let s = UlyssesShape { batch: 1, seq_local: 1, heads: 2, dim: 1 };
/// // Head shard [S = 2, H/P = 1] on 2 ranks: chunk j is token j.
/// assert_eq!(pack_heads_to_seq(&[5u8, 6], s, 2).unwrap(), vec![5, 6]);
/// ```
pub fn pack_heads_to_seq<T: Elem>(y: &[T], s: UlyssesShape, ranks: usize) -> Result<Vec<T>> {
    let hp = check_args(s, ranks, y.len(), "heads_to_seq input")?;
    if y.is_empty() {
        return Ok(Vec::new());
    }
    let seq = s.seq_local * ranks;
    let row = hp * s.dim;
    let mut out = Vec::with_capacity(y.len());
    for j in 0..ranks {
        for b in 0..s.batch {
            let base = (b * seq + j * s.seq_local) * row;
            zccl_transports::copy::extend(&mut out, &y[base..base + s.seq_local * row]);
        }
    }
    Ok(out)
}

/// Unpacks the all-to-all receive buffer (chunk `i` = head group `i` of this
/// rank's sequence shard) into `[B, c, H, d]`.
///
/// ```
/// use zccl_primitives::layout::{unpack_heads_to_seq, UlyssesShape};
/// let s = UlyssesShape { batch: 1, seq_local: 1, heads: 2, dim: 1 };
/// // Chunk i (from rank i) is head group i of this rank's token.
/// assert_eq!(unpack_heads_to_seq(&[5u8, 6], s, 2).unwrap(), vec![5, 6]);
/// ```
pub fn unpack_heads_to_seq<T: Elem>(recv: &[T], s: UlyssesShape, ranks: usize) -> Result<Vec<T>> {
    let hp = check_args(s, ranks, recv.len(), "heads_to_seq receive buffer")?;
    if recv.is_empty() {
        return Ok(Vec::new());
    }
    let row = hp * s.dim;
    let chunk = s.batch * s.seq_local * row;
    let mut out = vec![T::default(); recv.len()];
    for i in 0..ranks {
        for b in 0..s.batch {
            for t in 0..s.seq_local {
                let src = i * chunk + (b * s.seq_local + t) * row;
                let dst = ((b * s.seq_local + t) * s.heads + i * hp) * s.dim;
                zccl_transports::copy::copy_slice(&mut out[dst..dst + row], &recv[src..src + row]);
            }
        }
    }
    Ok(out)
}

/// Sequence shard `[B, c, H, d]` → head shard `[B, S, H/P, d]` (one all-to-all).
///
/// ```
/// use zccl_primitives::{layout::{seq_to_heads, heads_to_seq, UlyssesShape}, sim::run_ranks, Fabric};
/// let s = UlyssesShape { batch: 1, seq_local: 2, heads: 2, dim: 1 };
/// let out = run_ranks(2, move |f| {
///     let x: Vec<i32> = (0..4).map(|i| 100 * f.rank() as i32 + i).collect();
///     let y = seq_to_heads(f, 0, &x, s).unwrap();
///     assert_eq!(heads_to_seq(f, 0, &y, s).unwrap(), x);
///     y
/// });
/// // rank 0 holds head 0 of all 4 tokens
/// assert_eq!(out[0], vec![0, 2, 100, 102]);
/// ```
pub fn seq_to_heads<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    x: &[T],
    s: UlyssesShape,
) -> Result<Vec<T>> {
    let send = pack_seq_to_heads(x, s, f.size())?;
    let recv = all_to_all(f, ch, &send)?;
    unpack_seq_to_heads(&recv, s, f.size())
}

/// Head shard `[B, S, H/P, d]` → sequence shard `[B, c, H, d]` (one all-to-all);
/// the inverse of [`seq_to_heads`].
///
/// ```
/// use zccl_primitives::{layout::{heads_to_seq, UlyssesShape}, sim::run_ranks, Fabric};
/// let s = UlyssesShape { batch: 1, seq_local: 1, heads: 2, dim: 1 };
/// let out = run_ranks(2, move |f| heads_to_seq(f, 0, &[f.rank() as u8, 10 + f.rank() as u8], s).unwrap());
/// assert_eq!(out, vec![vec![0, 1], vec![10, 11]]);
/// ```
pub fn heads_to_seq<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    y: &[T],
    s: UlyssesShape,
) -> Result<Vec<T>> {
    let send = pack_heads_to_seq(y, s, f.size())?;
    let recv = all_to_all(f, ch, &send)?;
    unpack_heads_to_seq(&recv, s, f.size())
}

/// Non-blocking [`seq_to_heads`] (owned input, progress thread).
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{layout::{iseq_to_heads, UlyssesShape}, sim::run_ranks, Fabric};
/// let s = UlyssesShape { batch: 1, seq_local: 1, heads: 2, dim: 1 };
/// let out = run_ranks(2, move |f| {
///     let x = vec![10 * f.rank() as i32, 10 * f.rank() as i32 + 1]; // [t, h]
///     iseq_to_heads(Arc::new(f.clone()), 0, x, s).wait().unwrap()
/// });
/// assert_eq!(out, vec![vec![0, 10], vec![1, 11]]);
/// ```
pub fn iseq_to_heads<T: Elem, F: Fabric + ?Sized + 'static>(
    f: Arc<F>,
    ch: u32,
    x: Vec<T>,
    s: UlyssesShape,
) -> OpHandle<Vec<T>> {
    start(f, "seq_to_heads", move |f| seq_to_heads(f, ch, &x, s))
}

/// Non-blocking [`heads_to_seq`] (owned input, progress thread).
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{layout::{iheads_to_seq, UlyssesShape}, sim::run_ranks, Fabric};
/// let s = UlyssesShape { batch: 1, seq_local: 1, heads: 2, dim: 1 };
/// let out = run_ranks(2, move |f| {
///     let y = vec![f.rank() as i32, f.rank() as i32 + 10]; // [t, h/P]
///     iheads_to_seq(Arc::new(f.clone()), 0, y, s).wait().unwrap()
/// });
/// assert_eq!(out, vec![vec![0, 1], vec![10, 11]]);
/// ```
pub fn iheads_to_seq<T: Elem, F: Fabric + ?Sized + 'static>(
    f: Arc<F>,
    ch: u32,
    y: Vec<T>,
    s: UlyssesShape,
) -> OpHandle<Vec<T>> {
    start(f, "heads_to_seq", move |f| heads_to_seq(f, ch, &y, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::run_ranks;

    #[test]
    fn shapes_whose_size_wraps_around_are_refused_not_indexed() {
        // 2^63 x 2 x 2 x 1 wraps to 0 elements: an empty buffer passed the
        // length check and the copies panicked past its end.
        let s = UlyssesShape {
            batch: 1 << 63,
            seq_local: 2,
            heads: 2,
            dim: 1,
        };
        let e: &[f32] = &[];
        for r in [
            pack_seq_to_heads(e, s, 2),
            unpack_seq_to_heads(e, s, 2),
            pack_heads_to_seq(e, s, 2),
            unpack_heads_to_seq(e, s, 2),
        ] {
            let msg = r.unwrap_err().to_string();
            assert!(msg.contains("more elements than memory holds"), "{msg}");
        }
        // Through the exchange: every rank fails, none panics.
        for r in run_ranks(2, move |f| seq_to_heads(f, 0, &[0f32; 0], s).map(drop)) {
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
        }
    }

    #[test]
    fn an_empty_shape_moves_nothing_at_once() {
        // dim 0 with 2^40 tokens: the loops ran 2^41 empty copies.
        let s = UlyssesShape {
            batch: 1 << 20,
            seq_local: 1 << 20,
            heads: 2,
            dim: 0,
        };
        let t = std::time::Instant::now();
        assert!(pack_seq_to_heads::<f32>(&[], s, 2).unwrap().is_empty());
        assert!(unpack_heads_to_seq::<f32>(&[], s, 2).unwrap().is_empty());
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn zero_ranks_is_an_error_that_formats() {
        let s = UlyssesShape {
            batch: 1,
            seq_local: 1,
            heads: 4,
            dim: 1,
        };
        let msg = s.heads_per_rank(0).unwrap_err().to_string();
        assert_eq!(msg, "Ulysses: 4 heads cannot be split evenly over 0 ranks");
        assert!(pack_seq_to_heads(&[0u8; 4], s, 0).is_err());
    }
}

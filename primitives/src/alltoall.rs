//! All-to-all with equal and uneven splits (pairwise-exchange schedule,
//! [`crate::schedule::pairwise`]).
//!
//! Chunk `j` of a rank's input goes to rank `j`; the chunk received from rank
//! `i` lands at position `i` of the output, in rank order. Blocking; every
//! rank must call with consistent counts (rank `i`'s `send_counts[j]` equals
//! rank `j`'s `recv_counts[i]`). Zero-length chunks are allowed and are sent
//! as empty messages, so inconsistent counts are reported as a
//! [`Error::Mismatch`](crate::Error::Mismatch) instead of a hang.
//!
//! [`iall_to_all`] and [`iall_to_all_v`] are the non-blocking forms (owned
//! buffers, a progress thread, an [`OpHandle`]; see [`crate::nonblocking`]).

use crate::fabric::Signed;
use std::sync::Arc;
use zccl_runtime::label::OpLabel;

use crate::dtype::{Elem, as_bytes};
use crate::error::{Result, invalid};
use crate::fabric::{Fabric, tag};
use crate::nonblocking::{OpHandle, start};
use crate::schedule::chunks::offsets;
use crate::schedule::pairwise;

const OP_A2A: u8 = 0x10;

/// Equal-split all-to-all: `input.len()` must be a multiple of the rank count.
///
/// ```
/// use zccl_primitives::{alltoall::all_to_all, sim::run_ranks, Fabric};
/// let out = run_ranks(2, |f| {
///     let r = f.rank() as i32;
///     all_to_all(f, 0, &[10 * r, 10 * r + 1]).unwrap()
/// });
/// assert_eq!(out, vec![vec![0, 10], vec![1, 11]]);
/// ```
pub fn all_to_all<T: Elem, F: Fabric + ?Sized>(f: &F, ch: u32, input: &[T]) -> Result<Vec<T>> {
    let f = &Signed::new::<T>(f, OpLabel::ALL_TO_ALL);
    let counts = even_counts(input.len(), f.size())?;
    all_to_all_v(f, ch, input, &counts, &counts)
}

/// The per-rank counts of an equal-split all-to-all of `len` elements.
fn even_counts(len: usize, n: usize) -> Result<Vec<usize>> {
    if !len.is_multiple_of(n) {
        return Err(invalid(format!(
            "all_to_all: {len} elements do not split evenly over {n} ranks"
        )));
    }
    Ok(vec![len / n; n])
}

/// [`all_to_all`] into a caller-owned `output` of `input.len()` elements
/// (NCCL's `recvbuff`): nothing is allocated for the result, so a caller
/// that reuses its output buffer pays no page faults for it.
///
/// ```
/// use zccl_primitives::{alltoall::all_to_all_into, sim::run_ranks, Fabric};
/// let out = run_ranks(2, |f| {
///     let r = f.rank() as i32;
///     let mut out = [0; 2];
///     all_to_all_into(f, 0, &[10 * r, 10 * r + 1], &mut out).unwrap();
///     out
/// });
/// assert_eq!(out, vec![[0, 10], [1, 11]]);
/// ```
pub fn all_to_all_into<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    input: &[T],
    output: &mut [T],
) -> Result<()> {
    let f = &Signed::new::<T>(f, OpLabel::ALL_TO_ALL);
    let counts = even_counts(input.len(), f.size())?;
    all_to_all_v_into(f, ch, input, &counts, &counts, output)
}

/// Uneven all-to-all: `input` holds `send_counts[j]` elements for each rank
/// `j`, packed in rank order; the output holds `recv_counts[i]` elements from
/// each rank `i`, packed in rank order.
///
/// ```
/// use zccl_primitives::{alltoall::all_to_all_v, sim::run_ranks, Fabric};
/// // rank 0 sends [] to itself and [1, 2] to rank 1; rank 1 sends [3] to rank 0 and [4] to itself.
/// let out = run_ranks(2, |f| {
///     if f.rank() == 0 {
///         all_to_all_v(f, 0, &[1u8, 2], &[0, 2], &[0, 1]).unwrap()
///     } else {
///         all_to_all_v(f, 0, &[3u8, 4], &[1, 1], &[2, 1]).unwrap()
///     }
/// });
/// assert_eq!(out, vec![vec![3], vec![1, 2, 4]]);
/// ```
pub fn all_to_all_v<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    input: &[T],
    send_counts: &[usize],
    recv_counts: &[usize],
) -> Result<Vec<T>> {
    let f = &Signed::new::<T>(f, OpLabel::ALL_TO_ALL_V);
    check_counts(f.size(), input.len(), send_counts, recv_counts)?;
    let total = recv_counts
        .iter()
        .try_fold(0usize, |a, &c| a.checked_add(c))
        .ok_or_else(|| invalid("all_to_all_v: recv counts add up to more than usize::MAX"))?;
    let mut out = vec![T::default(); total];
    all_to_all_v_into(f, ch, input, send_counts, recv_counts, &mut out)?;
    Ok(out)
}

/// Checks the counts of an all-to-all-v over `n` ranks against the input
/// length; returns the send offsets.
fn check_counts(
    n: usize,
    input_len: usize,
    send_counts: &[usize],
    recv_counts: &[usize],
) -> Result<Vec<usize>> {
    if send_counts.len() != n || recv_counts.len() != n {
        return Err(invalid(format!(
            "all_to_all_v: {} send counts and {} recv counts for {n} ranks",
            send_counts.len(),
            recv_counts.len()
        )));
    }
    let so = offsets(send_counts);
    if so[n] != input_len {
        return Err(invalid(format!(
            "all_to_all_v: send counts add up to {}, input has {input_len}",
            so[n]
        )));
    }
    Ok(so)
}

/// [`all_to_all_v`] into a caller-owned `output` of `recv_counts`' sum
/// elements (NCCL's `recvbuff`; nothing is allocated for the result).
///
/// ```
/// use zccl_primitives::{alltoall::all_to_all_v_into, sim::run_ranks, Fabric};
/// let out = run_ranks(2, |f| {
///     let r = f.rank() as u8;
///     // Rank 0 sends 1 element to itself and 2 to rank 1; rank 1 sends 1 and 1.
///     let (send, recv) = if r == 0 { ([1, 2], [1, 1]) } else { ([1, 1], [2, 1]) };
///     let input: Vec<u8> = (0..send.iter().sum::<usize>() as u8).map(|i| 10 * r + i).collect();
///     let mut out = vec![0; recv.iter().sum()];
///     all_to_all_v_into(f, 0, &input, &send, &recv, &mut out).unwrap();
///     out
/// });
/// assert_eq!(out, vec![vec![0, 10], vec![1, 2, 11]]);
/// ```
pub fn all_to_all_v_into<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    input: &[T],
    send_counts: &[usize],
    recv_counts: &[usize],
    output: &mut [T],
) -> Result<()> {
    let f = &Signed::new::<T>(f, OpLabel::ALL_TO_ALL_V);
    let (r, n) = (f.rank(), f.size());
    let so = check_counts(n, input.len(), send_counts, recv_counts)?;
    let ro = offsets(recv_counts);
    if ro[n] != output.len() {
        return Err(invalid(format!(
            "all_to_all_v: recv counts add up to {}, output has {}",
            ro[n],
            output.len()
        )));
    }
    if send_counts[r] != recv_counts[r] {
        return Err(invalid(format!(
            "all_to_all_v: rank {r} sends {} elements to itself but expects {}",
            send_counts[r], recv_counts[r]
        )));
    }
    if n == 1 {
        // No message to send: the fabric's state is the only failure.
        f.ensure_live()?;
    }
    let sz = std::mem::size_of::<T>();
    // Every block from a peer is received straight into its place in
    // `output` (a same-host CMA copy lands there; see
    // `Fabric::irecv_into`). All receives are posted first, so that the
    // peers' data finds them; from here on `output` is only reached
    // through `base`.
    let base = output.as_mut_ptr();
    let mut recvs = Vec::with_capacity(n);
    for s in 1..n {
        let (_, from) = pairwise::peers(r, n, s);
        // SAFETY: the blocks of `output` are disjoint and lie inside it;
        // `output` is borrowed mutably for the whole call and untouched
        // until every handle is waited (or dropped, which takes the buffer
        // back) before it returns.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(base.add(ro[from]).cast::<u8>(), recv_counts[from] * sz)
        };
        let t = tag(OP_A2A, s as u16, 0);
        recvs.push(unsafe { f.irecv_into(from, ch, t, dst) }?);
    }
    // The blocks are lent from `input` (read only here): no copy where the
    // fabric lets the peer read them (same-host CMA).
    let mut sends = Vec::with_capacity(n);
    for s in 1..n {
        let (to, _) = pairwise::peers(r, n, s);
        let t = tag(OP_A2A, s as u16, 0);
        let block = as_bytes(&input[so[to]..so[to + 1]]);
        // SAFETY: `input` is borrowed immutably for the whole call, and
        // every handle is waited (or dropped, which waits) before it returns.
        sends.push(unsafe { f.isend_lent(to, ch, t, block) }?);
    }
    // This rank's own block, while the peers copy theirs (a CMA peer reads
    // the lent blocks meanwhile).
    // SAFETY: block `r` of `output` lies inside it and is disjoint from
    // every block a receive lands in.
    let own = unsafe { std::slice::from_raw_parts_mut(base.add(ro[r]), recv_counts[r]) };
    zccl_transports::copy::copy_slice(own, &input[so[r]..so[r + 1]]);
    for rv in recvs {
        rv.wait()?;
    }
    for sh in sends {
        sh.wait()?;
    }
    Ok(())
}

/// Non-blocking [`all_to_all`].
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{alltoall::iall_to_all, sim::run_ranks, Fabric};
/// let out = run_ranks(2, |f| {
///     let r = f.rank() as u8;
///     iall_to_all(Arc::new(f.clone()), 0, vec![10 * r, 10 * r + 1]).wait().unwrap()
/// });
/// assert_eq!(out, vec![vec![0, 10], vec![1, 11]]);
/// ```
pub fn iall_to_all<T: Elem, F: Fabric + ?Sized + 'static>(
    f: Arc<F>,
    ch: u32,
    input: Vec<T>,
) -> OpHandle<Vec<T>> {
    start(f, "all_to_all", move |f| all_to_all(f, ch, &input))
}

/// Non-blocking [`all_to_all_v`] (counts as owned vectors).
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{alltoall::iall_to_all_v, sim::run_ranks, Fabric};
/// let out = run_ranks(2, |f| {
///     let f = Arc::new(f.clone());
///     if f.rank() == 0 {
///         iall_to_all_v(f, 0, vec![1u8, 2], vec![0, 2], vec![0, 1]).wait().unwrap()
///     } else {
///         iall_to_all_v(f, 0, vec![3u8, 4], vec![1, 1], vec![2, 1]).wait().unwrap()
///     }
/// });
/// assert_eq!(out, vec![vec![3], vec![1, 2, 4]]);
/// ```
pub fn iall_to_all_v<T: Elem, F: Fabric + ?Sized + 'static>(
    f: Arc<F>,
    ch: u32,
    input: Vec<T>,
    send_counts: Vec<usize>,
    recv_counts: Vec<usize>,
) -> OpHandle<Vec<T>> {
    start(f, "all_to_all_v", move |f| {
        all_to_all_v(f, ch, &input, &send_counts, &recv_counts)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::run_ranks;

    #[test]
    fn counts_whose_sum_wraps_around_are_refused_not_used() {
        // usize::MAX + 2 wraps to 1 = the input's length: before the sums
        // saturated this passed the check and sliced (or wrote) out of range.
        let out = run_ranks(2, |f| {
            let input = [7u8];
            let mut output = [0u8; 1];
            let counts = [usize::MAX, 2];
            let into = all_to_all_v_into(f, 0, &input, &counts, &counts, &mut output)
                .unwrap_err()
                .to_string();
            let alloc = all_to_all_v(f, 0, &input, &[1, 0], &[usize::MAX, 2])
                .unwrap_err()
                .to_string();
            (into, alloc, output)
        });
        for (into, alloc, output) in out {
            assert!(into.contains("send counts add up to"), "{into}");
            assert!(alloc.contains("recv counts add up to more than"), "{alloc}");
            assert_eq!(output, [0], "nothing written");
        }
    }
}

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

use std::sync::Arc;

use crate::dtype::{Elem, from_bytes, to_bytes};
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
    let n = f.size();
    if !input.len().is_multiple_of(n) {
        return Err(invalid(format!(
            "all_to_all: {} elements do not split evenly over {n} ranks",
            input.len()
        )));
    }
    let counts = vec![input.len() / n; n];
    all_to_all_v(f, ch, input, &counts, &counts)
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
    let (r, n) = (f.rank(), f.size());
    if send_counts.len() != n || recv_counts.len() != n {
        return Err(invalid(format!(
            "all_to_all_v: {} send counts and {} recv counts for {n} ranks",
            send_counts.len(),
            recv_counts.len()
        )));
    }
    let so = offsets(send_counts);
    if so[n] != input.len() {
        return Err(invalid(format!(
            "all_to_all_v: send counts add up to {}, input has {}",
            so[n],
            input.len()
        )));
    }
    let ro = offsets(recv_counts);
    let mut out = vec![T::default(); ro[n]];
    let sz = std::mem::size_of::<T>();
    for s in 0..n {
        let (to, from) = pairwise::peers(r, n, s);
        if s == 0 {
            if send_counts[r] != recv_counts[r] {
                return Err(invalid(format!(
                    "all_to_all_v: rank {r} sends {} elements to itself but expects {}",
                    send_counts[r], recv_counts[r]
                )));
            }
            out[ro[r]..ro[r + 1]].copy_from_slice(&input[so[r]..so[r + 1]]);
            continue;
        }
        let t = tag(OP_A2A, s as u16, 0);
        let sh = f.isend(to, ch, t, to_bytes(&input[so[to]..so[to + 1]]))?;
        let got = f.irecv(from, ch, t, recv_counts[from] * sz)?.wait()?;
        out[ro[from]..ro[from + 1]].copy_from_slice(&from_bytes::<T>(&got));
        sh.wait()?;
    }
    Ok(out)
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

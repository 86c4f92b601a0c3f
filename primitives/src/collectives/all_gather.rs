//! All-gather: the pipelined ring for large outputs, Bruck for small ones.

use crate::fabric::Signed;
use std::ops::Range;
use std::sync::Arc;
use zccl_runtime::label::OpLabel;

use super::ring_pipe::{RecvAhead, piece_elems, pieces, ring_all_gather_pipe};
use super::{OP_AG, step_tag, wait_all};
use crate::dtype::{Elem, as_bytes, from_bytes, to_bytes};
use crate::error::{Error, Result};
use crate::fabric::{Fabric, tag};
use crate::nonblocking::{OpHandle, start};
use crate::schedule::algo::{Algo, choice_from_env, choose};
use crate::schedule::{bruck, ring};

/// Concatenates every rank's `input` in rank order; all inputs must have the
/// same length. Ring for large outputs, Bruck for small ones (by the total
/// output size and `ZCCL_ALGO`).
///
/// ```
/// use zccl_primitives::{collectives::all_gather, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| all_gather(f, 0, &[f.rank() as u8; 2]).unwrap());
/// assert!(out.iter().all(|v| v == &[0, 0, 1, 1, 2, 2]));
/// ```
pub fn all_gather<T: Elem, F: Fabric + ?Sized>(f: &F, ch: u32, input: &[T]) -> Result<Vec<T>> {
    let algo = choose(
        choice_from_env()?,
        std::mem::size_of_val(input) * f.size(),
        f.size(),
    );
    all_gather_with(f, ch, input, algo)
}

/// [`all_gather`] with an explicit algorithm.
///
/// ```
/// use zccl_primitives::{collectives::all_gather_with, schedule::algo::Algo, sim::run_ranks, Fabric};
/// for algo in [Algo::Ring, Algo::Tree] {
///     let out = run_ranks(5, move |f| all_gather_with(f, 0, &[f.rank() as i32], algo).unwrap());
///     assert!(out.iter().all(|v| v == &[0, 1, 2, 3, 4]));
/// }
/// ```
pub fn all_gather_with<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    input: &[T],
    algo: Algo,
) -> Result<Vec<T>> {
    let mut out = vec![T::default(); f.size() * input.len()];
    all_gather_into_with(f, ch, input, &mut out, algo)?;
    Ok(out)
}

/// [`all_gather`] into a caller-owned `output` of `size() * input.len()`
/// elements (NCCL's `recvbuff`): nothing is allocated for the result.
///
/// ```
/// use zccl_primitives::{collectives::all_gather_into, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| {
///     let mut out = [0u8; 6];
///     all_gather_into(f, 0, &[f.rank() as u8; 2], &mut out).unwrap();
///     out
/// });
/// assert!(out.iter().all(|v| v == &[0, 0, 1, 1, 2, 2]));
/// ```
pub fn all_gather_into<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    input: &[T],
    output: &mut [T],
) -> Result<()> {
    let algo = choose(
        choice_from_env()?,
        std::mem::size_of_val(input) * f.size(),
        f.size(),
    );
    all_gather_into_with(f, ch, input, output, algo)
}

fn all_gather_into_with<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    input: &[T],
    out: &mut [T],
    algo: Algo,
) -> Result<()> {
    let f = &Signed::new::<T>(f, OpLabel::ALL_GATHER);
    let (r, n, m) = (f.rank(), f.size(), input.len());
    if out.len() != n * m {
        return Err(Error::InvalidArgument(format!(
            "all_gather_into: output has {} elements, {n} ranks x {m} need {}",
            out.len(),
            n * m
        )));
    }
    if n == 1 {
        // No message to send: the fabric's state is the only failure.
        f.ensure_live()?;
        zccl_transports::copy::copy_slice(out, input);
        return Ok(());
    }
    match algo {
        Algo::Ring | Algo::Halving => {
            let chunks: Vec<_> = (0..n).map(|j| j * m..(j + 1) * m).collect();
            ring_all_gather_chunks(f, ch, out, &chunks, OP_AG, input)?;
        }
        Algo::Tree => {
            let mut rot: Vec<T> = Vec::with_capacity(n * m);
            zccl_transports::copy::extend(&mut rot, input);
            // Sends own their bytes: waited once, at the end (a step need
            // not wait for the previous one's acknowledgement).
            let mut sends = Vec::new();
            for (k, st) in bruck::steps(r, n).into_iter().enumerate() {
                let t = tag(OP_AG, k as u16, 1);
                sends.push(f.isend(st.send_to, ch, t, to_bytes(&rot[..st.blocks * m]))?);
                let got = f
                    .irecv(
                        st.recv_from,
                        ch,
                        t,
                        st.blocks * m * std::mem::size_of::<T>(),
                    )?
                    .wait()?;
                zccl_transports::copy::extend(&mut rot, &from_bytes::<T>(&got));
            }
            wait_all(sends)?;
            for i in 0..n {
                let j = (r + i) % n;
                zccl_transports::copy::copy_slice(
                    &mut out[j * m..(j + 1) * m],
                    &rot[i * m..(i + 1) * m],
                );
            }
        }
    }
    Ok(())
}

/// The ring all-gather of `chunks` of `out`, this rank's own chunk from
/// `own`: lent to the first step's sends, and copied into `out` while the
/// peers read it.
fn ring_all_gather_chunks<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    out: &mut [T],
    chunks: &[Range<usize>],
    opcode: u8,
    own: &[T],
) -> Result<()> {
    let (r, n) = (f.rank(), f.size());
    let per = piece_elems::<T>();
    let steps = ring::all_gather_steps(r, n);
    let Some(first) = steps.first() else {
        zccl_transports::copy::copy_slice(&mut out[chunks[r].clone()], own);
        return Ok(());
    };
    let mut rx = RecvAhead::new(f, ch, first.recv_from);
    let base = out.as_mut_ptr();
    for st in &steps {
        // SAFETY: the received chunks lie in `out` and are touched only
        // once their receive returned; `rx` is dropped before `out` is
        // released.
        unsafe {
            rx.plan_step_into::<T>(opcode, st.step, chunks[st.recv_chunk].clone(), per, base)
        };
    }
    rx.post_all()?;
    let mut sends = Vec::new();
    debug_assert_eq!(first.send_chunk, r, "step 0 sends the own chunk");
    let mine = chunks[r].clone();
    for (k, p) in pieces(0..mine.len(), per) {
        let t = step_tag(opcode, 0) | k as u64;
        // SAFETY: `sends` are waited (or dropped, which waits) before `own`
        // is released.
        sends.push(unsafe { f.isend_lent(first.send_to, ch, t, as_bytes(&own[p])) }?);
    }
    // This rank's chunk goes into place while the peer reads it: the copy
    // no longer holds the first sends back (2 ranks, 1 MiB: each rank
    // copied its 512 KiB before its peer could start reading them).
    zccl_transports::copy::copy_slice(&mut out[mine], own);
    ring_all_gather_pipe(f, ch, out, chunks, opcode, per, &mut rx, &mut sends)?;
    wait_all(sends)
}

/// Non-blocking [`all_gather`].
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{collectives::iall_gather, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| iall_gather(Arc::new(f.clone()), 0, vec![f.rank() as u8]).wait().unwrap());
/// assert!(out.iter().all(|v| v == &[0, 1, 2]));
/// ```
pub fn iall_gather<T: Elem, F: Fabric + ?Sized + 'static>(
    f: Arc<F>,
    ch: u32,
    input: Vec<T>,
) -> OpHandle<Vec<T>> {
    start(f, "all_gather", move |f| all_gather(f, ch, &input))
}

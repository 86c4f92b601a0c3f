//! Broadcast: binomial tree for small buffers, pipelined chain of
//! [`CHAIN_SEGMENT_BYTES`] segments for large ones; with more than 2 ranks
//! every rank checks the root (one all-reduce for small buffers, which
//! carries the data too; a 16-byte one before the tree or chain above).

use crate::fabric::Signed;
use std::sync::Arc;
use zccl_runtime::label::OpLabel;

use super::OP_BCAST;
use crate::dtype::Elem;
use crate::error::Result;
use crate::fabric::{Fabric, check_rank, piece_index, tag};
use crate::nonblocking::{OpHandle, start};
use crate::schedule::algo::{Algo, choice_from_env, choose};
use crate::schedule::tree;

/// Bytes per broadcast chain segment.
///
/// ```
/// use zccl_primitives::collectives::{broadcast_with, CHAIN_SEGMENT_BYTES};
/// use zccl_primitives::schedule::algo::Algo;
/// use zccl_primitives::sim::{try_run_ranks, SimConfig};
/// use zccl_primitives::Fabric;
/// // A chain broadcast of 2.5 segments from rank 1 to rank 0: three messages.
/// let len = CHAIN_SEGMENT_BYTES * 5 / 2;
/// let run = try_run_ranks(SimConfig::default(), 2, move |f| {
///     let mut v = vec![f.rank() as u8; len];
///     broadcast_with(f, 0, &mut v, 1, Algo::Ring).unwrap();
///     v
/// })
/// .unwrap();
/// assert!(run.results.iter().all(|v| v.iter().all(|&b| b == 1)));
/// let lens: Vec<usize> = run.log.iter().map(|m| m.len).collect();
/// assert_eq!(lens, [CHAIN_SEGMENT_BYTES, CHAIN_SEGMENT_BYTES, CHAIN_SEGMENT_BYTES / 2]);
/// ```
pub const CHAIN_SEGMENT_BYTES: usize = 256 * 1024;

/// Copies `root`'s `buf` into every rank's `buf` (all lengths equal).
/// Binomial tree for small buffers, pipelined chain of
/// [`CHAIN_SEGMENT_BYTES`] segments for large ones.
///
/// ```
/// use zccl_primitives::{collectives::broadcast, sim::run_ranks, Fabric};
/// let out = run_ranks(4, |f| {
///     let mut v = if f.rank() == 2 { vec![7u8, 8] } else { vec![0, 0] };
///     broadcast(f, 0, &mut v, 2).unwrap();
///     v
/// });
/// assert!(out.iter().all(|v| v == &[7, 8]));
/// ```
pub fn broadcast<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    buf: &mut [T],
    root: usize,
) -> Result<()> {
    let algo = choose(choice_from_env()?, std::mem::size_of_val(buf), f.size());
    broadcast_with(f, ch, buf, root, algo)
}

/// [`broadcast`] with an explicit algorithm.
///
/// ```
/// use zccl_primitives::{collectives::broadcast_with, schedule::algo::Algo, sim::run_ranks, Fabric};
/// for algo in [Algo::Ring, Algo::Tree] {
///     let out = run_ranks(3, move |f| {
///         let mut v = vec![f.rank() as u8; 4];
///         broadcast_with(f, 0, &mut v, 1, algo).unwrap();
///         v
///     });
///     assert!(out.iter().all(|v| v == &[1; 4]));
/// }
/// ```
pub fn broadcast_with<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    buf: &mut [T],
    root: usize,
    algo: Algo,
) -> Result<()> {
    check_rank(f, root, "broadcast root")?;
    let f = &Signed::new::<T>(f, OpLabel::broadcast_root(root));
    let (r, n) = (f.rank(), f.size());
    if n == 1 {
        return f.ensure_live();
    }
    if n > 2 {
        if algo == Algo::Tree && std::mem::size_of_val(buf) <= SMALL_BCAST_BYTES {
            return small_broadcast(f, ch, buf, root);
        }
        agree_on_root(f, ch, root)?;
    }
    match algo {
        Algo::Tree => {
            let node = tree::binomial(r, root, n);
            let t = tag(OP_BCAST, 0, root as u32);
            let bytes = crate::dtype::as_bytes_mut(buf);
            // Received straight into `buf` and sent on from it, lent (no
            // message buffers in between). SAFETY: `buf` is borrowed
            // mutably for the whole call; the receive is waited before the
            // sends read it, and every send is waited (or dropped, which
            // waits for its release) before this returns.
            if let Some(p) = node.parent {
                unsafe { f.irecv_into(p, ch, t, bytes) }?.wait()?;
            }
            let bytes: &[u8] = bytes;
            let sends: Vec<_> = node
                .children
                .iter()
                .map(|&c| unsafe { f.isend_lent(c, ch, t, bytes) })
                .collect::<Result<_>>()?;
            for s in sends {
                s.wait()?;
            }
        }
        Algo::Ring | Algo::Halving => chain(f, ch, crate::dtype::as_bytes_mut(buf), root)?,
    }
    Ok(())
}

/// The pipelined chain: `root` sends `bytes` down the chain in
/// [`CHAIN_SEGMENT_BYTES`] segments; every other rank receives each segment
/// straight into its place in `bytes` and passes it on from there (a lent
/// send: the transport copies it, or the next rank does, without a buffer of
/// its own in between). Against copying each segment into a message and
/// each received one out of a buffer of its own (medians of 7 interleaved
/// runs on 2 vCPUs): 2 ranks 1 MiB 142 → 72 µs, 64 MiB 34.9 → 21.4 ms;
/// 4 ranks 1 MiB 830 → 476 µs, 64 MiB 94.1 → 28.1 ms.
fn chain<F: Fabric + ?Sized>(f: &F, ch: u32, bytes: &mut [u8], root: usize) -> Result<()> {
    let (prev, next) = tree::chain(f.rank(), root, f.size());
    let segs: Vec<_> = (0..bytes.len().div_ceil(CHAIN_SEGMENT_BYTES).max(1))
        .map(|i| i * CHAIN_SEGMENT_BYTES..((i + 1) * CHAIN_SEGMENT_BYTES).min(bytes.len()))
        .collect();
    let last = segs.len() - 1;
    let t = |i: usize| tag(OP_BCAST, 1, piece_index(i, i < last));
    let base = bytes.as_mut_ptr();
    // SAFETY (for every `unsafe` below): the segments are disjoint ranges
    // of `bytes`, which this call borrows mutably throughout. A segment is
    // written only by its receive and read only by its send, which is
    // issued after that receive was waited; every handle is waited (or
    // dropped on an error, which waits out a copy in progress and takes
    // the memory back) before this returns.
    let seg_mut = |s: &std::ops::Range<usize>| unsafe {
        std::slice::from_raw_parts_mut(base.add(s.start), s.len())
    };
    let recvs = match prev {
        Some(p) => segs
            .iter()
            .enumerate()
            .map(|(i, s)| unsafe { f.irecv_into(p, ch, t(i), seg_mut(s)) }.map(Some))
            .collect::<Result<Vec<_>>>()?,
        None => segs.iter().map(|_| None).collect(),
    };
    let mut sends = Vec::new();
    for ((i, s), rv) in segs.iter().enumerate().zip(recvs) {
        if let Some(rv) = rv {
            rv.wait()?;
        }
        if let Some(nx) = next {
            let seg: &[u8] = seg_mut(s);
            sends.push(unsafe { f.isend_lent(nx, ch, t(i), seg) }?);
        }
    }
    for s in sends {
        s.wait()?;
    }
    Ok(())
}

/// Fails on every rank unless every rank passed the same `root`.
///
/// A tree or chain broadcast cannot find a disagreement on the root by
/// itself: a rank whose parent agrees with it completes with that root's
/// data, and a rank that names a root nobody else does may wait for a
/// parent that never sends. So a broadcast of more than 2 ranks that is not
/// a [`small_broadcast`] first all-reduces (max) `[root, -root]` as `i64`,
/// 16 bytes, one all-reduce's latency, whose result tells every rank the
/// smallest and the largest root passed. Its messages carry the broadcast's label, so roots that
/// differ modulo 11 already fail as an operation mismatch there (reported to
/// every rank); the comparison catches the rest. With 2 ranks the two
/// broadcasts' first messages cross, which the runtime reports by itself.
fn agree_on_root<F: Fabric + ?Sized>(f: &F, ch: u32, root: usize) -> Result<()> {
    let mut v = [root as i64, -(root as i64)];
    super::all_reduce(f, ch, &mut v, crate::reduce::ReduceOp::Max)?;
    let (min, max) = ((-v[1]) as usize, v[0] as usize);
    if min != max {
        return Err(crate::error::Error::RootMismatch {
            rank: f.rank(),
            channel: ch,
            mine: root,
            others: format!("the ranks passed roots from {min} to {max}"),
        });
    }
    Ok(())
}

/// Tree broadcasts of at most this many bytes (with more than 2 ranks) run
/// as one all-reduce with the root check folded in ([`small_broadcast`]).
const SMALL_BCAST_BYTES: usize = 64 << 10;

/// A small broadcast of more than 2 ranks as one all-reduce, so that the
/// root check costs no round of its own: every rank contributes `buf`'s
/// bytes if it is the root, zeros otherwise, and a byte-wise max leaves the
/// root's bytes exactly (whatever they encode: NaNs, negative zeros).
/// Behind them go the 8 bytes of `root` and the 8 of `!root`: per byte, the
/// maximum of the one plus the maximum of the other is 255 when every rank
/// passed the same root and more otherwise, which every rank sees alike.
/// Like [`agree_on_root`]'s, the messages carry the broadcast's label.
fn small_broadcast<T: Elem, F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    buf: &mut [T],
    root: usize,
) -> Result<()> {
    let len = std::mem::size_of_val(buf);
    let mut v = vec![0u8; len + 16];
    if f.rank() == root {
        zccl_transports::copy::copy_slice(&mut v[..len], crate::dtype::as_bytes(buf));
    }
    v[len..len + 8].copy_from_slice(&(root as u64).to_le_bytes());
    v[len + 8..].copy_from_slice(&(!(root as u64)).to_le_bytes());
    super::all_reduce_with(f, ch, &mut v, crate::reduce::ReduceOp::Max, Algo::Tree)?;
    let (roots, nots) = v[len..].split_at(8);
    if roots
        .iter()
        .zip(nots)
        .any(|(&a, &b)| u16::from(a) + u16::from(b) != 255)
    {
        return Err(crate::error::Error::RootMismatch {
            rank: f.rank(),
            channel: ch,
            mine: root,
            others: "another rank passed a different root".into(),
        });
    }
    zccl_transports::copy::copy_slice(crate::dtype::as_bytes_mut(buf), &v[..len]);
    Ok(())
}

/// Non-blocking [`broadcast`]: the handle returns `root`'s buffer.
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{collectives::ibroadcast, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| {
///     let v = if f.rank() == 0 { vec![5u8, 6] } else { vec![0, 0] };
///     ibroadcast(Arc::new(f.clone()), 0, v, 0).wait().unwrap()
/// });
/// assert!(out.iter().all(|v| v == &[5, 6]));
/// ```
pub fn ibroadcast<T: Elem, F: Fabric + ?Sized + 'static>(
    f: Arc<F>,
    ch: u32,
    mut buf: Vec<T>,
    root: usize,
) -> OpHandle<Vec<T>> {
    start(f, "broadcast", move |f| {
        broadcast(f, ch, &mut buf, root)?;
        Ok(buf)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::sim::run_ranks;

    #[test]
    fn roots_that_share_a_label_still_fail_on_every_rank() {
        // Roots 0 and 11 carry the same label (root mod 11): the root
        // check's values tell them apart, on every rank, before any data.
        let far = zccl_runtime::label::ROOT_LABELS as usize;
        for algo in [Algo::Tree, Algo::Ring] {
            let out = run_ranks(far + 1, move |f| {
                let root = if f.rank() == 5 { far } else { 0 };
                let mut v = vec![f.rank() as u8; 4];
                broadcast_with(f, 0, &mut v, root, algo).map(|()| v)
            });
            for (r, o) in out.iter().enumerate() {
                match o {
                    Err(Error::RootMismatch {
                        rank, mine, others, ..
                    }) => {
                        assert_eq!((*rank, *mine), (r, if r == 5 { far } else { 0 }));
                        let want = match algo {
                            Algo::Tree => "another rank passed a different root".to_string(),
                            Algo::Ring | Algo::Halving => {
                                format!("the ranks passed roots from 0 to {far}")
                            }
                        };
                        assert_eq!(others, &want, "rank {r}");
                    }
                    other => panic!("rank {r}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn agreeing_roots_pass_the_check() {
        for n in [3, 4, 13] {
            let out = run_ranks(n, move |f| {
                let mut v = vec![f.rank() as u16 as u8; 3];
                broadcast(f, 0, &mut v, n - 1).map(|()| v)
            });
            assert!(
                out.iter()
                    .all(|v| v.as_deref() == Ok(&[n as u8 - 1; 3][..]))
            );
        }
    }

    #[test]
    fn small_broadcasts_deliver_the_roots_bits_exactly() {
        // NaNs with payloads, negative zero, the largest values: a
        // byte-wise max against zeros keeps every bit; sizes up to the
        // bound and past it (the check, then the tree).
        let special = [f32::from_bits(0x7fc0_1234), -0.0, f32::MAX, f32::MIN, 1.5];
        for len in [
            1usize,
            5,
            1000,
            SMALL_BCAST_BYTES / 4,
            SMALL_BCAST_BYTES / 4 + 1,
        ] {
            for (n, root) in [(3, 2), (4, 0), (5, 3)] {
                let out = run_ranks(n, move |f| {
                    let mut v: Vec<f32> = if f.rank() == root {
                        (0..len).map(|i| special[i % special.len()]).collect()
                    } else {
                        vec![7.0; len]
                    };
                    broadcast(f, 0, &mut v, root).unwrap();
                    v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
                });
                let want: Vec<u32> = (0..len)
                    .map(|i| special[i % special.len()].to_bits())
                    .collect();
                assert!(
                    out.iter().all(|v| *v == want),
                    "n={n} root={root} len={len}"
                );
            }
        }
    }
}

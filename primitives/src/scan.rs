//! All-Scan (ZeCO): exclusive (and optionally inclusive) prefix over the
//! ranks, along a pipelined chain ([`crate::schedule::scan`]).
//!
//! * [`all_scan_diag`]: the built-in diagonal-decay combine of gated linear
//!   attention. Rank `p` holds a local state `S_p` (`rows × cols`, row-major
//!   `f32`; stack heads and batch along rows) and a per-row decay `γ_p`. The
//!   scan element is the pair `(γ_p, S_p)`; the prefix state evolves as
//!   `S_out = γ_p ⊙ S_in + S_p` (row `i` scaled by `γ_p[i]`). Because the
//!   transition is diagonal, rows are independent: the state is cut into `K`
//!   row blocks and rank `p` forwards block `k` as soon as it has combined it,
//!   before block `k+1` arrives. Each element is computed as
//!   `γ[i] * s_in + s_local` in `f32` (a multiply then an add, two roundings,
//!   never fused), whatever `K`, so results are bit-identical for every `K`.
//! * [`all_scan_with`]: any associative combine given as a closure over flat
//!   `f32` elements (e.g. `(M, S)` pairs of full-matrix transitions, where row
//!   blocking is not legal). The whole element moves in one message.
//!
//! Forward: rank 0 receives the identity (zero state) and rank `p` the
//! combine of ranks `0..p` in rank order. Reverse: rank `n-1` receives the
//! identity and rank `p` the combine of ranks `n-1, …, p+1` (the backward
//! recurrence `G(p) = γ_p ⊙ G(p+1) + direct(p)`).
//!
//! # Overlap contract
//!
//! The calls block until this rank's part of the chain is done (it received
//! its prefix and forwarded its inclusive state). To overlap with compute
//! that does not need the prefix (ZeCO's intra-chunk attention), run the call
//! on another thread, e.g. `std::thread::scope`; every fabric is `Sync`.

use crate::dtype::{from_bytes, to_bytes};
use crate::error::{Result, invalid};
use crate::fabric::{Fabric, tag};
use crate::schedule::scan::{ScanDirection, chain_role, row_blocks};

const OP_SCAN_DIAG: u8 = 0x40;
const OP_SCAN_FN: u8 = 0x41;

/// What a rank gets from an All-Scan.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanOutput {
    /// Combine of the ranks before this one in scan order (identity for the first).
    pub exclusive: Vec<f32>,
    /// Combine including this rank, if requested.
    pub inclusive: Option<Vec<f32>>,
}

/// One rank's element of the diagonal-decay scan.
#[derive(Debug, Clone, Copy)]
pub struct DiagState<'a> {
    /// Local state, `rows × cols`, row-major.
    pub state: &'a [f32],
    /// Per-row decay (cumulative over the rank's chunk), `rows` values.
    pub decay: &'a [f32],
    /// Columns of the state (`d_v`).
    pub cols: usize,
}

/// All-Scan with the diagonal-decay (GLA) combine, pipelined over `blocks`
/// row blocks (`1..=rows`).
///
/// ```
/// use zccl_primitives::{scan::{all_scan_diag, DiagState}, schedule::scan::ScanDirection, sim::run_ranks, Fabric};
/// // 1x1 states: rank p holds s = p + 1 and decay 0.5.
/// let out = run_ranks(3, |f| {
///     let s = [f.rank() as f32 + 1.0];
///     all_scan_diag(f, 0, DiagState { state: &s, decay: &[0.5], cols: 1 }, ScanDirection::Forward, 1, true).unwrap()
/// });
/// assert_eq!(out[0].exclusive, vec![0.0]);
/// assert_eq!(out[1].exclusive, vec![1.0]);
/// assert_eq!(out[2].exclusive, vec![0.5 * 1.0 + 2.0]);
/// assert_eq!(out[2].inclusive, Some(vec![0.5 * 2.5 + 3.0]));
/// ```
pub fn all_scan_diag<F: Fabric + ?Sized>(
    f: &F,
    ch: u32,
    local: DiagState<'_>,
    dir: ScanDirection,
    blocks: usize,
    want_inclusive: bool,
) -> Result<ScanOutput> {
    let rows = local.decay.len();
    let cols = local.cols;
    if local.state.len() != rows * cols {
        return Err(invalid(format!(
            "all_scan_diag: state has {} values, expected {rows} rows x {cols} cols",
            local.state.len()
        )));
    }
    let blk = row_blocks(rows, blocks)?;
    let role = chain_role(f.rank(), f.size(), dir);
    let mut exclusive = vec![0.0f32; rows * cols];
    let need_inclusive = want_inclusive || role.send_to.is_some();
    let mut inclusive = if need_inclusive {
        vec![0.0f32; rows * cols]
    } else {
        Vec::new()
    };
    // Post every block's receive up front (FIFO matching keeps them in order).
    let recvs = match role.recv_from {
        Some(p) => blk
            .iter()
            .enumerate()
            .map(|(k, b)| {
                f.irecv(p, ch, tag(OP_SCAN_DIAG, 0, k as u32), b.len() * cols * 4)
                    .map(Some)
            })
            .collect::<Result<Vec<_>>>()?,
        None => blk.iter().map(|_| None).collect(),
    };
    let mut sends = Vec::with_capacity(blk.len());
    for ((k, b), rv) in blk.iter().enumerate().zip(recvs) {
        let range = b.start * cols..b.end * cols;
        if let Some(rv) = rv {
            let got: Vec<f32> = from_bytes(&rv.wait()?);
            exclusive[range.clone()].copy_from_slice(&got);
        }
        if need_inclusive {
            if role.recv_from.is_none() {
                inclusive[range.clone()].copy_from_slice(&local.state[range.clone()]);
            } else {
                for i in b.clone() {
                    let g = local.decay[i];
                    let row = i * cols..(i + 1) * cols;
                    for ((o, &x), &s) in inclusive[row.clone()]
                        .iter_mut()
                        .zip(&exclusive[row.clone()])
                        .zip(&local.state[row])
                    {
                        let scaled = g * x;
                        *o = scaled + s;
                    }
                }
            }
        }
        if let Some(nx) = role.send_to {
            sends.push(f.isend(
                nx,
                ch,
                tag(OP_SCAN_DIAG, 0, k as u32),
                to_bytes(&inclusive[range]),
            )?);
        }
    }
    for s in sends {
        s.wait()?;
    }
    Ok(ScanOutput {
        exclusive,
        inclusive: want_inclusive.then_some(inclusive),
    })
}

/// All-Scan with a caller-supplied associative combine over flat `f32`
/// elements of equal length on every rank. `combine(earlier, later)` returns
/// the combine of the two (earlier in scan order on the left); `identity` is
/// what the first rank of the chain receives. Not blocked: the element moves
/// whole. The first rank's inclusive value is its local element as given.
///
/// ```
/// use zccl_primitives::{scan::all_scan_with, schedule::scan::ScanDirection, sim::run_ranks, Fabric};
/// // 2x2 matrix products M_{p-1} ... M_0 (a non-commutative combine).
/// fn mul(a: &[f32], b: &[f32]) -> Vec<f32> { // b · a
///     vec![b[0]*a[0] + b[1]*a[2], b[0]*a[1] + b[1]*a[3], b[2]*a[0] + b[3]*a[2], b[2]*a[1] + b[3]*a[3]]
/// }
/// let out = run_ranks(3, |f| {
///     let m = [1.0, f.rank() as f32, 0.0, 1.0]; // shear by rank
///     all_scan_with(f, 0, &m, ScanDirection::Forward, &[1.0, 0.0, 0.0, 1.0], mul, false).unwrap()
/// });
/// assert_eq!(out[2].exclusive, vec![1.0, 1.0, 0.0, 1.0]);
/// ```
pub fn all_scan_with<F, C>(
    f: &F,
    ch: u32,
    local: &[f32],
    dir: ScanDirection,
    identity: &[f32],
    mut combine: C,
    want_inclusive: bool,
) -> Result<ScanOutput>
where
    F: Fabric + ?Sized,
    C: FnMut(&[f32], &[f32]) -> Vec<f32>,
{
    if identity.len() != local.len() {
        return Err(invalid(format!(
            "all_scan_with: identity has {} values, local element {}",
            identity.len(),
            local.len()
        )));
    }
    let role = chain_role(f.rank(), f.size(), dir);
    let t = tag(OP_SCAN_FN, 0, 0);
    let exclusive = match role.recv_from {
        Some(p) => from_bytes::<f32>(&f.irecv(p, ch, t, local.len() * 4)?.wait()?),
        None => identity.to_vec(),
    };
    let inclusive = if want_inclusive || role.send_to.is_some() {
        let inc = if role.recv_from.is_none() {
            local.to_vec()
        } else {
            combine(&exclusive, local)
        };
        if inc.len() != local.len() {
            return Err(invalid(format!(
                "all_scan_with: combine returned {} values, expected {}",
                inc.len(),
                local.len()
            )));
        }
        Some(inc)
    } else {
        None
    };
    if let (Some(nx), Some(inc)) = (role.send_to, &inclusive) {
        f.isend(nx, ch, t, to_bytes(inc))?.wait()?;
    }
    Ok(ScanOutput {
        exclusive,
        inclusive: if want_inclusive { inclusive } else { None },
    })
}

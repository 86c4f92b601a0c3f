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
//! * [`all_scan_diag_blocks`] hands each row block of the prefix to a
//!   callback on the caller's thread as soon as it is complete and forwarded,
//!   while block `k+1` is still moving: the inter-chunk compute of block `k`
//!   overlaps the transfer of block `k+1`.
//! * [`iall_scan_diag`] / [`iall_scan_with`] run the whole scan on a progress
//!   thread (see [`crate::nonblocking`]) so the caller can do the compute
//!   that does not need the prefix (ZeCO's intra-chunk attention) meanwhile.
//! * The blocking [`all_scan_diag`] / [`all_scan_with`] return once this
//!   rank received its prefix and forwarded its inclusive state (in reverse,
//!   also the previous rank's direction check, see [`op_label`]).
//!
//! A scan uses one channel; keep it free of other traffic until it returns.

use crate::fabric::Signed;
use std::sync::Arc;
use zccl_runtime::DType;
use zccl_runtime::label::OpLabel;

use crate::dtype::{from_bytes, to_bytes};
use crate::error::{Result, invalid};
use crate::fabric::{Fabric, RecvHandle, SendHandle, tag};
use crate::nonblocking::{OpHandle, start};
use crate::schedule::scan::{ScanDirection, chain_role, row_blocks};

const OP_SCAN_DIAG: u8 = 0x40;
const OP_SCAN_FN: u8 = 0x41;

/// The operation label a scan in direction `dir` stamps on its messages:
/// [`OpLabel::ALL_SCAN`] forward, [`OpLabel::ALL_SCAN_REVERSE`] in reverse,
/// which a reverse scan's direction check compares with the next rank's
/// (see docs/reliability.md, "The scan's direction").
/// Bindings that label the scan themselves (`Labelled::op`) use this too.
///
/// ```
/// use zccl_primitives::{scan::op_label, schedule::scan::ScanDirection};
/// use zccl_runtime::label::OpLabel;
/// assert_eq!(op_label(ScanDirection::Forward), OpLabel::ALL_SCAN);
/// assert_eq!(op_label(ScanDirection::Reverse).to_string(), "all_scan(reverse)");
/// ```
pub const fn op_label(dir: ScanDirection) -> OpLabel {
    match dir {
        ScanDirection::Forward => OpLabel::ALL_SCAN,
        ScanDirection::Reverse => OpLabel::ALL_SCAN_REVERSE,
    }
}

/// The tag step of the direction check's messages (the chain's blocks use
/// step 0).
const CHECK_STEP: u16 = 1;

/// The check that the ranks scan in one direction. Ranks that disagree on
/// it otherwise fail only by their timeout: where a rank scanning forward
/// borders one scanning in reverse, either both send to each other and
/// neither receives, or each waits for the other to send first, and the
/// chain behind that pair waits too (4 ranks, one in reverse: every rank
/// waited out `ZCCL_TIMEOUT`, then blamed a stalled rank).
///
/// A forward scan sends nothing more: its blocks go to the next rank
/// under [`OpLabel::ALL_SCAN`]. A reverse scan, whose blocks go the other
/// way, sends the next rank an empty message under
/// [`OpLabel::ALL_SCAN_REVERSE`] as it enters ([`DirectionCheck::start`]),
/// and receives the previous rank's once its own receives are posted
/// ([`DirectionCheck::expect`]). So every message from a rank to the next
/// carries that rank's direction, and every rank but the first receives
/// one: where two neighbours differ, a forward rank's receive meets a
/// reverse rank's empty message at once, or a reverse rank's check meets
/// a forward rank's block once the forward chain reaches it (without a
/// reverse-then-forward pair, the directions split into a forward chain
/// from rank 0 and a reverse one from the last rank, which both flow).
/// Either is an operation mismatch, reported to every rank of the channel
/// (docs/reliability.md). Cost: none forward; one empty message per rank in
/// reverse, whose receive is posted after the blocks' (on a channel that
/// completes in issue order, a rank's blocks never wait for it) and waited
/// for last.
struct DirectionCheck {
    send: Option<SendHandle>,
    recv: Option<RecvHandle>,
    op: u8,
    dir: ScanDirection,
}

impl DirectionCheck {
    /// A reverse scan's empty message to the next rank, posted before any
    /// of the chain's operations.
    fn start<F: Fabric + ?Sized>(f: &F, ch: u32, op: u8, dir: ScanDirection) -> Result<Self> {
        let send = if dir == ScanDirection::Reverse && f.rank() + 1 < f.size() {
            Some(f.isend(f.rank() + 1, ch, tag(op, CHECK_STEP, 0), Vec::new())?)
        } else {
            None
        };
        Ok(Self {
            send,
            recv: None,
            op,
            dir,
        })
    }

    /// A reverse scan's receive of the previous rank's message, posted
    /// after the chain's own receives.
    fn expect<F: Fabric + ?Sized>(&mut self, f: &F, ch: u32) -> Result<()> {
        if self.dir == ScanDirection::Reverse && f.rank() > 0 {
            self.recv = Some(f.irecv(f.rank() - 1, ch, tag(self.op, CHECK_STEP, 0), 0)?);
        }
        Ok(())
    }

    /// Waits for both; `scan`'s error, if any, comes first.
    fn finish<T>(self, scan: Result<T>) -> Result<T> {
        let send = self.send.map_or(Ok(()), SendHandle::wait);
        let recv = self.recv.map_or(Ok(()), |r| r.wait().map(drop));
        let out = scan?;
        send?;
        recv?;
        Ok(out)
    }
}

/// What a rank gets from an All-Scan.
///
/// ```
/// use zccl_primitives::{scan::all_scan_with, schedule::scan::ScanDirection, sim::run_ranks, Fabric};
/// let add = |a: &[f32], b: &[f32]| vec![a[0] + b[0]];
/// let out = run_ranks(3, move |f| all_scan_with(f, 0, &[1.0], ScanDirection::Forward, &[0.0], add, true).unwrap());
/// assert_eq!(out[2].exclusive, vec![2.0]);
/// assert_eq!(out[2].inclusive, Some(vec![3.0]));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ScanOutput {
    /// Combine of the ranks before this one in scan order (identity for the first).
    pub exclusive: Vec<f32>,
    /// Combine including this rank, if requested.
    pub inclusive: Option<Vec<f32>>,
}

/// One rank's element of the diagonal-decay scan.
///
/// ```
/// use zccl_primitives::scan::DiagState;
/// let (state, decay) = ([1.0f32, 2.0, 3.0, 4.0], [0.9f32, 0.8]); // 2 rows x 2 cols
/// let d = DiagState { state: &state, decay: &decay, cols: 2 };
/// assert_eq!(d.state.len(), d.decay.len() * d.cols);
/// ```
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
    let f = &Signed::bytes(f, op_label(dir), DType::F32);
    all_scan_diag_blocks(f, ch, local, dir, blocks, want_inclusive, |_| Ok(()))
}

/// What [`all_scan_diag_blocks`] hands its callback: one row block of this
/// rank's prefix, as soon as it is known.
///
/// ```
/// use zccl_primitives::{scan::{all_scan_diag_blocks, DiagState}, schedule::scan::ScanDirection, sim::run_ranks};
/// run_ranks(2, |f| {
///     all_scan_diag_blocks(f, 0, DiagState { state: &[1.0; 4], decay: &[1.0; 2], cols: 2 },
///         ScanDirection::Forward, 2, true, |b| {
///             assert_eq!(b.exclusive.len(), b.rows.len() * 2);
///             assert_eq!(b.inclusive.unwrap().len(), b.exclusive.len());
///             Ok(())
///         }).unwrap();
/// });
/// ```
#[derive(Debug, Clone)]
pub struct ScanBlock<'a> {
    /// Block index `k` in `0..blocks` (blocks arrive in this order).
    pub index: usize,
    /// The state rows of this block.
    pub rows: std::ops::Range<usize>,
    /// Rows `rows` of the exclusive prefix (`rows.len() × cols`, row-major).
    pub exclusive: &'a [f32],
    /// Rows `rows` of the inclusive prefix, if requested.
    pub inclusive: Option<&'a [f32]>,
}

/// [`all_scan_diag`] that calls `on_block` for each row block of this rank's
/// prefix as soon as the block is complete, while the next blocks are still
/// moving along the chain.
///
/// Order per block `k`: wait for block `k` of the exclusive prefix (all
/// receives are posted up front), combine it with the local state, post its
/// send to the next rank of the chain, **then** call `on_block` — so the
/// callback's compute neither delays the rest of the chain nor block `k+1`,
/// which is in flight meanwhile. The callback runs on the caller's thread,
/// in block order; an error it returns stops the scan (after waiting the
/// sends already posted) and is returned. Results are bit-identical to
/// [`all_scan_diag`] (which is this function with an empty callback).
///
/// ```
/// use zccl_primitives::{scan::{all_scan_diag_blocks, DiagState}, schedule::scan::ScanDirection, sim::run_ranks, Fabric};
/// // 4x1 states of ones, decay 1: rank p's exclusive prefix is p in every row.
/// let out = run_ranks(3, |f| {
///     let mut seen = Vec::new();
///     let o = all_scan_diag_blocks(f, 0, DiagState { state: &[1.0; 4], decay: &[1.0; 4], cols: 1 },
///         ScanDirection::Forward, 2, false, |b| {
///             seen.push((b.index, b.rows.clone(), b.exclusive.to_vec())); // compute with block k here
///             Ok(())
///         }).unwrap();
///     (o.exclusive, seen)
/// });
/// let p = 2.0;
/// assert_eq!(out[2].0, vec![p; 4]);
/// assert_eq!(out[2].1, vec![(0, 0..2, vec![p, p]), (1, 2..4, vec![p, p])]);
/// ```
pub fn all_scan_diag_blocks<F, C>(
    f: &F,
    ch: u32,
    local: DiagState<'_>,
    dir: ScanDirection,
    blocks: usize,
    want_inclusive: bool,
    on_block: C,
) -> Result<ScanOutput>
where
    F: Fabric + ?Sized,
    C: FnMut(ScanBlock<'_>) -> Result<()>,
{
    let f = &Signed::bytes(f, op_label(dir), DType::F32);
    let rows = local.decay.len();
    let cols = local.cols;
    // (Checked: `rows × cols` that wraps around matched a short state, and
    // the blocks then indexed past it.)
    if rows.checked_mul(cols) != Some(local.state.len()) {
        return Err(invalid(format!(
            "all_scan_diag: state has {} values, expected {rows} rows x {cols} cols",
            local.state.len()
        )));
    }
    let blk = row_blocks(rows, blocks)?;
    if f.size() == 1 {
        // No message to send: the fabric's state is the only failure.
        f.ensure_live()?;
    }
    let mut check = DirectionCheck::start(f, ch, OP_SCAN_DIAG, dir)?;
    let out = chain_diag(f, ch, &local, &blk, want_inclusive, on_block, &mut check);
    check.finish(out)
}

/// The chain of [`all_scan_diag_blocks`], once its arguments are checked,
/// in the direction of `check`.
fn chain_diag<F, C>(
    f: &F,
    ch: u32,
    local: &DiagState<'_>,
    blk: &[std::ops::Range<usize>],
    want_inclusive: bool,
    mut on_block: C,
    check: &mut DirectionCheck,
) -> Result<ScanOutput>
where
    F: Fabric + ?Sized,
    C: FnMut(ScanBlock<'_>) -> Result<()>,
{
    let (rows, cols) = (local.decay.len(), local.cols);
    let role = chain_role(f.rank(), f.size(), check.dir);
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
    check.expect(f, ch)?;
    let mut sends = Vec::with_capacity(blk.len());
    let mut failed = None;
    for ((k, b), rv) in blk.iter().enumerate().zip(recvs) {
        let range = b.start * cols..b.end * cols;
        if let Some(rv) = rv {
            let got: Vec<f32> = from_bytes(&rv.wait()?);
            zccl_transports::copy::copy_slice(&mut exclusive[range.clone()], &got);
        }
        if need_inclusive {
            if role.recv_from.is_none() {
                zccl_transports::copy::copy_slice(
                    &mut inclusive[range.clone()],
                    &local.state[range.clone()],
                );
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
                to_bytes(&inclusive[range.clone()]),
            )?);
        }
        if let Err(e) = on_block(ScanBlock {
            index: k,
            rows: b.clone(),
            exclusive: &exclusive[range.clone()],
            inclusive: want_inclusive.then(|| &inclusive[range]),
        }) {
            failed = Some(e);
            break;
        }
    }
    if let Some(e) = failed {
        // The ranks after this one wait for blocks it will not send: the
        // channel is out of step (Fabric::abandon), and its sends fail.
        f.abandon(ch);
        for s in sends {
            let _ = s.wait();
        }
        return Err(e);
    }
    for s in sends {
        s.wait()?;
    }
    Ok(ScanOutput {
        exclusive,
        inclusive: want_inclusive.then_some(inclusive),
    })
}

/// An owned [`DiagState`], for the non-blocking [`iall_scan_diag`].
///
/// ```
/// use zccl_primitives::scan::OwnedDiagState;
/// let o = OwnedDiagState { state: vec![1.0, 2.0], decay: vec![0.5], cols: 2 };
/// assert_eq!(o.as_state().state, &[1.0, 2.0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedDiagState {
    /// Local state, `rows × cols`, row-major.
    pub state: Vec<f32>,
    /// Per-row decay, `rows` values.
    pub decay: Vec<f32>,
    /// Columns of the state.
    pub cols: usize,
}

impl OwnedDiagState {
    /// Borrows it as a [`DiagState`].
    ///
    /// ```
    /// use zccl_primitives::scan::OwnedDiagState;
    /// let o = OwnedDiagState { state: vec![0.0; 6], decay: vec![1.0; 3], cols: 2 };
    /// assert_eq!(o.as_state().decay.len(), 3);
    /// ```
    pub fn as_state(&self) -> DiagState<'_> {
        DiagState {
            state: &self.state,
            decay: &self.decay,
            cols: self.cols,
        }
    }
}

/// Non-blocking [`all_scan_diag`]: the scan runs on a progress thread while
/// the caller computes what does not need the prefix (ZeCO's intra-chunk
/// attention); see [`crate::nonblocking`].
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{scan::{iall_scan_diag, OwnedDiagState}, schedule::scan::ScanDirection, sim::run_ranks, Fabric};
/// let out = run_ranks(3, |f| {
///     let local = OwnedDiagState { state: vec![f.rank() as f32 + 1.0], decay: vec![0.5], cols: 1 };
///     let h = iall_scan_diag(Arc::new(f.clone()), 0, local, ScanDirection::Reverse, 1, false);
///     // ... intra-chunk compute here ...
///     h.wait().unwrap().exclusive
/// });
/// assert_eq!(out, vec![vec![0.5 * 3.0 + 2.0], vec![3.0], vec![0.0]]);
/// ```
pub fn iall_scan_diag<F: Fabric + ?Sized + 'static>(
    f: Arc<F>,
    ch: u32,
    local: OwnedDiagState,
    dir: ScanDirection,
    blocks: usize,
    want_inclusive: bool,
) -> OpHandle<ScanOutput> {
    start(f, "all_scan_diag", move |f| {
        all_scan_diag(f, ch, local.as_state(), dir, blocks, want_inclusive)
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
    combine: C,
    want_inclusive: bool,
) -> Result<ScanOutput>
where
    F: Fabric + ?Sized,
    C: FnMut(&[f32], &[f32]) -> Vec<f32>,
{
    let f = &Signed::bytes(f, op_label(dir), DType::F32);
    if identity.len() != local.len() {
        return Err(invalid(format!(
            "all_scan_with: identity has {} values, local element {}",
            identity.len(),
            local.len()
        )));
    }
    if f.size() == 1 {
        f.ensure_live()?;
    }
    let mut check = DirectionCheck::start(f, ch, OP_SCAN_FN, dir)?;
    let out = chain_with(f, ch, local, identity, combine, want_inclusive, &mut check);
    check.finish(out)
}

/// The chain of [`all_scan_with`], once its arguments are checked, in the
/// direction of `check`.
fn chain_with<F, C>(
    f: &F,
    ch: u32,
    local: &[f32],
    identity: &[f32],
    mut combine: C,
    want_inclusive: bool,
    check: &mut DirectionCheck,
) -> Result<ScanOutput>
where
    F: Fabric + ?Sized,
    C: FnMut(&[f32], &[f32]) -> Vec<f32>,
{
    let role = chain_role(f.rank(), f.size(), check.dir);
    let t = tag(OP_SCAN_FN, 0, 0);
    let recv = match role.recv_from {
        Some(p) => Some(f.irecv(p, ch, t, local.len() * 4)?),
        None => None,
    };
    check.expect(f, ch)?;
    let exclusive = match recv {
        Some(rv) => from_bytes::<f32>(&rv.wait()?),
        None => zccl_transports::copy::to_vec(identity),
    };
    let inclusive = if want_inclusive || role.send_to.is_some() {
        let inc = if role.recv_from.is_none() {
            zccl_transports::copy::to_vec(local)
        } else {
            combine(&exclusive, local)
        };
        if inc.len() != local.len() {
            // The next rank waits for a prefix this one will not send.
            f.abandon(ch);
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

/// Non-blocking [`all_scan_with`] (owned element and identity; the combine
/// runs on the progress thread, so it must be `Send + 'static`).
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{scan::iall_scan_with, schedule::scan::ScanDirection, sim::run_ranks, Fabric};
/// // Running maximum.
/// let out = run_ranks(3, |f| {
///     let x = vec![[5.0, 1.0, 3.0][f.rank()]];
///     let max = |a: &[f32], b: &[f32]| vec![a[0].max(b[0])];
///     iall_scan_with(Arc::new(f.clone()), 0, x, ScanDirection::Forward, vec![f32::NEG_INFINITY], max, true)
///         .wait().unwrap().inclusive.unwrap()
/// });
/// assert_eq!(out, vec![vec![5.0], vec![5.0], vec![5.0]]);
/// ```
pub fn iall_scan_with<F, C>(
    f: Arc<F>,
    ch: u32,
    local: Vec<f32>,
    dir: ScanDirection,
    identity: Vec<f32>,
    combine: C,
    want_inclusive: bool,
) -> OpHandle<ScanOutput>
where
    F: Fabric + ?Sized + 'static,
    C: FnMut(&[f32], &[f32]) -> Vec<f32> + Send + 'static,
{
    start(f, "all_scan_with", move |f| {
        all_scan_with(f, ch, &local, dir, &identity, combine, want_inclusive)
    })
}

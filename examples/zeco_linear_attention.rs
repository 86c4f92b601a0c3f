//! ZeCO-style sequence-parallel gated linear attention: each rank runs the
//! recurrence over its own chunk from a zero state, one All-Scan hands every
//! rank the state at the start of its chunk, and the outputs are corrected
//! with it.
//!
//! ```sh
//! cargo build --bin zccl --example zeco_linear_attention
//! target/debug/zccl run -n 4 target/debug/examples/zeco_linear_attention
//! ```
//!
//! The model (gated linear attention, per head, a per-key-dimension gate):
//!
//! ```text
//! S_t = diag(a_t) · S_{t-1} + k_t v_tᵀ      (S: DK × DV)
//! o_t = S_tᵀ q_t
//! ```
//!
//! Rank `p` holds chunk `p` (`CHUNK` tokens). Its element of the scan is
//! `(γ_p, S_p)`: the product of the chunk's gates and the chunk's state from
//! zero. The state entering chunk `p` is the exclusive prefix
//! `S_in(p) = γ_{p-1} ⊙ S_in(p-1) + S_{p-1}`, which is exactly what
//! [`all_scan_diag`](zccl::primitives::scan::all_scan_diag) computes (heads
//! stacked along the rows: `rows = H·DK`, `cols = DV`). Then for token `x`
//! of the chunk: `o_x = o_x(intra) + Σ_i q_x[i] · cum_x[i] · S_in[i, :]`,
//! where `cum_x` is the product of the gates up to `x` within the chunk.
//!
//! Two ways to overlap, both checked:
//!
//! * [`iall_scan_diag`]: the whole scan runs on a progress thread while this
//!   rank computes the intra-chunk part (which needs no prefix).
//! * [`all_scan_diag_blocks`]: the scan is pipelined over row blocks, and the
//!   callback adds block `k`'s inter-chunk correction while block `k+1` is
//!   still moving along the chain.
//!
//! (The backward pass runs the same scan with `ScanDirection::Reverse`.)
//! Checks this rank's outputs against the recurrence run over the whole
//! sequence in f64 in one process, and prints
//! `zeco_linear_attention: OK max_err=...` on rank 0 (exits non-zero
//! otherwise).

use std::ops::Range;
use std::process::ExitCode;
use std::sync::Arc;

use zccl::primitives::channels::Channels;
use zccl::primitives::collectives::all_reduce;
use zccl::primitives::reduce::ReduceOp;
use zccl::primitives::scan::{OwnedDiagState, all_scan_diag_blocks, iall_scan_diag};
use zccl::primitives::schedule::scan::ScanDirection;
use zccl::runtime::Communicator;

/// Heads.
const H: usize = 2;
/// Key dimension (the state's rows per head).
const DK: usize = 16;
/// Value dimension (the state's columns).
const DV: usize = 16;
/// Tokens per rank (the sequence is `CHUNK × ranks` long).
const CHUNK: usize = 32;
/// Row blocks of the pipelined scan (`1..=H·DK`).
const BLOCKS: usize = 4;
/// Max |error| of the f32 outputs against the f64 reference.
const TOL: f64 = 1e-4;

/// One sequence: per token `t` and head `h`, `q`, `k`, gate `a` (`DK` values
/// at `(t·H + h)·DK`) and `v` (`DV` values at `(t·H + h)·DV`).
struct Seq {
    q: Vec<f32>,
    k: Vec<f32>,
    a: Vec<f32>,
    v: Vec<f32>,
}

fn main() -> ExitCode {
    // Errors name the rank, the peer and the channel; print them readably.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zeco_linear_attention: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let comm = Communicator::from_env()?;
    let (r, n) = (comm.rank() as usize, comm.size() as usize);
    let t = CHUNK * n;
    let mut rng = Rng(0x2ec0);
    let seq = Seq {
        q: rng.vec(t * H * DK, -1.0, 1.0),
        k: rng.vec(t * H * DK, -1.0, 1.0),
        // Gates close to 1, so that the state of earlier chunks matters.
        a: rng.vec(t * H * DK, 0.97, 0.999),
        v: rng.vec(t * H * DV, -1.0, 1.0),
    };
    let chunk = r * CHUNK..(r + 1) * CHUNK;
    // Channels, the same on every rank: one for the scans (a scan owns its
    // channel until it completes; the two run one after the other), one
    // for the final check. Channel 0 stays free for `comm.send`/`recv`.
    let mut channels = Channels::new();
    let (ch_scan, ch_check) = (channels.next(), channels.next());

    // This rank's element of the scan: (γ_p, S_p).
    let local = chunk_state(&seq, chunk.clone());

    // 1. The whole scan on a progress thread, overlapping the intra-chunk part.
    let pending = iall_scan_diag(
        Arc::new(comm.clone()),
        ch_scan,
        local.clone(),
        ScanDirection::Forward,
        1,
        false,
    );
    let (intra, cum) = intra_chunk(&seq, chunk.clone());
    let prefix = pending.wait()?.exclusive; // S_in(p), [H·DK, DV]
    let mut out_a = intra.clone();
    add_inter(&seq, chunk.clone(), &cum, 0..H * DK, &prefix, &mut out_a);

    // 2. Pipelined by row blocks: correct block k while block k+1 moves.
    let mut out_b = intra;
    all_scan_diag_blocks(
        &comm,
        ch_scan,
        local.as_state(),
        ScanDirection::Forward,
        BLOCKS,
        false,
        |b| {
            add_inter(&seq, chunk.clone(), &cum, b.rows, b.exclusive, &mut out_b);
            Ok(())
        },
    )?;

    let want = reference(&seq, t, chunk);
    let max_err = max_abs_diff(&out_a, &want).max(max_abs_diff(&out_b, &want));
    let mut worst = [max_err];
    all_reduce(&comm, ch_check, &mut worst, ReduceOp::Max)?;
    if worst[0] > TOL {
        return Err(format!("max_err={:.3e} > {TOL:e}", worst[0]).into());
    }
    if r == 0 {
        println!(
            "zeco_linear_attention: OK max_err={:.3e} (ranks={n} seq={t} heads={H} dk={DK} dv={DV}, {BLOCKS} scan blocks)",
            worst[0]
        );
    }
    Ok(())
}

/// The chunk's state from zero (`S_p`, rows `h·DK + i`) and the product of
/// its gates per row (`γ_p`): this rank's element of the scan.
fn chunk_state(s: &Seq, chunk: Range<usize>) -> OwnedDiagState {
    let mut state = vec![0.0f32; H * DK * DV];
    let mut decay = vec![1.0f32; H * DK];
    for t in chunk {
        step(s, t, &mut state, &mut decay);
    }
    OwnedDiagState {
        state,
        decay,
        cols: DV,
    }
}

/// One token of the recurrence: `S = diag(a_t)·S + k_t v_tᵀ`, and the running
/// gate product `cum *= a_t`.
fn step(s: &Seq, t: usize, state: &mut [f32], cum: &mut [f32]) {
    for h in 0..H {
        let tk = (t * H + h) * DK;
        let v = &s.v[(t * H + h) * DV..(t * H + h + 1) * DV];
        for i in 0..DK {
            let (a, k) = (s.a[tk + i], s.k[tk + i]);
            cum[h * DK + i] *= a;
            let row = &mut state[(h * DK + i) * DV..(h * DK + i + 1) * DV];
            for (x, &vj) in row.iter_mut().zip(v) {
                *x = a * *x + k * vj;
            }
        }
    }
}

/// The intra-chunk outputs (the recurrence from a zero state; a real kernel
/// uses the chunked parallel form) `[CHUNK, H, DV]`, and the running gate
/// products `cum_x` per token `[CHUNK, H·DK]`.
fn intra_chunk(s: &Seq, chunk: Range<usize>) -> (Vec<f32>, Vec<f32>) {
    let mut state = vec![0.0f32; H * DK * DV];
    let mut run = vec![1.0f32; H * DK];
    let mut out = vec![0.0f32; CHUNK * H * DV];
    let mut cum = Vec::with_capacity(CHUNK * H * DK);
    for (x, t) in chunk.enumerate() {
        step(s, t, &mut state, &mut run);
        cum.extend_from_slice(&run);
        for h in 0..H {
            let o = &mut out[(x * H + h) * DV..(x * H + h + 1) * DV];
            for i in 0..DK {
                let q = s.q[(t * H + h) * DK + i];
                let row = &state[(h * DK + i) * DV..(h * DK + i + 1) * DV];
                for (oj, &sj) in o.iter_mut().zip(row) {
                    *oj += q * sj;
                }
            }
        }
    }
    (out, cum)
}

/// Adds the inter-chunk part of `rows` (stacked `h·DK + i`) to `out`:
/// `o_x += Σ_i q_x[i] · cum_x[i] · S_in[i, :]`, where `prefix` holds rows
/// `rows` of `S_in`.
fn add_inter(
    s: &Seq,
    chunk: Range<usize>,
    cum: &[f32],
    rows: Range<usize>,
    prefix: &[f32],
    out: &mut [f32],
) {
    for (x, t) in chunk.enumerate() {
        for (ri, row) in rows.clone().enumerate() {
            let (h, i) = (row / DK, row % DK);
            let w = s.q[(t * H + h) * DK + i] * cum[x * H * DK + row];
            let o = &mut out[(x * H + h) * DV..(x * H + h + 1) * DV];
            for (oj, &sj) in o.iter_mut().zip(&prefix[ri * DV..(ri + 1) * DV]) {
                *oj += w * sj;
            }
        }
    }
}

/// The recurrence over the whole sequence in f64, in one process; the
/// outputs of the tokens `chunk`, `[CHUNK, H, DV]`.
fn reference(s: &Seq, t: usize, chunk: Range<usize>) -> Vec<f64> {
    let mut state = vec![0.0f64; H * DK * DV];
    let mut out = Vec::with_capacity(CHUNK * H * DV);
    for tok in 0..t {
        for h in 0..H {
            let base = (tok * H + h) * DK;
            for i in 0..DK {
                let (a, k) = (s.a[base + i] as f64, s.k[base + i] as f64);
                for j in 0..DV {
                    let x = &mut state[(h * DK + i) * DV + j];
                    *x = a * *x + k * s.v[(tok * H + h) * DV + j] as f64;
                }
            }
            if chunk.contains(&tok) {
                for j in 0..DV {
                    out.push(
                        (0..DK)
                            .map(|i| s.q[base + i] as f64 * state[(h * DK + i) * DV + j])
                            .sum(),
                    );
                }
            }
        }
    }
    out
}

fn max_abs_diff(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max)
}

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    /// Uniform in `[lo, hi)`.
    fn next(&mut self, lo: f32, hi: f32) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        lo + (hi - lo) * ((z >> 40) as f32 / (1u64 << 24) as f32)
    }

    fn vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.next(lo, hi)).collect()
    }
}

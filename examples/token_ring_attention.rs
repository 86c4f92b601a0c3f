//! TokenRing attention: K/V stay, Q travels around the ring on one channel
//! while each partial result goes straight back to the owner of its Q on a
//! second channel, both in flight during the step's compute.
//!
//! ```sh
//! cargo build --bin zccl --example token_ring_attention
//! target/debug/zccl run -n 4 target/debug/examples/token_ring_attention
//! ```
//!
//! Every rank holds a contiguous shard of the sequence (`SEQ_PER_RANK`
//! tokens of Q, K and V). The numerics live in an [`ElemKernel<f32>`]: how
//! long a Q and a partial result are (in elements), how to compute the
//! partial result of a visiting Q against the local K/V (`out` rows then
//! `lse`, one message), and how to merge a returned result into this rank's
//! own accumulator ([`attn_merge_into`]). [`token_ring_elems`] moves Q and
//! the results and calls the kernel in schedule order. Runs non-causal and
//! causal (a visiting Q from an earlier rank sees none of the local keys:
//! its block is the empty result `(0, -inf)`), checks this rank's rows
//! against a single-process f64 reference and prints
//! `token_ring_attention: OK max_err=...` on rank 0 (exits non-zero
//! otherwise).

use std::process::ExitCode;

use zccl::primitives::Result;
use zccl::primitives::attn_merge::attn_merge_into;
use zccl::primitives::channels::Channels;
use zccl::primitives::collectives::all_reduce;
use zccl::primitives::reduce::ReduceOp;
use zccl::primitives::token_ring::{ElemKernel, TokenRingChannels, token_ring_elems};
use zccl::runtime::Communicator;

/// Tokens per rank (the sequence is `SEQ_PER_RANK × ranks` long).
const SEQ_PER_RANK: usize = 32;
/// Head dimension.
const D: usize = 32;
/// Max |error| of an f32 result against the f64 reference.
const TOL: f64 = 1e-4;

/// This rank's side of TokenRing: its K/V shard and its own Q's accumulator.
struct Attention<'a> {
    rank: usize,
    causal: bool,
    scale: f32,
    k: &'a [f32],
    v: &'a [f32],
    out: Vec<f32>,
    lse: Vec<f32>,
}

impl ElemKernel<f32> for Attention<'_> {
    // Every Q shard and every partial result has the same size here. The
    // lengths are elements, and must agree on every rank.
    fn q_len(&self, _holder: usize, _step: usize, _origin: usize) -> usize {
        SEQ_PER_RANK * D
    }

    fn out_len(&self, _computer: usize, _step: usize, _origin: usize) -> usize {
        SEQ_PER_RANK * (D + 1) // out rows [c, D], then lse [c]
    }

    /// Attention of the Q of rank `origin` against this rank's K/V.
    fn compute(&mut self, _step: usize, origin: usize, q: &[f32]) -> Result<Vec<f32>> {
        let c = SEQ_PER_RANK;
        let (mut block, lse) = if self.causal && origin < self.rank {
            // Every local key is after every token of that Q: empty result.
            (vec![0.0f32; c * D], vec![f32::NEG_INFINITY; c])
        } else {
            let (rank, causal) = (self.rank, self.causal);
            attention_block(q, self.k, self.v, self.scale, |i, j| {
                !causal || rank * c + j <= origin * c + i
            })
        };
        block.extend_from_slice(&lse);
        Ok(block)
    }

    /// Folds a partial result for this rank's Q (computed by rank `from`).
    fn merge(&mut self, _from: usize, _step: usize, block: &[f32]) -> Result<()> {
        let (o, l) = block.split_at(SEQ_PER_RANK * D);
        attn_merge_into(&mut self.out, &mut self.lse, o, l)
    }
}

fn main() -> ExitCode {
    // Errors name the rank, the peer and the channel; print them readably.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("token_ring_attention: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let comm = Communicator::from_env()?;
    let (r, n) = (comm.rank() as usize, comm.size() as usize);
    let (c, s) = (SEQ_PER_RANK, SEQ_PER_RANK * n);

    let mut rng = Rng(0x70c3);
    let (q, k, v) = (rng.vec(s * D), rng.vec(s * D), rng.vec(s * D));
    let mine = r * c * D..(r + 1) * c * D;
    // Channels, the same on every rank: TokenRing owns two (Q forward,
    // results back) until it returns; one more for the final check.
    // Channel 0 stays free for `comm.send`/`recv`.
    let mut channels = Channels::new();
    let ring = TokenRingChannels::from(&mut channels);
    let ch_check = channels.next();

    let mut max_err = 0.0f64;
    for causal in [false, true] {
        let mut kernel = Attention {
            rank: r,
            causal,
            scale: 1.0 / (D as f32).sqrt(),
            k: &k[mine.clone()],
            v: &v[mine.clone()],
            out: vec![0.0; c * D],
            lse: vec![f32::NEG_INFINITY; c],
        };
        // +1: Q goes to rank r+1 each step (-1 is the causal zigzag schedule).
        token_ring_elems(&comm, ring, 1, q[mine.clone()].to_vec(), &mut kernel)?;

        let (want_out, want_lse) = reference(&q, &k, &v, s, causal);
        max_err = max_err
            .max(max_abs_diff(&kernel.out, &want_out[mine.clone()]))
            .max(max_abs_diff(&kernel.lse, &want_lse[r * c..(r + 1) * c]));
    }

    let mut worst = [max_err];
    all_reduce(&comm, ch_check, &mut worst, ReduceOp::Max)?;
    if worst[0] > TOL {
        return Err(format!("max_err={:.3e} > {TOL:e}", worst[0]).into());
    }
    if r == 0 {
        println!(
            "token_ring_attention: OK max_err={:.3e} (ranks={n} seq={s} d={D}, causal and non-causal)",
            worst[0]
        );
    }
    Ok(())
}

/// Attention of `q` (`[rows, D]`) against `k`, `v` (`[cols, D]`) in f32,
/// query row `i` seeing key row `j` where `visible(i, j)`. Returns
/// `(out [rows, D], lse [rows])`; a row that sees no key gets `(0, -inf)`.
fn attention_block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    visible: impl Fn(usize, usize) -> bool,
) -> (Vec<f32>, Vec<f32>) {
    let (rows, cols) = (q.len() / D, k.len() / D);
    let mut out = vec![0.0f32; rows * D];
    let mut lse = vec![f32::NEG_INFINITY; rows];
    let mut p = vec![0.0f32; cols];
    for i in 0..rows {
        let qi = &q[i * D..(i + 1) * D];
        let mut m = f32::NEG_INFINITY;
        for (j, pj) in p.iter_mut().enumerate() {
            *pj = if visible(i, j) {
                scale * dot(qi, &k[j * D..(j + 1) * D])
            } else {
                f32::NEG_INFINITY
            };
            m = m.max(*pj);
        }
        if m == f32::NEG_INFINITY {
            continue;
        }
        let mut sum = 0.0f32;
        for pj in p.iter_mut() {
            *pj = (*pj - m).exp();
            sum += *pj;
        }
        let oi = &mut out[i * D..(i + 1) * D];
        for (j, &pj) in p.iter().enumerate() {
            for (o, &x) in oi.iter_mut().zip(&v[j * D..(j + 1) * D]) {
                *o += pj / sum * x;
            }
        }
        lse[i] = m + sum.ln();
    }
    (out, lse)
}

/// Single-process attention over the whole sequence in f64: `(out, lse)`.
fn reference(q: &[f32], k: &[f32], v: &[f32], s: usize, causal: bool) -> (Vec<f64>, Vec<f64>) {
    let scale = 1.0 / (D as f64).sqrt();
    let mut out = vec![0.0f64; s * D];
    let mut lse = vec![0.0f64; s];
    for i in 0..s {
        let keys = if causal { i + 1 } else { s };
        let sc: Vec<f64> = (0..keys)
            .map(|j| {
                let d: f64 = (0..D)
                    .map(|x| q[i * D + x] as f64 * k[j * D + x] as f64)
                    .sum();
                scale * d
            })
            .collect();
        let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = sc.iter().map(|x| (x - m).exp()).sum();
        for (j, x) in sc.iter().enumerate() {
            let p = (x - m).exp() / sum;
            for e in 0..D {
                out[i * D + e] += p * v[j * D + e] as f64;
            }
        }
        lse[i] = m + sum.ln();
    }
    (out, lse)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs_diff(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max)
}

/// A small deterministic generator (splitmix64), uniform in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next()).collect()
    }
}

//! Ring attention: Q stays, K/V travel around the ring, partial results are
//! merged with FlashAttention-2's log-sum-exp rule.
//!
//! ```sh
//! cargo build --bin zccl --example ring_attention
//! target/debug/zccl run -n 4 target/debug/examples/ring_attention
//! ```
//!
//! Every rank holds a contiguous shard of the sequence (`SEQ_PER_RANK`
//! tokens of Q, K and V). [`ring_pass_elems`] circulates each rank's K/V
//! block (a `Vec<f32>`) around the ring and calls back once per block, as
//! `&[f32]`, own block first; the transfer of block `s+1` is already posted
//! while the callback computes attention of the local Q against block `s`.
//! [`attn_merge_into`] folds each block's `(out, lse)` into the accumulator.
//! Runs causal and non-causal, checks this rank's rows against a
//! single-process f64 reference and prints `ring_attention: OK max_err=...`
//! on rank 0 (exits non-zero otherwise).
//!
//! Copy this into your own crate with
//! `zccl = { path = "...", default-features = false }` in `Cargo.toml`.

use std::process::ExitCode;

use zccl::primitives::attn_merge::attn_merge_into;
use zccl::primitives::channels::Channels;
use zccl::primitives::collectives::all_reduce;
use zccl::primitives::reduce::ReduceOp;
use zccl::primitives::ring::ring_pass_elems;
use zccl::runtime::Communicator;

/// Tokens per rank (the sequence is `SEQ_PER_RANK × ranks` long).
const SEQ_PER_RANK: usize = 32;
/// Head dimension.
const D: usize = 32;
/// Max |error| of an f32 result against the f64 reference.
const TOL: f64 = 1e-4;

fn main() -> ExitCode {
    // Errors name the rank, the peer and the channel; print them readably.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ring_attention: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let comm = Communicator::from_env()?;
    let (r, n) = (comm.rank() as usize, comm.size() as usize);
    let (c, s) = (SEQ_PER_RANK, SEQ_PER_RANK * n);
    let scale = 1.0 / (D as f32).sqrt();
    // Channels, the same on every rank: one for the K/V ring (the driver
    // owns it until `ring_pass_elems` returns), one for the final check.
    // Channel 0 stays free for `comm.send`/`recv`.
    let mut channels = Channels::new();
    let (ch_kv, ch_check) = (channels.next(), channels.next());

    // The whole problem from one seed, so that every rank (and the
    // reference) sees the same tensors; a trainer has its own shard only.
    let mut rng = Rng(0x5eed);
    let (q, k, v) = (rng.vec(s * D), rng.vec(s * D), rng.vec(s * D));
    let mine = r * c * D..(r + 1) * c * D;
    let q_local = &q[mine.clone()];

    let mut max_err = 0.0f64;
    for causal in [false, true] {
        let mut out = vec![0.0f32; c * D];
        let mut lse = vec![f32::NEG_INFINITY; c]; // (0, -inf): the empty result
        // One block per rank: its K rows then its V rows.
        let mut kv = k[mine.clone()].to_vec();
        kv.extend_from_slice(&v[mine.clone()]);
        ring_pass_elems(
            &comm,
            ch_kv,
            1,
            kv,
            |_origin| 2 * c * D, // every block has the same size, in elements
            |b| {
                // Causal, contiguous shards: a block from a later rank is
                // entirely in the future: nothing to compute.
                if causal && b.origin > r {
                    return Ok(());
                }
                let (kb, vb) = b.data.split_at(c * D);
                let (o, l) = attention_block(q_local, kb, vb, scale, |i, j| {
                    !causal || b.origin * c + j <= r * c + i
                });
                attn_merge_into(&mut out, &mut lse, &o, &l)
            },
        )?;

        let (want_out, want_lse) = reference(&q, &k, &v, s, scale as f64, causal);
        max_err = max_err
            .max(max_abs_diff(&out, &want_out[mine.clone()]))
            .max(max_abs_diff(&lse, &want_lse[r * c..(r + 1) * c]));
    }

    // Every rank learns the worst error, so that all of them fail together.
    let mut worst = [max_err];
    all_reduce(&comm, ch_check, &mut worst, ReduceOp::Max)?;
    if worst[0] > TOL {
        return Err(format!("max_err={:.3e} > {TOL:e}", worst[0]).into());
    }
    if r == 0 {
        println!(
            "ring_attention: OK max_err={:.3e} (ranks={n} seq={s} d={D}, causal and non-causal)",
            worst[0]
        );
    }
    Ok(())
}

/// Attention of `q` (`[rows, D]`) against `k`, `v` (`[cols, D]`) in f32,
/// scores scaled by `scale`, query row `i` seeing key row `j` where
/// `visible(i, j)`. Returns `(out [rows, D], lse [rows])`, natural-log
/// log-sum-exp of the scaled scores; a row that sees no key gets `(0, -inf)`,
/// which `attn_merge` treats as the identity.
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
fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: usize,
    scale: f64,
    causal: bool,
) -> (Vec<f64>, Vec<f64>) {
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

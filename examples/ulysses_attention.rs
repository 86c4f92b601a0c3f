//! DeepSpeed-Ulysses attention: all-to-all from sequence shards to head
//! shards, ordinary attention over the whole sequence for this rank's heads,
//! all-to-all back. With heads divisible by the ranks, and with uneven heads.
//!
//! ```sh
//! cargo build --bin zccl --example ulysses_attention
//! target/debug/zccl run -n 4 target/debug/examples/ulysses_attention
//! ```
//!
//! Every rank holds a sequence shard `[B, c, H, D]` of Q, K and V (row-major,
//! the layout of a `[batch, seq, heads, head_dim]` tensor).
//!
//! * **Even heads** (`H = 2·ranks`): [`iseq_to_heads`] starts the exchanges of
//!   Q, K and V at once, each on a channel of its own (each runs on a
//!   progress thread, so a trainer could still be projecting V while Q and K
//!   move), giving head shards `[B, S, H/P, D]`; then causal attention per
//!   head; then [`heads_to_seq`] brings the output back to `[B, c, H, D]`.
//! * **Uneven heads** (`H = 2·ranks + 1`, e.g. 9 heads on 4 ranks: 3, 2, 2,
//!   2): the `layout` helpers reject `H % P ≠ 0`, so this rank packs the
//!   blocks itself and moves Q, K and V in **one** [`all_to_all_v`] (counts
//!   per destination rank), and the output back with another.
//!
//! Checks this rank's output rows against a single-process f64 reference and
//! prints `ulysses_attention: OK max_err=...` on rank 0 (exits non-zero
//! otherwise).

use std::process::ExitCode;
use std::sync::Arc;

use zccl::primitives::alltoall::all_to_all_v;
use zccl::primitives::channels::Channels;
use zccl::primitives::collectives::all_reduce;
use zccl::primitives::layout::{UlyssesShape, heads_to_seq, iseq_to_heads};
use zccl::primitives::reduce::ReduceOp;
use zccl::runtime::Communicator;

/// Batch.
const B: usize = 2;
/// Tokens per rank `c` (the sequence is `S = c × ranks` long).
const SEQ_PER_RANK: usize = 32;
/// Head dimension.
const D: usize = 16;
/// Max |error| of an f32 result against the f64 reference.
const TOL: f64 = 1e-4;

fn main() -> ExitCode {
    // Errors name the rank, the peer and the channel; print them readably.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ulysses_attention: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let comm = Communicator::from_env()?;
    let (r, n) = (comm.rank() as usize, comm.size() as usize);
    // Channels, the same on every rank: the three concurrent seq→heads
    // exchanges need one each (an operation owns its channel until it
    // completes); the way back and the uneven exchanges reuse the first
    // once those are done; one more for the final check. Channel 0 stays
    // free for `comm.send`/`recv`.
    let mut channels = Channels::new();
    let ch_qkv = [channels.next(), channels.next(), channels.next()];
    let ch_check = channels.next();
    let mut max_err = 0.0f64;
    for heads in [2 * n, 2 * n + 1] {
        let g = Problem::new(n, heads, 42 + heads as u64);
        let (q, k, v) = (g.shard(&g.q, r), g.shard(&g.k, r), g.shard(&g.v, r));
        let out = if heads % n == 0 {
            even_heads(&comm, ch_qkv, heads, q, k, v)?
        } else {
            uneven_heads(&comm, ch_qkv[0], heads, &q, &k, &v)?
        };
        let want = g.reference_shard(r);
        max_err = max_err.max(max_abs_diff(&out, &want));
    }

    let mut worst = [max_err];
    all_reduce(&comm, ch_check, &mut worst, ReduceOp::Max)?;
    if worst[0] > TOL {
        return Err(format!("max_err={:.3e} > {TOL:e}", worst[0]).into());
    }
    if r == 0 {
        println!(
            "ulysses_attention: OK max_err={:.3e} (ranks={n} batch={B} seq={} d={D}, heads {} and {})",
            worst[0],
            SEQ_PER_RANK * n,
            2 * n,
            2 * n + 1
        );
    }
    Ok(())
}

/// `H % P == 0`: the `layout` helpers do the packing, Q, K and V each on
/// its own channel of `ch`.
fn even_heads(
    comm: &Communicator,
    ch: [u32; 3],
    heads: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let n = comm.size() as usize;
    let shape = UlyssesShape {
        batch: B,
        seq_local: SEQ_PER_RANK,
        heads,
        dim: D,
    };
    // The non-blocking forms take the communicator as an `Arc` (a
    // `Communicator` is a cheap handle: clones share one connection set).
    let f = Arc::new(comm.clone());
    let hq = iseq_to_heads(f.clone(), ch[0], q, shape);
    let hk = iseq_to_heads(f.clone(), ch[1], k, shape);
    let hv = iseq_to_heads(f, ch[2], v, shape);
    let (qh, kh, vh) = (hq.wait()?, hk.wait()?, hv.wait()?); // [B, S, H/P, D] each
    let hp = shape.heads_per_rank(n)?;
    let y = local_attention(&qh, &kh, &vh, SEQ_PER_RANK * n, hp);
    Ok(heads_to_seq(comm, ch[0], &y, shape)?) // back to [B, c, H, D]
}

/// `H % P != 0`: rank `j` gets `H/P` heads, plus one if `j < H % P`; Q, K
/// and V travel in one all-to-all-v on channel `ch`.
fn uneven_heads(
    comm: &Communicator,
    ch: u32,
    heads: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let (r, n) = (comm.rank() as usize, comm.size() as usize);
    let c = SEQ_PER_RANK;
    let s = c * n;
    let group = |j: usize| heads / n + usize::from(j < heads % n); // heads of rank j
    let first = |j: usize| (0..j).map(group).sum::<usize>(); // its first head

    // Send: for each destination j, its head group of Q, K and V ([3, B, c, h_j, D]).
    let mut send = Vec::with_capacity(3 * q.len());
    let send_counts: Vec<usize> = (0..n).map(|j| 3 * B * c * group(j) * D).collect();
    for j in 0..n {
        let (h0, hj) = (first(j), group(j));
        for x in [q, k, v] {
            for bt in 0..B * c {
                let row = (bt * heads + h0) * D;
                send.extend_from_slice(&x[row..row + hj * D]);
            }
        }
    }
    // Receive: from each rank i, its sequence shard of this rank's heads.
    let hr = group(r);
    let recv_counts = vec![3 * B * c * hr * D; n];
    let recv = all_to_all_v(comm, ch, &send, &send_counts, &recv_counts)?;
    // Unpack into head shards [B, S, h_r, D].
    let mut qkv = vec![vec![0.0f32; B * s * hr * D]; 3];
    let block = B * c * hr * D;
    for i in 0..n {
        for (w, dst) in qkv.iter_mut().enumerate() {
            let src = &recv[(3 * i + w) * block..(3 * i + w + 1) * block];
            for b in 0..B {
                let to = (b * s + i * c) * hr * D;
                dst[to..to + c * hr * D]
                    .copy_from_slice(&src[b * c * hr * D..(b + 1) * c * hr * D]);
            }
        }
    }
    let y = local_attention(&qkv[0], &qkv[1], &qkv[2], s, hr); // [B, S, h_r, D]

    // Back: sequence shard j of this rank's heads goes to rank j.
    let mut send = Vec::with_capacity(y.len());
    for j in 0..n {
        for b in 0..B {
            let from = (b * s + j * c) * hr * D;
            send.extend_from_slice(&y[from..from + c * hr * D]);
        }
    }
    let send_counts = vec![B * c * hr * D; n];
    let recv_counts: Vec<usize> = (0..n).map(|i| B * c * group(i) * D).collect();
    let recv = all_to_all_v(comm, ch, &send, &send_counts, &recv_counts)?;
    // Rank i's block holds heads first(i).. of every token: [B, c, h_i, D].
    let mut out = vec![0.0f32; B * c * heads * D];
    let mut at = 0;
    for i in 0..n {
        let (h0, hi) = (first(i), group(i));
        for bt in 0..B * c {
            let row = (bt * heads + h0) * D;
            out[row..row + hi * D].copy_from_slice(&recv[at..at + hi * D]);
            at += hi * D;
        }
    }
    Ok(out)
}

/// Causal attention over the whole sequence for a head shard: `q`, `k`, `v`
/// are `[B, S, hp, D]`; returns the output in the same layout.
fn local_attention(q: &[f32], k: &[f32], v: &[f32], s: usize, hp: usize) -> Vec<f32> {
    let scale = 1.0 / (D as f32).sqrt();
    let at = |b: usize, t: usize, h: usize| ((b * s + t) * hp + h) * D;
    let mut out = vec![0.0f32; q.len()];
    let mut p = vec![0.0f32; s];
    for b in 0..B {
        for h in 0..hp {
            for i in 0..s {
                let qi = &q[at(b, i, h)..at(b, i, h) + D];
                let mut m = f32::NEG_INFINITY;
                for (j, pj) in p.iter_mut().enumerate().take(i + 1) {
                    *pj = scale * dot(qi, &k[at(b, j, h)..at(b, j, h) + D]);
                    m = m.max(*pj);
                }
                let mut sum = 0.0f32;
                for pj in &mut p[..=i] {
                    *pj = (*pj - m).exp();
                    sum += *pj;
                }
                let o = at(b, i, h);
                for (j, &pj) in p[..=i].iter().enumerate() {
                    for e in 0..D {
                        out[o + e] += pj / sum * v[at(b, j, h) + e];
                    }
                }
            }
        }
    }
    out
}

/// The global tensors `[B, S, H, D]` of one problem.
struct Problem {
    n: usize,
    heads: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Problem {
    fn new(n: usize, heads: usize, seed: u64) -> Self {
        let len = B * SEQ_PER_RANK * n * heads * D;
        let mut rng = Rng(seed);
        Problem {
            n,
            heads,
            q: rng.vec(len),
            k: rng.vec(len),
            v: rng.vec(len),
        }
    }

    /// Rank `r`'s sequence shard `[B, c, H, D]` of a global tensor.
    fn shard(&self, x: &[f32], r: usize) -> Vec<f32> {
        let (c, row) = (SEQ_PER_RANK, self.heads * D);
        let s = c * self.n;
        (0..B)
            .flat_map(|b| {
                let from = (b * s + r * c) * row;
                x[from..from + c * row].iter().copied()
            })
            .collect()
    }

    /// Single-process causal attention in f64, rank `r`'s rows `[B, c, H, D]`.
    fn reference_shard(&self, r: usize) -> Vec<f64> {
        let (c, hh) = (SEQ_PER_RANK, self.heads);
        let s = c * self.n;
        let scale = 1.0 / (D as f64).sqrt();
        let at = |b: usize, t: usize, h: usize| ((b * s + t) * hh + h) * D;
        let mut out = vec![0.0f64; B * c * hh * D];
        for b in 0..B {
            for t in 0..c {
                let i = r * c + t;
                for h in 0..hh {
                    let sc: Vec<f64> = (0..=i)
                        .map(|j| {
                            scale
                                * (0..D)
                                    .map(|e| {
                                        self.q[at(b, i, h) + e] as f64
                                            * self.k[at(b, j, h) + e] as f64
                                    })
                                    .sum::<f64>()
                        })
                        .collect();
                    let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                    let o = ((b * c + t) * hh + h) * D;
                    for (j, x) in sc.iter().enumerate() {
                        let p = (x - m).exp() / sum;
                        for e in 0..D {
                            out[o + e] += p * self.v[at(b, j, h) + e] as f64;
                        }
                    }
                }
            }
        }
        out
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs_diff(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
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

//! Sequence-parallel cases shared by the simulated-fabric tests and the
//! runs over real communicators (threads and processes): problem builders,
//! one rank's side of each algorithm (generic over the fabric), and checks of
//! that rank's result against f64 references.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Rng, attention_f32, attention_f64, gla_grad_states, gla_outputs, gla_states};
use super::{max_err, rows_of};
use zccl_primitives::alltoall::all_to_all_v;
use zccl_primitives::attn_merge::attn_merge_into;
use zccl_primitives::dtype::{as_bytes, from_bytes, to_bytes};
use zccl_primitives::layout::{UlyssesShape, heads_to_seq, seq_to_heads};
use zccl_primitives::ring::ring_pass;
use zccl_primitives::scan::{DiagState, ScanOutput, all_scan_diag, all_scan_diag_blocks};
use zccl_primitives::schedule::scan::ScanDirection::{self, Forward, Reverse};
use zccl_primitives::token_ring::{TokenRingChannels, TokenRingKernel, token_ring};
use zccl_primitives::{Error, Fabric, Result};

// ---------------------------------------------------------------- attention

/// Head dimension of the attention problems.
pub const D: usize = 8;
/// Max |error| of an f32 attention result against the f64 reference.
pub const TOL: f64 = 1e-5;

/// One attention problem over the whole sequence (global Q, K, V `[s, D]`).
pub struct Problem {
    pub s: usize,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub scale: f64,
}

pub fn problem(s: usize, seed: u64) -> Arc<Problem> {
    let mut rng = Rng::new(seed);
    Arc::new(Problem {
        s,
        q: rng.vec_f32(s * D, -1.0, 1.0),
        k: rng.vec_f32(s * D, -1.0, 1.0),
        v: rng.vec_f32(s * D, -1.0, 1.0),
        scale: 1.0 / (D as f64).sqrt(),
    })
}

/// Global positions held by rank r: contiguous, or zigzag halves r and 2n-1-r.
pub fn positions(r: usize, n: usize, s: usize, zigzag: bool) -> Vec<usize> {
    if zigzag {
        let h = s / (2 * n);
        (r * h..(r + 1) * h)
            .chain((2 * n - 1 - r) * h..(2 * n - r) * h)
            .collect()
    } else {
        let c = s / n;
        (r * c..(r + 1) * c).collect()
    }
}

/// Full single-device attention in f64: (out `[s, D]`, lse `[s]`).
pub fn full_reference(p: &Problem, causal: bool) -> (Vec<f64>, Vec<f64>) {
    attention_f64(&p.q, &p.k, &p.v, p.s, p.s, D, D, p.scale, |i, j| {
        !causal || j <= i
    })
}

/// Asserts that one rank's (out, lse) rows at `pos` match the reference within [`TOL`].
pub fn check_rows(
    reference: &(Vec<f64>, Vec<f64>),
    pos: &[usize],
    out: &[f32],
    lse: &[f32],
    ctx: &str,
) {
    let eo = max_err(out, &rows_of(&reference.0, D, pos.iter().copied()));
    let el = max_err(lse, &rows_of(&reference.1, 1, pos.iter().copied()));
    assert!(
        eo <= TOL && el <= TOL,
        "{ctx}: out err {eo:e}, lse err {el:e}"
    );
}

/// One rank's result of a ring-attention pass.
pub struct RingOut {
    pub pos: Vec<usize>,
    pub out: Vec<f32>,
    pub lse: Vec<f32>,
    /// Score elements computed per step.
    pub work: Vec<usize>,
}

/// Ring attention from `ring_pass` + `attn_merge`: KV circulates, Q stays.
/// `zigzag` selects the causal zigzag schedule (halves r and 2n-1-r, equal
/// work per step); otherwise the basic ring on contiguous shards, causal or not.
pub fn ring_attention_rank<F: Fabric + ?Sized>(
    f: &F,
    p: &Problem,
    causal: bool,
    zigzag: bool,
    ch: u32,
) -> RingOut {
    let (r, n) = (f.rank(), f.size());
    let pos = positions(r, n, p.s, zigzag);
    let q = rows_of(&p.q, D, pos.iter().copied());
    let mut kv = rows_of(&p.k, D, pos.iter().copied());
    kv.extend(rows_of(&p.v, D, pos.iter().copied()));
    let c = pos.len();
    let h = c / 2;
    let mut out = vec![0.0f32; c * D];
    let mut lse = vec![f32::NEG_INFINITY; c];
    let mut work = Vec::new();
    ring_pass(
        f,
        ch,
        1,
        to_bytes(&kv),
        |_| 2 * c * D * 4,
        |b| {
            let kv: Vec<f32> = from_bytes(b.data);
            let (k, v) = (&kv[..c * D], &kv[c * D..]);
            if !zigzag {
                let kpos = positions(b.origin, n, p.s, false);
                let (o, l) = attention_f32(&q, k, v, c, c, D, D, p.scale, |i, j| {
                    !causal || kpos[j] <= pos[i]
                });
                work.push(c * c);
                attn_merge_into(&mut out, &mut lse, &o, &l)
            } else if b.step == 0 {
                let (o, l) = attention_f32(&q, k, v, c, c, D, D, p.scale, |i, j| pos[j] <= pos[i]);
                work.push(c * c);
                attn_merge_into(&mut out, &mut lse, &o, &l)
            } else if b.origin < r {
                // Full Q against the first half of the received KV, no mask.
                let (o, l) =
                    attention_f32(&q, &k[..h * D], &v[..h * D], c, h, D, D, p.scale, |_, _| {
                        true
                    });
                work.push(c * h);
                attn_merge_into(&mut out, &mut lse, &o, &l)
            } else {
                // Second half of Q against the full received KV, no mask.
                let (o, l) = attention_f32(&q[h * D..], k, v, h, c, D, D, p.scale, |_, _| true);
                work.push(h * c);
                attn_merge_into(&mut out[h * D..], &mut lse[h..], &o, &l)
            }
        },
    )
    .unwrap();
    RingOut {
        pos,
        out,
        lse,
        work,
    }
}

/// TokenRing kernel over f32 attention blocks. A block is `rows × (D + 1)`
/// values: out rows, then lse.
pub struct TrKernel {
    pub p: Arc<Problem>,
    pub rank: usize,
    pub n: usize,
    pub zigzag: bool,
    pub h: usize,
    /// This rank's K/V positions.
    pub kpos: Vec<usize>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub out: Vec<f32>,
    pub lse: Vec<f32>,
    pub merged_from: Vec<(usize, usize)>,
}

impl TrKernel {
    fn c(&self) -> usize {
        if self.zigzag {
            2 * self.h
        } else {
            self.p.s / self.n
        }
    }
    /// Whether rank `holder` at `step` needs the full Q (zigzag: no wrap) or only its second half.
    fn full_q(&self, holder: usize, step: usize) -> bool {
        !self.zigzag || step == 0 || holder + step < self.n
    }
    fn rows(&self, computer: usize, step: usize) -> usize {
        if self.full_q(computer, step) {
            self.c()
        } else {
            self.h
        }
    }
}

impl TokenRingKernel for TrKernel {
    fn q_len(&self, holder: usize, step: usize, _origin: usize) -> usize {
        self.rows(holder, step) * D * 4
    }
    fn out_len(&self, computer: usize, step: usize, _origin: usize) -> usize {
        self.rows(computer, step) * (D + 1) * 4
    }
    fn forward_q(&mut self, step: usize, _origin: usize, q: &[u8]) -> Vec<u8> {
        let next = (self.rank + self.n - 1) % self.n; // zigzag: Q travels backward
        if self.zigzag && self.full_q(self.rank, step) && !self.full_q(next, step + 1) {
            q[self.h * D * 4..].to_vec()
        } else {
            q.to_vec()
        }
    }
    fn compute(&mut self, step: usize, origin: usize, q: &[u8]) -> Result<Vec<u8>> {
        let q: Vec<f32> = from_bytes(q);
        let rows = q.len() / D;
        let qpos_all = positions(origin, self.n, self.p.s, self.zigzag);
        let qpos = &qpos_all[qpos_all.len() - rows..];
        let c = self.kpos.len();
        let (o, l) = if self.zigzag && step > 0 && rows == self.c() {
            // No wrap: full Q against the first half of local K/V.
            let (o, l) = attention_f32(
                &q,
                &self.k[..self.h * D],
                &self.v[..self.h * D],
                rows,
                self.h,
                D,
                D,
                self.p.scale,
                |_, _| true,
            );
            // Check that the skipped half is indeed invisible.
            assert!(
                qpos.iter()
                    .all(|&i| self.kpos[self.h..].iter().all(|&j| j > i))
            );
            (o, l)
        } else {
            let causal = self.zigzag;
            let kpos = &self.kpos;
            attention_f32(&q, &self.k, &self.v, rows, c, D, D, self.p.scale, |i, j| {
                !causal || kpos[j] <= qpos[i]
            })
        };
        let mut blk = o;
        blk.extend(l);
        Ok(to_bytes(&blk))
    }
    fn merge(&mut self, from: usize, step: usize, block: Vec<u8>) -> Result<()> {
        let b: Vec<f32> = from_bytes(&block);
        let rows = b.len() / (D + 1);
        let (o, l) = b.split_at(rows * D);
        let c = self.c();
        self.merged_from.push((from, step));
        let first = c - rows;
        attn_merge_into(&mut self.out[first * D..], &mut self.lse[first..], o, l)
    }
}

/// Sequence length of a TokenRing problem over `n` ranks (`h` = half-chunk of zigzag).
pub fn token_ring_len(n: usize, zigzag: bool, h: usize) -> usize {
    if zigzag { 2 * n * h } else { n * 5 }
}

/// One rank of TokenRing (non-causal: Q forward; causal zigzag: Q backward).
/// Returns (positions, out, lse, [(from, step)] of every merged block).
#[allow(clippy::type_complexity)]
pub fn token_ring_rank<F: Fabric + ?Sized>(
    f: &F,
    p: &Arc<Problem>,
    zigzag: bool,
    h: usize,
    ch: TokenRingChannels,
) -> (Vec<usize>, Vec<f32>, Vec<f32>, Vec<(usize, usize)>) {
    let (r, n) = (f.rank(), f.size());
    let pos = positions(r, n, p.s, zigzag);
    let c = pos.len();
    let mut kern = TrKernel {
        p: p.clone(),
        rank: r,
        n,
        zigzag,
        h,
        k: rows_of(&p.k, D, pos.iter().copied()),
        v: rows_of(&p.v, D, pos.iter().copied()),
        kpos: pos.clone(),
        out: vec![0.0; c * D],
        lse: vec![f32::NEG_INFINITY; c],
        merged_from: Vec::new(),
    };
    let q = rows_of(&p.q, D, pos.iter().copied());
    token_ring(
        f,
        ch,
        if zigzag { -1 } else { 1 },
        as_bytes(&q).to_vec(),
        &mut kern,
    )
    .unwrap();
    (pos, kern.out, kern.lse, kern.merged_from)
}

/// Own block first, then exactly n-1 foreign blocks, one from every other rank.
pub fn check_merged_from(r: usize, n: usize, merged: &[(usize, usize)], ctx: &str) -> Vec<usize> {
    assert_eq!(merged[0], (r, 0), "{ctx}");
    assert_eq!(merged.len(), n, "{ctx}: {merged:?}");
    let mut from: Vec<usize> = merged[1..].iter().map(|m| m.0).collect();
    from.sort();
    assert_eq!(
        from,
        (0..n).filter(|&x| x != r).collect::<Vec<_>>(),
        "{ctx}"
    );
    // Each step 1..n computed our Q's block on a different rank.
    let mut steps: Vec<usize> = merged[1..].iter().map(|m| m.1).collect();
    steps.sort();
    assert_eq!(steps, (1..n).collect::<Vec<_>>(), "{ctx}");
    from
}

// ---------------------------------------------------------------- Ulysses

pub const UB: usize = 2;
pub const UC: usize = 3;
pub const UDH: usize = 4;

/// Global tensors [B, S, H, d] → index.
pub fn uidx(s: usize, h: usize, b: usize, t: usize, head: usize, x: usize) -> usize {
    ((b * s + t) * h + head) * UDH + x
}

/// Global (q, k, v) of a Ulysses problem over `n` ranks with `heads` heads.
pub fn ulysses_problem(n: usize, heads: usize) -> Arc<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let s = UC * n;
    let mut rng = Rng::new(77 + n as u64);
    Arc::new((
        rng.vec_f32(UB * s * heads * UDH, -1.0, 1.0),
        rng.vec_f32(UB * s * heads * UDH, -1.0, 1.0),
        rng.vec_f32(UB * s * heads * UDH, -1.0, 1.0),
    ))
}

/// One rank of Ulysses: seq→heads all-to-all of Q, K, V (channel `ch`),
/// local attention over the full sequence for H/P heads, heads→seq (channel
/// `ch + 1`). Returns this rank's output sequence shard `[B, c, H, d]`.
pub fn ulysses_rank<F: Fabric + ?Sized>(
    f: &F,
    g: &(Vec<f32>, Vec<f32>, Vec<f32>),
    heads: usize,
    causal: bool,
    ch: u32,
) -> Vec<f32> {
    let (r, n) = (f.rank(), f.size());
    let s = UC * n;
    let shape = UlyssesShape {
        batch: UB,
        seq_local: UC,
        heads,
        dim: UDH,
    };
    let shard = |x: &[f32]| -> Vec<f32> {
        (0..UB)
            .flat_map(|b| {
                (0..UC).flat_map(move |t| {
                    (0..heads).flat_map(move |h| (0..UDH).map(move |e| (b, t, h, e)))
                })
            })
            .map(|(b, t, h, e)| x[uidx(s, heads, b, r * UC + t, h, e)])
            .collect()
    };
    let (ql, kl, vl) = (shard(&g.0), shard(&g.1), shard(&g.2));
    let qh = seq_to_heads(f, ch, &ql, shape).unwrap();
    let kh = seq_to_heads(f, ch, &kl, shape).unwrap();
    let vh = seq_to_heads(f, ch, &vl, shape).unwrap();
    assert_eq!(
        heads_to_seq(f, ch, &qh, shape).unwrap(),
        ql,
        "round trip is the identity"
    );
    let hp = heads / n;
    let mut oh = vec![0.0f32; qh.len()];
    for b in 0..UB {
        for h in 0..hp {
            let pick = |x: &[f32]| -> Vec<f32> {
                (0..s)
                    .flat_map(|t| (0..UDH).map(move |e| (t, e)))
                    .map(|(t, e)| x[((b * s + t) * hp + h) * UDH + e])
                    .collect()
            };
            let (o, _) = attention_f64(
                &pick(&qh),
                &pick(&kh),
                &pick(&vh),
                s,
                s,
                UDH,
                UDH,
                0.5,
                |i, j| !causal || j <= i,
            );
            for t in 0..s {
                for e in 0..UDH {
                    oh[((b * s + t) * hp + h) * UDH + e] = o[t * UDH + e] as f32;
                }
            }
        }
    }
    heads_to_seq(f, ch + 1, &oh, shape).unwrap()
}

/// Checks rank `r`'s Ulysses output against full attention per (batch, head).
pub fn check_ulysses(
    g: &(Vec<f32>, Vec<f32>, Vec<f32>),
    n: usize,
    heads: usize,
    causal: bool,
    r: usize,
    o: &[f32],
) {
    let s = UC * n;
    for b in 0..UB {
        for h in 0..heads {
            let pick = |x: &[f32]| -> Vec<f32> {
                (0..s)
                    .flat_map(|t| (0..UDH).map(move |e| (t, e)))
                    .map(|(t, e)| x[uidx(s, heads, b, t, h, e)])
                    .collect()
            };
            let (want, _) = attention_f64(
                &pick(&g.0),
                &pick(&g.1),
                &pick(&g.2),
                s,
                s,
                UDH,
                UDH,
                0.5,
                |i, j| !causal || j <= i,
            );
            let got: Vec<f32> = (0..UC)
                .flat_map(|t| (0..UDH).map(move |e| (t, e)))
                .map(|(t, e)| o[((b * UC + t) * heads + h) * UDH + e])
                .collect();
            let wantr: Vec<f64> = (0..UC)
                .flat_map(|t| (0..UDH).map(move |e| (t, e)))
                .map(|(t, e)| want[(r * UC + t) * UDH + e])
                .collect();
            assert!(
                max_err(&got, &wantr) <= 1e-6,
                "ulysses n={n} causal={causal} rank {r} b={b} h={h}"
            );
        }
    }
}

/// Heads not divisible by the rank count: a clear error, on every rank, before any traffic.
pub fn check_ulysses_rejects<F: Fabric + ?Sized>(f: &F, ch: u32) {
    let n = f.size();
    if n == 1 {
        return;
    }
    let heads = n + 1;
    let shape = UlyssesShape {
        batch: 1,
        seq_local: 2,
        heads,
        dim: 2,
    };
    let e = seq_to_heads(f, ch, &vec![0.0f32; 4 * heads], shape).unwrap_err();
    assert_eq!(e, Error::HeadsNotDivisible { heads, ranks: n });
    assert!(
        e.to_string().contains(&format!(
            "{heads} heads cannot be split evenly over {n} ranks"
        )),
        "{e}"
    );
}

// ---------------------------------------------------------------- all_to_all_v

/// Random uneven split counts `[src][dst]`, about a third of them zero.
pub fn a2a_counts(n: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            (0..n)
                .map(|_| if rng.below(3) == 0 { 0 } else { rng.below(9) })
                .collect()
        })
        .collect()
}

/// One rank's all_to_all_v over `counts`; asserts the received data; returns it.
pub fn a2a_v_rank<F: Fabric + ?Sized>(f: &F, counts: &[Vec<usize>], ch: u32) -> Vec<f32> {
    let (r, n) = (f.rank(), f.size());
    let send: Vec<usize> = counts[r].clone();
    let recv: Vec<usize> = (0..n).map(|i| counts[i][r]).collect();
    let input: Vec<f32> = (0..n)
        .flat_map(|j| (0..send[j]).map(move |x| (r * 10_000 + j * 100 + x) as f32))
        .collect();
    let got = all_to_all_v(f, ch, &input, &send, &recv).unwrap();
    let want: Vec<f32> = (0..n)
        .flat_map(|i| (0..counts[i][r]).map(move |x| (i * 10_000 + r * 100 + x) as f32))
        .collect();
    assert_eq!(got, want, "all_to_all_v n={n} rank {r}");
    got
}

// ---------------------------------------------------------------- All-Scan

pub const DK: usize = 8;
pub const DV: usize = 3;
/// Tokens per rank.
pub const L: usize = 4;
/// Row-block counts that must give bit-identical results.
pub const KS: [usize; 4] = [1, 2, 4, DK];

/// A GLA sequence of `t` tokens (decays `a` per token and key row).
pub struct Seq {
    pub t: usize,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub a: Vec<f32>,
    pub dout: Vec<f32>,
}

pub fn seq_with(n: usize, seed: u64, decay: impl Fn(&mut Rng) -> f32) -> Seq {
    let mut rng = Rng::new(seed);
    let t = n * L;
    Seq {
        t,
        q: rng.vec_f32(t * DK, -1.0, 1.0),
        k: rng.vec_f32(t * DK, -1.0, 1.0),
        v: rng.vec_f32(t * DV, -1.0, 1.0),
        a: (0..t * DK).map(|_| decay(&mut rng)).collect(),
        dout: rng.vec_f32(t * DV, -1.0, 1.0),
    }
}

pub fn seq(n: usize, seed: u64, decay: impl Fn(&mut Rng) -> f32) -> Arc<Seq> {
    Arc::new(seq_with(n, seed, decay))
}

/// Random decays in (0, 1).
pub fn random_decay(r: &mut Rng) -> f32 {
    r.range(0.05, 0.999) as f32
}

pub fn tokens(p: usize) -> std::ops::Range<usize> {
    p * L..(p + 1) * L
}

/// Rank p's forward scan element: local state from zero and the chunk's cumulative decay.
pub fn forward_local(s: &Seq, p: usize) -> (Vec<f32>, Vec<f32>) {
    let r = tokens(p);
    let st = gla_states(
        &s.k[r.start * DK..r.end * DK],
        &s.v[r.start * DV..r.end * DV],
        &s.a[r.start * DK..r.end * DK],
        L,
        DK,
        DV,
        &[0.0; DK * DV],
    );
    let gamma: Vec<f32> = (0..DK)
        .map(|i| r.clone().map(|t| s.a[t * DK + i] as f64).product::<f64>() as f32)
        .collect();
    (st[L - 1].iter().map(|&x| x as f32).collect(), gamma)
}

/// Rank p's reverse scan element: direct(p) and the decay γ'(p) = ∏ a over tokens pL+1 ..= (p+1)L.
pub fn reverse_local(s: &Seq, p: usize) -> (Vec<f32>, Vec<f32>) {
    let r = tokens(p);
    let g = gla_grad_states(
        &s.q[r.start * DK..r.end * DK],
        &s.dout[r.start * DV..r.end * DV],
        &s.a[r.start * DK..r.end * DK],
        L,
        DK,
        DV,
    );
    let gamma: Vec<f32> = (0..DK)
        .map(|i| {
            (r.start + 1..=r.end)
                .map(|t| if t < s.t { s.a[t * DK + i] as f64 } else { 1.0 })
                .product::<f64>() as f32
        })
        .collect();
    (g[0].iter().map(|&x| x as f32).collect(), gamma)
}

/// One rank's diagonal scans for every K of [`KS`] (channel `ch`).
pub fn diag_rank<F: Fabric + ?Sized>(
    f: &F,
    s: &Seq,
    dir: ScanDirection,
    ch: u32,
) -> Vec<ScanOutput> {
    let p = f.rank();
    let (state, gamma) = if dir == Forward {
        forward_local(s, p)
    } else {
        reverse_local(s, p)
    };
    KS.iter()
        .map(|&k| {
            all_scan_diag(
                f,
                ch,
                DiagState {
                    state: &state,
                    decay: &gamma,
                    cols: DV,
                },
                dir,
                k,
                true,
            )
            .unwrap()
        })
        .collect()
}

pub fn assert_close(got: &[f32], want: &[f64], tol: f64, ctx: &str) {
    assert_eq!(got.len(), want.len(), "{ctx}: lengths");
    let e = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max);
    assert!(e <= tol, "{ctx}: max err {e:e}");
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// All K give bit-identical exclusive and inclusive prefixes (one rank's outputs).
pub fn check_k_bitwise_rank(per_k: &[ScanOutput], ctx: &str) {
    for o in &per_k[1..] {
        assert_eq!(
            bits(&o.exclusive),
            bits(&per_k[0].exclusive),
            "{ctx}: exclusive differs across K"
        );
        assert_eq!(
            bits(o.inclusive.as_ref().unwrap()),
            bits(per_k[0].inclusive.as_ref().unwrap()),
            "{ctx}: inclusive differs across K"
        );
    }
}

/// Rank p's forward prefixes = the sequential recurrence state at the boundaries.
pub fn check_forward_rank(s: &Seq, n: usize, p: usize, o: &ScanOutput, ctx: &str) {
    let states = gla_states(&s.k, &s.v, &s.a, s.t, DK, DV, &[0.0; DK * DV]);
    let want = if p == 0 {
        vec![0.0; DK * DV]
    } else {
        states[p * L - 1].clone()
    };
    assert_close(&o.exclusive, &want, 1e-5, &format!("{ctx} n={n} exclusive"));
    assert_close(
        o.inclusive.as_ref().unwrap(),
        &states[(p + 1) * L - 1],
        1e-5,
        &format!("{ctx} n={n} inclusive"),
    );
}

/// Rank p's reverse prefixes = the backward recurrence at the boundaries.
pub fn check_reverse_rank(s: &Seq, n: usize, p: usize, o: &ScanOutput, ctx: &str) {
    let g = gla_grad_states(&s.q, &s.dout, &s.a, s.t, DK, DV);
    let want = if p + 1 == n {
        vec![0.0; DK * DV]
    } else {
        g[(p + 1) * L].clone()
    };
    assert_close(&o.exclusive, &want, 1e-5, &format!("{ctx} n={n} exclusive"));
    assert_close(
        o.inclusive.as_ref().unwrap(),
        &g[p * L],
        1e-5,
        &format!("{ctx} n={n} inclusive"),
    );
}

/// ZeCO linear attention on one rank: the intra-chunk part (local states from
/// zero) while nothing is known of the prefix, then the inter-chunk part per
/// row block of the incoming state, inside the All-Scan block callback, while
/// the next block is still moving. Returns this rank's outputs `[L, DV]`.
pub fn zeco_rank<F: Fabric + ?Sized>(f: &F, s: &Seq, blocks: usize, ch: u32) -> Vec<f32> {
    let p = f.rank();
    let r = tokens(p);
    let (state, gamma) = forward_local(s, p);
    let (k, v, a) = (
        &s.k[r.start * DK..r.end * DK],
        &s.v[r.start * DV..r.end * DV],
        &s.a[r.start * DK..r.end * DK],
    );
    let local = gla_states(k, v, a, L, DK, DV, &[0.0; DK * DV]);
    // cum[x][i] = ∏_{t ≤ x} a[t][i] within the chunk.
    let mut cum = vec![[1.0f64; DK]; L];
    for x in 0..L {
        for i in 0..DK {
            let prev = if x == 0 { 1.0 } else { cum[x - 1][i] };
            cum[x][i] = prev * a[x * DK + i] as f64;
        }
    }
    let q = |x: usize, i: usize| s.q[(r.start + x) * DK + i] as f64;
    // Intra-chunk: O_t = q_t · local_t.
    let mut out = [0.0f64; L * DV];
    for x in 0..L {
        for j in 0..DV {
            out[x * DV + j] = (0..DK).map(|i| q(x, i) * local[x][i * DV + j]).sum();
        }
    }
    // Inter-chunk, one row block of S_in at a time: O_t += Σ_{i ∈ rows} q_t[i] cum_t[i] S_in[i].
    let mut seen = Vec::new();
    let o = all_scan_diag_blocks(
        f,
        ch,
        DiagState {
            state: &state,
            decay: &gamma,
            cols: DV,
        },
        Forward,
        blocks,
        false,
        |b| {
            seen.push(b.index);
            for x in 0..L {
                for j in 0..DV {
                    out[x * DV + j] += b
                        .rows
                        .clone()
                        .enumerate()
                        .map(|(ri, i)| q(x, i) * cum[x][i] * b.exclusive[ri * DV + j] as f64)
                        .sum::<f64>();
                }
            }
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(seen, (0..blocks).collect::<Vec<_>>());
    assert_eq!(o.exclusive.len(), DK * DV);
    out.iter().map(|&x| x as f32).collect()
}

/// Checks rank p's ZeCO outputs against the single-device recurrence O_t = Q_t S_t.
pub fn check_zeco_rank(s: &Seq, p: usize, got: &[f32], ctx: &str) {
    let want = gla_outputs(&s.q, &s.k, &s.v, &s.a, s.t, DK, DV);
    let r = tokens(p);
    assert_close(got, &want[r.start * DV..r.end * DV], 1e-5, ctx);
}

/// All-Scan block callbacks run while later blocks are still moving, shown by
/// causality (no timing): in its callback for block 0, every rank but the
/// chain's last waits (deadline) for a token that the next rank sends from
/// *its* callback for block 0. The next rank can only get there if it was
/// handed block 0 before this rank sent block 1 — i.e. before its last block
/// arrived. A scan that only called back after the last block would
/// deadlock here and fail at the deadline. `side` is a channel of its own.
/// `before_token(prev)` runs in the block-0 callback of every rank that has a
/// predecessor, before the token is sent (the predecessor is then blocked).
/// Returns (exclusive from the callbacks, concatenated; the scan's output).
#[allow(clippy::too_many_arguments)]
pub fn scan_blocks_handshake<F: Fabric + ?Sized>(
    f: &F,
    state: &[f32],
    decay: &[f32],
    cols: usize,
    dir: ScanDirection,
    blocks: usize,
    ch: u32,
    side: u32,
    before_token: &dyn Fn(usize),
) -> (Vec<f32>, ScanOutput) {
    let (r, n) = (f.rank(), f.size());
    let (prev, next) = match dir {
        Forward => (r.checked_sub(1), (r + 1 < n).then_some(r + 1)),
        Reverse => ((r + 1 < n).then_some(r + 1), r.checked_sub(1)),
    };
    let mut from_callbacks = Vec::new();
    let out = all_scan_diag_blocks(
        f,
        ch,
        DiagState { state, decay, cols },
        dir,
        blocks,
        true,
        |b| {
            if b.index == 0 {
                if let Some(p) = prev {
                    before_token(p);
                    f.isend(p, side, 0xb0, vec![1])?.wait()?;
                }
                if let Some(nx) = next {
                    let got = wait_with_deadline(f.irecv(nx, side, 0xb0, 1)?, "block-0 token")?;
                    assert_eq!(got, vec![1]);
                }
            }
            from_callbacks.extend_from_slice(b.exclusive);
            Ok(())
        },
    )
    .unwrap();
    (from_callbacks, out)
}

// ---------------------------------------------------------------- two directions

/// Explicit deadline for the concurrency checks (independent of the fabric's).
pub const CHECK_DEADLINE: Duration = Duration::from_secs(15);

/// Polls a receive until it arrived or [`CHECK_DEADLINE`] passed.
pub fn wait_with_deadline(mut h: zccl_primitives::RecvHandle, what: &str) -> Result<Vec<u8>> {
    let deadline = Instant::now() + CHECK_DEADLINE;
    while !h.test()? {
        assert!(
            Instant::now() < deadline,
            "{what}: not complete within {CHECK_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    h.wait()
}

/// TokenRing's two directions progress independently: every rank posts its
/// `held` direction's send (a large block, `big` bytes, sized so that a
/// transport that needed the receiver could not buffer it all) but does not
/// post (or wait) the matching receive; the other direction then runs
/// `rounds` complete exchanges, each waited with a deadline. Then the held
/// receives are posted and waited, and both directions' data are checked.
///
/// Directions as in TokenRing: Q on `ch.q` to r+1 (non-causal), partial
/// outputs on `ch.out` to r-1. `hold_q` chooses which one is held.
pub fn two_directions_concurrent<F: Fabric + ?Sized>(
    f: &F,
    ch: TokenRingChannels,
    hold_q: bool,
    big: usize,
    rounds: usize,
) {
    let (r, n) = (f.rank(), f.size());
    let fill = |src: usize, i: usize| ((src * 31 + i * 7) % 251) as u8;
    let (held_ch, held_to, held_from, free_ch, free_to, free_from) = if hold_q {
        (
            ch.q,
            (r + 1) % n,
            (r + n - 1) % n,
            ch.out,
            (r + n - 1) % n,
            (r + 1) % n,
        )
    } else {
        (
            ch.out,
            (r + n - 1) % n,
            (r + 1) % n,
            ch.q,
            (r + 1) % n,
            (r + n - 1) % n,
        )
    };
    let held_send = f
        .isend(
            held_to,
            held_ch,
            0x5e1d,
            (0..big).map(|i| fill(r, i)).collect(),
        )
        .unwrap();
    // The held receive is NOT posted. The free direction must still complete.
    for k in 0..rounds {
        let s = f
            .isend(free_to, free_ch, k as u64, vec![(r + k) as u8; 64 + k])
            .unwrap();
        let got = wait_with_deadline(
            f.irecv(free_from, free_ch, k as u64, 64 + k).unwrap(),
            &format!("rank {r}: free direction round {k} while the other is held"),
        )
        .unwrap();
        assert_eq!(got, vec![(free_from + k) as u8; 64 + k]);
        s.wait().unwrap();
    }
    // Release: post and wait the held receive.
    let got = wait_with_deadline(
        f.irecv(held_from, held_ch, 0x5e1d, big).unwrap(),
        &format!("rank {r}: held direction after release"),
    )
    .unwrap();
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, &x)| x == fill(held_from, i))
    );
    held_send.wait().unwrap();
}

// ---------------------------------------------------------------- hashing

/// FNV-1a over the bits of some f32 vectors (to compare results across transports).
pub fn hash_f32(parts: &[&[f32]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for x in p.iter() {
            for b in x.to_bits().to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Runs SP case `name` as one rank of `f` (every rank runs the same case):
/// asserts this rank's results against the references and returns a hash of
/// its outputs' bits. Cases use channels 20..40.
pub fn run_case<F: Fabric + ?Sized>(name: &str, f: &F) -> u64 {
    let (r, n) = (f.rank(), f.size());
    match name {
        "ring_basic" => {
            let mut parts = Vec::new();
            for causal in [false, true] {
                let p = problem(n * 5, 10 + n as u64);
                let o = ring_attention_rank(f, &p, causal, false, 20);
                check_rows(
                    &full_reference(&p, causal),
                    &o.pos,
                    &o.out,
                    &o.lse,
                    &format!("ring basic causal={causal} n={n} rank {r}"),
                );
                parts.push(o.out);
                parts.push(o.lse);
            }
            hash_f32(&parts.iter().map(|v| v.as_slice()).collect::<Vec<_>>())
        }
        "ring_zigzag" => {
            let h = 3;
            let p = problem(2 * n * h, 100 + n as u64);
            let o = ring_attention_rank(f, &p, true, true, 21);
            check_rows(
                &full_reference(&p, true),
                &o.pos,
                &o.out,
                &o.lse,
                &format!("ring zigzag n={n} rank {r}"),
            );
            assert!(o.work[1..].iter().all(|&w| w == 2 * h * h), "{:?}", o.work);
            hash_f32(&[&o.out, &o.lse])
        }
        "token_ring" => {
            let mut parts = Vec::new();
            for zigzag in [false, true] {
                let h = 2;
                let p = problem(
                    token_ring_len(n, zigzag, h),
                    1000 + n as u64 + zigzag as u64,
                );
                let ch = TokenRingChannels { q: 22, out: 23 };
                let (pos, out, lse, merged) = token_ring_rank(f, &p, zigzag, h, ch);
                let ctx = format!("token_ring zigzag={zigzag} n={n} rank {r}");
                check_rows(&full_reference(&p, zigzag), &pos, &out, &lse, &ctx);
                check_merged_from(r, n, &merged, &ctx);
                parts.push(out);
                parts.push(lse);
            }
            hash_f32(&parts.iter().map(|v| v.as_slice()).collect::<Vec<_>>())
        }
        "two_directions" => {
            for hold_q in [true, false] {
                // 1 MiB: larger than the shared-memory rings of the process jobs
                // (they set ZCCL_SHM_RING_BYTES=256 KiB) and than socket buffers.
                two_directions_concurrent(
                    f,
                    TokenRingChannels { q: 24, out: 25 },
                    hold_q,
                    1 << 20,
                    4,
                );
            }
            0
        }
        "ulysses" => {
            let mut parts = Vec::new();
            for causal in [false, true] {
                let heads = 2 * n;
                let g = ulysses_problem(n, heads);
                let o = ulysses_rank(f, &g, heads, causal, 26);
                check_ulysses(&g, n, heads, causal, r, &o);
                parts.push(o);
            }
            check_ulysses_rejects(f, 26);
            hash_f32(&parts.iter().map(|v| v.as_slice()).collect::<Vec<_>>())
        }
        "all_scan" => {
            let mut parts = Vec::new();
            let s = seq(n, 7 + n as u64, random_decay);
            let fwd = diag_rank(f, &s, Forward, 28);
            check_k_bitwise_rank(&fwd, &format!("forward n={n} rank {r}"));
            check_forward_rank(&s, n, r, &fwd[0], &format!("forward rank {r}"));
            let s = seq(n, 300 + n as u64, random_decay);
            let rev = diag_rank(f, &s, Reverse, 29);
            check_k_bitwise_rank(&rev, &format!("reverse n={n} rank {r}"));
            check_reverse_rank(&s, n, r, &rev[0], &format!("reverse rank {r}"));
            let s = seq(n, 900 + n as u64, |g| g.range(0.5, 0.999) as f32);
            let z = zeco_rank(f, &s, 2, 30);
            check_zeco_rank(&s, r, &z, &format!("zeco n={n} rank {r}"));
            // Block callbacks overlap the chain (causal handshake) and are bit-identical.
            let (state, gamma) = forward_local(&s, r);
            let (cb, o) = scan_blocks_handshake(f, &state, &gamma, DV, Forward, 4, 31, 32, &|_| {});
            let plain = diag_rank(f, &s, Forward, 33);
            assert_eq!(bits(&cb), bits(&o.exclusive));
            assert_eq!(bits(&o.exclusive), bits(&plain[0].exclusive));
            for o in [&fwd[0], &rev[0]] {
                parts.push(o.exclusive.clone());
                parts.push(o.inclusive.clone().unwrap());
            }
            parts.push(z);
            hash_f32(&parts.iter().map(|v| v.as_slice()).collect::<Vec<_>>())
        }
        "a2a_v" => {
            let mut parts = Vec::new();
            for trial in 0..4u64 {
                let counts = a2a_counts(n, n as u64 * 100 + trial);
                parts.push(a2a_v_rank(f, &counts, 34));
            }
            hash_f32(&parts.iter().map(|v| v.as_slice()).collect::<Vec<_>>())
        }
        other => panic!("unknown case {other}"),
    }
}

/// Every SP case, in the order the workers run them.
pub const CASES: [&str; 7] = [
    "ring_basic",
    "ring_zigzag",
    "token_ring",
    "two_directions",
    "ulysses",
    "all_scan",
    "a2a_v",
];

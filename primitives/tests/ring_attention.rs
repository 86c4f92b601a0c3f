//! Ring attention (basic and causal zigzag) from ring_pass + attn_merge, and
//! TokenRing (non-causal and causal zigzag), against full attention.

mod common;

use std::sync::Arc;

use common::{Rng, attention_f32, attention_f64, max_err, rows_of};
use zccl_primitives::attn_merge::attn_merge_into;
use zccl_primitives::dtype::{as_bytes, from_bytes, to_bytes};
use zccl_primitives::fabric::tag;
use zccl_primitives::ring::ring_pass;
use zccl_primitives::sim::{SimConfig, try_run_ranks};
use zccl_primitives::token_ring::{TokenRingChannels, TokenRingKernel, token_ring};
use zccl_primitives::{Fabric, Result};

const D: usize = 8;
const TOL: f64 = 1e-5;

struct Problem {
    s: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    scale: f64,
}

fn problem(s: usize, seed: u64) -> Arc<Problem> {
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
fn positions(r: usize, n: usize, s: usize, zigzag: bool) -> Vec<usize> {
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

fn full_reference(p: &Problem, causal: bool) -> (Vec<f64>, Vec<f64>) {
    attention_f64(&p.q, &p.k, &p.v, p.s, p.s, D, D, p.scale, |i, j| {
        !causal || j <= i
    })
}

fn check_rank(
    p: &Problem,
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
    let _ = p;
}

/// Basic ring (contiguous layout, causal or not): KV circulates; Q stays.
#[test]
fn ring_attention_basic_matches_full_attention() {
    for causal in [false, true] {
        for n in 1..=8 {
            let p = problem(n * 5, 10 + n as u64);
            let reference = full_reference(&p, causal);
            let pp = p.clone();
            let outs = try_run_ranks(SimConfig::default(), n, move |f| {
                let (r, n) = (f.rank(), f.size());
                let pos = positions(r, n, pp.s, false);
                let q = rows_of(&pp.q, D, pos.iter().copied());
                let mut kv = rows_of(&pp.k, D, pos.iter().copied());
                kv.extend(rows_of(&pp.v, D, pos.iter().copied()));
                let c = pos.len();
                let mut out = vec![0.0f32; c * D];
                let mut lse = vec![f32::NEG_INFINITY; c];
                ring_pass(
                    f,
                    0,
                    1,
                    to_bytes(&kv),
                    |_| 2 * c * D * 4,
                    |b| {
                        let kv: Vec<f32> = from_bytes(b.data);
                        let kpos = positions(b.origin, n, pp.s, false);
                        let (o, l) = attention_f32(
                            &q,
                            &kv[..c * D],
                            &kv[c * D..],
                            c,
                            c,
                            D,
                            D,
                            pp.scale,
                            |i, j| !causal || kpos[j] <= pos[i],
                        );
                        attn_merge_into(&mut out, &mut lse, &o, &l)
                    },
                )
                .unwrap();
                (pos, out, lse)
            })
            .unwrap();
            for (r, (pos, out, lse)) in outs.results.iter().enumerate() {
                check_rank(
                    &p,
                    &reference,
                    pos,
                    out,
                    lse,
                    &format!("basic causal={causal} n={n} rank {r}"),
                );
            }
        }
    }
}

/// Causal zigzag ring (ring-flash-attention schedule): equal work per step.
#[test]
fn ring_attention_zigzag_matches_full_causal_attention() {
    for n in 1..=8 {
        let h = 3;
        let p = problem(2 * n * h, 100 + n as u64);
        let reference = full_reference(&p, true);
        let pp = p.clone();
        let outs = try_run_ranks(SimConfig::default(), n, move |f| {
            let (r, n) = (f.rank(), f.size());
            let pos = positions(r, n, pp.s, true);
            let q = rows_of(&pp.q, D, pos.iter().copied());
            let mut kv = rows_of(&pp.k, D, pos.iter().copied());
            kv.extend(rows_of(&pp.v, D, pos.iter().copied()));
            let c = 2 * h;
            let mut out = vec![0.0f32; c * D];
            let mut lse = vec![f32::NEG_INFINITY; c];
            let mut work = Vec::new();
            ring_pass(
                f,
                0,
                1,
                to_bytes(&kv),
                |_| 2 * c * D * 4,
                |b| {
                    let kv: Vec<f32> = from_bytes(b.data);
                    let (k, v) = (&kv[..c * D], &kv[c * D..]);
                    if b.step == 0 {
                        let (o, l) =
                            attention_f32(&q, k, v, c, c, D, D, pp.scale, |i, j| pos[j] <= pos[i]);
                        work.push(c * c);
                        attn_merge_into(&mut out, &mut lse, &o, &l)
                    } else if b.origin < r {
                        // Full Q against the first half of the received KV, no mask.
                        let (o, l) = attention_f32(
                            &q,
                            &k[..h * D],
                            &v[..h * D],
                            c,
                            h,
                            D,
                            D,
                            pp.scale,
                            |_, _| true,
                        );
                        work.push(c * h);
                        attn_merge_into(&mut out, &mut lse, &o, &l)
                    } else {
                        // Second half of Q against the full received KV, no mask.
                        let (o, l) =
                            attention_f32(&q[h * D..], k, v, h, c, D, D, pp.scale, |_, _| true);
                        work.push(h * c);
                        attn_merge_into(&mut out[h * D..], &mut lse[h..], &o, &l)
                    }
                },
            )
            .unwrap();
            (pos, out, lse, work)
        })
        .unwrap();
        for (r, (pos, out, lse, work)) in outs.results.iter().enumerate() {
            check_rank(
                &p,
                &reference,
                pos,
                out,
                lse,
                &format!("zigzag n={n} rank {r}"),
            );
            assert_eq!(work.len(), n);
            assert!(
                work[1..].iter().all(|&w| w == 2 * h * h),
                "unequal per-step work {work:?}"
            );
        }
    }
}

/// TokenRing kernel over f32 attention blocks. A block is `rows × (D + 1)`
/// values: out rows, then lse.
struct TrKernel {
    p: Arc<Problem>,
    rank: usize,
    n: usize,
    zigzag: bool,
    h: usize,
    /// This rank's K/V positions.
    kpos: Vec<usize>,
    k: Vec<f32>,
    v: Vec<f32>,
    out: Vec<f32>,
    lse: Vec<f32>,
    merged_from: Vec<(usize, usize)>,
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

fn run_token_ring(n: usize, zigzag: bool) {
    let h = 2;
    let s = if zigzag { 2 * n * h } else { n * 5 };
    let p = problem(s, 1000 + n as u64 + zigzag as u64);
    let reference = full_reference(&p, zigzag);
    let pp = p.clone();
    let ch = TokenRingChannels { q: 5, out: 6 };
    let run = try_run_ranks(SimConfig::default(), n, move |f| {
        let (r, n) = (f.rank(), f.size());
        let pos = positions(r, n, pp.s, zigzag);
        let c = pos.len();
        let mut kern = TrKernel {
            p: pp.clone(),
            rank: r,
            n,
            zigzag,
            h,
            k: rows_of(&pp.k, D, pos.iter().copied()),
            v: rows_of(&pp.v, D, pos.iter().copied()),
            kpos: pos.clone(),
            out: vec![0.0; c * D],
            lse: vec![f32::NEG_INFINITY; c],
            merged_from: Vec::new(),
        };
        let q = rows_of(&pp.q, D, pos.iter().copied());
        token_ring(
            f,
            ch,
            if zigzag { -1 } else { 1 },
            as_bytes(&q).to_vec(),
            &mut kern,
        )
        .unwrap();
        (pos, kern.out, kern.lse, kern.merged_from)
    })
    .unwrap();
    for (r, (pos, out, lse, merged)) in run.results.iter().enumerate() {
        let ctx = format!("token_ring zigzag={zigzag} n={n} rank {r}");
        check_rank(&p, &reference, pos, out, lse, &ctx);
        // Own block first, then exactly n-1 foreign blocks, one from every other rank.
        assert_eq!(merged[0], (r, 0), "{ctx}");
        let mut from: Vec<usize> = merged[1..].iter().map(|m| m.0).collect();
        from.sort();
        assert_eq!(
            from,
            (0..n).filter(|&x| x != r).collect::<Vec<_>>(),
            "{ctx}"
        );
        // The fabric agrees: n-1 messages on the out channel reach r, one per other rank.
        let mut srcs: Vec<usize> = run
            .log
            .iter()
            .filter(|m| m.channel == ch.out && m.dst == r)
            .map(|m| m.src)
            .collect();
        srcs.sort();
        assert_eq!(from, srcs, "{ctx}");
    }
    // Q traffic: n-1 shifts per rank; zigzag sends half Q exactly when the receiver wraps.
    for m in run.log.iter().filter(|m| m.channel == ch.q) {
        let step = ((m.tag >> 32) & 0xffff) as usize;
        assert_eq!(m.tag, tag(0x30, step as u16, 0));
        let half = zigzag && m.dst + step + 1 >= n;
        let want = if half {
            h
        } else if zigzag {
            2 * h
        } else {
            s / n
        };
        assert_eq!(m.len, want * D * 4, "q message {m:?}");
        assert_eq!(
            m.dst,
            if zigzag {
                (m.src + n - 1) % n
            } else {
                (m.src + 1) % n
            }
        );
    }
    assert_eq!(
        run.log.iter().filter(|m| m.channel == ch.q).count(),
        n * (n - 1)
    );
}

#[test]
fn token_ring_non_causal_matches_full_attention() {
    for n in 1..=8 {
        run_token_ring(n, false);
    }
}

#[test]
fn token_ring_causal_zigzag_matches_full_attention() {
    for n in 1..=8 {
        run_token_ring(n, true);
    }
}

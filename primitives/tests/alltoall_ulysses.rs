//! all_to_all(_v) and Ulysses resharding / attention.

mod common;

use std::sync::Arc;

use common::{Rng, attention_f64, max_err};
use zccl_primitives::alltoall::{all_to_all, all_to_all_v};
use zccl_primitives::layout::{UlyssesShape, heads_to_seq, seq_to_heads};
use zccl_primitives::sim::run_ranks;
use zccl_primitives::{Error, Fabric};

#[test]
fn all_to_all_equal_splits() {
    for n in 1..=8 {
        for per in [0usize, 1, 5] {
            let outs = run_ranks(n, move |f| {
                let r = f.rank() as i64;
                let input: Vec<i64> = (0..n * per).map(|i| r * 1_000_000 + i as i64).collect();
                all_to_all(f, 0, &input).unwrap()
            });
            for (r, o) in outs.iter().enumerate() {
                let want: Vec<i64> = (0..n)
                    .flat_map(|i| {
                        (0..per).map(move |x| i as i64 * 1_000_000 + (r * per + x) as i64)
                    })
                    .collect();
                assert_eq!(*o, want, "n={n} per={per} rank {r}");
            }
        }
    }
}

#[test]
fn all_to_all_v_random_uneven_splits_with_zero_length_chunks() {
    for n in 1..=8 {
        for trial in 0..4u64 {
            let mut rng = Rng::new(n as u64 * 100 + trial);
            // counts[i][j]: elements rank i sends to rank j; ~1/3 are zero.
            let counts: Vec<Vec<usize>> = (0..n)
                .map(|_| {
                    (0..n)
                        .map(|_| if rng.below(3) == 0 { 0 } else { rng.below(9) })
                        .collect()
                })
                .collect();
            let counts = Arc::new(counts);
            let c2 = counts.clone();
            let outs = run_ranks(n, move |f| {
                let r = f.rank();
                let send: Vec<usize> = c2[r].clone();
                let recv: Vec<usize> = (0..n).map(|i| c2[i][r]).collect();
                let input: Vec<f32> = (0..n)
                    .flat_map(|j| (0..send[j]).map(move |x| (r * 10_000 + j * 100 + x) as f32))
                    .collect();
                all_to_all_v(f, 0, &input, &send, &recv).unwrap()
            });
            for (r, o) in outs.iter().enumerate() {
                let want: Vec<f32> = (0..n)
                    .flat_map(|i| (0..counts[i][r]).map(move |x| (i * 10_000 + r * 100 + x) as f32))
                    .collect();
                assert_eq!(*o, want, "n={n} trial={trial} rank {r}");
            }
        }
    }
}

#[test]
fn all_to_all_rejects_bad_arguments() {
    let errs = run_ranks(3, |f| {
        let a = all_to_all(f, 0, &[1u8, 2]).unwrap_err();
        let b = all_to_all_v(f, 1, &[1u8, 2], &[1, 0, 0], &[0, 0, 0]).unwrap_err();
        (a.to_string(), b.to_string())
    });
    assert!(
        errs[0]
            .0
            .contains("2 elements do not split evenly over 3 ranks"),
        "{}",
        errs[0].0
    );
    assert!(
        errs[0].1.contains("send counts add up to 1, input has 2"),
        "{}",
        errs[0].1
    );
}

const B: usize = 2;
const C: usize = 3;
const DH: usize = 4;

/// Global tensors [B, S, H, d] → index.
fn idx(s: usize, h: usize, b: usize, t: usize, head: usize, x: usize) -> usize {
    ((b * s + t) * h + head) * DH + x
}

#[test]
fn ulysses_attention_equals_full_attention() {
    for n in 1..=4 {
        for causal in [false, true] {
            let heads = 2 * n;
            let s = C * n;
            let mut rng = Rng::new(77 + n as u64);
            let (q, k, v) = (
                rng.vec_f32(B * s * heads * DH, -1.0, 1.0),
                rng.vec_f32(B * s * heads * DH, -1.0, 1.0),
                rng.vec_f32(B * s * heads * DH, -1.0, 1.0),
            );
            let g = Arc::new((q, k, v));
            let g2 = g.clone();
            let shape = UlyssesShape {
                batch: B,
                seq_local: C,
                heads,
                dim: DH,
            };
            let outs = run_ranks(n, move |f| {
                let r = f.rank();
                let shard = |x: &[f32]| -> Vec<f32> {
                    (0..B)
                        .flat_map(|b| {
                            (0..C).flat_map(move |t| {
                                (0..heads).flat_map(move |h| (0..DH).map(move |e| (b, t, h, e)))
                            })
                        })
                        .map(|(b, t, h, e)| x[idx(s, heads, b, r * C + t, h, e)])
                        .collect()
                };
                let (ql, kl, vl) = (shard(&g2.0), shard(&g2.1), shard(&g2.2));
                let qh = seq_to_heads(f, 0, &ql, shape).unwrap();
                let kh = seq_to_heads(f, 0, &kl, shape).unwrap();
                let vh = seq_to_heads(f, 0, &vl, shape).unwrap();
                assert_eq!(
                    heads_to_seq(f, 0, &qh, shape).unwrap(),
                    ql,
                    "round trip is the identity"
                );
                // Local attention on [B, S, H/P, d] per (batch, local head), full sequence.
                let hp = heads / n;
                let mut oh = vec![0.0f32; qh.len()];
                for b in 0..B {
                    for h in 0..hp {
                        let pick = |x: &[f32]| -> Vec<f32> {
                            (0..s)
                                .flat_map(|t| (0..DH).map(move |e| (t, e)))
                                .map(|(t, e)| x[((b * s + t) * hp + h) * DH + e])
                                .collect()
                        };
                        let (o, _) = attention_f64(
                            &pick(&qh),
                            &pick(&kh),
                            &pick(&vh),
                            s,
                            s,
                            DH,
                            DH,
                            0.5,
                            |i, j| !causal || j <= i,
                        );
                        for t in 0..s {
                            for e in 0..DH {
                                oh[((b * s + t) * hp + h) * DH + e] = o[t * DH + e] as f32;
                            }
                        }
                    }
                }
                heads_to_seq(f, 1, &oh, shape).unwrap()
            });
            for (r, o) in outs.iter().enumerate() {
                for b in 0..B {
                    for h in 0..heads {
                        let pick = |x: &[f32]| -> Vec<f32> {
                            (0..s)
                                .flat_map(|t| (0..DH).map(move |e| (t, e)))
                                .map(|(t, e)| x[idx(s, heads, b, t, h, e)])
                                .collect()
                        };
                        let (want, _) = attention_f64(
                            &pick(&g.0),
                            &pick(&g.1),
                            &pick(&g.2),
                            s,
                            s,
                            DH,
                            DH,
                            0.5,
                            |i, j| !causal || j <= i,
                        );
                        let got: Vec<f32> = (0..C)
                            .flat_map(|t| (0..DH).map(move |e| (t, e)))
                            .map(|(t, e)| o[((b * C + t) * heads + h) * DH + e])
                            .collect();
                        let wantr: Vec<f64> = (0..C)
                            .flat_map(|t| (0..DH).map(move |e| (t, e)))
                            .map(|(t, e)| want[(r * C + t) * DH + e])
                            .collect();
                        assert!(
                            max_err(&got, &wantr) <= 1e-6,
                            "n={n} causal={causal} rank {r} b={b} h={h}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn ulysses_rejects_heads_not_divisible() {
    let errs = run_ranks(4, |f| {
        let shape = UlyssesShape {
            batch: 1,
            seq_local: 2,
            heads: 6,
            dim: 2,
        };
        seq_to_heads(f, 0, &[0.0f32; 24], shape).unwrap_err()
    });
    for e in errs {
        assert_eq!(e, Error::HeadsNotDivisible { heads: 6, ranks: 4 });
        assert_eq!(
            e.to_string(),
            "Ulysses: 6 heads cannot be split evenly over 4 ranks (heads % ranks = 2)"
        );
    }
}

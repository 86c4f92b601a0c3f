//! All-Scan (ZeCO) against sequential GLA recurrences; ZeCO linear attention end to end.

mod common;

use std::sync::Arc;

use common::sp::{
    DK, DV, KS, L, Seq, assert_close, bits, check_forward_rank, check_k_bitwise_rank,
    check_reverse_rank, check_zeco_rank, diag_rank, forward_local, random_decay,
    scan_blocks_handshake, seq, tokens, zeco_rank,
};
use common::{Rng, gla_states};
use zccl_primitives::Fabric;
use zccl_primitives::scan::{
    DiagState, OwnedDiagState, ScanOutput, all_scan_diag, all_scan_with, iall_scan_diag,
};
use zccl_primitives::schedule::scan::ScanDirection::{self, Forward, Reverse};
use zccl_primitives::sim::{SimConfig, run_ranks, try_run_ranks};

fn run_diag(s: Arc<Seq>, n: usize, dir: ScanDirection) -> Vec<Vec<ScanOutput>> {
    run_ranks(n, move |f| diag_rank(f, &s, dir, 0))
}

fn check_k_bitwise(outs: &[Vec<ScanOutput>], ctx: &str) {
    for (p, per_k) in outs.iter().enumerate() {
        check_k_bitwise_rank(per_k, &format!("{ctx}: rank {p}"));
    }
}

#[test]
fn forward_exclusive_prefix_is_the_boundary_state() {
    for n in 1..=8 {
        let s = seq(n, 7 + n as u64, random_decay);
        let outs = run_diag(s.clone(), n, Forward);
        check_k_bitwise(&outs, &format!("forward n={n}"));
        for (p, o) in outs.iter().enumerate() {
            check_forward_rank(&s, n, p, &o[0], &format!("forward rank {p}"));
        }
    }
}

#[test]
fn decay_one_is_a_prefix_sum_and_decay_zero_resets() {
    for n in 1..=8 {
        // Decay 1: exclusive(p) is the f32 left fold of the local states, bit for bit.
        let s = seq(n, 50 + n as u64, |_| 1.0);
        let outs = run_diag(s.clone(), n, Forward);
        check_k_bitwise(&outs, "decay 1");
        let mut acc = vec![0.0f32; DK * DV];
        for (p, o) in outs.iter().enumerate() {
            assert_eq!(bits(&o[0].exclusive), bits(&acc), "decay 1 n={n} rank {p}");
            let (st, g) = forward_local(&s, p);
            assert!(g.iter().all(|&x| x == 1.0));
            if p == 0 {
                acc = st;
            } else {
                for (a, x) in acc.iter_mut().zip(st) {
                    *a += x;
                }
            }
        }
        // Decay 0 on the first token of rank z: the prefix restarts there.
        let z = n / 2;
        let base = seq(n, 80 + n as u64, |r| r.range(0.05, 0.999) as f32);
        let mut s2 = Seq {
            t: base.t,
            q: base.q.clone(),
            k: base.k.clone(),
            v: base.v.clone(),
            a: base.a.clone(),
            dout: base.dout.clone(),
        };
        for i in 0..DK {
            s2.a[z * L * DK + i] = 0.0;
        }
        let s2 = Arc::new(s2);
        let outs = run_diag(s2.clone(), n, Forward);
        let (st_z, g_z) = forward_local(&s2, z);
        assert!(g_z.iter().all(|&x| x == 0.0));
        assert_eq!(
            bits(outs[z][0].inclusive.as_ref().unwrap()),
            bits(&st_z),
            "decay 0 n={n}: inclusive(z) = local state"
        );
        if z + 1 < n {
            assert_eq!(
                bits(&outs[z + 1][0].exclusive),
                bits(&st_z),
                "decay 0 n={n}: exclusive(z+1) = S_z"
            );
        }
    }
}

#[test]
fn reverse_scan_equals_backward_recurrence() {
    for n in 1..=8 {
        let s = seq(n, 300 + n as u64, random_decay);
        let outs = run_diag(s.clone(), n, Reverse);
        check_k_bitwise(&outs, &format!("reverse n={n}"));
        for (p, o) in outs.iter().enumerate() {
            check_reverse_rank(&s, n, p, &o[0], &format!("reverse rank {p}"));
        }
    }
}

/// ZeCO: the scan runs on a progress thread ([`iall_scan_diag`]) while the
/// caller computes the intra-chunk part; then the inter-chunk part.
#[test]
fn zeco_linear_attention_equals_single_device_recurrence() {
    for n in 1..=8 {
        let s = seq(n, 900 + n as u64, |r| r.range(0.5, 0.999) as f32);
        let ss = s.clone();
        let outs = run_ranks(n, move |f| {
            let p = f.rank();
            let r = tokens(p);
            let (state, decay) = forward_local(&ss, p);
            let scan = iall_scan_diag(
                Arc::new(f.clone()),
                0,
                OwnedDiagState {
                    state,
                    decay,
                    cols: DV,
                },
                Forward,
                2,
                false,
            );
            let (k, v, a) = (
                &ss.k[r.start * DK..r.end * DK],
                &ss.v[r.start * DV..r.end * DV],
                &ss.a[r.start * DK..r.end * DK],
            );
            let local = gla_states(k, v, a, L, DK, DV, &[0.0; DK * DV]);
            let s_in = scan.wait().unwrap().exclusive;
            let mut out = vec![0.0f32; L * DV];
            let mut cum = [1.0f64; DK];
            for x in 0..L {
                for (i, c) in cum.iter_mut().enumerate() {
                    *c *= a[x * DK + i] as f64;
                }
                for j in 0..DV {
                    let o: f64 = (0..DK)
                        .map(|i| {
                            ss.q[(r.start + x) * DK + i] as f64
                                * (local[x][i * DV + j] + cum[i] * s_in[i * DV + j] as f64)
                        })
                        .sum();
                    out[x * DV + j] = o as f32;
                }
            }
            out
        });
        for (p, got) in outs.iter().enumerate() {
            check_zeco_rank(&s, p, got, &format!("zeco n={n} rank {p}"));
        }
    }
}

/// ZeCO with the inter-chunk part computed per row block inside the All-Scan
/// block callback (while later blocks are still moving), for every K.
#[test]
fn zeco_with_block_callbacks_equals_single_device_recurrence() {
    for n in 1..=8 {
        let s = seq(n, 950 + n as u64, |r| r.range(0.5, 0.999) as f32);
        for k in KS {
            let ss = s.clone();
            let outs = run_ranks(n, move |f| zeco_rank(f, &ss, k, 0));
            for (p, got) in outs.iter().enumerate() {
                check_zeco_rank(&s, p, got, &format!("zeco blocks n={n} K={k} rank {p}"));
            }
        }
    }
}

/// The block callback for block 0 runs before the last block arrived (shown
/// by causality: see `scan_blocks_handshake`, plus the fabric log: when a
/// rank's callback for block 0 runs, its predecessor has not posted block 1),
/// and the blocks handed to the callbacks and the result are bit-identical to
/// the plain [`all_scan_diag`].
#[test]
fn block_callbacks_run_while_later_blocks_move() {
    let cfg = SimConfig {
        op_timeout: std::time::Duration::from_secs(10),
        ..Default::default()
    };
    for n in [2usize, 3, 5, 8] {
        for dir in [Forward, Reverse] {
            for k in [2usize, 4, DK] {
                let s = seq(n, 4000 + n as u64, random_decay);
                let run = try_run_ranks(cfg.clone(), n, move |f| {
                    let (state, gamma) = forward_local(&s, f.rank());
                    let (cb, o) =
                        scan_blocks_handshake(f, &state, &gamma, DV, dir, k, 1, 2, &|prev| {
                            // Called in the block-0 callback, before our token frees `prev`.
                            // (Blocks only: the direction check's message is empty.)
                            let later = f
                                .log()
                                .iter()
                                .filter(|m| {
                                    m.channel == 1
                                        && m.src == prev
                                        && m.dst == f.rank()
                                        && m.len > 0
                                })
                                .count();
                            assert_eq!(later, 1, "only block 0 from rank {prev} was posted");
                        });
                    let plain = all_scan_diag(
                        f,
                        3,
                        DiagState {
                            state: &state,
                            decay: &gamma,
                            cols: DV,
                        },
                        dir,
                        1,
                        true,
                    )
                    .unwrap();
                    assert_eq!(bits(&cb), bits(&o.exclusive));
                    assert_eq!(o, plain);
                    assert_eq!(bits(&o.exclusive), bits(&plain.exclusive));
                    f.rank()
                })
                .unwrap_or_else(|e| panic!("n={n} {dir:?} K={k}: {e}"));
                assert_eq!(run.results, (0..n).collect::<Vec<_>>());
            }
        }
    }
}

/// Full-matrix transitions (delta-rule style) through the closure combine.
#[test]
fn closure_combine_full_matrix_forward_and_reverse() {
    const D2: usize = 3;
    fn combine(a: &[f32], b: &[f32]) -> Vec<f32> {
        // (M1, S1) ⊕ (M2, S2) = (M2 M1, M2 S1 + S2), all D2 x D2, computed in f64.
        let (m1, s1) = a.split_at(D2 * D2);
        let (m2, s2) = b.split_at(D2 * D2);
        let mut out = vec![0.0f32; 2 * D2 * D2];
        for i in 0..D2 {
            for j in 0..D2 {
                let mm: f64 = (0..D2)
                    .map(|x| m2[i * D2 + x] as f64 * m1[x * D2 + j] as f64)
                    .sum();
                let ms: f64 = (0..D2)
                    .map(|x| m2[i * D2 + x] as f64 * s1[x * D2 + j] as f64)
                    .sum::<f64>()
                    + s2[i * D2 + j] as f64;
                out[i * D2 + j] = mm as f32;
                out[D2 * D2 + i * D2 + j] = ms as f32;
            }
        }
        out
    }
    let elem = |p: usize| -> Vec<f32> {
        let mut rng = Rng::new(4242 + p as u64);
        rng.vec_f32(2 * D2 * D2, -0.7, 0.7)
    };
    let mut identity = vec![0.0f32; 2 * D2 * D2];
    for i in 0..D2 {
        identity[i * D2 + i] = 1.0;
    }
    for n in 1..=8 {
        for dir in [Forward, Reverse] {
            let id = identity.clone();
            let outs = run_ranks(n, move |f| {
                all_scan_with(f, 0, &elem(f.rank()), dir, &id, combine, true).unwrap()
            });
            for (p, o) in outs.iter().enumerate() {
                // Reference: S <- M_j S + S_j chained in scan order from S = 0, in f64.
                let order: Vec<usize> = if dir == Forward {
                    (0..p).collect()
                } else {
                    (p + 1..n).rev().collect()
                };
                let mut s = [0.0f64; D2 * D2];
                for j in order {
                    let e = elem(j);
                    let (m, sj) = e.split_at(D2 * D2);
                    let mut ns = [0.0f64; D2 * D2];
                    for i in 0..D2 {
                        for c in 0..D2 {
                            ns[i * D2 + c] = (0..D2)
                                .map(|x| m[i * D2 + x] as f64 * s[x * D2 + c])
                                .sum::<f64>()
                                + sj[i * D2 + c] as f64;
                        }
                    }
                    s = ns;
                }
                assert_close(
                    &o.exclusive[D2 * D2..],
                    &s,
                    1e-5,
                    &format!("closure {dir:?} n={n} rank {p}"),
                );
                let first = if dir == Forward { p == 0 } else { p + 1 == n };
                if first {
                    assert_eq!(o.exclusive, identity);
                    assert_eq!(o.inclusive.as_ref().unwrap(), &elem(p));
                }
            }
        }
    }
}

#[test]
fn invalid_block_counts_are_rejected() {
    let errs = run_ranks(2, |f| {
        let st = [0.0f32; DK * DV];
        let g = [1.0f32; DK];
        let e0 = all_scan_diag(
            f,
            0,
            DiagState {
                state: &st,
                decay: &g,
                cols: DV,
            },
            Forward,
            0,
            false,
        )
        .unwrap_err();
        let e9 = all_scan_diag(
            f,
            0,
            DiagState {
                state: &st,
                decay: &g,
                cols: DV,
            },
            Forward,
            DK + 1,
            false,
        )
        .unwrap_err();
        (e0.to_string(), e9.to_string())
    });
    assert!(errs[0].0.contains("0 blocks for 8 rows"), "{}", errs[0].0);
    assert!(errs[0].1.contains("9 blocks for 8 rows"), "{}", errs[0].1);
}

/// `rows × cols` that wraps around (cols = 2^63, 2 rows: 0) is refused on
/// every rank before anything is sent: it matched an empty state, and the
/// blocks then indexed past it (a panic on one rank, a timeout on the
/// other).
#[test]
fn a_state_whose_size_wraps_around_is_refused_on_every_rank() {
    for blocks in [1, 2] {
        let out = run_ranks(2, move |f| {
            let local = DiagState {
                state: &[],
                decay: &[1.0, 1.0],
                cols: 1 << 63,
            };
            all_scan_diag(f, 0, local, Forward, blocks, false)
                .map(drop)
                .map_err(|e| e.to_string())
        });
        for (r, o) in out.iter().enumerate() {
            let msg = o.as_ref().unwrap_err();
            assert!(
                msg.contains("expected 2 rows x 9223372036854775808 cols"),
                "blocks {blocks} rank {r}: {msg}"
            );
        }
    }
}

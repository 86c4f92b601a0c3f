//! All-Scan (ZeCO) against sequential GLA recurrences; ZeCO linear attention end to end.

mod common;

use std::sync::Arc;

use common::{Rng, gla_grad_states, gla_outputs, gla_states};
use zccl_primitives::Fabric;
use zccl_primitives::scan::{DiagState, ScanOutput, all_scan_diag, all_scan_with};
use zccl_primitives::schedule::scan::ScanDirection::{self, Forward, Reverse};
use zccl_primitives::sim::run_ranks;

const DK: usize = 8;
const DV: usize = 3;
const L: usize = 4; // tokens per rank
const KS: [usize; 4] = [1, 2, 4, DK];

struct Seq {
    t: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    a: Vec<f32>,
    dout: Vec<f32>,
}

fn seq(n: usize, seed: u64, decay: impl Fn(&mut Rng) -> f32) -> Arc<Seq> {
    let mut rng = Rng::new(seed);
    let t = n * L;
    Arc::new(Seq {
        t,
        q: rng.vec_f32(t * DK, -1.0, 1.0),
        k: rng.vec_f32(t * DK, -1.0, 1.0),
        v: rng.vec_f32(t * DV, -1.0, 1.0),
        a: (0..t * DK).map(|_| decay(&mut rng)).collect(),
        dout: rng.vec_f32(t * DV, -1.0, 1.0),
    })
}

fn tokens(p: usize) -> std::ops::Range<usize> {
    p * L..(p + 1) * L
}

/// Rank p's forward scan element: local state from zero and the chunk's cumulative decay.
fn forward_local(s: &Seq, p: usize) -> (Vec<f32>, Vec<f32>) {
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
fn reverse_local(s: &Seq, p: usize) -> (Vec<f32>, Vec<f32>) {
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

fn run_diag(s: Arc<Seq>, n: usize, dir: ScanDirection) -> Vec<Vec<ScanOutput>> {
    run_ranks(n, move |f| {
        let p = f.rank();
        let (state, gamma) = if dir == Forward {
            forward_local(&s, p)
        } else {
            reverse_local(&s, p)
        };
        KS.iter()
            .map(|&k| {
                all_scan_diag(
                    f,
                    0,
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
    })
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, ctx: &str) {
    let e = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max);
    assert!(e <= tol, "{ctx}: max err {e:e}");
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn check_k_bitwise(outs: &[Vec<ScanOutput>], ctx: &str) {
    for (p, per_k) in outs.iter().enumerate() {
        for o in &per_k[1..] {
            assert_eq!(
                bits(&o.exclusive),
                bits(&per_k[0].exclusive),
                "{ctx}: rank {p} exclusive differs across K"
            );
            assert_eq!(
                bits(o.inclusive.as_ref().unwrap()),
                bits(per_k[0].inclusive.as_ref().unwrap()),
                "{ctx}: rank {p} inclusive differs across K"
            );
        }
    }
}

#[test]
fn forward_exclusive_prefix_is_the_boundary_state() {
    for n in 1..=8 {
        let s = seq(n, 7 + n as u64, |r| r.range(0.05, 0.999) as f32);
        let outs = run_diag(s.clone(), n, Forward);
        check_k_bitwise(&outs, &format!("forward n={n}"));
        let states = gla_states(&s.k, &s.v, &s.a, s.t, DK, DV, &[0.0; DK * DV]);
        for (p, o) in outs.iter().enumerate() {
            let want = if p == 0 {
                vec![0.0; DK * DV]
            } else {
                states[p * L - 1].clone()
            };
            assert_close(
                &o[0].exclusive,
                &want,
                1e-5,
                &format!("forward n={n} rank {p} exclusive"),
            );
            assert_close(
                o[0].inclusive.as_ref().unwrap(),
                &states[(p + 1) * L - 1],
                1e-5,
                &format!("n={n} rank {p} inclusive"),
            );
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
        let s = seq(n, 300 + n as u64, |r| r.range(0.05, 0.999) as f32);
        let outs = run_diag(s.clone(), n, Reverse);
        check_k_bitwise(&outs, &format!("reverse n={n}"));
        let g = gla_grad_states(&s.q, &s.dout, &s.a, s.t, DK, DV);
        for (p, o) in outs.iter().enumerate() {
            let want = if p + 1 == n {
                vec![0.0; DK * DV]
            } else {
                g[(p + 1) * L].clone()
            };
            assert_close(
                &o[0].exclusive,
                &want,
                1e-5,
                &format!("reverse n={n} rank {p} exclusive"),
            );
            assert_close(
                o[0].inclusive.as_ref().unwrap(),
                &g[p * L],
                1e-5,
                &format!("reverse n={n} rank {p} inclusive"),
            );
        }
    }
}

#[test]
fn zeco_linear_attention_equals_single_device_recurrence() {
    for n in 1..=8 {
        let s = seq(n, 900 + n as u64, |r| r.range(0.5, 0.999) as f32);
        let want = gla_outputs(&s.q, &s.k, &s.v, &s.a, s.t, DK, DV);
        let ss = s.clone();
        let outs = run_ranks(n, move |f| {
            let p = f.rank();
            let r = tokens(p);
            let (state, gamma) = forward_local(&ss, p);
            // Overlap: the scan runs on a helper thread while this thread does the
            // intra-chunk part (local states from a zero initial state).
            std::thread::scope(|sc| {
                let scan = sc.spawn(|| {
                    all_scan_diag(
                        f,
                        0,
                        DiagState {
                            state: &state,
                            decay: &gamma,
                            cols: DV,
                        },
                        Forward,
                        2,
                        false,
                    )
                    .unwrap()
                });
                let (k, v, a) = (
                    &ss.k[r.start * DK..r.end * DK],
                    &ss.v[r.start * DV..r.end * DV],
                    &ss.a[r.start * DK..r.end * DK],
                );
                let local = gla_states(k, v, a, L, DK, DV, &[0.0; DK * DV]);
                let s_in = scan.join().unwrap().exclusive;
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
            })
        });
        let got: Vec<f32> = outs.concat();
        assert_close(&got, &want, 1e-5, &format!("zeco n={n}"));
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

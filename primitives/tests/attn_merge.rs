//! Properties of the FlashAttention-2 LSE merge.

mod common;

use common::{Rng, attention_f64};
use zccl_primitives::attn_merge::{attn_merge, attn_merge_n};

const NINF: f32 = f32::NEG_INFINITY;

fn part(rng: &mut Rng, rows: usize, d: usize, lse_scale: f64) -> (Vec<f32>, Vec<f32>) {
    (
        rng.vec_f32(rows * d, -1.0, 1.0),
        rng.vec_f32(rows, -lse_scale, lse_scale),
    )
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x == y) || (x - y).abs() <= tol)
}

#[test]
fn commutative_and_associative() {
    let mut rng = Rng::new(1);
    for scale in [1.0, 30.0, 1e4] {
        for _ in 0..50 {
            let (a, b, c) = (
                part(&mut rng, 5, 4, scale),
                part(&mut rng, 5, 4, scale),
                part(&mut rng, 5, 4, scale),
            );
            let ab = attn_merge(&a.0, &a.1, &b.0, &b.1).unwrap();
            let ba = attn_merge(&b.0, &b.1, &a.0, &a.1).unwrap();
            assert_eq!(ab, ba, "bitwise commutative");
            let ab_c = attn_merge(&ab.0, &ab.1, &c.0, &c.1).unwrap();
            let bc = attn_merge(&b.0, &b.1, &c.0, &c.1).unwrap();
            let a_bc = attn_merge(&a.0, &a.1, &bc.0, &bc.1).unwrap();
            assert!(
                close(&ab_c.0, &a_bc.0, 1e-6),
                "out {:?} vs {:?}",
                ab_c.0,
                a_bc.0
            );
            let tol_l = 1e-6f32.max(scale as f32 * 2e-7);
            assert!(
                close(&ab_c.1, &a_bc.1, tol_l),
                "lse {:?} vs {:?}",
                ab_c.1,
                a_bc.1
            );
            let n3 = attn_merge_n(&[(&a.0, &a.1), (&b.0, &b.1), (&c.0, &c.1)]).unwrap();
            assert!(close(&n3.0, &ab_c.0, 1e-6) && close(&n3.1, &ab_c.1, tol_l));
        }
    }
}

#[test]
fn identity_and_fully_masked_rows() {
    let mut rng = Rng::new(2);
    let a = part(&mut rng, 3, 2, 5.0);
    let id = (vec![0.0f32; 6], vec![NINF; 3]);
    assert_eq!(attn_merge(&a.0, &a.1, &id.0, &id.1).unwrap(), a);
    assert_eq!(attn_merge(&id.0, &id.1, &a.0, &a.1).unwrap(), a);
    let both = attn_merge(&id.0, &id.1, &id.0, &id.1).unwrap();
    assert_eq!(both, id);
    assert!(both.0.iter().all(|x| !x.is_nan()));
    let n = attn_merge_n(&[(&id.0, &id.1), (&id.0, &id.1)]).unwrap();
    assert_eq!(n, id);
}

#[test]
fn huge_lse_does_not_overflow() {
    for (l1, l2) in [
        (1e4f32, 1e4f32),
        (-1e4, -1e4),
        (1e4, -1e4),
        (1e4, 1e4 - 1.0),
    ] {
        let (o, l) = attn_merge(&[1.0, 2.0], &[l1], &[3.0, 4.0], &[l2]).unwrap();
        assert!(
            o.iter().chain(&l).all(|x| x.is_finite()),
            "{l1} {l2}: {o:?} {l:?}"
        );
        assert!(l[0] >= l1.max(l2) && l[0] <= l1.max(l2) + 2f32.ln() + 1e-3);
    }
}

#[test]
fn merging_any_key_split_equals_direct_attention() {
    let mut rng = Rng::new(3);
    let (sq, sk, d) = (4, 24, 8);
    for _ in 0..20 {
        let q = rng.vec_f32(sq * d, -2.0, 2.0);
        let k = rng.vec_f32(sk * d, -2.0, 2.0);
        let v = rng.vec_f32(sk * d, -1.0, 1.0);
        let (want_o, want_l) = attention_f64(&q, &k, &v, sq, sk, d, d, 0.35, |_, _| true);
        // Random split of the keys into 1..=8 parts (some may be empty: lse = -inf).
        let parts = 1 + rng.below(8);
        let owner: Vec<usize> = (0..sk).map(|_| rng.below(parts)).collect();
        let blocks: Vec<(Vec<f32>, Vec<f32>)> = (0..parts)
            .map(|pi| {
                let (o, l) = attention_f64(&q, &k, &v, sq, sk, d, d, 0.35, |_, j| owner[j] == pi);
                (
                    o.iter().map(|&x| x as f32).collect(),
                    l.iter().map(|&x| x as f32).collect(),
                )
            })
            .collect();
        let refs: Vec<(&[f32], &[f32])> = blocks
            .iter()
            .map(|(o, l)| (o.as_slice(), l.as_slice()))
            .collect();
        let (o, l) = attn_merge_n(&refs).unwrap();
        let mut acc = (vec![0.0f32; sq * d], vec![NINF; sq]);
        for (bo, bl) in &blocks {
            acc = attn_merge(&acc.0, &acc.1, bo, bl).unwrap();
        }
        for i in 0..sq * d {
            assert!(
                (o[i] as f64 - want_o[i]).abs() < 1e-6
                    && (acc.0[i] as f64 - want_o[i]).abs() < 1e-6
            );
        }
        for i in 0..sq {
            assert!(
                (l[i] as f64 - want_l[i]).abs() < 1e-5
                    && (acc.1[i] as f64 - want_l[i]).abs() < 1e-5
            );
        }
    }
}

#[test]
fn shape_errors_are_reported() {
    assert!(attn_merge(&[1.0, 2.0], &[0.0], &[1.0], &[0.0]).is_err());
    assert!(attn_merge(&[1.0, 2.0, 3.0], &[0.0, 0.0], &[1.0, 2.0, 3.0], &[0.0, 0.0]).is_err());
    assert!(attn_merge_n(&[]).is_err());
    assert_eq!(attn_merge(&[], &[], &[], &[]).unwrap(), (vec![], vec![]));
}

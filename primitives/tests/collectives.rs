//! Every collective against a serial reference, N = 1..8, every dtype and op.

mod common;

use common::Rng;
use zccl_primitives::collectives::{
    all_gather_with, all_reduce, all_reduce_with, barrier, broadcast_with, reduce_scatter,
};
use zccl_primitives::dtype::{Elem, bf16, f16};
use zccl_primitives::reduce::ReduceOp;
use zccl_primitives::schedule::algo::Algo;
use zccl_primitives::schedule::chunks::chunk_range;
use zccl_primitives::schedule::ring::reduction_order;
use zccl_primitives::sim::{SimFabric, run_ranks};
use zccl_primitives::{Fabric, dtype::as_bytes};

const LENS: [usize; 5] = [0, 1, 7, 33, 1000];
const ALGOS: [Algo; 2] = [Algo::Ring, Algo::Tree];

trait TestElem: Elem {
    const FLOAT: bool;
    /// Relative tolerance of a float reduction (rounding of the result plus accumulation).
    const EPS: f64;
    fn make(rng: &mut Rng, op: ReduceOp) -> Self;
    fn to_f64(self) -> f64;
    /// Integer reference: wrapping reduction in i128, truncated to the type.
    fn int_ref(xs: &[Self], op: ReduceOp, n: usize) -> Self;
}

macro_rules! int_te {
    ($($t:ty),*) => {$(
        impl TestElem for $t {
            const FLOAT: bool = false;
            const EPS: f64 = 0.0;
            fn make(rng: &mut Rng, _op: ReduceOp) -> Self { rng.next_u64() as $t }
            fn to_f64(self) -> f64 { self as f64 }
            fn int_ref(xs: &[Self], op: ReduceOp, n: usize) -> Self {
                let w = |v: i128| v as $t;
                match op {
                    ReduceOp::Sum => w(xs.iter().fold(0i128, |a, &x| a.wrapping_add(x as i128))),
                    ReduceOp::Prod => w(xs.iter().fold(1i128, |a, &x| a.wrapping_mul(x as i128))),
                    ReduceOp::Min => *xs.iter().min().unwrap(),
                    ReduceOp::Max => *xs.iter().max().unwrap(),
                    ReduceOp::Avg => {
                        let s = w(xs.iter().fold(0i128, |a, &x| a.wrapping_add(x as i128)));
                        // Truncating division of the wrapped sum by n.
                        w((s as i128) / n as i128)
                    }
                }
            }
        }
    )*};
}
int_te!(u8, i32, i64);

fn gen_float(rng: &mut Rng, op: ReduceOp) -> f64 {
    match op {
        ReduceOp::Sum | ReduceOp::Avg => rng.range(-2.0, 2.0),
        ReduceOp::Prod => {
            let m = rng.range(0.5, 1.5);
            if rng.below(2) == 0 { m } else { -m }
        }
        ReduceOp::Min | ReduceOp::Max => rng.range(-100.0, 100.0),
    }
}

macro_rules! float_te {
    ($($t:ty, $eps:expr, $from:expr, $to:expr);*) => {$(
        impl TestElem for $t {
            const FLOAT: bool = true;
            const EPS: f64 = $eps;
            fn make(rng: &mut Rng, op: ReduceOp) -> Self { $from(gen_float(rng, op)) }
            fn to_f64(self) -> f64 { $to(self) }
            fn int_ref(_: &[Self], _: ReduceOp, _: usize) -> Self { unreachable!() }
        }
    )*};
}
float_te!(
    f16, 1.0 / 1024.0, |x: f64| f16::from_f64(x), |x: f16| x.to_f64();
    bf16, 1.0 / 128.0, |x: f64| bf16::from_f64(x), |x: bf16| x.to_f64();
    f32, 2e-6, |x: f64| x as f32, |x: f32| x as f64;
    f64, 1e-14, |x: f64| x, |x: f64| x
);

fn inputs<T: TestElem>(seed: u64, n: usize, len: usize, op: ReduceOp) -> Vec<Vec<T>> {
    (0..n)
        .map(|r| {
            let mut rng = Rng::new(seed ^ ((r as u64 + 1) * 0x1000_0001));
            (0..len).map(|_| T::make(&mut rng, op)).collect()
        })
        .collect()
}

/// Checks `got[e]` against the reduction of `inputs[*][offset + e]`.
fn check<T: TestElem>(inputs: &[Vec<T>], offset: usize, got: &[T], op: ReduceOp, ctx: &str) {
    let n = inputs.len();
    for (e, &g) in got.iter().enumerate() {
        let xs: Vec<T> = inputs.iter().map(|v| v[offset + e]).collect();
        if !T::FLOAT {
            assert_eq!(g, T::int_ref(&xs, op, n), "{ctx} element {e}");
            continue;
        }
        let f: Vec<f64> = xs.iter().map(|x| x.to_f64()).collect();
        let g = g.to_f64();
        let abs: f64 = f.iter().map(|x| x.abs()).sum();
        let (want, tol) = match op {
            ReduceOp::Sum => (f.iter().sum::<f64>(), T::EPS * abs),
            ReduceOp::Avg => (f.iter().sum::<f64>() / n as f64, T::EPS * abs / n as f64),
            ReduceOp::Prod => {
                let p = f.iter().product::<f64>();
                (p, T::EPS * n as f64 * p.abs())
            }
            ReduceOp::Min => (f.iter().cloned().fold(f64::INFINITY, f64::min), 0.0),
            ReduceOp::Max => (f.iter().cloned().fold(f64::NEG_INFINITY, f64::max), 0.0),
        };
        assert!(
            (g - want).abs() <= tol,
            "{ctx} element {e}: got {g}, want {want} (tol {tol})"
        );
    }
}

fn run_dtype<T: TestElem>(f: &SimFabric, seed: u64) -> Vec<u8> {
    let (r, n) = (f.rank(), f.size());
    let mut all_out = Vec::new();
    for (ci, &len) in LENS.iter().enumerate() {
        for (oi, op) in ReduceOp::ALL.into_iter().enumerate() {
            let inp = inputs::<T>(seed ^ (ci * 16 + oi) as u64, n, len, op);
            for algo in ALGOS {
                let ctx = format!(
                    "{} all_reduce {op} {algo:?} n={n} len={len} rank {r}",
                    T::DTYPE
                );
                let mut buf = inp[r].clone();
                all_reduce_with(f, 0, &mut buf, op, algo).unwrap();
                check(&inp, 0, &buf, op, &ctx);
                all_out.extend_from_slice(as_bytes(&buf));
            }
            let ctx = format!("{} reduce_scatter {op} n={n} len={len} rank {r}", T::DTYPE);
            let rs = reduce_scatter(f, 1, &inp[r], op).unwrap();
            let range = chunk_range(len, n, r);
            assert_eq!(rs.len(), range.len(), "{ctx}");
            check(&inp, range.start, &rs, op, &ctx);
        }
        let inp = inputs::<T>(seed ^ 0xabc ^ ci as u64, n, len, ReduceOp::Sum);
        for algo in ALGOS {
            let g = all_gather_with(f, 2, &inp[r], algo).unwrap();
            assert_eq!(
                g,
                inp.concat(),
                "{} all_gather {algo:?} n={n} len={len}",
                T::DTYPE
            );
            let root = ci % n;
            let mut b = if r == root {
                inp[root].clone()
            } else {
                vec![T::default(); len]
            };
            broadcast_with(f, 3, &mut b, root, algo).unwrap();
            assert_eq!(
                b,
                inp[root],
                "{} broadcast {algo:?} n={n} len={len} root={root}",
                T::DTYPE
            );
        }
    }
    all_out
}

#[test]
fn every_collective_every_dtype_and_op_n1_to_8() {
    for n in 1..=8 {
        let outs = run_ranks(n, |f| {
            let mut v = Vec::new();
            v.extend(run_dtype::<u8>(f, 1));
            v.extend(run_dtype::<i32>(f, 2));
            v.extend(run_dtype::<i64>(f, 3));
            v.extend(run_dtype::<f16>(f, 4));
            v.extend(run_dtype::<bf16>(f, 5));
            v.extend(run_dtype::<f32>(f, 6));
            v.extend(run_dtype::<f64>(f, 7));
            barrier(f, 9).unwrap();
            v
        });
        // All ranks hold bit-identical all_reduce results.
        for o in &outs[1..] {
            assert!(o == &outs[0], "n={n}: ranks disagree bitwise");
        }
    }
}

/// The documented rounding for f16/bf16 ring all-reduce: an f32 left fold in
/// `reduction_order`, rounded once.
fn half_ring_exact<T: TestElem + Elem<Acc = f32>>(n: usize) {
    let len = 37;
    for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Prod] {
        let inp = inputs::<T>(99, n, len, op);
        let inp2 = inp.clone();
        let outs = run_ranks(n, move |f| {
            let mut b = inp2[f.rank()].clone();
            all_reduce_with(f, 0, &mut b, op, Algo::Ring).unwrap();
            b
        });
        for e in 0..len {
            let j = (0..n)
                .find(|&j| chunk_range(len, n, j).contains(&e))
                .unwrap();
            let ord = reduction_order(j, n);
            let mut acc = inp[ord[0]][e].to_acc();
            for &k in &ord[1..] {
                let x = inp[k][e].to_acc();
                acc = if op == ReduceOp::Prod {
                    acc * x
                } else {
                    acc + x
                };
            }
            if op == ReduceOp::Avg {
                acc /= n as f32;
            }
            let want = T::from_acc(acc);
            for o in &outs {
                assert_eq!(o[e], want, "{} {op} n={n} element {e}", T::DTYPE);
            }
        }
    }
}

#[test]
fn half_precision_rounds_once_as_documented() {
    for n in [1, 2, 3, 5, 8] {
        half_ring_exact::<f16>(n);
        half_ring_exact::<bf16>(n);
    }
}

#[test]
fn half_precision_integer_sums_are_exact() {
    for n in 1..=8 {
        let outs = run_ranks(n, move |f| {
            let mut v: Vec<bf16> = (0..50)
                .map(|i| bf16::from_f32(((i * 7 + f.rank() * 3) % 17) as f32 - 8.0))
                .collect();
            let mut w: Vec<f16> = v.iter().map(|x| f16::from_f32(x.to_f32())).collect();
            all_reduce_with(f, 0, &mut v, ReduceOp::Sum, Algo::Tree).unwrap();
            all_reduce_with(f, 0, &mut w, ReduceOp::Sum, Algo::Ring).unwrap();
            (v, w)
        });
        for i in 0..50 {
            let want: f32 = (0..n).map(|r| ((i * 7 + r * 3) % 17) as f32 - 8.0).sum();
            for (v, w) in &outs {
                assert_eq!(v[i].to_f32(), want);
                assert_eq!(w[i].to_f32(), want);
            }
        }
    }
}

#[test]
fn large_messages_mib() {
    // 4 MiB f32 sum over 8 ranks (ring by size), odd count 3 MiB + 1 bf16 over 5 ranks,
    // 16 MiB f32 over 2 ranks, large all_gather / reduce_scatter / broadcast.
    for (n, len) in [(8usize, 1usize << 20), (2, 4 << 20)] {
        let outs = run_ranks(n, move |f| {
            let mut v: Vec<f32> = (0..len)
                .map(|i| ((i * 31 + f.rank() * 7) % 1001) as f32)
                .collect();
            all_reduce(f, 0, &mut v, ReduceOp::Sum).unwrap();
            v
        });
        for i in (0..len).step_by(997).chain([len - 1]) {
            let want: f32 = (0..n).map(|r| ((i * 31 + r * 7) % 1001) as f32).sum();
            assert!(outs.iter().all(|o| o[i] == want), "n={n} i={i}");
        }
    }
    let len = (3 << 20) / 2 + 1;
    let outs = run_ranks(5, move |f| {
        let mut v: Vec<bf16> = (0..len)
            .map(|i| bf16::from_f32(((i + f.rank()) % 5) as f32))
            .collect();
        all_reduce(f, 0, &mut v, ReduceOp::Max).unwrap();
        let g = all_gather_with(f, 1, &v[..(1 << 18)], Algo::Ring).unwrap();
        let rs = reduce_scatter(f, 2, &v[..(1 << 19)], ReduceOp::Sum).unwrap();
        let mut b: Vec<u8> = if f.rank() == 3 {
            (0..(3 << 20) + 5).map(|i| (i % 251) as u8).collect()
        } else {
            vec![0; (3 << 20) + 5]
        };
        broadcast_with(f, 3, &mut b, 3, Algo::Ring).unwrap();
        assert!(b.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8));
        (v, g.len(), rs)
    });
    for (v, glen, rs) in &outs {
        assert!(v.iter().all(|x| x.to_f32() == 4.0));
        assert_eq!(*glen, 5 << 18);
        assert!(rs.iter().all(|x| x.to_f32() == 20.0));
    }
}

#[test]
fn barrier_every_size() {
    for n in 1..=8 {
        run_ranks(n, |f| {
            for ch in 0..3 {
                barrier(f, ch).unwrap();
            }
        });
    }
}

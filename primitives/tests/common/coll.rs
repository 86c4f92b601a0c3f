//! Collectives against serial references: element generators, the f64 /
//! wrapping-integer reference, and one rank's sweep over ops and algorithms.

use super::Rng;
use zccl_primitives::collectives::{
    all_gather_with, all_reduce_into, all_reduce_with, broadcast_with, reduce_scatter,
};
use zccl_primitives::dtype::{Elem, bf16, f16};
use zccl_primitives::reduce::ReduceOp;
use zccl_primitives::schedule::algo::Algo;
use zccl_primitives::schedule::chunks::chunk_range;
use zccl_primitives::{Fabric, dtype::as_bytes};

/// Lengths every collective is checked at.
pub const LENS: [usize; 5] = [0, 1, 7, 33, 1000];
pub const ALGOS: [Algo; 2] = [Algo::Ring, Algo::Tree];

pub trait TestElem: Elem {
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

pub fn gen_float(rng: &mut Rng, op: ReduceOp) -> f64 {
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

pub fn inputs<T: TestElem>(seed: u64, n: usize, len: usize, op: ReduceOp) -> Vec<Vec<T>> {
    (0..n)
        .map(|r| {
            let mut rng = Rng::new(seed ^ ((r as u64 + 1) * 0x1000_0001));
            (0..len).map(|_| T::make(&mut rng, op)).collect()
        })
        .collect()
}

/// Checks `got[e]` against the reduction of `inputs[*][offset + e]`.
pub fn check<T: TestElem>(inputs: &[Vec<T>], offset: usize, got: &[T], op: ReduceOp, ctx: &str) {
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

/// One rank's sweep for dtype `T`: all_reduce (every op, both algorithms),
/// reduce_scatter (every op), all_gather and broadcast (both algorithms), at
/// every length of `lens`, each checked against the reference; channels 0..4.
/// Returns the bytes of every all_reduce result (to compare ranks bitwise).
pub fn run_dtype<T: TestElem, F: Fabric + ?Sized>(f: &F, seed: u64, lens: &[usize]) -> Vec<u8> {
    let (r, n) = (f.rank(), f.size());
    let mut all_out = Vec::new();
    for (ci, &len) in lens.iter().enumerate() {
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
            // Out of place: the output starts as garbage, the input stays.
            let ctx = format!("{} all_reduce_into {op} n={n} len={len} rank {r}", T::DTYPE);
            let mut out = inputs::<T>(seed ^ 0x5eed, n, len, op).swap_remove(r);
            all_reduce_into(f, 4, &inp[r], &mut out, op).unwrap();
            check(&inp, 0, &out, op, &ctx);
            assert_eq!(
                as_bytes(&inp[r]),
                as_bytes(&inputs::<T>(seed ^ (ci * 16 + oi) as u64, n, len, op)[r]),
                "{ctx}: input changed"
            );
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

/// [`run_dtype`] for all seven dtypes, seeds 1..=7.
pub fn run_all_dtypes<F: Fabric + ?Sized>(f: &F, lens: &[usize]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(run_dtype::<u8, F>(f, 1, lens));
    v.extend(run_dtype::<i32, F>(f, 2, lens));
    v.extend(run_dtype::<i64, F>(f, 3, lens));
    v.extend(run_dtype::<f16, F>(f, 4, lens));
    v.extend(run_dtype::<bf16, F>(f, 5, lens));
    v.extend(run_dtype::<f32, F>(f, 6, lens));
    v.extend(run_dtype::<f64, F>(f, 7, lens));
    v
}

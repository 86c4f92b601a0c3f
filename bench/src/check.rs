//! The data of `-c`: what each rank puts in its buffers and what it must
//! find afterwards, as pure functions of (op, type, reduction, rank, index,
//! check iteration). Comparisons are bit for bit.
//!
//! The inputs are chosen so that every expected result is **exact** in every
//! type, whatever order the ranks' contributions are combined in, so the check
//! needs no tolerance, for `half` and `bfloat16` too:
//!
//! * reductions (`sum`, `avg`): small integers in `-2..=2`; a sum over `n`
//!   ranks stays below `2n` in magnitude (exact in `bfloat16` up to 128
//!   ranks). `avg` divides that exact sum once by `n` in the accumulator
//!   type, as [`zccl_primitives::reduce`] specifies.
//! * `prod`: mostly `1`, some `2` and `-1`, so products are `±2^k` (exact, or
//!   `±inf` in both the reference and the result once `2^k` overflows).
//! * `min`, `max`: integers in `-5..=5`.
//! * data movement (all_gather, alltoall, broadcast, sendrecv, ring_shift,
//!   token_ring): an id of (rank, index, iteration) reduced modulo a prime
//!   below the type's exact-integer range (251 for `uint8` and `bfloat16`,
//!   2039 for `half`), so a block that lands in the wrong place or comes from
//!   the wrong rank is seen.
//! * all_scan: states in `0..=3` and decays `1` or `0.5`; the reference
//!   repeats the chain's `f32` arithmetic (a multiply, then an add).
//!
//! Integer types wrap (`uint8` sums of negative inputs are taken modulo 256),
//! as zccl's integer reductions do. The reference is computed here, from the
//! documented semantics, not by zccl's reduction code.

use zccl_primitives::dtype::{Elem, bf16, f16};
use zccl_primitives::reduce::ReduceOp;

/// An element type `zccl-bench` can fill and check.
pub trait BenchElem: Elem {
    /// Ids are taken modulo this prime (exactly representable below it).
    const ID_MOD: u64;
    /// Whether ids are centred on zero.
    const ID_SIGNED: bool;
    /// The type's value for a small integer (integers wrap: `-1` is `255u8`).
    fn from_i64(v: i64) -> Self;
    /// The reference result of reducing the ranks' inputs `vals` (in rank
    /// order) with `op` over `n` ranks.
    fn reduce_ref(op: ReduceOp, vals: impl Iterator<Item = i64>, n: usize) -> Self;
    /// Bitwise equality.
    fn same(self, other: Self) -> bool;
    /// A different value (the lowest bit flipped), for the corruption hook.
    fn flip(self) -> Self;
}

macro_rules! int_elem {
    ($($t:ty => $m:expr, $signed:expr);*) => {$(
        impl BenchElem for $t {
            const ID_MOD: u64 = $m;
            const ID_SIGNED: bool = $signed;
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn reduce_ref(op: ReduceOp, vals: impl Iterator<Item = i64>, n: usize) -> Self {
                let acc = vals
                    .map(|v| v as $t)
                    .reduce(|a, b| match op {
                        ReduceOp::Sum | ReduceOp::Avg => a.wrapping_add(b),
                        ReduceOp::Prod => a.wrapping_mul(b),
                        ReduceOp::Min => a.min(b),
                        ReduceOp::Max => a.max(b),
                    })
                    .expect("at least one rank");
                if op == ReduceOp::Avg {
                    <$t>::try_from(n).map_or(0, |d| acc.wrapping_div(d))
                } else {
                    acc
                }
            }
            fn same(self, other: Self) -> bool {
                self == other
            }
            fn flip(self) -> Self {
                self ^ 1
            }
        }
    )*};
}
int_elem!(u8 => 251, false; i32 => (1 << 24) - 3, true; i64 => (1 << 31) - 1, true);

/// Folds exact small-integer inputs in `f64` (sums below 2^53, products
/// `±2^k`, so every order gives the same value).
fn fold_f64(op: ReduceOp, vals: impl Iterator<Item = i64>) -> f64 {
    vals.map(|v| v as f64)
        .reduce(|a, b| match op {
            ReduceOp::Sum | ReduceOp::Avg => a + b,
            ReduceOp::Prod => a * b,
            ReduceOp::Min => a.min(b),
            ReduceOp::Max => a.max(b),
        })
        .expect("at least one rank")
}

macro_rules! float_elem {
    ($($t:ty => $m:expr, $acc:ty, $from_acc:expr, $to_bits:expr, $from_bits:expr);*) => {$(
        impl BenchElem for $t {
            const ID_MOD: u64 = $m;
            const ID_SIGNED: bool = true;
            fn from_i64(v: i64) -> Self {
                // Exact: every value used is below the type's integer range.
                $from_acc(v as $acc)
            }
            fn reduce_ref(op: ReduceOp, vals: impl Iterator<Item = i64>, n: usize) -> Self {
                // The exact result, in the accumulator type (a product too
                // large for it becomes inf, as it does in the accumulator).
                let mut a = fold_f64(op, vals) as $acc;
                if op == ReduceOp::Avg {
                    a /= n as $acc;
                }
                $from_acc(a)
            }
            fn same(self, other: Self) -> bool {
                $to_bits(self) == $to_bits(other)
            }
            fn flip(self) -> Self {
                $from_bits($to_bits(self) ^ 1)
            }
        }
    )*};
}
float_elem!(
    f32 => (1 << 24) - 3, f32, |a: f32| a, f32::to_bits, f32::from_bits;
    f64 => (1 << 31) - 1, f64, |a: f64| a, f64::to_bits, f64::from_bits;
    f16 => 2039, f32, f16::from_f32, f16::to_bits, f16::from_bits;
    bf16 => 251, f32, bf16::from_f32, bf16::to_bits, bf16::from_bits
);

/// Rank `rank`'s input at `idx` for a reduction with `op` (check iteration `rep`).
///
/// ```
/// use zccl_bench::check::reduce_input;
/// use zccl_primitives::reduce::ReduceOp;
/// assert!((0..100).all(|i| (-2..=2).contains(&reduce_input(ReduceOp::Sum, 3, i, 0))));
/// ```
pub fn reduce_input(op: ReduceOp, rank: usize, idx: usize, rep: u64) -> i64 {
    let (r, i) = (rank as u64, idx as u64);
    match op {
        ReduceOp::Sum | ReduceOp::Avg => ((i + 3 * r + 7 * rep) % 5) as i64 - 2,
        ReduceOp::Prod => match (i + 3 * r + rep) % 8 {
            0 => 2,
            5 => -1,
            _ => 1,
        },
        ReduceOp::Min | ReduceOp::Max => ((5 * i + 3 * r + rep) % 11) as i64 - 5,
    }
}

/// The expected element `idx` of the reduction with `op` over `n` ranks.
pub fn reduced<T: BenchElem>(op: ReduceOp, n: usize, idx: usize, rep: u64) -> T {
    T::reduce_ref(op, (0..n).map(|r| reduce_input(op, r, idx, rep)), n)
}

/// The id of element `idx` of rank `rank`'s data (data-movement ops).
///
/// ```
/// use zccl_bench::check::id;
/// let a: f32 = id(0, 5, 0);
/// let b: f32 = id(1, 5, 0);
/// assert_ne!(a, b);
/// ```
pub fn id<T: BenchElem>(rank: usize, idx: usize, rep: u64) -> T {
    let v = (rank as u64)
        .wrapping_mul(1_000_003)
        .wrapping_add((idx as u64).wrapping_mul(7))
        .wrapping_add(rep.wrapping_mul(13))
        % T::ID_MOD;
    let centre = if T::ID_SIGNED { T::ID_MOD / 2 } else { 0 };
    T::from_i64(v as i64 - centre as i64)
}

/// Counts the elements of `got` that differ from `want(i)`.
pub fn count_wrong<T: BenchElem>(got: &[T], want: impl Fn(usize) -> T) -> u64 {
    got.iter()
        .enumerate()
        .filter(|&(i, g)| !g.same(want(i)))
        .count() as u64
}

/// all_scan: rank `p`'s state element `idx`.
pub fn scan_state(p: usize, idx: usize, rep: u64) -> f32 {
    ((idx as u64 + 3 * p as u64 + rep) % 4) as f32
}

/// all_scan: rank `p`'s decay of row `row`.
pub fn scan_decay(p: usize, row: usize, rep: u64) -> f32 {
    if (row as u64 + p as u64 + rep).is_multiple_of(3) {
        1.0
    } else {
        0.5
    }
}

/// all_scan: the exclusive prefix rank `p` must receive at element `idx` of
/// a `cols`-column state, over `n` ranks, forward (rank 0 first) or reverse.
///
/// ```
/// use zccl_bench::check::{scan_expected, scan_state};
/// assert_eq!(scan_expected(0, 4, 7, 3, 0, false), 0.0);
/// assert_eq!(scan_expected(1, 4, 7, 3, 0, false), scan_state(0, 7, 0));
/// ```
pub fn scan_expected(p: usize, n: usize, idx: usize, cols: usize, rep: u64, reverse: bool) -> f32 {
    let row = idx / cols.max(1);
    let order: Vec<usize> = if reverse {
        (p + 1..n).rev().collect()
    } else {
        (0..p).collect()
    };
    let mut it = order.into_iter();
    let Some(first) = it.next() else {
        return 0.0;
    };
    let mut x = scan_state(first, idx, rep);
    for q in it {
        let scaled = scan_decay(q, row, rep) * x;
        x = scaled + scan_state(q, idx, rep);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_reductions<T: BenchElem + std::fmt::Debug>() {
        for n in 1..=9 {
            for op in ReduceOp::ALL {
                for idx in 0..40 {
                    let got: T = reduced(op, n, idx, 1);
                    // The reference equals a rank-order fold done in f64 and
                    // rounded once: the inputs make it exact.
                    let vals: Vec<i64> = (0..n).map(|r| reduce_input(op, r, idx, 1)).collect();
                    let again = T::reduce_ref(op, vals.iter().rev().copied(), n);
                    assert!(got.same(again), "{op} n={n} idx={idx}: order matters");
                    assert!(!got.same(got.flip()));
                }
            }
        }
    }

    #[test]
    fn references_do_not_depend_on_order() {
        all_reductions::<u8>();
        all_reductions::<i32>();
        all_reductions::<i64>();
        all_reductions::<f16>();
        all_reductions::<bf16>();
        all_reductions::<f32>();
        all_reductions::<f64>();
    }

    #[test]
    fn reference_values() {
        // Sum over 3 ranks at idx 0, rep 0: inputs -2, 1, -1 (i + 3r mod 5, minus 2).
        assert_eq!(
            (0..3)
                .map(|r| reduce_input(ReduceOp::Sum, r, 0, 0))
                .collect::<Vec<_>>(),
            vec![-2, 1, -1]
        );
        assert_eq!(reduced::<i32>(ReduceOp::Sum, 3, 0, 0), -2);
        assert_eq!(reduced::<u8>(ReduceOp::Sum, 3, 0, 0), 254);
        assert_eq!(reduced::<f32>(ReduceOp::Avg, 3, 0, 0), -2.0 / 3.0);
        assert_eq!(reduced::<i32>(ReduceOp::Avg, 3, 0, 0), 0);
        // bf16 avg: f32 division, one rounding.
        assert_eq!(
            reduced::<bf16>(ReduceOp::Avg, 3, 0, 0),
            bf16::from_f32(-2.0f32 / 3.0)
        );
        // Products are powers of two; past f16's range they are inf.
        let p: f16 = reduced(ReduceOp::Prod, 200, 0, 0);
        assert!(p.is_infinite());
        let p: f32 = reduced(ReduceOp::Prod, 16, 0, 0);
        assert_eq!(p.abs().log2().fract(), 0.0);
        assert_eq!(reduced::<i64>(ReduceOp::Max, 4, 1, 0), 3); // inputs 0, 3, -5, -2
    }

    #[test]
    fn ids_are_exact_and_distinct() {
        fn exact<T: BenchElem>() {
            for r in 0..8 {
                for i in 0..3000 {
                    let v: T = id(r, i, 2);
                    let again: T = id(r, i, 2);
                    assert!(v.same(again));
                }
                // Neighbouring ranks differ at every index.
                for i in 0..300 {
                    assert!(!id::<T>(r, i, 0).same(id::<T>(r + 1, i, 0)));
                }
            }
        }
        exact::<u8>();
        exact::<i32>();
        exact::<i64>();
        exact::<f16>();
        exact::<bf16>();
        exact::<f32>();
        exact::<f64>();
        // Exactly representable: the half value is the integer itself.
        let v: f16 = id(3, 1234, 0);
        assert_eq!(v.to_f32().fract(), 0.0);
        assert!(v.to_f32().abs() <= 1019.0);
        let v: bf16 = id(7, 99, 5);
        assert!(v.to_f32().abs() <= 125.0 && v.to_f32().fract() == 0.0);
    }

    #[test]
    fn wrong_counts() {
        let want = |i: usize| id::<f32>(0, i, 0);
        let mut v: Vec<f32> = (0..10).map(want).collect();
        assert_eq!(count_wrong(&v, want), 0);
        v[3] = v[3].flip();
        assert_eq!(count_wrong(&v, want), 1);
        v[9] = f32::NAN;
        assert_eq!(count_wrong(&v, want), 2);
    }

    #[test]
    fn scan_reference() {
        // Three ranks, one column, row 0: decays of ranks 1 and 2 at row 0.
        let s = |p| scan_state(p, 0, 0);
        let g = |p| scan_decay(p, 0, 0);
        assert_eq!(scan_expected(2, 3, 0, 1, 0, false), g(1) * s(0) + s(1));
        assert_eq!(scan_expected(0, 3, 0, 1, 0, true), g(1) * s(2) + s(1));
        assert_eq!(scan_expected(2, 3, 0, 1, 0, true), 0.0);
    }
}

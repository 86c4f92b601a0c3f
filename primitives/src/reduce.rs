//! Reduction operators and exactly where they round.
//!
//! # Semantics (what a reference implementation must reproduce)
//!
//! * Every input element is converted once to its accumulator type
//!   ([`Elem::Acc`]): `f32` for `f16`/`bf16`, the type itself otherwise. The
//!   conversion is exact.
//! * Contributions are combined pairwise in the accumulator type with
//!   [`Accumulator::combine`]. Partial results of `f16`/`bf16` reductions
//!   travel between ranks **as `f32`**, so the only rounding to 16 bits is the
//!   final one (round-to-nearest-even, in [`finish`]). The `f32` combines
//!   themselves round as IEEE `f32` does.
//! * [`ReduceOp::Avg`] combines like `Sum` and divides once at the end, in the
//!   accumulator type: floats with IEEE division by `n as f32`/`n as f64`;
//!   integers with Rust integer division (truncation toward zero; unsigned for
//!   `u8`).
//! * Integer `Sum`, `Prod` and `Avg` wrap on overflow (two's complement,
//!   modulo 2^bits), so integer results do not depend on the combine order.
//! * Float `Min`/`Max`: NaN if either operand is NaN; `-0.0 < +0.0`. With
//!   these rules min and max are commutative and associative bit for bit.
//! * Float `Sum`/`Prod` are commutative bit for bit but not associative: the
//!   result depends on the bracketing, which the schedule fixes (see
//!   [`crate::schedule::ring`] and [`crate::schedule::rd`]). Every rank of one
//!   collective gets bit-identical results.
//!
//! ```
//! use zccl_primitives::reduce::{ReduceOp, combine_into, finish};
//! use zccl_primitives::dtype::f16;
//! // Three f16 ranks: accumulate in f32, round once.
//! let xs = [f16::from_f32(0.1), f16::from_f32(0.2), f16::from_f32(0.3)];
//! let mut acc = vec![xs[0].to_f32()];
//! for x in &xs[1..] { combine_into(ReduceOp::Sum, &mut acc, &[x.to_f32()]); }
//! let out: Vec<f16> = finish(ReduceOp::Sum, &acc, 3);
//! assert_eq!(out[0], f16::from_f32(xs[0].to_f32() + xs[1].to_f32() + xs[2].to_f32()));
//! ```

use crate::dtype::Elem;

/// A reduction operator.
///
/// ```
/// use zccl_primitives::reduce::ReduceOp;
/// assert_eq!(ReduceOp::ALL.len(), 5);
/// assert_eq!(ReduceOp::Avg.to_string(), "avg");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum (integers wrap).
    Sum,
    /// Product (integers wrap).
    Prod,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Sum divided by the number of ranks (see the module docs for rounding).
    Avg,
}

impl ReduceOp {
    /// The operation label of this reduction in the collective whose sum
    /// label is `sum` ([`OpLabel`](zccl_runtime::label::OpLabel)'s order: sum, prod, min, max, avg), so
    /// that ranks reducing with different operators disagree on the label.
    ///
    /// ```
    /// use zccl_primitives::reduce::ReduceOp;
    /// use zccl_runtime::label::OpLabel;
    /// assert_eq!(ReduceOp::Sum.label(OpLabel::ALL_REDUCE_SUM), OpLabel::ALL_REDUCE_SUM);
    /// assert_eq!(ReduceOp::Max.label(OpLabel::ALL_REDUCE_SUM).to_string(), "all_reduce(max)");
    /// ```
    pub fn label(self, sum: zccl_runtime::label::OpLabel) -> zccl_runtime::label::OpLabel {
        let k = match self {
            ReduceOp::Sum => 0,
            ReduceOp::Prod => 1,
            ReduceOp::Min => 2,
            ReduceOp::Max => 3,
            ReduceOp::Avg => 4,
        };
        sum.offset(k).unwrap_or(sum)
    }

    /// Every operator.
    ///
    /// ```
    /// use zccl_primitives::{collectives::all_reduce, reduce::ReduceOp, sim::run_ranks, Fabric};
    /// // Ranks contribute 1 and 2; every operator, in the order of `ALL`.
    /// let out = run_ranks(2, |f| {
    ///     ReduceOp::ALL.map(|op| {
    ///         let mut v = [f.rank() as f32 + 1.0];
    ///         all_reduce(f, 0, &mut v, op).unwrap();
    ///         v[0]
    ///     })
    /// });
    /// assert_eq!(out[0], [3.0, 2.0, 1.0, 2.0, 1.5]); // sum, prod, min, max, avg
    /// assert_eq!(out[1], out[0]);
    /// ```
    pub const ALL: [ReduceOp; 5] = [
        ReduceOp::Sum,
        ReduceOp::Prod,
        ReduceOp::Min,
        ReduceOp::Max,
        ReduceOp::Avg,
    ];
}

impl std::fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Prod => "prod",
            ReduceOp::Min => "min",
            ReduceOp::Max => "max",
            ReduceOp::Avg => "avg",
        })
    }
}

/// An accumulator type: `u8, i32, i64, f32, f64`.
///
/// ```
/// use zccl_primitives::reduce::{Accumulator, ReduceOp};
/// assert_eq!(u8::combine(ReduceOp::Sum, 200, 100), 44); // wraps
/// assert_eq!(i32::divide(-7, 2), -3); // truncates toward zero
/// assert!(f32::combine(ReduceOp::Max, f32::NAN, 1.0).is_nan());
/// assert!(f64::combine(ReduceOp::Min, 0.0, -0.0).is_sign_negative());
/// ```
pub trait Accumulator: Elem {
    /// `a ⊕ b` for `op` (`Avg` combines as `Sum`).
    ///
    /// ```
    /// use zccl_primitives::reduce::{Accumulator, ReduceOp};
    /// assert_eq!(i32::combine(ReduceOp::Prod, 6, -7), -42);
    /// assert_eq!(i64::combine(ReduceOp::Min, 3, -1), -1);
    /// // `Avg` combines as `Sum`; the division comes at the end.
    /// assert_eq!(f64::combine(ReduceOp::Avg, 1.0, 2.0), 3.0);
    /// ```
    fn combine(op: ReduceOp, a: Self, b: Self) -> Self;
    /// `a / n`, the final step of `Avg`.
    ///
    /// ```
    /// use zccl_primitives::reduce::Accumulator;
    /// assert_eq!(f32::divide(3.0, 2), 1.5);
    /// assert_eq!(i64::divide(7, 2), 3);
    /// // A count that does not fit the type gives 0.
    /// assert_eq!(u8::divide(255, 256), 0);
    /// ```
    fn divide(a: Self, n: usize) -> Self;
}

macro_rules! int_acc {
    ($($t:ty),*) => {$(
        impl Accumulator for $t {
            #[inline]
            fn combine(op: ReduceOp, a: $t, b: $t) -> $t {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => a.wrapping_add(b),
                    ReduceOp::Prod => a.wrapping_mul(b),
                    ReduceOp::Min => a.min(b),
                    ReduceOp::Max => a.max(b),
                }
            }
            #[inline]
            fn divide(a: $t, n: usize) -> $t {
                // n >= 1; n that does not fit the type divides everything to 0
                // (or to -1/0 for negatives, which integer division gives anyway).
                match <$t>::try_from(n) {
                    Ok(d) => a.wrapping_div(d),
                    Err(_) => 0,
                }
            }
        }
    )*};
}
int_acc!(u8, i32, i64);

macro_rules! float_acc {
    ($($t:ty),*) => {$(
        impl Accumulator for $t {
            #[inline]
            fn combine(op: ReduceOp, a: $t, b: $t) -> $t {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => a + b,
                    ReduceOp::Prod => a * b,
                    ReduceOp::Min => {
                        if a.is_nan() || b.is_nan() { <$t>::NAN }
                        else if a < b { a }
                        else if b < a { b }
                        else if a.is_sign_negative() { a } else { b }
                    }
                    ReduceOp::Max => {
                        if a.is_nan() || b.is_nan() { <$t>::NAN }
                        else if a > b { a }
                        else if b > a { b }
                        else if a.is_sign_positive() { a } else { b }
                    }
                }
            }
            #[inline]
            fn divide(a: $t, n: usize) -> $t {
                a / n as $t
            }
        }
    )*};
}
float_acc!(f32, f64);

/// `acc[i] = acc[i] ⊕ x[i]` (the accumulator is the left operand).
///
/// # Panics
/// If the lengths differ.
///
/// ```
/// use zccl_primitives::reduce::{combine_into, ReduceOp};
/// let mut a = vec![1i32, 5];
/// combine_into(ReduceOp::Max, &mut a, &[3, 2]);
/// assert_eq!(a, [3, 5]);
/// ```
pub fn combine_into<A: Accumulator>(op: ReduceOp, acc: &mut [A], x: &[A]) {
    assert_eq!(acc.len(), x.len(), "combine_into: length mismatch");
    struct K<'a, A>(&'a mut [A], &'a [A]);
    impl<A: Accumulator> Kernel<A> for K<'_, A> {
        #[inline(always)]
        fn run(self, c: impl Fn(A, A) -> A + Copy) {
            for (a, &b) in self.0.iter_mut().zip(self.1) {
                *a = c(*a, b);
            }
        }
    }
    with_op(op, K(acc, x));
}

/// `acc[i] = x[i] ⊕ acc[i]` (the accumulator is the right operand).
///
/// ```
/// use zccl_primitives::reduce::{combine_into_rhs, ReduceOp};
/// let mut a = vec![1.0f32];
/// combine_into_rhs(ReduceOp::Sum, &mut a, &[2.0]);
/// assert_eq!(a, [3.0]);
/// ```
pub fn combine_into_rhs<A: Accumulator>(op: ReduceOp, acc: &mut [A], x: &[A]) {
    assert_eq!(acc.len(), x.len(), "combine_into_rhs: length mismatch");
    struct K<'a, A>(&'a mut [A], &'a [A]);
    impl<A: Accumulator> Kernel<A> for K<'_, A> {
        #[inline(always)]
        fn run(self, c: impl Fn(A, A) -> A + Copy) {
            for (a, &b) in self.0.iter_mut().zip(self.1) {
                *a = c(b, *a);
            }
        }
    }
    with_op(op, K(acc, x));
}

/// A loop over slices, run once per operator with a closure in which the
/// operator is a constant (so the loop has no branch on it and can be
/// vectorised).
trait Kernel<A: Accumulator> {
    fn run(self, c: impl Fn(A, A) -> A + Copy);
}

#[inline(always)]
fn with_op<A: Accumulator>(op: ReduceOp, k: impl Kernel<A>) {
    match op {
        ReduceOp::Sum | ReduceOp::Avg => k.run(|a, b| A::combine(ReduceOp::Sum, a, b)),
        ReduceOp::Prod => k.run(|a, b| A::combine(ReduceOp::Prod, a, b)),
        ReduceOp::Min => k.run(|a, b| A::combine(ReduceOp::Min, a, b)),
        ReduceOp::Max => k.run(|a, b| A::combine(ReduceOp::Max, a, b)),
    }
}

/// `out[i] = x[i] ⊕ local[i]` in the accumulator type (the received partial
/// result `x` on the left, as [`combine_into_rhs`] over `to_acc(local)`).
///
/// # Panics
/// If the lengths differ.
///
/// ```
/// use zccl_primitives::{dtype::bf16, reduce::{combine_to, ReduceOp}};
/// let mut out = [0.0f32; 2];
/// combine_to(ReduceOp::Sum, &mut out, &[0.5, 1.0], &[bf16::from_f32(2.0), bf16::from_f32(3.0)]);
/// assert_eq!(out, [2.5, 4.0]);
/// ```
pub fn combine_to<T: Elem>(op: ReduceOp, out: &mut [T::Acc], x: &[T::Acc], local: &[T]) {
    assert!(
        out.len() == x.len() && x.len() == local.len(),
        "combine_to: length mismatch"
    );
    struct K<'a, T: Elem>(&'a mut [T::Acc], &'a [T::Acc], &'a [T]);
    impl<T: Elem> Kernel<T::Acc> for K<'_, T> {
        #[inline(always)]
        fn run(self, c: impl Fn(T::Acc, T::Acc) -> T::Acc + Copy) {
            for ((o, &a), &l) in self.0.iter_mut().zip(self.1).zip(self.2) {
                *o = c(a, l.to_acc());
            }
        }
    }
    with_op(op, K::<T>(out, x, local));
}

/// The last combine of a reduction over `n` ranks, in place:
/// `buf[i] = finish(x[i] ⊕ to_acc(buf[i]))` (the same value
/// [`combine_into_rhs`] then [`finish`] give).
///
/// # Panics
/// If the lengths differ.
///
/// ```
/// use zccl_primitives::reduce::{combine_finish, ReduceOp};
/// let mut b = [3i32, 5];
/// combine_finish(ReduceOp::Avg, 2, &mut b, &[1, -1]);
/// assert_eq!(b, [2, 2]);
/// ```
pub fn combine_finish<T: Elem>(op: ReduceOp, n: usize, buf: &mut [T], x: &[T::Acc]) {
    assert_eq!(buf.len(), x.len(), "combine_finish: length mismatch");
    struct K<'a, T: Elem>(&'a mut [T], &'a [T::Acc], Option<usize>);
    impl<T: Elem> Kernel<T::Acc> for K<'_, T> {
        #[inline(always)]
        fn run(self, c: impl Fn(T::Acc, T::Acc) -> T::Acc + Copy) {
            match self.2 {
                None => {
                    for (b, &a) in self.0.iter_mut().zip(self.1) {
                        *b = T::from_acc(c(a, b.to_acc()));
                    }
                }
                Some(n) => {
                    for (b, &a) in self.0.iter_mut().zip(self.1) {
                        *b = T::from_acc(<T::Acc as Accumulator>::divide(c(a, b.to_acc()), n));
                    }
                }
            }
        }
    }
    let avg = (op == ReduceOp::Avg).then_some(n);
    with_op(op, K::<T>(buf, x, avg));
}

/// The last combine of a reduction over `n` ranks, out of place:
/// `out[i] = finish(x[i] ⊕ to_acc(local[i]))` (what [`combine_finish`]
/// computes in place, with the local contribution read from `local`).
///
/// # Panics
/// If the lengths differ.
///
/// ```
/// use zccl_primitives::reduce::{combine_finish_to, ReduceOp};
/// let mut out = [0i32; 2];
/// combine_finish_to(ReduceOp::Avg, 2, &mut out, &[1, -1], &[3, 5]);
/// assert_eq!(out, [2, 2]);
/// ```
pub fn combine_finish_to<T: Elem>(
    op: ReduceOp,
    n: usize,
    out: &mut [T],
    x: &[T::Acc],
    local: &[T],
) {
    assert!(
        out.len() == x.len() && x.len() == local.len(),
        "combine_finish_to: length mismatch"
    );
    struct K<'a, T: Elem>(&'a mut [T], &'a [T::Acc], &'a [T], Option<usize>);
    impl<T: Elem> Kernel<T::Acc> for K<'_, T> {
        #[inline(always)]
        fn run(self, c: impl Fn(T::Acc, T::Acc) -> T::Acc + Copy) {
            let it = self.0.iter_mut().zip(self.1).zip(self.2);
            match self.3 {
                None => {
                    for ((o, &a), &l) in it {
                        *o = T::from_acc(c(a, l.to_acc()));
                    }
                }
                Some(n) => {
                    for ((o, &a), &l) in it {
                        *o = T::from_acc(<T::Acc as Accumulator>::divide(c(a, l.to_acc()), n));
                    }
                }
            }
        }
    }
    let avg = (op == ReduceOp::Avg).then_some(n);
    with_op(op, K::<T>(out, x, local, avg));
}

/// Converts elements to their accumulator type (exact).
///
/// ```
/// use zccl_primitives::reduce::to_acc;
/// use zccl_primitives::dtype::bf16;
/// assert_eq!(to_acc(&[bf16::from_f32(2.0)]), vec![2.0f32]);
/// ```
pub fn to_acc<T: Elem>(x: &[T]) -> Vec<T::Acc> {
    x.iter().map(|v| v.to_acc()).collect()
}

/// Final step of a reduction over `n` ranks: divides by `n` for
/// [`ReduceOp::Avg`] (in the accumulator type), then converts to `T` (the only
/// rounding to `f16`/`bf16`).
///
/// ```
/// use zccl_primitives::reduce::{finish, ReduceOp};
/// assert_eq!(finish::<f32>(ReduceOp::Avg, &[3.0], 2), vec![1.5]);
/// assert_eq!(finish::<i64>(ReduceOp::Sum, &[3], 2), vec![3]);
/// ```
pub fn finish<T: Elem>(op: ReduceOp, acc: &[T::Acc], n: usize) -> Vec<T> {
    acc.iter().map(|&a| finish_one::<T>(op, a, n)).collect()
}

/// One element of [`finish`].
#[inline]
fn finish_one<T: Elem>(op: ReduceOp, a: T::Acc, n: usize) -> T {
    let a = if op == ReduceOp::Avg {
        <T::Acc as Accumulator>::divide(a, n)
    } else {
        a
    };
    T::from_acc(a)
}

/// [`finish`] into `out` (of `acc.len()` elements), without allocating.
///
/// # Panics
/// If the lengths differ.
///
/// ```
/// use zccl_primitives::reduce::{finish_into, ReduceOp};
/// let mut out = [0.0f32; 2];
/// finish_into::<f32>(ReduceOp::Avg, &[3.0, 5.0], 2, &mut out);
/// assert_eq!(out, [1.5, 2.5]);
/// ```
pub fn finish_into<T: Elem>(op: ReduceOp, acc: &[T::Acc], n: usize, out: &mut [T]) {
    assert_eq!(acc.len(), out.len(), "finish_into: length mismatch");
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = finish_one::<T>(op, a, n);
    }
}

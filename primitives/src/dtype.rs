//! Element types the collectives move and reduce, and their byte views.
//!
//! [`Elem`] is sealed and implemented for `u8`, `i32`, `i64`, [`f16`](struct@f16),
//! [`bf16`](struct@bf16), `f32` and `f64`. Each type names an accumulator type
//! ([`Elem::Acc`]): `f32` for `f16` and `bf16`, the type itself otherwise.
//! Reductions (see [`crate::reduce`]) convert every input to the accumulator
//! once, combine in the accumulator, and convert back once at the end.
//!
//! Byte views are native-endian (all ranks of one job share an architecture).

use std::fmt;

pub use half::{bf16, f16};

/// The element type of a buffer, as a value: the runtime's [`zccl_runtime::DType`],
/// re-exported so that the wire type and the reduction type are one.
///
/// ```
/// use zccl_primitives::dtype::{DType, Elem};
/// assert_eq!(<half::bf16 as Elem>::DTYPE, DType::BF16);
/// assert_eq!(DType::BF16.size(), 2);
/// assert_eq!(DType::F64.to_string(), "f64");
/// ```
pub use zccl_runtime::DType;

mod sealed {
    pub trait Sealed {}
}

/// A plain element type: every bit pattern is valid and it has no padding.
///
/// Sealed; implemented for `u8, i32, i64, f16, bf16, f32, f64`.
///
/// ```
/// use zccl_primitives::dtype::{Elem, f16};
/// let x = f16::from_f32(1.5);
/// let acc: f32 = x.to_acc();
/// assert_eq!(acc, 1.5);
/// assert_eq!(f16::from_acc(acc), x);
/// ```
pub trait Elem:
    sealed::Sealed + Copy + Default + PartialEq + fmt::Debug + Send + Sync + 'static
{
    /// The matching [`DType`].
    const DTYPE: DType;
    /// The type reductions accumulate in: `f32` for `f16`/`bf16`, `Self` otherwise.
    type Acc: Elem<Acc = Self::Acc> + crate::reduce::Accumulator;
    /// Converts to the accumulator type (exact for every implemented type).
    ///
    /// ```
    /// use zccl_primitives::dtype::{bf16, Elem};
    /// let x: f32 = bf16::from_f32(-2.5).to_acc();
    /// assert_eq!(x, -2.5);
    /// assert_eq!(7i64.to_acc(), 7i64);
    /// ```
    fn to_acc(self) -> Self::Acc;
    /// Converts from the accumulator type: round-to-nearest-even for
    /// `f16`/`bf16`, identity otherwise.
    ///
    /// ```
    /// use zccl_primitives::dtype::{f16, Elem};
    /// // Halfway between two f16 values (spaced 2⁻¹⁰ above 1), ties go to even.
    /// let h = 2f32.powi(-11);
    /// assert_eq!(f16::from_acc(1.0 + h), f16::ONE);
    /// assert_eq!(f16::from_acc(1.0 + 3.0 * h), f16::from_f32(1.0 + 4.0 * h));
    /// assert_eq!(<i32 as Elem>::from_acc(-3), -3);
    /// ```
    fn from_acc(a: Self::Acc) -> Self;
}

macro_rules! plain_elem {
    ($($t:ty => $d:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Elem for $t {
            const DTYPE: DType = DType::$d;
            type Acc = $t;
            #[inline]
            fn to_acc(self) -> $t { self }
            #[inline]
            fn from_acc(a: $t) -> $t { a }
        }
    )*};
}
plain_elem!(u8 => U8, i32 => I32, i64 => I64, f32 => F32, f64 => F64);

macro_rules! half_elem {
    ($($t:ty => $d:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Elem for $t {
            const DTYPE: DType = DType::$d;
            type Acc = f32;
            #[inline]
            fn to_acc(self) -> f32 { self.to_f32() }
            #[inline]
            fn from_acc(a: f32) -> $t { <$t>::from_f32(a) }
        }
    )*};
}
half_elem!(f16 => F16, bf16 => BF16);

/// Copies elements into a new byte vector (native endian).
///
/// ```
/// use zccl_primitives::dtype::{to_bytes, from_bytes};
/// let b = to_bytes(&[1i32, -2]);
/// assert_eq!(b.len(), 8);
/// assert_eq!(from_bytes::<i32>(&b), vec![1, -2]);
/// ```
pub fn to_bytes<T: Elem>(s: &[T]) -> Vec<u8> {
    let b = as_bytes(s);
    let mut v = zccl_runtime::buffer::recycled_vec(b.len());
    zccl_transports::copy::copy(&mut v, b);
    v
}

/// Views elements as bytes without copying.
///
/// ```
/// use zccl_primitives::dtype::as_bytes;
/// assert_eq!(as_bytes(&[1u8, 2, 3]), &[1, 2, 3]);
/// ```
pub fn as_bytes<T: Elem>(s: &[T]) -> &[u8] {
    // SAFETY: `Elem` is sealed to padding-free plain types; the view covers
    // exactly the slice's memory and borrows it immutably.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// Views elements as writable bytes without copying (every bit pattern is
/// a valid element of the sealed `Elem` types).
///
/// ```
/// use zccl_primitives::dtype::as_bytes_mut;
/// let mut v = [0i32; 1];
/// as_bytes_mut(&mut v).copy_from_slice(&7i32.to_ne_bytes());
/// assert_eq!(v, [7]);
/// ```
pub fn as_bytes_mut<T: Elem>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: `Elem` is sealed to padding-free plain types for which every
    // bit pattern is valid; the view covers exactly the slice's memory and
    // borrows it exclusively.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// Copies bytes into a new vector of elements.
///
/// # Panics
/// If `b.len()` is not a multiple of the element size.
///
/// ```
/// use zccl_primitives::dtype::from_bytes;
/// assert_eq!(from_bytes::<u8>(&[9, 8]), vec![9, 8]);
/// ```
pub fn from_bytes<T: Elem>(b: &[u8]) -> Vec<T> {
    let sz = std::mem::size_of::<T>();
    assert!(
        b.len().is_multiple_of(sz),
        "{} bytes are not a whole number of {} elements",
        b.len(),
        T::DTYPE
    );
    let n = b.len() / sz;
    let mut v = vec![T::default(); n];
    // SAFETY: `v` owns `n * sz` bytes, the source has that many, they do not
    // overlap, and every bit pattern is a valid `T`.
    unsafe { zccl_transports::copy::copy_raw(v.as_mut_ptr().cast::<u8>(), b.as_ptr(), n * sz) };
    v
}

/// Views bytes as elements without copying when the start is aligned for
/// `T`; `None` otherwise.
///
/// # Panics
/// If `b.len()` is not a multiple of the element size.
///
/// ```
/// use zccl_primitives::dtype::cast_slice;
/// let v = vec![1.5f32, 2.5];
/// let b = zccl_primitives::dtype::as_bytes(&v);
/// assert_eq!(cast_slice::<f32>(b), Some(&[1.5f32, 2.5][..]));
/// ```
pub fn cast_slice<T: Elem>(b: &[u8]) -> Option<&[T]> {
    let sz = std::mem::size_of::<T>();
    assert!(
        b.len().is_multiple_of(sz),
        "{} bytes are not a whole number of {} elements",
        b.len(),
        T::DTYPE
    );
    if !(b.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return None;
    }
    // SAFETY: aligned, `b.len() / sz` elements fit exactly, every bit pattern
    // is a valid `T` (sealed plain types), and the view borrows `b`.
    Some(unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<T>(), b.len() / sz) })
}

/// Bytes as elements of `T`: borrowed (no copy) when the start is aligned
/// for `T`, copied into a new vector otherwise. Buffers received from the
/// runtime's communicator are always aligned, and so is the memory of a
/// `Vec<T>` viewed with [`as_bytes`]; an unaligned slice (an odd offset into
/// a byte buffer) costs one copy.
///
/// This is the one conversion a callback that gets bytes needs: no
/// `Option` to handle, no fallback to write.
///
/// # Panics
/// If `b.len()` is not a multiple of the element size, like [`from_bytes`]
/// and [`cast_slice`]: a length that is not a whole number of elements is a
/// bug of the caller (the lengths of every message are the caller's), not a
/// condition to recover from.
///
/// ```
/// use std::borrow::Cow;
/// use zccl_primitives::dtype::{as_bytes, as_elems};
/// let v = vec![1.5f32, -2.0, 4.0];
/// let b = as_bytes(&v);
/// // Aligned: a view of the same memory.
/// assert!(matches!(as_elems::<f32>(b), Cow::Borrowed(s) if s == &[1.5, -2.0, 4.0]));
/// // Not aligned for f32 (one byte in): the same values, copied.
/// let mut shifted = vec![0u8; b.len() + 1];
/// shifted[1..].copy_from_slice(b);
/// assert_eq!(&*as_elems::<f32>(&shifted[1..]), &[1.5, -2.0, 4.0]);
/// ```
pub fn as_elems<T: Elem>(b: &[u8]) -> std::borrow::Cow<'_, [T]> {
    match cast_slice::<T>(b) {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(from_bytes(b)),
    }
}

/// A vector of elements as the owner of a message's bytes (no copy): lets
/// [`crate::fabric::RecvBytes::from_owner`] hold a `Vec<T>`.
pub(crate) struct ElemVec<T: Elem>(pub(crate) Vec<T>);

impl<T: Elem> AsRef<[u8]> for ElemVec<T> {
    fn as_ref(&self) -> &[u8] {
        as_bytes(&self.0)
    }
}

/// Mutable form of [`cast_slice`].
pub(crate) fn cast_slice_mut<T: Elem>(b: &mut [u8]) -> Option<&mut [T]> {
    let sz = std::mem::size_of::<T>();
    assert!(b.len().is_multiple_of(sz));
    if !(b.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return None;
    }
    // SAFETY: as in `cast_slice`; the view borrows `b` mutably and any value
    // written is a valid byte pattern.
    Some(unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<T>(), b.len() / sz) })
}

/// A new message of `count` elements of `T`, written by `fill` (which gets
/// the elements as a slice; zero-initialised). No intermediate vector when
/// the allocation is aligned for `T` (the usual case).
pub(crate) fn message_with<T: Elem>(count: usize, fill: impl FnOnce(&mut [T])) -> Vec<u8> {
    let mut b = zccl_runtime::buffer::recycled_vec(count * std::mem::size_of::<T>());
    fill_as(&mut b, fill);
    b
}

/// Has `fill` write `b` as elements of `T`: in place where `b` is aligned
/// for `T` (the usual case), else through a vector copied in after.
pub(crate) fn fill_as<T: Elem>(b: &mut [u8], fill: impl FnOnce(&mut [T])) {
    match cast_slice_mut::<T>(b) {
        Some(s) => fill(s),
        None => {
            let mut tmp = vec![T::default(); b.len() / std::mem::size_of::<T>()];
            fill(&mut tmp);
            zccl_transports::copy::copy(b, as_bytes(&tmp));
        }
    }
}

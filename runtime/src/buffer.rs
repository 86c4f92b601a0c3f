//! Typed host buffers and the element types zccl moves.
//!
//! [`HostBuffer<T>`] owns a `Vec<T>` of one of the [`Element`] types (`u8`,
//! `i32`, `i64`, `f16`, `bf16`, `f32`, `f64`). Sending an owned buffer does
//! not copy it; sending a slice copies it once. [`MemoryKind`] is the seam for
//! device memory: today only [`MemoryKind::Host`] exists (no device memory is
//! implemented, and nothing pretends otherwise).

use std::fmt;
use std::ops::{Deref, DerefMut};

use bytes::Bytes;

pub use half::{bf16, f16};

/// Element type of a buffer; travels with every message so that a receive of
/// another type fails (and with it the channel, on every rank).
///
/// The first seven are the [`Element`] types zccl moves, reduces and
/// converts. The others are only **labels**: their data moves as bytes (a
/// `u8` buffer; the Python binding uses them for torch's and numpy's other
/// types), but the message still says what it holds, so that ranks that
/// pass, say, `int8` on one side and `uint8` or `bool` of the same size on
/// the other fail with a mismatch naming both instead of reading each
/// other's bytes as their own.
///
/// ```
/// use zccl_runtime::DType;
/// assert_eq!(DType::I8.size(), 1);
/// assert_eq!(DType::C128.to_string(), "complex128");
/// assert_eq!(DType::from_code(DType::Bool.code()), Some(DType::Bool));
/// assert!(DType::F32.is_element() && !DType::U16.is_element());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DType {
    /// `u8`
    U8 = 1,
    /// `i32`
    I32 = 2,
    /// `i64`
    I64 = 3,
    /// IEEE half precision ([`f16`](struct@f16)).
    F16 = 4,
    /// bfloat16 ([`bf16`]).
    BF16 = 5,
    /// `f32`
    F32 = 6,
    /// `f64`
    F64 = 7,
    /// `i8` (label only: moves as bytes).
    I8 = 8,
    /// `i16` (label only).
    I16 = 9,
    /// `u16` (label only).
    U16 = 10,
    /// `u32` (label only).
    U32 = 11,
    /// `u64` (label only).
    U64 = 12,
    /// Boolean, one byte (label only).
    Bool = 13,
    /// Complex of two f16 (torch's `complex32`; label only).
    C32 = 14,
    /// Complex of two f32 (label only).
    C64 = 15,
    /// Complex of two f64 (label only).
    C128 = 16,
    /// 8-bit float, 4-bit exponent (torch's `float8_e4m3fn`; label only).
    F8E4M3 = 17,
    /// 8-bit float, 5-bit exponent (torch's `float8_e5m2`; label only).
    F8E5M2 = 18,
}

impl DType {
    /// The [`Element`] types (the ones zccl reduces and converts), in a
    /// fixed order.
    pub const ALL: [DType; 7] = [
        DType::U8,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
    ];

    /// The types that are labels only: their data moves as bytes.
    pub const LABELS: [DType; 11] = [
        DType::I8,
        DType::I16,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::Bool,
        DType::C32,
        DType::C64,
        DType::C128,
        DType::F8E4M3,
        DType::F8E5M2,
    ];

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 | Self::Bool | Self::F8E4M3 | Self::F8E5M2 => 1,
            Self::F16 | Self::BF16 | Self::I16 | Self::U16 => 2,
            Self::I32 | Self::F32 | Self::U32 | Self::C32 => 4,
            Self::I64 | Self::F64 | Self::U64 | Self::C64 => 8,
            Self::C128 => 16,
        }
    }

    /// Whether this is one of the [`Element`] types ([`DType::ALL`]), not a
    /// label only.
    pub const fn is_element(self) -> bool {
        (self as u8) <= 7
    }

    /// Lower-case name (`"f32"`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::U8 => "u8",
            Self::I32 => "i32",
            Self::I64 => "i64",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::F32 => "f32",
            Self::F64 => "f64",
            Self::I8 => "i8",
            Self::I16 => "i16",
            Self::U16 => "u16",
            Self::U32 => "u32",
            Self::U64 => "u64",
            Self::Bool => "bool",
            Self::C32 => "complex32",
            Self::C64 => "complex64",
            Self::C128 => "complex128",
            Self::F8E4M3 => "float8_e4m3fn",
            Self::F8E5M2 => "float8_e5m2",
        }
    }

    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Parses a wire code.
    pub const fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::U8,
            2 => Self::I32,
            3 => Self::I64,
            4 => Self::F16,
            5 => Self::BF16,
            6 => Self::F32,
            7 => Self::F64,
            8 => Self::I8,
            9 => Self::I16,
            10 => Self::U16,
            11 => Self::U32,
            12 => Self::U64,
            13 => Self::Bool,
            14 => Self::C32,
            15 => Self::C64,
            16 => Self::C128,
            17 => Self::F8E4M3,
            18 => Self::F8E5M2,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A plain element type zccl can move: every bit pattern is valid and it has
/// no padding. Sealed: implemented for `u8, i32, i64, f16, bf16, f32, f64`.
pub trait Element: sealed::Sealed + Copy + Default + Send + Sync + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t { const DTYPE: DType = DType::$d; }
    )*};
}
element!(u8 => U8, i32 => I32, i64 => I64, f16 => F16, bf16 => BF16, f32 => F32, f64 => F64);

/// Views a slice of elements as bytes.
pub fn as_bytes<T: Element>(s: &[T]) -> &[u8] {
    // SAFETY: `Element` is sealed to padding-free plain types; the byte view
    // covers exactly the slice's memory and borrows it immutably.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// Copies bytes into a new vector of elements. `b.len()` must be a multiple of the element size.
pub fn vec_from_bytes<T: Element>(b: &[u8]) -> Vec<T> {
    let n = b.len() / std::mem::size_of::<T>();
    debug_assert_eq!(n * std::mem::size_of::<T>(), b.len());
    let mut v = Vec::<T>::with_capacity(n);
    // SAFETY: `v` has capacity for `n` elements, i.e. `n * size_of::<T>()`
    // bytes, all written by the copy before the length is set; any bit
    // pattern is a valid `T` (an `Element` is plain data).
    unsafe {
        zccl_transports::copy::copy_raw(
            v.as_mut_ptr().cast::<u8>(),
            b.as_ptr(),
            n * std::mem::size_of::<T>(),
        );
        v.set_len(n);
    }
    v
}

/// Where a buffer's memory lives. Only host memory exists today; device
/// memory will be added with the CUDA transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryKind {
    /// Ordinary process memory.
    Host,
}

/// An owned, typed buffer in host memory.
///
/// A buffer made from a `Vec<T>` owns that vector. A buffer returned by a
/// receive usually holds the bytes the transport received, without a copy
/// (their memory is recycled when the buffer is dropped); the first mutable
/// access ([`DerefMut`]) or [`HostBuffer::into_vec`] copies those into a
/// `Vec<T>` of its own. Reading (`Deref`, [`HostBuffer::as_bytes`]) never copies.
///
/// ```
/// use zccl_runtime::buffer::{HostBuffer, DType, MemoryKind};
/// let b: HostBuffer<f32> = vec![1.0, 2.0].into();
/// assert_eq!(b.dtype(), DType::F32);
/// assert_eq!(b.memory_kind(), MemoryKind::Host);
/// assert_eq!(b.byte_len(), 8);
/// assert_eq!(&b[..], &[1.0, 2.0]);
/// ```
#[derive(Clone)]
pub struct HostBuffer<T: Element> {
    repr: Repr<T>,
}

#[derive(Clone)]
enum Repr<T: Element> {
    Vec(Vec<T>),
    /// Received bytes: aligned for `T`, a whole number of elements.
    Bytes(Bytes),
}

impl<T: Element> Default for HostBuffer<T> {
    fn default() -> Self {
        Vec::new().into()
    }
}

impl<T: Element + PartialEq> PartialEq for HostBuffer<T> {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl<T: Element> HostBuffer<T> {
    /// A buffer of `len` default (zero) elements.
    pub fn zeroed(len: usize) -> Self {
        vec![T::default(); len].into()
    }

    /// Views received bytes as elements without copying when they are
    /// suitably aligned; copies them otherwise. `b.len()` must be a multiple
    /// of the element size.
    pub(crate) fn from_received(b: Bytes) -> Self {
        let size = std::mem::size_of::<T>();
        debug_assert_eq!(b.len() % size, 0);
        if b.len().is_multiple_of(size)
            && (b.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
        {
            Self {
                repr: Repr::Bytes(b),
            }
        } else {
            vec_from_bytes(&b).into()
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        T::DTYPE
    }

    /// Where the memory lives.
    pub fn memory_kind(&self) -> MemoryKind {
        MemoryKind::Host
    }

    /// Length in bytes.
    pub fn byte_len(&self) -> usize {
        std::mem::size_of_val(&self[..])
    }

    /// The elements as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.repr {
            Repr::Vec(v) => as_bytes(v),
            Repr::Bytes(b) => b,
        }
    }

    /// Returns the vector (copying received bytes into a new one).
    pub fn into_vec(self) -> Vec<T> {
        match self.repr {
            Repr::Vec(v) => v,
            Repr::Bytes(b) => vec_from_bytes(&b),
        }
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        match self.repr {
            Repr::Vec(v) => Bytes::from_owner(Recycle(v)),
            Repr::Bytes(b) => b,
        }
    }
}

/// Bytes of a sent vector; when the transport is done with them, a large
/// byte vector goes back to the recycling pool ([`recycled_vec`]).
struct Recycle<T: Element>(Vec<T>);

impl<T: Element> AsRef<[u8]> for Recycle<T> {
    fn as_ref(&self) -> &[u8] {
        as_bytes(&self.0)
    }
}

impl<T: Element> Drop for Recycle<T> {
    fn drop(&mut self) {
        if T::DTYPE != DType::U8 || self.0.capacity() < RECYCLE_MIN_BYTES {
            return;
        }
        let mut v = std::mem::ManuallyDrop::new(std::mem::take(&mut self.0));
        // SAFETY: `T` is `u8` (the only element type with this dtype), so
        // the vector's pointer, length, capacity and layout are those of a
        // `Vec<u8>`.
        let bytes =
            unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<u8>(), v.len(), v.capacity()) };
        if bytes.capacity() > RECYCLE_MAX_BYTES {
            return;
        }
        let mut pool = RECYCLED.lock().unwrap_or_else(|p| p.into_inner());
        // The newest buffers are kept: they have the sizes in use now (a
        // sweep from small to large sizes must not leave the pool full of
        // small ones). The oldest go to make room.
        pool.push(bytes);
        let mut held: usize = pool.iter().map(Vec::capacity).sum();
        while pool.len() > RECYCLE_MAX_BUFFERS || held > RECYCLE_MAX_BYTES {
            held -= pool.remove(0).capacity();
        }
    }
}

/// Byte vectors at least this large are recycled.
pub const RECYCLE_MIN_BYTES: usize = 256 << 10;
const RECYCLE_MAX_BUFFERS: usize = 32;
const RECYCLE_MAX_BYTES: usize = 256 << 20;

static RECYCLED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// A byte vector of `len` bytes for a message, reusing the memory of an
/// earlier sent message when one of a similar size is free (its pages are
/// already faulted in, where a fresh allocation of this size would be
/// zero pages faulted in one by one as they are written). The contents are
/// unspecified (but initialised): callers overwrite every byte.
///
/// ```
/// let v = zccl_runtime::buffer::recycled_vec(1 << 20);
/// assert_eq!(v.len(), 1 << 20);
/// ```
pub fn recycled_vec(len: usize) -> Vec<u8> {
    if len < RECYCLE_MIN_BYTES {
        // Not `calloc`, which skips the thread's cache of freed chunks.
        return zccl_transports::recvbuf::small_zeroed(len);
    }
    {
        let mut pool = RECYCLED.lock().unwrap_or_else(|p| p.into_inner());
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len && v.capacity() <= len + len / 4)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let mut v = pool.swap_remove(i);
            drop(pool);
            // Within the capacity: no reallocation, only the bytes beyond
            // the old length are written.
            v.resize(len, 0);
            return v;
        }
    }
    vec![0u8; len]
}

impl<T: Element> AsRef<[u8]> for HostBuffer<T> {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl<T: Element> fmt::Debug for HostBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostBuffer<{}>(len {})", T::DTYPE, self.len())
    }
}

impl<T: Element> Deref for HostBuffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.repr {
            Repr::Vec(v) => v,
            Repr::Bytes(b) => {
                let n = b.len() / std::mem::size_of::<T>();
                // SAFETY: `from_received` checked alignment and length; any
                // bit pattern is a valid `T`; the bytes are immutable and
                // live as long as `self`.
                unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<T>(), n) }
            }
        }
    }
}

impl<T: Element> DerefMut for HostBuffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        if let Repr::Bytes(b) = &self.repr {
            self.repr = Repr::Vec(vec_from_bytes(b));
        }
        match &mut self.repr {
            Repr::Vec(v) => v,
            Repr::Bytes(_) => unreachable!("converted above"),
        }
    }
}

impl<T: Element> From<Vec<T>> for HostBuffer<T> {
    fn from(data: Vec<T>) -> Self {
        Self {
            repr: Repr::Vec(data),
        }
    }
}

impl<T: Element> From<&[T]> for HostBuffer<T> {
    fn from(s: &[T]) -> Self {
        // Not `to_vec`: the copy must not fall into the short-distance trap
        // (`zccl_transports::copy`), which a fresh allocation meets as
        // often as any other.
        zccl_transports::copy::to_vec(s).into()
    }
}

impl<T: Element, const N: usize> From<[T; N]> for HostBuffer<T> {
    fn from(a: [T; N]) -> Self {
        a.to_vec().into()
    }
}

/// Untyped data received by an op of a batch.
#[derive(Clone, PartialEq)]
pub struct Received {
    dtype: DType,
    bytes: Bytes,
}

impl fmt::Debug for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Received({} B of {})", self.bytes.len(), self.dtype)
    }
}

impl Received {
    pub(crate) fn new(dtype: DType, bytes: Bytes) -> Self {
        Self { dtype, bytes }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Copies into a typed buffer; `None` when `T` is not the received type.
    pub fn to_buffer<T: Element>(&self) -> Option<HostBuffer<T>> {
        (T::DTYPE == self.dtype).then(|| HostBuffer::from_received(self.bytes.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for d in DType::ALL.into_iter().chain(DType::LABELS) {
            assert_eq!(DType::from_code(d.code()), Some(d));
            assert_eq!(d.is_element(), DType::ALL.contains(&d), "{d}");
        }
        assert_eq!(DType::from_code(0), None);
        assert_eq!(DType::from_code(19), None);
        assert_eq!(<bf16 as Element>::DTYPE.size(), 2);
    }

    #[test]
    fn bytes_round_trip() {
        let v: Vec<i64> = vec![-1, 2, i64::MAX];
        let b = as_bytes(&v).to_vec();
        assert_eq!(b.len(), 24);
        assert_eq!(vec_from_bytes::<i64>(&b), v);
        let h: HostBuffer<f16> = vec![f16::from_f32(1.5); 3].into();
        let bytes = h.clone().into_bytes();
        assert_eq!(&bytes[..], h.as_bytes());
        let r = Received::new(DType::F16, bytes);
        assert_eq!(r.to_buffer::<f16>().unwrap(), h);
        assert!(r.to_buffer::<u8>().is_none());
    }

    #[test]
    fn received_bytes_are_viewed_then_copied_on_write() {
        let mut rb = zccl_transports::recvbuf::RecvBuf::new(4 * 3);
        rb.as_mut_slice()
            .copy_from_slice(as_bytes(&[1.0f32, 2.0, 3.0]));
        let bytes = rb.into_bytes();
        let ptr = bytes.as_ptr();
        let mut h = HostBuffer::<f32>::from_received(bytes.clone());
        assert_eq!(h.as_bytes().as_ptr(), ptr, "aligned bytes are not copied");
        assert_eq!(&h[..], &[1.0, 2.0, 3.0]);
        h[1] = 9.0; // copy on write: the received bytes are untouched
        assert_eq!(&h[..], &[1.0, 9.0, 3.0]);
        assert_eq!(&bytes[4..8], &2.0f32.to_le_bytes());
        assert_eq!(h.clone().into_vec(), vec![1.0, 9.0, 3.0]);
        // Misaligned bytes are copied.
        let odd = Bytes::from(vec![0u8; 9]).slice(1..9);
        let h = HostBuffer::<i64>::from_received(odd);
        assert_eq!(&h[..], &[0]);
        assert_eq!(HostBuffer::<f32>::default().len(), 0);
    }
}

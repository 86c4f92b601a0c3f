//! Caller memory as Python hands it over: an address, a byte length and an
//! element type. Nothing is copied: the Python side (`zccl._buf`) takes the
//! address of a contiguous CPU tensor or numpy array and keeps the object
//! alive until the operation that uses it completed.

use pyo3::PyResult;
use pyo3::exceptions::{PyTypeError, PyValueError};
use zccl_primitives::dtype::Elem;
use zccl_primitives::reduce::ReduceOp;

/// Element types the reductions know. Any other type moves as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dt {
    U8,
    I32,
    I64,
    F16,
    Bf16,
    F32,
    F64,
}

impl Dt {
    /// The runtime's element type (the label messages carry).
    pub fn dtype(self) -> zccl_runtime::DType {
        use zccl_runtime::DType;
        match self {
            Dt::U8 => DType::U8,
            Dt::I32 => DType::I32,
            Dt::I64 => DType::I64,
            Dt::F16 => DType::F16,
            Dt::Bf16 => DType::BF16,
            Dt::F32 => DType::F32,
            Dt::F64 => DType::F64,
        }
    }

    /// The label of a buffer that only moves: its element type, also for
    /// the types zccl moves but does not reduce (int8, bool, complex64,
    /// ...: their label still tells them apart, so ranks that pass int8
    /// here and uint8 there fail with a mismatch); plain bytes for a type
    /// zccl has no name for.
    pub fn label(name: Option<&str>) -> zccl_runtime::DType {
        use zccl_runtime::DType;
        let Some(n) = name else {
            return DType::U8;
        };
        if let Ok(d) = Dt::parse(n) {
            return d.dtype();
        }
        match n {
            "int8" => DType::I8,
            "int16" | "short" => DType::I16,
            "uint16" => DType::U16,
            "uint32" => DType::U32,
            "uint64" => DType::U64,
            "bool" => DType::Bool,
            "complex32" | "chalf" => DType::C32,
            "complex64" | "cfloat" => DType::C64,
            "complex128" | "cdouble" => DType::C128,
            "float8_e4m3fn" => DType::F8E4M3,
            "float8_e5m2" => DType::F8E5M2,
            _ => DType::U8,
        }
    }

    /// Parses the names `zccl._buf` uses (torch's and numpy's spelling).
    pub fn parse(s: &str) -> PyResult<Dt> {
        Ok(match s {
            "uint8" | "u8" => Dt::U8,
            "int32" | "i32" => Dt::I32,
            "int64" | "i64" => Dt::I64,
            "float16" | "f16" | "half" => Dt::F16,
            "bfloat16" | "bf16" => Dt::Bf16,
            "float32" | "f32" | "float" => Dt::F32,
            "float64" | "f64" | "double" => Dt::F64,
            other => {
                return Err(PyTypeError::new_err(format!(
                    "zccl: reductions support uint8, int32, int64, float16, bfloat16, float32 and \
                     float64, not {other}"
                )));
            }
        })
    }
}

/// Runs `$body` with `$T` bound to the element type of `$dt`.
macro_rules! with_elem {
    ($dt:expr, $T:ident => $body:expr) => {
        match $dt {
            $crate::buf::Dt::U8 => {
                type $T = u8;
                $body
            }
            $crate::buf::Dt::I32 => {
                type $T = i32;
                $body
            }
            $crate::buf::Dt::I64 => {
                type $T = i64;
                $body
            }
            $crate::buf::Dt::F16 => {
                type $T = ::half::f16;
                $body
            }
            $crate::buf::Dt::Bf16 => {
                type $T = ::half::bf16;
                $body
            }
            $crate::buf::Dt::F32 => {
                type $T = f32;
                $body
            }
            $crate::buf::Dt::F64 => {
                type $T = f64;
                $body
            }
        }
    };
}
pub(crate) use with_elem;

/// Parses torch's reduce-op names (`ReduceOp.SUM` …) as the Python layer
/// passes them, for a buffer of `dt`.
pub fn reduce_op(name: &str, dt: Dt) -> PyResult<ReduceOp> {
    let op = match name.to_ascii_lowercase().as_str() {
        "sum" => ReduceOp::Sum,
        "prod" | "product" => ReduceOp::Prod,
        "min" => ReduceOp::Min,
        "max" => ReduceOp::Max,
        "avg" | "mean" => ReduceOp::Avg,
        "band" | "bor" | "bxor" => {
            return Err(PyValueError::new_err(format!(
                "zccl: reduce op {name} is not supported yet (sum, prod, min, max, avg are)"
            )));
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "zccl: unknown reduce op {other:?} (sum, prod, min, max, avg)"
            )));
        }
    };
    let _ = dt;
    Ok(op)
}

/// A span of caller memory.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub addr: usize,
    pub len: usize,
}

// SAFETY: a span is an address the Python side keeps valid (and does not
// touch) until the operation that uses it completed; see the module docs.
unsafe impl Send for Span {}
unsafe impl Sync for Span {}

impl Span {
    pub fn new(addr: usize, len: usize, what: &str) -> PyResult<Span> {
        if addr == 0 && len > 0 {
            return Err(PyValueError::new_err(format!(
                "zccl: {what} has a null address"
            )));
        }
        // No Rust slice may be longer than isize::MAX bytes or wrap around
        // the address space.
        if len > isize::MAX as usize || addr.checked_add(len).is_none() {
            return Err(PyValueError::new_err(format!(
                "zccl: {what} of {len} bytes at {addr:#x} does not fit in the address space"
            )));
        }
        Ok(Span { addr, len })
    }

    fn check<T>(&self, what: &str) -> PyResult<usize> {
        let sz = std::mem::size_of::<T>();
        if !self.len.is_multiple_of(sz) {
            return Err(PyValueError::new_err(format!(
                "zccl: {what} has {} bytes, not a whole number of {sz}-byte elements",
                self.len
            )));
        }
        if self.len > 0 && !self.addr.is_multiple_of(std::mem::align_of::<T>()) {
            return Err(PyValueError::new_err(format!(
                "zccl: {what} at {:#x} is not aligned to its {sz}-byte elements",
                self.addr
            )));
        }
        Ok(self.len / sz)
    }

    /// The span, checked to hold whole, aligned elements of `dt`: an
    /// argument error raised before anything is submitted (a check inside
    /// the operation would fail it, and so abort the communicator on every
    /// rank, for what is the caller's mistake on this one).
    pub fn of(self, dt: Dt, what: &str) -> PyResult<Span> {
        with_elem!(dt, T => self.check::<T>(what))?;
        Ok(self)
    }

    /// The span as elements.
    ///
    /// # Safety
    /// The memory must be valid for reads for the lifetime chosen and not
    /// written by anyone else meanwhile.
    pub unsafe fn slice<'a, T: Elem>(&self, what: &str) -> PyResult<&'a [T]> {
        let n = self.check::<T>(what)?;
        if n == 0 {
            return Ok(&[]);
        }
        // SAFETY: checked length and alignment; validity is the caller's.
        Ok(unsafe { std::slice::from_raw_parts(self.addr as *const T, n) })
    }

    /// The span as mutable elements.
    ///
    /// # Safety
    /// The memory must be valid for reads and writes for the lifetime chosen
    /// and not accessed by anyone else meanwhile.
    pub unsafe fn slice_mut<'a, T: Elem>(&self, what: &str) -> PyResult<&'a mut [T]> {
        let n = self.check::<T>(what)?;
        if n == 0 {
            return Ok(&mut []);
        }
        // SAFETY: as above, and exclusive.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.addr as *mut T, n) })
    }

    /// Whether two spans share a byte.
    pub fn overlaps(&self, o: &Span) -> bool {
        self.len > 0 && o.len > 0 && self.addr < o.addr + o.len && o.addr < self.addr + self.len
    }
}

//! What a message belongs to beyond its element type: the collective (and
//! its reduction) that sent it. The label shares the message header's type
//! byte with the element type (type in the low 3 bits, label in the high 5),
//! and the receive's match compares the whole byte, so ranks that disagree
//! on the operation fail with a mismatch naming both operations instead of
//! reading each other's bytes as their own (all-reduce pieces taken for
//! all-gather blocks, a max reduced into a sum). Costs nothing on the wire.
//!
//! ```
//! use zccl_runtime::{DType, label::OpLabel};
//! let l = OpLabel::ALL_REDUCE_SUM;
//! assert_eq!(l.to_string(), "all_reduce(sum)");
//! let byte = l.wire(DType::F32);
//! assert_eq!(OpLabel::split(byte), (Some(DType::F32), l));
//! assert_eq!(OpLabel::split(DType::I64.code()), (Some(DType::I64), OpLabel::NONE));
//! ```

use std::fmt;

use crate::buffer::DType;

/// An operation label, `0..32` (0: none, plain point-to-point traffic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpLabel(u8);

const NAMES: [&str; 32] = [
    "",
    "all_reduce(sum)",
    "all_reduce(prod)",
    "all_reduce(min)",
    "all_reduce(max)",
    "all_reduce(avg)",
    "reduce_scatter(sum)",
    "reduce_scatter(prod)",
    "reduce_scatter(min)",
    "reduce_scatter(max)",
    "reduce_scatter(avg)",
    "all_gather",
    "broadcast",
    "barrier",
    "all_to_all",
    "all_to_all_v",
    "ring_shift",
    "ring_pass",
    "token_ring",
    "all_scan",
    "op 20",
    "op 21",
    "op 22",
    "op 23",
    "op 24",
    "op 25",
    "op 26",
    "op 27",
    "op 28",
    "op 29",
    "op 30",
    "op 31",
];

impl OpLabel {
    /// No label (what plain sends and receives carry).
    pub const NONE: Self = Self(0);
    /// `all_reduce` with sum; prod, min, max and avg follow in that order.
    pub const ALL_REDUCE_SUM: Self = Self(1);
    /// `reduce_scatter` with sum; prod, min, max and avg follow.
    pub const REDUCE_SCATTER_SUM: Self = Self(6);
    /// `all_gather`.
    pub const ALL_GATHER: Self = Self(11);
    /// `broadcast`.
    pub const BROADCAST: Self = Self(12);
    /// `barrier`.
    pub const BARRIER: Self = Self(13);
    /// `all_to_all` with equal blocks.
    pub const ALL_TO_ALL: Self = Self(14);
    /// `all_to_all_v`.
    pub const ALL_TO_ALL_V: Self = Self(15);
    /// `ring_shift`.
    pub const RING_SHIFT: Self = Self(16);
    /// `ring_pass`.
    pub const RING_PASS: Self = Self(17);
    /// TokenRing.
    pub const TOKEN_RING: Self = Self(18);
    /// All-Scan.
    pub const ALL_SCAN: Self = Self(19);

    /// The label `code` (`0..32`).
    pub const fn new(code: u8) -> Option<Self> {
        if code < 32 { Some(Self(code)) } else { None }
    }

    /// `self` shifted by `k` (the k-th reduction after `ALL_REDUCE_SUM` /
    /// `REDUCE_SCATTER_SUM`); `None` past the last label.
    pub const fn offset(self, k: u8) -> Option<Self> {
        Self::new(self.0 + k)
    }

    /// The label's number.
    pub const fn code(self) -> u8 {
        self.0
    }

    /// The header's type byte for `dtype` under this label.
    pub const fn wire(self, dtype: DType) -> u8 {
        dtype.code() | (self.0 << 3)
    }

    /// A header's type byte as element type and label.
    pub const fn split(byte: u8) -> (Option<DType>, OpLabel) {
        (DType::from_code(byte & 7), OpLabel(byte >> 3))
    }
}

impl fmt::Display for OpLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NAMES[self.0 as usize & 31])
    }
}

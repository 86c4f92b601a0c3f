//! What a message belongs to beyond its element type: the collective (and
//! its reduction) that sent it. The label shares the message header's type
//! code with the element type (type in the low byte, label in the high
//! byte), and the receive's match compares the whole code, so ranks that disagree
//! on the operation fail with a mismatch naming both operations instead of
//! reading each other's bytes as their own (all-reduce pieces taken for
//! all-gather blocks, a max reduced into a sum). The label's top bit marks a
//! piece of a message sent in pieces after which more follow
//! ([`OpLabel::more_follow`]), so ranks whose pieces differ only in number
//! fail the same way. Costs nothing on the wire.
//!
//! ```
//! use zccl_runtime::{DType, label::OpLabel};
//! let l = OpLabel::ALL_REDUCE_SUM;
//! assert_eq!(l.to_string(), "all_reduce(sum)");
//! let code = l.wire(DType::F32);
//! assert_eq!(OpLabel::split(code), (Some(DType::F32), l));
//! assert_eq!(OpLabel::split(DType::I64.code().into()), (Some(DType::I64), OpLabel::NONE));
//! ```

use std::fmt;

use crate::buffer::DType;

/// An operation label, `0..32` (0: none, plain point-to-point traffic),
/// possibly marked as a piece of a longer message
/// ([`OpLabel::more_follow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpLabel(u8);

/// The bit of a label that marks a piece after which more pieces of the same
/// stream follow ([`OpLabel::more_follow`]).
const MORE: u8 = 0x80;

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
    "broadcast(root 0 mod 11)",
    "broadcast(root 1 mod 11)",
    "broadcast(root 2 mod 11)",
    "broadcast(root 3 mod 11)",
    "broadcast(root 4 mod 11)",
    "broadcast(root 5 mod 11)",
    "broadcast(root 6 mod 11)",
    "broadcast(root 7 mod 11)",
    "broadcast(root 8 mod 11)",
    "broadcast(root 9 mod 11)",
    "broadcast(root 10 mod 11)",
    "all_scan(reverse)",
];

/// The first of the broadcast labels that carry the root (modulo
/// [`ROOT_LABELS`]).
const BROADCAST_ROOT_0: u8 = 20;
/// How many broadcast-root labels there are: roots are told apart modulo
/// this (two ranks naming roots 0 and 11 are not caught by the label; a
/// broadcast of more than 2 ranks checks its root besides,
/// `zccl_primitives::collectives::broadcast`).
pub const ROOT_LABELS: u8 = 11;

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
    /// All-Scan in rank order (`ScanDirection::Forward`).
    pub const ALL_SCAN: Self = Self(19);
    /// All-Scan in reverse rank order (`ScanDirection::Reverse`, the
    /// backward pass): its own label, so that ranks that disagree on the
    /// direction fail with an operation mismatch instead of each sending
    /// to a rank that does not receive from it.
    pub const ALL_SCAN_REVERSE: Self = Self(31);

    /// `broadcast` from `root`: the label carries the root modulo
    /// [`ROOT_LABELS`], so ranks that name different roots (not a multiple
    /// of 11 apart) fail with a mismatch naming both instead of completing
    /// where a message happens to fit.
    ///
    /// ```
    /// use zccl_runtime::label::OpLabel;
    /// assert_eq!(OpLabel::broadcast_root(3).to_string(), "broadcast(root 3 mod 11)");
    /// assert_ne!(OpLabel::broadcast_root(0), OpLabel::broadcast_root(1));
    /// assert!(OpLabel::broadcast_root(13).is_broadcast());
    /// assert!(!OpLabel::ALL_SCAN_REVERSE.is_broadcast());
    /// ```
    pub const fn broadcast_root(root: usize) -> Self {
        Self(BROADCAST_ROOT_0 + (root % ROOT_LABELS as usize) as u8)
    }

    /// Whether this is a broadcast label (with or without its root).
    pub const fn is_broadcast(self) -> bool {
        let b = self.base().0;
        b == Self::BROADCAST.0 || (b >= BROADCAST_ROOT_0 && b < BROADCAST_ROOT_0 + ROOT_LABELS)
    }

    /// This label on a piece of a message sent in pieces (a ring
    /// collective's chunk, a chain broadcast's segments) that is not the
    /// stream's last: the receive's match compares it with the label the
    /// receiver expects, so ranks whose chunks differ by whole pieces (where
    /// one side's pieces are all the other side's first ones, every size
    /// alike) fail with a mismatch at the shorter side's last piece instead
    /// of that side completing with the other's first pieces.
    ///
    /// ```
    /// use zccl_runtime::{DType, label::OpLabel};
    /// let l = OpLabel::ALL_REDUCE_SUM;
    /// let m = l.more_follow();
    /// assert_ne!(m.wire(DType::F32), l.wire(DType::F32));
    /// assert_eq!(OpLabel::split(m.wire(DType::F32)), (Some(DType::F32), m));
    /// assert_eq!((m.base(), m.has_more()), (l, true));
    /// assert_eq!(m.to_string(), "all_reduce(sum), a piece with more to follow");
    /// ```
    pub const fn more_follow(self) -> Self {
        Self(self.0 | MORE)
    }

    /// Whether the label marks a piece with more to follow
    /// ([`OpLabel::more_follow`]).
    pub const fn has_more(self) -> bool {
        self.0 & MORE != 0
    }

    /// The operation, without [`OpLabel::more_follow`]'s mark.
    pub const fn base(self) -> Self {
        Self(self.0 & !MORE)
    }

    /// The label a collective stamps on its messages when the caller (a
    /// binding, through a labelled communicator) may already have set one:
    /// the caller's wins, except that a plain `broadcast` takes the root
    /// the collective knows. `self` is the caller's label.
    ///
    /// ```
    /// use zccl_runtime::label::OpLabel;
    /// let b = OpLabel::broadcast_root(2);
    /// assert_eq!(OpLabel::NONE.refine(OpLabel::ALL_GATHER), OpLabel::ALL_GATHER);
    /// assert_eq!(OpLabel::ALL_TO_ALL.refine(OpLabel::ALL_TO_ALL_V), OpLabel::ALL_TO_ALL);
    /// assert_eq!(OpLabel::BROADCAST.refine(b), b);
    /// ```
    pub const fn refine(self, own: OpLabel) -> OpLabel {
        if self.0 == 0 || (self.0 == Self::BROADCAST.0 && own.is_broadcast()) {
            own
        } else {
            self
        }
    }

    /// The label named `name`, as [`OpLabel`]'s `Display` writes it
    /// (`"all_reduce(max)"`, `"broadcast"`); `None` for any other text.
    /// For bindings that run one collective through another's schedule
    /// (an all-reduce made of an all-gather) and stamp it with the
    /// operation the caller asked for.
    ///
    /// ```
    /// use zccl_runtime::label::OpLabel;
    /// assert_eq!(OpLabel::from_name("all_reduce(max)"), OpLabel::ALL_REDUCE_SUM.offset(3));
    /// assert_eq!(OpLabel::from_name("all_gather"), Some(OpLabel::ALL_GATHER));
    /// assert_eq!(OpLabel::from_name(""), None);
    /// assert_eq!(OpLabel::from_name("all_reduce(xor)"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        NAMES
            .iter()
            .position(|&n| !n.is_empty() && n == name)
            .map(|i| Self(i as u8))
    }

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

    /// The header's type code for `dtype` under this label: the element
    /// type's code in the low byte, the label in the high byte.
    pub const fn wire(self, dtype: DType) -> u16 {
        dtype.code() as u16 | (self.0 as u16) << 8
    }

    /// A header's type code as element type and label.
    pub const fn split(code: u16) -> (Option<DType>, OpLabel) {
        (
            DType::from_code(code as u8),
            OpLabel((code >> 8) as u8 & (31 | MORE)),
        )
    }

    /// The one-byte form of [`OpLabel::wire`] that fits in a tag's top byte
    /// (`zccl_primitives::fabric::with_label`): label in the high 5 bits,
    /// element type in the low 3, so only for [`DType::ALL`]'s types (the
    /// types a collective's elements have); any other type reads back as
    /// `u8`.
    ///
    /// ```
    /// use zccl_runtime::{DType, label::OpLabel};
    /// let b = OpLabel::ALL_GATHER.byte(DType::F64);
    /// assert_eq!(OpLabel::from_byte(b), (Some(DType::F64), OpLabel::ALL_GATHER));
    /// assert_eq!(OpLabel::from_byte(OpLabel::ALL_GATHER.byte(DType::I8)).0, Some(DType::U8));
    /// ```
    pub const fn byte(self, dtype: DType) -> u8 {
        let d = if dtype.is_element() { dtype } else { DType::U8 };
        d.code() | ((self.0 & 31) << 3)
    }

    /// Reads [`OpLabel::byte`].
    pub const fn from_byte(byte: u8) -> (Option<DType>, OpLabel) {
        (DType::from_code(byte & 7), OpLabel(byte >> 3))
    }
}

impl fmt::Display for OpLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NAMES[self.0 as usize & 31])?;
        if self.has_more() {
            f.write_str(", a piece with more to follow")?;
        }
        Ok(())
    }
}

/// What one rank ran on a channel, as far as a message shows it: one side
/// of an [`Error::Disagreement`](crate::Error::Disagreement).
///
/// ```
/// use zccl_runtime::{DType, label::{OpLabel, OpSide}};
/// let s = OpSide { rank: 2, op: OpLabel::ALL_REDUCE_SUM, dtype: DType::F64, bytes: 8192 };
/// assert_eq!(s.to_string(), "rank 2 all_reduce(sum) of 8192 B (1024 x f64)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpSide {
    /// The (world) rank.
    pub rank: u32,
    /// Its operation label.
    pub op: OpLabel,
    /// Its element type.
    pub dtype: DType,
    /// The bytes of its message (or receive).
    pub bytes: u64,
}

impl fmt::Display for OpSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            OpLabel::NONE => "unlabelled op".to_string(),
            l => l.to_string(),
        };
        write!(
            f,
            "rank {} {op} of {} B ({})",
            self.rank,
            self.bytes,
            elems(self.bytes, self.dtype)
        )
    }
}

/// `bytes` as a count of `d` elements where it divides.
pub(crate) fn elems(bytes: u64, d: DType) -> String {
    if bytes.is_multiple_of(d.size() as u64) {
        format!("{} x {d}", bytes / d.size() as u64)
    } else {
        format!("{bytes} B of {d}")
    }
}

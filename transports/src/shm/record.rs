//! The record codec: the 32-byte header that precedes every message in a
//! ring, and the 32-byte extension that follows the header of a CMA record.
//!
//! Pure functions only (no I/O), unit-tested without rings, like
//! [`crate::frame`]. Decoding checks the lengths against the reader's limits
//! so that a peer can never make a reader allocate more than it allows.
//!
//! Header layout (little endian):
//!
//! | bytes  | field         |
//! |--------|---------------|
//! | 0      | marker `b'R'` |
//! | 1      | kind          |
//! | 2..4   | dtype (type code, opaque) |
//! | 4..8   | comm          |
//! | 8..12  | channel       |
//! | 12     | flags: [`STREAMED`] (data records only), else 0 |
//! | 13..16 | reserved, 0   |
//! | 16..24 | seq           |
//! | 24..32 | len (payload bytes) |
//!
//! CMA extension: address (`0..8`), record number (`8..16`), sender pid
//! (`16..20`), reserved zeros (`20..32`).

use crate::MessageKind;

pub(super) const REC_LEN: usize = 32;
const REC_MARK: u8 = b'R';
pub(super) const REC_DATA: u8 = 1;
pub(super) const REC_CONTROL: u8 = 2;
pub(super) const REC_GOODBYE: u8 = 3;
/// A data message whose payload stays in the sender's memory; the header is
/// followed by [`CMA_EXT`] bytes: address (u64), sequence number (u64, 1 for
/// the first CMA record of the ring), sender pid (u32), whether it is left to
/// the consumer's polls (u8, 0 or 1: [`CmaExt::polled`]), zeros.
pub(super) const REC_CMA: u8 = 4;
pub(super) const CMA_EXT: usize = 32;
/// Offset of [`CmaExt::polled`] in a CMA record's extension.
pub(super) const CMA_POLLED_AT: usize = 20;
/// Bytes the reader skips: `len` bytes that follow the header up to the end
/// of the ring's data area, written by a producer that found the ring empty
/// far into its data area, so that its next record starts at the beginning
/// (see [`Ring::idle_gap`](super::ring::Ring::idle_gap)). Any other field is
/// zero.
pub(super) const REC_PAD: u8 = 5;
/// Offset of the header's flag byte.
const FLAGS_AT: usize = 12;
/// Flag of a data record whose payload the producer wrote with stores that
/// bypass the caches ([`super::stream_choice`]: the consumer times its
/// copies of each kind).
pub(super) const STREAMED: u8 = 1;
/// Largest control record accepted (control messages are tiny).
const MAX_CONTROL: u64 = 1 << 20;
/// Largest pad accepted: a ring's largest capacity (`ZCCL_SHM_RING_BYTES`).
const MAX_PAD: u64 = 1 << 30;

/// The header of a record of `len` payload bytes (any kind; see
/// [`decode_record`] for what a reader accepts).
#[inline]
pub(super) fn encode_record(
    kind: u8,
    dtype: u16,
    comm: u32,
    channel: u32,
    seq: u64,
    len: u64,
) -> [u8; REC_LEN] {
    let mut b = [0u8; REC_LEN];
    b[0] = REC_MARK;
    b[1] = kind;
    b[2..4].copy_from_slice(&dtype.to_le_bytes());
    b[4..8].copy_from_slice(&comm.to_le_bytes());
    b[8..12].copy_from_slice(&channel.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..32].copy_from_slice(&len.to_le_bytes());
    b
}

/// Marks a data record's header as carrying a streamed payload
/// ([`STREAMED`]).
#[inline]
pub(super) fn mark_streamed(header: &mut [u8; REC_LEN]) {
    header[FLAGS_AT] = STREAMED;
}

/// A decoded record header.
pub(super) struct Record {
    pub(super) kind: u8,
    pub(super) dtype: u16,
    pub(super) comm: u32,
    pub(super) channel: u32,
    pub(super) seq: u64,
    pub(super) len: u64,
    /// A data record's payload was streamed ([`STREAMED`]).
    pub(super) streamed: bool,
}

impl Record {
    #[inline]
    pub(super) fn message_kind(&self) -> MessageKind {
        if self.kind == REC_CONTROL {
            MessageKind::Control
        } else {
            MessageKind::Data
        }
    }
}

/// Decodes and checks a record header: the marker, the flags and reserved
/// bytes, the
/// kind, and the length against `max_message` (data and CMA records),
/// [`MAX_CONTROL`] (control records) or 0 (goodbyes).
#[inline]
pub(super) fn decode_record(b: &[u8; REC_LEN], max_message: u64) -> Result<Record, String> {
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let flags = b[FLAGS_AT];
    if b[0] != REC_MARK
        || b[13..16] != [0; 3]
        || (flags != 0 && (flags != STREAMED || b[1] != REC_DATA))
    {
        return Err(format!("bad record header {:02x?}", &b[..16]));
    }
    let r = Record {
        kind: b[1],
        dtype: u16::from_le_bytes([b[2], b[3]]),
        comm: u32_at(4),
        channel: u32_at(8),
        seq: u64_at(16),
        len: u64_at(24),
        streamed: flags == STREAMED,
    };
    match r.kind {
        REC_DATA | REC_CMA if r.len <= max_message => Ok(r),
        REC_CONTROL if r.len <= MAX_CONTROL => Ok(r),
        REC_GOODBYE if r.len == 0 => Ok(r),
        REC_PAD
            if r.len <= MAX_PAD && r.dtype == 0 && r.comm == 0 && r.channel == 0 && r.seq == 0 =>
        {
            Ok(r)
        }
        REC_PAD if r.len <= MAX_PAD => Err("pad record with fields set".into()),
        REC_DATA | REC_CMA | REC_CONTROL | REC_GOODBYE | REC_PAD => Err(format!(
            "record of {} bytes exceeds the limit of {max_message} bytes",
            r.len
        )),
        k => Err(format!("unknown record kind {k}")),
    }
}

/// The part of a CMA record after its header.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct CmaExt {
    pub(super) addr: u64,
    pub(super) number: u64,
    pub(super) pid: u32,
    /// The producer left the record to the consumer's polling threads (it
    /// did not wake the reader thread for it while they were attentive): a
    /// poll takes it whatever its size. Set for every record of at most
    /// [`POLL_MAX_CMA_BYTES`](super::POLL_MAX_CMA_BYTES), and for a larger
    /// one written when the peer had copied every earlier one (see
    /// `left_to_polls` in `send.rs`).
    pub(super) polled: bool,
}

/// Encodes the CMA part of a record.
pub(super) fn encode_cma(e: &CmaExt) -> [u8; CMA_EXT] {
    let mut b = [0u8; CMA_EXT];
    b[0..8].copy_from_slice(&e.addr.to_le_bytes());
    b[8..16].copy_from_slice(&e.number.to_le_bytes());
    b[16..20].copy_from_slice(&e.pid.to_le_bytes());
    b[CMA_POLLED_AT] = u8::from(e.polled);
    b
}

/// Decodes and checks the CMA part of a record of `len` payload bytes.
pub(super) fn decode_cma(b: &[u8; CMA_EXT], len: u64) -> Result<CmaExt, String> {
    let e = CmaExt {
        addr: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
        number: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        pid: u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")),
        polled: b[CMA_POLLED_AT] == 1,
    };
    if b[CMA_POLLED_AT] > 1 || b[CMA_POLLED_AT + 1..].iter().any(|&x| x != 0) {
        return Err("bad CMA record (reserved bytes set, or a flag byte other than 0 or 1)".into());
    }
    let end = e.addr.checked_add(len);
    if e.addr == 0 || end.is_none_or(|end| usize::try_from(end).is_err()) {
        return Err(format!(
            "CMA record of {len} bytes at impossible address {:#x}",
            e.addr
        ));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject() {
        let r = encode_record(REC_DATA, 6, 7, 9, 1 << 40, 123);
        let d = decode_record(&r, 1000).unwrap();
        assert_eq!(
            (d.kind, d.dtype, d.comm, d.channel, d.seq, d.len),
            (REC_DATA, 6, 7, 9, 1 << 40, 123)
        );
        assert!(decode_record(&encode_record(REC_DATA, 0, 0, 0, 0, 1001), 1000).is_err());
        assert!(decode_record(&encode_record(REC_CMA, 0, 0, 0, 0, 1001), 1000).is_err());
        assert!(decode_record(&encode_record(REC_GOODBYE, 0, 0, 0, 0, 1), 1000).is_err());
        assert!(decode_record(&encode_record(9, 0, 0, 0, 0, 0), 1000).is_err());
        let mut bad = r;
        bad[0] = b'X';
        assert!(decode_record(&bad, 1000).is_err());
    }

    #[test]
    fn every_kind_round_trips_up_to_its_length_bound() {
        let max = 1000;
        for (kind, bound, as_message) in [
            (REC_DATA, max, MessageKind::Data),
            (REC_CMA, max, MessageKind::Data),
            (REC_CONTROL, MAX_CONTROL, MessageKind::Control),
            (REC_GOODBYE, 0, MessageKind::Data),
            (REC_PAD, MAX_PAD, MessageKind::Data),
        ] {
            for (dtype, comm, channel, seq) in
                [(0, 0, 0, 0), (u16::MAX, u32::MAX, u32::MAX, u64::MAX)]
            {
                if kind == REC_PAD && seq != 0 {
                    // A pad carries nothing but its length.
                    let b = encode_record(kind, dtype, comm, channel, seq, 1);
                    let why = decode_record(&b, max).err().unwrap();
                    assert!(why.contains("pad record with fields set"), "{why}");
                    continue;
                }
                for len in [0, bound / 2, bound] {
                    let b = encode_record(kind, dtype, comm, channel, seq, len);
                    let d = decode_record(&b, max).unwrap();
                    assert_eq!(
                        (d.kind, d.dtype, d.comm, d.channel, d.seq, d.len),
                        (kind, dtype, comm, channel, seq, len)
                    );
                    assert_eq!(d.message_kind(), as_message);
                }
                let over = encode_record(kind, dtype, comm, channel, seq, bound + 1);
                let why = decode_record(&over, max).err().unwrap();
                assert!(why.contains("exceeds the limit"), "kind {kind}: {why}");
            }
        }
        // The control bound holds whatever the message limit.
        let c = encode_record(REC_CONTROL, 0, 0, 0, 0, MAX_CONTROL + 1);
        assert!(decode_record(&c, u64::MAX).is_err());
        let d = encode_record(REC_DATA, 0, 0, 0, 0, u64::MAX);
        assert!(decode_record(&d, u64::MAX).is_ok());
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let good = encode_record(REC_DATA, 1, 2, 3, 4, 5);
        let rejected = |b: [u8; REC_LEN], want: &str| {
            let why = decode_record(&b, 1 << 20).err().unwrap();
            assert!(why.contains(want), "{why:?} lacks {want:?}");
        };
        // Zeroed memory (a ring never written), a frame's marker, any other.
        rejected([0; REC_LEN], "bad record header");
        for marker in [0, b'Z', b'r', 0xff] {
            let mut b = good;
            b[0] = marker;
            rejected(b, "bad record header");
        }
        // Reserved bytes.
        for at in [13, 14, 15] {
            let mut b = good;
            b[at] = 1;
            rejected(b, "bad record header");
        }
        // The flag byte: the one flag, on data records only.
        for flags in [2, 3, 0x80, 0xff] {
            let mut b = good;
            b[FLAGS_AT] = flags;
            rejected(b, "bad record header");
        }
        let mut b = good;
        mark_streamed(&mut b);
        assert!(decode_record(&b, 1 << 20).unwrap().streamed);
        assert!(!decode_record(&good, 1 << 20).unwrap().streamed);
        for kind in [REC_CONTROL, REC_GOODBYE, REC_CMA, REC_PAD] {
            let mut b = encode_record(kind, 0, 0, 0, 0, 0);
            mark_streamed(&mut b);
            rejected(b, "bad record header");
        }
        // Kinds.
        for kind in [0, 6, 7, 0x7f, 0xff] {
            rejected(encode_record(kind, 0, 0, 0, 0, 0), "unknown record kind");
        }
        // A header cut short does not get this far: the decoder takes whole
        // headers only (the ring reads or checks `REC_LEN` bytes first).
        for n in 0..REC_LEN {
            assert!(<&[u8; REC_LEN]>::try_from(&good[..n]).is_err());
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut accepted = 0;
        for i in 0..20_000 {
            let mut b = [0u8; REC_LEN];
            for byte in &mut b {
                *byte = next() as u8;
            }
            if i % 2 == 0 {
                // Past the marker and reserved checks, into kinds and lengths.
                b[0] = REC_MARK;
                b[1] %= 6;
                b[12..16].fill(0);
                b[24..32].copy_from_slice(&(next() % 4096).to_le_bytes());
            }
            if decode_record(&b, next() % 8192).is_ok() {
                accepted += 1;
            }
            let mut e = [0u8; CMA_EXT];
            for byte in &mut e {
                *byte = next() as u8;
            }
            if i % 2 == 0 {
                e[20..].fill(0);
            }
            let _ = decode_cma(&e, next() >> (next() % 64));
        }
        assert!(accepted > 0);
    }

    #[test]
    fn cma_extensions_round_trip_and_reject() {
        let e = CmaExt {
            addr: 0x7f00_0000_1000,
            number: 3,
            pid: 42,
            polled: false,
        };
        let polled = CmaExt { polled: true, ..e };
        assert_eq!(decode_cma(&encode_cma(&polled), 1 << 20).unwrap(), polled);
        assert_eq!(decode_cma(&encode_cma(&e), 1 << 20).unwrap(), e);
        let mut b = encode_cma(&e);
        b[31] = 1;
        assert!(decode_cma(&b, 10).unwrap_err().contains("reserved"));
        let zero = CmaExt { addr: 0, ..e };
        assert!(decode_cma(&encode_cma(&zero), 10).is_err());
        let wraps = CmaExt {
            addr: u64::MAX - 4,
            ..e
        };
        assert!(
            decode_cma(&encode_cma(&wraps), 10)
                .unwrap_err()
                .contains("impossible address")
        );
    }

    #[test]
    fn cma_extensions_at_the_extremes() {
        // Every reserved byte counts, and the flag byte (20) is 0 or 1.
        for at in 20..CMA_EXT {
            let mut b = encode_cma(&CmaExt {
                addr: 1,
                number: 1,
                pid: 1,
                polled: true,
            });
            b[at] = 0x80;
            assert!(decode_cma(&b, 1).unwrap_err().contains("reserved"), "{at}");
        }
        // The whole range of numbers and pids round trips: checking them
        // against the link (the next number due, the peer's pid) is the
        // reader's job, not the codec's.
        for (number, pid) in [(0, 0), (u64::MAX, u32::MAX)] {
            let e = CmaExt {
                addr: 4096,
                number,
                pid,
                polled: false,
            };
            assert_eq!(decode_cma(&encode_cma(&e), 4096).unwrap(), e);
        }
        // The range may end at the very top (of a 64-bit address space), not
        // past it.
        let top = CmaExt {
            addr: u64::MAX - 10,
            number: 1,
            pid: 1,
            polled: false,
        };
        if usize::BITS == 64 {
            assert!(decode_cma(&encode_cma(&top), 10).is_ok());
        }
        assert!(decode_cma(&encode_cma(&top), 11).is_err());
        assert!(decode_cma(&encode_cma(&CmaExt { addr: 1, ..top }), u64::MAX).is_err());
    }
}

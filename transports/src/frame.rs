//! The frame codec: the fixed 40-byte header that precedes every payload on
//! every zccl socket, plus the payload of the `Goodbye` frame.
//!
//! Pure functions only (no I/O): [`FrameHeader::encode`] and
//! [`FrameHeader::decode`] are unit-tested without sockets. Decoding enforces
//! the length bounds of [`FrameLimits`] so a peer can never make a reader
//! allocate more than the configuration allows.
//!
//! Layout (little endian):
//!
//! | bytes  | field       |
//! |--------|-------------|
//! | 0      | marker `b'Z'` |
//! | 1      | kind        |
//! | 2..4   | dtype (type code, opaque) |
//! | 4..8   | channel     |
//! | 8..16  | seq         |
//! | 16..24 | total_len (bytes of the whole message) |
//! | 24..32 | offset (of this chunk in the message)  |
//! | 32..36 | chunk_len (payload bytes following the header) |
//! | 36..40 | comm (communicator context id) |

use thiserror::Error;

/// Size in bytes of an encoded [`FrameHeader`].
pub const FRAME_HEADER_LEN: usize = 40;

const MARKER: u8 = b'Z';

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A chunk of a user message.
    Data = 1,
    /// A control message of the layer above the transport (acks, nacks); one chunk.
    Control = 2,
    /// Liveness only; no payload.
    Heartbeat = 3,
    /// The sender closes this socket; the payload is a [`GoodbyeReason`].
    Goodbye = 4,
    /// A bootstrap message (address book registration or reply); one chunk.
    Bootstrap = 5,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::Control,
            3 => Self::Heartbeat,
            4 => Self::Goodbye,
            5 => Self::Bootstrap,
            _ => return None,
        })
    }
}

/// Upper bounds a reader enforces on every frame it decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest payload of a single frame (one chunk), in bytes.
    pub max_frame: u32,
    /// Largest whole message (sum of its chunks), in bytes.
    pub max_message: u64,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_frame: 16 << 20,
            max_message: 16 << 30,
        }
    }
}

/// The header of one frame.
///
/// ```
/// use zccl_transports::frame::{FrameHeader, FrameKind, FrameLimits};
/// let h = FrameHeader { kind: FrameKind::Data, dtype: 7, comm: 0, channel: 1, seq: 42,
///                       total_len: 10, offset: 4, chunk_len: 6 };
/// let bytes = h.encode();
/// assert_eq!(FrameHeader::decode(&bytes, &FrameLimits::default()).unwrap(), h);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame carries.
    pub kind: FrameKind,
    /// Element type code of the message (opaque to the transport).
    pub dtype: u16,
    /// Communicator context id of the message (opaque to the transport).
    pub comm: u32,
    /// Channel of the message (opaque to the transport).
    pub channel: u32,
    /// Sequence number of the message (opaque to the transport).
    pub seq: u64,
    /// Length in bytes of the whole message this chunk belongs to.
    pub total_len: u64,
    /// Offset of this chunk within the message.
    pub offset: u64,
    /// Payload bytes that follow this header.
    pub chunk_len: u32,
}

/// Why a frame header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The first byte is not the frame marker: the stream is desynchronised or foreign.
    #[error("bad frame marker 0x{0:02x} (stream desynchronised or not a zccl peer)")]
    BadMarker(u8),
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The chunk is larger than the configured frame bound.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced chunk length.
        len: u32,
        /// Configured bound.
        max: u32,
    },
    /// The message is larger than the configured message bound.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Announced message length.
        len: u64,
        /// Configured bound.
        max: u64,
    },
    /// The chunk does not lie inside its message.
    #[error("chunk [{offset}, +{len}) lies outside a message of {total} bytes")]
    ChunkOutOfBounds {
        /// Chunk offset.
        offset: u64,
        /// Chunk length.
        len: u32,
        /// Message length.
        total: u64,
    },
    /// A kind that must be a single frame announced several chunks or a payload it cannot have.
    #[error("{kind:?} frame must be a single chunk{}", if *.heartbeat { " without payload" } else { "" })]
    NotSingleChunk {
        /// Offending kind.
        kind: FrameKind,
        /// Whether this is a heartbeat (which carries no payload at all).
        heartbeat: bool,
    },
}

impl FrameHeader {
    /// A header for a single-chunk message of `len` payload bytes.
    pub fn single(kind: FrameKind, len: u32) -> Self {
        Self {
            kind,
            dtype: 0,
            comm: 0,
            channel: 0,
            seq: 0,
            total_len: u64::from(len),
            offset: 0,
            chunk_len: len,
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0] = MARKER;
        b[1] = self.kind as u8;
        b[2..4].copy_from_slice(&self.dtype.to_le_bytes());
        b[4..8].copy_from_slice(&self.channel.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.total_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..36].copy_from_slice(&self.chunk_len.to_le_bytes());
        b[36..40].copy_from_slice(&self.comm.to_le_bytes());
        b
    }

    /// Decodes and validates a header against `limits`.
    pub fn decode(b: &[u8; FRAME_HEADER_LEN], limits: &FrameLimits) -> Result<Self, FrameError> {
        if b[0] != MARKER {
            return Err(FrameError::BadMarker(b[0]));
        }
        let kind = FrameKind::from_u8(b[1]).ok_or(FrameError::UnknownKind(b[1]))?;
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let h = Self {
            kind,
            dtype: u16::from_le_bytes([b[2], b[3]]),
            comm: u32_at(36),
            channel: u32_at(4),
            seq: u64_at(8),
            total_len: u64_at(16),
            offset: u64_at(24),
            chunk_len: u32_at(32),
        };
        if h.chunk_len > limits.max_frame {
            return Err(FrameError::FrameTooLarge {
                len: h.chunk_len,
                max: limits.max_frame,
            });
        }
        if h.total_len > limits.max_message {
            return Err(FrameError::MessageTooLarge {
                len: h.total_len,
                max: limits.max_message,
            });
        }
        let end = h.offset.checked_add(u64::from(h.chunk_len));
        if end.is_none_or(|e| e > h.total_len) {
            return Err(FrameError::ChunkOutOfBounds {
                offset: h.offset,
                len: h.chunk_len,
                total: h.total_len,
            });
        }
        let single = h.offset == 0 && u64::from(h.chunk_len) == h.total_len;
        match kind {
            FrameKind::Heartbeat if h.total_len != 0 => {
                return Err(FrameError::NotSingleChunk {
                    kind,
                    heartbeat: true,
                });
            }
            FrameKind::Control | FrameKind::Goodbye | FrameKind::Bootstrap if !single => {
                return Err(FrameError::NotSingleChunk {
                    kind,
                    heartbeat: false,
                });
            }
            _ => {}
        }
        Ok(h)
    }
}

/// Largest encoded [`GoodbyeReason`] message text; longer texts are truncated.
pub const MAX_GOODBYE_TEXT: usize = 1024;

/// Why a peer closes its sockets: the payload of a `Goodbye` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoodbyeReason {
    /// Orderly shutdown: everything queued before the goodbye was sent.
    Clean,
    /// The sender's communicator failed or was aborted.
    Abort {
        /// The rank whose failure caused the abort, when known (it may be the sender itself).
        cause_rank: Option<u32>,
        /// Human-readable cause.
        message: String,
    },
}

impl GoodbyeReason {
    /// Encodes the reason as a frame payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Clean => vec![0],
            Self::Abort {
                cause_rank,
                message,
            } => {
                let mut v = vec![1];
                v.extend_from_slice(&cause_rank.unwrap_or(u32::MAX).to_le_bytes());
                let mut end = message.len().min(MAX_GOODBYE_TEXT);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                v.extend_from_slice(&message.as_bytes()[..end]);
                v
            }
        }
    }

    /// Decodes a payload; `None` when it is malformed.
    pub fn decode(b: &[u8]) -> Option<Self> {
        match b.first()? {
            0 if b.len() == 1 => Some(Self::Clean),
            1 if b.len() >= 5 && b.len() <= 5 + MAX_GOODBYE_TEXT => {
                let r = u32::from_le_bytes(b[1..5].try_into().ok()?);
                Some(Self::Abort {
                    cause_rank: (r != u32::MAX).then_some(r),
                    message: String::from_utf8_lossy(&b[5..]).into_owned(),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> FrameLimits {
        FrameLimits {
            max_frame: 1024,
            max_message: 1 << 20,
        }
    }

    fn data(total: u64, offset: u64, chunk: u32) -> FrameHeader {
        FrameHeader {
            kind: FrameKind::Data,
            dtype: 3,
            comm: 5,
            channel: 9,
            seq: 77,
            total_len: total,
            offset,
            chunk_len: chunk,
        }
    }

    #[test]
    fn round_trip_all_kinds() {
        for h in [
            data(0, 0, 0),
            data(5000, 4096, 904),
            FrameHeader::single(FrameKind::Control, 17),
            FrameHeader::single(FrameKind::Heartbeat, 0),
            FrameHeader::single(FrameKind::Goodbye, 1),
            FrameHeader::single(FrameKind::Bootstrap, 1000),
        ] {
            assert_eq!(FrameHeader::decode(&h.encode(), &lim()), Ok(h));
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let cases = [
            (0, b'X', FrameError::BadMarker(b'X')),
            (1, 99, FrameError::UnknownKind(99)),
        ];
        for (at, value, want) in cases {
            let mut b = data(10, 0, 10).encode();
            b[at] = value;
            assert_eq!(FrameHeader::decode(&b, &lim()), Err(want));
        }
    }

    #[test]
    fn enforces_bounds() {
        let l = lim();
        assert_eq!(
            FrameHeader::decode(&data(4096, 0, 2048).encode(), &l),
            Err(FrameError::FrameTooLarge {
                len: 2048,
                max: 1024
            })
        );
        assert_eq!(
            FrameHeader::decode(&data(2 << 20, 0, 10).encode(), &l),
            Err(FrameError::MessageTooLarge {
                len: 2 << 20,
                max: 1 << 20
            })
        );
        assert_eq!(
            FrameHeader::decode(&data(100, 95, 10).encode(), &l),
            Err(FrameError::ChunkOutOfBounds {
                offset: 95,
                len: 10,
                total: 100
            })
        );
        assert!(matches!(
            FrameHeader::decode(&data(100, u64::MAX, 10).encode(), &l),
            Err(FrameError::ChunkOutOfBounds { .. })
        ));
        let mut c = FrameHeader::single(FrameKind::Control, 10);
        c.total_len = 20;
        assert!(matches!(
            FrameHeader::decode(&c.encode(), &l),
            Err(FrameError::NotSingleChunk { .. })
        ));
        let mut hb = FrameHeader::single(FrameKind::Heartbeat, 0);
        hb.total_len = 1;
        hb.chunk_len = 1;
        assert!(matches!(
            FrameHeader::decode(&hb.encode(), &l),
            Err(FrameError::NotSingleChunk { .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..10_000 {
            let mut b = [0u8; FRAME_HEADER_LEN];
            for byte in &mut b {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            let _ = FrameHeader::decode(&b, &lim());
        }
    }

    #[test]
    fn goodbye_round_trip() {
        for r in [
            GoodbyeReason::Clean,
            GoodbyeReason::Abort {
                cause_rank: Some(3),
                message: "rank 3 lost".into(),
            },
            GoodbyeReason::Abort {
                cause_rank: None,
                message: String::new(),
            },
        ] {
            assert_eq!(GoodbyeReason::decode(&r.encode()), Some(r));
        }
        assert_eq!(GoodbyeReason::decode(&[]), None);
        assert_eq!(GoodbyeReason::decode(&[0, 1]), None);
        assert_eq!(GoodbyeReason::decode(&[1, 0]), None);
        let long = GoodbyeReason::Abort {
            cause_rank: Some(1),
            message: "é".repeat(1000),
        };
        let enc = long.encode();
        assert!(enc.len() <= 5 + MAX_GOODBYE_TEXT);
        assert!(GoodbyeReason::decode(&enc).is_some());
    }
}

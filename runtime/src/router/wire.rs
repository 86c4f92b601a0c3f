//! What routed chunks and their acknowledgements look like on the wire
//! (pure codec).
//!
//! A routed chunk is a data [`Message`](zccl_transports::Message) of the
//! reserved communicator [`ROUTE_COMM`] whose payload starts with a
//! [`ChunkHeader`] naming the original message (sender, receiver,
//! communicator, channel, sequence number, type, total size), the chunk's
//! place in it, and the lane it travels on. A proxy forwards it unchanged;
//! the receiver copies it into place and answers the sender with a
//! [`ChunkAck`] (a control message of the same communicator) on the rail it
//! arrived on.

// The communicator id reserved for router traffic, defined with the
// runtime's other reserved ids.
pub use crate::ids::ROUTE_COMM;

const MAGIC: u32 = 0x5a52_5445; // "ZRTE"
const VERSION: u8 = 2;

/// Length of the header in front of every routed chunk.
pub const HEADER_LEN: usize = 64;

/// The header in front of every routed chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Rank that sent the original message.
    pub src: u32,
    /// Rank it is for.
    pub dst: u32,
    /// Index of the NIC the chunk leaves on (on the sender's host).
    pub src_nic: u16,
    /// Index of the NIC it arrives on (on the receiver's host).
    pub dst_nic: u16,
    /// Lane of the sender's plan (echoed in the ack).
    pub lane: u16,
    /// Communicator of the original message.
    pub comm: u32,
    /// Its channel.
    pub channel: u32,
    /// Its sequence number.
    pub seq: u64,
    /// Its type code (element type and operation label).
    pub dtype: u16,
    /// Its size.
    pub total_len: u64,
    /// Where this chunk starts.
    pub offset: u64,
    /// Chunks in the message.
    pub chunks: u32,
    /// Index of this chunk.
    pub index: u32,
}

/// Why a routed frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Too short, wrong magic or version.
    #[error("malformed routed chunk: {0}")]
    Malformed(&'static str),
    /// The chunk does not fit in its message.
    #[error(
        "routed chunk {index} at {offset}+{len} does not fit a {total} B message of {chunks} chunks"
    )]
    OutOfRange {
        /// Chunk index.
        index: u32,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Message size.
        total: u64,
        /// Chunk count.
        chunks: u32,
    },
}

impl ChunkHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = VERSION;
        b[6..8].copy_from_slice(&self.src_nic.to_le_bytes());
        b[8..10].copy_from_slice(&self.dst_nic.to_le_bytes());
        b[10..12].copy_from_slice(&self.lane.to_le_bytes());
        b[12..16].copy_from_slice(&self.src.to_le_bytes());
        b[16..20].copy_from_slice(&self.dst.to_le_bytes());
        b[20..24].copy_from_slice(&self.comm.to_le_bytes());
        b[24..28].copy_from_slice(&self.channel.to_le_bytes());
        b[28..36].copy_from_slice(&self.seq.to_le_bytes());
        b[36..44].copy_from_slice(&self.total_len.to_le_bytes());
        b[44..52].copy_from_slice(&self.offset.to_le_bytes());
        b[52..56].copy_from_slice(&self.chunks.to_le_bytes());
        b[56..60].copy_from_slice(&self.index.to_le_bytes());
        b[60..62].copy_from_slice(&self.dtype.to_le_bytes());
        b
    }

    /// Parses the header of a routed chunk and checks that the chunk that
    /// follows it (`payload.len() - HEADER_LEN` bytes) fits its message.
    ///
    /// ```
    /// use zccl_runtime::router::wire::*;
    /// let h = ChunkHeader { src: 0, dst: 5, src_nic: 1, dst_nic: 1, lane: 1, comm: 0,
    ///     channel: 0, seq: 7, dtype: 0, total_len: 10, offset: 8, chunks: 2, index: 1 };
    /// let mut frame = h.encode().to_vec();
    /// frame.extend_from_slice(&[1, 2]);
    /// assert_eq!(ChunkHeader::decode(&frame), Ok(h));
    /// frame.push(3); // 3 bytes at offset 8 overrun a 10-byte message
    /// assert!(ChunkHeader::decode(&frame).is_err());
    /// ```
    pub fn decode(payload: &[u8]) -> Result<ChunkHeader, WireError> {
        if payload.len() < HEADER_LEN {
            return Err(WireError::Malformed("shorter than its header"));
        }
        let b = &payload[..HEADER_LEN];
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != MAGIC {
            return Err(WireError::Malformed("bad magic"));
        }
        if b[4] != VERSION {
            return Err(WireError::Malformed("unknown version"));
        }
        let h = ChunkHeader {
            dtype: u16_at(60),
            src_nic: u16_at(6),
            dst_nic: u16_at(8),
            lane: u16_at(10),
            src: u32_at(12),
            dst: u32_at(16),
            comm: u32_at(20),
            channel: u32_at(24),
            seq: u64_at(28),
            total_len: u64_at(36),
            offset: u64_at(44),
            chunks: u32_at(52),
            index: u32_at(56),
        };
        let len = (payload.len() - HEADER_LEN) as u64;
        let fits = h.index < h.chunks
            && h.offset
                .checked_add(len)
                .is_some_and(|end| end <= h.total_len);
        if !fits {
            return Err(WireError::OutOfRange {
                index: h.index,
                offset: h.offset,
                len,
                total: h.total_len,
                chunks: h.chunks,
            });
        }
        Ok(h)
    }
}

/// The receiver got chunk `index` of message `(comm, channel, seq)`, which
/// travelled on `lane`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkAck {
    /// Communicator of the message.
    pub comm: u32,
    /// Its channel.
    pub channel: u32,
    /// Its sequence number.
    pub seq: u64,
    /// Chunk index.
    pub index: u32,
    /// Lane that delivered it.
    pub lane: u16,
}

const ACK_LEN: usize = 23;
const ACK_TAG: u8 = 0xa1;

impl ChunkAck {
    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(ACK_LEN);
        b.push(ACK_TAG);
        b.extend_from_slice(&self.comm.to_le_bytes());
        b.extend_from_slice(&self.channel.to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.index.to_le_bytes());
        b.extend_from_slice(&self.lane.to_le_bytes());
        b
    }

    /// Parses an ack; `None` when malformed.
    ///
    /// ```
    /// use zccl_runtime::router::wire::ChunkAck;
    /// let a = ChunkAck { comm: 1, channel: 2, seq: 3, index: 4, lane: 5 };
    /// assert_eq!(ChunkAck::decode(&a.encode()), Some(a));
    /// assert_eq!(ChunkAck::decode(&[0xa1]), None);
    /// ```
    pub fn decode(b: &[u8]) -> Option<ChunkAck> {
        if b.len() != ACK_LEN || b[0] != ACK_TAG {
            return None;
        }
        Some(ChunkAck {
            comm: u32::from_le_bytes(b[1..5].try_into().ok()?),
            channel: u32::from_le_bytes(b[5..9].try_into().ok()?),
            seq: u64::from_le_bytes(b[9..17].try_into().ok()?),
            index: u32::from_le_bytes(b[17..21].try_into().ok()?),
            lane: u16::from_le_bytes(b[21..23].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ChunkHeader {
        ChunkHeader {
            src: 3,
            dst: 9,
            src_nic: 2,
            dst_nic: 2,
            lane: 1,
            comm: 4,
            channel: 1,
            seq: u64::MAX - 1,
            dtype: 6,
            total_len: 1 << 33,
            offset: 1 << 32,
            chunks: 8193,
            index: 4096,
        }
    }

    #[test]
    fn header_round_trip_and_bounds() {
        let h = header();
        let mut f = h.encode().to_vec();
        f.extend(std::iter::repeat_n(0u8, 100));
        assert_eq!(ChunkHeader::decode(&f), Ok(h));
        let mut bad = f.clone();
        bad[0] ^= 1;
        assert_eq!(
            ChunkHeader::decode(&bad),
            Err(WireError::Malformed("bad magic"))
        );
        assert!(ChunkHeader::decode(&f[..HEADER_LEN - 1]).is_err());
        let mut over = h;
        over.offset = u64::MAX - 10; // offset + len overflows
        let mut f2 = over.encode().to_vec();
        f2.extend([0u8; 20]);
        assert!(matches!(
            ChunkHeader::decode(&f2),
            Err(WireError::OutOfRange { .. })
        ));
        let mut idx = h;
        idx.index = idx.chunks;
        assert!(ChunkHeader::decode(&idx.encode()).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for n in 0..2000usize {
            let bytes: Vec<u8> = (0..n % 130)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = ChunkHeader::decode(&bytes);
            let _ = ChunkAck::decode(&bytes);
        }
    }
}

//! Control messages between progress engines (pure codec).
//!
//! A receive that matched a send answers with `Ack`, or with `Mismatch`
//! carrying the receiver's size and type, so a send completes (or fails) only
//! once its receive was matched: that is how a size/type mismatch fails on
//! both sides.

/// A control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// The receive of `(channel, seq)` matched and took the data.
    Ack { channel: u32, seq: u64 },
    /// An op of the sender timed out waiting on rank `on` (sent to every
    /// peer, so that ranks that time out together can tell which rank they
    /// all waited on; see the engine's `culprit`).
    Waiting { on: u32 },
    /// The receive of `(channel, seq)` expected another size or type.
    Mismatch {
        channel: u32,
        seq: u64,
        recv_bytes: u64,
        recv_dtype: u8,
    },
}

const LEN: usize = 22;

impl Control {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; LEN];
        let (tag, channel, seq, bytes, dtype) = match *self {
            Self::Ack { channel, seq } => (1u8, channel, seq, 0, 0),
            Self::Waiting { on } => (3u8, on, 0, 0, 0),
            Self::Mismatch {
                channel,
                seq,
                recv_bytes,
                recv_dtype,
            } => (2u8, channel, seq, recv_bytes, recv_dtype),
        };
        b[0] = tag;
        b[1..5].copy_from_slice(&channel.to_le_bytes());
        b[5..13].copy_from_slice(&seq.to_le_bytes());
        b[13..21].copy_from_slice(&bytes.to_le_bytes());
        b[21] = dtype;
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LEN {
            return None;
        }
        let channel = u32::from_le_bytes(b[1..5].try_into().ok()?);
        let seq = u64::from_le_bytes(b[5..13].try_into().ok()?);
        match b[0] {
            1 => Some(Self::Ack { channel, seq }),
            3 => Some(Self::Waiting { on: channel }),
            2 => Some(Self::Mismatch {
                channel,
                seq,
                recv_bytes: u64::from_le_bytes(b[13..21].try_into().ok()?),
                recv_dtype: b[21],
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for c in [
            Control::Ack {
                channel: 3,
                seq: u64::MAX,
            },
            Control::Waiting { on: 7 },
            Control::Mismatch {
                channel: 0,
                seq: 9,
                recv_bytes: 1 << 40,
                recv_dtype: 6,
            },
        ] {
            assert_eq!(Control::decode(&c.encode()), Some(c));
        }
        assert_eq!(Control::decode(&[]), None);
        assert_eq!(Control::decode(&[9; LEN]), None);
    }
}

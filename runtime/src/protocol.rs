//! Control messages between progress engines (pure codec).
//!
//! A receive that matched an acknowledged send (see [`crate::flow`]) answers
//! with `Ack`, or with `Mismatch` carrying the receiver's size and type, so
//! such a send completes (or fails) only once its receive was matched; an
//! eager send completes at once, and a `Mismatch` for it fails the sender's
//! later operations on that channel. `Rts`/`Cts` carry the rendezvous and
//! `Credit` the eager credit of [`crate::flow`].

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
        recv_dtype: u16,
    },
    /// Request to send `(channel, seq)`: `bytes` of type code `dtype` wait
    /// at the sender until the receive is posted ([`crate::flow`]).
    Rts {
        channel: u32,
        seq: u64,
        bytes: u64,
        dtype: u16,
    },
    /// Clear to send `(channel, seq)`: its receive is posted. Carries
    /// `credit` bytes of eager credit returned at the same time.
    Cts { channel: u32, seq: u64, credit: u64 },
    /// `bytes` of eager credit returned ([`crate::flow`]).
    Credit { bytes: u64 },
    /// Rank `reporter` found that ranks run different operations on
    /// `channel` (sent to every rank: each fails its pending and later ops
    /// of that channel). Sides are `(rank, type code, bytes)`: sender and
    /// receiver of one message, or two senders whose messages `crossed`;
    /// `seq` is the message's (the sender's seq to the receiver; 0 when
    /// `crossed`).
    Disagree {
        channel: u32,
        reporter: u32,
        crossed: bool,
        seq: u64,
        a: (u32, u16, u64),
        b: (u32, u16, u64),
    },
    /// The sender gave up an operation on `channel` midway (an error in
    /// its caller's code): the channel's ranks are out of step, and each
    /// fails its pending and later ops of it.
    GaveUp { channel: u32 },
}

const LEN: usize = 23;
/// Length of an encoded [`Control::Disagree`].
const DISAGREE_LEN: usize = 46;

fn put_side(b: &mut [u8], (rank, code, bytes): (u32, u16, u64)) {
    b[0..4].copy_from_slice(&rank.to_le_bytes());
    b[4..6].copy_from_slice(&code.to_le_bytes());
    b[6..14].copy_from_slice(&bytes.to_le_bytes());
}

fn side(b: &[u8]) -> Option<(u32, u16, u64)> {
    Some((
        u32::from_le_bytes(b[0..4].try_into().ok()?),
        u16::from_le_bytes(b[4..6].try_into().ok()?),
        u64::from_le_bytes(b[6..14].try_into().ok()?),
    ))
}

impl Control {
    pub(crate) fn encode(&self) -> Vec<u8> {
        if let Self::Disagree {
            channel,
            reporter,
            crossed,
            seq,
            a,
            b: other,
        } = *self
        {
            let mut b = vec![0u8; DISAGREE_LEN];
            b[0] = 4;
            b[1..5].copy_from_slice(&channel.to_le_bytes());
            b[5..9].copy_from_slice(&reporter.to_le_bytes());
            b[9] = crossed as u8;
            put_side(&mut b[10..24], a);
            put_side(&mut b[24..38], other);
            b[38..46].copy_from_slice(&seq.to_le_bytes());
            return b;
        }
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
            Self::Rts {
                channel,
                seq,
                bytes,
                dtype,
            } => (5u8, channel, seq, bytes, dtype),
            Self::Cts {
                channel,
                seq,
                credit,
            } => (6u8, channel, seq, credit, 0),
            Self::Credit { bytes } => (7u8, 0, 0, bytes, 0),
            Self::GaveUp { channel } => (8u8, channel, 0, 0, 0),
            Self::Disagree { .. } => unreachable!("encoded above"),
        };
        b[0] = tag;
        b[1..5].copy_from_slice(&channel.to_le_bytes());
        b[5..13].copy_from_slice(&seq.to_le_bytes());
        b[13..21].copy_from_slice(&bytes.to_le_bytes());
        b[21..23].copy_from_slice(&dtype.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() == DISAGREE_LEN && b[0] == 4 {
            return Some(Self::Disagree {
                channel: u32::from_le_bytes(b[1..5].try_into().ok()?),
                reporter: u32::from_le_bytes(b[5..9].try_into().ok()?),
                crossed: match b[9] {
                    0 => false,
                    1 => true,
                    _ => return None,
                },
                seq: u64::from_le_bytes(b[38..46].try_into().ok()?),
                a: side(&b[10..24])?,
                b: side(&b[24..38])?,
            });
        }
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
                recv_dtype: u16::from_le_bytes(b[21..23].try_into().ok()?),
            }),
            5 => Some(Self::Rts {
                channel,
                seq,
                bytes: u64::from_le_bytes(b[13..21].try_into().ok()?),
                dtype: u16::from_le_bytes(b[21..23].try_into().ok()?),
            }),
            6 => Some(Self::Cts {
                channel,
                seq,
                credit: u64::from_le_bytes(b[13..21].try_into().ok()?),
            }),
            7 => Some(Self::Credit {
                bytes: u64::from_le_bytes(b[13..21].try_into().ok()?),
            }),
            8 => Some(Self::GaveUp { channel }),
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
                recv_dtype: 0x0106,
            },
            Control::Rts {
                channel: 2,
                seq: 5,
                bytes: 1 << 33,
                dtype: 0x1f12,
            },
            Control::Cts {
                channel: u32::MAX,
                seq: 1,
                credit: 4096,
            },
            Control::Credit { bytes: u64::MAX },
            Control::GaveUp { channel: 9 },
            Control::Disagree {
                channel: 5,
                reporter: 3,
                crossed: true,
                seq: u64::MAX - 1,
                a: (1, 0x0b0d, 8),
                b: (u32::MAX, 7, u64::MAX),
            },
        ] {
            assert_eq!(Control::decode(&c.encode()), Some(c));
        }
        assert_eq!(Control::decode(&[]), None);
        assert_eq!(Control::decode(&[9; LEN]), None);
        assert_eq!(Control::decode(&[4; DISAGREE_LEN]), None); // crossed = 4
        assert_eq!(Control::decode(&[4; LEN]), None);
    }
}

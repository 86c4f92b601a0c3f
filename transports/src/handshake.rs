//! The connection handshake: the fixed-size `Hello` that opens every zccl
//! connection (bootstrap and data), and its validation.
//!
//! Both ends send a `Hello`: the connecting side first; the accepting side
//! validates it, then answers with its own, which the connecting side
//! validates in turn. A connection whose `Hello` does not validate is logged
//! and dropped by the caller. Encoding, decoding and validation are pure
//! functions, tested here without sockets.
//!
//! Layout (little endian, [`HELLO_LEN`] = 44 bytes): magic (8) · version (2) ·
//! purpose (1) · reserved (1) · secret (16) · src rank (4) · dst rank (4) ·
//! world size (4) · socket index (2) · socket count (2).

use std::fmt;

use thiserror::Error;

/// The first 8 bytes of every zccl connection.
pub const MAGIC: [u8; 8] = *b"ZCCLHELO";
/// The wire protocol version; peers must match exactly.
///
/// Version 2 added the communicator context id to the frame header;
/// version 3 the sequence number of the message found mismatched to the
/// engine's disagreement report; version 4 the top bit of the header's
/// operation label, set on a piece of a message sent in pieces when more
/// follow (a version-3 peer would take every such piece for a mismatch);
/// version 5 writes the shared-memory rings' poll leases in
/// [`clock`](crate::clock) ticks (the time-stamp counter where it is fit),
/// not `CLOCK_MONOTONIC` nanoseconds; version 6 gives a reverse All-Scan
/// an operation label of its own (31, which a version-5 peer reads as a
/// broadcast from root 11 modulo 12; broadcast roots are now told apart
/// modulo 11), and adds the engines' control message that a rank gave up
/// an operation midway (`GaveUp`, which a version-5 peer drops as
/// malformed).
pub const PROTOCOL_VERSION: u16 = 6;
/// Size in bytes of an encoded [`Hello`].
pub const HELLO_LEN: usize = 44;
/// The rank number that designates the bootstrap root in [`Hello::dst_rank`]/[`Hello::src_rank`].
pub const ROOT_RANK: u32 = u32::MAX;

/// The random per-job secret every connection must present.
///
/// Its `Debug` form is redacted; comparison is constant-time.
///
/// ```
/// use zccl_transports::handshake::JobSecret;
/// let s = JobSecret::from_bytes([7; 16]);
/// assert_eq!(JobSecret::from_hex(&s.to_hex()), Some(s));
/// assert_eq!(format!("{s:?}"), "JobSecret(..)");
/// ```
#[derive(Clone, Copy, Eq)]
pub struct JobSecret([u8; 16]);

impl JobSecret {
    /// Wraps raw bytes.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Self(b)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lower-case hex (32 characters).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 32 hex characters (either case; nothing else, not even a `+`
    /// sign, which `u8::from_str_radix` alone would accept).
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(b))
    }
}

impl PartialEq for JobSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for JobSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobSecret(..)")
    }
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Purpose {
    /// Rank ↔ bootstrap root.
    Bootstrap = 1,
    /// Rank ↔ rank data socket.
    Data = 2,
}

/// The opening message of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version of the sender.
    pub version: u16,
    /// What the connection is for.
    pub purpose: Purpose,
    /// The job secret.
    pub secret: JobSecret,
    /// The sender's rank ([`ROOT_RANK`] for the root).
    pub src_rank: u32,
    /// The rank the sender believes it talks to ([`ROOT_RANK`] for the root).
    pub dst_rank: u32,
    /// The job's world size.
    pub world_size: u32,
    /// Index of this socket among the sockets of one peer connection.
    pub socket_index: u16,
    /// Number of sockets of one peer connection.
    pub num_sockets: u16,
}

/// Why a `Hello` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// Not a zccl connection at all.
    #[error("bad magic (not a zccl connection)")]
    BadMagic,
    /// A zccl peer speaking another protocol version.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// Unknown purpose byte or a reserved byte set.
    #[error("malformed hello: {0}")]
    Malformed(&'static str),
    /// A connection for another purpose (e.g. a data socket dialing the root port).
    #[error("unexpected connection purpose {got:?}, expected {expected:?}")]
    WrongPurpose {
        /// Expected purpose.
        expected: Purpose,
        /// Received purpose.
        got: Purpose,
    },
    /// The secret does not match: another job, or a foreign client.
    #[error("wrong job secret (another job or a foreign client)")]
    WrongSecret,
    /// The hello is addressed to another rank.
    #[error("hello addressed to rank {got}, but this is rank {expected}")]
    WrongDestination {
        /// Our rank.
        expected: u32,
        /// The addressed rank.
        got: u32,
    },
    /// The sender claims a rank that cannot exist or is not expected here.
    #[error("unexpected source rank {rank} (world size {world_size})")]
    BadSourceRank {
        /// Claimed rank.
        rank: u32,
        /// World size.
        world_size: u32,
    },
    /// The sender has another idea of the world size.
    #[error("world size mismatch: ours {ours}, theirs {theirs}")]
    WorldSizeMismatch {
        /// Our world size.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// Socket index/count inconsistent with ours.
    #[error("socket {index} of {count} does not fit our {ours} sockets per peer")]
    BadSocket {
        /// Announced index.
        index: u16,
        /// Announced count.
        count: u16,
        /// Our count.
        ours: u16,
    },
}

impl HandshakeError {
    /// `(theirs, ours)` when the hello passed every other check and only
    /// its count of sockets per peer differs from ours ([`validate`]'s last
    /// check): a rank of this job set up otherwise, not a stray.
    ///
    /// ```
    /// use zccl_transports::handshake::HandshakeError;
    /// let e = HandshakeError::BadSocket { index: 0, count: 2, ours: 1 };
    /// assert_eq!(e.socket_count_mismatch(), Some((2, 1)));
    /// let e = HandshakeError::BadSocket { index: 3, count: 2, ours: 2 };
    /// assert_eq!(e.socket_count_mismatch(), None);
    /// ```
    pub fn socket_count_mismatch(&self) -> Option<(u16, u16)> {
        match *self {
            Self::BadSocket { count, ours, .. } if count != ours => Some((count, ours)),
            _ => None,
        }
    }
}

impl Hello {
    /// Encodes the hello.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10] = self.purpose as u8;
        b[12..28].copy_from_slice(self.secret.as_bytes());
        b[28..32].copy_from_slice(&self.src_rank.to_le_bytes());
        b[32..36].copy_from_slice(&self.dst_rank.to_le_bytes());
        b[36..40].copy_from_slice(&self.world_size.to_le_bytes());
        b[40..42].copy_from_slice(&self.socket_index.to_le_bytes());
        b[42..44].copy_from_slice(&self.num_sockets.to_le_bytes());
        b
    }

    /// Decodes a hello. Checks the magic, the version and the encoding; the
    /// job-level checks are [`validate`]'s.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Self, HandshakeError> {
        if b[0..8] != MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != PROTOCOL_VERSION {
            return Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        let purpose = match b[10] {
            1 => Purpose::Bootstrap,
            2 => Purpose::Data,
            _ => return Err(HandshakeError::Malformed("unknown purpose")),
        };
        if b[11] != 0 {
            return Err(HandshakeError::Malformed("reserved byte set"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Ok(Self {
            version,
            purpose,
            secret: JobSecret(b[12..28].try_into().expect("16 bytes")),
            src_rank: u32_at(28),
            dst_rank: u32_at(32),
            world_size: u32_at(36),
            socket_index: u16::from_le_bytes([b[40], b[41]]),
            num_sockets: u16::from_le_bytes([b[42], b[43]]),
        })
    }
}

/// What the receiving side of a handshake expects.
#[derive(Debug, Clone, Copy)]
pub struct Expectation {
    /// The connection purpose this endpoint serves.
    pub purpose: Purpose,
    /// The job secret.
    pub secret: JobSecret,
    /// Our own rank ([`ROOT_RANK`] for the root).
    pub local_rank: u32,
    /// The world size, when known (the root learns it from the first valid hello).
    pub world_size: Option<u32>,
    /// When set, the only source rank accepted.
    pub src_rank: Option<u32>,
    /// When set, the sender must be in `range` (inclusive start, exclusive end).
    pub src_range: Option<(u32, u32)>,
    /// Sockets per peer, for data connections.
    pub num_sockets: Option<u16>,
}

/// Validates a decoded hello against what this endpoint expects.
///
/// ```
/// use zccl_transports::handshake::*;
/// let secret = JobSecret::from_bytes([1; 16]);
/// let hello = Hello { version: PROTOCOL_VERSION, purpose: Purpose::Data, secret,
///     src_rank: 2, dst_rank: 0, world_size: 4, socket_index: 1, num_sockets: 2 };
/// let exp = Expectation { purpose: Purpose::Data, secret, local_rank: 0, world_size: Some(4),
///     src_rank: None, src_range: Some((1, 4)), num_sockets: Some(2) };
/// assert!(validate(&hello, &exp).is_ok());
/// let other = Expectation { secret: JobSecret::from_bytes([2; 16]), ..exp };
/// assert_eq!(validate(&hello, &other), Err(HandshakeError::WrongSecret));
/// ```
pub fn validate(h: &Hello, e: &Expectation) -> Result<(), HandshakeError> {
    if h.purpose != e.purpose {
        return Err(HandshakeError::WrongPurpose {
            expected: e.purpose,
            got: h.purpose,
        });
    }
    if h.secret != e.secret {
        return Err(HandshakeError::WrongSecret);
    }
    if h.dst_rank != e.local_rank {
        return Err(HandshakeError::WrongDestination {
            expected: e.local_rank,
            got: h.dst_rank,
        });
    }
    if h.world_size == 0 {
        return Err(HandshakeError::Malformed("world size 0"));
    }
    if let Some(w) = e.world_size
        && w != h.world_size
    {
        return Err(HandshakeError::WorldSizeMismatch {
            ours: w,
            theirs: h.world_size,
        });
    }
    let bad_src = HandshakeError::BadSourceRank {
        rank: h.src_rank,
        world_size: h.world_size,
    };
    let is_root = h.src_rank == ROOT_RANK;
    if !is_root && h.src_rank >= h.world_size {
        return Err(bad_src);
    }
    if is_root && e.purpose == Purpose::Data {
        return Err(bad_src);
    }
    if e.src_rank.is_some_and(|r| r != h.src_rank)
        || e.src_range
            .is_some_and(|(lo, hi)| h.src_rank < lo || h.src_rank >= hi)
    {
        return Err(bad_src);
    }
    if e.purpose == Purpose::Bootstrap && !is_root && h.dst_rank != ROOT_RANK {
        return Err(HandshakeError::Malformed(
            "bootstrap hello between two ranks",
        ));
    }
    if let Some(n) = e.num_sockets
        && (h.num_sockets != n || h.socket_index >= n)
    {
        return Err(HandshakeError::BadSocket {
            index: h.socket_index,
            count: h.num_sockets,
            ours: n,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: JobSecret = JobSecret::from_bytes([0xAB; 16]);

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            purpose: Purpose::Data,
            secret: S,
            src_rank: 3,
            dst_rank: 1,
            world_size: 4,
            socket_index: 1,
            num_sockets: 2,
        }
    }

    fn exp() -> Expectation {
        Expectation {
            purpose: Purpose::Data,
            secret: S,
            local_rank: 1,
            world_size: Some(4),
            src_rank: None,
            src_range: Some((2, 4)),
            num_sockets: Some(2),
        }
    }

    #[test]
    fn round_trip() {
        let h = hello();
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn decode_rejects() {
        let mut b = hello().encode();
        b[0] = b'X';
        assert_eq!(Hello::decode(&b), Err(HandshakeError::BadMagic));
        let mut b = hello().encode();
        b[8] = 9;
        assert_eq!(
            Hello::decode(&b),
            Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 9
            })
        );
        let mut b = hello().encode();
        b[10] = 7;
        assert!(matches!(
            Hello::decode(&b),
            Err(HandshakeError::Malformed(_))
        ));
        let mut b = hello().encode();
        b[11] = 1;
        assert!(matches!(
            Hello::decode(&b),
            Err(HandshakeError::Malformed(_))
        ));
        assert_eq!(
            Hello::decode(&[0u8; HELLO_LEN]),
            Err(HandshakeError::BadMagic)
        );
    }

    #[test]
    fn validation_table() {
        type Case = (&'static str, fn(&mut Hello), Option<HandshakeError>);
        let cases: &[Case] = &[
            ("valid", |_| {}, None),
            (
                "secret",
                |h| h.secret = JobSecret::from_bytes([0; 16]),
                Some(HandshakeError::WrongSecret),
            ),
            (
                "purpose",
                |h| h.purpose = Purpose::Bootstrap,
                Some(HandshakeError::WrongPurpose {
                    expected: Purpose::Data,
                    got: Purpose::Bootstrap,
                }),
            ),
            (
                "dst",
                |h| h.dst_rank = 2,
                Some(HandshakeError::WrongDestination {
                    expected: 1,
                    got: 2,
                }),
            ),
            (
                "world",
                |h| h.world_size = 5,
                Some(HandshakeError::WorldSizeMismatch { ours: 4, theirs: 5 }),
            ),
            (
                "src out of world",
                |h| h.src_rank = 4,
                Some(HandshakeError::BadSourceRank {
                    rank: 4,
                    world_size: 4,
                }),
            ),
            (
                "src below range",
                |h| h.src_rank = 0,
                Some(HandshakeError::BadSourceRank {
                    rank: 0,
                    world_size: 4,
                }),
            ),
            (
                "src is root",
                |h| h.src_rank = ROOT_RANK,
                Some(HandshakeError::BadSourceRank {
                    rank: ROOT_RANK,
                    world_size: 4,
                }),
            ),
            (
                "socket index",
                |h| h.socket_index = 2,
                Some(HandshakeError::BadSocket {
                    index: 2,
                    count: 2,
                    ours: 2,
                }),
            ),
            (
                "socket count",
                |h| h.num_sockets = 3,
                Some(HandshakeError::BadSocket {
                    index: 1,
                    count: 3,
                    ours: 2,
                }),
            ),
            (
                "world zero",
                |h| h.world_size = 0,
                Some(HandshakeError::Malformed("world size 0")),
            ),
        ];
        for (name, mutate, want) in cases {
            let mut h = hello();
            mutate(&mut h);
            assert_eq!(validate(&h, &exp()).err(), *want, "case {name}");
        }
    }

    #[test]
    fn bootstrap_root_side() {
        let e = Expectation {
            purpose: Purpose::Bootstrap,
            secret: S,
            local_rank: ROOT_RANK,
            world_size: None,
            src_rank: None,
            src_range: None,
            num_sockets: None,
        };
        let h = Hello {
            purpose: Purpose::Bootstrap,
            dst_rank: ROOT_RANK,
            socket_index: 0,
            num_sockets: 1,
            ..hello()
        };
        assert_eq!(validate(&h, &e), Ok(()));
        // The rank side checks the root's answer.
        let reply = Hello {
            src_rank: ROOT_RANK,
            dst_rank: 3,
            ..h
        };
        let e2 = Expectation {
            local_rank: 3,
            world_size: Some(4),
            src_rank: Some(ROOT_RANK),
            ..e
        };
        assert_eq!(validate(&reply, &e2), Ok(()));
    }

    #[test]
    fn secret_hex() {
        assert_eq!(JobSecret::from_hex("zz"), None);
        assert_eq!(JobSecret::from_hex(&"g".repeat(32)), None);
        // Found by fuzzing (fuzz/regressions/handshake/secret-hex-plus-sign).
        assert_eq!(JobSecret::from_hex(&"+f".repeat(16)), None);
        assert_eq!(
            JobSecret::from_hex(&"0f".repeat(16)),
            Some(JobSecret::from_bytes([0x0f; 16]))
        );
    }
}

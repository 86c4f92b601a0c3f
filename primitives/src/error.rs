//! The error type of every fallible operation in this crate.

use std::time::Duration;

use thiserror::Error;

/// Send or receive: which side of a point-to-point operation failed.
///
/// ```
/// use zccl_primitives::Dir;
/// assert_eq!(Dir::Send.to_string(), "send to");
/// assert_eq!(format!("rank 0: {} rank 1", Dir::Recv), "rank 0: recv from rank 1");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// A send to `peer`.
    Send,
    /// A receive from `peer`.
    Recv,
}

impl std::fmt::Display for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dir::Send => "send to",
            Dir::Recv => "recv from",
        })
    }
}

/// Errors of the primitives and of the fabrics they run on.
///
/// Every point-to-point failure names the rank that saw it, the peer, the
/// channel and the tag, so that a hang in an N-rank job can be traced to one
/// edge of the schedule.
///
/// ```
/// use std::time::Duration;
/// use zccl_primitives::{Dir, Error};
/// let e = Error::Timeout { rank: 2, dir: Dir::Recv, peer: 1, channel: 0, tag: 7, after: Duration::from_secs(3) };
/// assert_eq!(e.to_string(), "rank 2: recv from rank 1 on channel 0 (tag 0x7) timed out after 3.0 s");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// The operation's deadline passed before it completed.
    #[error("rank {rank}: {dir} rank {peer} on channel {channel} (tag {tag:#x}) timed out after {:.1} s", .after.as_secs_f64())]
    Timeout {
        /// The rank that waited.
        rank: usize,
        /// Send or receive.
        dir: Dir,
        /// The peer that did not answer.
        peer: usize,
        /// The channel.
        channel: u32,
        /// The tag the waiter expected.
        tag: u64,
        /// The deadline, counted from when the operation was posted.
        after: Duration,
    },
    /// A receive matched a message of another size or tag: the two ranks do
    /// not run the same schedule.
    #[error(
        "rank {rank}: recv from rank {peer} on channel {channel}: expected {expected_len} B with tag {expected_tag:#x}, \
         the matching send has {got_len} B with tag {got_tag:#x}"
    )]
    Mismatch {
        /// The receiving rank.
        rank: usize,
        /// The sender.
        peer: usize,
        /// The channel.
        channel: u32,
        /// Tag the receiver posted.
        expected_tag: u64,
        /// Length the receiver posted.
        expected_len: usize,
        /// Tag of the matched send.
        got_tag: u64,
        /// Length of the matched send.
        got_len: usize,
    },
    /// The fabric was torn down (another rank failed) while this operation was pending.
    #[error("rank {rank}: {dir} rank {peer} on channel {channel} aborted: {reason}")]
    Aborted {
        /// The rank whose operation was aborted.
        rank: usize,
        /// Send or receive.
        dir: Dir,
        /// The peer of the aborted operation.
        peer: usize,
        /// The channel.
        channel: u32,
        /// Why the fabric was aborted.
        reason: String,
    },
    /// The fabric was aborted or closed before this operation started
    /// ([`Fabric::ensure_live`](crate::Fabric::ensure_live)).
    #[error("rank {rank}: {reason}")]
    Ended {
        /// The rank whose fabric ended.
        rank: usize,
        /// Why, in the fabric's words.
        reason: String,
    },
    /// The underlying transport failed (used by adapters over real transports).
    #[error("rank {rank}: {dir} rank {peer} on channel {channel}: {reason}")]
    Transport {
        /// The rank that saw the failure.
        rank: usize,
        /// Send or receive.
        dir: Dir,
        /// The peer.
        peer: usize,
        /// The channel.
        channel: u32,
        /// The transport's description of the failure.
        reason: String,
    },
    /// Ulysses resharding needs the head count to be a multiple of the rank count.
    #[error("Ulysses: {heads} heads cannot be split evenly over {ranks} ranks{}", heads_rem(*.heads, *.ranks))]
    HeadsNotDivisible {
        /// Number of heads.
        heads: usize,
        /// Number of ranks.
        ranks: usize,
    },
    /// The ranks of a broadcast named different roots (found by the
    /// root check every broadcast of more than 2 ranks runs first).
    #[error(
        "rank {rank}: broadcast root mismatch on channel {channel}: this rank passed root {mine}, {others}"
    )]
    RootMismatch {
        /// The rank that reports.
        rank: usize,
        /// The channel.
        channel: u32,
        /// The root this rank passed.
        mine: usize,
        /// What the others passed, as far as the check tells: "the ranks
        /// passed roots from 0 to 12", or "another rank passed a
        /// different root" (the one-round check of a small broadcast).
        others: String,
    },
    /// An argument is out of range or inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The progress thread of a non-blocking operation could not be started
    /// (see [`crate::nonblocking`]).
    #[error("{0}")]
    Progress(String),
}

/// Result with this crate's [`Error`](enum@Error).
///
/// ```
/// use zccl_primitives::{Error, Result};
/// fn half(x: usize) -> Result<usize> {
///     if x % 2 == 0 {
///         Ok(x / 2)
///     } else {
///         Err(Error::InvalidArgument(format!("{x} is odd")))
///     }
/// }
/// assert_eq!(half(4), Ok(2));
/// assert_eq!(half(3).unwrap_err().to_string(), "invalid argument: 3 is odd");
/// // The error type defaults to `Error` but can be overridden.
/// let r: Result<u8, String> = Err("other".into());
/// assert_eq!(r.unwrap_err(), "other");
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// `HeadsNotDivisible`'s remainder, in words (none for 0 ranks, whose
/// remainder does not exist: formatting it panicked).
fn heads_rem(heads: usize, ranks: usize) -> String {
    match heads.checked_rem(ranks) {
        Some(r) => format!(" (heads % ranks = {r})"),
        None => String::new(),
    }
}

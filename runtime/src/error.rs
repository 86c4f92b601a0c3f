//! The runtime's error type and the description of an operation that errors carry.

use std::fmt;
use std::time::Duration;

use thiserror::Error;
use zccl_transports::TransportError;

use crate::buffer::DType;
use crate::ids::SERVICE_COMM_BIT;
use crate::label::{OpLabel, OpSide, elems};

/// Send or receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A send.
    Send,
    /// A receive.
    Recv,
}

/// Which operation an error is about: enough to find it in every rank's log.
///
/// Ranks are **world** ranks (the ranks of the communicator created by
/// `init`), also for ops of a communicator made by
/// [`Communicator::split`](crate::Communicator::split); `comm` says which
/// communicator (0 is the world communicator).
///
/// ```
/// use zccl_runtime::{DType, OpDesc, OpKind};
/// let op = OpDesc { rank: 1, kind: OpKind::Send, peer: 3, comm: 0, channel: 0, seq: 7,
///                   bytes: 8, dtype: DType::F32 };
/// assert_eq!(op.to_string(), "rank 1: send seq 7 to rank 3 on channel 0 (8 B of f32)");
/// let sub = OpDesc { comm: 2, ..op };
/// assert_eq!(sub.to_string(), "rank 1: send seq 7 to rank 3 on channel 0 of communicator 2 (8 B of f32)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpDesc {
    /// The (world) rank that issued the op.
    pub rank: u32,
    /// Send or receive.
    pub kind: OpKind,
    /// The peer's world rank (destination of a send, source of a receive).
    pub peer: u32,
    /// The communicator's context id (0: the world communicator).
    pub comm: u32,
    /// The channel.
    pub channel: u32,
    /// Sequence number of the op among the ops of its kind between this rank
    /// and `peer` on `channel` (a send and its matching receive share it).
    pub seq: u64,
    /// Size of the buffer in bytes.
    pub bytes: u64,
    /// Element type.
    pub dtype: DType,
}

/// The text of a mismatch: which side ran what.
fn mismatch(
    op: &OpDesc,
    send_bytes: u64,
    send_dtype: DType,
    send_op: OpLabel,
    recv_bytes: u64,
    recv_dtype: DType,
    recv_op: OpLabel,
) -> String {
    let side = |l: OpLabel, b, d| {
        if l == OpLabel::NONE {
            format!("{b} B ({})", elems(b, d))
        } else {
            format!("{l} of {b} B ({})", elems(b, d))
        }
    };
    let what = if send_op.base() != recv_op.base() {
        "operation mismatch"
    } else {
        // (Pieces that differ only in whether more follow: a size mismatch.)
        "size/type mismatch"
    };
    format!(
        "{op}: {what}: send is {}, receive is {}",
        side(send_op, send_bytes, send_dtype),
        side(recv_op, recv_bytes, recv_dtype)
    )
}

/// The text of a disagreement between two ranks of a channel.
fn disagreement(op: &OpDesc, reported_by: u32, crossed: bool, a: &OpSide, b: &OpSide) -> String {
    let what = if a.op.base() != b.op.base() {
        "operation mismatch"
    } else {
        "size/type mismatch"
    };
    let how = if crossed {
        format!(
            "{a} sent to rank {} while {b} sent to rank {}, and neither receives the other's message",
            b.rank, a.rank
        )
    } else {
        format!("{a} sent, {b} expected")
    };
    format!(
        "{op} failed: {what} on channel {}: {how} (found by rank {reported_by}; \
         every rank of the channel fails)",
        op.channel
    )
}

/// The note a timeout adds about the rank that stalled.
fn stalled(
    op: &OpDesc,
    culprit: Option<u32>,
    other_op: Option<(u32, OpLabel)>,
    other_mine: OpLabel,
    crossed: bool,
) -> String {
    if crossed {
        // A cycle, not a stall: no rank is to blame but the order of calls.
        return format!(
            ": rank {p} sent this rank a message on this channel that no receive here \
             has taken, so the two ranks wait in sends to each other (a send of more \
             than {eager} KiB completes only once its receive is posted, as with NCCL \
             and Gloo); post the receive first (irecv, batch_isend_irecv) or let one \
             of the two ranks receive first",
            p = op.peer,
            eager = crate::flow::EAGER_MAX >> 10
        );
    }
    let other = match other_op {
        Some((peer, l)) => format!(
            " (this rank runs {}; rank {peer} meanwhile sent {l} messages on this channel: \
             unless it was one operation ahead, the ranks run different operations)",
            match other_mine {
                OpLabel::NONE => "unlabelled operations".to_string(),
                m => m.to_string(),
            }
        ),
        None => String::new(),
    };
    let who = match culprit {
        Some(c) if c == op.peer => format!(": rank {c} stalled"),
        Some(c) => format!(
            ": rank {} was itself waiting; rank {c} is the one that stalled",
            op.peer
        ),
        None => String::new(),
    };
    who + &other
}

impl fmt::Display for OpDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, dir) = match self.kind {
            OpKind::Send => ("send", "to"),
            OpKind::Recv => ("recv", "from"),
        };
        let comm = match self.comm {
            0 => String::new(),
            c if c & SERVICE_COMM_BIT != 0 => format!(
                " of communicator {} (split exchange)",
                c & !SERVICE_COMM_BIT
            ),
            c => format!(" of communicator {c}"),
        };
        write!(
            f,
            "rank {}: {what} seq {} {dir} rank {} on channel {}{comm} ({} B of {})",
            self.rank, self.seq, self.peer, self.channel, self.bytes, self.dtype
        )
    }
}

/// Errors of the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration variable has an invalid value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The launcher environment is incomplete or inconsistent.
    #[error("launcher environment: {0}")]
    Env(String),
    /// NIC selection, socket setup or connection setup failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The rendezvous through the root failed.
    #[error("bootstrap failed: {0}")]
    Bootstrap(String),
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A peer died, got stuck or aborted; the communicator is unusable.
    #[error("{op} failed: rank {failed_rank} {reason} [{nic}]")]
    PeerFailed {
        /// The failed op.
        op: OpDesc,
        /// The rank whose failure caused this error.
        failed_rank: u32,
        /// What happened to it.
        reason: String,
        /// The NIC path on which the failure was detected.
        nic: String,
    },
    /// The peer closed its communicator in order while this op was pending.
    #[error("{op} failed: rank {} closed its communicator", .op.peer)]
    PeerClosed {
        /// The failed op.
        op: OpDesc,
    },
    /// The op's deadline passed.
    #[error("{op} timed out after {:.1} s [{nic}]{}", .after.as_secs_f64(), stalled(.op, *.culprit, *.other_op, *.mine, *.crossed))]
    Timeout {
        /// The op.
        op: OpDesc,
        /// The op's timeout.
        after: Duration,
        /// The NIC path to the peer.
        nic: String,
        /// The rank that stalled, as far as the ranks that timed out together
        /// could tell: the end of the chain of ranks waiting on each other
        /// that starts at this op's peer (`None`: not known).
        culprit: Option<u32>,
        /// A rank that meanwhile sent messages of another operation on this
        /// channel, and that operation: the ranks run different collectives
        /// (whose message patterns never met, so no match could compare
        /// their labels).
        other_op: Option<(u32, OpLabel)>,
        /// This op's own operation label.
        mine: OpLabel,
        /// This op is a send, and the peer's own send to this rank on the
        /// channel waits here with no receive: the two ranks wait in sends
        /// to each other (a deadlock of the program's order of calls).
        crossed: bool,
    },
    /// Send and receive disagree on size, element type or operation
    /// ([`crate::label`]): the receive fails with it, and so does a send
    /// that waited for the receiver's answer (larger than
    /// [`crate::flow::EAGER_MAX`]); the channel then fails on every rank
    /// ([`Error::Disagreement`]).
    #[error("{}", mismatch(.op, *.send_bytes, *.send_dtype, *.send_op, *.recv_bytes, *.recv_dtype, *.recv_op))]
    Mismatch {
        /// The op on this side.
        op: OpDesc,
        /// Bytes posted by the sender.
        send_bytes: u64,
        /// Sender's element type.
        send_dtype: DType,
        /// The sender's operation label.
        send_op: OpLabel,
        /// Bytes posted by the receiver.
        recv_bytes: u64,
        /// Receiver's element type.
        recv_dtype: DType,
        /// The receiver's operation label.
        recv_op: OpLabel,
    },
    /// Ranks run different operations (or sizes, types, roots) on the
    /// op's channel: found by one rank (a send and receive that disagree,
    /// or two ranks sending each other messages of different operations
    /// that neither receives) and reported to every rank, whose pending and
    /// later ops on that channel all fail with it (the receive that found
    /// it fails with [`Error::Mismatch`], and so does a send still waiting
    /// for its answer; a small send completed before, eager, learns it this
    /// way, at its next op on the channel).
    #[error("{}", disagreement(.op, *.reported_by, *.crossed, .a, .b))]
    Disagreement {
        /// The op on this side.
        op: OpDesc,
        /// The rank that found it.
        reported_by: u32,
        /// Two sends that crossed (`false`: a send and its receive).
        crossed: bool,
        /// The sending side (or one of the two senders).
        a: OpSide,
        /// The receiving side (or the other sender).
        b: OpSide,
    },
    /// The op's channel is out of step: an earlier op on it timed out on
    /// this rank, or a rank gave up an operation on it midway (its
    /// caller's error, such as a primitive's callback:
    /// [`Channel::abandon`](crate::Channel::abandon)). The ranks had then
    /// sent each other different parts of that operation, and what they
    /// sent next would be matched as its missing messages (returned as its
    /// data, without an error). So the channel's ops fail with this: this
    /// rank's after its timeout (the peers' by their own), every rank's
    /// pending and later ones after a rank gave up. Other channels, and
    /// the communicator, stay usable: go on on another channel (or make a
    /// new communicator, as after a torch `ProcessGroupNCCL` timeout).
    #[error("{op} failed: the ranks of channel {} are out of step since {since} (what they send each other now would be taken for that operation's missing messages); the channel stays failed: go on on another channel", .op.channel)]
    OutOfStep {
        /// The op that failed.
        op: OpDesc,
        /// What put the channel out of step.
        since: String,
    },
    /// The communicator was aborted (by `abort()`, or because it was dropped).
    #[error("{}communicator aborted: {reason}", .op.as_ref().map(|o| format!("{o} failed: ")).unwrap_or_default())]
    Aborted {
        /// The op, if the error is about one.
        op: Option<OpDesc>,
        /// Why.
        reason: String,
    },
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> OpDesc {
        OpDesc {
            rank: 1,
            kind: OpKind::Recv,
            peer: 0,
            comm: 0,
            channel: 2,
            seq: 5,
            bytes: 48,
            dtype: DType::F32,
        }
    }

    #[test]
    fn messages_name_everything() {
        let e = Error::PeerFailed {
            op: op(),
            failed_rank: 3,
            reason: "was lost (EOF)".into(),
            nic: "NIC lo 127.0.0.1:1 -> 127.0.0.1:2".into(),
        };
        let s = e.to_string();
        for needle in [
            "rank 1",
            "recv seq 5 from rank 0",
            "channel 2",
            "rank 3 was lost",
            "NIC lo",
        ] {
            assert!(s.contains(needle), "{s}");
        }
        let m = Error::Mismatch {
            op: op(),
            send_bytes: 40,
            send_dtype: DType::F32,
            send_op: OpLabel::NONE,
            recv_bytes: 48,
            recv_dtype: DType::F32,
            recv_op: OpLabel::NONE,
        };
        let s = m.to_string();
        assert!(
            s.contains("send is 40 B (10 x f32)") && s.contains("receive is 48 B (12 x f32)"),
            "{s}"
        );
        let a = Error::Aborted {
            op: None,
            reason: "by user".into(),
        };
        assert_eq!(a.to_string(), "communicator aborted: by user");
    }
}

//! Ranks that disagree on an operation, or a channel whose ranks fell out
//! of step: what a channel fails with once found (a [`Poison`]), and the
//! pure tests behind the engine's crossed-send check. Pure; tested below.

use std::time::Duration;

use crate::buffer::DType;
use crate::error::{Error, OpDesc, OpKind};
use crate::label::{OpLabel, OpSide};

/// How long two labelled sends of different operations that crossed
/// (each rank sent the other a message it has no receive for, while its
/// own send to that rank is unmatched) may stay so before the engine calls
/// it a disagreement. In a correct program the crossing is momentary: a
/// rank that sends the next operation's message has had its receive of
/// this one matched, and the ack is on its way (ahead of the message, on
/// one connection).
pub(super) const CROSSED_GRACE: Duration = Duration::from_millis(200);

/// What a stream's pending and later ops fail with.
#[derive(Clone)]
pub(super) enum Poison {
    /// Ranks were found to disagree on an operation of it (reported to
    /// every rank).
    Disagree(Disagreement),
    /// An op of it timed out on this rank: its sequence numbers with the
    /// peer were spent on messages that may come later, so what the ranks
    /// send next on the stream would be taken for other operations'
    /// (data returned as another operation's, no error). This rank's later
    /// ops fail instead, and send nothing; the peers learn it from their
    /// own timeouts (their messages to this rank are dropped).
    TimedOut {
        /// The op that timed out.
        first: OpDesc,
    },
    /// Rank `rank` gave up an operation of it midway (an error in its
    /// caller's code, such as a primitive's callback): its later messages
    /// would be taken for that operation's. The pending and later ops of
    /// every rank of its communicator fail (it tells them:
    /// `Control::GaveUp`).
    GaveUp {
        /// The rank that gave up.
        rank: u32,
    },
}

/// Ranks found to disagree on an operation of a stream.
#[derive(Clone, Copy)]
pub(super) struct Disagreement {
    pub(super) reported_by: u32,
    pub(super) crossed: bool,
    /// The sequence number of the message found mismatched (`a`'s to
    /// `b`); unused when `crossed`.
    pub(super) seq: u64,
    pub(super) a: OpSide,
    pub(super) b: OpSide,
}

/// A side of a disagreement from a header type byte.
pub(super) fn side(rank: u32, code: u16, bytes: u64) -> OpSide {
    let (dtype, op) = OpLabel::split(code);
    OpSide {
        rank,
        op,
        dtype: dtype.unwrap_or(DType::U8),
        bytes,
    }
}

/// Whether a message of type byte `msg` from a peer and this rank's
/// pending send of type byte `send` to that peer belong to different
/// labelled operations (the crossing [`CROSSED_GRACE`] is about). Pure.
pub(crate) fn crossed_ops(msg: u16, send: u16) -> bool {
    // Pieces of one message differ only in the piece mark
    // (`OpLabel::more_follow`): the same operation.
    let op = |code: u16| {
        let (dtype, op) = OpLabel::split(code);
        (dtype, op.base())
    };
    op(msg) != op(send) && op(msg).1 != OpLabel::NONE && op(send).1 != OpLabel::NONE
}

impl Poison {
    /// What `op` of the poisoned stream fails with.
    pub(super) fn error(&self, op: &OpDesc) -> Error {
        match self {
            Self::Disagree(d) => d.error(op),
            Self::TimedOut { first } => Error::OutOfStep {
                op: op.clone(),
                since: format!("{first} timed out"),
            },
            Self::GaveUp { rank } => Error::OutOfStep {
                op: op.clone(),
                since: format!(
                    "rank {rank} gave up an operation on it midway (an error in its \
                     caller's code, such as a callback's)"
                ),
            },
        }
    }
}

impl Disagreement {
    /// What `op` of the poisoned stream fails with. The send whose message
    /// the receiver found mismatched fails with [`Error::Mismatch`], as it
    /// does through the receiver's own answer: the report may overtake
    /// that answer (the transports hand messages over on two paths), so
    /// the outcome does not depend on which comes first.
    pub(super) fn error(&self, op: &OpDesc) -> Error {
        if !self.crossed
            && op.kind == OpKind::Send
            && op.rank == self.a.rank
            && op.peer == self.b.rank
            && op.seq == self.seq
        {
            return Error::Mismatch {
                op: op.clone(),
                send_bytes: self.a.bytes,
                send_dtype: self.a.dtype,
                send_op: self.a.op,
                recv_bytes: self.b.bytes,
                recv_dtype: self.b.dtype,
                recv_op: self.b.op,
            };
        }
        Error::Disagreement {
            op: op.clone(),
            reported_by: self.reported_by,
            crossed: self.crossed,
            a: self.a,
            b: self.b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossed_sends_of_different_labelled_operations_are_suspects() {
        let ar = OpLabel::ALL_REDUCE_SUM.wire(DType::F32);
        let ag = OpLabel::ALL_GATHER.wire(DType::F32);
        let ar64 = OpLabel::ALL_REDUCE_SUM.wire(DType::F64);
        assert!(crossed_ops(ar, ag));
        assert!(crossed_ops(ar, ar64), "same operation, other element type");
        assert!(crossed_ops(
            OpLabel::broadcast_root(0).wire(DType::U8),
            OpLabel::broadcast_root(1).wire(DType::U8)
        ));
        // One operation's own messages cross all the time (a pairwise
        // exchange), pieces with more to follow and last ones alike.
        assert!(!crossed_ops(ar, ar));
        let ar_more = OpLabel::ALL_REDUCE_SUM.more_follow().wire(DType::F32);
        assert!(!crossed_ops(ar_more, ar));
        assert!(crossed_ops(ar_more, ag));
        // Unlabelled point-to-point traffic is never a suspect.
        assert!(!crossed_ops(DType::F32.code().into(), ag));
        assert!(!crossed_ops(ar, DType::F64.code().into()));
    }
}

//! Deadlines: an op past its deadline first reports whom it waited on and
//! waits (briefly) for the reports of the ranks that timed out with it,
//! then fails naming the rank the chain of waits ends at; its channel then
//! refuses this rank's later ops (the ranks are at different points of
//! that operation: `Poison::TimedOut`).

use std::time::Instant;

use tracing::warn;

use super::stall::{STALL_NOTICE, culprit};
use super::{Engine, Key, Stream, nic_text};
use crate::error::{Error, OpKind};
use crate::label::OpLabel;
use crate::protocol::Control;

impl Engine {
    /// Expires what is due at `now` (the time is an input, so that tests
    /// drive deadlines without waiting): an op past its deadline turns
    /// overdue and reports whom it waits on; one overdue for its stall
    /// notice fails. Also confirms the crossed-send suspects that are due.
    pub(super) fn expire_at(&mut self, now: Instant) {
        self.check_suspects(now);
        if self.earliest.is_none_or(|e| e > now) {
            return;
        }
        // Nothing is due before `earliest`, and it was passed: look at every
        // pending op (ops due, in the order of their due times), then set
        // the bound again from those still pending. An op turned overdue
        // with no notice (a zero timeout) is due again at once: the next
        // pass fails it.
        loop {
            let mut due: Vec<(Instant, Stream, u64, OpKind, Key)> = self
                .sends
                .iter()
                .map(|(k, p)| (OpKind::Send, k, p))
                .chain(self.recvs.iter().map(|(k, p)| (OpKind::Recv, k, p)))
                .filter(|(_, _, p)| p.due <= now)
                .map(|(kind, k, p)| (p.due, (k.0, k.1), p.index, kind, *k))
                .collect();
            if due.is_empty() {
                break;
            }
            due.sort_unstable_by_key(|d| (d.0, d.1, d.2));
            for (_, stream, _, kind, key) in due {
                self.expire_op(now, stream, kind, key);
            }
        }
        self.earliest = self
            .sends
            .values()
            .chain(self.recvs.values())
            .map(|p| p.due)
            .min();
    }

    /// One op whose due time passed: it turns overdue, or (overdue) fails.
    fn expire_op(&mut self, now: Instant, stream: Stream, kind: OpKind, key: Key) {
        let map = if kind == OpKind::Send {
            &mut self.sends
        } else {
            &mut self.recvs
        };
        if kind == OpKind::Send
            && let Some(r) = self.router.as_mut()
        {
            r.forget((key.2, key.0, key.1, key.3), now);
        }
        // First the op turns overdue: this rank tells every peer whom it
        // waits on and gives their reports STALL_NOTICE to arrive (a
        // late message still completes it meanwhile); then it fails,
        // naming the rank the chain of waits ends at.
        if let Some(p) = map.get_mut(&key)
            && !p.overdue
            && p.desc().peer != self.rank
        {
            p.overdue = true;
            let (peer, comm) = (p.desc().peer, p.desc().comm);
            let notice = STALL_NOTICE.min(p.slot.timeout / 10);
            p.due = now + notice;
            self.report_waiting(peer, comm);
            return;
        }
        if let Some(p) = map.remove(&key) {
            if kind == OpKind::Send {
                // A rendezvous send gives its (possibly lent) data up, and
                // a charged one its window (an answer that comes later is
                // ignored; a receiver out of step drops the message).
                self.held.remove(&key);
                if p.charged > 0 {
                    self.credit.on_returned(p.desc().peer, p.charged);
                }
            }
            let nic = nic_text(if p.desc().peer == self.rank {
                None
            } else {
                self.transport.path(p.desc().peer)
            });
            let stalled = culprit(p.desc().peer, &self.waits);
            // A send whose peer's own send to this rank waits here
            // unreceived: the two wait in sends to each other.
            let crossed = kind == OpKind::Send
                && p.desc().peer != self.rank
                && self
                    .unexpected
                    .keys()
                    .any(|k| (k.0, k.1, k.2) == (p.desc().comm, p.desc().channel, p.desc().peer));
            let why = if crossed {
                format!(
                    "rank {} and this rank wait in sends to each other",
                    p.desc().peer
                )
            } else {
                format!("rank {stalled} stalled")
            };
            warn!(rank = self.rank, "{} timed out ({why})", p.desc());
            // Messages of another operation waiting on this channel mean
            // the ranks run different collectives.
            let mine = OpLabel::split(p.code).1.base();
            let other_op = self
                .unexpected
                .iter()
                .filter(|(k, _)| k.0 == p.desc().comm && k.1 == p.desc().channel)
                .map(|(k, (code, _))| (k.2, OpLabel::split(*code).1.base()))
                .find(|&(_, l)| l != mine);
            let first = p.desc().clone();
            let e = Error::Timeout {
                op: p.desc().clone(),
                after: p.slot.timeout,
                nic,
                culprit: (p.desc().peer != self.rank).then_some(stalled),
                other_op,
                mine,
                crossed,
            };
            self.finish(stream, p.index, p.slot, Err(e));
            // The stream's ranks are out of step now: this rank issues
            // nothing more on it (Poison::TimedOut).
            self.out_of_step(stream, first);
        }
    }

    /// An op due at `when` is pending.
    pub(super) fn note_due(&mut self, when: Instant) {
        self.earliest = Some(self.earliest.map_or(when, |e| e.min(when)));
    }

    /// Tells every other rank that this one timed out waiting on `on`.
    pub(super) fn report_waiting(&mut self, on: u32, comm: u32) {
        if !self.reported.insert(on) {
            return;
        }
        self.tell_everyone(comm, Control::Waiting { on });
    }
}

//! The per-rank progress engine: the state that matches sends with receives
//! and completes handles, behind one lock, and a task on the communicator's
//! tokio runtime that serves transport events, deadlines and the router.
//!
//! * User threads issue their ops themselves, under the lock: a send to a
//!   shared-memory peer is written into the ring by the calling thread, no
//!   wake-up of the task in between. A thread that waits on a handle first
//!   spins briefly, polling the transports for messages that already
//!   arrived ([`Engine::poll_with`]) and matching them itself; only then does it
//!   sleep. Everything else (TCP frames, large messages, peer failures,
//!   deadlines) reaches the engine through its task.
//! * Flow control ([`crate::flow`]): while the receiver's window for this
//!   rank has room (`ZCCL_MAX_UNEXPECTED_BYTES`), the data goes out at once,
//!   whether or not the receiver posted its receive; past it, only a request
//!   to send goes, and the data follows the receiver's clear-to-send, so a
//!   receiver never buffers more than the window per sender. The receiver
//!   keeps early messages keyed by `(communicator, channel, source, seq)`
//!   until the matching receive is posted. The communicator context id keeps
//!   communicators that share this engine (a world communicator and those
//!   split from it) apart. Hence a batch completes whatever the order of its
//!   ops on each rank.
//! * A small message (plain point-to-point, or of a collective or primitive
//!   other than broadcast) is eager: its send completes once the transport
//!   has it, unacknowledged (the receiver returns the window's credit in
//!   batches). Any other receive that matches answers the sender with an
//!   ack (or a mismatch nack carrying its size and type), and its send
//!   completes on that answer. A mismatch at any receive is reported to
//!   every rank ([`Control::Disagree`]): the channel fails on all of them,
//!   which is how an eager sender learns of it.
//! * Ops of one channel of one communicator complete, as seen by handles, in
//!   issue order.
//! * Every op has a deadline; expired ops fail with a timeout error.
//! * A peer lost, stuck or aborted fails every pending and future op with an
//!   error naming that peer; the engine then aborts its transport, telling
//!   the other peers which rank failed.

// The code: this file holds the state, issuing, matching and the task;
// `deadline` expires ops (with the stall reports), `failure` handles peers
// gone and aborts, `disagreement` (pure) what a channel fails with when
// ranks run different operations, `stall` (pure) whom a chain of waits
// blames. Flow control's decisions are `crate::flow`. `tests` drives the
// engine without sockets: a recording transport, messages handed between
// engines by the test, transport events and the clock as inputs.

use std::collections::VecDeque;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use zccl_transports::landing::Zone;
use zccl_transports::{
    BoxFuture, Message, MessageKind, PeerPath, Transport, TransportError, TransportEvent,
};

use crate::buffer::DType;
use crate::completion::{Outcome, Slot};
use crate::error::{Error, OpDesc, OpKind};
use crate::flow::{self, Protocol, eager_label};
use crate::ids::ROUTE_COMM;
use crate::label::OpLabel;
use crate::protocol::Control;
use crate::router::{Action, Router};

/// One op handed to the engine: the op itself (its descriptor, deadline
/// and timeout are the slot's) and what only issuing it needs.
pub(crate) struct OpSpec {
    pub(crate) slot: Arc<Slot>,
    pub(crate) payload: Option<Bytes>,
    /// Position of the op among the ops of its channel.
    pub(crate) index: u64,
    /// The payload borrows the user's memory ([`crate::lend`]): it goes to
    /// the transport's `send_lent`, or is copied where it would be read
    /// later in this process (a send to itself, the router's chunks).
    pub(crate) lent: bool,
    /// A receive into the user's memory that posted a zone
    /// ([`crate::land`]; a small one may post none and be copied in by its
    /// handle), or into the runtime's own buffer (`scratch`: a message that
    /// did not land there is not copied into it at the match,
    /// [`crate::zone::Scratch`]).
    pub(crate) zone: Option<Arc<Zone>>,
    /// `zone` is the runtime's own buffer.
    pub(crate) scratch: bool,
    /// The operation its messages belong to ([`crate::label`]).
    pub(crate) label: OpLabel,
}

/// Requests from user threads that need the engine's task (ops are issued
/// by the user threads themselves, under the engine's lock).
pub(crate) enum Cmd {
    Abort {
        reason: String,
        done: std::sync::mpsc::Sender<()>,
    },
    Shutdown {
        done: std::sync::mpsc::Sender<()>,
    },
}

mod deadline;
mod disagreement;
mod failure;
mod stall;
#[cfg(test)]
mod tests;

use disagreement::{CROSSED_GRACE, Disagreement, Poison, crossed_ops, side};

type Key = (u32, u32, u32, u64); // (comm, channel, peer, seq)
/// An ordered stream of ops: (comm, channel).
type Stream = (u32, u32);

/// Bits of an op's index below its completion lane (see [`lane_index`]).
const LANE_SHIFT: u32 = 40;

/// The completion lane of the ops of `kind` with `peer` (the peer's index
/// in its communicator) on a channel whose completions keep their order
/// per peer and direction only, not across the channel
/// ([`Channel::peerwise`](crate::communicator::Channel::peerwise)): one
/// for each peer and direction, never lane 0 (the channel's own order).
///
/// ```text
/// lane = 1 + 2 * peer + (1 if a receive), in 24 bits
/// ```
///
/// Peers from 2^23 - 1 up share lanes with lower ones: the lane's ops are
/// numbered by one counter whatever their peer ([`lane_index`]), so they
/// then complete in their common issue order, never out of it.
pub(crate) fn lane_of(peer: u32, kind: OpKind) -> u32 {
    let lane = (1 + 2 * u64::from(peer) + u64::from(kind == OpKind::Recv)) & ((1 << 24) - 1);
    lane.max(1) as u32
}

/// The index of the `n`th op issued in completion lane `lane` ([`lane_of`];
/// `n` counts the lane's ops alone, from 0, with no gap: the engine
/// completes a lane's ops in the order of these numbers): the lane above
/// [`LANE_SHIFT`], `n` below.
pub(crate) fn lane_index(lane: u32, n: u64) -> u64 {
    (u64::from(lane) << LANE_SHIFT) | (n & ((1 << LANE_SHIFT) - 1))
}

/// How long a failing engine lets its goodbyes drain before failing handles.
const CLOSE_NOTICE: Duration = Duration::from_millis(500);

/// The task wakes at least this often to look at deadlines.
const IDLE_TICK: Duration = Duration::from_millis(100);

struct PendingOp {
    /// The op (its descriptor, deadline and timeout) and its completion.
    slot: Arc<Slot>,
    index: u64,
    /// A receive's destination in the user's memory ([`crate::land`]).
    zone: Option<Arc<Zone>>,
    /// The zone is the runtime's own ([`OpSpec::scratch`]).
    scratch: bool,
    /// The header type byte its message carries or must carry: element
    /// type and operation label ([`OpLabel::wire`]).
    code: u16,
    /// Its deadline passed and the engine waits [`STALL_NOTICE`](stall::STALL_NOTICE) for the
    /// reports of other ranks that timed out too before failing it.
    overdue: bool,
    /// When the engine looks at it next: its deadline, then (overdue) the
    /// end of its stall notice.
    due: Instant,
    /// A send's bytes charged to the peer's flow-control window, returned
    /// by its acknowledgement ([`crate::flow`]).
    charged: u64,
}

impl PendingOp {
    /// The op's descriptor.
    fn desc(&self) -> &OpDesc {
        &self.slot.desc
    }
}

#[derive(Default)]
struct ChannelOrder {
    next: u64,
    /// Outcomes held back for earlier ops: entry `i` is op `next + i`'s
    /// (the common out-of-order case, a receive posted before a send that
    /// completes at once, costs no map).
    ready: VecDeque<Option<(Arc<Slot>, Outcome)>>,
}

#[derive(Clone)]
struct Failure {
    /// `None`: aborted locally.
    failed_rank: Option<u32>,
    reason: String,
    nic: String,
}

pub(crate) struct Engine {
    rank: u32,
    transport: Arc<dyn Transport>,
    sends: HashMap<Key, PendingOp>,
    recvs: HashMap<Key, PendingOp>,
    /// Messages that arrived before their receive: type byte, payload.
    unexpected: HashMap<Key, (u16, Bytes)>,
    /// Requests to send whose receive is not posted yet ([`crate::flow`]).
    rts: HashSet<Key>,
    /// Rendezvous sends waiting for their clear-to-send: the message and
    /// whether its payload is lent.
    held: HashMap<Key, (Message, bool)>,
    /// This rank's credit with each peer it sends to.
    credit: flow::Credit,
    /// The eager credit this rank owes each peer it receives from.
    owed: flow::Owed,
    /// The last eager send to each peer on each stream (type byte, seq):
    /// completed at once, it is no longer in `sends`, but the check for
    /// crossed sends of different operations still needs it.
    last_eager: HashMap<(u32, u32, u32), (u16, u64, u64)>,
    /// No pending op is due before this (`None`: none pending). Kept as a
    /// bound, not a map: an op that completes leaves it as it is, and the
    /// next look finds nothing due and tightens it ([`Engine::expire_at`]),
    /// so issuing and completing an op cost no map of deadlines.
    earliest: Option<Instant>,
    /// Completion order of each stream's lanes ([`lane_index`]; lane 0:
    /// the whole channel's).
    order: HashMap<(Stream, u64), ChannelOrder>,
    failure: Option<Failure>,
    closed_peers: HashSet<u32>,
    local: VecDeque<Message>,
    /// The NIC-aware router (sends to other hosts, proxying, reassembly).
    router: Option<Router>,
    /// Number of ranks (world), for reports to every peer.
    world: u32,
    /// What other ranks reported they timed out waiting on (rank → rank).
    waits: HashMap<u32, u32>,
    /// The ranks this one reported waiting on.
    reported: HashSet<u32>,
    /// Streams on which ranks were found to disagree: their ops fail.
    poisoned: HashMap<Stream, Poison>,
    /// Crossed sends of different operations, confirmed after
    /// [`CROSSED_GRACE`]: (when, the peer's unexpected message, our send).
    suspects: Vec<(Instant, Key, Key)>,
}

/// The error of an op whose transport is closed.
fn transport_closed(d: &OpDesc) -> Error {
    Error::Aborted {
        op: Some(d.clone()),
        reason: "transport closed".into(),
    }
}

/// A control message of communicator `comm` carrying `payload` (an
/// encoded [`Control`]).
fn control_payload(comm: u32, payload: Bytes) -> Message {
    Message {
        kind: MessageKind::Control,
        dtype: 0,
        comm,
        channel: 0,
        seq: 0,
        payload,
    }
}

/// A control message to `peer`'s engine about communicator `comm`.
fn control_msg(comm: u32, c: Control) -> Message {
    control_payload(comm, Bytes::from(c.encode()))
}

fn nic_text(p: Option<PeerPath>) -> String {
    p.map(|p| p.to_string()).unwrap_or_else(|| "local".into())
}

impl Engine {
    pub(crate) fn new(
        rank: u32,
        world: u32,
        transport: Arc<dyn Transport>,
        router: Option<Router>,
        window: u64,
    ) -> Self {
        Self {
            rts: HashSet::default(),
            held: HashMap::default(),
            credit: flow::Credit::new(window),
            owed: flow::Owed::new(window),
            last_eager: HashMap::default(),
            rank,
            world,
            waits: HashMap::default(),
            reported: HashSet::default(),
            poisoned: HashMap::default(),
            suspects: Vec::new(),
            transport,
            sends: HashMap::default(),
            recvs: HashMap::default(),
            unexpected: HashMap::default(),
            earliest: None,
            order: HashMap::default(),
            failure: None,
            closed_peers: HashSet::default(),
            local: VecDeque::new(),
            router,
        }
    }

    /// Delivers the messages this rank sent itself.
    pub(crate) fn drain_local(&mut self) {
        while let Some(msg) = self.local.pop_front() {
            self.on_message(self.rank, msg);
        }
    }

    /// Issues ops from a user thread (the caller holds the engine's lock).
    pub(crate) fn issue_all(&mut self, ops: impl IntoIterator<Item = OpSpec>) {
        for op in ops {
            self.issue(op);
        }
        self.drain_local();
    }

    /// Progress a waiting user thread can make without sleeping: messages
    /// the transports already hold complete (shared-memory rings) are
    /// matched here, on the waiting thread, instead of waking the reader
    /// thread and the engine's task. Returns how many were taken.
    /// `transport` is the engine's own, which the waiting thread holds a
    /// reference to (no clone of the engine's per poll).
    pub(crate) fn poll_with(&mut self, transport: &dyn Transport) -> usize {
        let n = transport.poll(64, &mut |peer, msg| self.on_message(peer, msg));
        self.drain_local();
        n
    }

    /// The hook through which the transports' own threads hand messages to
    /// the engine directly ([`zccl_transports::Transport::set_deliver`]):
    /// when the engine's lock is free, the message is matched on the
    /// calling thread (no wake-up of the engine's task); otherwise it is
    /// handed back for the event channel.
    pub(crate) fn deliver_hook(engine: &EngineRef) -> zccl_transports::Deliver {
        let weak = Arc::downgrade(engine);
        Arc::new(move |peer, msg| {
            let Some(engine) = weak.upgrade() else {
                return Err(msg);
            };
            let Ok(mut g) = engine.try_lock() else {
                return Err(msg);
            };
            g.on_message(peer, msg);
            g.drain_local();
            Ok(())
        })
    }

    /// When the task must wake up next: the earliest deadline, the router's
    /// next tick, and at least every [`IDLE_TICK`] (user threads add ops,
    /// hence deadlines, without waking the task).
    fn next_wake(&self) -> Instant {
        let mut t = Instant::now() + IDLE_TICK;
        if let Some(d) = self.earliest {
            t = t.min(d);
        }
        if let Some(r) = self.router.as_ref() {
            t = t.min(r.next_tick());
        }
        if let Some(s) = self.suspects.iter().map(|s| s.0).min() {
            t = t.min(s);
        }
        t
    }

    /// Hands `msg` to the transport. `false` only when the transport itself
    /// is closed; a peer whose connection is going away
    /// ([`TransportError::PeerGone`]) counts as posted: its `PeerClosed`
    /// event follows and fails the op with the cause it carries (which may
    /// name another rank), or the op's deadline does.
    fn post(&mut self, peer: u32, msg: Message) -> bool {
        self.post_with(peer, msg, false)
    }

    /// [`Engine::post`], through the transport's `send_lent` when `lent`.
    fn post_with(&mut self, peer: u32, msg: Message, lent: bool) -> bool {
        if peer == self.rank {
            self.local.push_back(msg);
            return true;
        }
        let sent = if lent {
            self.transport.send_lent(peer, msg)
        } else {
            self.transport.send(peer, msg)
        };
        match sent {
            Ok(()) => true,
            Err(TransportError::PeerGone(_)) => {
                debug!(
                    rank = self.rank,
                    peer, "transport send: connection closing, awaiting its cause"
                );
                true
            }
            Err(e) => {
                debug!(rank = self.rank, peer, "transport send: {e}");
                false
            }
        }
    }

    /// Records an op's outcome and releases completions in channel order
    /// (in lane order on a peerwise channel, [`lane_index`]).
    fn finish(&mut self, stream: Stream, index: u64, slot: Arc<Slot>, outcome: Outcome) {
        let (lane, index) = (index >> LANE_SHIFT, index & ((1 << LANE_SHIFT) - 1));
        let ord = self.order.entry((stream, lane)).or_default();
        if index == ord.next && ord.ready.is_empty() {
            // In order, nothing held back (the common case): no map.
            slot.complete(outcome);
            ord.next += 1;
            return;
        }
        let Some(at) = index.checked_sub(ord.next) else {
            // Not issued on this stream after `next` (never happens): no
            // order to keep.
            return slot.complete(outcome);
        };
        let at = at as usize;
        if ord.ready.len() <= at {
            ord.ready.resize_with(at + 1, || None);
        }
        ord.ready[at] = Some((slot, outcome));
        while let Some(Some(_)) = ord.ready.front() {
            let (slot, outcome) = ord.ready.pop_front().flatten().expect("front is ready");
            slot.complete(outcome);
            ord.next += 1;
        }
        if ord.ready.is_empty() && ord.ready.capacity() > 64 {
            // After a burst of many outcomes held back: not kept at its peak.
            ord.ready.shrink_to_fit();
        }
    }

    fn failure_error(&self, f: &Failure, desc: &OpDesc) -> Error {
        match f.failed_rank {
            Some(r) => Error::PeerFailed {
                op: desc.clone(),
                failed_rank: r,
                reason: f.reason.clone(),
                nic: f.nic.clone(),
            },
            None => Error::Aborted {
                op: Some(desc.clone()),
                reason: f.reason.clone(),
            },
        }
    }

    /// Issues one op from a user thread (the caller holds the engine's
    /// lock, and calls [`Engine::drain_local`] after its last op).
    pub(crate) fn issue(&mut self, op: OpSpec) {
        let d = op.slot.desc.clone();
        let key = (d.comm, d.channel, d.peer, d.seq);
        let stream = (d.comm, d.channel);
        if let Some(f) = self.failure.clone() {
            let e = self.failure_error(&f, &d);
            return self.finish(stream, op.index, op.slot, Err(e));
        }
        if let Some(p) = self.poisoned.get(&stream).cloned() {
            let e = p.error(&d);
            return self.finish(stream, op.index, op.slot, Err(e));
        }
        let pending_code = op.label.wire(d.dtype);
        let due = op.slot.deadline;
        let pending = PendingOp {
            slot: op.slot,
            index: op.index,
            zone: op.zone,
            scratch: op.scratch,
            code: op.label.wire(d.dtype),
            overdue: false,
            due,
            charged: 0,
        };
        match d.kind {
            OpKind::Send => {
                if self.closed_peers.contains(&d.peer) {
                    return self.finish(
                        stream,
                        op.index,
                        pending.slot,
                        Err(Error::PeerClosed { op: d }),
                    );
                }
                if op.label != OpLabel::NONE && !self.unexpected.is_empty() {
                    let crossed = self
                        .unexpected
                        .iter()
                        .filter(|(k, (code, _))| {
                            k.0 == d.comm
                                && k.1 == d.channel
                                && k.2 == d.peer
                                && crossed_ops(*code, pending_code)
                        })
                        .map(|(k, _)| *k)
                        .min();
                    if let Some(m) = crossed {
                        // The clock only for a suspect (rare): a message
                        // waiting here is the common case of an exchange.
                        self.suspects.push((Instant::now() + CROSSED_GRACE, m, key));
                    }
                }
                let mut msg = Message {
                    kind: MessageKind::Data,
                    dtype: pending_code,
                    comm: d.comm,
                    channel: d.channel,
                    seq: d.seq,
                    payload: op.payload.unwrap_or_default(),
                };
                let routed = self.router.as_ref().is_some_and(|r| r.wants(d.peer));
                let lent = op.lent && !routed && d.peer != self.rank;
                if op.lent && !lent {
                    // Held past this call (delivered locally, or chunked
                    // and retransmitted by the router): copy it now.
                    msg.payload = zccl_transports::copy::to_bytes(&msg.payload);
                }
                let len = msg.payload.len() as u64;
                let mut pending = pending;
                match self
                    .credit
                    .choose(d.peer, len, routed, eager_label(pending_code))
                {
                    Protocol::Eager { .. } => {
                        // For the crossed-send check, which only concerns
                        // labelled operations.
                        if op.label != OpLabel::NONE {
                            self.last_eager
                                .insert((d.comm, d.channel, d.peer), (pending_code, d.seq, len));
                        }
                        // Complete once the transport has it: no
                        // acknowledgement comes (the receiver returns the
                        // credit in batches).
                        let outcome = if self.send_now(d.peer, msg, lent, routed) {
                            Ok(None)
                        } else {
                            Err(transport_closed(&d))
                        };
                        self.finish(stream, op.index, pending.slot, outcome);
                    }
                    protocol => {
                        // Pending until acknowledged; a rendezvous send
                        // posts only its request now, the data waits for
                        // the receive ([`Control::Cts`]).
                        if let Protocol::Immediate { charged } = protocol {
                            pending.charged = charged;
                        }
                        self.note_due(due);
                        self.sends.insert(key, pending);
                        let posted = if protocol == Protocol::Rendezvous {
                            self.held.insert(key, (msg, lent));
                            let rts = Control::Rts {
                                channel: d.channel,
                                seq: d.seq,
                                bytes: len,
                                dtype: pending_code,
                            };
                            self.post(d.peer, control_msg(d.comm, rts))
                        } else {
                            self.send_now(d.peer, msg, lent, routed)
                        };
                        if !posted && let Some(p) = self.take(OpKind::Send, key) {
                            self.finish(stream, p.index, p.slot, Err(transport_closed(&d)));
                        }
                    }
                }
            }
            OpKind::Recv => {
                if let Some((dtype, payload)) = self.unexpected.remove(&key) {
                    return self.matched(pending, dtype, payload);
                }
                if self.closed_peers.contains(&d.peer) {
                    return self.finish(
                        stream,
                        op.index,
                        pending.slot,
                        Err(Error::PeerClosed { op: d }),
                    );
                }
                self.note_due(due);
                self.recvs.insert(key, pending);
                if !self.rts.is_empty() && self.rts.remove(&key) {
                    self.clear_to_send(key);
                }
            }
        }
    }

    /// Hands a send's data to the router or the transport.
    fn send_now(&mut self, peer: u32, msg: Message, lent: bool, routed: bool) -> bool {
        if routed && let Some(r) = self.router.as_mut() {
            let acts = r.start_send(peer, msg, Instant::now());
            self.apply(acts);
            true
        } else {
            self.post_with(peer, msg, lent)
        }
    }

    /// The receive of `key` is posted and its sender asked to send: tell it
    /// to, returning the eager credit owed meanwhile.
    fn clear_to_send(&mut self, key: Key) {
        let (comm, channel, peer, seq) = key;
        let credit = self.owed.take(peer);
        let cts = Control::Cts {
            channel,
            seq,
            credit,
        };
        self.post(peer, control_msg(comm, cts));
    }

    /// Performs what the router decided.
    fn apply(&mut self, acts: Vec<Action>) {
        for a in acts {
            match a {
                Action::Send {
                    peer,
                    nic: Some(nic),
                    msg,
                } if peer != self.rank => {
                    if let Err(e) = self.transport.send_on(peer, &nic, msg) {
                        debug!(rank = self.rank, peer, %nic, "routed send: {e}");
                    }
                }
                Action::Send { peer, msg, .. } => {
                    self.post(peer, msg);
                }
                Action::Deliver { src, msg } => self.on_message(src, msg),
                Action::NicState { nic, up } => self.transport.set_nic_up(&nic, up),
            }
        }
    }

    /// Link watch and routed-send housekeeping.
    fn router_tick(&mut self) {
        let Some(r) = self.router.as_mut() else {
            return;
        };
        let links = zccl_transports::ifname::link_states(&r.local_nics())
            .ok()
            .map(|v| v.into_iter().map(|(up, _)| up).collect::<Vec<bool>>());
        let acts = r.tick(links.as_deref(), Instant::now());
        self.apply(acts);
    }

    fn take(&mut self, kind: OpKind, key: Key) -> Option<PendingOp> {
        let map = if kind == OpKind::Send {
            &mut self.sends
        } else {
            &mut self.recvs
        };
        let p = map.remove(&key)?;
        if kind == OpKind::Send {
            self.held.remove(&key);
        }
        Some(p)
    }

    /// A receive meets its message.
    fn matched(&mut self, recv: PendingOp, code: u16, payload: Bytes) {
        let d = recv.desc();
        let (send_dtype, send_op) = OpLabel::split(code);
        // A message a transport copied into the receive's zone arrives
        // empty (the zone holds its bytes, of the zone's exact length).
        let landed = recv.zone.as_ref().is_some_and(|z| z.landed());
        let sent_bytes = if landed {
            d.bytes
        } else {
            payload.len() as u64
        };
        let ok = code == recv.code && sent_bytes == d.bytes;
        if ok
            && !landed
            && !recv.scratch
            && let Some(z) = &recv.zone
            && !z.combines()
        {
            // Into the user's buffer now (a closed zone's owner no longer
            // wants the bytes). A combining zone's sink gets them from the
            // handle instead (`land`), off the engine's lock.
            z.fill_from(&payload);
        }
        // Routed: the peer is on another host and the router carries what
        // this rank and it exchange (decided alike on both sides; small
        // messages go straight on one NIC, not through the router's
        // reassembly, so how this one arrived does not tell).
        let routed = self.router.as_ref().is_some_and(|r| r.wants(d.peer));
        let acked = flow::acknowledged(sent_bytes, routed, eager_label(code));
        if !acked && let Some(credit) = self.owed.on_matched(d.peer, sent_bytes) {
            // The sender's eager messages are matched: its credit back.
            self.post(
                d.peer,
                control_msg(d.comm, Control::Credit { bytes: credit }),
            );
        }
        let control = if ok {
            Control::Ack {
                channel: d.channel,
                seq: d.seq,
            }
        } else {
            Control::Mismatch {
                channel: d.channel,
                seq: d.seq,
                recv_bytes: d.bytes,
                recv_dtype: recv.code,
            }
        };
        // An eager send completed without waiting: only a mismatch is
        // answered.
        if acked || !ok {
            self.post(d.peer, control_msg(d.comm, control));
        }
        let recv_op = OpLabel::split(recv.code).1;
        let outcome = if ok {
            Ok(Some(payload))
        } else {
            Err(Error::Mismatch {
                op: d.clone(),
                send_bytes: sent_bytes,
                send_dtype: send_dtype.unwrap_or(DType::U8),
                send_op,
                recv_bytes: d.bytes,
                recv_dtype: d.dtype,
                recv_op,
            })
        };
        let stream = (recv.desc().comm, recv.desc().channel);
        // A mismatch concerns every rank of the channel, not only these
        // two (and an eager sender learns it only so): tell them all.
        let poison = (!ok).then(|| Disagreement {
            reported_by: self.rank,
            crossed: false,
            seq: d.seq,
            a: side(d.peer, code, sent_bytes),
            b: side(self.rank, recv.code, d.bytes),
        });
        self.finish(stream, recv.index, recv.slot, outcome);
        if let Some(p) = poison {
            self.disagree(stream, p);
        }
    }

    /// A message from `peer` that no receive will take (its channel
    /// failed) is dropped: an eager one's window credit goes back to the
    /// sender as if it had been matched (an acknowledged one's sender
    /// returns its own charge when its send fails).
    fn drop_unmatched(&mut self, peer: u32, comm: u32, code: u16, len: u64) {
        let routed = self.router.as_ref().is_some_and(|r| r.wants(peer));
        if !flow::acknowledged(len, routed, eager_label(code))
            && let Some(credit) = self.owed.on_matched(peer, len)
        {
            self.post(peer, control_msg(comm, Control::Credit { bytes: credit }));
        }
    }

    /// Ranks disagree on `stream`: its pending ops fail, and so will its
    /// later ones; found here, every other rank is told.
    fn disagree(&mut self, stream: Stream, p: Disagreement) {
        // (A stream out of step after a timeout still fails its pending
        // ops on a disagreement.)
        if matches!(self.poisoned.get(&stream), Some(Poison::Disagree(_))) {
            return;
        }
        warn!(
            rank = self.rank,
            comm = stream.0,
            channel = stream.1,
            "ranks disagree on the channel: {} / {} (found by rank {})",
            p.a,
            p.b,
            p.reported_by
        );
        self.poison(stream, Poison::Disagree(p));
        if p.reported_by == self.rank {
            self.report_disagreement(stream, &p);
        }
    }

    /// An op of `stream` timed out (`first`): the stream's later ops fail
    /// as they are issued ([`Poison::TimedOut`]), so that this rank sends
    /// nothing more on it; its pending ops go on (they were numbered
    /// before, and fail by their own deadlines or complete), and messages
    /// that no receive takes are dropped.
    fn out_of_step(&mut self, stream: Stream, first: OpDesc) {
        if self.poisoned.contains_key(&stream) {
            return;
        }
        warn!(
            rank = self.rank,
            comm = stream.0,
            channel = stream.1,
            "channel out of step after {first} timed out: this rank's later operations on it fail"
        );
        self.poisoned.insert(stream, Poison::TimedOut { first });
        self.drop_unexpected(stream);
    }

    /// This rank gave up an operation on `stream` midway (an error in its
    /// caller's code): its pending ops of the stream fail and its later ones
    /// will ([`Poison::GaveUp`]), and every other rank is told
    /// ([`Control::GaveUp`]), so that theirs fail too instead of taking
    /// this rank's next operation's messages for the missing ones.
    ///
    /// `members` are the communicator's ranks (world ranks): only they are
    /// told, since the communicators `split` makes of one share its id
    /// (`GaveUp` sent to every rank failed the channel of the other colour
    /// too).
    pub(crate) fn abandon(&mut self, stream: Stream, members: &[u32]) {
        if self.gave_up_on(stream, self.rank) {
            let c = Control::GaveUp { channel: stream.1 };
            self.tell(members.iter().copied(), stream.0, c);
        }
    }

    /// Sends `c` to every other rank of the job (about communicator
    /// `comm`).
    fn tell_everyone(&mut self, comm: u32, c: Control) {
        self.tell(0..self.world, comm, c);
    }

    /// Sends `c` to the ranks of `peers` other than this one (about
    /// communicator `comm`).
    fn tell(&mut self, peers: impl IntoIterator<Item = u32>, comm: u32, c: Control) {
        let (payload, me) = (Bytes::from(c.encode()), self.rank);
        for peer in peers.into_iter().filter(|&q| q != me) {
            self.post(peer, control_payload(comm, payload.clone()));
        }
    }

    /// `rank` gave up an operation of `stream`: poisons it (unless ranks
    /// were found to disagree on it, or one gave up, before); whether it
    /// did.
    fn gave_up_on(&mut self, stream: Stream, rank: u32) -> bool {
        if matches!(
            self.poisoned.get(&stream),
            Some(Poison::Disagree(_) | Poison::GaveUp { .. })
        ) {
            return false;
        }
        warn!(
            rank = self.rank,
            comm = stream.0,
            channel = stream.1,
            "rank {rank} gave up an operation on the channel midway: its operations fail"
        );
        self.poison(stream, Poison::GaveUp { rank });
        true
    }

    /// Drops the messages of `stream` that wait for a receive.
    fn drop_unexpected(&mut self, stream: Stream) {
        let dropped: Vec<_> = self
            .unexpected
            .extract_if(|k, _| (k.0, k.1) == stream)
            .collect();
        for (k, (code, b)) in dropped {
            self.drop_unmatched(k.2, k.0, code, b.len() as u64);
        }
    }

    /// `stream` fails with `p`: its pending ops now, its later ones as
    /// they are issued; messages of it that come are dropped.
    fn poison(&mut self, stream: Stream, p: Poison) {
        self.poisoned.insert(stream, p.clone());
        self.suspects.retain(|s| (s.1.0, s.1.1) != stream);
        self.drop_unexpected(stream);
        let mut keys: Vec<(OpKind, Key)> = self
            .sends
            .keys()
            .filter(|k| (k.0, k.1) == stream)
            .map(|k| (OpKind::Send, *k))
            .chain(
                self.recvs
                    .keys()
                    .filter(|k| (k.0, k.1) == stream)
                    .map(|k| (OpKind::Recv, *k)),
            )
            .collect();
        keys.sort_by_key(|k| k.1.3);
        let mut failed = Vec::new();
        for (kind, key) in keys {
            if kind == OpKind::Send
                && let Some(r) = self.router.as_mut()
            {
                r.forget((key.2, key.0, key.1, key.3), Instant::now());
            }
            if let Some(op) = self.take(kind, key) {
                failed.push(op);
            }
        }
        failed.sort_by_key(|op| op.index);
        for op in failed {
            // A charged send the receiver will not acknowledge now (it
            // drops the message, or already matched it): its window back.
            if op.desc().kind == OpKind::Send && op.charged > 0 {
                self.credit.on_returned(op.desc().peer, op.charged);
            }
            let e = p.error(op.desc());
            self.finish(stream, op.index, op.slot, Err(e));
        }
    }

    /// Tells every other rank of a disagreement this rank found on `stream`.
    fn report_disagreement(&mut self, stream: Stream, p: &Disagreement) {
        let c = Control::Disagree {
            channel: stream.1,
            reporter: self.rank,
            crossed: p.crossed,
            seq: p.seq,
            a: (p.a.rank, p.a.op.wire(p.a.dtype), p.a.bytes),
            b: (p.b.rank, p.b.op.wire(p.b.dtype), p.b.bytes),
        };
        self.tell_everyone(stream.0, c);
    }

    /// Crossed sends still crossed after their grace: a disagreement.
    fn check_suspects(&mut self, now: Instant) {
        if self.suspects.iter().all(|s| s.0 > now) {
            return;
        }
        let (due, rest): (Vec<_>, Vec<_>) = self.suspects.drain(..).partition(|s| s.0 <= now);
        self.suspects = rest;
        for (_, m, k) in due {
            let Some((code, payload)) = self.unexpected.get(&m) else {
                continue;
            };
            let mine = match self.sends.get(&k) {
                Some(send) => Some((send.code, send.desc().bytes)),
                // An eager send completed at once: still crossed if it is
                // this rank's last one to the peer and this rank still
                // waits on the stream in an operation other than the
                // peer's (a rank that finished, or moved on to the peer's
                // operation, has no such receive).
                None => self
                    .last_eager
                    .get(&(k.0, k.1, k.2))
                    .filter(|&&(c, seq, _)| {
                        seq == k.3
                            && self.recvs.iter().any(|(rk, r)| {
                                (rk.0, rk.1) == (k.0, k.1) && r.code == c && crossed_ops(*code, c)
                            })
                    })
                    .map(|&(c, _, bytes)| (c, bytes)),
            };
            let Some((send_code, send_bytes)) = mine else {
                continue;
            };
            let p = Disagreement {
                reported_by: self.rank,
                crossed: true,
                seq: 0,
                a: side(m.2, *code, payload.len() as u64),
                b: side(self.rank, send_code, send_bytes),
            };
            self.disagree((m.0, m.1), p);
        }
    }

    fn on_message(&mut self, peer: u32, msg: Message) {
        if msg.comm == ROUTE_COMM {
            match self.router.as_mut() {
                Some(r) => {
                    let acts = r.on_message(peer, msg, Instant::now());
                    self.apply(acts);
                }
                None => warn!(
                    rank = self.rank,
                    peer,
                    "routed frame dropped: this rank has no router (its NIC list could not be built)"
                ),
            }
            return;
        }
        match msg.kind {
            MessageKind::Data => {
                let key = (msg.comm, msg.channel, peer, msg.seq);
                match self.take(OpKind::Recv, key) {
                    Some(recv) => self.matched(recv, msg.dtype, msg.payload),
                    None => {
                        if self.poisoned.contains_key(&(msg.comm, msg.channel)) {
                            // No op of that channel will take it.
                            let len = msg.payload.len() as u64;
                            self.drop_unmatched(peer, msg.comm, msg.dtype, len);
                            return;
                        }
                        if OpLabel::split(msg.dtype).1 != OpLabel::NONE {
                            let crossed = self
                                .sends
                                .iter()
                                .filter(|(k, s)| {
                                    k.0 == msg.comm
                                        && k.1 == msg.channel
                                        && k.2 == peer
                                        && crossed_ops(msg.dtype, s.code)
                                })
                                .map(|(k, _)| *k)
                                .min();
                            let crossed = crossed.or_else(|| {
                                let &(code, seq, _) =
                                    self.last_eager.get(&(msg.comm, msg.channel, peer))?;
                                crossed_ops(msg.dtype, code).then_some((
                                    msg.comm,
                                    msg.channel,
                                    peer,
                                    seq,
                                ))
                            });
                            if let Some(k) = crossed {
                                self.suspects.push((Instant::now() + CROSSED_GRACE, key, k));
                            }
                        }
                        if self
                            .unexpected
                            .insert(key, (msg.dtype, msg.payload))
                            .is_some()
                        {
                            warn!(
                                rank = self.rank,
                                peer,
                                comm = msg.comm,
                                channel = msg.channel,
                                seq = msg.seq,
                                "duplicate message replaced"
                            );
                        }
                    }
                }
            }
            MessageKind::Control => match Control::decode(&msg.payload) {
                Some(Control::Ack { channel, seq }) => {
                    if let Some(r) = self.router.as_mut() {
                        r.forget((peer, msg.comm, channel, seq), Instant::now());
                    }
                    if let Some(s) = self.take(OpKind::Send, (msg.comm, channel, peer, seq)) {
                        self.credit.on_returned(peer, s.charged);
                        self.finish((msg.comm, channel), s.index, s.slot, Ok(None));
                    }
                }
                Some(Control::Mismatch {
                    channel,
                    seq,
                    recv_bytes,
                    recv_dtype,
                }) => {
                    if let Some(r) = self.router.as_mut() {
                        r.forget((peer, msg.comm, channel, seq), Instant::now());
                    }
                    let Some(s) = self.take(OpKind::Send, (msg.comm, channel, peer, seq)) else {
                        // An eager send, completed already: the receiver
                        // reports the disagreement to every rank
                        // (Control::Disagree), which fails this channel.
                        return;
                    };
                    self.credit.on_returned(peer, s.charged);
                    {
                        let (r_dtype, r_op) = OpLabel::split(recv_dtype);
                        let e = Error::Mismatch {
                            op: s.desc().clone(),
                            send_bytes: s.desc().bytes,
                            send_dtype: s.desc().dtype,
                            send_op: OpLabel::split(s.code).1,
                            recv_bytes,
                            recv_dtype: r_dtype.unwrap_or(DType::U8),
                            recv_op: r_op,
                        };
                        self.finish((msg.comm, channel), s.index, s.slot, Err(e));
                    }
                }
                Some(Control::Waiting { on }) => {
                    self.waits.insert(peer, on);
                }
                Some(Control::Rts { channel, seq, .. }) => {
                    let key = (msg.comm, channel, peer, seq);
                    if self.recvs.contains_key(&key) {
                        self.clear_to_send(key);
                    } else {
                        self.rts.insert(key);
                    }
                }
                Some(Control::Cts {
                    channel,
                    seq,
                    credit,
                }) => {
                    self.credit.on_returned(peer, credit);
                    let key = (msg.comm, channel, peer, seq);
                    if let Some((m, lent)) = self.held.remove(&key) {
                        let routed = self.router.as_ref().is_some_and(|r| r.wants(peer));
                        let len = m.payload.len() as u64;
                        let eager = eager_label(m.dtype);
                        self.credit.on_cleared(peer, len, routed, eager);
                        let sent = self.send_now(peer, m, lent, routed);
                        if (!sent || !flow::acknowledged(len, routed, eager))
                            && let Some(s) = self.take(OpKind::Send, key)
                        {
                            let outcome = if sent {
                                Ok(None)
                            } else {
                                Err(transport_closed(s.desc()))
                            };
                            self.finish((msg.comm, channel), s.index, s.slot, outcome);
                        }
                    }
                }
                Some(Control::Credit { bytes }) => self.credit.on_returned(peer, bytes),
                Some(Control::Disagree {
                    channel,
                    reporter,
                    crossed,
                    seq,
                    a,
                    b,
                }) => {
                    let p = Disagreement {
                        reported_by: reporter,
                        crossed,
                        seq,
                        a: side(a.0, a.1, a.2),
                        b: side(b.0, b.1, b.2),
                    };
                    self.disagree((msg.comm, channel), p);
                }
                Some(Control::GaveUp { channel }) => {
                    self.gave_up_on((msg.comm, channel), peer);
                }
                None => warn!(rank = self.rank, peer, "malformed control message ignored"),
            },
        }
    }
}

/// The engine's lock, shared by its task and the user threads.
pub(crate) type EngineRef = Arc<Mutex<Engine>>;

/// Locks the engine; a panic while it was held leaves it usable (every
/// handle has a deadline anyway).
pub(crate) fn lock(e: &EngineRef) -> MutexGuard<'_, Engine> {
    e.lock().unwrap_or_else(|p| p.into_inner())
}

/// The engine's task: serves transport events, deadlines, the router's
/// ticks, aborts and shutdown.
pub(crate) async fn run(
    engine: EngineRef,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    mut events: mpsc::UnboundedReceiver<TransportEvent>,
) {
    let mut events_open = true;
    loop {
        let wake = lock(&engine).next_wake();
        tokio::select! {
            biased;
            c = cmds.recv() => match c {
                None => {
                    shutdown(&engine, "communicator dropped").await;
                    return;
                }
                Some(Cmd::Shutdown { done }) => {
                    shutdown(&engine, "communicator dropped").await;
                    let _ = done.send(());
                    return;
                }
                Some(Cmd::Abort { reason, done }) => {
                    let close = lock(&engine).abort(reason);
                    fail_after_close(&engine, close).await;
                    let _ = done.send(());
                }
            },
            e = events.recv(), if events_open => match e {
                Some(first) => {
                    // Take every event already queued under one lock.
                    let mut closing = Vec::new();
                    {
                        let mut g = lock(&engine);
                        let mut next = Some(first);
                        while let Some(ev) = next {
                            match ev {
                                TransportEvent::Message { peer, msg } => g.on_message(peer, msg),
                                TransportEvent::PeerClosed { peer, reason, path } => {
                                    if let Some(c) = g.on_peer_closed(peer, reason, path) {
                                        closing.push(c);
                                    }
                                }
                            }
                            next = events.try_recv().ok();
                        }
                        g.drain_local();
                    }
                    for c in closing {
                        fail_after_close(&engine, Some(c)).await;
                    }
                }
                None => events_open = false,
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                let mut g = lock(&engine);
                g.expire_at(Instant::now());
                if g.router.as_ref().is_some_and(|r| r.next_tick() <= Instant::now()) {
                    g.router_tick();
                }
                g.drain_local();
            }
        }
    }
}

/// Waits (bounded) for the goodbyes naming the failure to leave, then fails
/// every handle.
async fn fail_after_close(engine: &EngineRef, c: Option<(Failure, BoxFuture)>) {
    if let Some((failure, close)) = c {
        let _ = tokio::time::timeout(CLOSE_NOTICE, close).await;
        lock(engine).fail_all(failure);
    }
}

async fn shutdown(engine: &EngineRef, reason: &str) {
    let close = lock(engine).shutdown(reason);
    if let Some(close) = close {
        let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Whatever path ends the engine (including a panic), no handle waits forever.
        let reason = "progress engine stopped".to_string();
        for (_, p) in self.sends.drain().chain(self.recvs.drain()) {
            p.slot.complete(Err(Error::Aborted {
                op: Some(p.desc().clone()),
                reason: reason.clone(),
            }));
        }
        for (_, ord) in self.order.drain() {
            for (slot, outcome) in ord.ready.into_iter().flatten() {
                slot.complete(outcome);
            }
        }
    }
}

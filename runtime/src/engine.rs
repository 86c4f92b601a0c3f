//! The per-rank progress engine: one task on the communicator's tokio runtime
//! that owns the transport, matches sends with receives and completes handles.
//!
//! * Sends are eager: the data goes out at once, whether or not the receiver
//!   posted its receive. The receiver keeps early messages keyed by
//!   `(communicator, channel, source, seq)` until the matching receive is
//!   posted. The communicator context id keeps communicators that share this
//!   engine (a world communicator and those split from it) apart. Hence a
//!   batch completes whatever the order of its ops on each rank.
//! * A receive that matches answers the sender with an ack (or a mismatch
//!   nack carrying its size and type); a send completes on that answer.
//! * Ops of one channel of one communicator complete, as seen by handles, in
//!   issue order.
//! * Every op has a deadline; expired ops fail with a timeout error.
//! * A peer lost, stuck or aborted fails every pending and future op with an
//!   error naming that peer; the engine then aborts its transport, telling
//!   the other peers which rank failed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use zccl_transports::{
    CloseReason, GoodbyeReason, Message, MessageKind, PeerPath, Transport, TransportError,
    TransportEvent,
};

use crate::buffer::DType;
use crate::error::{Error, OpDesc, OpKind};
use crate::handle::{Outcome, Slot};
use crate::protocol::Control;
use crate::router::wire::ROUTE_COMM;
use crate::router::{Action, Router};

/// One op handed to the engine.
pub(crate) struct OpSpec {
    pub(crate) desc: OpDesc,
    pub(crate) payload: Option<Bytes>,
    pub(crate) deadline: Instant,
    pub(crate) timeout: Duration,
    pub(crate) slot: Arc<Slot>,
    /// Position of the op among the ops of its channel.
    pub(crate) index: u64,
}

/// Requests from user threads.
pub(crate) enum Cmd {
    Issue(Vec<OpSpec>),
    Abort {
        reason: String,
        done: std::sync::mpsc::Sender<()>,
    },
    Shutdown {
        done: std::sync::mpsc::Sender<()>,
    },
}

type Key = (u32, u32, u32, u64); // (comm, channel, peer, seq)
/// An ordered stream of ops: (comm, channel).
type Stream = (u32, u32);

/// How long a failing engine lets its goodbyes drain before failing handles.
const CLOSE_NOTICE: Duration = Duration::from_millis(500);

struct PendingOp {
    desc: OpDesc,
    slot: Arc<Slot>,
    index: u64,
    deadline: Instant,
    timeout: Duration,
}

#[derive(Default)]
struct ChannelOrder {
    next: u64,
    ready: BTreeMap<u64, (Arc<Slot>, Outcome)>,
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
    unexpected: HashMap<Key, (u8, Bytes)>,
    deadlines: BTreeMap<(Instant, Stream, u64), (OpKind, Key)>,
    order: HashMap<Stream, ChannelOrder>,
    failure: Option<Failure>,
    closed_peers: HashSet<u32>,
    local: VecDeque<Message>,
    /// The NIC-aware router (sends to other hosts, proxying, reassembly).
    router: Option<Router>,
}

fn nic_text(p: Option<PeerPath>) -> String {
    p.map(|p| p.to_string()).unwrap_or_else(|| "local".into())
}

impl Engine {
    pub(crate) fn new(rank: u32, transport: Arc<dyn Transport>, router: Option<Router>) -> Self {
        Self {
            rank,
            transport,
            sends: HashMap::new(),
            recvs: HashMap::new(),
            unexpected: HashMap::new(),
            deadlines: BTreeMap::new(),
            order: HashMap::new(),
            failure: None,
            closed_peers: HashSet::new(),
            local: VecDeque::new(),
            router,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        mut events: mpsc::UnboundedReceiver<TransportEvent>,
    ) {
        let mut events_open = true;
        loop {
            let next = self.deadlines.keys().next().map(|k| k.0);
            let sleep = async move {
                match next {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let tick_at = self.router.as_ref().map(Router::next_tick);
            let tick = async move {
                match tick_at {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                c = cmds.recv() => match c {
                    None => {
                        self.shutdown("communicator dropped").await;
                        return;
                    }
                    Some(Cmd::Shutdown { done }) => {
                        self.shutdown("communicator dropped").await;
                        let _ = done.send(());
                        return;
                    }
                    Some(Cmd::Abort { reason, done }) => {
                        self.abort(reason).await;
                        let _ = done.send(());
                    }
                    Some(Cmd::Issue(ops)) => {
                        for op in ops {
                            self.issue(op);
                        }
                    }
                },
                e = events.recv(), if events_open => match e {
                    Some(TransportEvent::Message { peer, msg }) => self.on_message(peer, msg),
                    Some(TransportEvent::PeerClosed { peer, reason, path }) => self.on_peer_closed(peer, reason, path).await,
                    None => events_open = false,
                },
                _ = sleep => self.expire(),
                _ = tick => self.router_tick(),
            }
            while let Some(msg) = self.local.pop_front() {
                self.on_message(self.rank, msg);
            }
        }
    }

    /// Hands `msg` to the transport. `false` only when the transport itself
    /// is closed; a peer whose connection is going away
    /// ([`TransportError::PeerGone`]) counts as posted: its `PeerClosed`
    /// event follows and fails the op with the cause it carries (which may
    /// name another rank), or the op's deadline does.
    fn post(&mut self, peer: u32, msg: Message) -> bool {
        if peer == self.rank {
            self.local.push_back(msg);
            return true;
        }
        match self.transport.send(peer, msg) {
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

    /// Records an op's outcome and releases completions in channel order.
    fn finish(&mut self, stream: Stream, index: u64, slot: Arc<Slot>, outcome: Outcome) {
        let ord = self.order.entry(stream).or_default();
        ord.ready.insert(index, (slot, outcome));
        while let Some((slot, outcome)) = ord.ready.remove(&ord.next) {
            slot.complete(outcome);
            ord.next += 1;
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

    fn issue(&mut self, op: OpSpec) {
        let d = op.desc.clone();
        let key = (d.comm, d.channel, d.peer, d.seq);
        let stream = (d.comm, d.channel);
        if let Some(f) = self.failure.clone() {
            let e = self.failure_error(&f, &d);
            return self.finish(stream, op.index, op.slot, Err(e));
        }
        let pending = PendingOp {
            desc: d.clone(),
            slot: op.slot,
            index: op.index,
            deadline: op.deadline,
            timeout: op.timeout,
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
                self.deadlines
                    .insert((op.deadline, stream, op.index), (OpKind::Send, key));
                self.sends.insert(key, pending);
                let msg = Message {
                    kind: MessageKind::Data,
                    dtype: d.dtype.code(),
                    comm: d.comm,
                    channel: d.channel,
                    seq: d.seq,
                    payload: op.payload.unwrap_or_default(),
                };
                if let Some(r) = self.router.as_mut()
                    && r.wants(d.peer)
                {
                    let acts = r.start_send(d.peer, msg, Instant::now());
                    self.apply(acts);
                } else if !self.post(d.peer, msg)
                    && let Some(p) = self.take(OpKind::Send, key)
                {
                    let e = Error::Aborted {
                        op: Some(d.clone()),
                        reason: "transport closed".into(),
                    };
                    self.finish(stream, p.index, p.slot, Err(e));
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
                self.deadlines
                    .insert((op.deadline, stream, op.index), (OpKind::Recv, key));
                self.recvs.insert(key, pending);
            }
        }
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
        self.deadlines
            .remove(&(p.deadline, (p.desc.comm, p.desc.channel), p.index));
        Some(p)
    }

    /// A receive meets its message.
    fn matched(&mut self, recv: PendingOp, dtype: u8, payload: Bytes) {
        let d = &recv.desc;
        let send_dtype = DType::from_code(dtype);
        let ok = send_dtype == Some(d.dtype) && payload.len() as u64 == d.bytes;
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
                recv_dtype: d.dtype.code(),
            }
        };
        let reply = Message {
            kind: MessageKind::Control,
            dtype: 0,
            comm: d.comm,
            channel: 0,
            seq: 0,
            payload: Bytes::from(control.encode()),
        };
        self.post(d.peer, reply);
        let outcome = if ok {
            Ok(Some(payload))
        } else {
            Err(Error::Mismatch {
                op: d.clone(),
                send_bytes: payload.len() as u64,
                send_dtype: send_dtype.unwrap_or(DType::U8),
                recv_bytes: d.bytes,
                recv_dtype: d.dtype,
            })
        };
        self.finish(
            (recv.desc.comm, recv.desc.channel),
            recv.index,
            recv.slot,
            outcome,
        );
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
                    if let Some(s) = self.take(OpKind::Send, (msg.comm, channel, peer, seq)) {
                        let e = Error::Mismatch {
                            op: s.desc.clone(),
                            send_bytes: s.desc.bytes,
                            send_dtype: s.desc.dtype,
                            recv_bytes,
                            recv_dtype: DType::from_code(recv_dtype).unwrap_or(DType::U8),
                        };
                        self.finish((msg.comm, channel), s.index, s.slot, Err(e));
                    }
                }
                None => warn!(rank = self.rank, peer, "malformed control message ignored"),
            },
        }
    }

    async fn on_peer_closed(&mut self, peer: u32, reason: CloseReason, nic: Option<PeerPath>) {
        let nic = nic_text(nic);
        let failure = match reason {
            CloseReason::Clean => {
                self.closed_peers.insert(peer);
                let keys: Vec<(OpKind, Key)> = self
                    .sends
                    .keys()
                    .filter(|k| k.2 == peer)
                    .map(|k| (OpKind::Send, *k))
                    .chain(
                        self.recvs
                            .keys()
                            .filter(|k| k.2 == peer)
                            .map(|k| (OpKind::Recv, *k)),
                    )
                    .collect();
                for (kind, key) in keys {
                    if let Some(p) = self.take(kind, key) {
                        let e = Error::PeerClosed { op: p.desc.clone() };
                        self.finish((p.desc.comm, p.desc.channel), p.index, p.slot, Err(e));
                    }
                }
                return;
            }
            CloseReason::Aborted {
                cause_rank,
                message,
            } => {
                let failed = cause_rank.unwrap_or(peer);
                let reason = if failed == peer {
                    format!("aborted ({message})")
                } else {
                    format!("failed, as reported by rank {peer}: {message}")
                };
                Failure {
                    failed_rank: Some(failed),
                    reason,
                    nic,
                }
            }
            other => Failure {
                failed_rank: Some(peer),
                reason: other.to_string(),
                nic,
            },
        };
        if self.failure.is_none() {
            warn!(rank = self.rank, failed_rank = ?failure.failed_rank, "communicator failed: rank {:?} {}", failure.failed_rank, failure.reason);
            let msg = format!(
                "rank {} {} (seen by rank {} on {})",
                failure.failed_rank.unwrap_or(peer),
                failure.reason,
                self.rank,
                failure.nic
            );
            // Tell the other peers which rank failed before the handles fail:
            // a process that exits on the error must not leave them a bare EOF.
            self.failure = Some(failure.clone());
            let close = self.transport.close(GoodbyeReason::Abort {
                cause_rank: failure.failed_rank,
                message: msg,
            });
            let _ = tokio::time::timeout(CLOSE_NOTICE, close).await;
            self.fail_all(failure);
        }
    }

    fn fail_all(&mut self, f: Failure) {
        self.failure = Some(f.clone());
        if let Some(r) = self.router.as_mut() {
            r.clear();
        }
        let mut all: Vec<PendingOp> = self
            .sends
            .drain()
            .map(|(_, p)| p)
            .chain(self.recvs.drain().map(|(_, p)| p))
            .collect();
        all.sort_by_key(|p| (p.desc.comm, p.desc.channel, p.index));
        self.deadlines.clear();
        for p in all {
            let e = self.failure_error(&f, &p.desc);
            self.finish((p.desc.comm, p.desc.channel), p.index, p.slot, Err(e));
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        while let Some((&(when, stream, idx), &(kind, key))) = self.deadlines.iter().next() {
            if when > now {
                break;
            }
            self.deadlines.remove(&(when, stream, idx));
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
            if let Some(p) = map.remove(&key) {
                let nic = nic_text(if p.desc.peer == self.rank {
                    None
                } else {
                    self.transport.path(p.desc.peer)
                });
                warn!(rank = self.rank, "{} timed out", p.desc);
                let e = Error::Timeout {
                    op: p.desc.clone(),
                    after: p.timeout,
                    nic,
                };
                self.finish(stream, p.index, p.slot, Err(e));
            }
        }
    }

    async fn abort(&mut self, reason: String) {
        if self.failure.is_some() {
            return;
        }
        let failure = Failure {
            failed_rank: None,
            reason: reason.clone(),
            nic: String::new(),
        };
        self.failure = Some(failure.clone());
        let close = self.transport.close(GoodbyeReason::Abort {
            cause_rank: Some(self.rank),
            message: format!("rank {} aborted its communicator: {reason}", self.rank),
        });
        let _ = tokio::time::timeout(CLOSE_NOTICE, close).await;
        self.fail_all(failure);
    }

    async fn shutdown(&mut self, reason: &str) {
        let clean = self.failure.is_none();
        if clean {
            self.fail_all(Failure {
                failed_rank: None,
                reason: reason.into(),
                nic: String::new(),
            });
            let close = self.transport.close(GoodbyeReason::Clean);
            let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Whatever path ends the engine (including a panic), no handle waits forever.
        let reason = "progress engine stopped".to_string();
        for (_, p) in self.sends.drain().chain(self.recvs.drain()) {
            p.slot.complete(Err(Error::Aborted {
                op: Some(p.desc),
                reason: reason.clone(),
            }));
        }
        for (_, ord) in self.order.drain() {
            for (_, (slot, outcome)) in ord.ready {
                slot.complete(outcome);
            }
        }
    }
}

//! The engine driven without sockets: each rank's engine talks to a
//! [`Wire`] that only records what it was asked to send; the tests hand
//! those messages to the peers' engines themselves (in order, reordered or
//! not at all), pass transport events in, and set the clock for deadlines
//! ([`Engine::expire_at`]). Inputs are issued ops, arrived messages,
//! transport events and the time; what the tests look at is what the
//! engine sent and how every handle's slot completed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use zccl_transports::{
    BoxFuture, CloseReason, GoodbyeReason, Message, MessageKind, PeerPath, Transport,
    TransportError,
};

use super::*;

/// A transport that records what the engine sends, and how it was closed.
#[derive(Default)]
struct Wire {
    out: Mutex<Vec<(u32, Message)>>,
    closed: Mutex<Option<GoodbyeReason>>,
}

impl Transport for Wire {
    fn name(&self) -> &'static str {
        "wire"
    }
    fn send(&self, peer: u32, msg: Message) -> Result<(), TransportError> {
        if self.closed.lock().unwrap().is_some() {
            return Err(TransportError::Closed);
        }
        self.out.lock().unwrap().push((peer, msg));
        Ok(())
    }
    fn path(&self, _peer: u32) -> Option<PeerPath> {
        None
    }
    fn close(&self, reason: GoodbyeReason) -> BoxFuture {
        *self.closed.lock().unwrap() = Some(reason);
        Box::pin(async {})
    }
}

/// `n` engines and their wires; rank `r`'s ops get their sequence numbers
/// and channel indices as the communicator assigns them.
struct Net {
    engines: Vec<Engine>,
    wires: Vec<Arc<Wire>>,
    seq: HashMap<(u32, bool, u32, u32), u64>,
    index: HashMap<(u32, u32), u64>,
    timeout: Duration,
    t0: Instant,
}

/// One op as a user issues it.
struct Op {
    kind: OpKind,
    peer: u32,
    channel: u32,
    bytes: u64,
    label: OpLabel,
    payload: Option<Bytes>,
    dtype: DType,
}

impl Op {
    /// The same op over elements of `dtype`.
    fn of(self, dtype: DType) -> Self {
        Op { dtype, ..self }
    }
}

fn send(peer: u32, payload: &[u8], label: OpLabel) -> Op {
    Op {
        kind: OpKind::Send,
        peer,
        channel: 0,
        bytes: payload.len() as u64,
        label,
        payload: Some(Bytes::copy_from_slice(payload)),
        dtype: DType::U8,
    }
}

fn recv(peer: u32, bytes: u64, label: OpLabel) -> Op {
    Op {
        kind: OpKind::Recv,
        peer,
        channel: 0,
        bytes,
        label,
        payload: None,
        dtype: DType::U8,
    }
}

/// How a slot completed (`None`: not yet).
fn outcome(s: &Slot) -> Option<Outcome> {
    if !s.is_done() {
        return None;
    }
    s.wait_until(Instant::now())
}

fn data(o: Option<Outcome>) -> Vec<u8> {
    match o {
        Some(Ok(Some(b))) => b.to_vec(),
        other => panic!("expected data, got {other:?}"),
    }
}

fn failed(o: Option<Outcome>) -> Error {
    match o {
        Some(Err(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

impl Net {
    fn new(n: u32, window: u64) -> Self {
        let wires: Vec<Arc<Wire>> = (0..n).map(|_| Arc::new(Wire::default())).collect();
        let engines = (0..n)
            .map(|r| Engine::new(r, n, wires[r as usize].clone(), None, window))
            .collect();
        Net {
            engines,
            wires,
            seq: HashMap::default(),
            index: HashMap::default(),
            timeout: Duration::from_secs(1),
            t0: Instant::now(),
        }
    }

    /// Issues `ops` on `rank` as one batch; returns their slots.
    fn issue(&mut self, rank: u32, ops: Vec<Op>) -> Vec<Arc<Slot>> {
        let mut specs = Vec::new();
        let mut slots = Vec::new();
        for op in ops {
            let seq = self
                .seq
                .entry((rank, op.kind == OpKind::Send, op.peer, op.channel))
                .or_insert(0);
            let index = self.index.entry((rank, op.channel)).or_insert(0);
            let desc = OpDesc {
                rank,
                kind: op.kind,
                peer: op.peer,
                comm: 0,
                channel: op.channel,
                seq: *seq,
                bytes: op.bytes,
                dtype: op.dtype,
            };
            let slot = Arc::new(Slot::new(
                desc,
                zccl_transports::clock::ticks(),
                (self.t0 + self.timeout, self.timeout),
                None,
            ));
            specs.push(OpSpec {
                slot: slot.clone(),
                payload: op.payload,
                index: *index,
                lent: false,
                zone: None,
                scratch: false,
                label: op.label,
            });
            *seq += 1;
            *index += 1;
            slots.push(slot);
        }
        self.engines[rank as usize].issue_all(specs);
        slots
    }

    /// Takes what `rank` sent so far.
    fn sent(&self, rank: u32) -> Vec<(u32, Message)> {
        std::mem::take(&mut *self.wires[rank as usize].out.lock().unwrap())
    }

    /// Hands `msg` from `from` to its destination's engine.
    fn deliver(&mut self, from: u32, to: u32, msg: Message) {
        let e = &mut self.engines[to as usize];
        e.on_message(from, msg);
        e.drain_local();
    }

    /// Delivers everything sent, in order, until nothing is left.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for from in 0..self.engines.len() as u32 {
                for (to, msg) in self.sent(from) {
                    moved = true;
                    self.deliver(from, to, msg);
                }
            }
            if !moved {
                return;
            }
        }
    }
}

fn controls(msgs: &[(u32, Message)]) -> Vec<Control> {
    msgs.iter()
        .filter(|(_, m)| m.kind == MessageKind::Control)
        .map(|(_, m)| Control::decode(&m.payload).expect("a valid control message"))
        .collect()
}

#[test]
fn eager_send_completes_at_issue_and_waits_at_the_receiver() {
    let mut net = Net::new(2, 1 << 20);
    let s = net.issue(0, vec![send(1, b"8 bytes!", OpLabel::ALL_REDUCE_SUM)]);
    // Complete before the receiver did anything: no acknowledgement round.
    assert!(matches!(outcome(&s[0]), Some(Ok(None))));
    let out = net.sent(0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.kind, MessageKind::Data);
    net.deliver(0, 1, out.into_iter().next().unwrap().1);
    assert_eq!(net.engines[1].unexpected.len(), 1);
    let r = net.issue(1, vec![recv(0, 8, OpLabel::ALL_REDUCE_SUM)]);
    assert_eq!(data(outcome(&r[0])), b"8 bytes!");
    assert!(net.engines[1].unexpected.is_empty());
    // An eager message is not answered (its credit comes back in batches).
    assert!(controls(&net.sent(1)).is_empty());
}

#[test]
fn a_small_plain_send_is_eager_a_large_one_completes_on_the_ack() {
    let mut net = Net::new(2, 1 << 20);
    // Small: complete once the transport has it, like a collective's.
    let s = net.issue(0, vec![send(1, b"p2p", OpLabel::NONE)]);
    assert!(matches!(outcome(&s[0]), Some(Ok(None))));
    net.pump();
    let r = net.issue(1, vec![recv(0, 3, OpLabel::NONE)]);
    assert_eq!(data(outcome(&r[0])), b"p2p");
    assert!(
        controls(&net.sent(1)).is_empty(),
        "an eager message is not answered"
    );
    // Past the eager size: pending until the receiver acknowledges it.
    let big = vec![5u8; flow::EAGER_MAX as usize + 1];
    let s = net.issue(0, vec![send(1, &big, OpLabel::NONE)]);
    net.pump();
    assert!(outcome(&s[0]).is_none(), "completed before its receive");
    let r = net.issue(1, vec![recv(0, big.len() as u64, OpLabel::NONE)]);
    assert_eq!(data(outcome(&r[0])), big);
    let acks = controls(&net.sent(1));
    assert!(
        matches!(acks[..], [Control::Ack { channel: 0, seq: 1 }]),
        "{acks:?}"
    );
    net.engines[0].on_message(1, control_msg(0, acks[0]));
    assert!(matches!(outcome(&s[0]), Some(Ok(None))));
}

#[test]
fn a_channels_ops_complete_in_issue_order_whatever_the_arrival_order() {
    let mut net = Net::new(2, 1 << 20);
    let r = net.issue(
        1,
        vec![recv(0, 1, OpLabel::NONE), recv(0, 1, OpLabel::NONE)],
    );
    net.issue(
        0,
        vec![send(1, b"a", OpLabel::NONE), send(1, b"b", OpLabel::NONE)],
    );
    let mut out = net.sent(0);
    assert_eq!(out.len(), 2);
    let (second, first) = (out.pop().unwrap().1, out.pop().unwrap().1);
    assert_eq!((first.seq, second.seq), (0, 1));
    // The second message arrives first: its receive matched, but its handle
    // waits for the first op of the channel.
    net.deliver(0, 1, second);
    assert!(outcome(&r[1]).is_none() && outcome(&r[0]).is_none());
    net.deliver(0, 1, first);
    assert_eq!(data(outcome(&r[0])), b"a");
    assert_eq!(data(outcome(&r[1])), b"b");
}

#[test]
fn past_the_window_only_a_request_goes_and_the_data_follows_the_receive() {
    let window = 1024;
    let mut net = Net::new(2, window);
    let (small, big) = (vec![1u8; 1000], vec![7u8; 4096]);
    // The first fills the window (unmatched, it may wait at the receiver);
    // the second would exceed it: only its request goes.
    let s = net.issue(
        0,
        vec![send(1, &small, OpLabel::NONE), send(1, &big, OpLabel::NONE)],
    );
    let out = net.sent(0);
    let kinds: Vec<MessageKind> = out.iter().map(|(_, m)| m.kind).collect();
    assert_eq!(kinds, [MessageKind::Data, MessageKind::Control]);
    assert!(matches!(
        controls(&out)[..],
        [Control::Rts {
            bytes: 4096,
            seq: 1,
            ..
        }]
    ));
    for (to, m) in out {
        net.deliver(0, to, m);
    }
    // The receiver holds the first message and a request, never more than
    // the window of bytes.
    let held: usize = net.engines[1]
        .unexpected
        .values()
        .map(|(_, b)| b.len())
        .sum();
    assert_eq!(held, 1000);
    assert!(held as u64 <= window);
    assert_eq!(net.engines[1].rts.len(), 1);
    let r = net.issue(
        1,
        vec![recv(0, 1000, OpLabel::NONE), recv(0, 4096, OpLabel::NONE)],
    );
    net.pump();
    assert_eq!(data(outcome(&r[0])), small);
    assert_eq!(data(outcome(&r[1])), big);
    assert!(s.iter().all(|s| matches!(outcome(s), Some(Ok(None)))));
    // Everything was acknowledged: the window is free again.
    assert_eq!(net.engines[0].credit.in_flight(1), 0);
}

#[test]
fn a_size_mismatch_fails_the_receive_and_the_channel_on_every_rank() {
    let big = flow::EAGER_MAX + 8;
    for (sent, expected) in [(16, 8), (big, big - 8)] {
        let mut net = Net::new(3, 1 << 20);
        let s = net.issue(0, vec![send(1, &vec![0; sent as usize], OpLabel::NONE)]);
        let r = net.issue(1, vec![recv(0, expected, OpLabel::NONE)]);
        // Rank 2 waits on rank 1 in the same channel.
        let r2 = net.issue(2, vec![recv(1, 4, OpLabel::NONE)]);
        net.pump();
        let both = |e: &Error| {
            let t = e.to_string();
            t.contains(&format!("{sent} B")) && t.contains(&format!("{expected} B"))
        };
        let e = failed(outcome(&r[0]));
        assert!(
            matches!(e, Error::Mismatch { send_bytes, recv_bytes, .. }
                if send_bytes == sent && recv_bytes == expected),
            "{e}"
        );
        // A small send completed when it went (eager); a large one waited
        // for the receiver's answer and fails with it.
        if sent <= flow::EAGER_MAX {
            assert!(matches!(outcome(&s[0]), Some(Ok(None))));
        } else {
            let e = failed(outcome(&s[0]));
            assert!(matches!(e, Error::Mismatch { .. }) && both(&e), "{e}");
        }
        let e = failed(outcome(&r2[0]));
        assert!(
            matches!(e, Error::Disagreement { reported_by: 1, .. }) && both(&e),
            "{e}"
        );
        // The channel is broken on every rank, the sender included, each
        // error naming both sizes; another channel still works.
        for rank in 0..3 {
            let later = net.issue(rank, vec![send((rank + 1) % 3, b"x", OpLabel::NONE)]);
            let e = failed(outcome(&later[0]));
            assert!(
                matches!(e, Error::Disagreement { .. }) && both(&e),
                "rank {rank}: {e}"
            );
        }
        let mut ok = send(1, b"fine", OpLabel::NONE);
        ok.channel = 1;
        net.issue(0, vec![ok]);
        let mut r = recv(0, 4, OpLabel::NONE);
        r.channel = 1;
        let r = net.issue(1, vec![r]);
        net.pump();
        assert_eq!(data(outcome(&r[0])), b"fine");
    }
}

#[test]
fn messages_dropped_by_a_failed_channel_give_their_window_back() {
    // A 4 KiB window: credit comes back in batches of 1 KiB.
    let mut net = Net::new(2, 4096);
    net.issue(
        0,
        vec![
            send(1, &[0; 16], OpLabel::NONE),
            send(1, &[1; 1000], OpLabel::NONE),
            send(1, &[2; 1000], OpLabel::NONE),
        ],
    );
    assert_eq!(net.engines[0].credit.in_flight(1), 2016);
    // The first mismatches: the channel fails, the other two are dropped
    // at the receiver, which still owes their credit.
    let r = net.issue(1, vec![recv(0, 8, OpLabel::NONE)]);
    net.pump();
    assert!(matches!(failed(outcome(&r[0])), Error::Mismatch { .. }));
    assert!(net.engines[1].unexpected.is_empty());
    assert_eq!(net.engines[0].credit.in_flight(1), 0);
    // A charged send still waiting for its acknowledgement when its
    // channel fails returns its own charge.
    let mut net = Net::new(2, 1 << 20);
    let big = vec![3u8; flow::EAGER_MAX as usize + 1];
    let s = net.issue(0, vec![send(1, &big, OpLabel::NONE)]);
    assert_eq!(net.engines[0].credit.in_flight(1), big.len() as u64);
    net.sent(0); // not delivered: the channel fails first (rank 1 reports)
    net.engines[0].on_message(
        1,
        control_msg(
            0,
            Control::Disagree {
                channel: 0,
                reporter: 1,
                crossed: false,
                seq: 5, // another message than this send's
                a: (0, 0, 1),
                b: (1, 0, 1),
            },
        ),
    );
    assert!(matches!(failed(outcome(&s[0])), Error::Disagreement { .. }));
    assert_eq!(net.engines[0].credit.in_flight(1), 0);
}

#[test]
fn a_send_waiting_for_its_answer_fails_with_the_mismatch_whichever_report_comes_first() {
    // The receiver answers the mismatched send (Control::Mismatch) and then
    // tells every rank (Control::Disagree); the transports may hand the
    // sender the two out of order. Either way the send fails with the
    // mismatch, naming both sizes, and the send behind it with the
    // channel's disagreement.
    let big = flow::EAGER_MAX + 8;
    for reversed in [false, true] {
        let mut net = Net::new(2, 1 << 20);
        let s = net.issue(
            0,
            vec![
                send(1, &vec![0; big as usize], OpLabel::NONE),
                send(1, &vec![0; big as usize], OpLabel::NONE),
            ],
        );
        let r = net.issue(1, vec![recv(0, big - 8, OpLabel::NONE)]);
        // Until rank 1 has answered (rendezvous or not, whatever the
        // window allowed), without losing rank 0's later messages.
        for _ in 0..4 {
            for (to, msg) in net.sent(0) {
                net.deliver(0, to, msg);
            }
            let mut answers = net.sent(1);
            let kinds = controls(&answers);
            if kinds.iter().any(|c| matches!(c, Control::Disagree { .. })) {
                assert!(
                    matches!(
                        kinds[..],
                        [
                            ..,
                            Control::Mismatch { seq: 0, .. },
                            Control::Disagree { seq: 0, .. }
                        ]
                    ),
                    "the answer goes ahead of the report"
                );
                if reversed {
                    answers.reverse();
                }
                for (to, msg) in answers {
                    net.deliver(1, to, msg);
                }
                break;
            }
            for (to, msg) in answers {
                net.deliver(1, to, msg);
            }
        }
        assert!(matches!(failed(outcome(&r[0])), Error::Mismatch { .. }));
        let e = failed(outcome(&s[0]));
        let text = e.to_string();
        assert!(
            matches!(e, Error::Mismatch { send_bytes, recv_bytes, .. }
                if send_bytes == big && recv_bytes == big - 8),
            "reversed {reversed}: {text}"
        );
        assert!(text.contains("send seq 0"), "{text}");
        assert!(
            matches!(failed(outcome(&s[1])), Error::Disagreement { .. }),
            "reversed {reversed}"
        );
    }
}

#[test]
fn types_that_move_as_bytes_still_tell_each_other_apart() {
    // int8 against uint8 and bool of the same size: the same bytes, three
    // readings. Each pair fails the receive naming both types, and then the
    // channel (the sender's next op there).
    for (sent, expected) in [
        (DType::I8, DType::U8),
        (DType::I8, DType::Bool),
        (DType::C64, DType::I64),
    ] {
        let mut net = Net::new(2, 1 << 20);
        let s = net.issue(0, vec![send(1, &[0; 16], OpLabel::ALL_GATHER).of(sent)]);
        let r = net.issue(1, vec![recv(0, 16, OpLabel::ALL_GATHER).of(expected)]);
        net.pump();
        let e = failed(outcome(&r[0]));
        let text = e.to_string();
        assert!(
            matches!(e, Error::Mismatch { send_dtype, recv_dtype, .. }
                if send_dtype == sent && recv_dtype == expected),
            "{text}"
        );
        let (a, b) = (format!("x {sent})"), format!("x {expected})"));
        assert!(text.contains(&a) && text.contains(&b), "{text}");
        // The sender learns it too (an eager send: through the channel's
        // disagreement, at its next op there).
        let later = net.issue(0, vec![send(1, &[0; 16], OpLabel::ALL_GATHER).of(sent)]);
        net.pump();
        assert!(outcome(&s[0]).is_some());
        assert!(
            matches!(
                failed(outcome(&later[0])),
                Error::Disagreement { .. } | Error::Mismatch { .. }
            ),
            "{sent} vs {expected}"
        );
    }
    // The same label-only type on both sides is delivered.
    let mut net = Net::new(2, 1 << 20);
    net.issue(
        0,
        vec![send(1, &[1, 2, 3, 4], OpLabel::NONE).of(DType::Bool)],
    );
    let r = net.issue(1, vec![recv(0, 4, OpLabel::NONE).of(DType::Bool)]);
    net.pump();
    assert_eq!(data(outcome(&r[0])), [1, 2, 3, 4]);
}

#[test]
fn a_collective_mismatch_reaches_every_rank_of_the_channel() {
    let mut net = Net::new(3, 1 << 20);
    // Rank 0 runs an all-gather where rank 1 runs an all-reduce; rank 2
    // waits on rank 1 in the same channel.
    net.issue(0, vec![send(1, &[0; 8], OpLabel::ALL_GATHER)]);
    let r1 = net.issue(1, vec![recv(0, 8, OpLabel::ALL_REDUCE_SUM)]);
    let r2 = net.issue(2, vec![recv(1, 8, OpLabel::ALL_REDUCE_SUM)]);
    net.pump();
    assert!(matches!(failed(outcome(&r1[0])), Error::Mismatch { .. }));
    match failed(outcome(&r2[0])) {
        Error::Disagreement { reported_by: 1, .. } => {}
        other => panic!("rank 2: {other}"),
    }
    // Later ops of that channel fail at once, on every rank.
    for rank in 0..3 {
        let peer = (rank + 1) % 3;
        let s = net.issue(rank, vec![recv(peer, 8, OpLabel::ALL_REDUCE_SUM)]);
        assert!(
            matches!(failed(outcome(&s[0])), Error::Disagreement { .. }),
            "rank {rank}"
        );
    }
}

#[test]
fn an_overdue_op_reports_its_wait_then_names_the_rank_that_stalled() {
    let mut net = Net::new(3, 1 << 20);
    // Rank 0 waits on rank 1, which itself reported waiting on rank 2.
    let r = net.issue(0, vec![recv(1, 4, OpLabel::NONE)]);
    net.deliver(1, 0, control_msg(0, Control::Waiting { on: 2 }));
    let deadline = net.t0 + net.timeout;
    net.engines[0].expire_at(deadline - Duration::from_millis(1));
    assert!(outcome(&r[0]).is_none() && net.sent(0).is_empty());
    // Past the deadline: overdue, and every other rank hears whom it waits on.
    net.engines[0].expire_at(deadline);
    assert!(outcome(&r[0]).is_none(), "failed before the stall notice");
    let reports = net.sent(0);
    let mut to: Vec<u32> = reports.iter().map(|(p, _)| *p).collect();
    to.sort();
    assert_eq!(to, [1, 2]);
    assert!(
        controls(&reports)
            .iter()
            .all(|c| matches!(c, Control::Waiting { on: 1 }))
    );
    // After the notice (a tenth of the timeout here) it fails, blaming the
    // end of the chain.
    net.engines[0].expire_at(deadline + net.timeout / 10);
    match failed(outcome(&r[0])) {
        Error::Timeout {
            culprit: Some(2),
            op,
            ..
        } => assert_eq!(op.peer, 1),
        other => panic!("{other}"),
    }
}

#[test]
fn a_failed_peer_fails_every_pending_and_later_op_naming_it() {
    let mut net = Net::new(3, 1 << 20);
    let pending = net.issue(
        0,
        // A send past the eager size: pending until acknowledged.
        vec![
            recv(1, 4, OpLabel::NONE),
            send(2, &[1; flow::EAGER_MAX as usize + 1], OpLabel::NONE),
        ],
    );
    let reason = CloseReason::Aborted {
        cause_rank: None,
        message: "killed".into(),
    };
    let (failure, _close) = net.engines[0]
        .on_peer_closed(1, reason, None)
        .expect("a failure");
    // The others are told which rank failed before any handle fails.
    match net.wires[0].closed.lock().unwrap().clone() {
        Some(GoodbyeReason::Abort {
            cause_rank: Some(1),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    net.engines[0].fail_all(failure);
    for s in &pending {
        match failed(outcome(s)) {
            Error::PeerFailed { failed_rank: 1, .. } => {}
            other => panic!("{other}"),
        }
    }
    let later = net.issue(0, vec![send(2, b"z", OpLabel::NONE)]);
    assert!(matches!(
        failed(outcome(&later[0])),
        Error::PeerFailed { failed_rank: 1, .. }
    ));
}

#[test]
fn a_clean_close_fails_only_that_peers_ops() {
    let mut net = Net::new(3, 1 << 20);
    let to1 = net.issue(0, vec![recv(1, 4, OpLabel::NONE)]);
    let to2 = net.issue(0, vec![recv(2, 4, OpLabel::NONE)]);
    assert!(
        net.engines[0]
            .on_peer_closed(1, CloseReason::Clean, None)
            .is_none()
    );
    assert!(matches!(failed(outcome(&to1[0])), Error::PeerClosed { .. }));
    assert!(outcome(&to2[0]).is_none());
    net.issue(2, vec![send(0, b"four", OpLabel::NONE)]);
    net.pump();
    assert_eq!(data(outcome(&to2[0])), b"four");
}

#[test]
fn abort_fails_pending_ops_and_tells_the_peers() {
    let mut net = Net::new(2, 1 << 20);
    let r = net.issue(0, vec![recv(1, 4, OpLabel::NONE)]);
    let (failure, _close) = net.engines[0].abort("user".into()).expect("first abort");
    assert!(net.engines[0].abort("again".into()).is_none());
    net.engines[0].fail_all(failure);
    match failed(outcome(&r[0])) {
        Error::Aborted { reason, .. } => assert_eq!(reason, "user"),
        other => panic!("{other}"),
    }
    match net.wires[0].closed.lock().unwrap().clone() {
        Some(GoodbyeReason::Abort {
            cause_rank: Some(0),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn timeouts_name_the_rank_that_stalled() {
    let op = OpDesc {
        rank: 0,
        kind: OpKind::Recv,
        peer: 3,
        comm: 0,
        channel: 0,
        seq: 0,
        bytes: 4,
        dtype: DType::F32,
    };
    let e = |culprit| Error::Timeout {
        op: op.clone(),
        after: Duration::from_secs(5),
        nic: "local".into(),
        culprit,
        other_op: None,
        mine: OpLabel::NONE,
        crossed: false,
    };
    assert!(
        e(Some(1))
            .to_string()
            .ends_with("rank 3 was itself waiting; rank 1 is the one that stalled"),
        "{}",
        e(Some(1))
    );
    assert!(e(Some(3)).to_string().ends_with(": rank 3 stalled"));
    assert!(e(None).to_string().ends_with("[local]"));
}

#[test]
fn outcomes_held_behind_a_pending_op_go_out_in_issue_order() {
    let mut net = Net::new(2, 1 << 20);
    let r = net.issue(1, (0..4).map(|_| recv(0, 1, OpLabel::NONE)).collect());
    net.issue(
        0,
        [b"a", b"b", b"c", b"d"]
            .into_iter()
            .map(|p| send(1, p, OpLabel::NONE))
            .collect(),
    );
    let mut out: Vec<Message> = net.sent(0).into_iter().map(|(_, m)| m).collect();
    let (d, c, b, a) = (
        out.pop().unwrap(),
        out.pop().unwrap(),
        out.pop().unwrap(),
        out.pop().unwrap(),
    );
    // The fourth, then the second arrive: both wait for the first.
    net.deliver(0, 1, d);
    net.deliver(0, 1, b);
    assert!(r.iter().all(|s| outcome(s).is_none()));
    // The first releases itself and the second; the fourth waits for the third.
    net.deliver(0, 1, a);
    assert_eq!(data(outcome(&r[0])), b"a");
    assert_eq!(data(outcome(&r[1])), b"b");
    assert!(outcome(&r[3]).is_none());
    net.deliver(0, 1, c);
    assert_eq!(data(outcome(&r[2])), b"c");
    assert_eq!(data(outcome(&r[3])), b"d");
}

#[test]
fn a_completed_ops_deadline_leaves_no_trace_and_later_ones_still_expire() {
    let mut net = Net::new(2, 1 << 20);
    let first = net.t0 + net.timeout;
    // One receive completes; the engine's bound still says `first`.
    let r = net.issue(1, vec![recv(0, 1, OpLabel::NONE)]);
    net.issue(0, vec![send(1, b"x", OpLabel::NONE)]);
    net.pump();
    assert_eq!(data(outcome(&r[0])), b"x");
    // A later receive, due three timeouts in.
    net.timeout *= 3;
    let later = net.t0 + net.timeout;
    let r = net.issue(1, vec![recv(0, 1, OpLabel::NONE)]);
    assert_eq!(net.engines[1].earliest, Some(first));
    // Past the first deadline nothing is due: no report, the bound moves on.
    net.engines[1].expire_at(first);
    assert!(outcome(&r[0]).is_none() && net.sent(1).is_empty());
    assert_eq!(net.engines[1].earliest, Some(later));
    // At its own deadline it turns overdue, then fails.
    net.engines[1].expire_at(later);
    assert!(outcome(&r[0]).is_none());
    assert!(matches!(
        controls(&net.sent(1))[..],
        [Control::Waiting { on: 0 }]
    ));
    net.engines[1].expire_at(later + net.timeout / 10);
    assert!(matches!(
        failed(outcome(&r[0])),
        Error::Timeout {
            culprit: Some(0),
            ..
        }
    ));
    assert_eq!(net.engines[1].earliest, None);
}

#[test]
fn two_ranks_that_each_send_before_they_receive_are_told_so_at_their_timeout() {
    let big = vec![7u8; (crate::flow::EAGER_MAX + 1) as usize];
    // Both send first: each send waits for a receive the other never posts.
    let mut net = Net::new(2, 1 << 20);
    let s0 = net.issue(0, vec![send(1, &big, OpLabel::NONE)]);
    let s1 = net.issue(1, vec![send(0, &big, OpLabel::NONE)]);
    net.pump();
    assert!(outcome(&s0[0]).is_none() && outcome(&s1[0]).is_none());
    let due = net.t0 + net.timeout;
    for e in &mut net.engines {
        e.expire_at(due);
    }
    net.pump();
    for e in &mut net.engines {
        e.expire_at(due + net.timeout / 10);
    }
    for (r, s) in [(0, &s0), (1, &s1)] {
        let e = failed(outcome(&s[0]));
        assert!(
            matches!(e, Error::Timeout { crossed: true, .. }),
            "rank {r}: {e}"
        );
        let text = e.to_string();
        assert!(text.contains("wait in sends to each other"), "{text}");
        assert!(!text.contains("stalled"), "{text}");
    }
    // A send whose peer posts nothing and sends nothing is not crossed.
    let mut net = Net::new(2, 1 << 20);
    let s0 = net.issue(0, vec![send(1, &big, OpLabel::NONE)]);
    net.pump();
    let due = net.t0 + net.timeout;
    net.engines[0].expire_at(due);
    net.pump();
    net.engines[0].expire_at(due + net.timeout / 10);
    let e = failed(outcome(&s0[0]));
    assert!(matches!(e, Error::Timeout { crossed: false, .. }), "{e}");
}

#[test]
fn each_peer_and_direction_of_a_peerwise_channel_has_a_lane_of_its_own() {
    let mut seen = std::collections::HashSet::new();
    for peer in [0u32, 1, 2, 1000, (1 << 22) + 5] {
        for kind in [OpKind::Send, OpKind::Recv] {
            let lane = lane_of(peer, kind);
            let i = lane_index(lane, 7);
            assert_eq!(i & ((1 << LANE_SHIFT) - 1), 7, "the lane's count below");
            assert_eq!(i >> LANE_SHIFT, u64::from(lane), "the lane above");
            assert!(lane >= 1, "lane 0 is the channel's own order");
            assert!(seen.insert(lane), "peer {peer} {kind:?} shares a lane");
        }
    }
    // Far peers share lanes, never lane 0, never overflowing.
    for peer in [1u32 << 23, u32::MAX] {
        let lane = lane_of(peer, OpKind::Recv);
        assert!((1..1 << 24).contains(&lane));
    }
}

#[test]
fn after_a_timeout_the_channel_refuses_later_ops_instead_of_sending_them_out_of_step() {
    // Rank 0's op 1 receives from rank 1 and would then send to it; rank 1
    // is late, and the receive times out, so op 1's send is never issued.
    let mut net = Net::new(2, 1 << 20);
    let label = OpLabel::ALL_REDUCE_SUM;
    let r0 = net.issue(0, vec![recv(1, 4, label)]);
    net.pump();
    let due = net.t0 + net.timeout;
    net.engines[0].expire_at(due);
    net.pump();
    net.engines[0].expire_at(due + net.timeout / 10);
    assert!(matches!(failed(outcome(&r0[0])), Error::Timeout { .. }));
    // Op 2 on the same channel: its send would have taken op 1's sequence
    // number, and rank 1's op 1 would have received op 2's bytes as its
    // own. It is refused, naming the op that timed out, and sends nothing.
    let s0 = net.issue(0, vec![send(1, &[9u8; 4], label)]);
    net.pump();
    let e = failed(outcome(&s0[0]));
    assert!(matches!(e, Error::OutOfStep { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("recv seq 0 from rank 1 on channel 0") && text.contains("out of step"),
        "{text}"
    );
    // Rank 1 runs op 1 late: its send reaches rank 0 (dropped there: no op
    // of that channel will take it), and its receive does not complete with
    // another operation's bytes.
    let r1 = net.issue(1, vec![send(0, &[1u8; 4], label), recv(0, 4, label)]);
    net.pump();
    assert!(outcome(&r1[1]).is_none(), "{:?}", outcome(&r1[1]));
    // Other channels of rank 0 are unaffected.
    let mut other = send(1, &[5u8; 4], label);
    other.channel = 3;
    let mut other_recv = recv(0, 4, label);
    other_recv.channel = 3;
    let s = net.issue(0, vec![other]);
    let r = net.issue(1, vec![other_recv]);
    net.pump();
    assert_eq!(data(outcome(&r[0])), vec![5u8; 4]);
    assert!(matches!(outcome(&s[0]), Some(Ok(_))));
}

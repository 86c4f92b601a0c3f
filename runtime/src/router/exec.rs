//! The router's executor: runs plans inside the progress engine.
//!
//! The engine hands it every send to another host, every routed frame that
//! arrives, the NICs' link state and the clock; it answers with
//! [`Action`]s the engine performs on the transports. It holds no socket
//! itself, so everything here runs in tests without a network.
//!
//! * **Sender.** [`Router::start_send`] plans the transfer
//!   ([`plan`]) with the live NIC state (link up or down,
//!   bytes this rank has in flight per NIC, throughput measured from
//!   acknowledgements). A direct plan sends the message whole on the
//!   sender's own NIC; a striped one becomes an [`Outgoing`] whose chunks are
//!   clocked onto the lanes by acknowledgement. Chunks of a proxied lane go
//!   to the proxy over shared memory.
//! * **Proxy.** A routed chunk for another rank is forwarded on the NIC its
//!   lane names, without the user's code taking part.
//! * **Receiver.** Chunks are reassembled ([`Reassembly`]), each one
//!   acknowledged to the sender on the rail it arrived on; the whole message
//!   then enters the engine's matching like any other, and the receive's
//!   ack completes the send.
//! * **Adaptation.** A NIC whose link goes down is taken out of running
//!   transfers (their chunks in flight on it are re-sent on the others) and
//!   of new plans, and the transport stops using it; a lane that stops
//!   acknowledging is taken out likewise; a NIC that comes back is used
//!   again. `ZCCL_DEBUG_SUBSYS=ROUTE` logs every plan and every change.
//!
//! `ZCCL_ROUTER` chooses what happens to sends to other hosts: `on` (the
//! default) routes them, `affinity` sends each one whole on the sender's
//! own NIC (static GPU-NIC affinity, the baseline), `off` leaves them to the
//! transport (striped over every NIC by the TCP transport). Every rank
//! serves as proxy and receiver whatever its own setting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};
use zccl_transports::metrics::Metrics;
use zccl_transports::{Message, MessageKind};

use super::cluster::RouteCluster;
use super::plan::{LiveState, NicId, Policy, Transfer, plan};
use super::receiver::{Arrival, Reassembly};
use super::sender::{LaneRun, Outgoing};
use super::wire::{ChunkAck, ChunkHeader, HEADER_LEN, ROUTE_COMM};
use crate::logging::ROUTE;

/// `ZCCL_ROUTER`: what happens to sends to other hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterMode {
    /// `on`: the router plans and stripes them (default).
    On,
    /// `affinity`: each leaves whole on the sender's own NIC.
    Affinity,
    /// `off`: the transport decides (TCP stripes over every NIC).
    Off,
}

impl RouterMode {
    /// Parses `ZCCL_ROUTER`.
    ///
    /// ```
    /// use zccl_runtime::router::RouterMode;
    /// assert_eq!(RouterMode::parse("affinity"), Ok(RouterMode::Affinity));
    /// assert_eq!(RouterMode::parse("1"), Ok(RouterMode::On));
    /// assert!(RouterMode::parse("sideways").is_err());
    /// ```
    pub fn parse(v: &str) -> Result<RouterMode, String> {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "on" | "1" | "route" => Ok(RouterMode::On),
            "affinity" | "static" => Ok(RouterMode::Affinity),
            "off" | "0" => Ok(RouterMode::Off),
            _ => Err(format!(
                "ZCCL_ROUTER={}: expected on, affinity or off",
                crate::envvars::shown(v)
            )),
        }
    }
}

/// What the engine should do.
#[derive(Debug)]
pub enum Action {
    /// Send `msg` to `peer`, on local NIC `nic` when given.
    Send {
        /// Transport-level destination.
        peer: u32,
        /// NIC to leave on.
        nic: Option<String>,
        /// The message.
        msg: Message,
    },
    /// A routed message is complete: hand it to matching as if `src` had
    /// sent it directly.
    Deliver {
        /// The original sender.
        src: u32,
        /// The message.
        msg: Message,
    },
    /// Tell the transport a local NIC went down or came back.
    NicState {
        /// Interface name.
        nic: String,
        /// Whether it is up.
        up: bool,
    },
}

/// Key of a routed send: `(dst, comm, channel, seq)`.
pub type SendKey = (u32, u32, u32, u64);

struct Active {
    out: Outgoing,
    payload: Bytes,
    dst: u32,
    comm: u32,
    channel: u32,
    seq: u64,
    dtype: u16,
    started: Instant,
}

/// The interface name of NIC `id`.
fn nic_name(c: &super::plan::Cluster, id: NicId) -> Option<&str> {
    c.hosts.get(id.host)?.get(id.index).map(|n| n.name.as_str())
}

/// The router of one rank.
pub struct Router {
    me: u32,
    mode: RouterMode,
    rc: RouteCluster,
    policy: Policy,
    live: LiveState,
    my_host: usize,
    active: HashMap<SendKey, Active>,
    reasm: Reassembly,
    next_seq: u64,
    /// Link state of this host's NICs as last seen.
    links: Vec<bool>,
    last_poll: Option<Instant>,
    /// Measured rate by NIC, bytes/s.
    measured: HashMap<NicId, f64>,
}

/// How often the engine polls link state while routed sends are active,
/// and while idle.
pub const POLL_ACTIVE: Duration = Duration::from_millis(20);
/// See [`POLL_ACTIVE`].
pub const POLL_IDLE: Duration = Duration::from_millis(500);

impl Router {
    /// The router of rank `me`.
    pub fn new(
        me: u32,
        mode: RouterMode,
        rc: RouteCluster,
        policy: Policy,
        max_message: u64,
    ) -> Router {
        let my_host = rc.cluster.rank_host[me as usize];
        let nics = rc.cluster.hosts[my_host].len();
        Router {
            me,
            mode,
            rc,
            policy,
            live: LiveState::default(),
            my_host,
            active: HashMap::new(),
            reasm: Reassembly::new(max_message),
            next_seq: 0,
            links: vec![true; nics],
            last_poll: None,
            measured: HashMap::new(),
        }
    }

    /// Its mode.
    pub fn mode(&self) -> RouterMode {
        self.mode
    }

    /// The interface names of this host's NICs (what to poll).
    pub fn local_nics(&self) -> Vec<String> {
        self.rc.cluster.hosts[self.my_host]
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    fn nic_name(&self, id: NicId) -> Option<&str> {
        nic_name(&self.rc.cluster, id)
    }

    fn own_nic(&self) -> NicId {
        NicId {
            host: self.my_host,
            index: self.rc.cluster.rank_nic[self.me as usize],
        }
    }

    /// Whether a send to `dst` is the router's business.
    pub fn wants(&self, dst: u32) -> bool {
        self.mode != RouterMode::Off
            && (dst as usize) < self.rc.cluster.rank_host.len()
            && self.rc.cluster.rank_host[dst as usize] != self.my_host
    }

    /// Routed sends in progress.
    pub fn busy(&self) -> bool {
        !self.active.is_empty()
    }

    /// When the engine should next call [`Router::tick`].
    pub fn next_tick(&self) -> Instant {
        let every = if self.busy() { POLL_ACTIVE } else { POLL_IDLE };
        self.last_poll.map_or_else(Instant::now, |t| t + every)
    }

    fn rate_of(&self, id: NicId) -> f64 {
        if let Some(&m) = self.measured.get(&id) {
            return m;
        }
        self.rc.cluster.hosts[id.host][id.index].rate_gbps * 1e9 / 8.0
    }

    fn live_state(&self) -> LiveState {
        let mut live = self.live.clone();
        for a in self.active.values() {
            for (nic, b) in a.out.backlog() {
                live.nics.entry(nic).or_default().backlog_bytes += b;
            }
        }
        for (&nic, &rate) in &self.measured {
            live.nics.entry(nic).or_default().measured_gbps = Some(rate * 8.0 / 1e9);
        }
        live
    }

    /// A send to another host: `msg` is the whole message for `dst`.
    pub fn start_send(&mut self, dst: u32, msg: Message, now: Instant) -> Vec<Action> {
        let own = self.own_nic();
        let own_name = self.nic_name(own).map(String::from);
        if self.mode == RouterMode::Affinity {
            return vec![Action::Send {
                peer: dst,
                nic: own_name,
                msg,
            }];
        }
        let t = Transfer {
            src: self.me,
            dst,
            bytes: msg.payload.len() as u64,
        };
        let p = match plan(&t, &self.rc.cluster, &self.live_state(), &self.policy) {
            Ok(p) => p,
            Err(e) => {
                warn!(target: ROUTE, rank = self.me, "route r{}->r{dst}: {e}; leaving it to the transport", self.me);
                return vec![Action::Send {
                    peer: dst,
                    nic: None,
                    msg,
                }];
            }
        };
        if p.lanes.len() == 1 && p.lanes[0].src_proxy.is_none() {
            // Direct on one NIC: every small message takes this path, so
            // it is logged at DEBUG (the striped plans at INFO).
            debug!(target: ROUTE, rank = self.me, "{}", p.reason);
            let nic = self.nic_name(p.lanes[0].src_nic).map(String::from);
            if let Some(n) = &nic {
                Metrics::global().route_chunk(n, false);
            }
            return vec![Action::Send {
                peer: dst,
                nic,
                msg,
            }];
        }
        info!(target: ROUTE, rank = self.me, "{}", p.reason);
        let lanes = p
            .lanes
            .iter()
            .map(|l| {
                let rate = self.rate_of(l.src_nic).min(self.rate_of(l.dst_nic));
                LaneRun::new(l.src_nic, l.dst_nic, l.src_proxy, rate)
            })
            .collect();
        let chunks = p.chunks.iter().map(|c| (c.offset, c.len)).collect();
        let key = (dst, msg.comm, msg.channel, msg.seq);
        self.active.insert(
            key,
            Active {
                out: Outgoing::new(chunks, lanes),
                payload: msg.payload,
                dst,
                comm: msg.comm,
                channel: msg.channel,
                seq: msg.seq,
                dtype: msg.dtype,
                started: now,
            },
        );
        self.dispatch(key, now)
    }

    fn dispatch(&mut self, key: SendKey, now: Instant) -> Vec<Action> {
        let Some(a) = self.active.get_mut(&key) else {
            return Vec::new();
        };
        let ds = a.out.dispatch(now);
        let nchunks = a.out.chunks.len() as u32;
        let mut acts = Vec::with_capacity(ds.len());
        for d in ds {
            let (off, len) = a.out.chunks[d.chunk];
            let lane = &a.out.lanes[d.lane];
            let h = ChunkHeader {
                src: self.me,
                dst: a.dst,
                src_nic: lane.src_nic.index as u16,
                dst_nic: lane.dst_nic.index as u16,
                lane: d.lane as u16,
                comm: a.comm,
                channel: a.channel,
                seq: a.seq,
                dtype: a.dtype,
                total_len: a.payload.len() as u64,
                offset: off,
                chunks: nchunks,
                index: d.chunk as u32,
            };
            let mut buf = Vec::with_capacity(HEADER_LEN + len as usize);
            buf.extend_from_slice(&h.encode());
            zccl_transports::copy::extend(&mut buf, &a.payload[off as usize..(off + len) as usize]);
            self.next_seq += 1;
            let msg = Message {
                kind: MessageKind::Data,
                dtype: 0,
                comm: ROUTE_COMM,
                channel: 0,
                seq: self.next_seq,
                payload: buf.into(),
            };
            let src_name = nic_name(&self.rc.cluster, lane.src_nic)
                .unwrap_or("?")
                .to_string();
            Metrics::global().route_chunk(&src_name, lane.proxy.is_some());
            acts.push(match lane.proxy {
                Some(p) => Action::Send {
                    peer: p,
                    nic: None,
                    msg,
                },
                None => Action::Send {
                    peer: a.dst,
                    nic: Some(src_name),
                    msg,
                },
            });
        }
        acts
    }

    /// A frame of the router's communicator arrived from `from`.
    pub fn on_message(&mut self, from: u32, msg: Message, now: Instant) -> Vec<Action> {
        match msg.kind {
            MessageKind::Data => self.on_chunk(from, msg),
            MessageKind::Control => match ChunkAck::decode(&msg.payload) {
                Some(ack) => self.on_ack(from, ack, now),
                None => {
                    warn!(target: ROUTE, rank = self.me, from, "malformed chunk ack dropped");
                    Vec::new()
                }
            },
        }
    }

    fn on_chunk(&mut self, from: u32, msg: Message) -> Vec<Action> {
        let h = match ChunkHeader::decode(&msg.payload) {
            Ok(h) => h,
            Err(e) => {
                warn!(target: ROUTE, rank = self.me, from, "{e}; dropped");
                return Vec::new();
            }
        };
        let size = self.rc.cluster.rank_host.len() as u32;
        if h.src >= size || h.dst >= size {
            warn!(target: ROUTE, rank = self.me, from, "routed chunk names rank {} -> {} of {size}; dropped", h.src, h.dst);
            return Vec::new();
        }
        if h.dst != self.me {
            // Proxy: forward on the lane's NIC, which is one of ours.
            let src_host = self.rc.cluster.rank_host[h.src as usize];
            let nic = NicId {
                host: self.my_host,
                index: h.src_nic as usize,
            };
            let Some(name) = self.nic_name(nic).map(String::from) else {
                warn!(target: ROUTE, rank = self.me, from, "routed chunk for NIC {} of a host with fewer; dropped", h.src_nic);
                return Vec::new();
            };
            if src_host != self.my_host || from != h.src {
                warn!(target: ROUTE, rank = self.me, from, "routed chunk of rank {} relayed by rank {from} from another host; dropped", h.src);
                return Vec::new();
            }
            self.next_seq += 1;
            return vec![Action::Send {
                peer: h.dst,
                nic: Some(name),
                msg: Message {
                    seq: self.next_seq,
                    ..msg
                },
            }];
        }
        let data = &msg.payload[HEADER_LEN..];
        let arrival = self.reasm.take(&h, data);
        let mut acts = Vec::new();
        if let Arrival::Inconsistent(why) = &arrival {
            warn!(target: ROUTE, rank = self.me, from, "{why}; dropped");
            return acts;
        }
        // Acknowledge on the rail it came in on (duplicates too: the first
        // ack may have been lost with a NIC).
        let ack = ChunkAck {
            comm: h.comm,
            channel: h.channel,
            seq: h.seq,
            index: h.index,
            lane: h.lane,
        };
        let in_nic = NicId {
            host: self.my_host,
            index: h.dst_nic as usize,
        };
        acts.push(Action::Send {
            peer: h.src,
            nic: self.nic_name(in_nic).map(String::from),
            msg: Message {
                kind: MessageKind::Control,
                dtype: 0,
                comm: ROUTE_COMM,
                channel: 0,
                seq: 0,
                payload: Bytes::from(ack.encode()),
            },
        });
        if let Arrival::Complete(dtype, payload) = arrival {
            acts.push(Action::Deliver {
                src: h.src,
                msg: Message {
                    kind: MessageKind::Data,
                    dtype,
                    comm: h.comm,
                    channel: h.channel,
                    seq: h.seq,
                    payload,
                },
            });
        }
        acts
    }

    fn on_ack(&mut self, from: u32, ack: ChunkAck, now: Instant) -> Vec<Action> {
        let key = (from, ack.comm, ack.channel, ack.seq);
        let Some(a) = self.active.get_mut(&key) else {
            return Vec::new(); // a late ack of a finished transfer
        };
        a.out.on_ack(ack.index as usize, ack.lane as usize, now);
        if a.out.done() {
            let a = self.active.remove(&key).expect("present");
            self.finished(&a, now);
            return Vec::new();
        }
        self.dispatch(key, now)
    }

    /// Remembers each lane's measured rate for the next plans.
    fn learn(&mut self, a: &Active) {
        for l in a.out.lanes.iter().filter(|l| !l.dead && l.acked_bytes > 0) {
            self.measured.insert(l.src_nic, l.rate);
        }
    }

    /// The send of `key` completed (the receive matched it: every chunk
    /// arrived, whether or not all their acks did yet) or failed: stop
    /// routing it.
    pub fn forget(&mut self, key: SendKey, now: Instant) {
        if let Some(a) = self.active.remove(&key) {
            self.finished(&a, now);
        }
    }

    fn finished(&mut self, a: &Active, now: Instant) {
        self.learn(a);
        let secs = now.saturating_duration_since(a.started).as_secs_f64();
        info!(target: ROUTE, rank = self.me, "route r{}->r{} seq {}: {} B in {:.1} ms ({:.3} Gbit/s), acknowledged per lane [{}]",
            self.me, a.dst, a.seq, a.payload.len(), secs * 1e3,
            a.payload.len() as f64 * 8.0 / secs.max(1e-9) / 1e9,
            a.out.lanes.iter().map(|l| format!("{} {} B{}", self.nic_name(l.src_nic).unwrap_or("?"), l.acked_bytes, if l.dead { " (out)" } else { "" })).collect::<Vec<_>>().join(", "));
    }

    /// Every send failed (the communicator failed).
    pub fn clear(&mut self) {
        self.active.clear();
    }

    /// Link states of [`Router::local_nics`] (in that order), polled by the
    /// engine; then stall checks and dispatch of every routed send.
    pub fn tick(&mut self, links: Option<&[bool]>, now: Instant) -> Vec<Action> {
        self.last_poll = Some(now);
        let mut acts = Vec::new();
        if let Some(links) = links {
            for (i, &up) in links.iter().enumerate().take(self.links.len()) {
                if up == self.links[i] {
                    continue;
                }
                self.links[i] = up;
                let id = NicId {
                    host: self.my_host,
                    index: i,
                };
                let name = self.nic_name(id).unwrap_or("?").to_string();
                self.live.nics.entry(id).or_default().up = up;
                let mut requeued = 0;
                for a in self.active.values_mut() {
                    if up {
                        a.out.lane_up(id);
                    } else {
                        requeued += a.out.lane_down(id);
                    }
                }
                if up {
                    info!(target: ROUTE, rank = self.me, "NIC {name} is up again: back in use");
                } else {
                    Metrics::global().nic_failure(&name);
                    self.measured.remove(&id);
                    warn!(target: ROUTE, rank = self.me, "NIC {name} went down: out of every route; {requeued} chunk(s) in flight on it re-sent on the other NICs");
                }
                acts.push(Action::NicState { nic: name, up });
            }
        }
        let keys: Vec<SendKey> = self.active.keys().copied().collect();
        for key in keys {
            let a = self.active.get_mut(&key).expect("present");
            for l in a.out.check_stalls(now) {
                let lane = &a.out.lanes[l];
                let name = nic_name(&self.rc.cluster, lane.src_nic)
                    .unwrap_or("?")
                    .to_string();
                warn!(target: ROUTE, rank = self.me, "route r{}->r{} seq {}: lane on {name} stopped acknowledging; its chunks go on the other NICs", self.me, a.dst, a.seq);
                self.measured.remove(&lane.src_nic);
            }
            if a.out.revive_if_all_dead() {
                warn!(target: ROUTE, rank = self.me, "route r{}->r{} seq {}: every lane stalled; retrying them all", self.me, a.dst, a.seq);
            }
            acts.extend(self.dispatch(key, now));
        }
        acts
    }
}

#[cfg(test)]
mod tests {
    use super::super::cluster::{RouteInfo, RouteNic, build};
    use super::*;

    /// 2 hosts x 2 NICs x 2 ranks; rank r affine to NIC r % 2.
    fn routers(mode: RouterMode) -> Vec<Router> {
        let info = |h: u8| RouteInfo {
            nics: (0..2)
                .map(|k| RouteNic {
                    name: format!("nic{k}"),
                    cidr: Some(format!("10.77.{k}.{h}/24")),
                    rail: None,
                    speed_mbps: Some(1000),
                })
                .collect(),
            gpu_nics: vec!["nic0".into(), "nic1".into()],
        };
        let hosts = ["a", "a", "b", "b"].map(String::from);
        let rc = build(&hosts, &[0, 1, 0, 1], &[info(1), info(1), info(2), info(2)]).unwrap();
        (0..4)
            .map(|r| Router::new(r, mode, rc.clone(), Policy::default(), 1 << 30))
            .collect()
    }

    fn message(bytes: usize) -> Message {
        Message {
            kind: MessageKind::Data,
            dtype: 0,
            comm: 0,
            channel: 0,
            seq: 1,
            payload: Bytes::from(
                (0..bytes)
                    .map(|i| (i * 31 % 253) as u8)
                    .collect::<Vec<u8>>(),
            ),
        }
    }

    /// `(from, to, nic)` of a data frame.
    type Hop = (u32, u32, Option<String>);

    /// Runs actions through an ideal network; returns what rank 2 got and
    /// which (peer, nic) pairs carried data.
    fn run(
        rs: &mut [Router],
        first: Vec<Action>,
        drop_nic: Option<&str>,
    ) -> (Option<Message>, Vec<Hop>) {
        let mut queue: Vec<(u32, Action)> = first.into_iter().map(|a| (0, a)).collect();
        let mut got = None;
        let mut hops = Vec::new();
        let now = Instant::now();
        let mut rounds = 0;
        while !queue.is_empty() {
            rounds += 1;
            assert!(rounds < 100_000);
            let (from, a) = queue.remove(0);
            match a {
                Action::Send { peer, nic, msg } => {
                    if msg.kind == MessageKind::Data {
                        hops.push((from, peer, nic.clone()));
                    }
                    if nic.is_some() && nic.as_deref() == drop_nic {
                        continue; // lost on a dead NIC
                    }
                    let acts = rs[peer as usize].on_message(from, msg, now);
                    queue.extend(acts.into_iter().map(|a| (peer, a)));
                }
                Action::Deliver { src, msg } => {
                    assert_eq!((from, src), (2, 0));
                    got = Some(msg);
                }
                Action::NicState { .. } => {}
            }
            if queue.is_empty() && drop_nic.is_some() && got.is_none() {
                // Time passes: the lost lane stalls and is routed around.
                let later = now + Duration::from_secs(5);
                queue.extend(rs[0].tick(None, later).into_iter().map(|a| (0, a)));
            }
        }
        (got, hops)
    }

    #[test]
    fn a_large_send_is_striped_through_a_proxy_and_reassembled() {
        let mut rs = routers(RouterMode::On);
        let m = message(8 << 20);
        let acts = rs[0].start_send(2, m.clone(), Instant::now());
        let (got, hops) = run(&mut rs, acts, None);
        assert_eq!(got.map(|g| g.payload), Some(m.payload));
        // Rank 0 sent to its proxy (rank 1) and on its own nic0; rank 1
        // forwarded on nic1.
        assert!(hops.contains(&(0, 1, None)));
        assert!(hops.contains(&(0, 2, Some("nic0".into()))));
        assert!(hops.contains(&(1, 2, Some("nic1".into()))));
        assert!(!rs[0].busy(), "every chunk acknowledged");
    }

    #[test]
    fn affinity_and_small_sends_go_whole_on_the_own_nic() {
        let mut rs = routers(RouterMode::Affinity);
        let acts = rs[1].start_send(3, message(8 << 20), Instant::now());
        assert!(matches!(&acts[..], [Action::Send { peer: 3, nic: Some(n), .. }] if n == "nic1"));
        let mut rs = routers(RouterMode::On);
        let acts = rs[0].start_send(2, message(100), Instant::now());
        assert!(matches!(&acts[..], [Action::Send { peer: 2, nic: Some(n), .. }] if n == "nic0"));
        assert!(!rs[0].wants(1), "same host: not routed");
        assert!(rs[0].wants(3));
    }

    #[test]
    fn chunks_lost_with_a_nic_are_resent_on_the_other() {
        let mut rs = routers(RouterMode::On);
        let m = message(8 << 20);
        let acts = rs[0].start_send(2, m.clone(), Instant::now());
        let (got, _) = run(&mut rs, acts, Some("nic1"));
        assert_eq!(got.map(|g| g.payload), Some(m.payload));
    }

    #[test]
    fn link_down_takes_a_nic_out_of_new_plans_until_it_is_back() {
        let mut rs = routers(RouterMode::On);
        let now = Instant::now();
        let acts = rs[0].tick(Some(&[true, false]), now);
        assert!(matches!(&acts[..], [Action::NicState { nic, up: false }] if nic == "nic1"));
        let acts = rs[0].start_send(2, message(8 << 20), now);
        assert!(
            acts.iter()
                .all(|a| matches!(a, Action::Send { peer: 2, nic: Some(n), .. } if n == "nic0"))
        );
        rs[0].tick(Some(&[true, true]), now);
        let mut rs2 = routers(RouterMode::On);
        rs2[0].tick(Some(&[true, true]), now);
        let acts = rs2[0].start_send(2, message(8 << 20), now);
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Send { peer: 1, .. }))
        );
    }

    #[test]
    fn forged_chunks_are_dropped_not_relayed() {
        let mut rs = routers(RouterMode::On);
        let h = ChunkHeader {
            src: 2, // a rank of the other host, claiming rank 1 relays for it
            dst: 3,
            src_nic: 1,
            dst_nic: 1,
            lane: 0,
            comm: 0,
            channel: 0,
            seq: 0,
            dtype: 0,
            total_len: 4,
            offset: 0,
            chunks: 1,
            index: 0,
        };
        let mut p = h.encode().to_vec();
        p.extend_from_slice(&[1, 2, 3, 4]);
        let msg = Message {
            kind: MessageKind::Data,
            dtype: 0,
            comm: ROUTE_COMM,
            channel: 0,
            seq: 1,
            payload: Bytes::from(p),
        };
        assert!(rs[1].on_message(2, msg.clone(), Instant::now()).is_empty());
        let junk = Message {
            payload: Bytes::from_static(b"junk"),
            ..msg
        };
        assert!(rs[1].on_message(0, junk, Instant::now()).is_empty());
    }
}

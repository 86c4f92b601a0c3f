//! Runs a [`Program`] on a [`SimCluster`]: every send between hosts goes
//! through the router's real planner ([`zccl_runtime::router::plan()`]) and,
//! at chunk fidelity, the executor's real sending state machine
//! ([`Outgoing`]: windows, clocking by acknowledgement, lanes taken out,
//! tail hedging), over the flow model of [`crate::net`].
//!
//! * Messages from one rank to one peer form one stream: each starts when
//!   the previous one was delivered.
//! * [`Mode::Static`]: every inter-host message leaves whole on the
//!   sender's own NIC and enters on the NIC of the same rail
//!   (`ZCCL_ROUTER=affinity`).
//! * [`Mode::Router`]: `ZCCL_ROUTER=on`. The sender plans with what its
//!   executor would know (`exec.rs`'s `live_state`): links up or down, the
//!   bytes its own routed transfers have in flight per NIC. A direct plan
//!   is one flow on the planned NIC; a striped one is executed per
//!   [`Fidelity`].
//! * [`Fidelity::Chunks`]: the plan's chunks go to [`Outgoing`], which
//!   decides which lane sends which chunk when; each lane is one TCP stream
//!   (chunks in order, one flow at a time); the receiver acknowledges every
//!   chunk, and the ack (one path latency later) clocks the next ones.
//!   Used for the testbed calibration.
//! * [`Fidelity::Lanes`]: one flow per planned lane, all draining the
//!   transfer's bytes together (a [`crate::net`] group): the fluid limit of
//!   the same executor, whose lanes pull chunks from one queue as fast as
//!   each can carry them. Used at scale, where per-chunk events would cost
//!   minutes.
//!
//! ```
//! use zccl_sim::cluster::ClusterSpec;
//! use zccl_sim::run::{Mode, RunConfig, simulate};
//! use zccl_sim::workload::ring_shift;
//! let c = ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
//! // Rank 3 -> rank 4 crosses hosts: 8 MB on one 200 Mbit/s NIC vs four.
//! let p = ring_shift(8, |_| 8_000_000);
//! let st = simulate(&c, &p, &RunConfig::new(Mode::Static)).unwrap();
//! let rt = simulate(&c, &p, &RunConfig::new(Mode::Router)).unwrap();
//! assert!(st.time_s / rt.time_s > 2.5);
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;
use zccl_runtime::router::exec::POLL_ACTIVE;
use zccl_runtime::router::sender::{LaneRun, MAX_WINDOW, Outgoing};
use zccl_runtime::router::{LiveState, NicId, NicState, Plan, Policy, Transfer, plan};

use crate::SimError;
use crate::cluster::SimCluster;
use crate::net::{Event, LinkId, Sim};
use crate::workload::Program;

/// How sends to other hosts travel.
///
/// ```
/// use zccl_sim::run::{Mode, RunConfig};
/// assert_eq!(RunConfig::new(Mode::Static).mode, Mode::Static);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Static GPU-NIC affinity (`ZCCL_ROUTER=affinity`).
    Static,
    /// The NIC-aware router (`ZCCL_ROUTER=on`).
    Router,
}

/// How a striped transfer is executed.
///
/// ```
/// use zccl_sim::run::{Fidelity, Mode, RunConfig};
/// let c = RunConfig::new(Mode::Router).with_fidelity(Fidelity::Chunks);
/// assert_eq!(c.fidelity, Fidelity::Chunks);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fidelity {
    /// Per chunk, by the executor's [`Outgoing`].
    Chunks,
    /// One flow per lane sharing the transfer's bytes.
    Lanes,
}

/// Something that happens to a NIC.
///
/// ```
/// use zccl_runtime::router::NicId;
/// use zccl_sim::run::{Disturbance, Mode, RunConfig};
/// let mut c = RunConfig::new(Mode::Router);
/// c.disturbances.push(Disturbance::Slow { nic: NicId { host: 0, index: 1 }, factor: 0.25 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Disturbance {
    /// Both directions of the NIC go down at `at_s`; the runtime's link
    /// watch notices it within one poll period.
    Down {
        /// The NIC.
        nic: NicId,
        /// When, seconds after the start.
        at_s: f64,
    },
    /// The NIC runs at `factor` of its rate from the start (the planner
    /// does not know).
    Slow {
        /// The NIC.
        nic: NicId,
        /// Fraction of its rate.
        factor: f64,
    },
}

/// What a run needs besides the cluster and the program.
///
/// ```
/// let c = zccl_sim::run::RunConfig::new(zccl_sim::run::Mode::Router);
/// assert_eq!(c.quantum_s, 0.0);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// Static affinity or the router.
    pub mode: Mode,
    /// Chunks or lanes.
    pub fidelity: Fidelity,
    /// The planner's policy (the runtime's default unless set).
    pub policy: Policy,
    /// NIC events.
    pub disturbances: Vec<Disturbance>,
    /// Completions within this many seconds are handled together
    /// ([`Sim::set_quantum`]); 0 is exact.
    pub quantum_s: f64,
}

impl RunConfig {
    /// `mode` at lane fidelity, the runtime's default policy, no
    /// disturbance.
    ///
    /// ```
    /// use zccl_sim::run::{Fidelity, Mode, RunConfig};
    /// let c = RunConfig::new(Mode::Router);
    /// assert_eq!(c.fidelity, Fidelity::Lanes);
    /// ```
    pub fn new(mode: Mode) -> Self {
        RunConfig {
            mode,
            fidelity: Fidelity::Lanes,
            policy: Policy::default(),
            disturbances: Vec::new(),
            quantum_s: 0.0,
        }
    }

    /// The same at another fidelity.
    ///
    /// ```
    /// use zccl_sim::run::{Fidelity, Mode, RunConfig};
    /// assert_eq!(RunConfig::new(Mode::Router).with_fidelity(Fidelity::Chunks).fidelity, Fidelity::Chunks);
    /// ```
    pub fn with_fidelity(mut self, f: Fidelity) -> Self {
        self.fidelity = f;
        self
    }
}

/// What a run gave.
///
/// ```
/// use zccl_sim::{cluster::ClusterSpec, run::*, workload::point_to_point};
/// let c = ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
/// let r = simulate(&c, &point_to_point(8, &[(0, 4, 1 << 20)]), &RunConfig::new(Mode::Static)).unwrap();
/// assert_eq!((r.bytes, r.inter_host_sends, r.striped), (1 << 20, 1, 0));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    /// From the first send to the last delivery, seconds.
    pub time_s: f64,
    /// Payload bytes of every send.
    pub bytes: u64,
    /// Sends between hosts.
    pub inter_host_sends: u64,
    /// Of those, the ones the router striped over more than one lane.
    pub striped: u64,
    /// Bytes each NIC sent (`[host][nic]`), chunk copies included; at lane
    /// fidelity a striped transfer's bytes are counted per lane at the
    /// planner's shares.
    pub nic_tx_bytes: Vec<Vec<u64>>,
    /// Rate recomputations of the flow model.
    pub recomputations: u64,
    /// Flows those recomputations set, summed (the model's work).
    pub flows_touched: u64,
}

#[derive(Debug, Clone, Copy)]
enum Tag {
    /// Transfer `0` fully delivered.
    Whole(usize),
    /// Chunk `1` of transfer `0` arrived on lane `2`.
    Chunk(usize, usize, usize),
    /// Its ack reached the sender.
    Ack(usize, usize, usize),
    /// Disturbance `0` happens.
    Disturb(usize),
    /// The link watch notices NIC `0` of disturbance is down.
    Notice(usize),
}

struct Routed {
    out: Outgoing,
    /// Per lane: chunks dispatched, waiting for the stream, in order.
    fifo: Vec<VecDeque<usize>>,
    /// Per lane: the group carrying its current chunk.
    busy: Vec<Option<(usize, usize)>>,
    arrived: Vec<bool>,
    arrived_n: usize,
    delivered: bool,
    nchunks: usize,
}

struct Xfer {
    src: usize,
    dst: usize,
    bytes: u64,
    key: u64,
    step: usize,
    wait: bool,
    routed: Option<Routed>,
    /// Lanes mode: the group and its lanes' source NICs (for backlog).
    group: Option<(usize, Vec<NicId>, u64)>,
}

struct RankState {
    step: usize,
    sends_left: usize,
    recvs_left: Vec<(usize, u64)>,
    done: bool,
}

/// Simulates `program` on `cluster`.
///
/// ```
/// use zccl_sim::cluster::ClusterSpec;
/// use zccl_sim::run::{Mode, RunConfig, simulate};
/// use zccl_sim::workload::ring_shift;
/// let c = ClusterSpec::testbed(1, 1, 2, 200.0).build().unwrap();
/// // Same host: 16 MB at 16 Gbit/s = 8 ms per step, one step.
/// let r = simulate(&c, &ring_shift(2, |_| 16_000_000), &RunConfig::new(Mode::Static)).unwrap();
/// assert!((r.time_s - 8e-3).abs() < 1e-4);
/// ```
pub fn simulate(
    cluster: &SimCluster,
    program: &Program,
    cfg: &RunConfig,
) -> Result<RunResult, SimError> {
    if program.steps.len() != cluster.ranks() {
        return Err(SimError::BadProgram(format!(
            "the program has {} ranks, the cluster {}",
            program.steps.len(),
            cluster.ranks()
        )));
    }
    let mut w = World::new(cluster, program, cfg);
    w.run()?;
    Ok(w.result())
}

/// The plan the simulator makes for one transfer: [`plan()`] itself, with the
/// live state the sender's executor would have (`live`), the cluster's
/// router view and the policy. Exposed so that tests can hold it against
/// the runtime's.
///
/// ```
/// use zccl_runtime::router::{LiveState, Policy};
/// use zccl_sim::cluster::ClusterSpec;
/// let c = ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
/// let p = zccl_sim::run::plan_transfer(&c, 0, 4, 64 << 20, &LiveState::default(), &Policy::default()).unwrap();
/// assert_eq!(p.lanes.len(), 4);
/// ```
pub fn plan_transfer(
    cluster: &SimCluster,
    src: usize,
    dst: usize,
    bytes: u64,
    live: &LiveState,
    policy: &Policy,
) -> Result<Plan, SimError> {
    plan(
        &Transfer {
            src: src as u32,
            dst: dst as u32,
            bytes,
        },
        &cluster.router,
        live,
        policy,
    )
    .map_err(|e| SimError::Plan(e.to_string()))
}

/// The executor's sending state for a striped plan, built as the runtime's
/// `Router::start_send` builds it: the plan's chunks, one [`LaneRun`] per
/// lane at the nominal rate of the slower of its two NICs (nothing is
/// measured yet).
///
/// ```
/// use zccl_runtime::router::{LiveState, Policy};
/// use zccl_sim::{cluster::ClusterSpec, run::{outgoing, plan_transfer}};
/// let c = ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
/// let p = plan_transfer(&c, 0, 4, 64 << 20, &LiveState::default(), &Policy::default()).unwrap();
/// let out = outgoing(&c, &p);
/// assert_eq!(out.lanes.len(), 4);
/// assert_eq!(out.chunks.len(), p.chunks.len());
/// ```
pub fn outgoing(cluster: &SimCluster, p: &Plan) -> Outgoing {
    let rate = |id: NicId| cluster.router.hosts[id.host][id.index].rate_gbps * 1e9 / 8.0;
    let lanes: Vec<LaneRun> = p
        .lanes
        .iter()
        .map(|l| {
            LaneRun::new(
                l.src_nic,
                l.dst_nic,
                l.src_proxy,
                rate(l.src_nic).min(rate(l.dst_nic)),
            )
        })
        .collect();
    let chunks: Vec<(u64, u64)> = p.chunks.iter().map(|c| (c.offset, c.len)).collect();
    Outgoing::new(chunks, lanes)
}

struct World<'a> {
    c: &'a SimCluster,
    p: &'a Program,
    cfg: &'a RunConfig,
    sim: Sim,
    tags: Vec<Tag>,
    xfers: Vec<Xfer>,
    ranks: Vec<RankState>,
    /// Messages arrived before their step asked: `(src, dst, key)`.
    early: HashMap<(usize, usize, u64), u32>,
    /// Per `(src, dst)`: the transfers of that stream, the first in flight.
    pairs: HashMap<(usize, usize), VecDeque<usize>>,
    /// Routed transfers in progress per sender.
    active: Vec<Vec<usize>>,
    /// NICs known down (after the link watch noticed).
    down: Vec<NicId>,
    epoch: Instant,
    finish: f64,
    inter: u64,
    striped: u64,
    nic_tx: Vec<Vec<u64>>,
}

impl<'a> World<'a> {
    fn new(c: &'a SimCluster, p: &'a Program, cfg: &'a RunConfig) -> Self {
        let mut sim = Sim::new(c.net.clone());
        sim.set_quantum(cfg.quantum_s);
        let hosts = c.router.hosts.len();
        let nics = c.router.hosts.first().map_or(0, Vec::len);
        World {
            c,
            p,
            cfg,
            sim,
            tags: Vec::new(),
            xfers: Vec::new(),
            ranks: (0..c.ranks())
                .map(|_| RankState {
                    step: 0,
                    sends_left: 0,
                    recvs_left: Vec::new(),
                    done: false,
                })
                .collect(),
            early: HashMap::new(),
            pairs: HashMap::new(),
            active: vec![Vec::new(); c.ranks()],
            down: Vec::new(),
            epoch: Instant::now(),
            finish: 0.0,
            inter: 0,
            striped: 0,
            nic_tx: vec![vec![0; nics]; hosts],
        }
    }

    fn tag(&mut self, t: Tag) -> u64 {
        self.tags.push(t);
        (self.tags.len() - 1) as u64
    }

    fn instant(&self) -> Instant {
        self.epoch + Duration::from_secs_f64(self.sim.now())
    }

    fn run(&mut self) -> Result<(), SimError> {
        for (i, d) in self.cfg.disturbances.clone().into_iter().enumerate() {
            match d {
                Disturbance::Down { at_s, .. } => {
                    let t = self.tag(Tag::Disturb(i));
                    self.sim.set_timer(at_s, t);
                }
                Disturbance::Slow { nic, factor } => {
                    let (tx, rx) = self.c.nic_links(nic);
                    for l in [tx, rx] {
                        let bits = self.c.net.links[l].capacity * 8.0 * factor;
                        self.sim.set_link_bits_per_s(l, bits);
                    }
                }
            }
        }
        for r in 0..self.ranks.len() {
            self.start_step(r)?;
        }
        while let Some(e) = self.sim.next_event() {
            let tag = match e {
                Event::Delivered { tag } | Event::Timer { tag } => tag,
            };
            match self.tags[tag as usize] {
                Tag::Whole(x) => {
                    self.finish = self.finish.max(self.sim.now());
                    self.delivered(x)?;
                    self.send_done(x)?;
                }
                Tag::Chunk(x, c, l) => self.chunk_arrived(x, c, l)?,
                Tag::Ack(x, c, l) => self.chunk_acked(x, c, l)?,
                Tag::Disturb(i) => self.disturb(i)?,
                Tag::Notice(i) => self.notice(i)?,
            }
        }
        if let Some(r) = self.ranks.iter().position(|r| !r.done) {
            return Err(SimError::Stuck(format!(
                "rank {r} never finished step {} of {}",
                self.ranks[r].step,
                self.p.steps[r].len()
            )));
        }
        Ok(())
    }

    fn result(&self) -> RunResult {
        RunResult {
            time_s: self.finish,
            bytes: self.p.total_bytes(),
            inter_host_sends: self.inter,
            striped: self.striped,
            nic_tx_bytes: self.nic_tx.clone(),
            recomputations: self.sim.recomputations,
            flows_touched: self.sim.touched,
        }
    }

    fn start_step(&mut self, r: usize) -> Result<(), SimError> {
        loop {
            let i = self.ranks[r].step;
            let Some(step) = self.p.steps[r].get(i) else {
                self.ranks[r].done = true;
                self.finish = self.finish.max(self.sim.now());
                return Ok(());
            };
            let mut recvs = Vec::new();
            for &(from, key) in &step.recvs {
                match self.early.get_mut(&(from, r, key)) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                    }
                    _ => recvs.push((from, key)),
                }
            }
            self.ranks[r].recvs_left = recvs;
            self.ranks[r].sends_left = if step.wait_sends { step.sends.len() } else { 0 };
            for s in &step.sends {
                self.post(r, s.to, s.bytes, s.key, i, step.wait_sends)?;
            }
            if self.ranks[r].sends_left > 0 || !self.ranks[r].recvs_left.is_empty() {
                return Ok(());
            }
            self.ranks[r].step += 1;
        }
    }

    fn step_maybe_done(&mut self, r: usize) -> Result<(), SimError> {
        let st = &self.ranks[r];
        if !st.done && st.sends_left == 0 && st.recvs_left.is_empty() {
            self.ranks[r].step += 1;
            self.start_step(r)?;
        }
        Ok(())
    }

    fn delivered(&mut self, x: usize) -> Result<(), SimError> {
        let (src, dst, key) = (self.xfers[x].src, self.xfers[x].dst, self.xfers[x].key);
        // The stream to this peer is free for the next message.
        let next = self.pairs.get_mut(&(src, dst)).and_then(|q| {
            q.pop_front();
            q.front().copied()
        });
        if let Some(n) = next {
            self.launch(n)?;
        }
        let st = &mut self.ranks[dst];
        if let Some(pos) = st.recvs_left.iter().position(|&k| k == (src, key)) {
            st.recvs_left.swap_remove(pos);
            self.step_maybe_done(dst)
        } else {
            *self.early.entry((src, dst, key)).or_insert(0) += 1;
            Ok(())
        }
    }

    fn send_done(&mut self, x: usize) -> Result<(), SimError> {
        let (src, step, wait) = (self.xfers[x].src, self.xfers[x].step, self.xfers[x].wait);
        if let Some(pos) = self.active[src].iter().position(|&y| y == x) {
            self.active[src].swap_remove(pos);
        }
        self.xfers[x].group = None;
        if wait && self.ranks[src].step == step && !self.ranks[src].done {
            self.ranks[src].sends_left -= 1;
            self.step_maybe_done(src)?;
        }
        Ok(())
    }

    /// What the sender's executor knows when it plans: NICs it saw go
    /// down, and the bytes its routed transfers have in flight per NIC.
    fn live_state(&self, src: usize) -> LiveState {
        let mut live = LiveState::default();
        for &n in &self.down {
            live.nics.insert(
                n,
                NicState {
                    up: false,
                    ..NicState::default()
                },
            );
        }
        for &x in &self.active[src] {
            let xf = &self.xfers[x];
            if let Some(r) = &xf.routed {
                for (nic, b) in r.out.backlog() {
                    live.nics.entry(nic).or_default().backlog_bytes += b;
                }
            } else if let Some((g, nics, chunk)) = &xf.group {
                // Lanes: what a lane's window would hold of what is left.
                let left = self.sim.group_remaining(*g) as u64;
                let per = (left / nics.len().max(1) as u64).min(MAX_WINDOW as u64 * chunk);
                for &n in nics {
                    live.nics.entry(n).or_default().backlog_bytes += per;
                }
            }
        }
        live
    }

    fn post(
        &mut self,
        src: usize,
        dst: usize,
        bytes: u64,
        key: u64,
        step: usize,
        wait: bool,
    ) -> Result<(), SimError> {
        let x = self.xfers.len();
        self.xfers.push(Xfer {
            src,
            dst,
            bytes,
            key,
            step,
            wait,
            routed: None,
            group: None,
        });
        // One stream per pair of ranks: messages to the same peer leave in
        // order (a TCP connection, a shared-memory ring), not side by side.
        let q = self.pairs.entry((src, dst)).or_default();
        q.push_back(x);
        if q.len() > 1 {
            return Ok(());
        }
        self.launch(x)
    }

    /// Starts transfer `x` now that its stream is free.
    fn launch(&mut self, x: usize) -> Result<(), SimError> {
        let (src, dst, bytes) = (self.xfers[x].src, self.xfers[x].dst, self.xfers[x].bytes);
        let c = self.c;
        if c.host_of(src) == c.host_of(dst) {
            let t = self.tag(Tag::Whole(x));
            self.sim.start_group(&[c.intra_path(src, dst)], bytes, t)?;
            return Ok(());
        }
        self.inter += 1;
        let own = c.own_nic(src);
        let same_rail = |n: NicId| NicId {
            host: c.host_of(dst),
            index: n.index,
        };
        let p = match self.cfg.mode {
            Mode::Static => None,
            Mode::Router => Some(plan_transfer(
                c,
                src,
                dst,
                bytes,
                &self.live_state(src),
                &self.cfg.policy,
            )?),
        };
        let direct = match &p {
            None => Some((own, same_rail(own))),
            Some(p) if p.lanes.len() == 1 && p.lanes[0].src_proxy.is_none() => {
                Some((p.lanes[0].src_nic, p.lanes[0].dst_nic))
            }
            Some(_) => None,
        };
        if let Some((s, d)) = direct {
            let t = self.tag(Tag::Whole(x));
            self.nic_tx[s.host][s.index] += bytes;
            self.sim
                .start_group(&[c.lane_path(src, None, s, d, dst)], bytes, t)?;
            return Ok(());
        }
        let p = p.expect("striped plans come from the router");
        self.striped += 1;
        self.active[src].push(x);
        match self.cfg.fidelity {
            Fidelity::Lanes => {
                let paths: Vec<Vec<LinkId>> = p
                    .lanes
                    .iter()
                    .map(|l| c.lane_path(src, l.src_proxy, l.src_nic, l.dst_nic, dst))
                    .collect();
                for l in &p.lanes {
                    self.nic_tx[l.src_nic.host][l.src_nic.index] += l.bytes;
                }
                let t = self.tag(Tag::Whole(x));
                let g = self.sim.start_group(&paths, bytes, t)?;
                self.xfers[x].group = Some((
                    g,
                    p.lanes.iter().map(|l| l.src_nic).collect(),
                    p.chunk_bytes,
                ));
            }
            Fidelity::Chunks => {
                let out = outgoing(c, &p);
                let n = out.lanes.len();
                let nchunks = out.chunks.len();
                self.xfers[x].routed = Some(Routed {
                    out,
                    fifo: vec![VecDeque::new(); n],
                    busy: vec![None; n],
                    arrived: vec![false; nchunks],
                    arrived_n: 0,
                    delivered: false,
                    nchunks,
                });
                self.dispatch(x)?;
            }
        }
        Ok(())
    }

    /// Asks the executor's state machine what to send now; queues it on
    /// the lanes' streams.
    fn dispatch(&mut self, x: usize) -> Result<(), SimError> {
        let now = self.instant();
        let Some(r) = self.xfers[x].routed.as_mut() else {
            return Ok(());
        };
        for d in r.out.dispatch(now) {
            r.fifo[d.lane].push_back(d.chunk);
        }
        let n = r.fifo.len();
        for l in 0..n {
            self.pump(x, l)?;
        }
        Ok(())
    }

    /// Starts the next chunk of lane `l` when its stream is free.
    fn pump(&mut self, x: usize, l: usize) -> Result<(), SimError> {
        let c = self.c;
        let (src, dst) = (self.xfers[x].src, self.xfers[x].dst);
        loop {
            let r = self.xfers[x].routed.as_mut().expect("routed");
            if r.busy[l].is_some() {
                return Ok(());
            }
            let Some(chunk) = r.fifo[l].pop_front() else {
                return Ok(());
            };
            let lane = &r.out.lanes[l];
            if lane.dead {
                continue;
            }
            let (s, d, proxy) = (lane.src_nic, lane.dst_nic, lane.proxy);
            let len = r.out.chunks[chunk].1;
            let path = c.lane_path(src, proxy, s, d, dst);
            if path.iter().any(|&k| !self.sim.network().links[k].up) {
                // Sent into a dead link: lost; the link watch re-queues it.
                continue;
            }
            self.tags.push(Tag::Chunk(x, chunk, l));
            let t = (self.tags.len() - 1) as u64;
            let g = self.sim.start_group(&[path], len, t)?;
            self.nic_tx[s.host][s.index] += len;
            let r = self.xfers[x].routed.as_mut().expect("routed");
            r.busy[l] = Some((g, chunk));
            return Ok(());
        }
    }

    fn chunk_arrived(&mut self, x: usize, chunk: usize, l: usize) -> Result<(), SimError> {
        let c = self.c;
        let (src, dst) = (self.xfers[x].src, self.xfers[x].dst);
        let now = self.sim.now();
        let r = self.xfers[x].routed.as_mut().expect("routed");
        if matches!(r.busy[l], Some((_, ch)) if ch == chunk) {
            r.busy[l] = None;
        }
        let lane = &r.out.lanes[l];
        // The ack returns on the rail it came in on: one path latency.
        let back = c.lane_path(dst, None, lane.dst_nic, lane.src_nic, src);
        let ack_at = now + self.sim.network().path_latency(&back);
        let mut whole = false;
        if !r.arrived[chunk] {
            r.arrived[chunk] = true;
            r.arrived_n += 1;
            if r.arrived_n == r.nchunks && !r.delivered {
                r.delivered = true;
                whole = true;
            }
        }
        let t = self.tag(Tag::Ack(x, chunk, l));
        self.sim.set_timer(ack_at, t);
        if whole {
            self.finish = self.finish.max(now);
            self.delivered(x)?;
        }
        self.pump(x, l)
    }

    fn chunk_acked(&mut self, x: usize, chunk: usize, l: usize) -> Result<(), SimError> {
        let now = self.instant();
        let Some(r) = self.xfers[x].routed.as_mut() else {
            return Ok(());
        };
        if r.out.done() {
            return Ok(());
        }
        r.out.on_ack(chunk, l, now);
        if r.out.done() {
            // The receive matched: the send completes (exec's `forget`).
            self.send_done(x)?;
            return Ok(());
        }
        self.dispatch(x)
    }

    fn disturb(&mut self, i: usize) -> Result<(), SimError> {
        let Disturbance::Down { nic, .. } = self.cfg.disturbances[i] else {
            return Ok(());
        };
        let (tx, rx) = self.c.nic_links(nic);
        for l in [tx, rx] {
            for g in self.sim.groups_on(l) {
                self.sim.cancel_group(g);
            }
            self.sim.set_link_up(l, false);
        }
        // Chunks lost with the link free their streams.
        for xf in &mut self.xfers {
            if let Some(r) = xf.routed.as_mut() {
                for (l, b) in r.busy.iter_mut().enumerate() {
                    let lane = &r.out.lanes[l];
                    if b.is_some() && (lane.src_nic == nic || lane.dst_nic == nic) {
                        *b = None;
                    }
                }
            }
        }
        // The executor's link watch polls every POLL_ACTIVE while routed
        // sends run: it notices on average half a period later.
        let t = self.tag(Tag::Notice(i));
        self.sim
            .set_timer(self.sim.now() + POLL_ACTIVE.as_secs_f64() / 2.0, t);
        Ok(())
    }

    fn notice(&mut self, i: usize) -> Result<(), SimError> {
        let Disturbance::Down { nic, .. } = self.cfg.disturbances[i] else {
            return Ok(());
        };
        self.down.push(nic);
        let xs: Vec<usize> = self.active.iter().flatten().copied().collect();
        for x in xs {
            if let Some(r) = self.xfers[x].routed.as_mut() {
                r.out.lane_down(nic);
                for (l, f) in r.fifo.iter_mut().enumerate() {
                    if r.out.lanes[l].dead {
                        f.clear();
                    }
                }
                self.dispatch(x)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterSpec;
    use crate::workload::{Program, SendOp, Step};

    fn one_send(ranks: usize, src: usize, dst: usize, bytes: u64) -> Program {
        let mut steps = vec![Vec::new(); ranks];
        steps[src].push(Step {
            sends: vec![SendOp {
                to: dst,
                bytes,
                key: 0,
            }],
            recvs: vec![],
            wait_sends: true,
        });
        steps[dst].push(Step {
            sends: vec![],
            recvs: vec![(src, 0)],
            wait_sends: true,
        });
        Program {
            name: "one".into(),
            steps,
        }
    }

    #[test]
    fn chunks_and_lanes_agree_on_an_even_transfer() {
        let c = ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
        let p = one_send(8, 0, 4, 64 << 20);
        let lanes = simulate(&c, &p, &RunConfig::new(Mode::Router)).unwrap();
        let chunks = simulate(
            &c,
            &p,
            &RunConfig::new(Mode::Router).with_fidelity(Fidelity::Chunks),
        )
        .unwrap();
        assert_eq!(lanes.striped, 1);
        let ratio = chunks.time_s / lanes.time_s;
        assert!((0.95..1.08).contains(&ratio), "{ratio}");
    }

    #[test]
    fn the_executor_steers_around_a_slow_nic() {
        let c = ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
        let p = one_send(8, 0, 4, 64 << 20);
        let mut cfg = RunConfig::new(Mode::Router).with_fidelity(Fidelity::Chunks);
        cfg.disturbances.push(Disturbance::Slow {
            nic: NicId { host: 0, index: 3 },
            factor: 0.25,
        });
        let r = simulate(&c, &p, &cfg).unwrap();
        // 3.25 NICs' worth: about 64 MiB / (3.25 * 0.191 Gbit/s).
        let ideal = (64u64 << 20) as f64 * 8.0 / (3.25 * 0.2e9 * 1448.0 / 1514.0);
        assert!(r.time_s < 1.1 * ideal, "{} vs {ideal}", r.time_s);
        // The slow NIC carried about a quarter of the others' share.
        let tx = &r.nic_tx_bytes[0];
        assert!(tx[3] * 2 < tx[0], "{tx:?}");
    }

    #[test]
    fn a_nic_going_down_is_routed_around() {
        let c = ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
        let p = one_send(8, 0, 4, 64 << 20);
        let mut cfg = RunConfig::new(Mode::Router).with_fidelity(Fidelity::Chunks);
        cfg.disturbances.push(Disturbance::Down {
            nic: NicId { host: 0, index: 3 },
            at_s: 0.3,
        });
        let r = simulate(&c, &p, &cfg).unwrap();
        let nic = 0.2e9 * 1448.0 / 1514.0 / 8.0;
        let ideal = 0.3 + ((64u64 << 20) as f64 - 0.3 * 4.0 * nic) / (3.0 * nic);
        assert!(
            r.time_s > ideal && r.time_s < 1.1 * ideal,
            "{} vs {ideal}",
            r.time_s
        );
    }

    #[test]
    fn static_uses_only_the_own_nic() {
        let c = ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
        let r = simulate(
            &c,
            &one_send(8, 0, 4, 1 << 20),
            &RunConfig::new(Mode::Static),
        )
        .unwrap();
        assert_eq!(r.nic_tx_bytes[0], vec![1 << 20, 0, 0, 0]);
    }
}

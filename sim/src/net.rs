//! The flow-level network model: links with a capacity and a latency,
//! flows along paths of links, bandwidth shared **max-min fairly**, and an
//! event loop that advances time from one flow completion (or timer) to the
//! next.
//!
//! * A **link** carries bytes in one direction at `capacity` bytes/s and
//!   adds `latency` seconds to every flow that crosses it.
//! * A **flow** is a TCP connection's worth of traffic: it crosses a path of
//!   links and gets, at every instant, its max-min fair share (progressive
//!   filling: the most contended link fixes the rate of its flows first).
//! * A **group** is what one transfer sends: one or more flows (the lanes of
//!   a routed transfer) draining **one** byte counter together, each at its
//!   own fair rate. That is the fluid limit of the router's executor, where
//!   every lane pulls the next chunk from a shared queue as its window
//!   frees up ([`zccl_runtime::router::sender::Outgoing`]). A group of one
//!   flow is an ordinary transfer.
//! * When a group's last byte has left, its flows release their links at
//!   once and the group is **delivered** after the longest latency of its
//!   paths.
//!
//! Rates are recomputed only for the flows that share a **tight** link,
//! directly or transitively, with flows that started or ended; a slack link
//! (its flows' path bounds fit in its capacity) limits no one and couples
//! nothing. Completions at the same instant are handled together, so that a
//! thousand independent ring steps cost a thousand small computations.
//!
//! ```
//! use zccl_sim::net::{Event, Network, Sim};
//! let mut net = Network::default();
//! let l = net.add_link("nic", 8e9, 10e-6); // 1 GB/s
//! let mut sim = Sim::new(net);
//! sim.start_group(&[vec![l]], 1_000_000, 7).unwrap();
//! assert_eq!(sim.next_event(), Some(Event::Delivered { tag: 7 }));
//! assert!((sim.now() - (1e-3 + 10e-6)).abs() < 1e-9);
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ordered_float::OrderedFloat;

use crate::SimError;

/// Index of a link.
pub type LinkId = usize;

/// One direction of a link.
///
/// ```
/// let mut net = zccl_sim::net::Network::default();
/// let l = net.add_link("h0/nic0/tx", 400e9, 1e-6);
/// assert!(net.links[l].up && net.links[l].capacity == 50e9);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// Name, for reports (`h0/nic3/tx`).
    pub name: String,
    /// Bytes per second.
    pub capacity: f64,
    /// Seconds added to every flow crossing it.
    pub latency: f64,
    /// False when the link is down: no flow may start on it.
    pub up: bool,
}

/// The links of a simulated network.
///
/// ```
/// use zccl_sim::net::Network;
/// let mut net = Network::default();
/// let a = net.add_link("a", 100.0, 0.0);
/// assert_eq!(net.links[a].capacity, 12.5); // 100 bit/s = 12.5 B/s
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Network {
    /// Every link, by [`LinkId`].
    pub links: Vec<Link>,
}

impl Network {
    /// Adds a link of `bits_per_s` and `latency` seconds; returns its id.
    ///
    /// ```
    /// let mut net = zccl_sim::net::Network::default();
    /// assert_eq!(net.add_link("x", 8.0, 1e-6), 0);
    /// assert_eq!(net.add_link("y", 8.0, 1e-6), 1);
    /// ```
    pub fn add_link(&mut self, name: impl Into<String>, bits_per_s: f64, latency: f64) -> LinkId {
        self.links.push(Link {
            name: name.into(),
            capacity: bits_per_s / 8.0,
            latency,
            up: true,
        });
        self.links.len() - 1
    }

    /// The latency of a path: the sum over its links.
    ///
    /// ```
    /// let mut net = zccl_sim::net::Network::default();
    /// let a = net.add_link("a", 8.0, 1e-6);
    /// let b = net.add_link("b", 8.0, 2e-6);
    /// assert!((net.path_latency(&[a, b]) - 3e-6).abs() < 1e-15);
    /// ```
    pub fn path_latency(&self, path: &[LinkId]) -> f64 {
        path.iter().map(|&l| self.links[l].latency).sum()
    }
}

/// What [`Sim::next_event`] reports.
///
/// ```
/// use zccl_sim::net::{Event, Network, Sim};
/// let mut sim = Sim::new(Network::default());
/// sim.set_timer(1.0, 3);
/// assert_eq!(sim.next_event(), Some(Event::Timer { tag: 3 }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A group's last byte arrived.
    Delivered {
        /// The tag it was started with.
        tag: u64,
    },
    /// A timer fired.
    Timer {
        /// The tag it was set with.
        tag: u64,
    },
}

#[derive(Debug, Clone)]
struct Flow {
    path: Vec<LinkId>,
    group: usize,
    rate: f64,
    active: bool,
    mark: u64,
    pos: usize,
    /// The capacity of the narrowest link of its path.
    bound: f64,
}

#[derive(Debug, Clone)]
struct Group {
    flows: Vec<usize>,
    remaining: f64,
    updated: f64,
    rate: f64,
    latency: f64,
    tag: u64,
    version: u64,
    active: bool,
    /// A drain for the current rate is queued.
    scheduled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Group `0` drains, if its version is still `1`.
    Drain(usize, u64),
    Deliver(u64),
    Timer(u64),
}

/// The flow simulator: a [`Network`], the flows on it, and the clock.
///
/// ```
/// use zccl_sim::net::{Network, Sim};
/// let mut net = Network::default();
/// let l = net.add_link("a", 8e6, 0.0);
/// let mut sim = Sim::new(net);
/// sim.start_group(&[vec![l]], 1_000_000, 1).unwrap();
/// while sim.next_event().is_some() {}
/// assert!((sim.now() - 1.0).abs() < 1e-9);
/// ```
#[derive(Debug, Clone)]
pub struct Sim {
    net: Network,
    now: f64,
    flows: Vec<Flow>,
    free_flows: Vec<usize>,
    groups: Vec<Group>,
    free_groups: Vec<usize>,
    link_flows: Vec<Vec<usize>>,
    heap: BinaryHeap<Reverse<(OrderedFloat<f64>, u64, Kind)>>,
    seq: u64,
    dirty: Vec<LinkId>,
    dirty_flows: Vec<usize>,
    bound_sum: Vec<f64>,
    mark: u64,
    link_mark: Vec<u64>,
    link_pos: Vec<usize>,
    /// Rate recomputations done (for tests and reports).
    pub recomputations: u64,
    /// Flows whose rate those recomputations set, summed.
    pub touched: u64,
    quantum: f64,
    last_update: f64,
}

/// Relative slack under which two event times count as the same instant.
const SAME_INSTANT: f64 = 1e-12;

impl Sim {
    /// A simulator over `net` at time 0.
    ///
    /// ```
    /// let sim = zccl_sim::net::Sim::new(zccl_sim::net::Network::default());
    /// assert_eq!(sim.now(), 0.0);
    /// ```
    pub fn new(net: Network) -> Sim {
        let n = net.links.len();
        Sim {
            net,
            now: 0.0,
            flows: Vec::new(),
            free_flows: Vec::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            link_flows: vec![Vec::new(); n],
            heap: BinaryHeap::new(),
            seq: 0,
            dirty: Vec::new(),
            dirty_flows: Vec::new(),
            bound_sum: vec![0.0; n],
            mark: 0,
            link_mark: vec![0; n],
            link_pos: vec![0; n],
            recomputations: 0,
            touched: 0,
            quantum: 0.0,
            last_update: 0.0,
        }
    }

    /// The current time, seconds.
    ///
    /// ```
    /// use zccl_sim::net::{Network, Sim};
    /// let mut sim = Sim::new(Network::default());
    /// sim.set_timer(0.5, 1);
    /// sim.next_event();
    /// assert_eq!(sim.now(), 0.5);
    /// ```
    pub fn now(&self) -> f64 {
        self.now
    }

    /// Groups due to drain within `quantum` seconds of one that drains are
    /// drained with it (up to `quantum` early), so that one rate
    /// recomputation serves them all. 0 (the default) is exact; the scale
    /// runs use a small quantum to bound the number of recomputations.
    ///
    /// ```
    /// use zccl_sim::net::{Event, Network, Sim};
    /// let mut net = Network::default();
    /// let a = net.add_link("a", 8.0, 0.0);
    /// let b = net.add_link("b", 8.0, 0.0);
    /// let mut sim = Sim::new(net);
    /// sim.set_quantum(0.5);
    /// sim.start_group(&[vec![a]], 10, 1).unwrap();
    /// sim.start_group(&[vec![b]], 10, 2).unwrap();   // would drain at 10.0 too
    /// sim.next_event();
    /// sim.next_event();
    /// assert_eq!(sim.now(), 10.0);
    /// ```
    pub fn set_quantum(&mut self, quantum: f64) {
        self.quantum = quantum.max(0.0);
    }

    /// The network.
    ///
    /// ```
    /// let sim = zccl_sim::net::Sim::new(zccl_sim::net::Network::default());
    /// assert!(sim.network().links.is_empty());
    /// ```
    pub fn network(&self) -> &Network {
        &self.net
    }

    fn push(&mut self, at: f64, kind: Kind) {
        self.seq += 1;
        self.heap.push(Reverse((OrderedFloat(at), self.seq, kind)));
    }

    /// Fires [`Event::Timer`] with `tag` at time `at` (not before now).
    ///
    /// ```
    /// use zccl_sim::net::{Event, Network, Sim};
    /// let mut sim = Sim::new(Network::default());
    /// sim.set_timer(2.0, 9);
    /// sim.set_timer(1.0, 8);
    /// assert_eq!(sim.next_event(), Some(Event::Timer { tag: 8 }));
    /// assert_eq!(sim.next_event(), Some(Event::Timer { tag: 9 }));
    /// assert_eq!(sim.next_event(), None);
    /// ```
    pub fn set_timer(&mut self, at: f64, tag: u64) {
        let at = at.max(self.now);
        self.push(at, Kind::Timer(tag));
    }

    /// Starts a group: `bytes` drained together by one flow per path;
    /// [`Event::Delivered`] with `tag` follows when the last byte arrived.
    /// Returns the group's id (for [`Sim::cancel_group`]).
    ///
    /// Every path must be non-empty, over existing links that are up.
    ///
    /// ```
    /// use zccl_sim::net::{Event, Network, Sim};
    /// let mut net = Network::default();
    /// let a = net.add_link("a", 8e9, 0.0);
    /// let b = net.add_link("b", 8e9, 0.0);
    /// let mut sim = Sim::new(net);
    /// // Two lanes of 1 GB/s each drain 2 MB in 1 ms.
    /// sim.start_group(&[vec![a], vec![b]], 2_000_000, 1).unwrap();
    /// sim.next_event();
    /// assert!((sim.now() - 1e-3).abs() < 1e-12);
    /// assert!(sim.start_group(&[vec![]], 1, 2).is_err());
    /// ```
    pub fn start_group(
        &mut self,
        paths: &[Vec<LinkId>],
        bytes: u64,
        tag: u64,
    ) -> Result<usize, SimError> {
        if paths.is_empty() {
            return Err(SimError::BadPath("a group needs at least one path".into()));
        }
        for p in paths {
            if p.is_empty() {
                return Err(SimError::BadPath("empty path".into()));
            }
            for &l in p {
                let link = self
                    .net
                    .links
                    .get(l)
                    .ok_or_else(|| SimError::BadPath(format!("link {l} does not exist")))?;
                if !link.up {
                    return Err(SimError::BadPath(format!("link {} is down", link.name)));
                }
            }
        }
        let latency = paths
            .iter()
            .map(|p| self.net.path_latency(p))
            .fold(0.0, f64::max);
        let g = self.free_groups.pop().unwrap_or_else(|| {
            self.groups.push(Group {
                flows: Vec::new(),
                remaining: 0.0,
                updated: 0.0,
                rate: 0.0,
                latency: 0.0,
                tag: 0,
                version: 0,
                active: false,
                scheduled: false,
            });
            self.groups.len() - 1
        });
        let version = self.groups[g].version + 1;
        self.groups[g] = Group {
            flows: Vec::with_capacity(paths.len()),
            remaining: bytes as f64,
            updated: self.now,
            rate: 0.0,
            latency,
            tag,
            version,
            active: true,
            scheduled: false,
        };
        if bytes == 0 {
            self.groups[g].active = false;
            self.free_groups.push(g);
            self.push(self.now + latency, Kind::Deliver(tag));
            return Ok(g);
        }
        for p in paths {
            let f = self.free_flows.pop().unwrap_or_else(|| {
                self.flows.push(Flow {
                    path: Vec::new(),
                    group: 0,
                    rate: 0.0,
                    active: false,
                    mark: 0,
                    pos: 0,
                    bound: 0.0,
                });
                self.flows.len() - 1
            });
            let bound = p
                .iter()
                .map(|&l| self.net.links[l].capacity)
                .fold(f64::INFINITY, f64::min);
            self.flows[f] = Flow {
                path: p.clone(),
                group: g,
                rate: 0.0,
                active: true,
                mark: 0,
                pos: 0,
                bound,
            };
            for &l in p {
                self.link_flows[l].push(f);
                self.bound_sum[l] += bound;
                if self.tight(l) {
                    self.dirty.push(l);
                }
            }
            self.dirty_flows.push(f);
            self.groups[g].flows.push(f);
        }
        Ok(g)
    }

    /// Stops a group that has not drained yet (its bytes are lost; nothing
    /// is delivered). Returns the bytes it had left, `None` if it was not
    /// running.
    ///
    /// ```
    /// use zccl_sim::net::{Network, Sim};
    /// let mut net = Network::default();
    /// let a = net.add_link("a", 8e6, 0.0);
    /// let mut sim = Sim::new(net);
    /// let g = sim.start_group(&[vec![a]], 1000, 1).unwrap();
    /// assert_eq!(sim.cancel_group(g), Some(1000.0));
    /// assert_eq!(sim.next_event(), None);
    /// ```
    pub fn cancel_group(&mut self, g: usize) -> Option<f64> {
        if !self.groups.get(g)?.active {
            return None;
        }
        self.settle(g);
        let left = self.groups[g].remaining;
        self.release(g);
        Some(left)
    }

    /// Takes a link down (no new flow may use it) or up again. Flows already
    /// on a link that goes down keep their share of nothing: the caller
    /// cancels them (as the runtime re-sends what a dead NIC had in flight).
    ///
    /// ```
    /// use zccl_sim::net::{Network, Sim};
    /// let mut net = Network::default();
    /// let a = net.add_link("a", 8e6, 0.0);
    /// let mut sim = Sim::new(net);
    /// sim.set_link_up(a, false);
    /// assert!(sim.start_group(&[vec![a]], 1, 1).is_err());
    /// ```
    pub fn set_link_up(&mut self, l: LinkId, up: bool) {
        self.net.links[l].up = up;
        self.dirty.push(l);
    }

    /// Changes a link's capacity (bits/s), from now on.
    ///
    /// ```
    /// use zccl_sim::net::{Network, Sim};
    /// let mut net = Network::default();
    /// let a = net.add_link("a", 8e6, 0.0);
    /// let mut sim = Sim::new(net);
    /// sim.set_link_bits_per_s(a, 2e6);
    /// sim.start_group(&[vec![a]], 250_000, 1).unwrap();
    /// sim.next_event();
    /// assert!((sim.now() - 1.0).abs() < 1e-9);
    /// ```
    pub fn set_link_bits_per_s(&mut self, l: LinkId, bits_per_s: f64) {
        self.net.links[l].capacity = bits_per_s / 8.0;
        self.dirty.push(l);
    }

    /// The groups whose flows cross link `l`.
    ///
    /// ```
    /// use zccl_sim::net::{Network, Sim};
    /// let mut net = Network::default();
    /// let a = net.add_link("a", 8e6, 0.0);
    /// let mut sim = Sim::new(net);
    /// let g = sim.start_group(&[vec![a]], 10, 1).unwrap();
    /// assert_eq!(sim.groups_on(a), vec![g]);
    /// ```
    pub fn groups_on(&self, l: LinkId) -> Vec<usize> {
        let mut g: Vec<usize> = self.link_flows[l]
            .iter()
            .map(|&f| self.flows[f].group)
            .collect();
        g.sort_unstable();
        g.dedup();
        g
    }

    /// The current rate of group `g`, bytes/s (0 when not running).
    ///
    /// ```
    /// use zccl_sim::net::{Network, Sim};
    /// let mut net = Network::default();
    /// let a = net.add_link("a", 8e6, 0.0);
    /// let mut sim = Sim::new(net);
    /// let g1 = sim.start_group(&[vec![a]], 10_000, 1).unwrap();
    /// let g2 = sim.start_group(&[vec![a]], 10_000, 2).unwrap();
    /// sim.update_rates();
    /// assert_eq!(sim.group_rate(g1), 500_000.0);
    /// assert_eq!(sim.group_rate(g2), 500_000.0);
    /// ```
    pub fn group_rate(&self, g: usize) -> f64 {
        self.groups
            .get(g)
            .filter(|x| x.active)
            .map_or(0.0, |x| x.rate)
    }

    /// Sets the rate of component flow `fi` and takes it off its links'
    /// remaining capacity.
    #[allow(clippy::too_many_arguments)]
    fn fix_flow(
        &mut self,
        flows: &[usize],
        fixed: &mut [bool],
        fi: usize,
        rate: f64,
        mark: u64,
        cap: &mut [f64],
        open: &mut [usize],
    ) {
        fixed[fi] = true;
        let f = flows[fi];
        self.flows[f].rate = rate;
        for &m in &self.flows[f].path {
            if self.link_mark[m] == mark {
                let mi = self.link_pos[m];
                cap[mi] -= rate;
                open[mi] -= 1;
            }
        }
    }

    /// Whether link `l` may limit its flows: down, or the rate bounds of
    /// its flows add up to more than its capacity.
    fn tight(&self, l: LinkId) -> bool {
        let link = &self.net.links[l];
        !link.up || self.bound_sum[l] > link.capacity * (1.0 - 1e-9)
    }

    /// Bytes group `g` has left to send now (0 when not running).
    ///
    /// ```
    /// use zccl_sim::net::{Network, Sim};
    /// let mut net = Network::default();
    /// let a = net.add_link("a", 8.0, 0.0);
    /// let mut sim = Sim::new(net);
    /// let g = sim.start_group(&[vec![a]], 10, 1).unwrap();
    /// sim.set_timer(4.0, 2);
    /// sim.next_event();
    /// assert!((sim.group_remaining(g) - 6.0).abs() < 1e-9);
    /// ```
    pub fn group_remaining(&self, g: usize) -> f64 {
        self.groups.get(g).filter(|x| x.active).map_or(0.0, |x| {
            (x.remaining - x.rate * (self.now - x.updated)).max(0.0)
        })
    }

    /// Brings the bytes left of group `g` up to now.
    fn settle(&mut self, g: usize) {
        let gr = &mut self.groups[g];
        gr.remaining = (gr.remaining - gr.rate * (self.now - gr.updated)).max(0.0);
        gr.updated = self.now;
    }

    /// Removes group `g`'s flows from their links.
    fn release(&mut self, g: usize) {
        let flows = std::mem::take(&mut self.groups[g].flows);
        for f in flows {
            let path = std::mem::take(&mut self.flows[f].path);
            let bound = self.flows[f].bound;
            for &l in &path {
                if let Some(pos) = self.link_flows[l].iter().position(|&x| x == f) {
                    self.link_flows[l].swap_remove(pos);
                }
                let was_tight = self.tight(l);
                self.bound_sum[l] = (self.bound_sum[l] - bound).max(0.0);
                if self.link_flows[l].is_empty() {
                    self.bound_sum[l] = 0.0;
                }
                if was_tight {
                    self.dirty.push(l);
                }
            }
            self.flows[f].active = false;
            self.free_flows.push(f);
        }
        let gr = &mut self.groups[g];
        gr.active = false;
        gr.scheduled = false;
        gr.version += 1;
        self.free_groups.push(g);
    }

    /// Recomputes the max-min fair rates of the flows connected to links
    /// whose set of flows changed; reschedules their groups' completions.
    /// [`Sim::next_event`] calls it; call it directly only to read rates.
    ///
    /// ```
    /// use zccl_sim::net::{Network, Sim};
    /// let mut net = Network::default();
    /// let a = net.add_link("a", 8e6, 0.0);
    /// let mut sim = Sim::new(net);
    /// let g = sim.start_group(&[vec![a]], 10, 1).unwrap();
    /// sim.update_rates();
    /// assert_eq!(sim.group_rate(g), 1e6);
    /// ```
    pub fn update_rates(&mut self) {
        if self.dirty.is_empty() && self.dirty_flows.is_empty() {
            return;
        }
        self.recomputations += 1;
        // The flows to re-rate: those on the dirty links and the new ones,
        // and transitively those sharing a **tight** link with them. A
        // slack link (the rate bounds of its flows fit in its capacity)
        // never limits anyone and does not couple its flows.
        self.mark += 1;
        let mark = self.mark;
        let mut links: Vec<LinkId> = Vec::new();
        let mut flows: Vec<usize> = Vec::new();
        let mut stack = std::mem::take(&mut self.dirty);
        let seeds = std::mem::take(&mut self.dirty_flows);
        for f in seeds {
            if !self.flows[f].active || self.flows[f].mark == mark {
                continue;
            }
            self.flows[f].mark = mark;
            flows.push(f);
            for &m in &self.flows[f].path {
                if self.link_mark[m] != mark && self.tight(m) {
                    stack.push(m);
                }
            }
        }
        while let Some(l) = stack.pop() {
            if self.link_mark[l] == mark {
                continue;
            }
            self.link_mark[l] = mark;
            links.push(l);
            for &f in &self.link_flows[l] {
                if self.flows[f].mark != mark {
                    self.flows[f].mark = mark;
                    flows.push(f);
                    for &m in &self.flows[f].path {
                        if self.link_mark[m] != mark && self.tight(m) {
                            stack.push(m);
                        }
                    }
                }
            }
        }
        self.touched += flows.len() as u64;
        // Groups touched: settle their bytes at the old rates.
        let mut groups: Vec<usize> = flows.iter().map(|&f| self.flows[f].group).collect();
        groups.sort_unstable();
        groups.dedup();
        for &g in &groups {
            self.settle(g);
        }
        // Progressive filling in rounds: the lowest level among the links'
        // fair shares and the flows' own bounds fixes the flows there; the
        // other shares can only grow; repeat.
        for (i, &l) in links.iter().enumerate() {
            self.link_pos[l] = i;
        }
        let mut by_bound: Vec<usize> = (0..flows.len()).collect();
        by_bound.sort_unstable_by(|&a, &b| {
            self.flows[flows[a]]
                .bound
                .total_cmp(&self.flows[flows[b]].bound)
        });
        for (i, &f) in flows.iter().enumerate() {
            self.flows[f].pos = i;
        }
        let mut cap: Vec<f64> = links.iter().map(|&l| self.net.links[l].capacity).collect();
        let mut open: Vec<usize> = links.iter().map(|&l| self.link_flows[l].len()).collect();
        let mut fixed = vec![false; flows.len()];
        let mut left = flows.len();
        let mut next_bound = 0;
        let mut live: Vec<usize> = (0..links.len()).filter(|&i| open[i] > 0).collect();
        let mut share = vec![0.0f64; links.len()];
        while left > 0 {
            while next_bound < by_bound.len() && fixed[by_bound[next_bound]] {
                next_bound += 1;
            }
            let mut min = by_bound
                .get(next_bound)
                .map_or(f64::INFINITY, |&i| self.flows[flows[i]].bound);
            for &i in &live {
                let s = if self.net.links[links[i]].up {
                    (cap[i] / open[i] as f64).max(0.0)
                } else {
                    0.0
                };
                share[i] = s;
                min = min.min(s);
            }
            if !min.is_finite() {
                break;
            }
            let limit = min * (1.0 + 1e-9) + 1e-12;
            while next_bound < by_bound.len() {
                let fi = by_bound[next_bound];
                if !fixed[fi] {
                    let b = self.flows[flows[fi]].bound;
                    if b > limit {
                        break;
                    }
                    self.fix_flow(
                        &flows,
                        &mut fixed,
                        fi,
                        b.min(min),
                        mark,
                        &mut cap,
                        &mut open,
                    );
                    left -= 1;
                }
                next_bound += 1;
            }
            for &i in &live {
                if open[i] == 0 || share[i] > limit {
                    continue;
                }
                let l = links[i];
                let members = std::mem::take(&mut self.link_flows[l]);
                for &f in &members {
                    let fi = self.flows[f].pos;
                    if !fixed[fi] {
                        self.fix_flow(&flows, &mut fixed, fi, min, mark, &mut cap, &mut open);
                        left -= 1;
                    }
                }
                self.link_flows[l] = members;
            }
            live.retain(|&i| open[i] > 0);
        }
        // New group rates and completion times.
        for g in groups {
            let rate: f64 = self.groups[g]
                .flows
                .iter()
                .map(|&f| self.flows[f].rate)
                .sum();
            let gr = &mut self.groups[g];
            // Same rate, same drain time: its queued completion stands
            // (saves the event queue a stale entry per group and recompute).
            if gr.scheduled && (gr.rate - rate).abs() <= 1e-12 * rate {
                continue;
            }
            gr.rate = rate;
            gr.version += 1;
            gr.scheduled = rate > 0.0;
            let (version, remaining) = (gr.version, gr.remaining);
            if rate > 0.0 {
                let at = self.now + remaining / rate;
                self.push(at, Kind::Drain(g, version));
            }
        }
    }

    /// Advances to the next delivery or timer and returns it; `None` when
    /// nothing is left to happen (flows stuck at rate 0 never finish).
    ///
    /// ```
    /// use zccl_sim::net::{Event, Network, Sim};
    /// let mut net = Network::default();
    /// let a = net.add_link("a", 8e6, 0.0); // 1 MB/s
    /// let mut sim = Sim::new(net);
    /// sim.start_group(&[vec![a]], 1_000_000, 1).unwrap();
    /// sim.start_group(&[vec![a]], 500_000, 2).unwrap();
    /// // Fair share: the small one ends at 1 s, the big one at 1.5 s.
    /// assert_eq!(sim.next_event(), Some(Event::Delivered { tag: 2 }));
    /// assert!((sim.now() - 1.0).abs() < 1e-9);
    /// assert_eq!(sim.next_event(), Some(Event::Delivered { tag: 1 }));
    /// assert!((sim.now() - 1.5).abs() < 1e-9);
    /// ```
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            // With a quantum, events that follow within it are handled
            // before the rates are brought up to date (new flows wait up to
            // one quantum for their rate).
            let soon = self.quantum > 0.0
                && self
                    .heap
                    .peek()
                    .is_some_and(|Reverse((t, _, _))| t.0 <= self.last_update + self.quantum);
            if !soon {
                self.update_rates();
                self.last_update = self.now;
            }
            let Reverse((OrderedFloat(t), _, kind)) = self.heap.pop()?;
            match kind {
                Kind::Drain(g, v) => {
                    if !self.groups[g].active || self.groups[g].version != v {
                        continue;
                    }
                    self.now = self.now.max(t);
                    self.drain(g);
                    // Every other drain at this instant, before rates change.
                    while let Some(Reverse((OrderedFloat(t2), _, Kind::Drain(g2, v2)))) =
                        self.heap.peek().copied()
                    {
                        if t2 > self.now + self.quantum.max(SAME_INSTANT * self.now.max(1e-9)) {
                            break;
                        }
                        self.heap.pop();
                        if self.groups[g2].active && self.groups[g2].version == v2 {
                            self.drain(g2);
                        }
                    }
                }
                Kind::Deliver(tag) => {
                    self.now = self.now.max(t);
                    return Some(Event::Delivered { tag });
                }
                Kind::Timer(tag) => {
                    self.now = self.now.max(t);
                    return Some(Event::Timer { tag });
                }
            }
        }
    }

    fn drain(&mut self, g: usize) {
        let (tag, latency) = (self.groups[g].tag, self.groups[g].latency);
        self.groups[g].remaining = 0.0;
        self.release(g);
        self.push(self.now + latency, Kind::Deliver(tag));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(sim: &mut Sim) -> Vec<(u64, f64)> {
        let mut out = Vec::new();
        while let Some(e) = sim.next_event() {
            if let Event::Delivered { tag } = e {
                out.push((tag, sim.now()));
            }
        }
        out
    }

    #[test]
    fn two_flows_share_a_link_fairly() {
        let mut net = Network::default();
        let a = net.add_link("a", 8e6, 0.0);
        let mut sim = Sim::new(net);
        let g1 = sim.start_group(&[vec![a]], 1_000_000, 1).unwrap();
        let g2 = sim.start_group(&[vec![a]], 1_000_000, 2).unwrap();
        sim.update_rates();
        assert_eq!(sim.group_rate(g1), 500_000.0);
        assert_eq!(sim.group_rate(g2), 500_000.0);
        let done = run(&mut sim);
        assert_eq!(done.len(), 2);
        for (_, t) in done {
            assert!((t - 2.0).abs() < 1e-9, "{t}");
        }
    }

    #[test]
    fn bottleneck_sets_the_rate_and_the_rest_goes_to_others() {
        // f1 crosses a (10) and b (2); f2 crosses a only: f1 gets 2 (b is
        // its bottleneck), f2 the 8 left on a (max-min, not 5/5).
        let mut net = Network::default();
        let a = net.add_link("a", 80.0, 0.0);
        let b = net.add_link("b", 16.0, 0.0);
        let mut sim = Sim::new(net);
        let g1 = sim.start_group(&[vec![a, b]], 100, 1).unwrap();
        let g2 = sim.start_group(&[vec![a]], 100, 2).unwrap();
        sim.update_rates();
        assert!((sim.group_rate(g1) - 2.0).abs() < 1e-9);
        assert!((sim.group_rate(g2) - 8.0).abs() < 1e-9);
    }

    #[test]
    fn latency_adds_per_hop() {
        let mut net = Network::default();
        let hops: Vec<_> = (0..3)
            .map(|i| net.add_link(format!("l{i}"), 8e9, 5e-6))
            .collect();
        let mut sim = Sim::new(net);
        sim.start_group(std::slice::from_ref(&hops), 0, 1).unwrap();
        sim.start_group(&[hops], 1_000_000, 2).unwrap();
        let done = run(&mut sim);
        assert_eq!(done[0].0, 1);
        assert!((done[0].1 - 15e-6).abs() < 1e-12);
        assert!((done[1].1 - (1e-3 + 15e-6)).abs() < 1e-12);
    }

    #[test]
    fn a_group_drains_one_counter_over_its_lanes() {
        // Lanes of 3 and 1 B/s drain 8 bytes in 2 s (not 8/2 each).
        let mut net = Network::default();
        let fast = net.add_link("fast", 24.0, 0.0);
        let slow = net.add_link("slow", 8.0, 0.0);
        let mut sim = Sim::new(net);
        sim.start_group(&[vec![fast], vec![slow]], 8, 1).unwrap();
        let done = run(&mut sim);
        assert!((done[0].1 - 2.0).abs() < 1e-9);
    }

    #[test]
    fn rates_change_when_a_flow_ends() {
        // Two flows share 1 B/s; the 1-byte one ends at 2 s, then the other
        // has the link alone: 3 bytes end at 2 + 2 = 4 s.
        let mut net = Network::default();
        let a = net.add_link("a", 8.0, 0.0);
        let mut sim = Sim::new(net);
        sim.start_group(&[vec![a]], 1, 1).unwrap();
        sim.start_group(&[vec![a]], 3, 2).unwrap();
        let done = run(&mut sim);
        assert!((done[0].1 - 2.0).abs() < 1e-9);
        assert!((done[1].1 - 4.0).abs() < 1e-9);
    }

    #[test]
    fn independent_components_do_not_interact() {
        let mut net = Network::default();
        let a = net.add_link("a", 8.0, 0.0);
        let b = net.add_link("b", 8.0, 0.0);
        let mut sim = Sim::new(net);
        sim.start_group(&[vec![a]], 1, 1).unwrap();
        sim.start_group(&[vec![b]], 2, 2).unwrap();
        let done = run(&mut sim);
        assert!((done[0].1 - 1.0).abs() < 1e-9);
        assert!((done[1].1 - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_down_link_gives_zero_rate() {
        let mut net = Network::default();
        let a = net.add_link("a", 8.0, 0.0);
        let mut sim = Sim::new(net);
        let g = sim.start_group(&[vec![a]], 10, 1).unwrap();
        sim.set_link_up(a, false);
        sim.update_rates();
        assert_eq!(sim.group_rate(g), 0.0);
        assert_eq!(sim.next_event(), None);
    }
}

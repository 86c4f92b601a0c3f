//! The router's planner: how one inter-host transfer is split into chunks and
//! spread over the NICs of the sender's host. A pure function of its inputs.
//!
//! Policy:
//! * ranks of one host talk directly (shared memory); the router plans only
//!   inter-host transfers;
//! * every up NIC of the sender's host is a candidate **lane**; the lane on
//!   the sender's own (affine) NIC is direct, the others relay through the
//!   rank affine to that NIC (a **proxy**, one shared-memory hop), or are
//!   driven by the sender itself when no rank is affine to them;
//! * each lane enters the receiver's host on the NIC of the same **rail**
//!   ([`CrossNic::Never`] requires it; [`CrossNic::Prefer`] and
//!   [`CrossNic::Always`] fall back to another up NIC when the rail's NIC on
//!   the far side is down), and a proxy on the receiver's host forwards to
//!   the receiver when that NIC is not the receiver's own;
//! * bytes are shared between lanes by water-filling on a cost model: a lane
//!   with per-hop latency `α` (plus one shared-memory hop per proxy), rate
//!   `R` (the slower of its two NICs, the measured rate when known) and
//!   backlog `q` finishes `x` bytes at `α + (q + x) / R`; the shares equalise
//!   the finish times, so slow or busy NICs get fewer bytes;
//! * a transfer goes direct on the sender's own NIC when that is not slower
//!   than striping (small transfers, or NICs busier than the own one); a NIC
//!   that is down is never used;
//! * chunks are interleaved over the lanes in proportion to their shares,
//!   covering every byte exactly once.

use std::collections::HashMap;
use std::fmt;

/// A global rank.
pub type Rank = u32;

/// A NIC: its host and its index among that host's NICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NicId {
    /// Host index.
    pub host: usize,
    /// NIC index on that host.
    pub index: usize,
}

/// What the planner knows of a NIC.
#[derive(Debug, Clone, PartialEq)]
pub struct NicInfo {
    /// Interface or device name, for explanations.
    pub name: String,
    /// Rail (see `zccl_topology::rails`): NICs of different hosts with the
    /// same rail are on the same network.
    pub rail: usize,
    /// Nominal rate, Gbit/s.
    pub rate_gbps: f64,
}

/// The hosts, their NICs, and where each rank sits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cluster {
    /// NICs of each host.
    pub hosts: Vec<Vec<NicInfo>>,
    /// Host of each rank.
    pub rank_host: Vec<usize>,
    /// Index (on its host) of each rank's affine NIC: the primary NIC of its
    /// GPU in the topology.
    pub rank_nic: Vec<usize>,
}

impl Cluster {
    /// Check that ranks, hosts and NICs are consistent.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.rank_host.len() != self.rank_nic.len() {
            return Err(PlanError::BadCluster(format!(
                "{} ranks have a host but {} have a NIC",
                self.rank_host.len(),
                self.rank_nic.len()
            )));
        }
        for (r, (&h, &n)) in self.rank_host.iter().zip(&self.rank_nic).enumerate() {
            let nics = self.hosts.get(h).ok_or_else(|| {
                PlanError::BadCluster(format!("rank {r} is on host {h}, which does not exist"))
            })?;
            if n >= nics.len() {
                return Err(PlanError::BadCluster(format!(
                    "rank {r} is affine to NIC {n} of host {h}, which has {} NICs",
                    nics.len()
                )));
            }
        }
        for (h, nics) in self.hosts.iter().enumerate() {
            for n in nics {
                if !(n.rate_gbps.is_finite() && n.rate_gbps > 0.0) {
                    return Err(PlanError::BadCluster(format!(
                        "NIC {} of host {h} has rate {} Gbit/s",
                        n.name, n.rate_gbps
                    )));
                }
            }
        }
        Ok(())
    }

    fn nic(&self, id: NicId) -> &NicInfo {
        &self.hosts[id.host][id.index]
    }

    /// The lowest rank on `id`'s host affine to NIC `id`, other than `not`.
    fn affine_rank(&self, id: NicId, not: Rank) -> Option<Rank> {
        (0..self.rank_host.len() as Rank).find(|&r| {
            r != not
                && self.rank_host[r as usize] == id.host
                && self.rank_nic[r as usize] == id.index
        })
    }
}

/// Live state of one NIC.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NicState {
    /// False when the link is down or its connections failed.
    pub up: bool,
    /// Bytes queued or in flight on it.
    pub backlog_bytes: u64,
    /// Measured throughput, Gbit/s, when known (a NIC that slows down).
    pub measured_gbps: Option<f64>,
}

impl Default for NicState {
    fn default() -> Self {
        NicState {
            up: true,
            backlog_bytes: 0,
            measured_gbps: None,
        }
    }
}

/// Live state of the NICs; a NIC not listed is up, idle and at its nominal
/// rate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LiveState {
    /// State by NIC.
    pub nics: HashMap<NicId, NicState>,
}

impl LiveState {
    /// The state of a NIC.
    pub fn get(&self, id: NicId) -> NicState {
        self.nics.get(&id).copied().unwrap_or_default()
    }

    fn rate_bytes_per_s(&self, cluster: &Cluster, id: NicId) -> f64 {
        let nominal = cluster.nic(id).rate_gbps;
        let gbps = match self.get(id).measured_gbps {
            Some(m) if m.is_finite() && m > 0.0 => m,
            _ => nominal,
        };
        gbps * 1e9 / 8.0
    }
}

/// `ZCCL_CROSS_NIC`, as in NCCL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossNic {
    /// `0`: a lane leaves and enters on NICs of the same rail, or not at all.
    Never,
    /// `1`: any NIC of the receiver's host may receive.
    Always,
    /// `2` (default): same rail first, another NIC when that one is down.
    Prefer,
}

/// Tunables of the planner.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Rail matching.
    pub cross_nic: CrossNic,
    /// Latency of one network hop, seconds.
    pub alpha_s: f64,
    /// Latency added by each proxy (a shared-memory hop), seconds.
    pub proxy_alpha_s: f64,
    /// Bandwidth of a proxy hop, Gbit/s.
    pub proxy_gbps: f64,
    /// Smallest chunk, bytes.
    pub min_chunk: u64,
    /// Largest chunk, bytes.
    pub max_chunk: u64,
    /// Chunks to aim for per lane (pipelining through proxies).
    pub chunks_per_lane: u64,
    /// A lane is not opened for fewer bytes than this.
    pub min_lane_bytes: u64,
    /// Relay through the rank affine to a NIC (NCCL's PXN; `ZCCL_PXN_DISABLE=1`
    /// turns it off: the sender drives every NIC itself).
    pub pxn: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            cross_nic: CrossNic::Prefer,
            alpha_s: 20e-6,
            proxy_alpha_s: 10e-6,
            proxy_gbps: 40.0,
            min_chunk: 64 << 10,
            max_chunk: 1 << 20,
            chunks_per_lane: 8,
            min_lane_bytes: 256 << 10,
            pxn: true,
        }
    }
}

impl Policy {
    /// The default policy with `ZCCL_CROSS_NIC` (0, 1 or 2) applied.
    ///
    /// ```
    /// use zccl_runtime::router::{Policy, CrossNic};
    /// let p = Policy::from_lookup(|k| (k == "ZCCL_CROSS_NIC").then(|| "0".to_string())).unwrap();
    /// assert_eq!(p.cross_nic, CrossNic::Never);
    /// assert!(Policy::from_lookup(|_| Some("7".to_string())).is_err());
    /// ```
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Policy, PlanError> {
        let mut p = Policy::default();
        if let Some(v) = get("ZCCL_CROSS_NIC") {
            p.cross_nic = match v.trim() {
                "0" => CrossNic::Never,
                "1" => CrossNic::Always,
                "2" => CrossNic::Prefer,
                _ => {
                    return Err(PlanError::BadCluster(format!(
                        "ZCCL_CROSS_NIC={}: expected 0, 1 or 2",
                        crate::envvars::shown(&v)
                    )));
                }
            };
        }
        if let Some(v) = get("ZCCL_PXN_DISABLE") {
            p.pxn = match v.trim() {
                "0" | "" => true,
                "1" => false,
                _ => {
                    return Err(PlanError::BadCluster(format!(
                        "ZCCL_PXN_DISABLE={}: expected 0 or 1",
                        crate::envvars::shown(&v)
                    )));
                }
            };
        }
        if let Some(v) = get("ZCCL_ROUTE_CHUNK_BYTES") {
            let b: u64 = v
                .trim()
                .parse()
                .ok()
                .filter(|&b| b >= 4096)
                .ok_or_else(|| {
                    PlanError::BadCluster(format!(
                        "ZCCL_ROUTE_CHUNK_BYTES={}: must be a whole number in 4096..={}",
                        crate::envvars::shown(&v),
                        u64::MAX
                    ))
                })?;
            p.max_chunk = b;
            p.min_chunk = p.min_chunk.min(b);
        }
        Ok(p)
    }
}

/// One transfer to plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Sender.
    pub src: Rank,
    /// Receiver.
    pub dst: Rank,
    /// Size.
    pub bytes: u64,
}

/// One path through the network: a NIC of the sender's host to a NIC of the
/// receiver's host, with the proxies at either end.
#[derive(Debug, Clone, PartialEq)]
pub struct Lane {
    /// NIC the bytes leave on.
    pub src_nic: NicId,
    /// NIC the bytes arrive on.
    pub dst_nic: NicId,
    /// Rank on the sender's host that relays (None: the sender itself).
    /// Proxies only ever sit on the sender's host: every rank listens on
    /// every NIC of its host, so a lane arrives at the receiver itself on
    /// the NIC of its rail.
    pub src_proxy: Option<Rank>,
    /// Bytes this lane carries.
    pub bytes: u64,
}

/// A chunk of the transfer and the lane that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Offset in the message.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// Index into [`Plan::lanes`].
    pub lane: usize,
}

/// The plan of one transfer.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// What was planned.
    pub transfer: Transfer,
    /// Both ranks on one host: not routed (empty lanes and chunks).
    pub local: bool,
    /// The lanes used (one for a direct transfer).
    pub lanes: Vec<Lane>,
    /// Chunk size.
    pub chunk_bytes: u64,
    /// Every byte exactly once, in offset order. A zero-byte transfer has
    /// one empty chunk, so that the receiver still hears of it.
    pub chunks: Vec<Chunk>,
    /// Predicted duration of this plan, seconds.
    pub predicted_s: f64,
    /// Predicted duration of the direct transfer on the sender's own NIC
    /// (infinite when that NIC cannot be used).
    pub direct_s: f64,
    /// The plan in one line (`ZCCL_DEBUG_SUBSYS=ROUTE`).
    pub reason: String,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// A rank outside the cluster.
    #[error("unknown rank {rank} (the cluster has {size} ranks)")]
    UnknownRank {
        /// The rank asked for.
        rank: Rank,
        /// Cluster size.
        size: usize,
    },
    /// Inconsistent cluster description or policy.
    #[error("bad cluster description: {0}")]
    BadCluster(String),
    /// No NIC of the sender's host can reach the receiver's host.
    #[error("no usable NIC from host {src_host} to host {dst_host}: {why}")]
    Unreachable {
        /// Sender's host.
        src_host: usize,
        /// Receiver's host.
        dst_host: usize,
        /// What is down or unmatched.
        why: String,
    },
}

/// A candidate lane with its cost-model parameters.
#[derive(Debug, Clone)]
struct Candidate {
    lane: Lane,
    alpha: f64,
    rate: f64,
    backlog: f64,
}

impl Candidate {
    fn finish(&self, bytes: f64) -> f64 {
        self.alpha + (self.backlog + bytes) / self.rate
    }
}

/// Share `n` bytes over lanes so that their finish times are equal
/// (water-filling). Returns the shares and the common finish time.
fn water_fill(c: &[Candidate], n: f64) -> (Vec<f64>, f64) {
    // Lane i starts taking bytes at time s_i = α_i + q_i / R_i.
    let mut order: Vec<usize> = (0..c.len()).collect();
    let start = |i: usize| c[i].alpha + c[i].backlog / c[i].rate;
    order.sort_by(|&a, &b| start(a).total_cmp(&start(b)));
    let (mut rate_sum, mut offset) = (0.0, 0.0); // Σ R_i and Σ R_i s_i over open lanes
    let mut t = start(order[0]);
    for (k, &i) in order.iter().enumerate() {
        rate_sum += c[i].rate;
        offset += c[i].rate * start(i);
        t = (n + offset) / rate_sum;
        let next = order.get(k + 1).map(|&j| start(j));
        if next.is_none_or(|s| t <= s) {
            break;
        }
    }
    let shares = (0..c.len())
        .map(|i| ((t - start(i)) * c[i].rate).max(0.0))
        .collect();
    (shares, t)
}

fn mib(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Plan one transfer.
///
/// ```
/// use zccl_runtime::router::*;
/// let nic = |k: usize| NicInfo { name: format!("nic{k}"), rail: k, rate_gbps: 100.0 };
/// // 2 hosts x 2 NICs, 2 ranks per host, rank r affine to NIC r % 2.
/// let cluster = Cluster {
///     hosts: vec![vec![nic(0), nic(1)], vec![nic(0), nic(1)]],
///     rank_host: vec![0, 0, 1, 1],
///     rank_nic: vec![0, 1, 0, 1],
/// };
/// let live = LiveState::default();
/// let p = plan(&Transfer { src: 0, dst: 2, bytes: 64 << 20 }, &cluster, &live, &Policy::default()).unwrap();
/// assert_eq!(p.lanes.len(), 2);                 // both NICs
/// assert_eq!(p.lanes[1].src_proxy, Some(1));    // NIC 1 through rank 1
/// let small = plan(&Transfer { src: 0, dst: 2, bytes: 4096 }, &cluster, &live, &Policy::default()).unwrap();
/// assert_eq!(small.lanes.len(), 1);             // small: direct
/// ```
pub fn plan(
    t: &Transfer,
    cluster: &Cluster,
    live: &LiveState,
    policy: &Policy,
) -> Result<Plan, PlanError> {
    cluster.validate()?;
    let size = cluster.rank_host.len();
    for rank in [t.src, t.dst] {
        if rank as usize >= size {
            return Err(PlanError::UnknownRank { rank, size });
        }
    }
    let (sh, dh) = (
        cluster.rank_host[t.src as usize],
        cluster.rank_host[t.dst as usize],
    );
    if sh == dh {
        return Ok(Plan {
            transfer: *t,
            local: true,
            lanes: Vec::new(),
            chunk_bytes: t.bytes,
            chunks: Vec::new(),
            predicted_s: 0.0,
            direct_s: 0.0,
            reason: format!(
                "route r{}->r{} {}: same host {sh}, shared memory, not routed",
                t.src,
                t.dst,
                mib(t.bytes)
            ),
        });
    }
    let own = NicId {
        host: sh,
        index: cluster.rank_nic[t.src as usize],
    };
    let dst_own = cluster.rank_nic[t.dst as usize];
    let up = |id: NicId| live.get(id).up;

    // The receiving NIC for a lane leaving on `s`.
    let receiver = |s: NicId| -> Option<NicId> {
        let rail = cluster.nic(s).rail;
        let dst_nics = &cluster.hosts[dh];
        let same_rail = (0..dst_nics.len())
            .map(|index| NicId { host: dh, index })
            .filter(|&d| cluster.nic(d).rail == rail && up(d))
            // Prefer the receiver's own NIC among equals.
            .min_by_key(|d| (d.index != dst_own, d.index));
        match (same_rail, policy.cross_nic) {
            (Some(d), _) => Some(d),
            (None, CrossNic::Never) => None,
            (None, _) => (0..dst_nics.len())
                .map(|index| NicId { host: dh, index })
                .filter(|&d| up(d))
                .max_by(|a, b| {
                    live.rate_bytes_per_s(cluster, *a)
                        .total_cmp(&live.rate_bytes_per_s(cluster, *b))
                        .then(b.index.cmp(&a.index))
                }),
        }
    };

    let mut down = Vec::new();
    let mut unmatched = Vec::new();
    let mut cands: Vec<Candidate> = Vec::new();
    for index in 0..cluster.hosts[sh].len() {
        let s = NicId { host: sh, index };
        if !up(s) {
            down.push(cluster.nic(s).name.clone());
            continue;
        }
        let Some(d) = receiver(s) else {
            unmatched.push(cluster.nic(s).name.clone());
            continue;
        };
        let src_proxy = if s == own || !policy.pxn {
            None
        } else {
            cluster.affine_rank(s, t.src)
        };
        let hops = usize::from(src_proxy.is_some());
        let mut rate = live
            .rate_bytes_per_s(cluster, s)
            .min(live.rate_bytes_per_s(cluster, d));
        if hops > 0 {
            rate = rate.min(policy.proxy_gbps * 1e9 / 8.0);
        }
        cands.push(Candidate {
            lane: Lane {
                src_nic: s,
                dst_nic: d,
                src_proxy,
                bytes: 0,
            },
            alpha: policy.alpha_s + hops as f64 * policy.proxy_alpha_s,
            rate,
            backlog: (live.get(s).backlog_bytes + live.get(d).backlog_bytes) as f64,
        });
    }
    if cands.is_empty() {
        let mut why = Vec::new();
        if !down.is_empty() {
            why.push(format!("down: {}", down.join(", ")));
        }
        if !unmatched.is_empty() {
            why.push(format!(
                "no up NIC on the same rail at host {dh} (ZCCL_CROSS_NIC=0): {}",
                unmatched.join(", ")
            ));
        }
        return Err(PlanError::Unreachable {
            src_host: sh,
            dst_host: dh,
            why: why.join("; "),
        });
    }

    let n = t.bytes as f64;
    let direct = cands.iter().position(|c| c.lane.src_nic == own);
    let direct_s = direct.map_or(f64::INFINITY, |i| cands[i].finish(n));

    // Water-fill, dropping lanes too small to be worth opening.
    let mut open: Vec<usize> = (0..cands.len()).collect();
    let (shares, predicted) = loop {
        let sub: Vec<Candidate> = open.iter().map(|&i| cands[i].clone()).collect();
        let (shares, tf) = water_fill(&sub, n);
        let keep: Vec<usize> = open
            .iter()
            .zip(&shares)
            .filter(|(_, x)| **x >= policy.min_lane_bytes as f64)
            .map(|(&i, _)| i)
            .collect();
        if keep.len() == open.len() || keep.is_empty() {
            break (shares, tf);
        }
        open = keep;
    };
    let striped_ok = open.len() > 1 && shares.iter().all(|&x| x >= policy.min_lane_bytes as f64);

    // Direct when it is not slower, or when striping is not worth it.
    let (lanes_idx, lane_shares, predicted_s, why) = match direct {
        Some(d) if !striped_ok || direct_s <= predicted => {
            let why = if striped_ok {
                "direct: own NIC is not slower than striping"
            } else {
                "direct: too small to stripe"
            };
            (vec![d], vec![n], direct_s, why)
        }
        _ if striped_ok => (open.clone(), shares, predicted, "striped"),
        _ => {
            // Own NIC unusable and no striping: the best single lane.
            let best = (0..cands.len())
                .min_by(|&a, &b| cands[a].finish(n).total_cmp(&cands[b].finish(n)))
                .unwrap_or(0);
            (
                vec![best],
                vec![n],
                cands[best].finish(n),
                "own NIC unusable: best other NIC",
            )
        }
    };

    // Chunking: interleave chunks over lanes in proportion to their shares.
    let lanes_n = lanes_idx.len() as u64;
    let chunk_bytes = if lanes_n == 1 {
        t.bytes.clamp(1, policy.max_chunk)
    } else {
        (t.bytes / (lanes_n * policy.chunks_per_lane.max(1)))
            .clamp(policy.min_chunk, policy.max_chunk)
    };
    let total_share: f64 = lane_shares.iter().sum::<f64>().max(1.0);
    let weights: Vec<f64> = lane_shares.iter().map(|x| x / total_share).collect();
    let mut lanes: Vec<Lane> = lanes_idx.iter().map(|&i| cands[i].lane.clone()).collect();
    let mut chunks = Vec::new();
    let mut credit = vec![0.0f64; lanes.len()];
    let mut offset = 0u64;
    while offset < t.bytes {
        let len = chunk_bytes.min(t.bytes - offset);
        // Smooth weighted round robin: everyone earns its weight, the
        // richest takes the chunk and pays for it.
        for (c, w) in credit.iter_mut().zip(&weights) {
            *c += w;
        }
        let lane = (0..lanes.len())
            .max_by(|&a, &b| credit[a].total_cmp(&credit[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        credit[lane] -= 1.0;
        lanes[lane].bytes += len;
        chunks.push(Chunk { offset, len, lane });
        offset += len;
    }
    if t.bytes == 0 {
        chunks.push(Chunk {
            offset: 0,
            len: 0,
            lane: 0,
        });
    }
    // A lane that got no chunk (rounding) is dropped.
    let used: Vec<bool> = (0..lanes.len())
        .map(|l| chunks.iter().any(|c| c.lane == l))
        .collect();
    if used.iter().any(|u| !u) {
        let remap: Vec<usize> = used
            .iter()
            .scan(0, |next, &u| {
                let v = *next;
                if u {
                    *next += 1;
                }
                Some(v)
            })
            .collect();
        for c in &mut chunks {
            c.lane = remap[c.lane];
        }
        lanes = lanes
            .into_iter()
            .zip(&used)
            .filter(|(_, u)| **u)
            .map(|(l, _)| l)
            .collect();
    }

    let describe = |l: &Lane| {
        let mut s = format!("{} {}", cluster.nic(l.src_nic).name, mib(l.bytes));
        if let Some(p) = l.src_proxy {
            s.push_str(&format!(" via r{p}"));
        }
        s.push_str(&format!(" -> {}", cluster.nic(l.dst_nic).name));
        if cluster.nic(l.src_nic).rail != cluster.nic(l.dst_nic).rail {
            s.push_str(" (cross-rail)");
        }
        s
    };
    let mut reason = format!(
        "route r{}->r{} (host {sh} -> host {dh}) {}: {why}, {} lane(s) [{}], chunk {}, predicted {:.3} ms",
        t.src,
        t.dst,
        mib(t.bytes),
        lanes.len(),
        lanes.iter().map(describe).collect::<Vec<_>>().join("; "),
        mib(chunk_bytes),
        predicted_s * 1e3,
    );
    if direct_s.is_finite() {
        reason.push_str(&format!(" vs {:.3} ms direct", direct_s * 1e3));
    }
    if !down.is_empty() {
        reason.push_str(&format!("; down: {}", down.join(", ")));
    }
    Ok(Plan {
        transfer: *t,
        local: false,
        lanes,
        chunk_bytes,
        chunks,
        predicted_s,
        direct_s,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hosts` hosts × `nics` NICs at `gbps`, `ranks` ranks per host, rank
    /// r affine to NIC (local rank % nics); rails by index.
    fn cluster(hosts: usize, nics: usize, ranks: usize, gbps: f64) -> Cluster {
        Cluster {
            hosts: (0..hosts)
                .map(|_| {
                    (0..nics)
                        .map(|k| NicInfo {
                            name: format!("nic{k}"),
                            rail: k,
                            rate_gbps: gbps,
                        })
                        .collect()
                })
                .collect(),
            rank_host: (0..hosts * ranks).map(|r| r / ranks).collect(),
            rank_nic: (0..hosts * ranks).map(|r| (r % ranks) % nics).collect(),
        }
    }

    fn go(t: (Rank, Rank, u64), c: &Cluster, live: &LiveState, p: &Policy) -> Plan {
        let plan = plan(
            &Transfer {
                src: t.0,
                dst: t.1,
                bytes: t.2,
            },
            c,
            live,
            p,
        )
        .unwrap();
        check_invariants(&plan, c, live);
        plan
    }

    /// Every byte once, chunks within size, lane bytes add up, proxies on
    /// the right hosts, no down NIC.
    fn check_invariants(p: &Plan, c: &Cluster, live: &LiveState) {
        let t = p.transfer;
        if p.local {
            return;
        }
        let mut next = 0;
        for ch in &p.chunks {
            assert_eq!(ch.offset, next, "{p}");
            assert!(ch.len <= p.chunk_bytes.max(1));
            assert!(ch.lane < p.lanes.len());
            next += ch.len;
        }
        assert_eq!(next, t.bytes);
        let total: u64 = p.lanes.iter().map(|l| l.bytes).sum();
        assert_eq!(total, t.bytes);
        let (sh, dh) = (c.rank_host[t.src as usize], c.rank_host[t.dst as usize]);
        for l in &p.lanes {
            assert_eq!(l.src_nic.host, sh);
            assert_eq!(l.dst_nic.host, dh);
            assert!(live.get(l.src_nic).up && live.get(l.dst_nic).up, "{p}");
            if let Some(r) = l.src_proxy {
                assert_eq!(
                    c.rank_host[r as usize], sh,
                    "src proxy on the sender's host"
                );
                assert_ne!(r, t.src);
            }
        }
    }

    #[test]
    fn small_transfers_go_direct_on_the_own_nic() {
        let c = cluster(2, 4, 4, 0.4);
        for bytes in [0u64, 1, 8, 4096, 256 << 10] {
            let p = go((1, 5, bytes), &c, &LiveState::default(), &Policy::default());
            assert_eq!(p.lanes.len(), 1, "{p}");
            let l = &p.lanes[0];
            assert_eq!((l.src_nic.index, l.dst_nic.index), (1, 1));
            assert_eq!(l.src_proxy, None);
            assert!(p.reason.contains("direct"), "{}", p.reason);
        }
        let p = go((1, 5, 0), &c, &LiveState::default(), &Policy::default());
        assert_eq!(
            p.chunks,
            vec![Chunk {
                offset: 0,
                len: 0,
                lane: 0
            }]
        );
    }

    #[test]
    fn large_transfers_stripe_over_every_nic_through_proxies() {
        let c = cluster(2, 4, 4, 0.4);
        let p = go(
            (0, 4, 64 << 20),
            &c,
            &LiveState::default(),
            &Policy::default(),
        );
        assert_eq!(p.lanes.len(), 4, "{p}");
        for l in &p.lanes {
            assert_eq!(l.src_nic.index, l.dst_nic.index, "rail-matched");
            // Equal idle NICs share equally (within a chunk).
            assert!(
                (l.bytes as i64 - (16 << 20)).abs() <= p.chunk_bytes as i64,
                "{p}"
            );
            let k = l.src_nic.index as u32;
            assert_eq!(l.src_proxy, (k != 0).then_some(k));
        }
        assert!(p.predicted_s < p.direct_s / 3.5, "{p}");
        // The first chunks go to different lanes: all NICs start at once.
        let first: std::collections::BTreeSet<usize> =
            p.chunks[..4].iter().map(|c| c.lane).collect();
        assert_eq!(first.len(), 4);
        assert!(
            p.reason
                .starts_with("route r0->r4 (host 0 -> host 1) 64.0 MiB: striped, 4 lane(s)"),
            "{}",
            p.reason
        );
    }

    #[test]
    fn a_down_nic_is_never_used() {
        let c = cluster(2, 4, 4, 0.4);
        for down in [
            NicId { host: 0, index: 2 },
            NicId { host: 1, index: 3 },
            NicId { host: 0, index: 0 },
        ] {
            let mut live = LiveState::default();
            live.nics.insert(
                down,
                NicState {
                    up: false,
                    ..NicState::default()
                },
            );
            for bytes in [100, 64 << 20] {
                let p = go((0, 4, bytes), &c, &live, &Policy::default());
                assert!(
                    p.lanes
                        .iter()
                        .all(|l| l.src_nic != down && l.dst_nic != down),
                    "{p}"
                );
            }
        }
        // Own NIC down: even a small transfer goes through another NIC.
        let mut live = LiveState::default();
        live.nics.insert(
            NicId { host: 0, index: 0 },
            NicState {
                up: false,
                ..NicState::default()
            },
        );
        let p = go((0, 4, 100), &c, &live, &Policy::default());
        assert_eq!(p.lanes.len(), 1);
        assert_ne!(p.lanes[0].src_nic.index, 0);
        assert!(p.lanes[0].src_proxy.is_some());
        // Every NIC down: a clear error.
        let mut live = LiveState::default();
        for index in 0..4 {
            live.nics.insert(
                NicId { host: 0, index },
                NicState {
                    up: false,
                    ..NicState::default()
                },
            );
        }
        let e = plan(
            &Transfer {
                src: 0,
                dst: 4,
                bytes: 1,
            },
            &c,
            &live,
            &Policy::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("down: nic0, nic1, nic2, nic3"),
            "{e}"
        );
    }

    #[test]
    fn rails_are_matched_unless_crossing_is_allowed() {
        let c = cluster(2, 4, 4, 0.4);
        let mut live = LiveState::default();
        live.nics.insert(
            NicId { host: 1, index: 2 },
            NicState {
                up: false,
                ..NicState::default()
            },
        );
        let never = Policy {
            cross_nic: CrossNic::Never,
            ..Policy::default()
        };
        let p = go((0, 4, 64 << 20), &c, &live, &never);
        assert_eq!(p.lanes.len(), 3, "{p}");
        assert!(
            p.lanes
                .iter()
                .all(|l| l.src_nic.index == l.dst_nic.index && l.src_nic.index != 2)
        );
        let prefer = Policy::default();
        let p = go((0, 4, 64 << 20), &c, &live, &prefer);
        assert_eq!(p.lanes.len(), 4, "{p}");
        let crossing: Vec<&Lane> = p
            .lanes
            .iter()
            .filter(|l| l.src_nic.index != l.dst_nic.index)
            .collect();
        assert_eq!(crossing.len(), 1);
        assert_eq!(crossing[0].src_nic.index, 2);
        assert!(p.reason.contains("cross-rail"));
        // Rails by id, not by index: host 1 lists its NICs in another order.
        let mut c2 = c.clone();
        c2.hosts[1].reverse();
        for (i, n) in c2.hosts[1].iter().enumerate() {
            assert_eq!(n.rail, 3 - i);
        }
        let p = go((0, 4, 64 << 20), &c2, &LiveState::default(), &never);
        for l in &p.lanes {
            assert_eq!(
                c2.hosts[0][l.src_nic.index].rail,
                c2.hosts[1][l.dst_nic.index].rail
            );
        }
    }

    #[test]
    fn slow_and_busy_nics_get_fewer_bytes() {
        let c = cluster(2, 4, 4, 0.4);
        let mut live = LiveState::default();
        live.nics.insert(
            NicId { host: 0, index: 3 },
            NicState {
                measured_gbps: Some(0.1),
                ..NicState::default()
            },
        );
        let p = go((0, 4, 64 << 20), &c, &live, &Policy::default());
        let bytes = |k: usize| {
            p.lanes
                .iter()
                .find(|l| l.src_nic.index == k)
                .map_or(0, |l| l.bytes)
        };
        // A quarter-rate NIC gets about a quarter of a full one's share:
        // shares 4:4:4:1 of 64 MiB.
        let full = bytes(0) as f64;
        assert!((bytes(3) as f64 / full - 0.25).abs() < 0.05, "{p}");
        // A NIC with 40 MiB already queued gets nothing of a 16 MiB transfer.
        let mut live = LiveState::default();
        live.nics.insert(
            NicId { host: 0, index: 1 },
            NicState {
                backlog_bytes: 40 << 20,
                ..NicState::default()
            },
        );
        let p = go((0, 4, 16 << 20), &c, &live, &Policy::default());
        assert!(p.lanes.iter().all(|l| l.src_nic.index != 1), "{p}");
        // Own NIC busy, others idle: even a mid-size transfer avoids it.
        let mut live = LiveState::default();
        live.nics.insert(
            NicId { host: 0, index: 0 },
            NicState {
                backlog_bytes: 64 << 20,
                ..NicState::default()
            },
        );
        let p = go((0, 4, 4 << 20), &c, &live, &Policy::default());
        assert!(p.lanes.iter().all(|l| l.src_nic.index != 0), "{p}");
    }

    #[test]
    fn same_host_is_not_routed_and_bad_input_is_an_error() {
        let c = cluster(2, 2, 2, 1.0);
        let p = go(
            (0, 1, 1 << 20),
            &c,
            &LiveState::default(),
            &Policy::default(),
        );
        assert!(p.local && p.lanes.is_empty());
        let e = plan(
            &Transfer {
                src: 0,
                dst: 9,
                bytes: 1,
            },
            &c,
            &LiveState::default(),
            &Policy::default(),
        )
        .unwrap_err();
        assert_eq!(e, PlanError::UnknownRank { rank: 9, size: 4 });
        let mut bad = c.clone();
        bad.rank_nic[3] = 5;
        assert!(matches!(
            plan(
                &Transfer {
                    src: 0,
                    dst: 3,
                    bytes: 1
                },
                &bad,
                &LiveState::default(),
                &Policy::default()
            ),
            Err(PlanError::BadCluster(_))
        ));
    }

    #[test]
    fn uneven_sizes_are_covered_exactly() {
        let c = cluster(3, 3, 2, 10.0);
        for bytes in [1u64, 999_999, (7 << 20) + 13, 100 << 20] {
            for (s, d) in [(0, 2), (5, 0), (3, 4)] {
                go((s, d, bytes), &c, &LiveState::default(), &Policy::default());
            }
        }
    }
}

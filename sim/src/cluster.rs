//! Simulated clusters: hosts × ranks (GPUs) × NICs on rails, leaf switches
//! per rail and pod, a spine with oversubscription; the links of
//! [`crate::net`] and the router's [`Cluster`] for the same machines.
//!
//! Links (all one-directional, each with its latency):
//!
//! * per rank: `out` and `in`, its intra-host port (NVLink, or the shared
//!   memory copy on the testbed), and `rx`, where bytes from the network
//!   land in its memory (host memory: no tighter than the NICs; a GPU's
//!   PCIe ×16 link when [`ClusterSpec::rank_rx_gbps`] says so);
//! * per NIC: `tx` and `rx`, at the NIC's rate times the payload efficiency
//!   (TCP/IP headers on the testbed);
//! * per rail and pod of [`ClusterSpec::hosts_per_pod`] hosts: a leaf
//!   switch with an `up` and a `down` link to the spine, of `hosts_per_pod ×
//!   NIC rate / spine_oversub`. Traffic between NICs of one rail inside one
//!   pod stays on the (non-blocking) leaf; other traffic crosses the spine.
//!
//! Rank `r` sits on host `r / ranks_per_host` (or round robin, see
//! [`Placement`]); its GPU is its local rank and
//! its affine NIC is `local rank mod nics_per_host`, as on the testbed and in
//! the runtime without a topology file.
//!
//! ```
//! use zccl_sim::cluster::ClusterSpec;
//! let c = ClusterSpec::rail_optimized(2, 8, 8, 400.0).build().unwrap();
//! assert_eq!(c.router.rank_host.len(), 16);
//! assert_eq!(c.router.rank_nic[9], 1);
//! ```

use serde::{Deserialize, Serialize};
use zccl_runtime::router::{Cluster, NicId, NicInfo, Policy};

use crate::SimError;
use crate::net::{LinkId, Network};

/// How ranks are numbered across hosts (as `zccl bench route` places them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Host by host: rank `h × ranks_per_host + l` is local rank `l` of host `h`.
    #[default]
    Block,
    /// Round robin: rank `l × hosts + h` is local rank `l` of host `h`.
    Interleaved,
}

impl Placement {
    /// `(host, local rank)` of `rank`.
    ///
    /// ```
    /// use zccl_sim::cluster::Placement;
    /// assert_eq!(Placement::Block.place(5, 2, 4), (1, 1));
    /// assert_eq!(Placement::Interleaved.place(5, 2, 4), (1, 2));
    /// ```
    pub fn place(self, rank: usize, hosts: usize, ranks_per_host: usize) -> (usize, usize) {
        match self {
            Placement::Block => (rank / ranks_per_host, rank % ranks_per_host),
            Placement::Interleaved => (rank % hosts, rank / hosts),
        }
    }
}

/// What a simulated cluster is made of. Serialisable, so that a cluster can
/// be read from JSON (fields left out take [`ClusterSpec::default`]'s values).
///
/// ```
/// let s: zccl_sim::cluster::ClusterSpec = serde_json::from_str(r#"{"hosts": 4, "nic_gbps": 200}"#).unwrap();
/// assert_eq!((s.hosts, s.ranks_per_host, s.nic_gbps), (4, 8, 200.0));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterSpec {
    /// Hosts.
    pub hosts: usize,
    /// Ranks (GPUs) per host.
    pub ranks_per_host: usize,
    /// NICs per host (one rail per NIC index).
    pub nics_per_host: usize,
    /// Rate of each NIC, Gbit/s, per direction.
    pub nic_gbps: f64,
    /// Fraction of a NIC's rate that carries payload (1448/1514 for TCP
    /// over Ethernet with timestamps).
    pub payload_efficiency: f64,
    /// Intra-host port of each rank, Gbit/s per direction (NVLink, or the
    /// shared-memory copy).
    pub intra_gbps: f64,
    /// Where network bytes land in a rank's memory, Gbit/s (`None`: no
    /// limit beyond the NICs, as in host memory).
    pub rank_rx_gbps: Option<f64>,
    /// Hosts per pod (under one leaf switch per rail).
    pub hosts_per_pod: usize,
    /// Spine oversubscription: a leaf's uplink carries `hosts_per_pod ×
    /// nic_gbps / spine_oversub`.
    pub spine_oversub: f64,
    /// Latency of a NIC (each of `tx` and `rx`), seconds.
    pub nic_latency_s: f64,
    /// Latency of a switch hop (leaf, spine), seconds.
    pub switch_latency_s: f64,
    /// Latency of an intra-host hop, seconds.
    pub intra_latency_s: f64,
    /// How ranks are numbered across hosts.
    pub placement: Placement,
    /// Software latency of every message (posting, matching, completion:
    /// NCCL's p2p costs ~5–10 µs), seconds; 0 models the links alone.
    pub message_latency_s: f64,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec::rail_optimized(2, 8, 8, 400.0)
    }
}

impl ClusterSpec {
    /// A GPU cluster: `hosts` × `ranks_per_host` GPUs × `nics` NICs of
    /// `nic_gbps` (RDMA: payload efficiency 0.97), NVLink at 3600 Gbit/s
    /// (450 GB/s) per direction, 16 hosts per pod, spine 2:1 oversubscribed,
    /// 1 µs per NIC and switch hop, 2 µs per NVLink hop.
    ///
    /// ```
    /// let s = zccl_sim::cluster::ClusterSpec::rail_optimized(128, 8, 8, 400.0);
    /// assert_eq!(s.hosts * s.ranks_per_host, 1024);
    /// ```
    pub fn rail_optimized(hosts: usize, ranks_per_host: usize, nics: usize, nic_gbps: f64) -> Self {
        ClusterSpec {
            hosts,
            ranks_per_host,
            nics_per_host: nics,
            nic_gbps,
            payload_efficiency: 0.97,
            intra_gbps: 3600.0,
            rank_rx_gbps: None,
            hosts_per_pod: 16,
            spine_oversub: 2.0,
            nic_latency_s: 1e-6,
            switch_latency_s: 1e-6,
            intra_latency_s: 2e-6,
            placement: Placement::Block,
            message_latency_s: 0.0,
        }
    }

    /// The `zccl bench route` testbed: `hosts` network namespaces with
    /// `nics` veth NICs `tbf`-limited to `rate_mbit`, `ranks` processes
    /// each, shared memory between them (a few GB/s on this VM), TCP's
    /// payload efficiency (1448 of 1514 bytes per frame), 25 µs per veth
    /// hop, one bridge per NIC index (one pod, no spine).
    ///
    /// ```
    /// let s = zccl_sim::cluster::ClusterSpec::testbed(2, 4, 4, 200.0);
    /// assert_eq!(s.nic_gbps, 0.2);
    /// ```
    pub fn testbed(hosts: usize, nics: usize, ranks: usize, rate_mbit: f64) -> Self {
        ClusterSpec {
            hosts,
            ranks_per_host: ranks,
            nics_per_host: nics,
            nic_gbps: rate_mbit / 1000.0,
            payload_efficiency: 1448.0 / 1514.0,
            intra_gbps: 16.0,
            rank_rx_gbps: None,
            hosts_per_pod: hosts.max(1),
            spine_oversub: 1.0,
            nic_latency_s: 25e-6,
            switch_latency_s: 10e-6,
            intra_latency_s: 10e-6,
            placement: Placement::Block,
            message_latency_s: 0.0,
        }
    }

    /// Builds the links and the router's view of the cluster.
    ///
    /// ```
    /// let bad = zccl_sim::cluster::ClusterSpec { nics_per_host: 0, ..Default::default() };
    /// assert!(bad.build().is_err());
    /// ```
    pub fn build(&self) -> Result<SimCluster, SimError> {
        let s = self;
        if s.hosts == 0 || s.ranks_per_host == 0 || s.nics_per_host == 0 || s.hosts_per_pod == 0 {
            return Err(SimError::BadCluster(
                "hosts, ranks per host, NICs per host and hosts per pod must be at least 1".into(),
            ));
        }
        for (what, v) in [
            ("nic_gbps", s.nic_gbps),
            ("payload_efficiency", s.payload_efficiency),
            ("intra_gbps", s.intra_gbps),
            ("spine_oversub", s.spine_oversub),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(SimError::BadCluster(format!("{what} = {v}: must be > 0")));
            }
        }
        let mut net = Network::default();
        let ranks = s.hosts * s.ranks_per_host;
        let nic_bits = s.nic_gbps * 1e9 * s.payload_efficiency;
        let mut rank_out = Vec::with_capacity(ranks);
        let mut rank_in = Vec::with_capacity(ranks);
        let mut rank_rx = Vec::with_capacity(ranks);
        let mut rank_sw = Vec::with_capacity(ranks);
        let place = |r: usize| s.placement.place(r, s.hosts, s.ranks_per_host);
        for r in 0..ranks {
            let (h, l) = place(r);
            rank_out.push(net.add_link(
                format!("h{h}/r{l}/out"),
                s.intra_gbps * 1e9,
                s.intra_latency_s,
            ));
            rank_in.push(net.add_link(format!("h{h}/r{l}/in"), s.intra_gbps * 1e9, 0.0));
            // Never a bottleneck (slack links do not couple flows): only
            // the message latency.
            rank_sw.push(
                (s.message_latency_s > 0.0)
                    .then(|| net.add_link(format!("h{h}/r{l}/sw"), 1e18, s.message_latency_s)),
            );
            rank_rx.push(
                s.rank_rx_gbps
                    .map(|g| net.add_link(format!("h{h}/r{l}/netrx"), g * 1e9, 0.0)),
            );
        }
        let mut nic_tx = Vec::new();
        let mut nic_rx = Vec::new();
        for h in 0..s.hosts {
            let mut tx = Vec::new();
            let mut rx = Vec::new();
            for k in 0..s.nics_per_host {
                tx.push(net.add_link(format!("h{h}/nic{k}/tx"), nic_bits, s.nic_latency_s));
                rx.push(net.add_link(format!("h{h}/nic{k}/rx"), nic_bits, s.nic_latency_s));
            }
            nic_tx.push(tx);
            nic_rx.push(rx);
        }
        let pods = s.hosts.div_ceil(s.hosts_per_pod);
        let uplink = s.hosts_per_pod as f64 * nic_bits / s.spine_oversub;
        let mut leaf_up = Vec::new();
        let mut leaf_down = Vec::new();
        for k in 0..s.nics_per_host {
            let mut up = Vec::new();
            let mut down = Vec::new();
            for p in 0..pods {
                up.push(net.add_link(format!("rail{k}/pod{p}/up"), uplink, s.switch_latency_s));
                down.push(net.add_link(format!("rail{k}/pod{p}/down"), uplink, s.switch_latency_s));
            }
            leaf_up.push(up);
            leaf_down.push(down);
        }
        let router = Cluster {
            hosts: (0..s.hosts)
                .map(|_| {
                    (0..s.nics_per_host)
                        .map(|k| NicInfo {
                            name: format!("nic{k}"),
                            rail: k,
                            rate_gbps: s.nic_gbps,
                        })
                        .collect()
                })
                .collect(),
            rank_host: (0..ranks).map(|r| place(r).0).collect(),
            rank_nic: (0..ranks).map(|r| place(r).1 % s.nics_per_host).collect(),
        };
        router
            .validate()
            .map_err(|e| SimError::BadCluster(e.to_string()))?;
        Ok(SimCluster {
            spec: s.clone(),
            net,
            router,
            rank_out,
            rank_in,
            rank_rx,
            rank_sw,
            nic_tx,
            nic_rx,
            leaf_up,
            leaf_down,
        })
    }
}

/// A built cluster: its links, and the router's [`Cluster`] of the same
/// machines (what every rank of a real job would build from the address
/// book; see `zccl_runtime::router::cluster`).
///
/// ```
/// let c = zccl_sim::cluster::ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
/// // Per rank out and in, per NIC tx and rx, per rail an up and a down link.
/// assert_eq!(c.net.links.len(), 8 * 2 + 2 * 4 * 2 + 4 * 2);
/// ```
#[derive(Debug, Clone)]
pub struct SimCluster {
    /// What it was built from.
    pub spec: ClusterSpec,
    /// Every link.
    pub net: Network,
    /// The planner's cluster.
    pub router: Cluster,
    rank_out: Vec<LinkId>,
    rank_in: Vec<LinkId>,
    rank_rx: Vec<Option<LinkId>>,
    rank_sw: Vec<Option<LinkId>>,
    nic_tx: Vec<Vec<LinkId>>,
    nic_rx: Vec<Vec<LinkId>>,
    leaf_up: Vec<Vec<LinkId>>,
    leaf_down: Vec<Vec<LinkId>>,
}

impl SimCluster {
    /// Number of ranks.
    ///
    /// ```
    /// let c = zccl_sim::cluster::ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
    /// assert_eq!(c.ranks(), 8);
    /// ```
    pub fn ranks(&self) -> usize {
        self.router.rank_host.len()
    }

    /// Host of a rank.
    ///
    /// ```
    /// let c = zccl_sim::cluster::ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
    /// assert_eq!(c.host_of(5), 1);
    /// ```
    pub fn host_of(&self, rank: usize) -> usize {
        self.router.rank_host[rank]
    }

    /// The affine NIC of a rank.
    ///
    /// ```
    /// use zccl_runtime::router::NicId;
    /// let c = zccl_sim::cluster::ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
    /// assert_eq!(c.own_nic(6), NicId { host: 1, index: 2 });
    /// ```
    pub fn own_nic(&self, rank: usize) -> NicId {
        NicId {
            host: self.router.rank_host[rank],
            index: self.router.rank_nic[rank],
        }
    }

    /// The `tx` and `rx` links of a NIC.
    ///
    /// ```
    /// use zccl_runtime::router::NicId;
    /// let c = zccl_sim::cluster::ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
    /// let (tx, rx) = c.nic_links(NicId { host: 0, index: 3 });
    /// assert_eq!(c.net.links[tx].name, "h0/nic3/tx");
    /// assert_eq!(c.net.links[rx].name, "h0/nic3/rx");
    /// ```
    pub fn nic_links(&self, id: NicId) -> (LinkId, LinkId) {
        (
            self.nic_tx[id.host][id.index],
            self.nic_rx[id.host][id.index],
        )
    }

    /// The path between two ranks of one host (shared memory or NVLink).
    ///
    /// ```
    /// let c = zccl_sim::cluster::ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
    /// assert_eq!(c.intra_path(0, 1).len(), 2);
    /// ```
    pub fn intra_path(&self, src: usize, dst: usize) -> Vec<LinkId> {
        let mut p = Vec::with_capacity(3);
        p.extend(self.rank_sw[src]);
        p.push(self.rank_out[src]);
        p.push(self.rank_in[dst]);
        p
    }

    /// The path of one lane: from `src` (through `proxy`, a rank of its
    /// host, when given) out of NIC `src_nic`, across the fabric, into NIC
    /// `dst_nic` and rank `dst`.
    ///
    /// ```
    /// use zccl_runtime::router::NicId;
    /// let c = zccl_sim::cluster::ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
    /// let p = c.lane_path(0, Some(1), NicId { host: 0, index: 1 }, NicId { host: 1, index: 1 }, 4);
    /// let names: Vec<_> = p.iter().map(|&l| c.net.links[l].name.as_str()).collect();
    /// assert_eq!(names, ["h0/r0/out", "h0/r1/in", "h0/nic1/tx", "h1/nic1/rx"]);
    /// ```
    pub fn lane_path(
        &self,
        src: usize,
        proxy: Option<u32>,
        src_nic: NicId,
        dst_nic: NicId,
        dst: usize,
    ) -> Vec<LinkId> {
        let mut p = Vec::with_capacity(8);
        p.extend(self.rank_sw[src]);
        if let Some(x) = proxy {
            p.push(self.rank_out[src]);
            p.push(self.rank_in[x as usize]);
        }
        p.push(self.nic_tx[src_nic.host][src_nic.index]);
        let hp = self.spec.hosts_per_pod;
        let (sp, dp) = (src_nic.host / hp, dst_nic.host / hp);
        // Rails are NIC indices (the router's cluster says rail = index).
        if sp != dp || src_nic.index != dst_nic.index {
            p.push(self.leaf_up[src_nic.index][sp]);
            p.push(self.leaf_down[dst_nic.index][dp]);
        }
        p.push(self.nic_rx[dst_nic.host][dst_nic.index]);
        if let Some(rx) = self.rank_rx[dst] {
            p.push(rx);
        }
        p
    }

    /// The planner's policy for this cluster: the runtime's own
    /// ([`Policy::from_lookup`] with `env`, as each rank builds it from its
    /// environment), so that the simulator plans exactly as a job would.
    ///
    /// ```
    /// let c = zccl_sim::cluster::ClusterSpec::testbed(2, 4, 4, 200.0).build().unwrap();
    /// assert_eq!(c.policy(|_| None).unwrap(), zccl_runtime::router::Policy::default());
    /// ```
    pub fn policy(&self, env: impl Fn(&str) -> Option<String>) -> Result<Policy, SimError> {
        Policy::from_lookup(env).map_err(|e| SimError::BadCluster(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_pod_and_cross_rail_traffic_crosses_the_spine() {
        let mut s = ClusterSpec::rail_optimized(4, 2, 2, 100.0);
        s.hosts_per_pod = 2;
        let c = s.build().unwrap();
        let n = |h, i| NicId { host: h, index: i };
        let names = |p: Vec<LinkId>| -> Vec<String> {
            p.iter().map(|&l| c.net.links[l].name.clone()).collect()
        };
        // Same pod, same rail: leaf only.
        assert_eq!(names(c.lane_path(0, None, n(0, 0), n(1, 0), 2)).len(), 2);
        // Other pod: up and down.
        let p = names(c.lane_path(0, None, n(0, 0), n(2, 0), 4));
        assert_eq!(
            p,
            [
                "h0/nic0/tx",
                "rail0/pod0/up",
                "rail0/pod1/down",
                "h2/nic0/rx"
            ]
        );
        // Cross-rail in one pod.
        assert_eq!(names(c.lane_path(0, None, n(0, 0), n(1, 1), 3)).len(), 4);
        // Uplink capacity: 2 hosts x 100 Gbit/s x 0.97 / 2.
        let up = c.leaf_up[0][0];
        assert!((c.net.links[up].capacity * 8.0 - 97e9).abs() < 1.0);
    }
}

//! Path classification between two devices of one host: NCCL's path type
//! (the worst hop decides), the path's bandwidth (its slowest link), and the
//! `nvidia-smi topo -m` label.
//!
//! NCCL's hop rules, applied along the tree path between the two devices:
//! * a PCI link between two switches is PXB;
//! * a PCI link touching a CPU is PHB;
//! * any other PCI link (device to switch) is PIX;
//! * a link between two CPUs is SYS;
//! * NVLink between two GPUs is NVL.
//!
//! Broadcom PEX Gen4/Gen5 switch hierarchies are flattened first, as NCCL
//! does, so a GPU and a NIC behind one physical Broadcom switch are PIX.

use crate::model::{DeviceClass, NodeId, NodeKind, PathType, SmiLabel, Topology};
use serde::Serialize;
use std::collections::HashMap;

/// The classified path between two nodes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Path {
    /// NCCL path type.
    pub ptype: PathType,
    /// The `nvidia-smi topo -m` label.
    pub smi: SmiLabel,
    /// Bandwidth of the slowest link, in GB/s (NCCL's unit).
    pub bw_gbytes: f64,
    /// The nodes crossed, both ends included (after Broadcom flattening).
    pub hops: Vec<NodeId>,
    /// Where the two branches meet.
    pub via: Via,
}

/// Where a path's two branches meet: what the one-line explanations name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Via {
    /// Both ends are the same device.
    Same,
    /// NVLink between two GPUs.
    Nvlink {
        /// Number of links.
        count: u32,
    },
    /// A PCIe switch (upstream port) common to both.
    Switch {
        /// Node of the switch.
        node: NodeId,
    },
    /// The CPU (NUMA node) above both.
    Cpu {
        /// NUMA node id.
        numa: i32,
    },
    /// Two CPUs: the inter-socket link.
    Cpus {
        /// NUMA node of the first end.
        from: i32,
        /// NUMA node of the second end.
        to: i32,
    },
}

impl Via {
    /// Human-readable form, e.g. `switch 0000:18:00.0`, `CPU 0`,
    /// `CPU 0 -> CPU 1`.
    pub fn describe(&self, topo: &Topology) -> String {
        match *self {
            Via::Same => "same device".to_string(),
            Via::Nvlink { count } => format!("NVLink x{count}"),
            Via::Switch { node } => format!("switch {}", topo.label(node)),
            Via::Cpu { numa } => format!("CPU {numa}"),
            Via::Cpus { from, to } => format!("CPU {from} -> CPU {to}"),
        }
    }
}

/// True when this Broadcom PEX switch is folded into its parent switch
/// (NCCL's `ncclTopoFlattenBcmSwitches`): Gen4 `1000:c010:1000:axxx` under
/// the same pattern, or Gen5 `1000:c030:1000:1xxx` under `1000:c030:1000:0xxx`.
pub fn is_absorbed_bcm_switch(topo: &Topology, id: NodeId) -> bool {
    let (Some(p), Some(parent)) = (topo.pci(id), topo.nodes[id].parent) else {
        return false;
    };
    let Some(pp) = topo.pci(parent) else {
        return false;
    };
    let ids = |x: &crate::model::Pci| {
        (
            x.vendor.unwrap_or(0),
            x.device.unwrap_or(0),
            x.subsystem_vendor.unwrap_or(0),
            x.subsystem_device.unwrap_or(0),
        )
    };
    let (v, d, sv, sd) = ids(p);
    let (pv, pd, psv, psd) = ids(pp);
    let bcm = |v: u16, d: u16, sv: u16, dev: u16| v == 0x1000 && d == dev && sv == 0x1000;
    let gen4 = bcm(v, d, sv, 0xc010)
        && sd & 0xf000 == 0xa000
        && bcm(pv, pd, psv, 0xc010)
        && psd & 0xf000 == 0xa000;
    let gen5 = bcm(v, d, sv, 0xc030)
        && sd & 0xf000 == 0x1000
        && bcm(pv, pd, psv, 0xc030)
        && psd & 0xf000 == 0x0000;
    gen4 || gen5
}

/// The parent of a node once absorbed Broadcom switches are skipped.
pub fn effective_parent(topo: &Topology, id: NodeId) -> Option<NodeId> {
    let mut p = topo.nodes[id].parent?;
    while is_absorbed_bcm_switch(topo, p) {
        p = topo.nodes[p].parent?;
    }
    Some(p)
}

/// The inter-socket bandwidth NCCL assumes for a CPU, in GB/s.
///
/// ```
/// use zccl_topology::model::Cpu;
/// use zccl_topology::paths::sys_bandwidth;
/// let mut c = Cpu::new(0);
/// c.arch = Some("x86_64".into());
/// c.vendor = Some("GenuineIntel".into());
/// c.modelid = Some(85); // Skylake
/// assert_eq!(sys_bandwidth(&c), 10.0);
/// c.vendor = Some("AuthenticAMD".into());
/// assert_eq!(sys_bandwidth(&c), 16.0);
/// ```
pub fn sys_bandwidth(cpu: &crate::model::Cpu) -> f64 {
    match (cpu.arch.as_deref(), cpu.vendor.as_deref().map(str::trim)) {
        (Some("arm64") | Some("aarch64"), _) => 6.0,
        (Some("ppc64") | Some("ppc64le"), _) => 32.0,
        (_, Some("AuthenticAMD")) => 16.0,
        (_, Some("GenuineIntel")) => match cpu.modelid.unwrap_or(0) {
            m if m >= 0xcf => 40.0,
            m if m >= 0x8f => 22.0,
            m if m >= 0x55 => 10.0,
            _ => 6.0,
        },
        (_, Some("Shanghai")) => 9.0,
        _ => 6.0,
    }
}

/// Bandwidth NCCL gives a "local" link (a NIC attached straight to a CPU).
const LOC_BW: f64 = 5000.0;

fn is_switch(topo: &Topology, id: NodeId) -> bool {
    topo.pci(id).is_some() && !topo.is_endpoint(id)
}

/// Classify the path between two nodes (GPU, NIC or CPU nodes).
///
/// One call indexes the whole topology first; to classify many pairs, build
/// a [`Classifier`] once and use [`Classifier::classify`].
///
/// ```
/// use zccl_topology::model::*;
/// use zccl_topology::paths::classify;
/// let mut t = Topology::default();
/// let cpu = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
/// let sw = t.add_node(Some(cpu), NodeKind::Pci(Pci::new("0000:17:00.0", 0x060400)));
/// let gpu = t.add_node(Some(sw), NodeKind::Pci(Pci::new("0000:18:00.0", 0x030200)));
/// let nic = t.add_node(Some(sw), NodeKind::Pci(Pci::new("0000:19:00.0", 0x020700)));
/// t.nets.push(Net::new("mlx5_0", nic, NetKind::Ib));
/// let p = classify(&t, gpu, nic);
/// assert_eq!(p.ptype, PathType::PIX);
/// assert_eq!(p.hops, vec![gpu, sw, nic]);
/// ```
pub fn classify(topo: &Topology, a: NodeId, b: NodeId) -> Path {
    Classifier::new(topo).classify(a, b)
}

/// A path's type and bandwidth (GB/s) without the rest of [`Path`]: what
/// ranking needs, computed without allocating.
pub type PathKey = (PathType, f64);

/// The worst hop and the slowest link of two path pieces.
fn join(a: PathKey, b: PathKey) -> PathKey {
    (a.0.max(b.0), a.1.min(b.1))
}

/// The topology indexed for classifying many paths: effective (Broadcom
/// flattened) parents, the type and bandwidth of each node's link to its
/// parent, which nodes are switches, and each GPU's NVLink targets.
///
/// Built in one pass over the topology, O(nodes + GPUs + NICs + NVLinks).
/// [`Classifier::classify`] then costs the path's length, and
/// [`Classifier::keys_from`] gives the type and bandwidth from one node to
/// every node in one O(nodes) pass, so that ranking every NIC of every GPU
/// costs O((GPUs + NICs) × nodes).
///
/// ```
/// use zccl_topology::model::*;
/// use zccl_topology::paths::{classify, Classifier};
/// let mut t = Topology::default();
/// let cpu = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
/// let gpu = t.add_node(Some(cpu), NodeKind::Pci(Pci::new("0000:18:00.0", 0x030200)));
/// let nic = t.add_node(Some(cpu), NodeKind::Pci(Pci::new("0000:19:00.0", 0x020700)));
/// let c = Classifier::new(&t);
/// assert_eq!(c.classify(gpu, nic), classify(&t, gpu, nic));
/// let keys = c.keys_from(gpu);
/// assert_eq!(c.key(&keys, gpu, nic), (PathType::PHB, 12.0));
/// assert_eq!(c.key(&keys, nic, gpu), (PathType::PHB, 12.0));
/// ```
pub struct Classifier<'t> {
    topo: &'t Topology,
    /// Effective parent of each node (absorbed Broadcom switches skipped).
    parent: Vec<Option<NodeId>>,
    /// Depth in the effective tree (roots 0).
    depth: Vec<usize>,
    /// Type and bandwidth of the link from a node to its effective parent.
    up: Vec<PathKey>,
    /// Parents before children (the depth-first order of the tree).
    order: Vec<NodeId>,
    /// Index into `topo.gpus` of the (first) GPU on each node.
    gpu_at: Vec<Option<usize>>,
    /// Per GPU: NVLink count by target bus ID value (the first link wins).
    nvlinks: Vec<HashMap<u64, u32>>,
}

impl<'t> Classifier<'t> {
    /// Index a topology.
    pub fn new(topo: &'t Topology) -> Self {
        let n = topo.nodes.len();
        let mut gpu_at: Vec<Option<usize>> = vec![None; n];
        for (i, g) in topo.gpus.iter().enumerate() {
            if let Some(slot) = gpu_at.get_mut(g.node)
                && slot.is_none()
            {
                *slot = Some(i);
            }
        }
        let mut has_net = vec![false; n];
        for net in &topo.nets {
            if let Some(h) = has_net.get_mut(net.node) {
                *h = true;
            }
        }
        // Topology::is_endpoint, without its scan of every GPU and NIC.
        let endpoint = |id: NodeId| {
            gpu_at[id].is_some()
                || has_net[id]
                || topo.pci(id).is_some_and(|p| {
                    !matches!(
                        p.device_class(),
                        DeviceClass::Bridge | DeviceClass::NvSwitch
                    ) && topo.nodes[id].children.is_empty()
                })
        };
        let switch: Vec<bool> = (0..n)
            .map(|id| topo.pci(id).is_some() && !endpoint(id))
            .collect();
        let absorbed: Vec<bool> = (0..n).map(|id| is_absorbed_bcm_switch(topo, id)).collect();

        // Effective parents in depth-first order: a node's raw parent comes
        // before it, and when that parent is absorbed, the node's effective
        // parent is the parent's own.
        let order = topo.dfs();
        let mut parent: Vec<Option<NodeId>> = vec![None; n];
        let mut done = vec![false; n];
        for &id in &order {
            parent[id] = match topo.nodes[id].parent {
                Some(p) if absorbed[p] && done[p] => parent[p],
                Some(p) if absorbed[p] => effective_parent(topo, id),
                p => p,
            };
            done[id] = true;
        }
        for (id, d) in done.iter().enumerate() {
            if !d {
                parent[id] = effective_parent(topo, id); // not under a CPU
            }
        }
        let mut depth = vec![0; n];
        for &id in &order {
            if let Some(p) = parent[id] {
                depth[id] = depth[p] + 1;
            }
        }
        // The link to the parent, as hop_of types it.
        let link_bw = |id: NodeId| topo.pci(id).map_or(LOC_BW, |p| p.link_gbytes_per_s());
        let up: Vec<PathKey> = (0..n)
            .map(|id| match parent[id] {
                None => (PathType::LOC, f64::INFINITY),
                Some(p) if topo.cpu(p).is_some() || topo.cpu(id).is_some() => {
                    (PathType::PHB, link_bw(id))
                }
                Some(p) if switch[id] && switch[p] => (PathType::PXB, link_bw(id)),
                Some(_) => (PathType::PIX, link_bw(id)),
            })
            .collect();
        let nvlinks = topo
            .gpus
            .iter()
            .map(|g| {
                let mut m = HashMap::new();
                for l in &g.nvlinks {
                    if let Some(v) = busid_value(&l.target) {
                        m.entry(v).or_insert(l.count);
                    }
                }
                m
            })
            .collect();
        Classifier {
            topo,
            parent,
            depth,
            up,
            order,
            gpu_at,
            nvlinks,
        }
    }

    /// The link between two roots of the tree (two CPUs: the inter-socket
    /// link).
    fn root_hop(&self, from: NodeId, to: NodeId) -> PathKey {
        match (self.topo.cpu(from), self.topo.cpu(to)) {
            (Some(a), Some(b)) => (PathType::SYS, sys_bandwidth(a).min(sys_bandwidth(b))),
            _ => hop_of(self.topo, from, to),
        }
    }

    /// The NVLink bundle from the GPU on node `a` to the GPU on node `b`,
    /// if any: the GPU index of `a` and the link count. Targets are compared
    /// as numbers, as NCCL does.
    fn nvlink(&self, a: NodeId, b: NodeId) -> Option<(usize, u32)> {
        let ga = (*self.gpu_at.get(a)?)?;
        (*self.gpu_at.get(b)?)?;
        let target = busid_value(&self.topo.pci(b)?.busid)?;
        let count = *self.nvlinks[ga].get(&target)?;
        Some((ga, count))
    }

    fn nvlink_bw(&self, gpu: usize, count: u32) -> f64 {
        let per_link = match self.topo.gpus[gpu].sm.unwrap_or(0) {
            s if s >= 100 => 40.1,
            s if s >= 90 => 20.6,
            86..=89 => 12.0,
            s if s >= 70 => 20.0,
            s if s >= 60 => 18.0,
            _ => 20.0,
        };
        per_link * count as f64
    }

    /// The type and bandwidth of the tree path from `from` to every node
    /// (`None` for a node outside the tree), in one pass over the nodes.
    /// Feed it to [`Classifier::key`]. Tree paths are symmetric, so the same
    /// list serves paths *to* `from`.
    pub fn keys_from(&self, from: NodeId) -> Vec<Option<PathKey>> {
        let mut keys = Vec::new();
        self.keys_into(from, &mut keys);
        keys
    }

    /// [`Classifier::keys_from`] into a buffer that is reused.
    pub fn keys_into(&self, from: NodeId, keys: &mut Vec<Option<PathKey>>) {
        keys.clear();
        keys.resize(self.topo.nodes.len(), None);
        if from >= keys.len() {
            return;
        }
        keys[from] = Some((PathType::LOC, f64::INFINITY));
        let mut cur = from;
        while let Some(p) = self.parent[cur] {
            keys[p] = keys[cur].map(|k| join(k, self.up[cur]));
            cur = p;
        }
        let root = keys[cur];
        for &r in &self.topo.cpus {
            if r != cur {
                keys[r] = root.map(|k| join(k, self.root_hop(cur, r)));
            }
        }
        for &id in &self.order {
            if keys[id].is_none()
                && let Some(p) = self.parent[id]
            {
                keys[id] = keys[p].map(|k| join(k, self.up[id]));
            }
        }
    }

    /// Type and bandwidth of the path from `a` to `b`, as [`classify`] gives
    /// them, where `keys` is [`Classifier::keys_from`] either end.
    pub fn key(&self, keys: &[Option<PathKey>], a: NodeId, b: NodeId) -> PathKey {
        if a == b {
            return (PathType::LOC, LOC_BW);
        }
        if let Some((g, count)) = self.nvlink(a, b) {
            return (PathType::NVL, self.nvlink_bw(g, count));
        }
        // Only the start of `keys` is LOC (every link is PIX or worse).
        let at = |id: NodeId| keys.get(id).copied().flatten();
        let other = if at(a).is_some_and(|k| k.0 == PathType::LOC) {
            b
        } else {
            a
        };
        at(other).unwrap_or((PathType::DIS, 0.0))
    }

    /// The chain from `id` up to its root, `id` first.
    fn chain(&self, id: NodeId) -> Vec<NodeId> {
        let mut out = vec![id];
        let mut cur = id;
        while let Some(p) = self.parent[cur] {
            out.push(p);
            cur = p;
        }
        out
    }

    /// Classify the path between two nodes: the [`Path`] [`classify`] gives.
    pub fn classify(&self, a: NodeId, b: NodeId) -> Path {
        let topo = self.topo;
        if a == b {
            return Path {
                ptype: PathType::LOC,
                smi: SmiLabel::X,
                bw_gbytes: LOC_BW,
                hops: vec![a],
                via: Via::Same,
            };
        }
        if let Some((g, count)) = self.nvlink(a, b) {
            return Path {
                ptype: PathType::NVL,
                smi: SmiLabel::NV,
                bw_gbytes: self.nvlink_bw(g, count),
                hops: vec![a, b],
                via: Via::Nvlink { count },
            };
        }
        // Climb from the deeper end to equal depth, then from both ends
        // until they meet.
        let (mut x, mut y) = (a, b);
        let mut up_a = vec![a];
        let mut up_b = vec![b];
        while self.depth[x] > self.depth[y] {
            let Some(p) = self.parent[x] else { break };
            x = p;
            up_a.push(x);
        }
        while self.depth[y] > self.depth[x] {
            let Some(p) = self.parent[y] else { break };
            y = p;
            up_b.push(y);
        }
        while x != y {
            let (Some(px), Some(py)) = (self.parent[x], self.parent[y]) else {
                break;
            };
            x = px;
            y = py;
            up_a.push(x);
            up_b.push(y);
        }
        let (hops, via, key) = if x == y {
            // The link above each node climbed, the meeting point excluded.
            let key = up_a[..up_a.len() - 1]
                .iter()
                .chain(&up_b[..up_b.len() - 1])
                .fold((PathType::LOC, f64::INFINITY), |k, &c| join(k, self.up[c]));
            let mut hops = up_a;
            hops.extend(up_b[..up_b.len() - 1].iter().rev());
            let via = match &topo.nodes[x].kind {
                NodeKind::Cpu(c) => Via::Cpu { numa: c.numaid },
                NodeKind::Pci(_) => Via::Switch { node: x },
            };
            (hops, via, key)
        } else {
            // Two trees: both whole chains, joined by the root-to-root link.
            let ca = self.chain(a);
            let cb = self.chain(b);
            let (ra, rb) = (ca[ca.len() - 1], cb[cb.len() - 1]);
            let key = ca[..ca.len() - 1]
                .iter()
                .chain(&cb[..cb.len() - 1])
                .fold(self.root_hop(ra, rb), |k, &c| join(k, self.up[c]));
            let mut hops = ca;
            hops.extend(cb.iter().rev());
            let via = Via::Cpus {
                from: topo.numa_of(a),
                to: topo.numa_of(b),
            };
            (hops, via, key)
        };
        Path {
            ptype: key.0,
            smi: smi_label(topo, a, b, key.0),
            bw_gbytes: key.1,
            hops,
            via,
        }
    }
}

/// A bus ID as a number, the way NCCL compares them (`busIdToInt64`): its
/// hex digits, `:` and `.` skipped. `None` when the text (trimmed) has
/// anything else in it, no digit, or more than 16 digits.
///
/// ```
/// use zccl_topology::paths::busid_value;
/// assert_eq!(busid_value("0000:1a:00.0"), Some(0x1a000));
/// assert_eq!(busid_value("00000000:1A:00.0"), Some(0x1a000));
/// assert_eq!(busid_value("fffffff:ffff:ff"), Some(0x0fff_ffff_ffff_ff));
/// assert_eq!(busid_value("0000:1a:00.0; rm"), None);
/// assert_eq!(busid_value("bogus"), None);
/// assert_eq!(busid_value(":."), None);
/// ```
pub fn busid_value(s: &str) -> Option<u64> {
    let mut value: u64 = 0;
    let mut digits = 0;
    for c in s.trim().chars() {
        if c == ':' || c == '.' {
            continue;
        }
        let d = c.to_digit(16)?;
        digits += 1;
        if digits > 16 {
            return None;
        }
        value = (value << 4) | u64::from(d);
    }
    (digits > 0).then_some(value)
}

/// Type and bandwidth of one link of a tree path.
fn hop_of(topo: &Topology, u: NodeId, v: NodeId) -> (PathType, f64) {
    match (topo.cpu(u), topo.cpu(v)) {
        (Some(cu), Some(cv)) => (PathType::SYS, sys_bandwidth(cu).min(sys_bandwidth(cv))),
        (Some(_), None) | (None, Some(_)) => {
            let child = if topo.cpu(u).is_some() { v } else { u };
            let bw = topo.pci(child).map_or(LOC_BW, |p| p.link_gbytes_per_s());
            (PathType::PHB, bw)
        }
        (None, None) => {
            // The child of the link is the one whose parent is the other.
            let child = if effective_parent(topo, u) == Some(v) {
                u
            } else {
                v
            };
            let bw = topo.pci(child).map_or(LOC_BW, |p| p.link_gbytes_per_s());
            let t = if is_switch(topo, u) && is_switch(topo, v) {
                PathType::PXB
            } else {
                PathType::PIX
            };
            (t, bw)
        }
    }
}

/// The `nvidia-smi topo -m` label. With sysfs paths for both ends it follows
/// nvidia-smi: the deepest common sysfs component decides (a bridge: PIX when
/// each end is at most one bridge below it, else PXB; a host bridge: PHB;
/// none: NODE on one NUMA node, SYS across). Otherwise it is derived from the
/// NCCL type (NODE cannot be told from PHB without sysfs paths).
fn smi_label(topo: &Topology, a: NodeId, b: NodeId, ptype: PathType) -> SmiLabel {
    let same_numa = topo.numa_of(a) == topo.numa_of(b);
    let paths = (
        topo.pci(a).and_then(|p| p.sysfs_path.as_ref()),
        topo.pci(b).and_then(|p| p.sysfs_path.as_ref()),
    );
    if let (Some(pa), Some(pb)) = paths {
        let common = pa.iter().zip(pb.iter()).take_while(|(x, y)| x == y).count();
        if common == 0 {
            return if same_numa {
                SmiLabel::NODE
            } else {
                SmiLabel::SYS
            };
        }
        if pa[common - 1].starts_with("pci") {
            return SmiLabel::PHB;
        }
        let below = |p: &Vec<String>| p.len().saturating_sub(common + 1);
        return if below(pa) <= 1 && below(pb) <= 1 {
            SmiLabel::PIX
        } else {
            SmiLabel::PXB
        };
    }
    match ptype {
        PathType::LOC => SmiLabel::X,
        PathType::NVL | PathType::NVB => SmiLabel::NV,
        PathType::PIX => SmiLabel::PIX,
        PathType::PXB | PathType::C2C | PathType::P2C | PathType::PXN => SmiLabel::PXB,
        PathType::PHB => SmiLabel::PHB,
        _ => SmiLabel::SYS,
    }
}

/// True when a node is a GPU-class or accelerator PCI device.
pub fn is_gpu_like(topo: &Topology, id: NodeId) -> bool {
    topo.pci(id).is_some_and(|p| {
        matches!(
            p.device_class(),
            DeviceClass::Gpu | DeviceClass::Accelerator
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn pci(busid: &str, class: u32, speed: &str, width: u32) -> NodeKind {
        let mut p = Pci::new(busid, class);
        p.link_speed = speed.into();
        p.link_width = width;
        NodeKind::Pci(p)
    }

    /// Two sockets; socket 0 has switch A (GPU0, NIC0) and, below a second
    /// level switch B, GPU1; socket 1 has GPU2 straight on the CPU.
    fn sample() -> (Topology, [NodeId; 5]) {
        let mut t = Topology::default();
        let mut c0 = Cpu::new(0);
        c0.vendor = Some("GenuineIntel".into());
        c0.modelid = Some(0x8f);
        let mut c1 = c0.clone();
        c1.numaid = 1;
        let cpu0 = t.add_node(None, NodeKind::Cpu(c0));
        let cpu1 = t.add_node(None, NodeKind::Cpu(c1));
        let sw_a = t.add_node(
            Some(cpu0),
            pci("0000:10:00.0", 0x060400, "32.0 GT/s PCIe", 16),
        );
        let gpu0 = t.add_node(
            Some(sw_a),
            pci("0000:11:00.0", 0x030200, "32.0 GT/s PCIe", 16),
        );
        let nic0 = t.add_node(
            Some(sw_a),
            pci("0000:12:00.0", 0x020700, "16.0 GT/s PCIe", 16),
        );
        let sw_b = t.add_node(
            Some(sw_a),
            pci("0000:13:00.0", 0x060400, "32.0 GT/s PCIe", 16),
        );
        let gpu1 = t.add_node(
            Some(sw_b),
            pci("0000:14:00.0", 0x030200, "32.0 GT/s PCIe", 8),
        );
        let gpu2 = t.add_node(
            Some(cpu1),
            pci("0000:90:00.0", 0x030200, "32.0 GT/s PCIe", 16),
        );
        t.nets.push(Net::new("mlx5_0", nic0, NetKind::Ib));
        (t, [gpu0, gpu1, gpu2, nic0, cpu0])
    }

    #[test]
    fn worst_hop_decides_and_slowest_link_is_the_bandwidth() {
        let (t, [gpu0, gpu1, gpu2, nic0, cpu0]) = sample();
        let p = classify(&t, gpu0, nic0);
        assert_eq!((p.ptype, p.bw_gbytes), (PathType::PIX, 24.0));
        assert!(matches!(p.via, Via::Switch { .. }));
        // switch to switch is PXB; the x8 GPU link is the bottleneck (24 GB/s).
        let p = classify(&t, gpu1, nic0);
        assert_eq!((p.ptype, p.bw_gbytes), (PathType::PXB, 24.0));
        // across CPUs is SYS, at the SPR inter-socket rate.
        let p = classify(&t, gpu2, nic0);
        assert_eq!((p.ptype, p.bw_gbytes), (PathType::SYS, 22.0));
        // to a CPU node (a NIC without PCI) is PHB.
        assert_eq!(classify(&t, gpu0, cpu0).ptype, PathType::PHB);
        assert_eq!(classify(&t, gpu0, gpu0).ptype, PathType::LOC);
        // symmetric
        assert_eq!(classify(&t, nic0, gpu1).ptype, PathType::PXB);
    }

    #[test]
    fn broadcom_gen5_switches_are_flattened() {
        let mut t = Topology::default();
        let cpu = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
        let bcm = |busid: &str, sd: u16| {
            let mut p = Pci::new(busid, 0x060400);
            p.vendor = Some(0x1000);
            p.device = Some(0xc030);
            p.subsystem_vendor = Some(0x1000);
            p.subsystem_device = Some(sd);
            NodeKind::Pci(p)
        };
        let top = t.add_node(Some(cpu), bcm("0000:10:00.0", 0x00a0));
        let left = t.add_node(Some(top), bcm("0000:11:00.0", 0x10a0));
        let right = t.add_node(Some(top), bcm("0000:12:00.0", 0x10a0));
        let gpu = t.add_node(Some(left), pci("0000:13:00.0", 0x030200, "", 0));
        let nic = t.add_node(Some(right), pci("0000:14:00.0", 0x020700, "", 0));
        t.nets.push(Net::new("mlx5_0", nic, NetKind::Ib));
        assert!(is_absorbed_bcm_switch(&t, left));
        assert!(!is_absorbed_bcm_switch(&t, top));
        let p = classify(&t, gpu, nic);
        assert_eq!(p.ptype, PathType::PIX);
        assert_eq!(p.hops, vec![gpu, top, nic]);
        // Without the Broadcom ids the same tree is PXB.
        for id in [top, left, right] {
            if let NodeKind::Pci(p) = &mut t.nodes[id].kind {
                p.vendor = Some(0x10b5);
            }
        }
        assert_eq!(classify(&t, gpu, nic).ptype, PathType::PXB);
    }

    #[test]
    fn smi_labels_from_sysfs_paths() {
        let (mut t, [gpu0, _, _, nic0, _]) = sample();
        let set = |t: &mut Topology, id: NodeId, path: &[&str]| {
            if let NodeKind::Pci(p) = &mut t.nodes[id].kind {
                p.sysfs_path = Some(path.iter().map(|s| s.to_string()).collect());
            }
        };
        // Same switch: each end one downstream port below the upstream port.
        set(
            &mut t,
            gpu0,
            &[
                "pci0000:10",
                "0000:10:01.0",
                "0000:11:00.0",
                "0000:12:00.0",
                "0000:13:00.0",
            ],
        );
        set(
            &mut t,
            nic0,
            &[
                "pci0000:10",
                "0000:10:01.0",
                "0000:11:00.0",
                "0000:12:01.0",
                "0000:14:00.0",
            ],
        );
        assert_eq!(classify(&t, gpu0, nic0).smi, SmiLabel::PIX);
        // Same host bridge, different root ports.
        set(
            &mut t,
            nic0,
            &["pci0000:10", "0000:10:02.0", "0000:14:00.0"],
        );
        assert_eq!(classify(&t, gpu0, nic0).smi, SmiLabel::PHB);
        // Different host bridges on one NUMA node.
        set(
            &mut t,
            nic0,
            &["pci0000:20", "0000:20:02.0", "0000:21:00.0"],
        );
        assert_eq!(classify(&t, gpu0, nic0).smi, SmiLabel::NODE);
    }

    #[test]
    fn nvlink_between_gpus() {
        let (mut t, [gpu0, gpu1, ..]) = sample();
        t.gpus.push(Gpu {
            node: gpu0,
            dev: 0,
            class: DeviceClass::Gpu,
            sm: Some(90),
            rank: None,
            gdr: None,
            name: None,
            nvlinks: vec![NvLink {
                target: "0000:14:00.0".into(),
                count: 18,
                tclass: 0x030200,
            }],
        });
        t.gpus.push(Gpu {
            node: gpu1,
            dev: 1,
            class: DeviceClass::Gpu,
            sm: Some(90),
            rank: None,
            gdr: None,
            name: None,
            nvlinks: vec![],
        });
        let p = classify(&t, gpu0, gpu1);
        assert_eq!((p.ptype, p.smi), (PathType::NVL, SmiLabel::NV));
        assert!((p.bw_gbytes - 18.0 * 20.6).abs() < 1e-9);
    }

    /// The classification as it was before [`Classifier`] (a tree walk per
    /// pair, a scan of every GPU and NIC per hop), kept as the reference
    /// the indexed one must match.
    mod reference {
        use super::super::*;

        fn chain(topo: &Topology, id: NodeId) -> Vec<NodeId> {
            let mut out = vec![id];
            let mut cur = id;
            while let Some(p) = effective_parent(topo, cur) {
                out.push(p);
                cur = p;
            }
            out
        }

        fn nvlink_path(topo: &Topology, a: NodeId, b: NodeId) -> Option<Path> {
            let ga = topo.gpu_at(a)?;
            let pb = topo.pci(b)?;
            topo.gpu_at(b)?;
            let link = ga.nvlinks.iter().find(|l| l.target == pb.busid)?;
            let per_link = match ga.sm.unwrap_or(0) {
                s if s >= 100 => 40.1,
                s if s >= 90 => 20.6,
                86..=89 => 12.0,
                s if s >= 70 => 20.0,
                s if s >= 60 => 18.0,
                _ => 20.0,
            };
            Some(Path {
                ptype: PathType::NVL,
                smi: SmiLabel::NV,
                bw_gbytes: per_link * link.count as f64,
                hops: vec![a, b],
                via: Via::Nvlink { count: link.count },
            })
        }

        pub fn classify(topo: &Topology, a: NodeId, b: NodeId) -> Path {
            if a == b {
                return Path {
                    ptype: PathType::LOC,
                    smi: SmiLabel::X,
                    bw_gbytes: LOC_BW,
                    hops: vec![a],
                    via: Via::Same,
                };
            }
            if let Some(p) = nvlink_path(topo, a, b) {
                return p;
            }
            let ca = chain(topo, a);
            let cb = chain(topo, b);
            let (hops, via) = match ca.iter().position(|n| cb.contains(n)) {
                Some(ia) => {
                    let lca = ca[ia];
                    let ib = cb.iter().position(|n| *n == lca).unwrap_or(cb.len() - 1);
                    let mut hops: Vec<NodeId> = ca[..=ia].to_vec();
                    hops.extend(cb[..ib].iter().rev());
                    let via = match &topo.nodes[lca].kind {
                        NodeKind::Cpu(c) => Via::Cpu { numa: c.numaid },
                        NodeKind::Pci(_) => Via::Switch { node: lca },
                    };
                    (hops, via)
                }
                None => {
                    let mut hops = ca.clone();
                    hops.extend(cb.iter().rev());
                    let via = Via::Cpus {
                        from: topo.numa_of(a),
                        to: topo.numa_of(b),
                    };
                    (hops, via)
                }
            };
            let mut ptype = PathType::LOC;
            let mut bw = f64::INFINITY;
            for w in hops.windows(2) {
                let (hop, link_bw) = hop_of(topo, w[0], w[1]);
                ptype = ptype.max(hop);
                bw = bw.min(link_bw);
            }
            let smi = smi_label(topo, a, b, ptype);
            Path {
                ptype,
                smi,
                bw_gbytes: bw,
                hops,
                via,
            }
        }
    }

    /// Every ordered pair of nodes: the indexed classification equals the
    /// reference, and `keys_from` either end gives its type and bandwidth.
    fn assert_matches_reference(t: &Topology, what: &str) {
        let c = Classifier::new(t);
        let keys: Vec<Vec<Option<PathKey>>> = (0..t.nodes.len()).map(|a| c.keys_from(a)).collect();
        for a in 0..t.nodes.len() {
            for b in 0..t.nodes.len() {
                let want = reference::classify(t, a, b);
                assert_eq!(c.classify(a, b), want, "{what}: {a} -> {b}");
                let k = (want.ptype, want.bw_gbytes);
                assert_eq!(c.key(&keys[a], a, b), k, "{what}: key {a} -> {b} from {a}");
                assert_eq!(c.key(&keys[b], a, b), k, "{what}: key {a} -> {b} from {b}");
            }
        }
    }

    #[test]
    fn indexed_classification_matches_the_reference() {
        let (mut t, [gpu0, gpu1, ..]) = sample();
        assert_matches_reference(&t, "sample");
        // With GPUs (a GPU node is an endpoint, not a switch) and NVLinks,
        // one of them to itself, one to a device that is not a GPU.
        t.gpus.push(Gpu::new(gpu0, 0, DeviceClass::Gpu));
        t.gpus.push(Gpu::new(gpu1, 1, DeviceClass::Gpu));
        t.gpus[0].sm = Some(90);
        for target in [
            "0000:14:00.0",
            "0000:11:00.0",
            "0000:12:00.0",
            "fffffff:ffff:ff",
        ] {
            t.gpus[0].nvlinks.push(NvLink {
                target: target.into(),
                count: 4,
                tclass: 0x030200,
            });
        }
        assert_matches_reference(&t, "sample with GPUs");

        // The fake DGX (sysfs paths, NODE labels) and the fixtures.
        let dir = tempfile::tempdir().unwrap();
        crate::fake::FakeHost::dgx_h100_like()
            .write(dir.path())
            .unwrap();
        let t = crate::probe_sysfs(dir.path()).unwrap();
        assert_matches_reference(&t, "fake DGX");
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/topologies");
        for entry in std::fs::read_dir(&fixtures).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "xml") {
                let t = crate::xml::load(&path).unwrap();
                assert_matches_reference(&t, &path.display().to_string());
            }
        }
    }

    #[test]
    fn indexed_classification_matches_the_reference_on_broadcom_trees() {
        // Gen5 Broadcom: top switch, two absorbed children, one of which
        // has a plain switch below it; devices at every level.
        let mut t = Topology::default();
        let cpu0 = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
        let cpu1 = t.add_node(None, NodeKind::Cpu(Cpu::new(1)));
        let bcm = |busid: &str, sd: u16| {
            let mut p = Pci::new(busid, 0x060400);
            p.vendor = Some(0x1000);
            p.device = Some(0xc030);
            p.subsystem_vendor = Some(0x1000);
            p.subsystem_device = Some(sd);
            p.link_speed = "32.0 GT/s PCIe".into();
            p.link_width = 16;
            NodeKind::Pci(p)
        };
        let top = t.add_node(Some(cpu0), bcm("0000:10:00.0", 0x00a0));
        let left = t.add_node(Some(top), bcm("0000:11:00.0", 0x10a0));
        let right = t.add_node(Some(top), bcm("0000:12:00.0", 0x10a0));
        let plain = t.add_node(
            Some(right),
            pci("0000:15:00.0", 0x060400, "16.0 GT/s PCIe", 8),
        );
        let g0 = t.add_node(Some(left), pci("0000:13:00.0", 0x030200, "", 0));
        let n0 = t.add_node(Some(right), pci("0000:14:00.0", 0x020700, "", 0));
        let n1 = t.add_node(Some(plain), pci("0000:16:00.0", 0x020700, "", 4));
        let g1 = t.add_node(Some(top), pci("0000:17:00.0", 0x030200, "", 0));
        let g2 = t.add_node(Some(cpu1), pci("0000:90:00.0", 0x0b4000, "", 0));
        t.gpus = vec![
            Gpu::new(g0, 0, DeviceClass::Gpu),
            Gpu::new(g1, 1, DeviceClass::Gpu),
            Gpu::new(g2, 2, DeviceClass::Accelerator),
        ];
        t.nets.push(Net::new("mlx5_0", n0, NetKind::Ib));
        t.nets.push(Net::new("mlx5_1", n1, NetKind::Ib));
        t.nets.push(Net::new("eth0", cpu1, NetKind::Socket));
        assert_matches_reference(&t, "broadcom");
    }

    #[test]
    fn nvlink_targets_match_as_numbers() {
        let (mut t, [gpu0, gpu1, ..]) = sample();
        t.gpus.push(Gpu::new(gpu0, 0, DeviceClass::Gpu));
        t.gpus.push(Gpu::new(gpu1, 1, DeviceClass::Gpu));
        // NVML's 8-digit domain, upper case: the same device as 0000:14:00.0.
        t.gpus[0].nvlinks.push(NvLink {
            target: "00000000:14:00.0".into(),
            count: 2,
            tclass: 0x030200,
        });
        let p = classify(&t, gpu0, gpu1);
        assert_eq!((p.ptype, p.via), (PathType::NVL, Via::Nvlink { count: 2 }));
        // One-way, as in the file.
        assert_eq!(classify(&t, gpu1, gpu0).ptype, PathType::PXB);
        // A garbage target matches nothing.
        t.gpus[0].nvlinks[0].target = "garbage".into();
        assert_eq!(classify(&t, gpu0, gpu1).ptype, PathType::PXB);
    }
}

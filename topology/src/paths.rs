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

fn chain(topo: &Topology, id: NodeId) -> Vec<NodeId> {
    let mut out = vec![id];
    let mut cur = id;
    while let Some(p) = effective_parent(topo, cur) {
        out.push(p);
        cur = p;
    }
    out
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
        let (u, v) = (w[0], w[1]);
        let (hop, link_bw) = hop_of(topo, u, v);
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
}

//! GPU → NIC affinity: for each GPU, its NICs ordered by path bandwidth then
//! path type, the set of closest NICs, and a primary NIC chosen with NCCL's
//! tie-break so that GPUs sharing NICs spread over them evenly.
//!
//! The rules (NCCL's `ncclTopoGetLocal` / `ncclTopoGetLocalNet`):
//! * the closest set is the NICs with the highest path bandwidth, then among
//!   those the lowest path type, in NIC (`dev`) order;
//! * `nGpus` is the number of GPUs closest to the first NIC of that set (same
//!   rule seen from the NIC);
//! * the primary NIC is `closest[start % nNets]` with `start = dev % nGpus`,
//!   bit-mirrored within `log2(nNets)` bits when `nNets` is a power of two.

use crate::model::{NetKind, PathType, PortState, Topology};
use crate::paths::{Path, classify};
use serde::Serialize;
use std::cmp::Ordering;

/// One NIC as seen from one GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NicPath {
    /// Index into [`Topology::nets`].
    pub net: usize,
    /// The classified PCI path from the GPU to the NIC.
    pub path: Path,
    /// Usable bandwidth in GB/s: the path's, capped by the port speed when
    /// the speed is known.
    pub bw_gbytes: f64,
}

/// The affinity of one GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuAffinity {
    /// Index into [`Topology::gpus`].
    pub gpu: usize,
    /// Every candidate NIC, best first (bandwidth, then path type, then NIC
    /// order).
    pub nics: Vec<NicPath>,
    /// Indices into [`Topology::nets`] of the closest NICs, in NIC order.
    pub closest: Vec<usize>,
    /// Index into [`Topology::nets`] of the primary NIC (None without NICs).
    pub primary: Option<usize>,
    /// How many GPUs share the closest NICs (`nGpus`).
    pub sharing_gpus: usize,
    /// One line explaining the choice.
    pub reason: String,
}

/// The NICs a GPU may use: every port except loopback and ports known to be
/// down.
///
/// ```
/// use zccl_topology::model::*;
/// use zccl_topology::affinity::candidate_nets;
/// let mut t = Topology::default();
/// let cpu = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
/// t.nets.push(Net::new("eth0", cpu, NetKind::Socket));
/// let mut down = Net::new("eth1", cpu, NetKind::Socket);
/// down.state = PortState::Down;
/// t.nets.push(down);
/// assert_eq!(candidate_nets(&t), vec![0]);
/// ```
pub fn candidate_nets(topo: &Topology) -> Vec<usize> {
    (0..topo.nets.len())
        .filter(|&i| {
            let n = &topo.nets[i];
            !n.is_loopback() && n.state != PortState::Down
        })
        .collect()
}

fn usable_bw(topo: &Topology, net: usize, path: &Path) -> f64 {
    match topo.nets[net].speed_mbps {
        Some(mbps) if mbps > 0 => path.bw_gbytes.min(mbps as f64 / 8000.0),
        _ => path.bw_gbytes,
    }
}

fn same_bw(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Order two (bandwidth, type) pairs: higher bandwidth first, then lower type.
fn better(a: (f64, PathType), b: (f64, PathType)) -> Ordering {
    if same_bw(a.0, b.0) {
        a.1.cmp(&b.1)
    } else {
        b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal)
    }
}

/// Mirror the low `log2(pow2)` bits of `val` (NCCL's `mirrorBits`).
///
/// ```
/// use zccl_topology::affinity::mirror_bits;
/// assert_eq!(mirror_bits(1, 4), 2);
/// assert_eq!(mirror_bits(3, 8), 6);
/// assert_eq!(mirror_bits(5, 1), 0);
/// ```
pub fn mirror_bits(val: usize, pow2: usize) -> usize {
    let mut mirror = 0;
    let (mut b, mut mb) = (1, pow2 >> 1);
    while b < pow2 {
        if val & b != 0 {
            mirror |= mb;
        }
        b <<= 1;
        mb >>= 1;
    }
    mirror
}

/// Compute every GPU's affinity. GPUs are returned in `dev` order; a
/// topology without GPUs gives an empty list.
///
/// ```
/// use zccl_topology::{xml, affinity::affinity};
/// let t = xml::parse_str(r#"<system version="1"><cpu numaid="0">
///   <pci busid="ffff:ff:01.0" class="0x060400" link_speed="16 GT/s" link_width="16">
///     <pci busid="0001:00:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"/>
///     <pci busid="0101:00:00.0" class="0x020700" link_speed="16 GT/s" link_width="16"/>
///   </pci></cpu></system>"#, "inline").unwrap();
/// let a = affinity(&t);
/// assert_eq!(t.nets[a[0].primary.unwrap()].name, "0101:00:00.0");
/// ```
pub fn affinity(topo: &Topology) -> Vec<GpuAffinity> {
    let nets = candidate_nets(topo);
    // paths[g][k]: GPU g to candidate NIC nets[k].
    let paths: Vec<Vec<(Path, f64)>> = topo
        .gpus
        .iter()
        .map(|g| {
            nets.iter()
                .map(|&n| {
                    let p = classify(topo, g.node, topo.nets[n].node);
                    let bw = usable_bw(topo, n, &p);
                    (p, bw)
                })
                .collect()
        })
        .collect();
    let key = |g: usize, k: usize| (paths[g][k].1, paths[g][k].0.ptype);

    (0..topo.gpus.len())
        .map(|g| {
            let mut order: Vec<usize> = (0..nets.len()).collect();
            order.sort_by(|&x, &y| better(key(g, x), key(g, y)).then(x.cmp(&y)));
            let closest_k: Vec<usize> = match order.first() {
                Some(&best) => {
                    let mut c: Vec<usize> = order
                        .iter()
                        .copied()
                        .filter(|&k| better(key(g, k), key(g, best)) == Ordering::Equal)
                        .collect();
                    c.sort_unstable();
                    c
                }
                None => Vec::new(),
            };
            let (primary_k, sharing) = match closest_k.first() {
                Some(&first) => {
                    // GPUs closest to the first closest NIC, seen from the NIC.
                    let best = (0..topo.gpus.len())
                        .map(|h| key(h, first))
                        .min_by(|a, b| better(*a, *b))
                        .unwrap_or(key(g, first));
                    let n_gpus = (0..topo.gpus.len())
                        .filter(|&h| better(key(h, first), best) == Ordering::Equal)
                        .count()
                        .max(1);
                    let n_nets = closest_k.len();
                    let mut start = topo.gpus[g].dev as usize % n_gpus;
                    if n_nets.is_power_of_two() {
                        start = mirror_bits(start, n_nets);
                    }
                    (Some(closest_k[start % n_nets]), n_gpus)
                }
                None => (None, 0),
            };
            let nics: Vec<NicPath> = order
                .iter()
                .map(|&k| NicPath {
                    net: nets[k],
                    path: paths[g][k].0.clone(),
                    bw_gbytes: paths[g][k].1,
                })
                .collect();
            let closest: Vec<usize> = closest_k.iter().map(|&k| nets[k]).collect();
            let primary = primary_k.map(|k| nets[k]);
            let reason = explain(
                topo,
                g,
                primary_k.map(|k| (nets[k], &paths[g][k])),
                &closest,
                sharing,
            );
            GpuAffinity {
                gpu: g,
                nics,
                closest,
                primary,
                sharing_gpus: sharing,
                reason,
            }
        })
        .collect()
}

/// Format a bandwidth in GB/s as Gb/s for people (`400 Gb/s`, `12.5 Gb/s`).
pub fn gbits(gbytes: f64) -> String {
    let g = gbytes * 8.0;
    if (g - g.round()).abs() < 0.05 {
        format!("{:.0} Gb/s", g)
    } else {
        format!("{:.1} Gb/s", g)
    }
}

fn explain(
    topo: &Topology,
    g: usize,
    primary: Option<(usize, &(Path, f64))>,
    closest: &[usize],
    sharing: usize,
) -> String {
    let gpu = &topo.gpus[g];
    let busid = topo.label(gpu.node);
    let Some((net, (path, bw))) = primary else {
        return format!("GPU {busid} (dev {}): no usable NIC", gpu.dev);
    };
    let n = &topo.nets[net];
    let mut line = format!(
        "GPU {busid} -> {}: {} via {}, {}",
        n.name,
        path.ptype,
        path.via.describe(topo),
        gbits(*bw)
    );
    if n.speed_mbps.is_none() {
        line.push_str(" (PCIe; port speed unknown)");
    }
    if n.kind == NetKind::Socket && n.is_virtual {
        line.push_str(", virtual NIC");
    }
    if closest.len() > 1 || sharing > 1 {
        let pos = closest.iter().position(|&c| c == net).unwrap_or(0) + 1;
        line.push_str(&format!(
            "; {} closest NIC(s) shared by {} GPU(s), dev {} takes #{}",
            closest.len(),
            sharing,
            gpu.dev,
            pos
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    /// `groups` switches, each with `gpus` GPUs and `nics` NICs, all on one CPU.
    fn grouped(groups: usize, gpus: usize, nics: usize) -> Topology {
        let mut t = Topology::default();
        let cpu = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
        let mut dev = 0;
        for s in 0..groups {
            let sw = t.add_node(
                Some(cpu),
                NodeKind::Pci(Pci::new(
                    &format!("0000:{:02x}:00.0", 0x10 * (s + 1)),
                    0x060400,
                )),
            );
            for i in 0..gpus {
                let id = t.add_node(
                    Some(sw),
                    NodeKind::Pci(Pci::new(
                        &format!("0000:{:02x}:00.0", 0x10 * (s + 1) + 1 + i),
                        0x030200,
                    )),
                );
                t.gpus.push(Gpu::new(id, dev, DeviceClass::Gpu));
                dev += 1;
            }
            for i in 0..nics {
                let id = t.add_node(
                    Some(sw),
                    NodeKind::Pci(Pci::new(
                        &format!("0000:{:02x}:00.0", 0x10 * (s + 1) + 8 + i),
                        0x020700,
                    )),
                );
                let mut n = Net::new(&format!("mlx5_{}", t.nets.len()), id, NetKind::Ib);
                n.dev = t.nets.len() as u32;
                t.nets.push(n);
            }
        }
        t
    }

    fn primaries(t: &Topology) -> Vec<String> {
        affinity(t)
            .iter()
            .map(|a| t.nets[a.primary.unwrap()].name.clone())
            .collect()
    }

    #[test]
    fn one_to_one_pix() {
        let t = grouped(4, 1, 1);
        assert_eq!(primaries(&t), ["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"]);
        let a = affinity(&t);
        assert_eq!(a[0].closest, vec![0]);
        assert_eq!(a[0].nics[0].path.ptype, PathType::PIX);
        assert_eq!(a[0].nics[1].path.ptype, PathType::PHB);
        assert!(
            a[0].reason
                .starts_with("GPU 0000:11:00.0 -> mlx5_0: PIX via switch 0000:10:00.0"),
            "{}",
            a[0].reason
        );
    }

    #[test]
    fn gpus_sharing_nics_spread_evenly() {
        // 2 GPUs, 2 NICs per switch: each GPU its own NIC.
        assert_eq!(
            primaries(&grouped(2, 2, 2)),
            ["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"]
        );
        // 4 GPUs, 4 NICs per switch: mirrored order 0, 2, 1, 3.
        assert_eq!(
            primaries(&grouped(1, 4, 4)),
            ["mlx5_0", "mlx5_2", "mlx5_1", "mlx5_3"]
        );
        // 4 GPUs, 2 NICs: two GPUs per NIC, balanced.
        let p = primaries(&grouped(1, 4, 2));
        assert_eq!(p.iter().filter(|n| *n == "mlx5_0").count(), 2);
        // 1 GPU, 2 NICs: the GPU takes the first.
        assert_eq!(primaries(&grouped(1, 1, 2)), ["mlx5_0"]);
    }

    #[test]
    fn bandwidth_beats_path_type() {
        // A PIX NIC at 100 Gb/s loses to a PHB NIC at 400 Gb/s.
        let mut t = grouped(2, 1, 1);
        t.nets[0].speed_mbps = Some(100_000);
        t.nets[1].speed_mbps = Some(400_000);
        // Widen the GPU links so PCIe is not the cap.
        for n in &mut t.nodes {
            if let NodeKind::Pci(p) = &mut n.kind {
                p.link_speed = "32.0 GT/s PCIe".into();
                p.link_width = 16;
            }
        }
        let a = affinity(&t);
        assert_eq!(t.nets[a[0].primary.unwrap()].name, "mlx5_1");
        assert_eq!(a[0].nics[0].path.ptype, PathType::PHB);
    }

    #[test]
    fn down_and_loopback_ports_are_skipped_and_no_gpu_is_fine() {
        let mut t = grouped(1, 1, 2);
        t.nets[0].state = PortState::Down;
        assert_eq!(primaries(&t), ["mlx5_1"]);
        t.gpus.clear();
        assert!(affinity(&t).is_empty());
        let mut t = grouped(1, 1, 0);
        assert_eq!(affinity(&t)[0].primary, None);
        let cpu = t.cpus[0];
        t.nets.push(Net::new("lo", cpu, NetKind::Socket));
        assert_eq!(affinity(&t)[0].primary, None);
        assert!(affinity(&t)[0].reason.contains("no usable NIC"));
    }
}

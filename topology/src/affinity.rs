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
use crate::paths::{Classifier, Path, PathKey};
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::HashMap;

/// At most this many NICs are listed per GPU in [`GpuAffinity::nics`] and
/// [`GpuAffinity::closest`] (plus the primary NIC when it falls beyond).
/// Real hosts have at most 32 NICs, so this only trims synthetic topologies
/// with thousands of NICs, whose every-GPU × every-NIC lists would otherwise
/// take gigabytes.
pub const MAX_LISTED_NICS: usize = 64;

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
    /// order); at most the first [`MAX_LISTED_NICS`], then the primary NIC
    /// if it is not among them.
    pub nics: Vec<NicPath>,
    /// How many candidate NICs `nics` leaves out (0 on any real host).
    pub nics_omitted: usize,
    /// Indices into [`Topology::nets`] of the closest NICs, in NIC order; at
    /// most the first [`MAX_LISTED_NICS`], then the primary NIC if it is not
    /// among them.
    pub closest: Vec<usize>,
    /// How many closest NICs `closest` leaves out (0 on any real host).
    pub closest_omitted: usize,
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

/// A path's bandwidth capped by the port speed, when known.
fn usable_bw(topo: &Topology, net: usize, path_bw: f64) -> f64 {
    match topo.nets[net].speed_mbps {
        Some(mbps) if mbps > 0 => path_bw.min(mbps as f64 / 8000.0),
        _ => path_bw,
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
    let cls = Classifier::new(topo);
    let net_nodes: Vec<usize> = nets.iter().map(|&n| topo.nets[n].node).collect();
    // key(k) from a GPU: (usable bandwidth, path type) to candidate NIC k.
    let key_of = |keys: &[Option<PathKey>], gpu_node: usize, k: usize| {
        let (ptype, bw) = cls.key(keys, gpu_node, net_nodes[k]);
        (usable_bw(topo, nets[k], bw), ptype)
    };
    let mut keys = Vec::new();
    // nGpus of a NIC: how many GPUs are closest to it, seen from the NIC.
    let mut sharing: HashMap<usize, usize> = HashMap::new();
    let mut row: Vec<(f64, PathType)> = Vec::with_capacity(nets.len());

    let mut out = Vec::with_capacity(topo.gpus.len());
    for (g, gpu) in topo.gpus.iter().enumerate() {
        cls.keys_into(gpu.node, &mut keys);
        row.clear();
        row.extend((0..nets.len()).map(|k| key_of(&keys, gpu.node, k)));
        let cmp = |x: &usize, y: &usize| better(row[*x], row[*y]).then(x.cmp(y));
        let mut order: Vec<usize> = (0..nets.len()).collect();
        if order.len() > MAX_LISTED_NICS {
            order.select_nth_unstable_by(MAX_LISTED_NICS - 1, cmp);
            order.truncate(MAX_LISTED_NICS);
        }
        order.sort_by(cmp);
        let closest_k: Vec<usize> = match order.first() {
            Some(&best) => (0..nets.len())
                .filter(|&k| better(row[k], row[best]) == Ordering::Equal)
                .collect(),
            None => Vec::new(),
        };
        let (primary_k, n_gpus) = match closest_k.first() {
            Some(&first) => {
                let n_gpus = *sharing.entry(first).or_insert_with(|| {
                    let mut from_nic = Vec::new();
                    cls.keys_into(net_nodes[first], &mut from_nic);
                    let col: Vec<(f64, PathType)> = topo
                        .gpus
                        .iter()
                        .map(|h| key_of(&from_nic, h.node, first))
                        .collect();
                    // GPUs closest to the first closest NIC, seen from the NIC.
                    let best = col
                        .iter()
                        .copied()
                        .min_by(|a, b| better(*a, *b))
                        .unwrap_or(row[first]);
                    col.iter()
                        .filter(|&&k| better(k, best) == Ordering::Equal)
                        .count()
                        .max(1)
                });
                let n_nets = closest_k.len();
                let mut start = gpu.dev as usize % n_gpus;
                if n_nets.is_power_of_two() {
                    start = mirror_bits(start, n_nets);
                }
                (Some(closest_k[start % n_nets]), n_gpus)
            }
            None => (None, 0),
        };
        let nic_path = |k: usize| NicPath {
            net: nets[k],
            path: cls.classify(gpu.node, net_nodes[k]),
            bw_gbytes: row[k].0,
        };
        let mut nics: Vec<NicPath> = order.iter().map(|&k| nic_path(k)).collect();
        if let Some(p) = primary_k
            && !order.contains(&p)
        {
            nics.push(nic_path(p));
        }
        let closest: Vec<usize> = closest_k.iter().map(|&k| nets[k]).collect();
        let primary = primary_k.map(|k| nets[k]);
        let primary_path = primary
            .and_then(|p| nics.iter().find(|n| n.net == p))
            .map(|n| (n.path.clone(), n.bw_gbytes));
        let reason = explain(
            topo,
            g,
            primary.zip(primary_path.as_ref()),
            &closest,
            n_gpus,
        );
        let mut listed: Vec<usize> = closest.iter().copied().take(MAX_LISTED_NICS).collect();
        if let Some(p) = primary
            && !listed.contains(&p)
        {
            listed.push(p);
        }
        out.push(GpuAffinity {
            gpu: g,
            nics_omitted: nets.len() - nics.len(),
            nics,
            closest_omitted: closest.len() - listed.len(),
            closest: listed,
            primary,
            sharing_gpus: n_gpus,
            reason,
        });
    }
    out
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

    /// The affinity as it was computed before (every pair classified and
    /// kept, no limit), for comparison. (`Classifier::classify` is checked
    /// against the previous classification in `paths`.)
    fn reference(topo: &Topology) -> Vec<GpuAffinity> {
        let nets = candidate_nets(topo);
        let cls = Classifier::new(topo);
        let paths: Vec<Vec<(Path, f64)>> = topo
            .gpus
            .iter()
            .map(|g| {
                nets.iter()
                    .map(|&n| {
                        let p = cls.classify(g.node, topo.nets[n].node);
                        let bw = usable_bw(topo, n, p.bw_gbytes);
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
                let closest: Vec<usize> = closest_k.iter().map(|&k| nets[k]).collect();
                let reason = explain(
                    topo,
                    g,
                    primary_k.map(|k| (nets[k], &paths[g][k])),
                    &closest,
                    sharing,
                );
                GpuAffinity {
                    gpu: g,
                    nics: order
                        .iter()
                        .map(|&k| NicPath {
                            net: nets[k],
                            path: paths[g][k].0.clone(),
                            bw_gbytes: paths[g][k].1,
                        })
                        .collect(),
                    nics_omitted: 0,
                    closest,
                    closest_omitted: 0,
                    primary: primary_k.map(|k| nets[k]),
                    sharing_gpus: sharing,
                    reason,
                }
            })
            .collect()
    }

    #[test]
    fn same_as_the_reference_on_small_hosts() {
        let mut shapes = vec![
            grouped(4, 1, 1),
            grouped(2, 2, 2),
            grouped(1, 4, 4),
            grouped(1, 4, 2),
            grouped(3, 2, 5),
            grouped(2, 0, 3),
            grouped(2, 3, 0),
        ];
        let mut t = grouped(2, 2, 2);
        t.nets[1].speed_mbps = Some(100_000);
        t.nets[2].state = PortState::Down;
        shapes.push(t);
        let dir = tempfile::tempdir().unwrap();
        crate::fake::FakeHost::dgx_h100_like()
            .write(dir.path())
            .unwrap();
        shapes.push(crate::probe_sysfs(dir.path()).unwrap());
        for (i, t) in shapes.iter().enumerate() {
            assert_eq!(affinity(t), reference(t), "shape {i}");
        }
    }

    #[test]
    fn many_nics_are_listed_up_to_the_limit() {
        // 80 GPUs and 100 NICs behind one switch: every NIC ties.
        let t = grouped(1, 80, 100);
        let (got, want) = (affinity(&t), reference(&t));
        for (a, r) in got.iter().zip(&want) {
            assert_eq!((a.primary, a.sharing_gpus), (r.primary, r.sharing_gpus));
            assert_eq!(a.reason, r.reason);
            let p = a.primary.unwrap();
            let pos = r.nics.iter().position(|n| n.net == p).unwrap();
            let listed = MAX_LISTED_NICS + usize::from(pos >= MAX_LISTED_NICS);
            assert_eq!(a.nics.len(), listed);
            assert_eq!(a.nics[..MAX_LISTED_NICS], r.nics[..MAX_LISTED_NICS]);
            assert_eq!(a.nics.last().unwrap().net == p, pos >= MAX_LISTED_NICS - 1);
            assert_eq!(a.nics_omitted, 100 - listed);
            assert_eq!(a.closest.len(), listed);
            assert_eq!(a.closest[..MAX_LISTED_NICS], r.closest[..MAX_LISTED_NICS]);
            assert!(a.closest.contains(&p));
            assert_eq!(a.closest_omitted, 100 - listed);
        }
        // Some GPUs' primary NIC is beyond the limit, and is listed anyway.
        assert!(got.iter().any(|a| a.nics.len() == MAX_LISTED_NICS + 1));
        // At or under the limit nothing is left out.
        let t = grouped(2, 3, MAX_LISTED_NICS / 2);
        assert_eq!(affinity(&t), reference(&t));
        assert!(affinity(&t).iter().all(|a| a.nics_omitted == 0));
    }

    #[test]
    fn a_big_synthetic_file_is_ranked_like_the_reference() {
        let text = crate::fake::many_devices_xml(150, 120);
        let t = crate::xml::parse_str(&text, "many").unwrap();
        let (got, want) = (affinity(&t), reference(&t));
        for (a, r) in got.iter().zip(&want) {
            assert_eq!(a.nics[..], r.nics[..a.nics.len()]);
            assert_eq!(a.nics.len(), MAX_LISTED_NICS);
            assert_eq!(a.nics_omitted, 120 - MAX_LISTED_NICS);
            assert_eq!(
                (&a.closest, a.primary, a.sharing_gpus, &a.reason),
                (&r.closest, r.primary, r.sharing_gpus, &r.reason)
            );
        }
    }
}

//! Writing a [`Topology`] as NCCL topology XML: the bus-ID-sorted tree,
//! attributes in NCCL's order, partial leaves written back as bare
//! `<pci>` elements.

use super::import::is_ib_class;
use crate::model::{Cpu, DeviceClass, Net, NetKind, NodeId, NodeKind, Pci, PortState, Topology};
use quick_xml::escape::escape;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// True when `net` is exactly what the importer makes of a NIC `<pci>` leaf
/// without `<nic>` (apart from `dev`, checked separately).
fn is_auto_net(net: &Net, pci: &Pci) -> bool {
    let kind = if is_ib_class(pci.class) {
        NetKind::Ib
    } else {
        NetKind::Socket
    };
    pci.device_class() == DeviceClass::Nic
        && net.name == pci.busid
        && net.kind == kind
        && !net.is_virtual
        && net.speed_mbps.is_none()
        && net.port.is_none()
        && net.guid.is_none()
        && net.gdr.is_none()
        && net.rail.is_none()
        && net.latency.is_none()
        && net.maxconn.is_none()
        && net.link_layer.is_none()
        && net.state == PortState::Unknown
        && net.netdev.is_none()
}

/// What the exporter pushes on its work stack (the tree can be deep; no
/// recursion).
enum Item {
    Node(NodeId, usize),
    CpuNic(NodeId, usize),
    Close(&'static str, usize),
}

pub(super) struct Exporter {
    topo: Topology,
    /// GPUs written as `<gpu>`, per PCI node.
    gpus: HashMap<NodeId, Vec<usize>>,
    /// Nets written as `<net>`, per node, in `dev` order.
    nets: HashMap<NodeId, Vec<usize>>,
    /// Nodes whose only port is written as a bare NIC `<pci>` leaf.
    bare_nic: HashSet<NodeId>,
    out: String,
}

impl Exporter {
    pub(super) fn new(topo: &Topology) -> Self {
        let mut topo = topo.clone();
        topo.sort();
        let order = topo.dfs();
        let mut pos = vec![usize::MAX; topo.nodes.len()];
        for (i, &id) in order.iter().enumerate() {
            pos[id] = i;
        }

        let mut gpus: HashMap<NodeId, Vec<usize>> = HashMap::new();
        for (i, g) in topo.gpus.iter().enumerate() {
            // Whatever has `sm` came from a <gpu> (an accelerator too, when
            // the <gpu> sat on an accelerator-class <pci>): write it back as one.
            if g.sm.is_some() && topo.pci(g.node).is_some() {
                gpus.entry(g.node).or_default().push(i);
            }
        }

        let mut per_node: HashMap<NodeId, Vec<usize>> = HashMap::new();
        let mut net_order: Vec<usize> = (0..topo.nets.len())
            .filter(|&i| topo.nets[i].node < topo.nodes.len())
            .collect();
        net_order.sort_by_key(|&i| (pos[topo.nets[i].node], topo.nets[i].dev));
        for &i in &net_order {
            per_node.entry(topo.nets[i].node).or_default().push(i);
        }

        // Partial NIC leaves: bare only when re-import numbers them the same.
        let mut candidates: Vec<(NodeId, usize)> = Vec::new();
        for &id in &order {
            if let (Some(pci), Some(list)) = (topo.pci(id), per_node.get(&id))
                && list.len() == 1
                && is_auto_net(&topo.nets[list[0]], pci)
            {
                candidates.push((id, list[0]));
            }
        }
        let auto: HashSet<usize> = candidates.iter().map(|&(_, i)| i).collect();
        let base = net_order
            .iter()
            .filter(|i| !auto.contains(i))
            .map(|&i| topo.nets[i].dev)
            .max()
            .map_or(Some(0), |m| m.checked_add(1));
        let renumbered = candidates.iter().enumerate().all(|(k, &(_, i))| {
            base.and_then(|b| u32::try_from(k).ok().and_then(|k| b.checked_add(k)))
                == Some(topo.nets[i].dev)
        });
        let bare_nic: HashSet<NodeId> = if renumbered {
            candidates.iter().map(|&(id, _)| id).collect()
        } else {
            HashSet::new()
        };

        Exporter {
            topo,
            gpus,
            nets: per_node,
            bare_nic,
            out: String::new(),
        }
    }

    pub(super) fn write(mut self) -> String {
        self.out.push_str("<system version=\"1\">\n");
        let mut stack: Vec<Item> = self
            .topo
            .cpus
            .iter()
            .rev()
            .map(|&id| Item::Node(id, 1))
            .collect();
        while let Some(item) = stack.pop() {
            match item {
                Item::Close(name, depth) => self.close(name, depth),
                Item::CpuNic(id, depth) => self.nic(id, depth),
                Item::Node(id, depth) => {
                    let children = self.topo.nodes[id].children.clone();
                    match &self.topo.nodes[id].kind {
                        NodeKind::Cpu(cpu) => {
                            let attrs = cpu_attrs(cpu);
                            let has_nets = self.nets.contains_key(&id);
                            if children.is_empty() && !has_nets {
                                self.tag(depth, "cpu", &attrs, true);
                                continue;
                            }
                            self.tag(depth, "cpu", &attrs, false);
                            stack.push(Item::Close("cpu", depth));
                            stack.push(Item::CpuNic(id, depth + 1));
                        }
                        NodeKind::Pci(pci) => {
                            let attrs = pci_attrs(pci);
                            let gpus = self.gpus.get(&id).cloned().unwrap_or_default();
                            let bare = self.bare_nic.contains(&id);
                            let has_nets = self.nets.contains_key(&id) && !bare;
                            let empty_nic =
                                !has_nets && !bare && pci.device_class() == DeviceClass::Nic;
                            if children.is_empty() && gpus.is_empty() && !has_nets && !empty_nic {
                                self.tag(depth, "pci", &attrs, true);
                                continue;
                            }
                            self.tag(depth, "pci", &attrs, false);
                            for g in gpus {
                                self.gpu(g, depth + 1);
                            }
                            if has_nets {
                                self.nic(id, depth + 1);
                            } else if empty_nic {
                                // A NIC with no port: keeps re-import from
                                // inventing one.
                                self.tag(depth + 1, "nic", &[], true);
                            }
                            stack.push(Item::Close("pci", depth));
                        }
                    }
                    stack.extend(children.iter().rev().map(|&c| Item::Node(c, depth + 1)));
                }
            }
        }
        self.out.push_str("</system>\n");
        self.out
    }

    fn indent(&mut self, depth: usize) {
        for _ in 0..depth {
            self.out.push_str("  ");
        }
    }

    fn tag(&mut self, depth: usize, name: &str, attrs: &[(&str, String)], empty: bool) {
        self.indent(depth);
        self.out.push('<');
        self.out.push_str(name);
        for (k, v) in attrs {
            let _ = write!(self.out, " {k}=\"{}\"", escape(v.as_str()));
        }
        self.out.push_str(if empty { "/>\n" } else { ">\n" });
    }

    fn close(&mut self, name: &str, depth: usize) {
        self.indent(depth);
        let _ = writeln!(self.out, "</{name}>");
    }

    fn gpu(&mut self, index: usize, depth: usize) {
        let g = &self.topo.gpus[index];
        let mut attrs = vec![("dev", g.dev.to_string())];
        push_opt(&mut attrs, "sm", g.sm);
        push_opt(&mut attrs, "rank", g.rank);
        push_opt(&mut attrs, "gdr", g.gdr.map(u8::from));
        let links: Vec<Vec<(&str, String)>> = g
            .nvlinks
            .iter()
            .map(|l| {
                vec![
                    ("target", l.target.clone()),
                    ("count", l.count.to_string()),
                    ("tclass", format!("0x{:06x}", l.tclass)),
                ]
            })
            .collect();
        self.tag(depth, "gpu", &attrs, links.is_empty());
        if !links.is_empty() {
            for l in &links {
                self.tag(depth + 1, "nvlink", l, true);
            }
            self.close("gpu", depth);
        }
    }

    fn nic(&mut self, node: NodeId, depth: usize) {
        let Some(list) = self.nets.get(&node).cloned() else {
            return;
        };
        self.tag(depth, "nic", &[], false);
        for i in list {
            let attrs = net_attrs(&self.topo.nets[i]);
            self.tag(depth + 1, "net", &attrs, true);
        }
        self.close("nic", depth);
    }
}

fn push_opt<T: ToString>(attrs: &mut Vec<(&'static str, String)>, key: &'static str, v: Option<T>) {
    if let Some(v) = v {
        attrs.push((key, v.to_string()));
    }
}

fn cpu_attrs(cpu: &Cpu) -> Vec<(&'static str, String)> {
    let mut a = vec![("numaid", cpu.numaid.to_string())];
    push_opt(&mut a, "affinity", cpu.affinity.as_ref());
    push_opt(&mut a, "arch", cpu.arch.as_ref());
    push_opt(&mut a, "vendor", cpu.vendor.as_ref());
    push_opt(&mut a, "familyid", cpu.familyid);
    push_opt(&mut a, "modelid", cpu.modelid);
    a
}

fn pci_attrs(pci: &Pci) -> Vec<(&'static str, String)> {
    let hex16 = |v: Option<u16>| v.map(|v| format!("0x{v:04x}"));
    let mut a = vec![
        ("busid", pci.busid.clone()),
        ("class", format!("0x{:06x}", pci.class)),
    ];
    push_opt(&mut a, "vendor", hex16(pci.vendor));
    push_opt(&mut a, "device", hex16(pci.device));
    push_opt(&mut a, "subsystem_vendor", hex16(pci.subsystem_vendor));
    push_opt(&mut a, "subsystem_device", hex16(pci.subsystem_device));
    a.push(("link_speed", pci.link_speed.clone()));
    a.push(("link_width", pci.link_width.to_string()));
    a
}

fn net_attrs(net: &Net) -> Vec<(&'static str, String)> {
    let mut a = vec![("name", net.name.clone()), ("dev", net.dev.to_string())];
    push_opt(&mut a, "speed", net.speed_mbps);
    push_opt(&mut a, "port", net.port);
    push_opt(&mut a, "latency", net.latency.as_ref());
    push_opt(&mut a, "guid", net.guid.as_ref());
    push_opt(&mut a, "maxconn", net.maxconn);
    push_opt(&mut a, "gdr", net.gdr.map(u8::from));
    push_opt(&mut a, "rail", net.rail);
    push_opt(&mut a, "link_layer", net.link_layer.as_ref());
    let state = match net.state {
        PortState::Up => Some("up"),
        PortState::Down => Some("down"),
        PortState::Unknown => None,
    };
    push_opt(&mut a, "state", state);
    push_opt(&mut a, "netdev", net.netdev.as_ref());
    a
}

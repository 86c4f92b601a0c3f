//! The topology model: NCCL's XML tree (`system` / `cpu` / `pci` / `gpu` /
//! `nic` / `net`) as an arena of typed nodes, plus the facts a sysfs probe adds
//! that the XML schema cannot carry (the raw sysfs path of each PCI device,
//! MAC and IP addresses, port state).
//!
//! Both the sysfs probe ([`crate::sysfs`]) and the XML importer
//! ([`crate::xml`]) produce a [`Topology`]; everything else (path
//! classification, affinity, rendering) is a pure function of it.

use serde::Serialize;
use std::fmt;

/// Index of a node in [`Topology::nodes`].
pub type NodeId = usize;

/// A whole host: the NCCL `<system>` tree, its GPUs and its network ports.
///
/// Invariants (kept by [`Topology::add_node`] and the builders):
/// * `nodes[i].parent` is `None` exactly for CPU nodes, which are listed in
///   `cpus` in document order;
/// * every [`Gpu::node`] is a PCI node and every [`Net::node`] is a PCI or CPU
///   node;
/// * children lists are in insertion order; [`Topology::sort`] orders PCI
///   children by bus ID as NCCL does.
///
/// ```
/// use zccl_topology::model::{Topology, Cpu, Pci, NodeKind};
/// let mut t = Topology::default();
/// let cpu = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
/// let gpu = t.add_node(Some(cpu), NodeKind::Pci(Pci::new("0000:17:00.0", 0x030200)));
/// assert_eq!(t.cpu_of(gpu), cpu);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// The arena of CPU and PCI nodes.
    pub nodes: Vec<Node>,
    /// CPU (NUMA node) roots, in document order.
    pub cpus: Vec<NodeId>,
    /// GPUs and other accelerators, ordered by `dev`.
    pub gpus: Vec<Gpu>,
    /// Network ports (NCCL `<net>`), in document (depth-first) order.
    pub nets: Vec<Net>,
    /// Things a user should know about this topology (flat VM topology,
    /// unknown NUMA node, a NIC with no active port...).
    pub warnings: Vec<String>,
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// `None` for CPU nodes.
    pub parent: Option<NodeId>,
    /// Child PCI nodes.
    pub children: Vec<NodeId>,
    /// What the node is.
    pub kind: NodeKind,
}

/// A CPU (one NUMA node) or a PCI device.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// NCCL `<cpu>`: one NUMA node.
    Cpu(Cpu),
    /// NCCL `<pci>`: a PCIe switch (upstream port) or an endpoint.
    Pci(Pci),
}

/// NCCL `<cpu>` attributes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cpu {
    /// NUMA node id (`numaid`); -1 when unknown.
    pub numaid: i32,
    /// CPU mask of the node, in sysfs `cpumap` form (`affinity`).
    pub affinity: Option<String>,
    /// `x86_64`, `arm64` or `ppc64`.
    pub arch: Option<String>,
    /// `GenuineIntel`, `AuthenticAMD`, ...
    pub vendor: Option<String>,
    /// x86 family id.
    pub familyid: Option<u32>,
    /// x86 model id.
    pub modelid: Option<u32>,
}

impl Cpu {
    /// A CPU node with only its NUMA id known.
    ///
    /// ```
    /// assert_eq!(zccl_topology::model::Cpu::new(1).numaid, 1);
    /// ```
    pub fn new(numaid: i32) -> Self {
        Cpu {
            numaid,
            ..Default::default()
        }
    }
}

/// NCCL `<pci>` attributes, plus what sysfs adds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pci {
    /// Lower-case `dddd:bb:dd.f`.
    pub busid: String,
    /// 24-bit PCI class code, e.g. `0x030200`.
    pub class: u32,
    /// PCI vendor id.
    pub vendor: Option<u16>,
    /// PCI device id.
    pub device: Option<u16>,
    /// PCI subsystem vendor id.
    pub subsystem_vendor: Option<u16>,
    /// PCI subsystem device id.
    pub subsystem_device: Option<u16>,
    /// The link speed string as found (`"16.0 GT/s PCIe"`, `"16 GT/s"`, `""`).
    pub link_speed: String,
    /// Link width in lanes; 0 when unknown.
    pub link_width: u32,
    /// Probe-only: the sysfs path components below `/sys/devices`, from the
    /// host bridge (`pci0000:17`) down to this device. Lets the nvidia-smi
    /// style label tell NODE from PHB. `None` for XML-imported nodes.
    pub sysfs_path: Option<Vec<String>>,
}

impl Pci {
    /// A PCI node with a bus ID and class and nothing else.
    ///
    /// ```
    /// let p = zccl_topology::model::Pci::new("0000:1A:00.0", 0x020700);
    /// assert_eq!(p.busid, "0000:1a:00.0");
    /// ```
    pub fn new(busid: &str, class: u32) -> Self {
        Pci {
            busid: busid.to_ascii_lowercase(),
            class,
            ..Default::default()
        }
    }

    /// What the PCI class says this device is.
    ///
    /// ```
    /// use zccl_topology::model::{Pci, DeviceClass};
    /// assert_eq!(Pci::new("0000:00:01.0", 0x028000).device_class(), DeviceClass::Nic);
    /// assert_eq!(Pci::new("0000:00:01.0", 0x0b4000).device_class(), DeviceClass::Accelerator);
    /// ```
    pub fn device_class(&self) -> DeviceClass {
        DeviceClass::of(self.class)
    }

    /// The link's bandwidth in GB/s, by NCCL's formula:
    /// `width × G / 80`, with G = 15/30/60/120/240/480 for 2.5/5/8/16/32/64
    /// GT/s, 60 when the speed is unknown, and width 16 when it is 0.
    ///
    /// ```
    /// let mut p = zccl_topology::model::Pci::new("0000:00:01.0", 0x030200);
    /// p.link_speed = "16.0 GT/s PCIe".into();
    /// p.link_width = 16;
    /// assert_eq!(p.link_gbytes_per_s(), 24.0);
    /// p.link_speed = String::new();
    /// p.link_width = 0;
    /// assert_eq!(p.link_gbytes_per_s(), 12.0);
    /// ```
    pub fn link_gbytes_per_s(&self) -> f64 {
        let g = match parse_gts(&self.link_speed) {
            Some(s) if (s - 2.5).abs() < 0.01 => 15.0,
            Some(s) if (s - 5.0).abs() < 0.01 => 30.0,
            Some(s) if (s - 8.0).abs() < 0.01 => 60.0,
            Some(s) if (s - 16.0).abs() < 0.01 => 120.0,
            Some(s) if (s - 32.0).abs() < 0.01 => 240.0,
            Some(s) if (s - 64.0).abs() < 0.01 => 480.0,
            _ => 60.0,
        };
        let width = if self.link_width == 0 {
            16
        } else {
            self.link_width
        };
        width as f64 * g / 80.0
    }
}

/// Parse `"16.0 GT/s PCIe"` or `"16 GT/s"` into GT/s.
///
/// ```
/// assert_eq!(zccl_topology::model::parse_gts("2.5 GT/s PCIe"), Some(2.5));
/// assert_eq!(zccl_topology::model::parse_gts("Unknown"), None);
/// ```
pub fn parse_gts(s: &str) -> Option<f64> {
    let num = s.split_whitespace().next()?;
    let v: f64 = num.parse().ok()?;
    (v > 0.0).then_some(v)
}

/// Device kinds told apart by PCI class, with NCCL's prefix rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// `0x03....` (display controller): a GPU.
    Gpu,
    /// `0x12....` (processing accelerator) or `0x0b40..` (co-processor).
    Accelerator,
    /// `0x02....` (network controller; Ethernet, InfiniBand and "other").
    Nic,
    /// `0x0604..`: a PCI bridge, i.e. a switch port.
    Bridge,
    /// `0x0680..`: NVSwitch.
    NvSwitch,
    /// Anything else (storage, USB...).
    Other,
}

impl DeviceClass {
    /// Classify a 24-bit PCI class code.
    ///
    /// ```
    /// use zccl_topology::model::DeviceClass;
    /// assert_eq!(DeviceClass::of(0x030200), DeviceClass::Gpu);
    /// assert_eq!(DeviceClass::of(0x060400), DeviceClass::Bridge);
    /// assert_eq!(DeviceClass::of(0x010802), DeviceClass::Other);
    /// ```
    pub fn of(class: u32) -> DeviceClass {
        match class >> 16 {
            0x03 => DeviceClass::Gpu,
            0x12 => DeviceClass::Accelerator,
            0x02 => DeviceClass::Nic,
            0x0b if (class >> 8) & 0xff == 0x40 => DeviceClass::Accelerator,
            0x06 if (class >> 8) & 0xff == 0x04 => DeviceClass::Bridge,
            0x06 if (class >> 8) & 0xff == 0x80 => DeviceClass::NvSwitch,
            _ => DeviceClass::Other,
        }
    }
}

/// A GPU or accelerator (NCCL `<gpu>`, or a `<pci>` leaf whose class says GPU).
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    /// The PCI node of the device.
    pub node: NodeId,
    /// NVML/CUDA index: `dev` from XML, else position in PCI bus-ID order.
    pub dev: u32,
    /// GPU or another accelerator.
    pub class: DeviceClass,
    /// Compute capability × 10 (`sm`), when known.
    pub sm: Option<u32>,
    /// `rank` attribute, when known.
    pub rank: Option<u32>,
    /// GPUDirect RDMA capable (`gdr`), when known.
    pub gdr: Option<bool>,
    /// A kernel name for the device (`ve0`, `mic0`), when sysfs gives one.
    pub name: Option<String>,
    /// NVLink bundles (`<nvlink target count tclass>`).
    pub nvlinks: Vec<NvLink>,
}

impl Gpu {
    /// A device with only its node, index and class known.
    ///
    /// ```
    /// use zccl_topology::model::{DeviceClass, Gpu};
    /// let g = Gpu::new(3, 0, DeviceClass::Gpu);
    /// assert_eq!((g.node, g.sm), (3, None));
    /// ```
    pub fn new(node: NodeId, dev: u32, class: DeviceClass) -> Self {
        Gpu {
            node,
            dev,
            class,
            sm: None,
            rank: None,
            gdr: None,
            name: None,
            nvlinks: Vec::new(),
        }
    }
}

/// NCCL `<nvlink>`.
#[derive(Debug, Clone, PartialEq)]
pub struct NvLink {
    /// Remote bus ID.
    pub target: String,
    /// Number of links.
    pub count: u32,
    /// Remote PCI class.
    pub tclass: u32,
}

/// What kind of port a [`Net`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetKind {
    /// An RDMA port (`/sys/class/infiniband/<dev>/ports/<p>`): IB or RoCE.
    Ib,
    /// A kernel network interface used through sockets.
    Socket,
}

/// Port state, as far as it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortState {
    /// ACTIVE (IB) or operstate `up`.
    Up,
    /// Anything that is known not to carry traffic.
    Down,
    /// Not known (XML without the attribute, operstate `unknown`).
    Unknown,
}

/// One usable network port (NCCL `<net>`).
#[derive(Debug, Clone, PartialEq)]
pub struct Net {
    /// Port name: IB device (`mlx5_0`) or interface (`eth0`); for partial XML
    /// files without `<net>`, the NIC's bus ID.
    pub name: String,
    /// The PCI node of the NIC, or the CPU node for NICs without PCI.
    pub node: NodeId,
    /// NCCL plugin index (`dev`).
    pub dev: u32,
    /// IB or socket.
    pub kind: NetKind,
    /// Speed in Mb/s, when known.
    pub speed_mbps: Option<u64>,
    /// Port number (IB ports start at 1).
    pub port: Option<u32>,
    /// ASIC GUID: the same for the ports of one NIC.
    pub guid: Option<String>,
    /// GPUDirect RDMA capable.
    pub gdr: Option<bool>,
    /// NCCL `rail` attribute, when the file gives one.
    pub rail: Option<u32>,
    /// `latency` attribute as written.
    pub latency: Option<String>,
    /// `maxconn` attribute.
    pub maxconn: Option<u32>,
    /// `InfiniBand` or `Ethernet` (IB ports).
    pub link_layer: Option<String>,
    /// Port state.
    pub state: PortState,
    /// The kernel interface of this port (`ib0` for `mlx4_0`; the name itself
    /// for a socket NIC).
    pub netdev: Option<String>,
    /// Probe-only: MAC address.
    pub mac: Option<String>,
    /// Probe-only: IP addresses with prefix length (`10.0.0.1/24`).
    pub addrs: Vec<String>,
    /// True when the port has no PCI device (veth, bond, virtio without PCI).
    pub is_virtual: bool,
}

impl Net {
    /// A port with only a name and an attachment point.
    ///
    /// ```
    /// use zccl_topology::model::{Net, NetKind};
    /// let n = Net::new("eth0", 0, NetKind::Socket);
    /// assert_eq!(n.speed_mbps, None);
    /// ```
    pub fn new(name: &str, node: NodeId, kind: NetKind) -> Self {
        Net {
            name: name.to_string(),
            node,
            dev: 0,
            kind,
            speed_mbps: None,
            port: None,
            guid: None,
            gdr: None,
            rail: None,
            latency: None,
            maxconn: None,
            link_layer: None,
            state: PortState::Unknown,
            netdev: None,
            mac: None,
            addrs: Vec::new(),
            is_virtual: false,
        }
    }

    /// True for the loopback interface, which never carries inter-host traffic.
    pub fn is_loopback(&self) -> bool {
        self.netdev.as_deref().unwrap_or(&self.name) == "lo"
    }
}

impl Topology {
    /// Add a node under `parent` (None: a new CPU root) and return its id.
    ///
    /// # Panics
    /// If `parent` is None for a PCI node or Some for a CPU node: a
    /// programming error, never caused by input data.
    pub fn add_node(&mut self, parent: Option<NodeId>, kind: NodeKind) -> NodeId {
        let id = self.nodes.len();
        match (&kind, parent) {
            (NodeKind::Cpu(_), None) => self.cpus.push(id),
            (NodeKind::Pci(_), Some(p)) => self.nodes[p].children.push(id),
            _ => panic!("CPU nodes are roots and PCI nodes have a parent"),
        }
        self.nodes.push(Node {
            parent,
            children: Vec::new(),
            kind,
        });
        id
    }

    /// The PCI data of a node, if it is a PCI node.
    pub fn pci(&self, id: NodeId) -> Option<&Pci> {
        match &self.nodes[id].kind {
            NodeKind::Pci(p) => Some(p),
            NodeKind::Cpu(_) => None,
        }
    }

    /// The CPU data of a node, if it is a CPU node.
    pub fn cpu(&self, id: NodeId) -> Option<&Cpu> {
        match &self.nodes[id].kind {
            NodeKind::Cpu(c) => Some(c),
            NodeKind::Pci(_) => None,
        }
    }

    /// The CPU root above a node (the node itself for a CPU).
    pub fn cpu_of(&self, mut id: NodeId) -> NodeId {
        while let Some(p) = self.nodes[id].parent {
            id = p;
        }
        id
    }

    /// The NUMA node of the CPU root above `id`.
    pub fn numa_of(&self, id: NodeId) -> i32 {
        self.cpu(self.cpu_of(id)).map(|c| c.numaid).unwrap_or(-1)
    }

    /// The chain from `id` up to its CPU root, `id` first.
    pub fn ancestors(&self, id: NodeId) -> Vec<NodeId> {
        let mut out = vec![id];
        let mut cur = id;
        while let Some(p) = self.nodes[cur].parent {
            out.push(p);
            cur = p;
        }
        out
    }

    /// Find the PCI node with this bus ID (case-insensitive).
    pub fn find_busid(&self, busid: &str) -> Option<NodeId> {
        let want = busid.to_ascii_lowercase();
        self.nodes
            .iter()
            .position(|n| matches!(&n.kind, NodeKind::Pci(p) if p.busid == want))
    }

    /// The bus ID of a node, or `cpuN` for a CPU node (used in messages).
    pub fn label(&self, id: NodeId) -> String {
        match &self.nodes[id].kind {
            NodeKind::Pci(p) => p.busid.clone(),
            NodeKind::Cpu(c) => format!("cpu{}", c.numaid),
        }
    }

    /// The GPU on this PCI node, if any.
    pub fn gpu_at(&self, id: NodeId) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.node == id)
    }

    /// True when a node carries a GPU/accelerator or a NIC port, i.e. it is
    /// an endpoint and not a switch for path classification.
    pub fn is_endpoint(&self, id: NodeId) -> bool {
        self.gpus.iter().any(|g| g.node == id)
            || self.nets.iter().any(|n| n.node == id)
            || self.pci(id).is_some_and(|p| {
                !matches!(
                    p.device_class(),
                    DeviceClass::Bridge | DeviceClass::NvSwitch
                ) && self.nodes[id].children.is_empty()
            })
    }

    /// Order PCI children by bus ID and GPUs by `dev`; renumber nothing.
    pub fn sort(&mut self) {
        let keys: Vec<String> = (0..self.nodes.len()).map(|i| self.label(i)).collect();
        for n in &mut self.nodes {
            n.children.sort_by(|a, b| keys[*a].cmp(&keys[*b]));
        }
        self.gpus.sort_by_key(|g| g.dev);
    }

    /// Nodes in depth-first document order (CPUs in order, children in order).
    pub fn dfs(&self) -> Vec<NodeId> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<NodeId> = self.cpus.iter().rev().copied().collect();
        while let Some(id) = stack.pop() {
            out.push(id);
            stack.extend(self.nodes[id].children.iter().rev().copied());
        }
        out
    }
}

/// NCCL's path types, best (LOC) to worst (DIS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PathType {
    /// Same device.
    LOC,
    /// NVLink.
    NVL,
    /// NVLink through another GPU.
    NVB,
    /// Chip-to-chip (Grace).
    C2C,
    /// At most one PCIe switch.
    PIX,
    /// Several PCIe switches, no host bridge.
    PXB,
    /// C2C then PCIe.
    P2C,
    /// Through a peer GPU over NVLink.
    PXN,
    /// Through a CPU (host bridge).
    PHB,
    /// Across CPUs.
    SYS,
    /// Only over the network.
    NET,
    /// Disconnected.
    DIS,
}

impl fmt::Display for PathType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::str::FromStr for PathType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "LOC" => PathType::LOC,
            "NVL" => PathType::NVL,
            "NVB" => PathType::NVB,
            "C2C" => PathType::C2C,
            "PIX" => PathType::PIX,
            "PXB" => PathType::PXB,
            "P2C" => PathType::P2C,
            "PXN" => PathType::PXN,
            "PHB" => PathType::PHB,
            "SYS" => PathType::SYS,
            "NET" => PathType::NET,
            "DIS" => PathType::DIS,
            _ => return Err(format!("unknown path type {s:?}")),
        })
    }
}

/// `nvidia-smi topo -m` labels (NODE distinguishes host bridges of one NUMA
/// node, which NCCL folds into PHB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum SmiLabel {
    /// Self.
    X,
    /// NVLink.
    NV,
    /// At most one PCIe bridge.
    PIX,
    /// Several bridges, no host bridge.
    PXB,
    /// Through one host bridge.
    PHB,
    /// Between host bridges of one NUMA node.
    NODE,
    /// Across NUMA nodes.
    SYS,
}

impl fmt::Display for SmiLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

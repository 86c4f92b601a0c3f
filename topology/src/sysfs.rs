//! The sysfs probe: reads a Linux `/sys` (and `/proc/cpuinfo`) tree under any
//! root into an NCCL-style [`Topology`].
//!
//! The root is `/` on a live system; tests point it at a temporary tree
//! written by [`crate::fake`] or at an extracted hwloc dump, whose layout is
//! `<root>/sys/...` and `<root>/proc/...` with relative symlinks.
//!
//! What is read (see `research/topology.md` §2 and §3):
//! * every PCI device from `sys/bus/pci/devices/*` (or, when that directory is
//!   missing, by walking `sys/devices/pci*`), classified by `class`/`vendor`;
//! * RDMA ports from `sys/class/infiniband/<dev>/ports/<p>`;
//! * kernel interfaces from `sys/class/net/<if>`;
//! * NUMA nodes from `sys/devices/system/node/node<N>/cpumap`;
//! * the CPU vendor, family and model from `proc/cpuinfo`;
//! * on a live system only, IP addresses from `getifaddrs()`.
//!
//! Kept devices are GPUs (class `0x03....` from NVIDIA or AMD), accelerators
//! (class `0x12....` or `0x0b40..`), network controllers (class `0x02....`,
//! except SR-IOV virtual functions without a port) and the PCI devices behind
//! RDMA ports and network interfaces. The tree above each kept device is
//! built the way NCCL does it: the switch downstream port and root port
//! components are skipped, each switch upstream port becomes a `<pci>` node,
//! and the walk ends at the CPU (NUMA node) of the top-most node.
//!
//! ```
//! use zccl_topology::{fake::FakeHost, sysfs};
//! let dir = tempfile::tempdir().unwrap();
//! FakeHost::dgx_h100_like().write(dir.path()).unwrap();
//! let topo = sysfs::probe(dir.path()).unwrap();
//! assert_eq!(topo.gpus.len(), 8);
//! assert_eq!(topo.cpus.len(), 2);
//! ```

use crate::TopoError;
use crate::model::{
    Cpu, DeviceClass, Gpu, Net, NetKind, NodeId, NodeKind, Pci, PortState, Topology,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Probe the sysfs tree under `root` (`/` on a live system).
///
/// # Errors
/// * [`TopoError::SysfsRoot`] when `root` does not exist, is not a directory
///   or has no `sys/` directory;
/// * [`TopoError::SysfsFile`] when a `numa_node` file of a device in the
///   tree holds something that is not an integer.
///
/// Every other missing or unreadable file only makes the fact it carries
/// unknown.
pub fn probe(root: &Path) -> Result<Topology, TopoError> {
    Prober::new(root)?.run()
}

/// True for a PCI bus ID `DDDD:BB:DD.F` (hex digits; the domain may be longer
/// than 4 digits, as with Intel VMD).
///
/// ```
/// use zccl_topology::sysfs::is_bdf;
/// assert!(is_bdf("0000:1b:00.0"));
/// assert!(is_bdf("10000:e1:00.7"));
/// assert!(!is_bdf("pci0000:17"));
/// assert!(!is_bdf("virtio2"));
/// ```
pub fn is_bdf(s: &str) -> bool {
    let hex = |p: &str, min: usize, max: usize| {
        (min..=max).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let mut parts = s.split(':');
    let (Some(dom), Some(bus), Some(devfn), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some((dev, func)) = devfn.split_once('.') else {
        return false;
    };
    hex(dom, 4, 8) && hex(bus, 2, 2) && hex(dev, 2, 2) && hex(func, 1, 1)
}

/// Parse an RDMA port `rate` file (`"400 Gb/sec (4X NDR)"`, `"2.5 Gb/sec"`)
/// into Mb/s.
///
/// ```
/// use zccl_topology::sysfs::parse_rate_mbps;
/// assert_eq!(parse_rate_mbps("56 Gb/sec (4X FDR)"), Some(56000));
/// assert_eq!(parse_rate_mbps("2.5 Gb/sec (1X SDR)"), Some(2500));
/// assert_eq!(parse_rate_mbps("junk"), None);
/// ```
pub fn parse_rate_mbps(s: &str) -> Option<u64> {
    let gbps: f64 = s.split_whitespace().next()?.parse().ok()?;
    (gbps.is_finite() && gbps > 0.0).then(|| (gbps * 1000.0).round() as u64)
}

/// Parse an RDMA port `state` file (`"4: ACTIVE"`): 4 (ACTIVE) is up, any
/// other state number is down; anything unparsable is unknown.
///
/// ```
/// use zccl_topology::{sysfs::parse_ib_state, model::PortState};
/// assert_eq!(parse_ib_state("4: ACTIVE"), PortState::Up);
/// assert_eq!(parse_ib_state("1: DOWN"), PortState::Down);
/// assert_eq!(parse_ib_state(""), PortState::Unknown);
/// ```
pub fn parse_ib_state(s: &str) -> PortState {
    let num = s.split(':').next().unwrap_or("").trim();
    match num.parse::<u32>() {
        Ok(4) => PortState::Up,
        Ok(_) => PortState::Down,
        Err(_) if s.contains("ACTIVE") => PortState::Up,
        Err(_) => PortState::Unknown,
    }
}

/// Map a network interface `operstate` to a [`PortState`].
///
/// ```
/// use zccl_topology::{sysfs::parse_operstate, model::PortState};
/// assert_eq!(parse_operstate("up"), PortState::Up);
/// assert_eq!(parse_operstate("lowerlayerdown"), PortState::Down);
/// assert_eq!(parse_operstate("unknown"), PortState::Unknown);
/// ```
pub fn parse_operstate(s: &str) -> PortState {
    match s.trim() {
        "up" => PortState::Up,
        "down" | "lowerlayerdown" | "notpresent" | "dormant" => PortState::Down,
        _ => PortState::Unknown,
    }
}

/// Read a small sysfs file, trimmed. `None` when missing or unreadable.
fn read_trim(path: &Path) -> Option<String> {
    let bytes = fs::read(path).ok()?;
    Some(String::from_utf8_lossy(&bytes).trim().to_string())
}

/// Read a sysfs file, trimmed, `None` when missing, unreadable or empty.
fn read_nonempty(path: &Path) -> Option<String> {
    read_trim(path).filter(|s| !s.is_empty())
}

fn parse_hex(s: &str) -> Option<u32> {
    let s = s.trim();
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u32::from_str_radix(digits, 16).ok()
}

fn read_hex(path: &Path) -> Option<u32> {
    parse_hex(&read_trim(path)?)
}

fn read_hex16(path: &Path) -> Option<u16> {
    read_hex(path).and_then(|v| u16::try_from(v).ok())
}

/// Read `numa_node`: `Ok(None)` when missing or unreadable, an error when the
/// content is not an integer.
fn read_numa(dir: &Path) -> Result<Option<i32>, TopoError> {
    let path = dir.join("numa_node");
    let Some(content) = read_trim(&path) else {
        return Ok(None);
    };
    content
        .parse::<i32>()
        .map(Some)
        .map_err(|_| TopoError::SysfsFile {
            path,
            reason: format!("numa_node is not an integer: {content:?}"),
        })
}

/// Entry names of a directory, sorted; empty when it cannot be read.
fn sorted_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The smaller of two link speeds (by GT/s), keeping the string as found.
fn min_speed(own: Option<String>, parent: Option<String>) -> String {
    use crate::model::parse_gts;
    match (own, parent) {
        (Some(a), Some(b)) => match (parse_gts(&a), parse_gts(&b)) {
            (Some(x), Some(y)) if y < x => b,
            (None, Some(_)) => b,
            _ => a,
        },
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => String::new(),
    }
}

/// NCCL's name for the architecture Rust was compiled for.
fn nccl_arch(arch: &str) -> String {
    match arch {
        "aarch64" => "arm64".into(),
        "powerpc64" => "ppc64".into(),
        a => a.into(),
    }
}

/// CPU facts shared by all CPU nodes.
#[derive(Default, Clone)]
struct CpuFacts {
    arch: Option<String>,
    vendor: Option<String>,
    familyid: Option<u32>,
    modelid: Option<u32>,
}

fn read_cpuinfo(path: &Path) -> CpuFacts {
    let mut f = CpuFacts::default();
    let Some(text) = fs::read(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
    else {
        return f;
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "vendor_id" if f.vendor.is_none() && !v.is_empty() => f.vendor = Some(v.to_string()),
            "cpu family" if f.familyid.is_none() => f.familyid = v.parse().ok(),
            "model" if f.modelid.is_none() => f.modelid = v.parse().ok(),
            _ => {}
        }
        if f.vendor.is_some() && f.familyid.is_some() && f.modelid.is_some() {
            break;
        }
    }
    f
}

/// What is known about a PCI device from enumeration.
struct DevInfo {
    /// Components below `sys/devices`, down to the device.
    comps: Vec<String>,
    class: Option<u32>,
    vendor: Option<u16>,
}

/// Where a port hangs: a PCI device or (for virtual ports) the first CPU.
enum Attach {
    Pci(String),
    FirstCpu,
}

struct Prober {
    /// Canonical root.
    root: PathBuf,
    /// `root/sys`.
    sys: PathBuf,
    /// Canonical `root/sys/devices`.
    devices: PathBuf,
    /// True when probing the live system (`/`).
    live: bool,
    info: BTreeMap<String, DevInfo>,
    topo: Topology,
    node_of: HashMap<String, NodeId>,
    cpu_of_numa: HashMap<i32, NodeId>,
    /// NUMA node ids found under `sys/devices/system/node`, in order.
    numa_ids: Vec<i32>,
    numa_cpumaps: HashMap<i32, String>,
    /// How many of those NUMA nodes have CPUs (for the `-1` rule).
    numa_with_cpus: usize,
    cpu_facts: CpuFacts,
    /// Devices with `numa_node` -1 attached to the unknown CPU.
    unknown_numa: Vec<String>,
}

impl Prober {
    fn new(root: &Path) -> Result<Prober, TopoError> {
        let err = |reason: &str| TopoError::SysfsRoot {
            root: root.to_path_buf(),
            reason: reason.to_string(),
        };
        if !root.exists() {
            return Err(err("does not exist"));
        }
        if !root.is_dir() {
            return Err(err("is not a directory"));
        }
        let canon = fs::canonicalize(root).map_err(|e| err(&format!("cannot be resolved: {e}")))?;
        let sys = canon.join("sys");
        if !sys.is_dir() {
            return Err(err("has no sys/ directory"));
        }
        let devices = fs::canonicalize(sys.join("devices")).unwrap_or_else(|_| sys.join("devices"));
        let live = canon == Path::new("/");
        Ok(Prober {
            root: canon,
            sys,
            devices,
            live,
            info: BTreeMap::new(),
            topo: Topology::default(),
            node_of: HashMap::new(),
            cpu_of_numa: HashMap::new(),
            numa_ids: Vec::new(),
            numa_cpumaps: HashMap::new(),
            numa_with_cpus: 0,
            cpu_facts: CpuFacts::default(),
            unknown_numa: Vec::new(),
        })
    }

    fn run(mut self) -> Result<Topology, TopoError> {
        self.read_cpus();
        self.enumerate_pci();

        let (mut ib_nets, ib_netdevs) = self.ib_nets();
        let mut sock_nets = self.socket_nets(&ib_netdevs);

        // Which PCI devices are kept as endpoints.
        let mut gpu_ids: Vec<(String, DeviceClass)> = Vec::new();
        let mut keep: BTreeSet<String> = BTreeSet::new();
        for (busid, d) in &self.info {
            let Some(class) = d.class else { continue };
            match DeviceClass::of(class) {
                DeviceClass::Gpu if matches!(d.vendor, Some(0x10de | 0x1002)) => {
                    gpu_ids.push((busid.clone(), DeviceClass::Gpu));
                    keep.insert(busid.clone());
                }
                DeviceClass::Accelerator => {
                    gpu_ids.push((busid.clone(), DeviceClass::Accelerator));
                    keep.insert(busid.clone());
                }
                DeviceClass::Nic => {
                    // SR-IOV virtual functions only count through their ports.
                    let dir = self.dev_dir(&d.comps);
                    if !dir.join("physfn").exists() {
                        keep.insert(busid.clone());
                    }
                }
                _ => {}
            }
        }
        for (_, a) in ib_nets.iter().chain(sock_nets.iter()) {
            if let Attach::Pci(b) = a {
                keep.insert(b.clone());
            }
        }

        for busid in &keep {
            self.attach(busid)?;
        }

        // GPUs and accelerators, `dev` in bus-ID order (info is a BTreeMap).
        let names = self.accel_names();
        for (dev, (busid, class)) in gpu_ids.iter().enumerate() {
            let node = self.node_of[busid];
            let name = match class {
                DeviceClass::Accelerator => names.get(busid).cloned(),
                _ => None,
            };
            self.topo.gpus.push(Gpu {
                node,
                dev: dev as u32,
                class: *class,
                sm: None,
                rank: None,
                gdr: None,
                name,
                nvlinks: Vec::new(),
            });
        }

        // Nets.
        let addrs = if self.live {
            live_addrs()
        } else {
            HashMap::new()
        };
        let mut nets = Vec::with_capacity(ib_nets.len() + sock_nets.len());
        for (mut net, attach) in ib_nets.drain(..).chain(sock_nets.drain(..)) {
            net.node = match attach {
                Attach::Pci(b) => self.node_of[&b],
                Attach::FirstCpu => self.first_cpu(),
            };
            if let Some(a) = net.netdev.as_ref().and_then(|n| addrs.get(n)) {
                net.addrs = a.clone();
            }
            nets.push(net);
        }

        // A network controller with no port visible (no RDMA class entry, no
        // netdev: driver not loaded, or a dump without them) still is a NIC:
        // it gets one port named by its bus ID, as in NCCL's partial files.
        let with_port: HashSet<NodeId> = nets.iter().map(|n| n.node).collect();
        for busid in &keep {
            let class = self.info.get(busid).and_then(|d| d.class).unwrap_or(0);
            let node = self.node_of[busid];
            if DeviceClass::of(class) == DeviceClass::Nic && !with_port.contains(&node) {
                let kind = if class >> 8 == 0x0207 {
                    NetKind::Ib
                } else {
                    NetKind::Socket
                };
                nets.push(Net::new(busid, node, kind));
            }
        }

        // CPUs in NUMA order, unknown last; then NCCL's child order.
        let mut cpus = std::mem::take(&mut self.topo.cpus);
        cpus.sort_by_key(|&c| {
            let n = self.topo.cpu(c).map(|c| c.numaid).unwrap_or(-1);
            (n < 0, n)
        });
        self.topo.cpus = cpus;
        self.topo.sort();

        let mut pos = vec![usize::MAX; self.topo.nodes.len()];
        for (i, id) in self.topo.dfs().into_iter().enumerate() {
            pos[id] = i;
        }
        nets.sort_by(|a, b| {
            let kind = |n: &Net| u8::from(n.kind != NetKind::Ib);
            (pos[a.node], kind(a), &a.name).cmp(&(pos[b.node], kind(b), &b.name))
        });
        for (i, n) in nets.iter_mut().enumerate() {
            n.dev = i as u32;
        }
        self.topo.nets = nets;

        self.warnings();
        Ok(self.topo)
    }

    fn dev_dir(&self, comps: &[String]) -> PathBuf {
        let mut p = self.devices.clone();
        p.extend(comps);
        p
    }

    /// NUMA nodes and CPU facts. CPU nodes with CPUs are created up front.
    fn read_cpus(&mut self) {
        self.cpu_facts = if self.live {
            let mut f = read_cpuinfo(Path::new("/proc/cpuinfo"));
            f.arch = Some(nccl_arch(std::env::consts::ARCH));
            f
        } else {
            let mut f = read_cpuinfo(&self.root.join("proc/cpuinfo"));
            if f.vendor.is_some() {
                f.arch = Some("x86_64".into());
            }
            f
        };
        let node_dir = self.sys.join("devices/system/node");
        let mut ids: Vec<i32> = sorted_names(&node_dir)
            .iter()
            .filter_map(|n| n.strip_prefix("node")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let mut with_cpus = Vec::new();
        for &n in &ids {
            let cpumap = read_nonempty(&node_dir.join(format!("node{n}/cpumap")));
            // A missing cpumap is unknown: count the node as having CPUs.
            let has_cpus = cpumap
                .as_deref()
                .is_none_or(|m| m.bytes().any(|b| b.is_ascii_hexdigit() && b != b'0'));
            if let Some(m) = cpumap {
                self.numa_cpumaps.insert(n, m);
            }
            if has_cpus {
                with_cpus.push(n);
            }
        }
        self.numa_with_cpus = with_cpus.len();
        self.numa_ids = ids;
        for n in with_cpus {
            self.cpu_node(n);
        }
    }

    fn cpu_node(&mut self, numaid: i32) -> NodeId {
        if let Some(&id) = self.cpu_of_numa.get(&numaid) {
            return id;
        }
        let f = &self.cpu_facts;
        let cpu = Cpu {
            numaid,
            affinity: self.numa_cpumaps.get(&numaid).cloned(),
            arch: f.arch.clone(),
            vendor: f.vendor.clone(),
            familyid: f.familyid,
            modelid: f.modelid,
        };
        let id = self.topo.add_node(None, NodeKind::Cpu(cpu));
        self.cpu_of_numa.insert(numaid, id);
        id
    }

    /// The first CPU node (NUMA order), created as node 0 when there is none.
    fn first_cpu(&mut self) -> NodeId {
        let best = self.topo.cpus.iter().copied().min_by_key(|&c| {
            let n = self.topo.cpu(c).map(|c| c.numaid).unwrap_or(-1);
            (n < 0, n)
        });
        match best {
            Some(id) => id,
            None => self.cpu_node(self.numa_ids.first().copied().unwrap_or(0)),
        }
    }

    /// The CPU for a device whose NUMA node is `numa`.
    fn cpu_for(&mut self, numa: Option<i32>, busid: &str) -> NodeId {
        match numa {
            Some(n) if n >= 0 => self.cpu_node(n),
            _ if self.numa_ids.len() <= 1 || self.numa_with_cpus <= 1 => {
                let n = self.cpu_of_numa.keys().copied().filter(|&n| n >= 0).min();
                let n = n.or(self.numa_ids.first().copied()).unwrap_or(0);
                self.cpu_node(n)
            }
            _ => {
                self.unknown_numa.push(busid.to_string());
                self.cpu_node(-1)
            }
        }
    }

    /// Record a PCI device by its canonical directory; returns its bus ID.
    fn register(&mut self, canon: &Path) -> Option<String> {
        let rel = canon.strip_prefix(&self.devices).ok()?;
        let comps: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let last = comps.last()?;
        if !is_bdf(last) {
            return None;
        }
        let busid = last.to_ascii_lowercase();
        if !self.info.contains_key(&busid) {
            let class = read_hex(&canon.join("class"));
            let vendor = read_hex16(&canon.join("vendor"));
            self.info.insert(
                busid.clone(),
                DevInfo {
                    comps,
                    class,
                    vendor,
                },
            );
        }
        Some(busid)
    }

    fn enumerate_pci(&mut self) {
        let bus = self.sys.join("bus/pci/devices");
        if let Ok(rd) = fs::read_dir(&bus) {
            for e in rd.filter_map(|e| e.ok()) {
                if !is_bdf(&e.file_name().to_string_lossy()) {
                    continue;
                }
                if let Ok(canon) = fs::canonicalize(e.path()) {
                    self.register(&canon);
                }
            }
            return;
        }
        // No bus directory: walk the host bridges.
        let mut stack: Vec<PathBuf> = sorted_names(&self.devices)
            .into_iter()
            .filter(|n| n.starts_with("pci") && !is_bdf(n))
            .map(|n| self.devices.join(n))
            .collect();
        while let Some(dir) = stack.pop() {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.filter_map(|e| e.ok()) {
                let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir && is_bdf(&e.file_name().to_string_lossy()) {
                    let p = e.path();
                    self.register(&p);
                    stack.push(p);
                }
            }
        }
    }

    /// Where a `device` link points: the nearest PCI device at or above its
    /// target, or the first CPU for virtual and non-PCI devices.
    fn attach_of_link(&mut self, link: &Path) -> Attach {
        let Ok(canon) = fs::canonicalize(link) else {
            return Attach::FirstCpu;
        };
        let Ok(rel) = canon.strip_prefix(&self.devices) else {
            return Attach::FirstCpu;
        };
        if rel.starts_with("virtual") {
            return Attach::FirstCpu;
        }
        let comps: Vec<&std::ffi::OsStr> = rel.components().map(|c| c.as_os_str()).collect();
        let Some(k) = comps.iter().rposition(|c| is_bdf(&c.to_string_lossy())) else {
            return Attach::FirstCpu;
        };
        let mut dir = self.devices.clone();
        dir.extend(&comps[..=k]);
        match self.register(&dir) {
            Some(b) => Attach::Pci(b),
            None => Attach::FirstCpu,
        }
    }

    /// RDMA ports, and the set of netdevs they cover.
    fn ib_nets(&mut self) -> (Vec<(Net, Attach)>, HashSet<String>) {
        let class = self.sys.join("class/infiniband");
        let mut out = Vec::new();
        let mut netdevs = HashSet::new();
        for ibdev in sorted_names(&class) {
            let dir = class.join(&ibdev);
            if fs::canonicalize(&dir).is_err() {
                continue; // dangling class link (e.g. scif0 in a partial dump)
            }
            let ports_dir = dir.join("ports");
            let mut ports: Vec<u32> = sorted_names(&ports_dir)
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect();
            ports.sort_unstable();
            if ports.is_empty() {
                continue;
            }
            let attach = self.attach_of_link(&dir.join("device"));
            let is_virtual = matches!(attach, Attach::FirstCpu);
            let guid = read_nonempty(&dir.join("sys_image_guid"));
            let dev_nets = sorted_names(&dir.join("device/net"));
            let single = ports.len() == 1;
            for &p in &ports {
                let pdir = ports_dir.join(p.to_string());
                let mut net = Net::new(
                    &if single {
                        ibdev.clone()
                    } else {
                        format!("{ibdev}:{p}")
                    },
                    0,
                    NetKind::Ib,
                );
                net.port = Some(p);
                net.speed_mbps = read_trim(&pdir.join("rate")).and_then(|r| parse_rate_mbps(&r));
                net.state = read_trim(&pdir.join("state"))
                    .map(|s| parse_ib_state(&s))
                    .unwrap_or(PortState::Unknown);
                net.link_layer = read_nonempty(&pdir.join("link_layer"));
                net.guid = guid.clone();
                net.is_virtual = is_virtual;
                net.netdev = pick_netdev(&dir.join("device/net"), &dev_nets, p, single)
                    .or_else(|| read_nonempty(&pdir.join("gid_attrs/ndevs/0")));
                if let Some(nd) = &net.netdev {
                    netdevs.insert(nd.clone());
                }
                let a = match &attach {
                    Attach::Pci(b) => Attach::Pci(b.clone()),
                    Attach::FirstCpu => Attach::FirstCpu,
                };
                out.push((net, a));
            }
        }
        (out, netdevs)
    }

    /// Kernel interfaces that are not loopback and not an RDMA port's netdev.
    fn socket_nets(&mut self, ib_netdevs: &HashSet<String>) -> Vec<(Net, Attach)> {
        let class = self.sys.join("class/net");
        let mut out = Vec::new();
        for name in sorted_names(&class) {
            if name == "lo" || ib_netdevs.contains(&name) {
                continue;
            }
            let dir = class.join(&name);
            let attach = self.attach_of_link(&dir.join("device"));
            let mut net = Net::new(&name, 0, NetKind::Socket);
            net.is_virtual = matches!(attach, Attach::FirstCpu);
            net.speed_mbps = read_trim(&dir.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|&s| s > 0)
                .map(|s| s as u64);
            net.state = read_trim(&dir.join("operstate"))
                .map(|s| parse_operstate(&s))
                .unwrap_or(PortState::Unknown);
            net.mac = read_nonempty(&dir.join("address"));
            net.netdev = Some(name);
            out.push((net, attach));
        }
        out
    }

    /// Kernel names of accelerators (`sys/class/ve/ve0`, `sys/class/mic/mic0`)
    /// by bus ID.
    fn accel_names(&mut self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for cls in ["ve", "mic"] {
            let dir = self.sys.join("class").join(cls);
            for name in sorted_names(&dir) {
                let Ok(canon) = fs::canonicalize(dir.join(&name).join("device")) else {
                    continue;
                };
                let Some(last) = canon.file_name().map(|f| f.to_string_lossy().into_owned()) else {
                    continue;
                };
                if is_bdf(&last) {
                    out.entry(last.to_ascii_lowercase()).or_insert(name);
                }
            }
        }
        out
    }

    /// The `<pci>` attributes and NUMA node of the device at `comps[..=i]`.
    fn make_pci(&self, comps: &[String], i: usize) -> Result<(Pci, Option<i32>), TopoError> {
        let dir = self.dev_dir(&comps[..=i]);
        let busid = comps[i].to_ascii_lowercase();
        let known = self.info.get(&busid);
        let class = known
            .and_then(|d| d.class)
            .or_else(|| read_hex(&dir.join("class")))
            .unwrap_or(0);
        let vendor = match known {
            Some(d) => d.vendor,
            None => read_hex16(&dir.join("vendor")),
        };
        let parent = dir.parent().unwrap_or(&dir);
        let own_w = read_trim(&dir.join("max_link_width")).and_then(|s| s.parse::<u32>().ok());
        let par_w = read_trim(&parent.join("max_link_width")).and_then(|s| s.parse::<u32>().ok());
        let link_width = match (own_w.filter(|&w| w > 0), par_w.filter(|&w| w > 0)) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0),
        };
        let link_speed = min_speed(
            read_nonempty(&dir.join("max_link_speed")),
            read_nonempty(&parent.join("max_link_speed")),
        );
        let hb = (0..i).rev().find(|&k| !is_bdf(&comps[k])).unwrap_or(0);
        let pci = Pci {
            busid,
            class,
            vendor,
            device: read_hex16(&dir.join("device")),
            subsystem_vendor: read_hex16(&dir.join("subsystem_vendor")),
            subsystem_device: read_hex16(&dir.join("subsystem_device")),
            link_speed,
            link_width,
            sysfs_path: Some(comps[hb..=i].to_vec()),
        };
        Ok((pci, read_numa(&dir)?))
    }

    /// Create the node for a kept device and the switches above it.
    fn attach(&mut self, busid: &str) -> Result<NodeId, TopoError> {
        if let Some(&id) = self.node_of.get(busid) {
            return Ok(id);
        }
        let Some(info) = self.info.get(busid) else {
            // Unreachable for devices found by enumeration; be safe anyway.
            let cpu = self.first_cpu();
            let id = self
                .topo
                .add_node(Some(cpu), NodeKind::Pci(Pci::new(busid, 0)));
            self.node_of.insert(busid.to_string(), id);
            return Ok(id);
        };
        let comps = info.comps.clone();
        let mut chain = vec![comps.len() - 1];
        let mut parent: Option<NodeId> = None;
        let mut idx = comps.len() - 1;
        // NCCL: skip one component (downstream or root port); a BDF two up
        // is the parent switch; a non-BDF means the root complex.
        while idx >= 2 && is_bdf(&comps[idx - 1]) && is_bdf(&comps[idx - 2]) {
            let up = comps[idx - 2].to_ascii_lowercase();
            if let Some(&id) = self.node_of.get(&up) {
                parent = Some(id);
                break;
            }
            chain.push(idx - 2);
            idx -= 2;
        }
        let mut made = Vec::with_capacity(chain.len());
        for &i in &chain {
            made.push(self.make_pci(&comps, i)?);
        }
        let parent = match parent {
            Some(p) => p,
            None => {
                let top = made.last().and_then(|m| m.1);
                let end = made.first().and_then(|m| m.1);
                let numa = match (top, end) {
                    (Some(t), _) if t >= 0 => Some(t),
                    (_, Some(e)) if e >= 0 => Some(e),
                    (t, e) => t.or(e),
                };
                let top_busid = made.last().map(|m| m.0.busid.clone()).unwrap_or_default();
                self.cpu_for(numa, &top_busid)
            }
        };
        let mut cur = parent;
        for (pci, _) in made.into_iter().rev() {
            let key = pci.busid.clone();
            cur = self.topo.add_node(Some(cur), NodeKind::Pci(pci));
            self.node_of.insert(key, cur);
        }
        Ok(cur)
    }

    fn warnings(&mut self) {
        let has_switch = self
            .topo
            .nodes
            .iter()
            .any(|n| matches!(n.kind, NodeKind::Pci(_)) && !n.children.is_empty());
        if !self.topo.gpus.is_empty() && !has_switch {
            self.topo.warnings.push(
                "flat topology: no PCIe switch above any GPU or NIC (typical of a VM); \
                 GPU-NIC locality cannot be told apart, consider an NCCL_TOPO_FILE override"
                    .to_string(),
            );
        }
        if !self.unknown_numa.is_empty() {
            self.topo.warnings.push(format!(
                "numa_node is -1 for {} on a host with {} NUMA nodes: attached to a CPU with numaid -1",
                self.unknown_numa.join(", "),
                self.numa_ids.len()
            ));
        }
        for n in &self.topo.nets {
            if n.state == PortState::Down && !n.is_virtual {
                let at = self.topo.label(n.node);
                self.topo
                    .warnings
                    .push(format!("net {} ({at}) is down", n.name));
            }
        }
    }
}

/// The netdev of RDMA port `port`: the only entry of `<ibdev>/device/net`,
/// or for multi-port devices the one whose `dev_port` (else `dev_id`) is
/// `port - 1`, else the first.
fn pick_netdev(net_dir: &Path, names: &[String], port: u32, single: bool) -> Option<String> {
    if single || names.len() <= 1 {
        return names.first().cloned();
    }
    let want = port.saturating_sub(1);
    let by = |file: &str, hex: bool| {
        names.iter().find(|n| {
            read_trim(&net_dir.join(n).join(file))
                .and_then(|s| if hex { parse_hex(&s) } else { s.parse().ok() })
                .is_some_and(|v| v == want)
        })
    };
    by("dev_port", false)
        .or_else(|| by("dev_id", true))
        .or(names.first())
        .cloned()
}

/// IP addresses per interface on the live system (`ip/prefixlen`), without
/// IPv6 link-local addresses.
fn live_addrs() -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for ifa in list {
        let Some(addr) = ifa.address else { continue };
        let text = if let Some(v4) = addr.as_sockaddr_in() {
            let prefix = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map(|m| u32::from(m.ip()).count_ones())
                .unwrap_or(32);
            format!("{}/{prefix}", v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let ip = v6.ip();
            if ip.segments()[0] & 0xffc0 == 0xfe80 {
                continue;
            }
            let prefix = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in6())
                .map(|m| u128::from(m.ip()).count_ones())
                .unwrap_or(128);
            format!("{ip}/{prefix}")
        } else {
            continue;
        };
        out.entry(ifa.interface_name).or_default().push(text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeDevice, FakeHost, FakeSocket};

    fn dgx() -> (tempfile::TempDir, Topology) {
        let dir = tempfile::tempdir().unwrap();
        FakeHost::dgx_h100_like().write(dir.path()).unwrap();
        let topo = probe(dir.path()).unwrap();
        (dir, topo)
    }

    fn net<'a>(t: &'a Topology, name: &str) -> &'a Net {
        t.nets
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no net {name}: {:?}", t.nets))
    }

    #[test]
    fn dgx_like_round_trip() {
        let (_d, t) = dgx();
        // GPUs: dev 0..7 in bus order.
        let buses: Vec<&str> = t
            .gpus
            .iter()
            .map(|g| &t.pci(g.node).unwrap().busid[5..7])
            .collect();
        assert_eq!(buses, ["1a", "1c", "3d", "3f", "9d", "9f", "bb", "bd"]);
        for (i, g) in t.gpus.iter().enumerate() {
            assert_eq!(g.dev, i as u32);
            assert_eq!(g.class, DeviceClass::Gpu);
            let p = t.pci(g.node).unwrap();
            assert_eq!(
                (p.vendor, p.device, p.class),
                (Some(0x10de), Some(0x2330), 0x030200)
            );
            // max link, not the idle current one
            assert_eq!(
                (p.link_speed.as_str(), p.link_width),
                ("32.0 GT/s PCIe", 16)
            );
            assert_eq!(p.sysfs_path.as_ref().unwrap().len(), 5);
        }
        // CPUs
        assert_eq!(t.cpus.len(), 2);
        let c0 = t.cpu(t.cpus[0]).unwrap();
        assert_eq!(c0.numaid, 0);
        assert_eq!(c0.vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!((c0.familyid, c0.modelid), (Some(6), Some(143)));
        assert_eq!(c0.arch.as_deref(), Some("x86_64"));
        assert_eq!(
            c0.affinity.as_deref(),
            Some("00000000,000000ff,ffffffff,ffff0000,00000000,00ffffff,ffffffff")
        );
        assert_eq!(t.cpu(t.cpus[1]).unwrap().numaid, 1);
        // 4 switch nodes, each directly under a CPU.
        let switches: Vec<NodeId> = (0..t.nodes.len())
            .filter(|&i| t.pci(i).is_some() && !t.nodes[i].children.is_empty())
            .collect();
        assert_eq!(switches.len(), 4);
        for &s in &switches {
            assert_eq!(t.pci(s).unwrap().class, 0x060400);
            assert_eq!(t.pci(s).unwrap().vendor, Some(0x10b5));
            assert!(t.cpu(t.nodes[s].parent.unwrap()).is_some());
            assert_eq!(t.nodes[s].children.len(), 4);
        }
        let sw_busids: Vec<&str> = switches
            .iter()
            .map(|&s| t.pci(s).unwrap().busid.as_str())
            .collect();
        assert_eq!(
            sw_busids,
            [
                "0000:18:00.0",
                "0000:3b:00.0",
                "0000:9b:00.0",
                "0000:b9:00.0"
            ]
        );
        // Nets: 8 IB + eth0 + veth0, no lo, no duplicate of the IB netdevs.
        let names: Vec<&str> = t.nets.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names.len(), 10, "{names:?}");
        assert!(!names.contains(&"lo"));
        for (i, n) in t.nets.iter().enumerate() {
            assert_eq!(n.dev, i as u32);
        }
        for i in 0..8 {
            let n = net(&t, &format!("mlx5_{i}"));
            assert_eq!(n.kind, NetKind::Ib);
            assert_eq!(n.speed_mbps, Some(400_000));
            assert_eq!(n.state, PortState::Up);
            assert_eq!(n.port, Some(1));
            assert_eq!(n.link_layer.as_deref(), Some("InfiniBand"));
            assert!(n.netdev.as_deref().unwrap().starts_with("ibp"));
            assert!(!n.is_virtual);
            assert_eq!(t.pci(n.node).unwrap().class, 0x020700);
            // GPU 2k and 2k+1 share the switch of NIC mlx5_k... each switch has 2 GPUs and 2 NICs.
            let gpu = &t.gpus[i];
            assert_eq!(t.nodes[gpu.node].parent, t.nodes[n.node].parent);
        }
        // DFS (bus) order: veth0 (virtual, on CPU 0) first, then eth0 (bus
        // 01 on a root port of socket 0), then the IB ports by switch.
        assert_eq!(
            names,
            [
                "veth0", "eth0", "mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3", "mlx5_4", "mlx5_5",
                "mlx5_6", "mlx5_7"
            ]
        );
        let eth0 = net(&t, "eth0");
        assert_eq!(eth0.kind, NetKind::Socket);
        assert_eq!(eth0.speed_mbps, Some(10_000));
        assert_eq!(eth0.state, PortState::Up);
        assert_eq!(eth0.netdev.as_deref(), Some("eth0"));
        assert!(eth0.mac.is_some());
        assert!(eth0.addrs.is_empty());
        assert_eq!(t.pci(eth0.node).unwrap().busid, "0000:01:00.0");
        assert_eq!(t.nodes[eth0.node].parent, Some(t.cpus[0]));
        let veth = net(&t, "veth0");
        assert!(veth.is_virtual);
        assert_eq!(veth.node, t.cpus[0]);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    }

    #[test]
    fn missing_root_and_missing_sys() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = probe(&missing).unwrap_err();
        assert!(matches!(e, TopoError::SysfsRoot { .. }), "{e}");
        assert!(e.to_string().contains("nope") && e.to_string().contains("does not exist"));
        let e = probe(dir.path()).unwrap_err();
        assert!(matches!(e, TopoError::SysfsRoot { .. }), "{e}");
        assert!(e.to_string().contains("sys/"), "{e}");
    }

    #[test]
    fn bad_numa_node_is_a_file_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = FakeHost::dgx_h100_like();
        host.sockets[1].numa_file = Some("x".into());
        host.write(dir.path()).unwrap();
        let e = probe(dir.path()).unwrap_err();
        let TopoError::SysfsFile { path, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(path.ends_with("numa_node"));
        let msg = e.to_string();
        assert!(msg.contains("numa_node") && msg.contains("\"x\""), "{msg}");
        assert!(msg.contains(&path.display().to_string()));
    }

    #[test]
    fn numa_minus_one() {
        // One NUMA node: -1 means that node, no warning.
        let dir = tempfile::tempdir().unwrap();
        let mut host = FakeHost::dgx_h100_like();
        host.sockets.truncate(1);
        host.sockets[0].numa_file = Some("-1".into());
        host.write(dir.path()).unwrap();
        let t = probe(dir.path()).unwrap();
        assert_eq!(t.cpus.len(), 1);
        assert_eq!(t.numa_of(t.gpus[0].node), 0);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        // Two NUMA nodes: a cpu numaid -1 and a warning.
        let dir = tempfile::tempdir().unwrap();
        let mut host = FakeHost::dgx_h100_like();
        host.sockets[1].numa_file = Some("-1".into());
        host.write(dir.path()).unwrap();
        let t = probe(dir.path()).unwrap();
        assert_eq!(t.cpus.len(), 3);
        assert_eq!(t.numa_of(t.gpus[7].node), -1);
        assert_eq!(t.numa_of(t.gpus[0].node), 0);
        assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
        assert!(t.warnings[0].contains("0000:9b:00.0"), "{:?}", t.warnings);
    }

    #[test]
    fn flat_vm_and_virtual_nets() {
        let dir = tempfile::tempdir().unwrap();
        let host = FakeHost {
            sockets: vec![FakeSocket {
                host_bridge_devices: vec![
                    FakeDevice::h100(),
                    FakeDevice::VirtioNet {
                        netdev: "eth0".into(),
                        index: 2,
                    },
                    // ASPEED BMC graphics: not a GPU.
                    FakeDevice::Other {
                        vendor: 0x1a03,
                        device: 0x2000,
                        class: 0x030000,
                    },
                ],
                ..FakeSocket::new(0, "0-7")
            }],
            virtual_nets: vec!["lo".into(), "docker0".into()],
            cpu: None,
        };
        host.write(dir.path()).unwrap();
        // An interface with no device link at all.
        let nd = dir.path().join("sys/class/net/bond0");
        std::fs::create_dir_all(&nd).unwrap();
        std::fs::write(nd.join("operstate"), "down\n").unwrap();
        let t = probe(dir.path()).unwrap();
        assert_eq!(t.gpus.len(), 1);
        assert_eq!(t.pci(t.gpus[0].node).unwrap().busid, "0000:00:03.0");
        assert_eq!(t.cpu(t.cpus[0]).unwrap().arch, None);
        let eth0 = net(&t, "eth0");
        assert!(!eth0.is_virtual);
        assert_eq!(t.pci(eth0.node).unwrap().busid, "0000:00:04.0");
        assert_eq!(eth0.speed_mbps, None);
        let bond = net(&t, "bond0");
        assert!(bond.is_virtual);
        assert_eq!(bond.state, PortState::Down);
        assert_eq!(bond.node, t.cpus[0]);
        assert!(net(&t, "docker0").is_virtual);
        assert!(t.find_busid("0000:00:05.0").is_none());
        assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
        assert!(t.warnings[0].starts_with("flat topology"));
    }

    #[test]
    fn virtio_net_without_pci_bus_dir() {
        // `device` link to `.../0000:00:03.0/virtio2`, no `sys/bus/pci`, no
        // NUMA directory.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let pci = root.join("sys/devices/pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(pci.join("virtio2/net/ens3")).unwrap();
        std::fs::write(pci.join("class"), "0x020000\n").unwrap();
        std::fs::write(pci.join("vendor"), "0x1af4\n").unwrap();
        std::fs::write(pci.join("numa_node"), "-1\n").unwrap();
        std::fs::write(pci.join("virtio2/net/ens3/operstate"), "up\n").unwrap();
        std::os::unix::fs::symlink("../../../virtio2", pci.join("virtio2/net/ens3/device"))
            .unwrap();
        std::fs::create_dir_all(root.join("sys/class/net")).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/pci0000:00/0000:00:03.0/virtio2/net/ens3",
            root.join("sys/class/net/ens3"),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("sys/class/net/nodev")).unwrap();
        let t = probe(root).unwrap();
        let ens3 = net(&t, "ens3");
        assert!(!ens3.is_virtual);
        assert_eq!(t.pci(ens3.node).unwrap().busid, "0000:00:03.0");
        assert_eq!(ens3.state, PortState::Up);
        assert_eq!(t.numa_of(ens3.node), 0);
        assert!(net(&t, "nodev").is_virtual);
        assert_eq!(t.cpus.len(), 1);
    }

    #[test]
    fn ib_port_down_and_roce_netdev() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = FakeHost::dgx_h100_like();
        let FakeDevice::IbNic { active, .. } = &mut host.sockets[0].switches[0].devices[1] else {
            panic!()
        };
        *active = false;
        host.sockets[1].switches[1].devices[3] = FakeDevice::IbNic {
            ibdev: "mlx5_7".into(),
            netdev: Some("ens7np0".into()),
            rate_gbps: 200,
            link_layer: "Ethernet".into(),
            active: true,
        };
        host.write(dir.path()).unwrap();
        let t = probe(dir.path()).unwrap();
        let n0 = net(&t, "mlx5_0");
        assert_eq!(n0.state, PortState::Down);
        assert_eq!(t.warnings, ["net mlx5_0 (0000:1b:00.0) is down"]);
        let n7 = net(&t, "mlx5_7");
        assert_eq!(n7.link_layer.as_deref(), Some("Ethernet"));
        assert_eq!(n7.speed_mbps, Some(200_000));
        assert_eq!(n7.netdev.as_deref(), Some("ens7np0"));
        assert!(t.nets.iter().all(|n| n.name != "ens7np0"));
    }

    #[test]
    fn helpers() {
        assert!(is_bdf("0000:00:1f.6"));
        assert!(!is_bdf("0000:00:1f"));
        assert!(!is_bdf("0000:0g:00.0"));
        assert!(!is_bdf("0000:00:00.0:pcie001"));
        assert_eq!(parse_rate_mbps("400 Gb/sec (4X NDR)"), Some(400_000));
        assert_eq!(parse_rate_mbps("0 Gb/sec"), None);
        assert_eq!(parse_ib_state("2: INIT"), PortState::Down);
        assert_eq!(
            min_speed(Some("16.0 GT/s PCIe".into()), Some("8.0 GT/s PCIe".into())),
            "8.0 GT/s PCIe"
        );
        assert_eq!(
            min_speed(Some("Unknown".into()), Some("8 GT/s".into())),
            "8 GT/s"
        );
        assert_eq!(min_speed(None, None), "");
        assert_eq!(nccl_arch("aarch64"), "arm64");
    }

    #[test]
    fn live_root_does_not_fail() {
        // Whatever this machine is, probing it must not panic or error.
        if Path::new("/sys").is_dir() {
            let t = probe(Path::new("/")).unwrap();
            eprintln!(
                "live: {} cpus, {} gpus, nets {:?}, warnings {:?}",
                t.cpus.len(),
                t.gpus.len(),
                t.nets
                    .iter()
                    .map(|n| (&n.name, &n.addrs, n.is_virtual))
                    .collect::<Vec<_>>(),
                t.warnings
            );
            for c in &t.cpus {
                assert!(t.cpu(*c).unwrap().arch.is_some());
            }
        }
    }

    /// Extract a fixture tarball into a tempdir; `None` when the shared
    /// fixtures are not checked out next to the workspace.
    fn fixture(tarball: &str) -> Option<tempfile::TempDir> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/topologies");
        if !dir.is_dir() {
            // Straight to stderr, past libtest's capture: the skip shows
            // in `cargo test` output (as `zccl_testbed::skip` does).
            use std::io::Write;
            let t = std::thread::current();
            let msg = format!(
                "SKIPPED {}: ../shared/fixtures not present\n",
                t.name().unwrap_or("test")
            );
            let _ = std::io::stderr().lock().write_all(msg.as_bytes());
            return None;
        }
        let f = std::fs::File::open(dir.join(tarball)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut ar = tar::Archive::new(bzip2::read::BzDecoder::new(f));
        ar.set_preserve_permissions(false);
        ar.unpack(tmp.path()).unwrap();
        Some(tmp)
    }

    #[test]
    fn hwloc_nec_ve() {
        let Some(tmp) = fixture("hwloc-sysfs-nec-ve-8acc-2ib.tar.bz2") else {
            return;
        };
        let t = probe(&tmp.path().join("32intel64-2p8co2t+8ve")).unwrap();
        assert_eq!(t.gpus.len(), 8);
        let names: Vec<&str> = t.gpus.iter().map(|g| g.name.as_deref().unwrap()).collect();
        assert_eq!(
            names,
            ["ve0", "ve1", "ve2", "ve3", "ve4", "ve5", "ve6", "ve7"]
        );
        for g in &t.gpus {
            assert_eq!(g.class, DeviceClass::Accelerator);
            assert_eq!(t.pci(g.node).unwrap().class, 0x0b4000);
            assert_eq!(t.numa_of(g.node), 0);
        }
        let hca_a = t.find_busid("0000:1a:00.0").expect("HCA 1a");
        let hca_b = t.find_busid("0000:3e:00.0").expect("HCA 3e");
        let sw_a = t.find_busid("0000:18:00.0").unwrap();
        let sw_b = t.find_busid("0000:3b:00.0").unwrap();
        assert_eq!(t.nodes[hca_a].parent, Some(sw_a));
        assert_eq!(t.nodes[hca_b].parent, Some(sw_b));
        for (i, g) in t.gpus.iter().enumerate() {
            let sw = if i < 4 { sw_a } else { sw_b };
            assert_eq!(t.nodes[g.node].parent, Some(sw), "ve{i}");
        }
        assert_eq!(t.nodes[sw_a].parent, Some(t.cpus[0]));
        let hca = t.pci(hca_a).unwrap();
        assert_eq!(
            (hca.vendor, hca.device, hca.class),
            (Some(0x15b3), Some(0x1013), 0x020700)
        );
        assert_eq!((hca.link_speed.as_str(), hca.link_width), ("8 GT/s", 16));
        assert_eq!(
            hca.sysfs_path.as_deref().unwrap(),
            [
                "pci0000:17",
                "0000:17:00.0",
                "0000:18:00.0",
                "0000:19:04.0",
                "0000:1a:00.0"
            ]
        );
        assert_eq!(t.cpus.len(), 2);
        let c = t.cpu(t.cpus[0]).unwrap();
        assert_eq!(
            c.affinity.as_deref(),
            Some("0000,00000000,00000000,00ff00ff")
        );
        assert_eq!(
            (c.vendor.as_deref(), c.familyid, c.modelid),
            (Some("GenuineIntel"), Some(6), Some(85))
        );
        let e = net(&t, "enp96s0f0");
        assert_eq!(t.pci(e.node).unwrap().busid, "0000:60:00.0");
        assert_eq!(net(&t, "enp96s0f1").kind, NetKind::Socket);
        // The HCAs have no RDMA class entry in this dump: one port each,
        // named by bus ID.
        for hca in ["0000:1a:00.0", "0000:3e:00.0"] {
            let n = net(&t, hca);
            assert_eq!((n.kind, n.state), (NetKind::Ib, PortState::Unknown));
            assert_eq!(t.pci(n.node).unwrap().busid, hca);
        }
        assert_eq!(t.nets.len(), 4);
    }

    #[test]
    fn hwloc_mic_mlx4() {
        let Some(tmp) = fixture("hwloc-sysfs-mic-mlx4.tar.bz2") else {
            return;
        };
        let t = probe(&tmp.path().join("32em64t-2n8c+1mic")).unwrap();
        let ib = net(&t, "mlx4_0");
        assert_eq!(ib.kind, NetKind::Ib);
        assert_eq!(ib.speed_mbps, Some(56_000));
        assert_eq!(ib.port, Some(1));
        assert_eq!(ib.state, PortState::Up);
        assert_eq!(ib.link_layer.as_deref(), Some("InfiniBand"));
        assert_eq!(ib.netdev.as_deref(), Some("ib0"));
        assert_eq!(ib.guid.as_deref(), Some("0002:c903:00f9:bfa3"));
        assert_eq!(t.pci(ib.node).unwrap().busid, "0000:82:00.0");
        assert_eq!(t.pci(ib.node).unwrap().class, 0x028000);
        assert_eq!(t.numa_of(ib.node), 1);
        assert!(
            t.nets
                .iter()
                .all(|n| n.name != "ib0" && n.name != "lo" && n.name != "scif0")
        );
        assert_eq!(t.pci(net(&t, "eth0").node).unwrap().busid, "0000:02:00.0");
        assert_eq!(t.pci(net(&t, "eth1").node).unwrap().busid, "0000:02:00.3");
        assert_eq!(t.numa_of(net(&t, "eth0").node), 0);
        for v in ["br0", "eth0.1015", "mic0"] {
            let n = net(&t, v);
            assert!(n.is_virtual, "{v}");
            assert_eq!(n.node, t.cpus[0]);
        }
        // The Xeon Phi is an accelerator; the ASPEED VGA is not a GPU.
        assert_eq!(t.gpus.len(), 1);
        assert_eq!(t.gpus[0].name.as_deref(), Some("mic0"));
        assert_eq!(t.pci(t.gpus[0].node).unwrap().busid, "0000:83:00.0");
        assert!(t.find_busid("0000:05:00.0").is_none());
        assert_eq!(t.cpus.len(), 2);
        assert_eq!(
            t.cpu(t.cpus[1]).unwrap().affinity.as_deref(),
            Some("00000000,00000000,00000000,0000ff00")
        );
        assert!(
            t.warnings.iter().any(|w| w.starts_with("flat topology")),
            "{:?}",
            t.warnings
        );
    }
}

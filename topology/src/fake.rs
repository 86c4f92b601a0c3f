//! Fake sysfs trees for tests (and, with [`many_devices_xml`], large NCCL
//! topology files).
//!
//! [`FakeHost`] describes a host compactly (sockets, PCIe switches, the GPUs
//! and NICs behind them) and [`FakeHost::write`] turns the description into
//! a realistic `<root>/sys/...` and `<root>/proc/cpuinfo` tree, laid out like
//! a real kernel's, with relative symlinks, so [`crate::sysfs::probe`] can
//! read it exactly as it reads `/`.
//!
//! Layout written for a device behind a switch whose host bridge is bus `r`
//! (all bus numbers in hex, domain `0000`):
//!
//! ```text
//! sys/devices/pci0000:r/0000:r:01.0             root port
//!   └ 0000:(r+1):00.0                           switch upstream port
//!     └ 0000:(r+2):0i.0                         switch downstream port i
//!       └ 0000:(r+3+i):00.0                     device i of the switch
//! ```
//!
//! A device on a root port of a socket whose `root_bus` is `r` sits at
//! `pci0000:r/0000:r:(10+i).0/0000:(r+1+i):00.0`; a device directly on the
//! host bridge (root-complex integrated, as in a QEMU VM) sits at
//! `pci0000:r/0000:r:(03+i).0`. Every PCI function gets `class`, `vendor`,
//! `device`, `subsystem_vendor`, `subsystem_device`, `numa_node`,
//! `local_cpulist` and, except virtio devices, `max_link_speed`,
//! `max_link_width`, `current_link_speed` and `current_link_width` (GPUs
//! report an idle 2.5 GT/s current speed, as real ones do), plus a
//! `sys/bus/pci/devices/<bdf>` link.
//!
//! Bus numbers are given by the description; overlapping numbers make
//! [`FakeHost::write`] fail with an I/O error rather than silently merge
//! devices.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// A whole fake host.
///
/// ```
/// use zccl_topology::fake::{FakeDevice, FakeHost, FakeSocket, FakeSwitch};
/// let dir = tempfile::tempdir().unwrap();
/// // The preset: 2 sockets, 4 switches, 8 H100 and 8 ConnectX-7.
/// FakeHost::dgx_h100_like().write(dir.path()).unwrap();
/// assert!(dir.path().join("sys/class/infiniband/mlx5_0/ports/1/rate").exists());
///
/// // A custom one: one socket, one switch with a GPU and an IB NIC.
/// let host = FakeHost {
///     sockets: vec![FakeSocket {
///         switches: vec![FakeSwitch::new(
///             0x17,
///             vec![FakeDevice::h100(), FakeDevice::cx7("mlx5_0", "ibp27s0")],
///         )],
///         ..FakeSocket::new(0, "0-15")
///     }],
///     ..FakeHost::default()
/// };
/// let dir = tempfile::tempdir().unwrap();
/// host.write(dir.path()).unwrap();
/// let topo = zccl_topology::probe_sysfs(dir.path()).unwrap();
/// assert_eq!(topo.gpus.len(), 1);
/// assert_eq!(topo.nets[0].name, "mlx5_0");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FakeHost {
    /// CPU sockets (one NUMA node each), with the PCI devices they host.
    pub sockets: Vec<FakeSocket>,
    /// Interfaces with no device, written under `sys/devices/virtual/net`
    /// (`lo` gets operstate `unknown`, the others `up`).
    pub virtual_nets: Vec<String>,
    /// What `proc/cpuinfo` says; no `proc/cpuinfo` when `None`.
    pub cpu: Option<FakeCpu>,
}

/// The `proc/cpuinfo` facts of a fake host; one block per logical CPU listed
/// by the sockets is written.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeCpu {
    /// `vendor_id`, e.g. `GenuineIntel`.
    pub vendor_id: String,
    /// `cpu family`.
    pub family: u32,
    /// `model`.
    pub model: u32,
    /// `model name`.
    pub model_name: String,
}

impl FakeCpu {
    /// Intel Xeon Sapphire Rapids (family 6, model 143).
    pub fn sapphire_rapids() -> Self {
        FakeCpu {
            vendor_id: "GenuineIntel".into(),
            family: 6,
            model: 143,
            model_name: "Intel(R) Xeon(R) Platinum 8480C".into(),
        }
    }
}

/// One socket: a NUMA node and the PCI devices attached to it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeSocket {
    /// NUMA node id; `sys/devices/system/node/node<numa>` is written when it
    /// is not negative.
    pub numa: i32,
    /// The node's CPUs in `cpulist` form (`0-55,112-167`); `cpumap` is
    /// computed from it.
    pub cpulist: String,
    /// Content written to every `numa_node` file of this socket's devices
    /// instead of `numa` (e.g. `"-1"` for a VM, or `"x"` to test the
    /// corrupt-file error). `None`: `numa`.
    pub numa_file: Option<String>,
    /// PCIe switches, each under its own host bridge and root port.
    pub switches: Vec<FakeSwitch>,
    /// Host bridge bus for `root_port_devices` and `host_bridge_devices`.
    pub root_bus: u8,
    /// Devices each on its own root port of host bridge `root_bus`.
    pub root_port_devices: Vec<FakeDevice>,
    /// Devices directly on host bridge `root_bus` (no root port), as in a VM.
    pub host_bridge_devices: Vec<FakeDevice>,
}

impl FakeSocket {
    /// A socket with no devices, root bus `0x00` for NUMA 0 and `0x80`
    /// otherwise.
    pub fn new(numa: i32, cpulist: &str) -> Self {
        FakeSocket {
            numa,
            cpulist: cpulist.to_string(),
            numa_file: None,
            switches: Vec::new(),
            root_bus: if numa == 0 { 0x00 } else { 0x80 },
            root_port_devices: Vec::new(),
            host_bridge_devices: Vec::new(),
        }
    }
}

/// A PCIe switch (vendor PLX `0x10b5`): one upstream port and one
/// downstream port per device, behind its own host bridge and root port.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeSwitch {
    /// Bus of the host bridge (`pci0000:<bus>`); the upstream port is
    /// `0000:<bus+1>:00.0`.
    pub bus: u8,
    /// Devices below the switch, in downstream-port order.
    pub devices: Vec<FakeDevice>,
}

impl FakeSwitch {
    /// A switch under host bridge `bus`.
    pub fn new(bus: u8, devices: Vec<FakeDevice>) -> Self {
        FakeSwitch { bus, devices }
    }
}

/// A PCI endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum FakeDevice {
    /// A display controller (class `0x03....`): a GPU when the vendor is
    /// NVIDIA or AMD. Link 32.0 GT/s ×16.
    Gpu {
        /// PCI vendor id (`0x10de`).
        vendor: u16,
        /// PCI device id (`0x2330` for H100 SXM).
        device: u16,
        /// PCI class (`0x030200`).
        class: u32,
    },
    /// An accelerator (class `0x12....` or `0x0b40..`). Link 16.0 GT/s ×16.
    Accelerator {
        /// PCI vendor id.
        vendor: u16,
        /// PCI device id.
        device: u16,
        /// PCI class.
        class: u32,
        /// Kernel class and device name, e.g. `("ve", "ve0")`: written as
        /// `sys/class/ve/ve0` with a `device` link to the PCI device.
        name: Option<(String, String)>,
    },
    /// An RDMA NIC (ConnectX-7 ids `0x15b3:0x1021`, class `0x020700`,
    /// 32.0 GT/s ×16) with one port.
    IbNic {
        /// RDMA device name (`mlx5_0`).
        ibdev: String,
        /// Kernel interface of the port (`ibp26s0`), written under the PCI
        /// device's `net/` and in `sys/class/net`.
        netdev: Option<String>,
        /// Port rate in Gb/s (`400` → `"400 Gb/sec (4X NDR)"`).
        rate_gbps: u32,
        /// `InfiniBand` or `Ethernet`.
        link_layer: String,
        /// `true`: state `4: ACTIVE`; `false`: `1: DOWN`.
        active: bool,
    },
    /// An Ethernet NIC (`0x8086:0x1563`, class `0x020000`, 8.0 GT/s ×8).
    EthNic {
        /// Interface name.
        netdev: String,
        /// `speed` in Mb/s; `None` writes `-1` as a link-less NIC does.
        speed_mbps: Option<u32>,
        /// operstate `up` (else `down`).
        up: bool,
    },
    /// A virtio-net function (`0x1af4:0x1041`, class `0x020000`) whose
    /// interface sits below `virtio<index>`, as in a VM:
    /// `.../0000:00:03.0/virtio<index>/net/<netdev>`.
    VirtioNet {
        /// Interface name.
        netdev: String,
        /// The `virtioN` number.
        index: u32,
    },
    /// Anything else (NVMe, BMC graphics...): written but not a GPU or NIC.
    Other {
        /// PCI vendor id.
        vendor: u16,
        /// PCI device id.
        device: u16,
        /// PCI class.
        class: u32,
    },
}

impl FakeDevice {
    /// An NVIDIA H100 SXM (`0x10de:0x2330`, class `0x030200`).
    pub fn h100() -> Self {
        FakeDevice::Gpu {
            vendor: 0x10de,
            device: 0x2330,
            class: 0x030200,
        }
    }

    /// A ConnectX-7 NDR port: 400 Gb/s, InfiniBand, active.
    pub fn cx7(ibdev: &str, netdev: &str) -> Self {
        FakeDevice::IbNic {
            ibdev: ibdev.to_string(),
            netdev: Some(netdev.to_string()),
            rate_gbps: 400,
            link_layer: "InfiniBand".into(),
            active: true,
        }
    }

    /// An up 10 GbE Intel NIC.
    pub fn eth(netdev: &str) -> Self {
        FakeDevice::EthNic {
            netdev: netdev.to_string(),
            speed_mbps: Some(10000),
            up: true,
        }
    }

    /// (vendor, device, class, subsystem device, link speed and width).
    fn ids(&self) -> (u16, u16, u32, u16, Option<(&'static str, u32)>) {
        const GEN5: &str = "32.0 GT/s PCIe";
        match self {
            FakeDevice::Gpu {
                vendor,
                device,
                class,
            } => (*vendor, *device, *class, 0x16c1, Some((GEN5, 16))),
            FakeDevice::Accelerator {
                vendor,
                device,
                class,
                ..
            } => (
                *vendor,
                *device,
                *class,
                *device,
                Some(("16.0 GT/s PCIe", 16)),
            ),
            FakeDevice::IbNic { .. } => (0x15b3, 0x1021, 0x020700, 0x0041, Some((GEN5, 16))),
            FakeDevice::EthNic { .. } => {
                (0x8086, 0x1563, 0x020000, 0x0001, Some(("8.0 GT/s PCIe", 8)))
            }
            FakeDevice::VirtioNet { .. } => (0x1af4, 0x1041, 0x020000, 0x1100, None),
            FakeDevice::Other {
                vendor,
                device,
                class,
            } => (
                *vendor,
                *device,
                *class,
                *device,
                Some(("16.0 GT/s PCIe", 4)),
            ),
        }
    }
}

impl FakeHost {
    /// A DGX H100-like host: 2 Sapphire Rapids sockets (NUMA 0: CPUs
    /// `0-55,112-167`, NUMA 1: `56-111,168-223`); 4 PLX switches under host
    /// bridges `0x17`, `0x3a` (socket 0), `0x9a`, `0xb8` (socket 1), each
    /// with GPU, NIC, GPU, NIC (H100s and ConnectX-7 `mlx5_0`..`mlx5_7`,
    /// netdevs `ibp<bus>s0` with the bus in decimal, 400 Gb/s NDR, active);
    /// `eth0` (10 GbE, up) on a root port of socket 0 at `0000:01:00.0`;
    /// virtual `lo` and `veth0`.
    ///
    /// GPUs by bus: `1a 1c 3d 3f 9d 9f bb bd`; NICs: `1b 1d 3e 40 9e a0 bc be`.
    pub fn dgx_h100_like() -> Self {
        let mut ib = 0;
        let mut switch = |bus: u8| {
            let mut devices = Vec::new();
            for i in 0..4u8 {
                if i % 2 == 0 {
                    devices.push(FakeDevice::h100());
                } else {
                    let dev_bus = u32::from(bus) + 3 + u32::from(i);
                    devices.push(FakeDevice::cx7(
                        &format!("mlx5_{ib}"),
                        &format!("ibp{dev_bus}s0"),
                    ));
                    ib += 1;
                }
            }
            FakeSwitch::new(bus, devices)
        };
        let s0 = vec![switch(0x17), switch(0x3a)];
        let s1 = vec![switch(0x9a), switch(0xb8)];
        FakeHost {
            sockets: vec![
                FakeSocket {
                    switches: s0,
                    root_port_devices: vec![FakeDevice::eth("eth0")],
                    ..FakeSocket::new(0, "0-55,112-167")
                },
                FakeSocket {
                    switches: s1,
                    ..FakeSocket::new(1, "56-111,168-223")
                },
            ],
            virtual_nets: vec!["lo".into(), "veth0".into()],
            cpu: Some(FakeCpu::sapphire_rapids()),
        }
    }

    /// Write the tree under `root` (which is created if needed).
    ///
    /// # Errors
    /// Any I/O error, and `AlreadyExists`/`InvalidInput` when two devices get
    /// the same bus ID or a bus number overflows.
    pub fn write(&self, root: &Path) -> io::Result<()> {
        let w = Writer {
            root: root.to_path_buf(),
            sys: root.join("sys"),
        };
        for d in [
            "sys/devices/system/node",
            "sys/bus/pci/devices",
            "sys/class/net",
            "sys/class/infiniband",
        ] {
            std::fs::create_dir_all(root.join(d))?;
        }
        let cpus_of: Vec<BTreeSet<u32>> = self
            .sockets
            .iter()
            .map(|s| parse_cpulist(&s.cpulist))
            .collect::<io::Result<_>>()?;
        let ncpus = cpus_of
            .iter()
            .filter_map(|c| c.iter().next_back())
            .max()
            .map_or(0, |m| m + 1);
        for (s, cpus) in self.sockets.iter().zip(&cpus_of) {
            if s.numa >= 0 {
                let node = w.sys.join(format!("devices/system/node/node{}", s.numa));
                put(&node.join("cpulist"), &s.cpulist)?;
                put(&node.join("cpumap"), &cpumap(cpus, ncpus))?;
            }
            w.socket(s)?;
        }
        for name in &self.virtual_nets {
            let dir = w.sys.join("devices/virtual/net").join(name);
            let lo = name == "lo";
            put(&dir.join("operstate"), if lo { "unknown" } else { "up" })?;
            put(
                &dir.join("address"),
                if lo {
                    "00:00:00:00:00:00"
                } else {
                    "02:42:ac:11:00:02"
                },
            )?;
            if !lo {
                put(&dir.join("speed"), "10000")?;
            }
            link(
                &format!("../../devices/virtual/net/{name}"),
                &w.sys.join("class/net").join(name),
            )?;
        }
        if let Some(cpu) = &self.cpu {
            let mut text = String::new();
            let all: BTreeSet<u32> = cpus_of.iter().flatten().copied().collect();
            for (i, s) in self.sockets.iter().enumerate() {
                for c in &cpus_of[i] {
                    let _ = write!(
                        text,
                        "processor\t: {c}\nvendor_id\t: {}\ncpu family\t: {}\nmodel\t\t: {}\n\
                         model name\t: {}\nphysical id\t: {}\nsiblings\t: {}\n\n",
                        cpu.vendor_id,
                        cpu.family,
                        cpu.model,
                        cpu.model_name,
                        s.numa.max(0),
                        cpus_of[i].len()
                    );
                }
            }
            if all.is_empty() {
                let _ = write!(
                    text,
                    "processor\t: 0\nvendor_id\t: {}\ncpu family\t: {}\nmodel\t\t: {}\nmodel name\t: {}\n\n",
                    cpu.vendor_id, cpu.family, cpu.model, cpu.model_name
                );
            }
            put(&w.root.join("proc/cpuinfo"), text.trim_end())?;
        }
        Ok(())
    }
}

/// Parse `0-3,8,10-11` into a CPU set.
fn parse_cpulist(s: &str) -> io::Result<BTreeSet<u32>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad cpulist {s:?}"));
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
            None => {
                let v: u32 = part.parse().map_err(|_| bad())?;
                (v, v)
            }
        };
        if b < a {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// The kernel's `cpumap` form: 32-bit hex words, most significant first,
/// comma-separated, enough words for `ncpus`.
fn cpumap(cpus: &BTreeSet<u32>, ncpus: u32) -> String {
    let words = ncpus.div_ceil(32).max(1);
    (0..words)
        .rev()
        .map(|w| {
            let mut v = 0u32;
            for c in cpus.range(w * 32..(w + 1) * 32) {
                v |= 1 << (c - w * 32);
            }
            format!("{v:08x}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn put(path: &Path, content: &str) -> io::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, format!("{content}\n"))
}

fn link(target: &str, at: &Path) -> io::Result<()> {
    if let Some(p) = at.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::os::unix::fs::symlink(target, at)
}

fn bus_add(bus: u8, n: usize) -> io::Result<u8> {
    u8::try_from(usize::from(bus) + n).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bus 0x{bus:02x} + {n} overflows"),
        )
    })
}

fn bdf(bus: u8, dev: u8, func: u8) -> String {
    format!("0000:{bus:02x}:{dev:02x}.{func}")
}

struct Writer {
    root: PathBuf,
    sys: PathBuf,
}

/// The per-socket facts every PCI function repeats.
struct Ctx<'a> {
    numa: String,
    cpulist: &'a str,
}

impl Writer {
    fn socket(&self, s: &FakeSocket) -> io::Result<()> {
        let ctx = Ctx {
            numa: s.numa_file.clone().unwrap_or_else(|| s.numa.to_string()),
            cpulist: &s.cpulist,
        };
        for sw in &s.switches {
            let r = sw.bus;
            let hb = format!("pci0000:{r:02x}");
            let rp = format!("{hb}/{}", bdf(r, 1, 0));
            self.bridge(&rp, 0x8086, 0x352a, &ctx)?;
            let usp = format!("{rp}/{}", bdf(bus_add(r, 1)?, 0, 0));
            self.bridge(&usp, 0x10b5, 0xc030, &ctx)?;
            for (i, d) in sw.devices.iter().enumerate() {
                let slot = u8::try_from(i).map_err(|_| bus_err())?;
                let dsp = format!("{usp}/{}", bdf(bus_add(r, 2)?, slot, 0));
                self.bridge(&dsp, 0x10b5, 0xc030, &ctx)?;
                let path = format!("{dsp}/{}", bdf(bus_add(r, 3 + i)?, 0, 0));
                self.device(&path, d, &ctx)?;
            }
        }
        let r = s.root_bus;
        let hb = format!("pci0000:{r:02x}");
        for (i, d) in s.root_port_devices.iter().enumerate() {
            let slot = u8::try_from(0x10 + i).map_err(|_| bus_err())?;
            let rp = format!("{hb}/{}", bdf(r, slot, 0));
            self.bridge(&rp, 0x8086, 0x352a, &ctx)?;
            self.device(&format!("{rp}/{}", bdf(bus_add(r, 1 + i)?, 0, 0)), d, &ctx)?;
        }
        for (i, d) in s.host_bridge_devices.iter().enumerate() {
            let slot = u8::try_from(3 + i).map_err(|_| bus_err())?;
            self.device(&format!("{hb}/{}", bdf(r, slot, 0)), d, &ctx)?;
        }
        Ok(())
    }

    /// The common files of a PCI function at `path` (below `sys/devices`),
    /// and its `sys/bus/pci/devices` link. Fails if it already exists.
    fn function(
        &self,
        path: &str,
        ids: (u16, u16, u32, u16),
        link_caps: Option<(&str, u32)>,
        current: Option<&str>,
        ctx: &Ctx<'_>,
    ) -> io::Result<PathBuf> {
        let dir = self.sys.join("devices").join(path);
        let busid = path.rsplit('/').next().unwrap_or(path);
        let bus_link = self.sys.join("bus/pci/devices").join(busid);
        if bus_link.symlink_metadata().is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("fake sysfs: bus ID {busid} written twice"),
            ));
        }
        let (vendor, device, class, subdev) = ids;
        put(&dir.join("class"), &format!("0x{class:06x}"))?;
        put(&dir.join("vendor"), &format!("0x{vendor:04x}"))?;
        put(&dir.join("device"), &format!("0x{device:04x}"))?;
        put(&dir.join("subsystem_vendor"), &format!("0x{vendor:04x}"))?;
        put(&dir.join("subsystem_device"), &format!("0x{subdev:04x}"))?;
        put(&dir.join("numa_node"), &ctx.numa)?;
        put(&dir.join("local_cpulist"), ctx.cpulist)?;
        if let Some((speed, width)) = link_caps {
            put(&dir.join("max_link_speed"), speed)?;
            put(&dir.join("max_link_width"), &width.to_string())?;
            put(&dir.join("current_link_speed"), current.unwrap_or(speed))?;
            put(&dir.join("current_link_width"), &width.to_string())?;
        }
        link(&format!("../../../devices/{path}"), &bus_link)?;
        Ok(dir)
    }

    fn bridge(&self, path: &str, vendor: u16, device: u16, ctx: &Ctx<'_>) -> io::Result<()> {
        self.function(
            path,
            (vendor, device, 0x060400, device),
            Some(("32.0 GT/s PCIe", 16)),
            None,
            ctx,
        )
        .map(|_| ())
    }

    fn device(&self, path: &str, d: &FakeDevice, ctx: &Ctx<'_>) -> io::Result<()> {
        let (vendor, device, class, subdev, caps) = d.ids();
        let current = matches!(d, FakeDevice::Gpu { .. }).then_some("2.5 GT/s PCIe");
        let dir = self.function(path, (vendor, device, class, subdev), caps, current, ctx)?;
        let busid = path.rsplit('/').next().unwrap_or(path);
        let bus = u8::from_str_radix(busid.get(5..7).unwrap_or("0"), 16).unwrap_or(0);
        let mac = format!("b8:3f:d2:00:{bus:02x}:00");
        match d {
            FakeDevice::Gpu { .. } | FakeDevice::Other { .. } => {}
            FakeDevice::Accelerator { name, .. } => {
                if let Some((cls, name)) = name {
                    let sub = dir.join(cls).join(name);
                    link(&format!("../../../{busid}"), &sub.join("device"))?;
                    link(
                        &format!("../../devices/{path}/{cls}/{name}"),
                        &self.sys.join("class").join(cls).join(name),
                    )?;
                }
            }
            FakeDevice::IbNic {
                ibdev,
                netdev,
                rate_gbps,
                link_layer,
                active,
            } => {
                let ib = dir.join("infiniband").join(ibdev);
                link(&format!("../../../{busid}"), &ib.join("device"))?;
                let guid = format!("b83f:d203:00{bus:02x}:0000");
                put(&ib.join("sys_image_guid"), &guid)?;
                put(&ib.join("node_guid"), &guid)?;
                let port = ib.join("ports/1");
                let suffix = match rate_gbps {
                    800 => " (4X XDR)",
                    400 => " (4X NDR)",
                    200 => " (4X HDR)",
                    100 => " (4X EDR)",
                    56 => " (4X FDR)",
                    _ => "",
                };
                put(&port.join("rate"), &format!("{rate_gbps} Gb/sec{suffix}"))?;
                let (state, phys) = if *active {
                    ("4: ACTIVE", "5: LinkUp")
                } else {
                    ("1: DOWN", "3: Disabled")
                };
                put(&port.join("state"), state)?;
                put(&port.join("phys_state"), phys)?;
                put(&port.join("link_layer"), link_layer)?;
                link(
                    &format!("../../devices/{path}/infiniband/{ibdev}"),
                    &self.sys.join("class/infiniband").join(ibdev),
                )?;
                if let Some(nd) = netdev {
                    if link_layer == "Ethernet" {
                        put(&port.join("gid_attrs/ndevs/0"), nd)?;
                    }
                    let up = if *active { "up" } else { "down" };
                    self.netdev(path, busid, nd, Some(*rate_gbps * 1000), up, &mac)?;
                }
            }
            FakeDevice::EthNic {
                netdev,
                speed_mbps,
                up,
            } => {
                let state = if *up { "up" } else { "down" };
                self.netdev(path, busid, netdev, *speed_mbps, state, &mac)?;
            }
            FakeDevice::VirtioNet { netdev, index } => {
                let virtio = format!("virtio{index}");
                let vdir = dir.join(&virtio);
                put(&vdir.join("device"), "0x0001")?;
                put(&vdir.join("vendor"), "0x1af4")?;
                let nd = vdir.join("net").join(netdev);
                put(&nd.join("operstate"), "up")?;
                put(&nd.join("address"), &mac)?;
                put(&nd.join("speed"), "-1")?;
                link(&format!("../../../{virtio}"), &nd.join("device"))?;
                link(
                    &format!("../../devices/{path}/{virtio}/net/{netdev}"),
                    &self.sys.join("class/net").join(netdev),
                )?;
            }
        }
        Ok(())
    }

    /// `<pcidev>/net/<name>` and its `sys/class/net` link.
    fn netdev(
        &self,
        path: &str,
        busid: &str,
        name: &str,
        speed: Option<u32>,
        operstate: &str,
        mac: &str,
    ) -> io::Result<()> {
        let nd = self.sys.join("devices").join(path).join("net").join(name);
        put(
            &nd.join("speed"),
            &speed.map_or("-1".to_string(), |s| s.to_string()),
        )?;
        put(&nd.join("operstate"), operstate)?;
        put(&nd.join("address"), mac)?;
        put(&nd.join("dev_port"), "0")?;
        link(&format!("../../../{busid}"), &nd.join("device"))?;
        link(
            &format!("../../devices/{path}/net/{name}"),
            &self.sys.join("class/net").join(name),
        )
    }
}

fn bus_err() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "too many devices for one bus")
}

/// A synthetic NCCL topology XML file with `gpus` GPUs and `nics` NICs, for
/// tests of large inputs: two CPUs, and PCIe Gen5 switches that each hold
/// two GPUs and two NICs (bare `<pci>` leaves, as in Azure's partial files)
/// until both run out. 1600 GPUs and 1600 NICs make a 390 KB file; up to
/// about 130 000 of each are supported. The file is what
/// [`crate::xml::to_string`] writes back.
///
/// ```
/// let text = zccl_topology::fake::many_devices_xml(6, 4);
/// let t = zccl_topology::xml::parse_str(&text, "many").unwrap();
/// assert_eq!((t.gpus.len(), t.nets.len(), t.cpus.len()), (6, 4, 2));
/// assert!(zccl_topology::xml::to_string(&t) == text);
/// ```
pub fn many_devices_xml(gpus: usize, nics: usize) -> String {
    const PER_SWITCH: usize = 2;
    let switches = gpus.max(nics).div_ceil(PER_SWITCH);
    let per_cpu = switches.div_ceil(2);
    let leaf = |out: &mut String, domain: usize, i: usize, class: &str| {
        let _ = writeln!(
            out,
            "      <pci busid=\"{:04x}:{:02x}:00.0\" class=\"{class}\" link_speed=\"32.0 GT/s PCIe\" link_width=\"16\"/>",
            domain + (i >> 8),
            i & 0xff
        );
    };
    let mut out = String::from("<system version=\"1\">\n");
    let (mut g, mut n) = (0, 0);
    for cpu in 0..2 {
        let _ = writeln!(
            out,
            "  <cpu numaid=\"{cpu}\" arch=\"x86_64\" vendor=\"GenuineIntel\" familyid=\"6\" modelid=\"143\">"
        );
        for s in (cpu * per_cpu)..((cpu + 1) * per_cpu).min(switches) {
            let _ = writeln!(
                out,
                "    <pci busid=\"{:04x}:{:02x}:{:02x}.0\" class=\"0x060400\" link_speed=\"32.0 GT/s PCIe\" link_width=\"16\">",
                0xfffe - (s >> 16),
                (s >> 8) & 0xff,
                s & 0xff
            );
            for _ in 0..PER_SWITCH {
                if g < gpus {
                    leaf(&mut out, 0x1000, g, "0x030200");
                    g += 1;
                }
            }
            for _ in 0..PER_SWITCH {
                if n < nics {
                    leaf(&mut out, 0x2000, n, "0x020700");
                    n += 1;
                }
            }
            out.push_str("    </pci>\n");
        }
        out.push_str("  </cpu>\n");
    }
    out.push_str("</system>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn cpulist_and_cpumap() {
        let s = parse_cpulist("0-3,8,30-33").unwrap();
        assert_eq!(s.len(), 9);
        assert_eq!(cpumap(&s, 64), "00000003,c000010f");
        assert_eq!(cpumap(&parse_cpulist("").unwrap(), 0), "00000000");
        assert!(parse_cpulist("3-1").is_err());
        assert!(parse_cpulist("a").is_err());
    }

    #[test]
    fn dgx_layout() {
        let dir = tempfile::tempdir().unwrap();
        FakeHost::dgx_h100_like().write(dir.path()).unwrap();
        let sys = dir.path().join("sys");
        // 4 switches × (root port + upstream + 4 downstream + 4 devices) + eth0 and its root port.
        assert_eq!(count(&sys.join("bus/pci/devices")), 42);
        assert_eq!(count(&sys.join("class/infiniband")), 8);
        assert_eq!(count(&sys.join("class/net")), 11);
        assert_eq!(count(&sys.join("devices/system/node")), 2);
        // Links are relative and resolve inside the tree.
        let root = std::fs::canonicalize(dir.path()).unwrap();
        for d in ["bus/pci/devices", "class/net", "class/infiniband"] {
            for e in std::fs::read_dir(sys.join(d)).unwrap() {
                let p = e.unwrap().path();
                assert!(std::fs::read_link(&p).unwrap().is_relative());
                assert!(
                    std::fs::canonicalize(&p).unwrap().starts_with(&root),
                    "{p:?}"
                );
            }
        }
        let gpu = sys.join("bus/pci/devices/0000:1a:00.0");
        assert_eq!(
            std::fs::canonicalize(&gpu).unwrap(),
            root.join("sys/devices/pci0000:17/0000:17:01.0/0000:18:00.0/0000:19:00.0/0000:1a:00.0")
        );
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap().trim().to_string();
        assert_eq!(read(gpu.join("class")), "0x030200");
        assert_eq!(read(gpu.join("max_link_speed")), "32.0 GT/s PCIe");
        assert_eq!(read(gpu.join("current_link_speed")), "2.5 GT/s PCIe");
        let ib = sys.join("class/infiniband/mlx5_0");
        assert_eq!(
            std::fs::canonicalize(ib.join("device")).unwrap(),
            std::fs::canonicalize(sys.join("bus/pci/devices/0000:1b:00.0")).unwrap()
        );
        assert_eq!(read(ib.join("ports/1/rate")), "400 Gb/sec (4X NDR)");
        assert_eq!(read(ib.join("ports/1/state")), "4: ACTIVE");
        assert!(ib.join("device/net/ibp27s0").is_dir());
        let eth0 = sys.join("class/net/eth0");
        assert_eq!(read(eth0.join("speed")), "10000");
        assert_eq!(read(eth0.join("device/class")), "0x020000");
        assert!(sys.join("class/net/lo").exists());
        assert!(!sys.join("class/net/lo/device").exists());
        let node1 = sys.join("devices/system/node/node1");
        assert_eq!(read(node1.join("cpulist")), "56-111,168-223");
        assert_eq!(
            read(node1.join("cpumap")),
            "ffffffff,ffffff00,00000000,0000ffff,ffffffff,ff000000,00000000"
        );
        let cpuinfo = read(dir.path().join("proc/cpuinfo"));
        assert_eq!(cpuinfo.matches("processor").count(), 224);
        assert!(cpuinfo.contains("model\t\t: 143"));
    }

    #[test]
    fn accelerator_names_and_numa_knob() {
        let dir = tempfile::tempdir().unwrap();
        let host = FakeHost {
            sockets: vec![FakeSocket {
                numa_file: Some("-1".into()),
                switches: vec![FakeSwitch::new(
                    0x17,
                    vec![FakeDevice::Accelerator {
                        vendor: 0x1bcf,
                        device: 0x001c,
                        class: 0x0b4000,
                        name: Some(("ve".into(), "ve0".into())),
                    }],
                )],
                ..FakeSocket::new(0, "0-3")
            }],
            ..FakeHost::default()
        };
        host.write(dir.path()).unwrap();
        let ve0 = dir.path().join("sys/class/ve/ve0/device");
        assert!(
            std::fs::canonicalize(&ve0)
                .unwrap()
                .ends_with("0000:1a:00.0")
        );
        let numa = dir
            .path()
            .join("sys/bus/pci/devices/0000:1a:00.0/numa_node");
        assert_eq!(std::fs::read_to_string(numa).unwrap(), "-1\n");
        assert!(!dir.path().join("proc/cpuinfo").exists());
    }

    #[test]
    fn clashing_or_overflowing_buses_fail() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = FakeHost::dgx_h100_like();
        host.sockets[1].switches[0].bus = 0x17;
        let e = host.write(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);

        let dir = tempfile::tempdir().unwrap();
        let mut host = FakeHost::dgx_h100_like();
        host.sockets[1].switches[0].bus = 0xfd;
        let e = host.write(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}

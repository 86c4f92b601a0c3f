//! Reading NCCL topology XML into a [`Topology`]: a streaming parser
//! (`quick_xml`) that builds CPUs, PCI trees, GPUs and NICs as elements
//! close, names partial files' bare leaves, checks the limits of
//! [`super`], then numbers the nodes in bus-ID order.

use super::*;
use crate::model::{Cpu, DeviceClass, Gpu, Net, NetKind, NodeId, NodeKind, NvLink, Pci, PortState};
use crate::paths::busid_value;
use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;

/// What an open element is, as far as building the topology goes.
#[derive(Debug, Clone, Copy)]
enum Frame {
    System,
    Cpu(NodeId),
    Pci(NodeId),
    /// Index into `Parser::gpus`.
    Gpu(usize),
    Nvlink,
    Nic {
        node: NodeId,
        is_virtual: bool,
    },
    Net,
    /// An ignored element and everything inside it.
    Skip,
}

/// An element on the stack of open elements.
struct Open {
    name: String,
    line: usize,
    frame: Frame,
}

/// Per-node facts only the importer needs.
#[derive(Default, Clone, Copy)]
struct NodeInfo {
    line: usize,
    has_gpu: bool,
    has_nic: bool,
}

/// One element's name, line and attributes, with typed attribute readers
/// that produce the errors the module promises.
struct Elem<'f> {
    file: &'f str,
    line: usize,
    name: String,
    attrs: Vec<(String, String)>,
}

impl Elem<'_> {
    fn err(&self, reason: impl Into<String>) -> TopoError {
        TopoError::Xml {
            file: self.file.to_string(),
            line: self.line,
            element: self.name.clone(),
            reason: reason.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn string(&self, key: &str) -> Option<String> {
        self.get(key).map(str::to_string)
    }

    fn req(&self, key: &str) -> Result<&str, TopoError> {
        self.get(key)
            .ok_or_else(|| self.err(format!("missing attribute {key}")))
    }

    fn int<T: FromStr>(&self, key: &str) -> Result<Option<T>, TopoError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| self.err(format!("{key}=\"{v}\" is not an integer"))),
        }
    }

    fn req_int<T: FromStr>(&self, key: &str) -> Result<T, TopoError> {
        self.req(key)?;
        self.int(key).map(|v| v.expect("attribute is present"))
    }

    /// A hex number (`0x` prefix optional) no larger than `max`.
    fn hex(&self, key: &str, max: u32, what: &str) -> Result<Option<u32>, TopoError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let t = v.trim();
        let digits = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        match u32::from_str_radix(digits, 16) {
            Ok(n) if n <= max && !digits.starts_with('+') => Ok(Some(n)),
            _ => Err(self.err(format!("{key}=\"{v}\" is not a {what} hex number"))),
        }
    }

    fn req_hex(&self, key: &str, max: u32, what: &str) -> Result<u32, TopoError> {
        self.req(key)?;
        self.hex(key, max, what)
            .map(|v| v.expect("attribute is present"))
    }

    fn hex16(&self, key: &str) -> Result<Option<u16>, TopoError> {
        Ok(self.hex(key, 0xffff, "16-bit")?.map(|v| v as u16))
    }

    /// An integer flag: 0 is false, anything else true.
    fn flag(&self, key: &str) -> Result<Option<bool>, TopoError> {
        Ok(self.int::<i64>(key)?.map(|v| v != 0))
    }
}

/// True for `dddd:bb:dd.f` in hex digits (either case).
fn is_busid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && [0, 1, 2, 3, 5, 6, 8, 9, 11]
            .iter()
            .all(|&i| b[i].is_ascii_hexdigit())
}

/// `more than 4096 GPUs (zccl's limit per topology file)`.
fn too_many(limit: usize, what: &str) -> String {
    format!(
        "more than {limit} {what} (zccl's limit per topology file; see docs/topology.md, Limits)"
    )
}

/// True for a GPU or accelerator PCI class.
fn is_gpu_class(class: u32) -> bool {
    matches!(
        DeviceClass::of(class),
        DeviceClass::Gpu | DeviceClass::Accelerator
    )
}

/// True for an InfiniBand-class NIC (`0x0207xx`).
pub(super) fn is_ib_class(class: u32) -> bool {
    class >> 8 == 0x0207
}

/// The [`DeviceClass`] a `<gpu>` on a PCI node of this class gets.
fn gpu_class(pci_class: u32) -> DeviceClass {
    match DeviceClass::of(pci_class) {
        DeviceClass::Accelerator => DeviceClass::Accelerator,
        _ => DeviceClass::Gpu,
    }
}

pub(super) struct Parser<'a> {
    text: &'a str,
    file: &'a str,
    topo: Topology,
    stack: Vec<Open>,
    /// Parallel to `topo.nodes`.
    info: Vec<NodeInfo>,
    system_line: Option<usize>,
    busids: HashMap<String, usize>,
    gpus: Vec<Gpu>,
    gpu_devs: HashMap<u32, usize>,
    nets: Vec<Net>,
    net_names: HashMap<String, usize>,
    /// GPUs and accelerators so far (explicit and implicit).
    gpu_count: usize,
    /// Warnings not kept (beyond MAX_WARNINGS).
    dropped_warnings: usize,
    /// Incremental line counting: the line at byte `line_pos`.
    line_pos: usize,
    line_no: usize,
}

impl<'a> Parser<'a> {
    pub(super) fn new(text: &'a str, file: &'a str) -> Self {
        // quick-xml skips a UTF-8 BOM and counts offsets after it; so do we.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Parser {
            text,
            file,
            topo: Topology::default(),
            stack: Vec::new(),
            info: Vec::new(),
            system_line: None,
            busids: HashMap::new(),
            gpus: Vec::new(),
            gpu_devs: HashMap::new(),
            nets: Vec::new(),
            net_names: HashMap::new(),
            gpu_count: 0,
            dropped_warnings: 0,
            line_pos: 0,
            line_no: 1,
        }
    }

    /// The 1-based line of a byte offset.
    fn line_at(&mut self, pos: u64) -> usize {
        let pos = usize::try_from(pos)
            .unwrap_or(usize::MAX)
            .min(self.text.len());
        if pos < self.line_pos {
            self.line_pos = 0;
            self.line_no = 1;
        }
        let newlines = self.text.as_bytes()[self.line_pos..pos]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.line_no += newlines;
        self.line_pos = pos;
        self.line_no
    }

    fn error(&self, line: usize, element: &str, reason: impl Into<String>) -> TopoError {
        TopoError::Xml {
            file: self.file.to_string(),
            line,
            element: element.to_string(),
            reason: reason.into(),
        }
    }

    /// An XML-level error at `pos`, blamed on the innermost open element.
    fn xml_error(&mut self, pos: u64, reason: String) -> TopoError {
        let line = self.line_at(pos);
        let element = self
            .stack
            .last()
            .map(|o| o.name.clone())
            .unwrap_or_else(|| "xml".to_string());
        self.error(line, &element, reason)
    }

    fn warn(&mut self, line: usize, msg: impl AsRef<str>) {
        if self.topo.warnings.len() >= MAX_WARNINGS {
            self.dropped_warnings += 1;
            return;
        }
        let msg = format!("{}:{line}: {}", self.file, msg.as_ref());
        self.topo.warnings.push(msg);
    }

    pub(super) fn run(mut self) -> Result<Topology, TopoError> {
        let mut reader = Reader::from_str(self.text);
        loop {
            let pos = reader.buffer_position();
            let event = match reader.read_event() {
                Ok(ev) => ev,
                Err(e) => {
                    let at = reader.error_position();
                    return Err(self.xml_error(at, e.to_string()));
                }
            };
            match event {
                Event::Start(e) => {
                    let open = self.start(&reader, &e, pos)?;
                    self.stack.push(open);
                }
                Event::Empty(e) => {
                    self.start(&reader, &e, pos)?;
                }
                Event::End(_) => {
                    self.stack.pop();
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if let Some(open) = self.stack.last() {
            let reason =
                quick_xml::errors::IllFormedError::MissingEndTag(open.name.clone()).to_string();
            return Err(self.error(open.line, &open.name, reason));
        }
        self.finish()
    }

    /// Read one start (or empty) element and add what it describes.
    fn start(
        &mut self,
        reader: &Reader<&[u8]>,
        e: &BytesStart<'_>,
        pos: u64,
    ) -> Result<Open, TopoError> {
        let line = self.line_at(pos);
        let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        if self.stack.len() >= MAX_NESTING {
            return Err(self.error(
                line,
                &name,
                format!("elements nested more than {MAX_NESTING} deep"),
            ));
        }
        let mut attrs = Vec::new();
        for attr in e.attributes() {
            if attrs.len() == MAX_ATTRIBUTES {
                return Err(self.error(
                    line,
                    &name,
                    format!("more than {MAX_ATTRIBUTES} attributes"),
                ));
            }
            let attr = attr.map_err(|err| self.error(line, &name, err.to_string()))?;
            let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
            let value = attr
                .decode_and_unescape_value(reader.decoder())
                .map_err(|err| self.error(line, &name, err.to_string()))?
                .into_owned();
            attrs.push((key, value));
        }
        let el = Elem {
            file: self.file,
            line,
            name,
            attrs,
        };
        let parent = self.stack.last().map(|o| o.frame);
        let frame = self.element(&el, parent)?;
        Ok(Open {
            name: el.name,
            line,
            frame,
        })
    }

    fn element(&mut self, el: &Elem<'_>, parent: Option<Frame>) -> Result<Frame, TopoError> {
        if let Some(Frame::Skip) = parent {
            return Ok(Frame::Skip);
        }
        match el.name.as_str() {
            "system" => self.system(el),
            "cpu" => match parent {
                Some(Frame::System) => self.cpu(el),
                Some(Frame::Cpu(_)) => {
                    Err(el.err("nested <cpu>; <cpu> must be directly under <system>"))
                }
                _ => Err(el.err("<cpu> must be directly under <system>")),
            },
            "pci" => match parent {
                Some(Frame::Cpu(p)) | Some(Frame::Pci(p)) => self.pci(el, p),
                Some(Frame::System) => {
                    Err(el.err("<pci> directly under <system>; it must be under a <cpu>"))
                }
                Some(Frame::Gpu(_)) => Err(el.err("<gpu> cannot contain <pci>")),
                Some(Frame::Nic { .. }) => Err(el.err("<nic> cannot contain <pci>")),
                _ => Err(el.err("<pci> must be under <cpu> or <pci>")),
            },
            "gpu" => match parent {
                Some(Frame::Pci(p)) => self.gpu(el, p),
                _ => Err(el.err("<gpu> must be under <pci>")),
            },
            "nvlink" => match parent {
                Some(Frame::Gpu(g)) => self.nvlink(el, g),
                _ => Err(el.err("<nvlink> must be under <gpu>")),
            },
            "nic" => match parent {
                Some(Frame::Pci(p)) => {
                    self.info[p].has_nic = true;
                    Ok(Frame::Nic {
                        node: p,
                        is_virtual: false,
                    })
                }
                Some(Frame::Cpu(c)) => Ok(Frame::Nic {
                    node: c,
                    is_virtual: true,
                }),
                _ => Err(el.err("<nic> must be under <pci> or <cpu>")),
            },
            "net" => match parent {
                Some(Frame::Nic { node, is_virtual }) => self.net(el, node, is_virtual),
                _ => Err(el.err("<net> must be under <nic>")),
            },
            "c2c" | "pcilink" => {
                self.warn(el.line, format!("<{}> ignored (not modelled)", el.name));
                Ok(Frame::Skip)
            }
            _ => {
                self.warn(el.line, format!("unknown element <{}> ignored", el.name));
                Ok(Frame::Skip)
            }
        }
    }

    fn system(&mut self, el: &Elem<'_>) -> Result<Frame, TopoError> {
        if let Some(first) = self.system_line {
            return Err(el.err(format!(
                "more than one <system> element (the first is at line {first})"
            )));
        }
        let version: i64 = el.req_int("version")?;
        if version != 1 {
            return Err(el.err(format!(
                "unsupported version {version}; only version=\"1\" is supported"
            )));
        }
        self.system_line = Some(el.line);
        Ok(Frame::System)
    }

    fn add_node(&mut self, parent: Option<NodeId>, kind: NodeKind, line: usize) -> NodeId {
        let id = self.topo.add_node(parent, kind);
        self.info.push(NodeInfo {
            line,
            ..Default::default()
        });
        id
    }

    fn cpu(&mut self, el: &Elem<'_>) -> Result<Frame, TopoError> {
        if self.topo.cpus.len() >= MAX_CPUS {
            return Err(el.err(too_many(MAX_CPUS, "<cpu> elements (NUMA nodes)")));
        }
        let cpu = Cpu {
            numaid: el.req_int("numaid")?,
            affinity: el.string("affinity"),
            arch: el.string("arch"),
            vendor: el.string("vendor"),
            familyid: el.int("familyid")?,
            modelid: el.int("modelid")?,
        };
        Ok(Frame::Cpu(self.add_node(None, NodeKind::Cpu(cpu), el.line)))
    }

    fn pci(&mut self, el: &Elem<'_>, parent: NodeId) -> Result<Frame, TopoError> {
        let raw = el.req("busid")?;
        if !is_busid(raw) {
            return Err(el.err(format!(
                "busid=\"{raw}\" is not a PCI bus ID (dddd:bb:dd.f in hex)"
            )));
        }
        let busid = raw.to_ascii_lowercase();
        if let Some(first) = self.busids.get(&busid) {
            return Err(el.err(format!("duplicate busid {busid} (first at line {first})")));
        }
        if self.busids.len() >= MAX_PCI {
            return Err(el.err(too_many(MAX_PCI, "<pci> elements")));
        }
        let pci = Pci {
            class: el.req_hex("class", 0xff_ffff, "24-bit")?,
            vendor: el.hex16("vendor")?,
            device: el.hex16("device")?,
            subsystem_vendor: el.hex16("subsystem_vendor")?,
            subsystem_device: el.hex16("subsystem_device")?,
            link_speed: el.string("link_speed").unwrap_or_default(),
            link_width: el.int("link_width")?.unwrap_or(0),
            sysfs_path: None,
            busid: busid.clone(),
        };
        if is_gpu_class(pci.class) {
            self.count_gpu(el)?;
        }
        self.busids.insert(busid, el.line);
        Ok(Frame::Pci(self.add_node(
            Some(parent),
            NodeKind::Pci(pci),
            el.line,
        )))
    }

    fn gpu(&mut self, el: &Elem<'_>, node: NodeId) -> Result<Frame, TopoError> {
        if self.info[node].has_gpu {
            return Err(el.err(format!(
                "more than one <gpu> in <pci busid=\"{}\">",
                self.topo.label(node)
            )));
        }
        let dev: u32 = el.req_int("dev")?;
        if let Some(first) = self.gpu_devs.get(&dev) {
            return Err(el.err(format!("duplicate dev {dev} (first at line {first})")));
        }
        let class = self.topo.pci(node).map_or(0, |p| p.class);
        if !is_gpu_class(class) {
            self.count_gpu(el)?; // not counted as a GPU <pci>
        }
        let gpu = Gpu {
            node,
            dev,
            class: gpu_class(class),
            sm: Some(el.req_int("sm")?),
            rank: el.int("rank")?,
            gdr: el.flag("gdr")?,
            name: None,
            nvlinks: Vec::new(),
        };
        self.gpu_devs.insert(dev, el.line);
        self.info[node].has_gpu = true;
        self.gpus.push(gpu);
        Ok(Frame::Gpu(self.gpus.len() - 1))
    }

    fn count_gpu(&mut self, el: &Elem<'_>) -> Result<(), TopoError> {
        if self.gpu_count >= MAX_GPUS {
            return Err(el.err(too_many(MAX_GPUS, "GPUs and accelerators")));
        }
        self.gpu_count += 1;
        Ok(())
    }

    fn nvlink(&mut self, el: &Elem<'_>, gpu: usize) -> Result<Frame, TopoError> {
        let link = NvLink {
            target: el.req("target")?.to_string(),
            count: el.req_int("count")?,
            tclass: el.req_hex("tclass", 0xff_ffff, "24-bit")?,
        };
        if busid_value(&link.target).is_none() {
            return Err(el.err(format!(
                "target=\"{}\" is not a PCI bus ID (hex digits, ':' and '.', as in 0000:1a:00.0)",
                link.target
            )));
        }
        self.gpus[gpu].nvlinks.push(link);
        Ok(Frame::Nvlink)
    }

    fn net(&mut self, el: &Elem<'_>, node: NodeId, is_virtual: bool) -> Result<Frame, TopoError> {
        let name = el.req("name")?;
        let Some(dev) = el.int::<u32>("dev")? else {
            self.warn(
                el.line,
                format!("<net name=\"{name}\"> has no dev attribute; ignored, as NCCL does"),
            );
            return Ok(Frame::Skip);
        };
        if let Some(first) = self.net_names.get(name) {
            return Err(el.err(format!(
                "duplicate net name \"{name}\" (first at line {first})"
            )));
        }
        if self.nets.len() >= MAX_NICS {
            return Err(el.err(too_many(MAX_NICS, "network ports")));
        }
        let link_layer = el.string("link_layer");
        let ib_class = self.topo.pci(node).is_some_and(|p| is_ib_class(p.class));
        let kind = if ib_class || link_layer.is_some() {
            NetKind::Ib
        } else {
            NetKind::Socket
        };
        let state = match el.get("state") {
            None => PortState::Unknown,
            Some(s) => match s.trim().to_ascii_lowercase().as_str() {
                "up" => PortState::Up,
                "down" => PortState::Down,
                "unknown" => PortState::Unknown,
                _ => return Err(el.err(format!("state=\"{s}\" is not up, down or unknown"))),
            },
        };
        let mut net = Net::new(name, node, kind);
        net.dev = dev;
        net.speed_mbps = el
            .int::<i64>("speed")?
            .and_then(|s| u64::try_from(s).ok())
            .filter(|&s| s > 0);
        net.port = el.int("port")?;
        net.latency = el.string("latency");
        net.guid = el.string("guid");
        net.maxconn = el.int("maxconn")?;
        net.gdr = el.flag("gdr")?;
        net.rail = el.int("rail")?;
        net.link_layer = link_layer;
        net.state = state;
        net.netdev = el.string("netdev");
        net.is_virtual = is_virtual;
        self.net_names.insert(net.name.clone(), el.line);
        self.nets.push(net);
        Ok(Frame::Net)
    }

    /// Everything that needs the whole file: implicit GPUs and NIC ports,
    /// sorting.
    fn finish(mut self) -> Result<Topology, TopoError> {
        if self.system_line.is_none() {
            return Err(self.error(1, "system", "no <system> element"));
        }

        // GPUs and accelerators given only as <pci> leaves: the lowest free
        // numbers, in bus-ID order.
        let mut implicit: Vec<NodeId> = (0..self.topo.nodes.len())
            .filter(|&id| {
                !self.info[id].has_gpu
                    && self.topo.pci(id).is_some_and(|p| {
                        matches!(
                            p.device_class(),
                            DeviceClass::Gpu | DeviceClass::Accelerator
                        )
                    })
            })
            .collect();
        implicit.sort_by_cached_key(|&a| self.topo.label(a));
        let mut next: u32 = 0;
        for id in implicit {
            while self.gpu_devs.contains_key(&next) {
                next = self.next_dev(next, id, "GPU")?;
            }
            let class = self.topo.pci(id).map_or(0, |p| p.class);
            self.gpus.push(Gpu::new(id, next, gpu_class(class)));
            self.gpu_devs.insert(next, self.info[id].line);
            next = self.next_dev(next, id, "GPU")?;
        }

        self.topo.gpus = std::mem::take(&mut self.gpus);
        self.topo.sort();
        let order = self.topo.dfs();

        // NICs given only as <pci> leaves: one port each, named by bus ID,
        // numbered after the explicit ports in (sorted) document order.
        let mut next: Option<u32> = match self.nets.iter().map(|n| n.dev).max() {
            None => Some(0),
            Some(max) => max.checked_add(1),
        };
        for &id in &order {
            let Some(pci) = self.topo.pci(id) else {
                continue;
            };
            if self.info[id].has_nic || pci.device_class() != DeviceClass::Nic {
                continue;
            }
            let line = self.info[id].line;
            let Some(dev) = next else {
                return Err(self.error(line, "pci", "no free net dev number left"));
            };
            if self.nets.len() >= MAX_NICS {
                return Err(self.error(line, "pci", too_many(MAX_NICS, "network ports")));
            }
            if let Some(first) = self.net_names.get(&pci.busid) {
                return Err(self.error(
                    line,
                    "pci",
                    format!(
                        "NIC {} has no <nic>, and its bus ID is already the name of the <net> at line {first}",
                        pci.busid
                    ),
                ));
            }
            let kind = if is_ib_class(pci.class) {
                NetKind::Ib
            } else {
                NetKind::Socket
            };
            let mut net = Net::new(&pci.busid, id, kind);
            net.dev = dev;
            self.net_names.insert(pci.busid.clone(), line);
            self.nets.push(net);
            next = dev.checked_add(1);
        }

        let mut pos = vec![usize::MAX; self.topo.nodes.len()];
        for (i, &id) in order.iter().enumerate() {
            pos[id] = i;
        }
        self.nets.sort_by_key(|n| (pos[n.node], n.dev));
        self.topo.nets = std::mem::take(&mut self.nets);
        self.check_depths(&order)?;
        self.check_nvlinks();
        if self.dropped_warnings > 0 {
            let more = format!(
                "{}: {} more warning(s) not shown (only the first {MAX_WARNINGS} are kept)",
                self.file, self.dropped_warnings
            );
            self.topo.warnings.push(more);
        }
        renumber(&mut self.topo, &order);
        Ok(self.topo)
    }

    /// GPUs and NICs at most MAX_DEVICE_DEPTH `<pci>` levels below their CPU
    /// (the paths the report lists for each GPU and NIC stay short).
    fn check_depths(&self, order: &[NodeId]) -> Result<(), TopoError> {
        let topo = &self.topo;
        let mut depth = vec![0usize; topo.nodes.len()];
        for &id in order {
            if let Some(p) = topo.nodes[id].parent {
                depth[id] = depth[p] + 1;
            }
        }
        let devices = topo
            .gpus
            .iter()
            .map(|g| g.node)
            .chain(topo.nets.iter().map(|n| n.node));
        for id in devices {
            if depth[id] > MAX_DEVICE_DEPTH {
                return Err(self.error(
                    self.info[id].line,
                    "pci",
                    format!(
                        "{} is {} <pci> levels below its <cpu>; at most {MAX_DEVICE_DEPTH} are supported for a GPU or NIC",
                        topo.label(id),
                        depth[id]
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Warn about GPU-class NVLink targets (NCCL's `0x03…`, `0x120000`,
    /// `0x0b4000`; here any GPU or accelerator class) that are no GPU of the
    /// file: NCCL drops such a link (its remote GPU is not found), and so do
    /// paths here. A GPU's link to itself is accepted silently, as NCCL
    /// does.
    fn check_nvlinks(&mut self) {
        let gpu_busids: HashSet<u64> = self
            .topo
            .gpus
            .iter()
            .filter_map(|g| self.topo.pci(g.node))
            .filter_map(|p| busid_value(&p.busid))
            .collect();
        let mut unknown = Vec::new();
        for g in &self.topo.gpus {
            for l in &g.nvlinks {
                let known = busid_value(&l.target).is_some_and(|v| gpu_busids.contains(&v));
                if !known && is_gpu_class(l.tclass) {
                    unknown.push((
                        self.info[g.node].line,
                        self.topo.label(g.node),
                        l.target.clone(),
                    ));
                }
            }
        }
        for (line, gpu, target) in unknown {
            self.warn(
                line,
                format!(
                    "<nvlink target=\"{target}\"> of GPU {gpu}: no GPU has this bus ID; the link is ignored, as NCCL does"
                ),
            );
        }
    }

    fn next_dev(&self, dev: u32, node: NodeId, what: &str) -> Result<u32, TopoError> {
        dev.checked_add(1).ok_or_else(|| {
            self.error(
                self.info[node].line,
                "pci",
                format!("no free {what} dev number left"),
            )
        })
    }
}

/// Renumber the arena so that node ids follow `order` (the depth-first order
/// of the sorted tree): two files describing the same tree, whatever their
/// element order, then give equal [`Topology`] values.
fn renumber(topo: &mut Topology, order: &[NodeId]) {
    if order.len() != topo.nodes.len() {
        return; // unreachable nodes: cannot happen for parsed files
    }
    let mut new_id = vec![0; topo.nodes.len()];
    for (i, &old) in order.iter().enumerate() {
        new_id[old] = i;
    }
    let mut old_nodes: Vec<Option<crate::model::Node>> = std::mem::take(&mut topo.nodes)
        .into_iter()
        .map(Some)
        .collect();
    topo.nodes = order
        .iter()
        .filter_map(|&old| old_nodes[old].take())
        .map(|mut n| {
            n.parent = n.parent.map(|p| new_id[p]);
            for c in &mut n.children {
                *c = new_id[*c];
            }
            n
        })
        .collect();
    for c in &mut topo.cpus {
        *c = new_id[*c];
    }
    for g in &mut topo.gpus {
        g.node = new_id[g.node];
    }
    for n in &mut topo.nets {
        n.node = new_id[n.node];
    }
}

//! NCCL topology XML: the `NCCL_TOPO_FILE` / `NCCL_TOPO_DUMP_FILE` schema
//! (see `research/topology.md`, section 4), read into and written from a
//! [`Topology`].
//!
//! Import accepts full NCCL dumps and the partial files that Azure and AWS
//! ship (bare `<pci>` leaves without `<gpu>`/`<nic>`, fake switches
//! `ffff:ff:0N.0`):
//! * a `<pci>` whose class says GPU or accelerator and that has no `<gpu>`
//!   child still becomes a [`Gpu`]; its `dev` is the lowest number not taken
//!   by an explicit `<gpu dev>`, handed out in PCI bus-ID order (so with no
//!   explicit `dev` at all, `dev` is the position in bus-ID order);
//! * a `<pci>` whose class says NIC and that has no `<nic>` child gets one
//!   [`Net`] named by its bus ID, numbered after the largest explicit
//!   `<net dev>`, in depth-first order of the bus-ID-sorted tree;
//! * `<net>` without `dev` is ignored, as NCCL does (with a warning);
//! * unknown elements, `<c2c>` and `<pcilink>` are skipped with a warning in
//!   [`Topology::warnings`]; unknown attributes are skipped silently.
//!
//! Besides NCCL's attributes, `<net>` may carry zccl's own `link_layer`,
//! `state` (`up`/`down`/`unknown`) and `netdev`, which NCCL ignores.
//!
//! `<nvlink target>` is compared with bus IDs as a number, as NCCL does
//! (`0000:1a:00.0` and `00000000:1A:00.0` are one device):
//! * a target that is not a bus ID at all (anything but hex digits, `:` and
//!   `.`, or more than 16 digits) is an error naming the element;
//! * a GPU-class target (`tclass` `0x03…`) that is no GPU of the file is
//!   kept but never forms a path, with a warning: NCCL drops such a link;
//! * a target that is the GPU itself is accepted silently: NCCL accepts it
//!   (a self-loop that never changes a path) and Azure's NC A100 v4 file
//!   has one on every GPU;
//! * NVSwitch targets (`0x0680…`, including the invisible remote
//!   `fffffff:ffff:ff`) name devices that are not in files; they are kept.
//!
//! Limits (see `docs/topology.md`): [`load`] reads at most
//! [`DEFAULT_MAX_BYTES`] (16 MiB; `ZCCL_TOPO_MAX_BYTES` changes it) and
//! refuses devices such as `/dev/zero`; a file may hold at most
//! [`MAX_CPUS`] CPUs, [`MAX_GPUS`] GPUs, [`MAX_NICS`] network ports,
//! [`MAX_PCI`] `<pci>` elements, [`MAX_ATTRIBUTES`] attributes per element
//! and [`MAX_NESTING`] levels of elements, with GPUs and NICs at most
//! [`MAX_DEVICE_DEPTH`] PCI levels below their CPU; beyond
//! [`MAX_WARNINGS`], warnings are counted, not kept. NCCL's own files are a
//! few KB to a few hundred KB, for at most 16 GPUs and 32 NICs.
//!
//! Export writes the bus-ID-sorted tree, 2-space indented, attributes in
//! NCCL's order. GPUs and accelerators without `sm` are written as bare
//! `<pci>` leaves, as is the auto-named port of a partial NIC leaf, so that
//! `parse_str(&to_string(&t))` gives `t` back for everything this module
//! imports.
//!
//! ```
//! use zccl_topology::xml;
//! let text = r#"<system version="1">
//!   <cpu numaid="0" arch="x86_64">
//!     <pci busid="0000:17:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"/>
//!     <pci busid="0000:1A:00.0" class="0x020700" link_speed="16 GT/s" link_width="16"/>
//!   </cpu>
//! </system>"#;
//! let topo = xml::parse_str(text, "partial.xml").unwrap();
//! assert_eq!(topo.gpus.len(), 1);
//! assert_eq!(topo.nets[0].name, "0000:1a:00.0");
//! assert_eq!(xml::parse_str(&xml::to_string(&topo), "again").unwrap(), topo);
//! ```

use crate::TopoError;
use crate::model::{
    Cpu, DeviceClass, Gpu, Net, NetKind, NodeId, NodeKind, NvLink, Pci, PortState, Topology,
};
use crate::paths::busid_value;
use quick_xml::Reader;
use quick_xml::escape::escape;
use quick_xml::events::{BytesStart, Event};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

/// The largest topology file [`load`] reads, unless `ZCCL_TOPO_MAX_BYTES`
/// says otherwise: 16 MiB, forty times the largest NCCL dump.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;
/// The variable that sets [`load`]'s byte limit: a number of bytes, with an
/// optional `K`, `M` or `G` suffix (powers of 1024; `KiB`, `MB`... work too).
pub const MAX_BYTES_VAR: &str = "ZCCL_TOPO_MAX_BYTES";
/// At most this many `<cpu>` elements (NUMA nodes) per file.
pub const MAX_CPUS: usize = 4096;
/// At most this many GPUs and accelerators per file.
pub const MAX_GPUS: usize = 4096;
/// At most this many network ports (`<net>`, and NIC `<pci>` leaves) per file.
pub const MAX_NICS: usize = 4096;
/// At most this many `<pci>` elements (switches and devices) per file.
pub const MAX_PCI: usize = 65536;
/// At most this many attributes per element (NCCL reads 16).
pub const MAX_ATTRIBUTES: usize = 64;
/// At most this many levels of nested elements.
pub const MAX_NESTING: usize = 4096;
/// A GPU or NIC is at most this many `<pci>` levels below its `<cpu>` (real
/// trees have 1 to 4).
pub const MAX_DEVICE_DEPTH: usize = 32;
/// At most this many warnings are kept; the rest are counted in one more.
pub const MAX_WARNINGS: usize = 100;

/// Parse NCCL topology XML text. `file` names the text in error messages and
/// warnings (a path, or `<string>`).
///
/// Malformed XML and inconsistent content (a missing required attribute, a
/// non-numeric number, an element in the wrong place, a duplicate bus ID,
/// GPU `dev` or net name) give a [`TopoError::Xml`] naming the element and
/// its 1-based line. Never panics.
///
/// ```
/// use zccl_topology::{xml, TopoError};
/// let topo = xml::parse_str(
///     r#"<system version="1"><cpu numaid="1">
///          <pci busid="0000:19:00.0" class="0x030200"><gpu dev="0" sm="90"/></pci>
///        </cpu></system>"#,
///     "t.xml",
/// )
/// .unwrap();
/// assert_eq!(topo.gpus[0].sm, Some(90));
/// assert_eq!(topo.numa_of(topo.gpus[0].node), 1);
///
/// let err = xml::parse_str("<system version=\"1\">\n<cpu/>\n</system>", "t.xml").unwrap_err();
/// assert_eq!(err.to_string(), "t.xml:2: <cpu>: missing attribute numaid");
/// assert!(matches!(err, TopoError::Xml { line: 2, .. }));
/// ```
pub fn parse_str(text: &str, file: &str) -> Result<Topology, TopoError> {
    Parser::new(text, file).run()
}

/// Read and parse an NCCL topology XML file. A file that cannot be read gives
/// [`TopoError::Io`] naming the path; errors in its content name the path
/// too (see [`parse_str`]).
///
/// The file is read up to the limit of [`max_bytes`] (16 MiB unless
/// `ZCCL_TOPO_MAX_BYTES` says otherwise; see [`load_with_limit`]).
///
/// ```
/// use zccl_topology::{xml, TopoError};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("topo.xml");
/// std::fs::write(&path, r#"<system version="1"><cpu numaid="0"/></system>"#).unwrap();
/// assert_eq!(xml::load(&path).unwrap().cpus.len(), 1);
/// let missing = dir.path().join("missing.xml");
/// assert!(matches!(xml::load(&missing), Err(TopoError::Io { path, .. }) if path == missing));
/// ```
pub fn load(path: &Path) -> Result<Topology, TopoError> {
    let limit = max_bytes(std::env::var(MAX_BYTES_VAR).ok().as_deref()).map_err(|reason| {
        TopoError::Refused {
            path: path.to_path_buf(),
            reason: format!("cannot be read: {reason}"),
        }
    })?;
    load_with_limit(path, limit)
}

/// [`load`] with an explicit byte limit. A device (`/dev/zero`, a terminal,
/// a disk) is refused before anything is read, and so is a regular file
/// larger than `max_bytes`; other files (pipes, `/dev/stdin`) are read up
/// to `max_bytes` and refused if there is more. Both give
/// [`TopoError::Refused`].
///
/// ```
/// use zccl_topology::{xml, TopoError};
/// let err = xml::load_with_limit("/dev/zero".as_ref(), 1 << 20).unwrap_err();
/// assert!(matches!(err, TopoError::Refused { .. }));
/// assert!(err.to_string().starts_with("topology file /dev/zero is a character device"));
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("big.xml");
/// std::fs::write(&path, format!("<system version=\"1\">{}</system>", " ".repeat(2048))).unwrap();
/// let err = xml::load_with_limit(&path, 1024).unwrap_err();
/// assert!(err.to_string().ends_with("big.xml exceeds 1 KiB (ZCCL_TOPO_MAX_BYTES sets the limit)"), "{err}");
/// assert!(xml::load_with_limit(&path, 4096).is_ok());
/// ```
pub fn load_with_limit(path: &Path, max_bytes: u64) -> Result<Topology, TopoError> {
    let io = |source| TopoError::Io {
        path: path.to_path_buf(),
        source,
    };
    let refused = |reason: String| TopoError::Refused {
        path: path.to_path_buf(),
        reason,
    };
    let too_big = || {
        refused(format!(
            "exceeds {} ({MAX_BYTES_VAR} sets the limit)",
            human_bytes(max_bytes)
        ))
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    {
        use std::os::unix::fs::FileTypeExt;
        let ft = meta.file_type();
        if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                "character"
            } else {
                "block"
            };
            return Err(refused(format!(
                "is a {kind} device, not a file or a pipe (it may never end)"
            )));
        }
    }
    if meta.is_file() && meta.len() > max_bytes {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_big());
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })?;
    parse_str(&text, &path.display().to_string())
}

/// The byte limit of [`load`] from the value of `ZCCL_TOPO_MAX_BYTES`
/// (`None` or empty: [`DEFAULT_MAX_BYTES`]).
///
/// ```
/// use zccl_topology::xml::{max_bytes, DEFAULT_MAX_BYTES};
/// assert_eq!(max_bytes(None), Ok(DEFAULT_MAX_BYTES));
/// assert_eq!(max_bytes(Some("")), Ok(DEFAULT_MAX_BYTES));
/// assert_eq!(max_bytes(Some("1000")), Ok(1000));
/// assert_eq!(max_bytes(Some("64M")), Ok(64 << 20));
/// assert_eq!(max_bytes(Some(" 2 GiB ")), Ok(2 << 30));
/// assert_eq!(max_bytes(Some("512kb")), Ok(512 << 10));
/// assert!(max_bytes(Some("lots")).unwrap_err().contains("ZCCL_TOPO_MAX_BYTES=\"lots\""));
/// assert!(max_bytes(Some("99999999999G")).is_err());
/// ```
pub fn max_bytes(value: Option<&str>) -> Result<u64, String> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_MAX_BYTES);
    };
    let err =
        || format!("{MAX_BYTES_VAR}=\"{v}\" is not a number of bytes (such as 16777216 or 16M)");
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(digits);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(err()),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(err)
}

/// `16 MiB`, `1 KiB`, `1000 bytes`.
fn human_bytes(n: u64) -> String {
    match n {
        0 => "0 bytes".to_string(),
        n if n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// Write a topology as NCCL topology XML: `<system version="1">`, 2-space
/// indent, PCI children in bus-ID order, attributes in NCCL's order, `None`
/// attributes left out. Probe-only facts (`sysfs_path`, MAC and IP
/// addresses) are not written.
///
/// ```
/// use zccl_topology::model::{Cpu, Gpu, DeviceClass, NodeKind, Pci, Topology};
/// use zccl_topology::xml;
/// let mut t = Topology::default();
/// let cpu = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
/// let pci = t.add_node(Some(cpu), NodeKind::Pci(Pci::new("0000:19:00.0", 0x030200)));
/// t.gpus.push(Gpu {
///     node: pci, dev: 0, class: DeviceClass::Gpu, sm: Some(90), rank: None,
///     gdr: Some(true), name: None, nvlinks: vec![],
/// });
/// assert_eq!(
///     xml::to_string(&t),
///     "<system version=\"1\">\n  <cpu numaid=\"0\">\n    \
///      <pci busid=\"0000:19:00.0\" class=\"0x030200\" link_speed=\"\" link_width=\"0\">\n      \
///      <gpu dev=\"0\" sm=\"90\" gdr=\"1\"/>\n    </pci>\n  </cpu>\n</system>\n"
/// );
/// ```
pub fn to_string(topo: &Topology) -> String {
    Exporter::new(topo).write()
}

/// Write [`to_string`]'s output to `path`. A write failure gives
/// [`TopoError::Io`] naming the path.
///
/// ```
/// use zccl_topology::{model::{Cpu, NodeKind, Topology}, xml};
/// let mut t = Topology::default();
/// t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("dump.xml");
/// xml::save(&t, &path).unwrap();
/// assert_eq!(xml::load(&path).unwrap(), t);
/// ```
pub fn save(topo: &Topology, path: &Path) -> Result<(), TopoError> {
    std::fs::write(path, to_string(topo)).map_err(|source| TopoError::Io {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------
// Import
// ---------------------------------------------------------------------------

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
fn is_ib_class(class: u32) -> bool {
    class >> 8 == 0x0207
}

/// The [`DeviceClass`] a `<gpu>` on a PCI node of this class gets.
fn gpu_class(pci_class: u32) -> DeviceClass {
    match DeviceClass::of(pci_class) {
        DeviceClass::Accelerator => DeviceClass::Accelerator,
        _ => DeviceClass::Gpu,
    }
}

struct Parser<'a> {
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
    fn new(text: &'a str, file: &'a str) -> Self {
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

    fn run(mut self) -> Result<Topology, TopoError> {
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

// ---------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------

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

struct Exporter {
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
    fn new(topo: &Topology) -> Self {
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

    fn write(mut self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fixture-like file: a full dump part (switch with GPU + dual-port IB
    /// NIC, virtual NIC under a CPU) and a partial part (bare leaves under a
    /// fake switch), with a declaration, a comment and an unknown element.
    const SMALL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- made-up host -->
<system version="1">
  <cpu numaid="0" affinity="0000ffff" arch="x86_64" vendor="GenuineIntel" familyid="6" modelid="143">
    <pci busid="0000:17:00.0" class="0x060400" vendor="0x10b5" device="0x9797" subsystem_vendor="0x10b5" subsystem_device="0x9797" link_speed="32.0 GT/s PCIe" link_width="16">
      <pci busid="0000:1A:00.0" class="0x020700" vendor="0x15b3" device="0x1021" link_speed="32.0 GT/s PCIe" link_width="16">
        <nic>
          <net name="mlx5_1" dev="1" speed="400000" port="2" guid="0x1111" maxconn="131072" gdr="1"/>
          <net name="mlx5_0" dev="0" speed="400000" port="1" guid="0x1111" maxconn="131072" gdr="1"/>
        </nic>
      </pci>
      <pci busid="0000:19:00.0" class="0x030200" vendor="0x10de" device="0x2330" link_speed="32.0 GT/s PCIe" link_width="16">
        <gpu dev="0" sm="90" rank="0" gdr="1">
          <nvlink target="0000:aa:00.0" count="18" tclass="0x068000"/>
          <c2c bw="1000" count="2"/>
        </gpu>
      </pci>
    </pci>
    <fancy thing="1"><pci busid="bogus"/></fancy>
  </cpu>
  <cpu numaid="1" affinity="ffff0000" arch="x86_64">
    <pci busid="ffff:ff:01.0" class="0x060400" link_speed="16 GT/s" link_width="16">
      <pci busid="0000:9a:00.0" class="0x020000" link_speed="16 GT/s" link_width="16"/>
      <pci busid="0000:99:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"/>
      <pci busid="0000:98:00.0" class="0x120000" link_speed="" link_width="0"/>
    </pci>
    <nic><net name="eth0" dev="2" speed="100000" port="0" guid="0x2" gdr="0" state="up" netdev="eth0"/></nic>
    <nic><net name="nodev" speed="1"/></nic>
  </cpu>
</system>
"#;

    fn fixture_dir() -> Option<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/topologies");
        if dir.is_dir() {
            Some(dir)
        } else {
            // Straight to stderr, past libtest's capture: the skip shows
            // in `cargo test` output (as `zccl_testbed::skip` does).
            use std::io::Write;
            let t = std::thread::current();
            let msg = format!(
                "SKIPPED {}: ../shared/fixtures not present\n",
                t.name().unwrap_or("test")
            );
            let _ = std::io::stderr().lock().write_all(msg.as_bytes());
            None
        }
    }

    fn fixture(name: &str) -> Option<Topology> {
        let dir = fixture_dir()?;
        Some(load(&dir.join(name)).unwrap())
    }

    fn cleared(mut t: Topology) -> Topology {
        t.warnings.clear();
        t
    }

    /// parse(to_string(t)) == t and to_string is idempotent.
    fn assert_round_trip(t: &Topology) {
        let text = to_string(t);
        let back = parse_str(&text, "round-trip").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(cleared(back.clone()), cleared(t.clone()), "\n{text}");
        assert_eq!(to_string(&back), text);
    }

    fn xml_err(text: &str) -> (usize, String, String) {
        match parse_str(text, "f.xml") {
            Err(TopoError::Xml {
                file,
                line,
                element,
                reason,
            }) => {
                assert_eq!(file, "f.xml");
                (line, element, reason)
            }
            other => panic!("expected an XML error, got {other:?}"),
        }
    }

    fn busid(t: &Topology, id: NodeId) -> &str {
        &t.pci(id).unwrap().busid
    }

    #[test]
    fn small_structure() {
        let t = parse_str(SMALL, "small.xml").unwrap();
        assert_eq!(t.cpus.len(), 2);
        let c0 = t.cpu(t.cpus[0]).unwrap();
        assert_eq!(c0.numaid, 0);
        assert_eq!(c0.affinity.as_deref(), Some("0000ffff"));
        assert_eq!(c0.vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!((c0.familyid, c0.modelid), (Some(6), Some(143)));
        let c1 = t.cpu(t.cpus[1]).unwrap();
        assert_eq!((c1.vendor.as_ref(), c1.familyid), (None, None));

        // Switch children sorted by bus ID; bus IDs lower-cased.
        let sw = t.find_busid("0000:17:00.0").unwrap();
        let kids: Vec<&str> = t.nodes[sw].children.iter().map(|&c| busid(&t, c)).collect();
        assert_eq!(kids, ["0000:19:00.0", "0000:1a:00.0"]);
        let p = t.pci(sw).unwrap();
        assert_eq!(p.class, 0x060400);
        assert_eq!((p.vendor, p.device), (Some(0x10b5), Some(0x9797)));
        assert_eq!(p.subsystem_device, Some(0x9797));
        assert_eq!(p.link_speed, "32.0 GT/s PCIe");
        assert_eq!(p.link_width, 16);
        assert_eq!(p.sysfs_path, None);

        // GPUs: explicit dev 0, then the implicit ones get the free numbers
        // in bus-ID order (accelerator 98 before GPU 99).
        let g: Vec<(u32, &str, DeviceClass, Option<u32>)> = t
            .gpus
            .iter()
            .map(|g| (g.dev, busid(&t, g.node), g.class, g.sm))
            .collect();
        assert_eq!(
            g,
            [
                (0, "0000:19:00.0", DeviceClass::Gpu, Some(90)),
                (1, "0000:98:00.0", DeviceClass::Accelerator, None),
                (2, "0000:99:00.0", DeviceClass::Gpu, None),
            ]
        );
        let g0 = &t.gpus[0];
        assert_eq!((g0.rank, g0.gdr), (Some(0), Some(true)));
        assert_eq!(
            g0.nvlinks,
            [NvLink {
                target: "0000:aa:00.0".into(),
                count: 18,
                tclass: 0x068000
            }]
        );

        // Nets in DFS order, by dev within a node; the partial NIC leaf gets
        // the next dev after the explicit ones (max 2).
        let n: Vec<(&str, u32, NetKind, bool)> = t
            .nets
            .iter()
            .map(|n| (n.name.as_str(), n.dev, n.kind, n.is_virtual))
            .collect();
        assert_eq!(
            n,
            [
                ("mlx5_0", 0, NetKind::Ib, false),
                ("mlx5_1", 1, NetKind::Ib, false),
                ("eth0", 2, NetKind::Socket, true),
                ("0000:9a:00.0", 3, NetKind::Socket, false),
            ]
        );
        let m = &t.nets[1];
        assert_eq!(m.node, t.find_busid("0000:1a:00.0").unwrap());
        assert_eq!(
            (m.speed_mbps, m.port, m.guid.as_deref(), m.maxconn, m.gdr),
            (
                Some(400000),
                Some(2),
                Some("0x1111"),
                Some(131072),
                Some(true)
            )
        );
        let e = &t.nets[2];
        assert_eq!(e.node, t.cpus[1]);
        assert_eq!(
            (e.state, e.netdev.as_deref()),
            (PortState::Up, Some("eth0"))
        );
        assert_eq!(t.nets[0].state, PortState::Unknown);

        // Warnings: c2c, unknown element, net without dev.
        assert_eq!(t.warnings.len(), 3, "{:?}", t.warnings);
        assert!(t.warnings[0].starts_with("small.xml:15: <c2c>"));
        assert!(t.warnings[1].starts_with("small.xml:19: unknown element <fancy>"));
        assert!(t.warnings[2].contains("nodev"));
        assert!(t.find_busid("bogus").is_none());
    }

    #[test]
    fn small_round_trip() {
        let t = parse_str(SMALL, "small.xml").unwrap();
        assert_round_trip(&t);
        let text = to_string(&t);
        // Bare leaves for the partial parts, <gpu> only where sm is known.
        assert!(text.contains(
            "      <pci busid=\"0000:9a:00.0\" class=\"0x020000\" link_speed=\"16 GT/s\" link_width=\"16\"/>\n"
        ));
        assert!(text.contains(
            "      <pci busid=\"0000:99:00.0\" class=\"0x030200\" link_speed=\"16 GT/s\" link_width=\"16\"/>\n"
        ));
        assert_eq!(text.matches("<gpu ").count(), 1);
        assert!(!text.contains("c2c") && !text.contains("fancy") && !text.contains("nodev"));
    }

    #[test]
    fn export_format() {
        let t = parse_str(SMALL, "small.xml").unwrap();
        let text = to_string(&t);
        let expected = r#"<system version="1">
  <cpu numaid="0" affinity="0000ffff" arch="x86_64" vendor="GenuineIntel" familyid="6" modelid="143">
    <pci busid="0000:17:00.0" class="0x060400" vendor="0x10b5" device="0x9797" subsystem_vendor="0x10b5" subsystem_device="0x9797" link_speed="32.0 GT/s PCIe" link_width="16">
      <pci busid="0000:19:00.0" class="0x030200" vendor="0x10de" device="0x2330" link_speed="32.0 GT/s PCIe" link_width="16">
        <gpu dev="0" sm="90" rank="0" gdr="1">
          <nvlink target="0000:aa:00.0" count="18" tclass="0x068000"/>
        </gpu>
      </pci>
      <pci busid="0000:1a:00.0" class="0x020700" vendor="0x15b3" device="0x1021" link_speed="32.0 GT/s PCIe" link_width="16">
        <nic>
          <net name="mlx5_0" dev="0" speed="400000" port="1" guid="0x1111" maxconn="131072" gdr="1"/>
          <net name="mlx5_1" dev="1" speed="400000" port="2" guid="0x1111" maxconn="131072" gdr="1"/>
        </nic>
      </pci>
    </pci>
  </cpu>
  <cpu numaid="1" affinity="ffff0000" arch="x86_64">
    <pci busid="ffff:ff:01.0" class="0x060400" link_speed="16 GT/s" link_width="16">
      <pci busid="0000:98:00.0" class="0x120000" link_speed="" link_width="0"/>
      <pci busid="0000:99:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"/>
      <pci busid="0000:9a:00.0" class="0x020000" link_speed="16 GT/s" link_width="16"/>
    </pci>
    <nic>
      <net name="eth0" dev="2" speed="100000" port="0" guid="0x2" gdr="0" state="up" netdev="eth0"/>
    </nic>
  </cpu>
</system>
"#;
        assert_eq!(text, expected);
    }

    /// Topology built by hand, in canonical order (sorted, nets in DFS
    /// order), with every exported field set somewhere.
    fn hand_built() -> Topology {
        let mut t = Topology::default();
        let c0 = t.add_node(
            None,
            NodeKind::Cpu(Cpu {
                numaid: 0,
                affinity: Some("00ff&<\"'>".into()),
                arch: Some("x86_64".into()),
                vendor: Some("  Shanghai  ".into()),
                familyid: Some(7),
                modelid: Some(59),
            }),
        );
        let mut sw = Pci::new("0000:10:00.0", 0x060400);
        sw.link_speed = "16.0 GT/s PCIe".into();
        sw.link_width = 16;
        let sw = t.add_node(Some(c0), NodeKind::Pci(sw));
        let mut g = Pci::new("0000:11:00.0", 0x030200);
        g.vendor = Some(0x10de);
        g.device = Some(0x20b0);
        g.subsystem_vendor = Some(0);
        g.subsystem_device = Some(0x1450);
        let gpu = t.add_node(Some(sw), NodeKind::Pci(g));
        let nic = t.add_node(Some(sw), NodeKind::Pci(Pci::new("0000:12:00.0", 0x020700)));
        let c1 = t.add_node(None, NodeKind::Cpu(Cpu::new(-1)));
        let acc = t.add_node(Some(c1), NodeKind::Pci(Pci::new("0000:80:00.0", 0x0b4000)));
        let g2 = t.add_node(Some(c1), NodeKind::Pci(Pci::new("0000:81:00.0", 0x030000)));
        t.gpus = vec![
            Gpu {
                node: gpu,
                dev: 0,
                class: DeviceClass::Gpu,
                sm: Some(80),
                rank: Some(3),
                gdr: Some(false),
                name: None,
                nvlinks: vec![
                    NvLink {
                        target: "0000:11:00.0".into(),
                        count: 12,
                        tclass: 0x030200,
                    },
                    NvLink {
                        target: "fffffff:ffff:ff".into(),
                        count: 6,
                        tclass: 0x068000,
                    },
                ],
            },
            Gpu::new(acc, 1, DeviceClass::Accelerator),
            Gpu::new(g2, 2, DeviceClass::Gpu),
        ];
        let mut eth = Net::new("eth0", c0, NetKind::Socket);
        eth.dev = 2;
        eth.speed_mbps = Some(25000);
        eth.is_virtual = true;
        eth.state = PortState::Down;
        let mut p1 = Net::new("mlx5_0", nic, NetKind::Ib);
        p1.dev = 0;
        p1.speed_mbps = Some(200000);
        p1.port = Some(1);
        p1.guid = Some("0xabcd".into());
        p1.gdr = Some(true);
        p1.rail = Some(0);
        p1.latency = Some("0.000000".into());
        p1.maxconn = Some(131072);
        p1.link_layer = Some("InfiniBand".into());
        p1.state = PortState::Up;
        p1.netdev = Some("ib0".into());
        let mut p2 = p1.clone();
        p2.name = "mlx5_1".into();
        p2.dev = 1;
        p2.port = Some(2);
        p2.rail = Some(1);
        p2.netdev = Some("ib1".into());
        t.nets = vec![eth, p1, p2];
        t
    }

    #[test]
    fn hand_built_round_trip() {
        let t = hand_built();
        assert_round_trip(&t);
        let text = to_string(&t);
        assert!(
            text.contains(r#"affinity="00ff&amp;&lt;&quot;&apos;&gt;""#),
            "{text}"
        );
        assert!(text.contains(r#"<cpu numaid="-1">"#));
        assert!(text.contains(r#"subsystem_vendor="0x0000" subsystem_device="0x1450""#));
        assert!(text.contains(
            r#"<net name="mlx5_1" dev="1" speed="200000" port="2" latency="0.000000" guid="0xabcd" maxconn="131072" gdr="1" rail="1" link_layer="InfiniBand" state="up" netdev="ib1"/>"#
        ));
        assert!(text.contains(
            r#"<pci busid="0000:80:00.0" class="0x0b4000" link_speed="" link_width="0"/>"#
        ));
    }

    #[test]
    fn probe_only_fields_not_written() {
        let mut t = hand_built();
        t.nets[1].mac = Some("aa:bb:cc:dd:ee:ff".into());
        t.nets[1].addrs = vec!["10.0.0.1/24".into()];
        if let NodeKind::Pci(p) = &mut t.nodes[3].kind {
            p.sysfs_path = Some(vec!["pci0000:10".into(), "0000:10:00.0".into()]);
        }
        let text = to_string(&t);
        assert_eq!(text, to_string(&hand_built()));
        assert!(!text.contains("aa:bb") && !text.contains("10.0.0.1"));
    }

    #[test]
    fn unsorted_topology_is_written_sorted() {
        let mut t = Topology::default();
        let c = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
        let b = t.add_node(Some(c), NodeKind::Pci(Pci::new("0000:02:00.0", 0x020700)));
        let a = t.add_node(Some(c), NodeKind::Pci(Pci::new("0000:01:00.0", 0x020700)));
        let mut nb = Net::new("0000:02:00.0", b, NetKind::Ib);
        nb.dev = 1;
        let mut na = Net::new("0000:01:00.0", a, NetKind::Ib);
        na.dev = 0;
        t.nets = vec![nb, na];
        let text = to_string(&t);
        assert!(
            !text.contains("<net"),
            "auto ports are bare leaves:\n{text}"
        );
        assert!(text.find("0000:01").unwrap() < text.find("0000:02").unwrap());
        let back = parse_str(&text, "x").unwrap();
        let names: Vec<(&str, u32)> = back.nets.iter().map(|n| (n.name.as_str(), n.dev)).collect();
        assert_eq!(names, [("0000:01:00.0", 0), ("0000:02:00.0", 1)]);
    }

    #[test]
    fn auto_like_nets_with_other_devs_are_written_explicitly() {
        let mut t = Topology::default();
        let c = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
        let a = t.add_node(Some(c), NodeKind::Pci(Pci::new("0000:01:00.0", 0x020000)));
        let b = t.add_node(Some(c), NodeKind::Pci(Pci::new("0000:02:00.0", 0x020000)));
        let mut na = Net::new("0000:01:00.0", a, NetKind::Socket);
        na.dev = 5;
        let mut nb = Net::new("0000:02:00.0", b, NetKind::Socket);
        nb.dev = 3;
        t.nets = vec![na, nb];
        let text = to_string(&t);
        assert_eq!(text.matches("<net ").count(), 2, "{text}");
        assert_round_trip(&t);
    }

    #[test]
    fn nic_without_ports_gets_empty_nic() {
        let mut t = Topology::default();
        let c = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
        t.add_node(Some(c), NodeKind::Pci(Pci::new("0000:01:00.0", 0x020000)));
        let text = to_string(&t);
        assert!(text.contains("<nic/>"), "{text}");
        assert_round_trip(&t);
        assert!(parse_str(&text, "x").unwrap().nets.is_empty());
    }

    #[test]
    fn empty_system_and_empty_cpu() {
        let t = parse_str(r#"<system version="1"/>"#, "x").unwrap();
        assert_eq!(t, Topology::default());
        assert_eq!(to_string(&t), "<system version=\"1\">\n</system>\n");
        assert_round_trip(&t);
        let t = parse_str(
            r#"<system version=" 1 "><cpu numaid="-1"></cpu></system>"#,
            "x",
        )
        .unwrap();
        assert_eq!(t.cpu(t.cpus[0]).unwrap().numaid, -1);
        assert!(to_string(&t).contains("  <cpu numaid=\"-1\"/>\n"));
    }

    #[test]
    fn implicit_dev_rules() {
        let wrap =
            |body: &str| format!(r#"<system version="1"><cpu numaid="0">{body}</cpu></system>"#);
        let devs = |t: &Topology| -> Vec<(u32, String)> {
            t.gpus
                .iter()
                .map(|g| (g.dev, busid(t, g.node).to_string()))
                .collect()
        };
        // None explicit: bus-ID order.
        let t = parse_str(
            &wrap(
                r#"<pci busid="0000:03:00.0" class="0x030200"/>
                   <pci busid="0000:01:00.0" class="0x030000"/>
                   <pci busid="0000:02:00.0" class="0x0b4000"/>"#,
            ),
            "x",
        )
        .unwrap();
        assert_eq!(
            devs(&t),
            [
                (0, "0000:01:00.0".into()),
                (1, "0000:02:00.0".into()),
                (2, "0000:03:00.0".into())
            ]
        );
        assert_eq!(t.gpus[1].class, DeviceClass::Accelerator);
        // All explicit: as given, sorted by dev.
        let t = parse_str(
            &wrap(
                r#"<pci busid="0000:01:00.0" class="0x030200"><gpu dev="7" sm="80"/></pci>
                   <pci busid="0000:02:00.0" class="0x030200"><gpu dev="3" sm="80"/></pci>"#,
            ),
            "x",
        )
        .unwrap();
        assert_eq!(
            devs(&t),
            [(3, "0000:02:00.0".into()), (7, "0000:01:00.0".into())]
        );
        // Mixed: the implicit ones take the free numbers in bus-ID order.
        let t = parse_str(
            &wrap(
                r#"<pci busid="0000:04:00.0" class="0x030200"/>
                   <pci busid="0000:01:00.0" class="0x030200"><gpu dev="1" sm="80"/></pci>
                   <pci busid="0000:03:00.0" class="0x030200"/>
                   <pci busid="0000:02:00.0" class="0x030200"><gpu dev="0" sm="80"/></pci>
                   <pci busid="0000:05:00.0" class="0x030200"><gpu dev="3" sm="80"/></pci>"#,
            ),
            "x",
        )
        .unwrap();
        assert_eq!(
            devs(&t),
            [
                (0, "0000:02:00.0".into()),
                (1, "0000:01:00.0".into()),
                (2, "0000:03:00.0".into()),
                (3, "0000:05:00.0".into()),
                (4, "0000:04:00.0".into())
            ]
        );
        assert_round_trip(&t);
        // A <gpu> under a non-GPU class is still a GPU.
        let t = parse_str(
            &wrap(r#"<pci busid="0000:01:00.0" class="0x068000"><gpu dev="0" sm="90"/></pci>"#),
            "x",
        )
        .unwrap();
        assert_eq!(t.gpus[0].class, DeviceClass::Gpu);
        // Duplicate explicit dev.
        let (line, el, reason) = xml_err(&wrap(
            "\n<pci busid=\"0000:01:00.0\" class=\"0x030200\"><gpu dev=\"0\" sm=\"80\"/></pci>\n\
             <pci busid=\"0000:02:00.0\" class=\"0x030200\"><gpu dev=\"0\" sm=\"80\"/></pci>",
        ));
        assert_eq!((line, el.as_str()), (3, "gpu"));
        assert!(
            reason.contains("duplicate dev 0") && reason.contains("line 2"),
            "{reason}"
        );
    }

    #[test]
    fn net_rules() {
        let t = parse_str(
            r#"<system version="1"><cpu numaid="0">
                 <pci busid="0000:01:00.0" class="0x020000">
                   <nic>
                     <net name="roce0" dev="0" link_layer="Ethernet" speed="0" state="DOWN"/>
                     <net name="sock0" dev="1" speed="-1" gdr="0"/>
                   </nic>
                 </pci>
                 <pci busid="0000:02:00.0" class="0x028000"/>
                 <pci busid="0000:03:00.0" class="0x020700"/>
               </cpu></system>"#,
            "x",
        )
        .unwrap();
        let n: Vec<(&str, u32, NetKind)> = t
            .nets
            .iter()
            .map(|n| (n.name.as_str(), n.dev, n.kind))
            .collect();
        assert_eq!(
            n,
            [
                ("roce0", 0, NetKind::Ib),
                ("sock0", 1, NetKind::Socket),
                ("0000:02:00.0", 2, NetKind::Socket),
                ("0000:03:00.0", 3, NetKind::Ib),
            ]
        );
        assert_eq!(t.nets[0].speed_mbps, None);
        assert_eq!(t.nets[1].speed_mbps, None);
        assert_eq!(t.nets[0].state, PortState::Down);
        assert_eq!(t.nets[1].gdr, Some(false));
        assert_round_trip(&t);

        let (line, el, reason) = xml_err(
            "<system version=\"1\"><cpu numaid=\"0\"><nic>\n<net name=\"a\" dev=\"0\"/>\n<net name=\"a\" dev=\"1\"/></nic></cpu></system>",
        );
        assert_eq!((line, el.as_str()), (3, "net"));
        assert!(reason.contains("duplicate net name \"a\""), "{reason}");
        let (_, _, reason) = xml_err(
            r#"<system version="1"><cpu numaid="0"><nic><net name="a" dev="0" state="flaky"/></nic></cpu></system>"#,
        );
        assert!(reason.contains("state=\"flaky\""), "{reason}");
        let (_, el, reason) = xml_err(
            r#"<system version="1"><cpu numaid="0"><nic><net name="0000:01:00.0" dev="0"/></nic><pci busid="0000:01:00.0" class="0x020000"/></cpu></system>"#,
        );
        assert_eq!(el, "pci");
        assert!(reason.contains("already the name"), "{reason}");
    }

    #[test]
    fn structural_errors() {
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "<system version=\"1\">\n<pci busid=\"0000:01:00.0\" class=\"0x0\"/></system>",
                2,
                "pci",
                "directly under <system>",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\">\n<cpu numaid=\"1\"/></cpu></system>",
                2,
                "cpu",
                "nested <cpu>",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\">\n<pci busid=\"0000:02:00.0\" class=\"0x0\"><cpu numaid=\"1\"/></pci></pci></cpu></system>",
                2,
                "cpu",
                "directly under <system>",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\">\n\n<gpu dev=\"0\" sm=\"80\"/></cpu></system>",
                3,
                "gpu",
                "must be under <pci>",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><net name=\"x\" dev=\"0\"/></cpu></system>",
                1,
                "net",
                "must be under <nic>",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><nic>\n<pci busid=\"0000:01:00.0\" class=\"0x0\"/></nic></cpu></system>",
                2,
                "pci",
                "<nic> cannot contain <pci>",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"><gpu dev=\"0\" sm=\"1\">\n<pci busid=\"0000:02:00.0\" class=\"0x0\"/></gpu></pci></cpu></system>",
                2,
                "pci",
                "<gpu> cannot contain <pci>",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"><gpu dev=\"0\" sm=\"1\"/><gpu dev=\"1\" sm=\"1\"/></pci></cpu></system>",
                1,
                "gpu",
                "more than one <gpu>",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><nvlink target=\"x\" count=\"1\" tclass=\"0x0\"/></cpu></system>",
                1,
                "nvlink",
                "must be under <gpu>",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"><nic><nic/></nic></pci></cpu></system>",
                1,
                "nic",
                "must be under <pci> or <cpu>",
            ),
            (
                "<system version=\"1\"><nic/></system>",
                1,
                "nic",
                "must be under <pci> or <cpu>",
            ),
            ("<cpu numaid=\"0\"/>", 1, "cpu", "directly under <system>"),
            (
                "<!-- nothing -->\n<other/>\n",
                1,
                "system",
                "no <system> element",
            ),
            ("", 1, "system", "no <system> element"),
            (
                "<system version=\"1\"/>\n<system version=\"1\"/>",
                2,
                "system",
                "more than one <system>",
            ),
            (
                "<system version=\"1\">\n  <system version=\"1\"/></system>",
                2,
                "system",
                "more than one <system>",
            ),
            (
                "<system version=\"2\"/>",
                1,
                "system",
                "unsupported version 2",
            ),
            ("<system/>", 1, "system", "missing attribute version"),
            (
                "<system version=\"1\"><cpu numaid=\"0\">\n<pci class=\"0x030200\"/></cpu></system>",
                2,
                "pci",
                "missing attribute busid",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\">\n<pci busid=\"0000:01:00.0\"/></cpu></system>",
                2,
                "pci",
                "missing attribute class",
            ),
            (
                "<system version=\"1\">\n<cpu numaid=\"abc\"/></system>",
                2,
                "cpu",
                "numaid=\"abc\" is not an integer",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\" familyid=\"-1\"/></system>",
                1,
                "cpu",
                "familyid=\"-1\" is not an integer",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\" link_width=\"x16\"/></cpu></system>",
                1,
                "pci",
                "link_width=\"x16\" is not an integer",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0xgg\"/></cpu></system>",
                1,
                "pci",
                "class=\"0xgg\"",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x1000000\"/></cpu></system>",
                1,
                "pci",
                "24-bit",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\" vendor=\"0x10000\"/></cpu></system>",
                1,
                "pci",
                "16-bit",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0:1:2.3\" class=\"0x0\"/></cpu></system>",
                1,
                "pci",
                "not a PCI bus ID",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"/>\n<pci busid=\"0000:01:00.0\" class=\"0x0\"/></cpu></system>",
                2,
                "pci",
                "duplicate busid 0000:01:00.0 (first at line 1)",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"><gpu sm=\"80\"/></pci></cpu></system>",
                1,
                "gpu",
                "missing attribute dev",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"><gpu dev=\"0\"/></pci></cpu></system>",
                1,
                "gpu",
                "missing attribute sm",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"><gpu dev=\"0\" sm=\"9\"><nvlink target=\"a\" count=\"z\" tclass=\"0x0\"/></gpu></pci></cpu></system>",
                1,
                "nvlink",
                "count=\"z\" is not an integer",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><nic><net dev=\"0\"/></nic></cpu></system>",
                1,
                "net",
                "missing attribute name",
            ),
            (
                "<system version=\"1\"><cpu numaid=\"0\"><nic><net name=\"a\" dev=\"0\" port=\"one\"/></nic></cpu></system>",
                1,
                "net",
                "port=\"one\" is not an integer",
            ),
        ];
        for &(text, line, element, reason) in cases {
            let (l, e, r) = xml_err(text);
            assert_eq!((l, e.as_str()), (line, element), "{text}: {r}");
            assert!(r.contains(reason), "{text}: {r:?} lacks {reason:?}");
        }
    }

    #[test]
    fn malformed_xml_errors() {
        // Unclosed tag at end of input: the element and its line.
        let (line, el, reason) = xml_err("<system version=\"1\">\n  <cpu numaid=\"0\">\n");
        assert_eq!((line, el.as_str()), (2, "cpu"));
        assert!(reason.contains("</cpu>"), "{reason}");
        // Mismatched end tag.
        let (line, el, reason) = xml_err(
            "<system version=\"1\">\n<cpu numaid=\"0\">\n<pci busid=\"0000:01:00.0\" class=\"0x0\">\n</cpu></system>",
        );
        assert_eq!((line, el.as_str()), (4, "pci"));
        assert!(
            reason.contains("`</pci>`") && reason.contains("cpu"),
            "{reason}"
        );
        // Bad attribute syntax.
        let (line, el, reason) = xml_err("<system version=\"1\">\n\n<cpu numaid=0/></system>");
        assert_eq!((line, el.as_str()), (3, "cpu"));
        assert!(!reason.is_empty());
        let (_, el, _) = xml_err("<system version=\"1\"><cpu numaid=\"0\" numaid=\"1\"/></system>");
        assert_eq!(el, "cpu");
        // Truncated tag.
        let (line, el, _) = xml_err("<system version=\"1\">\n<cpu numaid=\"0\"");
        assert_eq!((line, el.as_str()), (2, "system"));
        // Unmatched end tag, bad entity.
        xml_err("</system>");
        let (_, el, _) =
            xml_err("<system version=\"1\"><cpu numaid=\"0\" arch=\"&bogus;\"/></system>");
        assert_eq!(el, "cpu");
    }

    #[test]
    fn comments_declaration_unknown_and_escapes() {
        let t = parse_str(
            "\u{feff}<?xml version=\"1.0\"?>\n<!DOCTYPE system>\n<!-- a -->\n<system version=\"1\" name=\"h\">\n<!-- <cpu numaid=\"9\"/> -->\n<cpu numaid=\"0\" arch=\"x&amp;y\" host_hash=\"0x1\">text<![CDATA[x]]></cpu>\n<extra><cpu/></extra>\n</system>\n<!-- tail -->\n",
            "c.xml",
        )
        .unwrap();
        assert_eq!(t.cpus.len(), 1);
        assert_eq!(t.cpu(t.cpus[0]).unwrap().arch.as_deref(), Some("x&y"));
        assert_eq!(t.warnings, ["c.xml:7: unknown element <extra> ignored"]);
        assert_round_trip(&t);
    }

    #[test]
    fn garbled_inputs_do_not_panic() {
        let inputs = [
            "<",
            ">",
            "<<<>>>",
            "<system",
            "<system version=\"1\"",
            "<system version=\"1\"><",
            "<system version=\"1\"></",
            "<system version=\"1\"></sys",
            "<system version=1>",
            "<system version=\"1\" version=\"1\"/>",
            "<system version=\"99999999999999999999\"/>",
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x030200\"><gpu dev=\"4294967295\" sm=\"1\"/></pci><pci busid=\"0000:02:00.0\" class=\"0x030200\"/></cpu></system>",
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x020000\"><nic><net name=\"a\" dev=\"4294967295\"/></nic></pci><pci busid=\"0000:02:00.0\" class=\"0x020000\"/></cpu></system>",
            "<system version=\"1\"><!-- unterminated",
            "<system version=\"1\"><![CDATA[",
            "<?xml",
            "<!DOCTYPE",
            "\u{0}\u{1}\u{2}",
            "<système version=\"1\"/>",
            "<system version=\"1\">é</system>",
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"ffff:ff:01.0\" class=\"\"/></cpu></system>",
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"ffff:ff:01.0\" class=\"0x\"/></cpu></system>",
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"ffff:ff:01.0\" class=\"+1\"/></cpu></system>",
            "<system version=\"1\"></cpu></system>",
            "<a><b><c></a>",
        ];
        for text in inputs {
            let _ = parse_str(text, "g.xml");
        }
        // An explicit dev of u32::MAX leaves 0 free for the implicit GPU; a
        // net dev of u32::MAX leaves no number for the auto-named port.
        assert_eq!(parse_str(inputs[11], "g").unwrap().gpus[0].dev, 0);
        assert!(parse_str(inputs[12], "g").is_err());
        assert!(parse_str(inputs[22], "g").is_err());
    }

    #[test]
    fn every_truncation_is_ok_or_err() {
        for cut in 0..=SMALL.len() {
            if SMALL.is_char_boundary(cut) {
                let r = parse_str(&SMALL[..cut], "cut.xml");
                if cut < SMALL.len() - 10 {
                    assert!(r.is_err(), "cut at {cut} parsed");
                }
            }
        }
        let full = parse_str(SMALL, "x").unwrap();
        assert!(parse_str(&SMALL[..SMALL.len() - 1], "x").is_ok_and(|t| t == full));
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let depth = 3_000;
        let mut text = String::from("<system version=\"1\"><cpu numaid=\"0\">");
        for i in 0..depth {
            let _ = write!(
                text,
                "<pci busid=\"{:04x}:{:02x}:00.0\" class=\"0x060400\">",
                i / 256,
                i % 256
            );
        }
        text.push_str(&"</pci>".repeat(depth));
        text.push_str("</cpu></system>");
        let t = parse_str(&text, "deep").unwrap();
        assert_eq!(t.nodes.len(), depth + 1);
        let out = to_string(&t);
        assert_eq!(parse_str(&out, "deep2").unwrap(), t);
    }

    #[test]
    fn load_and_save() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.xml");
        let t = hand_built();
        save(&t, &path).unwrap();
        assert_eq!(load(&path).unwrap(), t);
        std::fs::write(&path, "<system version=\"1\">\n<cpu/></system>").unwrap();
        match load(&path) {
            Err(TopoError::Xml { file, line, .. }) => {
                assert_eq!(file, path.display().to_string());
                assert_eq!(line, 2);
            }
            other => panic!("{other:?}"),
        }
        let missing = dir.path().join("nope.xml");
        let err = load(&missing).unwrap_err();
        assert!(matches!(&err, TopoError::Io { path, .. } if *path == missing));
        assert!(err.to_string().contains("nope.xml"));
        let err = save(&t, &dir.path().join("no/such/dir.xml")).unwrap_err();
        assert!(matches!(err, TopoError::Io { .. }));
    }

    #[test]
    fn fixtures_round_trip() {
        let Some(dir) = fixture_dir() else {
            return;
        };
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "xml") {
                let t = load(&path).unwrap();
                assert!(
                    t.warnings.is_empty(),
                    "{}: {:?}",
                    path.display(),
                    t.warnings
                );
                assert_round_trip(&t);
                n += 1;
            }
        }
        assert!(n >= 4, "expected the four Azure fixtures, found {n}");
    }

    #[test]
    fn fixture_ndv4() {
        let Some(t) = fixture("azure-ndv4-topo.xml") else {
            return;
        };
        assert_eq!(t.cpus.len(), 4);
        assert_eq!(t.gpus.len(), 8);
        let devs: Vec<(u32, &str)> = t.gpus.iter().map(|g| (g.dev, busid(&t, g.node))).collect();
        assert_eq!(devs[0], (0, "0001:00:00.0"));
        assert_eq!(devs[4], (4, "000b:00:00.0"));
        for (i, g) in t.gpus.iter().enumerate() {
            assert_eq!(g.dev as usize, i);
            assert_eq!(g.class, DeviceClass::Gpu);
            assert_eq!(g.sm, None);
            let parent = t.nodes[g.node].parent.unwrap();
            let sw = busid(&t, parent);
            assert!(sw.starts_with("ffff:ff:0") && sw.ends_with(".0"), "{sw}");
            assert_eq!(t.pci(parent).unwrap().class, 0x060400);
        }
        assert_eq!(t.nets.len(), 8);
        for n in &t.nets {
            assert_eq!(n.name, busid(&t, n.node));
            assert_eq!(n.kind, NetKind::Ib);
            assert!(!n.is_virtual);
        }
        let mut names: Vec<&str> = t.nets.iter().map(|n| n.name.as_str()).collect();
        names.sort();
        let want: Vec<String> = (1..=8).map(|i| format!("010{i}:00:00.0")).collect();
        assert_eq!(names, want);
        // dev numbering = DFS order of the sorted tree.
        for (i, n) in t.nets.iter().enumerate() {
            assert_eq!(n.dev as usize, i);
        }
        assert_eq!(t.nets[0].name, "0103:00:00.0");
        // GPU dev2 (0003) shares switch ffff:ff:01.0 with 0103 and 0104, on NUMA 0.
        let g2 = &t.gpus[2];
        assert_eq!(busid(&t, g2.node), "0003:00:00.0");
        assert_eq!(t.numa_of(g2.node), 0);
        assert_eq!(t.nodes[g2.node].parent, t.nodes[t.nets[0].node].parent);
    }

    #[test]
    fn fixture_ncv4() {
        let Some(t) = fixture("azure-ncv4-topo.xml") else {
            return;
        };
        assert_eq!(t.gpus.len(), 4);
        for (i, g) in t.gpus.iter().enumerate() {
            assert_eq!(g.dev as usize, i);
            assert_eq!(g.sm, Some(80));
            assert_eq!(g.rank, Some(i as u32));
            assert_eq!(g.gdr, Some(true));
            assert_eq!(t.numa_of(g.node), i as i32);
            let p = t.pci(g.node).unwrap();
            assert_eq!((p.link_speed.as_str(), p.link_width), ("", 0));
            assert_eq!(p.device, Some(0x20b5));
            assert_eq!(g.nvlinks.len(), 1);
            assert_eq!(g.nvlinks[0].target, p.busid);
            assert_eq!((g.nvlinks[0].count, g.nvlinks[0].tclass), (12, 0x030200));
        }
        assert_eq!(t.nets.len(), 1);
        let n = &t.nets[0];
        assert_eq!(n.name, "eth0");
        assert_eq!(n.node, t.cpus[0]);
        assert_eq!(t.cpu(n.node).unwrap().numaid, 0);
        assert_eq!(n.speed_mbps, Some(100000));
        assert!(n.is_virtual);
        assert_eq!(n.kind, NetKind::Socket);
        assert_eq!((n.dev, n.port, n.gdr), (0, Some(0), Some(false)));
        assert_eq!(n.latency.as_deref(), Some("0.000000"));
        assert_eq!((n.guid.as_deref(), n.maxconn), (Some("0x0"), Some(65536)));
        let c = t.cpu(t.cpus[3]).unwrap();
        assert_eq!(c.affinity.as_deref(), Some("ffffff00,00000000,00000000"));
        assert_eq!((c.familyid, c.modelid), (Some(175), Some(1)));
    }

    #[test]
    fn fixture_ndv2_ndv5() {
        let Some(t) = fixture("azure-ndv2-topo.xml") else {
            return;
        };
        assert_eq!(t.gpus.len(), 8);
        assert_eq!(t.nets.len(), 1);
        assert_eq!(t.nets[0].name, "0101:00:00.0");
        assert_eq!(t.numa_of(t.nets[0].node), 0);
        assert_eq!(t.numa_of(t.gpus[7].node), 1);
        let t = fixture("azure-ndv5-topo.xml").unwrap();
        assert_eq!(t.gpus.len(), 8);
        let devs: Vec<&str> = t.gpus.iter().map(|g| busid(&t, g.node)).collect();
        assert_eq!(devs[3], "0008:00:00.0");
        assert_eq!(devs[4], "0009:00:00.0");
        let sw = t.find_busid("ffff:ff:01.0").unwrap();
        assert_eq!(t.pci(sw).unwrap().vendor, Some(0));
        assert_eq!(t.nets.len(), 8);
    }

    fn in_cpu(body: &str) -> String {
        format!("<system version=\"1\"><cpu numaid=\"0\">\n{body}\n</cpu></system>")
    }

    #[test]
    fn nvlink_targets() {
        let gpu = |busid: &str, links: &str| {
            format!(
                "<pci busid=\"{busid}\" class=\"0x030200\"><gpu dev=\"{}\" sm=\"90\">{links}</gpu></pci>\n",
                &busid[6..7]
            )
        };
        let link = |target: &str, tclass: &str| {
            format!("<nvlink target=\"{target}\" count=\"18\" tclass=\"{tclass}\"/>")
        };
        // To itself (Azure NC A100 v4), to an NVSwitch that is not in the
        // file, to the invisible remote, to a GPU in NVML's 8-digit form:
        // all accepted without a word.
        let text = in_cpu(&format!(
            "{}{}",
            gpu(
                "0000:01:00.0",
                &[
                    link("0000:01:00.0", "0x030200"),
                    link("0000:aa:00.0", "0x068000"),
                    link("fffffff:ffff:ff", "0x068000"),
                    link("00000000:02:00.0", "0x030200"),
                ]
                .concat()
            ),
            gpu("0000:02:00.0", "")
        ));
        let t = parse_str(&text, "nv.xml").unwrap();
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert_eq!(t.gpus[0].nvlinks.len(), 4);
        assert_eq!(
            crate::paths::classify(&t, t.gpus[0].node, t.gpus[1].node).ptype,
            crate::model::PathType::NVL
        );
        assert_round_trip(&t);

        // A GPU-class target that is no GPU here (unknown, or a NIC): kept
        // but never a path, with a warning, as NCCL drops it.
        let text = in_cpu(&format!(
            "{}<pci busid=\"0000:03:00.0\" class=\"0x020700\"/>",
            gpu(
                "0000:01:00.0",
                &[
                    link("0000:09:00.0", "0x030200"),
                    link("0000:03:00.0", "0x030000")
                ]
                .concat()
            )
        ));
        let t = parse_str(&text, "nv.xml").unwrap();
        assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);
        assert!(
            t.warnings[0].starts_with("nv.xml:2: <nvlink target=\"0000:09:00.0\"> of GPU 0000:01:00.0: no GPU has this bus ID"),
            "{}",
            t.warnings[0]
        );
        assert_eq!(t.gpus[0].nvlinks.len(), 2);

        // Garbage is an error naming the element and its line.
        for target in [
            "",
            "bogus",
            "0000:01:00.0;",
            "0000:01:00.0 0000:02:00.0",
            "11111111111111111",
        ] {
            let text = in_cpu(&gpu(
                "0000:01:00.0",
                &format!("\n{}", link(target, "0x030200")),
            ));
            let (line, el, reason) = xml_err(&text);
            assert_eq!((line, el.as_str()), (3, "nvlink"), "{target:?}");
            assert!(
                reason.contains(&format!("target=\"{target}\" is not a PCI bus ID")),
                "{reason}"
            );
        }
    }

    #[test]
    fn count_limits() {
        let many = |n: usize, f: &dyn Fn(usize) -> String| -> String { (0..n).map(f).collect() };
        let busid = |i: usize| format!("{:04x}:{:02x}:00.0", 1 + (i >> 8), i & 0xff);
        // GPUs: bare leaves, or <gpu> under another class; the element that
        // goes over the limit is named.
        let text = in_cpu(&many(MAX_GPUS + 1, &|i| {
            format!("<pci busid=\"{}\" class=\"0x030200\"/>\n", busid(i))
        }));
        let (line, el, reason) = xml_err(&text);
        assert_eq!((line, el.as_str()), (MAX_GPUS + 2, "pci"));
        assert!(
            reason.starts_with("more than 4096 GPUs and accelerators (zccl's limit"),
            "{reason}"
        );
        let ok = in_cpu(&many(MAX_GPUS, &|i| {
            format!(
                "<pci busid=\"{}\" class=\"0x020000\"><gpu dev=\"{i}\" sm=\"80\"/></pci>",
                busid(i)
            )
        }));
        assert_eq!(parse_str(&ok, "x").unwrap().gpus.len(), MAX_GPUS);
        let text = ok.replace(
            "</cpu>",
            "<pci busid=\"ffff:00:00.0\" class=\"0x120000\"/></cpu>",
        );
        assert_eq!(xml_err(&text).1, "pci");
        // NICs: <net> elements and NIC leaves together.
        let nets = many(MAX_NICS - 1, &|i| {
            format!("<net name=\"n{i}\" dev=\"{i}\"/>")
        });
        let text = in_cpu(&format!(
            "<nic>{nets}</nic><pci busid=\"0000:01:00.0\" class=\"0x020000\"/>"
        ));
        assert_eq!(parse_str(&text, "x").unwrap().nets.len(), MAX_NICS);
        let text = text.replace(
            "</cpu>",
            "<pci busid=\"0000:02:00.0\" class=\"0x020000\"/></cpu>",
        );
        let (_, el, reason) = xml_err(&text);
        assert_eq!(el, "pci");
        assert!(reason.contains("more than 4096 network ports"), "{reason}");
        let text = in_cpu(&format!(
            "<nic>{nets}<net name=\"a\" dev=\"9999\"/><net name=\"b\" dev=\"9998\"/></nic>"
        ));
        assert_eq!(xml_err(&text).1, "net");
        // CPUs and <pci> elements.
        let text = format!(
            "<system version=\"1\">{}</system>",
            many(MAX_CPUS + 1, &|i| format!("<cpu numaid=\"{i}\"/>"))
        );
        let (_, el, reason) = xml_err(&text);
        assert_eq!(el, "cpu");
        assert!(reason.contains("more than 4096 <cpu> elements"), "{reason}");
        let text = in_cpu(&many(MAX_PCI + 1, &|i| {
            format!(
                "<pci busid=\"{:04x}:{:02x}:00.0\" class=\"0x060400\"/>",
                i >> 8,
                i & 0xff
            )
        }));
        let (_, el, reason) = xml_err(&text);
        assert_eq!(el, "pci");
        assert!(
            reason.contains("more than 65536 <pci> elements"),
            "{reason}"
        );
    }

    #[test]
    fn shape_limits() {
        // Attributes per element.
        let attrs: String = (0..=MAX_ATTRIBUTES)
            .map(|i| format!(" a{i}=\"1\""))
            .collect();
        let (_, el, reason) = xml_err(&format!(
            "<system version=\"1\"><cpu numaid=\"0\"{attrs}/></system>"
        ));
        assert_eq!(
            (el.as_str(), reason.as_str()),
            ("cpu", "more than 64 attributes")
        );
        // Nesting, of known and unknown elements alike.
        let deep = format!(
            "{}{}",
            "<x>".repeat(MAX_NESTING),
            "</x>".repeat(MAX_NESTING)
        );
        let (line, el, reason) = xml_err(&in_cpu(&deep));
        assert_eq!((line, el.as_str()), (2, "x"));
        assert_eq!(reason, "elements nested more than 4096 deep");
        // A GPU or NIC at most MAX_DEVICE_DEPTH levels below its CPU; a
        // deep chain of switches alone is fine (deep_nesting_does_not_overflow).
        let chain = |n: usize, leaf: &str| {
            let open: String = (0..n)
                .map(|i| format!("<pci busid=\"0000:{i:02x}:00.0\" class=\"0x060400\">\n"))
                .collect();
            in_cpu(&format!("{open}{leaf}{}", "</pci>".repeat(n)))
        };
        let gpu = "<pci busid=\"0001:00:00.0\" class=\"0x030200\"/>";
        assert!(parse_str(&chain(MAX_DEVICE_DEPTH - 1, gpu), "x").is_ok());
        let (line, el, reason) = xml_err(&chain(MAX_DEVICE_DEPTH, gpu));
        assert_eq!((line, el.as_str()), (MAX_DEVICE_DEPTH + 2, "pci"));
        assert!(
            reason.starts_with("0001:00:00.0 is 33 <pci> levels below its <cpu>"),
            "{reason}"
        );
        let nic = "<pci busid=\"0001:00:00.0\" class=\"0x020000\"/>";
        assert!(parse_str(&chain(MAX_DEVICE_DEPTH, nic), "x").is_err());
        // Warnings: the first MAX_WARNINGS, then a count.
        let t = parse_str(&in_cpu(&"<fancy/>".repeat(250)), "w.xml").unwrap();
        assert_eq!(t.warnings.len(), MAX_WARNINGS + 1);
        assert_eq!(
            t.warnings[MAX_WARNINGS],
            "w.xml: 150 more warning(s) not shown (only the first 100 are kept)"
        );
    }

    #[test]
    fn load_refuses_devices_and_big_files() {
        let err = load(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(&err, TopoError::Refused { path, .. } if path == Path::new("/dev/zero")));
        assert_eq!(
            err.to_string(),
            "topology file /dev/zero is a character device, not a file or a pipe (it may never end)"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.xml");
        let text = format!(
            "<system version=\"1\"><cpu numaid=\"0\"/></system>{}",
            " ".repeat(1000)
        );
        std::fs::write(&path, &text).unwrap();
        let n = text.len() as u64;
        assert!(load_with_limit(&path, n).is_ok());
        let err = load_with_limit(&path, n - 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "topology file {} exceeds {} bytes (ZCCL_TOPO_MAX_BYTES sets the limit)",
                path.display(),
                n - 1
            )
        );
        // Not UTF-8: an I/O error, as before.
        std::fs::write(&path, b"<system version=\"1\">\xff</system>").unwrap();
        assert!(matches!(load(&path), Err(TopoError::Io { .. })));
    }

    #[test]
    fn load_reads_pipes_up_to_the_limit() {
        use std::io::Write;
        // A child writes to a pipe without end; /dev/fd/N is that pipe.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("while :; do printf '<system version=\"1\">'; done")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let fd = {
            use std::os::fd::AsRawFd;
            child.stdout.as_ref().unwrap().as_raw_fd()
        };
        let path = PathBuf::from(format!("/dev/fd/{fd}"));
        let err = load_with_limit(&path, 64 << 10).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("exceeds 64 KiB (ZCCL_TOPO_MAX_BYTES sets the limit)"),
            "{err}"
        );
        let _ = child.kill();
        let _ = child.wait();
        // A finite pipe under the limit is read.
        let mut child = std::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"<system version=\"1\"><cpu numaid=\"3\"/></system>")
            .unwrap();
        let fd = {
            use std::os::fd::AsRawFd;
            child.stdout.as_ref().unwrap().as_raw_fd()
        };
        let t = load_with_limit(Path::new(&format!("/dev/fd/{fd}")), 1 << 10).unwrap();
        assert_eq!(t.cpu(t.cpus[0]).unwrap().numaid, 3);
        let _ = child.wait();
    }

    #[test]
    fn a_large_synthetic_file_parses() {
        let text = crate::fake::many_devices_xml(1600, 1600);
        assert!(text.len() < 500_000);
        let t = parse_str(&text, "many").unwrap();
        assert_eq!((t.gpus.len(), t.nets.len()), (1600, 1600));
        assert!(t.warnings.is_empty());
        assert!(
            to_string(&t) == text,
            "export differs from the generated file"
        );
    }
}

//! NCCL topology XML: the `NCCL_TOPO_FILE` / `NCCL_TOPO_DUMP_FILE` schema
//! (see `research/topology.md`, section 4), read into and written from a
//! [`Topology`].
//!
//! Import accepts full NCCL dumps and the partial files that Azure and AWS
//! ship (bare `<pci>` leaves without `<gpu>`/`<nic>`, fake switches
//! `ffff:ff:0N.0`):
//! * a `<pci>` whose class says GPU or accelerator and that has no `<gpu>`
//!   child still becomes a [`Gpu`](crate::model::Gpu); its `dev` is the lowest number not taken
//!   by an explicit `<gpu dev>`, handed out in PCI bus-ID order (so with no
//!   explicit `dev` at all, `dev` is the position in bus-ID order);
//! * a `<pci>` whose class says NIC and that has no `<nic>` child gets one
//!   [`Net`](crate::model::Net) named by its bus ID, numbered after the largest explicit
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

mod export;
mod import;
#[cfg(test)]
mod tests;

use crate::TopoError;
use crate::model::Topology;
use export::Exporter;
use import::Parser;
use std::io::Read;
use std::path::Path;

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

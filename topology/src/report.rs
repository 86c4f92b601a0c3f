//! What `zccl topo` prints: the inventory, a GPU × NIC matrix in the style of
//! `nvidia-smi topo -m`, and the GPU → NIC table, as text or as JSON.
//!
//! The JSON form ([`Report`]) is a public interface read by the router and
//! other tools; its schema is documented in `docs/topology-json.md`. Fields
//! are only ever added, never renamed, within a `schema_version`.

use crate::affinity::{GpuAffinity, MAX_LISTED_NICS, affinity, gbits};
use crate::model::{DeviceClass, NetKind, PortState, Topology};
use crate::paths::Classifier;
use serde::Serialize;
use std::fmt::Write;

/// Version of the JSON schema below.
pub const SCHEMA_VERSION: u32 = 1;

/// The text report draws the GPU × NIC matrix only up to this many columns
/// (GPUs plus NICs; a real host has at most 48); beyond, a line says it is
/// left out.
pub const MAX_MATRIX_COLUMNS: usize = 128;

/// The text report's CLOSEST column names at most this many NICs.
const MAX_CLOSEST_SHOWN: usize = 16;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The JSON report of one host.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Where the topology came from (`sysfs:/`, `file:ndv5.xml`).
    pub source: String,
    /// NUMA nodes.
    pub cpus: Vec<CpuReport>,
    /// GPUs and accelerators, by `dev`.
    pub gpus: Vec<GpuReport>,
    /// Network ports, by `dev`.
    pub nics: Vec<NicReport>,
    /// Warnings about the topology.
    pub warnings: Vec<String>,
}

/// One NUMA node.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// NUMA id.
    pub numa: i32,
    /// CPU mask (sysfs `cpumap` form).
    pub affinity: Option<String>,
    /// Architecture.
    pub arch: Option<String>,
    /// Vendor string.
    pub vendor: Option<String>,
}

/// One GPU and its NICs.
#[derive(Debug, Clone, Serialize)]
pub struct GpuReport {
    /// NVML/CUDA index.
    pub dev: u32,
    /// PCI bus ID.
    pub busid: String,
    /// NUMA node.
    pub numa: i32,
    /// `gpu` or `accelerator`.
    pub class: DeviceClass,
    /// Kernel name (`ve0`), when known.
    pub name: Option<String>,
    /// Every usable NIC, best first (at most
    /// [`MAX_LISTED_NICS`], then the
    /// primary NIC if it falls beyond).
    pub nics: Vec<GpuNicReport>,
    /// How many usable NICs `nics` leaves out; absent from the JSON when 0,
    /// which it is on any real host.
    #[serde(skip_serializing_if = "is_zero")]
    pub nics_omitted: usize,
    /// Names of the closest NICs (equal best bandwidth and path type), with
    /// the same limit as `nics`.
    pub closest_nics: Vec<String>,
    /// How many closest NICs `closest_nics` leaves out; absent when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub closest_omitted: usize,
    /// Name of the primary NIC, `null` when there is none.
    pub primary_nic: Option<String>,
    /// How many GPUs share the closest NICs.
    pub sharing_gpus: usize,
    /// One line explaining the primary NIC.
    pub reason: String,
}

/// One NIC as seen from one GPU.
#[derive(Debug, Clone, Serialize)]
pub struct GpuNicReport {
    /// NIC (port) name.
    pub name: String,
    /// Bus ID of the NIC, `null` for NICs without PCI.
    pub busid: Option<String>,
    /// NCCL path type (`PIX`, `PXB`, `PHB`, `SYS`...).
    pub path: String,
    /// nvidia-smi label (`PIX`, `PXB`, `PHB`, `NODE`, `SYS`).
    pub smi: String,
    /// Usable bandwidth in Gbit/s: the slowest link of the path, capped by
    /// the port speed when known.
    pub bw_gbps: f64,
    /// Where the path turns (`switch 0000:18:00.0`, `CPU 0`).
    pub via: String,
    /// Number of links crossed.
    pub hops: usize,
}

/// One network port.
#[derive(Debug, Clone, Serialize)]
pub struct NicReport {
    /// Port name (`mlx5_0`, `eth0`).
    pub name: String,
    /// Plugin-style index.
    pub dev: u32,
    /// `ib` or `socket`.
    pub kind: NetKind,
    /// Bus ID, `null` for NICs without PCI.
    pub busid: Option<String>,
    /// NUMA node.
    pub numa: i32,
    /// Port speed in Mb/s, when known.
    pub speed_mbps: Option<u64>,
    /// `up`, `down` or `unknown`.
    pub state: PortState,
    /// IB port number.
    pub port: Option<u32>,
    /// `InfiniBand` or `Ethernet`.
    pub link_layer: Option<String>,
    /// Kernel interface.
    pub netdev: Option<String>,
    /// MAC address.
    pub mac: Option<String>,
    /// IP addresses with prefix length.
    pub addrs: Vec<String>,
    /// No PCI device behind it.
    pub r#virtual: bool,
    /// ASIC GUID.
    pub guid: Option<String>,
    /// Explicit rail.
    pub rail: Option<u32>,
}

impl Report {
    /// Build the report of a topology.
    ///
    /// ```
    /// use zccl_topology::{report::Report, model::Topology};
    /// let r = Report::new(&Topology::default(), "test");
    /// assert!(r.gpus.is_empty());
    /// assert_eq!(r.schema_version, 1);
    /// ```
    pub fn new(topo: &Topology, source: &str) -> Report {
        Self::with_affinity(topo, &affinity(topo), source)
    }

    fn with_affinity(topo: &Topology, aff: &[GpuAffinity], source: &str) -> Report {
        let busid_of = |node| topo.pci(node).map(|p| p.busid.clone());
        let cpus = topo
            .cpus
            .iter()
            .filter_map(|&c| topo.cpu(c))
            .map(|c| CpuReport {
                numa: c.numaid,
                affinity: c.affinity.clone(),
                arch: c.arch.clone(),
                vendor: c.vendor.clone(),
            })
            .collect();
        let gpus = aff
            .iter()
            .map(|a| {
                let g = &topo.gpus[a.gpu];
                GpuReport {
                    dev: g.dev,
                    busid: topo.label(g.node),
                    numa: topo.numa_of(g.node),
                    class: g.class,
                    name: g.name.clone(),
                    nics: a
                        .nics
                        .iter()
                        .map(|n| GpuNicReport {
                            name: topo.nets[n.net].name.clone(),
                            busid: busid_of(topo.nets[n.net].node),
                            path: n.path.ptype.to_string(),
                            smi: n.path.smi.to_string(),
                            bw_gbps: round3(n.bw_gbytes * 8.0),
                            via: n.path.via.describe(topo),
                            hops: n.path.hops.len().saturating_sub(1),
                        })
                        .collect(),
                    nics_omitted: a.nics_omitted,
                    closest_nics: a
                        .closest
                        .iter()
                        .map(|&n| topo.nets[n].name.clone())
                        .collect(),
                    closest_omitted: a.closest_omitted,
                    primary_nic: a.primary.map(|n| topo.nets[n].name.clone()),
                    sharing_gpus: a.sharing_gpus,
                    reason: a.reason.clone(),
                }
            })
            .collect();
        let nics = topo
            .nets
            .iter()
            .map(|n| NicReport {
                name: n.name.clone(),
                dev: n.dev,
                kind: n.kind,
                busid: busid_of(n.node),
                numa: topo.numa_of(n.node),
                speed_mbps: n.speed_mbps,
                state: n.state,
                port: n.port,
                link_layer: n.link_layer.clone(),
                netdev: n.netdev.clone(),
                mac: n.mac.clone(),
                addrs: n.addrs.clone(),
                r#virtual: n.is_virtual,
                guid: n.guid.clone(),
                rail: n.rail,
            })
            .collect();
        Report {
            schema_version: SCHEMA_VERSION,
            source: source.to_string(),
            cpus,
            gpus,
            nics,
            warnings: topo.warnings.clone(),
        }
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut s = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(s, "{:<w$}  ", c, w = widths[i]);
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(out, header.to_vec());
    for r in rows {
        line(out, r.iter().map(String::as_str).collect());
    }
}

fn dash(o: &Option<String>) -> String {
    o.clone().unwrap_or_else(|| "-".into())
}

/// Render the human-readable report: inventory, matrix, GPU → NIC table,
/// and with `explain` each GPU's full NIC ranking with the path it takes.
///
/// ```
/// use zccl_topology::{report::render_text, model::*};
/// let mut t = Topology::default();
/// let cpu = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
/// t.nets.push(Net::new("eth0", cpu, NetKind::Socket));
/// let text = render_text(&t, "test", false);
/// assert!(text.contains("eth0"));
/// assert!(text.contains("No GPU found"));
/// ```
pub fn render_text(topo: &Topology, source: &str, explain: bool) -> String {
    let aff = affinity(topo);
    let rep = Report::with_affinity(topo, &aff, source);
    let mut out = String::new();
    let _ = writeln!(out, "zccl topology (source: {source})");
    let _ = writeln!(out, "\nCPUs ({})", rep.cpus.len());
    table(
        &mut out,
        &["NUMA", "ARCH", "VENDOR", "AFFINITY"],
        &rep.cpus
            .iter()
            .map(|c| {
                vec![
                    c.numa.to_string(),
                    dash(&c.arch),
                    dash(&c.vendor),
                    dash(&c.affinity),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let _ = writeln!(out, "\nNICs ({})", rep.nics.len());
    table(
        &mut out,
        &[
            "NIC",
            "NAME",
            "KIND",
            "BUSID",
            "NUMA",
            "SPEED",
            "STATE",
            "LINK",
            "NETDEV",
            "ADDRESSES",
        ],
        &rep.nics
            .iter()
            .enumerate()
            .map(|(i, n)| {
                vec![
                    format!("NIC{i}"),
                    n.name.clone(),
                    format!("{:?}", n.kind).to_lowercase(),
                    n.busid.clone().unwrap_or_else(|| "virtual".into()),
                    n.numa.to_string(),
                    n.speed_mbps
                        .map_or("unknown".into(), |s| gbits(s as f64 / 8000.0)),
                    format!("{:?}", n.state).to_lowercase(),
                    dash(&n.link_layer),
                    dash(&n.netdev),
                    if n.addrs.is_empty() {
                        "-".into()
                    } else {
                        n.addrs.join(" ")
                    },
                ]
            })
            .collect::<Vec<_>>(),
    );
    if rep.gpus.is_empty() {
        let _ = writeln!(
            out,
            "\nNo GPU found: no NVIDIA or AMD display controller and no accelerator on the PCI bus{}.",
            if rep.nics.is_empty() {
                ""
            } else {
                "; the NICs above are all there is"
            }
        );
    } else {
        let _ = writeln!(out, "\nGPUs ({})", rep.gpus.len());
        table(
            &mut out,
            &["GPU", "BUSID", "CLASS", "NAME", "NUMA"],
            &rep.gpus
                .iter()
                .map(|g| {
                    vec![
                        format!("GPU{}", g.dev),
                        g.busid.clone(),
                        format!("{:?}", g.class).to_lowercase(),
                        dash(&g.name),
                        g.numa.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        );
        render_matrix(&mut out, topo);
        let _ = writeln!(out, "\nGPU -> NIC");
        table(
            &mut out,
            &["GPU", "BUSID", "NUMA", "PRIMARY", "PATH", "BW", "CLOSEST"],
            &rep.gpus
                .iter()
                .map(|g| {
                    let first = g
                        .nics
                        .iter()
                        .find(|n| Some(&n.name) == g.primary_nic.as_ref());
                    vec![
                        format!("GPU{}", g.dev),
                        g.busid.clone(),
                        g.numa.to_string(),
                        dash(&g.primary_nic),
                        first.map_or("-".into(), |n| n.path.clone()),
                        first.map_or("-".into(), |n| gbits(n.bw_gbps / 8.0)),
                        closest_cell(g),
                    ]
                })
                .collect::<Vec<_>>(),
        );
        if explain {
            let _ = writeln!(out, "\nWhy");
            for (g, a) in rep.gpus.iter().zip(&aff) {
                let _ = writeln!(out, "  {}", g.reason);
                for (rank, n) in a.nics.iter().enumerate() {
                    let hops: Vec<String> = n.path.hops.iter().map(|&h| topo.label(h)).collect();
                    let _ = writeln!(
                        out,
                        "    {}. {:<14} {} ({})  {:>10}  {}",
                        rank + 1,
                        topo.nets[n.net].name,
                        n.path.ptype,
                        n.path.smi,
                        gbits(n.bw_gbytes),
                        hops.join(" -> ")
                    );
                }
                if a.nics_omitted > 0 {
                    let _ = writeln!(
                        out,
                        "    ... and {} more NIC(s), not ranked here (the first {MAX_LISTED_NICS} are)",
                        a.nics_omitted
                    );
                }
            }
        }
    }
    if !rep.warnings.is_empty() {
        let _ = writeln!(out, "\nWarnings");
        for w in &rep.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}

/// The CLOSEST cell of the GPU -> NIC table: the names, at most
/// [`MAX_CLOSEST_SHOWN`], then how many more there are.
fn closest_cell(g: &GpuReport) -> String {
    let shown = g.closest_nics.len().min(MAX_CLOSEST_SHOWN);
    let mut cell = g.closest_nics[..shown].join(",");
    let more = g.closest_nics.len() - shown + g.closest_omitted;
    if more > 0 {
        let _ = write!(cell, ",... ({more} more)");
    }
    cell
}

/// The `nvidia-smi topo -m` style matrix over GPUs and (non-loopback) NICs,
/// when it has at most [`MAX_MATRIX_COLUMNS`] columns.
fn render_matrix(out: &mut String, topo: &Topology) {
    let nets: Vec<usize> = (0..topo.nets.len())
        .filter(|&i| !topo.nets[i].is_loopback())
        .collect();
    let columns = topo.gpus.len() + nets.len();
    if columns > MAX_MATRIX_COLUMNS {
        let _ = writeln!(
            out,
            "\nMatrix (nvidia-smi topo -m labels): left out, {} GPUs and {} NICs make {columns} columns (at most {MAX_MATRIX_COLUMNS} are drawn)",
            topo.gpus.len(),
            nets.len()
        );
        return;
    }
    let cls = Classifier::new(topo);
    let mut cols: Vec<(String, usize)> = topo
        .gpus
        .iter()
        .map(|g| (format!("GPU{}", g.dev), g.node))
        .collect();
    cols.extend(nets.iter().map(|&i| (format!("NIC{i}"), topo.nets[i].node)));
    let mut header = vec![String::new()];
    header.extend(cols.iter().map(|c| c.0.clone()));
    header.push("NUMA".into());
    let rows: Vec<Vec<String>> = cols
        .iter()
        .enumerate()
        .map(|(i, (name, a))| {
            let mut r = vec![name.clone()];
            for (j, (_, b)) in cols.iter().enumerate() {
                let p = cls.classify(*a, *b);
                r.push(match p.via {
                    _ if i == j => "X".into(),
                    // Two ports of one NIC (or two NICs without PCI on one CPU).
                    crate::paths::Via::Same if topo.cpu(*a).is_some() => "PHB".into(),
                    crate::paths::Via::Same => "PIX".into(),
                    crate::paths::Via::Nvlink { count } => format!("NV{count}"),
                    _ => p.smi.to_string(),
                });
            }
            r.push(topo.numa_of(*a).to_string());
            r
        })
        .collect();
    let _ = writeln!(out, "\nMatrix (nvidia-smi topo -m labels)");
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    table(out, &header_refs, &rows);
    let _ = writeln!(out, "\n  NIC Legend:");
    for &i in &nets {
        let _ = writeln!(out, "    NIC{i}: {}", topo.nets[i].name);
    }
    let _ = writeln!(
        out,
        "\n  X = self, NV# = NVLinks, PIX = at most one PCIe bridge, PXB = several bridges,\n  PHB = through a host bridge, NODE = across host bridges of one NUMA node, SYS = across NUMA nodes"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn many(gpus: usize, nics: usize) -> Topology {
        crate::xml::parse_str(&crate::fake::many_devices_xml(gpus, nics), "many").unwrap()
    }

    #[test]
    fn small_reports_have_no_omitted_fields() {
        let t = many(8, 8);
        let json = Report::new(&t, "x").to_json();
        assert!(!json.contains("omitted"), "{json}");
        let text = render_text(&t, "x", true);
        assert!(text.contains("Matrix (nvidia-smi topo -m labels)\n"));
        assert!(text.contains("NIC Legend"));
        assert!(!text.contains("more NIC") && !text.contains("more)"));
    }

    #[test]
    fn big_reports_stay_small() {
        let t = many(200, 100);
        let r = Report::new(&t, "x");
        for g in &r.gpus {
            assert_eq!(g.nics.len() + g.nics_omitted, 100);
            assert!((MAX_LISTED_NICS..=MAX_LISTED_NICS + 1).contains(&g.nics.len()));
        }
        // GPU 0 has its two NICs on its switch; GPU 199 reaches all 100
        // across the CPUs, all tied.
        let (g0, last) = (&r.gpus[0], &r.gpus[199]);
        assert_eq!((g0.closest_nics.len(), g0.closest_omitted), (2, 0));
        assert_eq!(last.closest_nics.len() + last.closest_omitted, 100);
        assert!(last.closest_omitted > 0);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["gpus"][0]["nics_omitted"], 36);
        assert!(v["gpus"][0].get("closest_omitted").is_none());
        assert_eq!(v["gpus"][199]["closest_omitted"], last.closest_omitted);

        let text = render_text(&t, "x", true);
        assert!(
            text.contains("\nMatrix (nvidia-smi topo -m labels): left out, 200 GPUs and 100 NICs make 300 columns (at most 128 are drawn)\n"),
            "{text}"
        );
        assert!(!text.contains("NIC Legend"));
        assert!(text.contains("    ... and 36 more NIC(s), not ranked here (the first 64 are)\n"));
        assert!(text.lines().count() < 200 * (MAX_LISTED_NICS + 3) + 400);
    }

    #[test]
    fn closest_cell_names_sixteen_then_counts() {
        // 40 GPUs and 40 NICs on one CPU, no switch: every NIC is closest.
        let mut xml = String::from("<system version=\"1\"><cpu numaid=\"0\">");
        for i in 0..40 {
            xml.push_str(&format!(
                "<pci busid=\"0001:{i:02x}:00.0\" class=\"0x030200\"/><pci busid=\"0002:{i:02x}:00.0\" class=\"0x020700\"/>"
            ));
        }
        xml.push_str("</cpu></system>");
        let t = crate::xml::parse_str(&xml, "flat").unwrap();
        let text = render_text(&t, "flat", false);
        let table = &text[text.find("\nGPU -> NIC\n").unwrap()..];
        let row = table
            .lines()
            .find(|l| l.trim_start().starts_with("GPU0 "))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(row.ends_with(",0002:0f:00.0,... (24 more)"), "{row}");
    }
}

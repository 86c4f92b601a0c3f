//! # zccl-topology
//!
//! The topology probe of zccl: which NIC sits closest to each GPU, through
//! what, and how fast.
//!
//! * [`sysfs`] reads a Linux sysfs tree (under any root, so tests and
//!   archived dumps work) into a [`Topology`];
//! * [`xml`] reads and writes NCCL's topology XML (`NCCL_TOPO_FILE` /
//!   `NCCL_TOPO_DUMP_FILE` schema);
//! * [`paths`] classifies the path between two devices with NCCL's path
//!   types and `nvidia-smi topo -m` labels;
//! * [`affinity`] orders each GPU's NICs and picks a primary one with NCCL's
//!   tie-break;
//! * [`rails`] groups the NICs of several hosts into rails;
//! * [`report`] renders all of it as a table, JSON (a public interface,
//!   documented in `docs/topology-json.md`) or XML;
//! * [`fake`] writes fake sysfs trees for tests.
//!
//! Everything but the probe itself is a pure function of its inputs.
//!
//! ```
//! use zccl_topology::{fake::FakeHost, probe_sysfs, affinity::affinity};
//! let dir = tempfile::tempdir().unwrap();
//! FakeHost::dgx_h100_like().write(dir.path()).unwrap();
//! let topo = probe_sysfs(dir.path()).unwrap();
//! let aff = affinity(&topo);
//! assert_eq!(aff.len(), 8);
//! ```

pub mod affinity;
pub mod error;
pub mod fake;
pub mod model;
pub mod paths;
pub mod rails;
pub mod report;
pub mod sysfs;
pub mod xml;

pub use error::TopoError;
pub use model::{PathType, SmiLabel, Topology};

use std::path::{Path, PathBuf};

/// Probe the sysfs tree under `root` (`/` on a live system).
///
/// Shorthand for [`sysfs::probe`].
pub fn probe_sysfs(root: &Path) -> Result<Topology, TopoError> {
    sysfs::probe(root)
}

/// Where a topology comes from, resolved from explicit arguments first and
/// then from `ZCCL_TOPO_FILE` / `ZCCL_SYSFS_ROOT`.
///
/// ```
/// use zccl_topology::Source;
/// let s = Source::resolve(None, Some("/tmp/x.xml".into()), |_| None);
/// assert_eq!(s, Source::TopoFile("/tmp/x.xml".into()));
/// let s = Source::resolve(None, None, |k| (k == "ZCCL_SYSFS_ROOT").then(|| "/srv/dump".into()));
/// assert_eq!(s, Source::Sysfs("/srv/dump".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Probe sysfs under this root.
    Sysfs(PathBuf),
    /// Read an NCCL topology XML file instead of probing.
    TopoFile(PathBuf),
}

impl Source {
    /// Arguments win over the environment; a topology file wins over a sysfs
    /// root; the default is sysfs under `/`. `env` looks up a variable
    /// (pass `|k| std::env::var(k).ok()` in production).
    pub fn resolve(
        sysfs_root: Option<PathBuf>,
        topo_file: Option<PathBuf>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Source {
        let nonempty = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(f) = topo_file {
            return Source::TopoFile(f);
        }
        if let Some(r) = sysfs_root {
            return Source::Sysfs(r);
        }
        if let Some(f) = nonempty("ZCCL_TOPO_FILE") {
            return Source::TopoFile(f);
        }
        Source::Sysfs(nonempty("ZCCL_SYSFS_ROOT").unwrap_or_else(|| PathBuf::from("/")))
    }

    /// Load the topology from this source.
    pub fn load(&self) -> Result<Topology, TopoError> {
        match self {
            Source::Sysfs(root) => sysfs::probe(root),
            Source::TopoFile(f) => xml::load(f),
        }
    }
}

/// Load the topology the way a zccl rank does: from `ZCCL_TOPO_FILE` if set,
/// else by probing sysfs under `ZCCL_SYSFS_ROOT` (default `/`); then, if
/// `ZCCL_TOPO_DUMP_FILE` is set, write the result there as NCCL XML.
pub fn discover() -> Result<Topology, TopoError> {
    let topo = Source::resolve(None, None, |k| std::env::var(k).ok()).load()?;
    if let Some(dump) = std::env::var_os("ZCCL_TOPO_DUMP_FILE").filter(|v| !v.is_empty()) {
        xml::save(&topo, Path::new(&dump))?;
    }
    Ok(topo)
}

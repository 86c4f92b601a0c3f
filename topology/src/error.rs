//! Errors of the topology probe and of topology files.

use std::path::PathBuf;

/// Everything that can go wrong while probing sysfs or reading a topology
/// file. Each variant names the file or element at fault.
///
/// ```
/// use zccl_topology::TopoError;
/// let e = TopoError::Xml {
///     file: "topo.xml".into(),
///     line: 3,
///     element: "pci".into(),
///     reason: "missing attribute busid".into(),
/// };
/// assert_eq!(e.to_string(), "topo.xml:3: <pci>: missing attribute busid");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum TopoError {
    /// The sysfs root does not exist or does not look like sysfs.
    #[error("sysfs root {}: {reason}", root.display())]
    SysfsRoot {
        /// The root that was asked for.
        root: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A sysfs file holds something that cannot be right (e.g. a
    /// non-numeric `numa_node`).
    #[error("{}: {reason}", path.display())]
    SysfsFile {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with its content.
        reason: String,
    },
    /// A topology XML file is malformed or inconsistent.
    #[error("{file}:{line}: <{element}>: {reason}")]
    Xml {
        /// File name (or `<string>`).
        file: String,
        /// 1-based line of the element at fault.
        line: usize,
        /// The element's name.
        element: String,
        /// What is wrong.
        reason: String,
    },
    /// A topology file was refused before it was parsed: it is larger than
    /// the limit (`ZCCL_TOPO_MAX_BYTES`, 16 MiB by default), or it is a
    /// device (`/dev/zero`, a terminal) rather than a file or a pipe.
    ///
    /// ```
    /// use zccl_topology::TopoError;
    /// let e = TopoError::Refused { path: "/dev/zero".into(), reason: "is a character device, not a file".into() };
    /// assert_eq!(e.to_string(), "topology file /dev/zero is a character device, not a file");
    /// ```
    #[error("topology file {} {reason}", path.display())]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why, as the rest of the sentence (`exceeds 16 MiB ...`).
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

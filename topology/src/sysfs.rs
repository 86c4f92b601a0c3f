//! (being written)
use crate::{TopoError, Topology};
use std::path::Path;
/// Probe sysfs under `root`.
pub fn probe(root: &Path) -> Result<Topology, TopoError> {
    let _ = root;
    todo!()
}

//! (being written)
use crate::{TopoError, Topology};
use std::path::Path;
/// Load an NCCL topology XML file.
pub fn load(path: &Path) -> Result<Topology, TopoError> {
    let _ = path;
    todo!()
}
/// Save a topology as NCCL XML.
pub fn save(topo: &Topology, path: &Path) -> Result<(), TopoError> {
    let _ = (topo, path);
    todo!()
}

//! `zccl._zccl`: the native half of the `zccl` Python package.
//!
//! The Python half (`python/zccl/`) is what users import: it turns torch
//! tensors and numpy arrays into (address, bytes, dtype) without copying,
//! keeps them alive while an operation runs, and registers the
//! `torch.distributed` backend. This module holds the communicator
//! (`comm::Comm`), the bootstrap root (`comm::Root`) and operation
//! handles (`work::Work`); every blocking wait releases the GIL.

use pyo3::prelude::*;

mod buf;
mod comm;
mod work;

pyo3::create_exception!(
    _zccl,
    ZcclError,
    pyo3::exceptions::PyRuntimeError,
    "An error of zccl: a failed, timed-out or aborted operation, a dead peer (named), or a mismatch between ranks."
);

#[pymodule]
fn _zccl(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<comm::Comm>()?;
    m.add_class::<comm::Root>()?;
    m.add_class::<work::Work>()?;
    m.add_function(wrap_pyfunction!(comm::attn_merge, m)?)?;
    m.add("ZcclError", m.py().get_type::<ZcclError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

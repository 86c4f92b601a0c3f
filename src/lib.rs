//! # zccl
//!
//! Collective communication for sequence-parallel training. This facade
//! re-exports the library crates:
//!
//! * [`topology`]: the GPU/NIC topology probe (`zccl topo`);
//! * [`transports`], [`runtime`], [`primitives`], [`bench`]: not implemented
//!   yet (see each crate's documentation).
//!
//! ```
//! let t = zccl::topology::model::Topology::default();
//! assert!(t.gpus.is_empty());
//! ```

pub use zccl_bench as bench;
pub use zccl_primitives as primitives;
pub use zccl_runtime as runtime;
pub use zccl_topology as topology;
pub use zccl_transports as transports;

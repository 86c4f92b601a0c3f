//! # zccl
//!
//! Collective communication for sequence-parallel training. This facade
//! re-exports the library crates:
//!
//! * [`topology`]: the GPU/NIC topology probe (`zccl topo`);
//! * [`transports`]: the TCP and shared-memory transports;
//! * [`runtime`]: bootstrap, the communicator and its progress engine;
//! * [`primitives`]: the collectives and the sequence-parallel primitives;
//! * `bench`: the benchmarks behind `zccl bench` (only with the `cli`
//!   feature).
//!
//! ```
//! let t = zccl::topology::model::Topology::default();
//! assert!(t.gpus.is_empty());
//! ```
//!
//! # Features
//!
//! * `cli` (default): the `zccl` command and what only it needs: the
//!   `bench` module (`zccl-bench`, which brings the testbed and progress
//!   bars), `clap` and `anyhow`.
//!
//! A Rust trainer turns the default features off and gets only the library
//! crates above:
//!
//! ```toml
//! [dependencies]
//! zccl = { version = "0.1", default-features = false }
//! ```

#[cfg(feature = "cli")]
pub use zccl_bench as bench;
pub use zccl_primitives as primitives;
pub use zccl_runtime as runtime;
pub use zccl_topology as topology;
pub use zccl_transports as transports;

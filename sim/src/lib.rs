//! `zccl-sim`: a flow-level network simulator that runs zccl's real
//! decisions (the router's planner and its executor's chunk clocking, the
//! sequence-parallel schedules) over simulated links, at scales one machine
//! cannot run: `zccl sim calibrate` holds it against the testbed, `zccl sim
//! sweep` runs ring attention, TokenRing, Ulysses and All-Scan on clusters
//! of up to 1024 GPUs. See docs/simulation.md.
//!
//! * [`net`]: links, flows, max-min fair rates, the event loop (pure).
//! * [`cluster`]: clusters (hosts × GPUs × NICs, rails, pods, spine) as
//!   links and as the router's [`zccl_runtime::router::Cluster`].
//! * [`workload`]: step programs from `zccl_primitives::schedule`.
//! * [`run`]: runs a program: static affinity or the router, per chunk or
//!   per lane.
//! * [`calibrate`]: the testbed's `zccl bench route` scenarios, measured vs
//!   simulated.
//! * [`sweep`]: the scale runs, JSON and SVG.
//!
//! ```
//! use zccl_sim::{cluster::ClusterSpec, run::{simulate, Mode, RunConfig}, workload::ring_shift};
//! let c = ClusterSpec::rail_optimized(2, 8, 8, 400.0).build().unwrap();
//! let r = simulate(&c, &ring_shift(16, |_| 64 << 20), &RunConfig::new(Mode::Router)).unwrap();
//! assert!(r.time_s > 0.0);
//! ```

pub mod calibrate;
pub mod cluster;
pub mod net;
pub mod run;
pub mod svg;
pub mod sweep;
pub mod workload;

/// What can go wrong in a simulation.
///
/// ```
/// let e = zccl_sim::cluster::ClusterSpec { hosts: 0, ..Default::default() }.build().unwrap_err();
/// assert!(matches!(e, zccl_sim::SimError::BadCluster(_)));
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// A cluster that cannot be built.
    #[error("bad cluster: {0}")]
    BadCluster(String),
    /// A flow over no link, a missing link or a link that is down.
    #[error("bad path: {0}")]
    BadPath(String),
    /// A program whose sends and receives do not match.
    #[error("bad program: {0}")]
    BadProgram(String),
    /// The planner refused a transfer.
    #[error("the router could not plan: {0}")]
    Plan(String),
    /// Ranks waiting for messages that never come.
    #[error("the simulation stopped with work left: {0}")]
    Stuck(String),
    /// A measurement file that cannot be read.
    #[error("measurements: {0}")]
    Measured(String),
    /// Writing an output file failed.
    #[error("{path}: {why}")]
    Io {
        /// The file.
        path: String,
        /// What happened.
        why: String,
    },
}

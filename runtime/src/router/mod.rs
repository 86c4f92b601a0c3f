//! The NIC-aware router: spreads an inter-host transfer over every NIC of the
//! sender's host, relaying through same-host proxy ranks (NCCL's PXN, the
//! Zeppelin paper's routing layer), rail-matched to the receiver's host.
//!
//! * [`plan`](mod@plan): the planner, a pure function of the transfer, the cluster
//!   (hosts, NICs, rails, which rank is affine to which NIC) and the live NIC
//!   state. Tested with tables, without sockets.
//!
//! **Not built yet:** the executor that runs plans over the transports
//! (proxies relaying chunks inside the progress engine), and the adaptation
//! loop that feeds measured NIC state back into the planner.

pub mod plan;

pub use plan::{
    Cluster, CrossNic, Lane, LiveState, NicId, NicInfo, NicState, Plan, Policy, Transfer, plan,
};

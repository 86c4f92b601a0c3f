//! The NIC-aware router: spreads an inter-host transfer over every NIC of the
//! sender's host, relaying through same-host proxy ranks (NCCL's PXN, the
//! Zeppelin paper's routing layer), rail-matched to the receiver's host, and
//! adapts when a NIC fails or slows down.
//!
//! * [`plan`](mod@plan): the planner, a pure function of the transfer, the
//!   cluster (hosts, NICs, rails, which rank is affine to which NIC) and the
//!   live NIC state. Tested with tables, without sockets.
//! * [`cluster`]: what ranks publish about their NICs, and the planner's
//!   cluster built from it.
//! * [`wire`]: routed chunks and their acknowledgements on the wire.
//! * [`sender`]: one routed transfer's sending state: chunks clocked onto
//!   lanes by acknowledgement, lanes taken out on failure, tail hedging.
//! * [`receiver`]: reassembly of chunks arriving in any order, duplicates
//!   dropped.
//! * [`exec`]: the executor the progress engine drives: plans, proxies,
//!   acknowledgements, link watch, `ZCCL_ROUTER`.

pub mod cluster;
pub mod exec;
pub mod plan;
pub mod receiver;
pub mod sender;
pub mod wire;

pub use exec::{Action, Router, RouterMode};
pub use plan::{
    Cluster, CrossNic, Lane, LiveState, NicId, NicInfo, NicState, Plan, Policy, Transfer, plan,
};

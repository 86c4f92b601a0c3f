//! zccl primitives: the collectives and the sequence-parallel communication
//! patterns (ring shift, TokenRing, all-to-all(-v), All-Scan), written as
//! pure schedules plus thin executors over a small point-to-point [`Fabric`].
//!
//! * [`fabric`]: the point-to-point trait the algorithms use (FIFO matching
//!   per peer and channel, non-blocking sends, per-op deadlines).
//! * [`sim`]: an in-process simulated fabric (ranks as threads) and
//!   [`sim::run_ranks`], used to test everything at N = 1..8 without sockets.
//! * [`dtype`], [`reduce`]: element types and reduction semantics (where
//!   rounding happens).
//! * [`schedule`]: pure schedule generators (ring, recursive doubling, Bruck,
//!   binomial tree, pairwise exchange, ring shift, TokenRing, All-Scan chain)
//!   and the size-based algorithm choice with `ZCCL_ALGO`.
//! * Executors: [`collectives`] (all_reduce, all_gather, reduce_scatter,
//!   broadcast, barrier), [`alltoall`], [`ring`] (ring_shift, bidirectional
//!   step, ring driver), [`token_ring`], [`scan`] (All-Scan).
//! * Numerics and layout: [`attn_merge`] (FlashAttention-2 LSE merge),
//!   [`layout`] (Ulysses seq ↔ heads), [`busbw`] (nccl-tests bandwidths).
//!
//! ```
//! use zccl_primitives::{collectives::all_reduce, reduce::ReduceOp, sim::run_ranks};
//! let sums = run_ranks(4, |f| {
//!     let mut x = vec![1.0f32; 3];
//!     all_reduce(f, 0, &mut x, ReduceOp::Sum).unwrap();
//!     x
//! });
//! assert!(sums.iter().all(|x| x == &[4.0; 3]));
//! ```

#![warn(missing_docs)]

pub mod alltoall;
pub mod attn_merge;
pub mod busbw;
pub mod collectives;
pub mod comm;
pub mod dtype;
mod error;
pub mod fabric;
pub mod layout;
pub mod reduce;
pub mod ring;
pub mod scan;
pub mod schedule;
pub mod sim;
pub mod token_ring;

pub use error::{Dir, Error, Result};
pub use fabric::{Fabric, RecvHandle, SendHandle};

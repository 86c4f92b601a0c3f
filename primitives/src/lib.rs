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
//! * Non-blocking forms: [`nonblocking`] (one mechanism, [`OpHandle`]) and
//!   an `i*` function next to every blocking operation.
//! * Numerics and layout: [`attn_merge`] (FlashAttention-2 LSE merge),
//!   [`layout`] (Ulysses seq ↔ heads), [`busbw`] (nccl-tests bandwidths).
//! * [`channels`]: [`Channels`](channels::Channels), channel ids handed out
//!   deterministically, clear of channel 0.
//!
//! # Typed buffers
//!
//! Every operation takes and returns elements (`&[T]`, `Vec<T>` for any
//! [`dtype::Elem`]), except the byte-level forms kept for blocks that mix
//! element types: [`ring::ring_pass`] and [`token_ring::token_ring`] with a
//! [`token_ring::TokenRingKernel`] carry bytes; [`ring::ring_pass_elems`]
//! and [`token_ring::token_ring_elems`] with a [`token_ring::ElemKernel`]
//! are the same drivers in elements. Where bytes must become elements,
//! [`dtype::as_elems`] views them in place when aligned and copies
//! otherwise.
//!
//! # Channels
//!
//! Every operation uses exactly the channel(s) it is given; none has a
//! default (TokenRing and the bidirectional ring step take two, the rest
//! one). The runtime communicator's own `send`/`recv`/`isend`/`irecv`/
//! `batch` use channel 0; [`channels::Channels`] hands out ids from 1 up,
//! the same on every rank that makes the same calls in the same order.
//!
//! # Overlap contract
//!
//! Every operation can run while the caller computes. There are three forms,
//! and in all of them **an operation owns the channel(s) it is given until it
//! completes**: two operations in flight at once must use different channels
//! (and every rank issues the operations of one channel in the same order).
//! Operations on different channels progress independently.
//!
//! | form | operations | what runs where | while pending, the caller may |
//! |---|---|---|---|
//! | handle (`i*`) | [`iall_reduce`](collectives::iall_reduce), [`iall_gather`](collectives::iall_gather), [`ireduce_scatter`](collectives::ireduce_scatter), [`ibroadcast`](collectives::ibroadcast), [`ibarrier`](collectives::ibarrier), [`iall_to_all`](alltoall::iall_to_all), [`iall_to_all_v`](alltoall::iall_to_all_v), [`iseq_to_heads`](layout::iseq_to_heads), [`iheads_to_seq`](layout::iheads_to_seq), [`iall_scan_diag`](scan::iall_scan_diag), [`iall_scan_with`](scan::iall_scan_with), and any schedule through [`nonblocking::start`] | the whole schedule on a progress thread (a reused one from a pool, [`progress`]; the waiting caller runs it if no thread picked it up yet); the buffer is moved in (owned) and comes back from [`OpHandle::wait`] | compute anything; start or run other operations on other channels; poll [`OpHandle::test`]; wait later |
//! | posted point-to-point | [`ring::ring_shift_start`], [`ring::bidir_ring_step`] (two channels) | sends and receives posted on the fabric and moved by its progress engine (the runtime's engine thread; the simulated fabric buffers at once) | compute, then wait the [`ring::Shift`] handles |
//! | driver with callbacks | [`ring::ring_pass`] / [`ring::ring_pass_elems`] (ring attention), [`token_ring::token_ring`] / [`token_ring::token_ring_elems`] (two channels), [`scan::all_scan_diag_blocks`] (All-Scan) | the driver on the caller's thread posts the transfer of block `k+1` (and, for TokenRing, the return of the previous partial result), **then** calls the caller's compute for block `k`, then waits | compute on block `k` inside the callback; the callback must not use the driver's channels |
//!
//! Deadlines: every wait is bounded by the fabric's per-operation deadline
//! ([`sim::SimConfig::op_timeout`], or the communicator's `ZCCL_TIMEOUT`),
//! and reports [`Error::Timeout`] / [`Error::Transport`] naming the peer.
//! Errors of a non-blocking operation (including argument errors) are
//! reported by its `wait()`.
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
pub mod channels;
pub mod collectives;
pub mod comm;
pub mod dtype;
mod error;
pub mod fabric;
pub mod layout;
pub mod nonblocking;
pub mod progress;
pub mod reduce;
pub mod ring;
pub mod scan;
pub mod schedule;
pub mod sim;
pub mod token_ring;

pub use error::{Dir, Error, Result};
pub use fabric::{Fabric, RecvHandle, RecvIntoHandle, SendHandle};
pub use nonblocking::OpHandle;

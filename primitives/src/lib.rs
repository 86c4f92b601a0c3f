//! zccl primitives: the collectives and the sequence-parallel patterns (ring
//! shift, TokenRing, all-to-all(-v), All-Scan) built on the communicator.
//!
//! **Not implemented yet.** It holds no code today.

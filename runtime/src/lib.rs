//! zccl runtime: bootstrap, the communicator, the per-rank progress engine and
//! the NIC-aware router.
//!
//! **Not implemented yet.** The communicator core (bootstrap from torchrun, Slurm
//! and MPI variables; non-blocking P2P with deadlines) and the router land here.
//! It holds no code today.

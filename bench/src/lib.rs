//! zccl-bench: nccl-tests-style bandwidth benchmarks.
//!
//! **Not implemented yet.** It holds no code today; `zccl topo` is the only
//! command that works so far.

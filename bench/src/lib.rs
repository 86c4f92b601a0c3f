//! zccl-bench: benchmarks of zccl.
//!
//! Today it holds the point-to-point benchmark (`cargo bench -p zccl-bench
//! --bench p2p`). The nccl-tests-style `zccl-bench` command (a subcommand per
//! operation, nccl-tests' flags and columns) is **not implemented yet**.

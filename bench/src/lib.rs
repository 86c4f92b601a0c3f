//! zccl-bench: benchmarks of zccl.
//!
//! * The `zccl-bench` command (also `zccl bench`): nccl-tests for zccl. A
//!   subcommand per operation (all_reduce, all_gather, reduce_scatter,
//!   broadcast, alltoall, sendrecv, ring_shift, pingpong, token_ring, all_scan),
//!   nccl-tests' flags (`-b -e -f -i -n -w -c -d -o -r -z`), `-N n` to start
//!   n local ranks, nccl-tests' table (out-of-place and in-place time,
//!   algbw, busbw, #wrong) and footer, `--json`, `--csv`, `--plot`.
//!   See docs/bench.md.
//! * `zccl-bench route` (also `zccl bench route`): the NIC-aware router,
//!   static affinity against routed, on a network-namespace testbed
//!   ([`route`]; needs root).
//! * The point-to-point benchmark: `cargo bench -p zccl-bench --bench p2p`.
//!
//! Modules, one idea each; all but [`runner`]'s I/O, [`launch`] and [`cli`]
//! are pure:
//!
//! * [`args`]: the command line and its validation into [`args::Settings`];
//! * [`sweep`]: sizes (`1K`, `64M`: powers of 1024) and the `-f`/`-i` sweep;
//! * [`ops`]: per op, the buffer counts, the `size`/`count` columns and `S`;
//! * [`check`]: the data of `-c` and the expected results (exact, also for
//!   `half` and `bfloat16`);
//! * [`report`]: rows, algbw/busbw (from `zccl_primitives::busbw`) and the
//!   table text;
//! * [`output`], [`plot`]: `--json`/`--csv` and `--plot` (SVG);
//! * [`count`]: the bench's own count of the bytes it sends (a `Fabric`
//!   adapter), for the footer's `# Bytes sent by all ranks` and `bytes_sent`;
//! * [`runner`]: the measurement loop over any `Fabric`;
//! * [`launch`]: joining a job or starting `-N` ranks;
//! * [`hold`]: `--hold SECS`, keeping the ranks (and their `/metrics`
//!   endpoints) alive after the sweep;
//! * [`cli`]: the entry point of both commands;
//! * [`route`]: `route`, the router benchmark (its own submodules).

#![warn(missing_docs)]

pub mod args;
pub mod buffer;
pub mod check;
pub mod cli;
pub mod count;
pub mod hold;
pub mod launch;
pub mod ops;
pub mod output;
pub mod plot;
pub mod report;
pub mod route;
pub mod runner;
pub mod sweep;

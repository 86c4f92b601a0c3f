//! zccl runtime: bootstrap, the communicator and its per-rank progress engine.
//!
//! * [`unique_id`] — [`UniqueId`]: root address + random job secret, passed by the application.
//! * [`bootstrap`] — [`BootstrapRoot`] and the address-book rendezvous.
//! * [`launcher_env`] — rank/world/root from torchrun, Slurm, Open MPI and `ZCCL_*`.
//! * [`config`] — [`Config`] from `ZCCL_*` variables (timeouts, NICs, sockets).
//! * [`communicator`] — [`Communicator`], [`Channel`], [`Op`]: non-blocking
//!   `isend`/`irecv`/`batch`, blocking wrappers, `abort()`, and `split()`
//!   (`MPI_Comm_split`; the new communicator is a view over the same
//!   connections, its traffic kept apart by a context id).
//!   Ranks of one host (same boot id and network namespace) exchange their
//!   messages through shared-memory rings, the others over TCP; TCP keeps
//!   detecting dead peers for both (`ZCCL_SHM_DISABLE=1` forces TCP).
//! * [`handle`] — [`SendHandle`], [`RecvHandle`], [`BatchHandle`]: `test()`,
//!   `wait()`, `wait_async()`.
//! * [`buffer`] — typed host buffers (`u8, i32, i64, f16, bf16, f32, f64`).
//! * [`error`] — [`Error`], whose messages name the rank, op, sequence number and NIC.
//! * [`logging`] — `ZCCL_DEBUG`, `ZCCL_DEBUG_SUBSYS`, `ZCCL_DEBUG_FILE`, shaped
//!   like NCCL's.
//! * [`launcher`] — the single-host launcher behind `zccl run -n N`
//!   (see `docs/launching.md` for Slurm, `mpirun` and `torchrun`);
//!   [`binding`] — where the launchers bind ranks (`--bind-to`).
//! * [`router`] — the NIC-aware router: the planner (pure), and the executor
//!   the progress engine drives (proxies, reassembly, adaptation).
//!
//! Each `init` runs one progress engine (a task on its own tokio
//! runtime) that owns the transport; user calls only enqueue work and wait on
//! handles.
//!
//! Collectives and the sequence-parallel primitives live in `zccl-primitives`,
//! which runs over a [`Communicator`].
//!
//! **Not built yet:** device memory (host buffers only; no GPU or RDMA
//! code yet).
//!
//! ```no_run
//! use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
//! // In one process (e.g. rank 0), start the root and hand its id to every rank:
//! let root = BootstrapRoot::start("0.0.0.0:0".parse().unwrap(), UniqueId::random_secret()?,
//!                                 std::time::Duration::from_secs(300))?;
//! let id = root.unique_id();
//! // On each rank:
//! let comm = Communicator::init(&id, 0, 2, Config::from_env()?)?;
//! let h = comm.isend(1, vec![1.0f32, 2.0])?;
//! let x = comm.irecv::<f32>(1, 2)?.wait()?;
//! h.wait()?;
//! # Ok::<(), zccl_runtime::Error>(())
//! ```

#![warn(missing_docs)]

pub mod binding;
pub mod bootstrap;
pub mod buffer;
pub mod communicator;
mod completion;
pub mod config;
mod engine;
mod envvars;
pub mod error;
pub mod flow;
pub mod handle;
mod ids;
pub mod label;
pub mod land;
pub mod launcher;
pub mod launcher_env;
pub mod lend;
pub mod logging;
pub mod malloc;
pub mod metrics;
mod protocol;
pub mod reaper;
pub mod router;
pub mod unique_id;
mod zone;

pub use bootstrap::BootstrapRoot;
pub use buffer::{DType, Element, HostBuffer, MemoryKind, Received, bf16, f16};
pub use communicator::{Channel, Communicator, Op};
pub use config::Config;
pub use error::{Error, OpDesc, OpKind, Result};
pub use handle::{BatchHandle, RecvHandle, SendHandle};
pub use land::RecvIntoHandle;
pub use lend::LentSendHandle;
pub use unique_id::UniqueId;

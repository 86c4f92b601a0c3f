//! What the communicators of one `init` share ([`Core`]: the progress
//! engine, its runtime and connections) and what makes one of them
//! ([`Inner`]: a view of the core's world, with its ops' numbering).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use zccl_transports::Transport;
use zccl_transports::ifname::Interface;
use zccl_transports::tcp::Endpoint;

use super::numbering::IssueState;
use crate::bootstrap::BootstrapRoot;
use crate::config::Config;
use crate::engine::{Cmd, EngineRef};

/// What every communicator of one `init` shares: the progress engine, its
/// runtime and connections.
pub(super) struct Core {
    pub(super) world_rank: u32,
    pub(super) config: Config,
    pub(super) cmd_tx: mpsc::UnboundedSender<Cmd>,
    /// The progress engine's state; user threads issue ops under its lock.
    pub(super) engine: EngineRef,
    /// The engine's transport (waiting threads poll it).
    pub(super) transport: Arc<dyn Transport>,
    pub(super) runtime: Mutex<Option<tokio::runtime::Runtime>>,
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) nics: Vec<Interface>,
    /// Host identity of every world rank.
    pub(super) host_ids: Vec<String>,
    /// Whether each world rank is reached over shared memory.
    pub(super) via_shm: Vec<bool>,
    /// How a waiting thread spins: the engine, the transport it polls, for
    /// how long ([`crate::handle::tight_spin`]); one for every op's handle.
    pub(super) spin: Arc<crate::handle::Spin>,
    /// Lowest context id not used by any communicator of this rank.
    pub(super) next_comm: Mutex<u32>,
    pub(super) aborted: AtomicBool,
    /// Why the communicator stopped (aborted or closed), once it did:
    /// [`Communicator::ensure_live`](super::Communicator::ensure_live)'s answer.
    pub(super) ended: std::sync::OnceLock<String>,
    pub(super) _root: Option<BootstrapRoot>,
}

/// One communicator: a view of the core's world.
pub(super) struct Inner {
    pub(super) core: Arc<Core>,
    pub(super) comm: u32,
    pub(super) rank: u32,
    pub(super) size: u32,
    /// World rank of each rank of this communicator.
    pub(super) members: Vec<u32>,
    pub(super) local_rank: u32,
    pub(super) local_size: u32,
    pub(super) issue: Mutex<IssueState>,
    pub(super) service_issue: Mutex<IssueState>,
}

impl Core {
    /// Hands the engine's task the command `make` builds around a `done`
    /// sender and waits up to `wait` for it to be carried out (nothing to
    /// wait for when the task is gone).
    pub(super) fn request(
        &self,
        make: impl FnOnce(std::sync::mpsc::Sender<()>) -> Cmd,
        wait: Duration,
    ) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if self.cmd_tx.send(make(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(wait);
        }
    }

    /// Closes the connections in order (pending ops fail), bounded by a few
    /// seconds: on drop and on [`Communicator::close`](super::Communicator::close).
    pub(super) fn shut_down(&self) {
        self.request(|done| Cmd::Shutdown { done }, Duration::from_secs(3));
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.shut_down();
        if let Some(rt) = self.runtime.lock().expect("runtime").take() {
            rt.shutdown_background();
        }
    }
}

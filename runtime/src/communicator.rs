//! [`Communicator`]: a rank's membership in a job, its channels and its
//! non-blocking point-to-point operations.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::info;
use zccl_transports::Transport;
use zccl_transports::ifname::{Interface, list_interfaces, select};
use zccl_transports::tcp::{Endpoint, TcpListeners, TcpSetup, TcpTransport};

use crate::bootstrap::{self, BootstrapLimits, BootstrapRoot, PeerInfo};
use crate::buffer::{DType, Element, HostBuffer};
use crate::config::Config;
use crate::engine::{Cmd, Engine, OpSpec};
use crate::error::{Error, OpDesc, OpKind, Result};
use crate::handle::{BatchHandle, Pending, RecvHandle, SendHandle, Slot};
use crate::launcher_env::{self, RootSpec};
use crate::unique_id::UniqueId;

/// One operation of a [`Channel::batch`].
#[derive(Debug, Clone)]
pub enum Op {
    /// Send `data` (of `dtype`) to `peer`.
    Send {
        /// Destination rank.
        peer: u32,
        /// Element type.
        dtype: DType,
        /// The bytes.
        data: Bytes,
    },
    /// Receive `count` elements of `dtype` from `peer`.
    Recv {
        /// Source rank.
        peer: u32,
        /// Element type.
        dtype: DType,
        /// Number of elements.
        count: usize,
    },
}

impl Op {
    /// A send of a typed buffer (an owned `Vec`/`HostBuffer` is not copied).
    pub fn send<T: Element>(peer: u32, data: impl Into<HostBuffer<T>>) -> Self {
        Self::Send {
            peer,
            dtype: T::DTYPE,
            data: data.into().into_bytes(),
        }
    }

    /// A receive of `count` elements of `T`.
    pub fn recv<T: Element>(peer: u32, count: usize) -> Self {
        Self::Recv {
            peer,
            dtype: T::DTYPE,
            count,
        }
    }
}

#[derive(Default)]
struct IssueState {
    send_seq: HashMap<(u32, u32), u64>,
    recv_seq: HashMap<(u32, u32), u64>,
    op_index: HashMap<u32, u64>,
}

struct Inner {
    rank: u32,
    size: u32,
    local_rank: u32,
    local_size: u32,
    config: Config,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    issue: Mutex<IssueState>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    endpoints: Vec<Endpoint>,
    nics: Vec<Interface>,
    aborted: AtomicBool,
    _root: Option<BootstrapRoot>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if self.cmd_tx.send(Cmd::Shutdown { done: done_tx }).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_secs(3));
        }
        if let Some(rt) = self.runtime.lock().expect("runtime").take() {
            rt.shutdown_background();
        }
    }
}

/// A rank's communicator.
///
/// Create one per rank with [`Communicator::init`] (a [`UniqueId`] handed out
/// by the application) or [`Communicator::from_env`] (torchrun, Slurm, Open
/// MPI or `ZCCL_*` variables). Point-to-point ops are issued on
/// [`Channel`]s; the methods on `Communicator` itself use channel 0.
///
/// Cloning is cheap and clones share the communicator; it is `Send + Sync`, so
/// [`Communicator::abort`] can be called from a watchdog thread. Dropping the
/// last clone closes the connections in order (bounded by a few seconds).
///
/// ```no_run
/// use zccl_runtime::{Communicator, Op};
/// let comm = Communicator::from_env()?;
/// let (r, n) = (comm.rank(), comm.size());
/// // Ring shift: send to the right, receive from the left, in any order.
/// let out = comm.batch(vec![Op::recv::<f32>((r + n - 1) % n, 4), Op::send((r + 1) % n, vec![r as f32; 4])])?.wait()?;
/// let left: Vec<f32> = out[0].as_ref().unwrap().to_buffer().unwrap().into_vec();
/// # Ok::<(), zccl_runtime::Error>(())
/// ```
#[derive(Clone)]
pub struct Communicator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("rank", &self.inner.rank)
            .field("size", &self.inner.size)
            .finish()
    }
}

/// Launcher hints that refine what the address book says.
#[derive(Debug, Clone, Copy, Default)]
struct LocalHints {
    local_rank: Option<u32>,
    local_size: Option<u32>,
}

impl Communicator {
    /// Joins the job identified by `id` as `rank` of `size`. Blocks until
    /// every rank joined and all connections are up, or `config.timeout`.
    ///
    /// Must not be called from inside an async task (use `spawn_blocking`).
    pub fn init(id: &UniqueId, rank: u32, size: u32, config: Config) -> Result<Self> {
        Self::init_inner(id, rank, size, config, LocalHints::default(), None)
    }

    /// Joins using the launcher's environment variables and `ZCCL_*`
    /// settings (see [`crate::launcher_env`] and [`crate::config`]). Rank 0
    /// hosts the bootstrap root unless `ZCCL_UNIQUE_ID` is set.
    pub fn from_env() -> Result<Self> {
        let config = Config::from_env()?;
        let env = launcher_env::detect(&|k| std::env::var(k).ok())?;
        if env.secret_is_derived {
            info!("job secret derived from launcher job id (set ZCCL_JOB_SECRET for a random one)");
        }
        let (id, root) = match &env.root {
            RootSpec::UniqueId(id) => (*id, None),
            RootSpec::HostPort(host, port) => {
                let addr: SocketAddr = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| Error::Env(format!("cannot resolve root {host}:{port}: {e}")))?
                    .next()
                    .ok_or_else(|| Error::Env(format!("root {host} has no address")))?;
                let root = if env.hosts_root() {
                    let bound =
                        BootstrapRoot::start(addr, env.secret, config.timeout).or_else(|_| {
                            let any: SocketAddr = if addr.is_ipv4() {
                                ([0, 0, 0, 0], *port).into()
                            } else {
                                (std::net::Ipv6Addr::UNSPECIFIED, *port).into()
                            };
                            BootstrapRoot::start(any, env.secret, config.timeout)
                        })?;
                    Some(bound)
                } else {
                    None
                };
                (UniqueId::new(addr, env.secret), root)
            }
        };
        let hints = LocalHints {
            local_rank: env.local_rank,
            local_size: env.local_world_size,
        };
        Self::init_inner(&id, env.rank, env.world_size, config, hints, root)
    }

    fn init_inner(
        id: &UniqueId,
        rank: u32,
        size: u32,
        config: Config,
        hints: LocalHints,
        root: Option<BootstrapRoot>,
    ) -> Result<Self> {
        if size == 0 || rank >= size {
            return Err(Error::InvalidArgument(format!(
                "rank {rank} is not in a world of {size}"
            )));
        }
        let deadline = Instant::now() + config.timeout;
        let available = list_interfaces().map_err(zccl_transports::TransportError::from)?;
        let nics = select(config.socket_ifname.as_deref(), &available)
            .map_err(zccl_transports::TransportError::from)?;
        let listeners = TcpListeners::bind(&nics, &config.tcp)?;
        let endpoints = listeners.endpoints();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.engine_threads)
            .thread_name(format!("zccl-r{rank}"))
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the progress engine: {e}")))?;
        let me = PeerInfo {
            rank,
            host_id: bootstrap::host_id(),
            pid: std::process::id(),
            endpoints: endpoints.clone(),
        };
        let limits = BootstrapLimits {
            timeout: config.timeout,
            handshake_timeout: config.tcp.handshake_timeout,
            frames: zccl_transports::frame::FrameLimits {
                max_frame: 16 << 20,
                max_message: 16 << 20,
            },
        };
        let book = runtime.block_on(bootstrap::exchange(id, me, size, &limits, deadline))?;
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let setup = TcpSetup {
            rank,
            world_size: size,
            secret: id.secret(),
            peers: book.peers.iter().map(|p| p.endpoints.clone()).collect(),
            config: config.tcp.clone(),
            setup_timeout: deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100)),
        };
        let transport = runtime.block_on(TcpTransport::establish(listeners, setup, ev_tx))?;
        let transport: Arc<dyn Transport> = Arc::new(transport);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        runtime.spawn(Engine::new(rank, transport).run(cmd_rx, ev_rx));
        let (book_local, book_size) = book.local_rank(rank);
        info!(rank, size, nics = ?nics.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), "communicator ready");
        Ok(Self {
            inner: Arc::new(Inner {
                rank,
                size,
                local_rank: hints.local_rank.unwrap_or(book_local),
                local_size: hints.local_size.unwrap_or(book_size),
                config,
                cmd_tx,
                issue: Mutex::new(IssueState::default()),
                runtime: Mutex::new(Some(runtime)),
                endpoints,
                nics,
                aborted: AtomicBool::new(false),
                _root: root,
            }),
        })
    }

    /// This rank.
    pub fn rank(&self) -> u32 {
        self.inner.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> u32 {
        self.inner.size
    }

    /// Rank among the ranks of this host.
    pub fn local_rank(&self) -> u32 {
        self.inner.local_rank
    }

    /// Number of ranks on this host.
    pub fn local_size(&self) -> u32 {
        self.inner.local_size
    }

    /// The NICs this rank uses.
    pub fn nics(&self) -> &[Interface] {
        &self.inner.nics
    }

    /// This rank's listening endpoints (one per NIC).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.inner.endpoints
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Channel `id`. Ops on one channel complete in issue order; channels
    /// progress independently. Its ops use the configured timeout; see
    /// [`Channel::with_timeout`].
    pub fn channel(&self, id: u32) -> Channel {
        Channel {
            inner: self.inner.clone(),
            id,
            timeout: self.inner.config.timeout,
        }
    }

    /// [`Channel::isend`] on channel 0.
    pub fn isend<T: Element>(
        &self,
        peer: u32,
        data: impl Into<HostBuffer<T>>,
    ) -> Result<SendHandle> {
        self.channel(0).isend(peer, data)
    }

    /// [`Channel::irecv`] on channel 0.
    pub fn irecv<T: Element>(&self, peer: u32, count: usize) -> Result<RecvHandle<T>> {
        self.channel(0).irecv(peer, count)
    }

    /// [`Channel::batch`] on channel 0.
    pub fn batch(&self, ops: Vec<Op>) -> Result<BatchHandle> {
        self.channel(0).batch(ops)
    }

    /// [`Channel::send`] on channel 0.
    pub fn send<T: Element>(&self, peer: u32, data: impl Into<HostBuffer<T>>) -> Result<()> {
        self.channel(0).send(peer, data)
    }

    /// [`Channel::recv`] on channel 0.
    pub fn recv<T: Element>(&self, peer: u32, count: usize) -> Result<HostBuffer<T>> {
        self.channel(0).recv(peer, count)
    }

    /// Aborts the communicator: every pending and future op fails, the
    /// connections are closed and peers learn that this rank aborted.
    /// Callable from any thread, idempotent, returns within about a second.
    pub fn abort(&self) {
        if self.inner.aborted.swap(true, Ordering::AcqRel) {
            return;
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let cmd = Cmd::Abort {
            reason: "abort() called".into(),
            done: done_tx,
        };
        if self.inner.cmd_tx.send(cmd).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_secs(1));
        }
    }
}

/// A channel of a communicator: an independent, ordered stream of ops.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
    id: u32,
    timeout: Duration,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Channel {
    /// The channel id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The same channel, with ops issued through it failing after `timeout`
    /// instead of the configured `ZCCL_TIMEOUT` (the per-call override).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn check_peer(&self, peer: u32) -> Result<()> {
        if peer >= self.inner.size {
            return Err(Error::InvalidArgument(format!(
                "peer rank {peer} is not in a world of {}",
                self.inner.size
            )));
        }
        Ok(())
    }

    fn issue(&self, ops: Vec<Op>) -> Result<Vec<Pending>> {
        let max = self.inner.config.tcp.limits.max_message;
        for op in &ops {
            let (peer, bytes) = match op {
                Op::Send { peer, data, .. } => (*peer, Some(data.len() as u64)),
                Op::Recv { peer, dtype, count } => {
                    (*peer, (*count as u64).checked_mul(dtype.size() as u64))
                }
            };
            self.check_peer(peer)?;
            match bytes {
                Some(b) if b <= max => {}
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "message to/from rank {peer} exceeds ZCCL_MAX_MESSAGE_BYTES ({max})"
                    )));
                }
            }
        }
        let now = Instant::now();
        let deadline = now + self.timeout;
        let mut st = self.inner.issue.lock().expect("issue state");
        let mut specs = Vec::with_capacity(ops.len());
        let mut pendings = Vec::with_capacity(ops.len());
        for op in ops {
            let (kind, peer, dtype, bytes, payload) = match op {
                Op::Send { peer, dtype, data } => {
                    (OpKind::Send, peer, dtype, data.len() as u64, Some(data))
                }
                Op::Recv { peer, dtype, count } => (
                    OpKind::Recv,
                    peer,
                    dtype,
                    (count * dtype.size()) as u64,
                    None,
                ),
            };
            let counters = if kind == OpKind::Send {
                &mut st.send_seq
            } else {
                &mut st.recv_seq
            };
            let seq_ref = counters.entry((self.id, peer)).or_insert(0);
            let seq = *seq_ref;
            *seq_ref += 1;
            let index_ref = st.op_index.entry(self.id).or_insert(0);
            let index = *index_ref;
            *index_ref += 1;
            let desc = OpDesc {
                rank: self.inner.rank,
                kind,
                peer,
                channel: self.id,
                seq,
                bytes,
                dtype,
            };
            let slot = Arc::new(Slot::default());
            pendings.push(Pending {
                slot: slot.clone(),
                desc: desc.clone(),
                deadline,
                timeout: self.timeout,
            });
            specs.push(OpSpec {
                desc,
                payload,
                deadline,
                timeout: self.timeout,
                slot,
                index,
            });
        }
        if let Err(mpsc::error::SendError(Cmd::Issue(specs))) =
            self.inner.cmd_tx.send(Cmd::Issue(specs))
        {
            for s in specs {
                s.slot.complete(Err(Error::Aborted {
                    op: Some(s.desc),
                    reason: "progress engine stopped".into(),
                }));
            }
        }
        drop(st);
        Ok(pendings)
    }

    /// Starts sending `data` to `peer`. The send is eager: it never waits for
    /// the receiver to post; the handle completes when the receiver matched it.
    ///
    /// An owned `Vec<T>` or [`HostBuffer<T>`] is sent without a copy; a slice is copied once.
    pub fn isend<T: Element>(
        &self,
        peer: u32,
        data: impl Into<HostBuffer<T>>,
    ) -> Result<SendHandle> {
        let mut p = self.issue(vec![Op::send(peer, data)])?;
        Ok(SendHandle {
            p: p.pop().expect("one op"),
        })
    }

    /// Starts receiving `count` elements of `T` from `peer`. A send of another
    /// size or type fails both the receive and the send.
    pub fn irecv<T: Element>(&self, peer: u32, count: usize) -> Result<RecvHandle<T>> {
        let mut p = self.issue(vec![Op::recv::<T>(peer, count)])?;
        Ok(RecvHandle {
            p: p.pop().expect("one op"),
            _t: PhantomData,
        })
    }

    /// Issues several ops at once. Whatever the order of the ops on each rank,
    /// the batch cannot deadlock (sends are eager). Ops to the same peer on
    /// the same channel are matched in the order they appear.
    pub fn batch(&self, ops: Vec<Op>) -> Result<BatchHandle> {
        Ok(BatchHandle {
            ops: self.issue(ops)?,
        })
    }

    /// Blocking send: returns once the receiver matched it (like `MPI_Ssend`;
    /// two ranks that both send first to each other must use [`Channel::batch`]).
    pub fn send<T: Element>(&self, peer: u32, data: impl Into<HostBuffer<T>>) -> Result<()> {
        self.isend(peer, data)?.wait()
    }

    /// Blocking receive.
    pub fn recv<T: Element>(&self, peer: u32, count: usize) -> Result<HostBuffer<T>> {
        self.irecv(peer, count)?.wait()
    }
}

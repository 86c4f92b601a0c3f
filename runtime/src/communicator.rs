//! [`Communicator`]: a rank's membership in a job, its channels, its
//! non-blocking point-to-point operations and [`Communicator::split`].
//!
//! **Transports.** At init every rank publishes its host identity (boot id +
//! network namespace) and, unless `ZCCL_SHM_DISABLE=1`, a shared-memory tag.
//! Peers on the same host whose both sides enabled it exchange all messages
//! through shared-memory rings; the others use TCP. TCP connections to every
//! peer are kept in both cases and carry heartbeats and goodbyes, so a dead,
//! stopped or aborting peer is detected the same way whatever carries its
//! data (see [`zccl_transports::hybrid`]). The choice is logged once per peer
//! (target `zccl::transport`, field `transport = "SHM"` or `"TCP"`).
//!
//! **Split.** [`Communicator::split`] builds a *view*: the new communicator
//! shares the parent's progress engine and connections and maps its ranks
//! onto world ranks; a context id carried in every message (the `comm` field
//! of the frame header and of the shared-memory record) keeps its traffic
//! apart from the parent's and the siblings'. Creating one costs one
//! all-to-all exchange of 16 bytes over the parent and no new connection.

use rustc_hash::FxHashMap as HashMap;
use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{info, warn};
use zccl_transports::Transport;
use zccl_transports::hybrid::HybridTransport;
use zccl_transports::ifname::{Interface, list_interfaces, select};
use zccl_transports::shm::{ShmSetup, ShmTransport, job_tag};
use zccl_transports::tcp::{Endpoint, TcpListeners, TcpSetup, TcpTransport};

use crate::bootstrap::{self, BootstrapLimits, BootstrapRoot, PeerInfo};
use crate::buffer::{DType, Element, HostBuffer};
use crate::completion::Slot;
use crate::config::Config;
use crate::engine::{self, Cmd, Engine, EngineRef, OpSpec};
use crate::error::{Error, OpDesc, OpKind, Result};
use crate::handle::{BatchHandle, Pending, RecvHandle, SendHandle};
use crate::ids::SERVICE_COMM_BIT;
use crate::label::OpLabel;
use crate::launcher_env::{self, RootSpec};
use crate::lend::LentSendHandle;
use crate::unique_id::UniqueId;
use smallvec::{SmallVec, smallvec};

/// The metrics' series of sends or receives, looked up once per process.
fn op_series(kind: OpKind) -> &'static zccl_transports::metrics::OpSeries {
    use std::sync::OnceLock;
    use zccl_transports::metrics::OpSeries;
    static SEND: OnceLock<OpSeries> = OnceLock::new();
    static RECV: OnceLock<OpSeries> = OnceLock::new();
    let metrics = crate::metrics::Metrics::global();
    match kind {
        OpKind::Send => SEND.get_or_init(|| metrics.op("send")),
        OpKind::Recv => RECV.get_or_init(|| metrics.op("recv")),
    }
}

/// What a plain receive (one that names no buffer) of a same-host peer's
/// message posts with the transport's landing zones ([`plain_post`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlainPost {
    /// A buffer of the runtime's own, as the message's landing zone
    /// ([`crate::zone::Scratch`]).
    Scratch,
    /// A [mark](zccl_transports::landing::Landing::mark): the message takes
    /// a buffer of the transport's when it comes ([`crate::zone::Mark`]).
    Mark,
}

/// Plain receives from this size up post a buffer of their own
/// ([`PlainPost::Scratch`]): a large message's CMA copy lands in it.
const SCRATCH_MIN_BYTES: usize = 4 << 20;

/// What a plain receive of `bytes` from a same-host peer posts under
/// `shm`, so that the transport knows it is posted: the shared-memory
/// transport leaves a CMA message whose receive is not posted yet where it
/// is a little (polls up to any size they take, the reader thread above
/// [`POLL_MAX_CMA_BYTES`](zccl_transports::shm::POLL_MAX_CMA_BYTES)), for
/// its bytes to go once, straight into the receive's buffer; a posted
/// receive it never waits for.
///
/// * From the smallest CMA size in effect up to `POLL_MAX_CMA_BYTES`, and
///   from [`SCRATCH_MIN_BYTES`]: a buffer of its own.
/// * In between: a mark. A ring pipeline posts all its receives at once,
///   in pieces of 2 MiB: buffers for all of them up front would not be
///   reused (2 ranks, 64 MiB in place: 1.2x slower).
/// * Smaller, below the CMA sizes: nothing. Pure.
fn plain_post(shm: &zccl_transports::shm::ShmConfig, bytes: u64) -> Option<PlainPost> {
    use zccl_transports::shm::POLL_MAX_CMA_BYTES;
    let cma_min = [shm.cma_min_bytes, shm.crowded_cma_min_bytes]
        .into_iter()
        .filter(|&b| b > 0)
        .min();
    let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    if bytes >= SCRATCH_MIN_BYTES
        || cma_min.is_some_and(|m| (m..=POLL_MAX_CMA_BYTES).contains(&bytes))
    {
        Some(PlainPost::Scratch)
    } else if bytes > POLL_MAX_CMA_BYTES {
        Some(PlainPost::Mark)
    } else {
        None
    }
}

/// The ops of one issue: most calls issue one (no allocation for it).
type Ops = SmallVec<[Op; 1]>;
/// Their handles' side, in the same order.
type Pendings = SmallVec<[Pending; 1]>;

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

/// The numbering of the ops issued on each channel of a communicator.
#[derive(Default)]
struct IssueState {
    channels: HashMap<u32, ChannelSeqs>,
}

/// One channel's numbering: the next op's position among all its ops, and
/// the next send and receive sequence number with each peer it used (one
/// map lookup per op, for the channel).
#[derive(Default)]
struct ChannelSeqs {
    index: u64,
    send: PeerSeqs,
    recv: PeerSeqs,
}

/// The next sequence number with each peer a channel used: a short list
/// (most channels talk to one or two peers: a ring's neighbours), a map
/// once it holds more than [`PeerSeqs::FEW`] (an all-to-all's channel).
/// Memory follows the peers used, not the communicator's size (Python
/// gives every tag a channel of its own).
enum PeerSeqs {
    Few(SmallVec<[(u32, u64); 4]>),
    Many(HashMap<u32, u64>),
}

impl Default for PeerSeqs {
    fn default() -> Self {
        PeerSeqs::Few(SmallVec::new())
    }
}

impl PeerSeqs {
    const FEW: usize = 8;

    /// `peer`'s next sequence number, counted as taken.
    fn take(&mut self, peer: u32) -> u64 {
        match self {
            PeerSeqs::Few(v) => {
                if let Some((_, s)) = v.iter_mut().find(|(p, _)| *p == peer) {
                    *s += 1;
                    return *s - 1;
                }
                if v.len() < Self::FEW {
                    v.push((peer, 1));
                    return 0;
                }
                let mut m: HashMap<u32, u64> = v.drain(..).collect();
                m.insert(peer, 1);
                *self = PeerSeqs::Many(m);
                0
            }
            PeerSeqs::Many(m) => {
                let s = m.entry(peer).or_insert(0);
                *s += 1;
                *s - 1
            }
        }
    }
}

/// What every communicator of one `init` shares: the progress engine, its
/// runtime and connections.
struct Core {
    world_rank: u32,
    config: Config,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    /// The progress engine's state; user threads issue ops under its lock.
    engine: EngineRef,
    /// The engine's transport (waiting threads poll it).
    transport: Arc<dyn Transport>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    endpoints: Vec<Endpoint>,
    nics: Vec<Interface>,
    /// Host identity of every world rank.
    host_ids: Vec<String>,
    /// Whether each world rank is reached over shared memory.
    via_shm: Vec<bool>,
    /// How a waiting thread spins: the engine, the transport it polls, for
    /// how long ([`crate::handle::tight_spin`]); one for every op's handle.
    spin: Arc<crate::handle::Spin>,
    /// Lowest context id not used by any communicator of this rank.
    next_comm: Mutex<u32>,
    aborted: AtomicBool,
    /// Why the communicator stopped (aborted or closed), once it did:
    /// [`Communicator::ensure_live`]'s answer.
    ended: std::sync::OnceLock<String>,
    _root: Option<BootstrapRoot>,
}

/// One communicator: a view of the core's world.
struct Inner {
    core: Arc<Core>,
    comm: u32,
    rank: u32,
    size: u32,
    /// World rank of each rank of this communicator.
    members: Vec<u32>,
    local_rank: u32,
    local_size: u32,
    issue: Mutex<IssueState>,
    service_issue: Mutex<IssueState>,
}

impl Core {
    /// Hands the engine's task the command `make` builds around a `done`
    /// sender and waits up to `wait` for it to be carried out (nothing to
    /// wait for when the task is gone).
    fn request(&self, make: impl FnOnce(std::sync::mpsc::Sender<()>) -> Cmd, wait: Duration) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if self.cmd_tx.send(make(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(wait);
        }
    }

    /// Closes the connections in order (pending ops fail), bounded by a few
    /// seconds: on drop and on [`Communicator::close`].
    fn shut_down(&self) {
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

/// The bootstrap root an initialising rank hosts, joined if init fails
/// after the address book came back: the root has then only the book's
/// sends left to finish (each bounded by the handshake timeout).
struct JoinOnError(Option<BootstrapRoot>);

impl Drop for JoinOnError {
    fn drop(&mut self) {
        if let Some(root) = self.0.take() {
            let _ = root.join();
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
/// last clone of the last communicator of an `init` (including those made by
/// [`Communicator::split`]) closes the connections in order (bounded by a
/// few seconds).
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
            .field("comm", &self.inner.comm)
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
        crate::logging::init_from_env()?;
        Self::init_inner(id, rank, size, config, LocalHints::default(), None)
    }

    /// Joins using the launcher's environment variables and `ZCCL_*`
    /// settings (see [`crate::launcher_env`] and [`crate::config`]). Rank 0
    /// hosts the bootstrap root unless `ZCCL_UNIQUE_ID` is set.
    pub fn from_env() -> Result<Self> {
        crate::logging::init_from_env()?;
        let config = Config::from_env()?;
        let env = launcher_env::detect_from_env()?;
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
        config.validate()?;
        if config.malloc_tune {
            crate::malloc::tune_once();
        }
        let deadline = Instant::now() + config.timeout;
        let available = list_interfaces().map_err(zccl_transports::TransportError::from)?;
        let nics = select(config.socket_ifname.as_deref(), &available)
            .map_err(zccl_transports::TransportError::from)?;
        crate::logging::set_rank(rank);
        crate::logging::log_interfaces(rank, &nics);
        let listeners = TcpListeners::bind(&nics, &config.tcp)?;
        let endpoints = listeners.endpoints();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.engine_threads)
            .thread_name(format!("zccl-r{rank}"))
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the progress engine: {e}")))?;
        let shm_tag = if config.shm_enabled {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b)
                .map_err(|e| Error::Config(format!("no randomness for the shm tag: {e}")))?;
            Some(format!("{:016x}", u64::from_le_bytes(b)))
        } else {
            None
        };
        let me = PeerInfo {
            rank,
            host_id: bootstrap::host_id(),
            pid: std::process::id(),
            endpoints: endpoints.clone(),
            shm_tag: shm_tag.clone(),
            route: crate::router::cluster::probe_local(&nics),
            agreed: agreed_settings(&config),
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
        // From here on, a failure of this rank first lets the root it hosts
        // finish handing out the address book (bounded by the handshake
        // timeout), so no other rank reads a closed connection instead of
        // learning why (a settings disagreement fails every rank at once).
        let mut root = JoinOnError(root);
        if let Some(why) = book.disagreement() {
            return Err(Error::Config(why));
        }
        let (tcp_tx, tcp_rx) = mpsc::unbounded_channel();
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
        let tcp = runtime.block_on(TcpTransport::establish(listeners, setup, tcp_tx))?;
        let tcp: Arc<dyn Transport> = Arc::new(tcp);
        // Same host (and network namespace), both sides willing: shared memory.
        let my_host = &book.peers[rank as usize].host_id;
        let via_shm: Vec<bool> = book
            .peers
            .iter()
            .map(|p| {
                p.rank != rank && shm_tag.is_some() && p.shm_tag.is_some() && &p.host_id == my_host
            })
            .collect();
        let shm_peers: Vec<u32> = (0..size).filter(|&p| via_shm[p as usize]).collect();
        let shm = if shm_peers.is_empty() {
            None
        } else {
            let (shm_tx, shm_rx) = mpsc::unbounded_channel();
            let setup = ShmSetup {
                rank,
                world_size: size,
                job: job_tag(&id.secret()),
                tags: book.peers.iter().map(|p| p.shm_tag.clone()).collect(),
                peers: shm_peers,
                config: config.shm.clone(),
                setup_timeout: deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(100)),
            };
            let shm = ShmTransport::establish(setup, shm_tx).map_err(|e| {
                Error::Bootstrap(format!(
                    "rank {rank}: shared-memory setup failed: {e} (ZCCL_SHM_DISABLE=1 uses TCP instead)"
                ))
            })?;
            Some((shm, shm_rx))
        };
        // The CPUs this host's ranks share: from every local rank's affinity
        // mask where shared memory exchanged them, else this rank's guess.
        let shared_cpus = shm
            .as_ref()
            .map_or_else(zccl_transports::shm::shared_cpus, |(s, _)| s.shared_cpus());
        let shm = shm.map(|(s, rx)| (Arc::new(s) as Arc<dyn Transport>, rx));
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let via_shm = if shm.is_some() {
            via_shm
        } else {
            vec![false; size as usize]
        };
        let transport = {
            let _guard = runtime.enter();
            HybridTransport::new(
                tcp,
                tcp_rx,
                shm,
                via_shm.clone(),
                ev_tx,
                config.tcp.peer_timeout.min(Duration::from_secs(2)),
            )
        };
        for p in (0..size).filter(|&p| p != rank) {
            let path = transport.path(p).map(|p| p.to_string()).unwrap_or_default();
            let kind = if via_shm[p as usize] { "SHM" } else { "TCP" };
            info!(target: "zccl::transport", rank, peer = p, transport = kind, %path, "rank {rank} reaches rank {p} over {kind}");
        }
        let transport: Arc<dyn Transport> = Arc::new(transport);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let router = Self::make_router(rank, &config, &book);
        let engine: EngineRef = Arc::new(Mutex::new(Engine::new(
            rank,
            size,
            transport.clone(),
            router,
            config.max_unexpected_bytes,
        )));
        transport.set_deliver(Engine::deliver_hook(&engine));
        runtime.spawn(crate::engine::run(engine.clone(), cmd_rx, ev_rx));
        let (book_local, book_size) = book.local_rank(rank);
        if let Some(base) = &config.metrics_addr {
            let local = hints.local_rank.unwrap_or(book_local);
            let addr = crate::metrics::serve_once(base, local).map_err(Error::Config)?;
            info!(target: "zccl::init", rank, %addr, "rank {rank} serves Prometheus metrics on http://{addr}/metrics");
        }
        info!(rank, size, nics = ?nics.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), "communicator ready");
        let spin_tight =
            crate::handle::tight_spin(book_size as usize, shared_cpus, config.spin_wait);
        let spin = Arc::new(crate::handle::Spin {
            engine: engine.clone(),
            transport: transport.clone(),
            budget: config.spin_wait,
            tight: spin_tight,
        });
        let core = Arc::new(Core {
            world_rank: rank,
            config,
            cmd_tx,
            engine,
            transport,
            runtime: Mutex::new(Some(runtime)),
            endpoints,
            nics,
            host_ids: book.peers.iter().map(|p| p.host_id.clone()).collect(),
            via_shm,
            spin,
            next_comm: Mutex::new(1),
            aborted: AtomicBool::new(false),
            ended: std::sync::OnceLock::new(),
            _root: root.0.take(),
        });
        Ok(Self {
            inner: Arc::new(Inner {
                core,
                comm: 0,
                rank,
                size,
                members: (0..size).collect(),
                local_rank: hints.local_rank.unwrap_or(book_local),
                local_size: hints.local_size.unwrap_or(book_size),
                issue: Mutex::new(IssueState::default()),
                service_issue: Mutex::new(IssueState::default()),
            }),
        })
    }

    /// The router of this rank, when the address book describes the hosts'
    /// NICs consistently (else routed sends are left to the transport).
    fn make_router(
        rank: u32,
        config: &Config,
        book: &bootstrap::AddressBook,
    ) -> Option<crate::router::Router> {
        let hosts: Vec<String> = book.peers.iter().map(|p| p.host_id.clone()).collect();
        let local: Vec<u32> = (0..book.peers.len() as u32)
            .map(|r| book.local_rank(r).0)
            .collect();
        let infos: Vec<_> = book.peers.iter().map(|p| p.route.clone()).collect();
        match crate::router::cluster::build(&hosts, &local, &infos) {
            Ok(rc) => {
                let c = &rc.cluster;
                let me = rank as usize;
                let nics = &c.hosts[c.rank_host[me]];
                info!(target: crate::logging::ROUTE, rank, "router {:?}: {} host(s); this host's NICs [{}]; own NIC {}",
                    config.router, rc.host_ids.len(),
                    nics.iter().map(|n| format!("{} rail {} {} Gbit/s", n.name, n.rail, n.rate_gbps)).collect::<Vec<_>>().join(", "),
                    nics[c.rank_nic[me]].name);
                Some(crate::router::Router::new(
                    rank,
                    config.router,
                    rc,
                    config.route_policy.clone(),
                    config.tcp.limits.max_message,
                ))
            }
            Err(why) => {
                if config.router != crate::router::RouterMode::Off && book.peers.len() > 1 {
                    warn!(target: crate::logging::ROUTE, rank, "router off: {why}");
                }
                None
            }
        }
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

    /// The context id of this communicator: 0 for the one made by `init`,
    /// another value, equal on all its ranks, for one made by [`Communicator::split`].
    pub fn comm_id(&self) -> u32 {
        self.inner.comm
    }

    /// The world rank (rank in the communicator made by `init`) of each rank
    /// of this communicator. Errors name world ranks.
    pub fn world_ranks(&self) -> &[u32] {
        &self.inner.members
    }

    /// Whether messages to and from `peer` (a rank of this communicator)
    /// travel over shared memory rather than TCP.
    pub fn uses_shm(&self, peer: u32) -> bool {
        self.inner
            .members
            .get(peer as usize)
            .is_some_and(|&w| self.inner.core.via_shm[w as usize])
    }

    /// The NICs this rank uses.
    pub fn nics(&self) -> &[Interface] {
        &self.inner.core.nics
    }

    /// This rank's listening endpoints (one per NIC).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.inner.core.endpoints
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.core.config
    }

    /// Channel `id`. Ops on one channel complete in issue order; channels
    /// progress independently. Its ops use the configured timeout; see
    /// [`Channel::with_timeout`].
    pub fn channel(&self, id: u32) -> Channel {
        Channel {
            inner: self.inner.clone(),
            id,
            timeout: self.inner.core.config.timeout,
            service: false,
            label: None,
            op: OpLabel::NONE,
        }
    }

    /// Splits this communicator, like `MPI_Comm_split`: ranks that pass the
    /// same `color` form a new communicator, ordered by `(key, rank in this
    /// communicator)`; a rank passing `None` (`MPI_UNDEFINED`) joins none and
    /// gets `Ok(None)`.
    ///
    /// Collective: every rank of this communicator must call it, and calls
    /// to `split` on communicators that share a rank must happen in the same
    /// order on every rank and not concurrently from several threads. It
    /// exchanges `(color, key)` with every rank through this communicator's
    /// own point-to-point ops (on an internal context, so user traffic is not
    /// disturbed) within the configured timeout.
    ///
    /// The new communicator is a view: it shares this rank's progress engine
    /// and connections (shared memory or TCP) and its traffic is kept apart by
    /// a context id, so no connection is opened. Consequently
    /// [`Communicator::abort`] on any of them aborts them all.
    ///
    /// ```no_run
    /// use zccl_runtime::Communicator;
    /// let world = Communicator::from_env()?;
    /// // Even and odd ranks, each group in world order.
    /// let half = world.split(Some(world.rank() % 2), 0)?.expect("every rank has a color");
    /// let right = (half.rank() + 1) % half.size();
    /// let left = (half.rank() + half.size() - 1) % half.size();
    /// let h = half.isend(right, vec![half.rank()  as f32])?;
    /// let got = half.recv::<f32>(left, 1)?;
    /// h.wait()?;
    /// # Ok::<(), zccl_runtime::Error>(())
    /// ```
    pub fn split(&self, color: Option<u32>, key: i32) -> Result<Option<Communicator>> {
        let inner = &self.inner;
        let core = &inner.core;
        let proposal = *core.next_comm.lock().expect("next comm");
        let mine = encode_split(color, key, proposal);
        let (r, n) = (inner.rank, inner.size);
        let service = Channel {
            inner: inner.clone(),
            id: 0,
            timeout: core.config.timeout,
            service: true,
            label: None,
            op: OpLabel::NONE,
        };
        let mut ops = Vec::new();
        let others: Vec<u32> = (0..n).filter(|&p| p != r).collect();
        for &p in &others {
            ops.push(Op::send(p, mine.to_vec()));
            ops.push(Op::recv::<u8>(p, SPLIT_LEN));
        }
        let out = service.batch(ops)?.wait()?;
        let mut all = vec![(color, key, proposal); n as usize];
        for (i, &p) in others.iter().enumerate() {
            let got = out[2 * i + 1]
                .as_ref()
                .map(|x| x.bytes().to_vec())
                .unwrap_or_default();
            all[p as usize] = decode_split(&got).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "split: malformed exchange from rank {}",
                    inner.members[p as usize]
                ))
            })?;
        }
        let id = all.iter().map(|a| a.2).max().unwrap_or(proposal);
        if id >= SERVICE_COMM_BIT {
            return Err(Error::InvalidArgument(
                "split: communicator ids exhausted".into(),
            ));
        }
        {
            let mut next = core.next_comm.lock().expect("next comm");
            *next = (*next).max(id + 1);
        }
        let Some(color) = color else {
            return Ok(None);
        };
        let mut group: Vec<(i32, u32)> = all
            .iter()
            .enumerate()
            .filter(|(_, a)| a.0 == Some(color))
            .map(|(pr, a)| (a.1, pr as u32))
            .collect();
        group.sort_unstable();
        let members: Vec<u32> = group
            .iter()
            .map(|&(_, pr)| inner.members[pr as usize])
            .collect();
        let rank = group
            .iter()
            .position(|&(_, pr)| pr == r)
            .expect("this rank is in its own group") as u32;
        let my_host = &core.host_ids[core.world_rank as usize];
        let same_host: Vec<u32> = members
            .iter()
            .copied()
            .filter(|&w| &core.host_ids[w as usize] == my_host)
            .collect();
        let local_rank = same_host
            .iter()
            .position(|&w| w == core.world_rank)
            .unwrap_or(0) as u32;
        info!(
            world_rank = core.world_rank,
            comm = id,
            color,
            rank,
            size = members.len(),
            "split: joined communicator"
        );
        Ok(Some(Communicator {
            inner: Arc::new(Inner {
                core: core.clone(),
                comm: id,
                rank,
                size: members.len() as u32,
                local_rank,
                local_size: same_host.len() as u32,
                members,
                issue: Mutex::new(IssueState::default()),
                service_issue: Mutex::new(IssueState::default()),
            }),
        }))
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
    /// Communicators made by [`Communicator::split`] share the connections,
    /// so aborting one aborts every communicator of this `init` on this rank.
    pub fn abort(&self) {
        self.abort_because("abort() called")
    }

    /// Closes the connections now, in order, as dropping the last clone
    /// does: pending operations fail, peers see this rank close cleanly
    /// (no "lost" rank), and later operations fail at once. For a program
    /// that ends while something else still holds the communicator (torch's
    /// `destroy_process_group` calls this through the Python binding's
    /// `shutdown`). Communicators made by [`Communicator::split`] share the
    /// connections, so closing one closes them all. Idempotent; returns
    /// within a few seconds.
    ///
    /// ```
    /// use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
    /// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
    ///                                 std::time::Duration::from_secs(20)).unwrap();
    /// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
    /// comm.close();
    /// assert!(comm.channel(0).isend(0, vec![1u8]).and_then(|s| s.wait()).is_err());
    /// comm.close();
    /// ```
    pub fn close(&self) {
        let _ = self.inner.core.ended.set("close() called".into());
        self.inner.core.shut_down();
    }

    /// `Ok` while the communicator runs; once it was aborted
    /// ([`Communicator::abort`]) or closed ([`Communicator::close`]), the
    /// error every new operation gets. Operations that send no message (the
    /// collectives of a 1-rank communicator) ask it, so that they fail after
    /// an abort like any other.
    ///
    /// ```
    /// use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
    /// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
    ///                                 std::time::Duration::from_secs(20)).unwrap();
    /// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
    /// assert!(comm.ensure_live().is_ok());
    /// comm.abort();
    /// let e = comm.ensure_live().unwrap_err().to_string();
    /// assert!(e.contains("abort() called"), "{e}");
    /// ```
    pub fn ensure_live(&self) -> Result<()> {
        match self.inner.core.ended.get() {
            None => Ok(()),
            Some(reason) => Err(Error::Aborted {
                op: None,
                reason: reason.clone(),
            }),
        }
    }

    /// [`Communicator::abort`], telling the peers why: they report the
    /// reason with this rank's abort (e.g. the operation that failed here,
    /// naming the rank that caused it), so a failure seen first by one rank
    /// reaches the others with its cause.
    ///
    /// ```no_run
    /// let comm = zccl_runtime::Communicator::from_env()?;
    /// comm.abort_because("recv from rank 3 timed out after 30 s");
    /// # Ok::<(), zccl_runtime::Error>(())
    /// ```
    pub fn abort_because(&self, reason: &str) {
        let core = &self.inner.core;
        let _ = core.ended.set(reason.into());
        if core.aborted.swap(true, Ordering::AcqRel) {
            return;
        }
        core.request(
            |done| Cmd::Abort {
                reason: reason.into(),
                done,
            },
            Duration::from_secs(1),
        );
    }
}

/// This rank's values of the settings every rank must share
/// ([`bootstrap::PeerInfo::agreed`]): the router's mode (routed or not is
/// decided alike on both sides of a message) and the collectives'
/// algorithm (`ZCCL_ALGO`, read by `zccl_primitives`; ranks that run
/// different schedules wait for messages that never come).
fn agreed_settings(config: &Config) -> Vec<(String, String)> {
    let algo = std::env::var("ZCCL_ALGO")
        .ok()
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "auto".into());
    vec![
        (
            "ZCCL_ROUTER".into(),
            format!("{:?}", config.router).to_ascii_lowercase(),
        ),
        ("ZCCL_ALGO".into(), algo),
    ]
}

/// Bytes each rank contributes to a split: color (`i64`, -1 for none), key
/// (`i32`), proposed context id (`u32`).
const SPLIT_LEN: usize = 16;

fn encode_split(color: Option<u32>, key: i32, proposal: u32) -> [u8; SPLIT_LEN] {
    let mut b = [0u8; SPLIT_LEN];
    b[..8].copy_from_slice(&color.map_or(-1i64, i64::from).to_le_bytes());
    b[8..12].copy_from_slice(&key.to_le_bytes());
    b[12..16].copy_from_slice(&proposal.to_le_bytes());
    b
}

fn decode_split(b: &[u8]) -> Option<(Option<u32>, i32, u32)> {
    if b.len() != SPLIT_LEN {
        return None;
    }
    let color = i64::from_le_bytes(b[..8].try_into().ok()?);
    let color = if color < 0 {
        None
    } else {
        Some(u32::try_from(color).ok()?)
    };
    Some((
        color,
        i32::from_le_bytes(b[8..12].try_into().ok()?),
        u32::from_le_bytes(b[12..16].try_into().ok()?),
    ))
}

/// A channel of a communicator: an independent, ordered stream of ops.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
    id: u32,
    timeout: Duration,
    /// Ops go to the communicator's internal context (split exchanges).
    service: bool,
    /// The element type ops carry instead of `u8` (see [`Channel::with_label`]).
    label: Option<DType>,
    /// The operation label ops carry (see [`Channel::with_op`]).
    op: OpLabel,
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
    /// instead of the configured `ZCCL_TIMEOUT` (the per-call override);
    /// at most [`crate::config::MAX_DURATION_SECS`] (longer is cut to that).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.min(Duration::from_secs(crate::config::MAX_DURATION_SECS as u64));
        self
    }

    /// The same channel, with every byte (`u8`) op issued through it
    /// labelled as elements of `dtype`: the label travels with each message
    /// and is checked at the match like an element type, so a rank that
    /// sends a collective's bytes as `f32` and a peer that receives them as
    /// `i32` (same byte count, another type) fail with a mismatch naming
    /// both types (the receive, then the channel on every rank), instead of
    /// reading reinterpreted bytes. Typed ops
    /// (any element type but `u8`) keep their own type. `dtype` may also be
    /// one of the types zccl only moves ([`DType::LABELS`]: `i8`, `bool`,
    /// complex, ...), which tells, say, `i8` bytes from `u8` bytes.
    ///
    /// ```
    /// use zccl_runtime::{BootstrapRoot, Communicator, Config, DType, Error, UniqueId};
    /// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
    ///                                 std::time::Duration::from_secs(20)).unwrap();
    /// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
    /// let (f32s, i32s) = (comm.channel(4).with_label(DType::F32), comm.channel(4).with_label(DType::I32));
    /// let s = f32s.isend(0, vec![0u8; 16]).unwrap();
    /// let r = i32s.irecv::<u8>(0, 16).unwrap();
    /// assert!(matches!(r.wait(), Err(Error::Mismatch { .. })));
    /// // The small send completed when it went (eager); the channel fails.
    /// assert!(s.wait().is_ok());
    /// let e = f32s.isend(0, vec![0u8; 1]).unwrap().wait().unwrap_err();
    /// assert!(e.to_string().contains("4 x f32") && e.to_string().contains("4 x i32"), "{e}");
    /// ```
    pub fn with_label(mut self, dtype: DType) -> Self {
        self.label = Some(dtype);
        self
    }

    /// The same channel, with every op issued through it labelled as part
    /// of operation `op` (see [`crate::label`]): a message matches only a
    /// receive of the same label, so ranks running different collectives
    /// (or reductions) on the channel fail with a mismatch naming both
    /// instead of exchanging data.
    ///
    /// ```
    /// use zccl_runtime::{BootstrapRoot, Communicator, Config, Error, UniqueId, label::OpLabel};
    /// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
    ///                                 std::time::Duration::from_secs(20)).unwrap();
    /// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
    /// let s = comm.channel(4).with_op(OpLabel::ALL_GATHER).isend(0, vec![0u8; 16]).unwrap();
    /// let r = comm.channel(4).with_op(OpLabel::ALL_REDUCE_SUM).irecv::<u8>(0, 16).unwrap();
    /// let e = r.wait().unwrap_err();
    /// assert!(e.to_string().contains("send is all_gather of 16 B"), "{e}");
    /// assert!(matches!(e, Error::Mismatch { .. }));
    /// // The operation's small send completed when it was sent (eager,
    /// // `zccl_runtime::flow`); the disagreement fails the channel's later
    /// // ops instead, on every rank.
    /// assert!(s.wait().is_ok());
    /// let again = comm.channel(4).isend(0, vec![0u8; 1]).unwrap();
    /// assert!(matches!(again.wait(), Err(Error::Disagreement { .. })));
    /// ```
    pub fn with_op(mut self, op: OpLabel) -> Self {
        self.op = op;
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

    fn issue(&self, ops: Ops) -> Result<Pendings> {
        self.issue_ops(ops, false)
    }

    /// Issues `ops`; `lent`: their payloads borrow the caller's memory (see
    /// [`Channel::isend_lent`]).
    fn issue_ops(&self, ops: Ops, lent: bool) -> Result<Pendings> {
        self.issue_full(ops, lent, None).map(|(p, _)| p)
    }

    /// [`Channel::issue_ops`]; `into`: the receive among `ops` lands in this
    /// memory (`ptr`, `len` bytes; see [`crate::land`]), and where it goes is
    /// returned.
    fn issue_full(
        &self,
        ops: Ops,
        lent: bool,
        into: Option<(*mut u8, usize)>,
    ) -> Result<(Pendings, Option<crate::land::Target>)> {
        let core = &self.inner.core;
        let max = core.config.tcp.limits.max_message;
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
        let (comm, state) = if self.service {
            (
                self.inner.comm | SERVICE_COMM_BIT,
                &self.inner.service_issue,
            )
        } else {
            (self.inner.comm, &self.inner.issue)
        };
        let mut st = state.lock().expect("issue state");
        let mut specs: SmallVec<[OpSpec; 1]> = SmallVec::with_capacity(ops.len());
        let mut pendings = Pendings::with_capacity(ops.len());
        let mut landed = None;
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
            let dtype = match self.label {
                Some(l) if dtype == DType::U8 => l,
                _ => dtype,
            };
            let seqs = st.channels.entry(self.id).or_default();
            let seq = if kind == OpKind::Send {
                seqs.send.take(peer)
            } else {
                seqs.recv.take(peer)
            };
            let index = seqs.index;
            seqs.index += 1;
            let peer = self.inner.members[peer as usize];
            let desc = OpDesc {
                rank: core.world_rank,
                kind,
                peer,
                comm,
                channel: self.id,
                seq,
                bytes,
                dtype,
            };
            let slot = Arc::new(Slot::counted(op_series(kind), bytes, now));
            let key = zccl_transports::landing::LandKey {
                peer,
                comm,
                channel: self.id,
                seq,
            };
            // A plain receive from a same-host peer posts a buffer of its
            // own or a mark.
            let plain = (kind == OpKind::Recv
                && into.is_none()
                && core.via_shm.get(peer as usize).copied().unwrap_or(false))
            .then(|| plain_post(&core.config.shm, bytes))
            .flatten();
            let scratch = match plain {
                Some(PlainPost::Scratch) => {
                    crate::zone::Scratch::post(&core.transport, key, bytes as usize)
                        .map(crate::zone::Plain::Scratch)
                }
                Some(PlainPost::Mark) => {
                    crate::zone::Mark::post(&core.transport, key, bytes as usize)
                        .map(crate::zone::Plain::Mark)
                }
                None => None,
            }
            .map(Box::new);
            let zone = match scratch.as_deref() {
                Some(crate::zone::Plain::Scratch(s)) => Some(s.zone()),
                _ => None,
            };
            pendings.push(Pending {
                slot: slot.clone(),
                desc: desc.clone(),
                deadline,
                timeout: self.timeout,
                spin: Some(core.spin.clone()),
                scratch,
            });
            specs.push(OpSpec {
                desc,
                payload,
                deadline,
                timeout: self.timeout,
                slot,
                index,
                lent,
                scratch: zone.is_some(),
                zone,
                label: self.op,
            });
            if kind == OpKind::Recv
                && let Some((ptr, len)) = into
            {
                // SAFETY: `Channel::irecv_into`'s caller keeps the memory
                // valid and untouched until the handle is waited or dropped.
                let t = unsafe { crate::land::Target::post(&core.transport, key, ptr, len) };
                specs.last_mut().expect("just pushed").zone = t.zone();
                landed = Some(t);
            }
        }
        // Issued here, on the caller's thread, in index order (`st` is held).
        engine::lock(&core.engine).issue_all(specs);
        drop(st);
        Ok((pendings, landed))
    }

    /// Starts sending `data` to `peer`. It never waits for the receiver to
    /// post. Up to [`flow::EAGER_MAX`](crate::flow::EAGER_MAX) bytes the
    /// handle completes once the transport has the data (as `MPI_Send` of a
    /// small message); a larger send completes when the receiver matched
    /// it. A size or type mismatch fails the receive, naming both sides, and
    /// then every op of this channel on every rank
    /// ([`Error::Disagreement`]): a small send that completed already learns
    /// it at its next op on the channel.
    ///
    /// An owned `Vec<T>` or [`HostBuffer<T>`] is sent without a copy; a slice is copied once.
    pub fn isend<T: Element>(
        &self,
        peer: u32,
        data: impl Into<HostBuffer<T>>,
    ) -> Result<SendHandle> {
        let mut p = self.issue(smallvec![Op::send(peer, data)])?;
        Ok(SendHandle {
            p: p.pop().expect("one op"),
        })
    }

    /// Starts sending `data` to `peer` **without copying it** where the
    /// transport lets the peer copy it from this process's memory (ranks of
    /// one host that read each other by CMA, messages of at least
    /// `ZCCL_SHM_CMA_MIN_BYTES`); everywhere else it is copied when the send
    /// is issued, like [`Channel::isend`] of a slice (and so is any payload
    /// under 1 KiB: cheaper to copy than to lend). The handle completes
    /// when the send did ([`Channel::isend`]: eager up to 256 KiB) and the
    /// memory is free again; see
    /// [`crate::lend`] for what happens when the send fails.
    ///
    /// # Safety
    /// `data` must stay valid and must not be written until the returned
    /// handle has been waited on or dropped (dropping it waits). Leaking the
    /// handle (`std::mem::forget`) while `data` is then freed or written is
    /// undefined behaviour.
    ///
    /// ```
    /// use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
    /// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
    ///                                 std::time::Duration::from_secs(20)).unwrap();
    /// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
    /// let ch = comm.channel(3);
    /// let data: Vec<i64> = (0..100).collect();
    /// let r = ch.irecv::<i64>(0, 100).unwrap();
    /// // SAFETY: `data` is untouched until `s` is waited.
    /// let s = unsafe { ch.isend_lent(0, &data) }.unwrap();
    /// assert_eq!(r.wait().unwrap().into_vec(), data);
    /// s.wait().unwrap();
    /// ```
    pub unsafe fn isend_lent<T: Element>(&self, peer: u32, data: &[T]) -> Result<LentSendHandle> {
        // SAFETY: the caller keeps `data` valid and unchanged until the
        // handle is done (our contract); the handle waits for the release
        // or withdraws the payload before it lets go.
        let raw = crate::buffer::as_bytes(data);
        let (bytes, release) = if raw.len() < crate::lend::LEND_MIN_BYTES {
            (zccl_transports::copy::to_bytes(raw), None)
        } else {
            let (b, r) = unsafe { crate::lend::lend(raw) };
            (b, Some(r))
        };
        let op = Op::Send {
            peer,
            dtype: T::DTYPE,
            data: bytes,
        };
        let p = match self.issue_ops(smallvec![op], release.is_some()) {
            Ok(mut p) => p.pop().expect("one op"),
            // Not issued: the payload was dropped with the op.
            Err(e) => return Err(e),
        };
        Ok(LentSendHandle {
            p: Some(p),
            release,
            transport: self.inner.core.transport.clone(),
        })
    }

    /// Starts receiving `buf.len()` elements of `T` from `peer` **straight
    /// into `buf`**: from a same-host peer by CMA the copy lands there
    /// directly (no receive buffer, no second copy); any other message is
    /// copied into `buf` when it is matched, or, if it is under 16 KiB and
    /// no transport lands messages of its size, by the handle (its `wait`,
    /// or its drop if the message came before). A send of another size or type fails both,
    /// as with [`Channel::irecv`].
    ///
    /// # Safety
    /// `buf` must stay valid and must not be read or written until the
    /// returned handle has been waited on or dropped (dropping it takes the
    /// buffer back: it waits out a copy in progress, and nothing writes into
    /// `buf` afterwards). Leaking the handle while `buf` is then used is
    /// undefined behaviour.
    ///
    /// ```
    /// use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
    /// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
    ///                                 std::time::Duration::from_secs(20)).unwrap();
    /// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
    /// let ch = comm.channel(2);
    /// let mut out = vec![0.0f64; 8];
    /// // SAFETY: `out` is untouched until `r` is waited.
    /// let r = unsafe { ch.irecv_into(0, &mut out) }.unwrap();
    /// ch.isend(0, vec![2.5f64; 8]).unwrap().wait().unwrap();
    /// r.wait().unwrap();
    /// assert_eq!(out, vec![2.5; 8]);
    /// ```
    pub unsafe fn irecv_into<T: Element>(
        &self,
        peer: u32,
        buf: &mut [T],
    ) -> Result<crate::land::RecvIntoHandle> {
        let into = (buf.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(buf));
        let (mut p, landed) =
            self.issue_full(smallvec![Op::recv::<T>(peer, buf.len())], false, Some(into))?;
        Ok(crate::land::RecvIntoHandle {
            p: p.pop(),
            into: landed.expect("a receive has a destination"),
        })
    }

    /// Starts receiving `count` elements of `T` from `peer`. A send of another
    /// size or type fails both the receive and the send.
    pub fn irecv<T: Element>(&self, peer: u32, count: usize) -> Result<RecvHandle<T>> {
        let mut p = self.issue(smallvec![Op::recv::<T>(peer, count)])?;
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
            ops: self.issue(SmallVec::from_vec(ops))?.into_vec(),
        })
    }

    /// Blocking send ([`Channel::isend`], waited): a small one returns once
    /// the transport has it, a larger one once the receiver matched it (like
    /// `MPI_Send`: two ranks that both send first to each other must use
    /// [`Channel::batch`], or they deadlock past the eager size).
    pub fn send<T: Element>(&self, peer: u32, data: impl Into<HostBuffer<T>>) -> Result<()> {
        self.isend(peer, data)?.wait()
    }

    /// Blocking receive.
    pub fn recv<T: Element>(&self, peer: u32, count: usize) -> Result<HostBuffer<T>> {
        self.irecv(peer, count)?.wait()
    }
}

#[cfg(test)]
mod tests {
    use super::PeerSeqs;

    #[test]
    fn plain_receives_post_a_buffer_or_a_mark_wherever_cma_records_may_wait() {
        use super::{PlainPost, SCRATCH_MIN_BYTES, plain_post};
        use zccl_transports::shm::{
            CMA_MIN_BYTES, CROWDED_CMA_MIN_BYTES, POLL_MAX_CMA_BYTES, ShmConfig,
        };
        let (buf, mark) = (Some(PlainPost::Scratch), Some(PlainPost::Mark));
        let d = ShmConfig::default();
        // From the smallest CMA size (the crowded one) to what a poll
        // copies a buffer, then marks, and buffers from 4 MiB.
        assert_eq!(plain_post(&d, CROWDED_CMA_MIN_BYTES as u64 - 1), None);
        assert_eq!(plain_post(&d, CROWDED_CMA_MIN_BYTES as u64), buf);
        assert_eq!(plain_post(&d, POLL_MAX_CMA_BYTES as u64), buf);
        assert_eq!(plain_post(&d, POLL_MAX_CMA_BYTES as u64 + 1), mark);
        assert_eq!(plain_post(&d, SCRATCH_MIN_BYTES as u64 - 1), mark);
        assert_eq!(plain_post(&d, SCRATCH_MIN_BYTES as u64), buf);
        assert_eq!(plain_post(&d, u64::MAX), buf);
        // Crowded CMA off: from the other threshold; CMA off: the large
        // sizes alone (ring records land in a posted zone too).
        let no_crowded = ShmConfig {
            crowded_cma_min_bytes: 0,
            ..d.clone()
        };
        assert_eq!(plain_post(&no_crowded, CMA_MIN_BYTES as u64 - 1), None);
        assert_eq!(plain_post(&no_crowded, CMA_MIN_BYTES as u64), buf);
        let off = ShmConfig {
            cma_min_bytes: 0,
            crowded_cma_min_bytes: 0,
            ..d
        };
        assert_eq!(plain_post(&off, POLL_MAX_CMA_BYTES as u64), None);
        assert_eq!(plain_post(&off, POLL_MAX_CMA_BYTES as u64 + 1), mark);
        assert_eq!(plain_post(&off, SCRATCH_MIN_BYTES as u64), buf);
    }

    #[test]
    fn each_peer_counts_its_own_sequence_across_the_switch_to_a_map() {
        let mut s = PeerSeqs::default();
        // Peers 0..12 twice each, interleaved: the list becomes a map at
        // the ninth peer, and no count restarts or jumps.
        let mut got = Vec::new();
        for round in 0..2 {
            for peer in 0..12u32 {
                got.push((peer, round, s.take(peer)));
            }
        }
        assert!(matches!(s, PeerSeqs::Many(_)));
        for (peer, round, seq) in got {
            assert_eq!(seq, round, "peer {peer}");
        }
        assert_eq!(s.take(3), 2);
        assert_eq!(s.take(11), 2);
    }
}

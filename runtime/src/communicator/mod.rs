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
//!
//! The code: this file holds the [`Communicator`] (init, the accessors,
//! split, abort); `channel` the [`Channel`] and how its ops are issued;
//! `numbering` each channel's op order and sequence numbers; `shared` what
//! the communicators of one init share (the engine, its runtime and
//! connections) and what makes one of them.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};
use zccl_transports::Transport;
use zccl_transports::hybrid::HybridTransport;
use zccl_transports::ifname::{Interface, list_interfaces, select};
use zccl_transports::shm::{ShmSetup, ShmTransport, job_tag};
use zccl_transports::tcp::{Endpoint, TcpListeners, TcpSetup, TcpTransport};

use crate::bootstrap::{self, BootstrapLimits, BootstrapRoot, PeerInfo};
use crate::buffer::{Element, HostBuffer};
use crate::config::Config;
use crate::engine::{Cmd, Engine, EngineRef};
use crate::error::{Error, Result};
use crate::handle::{BatchHandle, RecvHandle, SendHandle};
use crate::ids::SERVICE_COMM_BIT;
use crate::launcher_env::{self, RootSpec};
use crate::unique_id::UniqueId;

mod channel;
mod numbering;
mod shared;

pub use channel::{Channel, Op};
use numbering::IssueState;
use shared::{Core, Inner};

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
        // The cheap clock's rate, calibrated now (a 2 ms sleep, once per
        // process) rather than by the first op that times itself.
        let clock = zccl_transports::clock::source();
        tracing::debug!(?clock, "clock");
        let unadvised_heap = config.malloc_tune
            && crate::malloc::tune_once()
            && crate::malloc::heap_unadvised_here();
        let deadline = Instant::now() + config.timeout;
        let available = list_interfaces().map_err(zccl_transports::TransportError::from)?;
        let nics = select(config.socket_ifname.as_deref(), &available)
            .map_err(zccl_transports::TransportError::from)?;
        crate::logging::set_rank(rank);
        if unadvised_heap {
            info!(
                "the heap is not advised for huge pages: large same-host copies out of heap buffers run \
                 up to 2x slower; start the ranks with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 \
                 (zccl run and zccl bench -N do)"
            );
        }
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
            clock: clock.kind().to_string(),
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
        // Same host (and network namespace), both sides willing, one clock:
        // shared memory.
        let via_shm: Vec<bool> = (0..size).map(|p| book.shares_memory(rank, p)).collect();
        let other_clock: Vec<u32> = (0..size).filter(|&p| book.clocks_apart(rank, p)).collect();
        if !other_clock.is_empty() {
            info!(
                rank,
                peers = ?other_clock,
                clock = %book.peers[rank as usize].clock,
                "these same-host ranks read another clock (one of us cannot read the kernel's \
                 clocksource or the CPU's flags): TCP between us, not shared memory"
            );
        }
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
            yield_to_copies: crate::handle::yield_to_copies(book_size as usize, shared_cpus),
            per_mib: config.spin_per_mib,
            per_mib_sizes: crate::handle::spin_per_mib_sizes(book_size as usize, shared_cpus),
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

    /// Channel `id`. Ops on one channel complete in issue order (unless it
    /// is made [peerwise](Channel::peerwise), as the communicator's own
    /// point-to-point calls' channel is: [`Communicator::p2p`]); channels
    /// progress independently. Its ops use the configured timeout; see
    /// [`Channel::with_timeout`].
    pub fn channel(&self, id: u32) -> Channel {
        Channel::new(self.inner.clone(), id, false)
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
        let service = Channel::new(inner.clone(), 0, true);
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

    /// Channel 0, [peerwise](Channel::peerwise): what the communicator's
    /// own point-to-point calls ([`Communicator::isend`], `irecv`, `send`,
    /// `recv`, `batch`) use. Its ops complete per peer and direction, as
    /// MPI's `MPI_Isend`/`MPI_Irecv` do: a rank may post receives from
    /// several peers, then wait for a send before it issues the next one
    /// (a pairwise exchange as MPI and torch code write it) without the
    /// send waiting behind those receives. Messages from one peer still
    /// match, and complete, in the order posted.
    ///
    /// ```
    /// use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
    /// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
    ///                                 std::time::Duration::from_secs(20)).unwrap();
    /// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
    /// let r = comm.irecv::<u8>(0, 2).unwrap();
    /// comm.p2p().isend(0, vec![4u8, 2]).unwrap().wait().unwrap();
    /// assert_eq!(r.wait().unwrap().into_vec(), vec![4u8, 2]);
    /// ```
    pub fn p2p(&self) -> Channel {
        self.channel(0).peerwise()
    }

    /// [`Channel::isend`] on channel 0, [peerwise](Channel::peerwise) (see
    /// [`Communicator::p2p`]).
    pub fn isend<T: Element>(
        &self,
        peer: u32,
        data: impl Into<HostBuffer<T>>,
    ) -> Result<SendHandle> {
        self.p2p().isend(peer, data)
    }

    /// [`Channel::irecv`] on channel 0, [peerwise](Channel::peerwise) (see
    /// [`Communicator::p2p`]).
    pub fn irecv<T: Element>(&self, peer: u32, count: usize) -> Result<RecvHandle<T>> {
        self.p2p().irecv(peer, count)
    }

    /// [`Channel::batch`] on channel 0, [peerwise](Channel::peerwise) (see
    /// [`Communicator::p2p`]).
    pub fn batch(&self, ops: Vec<Op>) -> Result<BatchHandle> {
        self.p2p().batch(ops)
    }

    /// [`Channel::send`] on channel 0, [peerwise](Channel::peerwise) (see
    /// [`Communicator::p2p`]).
    pub fn send<T: Element>(&self, peer: u32, data: impl Into<HostBuffer<T>>) -> Result<()> {
        self.p2p().send(peer, data)
    }

    /// [`Channel::recv`] on channel 0, [peerwise](Channel::peerwise) (see
    /// [`Communicator::p2p`]).
    pub fn recv<T: Element>(&self, peer: u32, count: usize) -> Result<HostBuffer<T>> {
        self.p2p().recv(peer, count)
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

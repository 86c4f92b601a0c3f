//! The TCP transport on tokio.
//!
//! * Each rank listens on one socket per selected NIC ([`TcpListeners`]).
//! * Each pair of ranks is joined by `sockets_per_peer` TCP connections (by
//!   default one per NIC); the higher rank dials. Socket `i` leaves from local NIC `i mod L` (its source
//!   address is bound to that NIC) towards the peer's endpoint `i mod R`.
//! * Every connection opens with the [`Hello`] handshake in both directions;
//!   anything that fails it (port scanners, random bytes, another job, silence
//!   past the handshake timeout, a duplicate) is logged and dropped without
//!   disturbing the job. The listeners keep rejecting strays for the
//!   transport's whole life.
//! * Messages larger than `chunk_bytes` are split into chunks spread over the
//!   peer's sockets and reassembled by the receiver.
//! * `TCP_NODELAY` is set; send/receive buffer sizes are set when configured.
//! * Each socket writer sends a heartbeat when idle; a monitor reports a peer
//!   [`CloseReason::Stuck`] when nothing was heard from it for `peer_timeout`
//!   (a `SIGSTOP`ped process keeps its sockets open, so EOF never comes).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::frame::{FRAME_HEADER_LEN, FrameHeader, FrameKind, FrameLimits, GoodbyeReason};
use crate::handshake::{
    Expectation, HELLO_LEN, Hello, JobSecret, PROTOCOL_VERSION, Purpose, validate,
};
use crate::ifname::Interface;
use crate::metrics;
use crate::recvbuf::RecvBuf;
use crate::{
    BoxFuture, CloseReason, Message, MessageKind, NicPath, PeerPath, Transport, TransportError,
    TransportEvent,
};

/// Tuning and limits of the TCP transport.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// TCP connections per peer (messages are striped over them); `0`
    /// (the default) means one per NIC: the most NICs any rank of the job
    /// selected, so that every selected NIC carries traffic.
    pub sockets_per_peer: u16,
    /// Largest chunk a message is split into.
    pub chunk_bytes: usize,
    /// Bounds enforced on every received frame.
    pub limits: FrameLimits,
    /// `SO_SNDBUF`/`SO_RCVBUF`; `None` (the default) keeps the kernel's
    /// autotuning. A fixed receive buffer that a fast sender fills makes the
    /// kernel prune the queue and drop a segment (`TcpExtRcvPruned`), which
    /// then waits out a 200 ms retransmission timeout: measured on loopback
    /// with 4 MiB buffers, one 64 MiB message in three stalled that way.
    pub socket_buffer_bytes: Option<usize>,
    /// Longest wait for a connection's `Hello`.
    pub handshake_timeout: Duration,
    /// An idle socket sends a heartbeat this often.
    pub heartbeat_interval: Duration,
    /// A peer silent on every socket this long is reported stuck.
    pub peer_timeout: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            sockets_per_peer: 0,
            chunk_bytes: 512 << 10,
            limits: FrameLimits::default(),
            socket_buffer_bytes: None,
            handshake_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(60),
        }
    }
}

/// How long a socket that ended without a goodbye waits for the peer's
/// goodbye on its other sockets before the peer itself is blamed (see
/// `Shared::report_lost`).
const LOST_GRACE: Duration = Duration::from_millis(500);

/// A listening endpoint of a rank, as published in the address book.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    /// The NIC the listener is bound to.
    pub ifname: String,
    /// Its address.
    pub addr: SocketAddr,
}

/// The listening sockets of one rank, one per selected NIC, bound before the
/// address book exchange so their ports can be published.
#[derive(Debug)]
pub struct TcpListeners {
    listeners: Vec<(Interface, std::net::TcpListener)>,
}

fn setup_socket_buffers(sock: &socket2::Socket, cfg_bytes: Option<usize>) {
    if let Some(b) = cfg_bytes {
        if let Err(e) = sock.set_send_buffer_size(b) {
            debug!("SO_SNDBUF {b}: {e}");
        }
        if let Err(e) = sock.set_recv_buffer_size(b) {
            debug!("SO_RCVBUF {b}: {e}");
        }
    }
}

impl TcpListeners {
    /// Binds one listener per NIC on an ephemeral port.
    pub fn bind(nics: &[Interface], cfg: &TcpConfig) -> Result<Self, TransportError> {
        let mut listeners = Vec::new();
        for nic in nics {
            let addr = SocketAddr::new(nic.addr, 0);
            let ctx = || format!("listen on {} {addr}", nic.name);
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )
            .map_err(|e| TransportError::io(ctx(), &e))?;
            sock.set_reuse_address(true)
                .map_err(|e| TransportError::io(ctx(), &e))?;
            setup_socket_buffers(&sock, cfg.socket_buffer_bytes);
            sock.bind(&addr.into())
                .map_err(|e| TransportError::io(ctx(), &e))?;
            sock.listen(1024)
                .map_err(|e| TransportError::io(ctx(), &e))?;
            sock.set_nonblocking(true)
                .map_err(|e| TransportError::io(ctx(), &e))?;
            listeners.push((nic.clone(), sock.into()));
        }
        Ok(Self { listeners })
    }

    /// The endpoints to publish.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.listeners
            .iter()
            .map(|(nic, l)| Endpoint {
                ifname: nic.name.clone(),
                addr: l
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::new(nic.addr, 0)),
            })
            .collect()
    }
}

/// Who this rank is and whom it connects to.
#[derive(Debug, Clone)]
pub struct TcpSetup {
    /// This rank.
    pub rank: u32,
    /// World size.
    pub world_size: u32,
    /// Job secret presented and required on every connection.
    pub secret: JobSecret,
    /// Every rank's endpoints, indexed by rank (this rank's entry is unused).
    pub peers: Vec<Vec<Endpoint>>,
    /// Transport configuration.
    pub config: TcpConfig,
    /// Deadline for the whole connection setup.
    pub setup_timeout: Duration,
}

enum Out {
    Frame(FrameHeader, Bytes),
    Goodbye(GoodbyeReason),
}

/// A message being reassembled from chunks that arrive on several sockets.
/// Readers copy each chunk straight into `buf` at its offset, outside the
/// lock: `claimed` (start -> end of every chunk announced so far) keeps
/// their ranges disjoint, and the partial leaves the map only once every
/// byte was written, so no reader still writes into it then.
struct Partial {
    buf: RecvBuf,
    /// `buf` is a fresh mapping: each reader faults its chunk in first.
    fresh: bool,
    received: u64,
    dtype: u16,
    claimed: BTreeMap<u64, u64>,
}

/// A raw pointer into a [`Partial`]'s buffer, held by one reader across its
/// read of a claimed range.
struct ChunkDst(*mut u8);
// SAFETY: the range behind the pointer is claimed by exactly one reader,
// and the buffer outlives the read (see `Partial`).
unsafe impl Send for ChunkDst {}

struct SocketSlot {
    tx: mpsc::UnboundedSender<Out>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Out>>>,
    stop: Notify,
    claimed: AtomicBool,
    path: Mutex<Option<NicPath>>,
    /// When something last arrived on this socket (ms since start).
    heard_ms: AtomicU64,
    /// Its local NIC was reported down ([`Transport::set_nic_up`]).
    down: AtomicBool,
}

impl SocketSlot {
    fn on_nic(&self, ifname: &str) -> bool {
        self.path
            .lock()
            .expect("path")
            .as_ref()
            .is_some_and(|p| p.ifname == ifname)
    }
}

struct PeerState {
    sockets: Vec<SocketSlot>,
    rr: AtomicUsize,
    last_heard_ms: AtomicU64,
    reported: AtomicBool,
    clean_closed: AtomicUsize,
    /// Sockets of this peer that ended without a goodbye.
    ended: AtomicUsize,
    reasm: Mutex<HashMap<(u8, u32, u32, u64), Partial>>,
}

struct Shared {
    rank: u32,
    world: u32,
    secret: JobSecret,
    cfg: TcpConfig,
    peers: Vec<PeerState>,
    events: mpsc::UnboundedSender<TransportEvent>,
    abort_tx: watch::Sender<Option<GoodbyeReason>>,
    closing: AtomicBool,
    start: Instant,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    io_tasks: Mutex<Vec<JoinHandle<()>>>,
    ready: mpsc::UnboundedSender<(u32, u16)>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Something arrived from `peer` on socket `idx`.
    fn touch_socket(&self, peer: u32, idx: u16) {
        let now = self.now_ms();
        let ps = &self.peers[peer as usize];
        ps.last_heard_ms.store(now, Ordering::Relaxed);
        ps.sockets[idx as usize]
            .heard_ms
            .store(now, Ordering::Relaxed);
    }

    /// Sockets of `peer` whose local NIC is not down (all of them when every
    /// NIC is down: the bytes wait in the kernel rather than being dropped).
    fn usable(&self, peer: u32) -> Vec<usize> {
        let ps = &self.peers[peer as usize];
        let up: Vec<usize> = (0..ps.sockets.len())
            .filter(|&i| !ps.sockets[i].down.load(Ordering::Relaxed))
            .collect();
        if up.is_empty() {
            (0..ps.sockets.len()).collect()
        } else {
            up
        }
    }

    /// The socket a control message to `peer` takes: among the usable ones,
    /// the one the peer was heard on last. A socket whose far end went
    /// silent (the peer's NIC on that rail is down) stops being chosen
    /// within a heartbeat, while replies on a live rail get through.
    fn control_socket(&self, peer: u32) -> usize {
        let ps = &self.peers[peer as usize];
        self.usable(peer)
            .into_iter()
            .max_by_key(|&i| {
                (
                    ps.sockets[i].heard_ms.load(Ordering::Relaxed),
                    std::cmp::Reverse(i),
                )
            })
            .unwrap_or(0)
    }

    fn first_path(&self, peer: u32) -> Option<NicPath> {
        self.peers
            .get(peer as usize)?
            .sockets
            .iter()
            .find_map(|s| s.path.lock().expect("path lock").clone())
    }

    fn report(&self, peer: u32, reason: CloseReason, nic: Option<NicPath>) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        let p = &self.peers[peer as usize];
        if p.reported.swap(true, Ordering::AcqRel) {
            return;
        }
        match &reason {
            CloseReason::Clean => info!(rank = self.rank, peer, "peer closed its communicator"),
            other => warn!(rank = self.rank, peer, nic = ?nic, "peer {other}"),
        }
        let _ = self.events.send(TransportEvent::PeerClosed {
            peer,
            reason,
            path: nic.map(PeerPath::Nic),
        });
    }

    /// A socket of `peer` ended without a goodbye (EOF, reset, failed
    /// write). When the peer is aborting, its goodbye naming the real cause
    /// may still be on its way on another socket (a socket whose writer was
    /// mid-frame, or a reset that overtook queued bytes, gives a bare EOF
    /// first): so unless every socket of the peer has ended (a killed
    /// process closes them all at once, which is reported at once), wait up
    /// to [`LOST_GRACE`] for that goodbye before blaming the peer itself.
    async fn report_lost(&self, peer: u32, why: String, nic: NicPath, socket_ended: bool) {
        metrics::Metrics::global().nic_failure(&nic.ifname);
        let ps = &self.peers[peer as usize];
        let ended = if socket_ended {
            ps.ended.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            ps.ended.load(Ordering::Acquire)
        };
        if ended < ps.sockets.len() && !ps.reported.load(Ordering::Acquire) {
            let grace = LOST_GRACE.min(self.cfg.peer_timeout);
            let t0 = Instant::now();
            while t0.elapsed() < grace
                && !ps.reported.load(Ordering::Acquire)
                && ps.ended.load(Ordering::Acquire) < ps.sockets.len()
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.report(peer, CloseReason::Lost(why), Some(nic));
    }

    fn spawn(self: &Arc<Self>, io: bool, fut: impl Future<Output = ()> + Send + 'static) {
        let h = tokio::spawn(fut);
        let list = if io { &self.io_tasks } else { &self.tasks };
        list.lock().expect("task list").push(h);
    }

    fn expectation(&self) -> Expectation {
        Expectation {
            purpose: Purpose::Data,
            secret: self.secret,
            local_rank: self.rank,
            world_size: Some(self.world),
            src_rank: None,
            src_range: None,
            num_sockets: Some(self.cfg.sockets_per_peer),
        }
    }

    fn hello_to(&self, peer: u32, socket_index: u16) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            purpose: Purpose::Data,
            secret: self.secret,
            src_rank: self.rank,
            dst_rank: peer,
            world_size: self.world,
            socket_index,
            num_sockets: self.cfg.sockets_per_peer,
        }
    }
}

/// The TCP implementation of [`Transport`].
#[derive(Clone)]
pub struct TcpTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("rank", &self.shared.rank)
            .field("world", &self.shared.world)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Small I/O helpers shared with the bootstrap.

/// Reads exactly one `Hello`, failing after `timeout`.
pub async fn read_hello(stream: &mut TcpStream, timeout: Duration) -> Result<Hello, String> {
    let mut b = [0u8; HELLO_LEN];
    match tokio::time::timeout(timeout, stream.read_exact(&mut b)).await {
        Err(_) => Err(format!("no hello within {timeout:?}")),
        Ok(Err(e)) => Err(format!("reading hello: {e}")),
        Ok(Ok(_)) => Hello::decode(&b).map_err(|e| e.to_string()),
    }
}

/// Writes one `Hello`, failing after `timeout`.
pub async fn write_hello(
    stream: &mut TcpStream,
    hello: &Hello,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, stream.write_all(&hello.encode())).await {
        Err(_) => Err(format!("writing hello timed out after {timeout:?}")),
        Ok(r) => r.map_err(|e| format!("writing hello: {e}")),
    }
}

/// Writes one single-chunk frame of `kind` carrying `payload`.
pub async fn write_single_frame(
    stream: &mut TcpStream,
    kind: FrameKind,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    buf.extend_from_slice(&FrameHeader::single(kind, len).encode());
    buf.extend_from_slice(payload);
    stream.write_all(&buf).await
}

/// Reads one single-chunk frame of `kind`, enforcing `limits`; heartbeats are skipped.
pub async fn read_single_frame(
    stream: &mut TcpStream,
    kind: FrameKind,
    limits: &FrameLimits,
) -> Result<Vec<u8>, String> {
    loop {
        let mut hb = [0u8; FRAME_HEADER_LEN];
        stream
            .read_exact(&mut hb)
            .await
            .map_err(|e| format!("reading frame header: {e}"))?;
        let h = FrameHeader::decode(&hb, limits).map_err(|e| e.to_string())?;
        if h.kind == FrameKind::Heartbeat {
            continue;
        }
        if h.kind != kind {
            return Err(format!("expected a {kind:?} frame, got {:?}", h.kind));
        }
        let mut payload = vec![0u8; h.chunk_len as usize];
        stream
            .read_exact(&mut payload)
            .await
            .map_err(|e| format!("reading frame payload: {e}"))?;
        return Ok(payload);
    }
}

fn tune_stream(stream: &TcpStream, cfg: &TcpConfig) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!("TCP_NODELAY: {e}");
    }
    let sock = socket2::SockRef::from(stream);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(5));
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        debug!("SO_KEEPALIVE: {e}");
    }
    if let Err(e) = sock.set_tcp_user_timeout(Some(cfg.peer_timeout.max(Duration::from_secs(1)))) {
        debug!("TCP_USER_TIMEOUT: {e}");
    }
}

// ---------------------------------------------------------------------------
// Setup.

impl TcpTransport {
    /// Establishes the full mesh of data connections, then returns the
    /// running transport. Must be called inside a tokio runtime.
    ///
    /// Incoming messages and peer loss are sent on `events`.
    pub async fn establish(
        listeners: TcpListeners,
        setup: TcpSetup,
        events: mpsc::UnboundedSender<TransportEvent>,
    ) -> Result<Self, TransportError> {
        let n = match setup.config.sockets_per_peer {
            // One socket per NIC. Every rank sees the same address book, so
            // all agree on the count (checked by the handshake). More
            // sockets than NICs only split one NIC's bandwidth among
            // connections that contend for the same CPUs (measured with the
            // p2p benchmark on loopback: 2 sockets were slower than 1).
            0 => (0..setup.world_size as usize)
                .map(|p| {
                    if p == setup.rank as usize {
                        listeners.listeners.len()
                    } else {
                        setup.peers.get(p).map_or(0, Vec::len)
                    }
                })
                .max()
                .unwrap_or(1)
                .clamp(1, 64) as u16,
            n => n,
        };
        let mut cfg = setup.config.clone();
        cfg.sockets_per_peer = n;
        cfg.chunk_bytes = cfg.chunk_bytes.clamp(1, cfg.limits.max_frame as usize);
        let peers = (0..setup.world_size)
            .map(|_| PeerState {
                sockets: (0..n)
                    .map(|_| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        SocketSlot {
                            tx,
                            rx: Mutex::new(Some(rx)),
                            stop: Notify::new(),
                            claimed: AtomicBool::new(false),
                            path: Mutex::new(None),
                            heard_ms: AtomicU64::new(0),
                            down: AtomicBool::new(false),
                        }
                    })
                    .collect(),
                rr: AtomicUsize::new(0),
                last_heard_ms: AtomicU64::new(0),
                reported: AtomicBool::new(false),
                clean_closed: AtomicUsize::new(0),
                ended: AtomicUsize::new(0),
                reasm: Mutex::new(HashMap::new()),
            })
            .collect();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            rank: setup.rank,
            world: setup.world_size,
            secret: setup.secret,
            cfg,
            peers,
            events,
            abort_tx: watch::channel(None).0,
            closing: AtomicBool::new(false),
            start: Instant::now(),
            tasks: Mutex::new(Vec::new()),
            io_tasks: Mutex::new(Vec::new()),
            ready: ready_tx,
        });
        let local_nics: Vec<Interface> = listeners
            .listeners
            .iter()
            .map(|(nic, _)| nic.clone())
            .collect();
        for (nic, l) in listeners.listeners {
            let l = tokio::net::TcpListener::from_std(l)
                .map_err(|e| TransportError::io("listener", &e))?;
            let sh = shared.clone();
            shared.spawn(false, accept_loop(sh, nic, l));
        }
        let deadline = Instant::now() + setup.setup_timeout;
        let last_errors: Arc<Mutex<HashMap<(u32, u16), String>>> = Arc::default();
        for peer in 0..setup.rank {
            for idx in 0..n {
                let remote_eps = &setup.peers[peer as usize];
                if remote_eps.is_empty() || local_nics.is_empty() {
                    return Err(TransportError::Io {
                        context: format!("connect to rank {peer}"),
                        message: "no endpoint to use".into(),
                    });
                }
                let remote = remote_eps[idx as usize % remote_eps.len()].clone();
                let local = local_nics[idx as usize % local_nics.len()].clone();
                let sh = shared.clone();
                let errs = last_errors.clone();
                shared.spawn(false, async move {
                    dial(sh, peer, idx, local, remote, deadline, errs).await;
                });
            }
        }
        let expected = (setup.world_size as usize - 1) * n as usize;
        let mut established = 0usize;
        while established < expected {
            match tokio::time::timeout_at(deadline.into(), ready_rx.recv()).await {
                Ok(Some(_)) => established += 1,
                Ok(None) => unreachable!("shared holds a sender"),
                Err(_) => {
                    let errs = last_errors.lock().expect("errors");
                    let mut missing = Vec::new();
                    for (p, st) in shared.peers.iter().enumerate() {
                        if p as u32 == setup.rank {
                            continue;
                        }
                        for (i, s) in st.sockets.iter().enumerate() {
                            if !s.claimed.load(Ordering::Acquire) {
                                let why =
                                    errs.get(&(p as u32, i as u16)).cloned().unwrap_or_else(|| {
                                        if (p as u32) > setup.rank {
                                            "rank never dialed in".into()
                                        } else {
                                            "pending".into()
                                        }
                                    });
                                missing.push(format!("rank {p} socket {i} ({why})"));
                            }
                        }
                    }
                    shared.closing.store(true, Ordering::Release);
                    abort_all(&shared);
                    return Err(TransportError::SetupTimeout {
                        after: setup.setup_timeout,
                        missing: missing.join("; "),
                    });
                }
            }
        }
        // Connections are up: start the liveness monitor.
        let sh = shared.clone();
        shared.spawn(false, monitor(sh));
        info!(
            rank = setup.rank,
            world = setup.world_size,
            sockets_per_peer = n,
            "tcp transport ready"
        );
        Ok(Self { shared })
    }
}

fn abort_all(shared: &Shared) {
    for h in shared.tasks.lock().expect("tasks").drain(..) {
        h.abort();
    }
    for h in shared.io_tasks.lock().expect("tasks").drain(..) {
        h.abort();
    }
}

async fn accept_loop(shared: Arc<Shared>, nic: Interface, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let sh = shared.clone();
                let nic = nic.clone();
                tokio::spawn(async move {
                    if let Err(why) = accept_one(sh.clone(), &nic, stream, from).await {
                        log_junk(sh.rank, from, &nic.name, &why);
                    }
                });
            }
            Err(e) => {
                warn!(rank = shared.rank, "accept on {}: {e}", nic.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Junk connections: the warning, rate-limited.

/// Warnings in full per source address before they are rate-limited.
const JUNK_WARN_PER_ADDR: u32 = 3;
/// Past those, at most one warning per this interval (it counts the others).
const JUNK_SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Source addresses remembered; connections from others are rate-limited.
const JUNK_MAX_ADDRS: usize = 1024;

/// What to log for one dropped incoming connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JunkLog {
    /// The warning.
    Warn,
    /// The warning, with how many were left out since the last one.
    Summary {
        /// Dropped connections logged at debug level only since the last warning.
        left_out: u64,
    },
    /// A debug line only (counted for the next summary).
    Quiet,
}

/// Rate limit of the "dropped incoming connection" warning (a port scanner
/// can open thousands): the first `per_addr` per source address in full,
/// then at most one warning per `every`, which counts those left out.
/// Pure: the time is an argument.
#[derive(Debug)]
struct RateLimiter {
    per_addr: u32,
    every: Duration,
    max_addrs: usize,
    seen: HashMap<IpAddr, u32>,
    left_out: u64,
    last_summary: Option<Instant>,
}

impl RateLimiter {
    fn new(per_addr: u32, every: Duration, max_addrs: usize) -> Self {
        Self {
            per_addr,
            every,
            max_addrs,
            seen: HashMap::new(),
            left_out: 0,
            last_summary: None,
        }
    }

    /// One more dropped connection from `from`, at `now`.
    fn check(&mut self, from: IpAddr, now: Instant) -> JunkLog {
        let known = self.seen.len() < self.max_addrs || self.seen.contains_key(&from);
        let count = if known {
            let n = self.seen.entry(from).or_insert(0);
            *n = n.saturating_add(1);
            *n
        } else {
            u32::MAX
        };
        if count <= self.per_addr {
            return JunkLog::Warn;
        }
        if self
            .last_summary
            .is_some_and(|t| now.saturating_duration_since(t) < self.every)
        {
            self.left_out += 1;
            return JunkLog::Quiet;
        }
        self.last_summary = Some(now);
        JunkLog::Summary {
            left_out: std::mem::take(&mut self.left_out),
        }
    }
}

/// The process's limiter of the junk-connection warning.
static JUNK: std::sync::LazyLock<Mutex<RateLimiter>> = std::sync::LazyLock::new(|| {
    Mutex::new(RateLimiter::new(
        JUNK_WARN_PER_ADDR,
        JUNK_SUMMARY_EVERY,
        JUNK_MAX_ADDRS,
    ))
});

/// Logs a dropped incoming connection, rate-limited ([`RateLimiter`]).
fn log_junk(rank: u32, from: SocketAddr, nic: &str, why: &str) {
    let verdict = JUNK
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .check(from.ip(), Instant::now());
    match verdict {
        JunkLog::Warn => warn!(rank, %from, nic, "dropped incoming connection: {why}"),
        JunkLog::Summary { left_out } => warn!(
            rank,
            %from,
            nic,
            "dropped incoming connection: {why} ({left_out} more dropped since the last such warning; \
             past {JUNK_WARN_PER_ADDR} from one address, at most one warning per {}s)",
            JUNK_SUMMARY_EVERY.as_secs()
        ),
        JunkLog::Quiet => debug!(rank, %from, nic, "dropped incoming connection: {why}"),
    }
}

async fn accept_one(
    shared: Arc<Shared>,
    nic: &Interface,
    mut stream: TcpStream,
    from: SocketAddr,
) -> Result<(), String> {
    let hs_timeout = shared.cfg.handshake_timeout;
    let hello = read_hello(&mut stream, hs_timeout).await?;
    let mut exp = shared.expectation();
    exp.src_range = Some((shared.rank + 1, shared.world));
    validate(&hello, &exp).map_err(|e| format!("{e} (claimed rank {})", hello.src_rank))?;
    let peer = hello.src_rank;
    let slot = &shared.peers[peer as usize].sockets[hello.socket_index as usize];
    if slot.claimed.swap(true, Ordering::AcqRel) {
        return Err(format!(
            "duplicate connection for rank {peer} socket {}",
            hello.socket_index
        ));
    }
    if let Err(e) = write_hello(
        &mut stream,
        &shared.hello_to(peer, hello.socket_index),
        hs_timeout,
    )
    .await
    {
        slot.claimed.store(false, Ordering::Release);
        return Err(e);
    }
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    let path = NicPath {
        ifname: nic.name.clone(),
        local,
        remote: from,
    };
    start_socket(&shared, peer, hello.socket_index, stream, path);
    Ok(())
}

async fn dial(
    shared: Arc<Shared>,
    peer: u32,
    idx: u16,
    local: Interface,
    remote: Endpoint,
    deadline: Instant,
    errs: Arc<Mutex<HashMap<(u32, u16), String>>>,
) {
    let cfg = &shared.cfg;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match dial_once(&shared, peer, idx, &local, &remote).await {
            Ok((stream, path)) => {
                shared.peers[peer as usize].sockets[idx as usize]
                    .claimed
                    .store(true, Ordering::Release);
                start_socket(&shared, peer, idx, stream, path);
                return;
            }
            Err(why) => {
                debug!(
                    rank = shared.rank,
                    peer, idx, attempt, "dial {} via {}: {why}", remote.addr, local.name
                );
                errs.lock().expect("errors").insert((peer, idx), why);
                if Instant::now() + cfg.handshake_timeout.min(Duration::from_millis(100))
                    >= deadline
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50 + 50 * u64::from(attempt.min(10))))
                    .await;
            }
        }
    }
}

async fn dial_once(
    shared: &Shared,
    peer: u32,
    idx: u16,
    local: &Interface,
    remote: &Endpoint,
) -> Result<(TcpStream, NicPath), String> {
    let cfg = &shared.cfg;
    let sock = match remote.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    if let Some(b) = cfg.socket_buffer_bytes {
        let _ = sock.set_send_buffer_size(b as u32);
        let _ = sock.set_recv_buffer_size(b as u32);
    }
    let same_family = matches!(
        (local.addr, remote.addr),
        (IpAddr::V4(_), SocketAddr::V4(_)) | (IpAddr::V6(_), SocketAddr::V6(_))
    );
    if same_family {
        sock.bind(SocketAddr::new(local.addr, 0))
            .map_err(|e| format!("bind to {} {}: {e}", local.name, local.addr))?;
    }
    let mut stream =
        match tokio::time::timeout(cfg.handshake_timeout, sock.connect(remote.addr)).await {
            Err(_) => return Err("connect timed out".into()),
            Ok(r) => r.map_err(|e| format!("connect: {e}"))?,
        };
    write_hello(
        &mut stream,
        &shared.hello_to(peer, idx),
        cfg.handshake_timeout,
    )
    .await?;
    let reply = read_hello(&mut stream, cfg.handshake_timeout).await?;
    let mut exp = shared.expectation();
    exp.src_rank = Some(peer);
    validate(&reply, &exp)
        .map_err(|e| format!("rank {peer} answered with an invalid hello: {e}"))?;
    if reply.socket_index != idx {
        return Err(format!(
            "rank {peer} answered for socket {} instead of {idx}",
            reply.socket_index
        ));
    }
    let local_addr = stream.local_addr().map_err(|e| e.to_string())?;
    let ifname = if same_family {
        local.name.clone()
    } else {
        "(any)".into()
    };
    Ok((
        stream,
        NicPath {
            ifname,
            local: local_addr,
            remote: remote.addr,
        },
    ))
}

fn start_socket(shared: &Arc<Shared>, peer: u32, idx: u16, stream: TcpStream, path: NicPath) {
    tune_stream(&stream, &shared.cfg);
    let slot = &shared.peers[peer as usize].sockets[idx as usize];
    *slot.path.lock().expect("path") = Some(path.clone());
    let rx = slot
        .rx
        .lock()
        .expect("rx")
        .take()
        .expect("socket started twice");
    shared.touch_socket(peer, idx);
    debug!(rank = shared.rank, peer, idx, %path, "socket established");
    let (r, w) = stream.into_split();
    let abort = shared.abort_tx.subscribe();
    shared.spawn(
        true,
        writer(shared.clone(), peer, idx, w, rx, abort, path.clone()),
    );
    shared.spawn(true, reader(shared.clone(), peer, idx, r, path));
    let _ = shared.ready.send((peer, idx));
}

// ---------------------------------------------------------------------------
// Data path.

async fn write_frame(
    w: &mut OwnedWriteHalf,
    h: &FrameHeader,
    payload: &[u8],
) -> std::io::Result<()> {
    // Header and payload leave in one `writev`: no copy, and no separate
    // 40-byte segment ahead of every chunk (`TCP_NODELAY` is set).
    let head = h.encode();
    let (mut head_off, mut pay_off) = (0, 0);
    while pay_off < payload.len() || head_off < head.len() {
        let bufs = [
            std::io::IoSlice::new(&head[head_off..]),
            std::io::IoSlice::new(&payload[pay_off..]),
        ];
        let n = w.write_vectored(&bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len() - head_off);
        head_off += from_head;
        pay_off += n - from_head;
    }
    Ok(())
}

async fn write_goodbye(w: &mut OwnedWriteHalf, reason: &GoodbyeReason) {
    let payload = reason.encode();
    let h = FrameHeader::single(FrameKind::Goodbye, payload.len() as u32);
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let _ = write_frame(w, &h, &payload).await;
        let _ = w.shutdown().await;
    })
    .await;
}

async fn writer(
    shared: Arc<Shared>,
    peer: u32,
    idx: u16,
    mut w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
    mut abort: watch::Receiver<Option<GoodbyeReason>>,
    path: NicPath,
) {
    let slot = &shared.peers[peer as usize].sockets[idx as usize];
    let hb = shared.cfg.heartbeat_interval;
    loop {
        let out = tokio::select! {
            biased;
            r = abort.changed() => {
                let reason = abort.borrow().clone();
                if let (Ok(()), Some(reason)) = (r, reason) {
                    write_goodbye(&mut w, &reason).await;
                }
                return;
            }
            _ = slot.stop.notified() => {
                // The peer said goodbye on this socket: finish our half.
                let _ = tokio::time::timeout(Duration::from_millis(500), w.shutdown()).await;
                return;
            }
            o = rx.recv() => o,
            _ = tokio::time::sleep(hb) => Some(Out::Frame(FrameHeader::single(FrameKind::Heartbeat, 0), Bytes::new())),
        };
        match out {
            None => return,
            Some(Out::Goodbye(reason)) => {
                write_goodbye(&mut w, &reason).await;
                return;
            }
            Some(Out::Frame(h, payload)) => {
                let mut write = Box::pin(write_frame(&mut w, &h, &payload));
                let res = tokio::select! {
                    biased;
                    _ = abort.changed() => {
                        // Abort mid-frame: finish the frame in flight (bounded, and
                        // within the engine's close notice) so that the goodbye
                        // naming the cause can follow it. If it cannot, the peer
                        // sees a bare EOF here and waits for the goodbye on our
                        // other sockets before blaming this rank.
                        let finished = matches!(
                            tokio::time::timeout(Duration::from_millis(250), &mut write).await,
                            Ok(Ok(()))
                        );
                        drop(write);
                        let reason = abort.borrow().clone();
                        if let (true, Some(reason)) = (finished, reason) {
                            write_goodbye(&mut w, &reason).await;
                        }
                        return;
                    }
                    r = &mut write => r,
                };
                if h.kind == FrameKind::Data {
                    metrics::Metrics::global()
                        .nic_inflight_add(&path.ifname, -(payload.len() as i64));
                }
                if res.is_ok() && h.kind == FrameKind::Data {
                    metrics::Metrics::global().nic_transmit(
                        &path.ifname,
                        None,
                        payload.len() as u64,
                    );
                }
                if let Err(e) = res {
                    // The reader of this socket sees the same failure after
                    // the bytes already queued for it, which may hold the
                    // peer's goodbye naming the real cause: let it win.
                    drop(rx);
                    shared
                        .report_lost(
                            peer,
                            format!("send failed on socket {idx}: {e}"),
                            path,
                            false,
                        )
                        .await;
                    return;
                }
            }
        }
    }
}

async fn reader(shared: Arc<Shared>, peer: u32, idx: u16, mut r: OwnedReadHalf, path: NicPath) {
    let limits = shared.cfg.limits;
    let ps = &shared.peers[peer as usize];
    let lost = |why: String| shared.report(peer, CloseReason::Lost(why), Some(path.clone()));
    loop {
        let mut hb = [0u8; FRAME_HEADER_LEN];
        if let Err(e) = r.read_exact(&mut hb).await {
            let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!("connection closed without goodbye on socket {idx}")
            } else {
                format!("receive failed on socket {idx}: {e}")
            };
            shared.report_lost(peer, why, path, true).await;
            return;
        }
        if shared.closing.load(Ordering::Acquire) {
            // Draining until the peer closes its half; content is irrelevant.
            let h = FrameHeader::decode(&hb, &limits);
            let Ok(h) = h else { return };
            let mut sink = vec![0u8; (h.chunk_len as usize).min(1 << 20)];
            let mut left = h.chunk_len as usize;
            while left > 0 {
                let n = left.min(sink.len());
                if r.read_exact(&mut sink[..n]).await.is_err() {
                    return;
                }
                left -= n;
            }
            continue;
        }
        let h = match FrameHeader::decode(&hb, &limits) {
            Ok(h) => h,
            Err(e) => {
                lost(format!("protocol error on socket {idx}: {e}"));
                return;
            }
        };
        shared.touch_socket(peer, idx);
        let whole = h.offset == 0 && u64::from(h.chunk_len) == h.total_len;
        let data = matches!(h.kind, FrameKind::Data | FrameKind::Control);
        if data && !whole {
            // One chunk of a larger message: straight into its buffer.
            let key = (h.kind as u8, h.comm, h.channel, h.seq);
            let (off, len) = (h.offset, u64::from(h.chunk_len));
            let (dst, fresh) = {
                let mut map = ps.reasm.lock().expect("reassembly");
                let part = map.entry(key).or_insert_with(|| {
                    let (buf, fresh) = RecvBuf::new_lazy(h.total_len as usize);
                    Partial {
                        buf,
                        fresh,
                        received: 0,
                        dtype: h.dtype,
                        claimed: BTreeMap::new(),
                    }
                });
                let overlaps = part
                    .claimed
                    .range(..off + len.max(1))
                    .next_back()
                    .is_some_and(|(_, &end)| end > off)
                    || part.claimed.contains_key(&off);
                if part.dtype != h.dtype || part.buf.len() as u64 != h.total_len || overlaps {
                    drop(map);
                    lost(format!(
                        "inconsistent chunks for comm {} channel {} seq {}",
                        h.comm, h.channel, h.seq
                    ));
                    return;
                }
                part.claimed.insert(off, off + len);
                // SAFETY: `off + len <= total_len` (checked by the decoder).
                let dst = unsafe { part.buf.as_mut_ptr().add(off as usize) };
                (ChunkDst(dst), part.fresh)
            };
            // SAFETY: the range is claimed by this reader alone, initialised,
            // and stays allocated until every claimed range is complete (so
            // it may also be faulted in, overwriting it).
            let chunk = unsafe {
                if fresh {
                    crate::recvbuf::prefault_range(dst.0, len as usize);
                }
                std::slice::from_raw_parts_mut(dst.0, len as usize)
            };
            if let Err(e) = r.read_exact(chunk).await {
                let why = format!("receive failed mid-frame on socket {idx}: {e}");
                shared.report_lost(peer, why, path, true).await;
                return;
            }
            if h.kind == FrameKind::Data {
                metrics::Metrics::global().nic_receive(&path.ifname, None, len);
            }
            shared.touch_socket(peer, idx);
            let done = {
                let mut map = ps.reasm.lock().expect("reassembly");
                let part = map.get_mut(&key).expect("claimed partial");
                part.received += len;
                if part.received >= h.total_len {
                    map.remove(&key).map(|p| p.buf.into_bytes())
                } else {
                    None
                }
            };
            if let Some(payload) = done {
                deliver(&shared, peer, &h, payload);
            }
            continue;
        }
        let mut payload = RecvBuf::new(h.chunk_len as usize);
        if let Err(e) = r.read_exact(payload.as_mut_slice()).await {
            let why = format!("receive failed mid-frame on socket {idx}: {e}");
            shared.report_lost(peer, why, path, true).await;
            return;
        }
        shared.touch_socket(peer, idx);
        match h.kind {
            FrameKind::Heartbeat => {}
            FrameKind::Goodbye => {
                match GoodbyeReason::decode(payload.as_slice()) {
                    Some(GoodbyeReason::Clean) => {
                        ps.sockets[idx as usize].stop.notify_one();
                        let closed = ps.clean_closed.fetch_add(1, Ordering::AcqRel) + 1;
                        if closed == ps.sockets.len() {
                            shared.report(peer, CloseReason::Clean, Some(path.clone()));
                        }
                    }
                    Some(GoodbyeReason::Abort {
                        cause_rank,
                        message,
                    }) => {
                        // The peer reads no more: finish our half of this socket too.
                        ps.sockets[idx as usize].stop.notify_one();
                        shared.report(
                            peer,
                            CloseReason::Aborted {
                                cause_rank,
                                message,
                            },
                            Some(path.clone()),
                        );
                    }
                    None => lost(format!("malformed goodbye on socket {idx}")),
                }
                return;
            }
            FrameKind::Bootstrap => {
                lost(format!("unexpected bootstrap frame on data socket {idx}"));
                return;
            }
            FrameKind::Data | FrameKind::Control => {
                if h.kind == FrameKind::Data {
                    metrics::Metrics::global().nic_receive(
                        &path.ifname,
                        None,
                        u64::from(h.chunk_len),
                    );
                }
                deliver(&shared, peer, &h, payload.into_bytes());
            }
        }
    }
}

fn deliver(shared: &Shared, peer: u32, h: &FrameHeader, payload: Bytes) {
    let kind = if h.kind == FrameKind::Data {
        MessageKind::Data
    } else {
        MessageKind::Control
    };
    let msg = Message {
        kind,
        dtype: h.dtype,
        comm: h.comm,
        channel: h.channel,
        seq: h.seq,
        payload,
    };
    let _ = shared.events.send(TransportEvent::Message { peer, msg });
}

async fn monitor(shared: Arc<Shared>) {
    let tick = (shared.cfg.heartbeat_interval / 2).max(Duration::from_millis(10));
    let limit = shared.cfg.peer_timeout.as_millis() as u64;
    loop {
        tokio::time::sleep(tick).await;
        let now = shared.now_ms();
        for (p, st) in shared.peers.iter().enumerate() {
            if p as u32 == shared.rank || st.reported.load(Ordering::Acquire) {
                continue;
            }
            let silent = now.saturating_sub(st.last_heard_ms.load(Ordering::Relaxed));
            if silent > limit {
                let nic = shared.first_path(p as u32);
                metrics::Metrics::global().peer_timeout();
                shared.report(
                    p as u32,
                    CloseReason::Stuck {
                        silent_for: Duration::from_millis(silent),
                    },
                    nic,
                );
            }
        }
    }
}

impl TcpTransport {
    fn check_peer(&self, peer: u32) -> Result<(), TransportError> {
        let sh = &self.shared;
        if peer >= sh.world || peer == sh.rank {
            return Err(TransportError::NoSuchPeer(peer));
        }
        if sh.closing.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        Ok(())
    }

    /// Splits `msg` into frames of at most `chunk_bytes` (control messages:
    /// one frame) and deals them round-robin over `sockets` of `peer`.
    fn enqueue(&self, peer: u32, sockets: &[usize], msg: Message) -> Result<(), TransportError> {
        let sh = &self.shared;
        let ps = &sh.peers[peer as usize];
        let kind = match msg.kind {
            MessageKind::Data => FrameKind::Data,
            MessageKind::Control => FrameKind::Control,
        };
        let total = msg.payload.len();
        let chunk = if kind == FrameKind::Control {
            usize::MAX
        } else {
            sh.cfg.chunk_bytes
        };
        let nchunks = if total == 0 { 1 } else { total.div_ceil(chunk) };
        let start = if sockets.len() > 1 {
            ps.rr.fetch_add(nchunks, Ordering::Relaxed)
        } else {
            0
        };
        let n = sockets.len().max(1);
        for i in 0..nchunks {
            let off = i * chunk;
            let len = chunk.min(total - off);
            let h = FrameHeader {
                kind,
                dtype: msg.dtype,
                comm: msg.comm,
                channel: msg.channel,
                seq: msg.seq,
                total_len: total as u64,
                offset: off as u64,
                chunk_len: u32::try_from(len).map_err(|_| TransportError::Io {
                    context: "send".into(),
                    message: "control message larger than 4 GiB".into(),
                })?,
            };
            let idx = sockets.get((start + i) % n).copied().unwrap_or(0);
            if kind == FrameKind::Data
                && let Some(p) = ps.sockets[idx].path.lock().expect("path").as_ref()
            {
                metrics::Metrics::global().nic_inflight_add(&p.ifname, len as i64);
            }
            ps.sockets[idx]
                .tx
                .send(Out::Frame(h, msg.payload.slice(off..off + len)))
                .map_err(|_| {
                    // The socket's writer ended: the peer said goodbye on it
                    // or it failed; its PeerClosed event follows.
                    if sh.closing.load(Ordering::Acquire) {
                        TransportError::Closed
                    } else {
                        TransportError::PeerGone(peer)
                    }
                })?;
        }
        Ok(())
    }
}

impl Transport for TcpTransport {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn send(&self, peer: u32, msg: Message) -> Result<(), TransportError> {
        self.check_peer(peer)?;
        let sh = &self.shared;
        if msg.kind == MessageKind::Control {
            let one = [sh.control_socket(peer)];
            return self.enqueue(peer, &one, msg);
        }
        let usable = sh.usable(peer);
        self.enqueue(peer, &usable, msg)
    }

    fn send_on(&self, peer: u32, ifname: &str, msg: Message) -> Result<(), TransportError> {
        self.check_peer(peer)?;
        let ps = &self.shared.peers[peer as usize];
        let on: Vec<usize> = (0..ps.sockets.len())
            .filter(|&i| ps.sockets[i].on_nic(ifname))
            .collect();
        match on.len() {
            0 => self.send(peer, msg),
            1 => self.enqueue(peer, &on, msg),
            n => {
                // Several sockets on that NIC: one of them, whole.
                let pick = [on[ps.rr.fetch_add(1, Ordering::Relaxed) % n]];
                self.enqueue(peer, &pick, msg)
            }
        }
    }

    fn set_nic_up(&self, ifname: &str, up: bool) {
        for (p, ps) in self.shared.peers.iter().enumerate() {
            if p as u32 == self.shared.rank {
                continue;
            }
            for s in ps.sockets.iter().filter(|s| s.on_nic(ifname)) {
                s.down.store(!up, Ordering::Relaxed);
            }
        }
    }

    fn path(&self, peer: u32) -> Option<PeerPath> {
        self.shared.first_path(peer).map(PeerPath::Nic)
    }

    fn close(&self, reason: GoodbyeReason) -> BoxFuture {
        let sh = self.shared.clone();
        let first = !sh.closing.swap(true, Ordering::AcqRel);
        Box::pin(async move {
            if first {
                for h in sh.tasks.lock().expect("tasks").drain(..) {
                    h.abort(); // acceptors, dialers, monitor
                }
                match &reason {
                    GoodbyeReason::Clean => {
                        for (p, st) in sh.peers.iter().enumerate() {
                            if p as u32 != sh.rank {
                                for s in &st.sockets {
                                    let _ = s.tx.send(Out::Goodbye(GoodbyeReason::Clean));
                                }
                            }
                        }
                    }
                    abort => {
                        sh.abort_tx.send_replace(Some(abort.clone()));
                    }
                }
            }
            // Wait for writers to say goodbye and readers to see the peers' EOF;
            // the caller bounds this with a timeout and then drops the runtime.
            let handles: Vec<JoinHandle<()>> =
                sh.io_tasks.lock().expect("tasks").drain(..).collect();
            let aborters: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
            struct AbortOnDrop(Vec<tokio::task::AbortHandle>);
            impl Drop for AbortOnDrop {
                fn drop(&mut self) {
                    for a in &self.0 {
                        a.abort();
                    }
                }
            }
            let _guard = AbortOnDrop(aborters);
            for h in handles {
                let _ = h.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_warnings_are_rate_limited() {
        let every = Duration::from_secs(10);
        let mut l = RateLimiter::new(3, every, 2);
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // The first three from an address in full, each address on its own.
        for i in 0..3 {
            assert_eq!(l.check(a, at(i)), JunkLog::Warn);
        }
        assert_eq!(l.check(b, at(3)), JunkLog::Warn);
        // Then one summary at once, and silence until `every` has passed.
        assert_eq!(l.check(a, at(4)), JunkLog::Summary { left_out: 0 });
        for i in 0..1000 {
            assert_eq!(l.check(a, at(5 + i)), JunkLog::Quiet);
        }
        assert_eq!(l.check(b, at(2000)), JunkLog::Warn);
        assert_eq!(l.check(b, at(2001)), JunkLog::Warn);
        assert_eq!(l.check(b, at(2002)), JunkLog::Quiet);
        assert_eq!(l.check(a, at(9_999)), JunkLog::Quiet);
        // The next summary counts what was left out.
        assert_eq!(l.check(a, at(10_004)), JunkLog::Summary { left_out: 1002 });
        assert_eq!(l.check(b, at(10_005)), JunkLog::Quiet);
        assert_eq!(l.check(a, at(20_004)), JunkLog::Summary { left_out: 1 });
        // Past `max_addrs` addresses, a new address gets no warnings in full.
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        assert_eq!(l.check(c, at(20_005)), JunkLog::Quiet);
        assert_eq!(l.check(c, at(40_000)), JunkLog::Summary { left_out: 1 });
    }

    #[test]
    fn a_flood_logs_a_few_lines() {
        // 1,600 junk connections from one address in a minute: 3 warnings in
        // full, then one per 10 s.
        let mut l = RateLimiter::new(3, Duration::from_secs(10), 1024);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let logged = (0..1600u64)
            .filter(|i| {
                let now = t0 + Duration::from_micros(i * 37_500);
                l.check(a, now) != JunkLog::Quiet
            })
            .count();
        assert_eq!(logged, 3 + 6);
    }
}

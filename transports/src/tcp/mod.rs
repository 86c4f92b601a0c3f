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

mod connect;
mod data;
mod hello;

use connect::{accept_loop, dial};
use data::monitor;
pub use hello::{read_hello, read_single_frame, write_hello, write_single_frame};

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
    /// A socket established (`Ok`), or a peer set up with another number
    /// of sockets per peer (`Err`, fatal: see [`sockets_mismatch`]).
    ready: mpsc::UnboundedSender<Result<(u32, u16), String>>,
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
        // A peer set up with another socket count: this rank fails, after
        // answering for a moment longer the ranks that dial it (they learn
        // the mismatch from its answer, instead of finding its port closed
        // and waiting out the setup timeout).
        let mut mismatch: Option<(String, Instant)> = None;
        while established < expected || mismatch.is_some() {
            let until = mismatch.as_ref().map_or(deadline, |m| m.1.min(deadline));
            match tokio::time::timeout_at(until.into(), ready_rx.recv()).await {
                Ok(Some(Ok(_))) => established += 1,
                Ok(Some(Err(why))) => {
                    if mismatch.is_none() {
                        mismatch = Some((why, Instant::now() + MISMATCH_LINGER));
                    }
                }
                Err(_) if mismatch.is_some() => {
                    let (why, _) = mismatch.take().expect("checked");
                    shared.closing.store(true, Ordering::Release);
                    abort_all(&shared);
                    return Err(TransportError::Mismatch(why));
                }
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

/// How long a rank that found a socket-count mismatch keeps answering the
/// ranks that dial it before it fails ([`TcpTransport::establish`]).
const MISMATCH_LINGER: Duration = Duration::from_millis(500);

/// What a rank says when a peer of the job (its hello carried the job's
/// secret and world) uses `theirs` TCP connections per peer where this rank
/// uses `ours`: the two would wait for connections the other never makes.
pub(super) fn sockets_mismatch(peer: u32, theirs: u16, ours: u16) -> String {
    format!(
        "rank {peer} makes {theirs} TCP connection(s) per peer and this rank {ours}: \
         ZCCL_NSOCKS_PERPEER must be the same on every rank (unset, it is one per NIC, \
         the most NICs any rank selected)"
    )
}

fn abort_all(shared: &Shared) {
    for h in shared.tasks.lock().expect("tasks").drain(..) {
        h.abort();
    }
    for h in shared.io_tasks.lock().expect("tasks").drain(..) {
        h.abort();
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

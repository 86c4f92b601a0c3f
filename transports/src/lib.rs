//! zccl transports: how bytes move between ranks.
//!
//! * [`Transport`] — the seam every transport implements: enqueue a whole
//!   message for a peer without waiting for the receiver, and report incoming
//!   messages and peer loss as [`TransportEvent`]s.
//! * [`clock`] — a monotonic clock cheap enough for the per-operation path
//!   (the time-stamp counter where the kernel keeps time on it), whose
//!   readings mean the same instant in every process of the host.
//! * [`frame`] — the 40-byte frame header codec and length bounds (pure).
//! * [`handshake`] — the `Hello` that opens every connection: magic, protocol
//!   version, job secret, ranks (pure).
//! * [`ifname`] — `ZCCL_SOCKET_IFNAME` parsing and NIC selection (pure, plus
//!   one function that lists the host's interfaces).
//! * [`tcp`] — the TCP transport on tokio: several sockets per peer, each bound
//!   to a chosen local NIC, messages striped across them, heartbeats to detect
//!   stuck peers.
//! * [`shm`] — the shared-memory transport between ranks of one host and one
//!   network namespace: one `/dev/shm` segment per pair of ranks holding two
//!   single-producer/single-consumer byte rings, bounded spinning then
//!   `futex` waits, segments unlinked as soon as both ranks mapped them;
//!   large messages copied once, straight from the sender's memory, by
//!   cross-memory attach; [`Transport::poll`] for waiting user threads.
//! * `cma` (private) — cross-memory attach (`process_vm_readv`): the
//!   shared-memory transport's single copy of large messages.
//! * [`copy`] — message bytes copied without x86's short-distance
//!   `rep movsb` trap (10–20× slower copies when the destination is 1–63
//!   bytes ahead of the source modulo 4 KiB).
//! * [`recvbuf`] — receive buffers: each received byte is copied once, into
//!   memory that is handed up without another copy and recycled.
//! * [`hybrid`] — [`hybrid::HybridTransport`]: routes each peer to shared
//!   memory or TCP and keeps TCP as the liveness/control path of every peer
//!   (heartbeats, goodbyes, dead-peer detection), so a peer reached over shared
//!   memory fails exactly as promptly as one reached over TCP.
//!
//! **Not built yet:** the RDMA verbs transport and CUDA device memory. They
//! will implement [`Transport`]; nothing in this crate pretends to provide
//! them today.

#![warn(missing_docs)]

pub mod clock;
mod cma;
pub mod copy;
pub mod frame;
pub mod handshake;
pub mod hybrid;
pub mod ifname;
pub mod landing;
pub mod metrics;
pub mod recvbuf;
pub mod shm;
pub mod tcp;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

pub use frame::GoodbyeReason;

/// Whether a message carries user data or a control message of the layer above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// User payload, possibly large, striped.
    Data,
    /// Small control message (acks, nacks), one frame.
    Control,
}

/// One whole message as the layer above sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Data or control.
    pub kind: MessageKind,
    /// Type code (opaque to the transport): the layer above puts the
    /// element type and the operation label here.
    pub dtype: u16,
    /// Communicator context id (opaque to the transport): keeps the traffic
    /// of communicators that share connections (e.g. after a split) apart.
    pub comm: u32,
    /// Channel (opaque to the transport).
    pub channel: u32,
    /// Sequence number (opaque to the transport).
    pub seq: u64,
    /// The bytes.
    pub payload: Bytes,
}

/// The path one peer connection takes: local NIC and both socket addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicPath {
    /// Local interface name.
    pub ifname: String,
    /// Local socket address.
    pub local: SocketAddr,
    /// Remote socket address.
    pub remote: SocketAddr,
}

impl fmt::Display for NicPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NIC {} {} -> {}", self.ifname, self.local, self.remote)
    }
}

/// How a peer is reached: a NIC path (TCP) or a shared-memory segment.
///
/// Its `Display` form is what error messages show.
///
/// ```
/// use zccl_transports::{NicPath, PeerPath};
/// let nic = NicPath { ifname: "lo".into(), local: "127.0.0.1:1".parse().unwrap(),
///                     remote: "127.0.0.1:2".parse().unwrap() };
/// assert_eq!(PeerPath::Nic(nic.clone()).to_string(), "NIC lo 127.0.0.1:1 -> 127.0.0.1:2");
/// let shm = PeerPath::Shm { segment: "/dev/shm/zccl-x-0-1".into(), control: Some(nic) };
/// assert_eq!(shm.to_string(),
///     "shm /dev/shm/zccl-x-0-1 (control: NIC lo 127.0.0.1:1 -> 127.0.0.1:2)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPath {
    /// A TCP connection leaving from a NIC.
    Nic(NicPath),
    /// A shared-memory segment (the name it had in `/dev/shm`; it is unlinked
    /// once both ranks mapped it) and the TCP path that carries the peer's
    /// liveness and goodbyes, when there is one.
    Shm {
        /// `/dev/shm/<name>`.
        segment: String,
        /// The control path.
        control: Option<NicPath>,
    },
}

impl fmt::Display for PeerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nic(n) => n.fmt(f),
            Self::Shm {
                segment,
                control: Some(c),
            } => write!(f, "shm {segment} (control: {c})"),
            Self::Shm {
                segment,
                control: None,
            } => write!(f, "shm {segment}"),
        }
    }
}

impl From<NicPath> for PeerPath {
    fn from(n: NicPath) -> Self {
        Self::Nic(n)
    }
}

/// Why a peer is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side in order; all it sent was delivered.
    Clean,
    /// The peer aborted (its communicator failed); `cause_rank` is the rank it blames.
    Aborted {
        /// The rank whose failure the peer reported, if any.
        cause_rank: Option<u32>,
        /// The peer's description of the cause.
        message: String,
    },
    /// A socket failed: reset, EOF without goodbye, or a protocol violation.
    Lost(String),
    /// Nothing was heard from the peer on any socket for `silent_for`.
    Stuck {
        /// How long the peer was silent.
        silent_for: Duration,
    },
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Clean => f.write_str("closed its communicator"),
            Self::Aborted { message, .. } => write!(f, "aborted: {message}"),
            Self::Lost(why) => write!(f, "was lost ({why})"),
            Self::Stuck { silent_for } => {
                write!(
                    f,
                    "is stuck or unreachable (silent for {:.1} s)",
                    silent_for.as_secs_f64()
                )
            }
        }
    }
}

/// A direct way into the progress engine for a transport's own threads:
/// called with a whole message, it either takes it at once (`Ok`) or hands
/// it back (`Err`, e.g. the engine is busy) for the event channel. See
/// [`Transport::set_deliver`].
///
/// ```
/// use std::sync::Arc;
/// use zccl_transports::{Deliver, Message};
/// // A hook that never takes anything: everything goes to the channel.
/// let d: Deliver = Arc::new(|_peer: u32, m: Message| Err(m));
/// # let _ = d;
/// ```
pub type Deliver = std::sync::Arc<dyn Fn(u32, Message) -> Result<(), Message> + Send + Sync>;

/// What a transport reports to the progress engine.
#[derive(Debug)]
pub enum TransportEvent {
    /// A whole message arrived from `peer`.
    Message {
        /// Sender rank.
        peer: u32,
        /// The message.
        msg: Message,
    },
    /// `peer` is gone; reported at most once per peer.
    PeerClosed {
        /// The peer rank.
        peer: u32,
        /// Why.
        reason: CloseReason,
        /// The path on which it was detected.
        path: Option<PeerPath>,
    },
}

/// Errors of transport setup and use.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TransportError {
    /// NIC selection failed.
    #[error(transparent)]
    Ifname(#[from] ifname::IfnameError),
    /// A socket operation failed during setup.
    #[error("{context}: {message}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        message: String,
    },
    /// Some peer connections were not established in time.
    #[error("connection setup timed out after {after:?}; missing: {missing}")]
    SetupTimeout {
        /// Elapsed time.
        after: Duration,
        /// Description of the missing connections.
        missing: String,
    },
    /// A rank of the job was set up differently, in a way the ranks must
    /// agree on (the number of TCP connections per peer): found at the
    /// first connection, instead of waiting out the setup timeout.
    #[error("ranks disagree on the transport's settings: {0}")]
    Mismatch(String),
    /// A peer rank outside the world.
    #[error("no such peer rank {0}")]
    NoSuchPeer(u32),
    /// The transport is closed.
    #[error("transport closed")]
    Closed,
    /// The connection to this peer is closing or closed (its goodbye was
    /// received or a socket failed). A [`TransportEvent::PeerClosed`] for the
    /// peer has been or will be reported, carrying the real cause (which may
    /// name another rank); callers should keep the op pending until then.
    #[error("connection to rank {0} is closing")]
    PeerGone(u32),
}

impl TransportError {
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, e: &std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            message: e.to_string(),
        }
    }
}

/// A boxed future, as returned by [`Transport::close`].
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The seam between the progress engine and a way of moving bytes.
///
/// Implementations own their connections and background tasks and report
/// incoming messages and peer loss on the event channel they were built with.
/// `send` only enqueues: it must never wait for the receiver to post a
/// receive, which is what lets batches complete in any op order. When `send`
/// fails with [`TransportError::PeerGone`], the peer's `PeerClosed` event is
/// guaranteed to follow (or to have been sent already).
/// Implementations: TCP ([`tcp::TcpTransport`]), shared memory
/// ([`shm::ShmTransport`]) and the per-peer router of both
/// ([`hybrid::HybridTransport`]). RDMA verbs and device memory will implement
/// it later.
pub trait Transport: Send + Sync + 'static {
    /// Short name for logs, e.g. `"tcp"` or `"shm"`.
    fn name(&self) -> &'static str;

    /// Enqueues `msg` for `peer`. Never blocks on the receiver.
    fn send(&self, peer: u32, msg: Message) -> Result<(), TransportError>;

    /// The path used to reach `peer` (for error messages).
    fn path(&self, peer: u32) -> Option<PeerPath>;

    /// Enqueues `msg` for `peer` on the connection that leaves from local
    /// NIC `ifname`, whole (not striped over other NICs): the router's
    /// executor uses it to put each chunk on the lane it planned. Transports
    /// without NICs (shared memory) and NICs this transport does not use
    /// fall back to [`Transport::send`].
    fn send_on(&self, peer: u32, ifname: &str, msg: Message) -> Result<(), TransportError> {
        let _ = ifname;
        self.send(peer, msg)
    }

    /// Enqueues `msg` for `peer`, whose payload is **lent**: it borrows
    /// memory its owner reuses as soon as the payload (`Bytes`) has been
    /// dropped by everyone who holds it, or once it has called
    /// [`Transport::withdraw`] for `peer`. A transport therefore must not
    /// read the payload in this process after `send_lent` returns: it either
    /// copies it here (the default does, then calls [`Transport::send`]) or
    /// lets only the peer copy it (shared memory's CMA records, which a
    /// withdrawal invalidates).
    fn send_lent(&self, peer: u32, mut msg: Message) -> Result<(), TransportError> {
        msg.payload = copy::to_bytes(&msg.payload);
        self.send(peer, msg)
    }

    /// The owner of lent payloads to `peer` stops waiting for them (a send
    /// that timed out or failed while the peer had not copied its payload
    /// yet) and will reuse their memory: the transport must make sure the
    /// peer never delivers a lent payload it copies from now on (shared
    /// memory marks the ring so that the peer's reader rejects every later
    /// CMA copy and closes the link as lost). Default: no-op (a transport
    /// whose `send_lent` copies holds no lent memory).
    fn withdraw(&self, peer: u32) {
        let _ = peer;
    }

    /// Tells the transport that local NIC `ifname` is up or down (the
    /// router's link watch): a transport stops putting striped data and
    /// control messages on connections of a NIC that is down. Default: no-op.
    fn set_nic_up(&self, ifname: &str, up: bool) {
        let _ = (ifname, up);
    }

    /// Delivers messages that already arrived complete and are small, without
    /// blocking and without waiting for the transport's own threads: calls
    /// `f(peer, msg)` for each, at most `max` of them, and returns how many.
    /// The progress engine calls it from a user thread that waits on a handle,
    /// to cut thread wake-ups out of the latency path. Messages delivered here
    /// are not also reported as events. Default: none.
    ///
    /// Messages of one peer reach `f` in the order they were sent, but a
    /// message delivered here may overtake an earlier one that the
    /// transport's threads already reported as an event and the event
    /// channel still holds: match messages by `(comm, channel, seq)`.
    /// `f` runs while the transport holds a per-peer lock: it must not wait
    /// for other messages of the transport (it may send, and may call
    /// `poll` again, which then skips that peer).
    fn poll(&self, max: usize, f: &mut dyn FnMut(u32, Message)) -> usize {
        let _ = (max, f);
        0
    }

    /// Installs a hook through which the transport's own threads may hand
    /// whole messages to the engine directly instead of through the event
    /// channel (one thread wake-up less per message: the engine's task); a
    /// message the hook hands back goes to the channel as before. Messages
    /// may then reach the engine out of order across the two paths, as with
    /// [`Transport::poll`]. Default: ignored.
    fn set_deliver(&self, hook: Deliver) {
        let _ = hook;
    }

    /// The landing zones this transport copies incoming messages into
    /// directly ([`landing`]), if it does (shared memory's CMA copies).
    /// Default: none (every message is copied at its match).
    fn landing(&self) -> Option<std::sync::Arc<landing::Landing>> {
        None
    }

    /// A thread starts (`true`) or stops (`false`) calling
    /// [`Transport::poll`] in a loop; calls pair up. While one polls, a
    /// transport may leave small messages to it instead of waking its own
    /// threads for them; when the last one stops, the transport's threads
    /// take over again, so nothing is left waiting. Default: no-op.
    fn set_polling(&self, on: bool) {
        let _ = on;
    }

    /// A polling thread stops ([`Transport::set_polling`]`(false)`) because
    /// the op it waited for completed, and this process is expected to poll
    /// again soon (its next op). The transport may then keep leaving small
    /// messages to the next poll for a short lease instead of waking its own
    /// threads for each (shared memory: [`shm::ShmConfig::poll_lease`]); a
    /// message nobody polls for is taken by the transport's threads after
    /// the lease (see there). Default: `set_polling(false)`.
    fn pause_polling(&self) {
        self.set_polling(false);
    }

    /// A thread starts (`true`) or stops (`false`) sleeping until an op
    /// completes, relying on the transport's own threads to deliver what it
    /// waits for; calls pair up. While one sleeps, no lease of
    /// [`Transport::pause_polling`] may keep those threads from being woken.
    /// Default: no-op.
    fn set_sleeping(&self, on: bool) {
        let _ = on;
    }

    /// Whether one of this transport's own threads is copying a large
    /// message in right now (shared memory: a reader thread's CMA copy of
    /// more than [`shm::POLL_MAX_CMA_BYTES`], counted from when it takes
    /// the record, a wait for the receive's buffer included). A waiting thread whose poll
    /// found nothing may then sleep rather than spin beside the copy where
    /// CPUs are short: it would only slow the copy down. Default: `false`.
    fn reader_copying(&self) -> bool {
        false
    }

    /// Closes every connection: a clean close delivers what is queued first;
    /// an abort drops queued data and tells peers the cause. The returned
    /// future resolves when the sockets are closed; callers bound it with a timeout.
    fn close(&self, reason: GoodbyeReason) -> BoxFuture;
}

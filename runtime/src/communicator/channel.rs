//! [`Channel`]: an ordered stream of a communicator's point-to-point ops,
//! and how its ops are issued: numbered, described, given a completion
//! slot, a landing zone or mark for a plain same-host receive
//! ([`plain_post`]), and handed to the progress engine on the caller's thread.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::buffer::{DType, Element, HostBuffer};
use crate::completion::Slot;
use crate::engine::{self, OpSpec};
use crate::error::{Error, OpDesc, OpKind, Result};
use crate::handle::{BatchHandle, Pending, RecvHandle, SendHandle};
use crate::ids::SERVICE_COMM_BIT;
use crate::label::OpLabel;
use crate::lend::LentSendHandle;

use super::numbering::IssueState;
use super::shared::Inner;

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

/// What the ops of one issue share: their communicator context, one clock
/// reading, and how their memory is used.
struct How {
    comm: u32,
    /// The issue time, on the cheap clock the metrics time ops with
    /// ([`zccl_transports::clock`]), and the deadline (on `Instant`'s,
    /// which the engine's timers keep; from the same reading,
    /// `clock::instant_of`).
    issued: u64,
    deadline: Instant,
    /// The payloads borrow the caller's memory ([`Channel::isend_lent`]).
    lent: bool,
    /// Where the receive lands ([`Channel::irecv_into`],
    /// [`Channel::irecv_combine`]).
    into: Option<Sink>,
    /// Where that receive goes, once posted.
    landed: Option<crate::land::Target>,
}

/// Where the receive of an issue goes, other than a buffer of its own.
enum Sink {
    /// This memory (`ptr`, `len` bytes; [`Channel::irecv_into`]).
    Memory(*mut u8, usize),
    /// A combining zone's sink ([`Channel::irecv_combine`]).
    Combine(zccl_transports::landing::Combine),
}

impl How {
    fn new(comm: u32, timeout: Duration, lent: bool, into: Option<Sink>) -> Self {
        let issued = zccl_transports::clock::ticks();
        How {
            comm,
            issued,
            deadline: zccl_transports::clock::instant_of(issued) + timeout,
            lent,
            into,
            landed: None,
        }
    }
}

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
    /// Completions in order per peer and direction only (see
    /// [`Channel::peerwise`]).
    peerwise: bool,
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
    /// Channel `id` of the communicator `inner`, with the configured
    /// timeout, no label; `service`: on its internal context.
    pub(super) fn new(inner: Arc<Inner>, id: u32, service: bool) -> Self {
        let timeout = inner.core.config.timeout;
        Channel {
            inner,
            id,
            timeout,
            service,
            label: None,
            op: OpLabel::NONE,
            peerwise: false,
        }
    }

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

    /// The same channel, with the completions of the ops issued through it
    /// kept in order per peer and direction only (MPI's and
    /// torch.distributed's `isend`/`irecv`), not across the channel: a
    /// send's handle is not held back behind an earlier receive from
    /// another peer, nor a receive behind a send. By default a channel's
    /// ops complete in the order they were issued, which makes a rank that
    /// waits for a send posted after receives from other peers wait for
    /// those receives first: with every rank doing so (receives from
    /// `r - 1` and `r - 2` posted, then a send to `r + 1` waited before the
    /// send to `r + 2` is issued), none completes before the timeout.
    /// Messages still match per peer in the order posted.
    ///
    /// ```
    /// use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
    /// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
    ///                                 std::time::Duration::from_secs(20)).unwrap();
    /// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
    /// let ch = comm.channel(9).peerwise();
    /// // A receive posted first does not hold the send's completion back.
    /// let r = ch.irecv::<u8>(0, 4).unwrap();
    /// ch.isend(0, vec![1u8; 4]).unwrap().wait().unwrap();
    /// assert_eq!(r.wait().unwrap().into_vec(), vec![1u8; 4]);
    /// ```
    pub fn peerwise(mut self) -> Self {
        self.peerwise = true;
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

    /// Checks what `op` asks for before anything is issued: a peer of this
    /// communicator, a size within `ZCCL_MAX_MESSAGE_BYTES`.
    fn check(&self, op: &Op) -> Result<()> {
        let max = self.inner.core.config.tcp.limits.max_message;
        let (peer, bytes) = match op {
            Op::Send { peer, data, .. } => (*peer, Some(data.len() as u64)),
            Op::Recv { peer, dtype, count } => {
                (*peer, (*count as u64).checked_mul(dtype.size() as u64))
            }
        };
        self.check_peer(peer)?;
        match bytes {
            Some(b) if b <= max => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "message to/from rank {peer} exceeds ZCCL_MAX_MESSAGE_BYTES ({max})"
            ))),
        }
    }

    /// The communicator context its ops go on, and that context's
    /// numbering.
    fn context(&self) -> (u32, &std::sync::Mutex<IssueState>) {
        if self.service {
            (
                self.inner.comm | SERVICE_COMM_BIT,
                &self.inner.service_issue,
            )
        } else {
            (self.inner.comm, &self.inner.issue)
        }
    }

    /// Issues the ops of an array (one op, or a send and a receive), with
    /// no collection on the way: their handles' sides, in the same order.
    /// `lent`: their payloads borrow the caller's memory (see
    /// [`Channel::isend_lent`]); `into`: where the receive among `ops`
    /// lands (see [`crate::land`]), and where it goes is returned. Either
    /// all are issued or, on an error, none.
    fn issue<const N: usize>(
        &self,
        ops: [Op; N],
        lent: bool,
        into: Option<Sink>,
    ) -> Result<([Pending; N], Option<crate::land::Target>)> {
        for op in &ops {
            self.check(op)?;
        }
        let (comm, state) = self.context();
        let mut how = How::new(comm, self.timeout, lent, into);
        let mut st = state.lock().expect("issue state");
        let prepared = ops.map(|op| self.prepare(&mut st, &mut how, op));
        // Issued here, on the caller's thread, in index order (`st` is held).
        let mut engine = engine::lock(&self.inner.core.engine);
        let pendings = prepared.map(|(pending, spec)| {
            engine.issue(spec);
            pending
        });
        engine.drain_local();
        drop(engine);
        drop(st);
        Ok((pendings, how.landed))
    }

    /// Gives up what is left of an operation on this channel: for a
    /// caller that stops an operation midway by an error of its own (a
    /// primitive whose callback failed), after which the ranks have sent
    /// each other different parts of it, and what they sent next would be
    /// matched as its missing messages. This rank's pending ops of the
    /// channel fail, and so do its later ones, with
    /// [`Error::OutOfStep`]; every other rank is
    /// told, and fails its pending and later ops of the channel the same
    /// way. Other channels, and the communicator, stay usable. The
    /// collectives and primitives of `zccl_primitives` call it where their
    /// caller's callback fails.
    ///
    /// ```
    /// use zccl_runtime::{BootstrapRoot, Communicator, Config, Error, UniqueId};
    /// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
    ///                                 std::time::Duration::from_secs(20)).unwrap();
    /// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
    /// let r = comm.channel(3).irecv::<u8>(0, 4).unwrap();
    /// comm.channel(3).abandon();
    /// assert!(matches!(r.wait(), Err(Error::OutOfStep { .. })));
    /// let later = comm.channel(3).isend(0, vec![1u8]).unwrap();
    /// assert!(later.wait().unwrap_err().to_string().contains("out of step"));
    /// // Another channel is unaffected.
    /// let r = comm.channel(4).irecv::<u8>(0, 1).unwrap();
    /// comm.channel(4).isend(0, vec![7u8]).unwrap().wait().unwrap();
    /// assert_eq!(r.wait().unwrap().into_vec(), vec![7u8]);
    /// ```
    pub fn abandon(&self) {
        let (comm, _) = self.context();
        let mut engine = engine::lock(&self.inner.core.engine);
        engine.abandon((comm, self.id), &self.inner.members);
        engine.drain_local();
    }

    /// [`Channel::issue`] of any number of ops ([`Channel::batch`]).
    ///
    /// Its first lines (checks, clock, numbering lock) are `issue`'s,
    /// written again: one helper returning the reading and the lock for
    /// both measured 2-3 % slower in `op_cost` (566 against 576-585 ns per
    /// pair, 4 interleaved runs), as did deriving the slot's deadline
    /// from its issue time and timeout instead of keeping it.
    fn issue_vec(&self, ops: Vec<Op>) -> Result<Vec<Pending>> {
        for op in &ops {
            self.check(op)?;
        }
        let (comm, state) = self.context();
        let mut how = How::new(comm, self.timeout, false, None);
        let mut st = state.lock().expect("issue state");
        let (pendings, specs): (Vec<_>, Vec<_>) = ops
            .into_iter()
            .map(|op| self.prepare(&mut st, &mut how, op))
            .unzip();
        engine::lock(&self.inner.core.engine).issue_all(specs);
        drop(st);
        Ok(pendings)
    }

    /// Numbers and describes `op`, gives it its slot (and a same-host plain
    /// receive its landing buffer or mark): the handle's side and the
    /// engine's.
    fn prepare(&self, st: &mut IssueState, how: &mut How, op: Op) -> (Pending, OpSpec) {
        let core = &self.inner.core;
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
        let index = if self.peerwise {
            // Numbered in the lane by a counter of its own: the sequence
            // numbers with the peer also count the channel's ordered ops
            // (`comm.channel(0)` beside `comm.isend`), which complete in
            // lane 0 and would leave gaps in this lane's order.
            let lane = engine::lane_of(peer, kind);
            engine::lane_index(lane, seqs.lanes.take(lane))
        } else {
            seqs.index += 1;
            seqs.index - 1
        };
        let peer = self.inner.members[peer as usize];
        let comm = how.comm;
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
        let slot = Arc::new(Slot::new(
            desc,
            how.issued,
            (how.deadline, self.timeout),
            Some(op_series(kind)),
        ));
        let key = zccl_transports::landing::LandKey {
            peer,
            comm,
            channel: self.id,
            seq,
        };
        // A plain receive from a same-host peer posts a buffer of its
        // own or a mark.
        let plain = (kind == OpKind::Recv
            && how.into.is_none()
            && core.via_shm.get(peer as usize).copied().unwrap_or(false))
        .then(|| plain_post(&core.config.shm, bytes))
        .flatten();
        let posted = match plain {
            Some(PlainPost::Scratch) => {
                crate::zone::Scratch::post(&core.transport, key, bytes as usize)
                    .map(crate::zone::Plain::Scratch)
            }
            Some(PlainPost::Mark) => crate::zone::Mark::post(&core.transport, key, bytes as usize)
                .map(crate::zone::Plain::Mark),
            None => None,
        }
        .map(Box::new);
        let mut zone = match posted.as_deref() {
            Some(crate::zone::Plain::Scratch(s)) => Some(s.zone()),
            _ => None,
        };
        let scratch = zone.is_some();
        if kind == OpKind::Recv
            && let Some(into) = how.into.take()
        {
            let t = match into {
                // SAFETY: `Channel::irecv_into`'s caller keeps the memory
                // valid and untouched until the handle is waited or dropped.
                Sink::Memory(ptr, len) => unsafe {
                    crate::land::Target::post(&core.transport, key, ptr, len)
                },
                // A combining zone, posted where the transport lands
                // messages of this size (else the handle hands the
                // message over when it is waited).
                Sink::Combine(c) => crate::land::Target::Zone(crate::zone::Landed::post_combining(
                    &core.transport,
                    key,
                    bytes as usize,
                    c,
                )),
            };
            zone = t.zone();
            how.landed = Some(t);
        }
        let pending = Pending {
            slot: slot.clone(),
            spin: Some(core.spin.clone()),
            plain: posted,
        };
        let spec = OpSpec {
            slot,
            payload,
            index,
            lent: how.lent,
            scratch,
            zone,
            label: self.op,
        };
        (pending, spec)
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
        let ([p], _) = self.issue([Op::send(peer, data)], false, None)?;
        Ok(SendHandle { p })
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
        let p = match self.issue([op], release.is_some(), None) {
            Ok(([p], _)) => p,
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
        let into = Sink::Memory(buf.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(buf));
        let ([p], landed) = self.issue([Op::recv::<T>(peer, buf.len())], false, Some(into))?;
        Ok(crate::land::RecvIntoHandle {
            p: Some(p),
            into: landed.expect("a receive has a destination"),
        })
    }

    /// Starts receiving `count` elements of `T` from `peer`, **handed to
    /// `combine` in pieces** instead of stored: `combine(offset, bytes)`
    /// gets each piece once, in order, `offset` in bytes from the
    /// message's start; a piece never splits an element (see
    /// [`zccl_transports::landing::Combine`]). From a same-host peer by CMA
    /// each piece is read from the sender's memory into a cache-sized
    /// buffer and handed over at once, on the thread that copies it; any
    /// other message is handed over whole by the handle's `wait` (or its
    /// drop, if the message came before). For a reduction of what arrives
    /// into memory of the caller's (the ring collectives' reduce-scatter):
    /// the message is read once and never written to memory whole.
    /// `combine` is not called once the handle's `wait` returned or its
    /// drop ended. A send of another size or type fails both, as with
    /// [`Channel::irecv`]; one of the same length may have been handed to
    /// `combine` before its type was compared, so what `combine` wrote is
    /// not to be used after a failed receive (as a failed
    /// [`Channel::irecv_into`]'s buffer).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
    /// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
    ///                                 std::time::Duration::from_secs(20)).unwrap();
    /// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
    /// let ch = comm.channel(3);
    /// let sum = Arc::new(Mutex::new(0i64));
    /// let s = sum.clone();
    /// let r = ch.irecv_combine::<i32>(0, 4, Box::new(move |_off: usize, b: &[u8]| {
    ///     for x in b.chunks_exact(4) {
    ///         *s.lock().unwrap() += i64::from(i32::from_ne_bytes(x.try_into().unwrap()));
    ///     }
    /// })).unwrap();
    /// ch.isend(0, vec![1i32, 2, 3, 4]).unwrap().wait().unwrap();
    /// r.wait().unwrap();
    /// assert_eq!(*sum.lock().unwrap(), 10);
    /// ```
    pub fn irecv_combine<T: Element>(
        &self,
        peer: u32,
        count: usize,
        combine: zccl_transports::landing::Combine,
    ) -> Result<crate::land::RecvIntoHandle> {
        let into = Sink::Combine(combine);
        let ([p], landed) = self.issue([Op::recv::<T>(peer, count)], false, Some(into))?;
        Ok(crate::land::RecvIntoHandle {
            p: Some(p),
            into: landed.expect("a receive has a destination"),
        })
    }

    /// Starts receiving `count` elements of `T` from `peer`. A send of another
    /// size or type fails both the receive and the send.
    pub fn irecv<T: Element>(&self, peer: u32, count: usize) -> Result<RecvHandle<T>> {
        let ([p], _) = self.issue([Op::recv::<T>(peer, count)], false, None)?;
        Ok(RecvHandle { p, _t: PhantomData })
    }

    /// Starts a send of `data` to `to` and a receive of `count` elements of
    /// `T` from `from`, issued together: one round of an exchange (as
    /// `MPI_Sendrecv`, non-blocking). The same as [`Channel::isend`] then
    /// [`Channel::irecv`], in one issue: the channel's state and the engine
    /// locked once, the clock read once. Both are issued or, on an error
    /// (an unknown peer, a message over `ZCCL_MAX_MESSAGE_BYTES`), neither.
    ///
    /// ```
    /// use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
    /// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
    ///                                 std::time::Duration::from_secs(20)).unwrap();
    /// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
    /// let ch = comm.channel(4);
    /// let (s, r) = ch.isend_irecv(0, vec![1i32, 2, 3], 0, 3).unwrap();
    /// assert_eq!(r.wait().unwrap().into_vec(), vec![1, 2, 3]);
    /// s.wait().unwrap();
    /// // Nothing is issued when a peer is unknown.
    /// assert!(ch.isend_irecv(0, vec![1i32], 5, 1).is_err());
    /// ```
    pub fn isend_irecv<T: Element>(
        &self,
        to: u32,
        data: impl Into<HostBuffer<T>>,
        from: u32,
        count: usize,
    ) -> Result<(SendHandle, RecvHandle<T>)> {
        // The send first: an eager send completes as it is issued, and
        // completions keep the issue order (a send behind the receive would
        // be held back until the receive is done).
        let ([send, recv], _) = self.issue(
            [Op::send(to, data), Op::recv::<T>(from, count)],
            false,
            None,
        )?;
        Ok((
            SendHandle { p: send },
            RecvHandle {
                p: recv,
                _t: PhantomData,
            },
        ))
    }

    /// Issues several ops at once. Whatever the order of the ops on each rank,
    /// the batch cannot deadlock (sends are eager). Ops to the same peer on
    /// the same channel are matched in the order they appear.
    pub fn batch(&self, ops: Vec<Op>) -> Result<BatchHandle> {
        Ok(BatchHandle {
            ops: self.issue_vec(ops)?,
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
        // Crowded CMA off: from the other threshold, past what a poll
        // copies (marks); CMA off: the large sizes alone (ring records
        // land in a posted zone too).
        let no_crowded = ShmConfig {
            crowded_cma_min_bytes: 0,
            ..d.clone()
        };
        const { assert!(CMA_MIN_BYTES > POLL_MAX_CMA_BYTES) };
        assert_eq!(plain_post(&no_crowded, CMA_MIN_BYTES as u64 - 1), None);
        assert_eq!(plain_post(&no_crowded, CMA_MIN_BYTES as u64), mark);
        let low = ShmConfig {
            cma_min_bytes: 64 << 10,
            ..no_crowded.clone()
        };
        assert_eq!(plain_post(&low, (64 << 10) - 1), None);
        assert_eq!(plain_post(&low, 64 << 10), buf);
        let off = ShmConfig {
            cma_min_bytes: 0,
            crowded_cma_min_bytes: 0,
            ..d
        };
        assert_eq!(plain_post(&off, POLL_MAX_CMA_BYTES as u64), None);
        assert_eq!(plain_post(&off, POLL_MAX_CMA_BYTES as u64 + 1), mark);
        assert_eq!(plain_post(&off, SCRATCH_MIN_BYTES as u64), buf);
    }
}

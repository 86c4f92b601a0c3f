//! Handles of non-blocking operations: `test()`, blocking `wait()` and an
//! async `wait_async()`.
//!
//! Every op carries a deadline fixed when it is issued (the channel's
//! timeout); the progress engine fails it with [`Error::Timeout`] at that
//! point, so every form of waiting ends. The blocking wait additionally stops
//! on its own a little after the deadline, in case the engine itself is gone.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use crate::buffer::{Element, HostBuffer, Received};
use crate::completion::{Outcome, Slot};
use crate::engine::EngineRef;
use crate::error::{Error, OpDesc, Result};

/// Slack after an op's deadline before a blocking wait gives up by itself.
const GRACE: Duration = Duration::from_secs(2);

/// One pending op as a handle sees it.
pub(crate) struct Pending {
    /// The op and its completion (its descriptor, deadline and timeout
    /// live there).
    pub(crate) slot: Arc<Slot>,
    /// What to make progress on while spinning, and for how long.
    pub(crate) spin: Option<Arc<Spin>>,
    /// A plain receive's own landing buffer or its mark
    /// ([`crate::zone::Plain`]; boxed: rare, and a handle is moved at every
    /// step of issuing and waiting).
    pub(crate) plain: Option<Box<crate::zone::Plain>>,
}

/// How a waiting thread spins (see `ZCCL_SPIN_US`).
#[derive(Clone)]
pub(crate) struct Spin {
    pub(crate) engine: EngineRef,
    pub(crate) transport: Arc<dyn zccl_transports::Transport>,
    pub(crate) budget: Duration,
    /// How long of `budget` it polls without yielding the core in between
    /// ([`tight_spin`]).
    pub(crate) tight: Duration,
    /// Whether a waiter sleeps rather than spins while a transport thread
    /// copies a large message in ([`yield_to_copies`]).
    pub(crate) yield_to_copies: bool,
    /// How much longer than `budget` it spins per MiB of the op it waits
    /// for (`ZCCL_SPIN_US_PER_MIB`, [`spin_budget`]).
    pub(crate) per_mib: Duration,
    /// The ops it spins longer for, by their bytes ([`spin_per_mib_sizes`]).
    pub(crate) per_mib_sizes: std::ops::RangeInclusive<u64>,
}

/// The ops a waiter spins longer for, per MiB of them ([`spin_budget`]),
/// by their bytes, given the ranks of this job on this host and the CPUs
/// they share: any, or where ranks outnumber CPUs, those of
/// [`CROWDED_SPIN_PER_MIB`].
pub(crate) fn spin_per_mib_sizes(local_ranks: usize, cpus: usize) -> std::ops::RangeInclusive<u64> {
    if zccl_transports::shm::crowded(local_ranks, cpus) {
        CROWDED_SPIN_PER_MIB
    } else {
        0..=u64::MAX
    }
}

/// Where ranks outnumber CPUs, the ops a waiter spins longer for: more than
/// 2 MiB up to 8 MiB, the smaller part of
/// [`CROWDED_POLL_CMA`](zccl_transports::shm::CROWDED_POLL_CMA), whose
/// messages the waiter's own polls copy there. Larger ops' copies, and
/// pipelines' pieces, are made by reader threads (or by the waiter's
/// polls, up to 16 MiB, when a record is there as it looks) beside the
/// other ranks' work on the same CPUs, and a waiter that spins (even
/// yielding between polls) takes CPU from them: 4 ranks on 2 vCPUs,
/// all-to-all 64 MiB, 6 interleaved rounds, each slower with the longer
/// spin (medians 31.6 against 29.1 ms, one round at 126 ms); sendrecv
/// 64 MiB 7 % slower; with 16 MiB records polled, all-to-all 64 MiB
/// 17.4 ms spinning through them against 16.5 not (see
/// docs/performance.md).
pub(crate) const CROWDED_SPIN_PER_MIB: std::ops::RangeInclusive<u64> = (2 << 20) + 1..=8 << 20;

/// The longest a waiter spins, however large its op.
pub(crate) const MAX_SPIN: Duration = Duration::from_secs(1);

/// How long a thread waiting for an op of `bytes` spins before it sleeps:
/// `budget` (`ZCCL_SPIN_US`), or `per_mib` for each MiB of the op where
/// that is longer (`ZCCL_SPIN_US_PER_MIB`) and `sizes` holds the op's
/// ([`spin_per_mib_sizes`]), at most [`MAX_SPIN`]; never, where
/// `budget` is zero (the user turned spinning off).
///
/// A large op's wait is mostly the copy it waits for (its own, or the
/// peer's out of its buffer): about 11 ms for 64 MiB here. A waiter that
/// slept through it took up to twice as long as one that spun: on a VM a
/// sleeping thread's vCPU halts, and the wake-up at the copy's end waits for
/// the host to run it again (2 ranks on 2 vCPUs, medians of 5 interleaved
/// rounds in one of this VM's slow phases, sendrecv 16 MiB 4.9 -> 1.5 ms,
/// 64 MiB 20.7 -> 13.0 ms, Open MPI, which never sleeps, 1.5 and 13.8 ms;
/// see docs/performance.md). Scaled by the op's size, a small op's wait
/// (most often on a peer that has not sent yet) still sleeps after
/// `budget`.
pub(crate) fn spin_budget(
    budget: Duration,
    per_mib: Duration,
    sizes: &std::ops::RangeInclusive<u64>,
    bytes: u64,
) -> Duration {
    if budget.is_zero() {
        return Duration::ZERO;
    }
    if !sizes.contains(&bytes) {
        return budget;
    }
    let scaled = per_mib.as_nanos().saturating_mul(u128::from(bytes)) >> 20;
    let scaled = Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX));
    budget.max(scaled).min(MAX_SPIN)
}

/// The longest a waiter polls back to back, never yielding its core.
const TIGHT_SPIN: Duration = Duration::from_micros(10);

/// While polling back to back, a waiter reads the clock (and asks whether a
/// transport thread copies a large message in) once per this many empty
/// polls.
const TIGHT_CHECK_EVERY: u32 = 8;

/// How long a waiting thread polls without yielding in between, given the
/// ranks of this job on this host and the CPUs they share
/// (the union of the local ranks' affinity masks,
/// [`zccl_transports::shm::shared_cpus_of`]: ranks bound one per core are
/// not oversubscribed, 2 ranks each bound to its own vCPU, 8 B ping-pong
/// 1.26 µs polling back to back against 1.55 µs yielding from the first
/// empty poll; ranks confined together to fewer CPUs are, 2 ranks under
/// `taskset -c 0`, 8 B all_reduce 15.7 µs polling back to back for
/// [`TIGHT_SPIN`] against 4.7 µs yielding at once).
///
/// With a core for each rank, yielding after each empty poll only delays
/// seeing the peer's message by a system call (a third of an 8 B
/// ping-pong's time here), so a waiter polls back to back for the first
/// [`TIGHT_SPIN`] (a small message's answer comes well within it), then
/// yields after each empty poll so the transport's own threads get a turn.
/// With more ranks than cores (oversubscribed) it yields from the first
/// empty poll, or the rank it waits for may not get to run at all: 4 ranks
/// on 2 cores spinning back to back take 30 times longer per small
/// all_reduce. Open MPI makes the same choice (`mpi_yield_when_idle` when
/// oversubscribed).
pub(crate) fn tight_spin(local_ranks: usize, cpus: usize, budget: Duration) -> Duration {
    if zccl_transports::shm::crowded(local_ranks, cpus) {
        Duration::ZERO
    } else {
        budget.min(TIGHT_SPIN)
    }
}

/// Whether a waiting thread sleeps rather than spins while one of the
/// transport's threads copies a large message in
/// ([`Transport::reader_copying`](zccl_transports::Transport::reader_copying)):
/// where this host's CPUs do not give every rank two (its waiting thread
/// and the copying one). A waiter spinning (and yielding) there took a CPU
/// from the copies of its own rank or of the peer, and the one whose copy
/// ran late issued its next op late. Together with the lease a sleeper
/// leaves when it wakes ([`SleepGuard`]), on 2 vCPUs, medians of 5
/// interleaved rounds: sendrecv 64 MiB over 2 ranks 11.39 -> 11.03 ms,
/// 12 MiB 1034 -> 982 us (Open MPI 11.00 ms, 981 us); all-to-all over 4
/// ranks was noise-bound (see docs/performance.md).
pub(crate) fn yield_to_copies(local_ranks: usize, cpus: usize) -> bool {
    zccl_transports::shm::full(local_ranks, cpus)
}

impl Spin {
    /// One poll of the transports on this thread, matching what arrived
    /// (nothing when another thread holds the engine: it is making progress
    /// too). Returns how many messages it took.
    fn poll(&self) -> usize {
        self.engine
            .try_lock()
            .map(|mut e| e.poll_with(self.transport.as_ref()))
            .unwrap_or(0)
    }
}

/// Tells the transport a thread polls it, for as long as it lives.
struct Polling<'a>(&'a dyn zccl_transports::Transport);

impl<'a> Polling<'a> {
    fn start(t: &'a dyn zccl_transports::Transport) -> Self {
        t.set_polling(true);
        Polling(t)
    }

    /// Stops polling because what it waited for is done: this thread is
    /// expected back with its next op soon, so small messages may wait for
    /// that poll for a short lease
    /// ([`Transport::pause_polling`](zccl_transports::Transport::pause_polling)).
    fn pause(self) {
        self.0.pause_polling();
        std::mem::forget(self);
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.set_polling(false);
    }
}

/// A thread sleeping until its transport's threads deliver what it waits for
/// ([`Pending::sleeping`]); it stops when this drops.
pub(crate) struct SleepGuard {
    transport: Arc<dyn zccl_transports::Transport>,
    /// Whether it leaves a poll lease when it wakes: only where waiters
    /// poll at all (`ZCCL_SPIN_US` not 0), or the lease would hold small
    /// messages back for polls that never come.
    lease: bool,
}

impl Drop for SleepGuard {
    /// The thread woke (its op done, or out of time): like a poller whose
    /// op completed, it is expected back with its next op soon, so it
    /// leaves a poll lease ([`Polling::pause`]). Without one, a large
    /// message its peer sent on right after the wake-up went to the reader
    /// thread, which copied it beside this thread while it issued its next
    /// op (see `Look::AwaitPost` in the shared-memory transport).
    fn drop(&mut self) {
        self.transport.set_sleeping(false);
        if self.lease {
            Polling::start(self.transport.as_ref()).pause();
        }
    }
}

impl Pending {
    /// The op's descriptor.
    pub(crate) fn desc(&self) -> &OpDesc {
        &self.slot.desc
    }

    /// Spins for up to the configured time (`ZCCL_SPIN_US`, longer for a
    /// large op: [`spin_budget`]), polling and
    /// matching messages that already arrived on this thread (no thread
    /// wake-up on the way), until `ready()`: the op's completion, or
    /// something a poll or the transport's threads bring about after it
    /// (the release of a lent buffer). Returns `None` once ready (leaving
    /// a poll lease behind); otherwise the caller is about to sleep, and
    /// the returned guard marks it sleeping for as long as it lives, so
    /// that no lease holds the transport's threads back meanwhile.
    pub(crate) fn spin_until(&self, ready: impl Fn() -> bool) -> Option<SleepGuard> {
        let spin = self.spin.as_ref()?;
        if ready() {
            return None;
        }
        // (`spin_budget` is zero exactly where `spin.budget` is.)
        if spin.budget.is_zero() {
            return self.sleeping();
        }
        let polling = Polling::start(spin.transport.as_ref());
        // The spin's limits, from the first clock reading: an op done by
        // the first poll reads no clock at all. (The cheap clock,
        // `zccl_transports::clock`: it is read every few polls.)
        let mut limits: Option<(u64, u64)> = None;
        // Empty polls left before the clock and the copies are looked at
        // again, while polling back to back.
        let mut unchecked = 0u32;
        loop {
            if ready() {
                break;
            }
            let got = spin.poll();
            if got != 0 && ready() {
                // Done by this poll: no clock read on the way out.
                break;
            }
            if got == 0 && unchecked > 0 {
                unchecked -= 1;
                continue;
            }
            let now = zccl_transports::clock::ticks();
            let (until, tight) = *limits.get_or_insert_with(|| {
                // Sized by the op only here: an op done by its first poll
                // never computes it.
                let budget = spin_budget(
                    spin.budget,
                    spin.per_mib,
                    &spin.per_mib_sizes,
                    self.slot.desc.bytes,
                );
                let ticks = zccl_transports::clock::to_ticks;
                (
                    now.saturating_add(ticks(budget)),
                    now.saturating_add(ticks(spin.tight)),
                )
            });
            if now >= until {
                break;
            }
            if got == 0 && spin.yield_to_copies && spin.transport.reader_copying() {
                // A transport thread copies a large message in: with CPUs
                // short, spinning beside it only slows it down.
                break;
            }
            if got == 0 && now >= tight {
                // Nothing yet: let a thread that shares this core (the peer
                // rank on an oversubscribed host, the transport's threads)
                // run. (Yielding after every empty poll measured best there;
                // spinning longer between yields, worse.)
                std::thread::yield_now();
            }
            if got == 0 && now < tight {
                // Back to back: each poll left without the clock reading
                // and the look at the copies is shorter, so a message is
                // seen sooner after it lands.
                unchecked = TIGHT_CHECK_EVERY - 1;
            }
        }
        // Out of time: a message that came in meanwhile is taken now, or
        // stopping to poll would hand it to the reader thread, and the op
        // would wait for the wake-ups of that thread and of the engine's
        // task. (Done, the thread pauses with a lease instead: what came
        // meanwhile stays for its next op's poll, off this op's path.)
        if !ready() {
            spin.poll();
        }
        if ready() {
            polling.pause();
            None
        } else {
            drop(polling);
            self.sleeping()
        }
    }

    /// Tells the transport this thread is about to sleep until something
    /// its threads deliver (no poll lease may hold them back meanwhile);
    /// it stops sleeping when the guard drops.
    pub(crate) fn sleeping(&self) -> Option<SleepGuard> {
        self.spin.as_ref().map(|s| {
            s.transport.set_sleeping(true);
            SleepGuard {
                transport: s.transport.clone(),
                lease: !s.budget.is_zero(),
            }
        })
    }

    /// Whether the op completed, after one poll for messages that arrived
    /// (a thread that only tests also makes progress, without a wake-up).
    pub(crate) fn test(&self) -> bool {
        if !self.slot.is_done()
            && let Some(spin) = &self.spin
        {
            spin.poll();
        }
        self.slot.is_done()
    }

    pub(crate) fn wait(&self) -> Outcome {
        let asleep = self.spin_until(|| self.slot.is_done());
        let outcome = self.slot.wait_until(self.slot.deadline + GRACE);
        drop(asleep);
        let outcome = outcome.unwrap_or_else(|| {
            Err(Error::Timeout {
                op: self.slot.desc.clone(),
                after: self.slot.timeout,
                nic: "progress engine unresponsive".into(),
                culprit: None,
                other_op: None,
                mine: crate::label::OpLabel::NONE,
                crossed: false,
            })
        });
        self.with_landed(outcome)
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.slot.poll_take(cx).map(|o| self.with_landed(o))
    }

    /// The outcome with a plain receive's landed data in it.
    fn with_landed(&self, o: Outcome) -> Outcome {
        match &self.plain {
            Some(s) => s.outcome(o),
            None => o,
        }
    }
}

/// An async wait: it relies on the engine and the transport's threads, so
/// while it is pending it counts as a sleeping thread (no poll lease holds
/// those threads back; see [`Pending::sleeping`]).
struct OutcomeFuture<'a>(&'a Pending, Option<SleepGuard>);

impl Future for OutcomeFuture<'_> {
    type Output = Outcome;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        match this.0.poll(cx) {
            Poll::Ready(o) => {
                this.1 = None;
                Poll::Ready(o)
            }
            Poll::Pending => {
                if this.1.is_none() {
                    this.1 = this.0.sleeping();
                }
                Poll::Pending
            }
        }
    }
}

/// Handle of a non-blocking send. Completes once the transport has the data
/// (up to [`flow::EAGER_MAX`](crate::flow::EAGER_MAX) bytes, eager), or when
/// the receiver matched it (larger ones).
#[must_use = "a send handle must be waited on to learn whether the send succeeded"]
pub struct SendHandle {
    pub(crate) p: Pending,
}

impl SendHandle {
    /// Whether the op has completed (successfully or not).
    pub fn test(&self) -> bool {
        self.p.test()
    }

    /// Blocks until the op completes or its deadline passes.
    pub fn wait(self) -> Result<()> {
        self.p.wait().map(|_| ())
    }

    /// Waits without blocking a thread.
    pub async fn wait_async(self) -> Result<()> {
        OutcomeFuture(&self.p, None).await.map(|_| ())
    }

    /// The op.
    pub fn op(&self) -> &OpDesc {
        self.p.desc()
    }
}

/// Handle of a non-blocking receive of `T`s.
#[must_use = "a receive handle must be waited on to get the data"]
pub struct RecvHandle<T: Element> {
    pub(crate) p: Pending,
    pub(crate) _t: PhantomData<fn() -> T>,
}

fn to_buffer<T: Element>(o: Option<Bytes>) -> HostBuffer<T> {
    HostBuffer::from_received(o.unwrap_or_default())
}

impl<T: Element> RecvHandle<T> {
    /// Whether the op has completed (successfully or not).
    pub fn test(&self) -> bool {
        self.p.test()
    }

    /// Blocks until the data arrived or the op failed.
    pub fn wait(self) -> Result<HostBuffer<T>> {
        self.p.wait().map(to_buffer)
    }

    /// Whether a same-host peer's message was copied straight into the
    /// buffer this receive returns, as it arrived (by CMA, or from the
    /// shared-memory ring; receives of CMA sizes up to 1 MiB and from 4 MiB
    /// from same-host peers post one; other messages come in a buffer of
    /// the transport's). Diagnostics and tests.
    ///
    /// ```
    /// use zccl_runtime::{BootstrapRoot, Communicator, Config, UniqueId};
    /// let root = BootstrapRoot::start("127.0.0.1:0".parse().unwrap(), UniqueId::random_secret().unwrap(),
    ///                                 std::time::Duration::from_secs(20)).unwrap();
    /// let comm = Communicator::init(&root.unique_id(), 0, 1, Config::default()).unwrap();
    /// let r = comm.irecv::<u8>(0, 3).unwrap();
    /// comm.isend(0, vec![1u8, 2, 3]).unwrap().wait().unwrap();
    /// // To itself: handed over in memory, no transport involved.
    /// assert!(!r.landed());
    /// assert_eq!(r.wait().unwrap().to_vec(), [1, 2, 3]);
    /// ```
    pub fn landed(&self) -> bool {
        self.p.plain.as_ref().is_some_and(|s| s.landed())
    }

    /// Waits without blocking a thread.
    pub async fn wait_async(self) -> Result<HostBuffer<T>> {
        OutcomeFuture(&self.p, None).await.map(to_buffer)
    }

    /// The op.
    pub fn op(&self) -> &OpDesc {
        self.p.desc()
    }
}

/// Handle of a batch; results come back in the order of the batch's ops.
#[must_use = "a batch handle must be waited on"]
pub struct BatchHandle {
    pub(crate) ops: Vec<Pending>,
}

fn batch_result(p: &Pending, o: Outcome) -> Result<Option<Received>> {
    o.map(|b| b.map(|bytes| Received::new(p.slot.desc.dtype, bytes)))
}

impl BatchHandle {
    /// Whether every op of the batch has completed.
    pub fn test(&self) -> bool {
        self.ops.iter().all(|p| p.test())
    }

    /// Blocks until every op completed; one result per op (`None` for sends).
    pub fn wait_all(self) -> Vec<Result<Option<Received>>> {
        self.ops.iter().map(|p| batch_result(p, p.wait())).collect()
    }

    /// Blocks until every op completed; the first error (in op order) if any failed.
    pub fn wait(self) -> Result<Vec<Option<Received>>> {
        self.wait_all().into_iter().collect()
    }

    /// Async form of [`BatchHandle::wait_all`].
    pub async fn wait_all_async(self) -> Vec<Result<Option<Received>>> {
        let mut out = Vec::with_capacity(self.ops.len());
        for p in &self.ops {
            let o = OutcomeFuture(p, None).await;
            out.push(batch_result(p, o));
        }
        out
    }

    /// Async form of [`BatchHandle::wait`].
    pub async fn wait_async(self) -> Result<Vec<Option<Received>>> {
        self.wait_all_async().await.into_iter().collect()
    }

    /// The ops, in batch order.
    pub fn ops(&self) -> Vec<&OpDesc> {
        self.ops.iter().map(|p| p.desc()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use zccl_transports::{BoxFuture, GoodbyeReason, Message, PeerPath, TransportError};

    use crate::buffer::DType;
    use crate::completion::Slot;
    use crate::engine::Engine;
    use crate::error::OpKind;

    #[test]
    fn a_large_op_spins_longer_before_its_waiter_sleeps() {
        let us = Duration::from_micros;
        let (budget, per_mib) = (us(300), us(250));
        let any = 0..=u64::MAX;
        // Small ops: the plain budget.
        assert_eq!(spin_budget(budget, per_mib, &any, 8), budget);
        assert_eq!(spin_budget(budget, per_mib, &any, 1 << 20), budget);
        // Large ones: per MiB, past the budget.
        assert_eq!(spin_budget(budget, per_mib, &any, 16 << 20), us(4000));
        assert_eq!(spin_budget(budget, per_mib, &any, 64 << 20), us(16000));
        // Never past a second, even for the largest op.
        assert_eq!(spin_budget(budget, per_mib, &any, u64::MAX), MAX_SPIN);
        assert_eq!(spin_budget(budget, Duration::MAX, &any, 1 << 20), MAX_SPIN);
        // Where ranks outnumber CPUs: per MiB for the sizes polls copy
        // there, the plain budget for others.
        assert_eq!(spin_per_mib_sizes(2, 2), any);
        assert_eq!(spin_per_mib_sizes(1, 64), any);
        let crowded = spin_per_mib_sizes(4, 2);
        assert_eq!(crowded, CROWDED_SPIN_PER_MIB);
        assert!(zccl_transports::shm::CROWDED_POLL_CMA.contains(crowded.end()));
        assert_eq!(spin_per_mib_sizes(9, 8), crowded);
        assert_eq!(spin_budget(budget, per_mib, &crowded, 2 << 20), budget);
        assert_eq!(spin_budget(budget, per_mib, &crowded, 4 << 20), us(1000));
        assert_eq!(spin_budget(budget, per_mib, &crowded, 8 << 20), us(2000));
        assert_eq!(
            spin_budget(budget, per_mib, &crowded, (8 << 20) + 1),
            budget
        );
        assert_eq!(spin_budget(budget, per_mib, &crowded, 64 << 20), budget);
        // Scaling off: the budget alone; spinning off: none at all.
        assert_eq!(spin_budget(budget, Duration::ZERO, &any, 64 << 20), budget);
        assert_eq!(
            spin_budget(Duration::ZERO, per_mib, &any, 64 << 20),
            Duration::ZERO
        );
    }

    /// A transport with nothing to deliver that counts the times a waiter
    /// went to sleep.
    #[derive(Default)]
    struct Quiet {
        sleeps: AtomicUsize,
    }

    impl zccl_transports::Transport for Quiet {
        fn name(&self) -> &'static str {
            "quiet"
        }
        fn send(&self, _peer: u32, _msg: Message) -> std::result::Result<(), TransportError> {
            Ok(())
        }
        fn path(&self, _peer: u32) -> Option<PeerPath> {
            None
        }
        fn set_sleeping(&self, on: bool) {
            if on {
                self.sleeps.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn close(&self, _reason: GoodbyeReason) -> BoxFuture {
            Box::pin(async {})
        }
    }

    /// Waits for a receive of `bytes` that another thread completes after
    /// `after`; returns how often the waiter slept.
    fn sleeps_waiting(bytes: u64, after: Duration) -> usize {
        let quiet = Arc::new(Quiet::default());
        let engine = Arc::new(Mutex::new(Engine::new(0, 2, quiet.clone(), None, 1 << 20)));
        let spin = Arc::new(Spin {
            engine,
            transport: quiet.clone(),
            budget: Duration::from_micros(300),
            tight: Duration::ZERO,
            yield_to_copies: false,
            per_mib: Duration::from_micros(250),
            per_mib_sizes: 0..=u64::MAX,
        });
        let desc = OpDesc {
            rank: 0,
            kind: OpKind::Recv,
            peer: 1,
            comm: 0,
            channel: 0,
            seq: 0,
            bytes,
            dtype: DType::U8,
        };
        let (now, timeout) = (std::time::Instant::now(), Duration::from_secs(60));
        let issued = zccl_transports::clock::ticks();
        let slot = Arc::new(Slot::new(desc, issued, (now + timeout, timeout), None));
        let p = Pending {
            slot: slot.clone(),
            spin: Some(spin),
            plain: None,
        };
        let done = std::thread::spawn(move || {
            std::thread::sleep(after);
            slot.complete(Ok(None));
        });
        assert!(p.wait().is_ok());
        done.join().unwrap();
        quiet.sleeps.load(Ordering::SeqCst)
    }

    #[test]
    fn a_waiter_sleeps_after_its_budget_unless_its_op_is_large() {
        // 8 B, done after 200 ms: the waiter spins its 300 us, then sleeps.
        assert_eq!(sleeps_waiting(8, Duration::from_millis(200)), 1);
        // 1 GiB (a 256 ms spin), done after 20 ms: it never sleeps.
        assert_eq!(sleeps_waiting(1 << 30, Duration::from_millis(20)), 0);
    }

    #[test]
    fn a_waiter_polls_back_to_back_only_while_every_rank_has_a_core() {
        let budget = Duration::from_micros(300);
        // A core for each rank: the first 10 us without yielding.
        assert_eq!(tight_spin(2, 2, budget), TIGHT_SPIN);
        assert_eq!(tight_spin(1, 64, budget), TIGHT_SPIN);
        // Never past the whole spin budget.
        let short = Duration::from_micros(4);
        assert_eq!(tight_spin(2, 8, short), short);
        // More ranks than cores: yield from the first empty poll.
        assert_eq!(tight_spin(4, 2, budget), Duration::ZERO);
        assert_eq!(tight_spin(9, 8, budget), Duration::ZERO);
        // Sleeping beside a transport thread's copy: where a rank has no
        // second CPU for it.
        assert!(yield_to_copies(2, 2));
        assert!(yield_to_copies(4, 2));
        assert!(yield_to_copies(5, 8));
        assert!(!yield_to_copies(4, 8));
        assert!(!yield_to_copies(1, 64));
    }
}

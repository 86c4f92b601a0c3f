//! [`ShmTransport`]: the links to every peer reached over shared memory, and
//! the [`Transport`] implementation over them (sends, polls, withdrawal,
//! close).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::config::CMA_CLOSE_WAIT;
use super::link::{Ctx, Link, Out};
use super::recv::poll_link;
use super::ring::{CMA_YES, RingStop};
use super::send::{record_bytes, write_msg};
use crate::frame::GoodbyeReason;
use crate::{BoxFuture, CloseReason, Message, PeerPath, Transport, TransportError};

/// The shared-memory implementation of [`Transport`] (see the module docs).
///
/// Dropping it stops its threads (within [`ShmConfig::wait_slice`]); the
/// mappings, and the payloads kept for the peers' CMA copies, go with the
/// last thread.
///
/// [`ShmConfig::wait_slice`]: super::ShmConfig::wait_slice
pub struct ShmTransport {
    pub(super) ctx: Arc<Ctx>,
    pub(super) links: Vec<Option<Arc<Link>>>,
    /// The links, densely (for polling).
    pub(super) live: Vec<Arc<Link>>,
    /// Where the next poll starts (round robin).
    pub(super) poll_next: AtomicUsize,
    /// Threads polling under this rank's own lease, not counted in the
    /// rings ([`ShmTransport::covered`]).
    pub(super) covered: std::sync::atomic::AtomicU32,
    /// The CPUs this host's ranks share ([`ShmTransport::shared_cpus`]).
    pub(super) shared_cpus: usize,
}

impl std::fmt::Debug for ShmTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmTransport")
            .field("rank", &self.ctx.rank)
            .field(
                "peers",
                &self.live.iter().map(|l| l.peer).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ShmTransport {
    /// The CPUs this host's ranks share, from every local rank's affinity
    /// mask, exchanged at setup ([`shared_cpus_of`](super::shared_cpus_of)):
    /// they are crowded when they outnumber them.
    pub fn shared_cpus(&self) -> usize {
        self.shared_cpus
    }

    /// Writes `msg` into the ring on the calling thread when it can go at
    /// once: the ring has room and nothing is queued before it (one thread
    /// wake-up less per message than handing it to the writer thread; never
    /// waits). `None`: it cannot, queue it ([`ShmTransport::queue`]).
    fn try_write_now(
        &self,
        link: &Link,
        peer: u32,
        msg: &Message,
    ) -> Option<Result<(), TransportError>> {
        if self.ctx.closing.load(Ordering::Acquire) {
            return Some(Err(TransportError::Closed));
        }
        if link.release_pending() {
            // The reader thread does it too; this only frees memory sooner.
            let _ = link.reap();
        }
        if link.backlog.load(Ordering::Acquire) == 0
            && let Ok(_producer) = link.producer.try_lock()
            && link.backlog.load(Ordering::Acquire) == 0
            && link.out_ring.has_room(record_bytes(link, msg) as u64)
        {
            return Some(match write_msg(link, msg) {
                Ok(()) => Ok(()),
                Err(RingStop::Closed) => Err(TransportError::Closed),
                Err(RingStop::Corrupt(why)) => {
                    link.report(
                        &self.ctx,
                        CloseReason::Lost(format!("shm ring to the peer: {why}")),
                    );
                    Err(TransportError::PeerGone(peer))
                }
            });
        }
        None
    }

    /// Hands `msg` to the link's writer thread, behind what is queued.
    fn queue(&self, link: &Link, peer: u32, msg: Message) -> Result<(), TransportError> {
        let tx = link.tx.lock().expect("shm tx");
        let tx = tx.as_ref().ok_or(TransportError::Closed)?;
        link.backlog.fetch_add(1, Ordering::AcqRel);
        tx.send(Out::Msg(msg))
            // The writer thread stopped on a corrupt ring and reported the peer.
            .map_err(|_| TransportError::PeerGone(peer))
    }

    /// Whether a thread that starts polling now is covered by the poll
    /// lease of every ring from a peer for at least half a lease: the
    /// producers leave small records to polls then anyway, so the thread
    /// need not count itself in the rings. Counting in and out writes the
    /// line of the ring's control block that the producer reads at every
    /// send: two cross-core transfers per op in a ping-pong (8 B ping-pong
    /// 14 % faster, sendrecv 10 %, without them). A wait that outlasts the
    /// lease (`ZCCL_SPIN_US` above half a lease) then has small records
    /// delivered by the reader threads, as when nobody polls.
    fn covered(&self) -> bool {
        let half = self.ctx.poll_lease / 2;
        if half == 0 {
            return false;
        }
        let now = crate::clock::ticks();
        self.live
            .iter()
            .all(|l| l.in_ring.lease_until() >= now.saturating_add(half))
    }

    /// A poller stops: whether it was one that polled under the lease only
    /// ([`ShmTransport::covered`]). Calls pair up, not threads: any stopping
    /// poller takes a covered count first, which leaves the rings' count
    /// above zero for exactly as many pollers as are counted there.
    fn uncover(&self) -> bool {
        self.covered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
            .is_ok()
    }

    pub(super) fn link(&self, peer: u32) -> Option<&Arc<Link>> {
        self.links.get(peer as usize)?.as_ref()
    }

    fn stop_all(&self) {
        self.ctx.closing.store(true, Ordering::Release);
        self.ctx.watch.wake();
        for l in &self.live {
            l.stop();
        }
    }

    /// Whether messages of at least [`ShmConfig::cma_min_bytes`] to `peer`
    /// go by CMA (the peer accepted them at setup).
    ///
    /// Only meaningful once the peer finished its setup; `false` for a peer
    /// not reached over shared memory.
    ///
    /// [`ShmConfig::cma_min_bytes`]: super::ShmConfig::cma_min_bytes
    pub fn cma_to(&self, peer: u32) -> bool {
        self.link(peer).is_some_and(|l| {
            l.cma_min > 0 && l.out_ring.cma_ok().load(Ordering::Acquire) == CMA_YES
        })
    }

    /// Whether this rank copies large messages from `peer` by CMA (its probe
    /// of the peer succeeded at setup).
    pub fn cma_from(&self, peer: u32) -> bool {
        self.link(peer).is_some_and(|l| l.cma_from.is_some())
    }
}

impl Drop for ShmTransport {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Waits, on a thread of its own, until the peers copied the CMA payloads
/// this rank sent them, or [`CMA_CLOSE_WAIT`] passed.
async fn drain_kept(links: &[Arc<Link>]) {
    if links.iter().all(|l| l.kept_empty()) {
        return;
    }
    let (tx, rx) = oneshot::channel();
    let links = links.to_vec();
    let spawned = std::thread::Builder::new()
        .name("zccl-shm-drain".into())
        .spawn(move || {
            let until = Instant::now() + CMA_CLOSE_WAIT;
            for l in &links {
                while !l.kept_empty() && Instant::now() < until {
                    if l.reap().is_err() {
                        break;
                    }
                    if !l.kept_empty() {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            }
            let _ = tx.send(());
        });
    if spawned.is_ok() {
        let _ = rx.await;
    }
}

impl Transport for ShmTransport {
    fn name(&self) -> &'static str {
        "shm"
    }

    fn send(&self, peer: u32, msg: Message) -> Result<(), TransportError> {
        let link = self.link(peer).ok_or(TransportError::NoSuchPeer(peer))?;
        match self.try_write_now(link, peer, &msg) {
            Some(r) => r,
            None => self.queue(link, peer, msg),
        }
    }

    /// A lent message that goes by CMA is sent as it is (only the peer
    /// copies its payload). Any other is written into the ring from the
    /// lent memory when the ring takes all of it at once (the memory is
    /// free again when this returns); one queued for the writer thread
    /// (larger than the ring's free space, or behind others) is copied
    /// first (2 ranks, 4 KiB all_reduce in place: one allocation and one
    /// copy of the payload fewer per step; a 1 MiB message without CMA:
    /// two copies instead of three).
    fn send_lent(&self, peer: u32, mut msg: Message) -> Result<(), TransportError> {
        let link = self.link(peer).ok_or(TransportError::NoSuchPeer(peer))?;
        if let Some(r) = self.try_write_now(link, peer, &msg) {
            return r;
        }
        if !link.use_cma(&msg) {
            msg.payload = crate::copy::to_bytes(&msg.payload);
        }
        self.queue(link, peer, msg)
    }

    fn withdraw(&self, peer: u32) {
        if let Some(link) = self.link(peer) {
            link.withdraw();
        }
    }

    fn path(&self, peer: u32) -> Option<PeerPath> {
        self.link(peer).map(|l| PeerPath::Shm {
            segment: l.path.clone(),
            control: None,
        })
    }

    fn set_deliver(&self, hook: crate::Deliver) {
        let _ = self.ctx.deliver.set(hook);
    }

    fn landing(&self) -> Option<Arc<crate::landing::Landing>> {
        Some(self.ctx.landing.clone())
    }

    fn pause_polling(&self) {
        if self.ctx.poll_lease == 0 {
            return self.set_polling(false);
        }
        // The lease first, then the poller count: a producer that saw us
        // polling published before, and the next poll takes it, or the
        // reader thread, which the lease watcher wakes when the lease ends
        // (`super::watch`).
        let now = crate::clock::ticks();
        let until = now.saturating_add(self.ctx.poll_lease);
        // Whether a lease had run out (a long wait, or a sleeper ended it):
        // the lease watcher may then sleep past the new one's end.
        let mut ran_out = false;
        if self.uncover() {
            // Not counted in the rings: renew only a lease under half its
            // length, so that most ops leave the producers' line alone.
            let half = now.saturating_add(self.ctx.poll_lease / 2);
            for l in &self.live {
                let lease = l.in_ring.lease_until();
                if lease < half {
                    l.in_ring.renew_lease(until);
                    ran_out |= lease <= now;
                }
            }
        } else {
            ran_out = super::watch::lease_then_uncount(&self.live, now, until);
        }
        super::watch::lease_left(&self.live, &self.ctx, ran_out);
    }

    fn reader_copying(&self) -> bool {
        self.ctx.reader_copies.load(Ordering::Acquire) != 0
    }

    fn set_sleeping(&self, on: bool) {
        if on {
            self.ctx.sleepers.fetch_add(1, Ordering::SeqCst);
            super::watch::end_leases(&self.live);
        } else {
            self.ctx.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn set_polling(&self, on: bool) {
        if on && self.covered() {
            self.covered.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let counted = on || !self.uncover();
        for l in &self.live {
            let r = &l.in_ring;
            if on {
                r.polling().fetch_add(1, Ordering::SeqCst);
            } else {
                if counted {
                    r.polling().fetch_sub(1, Ordering::SeqCst);
                }
                fence(Ordering::SeqCst);
                // A record a producer left to us while we polled, or a
                // release of our CMA payloads: the reader thread takes it
                // from here. (A lease an earlier op left is ended by a
                // thread that goes on to sleep: `set_sleeping`.)
                if !matches!(r.pending(), Ok(false)) || l.release_pending() {
                    r.notify_reader();
                }
            }
        }
    }

    fn poll(&self, max: usize, f: &mut dyn FnMut(u32, Message)) -> usize {
        let n = self.live.len();
        if n == 0 || max == 0 {
            return 0;
        }
        // Round robin among several links (one link: no shared counter to
        // bump on every poll).
        let start = if n == 1 {
            0
        } else {
            self.poll_next.fetch_add(1, Ordering::Relaxed) % n
        };
        // Payloads the peers copied meanwhile (they do not wake our
        // reader thread for that while we poll).
        super::link::reap_released(&self.live);
        let mut got = 0;
        // Rounds of at most one message per link, so that a busy peer
        // cannot starve the others.
        loop {
            let before = got;
            for i in 0..n {
                if got == max {
                    return got;
                }
                if poll_link(&self.live[(start + i) % n], &self.ctx, &self.live, f) {
                    got += 1;
                }
            }
            if got == before {
                return got;
            }
        }
    }

    fn close(&self, reason: GoodbyeReason) -> BoxFuture {
        let first = !self.ctx.closing.swap(true, Ordering::AcqRel);
        // The lease watcher stops (a goodbye record wakes the readers for
        // whatever was left before it).
        self.ctx.watch.wake();
        let links = self.live.clone();
        Box::pin(async move {
            let clean = matches!(reason, GoodbyeReason::Clean);
            if first {
                match reason {
                    GoodbyeReason::Clean => {
                        // The goodbye record follows everything queued.
                        for l in &links {
                            if let Some(tx) = l.tx.lock().expect("shm tx").take() {
                                let _ = tx.send(Out::Goodbye);
                            }
                        }
                    }
                    GoodbyeReason::Abort { .. } => {
                        for l in &links {
                            l.stop();
                        }
                    }
                }
            }
            // Writers finish (clean) or stop (abort); then stop the readers.
            // If this future is dropped early, Drop of the transport stops all.
            let mut waits = Vec::new();
            for l in &links {
                let mut d = l.done.lock().expect("shm done");
                if !d.is_empty() {
                    waits.push(d.remove(0));
                }
            }
            for w in waits {
                let _ = w.await;
            }
            if clean {
                // The peers read our CMA payloads from our memory: let them
                // finish before this rank may free it.
                drain_kept(&links).await;
            } else {
                // An abort does not wait for them: withdraw them (a peer
                // still copying rejects what it copied, so memory this
                // process reuses is never delivered as data) and drop them.
                for l in &links {
                    l.withdraw();
                }
            }
            let mut readers = Vec::new();
            for l in &links {
                l.stop();
                readers.extend(l.done.lock().expect("shm done").drain(..));
            }
            for r in readers {
                let _ = r.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageKind;
    use crate::TransportEvent;
    use crate::shm::config::{CMA_MIN_BYTES, POLL_MAX_CMA_BYTES, POLL_MAX_PAYLOAD, ShmConfig};
    use crate::shm::record::REC_LEN;
    use crate::shm::testutil::{Side, cfg, expect_lost, msg, next, pair, wait_true, watched};

    /// Two ranks whose messages all go through the rings (no CMA): rank 0
    /// without a poll lease, rank 1 with `lease`; `slice`: both ranks'
    /// wait slice (long ones make a missed wake-up show), else the default.
    fn leased_pair(lease: Duration, slice: Option<Duration>) -> (Side, Side) {
        let cfg = |lease| ShmConfig {
            cma_min_bytes: 0,
            poll_lease: lease,
            full_poll_lease: lease,
            wait_slice: slice.unwrap_or(cfg().wait_slice),
            ..cfg()
        };
        pair(cfg(Duration::ZERO), cfg(lease))
    }

    /// A small record (sequence `seq`) rank 0 sends is left to rank 1's
    /// next poll: the reader thread does not deliver it meanwhile.
    fn left_to_the_poll(
        t0: &ShmTransport,
        t1: &ShmTransport,
        rx1: &mut tokio::sync::mpsc::UnboundedReceiver<TransportEvent>,
        seq: u64,
    ) {
        t0.send(1, msg(MessageKind::Data, seq, 8)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx1.try_recv().is_err(), "the reader thread took it");
        let mut got = Vec::new();
        assert_eq!(t1.poll(10, &mut |p, m| got.push((p, m))), 1);
        assert_eq!(got, vec![(0, msg(MessageKind::Data, seq, 8))]);
    }

    #[test]
    fn an_awake_reader_thread_leaves_small_records_to_attentive_pollers() {
        let ((t0, _rx0), (t1, mut rx1)) = leased_pair(Duration::from_secs(30), None);
        // Rank 1 polled and expects to poll again soon: its lease runs.
        t1.set_polling(true);
        t1.pause_polling();
        // A record too large for a poll wakes the reader thread; the small
        // one right behind it is already whole in the ring when the reader
        // is done with the large one.
        t0.send(1, msg(MessageKind::Data, 0, POLL_MAX_PAYLOAD + 1))
            .unwrap();
        t0.send(1, msg(MessageKind::Data, 1, 8)).unwrap();
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg: m } => {
                assert_eq!(m, msg(MessageKind::Data, 0, POLL_MAX_PAYLOAD + 1))
            }
            other => panic!("{other:?}"),
        }
        // The awake reader does not take the small one (it would, and every
        // later one, a wake-up chain per message): the next poll does.
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx1.try_recv().is_err(), "the reader took the small record");
        let mut got = Vec::new();
        assert_eq!(t1.poll(10, &mut |p, m| got.push((p, m))), 1);
        assert_eq!(got, vec![(0, msg(MessageKind::Data, 1, 8))]);
    }

    #[test]
    fn a_long_poll_copy_stays_attentive_then_leaves_a_lease() {
        // Rank 1 with a 300 ms lease that has run out (a poll's copy
        // outlasted it). Without the guard, the reader thread takes a small
        // record at once: the control that shows the guard is what keeps it.
        let lease = Duration::from_millis(300);
        let ((t0, _rx0), (t1, mut rx1)) = leased_pair(lease, Some(Duration::from_secs(5)));
        t0.send(1, msg(MessageKind::Data, 0, 8)).unwrap();
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg: m } => {
                assert_eq!(m, msg(MessageKind::Data, 0, 8))
            }
            other => panic!("{other:?}"),
        }
        // With the guard (a long copy under way), the next one waits for
        // the polls, past any lease, and after it for the renewed lease.
        let ring = &t1.link(0).unwrap().in_ring;
        let attending = super::super::watch::Attending::start(&t1.live, &t1.ctx);
        t0.send(1, msg(MessageKind::Data, 1, 8)).unwrap();
        std::thread::sleep(lease + Duration::from_millis(100));
        assert!(
            rx1.try_recv().is_err(),
            "the reader thread took it during the copy"
        );
        let before = crate::clock::ticks();
        drop(attending);
        assert_eq!(ring.polling().load(Ordering::SeqCst), 0);
        let held = crate::clock::to_duration(ring.lease_until().saturating_sub(before));
        assert!(
            held >= lease && held < lease + Duration::from_secs(1),
            "{held:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            rx1.try_recv().is_err(),
            "the reader thread took it under the lease"
        );
        let mut got = Vec::new();
        assert_eq!(t1.poll(10, &mut |p, m| got.push((p, m))), 1);
        assert_eq!(got, vec![(0, msg(MessageKind::Data, 1, 8))]);
        // Left unpolled, the lease watcher hands the next one over when the
        // renewed lease ends.
        let t = std::time::Instant::now();
        let attending = super::super::watch::Attending::start(&t1.live, &t1.ctx);
        t0.send(1, msg(MessageKind::Data, 2, 8)).unwrap();
        drop(attending);
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg: m } => {
                assert_eq!(m, msg(MessageKind::Data, 2, 8))
            }
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // While a thread of this rank sleeps (another waits on its op), the
        // copy's end leaves no lease: the reader thread takes a record that
        // comes after at once, not at the lease's end.
        t1.set_sleeping(true);
        let attending = super::super::watch::Attending::start(&t1.live, &t1.ctx);
        drop(attending);
        assert!(ring.lease_until() <= crate::clock::ticks());
        let t = std::time::Instant::now();
        t0.send(1, msg(MessageKind::Data, 3, 8)).unwrap();
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg: m } => {
                assert_eq!(m, msg(MessageKind::Data, 3, 8))
            }
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < lease, "{:?}", t.elapsed());
        t1.set_sleeping(false);
    }

    #[test]
    fn a_rank_holds_the_lease_its_host_calls_for() {
        // Distinct leases for a host with a spare CPU per rank and for a
        // full one: the pause leaves the one `poll_lease_for` picks for the
        // CPUs the two ranks share. (A setup that ignored the host would
        // hold 30 s everywhere: caught where the host is full, as on 2 CPUs.)
        let (roomy, full) = (Duration::from_secs(30), Duration::from_secs(90));
        let c = ShmConfig {
            cma_min_bytes: 0,
            poll_lease: roomy,
            full_poll_lease: full,
            ..cfg()
        };
        let ((_t0, _rx0), (t1, _rx1)) = pair(c.clone(), c.clone());
        let want = c.poll_lease_for(2, t1.shared_cpus());
        let ring = &t1.link(0).unwrap().in_ring;
        let before = crate::clock::ticks();
        t1.set_polling(true);
        t1.pause_polling();
        let held = crate::clock::to_duration(ring.lease_until() - before);
        // The pause reads the clock after `before`: at most a second later.
        assert!(
            held >= want && held < want + Duration::from_secs(1),
            "{held:?} {want:?}"
        );
    }

    #[test]
    fn a_poller_under_the_lease_leaves_the_producers_line_alone() {
        let ((t0, _rx0), (t1, mut rx1)) = leased_pair(Duration::from_secs(30), None);
        let ring = &t1.link(0).unwrap().in_ring;
        let count = || ring.polling().load(Ordering::SeqCst);
        // No lease yet: a poller counts itself in the ring.
        t1.set_polling(true);
        assert_eq!(count(), 1);
        t1.pause_polling();
        assert_eq!(count(), 0);
        let lease = ring.lease_until();
        assert!(lease > crate::clock::ticks());
        // Under the lease it does not, and its pause leaves the lease as it
        // is; a small record is still left to its poll.
        t1.set_polling(true);
        assert_eq!(count(), 0);
        left_to_the_poll(&t0, &t1, &mut rx1, 1);
        t1.pause_polling();
        assert_eq!(ring.lease_until(), lease);
        // Two pollers, one counted and one covered, stopping in either
        // order: the ring's count is back to zero.
        t1.set_polling(true); // covered
        assert_eq!(count(), 0);
        t1.set_sleeping(true); // ends the lease
        t1.set_polling(true); // counted
        t1.set_sleeping(false);
        assert_eq!(count(), 1);
        t1.set_polling(false);
        t1.set_polling(false);
        assert_eq!((count(), t1.covered.load(Ordering::SeqCst)), (0, 0));
        // With the lease ended by a sleeper, the next poller counts again.
        t1.set_sleeping(true);
        t1.set_sleeping(false);
        t1.set_polling(true);
        assert_eq!(count(), 1);
        t1.set_polling(false);
        assert_eq!(count(), 0);
    }

    /// `rx`'s next event, a message, and how long it took to come.
    fn timed_message(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<TransportEvent>,
    ) -> (Message, Duration) {
        let t0 = Instant::now();
        match next(rx) {
            TransportEvent::Message { peer: 0, msg: m } => (m, t0.elapsed()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_record_behind_a_left_one_is_not_kept_waiting() {
        // Long sleeps, so that a missed wake-up shows.
        let ((t0, _rx0), (t1, mut rx1)) =
            leased_pair(Duration::from_secs(30), Some(Duration::from_secs(3)));
        // A thread of rank 1 polls (and takes nothing): the small record is
        // left to it; the large one behind it wakes the reader thread,
        // which must take both.
        t1.set_polling(true);
        t0.send(1, msg(MessageKind::Data, 0, 8)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        t0.send(1, msg(MessageKind::Data, 1, POLL_MAX_PAYLOAD + 1))
            .unwrap();
        let (a, _) = timed_message(&mut rx1);
        let (b, took) = timed_message(&mut rx1);
        assert_eq!((a.seq, b.seq), (0, 1));
        assert!(took < Duration::from_secs(1), "{took:?}");
        t1.set_polling(false);
    }

    #[test]
    fn a_record_left_to_a_poller_that_stops_waits_about_a_lease() {
        let ((t0, _rx0), (t1, mut rx1)) =
            leased_pair(Duration::from_millis(100), Some(Duration::from_secs(3)));
        t1.set_polling(true);
        // Wake the reader thread (a record no poll takes), so that it goes
        // back to sleep while the thread polls.
        t0.send(1, msg(MessageKind::Data, 0, POLL_MAX_PAYLOAD + 1))
            .unwrap();
        timed_message(&mut rx1);
        std::thread::sleep(Duration::from_millis(20));
        // Left to the poller, which then stops with a lease, polling no more.
        t0.send(1, msg(MessageKind::Data, 1, 8)).unwrap();
        t1.pause_polling();
        let (m, took) = timed_message(&mut rx1);
        assert_eq!(m.seq, 1);
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn a_rank_that_keeps_renewing_its_lease_leaves_its_reader_thread_asleep() {
        // A 2 ms lease renewed op after op (every 200 us, by a thread of
        // rank 1); meanwhile the reader thread (5 s wait slices) takes a
        // message no poll takes and goes back to sleep under the lease. For
        // the next 300 ms the lease watcher looks at each lease's end; the
        // reader thread is not woken for it (it used to be, at every lease's
        // end: 271 times in 300 ms, checked on the old code).
        let ((t0, _rx0), (t1, mut rx1)) =
            leased_pair(Duration::from_millis(2), Some(Duration::from_secs(5)));
        let ring = &t1.link(0).unwrap().in_ring;
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    t1.set_polling(true);
                    t1.pause_polling();
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
            std::thread::sleep(Duration::from_millis(20));
            t0.send(1, msg(MessageKind::Data, 0, POLL_MAX_PAYLOAD + 1))
                .unwrap();
            let (m, _) = timed_message(&mut rx1);
            assert_eq!(m.seq, 0);
            let until = Instant::now() + Duration::from_secs(5);
            while ring.reader_waiting().load(Ordering::SeqCst) == 0 {
                assert!(Instant::now() < until, "the reader thread never slept");
                std::thread::yield_now();
            }
            let before = ring.sleeps_ended.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(300));
            let woke = ring.sleeps_ended.load(Ordering::Relaxed) - before;
            stop.store(true, Ordering::Relaxed);
            assert!(woke <= 2, "the reader thread woke {woke} times");
        });
    }

    #[test]
    fn a_lease_that_ran_out_under_an_uncounted_poller_is_renewed_awake() {
        let ((t0, _rx0), (t1, mut rx1)) =
            leased_pair(Duration::from_millis(100), Some(Duration::from_secs(3)));
        // A lease, and a poller under it that does not count itself.
        t1.set_polling(true);
        t1.pause_polling();
        t1.set_polling(true);
        assert_eq!(t1.covered.load(Ordering::SeqCst), 1);
        // The lease runs out while it polls: the reader thread looks at its
        // end, finds no lease and no counted poller, and sleeps a whole
        // (3 s) slice.
        std::thread::sleep(Duration::from_millis(300));
        // The poller stops, renewing the lease; a small record is then left
        // to the next poll, which never comes: the reader takes it when the
        // new lease runs out (not at the end of its 3 s slice).
        t1.pause_polling();
        t0.send(1, msg(MessageKind::Data, 1, 8)).unwrap();
        let (m, took) = timed_message(&mut rx1);
        assert_eq!(m.seq, 1);
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn poll_takes_small_whole_messages_in_order_and_leaves_the_rest() {
        // Without CMA, so that a message over the poll bound is a ring one.
        let ring_only = || ShmConfig {
            cma_min_bytes: 0,
            ..cfg()
        };
        let ((t0, _rx0), (t1, mut rx1)) = pair(ring_only(), ring_only());
        t1.ctx.pause_readers.store(true, Ordering::Release);
        // Sends that find room are written inline: in the ring on return.
        for i in 0..20 {
            let kind = if i % 3 == 0 {
                MessageKind::Control
            } else {
                MessageKind::Data
            };
            t0.send(1, msg(kind, i, i as usize * 200)).unwrap();
        }
        t0.send(1, msg(MessageKind::Data, 20, POLL_MAX_PAYLOAD + 1))
            .unwrap();
        for i in 21..26 {
            t0.send(1, msg(MessageKind::Data, i, 8)).unwrap();
        }
        let mut got = Vec::new();
        assert_eq!(t1.poll(3, &mut |p, m| got.push((p, m))), 3);
        assert_eq!(t1.poll(100, &mut |p, m| got.push((p, m))), 17);
        // The large message blocks the tail: nothing more for polls.
        assert_eq!(t1.poll(100, &mut |p, m| got.push((p, m))), 0);
        for (i, (p, m)) in got.iter().enumerate() {
            assert_eq!(*p, 0);
            let kind = if i % 3 == 0 {
                MessageKind::Control
            } else {
                MessageKind::Data
            };
            assert_eq!(*m, msg(kind, i as u64, i * 200));
        }
        assert!(rx1.try_recv().is_err(), "polled messages are no events");
        // The reader thread takes the rest, in order.
        t1.ctx.pause_readers.store(false, Ordering::Release);
        for i in 20..26 {
            match next(&mut rx1) {
                TransportEvent::Message { peer: 0, msg: m } => {
                    let len = if i == 20 { POLL_MAX_PAYLOAD + 1 } else { 8 };
                    assert_eq!(m, msg(MessageKind::Data, i, len));
                }
                other => panic!("{other:?}"),
            }
        }
        // A goodbye is the reader's too.
        t1.ctx.pause_readers.store(true, Ordering::Release);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(t0.close(GoodbyeReason::Clean));
        assert_eq!(t1.poll(100, &mut |_, _| panic!("no message")), 0);
        t1.ctx.pause_readers.store(false, Ordering::Release);
        assert!(matches!(
            next(&mut rx1),
            TransportEvent::PeerClosed {
                peer: 0,
                reason: CloseReason::Clean,
                ..
            }
        ));
    }

    #[test]
    fn lent_payloads_are_read_only_by_the_peer_and_released_after_its_copy() {
        let ((t0, _rx0), (t1, mut rx1)) = pair(cfg(), cfg());
        t1.ctx.pause_readers.store(true, Ordering::Release);
        // Below the CMA threshold a lent payload is copied at once.
        let (small, small_dropped, _mem) = watched(0, 1000);
        let want_small = msg(MessageKind::Data, 0, 1000);
        t0.send_lent(1, small).unwrap();
        assert!(small_dropped.load(Ordering::SeqCst), "copied, so dropped");
        // Above it, only the peer copies it: kept until it did.
        let (big, big_dropped, _mem) = watched(1, CMA_MIN_BYTES * 3);
        let want_big = msg(MessageKind::Data, 1, CMA_MIN_BYTES * 3);
        t0.send_lent(1, big).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!big_dropped.load(Ordering::SeqCst), "kept for the peer");
        t1.ctx.pause_readers.store(false, Ordering::Release);
        for want in [want_small, want_big] {
            match next(&mut rx1) {
                TransportEvent::Message { peer: 0, msg: m } => assert_eq!(m, want),
                other => panic!("{other:?}"),
            }
        }
        wait_true(&big_dropped);
    }

    #[test]
    fn a_lent_payload_goes_from_its_memory_or_is_copied_before_it_is_queued() {
        // No CMA (the tests' config sends these 1 MiB records by CMA, and
        // the ring would never fill).
        let no_cma = || ShmConfig {
            cma_min_bytes: 0,
            crowded_cma_min_bytes: 0,
            ..cfg()
        };
        let ((t0, _rx0), (t1, mut rx1)) = pair(no_cma(), no_cma());
        t1.ctx.pause_readers.store(true, Ordering::Release);
        let link = t0.link(1).unwrap();
        // The ring takes it at once: written from the lent memory, which is
        // free again when the call returns. (The writer thread's queue is
        // taken away meanwhile: a queued send would fail.)
        let queue = link.tx.lock().unwrap().take();
        let (first, first_dropped, _m0) = watched(0, 1000);
        t0.send_lent(1, first).unwrap();
        assert!(first_dropped.load(Ordering::SeqCst));
        *link.tx.lock().unwrap() = queue;
        // Fill the ring (nobody reads it): the next message waits in the
        // writer thread's queue.
        let mut sent = vec![msg(MessageKind::Data, 0, 1000)];
        let mut seq = 1;
        while link.out_ring.free() >= (REC_LEN + POLL_MAX_PAYLOAD) as u64 {
            let m = msg(MessageKind::Data, seq, POLL_MAX_PAYLOAD);
            t0.send(1, m.clone()).unwrap();
            sent.push(m);
            seq += 1;
        }
        let queued = msg(MessageKind::Data, seq, POLL_MAX_PAYLOAD);
        t0.send(1, queued.clone()).unwrap();
        sent.push(queued);
        assert!(link.backlog.load(Ordering::Acquire) > 0, "queued");
        // A lent payload behind it is copied, so its memory is free at once
        // all the same.
        let (lent, lent_dropped, _m1) = watched(seq + 1, 1000);
        t0.send_lent(1, lent).unwrap();
        assert!(
            lent_dropped.load(Ordering::SeqCst),
            "copied before queueing"
        );
        sent.push(msg(MessageKind::Data, seq + 1, 1000));
        t1.ctx.pause_readers.store(false, Ordering::Release);
        for want in sent {
            match next(&mut rx1) {
                TransportEvent::Message { peer: 0, msg: m } => assert_eq!(m, want),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn polls_copy_cma_records_up_to_their_bound_and_reap_released_payloads() {
        let ((t0, _rx0), (t1, mut rx1)) = pair(cfg(), cfg());
        // Neither reader thread runs: whatever happens is the polls' doing.
        t0.ctx.pause_readers.store(true, Ordering::Release);
        t1.ctx.pause_readers.store(true, Ordering::Release);
        t1.set_polling(true);
        // A sender that polls is not woken for releases: its polls reap.
        t0.set_polling(true);
        let (small, small_dropped, _m1) = watched(1, POLL_MAX_CMA_BYTES);
        let (big, big_dropped, _m2) = watched(2, POLL_MAX_CMA_BYTES + 1);
        t0.send(1, small).unwrap();
        t0.send(1, big).unwrap();
        // (A send may go through the writer thread, which a loaded machine
        // runs late: poll until the first record is there.)
        let mut got = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while got.is_empty() && std::time::Instant::now() < until {
            t1.poll(10, &mut |p, m| got.push((p, m)));
        }
        assert_eq!(
            got,
            vec![(0, msg(MessageKind::Data, 1, POLL_MAX_CMA_BYTES))]
        );
        // The larger record stays for the reader thread.
        assert_eq!(
            t1.poll(10, &mut |_, _| panic!("polled a large CMA record")),
            0
        );
        // The sender's poll drops the payload the peer copied.
        std::thread::sleep(Duration::from_millis(20));
        assert!(!small_dropped.load(Ordering::SeqCst));
        t0.poll(10, &mut |_, _| panic!("no message for rank 0"));
        assert!(small_dropped.load(Ordering::SeqCst), "reaped by the poll");
        assert!(!big_dropped.load(Ordering::SeqCst));
        t0.set_polling(false);
        t1.set_polling(false);
        t0.ctx.pause_readers.store(false, Ordering::Release);
        t1.ctx.pause_readers.store(false, Ordering::Release);
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg: m } => {
                assert_eq!(m, msg(MessageKind::Data, 2, POLL_MAX_CMA_BYTES + 1))
            }
            other => panic!("{other:?}"),
        }
        wait_true(&big_dropped);
    }

    /// A CMA record larger than POLL_MAX_CMA_BYTES written when the peer had
    /// copied every earlier one is left to the consumer's polls where the
    /// host has a CPU per rank; one written while another still waits (a
    /// pipeline's next piece) is the reader thread's, as every large one is
    /// on a crowded host.
    #[test]
    fn a_large_cma_record_written_alone_is_left_to_polls() {
        let ((t0, _rx0), (t1, mut rx1)) = pair(cfg(), cfg());
        t1.ctx.pause_readers.store(true, Ordering::Release);
        t1.set_polling(true);
        // Their receives posted without a zone (marks): taken into a buffer
        // of their own at once, not left for a zone.
        let landing = t1.landing().expect("shm lands");
        for seq in 1..4 {
            landing.mark(crate::shm::testutil::msg_key(seq));
        }
        let len = POLL_MAX_CMA_BYTES * 2;
        let uncrowded = *t0.link(1).unwrap().poll_cma_alone.end() == u64::MAX;
        let poll = |t1: &ShmTransport| {
            let mut got = Vec::new();
            t1.poll(10, &mut |p, m| got.push((p, m)));
            got
        };
        // Nothing written before it.
        t0.send(1, msg(MessageKind::Data, 1, len)).unwrap();
        let first = poll(&t1);
        if uncrowded {
            assert_eq!(first, vec![(0, msg(MessageKind::Data, 1, len))]);
            // Two at once: the first after every earlier one was copied, the
            // second while the first waits.
            t0.send(1, msg(MessageKind::Data, 2, len)).unwrap();
            t0.send(1, msg(MessageKind::Data, 3, len)).unwrap();
            assert_eq!(poll(&t1), vec![(0, msg(MessageKind::Data, 2, len))]);
            assert_eq!(poll(&t1), vec![], "the one behind is the reader's");
        } else {
            assert_eq!(first, vec![], "crowded: the reader thread's");
        }
        t1.set_polling(false);
        t1.ctx.pause_readers.store(false, Ordering::Release);
        let rest = if uncrowded { 3..4 } else { 1..2 };
        for seq in rest {
            match next(&mut rx1) {
                TransportEvent::Message { peer: 0, msg: m } => {
                    assert_eq!(m, msg(MessageKind::Data, seq, len))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_withdrawn_lent_payload_is_never_delivered() {
        for abort in [false, true] {
            let ((t0, _rx0), (t1, mut rx1)) = pair(cfg(), cfg());
            t1.ctx.pause_readers.store(true, Ordering::Release);
            let (big, dropped, _mem) = watched(1, CMA_MIN_BYTES * 2);
            t0.send_lent(1, big).unwrap();
            if abort {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(t0.close(GoodbyeReason::Abort {
                    cause_rank: None,
                    message: "test".into(),
                }));
            } else {
                t0.withdraw(1);
            }
            // Released at once: the owner may reuse the memory.
            assert!(dropped.load(Ordering::SeqCst), "abort {abort}");
            t1.ctx.pause_readers.store(false, Ordering::Release);
            expect_lost(&mut rx1, 0, "withdrew CMA payload 1");
        }
    }
}

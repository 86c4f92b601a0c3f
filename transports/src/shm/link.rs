//! One peer's link: the ring to it and the ring from it, the locks that
//! make each side of a ring single-threaded, and the payloads this rank
//! keeps for the peer's CMA copies (released when the peer has copied them,
//! withdrawn when this rank gives up on them).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::config::{CROWDED_POLL_CMA, POLL_MAX_CMA_BYTES};
use super::ring::{CMA_YES, Ring};
use crate::{CloseReason, Message, MessageKind, PeerPath, TransportEvent};

/// What the writer thread is handed.
pub(super) enum Out {
    Msg(Message),
    Goodbye,
}

/// What every link of a transport shares.
pub(super) struct Ctx {
    pub(super) rank: u32,
    pub(super) events: mpsc::UnboundedSender<TransportEvent>,
    pub(super) closing: AtomicBool,
    pub(super) max_message: u64,
    /// [`ShmConfig::poll_lease_for`](super::ShmConfig::poll_lease_for) this
    /// host, in [`clock`](crate::clock) ticks.
    pub(super) poll_lease: u64,
    /// [`ShmConfig::wait_slice`](super::ShmConfig::wait_slice): the lease
    /// watcher's sleep when it has no lease to wait for.
    pub(super) wait_slice: std::time::Duration,
    /// The lease watcher's wake-up word ([`super::watch`]).
    pub(super) watch: super::watch::Watch,
    /// [`ShmConfig::unposted_wait`](super::ShmConfig::unposted_wait).
    pub(super) unposted_wait: Option<std::time::Duration>,
    /// The engine's direct delivery
    /// ([`Transport::set_deliver`](crate::Transport::set_deliver)).
    pub(super) deliver: std::sync::OnceLock<crate::Deliver>,
    /// Receives' posted destinations: CMA copies land there directly.
    pub(super) landing: Arc<crate::landing::Landing>,
    /// Whether large CMA copies run on two threads
    /// ([`read_parallel`](crate::cma::read_parallel)): not on a host with
    /// more ranks than CPUs.
    pub(super) split_copies: bool,
    /// Reader threads of this transport copying a large CMA payload right
    /// now ([`Transport::reader_copying`](crate::Transport::reader_copying)).
    pub(super) reader_copies: std::sync::atomic::AtomicU32,
    /// Threads sleeping until an op completes
    /// ([`Transport::set_sleeping`](crate::Transport::set_sleeping)): while
    /// there are any, no poll lease is granted (a poller that stops ends
    /// the leases it renewed: [`super::watch::end_leases`]).
    pub(super) sleepers: std::sync::atomic::AtomicU32,
    /// Tests: readers take no record while set (so that polls get them all).
    #[cfg(test)]
    pub(super) pause_readers: AtomicBool,
}

/// One peer reached over shared memory.
pub(super) struct Link {
    pub(super) peer: u32,
    pub(super) path: String,
    pub(super) tx: Mutex<Option<std::sync::mpsc::Sender<Out>>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) out_ring: Arc<Ring>,
    pub(super) in_ring: Arc<Ring>,
    pub(super) done: Mutex<Vec<oneshot::Receiver<()>>>,
    pub(super) reported: AtomicBool,
    /// Held by whoever writes into `out_ring` (the writer thread, or a
    /// sender writing a message inline).
    pub(super) producer: Mutex<()>,
    /// Held by whoever reads a record from `in_ring` (the reader thread, or
    /// a [`Transport::poll`](crate::Transport::poll)); records are consumed
    /// whole under it.
    pub(super) consumer: Mutex<()>,
    /// Set (under `consumer`) when the reader thread stopped: the ring is
    /// finished (goodbye) or corrupt, and polls leave it alone.
    pub(super) reader_gone: AtomicBool,
    /// Number of the last CMA record of `in_ring` copied (by the reader
    /// thread or a poll, under `consumer`).
    pub(super) cma_seen: AtomicU64,
    /// The times of polled copies out of `in_ring`, and whether its
    /// producer is asked to stream payloads of the adaptive sizes
    /// ([`super::stream_choice`]; locked under `consumer`, never
    /// contended).
    pub(super) stream_choice: Mutex<super::stream_choice::Chooser>,
    /// The CMA record at the tail of `in_ring` that polls and the reader
    /// thread leave for its receive to be posted (its ring position + 1;
    /// 0: none), and until when ([`clock::ticks`](crate::clock::ticks)); see
    /// `leave_unposted` in `recv.rs`. Under `consumer`.
    pub(super) deferred_at: AtomicU64,
    pub(super) deferred_until: AtomicU64,
    /// Messages queued for the writer thread and not yet in the ring: a
    /// sender may write inline only when it is 0, which keeps messages in
    /// send order.
    pub(super) backlog: AtomicUsize,
    /// This rank's
    /// [`ShmConfig::cma_min_bytes`](super::ShmConfig::cma_min_bytes).
    pub(super) cma_min: usize,
    /// The sizes of the CMA records past [`POLL_MAX_CMA_BYTES`] this rank
    /// leaves to the peer's polling threads ([`Ring::write_pollable`],
    /// marked [`CmaExt::polled`](super::record::CmaExt::polled)) when the
    /// peer had copied every earlier one (`left_to_polls` in `send.rs`):
    /// [`CROWDED_POLL_CMA`] where this host's ranks outnumber its CPUs, any
    /// size where they have a CPU each ([`poll_cma_alone`]).
    pub(super) poll_cma_alone: std::ops::RangeInclusive<u64>,
    /// The peer's pid when this rank reads the peer's CMA records.
    pub(super) cma_from: Option<u32>,
    /// Payloads of CMA records written to `out_ring`, with their numbers,
    /// kept alive until the peer has copied them.
    pub(super) kept: Mutex<std::collections::VecDeque<(u64, Bytes)>>,
    /// Number of the last CMA record written (under `producer`).
    pub(super) cma_sent: AtomicU64,
    /// The peer's copy count last acted on (kept payloads up to it dropped).
    pub(super) cma_released: AtomicU64,
}

/// [`Link::poll_cma_alone`] on a host that is `crowded` or not.
///
/// Where ranks have a CPU each, a waiting thread copies a CMA record of any
/// size itself when it is no pipeline's piece (`left_to_polls` in
/// `send.rs`). Left to the reader thread, a record larger than
/// [`POLL_MAX_CMA_BYTES`] was copied on the core of the waiter, which
/// spun (yielding) beside it until its spin ran out, then had to be woken
/// (2 ranks on 2 vCPUs, medians of 7 interleaved rounds: sendrecv 2 MiB
/// 470-529 µs against 1 MiB's 119-163 µs; polled, 220-282 µs). Where ranks
/// outnumber CPUs, those of [`CROWDED_POLL_CMA`] (more than 2 MiB, up to
/// 16 MiB); the others are copied by the reader thread while the waiter
/// sleeps.
pub(super) fn poll_cma_alone(crowded: bool) -> std::ops::RangeInclusive<u64> {
    if crowded {
        CROWDED_POLL_CMA
    } else {
        POLL_MAX_CMA_BYTES as u64 + 1..=u64::MAX
    }
}

/// Drops the payloads of `live` the peers have copied (what a poll does
/// before it looks at the rings: peers do not wake the reader thread for
/// their releases while this rank polls). An impossible count is left to
/// the reader thread, which reports it.
#[inline]
pub(super) fn reap_released(live: &[Arc<Link>]) {
    for l in live {
        if l.release_pending() && l.reap().is_err() {
            l.in_ring.notify_reader();
        }
    }
}

#[inline]
pub(super) fn lock(m: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    // The mutexes guard no data: a panic elsewhere leaves nothing broken.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Link {
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.tx.lock().expect("shm tx").take();
        self.out_ring.wake_all();
        self.in_ring.wake_all();
    }

    /// Reports the ring from the peer as lost (corrupt, or a copy that
    /// failed): `why` says how.
    pub(super) fn lost(&self, ctx: &Ctx, why: &str) {
        self.report(
            ctx,
            CloseReason::Lost(format!("shm ring from the peer: {why}")),
        );
    }

    pub(super) fn report(&self, ctx: &Ctx, reason: CloseReason) {
        if ctx.closing.load(Ordering::Acquire) || self.reported.swap(true, Ordering::AcqRel) {
            return;
        }
        match &reason {
            CloseReason::Clean => info!(
                rank = ctx.rank,
                peer = self.peer,
                "peer closed its shm rings"
            ),
            other => warn!(rank = ctx.rank, peer = self.peer, path = %self.path, "peer {other}"),
        }
        let _ = ctx.events.send(TransportEvent::PeerClosed {
            peer: self.peer,
            reason,
            path: Some(PeerPath::Shm {
                segment: self.path.clone(),
                control: None,
            }),
        });
    }

    /// Whether `m` goes by CMA: a data message of at least `cma_min` bytes,
    /// to a peer that reads our CMA records.
    #[inline]
    pub(super) fn use_cma(&self, m: &Message) -> bool {
        self.cma_min > 0
            && m.kind == MessageKind::Data
            && m.payload.len() >= self.cma_min
            && self.out_ring.cma_ok().load(Ordering::Acquire) == CMA_YES
    }

    /// Whether the peer copied CMA payloads that we still keep.
    #[inline]
    pub(super) fn release_pending(&self) -> bool {
        self.out_ring.cma_done().load(Ordering::Acquire) > self.cma_released.load(Ordering::Acquire)
    }

    /// Drops the kept payloads the peer has copied.
    pub(super) fn reap(&self) -> Result<(), String> {
        if !self.release_pending() {
            return Ok(());
        }
        let mut freed = Vec::new();
        {
            let mut kept = self.kept.lock().expect("shm kept");
            let done = self.out_ring.cma_done().load(Ordering::Acquire);
            let sent = self.cma_sent.load(Ordering::Acquire);
            if done > sent {
                return Err(format!(
                    "the peer claims to have copied {done} CMA payloads of {sent} sent"
                ));
            }
            while let Some((n, _)) = kept.front()
                && *n <= done
            {
                freed.extend(kept.pop_front().map(|(_, b)| b));
            }
            self.cma_released.fetch_max(done, Ordering::AcqRel);
        }
        // Freed outside the lock (a large buffer may be unmapped here).
        drop(freed);
        Ok(())
    }

    /// Withdraws every CMA payload of this link, written or still to be
    /// written: the peer rejects any CMA copy it finishes from now on (see
    /// `W_CMA_WITHDRAWN` in [`super::ring`]), so this process may reuse
    /// their memory; the kept payloads are dropped. The full fence orders the mark before
    /// whatever the caller writes into the memory next; the reader fences
    /// between its copy and its check, so a copy that passes the check
    /// finished before any such write.
    pub(super) fn withdraw(&self) {
        self.out_ring
            .cma_withdrawn()
            .store(u64::MAX, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let freed: Vec<_> = self.kept.lock().expect("shm kept").drain(..).collect();
        drop(freed);
    }

    pub(super) fn kept_empty(&self) -> bool {
        self.kept.lock().expect("shm kept").is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::testutil::{cfg, expect_lost, pair};

    #[test]
    fn an_impossible_release_count_closes_the_link_as_lost() {
        let ((_t0, mut rx0), (t1, _rx1)) = pair(cfg(), cfg());
        let link = t1.link(0).unwrap();
        link.in_ring.cma_done().store(5, Ordering::Release);
        link.out_ring.notify_reader();
        expect_lost(&mut rx0, 1, "copied 5 CMA payloads of 0");
    }
}

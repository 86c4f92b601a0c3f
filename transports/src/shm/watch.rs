//! The lease watcher: one thread per transport that hands the records left
//! under the consumer's poll lease to the reader threads once the lease
//! runs out.
//!
//! While a thread of this rank polls, or its poll lease runs (it stopped
//! polling and expects to poll again soon), producers leave small records
//! to the next poll and wake no reader thread. Someone has to look when
//! the lease runs out, in case no poll came (the application computes).
//! That used to be every reader thread, at every lease's end: a rank that
//! keeps issuing ops woke each of its reader threads once per lease (1 ms),
//! `n - 1` wake-ups per lease with `n` local ranks, each of which, on a
//! host with more ranks than cores, preempts a rank that copies. Now the
//! reader threads sleep a whole wait slice, and this one thread wakes at
//! the lease's end, looks at every ring, and wakes only the reader threads
//! that have something left (a record, or a release of this rank's CMA
//! payloads) while nobody is attentive any more ([`look`]).
//!
//! It sleeps without a bound (a wait slice at a time) when no lease runs
//! and no thread polls; a thread that then renews a lease that had run
//! out wakes it ([`Watch::lease_began`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::Duration;

use super::futex::{futex_wait, futex_wake};
use super::link::{Ctx, Link};

/// Added to a sleep until a lease's end, so that the watcher wakes after
/// it ran out (futex timeouts are not exact).
const LEASE_MARGIN: Duration = Duration::from_micros(20);

/// The watcher's futex word and whether it sleeps without a bound.
#[derive(Default)]
pub(super) struct Watch {
    /// Bumped to wake the watcher (a futex word of this process).
    seq: AtomicU32,
    /// 1 while the watcher looks or sleeps without a lease to wait for.
    unbounded: AtomicU32,
}

impl Watch {
    /// Consumer side, after renewing a lease that had run out: wakes the
    /// watcher if it may sleep past the new lease's end (no lease ran and
    /// no thread polled when it last looked). Call after the renewal: either
    /// the watcher's look sees the lease, or this sees it unbounded.
    pub(super) fn lease_began(&self) {
        if self.unbounded.load(Ordering::SeqCst) != 0 {
            self.wake();
        }
    }

    /// Wakes the watcher (a lease began, or the transport closes).
    pub(super) fn wake(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        futex_wake(&self.seq);
    }
}

/// A poll's long copy: for its length the polling thread counts as a
/// poller on every ring from a peer ([`Attending::start`]), so that peers
/// leave what they send meanwhile (small records, such as the
/// acknowledgement of this rank's send, and the release of its CMA
/// payloads) to the polls that follow instead of waking its reader thread.
///
/// A thread that polls under the lease only (it is not counted in the
/// rings: `ShmTransport`'s `covered`) stops being attentive when the lease
/// runs out, and a poll that copies a large CMA payload itself outlasts a
/// lease (64 MiB: about 8.5 ms against a 4 ms lease on a full host). A
/// peer that finished its own copy meanwhile then woke this rank's reader
/// thread for them, which woke the engine's thread in turn: two
/// wake-ups per op on CPUs both ranks' copies keep busy, and the next op
/// started that much later (2 ranks, sendrecv 64 MiB, medians of 11
/// interleaved rounds: 8614 -> 8448 us, Open MPI 8369).
pub(super) struct Attending<'a> {
    live: &'a [Arc<Link>],
    ctx: &'a Ctx,
}

impl<'a> Attending<'a> {
    /// Counts the calling thread as a poller on the rings of `live` until
    /// the guard drops.
    pub(super) fn start(live: &'a [Arc<Link>], ctx: &'a Ctx) -> Self {
        for l in live {
            l.in_ring.polling().fetch_add(1, Ordering::SeqCst);
        }
        Self { live, ctx }
    }
}

impl Drop for Attending<'_> {
    /// Stops counting as a thread that polls again soon does
    /// (`ShmTransport`'s `pause_polling`): a lease first, then the count,
    /// so that what a peer left meanwhile waits for the polls that follow
    /// (the poll this copy is part of goes on to look at the other rings,
    /// unless it took as many messages as it may), or for the lease
    /// watcher at the lease's end if none comes; no lease where a thread
    /// of this rank sleeps (it needs the reader threads woken for its
    /// messages: the leases end again, as `pause_polling` ends them).
    /// Releases of this rank's payloads it reaps itself, as a poll does.
    fn drop(&mut self) {
        let now = crate::clock::ticks();
        let ran_out = lease_then_uncount(self.live, now, now.saturating_add(self.ctx.poll_lease));
        lease_left(self.live, self.ctx, ran_out);
        super::link::reap_released(self.live);
    }
}

/// What a poller that stops does once it renewed the leases of `live`
/// (`ran_out`: one had run out): wakes the lease watcher for the new
/// lease ([`Watch::lease_began`]), and ends the leases again where a thread
/// of this rank sleeps until its op completes, which needs the reader
/// threads woken for its messages ([`end_leases`]). (The lease first, then
/// this load; a new sleeper raises the count, then ends the leases: either
/// it ends ours, or we see it and end them here.)
pub(super) fn lease_left(live: &[Arc<Link>], ctx: &Ctx, ran_out: bool) {
    if ran_out {
        ctx.watch.lease_began();
    }
    if ctx.sleepers.load(Ordering::SeqCst) != 0 {
        end_leases(live);
    }
}

/// Ends the poll lease of every ring of `live`, and hands what was left
/// under it (a record, a release of this rank's CMA payloads) to the
/// reader threads: what a poller that stops does while a thread of this
/// rank sleeps ([`Ctx::sleepers`]), and what that thread does as it
/// starts to sleep.
pub(super) fn end_leases(live: &[Arc<Link>]) {
    for l in live {
        let r = &l.in_ring;
        r.end_lease();
        fence(Ordering::SeqCst);
        if !matches!(r.pending(), Ok(false)) || l.release_pending() {
            r.notify_reader();
        }
    }
}

/// A counted poller of the rings of `live` stops, as one that polls again
/// soon: each ring's lease renewed until `until`, then its count lowered
/// (a producer that saw the count published before, and the lease covers
/// what it left). Returns whether a lease had run out by `now` (the
/// caller then wakes the watcher, [`Watch::lease_began`]).
pub(super) fn lease_then_uncount(live: &[Arc<Link>], now: u64, until: u64) -> bool {
    let mut ran_out = false;
    for l in live {
        ran_out |= l.in_ring.lease_until() <= now;
        l.in_ring.renew_lease(until);
        l.in_ring.polling().fetch_sub(1, Ordering::SeqCst);
    }
    ran_out
}

/// What the watcher does about one ring, at `now` (a
/// [`clock`](crate::clock) reading; so are the times it takes and
/// returns). Pure.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Look {
    /// Wake its reader thread: something is left and the consumer is not
    /// attentive any more.
    Hand,
    /// Look again at this time: a lease runs until then, or a thread polls
    /// (it may stop with a lease, which wakes nobody: look a lease later).
    At(u64),
    /// Nothing to look for: its reader thread is woken by the producer.
    Idle,
}

/// [`Look`] for a ring whose consumer lease runs until `lease_until`, with
/// `polling` threads counted in it, a lease length of `lease_len`, and
/// something `left` in it (a record, a release).
///
/// ```text
/// lease running                      -> At(lease's end)
/// no lease, a thread polls           -> At(now + lease_len)
/// neither, something left            -> Hand
/// neither, nothing left              -> Idle
/// ```
pub(super) fn look(now: u64, lease_until: u64, polling: bool, lease_len: u64, left: bool) -> Look {
    if lease_until > now {
        Look::At(lease_until)
    } else if polling && lease_len > 0 {
        Look::At(now.saturating_add(lease_len))
    } else if left {
        Look::Hand
    } else {
        Look::Idle
    }
}

/// The watcher thread of a transport whose links are `live`, until it
/// closes.
pub(super) fn watcher(live: &[Arc<Link>], ctx: &Ctx) {
    let w = &ctx.watch;
    loop {
        if ctx.closing.load(Ordering::Acquire) {
            return;
        }
        w.unbounded.store(1, Ordering::SeqCst);
        let s = w.seq.load(Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let now = crate::clock::ticks();
        let mut next: Option<u64> = None;
        for l in live {
            if l.reader_gone.load(Ordering::Acquire) {
                continue;
            }
            let r = &l.in_ring;
            let left = !matches!(r.pending(), Ok(false)) || l.release_pending();
            let polling = r.polling().load(Ordering::SeqCst) != 0;
            match look(now, r.lease_until(), polling, ctx.poll_lease, left) {
                Look::Hand => r.notify_reader(),
                Look::At(t) => next = Some(next.map_or(t, |n| n.min(t))),
                Look::Idle => {}
            }
        }
        let sleep = match next {
            Some(t) => {
                w.unbounded.store(0, Ordering::SeqCst);
                crate::clock::to_duration(t.saturating_sub(now)) + LEASE_MARGIN
            }
            None => ctx.wait_slice,
        };
        futex_wait(&w.seq, s, sleep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::config::ShmConfig;
    use crate::shm::testutil::{cfg, group, msg, next};
    use crate::{MessageKind, Transport, TransportEvent};
    use std::time::Instant;

    #[test]
    fn one_watcher_hands_every_ring_its_left_record_when_the_lease_runs_out() {
        // Rank 0 with a 300 ms lease and 5 s wait slices (a missed hand-over
        // shows as a 5 s delay); ranks 1 and 2 as usual; no CMA.
        let lease = Duration::from_millis(300);
        let c = |lease| ShmConfig {
            cma_min_bytes: 0,
            poll_lease: lease,
            full_poll_lease: lease,
            wait_slice: Duration::from_secs(5),
            ..cfg()
        };
        let mut g = group(vec![c(lease), c(Duration::ZERO), c(Duration::ZERO)]);
        let t0 = &g[0].0;
        // Rank 0 polled and expects to poll again: its lease runs. A small
        // record from each peer is left to that poll, which never comes.
        t0.set_polling(true);
        t0.pause_polling();
        let t = Instant::now();
        g[1].0.send(0, msg(MessageKind::Data, 1, 8)).unwrap();
        g[2].0.send(0, msg(MessageKind::Data, 2, 8)).unwrap();
        let rx0 = &mut g[0].1;
        std::thread::sleep(Duration::from_millis(100));
        assert!(rx0.try_recv().is_err(), "delivered under the lease");
        // The watcher looks when the lease runs out and wakes both readers.
        let mut got = Vec::new();
        for _ in 0..2 {
            match next(rx0) {
                TransportEvent::Message { peer, msg: m } => got.push((peer, m.seq)),
                other => panic!("{other:?}"),
            }
        }
        let took = t.elapsed();
        got.sort();
        assert_eq!(got, [(1, 1), (2, 2)]);
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_millis(2500), "{took:?}");
    }

    #[test]
    fn a_lease_or_a_poller_defers_the_hand_over_and_nothing_left_needs_none() {
        let (now, len) = (1_000, 100);
        // A running lease: look at its end, whatever is left.
        assert_eq!(look(now, 1_050, false, len, true), Look::At(1_050));
        assert_eq!(look(now, 1_050, true, len, false), Look::At(1_050));
        // A counted poller without a lease: a lease from now.
        assert_eq!(look(now, 0, true, len, true), Look::At(1_100));
        // No lease length: pollers that stop hand over themselves.
        assert_eq!(look(now, 0, true, 0, true), Look::Hand);
        // The lease ran out (its end is now or before).
        assert_eq!(look(now, 1_000, false, len, true), Look::Hand);
        assert_eq!(look(now, 999, false, len, false), Look::Idle);
        assert_eq!(look(now, 0, false, len, false), Look::Idle);
    }
}

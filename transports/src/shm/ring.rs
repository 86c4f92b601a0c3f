//! One direction of a segment: a single-producer/single-consumer byte ring.
//!
//! The ring's positions are monotonic `u64` counters in its control block:
//! `head`, written only by the producer, and `tail`, written only by the
//! consumer, on separate cache lines; byte `pos` of the stream sits at
//! `pos % capacity` of the data area. The producer copies bytes in and then
//! publishes them (a Release store of `head`); the consumer copies them out
//! and then frees them (a Release store of `tail`). A side that finds the
//! ring empty or full spins briefly, then sleeps on a sequence word of the
//! control block (see [`Ring::wait`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::time::Duration;

use super::config::ShmConfig;
use super::futex::{futex_wait, futex_wake};
use super::record::REC_LEN;
use super::segment::{CTL, HEADER, Segment};

/// Most bytes of a payload streamed through the ring (one larger than its
/// free space) that the producer copies in before it publishes them, and
/// the consumer copies out before it frees them: each side works on one
/// piece while the other works on the next, where before the producer
/// filled all the free space (up to the whole 4 MiB ring) while the
/// consumer waited, then waited while it emptied it (2 processes on
/// 2 vCPUs exchanging 1 MiB through slots, C: 64, 128 and 256 KiB pieces
/// 116.7, 116.0 and 114.3 us).
pub(super) const STREAM_PIECE: usize = 256 << 10;

// Within a control block: the producer-written line (the head and the
// slot), the consumer's line of rarely written words, the consumer's tail
// (see `R_TAIL`), then the producer's rarely written words.
const W_HEAD: usize = 0;
const W_DATA_SEQ: usize = 8;
const W_WAITING: usize = 12;
/// The slot: a copy of the last small record the producer published
/// ([`Ring::fill_slot`]), beside the head, so that a consumer that finds
/// the head moved has the record in the same cache line
/// ([`Ring::slot_record`]). Six words: the tag (the record's ring position
/// plus one; 0 while the producer rewrites the slot), the header's first 8
/// bytes, its channel and payload length, its sequence number, and up to
/// [`SLOT_MAX_PAYLOAD`] bytes of payload. Reading the head and then the
/// record's own line was two cache misses one after the other for every
/// small message; a one-line copy makes it one (two threads on the 2 vCPUs
/// here, ping-pong of one 48-byte record: 226-254 ns one way through a
/// head and a separate record line, 162 ns through one line, 153-161 ns
/// for a bare cache line).
const W_SLOT: usize = 16;
/// Words of the slot.
const SLOT_WORDS: usize = 6;
/// Largest payload the slot carries (its last two words).
pub(super) const SLOT_MAX_PAYLOAD: usize = 16;
/// Lent CMA payloads the producer has withdrawn: 0, or `u64::MAX` once it
/// gave up on one ([`Transport::withdraw`](crate::Transport::withdraw), an
/// abort). The consumer checks it after every CMA copy and rejects the copy
/// (closing the link) when set.
const W_CMA_WITHDRAWN: usize = 192;
const _: () = assert!(W_SLOT + 8 * SLOT_WORDS <= 64 && SLOT_MAX_PAYLOAD == 16);
// The consumer's tail and space sequence, written at every record it takes,
// sit on a line of their own (`R_TAIL`), apart from the consumer's words a
// producer reads at every record (`R_WAITING` to `R_LEASE`), which change
// rarely: otherwise each send read a line the consumer had just written.
const R_TAIL: usize = 128;
const R_SPACE_SEQ: usize = 136;
const R_WAITING: usize = 76;
/// Whether the consumer reads CMA records of this ring: 0 (not decided
/// yet), [`CMA_YES`] or [`CMA_NO`] (written once, at setup).
pub(super) const R_CMA_OK: usize = 80;
/// How many CMA records of this ring the consumer has copied (monotonic).
const R_CMA_DONE: usize = 88;
/// How many threads of the consumer are polling this ring right now
/// ([`Transport::set_polling`](crate::Transport::set_polling)): a small
/// record is then left to them and the reader thread is not woken for it.
const R_POLLING: usize = 96;
/// Until when (a [`clock`](crate::clock) reading: the same instant in every
/// process of the host) the
/// consumer promises to look at this ring without being woken: a thread of
/// it that polled stopped because its op completed, and expects to poll
/// again soon ([`Transport::pause_polling`](crate::Transport::pause_polling)).
/// While it runs a producer leaves small records to the next poll as while a
/// thread polls; the consumer's lease watcher
/// ([`watch`](super::watch)) looks when it runs out, so a record nobody
/// polls for waits at most that long (at most a wait slice if the watcher
/// was asleep without a lease when it began and nobody woke it).
const R_LEASE: usize = 104;
/// Whether the consumer asks for payloads of 16-64 KiB written with stores
/// that bypass the caches (1) or plain (0): its choice from the times its
/// copies of each kind took ([`super::stream_choice`]).
const R_STREAM: usize = 112;
/// The [`Ring::reader_waiting`] value of a thread asleep in [`Ring::wait`]
/// (0: none; producers only ask whether it is 0).
const ASLEEP: u32 = 1;
/// How far into its data area an empty ring's head must be before the
/// producer starts the next small record over at the beginning
/// ([`Ring::idle_gap`]).
pub(super) const REWIND_MIN: u64 = 64 << 10;
/// Largest record (header included) written at the start of an empty ring
/// ([`Ring::idle_gap`]): rewriting lines the consumer has just read costs
/// more than fresh ones once records are large (4 ranks, 256 KiB
/// all_reduce, 64 KiB records: 142 µs without rewinding, 195 µs rewinding
/// every record), and a large record's page faults are few for its bytes.
pub(super) const REWIND_MAX_RECORD: u64 = 8 << 10;
pub(super) const CMA_YES: u32 = 1;
pub(super) const CMA_NO: u32 = 2;

/// Why a ring operation stopped.
#[derive(Debug)]
pub(super) enum RingStop {
    /// The transport is closing.
    Closed,
    /// The peer left the ring in an impossible state.
    Corrupt(String),
}

/// One direction of a segment, seen from one side.
pub(super) struct Ring {
    seg: Arc<Segment>,
    ctl: usize,
    data: *mut u8,
    cap: u64,
    spin: u32,
    slice: Duration,
    /// Producer side (under the producer lock): the consumer's tail as last
    /// read. It only lags the real one (tails only grow), so space it
    /// shows is there; the tail is read again only when it shows too
    /// little, not at every record (a line the consumer writes at every
    /// record it takes).
    seen_tail: AtomicU64,
    /// Producer side (under the producer lock): the head as this side last
    /// published it ([`Ring::publish`]). Only the producer writes the head,
    /// so it never reads it back from the control block, whose line the
    /// consumer polls: that read missed the cache at every send (2 ranks,
    /// 8 B all_reduce: 88 % of the samples of the function that made it),
    /// and the first write after it fetched the line again.
    own_head: AtomicU64,
    /// Producer side (under the producer lock): payloads of the adaptive
    /// sizes written so far ([`super::stream_choice::stream_nth`]).
    adaptive_sent: AtomicU32,
    /// Tests: sleeps in [`Ring::wait`] that ended (a wake-up or the slice).
    #[cfg(test)]
    pub(super) sleeps_ended: AtomicU64,
}

// SAFETY: the raw data pointer points into `seg`'s mapping, which the ring
// keeps alive; the SPSC protocol gives each byte range one writer at a time.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    pub(super) fn new(seg: Arc<Segment>, dir: usize, cap: u64, cfg: &ShmConfig) -> Self {
        // SAFETY: the segment is HEADER + 2 * cap bytes long.
        let data = unsafe { seg.base().add(HEADER + dir * cap as usize) };
        let ring = Self {
            seg,
            ctl: CTL[dir],
            data,
            cap,
            spin: cfg.spin_iterations,
            slice: cfg.wait_slice,
            seen_tail: AtomicU64::new(0),
            own_head: AtomicU64::new(0),
            adaptive_sent: AtomicU32::new(0),
            #[cfg(test)]
            sleeps_ended: AtomicU64::new(0),
        };
        ring.seen_tail
            .store(ring.tail().load(Ordering::Acquire), Ordering::Relaxed);
        ring.own_head
            .store(ring.head().load(Ordering::Acquire), Ordering::Relaxed);
        ring
    }

    #[inline]
    fn head(&self) -> &AtomicU64 {
        self.seg.u64_at(self.ctl + W_HEAD)
    }

    /// Producer, holding the producer lock: the head it last published.
    #[inline]
    fn produced(&self) -> u64 {
        self.own_head.load(Ordering::Relaxed)
    }

    /// Producer, holding the producer lock: publishes the bytes before
    /// `head` (a Release store of the head).
    #[inline]
    fn publish(&self, head: u64) {
        self.own_head.store(head, Ordering::Relaxed);
        self.head().store(head, Ordering::Release);
    }

    /// Sets the head as if the producer had published up to `head`.
    #[cfg(test)]
    pub(super) fn force_head(&self, head: u64) {
        self.publish(head);
    }

    #[inline]
    pub(super) fn data_seq(&self) -> &AtomicU32 {
        self.seg.u32_at(self.ctl + W_DATA_SEQ)
    }
    #[inline]
    fn writer_waiting(&self) -> &AtomicU32 {
        self.seg.u32_at(self.ctl + W_WAITING)
    }
    #[inline]
    pub(super) fn tail(&self) -> &AtomicU64 {
        self.seg.u64_at(self.ctl + R_TAIL)
    }
    #[inline]
    fn space_seq(&self) -> &AtomicU32 {
        self.seg.u32_at(self.ctl + R_SPACE_SEQ)
    }
    #[inline]
    pub(super) fn reader_waiting(&self) -> &AtomicU32 {
        self.seg.u32_at(self.ctl + R_WAITING)
    }
    #[inline]
    pub(super) fn cma_ok(&self) -> &AtomicU32 {
        self.seg.u32_at(self.ctl + R_CMA_OK)
    }
    #[inline]
    pub(super) fn cma_done(&self) -> &AtomicU64 {
        self.seg.u64_at(self.ctl + R_CMA_DONE)
    }
    #[inline]
    pub(super) fn cma_withdrawn(&self) -> &AtomicU64 {
        self.seg.u64_at(self.ctl + W_CMA_WITHDRAWN)
    }
    #[inline]
    pub(super) fn polling(&self) -> &AtomicU32 {
        self.seg.u32_at(self.ctl + R_POLLING)
    }

    #[inline]
    fn lease(&self) -> &AtomicU64 {
        self.seg.u64_at(self.ctl + R_LEASE)
    }

    /// Word `i` of the slot ([`W_SLOT`]).
    #[inline]
    fn slot(&self, i: usize) -> &AtomicU64 {
        self.seg.u64_at(self.ctl + W_SLOT + 8 * i)
    }

    /// Producer, holding the producer lock, before it publishes the record
    /// at position `pos` (`header`, a [`REC_LEN`]-byte encoded header, and
    /// `payload`): copies the record into the slot when the payload fits
    /// ([`SLOT_MAX_PAYLOAD`]; a larger record leaves the slot as it is), as
    /// a sequence lock's writer (tag 0, the words, then the tag).
    #[inline]
    fn fill_slot(&self, pos: u64, header: &[u8], payload: &[u8]) {
        if payload.len() > SLOT_MAX_PAYLOAD || header.len() != REC_LEN {
            return;
        }
        let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
        let mut p = [0u8; SLOT_MAX_PAYLOAD];
        p[..payload.len()].copy_from_slice(payload);
        self.slot(0).store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        self.slot(1).store(word(header, 0), Ordering::Relaxed);
        // The channel, and the payload's length in place of the header's
        // reserved word (read back as zero).
        let channel = u32::from_le_bytes(header[8..12].try_into().expect("4"));
        self.slot(2).store(
            u64::from(channel) | (payload.len() as u64) << 32,
            Ordering::Relaxed,
        );
        self.slot(3).store(word(header, 16), Ordering::Relaxed);
        self.slot(4).store(word(&p, 0), Ordering::Relaxed);
        self.slot(5).store(word(&p, 8), Ordering::Relaxed);
        self.slot(0).store(pos.wrapping_add(1), Ordering::Release);
    }

    /// Consumer, holding the consumer lock: the record at position `tail`
    /// from the slot, as its encoded header and its payload (the first
    /// `len` bytes, `len` in the header), when the slot holds that record
    /// (the last small one published, and not being rewritten); `None`
    /// otherwise (it is then read from the ring). The caller still checks
    /// that the record is published (the head past it) before taking it.
    #[inline]
    pub(super) fn slot_record(&self, tail: u64) -> Option<([u8; REC_LEN], [u8; SLOT_MAX_PAYLOAD])> {
        if self.slot(0).load(Ordering::Acquire) != tail.wrapping_add(1) {
            return None;
        }
        let mut w = [0u64; SLOT_WORDS - 1];
        for (i, v) in w.iter_mut().enumerate() {
            *v = self.slot(i + 1).load(Ordering::Relaxed);
        }
        fence(Ordering::Acquire);
        if self.slot(0).load(Ordering::Relaxed) != tail.wrapping_add(1) {
            return None;
        }
        let mut h = [0u8; REC_LEN];
        h[0..8].copy_from_slice(&w[0].to_le_bytes());
        h[8..12].copy_from_slice(&(w[1] as u32).to_le_bytes());
        h[16..24].copy_from_slice(&w[2].to_le_bytes());
        h[24..32].copy_from_slice(&(w[1] >> 32).to_le_bytes());
        let mut p = [0u8; SLOT_MAX_PAYLOAD];
        p[0..8].copy_from_slice(&w[3].to_le_bytes());
        p[8..16].copy_from_slice(&w[4].to_le_bytes());
        Some((h, p))
    }

    /// Whether the consumer looks at the ring soon without a wake-up: a
    /// thread of it polls, or its lease runs.
    #[inline]
    pub(super) fn attentive(&self) -> bool {
        self.polling().load(Ordering::SeqCst) != 0
            || crate::clock::ticks() < self.lease().load(Ordering::SeqCst)
    }

    /// Consumer side: asks the producer for payloads of the adaptive sizes
    /// streamed (`true`) or plain ([`R_STREAM`]).
    pub(super) fn ask_stream(&self, on: bool) {
        self.seg
            .u32_at(self.ctl + R_STREAM)
            .store(u32::from(on), Ordering::Relaxed);
    }

    /// Producer side, holding the producer lock: whether its next payload
    /// of the adaptive sizes is streamed: as the consumer asks, but one in
    /// [`EXPLORE_EVERY`](super::stream_choice::EXPLORE_EVERY) the other
    /// way, so that the consumer keeps timing both.
    #[inline]
    pub(super) fn next_adaptive_streams(&self) -> bool {
        let asked = self.seg.u32_at(self.ctl + R_STREAM).load(Ordering::Relaxed) != 0;
        let n = self.adaptive_sent.load(Ordering::Relaxed).wrapping_add(1);
        self.adaptive_sent.store(n, Ordering::Relaxed);
        super::stream_choice::stream_nth(n, asked)
    }

    /// Consumer side: promises to look at the ring before `until`
    /// ([`clock::ticks`](crate::clock::ticks)) without being woken ([`R_LEASE`]). Nobody is woken
    /// for it: the caller wakes the lease watcher if the lease had run out
    /// (it may sleep without a bound), and the watcher sees a renewal when
    /// it wakes at the old lease's end. Threads that sleep until an op
    /// completes end the lease
    /// ([`ShmTransport`](super::ShmTransport)'s `set_sleeping`).
    pub(super) fn renew_lease(&self, until: u64) {
        self.lease().fetch_max(until, Ordering::SeqCst);
    }

    /// Consumer side: until when its lease runs ([`clock::ticks`](crate::clock::ticks);
    /// 0: none).
    pub(super) fn lease_until(&self) -> u64 {
        self.lease().load(Ordering::Acquire)
    }

    /// Consumer side: withdraws the lease (a thread stops polling and will
    /// sleep). The caller then checks for records left meanwhile.
    pub(super) fn end_lease(&self) {
        self.lease().store(0, Ordering::SeqCst);
    }

    /// Producer side, after publishing data: like
    /// [`Ring::notify_reader`], except that a small record (one a poll can
    /// take) is left to the consumer's polling threads when there are any,
    /// without the cost of waking its reader thread. A poller that stops
    /// wakes the reader itself if data is left
    /// ([`ShmTransport`](super::ShmTransport)'s `set_polling`): either it
    /// sees the data, or this side sees no poller.
    fn notify_data(&self, small: bool) {
        self.data_seq().fetch_add(1, Ordering::SeqCst);
        if self.reader_waiting().load(Ordering::SeqCst) != 0 && !(small && self.attentive()) {
            futex_wake(self.data_seq());
        }
    }

    /// Wakes whatever thread of ours waits on this ring (used on close).
    pub(super) fn wake_all(&self) {
        self.data_seq().fetch_add(1, Ordering::SeqCst);
        futex_wake(self.data_seq());
        self.space_seq().fetch_add(1, Ordering::SeqCst);
        futex_wake(self.space_seq());
    }

    /// Producer side: tells the consumer's reader thread to look again (new
    /// data, or a CMA release for it to handle), waking it if it sleeps.
    #[inline]
    pub(super) fn notify_reader(&self) {
        self.data_seq().fetch_add(1, Ordering::SeqCst);
        if self.reader_waiting().load(Ordering::SeqCst) != 0 {
            futex_wake(self.data_seq());
        }
    }

    /// Waits until `ready()` returns `Some`: spin briefly, then futex-wait on
    /// `seq` after announcing ourselves in `waiting`, a wait slice at a time.
    /// (A reader thread waiting for a record is not woken for small records
    /// while the consumer is attentive; its lease watcher wakes it when the
    /// consumer stops being so with a record left: [`watch`](super::watch).)
    pub(super) fn wait<T>(
        &self,
        seq: &AtomicU32,
        waiting: &AtomicU32,
        stop: &AtomicBool,
        mut ready: impl FnMut() -> Result<Option<T>, RingStop>,
    ) -> Result<T, RingStop> {
        for _ in 0..self.spin {
            if let Some(v) = ready()? {
                return Ok(v);
            }
            std::hint::spin_loop();
        }
        loop {
            if stop.load(Ordering::Acquire) {
                return Err(RingStop::Closed);
            }
            waiting.store(ASLEEP, Ordering::SeqCst);
            let s = seq.load(Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if let Some(v) = ready()? {
                waiting.store(0, Ordering::Relaxed);
                return Ok(v);
            }
            futex_wait(seq, s, self.slice);
            #[cfg(test)]
            self.sleeps_ended.fetch_add(1, Ordering::Relaxed);
            waiting.store(0, Ordering::Relaxed);
            if let Some(v) = ready()? {
                return Ok(v);
            }
        }
    }

    /// Producer: bytes that can be written without waiting (reads the
    /// consumer's tail).
    #[cfg(test)]
    pub(super) fn free(&self) -> u64 {
        let head = self.produced();
        let tail = self.tail().load(Ordering::Acquire);
        self.cap.saturating_sub(head.saturating_sub(tail))
    }

    /// Producer: the consumer's tail, read now (and kept as the one seen).
    #[inline]
    fn load_tail(&self) -> u64 {
        let tail = self.tail().load(Ordering::Acquire);
        self.seen_tail.store(tail, Ordering::Relaxed);
        tail
    }

    /// Producer, holding the producer lock: whether `n` bytes can be
    /// written without waiting. Reads the consumer's tail only when the
    /// one last seen leaves too little room.
    #[inline]
    pub(super) fn has_room(&self, n: u64) -> bool {
        let head = self.produced();
        let fits = |tail: u64| self.cap.saturating_sub(head.saturating_sub(tail)) >= n;
        fits(self.seen_tail.load(Ordering::Relaxed)) || fits(self.load_tail())
    }

    /// Producer: copies `buf` into the ring, waiting for space as needed.
    #[inline]
    pub(super) fn write_all(&self, buf: &[u8], stop: &AtomicBool) -> Result<(), RingStop> {
        self.write_inner(buf, stop, false, None)
    }

    /// Producer: writes one whole record a poll can take (a small data or
    /// control message), see [`Ring::notify_data`].
    #[inline]
    pub(super) fn write_pollable(&self, buf: &[u8], stop: &AtomicBool) -> Result<(), RingStop> {
        self.write_inner(buf, stop, true, None)
    }

    /// Producer: writes a record made of a header and a payload. When the
    /// ring has room for all of it, both are copied and published at once:
    /// a poll sees a `pollable` one whole (and the reader thread is left
    /// alone while a poller is there, see [`Ring::notify_data`]), and the
    /// reader thread finds a larger one whole, which it copies straight
    /// into its receive's buffer when that is posted (`read_record` in
    /// `recv.rs`). Otherwise it streams through the ring, waiting for
    /// space, [`STREAM_PIECE`] at a time. The payload's stores bypass the
    /// caches from [`STREAM_SHARED_MIN`](crate::copy::STREAM_SHARED_MIN)
    /// ([`copy_raw_shared`](crate::copy::copy_raw_shared)), or whatever its
    /// size if `stream` (a payload of the adaptive sizes the consumer gets
    /// streamed, [`Ring::next_adaptive_streams`]).
    #[inline]
    pub(super) fn write_record(
        &self,
        header: &[u8],
        payload: &[u8],
        stop: &AtomicBool,
        pollable: bool,
        stream: bool,
    ) -> Result<(), RingStop> {
        let total = (header.len() + payload.len()) as u64;
        let from = if stream {
            0
        } else {
            crate::copy::STREAM_SHARED_MIN
        };
        if self.has_room(total) {
            let head = self.produced();
            // SAFETY: `total` bytes from `head` are free (the consumer only
            // frees more meanwhile), and only the producer writes them.
            unsafe {
                self.copy_in(head, header);
                self.copy_in_as(head + header.len() as u64, payload, from);
            }
            if pollable {
                self.fill_slot(head, header, payload);
            }
            self.publish(head + total);
            self.notify_data(pollable);
            return Ok(());
        }
        self.write_all(header, stop)?;
        self.write_inner(payload, stop, false, Some(from))
    }

    /// Producer, holding the producer lock: when the ring is empty and its
    /// head sits at least [`REWIND_MIN`] (or half the capacity, if smaller)
    /// into the data area, the bytes from the head to the end of the data
    /// area, provided they are at least `min_gap` and a record of `total`
    /// bytes (at most [`REWIND_MAX_RECORD`]) fits before the head. The caller then writes a pad record of
    /// that many bytes and its record after it
    /// ([`Ring::write_after_gap`]), at the start of the data area: a stream
    /// of small messages that the consumer keeps up with stays in the first
    /// pages of the ring, warm in the caches of both sides, instead of
    /// sweeping all of it (each first touch of a page of the ring is a page
    /// fault, and every record a cache miss).
    #[inline]
    pub(super) fn idle_gap(&self, total: u64, min_gap: u64) -> Option<u64> {
        let head = self.produced();
        let idx = head % self.cap;
        let gap = self.cap - idx;
        // Whether the ring is empty is asked last: only then is the tail
        // read (when the one last seen is behind the head).
        (idx >= REWIND_MIN.min(self.cap / 2)
            && total <= idx.min(REWIND_MAX_RECORD)
            && gap >= min_gap
            && (self.seen_tail.load(Ordering::Relaxed) == head || self.load_tail() == head))
            .then_some(gap)
    }

    /// Producer, holding the producer lock, after [`Ring::idle_gap`]
    /// returned `gap`: writes `pad` (a record telling the consumer to skip
    /// `gap` bytes from its start) at the head, then `header` and `payload`
    /// at the start of the data area, and publishes all of it at once (a
    /// poll sees the pad and the record whole).
    pub(super) fn write_after_gap(&self, pad: &[u8], gap: u64, header: &[u8], payload: &[u8]) {
        let head = self.produced();
        debug_assert!(pad.len() as u64 <= gap && (head + gap).is_multiple_of(self.cap));
        let at = head + gap;
        // SAFETY: the ring is empty (`idle_gap`, and only this producer
        // fills it), so the whole capacity from `head` is free: `gap` bytes
        // to the end of the data area, and `header + payload <= head % cap`
        // bytes from its start.
        unsafe {
            self.copy_in(head, pad);
            self.copy_in(at, header);
            self.copy_in(at + header.len() as u64, payload);
        }
        self.fill_slot(at, header, payload);
        self.publish(at + (header.len() + payload.len()) as u64);
        self.notify_data(true);
    }

    /// Producer: copies `buf` into the ring at position `pos`.
    ///
    /// # Safety
    /// `[pos, pos + buf.len())` must be free space of the ring (behind the
    /// consumer's tail by at most the capacity) that only this producer
    /// writes.
    #[inline]
    unsafe fn copy_in(&self, pos: u64, buf: &[u8]) {
        // SAFETY: the caller's contract.
        unsafe { self.copy_in_as(pos, buf, usize::MAX) }
    }

    /// Producer: copies `buf` into the ring at position `pos`, the bytes up
    /// to the end of the data area, then the rest from its start: with
    /// stores that bypass the caches for each part of at least
    /// `stream_from` bytes, as bytes the peer's core reads next, not this
    /// one ([`copy_raw_shared_from`](crate::copy::copy_raw_shared_from)),
    /// plain stores below (all of them with `usize::MAX`, [`Ring::copy_in`]).
    ///
    /// # Safety
    /// As [`Ring::copy_in`].
    #[inline]
    unsafe fn copy_in_as(&self, pos: u64, buf: &[u8], stream_from: usize) {
        let n = buf.len();
        debug_assert!(n as u64 <= self.cap);
        let idx = (pos % self.cap) as usize;
        let first = n.min(self.cap as usize - idx);
        // SAFETY: [idx, idx + first) and [0, n - first) lie in the data area
        // (the caller's contract makes them free).
        unsafe {
            let copy =
                |dst, src, len| crate::copy::copy_raw_shared_from(dst, src, len, stream_from);
            copy(self.data.add(idx), buf.as_ptr(), first);
            copy(self.data, buf.as_ptr().add(first), n - first);
        }
    }

    /// Producer: copies `buf` into the ring as space frees up, publishing
    /// each piece: all the free space at a time, or, for a payload
    /// (`payload`: the size from which its stores bypass the caches, as
    /// [`Ring::copy_in_as`]'s `stream_from`), at most [`STREAM_PIECE`], so
    /// that the consumer copies one piece out while the next goes in.
    fn write_inner(
        &self,
        mut buf: &[u8],
        stop: &AtomicBool,
        small: bool,
        payload: Option<usize>,
    ) -> Result<(), RingStop> {
        let cap = self.cap;
        let mut head = self.produced();
        while !buf.is_empty() {
            let free = self.wait(self.space_seq(), self.writer_waiting(), stop, || {
                let tail = self.load_tail();
                if tail > head || head - tail > cap {
                    return Err(RingStop::Corrupt(format!(
                        "ring positions head {head} tail {tail} (capacity {cap})"
                    )));
                }
                let free = cap - (head - tail);
                Ok((free > 0).then_some(free))
            })?;
            let mut n = (free as usize).min(buf.len());
            if payload.is_some() {
                n = n.min(STREAM_PIECE);
            }
            // SAFETY: `n` bytes from `head` are free (the wait above), and
            // the consumer does not read them until `head` moves.
            unsafe { self.copy_in_as(head, &buf[..n], payload.unwrap_or(usize::MAX)) };
            head += n as u64;
            self.publish(head);
            self.notify_data(small);
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Consumer, holding the consumer lock: bytes published and not yet
    /// consumed.
    #[inline]
    pub(super) fn readable(&self) -> Result<u64, String> {
        let tail = self.tail().load(Ordering::Acquire);
        let head = self.head().load(Ordering::Acquire);
        if head < tail || head - tail > self.cap {
            return Err(format!(
                "ring positions head {head} tail {tail} (capacity {})",
                self.cap
            ));
        }
        Ok(head - tail)
    }

    /// Consumer, without the consumer lock: whether bytes seem to be
    /// waiting (to be confirmed with [`Ring::readable`] under the lock).
    /// The tail is loaded first: it never passes the head, so a head below
    /// it is corrupt; but the other consumer may move the tail meanwhile,
    /// and the producer fill the space it freed, so a distance above the
    /// capacity proves nothing here.
    #[inline]
    pub(super) fn pending(&self) -> Result<bool, String> {
        let tail = self.tail().load(Ordering::Acquire);
        let head = self.head().load(Ordering::Acquire);
        if head < tail {
            return Err(format!(
                "ring positions head {head} tail {tail} (capacity {})",
                self.cap
            ));
        }
        Ok(head > tail)
    }

    /// Consumer: copies `out.len()` bytes starting at position `pos`
    /// without consuming them.
    ///
    /// # Safety
    /// The bytes `[pos, pos + out.len())` must have been published by the
    /// producer (observed with Acquire on `head`) and not consumed yet, and
    /// the caller must hold the consumer role (no other consumer moves the
    /// tail meanwhile).
    #[inline]
    pub(super) unsafe fn copy_out(&self, pos: u64, out: &mut [u8]) {
        let n = out.len();
        debug_assert!(n as u64 <= self.cap);
        let idx = (pos % self.cap) as usize;
        let first = n.min(self.cap as usize - idx);
        // SAFETY: [idx, idx + first) and [0, n - first) lie in the data area;
        // the producer does not overwrite them until the tail moves past.
        unsafe {
            crate::copy::copy_raw(out.as_mut_ptr(), self.data.add(idx), first);
            crate::copy::copy_raw(out.as_mut_ptr().add(first), self.data, n - first);
        }
    }

    /// Consumer: moves the tail to `tail` (space for the producer) and wakes
    /// a writer that waits for space.
    #[inline]
    pub(super) fn consume_to(&self, tail: u64) {
        self.tail().store(tail, Ordering::Release);
        self.space_seq().fetch_add(1, Ordering::SeqCst);
        if self.writer_waiting().load(Ordering::SeqCst) != 0 {
            futex_wake(self.space_seq());
        }
    }

    /// Consumer: fills `out` from the ring, waiting for data as needed. The
    /// caller holds the link's consumer lock.
    pub(super) fn read_exact(&self, out: &mut [u8], stop: &AtomicBool) -> Result<(), RingStop> {
        let mut tail = self.tail().load(Ordering::Relaxed);
        let mut off = 0usize;
        while off < out.len() {
            let avail = self.wait(self.data_seq(), self.reader_waiting(), stop, || {
                let head = self.head().load(Ordering::Acquire);
                if head < tail || head - tail > self.cap {
                    return Err(RingStop::Corrupt(format!(
                        "ring positions head {head} tail {tail} (capacity {})",
                        self.cap
                    )));
                }
                Ok((head > tail).then_some(head - tail))
            })?;
            let n = (avail as usize).min(out.len() - off).min(STREAM_PIECE);
            // SAFETY: published (Acquire on head above), not consumed, and
            // we hold the consumer lock.
            unsafe { self.copy_out(tail, &mut out[off..off + n]) };
            tail += n as u64;
            self.consume_to(tail);
            off += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The ring without a peer process: a producer [`Ring`] and a consumer
    //! [`Ring`] over the same direction of a segment in this process's own
    //! memory, driven from one thread or from two.

    use super::*;
    use crate::shm::segment::{OFF_CREATOR_MASK, OFF_OPENER_PROBE_VAL};
    use std::time::Instant;

    const CAP: u64 = 4096;

    fn cfg(spin: u32, slice: Duration) -> ShmConfig {
        ShmConfig {
            spin_iterations: spin,
            wait_slice: slice,
            ..ShmConfig::default()
        }
    }

    /// The producer's and the consumer's view of ring 0 of a fresh segment.
    fn rings(cfg: &ShmConfig) -> (Arc<Ring>, Arc<Ring>) {
        rings_of(CAP, cfg)
    }

    /// [`rings`] of `cap` bytes.
    fn rings_of(cap: u64, cfg: &ShmConfig) -> (Arc<Ring>, Arc<Ring>) {
        let seg = Segment::anonymous(HEADER + 2 * cap as usize);
        let producer = Arc::new(Ring::new(seg.clone(), 0, cap, cfg));
        let consumer = Arc::new(Ring::new(seg, 0, cap, cfg));
        (producer, consumer)
    }

    /// `n` bytes whose pattern does not repeat with the ring's capacity.
    fn bytes(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ salt).collect()
    }

    fn read(ring: &Ring, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        ring.read_exact(&mut out, &AtomicBool::new(false)).unwrap();
        out
    }

    fn corrupt<T: std::fmt::Debug>(r: Result<T, RingStop>) -> String {
        match r {
            Err(RingStop::Corrupt(why)) => why,
            other => panic!("expected a corrupt ring: {other:?}"),
        }
    }

    #[test]
    fn the_producer_reads_the_tail_again_only_when_the_one_it_saw_leaves_too_little_room() {
        let (p, c) = rings(&ShmConfig::default());
        let go = AtomicBool::new(false);
        let seen = |r: &Ring| r.seen_tail.load(Ordering::Relaxed);
        p.write_record(
            &bytes(32, 1),
            &bytes(CAP as usize - 1000, 2),
            &go,
            true,
            false,
        )
        .unwrap();
        assert_eq!(
            read(&c, CAP as usize - 968),
            [bytes(32, 1), bytes(CAP as usize - 1000, 2)].concat()
        );
        // The consumer freed the ring; the producer still sees its old tail,
        // which leaves room for this: the tail is not read.
        assert!(p.has_room(900));
        assert_eq!(seen(&p), 0);
        // It does not leave room for this: the tail is read, and seen.
        assert!(p.has_room(2000));
        assert_eq!(seen(&p), CAP - 968);
        // No room whatever the tail says.
        assert!(!p.has_room(CAP + 1));
        // A small record into the room seen, whole and in order.
        p.write_record(&bytes(32, 3), &bytes(8, 4), &go, true, false)
            .unwrap();
        assert_eq!(read(&c, 40), [bytes(32, 3), bytes(8, 4)].concat());
        assert_eq!(seen(&p), CAP - 968, "not read for it");
    }

    /// A payload larger than the ring's free space goes through in pieces
    /// of at most [`STREAM_PIECE`], each published on its own (the consumer
    /// copies one out while the next goes in), its bytes exact across the
    /// wrap at every piece boundary, streamed stores and all.
    #[test]
    fn a_payload_larger_than_the_ring_streams_through_in_pieces() {
        const BIG: u64 = 1 << 20;
        let (p, c) = rings_of(BIG, &ShmConfig::default());
        // Off the start, so that pieces straddle the end of the data area.
        p.write_all(&bytes(1000, 1), &AtomicBool::new(false))
            .unwrap();
        assert_eq!(read(&c, 1000), bytes(1000, 1));
        let (header, payload) = (bytes(32, 2), bytes(3 * BIG as usize + 77, 3));
        let seq = c.data_seq().load(Ordering::SeqCst);
        let producer = {
            let (p, header, payload) = (p.clone(), header.clone(), payload.clone());
            std::thread::spawn(move || {
                p.write_record(&header, &payload, &AtomicBool::new(false), false, false)
            })
        };
        // The producer fills the empty ring (all of it free) before the
        // consumer reads: the header, then the first pieces, each its own
        // publication.
        let until = Instant::now() + Duration::from_secs(10);
        while c.readable().unwrap() < BIG {
            assert!(Instant::now() < until, "the ring never filled up");
            std::thread::yield_now();
        }
        let publications = c.data_seq().load(Ordering::SeqCst) - seq;
        let pieces = (BIG as usize - 32).div_ceil(STREAM_PIECE) as u32;
        assert_eq!(publications, 1 + pieces, "the header and {pieces} pieces");
        assert_eq!(read(&c, 32), header);
        assert!(read(&c, payload.len()) == payload, "bytes differ");
        producer.join().unwrap().unwrap();
    }

    #[test]
    fn a_streamed_payload_comes_out_as_it_went_in_whole_or_in_pieces() {
        // A 40 KiB payload written streamed (the consumer asked for it):
        // once with room, once into a ring too full for it (pieces), each
        // straddling the end of the data area.
        let (p, c) = rings_of(64 << 10, &ShmConfig::default());
        let go = AtomicBool::new(false);
        let (header, payload) = (bytes(32, 1), bytes(40 << 10, 2));
        p.write_all(&bytes(50_000, 3), &go).unwrap();
        assert_eq!(read(&c, 50_000), bytes(50_000, 3));
        assert!(p.has_room(32 + payload.len() as u64));
        p.write_record(&header, &payload, &go, true, true).unwrap();
        assert_eq!(read(&c, 32), header);
        assert!(read(&c, payload.len()) == payload, "bytes differ (whole)");
        // 30 KiB left unread: no room for the record at once.
        p.write_all(&bytes(30 << 10, 4), &go).unwrap();
        assert!(!p.has_room(32 + payload.len() as u64));
        let producer = {
            let (p, header, payload) = (p.clone(), header.clone(), payload.clone());
            std::thread::spawn(move || {
                p.write_record(&header, &payload, &AtomicBool::new(false), true, true)
            })
        };
        assert_eq!(read(&c, 30 << 10), bytes(30 << 10, 4));
        assert_eq!(read(&c, 32), header);
        assert!(read(&c, payload.len()) == payload, "bytes differ (pieces)");
        producer.join().unwrap().unwrap();
    }

    #[test]
    fn bytes_come_out_as_they_went_in() {
        let (p, c) = rings(&ShmConfig::default());
        let go = AtomicBool::new(false);
        assert_eq!((p.free(), c.readable().unwrap()), (CAP, 0));
        assert!(!c.pending().unwrap());
        p.write_all(&bytes(100, 1), &go).unwrap();
        assert_eq!((p.free(), c.readable().unwrap()), (CAP - 100, 100));
        assert!(c.pending().unwrap());
        assert_eq!(read(&c, 60), bytes(100, 1)[..60]);
        assert_eq!(read(&c, 40), bytes(100, 1)[60..]);
        assert_eq!((p.free(), c.readable().unwrap()), (CAP, 0));
        assert!(!c.pending().unwrap());
        assert_eq!(p.head().load(Ordering::Relaxed), 100);
        assert_eq!(c.tail().load(Ordering::Relaxed), 100);
    }

    #[test]
    fn positions_grow_past_the_capacity_and_bytes_wrap_around() {
        let (p, c) = rings(&ShmConfig::default());
        let go = AtomicBool::new(false);
        // Sizes that straddle the end of the data area at ever other places.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut total = 0u64;
        for round in 0..300u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % CAP) as usize + 1;
            let want = bytes(n, round as u8);
            p.write_all(&want, &go).unwrap();
            assert_eq!(c.readable().unwrap(), n as u64);
            let first = n / 3;
            let mut got = read(&c, first);
            got.extend(read(&c, n - first));
            assert_eq!(got, want, "round {round}, {n} bytes from {total}");
            total += n as u64;
        }
        assert!(total > 100 * CAP);
        assert_eq!(p.head().load(Ordering::Relaxed), total);
        assert_eq!(c.tail().load(Ordering::Relaxed), total);
        // A piece that wraps lands at the end and at the start of the data
        // area: move the positions to 5 bytes before the end, then write 15.
        let at = c.tail().load(Ordering::Relaxed);
        let k = ((2 * CAP - 5 - at % CAP) % CAP) as usize;
        p.write_all(&bytes(k, 6), &go).unwrap();
        assert_eq!(read(&c, k), bytes(k, 6));
        assert_eq!((at + k as u64) % CAP, CAP - 5);
        let piece = bytes(15, 7);
        p.write_all(&piece, &go).unwrap();
        // SAFETY: the data area is CAP bytes; nothing writes it meanwhile.
        let data = unsafe { std::slice::from_raw_parts(c.data, CAP as usize) };
        assert_eq!(data[CAP as usize - 5..], piece[..5]);
        assert_eq!(data[..10], piece[5..]);
        assert_eq!(read(&c, 15), piece);
    }

    #[test]
    fn a_full_ring_holds_the_producer_until_the_consumer_frees_space() {
        // No spinning and long futex waits: only the wake-ups keep it going.
        let (p, c) = rings(&cfg(0, Duration::from_secs(5)));
        let go = AtomicBool::new(false);
        let first = bytes(CAP as usize, 3);
        p.write_all(&first, &go).unwrap();
        assert_eq!((p.free(), c.readable().unwrap()), (0, CAP));
        // Full, and closing: the producer gives up and publishes nothing.
        let (p2, _c2) = rings(&ShmConfig::default());
        p2.write_all(&bytes(CAP as usize, 0), &go).unwrap();
        let stop = AtomicBool::new(true);
        assert!(matches!(p2.write_all(&[1], &stop), Err(RingStop::Closed)));
        assert_eq!(p2.head().load(Ordering::Relaxed), CAP);
        // A stream of several capacities through the full ring.
        let more = bytes(3 * CAP as usize + 123, 4);
        let t = Instant::now();
        let producer = {
            let (p, more) = (p.clone(), more.clone());
            std::thread::spawn(move || p.write_all(&more, &AtomicBool::new(false)))
        };
        let mut got = Vec::new();
        for n in [1000usize, 777, 1, 4096, 3000].into_iter().cycle() {
            let left = first.len() + more.len() - got.len();
            if left == 0 {
                break;
            }
            got.extend(read(&c, n.min(left)));
        }
        producer.join().unwrap().unwrap();
        assert!(t.elapsed() < Duration::from_secs(4), "a wake-up was lost");
        assert_eq!(got[..first.len()], first[..]);
        assert_eq!(got[first.len()..], more[..]);
        assert_eq!((p.free(), c.readable().unwrap()), (CAP, 0));
    }

    #[test]
    fn an_empty_ring_holds_the_consumer_until_data_is_published() {
        let (p, c) = rings(&cfg(0, Duration::from_secs(5)));
        let mut out = [0u8; 8];
        assert!(matches!(
            c.read_exact(&mut out, &AtomicBool::new(true)),
            Err(RingStop::Closed)
        ));
        let t = Instant::now();
        let consumer = {
            let c = c.clone();
            std::thread::spawn(move || read(&c, 100))
        };
        let go = AtomicBool::new(false);
        let want = bytes(100, 5);
        std::thread::sleep(Duration::from_millis(20));
        p.write_all(&want[..30], &go).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        p.write_all(&want[30..], &go).unwrap();
        assert_eq!(consumer.join().unwrap(), want);
        assert!(t.elapsed() < Duration::from_secs(4), "a wake-up was lost");
    }

    #[test]
    fn a_record_with_room_is_published_whole_else_in_pieces() {
        let (p, c) = rings(&ShmConfig::default());
        let go = AtomicBool::new(false);
        let (header, payload) = (bytes(32, 8), bytes(100, 9));
        // Whole: one publication (one notification) of header and payload.
        let seq = c.data_seq().load(Ordering::SeqCst);
        p.write_record(&header, &payload, &go, true, false).unwrap();
        assert_eq!(c.data_seq().load(Ordering::SeqCst), seq + 1);
        assert_eq!(c.readable().unwrap(), 132);
        // What a poll does with it: copy out, then consume it at once.
        let tail = c.tail().load(Ordering::Relaxed);
        let (mut h, mut b) = ([0u8; 32], [0u8; 100]);
        // SAFETY: published above, not consumed; the only consumer.
        unsafe {
            c.copy_out(tail, &mut h);
            c.copy_out(tail + 32, &mut b);
        }
        c.consume_to(tail + 132);
        assert_eq!((&h[..], &b[..]), (&header[..], &payload[..]));
        assert_eq!(p.free(), CAP);
        // Not pollable, with room: whole too (the reader thread finds it
        // whole and can copy it straight into its receive's buffer).
        let seq = c.data_seq().load(Ordering::SeqCst);
        p.write_record(&header, &payload, &go, false, false)
            .unwrap();
        assert_eq!(c.data_seq().load(Ordering::SeqCst), seq + 1);
        assert_eq!(c.readable().unwrap(), 132);
        assert_eq!(read(&c, 132), [header.clone(), payload.clone()].concat());
        // Pollable but without room: streamed through the ring in pieces,
        // so the consumer sees a partial record until it frees space.
        let filler = bytes(CAP as usize - 100, 10);
        p.write_all(&filler, &go).unwrap();
        let big = bytes(200, 11);
        let producer = {
            let (p, header, big) = (p.clone(), header.clone(), big.clone());
            std::thread::spawn(move || {
                p.write_record(&header, &big, &AtomicBool::new(false), true, false)
            })
        };
        let until = Instant::now() + Duration::from_secs(10);
        while c.readable().unwrap() < CAP {
            assert!(Instant::now() < until, "the ring never filled up");
            std::thread::yield_now();
        }
        assert_eq!(c.readable().unwrap() - filler.len() as u64, 100);
        assert_eq!(read(&c, filler.len()), filler);
        assert_eq!(read(&c, 232), [header, big].concat());
        producer.join().unwrap().unwrap();
        assert_eq!(c.readable().unwrap(), 0);
    }

    #[test]
    fn an_empty_ring_far_into_its_data_area_offers_the_gap_to_its_end() {
        let (p, c) = rings(&ShmConfig::default());
        let go = AtomicBool::new(false);
        let rewind_at = REWIND_MIN.min(CAP / 2);
        // Near the start: no gap offered.
        p.write_all(&bytes(100, 1), &go).unwrap();
        assert_eq!(read(&c, 100), bytes(100, 1));
        assert_eq!(p.idle_gap(10, 32), None);
        // Far in, but not empty: none either.
        p.write_all(&bytes(rewind_at as usize, 2), &go).unwrap();
        assert_eq!(p.idle_gap(10, 32), None);
        assert_eq!(read(&c, rewind_at as usize), bytes(rewind_at as usize, 2));
        // Empty and far in: the bytes to the end, if the record fits before
        // the head and the gap holds a pad header.
        let idx = 100 + rewind_at;
        assert_eq!(p.idle_gap(10, 32), Some(CAP - idx));
        assert_eq!(p.idle_gap(idx, 32), Some(CAP - idx));
        assert_eq!(p.idle_gap(idx + 1, 32), None);
        assert_eq!(p.idle_gap(10, CAP - idx + 1), None);
        // Pad, header and payload published at once, the record at the
        // start of the data area.
        let seq = c.data_seq().load(Ordering::SeqCst);
        let gap = CAP - idx;
        p.write_after_gap(&bytes(32, 3), gap, &bytes(32, 4), &bytes(50, 5));
        assert_eq!(c.data_seq().load(Ordering::SeqCst), seq + 1);
        assert_eq!(c.readable().unwrap(), gap + 82);
        assert_eq!(read(&c, 32), bytes(32, 3));
        let tail = c.tail().load(Ordering::Relaxed);
        c.consume_to(tail + gap - 32);
        assert_eq!(c.tail().load(Ordering::Relaxed) % CAP, 0);
        assert_eq!(read(&c, 82), [bytes(32, 4), bytes(50, 5)].concat());
        assert_eq!(p.free(), CAP);
    }

    /// The producer writes where it last published, never where the
    /// control block's head says: the head is not read back (a line the
    /// consumer polls), so a head scribbled on by the other side moves
    /// neither its writes nor its idea of the room left, and its next
    /// publication puts the head right.
    #[test]
    fn the_producer_keeps_its_own_head() {
        let go = AtomicBool::new(false);
        let (p, c) = rings(&ShmConfig::default());
        p.write_record(&bytes(24, 1), &bytes(8, 2), &go, true, false)
            .unwrap();
        assert_eq!(p.head().load(Ordering::Relaxed), 32);
        p.head().store(CAP + 999, Ordering::Release);
        assert_eq!(p.free(), CAP - 32);
        p.write_record(&bytes(24, 3), &bytes(40, 4), &go, true, false)
            .unwrap();
        assert_eq!(p.head().load(Ordering::Relaxed), 96);
        let want = [bytes(24, 1), bytes(8, 2), bytes(24, 3), bytes(40, 4)].concat();
        assert_eq!(read(&c, 96), want);
        // A producer that attaches to a ring in use starts at its head.
        let again = Ring::new(p.seg.clone(), 0, CAP, &ShmConfig::default());
        assert_eq!(again.produced(), 96);
    }

    #[test]
    fn impossible_positions_are_reported_not_trusted() {
        let go = AtomicBool::new(false);
        // The head behind the tail.
        let (p, c) = rings(&ShmConfig::default());
        p.force_head(10);
        c.tail().store(20, Ordering::Release);
        assert!(c.readable().unwrap_err().contains("head 10 tail 20"));
        assert!(c.pending().is_err());
        assert!(corrupt(c.read_exact(&mut [0u8; 4], &go)).contains("head 10 tail 20"));
        assert!(corrupt(p.write_all(&[1; 4], &go)).contains("head 10 tail 20"));
        // The head more than a capacity ahead of the tail.
        let (p, c) = rings(&ShmConfig::default());
        p.force_head(CAP + 50);
        assert!(c.readable().unwrap_err().contains("capacity 4096"));
        // Without the consumer lock the tail may have moved: not proof.
        assert!(c.pending().unwrap());
        assert!(corrupt(c.read_exact(&mut [0u8; 4], &go)).contains("capacity 4096"));
        assert!(corrupt(p.write_all(&[1; 4], &go)).contains("capacity 4096"));
        assert_eq!(p.head().load(Ordering::Relaxed), CAP + 50);
    }

    /// A small record published whole is also in the slot, for its own
    /// position only, with its header (the reserved word zero again) and
    /// payload; a larger one, a streamed one, or one the producer is
    /// rewriting the slot for, is not.
    #[test]
    fn the_slot_holds_the_last_small_record_for_its_position_only() {
        use crate::shm::record::{REC_CONTROL, REC_DATA, encode_record};
        let (p, c) = rings(&ShmConfig::default());
        let go = AtomicBool::new(false);
        assert!(c.slot_record(0).is_none(), "a fresh slot holds nothing");
        let mut pos = 0u64;
        for len in [0usize, 1, 8, 15, 16] {
            let h = encode_record(
                REC_DATA,
                7,
                0xA1B2_C3D4,
                0xFFFF_FFFE,
                1 << 40 | len as u64,
                len as u64,
            );
            let payload = bytes(len, len as u8);
            p.write_record(&h, &payload, &go, true, false).unwrap();
            let (hb, pb) = c.slot_record(pos).expect("in the slot");
            assert_eq!(hb, h, "{len} B: header");
            assert_eq!(pb[..len], payload[..], "{len} B: payload");
            assert!(pb[len..].iter().all(|&b| b == 0));
            for other in [pos + 1, pos.wrapping_sub(1), pos + CAP] {
                assert!(c.slot_record(other).is_none(), "{len} B at {other}");
            }
            assert_eq!(read(&c, REC_LEN + len), [h.to_vec(), payload].concat());
            pos += (REC_LEN + len) as u64;
        }
        // 17 bytes: not in the slot, which still holds the last one.
        let h = encode_record(REC_CONTROL, 0, 1, 2, 3, 17);
        p.write_record(&h, &bytes(17, 9), &go, true, false).unwrap();
        assert!(c.slot_record(pos).is_none());
        assert!(c.slot_record(pos - (REC_LEN + 16) as u64).is_some());
        assert_eq!(read(&c, REC_LEN + 17), [h.to_vec(), bytes(17, 9)].concat());
        pos += (REC_LEN + 17) as u64;
        // Not pollable (streamed): not in the slot.
        let h = encode_record(REC_DATA, 0, 1, 2, 4, 8);
        p.write_record(&h, &bytes(8, 1), &go, false, false).unwrap();
        assert!(c.slot_record(pos).is_none());
        assert_eq!(read(&c, REC_LEN + 8), [h.to_vec(), bytes(8, 1)].concat());
        pos += (REC_LEN + 8) as u64;
        // While the producer rewrites the slot (its tag 0), or once it has
        // rewritten it for a later record, the slot has no record at `pos`.
        let h = encode_record(REC_DATA, 0, 1, 2, 5, 8);
        p.write_record(&h, &bytes(8, 2), &go, true, false).unwrap();
        assert!(c.slot_record(pos).is_some());
        p.slot(0).store(0, Ordering::Relaxed);
        assert!(c.slot_record(pos).is_none());
        p.fill_slot(pos + 100, &h, &bytes(8, 2));
        assert!(c.slot_record(pos).is_none());
        assert!(c.slot_record(pos + 100).is_some());
    }

    #[test]
    fn control_block_words_do_not_overlap_and_each_side_writes_its_own_lines() {
        // What the producer writes at every record, the slot included, on
        // one line: what a consumer reads to find a small record.
        let producer_line = [
            (W_HEAD, 8),
            (W_DATA_SEQ, 4),
            (W_WAITING, 4),
            (W_SLOT, 8 * SLOT_WORDS),
        ];
        // What the producer writes rarely, on a line of its own.
        let producer_rare = [(W_CMA_WITHDRAWN, 8)];
        // What the consumer writes at every record, on a line of its own.
        let consumer_hot = [(R_TAIL, 8), (R_SPACE_SEQ, 4)];
        let consumer_line = [
            (R_WAITING, 4),
            (R_CMA_OK, 4),
            (R_CMA_DONE, 8),
            (R_POLLING, 4),
            (R_LEASE, 8),
            (R_STREAM, 4),
        ];
        for &(off, len) in &producer_line {
            assert!(off.is_multiple_of(len.min(8)) && off + len <= 64, "{off}");
        }
        for &(off, len) in &producer_rare {
            assert!(
                off.is_multiple_of(len) && off >= 192 && off + len <= 256,
                "{off}"
            );
        }
        for &(off, len) in &consumer_line {
            assert!(
                off.is_multiple_of(len) && off >= 64 && off + len <= 128,
                "{off}"
            );
        }
        for &(off, len) in &consumer_hot {
            assert!(
                off.is_multiple_of(len) && off >= 128 && off + len <= 192,
                "{off}"
            );
        }
        let all: Vec<_> = producer_line
            .iter()
            .chain(&consumer_line)
            .chain(&consumer_hot)
            .chain(&producer_rare)
            .collect();
        for (i, &&(a, la)) in all.iter().enumerate() {
            for &&(b, lb) in &all[i + 1..] {
                assert!(a + la <= b || b + lb <= a, "words at {a} and {b} overlap");
            }
        }
        // The blocks sit after the segment's own words, a line apart.
        assert!(OFF_OPENER_PROBE_VAL + 8 <= CTL[0]);
        assert!(CTL[0].is_multiple_of(64) && CTL[0] + 256 <= CTL[1]);
        assert!(CTL[1].is_multiple_of(64) && CTL[1] + 256 <= OFF_CREATOR_MASK);
    }

    #[test]
    fn the_two_directions_share_nothing_but_the_segment() {
        let cfg = ShmConfig::default();
        let seg = Segment::anonymous(HEADER + 2 * CAP as usize);
        let r0 = Ring::new(seg.clone(), 0, CAP, &cfg);
        let r1 = Ring::new(seg, 1, CAP, &cfg);
        let go = AtomicBool::new(false);
        // The producer withdraws its lent payloads: a word of its own line,
        // which the other direction does not see, and which leaves the
        // positions alone.
        r0.cma_withdrawn().store(u64::MAX, Ordering::SeqCst);
        r0.polling().store(1, Ordering::SeqCst);
        r0.cma_done().store(3, Ordering::SeqCst);
        assert_eq!(r1.cma_withdrawn().load(Ordering::SeqCst), 0);
        assert_eq!(r1.polling().load(Ordering::SeqCst), 0);
        assert_eq!(r1.cma_done().load(Ordering::SeqCst), 0);
        assert_eq!((r0.free(), r0.readable().unwrap()), (CAP, 0));
        // Full rings in both directions: disjoint data areas.
        r0.write_all(&bytes(CAP as usize, 12), &go).unwrap();
        r1.write_all(&bytes(CAP as usize, 13), &go).unwrap();
        assert_eq!(read(&r0, CAP as usize), bytes(CAP as usize, 12));
        assert_eq!(read(&r1, CAP as usize), bytes(CAP as usize, 13));
        assert_eq!(r0.cma_withdrawn().load(Ordering::SeqCst), u64::MAX);
    }

    /// A consumer's reader thread waiting (as the reader does) until data
    /// is pending; returns when it woke.
    fn sleeper(c: Arc<Ring>) -> std::thread::JoinHandle<Instant> {
        std::thread::spawn(move || {
            let stop = AtomicBool::new(false);
            c.wait(c.data_seq(), c.reader_waiting(), &stop, || {
                c.pending()
                    .map(|d| d.then_some(()))
                    .map_err(RingStop::Corrupt)
            })
            .unwrap();
            Instant::now()
        })
    }

    /// Returns once `c`'s reader thread sleeps.
    fn asleep(c: &Ring) {
        while c.reader_waiting().load(Ordering::SeqCst) != ASLEEP {
            std::thread::yield_now();
        }
    }

    /// Whether the reader thread `r` still sleeps `d` after now.
    fn sleeps_on(r: &std::thread::JoinHandle<Instant>, d: Duration) -> bool {
        std::thread::sleep(d);
        !r.is_finished()
    }

    #[test]
    fn a_poller_keeps_small_records_from_waking_the_reader() {
        let (p, c) = rings(&cfg(0, Duration::from_secs(20)));
        let go = AtomicBool::new(false);
        // A poller is there: a pollable record does not wake the reader,
        // which sleeps on (the lease watcher hands the record over if the
        // poller stops without it: `watch`).
        c.polling().store(1, Ordering::SeqCst);
        let r = sleeper(c.clone());
        asleep(&c);
        p.write_pollable(&[1; 8], &go).unwrap();
        assert!(
            sleeps_on(&r, Duration::from_millis(300)),
            "a small record woke the reader"
        );
        let t = Instant::now();
        c.notify_reader(); // as the watcher does
        assert!(r.join().unwrap() - t < Duration::from_secs(10));
        assert_eq!(read(&c, 8), [1; 8]);
        // A record a poll cannot take wakes the reader at once.
        let r = sleeper(c.clone());
        asleep(&c);
        let t = Instant::now();
        p.write_all(&[2; 8], &go).unwrap();
        assert!(r.join().unwrap() - t < Duration::from_secs(10));
        // As does a pollable one when nobody polls.
        c.polling().store(0, Ordering::SeqCst);
        assert_eq!(read(&c, 8), [2; 8]);
        let r = sleeper(c.clone());
        asleep(&c);
        let t = Instant::now();
        p.write_pollable(&[3; 8], &go).unwrap();
        assert!(r.join().unwrap() - t < Duration::from_secs(10));
    }

    #[test]
    fn a_lease_keeps_small_records_from_waking_the_reader_until_it_is_ended() {
        let (p, c) = rings(&cfg(0, Duration::from_secs(20)));
        let go = AtomicBool::new(false);
        // Under a lease a small record wakes nobody.
        c.renew_lease(crate::clock::ticks() + crate::clock::to_ticks(Duration::from_secs(10)));
        let r = sleeper(c.clone());
        asleep(&c);
        p.write_pollable(&[1; 8], &go).unwrap();
        assert!(c.attentive());
        assert!(
            sleeps_on(&r, Duration::from_millis(300)),
            "a small record woke the reader"
        );
        c.notify_reader();
        r.join().unwrap();
        assert_eq!(read(&c, 8), [1; 8]);
        // An ended lease lets small records wake it at once again.
        let r = sleeper(c.clone());
        asleep(&c);
        let t = Instant::now();
        c.end_lease();
        assert!(!c.attentive());
        p.write_pollable(&[2; 8], &go).unwrap();
        assert!(r.join().unwrap() - t < Duration::from_secs(10));
        assert_eq!(read(&c, 8), [2; 8]);
        // A record a poll cannot take wakes it at once even under a lease.
        let r = sleeper(c.clone());
        asleep(&c);
        let t = Instant::now();
        c.renew_lease(crate::clock::ticks() + crate::clock::to_ticks(Duration::from_secs(10)));
        p.write_all(&[3; 8], &go).unwrap();
        assert!(r.join().unwrap() - t < Duration::from_secs(10));
    }
}

//! Taking records out of a link's ring from the peer, whole and in ring
//! order, under the link's consumer lock: by the reader thread (any record,
//! waiting for the rest of a large one), or by a poll (only small records
//! already whole in the ring, and CMA records their producer left to
//! polls: `CmaExt::polled`, see [`pollable`]). A CMA record's payload is
//! copied from the sender's memory here, into its receive's landing zone
//! when that is posted; one that arrives before its receive is left in the
//! ring a little for it ([`leave_unposted`]).

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

use super::config::{POLL_MAX_CMA_BYTES, POLL_MAX_PAYLOAD};
use super::link::{Ctx, Link, lock};
use super::record::{
    CMA_EXT, CMA_POLLED_AT, REC_CMA, REC_CONTROL, REC_DATA, REC_GOODBYE, REC_LEN, REC_PAD, Record,
    decode_cma, decode_record,
};
use super::ring::RingStop;
use crate::clock;
use crate::landing::COMBINE_PIECE_BYTES;
use crate::recvbuf::RecvBuf;
use crate::{CloseReason, Message, TransportEvent};

/// What the reader thread does after a record.
enum Next {
    /// Read the next one.
    Go,
    /// Stop: the ring is finished, corrupt, or the transport closes.
    Stop,
}

/// A large CMA copy under way on a reader thread, counted in
/// [`Ctx::reader_copies`] for as long as it lives (see
/// [`Transport::reader_copying`](crate::Transport::reader_copying)):
/// one of more than [`POLL_MAX_CMA_BYTES`], which takes long enough that
/// a waiter spinning beside it on a host short of CPUs costs more than
/// its wake-up. It counts from when the reader thread takes the record,
/// so also while it waits for the receive's zone ([`copy_cma`]'s
/// `zone_wait`; rare for a record left to polls since [`Look::AwaitPost`]).
/// Counting only the copy itself measured no different (5 interleaved
/// rounds, 2 vCPUs: sendrecv 12 MiB and 64 MiB, all-to-all over 4 ranks
/// 1 MiB and 16 MiB, all-reduce 16 MiB, all within the rounds' noise).
struct ReaderCopy<'a>(Option<&'a std::sync::atomic::AtomicU32>);

impl<'a> ReaderCopy<'a> {
    fn start(ctx: &'a Ctx, len: u64) -> Self {
        if len <= POLL_MAX_CMA_BYTES as u64 {
            return ReaderCopy(None);
        }
        ctx.reader_copies.fetch_add(1, Ordering::AcqRel);
        ReaderCopy(Some(&ctx.reader_copies))
    }
}

impl Drop for ReaderCopy<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The reader thread of a link: delivers every record the polls leave, and
/// drops the kept CMA payloads the peer has copied, until a goodbye, a
/// corrupt ring or a closing transport.
pub(super) fn reader(link: &Link, ctx: &Ctx) {
    let ring = &link.in_ring;
    let stop = &*link.stop;
    let lost = |why: String| link.lost(ctx, &why);
    loop {
        // Wait for a record (or a CMA release) without the consumer lock, so
        // that polls can take small messages meanwhile.
        // A record a poll can take is left to the consumer's polling
        // threads while they are attentive (see `leave_to_pollers`).
        let waited = ring.wait(ring.data_seq(), ring.reader_waiting(), stop, || {
            let data = ring.pending().map_err(RingStop::Corrupt)?;
            let take = data && !leave_to_pollers(link, ctx);
            Ok((take || link.release_pending()).then_some(()))
        });
        match waited {
            Ok(()) => {}
            Err(RingStop::Closed) => break,
            Err(RingStop::Corrupt(why)) => {
                lost(why);
                break;
            }
        }
        #[cfg(test)]
        while ctx.pause_readers.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Err(why) = link.reap() {
            lost(why);
            break;
        }
        if !matches!(ring.pending(), Ok(true)) {
            continue; // woken for a release only, or a poll took the data
        }
        match look(link, ctx, ring.attentive()) {
            Look::Take => {}
            Look::Leave => continue, // a poll takes it
            Look::AwaitPost(key, wait, avail) => {
                // Its receive's poster most likely polls next: look again
                // once it is posted, or once a record comes behind it
                // (which it holds up: it is then taken at once), or once
                // the peer copied a payload of ours (reaped at the loop's
                // top, then the wait goes on for what is left of it: a
                // send of this rank may be what its poster waits for).
                let keep =
                    || matches!(ring.readable(), Ok(n) if n == avail) && !link.release_pending();
                ctx.landing.wait_posted_while(key, wait, stop, &keep);
                continue;
            }
        }
        let guard = lock(&link.consumer);
        match ring.readable() {
            Ok(0) => continue, // a poll took it; wait again
            Ok(_) => {}
            Err(why) => {
                link.reader_gone.store(true, Ordering::Release);
                lost(why);
                break;
            }
        }
        let next = read_record(link, ctx);
        if let Next::Stop = next {
            link.reader_gone.store(true, Ordering::Release);
            drop(guard);
            break;
        }
    }
    link.reader_gone.store(true, Ordering::Release);
}

/// What the reader thread does with the record at the tail ([`look`]).
#[derive(Debug, PartialEq)]
enum Look {
    /// Takes it.
    Take,
    /// Leaves it to the consumer's polling threads ([`leave_to_pollers`]).
    Leave,
    /// Waits up to this long for the receive of this key to be posted,
    /// without the consumer lock, then looks again. A large CMA record a
    /// poll could take but for its unposted receive, found while nobody
    /// polled: the thread that posts a receive most often polls for it
    /// next, and copies it itself. Taken by the reader thread instead, the
    /// copy ran beside that thread, which the scheduler often left waiting
    /// behind the copy on the same CPU until it ended, so that its next op
    /// started a copy late (2 ranks on 2 vCPUs, sendrecv, medians of 5
    /// interleaved rounds: 12 MiB 1385 -> 1034 us, 64 MiB 12.60 ->
    /// 11.39 ms, Open MPI 981 us and 11.00 ms; see docs/performance.md).
    /// The wait ends early when more than the record's `u64` bytes are
    /// published (a record behind it would wait too), and when the peer
    /// released a payload of ours (the loop reaps it, and a send of this
    /// rank completes: it may be what the receive's poster waits for).
    AwaitPost(crate::landing::LandKey, Duration, u64),
}

/// One look at the record at the tail, the consumer's polling threads
/// `attentive` or not ([`Ring::attentive`](super::ring::Ring::attentive)):
/// a record a poll can take ([`pollable`], the last one published) is left
/// to them while they are; one whose receive is not posted yet is left as
/// polls leave it, for as long as they do ([`leave_unposted`]), and if
/// nobody polls and it is larger than [`POLL_MAX_CMA_BYTES`], waited for
/// ([`Look::AwaitPost`]). Anything else, and a look that finds a poll
/// holding the consumer lock, takes it.
fn look(link: &Link, ctx: &Ctx, attentive: bool) -> Look {
    let Ok(_consumer) = link.consumer.try_lock() else {
        return Look::Take;
    };
    let Some((avail, tail, rec)) = peek(link, ctx) else {
        return Look::Take;
    };
    if !(avail == whole_len(&rec) && pollable(&rec, avail, cma_polled(link, tail, &rec, avail))) {
        return Look::Take;
    }
    if !unposted_cma(link, ctx, &rec) {
        return if attentive { Look::Leave } else { Look::Take };
    }
    if !attentive && rec.len <= POLL_MAX_CMA_BYTES as u64 {
        return Look::Take;
    }
    let now = clock::ticks();
    let until = unposted_until(link, ctx, tail, &rec, now);
    if now >= until {
        Look::Take
    } else if attentive {
        Look::Leave
    } else {
        Look::AwaitPost(land_key(link, &rec), clock::to_duration(until - now), avail)
    }
}

/// Whether the reader thread leaves the record at the tail to the
/// consumer's polling threads: they are attentive (one polls, or its lease
/// runs: [`Ring::attentive`](super::ring::Ring::attentive)) and the record
/// is one a poll takes ([`pollable`]). Without this, a reader thread that
/// happened to wake kept finding the next message within its spin and
/// never slept again: every message then went through it and the engine's
/// task (two wake-ups) instead of the waiting thread's poll, 64 KiB
/// sendrecv 34 us against 6-7 us, until the job ended. A record left here
/// waits for the next poll, or the lease's end (the lease watcher then
/// wakes the reader, which takes it: [`super::watch`]). Only the last
/// record published is left: a record behind it (perhaps one a poll cannot
/// take, whose producer woke this thread) would otherwise wait too. When a
/// poll holds the consumer lock, the reader does not wait to look (it
/// takes the record, as before).
///
/// A CMA record whose receive is not posted yet is left as polls leave it,
/// for as long as they do ([`leave_unposted`]).
fn leave_to_pollers(link: &Link, ctx: &Ctx) -> bool {
    link.in_ring.attentive() && look(link, ctx, true) == Look::Leave
}

/// The bytes record `rec` takes in the ring when it is whole there: a CMA
/// record its header and extension, any other its header and payload.
fn whole_len(rec: &Record) -> u64 {
    match rec.kind {
        REC_CMA => (REC_LEN + CMA_EXT) as u64,
        _ => REC_LEN as u64 + rec.len,
    }
}

/// Whether `rec` is a CMA record whose receive is not posted yet (neither
/// a landing zone nor a [mark](crate::landing::Landing::mark)). Taken
/// now, its payload would be copied into a buffer of its own and again
/// into the receive's buffer at the match: a peer one
/// operation ahead sends its next message while this rank still waits for
/// the last one (measured: in a 4-rank 1 MiB sendrecv those second copies
/// took a third as many CPU samples as the CMA copies themselves). Left in
/// the ring a little ([`leave_unposted`]), it is copied once, straight
/// into the zone, by the poll after the receive is posted. A receive that
/// names no buffer posts one of the runtime's or a
/// [mark](crate::landing::Landing::mark) instead, so a posted receive is
/// never waited for. (Before marks, plain receives of 1 to 4 MiB posted
/// nothing, records of those sizes could not wait, and the record a peer
/// one operation ahead sent was copied twice: 4 ranks on 2 vCPUs, a 2 MiB
/// sendrecv took as long as a 4 MiB one.)
fn unposted_cma(link: &Link, ctx: &Ctx, rec: &Record) -> bool {
    rec.kind == REC_CMA && !ctx.landing.is_posted(land_key(link, rec))
}

/// Whether the CMA record `rec` at ring position `tail`, whose receive is
/// not posted ([`unposted_cma`]), is left in the ring for now: for
/// [`land_wait`] of its length (about what its second copy would cost;
/// [`ShmConfig::unposted_wait`](super::ShmConfig::unposted_wait)) from
/// when a poll or the reader thread first found it so, then it is taken
/// into a buffer of its own as before. So a program that waits for
/// something else before it posts that receive (two ranks that each send
/// before they receive, say) is delayed by that much at most, never held
/// up. Under the consumer lock.
fn leave_unposted(link: &Link, ctx: &Ctx, tail: u64, rec: &Record) -> bool {
    let now = clock::ticks();
    now < unposted_until(link, ctx, tail, rec, now)
}

/// When the wait of the CMA record `rec` at ring position `tail` for its
/// receive ends ([`clock::ticks`]): [`land_wait`] of its length
/// ([`ShmConfig::unposted_wait`](super::ShmConfig::unposted_wait)) from
/// the first look at it (`now`, if this is the first). Under the consumer
/// lock.
fn unposted_until(link: &Link, ctx: &Ctx, tail: u64, rec: &Record, now: u64) -> u64 {
    if link.deferred_at.load(Ordering::Relaxed) == tail + 1 {
        return link.deferred_until.load(Ordering::Relaxed);
    }
    let wait = ctx
        .unposted_wait
        .unwrap_or_else(|| land_wait(rec.len as usize));
    let until = now.saturating_add(clock::to_ticks(wait));
    link.deferred_at.store(tail + 1, Ordering::Relaxed);
    link.deferred_until.store(until, Ordering::Relaxed);
    until
}

/// The record header at the tail of `link`'s ring, with the bytes
/// published and the tail: `None` when less than a header is there, or it
/// does not decode (the reader thread reports that). The caller holds the
/// consumer lock.
#[inline]
fn peek(link: &Link, ctx: &Ctx) -> Option<(u64, u64, Record)> {
    let ring = &link.in_ring;
    let avail = match ring.readable() {
        Ok(n) if n >= REC_LEN as u64 => n,
        _ => return None,
    };
    let tail = ring.tail().load(Ordering::Relaxed);
    let mut hb = [0u8; REC_LEN];
    // SAFETY: `avail >= REC_LEN` bytes are published (Acquire on head in
    // `readable`), and the caller holds the consumer lock.
    unsafe { ring.copy_out(tail, &mut hb) };
    Some((avail, tail, decode_record(&hb, ctx.max_message).ok()?))
}

/// Whether a poll takes record `rec` at the tail, with `avail` bytes of the
/// ring published: a data or control record whole in the ring, of at most
/// [`POLL_MAX_PAYLOAD`], or a CMA record (whole) its producer left to
/// polls (`cma_polled`: [`CmaExt::polled`](super::record::CmaExt::polled),
/// read by [`cma_polled`]). Pure.
fn pollable(rec: &Record, avail: u64, cma_polled: bool) -> bool {
    match rec.kind {
        REC_CMA => avail >= (REC_LEN + CMA_EXT) as u64 && cma_polled,
        REC_DATA | REC_CONTROL => {
            rec.len <= POLL_MAX_PAYLOAD as u64 && avail >= REC_LEN as u64 + rec.len
        }
        _ => false,
    }
}

/// Whether `rec`, at ring position `tail` with `avail` bytes published, is
/// a whole CMA record its producer left to polls
/// ([`CmaExt::polled`](super::record::CmaExt::polled)); a flag byte other
/// than 1 reads as not (the reader thread then decodes the record, and
/// refuses a bad one). Under the consumer lock.
fn cma_polled(link: &Link, tail: u64, rec: &Record, avail: u64) -> bool {
    if rec.kind != REC_CMA || avail < (REC_LEN + CMA_EXT) as u64 {
        return false;
    }
    let mut flag = [0u8; 1];
    // SAFETY: the whole record is published (checked above), and the
    // caller holds the consumer lock.
    unsafe {
        link.in_ring
            .copy_out(tail + (REC_LEN + CMA_POLLED_AT) as u64, &mut flag)
    };
    flag[0] == 1
}

/// Reads one whole record under the consumer lock and delivers it.
fn read_record(link: &Link, ctx: &Ctx) -> Next {
    let ring = &link.in_ring;
    let stop = &*link.stop;
    let lost = |why: String| {
        link.lost(ctx, &why);
        Next::Stop
    };
    let mut hb = [0u8; REC_LEN];
    let tail = ring.tail().load(Ordering::Relaxed);
    match ring.read_exact(&mut hb, stop) {
        Ok(()) => {}
        Err(RingStop::Closed) => return Next::Stop,
        Err(RingStop::Corrupt(why)) => return lost(why),
    }
    let rec = match decode_record(&hb, ctx.max_message) {
        Ok(r) => r,
        Err(why) => return lost(why),
    };
    let payload = match rec.kind {
        REC_GOODBYE => {
            link.report(ctx, CloseReason::Clean);
            return Next::Stop;
        }
        REC_PAD => {
            // The producer publishes a pad with the record after it.
            return match ring.readable() {
                Ok(n) if n >= rec.len => {
                    ring.consume_to(ring.tail().load(Ordering::Relaxed) + rec.len);
                    Next::Go
                }
                Ok(n) => lost(format!(
                    "pad record of {} bytes with {n} bytes published",
                    rec.len
                )),
                Err(why) => lost(why),
            };
        }
        REC_CMA => {
            let mut xb = [0u8; CMA_EXT];
            match ring.read_exact(&mut xb, stop) {
                Ok(()) => {}
                Err(RingStop::Closed) => return Next::Stop,
                Err(RingStop::Corrupt(why)) => return lost(why),
            }
            let _copying = ReaderCopy::start(ctx, rec.len);
            match copy_cma(link, ctx, &rec, &xb, zone_wait(link, ctx, tail, &rec)) {
                Ok(p) => p,
                Err(why) => return lost(why),
            }
        }
        _ => {
            // A data record already whole in the ring goes into its
            // receive's zone if one is posted (a bounded copy: the zone is
            // never held while waiting for the sender), as in a poll.
            let whole = matches!(ring.readable(), Ok(n) if n >= rec.len);
            match whole.then(|| ring_zone(link, ctx, &rec)).flatten() {
                Some(mut c) => {
                    let tail = ring.tail().load(Ordering::Relaxed);
                    // SAFETY: `rec.len` bytes are published past the tail
                    // (checked above) and we hold the consumer lock.
                    unsafe { ring.copy_out(tail, c.dest()) };
                    ring.consume_to(tail + rec.len);
                    c.done(true);
                    RecvBuf::new(0)
                }
                None => {
                    // Straight from the ring into the buffer handed up (no
                    // zeroing, no further copy; recycled when the receiver
                    // drops it).
                    let mut payload = RecvBuf::new(rec.len as usize);
                    match ring.read_exact(payload.as_mut_slice(), stop) {
                        Ok(()) => {}
                        Err(RingStop::Closed) => return Next::Stop,
                        Err(RingStop::Corrupt(why)) => return lost(why),
                    }
                    payload
                }
            }
        }
    };
    let msg = received(&rec, payload.into_bytes());
    // Delivered under the consumer lock: a poll cannot deliver a later
    // record before this one is in the engine or its event channel.
    let msg = match ctx.deliver.get() {
        Some(deliver) => match deliver(link.peer, msg) {
            Ok(()) => return Next::Go,
            Err(msg) => msg,
        },
        None => msg,
    };
    match ctx.events.send(TransportEvent::Message {
        peer: link.peer,
        msg,
    }) {
        Ok(()) => Next::Go,
        Err(_) => Next::Stop,
    }
}

/// Payloads up to this many bytes that a poll takes from the ring go up in
/// a buffer made by one allocation ([`small_payload`]), larger ones in a
/// [`RecvBuf`] (two: its memory and the `Bytes` owner that recycles it;
/// the pool and huge pages pay off only for large buffers).
const SMALL_PAYLOAD_MAX: usize = 4 << 10;

/// A payload of `len` bytes, written by `fill`, in a buffer of its own
/// made by one allocation (a `Vec` handed to `Bytes` whole; none when
/// empty). Per 8-byte all-reduce of 2 ranks, one allocation and one free
/// fewer than a [`RecvBuf`] (see docs/performance.md).
#[inline]
fn small_payload(len: usize, fill: impl FnOnce(&mut [u8])) -> Bytes {
    if len == 0 {
        return Bytes::new();
    }
    let mut v = crate::recvbuf::small_zeroed(len);
    fill(&mut v);
    Bytes::from(v)
}

/// The message of a record read whole (by the reader thread or a poll),
/// counted in the metrics when it carries data.
#[inline]
fn received(rec: &Record, payload: Bytes) -> Message {
    if rec.kind != REC_CONTROL {
        crate::metrics::Metrics::global().nic_receive("shm", None, rec.len);
    }
    Message {
        kind: rec.message_kind(),
        dtype: rec.dtype,
        comm: rec.comm,
        channel: rec.channel,
        seq: rec.seq,
        payload,
    }
}

/// How long a CMA payload of `len` bytes waits for its landing zone: `len`
/// at [`LAND_WAIT_BYTES_PER_US`] (2 ns a byte: 2 ms for 1 MiB, 33.5 ms for
/// 16 MiB), at most 50 ms. A receive posted in that time gets the bytes
/// straight from the sender's memory; later, the message takes a buffer of
/// its own. Only a record with nothing behind it waits: one written
/// behind it ends the wait (the reader's [`Look::AwaitPost`] and
/// [`copy_cma`]'s claim), so a program that receives a peer's messages in
/// another order than they were sent is not held up by it.
///
/// Taken early, a payload costs a second copy of `len` bytes and a buffer
/// of its own, which on a VM can be fresh memory whose first touch the
/// host pays for (16 MiB faulted in took 180-280 ms on the 2-vCPU VM). The
/// usual late receiver is a rank one operation behind its peers: in a
/// 4-rank all-to-all of 64 MiB it posts its receives up to a whole
/// operation (about 23 ms) after the records of the peers ahead arrived.
/// Waiting about a second copy's time (`len` at 2 GB/s, before) took 12 %
/// of those 16 MiB blocks into buffers of their own there; at this rate,
/// 2 of 3012 (medians of 5 interleaved rounds: 25.5 -> 22.9 ms, Open
/// MPI 21.7 ms; 4-rank all-to-all 1 MiB, 3 rounds: 324 -> 233 us).
pub(super) fn land_wait(len: usize) -> Duration {
    let us = len as u64 / LAND_WAIT_BYTES_PER_US;
    Duration::from_micros(us).min(Duration::from_millis(50))
}

/// The rate [`land_wait`] scales with: 500 bytes a microsecond (0.5 GB/s).
const LAND_WAIT_BYTES_PER_US: u64 = 500;

/// Copies the payload of a CMA record (header `rec`, extension `xb`) from
/// the sender's memory, then tells the sender it may drop it.
/// Called under the consumer lock. When the receive of this message posted
/// a landing zone, the payload is copied into it and an empty buffer is
/// returned (see [`crate::landing`]).
///
/// `zone_wait` (the reader thread's, [`zone_wait`]; zero for a polling
/// thread, which may be the very thread that is to post the receive): a
/// payload whose receive is not posted yet waits up to that long for it
/// (see [`crate::landing::Landing::claim_within`]), and takes a buffer of
/// its own at once where the receive posted a mark.
fn copy_cma(
    link: &Link,
    ctx: &Ctx,
    rec: &Record,
    xb: &[u8; CMA_EXT],
    zone_wait: Duration,
) -> Result<RecvBuf, String> {
    let cma_seen = link.cma_seen.load(Ordering::Relaxed);
    let ext = decode_cma(xb, rec.len)?;
    let Some(pid) = link.cma_from else {
        return Err("CMA record from a peer this rank does not read by CMA".into());
    };
    if ext.pid != pid {
        return Err(format!(
            "CMA record names pid {}, the peer is pid {pid}",
            ext.pid
        ));
    }
    if ext.number != cma_seen + 1 {
        return Err(format!(
            "CMA record number {} where {} was due",
            ext.number,
            cma_seen + 1
        ));
    }
    let key = land_key(link, rec);
    let len = rec.len as usize;
    let mut claim = if !zone_wait.is_zero() {
        // Its header is consumed: anything published now came behind it,
        // and waits as long as this does.
        let alone = || matches!(link.in_ring.readable(), Ok(0));
        ctx.landing
            .claim_within_while(key, len, zone_wait, &link.stop, &alone)
    } else {
        ctx.landing.claim_any(key, len)
    };
    let failed = |e| {
        format!(
            "copying {} bytes at {:#x} from pid {pid} by CMA failed: {}",
            rec.len,
            ext.addr,
            crate::cma::explain(e)
        )
    };
    let mut payload = RecvBuf::new(if claim.is_some() { 0 } else { rec.len as usize });
    let read = match claim.as_mut() {
        Some(c) => {
            if let Some(mut sink) = c.combining() {
                read_combining(pid, ext.addr, len, &mut **sink)
            } else {
                crate::cma::read_parallel(pid, ext.addr, c.dest(), ctx.split_copies)
            }
        }
        None => crate::cma::read_parallel(pid, ext.addr, payload.as_mut_slice(), ctx.split_copies),
    };
    read.map_err(failed)?;
    // A lent payload the sender withdrew may have changed under the copy.
    fence(Ordering::SeqCst);
    if link.in_ring.cma_withdrawn().load(Ordering::SeqCst) >= ext.number {
        return Err(format!(
            "the peer withdrew CMA payload {} ({} bytes) while it was copied \
             (it gave up on the send: timeout or abort); its bytes are not delivered",
            ext.number, rec.len
        ));
    }
    if let Some(c) = claim {
        c.done(true);
    }
    link.cma_seen.store(ext.number, Ordering::Relaxed);
    // The sender drops the payload on this: a thread of the sender that
    // polls does it (no wake-up), or its reader thread, woken here unless
    // the sender's lease runs (then its lease watcher wakes it when the
    // lease ends, if nobody polled meanwhile).
    // (SeqCst store, then SeqCst load of the sender's poller count; the
    // sender's last poller decrements it, then checks for releases: one of
    // the two sees the other.)
    link.in_ring.cma_done().store(ext.number, Ordering::SeqCst);
    if !link.out_ring.attentive() {
        link.out_ring.notify_reader();
    }
    Ok(payload)
}

/// Copies `len` bytes at `addr` of process `pid` by CMA into a buffer of
/// this thread's, a [`COMBINE_PIECE_BYTES`] piece at a time, handing each
/// piece to a combining zone's `sink` while it is still in this CPU's
/// cache ([`crate::landing::Zone::combining`]): a reduction reads what it
/// receives once, from the peer's memory, instead of the copy writing it
/// to memory whole and the reduction reading it back.
fn read_combining(
    pid: u32,
    addr: u64,
    len: usize,
    sink: &mut dyn FnMut(usize, &[u8]),
) -> Result<(), nix::errno::Errno> {
    thread_local! {
        // 16-byte aligned, so every element type can be read in place.
        static PIECE: std::cell::RefCell<Vec<u128>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    PIECE.with_borrow_mut(|piece| {
        if piece.is_empty() {
            piece.resize(COMBINE_PIECE_BYTES / 16, 0);
        }
        // SAFETY: the vector's memory as bytes (any byte pattern is valid).
        let buf = unsafe {
            std::slice::from_raw_parts_mut(piece.as_mut_ptr().cast::<u8>(), COMBINE_PIECE_BYTES)
        };
        let mut off = 0;
        while off < len {
            let n = (len - off).min(COMBINE_PIECE_BYTES);
            crate::cma::read(pid, addr + off as u64, &mut buf[..n])?;
            sink(off, &buf[..n]);
            off += n;
        }
        Ok(())
    })
}

/// How long the reader thread waits for the receive of the CMA record
/// `rec` at ring position `tail` ([`copy_cma`]): one of more than
/// [`POLL_MAX_CMA_BYTES`] until [`unposted_until`], so that a record left
/// in the ring for polls first ([`leave_unposted`]) waits that long in
/// all; a smaller one not at all (it waits only where polls leave it,
/// [`leave_to_pollers`]: a reader thread that waited for those too, while
/// no thread polled, measured no better). A record published behind it
/// ends the wait ([`copy_cma`]): it would wait as long.
fn zone_wait(link: &Link, ctx: &Ctx, tail: u64, rec: &Record) -> Duration {
    if rec.len <= POLL_MAX_CMA_BYTES as u64 {
        return Duration::ZERO;
    }
    let now = clock::ticks();
    clock::to_duration(unposted_until(link, ctx, tail, rec, now).saturating_sub(now))
}

/// Data records from this size up that are whole in the ring when they are
/// read (always, for a poll; for the reader thread, unless the sender is
/// still writing) go straight from the ring into their receive's landing
/// zone when one is posted (as CMA records do; the message then arrives
/// empty): one copy fewer than through a buffer of their own and the
/// match. Smaller ones skip the zones' lookup.
pub(super) const RING_LAND_MIN_BYTES: usize = 16 << 10;
const _: () = assert!(super::ring::SLOT_MAX_PAYLOAD < RING_LAND_MIN_BYTES);

/// The landing key of the message of record `rec` from `link`'s peer.
fn land_key(link: &Link, rec: &Record) -> crate::landing::LandKey {
    crate::landing::LandKey {
        peer: link.peer,
        comm: rec.comm,
        channel: rec.channel,
        seq: rec.seq,
    }
}

/// The zone a ring data record of at least [`RING_LAND_MIN_BYTES`] goes
/// into, claimed, if its receive posted one of its length.
fn ring_zone(link: &Link, ctx: &Ctx, rec: &Record) -> Option<crate::landing::Claim> {
    (rec.kind == REC_DATA && rec.len as usize >= RING_LAND_MIN_BYTES)
        .then(|| ctx.landing.claim(land_key(link, rec), rec.len as usize))
        .flatten()
}

/// A poll's take of the record at the tail from the ring's slot
/// ([`Ring::slot_record`](super::ring::Ring::slot_record)): the last small
/// record published, copied beside the head, so the poll that read the
/// head reads no other line for it. `None` when the slot does not hold the
/// record at the tail (the poll reads the ring as before); `Some(false)`
/// when the ring is corrupt (the reader thread reports it). Under the
/// consumer lock; delivers as [`poll_link`] does.
#[inline]
fn poll_slot(link: &Link, ctx: &Ctx, f: &mut dyn FnMut(u32, Message)) -> Option<bool> {
    let ring = &link.in_ring;
    let tail = ring.tail().load(Ordering::Relaxed);
    let (hb, pb) = ring.slot_record(tail)?;
    let rec = decode_record(&hb, ctx.max_message).ok()?;
    let len = rec.len as usize;
    if !matches!(rec.kind, REC_DATA | REC_CONTROL) || len > pb.len() {
        return None;
    }
    match ring.readable() {
        Ok(avail) if avail >= REC_LEN as u64 + rec.len => {}
        // Not published yet (the slot is filled first), or corrupt.
        Ok(_) => return None,
        Err(_) => return Some(false),
    }
    // Far below a landing zone's size (`RING_LAND_MIN_BYTES`): into a
    // buffer of its own (one allocation, `small_payload`).
    let payload = small_payload(len, |b| b.copy_from_slice(&pb[..len]));
    ring.consume_to(tail + REC_LEN as u64 + rec.len);
    f(link.peer, received(&rec, payload));
    Some(true)
}

/// A poll's copy of the payload of `rec` out of `link`'s ring (from ring
/// position `from` into `dst`), timed where it is a data payload of the
/// sizes whose producer writes them as this side asks
/// ([`super::stream_choice`]): the time goes to the link's chooser, and
/// when that changes which kind of payload is faster to copy, the producer
/// is asked for the other.
///
/// # Safety
/// As [`Ring::copy_out`](super::ring::Ring::copy_out): the whole record is
/// published, and the caller holds the consumer lock.
#[inline]
unsafe fn copy_out_timed(link: &Link, rec: &Record, from: u64, dst: &mut [u8]) {
    let len = dst.len();
    let t0 = (rec.kind == REC_DATA && super::stream_choice::adaptive(len)).then(clock::ticks);
    // SAFETY: the caller's contract.
    unsafe { link.in_ring.copy_out(from, dst) };
    let Some(t0) = t0 else {
        return;
    };
    let took = clock::ticks().saturating_sub(t0);
    let mut choice = link
        .stream_choice
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(stream) = choice.observe(rec.streamed, len, took) {
        link.in_ring.ask_stream(stream);
        tracing::debug!(
            peer = link.peer,
            stream,
            "shm: rank {} now asked to write its 16-64 KiB payloads {}",
            link.peer,
            if stream {
                "streamed past the caches (those copied out faster here)"
            } else {
                "with plain stores (those copied out faster here)"
            }
        );
    }
}

/// One poll of one link: delivers the record at the tail if it is a whole
/// small data or control record and nobody else is reading (from the
/// ring's slot when that holds it, [`poll_slot`]); a data record
/// of at least [`RING_LAND_MIN_BYTES`] whose receive posted a zone is copied
/// into it. `live`: every link of the transport (a poll copying a large
/// CMA payload attends all their rings meanwhile, `watch::Attending`).
#[inline]
pub(super) fn poll_link(
    link: &Link,
    ctx: &Ctx,
    live: &[Arc<Link>],
    f: &mut dyn FnMut(u32, Message),
) -> bool {
    let ring = &link.in_ring;
    // Cheap checks first: most links of a poll are idle.
    if link.stop.load(Ordering::Acquire) || !matches!(ring.pending(), Ok(true)) {
        return false;
    }
    let _consumer = match link.consumer.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return false,
    };
    if link.reader_gone.load(Ordering::Acquire) {
        return false;
    }
    if let Some(taken) = poll_slot(link, ctx, f) {
        return taken;
    }
    let (avail, tail, rec) = loop {
        // Taken meanwhile, or corrupt (the reader thread reports it).
        let Some((avail, tail, rec)) = peek(link, ctx) else {
            return false;
        };
        if rec.kind != REC_PAD {
            break (avail, tail, rec);
        }
        // Skipped: the producer went back to the start of the ring.
        if avail < REC_LEN as u64 + rec.len {
            return false; // the reader thread reports it
        }
        ring.consume_to(tail + REC_LEN as u64 + rec.len);
    };
    if !pollable(&rec, avail, cma_polled(link, tail, &rec, avail)) {
        return false;
    }
    if avail == whole_len(&rec)
        && unposted_cma(link, ctx, &rec)
        && leave_unposted(link, ctx, tail, &rec)
    {
        // The last record published, and its receive is not posted yet:
        // left for the poll after it is (for a while). One with more
        // behind it is taken now, so that those are not held up.
        return false;
    }
    let payload = if rec.kind == REC_CMA {
        // A CMA record is whole in the ring; its copy never waits for the
        // peer (only for the memory), so the waiting thread makes it
        // itself instead of waking the reader thread.
        let mut xb = [0u8; CMA_EXT];
        // SAFETY: the whole record is published (checked above).
        unsafe { ring.copy_out(tail + REC_LEN as u64, &mut xb) };
        ring.consume_to(tail + (REC_LEN + CMA_EXT) as u64);
        // A copy longer than a poll lease may be: attended meanwhile.
        let _attending = (rec.len > POLL_MAX_CMA_BYTES as u64 && ctx.poll_lease != 0)
            .then(|| super::watch::Attending::start(live, ctx));
        match copy_cma(link, ctx, &rec, &xb, Duration::ZERO) {
            Ok(p) => p.into_bytes(),
            Err(why) => {
                link.lost(ctx, &why);
                link.stop();
                return false;
            }
        }
    } else if let Some(mut c) = ring_zone(link, ctx, &rec) {
        // SAFETY: the whole record is published (checked above).
        unsafe { copy_out_timed(link, &rec, tail + REC_LEN as u64, c.dest()) };
        ring.consume_to(tail + REC_LEN as u64 + rec.len);
        c.done(true);
        Bytes::new()
    } else {
        // SAFETY (both): the whole record is published (checked above).
        let from = tail + REC_LEN as u64;
        let payload = if rec.len as usize <= SMALL_PAYLOAD_MAX {
            small_payload(rec.len as usize, |b| unsafe { ring.copy_out(from, b) })
        } else {
            let mut b = RecvBuf::new(rec.len as usize);
            unsafe { copy_out_timed(link, &rec, from, b.as_mut_slice()) };
            b.into_bytes()
        };
        ring.consume_to(from + rec.len);
        payload
    };
    let msg = received(&rec, payload);
    // Called under the consumer lock, so the next record of this link (by
    // poll or reader) is delivered after this one.
    f(link.peer, msg);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Transport;
    use crate::shm::config::ShmConfig;
    use crate::shm::record::{CmaExt, encode_cma, encode_record};
    use crate::shm::testutil::{Side, cfg, expect_lost, next, pair};
    use crate::shm::transport::ShmTransport;

    /// Writes a raw record (header, then `ext`) from rank 0 to rank 1, then
    /// expects rank 1 to report rank 0 lost with a reason containing `want`.
    fn refused(cfg1: ShmConfig, header: [u8; REC_LEN], ext: &[u8], want: &str) {
        let ((t0, _rx0), (t1, mut rx1)) = pair(cfg(), cfg1);
        let link = t0.link(1).unwrap();
        {
            let _p = lock(&link.producer);
            link.out_ring.write_all(&header, &link.stop).unwrap();
            link.out_ring.write_all(ext, &link.stop).unwrap();
        }
        expect_lost(&mut rx1, 0, want);
        // The link is finished for polls too.
        assert_eq!(t1.poll(10, &mut |_, _| panic!("no message")), 0);
        drop(t1);
    }

    #[test]
    fn payloads_of_the_adaptive_sizes_go_as_the_consumer_asks_and_both_kinds_get_timed() {
        use crate::MessageKind;
        use crate::shm::stream_choice::{EXPLORE_EVERY, KEPT};
        use crate::shm::testutil::msg;
        // Through the ring (no CMA), every record taken by a poll.
        let c = ShmConfig {
            cma_min_bytes: 0,
            ..cfg()
        };
        let ((t0, _rx0), (t1, _rx1)) = pair(c.clone(), c);
        t1.ctx.pause_readers.store(true, Ordering::Release);
        let link = t1.link(0).unwrap();
        let timed = || link.stream_choice.lock().unwrap().timed();
        let n = 2 * EXPLORE_EVERY as usize;
        let mut seq = 0;
        let mut exchange = |len: usize, count: usize| {
            for _ in 0..count {
                let m = msg(MessageKind::Data, seq, len);
                seq += 1;
                t0.send(1, m.clone()).unwrap();
                let mut got = Vec::new();
                while t1.poll(1, &mut |_, m| got.push(m)) == 0 {}
                assert!(got.pop().unwrap() == m, "message {seq} of {len} bytes");
            }
        };
        // Asked for nothing yet: plain, but one in EXPLORE_EVERY streamed,
        // each timed as what it was.
        exchange(32 << 10, n);
        assert_eq!(timed(), [n - 2, 2]);
        // Asked to stream: streamed. (Four: with fewer than KEPT timed,
        // streaming cannot lose the choice meanwhile, whatever this
        // machine's times.)
        const { assert!(2 + 4 < KEPT) };
        link.in_ring.ask_stream(true);
        exchange(16 << 10, 4);
        assert_eq!(timed(), [n - 2, 6]);
        // Other sizes are neither chosen for nor timed.
        exchange((16 << 10) - 1, n);
        exchange(64 << 10, n);
        assert_eq!(timed(), [n - 2, 6]);
        t1.ctx.pause_readers.store(false, Ordering::Release);
    }

    #[test]
    fn land_wait_scales_with_the_length_and_is_bounded() {
        assert_eq!(land_wait(1 << 20).as_micros(), 2097);
        assert_eq!(land_wait(16 << 20).as_micros(), 33554);
        assert_eq!(land_wait(64 << 20).as_millis(), 50);
        assert_eq!(land_wait(1 << 30).as_millis(), 50);
    }

    #[test]
    fn corrupt_cma_records_close_the_link_as_lost() {
        let buf = vec![7u8; 1 << 20];
        let pid = std::process::id();
        let hdr = |len: u64| encode_record(REC_CMA, 0, 0, 0, 0, len);
        let ext = |addr: u64, number: u64, pid: u32| {
            encode_cma(&CmaExt {
                addr,
                number,
                pid,
                polled: false,
            })
        };
        let at = buf.as_ptr() as u64;
        // The sender's buffer is not mapped.
        refused(cfg(), hdr(4096), &ext(8, 1, pid), "not mapped");
        // Another pid than the peer's.
        refused(cfg(), hdr(16), &ext(at, 1, pid + 1), "names pid");
        // Out of sequence.
        refused(cfg(), hdr(16), &ext(at, 2, pid), "number 2 where 1 was due");
        // Too long.
        refused(cfg(), hdr(65 << 20), &ext(at, 1, pid), "exceeds the limit");
        // Address range wraps.
        refused(
            cfg(),
            hdr(16),
            &ext(u64::MAX - 4, 1, pid),
            "impossible address",
        );
        // Reserved bytes set.
        let mut x = ext(at, 1, pid);
        x[25] = 1;
        refused(cfg(), hdr(16), &x, "reserved");
        // To a rank that does not read CMA.
        let off = ShmConfig {
            cma_min_bytes: 0,
            ..cfg()
        };
        refused(off, hdr(16), &ext(at, 1, pid), "does not read by CMA");
        // A sound record passes (the control case of the above).
        let ((t0, _rx0), (_t1, mut rx1)) = pair(cfg(), cfg());
        let link = t0.link(1).unwrap();
        {
            let _p = lock(&link.producer);
            link.out_ring.write_all(&hdr(16), &link.stop).unwrap();
            link.out_ring
                .write_all(&ext(at, 1, pid), &link.stop)
                .unwrap();
        }
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg } => assert_eq!(&msg.payload[..], &buf[..16]),
            other => panic!("{other:?}"),
        }
    }

    /// Sends `m` from `t0` to `t1` and takes it on `t1`: by polls when
    /// `by_poll` (`t1` counts as polling meanwhile), else from the reader
    /// thread alone (its event).
    fn send_and_take(
        t0: &ShmTransport,
        (t1, rx1): &mut Side,
        m: crate::Message,
        by_poll: bool,
    ) -> crate::Message {
        let seq = m.seq;
        if by_poll {
            t1.set_polling(true);
        }
        t0.send(1, m).unwrap();
        let mut got = None;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.is_none() {
            if by_poll {
                t1.poll(1, &mut |_, m| got = Some(m));
            }
            if got.is_none()
                && let Ok(TransportEvent::Message { msg, .. }) = rx1.try_recv()
            {
                got = Some(msg);
            }
            assert!(std::time::Instant::now() < until, "message {seq} lost");
        }
        if by_poll {
            t1.set_polling(false);
        }
        got.unwrap()
    }

    /// A ring data record whose receive posted a zone of its length lands
    /// there whole (arriving empty), whether a poll or the reader thread
    /// takes it; one whose zone differs in length comes with its bytes and
    /// leaves the zone alone. Either way exactly one of the two holds the
    /// bytes.
    #[test]
    fn ring_records_land_in_their_zone_or_come_whole() {
        use crate::landing::LandKey;
        use crate::{Message, MessageKind};
        let ((t0, _rx0), mut side1) = pair(cfg(), cfg());
        let landing = side1.0.landing().expect("shm lands");
        let (mut landed, mut came_whole) = (0, 0);
        for seq in 0..40u64 {
            // Every fifth zone is one byte short: it must not be used.
            let len = RING_LAND_MIN_BYTES + (seq as usize * 977) % (200 << 10);
            let zlen = if seq % 5 == 4 { len - 1 } else { len };
            let data: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + seq) as u8).collect();
            let mut zone_buf = vec![0xEEu8; zlen];
            let key = LandKey {
                peer: 0,
                comm: 3,
                channel: 5,
                seq,
            };
            // SAFETY: `zone_buf` is only read after the zone is closed below.
            let zone = unsafe { landing.post(key, zone_buf.as_mut_ptr(), zlen) };
            // The first half is taken by polls, the second by the reader
            // thread alone.
            let m = Message {
                kind: MessageKind::Data,
                dtype: 9,
                comm: 3,
                channel: 5,
                seq,
                payload: data.clone().into(),
            };
            let msg = send_and_take(&t0, &mut side1, m, seq < 20);
            assert_eq!((msg.comm, msg.channel, msg.seq), (3, 5, seq));
            landing.remove(key);
            let filled = zone.close();
            if msg.payload.is_empty() {
                assert!(filled && zone.landed() && zlen == len, "seq {seq}");
                assert!(zone_buf == data, "seq {seq}: landed bytes differ");
                landed += 1;
            } else {
                assert!(msg.payload[..] == data[..], "seq {seq}: payload differs");
                assert!(!filled, "seq {seq}: a zone filled as well");
                assert!(
                    zone_buf.iter().all(|&b| b == 0xEE),
                    "seq {seq}: zone written"
                );
                came_whole += 1;
            }
        }
        eprintln!("{landed} landed, {came_whole} whole");
        // The short zones (every fifth) never land; every other record is
        // whole in the ring by the time it is read (written one at a time,
        // each at once), so it lands, by a poll or by the reader thread.
        assert_eq!((landed, came_whole), (32, 8));
    }

    /// A CMA record whose receive posted a combining zone is read from the
    /// sender a piece of `COMBINE_PIECE_BYTES` at a time, each handed to
    /// the zone's sink in order (by a poll, and by the reader thread for
    /// one larger than polls take); the message then comes empty, landed.
    /// A ring record (too small for CMA) is left to the match instead.
    #[test]
    fn cma_records_are_handed_to_a_combining_zone_piece_by_piece() {
        use crate::MessageKind;
        use crate::shm::config::CROWDED_CMA_MIN_BYTES;
        use crate::shm::testutil::{msg, msg_key as key, pair_waiting};
        use std::sync::{Arc, Mutex};
        use std::time::Instant;
        let ((t0, _rx0), (t1, mut rx1)) = pair_waiting(Duration::from_millis(200));
        let landing = t1.landing().expect("shm lands");
        t1.set_polling(true);
        let cases = [
            (0, CROWDED_CMA_MIN_BYTES / 2),      // a ring record
            (1, 3 * COMBINE_PIECE_BYTES + 4100), // polled CMA, short last piece
            (2, POLL_MAX_CMA_BYTES * 3 + 64),    // copied by the reader thread
        ];
        for (seq, len) in cases {
            let pieces = Arc::new(Mutex::new(Vec::<(usize, Vec<u8>)>::new()));
            let sink = pieces.clone();
            let zone = landing.post_combining(
                key(seq),
                len,
                Box::new(move |off: usize, b: &[u8]| sink.lock().unwrap().push((off, b.to_vec()))),
            );
            if seq == 2 {
                // Nobody polls: the reader thread copies it.
                t1.set_polling(false);
            }
            let m = msg(MessageKind::Data, seq, len);
            t0.send(1, m.clone()).unwrap();
            let mut got = Vec::new();
            let t = Instant::now();
            while got.is_empty() {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "seq {seq}: never came"
                );
                if seq != 2 {
                    t1.poll(8, &mut |_, m| got.push(m));
                }
                if let Ok(TransportEvent::Message { msg, .. }) = rx1.try_recv() {
                    got.push(msg);
                }
            }
            let came = got.pop().unwrap();
            landing.remove(key(seq));
            let landed = zone.close();
            let pieces = pieces.lock().unwrap();
            if seq == 0 {
                assert!(
                    came == m && !landed && pieces.is_empty(),
                    "ring record: whole"
                );
                continue;
            }
            assert!(came.payload.is_empty() && landed, "seq {seq}: not landed");
            let mut at = 0;
            for (i, (off, b)) in pieces.iter().enumerate() {
                assert_eq!(*off, at, "seq {seq}: piece {i} out of order");
                let last = i + 1 == pieces.len();
                assert!(
                    last || b.len() == COMBINE_PIECE_BYTES,
                    "seq {seq}: piece {i}"
                );
                assert!(
                    b[..] == m.payload[at..at + b.len()],
                    "seq {seq}: piece {i}'s bytes"
                );
                at += b.len();
            }
            assert_eq!(at, len, "seq {seq}: the pieces cover the message");
            assert_eq!(pieces.len(), len.div_ceil(COMBINE_PIECE_BYTES));
        }
    }

    /// A CMA record whose receive has not posted its zone, the last one in
    /// the ring, is left there by polls, and by the reader thread while a
    /// thread polls, until the zone is posted: then it lands in it (one
    /// copy). Left past `unposted_wait`, a poll takes it into a buffer of
    /// its own; one with another record behind it is taken at once; and a
    /// rank that stops polling hands it to the reader thread.
    #[test]
    fn an_unposted_cma_record_waits_a_while_for_its_zone() {
        use crate::MessageKind;
        use crate::shm::testutil::{msg, msg_key as key, pair_waiting};
        use std::time::Instant;
        let len = POLL_MAX_CMA_BYTES;
        let whole = (REC_LEN + CMA_EXT) as u64;
        let until_in_ring = |t1: &ShmTransport, bytes: u64| {
            let ring = &t1.link(0).unwrap().in_ring;
            let t = Instant::now();
            while !matches!(ring.readable(), Ok(n) if n >= bytes) {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "record not in the ring"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let wait = Duration::from_millis(200);
        let ((t0, _rx0), (t1, mut rx1)) = pair_waiting(wait);
        let landing = t1.landing().expect("shm lands");
        let mut got = Vec::new();
        t1.set_polling(true);

        // Left while unposted (the reader thread leaves it too: nothing
        // comes as an event), then lands in the zone posted for it. (Times
        // count from before the send: no one can have seen it earlier.)
        let m0 = msg(MessageKind::Data, 0, len);
        let sent = Instant::now();
        t0.send(1, m0.clone()).unwrap();
        until_in_ring(&t1, whole);
        let mut polled = t1.poll(8, &mut |_, m| got.push(m));
        std::thread::sleep(Duration::from_millis(5));
        polled += t1.poll(8, &mut |_, m| got.push(m));
        let event = rx1.try_recv().ok();
        let mut buf = vec![0u8; len];
        // SAFETY: `buf` is read only after the zone is closed below.
        let zone = unsafe { landing.post(key(0), buf.as_mut_ptr(), len) };
        if sent.elapsed() < wait {
            assert_eq!(polled, 0, "taken by a poll within the wait");
            assert!(
                event.is_none(),
                "taken by the reader thread within the wait"
            );
            assert_eq!(t1.poll(8, &mut |_, m| got.push(m)), 1);
            let m = got.pop().unwrap();
            assert!(m.payload.is_empty() && zone.landed(), "not landed");
            zone.close();
            assert!(buf[..] == m0.payload[..]);
        } else {
            // This thread was held up past the wait (a loaded machine): the
            // bytes may have come whole instead, by a poll or the reader.
            eprintln!("held up {:?}: landing not checked", sent.elapsed());
            if let Some(TransportEvent::Message { msg, .. }) = event {
                got.push(msg);
            }
            let t = Instant::now();
            while got.is_empty() && t.elapsed() < Duration::from_secs(10) {
                t1.poll(8, &mut |_, m| got.push(m));
                if let Ok(TransportEvent::Message { msg, .. }) = rx1.try_recv() {
                    got.push(msg);
                }
            }
            landing.remove(key(0));
            let landed = zone.close();
            let m = got.pop().unwrap();
            assert!(m == m0 || (landed && m.payload.is_empty() && buf[..] == m0.payload[..]));
        }

        // Never posted: taken whole once the wait is over, not before.
        t1.ctx.pause_readers.store(true, Ordering::Release);
        let m1 = msg(MessageKind::Data, 1, len);
        let sent = Instant::now();
        t0.send(1, m1.clone()).unwrap();
        until_in_ring(&t1, whole);
        while t1.poll(8, &mut |_, m| got.push(m)) == 0 {
            assert!(sent.elapsed() < Duration::from_secs(10), "never taken");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(sent.elapsed() >= wait, "taken after {:?}", sent.elapsed());
        assert!(got.pop().unwrap() == m1);

        // With a record behind it: taken at once; the last one is left.
        let (m2, m3) = (
            msg(MessageKind::Data, 2, len),
            msg(MessageKind::Data, 3, len),
        );
        t0.send(1, m2.clone()).unwrap();
        t0.send(1, m3.clone()).unwrap();
        until_in_ring(&t1, 2 * whole);
        assert_eq!(t1.poll(8, &mut |_, m| got.push(m)), 1);
        assert!(got.pop().unwrap() == m2);
        assert_eq!(t1.poll(8, &mut |_, m| got.push(m)), 0);

        // This rank stops polling: the reader thread takes it at once.
        let stopped = Instant::now();
        t1.ctx.pause_readers.store(false, Ordering::Release);
        t1.set_polling(false);
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg } => assert!(msg == m3),
            other => panic!("{other:?}"),
        }
        assert!(stopped.elapsed() < wait, "{:?}", stopped.elapsed());
    }

    /// A CMA record of more than `POLL_MAX_CMA_BYTES` that the reader
    /// thread takes before its receive is posted waits for the receive: it
    /// lands in the zone posted meanwhile (one copy). Where the receive
    /// posted a mark (a receive that names no buffer), it is taken into a
    /// buffer of its own at once, and the mark is gone.
    #[test]
    fn the_reader_waits_for_a_large_records_receive_unless_it_is_marked() {
        use crate::MessageKind;
        use crate::shm::testutil::{msg, msg_key as key, pair_waiting, sent_and_left_unposted};
        use std::time::Instant;
        let len = 2 * POLL_MAX_CMA_BYTES;
        let wait = Duration::from_secs(5);
        let ((t0, _rx0), (t1, mut rx1)) = pair_waiting(wait);
        let landing = t1.landing().expect("shm lands");

        let m0 = msg(MessageKind::Data, 0, len);
        sent_and_left_unposted(&t0, &mut rx1, m0.clone());
        let mut buf = vec![0u8; len];
        // SAFETY: `buf` is read only after the zone is closed below.
        let zone = unsafe { landing.post(key(0), buf.as_mut_ptr(), len) };
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg } => {
                assert!(msg.payload.is_empty(), "not landed")
            }
            other => panic!("{other:?}"),
        }
        assert!(zone.close() && zone.landed());
        assert!(buf[..] == m0.payload[..]);

        landing.mark(key(1));
        let m1 = msg(MessageKind::Data, 1, len);
        let sent = Instant::now();
        t0.send(1, m1.clone()).unwrap();
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg } => assert!(msg == m1),
            other => panic!("{other:?}"),
        }
        assert!(sent.elapsed() < wait / 2, "{:?}", sent.elapsed());
        assert!(!landing.is_posted(key(1)), "mark left behind");
    }

    /// A large CMA record waiting for its receive holds up what its sender
    /// wrote behind it; a record written behind it ends the wait: the
    /// large one is taken into a buffer of its own and the small one
    /// delivered at once, not after the wait (a receiver that takes a
    /// peer's messages in another order than they were sent). Before,
    /// the small one came only when the wait was over (`land_wait`: 33 ms
    /// behind 16 MiB).
    #[test]
    fn a_record_behind_a_large_one_waiting_for_its_receive_ends_the_wait() {
        use crate::MessageKind;
        use crate::shm::testutil::{msg, pair_waiting, sent_and_left_unposted};
        use std::time::Instant;
        let len = 2 * POLL_MAX_CMA_BYTES;
        let wait = Duration::from_secs(20);
        let ((t0, _rx0), (_t1, mut rx1)) = pair_waiting(wait);
        let big = msg(MessageKind::Data, 0, len);
        sent_and_left_unposted(&t0, &mut rx1, big.clone());
        let small = msg(MessageKind::Data, 1, 64);
        let sent = Instant::now();
        t0.send(1, small.clone()).unwrap();
        for want in [&big, &small] {
            match next(&mut rx1) {
                TransportEvent::Message { peer: 0, msg } => assert!(&msg == want),
                other => panic!("{other:?}"),
            }
        }
        assert!(sent.elapsed() < wait / 4, "held up {:?}", sent.elapsed());
    }

    /// A reader thread waiting for a large record's receive still reaps:
    /// a payload of this rank that the peer copied meanwhile is released
    /// (its send completes) at once, not when the wait is over. Before,
    /// a rank whose op waited for that send, and would post the receive
    /// only after it, waited out the whole wait (`land_wait`: up to 50 ms).
    #[test]
    fn a_reader_waiting_for_a_receive_still_releases_what_the_peer_copied() {
        use crate::MessageKind;
        use crate::shm::testutil::{msg, pair_waiting, sent_and_left_unposted, wait_true, watched};
        use std::time::Instant;
        let len = 2 * POLL_MAX_CMA_BYTES;
        let wait = Duration::from_secs(20);
        let ((t0, mut rx0), (t1, mut rx1)) = pair_waiting(wait);
        // Rank 1's reader thread waits for the receive of this one.
        sent_and_left_unposted(&t0, &mut rx1, msg(MessageKind::Data, 0, len));
        // Rank 1 lends a payload to rank 0, which copies it (its reader
        // thread, after its own short wait for a receive).
        let (lent, dropped, _mem) = watched(1, len);
        let sent = Instant::now();
        t1.send_lent(0, lent).unwrap();
        match next(&mut rx0) {
            TransportEvent::Message { peer: 1, msg } => assert_eq!(msg.seq, 1),
            other => panic!("{other:?}"),
        }
        wait_true(&dropped);
        assert!(
            sent.elapsed() < wait / 4,
            "released after {:?}",
            sent.elapsed()
        );
        assert!(rx1.try_recv().is_err(), "the waiting record was taken");
    }

    /// A large CMA record left to polls that came while nobody polled,
    /// before its receive: the reader thread woken for it waits for the
    /// receive's post without taking it, then leaves it to the thread that
    /// posted it and polls, which copies it straight into the zone. (Before,
    /// the reader thread took it and copied it beside the poster.)
    #[test]
    fn the_reader_leaves_a_large_record_to_the_thread_that_posts_its_receive_and_polls() {
        use crate::MessageKind;
        use crate::shm::testutil::{msg, msg_key as key, pair_waiting, sent_and_left_unposted};
        use std::time::Instant;
        let len = 2 * POLL_MAX_CMA_BYTES;
        let wait = Duration::from_secs(5);
        let ((t0, _rx0), (t1, mut rx1)) = pair_waiting(wait);
        if !t0.live[0].poll_cma_alone.contains(&(len as u64)) {
            eprintln!("SKIPPED: this host is crowded: polls take no CMA record this large");
            return;
        }
        let landing = t1.landing().expect("shm lands");
        let m = msg(MessageKind::Data, 0, len);
        sent_and_left_unposted(&t0, &mut rx1, m.clone());
        t1.set_polling(true);
        let mut buf = vec![0u8; len];
        // SAFETY: `buf` is read only after the zone is closed below.
        let zone = unsafe { landing.post(key(0), buf.as_mut_ptr(), len) };
        let start = Instant::now();
        let mut got = Vec::new();
        while got.is_empty() && start.elapsed() < wait {
            t1.poll(8, &mut |peer, msg| got.push((peer, msg)));
        }
        t1.set_polling(false);
        assert_eq!(got.len(), 1, "the poll did not take it");
        assert!(got[0].0 == 0 && got[0].1.payload.is_empty(), "not landed");
        assert!(rx1.try_recv().is_err(), "the reader thread took it too");
        assert!(zone.close() && zone.landed());
        assert!(buf[..] == m.payload[..]);
    }

    /// A large CMA record that polls left in the ring (its receive not
    /// posted) and the reader thread then takes waits for its receive only
    /// the rest of `unposted_wait`: that long in all, not twice. (Where
    /// the host is crowded, polls do not take records this large: the
    /// reader thread waits the whole time at once.)
    #[test]
    fn a_large_record_waits_for_its_receive_once_in_all() {
        use crate::MessageKind;
        use crate::shm::testutil::{msg, pair_waiting};
        use std::time::Instant;
        let len = 2 * POLL_MAX_CMA_BYTES;
        let wait = Duration::from_secs(1);
        let ((t0, _rx0), (t1, mut rx1)) = pair_waiting(wait);
        t1.set_polling(true);
        let m = msg(MessageKind::Data, 0, len);
        let sent = Instant::now();
        t0.send(1, m.clone()).unwrap();
        while sent.elapsed() < wait / 2 {
            assert_eq!(t1.poll(8, &mut |_, _| {}), 0, "taken within the wait");
            std::thread::sleep(Duration::from_millis(1));
        }
        t1.set_polling(false);
        match next(&mut rx1) {
            TransportEvent::Message { peer: 0, msg } => assert!(msg == m),
            other => panic!("{other:?}"),
        }
        let took = sent.elapsed();
        assert!(took >= wait, "taken after {took:?}");
        assert!(took < wait * 7 / 5, "waited twice: {took:?}");
    }

    /// Small records are taken by polls from the ring's slot (the last one
    /// published) or, with later ones published behind them, from the
    /// ring: either way whole and in order, across the ring's rewinds to
    /// its start, beside records too large for the slot.
    #[test]
    fn small_records_come_whole_and_in_order_from_the_slot_or_the_ring() {
        use crate::MessageKind;
        use crate::shm::testutil::msg;
        let small = ShmConfig {
            ring_bytes: 64 << 10,
            ..cfg()
        };
        let ((t0, _rx0), (t1, mut rx1)) = pair(small.clone(), small);
        t1.set_polling(true);
        let mut seq = 0u64;
        let mut want = Want::new();
        // Each path delivers in ring order (the reader thread may take one
        // now and then, into its events).
        let (mut last_polled, mut last_read) = (None, None);
        type Want = std::collections::BTreeMap<u64, (MessageKind, bytes::Bytes)>;
        fn check(want: &mut Want, m: crate::Message, last: &mut Option<u64>) {
            let (kind, payload) = want.remove(&m.seq).expect("sent once, taken once");
            assert_eq!((m.kind, m.dtype, m.comm, m.channel), (kind, 1, 2, 3));
            assert!(m.payload == payload, "message {}: payload differs", m.seq);
            assert!(last.is_none_or(|l| l < m.seq), "{} after {last:?}", m.seq);
            *last = Some(m.seq);
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while seq < 6000 {
            // One to three records published before the polls look.
            for _ in 0..=(seq % 3) {
                let len = (seq % 25) as usize;
                let kind = if seq.is_multiple_of(7) {
                    MessageKind::Control
                } else {
                    MessageKind::Data
                };
                let m = msg(kind, seq, len);
                want.insert(seq, (kind, m.payload.clone()));
                t0.send(1, m).unwrap();
                seq += 1;
            }
            while !want.is_empty() {
                let mut got = Vec::new();
                t1.poll(1, &mut |peer, m| {
                    assert_eq!(peer, 0);
                    got.push(m);
                });
                for m in got {
                    check(&mut want, m, &mut last_polled);
                }
                while let Ok(TransportEvent::Message { msg, .. }) = rx1.try_recv() {
                    check(&mut want, msg, &mut last_read);
                }
                assert!(std::time::Instant::now() < until, "{want:?} not taken");
            }
        }
        assert!(last_polled.is_some(), "no poll took a record");
        // The stream went round the ring many times.
        let link = t0.link(1).unwrap();
        assert!(link.out_ring.tail().load(Ordering::Acquire) > 4 * (64 << 10));
    }

    /// A producer that finds its ring empty far into the data area starts
    /// the next small record over at the beginning, past a pad record: a
    /// stream of small messages stays in the first part of the ring, and
    /// every message still arrives whole and in order, whether polls or
    /// the reader thread take the pads. A pad claiming more bytes than are
    /// published closes the link as lost.
    #[test]
    fn an_idle_ring_goes_back_to_its_start_past_a_pad() {
        use crate::MessageKind;
        use crate::shm::ring::REWIND_MIN;
        use crate::shm::testutil::msg;
        let small = ShmConfig {
            ring_bytes: 64 << 10,
            ..cfg()
        };
        let ((t0, _rx0), mut side1) = pair(small.clone(), small);
        let link = t0.link(1).unwrap();
        let cap = 64u64 << 10;
        let rewind_at = REWIND_MIN.min(cap / 2);
        let (mut sent_bytes, mut furthest) = (0u64, 0u64);
        for seq in 0..400u64 {
            let len = (seq as usize * 733) % 3000;
            let m = msg(MessageKind::Data, seq, len);
            let want = m.payload.clone();
            let got = send_and_take(&t0, &mut side1, m, seq % 3 != 0);
            assert_eq!(got.seq, seq);
            assert!(got.payload == want, "message {seq}: payload differs");
            sent_bytes += (REC_LEN + len) as u64;
            // Everything sent is consumed: the tail is where the head is.
            let pos = link.out_ring.tail().load(Ordering::Acquire);
            furthest = furthest.max(pos % cap);
        }
        // The head went further than the records (the pads), and no record
        // ever ended past the rewind point plus one record.
        let head = link.out_ring.tail().load(Ordering::Acquire);
        assert!(head > sent_bytes, "no pad written: {head} <= {sent_bytes}");
        assert!(furthest <= rewind_at + 3032, "a record ended at {furthest}");
        // Records larger than REWIND_MAX_RECORD go where the head is, also
        // from far into the ring.
        let mut far_in = 0;
        for seq in 400..410u64 {
            let before = link.out_ring.tail().load(Ordering::Acquire);
            far_in += usize::from(before % cap >= rewind_at);
            t0.send(1, msg(MessageKind::Data, seq, 12 << 10)).unwrap();
            assert!(
                matches!(next(&mut side1.1), TransportEvent::Message { msg, .. } if msg.seq == seq)
            );
            let after = link.out_ring.tail().load(Ordering::Acquire);
            assert_eq!(after - before, (REC_LEN + (12 << 10)) as u64);
        }
        assert!(far_in >= 3, "{far_in}");
        // A pad longer than what is published is a broken peer.
        {
            let _p = lock(&link.producer);
            let pad = encode_record(REC_PAD, 0, 0, 0, 0, 1 << 20);
            link.out_ring.write_all(&pad, &link.stop).unwrap();
        }
        expect_lost(&mut side1.1, 0, "pad record of 1048576 bytes");
    }
}

//! Writing messages into a link's ring to the peer: by the writer thread
//! (fed by the link's queue), or by a sender itself when nothing is queued
//! before its message and the ring has room for all of its record (any
//! size: the bytes are copied once either way, and the writer thread is
//! not woken; `try_write_now` in `transport.rs`). A data message
//! is copied into the ring or, from
//! [`ShmConfig::cma_min_bytes`](super::ShmConfig::cma_min_bytes) up and to a
//! peer that reads them, sent as a CMA record while its payload is kept.

use std::sync::atomic::{AtomicBool, Ordering};

use super::config::{POLL_MAX_CMA_BYTES, POLL_MAX_PAYLOAD};
use super::link::{Ctx, Link, Out, lock};
use super::record::{
    CMA_EXT, CmaExt, REC_CMA, REC_CONTROL, REC_DATA, REC_GOODBYE, REC_LEN, REC_PAD, encode_cma,
    encode_record, mark_streamed,
};
use super::ring::{Ring, RingStop};
use super::stream_choice::adaptive;
use crate::{CloseReason, Message, MessageKind};

/// Writes one message record into the link's out ring, counting data
/// payloads in the metrics (`nic="shm"`); the caller holds the producer lock.
pub(super) fn write_msg(link: &Link, m: &Message) -> Result<(), RingStop> {
    let res = if link.use_cma(m) {
        write_cma(link, m)
    } else {
        write_copy(&link.out_ring, m, &link.stop)
    };
    if res.is_ok() && m.kind == MessageKind::Data {
        crate::metrics::Metrics::global().nic_transmit("shm", None, m.payload.len() as u64);
    }
    res
}

/// A record carrying the payload itself.
fn write_copy(ring: &Ring, m: &Message, stop: &AtomicBool) -> Result<(), RingStop> {
    let kind = match m.kind {
        MessageKind::Data => REC_DATA,
        MessageKind::Control => REC_CONTROL,
    };
    let mut rec = encode_record(
        kind,
        m.dtype,
        m.comm,
        m.channel,
        m.seq,
        m.payload.len() as u64,
    );
    let pollable = m.payload.len() <= POLL_MAX_PAYLOAD;
    let total = (REC_LEN + m.payload.len()) as u64;
    if pollable && let Some(gap) = ring.idle_gap(total, REC_LEN as u64) {
        // Back to the start of the ring, past a pad to its end.
        let pad = encode_record(REC_PAD, 0, 0, 0, 0, gap - REC_LEN as u64);
        ring.write_after_gap(&pad, gap, &rec, &m.payload);
        return Ok(());
    }
    // A payload of the sizes whose reader chooses how they are written
    // (`stream_choice.rs`): as it asks, and marked if streamed, so that it
    // can time each kind.
    let stream = kind == REC_DATA && adaptive(m.payload.len()) && ring.next_adaptive_streams();
    if stream {
        mark_streamed(&mut rec);
    }
    ring.write_record(&rec, &m.payload, stop, pollable, stream)
}

/// A CMA record: the payload stays where it is, kept alive until the peer
/// copied it.
fn write_cma(link: &Link, m: &Message) -> Result<(), RingStop> {
    let number = link.cma_sent.load(Ordering::Relaxed) + 1;
    // Kept before the record is visible, so a release never precedes it.
    link.kept
        .lock()
        .expect("shm kept")
        .push_back((number, m.payload.clone()));
    link.cma_sent.store(number, Ordering::Release);
    let mut rec = [0u8; REC_LEN + CMA_EXT];
    rec[..REC_LEN].copy_from_slice(&encode_record(
        REC_CMA,
        m.dtype,
        m.comm,
        m.channel,
        m.seq,
        m.payload.len() as u64,
    ));
    let polled = left_to_polls(m.payload.len() as u64, &link.poll_cma_alone, || {
        link.out_ring.cma_done().load(Ordering::Acquire) + 1 == number
    });
    rec[REC_LEN..].copy_from_slice(&encode_cma(&CmaExt {
        addr: m.payload.as_ptr() as u64,
        number,
        pid: std::process::id(),
        polled,
    }));
    if polled {
        // A waiting thread of the consumer copies it itself.
        link.out_ring.write_pollable(&rec, &link.stop)
    } else {
        link.out_ring.write_all(&rec, &link.stop)
    }
}

/// Whether a CMA record of `len` bytes is left to the consumer's polling
/// threads ([`Ring::write_pollable`], marked [`CmaExt::polled`]) rather
/// than handed to its reader thread: one of at most [`POLL_MAX_CMA_BYTES`],
/// and a larger one of the sizes `alone_sizes` allows
/// ([`Link::poll_cma_alone`]) when the peer has copied every CMA record
/// written before it (`alone`, asked only for those). Large records
/// written while earlier ones still wait are a pipeline's pieces (a ring
/// collective sends them all at once): the reader thread copies the next
/// one while the waiting thread combines the last (2 ranks, all-reduce 4
/// MiB, 2 MiB pieces, all polled: 1.2x slower). Small records ahead (a
/// control message) do not count: polls take those. Pure but for `alone`.
pub(super) fn left_to_polls(
    len: u64,
    alone_sizes: &std::ops::RangeInclusive<u64>,
    alone: impl FnOnce() -> bool,
) -> bool {
    len <= POLL_MAX_CMA_BYTES as u64 || (alone_sizes.contains(&len) && alone())
}

/// Ring bytes the record of `m` takes.
pub(super) fn record_bytes(link: &Link, m: &Message) -> usize {
    if link.use_cma(m) {
        REC_LEN + CMA_EXT
    } else {
        REC_LEN + m.payload.len()
    }
}

/// The writer thread of a link: writes what the queue hands it, in order,
/// until a goodbye, a closed queue, a closing transport or a corrupt ring.
pub(super) fn writer(link: &Link, ctx: &Ctx, rx: std::sync::mpsc::Receiver<Out>) {
    let ring = &link.out_ring;
    let stop = &*link.stop;
    while let Ok(out) = rx.recv() {
        let _producer = lock(&link.producer);
        let res = match out {
            Out::Goodbye => {
                let rec = encode_record(REC_GOODBYE, 0, 0, 0, 0, 0);
                let _ = ring.write_all(&rec, stop);
                return;
            }
            Out::Msg(m) => {
                let r = write_msg(link, &m);
                link.backlog.fetch_sub(1, Ordering::AcqRel);
                r
            }
        };
        match res {
            Ok(()) => {}
            Err(RingStop::Closed) => return,
            Err(RingStop::Corrupt(why)) => {
                link.report(
                    ctx,
                    CloseReason::Lost(format!("shm ring to the peer: {why}")),
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_cma_records_are_left_to_polls_only_when_alone_and_allowed() {
        let max = POLL_MAX_CMA_BYTES as u64;
        let any = super::super::link::poll_cma_alone(false);
        let crowded = super::super::link::poll_cma_alone(true);
        // Up to the poll bound: always, without a look at the ring.
        assert!(left_to_polls(1, &crowded, || panic!("not asked")));
        assert!(left_to_polls(max, &crowded, || panic!("not asked")));
        // Larger: when every earlier one was copied, on a link that allows it.
        assert!(left_to_polls(max + 1, &any, || true));
        assert!(left_to_polls(64 << 20, &any, || true));
        assert!(!left_to_polls(max + 1, &any, || false));
        // Crowded: more than a pipeline's piece, up to 16 MiB.
        assert!(!left_to_polls(max + 1, &crowded, || panic!("not asked")));
        assert!(!left_to_polls(2 << 20, &crowded, || panic!("not asked")));
        assert!(left_to_polls((2 << 20) + 1, &crowded, || true));
        assert!(left_to_polls(16 << 20, &crowded, || true));
        assert!(!left_to_polls(16 << 20, &crowded, || false));
        assert!(!left_to_polls((16 << 20) + 1, &crowded, || panic!(
            "not asked"
        )));
    }
}

//! The receiving side of routed transfers: chunks that arrive on any lane,
//! in any order, possibly twice, are put together into the message that was
//! sent (pure: no I/O).

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::wire::ChunkHeader;

/// A message being put together: `(src, comm, channel, seq)`.
pub type MsgKey = (u32, u32, u32, u64);

/// What a chunk did.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// New bytes; the message is not complete yet.
    Stored,
    /// Seen before (a re-sent or hedged copy): dropped.
    Duplicate,
    /// The last missing chunk: the whole message (type code, bytes).
    Complete(u16, Bytes),
    /// Disagrees with earlier chunks of the same message (size, type or
    /// chunk count): dropped.
    Inconsistent(String),
}

struct Partial {
    buf: Vec<u8>,
    dtype: u16,
    got: Vec<bool>,
    missing: u32,
}

/// Every message being reassembled by this rank.
pub struct Reassembly {
    /// Largest message accepted (a chunk claiming more is refused before
    /// anything is allocated).
    max_bytes: u64,
    partial: HashMap<MsgKey, Partial>,
    /// Messages already delivered: late copies of their chunks are
    /// duplicates. Bounded: the last [`DONE_KEEP`] are remembered (a late
    /// copy comes within seconds of its message; one older than that costs
    /// memory, a partial that does not complete or a message no receive
    /// ever matches, since sequence numbers are not reused, never a wrong
    /// delivery).
    done: HashSet<MsgKey>,
    done_order: std::collections::VecDeque<MsgKey>,
}

/// How many delivered messages the receiver remembers.
pub const DONE_KEEP: usize = 1 << 16;

impl Default for Reassembly {
    fn default() -> Self {
        Reassembly::new(1 << 40)
    }
}

/// Most chunks one message may have.
const MAX_CHUNKS: u32 = 1 << 24;

impl Reassembly {
    /// Accepts messages of at most `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Reassembly {
            max_bytes,
            partial: HashMap::new(),
            done: HashSet::new(),
            done_order: std::collections::VecDeque::new(),
        }
    }

    /// Takes one chunk (`data` without its header).
    ///
    /// ```
    /// use zccl_runtime::router::receiver::{Arrival, Reassembly};
    /// use zccl_runtime::router::wire::ChunkHeader;
    /// let h = |index: u32, offset: u64| ChunkHeader { src: 0, dst: 1, src_nic: 0, dst_nic: 0,
    ///     lane: 0, comm: 0, channel: 0, seq: 0, dtype: 0, total_len: 4, offset, chunks: 2, index };
    /// let mut r = Reassembly::default();
    /// assert_eq!(r.take(&h(1, 2), b"cd"), Arrival::Stored);
    /// assert_eq!(r.take(&h(1, 2), b"cd"), Arrival::Duplicate);
    /// assert_eq!(r.take(&h(0, 0), b"ab"), Arrival::Complete(0, bytes::Bytes::from_static(b"abcd")));
    /// assert_eq!(r.take(&h(0, 0), b"ab"), Arrival::Duplicate);
    /// ```
    pub fn take(&mut self, h: &ChunkHeader, data: &[u8]) -> Arrival {
        let key = (h.src, h.comm, h.channel, h.seq);
        if self.done.contains(&key) {
            return Arrival::Duplicate;
        }
        if h.total_len > self.max_bytes
            || h.chunks > MAX_CHUNKS
            || u64::from(h.chunks) > h.total_len.max(1)
        {
            return Arrival::Inconsistent(format!(
                "message seq {} from rank {}: {} B in {} chunks exceeds the limits ({} B, {} chunks)",
                h.seq, h.src, h.total_len, h.chunks, self.max_bytes, MAX_CHUNKS
            ));
        }
        let p = self.partial.entry(key).or_insert_with(|| Partial {
            buf: vec![0u8; h.total_len as usize],
            dtype: h.dtype,
            got: vec![false; h.chunks as usize],
            missing: h.chunks,
        });
        if p.buf.len() as u64 != h.total_len
            || p.got.len() != h.chunks as usize
            || p.dtype != h.dtype
        {
            return Arrival::Inconsistent(format!(
                "chunk {} of message seq {} from rank {}: {} B / {} chunks / type {} after {} B / {} chunks / type {}",
                h.index,
                h.seq,
                h.src,
                h.total_len,
                h.chunks,
                h.dtype,
                p.buf.len(),
                p.got.len(),
                p.dtype
            ));
        }
        let i = h.index as usize;
        if p.got[i] {
            return Arrival::Duplicate;
        }
        let off = h.offset as usize;
        zccl_transports::copy::copy(&mut p.buf[off..off + data.len()], data);
        p.got[i] = true;
        p.missing -= 1;
        if p.missing > 0 {
            return Arrival::Stored;
        }
        let p = self.partial.remove(&key).expect("present");
        self.done.insert(key);
        self.done_order.push_back(key);
        if self.done_order.len() > DONE_KEEP
            && let Some(old) = self.done_order.pop_front()
        {
            self.done.remove(&old);
        }
        Arrival::Complete(p.dtype, Bytes::from(p.buf))
    }

    /// Messages in progress.
    pub fn in_progress(&self) -> usize {
        self.partial.len()
    }

    /// Drops what came from `src` (the rank failed).
    pub fn forget_rank(&mut self, src: u32) {
        self.partial.retain(|k, _| k.0 != src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(index: u32, offset: u64, chunks: u32, total: u64) -> ChunkHeader {
        ChunkHeader {
            src: 2,
            dst: 5,
            src_nic: 0,
            dst_nic: 0,
            lane: 0,
            comm: 0,
            channel: 0,
            seq: 9,
            dtype: 6,
            total_len: total,
            offset,
            chunks,
            index,
        }
    }

    #[test]
    fn any_order_with_duplicates_gives_the_bytes_sent() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let chunks: Vec<(u64, usize)> = (0..10).map(|i| (i * 100, 100)).collect();
        let order = [7, 3, 3, 9, 0, 1, 7, 2, 4, 5, 6, 8];
        let mut r = Reassembly::default();
        let mut out = None;
        for &i in &order {
            let (off, len) = chunks[i];
            let a = r.take(
                &h(i as u32, off, 10, 1000),
                &data[off as usize..off as usize + len],
            );
            if let Arrival::Complete(t, b) = a {
                assert_eq!(t, 6);
                out = Some(b);
            }
        }
        assert_eq!(out.as_deref(), Some(&data[..]));
        assert_eq!(r.in_progress(), 0);
        assert_eq!(
            r.take(&h(3, 300, 10, 1000), &data[300..400]),
            Arrival::Duplicate
        );
    }

    #[test]
    fn disagreeing_chunks_are_refused() {
        let mut r = Reassembly::default();
        assert_eq!(r.take(&h(0, 0, 2, 10), &[0; 5]), Arrival::Stored);
        assert!(matches!(
            r.take(&h(1, 5, 2, 12), &[0; 5]),
            Arrival::Inconsistent(_)
        ));
        assert!(matches!(
            r.take(&h(1, 5, 3, 10), &[0; 5]),
            Arrival::Inconsistent(_)
        ));
        r.forget_rank(2);
        assert_eq!(r.in_progress(), 0);
        let mut small = Reassembly::new(100);
        assert!(matches!(
            small.take(&h(0, 0, 1, 1 << 50), &[]),
            Arrival::Inconsistent(_)
        ));
        assert!(matches!(
            r.take(&h(0, 0, u32::MAX, 10), &[]),
            Arrival::Inconsistent(_)
        ));
    }

    #[test]
    fn delivered_messages_are_remembered_up_to_a_bound() {
        let mut r = Reassembly::default();
        for seq in 0..(DONE_KEEP as u64 + 10) {
            let mut hd = h(0, 0, 1, 1);
            hd.seq = seq;
            assert!(matches!(r.take(&hd, &[7]), Arrival::Complete(..)));
        }
        assert_eq!(r.done.len(), DONE_KEEP);
        let mut recent = h(0, 0, 1, 1);
        recent.seq = DONE_KEEP as u64 + 9;
        assert_eq!(r.take(&recent, &[7]), Arrival::Duplicate);
    }

    #[test]
    fn an_empty_message_is_one_empty_chunk() {
        let mut r = Reassembly::default();
        assert_eq!(
            r.take(&h(0, 0, 1, 0), &[]),
            Arrival::Complete(6, Bytes::new())
        );
    }
}

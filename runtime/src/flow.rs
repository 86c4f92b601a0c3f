//! Flow control between ranks: which protocol a send uses, and the credit
//! that bounds what a receiver buffers for receives it has not posted yet.
//!
//! Pure state (no I/O), driven by the engine; tested below.
//!
//! * **Eager** (a plain point-to-point message or one of a collective or
//!   primitive other than broadcast, of at most [`EAGER_MAX`] bytes, not
//!   routed, credit available): the
//!   send completes as soon as the transport has the bytes. The receiver
//!   does not acknowledge it; it returns the credit in batches
//!   (a credit control message) once it matched such
//!   messages for a quarter of the window, or at once with a clear-to-send.
//! * **Immediate** (anything else, credit available): the data goes at once, the
//!   send completes on the receiver's acknowledgement, which also returns
//!   the credit.
//! * **Rendezvous** (not enough credit): only a request to send goes; the
//!   receiver answers it with a clear-to-send once the matching receive is
//!   posted, and the data follows into a receive that waits for it, so it is
//!   never buffered as unexpected.
//!
//! Unexpected data buffered at a receiver for one sender is thus at most the
//! window ([`Credit`], `ZCCL_MAX_UNEXPECTED_BYTES`), whatever the traffic:
//! every byte sent without a clear-to-send was charged to the window first.
//! Whether a message is acknowledged follows from what both sides know (its
//! length, its operation label, and whether the two ranks are on different
//! hosts with the router on), so the wire needs no flag for it.
//!
//! ```
//! use zccl_runtime::flow::{Credit, Protocol, EAGER_MAX};
//! let mut c = Credit::new(1 << 20);
//! assert_eq!(c.choose(1, 8, false, true), Protocol::Eager { charged: 8 });
//! assert_eq!(c.choose(1, 512 << 10, false, true), Protocol::Immediate { charged: 512 << 10 });
//! // The window is nearly used up: the next large send waits for a clear-to-send.
//! assert_eq!(c.choose(1, 1 << 20, false, true), Protocol::Rendezvous);
//! c.on_returned(1, 512 << 10); // the receiver acknowledged the large one
//! assert_eq!(c.in_flight(1), 8);
//! assert!(EAGER_MAX >= 4096);
//! ```

use rustc_hash::FxHashMap as HashMap;

use crate::label::OpLabel;

/// Largest payload sent eagerly (completing without an acknowledgement).
/// A constant, not a setting: sender and receiver must agree on it. The
/// size up to which shared memory copies through its ring (and a waiting
/// thread takes a message itself): a ring step of a 256 KiB–512 KiB
/// collective moves pieces of this size, and waiting for each one's
/// acknowledgement cost a round trip per step.
pub const EAGER_MAX: u64 = 256 << 10;

/// Default of `ZCCL_MAX_UNEXPECTED_BYTES`: per sending peer.
pub const DEFAULT_WINDOW: u64 = 64 << 20;

/// Whether the receiver acknowledges a data message: every message that
/// came through the router, every one larger than [`EAGER_MAX`], and every
/// one not `labelled` as eager ([`eager_label`]: a broadcast's).
///
/// ```
/// use zccl_runtime::flow::{acknowledged, EAGER_MAX};
/// assert!(!acknowledged(EAGER_MAX, false, true));
/// assert!(acknowledged(EAGER_MAX + 1, false, true));
/// assert!(acknowledged(8, true, true));
/// assert!(acknowledged(8, false, false));
/// ```
pub fn acknowledged(len: u64, routed: bool, labelled: bool) -> bool {
    routed || !labelled || len > EAGER_MAX
}

/// Whether a message of type code `code` may go eagerly ([`crate::flow`]):
/// a mismatch at its receive then reaches the sender, and every other rank
/// of the channel, as a disagreement that fails the channel
/// (`Control::Disagree`), not through the send's own handle, which
/// completed already (as `MPI_Send` of a small message completes before its
/// receive is posted). All but a broadcast's: its root only sends, and
/// with roots that differ, its sends stay pending so that the crossed-send
/// check names both roots. Pure.
///
/// ```
/// use zccl_runtime::{DType, flow::eager_label, label::OpLabel};
/// assert!(eager_label(OpLabel::ALL_REDUCE_SUM.wire(DType::F32)));
/// assert!(eager_label(DType::F32.code().into())); // plain point-to-point
/// assert!(!eager_label(OpLabel::BROADCAST.wire(DType::F32)));
/// ```
pub fn eager_label(code: u16) -> bool {
    !OpLabel::split(code).1.is_broadcast()
}

/// How one send travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Data now; complete once handed to the transport; credit comes back
    /// in a batch.
    Eager {
        /// Bytes charged to the window.
        charged: u64,
    },
    /// Data now; complete on the acknowledgement, which returns the credit.
    Immediate {
        /// Bytes charged to the window.
        charged: u64,
    },
    /// A request to send; the data after the clear-to-send.
    Rendezvous,
}

/// A sender's credit with each peer: the bytes it sent that the peer may
/// still hold unmatched.
///
/// ```
/// use zccl_runtime::flow::{Credit, Protocol};
/// let mut c = Credit::new(100);
/// assert_eq!(c.choose(3, 60, false, true), Protocol::Eager { charged: 60 });
/// assert_eq!(c.choose(3, 60, false, true), Protocol::Rendezvous); // 120 > 100
/// c.on_returned(3, 60);
/// assert_eq!(c.choose(3, 60, false, true), Protocol::Eager { charged: 60 });
/// ```
#[derive(Debug, Clone)]
pub struct Credit {
    window: u64,
    in_flight: HashMap<u32, u64>,
}

impl Credit {
    /// A credit of `window` bytes per peer (at least 1).
    ///
    /// ```
    /// assert_eq!(zccl_runtime::flow::Credit::new(0).window(), 1);
    /// ```
    pub fn new(window: u64) -> Self {
        Self {
            window: window.max(1),
            in_flight: HashMap::default(),
        }
    }

    /// The window, bytes per peer.
    ///
    /// ```
    /// assert_eq!(zccl_runtime::flow::Credit::new(4096).window(), 4096);
    /// ```
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Bytes charged to `peer` and not returned yet.
    ///
    /// ```
    /// assert_eq!(zccl_runtime::flow::Credit::new(64).in_flight(0), 0);
    /// ```
    pub fn in_flight(&self, peer: u32) -> u64 {
        self.in_flight.get(&peer).copied().unwrap_or(0)
    }

    /// The protocol of a send of `len` bytes to `peer` (`routed`: through
    /// the router), charging the window when the data goes at once. A
    /// message larger than the whole window goes at once only when nothing
    /// else is in flight to that peer.
    ///
    /// ```
    /// use zccl_runtime::flow::{Credit, Protocol};
    /// let mut c = Credit::new(1000);
    /// // Larger than the window, nothing in flight: at once (bounded by one message).
    /// assert_eq!(c.choose(0, 1_000_000, false, true), Protocol::Immediate { charged: 1_000_000 });
    /// assert_eq!(c.choose(0, 8, false, true), Protocol::Rendezvous);
    /// ```
    pub fn choose(&mut self, peer: u32, len: u64, routed: bool, labelled: bool) -> Protocol {
        let used = self.in_flight(peer);
        let fits = used == 0 || used.saturating_add(len) <= self.window;
        if !fits {
            return Protocol::Rendezvous;
        }
        *self.in_flight.entry(peer).or_default() += len;
        if acknowledged(len, routed, labelled) {
            Protocol::Immediate { charged: len }
        } else {
            Protocol::Eager { charged: len }
        }
    }

    /// The data of a rendezvous send goes now (its clear-to-send came):
    /// returns what to charge. An unacknowledged message is charged (its
    /// receiver returns the credit as for an eager one); an acknowledged one
    /// is not (the receive waits for it: it is never unexpected).
    ///
    /// ```
    /// use zccl_runtime::flow::Credit;
    /// let mut c = Credit::new(100);
    /// assert_eq!(c.on_cleared(1, 10, false, true), 10);
    /// assert_eq!(c.on_cleared(1, 1 << 20, false, true), 0);
    /// assert_eq!(c.in_flight(1), 10);
    /// ```
    pub fn on_cleared(&mut self, peer: u32, len: u64, routed: bool, labelled: bool) -> u64 {
        if acknowledged(len, routed, labelled) {
            return 0;
        }
        *self.in_flight.entry(peer).or_default() += len;
        len
    }

    /// `bytes` of credit came back from `peer` (an acknowledgement of a
    /// charged send, or a batch of eager credit).
    ///
    /// ```
    /// let mut c = zccl_runtime::flow::Credit::new(100);
    /// c.choose(2, 40, false, true);
    /// c.on_returned(2, 100); // more than charged: saturates at zero
    /// assert_eq!(c.in_flight(2), 0);
    /// ```
    pub fn on_returned(&mut self, peer: u32, bytes: u64) {
        if let Some(v) = self.in_flight.get_mut(&peer) {
            *v = v.saturating_sub(bytes);
            if *v == 0 {
                self.in_flight.remove(&peer);
            }
        }
    }
}

/// A receiver's tally of the eager credit it owes each sender.
///
/// ```
/// use zccl_runtime::flow::Owed;
/// let mut o = Owed::new(400); // batches of a quarter window: 100 bytes
/// assert_eq!(o.on_matched(5, 60), None);
/// assert_eq!(o.on_matched(5, 60), Some(120)); // send a credit of 120 to rank 5
/// assert_eq!(o.take(5), 0);
/// ```
#[derive(Debug, Clone)]
pub struct Owed {
    batch: u64,
    owed: HashMap<u32, u64>,
}

impl Owed {
    /// Returns credit in batches of a quarter of `window`.
    ///
    /// ```
    /// let _ = zccl_runtime::flow::Owed::new(64 << 20);
    /// ```
    pub fn new(window: u64) -> Self {
        Self {
            batch: (window / 4).max(1),
            owed: HashMap::default(),
        }
    }

    /// An unacknowledged message of `len` bytes from `peer` was matched (or
    /// dropped): returns a credit to send back now, if a batch is full.
    ///
    /// ```
    /// let mut o = zccl_runtime::flow::Owed::new(4);
    /// assert_eq!(o.on_matched(0, 1), Some(1));
    /// ```
    pub fn on_matched(&mut self, peer: u32, len: u64) -> Option<u64> {
        let v = self.owed.entry(peer).or_default();
        *v += len;
        if *v >= self.batch {
            let out = *v;
            self.owed.remove(&peer);
            Some(out)
        } else {
            None
        }
    }

    /// Everything owed to `peer`, now (sent along with a clear-to-send).
    ///
    /// ```
    /// let mut o = zccl_runtime::flow::Owed::new(1000);
    /// o.on_matched(1, 7);
    /// assert_eq!(o.take(1), 7);
    /// ```
    pub fn take(&mut self, peer: u32) -> u64 {
        self.owed.remove(&peer).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender and a receiver that never posts until told: whatever the
    /// sizes, the bytes sent without a clear-to-send never exceed the window
    /// (or one message, when a single message is larger).
    #[test]
    fn unexpected_bytes_stay_within_the_window() {
        let window = 1000;
        let mut c = Credit::new(window);
        let mut o = Owed::new(window);
        let sizes = [8u64, 500, 70_000, 3, 999, 1000, 64, 64 << 10, 1, 400];
        let mut buffered = 0u64; // at the receiver, unmatched
        let mut waiting_rts = 0;
        // A message larger than the window goes alone.
        let mut alone = 0;
        for round in 0..50 {
            for (i, &len) in sizes.iter().enumerate() {
                let was_empty = buffered == 0;
                match c.choose(0, len, false, true) {
                    Protocol::Eager { charged } | Protocol::Immediate { charged } => {
                        buffered += len;
                        assert_eq!(charged, len);
                        if was_empty {
                            alone = len;
                        }
                    }
                    Protocol::Rendezvous => waiting_rts += 1,
                }
                assert!(
                    buffered <= window.max(alone),
                    "round {round} msg {i}: {buffered} buffered"
                );
                // Now and then the receiver posts and matches everything.
                if (round + i) % 7 == 0 {
                    // Immediate ones are acknowledged (credit back at
                    // once); eager ones come back in batches; model both
                    // as returned by the end of the drain.
                    c.on_returned(0, buffered);
                    let _ = o.on_matched(0, buffered);
                    buffered = 0;
                }
            }
        }
        assert!(waiting_rts > 0, "the window was never full: test too weak");
    }

    #[test]
    fn acknowledgement_rule_is_shared() {
        let mut c = Credit::new(1 << 30);
        for len in [0, 1, EAGER_MAX - 1, EAGER_MAX, EAGER_MAX + 1, 1 << 26] {
            for routed in [false, true] {
                for labelled in [false, true] {
                    let p = c.choose(9, len, routed, labelled);
                    let eager = matches!(p, Protocol::Eager { .. });
                    assert_eq!(
                        eager,
                        !acknowledged(len, routed, labelled),
                        "{len} {routed}"
                    );
                }
            }
        }
    }

    #[test]
    fn owed_credit_comes_back_in_batches() {
        let mut o = Owed::new(1000); // batch 250
        let mut back = 0;
        for _ in 0..100 {
            if let Some(b) = o.on_matched(4, 10) {
                assert!(b >= 250);
                back += b;
            }
        }
        back += o.take(4);
        assert_eq!(back, 1000);
    }
}

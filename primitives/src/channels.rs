//! Channel ids handed out for you: [`Channels`].
//!
//! Every operation of this crate takes the channel(s) it may use as an
//! argument and uses exactly those; **no operation has a default channel**.
//! What does have one is the runtime's communicator:
//! `Communicator::send`, `recv`, `isend`, `irecv` and `batch` use
//! **channel 0**, so channel 0 is where a program's own point-to-point
//! traffic goes unless it says otherwise. An operation owns its channels
//! until it completes, and every rank issues the operations of one channel
//! in the same order; two operations in flight at once need different
//! channels.
//!
//! | operation | channels it takes |
//! |---|---|
//! | `collectives::*` (all_reduce, all_gather, reduce_scatter, broadcast, barrier and their `_into`, `_with`, `i*` forms) | one |
//! | `alltoall::*`, `layout::*` | one |
//! | `ring::{ring_shift, ring_shift_start, ring_shift_into, ring_pass, ring_pass_elems}` | one |
//! | `ring::{bidir_ring_step, bidir_ring_step_into}` | two (one per direction) |
//! | `token_ring::{token_ring, token_ring_elems}` | two: [`TokenRingChannels`] `{ q, out }` |
//! | `scan::*` | one |
//!
//! [`Channels`] answers "which ids?": a counter over a range that leaves
//! channel 0 alone. It is deterministic and involves no communication:
//! every rank that makes the same calls in the same order gets the same
//! ids, which is what matching requires (the same rule as for the
//! operations themselves). Allocate at start-up, in code that every rank
//! runs identically, and keep the ids for the life of the communicator.
//!
//! ```
//! use zccl_primitives::{channels::Channels, collectives::all_reduce, reduce::ReduceOp};
//! use zccl_primitives::{ring::ring_pass_elems, sim::run_ranks, Fabric};
//! let out = run_ranks(3, |f| {
//!     let mut ch = Channels::new();
//!     let (grads, kv) = (ch.next(), ch.next()); // 1 and 2, on every rank
//!     assert_eq!((grads, kv), (1, 2));
//!     let mut seen = Vec::new();
//!     ring_pass_elems(f, kv, 1, vec![f.rank() as i32], |_| 1, |b| {
//!         seen.push(b.data[0]);
//!         Ok(())
//!     }).unwrap();
//!     let mut g = [1.0f32];
//!     all_reduce(f, grads, &mut g, ReduceOp::Sum).unwrap();
//!     (seen, g[0])
//! });
//! assert_eq!(out[0], (vec![0, 2, 1], 3.0));
//! ```

use std::ops::Range;

use crate::token_ring::TokenRingChannels;

/// Hands out distinct channel ids from a range that does not contain 0,
/// in increasing order. Deterministic: the same calls in the same order
/// give the same ids on every rank.
///
/// ```
/// use zccl_primitives::channels::Channels;
/// let mut ch = Channels::new();
/// assert_eq!(ch.next(), 1);
/// assert_eq!(ch.take(3), 2..5);
/// let tr = ch.token_ring();
/// assert_eq!((tr.q, tr.out), (5, 6));
/// // A block for a library to allocate from on its own.
/// let mut lib = Channels::within(ch.take(8));
/// assert_eq!(lib.next(), 7);
/// assert_eq!(ch.next(), 15);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    next: u32,
    end: u32,
}

impl Default for Channels {
    /// The same as [`Channels::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl Channels {
    /// The first id [`Channels::new`] hands out: 1, the first after the
    /// communicator's own channel 0.
    pub const FIRST: u32 = 1;

    /// An allocator over `1..u32::MAX`.
    ///
    /// ```
    /// use zccl_primitives::channels::Channels;
    /// assert_eq!(Channels::new().next(), Channels::FIRST);
    /// assert_eq!(Channels::new(), Channels::default());
    /// ```
    pub fn new() -> Self {
        Self {
            next: Self::FIRST,
            end: u32::MAX,
        }
    }

    /// An allocator over `range` only: to keep clear of channels the
    /// program uses by number, or to give a library a block of its own
    /// (`Channels::within(channels.take(k))`).
    ///
    /// # Panics
    /// If `range` contains channel 0 (the communicator's own
    /// `send`/`recv`/`isend`/`irecv`/`batch` use it).
    ///
    /// ```
    /// use zccl_primitives::channels::Channels;
    /// let mut ch = Channels::within(100..102);
    /// assert_eq!([ch.next(), ch.next()], [100, 101]);
    /// assert_eq!(ch.remaining(), 0);
    /// assert!(std::panic::catch_unwind(|| Channels::within(0..4)).is_err());
    /// ```
    pub fn within(range: Range<u32>) -> Self {
        assert!(
            range.is_empty() || range.start > 0,
            "Channels::within({range:?}): channel 0 is the communicator's own \
             (send, recv, isend, irecv, batch); start the range at 1 or above"
        );
        Self {
            next: range.start,
            end: range.end.max(range.start),
        }
    }

    /// The next channel id.
    ///
    /// # Panics
    /// If the range is used up.
    ///
    /// ```
    /// use zccl_primitives::channels::Channels;
    /// let mut ch = Channels::new();
    /// assert_eq!([ch.next(), ch.next(), ch.next()], [1, 2, 3]);
    /// ```
    #[allow(clippy::should_implement_trait)] // an id, not an `Option`: running out is a bug
    pub fn next(&mut self) -> u32 {
        self.take(1).start
    }

    /// The next `k` channel ids, as a range (consecutive ids).
    ///
    /// # Panics
    /// If fewer than `k` are left.
    ///
    /// ```
    /// use zccl_primitives::channels::Channels;
    /// let mut ch = Channels::new();
    /// let layers: Vec<u32> = ch.take(4).collect(); // one K/V ring per layer
    /// assert_eq!(layers, vec![1, 2, 3, 4]);
    /// assert_eq!(ch.next(), 5);
    /// ```
    pub fn take(&mut self, k: usize) -> Range<u32> {
        let left = self.remaining();
        assert!(
            k <= left,
            "Channels: {k} channel(s) asked for, {left} left of {}..{}",
            self.next,
            self.end
        );
        let start = self.next;
        self.next += k as u32; // k <= end - next
        start..self.next
    }

    /// The two channels of a TokenRing pass (`q`, then `out`).
    ///
    /// # Panics
    /// If fewer than two are left.
    ///
    /// ```
    /// use zccl_primitives::{channels::Channels, token_ring::TokenRingChannels};
    /// let mut ch = Channels::new();
    /// assert_eq!(ch.token_ring(), TokenRingChannels { q: 1, out: 2 });
    /// ```
    pub fn token_ring(&mut self) -> TokenRingChannels {
        let r = self.take(2);
        TokenRingChannels {
            q: r.start,
            out: r.start + 1,
        }
    }

    /// How many ids are left.
    ///
    /// ```
    /// use zccl_primitives::channels::Channels;
    /// let mut ch = Channels::within(5..8);
    /// ch.next();
    /// assert_eq!(ch.remaining(), 2);
    /// ```
    pub fn remaining(&self) -> usize {
        (self.end - self.next) as usize
    }
}

/// The two channels of a TokenRing pass, from an allocator (see
/// [`Channels::token_ring`]).
///
/// ```
/// use zccl_primitives::{channels::Channels, token_ring::TokenRingChannels};
/// let mut ch = Channels::within(10..20);
/// assert_eq!(TokenRingChannels::from(&mut ch), TokenRingChannels { q: 10, out: 11 });
/// ```
impl From<&mut Channels> for TokenRingChannels {
    fn from(ch: &mut Channels) -> Self {
        ch.token_ring()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fabric;
    use crate::sim::run_ranks;

    /// The allocation sequence of a "trainer": a gradient channel, a K/V
    /// ring per layer, a TokenRing pair, a library's block.
    fn plan(layers: usize) -> Vec<u32> {
        let mut ch = Channels::new();
        let mut ids = vec![ch.next()];
        ids.extend(ch.take(layers));
        let tr = TokenRingChannels::from(&mut ch);
        ids.extend([tr.q, tr.out]);
        let mut lib = Channels::within(ch.take(4));
        ids.extend([lib.next(), lib.next()]);
        ids.push(ch.next());
        ids
    }

    #[test]
    fn same_calls_same_ids_on_every_rank() {
        let per_rank = run_ranks(5, |_| plan(3));
        assert!(per_rank.iter().all(|p| p == &per_rank[0]), "{per_rank:?}");
        assert_eq!(per_rank[0], vec![1, 2, 3, 4, 5, 6, 7, 8, 11]);
        // Distinct and never 0.
        let mut ids = per_rank[0].clone();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), per_rank[0].len());
        assert!(!ids.contains(&0));
    }

    #[test]
    fn allocated_channels_carry_concurrent_operations() {
        // Two rings in flight at once on two allocated channels, with
        // channel 0 busy with the program's own traffic meanwhile.
        let out = run_ranks(4, |f| {
            let mut ch = Channels::new();
            let (a, b) = (ch.next(), ch.next());
            let (r, n) = (f.rank(), f.size());
            let own = f.isend((r + 1) % n, 0, 0, vec![r as u8]).unwrap();
            let ha = crate::ring::ring_shift_start(f, a, vec![r as u8], 1, 1, 0).unwrap();
            let hb = crate::ring::ring_shift_start(f, b, vec![10 + r as u8], 1, -1, 0).unwrap();
            let got0 = f.irecv((r + n - 1) % n, 0, 0, 1).unwrap().wait().unwrap();
            own.wait().unwrap();
            (got0[0], ha.wait().unwrap()[0], hb.wait().unwrap()[0])
        });
        assert_eq!(out[0], (3, 3, 11));
        assert_eq!(out[2], (1, 1, 13));
    }

    #[test]
    fn exhaustion_and_edges() {
        let mut ch = Channels::within(1..3);
        assert_eq!(ch.take(0), 1..1);
        assert_eq!(ch.take(2), 1..3);
        assert_eq!(ch.take(0), 3..3);
        assert!(std::panic::catch_unwind(move || ch.clone().next()).is_err());
        // An empty range is allowed (even at 0): nothing to hand out.
        assert_eq!(Channels::within(0..0).remaining(), 0);
        #[allow(clippy::reversed_empty_ranges)] // on purpose: empty, not an error
        let reversed = Channels::within(5..2);
        assert_eq!(reversed.remaining(), 0);
        let mut last = Channels::within(u32::MAX - 1..u32::MAX);
        assert_eq!(last.next(), u32::MAX - 1);
        assert_eq!(Channels::new().remaining(), (u32::MAX - 1) as usize);
    }
}

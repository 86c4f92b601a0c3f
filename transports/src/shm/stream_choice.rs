//! Whether a ring payload of 16–64 KiB is written with stores that bypass
//! the caches: the consumer's choice, from the times its copies out of the
//! ring take.
//!
//! From [`STREAM_SHARED_MIN`] (64 KiB) up a producer always streams its
//! payload to memory ([`crate::copy::copy_raw_shared`]). Below, which of
//! the two is faster depends on where the two ranks' cores sit, and no
//! file tells: the consumer's loads of lines the producer's core holds
//! modified are fast between cores that share a last-level cache and slow
//! between cores that do not (AMD's CCXs, two sockets, and a VM's vCPUs
//! wherever its host placed them), while lines streamed to memory cost the
//! same either way. The same kind of 2-vCPU VM measured both, in two
//! sessions (2 ranks, medians of interleaved rounds, plain against
//! streamed): sendrecv 16 KiB 2.4 against 4.0 µs and 32 KiB 3.3 against
//! 6.6 in the first, 5.9 against 4.0 and 10.0 against 5.8 in the second;
//! its `lscpu` reported one shared L3 both times. (The all-to-all of
//! 64 KiB, 32 KiB blocks, streamed faster in both: 10.7 against 6.75 µs,
//! 10.8 against 6.7.)
//!
//! So the consumer measures: the producer writes such a payload the way
//! the consumer last asked for (a word of the ring's consumer line,
//! `Ring::ask_stream`), except every [`EXPLORE_EVERY`]th one, which it
//! writes the other way ([`stream_nth`]), and flags in the record's header
//! whether it streamed it. The consumer times the copy out of each such
//! record it polls ([`clock`](crate::clock) ticks per KiB) and keeps the
//! last [`KEPT`] times of each kind ([`Chooser`]); when the other kind's
//! median is lower by [`MARGIN_PCT`] percent or more it asks for that one.
//! Pure state, no I/O.

use super::config::STREAM_ADAPT_MIN;
use crate::copy::STREAM_SHARED_MIN;

/// One in this many payloads of the adaptive sizes is written the way the
/// consumer did not ask for, so that both kinds keep being timed.
pub(super) const EXPLORE_EVERY: u32 = 32;

/// Times kept per kind (the median of these decides).
pub(super) const KEPT: usize = 7;

/// How much lower (percent) the other kind's median must be before the
/// consumer asks for it: one noisy minute does not flip the choice back and
/// forth.
pub(super) const MARGIN_PCT: u64 = 15;

/// Whether a payload of `len` bytes is one whose way of writing the
/// consumer chooses.
///
/// ```text
/// 16 KiB <= len < 64 KiB
/// ```
#[inline]
pub(super) fn adaptive(len: usize) -> bool {
    (STREAM_ADAPT_MIN..STREAM_SHARED_MIN).contains(&len)
}

/// The producer's side: whether its `n`th adaptive payload (counting from
/// 1) is streamed, given whether the consumer asks for streaming.
#[inline]
pub(super) fn stream_nth(n: u32, asked: bool) -> bool {
    if n.is_multiple_of(EXPLORE_EVERY) {
        !asked
    } else {
        asked
    }
}

/// The consumer's side: recent copy times of each kind, and the choice.
#[derive(Debug, Default)]
pub(super) struct Chooser {
    /// Ticks per KiB of the last copies, plain (`[0]`) and streamed
    /// (`[1]`), oldest overwritten first.
    times: [[u64; KEPT]; 2],
    /// How many times of each kind were ever recorded.
    seen: [usize; 2],
    /// Whether it asks for streaming now.
    stream: bool,
}

impl Chooser {
    /// Records that copying out a payload of `len` bytes (`streamed` or
    /// not) took `ticks`; returns the new choice when it changed.
    ///
    /// The first choice is plain stores (what the producer used before any
    /// measurement). A kind with fewer than `KEPT` times never wins.
    pub(super) fn observe(&mut self, streamed: bool, len: usize, ticks: u64) -> Option<bool> {
        let k = usize::from(streamed);
        let per_kib = ticks.saturating_mul(1024) / (len.max(1) as u64);
        self.times[k][self.seen[k] % KEPT] = per_kib;
        self.seen[k] += 1;
        if self.seen.iter().any(|&n| n < KEPT) {
            return None;
        }
        let (cur, other) = (usize::from(self.stream), usize::from(!self.stream));
        let (c, o) = (median(&self.times[cur]), median(&self.times[other]));
        // `o` at least MARGIN_PCT percent below `c`.
        if o.saturating_mul(100) < c.saturating_mul(100 - MARGIN_PCT) {
            self.stream = !self.stream;
            return Some(self.stream);
        }
        None
    }

    /// Whether it asks for streaming now.
    #[cfg(test)]
    pub(super) fn stream(&self) -> bool {
        self.stream
    }

    /// How many copies of each kind it timed: plain, streamed.
    #[cfg(test)]
    pub(super) fn timed(&self) -> [usize; 2] {
        self.seen
    }
}

fn median(v: &[u64; KEPT]) -> u64 {
    let mut s = *v;
    s.sort_unstable();
    s[KEPT / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_payloads_of_16_to_64_kib_are_chosen_for() {
        assert!(!adaptive((16 << 10) - 1));
        assert!(adaptive(16 << 10));
        assert!(adaptive((64 << 10) - 1));
        assert!(!adaptive(64 << 10));
    }

    #[test]
    fn the_producer_writes_one_in_thirty_two_the_other_way() {
        let plain: Vec<bool> = (1..=128).map(|n| stream_nth(n, false)).collect();
        assert_eq!(plain.iter().filter(|&&s| s).count(), 4);
        assert!(plain[31] && plain[63] && !plain[0] && !plain[30]);
        let streamed: Vec<bool> = (1..=64).map(|n| stream_nth(n, true)).collect();
        assert_eq!(streamed.iter().filter(|&&s| !s).count(), 2);
    }

    /// Feeds `n` copies of each kind, alternating, at the given ticks per
    /// KiB (for 32 KiB payloads); returns the choices made.
    fn feed(c: &mut Chooser, n: usize, plain: u64, streamed: u64) -> Vec<bool> {
        let mut made = Vec::new();
        for _ in 0..n {
            made.extend(c.observe(false, 32 << 10, plain * 32));
            made.extend(c.observe(true, 32 << 10, streamed * 32));
        }
        made
    }

    #[test]
    fn it_asks_for_streaming_once_streamed_copies_are_clearly_faster_and_back() {
        let mut c = Chooser::default();
        assert!(!c.stream());
        // Far faster streamed, but no choice before both kinds have KEPT times.
        assert_eq!(feed(&mut c, KEPT - 1, 300, 100), vec![]);
        assert_eq!(feed(&mut c, 1, 300, 100), vec![true]);
        assert!(c.stream());
        // The host changes (the ranks now share a cache): plain wins again
        // once most of the kept times say so.
        let made = feed(&mut c, KEPT, 50, 100);
        assert_eq!(made, vec![false]);
        assert!(!c.stream());
    }

    #[test]
    fn a_small_difference_or_a_few_outliers_change_nothing() {
        let mut c = Chooser::default();
        // Streamed 10 % faster: within the margin.
        assert_eq!(feed(&mut c, 3 * KEPT, 100, 90), vec![]);
        // Three preempted copies out of seven: the median holds.
        for _ in 0..3 {
            assert_eq!(c.observe(false, 32 << 10, 100_000 * 32), None);
        }
        assert!(!c.stream());
        // A zero-length or zero-time record does not panic.
        assert_eq!(c.observe(true, 0, 0), None);
    }
}

//! [`DurationHistogram`]: the `zccl_op_duration_seconds` histogram, updated
//! without a lock or a locked instruction.
//!
//! Every completed operation is observed, on the thread that completes it,
//! often the very thread whose next operation waits for it. The
//! `prometheus-client` histogram takes a mutex per observation and finds
//! the bucket by comparing floats; this one adds to two numbers of the
//! observing thread's own (the bucket's count and the sum in nanoseconds;
//! a [`Tally`], summed over the threads when read). With two atomics
//! instead (until the thirty-fifth session), the op metrics and the
//! shared-memory byte counters cost an 8-byte all-reduce 6 % (see
//! `tally.rs`). Measured on the 8 B
//! ping-pong between two local ranks (2 vCPUs of an Intel Xeon VM, medians
//! of 7 interleaved rounds, one way): 1.072 µs with the mutexed histogram,
//! 1.056 µs with this one. With no histogram at all (an experiment, not
//! kept) it was 1.060 µs against 1.104 µs in another 7 rounds, and 1.031
//! µs without the op metrics at all: the op's clock reading at completion
//! and the two atomic additions are most of what is left.
//!
//! The exposition is a snapshot of every thread's cells: `_count` is their
//! sum, so it always equals the `+Inf` bucket; `_sum` may count an
//! observation in flight that a bucket does not yet (or the reverse), as
//! with any histogram scraped while it is updated.

use std::sync::Arc;
use std::time::Duration;

use super::tally::Tally;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// The buckets' upper bounds, in nanoseconds: 1 µs, ×4 per bucket, 15 of
/// them (up to about 4.5 minutes), then `+Inf`.
const BOUNDS_NS: [u64; 15] = {
    let mut b = [0u64; 15];
    let mut i = 0;
    let mut v = 1_000u64;
    while i < 15 {
        b[i] = v;
        v *= 4;
        i += 1;
    }
    b
};

/// A Prometheus histogram of durations with fixed buckets (1 µs ×4, see
/// the module's notes), safe to observe from any thread without a lock.
/// Clones share the counts.
///
/// ```
/// use std::time::Duration;
/// use zccl_transports::metrics::DurationHistogram;
/// let h = DurationHistogram::default();
/// h.observe(Duration::from_nanos(800)); // le 1 µs
/// h.observe(Duration::from_micros(3)); // le 4 µs
/// h.observe(Duration::from_secs(3600)); // +Inf
/// assert_eq!(h.count(), 3);
/// assert_eq!(h.buckets()[..2], [(1e-6, 1), (4e-6, 1)]);
/// assert_eq!(h.buckets().last(), Some(&(f64::INFINITY, 1)));
/// ```
#[derive(Clone, Debug, Default)]
pub struct DurationHistogram {
    /// Cells `0..=BOUNDS_NS.len()`: one per bound of [`BOUNDS_NS`], then
    /// `+Inf` (not cumulative); cell [`SUM`]: the sum in nanoseconds.
    inner: Arc<Tally>,
}

/// The tally's cell of the sum.
const SUM: usize = BOUNDS_NS.len() + 1;
const _: () = assert!(SUM < super::tally::CELLS);

impl DurationHistogram {
    /// Counts one observation of `d`.
    pub fn observe(&self, d: Duration) {
        self.observe_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Counts one observation of `ns` nanoseconds.
    ///
    /// ```
    /// let h = zccl_transports::metrics::DurationHistogram::default();
    /// h.observe_ns(2_500);
    /// assert_eq!(h.buckets()[1], (4e-6, 1));
    /// ```
    #[inline]
    pub fn observe_ns(&self, ns: u64) {
        let i = BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(BOUNDS_NS.len());
        self.inner.add2((i, 1), (SUM, ns));
    }

    /// The observations so far (the sum of the buckets).
    pub fn count(&self) -> u64 {
        self.buckets().iter().map(|b| b.1).sum()
    }

    /// The sum of the observations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.inner.get(SUM) as f64 / 1e9
    }

    /// Each bucket's upper bound in seconds and its own count (not
    /// cumulative), `+Inf` last: the form the exposition takes.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.buckets_and_sum().0
    }

    /// [`DurationHistogram::buckets`] and the sum in seconds, read at once.
    fn buckets_and_sum(&self) -> (Vec<(f64, u64)>, f64) {
        let all = self.inner.get_all();
        let buckets = BOUNDS_NS
            .iter()
            .map(|&b| b as f64 / 1e9)
            .chain(std::iter::once(f64::INFINITY))
            .zip(&all[..SUM])
            .map(|(le, &c)| (le, c))
            .collect();
        (buckets, all[SUM] as f64 / 1e9)
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (buckets, sum) = self.buckets_and_sum();
        let count = buckets.iter().map(|b| b.1).sum();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_the_exponential_buckets_they_replace() {
        let want = prometheus_client::metrics::histogram::exponential_buckets(1e-6, 4.0, 15);
        for (b, w) in BOUNDS_NS.iter().zip(want) {
            assert!(
                (*b as f64 / 1e9 - w).abs() <= w * 1e-12,
                "{b} ns against {w} s"
            );
        }
    }

    #[test]
    fn an_observation_lands_in_the_first_bucket_that_holds_it() {
        let h = DurationHistogram::default();
        for ns in [0, 1_000, 1_001, 4_000, 4_001, 3_600_000_000_000] {
            h.observe(Duration::from_nanos(ns));
        }
        // Past u64 nanoseconds: counted as u64::MAX (the sum is not meant
        // for such values; no operation lives that long).
        h.observe(Duration::MAX);
        let b = h.buckets();
        assert_eq!(b[0], (1e-6, 2)); // 0 and exactly 1 µs
        assert_eq!(b[1].1, 2); // 1.001 and exactly 4 µs
        assert_eq!(b[2].1, 1); // 4.001 µs
        assert_eq!(b[15], (f64::INFINITY, 2)); // past 4.5 minutes
        assert_eq!(h.count(), 7);
    }

    #[test]
    fn observations_from_many_threads_are_all_counted() {
        let h = DurationHistogram::default();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let h = h.clone();
                s.spawn(move || {
                    for i in 0..10_000u64 {
                        h.observe(Duration::from_nanos(t * 1000 + i % 7));
                    }
                });
            }
        });
        assert_eq!(h.count(), 40_000);
        let want: u64 = (0..4u64)
            .map(|t| (0..10_000u64).map(|i| t * 1000 + i % 7).sum::<u64>())
            .sum();
        assert_eq!((h.sum_seconds() * 1e9).round() as u64, want);
    }
}

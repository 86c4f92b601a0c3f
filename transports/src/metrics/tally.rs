//! [`Tally`]: counts that each thread adds to on its own, summed when the
//! metrics are read; and [`TallyCounter`], a Prometheus counter kept in one.
//!
//! The hot counters (every message's bytes on shared memory, every
//! completed send's and receive's bytes and duration) are updated several
//! times per operation, on the thread that completes it, often the very
//! thread whose next operation waits for it. An atomic addition is a locked
//! instruction, which waits for every store the thread made before it (the
//! ring record it just wrote, say): with the op metrics and the shared-memory
//! byte counters as atomics, an 8-byte all-reduce between two local ranks
//! took 0.950 µs; with no metrics at all 0.896 µs (2 vCPUs, 7 interleaved
//! rounds; Open MPI 0.89 µs). Here each thread adds to cells of its own
//! with a plain load and store, and a read sums the threads' cells.
//!
//! **Threads that end.** A thread's cells are folded into the tally's own
//! when the thread exits (its thread-local storage is destroyed), under the
//! lock a read takes, so every count is read exactly once and a counter never
//! goes back; the tally keeps cells only for live threads, so memory stays
//! bounded however many threads come and go. A thread whose storage is
//! already being torn down adds straight to the tally's own cells
//! (atomically).
//!
//! ```
//! use zccl_transports::metrics::TallyCounter;
//! let c = TallyCounter::default();
//! c.inc_by(3);
//! let d = c.clone();
//! std::thread::spawn(move || d.inc_by(4)).join().unwrap();
//! assert_eq!(c.get(), 7);
//! ```

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// How many cells a tally has: enough for a histogram's buckets and sum
/// ([`super::DurationHistogram`]).
pub(crate) const CELLS: usize = 17;

/// One thread's cells of one tally (written only by that thread).
type Cells = [AtomicU64; CELLS];

/// Numbers each thread adds to on its own (see the module's notes).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The cells of every live thread that added here.
    threads: Mutex<Vec<Arc<Cells>>>,
    /// What threads that ended had added (and what threads add while their
    /// own storage is torn down).
    retired: Cells,
}

/// This thread's cells of one tally.
struct Mine {
    tally: Weak<Inner>,
    cells: Arc<Cells>,
}

impl Drop for Mine {
    /// The thread ends: its counts go to the tally's own cells, and its
    /// cells leave the list, under the lock a read takes.
    fn drop(&mut self) {
        if let Some(t) = self.tally.upgrade() {
            let mut threads = t.threads.lock().unwrap_or_else(|p| p.into_inner());
            for (r, c) in t.retired.iter().zip(self.cells.iter()) {
                r.fetch_add(c.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            threads.retain(|c| !Arc::ptr_eq(c, &self.cells));
        }
    }
}

thread_local! {
    /// This thread's cells, one entry per tally it added to.
    static MINE: RefCell<Vec<Mine>> = const { RefCell::new(Vec::new()) };
}

/// Adds `v` to `c`: with a plain load and store where only this thread
/// writes it (`own`), else atomically.
#[inline]
fn bump(c: &AtomicU64, v: u64, own: bool) {
    if own {
        c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
    } else {
        c.fetch_add(v, Ordering::Relaxed);
    }
}

impl Tally {
    /// Adds `v` to cell `i` (`i < CELLS`).
    #[inline]
    pub(crate) fn add(&self, i: usize, v: u64) {
        self.with_cells(|c, own| bump(&c[i], v, own));
    }

    /// Adds `v` to cell `i` and `w` to cell `j` (one look for this
    /// thread's cells).
    #[inline]
    pub(crate) fn add2(&self, (i, v): (usize, u64), (j, w): (usize, u64)) {
        self.with_cells(|c, own| {
            bump(&c[i], v, own);
            bump(&c[j], w, own);
        });
    }

    /// Runs `f` on this thread's cells (`own`: only this thread writes
    /// them), or, from a thread whose thread-local storage is being torn
    /// down, on the tally's own (not `own`).
    #[inline]
    fn with_cells(&self, f: impl Fn(&Cells, bool)) {
        let me = Arc::as_ptr(&self.inner);
        let done = MINE.try_with(|mine| {
            let Ok(mine) = mine.try_borrow() else {
                return false;
            };
            match mine.iter().find(|m| std::ptr::eq(m.tally.as_ptr(), me)) {
                Some(m) => {
                    f(&m.cells, true);
                    true
                }
                None => false,
            }
        });
        if done != Ok(true) {
            self.with_new_cells(f, done.is_ok());
        }
    }

    /// [`Tally::with_cells`] from a thread with no cells here yet (it gets
    /// some, where its thread-local storage still lives: `live`).
    #[cold]
    fn with_new_cells(&self, f: impl Fn(&Cells, bool), live: bool) {
        let cells: Arc<Cells> = Arc::default();
        let registered = live
            && MINE
                .try_with(|mine| {
                    let Ok(mut mine) = mine.try_borrow_mut() else {
                        return false;
                    };
                    // Cells of tallies that are gone are dropped here, so
                    // a thread that outlives many tallies keeps no garbage.
                    mine.retain(|m| m.tally.strong_count() > 0);
                    self.inner
                        .threads
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(cells.clone());
                    mine.push(Mine {
                        tally: Arc::downgrade(&self.inner),
                        cells: cells.clone(),
                    });
                    true
                })
                .unwrap_or(false);
        if registered {
            // Other threads only read these cells; atomically all the same
            // (this once), as a read may be under way.
            f(&cells, false);
        } else {
            f(&self.inner.retired, false);
        }
    }

    /// The sum of cell `i` over every thread, past and present.
    pub(crate) fn get(&self, i: usize) -> u64 {
        self.get_all()[i]
    }

    /// Every cell's sum, read under one lock.
    pub(crate) fn get_all(&self) -> [u64; CELLS] {
        let threads = self.inner.threads.lock().unwrap_or_else(|p| p.into_inner());
        let mut sum: [u64; CELLS] =
            std::array::from_fn(|i| self.inner.retired[i].load(Ordering::Relaxed));
        for t in threads.iter() {
            for (s, c) in sum.iter_mut().zip(t.iter()) {
                *s = s.wrapping_add(c.load(Ordering::Relaxed));
            }
        }
        sum
    }
}

/// A Prometheus counter that each thread adds to on its own (see the `tally` module):
/// no locked instruction per addition. Clones share the count.
///
/// ```
/// let c = zccl_transports::metrics::TallyCounter::default();
/// c.inc_by(8);
/// c.inc_by(8);
/// assert_eq!(c.get(), 16);
/// ```
#[derive(Clone, Debug, Default)]
pub struct TallyCounter {
    tally: Arc<Tally>,
}

impl TallyCounter {
    /// Adds `v`.
    #[inline]
    pub fn inc_by(&self, v: u64) {
        self.tally.add(0, v);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.tally.get(0)
    }
}

impl TypedMetric for TallyCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for TallyCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_of_threads_that_ended_stay_and_their_cells_go() {
        let t = Arc::new(Tally::default());
        t.add(0, 1);
        let handles: Vec<_> = (0..8u64)
            .map(|k| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        t.add(0, 1);
                        t.add(16, k);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(t.get(0), 8001);
        assert_eq!(t.get(16), 1000 * (0..8).sum::<u64>());
        // Only this thread's cells are left in the list.
        assert_eq!(t.inner.threads.lock().unwrap().len(), 1);
    }

    #[test]
    fn reads_while_threads_add_never_go_back_and_end_exact() {
        let t = Arc::new(Tally::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let adders: Vec<_> = (0..3)
            .map(|_| {
                let (t, stop) = (t.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    // Threads that come and go while the reader reads.
                    while !stop.load(Ordering::Relaxed) && n < 200_000 {
                        let t = t.clone();
                        n += std::thread::spawn(move || {
                            for _ in 0..500 {
                                t.add(3, 1);
                            }
                            500
                        })
                        .join()
                        .unwrap();
                    }
                    n
                })
            })
            .collect();
        let mut last = 0;
        for _ in 0..2000 {
            let now = t.get(3);
            assert!(now >= last, "went back: {last} -> {now}");
            last = now;
        }
        stop.store(true, Ordering::Relaxed);
        let total: u64 = adders.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(t.get(3), total);
        assert!(t.inner.threads.lock().unwrap().is_empty());
    }

    #[test]
    fn a_thread_keeps_no_cells_of_tallies_that_are_gone() {
        for _ in 0..100 {
            Tally::default().add(0, 1);
        }
        let kept = Tally::default();
        kept.add(0, 1);
        // Every dropped tally's entry went when the next one registered.
        assert_eq!(MINE.with(|m| m.borrow().len()), 1);
        assert_eq!(kept.get(0), 1);
    }
}

//! A monotonic clock cheap enough to read several times per operation.
//!
//! An 8-byte all-reduce between two local ranks takes under a microsecond,
//! and reads the clock about seven times on each rank: the op's issue time
//! (its duration metric), the waiter's spin limits, and the shared-memory
//! transport's poll leases, which a sender compares with the time before it
//! decides whether to wake the receiver's thread. `clock_gettime`
//! (`CLOCK_MONOTONIC`, vDSO) costs 17 ns a call on this project's VM; the
//! CPU's time-stamp counter read directly (`rdtsc`) 8 ns. Where the
//! counter is fit to be a clock, [`ticks`] reads it; elsewhere it reads
//! `CLOCK_MONOTONIC` in nanoseconds, and a tick is a nanosecond.
//!
//! **When the counter is used** ([`tsc_fit`]): on x86-64, where the CPU
//! says its counter runs at a constant rate in every power state
//! (`constant_tsc` and `nonstop_tsc` in `/proc/cpuinfo`) and the kernel
//! keeps its own monotonic clock on it (`current_clocksource` is `tsc`,
//! which the kernel only keeps after checking that every CPU's counter
//! agrees). Then a tick value read by one process means the same instant in
//! every process of the host, which is what a poll lease written into
//! shared memory by one rank and read by another needs: both sides decide
//! alike, from the same two files. (A process that cannot read them, in a
//! container without sysfs say, decides otherwise: every rank publishes its
//! [`Source::kind`], and the runtime keeps same-host ranks whose kinds
//! differ off shared memory.)
//!
//! **Rate.** A tick's length is calibrated once per process against
//! `CLOCK_MONOTONIC` over about 2 ms (a sleep), at the first call that
//! needs it ([`to_duration`], [`to_ticks`], [`source`]: the runtime calls
//! [`source`] when it creates a communicator, so no op waits for it); an
//! error of some parts per million only scales durations (a lease's
//! length, a metric), never whether two readings are in order. Readings
//! themselves ([`ticks`]) need no calibration.
//!
//! ```
//! use std::time::Duration;
//! use zccl_transports::clock;
//! let t0 = clock::ticks();
//! std::thread::sleep(Duration::from_millis(5));
//! let waited = clock::since(t0);
//! assert!(waited >= Duration::from_millis(4), "{waited:?}");
//! assert!(clock::to_ticks(Duration::from_millis(1)) > 0);
//! ```

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What [`ticks`] counts.
///
/// ```
/// use zccl_transports::clock::{self, Source};
/// match clock::source() {
///     Source::Tsc { hz } => assert!(hz > 1_000_000),
///     Source::Monotonic => {}
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The CPU's time-stamp counter, `hz` ticks a second (calibrated).
    Tsc {
        /// Ticks per second.
        hz: u64,
    },
    /// `CLOCK_MONOTONIC`, in nanoseconds.
    Monotonic,
}

impl Source {
    /// What the ticks count, as a word: `tsc` or `monotonic`. Ranks that
    /// share memory must say the same (their poll leases are written by
    /// one and read by the other).
    ///
    /// ```
    /// use zccl_transports::clock::Source;
    /// assert_eq!(Source::Tsc { hz: 2_600_000_000 }.kind(), "tsc");
    /// assert_eq!(Source::Monotonic.kind(), "monotonic");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Tsc { .. } => "tsc",
            Source::Monotonic => "monotonic",
        }
    }
}

/// Whether the time-stamp counter is read, decided once per process.
static TSC: OnceLock<bool> = OnceLock::new();

/// The calibrated rate: nanoseconds per tick and ticks per nanosecond, as
/// 32.32 fixed point.
static SCALE: OnceLock<Scale> = OnceLock::new();

#[derive(Clone, Copy, Debug)]
struct Scale {
    ns_per_tick: u64,
    ticks_per_ns: u64,
    hz: u64,
    /// [`ANCHOR_FOR`] in ticks.
    anchor_ticks: u64,
}

impl Scale {
    /// The scale of a clock of `hz` ticks a second.
    fn of_hz(hz: u64) -> Scale {
        let hz = hz.max(1);
        let mut s = Scale {
            ns_per_tick: u64::try_from((1_000_000_000u128 << 32) / u128::from(hz))
                .unwrap_or(u64::MAX),
            ticks_per_ns: u64::try_from((u128::from(hz) << 32) / 1_000_000_000).unwrap_or(u64::MAX),
            hz,
            anchor_ticks: 0,
        };
        s.anchor_ticks = s.to_ticks(ANCHOR_FOR);
        s
    }

    fn to_ns(self, t: u64) -> u64 {
        let ns = (u128::from(t) * u128::from(self.ns_per_tick)) >> 32;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    fn to_duration(self, t: u64) -> Duration {
        Duration::from_nanos(self.to_ns(t))
    }

    fn to_ticks(self, d: Duration) -> u64 {
        let t = d.as_nanos().saturating_mul(u128::from(self.ticks_per_ns)) >> 32;
        u64::try_from(t).unwrap_or(u64::MAX)
    }
}

/// Whether a CPU with these `/proc/cpuinfo` flags, under a kernel whose
/// `current_clocksource` is `clocksource`, has a time-stamp counter fit to be
/// this host's clock (see the module's notes). Pure.
///
/// ```
/// use zccl_transports::clock::tsc_fit;
/// assert!(tsc_fit("tsc\n", "fpu tsc constant_tsc nonstop_tsc sse2"));
/// assert!(!tsc_fit("kvm-clock\n", "fpu tsc constant_tsc nonstop_tsc"));
/// assert!(!tsc_fit("tsc", "fpu tsc constant_tsc"));
/// ```
pub fn tsc_fit(clocksource: &str, flags: &str) -> bool {
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    cfg!(target_arch = "x86_64")
        && clocksource.trim() == "tsc"
        && has("constant_tsc")
        && has("nonstop_tsc")
}

/// Reads this host's answer to [`tsc_fit`].
fn tsc_fit_here() -> bool {
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    tsc_fit(&source, flags)
}

/// `CLOCK_MONOTONIC` in nanoseconds.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always
    // exists (vDSO, no system call).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The time-stamp counter.
#[inline]
fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `rdtsc` exists on every x86-64 CPU and only reads the
        // counter.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        monotonic_ns()
    }
}

/// Now, in ticks: the time-stamp counter where it is fit to be a clock,
/// else `CLOCK_MONOTONIC` nanoseconds. Monotonic; the same instant in
/// every process of the host.
///
/// ```
/// let a = zccl_transports::clock::ticks();
/// let b = zccl_transports::clock::ticks();
/// assert!(b >= a);
/// ```
#[inline]
pub fn ticks() -> u64 {
    if *TSC.get_or_init(tsc_fit_here) {
        tsc()
    } else {
        monotonic_ns()
    }
}

/// The counter's rate against `CLOCK_MONOTONIC`, over about 2 ms: the
/// best of three pairs of readings at each end (the pair read closest
/// together).
fn calibrate() -> u64 {
    let pair = || {
        (0..3)
            .map(|_| {
                let a = monotonic_ns();
                let t = tsc();
                let b = monotonic_ns();
                (b - a, a + (b - a) / 2, t)
            })
            .min()
            .map(|(_, ns, t)| (ns, t))
            .expect("three readings")
    };
    let (ns0, t0) = pair();
    std::thread::sleep(Duration::from_millis(2));
    let (ns1, t1) = pair();
    let hz = u128::from(t1.saturating_sub(t0)) * 1_000_000_000 / u128::from((ns1 - ns0).max(1));
    u64::try_from(hz).unwrap_or(u64::MAX)
}

fn scale() -> Scale {
    *SCALE.get_or_init(|| {
        if *TSC.get_or_init(tsc_fit_here) {
            Scale::of_hz(calibrate())
        } else {
            Scale::of_hz(1_000_000_000)
        }
    })
}

/// What [`ticks`] counts on this host (calibrating the counter's rate if
/// that was not done yet).
///
/// ```
/// let s = zccl_transports::clock::source();
/// assert_eq!(s, zccl_transports::clock::source());
/// ```
pub fn source() -> Source {
    let s = scale();
    if *TSC.get_or_init(tsc_fit_here) {
        Source::Tsc { hz: s.hz }
    } else {
        Source::Monotonic
    }
}

/// The duration of `t` ticks.
///
/// ```
/// use std::time::Duration;
/// use zccl_transports::clock;
/// let d = clock::to_duration(clock::to_ticks(Duration::from_millis(10)));
/// assert!(d.abs_diff(Duration::from_millis(10)) < Duration::from_micros(10), "{d:?}");
/// ```
pub fn to_duration(t: u64) -> Duration {
    scale().to_duration(t)
}

/// How many ticks `d` lasts (saturating).
///
/// ```
/// use std::time::Duration;
/// use zccl_transports::clock;
/// assert_eq!(clock::to_ticks(Duration::ZERO), 0);
/// assert_eq!(clock::to_ticks(Duration::MAX), u64::MAX);
/// ```
pub fn to_ticks(d: Duration) -> u64 {
    scale().to_ticks(d)
}

/// The nanoseconds since `t0` (a [`ticks`] reading); zero for one in the
/// future. (No `Duration`: making one divides by a billion, which a
/// caller that wants nanoseconds would undo.)
///
/// ```
/// let t0 = zccl_transports::clock::ticks();
/// assert!(zccl_transports::clock::since_ns(t0) < 1_000_000_000);
/// ```
#[inline]
pub fn since_ns(t0: u64) -> u64 {
    scale().to_ns(ticks().saturating_sub(t0))
}

/// How long a thread's pair of an `Instant` and a [`ticks`] reading serves
/// [`instant_of`] before it reads `Instant::now()` again.
const ANCHOR_FOR: Duration = Duration::from_millis(1);

thread_local! {
    /// This thread's last `Instant::now()` and the [`ticks`] reading just
    /// after it ([`instant_of`]).
    static ANCHOR: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// The `Instant` of `t`, a [`ticks`] reading this thread made a moment
/// ago, without reading the `Instant` clock for every call: the thread's
/// last `Instant::now()` (read again once it is a millisecond old, or
/// for a reading older than it) plus the ticks since. Off from
/// `Instant::now()` by the rate's calibration error over at most a
/// millisecond (nanoseconds): for deadlines, not for measuring.
///
/// ```
/// use std::time::{Duration, Instant};
/// use zccl_transports::clock;
/// let before = Instant::now();
/// let i = clock::instant_of(clock::ticks());
/// let after = Instant::now();
/// assert!(i + Duration::from_micros(1) >= before && i <= after + Duration::from_micros(1));
/// ```
pub fn instant_of(t: u64) -> Instant {
    let s = scale();
    ANCHOR
        .try_with(|a| match a.get() {
            Some((i, t0)) if t >= t0 && t - t0 < s.anchor_ticks => {
                i + Duration::from_nanos(s.to_ns(t - t0))
            }
            _ => {
                let (i, t) = anchor();
                a.set(Some((i, t)));
                i
            }
        })
        .unwrap_or_else(|_| Instant::now())
}

/// A fresh pair of an `Instant::now()` and the [`ticks`] reading of the
/// same moment: the reading halfway between two taken around it, the pair
/// of three whose two readings lie closest together (a thread preempted
/// between the two clocks would otherwise put every instant derived from
/// the pair off by the preemption). Fresh, not the caller's reading: a
/// stale one would put them off by its age.
fn anchor() -> (Instant, u64) {
    (0..3)
        .map(|_| {
            let a = ticks();
            let i = Instant::now();
            let b = ticks();
            (b.saturating_sub(a), i, a + b.saturating_sub(a) / 2)
        })
        .min_by_key(|p| p.0)
        .map(|(_, i, t)| (i, t))
        .expect("three pairs")
}

/// The time since `t0` (a [`ticks`] reading); zero for one in the future.
///
/// ```
/// let t0 = zccl_transports::clock::ticks();
/// assert!(zccl_transports::clock::since(t0) < std::time::Duration::from_secs(1));
/// ```
#[inline]
pub fn since(t0: u64) -> Duration {
    to_duration(ticks().saturating_sub(t0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_is_used_only_where_the_kernel_keeps_time_on_it() {
        let fit = "fpu vme tsc msr constant_tsc rep_good nopl nonstop_tsc cpuid";
        assert_eq!(tsc_fit("tsc\n", fit), cfg!(target_arch = "x86_64"));
        // The kernel moved off the counter (it found CPUs disagreeing).
        assert!(!tsc_fit("hpet\n", fit));
        assert!(!tsc_fit("", fit));
        // A counter whose rate follows the CPU's frequency or stops in deep
        // sleep states; a flag that only starts like one.
        assert!(!tsc_fit("tsc", "fpu tsc nonstop_tsc"));
        assert!(!tsc_fit("tsc", "fpu tsc constant_tsc"));
        assert!(!tsc_fit("tsc", "constant_tsc_x nonstop_tsc"));
    }

    #[test]
    fn scales_convert_both_ways_and_saturate() {
        let ns = Scale::of_hz(1_000_000_000);
        assert_eq!(ns.to_duration(1_234_567), Duration::from_nanos(1_234_567));
        assert_eq!(ns.to_ticks(Duration::from_nanos(1_234_567)), 1_234_567);
        let ghz3 = Scale::of_hz(3_000_000_000);
        assert_eq!(ghz3.to_ticks(Duration::from_secs(2)), 6_000_000_000);
        let d = ghz3.to_duration(3_000_000_000);
        assert!(
            d.abs_diff(Duration::from_secs(1)) < Duration::from_nanos(2),
            "{d:?}"
        );
        assert_eq!(ghz3.to_ticks(Duration::MAX), u64::MAX);
        assert_eq!(
            Scale::of_hz(1).to_duration(u64::MAX),
            Duration::from_nanos(u64::MAX)
        );
    }

    #[test]
    fn instants_of_readings_stay_with_the_instant_clock() {
        source();
        let start = Instant::now();
        // Across several anchors (one a millisecond).
        while start.elapsed() < Duration::from_millis(5) {
            let before = Instant::now();
            let i = instant_of(ticks());
            let after = Instant::now();
            // The rate's calibration error over at most a millisecond (and
            // a pair's own width), with room for a loaded machine; a wrong
            // unit or a stale anchor is off by far more.
            let slack = Duration::from_micros(50);
            assert!(
                i + slack >= before && i <= after + slack,
                "{i:?} not in {before:?}..{after:?}"
            );
        }
        // A reading older than the anchor gets a fresh anchor, not a time
        // before it.
        let old = ticks();
        std::thread::sleep(Duration::from_millis(2));
        instant_of(ticks());
        let before = Instant::now();
        assert!(instant_of(old) >= before);
    }

    #[test]
    fn a_sleep_measures_about_its_length() {
        // Calibrated first: the calibration's own sleep is not measured.
        source();
        // Each end read on both clocks, the std clock around ours, so that a
        // preemption between two reads cannot pass for an error of ours.
        let w0 = Instant::now();
        let t0 = ticks();
        let w1 = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let w2 = Instant::now();
        let ours = since(t0);
        let w3 = Instant::now();
        let (least, most) = (w2 - w1, w3 - w0);
        // Calibrated over 2 ms: well within 1 % of the std clock here.
        assert!(
            ours + least / 100 >= least && ours <= most + most / 100,
            "{ours:?} against {least:?}..{most:?}"
        );
    }
}

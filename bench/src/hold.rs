//! `--hold SECS`: after the sweep, every rank keeps its process, and so its
//! `/metrics` endpoint (`ZCCL_METRICS_ADDR`), alive, so that Prometheus or
//! `curl` can scrape a finished run whose counters no longer move.
//!
//! * Each rank finishes the sweep, writes its files, closes its
//!   communicator, then waits up to SECS seconds. Rank 0 first prints
//!   `# Holding for SECS s ...` after the footer, so a script that reads the
//!   table knows the counters are final from that line on.
//! * **SIGTERM or SIGINT ends the hold early**, and the rank exits 0. The
//!   `-N` launcher forwards a SIGTERM/SIGINT it receives to its ranks (only
//!   when `--hold` is given), so `kill <launcher>` or Ctrl-C stops the whole
//!   run cleanly. A signal that arrives before the hold still ends a rank as
//!   usual (the default action: the run fails).
//!
//! Signals were chosen over a stop file or stdin because the launcher owns
//! every rank's stdin (it is `/dev/null`) and a file needs cleaning up; a
//! signal is what process supervisors already send.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Installs SIGTERM and SIGINT handlers that only record the signal (see
/// [`stop_requested`]); the process no longer dies of them.
pub fn install_stop_signals() -> std::io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores an
        // atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Whether SIGTERM or SIGINT arrived since [`install_stop_signals`]
/// (always `false` without it).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Waits `secs` seconds, or less when `stop()` becomes true (checked every
/// 20 ms). Returns whether it was stopped early.
///
/// ```
/// use std::time::{Duration, Instant};
/// let t = Instant::now();
/// assert!(!zccl_bench::hold::hold(0.05, || false));
/// assert!(t.elapsed() >= Duration::from_millis(50));
/// assert!(zccl_bench::hold::hold(60.0, || true));
/// ```
pub fn hold(secs: f64, stop: impl Fn() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
    loop {
        if stop() {
            return true;
        }
        let now = Instant::now();
        if now >= end {
            return false;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

/// The line rank 0 prints before holding.
///
/// ```
/// assert_eq!(
///     zccl_bench::hold::banner(30.0),
///     "# Holding for 30 s (metrics endpoints stay up; SIGTERM or SIGINT ends it)\n"
/// );
/// ```
pub fn banner(secs: f64) -> String {
    format!("# Holding for {secs} s (metrics endpoints stay up; SIGTERM or SIGINT ends it)\n")
}

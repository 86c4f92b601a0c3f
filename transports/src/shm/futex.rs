//! Waiting and waking on a 32-bit word of a shared segment (`futex(2)`,
//! process-shared: not `FUTEX_PRIVATE_FLAG`, so it works across the two
//! processes of a segment).

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `word` holds `expected`, for at most `timeout`; returns at
/// once when it holds something else. Spurious returns are possible: the
/// caller rechecks its condition.
pub(super) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 in a mapping that outlives the
    // call; FUTEX_WAIT (not _PRIVATE) works across processes on MAP_SHARED.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every thread (of any process) sleeping on `word`.
pub(super) fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    #[test]
    fn a_changed_word_does_not_sleep_and_an_unchanged_one_times_out() {
        let w = AtomicU32::new(5);
        let t = Instant::now();
        futex_wait(&w, 4, Duration::from_secs(10));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "slept on a changed word"
        );
        let t = Instant::now();
        futex_wait(&w, 5, Duration::from_millis(30));
        assert!(
            t.elapsed() >= Duration::from_millis(20),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        // A wake with nobody waiting is harmless.
        futex_wake(&w);
    }

    #[test]
    fn a_wake_ends_a_wait() {
        let w = Arc::new(AtomicU32::new(0));
        let waiter = {
            let w = w.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                while w.load(Ordering::SeqCst) == 0 {
                    futex_wait(&w, 0, Duration::from_secs(30));
                }
                t.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        w.store(1, Ordering::SeqCst);
        futex_wake(&w);
        assert!(waiter.join().unwrap() < Duration::from_secs(10));
    }
}

//! The progress threads behind [`crate::nonblocking`]: a process-wide pool
//! of reusable threads, so that starting a non-blocking operation does not
//! create an OS thread each time, and a caller that waits on an operation
//! nobody has picked up yet runs it itself.
//!
//! * A job goes to an idle pool thread if there is one (a condition-variable
//!   wake-up), else to a new thread that joins the pool when the job is
//!   done. Jobs never queue behind a busy thread: operations in flight at
//!   once (on different channels) all progress, as with a thread each.
//! * A pool thread that stays idle for [`IDLE_EXIT`] exits.
//! * [`Job::run_here`] lets the waiting caller take a job that is still
//!   queued and run it on its own thread (no hand-off at all); the pool
//!   thread that later finds the entry empty skips it.
//!
//! ```
//! use std::sync::mpsc;
//! let (tx, rx) = mpsc::channel();
//! let job = zccl_primitives::progress::submit("example", Box::new(move || tx.send(7).unwrap())).unwrap();
//! job.run_here(); // runs it now unless a pool thread already took it
//! assert_eq!(rx.recv().unwrap(), 7);
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// How long a pool thread waits for work before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(5);

type Work = Box<dyn FnOnce() + Send + 'static>;

/// A submitted job: run by a pool thread or, if still queued, by
/// [`Job::run_here`].
///
/// ```
/// let job = zccl_primitives::progress::submit("noop", Box::new(|| {})).unwrap();
/// job.run_here();
/// ```
#[derive(Clone)]
pub struct Job(Arc<Mutex<Option<Work>>>);

impl Job {
    /// Takes the job if no thread started it yet and runs it on the calling
    /// thread; returns whether it ran here.
    ///
    /// ```
    /// let job = zccl_primitives::progress::submit("noop", Box::new(|| {})).unwrap();
    /// let _ran_here: bool = job.run_here();
    /// assert!(!job.run_here()); // taken by now, here or by the pool
    /// ```
    pub fn run_here(&self) -> bool {
        let w = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        match w {
            Some(w) => {
                w();
                true
            }
            None => false,
        }
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Pool threads waiting for work.
    idle: usize,
}

#[derive(Default)]
struct Pool {
    state: Mutex<State>,
    cv: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

/// Queues `work` for a pool thread (starting one named `zccl-<name>` if none
/// is idle) and returns its [`Job`]. Fails only if a needed thread cannot be
/// started; the work is then dropped, not queued.
///
/// ```
/// let (tx, rx) = std::sync::mpsc::channel();
/// let _job = zccl_primitives::progress::submit("hello", Box::new(move || tx.send("hi").unwrap())).unwrap();
/// assert_eq!(rx.recv().unwrap(), "hi"); // a pool thread ran it
/// ```
pub fn submit(name: &str, work: Work) -> std::io::Result<Job> {
    let job = Job(Arc::new(Mutex::new(Some(work))));
    let p = pool();
    let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
    st.queue.push_back(job.clone());
    if st.idle >= st.queue.len() {
        drop(st);
        p.cv.notify_one();
        return Ok(job);
    }
    drop(st);
    let spawned = std::thread::Builder::new()
        .name(format!("zccl-{name}"))
        .spawn(worker);
    match spawned {
        Ok(_) => Ok(job),
        Err(e) => {
            let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
            st.queue.retain(|j| !Arc::ptr_eq(&j.0, &job.0));
            Err(e)
        }
    }
}

fn worker() {
    let p = pool();
    let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(job) = st.queue.pop_front() {
            drop(st);
            job.run_here();
            st = p.state.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        st.idle += 1;
        let (g, t) =
            p.cv.wait_timeout(st, IDLE_EXIT)
                .unwrap_or_else(|e| e.into_inner());
        st = g;
        st.idle -= 1;
        if t.timed_out() && st.queue.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::mpsc;

    #[test]
    fn concurrent_jobs_all_progress() {
        // Jobs that wait for each other: with a queue behind one thread
        // this would deadlock.
        let n = 6;
        let b = Arc::new(Barrier::new(n));
        let (tx, rx) = mpsc::channel();
        let jobs: Vec<Job> = (0..n)
            .map(|i| {
                let (b, tx) = (b.clone(), tx.clone());
                submit(
                    "t",
                    Box::new(move || {
                        b.wait();
                        tx.send(i).unwrap();
                    }),
                )
                .unwrap()
            })
            .collect();
        let mut got: Vec<usize> = (0..n).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
        assert!(jobs.iter().all(|j| !j.run_here()));
    }

    #[test]
    fn a_job_runs_once() {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..200 {
            let c = count.clone();
            let j = submit(
                "once",
                Box::new(move || {
                    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }),
            )
            .unwrap();
            j.run_here();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count.load(std::sync::atomic::Ordering::SeqCst) < 200 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 200);
    }
}

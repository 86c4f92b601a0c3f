//! Non-blocking operations: one mechanism behind every `i*` function of this
//! crate ([`iall_reduce`](crate::collectives::iall_reduce),
//! [`iall_to_all_v`](crate::alltoall::iall_to_all_v),
//! [`iall_scan_diag`](crate::scan::iall_scan_diag), …).
//!
//! [`start`] moves an owned buffer and a shared handle to the fabric
//! (`Arc<F>`) onto a **progress thread** that runs the operation's blocking
//! schedule, and returns an [`OpHandle`] at once. The threads come from a
//! pool ([`crate::progress`]): an idle one is reused, none is created per
//! operation, and a caller that waits before any thread picked the
//! operation up runs it itself. The caller computes
//! meanwhile and collects the result with [`OpHandle::wait`] (or polls
//! [`OpHandle::test`] / [`OpHandle::wait_until`]). The schedule is exactly the
//! blocking one, so results are bit-identical to the blocking call.
//!
//! # Rules
//!
//! * **One in-flight operation per channel.** An operation owns its channel
//!   from `start` until its handle is waited (matching is FIFO per peer and
//!   channel, so two operations interleaving on one channel would steal each
//!   other's messages). Operations on different channels may be in flight at
//!   once, with each other and with blocking calls of the caller on yet other
//!   channels.
//! * Every rank starts the operations of one channel in the same order, with
//!   matching arguments, as for the blocking calls.
//! * Argument errors and transport errors are reported by `wait()`; the
//!   fabric's per-operation deadlines bound how long a wait can block.
//! * A panic of the operation (a bug) is re-raised by `wait()` on the caller's
//!   thread.
//! * Dropping a pending handle does not cancel the operation: it runs to
//!   completion (or to its deadline) on its progress thread and its result is
//!   lost; its channel stays busy until then. Wait every handle.
//!
//! ```
//! use std::sync::Arc;
//! use zccl_primitives::{Fabric, nonblocking::start, sim::run_ranks};
//! let out = run_ranks(2, |f| {
//!     let peer = 1 - f.rank();
//!     // Any schedule can be made non-blocking; here a ping-pong on channel 4.
//!     let h = start(Arc::new(f.clone()), "exchange", move |f| {
//!         let s = f.isend(peer, 4, 0, vec![f.rank() as u8])?;
//!         let got = f.irecv(peer, 4, 0, 1)?.wait()?;
//!         s.wait()?;
//!         Ok(got[0])
//!     });
//!     let local = 40 + f.rank(); // the caller's compute, while the op runs
//!     (local, h.wait().unwrap())
//! });
//! assert_eq!(out, vec![(40, 1), (41, 0)]);
//! ```

use std::any::Any;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::fabric::Fabric;

/// A pending non-blocking operation; its result is a `T`.
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{collectives::iall_reduce, reduce::ReduceOp, sim::run_ranks};
/// let out = run_ranks(3, |f| {
///     let mut h = iall_reduce(Arc::new(f.clone()), 0, vec![1u8; 4], ReduceOp::Sum);
///     let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
///     assert!(h.wait_until(deadline)); // completed before the deadline
///     assert!(h.test());
///     h.wait().unwrap()
/// });
/// assert!(out.iter().all(|v| v == &[3u8; 4]));
/// ```
#[must_use = "an operation's result and errors are only seen through wait()"]
pub struct OpHandle<T> {
    what: String,
    state: State<T>,
}

/// What the operation's body ended with: its result, or its panic.
type Ended<T> = std::result::Result<Result<T>, Box<dyn Any + Send>>;

enum State<T> {
    Running(Receiver<Ended<T>>, crate::progress::Job),
    /// The result arrived (taken from the channel by `test`/`wait_until`).
    Done(Result<T>),
    /// The operation panicked (re-raised by `wait`).
    Panicked(Option<Box<dyn Any + Send>>),
    /// The progress thread could not be started.
    NotStarted(Error),
}

impl<T> State<T> {
    fn ended(e: Option<Ended<T>>) -> Self {
        match e {
            Some(Ok(r)) => State::Done(r),
            Some(Err(p)) => State::Panicked(Some(p)),
            None => State::Panicked(None),
        }
    }
}

impl<T> std::fmt::Debug for OpHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self.state {
            State::Running(..) => "running",
            State::Done(_) => "done",
            State::Panicked(_) => "panicked",
            State::NotStarted(_) => "not started",
        };
        write!(f, "OpHandle({}: {s})", self.what)
    }
}

/// Runs `body` on a new progress thread with the fabric and returns its
/// handle at once. `name` names the operation in errors and in the thread's
/// name. This is the mechanism behind every `i*` operation of the crate; use
/// it to make any schedule (for example one with an explicit algorithm)
/// non-blocking. See the [module documentation](self) for the rules.
///
/// ```
/// use std::sync::Arc;
/// use zccl_primitives::{collectives::all_reduce_with, nonblocking::start, reduce::ReduceOp,
///     schedule::algo::Algo, sim::run_ranks};
/// let out = run_ranks(4, |f| {
///     let mut buf = vec![2i64; 3];
///     let h = start(Arc::new(f.clone()), "all_reduce(tree)", move |f| {
///         all_reduce_with(f, 1, &mut buf, ReduceOp::Prod, Algo::Tree)?;
///         Ok(buf)
///     });
///     h.wait().unwrap()
/// });
/// assert!(out.iter().all(|v| v == &[16; 3]));
/// ```
pub fn start<F, T, B>(fabric: Arc<F>, name: &str, body: B) -> OpHandle<T>
where
    F: Fabric + ?Sized + 'static,
    T: Send + 'static,
    B: FnOnce(&F) -> Result<T> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let what = format!("{name} on rank {}", fabric.rank());
    let submitted = crate::progress::submit(
        name,
        Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&*fabric)));
            let _ = tx.send(r);
        }),
    );
    match submitted {
        Ok(job) => OpHandle {
            what,
            state: State::Running(rx, job),
        },
        Err(e) => OpHandle {
            state: State::NotStarted(Error::Progress(format!(
                "{what}: could not start the progress thread: {e}"
            ))),
            what,
        },
    }
}

impl<T> OpHandle<T> {
    /// An already completed operation with result `r` (for callers that
    /// choose at run time between a real operation and a trivial one).
    ///
    /// ```
    /// let h = zccl_primitives::nonblocking::OpHandle::ready(Ok(7));
    /// assert_eq!(h.wait().unwrap(), 7);
    /// ```
    pub fn ready(r: Result<T>) -> Self {
        Self {
            what: "ready".into(),
            state: State::Done(r),
        }
    }

    /// Non-blocking: whether the operation has finished (successfully or
    /// not). Once it returns `true`, [`wait`](Self::wait) returns at once.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use zccl_primitives::{collectives::ibarrier, sim::run_ranks};
    /// run_ranks(2, |f| {
    ///     let mut h = ibarrier(Arc::new(f.clone()), 0);
    ///     while !h.test() {
    ///         std::thread::yield_now(); // or: compute a bit more
    ///     }
    ///     h.wait().unwrap();
    /// });
    /// ```
    pub fn test(&mut self) -> bool {
        match &self.state {
            State::Running(rx, _) => match rx.try_recv() {
                Ok(r) => {
                    self.state = State::ended(Some(r));
                    true
                }
                Err(TryRecvError::Empty) => false,
                Err(TryRecvError::Disconnected) => {
                    self.state = State::ended(None);
                    true
                }
            },
            _ => true,
        }
    }

    /// Blocks until the operation finished or `deadline` passed; returns
    /// whether it finished. The operation is not affected by the deadline
    /// (it keeps its own, the fabric's): call `wait` or `wait_until` again.
    ///
    /// ```
    /// use std::{sync::Arc, time::{Duration, Instant}};
    /// use zccl_primitives::{collectives::ibarrier, sim::run_ranks};
    /// run_ranks(3, |f| {
    ///     let mut h = ibarrier(Arc::new(f.clone()), 2);
    ///     assert!(h.wait_until(Instant::now() + Duration::from_secs(20)));
    ///     h.wait().unwrap();
    /// });
    /// ```
    pub fn wait_until(&mut self, deadline: Instant) -> bool {
        let State::Running(rx, _) = &self.state else {
            return true;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => {
                self.state = State::ended(Some(r));
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                self.state = State::ended(None);
                true
            }
        }
    }

    /// Blocks until the operation finished and returns its result (or its
    /// first error). Bounded by the fabric's per-operation deadlines. If no
    /// progress thread has picked the operation up yet, it runs on the
    /// calling thread.
    ///
    /// # Panics
    /// Re-raises a panic of the operation's progress thread.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use zccl_primitives::{alltoall::iall_to_all, sim::run_ranks};
    /// let errs = run_ranks(2, |f| {
    ///     // 3 elements do not split over 2 ranks: reported by wait().
    ///     iall_to_all(Arc::new(f.clone()), 0, vec![1u8, 2, 3]).wait().unwrap_err().to_string()
    /// });
    /// assert!(errs[0].contains("do not split evenly"), "{}", errs[0]);
    /// ```
    pub fn wait(mut self) -> Result<T> {
        let state = std::mem::replace(&mut self.state, State::Panicked(None));
        let state = match state {
            State::Running(rx, job) => {
                job.run_here();
                State::ended(rx.recv().ok())
            }
            s => s,
        };
        match state {
            State::Done(r) => r,
            State::NotStarted(e) => Err(e),
            State::Panicked(Some(p)) => std::panic::resume_unwind(p),
            State::Panicked(None) | State::Running(..) => {
                panic!("{}: progress thread ended without a result", self.what)
            }
        }
    }
}

//! The completion slot of one op: where the progress engine stores the op's
//! outcome and the op's handle ([`crate::handle`]) waits for it.
//!
//! It sits below both: the engine completes slots without knowing handles,
//! and handles wait on slots (spinning on the engine first).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{OpDesc, Result};
use zccl_transports::metrics::OpSeries;

/// What the engine produces for one op: received bytes for a receive.
pub(crate) type Outcome = Result<Option<Bytes>>;

/// One op as the engine and its handle share it: what the op is (its
/// descriptor, deadline and timeout, fixed at issue) and the completion
/// slot where the engine stores its outcome. Everything an op carries
/// lives here once, in the op's one allocation: the handle, the issue's
/// spec and the engine's record each hold only the `Arc` (an op's structs
/// are moved at every step of issuing and completing it).
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    /// Set once the outcome is in (it stays in, or taken, from then on):
    /// what a spinning waiter reads, without the lock.
    done: AtomicBool,
    cv: Condvar,
    /// The op.
    pub(crate) desc: OpDesc,
    /// When the op was issued, a [`zccl_transports::clock`] reading (what
    /// the metrics time it from: a cheaper clock than `Instant`'s, read
    /// again when the op completes).
    issued: u64,
    /// When the op fails with [`crate::Error::Timeout`]: its issue time
    /// plus `timeout`.
    pub(crate) deadline: Instant,
    /// The op's timeout (the channel's, when it was issued).
    pub(crate) timeout: Duration,
    /// The metrics' series a successful completion counts in
    /// (`zccl_op_bytes_total`, `zccl_op_duration_seconds`: the op's bytes,
    /// timed from `issued`).
    metric: Option<&'static OpSeries>,
}

/// An outcome as a slot keeps it: the error boxed, so that the slot (and
/// every move of it) stays small; errors are rare.
type Kept = std::result::Result<Option<Bytes>, Box<crate::error::Error>>;

fn unbox(k: Kept) -> Outcome {
    k.map_err(|e| *e)
}

#[derive(Default)]
struct SlotState {
    result: Option<Kept>,
    taken: bool,
    waker: Option<Waker>,
    /// A thread sleeps on the condition variable (a spinning waiter, the
    /// common case for short ops, needs no wake-up system call).
    sleeping: bool,
}

impl Slot {
    /// The slot of op `desc`, `issued` at that [`zccl_transports::clock`]
    /// reading with `timeout` (its deadline: the issue time plus the
    /// timeout, which the caller has at hand), its successful completion
    /// counted in the metrics as `metric` ([`crate::metrics::Metrics::op`];
    /// `None`: not counted).
    pub(crate) fn new(
        desc: OpDesc,
        issued: u64,
        (deadline, timeout): (Instant, Duration),
        metric: Option<&'static OpSeries>,
    ) -> Self {
        Slot {
            state: Mutex::default(),
            done: AtomicBool::new(false),
            cv: Condvar::new(),
            desc,
            issued,
            deadline,
            timeout,
            metric,
        }
    }

    /// Stores the outcome (first one wins) and wakes waiters.
    pub(crate) fn complete(&self, o: Outcome) {
        let mut s = self.state.lock().expect("slot");
        if s.result.is_some() || s.taken {
            return;
        }
        if let (Ok(_), Some(op)) = (&o, self.metric) {
            op.done_ns(
                self.desc.bytes,
                zccl_transports::clock::since_ns(self.issued),
            );
        }
        s.result = Some(o.map_err(Box::new));
        self.done.store(true, Ordering::Release);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        if s.sleeping {
            self.cv.notify_all();
        }
    }

    /// Whether the outcome is in (or already taken).
    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Sleeps until the outcome is in and takes it, or gives up at `until`
    /// (`None`).
    pub(crate) fn wait_until(&self, until: Instant) -> Option<Outcome> {
        let mut s = self.state.lock().expect("slot");
        loop {
            if let Some(r) = s.result.take() {
                s.taken = true;
                return Some(unbox(r));
            }
            let now = Instant::now();
            if now >= until {
                return None;
            }
            s.sleeping = true;
            s = self.cv.wait_timeout(s, until - now).expect("slot").0;
            s.sleeping = false;
        }
    }

    /// Takes the outcome if it is in, else leaves `cx`'s waker for
    /// [`Slot::complete`].
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut s = self.state.lock().expect("slot");
        if let Some(r) = s.result.take() {
            s.taken = true;
            return Poll::Ready(unbox(r));
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

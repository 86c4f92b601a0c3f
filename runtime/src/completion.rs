//! The completion slot of one op: where the progress engine stores the op's
//! outcome and the op's handle ([`crate::handle`]) waits for it.
//!
//! It sits below both: the engine completes slots without knowing handles,
//! and handles wait on slots (spinning on the engine first).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;

use crate::error::Result;
use zccl_transports::metrics::OpSeries;

/// What the engine produces for one op: received bytes for a receive.
pub(crate) type Outcome = Result<Option<Bytes>>;

/// Completion slot shared by the engine and a handle.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    /// Set once the outcome is in (it stays in, or taken, from then on):
    /// what a spinning waiter reads, without the lock.
    done: AtomicBool,
    cv: Condvar,
    /// What a successful completion adds to the metrics: the op's series,
    /// bytes, and when the op was issued.
    metric: Option<(&'static OpSeries, u64, Instant)>,
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
    /// A slot whose successful completion is counted in the metrics as `op`
    /// ([`crate::metrics::Metrics::op`]) moving `bytes` (`zccl_op_bytes_total`, `zccl_op_duration_seconds`),
    /// timed from `issued` (the caller's clock reading, shared by the ops it
    /// issues at once).
    pub(crate) fn counted(op: &'static OpSeries, bytes: u64, issued: Instant) -> Self {
        Slot {
            metric: Some((op, bytes, issued)),
            ..Slot::default()
        }
    }

    /// Stores the outcome (first one wins) and wakes waiters.
    pub(crate) fn complete(&self, o: Outcome) {
        let mut s = self.state.lock().expect("slot");
        if s.result.is_some() || s.taken {
            return;
        }
        if let (Ok(_), Some((op, bytes, issued))) = (&o, self.metric) {
            op.done(bytes, issued.elapsed());
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

//! Operations in flight: the per-communicator executor that runs
//! collectives in issue order, and [`Work`], the handle Python waits on.
//!
//! A communicator's collectives share one channel, so they must run one at a
//! time and in the order the program issued them on every rank (torch's
//! process-group semantics, NCCL's stream order). A blocking call runs on
//! the caller's thread when nothing is queued (no thread hand-off on the
//! latency path); an `async_op` call is queued to the communicator's one
//! executor thread, and a blocking call issued behind queued ones waits its
//! turn there. Point-to-point operations do not queue: they are posted to
//! the runtime at once (sends never wait for the receiver), and their
//! [`Work`] holds the runtime's handles.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// What an operation ended with: nothing, or zccl's error message.
pub type Outcome = Result<(), String>;

/// One operation's result, set once.
#[derive(Default)]
pub struct Slot {
    done: Mutex<Option<Outcome>>,
    cv: Condvar,
}

impl Slot {
    pub fn set(&self, r: Outcome) {
        *self.done.lock().unwrap() = Some(r);
        self.cv.notify_all();
    }

    /// The outcome, waiting until `deadline` at most (`None` past it).
    fn wait(&self, deadline: Option<Instant>) -> Option<Outcome> {
        let mut g = self.done.lock().unwrap();
        loop {
            if let Some(r) = &*g {
                return Some(r.clone());
            }
            match deadline {
                None => g = self.cv.wait(g).unwrap(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    g = self.cv.wait_timeout(g, d - now).unwrap().0;
                }
            }
        }
    }

    fn peek(&self) -> Option<Outcome> {
        self.done.lock().unwrap().clone()
    }
}

pub(crate) type Job = Box<dyn FnOnce() -> Outcome + Send>;

/// Runs `f`, turning a panic into an error outcome (Python would otherwise
/// get a `PanicException`, which `except Exception` does not catch, or, on
/// the executor thread, no outcome at all and a `wait()` that never ends).
pub(crate) fn catch_panic(f: impl FnOnce() -> Outcome) -> Outcome {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        Err(format!(
            "zccl: internal error (panic: {msg}); the communicator is aborted"
        ))
    })
}

thread_local! {
    /// The executors whose job this thread is running (their `running`
    /// locks, by address): a callback of that job (ring_pass, token_ring,
    /// all_scan) that calls a collective of the same communicator would
    /// wait for itself.
    static RUNNING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `job` as executor `id`'s job on this thread (its lock held).
fn run_marked(id: usize, job: Job) -> Outcome {
    RUNNING.with(|r| r.borrow_mut().push(id));
    let r = catch_panic(job);
    RUNNING.with(|r| r.borrow_mut().retain(|&x| x != id));
    r
}

/// The executor thread's queue: jobs and where their outcome goes.
type Queue = Sender<(Job, Arc<Slot>)>;

/// Called with the error of a failed point-to-point operation.
pub type OnError = Arc<dyn Fn(&str) + Send + Sync>;

/// Runs a communicator's collectives one at a time, in issue order.
pub struct Executor {
    queue: Mutex<Option<Queue>>,
    /// Jobs queued and not finished.
    queued: Arc<AtomicUsize>,
    /// Held while a job runs, on whichever thread.
    running: Arc<Mutex<()>>,
    name: String,
}

impl Executor {
    pub fn new(name: String) -> Executor {
        Executor {
            queue: Mutex::new(None),
            queued: Arc::new(AtomicUsize::new(0)),
            running: Arc::new(Mutex::new(())),
            name,
        }
    }

    fn id(&self) -> usize {
        Arc::as_ptr(&self.running) as usize
    }

    /// Refuses a job issued from inside one of this executor's jobs (a
    /// Python callback of ring_pass, token_ring or all_scan calling a
    /// collective of the same communicator): it would wait for the job it
    /// runs in, forever.
    fn not_reentered(&self) -> Result<(), String> {
        if RUNNING.with(|r| r.borrow().contains(&self.id())) {
            return Err(
                "zccl: a collective of this communicator was called from inside a \
                        callback of one of its operations (ring_pass, token_ring, all_scan), \
                        which would wait for itself; call it after that operation returns, \
                        or on another communicator (split/new_group)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Runs `job` on the calling thread if nothing is queued, else behind
    /// the queued jobs; returns its outcome. Call without the GIL.
    pub fn run(&self, job: Job) -> Outcome {
        self.not_reentered()?;
        {
            let _g = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if self.queued.load(Ordering::Acquire) == 0 {
                return run_marked(self.id(), job);
            }
        }
        let slot = self.submit(job)?;
        slot.wait(None).expect("no deadline")
    }

    /// [`Executor::run`] for a job with a result.
    pub fn run_value<R, F>(&self, f: F) -> Result<R, String>
    where
        R: Send + 'static,
        F: FnOnce() -> Result<R, String> + Send + 'static,
    {
        let out = Arc::new(Mutex::new(None));
        let o2 = out.clone();
        self.run(Box::new(move || {
            *o2.lock().unwrap() = Some(f()?);
            Ok(())
        }))?;
        let v = out.lock().unwrap().take();
        Ok(v.expect("set by the job"))
    }

    /// Queues `job`; its outcome lands in the returned slot.
    pub fn submit(&self, job: Job) -> Result<Arc<Slot>, String> {
        self.not_reentered()?;
        let slot = Arc::new(Slot::default());
        let mut q = self.queue.lock().unwrap();
        if q.is_none() {
            let (tx, rx) = channel::<(Job, Arc<Slot>)>();
            let queued = self.queued.clone();
            let running = self.running.clone();
            let id = self.id();
            std::thread::Builder::new()
                .name(format!("zccl-py-{}", self.name))
                .spawn(move || {
                    for (job, slot) in rx {
                        let r = {
                            let _g = running.lock().unwrap_or_else(|e| e.into_inner());
                            let r = run_marked(id, job);
                            queued.fetch_sub(1, Ordering::AcqRel);
                            r
                        };
                        slot.set(r);
                    }
                })
                .map_err(|e| format!("zccl: cannot start the executor thread: {e}"))?;
            *q = Some(tx);
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if q.as_ref()
            .expect("started")
            .send((job, slot.clone()))
            .is_err()
        {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err("zccl: the executor thread is gone".into());
        }
        Ok(slot)
    }
}

/// A posted point-to-point operation.
pub enum P2p {
    Send(zccl_runtime::LentSendHandle),
    Recv(zccl_runtime::RecvIntoHandle),
}

impl P2p {
    fn test(&self) -> bool {
        match self {
            P2p::Send(h) => h.test(),
            P2p::Recv(h) => h.test(),
        }
    }

    fn wait(self) -> Result<(), zccl_runtime::Error> {
        match self {
            P2p::Send(h) => h.wait(),
            P2p::Recv(h) => h.wait(),
        }
    }
}

enum State {
    Done(Outcome),
    Queued(Arc<Slot>),
    /// Point-to-point handles, with a description of each for errors.
    Posted(Vec<(P2p, String)>),
}

/// A handle on an operation: `wait`, `is_completed`, `exception`. The
/// Python objects whose memory the operation uses are held until it is
/// done (or this handle is dropped, which waits for the memory first).
#[pyclass(module = "zccl._zccl")]
pub struct Work {
    state: Mutex<State>,
    /// Dropped after `state` (field order), so memory outlives the handles.
    keep: Mutex<Vec<Py<PyAny>>>,
    /// Called with the error of a failed operation (aborts the communicator).
    on_error: Option<OnError>,
}

impl Work {
    pub fn done(r: Outcome) -> Work {
        Work {
            state: Mutex::new(State::Done(r)),
            keep: Mutex::new(Vec::new()),
            on_error: None,
        }
    }

    /// A queued job's handle (the job itself holds the memory it uses).
    pub fn queued(slot: Arc<Slot>) -> Work {
        Work {
            state: Mutex::new(State::Queued(slot)),
            keep: Mutex::new(Vec::new()),
            on_error: None,
        }
    }

    pub fn posted(ops: Vec<(P2p, String)>, keep: Vec<Py<PyAny>>, on_error: OnError) -> Work {
        Work {
            state: Mutex::new(State::Posted(ops)),
            keep: Mutex::new(keep),
            on_error: Some(on_error),
        }
    }

    /// Waits without the GIL; `None` if `timeout` passed first.
    fn finish(&self, timeout: Option<Duration>) -> Option<Outcome> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.state.lock().unwrap();
        let r = match &mut *st {
            State::Done(r) => return Some(r.clone()),
            State::Queued(slot) => slot.wait(deadline)?,
            State::Posted(ops) => {
                if let Some(d) = deadline {
                    // The runtime's handles wait without a deadline of their
                    // own beyond the op's: poll them against ours.
                    while !ops.iter().all(|(o, _)| o.test()) {
                        if Instant::now() >= d {
                            return None;
                        }
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
                let mut first: Option<String> = None;
                for (op, what) in std::mem::take(ops) {
                    if let Err(e) = op.wait() {
                        first.get_or_insert_with(|| format!("{what}: {e}"));
                    }
                }
                if let (Some(e), Some(f)) = (&first, &self.on_error) {
                    f(e);
                }
                first.map_or(Ok(()), Err)
            }
        };
        *st = State::Done(r.clone());
        drop(st);
        Some(r)
    }

    /// The outcome if the operation is known to be done, without blocking:
    /// while another thread waits in [`Work::finish`] (holding the state),
    /// the answer is "not yet" rather than waiting with it, GIL held.
    fn peek(&self) -> Option<Outcome> {
        let st = match self.state.try_lock() {
            Ok(st) => st,
            Err(std::sync::TryLockError::WouldBlock) => return None,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        };
        match &*st {
            State::Done(r) => Some(r.clone()),
            State::Queued(slot) => slot.peek(),
            State::Posted(ops) => {
                if ops.iter().all(|(o, _)| o.test()) {
                    drop(st);
                    self.finish(None)
                } else {
                    None
                }
            }
        }
    }
}

#[pymethods]
impl Work {
    /// Blocks (without the GIL) until the operation completed; raises
    /// `ZcclError` with zccl's message if it failed, or `TimeoutError` if
    /// `timeout` (seconds) passed first. `timeout=None`, `0` or infinity
    /// waits for the operation's own deadline (the communicator's timeout);
    /// a negative or NaN `timeout` raises `ValueError`.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let t = match timeout {
            Some(s) if s.is_nan() || s < 0.0 => {
                return Err(PyValueError::new_err(format!(
                    "zccl: wait timeout must be a number of seconds >= 0 (0 or None: the \
                     operation's own deadline), got {s}"
                )));
            }
            Some(s) if s > 0.0 && s.is_finite() => Some(Duration::from_secs_f64(s.min(1e9))),
            _ => None,
        };
        let r = py.detach(|| self.finish(t));
        match r {
            None => Err(pyo3::exceptions::PyTimeoutError::new_err(format!(
                "zccl: operation not completed within {:.3} s",
                timeout.unwrap_or(0.0)
            ))),
            Some(Ok(())) => {
                self.release(py);
                Ok(true)
            }
            Some(Err(e)) => {
                self.release(py);
                Err(crate::ZcclError::new_err(e))
            }
        }
    }

    /// Whether the operation finished (successfully or not), without blocking.
    fn is_completed(&self) -> bool {
        self.peek().is_some()
    }

    /// Whether the operation finished successfully.
    fn is_success(&self) -> bool {
        matches!(self.peek(), Some(Ok(())))
    }

    /// The error message of a failed operation, `None` otherwise.
    fn exception(&self) -> Option<String> {
        match self.peek() {
            Some(Err(e)) => Some(e),
            _ => None,
        }
    }
}

impl Drop for Work {
    /// A receive dropped before it completed gives its buffer back: the
    /// message it matches (and counts as received) is discarded, while both
    /// sides report success. Usually a program that forgot to keep or wait
    /// its `irecv` handle: say so where zccl's warnings go.
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let State::Posted(ops) = st {
            for (op, what) in ops.iter() {
                if matches!(op, P2p::Recv(_)) && !op.test() {
                    tracing::warn!(
                        target: zccl_runtime::logging::P2P,
                        "{what}: its Work was dropped before the receive completed; the \
                         message it matches is discarded (keep the Work and wait() on it)"
                    );
                }
            }
        }
    }
}

impl Work {
    /// Drops the operations of a batch that failed to post (their handles
    /// take their memory back first), without the warning of a dropped
    /// receive: the batch's error is the report.
    pub fn abandon(self) {
        let ops = std::mem::replace(
            &mut *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            State::Done(Err("abandoned".into())),
        );
        drop(ops);
    }

    fn release(&self, _py: Python<'_>) {
        drop(std::mem::take(&mut *self.keep.lock().unwrap()));
    }
}

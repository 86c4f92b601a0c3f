//! `zccl._zccl.Comm`: a communicator and every operation on it, over caller
//! memory given as (address, bytes, dtype). The Python layer (`zccl/_core.py`)
//! turns tensors and arrays into those triples and keeps them alive.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use zccl_primitives::comm::Labelled;
use zccl_primitives::reduce::ReduceOp;
use zccl_primitives::schedule::scan::ScanDirection;
use zccl_primitives::token_ring::{TokenRingChannels, TokenRingKernel};
use zccl_primitives::{alltoall, collectives, ring, scan};
use zccl_runtime::label::OpLabel;
use zccl_runtime::{BootstrapRoot, Communicator, Config, DType, UniqueId};

use crate::ZcclError;
use crate::buf::{Dt, Span, reduce_op, with_elem};
use crate::work::{Executor, Outcome, P2p, Work};

/// Channel of the collectives (and All-Scan, ring pass).
const CH_COLL: u32 = 0;
/// TokenRing's Q and partial-result channels.
const CH_TR_Q: u32 = 1;
const CH_TR_OUT: u32 = 2;
/// Point-to-point tag `t` travels on channel `CH_P2P + t`: sends and
/// receives match per (peer, tag) in posting order, as in torch.
const CH_P2P: u32 = 16;
/// Largest point-to-point tag.
const MAX_TAG: u32 = u32::MAX - CH_P2P;

struct Shared {
    comm: Communicator,
    exec: Executor,
}

impl Shared {
    /// Aborts the communicator after a failed operation: its channels'
    /// sequence numbers no longer agree with the peers', and the peers learn
    /// at once that this rank gave up (instead of waiting out the timeout).
    fn fail(&self, e: &str) {
        self.comm.abort_because(e);
    }
}

fn rt_err(e: impl std::fmt::Display) -> PyErr {
    ZcclError::new_err(e.to_string())
}

fn secs(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(PyValueError::new_err(format!(
            "zccl: timeout must be a positive number of seconds below 1e9, got {s}"
        ))),
    }
}

fn config(timeout: Option<f64>) -> PyResult<Config> {
    let mut c = Config::from_env().map_err(rt_err)?;
    if let Some(t) = secs(timeout)? {
        c.timeout = t;
    }
    Ok(c)
}

/// The bootstrap root of a job: started on one rank, its `unique_id` handed
/// to every rank (torch's store does that for the backend). Keep it alive
/// until every rank joined.
#[pyclass(module = "zccl._zccl")]
pub struct Root {
    root: Mutex<Option<BootstrapRoot>>,
    id: UniqueId,
}

#[pymethods]
impl Root {
    /// Starts a root listening on `bind` (`host:port`, port 0 for any);
    /// `advertise` is the host other ranks reach it at (default: the bound
    /// address).
    #[new]
    #[pyo3(signature = (bind="127.0.0.1:0", advertise=None, timeout=None))]
    fn new(bind: &str, advertise: Option<&str>, timeout: Option<f64>) -> PyResult<Root> {
        let addr: SocketAddr = bind
            .to_socket_addrs()
            .map_err(|e| PyValueError::new_err(format!("zccl: bad root address {bind:?}: {e}")))?
            .next()
            .ok_or_else(|| PyValueError::new_err(format!("zccl: {bind:?} has no address")))?;
        let t = secs(timeout)?.unwrap_or(config(None)?.timeout);
        let secret = UniqueId::random_secret().map_err(rt_err)?;
        let root = BootstrapRoot::start(addr, secret, t).map_err(rt_err)?;
        let mut id = root.unique_id();
        if let Some(host) = advertise {
            let port = id.root().port();
            let a: SocketAddr = (host, port)
                .to_socket_addrs()
                .map_err(|e| PyValueError::new_err(format!("zccl: bad host {host:?}: {e}")))?
                .next()
                .ok_or_else(|| PyValueError::new_err(format!("zccl: {host:?} has no address")))?;
            id = UniqueId::new(a, id.secret());
        }
        Ok(Root {
            root: Mutex::new(Some(root)),
            id,
        })
    }

    /// The job's id (text), for `Comm.init` on every rank.
    #[getter]
    fn unique_id(&self) -> String {
        self.id.to_string()
    }

    /// Waits (without the GIL) for the root to finish serving the job.
    fn join(&self, py: Python<'_>) -> PyResult<()> {
        let r = self.root.lock().unwrap().take();
        match r {
            Some(r) => py.detach(|| r.join()).map_err(rt_err),
            None => Ok(()),
        }
    }
}

/// A communicator.
#[pyclass(module = "zccl._zccl")]
pub struct Comm {
    sh: Arc<Shared>,
}

impl Comm {
    fn wrap(comm: Communicator) -> Comm {
        let name = format!("r{}c{}", comm.rank(), comm.comm_id());
        Comm {
            sh: Arc::new(Shared {
                comm,
                exec: Executor::new(name),
            }),
        }
    }

    /// Runs a collective: now on this thread (blocking), or queued behind
    /// the others (`async_op`). `keep` holds the memory `body` uses until it
    /// finished.
    fn collective<B>(
        &self,
        py: Python<'_>,
        keep: Vec<Py<PyAny>>,
        async_op: bool,
        body: B,
    ) -> PyResult<Work>
    where
        B: FnOnce(&Communicator) -> Outcome + Send + 'static,
    {
        if async_op {
            let slot = self
                .sh
                .exec
                .submit(self.job(keep, body))
                .map_err(PyRuntimeError::new_err)?;
            Ok(Work::queued(slot))
        } else {
            Ok(Work::done(self.run_now(py, keep, body)))
        }
    }

    /// Runs a collective now on this thread (behind queued ones), without
    /// the GIL.
    fn run_now<B>(&self, py: Python<'_>, keep: Vec<Py<PyAny>>, body: B) -> Outcome
    where
        B: FnOnce(&Communicator) -> Outcome + Send + 'static,
    {
        let job = self.job(keep, body);
        py.detach(|| self.sh.exec.run(job))
    }

    /// `body` as the executor's job: a failure aborts the communicator, and
    /// `keep` goes when it finished.
    fn job<B>(&self, keep: Vec<Py<PyAny>>, body: B) -> crate::work::Job
    where
        B: FnOnce(&Communicator) -> Outcome + Send + 'static,
    {
        let sh = self.sh.clone();
        Box::new(move || {
            // A panic below (a bug, or input that slipped past the checks)
            // fails this op and aborts the communicator like any error, so
            // the other ranks hear of it instead of waiting out their
            // timeout, and no wait on this op hangs.
            // A communicator aborted or closed fails every later op, also
            // those that send nothing (a 1-rank communicator's collectives).
            if let Err(e) = sh.comm.ensure_live() {
                drop(keep);
                return Err(e.to_string());
            }
            let r = crate::work::catch_panic(|| body(&sh.comm));
            if let Err(e) = &r {
                sh.fail(e);
            }
            drop(keep);
            r
        })
    }

    fn p2p_channel(tag: u32) -> PyResult<u32> {
        if tag > MAX_TAG {
            return Err(PyValueError::new_err(format!(
                "zccl: tag {tag} is too large (at most {MAX_TAG})"
            )));
        }
        Ok(CH_P2P + tag)
    }

    fn check_peer(&self, peer: i64, what: &str) -> PyResult<u32> {
        let n = self.sh.comm.size();
        if peer < 0 || peer >= n as i64 {
            return Err(PyValueError::new_err(format!(
                "zccl: {what} rank {peer} is not in a group of {n} ranks"
            )));
        }
        Ok(peer as u32)
    }
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Maps a Python argument error to the outcome string.
fn arg(e: PyErr) -> String {
    e.to_string()
}

#[pymethods]
impl Comm {
    /// Joins the job `unique_id` (from `Root.unique_id`) as `rank` of `size`.
    /// Blocks (without the GIL) until every rank joined, or `timeout`.
    #[staticmethod]
    #[pyo3(signature = (unique_id, rank, size, timeout=None))]
    fn init(
        py: Python<'_>,
        unique_id: &str,
        rank: u32,
        size: u32,
        timeout: Option<f64>,
    ) -> PyResult<Comm> {
        let id: UniqueId = unique_id
            .parse()
            .map_err(|e| PyValueError::new_err(format!("zccl: bad unique id: {e}")))?;
        if size == 0 || rank >= size {
            return Err(PyValueError::new_err(format!(
                "zccl: rank {rank} is not in a world of {size}"
            )));
        }
        let c = config(timeout)?;
        let comm = py
            .detach(|| Communicator::init(&id, rank, size, c))
            .map_err(rt_err)?;
        Ok(Comm::wrap(comm))
    }

    /// Joins from the launcher's environment (torchrun, Slurm, Open MPI,
    /// `zccl run`, `ZCCL_*`).
    #[staticmethod]
    fn from_env(py: Python<'_>) -> PyResult<Comm> {
        let comm = py.detach(Communicator::from_env).map_err(rt_err)?;
        Ok(Comm::wrap(comm))
    }

    #[getter]
    fn rank(&self) -> u32 {
        self.sh.comm.rank()
    }

    #[getter]
    fn size(&self) -> u32 {
        self.sh.comm.size()
    }

    #[getter]
    fn local_rank(&self) -> u32 {
        self.sh.comm.local_rank()
    }

    #[getter]
    fn local_size(&self) -> u32 {
        self.sh.comm.local_size()
    }

    /// The per-operation timeout, in seconds.
    #[getter]
    fn timeout(&self) -> f64 {
        self.sh.comm.config().timeout.as_secs_f64()
    }

    /// `MPI_Comm_split`: ranks passing the same `color` form a new
    /// communicator ordered by `(key, rank)`; `color=None` joins none.
    #[pyo3(signature = (color, key=0))]
    fn split(&self, py: Python<'_>, color: Option<u32>, key: i32) -> PyResult<Option<Comm>> {
        let c = self.sh.comm.clone();
        let r = py
            .detach(|| {
                self.sh
                    .exec
                    .run_value(move || c.split(color, key).map_err(s))
            })
            .map_err(ZcclError::new_err)?;
        Ok(r.map(Comm::wrap))
    }

    /// Closes the connections now, in order: peers see a clean close, later
    /// operations fail. Dropping the last reference does the same.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.sh.comm.close());
    }

    /// Aborts: pending and future operations fail on this rank, and peers
    /// learn that it aborted (and `reason`, when given).
    #[pyo3(signature = (reason=None))]
    fn abort(&self, reason: Option<String>) {
        match reason {
            Some(r) => self.sh.comm.abort_because(&r),
            None => self.sh.comm.abort(),
        }
    }

    /// All-reduce of `nbytes` of `dtype` at `addr`, in place, on this
    /// thread and without a `Work`: the torch backend's path for small
    /// tensors, where a handle costs as much as the operation. Returns
    /// `None` when it succeeded, else the `ZcclError` it failed with, not
    /// raised, so that the caller can hand it to `Work.wait()` (bad
    /// arguments still raise). The caller keeps the memory alive meanwhile,
    /// as it does for any blocking call.
    ///
    /// ```python
    /// err = comm.all_reduce_now(t.data_ptr(), t.numel() * 4, "float32", "sum")
    /// assert err is None
    /// ```
    fn all_reduce_now(
        &self,
        py: Python<'_>,
        addr: usize,
        nbytes: usize,
        dtype: &str,
        op: &str,
    ) -> PyResult<Option<Py<PyAny>>> {
        let (dt, op, input) = all_reduce_args(addr, nbytes, dtype, op)?;
        let r = self.run_now(py, Vec::new(), move |c| {
            run_all_reduce(c, dt, op, input, None)
        });
        Ok(r.err()
            .map(|e| ZcclError::new_err(e).into_value(py).into_any()))
    }

    /// All-reduce of `n` bytes of `dtype` at `addr`, in place, or into
    /// `out` when `out` is non-zero.
    #[pyo3(signature = (addr, nbytes, dtype, op, out=0, keep=vec![], async_op=false))]
    #[allow(clippy::too_many_arguments)]
    fn all_reduce(
        &self,
        py: Python<'_>,
        addr: usize,
        nbytes: usize,
        dtype: &str,
        op: &str,
        out: usize,
        keep: Vec<Py<PyAny>>,
        async_op: bool,
    ) -> PyResult<Work> {
        let (dt, op, input) = all_reduce_args(addr, nbytes, dtype, op)?;
        let output = if out == 0 {
            None
        } else {
            let o = Span::new(out, nbytes, "all_reduce output")?.of(dt, "all_reduce output")?;
            if o.overlaps(&input) && o.addr != input.addr {
                return Err(PyValueError::new_err(
                    "zccl: all_reduce input and output overlap without being the same",
                ));
            }
            (o.addr != input.addr).then_some(o)
        };
        self.collective(py, keep, async_op, move |c| {
            run_all_reduce(c, dt, op, input, output)
        })
    }

    /// All-gather: `out` (`size × nbytes`) gets every rank's `nbytes` at `addr`.
    /// `of` names the operation the messages are stamped with when the
    /// gather carries another collective (`"all_reduce(max)"` for a
    /// reduction done by gathering), so that a peer running a plain
    /// all-gather, or another reduction, fails with a mismatch naming both.
    #[pyo3(signature = (addr, nbytes, out, out_nbytes, dtype=None, keep=vec![], async_op=false, of=None))]
    #[allow(clippy::too_many_arguments)]
    fn all_gather(
        &self,
        py: Python<'_>,
        addr: usize,
        nbytes: usize,
        out: usize,
        out_nbytes: usize,
        dtype: Option<&str>,
        keep: Vec<Py<PyAny>>,
        async_op: bool,
        of: Option<&str>,
    ) -> PyResult<Work> {
        let label = Dt::label(dtype);
        let op = match of {
            None => OpLabel::ALL_GATHER,
            Some(name) => OpLabel::from_name(name).ok_or_else(|| {
                PyValueError::new_err(format!("zccl: all_gather of={name:?} names no operation"))
            })?,
        };
        let n = self.sh.comm.size() as usize;
        if nbytes.checked_mul(n) != Some(out_nbytes) {
            return Err(PyValueError::new_err(format!(
                "zccl: all_gather output has {out_nbytes} bytes, {n} ranks x {nbytes} expected"
            )));
        }
        let (input, output) = in_out(addr, nbytes, out, out_nbytes, "all_gather")?;
        self.collective(py, keep, async_op, move |c| {
            // SAFETY: the Python side keeps both alive and untouched (keep).
            let (i, o) = unsafe { slices::<u8>(input, output)? };
            let f = Labelled::new(c, label).op(op);
            collectives::all_gather_into(&f, CH_COLL, i, o).map_err(s)
        })
    }

    /// Reduce-scatter: rank `r` gets block `r` (`out_nbytes`) of the reduction
    /// of every rank's `size × out_nbytes` input.
    #[pyo3(signature = (addr, nbytes, out, out_nbytes, dtype, op, keep=vec![], async_op=false))]
    #[allow(clippy::too_many_arguments)]
    fn reduce_scatter(
        &self,
        py: Python<'_>,
        addr: usize,
        nbytes: usize,
        out: usize,
        out_nbytes: usize,
        dtype: &str,
        op: &str,
        keep: Vec<Py<PyAny>>,
        async_op: bool,
    ) -> PyResult<Work> {
        let dt = Dt::parse(dtype)?;
        let op = reduce_op(op, dt)?;
        let n = self.sh.comm.size() as usize;
        if out_nbytes.checked_mul(n) != Some(nbytes) {
            return Err(PyValueError::new_err(format!(
                "zccl: reduce_scatter input has {nbytes} bytes, {n} ranks x {out_nbytes} expected"
            )));
        }
        let (input, output) = in_out(addr, nbytes, out, out_nbytes, "reduce_scatter")?;
        let (input, output) = (
            input.of(dt, "reduce_scatter input")?,
            output.of(dt, "reduce_scatter output")?,
        );
        self.collective(py, keep, async_op, move |c| {
            with_elem!(dt, T => {
                // SAFETY: kept alive and untouched by the Python side.
                let (i, o) = unsafe { slices::<T>(input, output)? };
                let f = Labelled::new(c, dt.dtype()).op(op.label(OpLabel::REDUCE_SCATTER_SUM));
                collectives::reduce_scatter_into(&f, CH_COLL, i, o, op).map_err(s)
            })
        })
    }

    /// Broadcast of `nbytes` at `addr` from `root` (in place).
    #[pyo3(signature = (addr, nbytes, root, dtype=None, keep=vec![], async_op=false))]
    #[allow(clippy::too_many_arguments)]
    fn broadcast(
        &self,
        py: Python<'_>,
        addr: usize,
        nbytes: usize,
        root: i64,
        dtype: Option<&str>,
        keep: Vec<Py<PyAny>>,
        async_op: bool,
    ) -> PyResult<Work> {
        let label = Dt::label(dtype);
        let root = self.check_peer(root, "broadcast root")? as usize;
        let buf = Span::new(addr, nbytes, "broadcast buffer")?;
        self.collective(py, keep, async_op, move |c| {
            // SAFETY: kept alive and untouched by the Python side.
            let b = unsafe { buf.slice_mut::<u8>("buffer").map_err(arg)? };
            let f = Labelled::new(c, label).op(OpLabel::BROADCAST);
            collectives::broadcast(&f, CH_COLL, b, root).map_err(s)
        })
    }

    /// Barrier.
    #[pyo3(signature = (async_op=false))]
    fn barrier(&self, py: Python<'_>, async_op: bool) -> PyResult<Work> {
        self.collective(py, vec![], async_op, move |c| {
            let f = Labelled::new(c, DType::U8).op(OpLabel::BARRIER);
            collectives::barrier(&f, CH_COLL).map_err(s)
        })
    }

    /// All-to-all(-v) over bytes: block `p` of the input (`send[p]` bytes)
    /// goes to rank `p`; block `p` of the output (`recv[p]` bytes) comes
    /// from rank `p`. Empty `send`/`recv`: equal blocks.
    #[pyo3(signature = (addr, nbytes, out, out_nbytes, send=vec![], recv=vec![], dtype=None, keep=vec![], async_op=false))]
    #[allow(clippy::too_many_arguments)]
    fn all_to_all(
        &self,
        py: Python<'_>,
        addr: usize,
        nbytes: usize,
        out: usize,
        out_nbytes: usize,
        send: Vec<usize>,
        recv: Vec<usize>,
        dtype: Option<&str>,
        keep: Vec<Py<PyAny>>,
        async_op: bool,
    ) -> PyResult<Work> {
        let label = Dt::label(dtype);
        let n = self.sh.comm.size() as usize;
        let (input, output) = in_out(addr, nbytes, out, out_nbytes, "all_to_all")?;
        let even = send.is_empty() && recv.is_empty();
        if even && (nbytes != out_nbytes || !nbytes.is_multiple_of(n)) {
            return Err(PyValueError::new_err(format!(
                "zccl: all_to_all with equal splits needs input and output of equal size divisible \
                 by {n} ranks, got {nbytes} and {out_nbytes} bytes"
            )));
        }
        let split = |v: Vec<usize>, total: usize, what: &str| -> PyResult<Vec<usize>> {
            if v.is_empty() {
                return Ok(vec![total / n; n]);
            }
            if v.len() != n {
                return Err(PyValueError::new_err(format!(
                    "zccl: all_to_all {what} splits have {} entries for {n} ranks",
                    v.len()
                )));
            }
            // Checked: hostile splits must not wrap around to the total.
            match v.iter().try_fold(0usize, |a, &b| a.checked_add(b)) {
                Some(sum) if sum == total => {}
                Some(sum) => {
                    return Err(PyValueError::new_err(format!(
                        "zccl: all_to_all {what} splits add up to {sum} bytes, the tensor has {total}"
                    )));
                }
                None => {
                    return Err(PyValueError::new_err(format!(
                        "zccl: all_to_all {what} splits add up to more than 2^64 bytes, the tensor has {total}"
                    )));
                }
            }
            Ok(v)
        };
        let send = split(send, nbytes, "input")?;
        let recv = split(recv, out_nbytes, "output")?;
        self.collective(py, keep, async_op, move |c| {
            // SAFETY: kept alive and untouched by the Python side.
            let (i, o) = unsafe { slices::<u8>(input, output)? };
            // One label for both forms: a rank passing equal splits and
            // one passing none agree (counts are checked by the sizes).
            let f = Labelled::new(c, label).op(OpLabel::ALL_TO_ALL);
            if even {
                alltoall::all_to_all_into(&f, CH_COLL, i, o).map_err(s)
            } else {
                alltoall::all_to_all_v_into(&f, CH_COLL, i, &send, &recv, o).map_err(s)
            }
        })
    }

    /// Point-to-point operations posted at once: each item is
    /// `(is_send, addr, nbytes, peer, tag)`. The returned work completes when
    /// all of them did. Sends and receives match per (peer, tag) in posting
    /// order.
    #[pyo3(signature = (ops, keep=vec![]))]
    fn p2p(
        &self,
        ops: Vec<(bool, usize, usize, i64, u32, Option<String>)>,
        keep: Vec<Py<PyAny>>,
    ) -> PyResult<Work> {
        let me = self.sh.comm.rank();
        let mut checked = Vec::with_capacity(ops.len());
        for (is_send, addr, nbytes, peer, tag, dtype) in ops {
            let label = Dt::label(dtype.as_deref());
            let what = if is_send { "send to" } else { "recv from" };
            let peer = self.check_peer(peer, what)?;
            let ch = Self::p2p_channel(tag)?;
            let span = Span::new(addr, nbytes, "p2p buffer")?;
            checked.push((is_send, span, peer, ch, tag, what, label));
        }
        let spans: Vec<(bool, Span)> = checked.iter().map(|c| (c.0, c.1)).collect();
        if let Some(i) = receive_overlap(&spans) {
            return Err(PyValueError::new_err(format!(
                "zccl: p2p item {i} receives into memory another item of the same batch also \
                 uses (a receive's buffer must not overlap any other buffer of its batch)"
            )));
        }
        let mut posted = Vec::with_capacity(checked.len());
        for (is_send, span, peer, ch, tag, what, label) in checked {
            let desc = format!("rank {me}: {what} rank {peer} (tag {tag}, {} B)", span.len);
            // torch's isend/irecv: a send is not held back behind a
            // receive from another peer (Gloo's and MPI's semantics).
            let chan = self.sh.comm.channel(ch).with_label(label).peerwise();
            // SAFETY: the Work holds `keep` (the tensors) until the handles
            // are done or dropped (their drop waits for / takes back the
            // memory), and the Python side does not touch them meanwhile.
            let r = unsafe {
                if is_send {
                    chan.isend_lent::<u8>(peer, span.slice::<u8>("send buffer")?)
                        .map(P2p::Send)
                } else {
                    chan.irecv_into::<u8>(peer, span.slice_mut::<u8>("recv buffer")?)
                        .map(P2p::Recv)
                }
            };
            match r {
                Ok(h) => posted.push((h, desc)),
                Err(e) => {
                    let msg = format!("{desc}: {e}");
                    // What was posted already stays valid: wait it out
                    // through a work that owns it, then report.
                    Work::posted(posted, keep, self.on_error()).abandon();
                    self.sh.fail(&msg);
                    return Err(ZcclError::new_err(msg));
                }
            }
        }
        Ok(Work::posted(posted, keep, self.on_error()))
    }

    /// Ring shift: `out` gets the `nbytes` of rank `r - offset`, while this
    /// rank's go to `r + offset`. `dtype` (the buffers' element type) labels
    /// the messages, so ranks whose types differ fail with a mismatch.
    #[pyo3(signature = (addr, nbytes, out, out_nbytes, offset=1, keep=vec![], async_op=false, dtype=None))]
    #[allow(clippy::too_many_arguments)]
    fn ring_shift(
        &self,
        py: Python<'_>,
        addr: usize,
        nbytes: usize,
        out: usize,
        out_nbytes: usize,
        offset: isize,
        keep: Vec<Py<PyAny>>,
        async_op: bool,
        dtype: Option<String>,
    ) -> PyResult<Work> {
        let (input, output) = in_out(addr, nbytes, out, out_nbytes, "ring_shift")?;
        let label = Dt::label(dtype.as_deref());
        self.collective(py, keep, async_op, move |c| {
            // SAFETY: kept alive and untouched by the Python side.
            let (i, o) = unsafe { slices::<u8>(input, output)? };
            let f = Labelled::new(c, label).op(OpLabel::RING_SHIFT);
            ring::ring_shift_into(&f, CH_COLL, i, o, offset).map_err(s)
        })
    }

    /// Ring pass (ring attention's driver): every rank's block visits every
    /// rank; `on_block(step, origin, addr, nbytes)` is called once per block,
    /// own block first, while the next block is already moving.
    /// `lens[p]` is the byte length of rank `p`'s block.
    #[pyo3(signature = (addr, nbytes, lens, on_block, offset=1))]
    fn ring_pass(
        &self,
        py: Python<'_>,
        addr: usize,
        nbytes: usize,
        lens: Vec<usize>,
        on_block: Py<PyAny>,
        offset: isize,
    ) -> PyResult<()> {
        let n = self.sh.comm.size() as usize;
        if lens.len() != n {
            return Err(PyValueError::new_err(format!(
                "zccl: ring_pass needs {n} block lengths, got {}",
                lens.len()
            )));
        }
        let block = Span::new(addr, nbytes, "ring_pass block")?;
        // SAFETY: read now, while the caller holds the block.
        let own = zccl_transports::copy::to_vec(unsafe { block.slice::<u8>("block")? });
        let failure: Arc<Mutex<Option<PyErr>>> = Arc::default();
        let f2 = failure.clone();
        let r = self.run_with_callbacks(py, move |c| {
            ring::ring_pass(
                // (It aborts the communicator with the callback's error:
                // the peers report that, not a channel out of step.)
                &Labelled::new(c, DType::U8)
                    .op(OpLabel::RING_PASS)
                    .without_abandon(),
                CH_COLL,
                offset,
                own,
                |o| lens[o],
                |b| {
                    call_py(&f2, &on_block, |py| {
                        (b.step, b.origin, b.data.as_ptr() as usize, b.data.len()).into_pyobject(py)
                    })
                    .map(|_| ())
                },
            )
            .map_err(s)
        });
        finish_callbacks(r, &failure)
    }

    /// TokenRing: this rank's Q (`addr`, `nbytes`) travels the ring while
    /// each partial result returns to its owner. `compute(step, origin,
    /// q_addr, q_nbytes)` returns `(addr, nbytes, obj)` of the block computed
    /// for the Q of `origin`; `merge(from, step, addr, nbytes)` merges a block
    /// computed by rank `from` for this rank's Q. `q_lens[p]` / `out_lens[p]`:
    /// bytes of rank `p`'s Q and of a block computed for it.
    #[pyo3(signature = (addr, nbytes, q_lens, out_lens, compute, merge, q_offset=1))]
    #[allow(clippy::too_many_arguments)]
    fn token_ring(
        &self,
        py: Python<'_>,
        addr: usize,
        nbytes: usize,
        q_lens: Vec<usize>,
        out_lens: Vec<usize>,
        compute: Py<PyAny>,
        merge: Py<PyAny>,
        q_offset: isize,
    ) -> PyResult<()> {
        let n = self.sh.comm.size() as usize;
        if q_lens.len() != n || out_lens.len() != n {
            return Err(PyValueError::new_err(format!(
                "zccl: token_ring needs {n} Q and block lengths, got {} and {}",
                q_lens.len(),
                out_lens.len()
            )));
        }
        let q = Span::new(addr, nbytes, "token_ring Q")?;
        // SAFETY: read now, while the caller holds Q.
        let own = zccl_transports::copy::to_vec(unsafe { q.slice::<u8>("Q")? });
        let failure: Arc<Mutex<Option<PyErr>>> = Arc::default();
        let mut kernel = PyKernel {
            q_lens,
            out_lens,
            compute,
            merge,
            failure: failure.clone(),
        };
        let r = self.run_with_callbacks(py, move |c| {
            zccl_primitives::token_ring::token_ring(
                &Labelled::new(c, DType::U8)
                    .op(OpLabel::TOKEN_RING)
                    .without_abandon(),
                TokenRingChannels {
                    q: CH_TR_Q,
                    out: CH_TR_OUT,
                },
                q_offset,
                own,
                &mut kernel,
            )
            .map_err(s)
        });
        finish_callbacks(r, &failure)
    }

    /// All-Scan with the diagonal-decay combine (ZeCO): `state` is `rows ×
    /// cols` f32, `decay` `rows` f32; `excl` (and `incl` when non-zero) get
    /// this rank's exclusive (inclusive) prefix. Pipelined over `blocks` row
    /// blocks; `on_block(index, row_start, row_end)` (optional) is called as
    /// each block of `excl`/`incl` is final, while later blocks still move.
    #[pyo3(signature = (state, decay, rows, cols, excl, incl=0, reverse=false, blocks=1, on_block=None))]
    #[allow(clippy::too_many_arguments)]
    fn all_scan(
        &self,
        py: Python<'_>,
        state: usize,
        decay: usize,
        rows: usize,
        cols: usize,
        excl: usize,
        incl: usize,
        reverse: bool,
        blocks: usize,
        on_block: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let bytes = rows
            .checked_mul(cols)
            .and_then(|x| x.checked_mul(4))
            .ok_or_else(|| PyValueError::new_err("zccl: all_scan state too large"))?;
        let st = Span::new(state, bytes, "all_scan state")?.of(Dt::F32, "all_scan state")?;
        let de_bytes = rows
            .checked_mul(4)
            .ok_or_else(|| PyValueError::new_err("zccl: all_scan decay too large"))?;
        let de = Span::new(decay, de_bytes, "all_scan decay")?.of(Dt::F32, "all_scan decay")?;
        let ex = Span::new(excl, bytes, "all_scan exclusive output")?
            .of(Dt::F32, "all_scan exclusive output")?;
        let inc = if incl == 0 {
            None
        } else {
            Some(
                Span::new(incl, bytes, "all_scan inclusive output")?
                    .of(Dt::F32, "all_scan inclusive output")?,
            )
        };
        for o in std::iter::once(&ex).chain(inc.as_ref()) {
            no_overlap(&st, o, "all_scan")?;
            no_overlap(&de, o, "all_scan")?;
        }
        if blocks == 0 || blocks > rows.max(1) {
            return Err(PyValueError::new_err(format!(
                "zccl: all_scan blocks must be in 1..={rows}, got {blocks}"
            )));
        }
        let dir = if reverse {
            ScanDirection::Reverse
        } else {
            ScanDirection::Forward
        };
        let failure: Arc<Mutex<Option<PyErr>>> = Arc::default();
        let f2 = failure.clone();
        let r = self.run_with_callbacks(py, move |c| {
            // SAFETY: the caller holds these buffers for the call.
            let (s_, d_, e_) = unsafe {
                (
                    st.slice::<f32>("state").map_err(arg)?,
                    de.slice::<f32>("decay").map_err(arg)?,
                    ex.slice_mut::<f32>("exclusive output").map_err(arg)?,
                )
            };
            let mut i_ = match inc {
                // SAFETY: as above.
                Some(sp) => Some(unsafe { sp.slice_mut::<f32>("inclusive output").map_err(arg)? }),
                None => None,
            };
            let local = scan::DiagState {
                state: s_,
                decay: d_,
                cols,
            };
            let f = Labelled::new(c, DType::F32)
                .op(scan::op_label(dir))
                .without_abandon();
            scan::all_scan_diag_blocks(&f, CH_COLL, local, dir, blocks, i_.is_some(), |b| {
                let span = b.rows.start * cols..b.rows.end * cols;
                zccl_transports::copy::copy_slice(&mut e_[span.clone()], b.exclusive);
                if let (Some(dst), Some(src)) = (i_.as_deref_mut(), b.inclusive) {
                    zccl_transports::copy::copy_slice(&mut dst[span], src);
                }
                match &on_block {
                    Some(cb) => call_py(&f2, cb, |py| {
                        (b.index, b.rows.start, b.rows.end).into_pyobject(py)
                    })
                    .map(|_| ()),
                    None => Ok(()),
                }
            })
            .map(|_| ())
            .map_err(s)
        });
        finish_callbacks(r, &failure)
    }
}

impl Comm {
    fn on_error(&self) -> crate::work::OnError {
        let sh = self.sh.clone();
        Arc::new(move |e: &str| sh.fail(e))
    }

    /// Runs an operation whose callbacks call into Python: in issue order
    /// with the other collectives, without the GIL (callbacks take it).
    fn run_with_callbacks<B>(&self, py: Python<'_>, body: B) -> Outcome
    where
        B: FnOnce(&Communicator) -> Outcome + Send + 'static,
    {
        let sh = self.sh.clone();
        py.detach(|| {
            self.sh.exec.run(Box::new(move || {
                // As in `job`: a panic fails the operation and aborts the
                // communicator, so the peers hear of it at once.
                let r = crate::work::catch_panic(|| body(&sh.comm));
                if let Err(e) = &r {
                    sh.fail(e);
                }
                r
            }))
        })
    }
}

/// Calls a Python callback with the GIL; a raised exception is kept in
/// `failure` (re-raised as it is once the operation ended) and stops the
/// operation.
fn call_py<'a, A>(
    failure: &Mutex<Option<PyErr>>,
    cb: &Py<PyAny>,
    args: A,
) -> zccl_primitives::Result<Py<PyAny>>
where
    A: for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyTuple>> + 'a,
{
    Python::attach(|py| {
        let r = args(py).and_then(|a| cb.call1(py, a));
        r.map_err(|e| {
            let msg = format!("callback raised: {e}");
            failure.lock().unwrap().get_or_insert(e);
            zccl_primitives::Error::InvalidArgument(msg)
        })
    })
}

fn finish_callbacks(r: Outcome, failure: &Mutex<Option<PyErr>>) -> PyResult<()> {
    if let Some(e) = failure.lock().unwrap().take() {
        return Err(e);
    }
    r.map_err(ZcclError::new_err)
}

/// The input and output spans of an out-of-place operation, which must not
/// share a byte.
fn in_out(
    addr: usize,
    nbytes: usize,
    out: usize,
    out_nbytes: usize,
    what: &str,
) -> PyResult<(Span, Span)> {
    let input = Span::new(addr, nbytes, &format!("{what} input"))?;
    let output = Span::new(out, out_nbytes, &format!("{what} output"))?;
    no_overlap(&input, &output, what)?;
    Ok((input, output))
}

/// Both spans as elements, inside an operation's body.
///
/// # Safety
/// As [`Span::slice`] and [`Span::slice_mut`]: the Python side keeps both
/// alive and untouched until the operation completed.
unsafe fn slices<'a, T: zccl_primitives::dtype::Elem>(
    input: Span,
    output: Span,
) -> Result<(&'a [T], &'a mut [T]), String> {
    // SAFETY: forwarded from our caller.
    unsafe {
        Ok((
            input.slice::<T>("input").map_err(arg)?,
            output.slice_mut::<T>("output").map_err(arg)?,
        ))
    }
}

fn no_overlap(a: &Span, b: &Span, what: &str) -> PyResult<()> {
    if a.overlaps(b) {
        return Err(PyValueError::new_err(format!(
            "zccl: {what} input and output overlap"
        )));
    }
    Ok(())
}

/// An all-reduce's element type, reduction and input, from its Python
/// arguments.
/// The index of a receive whose buffer overlaps another buffer of the same
/// batch (`(is_send, span)` items), if any: the bytes written there would
/// depend on timing. Sends may share memory with each other.
fn receive_overlap(items: &[(bool, Span)]) -> Option<usize> {
    let mut order: Vec<usize> = (0..items.len()).filter(|&i| items[i].1.len > 0).collect();
    order.sort_by_key(|&i| items[i].1.addr);
    // The furthest end of any buffer, and of any receive, seen so far.
    let (mut end, mut recv_end) = (0usize, 0usize);
    for i in order {
        let (is_send, s) = items[i];
        if s.addr < recv_end || (!is_send && s.addr < end) {
            return Some(i);
        }
        end = end.max(s.addr + s.len);
        if !is_send {
            recv_end = recv_end.max(s.addr + s.len);
        }
    }
    None
}

fn all_reduce_args(
    addr: usize,
    nbytes: usize,
    dtype: &str,
    op: &str,
) -> PyResult<(Dt, ReduceOp, Span)> {
    let dt = Dt::parse(dtype)?;
    let op = reduce_op(op, dt)?;
    let input = Span::new(addr, nbytes, "all_reduce input")?.of(dt, "all_reduce input")?;
    Ok((dt, op, input))
}

fn run_all_reduce(
    c: &Communicator,
    dt: Dt,
    op: ReduceOp,
    input: Span,
    output: Option<Span>,
) -> Outcome {
    with_elem!(dt, T => {
        // SAFETY: the Python side keeps the memory alive and untouched.
        unsafe {
            match output {
                None => {
                    let b = input.slice_mut::<T>("buffer").map_err(arg)?;
                    let f = Labelled::new(c, dt.dtype()).op(op.label(OpLabel::ALL_REDUCE_SUM));
                    collectives::all_reduce(&f, CH_COLL, b, op).map_err(s)
                }
                Some(o) => {
                    let i = input.slice::<T>("input").map_err(arg)?;
                    let o = o.slice_mut::<T>("output").map_err(arg)?;
                    let f = Labelled::new(c, dt.dtype()).op(op.label(OpLabel::ALL_REDUCE_SUM));
                    collectives::all_reduce_into(&f, CH_COLL, i, o, op).map_err(s)
                }
            }
        }
    })
}

/// TokenRing's kernel as Python callbacks.
struct PyKernel {
    q_lens: Vec<usize>,
    out_lens: Vec<usize>,
    compute: Py<PyAny>,
    merge: Py<PyAny>,
    failure: Arc<Mutex<Option<PyErr>>>,
}

impl TokenRingKernel for PyKernel {
    fn q_len(&self, _holder: usize, _step: usize, origin: usize) -> usize {
        self.q_lens[origin]
    }

    fn out_len(&self, _computer: usize, _step: usize, origin: usize) -> usize {
        self.out_lens[origin]
    }

    fn compute(
        &mut self,
        step: usize,
        origin: usize,
        q: &[u8],
    ) -> zccl_primitives::Result<Vec<u8>> {
        let r = call_py(&self.failure, &self.compute, |py| {
            (step, origin, q.as_ptr() as usize, q.len()).into_pyobject(py)
        })?;
        Python::attach(|py| {
            let (addr, n, _obj): (usize, usize, Py<PyAny>) = r.extract(py).map_err(|e| {
                zccl_primitives::Error::InvalidArgument(format!(
                    "token_ring compute must return (addr, nbytes, obj): {e}"
                ))
            })?;
            let sp = Span::new(addr, n, "block")
                .map_err(|e| zccl_primitives::Error::InvalidArgument(e.to_string()))?;
            // SAFETY: `_obj` (the block's owner) is alive while we copy.
            let b = unsafe { sp.slice::<u8>("block") }
                .map_err(|e| zccl_primitives::Error::InvalidArgument(e.to_string()))?;
            Ok(b.to_vec())
        })
    }

    fn merge(&mut self, from: usize, step: usize, block: Vec<u8>) -> zccl_primitives::Result<()> {
        call_py(&self.failure, &self.merge, |py| {
            (from, step, block.as_ptr() as usize, block.len()).into_pyobject(py)
        })
        .map(|_| ())
    }
}

/// `attn_merge(out, lse, out2, lse2)`: merges the attention block `(out2,
/// lse2)` into `(out, lse)` in place (FlashAttention-2's log-sum-exp merge,
/// f32; `lse` has one value per row).
#[pyfunction]
pub fn attn_merge(
    out: (usize, usize),
    lse: (usize, usize),
    out2: (usize, usize),
    lse2: (usize, usize),
) -> PyResult<()> {
    let (o, l, o2, l2) = (
        Span::new(out.0, out.1, "out")?,
        Span::new(lse.0, lse.1, "lse")?,
        Span::new(out2.0, out2.1, "out2")?,
        Span::new(lse2.0, lse2.1, "lse2")?,
    );
    for (a, b) in [(&o, &l), (&o, &o2), (&o, &l2), (&l, &o2), (&l, &l2)] {
        if a.overlaps(b) {
            return Err(PyValueError::new_err("zccl: attn_merge buffers overlap"));
        }
    }
    // SAFETY: the caller holds the four tensors for the call.
    unsafe {
        zccl_primitives::attn_merge::attn_merge_into(
            o.slice_mut("out")?,
            l.slice_mut("lse")?,
            o2.slice("out2")?,
            l2.slice("lse2")?,
        )
    }
    .map_err(|e| PyValueError::new_err(e.to_string()))
}

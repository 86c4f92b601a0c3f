//! An in-process simulated fabric: N ranks as threads, unbounded mailboxes.
//!
//! Messages are matched FIFO per (source, channel) with sequence numbers
//! taken at post time, exactly as the [`Fabric`] contract says; tag and length
//! are checked on every match. Sends complete immediately (unbounded
//! buffering). Every operation has a deadline ([`SimConfig::op_timeout`]) and
//! the whole run has one ([`SimConfig::run_timeout`]), so a buggy schedule
//! fails with an error naming the peer instead of hanging. When one rank
//! panics, the fabric is aborted: the other ranks' pending and later waits
//! return [`Error::Aborted`] at once, and the run reports the first failure.
//!
//! ```
//! use zccl_primitives::{Fabric, sim::run_ranks};
//! let sizes = run_ranks(3, |f| f.size() * 10 + f.rank());
//! assert_eq!(sizes, vec![30, 31, 32]);
//! ```

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use crate::error::{Dir, Error, Result};
use crate::fabric::{Fabric, PendingRecv, RecvHandle, SendHandle, check_rank};

/// Settings of a simulated run.
///
/// ```
/// use std::time::Duration;
/// let c = zccl_primitives::sim::SimConfig { op_timeout: Duration::from_millis(200), ..Default::default() };
/// assert!(c.run_timeout > c.op_timeout);
/// ```
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Deadline of every operation, from when it is posted.
    pub op_timeout: Duration,
    /// Deadline of the whole run; a rank still running then is reported.
    pub run_timeout: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            op_timeout: Duration::from_secs(20),
            run_timeout: Duration::from_secs(120),
        }
    }
}

/// One message sent during a simulated run (recorded when posted).
///
/// ```
/// use zccl_primitives::sim::{try_run_ranks, SimConfig};
/// use zccl_primitives::{Fabric, collectives::barrier};
/// let run = try_run_ranks(SimConfig::default(), 2, |f| barrier(f, 4).unwrap()).unwrap();
/// assert!(run.log.iter().all(|m| m.channel == 4 && m.len == 0));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgRecord {
    /// Sender.
    pub src: usize,
    /// Receiver.
    pub dst: usize,
    /// Channel.
    pub channel: u32,
    /// Tag.
    pub tag: u64,
    /// Sequence number among messages `src → dst` on `channel`.
    pub seq: u64,
    /// Payload length in bytes.
    pub len: usize,
}

struct Msg {
    tag: u64,
    data: Vec<u8>,
}

struct Mailbox {
    msgs: Mutex<HashMap<(usize, u32, u64), Msg>>,
    cv: Condvar,
}

struct World {
    n: usize,
    cfg: SimConfig,
    boxes: Vec<Mailbox>,
    /// Per rank: next send sequence number per (dst, channel).
    send_seq: Vec<Mutex<HashMap<(usize, u32), u64>>>,
    /// Per rank: next receive sequence number per (src, channel).
    recv_seq: Vec<Mutex<HashMap<(usize, u32), u64>>>,
    aborted: AtomicBool,
    abort_reason: Mutex<Option<String>>,
    first_failure: Mutex<Option<(usize, String)>>,
    log: Mutex<Vec<MsgRecord>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking rank must not poison the fabric for the others.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl World {
    fn abort(&self, reason: String) {
        {
            let mut r = lock(&self.abort_reason);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.aborted.store(true, Ordering::SeqCst);
        for b in &self.boxes {
            let _g = lock(&b.msgs);
            b.cv.notify_all();
        }
    }

    fn reason(&self) -> String {
        lock(&self.abort_reason).clone().unwrap_or_default()
    }

    fn next(map: &Mutex<HashMap<(usize, u32), u64>>, key: (usize, u32)) -> u64 {
        let mut m = lock(map);
        let e = m.entry(key).or_insert(0);
        let s = *e;
        *e += 1;
        s
    }
}

/// One rank's view of a simulated fabric. Cheap to clone; `Send + Sync`, so a
/// rank may post operations from helper threads.
///
/// ```
/// use zccl_primitives::{Fabric, sim::run_ranks};
/// let v = run_ranks(2, |f| {
///     let g = f.clone(); // cheap; usable from helper threads
///     std::thread::scope(|s| s.spawn(|| g.rank()).join().unwrap())
/// });
/// assert_eq!(v, vec![0, 1]);
/// ```
#[derive(Clone)]
pub struct SimFabric {
    world: Arc<World>,
    rank: usize,
}

impl std::fmt::Debug for SimFabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimFabric(rank {} of {})", self.rank, self.world.n)
    }
}

impl SimFabric {
    /// Creates the `n` rank handles of a new simulated world (for callers that
    /// manage their own threads; most tests use [`run_ranks`]).
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::{SimFabric, SimConfig}};
    /// let ranks = SimFabric::world(2, SimConfig::default());
    /// ranks[0].isend(1, 0, 0, vec![1]).unwrap();
    /// assert_eq!(ranks[1].irecv(0, 0, 0, 1).unwrap().wait().unwrap(), vec![1]);
    /// ```
    pub fn world(n: usize, cfg: SimConfig) -> Vec<SimFabric> {
        assert!(n >= 1, "a world needs at least one rank");
        let world = Arc::new(World {
            n,
            cfg,
            boxes: (0..n)
                .map(|_| Mailbox {
                    msgs: Mutex::new(HashMap::new()),
                    cv: Condvar::new(),
                })
                .collect(),
            send_seq: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            recv_seq: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            aborted: AtomicBool::new(false),
            abort_reason: Mutex::new(None),
            first_failure: Mutex::new(None),
            log: Mutex::new(Vec::new()),
        });
        (0..n)
            .map(|rank| SimFabric {
                world: world.clone(),
                rank,
            })
            .collect()
    }

    /// Aborts the world: every pending and later wait on every rank fails with
    /// [`Error::Aborted`] carrying `reason`.
    ///
    /// ```
    /// use zccl_primitives::{Error, Fabric, sim::{SimConfig, SimFabric}};
    /// let ranks = SimFabric::world(2, SimConfig::default());
    /// ranks[0].abort("test over");
    /// let e = ranks[1].irecv(0, 0, 0, 1).unwrap().wait().unwrap_err();
    /// assert!(matches!(e, Error::Aborted { .. }), "{e}");
    /// ```
    pub fn abort(&self, reason: impl Into<String>) {
        self.world.abort(reason.into());
    }

    /// Every message posted so far, in posting order.
    ///
    /// ```
    /// use zccl_primitives::{Fabric, sim::{SimConfig, SimFabric}};
    /// let ranks = SimFabric::world(2, SimConfig::default());
    /// ranks[1].isend(0, 3, 9, vec![0; 5]).unwrap();
    /// let log = ranks[0].log();
    /// assert_eq!((log[0].src, log[0].dst, log[0].channel, log[0].len), (1, 0, 3, 5));
    /// ```
    pub fn log(&self) -> Vec<MsgRecord> {
        lock(&self.world.log).clone()
    }
}

impl Fabric for SimFabric {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.world.n
    }

    fn isend(&self, to: usize, channel: u32, tag: u64, data: Vec<u8>) -> Result<SendHandle> {
        check_rank(self, to, "isend")?;
        let w = &self.world;
        if w.aborted.load(Ordering::SeqCst) {
            return Err(Error::Aborted {
                rank: self.rank,
                dir: Dir::Send,
                peer: to,
                channel,
                reason: w.reason(),
            });
        }
        let seq = World::next(&w.send_seq[self.rank], (to, channel));
        lock(&w.log).push(MsgRecord {
            src: self.rank,
            dst: to,
            channel,
            tag,
            seq,
            len: data.len(),
        });
        let b = &w.boxes[to];
        lock(&b.msgs).insert((self.rank, channel, seq), Msg { tag, data });
        b.cv.notify_all();
        Ok(SendHandle::completed())
    }

    fn irecv(&self, from: usize, channel: u32, tag: u64, len: usize) -> Result<RecvHandle> {
        check_rank(self, from, "irecv")?;
        let seq = World::next(&self.world.recv_seq[self.rank], (from, channel));
        Ok(RecvHandle::new(SimRecv {
            world: self.world.clone(),
            rank: self.rank,
            from,
            channel,
            tag,
            len,
            seq,
            posted: Instant::now(),
            got: None,
        }))
    }
}

struct SimRecv {
    world: Arc<World>,
    rank: usize,
    from: usize,
    channel: u32,
    tag: u64,
    len: usize,
    seq: u64,
    posted: Instant,
    got: Option<Msg>,
}

impl SimRecv {
    fn check(&self, m: Msg) -> Result<Vec<u8>> {
        if m.tag != self.tag || m.data.len() != self.len {
            return Err(Error::Mismatch {
                rank: self.rank,
                peer: self.from,
                channel: self.channel,
                expected_tag: self.tag,
                expected_len: self.len,
                got_tag: m.tag,
                got_len: m.data.len(),
            });
        }
        Ok(m.data)
    }

    fn aborted(&self) -> Error {
        Error::Aborted {
            rank: self.rank,
            dir: Dir::Recv,
            peer: self.from,
            channel: self.channel,
            reason: self.world.reason(),
        }
    }
}

impl PendingRecv for SimRecv {
    fn wait(mut self: Box<Self>) -> Result<Vec<u8>> {
        if let Some(m) = self.got.take() {
            return self.check(m);
        }
        let w = self.world.clone();
        let b = &w.boxes[self.rank];
        let key = (self.from, self.channel, self.seq);
        let deadline = self.posted + w.cfg.op_timeout;
        let mut g = lock(&b.msgs);
        loop {
            if let Some(m) = g.remove(&key) {
                drop(g);
                return self.check(m);
            }
            if w.aborted.load(Ordering::SeqCst) {
                return Err(self.aborted());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    rank: self.rank,
                    dir: Dir::Recv,
                    peer: self.from,
                    channel: self.channel,
                    tag: self.tag,
                    after: w.cfg.op_timeout,
                });
            }
            g =
                b.cv.wait_timeout(g, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
        }
    }

    fn test(&mut self) -> Result<bool> {
        if self.got.is_some() {
            return Ok(true);
        }
        let m =
            lock(&self.world.boxes[self.rank].msgs).remove(&(self.from, self.channel, self.seq));
        match m {
            Some(m) => {
                self.got = Some(m);
                Ok(true)
            }
            None if self.world.aborted.load(Ordering::SeqCst) => Err(self.aborted()),
            None => Ok(false),
        }
    }
}

/// The outcome of [`try_run_ranks`]: each rank's return value, in rank order,
/// and every message the ranks posted.
///
/// ```
/// use zccl_primitives::{Fabric, sim::{try_run_ranks, SimConfig}};
/// let run = try_run_ranks(SimConfig::default(), 2, |f| f.rank() * 2).unwrap();
/// assert_eq!(run.results, vec![0, 2]);
/// assert!(run.log.is_empty());
/// ```
#[derive(Debug)]
pub struct SimRun<T> {
    /// Return value of rank `i` at index `i`.
    pub results: Vec<T>,
    /// Every message, in posting order.
    pub log: Vec<MsgRecord>,
}

/// Why a simulated run failed.
///
/// ```
/// use zccl_primitives::sim::{try_run_ranks, SimConfig, SimError};
/// let e = try_run_ranks(SimConfig::default(), 2, |_| panic!("boom")).unwrap_err();
/// assert!(matches!(e, SimError::Panicked { ref message, .. } if message == "boom"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// A rank panicked (the first one to fail is reported).
    #[error("rank {rank} panicked: {message}")]
    Panicked {
        /// The rank.
        rank: usize,
        /// The panic message.
        message: String,
    },
    /// A rank was still running at the run deadline.
    #[error("rank {rank} did not finish within {:.1} s", .after.as_secs_f64())]
    Hung {
        /// The rank.
        rank: usize,
        /// The run deadline.
        after: Duration,
    },
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs `f` on `n` simulated ranks, one thread each, with `cfg`'s deadlines.
///
/// Returns every rank's value, or the first failure: the first rank to panic
/// (its panic aborts the fabric so that the other ranks fail fast), or a rank
/// still running at the run deadline (its thread is abandoned).
///
/// ```
/// use std::time::Duration;
/// use zccl_primitives::{Fabric, sim::{try_run_ranks, SimConfig, SimError}};
/// let cfg = SimConfig { op_timeout: Duration::from_millis(100), ..Default::default() };
/// // Rank 0 waits for a message nobody sends: a typed timeout naming peer 1.
/// let err = try_run_ranks(cfg, 2, |f| {
///     if f.rank() == 0 { f.irecv(1, 3, 0, 4).unwrap().wait().unwrap_or_else(|e| panic!("{e}")); }
/// }).unwrap_err();
/// let SimError::Panicked { rank, message } = err else { panic!() };
/// assert_eq!(rank, 0);
/// assert!(message.contains("recv from rank 1 on channel 3"), "{message}");
/// ```
pub fn try_run_ranks<T, F>(cfg: SimConfig, n: usize, f: F) -> Result<SimRun<T>, SimError>
where
    T: Send + 'static,
    F: Fn(&SimFabric) -> T + Send + Sync + 'static,
{
    let run_timeout = cfg.run_timeout;
    let ranks = SimFabric::world(n, cfg);
    let world = ranks[0].world.clone();
    let f = Arc::new(f);
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::with_capacity(n);
    for fab in ranks {
        let f = f.clone();
        let tx = tx.clone();
        let rank = fab.rank;
        let h = std::thread::Builder::new()
            .name(format!("sim-rank-{rank}"))
            .spawn(move || {
                let r = catch_unwind(AssertUnwindSafe(|| f(&fab)));
                let r = r.map_err(|p| {
                    let m = panic_message(&*p);
                    lock(&fab.world.first_failure).get_or_insert((rank, m.clone()));
                    fab.world.abort(format!("rank {rank} panicked: {m}"));
                    m
                });
                let _ = tx.send((rank, r));
            })
            .expect("spawn a simulated rank");
        threads.push(h);
    }
    drop(tx);
    let deadline = Instant::now() + run_timeout;
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut first_err: Option<SimError> = None;
    let mut done = 0;
    while done < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((rank, Ok(v))) => {
                results[rank] = Some(v);
                done += 1;
            }
            Ok((_, Err(_))) => {
                if first_err.is_none() {
                    let (rank, message) = lock(&world.first_failure)
                        .clone()
                        .expect("a failed rank records itself");
                    first_err = Some(SimError::Panicked { rank, message });
                }
                done += 1;
            }
            Err(_) => {
                let rank = results.iter().position(Option::is_none).unwrap_or(0);
                world.abort(format!("run deadline of {run_timeout:?} passed"));
                return Err(first_err.unwrap_or(SimError::Hung {
                    rank,
                    after: run_timeout,
                }));
            }
        }
    }
    for t in threads {
        let _ = t.join();
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let log = lock(&world.log).clone();
    Ok(SimRun {
        results: results
            .into_iter()
            .map(|r| r.expect("every rank reported"))
            .collect(),
        log,
    })
}

/// Runs `f` on `n` simulated ranks with the default [`SimConfig`] and returns
/// each rank's value in rank order.
///
/// # Panics
/// With the first rank failure (see [`try_run_ranks`]).
///
/// ```
/// use zccl_primitives::{Fabric, sim::run_ranks};
/// assert_eq!(run_ranks(2, |f| f.rank()), vec![0, 1]);
/// ```
pub fn run_ranks<T, F>(n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(&SimFabric) -> T + Send + Sync + 'static,
{
    match try_run_ranks(SimConfig::default(), n, f) {
        Ok(r) => r.results,
        Err(e) => panic!("simulated run on {n} ranks failed: {e}"),
    }
}

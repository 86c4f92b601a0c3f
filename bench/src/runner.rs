//! The measurement loop, over any [`Fabric`] (the communicator in the
//! command, the simulated fabric in unit tests).
//!
//! For each type, reduction and size, and for each half (out-of-place, then
//! in-place), every rank:
//!
//! 1. fills its buffers with the check data of iteration 0;
//! 2. runs `-w` untimed iterations;
//! 3. enters a barrier, then times `-n` iterations back to back; its time
//!    is the elapsed time divided by `-n`;
//! 4. for each of the `-c` check iterations `c`: refills the buffers with the
//!    data of iteration `c`, runs the op once and counts the elements of its
//!    output that differ from the expected values ([`crate::check`]);
//! 5. all-reduces `(time, wrong)` over the ranks (sum) on a control channel:
//!    the row's time is the mean of the ranks' times, `#wrong` the sum.
//!
//! Ops run on channel [`CH_DATA`] (and [`CH_DATA2`] for token_ring's second
//! direction); barriers, the rank table and the per-size aggregation use
//! [`CH_CTRL`].
//!
//! # Out-of-place and in-place, per op (with the API zccl has)
//!
//! | op | out-of-place | in-place |
//! |---|---|---|
//! | all_reduce | `all_reduce_into(input, output)` | `all_reduce` on the buffer |
//! | reduce_scatter | `reduce_scatter_into(input, output)` | into a scratch block, copied into the rank's slot of the input buffer |
//! | all_gather | `all_gather_into(input, output)` | the input is the rank's slot of the buffer; into a scratch output, copied back over the buffer |
//! | alltoall | `all_to_all_into(input, output)` | into a scratch buffer, copied back over the input buffer |
//! | broadcast | the root copies its input into the output buffer, then `broadcast` on it | `broadcast` on the buffer |
//! | sendrecv, ring_shift | `ring_shift_into(input, output)`: the input is lent, the block lands in the output buffer | into a scratch buffer, copied over the input buffer |
//! | token_ring | `bidir_ring_step_into`: first half of the input to `r+1` on channel 0, second half to `r−1` on channel 1, received halves into the output buffer | into a scratch buffer, copied over the input buffer |
//! | all_scan | `all_scan_diag(state)` returns the exclusive prefix (the output) | the prefix is copied over the state buffer |
//!
//! The bench's own copies (the in-place forms' copy back) go through
//! `zccl_transports::copy`, as zccl's do: `memcpy` can be 15× slower at
//! some relative alignments of two buffers (see that module).
//!
//! The `_into` forms lend the input and receive into the output: between
//! same-host ranks reading each other by CMA a block is copied once; other
//! paths copy at the send and at the match, and those copies are in the
//! time.

use std::time::Instant;

use anyhow::{Context, Result};
use zccl_primitives::Fabric;
use zccl_primitives::alltoall::all_to_all_into;
use zccl_primitives::collectives::{
    all_gather, all_gather_into, all_reduce, all_reduce_into, barrier, broadcast,
    reduce_scatter_into,
};
use zccl_primitives::dtype::{DType, as_bytes, as_bytes_mut, bf16, f16};
use zccl_primitives::reduce::ReduceOp;
use zccl_primitives::ring::{ShiftInto, bidir_ring_step_into, ring_shift_into};
use zccl_primitives::scan::{DiagState, all_scan_diag};
use zccl_primitives::schedule::scan::ScanDirection;
use zccl_transports::copy::copy_slice;

use crate::args::{Average, Settings, check_job, nccl_name};
use crate::buffer::{Buf, filled};
use crate::check::{
    BenchElem, count_wrong, id, reduce_input, reduced, scan_decay, scan_expected, scan_state,
};
use crate::count::{Counting, total_sent};
use crate::ops::{Layout, Op, layout};
use crate::report::{Preamble, Row, footer, preamble, row_text, table_head};

/// Channel of the measured ops.
pub const CH_DATA: u32 = 0;
/// Channel of token_ring's second direction.
pub const CH_DATA2: u32 = 1;
/// Channel of barriers and result aggregation.
pub const CH_CTRL: u32 = 2;

/// Environment variable of the test hook: when set to a non-empty value other
/// than `0`, the last rank flips one element of its output after the op of
/// the last check iteration, in both halves, so `#wrong` is non-zero.
pub const CORRUPT_ENV: &str = "ZCCL_BENCH_CORRUPT";

/// Whether the corruption hook is on, from its variable's value.
pub fn corrupt_requested(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

/// This rank, as the `# Using devices` table shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RankInfo {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// How it reaches its peers (`shm`, `tcp`, `shm+tcp`; empty alone).
    pub transport: String,
}

const RECORD: usize = 128;

impl RankInfo {
    fn encode(&self) -> Vec<u8> {
        let mut v = vec![0u8; RECORD];
        v[..4].copy_from_slice(&self.pid.to_le_bytes());
        let t = &self.transport.as_bytes()[..self.transport.len().min(15)];
        v[4] = t.len() as u8;
        v[5..5 + t.len()].copy_from_slice(t);
        let h = &self.host.as_bytes()[..self.host.len().min(RECORD - 22)];
        v[21] = h.len() as u8;
        v[22..22 + h.len()].copy_from_slice(h);
        v
    }

    fn decode(b: &[u8]) -> (u32, String, String) {
        let pid = u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
        let t = String::from_utf8_lossy(&b[5..5 + b[4] as usize]).into_owned();
        let h = String::from_utf8_lossy(&b[22..22 + b[21] as usize]).into_owned();
        (pid, h, t)
    }
}

/// What one case needs to know.
#[derive(Debug, Clone, Copy)]
struct Ctx {
    op: Op,
    redop: ReduceOp,
    r: usize,
    n: usize,
    root: usize,
    offset: i64,
    lay: Layout,
    in_place: bool,
    scan_blocks: usize,
    scan_dir: ScanDirection,
}

impl Ctx {
    /// The rank this rank receives from in a shift by `k`.
    fn from(&self, k: i64) -> usize {
        // `k` reduced first: `r - k` overflows for offsets near i64::MIN.
        let k = k.rem_euclid(self.n as i64);
        (self.r as i64 - k).rem_euclid(self.n as i64) as usize
    }
}

/// One op at one size, one half: buffers, the op, and its check.
trait Case<F: Fabric + ?Sized> {
    fn init(&mut self, rep: u64);
    fn run(&mut self, f: &F) -> Result<()>;
    fn wrong(&self, rep: u64) -> u64;
    fn corrupt(&mut self);
}

/// Every op but all_scan, for element type `T`. `a` is the input (and the
/// buffer of in-place runs), `b` the output of out-of-place runs.
struct Coll<T: Copy> {
    c: Ctx,
    a: Buf<T>,
    b: Buf<T>,
    /// In-place alltoall's output before it is copied back.
    scratch: Buf<T>,
}

/// `got` against `want(i)` for `want_len` elements; a length difference counts as wrong elements.
/// The partner of `rank` in the ping-pong pairs `(2i, 2i+1)`; `None` for
/// the last rank of an odd count.
fn pingpong_peer(rank: usize, n: usize) -> Option<usize> {
    let p = rank ^ 1;
    (p < n).then_some(p)
}

/// One ping-pong round trip as a user writes it: the first of a pair sends
/// `send`, then receives the reply into `recv`; the second receives into
/// `recv` and sends that back. The same calls in the same order as the
/// MPI ping-pong it is compared with (`Send` then `Recv`, and `Recv` then
/// `Send`: `../shared/peers/mpi_bench.py`). Posting the first rank's
/// receive before its send puts that post on the round trip's path: 8 B
/// between 2 processes measured 1.01 against 0.86 us one way.
fn pingpong<F: Fabric + ?Sized>(f: &F, ch: u32, send: &[u8], recv: &mut [u8]) -> Result<()> {
    let Some(peer) = pingpong_peer(f.rank(), f.size()) else {
        return Ok(());
    };
    // SAFETY: each buffer is borrowed for the whole call and every handle
    // is waited before it returns.
    if f.rank() < peer {
        unsafe { f.isend_lent(peer, ch, 0, send) }?.wait()?;
        unsafe { f.irecv_into(peer, ch, 0, recv) }?.wait()?;
    } else {
        unsafe { f.irecv_into(peer, ch, 0, recv) }?.wait()?;
        unsafe { f.isend_lent(peer, ch, 0, recv) }?.wait()?;
    }
    Ok(())
}

fn wrong_in<T: BenchElem>(got: &[T], want_len: usize, want: impl Fn(usize) -> T) -> u64 {
    let common = got.len().min(want_len);
    count_wrong(&got[..common], want) + got.len().abs_diff(want_len) as u64
}

impl<T: BenchElem> Coll<T> {
    fn new(c: Ctx) -> Self {
        Coll {
            c,
            a: Buf::default(),
            b: Buf::default(),
            scratch: Buf::default(),
        }
    }

    /// Per-peer block (all_gather, reduce_scatter, alltoall); half (token_ring).
    fn block(&self) -> usize {
        match self.c.op {
            Op::TokenRing => self.c.lay.send_count / 2,
            _ => self.c.lay.count,
        }
    }

    fn out(&self) -> &[T] {
        let (r, m) = (self.c.r, self.block());
        match (self.c.op, self.c.in_place) {
            (Op::ReduceScatter, true) => &self.a[r * m..(r + 1) * m],
            (_, true) => &self.a,
            (_, false) => &self.b,
        }
    }

    fn out_mut(&mut self) -> &mut [T] {
        let (r, m) = (self.c.r, self.block());
        match (self.c.op, self.c.in_place) {
            (Op::ReduceScatter, true) => &mut self.a[r * m..(r + 1) * m],
            (_, true) => &mut self.a,
            (_, false) => &mut self.b,
        }
    }
}

impl<T: BenchElem, F: Fabric + ?Sized> Case<F> for Coll<T> {
    fn init(&mut self, rep: u64) {
        let c = self.c;
        let (r, n, m) = (c.r, c.n, self.block());
        let zero = T::from_i64(0);
        // Buffers aligned as torch aligns its tensors, advised for huge
        // pages from 4 MiB as numpy advises its arrays (`crate::buffer`).
        self.a = match c.op {
            Op::AllReduce | Op::ReduceScatter => filled(c.lay.send_count, |i| {
                T::from_i64(reduce_input(c.redop, r, i, rep))
            }),
            Op::AllGather if c.in_place => {
                let mut v = filled(n * m, |_| zero);
                for i in 0..m {
                    v[r * m + i] = id(r, i, rep);
                }
                v
            }
            _ => filled(c.lay.send_count, |i| id(r, i, rep)),
        };
        self.b = match c.in_place {
            true => Buf::default(),
            false => filled(c.lay.recv_count, |_| zero),
        };
        self.scratch = match (c.in_place, c.op) {
            (
                true,
                Op::Alltoall
                | Op::AllGather
                | Op::ReduceScatter
                | Op::Sendrecv
                | Op::RingShift
                | Op::Pingpong
                | Op::TokenRing,
            ) => filled(c.lay.recv_count, |_| zero),
            _ => Buf::default(),
        };
    }

    fn run(&mut self, f: &F) -> Result<()> {
        let c = self.c;
        let (r, m) = (c.r, self.block());
        match (c.op, c.in_place) {
            (Op::AllReduce, false) => all_reduce_into(f, CH_DATA, &self.a, &mut self.b, c.redop)?,
            (Op::AllReduce, true) => all_reduce(f, CH_DATA, &mut self.a, c.redop)?,
            // Out of place into reused outputs (NCCL's recvbuff), not fresh
            // vectors per iteration (their page faults would dominate); in
            // place through a scratch output, copied into the buffer.
            (Op::ReduceScatter, false) => {
                reduce_scatter_into(f, CH_DATA, &self.a, &mut self.b, c.redop)?
            }
            (Op::ReduceScatter, true) => {
                reduce_scatter_into(f, CH_DATA, &self.a, &mut self.scratch, c.redop)?;
                copy_slice(&mut self.a[r * m..(r + 1) * m], &self.scratch);
            }
            (Op::AllGather, false) => all_gather_into(f, CH_DATA, &self.a, &mut self.b)?,
            (Op::AllGather, true) => {
                all_gather_into(f, CH_DATA, &self.a[r * m..(r + 1) * m], &mut self.scratch)?;
                copy_slice(&mut self.a, &self.scratch);
            }
            (Op::Alltoall, false) => all_to_all_into(f, CH_DATA, &self.a, &mut self.b)?,
            (Op::Alltoall, true) => {
                all_to_all_into(f, CH_DATA, &self.a, &mut self.scratch)?;
                copy_slice(&mut self.a, &self.scratch);
            }
            (Op::Broadcast, false) => {
                if r == c.root {
                    copy_slice(&mut self.b, &self.a);
                }
                broadcast(f, CH_DATA, &mut self.b, c.root)?;
            }
            (Op::Broadcast, true) => broadcast(f, CH_DATA, &mut self.a, c.root)?,
            (Op::Sendrecv | Op::RingShift, false) => ring_shift_into(
                f,
                CH_DATA,
                as_bytes(&self.a),
                as_bytes_mut(&mut self.b),
                c.offset as isize,
            )?,
            (Op::Sendrecv | Op::RingShift, true) => {
                // In place: into a scratch buffer, copied over the input.
                ring_shift_into(
                    f,
                    CH_DATA,
                    as_bytes(&self.a),
                    as_bytes_mut(&mut self.scratch),
                    c.offset as isize,
                )?;
                copy_slice(&mut self.a, &self.scratch);
            }
            (Op::Pingpong, in_place) => {
                // In place: the reply lands in the scratch buffer, copied back.
                let Self { a, b, scratch, .. } = self;
                let out = if in_place { &mut *scratch } else { b };
                pingpong(f, CH_DATA, as_bytes(a), as_bytes_mut(out))?;
                if in_place && pingpong_peer(f.rank(), f.size()).is_some() {
                    copy_slice(a, scratch);
                }
            }
            (Op::TokenRing, in_place) => {
                // In place: into the scratch buffer, copied over the input.
                let Self { a, b, scratch, .. } = self;
                let out = if in_place { &mut *scratch } else { b };
                let (lo, hi) = a.split_at(m);
                let (xo, yo) = out.split_at_mut(m);
                bidir_ring_step_into(
                    f,
                    ShiftInto {
                        channel: CH_DATA,
                        offset: 1,
                        send: as_bytes(lo),
                        recv: as_bytes_mut(xo),
                    },
                    ShiftInto {
                        channel: CH_DATA2,
                        offset: -1,
                        send: as_bytes(hi),
                        recv: as_bytes_mut(yo),
                    },
                )?;
                if in_place {
                    copy_slice(a, scratch);
                }
            }
            (Op::AllScan, _) => unreachable!("all_scan has its own case"),
        }
        Ok(())
    }

    fn wrong(&self, rep: u64) -> u64 {
        let c = self.c;
        let (r, n, m) = (c.r, c.n, self.block());
        let got = self.out();
        match c.op {
            Op::AllReduce => wrong_in(got, c.lay.recv_count, |i| reduced(c.redop, n, i, rep)),
            Op::ReduceScatter => wrong_in(got, m, |k| reduced(c.redop, n, r * m + k, rep)),
            Op::AllGather => wrong_in(got, n * m, |i| id(i / m.max(1), i % m.max(1), rep)),
            Op::Alltoall => wrong_in(got, n * m, |i| {
                let (src, k) = (i / m.max(1), i % m.max(1));
                id(src, r * m + k, rep)
            }),
            Op::Broadcast => wrong_in(got, c.lay.recv_count, |i| id(c.root, i, rep)),
            Op::Pingpong => match pingpong_peer(r, n) {
                // The first of a pair gets its own bytes back (bounced by
                // the second), the second its partner's.
                Some(p) => wrong_in(got, c.lay.recv_count, |i| id(r.min(p), i, rep)),
                None => 0,
            },
            Op::Sendrecv | Op::RingShift => {
                let from = c.from(c.offset);
                wrong_in(got, c.lay.recv_count, |i| id(from, i, rep))
            }
            Op::TokenRing => {
                let (left, right) = (c.from(1), c.from(-1));
                wrong_in(got, 2 * m, |i| {
                    if i < m {
                        id(left, i, rep)
                    } else {
                        id(right, i, rep)
                    }
                })
            }
            Op::AllScan => unreachable!("all_scan has its own case"),
        }
    }

    fn corrupt(&mut self) {
        if let Some(x) = self.out_mut().first_mut() {
            *x = x.flip();
        }
    }
}

/// all_scan: `f32` state (`rows × cols`) and per-row decay (the bench's
/// buffers); the exclusive prefix as the library returns it.
struct Scan {
    c: Ctx,
    state: Buf<f32>,
    decay: Buf<f32>,
    out: Vec<f32>,
}

impl Scan {
    fn new(c: Ctx) -> Self {
        Scan {
            c,
            state: Buf::default(),
            decay: Buf::default(),
            out: Vec::new(),
        }
    }

    fn rows_cols(&self) -> (usize, usize) {
        self.c.lay.rows_cols
    }
}

impl<F: Fabric + ?Sized> Case<F> for Scan {
    fn init(&mut self, rep: u64) {
        let (rows, cols) = self.rows_cols();
        let r = self.c.r;
        self.state = filled(rows * cols, |i| scan_state(r, i, rep));
        self.decay = filled(rows, |i| scan_decay(r, i, rep));
        self.out.clear();
    }

    fn run(&mut self, f: &F) -> Result<()> {
        let (rows, cols) = self.rows_cols();
        let blocks = self.c.scan_blocks.clamp(1, rows.max(1));
        let res = all_scan_diag(
            f,
            CH_DATA,
            DiagState {
                state: &self.state,
                decay: &self.decay,
                cols,
            },
            self.c.scan_dir,
            blocks,
            false,
        )?;
        if self.c.in_place {
            copy_slice(&mut self.state, &res.exclusive);
        } else {
            self.out = res.exclusive;
        }
        Ok(())
    }

    fn wrong(&self, rep: u64) -> u64 {
        let (rows, cols) = self.rows_cols();
        let got: &[f32] = if self.c.in_place {
            &self.state
        } else {
            &self.out
        };
        let reverse = self.c.scan_dir == ScanDirection::Reverse;
        let (r, n) = (self.c.r, self.c.n);
        wrong_in(got, rows * cols, |i| {
            scan_expected(r, n, i, cols, rep, reverse)
        })
    }

    fn corrupt(&mut self) {
        let out: &mut [f32] = if self.c.in_place {
            &mut self.state
        } else {
            &mut self.out
        };
        if let Some(x) = out.first_mut() {
            *x = x.flip();
        }
    }
}

fn make_case<F: Fabric + ?Sized>(dtype: DType, c: Ctx) -> Box<dyn Case<F>> {
    if c.op == Op::AllScan {
        return Box::new(Scan::new(c));
    }
    match dtype {
        DType::U8 => Box::new(Coll::<u8>::new(c)),
        DType::I32 => Box::new(Coll::<i32>::new(c)),
        DType::I64 => Box::new(Coll::<i64>::new(c)),
        DType::F16 => Box::new(Coll::<f16>::new(c)),
        DType::BF16 => Box::new(Coll::<bf16>::new(c)),
        DType::F32 => Box::new(Coll::<f32>::new(c)),
        DType::F64 => Box::new(Coll::<f64>::new(c)),
        // `-d` accepts element types only (`args::parse_dtypes`).
        other => unreachable!("the bench does not run {other}"),
    }
}

/// One half's aggregated measurement.
struct Measured {
    /// Seconds per iteration, aggregated over the ranks as `-a` says (the
    /// median window's with `--repeats`).
    secs: f64,
    /// Wrong elements summed over ranks (`None` without `-c`).
    wrong: Option<u64>,
    /// Bytes all ranks sent for the half (warm-up, barrier, timed and check iterations).
    bytes_sent: u64,
}

/// Runs one half and aggregates it over the ranks.
fn measure<'a, F: Fabric + ?Sized>(
    f: &Counting<'a, F>,
    case: &mut dyn Case<Counting<'a, F>>,
    s: &Settings,
    corrupt: bool,
) -> Result<Measured> {
    let sent0 = f.sent();
    case.init(0);
    for _ in 0..s.warmup {
        case.run(f)?;
    }
    // `--repeats` windows, each started together by a barrier (as the
    // peers' scripts time theirs); each window's time is aggregated over
    // the ranks below, then the median window is reported.
    let mut windows = Vec::with_capacity(s.repeats as usize);
    for _ in 0..s.repeats {
        barrier(f, CH_CTRL)?;
        let t0 = Instant::now();
        for _ in 0..s.iters {
            case.run(f)?;
        }
        let mut secs = t0.elapsed().as_secs_f64() / f64::from(s.iters);
        if s.op == Op::Pingpong {
            secs /= 2.0; // one way: half the round trip
        }
        windows.push(secs);
    }
    let mut wrong = 0u64;
    for c in 0..s.checks {
        let rep = u64::from(c);
        case.init(rep);
        case.run(f)?;
        if corrupt && c + 1 == s.checks {
            case.corrupt();
        }
        wrong += case.wrong(rep);
    }
    let sent = f.sent() - sent0;
    // Exact in f64 for any realistic count (below 2^53).
    let mut agg = [wrong as f64, sent as f64];
    all_reduce(f, CH_CTRL, &mut agg, ReduceOp::Sum).context("aggregating the results")?;
    match s.average {
        Average::Mean => {
            all_reduce(f, CH_CTRL, &mut windows, ReduceOp::Sum).context("aggregating the times")?;
            windows.iter_mut().for_each(|w| *w /= f.size() as f64);
        }
        Average::Rank0 => {
            broadcast(f, CH_CTRL, &mut windows, 0).context("aggregating the times")?
        }
        Average::Min => {
            all_reduce(f, CH_CTRL, &mut windows, ReduceOp::Min).context("aggregating the times")?
        }
        Average::Max => {
            all_reduce(f, CH_CTRL, &mut windows, ReduceOp::Max).context("aggregating the times")?
        }
    }
    Ok(Measured {
        secs: median(&mut windows),
        wrong: (s.checks > 0).then_some(agg[0] as u64),
        bytes_sent: agg[1] as u64,
    })
}

/// The median of the windows' times (the mean of the middle two for an
/// even count, as Python's `statistics.median`, which the peers' scripts
/// use). `windows` is not empty (`--repeats` is at least 1).
fn median(windows: &mut [f64]) -> f64 {
    windows.sort_by(f64::total_cmp);
    let m = windows.len() / 2;
    if windows.len() % 2 == 1 {
        windows[m]
    } else {
        (windows[m - 1] + windows[m]) / 2.0
    }
}

/// What the preamble notes about op-specific settings.
fn notes(s: &Settings, n: usize) -> Vec<String> {
    let mut v = op_notes(s, n);
    if s.repeats > 1 {
        v.push(format!(
            "repeats: {} timed windows of {} iterations per size and half; the median window's time is reported",
            s.repeats, s.iters
        ));
    }
    v
}

/// [`notes`] about the op itself.
fn op_notes(s: &Settings, n: usize) -> Vec<String> {
    match s.op {
        Op::Sendrecv => vec!["sendrecv: rank r sends to r+1 and receives from r-1".into()],
        Op::Pingpong => vec![
            "pingpong: ranks 2i and 2i+1 bounce the buffer (2i sends, 2i+1 sends it back); time is half the round trip"
                .into(),
        ],
        Op::RingShift => vec![format!(
            "ring_shift offset: {} (rank r sends to r{:+} mod {n} and receives from r{:+} mod {n})",
            s.offset,
            s.offset,
            -i128::from(s.offset)
        )],
        Op::TokenRing => vec![
            "token_ring: size and bandwidth count both directions (half to r+1 on channel 0, half to r-1 on channel 1)"
                .into(),
        ],
        Op::AllScan => vec![format!(
            "all_scan: f32 state of rows x {} cols (fewer cols for tiny sizes), {} row block(s), {}; algbw = state bytes / time",
            s.scan_cols,
            s.scan_blocks,
            if s.scan_reverse { "reverse" } else { "forward" }
        )],
        _ => vec![],
    }
}

/// The number of rows a run prints.
pub fn row_count(s: &Settings) -> usize {
    s.dtypes.len() * s.redops.len() * s.sizes.len()
}

/// What a rank's [`bench()`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The rows, aggregated over the ranks (the same on every rank).
    pub rows: Vec<Row>,
    /// Rank 0: the payload bytes all ranks handed to the fabric for other
    /// ranks during the whole run ([`crate::count`]), including the rank
    /// table, barriers, aggregations and this count's own messages; `None`
    /// on the other ranks.
    pub bytes_sent: Option<u64>,
}

/// Runs the whole sweep on this rank. Rank 0 passes the table's text to
/// `out` piece by piece (preamble, column heads, each row as it is measured,
/// footer); `step` is called after each row on every rank. Every rank returns
/// the rows. `corrupt` turns the test hook on (used on the last rank).
///
/// Every message goes through a [`Counting`] adapter: each half records the
/// bytes its op sent, and the footer gives the run's total.
pub fn bench<F: Fabric + ?Sized>(
    f: &F,
    s: &Settings,
    me: &RankInfo,
    corrupt: bool,
    out: &mut dyn FnMut(&str),
    step: &mut dyn FnMut(&Row),
) -> Result<Outcome> {
    let f = &Counting::new(f);
    let (r, n) = (f.rank(), f.size());
    check_job(s.op, s.root, n as u32).map_err(anyhow::Error::msg)?;
    let records = all_gather(f, CH_CTRL, &me.encode()).context("gathering the rank table")?;
    if r == 0 {
        out(&preamble(&Preamble {
            op: s.op,
            nranks: n,
            minbytes: s.minbytes,
            maxbytes: s.maxbytes,
            step: s.step.describe(),
            warmup: s.warmup,
            iters: s.iters,
            checks: s.checks,
            blocking: s.blocking,
            notes: notes(s, n),
            ranks: records.chunks(RECORD).map(RankInfo::decode).collect(),
        }));
        out(&table_head());
    }
    let corrupt_here = corrupt && r + 1 == n;
    let mut rows = Vec::with_capacity(row_count(s));
    for &dtype in &s.dtypes {
        for &redop in &s.redops {
            for &size in &s.sizes {
                let lay = layout(s.op, dtype.size(), size, n, s.scan_cols);
                let ctx = |in_place| Ctx {
                    op: s.op,
                    redop,
                    r,
                    n,
                    root: s.root as usize,
                    offset: s.offset,
                    lay,
                    in_place,
                    scan_blocks: s.scan_blocks,
                    scan_dir: if s.scan_reverse {
                        ScanDirection::Reverse
                    } else {
                        ScanDirection::Forward
                    },
                };
                let what =
                    |half: &str| format!("{} {} B {} {half}", s.op, lay.bytes, nccl_name(dtype));
                let oop = measure(
                    f,
                    make_case::<Counting<'_, F>>(dtype, ctx(false)).as_mut(),
                    s,
                    corrupt_here,
                )
                .with_context(|| what("out-of-place"))?;
                let ip = measure(
                    f,
                    make_case::<Counting<'_, F>>(dtype, ctx(true)).as_mut(),
                    s,
                    corrupt_here,
                )
                .with_context(|| what("in-place"))?;
                let mut row = Row::new(
                    s.op,
                    n,
                    &lay,
                    (
                        nccl_name(dtype),
                        if s.op.reduces() {
                            redop_name(redop)
                        } else {
                            "none"
                        },
                        if s.op.rooted() { i64::from(s.root) } else { -1 },
                    ),
                    (oop.secs, oop.wrong),
                    (ip.secs, ip.wrong),
                );
                row.out_of_place.bytes_sent = oop.bytes_sent;
                row.in_place.bytes_sent = ip.bytes_sent;
                if r == 0 {
                    out(&(row_text(&row) + "\n"));
                }
                step(&row);
                rows.push(row);
            }
        }
    }
    let bytes_sent = total_sent(f, CH_CTRL).context("counting the bytes sent")?;
    if let Some(total) = bytes_sent {
        out(&footer(s.op, &rows, Some(total)));
    }
    Ok(Outcome { rows, bytes_sent })
}

/// nccl-tests' reduction names.
pub const fn redop_name(op: ReduceOp) -> &'static str {
    match op {
        ReduceOp::Sum => "sum",
        ReduceOp::Prod => "prod",
        ReduceOp::Min => "min",
        ReduceOp::Max => "max",
        ReduceOp::Avg => "avg",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{BenchArgs, Settings};
    use clap::Parser;
    use std::sync::Arc;
    use zccl_primitives::sim::run_ranks;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: BenchArgs,
    }

    fn settings(args: &str) -> Settings {
        let t = T::try_parse_from(std::iter::once("zccl-bench").chain(args.split_whitespace()))
            .unwrap();
        t.a.op.settings().unwrap()
    }

    /// Runs `args` on `n` simulated ranks; returns every rank's rows and rank 0's text.
    fn sim(n: usize, args: &str, corrupt: bool) -> (Vec<Vec<Row>>, String) {
        let s = Arc::new(settings(args));
        let out = run_ranks(n, move |f| {
            let me = RankInfo {
                pid: 100 + f.rank() as u32,
                host: "sim".into(),
                transport: String::new(),
            };
            let mut text = String::new();
            let rows = bench(f, &s, &me, corrupt, &mut |t| text.push_str(t), &mut |_| {})
                .unwrap_or_else(|e| panic!("{e:#}"))
                .rows;
            (rows, text)
        });
        let text = out[0].1.clone();
        assert!(
            out[1..].iter().all(|(_, t)| t.is_empty()),
            "only rank 0 prints"
        );
        (out.into_iter().map(|(r, _)| r).collect(), text)
    }

    #[test]
    fn the_median_window_is_reported() {
        assert_eq!(median(&mut [3.0]), 3.0);
        assert_eq!(median(&mut [9.0, 1.0, 2.0]), 2.0);
        // Even counts: the mean of the middle two, as Python's statistics.median.
        assert_eq!(median(&mut [4.0, 1.0, 9.0, 2.0]), 3.0);
        assert_eq!(median(&mut [f64::INFINITY, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn repeats_time_several_windows_and_say_so() {
        // Three windows of two iterations: each window's barrier and every
        // iteration reach the fabric, so the bytes sent grow with the
        // windows; the rows still check clean, and the preamble says how
        // the time was taken.
        let (one, text1) = sim(2, "all_reduce -b 64 -e 64 -n 2 -w 0 -c 1", false);
        let (three, text3) = sim(
            2,
            "all_reduce -b 64 -e 64 -n 2 -w 0 -c 1 --repeats 3",
            false,
        );
        assert_eq!(all_wrong(&three[0]), vec![(Some(0), Some(0))]);
        let sent = |rows: &[Vec<Row>]| rows[0][0].out_of_place.bytes_sent;
        assert!(
            sent(&three) > sent(&one),
            "{} vs {}",
            sent(&three),
            sent(&one)
        );
        assert!(three[0][0].out_of_place.time_us > 0.0);
        assert!(!text1.contains("repeats:"), "{text1}");
        assert!(
            text3.contains("# repeats: 3 timed windows of 2 iterations"),
            "{text3}"
        );
    }

    fn all_wrong(rows: &[Row]) -> Vec<(Option<u64>, Option<u64>)> {
        rows.iter()
            .map(|r| (r.out_of_place.wrong, r.in_place.wrong))
            .collect()
    }

    const OPS: [&str; 9] = [
        "all_reduce",
        "all_gather",
        "reduce_scatter",
        "broadcast -r 1",
        "alltoall",
        "sendrecv",
        "ring_shift --offset 2",
        "token_ring",
        "all_scan --cols 4 --blocks 3",
    ];

    #[test]
    fn every_op_type_and_reduction_checks_clean_on_the_simulated_fabric() {
        for n in [2, 3] {
            for op in OPS {
                let args = format!("{op} -b 0 -e 200 -i 67 -n 1 -w 0 -c 2 -d all -o all");
                let (ranks, text) = sim(n, &args, false);
                let rows = &ranks[0];
                assert!(!rows.is_empty());
                for (i, w) in all_wrong(rows).iter().enumerate() {
                    assert_eq!(*w, (Some(0), Some(0)), "{op} n={n} row {i}:\n{text}");
                }
                // Every rank saw the same aggregated rows.
                assert!(ranks.iter().all(|r| all_wrong(r) == all_wrong(rows)));
                assert!(text.contains("# Out of bounds values : 0 OK"), "{text}");
                assert_eq!(text.matches("#  Rank ").count(), n);
            }
        }
    }

    #[test]
    fn ring_shift_offsets_at_the_ends_of_i64_check_clean() {
        for offset in [i64::MIN, i64::MIN + 1, i64::MAX, -7] {
            let args = format!("ring_shift --offset={offset} -b 8 -e 64 -n 1 -w 0");
            let (ranks, text) = sim(3, &args, false);
            for (i, w) in all_wrong(&ranks[0]).iter().enumerate() {
                assert_eq!(*w, (Some(0), Some(0)), "offset {offset} row {i}:\n{text}");
            }
            assert!(
                text.contains(&format!("r{:+} mod 3", -i128::from(offset))),
                "{text}"
            );
        }
    }

    #[test]
    fn one_rank_and_larger_sizes() {
        for op in OPS {
            let op = op.replace("-r 1", "-r 0");
            let (ranks, text) = sim(1, &format!("{op} -b 1K -e 4K -f 4 -n 2 -c 1"), false);
            assert!(
                all_wrong(&ranks[0])
                    .iter()
                    .all(|w| *w == (Some(0), Some(0))),
                "{text}"
            );
        }
        // Broadcast and all_scan chains over 4 ranks at a size past the chain segment.
        let (ranks, _) = sim(4, "broadcast -r 3 -b 600K -e 600K -n 1 -w 0 -d half", false);
        assert_eq!(all_wrong(&ranks[0]), vec![(Some(0), Some(0))]);
        let (ranks, _) = sim(4, "all_scan --reverse -b 64K -e 64K -n 1 -w 0", false);
        assert_eq!(all_wrong(&ranks[0]), vec![(Some(0), Some(0))]);
    }

    #[test]
    fn the_corruption_hook_is_counted() {
        for op in OPS {
            let (ranks, text) = sim(3, &format!("{op} -b 1K -e 1K -n 1 -w 0 -c 2"), true);
            assert_eq!(
                all_wrong(&ranks[0]),
                vec![(Some(1), Some(1))],
                "{op}\n{text}"
            );
            assert!(text.contains("# Out of bounds values : 2 FAILED"), "{text}");
        }
        assert!(corrupt_requested(Some("1")));
        assert!(!corrupt_requested(Some("0")) && !corrupt_requested(Some("")));
        assert!(!corrupt_requested(None));
    }

    #[test]
    fn no_check_means_na() {
        let (ranks, text) = sim(2, "all_reduce -b 1K -e 1K -n 1 -c 0", true);
        assert_eq!(all_wrong(&ranks[0]), vec![(None, None)]);
        assert!(text.contains("N/A"));
    }

    #[test]
    fn rows_and_columns() {
        let (ranks, text) = sim(
            2,
            "reduce_scatter -b 1K -e 4K -f 2 -n 1 -d double -o max",
            false,
        );
        let rows = &ranks[0];
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].size, rows[0].count, rows[0].dtype, rows[0].redop),
            (1024, 64, "double", "max")
        );
        assert_eq!(rows[0].root, -1);
        assert!(
            rows.iter()
                .all(|r| r.out_of_place.time_us > 0.0 && r.in_place.busbw > 0.0)
        );
        assert!(
            text.contains("#  Rank  1 Group  0 Pid    101 on        sim device  - host memory\n")
        );
        let (ranks, _) = sim(3, "broadcast -r 2 -b 64 -e 64 -n 1 -d uint8", false);
        assert_eq!((ranks[0][0].root, ranks[0][0].redop), (2, "none"));
    }

    #[test]
    fn bytes_sent_are_counted_per_half_and_in_total() {
        let s = Arc::new(settings("sendrecv -b 1K -e 1K -n 3 -w 1 -c 1"));
        let out = run_ranks(3, move |f| {
            let me = RankInfo::default();
            let mut text = String::new();
            let o = bench(f, &s, &me, false, &mut |t| text.push_str(t), &mut |_| {}).unwrap();
            (o, text)
        });
        let (o, text) = &out[0];
        // 1 warm-up + 3 timed + 1 check iterations of 1 KiB per rank, 3 ranks,
        // plus the barrier's few bytes.
        let op_bytes = 5 * 1024 * 3;
        for h in [&o.rows[0].out_of_place, &o.rows[0].in_place] {
            assert!(
                (op_bytes..op_bytes + 1024).contains(&h.bytes_sent),
                "{}",
                h.bytes_sent
            );
        }
        let total = o.bytes_sent.unwrap();
        let halves = o.rows[0].out_of_place.bytes_sent + o.rows[0].in_place.bytes_sent;
        assert!(
            total > halves && total < halves + 4096,
            "{total} vs {halves}"
        );
        assert!(
            text.contains(&format!("# Bytes sent by all ranks : {total}\n")),
            "{text}"
        );
        assert!(out[1..].iter().all(|(o, _)| o.bytes_sent.is_none()));
    }

    #[test]
    fn rank_records_round_trip() {
        let me = RankInfo {
            pid: 123456,
            host: "a-very-long-host-name.example.com".repeat(5),
            transport: "shm+tcp".into(),
        };
        let (pid, host, t) = RankInfo::decode(&me.encode());
        assert_eq!((pid, t.as_str()), (123456, "shm+tcp"));
        assert_eq!(host.len(), RECORD - 22);
        assert!(me.host.starts_with(&host));
    }
}

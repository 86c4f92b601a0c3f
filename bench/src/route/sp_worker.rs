//! One rank of an SP scenario of `zccl bench route` (the hidden `--worker`
//! mode for `token_ring`, `token_ring_block`, `all_scan`; see
//! [`super::sp`]).
//!
//! 1. Join the job and pass a barrier.
//! 2. Build the data (payloads, expected blocks, the All-Scan states and the
//!    expected prefix) and warm up: one untimed, checked step of every
//!    strategy with at most [`WARM_BYTES`].
//! 3. `reps` times, every strategy in turn: clear the receive buffers, pass
//!    a barrier, note the time, run the primitive over the communicator,
//!    note the time, check every received byte.
//! 4. A last barrier, then `SP-RESULT` with this rank's steps.
//!
//! Shifts use channels 1 (forward) and 2 (back), All-Scan and all-gather
//! channel 1; barriers channel 0. `ZCCL_BENCH_CORRUPT=1` flips one bit of
//! what this rank received in every timed step before the check (a test
//! hook: the run must report wrong data).

use anyhow::{Context, Result, bail, ensure};
use zccl_primitives::collectives::all_gather_into;
use zccl_primitives::dtype::{as_bytes, as_bytes_mut};
use zccl_primitives::ring::{ShiftInto, bidir_ring_step_into, ring_shift_into};
use zccl_primitives::scan::{DiagState, all_scan_diag};
use zccl_primitives::schedule::scan::ScanDirection;
use zccl_runtime::Communicator;

use super::pattern::{fill, first_difference};
use super::protocol::{SpRankReport, SpStep, sp_result_line};
use super::scenario::{Scenario, Shape};
use super::sp::{SCAN_COLS, scan_rows, strategies};
use super::worker::{barrier, now_ns, say};
use crate::runner::{CORRUPT_ENV, corrupt_requested};

/// Largest block of the warm-up.
pub const WARM_BYTES: u64 = 1 << 20;

/// Channels of the barriers, the forward direction and the back direction.
const CH_CTL: u32 = 0;
const CH_FWD: u32 = 1;
const CH_BWD: u32 = 2;

/// Runs this rank of `scenario`; errors end the process with a message.
pub fn run(shape: Shape, scenario: Scenario, bytes: u64, reps: u32, blocks: usize) -> Result<()> {
    let comm = Communicator::from_env().context("cannot join the job")?;
    let (me, n) = (comm.rank(), comm.size());
    ensure!(
        n as usize == shape.world(),
        "the job has {n} ranks, the scenario {}",
        shape.world()
    );
    let ctl = comm.channel(CH_CTL);
    let corrupt = corrupt_requested(std::env::var(CORRUPT_ENV).ok().as_deref());
    barrier(&ctl, me, n).context("first barrier")?;
    let bytes = usize::try_from(bytes).context("--bytes too large")?;
    let sync = || barrier(&ctl, me, n);
    let mut steps = Vec::new();
    let mut repeat = |case: &mut dyn Case, warm: &mut dyn Case| -> Result<()> {
        for &s in strategies(scenario) {
            let t = warm
                .step(&comm, s, &sync, false)
                .with_context(|| format!("warm-up {s}"))?;
            ensure!(
                t.verified,
                "warm-up {s}: wrong data at byte {}",
                t.first_bad.unwrap_or(0)
            );
        }
        for rep in 0..reps {
            for &s in strategies(scenario) {
                let t = case
                    .step(&comm, s, &sync, corrupt)
                    .with_context(|| format!("{s} repetition {rep}"))?;
                steps.push(SpStep {
                    strategy: s.to_string(),
                    rep,
                    start_ns: t.start_ns,
                    end_ns: t.end_ns,
                    verified: t.verified,
                    first_bad: t.first_bad,
                });
            }
        }
        Ok(())
    };
    let warm = bytes.min(WARM_BYTES as usize);
    if scenario == Scenario::AllScan {
        let rows = scan_rows(bytes as u64, blocks).map_err(anyhow::Error::msg)?;
        let warm_rows = match scan_rows(warm as u64, blocks) {
            Ok(r) => r,
            Err(_) => rows,
        };
        let (me, n) = (me as usize, n as usize);
        repeat(
            &mut Scan::new(me, n, rows, blocks),
            &mut Scan::new(me, n, warm_rows, blocks),
        )?;
    } else {
        repeat(&mut Shift::new(me, n, bytes), &mut Shift::new(me, n, warm))?;
    }
    barrier(&ctl, me, n).context("last barrier")?;
    say(&sp_result_line(&SpRankReport { rank: me, steps }));
    drop(comm);
    Ok(())
}

/// One strategy's step of this rank, with its buffers.
trait Case {
    /// Clears what is received, passes `sync` (a barrier), runs the
    /// primitive, and checks what came (after the corruption hook).
    fn step(
        &mut self,
        f: &Communicator,
        strategy: &str,
        sync: &dyn Fn() -> Result<()>,
        corrupt: bool,
    ) -> Result<Timed>;
}

/// The pattern id of what rank `rank` sends forward (`dir` 0) or back
/// (`dir` 1): distinct for every rank and direction.
fn pattern_id(rank: u32, dir: u32) -> u32 {
    rank * 2 + dir
}

/// Flips one bit in the middle of `got` (the corruption hook).
fn flip(got: &mut [u8]) {
    if !got.is_empty() {
        let k = got.len() / 2;
        got[k] ^= 1;
    }
}

/// The first wrong byte of `got` against `want`, after the hook.
fn check(got: &mut [u8], want: &[u8], corrupt: bool) -> Option<u64> {
    if corrupt {
        flip(got);
    }
    first_difference(got, want).map(|k| k as u64)
}

/// Start and end of this rank's part of a step, and its check.
struct Timed {
    start_ns: u64,
    end_ns: u64,
    verified: bool,
    first_bad: Option<u64>,
}

/// The ring shifts' buffers: what goes forward and back, what must come.
struct Shift {
    fwd: Vec<u8>,
    bwd: Vec<u8>,
    want_fwd: Vec<u8>,
    want_bwd: Vec<u8>,
    got_fwd: Vec<u8>,
    got_bwd: Vec<u8>,
}

impl Shift {
    fn new(me: u32, n: u32, len: usize) -> Self {
        // Forward (+1): from rank me-1; back (-1): from rank me+1.
        let (left, right) = ((me + n - 1) % n, (me + 1) % n);
        Shift {
            fwd: fill(pattern_id(me, 0), len),
            bwd: fill(pattern_id(me, 1), len),
            want_fwd: fill(pattern_id(left, 0), len),
            want_bwd: fill(pattern_id(right, 1), len),
            got_fwd: vec![0; len],
            got_bwd: vec![0; len],
        }
    }
}

impl Case for Shift {
    fn step(
        &mut self,
        f: &Communicator,
        strategy: &str,
        sync: &dyn Fn() -> Result<()>,
        corrupt: bool,
    ) -> Result<Timed> {
        self.got_fwd.fill(0);
        self.got_bwd.fill(0);
        sync()?;
        let start_ns = now_ns();
        let back = match strategy {
            "one_way" => {
                ring_shift_into(f, CH_FWD, &self.fwd, &mut self.got_fwd, 1)?;
                false
            }
            "two_one_way" => {
                ring_shift_into(f, CH_FWD, &self.fwd, &mut self.got_fwd, 1)?;
                ring_shift_into(f, CH_BWD, &self.bwd, &mut self.got_bwd, -1)?;
                true
            }
            "bidir" => {
                bidir_ring_step_into(
                    f,
                    ShiftInto {
                        channel: CH_FWD,
                        offset: 1,
                        send: &self.fwd,
                        recv: &mut self.got_fwd,
                    },
                    ShiftInto {
                        channel: CH_BWD,
                        offset: -1,
                        send: &self.bwd,
                        recv: &mut self.got_bwd,
                    },
                )?;
                true
            }
            other => bail!("no such strategy {other:?}"),
        };
        let end_ns = now_ns();
        // Offsets count in the forward block, then the back one.
        let len = self.fwd.len() as u64;
        let first_bad = check(&mut self.got_fwd, &self.want_fwd, corrupt).or_else(|| {
            back.then(|| check(&mut self.got_bwd, &self.want_bwd, false).map(|k| len + k))
                .flatten()
        });
        Ok(Timed {
            start_ns,
            end_ns,
            verified: first_bad.is_none(),
            first_bad,
        })
    }
}

/// Rank `p`'s All-Scan state: `len` `f32` from its pattern (24-bit
/// integers over 256, exact and distinct along the buffer).
fn scan_state(p: usize, len: usize) -> Vec<f32> {
    fill(0x4000 + p as u32, len * 4)
        .chunks_exact(4)
        .map(|w| (u32::from_le_bytes(w.try_into().expect("4 bytes")) >> 8) as f32 / 256.0)
        .collect()
}

/// Rank `p`'s per-row decay: 0.5, 0.75 or 1 from its pattern.
fn scan_decay(p: usize, rows: usize) -> Vec<f32> {
    fill(0x6000 + p as u32, rows * 4)
        .chunks_exact(4)
        .map(|w| {
            [0.5, 0.75, 1.0][(u32::from_le_bytes(w.try_into().expect("4 bytes")) % 3) as usize]
        })
        .collect()
}

/// All-Scan's buffers: this rank's state and decay, every rank's state
/// (what the all-gather must deliver) and the prefix All-Scan must deliver.
struct Scan {
    state: Vec<f32>,
    decay: Vec<f32>,
    blocks: usize,
    want_prefix: Vec<f32>,
    want_all: Vec<f32>,
    got_all: Vec<f32>,
}

impl Scan {
    fn new(me: usize, n: usize, rows: usize, blocks: usize) -> Self {
        let len = rows * SCAN_COLS;
        let mut want_all = Vec::with_capacity(n * len);
        let mut want_prefix = vec![0f32; len];
        for p in 0..n {
            let s = scan_state(p, len);
            if p < me {
                // The recurrence of all_scan_diag, in its order: a multiply
                // then an add, never fused.
                let d = scan_decay(p, rows);
                for (i, (acc, x)) in want_prefix.iter_mut().zip(&s).enumerate() {
                    let scaled = d[i / SCAN_COLS] * *acc;
                    *acc = scaled + *x;
                }
            }
            want_all.extend_from_slice(&s);
        }
        Scan {
            state: want_all[me * len..(me + 1) * len].to_vec(),
            decay: scan_decay(me, rows),
            blocks,
            want_prefix,
            got_all: vec![0f32; want_all.len()],
            want_all,
        }
    }
}

impl Case for Scan {
    fn step(
        &mut self,
        f: &Communicator,
        strategy: &str,
        sync: &dyn Fn() -> Result<()>,
        corrupt: bool,
    ) -> Result<Timed> {
        self.got_all.fill(0.0);
        sync()?;
        let start_ns = now_ns();
        let first_bad = match strategy {
            "all_scan" => {
                let out = all_scan_diag(
                    f,
                    CH_FWD,
                    DiagState {
                        state: &self.state,
                        decay: &self.decay,
                        cols: SCAN_COLS,
                    },
                    ScanDirection::Forward,
                    self.blocks,
                    false,
                )?;
                let end_ns = now_ns();
                let mut got = out.exclusive;
                let bad = check(as_bytes_mut(&mut got), as_bytes(&self.want_prefix), corrupt);
                (end_ns, bad)
            }
            "all_gather" => {
                all_gather_into(f, CH_FWD, &self.state, &mut self.got_all)?;
                let end_ns = now_ns();
                let bad = check(
                    as_bytes_mut(&mut self.got_all),
                    as_bytes(&self.want_all),
                    corrupt,
                );
                (end_ns, bad)
            }
            other => bail!("no such strategy {other:?}"),
        };
        let (end_ns, first_bad) = first_bad;
        Ok(Timed {
            start_ns,
            end_ns,
            verified: first_bad.is_none(),
            first_bad,
        })
    }
}

//! Soak test rank program: mixed collectives for a fixed time, every result
//! checked, with injected stalls and RSS sampling. Run by `bench/soak.sh`
//! (not in CI); see the "Soak" section of `docs/reliability.md`.
//!
//! ```sh
//! cargo build --release --bin zccl && cargo build --release -p zccl-bench --example soak
//! target/release/zccl run -n 4 -- target/release/examples/soak --minutes 1
//! ```
//!
//! Every rank draws the same sequence of operations from one seeded
//! generator (`--seed`), so all ranks agree on the kind, element type,
//! reduction, size, root, channel and counts of each operation without
//! talking about it. The kinds: all_reduce (automatic, ring or tree
//! algorithm; sometimes through `Labelled`), all_reduce_into, all_gather,
//! reduce_scatter, broadcast (rotating root), all_to_all, all_to_all_v
//! (random counts), ring_shift, ring_shift_into, barrier, and an overlap of
//! iall_reduce with iall_gather on two channels. Buffer sizes are
//! log-uniform from 1 B to `--max-bytes` (16 MiB), with a few empty ones.
//!
//! Inputs are a function of (seed, rank, iteration, index), so every rank
//! computes the exact expected result locally and compares it element by
//! element: integer reductions wrap (order-independent), float inputs are
//! small multiples of 1/4 (products: 0, ±1, ±2) so every sum and product is
//! exact in the accumulator whatever the schedule's order.
//!
//! Injected stalls: with probability `--stall-prob` per operation, one rank
//! (drawn from the same generator) sleeps 0.1–`--stall-max` s before it
//! starts the operation; the others wait for it inside the collective. That
//! must stay well under `ZCCL_TIMEOUT` (and `ZCCL_PEER_TIMEOUT`): the job
//! has to survive every stall.
//!
//! Output (one line each, `key=value`): `soak-progress` every
//! `--report-secs`, then `soak-summary`, `soak-kind` per kind and
//! `soak-sizes` at the end. Exit code 1 when any result was wrong or any
//! operation failed.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use zccl_primitives::alltoall::{all_to_all, all_to_all_v};
use zccl_primitives::collectives::{
    all_gather, all_reduce, all_reduce_into, all_reduce_with, barrier, broadcast, broadcast_with,
    iall_gather, iall_reduce, reduce_scatter,
};
use zccl_primitives::comm::Labelled;
use zccl_primitives::dtype::{DType, Elem, bf16, f16};
use zccl_primitives::reduce::{ReduceOp, combine_into, finish, to_acc};
use zccl_primitives::ring::{ring_shift, ring_shift_into};
use zccl_primitives::schedule::algo::Algo;
use zccl_primitives::schedule::chunks::chunk_ranges;
use zccl_runtime::Communicator;

// ---------------------------------------------------------------- options

struct Opts {
    minutes: f64,
    seed: u64,
    max_bytes: usize,
    stall_prob: f64,
    stall_min: f64,
    stall_max: f64,
    report_secs: f64,
    warmup_secs: f64,
}

fn parse_opts() -> Result<Opts> {
    let mut o = Opts {
        minutes: 60.0,
        seed: 1,
        max_bytes: 16 << 20,
        stall_prob: 0.005,
        stall_min: 0.1,
        stall_max: 2.0,
        report_secs: 30.0,
        warmup_secs: -1.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| -> Result<String> {
            args.next().with_context(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--minutes" => o.minutes = val(&a)?.parse()?,
            "--seed" => o.seed = val(&a)?.parse()?,
            "--max-bytes" => o.max_bytes = val(&a)?.parse()?,
            "--stall-prob" => o.stall_prob = val(&a)?.parse()?,
            "--stall-min" => o.stall_min = val(&a)?.parse()?,
            "--stall-max" => o.stall_max = val(&a)?.parse()?,
            "--report-secs" => o.report_secs = val(&a)?.parse()?,
            "--warmup-secs" => o.warmup_secs = val(&a)?.parse()?,
            "-h" | "--help" => {
                println!(
                    "soak [--minutes 60] [--seed 1] [--max-bytes 16777216] [--stall-prob 0.005] \
                     [--stall-min 0.1] [--stall-max 2] [--report-secs 30] [--warmup-secs min(120, 10% of run)]"
                );
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a:?} (try --help)"),
        }
    }
    if o.warmup_secs < 0.0 {
        o.warmup_secs = (o.minutes * 6.0).min(120.0);
    }
    if !(o.stall_min > 0.0 && o.stall_max >= o.stall_min) {
        bail!("need 0 < --stall-min <= --stall-max");
    }
    Ok(o)
}

// ---------------------------------------------------------------- randomness

/// SplitMix64's finaliser: a good 64-bit mixing function.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The plan generator: every rank holds one, seeded alike, and draws from
/// it in the same order.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------- elements

/// An element type with an input value for a hash: integers take the whole
/// hash (sums and products wrap, in any order alike); floats take a small
/// multiple of 1/4 (or 0, ±1, ±2 for products), so that every reduction is
/// exact in the accumulator and its result does not depend on the order.
trait Val: Elem {
    fn val(h: u64, prod: bool) -> Self;
}

fn small(h: u64, prod: bool) -> f32 {
    if prod {
        [-2.0, -1.0, 0.0, 1.0, 2.0][(h % 5) as usize]
    } else {
        ((h % 65) as i32 - 32) as f32 * 0.25
    }
}

impl Val for u8 {
    fn val(h: u64, _: bool) -> Self {
        h as u8
    }
}
impl Val for i32 {
    fn val(h: u64, _: bool) -> Self {
        h as i32
    }
}
impl Val for i64 {
    fn val(h: u64, _: bool) -> Self {
        h as i64
    }
}
impl Val for f32 {
    fn val(h: u64, p: bool) -> Self {
        small(h, p)
    }
}
impl Val for f64 {
    fn val(h: u64, p: bool) -> Self {
        small(h, p) as f64
    }
}
impl Val for f16 {
    fn val(h: u64, p: bool) -> Self {
        f16::from_f32(small(h, p))
    }
}
impl Val for bf16 {
    fn val(h: u64, p: bool) -> Self {
        bf16::from_f32(small(h, p))
    }
}

macro_rules! by_dtype {
    ($dt:expr, $T:ident => $body:expr) => {
        match $dt {
            DType::U8 => {
                type $T = u8;
                $body
            }
            DType::I32 => {
                type $T = i32;
                $body
            }
            DType::I64 => {
                type $T = i64;
                $body
            }
            DType::F16 => {
                type $T = f16;
                $body
            }
            DType::BF16 => {
                type $T = bf16;
                $body
            }
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            // The plan picks from `DType::ALL` only.
            other => unreachable!("soak does not run {other}"),
        }
    };
}

// ---------------------------------------------------------------- plan

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    AllReduce,
    AllReduceInto,
    AllGather,
    ReduceScatter,
    Broadcast,
    AllToAll,
    AllToAllV,
    RingShift,
    RingShiftInto,
    Barrier,
    Overlap,
}

const KINDS: [Kind; 11] = [
    Kind::AllReduce,
    Kind::AllReduceInto,
    Kind::AllGather,
    Kind::ReduceScatter,
    Kind::Broadcast,
    Kind::AllToAll,
    Kind::AllToAllV,
    Kind::RingShift,
    Kind::RingShiftInto,
    Kind::Barrier,
    Kind::Overlap,
];

/// Relative frequencies, in the order of [`KINDS`].
const WEIGHTS: [u64; 11] = [4, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AllReduce => "all_reduce",
            Kind::AllReduceInto => "all_reduce_into",
            Kind::AllGather => "all_gather",
            Kind::ReduceScatter => "reduce_scatter",
            Kind::Broadcast => "broadcast",
            Kind::AllToAll => "all_to_all",
            Kind::AllToAllV => "all_to_all_v",
            Kind::RingShift => "ring_shift",
            Kind::RingShiftInto => "ring_shift_into",
            Kind::Barrier => "barrier",
            Kind::Overlap => "iall_reduce+iall_gather",
        }
    }
}

/// One operation, the same on every rank.
struct Plan {
    kind: Kind,
    dt: DType,
    op: ReduceOp,
    /// Elements per rank (the buffer of the operation on one rank).
    elems: usize,
    /// A second size (the all-gather of `Overlap`).
    elems2: usize,
    /// all_reduce: None = automatic (size), else forced.
    algo: Option<Algo>,
    labelled: bool,
    root: usize,
    ch: u32,
    /// all_to_all_v: counts[i][j] = elements rank i sends to rank j.
    /// ring shift: counts[0][i] = bytes rank i sends.
    counts: Vec<Vec<usize>>,
    offset: isize,
    /// (rank, seconds) that sleeps before the operation.
    stall: Option<(usize, f64)>,
}

/// Log-uniform bytes in [1, max], with 3% empty buffers.
fn draw_bytes(g: &mut Rng, max: usize) -> usize {
    if g.below(100) < 3 {
        return 0;
    }
    let b = ((max as f64).log2() * g.unit()).exp2() as usize;
    b.clamp(1, max)
}

fn draw_plan(g: &mut Rng, n: usize, o: &Opts, bcasts: &mut usize) -> Plan {
    let total: u64 = WEIGHTS.iter().sum();
    let mut w = g.below(total);
    let mut kind = KINDS[0];
    for (k, &wk) in KINDS.iter().zip(&WEIGHTS) {
        if w < wk {
            kind = *k;
            break;
        }
        w -= wk;
    }
    let dt = g.pick(&DType::ALL);
    let op = g.pick(&ReduceOp::ALL);
    let bytes = draw_bytes(g, o.max_bytes);
    let mut elems = bytes / dt.size();
    let elems2 = draw_bytes(g, o.max_bytes / n.max(1)) / dt.size();
    let algo = match g.below(4) {
        0 => Some(Algo::Ring),
        1 => Some(Algo::Tree),
        _ => None,
    };
    let labelled = g.below(4) == 0;
    let ch = 1 + g.below(4) as u32;
    let mut counts = Vec::new();
    let mut offset = 1;
    let mut root = 0;
    match kind {
        Kind::AllToAll => elems -= elems % n,
        Kind::AllToAllV => {
            // Each sender splits its elements over the destinations at random
            // cut points (some blocks empty).
            counts = (0..n)
                .map(|_| {
                    let mut cuts: Vec<usize> = (0..n - 1)
                        .map(|_| g.below(elems as u64 + 1) as usize)
                        .collect();
                    cuts.push(0);
                    cuts.push(elems);
                    cuts.sort_unstable();
                    cuts.windows(2).map(|w| w[1] - w[0]).collect()
                })
                .collect();
        }
        Kind::RingShift | Kind::RingShiftInto => {
            // Every rank sends its own number of bytes.
            counts = vec![(0..n).map(|_| draw_bytes(g, o.max_bytes)).collect()];
            offset = 1 + g.below((n as u64 - 1).max(1)) as isize;
            if g.below(2) == 0 {
                offset = -offset;
            }
        }
        Kind::Broadcast => {
            root = *bcasts % n;
            *bcasts += 1;
        }
        _ => {}
    }
    let stall = (g.unit() < o.stall_prob).then(|| {
        let who = g.below(n as u64) as usize;
        let secs = o.stall_min + (o.stall_max - o.stall_min) * g.unit();
        (who, secs)
    });
    Plan {
        kind,
        dt,
        op,
        elems,
        elems2,
        algo,
        labelled,
        root,
        ch,
        counts,
        offset,
        stall,
    }
}

// ---------------------------------------------------------------- execution

struct Ctx {
    comm: Arc<Communicator>,
    r: usize,
    n: usize,
    seed: u64,
}

/// Outcome of one operation: Ok(None) right, Ok(Some(why)) wrong result,
/// Err: the operation failed.
type Outcome = Result<Option<String>>;

fn compare<T: Elem>(what: &str, got: &[T], want: &[T]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!(
            "{what}: {} elements, expected {}",
            got.len(),
            want.len()
        ));
    }
    let bad = got.iter().zip(want).filter(|(a, b)| a != b).count();
    if bad == 0 {
        return None;
    }
    let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
    Some(format!(
        "{what}: {bad} of {} elements differ, first at {i}: got {:?}, expected {:?}",
        got.len(),
        got[i],
        want[i]
    ))
}

impl Ctx {
    /// Rank `rank`'s input of iteration `it` (`salt` tells buffers of one
    /// iteration apart).
    fn input<T: Val>(&self, rank: usize, it: u64, salt: u64, len: usize, prod: bool) -> Vec<T> {
        let base = mix(self.seed
            ^ mix((rank as u64 + 1).wrapping_mul(0x100_0000_01B3))
            ^ mix(it * 8 + salt));
        (0..len as u64)
            .map(|i| T::val(mix(base.wrapping_add(i)), prod))
            .collect()
    }

    /// The reduction of every rank's input with `op`.
    fn reduced<T: Val>(&self, it: u64, salt: u64, len: usize, op: ReduceOp) -> Vec<T> {
        let prod = op == ReduceOp::Prod;
        let mut acc = to_acc(&self.input::<T>(0, it, salt, len, prod));
        for j in 1..self.n {
            combine_into(
                op,
                &mut acc,
                &to_acc(&self.input::<T>(j, it, salt, len, prod)),
            );
        }
        finish::<T>(op, &acc, self.n)
    }

    fn all_reduce<T: Val>(&self, p: &Plan, it: u64) -> Outcome {
        let prod = p.op == ReduceOp::Prod;
        let mut buf = self.input::<T>(self.r, it, 0, p.elems, prod);
        let c = &*self.comm;
        if p.labelled {
            all_reduce(&Labelled::new(c, T::DTYPE), p.ch, &mut buf, p.op)?;
        } else {
            match p.algo {
                None => all_reduce(c, p.ch, &mut buf, p.op)?,
                Some(a) => all_reduce_with(c, p.ch, &mut buf, p.op, a)?,
            }
        }
        Ok(compare(
            "all_reduce",
            &buf,
            &self.reduced::<T>(it, 0, p.elems, p.op),
        ))
    }

    fn all_reduce_into<T: Val>(&self, p: &Plan, it: u64) -> Outcome {
        let prod = p.op == ReduceOp::Prod;
        let input = self.input::<T>(self.r, it, 0, p.elems, prod);
        let mut out = self.input::<T>(self.r, it, 1, p.elems, prod); // overwritten
        all_reduce_into(&*self.comm, p.ch, &input, &mut out, p.op)?;
        Ok(compare(
            "all_reduce_into",
            &out,
            &self.reduced::<T>(it, 0, p.elems, p.op),
        )
        .or_else(|| {
            compare(
                "all_reduce_into input",
                &input,
                &self.input::<T>(self.r, it, 0, p.elems, prod),
            )
        }))
    }

    fn gathered<T: Val>(&self, it: u64, salt: u64, len: usize) -> Vec<T> {
        (0..self.n)
            .flat_map(|j| self.input::<T>(j, it, salt, len, false))
            .collect()
    }

    fn all_gather<T: Val>(&self, p: &Plan, it: u64) -> Outcome {
        let input = self.input::<T>(self.r, it, 0, p.elems, false);
        let out = all_gather(&*self.comm, p.ch, &input)?;
        Ok(compare(
            "all_gather",
            &out,
            &self.gathered::<T>(it, 0, p.elems),
        ))
    }

    fn reduce_scatter<T: Val>(&self, p: &Plan, it: u64) -> Outcome {
        let input = self.input::<T>(self.r, it, 0, p.elems, p.op == ReduceOp::Prod);
        let out = reduce_scatter(&*self.comm, p.ch, &input, p.op)?;
        let mine = chunk_ranges(p.elems, self.n)[self.r].clone();
        Ok(compare(
            "reduce_scatter",
            &out,
            &self.reduced::<T>(it, 0, p.elems, p.op)[mine],
        ))
    }

    fn broadcast<T: Val>(&self, p: &Plan, it: u64) -> Outcome {
        // Every rank starts with its own data; all must end with the root's.
        let mut buf = self.input::<T>(self.r, it, 0, p.elems, false);
        match p.algo {
            None => broadcast(&*self.comm, p.ch, &mut buf, p.root)?,
            Some(a) => broadcast_with(&*self.comm, p.ch, &mut buf, p.root, a)?,
        }
        Ok(compare(
            "broadcast",
            &buf,
            &self.input::<T>(p.root, it, 0, p.elems, false),
        ))
    }

    fn all_to_all<T: Val>(&self, p: &Plan, it: u64) -> Outcome {
        let input = self.input::<T>(self.r, it, 0, p.elems, false);
        let out = all_to_all(&*self.comm, p.ch, &input)?;
        let blk = p.elems / self.n;
        let want: Vec<T> = (0..self.n)
            .flat_map(|j| {
                let v = self.input::<T>(j, it, 0, p.elems, false);
                v[self.r * blk..(self.r + 1) * blk].to_vec()
            })
            .collect();
        Ok(compare("all_to_all", &out, &want))
    }

    fn all_to_all_v<T: Val>(&self, p: &Plan, it: u64) -> Outcome {
        let (r, n) = (self.r, self.n);
        let send = &p.counts[r];
        let recv: Vec<usize> = (0..n).map(|j| p.counts[j][r]).collect();
        let input = self.input::<T>(r, it, 0, send.iter().sum(), false);
        let out = all_to_all_v(&*self.comm, p.ch, &input, send, &recv)?;
        let want: Vec<T> = (0..n)
            .flat_map(|j| {
                let row = &p.counts[j];
                let v = self.input::<T>(j, it, 0, row.iter().sum(), false);
                let off: usize = row[..r].iter().sum();
                v[off..off + row[r]].to_vec()
            })
            .collect();
        Ok(compare("all_to_all_v", &out, &want))
    }

    fn ring_shift(&self, p: &Plan, it: u64, into: bool) -> Outcome {
        let n = self.n as isize;
        let from = (self.r as isize - p.offset).rem_euclid(n) as usize;
        let lens = &p.counts[0];
        let send = self.input::<u8>(self.r, it, 0, lens[self.r], false);
        let want = self.input::<u8>(from, it, 0, lens[from], false);
        if into {
            let mut got = self.input::<u8>(self.r, it, 1, lens[from], false);
            ring_shift_into(&*self.comm, p.ch, &send, &mut got, p.offset)?;
            Ok(compare("ring_shift_into", &got, &want))
        } else {
            let got = ring_shift(&*self.comm, p.ch, send, lens[from], p.offset)?;
            Ok(compare("ring_shift", &got, &want))
        }
    }

    /// iall_reduce on channel 5 and iall_gather on channel 6 in flight at
    /// once; the expected values are computed while they run.
    fn overlap<T: Val>(&self, p: &Plan, it: u64) -> Outcome {
        let prod = p.op == ReduceOp::Prod;
        let a = self.input::<T>(self.r, it, 0, p.elems, prod);
        let b = self.input::<T>(self.r, it, 2, p.elems2, false);
        let ha = iall_reduce(self.comm.clone(), 5, a, p.op);
        let hb = iall_gather(self.comm.clone(), 6, b);
        let want_a = self.reduced::<T>(it, 0, p.elems, p.op);
        let want_b = self.gathered::<T>(it, 2, p.elems2);
        let (ga, gb) = (ha.wait(), hb.wait());
        let (ga, gb) = (ga?, gb?);
        Ok(compare("iall_reduce", &ga, &want_a).or_else(|| compare("iall_gather", &gb, &want_b)))
    }

    fn run(&self, p: &Plan, it: u64) -> Outcome {
        match p.kind {
            Kind::AllReduce => by_dtype!(p.dt, T => self.all_reduce::<T>(p, it)),
            Kind::AllReduceInto => by_dtype!(p.dt, T => self.all_reduce_into::<T>(p, it)),
            Kind::AllGather => by_dtype!(p.dt, T => self.all_gather::<T>(p, it)),
            Kind::ReduceScatter => by_dtype!(p.dt, T => self.reduce_scatter::<T>(p, it)),
            Kind::Broadcast => by_dtype!(p.dt, T => self.broadcast::<T>(p, it)),
            Kind::AllToAll => by_dtype!(p.dt, T => self.all_to_all::<T>(p, it)),
            Kind::AllToAllV => by_dtype!(p.dt, T => self.all_to_all_v::<T>(p, it)),
            Kind::RingShift => self.ring_shift(p, it, false),
            Kind::RingShiftInto => self.ring_shift(p, it, true),
            Kind::Barrier => {
                barrier(&*self.comm, p.ch)?;
                Ok(None)
            }
            Kind::Overlap => by_dtype!(p.dt, T => self.overlap::<T>(p, it)),
        }
    }
}

/// Bytes this rank's buffer(s) of `p` hold.
fn plan_bytes(p: &Plan, r: usize) -> usize {
    match p.kind {
        Kind::Barrier => 0,
        Kind::RingShift | Kind::RingShiftInto => p.counts[0][r],
        Kind::AllToAllV => p.counts[r].iter().sum::<usize>() * p.dt.size(),
        Kind::Overlap => (p.elems + p.elems2) * p.dt.size(),
        _ => p.elems * p.dt.size(),
    }
}

// ---------------------------------------------------------------- RSS

/// (VmRSS, VmHWM, RssAnon, RssShmem, Threads) from /proc/self/status, KiB.
fn status() -> [u64; 5] {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    [
        get("VmRSS:"),
        get("VmHWM:"),
        get("RssAnon:"),
        get("RssShmem:"),
        get("Threads:"),
    ]
}

// ---------------------------------------------------------------- main

#[derive(Default, Clone, Copy)]
struct KindStats {
    ops: u64,
    bytes: u64,
    wrong: u64,
}

fn main() -> ExitCode {
    match soak() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn soak() -> Result<bool> {
    let o = parse_opts()?;
    let comm = Arc::new(Communicator::from_env()?);
    let (r, n) = (comm.rank() as usize, comm.size() as usize);
    let ctx = Ctx {
        comm: comm.clone(),
        r,
        n,
        seed: o.seed,
    };
    let mut g = Rng(mix(o.seed ^ 0x50A4));
    let dur = Duration::from_secs_f64(o.minutes * 60.0);
    let t0 = Instant::now();
    let mut stats = [KindStats::default(); KINDS.len()];
    // Size buckets of the per-rank bytes: 0, <1 KiB, <64 KiB, <1 MiB, >=1 MiB.
    let mut sizes = [0u64; 5];
    let (mut wrong, mut errors, mut stalls, mut stalls_here) = (0u64, 0u64, 0u64, 0u64);
    let mut stall_secs = 0.0;
    let mut bcasts = 0;
    let mut warm: Option<[u64; 5]> = None;
    let mut last_report = (Instant::now(), 0u64, 0u64);
    let mut moved = 0u64;
    let mut it = 0u64;
    println!(
        "soak-start rank={r} ranks={n} minutes={} seed={} max_bytes={} stall_prob={} stall_secs={}..{} pid={}",
        o.minutes,
        o.seed,
        o.max_bytes,
        o.stall_prob,
        o.stall_min,
        o.stall_max,
        std::process::id()
    );
    loop {
        // Every 10 operations the ranks agree whether time is up (rank
        // clocks differ a little; one rank stopping alone would strand the
        // others in a collective).
        if it.is_multiple_of(10) {
            let mut up = [(t0.elapsed() >= dur) as u8];
            if let Err(e) = all_reduce(&*comm, 7, &mut up, ReduceOp::Max) {
                eprintln!("soak: rank {r} it {it}: stop check failed: {e}");
                errors += 1;
                break;
            }
            if up[0] != 0 {
                break;
            }
        }
        let p = draw_plan(&mut g, n, &o, &mut bcasts);
        if let Some((who, secs)) = p.stall {
            stalls += 1;
            if who == r {
                stalls_here += 1;
                stall_secs += secs;
                std::thread::sleep(Duration::from_secs_f64(secs));
            }
        }
        let ki = KINDS.iter().position(|k| *k == p.kind).unwrap();
        let bytes = plan_bytes(&p, r);
        stats[ki].ops += 1;
        stats[ki].bytes += bytes as u64;
        moved += bytes as u64;
        sizes[match bytes {
            0 => 0,
            b if b < 1 << 10 => 1,
            b if b < 64 << 10 => 2,
            b if b < 1 << 20 => 3,
            _ => 4,
        }] += 1;
        match ctx.run(&p, it) {
            Ok(None) => {}
            Ok(Some(why)) => {
                wrong += 1;
                stats[ki].wrong += 1;
                if wrong <= 20 {
                    eprintln!(
                        "soak: rank {r} it {it}: WRONG {} {} {} elems={} ch={}: {why}",
                        p.kind.name(),
                        p.dt,
                        p.op,
                        p.elems,
                        p.ch
                    );
                }
            }
            Err(e) => {
                // A failed collective leaves the channels out of step: stop.
                errors += 1;
                eprintln!(
                    "soak: rank {r} it {it}: ERROR {} {} {} elems={} ch={}: {e:#}",
                    p.kind.name(),
                    p.dt,
                    p.op,
                    p.elems,
                    p.ch
                );
                break;
            }
        }
        it += 1;
        let el = t0.elapsed().as_secs_f64();
        if warm.is_none() && el >= o.warmup_secs {
            warm = Some(status());
        }
        if last_report.0.elapsed().as_secs_f64() >= o.report_secs {
            let dt = last_report.0.elapsed().as_secs_f64();
            let s = status();
            println!(
                "soak-progress rank={r} t={el:.0} it={it} ops_per_s={:.2} mib_per_s={:.1} wrong={wrong} errors={errors} stalls={stalls} rss_kib={} hwm_kib={} anon_kib={} shmem_kib={} threads={}",
                (it - last_report.1) as f64 / dt,
                (moved - last_report.2) as f64 / dt / (1 << 20) as f64,
                s[0],
                s[1],
                s[2],
                s[3],
                s[4]
            );
            last_report = (Instant::now(), it, moved);
        }
    }
    if errors == 0 {
        // Leave together, so no rank reports its peers' exits as failures.
        if let Err(e) = barrier(&*comm, 7) {
            eprintln!("soak: rank {r}: final barrier failed: {e}");
            errors += 1;
        }
    }
    let el = t0.elapsed().as_secs_f64();
    let end = status();
    let warm = warm.unwrap_or(end);
    let ops: u64 = stats.iter().map(|s| s.ops).sum();
    println!(
        "soak-summary rank={r} secs={el:.1} ops={ops} ops_per_s={:.2} mib_moved={:.0} wrong={wrong} errors={errors} stalls_injected={stalls} stalls_here={stalls_here} stall_secs_here={stall_secs:.1} rss_warm_kib={} rss_hwm_kib={} rss_end_kib={} anon_warm_kib={} anon_end_kib={} shmem_end_kib={} threads_end={} warmup_secs={}",
        ops as f64 / el,
        moved as f64 / (1 << 20) as f64,
        warm[0],
        end[1],
        end[0],
        warm[2],
        end[2],
        end[3],
        end[4],
        o.warmup_secs
    );
    for (k, s) in KINDS.iter().zip(&stats) {
        println!(
            "soak-kind rank={r} kind={} ops={} mib={:.1} wrong={}",
            k.name(),
            s.ops,
            s.bytes as f64 / (1 << 20) as f64,
            s.wrong
        );
    }
    println!(
        "soak-sizes rank={r} zero={} lt1k={} lt64k={} lt1m={} ge1m={}",
        sizes[0], sizes[1], sizes[2], sizes[3], sizes[4]
    );
    Ok(wrong == 0 && errors == 0)
}

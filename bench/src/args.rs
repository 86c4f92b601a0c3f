//! The command line: one subcommand per operation, nccl-tests' flags, and
//! their validation into [`Settings`] (pure).
//!
//! | flag | meaning | default |
//! |---|---|---|
//! | `-b, --minbytes SIZE` | smallest size (`K`, `M`, `G` = powers of 1024) | `32M` |
//! | `-e, --maxbytes SIZE` | largest size | `32M` |
//! | `-f, --stepfactor F` | multiply the size by `F` (≥ 2) | |
//! | `-i, --stepbytes SIZE` | add `SIZE` to the size (used when `-f` is absent) | `1M` |
//! | `-n, --iters N` | timed iterations per size | 20 |
//! | `-w, --warmup_iters N` | untimed iterations before them, per size | 1 |
//! | `--repeats R` | timed windows of `-n` iterations; the median window is reported | 1 |
//! | `-c, --check N` | check iterations per size (0: no check, `#wrong` is `N/A`) | 1 |
//! | `-d, --datatype T` | `uint8 int32 int64 half float double bfloat16` or `all` | `float` |
//! | `-o, --op OP` | `sum prod min max avg` or `all` (reducing ops only) | `sum` |
//! | `-r, --root R` | broadcast root | 0 |
//! | `-z, --blocking 0/1` | accepted for compatibility; every op is blocking here | 0 |
//! | `-a, --average 0/1/2/3` | the time reported: rank 0's, the mean over ranks, the minimum, the maximum | 1 |
//! | `-N, --ranks N` | launch N ranks on this host (at most [`crate::launch::MAX_LOCAL_RANKS`], 64), unless already under a launcher ([`crate::launch`]) | 1 |
//! | `--json FILE`, `--csv FILE`, `--plot FILE.svg` | also write the results there | |
//! | `--hold SECS` | after the sweep, keep every rank (and its `/metrics` endpoint) alive for SECS s or until SIGTERM/SIGINT ([`crate::hold`]) | 0 |

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use zccl_primitives::dtype::DType;
use zccl_primitives::reduce::ReduceOp;

use crate::ops::Op;
use crate::sweep::{self, Step};

/// `zccl-bench` / `zccl bench`: the operation and its flags.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The operation to measure, or `route`.
    #[command(subcommand)]
    pub op: BenchCmd,
}

/// The subcommands: one per operation, and the router benchmark.
#[derive(Subcommand, Debug, Clone)]
pub enum BenchCmd {
    /// An operation, measured the nccl-tests way.
    #[command(flatten)]
    Op(Box<OpCmd>),
    /// The NIC-aware router on a netns testbed: static affinity vs routed (needs root).
    ///
    /// Builds hosts x NICs as network namespaces with rate-limited NICs, starts
    /// ranks in them, and runs the imbalanced, balanced, failure and slow
    /// scenarios with ZCCL_ROUTER=affinity and ZCCL_ROUTER=on, every byte
    /// verified. Without root it prints `skipping: ...` and exits 0. See
    /// docs/bench.md.
    Route(crate::route::RouteArgs),
    /// Any other name: an error that lists the operations ([`crate::cli::run_as`]).
    #[command(external_subcommand)]
    Unknown(Vec<OsString>),
}

impl BenchCmd {
    /// [`OpCmd::settings`]; `route` has its own ([`crate::route::RouteArgs::settings`]).
    pub fn settings(&self) -> Result<Settings, String> {
        match self {
            BenchCmd::Op(op) => op.settings(),
            BenchCmd::Route(_) => {
                Err("`route` is not an nccl-tests operation: see zccl_bench::route".into())
            }
            BenchCmd::Unknown(a) => Err(unknown_op(a)),
        }
    }
}

/// The error for an unknown subcommand (`args`: its name and arguments),
/// with the list of operations.
///
/// ```
/// let e = zccl_bench::args::unknown_op(&["foo".into()]);
/// assert!(e.starts_with("unknown operation \"foo\"; the operations are all_reduce, all_gather,"));
/// ```
pub fn unknown_op(args: &[OsString]) -> String {
    let name = args
        .first()
        .map(|a| a.to_string_lossy())
        .unwrap_or_default();
    let ops: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
    format!(
        "unknown operation {name:?}; the operations are {}, and route (the router benchmark)",
        ops.join(", ")
    )
}

/// One subcommand per operation.
#[derive(Subcommand, Debug, Clone)]
#[command(rename_all = "snake_case")]
pub enum OpCmd {
    /// All-reduce: every rank ends with the reduction of all buffers (busbw factor 2(n-1)/n).
    #[command(alias = "all-reduce", alias = "allreduce")]
    AllReduce(CommonArgs),
    /// All-gather: every rank ends with all ranks' blocks (busbw factor (n-1)/n).
    #[command(alias = "all-gather", alias = "allgather")]
    AllGather(CommonArgs),
    /// Reduce-scatter: rank r ends with block r of the reduction (busbw factor (n-1)/n).
    #[command(alias = "reduce-scatter", alias = "reducescatter")]
    ReduceScatter(CommonArgs),
    /// Broadcast from rank -r (busbw factor 1).
    Broadcast(CommonArgs),
    /// All-to-all with equal blocks (busbw factor (n-1)/n).
    #[command(alias = "all-to-all", alias = "all_to_all")]
    Alltoall(CommonArgs),
    /// Rank r sends to r+1 and receives from r-1 (busbw factor 1).
    #[command(alias = "send-recv")]
    Sendrecv(CommonArgs),
    /// Rank r sends to r+k and receives from r-k (--offset k; busbw factor 1).
    #[command(alias = "ring-shift")]
    RingShift(RingShiftArgs),
    /// Ranks 2i and 2i+1 bounce the buffer back and forth; time is half the round trip (busbw factor 1).
    #[command(alias = "ping-pong")]
    Pingpong(CommonArgs),
    /// TokenRing's bidirectional step: half the bytes to r+1, half to r-1 (busbw factor 1).
    ///
    /// The two halves travel at once on two channels; size and bandwidth count both directions.
    #[command(alias = "token-ring")]
    TokenRing(CommonArgs),
    /// ZeCO's All-Scan of f32 states (rows x cols) with per-row decay (algbw = state bytes / t).
    #[command(alias = "all-scan")]
    AllScan(AllScanArgs),
}

/// `ring_shift`'s flags.
#[derive(Args, Debug, Clone)]
pub struct RingShiftArgs {
    /// Shift distance k: send to rank r+k, receive from rank r-k (any integer).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub offset: i64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
}

/// `all_scan`'s flags.
#[derive(Args, Debug, Clone)]
pub struct AllScanArgs {
    /// Columns of the state (d_v); rows = count / cols (cols shrink for tiny sizes).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub cols: u32,
    /// Row blocks pipelined along the chain (capped at the number of rows).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub blocks: u32,
    /// Scan from the last rank to the first.
    #[arg(long)]
    pub reverse: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
}

/// The nccl-tests flags every operation takes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Smallest size in bytes; K, M, G are powers of 1024.
    #[arg(short = 'b', long = "minbytes", value_name = "SIZE", default_value = "32M",
          value_parser = sweep::parse_size)]
    pub minbytes: usize,
    /// Largest size in bytes; K, M, G are powers of 1024.
    #[arg(short = 'e', long = "maxbytes", value_name = "SIZE", default_value = "32M",
          value_parser = sweep::parse_size)]
    pub maxbytes: usize,
    /// Multiply the size by F at each step (F >= 2).
    #[arg(
        short = 'f',
        long = "stepfactor",
        value_name = "F",
        conflicts_with = "stepbytes"
    )]
    pub stepfactor: Option<u64>,
    /// Add SIZE bytes at each step (default 1M when -f is absent).
    #[arg(short = 'i', long = "stepbytes", value_name = "SIZE", value_parser = sweep::parse_size)]
    pub stepbytes: Option<usize>,
    /// Timed iterations per size.
    #[arg(short = 'n', long = "iters", value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: u32,
    /// Untimed warmup iterations per size (and per out-of-place/in-place half).
    #[arg(
        short = 'w',
        long = "warmup_iters",
        value_name = "N",
        default_value_t = 1
    )]
    pub warmup: u32,
    /// Time R windows of -n iterations each and report the median window (as the peers' mpi_bench.py --repeats; 1: nccl-tests' single window).
    #[arg(long = "repeats", value_name = "R", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeats: u32,
    /// Check iterations per size: fresh data, one op, compare with the expected result (0: off).
    #[arg(short = 'c', long = "check", value_name = "N", default_value_t = 1)]
    pub check: u32,
    /// Data type: uint8 int32 int64 half float double bfloat16 (aliases u8 i32 i64 f16 f32 f64 bf16), or all.
    #[arg(short = 'd', long = "datatype", value_name = "TYPE", default_value = "float",
          value_parser = parse_dtypes)]
    pub datatype: DTypes,
    /// Reduction: sum prod min max avg, or all (all_reduce and reduce_scatter).
    #[arg(short = 'o', long = "op", value_name = "OP", default_value = "sum",
          value_parser = parse_redops)]
    pub redop: Redops,
    /// Root rank of broadcast.
    #[arg(short = 'r', long = "root", value_name = "RANK", default_value_t = 0)]
    pub root: u32,
    /// Blocking mode, accepted for nccl-tests compatibility: every zccl op is blocking, so 0 and 1 behave alike.
    #[arg(short = 'z', long = "blocking", value_name = "0/1", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=1))]
    pub blocking: u8,
    /// Time reported, as nccl-tests' -a: 0 = rank 0's, 1 = mean over the ranks, 2 = minimum, 3 = maximum.
    #[arg(short = 'a', long = "average", value_name = "0/1/2/3", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(0..=3))]
    pub average: u8,
    /// Launch N ranks on this host (when not already under zccl run, srun, mpirun or torchrun); at most 64.
    #[arg(short = 'N', long = "ranks", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub ranks: Option<u32>,
    /// With -N: bind ranks to CPUs as mpirun does (auto: a core each for up to 2 ranks, a package each for more, none when oversubscribed), a core each (core), or not at all (none).
    #[arg(long, value_name = "auto|core|none", env = "ZCCL_BIND_TO", default_value_t = zccl_runtime::binding::BindTo::Auto)]
    pub bind_to: zccl_runtime::binding::BindTo,
    /// Also write the results to FILE as JSON (an array, one object per row and half).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write the results to FILE as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Draw busbw against size (log2 axis) into FILE (SVG).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Never show the progress bar (it is shown only when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// After the sweep, keep every rank alive (and its ZCCL_METRICS_ADDR endpoint up) for SECS seconds, or until SIGTERM/SIGINT.
    #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = parse_hold)]
    pub hold: f64,
}

/// `--hold SECS`: a finite, non-negative number of seconds (at most a day).
fn parse_hold(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(0.0..=86400.0).contains(&v) {
        return Err(format!("{s}: --hold takes 0 to 86400 seconds"));
    }
    Ok(v)
}

/// The data types of `-d`, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DTypes(pub Vec<DType>);

/// The reductions of `-o`, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redops(pub Vec<ReduceOp>);

/// Supported types in nccl-tests' order.
const SUPPORTED: [DType; 7] = [
    DType::U8,
    DType::I32,
    DType::I64,
    DType::F16,
    DType::F32,
    DType::F64,
    DType::BF16,
];

/// nccl-tests' name of a type (`float`, `bfloat16`).
pub const fn nccl_name(t: DType) -> &'static str {
    match t {
        DType::U8 => "uint8",
        DType::I32 => "int32",
        DType::I64 => "int64",
        DType::F16 => "half",
        DType::F32 => "float",
        DType::F64 => "double",
        DType::BF16 => "bfloat16",
        DType::I8 => "int8",
        DType::U32 => "uint32",
        DType::U64 => "uint64",
        // Types the bench does not run (`-d` refuses them): zccl's names.
        other => other.name(),
    }
}

const SUPPORTED_NAMES: &str = "uint8 int32 int64 half float double bfloat16 (or all)";

/// Parses `-d`: a type name (nccl-tests' or zccl's) or `all`.
///
/// ```
/// use zccl_bench::args::parse_dtypes;
/// use zccl_primitives::dtype::DType;
/// assert_eq!(parse_dtypes("bfloat16").unwrap().0, vec![DType::BF16]);
/// assert!(parse_dtypes("int8").unwrap_err().contains("not supported"));
/// ```
pub fn parse_dtypes(s: &str) -> Result<DTypes, String> {
    let t = match s.trim().to_ascii_lowercase().as_str() {
        "all" => return Ok(DTypes(SUPPORTED.to_vec())),
        "uint8" | "u8" => DType::U8,
        "int32" | "int" | "i32" => DType::I32,
        "int64" | "i64" => DType::I64,
        "half" | "float16" | "fp16" | "f16" => DType::F16,
        "float" | "float32" | "fp32" | "f32" => DType::F32,
        "double" | "float64" | "fp64" | "f64" => DType::F64,
        "bfloat16" | "bf16" => DType::BF16,
        "int8" | "char" | "i8" | "uint32" | "u32" | "uint64" | "u64" | "fp8_e4m3" | "fp8_e5m2"
        | "f8e4m3" | "f8e5m2" => {
            return Err(format!(
                "data type {s:?} is not supported by zccl's primitives; supported: {SUPPORTED_NAMES}"
            ));
        }
        _ => {
            return Err(format!(
                "unknown data type {s:?}; supported: {SUPPORTED_NAMES}"
            ));
        }
    };
    Ok(DTypes(vec![t]))
}

/// Parses `-o`: `sum prod min max avg` or `all`.
///
/// ```
/// use zccl_bench::args::parse_redops;
/// assert_eq!(parse_redops("all").unwrap().0.len(), 5);
/// assert!(parse_redops("xor").is_err());
/// ```
pub fn parse_redops(s: &str) -> Result<Redops, String> {
    let op = match s.trim().to_ascii_lowercase().as_str() {
        "all" => return Ok(Redops(ReduceOp::ALL.to_vec())),
        "sum" => ReduceOp::Sum,
        "prod" => ReduceOp::Prod,
        "min" => ReduceOp::Min,
        "max" => ReduceOp::Max,
        "avg" => ReduceOp::Avg,
        _ => {
            return Err(format!(
                "unknown reduction {s:?}; supported: sum prod min max avg (or all)"
            ));
        }
    };
    Ok(Redops(vec![op]))
}

/// How the per-rank times of a measurement become the reported time
/// (nccl-tests' `-a`).
///
/// ```
/// use zccl_bench::args::Average;
/// assert_eq!(Average::from_flag(3), Average::Max);
/// assert_eq!(Average::from_flag(1), Average::Mean);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Average {
    /// Rank 0's time (`-a 0`).
    Rank0,
    /// The mean over the ranks (`-a 1`, the default).
    Mean,
    /// The fastest rank's (`-a 2`).
    Min,
    /// The slowest rank's (`-a 3`): what Open MPI's and Gloo's benchmark
    /// scripts report.
    Max,
}

impl Average {
    /// From the flag's value (0–3; anything else is the mean).
    pub fn from_flag(a: u8) -> Self {
        match a {
            0 => Self::Rank0,
            2 => Self::Min,
            3 => Self::Max,
            _ => Self::Mean,
        }
    }
}

/// Validated settings of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The operation.
    pub op: Op,
    /// `-b`.
    pub minbytes: usize,
    /// `-e`.
    pub maxbytes: usize,
    /// `-f` or `-i`.
    pub step: Step,
    /// The sizes of the sweep.
    pub sizes: Vec<usize>,
    /// `-n`.
    pub iters: u32,
    /// `-w`.
    pub warmup: u32,
    /// `--repeats`: timed windows per size and half, the median reported.
    pub repeats: u32,
    /// `-c`.
    pub checks: u32,
    /// The types to run (all_scan: `float` only).
    pub dtypes: Vec<DType>,
    /// The reductions to run (`[Sum]`, unused, for ops that do not reduce).
    pub redops: Vec<ReduceOp>,
    /// `-r`.
    pub root: u32,
    /// `-z`.
    pub blocking: bool,
    /// `-a`.
    pub average: Average,
    /// `-N`.
    pub ranks: Option<u32>,
    /// `--bind-to` (the `-N` launcher's).
    pub bind_to: zccl_runtime::binding::BindTo,
    /// ring_shift `--offset` (1 for sendrecv).
    pub offset: i64,
    /// all_scan `--cols`.
    pub scan_cols: usize,
    /// all_scan `--blocks`.
    pub scan_blocks: usize,
    /// all_scan `--reverse`.
    pub scan_reverse: bool,
    /// `--json`.
    pub json: Option<PathBuf>,
    /// `--csv`.
    pub csv: Option<PathBuf>,
    /// `--plot`.
    pub plot: Option<PathBuf>,
    /// `--no-progress`.
    pub no_progress: bool,
    /// `--hold`, in seconds (0: exit at once).
    pub hold: f64,
}

impl OpCmd {
    /// The operation.
    pub fn op(&self) -> Op {
        match self {
            OpCmd::AllReduce(_) => Op::AllReduce,
            OpCmd::AllGather(_) => Op::AllGather,
            OpCmd::ReduceScatter(_) => Op::ReduceScatter,
            OpCmd::Broadcast(_) => Op::Broadcast,
            OpCmd::Alltoall(_) => Op::Alltoall,
            OpCmd::Sendrecv(_) => Op::Sendrecv,
            OpCmd::RingShift(_) => Op::RingShift,
            OpCmd::Pingpong(_) => Op::Pingpong,
            OpCmd::TokenRing(_) => Op::TokenRing,
            OpCmd::AllScan(_) => Op::AllScan,
        }
    }

    /// The common flags.
    pub fn common(&self) -> &CommonArgs {
        match self {
            OpCmd::AllReduce(c)
            | OpCmd::AllGather(c)
            | OpCmd::ReduceScatter(c)
            | OpCmd::Broadcast(c)
            | OpCmd::Alltoall(c)
            | OpCmd::Sendrecv(c)
            | OpCmd::Pingpong(c)
            | OpCmd::TokenRing(c) => c,
            OpCmd::RingShift(a) => &a.common,
            OpCmd::AllScan(a) => &a.common,
        }
    }

    /// Validates the flags (everything that does not depend on the number of ranks).
    pub fn settings(&self) -> Result<Settings, String> {
        let op = self.op();
        let c = self.common();
        let step = match (c.stepfactor, c.stepbytes) {
            (Some(f), _) => Step::Factor(f),
            (None, Some(b)) => Step::Bytes(b as u64),
            (None, None) => Step::Bytes(1 << 20),
        };
        let sizes = sweep::sizes(c.minbytes, c.maxbytes, step)?;
        let dtypes = if op == Op::AllScan {
            match c.datatype.0.as_slice() {
                [DType::F32] => vec![DType::F32],
                ts if ts.len() == SUPPORTED.len() => vec![DType::F32],
                [t] => {
                    return Err(format!(
                        "all_scan combines f32 states: -d float only (got {})",
                        nccl_name(*t)
                    ));
                }
                _ => vec![DType::F32],
            }
        } else {
            c.datatype.0.clone()
        };
        let redops = if op.reduces() {
            c.redop.0.clone()
        } else {
            vec![ReduceOp::Sum]
        };
        let (offset, scan_cols, scan_blocks, scan_reverse) = match self {
            OpCmd::RingShift(a) => (a.offset, 0, 0, false),
            OpCmd::AllScan(a) => (1, a.cols as usize, a.blocks as usize, a.reverse),
            _ => (1, 0, 0, false),
        };
        if let Some(n) = c.ranks {
            check_job(op, c.root, n)?;
        }
        Ok(Settings {
            op,
            minbytes: c.minbytes,
            maxbytes: c.maxbytes,
            step,
            sizes,
            iters: c.iters,
            warmup: c.warmup,
            repeats: c.repeats,
            checks: c.check,
            dtypes,
            redops,
            root: c.root,
            blocking: c.blocking == 1,
            average: Average::from_flag(c.average),
            ranks: c.ranks,
            bind_to: c.bind_to,
            offset,
            scan_cols,
            scan_blocks,
            scan_reverse,
            json: c.json.clone(),
            csv: c.csv.clone(),
            plot: c.plot.clone(),
            no_progress: c.no_progress,
            hold: c.hold,
        })
    }
}

/// What the job of `n` ranks must be for `op`: `-r` names one of its ranks
/// (only broadcast uses it), and pingpong has a pair to bounce between
/// (with one rank it moved nothing, yet printed a bandwidth).
pub fn check_job(op: Op, root: u32, n: u32) -> Result<(), String> {
    if op.rooted() && root >= n {
        return Err(format!(
            "-r/--root {root} is not a rank of the job (ranks 0..{n})"
        ));
    }
    if op == Op::Pingpong && n < 2 {
        return Err(format!(
            "pingpong needs at least 2 ranks (ranks 2i and 2i+1 bounce the buffer); the job has {n}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let t = T::try_parse_from(std::iter::once("zccl-bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        t.a.op.settings()
    }

    #[test]
    fn defaults_are_nccl_tests() {
        let s = parse(&["all_reduce"]).unwrap();
        assert_eq!((s.minbytes, s.maxbytes), (32 << 20, 32 << 20));
        assert_eq!(s.step, Step::Bytes(1 << 20));
        assert_eq!(s.sizes, vec![32 << 20]);
        assert_eq!((s.iters, s.warmup, s.checks), (20, 1, 1));
        assert_eq!(s.dtypes, vec![DType::F32]);
        assert_eq!(s.redops, vec![ReduceOp::Sum]);
        assert_eq!((s.root, s.blocking, s.ranks), (0, false, None));
        assert_eq!(s.average, Average::Mean);
    }

    #[test]
    fn average_is_nccl_tests_a() {
        for (a, want) in [
            ("0", Average::Rank0),
            ("1", Average::Mean),
            ("2", Average::Min),
            ("3", Average::Max),
        ] {
            assert_eq!(parse(&["all_reduce", "-a", a]).unwrap().average, want);
        }
        assert_eq!(
            parse(&["all_reduce", "--average", "3"]).unwrap().average,
            Average::Max
        );
        let e = parse(&["all_reduce", "-a", "4"]).unwrap_err();
        assert!(e.contains("--average"), "{e}");
    }

    #[test]
    fn repeats_default_to_one_window_and_refuse_zero() {
        assert_eq!(parse(&["all_reduce"]).unwrap().repeats, 1);
        assert_eq!(parse(&["sendrecv", "--repeats", "3"]).unwrap().repeats, 3);
        for bad in ["0", "1001", "x"] {
            let e = parse(&["all_reduce", "--repeats", bad]).unwrap_err();
            assert!(e.contains("--repeats"), "{bad}: {e}");
        }
    }

    #[test]
    fn flags() {
        let s = parse(&[
            "all_reduce",
            "-N",
            "4",
            "-b",
            "1K",
            "-e",
            "64M",
            "-f",
            "4",
            "-n",
            "5",
            "-w",
            "0",
            "-c",
            "2",
            "-d",
            "bf16",
            "-o",
            "max",
            "-z",
            "1",
        ])
        .unwrap();
        assert_eq!(
            (s.ranks, s.sizes.len(), s.step),
            (Some(4), 9, Step::Factor(4))
        );
        assert_eq!((s.iters, s.warmup, s.checks, s.blocking), (5, 0, 2, true));
        assert_eq!(
            (s.dtypes.clone(), s.redops.clone()),
            (vec![DType::BF16], vec![ReduceOp::Max])
        );
        let s = parse(&["ring_shift", "--offset", "-2", "-b", "8", "-e", "8"]).unwrap();
        assert_eq!((s.op, s.offset), (Op::RingShift, -2));
        let s = parse(&["all_scan", "--cols", "64", "--blocks", "2", "--reverse"]).unwrap();
        assert_eq!((s.scan_cols, s.scan_blocks, s.scan_reverse), (64, 2, true));
        let s = parse(&["all_scan", "-d", "all"]).unwrap();
        assert_eq!(s.dtypes, vec![DType::F32]);
        let s = parse(&["all_gather", "-o", "all", "-d", "all"]).unwrap();
        assert_eq!((s.redops.len(), s.dtypes.len()), (1, 7));
        let s = parse(&["reduce_scatter", "-o", "all"]).unwrap();
        assert_eq!(s.redops.len(), 5);
        // Long names and aliases.
        let s = parse(&[
            "allreduce",
            "--minbytes",
            "1K",
            "--maxbytes",
            "4K",
            "--stepbytes",
            "1K",
        ])
        .unwrap();
        assert_eq!(s.sizes, vec![1024, 2048, 3072, 4096]);
        assert_eq!(
            parse(&["all-to-all", "-b", "1K", "-e", "1K"]).unwrap().op,
            Op::Alltoall
        );
    }

    #[test]
    fn clear_errors() {
        let e = parse(&["all_reduce", "-d", "quad"]).unwrap_err();
        assert!(e.contains("unknown data type \"quad\""), "{e}");
        assert!(e.contains("bfloat16"), "{e}");
        let e = parse(&["all_reduce", "-d", "int8"]).unwrap_err();
        assert!(e.contains("not supported by zccl"), "{e}");
        let e = parse(&["all_reduce", "-b", "1X"]).unwrap_err();
        assert!(e.contains("invalid size \"1X\""), "{e}");
        let e = parse(&["all_reduce", "-b", "4K", "-e", "1K"]).unwrap_err();
        assert!(e.contains("smaller than"), "{e}");
        let e = parse(&["all_reduce", "-f", "2", "-i", "1K"]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        let e = parse(&["all_reduce", "-n", "0"]).unwrap_err();
        assert!(e.contains("--iters"), "{e}");
        let e = parse(&["all_reduce", "-z", "2"]).unwrap_err();
        assert!(e.contains("2"), "{e}");
        let e = parse(&["all_reduce", "-o", "xor"]).unwrap_err();
        assert!(e.contains("unknown reduction"), "{e}");
        let e = parse(&["all_scan", "-d", "half"]).unwrap_err();
        assert!(e.contains("-d float only"), "{e}");
        let e = parse(&["broadcast", "-N", "2", "-r", "2"]).unwrap_err();
        assert!(e.contains("not a rank of the job"), "{e}");
        assert!(parse(&["gather"]).is_err());
        assert!(check_job(Op::AllReduce, 9, 2).is_ok());
        assert!(
            check_job(Op::Pingpong, 0, 1)
                .unwrap_err()
                .contains("at least 2 ranks")
        );
        assert!(check_job(Op::Pingpong, 0, 2).is_ok());
    }

    #[test]
    fn every_type_has_a_name() {
        for t in SUPPORTED {
            assert_eq!(parse_dtypes(nccl_name(t)).unwrap().0, vec![t]);
            assert_eq!(parse_dtypes(t.name()).unwrap().0, vec![t]);
        }
    }
}

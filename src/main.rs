//! The `zccl` command.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;
use zccl::runtime::binding::BindTo;
use zccl::runtime::launcher::{self, LaunchOptions};
use zccl::topology::{Source, report, xml};

#[derive(Parser)]
#[command(
    name = "zccl",
    version,
    about = "zccl: collective communication for sequence-parallel training"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the GPU/NIC topology of this host: inventory, GPU x NIC matrix, GPU -> NIC table.
    ///
    /// Reads sysfs (or an NCCL topology XML file) and classifies every GPU-NIC
    /// path with NCCL's path types. Honours ZCCL_SYSFS_ROOT, ZCCL_TOPO_FILE and
    /// ZCCL_TOPO_DUMP_FILE.
    Topo(TopoArgs),
    /// Run N ranks of a program on this host (like `torchrun --standalone` or `mpirun -n`).
    ///
    /// Each rank gets ZCCL_RANK, ZCCL_WORLD_SIZE, ZCCL_LOCAL_RANK,
    /// ZCCL_LOCAL_WORLD_SIZE, ZCCL_ROOT_ADDR, a fresh ZCCL_JOB_SECRET, and
    /// torchrun's RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR
    /// and MASTER_PORT. Output lines are prefixed with the rank. SIGINT and
    /// SIGTERM are forwarded to every rank; when one rank fails the others
    /// are stopped. The exit code is the first failing rank's (128 + signal
    /// if it was killed), 0 if all succeed, 127 if CMD is not found.
    /// See docs/launching.md.
    Run(RunArgs),
    /// Benchmark an operation the nccl-tests way (same as the zccl-bench command).
    ///
    /// `zccl bench all_reduce -N 4 -b 1K -e 64M -f 4` starts 4 ranks on this
    /// host and prints nccl-tests' table (time, algbw, busbw, #wrong, out-of-place
    /// and in-place); under zccl run, srun, mpirun or torchrun every process
    /// joins the job instead. `zccl bench route` measures the NIC-aware
    /// router (static affinity vs routed) on a network-namespace testbed
    /// (needs root). See docs/bench.md.
    Bench(zccl_bench::args::BenchArgs),
    /// Flow-level network simulator running zccl's real planner and schedules.
    ///
    /// `zccl sim calibrate` holds it against the testbed's measured `zccl
    /// bench route` scenarios (sim/data/testbed.json, or --measured FILE);
    /// `zccl sim sweep` runs ring attention, TokenRing, Ulysses and All-Scan
    /// at 16, 128 and 1024 simulated GPUs, static affinity vs the router.
    /// See docs/simulation.md.
    Sim {
        #[command(subcommand)]
        cmd: SimCmd,
    },
}

#[derive(Subcommand)]
enum SimCmd {
    /// Measured vs simulated per testbed scenario, with the error and PASS/FAIL
    /// against the bound (10 % for the router's scenarios, 15 % for the SP
    /// ones). Exit code 1 when a row is out of bounds.
    Calibrate {
        /// `zccl bench route --json` files to compare instead of the committed
        /// measurements (repeat to add SP rows from another run).
        #[arg(long, value_name = "FILE")]
        measured: Vec<PathBuf>,
        /// Also write the table as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// The scale sweep: every SP pattern at every size, static affinity vs
    /// the router, uneven sequence lengths across hosts.
    Sweep {
        /// GPU counts (8 per host).
        #[arg(long, value_delimiter = ',', default_value = "16,128,1024")]
        gpus: Vec<usize>,
        /// Even sequence lengths instead of the Zeppelin setting.
        #[arg(long)]
        even: bool,
        /// Write the results as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Draw time vs GPUs per pattern and mode.
        #[arg(long, value_name = "FILE.svg")]
        svg: Option<PathBuf>,
    },
}

fn sim(cmd: SimCmd) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match cmd {
        SimCmd::Calibrate { measured, json } => {
            let value = if measured.is_empty() {
                zccl_sim::calibrate::committed()
            } else {
                let mut all = Vec::new();
                for f in &measured {
                    let text = std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?;
                    let v: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", f.display()))?;
                    match v {
                        serde_json::Value::Array(a) => all.extend(a),
                        serde_json::Value::Object(ref o) => {
                            for k in ["route", "sp"] {
                                if let Some(serde_json::Value::Array(a)) = o.get(k) {
                                    all.extend(a.iter().cloned());
                                }
                            }
                        }
                        _ => anyhow::bail!("{}: expected an array or an object", f.display()),
                    }
                }
                serde_json::Value::Array(all)
            };
            let cal = zccl_sim::calibrate::calibrate(&value)?;
            print!("{}", cal.table());
            if let Some(f) = json {
                std::fs::write(&f, serde_json::to_string_pretty(&cal)? + "\n")
                    .with_context(|| format!("writing {}", f.display()))?;
            }
            Ok(if cal.pass() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        SimCmd::Sweep {
            gpus,
            even,
            json,
            svg,
        } => {
            let cfg = zccl_sim::sweep::SweepConfig {
                gpus,
                uneven: !even,
                ..Default::default()
            };
            let s = zccl_sim::sweep::sweep(&cfg)?;
            print!("{}", s.table());
            if let Some(f) = json {
                std::fs::write(&f, s.to_json() + "\n")
                    .with_context(|| format!("writing {}", f.display()))?;
            }
            if let Some(f) = svg {
                std::fs::write(&f, s.to_svg())
                    .with_context(|| format!("writing {}", f.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Number of ranks.
    #[arg(short = 'n', long = "nprocs", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    nprocs: u32,
    /// Seconds ranks get to exit after a failure or a forwarded signal, and
    /// after SIGTERM, before they are killed.
    #[arg(long, value_name = "SECS", default_value_t = LaunchOptions::DEFAULT_GRACE.as_secs_f64(),
          value_parser = parse_grace)]
    grace: f64,
    /// MASTER_PORT for the ranks (the zccl root uses MASTER_PORT + 1); default (or 0): a free port.
    #[arg(long, value_name = "PORT")]
    master_port: Option<u16>,
    /// Bind ranks to CPUs: auto (as mpirun: a core each for up to 2 ranks, a
    /// package each for more, none when oversubscribed), core (a core each
    /// when the cores are enough), none (as torchrun).
    #[arg(long, value_name = "auto|core|none", env = "ZCCL_BIND_TO", default_value_t = BindTo::None)]
    bind_to: BindTo,
    /// The program and its arguments.
    #[arg(value_name = "CMD", required = true, num_args = 1.., trailing_var_arg = true,
          allow_hyphen_values = true)]
    command: Vec<OsString>,
}

fn parse_grace(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in 0..=86400")),
    }
}

#[derive(clap::Args)]
struct TopoArgs {
    /// Probe the sysfs tree under DIR instead of / (env: ZCCL_SYSFS_ROOT).
    #[arg(long, value_name = "DIR")]
    sysfs_root: Option<PathBuf>,
    /// Read an NCCL topology XML file instead of probing (env: ZCCL_TOPO_FILE).
    #[arg(long, value_name = "FILE", conflicts_with = "sysfs_root")]
    topo_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Explain each GPU's NIC ranking (table format).
    #[arg(long)]
    explain: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Xml,
}

fn topo(args: TopoArgs) -> Result<()> {
    let source = Source::resolve(args.sysfs_root, args.topo_file, |k| std::env::var(k).ok());
    let label = match &source {
        Source::Sysfs(root) => format!("sysfs:{}", root.display()),
        Source::TopoFile(f) => format!("file:{}", f.display()),
    };
    let topo = source
        .load()
        .with_context(|| format!("cannot read the topology ({label})"))?;
    if let Some(dump) = std::env::var_os("ZCCL_TOPO_DUMP_FILE").filter(|v| !v.is_empty()) {
        xml::save(&topo, std::path::Path::new(&dump))
            .with_context(|| "ZCCL_TOPO_DUMP_FILE: cannot write the topology dump")?;
    }
    let text = match args.format {
        Format::Table => report::render_text(&topo, &label, args.explain),
        Format::Json => report::Report::new(&topo, &label).to_json() + "\n",
        Format::Xml => xml::to_string(&topo),
    };
    print!("{text}");
    Ok(())
}

fn run(args: RunArgs) -> std::process::ExitCode {
    let mut command = args.command.into_iter();
    let program = command.next().expect("clap requires CMD");
    let opts = LaunchOptions {
        nprocs: args.nprocs,
        program,
        args: command.collect(),
        grace: Duration::from_secs_f64(args.grace),
        master_port: args.master_port,
        bind: args.bind_to,
    };
    let code = match launcher::run(&opts) {
        Ok(report) => report.exit_code(),
        Err(e) => {
            eprintln!("zccl run: error: {e}");
            e.exit_code()
        }
    };
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Topo(args) => topo(args),
        Cmd::Run(args) => return run(args),
        Cmd::Bench(args) => return zccl_bench::cli::run_as("zccl bench", args),
        Cmd::Sim { cmd } => match sim(cmd) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, without a backtrace, and
            // without repeating a cause an error already shows.
            eprintln!("zccl: error: {}", zccl_bench::cli::error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

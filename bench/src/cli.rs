//! The entry point shared by `zccl-bench` and `zccl bench`: both parse
//! [`BenchArgs`] and call [`run_as`], so they behave identically; only the
//! name their messages start with differs (`zccl-bench:`, `zccl bench:`).

use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use zccl_runtime::Communicator;

use crate::args::{BenchArgs, BenchCmd, Settings, check_job, unknown_op};
use crate::launch::{self, Mode, say};
use crate::report::{Row, total_wrong};
use crate::runner::{CORRUPT_ENV, RankInfo, bench, corrupt_requested, row_count};
use crate::sweep::human;
use crate::{hold, output, plot};

/// `zccl-bench`: nccl-tests for zccl.
#[derive(Parser, Debug)]
#[command(
    name = "zccl-bench",
    version,
    about = "nccl-tests-style benchmarks of zccl's collectives and sequence-parallel primitives",
    long_about = "nccl-tests-style benchmarks of zccl's collectives and sequence-parallel primitives.\n\n\
        `zccl-bench all_reduce -N 4 -b 1K -e 64M -f 4` starts 4 ranks on this host; under zccl run, \
        srun, mpirun or torchrun every process joins the job instead. Sizes take K, M, G suffixes \
        (powers of 1024). See docs/bench.md."
)]
pub struct Cli {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub bench: BenchArgs,
}

/// `zccl-bench`'s `main`.
pub fn main() -> ExitCode {
    run_as("zccl-bench", Cli::parse().bench)
}

/// [`run_as`] with the messages of the `zccl-bench` command.
pub fn run(args: BenchArgs) -> ExitCode {
    run_as("zccl-bench", args)
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause
/// whose text the line already ends with (an error that shows its source
/// in its own message, as `path: No such file or directory (os error 2)`
/// does, would otherwise show the OS text twice).
///
/// ```
/// let io = std::io::Error::from(std::io::ErrorKind::NotFound);
/// let e = anyhow::Error::new(io).context("cannot read x");
/// assert_eq!(zccl_bench::cli::error_text(&e), "cannot read x: entity not found");
/// ```
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Runs the benchmark the arguments describe: launches the ranks, or is one.
/// Messages start with `prog:` (`zccl-bench`, or `zccl bench` for the
/// `zccl` command; the ranks `-N` starts are this same command).
/// Exit codes: 0 success; 1 a rank failed or `#wrong` is not zero; 2 invalid
/// arguments; a launched rank's own code otherwise. `route` is
/// [`crate::route::run`], with its own codes.
pub fn run_as(prog: &str, args: BenchArgs) -> ExitCode {
    let op = match args.op {
        BenchCmd::Route(r) => return crate::route::run(&r),
        BenchCmd::Unknown(a) => {
            say(prog, format_args!("error: {}", unknown_op(&a)));
            return ExitCode::from(2);
        }
        BenchCmd::Op(op) => op,
    };
    let s = match op.settings() {
        Ok(s) => s,
        Err(e) => {
            say(prog, format_args!("error: {e}"));
            return ExitCode::from(2);
        }
    };
    match launch::mode(s.ranks, |k| std::env::var(k).ok()) {
        Mode::Launch(n) => {
            if let Err(e) = launch::check_local_ranks(n)
                .and_then(|()| check_job(s.op, s.root, n))
                .and_then(|()| check_files(&s).map_err(|e| error_text(&e)))
            {
                say(prog, format_args!("error: {e}"));
                return ExitCode::from(2);
            }
            let program = match std::env::current_exe() {
                Ok(p) => p.into_os_string(),
                Err(e) => {
                    say(
                        prog,
                        format_args!("error: cannot find this program to start the ranks: {e}"),
                    );
                    return ExitCode::FAILURE;
                }
            };
            if s.hold > 0.0
                && let Err(e) = hold::install_stop_signals()
            {
                say(
                    prog,
                    format_args!("warning: cannot handle SIGTERM/SIGINT for --hold: {e}"),
                );
            }
            let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
            match launch::launch(prog, n, &program, &argv, s.bind_to) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => {
                    say(prog, format_args!("error: {e}"));
                    ExitCode::FAILURE
                }
            }
        }
        Mode::Join => match join(prog, &s) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                say(prog, format_args!("error: {}", error_text(&e)));
                ExitCode::FAILURE
            }
        },
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn transport(comm: &Communicator) -> String {
    let (r, n) = (comm.rank(), comm.size());
    let shm = (0..n).filter(|&p| p != r && comm.uses_shm(p)).count() as u32;
    let tcp = n - 1 - shm;
    match (shm, tcp) {
        (0, 0) => String::new(),
        (_, 0) => "shm".into(),
        (0, _) => "tcp".into(),
        _ => "shm+tcp".into(),
    }
}

fn progress_bar(total: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} sizes {msg} [{elapsed}]")
    {
        bar.set_style(style);
    }
    bar
}

/// One rank of the job: measure, print (rank 0), write the files (rank 0).
fn join(prog: &str, s: &Settings) -> Result<u8> {
    let comm = Communicator::from_env().context("cannot join the job")?;
    let (r, n) = (comm.rank(), comm.size());
    if let Some(want) = s.ranks
        && want != n
    {
        bail!("-N {want} does not match the job, which has {n} ranks");
    }
    let me = RankInfo {
        pid: std::process::id(),
        host: hostname(),
        transport: transport(&comm),
    };
    if r == 0 {
        // Before the sweep, not after it (the other ranks learn it as rank
        // 0 leaving the job).
        check_files(s)?;
    }
    let corrupt = corrupt_requested(std::env::var(CORRUPT_ENV).ok().as_deref());
    let bar = (r == 0 && !s.no_progress && io::stderr().is_terminal())
        .then(|| progress_bar(row_count(s)));
    let mut out = |t: &str| {
        let write = || {
            let mut o = io::stdout().lock();
            let _ = o.write_all(t.as_bytes());
            let _ = o.flush();
        };
        match &bar {
            Some(b) => b.suspend(write),
            None => write(),
        }
    };
    let mut step = |row: &Row| {
        if let Some(b) = &bar {
            b.set_message(format!("(last: {} B)", human(row.size)));
            b.inc(1);
        }
    };
    let rows = bench(&comm, s, &me, corrupt, &mut out, &mut step)
        .with_context(|| format!("rank {r}"))?
        .rows;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if r == 0 {
        write_files(s, n as usize, &rows)?;
    }
    if s.hold > 0.0 {
        // The counters are final: close the communicator, keep the process
        // (and its /metrics endpoint, which lives as long as the process).
        drop(comm);
        if let Err(e) = hold::install_stop_signals() {
            say(
                prog,
                format_args!("warning: rank {r}: cannot handle SIGTERM/SIGINT: {e}"),
            );
        }
        if r == 0 {
            out(&hold::banner(s.hold));
        }
        hold::hold(s.hold, hold::stop_requested);
    }
    let wrong = total_wrong(&rows).unwrap_or(0);
    if r == 0 && wrong > 0 {
        say(
            prog,
            format_args!("the check found {wrong} wrong element(s)"),
        );
        return Ok(1);
    }
    Ok(0)
}

/// The output files (`--json`, `--csv`, `--plot`) can be written: checked
/// before the sweep, so that a wrong path fails at once instead of after
/// the whole run. A file that exists is opened without truncating it; one
/// that does not is created and removed again.
fn check_files(s: &Settings) -> Result<()> {
    for (path, what) in [(&s.json, "JSON"), (&s.csv, "CSV"), (&s.plot, "plot")] {
        let Some(path) = path else { continue };
        let opened = if path.exists() {
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map(drop)
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map(|_| {
                    let _ = std::fs::remove_file(path);
                })
        };
        opened.with_context(|| format!("cannot write the {what} file {}", path.display()))?;
    }
    Ok(())
}

fn write_files(s: &Settings, n: usize, rows: &[Row]) -> Result<()> {
    let write = |path: &std::path::Path, text: String, what: &str| {
        std::fs::write(path, text)
            .with_context(|| format!("cannot write the {what} file {}", path.display()))
    };
    if let Some(p) = &s.json {
        write(p, output::to_json(rows), "JSON")?;
    }
    if let Some(p) = &s.csv {
        write(p, output::to_csv(rows), "CSV")?;
    }
    if let Some(p) = &s.plot {
        let title = format!("zccl-bench {}, {n} rank(s): busbw (GB/s) vs size", s.op);
        write(p, plot::svg(&title, rows), "plot")?;
    }
    Ok(())
}

//! `zccl bench route` (also `zccl-bench route`): the NIC-aware router's
//! benchmark on a network-namespace testbed. See docs/bench.md.
//!
//! It builds `--hosts` hosts with `--nics` NICs each, every NIC limited to
//! `--rate` ([`zccl_testbed`]), starts `--ranks` ranks per host, and runs
//! each scenario ([`scenario`]) twice, with `ZCCL_ROUTER=affinity` (static:
//! each message leaves on the sender's own NIC) and `ZCCL_ROUTER=on` (the
//! router), host 0 sending to host 1, every byte checked by the receiver.
//! One table row per scenario: static, routed and limit Gbit/s, the ratios,
//! the times and the check.
//!
//! The SP primitives' scenarios (`token_ring`, `token_ring_block`,
//! `all_scan`; issue #13; run only when named, after the router's) time
//! TokenRing's bidirectional step against two one-way ring shifts and
//! All-Scan against an all-gather, every rank taking part, on the same
//! testbed; see [`sp`].
//!
//! Modules, one idea each:
//!
//! * [`scenario`]: who sends what, limits, bounds, targets (pure);
//! * [`pattern`]: the payload bytes and their check (pure);
//! * [`protocol`]: what the ranks print and send back (pure);
//! * [`worker`]: one rank (the hidden `--worker` mode);
//! * [`harness`]: one run: testbed, ranks, link events, outcome;
//! * [`report`]: results, table, footer, JSON (pure);
//! * [`sp`]: the SP scenarios' strategies, ratios, table, JSON (pure);
//! * [`sp_worker`]: one rank of an SP scenario.
//!
//! Exit codes: 0 every scenario completed and verified (whatever the
//! ratios: targets are printed, not enforced), also when skipping for lack
//! of root or iproute2 (a `skipping:` line on stderr says so); 1 a run
//! failed (wrong data, a rank failed, a scenario past `--timeout`); 2 invalid
//! arguments; 130 interrupted (SIGINT/SIGTERM).

pub mod harness;
pub mod pattern;
pub mod protocol;
pub mod report;
pub mod scenario;
pub mod sp;
pub mod sp_worker;
pub mod worker;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use crate::sweep;
use harness::{Interrupted, Router, RunSpec};
use report::ScenarioResult;
use scenario::{ALL, Scenario, Shape};
use sp::{SpResult, SpSetting};

/// `zccl bench route`'s flags.
#[derive(Args, Debug, Clone)]
pub struct RouteArgs {
    /// Hosts (network namespaces); host 0 sends to host 1.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=200))]
    pub hosts: u32,
    /// NICs per host (rails).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub nics: u32,
    /// Ranks per host (local rank l is affine to NIC l mod nics).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=127))]
    pub ranks: u32,
    /// Rate of every NIC, each direction, in tc syntax (200mbit, 1gbit).
    #[arg(long, default_value = "200mbit", value_parser = parse_rate)]
    pub rate: String,
    /// Bytes each sender sends (K, M, G = powers of 1024); failure sends 4x.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = sweep::parse_size)]
    pub bytes: usize,
    /// Scenarios to run: imbalanced, balanced, failure, slow (the router's; default: these four), token_ring, token_ring_block, all_scan (the SP primitives'); repeat or comma-separate.
    #[arg(
        long = "scenario",
        value_name = "NAME",
        value_enum,
        value_delimiter = ','
    )]
    pub scenarios: Vec<Scenario>,
    /// Also write the results to FILE as JSON (an array, one object per scenario).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Time bound of each pair of a scenario's runs (a static and a routed one; see --route-reps), seconds; past it the run is killed and fails.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// SP scenarios: timed repetitions of each strategy (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub reps: u32,
    /// Router scenarios: runs of each router, static and routed taking turns; the run of median time is reported (a failed run, if any, instead).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub route_reps: u32,
    /// all_scan: row blocks All-Scan pipelines its state over (K).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub scan_blocks: u32,
    /// Copy the ranks' stderr (e.g. ZCCL_DEBUG=INFO ZCCL_DEBUG_SUBSYS=ROUTE plans) to ours, prefixed.
    #[arg(short, long)]
    pub verbose: bool,
    /// Internal: be one rank (started by the harness inside a host's namespace).
    #[arg(long, hide = true)]
    pub worker: bool,
}

/// `--rate`: a `tc` rate ([`zccl_testbed::rate_bps`]).
fn parse_rate(s: &str) -> Result<String, String> {
    match zccl_testbed::rate_bps(s) {
        Some(_) => Ok(s.trim().to_string()),
        None => Err(format!(
            "{s:?} is not a tc rate (a number with bit, kbit, mbit, gbit, or bps, kbps, mbps = bytes/s)"
        )),
    }
}

/// `--timeout`: seconds in 1..=3600.
fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (1.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in 1..=3600")),
    }
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Hosts, NICs, ranks.
    pub shape: Shape,
    /// `--rate` as given.
    pub rate: String,
    /// The same in bits/s.
    pub rate_bps: f64,
    /// `--bytes`.
    pub bytes: u64,
    /// Scenarios in order, without repeats.
    pub scenarios: Vec<Scenario>,
    /// `--timeout`.
    pub timeout: Duration,
    /// `--reps`.
    pub reps: u32,
    /// `--route-reps`.
    pub route_reps: u32,
    /// `--scan-blocks`.
    pub scan_blocks: usize,
}

impl RouteArgs {
    /// Checks what clap cannot: scenarios that need a second NIC, sizes.
    ///
    /// ```
    /// use clap::Parser;
    /// #[derive(Parser)]
    /// struct T { #[command(flatten)] a: zccl_bench::route::RouteArgs }
    /// let t = T::try_parse_from(["t", "--nics", "1", "--scenario", "slow"]).unwrap();
    /// assert!(t.a.settings().unwrap_err().contains("at least 2 NICs"));
    /// let t = T::try_parse_from(["t", "--scenario", "failure,imbalanced", "--scenario", "failure"]).unwrap();
    /// assert_eq!(t.a.settings().unwrap().scenarios.len(), 2);
    /// ```
    pub fn settings(&self) -> Result<Settings, String> {
        let shape = Shape {
            hosts: self.hosts as usize,
            nics: self.nics as usize,
            ranks: self.ranks as usize,
        };
        let mut scenarios = Vec::new();
        for s in if self.scenarios.is_empty() {
            &ALL[..]
        } else {
            &self.scenarios[..]
        } {
            if !scenarios.contains(s) {
                scenarios.push(*s);
            }
        }
        let scan_blocks = self.scan_blocks as usize;
        if scenarios.contains(&Scenario::AllScan) {
            sp::scan_rows(self.bytes as u64, scan_blocks)?;
        }
        if let Some(s) = scenarios
            .iter()
            .find(|s| s.needs_two_nics() && shape.nics < 2)
        {
            return Err(format!(
                "scenario {s} disturbs a NIC other than the sender's: it needs at least 2 NICs (--nics)"
            ));
        }
        let bytes = self.bytes as u64;
        if bytes == 0 {
            return Err("--bytes must be at least 1".into());
        }
        if usize::try_from(Scenario::Failure.bytes(bytes)).is_err() {
            return Err(format!("--bytes {bytes}: 4x that does not fit in memory"));
        }
        let rate_bps = zccl_testbed::rate_bps(&self.rate)
            .ok_or_else(|| format!("bad --rate {:?}", self.rate))? as f64;
        Ok(Settings {
            shape,
            rate: self.rate.clone(),
            rate_bps,
            bytes,
            scenarios,
            timeout: Duration::from_secs_f64(self.timeout),
            reps: self.reps,
            route_reps: self.route_reps,
            scan_blocks,
        })
    }
}

/// Runs `zccl bench route` (or, with `--worker`, one of its ranks).
pub fn run(args: &RouteArgs) -> ExitCode {
    let s = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("zccl bench route: error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.worker {
        // One scenario per worker; settings() puts the given one first.
        let scenario = s.scenarios[0];
        let done = if scenario.is_sp() {
            sp_worker::run(s.shape, scenario, s.bytes, s.reps, s.scan_blocks)
        } else {
            worker::run(s.shape, scenario, s.bytes)
        };
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zccl bench route: worker: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = zccl_testbed::available() {
        eprintln!("zccl bench route: skipping: {e}");
        return ExitCode::SUCCESS;
    }
    match harness_main(args, &s) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("zccl bench route: interrupted; the testbed was removed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("zccl bench route: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The arguments that lead to `route` in this process's command line
/// (`bench route` for `zccl`, `route` for `zccl-bench`), for the workers.
fn route_prefix() -> Vec<OsString> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.iter().position(|a| a == "route") {
        Some(i) => args[..=i].to_vec(),
        None => vec!["route".into()],
    }
}

fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

/// Runs every scenario, the router's first, then the SP primitives';
/// `Ok(true)` when all completed and verified.
fn harness_main(args: &RouteArgs, s: &Settings) -> Result<bool> {
    if let Err(e) = crate::hold::install_stop_signals() {
        eprintln!("zccl bench route: warning: cannot handle SIGINT/SIGTERM: {e}");
    }
    let program = std::env::current_exe().context("cannot find this program to start the ranks")?;
    let prefix = route_prefix();
    let spec = |scenario, router| RunSpec {
        scenario,
        router,
        shape: s.shape,
        rate: s.rate.clone(),
        rate_bps: s.rate_bps,
        bytes: s.bytes,
        reps: s.reps,
        scan_blocks: s.scan_blocks,
        deadline: Instant::now() + s.timeout,
        bound: s.timeout,
        verbose: args.verbose,
        program: program.clone(),
        prefix: prefix.clone(),
    };
    let (route_scenarios, sp_scenarios): (Vec<Scenario>, Vec<Scenario>) =
        s.scenarios.iter().partition(|sc| !sc.is_sp());
    let mut results: Vec<ScenarioResult> = Vec::new();
    let mut stopped = None;
    if !route_scenarios.is_empty() {
        out(&report::header(
            s.shape,
            &s.rate,
            s.bytes,
            s.timeout.as_secs_f64(),
            s.route_reps,
        ));
    }
    for &scenario in &route_scenarios {
        // Static and routed runs take turns, so that a slow phase of the
        // machine touches both; each pair shares a deadline.
        let runs = (|| {
            let (mut statics, mut routeds) = (Vec::new(), Vec::new());
            for _ in 0..s.route_reps {
                let first = spec(scenario, Router::Static);
                let routed_spec = RunSpec {
                    router: Router::Routed,
                    ..first.clone()
                };
                if scenario.runs_static() {
                    statics.push(harness::run(&first)?);
                }
                routeds.push(harness::run(&routed_spec)?);
                if statics.iter().chain(&routeds).any(|r| !r.ok) {
                    break;
                }
            }
            let n = routeds.len() as u32;
            anyhow::Ok((report::pick(statics), report::pick(routeds), n))
        })();
        match runs {
            Ok((static_run, Some(routed), n)) => {
                let mut r = report::assemble(
                    scenario, s.shape, &s.rate, s.rate_bps, s.bytes, static_run, routed,
                );
                r.runs = n;
                out(&report::row(&r));
                results.push(r);
            }
            Ok((_, None, _)) => unreachable!("at least one routed run (--route-reps >= 1)"),
            Err(e) => {
                stopped = Some(e.context(format!("scenario {scenario}")));
                break;
            }
        }
    }
    // What ran is reported even when a run could not take place.
    if !route_scenarios.is_empty() {
        let why = stopped.as_ref().map(|e| format!("{e:#}"));
        out(&report::footer(&results, why.as_deref()));
    }
    let setting = SpSetting {
        shape: s.shape,
        rate: s.rate.clone(),
        rate_bps: s.rate_bps,
        bytes: s.bytes,
        reps: s.reps,
        scan_blocks: s.scan_blocks,
    };
    let mut sp_results: Vec<SpResult> = Vec::new();
    if stopped.is_none() && !sp_scenarios.is_empty() {
        if !route_scenarios.is_empty() {
            out("\n");
        }
        out(&sp::header(&setting, s.timeout.as_secs_f64()));
        for &scenario in &sp_scenarios {
            // Static affinity: each rank's traffic leaves on its own NIC.
            match harness::run_sp(&spec(scenario, Router::Static)) {
                Ok((run, reports)) => {
                    let r = sp::assemble(scenario, &setting, &run, &reports);
                    out(&sp::row(&r));
                    sp_results.push(r);
                }
                Err(e) => {
                    stopped = Some(e.context(format!("scenario {scenario}")));
                    break;
                }
            }
        }
        let why = stopped.as_ref().map(|e| format!("{e:#}"));
        out(&sp::footer(&sp_results, why.as_deref()));
    }
    if let Some(path) = &args.json {
        /// One object of the array: a router scenario's or an SP one's.
        #[derive(serde::Serialize)]
        #[serde(untagged)]
        enum Any<'a> {
            Route(&'a ScenarioResult),
            Sp(&'a SpResult),
        }
        let all: Vec<Any> = (results.iter().map(Any::Route))
            .chain(sp_results.iter().map(Any::Sp))
            .collect();
        let text = serde_json::to_string_pretty(&all).expect("results serialize") + "\n";
        std::fs::write(path, text)
            .with_context(|| format!("cannot write the JSON file {}", path.display()))?;
    }
    match stopped {
        Some(e) => Err(e),
        None => Ok(results.iter().all(|r| r.ok) && sp_results.iter().all(|r| r.ok)),
    }
}

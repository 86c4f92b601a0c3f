//! One run of one scenario of `zccl bench route`: build the testbed, start
//! every rank inside its host's namespace, disturb host 0's NIC when the
//! scenario says so, collect the ranks' reports, and always take the
//! testbed down again.
//!
//! * **Testbed**: `hosts` namespaces with `nics` NICs each, every NIC
//!   `tbf`-limited to `rate` ([`zccl_testbed::Testbed`]); a fresh one per
//!   run, so that no run inherits another's link state, rates or sockets.
//! * **Ranks**: this same program with `--worker` (see [`super::worker`],
//!   [`super::sp_worker`]), run through `ip netns exec` in its host, with
//!   the launcher variables (`ZCCL_RANK` = `host × ranks + local rank`, or
//!   `local rank × hosts + host` where the scenario interleaves the hosts
//!   ([`Scenario::placement`]), `ZCCL_LOCAL_RANK`,
//!   `ZCCL_ROOT_ADDR` = host 0's NIC 0, port 29500, a fresh
//!   `ZCCL_JOB_SECRET`), `ZCCL_SOCKET_IFNAME=nic` (every NIC of the host),
//!   `ZCCL_TOPO_FILE` (the testbed's topology: GPU `l` is affine to NIC
//!   `l mod nics`), `ZCCL_ROUTER` (`affinity` or `on`) and `ZCCL_TIMEOUT`
//!   (the run's bound). Variables of other launchers are removed. A rank
//!   dies with the harness (`PR_SET_PDEATHSIG`).
//! * **Failure**: the first `ROUTE-START` line starts the clock; once half
//!   the bytes would have left at the full rate of all NICs, host 0's last
//!   NIC is set down; it is set up again when every sender printed
//!   `ROUTE-DONE`, or at the latest 2 × the scenario's bound after the
//!   start, so that a runtime that cannot route around the failure finishes
//!   late (and misses the bound) instead of hanging until the timeout.
//! * **Slow**: host 0's last NIC gets a quarter of the rate before the
//!   ranks start.
//! * **Bounds**: a run ends by its `deadline` (`--timeout` after its pair
//!   of runs started: a scenario's static and routed runs share one per
//!   repetition, `--route-reps`); past it
//!   every rank is killed and the run fails, and a run that would start
//!   with less than a second left fails at once. `ZCCL_TIMEOUT` is what is
//!   left, so the ranks' own deadlines come first. When a rank fails, the others
//!   get [`GRACE`] to exit, then are killed. SIGINT/SIGTERM (see
//!   [`crate::hold::install_stop_signals`]) kill the ranks and end the run
//!   with [`Interrupted`].

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use zccl_runtime::UniqueId;
use zccl_runtime::reaper::{RankExit, die_with_parent};
use zccl_testbed::{Spec, Testbed};

use super::protocol::{self, Line, RankReport, SpRankReport};
use super::scenario::{Disturbance, Scenario, Shape, Transfer};

/// How inter-host sends travel in a run (`ZCCL_ROUTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Router {
    /// `affinity`: each message leaves whole on the sender's affine NIC.
    Static,
    /// `on`: the NIC-aware router.
    Routed,
}

impl Router {
    /// The value of `ZCCL_ROUTER`.
    pub fn env_value(self) -> &'static str {
        match self {
            Router::Static => "affinity",
            Router::Routed => "on",
        }
    }
}

/// How long ranks get to exit after one of them failed.
pub const GRACE: Duration = Duration::from_secs(3);

/// Port of the bootstrap root, on host 0's NIC 0.
pub const ROOT_PORT: u16 = 29500;

/// Lines of each rank's stderr kept for error messages.
const TAIL_LINES: usize = 30;

/// The run was stopped by SIGINT or SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The scenario.
    pub scenario: Scenario,
    /// Static or routed.
    pub router: Router,
    /// Hosts, NICs, ranks.
    pub shape: Shape,
    /// Rate of every NIC, `tc` syntax.
    pub rate: String,
    /// The same in bits/s.
    pub rate_bps: f64,
    /// `--bytes` (the scenario scales it: failure sends 4×).
    pub bytes: u64,
    /// SP scenarios: `--reps`.
    pub reps: u32,
    /// SP scenarios: `--scan-blocks`.
    pub scan_blocks: usize,
    /// When the scenario's time is up.
    pub deadline: Instant,
    /// The scenario's bound (`--timeout`), for messages.
    pub bound: Duration,
    /// Copy every rank's stderr to ours, prefixed.
    pub verbose: bool,
    /// This program.
    pub program: PathBuf,
    /// Its arguments up to the `route` subcommand (`bench route` for `zccl`).
    pub prefix: Vec<OsString>,
}

/// What one run gave.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    /// `ZCCL_ROUTER` of the run.
    pub router: &'static str,
    /// Every rank succeeded, every transfer was verified.
    pub ok: bool,
    /// Every byte of every transfer was checked and right.
    pub verified: bool,
    /// First send start to last verdict, seconds.
    pub time_s: Option<f64>,
    /// Payload bytes of all transfers.
    pub bytes: u64,
    /// `bytes` × 8 / `time_s`, Gbit/s.
    pub gbps: Option<f64>,
    /// Bytes each NIC of host 0 transmitted during the timed exchange
    /// (all ranks of host 0 and every frame header included).
    pub nic_tx_bytes: Vec<u64>,
    /// Failure: when the NIC went down, seconds after the start.
    pub link_down_at_s: Option<f64>,
    /// Failure: when it came back, seconds after the start.
    pub link_up_at_s: Option<f64>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// A rank process and what it said.
struct Rank {
    label: String,
    child: Option<Child>,
    exit: Option<RankExit>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

enum Event {
    Line(usize, String),
    Eof,
}

/// The launcher variables of other launchers, removed from the ranks'
/// environment so that only ours count.
const FOREIGN_VARS: [&str; 12] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "ZCCL_UNIQUE_ID",
    "ZCCL_ROOT_PORT",
    "ZCCL_HOST_ID",
    "ZCCL_METRICS_ADDR",
];
const FOREIGN_PREFIXES: [&str; 4] = ["SLURM_", "OMPI_", "PMIX_", "TORCHELASTIC_"];

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("zccl-route-{}-{seq}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `spec` once. `Err` only when the run could not take place (the
/// testbed could not be built, a rank could not be started) or was
/// interrupted ([`Interrupted`]); a run that failed is an `Ok` outcome with
/// `ok: false` and `error`.
pub fn run(spec: &RunSpec) -> Result<RunOutcome> {
    run_with_reports(spec).map(|(out, _)| out)
}

/// [`run`] for the SP scenarios: also the ranks' `SP-RESULT` reports (the
/// outcome's `verified` and `time_s` only count point-to-point transfers,
/// which these scenarios have none of; see [`super::sp::assemble`]).
pub fn run_sp(spec: &RunSpec) -> Result<(RunOutcome, Vec<SpRankReport>)> {
    run_with_reports(spec)
}

fn run_with_reports(spec: &RunSpec) -> Result<(RunOutcome, Vec<SpRankReport>)> {
    let shape = spec.shape;
    let interrupted = || crate::hold::stop_requested();
    if interrupted() {
        return Err(Interrupted.into());
    }
    if spec.deadline.saturating_duration_since(Instant::now()) < Duration::from_secs(1) {
        let out = RunOutcome::failed(
            spec,
            format!(
                "timed out: the scenario's {:.0} s bound passed before this run started",
                spec.bound.as_secs_f64()
            ),
        );
        return Ok((out, Vec::new()));
    }
    let tb = Testbed::up(&Spec {
        hosts: shape.hosts,
        nics: shape.nics,
        rate: Some(spec.rate.clone()),
        ..Spec::default()
    });
    // Ctrl-C also stops the `ip` commands building it.
    let tb = match tb {
        Err(_) if interrupted() => return Err(Interrupted.into()),
        tb => tb.context("cannot build the testbed")?,
    };
    let disturbance = spec.scenario.disturbance(shape.nics);
    if let Disturbance::QuarterRate { nic } = disturbance {
        let quarter = format!("{}bit", (spec.rate_bps / 4.0).round() as u64);
        tb.set_rate(0, nic, &quarter)
            .with_context(|| format!("cannot slow host 0's nic{nic} to {quarter}"))?;
    }
    let dir = TempDir::new()?;
    let mut topo = Vec::new();
    for h in 0..shape.hosts {
        let f = dir.0.join(format!("topo-h{h}.xml"));
        std::fs::write(&f, tb.topo_xml(shape.ranks))
            .with_context(|| format!("cannot write {}", f.display()))?;
        topo.push(f);
    }
    let secret = UniqueId::random_secret()
        .map_err(|e| anyhow::anyhow!("cannot make a job secret: {e}"))?
        .to_hex();
    let root = format!("{}:{ROOT_PORT}", tb.addr(0, 0));
    let (tx, rx) = mpsc::channel();
    let mut ranks = Vec::with_capacity(shape.world());
    let started = Instant::now();
    for (h, topo) in topo.iter().enumerate() {
        for l in 0..shape.ranks {
            let r = shape.rank_in(spec.scenario.placement(), h, l);
            match spawn(spec, &tb, (h, l), ranks.len(), &root, &secret, topo, &tx) {
                Ok(rank) => ranks.push(rank),
                Err(e) => {
                    kill_all(&mut ranks);
                    return Err(e.context(format!("cannot start rank {r}")));
                }
            }
        }
    }
    drop(tx);
    let out = supervise(spec, &tb, disturbance, &mut ranks, &rx, started);
    if let Disturbance::LinkDown { nic } = disturbance {
        let _ = tb.set_link(0, nic, true);
    }
    out
}

impl RunOutcome {
    /// A run that did not take place.
    fn failed(spec: &RunSpec, error: String) -> Self {
        RunOutcome {
            router: spec.router.env_value(),
            ok: false,
            verified: false,
            time_s: None,
            bytes: spec
                .scenario
                .transfers(&spec.shape, spec.bytes)
                .iter()
                .map(|t| t.bytes)
                .sum(),
            gbps: None,
            nic_tx_bytes: Vec::new(),
            link_down_at_s: None,
            link_up_at_s: None,
            error: Some(error),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    spec: &RunSpec,
    tb: &Testbed,
    (h, l): (usize, usize),
    idx: usize,
    root: &str,
    secret: &str,
    topo: &Path,
    tx: &mpsc::Sender<Event>,
) -> Result<Rank> {
    let shape = spec.shape;
    let r = shape.rank_in(spec.scenario.placement(), h, l);
    let label = format!("{} h{h}/l{l} rank {r}", spec.router.env_value());
    let left = spec.deadline.saturating_duration_since(Instant::now());
    let mut cmd = tb.command(h, &spec.program.to_string_lossy());
    cmd.args(&spec.prefix).args([
        "--worker".to_string(),
        "--scenario".into(),
        spec.scenario.name().into(),
        "--hosts".into(),
        shape.hosts.to_string(),
        "--nics".into(),
        shape.nics.to_string(),
        "--ranks".into(),
        shape.ranks.to_string(),
        "--rate".into(),
        spec.rate.clone(),
        "--bytes".into(),
        spec.bytes.to_string(),
        "--reps".into(),
        spec.reps.to_string(),
        "--scan-blocks".into(),
        spec.scan_blocks.to_string(),
    ]);
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if FOREIGN_VARS.contains(&name.as_ref())
            || FOREIGN_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env("ZCCL_RANK", r.to_string())
        .env("ZCCL_WORLD_SIZE", shape.world().to_string())
        .env("ZCCL_LOCAL_RANK", l.to_string())
        .env("ZCCL_LOCAL_WORLD_SIZE", shape.ranks.to_string())
        .env("ZCCL_ROOT_ADDR", root)
        .env("ZCCL_JOB_SECRET", secret)
        .env("ZCCL_SOCKET_IFNAME", "nic")
        .env("ZCCL_TOPO_FILE", topo)
        .env("ZCCL_ROUTER", spec.router.env_value())
        .env(
            "ZCCL_TIMEOUT",
            format!("{}", left.as_secs_f64().ceil().max(1.0) as u64),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().context("cannot run `ip netns exec`")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(Event::Line(idx, line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Event::Eof);
    });
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let stderr = child.stderr.take().expect("piped stderr");
    let (t, verbose, prefix) = (tail.clone(), spec.verbose, label.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if verbose {
                eprintln!("[{prefix}] {line}");
            }
            let mut t = t.lock().expect("tail");
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    });
    Ok(Rank {
        label,
        child: Some(child),
        exit: None,
        tail,
    })
}

fn kill_all(ranks: &mut [Rank]) {
    for rank in ranks.iter_mut() {
        if let Some(c) = &mut rank.child {
            let _ = c.kill();
            if let Ok(st) = c.wait() {
                rank.exit = Some(RankExit::from_status(st));
            }
            rank.child = None;
        }
    }
}

/// Seconds from `a` to `b`.
fn secs(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64()
}

fn supervise(
    spec: &RunSpec,
    tb: &Testbed,
    disturbance: Disturbance,
    ranks: &mut [Rank],
    rx: &mpsc::Receiver<Event>,
    started: Instant,
) -> Result<(RunOutcome, Vec<SpRankReport>)> {
    let shape = spec.shape;
    let transfers = spec.scenario.transfers(&shape, spec.bytes);
    let senders = transfers.len();
    let total: u64 = transfers.iter().map(|t| t.bytes).sum();
    let deadline = spec.deadline;
    // Failure: when to set the link down, and the latest time to restore it.
    let half =
        Duration::from_secs_f64(total as f64 * 8.0 / 2.0 / (shape.nics as f64 * spec.rate_bps));
    let latest_up = Duration::from_secs_f64(
        2.0 * spec
            .scenario
            .bound_s(total, shape.nics, spec.rate_bps)
            .unwrap_or(0.0),
    );
    let mut reports: Vec<Option<RankReport>> = vec![None; ranks.len()];
    let mut sp_reports: Vec<Option<SpRankReport>> = vec![None; ranks.len()];
    let mut start: Option<Instant> = None;
    let mut done = 0usize;
    let (mut down_at, mut up_at) = (None::<Instant>, None::<Instant>);
    let mut open_streams = ranks.len();
    let mut first_failure: Option<String> = None;
    let mut kill_at: Option<Instant> = None;
    let mut timed_out = false;
    let mut all_exited: Option<Instant> = None;
    let mut link_error: Option<String> = None;
    loop {
        if crate::hold::stop_requested() {
            kill_all(ranks);
            return Err(Interrupted.into());
        }
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(Event::Line(idx, line)) => match protocol::parse(&line) {
                Line::Start { .. } => {
                    start.get_or_insert_with(Instant::now);
                }
                Line::Done { .. } => done += 1,
                Line::Result(r) => {
                    if let Some(slot) = reports.get_mut(idx) {
                        *slot = Some(r);
                    }
                }
                Line::Sp(r) => {
                    if let Some(slot) = sp_reports.get_mut(idx) {
                        *slot = Some(r);
                    }
                }
                Line::Other(text) => {
                    if spec.verbose {
                        eprintln!("[{}] {text}", ranks[idx].label);
                    }
                }
            },
            Ok(Event::Eof) => open_streams = open_streams.saturating_sub(1),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => open_streams = 0,
        }
        let now = Instant::now();
        if let (Disturbance::LinkDown { nic }, Some(t0)) = (disturbance, start) {
            if down_at.is_none() && now >= t0 + half && done < senders {
                if let Err(e) = tb.set_link(0, nic, false) {
                    link_error.get_or_insert(format!("cannot set nic{nic} down: {e}"));
                }
                down_at = Some(Instant::now());
            }
            if down_at.is_some() && up_at.is_none() && (done >= senders || now >= t0 + latest_up) {
                if let Err(e) = tb.set_link(0, nic, true) {
                    link_error.get_or_insert(format!("cannot set nic{nic} up: {e}"));
                }
                up_at = Some(Instant::now());
            }
        }
        for rank in ranks.iter_mut() {
            let Some(c) = &mut rank.child else { continue };
            let exit = match c.try_wait() {
                Ok(None) => continue,
                Ok(Some(st)) => RankExit::from_status(st),
                Err(_) => RankExit::Code(1),
            };
            rank.child = None;
            rank.exit = Some(exit);
            if !exit.success() && first_failure.is_none() {
                let tail = rank.tail.lock().expect("tail");
                let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
                first_failure = Some(format!(
                    "{} {exit} (the first rank to fail); its last stderr lines:\n    {}",
                    rank.label,
                    tail.join("\n    ")
                ));
                kill_at = Some(now + GRACE);
            }
        }
        let running = ranks.iter().any(|r| r.child.is_some());
        if !running {
            // Every rank exited: read what is left of their output, but do
            // not wait long for a pipe something else still holds open.
            let since = *all_exited.get_or_insert(now);
            if open_streams == 0 || now >= since + GRACE {
                break;
            }
        } else if now >= deadline {
            timed_out = true;
            kill_all(ranks);
        } else if kill_at.is_some_and(|t| now >= t) {
            kill_all(ranks);
        }
    }
    if let Disturbance::LinkDown { nic } = disturbance
        && down_at.is_none()
        && start.is_some()
        && !timed_out
        && first_failure.is_none()
    {
        link_error = Some(format!(
            "the transfer ended before nic{nic} went down ({:.2} s after the start, \
             the time half the bytes take at the full rate): are the NIC rates enforced?",
            half.as_secs_f64()
        ));
    }
    let t0 = start.unwrap_or(started);
    let mut out = RunOutcome::failed(spec, String::new());
    out.link_down_at_s = down_at.map(|t| secs(t0, t));
    out.link_up_at_s = up_at.map(|t| secs(t0, t));
    let error = if timed_out {
        let still: Vec<&str> = ranks
            .iter()
            .filter(|r| r.exit.is_some_and(|e| e == RankExit::Signal(libc::SIGKILL)))
            .map(|r| r.label.as_str())
            .collect();
        Some(format!(
            "timed out: the scenario's {:.0} s bound passed (killed: {})",
            spec.bound.as_secs_f64(),
            still.join(", ")
        ))
    } else {
        first_failure
    };
    let reports: Vec<RankReport> = reports.into_iter().flatten().collect();
    let summary = summarize(&transfers, &reports);
    out.verified = summary.verified;
    out.time_s = summary.time_s;
    out.gbps = summary
        .time_s
        .filter(|&t| t > 0.0)
        .map(|t| total as f64 * 8.0 / t / 1e9);
    out.nic_tx_bytes = summary.nic_tx_bytes;
    out.error = error.or(link_error).or(summary.error);
    out.ok = out.error.is_none() && out.verified;
    Ok((out, sp_reports.into_iter().flatten().collect()))
}

/// What the reports of one run add up to.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Every transfer has a send report and a receive report, both verified.
    pub verified: bool,
    /// Earliest start to latest end over the sends, seconds.
    pub time_s: Option<f64>,
    /// Host NIC counters: per NIC, the highest reading after a send minus
    /// the lowest before one (brackets every sender's bytes).
    pub nic_tx_bytes: Vec<u64>,
    /// The first problem found.
    pub error: Option<String>,
}

/// Checks the reports against the transfers and computes the run's time.
///
/// ```
/// use zccl_bench::route::harness::summarize;
/// use zccl_bench::route::protocol::{RankReport, RecvReport, SendReport};
/// use zccl_bench::route::scenario::Transfer;
/// let t = [Transfer { from: 0, to: 2, bytes: 10 }];
/// let send = SendReport { to: 2, bytes: 10, start_ns: 1_000_000_000, end_ns: 3_000_000_000,
///     verified: true, first_bad: None, nic_tx_before: vec![5, 5], nic_tx_after: vec![15, 6] };
/// let recv = RecvReport { from: 0, bytes: 10, verified: true, first_bad: None };
/// let reports = [
///     RankReport { rank: 0, sends: vec![send], recvs: vec![] },
///     RankReport { rank: 2, sends: vec![], recvs: vec![recv] },
/// ];
/// let s = summarize(&t, &reports);
/// assert!(s.verified && s.error.is_none());
/// assert_eq!(s.time_s, Some(2.0));
/// assert_eq!(s.nic_tx_bytes, [10, 1]);
/// ```
pub fn summarize(transfers: &[Transfer], reports: &[RankReport]) -> Summary {
    let mut error = None::<String>;
    let mut verified = true;
    let mut sends = Vec::new();
    for t in transfers {
        let send = reports
            .iter()
            .filter(|r| r.rank == t.from)
            .flat_map(|r| &r.sends)
            .find(|s| s.to == t.to && s.bytes == t.bytes);
        let recv = reports
            .iter()
            .filter(|r| r.rank == t.to)
            .flat_map(|r| &r.recvs)
            .find(|s| s.from == t.from && s.bytes == t.bytes);
        match (send, recv) {
            (Some(s), Some(r)) => {
                if !(s.verified && r.verified) {
                    verified = false;
                    let at = r.first_bad.or(s.first_bad).unwrap_or(0);
                    error.get_or_insert(format!(
                        "wrong data: rank {} got rank {}'s {} B with the first wrong byte at offset {at}",
                        t.to, t.from, t.bytes
                    ));
                }
                sends.push(s);
            }
            _ => {
                verified = false;
                error.get_or_insert(format!(
                    "no report of the transfer rank {} -> rank {} ({} B)",
                    t.from, t.to, t.bytes
                ));
            }
        }
    }
    let first = sends.iter().min_by_key(|s| s.start_ns);
    let last = sends.iter().max_by_key(|s| s.end_ns);
    let (time_s, nic_tx_bytes) = match (first, last) {
        (Some(f), Some(l)) if verified => {
            let dt = l.end_ns.saturating_sub(f.start_ns) as f64 / 1e9;
            // Per NIC, the lowest counter any sender read before it sent
            // and the highest any read after: every sender reads before its
            // own first byte and after its last, so this brackets all of
            // them (the first sender to start need not be the first to
            // read: another may already be sending when it does).
            let k = f.nic_tx_before.len();
            let nic = if sends
                .iter()
                .all(|s| s.nic_tx_before.len() == k && s.nic_tx_after.len() == k)
            {
                (0..k)
                    .map(|i| {
                        let lo = sends.iter().map(|s| s.nic_tx_before[i]).min().unwrap_or(0);
                        let hi = sends.iter().map(|s| s.nic_tx_after[i]).max().unwrap_or(0);
                        hi.saturating_sub(lo)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            (Some(dt), nic)
        }
        _ => (None, Vec::new()),
    };
    Summary {
        verified: verified && !transfers.is_empty(),
        time_s,
        nic_tx_bytes,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::protocol::{RecvReport, SendReport};

    /// The sender that starts first may read the counters after another
    /// sender's first bytes left: the count brackets every sender's reads.
    #[test]
    fn nic_bytes_bracket_every_senders_reads() {
        let t = [
            Transfer {
                from: 0,
                to: 2,
                bytes: 10,
            },
            Transfer {
                from: 1,
                to: 3,
                bytes: 10,
            },
        ];
        let send = |to, start_ns, end_ns, before: [u64; 2], after: [u64; 2]| SendReport {
            to,
            bytes: 10,
            start_ns,
            end_ns,
            verified: true,
            first_bad: None,
            nic_tx_before: before.to_vec(),
            nic_tx_after: after.to_vec(),
        };
        let recv = |from| RecvReport {
            from,
            bytes: 10,
            verified: true,
            first_bad: None,
        };
        let reports = [
            // Rank 0 starts first but reads late (rank 1's NIC already moved).
            RankReport {
                rank: 0,
                sends: vec![send(2, 100, 500, [0, 4], [10, 9])],
                recvs: vec![],
            },
            RankReport {
                rank: 1,
                sends: vec![send(3, 150, 400, [0, 0], [8, 10])],
                recvs: vec![],
            },
            RankReport {
                rank: 2,
                sends: vec![],
                recvs: vec![recv(0)],
            },
            RankReport {
                rank: 3,
                sends: vec![],
                recvs: vec![recv(1)],
            },
        ];
        let s = summarize(&t, &reports);
        assert!(s.verified, "{:?}", s.error);
        assert_eq!(s.nic_tx_bytes, [10, 10]);
    }
}

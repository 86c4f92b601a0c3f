//! The SP primitives' scenarios of `zccl bench route` (issue #13; pure):
//! what each one times, how the ranks' reports add up, the ratios, the
//! targets, the table and the JSON. The ranks are in [`super::sp_worker`].
//!
//! Every rank takes part in every timed step; a step is timed from the
//! earliest rank leaving the barrier before it to the latest rank having
//! everything it receives (the ranks share the machine's clock), and each
//! strategy's time is the median over `--reps` repetitions.
//!
//! * `token_ring`, `token_ring_block`: with `S = --bytes`,
//!   * `one_way`: one ring shift (`ring_shift_into`, offset +1) of `S`;
//!   * `two_one_way`: a shift of `S` forward (+1), then one of `S` back
//!     (−1), one after the other: a ring pass without TokenRing's
//!     bidirectional step;
//!   * `bidir`: TokenRing's bidirectional step (`bidir_ring_step_into`):
//!     `S` forward on one channel and `S` back on another, both in flight.
//!
//!   Ratio: `bidir / two_one_way` (target ≤ 0.6). `token_ring` interleaves
//!   the hosts (both ring neighbours of every rank are on another host);
//!   `token_ring_block` places ranks host by host.
//! * `all_scan`: every rank holds a GLA state of `S` bytes (`f32`,
//!   [`SCAN_COLS`] columns) and a per-row decay;
//!   * `all_scan`: `all_scan_diag` (exclusive prefix, forward), pipelined
//!     over `--scan-blocks` row blocks;
//!   * `all_gather`: `all_gather_into` of the same states (the exchange
//!     All-Scan replaces; the local combine after it is not timed).
//!
//!   Ratio: `all_gather / all_scan` (target ≥ 2.5).

use serde::Serialize;

use super::harness::RunOutcome;
use super::protocol::SpRankReport;
use super::report::{human_bytes, targets_block};
use super::scenario::{Placement, Scenario, Shape};

/// Columns of the All-Scan state (`d_v`).
pub const SCAN_COLS: usize = 64;

/// The strategies a scenario times, in the order each repetition runs them.
///
/// ```
/// use zccl_bench::route::{scenario::Scenario, sp::strategies};
/// assert_eq!(strategies(Scenario::TokenRing), ["one_way", "two_one_way", "bidir"]);
/// assert_eq!(strategies(Scenario::AllScan), ["all_scan", "all_gather"]);
/// ```
pub fn strategies(scenario: Scenario) -> &'static [&'static str] {
    match scenario {
        Scenario::AllScan => &["all_scan", "all_gather"],
        _ => &["one_way", "two_one_way", "bidir"],
    }
}

/// Bytes one rank sends in one step of `strategy`, `world` ranks, `bytes`
/// = `--bytes` (All-Scan: the last rank of the chain sends nothing).
pub fn sent_per_rank(strategy: &str, world: usize, bytes: u64) -> u64 {
    match strategy {
        "two_one_way" | "bidir" => 2 * bytes,
        "all_gather" => (world as u64).saturating_sub(1) * bytes,
        _ => bytes,
    }
}

/// The ratio a scenario reports: `(name, numerator, denominator)`.
pub fn ratio_of(scenario: Scenario) -> (&'static str, &'static str, &'static str) {
    match scenario {
        Scenario::AllScan => ("all_gather/all_scan", "all_gather", "all_scan"),
        _ => ("bidir/two_one_way", "bidir", "two_one_way"),
    }
}

/// Whether `ratio` (see [`ratio_of`]) meets the scenario's target.
///
/// ```
/// use zccl_bench::route::{scenario::Scenario, sp::target_met};
/// assert!(target_met(Scenario::TokenRingBlock, 0.55));
/// assert!(!target_met(Scenario::TokenRing, 0.99));
/// assert!(target_met(Scenario::AllScan, 4.0));
/// assert!(!target_met(Scenario::AllScan, 2.4));
/// ```
pub fn target_met(scenario: Scenario, ratio: f64) -> bool {
    match scenario {
        Scenario::AllScan => ratio >= 2.5,
        _ => ratio <= 0.6,
    }
}

/// The All-Scan state's rows for `bytes`, or why `bytes` does not make one
/// of at least `blocks` rows.
///
/// ```
/// use zccl_bench::route::sp::scan_rows;
/// assert_eq!(scan_rows(4 << 20, 4), Ok(16384));
/// assert!(scan_rows(1000, 4).is_err());
/// ```
pub fn scan_rows(bytes: u64, blocks: usize) -> Result<usize, String> {
    let row = (SCAN_COLS * 4) as u64;
    if !bytes.is_multiple_of(row) || bytes / row < blocks.max(1) as u64 {
        return Err(format!(
            "all_scan: --bytes {bytes} must be a multiple of {row} (a row of {SCAN_COLS} f32) \
             with at least --scan-blocks {blocks} rows"
        ));
    }
    Ok((bytes / row) as usize)
}

/// One strategy's times.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrategyTime {
    /// The strategy.
    pub strategy: &'static str,
    /// Bytes each rank sends in one step.
    pub sent_per_rank: u64,
    /// Median over the repetitions, seconds.
    pub median_s: f64,
    /// Fastest repetition, seconds.
    pub min_s: f64,
    /// Slowest repetition, seconds.
    pub max_s: f64,
    /// Every repetition, in order, seconds.
    pub reps_s: Vec<f64>,
}

/// What the ranks' reports of one run add up to.
#[derive(Debug, Clone, PartialEq)]
pub struct SpSummary {
    /// Every rank reported every step, and all of them verified.
    pub verified: bool,
    /// Per strategy (in [`strategies`] order), when every rank reported.
    pub times: Vec<StrategyTime>,
    /// The first problem found.
    pub error: Option<String>,
}

/// The median of `v` (mean of the middle two for an even count).
///
/// ```
/// use zccl_bench::route::sp::median;
/// assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
/// assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
/// ```
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => s[n / 2],
        _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Checks the reports of a run of `scenario` (`world` ranks, `reps`
/// repetitions, `bytes` = `--bytes`) and computes each strategy's times.
pub fn summarize(
    scenario: Scenario,
    world: usize,
    reps: u32,
    bytes: u64,
    reports: &[SpRankReport],
) -> SpSummary {
    let mut error = None::<String>;
    let mut verified = true;
    let mut times = Vec::new();
    for &strategy in strategies(scenario) {
        let mut reps_s = Vec::new();
        for rep in 0..reps {
            let steps: Vec<_> = reports
                .iter()
                .filter_map(|r| {
                    r.steps
                        .iter()
                        .find(|s| s.strategy == strategy && s.rep == rep)
                        .map(|s| (r.rank, s))
                })
                .collect();
            if steps.len() != world {
                verified = false;
                error.get_or_insert(format!(
                    "{strategy} repetition {rep}: {} of {world} ranks reported",
                    steps.len()
                ));
                continue;
            }
            if let Some((rank, s)) = steps.iter().find(|(_, s)| !s.verified) {
                verified = false;
                error.get_or_insert(format!(
                    "wrong data: {strategy} repetition {rep}: rank {rank} got a wrong byte at offset {}",
                    s.first_bad.unwrap_or(0)
                ));
                continue;
            }
            let start = steps.iter().map(|(_, s)| s.start_ns).min().unwrap_or(0);
            let end = steps.iter().map(|(_, s)| s.end_ns).max().unwrap_or(0);
            reps_s.push(end.saturating_sub(start) as f64 / 1e9);
        }
        if reps_s.len() == reps as usize && reps > 0 {
            times.push(StrategyTime {
                strategy,
                sent_per_rank: sent_per_rank(strategy, world, bytes),
                median_s: median(&reps_s),
                min_s: reps_s.iter().copied().fold(f64::INFINITY, f64::min),
                max_s: reps_s.iter().copied().fold(0.0, f64::max),
                reps_s,
            });
        }
    }
    SpSummary {
        verified: verified && reps > 0,
        times,
        error,
    }
}

/// One SP scenario, serialized as one object of `--json`'s array.
#[derive(Debug, Clone, Serialize)]
pub struct SpResult {
    /// The scenario.
    pub scenario: Scenario,
    /// How ranks are numbered across hosts.
    pub placement: Placement,
    /// Hosts of the testbed.
    pub hosts: usize,
    /// NICs per host.
    pub nics: usize,
    /// Ranks per host.
    pub ranks: usize,
    /// Ranks in all.
    pub world: usize,
    /// Rate of every NIC and direction, as given (`tc` syntax).
    pub rate: String,
    /// The same, Gbit/s.
    pub rate_gbps: f64,
    /// `ZCCL_ROUTER` of the run (always `affinity`: every rank's traffic
    /// to another host leaves on its own NIC).
    pub router: &'static str,
    /// `--bytes`: the block of each direction of a shift, or each rank's
    /// All-Scan state.
    pub bytes: u64,
    /// All-Scan: row blocks of the pipeline (`--scan-blocks`).
    pub scan_blocks: Option<usize>,
    /// All-Scan: state rows and columns (`f32`).
    pub scan_rows: Option<usize>,
    /// All-Scan: state columns.
    pub scan_cols: Option<usize>,
    /// Repetitions of each strategy.
    pub reps: u32,
    /// Each strategy's times.
    pub strategies: Vec<StrategyTime>,
    /// What `ratio` divides.
    pub ratio_name: &'static str,
    /// The ratio (see [`ratio_of`]) of the medians.
    pub ratio: Option<f64>,
    /// The acceptance target, in words.
    pub target: &'static str,
    /// Whether the target is met (`null` when the run failed).
    pub target_met: Option<bool>,
    /// Every received byte of every step was checked and right.
    pub verified: bool,
    /// The run completed within its bound and verified.
    pub ok: bool,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// What describes an SP scenario besides its run.
#[derive(Debug, Clone)]
pub struct SpSetting {
    /// The cluster.
    pub shape: Shape,
    /// `--rate`.
    pub rate: String,
    /// The same in bits/s.
    pub rate_bps: f64,
    /// `--bytes`.
    pub bytes: u64,
    /// `--reps`.
    pub reps: u32,
    /// `--scan-blocks`.
    pub scan_blocks: usize,
}

/// Builds a scenario's result from its run and its ranks' reports.
pub fn assemble(
    scenario: Scenario,
    s: &SpSetting,
    run: &RunOutcome,
    reports: &[SpRankReport],
) -> SpResult {
    let world = s.shape.world();
    let sum = summarize(scenario, world, s.reps, s.bytes, reports);
    let (ratio_name, num, den) = ratio_of(scenario);
    let median = |name: &str| {
        sum.times
            .iter()
            .find(|t| t.strategy == name)
            .map(|t| t.median_s)
    };
    let ratio = median(num)
        .zip(median(den))
        .filter(|&(_, d)| d > 0.0)
        .map(|(n, d)| n / d);
    // The run's own error (a rank failed, timed out) comes first.
    let error = run.error.clone().or(sum.error);
    let ok = error.is_none() && sum.verified;
    let scan = scenario == Scenario::AllScan;
    SpResult {
        scenario,
        placement: scenario.placement(),
        hosts: s.shape.hosts,
        nics: s.shape.nics,
        ranks: s.shape.ranks,
        world,
        rate: s.rate.clone(),
        rate_gbps: s.rate_bps / 1e9,
        router: run.router,
        bytes: s.bytes,
        scan_blocks: scan.then_some(s.scan_blocks),
        scan_rows: scan
            .then(|| scan_rows(s.bytes, s.scan_blocks).ok())
            .flatten(),
        scan_cols: scan.then_some(SCAN_COLS),
        reps: s.reps,
        strategies: sum.times,
        ratio_name,
        ratio: ratio.filter(|_| ok),
        target: scenario.target(),
        target_met: ratio.filter(|_| ok).map(|r| target_met(scenario, r)),
        verified: sum.verified,
        ok,
        error,
    }
}

/// The lines above the SP table.
pub fn header(s: &SpSetting, timeout_s: f64) -> String {
    format!(
        "# zccl bench route, SP primitives: {} hosts x {} NICs x {} ranks per host, {} per NIC, \
         {} per block/state, {} repetitions, each scenario bounded to {timeout_s:.0} s\n\
         # ZCCL_ROUTER=affinity; times = medians (s), earliest rank leaving the barrier to the last rank done\n\
         #\n\
         # {:<16} {:<11} {:>9} {:>5}  {:<52} {:<19} {:>6}  check\n",
        s.shape.hosts,
        s.shape.nics,
        s.shape.ranks,
        s.rate,
        human_bytes(s.bytes),
        s.reps,
        "scenario",
        "placement",
        "bytes",
        "ranks",
        "strategies (median s)",
        "ratio",
        "",
    )
}

/// One table row.
pub fn row(r: &SpResult) -> String {
    let times: Vec<String> = r
        .strategies
        .iter()
        .map(|t| format!("{} {:.3}", t.strategy, t.median_s))
        .collect();
    let mut times = times.join("  ");
    if let Some(k) = r.scan_blocks {
        times.push_str(&format!("  (K={k})"));
    }
    let check = match &r.error {
        None if r.verified => "ok",
        Some(e) if e.starts_with("timed out") => "TIMEOUT",
        Some(e) if e.starts_with("wrong data") => "WRONG",
        _ => "FAILED",
    };
    format!(
        "  {:<16} {:<11} {:>9} {:>5}  {:<52} {:<19} {:>6}  {check}\n",
        r.scenario.name(),
        r.placement.name(),
        human_bytes(r.bytes),
        r.world,
        times,
        r.ratio_name,
        r.ratio
            .map_or_else(|| "-".to_string(), |x| format!("{x:.2}")),
    )
}

/// The lines below the SP table: targets, spread, errors.
pub fn footer(results: &[SpResult], stopped: Option<&str>) -> String {
    let mut out = targets_block(
        16,
        results
            .iter()
            .map(|r| (r.scenario.name(), r.target, r.target_met)),
    );
    out.push_str("# Spread over the repetitions (min-max s):\n");
    for r in results {
        let spread: Vec<String> = r
            .strategies
            .iter()
            .map(|t| format!("{} {:.3}-{:.3}", t.strategy, t.min_s, t.max_s))
            .collect();
        if !spread.is_empty() {
            out.push_str(&format!(
                "#   {:<16} {}\n",
                r.scenario.name(),
                spread.join("  ")
            ));
        }
    }
    for r in results {
        if let Some(e) = &r.error {
            out.push_str(&format!("# {}: {e}\n", r.scenario.name()));
        }
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        out.push_str(&format!("# {failed} scenario(s) FAILED\n"));
    }
    match stopped {
        Some(why) => out.push_str(&format!("# Stopped: {why}\n")),
        None if failed == 0 => out.push_str("# All steps completed and verified\n"),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::protocol::SpStep;

    fn step(strategy: &str, rep: u32, start: u64, end: u64, ok: bool) -> SpStep {
        SpStep {
            strategy: strategy.into(),
            rep,
            start_ns: start,
            end_ns: end,
            verified: ok,
            first_bad: (!ok).then_some(12),
        }
    }

    fn run(error: Option<&str>) -> RunOutcome {
        RunOutcome {
            router: "affinity",
            ok: error.is_none(),
            verified: false,
            time_s: None,
            bytes: 0,
            gbps: None,
            nic_tx_bytes: vec![],
            link_down_at_s: None,
            link_up_at_s: None,
            error: error.map(String::from),
        }
    }

    fn setting() -> SpSetting {
        SpSetting {
            shape: Shape {
                hosts: 2,
                nics: 1,
                ranks: 1,
            },
            rate: "100mbit".into(),
            rate_bps: 100e6,
            bytes: 1 << 20,
            reps: 2,
            scan_blocks: 4,
        }
    }

    /// Two ranks, two repetitions: a step spans the earliest start to the
    /// latest end; the medians make the ratio.
    #[test]
    fn steps_span_all_ranks_and_ratios_use_medians() {
        let ms = 1_000_000;
        let rank = |r: u32, skew: u64| SpRankReport {
            rank: r,
            steps: vec![
                step("one_way", 0, 0, 100 * ms + skew, true),
                step("one_way", 1, 0, 100 * ms, true),
                step("two_one_way", 0, skew, 200 * ms, true),
                step("two_one_way", 1, 0, 220 * ms, true),
                step("bidir", 0, 0, 110 * ms, true),
                step("bidir", 1, 0, 100 * ms + skew, true),
            ],
        };
        let reports = [rank(0, 0), rank(1, 10 * ms)];
        let r = assemble(Scenario::TokenRingBlock, &setting(), &run(None), &reports);
        assert!(r.ok && r.verified, "{r:?}");
        // Microseconds, to compare exactly.
        let t: Vec<(&str, u64)> = r
            .strategies
            .iter()
            .map(|t| (t.strategy, (t.median_s * 1e6).round() as u64))
            .collect();
        assert_eq!(
            t,
            [
                ("one_way", 105_000),
                ("two_one_way", 210_000),
                ("bidir", 110_000)
            ]
        );
        assert_eq!(r.strategies[1].sent_per_rank, 2 << 20);
        assert!((r.ratio.unwrap() - 0.11 / 0.21).abs() < 1e-12);
        assert_eq!(r.target_met, Some(true));
        assert!(row(&r).ends_with("ok\n"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["scenario"], "token_ring_block");
        assert_eq!(v["placement"], "block");
        assert_eq!(v["strategies"][2]["strategy"], "bidir");
        assert_eq!(v["scan_blocks"], serde_json::Value::Null);
    }

    #[test]
    fn wrong_or_missing_data_fails() {
        let reports = [SpRankReport {
            rank: 0,
            steps: vec![
                step("all_scan", 0, 0, 1, true),
                step("all_scan", 1, 0, 1, false),
                step("all_gather", 0, 0, 1, true),
                step("all_gather", 1, 0, 1, true),
            ],
        }];
        let mut s = setting();
        s.shape.hosts = 1;
        let r = assemble(Scenario::AllScan, &s, &run(None), &reports);
        assert!(!r.ok && !r.verified);
        assert!(
            r.error.as_deref().unwrap().starts_with("wrong data"),
            "{r:?}"
        );
        assert_eq!((r.ratio, r.target_met), (None, None));
        assert!(row(&r).ends_with("WRONG\n"), "{}", row(&r));
        assert!(footer(&[r], None).contains("1 scenario(s) FAILED"));
        // Missing ranks: two expected, one reported.
        let r = assemble(Scenario::AllScan, &setting(), &run(None), &reports[..]);
        assert!(!r.ok);
        assert!(
            r.error.as_deref().unwrap().contains("1 of 2 ranks"),
            "{r:?}"
        );
        // The run's own error comes first.
        let r = assemble(
            Scenario::AllScan,
            &setting(),
            &run(Some("timed out: x")),
            &[],
        );
        assert!(row(&r).ends_with("TIMEOUT\n"));
    }

    #[test]
    fn header_and_row_line_up() {
        let s = setting();
        let h = header(&s, 60.0);
        let reports: Vec<SpRankReport> = (0..2)
            .map(|rank| SpRankReport {
                rank,
                steps: (0..2)
                    .flat_map(|rep| {
                        [
                            step("all_scan", rep, 0, 100_000_000, true),
                            step("all_gather", rep, 0, 700_000_000, true),
                        ]
                    })
                    .collect(),
            })
            .collect();
        let r = assemble(Scenario::AllScan, &s, &run(None), &reports);
        assert_eq!(r.target_met, Some(true));
        assert_eq!(r.scan_rows, Some(4096));
        let titles = h.lines().nth(3).unwrap();
        let line = row(&r);
        assert_eq!(titles.find("check"), line.find("ok"), "{h}{line}");
    }
}

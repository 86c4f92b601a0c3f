//! The results of `zccl bench route` (pure): one [`ScenarioResult`] per
//! scenario from its static and routed runs, the table, the footer lines
//! (targets, per-NIC bytes) and the JSON.

use serde::Serialize;

use super::harness::RunOutcome;
use super::scenario::{Disturbance, Measured, Scenario, Shape};

/// One scenario: both runs and what they add up to. Serialized as one
/// object of `--json`'s array.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// The scenario.
    pub scenario: Scenario,
    /// Hosts of the testbed.
    pub hosts: usize,
    /// NICs per host.
    pub nics: usize,
    /// Ranks per host.
    pub ranks: usize,
    /// Rate of every NIC, as given (`tc` syntax).
    pub rate: String,
    /// The same, Gbit/s.
    pub rate_gbps: f64,
    /// Bytes each sender sends.
    pub bytes: u64,
    /// Number of senders.
    pub senders: usize,
    /// Bytes of all senders together (what the throughputs divide by the time).
    pub total_bytes: u64,
    /// Static-affinity throughput, Gbit/s (`null`: not run, or failed).
    pub static_gbps: Option<f64>,
    /// Routed throughput, Gbit/s (`null`: failed).
    pub routed_gbps: Option<f64>,
    /// The best the NICs allow (the combined rate of host 0's NICs that
    /// work), Gbit/s.
    pub limit_gbps: f64,
    /// `routed_gbps / static_gbps`.
    pub routed_over_static: Option<f64>,
    /// `routed_gbps / limit_gbps`.
    pub routed_over_limit: Option<f64>,
    /// Time of the static run, seconds.
    pub static_s: Option<f64>,
    /// Time of the routed run, seconds.
    pub routed_s: Option<f64>,
    /// Failure: the bound on the routed time (1.2 × the time at the rate of
    /// the NICs left), seconds.
    pub bound_s: Option<f64>,
    /// The NIC of host 0 the scenario disturbs.
    pub disturbed_nic: Option<usize>,
    /// `link_down` (failure), `quarter_rate` (slow) or `null`.
    pub disturbance: Option<&'static str>,
    /// Every transfer of every run that ran was received and checked byte
    /// for byte.
    pub verified: bool,
    /// Every run completed within its time bound and verified.
    pub ok: bool,
    /// The acceptance target, in words.
    pub target: &'static str,
    /// Whether the target is met (`null` when a run it needs is missing).
    pub target_met: Option<bool>,
    /// Runs of each router (`--route-reps`, fewer where one failed, which
    /// ends the repetitions); `static` and `routed` are the ones of median
    /// time, or the failed one ([`pick`]).
    pub runs: u32,
    /// The static run (`null` for failure, which runs routed only).
    #[serde(rename = "static")]
    pub static_run: Option<RunOutcome>,
    /// The routed run.
    pub routed: RunOutcome,
}

/// The run a scenario reports out of the repetitions of one router: the
/// first that failed, if any (a failure is never outvoted), otherwise the
/// one of median time (the slower of the middle two for an even count);
/// `None` for no runs. Pure.
///
/// ```
/// use zccl_bench::route::harness::RunOutcome;
/// use zccl_bench::route::report::pick;
/// let run = |t: f64, ok: bool| RunOutcome {
///     router: "on", ok, verified: ok, time_s: Some(t), bytes: 1, gbps: Some(8.0 / t),
///     nic_tx_bytes: vec![], link_down_at_s: None, link_up_at_s: None, error: None,
/// };
/// assert_eq!(pick(vec![run(3.0, true), run(1.0, true), run(2.0, true)]).unwrap().time_s, Some(2.0));
/// assert_eq!(pick(vec![run(1.0, true), run(9.0, false)]).unwrap().time_s, Some(9.0));
/// assert_eq!(pick(vec![run(1.0, true), run(2.0, true)]).unwrap().time_s, Some(2.0));
/// assert!(pick(vec![]).is_none());
/// ```
pub fn pick(mut runs: Vec<RunOutcome>) -> Option<RunOutcome> {
    if let Some(i) = runs.iter().position(|r| !r.ok) {
        return Some(runs.swap_remove(i));
    }
    runs.sort_by(|a, b| {
        let t = |r: &RunOutcome| r.time_s.unwrap_or(f64::INFINITY);
        t(a).total_cmp(&t(b))
    });
    if runs.is_empty() {
        return None;
    }
    let mid = runs.len() / 2;
    Some(runs.swap_remove(mid))
}

/// Builds a scenario's result from its runs (one of each router; the
/// caller sets [`ScenarioResult::runs`] where they were picked from more).
pub fn assemble(
    scenario: Scenario,
    shape: Shape,
    rate: &str,
    rate_bps: f64,
    bytes: u64,
    static_run: Option<RunOutcome>,
    routed: RunOutcome,
) -> ScenarioResult {
    let transfers = scenario.transfers(&shape, bytes);
    let total_bytes: u64 = transfers.iter().map(|t| t.bytes).sum();
    let limit_bps = scenario.limit_bps(shape.nics, rate_bps);
    let bound_s = scenario.bound_s(total_bytes, shape.nics, rate_bps);
    let good = |r: &RunOutcome| r.ok.then_some(r.gbps).flatten();
    let static_gbps = static_run.as_ref().and_then(good);
    let routed_gbps = good(&routed);
    let (disturbed_nic, disturbance) = match scenario.disturbance(shape.nics) {
        Disturbance::None => (None, None),
        Disturbance::LinkDown { nic } => (Some(nic), Some("link_down")),
        Disturbance::QuarterRate { nic } => (Some(nic), Some("quarter_rate")),
    };
    let runs_ok = routed.ok && static_run.as_ref().is_none_or(|r| r.ok);
    let verified = routed.verified && static_run.as_ref().is_none_or(|r| r.verified);
    let target_met = routed_gbps.and_then(|r| {
        let m = Measured {
            static_bps: static_gbps.map(|s| s * 1e9),
            routed_bps: r * 1e9,
            routed_s: routed.time_s.unwrap_or(f64::INFINITY),
        };
        scenario.target_met(&m, limit_bps, bound_s)
    });
    ScenarioResult {
        scenario,
        hosts: shape.hosts,
        nics: shape.nics,
        ranks: shape.ranks,
        rate: rate.to_string(),
        rate_gbps: rate_bps / 1e9,
        bytes: scenario.bytes(bytes),
        senders: transfers.len(),
        total_bytes,
        static_gbps,
        routed_gbps,
        limit_gbps: limit_bps / 1e9,
        routed_over_static: routed_gbps.zip(static_gbps).map(|(r, s)| r / s),
        routed_over_limit: routed_gbps.map(|r| r * 1e9 / limit_bps),
        static_s: static_run.as_ref().filter(|r| r.ok).and_then(|r| r.time_s),
        routed_s: routed.ok.then_some(routed.time_s).flatten(),
        bound_s,
        disturbed_nic,
        disturbance,
        verified,
        ok: runs_ok,
        target: scenario.target(),
        target_met,
        runs: 1,
        static_run,
        routed,
    }
}

/// The lines above the table.
pub fn header(shape: Shape, rate: &str, bytes: u64, timeout_s: f64, runs: u32) -> String {
    let runs = if runs == 1 {
        "one run each".to_string()
    } else {
        format!("the run of median time of {runs} each, taking turns")
    };
    let text = format!(
        "# zccl bench route: {} hosts x {} NICs x {} ranks per host, {rate} per NIC, \
         {} per sender (failure: {}), each pair of runs bounded to {timeout_s:.0} s\n\
         # static: ZCCL_ROUTER=affinity, routed: ZCCL_ROUTER=on ({runs}); throughput = payload bytes / time\n\
         #\n\
         # {:<10} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {}\n\
         # {:<10} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {}\n",
        shape.hosts,
        shape.nics,
        shape.ranks,
        human_bytes(bytes),
        human_bytes(Scenario::Failure.bytes(bytes)),
        "scenario",
        "bytes",
        "static",
        "routed",
        "limit",
        "routed/",
        "routed/",
        "static",
        "routed",
        "bound",
        "check",
        "",
        "(total)",
        "(Gbit/s)",
        "(Gbit/s)",
        "(Gbit/s)",
        "static",
        "limit",
        "(s)",
        "(s)",
        "(s)",
        "",
    );
    text.lines()
        .map(|l| l.trim_end().to_string() + "\n")
        .collect()
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

/// What the `check` column says about a run.
fn check(r: &RunOutcome) -> &'static str {
    match (&r.error, r.verified) {
        (None, true) => "ok",
        (Some(e), _) if e.starts_with("timed out") => "TIMEOUT",
        (Some(e), _) if e.starts_with("wrong data") => "WRONG",
        _ => "FAILED",
    }
}

/// One table row.
///
/// ```
/// # use zccl_bench::route::{harness::RunOutcome, report::{assemble, row}, scenario::{Scenario, Shape}};
/// let run = |gbps: f64| RunOutcome { router: "on", ok: true, verified: true, time_s: Some(1.0),
///     bytes: 100, gbps: Some(gbps), nic_tx_bytes: vec![], link_down_at_s: None,
///     link_up_at_s: None, error: None };
/// let shape = Shape { hosts: 2, nics: 4, ranks: 4 };
/// let r = assemble(Scenario::Imbalanced, shape, "200mbit", 200e6, 100, Some(run(0.2)), run(0.7));
/// let line = row(&r);
/// assert!(line.contains("imbalanced") && line.contains("3.50") && line.ends_with("ok\n"));
/// ```
pub fn row(r: &ScenarioResult) -> String {
    let check = match &r.static_run {
        Some(s) if check(s) != "ok" => format!("static {}", check(s)),
        _ if check(&r.routed) != "ok" => format!("routed {}", check(&r.routed)),
        _ => "ok".to_string(),
    };
    format!(
        "  {:<10} {:>11} {:>8} {:>8} {:>8.3} {:>8} {:>8} {:>8} {:>8} {:>8}  {check}\n",
        r.scenario.name(),
        r.total_bytes,
        opt(r.static_gbps, 3),
        opt(r.routed_gbps, 3),
        r.limit_gbps,
        opt(r.routed_over_static, 2),
        opt(r.routed_over_limit, 2),
        opt(r.static_s, 2),
        opt(r.routed_s, 2),
        opt(r.bound_s, 2),
    )
}

/// The "Targets" lines of a footer: per scenario (name padded to `width`),
/// its target and whether it was met.
///
/// ```
/// let t = zccl_bench::route::report::targets_block(4, [("a", "x <= 1", Some(false))]);
/// assert!(t.ends_with("#   a    x <= 1: MISSED\n"), "{t}");
/// ```
pub fn targets_block<'a>(
    width: usize,
    rows: impl IntoIterator<Item = (&'a str, &'a str, Option<bool>)>,
) -> String {
    let mut out = String::from("#\n# Targets (measured, not enforced):\n");
    for (name, target, met) in rows {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        out.push_str(&format!("#   {name:<width$} {target}: {verdict}\n"));
    }
    out
}

/// The lines below the table: per scenario, the target and whether it is
/// met, the bytes each NIC of host 0 sent, and the errors. `stopped`: why
/// the scenarios after the last result did not run, if they did not.
pub fn footer(results: &[ScenarioResult], stopped: Option<&str>) -> String {
    let mut out = targets_block(
        10,
        results
            .iter()
            .map(|r| (r.scenario.name(), r.target, r.target_met)),
    );
    out.push_str("# Bytes sent by each NIC of host 0 during the timed exchange (MB):\n");
    for r in results {
        for run in r.static_run.iter().chain(std::iter::once(&r.routed)) {
            if run.nic_tx_bytes.is_empty() {
                continue;
            }
            let mb: Vec<String> = run
                .nic_tx_bytes
                .iter()
                .map(|b| format!("{:.1}", *b as f64 / 1e6))
                .collect();
            out.push_str(&format!(
                "#   {:<10} {:<8} [{}]\n",
                r.scenario.name(),
                run.router,
                mb.join(" ")
            ));
        }
    }
    for r in results {
        for run in r.static_run.iter().chain(std::iter::once(&r.routed)) {
            if let Some(e) = &run.error {
                out.push_str(&format!("# {} ({}): {e}\n", r.scenario.name(), run.router));
            }
        }
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        out.push_str(&format!("# {failed} scenario(s) FAILED\n"));
    }
    match stopped {
        Some(why) => out.push_str(&format!("# Stopped: {why}\n")),
        None if failed == 0 => out.push_str("# All transfers completed and verified\n"),
        None => {}
    }
    out
}

/// `--json`: the array of results.
pub fn to_json(results: &[ScenarioResult]) -> String {
    serde_json::to_string_pretty(results).expect("results serialize") + "\n"
}

/// `64 MiB`, `1.5 GiB`, `512 KiB`, `100 B`.
///
/// ```
/// use zccl_bench::route::report::human_bytes;
/// assert_eq!(human_bytes(64 << 20), "64 MiB");
/// assert_eq!(human_bytes(3 << 29), "1.5 GiB");
/// assert_eq!(human_bytes(100), "100 B");
/// ```
pub fn human_bytes(b: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (scale, unit) in UNITS {
        if b >= scale {
            let v = b as f64 / scale as f64;
            return if b.is_multiple_of(scale) {
                format!("{} {unit}", b / scale)
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{b} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(router: &'static str, gbps: Option<f64>, error: Option<&str>) -> RunOutcome {
        RunOutcome {
            router,
            ok: error.is_none(),
            verified: error.is_none(),
            time_s: gbps.map(|g| 0.5368709 / g),
            bytes: 64 << 20,
            gbps,
            nic_tx_bytes: vec![70_000_000, 100, 100, 100],
            link_down_at_s: None,
            link_up_at_s: None,
            error: error.map(String::from),
        }
    }

    const SHAPE: Shape = Shape {
        hosts: 2,
        nics: 4,
        ranks: 4,
    };

    #[test]
    fn ratios_and_targets() {
        let r = assemble(
            Scenario::Imbalanced,
            SHAPE,
            "200mbit",
            200e6,
            64 << 20,
            Some(run("affinity", Some(0.19), None)),
            run("on", Some(0.76), None),
        );
        assert!(r.ok && r.verified);
        assert!((r.limit_gbps - 0.8).abs() < 1e-12);
        assert!((r.routed_over_static.unwrap() - 4.0).abs() < 1e-9);
        assert!((r.routed_over_limit.unwrap() - 0.95).abs() < 1e-9);
        assert_eq!(r.target_met, Some(true));
        let v: serde_json::Value = serde_json::from_str(&to_json(&[r])).unwrap();
        let o = &v[0];
        for k in [
            "scenario",
            "static_gbps",
            "routed_gbps",
            "limit_gbps",
            "verified",
            "static",
            "routed",
        ] {
            assert!(o.get(k).is_some(), "{k} missing in {o}");
        }
        assert_eq!(o["scenario"], "imbalanced");
        assert_eq!(o["static"]["router"], "affinity");
        assert_eq!(o["routed"]["nic_tx_bytes"][0], 70_000_000);
    }

    #[test]
    fn failures_show() {
        let r = assemble(
            Scenario::Failure,
            SHAPE,
            "200mbit",
            200e6,
            64 << 20,
            None,
            run(
                "on",
                None,
                Some("timed out: the scenario's 60 s bound passed (killed: x)"),
            ),
        );
        assert!(!r.ok && !r.verified);
        assert_eq!((r.routed_gbps, r.target_met), (None, None));
        assert_eq!(r.total_bytes, 256 << 20);
        assert!(r.bound_s.unwrap() > 0.0);
        let line = row(&r);
        assert!(line.contains("routed TIMEOUT"), "{line}");
        let f = footer(&[r], None);
        assert!(f.contains("1 scenario(s) FAILED"), "{f}");
        assert!(!f.contains("All transfers"), "{f}");
        assert!(f.contains("failure (on): timed out"), "{f}");
        let f = footer(&[], Some("interrupted"));
        assert!(f.ends_with("# Stopped: interrupted\n"), "{f}");
    }

    #[test]
    fn header_and_row_line_up() {
        let h = header(SHAPE, "200mbit", 64 << 20, 60.0, 3);
        assert!(h.contains("64 MiB per sender (failure: 256 MiB)"), "{h}");
        assert!(
            h.contains("(the run of median time of 3 each, taking turns)"),
            "{h}"
        );
        assert!(header(SHAPE, "200mbit", 1, 60.0, 1).contains("(one run each)"));
        let r = assemble(
            Scenario::Slow,
            SHAPE,
            "200mbit",
            200e6,
            64 << 20,
            Some(run("affinity", Some(0.19), None)),
            run("on", Some(0.6), None),
        );
        let titles = h.lines().nth(3).unwrap();
        let line = row(&r);
        assert_eq!(titles.find("check"), line.find("ok"), "{h}{line}");
    }
}

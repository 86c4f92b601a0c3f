//! Calibration: the simulator against the testbed's measurements.
//!
//! The measurements are `zccl bench route --json` output (2 network
//! namespaces × 4 veth NICs, `tbf` at 200 Mbit/s, 4 ranks per host), kept in
//! `sim/data/testbed.json` with the date and commit they were taken at, or
//! any file of the same form (`zccl sim calibrate --measured FILE`): an
//! array of result objects, or an object with such arrays under `route`
//! and `sp`.
//!
//! * **Router scenarios** (`imbalanced`, `balanced`, `failure`, `slow`;
//!   bench/src/route/scenario.rs): the same transfers from host 0 to host 1,
//!   static (`ZCCL_ROUTER=affinity`) and routed, with the same disturbance
//!   (host 0's last NIC down halfway, or at a quarter rate), simulated at
//!   chunk fidelity. Bound: 10 % on each time.
//! * **SP scenarios** (`token_ring`, `token_ring_block`, `all_scan`;
//!   bench/src/route/sp.rs): each strategy's median time (`one_way`,
//!   `two_one_way`, `bidir`; `all_scan`, `all_gather`), with the ranks
//!   placed as the bench placed them. Bound: 15 %.
//!
//! Nothing is fitted: the testbed cluster is [`ClusterSpec::testbed`], whose
//! only non-nominal figure is TCP's payload efficiency (1448/1514).
//!
//! ```
//! let cal = zccl_sim::calibrate::calibrate(&zccl_sim::calibrate::committed()).unwrap();
//! assert!(cal.has_sp && cal.rows.len() >= 15);
//! // Every router scenario is within 10 %.
//! assert!(cal.rows.iter().filter(|r| r.bound == 0.10).all(|r| r.pass), "{}", cal.table());
//! ```

use serde::Serialize;
use serde_json::Value;
use zccl_runtime::router::NicId;

use crate::SimError;
use crate::cluster::{ClusterSpec, Placement};
use crate::run::{Disturbance, Fidelity, Mode, RunConfig, simulate};
use crate::workload::{Program, all_scan, point_to_point, ring_all_gather, shifts};

/// The committed measurements (`sim/data/testbed.json`).
///
/// ```
/// let v = zccl_sim::calibrate::committed();
/// assert!(v["date"].is_string() && v["commit"].is_string());
/// ```
pub fn committed() -> Value {
    serde_json::from_str(include_str!("../data/testbed.json")).expect("valid committed JSON")
}

/// One measured time against its simulation.
///
/// ```
/// let c = zccl_sim::calibrate::calibrate(&zccl_sim::calibrate::committed()).unwrap();
/// let r = &c.rows[0];
/// assert_eq!((r.scenario.as_str(), r.run.as_str()), ("imbalanced", "static"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Scenario (`imbalanced`, …, `token_ring`, `all_scan`).
    pub scenario: String,
    /// What was timed: `static`, `routed`, or an SP strategy
    /// (`bidir@on`: the strategy, at `ZCCL_ROUTER`).
    pub run: String,
    /// Measured, seconds.
    pub measured_s: f64,
    /// Simulated, seconds.
    pub simulated_s: f64,
    /// `simulated / measured − 1`.
    pub error: f64,
    /// The bound on `|error|`.
    pub bound: f64,
    /// `|error| ≤ bound`.
    pub pass: bool,
}

/// Every row, and what is missing.
///
/// ```
/// let c = zccl_sim::calibrate::calibrate(&serde_json::json!([])).unwrap();
/// assert!(c.rows.is_empty() && !c.has_sp);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// Where the measurements come from (`date`, `commit` when given).
    pub source: String,
    /// One row per measured time.
    pub rows: Vec<Row>,
    /// Whether SP rows were among the measurements.
    pub has_sp: bool,
}

impl Calibration {
    /// Whether every row is within its bound.
    ///
    /// ```
    /// let c = zccl_sim::calibrate::Calibration { source: String::new(), rows: vec![], has_sp: false };
    /// assert!(c.pass());
    /// ```
    pub fn pass(&self) -> bool {
        self.rows.iter().all(|r| r.pass)
    }

    /// The table `zccl sim calibrate` prints.
    ///
    /// ```
    /// let c = zccl_sim::calibrate::calibrate(&zccl_sim::calibrate::committed()).unwrap();
    /// assert!(c.table().contains("imbalanced"));
    /// ```
    pub fn table(&self) -> String {
        let mut s = format!("# zccl sim calibrate: {}\n", self.source);
        s.push_str(&format!(
            "# {:<17} {:<22} {:>11} {:>11} {:>8} {:>7}  check\n",
            "scenario", "run", "measured s", "simulated s", "error", "bound"
        ));
        for r in &self.rows {
            s.push_str(&format!(
                "  {:<17} {:<22} {:>11.3} {:>11.3} {:>+7.1}% {:>6.0}%  {}\n",
                r.scenario,
                r.run,
                r.measured_s,
                r.simulated_s,
                r.error * 100.0,
                r.bound * 100.0,
                if r.pass { "PASS" } else { "FAIL" }
            ));
        }
        if !self.has_sp {
            s.push_str(
                "# no SP rows (token_ring, token_ring_block, all_scan) in these measurements: \
                 pass a `zccl bench route --scenario token_ring,token_ring_block,all_scan --json` \
                 file with --measured to add them\n",
            );
        }
        let fails = self.rows.iter().filter(|r| !r.pass).count();
        s.push_str(&format!(
            "# {} of {} within bounds: {}\n",
            self.rows.len() - fails,
            self.rows.len(),
            if fails == 0 { "PASS" } else { "FAIL" }
        ));
        s
    }
}

fn num(v: &Value, k: &str) -> Result<f64, SimError> {
    v[k].as_f64()
        .ok_or_else(|| SimError::Measured(format!("field `{k}` missing or not a number in {v}")))
}

fn int(v: &Value, k: &str) -> Result<usize, SimError> {
    Ok(num(v, k)? as usize)
}

/// Simulates every measurement in `measured` (see the module
/// documentation for its form).
///
/// ```
/// let bad = serde_json::json!([{"scenario": "imbalanced"}]);
/// assert!(zccl_sim::calibrate::calibrate(&bad).is_err());
/// ```
pub fn calibrate(measured: &Value) -> Result<Calibration, SimError> {
    let mut items: Vec<&Value> = Vec::new();
    let mut source = String::from("measurements given");
    match measured {
        Value::Array(a) => items.extend(a),
        Value::Object(o) => {
            for k in ["route", "sp"] {
                if let Some(Value::Array(a)) = o.get(k) {
                    items.extend(a);
                }
            }
            let field = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
            source = format!(
                "testbed measured {} at commit {}",
                field("date"),
                field("commit")
            );
            if o.contains_key("sp_date") {
                source.push_str(&format!(", SP scenarios {}", field("sp_date")));
            }
        }
        _ => return Err(SimError::Measured("expected an array or an object".into())),
    }
    let mut rows = Vec::new();
    let mut has_sp = false;
    for it in items {
        if it.get("strategies").is_some() {
            has_sp = true;
            rows.extend(sp_rows(it)?);
        } else {
            rows.extend(route_rows(it)?);
        }
    }
    Ok(Calibration {
        source,
        rows,
        has_sp,
    })
}

fn row(scenario: &str, run: &str, measured: f64, simulated: f64, bound: f64) -> Row {
    let error = simulated / measured - 1.0;
    Row {
        scenario: scenario.into(),
        run: run.into(),
        measured_s: measured,
        simulated_s: simulated,
        error,
        bound,
        pass: error.abs() <= bound,
    }
}

/// The router scenarios: bound 10 %.
fn route_rows(v: &Value) -> Result<Vec<Row>, SimError> {
    let scenario = v["scenario"]
        .as_str()
        .ok_or_else(|| SimError::Measured(format!("no scenario in {v}")))?;
    let (hosts, nics, ranks) = (int(v, "hosts")?, int(v, "nics")?, int(v, "ranks")?);
    let rate_bps = num(v, "rate_gbps")? * 1e9;
    let bytes = num(v, "bytes")? as u64;
    let spec = ClusterSpec::testbed(hosts, nics, ranks, rate_bps / 1e6);
    let cluster = spec.build()?;
    let senders = if scenario == "balanced" { ranks } else { 1 };
    let transfers: Vec<(usize, usize, u64)> = (0..senders).map(|l| (l, ranks + l, bytes)).collect();
    let program = point_to_point(hosts * ranks, &transfers);
    let last = NicId {
        host: 0,
        index: nics.saturating_sub(1),
    };
    let total = bytes * senders as u64;
    let disturbances = match scenario {
        "failure" => vec![Disturbance::Down {
            nic: last,
            at_s: total as f64 * 8.0 / 2.0 / (nics as f64 * rate_bps),
        }],
        "slow" => vec![Disturbance::Slow {
            nic: last,
            factor: 0.25,
        }],
        "imbalanced" | "balanced" => Vec::new(),
        other => {
            return Err(SimError::Measured(format!("unknown scenario {other:?}")));
        }
    };
    let mut out = Vec::new();
    for (run, mode) in [("static", Mode::Static), ("routed", Mode::Router)] {
        let Some(m) = v[run]["time_s"].as_f64() else {
            continue;
        };
        if v[run]["ok"].as_bool() == Some(false) {
            continue;
        }
        let mut cfg = RunConfig::new(mode).with_fidelity(Fidelity::Chunks);
        cfg.disturbances = disturbances.clone();
        let r = simulate(&cluster, &program, &cfg)?;
        out.push(row(scenario, run, m, r.time_s, 0.10));
    }
    Ok(out)
}

/// The SP scenarios: bound 15 %.
fn sp_rows(v: &Value) -> Result<Vec<Row>, SimError> {
    let scenario = v["scenario"].as_str().unwrap_or("?");
    let (hosts, nics, ranks) = (int(v, "hosts")?, int(v, "nics")?, int(v, "ranks")?);
    let rate_bps = num(v, "rate_gbps")? * 1e9;
    let bytes = num(v, "bytes")? as u64;
    let mut spec = ClusterSpec::testbed(hosts, nics, ranks, rate_bps / 1e6);
    spec.placement = match v["placement"].as_str() {
        Some("interleaved") => Placement::Interleaved,
        _ => Placement::Block,
    };
    let cluster = spec.build()?;
    let n = hosts * ranks;
    let router = v["router"].as_str().unwrap_or("on");
    let mode = if router == "affinity" || router == "static" {
        Mode::Static
    } else {
        Mode::Router
    };
    let mut out = Vec::new();
    let Some(Value::Array(strategies)) = v.get("strategies") else {
        return Ok(out);
    };
    for st in strategies {
        let name = st["strategy"].as_str().unwrap_or("?");
        let Some(m) = st["median_s"].as_f64() else {
            continue;
        };
        let program: Program = match name {
            "one_way" => shifts(n, &[&[1]], bytes),
            "two_one_way" => shifts(n, &[&[1], &[-1]], bytes),
            "bidir" => shifts(n, &[&[1, -1]], bytes),
            "all_scan" => {
                let blocks = int(v, "scan_blocks")?;
                let rows = int(v, "scan_rows")?;
                all_scan(n, bytes, rows, blocks)?
            }
            "all_gather" => ring_all_gather(n, bytes),
            other => {
                return Err(SimError::Measured(format!(
                    "unknown strategy {other:?} in {scenario}"
                )));
            }
        };
        let cfg = RunConfig::new(mode).with_fidelity(Fidelity::Chunks);
        let r = simulate(&cluster, &program, &cfg)?;
        out.push(row(
            scenario,
            &format!("{name}@{router}"),
            m,
            r.time_s,
            0.15,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sp_rows_are_simulated_when_present() {
        let v = serde_json::json!([{
            "scenario": "token_ring", "placement": "interleaved", "hosts": 2, "nics": 4,
            "ranks": 4, "rate_gbps": 0.2, "router": "on", "bytes": 8388608,
            "strategies": [
                {"strategy": "one_way", "median_s": 0.1},
                {"strategy": "two_one_way", "median_s": 0.2},
                {"strategy": "bidir", "median_s": 0.1}
            ]
        }, {
            "scenario": "all_scan", "placement": "block", "hosts": 2, "nics": 4,
            "ranks": 4, "rate_gbps": 0.2, "router": "on", "bytes": 8388608,
            "scan_blocks": 4, "scan_rows": 32768,
            "strategies": [
                {"strategy": "all_scan", "median_s": 0.1},
                {"strategy": "all_gather", "median_s": 0.5}
            ]
        }]);
        let c = calibrate(&v).unwrap();
        assert!(c.has_sp);
        assert_eq!(c.rows.len(), 5);
        // Interleaved: each one-way shift crosses hosts on all 4 NICs at
        // once: 8 MiB per rank over one NIC each.
        let one = c.rows[0].simulated_s;
        let nic = 0.2e9 * 1448.0 / 1514.0 / 8.0;
        assert!((one / (8388608.0 / nic) - 1.0).abs() < 0.1, "{one}");
        // Two one-way shifts take twice one.
        assert!((c.rows[1].simulated_s / one - 2.0).abs() < 0.1);
    }
}

//! `zccl bench route` on a small testbed (2 hosts × 2 NICs × 2 ranks, 16 MiB
//! per sender, 400 Mbit/s per NIC): each scenario completes within its
//! bound, writes the JSON it documents, and verifies every transfer; the
//! corruption hook makes it fail. The SP primitives' scenarios likewise, at
//! 1 MiB and 2 repetitions. Speed ratios are what the benchmark measures,
//! not what this test checks. Skips where the testbed cannot be
//! built (needs root and iproute2); argument errors are checked everywhere.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One testbed at a time: the runs share the machine's two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// The small setting, without `--bytes`.
const SMALL: [&str; 10] = [
    "bench", "route", "--hosts", "2", "--nics", "2", "--ranks", "2", "--rate", "400mbit",
];

fn testbed_available() -> bool {
    match zccl_testbed::available() {
        Ok(()) => true,
        Err(e) => {
            zccl_testbed::skip(e);
            false
        }
    }
}

/// Runs `zccl` with `args` (and `env`), bounded by a watchdog in case the
/// command's own bounds fail.
fn zccl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zccl"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run zccl");
    // Each run is bounded to --timeout by the bench itself; this only keeps
    // a wedged harness from hanging the suite.
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn read_json(path: &Path) -> Vec<Value> {
    let t = std::fs::read_to_string(path).expect("the JSON file");
    serde_json::from_str::<Value>(&t)
        .expect("valid JSON")
        .as_array()
        .expect("an array")
        .clone()
}

/// Checks one run object (`static` or `routed`).
fn check_run(run: &Value, router: &str, total: u64, what: &str) {
    assert_eq!(run["router"], router, "{what}");
    assert_eq!(run["ok"], true, "{what}");
    assert_eq!(run["verified"], true, "{what}");
    assert_eq!(run["error"], Value::Null, "{what}");
    assert_eq!(run["bytes"].as_u64(), Some(total), "{what}");
    assert!(run["time_s"].as_f64().is_some_and(|t| t > 0.0), "{what}");
    assert!(run["gbps"].as_f64().is_some_and(|g| g > 0.0), "{what}");
    // Every payload byte crossed host 0's NICs (plus headers and others' traffic).
    let nic: Vec<u64> = run["nic_tx_bytes"]
        .as_array()
        .expect("nic_tx_bytes")
        .iter()
        .map(|v| v.as_u64().expect("a count"))
        .collect();
    assert_eq!(nic.len(), 2, "{what}");
    assert!(nic.iter().sum::<u64>() >= total, "{what}: {nic:?}");
}

fn scenario(name: &str, senders: u64, per_sender: u64) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !testbed_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("route.json");
    let mut args = SMALL.to_vec();
    args.extend(["--bytes", "16M", "--scenario", name, "--timeout", "60"]);
    args.extend(["--route-reps", "2", "--json", json.to_str().unwrap()]);
    let o = zccl(&args, &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let row = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{out}"))
        .to_string();
    assert!(row.trim_end().ends_with("ok"), "{row}\n{out}");

    let results = read_json(&json);
    assert_eq!(results.len(), 1, "{out}");
    let r = &results[0];
    let total = senders * per_sender;
    assert_eq!(r["scenario"], name);
    assert_eq!(
        (r["hosts"].as_u64(), r["nics"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(r["ranks"].as_u64(), Some(2));
    assert_eq!(r["bytes"].as_u64(), Some(per_sender));
    assert_eq!(r["senders"].as_u64(), Some(senders));
    assert_eq!(r["total_bytes"].as_u64(), Some(total));
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["ok"], true, "{r}");
    // Two runs of each router; the table and JSON show one of each.
    assert_eq!(r["runs"].as_u64(), Some(2), "{r}");
    assert!(out.contains("the run of median time of 2 each"), "{out}");
    assert!(r["limit_gbps"].as_f64().is_some_and(|l| l > 0.0), "{r}");
    assert!(r["routed_gbps"].as_f64().is_some(), "{r}");
    assert!(r["routed_over_limit"].as_f64().is_some(), "{r}");
    assert!(
        r["target"].is_string() && r.get("target_met").is_some(),
        "{r}"
    );
    check_run(&r["routed"], "on", total, &format!("{name} routed: {r}"));
    if name == "failure" {
        // Routed only; the NIC went down during the transfer.
        assert_eq!(r["static"], Value::Null, "{r}");
        assert_eq!(r["static_gbps"], Value::Null, "{r}");
        assert!(r["bound_s"].as_f64().is_some(), "{r}");
        assert_eq!(r["disturbance"], "link_down");
        assert_eq!(r["disturbed_nic"].as_u64(), Some(1));
        let down = r["routed"]["link_down_at_s"]
            .as_f64()
            .expect("link went down");
        let up = r["routed"]["link_up_at_s"]
            .as_f64()
            .expect("link came back");
        assert!(down < up, "{r}");
    } else {
        check_run(
            &r["static"],
            "affinity",
            total,
            &format!("{name} static: {r}"),
        );
        assert!(r["static_gbps"].as_f64().is_some(), "{r}");
        assert!(r["routed_over_static"].as_f64().is_some(), "{r}");
        assert_eq!(r["bound_s"], Value::Null, "{r}");
    }
    if name == "slow" {
        assert_eq!(r["disturbance"], "quarter_rate");
    }
}

#[test]
fn imbalanced() {
    scenario("imbalanced", 1, 16 << 20);
}

#[test]
fn balanced() {
    scenario("balanced", 2, 16 << 20);
}

#[test]
fn failure() {
    scenario("failure", 1, 64 << 20);
}

#[test]
fn slow() {
    scenario("slow", 1, 16 << 20);
}

/// The receivers' check is real: a flipped bit fails the run (exit 1) and
/// shows in the table and the JSON.
#[test]
fn wrong_data_fails_the_run() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !testbed_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("route.json");
    let mut args = SMALL.to_vec();
    args.extend(["--bytes", "1M", "--scenario", "imbalanced"]);
    args.extend(["--json", json.to_str().unwrap()]);
    let o = zccl(&args, &[("ZCCL_BENCH_CORRUPT", "1")]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("static WRONG"), "{out}");
    assert!(out.contains("first wrong byte at offset 524288"), "{out}");
    let r = &read_json(&json)[0];
    assert_eq!(r["verified"], false, "{r}");
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["routed"]["verified"], false, "{r}");
}

/// The SP primitives' scenarios: every strategy of every scenario timed
/// and verified, the JSON the simulator is calibrated against.
#[test]
fn sp_scenarios() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !testbed_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("sp.json");
    let mut args = SMALL.to_vec();
    args.extend(["--bytes", "1M", "--reps", "2", "--timeout", "60"]);
    args.extend(["--scenario", "token_ring,token_ring_block,all_scan"]);
    args.extend(["--json", json.to_str().unwrap()]);
    let o = zccl(&args, &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("All steps completed and verified"), "{out}");
    let results = read_json(&json);
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["token_ring", "token_ring_block", "all_scan"],
        "{out}"
    );
    for r in &results {
        let name = r["scenario"].as_str().unwrap();
        let row = String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"))
            .to_string();
        assert!(row.trim_end().ends_with("ok"), "{row}\n{out}");
        assert_eq!(
            (r["ok"].as_bool(), r["verified"].as_bool()),
            (Some(true), Some(true)),
            "{r}"
        );
        assert_eq!(r["error"], Value::Null, "{r}");
        assert_eq!(
            (r["hosts"].as_u64(), r["nics"].as_u64()),
            (Some(2), Some(2))
        );
        assert_eq!(
            (r["ranks"].as_u64(), r["world"].as_u64()),
            (Some(2), Some(4))
        );
        assert_eq!(r["bytes"].as_u64(), Some(1 << 20));
        assert_eq!(r["rate"], "400mbit");
        assert_eq!(r["router"], "affinity");
        assert_eq!(r["reps"].as_u64(), Some(2));
        let want: &[&str] = if name == "all_scan" {
            assert_eq!(r["placement"], "block");
            assert_eq!(r["scan_blocks"].as_u64(), Some(4));
            assert_eq!(r["scan_rows"].as_u64(), Some(4096));
            assert_eq!(r["ratio_name"], "all_gather/all_scan");
            &["all_scan", "all_gather"]
        } else {
            let placement = if name == "token_ring" {
                "interleaved"
            } else {
                "block"
            };
            assert_eq!(r["placement"], placement);
            assert_eq!(r["ratio_name"], "bidir/two_one_way");
            &["one_way", "two_one_way", "bidir"]
        };
        let strategies = r["strategies"].as_array().expect("strategies");
        let got: Vec<&str> = strategies
            .iter()
            .map(|t| t["strategy"].as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{r}");
        for t in strategies {
            assert_eq!(t["reps_s"].as_array().map(Vec::len), Some(2), "{t}");
            let (lo, mid, hi) = (
                t["min_s"].as_f64().unwrap(),
                t["median_s"].as_f64().unwrap(),
                t["max_s"].as_f64().unwrap(),
            );
            assert!(0.0 < lo && lo <= mid && mid <= hi, "{t}");
            assert!(
                t["sent_per_rank"].as_u64().is_some_and(|b| b >= 1 << 20),
                "{t}"
            );
        }
        assert!(r["ratio"].as_f64().is_some_and(|x| x > 0.0), "{r}");
        assert!(r["target_met"].is_boolean(), "{r}");
    }
}

/// The SP scenarios check what the ranks received: a flipped bit fails the
/// run (exit 1) and shows in the table and the JSON.
#[test]
fn sp_wrong_data_fails_the_run() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !testbed_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("sp.json");
    let mut args = SMALL.to_vec();
    args.extend(["--bytes", "256K", "--reps", "1"]);
    args.extend(["--scenario", "token_ring_block,all_scan"]);
    args.extend(["--json", json.to_str().unwrap()]);
    let o = zccl(&args, &[("ZCCL_BENCH_CORRUPT", "1")]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("WRONG"), "{out}");
    assert!(out.contains("2 scenario(s) FAILED"), "{out}");
    for r in read_json(&json) {
        assert_eq!(
            (r["ok"].as_bool(), r["verified"].as_bool()),
            (Some(false), Some(false)),
            "{r}"
        );
        assert!(
            r["error"].as_str().unwrap().starts_with("wrong data"),
            "{r}"
        );
        assert_eq!(r["target_met"], Value::Null, "{r}");
    }
}

#[test]
fn invalid_arguments_exit_2() {
    for (args, want) in [
        (&["--scenario", "bogus"][..], "invalid value 'bogus'"),
        (
            &["--nics", "1", "--scenario", "failure"][..],
            "at least 2 NICs",
        ),
        (&["--rate", "fast"][..], "not a tc rate"),
        (&["--hosts", "1"][..], "--hosts"),
        (&["--bytes", "0"][..], "--bytes must be at least 1"),
        (
            &["--scenario", "all_scan", "--bytes", "1000"][..],
            "must be a multiple of 256",
        ),
    ] {
        let mut all = vec!["bench", "route"];
        all.extend(args);
        let o = zccl(&all, &[]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}");
        assert!(out.contains(want), "{args:?}: {out}");
    }
}

//! `zccl sim`: the calibration against the committed testbed measurements
//! passes, and a small sweep writes its JSON and SVG.

use std::process::Command;

fn zccl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zccl"))
}

#[test]
fn calibrate_prints_every_committed_measurement() {
    let out = zccl()
        .args(["sim", "calibrate"])
        .output()
        .expect("run zccl");
    let text = String::from_utf8_lossy(&out.stdout);
    // 0: every row within its bound; 1: some row out of bounds (docs/simulation.md).
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The router's scenarios are within 10 %.
    for scenario in ["imbalanced", "balanced", "failure", "slow"] {
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with(scenario))
            .collect();
        assert!(!rows.is_empty(), "{text}");
        assert!(rows.iter().all(|l| l.ends_with("PASS")), "{text}");
    }
    // The SP scenarios are there too.
    for scenario in ["token_ring", "token_ring_block", "all_scan"] {
        assert!(text.contains(scenario), "{text}");
    }
}

#[test]
fn calibrate_reports_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.json");
    std::fs::write(&f, "[{\"scenario\": \"imbalanced\"}]").unwrap();
    let out = zccl()
        .args(["sim", "calibrate", "--measured"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hosts"));
}

#[test]
fn a_small_sweep_writes_json_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let (json, svg) = (dir.path().join("s.json"), dir.path().join("s.svg"));
    let out = zccl()
        .args(["sim", "sweep", "--gpus", "16,32", "--json"])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["points"].as_array().unwrap().len() >= 20);
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
}

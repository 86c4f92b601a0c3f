//! How many CPUs a host's ranks share, as the real binary decides it from
//! their affinity masks (exchanged in the shared-memory segments): ranks
//! confined together to fewer CPUs than ranks (`taskset`, a container's or
//! a job's cpuset) are crowded; ranks bound one per CPU are not. Read from
//! the `shm transport ready` line (`ZCCL_DEBUG=INFO`). Needs `taskset` and
//! CPUs 0 and 1; skips with a line saying so elsewhere.
//!
//! Before the masks were exchanged, a rank that found itself bound took the
//! host for uncrowded whatever its peers' masks: 2 ranks under
//! `taskset -c 0` each polled back to back for 10 µs before letting the
//! other run (8 B all_reduce 15.7 µs, against 4.7 µs now).

use std::process::{Command, Stdio};

/// The `shared_cpus=` value of every rank's `shm transport ready` line.
fn shared_cpus(out: &str) -> Vec<usize> {
    out.lines()
        .filter(|l| l.contains("shm transport ready"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("shared_cpus="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

/// Whether this machine can run the test: `taskset` binds to CPU 0 and to
/// CPU 1 (ranks are bound one per CPU below).
fn usable() -> bool {
    for cpu in ["0", "1"] {
        let ok = Command::new("taskset")
            .args(["-c", cpu, "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            zccl_testbed::skip(format!(
                "`taskset -c {cpu}` does not run here (needs taskset and CPUs 0 and 1)"
            ));
            return false;
        }
    }
    true
}

/// Runs `zccl run -n N PREFIX... zccl bench all_reduce` (8 B) with INFO logs
/// of the SHM subsystem; stdout and stderr together.
fn run(n: u32, prefix: &[&str]) -> String {
    let zccl = env!("CARGO_BIN_EXE_zccl");
    let out = Command::new("timeout")
        .arg("60")
        .arg(zccl)
        .args(["run", "-n", &n.to_string()])
        .args(prefix)
        .args([
            zccl,
            "bench",
            "all_reduce",
            "-b",
            "8",
            "-e",
            "8",
            "-n",
            "20",
            "-w",
            "2",
            "--no-progress",
        ])
        .env("ZCCL_DEBUG", "INFO")
        .env("ZCCL_DEBUG_SUBSYS", "SHM")
        .env_remove("ZCCL_SHM_DISABLE")
        .stdin(Stdio::null())
        .output()
        .expect("run zccl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "zccl run failed:\n{text}");
    text
}

#[test]
fn ranks_confined_together_share_their_cpus_and_ranks_bound_apart_do_not() {
    if !usable() {
        return;
    }
    // Both ranks on CPU 0: one CPU between them (crowded).
    let out = run(2, &["taskset", "-c", "0"]);
    assert_eq!(shared_cpus(&out), vec![1, 1], "{out}");
    // Each rank bound to a CPU of its own: two (not crowded), although
    // each alone sees a mask of one CPU.
    let own = "exec taskset -c $((RANK % 2)) \"$@\"";
    let out = run(2, &["sh", "-c", own, "sh"]);
    assert_eq!(shared_cpus(&out), vec![2, 2], "{out}");
    // Four ranks, two bound to each CPU: two CPUs for four (crowded).
    let out = run(4, &["sh", "-c", own, "sh"]);
    assert_eq!(shared_cpus(&out), vec![2; 4], "{out}");
}

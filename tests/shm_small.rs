//! Shared memory on a host whose `/dev/shm` is small (Docker's 64 MiB
//! default): the real binary, 8 ranks as processes, in a mount namespace of
//! the test's own with a small tmpfs on `/dev/shm` (root only; skips with a
//! line saying so elsewhere).
//!
//! Before the rings were sized to `/dev/shm`, the all-to-all below killed a
//! rank with `SIGBUS` once the 28 pairs' 4 MiB rings had been written far
//! enough; now the rings shrink (with a warning) and the job runs, and where
//! not even the smallest rings fit every rank fails at setup with a message
//! that says why.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on one run: a hang fails the test instead of stalling CI.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `zccl bench ARGS` with a tmpfs of `size` on `/dev/shm`, in a mount
/// namespace of its own; `None` when this machine cannot (not root, no
/// `unshare`).
fn bench_with_shm(size: &str, args: &str) -> Option<(bool, String, Duration)> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        eprintln!("SKIPPED: needs root (a mount namespace with a small /dev/shm)");
        return None;
    }
    let probe = Command::new("unshare")
        .args(["-m", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        eprintln!("SKIPPED: `unshare -m` is not available here");
        return None;
    }
    let script = format!(
        "mount -t tmpfs -o size={size} tmpfs /dev/shm && exec timeout {} {} bench {args}",
        LIMIT.as_secs(),
        env!("CARGO_BIN_EXE_zccl"),
    );
    let t0 = Instant::now();
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env_remove("ZCCL_DEBUG")
        .env_remove("ZCCL_SHM_DISABLE")
        .env_remove("ZCCL_SHM_RING_BYTES")
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text, t0.elapsed()))
}

#[test]
fn rings_shrink_to_a_small_dev_shm_and_the_job_runs() {
    // 8 ranks, 256 KiB to each peer: messages that go through the rings.
    let Some((ok, out, took)) = bench_with_shm("64m", "alltoall -N 8 -b 2M -e 2M -n 10 -w 1 -c 1")
    else {
        return;
    };
    assert!(ok, "the job failed ({took:?}):\n{out}");
    assert!(out.contains("rings shrunk"), "no warning:\n{out}");
    assert!(
        out.contains("ring_kib=1024"),
        "1 MiB rings expected:\n{out}"
    );
    let row = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some("2097152"))
        .unwrap_or_else(|| panic!("no 2 MiB row:\n{out}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // nccl-tests' columns: #wrong after each of out of place and in place.
    assert_eq!(cols[cols.len() - 1], "0", "wrong data: {row}");
    assert!(!out.contains("SIGBUS"), "{out}");
}

#[test]
fn where_no_rings_fit_every_rank_says_why_at_setup() {
    let Some((ok, out, took)) = bench_with_shm("1m", "all_reduce -N 8 -b 1K -e 1K -n 2 -w 1")
    else {
        return;
    };
    assert!(!ok, "the job ran on 1 MiB of /dev/shm:\n{out}");
    assert!(took < LIMIT, "not at setup: {took:?}");
    let want = "/dev/shm: 1 MiB free, but the shared-memory rings of 8 ranks on this host";
    assert!(out.contains(want), "{out}");
    assert!(out.contains("--shm-size"), "{out}");
}
